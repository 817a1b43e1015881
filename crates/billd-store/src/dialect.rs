//! What differs between the SQLite and the PostgreSQL store, named once so
//! that every store operation has one body serving both (the `*_store!`
//! macros in `checkout.rs`, `jobs.rs` and `billing_sql.rs`, each invoked
//! once per store).
//!
//! SQL text is shared verbatim: the placeholders are PostgreSQL's `$1`,
//! which sqlx's SQLite driver binds like SQLite's own `?1` (a repeated
//! `$n` is one parameter), and the statements keep to syntax both
//! databases read. What cannot be shared is here: which pool serves reads
//! and writes, how a write transaction begins, and a few SQL fragments.

use std::future::Future;

use sqlx::{Database, Pool, Transaction};

/// The backend-specific pieces of a store. Implemented by
/// [`SqliteStore`](crate::SqliteStore) and [`PgStore`](crate::PgStore).
pub(crate) trait Dialect {
    /// The sqlx driver.
    type Db: Database;

    /// A `LIMIT` parameter (see [`Dialect::limit`]).
    type Limit;

    /// Casts a text parameter to the type of a JSON column, written right
    /// after the placeholder (`$3{JSON}`): empty on SQLite, whose JSON
    /// columns are text.
    const JSON: &'static str;

    /// The test that a column's value is one of the text elements of the
    /// JSON array bound as `$1`, written after the column. SQLite has no
    /// array parameters, so both bind a list of ids as one JSON text.
    /// PostgreSQL's makes the elements an array first: as a subquery, the
    /// planner would expect 100 of them whatever their number and scan a
    /// small table whole rather than look each up in its index.
    const IN_JSON_ARRAY: &'static str;

    /// The two-argument maximum: SQLite's scalar `MAX`, PostgreSQL's
    /// `GREATEST`.
    const GREATEST: &'static str;

    /// Written after `FROM outbox` in a claim. SQLite's planner would
    /// rather take `outbox_status` and sort every waiting row; the partial
    /// index `outbox_due` yields due rows already in id order.
    const INDEXED_BY_OUTBOX_DUE: &'static str;

    /// Ends the row selection of an outbox claim. On PostgreSQL `FOR UPDATE
    /// SKIP LOCKED`, so concurrent claimers take different rows; nothing on
    /// SQLite, whose single writer runs one claim at a time.
    const SKIP_LOCKED: &'static str;

    /// Written after an expression to compare it byte by byte (code point
    /// order), as a prefix range needs and as the expression index on
    /// `lower(email)` is built: SQLite's default, `COLLATE "C"` on
    /// PostgreSQL (whose database collation may order otherwise).
    const BYTE_ORDER: &'static str;

    /// Folds the deltas of `outbox_counts` into one row per status, run on
    /// the writer before they are read. PostgreSQL's triggers append a row
    /// per statement (no transaction waits on a shared counter row); SQLite
    /// keeps one row per status, so it has nothing to fold.
    const FOLD_OUTBOX_COUNTS: Option<&'static str>;

    /// Folds the deltas of `stripe_event_minutes` in `[$1, $2)` into one
    /// row per minute (see [`Dialect::FOLD_OUTBOX_COUNTS`]).
    const FOLD_EVENT_MINUTES: Option<&'static str>;

    /// Pool for reads that need no transaction. On SQLite the reader pool:
    /// in WAL mode reads never wait for the writer.
    fn reader(&self) -> &Pool<Self::Db>;

    /// Pool for single-statement writes. On SQLite the one-connection
    /// writer pool: SQLite has a single writer, so writes queue in the
    /// pool instead of failing with SQLITE_BUSY.
    fn writer(&self) -> &Pool<Self::Db>;

    /// Starts a write transaction. On SQLite `BEGIN IMMEDIATE` on the
    /// writer: it takes the write lock first, so a read-check-write
    /// sequence cannot interleave with another writer. On PostgreSQL a
    /// READ COMMITTED transaction, whose conditional `UPDATE … WHERE`s
    /// re-check their condition after waiting for a concurrent writer.
    fn begin_write(
        &self,
    ) -> impl Future<Output = Result<Transaction<'static, Self::Db>, sqlx::Error>> + Send;

    /// The `LIMIT` parameter for `limit` rows, where 0 means no limit.
    fn limit(limit: u32) -> Self::Limit;

    /// The Stripe customers of deleted accounts, for scrubbing arriving
    /// events (one per store, shared by its clones).
    fn erased(&self) -> &crate::erasure::ErasedCustomers;
}
