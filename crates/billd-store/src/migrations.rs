//! Which migrations a database has, compared with the ones this build
//! carries, without changing anything (for `billd doctor`; `migrate` would
//! create sqlx's bookkeeping table as a side effect).

use serde::Serialize;
use sqlx::migrate::{Migration, Migrator};
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use crate::StoreResult;

/// How a database's schema compares with this build's migrations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationStatus {
    /// Versions applied successfully and known to this build.
    pub applied: Vec<i64>,
    /// Migrations of this build the database has not run: `(version, description)`.
    pub pending: Vec<(i64, String)>,
    /// Versions whose last run failed part-way (sqlx marks them dirty and
    /// refuses to migrate further until someone repairs the schema).
    pub failed: Vec<i64>,
    /// Versions applied from a different text than this build's (an edited
    /// migration): `migrate` refuses to run.
    pub modified: Vec<i64>,
    /// Versions the database has that this build does not know (a newer
    /// billd migrated it).
    pub unknown: Vec<i64>,
}

impl MigrationStatus {
    /// True when the schema is exactly this build's.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty()
            && self.failed.is_empty()
            && self.modified.is_empty()
            && self.unknown.is_empty()
    }
}

/// One row of sqlx's `_sqlx_migrations` table.
pub(crate) struct AppliedRow {
    pub version: i64,
    pub success: bool,
    pub checksum: Vec<u8>,
}

/// The status of a SQLite database; reads only.
pub(crate) async fn sqlite_status(
    pool: &SqlitePool,
    migrator: &Migrator,
) -> StoreResult<MigrationStatus> {
    let exists: Option<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    let rows: Vec<(i64, bool, Vec<u8>)> = match exists {
        Some(_) => {
            sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                .fetch_all(pool)
                .await?
        }
        None => Vec::new(),
    };
    Ok(compare(migrator.iter(), &into_rows(rows)))
}

/// The status of a PostgreSQL database (the `_sqlx_migrations` table on the
/// search path, as `migrate` uses it); reads only.
pub(crate) async fn postgres_status(
    pool: &PgPool,
    migrator: &Migrator,
) -> StoreResult<MigrationStatus> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    let rows: Vec<(i64, bool, Vec<u8>)> = if exists {
        sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(compare(migrator.iter(), &into_rows(rows)))
}

fn into_rows(rows: Vec<(i64, bool, Vec<u8>)>) -> Vec<AppliedRow> {
    rows.into_iter()
        .map(|(version, success, checksum)| AppliedRow {
            version,
            success,
            checksum,
        })
        .collect()
}

/// Compares the migrations a build carries (a `Migrator`'s `iter()`) with
/// the rows a database has.
pub(crate) fn compare<'a>(
    migrations: impl IntoIterator<Item = &'a Migration>,
    applied: &[AppliedRow],
) -> MigrationStatus {
    let mut status = MigrationStatus::default();
    let known: Vec<_> = migrations
        .into_iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .collect();
    for m in &known {
        match applied.iter().find(|a| a.version == m.version) {
            None => status
                .pending
                .push((m.version, m.description.clone().into_owned())),
            Some(a) if !a.success => status.failed.push(m.version),
            Some(a) if a.checksum != m.checksum.as_ref() => status.modified.push(m.version),
            Some(_) => status.applied.push(m.version),
        }
    }
    for a in applied {
        if !known.iter().any(|m| m.version == a.version) {
            if a.success {
                status.unknown.push(a.version);
            } else {
                status.failed.push(a.version);
            }
        }
    }
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use sqlx::migrate::MigrationType;
    use std::borrow::Cow;

    fn migrator() -> Vec<Migration> {
        let m = |v: i64, sql: &'static str| {
            Migration::new(
                v,
                Cow::Owned(format!("m{v}")),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        };
        vec![m(1, "a"), m(2, "b"), m(3, "c")]
    }

    fn row(migrator: &[Migration], version: i64, success: bool) -> AppliedRow {
        let checksum = migrator
            .iter()
            .find(|m| m.version == version)
            .map_or_else(|| vec![0; 48], |m| m.checksum.to_vec());
        AppliedRow {
            version,
            success,
            checksum,
        }
    }

    #[test]
    fn an_empty_database_has_every_migration_pending() {
        let m = migrator();
        let status = compare(&m, &[]);
        assert_eq!(
            status.pending,
            vec![(1, "m1".into()), (2, "m2".into()), (3, "m3".into())]
        );
        assert!(!status.is_current());
    }

    #[test]
    fn applied_failed_modified_and_unknown_versions_are_told_apart() {
        let m = migrator();
        let mut edited = row(&m, 2, true);
        edited.checksum = vec![1; 48];
        let status = compare(&m, &[row(&m, 1, true), edited, row(&m, 9, true)]);
        assert_eq!(status.applied, vec![1]);
        assert_eq!(status.modified, vec![2]);
        assert_eq!(status.pending, vec![(3, "m3".into())]);
        assert_eq!(status.unknown, vec![9]);

        let dirty = compare(&m, &[row(&m, 1, true), row(&m, 2, true), row(&m, 3, false)]);
        assert_eq!(dirty.failed, vec![3]);
        assert!(!dirty.is_current());

        let all = compare(&m, &[row(&m, 1, true), row(&m, 2, true), row(&m, 3, true)]);
        assert!(all.is_current(), "{all:?}");
    }
}
