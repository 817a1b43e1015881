//! The outbox worker: delivers the effects `billd_core::apply` decided,
//! which the lifecycle committed as outbox rows with the state change.
//!
//! - `cancel_subscription` → `DELETE /v1/subscriptions/{id}` with the row's
//!   dedupe key as the idempotency key, so a retry after a crash cannot
//!   cancel twice (and an already canceled subscription counts as done);
//! - `refetch_subscription` → `GET /v1/subscriptions/{id}`, fed back into
//!   the inbox as a synthetic authoritative event (id
//!   `evt_billd_refetch_{sub}_{tie}`, `…_{tie}_r{round}` for later rounds),
//!   so the lifecycle handler applies it exactly like a webhook;
//! - `delete_stripe_customer` → once the account's cancels are done,
//!   `DELETE /v1/customers/{id}` (or, with `anonymize`, an update unsetting
//!   email, name, phone and address), keyed by the row's dedupe key; a
//!   customer Stripe no longer has counts as done;
//! - `meter_event` → `POST /v1/billing/meter_events` with the consume's
//!   identifier; Stripe refusing a known identifier (a resend after a lost
//!   answer) counts as done, so an overage is billed once;
//! - emails and admin alerts → a [`Delivery`] backend ([`LogDelivery`]
//!   until a mailer is plugged in).
//!
//! Failures retry with backoff; Stripe refusing the call (a 4xx that
//! retrying cannot fix) or `max_attempts` failures make the row `dead`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billd_core::Effect;
use billd_store::{
    NewEvent, NewOutboxItem, OutboxFilter, OutboxItem, OutboxResult, OutboxStatus, StoreError,
    StoreResult, OUTBOX_LEASE_CONFLICT,
};
use billd_stripe::client::{StripeClient, StripeError};
use rand::Rng;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::pipeline::clock::Clock;
use crate::pipeline::lifecycle::{BillingBackend, OBSERVED_NS_FIELD, REFETCH_EVENT_PREFIX};
use crate::pipeline::worker::Backoff;

/// Why one delivery failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// Worth retrying later (network, a server or mailbox temporarily down).
    #[error("{0}")]
    Transient(String),
    /// Retrying cannot help (refused by Stripe, malformed row).
    #[error("{0}")]
    Permanent(String),
}

/// What a successful delivery did with the row (the row is done either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// Handed to the mail server (or the alert webhook).
    Sent,
    /// Nobody to send to (a customer without an address): nothing to retry.
    NoRecipient,
    /// Written to the log because no mailer is configured (dev mode).
    Logged,
}

/// Sends emails and admin alerts.
#[async_trait]
pub trait Delivery: Send + Sync + 'static {
    /// Delivers one `Email` or `AdminAlert` effect of outbox row `item`.
    async fn deliver(&self, item: &OutboxItem, effect: &Effect)
        -> Result<Delivered, DeliveryError>;
}

/// A delivery backend that writes each email and alert to the log: the
/// default until SMTP is configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogDelivery;

#[async_trait]
impl Delivery for LogDelivery {
    async fn deliver(
        &self,
        item: &OutboxItem,
        effect: &Effect,
    ) -> Result<Delivered, DeliveryError> {
        let customer = item.customer_id.as_ref().map(ToString::to_string);
        match effect {
            Effect::Email {
                template, params, ..
            } => tracing::info!(
                outbox_id = item.id, customer = ?customer, template = ?template, params = ?params,
                "email (log delivery)"
            ),
            Effect::AdminAlert { alert, message, .. } => tracing::warn!(
                outbox_id = item.id, customer = ?customer, alert = ?alert, %message,
                "admin alert (log delivery)"
            ),
            other => {
                return Err(DeliveryError::Permanent(format!(
                    "not an email or alert: {}",
                    other.dedupe_key()
                )))
            }
        }
        Ok(Delivered::Logged)
    }
}

/// Outbox worker settings.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// Attempts before a row is `dead`.
    pub max_attempts: i32,
    /// How long a claim lasts, seconds.
    pub lease_secs: i64,
    /// How often the claims of a round still being delivered are renewed
    /// (to `now + lease_secs`), so a slow delivery keeps its rows; well
    /// under `lease_secs`.
    pub heartbeat: Duration,
    /// Rows claimed per round.
    pub batch: u32,
    /// How often to look for due rows.
    pub poll_interval: Duration,
    /// Retry backoff.
    pub backoff: Backoff,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            max_attempts: 12,
            lease_secs: 300,
            heartbeat: Duration::from_secs(100),
            batch: 16,
            poll_interval: Duration::from_secs(1),
            backoff: Backoff {
                base_secs: 10,
                cap_secs: 3600,
            },
        }
    }
}

