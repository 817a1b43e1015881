//! What differs between the SQLite and the PostgreSQL store, named once so
//! that every store operation has one body serving both (the
//! `*_store!` macros in `checkout.rs` and `jobs.rs`, each invoked once per
//! store).
//!
//! SQL text is shared verbatim: the placeholders are PostgreSQL's `$1`,
//! which sqlx's SQLite driver binds like SQLite's own `?1` (a repeated
//! `$n` is one parameter), and the statements keep to syntax both
//! databases read. What cannot be shared is here: which pool serves reads
//! and which serves writes.

use sqlx::{Database, Pool};

/// The backend-specific pieces of a store. Implemented by
/// [`SqliteStore`](crate::SqliteStore) and [`PgStore`](crate::PgStore).
pub(crate) trait Dialect {
    /// The sqlx driver.
    type Db: Database;

    /// Pool for reads that need no transaction. On SQLite the reader pool:
    /// in WAL mode reads never wait for the writer.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Pool for single-statement writes. On SQLite the one-connection
    /// writer pool: SQLite has a single writer, so writes queue in the
    /// pool instead of failing with SQLITE_BUSY.
    fn writer(&self) -> &Pool<Self::Db>;
}
