//! The scheduler's `reconcile` job: a [`Reconciler`] run on the
//! scheduler's interval.

use super::run::Reconciler;
use super::types::ReconcileConfig;

/// The scheduler's `reconcile` job (daily by default; interval through
/// `BILLD_SCHEDULER_INTERVALS=reconcile=…`): one real run, its heal events
/// applied by the serving process's own inbox worker.
pub struct ReconcileJob {
    reconciler: Option<Reconciler>,
}

impl std::fmt::Debug for ReconcileJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconcileJob")
            .field("reconciler", &self.reconciler)
            .finish()
    }
}

impl ReconcileJob {
    /// The job over `ctx`; without a Stripe client each run only says so.
    pub fn new(ctx: &crate::jobs::JobContext) -> Self {
        let reconciler = ctx.stripe.clone().map(|stripe| {
            Reconciler::new(
                ctx.store.clone(),
                stripe,
                ctx.catalog.clone(),
                ctx.clock.clone(),
                Some(ctx.metrics.clone()),
                ReconcileConfig::default(),
            )
        });
        ReconcileJob { reconciler }
    }
}

#[async_trait::async_trait]
impl crate::jobs::scheduler::Job for ReconcileJob {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    async fn run(&self, _now: i64) -> anyhow::Result<crate::jobs::scheduler::JobReport> {
        let report = crate::jobs::scheduler::JobReport::default();
        let Some(reconciler) = &self.reconciler else {
            return Ok(report.with("no_stripe_client", 1));
        };
        let run = reconciler.run(false, None).await?;
        Ok(report
            .with("checked", run.subscriptions_checked as u64)
            .with("drift", run.drift.len() as u64)
            .with("unlinked", run.unlinked.len() as u64)
            .with("events_ingested", run.events_ingested as u64))
    }
}
