//! Templates: one subject, text body and HTML body per email, embedded,
//! each overridable by a file in `BILLD_TEMPLATES`.
//!
//! Rendering is strict: a variable the template uses but the effect did not
//! provide is an error, never an empty string, so a renamed parameter shows
//! up as a failed (and alerted) email instead of "Your payment of  failed".
//! Overrides are checked when they are loaded by rendering every template
//! with the parameters the core gives it, so a typo fails at start-up.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use billd_core::{AlertKind, EmailTemplate};
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior};

use crate::locale::{format_date, format_datetime, format_money, parse_amount, Locale};

/// Why a template could not be loaded or rendered. [`RenderError::code`] is
/// stable.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// An override file could not be read.
    #[error("cannot read template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A template does not parse.
    #[error("template {name} does not parse: {source:#}")]
    Syntax {
        /// The template (`payment_failed.html`).
        name: String,
        /// The parser's error.
        source: Error,
    },
    /// A template failed to render (a missing variable, a bad amount or date).
    #[error("template {name} failed to render: {source:#}")]
    Render {
        /// The template (`payment_failed.html`).
        name: String,
        /// The engine's error, with the template line.
        source: Error,
    },
}

impl RenderError {
    /// A stable snake_case code for logs, metrics and the outbox's last error.
    pub fn code(&self) -> &'static str {
        match self {
            RenderError::Read { .. } => "template_unreadable",
            RenderError::Syntax { .. } => "template_syntax",
            RenderError::Render { source, .. } if source.kind() == ErrorKind::UndefinedError => {
                "template_missing_variable"
            }
            RenderError::Render { source, .. } if source.kind() == ErrorKind::TemplateNotFound => {
                "template_not_found"
            }
            RenderError::Render { .. } => "template_render_failed",
        }
    }
}

/// The snake_case name billd-core gives a variant (`payment_failed`).
///
/// Taken from the core's serde names rather than a `match`, so a variant
/// added to the core does not break this crate's build: its email fails to
/// render (`template_not_found`) until its template files exist.
fn serde_name<T: serde::Serialize + std::fmt::Debug>(value: T) -> String {
    match serde_json::to_value(&value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => format!("{value:?}"),
    }
}

/// What an email template is called in files (`payment_failed`).
pub fn template_name(template: EmailTemplate) -> String {
    serde_name(template)
}

/// Every customer email, in a fixed order (for checks and previews).
pub const ALL_TEMPLATES: [EmailTemplate; 15] = [
    EmailTemplate::SubscriptionConfirmed,
    EmailTemplate::PaymentSucceeded,
    EmailTemplate::PaymentFailed,
    EmailTemplate::ActionRequired,
    EmailTemplate::TrialEnding,
    EmailTemplate::CancellationScheduled,
    EmailTemplate::SubscriptionCanceled,
    EmailTemplate::PlanChanged,
    EmailTemplate::RefundIssued,
    EmailTemplate::ChargebackNotice,
    EmailTemplate::InvoiceFinalized,
    EmailTemplate::RenewalReminder,
    EmailTemplate::CardExpiring,
    EmailTemplate::GraceEnding,
    EmailTemplate::AccessSuspended,
];

/// The template operator alerts use.
pub const ADMIN_ALERT: &str = "admin_alert";

/// What an alert is called in subjects and metrics (`dispute_opened`).
pub fn alert_name(alert: AlertKind) -> String {
    serde_name(alert)
}

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(
            (concat!($name, ".subject.txt"), include_str!(concat!("../templates/", $name, ".subject.txt"))),
            (concat!($name, ".txt"), include_str!(concat!("../templates/", $name, ".txt"))),
            (concat!($name, ".html"), include_str!(concat!("../templates/", $name, ".html"))),
        )*]
    };
}

/// The built-in templates, by file name.
const EMBEDDED: &[(&str, &str)] = embedded!(
    "subscription_confirmed",
    "payment_succeeded",
    "payment_failed",
    "action_required",
    "trial_ending",
    "cancellation_scheduled",
    "subscription_canceled",
    "plan_changed",
    "refund_issued",
    "chargeback_notice",
    "invoice_finalized",
    "renewal_reminder",
    "card_expiring",
    "grace_ending",
    "access_suspended",
    "admin_alert",
);

/// Shared pieces the templates extend; overridable like the rest.
const LAYOUTS: &[(&str, &str)] = &[
    ("_layout.html", include_str!("../templates/_layout.html")),
    ("_layout.txt", include_str!("../templates/_layout.txt")),
];

