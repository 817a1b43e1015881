//! SQLite implementation: one file in WAL mode with `synchronous=FULL`, so a
//! commit is on disk when it returns. SQLite has a single writer, so every
//! write (inserts, claims, status changes) goes through a one-connection
//! pool; reads use a separate pool and never wait for the writer.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    Sqlite, SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};

use crate::claim::{in_claim_order, page_size, Picker, MAX_PAGES};
use crate::row::{
    finish_columns, first_occurrences, into_events, outcomes, DerivedColumns, EventRow,
    EVENT_COLUMNS, RECEIVED_ROWS, RECEIVED_STATS,
};
use crate::{
    Backend, ClaimLimits, DeriveClaim, Derived, EventFinish, EventResult, EventStatus, InboxStats,
    InsertOutcome, NewEvent, ReceivedEvent, ReleasedClaims, Store, StoreError, StoreResult,
    StoredEvent,
};

mod billing;
mod dialect;
mod serve_lock;
mod usage;
mod write_clock;

pub use serve_lock::{ServeLock, ServeLockError};

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Tunables of a [`SqliteStore`]; the defaults suit a server.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// How long a statement waits for a lock held by another process (or
    /// connection) before giving up with SQLITE_BUSY, reported as
    /// `Unavailable`.
    pub busy_timeout: Duration,
    /// How long a call waits for a pooled connection (the writer is shared
    /// by every write) before reporting `Unavailable`.
    pub acquire_timeout: Duration,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            busy_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Page size of a new database file.
const PAGE_SIZE: u32 = 16_384;

/// Page cache of the writer connection, in KiB when negative (SQLite's
/// convention). Each connection keeps its own cache, which grows to this
/// bound as pages are touched, and it is the bulk of a busy process's
/// resident memory: at 64 MiB per connection, five connections took
/// `billd serve` to 103 MiB under `billd bench webhooks` (every new row's
/// page passes through the writer's cache, and through a reader's when the
/// worker reads it back). The writer's hot set is the tail of the inbox
/// and the upper levels of its indexes; the operating system's page cache
/// holds the rest of the file, a read away. 8 MiB (512 pages) holds that
/// set: at 16 MiB the cache filled as the file grew and `billd serve` peaked
/// at 67 MiB under `billd bench apply --events 5000`, at 8 MiB 58–61 MiB
/// with the same throughput and latency (71–83 MiB under `bench webhooks`,
/// from 79–85).
const WRITER_CACHE_SIZE: &str = "-8192";

/// Page cache of each reader connection (KiB when negative): reads are
/// short lookups (a customer, a link) and the worker's pass over rows just
/// written, which the operating system's cache still holds; four of them
/// count in the process's resident memory.
const READER_CACHE_SIZE: &str = "-2048";

/// Reader connections; reads in WAL mode run beside the writer.
const READERS: u32 = 4;

/// Largest multi-row INSERT: batches up to this size are written by one
/// statement of exactly their size (group commits under load are a few
/// dozen events), larger ones in chunks of it. Each size is a prepared
/// statement kept in the writer's cache, so the bound also bounds that
/// cache; 64 rows × 8 columns stays far below SQLite's limit on bound
/// variables.
const ONE_STATEMENT_ROWS: usize = 64;

/// Prepared statements the writer connection keeps: the exact-size inserts
/// (derived and received) plus everything else billd writes.
const WRITER_STATEMENT_CACHE: usize = 256;

/// Inserted columns, in bind order (then the status, `pending`).
const INSERT_COLUMNS: &str =
    "id, type, api_version, created, object_id, stripe_customer, payload, received_at, status";

/// Writes what the worker derived, for the rows of the JSON array `$1`
/// ([`DerivedColumns::to_json`]) still received.
const DERIVE: &str = "UPDATE stripe_events \
     SET status = r.status, type = r.type, api_version = r.api_version, created = r.created, \
         object_id = r.object_id, stripe_customer = r.stripe_customer, \
         payload = COALESCE(r.payload, stripe_events.payload), last_error = r.last_error, \
         processed_at = r.processed_at \
     FROM (SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS status, \
             json_extract(value, '$[2]') AS type, json_extract(value, '$[3]') AS api_version, \
             json_extract(value, '$[4]') AS created, json_extract(value, '$[5]') AS object_id, \
             json_extract(value, '$[6]') AS stripe_customer, \
             json_extract(value, '$[7]') AS payload, json_extract(value, '$[8]') AS last_error, \
             json_extract(value, '$[9]') AS processed_at \
           FROM json_each($1)) AS r \
     WHERE stripe_events.id = r.id AND stripe_events.status IS NULL";

