//! Operator alerts: conditions that mean billing is breaking, sent to the
//! admin email (`BILLD_ADMIN_EMAIL`) and, when `BILLD_ALERT_WEBHOOK_URL` is
//! set, to a JSON webhook (Slack-compatible `{"text": …}` plus structured
//! fields).
//!
//! Every alert is one outbox row per channel, so it is retried like any
//! email and never lost by a crash. Its dedupe key is
//! `{kind}:{subject}:{bucket}` (`:webhook` appended for the webhook
//! channel), where `bucket` is the occurrence time divided by the dedupe
//! window: however many times a condition is seen within one window, and
//! however many billd instances see it, the outbox keeps one row per
//! channel. The next window alerts again.
//!
//! Conditions ([`AlertMonitor::check_once`], run every
//! `BILLD_ALERT_CHECK_INTERVAL_SECS`): inbox events or outbox rows
//! dead-lettered; a spike of webhook signature failures; the payment failure
//! rate over its threshold; no webhook for a long time while renewals were
//! due. The lifecycle's own alerts (a dispute opened, …) get a row per
//! channel through `pipeline::outbox_items`; reconciliation reports drift with
//! [`Alerter::raise_drift`].

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use billd_core::event::SubscriptionStatus;
use billd_core::{AlertKind, Effect};
use billd_store::{
    BillingStore, EventFilter, EventStatus, OutboxFilter, OutboxItem, OutboxStatus, Store,
    StoreResult,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::pipeline::{
    count_email, outbox_items, AlertChannels, Clock, Delivered, Delivery, DeliveryError,
    ALERT_WEBHOOK_KIND, REFETCH_EVENT_PREFIX,
};
use crate::telemetry::Metrics;

/// Webhook rejection reasons that count as signature failures.
pub const SIGNATURE_FAILURE_CODES: [&str; 5] = [
    "signature_missing",
    "signature_malformed",
    "signature_v1_missing",
    "signature_mismatch",
    "timestamp_out_of_tolerance",
];

/// Alert channels and thresholds (`BILLD_ALERT_*`).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// `BILLD_ALERT_WEBHOOK_URL`: also post alerts here.
    pub webhook_url: Option<String>,
    /// `BILLD_ALERT_DEDUPE_WINDOW_SECS`: one alert per condition per window.
    pub dedupe_window_secs: i64,
    /// `BILLD_ALERT_CHECK_INTERVAL_SECS`: how often conditions are checked.
    pub check_interval: Duration,
    /// `BILLD_ALERT_SIGNATURE_FAILURES`: this many signature failures …
    pub signature_failures: u64,
    /// `BILLD_ALERT_SIGNATURE_WINDOW_SECS`: … within this many seconds alert.
    pub signature_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_FAILURE_PERCENT`: alert when at least this share
    /// of payments failed …
    pub payment_failure_percent: u32,
    /// `BILLD_ALERT_PAYMENT_WINDOW_SECS`: … over this window …
    pub payment_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_MIN_COUNT`: … counting at least this many payments.
    pub payment_min_count: u64,
    /// `BILLD_ALERT_WEBHOOK_SILENCE_SECS`: alert when no webhook arrived for
    /// this long while a subscription's period ended in the meantime.
    pub webhook_silence_secs: i64,
}

impl AlertConfig {
    /// The channels this config enables besides the admin email.
    pub fn channels(&self) -> AlertChannels {
        AlertChannels {
            webhook: self.webhook_url.is_some(),
        }
    }
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_url: None,
            dedupe_window_secs: 3600,
            check_interval: Duration::from_secs(30),
            signature_failures: 20,
            signature_window_secs: 300,
            payment_failure_percent: 50,
            payment_window_secs: 3600,
            payment_min_count: 10,
            webhook_silence_secs: 6 * 3600,
        }
    }
}

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
    window_secs: i64,
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

/// What the monitor remembers between checks.
#[derive(Debug, Default)]
struct MonitorState {
    /// `(when, cumulative signature failures)`, oldest first.
    signature_samples: VecDeque<(i64, u64)>,
    /// Dedupe keys this process raised (or found raised): skipped until
    /// their window is over instead of writing to the store every check.
    raised: HashSet<String>,
}

/// Checks the alert conditions periodically.
pub struct AlertMonitor {
    alerter: Alerter,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    config: AlertConfig,
    state: Mutex<MonitorState>,
}

