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

use crate::dialect::Dialect;
use crate::{PgStore, SqliteStore, StoreError, StoreResult};

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

/// [`JobStore`] for a store with a [`Dialect`]. A claim is one `INSERT …
/// ON CONFLICT DO UPDATE … WHERE`: on SQLite every write goes through the
/// single writer, so the "due and not leased" check and the write cannot
/// interleave with another claimer's; on PostgreSQL a concurrent claimer
/// waits for the row lock and then re-checks the condition against the
/// winner's lease, so it gets no row.
macro_rules! job_store {
    ($store:ty) => {
        #[async_trait]
        impl JobStore for $store {
            async fn claim_job(
                &self,
                name: &str,
                owner: &str,
                now: i64,
                lease_until: i64,
            ) -> StoreResult<Option<JobRecord>> {
                check_names(name, owner)?;
                let row: Option<JobRow> = sqlx::query_as(&format!(
                    "INSERT INTO scheduler_jobs (name, lease_owner, lease_until, next_run_at) \
                     VALUES ($1, $2, $4, $3) \
                     ON CONFLICT (name) DO UPDATE \
                       SET lease_owner = excluded.lease_owner, \
                           lease_until = excluded.lease_until \
                       WHERE scheduler_jobs.next_run_at <= $3 \
                         AND (scheduler_jobs.lease_until IS NULL \
                              OR scheduler_jobs.lease_until <= $3) \
                     RETURNING {JOB_COLUMNS}"
                ))
                .bind(name)
                .bind(owner)
                .bind(now)
                .bind(lease_until)
                .fetch_optional(self.writer())
                .await?;
                Ok(row.map(JobRecord::from))
            }

            async fn finish_job(
                &self,
                name: &str,
                owner: &str,
                finish: &JobFinish,
                now: i64,
            ) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE scheduler_jobs \
                     SET lease_owner = NULL, lease_until = NULL, last_run_at = $3, \
                         next_run_at = $4, last_error = $5, runs = runs + 1, \
                         failures = failures + (CASE WHEN $5 IS NULL THEN 0 ELSE 1 END) \
                     WHERE name = $1 AND lease_owner = $2",
                )
                .bind(name)
                .bind(owner)
                .bind(now)
                .bind(finish.next_run_at)
                .bind(finish.error.as_deref())
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_jobs(&self) -> StoreResult<Vec<JobRecord>> {
                let rows: Vec<JobRow> = sqlx::query_as(&format!(
                    "SELECT {JOB_COLUMNS} FROM scheduler_jobs ORDER BY name"
                ))
                .fetch_all(self.reader())
                .await?;
                Ok(rows.into_iter().map(JobRecord::from).collect())
            }

            async fn release_expired_outbox_leases(&self, now: i64) -> StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE outbox SET status = 'pending', next_attempt_at = $1 \
                     WHERE status = 'processing' AND next_attempt_at <= $1",
                )
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }

            async fn release_expired_inbox_leases(&self, now: i64) -> StoreResult<u64> {
                let done = sqlx::query(
                    "UPDATE stripe_events \
                     SET status = 'failed', next_attempt_at = $1, last_error = $2 \
                     WHERE status = 'processing' AND next_attempt_at <= $1",
                )
                .bind(now)
                .bind(INBOX_LEASE_EXPIRED)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

job_store!(SqliteStore);
job_store!(PgStore);
