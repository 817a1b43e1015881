//! billd persistence: one [`Store`] trait with SQLite and PostgreSQL
//! implementations. SQL lives here and nowhere else; row types are converted
//! into plain Rust types so sqlx stays out of the domain.

use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod bench_data;
mod billing;
mod billing_sql;
pub mod ceiling;
mod checkout;
mod claim;
mod console;
mod dialect;
mod erasure;
mod error;
mod idempotency;
mod jobs;
mod migrations;
mod postgres;
mod rate_limit;
mod row;
mod sqlite;
pub mod testing;
mod usage;

pub use billing::{
    AuditRecord, BillingStore, CommitReceipt, CustomerCommit, CustomerProfile, CustomerRecord,
    NewOutboxItem, OutboxFilter, OutboxItem, OutboxResult, OutboxStats, OutboxStatus,
    UpsertedCustomer, UsageOutcome, UsageRequest, IDEMPOTENCY_CONFLICT, LEASE_CONFLICT,
    OUTBOX_LEASE_CONFLICT, VERSION_CONFLICT,
};
pub use checkout::{CheckoutRecord, CheckoutStore};
pub use console::{
    ActivityBucket, ConsoleStore, EventQuery, NewOperatorAction, NewReconcileRun, OperatorAction,
    ReconcileRunRecord, ReplayFilter,
};
pub use idempotency::{
    IdempotencyScope, IdempotencyStore, IdempotentRequest, KeyTaken, StoredAnswer,
};
pub use jobs::{JobFinish, JobRecord, JobStore};
pub use migrations::MigrationStatus;
pub use postgres::PgStore;
pub use rate_limit::{RateDecision, RateLimitStore};
pub use sqlite::{ServeLock, ServeLockError, SqliteOptions, SqliteStore};
pub use usage::{GuardedConsume, GuardedOutcome, UsageSnapshot, UsageStore, WriteMark};

/// Opens the store a database URL names: `sqlite://path` (the file is
/// created if missing) or `postgres://…` / `postgresql://…`. Does not run
/// migrations; call [`Store::migrate`].
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else {
        // The URL may carry a password: name only its scheme.
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        Err(StoreError::Other(format!(
            "unsupported database URL scheme {scheme:?}: expected sqlite:// or postgres://"
        )))
    }
}

/// A classified store error. The server maps `Unavailable` on the webhook
/// path to 503 so that Stripe retries the delivery.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row asked for does not exist.
    #[error("not found")]
    NotFound,
    /// A uniqueness or check constraint refused the write.
    #[error("conflict on {constraint}")]
    Conflict {
        /// The constraint (or table) that refused the write.
        constraint: String,
    },
    /// The database cannot be reached right now (connection refused, pool
    /// timed out, database locked past its timeout, disk full...).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: a bug, corrupt data, a failed migration.
    #[error("store error: {0}")]
    Other(String),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file (WAL, synchronous=FULL).
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// Processing status of an inbox row (`stripe_events.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventStatus {
    /// Acknowledged and stored as received (id and raw body only); the
    /// worker has not derived its columns yet (type, created, customer…:
    /// empty, 0 and none until then). Stored as a NULL status.
    Received,
    /// Stored, waiting for a worker.
    Pending,
    /// Claimed by a worker whose lease has not expired.
    Processing,
    /// Applied.
    Processed,
    /// Processing failed; will be retried at `next_attempt_at`.
    Failed,
    /// Failed too often; needs an operator (`billd events replay`).
    Dead,
    /// A type billd does not handle; kept for the record.
    Skipped,
    /// About a Stripe customer billd cannot link yet; applied once linked.
    Unlinked,
}

impl EventStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [EventStatus; 8] = [
        EventStatus::Received,
        EventStatus::Pending,
        EventStatus::Processing,
        EventStatus::Processed,
        EventStatus::Failed,
        EventStatus::Dead,
        EventStatus::Skipped,
        EventStatus::Unlinked,
    ];

    /// The name stored in `stripe_events.status` (and used by the CLI).
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Received => "received",
            EventStatus::Pending => "pending",
            EventStatus::Processing => "processing",
            EventStatus::Processed => "processed",
            EventStatus::Failed => "failed",
            EventStatus::Dead => "dead",
            EventStatus::Skipped => "skipped",
            EventStatus::Unlinked => "unlinked",
        }
    }
}

