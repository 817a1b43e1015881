//! Jobs: the scheduler ([`Scheduler`]) and the jobs it runs, declared in
//! one place: [`billing_jobs`] (reminders, card expiry, grace expiry,
//! sweeps, reconciliation ([`Reconciler`])); and the alert monitor
//! ([`AlertMonitor`]) with its delivery. A job is a struct implementing
//! [`Job`]; adding one is one line in that list (its default interval
//! beside it).
//!
//! Depends on `pipeline` and `telemetry`; never on `http`.

use std::sync::Arc;

use billd_core::Catalog;
use billd_store::Store;
use billd_stripe::client::StripeClient;

use crate::pipeline::Clock;
use crate::telemetry::Metrics;

mod alerts;
mod customers;
mod reconcile;
mod scheduler;
mod sweeps;

pub use alerts::{
    alert_label, dedupe_key, AlertConfig, AlertDelivery, AlertMonitor, Alerter,
    SIGNATURE_FAILURE_CODES,
};
pub use customers::{CardExpiry, GraceExpiry, RenewalReminders};
pub use reconcile::{
    compare, heal_created, missing_overage, Drift, DriftKind, FieldDrift, MissingOverage,
    ReconcileConfig, ReconcileError, ReconcileJob, ReconcileReport, Reconciler,
    UnlinkedSubscription, EVENTS_WINDOW_SECS,
};
pub use scheduler::{Job, JobReport, JobRun, RunOutcome, Scheduler, SchedulerConfig};
pub use sweeps::{IdempotencySweep, InboxSweep, OutboxSweep};

/// What jobs run with.
#[derive(Clone)]
pub struct JobContext {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Plans, features and policies.
    pub catalog: Arc<Catalog>,
    /// The Stripe API, when configured.
    pub stripe: Option<StripeClient>,
    /// Time source (the scheduler passes `now` to each run, from it).
    pub clock: Arc<dyn Clock>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("backend", &self.store.backend())
            .field("stripe", &self.stripe)
            .finish_non_exhaustive()
    }
}

/// Customers read per page when a job walks them all.
pub const CUSTOMER_PAGE: u32 = 200;

/// Every job billd schedules, with its default interval in seconds
/// (overridable with `BILLD_SCHEDULER_INTERVALS`).
pub fn billing_jobs(ctx: &JobContext) -> Vec<(Arc<dyn Job>, i64)> {
    vec![
        (Arc::new(RenewalReminders::new(ctx)), 3600),
        (Arc::new(CardExpiry::new(ctx)), 6 * 3600),
        (Arc::new(GraceExpiry::new(ctx)), 300),
        (Arc::new(OutboxSweep::new(ctx)), 60),
        (Arc::new(InboxSweep::new(ctx)), 60),
        (Arc::new(IdempotencySweep::new(ctx)), 3600),
        (Arc::new(ReconcileJob::new(ctx)), 86_400),
    ]
}

/// A scheduler with every job of [`billing_jobs`] registered.
pub fn billing_scheduler(ctx: &JobContext, config: SchedulerConfig) -> Scheduler {
    let mut scheduler = Scheduler::new(
        ctx.store.clone(),
        ctx.clock.clone(),
        ctx.metrics.clone(),
        config,
    );
    for (job, every) in billing_jobs(ctx) {
        scheduler.register(job, every);
    }
    scheduler
}
