//! `outbox_sweep` and `inbox_sweep`: hand rows whose worker's lease ended
//! (the process stopped or crashed mid-work) back to their queue, and report
//! each queue's depth in the log. `idempotency_sweep`: deletes the stored
//! answers of `Idempotency-Key` requests once they expired.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use billd_store::{EventStatus, OutboxStatus, Store};

use super::JobContext;
use crate::jobs::scheduler::{Job, JobReport};

fn count<S: PartialEq + Copy>(by_status: &[(S, i64)], status: S) -> u64 {
    by_status
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| u64::try_from(*n).unwrap_or(0))
}

/// `outbox_sweep`: expired outbox leases back to `pending`.
pub struct OutboxSweep {
    store: Arc<dyn Store>,
}

impl OutboxSweep {
    /// The job over `ctx`'s store.
    pub fn new(ctx: &JobContext) -> Self {
        OutboxSweep {
            store: ctx.store.clone(),
        }
    }
}

#[async_trait]
impl Job for OutboxSweep {
    fn name(&self) -> &'static str {
        "outbox_sweep"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let released = self
            .store
            .release_expired_outbox_leases(now)
            .await
            .context("releasing expired outbox leases")?;
        let stats = self.store.outbox_stats().await.context("outbox depth")?;
        let oldest = stats
            .oldest_waiting_created_at
            .map_or(0, |t| u64::try_from(now - t).unwrap_or(0));
        Ok(JobReport::default()
            .with("released", released)
            .with("pending", count(&stats.by_status, OutboxStatus::Pending))
            .with(
                "processing",
                count(&stats.by_status, OutboxStatus::Processing),
            )
            .with("dead", count(&stats.by_status, OutboxStatus::Dead))
            .with("oldest_waiting_secs", oldest))
    }
}

/// `inbox_sweep`: expired inbox leases become `failed`, retried at once.
pub struct InboxSweep {
    store: Arc<dyn Store>,
}

impl InboxSweep {
    /// The job over `ctx`'s store.
    pub fn new(ctx: &JobContext) -> Self {
        InboxSweep {
            store: ctx.store.clone(),
        }
    }
}

#[async_trait]
impl Job for InboxSweep {
    fn name(&self) -> &'static str {
        "inbox_sweep"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let released = self
            .store
            .release_expired_inbox_leases(now)
            .await
            .context("releasing expired inbox leases")?;
        let stats = self.store.inbox_stats().await.context("inbox depth")?;
        Ok(JobReport::default()
            .with("released", released)
            .with("pending", count(&stats.by_status, EventStatus::Pending))
            .with("failed", count(&stats.by_status, EventStatus::Failed))
            .with("dead", count(&stats.by_status, EventStatus::Dead))
            .with("unlinked", count(&stats.by_status, EventStatus::Unlinked))
            .with(
                "lag_secs",
                u64::try_from(crate::pipeline::inbox_lag_secs(&stats, now)).unwrap_or(0),
            ))
    }
}

/// `idempotency_sweep`: deletes stored `Idempotency-Key` answers older than
/// 24 hours. Reads already ignore them; the sweep keeps the table to the
/// last day's keys.
pub struct IdempotencySweep {
    store: Arc<dyn Store>,
}

impl IdempotencySweep {
    /// The job over `ctx`'s store.
    pub fn new(ctx: &JobContext) -> Self {
        IdempotencySweep {
            store: ctx.store.clone(),
        }
    }
}

#[async_trait]
impl Job for IdempotencySweep {
    fn name(&self) -> &'static str {
        "idempotency_sweep"
    }

    async fn run(&self, now: i64) -> anyhow::Result<JobReport> {
        let deleted = self
            .store
            .delete_expired_idempotency_keys(now)
            .await
            .context("deleting expired idempotency keys")?;
        Ok(JobReport::default().with("deleted", deleted))
    }
}