/// Values every template may use besides its effect's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branding {
    /// The product's name as customers know it (`product_name`).
    pub product_name: String,
    /// Where a customer manages billing and updates the card, usually the
    /// app's page that opens the Stripe portal (`account_url`; may be empty).
    pub account_url: String,
}

impl Default for Branding {
    fn default() -> Self {
        Self {
            product_name: "billd".to_owned(),
            account_url: String::new(),
        }
    }
}

/// Who reads the email, as far as rendering is concerned.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reader {
    /// The reader's name (`recipient.name`), if known.
    pub name: Option<String>,
    /// The reader's address (`recipient.email`).
    pub email: String,
    /// Amounts and dates are formatted for this language.
    pub locale: Locale,
}

/// A rendered email: subject and both bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One line, no line breaks.
    pub subject: String,
    /// The `text/plain` part.
    pub text: String,
    /// The `text/html` part.
    pub html: String,
}

/// The loaded templates.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    branding: Branding,
    /// Overrides for one language (`payment_failed.de.txt`), by file name.
    localized: BTreeSet<String>,
}

impl Templates {
    /// The built-in templates only.
    pub fn embedded(branding: Branding) -> Result<Self, RenderError> {
        Self::load(None, branding)
    }

    /// The built-in templates, each replaced by `{dir}/{file}` where that
    /// file exists (`payment_failed.subject.txt`, `payment_failed.txt`,
    /// `payment_failed.html`, `_layout.html`, …), plus per-language
    /// overrides that win for readers of that language
    /// (`payment_failed.de.subject.txt`, `_layout.fr.html`). Every template is then
    /// rendered once with the parameters the core gives it, so an override
    /// that uses an unknown variable is refused here, not at send time.
    pub fn load(dir: Option<&Path>, branding: Branding) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Block tags on their own line leave no blank line behind in text.
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|source| RenderError::Syntax {
                name: "syntax".to_owned(),
                source,
            })?;
        env.set_syntax(syntax);
        // The default callback escapes `.html` templates and leaves `.txt`
        // alone, which is what both bodies and the subject need.
        env.add_filter("money", money_filter);
        env.add_filter("date", date_filter);
        env.add_filter("datetime", datetime_filter);
        for (name, source) in LAYOUTS.iter().chain(EMBEDDED.iter()) {
            let source = match dir {
                Some(dir) => {
                    read_override(&dir.join(name))?.unwrap_or_else(|| (*source).to_owned())
                }
                None => (*source).to_owned(),
            };
            env.add_template_owned(*name, source)
                .map_err(|source| RenderError::Syntax {
                    name: (*name).to_owned(),
                    source,
                })?;
        }
        let mut localized = BTreeSet::new();
        if let Some(dir) = dir {
            for (name, _) in LAYOUTS.iter().chain(EMBEDDED.iter()) {
                for locale in Locale::ALL {
                    let file = localized_name(name, locale);
                    if let Some(source) = read_override(&dir.join(&file))? {
                        env.add_template_owned(file.clone(), source)
                            .map_err(|source| RenderError::Syntax {
                                name: file.clone(),
                                source,
                            })?;
                        localized.insert(file);
                    }
                }
            }
            warn_about_unknown_files(dir);
        }
        let templates = Self {
            env,
            branding,
            localized,
        };
        templates.check()?;
        Ok(templates)
    }

    /// Renders every template, in every language, with sample parameters
    /// of the shape the core produces (both shapes for the renewal reminder).
    pub fn check(&self) -> Result<(), RenderError> {
        for locale in Locale::ALL {
            let reader = Reader {
                name: Some("Ada".to_owned()),
                email: "ada@example.com".to_owned(),
                locale,
            };
            for template in ALL_TEMPLATES {
                for params in sample_params(template) {
                    self.render_email(template, &params, &reader)?;
                }
            }
        }
        self.render_alert(AlertKind::DisputeOpened, "dispute du_1 opened")?;
        Ok(())
    }

    /// Renders a customer email from the effect's parameters.
    pub fn render_email(
        &self,
        template: EmailTemplate,
        params: &BTreeMap<String, String>,
        reader: &Reader,
    ) -> Result<Rendered, RenderError> {
        let mut ctx: BTreeMap<String, Value> = params
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        self.add_common(&mut ctx, reader);
        self.render_three(&template_name(template), ctx, reader.locale)
    }

    /// Renders an operator alert (always English; `alert`, `message`).
    pub fn render_alert(&self, alert: AlertKind, message: &str) -> Result<Rendered, RenderError> {
        let mut ctx = BTreeMap::new();
        ctx.insert("alert".to_owned(), Value::from(alert_name(alert)));
        ctx.insert("message".to_owned(), Value::from(message));
        self.add_common(
            &mut ctx,
            &Reader {
                name: None,
                email: String::new(),
                locale: Locale::En,
            },
        );
        self.render_three(ADMIN_ALERT, ctx, Locale::En)
    }

    fn add_common(&self, ctx: &mut BTreeMap<String, Value>, reader: &Reader) {
        let mut recipient = BTreeMap::new();
        recipient.insert("name", Value::from(reader.name.clone()));
        recipient.insert("email", Value::from(reader.email.as_str()));
        recipient.insert("locale", Value::from(reader.locale.as_str()));
        ctx.insert("recipient".to_owned(), Value::from(recipient));
        ctx.insert("locale".to_owned(), Value::from(reader.locale.as_str()));
        ctx.insert(
            "product_name".to_owned(),
            Value::from(self.branding.product_name.as_str()),
        );
        ctx.insert(
            "account_url".to_owned(),
            Value::from(self.branding.account_url.as_str()),
        );
    }

    fn render_three(
        &self,
        name: &str,
        mut ctx: BTreeMap<String, Value>,
        locale: Locale,
    ) -> Result<Rendered, RenderError> {
        let subject = self.render_one(&format!("{name}.subject.txt"), &ctx, locale)?;
        // Header injection is impossible either way (lettre encodes the
        // header), but a subject must stay one line to read as one.
        // (Only line breaks: the no-break spaces in amounts must stay.)
        let subject = subject
            .split(['\r', '\n'])
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        ctx.insert("subject".to_owned(), Value::from(subject.as_str()));
        let text = self.render_one(&format!("{name}.txt"), &ctx, locale)?;
        let html = self.render_one(&format!("{name}.html"), &ctx, locale)?;
        Ok(Rendered {
            subject,
            text,
            html,
        })
    }

    /// Renders `file`, or its override for the reader's language if any.
    fn render_one(
        &self,
        file: &str,
        ctx: &BTreeMap<String, Value>,
        locale: Locale,
    ) -> Result<String, RenderError> {
        let localized = localized_name(file, locale);
        let name = if self.localized.contains(&localized) {
            localized.as_str()
        } else {
            file
        };
        let failed = |source| RenderError::Render {
            name: name.to_owned(),
            source,
        };
        let template = self.env.get_template(name).map_err(failed)?;
        template.render(Value::from(ctx.clone())).map_err(failed)
    }
}

