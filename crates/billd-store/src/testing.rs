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

/// Every value in the database at `url` (`sqlite://…` or `postgres://…`)
/// that contains one of `needles` as a whole token (not inside a longer
/// run of letters or digits, so `4242` does not match a timestamp), as
/// `table.column: value` lines. Tables and columns come from the schema
/// catalog (`sqlite_master`, `information_schema`), every column cast to
/// text, so tables added later are searched too. For tests that check
/// that erased personal data is gone everywhere.
pub async fn find_in_every_column(url: &str, needles: &[&str]) -> StoreResult<Vec<String>> {
    let values = if url.starts_with("sqlite:") {
        sqlite_values(url).await?
    } else {
        postgres_values(url).await?
    };
    let mut hits = Vec::new();
    for (column, value) in values {
        for needle in needles {
            if let Some(at) = token_at(&value, needle) {
                hits.push(format!("{column}: …{}…", excerpt(&value, at, needle.len())));
            }
        }
    }
    Ok(hits)
}

/// `(table.column, value)` of every non-NULL value of a SQLite database.
async fn sqlite_values(url: &str) -> StoreResult<Vec<(String, String)>> {
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)
        .map_err(|e| StoreError::Other(format!("invalid SQLite URL: {e}")))?;
    let mut conn = options.connect().await?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await?;
    let mut values = Vec::new();
    for table in tables {
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1) ORDER BY cid")
                .bind(&table)
                .fetch_all(&mut conn)
                .await?;
        for column in columns {
            // As bytes: a BLOB column (a migration checksum) need not be UTF-8.
            let rows: Vec<Vec<u8>> = sqlx::query_scalar(&format!(
                "SELECT CAST(\"{column}\" AS BLOB) FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
            ))
            .fetch_all(&mut conn)
            .await?;
            values.extend(rows.into_iter().map(|v| {
                (
                    format!("{table}.{column}"),
                    String::from_utf8_lossy(&v).into_owned(),
                )
            }));
        }
    }
    conn.close().await?;
    Ok(values)
}

/// `(table.column, value)` of every non-NULL value in the `public` schema
/// of a PostgreSQL database.
async fn postgres_values(url: &str) -> StoreResult<Vec<(String, String)>> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Other(format!("invalid PostgreSQL URL: {e}")))?;
    let mut conn = options.connect().await?;
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT c.table_name::text, c.column_name::text FROM information_schema.columns c \
         JOIN information_schema.tables t \
           ON t.table_schema = c.table_schema AND t.table_name = c.table_name \
         WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE' \
         ORDER BY c.table_name, c.ordinal_position",
    )
    .fetch_all(&mut conn)
    .await?;
    let mut values = Vec::new();
    for (table, column) in columns {
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT CAST(\"{column}\" AS TEXT) FROM \"{table}\" WHERE \"{column}\" IS NOT NULL"
        ))
        .fetch_all(&mut conn)
        .await?;
        values.extend(rows.into_iter().map(|v| (format!("{table}.{column}"), v)));
    }
    conn.close().await?;
    Ok(values)
}

/// Where `needle` first occurs in `haystack` with no letter or digit right
/// before or after it.
fn token_at(haystack: &str, needle: &str) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    haystack
        .match_indices(needle)
        .map(|(at, _)| at)
        .find(|&at| {
            let before = haystack[..at].chars().next_back();
            let after = haystack[at + needle.len()..].chars().next();
            !before.is_some_and(char::is_alphanumeric) && !after.is_some_and(char::is_alphanumeric)
        })
}

/// Up to 60 characters either side of the match at `at`.
fn excerpt(value: &str, at: usize, len: usize) -> &str {
    let mut start = at.saturating_sub(60);
    while !value.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + len + 60).min(value.len());
    while !value.is_char_boundary(end) {
        end += 1;
    }
    &value[start..end]
}

#[cfg(test)]
mod tests {
    use super::{database_url, token_at};

    fn contains_token(haystack: &str, needle: &str) -> bool {
        token_at(haystack, needle).is_some()
    }

    #[test]
    fn a_token_matches_only_when_no_letter_or_digit_touches_it() {
        assert!(contains_token(r#"{"last4":"4242"}"#, "4242"));
        assert!(contains_token("visa 4242 12/2029", "4242"));
        assert!(!contains_token("created 1764242000", "4242"));
        assert!(!contains_token("pm_1Ab4242x", "4242"));
        assert!(contains_token("to bob@example.com.", "bob@example.com"));
    }

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