impl std::fmt::Display for EventStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A status name that is not one of [`EventStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event status {0:?} (expected one of received, pending, processing, processed, failed, dead, skipped, unlinked)")]
pub struct UnknownStatus(pub String);

impl FromStr for EventStatus {
    type Err = UnknownStatus;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

/// A verified webhook event to insert into the inbox.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Stripe event id (`evt_…`), the primary key.
    pub id: String,
    /// Event type, e.g. `invoice.paid`.
    pub event_type: String,
    /// `api_version` of the event, if Stripe sent one.
    pub api_version: Option<String>,
    /// `created` of the event (unix seconds, Stripe's clock).
    pub created: i64,
    /// `data.object.id`.
    pub object_id: Option<String>,
    /// The Stripe customer the event is about, used to serialise processing.
    pub stripe_customer: Option<String>,
    /// The raw JSON body exactly as received (stored scrubbed when it is
    /// about a deleted account, see [`Store::insert_events`]).
    pub payload: String,
    /// When billd received it (unix seconds, billd's clock).
    pub received_at: i64,
}

/// A webhook as the lean ingest stores it when acknowledging it: the event
/// id (unique) and the raw body, nothing derived. The inbox worker derives
/// the rest ([`Store::derive_events`]) before it claims the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// Stripe event id (`evt_…`), unique in the inbox.
    pub id: String,
    /// The raw JSON body exactly as received.
    pub payload: String,
    /// When billd received it (unix seconds, billd's clock).
    pub received_at: i64,
}

/// What the worker derived from a [`ReceivedEvent`]'s body.
#[derive(Debug, Clone)]
pub enum Derived {
    /// The envelope's columns (its `received_at` and `payload` are not
    /// written back, except a payload scrubbed for an erased customer).
    Event(NewEvent),
    /// The body is not an envelope billd can store: the row becomes `dead`
    /// with `error` as its `last_error`.
    Invalid {
        /// The event id.
        id: String,
        /// Why (a stable reason code first).
        error: String,
    },
}

impl Derived {
    /// The event id.
    pub fn id(&self) -> &str {
        match self {
            Derived::Event(event) => &event.id,
            Derived::Invalid { id, .. } => id,
        }
    }
}

/// What happened to one event of an insert batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// A new row was written.
    Inserted,
    /// A row with this event id already existed; nothing was written.
    Duplicate,
}

/// An inbox row.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    /// Stripe event id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// Event API version.
    pub api_version: Option<String>,
    /// Stripe's `created`.
    pub created: i64,
    /// `data.object.id`.
    pub object_id: Option<String>,
    /// Stripe customer id the event concerns.
    pub stripe_customer: Option<String>,
    /// Raw JSON payload.
    pub payload: String,
    /// Current status.
    pub status: EventStatus,
    /// How many processing attempts have been made.
    pub attempts: i32,
    /// Which claim of this row this is: 1 for its first claim, one more on
    /// every claim, never reset (not even by a requeue). A worker finishes
    /// the event under this number, so a worker whose lease ended and whose
    /// event another worker reclaimed cannot overwrite the newer outcome.
    pub claim: i64,
    /// When the next attempt may start (failed) or the lease ends (processing).
    pub next_attempt_at: Option<i64>,
    /// The last processing error.
    pub last_error: Option<String>,
    /// When billd received the event.
    pub received_at: i64,
    /// When processing finished (processed, skipped or dead).
    pub processed_at: Option<i64>,
}

/// How a worker finished one claimed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventResult {
    /// Applied.
    Processed,
    /// Not a type billd handles.
    Skipped,
    /// The customer cannot be linked yet.
    Unlinked,
    /// Failed; retry at the given time.
    Retry {
        /// Error message to keep in `last_error`.
        error: String,
        /// Unix seconds of the next attempt.
        next_attempt_at: i64,
    },
    /// Failed for the last time.
    Dead {
        /// Error message to keep in `last_error`.
        error: String,
    },
}

/// What [`Store::release_all_claims`] released.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReleasedClaims {
    /// Inbox events that were `processing`.
    pub events: u64,
    /// Outbox rows that were `processing`.
    pub outbox: u64,
    /// Scheduler job leases that were live.
    pub jobs: u64,
}

/// How much one [`Store::claim_event_batches`] takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimLimits {
    /// Customer batches (and events without a customer) per claim.
    pub groups: u32,
    /// Events per customer batch (at least 1).
    pub per_customer: u32,
    /// Events per claim in all (at least 1): a round's group commit is
    /// bounded by this, however many customers it spans.
    pub events: u32,
}

impl ClaimLimits {
    /// The most events one claim can take.
    pub fn max_events(self) -> usize {
        let groups = usize::try_from(self.groups).unwrap_or(usize::MAX);
        let per = usize::try_from(self.per_customer.max(1)).unwrap_or(usize::MAX);
        let events = usize::try_from(self.events.max(1)).unwrap_or(usize::MAX);
        groups.saturating_mul(per).min(events)
    }
}

/// What one [`Store::derive_and_claim`] did.
#[derive(Debug, Clone, Default)]
pub struct DeriveClaim {
    /// Received rows derived (they became pending, or dead).
    pub derived: u64,
    /// The events claimed, in claim order.
    pub claimed: Vec<StoredEvent>,
}

/// One outcome for [`Store::finish_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFinish {
    /// The event.
    pub id: String,
    /// The [`StoredEvent::claim`] it was processed under.
    pub claim: i64,
    /// How processing ended.
    pub result: EventResult,
}

/// Filter for listing inbox rows.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only rows with this status.
    pub status: Option<EventStatus>,
    /// Only rows of this type.
    pub event_type: Option<String>,
    /// At most this many rows, newest first; 0 means no limit.
    pub limit: u32,
}