/// Due rows in claim order after a keyset position, leaving out customers
/// that have an event under a live lease. `?1` = now, `?2`/`?3` = the last
/// (created, seq) seen, `?4` = page size.
///
/// The planner would rather use `stripe_events_status` for the `status IN`
/// term and then sort every waiting row on each claim; the partial index
/// yields rows already in claim order and stops at the LIMIT.
const CANDIDATES: &str = "SELECT id, stripe_customer, created, seq \
     FROM stripe_events INDEXED BY stripe_events_due \
     WHERE status IN ('pending', 'failed', 'processing') \
       AND (status = 'pending' OR next_attempt_at <= ?1) \
       AND (created, seq) > (?2, ?3) \
       AND (stripe_customer IS NULL OR stripe_customer NOT IN ( \
             SELECT stripe_customer FROM stripe_events \
             WHERE status = 'processing' AND next_attempt_at > ?1 \
               AND stripe_customer IS NOT NULL)) \
     ORDER BY created, seq LIMIT ?4";

/// How often the background checkpointer copies the WAL into the database.
/// Under steady load a PASSIVE checkpoint rarely finds the WAL fully copied
/// (commits land while it runs), so the WAL restarts only when a commit
/// crosses [`WAL_AUTOCHECKPOINT`] and checkpoints itself; the less is left
/// for that commit to copy, the shorter the stall of the webhooks waiting on
/// it. (`billd bench webhooks` at 5,000 events/s: ack p99 ~10 ms at 50 ms,
/// ~13 ms at 100 ms, ~18 ms at 500 ms.) An idle check costs microseconds.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(50);

/// WAL size (pages) at which a commit checkpoints by itself (SQLite's
/// default). The background checkpointer has by then copied most frames, so
/// that commit only copies the rest; and it lets the WAL restart from its
/// start, which a checkpoint racing a busy writer rarely can.
const WAL_AUTOCHECKPOINT: &str = "1000";

/// A billd store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// Stops the background checkpointer when the last clone is dropped.
    _checkpointer: Arc<AbortOnDrop>,
    /// `INSERT … VALUES (…), … RETURNING id` for exactly 1 …
    /// [`ONE_STATEMENT_ROWS`] rows.
    exact_insert_sql: Vec<String>,
    /// The same for received rows (the lean ingest).
    exact_receive_sql: Vec<String>,
    /// Stripe customers of deleted accounts: their arriving events are
    /// scrubbed before they are stored.
    erased: Arc<crate::erasure::ErasedCustomers>,
    /// Commits of the writer connection, for reads answered from memory.
    writes: Arc<write_clock::WriteClock>,
}

