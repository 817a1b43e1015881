//! The bare schemas benchmarks measure billd against: what a consume must
//! cost at the least, one conditional counter UPDATE and one
//! idempotency-key INSERT, in two tables of their own and nothing else
//! ([`UsageCeiling`]); what storing a webhook must cost at the least,
//! one durable INSERT of (id unique, body) ([`InboxCeiling`]); and what
//! applying it must cost at the least: that insert, then, in batches of
//! their own, the body parsed and one stamped upsert of its customer's row
//! with the row marked applied ([`InboxCeiling::open_applying`]).
//! [`Unapplied`] reads which stored events are not applied yet, from
//! billd's inbox or the ceiling's.
//!
//! On SQLite (billd's file settings: WAL, `synchronous=FULL`) one writer
//! task commits whatever has queued up as one transaction. On PostgreSQL
//! each consume is one statement on a pool of billd's size (PostgreSQL
//! groups the WAL flushes of concurrent commits); webhooks are
//! group-committed as billd's ingest does it there: whatever has queued up
//! (up to [`INBOX_MAX_BATCH`]) as one multi-row statement, up to
//! [`PG_COMMITS_IN_FLIGHT`] such commits at once.

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::{StoreError, StoreResult};

/// Most consumes in one SQLite commit (billd's usage writer's bound).
const MAX_BATCH: usize = 512;

/// PostgreSQL connections (billd's pool size).
const PG_CONNECTIONS: u32 = 16;

/// Most webhooks in one group commit (billd's ingest default).
pub const INBOX_MAX_BATCH: usize = 1024;

/// Group commits at once on PostgreSQL (billd's ingest on PostgreSQL).
pub const PG_COMMITS_IN_FLIGHT: usize = 4;

struct Job {
    customer: String,
    key: String,
    reply: oneshot::Sender<StoreResult<Option<i64>>>,
}

#[derive(Clone)]
enum Db {
    /// The writer task's queue.
    Sqlite(mpsc::Sender<Job>),
    Postgres(PgPool),
}

/// Counters with a limit and the keys that consumed them, in tables named
/// `{prefix}_counters` and `{prefix}_requests`.
#[derive(Clone)]
pub struct UsageCeiling {
    db: Db,
    limit: i64,
    counters: Arc<str>,
    requests: Arc<str>,
}

