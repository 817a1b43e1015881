//! [`Dialect`] of the SQLite store.

use sqlx::sqlite::{Sqlite, SqlitePool};

use super::SqliteStore;
use crate::dialect::Dialect;

impl Dialect for SqliteStore {
    type Db = Sqlite;

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }
}