impl SqliteStore {
    /// Opens (creating if missing) the SQLite database at `url`
    /// (`sqlite://path/to/billd.db`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_with(url, &SqliteOptions::default()).await
    }

    /// Like [`SqliteStore::connect`], with explicit [`SqliteOptions`].
    pub async fn connect_with(url: &str, tunables: &SqliteOptions) -> StoreResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Other(format!("invalid SQLite URL: {e}")))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(tunables.busy_timeout)
            .foreign_keys(true)
            // Inbox rows carry whole event payloads (a few KiB): larger pages
            // mean fewer WAL frames, so fewer writes per group commit. Only
            // takes effect when the file is created.
            .page_size(PAGE_SIZE)
            .pragma("wal_autocheckpoint", WAL_AUTOCHECKPOINT)
            // A multi-row INSERT with triggers keeps a statement journal
            // (its pages before the change); on disk it spills to a temp
            // file past 64 KiB, which a batch of a few 16 KiB pages does.
            .pragma("temp_store", "MEMORY");
        // The writer connects first: it creates the file and switches it to
        // WAL before any reader opens it.
        let writes = Arc::new(write_clock::WriteClock::default());
        let (hooked, released) = (writes.clone(), writes.clone());
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            // Every writer connection reports the customers each commit
            // changes before it is visible, and its release once it is
            // (`write_clock`).
            .after_connect(move |conn, _meta| {
                let writes = hooked.clone();
                Box::pin(async move { writes.install(conn).await })
            })
            .after_release(move |_conn, _meta| {
                let writes = released.clone();
                Box::pin(async move {
                    writes.settled();
                    Ok(true)
                })
            })
            .acquire_timeout(tunables.acquire_timeout)
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", WRITER_CACHE_SIZE)
                    .statement_cache_capacity(WRITER_STATEMENT_CACHE),
            )
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(tunables.acquire_timeout)
            .connect_with(options.pragma("cache_size", READER_CACHE_SIZE))
            .await?;
        let exact_insert_sql = (1..=ONE_STATEMENT_ROWS).map(insert_statement).collect();
        let exact_receive_sql = (1..=ONE_STATEMENT_ROWS).map(receive_statement).collect();
        let checkpointer = tokio::spawn(checkpoint_forever(reader.clone()));
        Ok(SqliteStore {
            writer,
            reader,
            _checkpointer: Arc::new(AbortOnDrop(checkpointer)),
            exact_insert_sql,
            exact_receive_sql,
            erased: Arc::default(),
            writes,
        })
    }

    /// The insert statement for exactly `rows` rows (1 … [`ONE_STATEMENT_ROWS`]).
    fn one_statement_sql(&self, rows: usize) -> StoreResult<&str> {
        exact(&self.exact_insert_sql, rows)
    }

    /// The received-row insert for exactly `rows` rows.
    fn one_receive_sql(&self, rows: usize) -> StoreResult<&str> {
        exact(&self.exact_receive_sql, rows)
    }

    /// What [`DERIVE`] binds for `derived`: its rows as a JSON array, the
    /// payloads of erased Stripe customers scrubbed.
    async fn derived_rows(&self, derived: &[Derived], now: i64) -> StoreResult<String> {
        let scrubbed = billing::scrub_derived(self, derived).await?;
        DerivedColumns::new(derived, &scrubbed, now).to_json()
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// The statement of `statements` for exactly `rows` rows.
fn exact(statements: &[String], rows: usize) -> StoreResult<&str> {
    rows.checked_sub(1)
        .and_then(|i| statements.get(i))
        .map(String::as_str)
        .ok_or_else(|| StoreError::Other(format!("no insert statement for {rows} rows")))
}

/// Checkpoints the WAL from a reader connection, beside the writer. Left to
/// SQLite alone, the commit that crosses the autocheckpoint size copies the
/// whole WAL into the database before returning, stalling every webhook
/// waiting on that group commit. A PASSIVE checkpoint never blocks the
/// writer. (Measured with 2 KiB events, batches of 25: commit p50 ~4 ms
/// instead of ~8 ms, p99 ~24 ms instead of ~37 ms, on a loaded 2-core VM.)
async fn checkpoint_forever(reader: SqlitePool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if reader.is_closed() {
            return;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&reader)
            .await
        {
            // The next commit past WAL_AUTOCHECKPOINT checkpoints anyway.
            tracing::warn!(%error, "SQLite WAL checkpoint failed");
        }
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Binds the inbox columns of `events[i]` for each `i` in `rows`, in order.
fn bind_events<'q>(
    mut query: sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments<'q>>,
    events: &'q [NewEvent],
    rows: &[usize],
) -> sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments<'q>> {
    for &index in rows {
        let event = &events[index];
        query = query
            .bind(event.id.as_str())
            .bind(event.event_type.as_str())
            .bind(event.api_version.as_deref())
            .bind(event.created)
            .bind(event.object_id.as_deref())
            .bind(event.stripe_customer.as_deref())
            .bind(event.payload.as_str())
            .bind(event.received_at);
    }
    query
}

fn insert_statement(rows: usize) -> String {
    let mut sql = format!("INSERT INTO stripe_events ({INSERT_COLUMNS}) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?,'pending')");
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
    sql
}

/// Inserts `rows` received rows: `(id, payload, received_at)` each, status
/// NULL, so that no index but the id's and the received queue, and no
/// counter trigger, is touched.
fn receive_statement(rows: usize) -> String {
    let mut sql = String::from("INSERT INTO stripe_events (id, payload, received_at) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?)");
    }
    sql.push_str(" ON CONFLICT (id) DO NOTHING RETURNING id");
    sql
}