impl UsageCeiling {
    /// Creates the tables afresh at `url` (`sqlite://…`, a file of its own,
    /// or `postgres://…`) with a counter at 0 for each of `customers`,
    /// every one limited to `limit`.
    pub async fn open(
        url: &str,
        prefix: &str,
        customers: impl IntoIterator<Item = String>,
        limit: i64,
    ) -> StoreResult<Self> {
        let counters: Arc<str> = format!("{prefix}_counters").into();
        let requests: Arc<str> = format!("{prefix}_requests").into();
        let schema = [
            format!("DROP TABLE IF EXISTS {requests}"),
            format!("DROP TABLE IF EXISTS {counters}"),
            format!("CREATE TABLE {counters} (customer_id TEXT PRIMARY KEY, used BIGINT NOT NULL)"),
            format!(
                "CREATE TABLE {requests} (customer_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, \
                 used BIGINT NOT NULL, PRIMARY KEY (customer_id, idempotency_key))"
            ),
        ];
        let seed = format!("INSERT INTO {counters} (customer_id, used) VALUES ($1, 0)");
        let db = if url.starts_with("sqlite:") {
            let pool = sqlite_pool(url, &schema).await?;
            let mut tx = pool.begin().await?;
            for customer in customers {
                sqlx::query(&seed).bind(customer).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            let (jobs, rx) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(sqlite_writer(
                pool,
                rx,
                limit,
                counters.clone(),
                requests.clone(),
            ));
            Db::Sqlite(jobs)
        } else {
            let pool = pg_pool(url, &schema).await?;
            let mut tx = pool.begin().await?;
            for customer in customers {
                sqlx::query(&seed).bind(customer).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Db::Postgres(pool)
        };
        Ok(UsageCeiling {
            db,
            limit,
            counters,
            requests,
        })
    }

    /// Every counter's limit.
    pub fn limit(&self) -> i64 {
        self.limit
    }

    /// Counts one for `customer` under `key` if that stays within the
    /// limit: the count after it, or `None` at the limit.
    pub async fn consume(&self, customer: String, key: String) -> StoreResult<Option<i64>> {
        match &self.db {
            Db::Sqlite(jobs) => {
                let (reply, answer) = oneshot::channel();
                let job = Job {
                    customer,
                    key,
                    reply,
                };
                let gone = || StoreError::Unavailable("the ceiling's writer stopped".to_owned());
                jobs.send(job).await.map_err(|_| gone())?;
                answer.await.map_err(|_| gone())?
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "WITH bump AS (UPDATE {c} SET used = used + 1 \
                       WHERE customer_id = $1 AND used + 1 <= $3 RETURNING used) \
                     INSERT INTO {r} (customer_id, idempotency_key, used) \
                     SELECT $1, $2, used FROM bump RETURNING used",
                    c = self.counters,
                    r = self.requests
                );
                Ok(sqlx::query_scalar(&sql)
                    .bind(&customer)
                    .bind(&key)
                    .bind(self.limit)
                    .fetch_optional(pool)
                    .await?)
            }
        }
    }

    /// Drops the tables `prefix` names at `url` (best effort: a leftover
    /// pair of small tables is harmless).
    pub async fn drop_tables(url: &str, prefix: &str) {
        drop_pg_tables(url, prefix, &["requests", "counters"]).await;
    }
}

/// One SQLite connection with billd's durability settings, `schema` run.
async fn sqlite_pool(url: &str, schema: &[String]) -> StoreResult<SqlitePool> {
    let options = SqliteConnectOptions::from_str(url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    for statement in schema {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok(pool)
}

/// A PostgreSQL pool of billd's size, `schema` run.
async fn pg_pool(url: &str, schema: &[String]) -> StoreResult<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(PG_CONNECTIONS)
        .connect(url)
        .await?;
    for statement in schema {
        sqlx::query(statement).execute(&pool).await?;
    }
    Ok(pool)
}

/// Drops `{prefix}_{table}` for each of `tables` (best effort: a leftover
/// small table is harmless).
async fn drop_pg_tables(url: &str, prefix: &str, tables: &[&str]) {
    if let Ok(pool) = PgPool::connect(url).await {
        for table in tables {
            let _ = sqlx::query(&format!("DROP TABLE IF EXISTS {prefix}_{table}"))
                .execute(&pool)
                .await;
        }
        pool.close().await;
    }
}

/// A webhook to store: its event id and raw body.
struct Delivery {
    id: String,
    body: String,
    reply: oneshot::Sender<StoreResult<bool>>,
}

/// Where an [`InboxCeiling`]'s deliveries go: a writer task's queue (on
/// either database), and on PostgreSQL the apply task's wake-up when
/// applying.
#[derive(Clone)]
struct InboxDb {
    deliveries: mpsc::Sender<Delivery>,
    wake: Option<Arc<Notify>>,
}

/// Most events one apply transaction of the ceiling takes.
const APPLY_BATCH: i64 = 1024;

/// The statements of the applying ceiling.
#[derive(Clone)]
struct ApplySql {
    /// Unapplied rows: `(id, body)`.
    due: Arc<str>,
    /// Upsert of a customer's `(status, stamp)` unless a later stamp is in.
    upsert: Arc<str>,
    /// Marks one row applied.
    done: Arc<str>,
}

/// Webhook bodies by unique event id in one table, `{prefix}_inbox`, and
/// nothing else: the least a durable webhook inbox must do.
#[derive(Clone)]
pub struct InboxCeiling {
    db: InboxDb,
}

impl InboxCeiling {
    /// Creates the table afresh at `url` (`sqlite://…`, a file of its own,
    /// or `postgres://…`).
    pub async fn open(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::create(url, prefix, false).await
    }

    /// [`InboxCeiling::open`] with an `applied` flag on each row (and an
    /// index of the unapplied ones) and a `{prefix}_state` table of one row
    /// per customer, and a task that applies what was stored: it takes up
    /// to 1,024 unapplied rows, parses each body as JSON, upserts its
    /// customer's `(status, stamp)` (`data.object.customer`, else the
    /// object's id; the object's `status`, else the event type; `created`)
    /// unless a later stamp is in, and marks the rows applied, in one
    /// transaction. On SQLite the writer task does it between its insert
    /// commits; on PostgreSQL a task of its own, woken by each insert.
    pub async fn open_applying(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::create(url, prefix, true).await
    }

    async fn create(url: &str, prefix: &str, applying: bool) -> StoreResult<Self> {
        let table: Arc<str> = format!("{prefix}_inbox").into();
        let state = format!("{prefix}_state");
        let mut schema = vec![
            format!("DROP TABLE IF EXISTS {table}"),
            format!("DROP TABLE IF EXISTS {state}"),
        ];
        if applying {
            schema.extend([
                format!(
                    "CREATE TABLE {table} (id TEXT PRIMARY KEY, body TEXT NOT NULL, \
                     applied BIGINT NOT NULL DEFAULT 0)"
                ),
                format!("CREATE INDEX {prefix}_unapplied ON {table} (applied) WHERE applied = 0"),
                format!(
                    "CREATE TABLE {state} (customer TEXT PRIMARY KEY, status TEXT NOT NULL, \
                     stamp BIGINT NOT NULL)"
                ),
            ]);
        } else {
            schema.push(format!(
                "CREATE TABLE {table} (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
            ));
        }
        let insert: Arc<str> =
            format!("INSERT INTO {table} (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                .into();
        let apply = applying.then(|| ApplySql {
            due: format!("SELECT id, body FROM {table} WHERE applied = 0 LIMIT {APPLY_BATCH}")
                .into(),
            upsert: format!(
                "INSERT INTO {state} (customer, status, stamp) VALUES ($1, $2, $3) \
                 ON CONFLICT (customer) DO UPDATE SET status = excluded.status, \
                 stamp = excluded.stamp WHERE {state}.stamp <= excluded.stamp"
            )
            .into(),
            done: format!("UPDATE {table} SET applied = 1 WHERE id = $1").into(),
        });
        let db = if url.starts_with("sqlite:") {
            let pool = sqlite_pool(url, &schema).await?;
            let (deliveries, rx) = mpsc::channel(MAX_BATCH * 4);
            tokio::spawn(inbox_writer(pool, rx, insert, apply));
            InboxDb {
                deliveries,
                wake: None,
            }
        } else {
            let pool = pg_pool(url, &schema).await?;
            let insert = format!(
                "INSERT INTO {table} (id, body) SELECT * FROM UNNEST($1::text[], $2::text[]) \
                 ON CONFLICT (id) DO NOTHING RETURNING id"
            );
            let (deliveries, rx) = mpsc::channel(INBOX_MAX_BATCH * 4);
            tokio::spawn(pg_inbox_writer(pool.clone(), rx, insert.into()));
            let wake = apply.map(|apply| {
                let wake = Arc::new(Notify::new());
                tokio::spawn(pg_applier(pool, apply, wake.clone()));
                wake
            });
            InboxDb { deliveries, wake }
        };
        Ok(InboxCeiling { db })
    }

    /// Stores `body` under `id` durably: `true` when it is new, `false`
    /// when `id` was already stored.
    pub async fn insert(&self, id: String, body: String) -> StoreResult<bool> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Unavailable("the ceiling's writer stopped".to_owned());
        self.db
            .deliveries
            .send(Delivery { id, body, reply })
            .await
            .map_err(|_| gone())?;
        let stored = answer.await.map_err(|_| gone())?;
        if let Some(wake) = &self.db.wake {
            wake.notify_one();
        }
        stored
    }

    /// Drops the tables `prefix` names at `url` (best effort).
    pub async fn drop_tables(url: &str, prefix: &str) {
        drop_pg_tables(url, prefix, &["inbox", "state"]).await;
    }
}

/// What the ceiling's apply keeps of an event: its customer, status and
/// stamp; none for a body that is not an event (it is marked applied all
/// the same, as billd marks a poison event dead).
fn applied_fields(body: &str) -> Option<(String, String, i64)> {
    let event: serde_json::Value = serde_json::from_str(body).ok()?;
    let object = &event["data"]["object"];
    let customer = object["customer"].as_str().or(object["id"].as_str())?;
    let status = object["status"].as_str().or(event["type"].as_str())?;
    Some((
        customer.to_owned(),
        status.to_owned(),
        event["created"].as_i64()?,
    ))
}

/// One apply transaction of the ceiling over `executor`'s connection:
/// returns how many rows it applied.
macro_rules! apply_round {
    ($tx:expr, $sql:expr) => {{
        let due: Vec<(String, String)> = sqlx::query_as(&$sql.due).fetch_all(&mut *$tx).await?;
        for (id, body) in &due {
            if let Some((customer, status, stamp)) = applied_fields(body) {
                sqlx::query(&$sql.upsert)
                    .bind(customer)
                    .bind(status)
                    .bind(stamp)
                    .execute(&mut *$tx)
                    .await?;
            }
            sqlx::query(&$sql.done).bind(id).execute(&mut *$tx).await?;
        }
        due.len()
    }};
}

/// Applies what is stored whenever woken, until a round finds nothing.
async fn pg_applier(pool: PgPool, sql: ApplySql, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        loop {
            let round: Result<usize, sqlx::Error> = async {
                let mut tx = pool.begin().await?;
                let applied = apply_round!(tx, sql);
                tx.commit().await?;
                Ok(applied)
            }
            .await;
            match round {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the apply ceiling's round failed");
                    break;
                }
            }
        }
    }
}

