//! Helpers for tests (in this crate and in others) that need a real
//! PostgreSQL database: each test gets a fresh database on the throwaway
//! server `scripts/test.sh` starts, named by `BILLD_TEST_POSTGRES_URL`.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

use crate::{StoreError, StoreResult};

/// The environment variable naming a PostgreSQL superuser URL for tests.
pub const POSTGRES_URL_ENV: &str = "BILLD_TEST_POSTGRES_URL";

/// Reads [`POSTGRES_URL_ENV`]. Tests must fail, never skip, when it is unset,
/// so the error says how to get one.
pub fn postgres_admin_url() -> StoreResult<String> {
    std::env::var(POSTGRES_URL_ENV).map_err(|_| {
        StoreError::Other(format!(
            "{POSTGRES_URL_ENV} is not set: run the tests with `bash scripts/test.sh`, which \
             starts a throwaway PostgreSQL server, or point it at a superuser URL"
        ))
    })
}

/// Creates a new, empty database on the server at [`POSTGRES_URL_ENV`] and
/// returns a URL to it. Names are unique per process and call.
pub async fn fresh_postgres_database() -> StoreResult<String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin_url = postgres_admin_url()?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(
        "billd_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    let options = PgConnectOptions::from_str(&admin_url)
        .map_err(|e| StoreError::Other(format!("invalid {POSTGRES_URL_ENV}: {e}")))?;
    let mut admin = options.connect().await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    database_url(&admin_url, &name)
}

/// `url` with its database name replaced by `database`.
fn database_url(url: &str, database: &str) -> StoreResult<String> {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    if scheme_end == 0 {
        return Err(StoreError::Other(format!(
            "{POSTGRES_URL_ENV} is not a postgres:// URL"
        )));
    }
    let mut out = format!("{}/{database}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::database_url;

    #[test]
    fn database_url_replaces_or_adds_the_database_name() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1").unwrap(),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(
            database_url("postgres://u:p@h:1?sslmode=disable", "t2").unwrap(),
            "postgres://u:p@h:1/t2?sslmode=disable"
        );
    }
}