/// Binds `(id, payload, received_at)` of `events[i]` for each `i` in `rows`.
fn bind_received<'q>(
    mut query: sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments<'q>>,
    events: &'q [ReceivedEvent],
    rows: &[usize],
) -> sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments<'q>> {
    for &index in rows {
        let event = &events[index];
        query = query
            .bind(event.id.as_str())
            .bind(event.payload.as_str())
            .bind(event.received_at);
    }
    query
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> StoreResult<()> {
        MIGRATOR.run(&self.writer).await?;
        // The writer's change triggers watch tables the migrations create.
        let mut writer = self.writer.acquire().await?;
        self.writes.arm(&mut writer).await?;
        Ok(())
    }

    async fn migration_status(&self) -> StoreResult<crate::MigrationStatus> {
        crate::migrations::sqlite_status(&self.reader, &MIGRATOR).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let scrubbed = billing::scrub_incoming(self, events).await?;
        let events = scrubbed.as_deref().unwrap_or(events);
        let (unique, repeated) = first_occurrences(events);
        let mut inserted = HashSet::with_capacity(unique.len());
        if unique.len() <= ONE_STATEMENT_ROWS {
            // One statement is its own transaction: no BEGIN and COMMIT
            // round trips to the connection's thread, and no statement
            // journal (a failing statement rolls the whole write back). Its
            // first instruction takes the write lock, so it never has to
            // upgrade a read lock either.
            let sql = self.one_statement_sql(unique.len())?;
            let query = bind_events(sqlx::query_scalar::<_, String>(sql), events, &unique);
            inserted.extend(query.fetch_all(&self.writer).await?);
            return Ok(outcomes(events, &repeated, &inserted));
        }
        // IMMEDIATE takes the write lock up front, so the transaction never
        // has to upgrade a read lock (which could fail with SQLITE_BUSY
        // without waiting if another process writes to the same file).
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in unique.chunks(ONE_STATEMENT_ROWS) {
            let sql = self.one_statement_sql(chunk.len())?;
            let query = bind_events(sqlx::query_scalar::<_, String>(sql), events, chunk);
            inserted.extend(query.fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;
        Ok(outcomes(events, &repeated, &inserted))
    }

    async fn receive_events(&self, events: &[ReceivedEvent]) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (unique, repeated) = first_occurrences(events);
        let mut inserted = HashSet::with_capacity(unique.len());
        if unique.len() <= ONE_STATEMENT_ROWS {
            // One statement is its own transaction (see `insert_events`).
            let sql = self.one_receive_sql(unique.len())?;
            let query = bind_received(sqlx::query_scalar::<_, String>(sql), events, &unique);
            inserted.extend(query.fetch_all(&self.writer).await?);
            return Ok(outcomes(events, &repeated, &inserted));
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in unique.chunks(ONE_STATEMENT_ROWS) {
            let sql = self.one_receive_sql(chunk.len())?;
            let query = bind_received(sqlx::query_scalar::<_, String>(sql), events, chunk);
            inserted.extend(query.fetch_all(&mut *tx).await?);
        }
        tx.commit().await?;
        Ok(outcomes(events, &repeated, &inserted))
    }

    async fn received_events(&self, limit: u32) -> StoreResult<Vec<ReceivedEvent>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(RECEIVED_ROWS)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, received_at)| ReceivedEvent {
                id,
                payload,
                received_at,
            })
            .collect())
    }

    async fn derive_events(&self, derived: &[Derived], now: i64) -> StoreResult<u64> {
        if derived.is_empty() {
            return Ok(0);
        }
        let rows = self.derived_rows(derived, now).await?;
        // One statement, one commit: the writer is back to the webhooks'
        // group commit after a single round trip.
        let done = sqlx::query(DERIVE).bind(rows).execute(&self.writer).await?;
        Ok(done.rows_affected())
    }

    async fn claim_event_batches(
        &self,
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<Vec<StoredEvent>> {
        if limits.groups == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let claimed = claim_in(&mut tx, now, lease_until, limits).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn derive_and_claim(
        &self,
        derived: &[Derived],
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<DeriveClaim> {
        // Encoded (and scrubbed) before the write lock is taken.
        let rows = if derived.is_empty() {
            None
        } else {
            Some(self.derived_rows(derived, now).await?)
        };
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let derived = match rows {
            Some(rows) => sqlx::query(DERIVE)
                .bind(rows)
                .execute(&mut *tx)
                .await?
                .rows_affected(),
            None => 0,
        };
        let claimed = if limits.groups == 0 {
            Vec::new()
        } else {
            claim_in(&mut tx, now, lease_until, limits).await?
        };
        tx.commit().await?;
        Ok(DeriveClaim { derived, claimed })
    }

    async fn finish_event(
        &self,
        id: &str,
        claim: i64,
        result: EventResult,
        now: i64,
    ) -> StoreResult<()> {
        let mut conn = self.writer.acquire().await?;
        if finish(&mut conn, id, claim, &result, now).await? {
            return Ok(());
        }
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT status, claim FROM stripe_events WHERE id = ?1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        Err(not_processing(current, claim))
    }

    async fn finish_events(&self, results: &[EventFinish], now: i64) -> StoreResult<Vec<bool>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let mut finished = Vec::with_capacity(results.len());
        for done in results {
            finished.push(finish(&mut tx, &done.id, done.claim, &done.result, now).await?);
        }
        tx.commit().await?;
        Ok(finished)
    }

    async fn renew_events(&self, held: &[(String, i64)], lease_until: i64) -> StoreResult<u64> {
        if held.is_empty() {
            return Ok(0);
        }
        let held_json = serde_json::to_string(held)
            .map_err(|e| StoreError::Other(format!("encoding held events: {e}")))?;
        let done = sqlx::query(
            "UPDATE stripe_events SET next_attempt_at = ?1 \
             WHERE status = 'processing' AND (id, claim) IN ( \
               SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') \
               FROM json_each(?2))",
        )
        .bind(lease_until)
        .bind(held_json)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_all_claims(&self, now: i64) -> StoreResult<ReleasedClaims> {
        crate::row::release_all_claims!(self.writer.begin_with("BEGIN IMMEDIATE").await?, now)
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<StoredEvent>> {
        let row: Option<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM stripe_events WHERE id = ?1"
        ))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(StoredEvent::try_from).transpose()
    }

    async fn requeue_event(&self, id: &str, _now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE stripe_events \
             SET status = 'pending', attempts = 0, next_attempt_at = NULL, processed_at = NULL \
             WHERE id = ?1",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn requeue_by_status(&self, status: EventStatus, _now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE stripe_events \
             SET status = 'pending', attempts = 0, next_attempt_at = NULL, processed_at = NULL \
             WHERE status = ?1",
        )
        .bind(status.as_str())
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        // Maintained by triggers (migration w_stripe_event_counts): 7 rows
        // whatever the size of the inbox.
        let counts: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, n FROM stripe_event_counts")
                .fetch_all(&self.reader)
                .await?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(received_at) FROM stripe_events WHERE status IN ('pending', 'failed')",
        )
        .fetch_one(&self.reader)
        .await?;
        let (received, oldest_received): (i64, Option<i64>) = sqlx::query_as(RECEIVED_STATS)
            .fetch_one(&self.reader)
            .await?;
        let oldest = oldest.into_iter().chain(oldest_received).min();
        crate::row::stats(counts, received, oldest)
    }
}