impl std::fmt::Debug for AlertMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertMonitor")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How many customers one page of the webhook-silence walk reads.
const CUSTOMER_PAGE: u32 = 500;

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

    /// One alert per queue and window in which rows died, over the last
    /// window: `(kind, subject, message, died_at)`.
    async fn dead_letters(&self, now: i64) -> StoreResult<Vec<(AlertKind, String, String, i64)>> {
        let since = now - self.alerter.window_secs;
        let window = self.alerter.window_secs;
        let mut alerts = Vec::new();

        let events = self
            .store
            .list_events(&EventFilter {
                status: Some(EventStatus::Dead),
                ..EventFilter::default()
            })
            .await?;
        let mut buckets: BTreeMap<i64, DeadBucket> = BTreeMap::new();
        for event in &events {
            if let Some(at) = event.processed_at.filter(|at| *at > since) {
                buckets
                    .entry(at.div_euclid(window))
                    .or_insert_with(|| DeadBucket::new(at))
                    .add(at, &event.event_type, event.last_error.as_deref());
            }
        }
        for bucket in buckets.into_values() {
            alerts.push((
                AlertKind::EventsDead,
                "inbox".to_owned(),
                format!(
                    "{} webhook event(s) were dead-lettered after their retries ({}); last \
                     error: {}; see `billd events list --status dead`, fix the cause, then \
                     `billd events replay --status dead`",
                    bucket.total(),
                    tally(&bucket.counts),
                    bucket.error.as_deref().unwrap_or("unknown")
                ),
                bucket.first_at,
            ));
        }

        let rows = self
            .store
            .list_outbox(&OutboxFilter {
                status: Some(OutboxStatus::Dead),
                ..OutboxFilter::default()
            })
            .await?;
        let mut buckets: BTreeMap<i64, DeadBucket> = BTreeMap::new();
        for row in &rows {
            if let Some(at) = row.done_at.filter(|at| *at > since) {
                buckets
                    .entry(at.div_euclid(window))
                    .or_insert_with(|| DeadBucket::new(at))
                    .add(at, &row.kind, row.last_error.as_deref());
            }
        }
        for bucket in buckets.into_values() {
            alerts.push((
                AlertKind::OutboxDead,
                "outbox".to_owned(),
                format!(
                    "{} outbox item(s) could not be delivered and are dead ({}); last error: {}",
                    bucket.total(),
                    tally(&bucket.counts),
                    bucket.error.as_deref().unwrap_or("unknown")
                ),
                bucket.first_at,
            ));
        }
        Ok(alerts)
    }

    /// The spike message when at least `signature_failures` signature
    /// failures happened within `signature_window_secs`.
    fn signature_spike(&self, now: i64) -> Option<String> {
        let total = signature_failures(&self.metrics);
        let window = self.config.signature_window_secs;
        let mut state = self.state.lock().ok()?;
        let samples = &mut state.signature_samples;
        samples.push_back((now, total));
        // Keep the newest sample at or before the window's start as the
        // baseline; older ones are no longer needed.
        while samples.len() > 1 && samples.get(1).is_some_and(|(at, _)| *at <= now - window) {
            samples.pop_front();
        }
        let baseline = samples.front().map_or(0, |(_, n)| *n);
        let recent = total.saturating_sub(baseline);
        (recent >= self.config.signature_failures.max(1)).then(|| {
            format!(
                "{recent} webhook request(s) failed signature verification within {window}s \
                 (threshold {}): a webhook secret may have been rotated without updating \
                 BILLD_STRIPE_WEBHOOK_SECRETS, or someone is probing the endpoint",
                self.config.signature_failures
            )
        })
    }

    /// The message when the failure ratio is over the threshold.
    fn payment_failure_rate(&self, now: i64) -> Option<String> {
        let window = self.metrics.business.failure_window(now);
        let threshold = u64::from(self.config.payment_failure_percent);
        let over = window.total >= self.config.payment_min_count.max(1)
            && window.failed * 100 >= threshold * window.total;
        over.then(|| {
            format!(
                "{} of {} payment(s) failed within {}s ({:.0}%, threshold {threshold}%)",
                window.failed,
                window.total,
                self.config.payment_window_secs,
                window.ratio() * 100.0
            )
        })
    }

    /// The message when no webhook arrived for `webhook_silence_secs` while
    /// a live subscription's period ended since the last one (Stripe would
    /// have sent at least its renewal invoice).
    async fn webhook_silence(&self, now: i64) -> StoreResult<Option<String>> {
        let recent = self
            .store
            .list_events(&EventFilter {
                limit: 50,
                ..EventFilter::default()
            })
            .await?;
        let Some(last) = recent
            .iter()
            .filter(|e| !e.id.starts_with(REFETCH_EVENT_PREFIX))
            .map(|e| e.received_at)
            .max()
        else {
            return Ok(None);
        };
        if now - last < self.config.webhook_silence_secs {
            return Ok(None);
        }
        let mut due = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_customers(after.as_ref(), CUSTOMER_PAGE)
                .await?;
            for customer in &page {
                if customer.deleted_at.is_some() {
                    continue;
                }
                for (id, sub) in &customer.state.subscriptions {
                    let live = !sub.deleted
                        && matches!(
                            sub.snapshot.status,
                            SubscriptionStatus::Active
                                | SubscriptionStatus::Trialing
                                | SubscriptionStatus::PastDue
                        );
                    let ended = sub
                        .snapshot
                        .current_period_end
                        .is_some_and(|end| end > last && end <= now);
                    if live && ended {
                        due.push(id.to_string());
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == CUSTOMER_PAGE as usize => {
                    after = Some(last.customer_id.clone());
                }
                _ => break,
            }
        }
        if due.is_empty() {
            return Ok(None);
        }
        let shown = due.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        Ok(Some(format!(
            "no webhook received for {}s although {} subscription(s) were due to renew since \
             ({shown}); check the endpoint at Stripe (`billd doctor`) and run `billd reconcile`",
            now - last,
            due.len()
        )))
    }
}

