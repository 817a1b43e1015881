//! [`AlertDelivery`]: the outbox delivery that posts webhook-channel alerts
//! itself and counts every other delivery's outcome.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billd_core::Effect;
use billd_store::OutboxItem;
use serde_json::json;

use crate::pipeline::{count_email, Delivered, Delivery, DeliveryError, ALERT_WEBHOOK_KIND};
use crate::telemetry::Metrics;

use super::alerter::alert_label;
use super::config::AlertConfig;

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