/// `payment_failed.subject.txt` in German is `payment_failed.de.subject.txt`.
fn localized_name(file: &str, locale: Locale) -> String {
    match file.split_once('.') {
        Some((base, suffix)) => format!("{base}.{locale}.{suffix}"),
        None => format!("{file}.{locale}"),
    }
}

fn read_override(path: &Path) -> Result<Option<String>, RenderError> {
    match std::fs::read_to_string(path) {
        Ok(source) => Ok(Some(source)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RenderError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// A misspelled override would silently never apply: say so.
fn warn_about_unknown_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let known = LAYOUTS.iter().chain(EMBEDDED.iter()).any(|(file, _)| {
            *file == name || Locale::ALL.iter().any(|l| localized_name(file, *l) == name)
        });
        if !known && (name.ends_with(".txt") || name.ends_with(".html")) {
            tracing::warn!(file = %name, dir = %dir.display(), "template override matches no email and is ignored");
        }
    }
}

fn locale_of(state: &State) -> Locale {
    state
        .lookup("locale")
        .and_then(|v| v.as_str().map(Locale::from_tag))
        .unwrap_or_default()
}

fn invalid(detail: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, detail)
}

/// Filters see undefined values before strict mode does: report them as
/// the missing variables they are.
fn defined(value: &Value) -> Result<&Value, Error> {
    if value.is_undefined() {
        Err(Error::new(
            ErrorKind::UndefinedError,
            "the email has no such parameter",
        ))
    } else {
        Ok(value)
    }
}

/// `{{ amount_paid|money }}` formats an amount as the core writes it
/// (`12.50 EUR`); `{{ 1250|money("eur") }}` formats minor units.
fn money_filter(state: &State, value: &Value, currency: Option<&str>) -> Result<String, Error> {
    let value = defined(value)?;
    let money = match (value.as_i64(), currency) {
        (Some(minor), Some(code)) => billd_core::Currency::parse(code)
            .map(|c| billd_core::Money::new(minor, c))
            .map_err(|e| invalid(e.to_string()))?,
        (None, None) => {
            let text = value
                .as_str()
                .ok_or_else(|| invalid(format!("money: expected an amount, got {value}")))?;
            parse_amount(text).map_err(|e| invalid(e.to_string()))?
        }
        _ => {
            return Err(invalid(format!(
                "money: give an amount like `12.50 EUR`, or minor units and a currency, got {value}"
            )))
        }
    };
    Ok(format_money(&money, locale_of(state)))
}

