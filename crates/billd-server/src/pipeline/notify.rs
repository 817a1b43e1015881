//! Email delivery for the outbox: the [`Delivery`] that renders and sends
//! each `Email` and `AdminAlert` effect through `billd_email::Notifier`.
//!
//! - the recipient comes from the customer's profile at send time (an
//!   address changed after the event still gets the email); a customer
//!   without an address is done, not retried;
//! - transient failures (SMTP down, 4xx replies) go back to the outbox,
//!   which retries with backoff; the outbox row's dedupe key makes a
//!   redelivered event or a crash before the commit unable to queue it twice;
//! - permanent failures (refused address, broken template) and the last
//!   transient failure make the row dead; the alert monitor tells the
//!   operator (`outbox_dead`, once per dedupe window, see `crate::jobs`).

use std::sync::Arc;

use async_trait::async_trait;
use billd_core::Effect;
use billd_email::{EmailConfig, Notifier, Recipient, SetupError};
use billd_store::{BillingStore, OutboxItem};

use crate::pipeline::outbox::{Delivered, Delivery, DeliveryError};
use crate::telemetry::LabelledCounter;

/// Counts one delivery of outbox row `item` into `emails`
/// (`Metrics::emails`, by outcome): a failure is `dead` when it is
/// permanent or came on the row's last attempt (`max_attempts`, the outbox
/// worker's), as the outbox worker decides.
pub fn count_email(
    emails: &LabelledCounter,
    item: &OutboxItem,
    result: &Result<Delivered, DeliveryError>,
    max_attempts: i32,
) {
    emails.inc(match result {
        Ok(Delivered::Sent) => "sent",
        Ok(Delivered::NoRecipient) => "no_recipient",
        Ok(Delivered::Logged) => "logged",
        Err(DeliveryError::Transient(_)) if item.attempts < max_attempts => "transient_failure",
        Err(_) => "dead",
    });
}

/// Sends outbox emails and alerts with a [`Notifier`].
pub struct EmailDelivery {
    notifier: Notifier,
    store: Arc<dyn BillingStore>,
    /// The outbox's `max_attempts`: the attempt that makes a row dead.
    max_attempts: i32,
}

impl std::fmt::Debug for EmailDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmailDelivery")
            .field("notifier", &self.notifier)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl EmailDelivery {
    /// Delivery through `notifier`, recipients from `store`'s profiles;
    /// `max_attempts` must be the outbox worker's.
    pub fn new(notifier: Notifier, store: Arc<dyn BillingStore>, max_attempts: i32) -> Self {
        EmailDelivery {
            notifier,
            store,
            max_attempts,
        }
    }

    /// Delivery as configured by `BILLD_SMTP_URL`, `BILLD_EMAIL_FROM`,
    /// `BILLD_ADMIN_EMAIL`, `BILLD_TEMPLATES` (see `billd_email::EmailConfig`):
    /// loads and checks the templates and builds the backend.
    pub fn from_config(
        config: &EmailConfig,
        store: Arc<dyn BillingStore>,
        max_attempts: i32,
    ) -> Result<Self, SetupError> {
        Ok(Self::new(
            billd_email::notifier_from_config(config)?,
            store,
            max_attempts,
        ))
    }

    async fn recipient(&self, item: &OutboxItem) -> Result<Option<Recipient>, DeliveryError> {
        let Some(customer) = &item.customer_id else {
            return Ok(None);
        };
        let record = self
            .store
            .get_customer(customer)
            .await
            .map_err(|e| DeliveryError::Transient(format!("customer lookup: {e}")))?;
        let Some(record) = record else {
            return Ok(None);
        };
        let Some(email) = record.email.as_deref().filter(|e| !e.trim().is_empty()) else {
            return Ok(None);
        };
        Recipient::parse(email, record.name.as_deref(), None)
            .map(Some)
            .map_err(|e| DeliveryError::Permanent(format!("{}: {e}", e.code())))
    }

    /// Logs a row that will never be delivered (the outbox counts it). The
    /// operator hears of it from the alert monitor's `outbox_dead` alert:
    /// one per dedupe window, however many emails die in it.
    fn record_dead(&self, item: &OutboxItem, error: &str) {
        tracing::error!(outbox_id = item.id, dedupe_key = %item.dedupe_key, %error, "email is dead");
    }
}

#[async_trait]
impl Delivery for EmailDelivery {
    async fn deliver(
        &self,
        item: &OutboxItem,
        effect: &Effect,
    ) -> Result<Delivered, DeliveryError> {
        let recipient = match effect {
            Effect::Email { .. } => match self.recipient(item).await {
                Ok(r) => r,
                Err(DeliveryError::Permanent(error)) => {
                    self.record_dead(item, &error);
                    return Err(DeliveryError::Permanent(error));
                }
                Err(transient) => return Err(transient),
            },
            _ => None,
        };
        match self.notifier.deliver(effect, recipient.as_ref()).await {
            Ok(billd_email::Delivery::Sent) => Ok(Delivered::Sent),
            Ok(billd_email::Delivery::NoRecipient) => Ok(Delivered::NoRecipient),
            Err(e) if e.is_transient() => {
                let error = format!("{}: {e}", e.code());
                if item.attempts >= self.max_attempts {
                    self.record_dead(item, &error);
                }
                Err(DeliveryError::Transient(error))
            }
            Err(e) => {
                let error = format!("{}: {e}", e.code());
                self.record_dead(item, &error);
                Err(DeliveryError::Permanent(error))
            }
        }
    }
}