/// Commits whatever deliveries have queued up as one transaction; when
/// applying, then applies what is stored in a transaction of its own, and
/// goes on applying while deliveries leave it time.
async fn inbox_writer(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Delivery>,
    insert: Arc<str>,
    apply: Option<ApplySql>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut behind = false;
    loop {
        if behind {
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(delivery) => batch.push(delivery),
                    Err(_) => break,
                }
            }
        } else if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        if let Some(sql) = &apply {
            if !batch.is_empty() {
                insert_batch(&pool, &insert, &mut batch).await;
            }
            let round: Result<usize, sqlx::Error> = async {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let applied = apply_round!(tx, sql);
                tx.commit().await?;
                Ok(applied)
            }
            .await;
            behind = round.as_ref().is_ok_and(|&n| n > 0);
            if let Err(e) = round {
                tracing::warn!(error = %e, "the apply ceiling's round failed");
            }
            continue;
        }
        insert_batch(&pool, &insert, &mut batch).await;
    }
}

/// Inserts `batch` in one transaction and answers each of its callers.
async fn insert_batch(pool: &SqlitePool, insert: &str, batch: &mut Vec<Delivery>) {
    let outcome: Result<Vec<bool>, sqlx::Error> = async {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut answers = Vec::with_capacity(batch.len());
        for delivery in batch.iter() {
            let done = sqlx::query(insert)
                .bind(&delivery.id)
                .bind(&delivery.body)
                .execute(&mut *tx)
                .await?;
            answers.push(done.rows_affected() == 1);
        }
        tx.commit().await?;
        Ok(answers)
    }
    .await;
    reply_all(batch.drain(..).map(|d| d.reply), outcome);
}