/// The outbox worker.
pub struct OutboxWorker<S: BillingBackend + ?Sized> {
    store: Arc<S>,
    stripe: Option<StripeClient>,
    delivery: Arc<dyn Delivery>,
    clock: Arc<dyn Clock>,
    config: OutboxConfig,
}

impl<S: BillingBackend + ?Sized> std::fmt::Debug for OutboxWorker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxWorker")
            .field("stripe", &self.stripe)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Counts of what one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxReport {
    /// Rows claimed.
    pub claimed: usize,
    /// Rows delivered.
    pub sent: usize,
    /// Rows that will be retried.
    pub retried: usize,
    /// Rows that became dead.
    pub dead: usize,
    /// Rows whose claim was lost before their delivery ended (another
    /// worker claimed them after the lease ran out): outcome not recorded.
    pub lost: usize,
}

impl<S: BillingBackend + ?Sized> OutboxWorker<S> {
    /// A worker over `store`. Without `stripe`, Stripe calls fail and retry
    /// (until a restart with a key, or dead).
    pub fn new(
        store: Arc<S>,
        stripe: Option<StripeClient>,
        delivery: Arc<dyn Delivery>,
        clock: Arc<dyn Clock>,
        config: OutboxConfig,
    ) -> Self {
        OutboxWorker {
            store,
            stripe,
            delivery,
            clock,
            config,
        }
    }

