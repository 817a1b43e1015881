//! The [`Reconciler`]: one run, planned (see `plan.rs`), then healed,
//! ingested and waited for, counted in the metrics and alerted on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_store::{EventStatus, InsertOutcome, Store, StoreError};
use billd_stripe::client::StripeClient;

use crate::pipeline::{Clock, InboxWorker};
use crate::telemetry::Metrics;

use super::plan::Plan;
use super::types::{ReconcileConfig, ReconcileError, ReconcileReport};

/// Runs reconciliation against one Stripe account and one store.
pub struct Reconciler {
    pub(super) store: Arc<dyn Store>,
    pub(super) stripe: StripeClient,
    pub(super) catalog: Arc<Catalog>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) metrics: Option<Arc<Metrics>>,
    pub(super) config: ReconcileConfig,
    /// Raises `reconcile_drift` after a run that healed drift.
    pub(super) alerter: Option<crate::jobs::alerts::Alerter>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("stripe", &self.stripe)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Reconciler {
    /// A reconciler. `clock` is the wall clock (the 30-day window and
    /// `received_at`); `metrics`, when given, counts runs and drift.
    pub fn new(
        store: Arc<dyn Store>,
        stripe: StripeClient,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
        config: ReconcileConfig,
    ) -> Self {
        Reconciler {
            store,
            stripe,
            catalog,
            clock,
            metrics,
            config,
            alerter: None,
        }
    }

    /// Alerts the operator (once per dedupe window) when a run heals drift:
    /// drift means webhooks are being missed.
    pub fn with_alerter(mut self, alerter: crate::jobs::alerts::Alerter) -> Self {
        self.alerter = Some(alerter);
        self
    }

    /// One run. A dry run only reads. Otherwise heal events are inserted
    /// and awaited (driving `worker` when given, as the CLI does; else the
    /// running server's inbox worker applies them), then the missing events
    /// are inserted (and, with `worker`, applied too).
    pub async fn run(
        &self,
        dry_run: bool,
        worker: Option<&InboxWorker>,
    ) -> Result<ReconcileReport, ReconcileError> {
        let started_at = self.clock.now();
        let Plan {
            mut report,
            heal,
            missing,
        } = self.plan().await?;
        report.dry_run = dry_run;
        if dry_run {
            return Ok(report);
        }
        for d in &report.drift {
            tracing::info!(
                customer = %d.customer, subscription = %d.subscription, kind = d.kind.as_str(),
                billd = %d.billd, stripe = %d.stripe, event_id = %d.heal_event,
                "reconciliation: healing drift"
            );
        }
        for m in &report.missing_overage {
            tracing::warn!(
                customer = %m.customer, subscription = %m.subscription, features = ?m.features,
                "reconciliation: subscription without its metered overage item; its overage is not invoiced until a plan change adds it"
            );
        }
        for u in &report.unlinked {
            tracing::warn!(
                subscription = %u.subscription, stripe_customer = %u.stripe_customer,
                "reconciliation: subscription of an unlinked Stripe customer; parked"
            );
        }
        report.heal_events_inserted = inserted(&self.store.insert_events(&heal).await?);
        let heal_ids: Vec<String> = heal.iter().map(|e| e.id.clone()).collect();
        let mut not_settled = self.settle(&heal_ids, worker).await?;
        report.events_ingested = inserted(&self.store.insert_events(&missing).await?);
        if worker.is_some() {
            let missing_ids: Vec<String> = missing.iter().map(|e| e.id.clone()).collect();
            not_settled.extend(self.settle(&missing_ids, worker).await?);
        }
        report.not_settled = not_settled;
        if let Some(metrics) = &self.metrics {
            metrics.reconcile_runs.inc();
            for d in &report.drift {
                metrics.reconcile_drift.inc(d.kind.as_str());
            }
        }
        if let Some(alerter) = &self.alerter {
            let by_kind: Vec<(&str, u64)> = report
                .drift_by_kind()
                .into_iter()
                .map(|(kind, n)| (kind.as_str(), n as u64))
                .collect();
            alerter.raise_drift(&by_kind, self.clock.now()).await?;
        }
        tracing::info!(
            checked = report.subscriptions_checked,
            drift = report.drift.len(),
            unlinked = report.unlinked.len(),
            ingested = report.events_ingested,
            "reconciliation finished"
        );
        self.record(started_at, &report).await;
        Ok(report)
    }

    /// Records a finished run for the console and the admin API. What the
    /// run healed stays healed if this fails, so it is logged, not returned.
    async fn record(&self, started_at: i64, report: &ReconcileReport) {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let run = billd_store::NewReconcileRun {
            started_at,
            checked: count(report.subscriptions_checked),
            drift: count(report.drift.len()),
            unlinked: count(report.unlinked.len()),
            ingested: count(report.events_ingested),
            report: serde_json::to_string(report).unwrap_or_default(),
        };
        if let Err(e) = self
            .store
            .record_reconcile_run(&run, self.clock.now())
            .await
        {
            tracing::warn!(error = %e, "reconciliation run not recorded");
        }
    }

    /// Waits until every event of `ids` is finished (applied, parked,
    /// skipped or dead), running `worker` rounds meanwhile when given;
    /// returns those still waiting at the deadline.
    async fn settle(
        &self,
        ids: &[String],
        worker: Option<&InboxWorker>,
    ) -> Result<Vec<String>, StoreError> {
        let deadline = Instant::now() + self.config.settle_timeout;
        let mut waiting: Vec<String> = ids.to_vec();
        loop {
            if let Some(worker) = worker {
                worker.run_once().await?;
            }
            let mut still = Vec::new();
            for id in waiting {
                let done = self.store.get_event(&id).await?.is_none_or(|e| {
                    matches!(
                        e.status,
                        EventStatus::Processed
                            | EventStatus::Skipped
                            | EventStatus::Unlinked
                            | EventStatus::Dead
                    )
                });
                if !done {
                    still.push(id);
                }
            }
            waiting = still;
            if waiting.is_empty() || Instant::now() >= deadline {
                return Ok(waiting);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn inserted(outcomes: &[InsertOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| **o == InsertOutcome::Inserted)
        .count()
}
