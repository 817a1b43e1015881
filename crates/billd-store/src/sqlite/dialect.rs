//! [`Dialect`] of the SQLite store.

use sqlx::sqlite::{Sqlite, SqlitePool};
use sqlx::Transaction;

use super::SqliteStore;
use crate::dialect::Dialect;

impl Dialect for SqliteStore {
    type Db = Sqlite;
    type Limit = i64;

    const JSON: &'static str = "";
    const IN_JSON_ARRAY: &'static str = "IN (SELECT value FROM json_each($1))";
    const GREATEST: &'static str = "MAX";
    const INDEXED_BY_OUTBOX_DUE: &'static str = " INDEXED BY outbox_due";
    const BYTE_ORDER: &'static str = "";
    const FOLD_OUTBOX_COUNTS: Option<&'static str> = None;
    const FOLD_EVENT_MINUTES: Option<&'static str> = None;
    const SKIP_LOCKED: &'static str = "";

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// SQLite reads a negative LIMIT as "no limit".
    fn limit(limit: u32) -> i64 {
        if limit == 0 {
            -1
        } else {
            i64::from(limit)
        }
    }

    fn erased(&self) -> &crate::erasure::ErasedCustomers {
        &self.erased
    }
}
