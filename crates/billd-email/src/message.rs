//! A message ready to send, and its MIME form.

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use sha2::{Digest, Sha256};

use crate::backend::SendError;
use crate::locale::Locale;
use crate::render::Rendered;

/// The header that carries the outbox dedupe key, so a duplicate that got
/// past the outbox (a crash between send and commit) is visible in any mailbox.
pub const DEDUPE_HEADER: &str = "X-Billd-Dedupe-Key";

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid email address {address:?}: {reason}")]
pub struct AddressError {
    /// What was given.
    pub address: String,
    /// Why it is not an address.
    pub reason: String,
}

impl AddressError {
    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        "invalid_email_address"
    }
}

/// Parses `ada@example.com` or `Ada <ada@example.com>`.
pub fn parse_mailbox(raw: &str) -> Result<Mailbox, AddressError> {
    raw.trim()
        .parse()
        .map_err(|e: lettre::address::AddressError| AddressError {
            address: raw.to_owned(),
            reason: e.to_string(),
        })
}

/// Who receives a customer email, from the customer's profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// Name and address.
    pub mailbox: Mailbox,
    /// Amounts and dates are formatted for this language.
    pub locale: Locale,
}

impl Recipient {
    /// Parses a profile's address, optional name and optional locale tag
    /// (`de-DE`; unknown or absent → English).
    pub fn parse(
        email: &str,
        name: Option<&str>,
        locale: Option<&str>,
    ) -> Result<Self, AddressError> {
        let address = email
            .trim()
            .parse()
            .map_err(|e: lettre::address::AddressError| AddressError {
                address: email.to_owned(),
                reason: e.to_string(),
            })?;
        let name = name
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned);
        Ok(Self {
            mailbox: Mailbox::new(name, address),
            locale: Locale::from_tag(locale.unwrap_or_default()),
        })
    }
}

/// One email: rendered, addressed, keyed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `From`.
    pub from: Mailbox,
    /// `To`.
    pub to: Mailbox,
    /// Which template (`payment_failed`, `admin_alert`): a metrics label.
    pub template: String,
    /// The outbox dedupe key.
    pub dedupe_key: String,
    /// Subject and bodies.
    pub content: Rendered,
}

/// `X-Billd-Dedupe-Key`, a header lettre does not know.
#[derive(Debug, Clone)]
struct DedupeKey(String);

impl Header for DedupeKey {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str(DEDUPE_HEADER)
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Message {
    /// The `Message-ID`: derived from the dedupe key, so the same email
    /// sent twice carries the same id and mail clients thread or drop the
    /// second copy.
    pub fn message_id(&self) -> String {
        let digest = hex::encode(Sha256::digest(self.dedupe_key.as_bytes()));
        let domain = self.from.email.domain();
        format!("<{}.billd@{domain}>", &digest[..32])
    }

    /// The MIME message: `multipart/alternative` with text then HTML.
    pub fn to_mime(&self) -> Result<lettre::Message, SendError> {
        // Keys come from billd-core and are ASCII ids; refuse anything that
        // could break the header rather than trusting that.
        if self.dedupe_key.is_empty()
            || !self
                .dedupe_key
                .bytes()
                .all(|b| b.is_ascii_graphic() || b == b' ')
        {
            return Err(SendError::permanent(
                "invalid_message",
                format!("dedupe key {:?} is not printable ASCII", self.dedupe_key),
            ));
        }
        lettre::Message::builder()
            .from(self.from.clone())
            .to(self.to.clone())
            .subject(self.content.subject.clone())
            .message_id(Some(self.message_id()))
            .header(DedupeKey(self.dedupe_key.clone()))
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(self.content.text.clone()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(self.content.html.clone()),
                    ),
            )
            .map_err(|e| SendError::permanent("invalid_message", e.to_string()))
    }
}