/// Which stored events are not applied yet, read on a connection of its
/// own: from billd's inbox (`received`, `pending`, `processing`, `failed`
/// or `unlinked`: an event is applied when its row leaves these, in the
/// transaction that applied it), or from an applying [`InboxCeiling`]'s
/// table (`applied = 0`). A benchmark polls it while the server works, so
/// its cheap questions ([`Unapplied::among`], [`Unapplied::any`]) cost
/// what the events waited for do, not what the backlog holds.
pub struct Unapplied {
    db: ProbeDb,
    /// The inbox table.
    table: String,
    /// What makes one of its rows unapplied (an SQL condition).
    unapplied: &'static str,
}

enum ProbeDb {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Unapplied {
    /// billd's inbox at `url`.
    pub async fn billd(url: &str) -> StoreResult<Self> {
        // Received rows (status NULL) are not even derived yet.
        let unapplied = "(status IS NULL \
                         OR status IN ('pending', 'processing', 'failed', 'unlinked'))";
        Self::open(url, "stripe_events".to_owned(), unapplied).await
    }

    /// The applying ceiling's table of `prefix` at `url`.
    pub async fn ceiling(url: &str, prefix: &str) -> StoreResult<Self> {
        Self::open(url, format!("{prefix}_inbox"), "applied = 0").await
    }

