//! One serving process per SQLite file: `billd serve` holds an exclusive
//! lock on a file beside the database for as long as it runs. Since no
//! other process can then hold an inbox lease or outbox claim on that
//! database, whatever is `processing` at start-up was left by a dead
//! process and is released at once (`Store::release_all_claims`) instead
//! of after its lease.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// Why the serving lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    /// Another process holds it.
    #[error(
        "the SQLite database {database} is already served by another billd ({holder}; lock file \
         {lock}): one process serves a SQLite file; stop that one first, or use PostgreSQL to run \
         several"
    )]
    Held {
        /// The database file.
        database: PathBuf,
        /// The lock file.
        lock: PathBuf,
        /// What the holder wrote into the lock file (`pid … on host …`).
        holder: String,
    },
    /// The lock file cannot be opened or written.
    #[error("cannot take the serving lock {lock}: {source}")]
    Io {
        /// The lock file.
        lock: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The exclusive serving lock of a SQLite database, held until dropped (or
/// until the process dies: the operating system releases it then, so a
/// `kill -9` leaves nothing to clean up).
#[derive(Debug)]
pub struct ServeLock {
    _file: File,
    path: PathBuf,
}

impl ServeLock {
    /// Takes the serving lock of the SQLite database at `url`, beside it as
    /// `<file>.lock`, recording this process's id and host in it. `None` for
    /// a URL that names no file (PostgreSQL, an in-memory database).
    pub fn acquire(url: &str) -> Result<Option<ServeLock>, ServeLockError> {
        let Some(database) = database_file(url) else {
            return Ok(None);
        };
        let mut lock = database.clone().into_os_string();
        lock.push(".lock");
        let lock = PathBuf::from(lock);
        let io = |source| ServeLockError::Io {
            lock: lock.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                // The holder's line; unreadable is still "held".
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "holder unknown".to_owned(),
                    text => text.to_owned(),
                };
                return Err(ServeLockError::Held {
                    database,
                    lock,
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = format!("pid {} on {}", std::process::id(), host_name());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(format!("{holder}\n").as_bytes()))
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok(Some(ServeLock {
            _file: file,
            path: lock,
        }))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The database file a `sqlite:` URL names.
fn database_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    if file.as_os_str().is_empty() {
        return None;
    }
    Some(file.to_path_buf())
}

/// This machine's name, for telling an operator where the holder runs.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "an unknown host".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_file_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("billd.db").display());

        let first = ServeLock::acquire(&url).unwrap().unwrap();
        let second = ServeLock::acquire(&url).unwrap_err();

        let message = second.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
        assert!(message.contains("already served"), "{message}");
        assert_eq!(first.path(), dir.path().join("billd.db.lock"));
        drop(first);
        assert!(ServeLock::acquire(&url).unwrap().is_some());
    }

    #[test]
    fn postgres_and_in_memory_databases_take_no_lock() {
        assert!(ServeLock::acquire("postgres://u@localhost/db")
            .unwrap()
            .is_none());
        assert!(ServeLock::acquire("sqlite::memory:").unwrap().is_none());
    }
}