/// The claim of [`Store::claim_event_batches`] inside the caller's write
/// transaction.
async fn claim_in(
    conn: &mut sqlx::SqliteConnection,
    now: i64,
    lease_until: i64,
    limits: ClaimLimits,
) -> StoreResult<Vec<StoredEvent>> {
    let mut picker = Picker::new(limits);
    let page = page_size(limits);
    let mut after = (i64::MIN, i64::MIN);
    for _ in 0..MAX_PAGES {
        let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(CANDIDATES)
            .bind(now)
            .bind(after.0)
            .bind(after.1)
            .bind(page)
            .fetch_all(&mut *conn)
            .await?;
        let exhausted = i64::try_from(rows.len()).is_ok_and(|n| n < page);
        for (id, customer, created, seq) in rows {
            after = (created, seq);
            picker.offer(id, customer);
        }
        if exhausted || picker.is_full() {
            break;
        }
    }
    let ids = picker.into_ids();
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let ids_json = serde_json::to_string(&ids)
        .map_err(|e| StoreError::Other(format!("encoding claimed ids: {e}")))?;
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "UPDATE stripe_events \
         SET status = 'processing', attempts = attempts + 1, claim = claim + 1, \
             next_attempt_at = ?1 \
         WHERE id IN (SELECT value FROM json_each(?2)) \
         RETURNING {EVENT_COLUMNS}"
    ))
    .bind(lease_until)
    .bind(ids_json)
    .fetch_all(&mut *conn)
    .await?;
    Ok(in_claim_order(&ids, into_events(rows)?))
}

