//! [`JobStore`] on PostgreSQL: a claim is one `INSERT … ON CONFLICT DO UPDATE … WHERE`;
//! a concurrent claimer waits for the row lock and then re-checks the
//! condition against the winner's lease, so it gets no row.

use async_trait::async_trait;

use super::PgStore;
use crate::jobs::{check_names, JobRow, INBOX_LEASE_EXPIRED, JOB_COLUMNS};
use crate::{JobFinish, JobRecord, JobStore, StoreResult};

#[async_trait]
impl JobStore for PgStore {
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
               SET lease_owner = excluded.lease_owner, lease_until = excluded.lease_until \
               WHERE scheduler_jobs.next_run_at <= $3 \
                 AND (scheduler_jobs.lease_until IS NULL OR scheduler_jobs.lease_until <= $3) \
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(name)
        .bind(owner)
        .bind(now)
        .bind(lease_until)
        .fetch_optional(&self.pool)
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
             SET lease_owner = NULL, lease_until = NULL, last_run_at = $3, next_run_at = $4, \
                 last_error = $5, runs = runs + 1, \
                 failures = failures + (CASE WHEN $5 IS NULL THEN 0 ELSE 1 END) \
             WHERE name = $1 AND lease_owner = $2",
        )
        .bind(name)
        .bind(owner)
        .bind(now)
        .bind(finish.next_run_at)
        .bind(finish.error.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_jobs(&self) -> StoreResult<Vec<JobRecord>> {
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {JOB_COLUMNS} FROM scheduler_jobs ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(JobRecord::from).collect())
    }

    async fn release_expired_outbox_leases(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE outbox SET status = 'pending', next_attempt_at = $1 \
             WHERE status = 'processing' AND next_attempt_at <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_expired_inbox_leases(&self, now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE stripe_events SET status = 'failed', next_attempt_at = $1, last_error = $2 \
             WHERE status = 'processing' AND next_attempt_at <= $1",
        )
        .bind(now)
        .bind(INBOX_LEASE_EXPIRED)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