/// Cumulative signature failures seen by the webhook endpoint.
fn signature_failures(metrics: &Metrics) -> u64 {
    SIGNATURE_FAILURE_CODES
        .iter()
        .map(|code| metrics.webhooks_rejected.get(code))
        .sum()
}

/// The dead rows of one queue within one window.
#[derive(Debug)]
struct DeadBucket {
    first_at: i64,
    counts: BTreeMap<String, u64>,
    error: Option<String>,
}

impl DeadBucket {
    fn new(at: i64) -> Self {
        DeadBucket {
            first_at: at,
            counts: BTreeMap::new(),
            error: None,
        }
    }

    fn add(&mut self, at: i64, kind: &str, error: Option<&str>) {
        self.first_at = self.first_at.min(at);
        *self.counts.entry(kind.to_owned()).or_default() += 1;
        if self.error.is_none() {
            self.error = error.map(str::to_owned);
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

fn tally(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A [`Delivery`] that posts webhook-channel alert rows itself and hands
/// everything else (emails, email-channel alerts) to `inner`, counting
/// those outcomes in `Metrics::emails`: counted here, where the server
/// wires the delivery, every configured delivery shows on `/metrics`.
pub struct AlertDelivery {
    inner: Arc<dyn Delivery>,
    webhook: Option<(reqwest::Client, String)>,
    metrics: Arc<Metrics>,
    /// The outbox's `max_attempts`: a transient failure on this attempt is
    /// the row's last (counted `dead`).
    max_attempts: i32,
}

impl std::fmt::Debug for AlertDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL is a secret (Slack's carries its token).
        f.debug_struct("AlertDelivery")
            .field("webhook", &self.webhook.is_some())
            .finish_non_exhaustive()
    }
}

/// How long one webhook post may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

impl AlertDelivery {
    /// Wraps `inner`; webhook rows go to `config.webhook_url`;
    /// `max_attempts` must be the outbox worker's.
    pub fn new(
        inner: Arc<dyn Delivery>,
        config: &AlertConfig,
        metrics: Arc<Metrics>,
        max_attempts: i32,
    ) -> Result<Self, reqwest::Error> {
        let webhook = match &config.webhook_url {
            Some(url) => Some((
                reqwest::Client::builder()
                    .timeout(WEBHOOK_TIMEOUT)
                    .build()?,
                url.clone(),
            )),
            None => None,
        };
        Ok(AlertDelivery {
            inner,
            webhook,
            metrics,
            max_attempts,
        })
    }

    async fn post(&self, item: &OutboxItem, effect: &Effect) -> Result<Delivered, DeliveryError> {
        let Effect::AdminAlert { alert, message, .. } = effect else {
            return Err(DeliveryError::Permanent(format!(
                "{ALERT_WEBHOOK_KIND} row without an admin alert: {}",
                item.dedupe_key
            )));
        };
        let Some((client, url)) = &self.webhook else {
            // Written while a URL was configured; it has been removed since.
            self.metrics.alert_webhook_deliveries.inc("unconfigured");
            return Ok(Delivered::NoRecipient);
        };
        let kind = alert_label(*alert);
        let body = json!({
            "text": format!("[billd] {kind}: {message}"),
            "alert": kind,
            "message": message,
            "dedupe_key": item.dedupe_key,
            "customer": item.customer_id.as_ref().map(ToString::to_string),
            "raised_at": item.created_at,
            "source": "billd",
        });
        let result = client.post(url).json(&body).send().await;
        let outcome = match result {
            Ok(response) if response.status().is_success() => Ok(Delivered::Sent),
            Ok(response) => {
                let status = response.status();
                let error = format!("alert webhook answered {status}");
                // A 4xx other than timeout/rate limit means the URL or body is
                // wrong: retrying the same request cannot help.
                if status.is_client_error()
                    && status != reqwest::StatusCode::REQUEST_TIMEOUT
                    && status != reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Err(DeliveryError::Permanent(error))
                } else {
                    Err(DeliveryError::Transient(error))
                }
            }
            Err(e) => Err(DeliveryError::Transient(format!(
                "alert webhook unreachable: {}",
                e.without_url()
            ))),
        };
        self.metrics.alert_webhook_deliveries.inc(match &outcome {
            Ok(_) => "sent",
            Err(DeliveryError::Transient(_)) => "transient_failure",
            Err(DeliveryError::Permanent(_)) => "permanent_failure",
        });
        outcome
    }
}

#[async_trait]
impl Delivery for AlertDelivery {
    async fn deliver(
        &self,
        item: &OutboxItem,
        effect: &Effect,
    ) -> Result<Delivered, DeliveryError> {
        if item.kind == ALERT_WEBHOOK_KIND {
            self.post(item, effect).await
        } else {
            let result = self.inner.deliver(item, effect).await;
            count_email(&self.metrics.emails, item, &result, self.max_attempts);
            result
        }
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