/// Inbox depth and lag, for `/readyz` and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InboxStats {
    /// Number of rows per status.
    pub by_status: Vec<(EventStatus, i64)>,
    /// `received_at` of the oldest row waiting to be processed (pending or failed).
    pub oldest_waiting_received_at: Option<i64>,
}

/// Everything billd persists. One implementation per database; the same
/// contract tests run against both. The billing tables are the supertrait
/// [`BillingStore`] (and the checkout table [`CheckoutStore`], the stored
/// answers of [`IdempotencyStore`], the scheduler's leases [`JobStore`]), so
/// an `Arc<dyn Store>` offers them all.
#[async_trait]
pub trait Store:
    BillingStore
    + CheckoutStore
    + ConsoleStore
    + IdempotencyStore
    + JobStore
    + RateLimitStore
    + UsageStore
    + Send
    + Sync
    + 'static
{
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies pending migrations.
    async fn migrate(&self) -> StoreResult<()>;

    /// How the schema compares with this build's migrations, without
    /// changing anything (`billd doctor`). Stores that do not track
    /// migrations answer `Other`.
    async fn migration_status(&self) -> StoreResult<MigrationStatus> {
        Err(StoreError::Other(
            "this store does not report its migrations".into(),
        ))
    }

    /// Checks that the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Inserts a batch of events in one transaction (group commit). Returns
    /// one outcome per input, in order; a duplicate id (in the table or
    /// earlier in the same batch) is `Duplicate`, not an error. Returns only
    /// after the transaction is durably committed. The payload of an event
    /// about a Stripe customer of a deleted account is stored scrubbed of
    /// personal data (`billd_core::erasure`); this store learns of
    /// deletions made through another store on the same database within
    /// seconds.
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<Vec<InsertOutcome>>;

    /// The lean ingest: inserts a batch of acknowledged webhooks as
    /// `received` rows (id, body and arrival time only: no derived column,
    /// no index but the id's and the queue of received rows, no counter) in
    /// one transaction (group commit). Returns one outcome per input, in
    /// order; an id already stored (received or derived), or earlier in the
    /// batch, is `Duplicate`. Returns only after the transaction is durably
    /// committed.
    async fn receive_events(&self, events: &[ReceivedEvent]) -> StoreResult<Vec<InsertOutcome>>;

    /// Up to `limit` rows still `received` (not derived), oldest first.
    async fn received_events(&self, limit: u32) -> StoreResult<Vec<ReceivedEvent>>;

    /// Writes what the worker derived for received rows in one transaction:
    /// an [`Derived::Event`] row becomes `pending` with its columns (its
    /// payload stored scrubbed when it is about an erased Stripe customer,
    /// as [`Store::insert_events`] does), an [`Derived::Invalid`] one
    /// `dead`. Rows no longer `received` (derived meanwhile, by another
    /// process on PostgreSQL) are left alone. Returns how many were derived.
    async fn derive_events(&self, derived: &[Derived], now: i64) -> StoreResult<u64>;

    /// Claims events that are due (pending; failed with `next_attempt_at
    /// <= now`; processing whose lease ended, also `next_attempt_at <=
    /// now`), walking them oldest `created` first (ties: the earlier
    /// `insert_events` call first; within one batch the order is
    /// unspecified): up to `limits.groups` groups, where a group is a
    /// Stripe customer's batch of at most `limits.per_customer` events or
    /// one event without a customer, and never a customer that already has
    /// an event under a live lease. Returns the events in that order.
    /// Claimed rows become `processing` with `next_attempt_at =
    /// lease_until` and `attempts + 1`. Safe with several processes on one
    /// database.
    async fn claim_event_batches(
        &self,
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// [`Store::derive_events`] then [`Store::claim_event_batches`] in ONE
    /// write transaction (one commit: on SQLite one trip through the single
    /// writer the webhooks' group commit also needs), so the rows derived
    /// are claimable by the same call. The default runs the two calls.
    async fn derive_and_claim(
        &self,
        derived: &[Derived],
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<DeriveClaim> {
        let derived = self.derive_events(derived, now).await?;
        let claimed = self.claim_event_batches(now, lease_until, limits).await?;
        Ok(DeriveClaim { derived, claimed })
    }

    /// [`Store::claim_event_batches`] taking at most one event per Stripe
    /// customer: up to `limit` events.
    async fn claim_events(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        let limits = ClaimLimits {
            groups: limit,
            per_customer: 1,
            events: limit,
        };
        self.claim_event_batches(now, lease_until, limits).await
    }

    /// Extends the lease of claimed events still held under their claim
    /// (`(id, claim)` pairs) to `lease_until`: the heartbeat of a worker
    /// whose batch outlasts a short lease. Returns how many were renewed
    /// (an event reclaimed or finished since is not).
    async fn renew_events(&self, held: &[(String, i64)], lease_until: i64) -> StoreResult<u64>;

    /// Ends every inbox lease, outbox claim and scheduler job lease at
    /// once, making their rows due at `now` (attempts, claim numbers and
    /// lease owners kept, so a late finish by their old holder is still
    /// refused). Only for a process that knows no other holds a claim on
    /// the database: a SQLite file served by one process, at its start-up.
    async fn release_all_claims(&self, now: i64) -> StoreResult<ReleasedClaims>;

    /// Records how processing of a claimed event ended, if `claim` is still
    /// the event's current claim (its [`StoredEvent::claim`]). An event that
    /// is not `processing` (never claimed, or already finished), or that was
    /// reclaimed since (a late finish after the lease ended), is `Conflict`
    /// and nothing is written; an unknown id is `NotFound`.
    async fn finish_event(
        &self,
        id: &str,
        claim: i64,
        result: EventResult,
        now: i64,
    ) -> StoreResult<()>;

    /// Records several outcomes in one transaction (one commit, one fsync),
    /// so that a worker finishing a claimed batch does not hold SQLite's
    /// single writer once per event. Returns, per input, whether the event
    /// was `processing` under that claim and is now finished (false:
    /// unknown, not claimed, or reclaimed since; nothing written for it).
    async fn finish_events(&self, results: &[EventFinish], now: i64) -> StoreResult<Vec<bool>> {
        let mut finished = Vec::with_capacity(results.len());
        for finish in results {
            let outcome = self
                .finish_event(&finish.id, finish.claim, finish.result.clone(), now)
                .await;
            finished.push(match outcome {
                Ok(()) => true,
                Err(StoreError::NotFound | StoreError::Conflict { .. }) => false,
                Err(other) => return Err(other),
            });
        }
        Ok(finished)
    }

    /// One inbox row.
    async fn get_event(&self, id: &str) -> StoreResult<Option<StoredEvent>>;

    /// Inbox rows matching a filter, newest first (the console's list,
    /// [`ConsoleStore::find_events`], with fewer filters).
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<StoredEvent>> {
        self.find_events(&EventQuery {
            status: filter.status,
            event_type: filter.event_type.clone(),
            limit: filter.limit,
            ..EventQuery::default()
        })
        .await
    }

    /// Puts one event back to `pending` (attempts reset) so it is processed
    /// again. Returns false when the id is unknown.
    async fn requeue_event(&self, id: &str, now: i64) -> StoreResult<bool>;

    /// Puts every event with `status` back to `pending`; returns how many.
    async fn requeue_by_status(&self, status: EventStatus, now: i64) -> StoreResult<u64>;

    /// Depth per status and the age of the oldest waiting event.
    async fn inbox_stats(&self) -> StoreResult<InboxStats>;

    /// Brings the query planner's statistics of billd's busiest tables up
    /// to date where they lag far behind the rows; returns the tables
    /// analysed. On PostgreSQL a table changed by more rows since its last
    /// analysis than it held then (at least [`STATISTICS_MIN_CHANGES`]) is
    /// analysed: a young table's statistics (and its indexes', built
    /// empty) describe it as empty, and the planner then scans a whole
    /// index or table per claim or finish until autovacuum, a minute or
    /// more later, analyses it. SQLite's hot statements name their
    /// indexes (`INDEXED BY`) and need no statistics: nothing to do there.
    async fn refresh_statistics(&self) -> StoreResult<Vec<String>> {
        Ok(Vec::new())
    }
}

/// Row changes since a table's last analysis below which
/// [`Store::refresh_statistics`] leaves it alone, however small it is.
pub const STATISTICS_MIN_CHANGES: i64 = 1000;

/// The statistics target of [`Store::refresh_statistics`]'s analyses
/// (PostgreSQL's default is 100). An analysis samples 300 rows per unit of
/// target, and reading 30,000 rows of a young inbox (a few KiB each) took
/// a core for over 100 ms, several times in a burst; 3,000 rows tell the
/// planner what it lacked (how many rows, in which statuses) in a tenth of
/// that. Autovacuum's later analyses use the server's own target.
pub const STATISTICS_TARGET: i32 = 10;