    async fn open(url: &str, table: String, unapplied: &'static str) -> StoreResult<Self> {
        let db = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?.read_only(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(options)
                .await?;
            ProbeDb::Sqlite(pool)
        } else {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query("SET enable_seqscan = off")
                            .execute(conn)
                            .await
                            .map(|_| ())
                    })
                })
                .connect(url)
                .await?;
            ProbeDb::Postgres(pool)
        };
        Ok(Unapplied {
            db,
            table,
            unapplied,
        })
    }

    /// The ids of the events stored and not applied, now.
    pub async fn ids(&self) -> StoreResult<std::collections::HashSet<String>> {
        let sql = format!("SELECT id FROM {} WHERE {}", self.table, self.unapplied);
        let ids: Vec<String> = match &self.db {
            ProbeDb::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_all(pool).await?,
            ProbeDb::Postgres(pool) => sqlx::query_scalar(&sql).fetch_all(pool).await?,
        };
        Ok(ids.into_iter().collect())
    }

    /// Those of `ids` stored and not applied, now. A poll that names the
    /// events it waits for costs in proportion to them (one primary-key
    /// lookup each), not to the inbox's unapplied rows or its history.
    pub async fn among(&self, ids: &[&str]) -> StoreResult<std::collections::HashSet<String>> {
        if ids.is_empty() {
            return Ok(std::collections::HashSet::new());
        }
        let found: Vec<String> = match &self.db {
            ProbeDb::Sqlite(pool) => {
                let sql = format!(
                    "SELECT id FROM {} WHERE id IN (SELECT value FROM json_each(?1)) AND {}",
                    self.table, self.unapplied
                );
                let ids = serde_json::to_string(ids)
                    .map_err(|e| StoreError::Other(format!("encoding ids: {e}")))?;
                sqlx::query_scalar(&sql).bind(ids).fetch_all(pool).await?
            }
            ProbeDb::Postgres(pool) => {
                // The fence (OFFSET 0) keeps the status test out of the
                // scan, and the probe's connection plans no sequential
                // scan, so the rows are found by their key whatever the
                // planner believes of a young table (its statistics,
                // until the first ANALYZE, call it a few pages).
                let sql = format!(
                    "SELECT id FROM (SELECT id, {} AS unapplied FROM {} \
                     WHERE id = ANY($1) OFFSET 0) AS looked_up WHERE unapplied",
                    self.unapplied, self.table
                );
                sqlx::query_scalar(&sql).bind(ids).fetch_all(pool).await?
            }
        };
        Ok(found.into_iter().collect())
    }

    /// Whether any stored event is not applied, now: one row at most, so a
    /// poll costs the same whatever the backlog.
    pub async fn any(&self) -> StoreResult<bool> {
        let sql = format!(
            "SELECT 1 FROM {} WHERE {} LIMIT 1",
            self.table, self.unapplied
        );
        let found: Option<i32> = match &self.db {
            ProbeDb::Sqlite(pool) => sqlx::query_scalar(&sql).fetch_optional(pool).await?,
            ProbeDb::Postgres(pool) => sqlx::query_scalar(&sql).fetch_optional(pool).await?,
        };
        Ok(found.is_some())
    }
}

