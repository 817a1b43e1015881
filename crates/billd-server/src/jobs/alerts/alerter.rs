//! The [`Alerter`]: an alert written to the outbox, one row per channel,
//! once per dedupe window; and the labels and dedupe keys it writes them
//! under.

use std::sync::Arc;

use billd_core::{AlertKind, Effect};
use billd_store::{BillingStore, StoreResult};

use crate::pipeline::{outbox_items, AlertChannels};
use crate::telemetry::Metrics;

use super::config::AlertConfig;

/// A `'static` metric label per alert kind (the serde name).
pub fn alert_label(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::DisputeOpened => "dispute_opened",
        AlertKind::DisputeClosed => "dispute_closed",
        AlertKind::UnknownPrice => "unknown_price",
        AlertKind::StripeCustomerDeleted => "stripe_customer_deleted",
        AlertKind::EventsDead => "events_dead",
        AlertKind::OutboxDead => "outbox_dead",
        AlertKind::SignatureFailures => "signature_failures",
        AlertKind::PaymentFailureRate => "payment_failure_rate",
        AlertKind::WebhookSilence => "webhook_silence",
        AlertKind::ReconcileDrift => "reconcile_drift",
    }
}

/// `{kind}:{subject}:{bucket}`: the same for every occurrence within one
/// window of `window_secs` (windows start at multiples of it).
pub fn dedupe_key(kind: AlertKind, subject: &str, at: i64, window_secs: i64) -> String {
    format!(
        "{}:{subject}:{}",
        alert_label(kind),
        at.div_euclid(window_secs.max(1))
    )
}

/// Writes alerts to the outbox, one row per channel, once per window.
#[derive(Clone)]
pub struct Alerter {
    store: Arc<dyn BillingStore>,
    channels: AlertChannels,
    pub(super) window_secs: i64,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("channels", &self.channels)
            .field("window_secs", &self.window_secs)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// An alerter over `store` with `config`'s channels and window.
    pub fn new(store: Arc<dyn BillingStore>, config: &AlertConfig) -> Self {
        Alerter {
            store,
            channels: config.channels(),
            window_secs: config.dedupe_window_secs.max(1),
            metrics: None,
        }
    }

    /// Counts raised and suppressed alerts in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The dedupe key of `kind` about `subject` for the window holding `at`.
    pub fn dedupe_key(&self, kind: AlertKind, subject: &str, at: i64) -> String {
        dedupe_key(kind, subject, at, self.window_secs)
    }

    /// Raises `kind` about `subject`, occurring at `at`: writes one outbox
    /// row per channel unless this window already has them. True when the
    /// alert was written, false when it was suppressed as a repeat.
    pub async fn raise(
        &self,
        kind: AlertKind,
        subject: &str,
        message: String,
        at: i64,
        now: i64,
    ) -> StoreResult<bool> {
        let effect = Effect::AdminAlert {
            alert: kind,
            dedupe_key: self.dedupe_key(kind, subject, at),
            message,
        };
        let items = outbox_items(std::slice::from_ref(&effect), self.channels)?;
        let inserted = self.store.enqueue_outbox(None, &items, now).await?;
        let raised = inserted > 0;
        if let Some(metrics) = &self.metrics {
            if raised {
                metrics.alerts_raised.inc(alert_label(kind));
            } else {
                metrics.alerts_suppressed.inc(alert_label(kind));
            }
        }
        if raised {
            tracing::warn!(alert = alert_label(kind), subject, "alert raised");
        }
        Ok(raised)
    }

    /// For reconciliation: alerts that a run found and healed drift, given
    /// as `(kind, count)` pairs (nothing is raised when every count is 0).
    pub async fn raise_drift(&self, drift: &[(&str, u64)], now: i64) -> StoreResult<bool> {
        let total: u64 = drift.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Ok(false);
        }
        let detail = drift
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(kind, n)| format!("{kind}: {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let message = format!(
            "reconciliation found {total} difference(s) between Stripe and billd ({detail}); \
             they were healed, but webhooks are being missed: check the webhook endpoint \
             and `billd events list`"
        );
        self.raise(AlertKind::ReconcileDrift, "stripe", message, now, now)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_share_a_window_and_change_with_the_next_one() {
        let key = |at: i64| dedupe_key(AlertKind::EventsDead, "inbox", at, 3600);

        assert_eq!(key(7200), key(10_799));
        assert_ne!(key(10_799), key(10_800));
        assert_eq!(key(7200), "events_dead:inbox:2");
        assert_eq!(
            dedupe_key(AlertKind::WebhookSilence, "stripe", 59, 60),
            "webhook_silence:stripe:0"
        );
    }

    #[test]
    fn every_alert_label_is_the_serde_name() {
        for kind in [
            AlertKind::DisputeOpened,
            AlertKind::DisputeClosed,
            AlertKind::UnknownPrice,
            AlertKind::StripeCustomerDeleted,
            AlertKind::EventsDead,
            AlertKind::OutboxDead,
            AlertKind::SignatureFailures,
            AlertKind::PaymentFailureRate,
            AlertKind::WebhookSilence,
            AlertKind::ReconcileDrift,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::from(alert_label(kind))
            );
        }
    }
}