fn unix_seconds(value: &Value) -> Result<i64, Error> {
    defined(value)?
        .as_i64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
        .ok_or_else(|| invalid(format!("expected unix seconds, got {value:?}")))
}

/// `{{ renews_at|date }}`: a day in the reader's language.
fn date_filter(state: &State, value: &Value) -> Result<String, Error> {
    Ok(format_date(unix_seconds(value)?, locale_of(state)))
}

/// `{{ next_payment_attempt|datetime }}`: day and UTC time.
fn datetime_filter(state: &State, value: &Value) -> Result<String, Error> {
    Ok(format_datetime(unix_seconds(value)?, locale_of(state)))
}

/// Parameters of the shape `billd_core` gives each email (see `apply.rs`
/// and `schedule.rs`); the renewal reminder has two shapes, from
/// `invoice.upcoming` and from the scheduler. Used to check templates.
pub fn sample_params(template: EmailTemplate) -> Vec<BTreeMap<String, String>> {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let invoice_urls = [
        (
            "invoice_pdf",
            "https://pay.stripe.com/invoice/acct_1/in_1/pdf",
        ),
        (
            "hosted_invoice_url",
            "https://invoice.stripe.com/i/acct_1/in_1",
        ),
    ];
    match template {
        EmailTemplate::SubscriptionConfirmed => vec![map(&[
            ("subscription", "sub_1"),
            ("plan", "standard"),
            ("status", "active"),
        ])],
        EmailTemplate::PaymentSucceeded => vec![map(&[
            ("invoice", "in_1"),
            ("amount_paid", "12.00 EUR"),
            invoice_urls[0],
            invoice_urls[1],
        ])],
        EmailTemplate::PaymentFailed => vec![
            map(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("attempt_count", "2"),
                ("next_payment_attempt", "1795788309"),
                invoice_urls[1],
            ]),
            map(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("attempt_count", "4"),
                ("next_payment_attempt", ""),
                ("hosted_invoice_url", ""),
            ]),
        ],
        EmailTemplate::ActionRequired => vec![map(&[
            ("invoice", "in_1"),
            ("amount_due", "12.00 EUR"),
            invoice_urls[1],
        ])],
        EmailTemplate::TrialEnding => vec![map(&[
            ("subscription", "sub_1"),
            ("trial_end", "1795788309"),
        ])],
        EmailTemplate::CancellationScheduled => vec![
            map(&[("subscription", "sub_1"), ("ends_at", "1795788309")]),
            map(&[("subscription", "sub_1"), ("ends_at", "")]),
        ],
        EmailTemplate::SubscriptionCanceled => {
            vec![map(&[("subscription", "sub_1"), ("plan", "standard")])]
        }
        EmailTemplate::PlanChanged => vec![map(&[
            ("subscription", "sub_1"),
            ("from", "standard"),
            ("to", "pro"),
        ])],
        EmailTemplate::RefundIssued => vec![
            map(&[
                ("charge", "ch_1"),
                ("amount_refunded", "12.00 EUR"),
                ("full", "true"),
            ]),
            map(&[
                ("charge", "ch_1"),
                ("amount_refunded", "5.00 EUR"),
                ("full", "false"),
            ]),
        ],
        EmailTemplate::ChargebackNotice => {
            vec![map(&[("dispute", "du_1"), ("amount", "12.00 EUR")])]
        }
        EmailTemplate::InvoiceFinalized => vec![
            map(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                invoice_urls[0],
                invoice_urls[1],
            ]),
            map(&[
                ("invoice", "in_1"),
                ("amount_due", "12.00 EUR"),
                ("invoice_pdf", ""),
                ("hosted_invoice_url", ""),
            ]),
        ],
        EmailTemplate::RenewalReminder => vec![
            map(&[("amount_due", "12.00 EUR"), ("renews_at", "1795788309")]),
            map(&[
                ("subscription", "sub_1"),
                ("plan", "standard"),
                ("renews_at", "1795788309"),
            ]),
        ],
        EmailTemplate::CardExpiring => vec![map(&[
            ("payment_method", "pm_1"),
            ("brand", "visa"),
            ("last4", "4242"),
            ("expires", "12/2026"),
        ])],
        EmailTemplate::GraceEnding => vec![map(&[
            ("subscription", "sub_1"),
            ("grace_until", "1795788309"),
        ])],
        EmailTemplate::AccessSuspended => vec![map(&[
            ("subscription", "sub_1"),
            ("plan", "pro"),
            ("grace_until", "1795788309"),
        ])],
    }
}