    /// Runs rounds until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        loop {
            let full = match self.run_once().await {
                Ok(report) => report.claimed >= self.config.batch as usize,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox round failed");
                    false
                }
            };
            if full && !cancel.is_cancelled() {
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        tracing::info!("outbox worker stopped");
    }

    /// Claims due rows and delivers them one by one, renewing the claims
    /// of the rows not yet finished every `heartbeat` meanwhile.
    pub async fn run_once(&self) -> StoreResult<OutboxReport> {
        let now = self.clock.now();
        let claimed = self
            .store
            .claim_outbox(now, now + self.config.lease_secs, self.config.batch)
            .await?;
        let mut report = OutboxReport {
            claimed: claimed.len(),
            ..OutboxReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        // Rows of this round not finished yet: the heartbeat renews these.
        let open = std::sync::Mutex::new(
            claimed
                .iter()
                .map(|item| (item.id, item.claim_token))
                .collect::<Vec<_>>(),
        );
        let deliveries = async {
            for item in &claimed {
                self.deliver_one(item, &mut report).await?;
                if let Ok(mut open) = open.lock() {
                    open.retain(|(id, _)| *id != item.id);
                }
            }
            Ok(report)
        };
        tokio::pin!(deliveries);
        let mut heartbeat = tokio::time::interval(self.config.heartbeat);
        // A renewal that ran long (a busy disk) must not be followed by a
        // burst of catch-up renewals holding the writer.
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the claim was just made.
        heartbeat.tick().await;
        loop {
            tokio::select! {
                done = &mut deliveries => return done,
                _ = heartbeat.tick() => self.renew(&open).await,
            }
        }
    }

    /// Extends the lease of every row in `open`; a row whose claim was lost
    /// (its lease ended and another worker took it) keeps its lost claim,
    /// and its finish will be refused.
    async fn renew(&self, open: &std::sync::Mutex<Vec<(i64, i64)>>) {
        let claims = open.lock().map(|open| open.clone()).unwrap_or_default();
        let lease_until = self.clock.now() + self.config.lease_secs;
        for (id, token) in claims {
            match self.store.renew_outbox(id, token, lease_until).await {
                Ok(true) => {}
                // Not a warning: the row's finish may have committed
                // while this renewal ran (its future was not polled since).
                // A claim really lost is reported by the refused finish.
                Ok(false) => {
                    tracing::debug!(outbox_id = id, "outbox claim no longer held at renewal")
                }
                Err(e) => tracing::warn!(outbox_id = id, error = %e, "outbox lease renewal failed"),
            }
        }
    }

    /// Delivers one claimed row and records the outcome, unless the claim
    /// was lost meanwhile (then the newer claim's outcome stands).
    async fn deliver_one(&self, item: &OutboxItem, report: &mut OutboxReport) -> StoreResult<()> {
        let result = match self.execute(item).await {
            Ok(()) => OutboxResult::Sent,
            Err(DeliveryError::Permanent(error)) => OutboxResult::Dead { error },
            Err(DeliveryError::Transient(error)) if item.attempts >= self.config.max_attempts => {
                OutboxResult::Dead { error }
            }
            Err(DeliveryError::Transient(error)) => {
                let unit: f64 = rand::thread_rng().gen();
                OutboxResult::Retry {
                    error,
                    next_attempt_at: self.clock.now()
                        + self.config.backoff.jittered_secs(item.attempts, unit),
                }
            }
        };
        match self
            .store
            .finish_outbox(item.id, item.claim_token, &result, self.clock.now())
            .await
        {
            Ok(()) => {}
            Err(StoreError::Conflict { constraint }) if constraint == OUTBOX_LEASE_CONFLICT => {
                report.lost += 1;
                tracing::warn!(
                    outbox_id = item.id, kind = %item.kind,
                    "outbox delivery outlived its claim; its outcome is dropped"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match &result {
            OutboxResult::Sent => report.sent += 1,
            OutboxResult::Retry { error, .. } => {
                report.retried += 1;
                tracing::warn!(outbox_id = item.id, kind = %item.kind, %error, "outbox delivery failed; will retry");
            }
            OutboxResult::Dead { error } => {
                report.dead += 1;
                tracing::error!(outbox_id = item.id, kind = %item.kind, %error, "outbox row is dead");
            }
        }
        Ok(())
    }

    async fn execute(&self, item: &OutboxItem) -> Result<(), DeliveryError> {
        let effect = item
            .effect()
            .map_err(|e| DeliveryError::Permanent(format!("unreadable outbox payload: {e}")))?;
        match &effect {
            Effect::Email { .. } | Effect::AdminAlert { .. } => {
                self.delivery.deliver(item, &effect).await.map(|_| ())
            }
            Effect::CancelSubscription {
                subscription,
                dedupe_key,
                ..
            } => {
                self.stripe()?
                    .cancel_subscription(subscription.as_str(), dedupe_key)
                    .await
                    .map_err(stripe_error)?;
                Ok(())
            }
            Effect::DeleteStripeCustomer {
                customer,
                erasure,
                after,
                dedupe_key,
            } => {
                self.wait_for(item, after).await?;
                crate::pipeline::stripe_customer::erase_stripe_customer(
                    self.stripe()?,
                    customer,
                    *erasure,
                    dedupe_key,
                )
                .await
                .map_err(stripe_error)
            }
            Effect::MeterEvent {
                event_name,
                stripe_customer,
                value,
                identifier,
                timestamp,
                ..
            } => {
                let created = self
                    .stripe()?
                    .create_meter_event(
                        event_name,
                        stripe_customer.as_str(),
                        *value,
                        identifier,
                        *timestamp,
                    )
                    .await
                    .map_err(stripe_error)?;
                if created.is_none() {
                    tracing::info!(outbox_id = item.id, %identifier, "meter event already at Stripe");
                }
                Ok(())
            }
            Effect::RefetchSubscription {
                subscription,
                tie_created,
                round,
                ..
            } => {
                let observed = crate::pipeline::clock::observation_ns();
                let object = self
                    .stripe()?
                    .retrieve_subscription(subscription.as_str())
                    .await
                    .map_err(stripe_error)?;
                let event = refetch_event(
                    subscription.as_str(),
                    *tie_created,
                    *round,
                    observed,
                    object,
                    self.clock.now(),
                );
                self.store
                    .insert_events(&[event])
                    .await
                    .map_err(|e| DeliveryError::Transient(format!("inbox insert: {e}")))?;
                Ok(())
            }
        }
    }

    /// A transient failure while any of the customer's rows named by
    /// `dedupe_keys` is still waiting (pending or processing); a row that is
    /// sent or dead no longer holds anything up.
    async fn wait_for(
        &self,
        item: &OutboxItem,
        dedupe_keys: &[String],
    ) -> Result<(), DeliveryError> {
        if dedupe_keys.is_empty() {
            return Ok(());
        }
        let rows = self
            .store
            .list_outbox(&OutboxFilter {
                status: None,
                customer_id: item.customer_id.clone(),
                limit: 0,
            })
            .await
            .map_err(|e| DeliveryError::Transient(format!("outbox read: {e}")))?;
        let waiting: Vec<&str> = rows
            .iter()
            .filter(|row| row.id != item.id && dedupe_keys.contains(&row.dedupe_key))
            .filter(|row| matches!(row.status, OutboxStatus::Pending | OutboxStatus::Processing))
            .map(|row| row.dedupe_key.as_str())
            .collect();
        if waiting.is_empty() {
            Ok(())
        } else {
            Err(DeliveryError::Transient(format!(
                "waiting for {}",
                waiting.join(", ")
            )))
        }
    }

    fn stripe(&self) -> Result<&StripeClient, DeliveryError> {
        billd_stripe::client::configured(self.stripe.as_ref()).map_err(stripe_error)
    }
}

fn stripe_error(e: StripeError) -> DeliveryError {
    match e {
        // Stripe refused the request itself: repeating it cannot succeed.
        StripeError::Api(api) if (400..500).contains(&api.status) && api.status != 429 => {
            DeliveryError::Permanent(StripeError::Api(api).to_string())
        }
        other => DeliveryError::Transient(other.to_string()),
    }
}

/// The synthetic inbox event carrying a re-fetched subscription, shaped like
/// a webhook so the inbox, its listing and replay treat it like one. One id
/// per (subscription, tie, round): a repeated re-fetch is a duplicate.
/// Rounds after the first carry an `_r{round}` suffix, which
/// `crate::pipeline::lifecycle::parse_stored` reads back. `observed_ns`: when the
/// read was sent.
pub fn refetch_event(
    subscription: &str,
    tie_created: i64,
    round: u32,
    observed_ns: u64,
    object: Value,
    now: i64,
) -> NewEvent {
    let id = if round == 0 {
        format!("{REFETCH_EVENT_PREFIX}{subscription}_{tie_created}")
    } else {
        format!("{REFETCH_EVENT_PREFIX}{subscription}_{tie_created}_r{round}")
    };
    synthetic_subscription_event(id, subscription, tie_created, observed_ns, object, now)
}

/// An inbox event `id` carrying a subscription object billd fetched from
/// Stripe itself, stamped `created` and observed at `observed_ns` (see
/// [`crate::pipeline::clock::observation_ns`]); `crate::pipeline::lifecycle::parse_stored`
/// applies it as authoritative when `id` has a synthetic prefix.
pub fn synthetic_subscription_event(
    id: String,
    subscription: &str,
    created: i64,
    observed_ns: u64,
    object: Value,
    now: i64,
) -> NewEvent {
    let stripe_customer = object
        .get("customer")
        .and_then(|c| c.as_str().or_else(|| c.get("id").and_then(Value::as_str)))
        .map(str::to_owned);
    let event_type = "customer.subscription.updated";
    let payload = json!({
        "id": id,
        "object": "event",
        "type": event_type,
        "created": created,
        "api_version": billd_stripe::API_VERSION,
        OBSERVED_NS_FIELD: observed_ns,
        "data": { "object": object },
    });
    NewEvent {
        id,
        event_type: event_type.to_owned(),
        api_version: Some(billd_stripe::API_VERSION.to_owned()),
        created,
        object_id: Some(subscription.to_owned()),
        stripe_customer,
        payload: payload.to_string(),
        received_at: now,
    }
}

/// The outbox `kind` of an alert's webhook-channel row (the email-channel
/// row is an ordinary `admin_alert`).
pub const ALERT_WEBHOOK_KIND: &str = "alert_webhook";

/// Where alerts go besides the admin email.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AlertChannels {
    /// Also write a webhook-channel row.
    pub webhook: bool,
}

/// The outbox rows of a decision's effects: one per effect, plus a
/// webhook-channel row for each admin alert when that channel is on.
pub fn outbox_items(
    effects: &[Effect],
    channels: AlertChannels,
) -> StoreResult<Vec<NewOutboxItem>> {
    let mut items = Vec::with_capacity(effects.len());
    for effect in effects {
        items.push(NewOutboxItem::from_effect(effect)?);
        if let (true, Effect::AdminAlert { .. }) = (channels.webhook, effect) {
            items.push(webhook_row(effect)?);
        }
    }
    Ok(items)
}

/// The webhook-channel twin of an `AdminAlert` effect.
fn webhook_row(effect: &Effect) -> StoreResult<NewOutboxItem> {
    let mut item = NewOutboxItem::from_effect(effect)?;
    item.dedupe_key.push_str(":webhook");
    item.kind = ALERT_WEBHOOK_KIND.to_owned();
    Ok(item)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use billd_core::AlertKind;

    use super::*;

    fn alert(key: &str) -> Effect {
        Effect::AdminAlert {
            alert: AlertKind::DisputeOpened,
            dedupe_key: key.to_owned(),
            message: "dispute du_1 opened".to_owned(),
        }
    }

    #[test]
    fn an_admin_alert_gets_a_webhook_row_only_when_that_channel_is_on() {
        let email = Effect::Email {
            template: billd_core::EmailTemplate::RefundIssued,
            dedupe_key: "refund_issued:ch_1:100".to_owned(),
            params: BTreeMap::new(),
        };
        let effects = [email, alert("dispute_opened:du_1")];

        let without = outbox_items(&effects, AlertChannels::default()).unwrap();
        let with = outbox_items(&effects, AlertChannels { webhook: true }).unwrap();

        assert_eq!(without.len(), 2);
        assert_eq!(with.len(), 3);
        assert_eq!(with[1].kind, "admin_alert");
        assert_eq!(with[2].kind, ALERT_WEBHOOK_KIND);
        assert_eq!(with[2].dedupe_key, "dispute_opened:du_1:webhook");
        assert_eq!(
            serde_json::from_str::<Effect>(&with[2].payload).unwrap(),
            alert("dispute_opened:du_1")
        );
    }
}