/// Writes one outcome if the event is still under the lease of `claim`;
/// true when it was.
async fn finish(
    conn: &mut sqlx::SqliteConnection,
    id: &str,
    claim: i64,
    result: &EventResult,
    now: i64,
) -> StoreResult<bool> {
    let (status, error, next_attempt_at, processed_at) = finish_columns(result, now);
    let done = sqlx::query(
        "UPDATE stripe_events \
         SET status = ?1, last_error = COALESCE(?2, last_error), next_attempt_at = ?3, \
             processed_at = ?4 \
         WHERE id = ?5 AND status = 'processing' AND claim = ?6",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(next_attempt_at)
    .bind(processed_at)
    .bind(id)
    .bind(claim)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// Writes the outcomes of `results` in one statement (their rows read from
/// one JSON array), each only while its event is under the lease of its
/// claim; the ids written. Ids must be distinct.
pub(crate) async fn finish_many(
    conn: &mut sqlx::SqliteConnection,
    results: &[EventFinish],
    now: i64,
) -> StoreResult<HashSet<String>> {
    let rows: Vec<serde_json::Value> = results
        .iter()
        .map(|done| {
            let (status, error, next_attempt_at, processed_at) = finish_columns(&done.result, now);
            serde_json::json!([
                done.id,
                status.as_str(),
                error,
                next_attempt_at,
                processed_at,
                done.claim
            ])
        })
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|e| StoreError::Other(format!("encoding outcomes: {e}")))?;
    // Columns renamed in a subquery: json_each's own `id` would shadow
    // the event's. The `+` keeps SQLite from walking the status index (every
    // claimed row, once per outcome) instead of looking each id up.
    let finished: Vec<String> = sqlx::query_scalar(
        "UPDATE stripe_events \
         SET status = r.status, last_error = COALESCE(r.error, last_error), \
             next_attempt_at = r.next_at, processed_at = r.done_at \
         FROM (SELECT value ->> 0 AS eid, value ->> 1 AS status, value ->> 2 AS error, \
                      value ->> 3 AS next_at, value ->> 4 AS done_at, value ->> 5 AS held \
               FROM json_each(?1)) AS r \
         WHERE stripe_events.id = r.eid AND +stripe_events.status = 'processing' \
           AND stripe_events.claim = r.held \
         RETURNING id",
    )
    .bind(rows)
    .fetch_all(&mut *conn)
    .await?;
    Ok(finished.into_iter().collect())
}

/// The error for finishing an event that is not under the lease of
/// `claim`, given the row's current `(status, claim)`.
pub(crate) fn not_processing(current: Option<(String, i64)>, claim: i64) -> StoreError {
    match current {
        None => StoreError::NotFound,
        Some((status, current)) if status == "processing" => StoreError::Conflict {
            constraint: format!(
                "stripe_events.claim is {current}, not {claim}: the event was reclaimed"
            ),
        },
        Some((status, _)) => StoreError::Conflict {
            constraint: format!("stripe_events.status is {status}, not processing"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;

    #[tokio::test]
    async fn committed_events_are_checkpointed_into_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billd.db");
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        crate::Store::migrate(&store).await.unwrap();
        tokio::time::sleep(super::CHECKPOINT_EVERY * 3).await;
        let before = std::fs::metadata(&path).unwrap().len();
        let events: Vec<crate::NewEvent> = (0..200)
            .map(|n| crate::NewEvent {
                id: format!("evt_{n}"),
                event_type: "invoice.paid".to_owned(),
                api_version: None,
                created: n,
                object_id: None,
                stripe_customer: None,
                payload: "x".repeat(2_000),
                received_at: n,
            })
            .collect();

        crate::Store::insert_events(&store, &events).await.unwrap();

        // The commit wrote ~400 KB to the WAL, far below the size at which a
        // commit checkpoints by itself; with no further writes, the
        // checkpointer copies those pages into the database file.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut later = std::fs::metadata(&path).unwrap().len();
        while later <= before + 300_000 && std::time::Instant::now() < deadline {
            tokio::time::sleep(super::CHECKPOINT_EVERY).await;
            later = std::fs::metadata(&path).unwrap().len();
        }
        assert!(later > before + 300_000, "{before} -> {later}");
    }

    #[tokio::test]
    async fn every_connection_is_wal_with_full_sync_and_foreign_keys() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("billd.db").display());

        let store = SqliteStore::connect(&url).await.unwrap();

        for pool in [&store.writer, &store.reader] {
            let (journal,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                .fetch_one(pool)
                .await
                .unwrap();
            let (synchronous,): (i64,) = sqlx::query_as("PRAGMA synchronous")
                .fetch_one(pool)
                .await
                .unwrap();
            let (foreign_keys,): (i64,) = sqlx::query_as("PRAGMA foreign_keys")
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(journal, "wal");
            assert_eq!(synchronous, 2, "2 is FULL");
            assert_eq!(foreign_keys, 1);
        }
        let (page_size,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&store.reader)
            .await
            .unwrap();
        assert_eq!(page_size, 16_384);
    }
}
