//! [`Dialect`] of the PostgreSQL store: one pool for everything.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Transaction;

use super::PgStore;
use crate::dialect::Dialect;

impl Dialect for PgStore {
    type Db = Postgres;
    type Limit = Option<i64>;

    const JSON: &'static str = "::jsonb";
    const JSON_ARRAY_ROWS: &'static str = "SELECT json_array_elements_text($1::json)";
    const GREATEST: &'static str = "GREATEST";
    const INDEXED_BY_OUTBOX_DUE: &'static str = "";
    const BYTE_ORDER: &'static str = " COLLATE \"C\"";
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// PostgreSQL reads LIMIT NULL as "no limit".
    fn limit(limit: u32) -> Option<i64> {
        (limit > 0).then_some(i64::from(limit))
    }

    fn erased(&self) -> &crate::erasure::ErasedCustomers {
        &self.erased
    }
}
