//! From an outbox effect to a delivered email.

use std::sync::Arc;

use billd_core::{AlertKind, Effect, EmailTemplate};
use lettre::message::Mailbox;

use crate::backend::{EmailBackend, SendError};
use crate::message::{Message, Recipient};
use crate::render::{alert_name, template_name, Reader, RenderError, Templates};

/// Why an effect was not delivered. [`DeliverError::code`] is stable;
/// [`DeliverError::is_transient`] tells the outbox whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The template failed: retrying renders the same failure.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The backend failed.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The effect is not an email or an alert.
    #[error("effect {0} is not an email")]
    NotAnEmail(String),
}

impl DeliverError {
    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            DeliverError::Render(e) => e.code(),
            DeliverError::Send(e) => e.code(),
            DeliverError::NotAnEmail(_) => "not_an_email",
        }
    }

    /// Whether retrying can help.
    pub fn is_transient(&self) -> bool {
        matches!(self, DeliverError::Send(e) if e.is_transient())
    }
}

/// What happened to an effect that did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Handed to the backend.
    Sent,
    /// Nobody to send it to (a customer without an address, no
    /// `BILLD_ADMIN_EMAIL`): done, nothing to retry.
    NoRecipient,
}

/// Renders and sends customer emails and operator alerts.
#[derive(Debug, Clone)]
pub struct Notifier {
    templates: Arc<Templates>,
    backend: Arc<dyn EmailBackend>,
    from: Mailbox,
    admin: Option<Mailbox>,
}

impl Notifier {
    /// A notifier sending as `from`, alerts to `admin`.
    pub fn new(
        templates: Templates,
        backend: Arc<dyn EmailBackend>,
        from: Mailbox,
        admin: Option<Mailbox>,
    ) -> Self {
        Self {
            templates: Arc::new(templates),
            backend,
            from,
            admin,
        }
    }

    /// The backend (for its `kind` in metrics).
    pub fn backend(&self) -> &Arc<dyn EmailBackend> {
        &self.backend
    }

    /// Renders a customer email.
    pub fn compose_email(
        &self,
        template: EmailTemplate,
        dedupe_key: &str,
        params: &std::collections::BTreeMap<String, String>,
        recipient: &Recipient,
    ) -> Result<Message, RenderError> {
        let reader = Reader {
            name: recipient.mailbox.name.clone(),
            email: recipient.mailbox.email.to_string(),
            locale: recipient.locale,
        };
        let content = self.templates.render_email(template, params, &reader)?;
        Ok(Message {
            from: self.from.clone(),
            to: recipient.mailbox.clone(),
            template: template_name(template),
            dedupe_key: dedupe_key.to_owned(),
            content,
        })
    }

    /// Renders an operator alert, if an admin address is configured.
    pub fn compose_alert(
        &self,
        alert: AlertKind,
        dedupe_key: &str,
        message: &str,
    ) -> Result<Option<Message>, RenderError> {
        let Some(admin) = &self.admin else {
            return Ok(None);
        };
        let content = self.templates.render_alert(alert, message)?;
        Ok(Some(Message {
            from: self.from.clone(),
            to: admin.clone(),
            template: crate::render::ADMIN_ALERT.to_owned(),
            dedupe_key: dedupe_key.to_owned(),
            content,
        }))
    }

    /// Delivers an `Email` effect to `recipient`, or an `AdminAlert` to
    /// the admin address; the outbox worker's one call.
    pub async fn deliver(
        &self,
        effect: &Effect,
        recipient: Option<&Recipient>,
    ) -> Result<Delivery, DeliverError> {
        let message = match effect {
            Effect::Email {
                template,
                dedupe_key,
                params,
            } => match recipient {
                Some(recipient) => self.compose_email(*template, dedupe_key, params, recipient)?,
                None => {
                    tracing::warn!(dedupe_key = %dedupe_key, template = %template_name(*template), "customer has no email address; email skipped");
                    return Ok(Delivery::NoRecipient);
                }
            },
            Effect::AdminAlert {
                alert,
                dedupe_key,
                message,
            } => match self.compose_alert(*alert, dedupe_key, message)? {
                Some(m) => m,
                None => {
                    tracing::warn!(alert = %alert_name(*alert), dedupe_key = %dedupe_key, message = %message, "billing alert (no BILLD_ADMIN_EMAIL)");
                    return Ok(Delivery::NoRecipient);
                }
            },
            other => return Err(DeliverError::NotAnEmail(other.dedupe_key().to_owned())),
        };
        self.backend.send(&message).await?;
        Ok(Delivery::Sent)
    }
}
