//! billd's billing emails.
//!
//! The core decides *that* an email is due (`billd_core::Effect::Email`,
//! with a dedupe key and string parameters); this crate decides what it
//! says and hands it to a backend:
//!
//! - [`Templates`]: a subject, a text and an HTML template per email,
//!   embedded, overridable from `BILLD_TEMPLATES`, rendered strictly, with
//!   `money`, `date` and `datetime` filters for the reader's [`Locale`];
//! - [`EmailBackend`]: SMTP ([`SmtpBackend`], lettre over rustls), `.eml`
//!   files, the log, or memory, with [`SendError`] telling transient from
//!   permanent failures;
//! - [`Notifier`]: the outbox worker's entry point, effect in, email out.
//!
//! Retries, backoff and dead-lettering belong to the outbox, which already
//! keeps one row per dedupe key; a message also carries its key in
//! `X-Billd-Dedupe-Key` and a `Message-ID` derived from it.

mod backend;
mod config;
mod locale;
mod message;
mod notifier;
mod render;

pub use backend::{
    EmailBackend, FileBackend, LogBackend, MemoryBackend, Retry, SendError, SmtpBackend,
};
pub use config::{BackendConfig, EmailConfig, EmailConfigError, SmtpAuth, SmtpConfig, TlsMode};
pub use lettre::message::Mailbox;
pub use locale::{
    format_date, format_datetime, format_money, parse_amount, AmountParseError, Locale,
};
pub use message::{parse_mailbox, AddressError, Message, Recipient, DEDUPE_HEADER};
pub use notifier::{DeliverError, Delivery, Notifier};
pub use render::{
    alert_name, sample_params, template_name, Branding, Reader, RenderError, Rendered, Templates,
    ADMIN_ALERT, ALL_TEMPLATES,
};

/// Why email could not be set up. [`SetupError::code`] is stable.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A template override is unreadable or wrong.
    #[error(transparent)]
    Templates(#[from] RenderError),
    /// The backend could not be built.
    #[error(transparent)]
    Backend(#[from] SendError),
}

impl SetupError {
    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            SetupError::Templates(e) => e.code(),
            SetupError::Backend(e) => e.code(),
        }
    }
}

/// Builds a [`Notifier`] from a parsed configuration: loads (and checks)
/// the templates and builds the backend.
pub fn notifier_from_config(config: &EmailConfig) -> Result<Notifier, SetupError> {
    let templates = Templates::load(config.templates.as_deref(), config.branding.clone())?;
    let backend = config.backend.build()?;
    Ok(Notifier::new(
        templates,
        backend,
        config.from.clone(),
        config.admin.clone(),
    ))
}
