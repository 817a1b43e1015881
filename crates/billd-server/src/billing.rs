//! Everything billing adds to the server, started in one call: the
//! lifecycle handler for every handled event type, the app and admin API
//! beside the webhook endpoint, and the outbox worker and the scheduler
//! next to the inbox worker, all stopped by the same cancellation token.

use std::sync::Arc;

use billd_core::Catalog;
use billd_store::Store;
use billd_stripe::client::StripeClient;
use tokio::net::TcpListener;

use crate::http::{ApiConfig, ApiKeys};
use crate::jobs::{AlertConfig, AlertDelivery, AlertMonitor, JobContext, SchedulerConfig};
use crate::pipeline::{Clock, Delivery, LifecycleHandler, OutboxConfig, OutboxWorker};
use crate::telemetry::Metrics;
use crate::{http, start_with_parts, Parts, Running, ServerConfig, Workers};

/// What billing runs with.
#[derive(Clone)]
pub struct BillingConfig {
    /// Plans, features and policies.
    pub catalog: Arc<Catalog>,
    /// The Stripe API (or an emulator); `None` leaves Stripe calls failing
    /// and retrying in the outbox, and disputes without a customer unlinked.
    pub stripe: Option<StripeClient>,
    /// App and admin API keys.
    pub api_keys: ApiKeys,
    /// Outbox worker settings.
    pub outbox: OutboxConfig,
    /// App API knobs.
    pub api: ApiConfig,
    /// Where emails and alerts go ([`crate::pipeline::LogDelivery`] by default).
    pub delivery: Arc<dyn Delivery>,
    /// The metrics `/metrics` renders; the outcomes of `delivery` are
    /// counted into its `emails`.
    pub metrics: Arc<Metrics>,
    /// Alert channels and conditions.
    pub alerts: AlertConfig,
    /// The scheduler ([`crate::jobs::billing_jobs`]); off: not started.
    pub scheduler: SchedulerConfig,
}

impl std::fmt::Debug for BillingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingConfig")
            .field("stripe", &self.stripe)
            .field("api_keys", &self.api_keys)
            .field("outbox", &self.outbox)
            .field("scheduler", &self.scheduler)
            .finish_non_exhaustive()
    }
}

/// Starts billd with billing: [`crate::start_with_parts`] with the
/// lifecycle registry and the API routes, plus the outbox worker, the
/// alert monitor and the scheduler (when `workers` is `Run`; the scheduler
/// unless turned off). `clock` drives both the webhook checks and billing
/// decisions.
pub fn start_billing(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    billing: BillingConfig,
    clock: Arc<dyn Clock>,
    workers: Workers,
) -> std::io::Result<Running> {
    let metrics = billing.metrics.clone();
    let registry = LifecycleHandler::new(
        store.clone(),
        billing.catalog.clone(),
        billing.stripe.clone(),
        clock.clone(),
    )
    .with_metrics(metrics.clone())
    .with_alert_channels(billing.alerts.channels())
    .with_concurrency(usize::try_from(config.worker.concurrency).unwrap_or(1))
    .registry();
    let routes = http::routes(
        store.clone(),
        billing.catalog.clone(),
        clock.clone(),
        billing.api_keys,
        billing.stripe.clone(),
        billing.api,
    );
    let running = start_with_parts(
        listener,
        store.clone(),
        config,
        clock.clone(),
        workers,
        Parts {
            registry,
            routes,
            metrics: metrics.clone(),
        },
    )?;
    if workers == Workers::Run && billing.scheduler.enabled {
        let jobs = JobContext {
            store: store.clone(),
            catalog: billing.catalog.clone(),
            stripe: billing.stripe.clone(),
            clock: clock.clone(),
            metrics: running.metrics.clone(),
        };
        let scheduler = crate::jobs::billing_scheduler(&jobs, billing.scheduler.clone());
        tokio::spawn(scheduler.run(running.cancel_token()));
    }
    if workers == Workers::Run {
        let delivery = AlertDelivery::new(
            billing.delivery,
            &billing.alerts,
            metrics.clone(),
            billing.outbox.max_attempts,
        )
        .map_err(std::io::Error::other)?;
        let monitor = AlertMonitor::new(store.clone(), metrics, clock.clone(), billing.alerts);
        let outbox = OutboxWorker::new(
            store,
            billing.stripe,
            Arc::new(delivery),
            clock,
            billing.outbox,
        );
        // Stops with the server's token. A row in hand when the process
        // exits is claimed again once its lease ends.
        tokio::spawn(outbox.run(running.cancel_token()));
        tokio::spawn(monitor.run(running.cancel_token()));
    }
    Ok(running)
}
