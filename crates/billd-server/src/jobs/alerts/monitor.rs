//! The [`AlertMonitor`]: checks every condition (see `checks.rs`) on its
//! interval and raises each at most once per window in this process.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use billd_core::AlertKind;
use billd_store::{BillingStore, Store, StoreResult};
use tokio_util::sync::CancellationToken;

use crate::pipeline::Clock;
use crate::telemetry::Metrics;

use super::alerter::Alerter;
use super::checks::signature_failures;
use super::config::AlertConfig;

/// What the monitor remembers between checks.
#[derive(Debug, Default)]
pub(super) struct MonitorState {
    /// `(when, cumulative signature failures)`, oldest first.
    pub(super) signature_samples: VecDeque<(i64, u64)>,
    /// Dedupe keys this process raised (or found raised): skipped until
    /// their window is over instead of writing to the store every check.
    pub(super) raised: HashSet<String>,
}

/// Checks the alert conditions periodically.
pub struct AlertMonitor {
    pub(super) alerter: Alerter,
    pub(super) store: Arc<dyn Store>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) config: AlertConfig,
    pub(super) state: Mutex<MonitorState>,
}

impl std::fmt::Debug for AlertMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertMonitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AlertMonitor {
    /// A monitor over `store`, reading the process `metrics`.
    pub fn new(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
        config: AlertConfig,
    ) -> Self {
        let billing: Arc<dyn BillingStore> = store.clone();
        let alerter = Alerter::new(billing, &config).with_metrics(metrics.clone());
        metrics
            .business
            .set_payment_window(config.payment_window_secs);
        let baseline = (clock.now(), signature_failures(&metrics));
        AlertMonitor {
            alerter,
            store,
            metrics,
            clock,
            config,
            state: Mutex::new(MonitorState {
                signature_samples: VecDeque::from([baseline]),
                raised: HashSet::new(),
            }),
        }
    }

    /// The alerter the monitor writes with.
    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }

    /// Runs checks every `check_interval` until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            if let Err(e) = self.check_once().await {
                tracing::warn!(error = %e, "alert check failed");
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.config.check_interval) => {}
            }
        }
    }

    /// Checks every condition once; returns the alerts written.
    pub async fn check_once(&self) -> StoreResult<Vec<AlertKind>> {
        let now = self.clock.now();
        let mut raised = Vec::new();
        for (kind, subject, message, at) in self.dead_letters(now).await? {
            if self.raise(kind, &subject, message, at, now).await? {
                raised.push(kind);
            }
        }
        if let Some(message) = self.signature_spike(now) {
            if self
                .raise(AlertKind::SignatureFailures, "webhooks", message, now, now)
                .await?
            {
                raised.push(AlertKind::SignatureFailures);
            }
        }
        if let Some(message) = self.payment_failure_rate(now) {
            if self
                .raise(AlertKind::PaymentFailureRate, "payments", message, now, now)
                .await?
            {
                raised.push(AlertKind::PaymentFailureRate);
            }
        }
        let silence_key = self
            .alerter
            .dedupe_key(AlertKind::WebhookSilence, "stripe", now);
        if !self.already_raised(&silence_key) {
            if let Some(message) = self.webhook_silence(now).await? {
                if self
                    .raise(AlertKind::WebhookSilence, "stripe", message, now, now)
                    .await?
                {
                    raised.push(AlertKind::WebhookSilence);
                }
            }
        }
        Ok(raised)
    }

    fn already_raised(&self, key: &str) -> bool {
        self.state
            .lock()
            .map(|s| s.raised.contains(key))
            .unwrap_or(false)
    }

    /// Raises unless this process already did this window; remembers it.
    async fn raise(
        &self,
        kind: AlertKind,
        subject: &str,
        message: String,
        at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let key = self.alerter.dedupe_key(kind, subject, at);
        if self.already_raised(&key) {
            return Ok(false);
        }
        let written = self.alerter.raise(kind, subject, message, at, now).await?;
        if let Ok(mut state) = self.state.lock() {
            // Keys of windows long over can never come back.
            let oldest = (now - 2 * self.alerter.window_secs).div_euclid(self.alerter.window_secs);
            state.raised.retain(|k| {
                k.rsplit_once(':')
                    .and_then(|(_, b)| b.parse::<i64>().ok())
                    .is_some_and(|b| b >= oldest)
            });
            state.raised.insert(key);
        }
        Ok(written)
    }
}