/// Commits whatever deliveries have queued up as one multi-row statement,
/// [`PG_COMMITS_IN_FLIGHT`] commits at once: while one waits for its WAL
/// flush, the next batch is on its way, and PostgreSQL flushes them
/// together.
async fn pg_inbox_writer(pool: PgPool, mut rx: mpsc::Receiver<Delivery>, insert: Arc<str>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PG_COMMITS_IN_FLIGHT));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(INBOX_MAX_BATCH);
        if rx.recv_many(&mut batch, INBOX_MAX_BATCH).await == 0 {
            return;
        }
        let (pool, insert) = (pool.clone(), insert.clone());
        tokio::spawn(async move {
            // An id twice in one batch: the first is new, the second not.
            let firsts: Vec<bool> = {
                let mut seen = std::collections::HashSet::with_capacity(batch.len());
                batch.iter().map(|d| seen.insert(d.id.as_str())).collect()
            };
            let ids: Vec<&str> = batch
                .iter()
                .zip(&firsts)
                .filter(|(_, first)| **first)
                .map(|(d, _)| d.id.as_str())
                .collect();
            let bodies: Vec<&str> = batch
                .iter()
                .zip(&firsts)
                .filter(|(_, first)| **first)
                .map(|(d, _)| d.body.as_str())
                .collect();
            let outcome: Result<Vec<bool>, sqlx::Error> = sqlx::query_scalar::<_, String>(&insert)
                .bind(&ids)
                .bind(&bodies)
                .fetch_all(&pool)
                .await
                .map(|inserted| {
                    let inserted: std::collections::HashSet<String> =
                        inserted.into_iter().collect();
                    batch
                        .iter()
                        .zip(&firsts)
                        .map(|(d, first)| *first && inserted.contains(&d.id))
                        .collect()
                });
            reply_all(batch.into_iter().map(|d| d.reply), outcome);
            drop(slot);
        });
    }
}

/// Answers each of a batch's callers: all with their answer, or all with
/// the batch's error (the bench counts only what succeeded).
fn reply_all<T>(
    replies: impl Iterator<Item = oneshot::Sender<StoreResult<T>>>,
    outcome: Result<Vec<T>, sqlx::Error>,
) {
    match outcome {
        Ok(answers) => {
            for (reply, answer) in replies.zip(answers) {
                let _ = reply.send(Ok(answer));
            }
        }
        Err(e) => {
            let error = e.to_string();
            for reply in replies {
                let _ = reply.send(Err(StoreError::Other(error.clone())));
            }
        }
    }
}

