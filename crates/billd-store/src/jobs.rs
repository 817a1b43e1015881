//! The scheduler's side of the store: one lease row per periodic job, and
//! the sweeps that hand work held by a crashed worker back to the queues.
//!
//! A job run starts with [`JobStore::claim_job`], one conditional write
//! ("due, and nobody holds a live lease"), so with several billd processes
//! on one database exactly one of them runs each due run. The row keeps
//! `next_run_at` across restarts: a restarted process does not run a job
//! early, and a process killed mid-run leaves a lease that ends by itself.

use async_trait::async_trait;
use serde::Serialize;

use crate::{StoreError, StoreResult};

/// A scheduler job's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobRecord {
    /// The job's name (`renewal_reminders`, …).
    pub name: String,
    /// Who holds the lease (a scheduler instance id), while a run is on.
    pub lease_owner: Option<String>,
    /// When the current lease ends, unix seconds.
    pub lease_until: Option<i64>,
    /// When the job is due next.
    pub next_run_at: i64,
    /// When the last run finished.
    pub last_run_at: Option<i64>,
    /// The last run's error (none when it succeeded).
    pub last_error: Option<String>,
    /// Finished runs.
    pub runs: i64,
    /// Finished runs that failed.
    pub failures: i64,
}

/// How a claimed job run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFinish {
    /// When the job is due again.
    pub next_run_at: i64,
    /// The error, when the run failed.
    pub error: Option<String>,
}

/// Job leases and queue sweeps. Implemented by both stores; the contract
/// tests in `tests/contract.rs` run against both.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Claims job `name` for `owner` until `lease_until` when it is due
    /// (`next_run_at <= now`, or no row yet: a new job is due at once) and
    /// no live lease is held (none, or one that ended at or before `now`).
    /// Returns the row after the claim, or none when the job is not due or
    /// another owner holds it. Safe with several processes on one database.
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<Option<JobRecord>>;

    /// Ends `owner`'s lease on `name`: records the run (`last_run_at =
    /// now`, `last_error`, counters) and when it is due next. False (and
    /// nothing written) when `owner` no longer holds the lease.
    async fn finish_job(
        &self,
        name: &str,
        owner: &str,
        finish: &JobFinish,
        now: i64,
    ) -> StoreResult<bool>;

    /// Every job row, by name.
    async fn list_jobs(&self) -> StoreResult<Vec<JobRecord>>;

    /// Outbox rows whose worker's lease ended before `now` (the worker
    /// stopped or crashed mid-delivery) back to `pending`, due at once,
    /// attempts kept. Returns how many.
    async fn release_expired_outbox_leases(&self, now: i64) -> StoreResult<u64>;

    /// Inbox events whose worker's lease ended before `now` become
    /// `failed` (retried at once, attempts kept, `last_error` says why).
    /// Returns how many.
    async fn release_expired_inbox_leases(&self, now: i64) -> StoreResult<u64>;
}

/// Columns selected wherever a full [`JobRecord`] is read.
pub(crate) const JOB_COLUMNS: &str =
    "name, lease_owner, lease_until, next_run_at, last_run_at, last_error, runs, failures";

/// The `last_error` an inbox event gets when its lease is swept.
pub(crate) const INBOX_LEASE_EXPIRED: &str =
    "lease expired: the worker stopped before finishing; retried";

/// A `scheduler_jobs` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    name: String,
    lease_owner: Option<String>,
    lease_until: Option<i64>,
    next_run_at: i64,
    last_run_at: Option<i64>,
    last_error: Option<String>,
    runs: i64,
    failures: i64,
}

impl From<JobRow> for JobRecord {
    fn from(row: JobRow) -> Self {
        JobRecord {
            name: row.name,
            lease_owner: row.lease_owner,
            lease_until: row.lease_until,
            next_run_at: row.next_run_at,
            last_run_at: row.last_run_at,
            last_error: row.last_error,
            runs: row.runs,
            failures: row.failures,
        }
    }
}

/// Refuses an empty job name or owner, which would make leases ambiguous.
pub(crate) fn check_names(name: &str, owner: &str) -> StoreResult<()> {
    if name.trim().is_empty() || owner.trim().is_empty() {
        return Err(StoreError::Other(
            "a job lease needs a job name and an owner".to_owned(),
        ));
    }
    Ok(())
}
