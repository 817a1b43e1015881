//! [`Dialect`] of the PostgreSQL store: one pool for everything.

use sqlx::postgres::{PgPool, Postgres};

use super::PgStore;
use crate::dialect::Dialect;

impl Dialect for PgStore {
    type Db = Postgres;

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }
}
