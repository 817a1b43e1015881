//! Maps sqlx errors onto [`StoreError`]'s classes. The class decides what a
//! caller does: `Unavailable` is retried (the webhook answers 503 so Stripe
//! redelivers), `Conflict` is a refused write, `Other` is a bug.

use sqlx::error::ErrorKind;

use crate::StoreError;

/// SQLite primary result codes (the low byte of an extended code) that mean
/// "the database cannot serve us right now": BUSY, LOCKED, IOERR, FULL,
/// CANTOPEN, PROTOCOL.
const SQLITE_UNAVAILABLE: [i64; 6] = [5, 6, 10, 13, 14, 15];

/// PostgreSQL SQLSTATEs outside the 08 (connection) and 53 (insufficient
/// resources) classes that also mean "try again later": admin/crash/cannot
/// connect now shutdowns, serialization failure, deadlock, lock not available,
/// and a database that is missing or was dropped under us (an operator's
/// mistake to fix while Stripe keeps redelivering, not a bug in a statement).
const PG_UNAVAILABLE: [&str; 8] = [
    "57P01", "57P02", "57P03", "40001", "40P01", "55P03", "3D000", "57P04",
];

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        classify(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        match error {
            sqlx::migrate::MigrateError::Execute(inner) => match classify(inner) {
                StoreError::Unavailable(message) => StoreError::Unavailable(message),
                other => StoreError::Other(format!("migration failed: {other}")),
            },
            other => StoreError::Other(format!("migration failed: {other}")),
        }
    }
}

fn classify(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.to_string()),
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) => {
            let constraint = || {
                db.constraint()
                    .map_or_else(|| db.message().to_owned(), str::to_owned)
            };
            match db.kind() {
                ErrorKind::UniqueViolation
                | ErrorKind::CheckViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation => StoreError::Conflict {
                    constraint: constraint(),
                },
                _ if is_unavailable(&*db) => StoreError::Unavailable(db.message().to_owned()),
                _ => StoreError::Other(db.message().to_owned()),
            }
        }
        other => StoreError::Other(other.to_string()),
    }
}

/// True for database errors that mean the database is unreachable,
/// overloaded or locked rather than that the statement is wrong.
fn is_unavailable(db: &dyn sqlx::error::DatabaseError) -> bool {
    let code = db.code();
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        sqlite_code_is_unavailable(code.as_deref())
    } else {
        postgres_state_is_unavailable(code.as_deref())
    }
}

/// SQLite reports extended result codes as decimal numbers.
fn sqlite_code_is_unavailable(code: Option<&str>) -> bool {
    code.and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| SQLITE_UNAVAILABLE.contains(&(code & 0xff)))
}

/// PostgreSQL reports SQLSTATEs.
fn postgres_state_is_unavailable(code: Option<&str>) -> bool {
    code.is_some_and(|code| {
        code.starts_with("08") || code.starts_with("53") || PG_UNAVAILABLE.contains(&code)
    })
}

#[cfg(test)]
mod tests {
    use super::{postgres_state_is_unavailable, sqlite_code_is_unavailable};

    #[test]
    fn sqlite_busy_locked_and_io_errors_are_unavailable() {
        // SQLITE_BUSY, SQLITE_LOCKED_SHAREDCACHE (6 | 1<<8), SQLITE_IOERR_FSYNC (10 | 4<<8), SQLITE_FULL
        for code in ["5", "262", "1034", "13"] {
            assert!(sqlite_code_is_unavailable(Some(code)), "{code}");
        }
    }

    #[test]
    fn sqlite_constraint_and_syntax_errors_are_not_unavailable() {
        // SQLITE_CONSTRAINT_UNIQUE, SQLITE_ERROR
        for code in ["2067", "1"] {
            assert!(!sqlite_code_is_unavailable(Some(code)), "{code}");
        }
    }

    #[test]
    fn postgres_connection_resource_and_shutdown_states_are_unavailable() {
        for code in [
            "08006", "08001", "53300", "53100", "57P01", "40P01", "3D000", "57P04",
        ] {
            assert!(postgres_state_is_unavailable(Some(code)), "{code}");
        }
    }

    #[test]
    fn postgres_syntax_and_constraint_states_are_not_unavailable() {
        for code in ["42601", "23505", "22P02"] {
            assert!(!postgres_state_is_unavailable(Some(code)), "{code}");
        }
        assert!(!postgres_state_is_unavailable(None));
    }
}