/// Commits whatever has queued up as one transaction: per consume, the
/// conditional UPDATE, then the key's INSERT when it applied.
async fn sqlite_writer(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Job>,
    limit: i64,
    counters: Arc<str>,
    requests: Arc<str>,
) {
    let bump = format!(
        "UPDATE {counters} SET used = used + 1 WHERE customer_id = $1 AND used + 1 <= $2 \
         RETURNING used"
    );
    let record =
        format!("INSERT INTO {requests} (customer_id, idempotency_key, used) VALUES ($1, $2, $3)");
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let outcome: Result<Vec<Option<i64>>, sqlx::Error> = async {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut answers = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let used: Option<i64> = sqlx::query_scalar(&bump)
                    .bind(&job.customer)
                    .bind(limit)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(used) = used {
                    sqlx::query(&record)
                        .bind(&job.customer)
                        .bind(&job.key)
                        .bind(used)
                        .execute(&mut *tx)
                        .await?;
                }
                answers.push(used);
            }
            tx.commit().await?;
            Ok(answers)
        }
        .await;
        reply_all(jobs.drain(..).map(|j| j.reply), outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An id is stored once: the second delivery of it is answered `false`,
    /// and concurrent deliveries share commits without losing any.
    async fn stores_each_id_once(url: &str, prefix: &str) {
        let inbox = InboxCeiling::open(url, prefix).await.unwrap();
        assert!(inbox.insert("evt_1".into(), "{}".into()).await.unwrap());
        assert!(!inbox.insert("evt_1".into(), "{}".into()).await.unwrap());
        let inserts = (0..50).map(|i| {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.insert(format!("evt_{}", i % 25), "{}".into()).await })
        });
        let mut new = 0;
        for insert in inserts {
            new += usize::from(insert.await.unwrap().unwrap());
        }
        assert_eq!(new, 24, "evt_0 … evt_24 less evt_1, each once");
    }

    #[tokio::test]
    async fn the_inbox_ceiling_stores_each_id_once_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("c.db").display());
        stores_each_id_once(&url, "t").await;
    }

    #[tokio::test]
    async fn the_inbox_ceiling_stores_each_id_once_on_postgres() {
        let url = crate::testing::fresh_postgres_database().await.unwrap();
        stores_each_id_once(&url, "t").await;
    }

    /// The applying ceiling applies every stored event (a body that is not
    /// an event too), and the probe sees none left.
    async fn applies_every_stored_event(url: &str) {
        let inbox = InboxCeiling::open_applying(url, "a").await.unwrap();
        let probe = Unapplied::ceiling(url, "a").await.unwrap();
        let event = |i: i64| {
            serde_json::json!({ "id": format!("evt_{i}"), "type": "invoice.paid", "created": i,
                "data": { "object": { "id": format!("in_{i}"), "customer": format!("cus_{}", i % 3), "status": "paid" } } })
            .to_string()
        };
        for i in 0..20 {
            assert!(inbox.insert(format!("evt_{i}"), event(i)).await.unwrap());
        }
        assert!(inbox.insert("evt_bad".into(), "{".into()).await.unwrap());

        let mut polls = 0;
        while !probe.ids().await.unwrap().is_empty() {
            polls += 1;
            assert!(polls < 500, "the ceiling never applied everything");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Runs `statements` at `url` on a connection of their own.
    async fn execute(url: &str, statements: &[String]) {
        if url.starts_with("sqlite:") {
            sqlite_pool(url, statements).await.unwrap();
        } else {
            pg_pool(url, statements).await.unwrap();
        }
    }

    /// The probe's three questions over a table of known rows: which are
    /// unapplied, which of some named ids are, whether any is.
    async fn the_probe_answers_from_the_rows(url: &str) {
        let schema = [
            "DROP TABLE IF EXISTS p_inbox".to_owned(),
            "CREATE TABLE p_inbox (id TEXT PRIMARY KEY, body TEXT NOT NULL, \
             applied BIGINT NOT NULL DEFAULT 0)"
                .to_owned(),
            "INSERT INTO p_inbox (id, body, applied) VALUES ('evt_1', '{}', 1), \
             ('evt_2', '{}', 0), ('evt_3', '{}', 1), ('evt_4', '{}', 0)"
                .to_owned(),
        ];
        execute(url, &schema).await;
        let probe = Unapplied::ceiling(url, "p").await.unwrap();
        let set = |ids: &[&str]| {
            ids.iter()
                .map(|id| (*id).to_owned())
                .collect::<std::collections::HashSet<_>>()
        };
        assert_eq!(probe.ids().await.unwrap(), set(&["evt_2", "evt_4"]));
        assert_eq!(
            probe.among(&["evt_1", "evt_2", "evt_9"]).await.unwrap(),
            set(&["evt_2"])
        );
        assert_eq!(probe.among(&["evt_1", "evt_3"]).await.unwrap(), set(&[]));
        assert_eq!(probe.among(&[]).await.unwrap(), set(&[]));
        assert!(probe.any().await.unwrap());

        execute(url, &["UPDATE p_inbox SET applied = 1".to_owned()]).await;
        assert!(!probe.any().await.unwrap());
        assert_eq!(probe.among(&["evt_2", "evt_4"]).await.unwrap(), set(&[]));
    }

    #[tokio::test]
    async fn the_probe_answers_from_the_rows_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        the_probe_answers_from_the_rows(&format!("sqlite://{}", dir.path().join("p.db").display()))
            .await;
    }

    #[tokio::test]
    async fn the_probe_answers_from_the_rows_on_postgres() {
        let url = crate::testing::fresh_postgres_database().await.unwrap();
        the_probe_answers_from_the_rows(&url).await;
    }

    #[tokio::test]
    async fn the_applying_ceiling_applies_every_stored_event_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        applies_every_stored_event(&format!("sqlite://{}", dir.path().join("a.db").display()))
            .await;
    }

    #[tokio::test]
    async fn the_applying_ceiling_applies_every_stored_event_on_postgres() {
        let url = crate::testing::fresh_postgres_database().await.unwrap();
        applies_every_stored_event(&url).await;
    }
}
