//! Configuration: embedded defaults < `billd.toml` < `BILLD_*` environment,
//! validated at start-up. Every error names the variable (and where its
//! value came from) and what is wrong, and never echoes a secret.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use billd_server::http::{DowngradeTiming, ProrationBehavior};
use secrecy::{ExposeSecret, SecretString};

/// The built-in defaults (`defaults.toml`).
pub const DEFAULTS: &str = include_str!("defaults.toml");

/// One setting billd reads: its key as written in `billd.toml` (the
/// environment variable is `BILLD_` + the upper-cased key), whether its value
/// is a secret, and what it means. [`SETTINGS`] is the one list of them: the
/// configuration reference (`billd reference config`) is rendered from it and
/// a test fails when a `BILLD_*` name in the code or the docs is not in it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The key in `billd.toml`, e.g. `database_url`.
    pub key: &'static str,
    /// Never echoed in errors or logs.
    pub secret: bool,
    /// The group it is listed under in the reference.
    pub group: &'static str,
    /// What it means, in Markdown; the default comes from `defaults.toml`.
    pub meaning: &'static str,
}

const fn setting(
    key: &'static str,
    secret: bool,
    group: &'static str,
    meaning: &'static str,
) -> Setting {
    Setting {
        key,
        secret,
        group,
        meaning,
    }
}

/// Every setting billd reads, in the order the reference lists them.
pub const SETTINGS: &[Setting] = &[
    setting("database_url", true, "Core", "`sqlite://path` or `postgres://user:pass@host/db`. On SQLite one `billd serve` holds the file (a lock file beside it); several may share one PostgreSQL database."),
    setting("listen", false, "Core", "The HTTP address (app API, admin API, webhooks, console, metrics)."),
    setting("public_url", false, "Core", "Where Stripe and browsers reach billd, e.g. `https://billing.example.com`. `billd doctor` then expects the webhook endpoint at exactly `{public_url}/webhooks/stripe`; the console's cookie is `Secure` when it is https."),
    setting("api_keys", true, "Core", "Comma-separated bearer keys (at least 16 characters each) for the app API. Unset in dev mode: a key is generated into `.billd/dev_api_key`."),
    setting("admin_api_keys", true, "Core", "Comma-separated bearer keys (at least 16 characters each) for `/v1/admin/…` and the console. Unset in dev mode: a key is generated into `.billd/dev_admin_key`."),
    setting("plans", false, "Core", "Path to a plans TOML file; unset: the built-in catalog (see Plans and limits)."),
    setting("log_format", false, "Core", "`text` or `json`. Logs go to stderr; the level is set with `RUST_LOG` (e.g. `RUST_LOG=info,billd_server=debug`)."),
    setting("worker_threads", false, "Core", "Async runtime threads; `0`: one per core."),
    setting("stripe_api_key", true, "Stripe", "Stripe secret or restricted key (`sk_…`/`rk_…`). Unset: dev mode, with the built-in Stripe emulator (nothing real is charged)."),
    setting("stripe_api_base", false, "Stripe", "Stripe's API base. Point it at an emulator (`billd sim`) for tests; `billd doctor` warns when it is not Stripe's."),
    setting("stripe_webhook_secrets", true, "Stripe", "Comma-separated `whsec_…` signing secrets; several during a rotation. Unset with a Stripe key: a dev secret is generated into `.billd/dev_webhook_secret`."),
    setting("webhook_tolerance_secs", false, "Stripe", "Allowed distance, either way, between a webhook's signed timestamp and its arrival."),
    setting("stripe_tax", false, "Stripe", "`true`: Checkout enables Stripe Tax (`automatic_tax`); the Stripe account must have Tax activated."),
    setting("checkout_rate_limit_per_min", false, "Billing", "New Checkout sessions one customer may start per minute (repeats answered from the open session are not counted; shared by every billd process on the database)."),
    setting("proration_behavior", false, "Billing", "Plan changes: `create_prorations` (proration on the next invoice) or `always_invoice` (charged at once, granted when paid)."),
    setting("downgrade_timing", false, "Billing", "Downgrades: `immediate` (prorated now) or `period_end` (a Stripe subscription schedule switches the price at the period end)."),
    setting("delete_stripe_customer", false, "Billing", "Account deletion `delete`s the Stripe customer, or with `anonymize` unsets its email, name, phone and address (metadata and history stay)."),
    setting("smtp_url", true, "Email", "`smtp://host:port[?tls=starttls|required]` or `smtps://…`. Unset: every email and alert is written to the log instead."),
    setting("email_from", false, "Email", "The sender, e.g. `Billing <billing@example.com>`; required with `smtp_url`."),
    setting("admin_email", false, "Email", "Where admin alerts are emailed."),
    setting("templates", false, "Email", "A directory of email template overrides: a file there named like a built-in one (`payment_failed.subject.txt`, `payment_failed.txt`, `payment_failed.html`, `_layout.html`, …) replaces it; each is checked at start-up. Unset: the built-in templates."),
    setting("product_name", false, "Email", "The product's name as customers know it, used in emails; unset: `billd`."),
    setting("account_url", false, "Email", "The app's billing page (where customers update their card), linked from emails; unset: no link."),
    setting("inbox_max_attempts", false, "Workers", "Processing attempts before a webhook event is `dead`."),
    setting("inbox_lease_secs", false, "Workers", "A claimed event is reserved this long, renewed every third of it while its batch runs; on PostgreSQL the events of a killed process are reclaimed after it."),
    setting("outbox_lease_secs", false, "Workers", "A claimed outbox row (email, alert, Stripe call) is reserved this long, renewed every third of it while its delivery runs; rows claimed by a killed process are retried after it."),
    setting("inbox_backoff_base_secs", false, "Workers", "First retry delay of a failed event: `base·2^(attempts-1)`, capped, jittered to [½, 1]×."),
    setting("inbox_backoff_cap_secs", false, "Workers", "Longest retry delay (at least the base)."),
    setting("worker_concurrency", false, "Workers", "Customers whose events the inbox worker links and loads at once within a round (each customer's due events, up to `inbox_batch` a round, applied in order)."),
    setting("inbox_batch", false, "Workers", "Most events one inbox worker round claims, over as many customers as that takes; the round's states, outcomes and outbox rows are committed in one transaction."),
    setting("inbox_batch_under_ingest", false, "Workers", "Most events an inbox worker round claims while webhooks wait for their acknowledgement (at most `inbox_batch`): short rounds hold SQLite's one writer briefly, so deliveries are acknowledged sooner and the process's peak memory stays lower, at some cost in applied events/s while webhooks arrive faster than they are applied."),
    setting("ingest_max_batch", false, "Workers", "Most webhook events per group commit."),
    setting("ready_max_lag_secs", false, "Workers", "`/readyz` fails when the oldest waiting event is older than this."),
    setting("scheduler", false, "Workers", "`off`: this process runs no scheduled jobs (with several instances they share the jobs anyway; one run each)."),
    setting("scheduler_intervals", false, "Workers", "Per-job intervals in seconds, `job=seconds,…` (e.g. `renewal_reminders=1800`)."),
    setting("alert_webhook_url", true, "Alerts", "Also post alerts here (Slack-compatible JSON)."),
    setting("alert_dedupe_window_secs", false, "Alerts", "One alert per condition per window."),
    setting("alert_check_interval_secs", false, "Alerts", "How often alert conditions are checked."),
    setting("alert_signature_failures", false, "Alerts", "Alert on this many webhook signature failures within `alert_signature_window_secs`."),
    setting("alert_signature_window_secs", false, "Alerts", "The window of `alert_signature_failures`."),
    setting("alert_payment_failure_percent", false, "Alerts", "Alert when this share of payments failed within `alert_payment_window_secs` …"),
    setting("alert_payment_window_secs", false, "Alerts", "… the window of the payment failure alert …"),
    setting("alert_payment_min_count", false, "Alerts", "… counting only when at least this many payments were attempted."),
    setting("alert_webhook_silence_secs", false, "Alerts", "Alert when no webhook arrived for this long while renewals were due."),
];

/// The environment variable for a key.
pub fn env_name(key: &str) -> String {
    format!("BILLD_{}", key.to_ascii_uppercase())
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Default,
    File(PathBuf),
    Env,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Default => f.write_str("built-in default"),
            Source::File(path) => write!(f, "set in {}", path.display()),
            Source::Env => f.write_str("set in the environment"),
        }
    }
}

/// A configuration problem, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Several problems found at once, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

/// A URL that may carry a password (database, SMTP). `Debug` and
/// [`SecretUrl::redacted`] replace the password with `[REDACTED]`.
#[derive(Clone)]
pub struct SecretUrl(SecretString);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: String) -> Self {
        SecretUrl(SecretString::from(url))
    }

    /// The full URL, password included; only for connecting.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with any password (and any query, which may hold one)
    /// replaced, fit for logs.
    pub fn redacted(&self) -> String {
        redact_url(self.0.expose_secret())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// Redacts the password of `scheme://user:password@host/...` without
/// needing the URL to be fully valid (a broken URL must not leak either).
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // `sqlite:path` and the like carry no credentials.
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let mut out = url[..scheme_end].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":[REDACTED]");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let tail = &rest[authority_end..];
    match tail.split_once('?') {
        // Query parameters can carry passwords (`?password=`); keep names only.
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let names: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) => format!("{k}=[REDACTED]"),
                    None => kv.to_string(),
                })
                .collect();
            out.push_str(&names.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// billd's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `BILLD_DATABASE_URL`: `sqlite://…` or `postgres://…`.
    pub database_url: SecretUrl,
    /// `BILLD_LISTEN`: HTTP address.
    pub listen: SocketAddr,
    /// `BILLD_STRIPE_API_KEY`; unset means dev mode.
    pub stripe_api_key: Option<SecretString>,
    /// `BILLD_STRIPE_API_BASE`.
    pub stripe_api_base: String,
    /// `BILLD_STRIPE_WEBHOOK_SECRETS`; empty means dev mode (a generated secret).
    pub stripe_webhook_secrets: Vec<SecretString>,
    /// `BILLD_API_KEYS`: bearer keys for the app API.
    pub api_keys: Vec<SecretString>,
    /// `BILLD_ADMIN_API_KEYS`: bearer keys for the admin API.
    pub admin_api_keys: Vec<SecretString>,
    /// `BILLD_PLANS`: path to a plans TOML; unset means the built-in catalog.
    pub plans: Option<PathBuf>,
    /// `BILLD_SMTP_URL`.
    pub smtp_url: Option<SecretUrl>,
    /// `BILLD_EMAIL_FROM`.
    pub email_from: Option<String>,
    /// `BILLD_ADMIN_EMAIL`.
    pub admin_email: Option<String>,
    /// `BILLD_TEMPLATES`: a directory of email template overrides.
    pub templates: Option<PathBuf>,
    /// `BILLD_PRODUCT_NAME`: the product's name in emails.
    pub product_name: Option<String>,
    /// `BILLD_ACCOUNT_URL`: the app's billing page, linked from emails.
    pub account_url: Option<String>,
    /// `BILLD_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `BILLD_WEBHOOK_TOLERANCE_SECS`.
    pub webhook_tolerance_secs: i64,
    /// `BILLD_INBOX_MAX_ATTEMPTS`: attempts before an event is dead.
    pub inbox_max_attempts: i32,
    /// `BILLD_INBOX_LEASE_SECS`: how long a claimed event is reserved;
    /// renewed every third of it while its batch runs.
    pub inbox_lease_secs: i64,
    /// `BILLD_OUTBOX_LEASE_SECS`: how long a claimed outbox row (email,
    /// alert, Stripe call) is reserved; renewed every third of it while the
    /// delivery runs, and how long a row claimed by a killed process waits.
    pub outbox_lease_secs: i64,
    /// `BILLD_INBOX_BACKOFF_BASE_SECS`: first retry delay.
    pub inbox_backoff_base_secs: i64,
    /// `BILLD_INBOX_BACKOFF_CAP_SECS`: longest retry delay.
    pub inbox_backoff_cap_secs: i64,
    /// `BILLD_WORKER_CONCURRENCY`: customers of a round linked and loaded
    /// at once.
    pub worker_concurrency: u32,
    /// `BILLD_INBOX_BATCH`: most events per inbox worker round (one commit).
    pub inbox_batch: u32,
    /// `BILLD_INBOX_BATCH_UNDER_INGEST`: most events per round while
    /// webhooks wait for their acknowledgement.
    pub inbox_batch_under_ingest: u32,
    /// `BILLD_INGEST_MAX_BATCH`: most webhook events per group commit.
    pub ingest_max_batch: usize,
    /// `BILLD_WORKER_THREADS`: async runtime threads; 0 is one per core.
    pub worker_threads: usize,
    /// `BILLD_READY_MAX_LAG_SECS`: `/readyz` fails beyond this inbox lag.
    pub ready_max_lag_secs: i64,
    /// `BILLD_PUBLIC_URL`: where Stripe reaches this billd (`billd doctor`
    /// expects the webhook endpoint at `{public_url}/webhooks/stripe`).
    pub public_url: Option<String>,
    /// `BILLD_CHECKOUT_RATE_LIMIT_PER_MIN`: new checkout sessions one
    /// customer may start per minute (repeats answered from the open
    /// session are not counted).
    pub checkout_rate_limit_per_min: u32,
    /// `BILLD_STRIPE_TAX`: checkout enables Stripe Tax (`true`/`false`).
    pub stripe_tax: bool,
    /// `BILLD_PRORATION_BEHAVIOR`: `create_prorations` or `always_invoice`.
    pub proration_behavior: ProrationBehavior,
    /// `BILLD_DOWNGRADE_TIMING`: `immediate` or `period_end`.
    pub downgrade_timing: DowngradeTiming,
    /// `BILLD_SCHEDULER`: `on` runs the scheduler's jobs in this process.
    pub scheduler: bool,
    /// `BILLD_SCHEDULER_INTERVALS`: per-job intervals, `job=secs,…`.
    pub scheduler_intervals: BTreeMap<String, i64>,
    /// `BILLD_ALERT_*`: alert channels and thresholds.
    pub alerts: AlertSettings,
    /// `BILLD_DELETE_STRIPE_CUSTOMER`: `delete` or `anonymize` the Stripe
    /// customer of a deleted account.
    pub delete_stripe_customer: billd_core::StripeCustomerErasure,
}

/// The `BILLD_ALERT_*` settings (see `billd_server::jobs::AlertConfig`).
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// `BILLD_ALERT_WEBHOOK_URL`: a secret (Slack's URL carries its token).
    pub webhook_url: Option<SecretString>,
    /// `BILLD_ALERT_DEDUPE_WINDOW_SECS`.
    pub dedupe_window_secs: i64,
    /// `BILLD_ALERT_CHECK_INTERVAL_SECS`.
    pub check_interval_secs: u64,
    /// `BILLD_ALERT_SIGNATURE_FAILURES`.
    pub signature_failures: u64,
    /// `BILLD_ALERT_SIGNATURE_WINDOW_SECS`.
    pub signature_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_FAILURE_PERCENT`.
    pub payment_failure_percent: u32,
    /// `BILLD_ALERT_PAYMENT_WINDOW_SECS`.
    pub payment_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_MIN_COUNT`.
    pub payment_min_count: u64,
    /// `BILLD_ALERT_WEBHOOK_SILENCE_SECS`.
    pub webhook_silence_secs: i64,
}

impl AlertSettings {
    fn from_raw(raw: &mut Raw) -> AlertSettings {
        let webhook_url = raw.opt("alert_webhook_url");
        if let Some(url) = &webhook_url {
            match url::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                _ => raw.fail("alert_webhook_url", "must be an http(s) URL"),
            }
        }
        AlertSettings {
            webhook_url: webhook_url.map(SecretString::from),
            dedupe_window_secs: raw.int("alert_dedupe_window_secs", 60, 30 * 86_400),
            check_interval_secs: raw.int("alert_check_interval_secs", 1, 86_400),
            signature_failures: raw.int("alert_signature_failures", 1, 1_000_000),
            signature_window_secs: raw.int("alert_signature_window_secs", 1, 86_400),
            payment_failure_percent: raw.int("alert_payment_failure_percent", 1, 100),
            payment_window_secs: raw.int("alert_payment_window_secs", 60, 30 * 86_400),
            payment_min_count: raw.int("alert_payment_min_count", 1, 1_000_000),
            webhook_silence_secs: raw.int("alert_webhook_silence_secs", 60, 30 * 86_400),
        }
    }

    /// The server's alert configuration.
    pub fn server_config(&self) -> billd_server::jobs::AlertConfig {
        billd_server::jobs::AlertConfig {
            webhook_url: self
                .webhook_url
                .as_ref()
                .map(|u| u.expose_secret().to_owned()),
            dedupe_window_secs: self.dedupe_window_secs,
            check_interval: std::time::Duration::from_secs(self.check_interval_secs),
            signature_failures: self.signature_failures,
            signature_window_secs: self.signature_window_secs,
            payment_failure_percent: self.payment_failure_percent,
            payment_window_secs: self.payment_window_secs,
            payment_min_count: self.payment_min_count,
            webhook_silence_secs: self.webhook_silence_secs,
        }
    }
}

impl Config {
    /// A one-line, secret-free account of what is configured, for the
    /// start-up log.
    pub fn summary(&self) -> String {
        format!(
            "database={} listen={} stripe_api_key={} stripe_api_base={} webhook_secrets={} api_keys={} admin_api_keys={} plans={} smtp={} email_from={} admin_email={}",
            self.database_url.redacted(),
            self.listen,
            if self.stripe_api_key.is_some() { "set" } else { "unset" },
            self.stripe_api_base,
            self.stripe_webhook_secrets.len(),
            self.api_keys.len(),
            self.admin_api_keys.len(),
            self.plans
                .as_ref()
                .map_or("built-in".to_string(), |p| p.display().to_string()),
            self.smtp_url
                .as_ref()
                .map_or("unset".to_string(), SecretUrl::redacted),
            self.email_from.as_deref().unwrap_or("unset"),
            self.admin_email.as_deref().unwrap_or("unset"),
        )
    }
}

struct Raw {
    values: BTreeMap<&'static str, (String, Source)>,
    errors: Vec<ConfigError>,
}

impl Raw {
    fn is_secret(key: &str) -> bool {
        SETTINGS.iter().any(|s| s.key == key && s.secret)
    }

    fn describe(&self, key: &str) -> String {
        match self.values.get(key) {
            Some((_, source)) => format!("{} ({source})", env_name(key)),
            None => env_name(key),
        }
    }

    fn shown(&self, key: &str, value: &str) -> String {
        if Self::is_secret(key) {
            "[REDACTED]".to_string()
        } else {
            format!("{value:?}")
        }
    }

    fn fail(&mut self, key: &str, what: impl fmt::Display) {
        let msg = format!("{}: {what}", self.describe(key));
        self.errors.push(ConfigError(msg));
    }

    fn opt(&self, key: &str) -> Option<String> {
        self.values
            .get(key)
            .map(|(v, _)| v.trim().to_string())
            .filter(|v| !v.is_empty())
    }

    fn required(&mut self, key: &str) -> Option<String> {
        let value = self.opt(key);
        if value.is_none() {
            self.fail(key, "is required");
        }
        value
    }

    fn list(&self, key: &str) -> Vec<String> {
        self.opt(key)
            .map(|v| {
                v.split(',')
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn int<T: TryFrom<i64> + Default>(&mut self, key: &str, min: i64, max: i64) -> T {
        let Some(value) = self.required(key) else {
            return T::default();
        };
        match value.parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => T::try_from(n).unwrap_or_default(),
            Ok(n) => {
                self.fail(key, format!("must be between {min} and {max}, got {n}"));
                T::default()
            }
            Err(_) => {
                let shown = self.shown(key, &value);
                self.fail(key, format!("must be an integer, got {shown}"));
                T::default()
            }
        }
    }
}

impl Config {
    /// Loads the configuration from the embedded defaults, then `file` (if
    /// given; it must exist), then `env` (only `BILLD_*` keys are read).
    pub fn load(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Config, ConfigErrors> {
        let mut raw = Raw {
            values: BTreeMap::new(),
            errors: Vec::new(),
        };
        merge_toml(&mut raw, DEFAULTS, Source::Default);
        if let Some(path) = file {
            match std::fs::read_to_string(path) {
                Ok(text) => merge_toml(&mut raw, &text, Source::File(path.to_path_buf())),
                Err(e) => raw.errors.push(ConfigError(format!(
                    "BILLD_CONFIG: cannot read {}: {e}",
                    path.display()
                ))),
            }
        }
        for setting in SETTINGS {
            if let Some(value) = env.get(&env_name(setting.key)) {
                raw.values.insert(setting.key, (value.clone(), Source::Env));
            }
        }
        let config = Self::from_raw(&mut raw);
        if raw.errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(raw.errors))
        }
    }

    fn from_raw(raw: &mut Raw) -> Config {
        let database_url = raw.required("database_url").unwrap_or_default();
        let known_scheme = ["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| database_url.starts_with(scheme));
        if !database_url.is_empty() && !known_scheme {
            raw.fail(
                "database_url",
                "must start with sqlite:// or postgres:// (value not shown: it may hold a password)",
            );
        }
        let listen = match raw.required("listen") {
            Some(v) => v.parse::<SocketAddr>().unwrap_or_else(|_| {
                raw.fail(
                    "listen",
                    format!("must be an address like 127.0.0.1:8080, got {v:?}"),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            }),
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        let stripe_api_key = raw.opt("stripe_api_key");
        if let Some(key) = &stripe_api_key {
            if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                raw.fail(
                    "stripe_api_key",
                    "must be a Stripe secret or restricted key (sk_… or rk_…)",
                );
            }
        }
        let stripe_api_base = raw.required("stripe_api_base").unwrap_or_default();
        match url::Url::parse(&stripe_api_base) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => raw.fail(
                "stripe_api_base",
                format!("must be an http(s) URL, got {stripe_api_base:?}"),
            ),
        }
        let stripe_webhook_secrets = raw.list("stripe_webhook_secrets");
        if stripe_webhook_secrets
            .iter()
            .any(|s| !s.starts_with("whsec_"))
        {
            raw.fail(
                "stripe_webhook_secrets",
                "every secret must start with whsec_ (comma-separated during a rotation)",
            );
        }
        let api_keys = raw.list("api_keys");
        let admin_api_keys = raw.list("admin_api_keys");
        for (key, keys) in [("api_keys", &api_keys), ("admin_api_keys", &admin_api_keys)] {
            if keys.iter().any(|k| k.len() < 16) {
                raw.fail(key, "every key must be at least 16 characters long");
            }
        }
        let plans = raw.opt("plans").map(PathBuf::from);
        if let Some(path) = &plans {
            if !path.is_file() {
                raw.fail("plans", format!("no such file: {}", path.display()));
            }
        }
        let smtp_url = raw.opt("smtp_url").map(SecretUrl::new);
        if let Some(url) = &smtp_url {
            if !(url.expose().starts_with("smtp://") || url.expose().starts_with("smtps://")) {
                raw.fail("smtp_url", "must start with smtp:// or smtps://");
            }
        }
        let email_from = raw.opt("email_from");
        let admin_email = raw.opt("admin_email");
        for (key, value) in [("email_from", &email_from), ("admin_email", &admin_email)] {
            if let Some(v) = value {
                if !v.contains('@') {
                    raw.fail(key, format!("must be an email address, got {v:?}"));
                }
            }
        }
        let templates = raw.opt("templates").map(PathBuf::from);
        if let Some(dir) = &templates {
            if !dir.is_dir() {
                raw.fail("templates", format!("no such directory: {}", dir.display()));
            }
        }
        let product_name = raw.opt("product_name");
        let account_url = raw.opt("account_url");
        let log_format = match raw.required("log_format").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") | None => LogFormat::Text,
            Some(other) => {
                raw.fail("log_format", format!("must be json or text, got {other:?}"));
                LogFormat::Text
            }
        };
        let webhook_tolerance_secs = raw.int("webhook_tolerance_secs", 1, 86_400);
        let inbox_max_attempts = raw.int("inbox_max_attempts", 1, 1000);
        let inbox_lease_secs = raw.int("inbox_lease_secs", 3, 86_400);
        let outbox_lease_secs = raw.int("outbox_lease_secs", 3, 86_400);
        let inbox_backoff_base_secs = raw.int("inbox_backoff_base_secs", 1, 86_400);
        let inbox_backoff_cap_secs = raw.int("inbox_backoff_cap_secs", 1, 7 * 86_400);
        if inbox_backoff_cap_secs < inbox_backoff_base_secs {
            raw.fail(
                "inbox_backoff_cap_secs",
                format!(
                    "must be at least BILLD_INBOX_BACKOFF_BASE_SECS ({inbox_backoff_base_secs})"
                ),
            );
        }
        let worker_concurrency = raw.int("worker_concurrency", 1, 1024);
        let inbox_batch = raw.int("inbox_batch", 1, 100_000);
        let inbox_batch_under_ingest = raw.int("inbox_batch_under_ingest", 1, 100_000);
        let ingest_max_batch = raw.int("ingest_max_batch", 1, 100_000);
        let worker_threads = raw.int("worker_threads", 0, 1024);
        let ready_max_lag_secs = raw.int("ready_max_lag_secs", 1, 30 * 86_400);
        let public_url = raw.opt("public_url");
        if let Some(u) = &public_url {
            match url::Url::parse(u) {
                Ok(parsed) if parsed.scheme() == "http" || parsed.scheme() == "https" => {}
                _ => raw.fail(
                    "public_url",
                    format!("must be an http(s) URL like https://billing.example.com, got {u:?}"),
                ),
            }
        }
        let checkout_rate_limit_per_min = raw.int("checkout_rate_limit_per_min", 1, 10_000);
        let stripe_tax = match raw.required("stripe_tax").as_deref() {
            Some("true") => true,
            Some("false") | None => false,
            Some(other) => {
                raw.fail(
                    "stripe_tax",
                    format!("must be true or false, got {other:?}"),
                );
                false
            }
        };
        let alerts = AlertSettings::from_raw(raw);
        let proration_behavior = match raw.required("proration_behavior") {
            Some(v) => v.parse().unwrap_or_else(|e| {
                raw.fail("proration_behavior", e);
                ProrationBehavior::default()
            }),
            None => ProrationBehavior::default(),
        };
        let delete_stripe_customer = match raw.required("delete_stripe_customer").as_deref() {
            Some("delete") | None => billd_core::StripeCustomerErasure::Delete,
            Some("anonymize") => billd_core::StripeCustomerErasure::Anonymize,
            Some(other) => {
                raw.fail(
                    "delete_stripe_customer",
                    format!("must be delete or anonymize, got {other:?}"),
                );
                billd_core::StripeCustomerErasure::Delete
            }
        };
        let downgrade_timing = match raw.required("downgrade_timing") {
            Some(v) => v.parse().unwrap_or_else(|e| {
                raw.fail("downgrade_timing", e);
                DowngradeTiming::default()
            }),
            None => DowngradeTiming::default(),
        };
        let scheduler = match raw.required("scheduler").as_deref() {
            Some("on") | None => true,
            Some("off") => false,
            Some(other) => {
                raw.fail("scheduler", format!("must be on or off, got {other:?}"));
                true
            }
        };
        let scheduler_intervals = match billd_server::jobs::SchedulerConfig::parse_intervals(
            &raw.opt("scheduler_intervals").unwrap_or_default(),
        ) {
            Ok(intervals) => intervals,
            Err(e) => {
                raw.fail("scheduler_intervals", e);
                BTreeMap::new()
            }
        };
        let secrets = |v: Vec<String>| v.into_iter().map(SecretString::from).collect();
        Config {
            database_url: SecretUrl::new(database_url),
            listen,
            stripe_api_key: stripe_api_key.map(SecretString::from),
            stripe_api_base,
            stripe_webhook_secrets: secrets(stripe_webhook_secrets),
            api_keys: secrets(api_keys),
            admin_api_keys: secrets(admin_api_keys),
            plans,
            smtp_url,
            email_from,
            admin_email,
            templates,
            product_name,
            account_url,
            log_format,
            webhook_tolerance_secs,
            inbox_max_attempts,
            inbox_lease_secs,
            outbox_lease_secs,
            inbox_backoff_base_secs,
            inbox_backoff_cap_secs,
            worker_concurrency,
            inbox_batch,
            inbox_batch_under_ingest,
            ingest_max_batch,
            worker_threads,
            ready_max_lag_secs,
            public_url,
            checkout_rate_limit_per_min,
            stripe_tax,
            alerts,
            proration_behavior,
            delete_stripe_customer,
            downgrade_timing,
            scheduler,
            scheduler_intervals,
        }
    }
}

fn merge_toml(raw: &mut Raw, text: &str, source: Source) {
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            raw.errors.push(ConfigError(format!(
                "BILLD_CONFIG ({source}): not valid TOML: {e}"
            )));
            return;
        }
    };
    for (key, value) in table {
        let Some(known) = SETTINGS.iter().map(|s| s.key).find(|k| *k == key) else {
            raw.errors.push(ConfigError(format!(
                "{key} ({source}): unknown setting (known: {})",
                SETTINGS
                    .iter()
                    .map(|s| s.key)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
            continue;
        };
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::String(s) => parts.push(s),
                        _ => raw.errors.push(ConfigError(format!(
                            "{key} ({source}): list items must be strings"
                        ))),
                    }
                }
                parts.join(",")
            }
            _ => {
                raw.errors.push(ConfigError(format!(
                    "{key} ({source}): must be a string, integer or list of strings"
                )));
                continue;
            }
        };
        raw.values.insert(known, (text, source.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn errors(result: Result<Config, ConfigErrors>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn every_setting_is_read_once_listed_once_and_every_default_is_a_setting() {
        let source = include_str!("config.rs");
        let mut keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
        let listed = keys.len();
        keys.sort_unstable();
        keys.dedup();

        assert_eq!(keys.len(), listed, "a setting is listed twice");
        for key in keys {
            let read = ["opt", "int", "required", "list"]
                .iter()
                .any(|how| source.contains(&format!("raw.{how}(\"{key}\"")));
            assert!(read, "the setting {key} is listed but never read");
        }
        let defaults: toml::Table = DEFAULTS.parse().unwrap();
        for key in defaults.keys() {
            assert!(
                SETTINGS.iter().any(|s| s.key == key),
                "defaults.toml sets {key}, which is no setting"
            );
        }
    }

    #[test]
    fn the_email_settings_come_from_billd_toml_too() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("billd.toml");
        std::fs::write(
            &file,
            format!(
                "templates = {:?}\nproduct_name = \"Sitegen\"\naccount_url = \"https://app.example.com/billing\"\n",
                dir.path().display().to_string()
            ),
        )
        .unwrap();
        let config = Config::load(Some(&file), &env(&[])).unwrap();
        let missing = errors(Config::load(
            None,
            &env(&[("BILLD_TEMPLATES", "/nonexistent/billd-templates")]),
        ));

        assert_eq!(config.templates.as_deref(), Some(dir.path()));
        assert_eq!(config.product_name.as_deref(), Some("Sitegen"));
        assert_eq!(
            config.account_url.as_deref(),
            Some("https://app.example.com/billing")
        );
        assert!(
            missing.contains("BILLD_TEMPLATES (set in the environment): no such directory"),
            "{missing}"
        );
    }

    #[test]
    fn the_checkout_knobs_default_to_ten_a_minute_without_stripe_tax_and_read_the_environment() {
        let defaults = Config::load(None, &env(&[])).unwrap();
        let set = Config::load(
            None,
            &env(&[
                ("BILLD_CHECKOUT_RATE_LIMIT_PER_MIN", "3"),
                ("BILLD_STRIPE_TAX", "true"),
            ]),
        )
        .unwrap();
        let bad = errors(Config::load(
            None,
            &env(&[
                ("BILLD_CHECKOUT_RATE_LIMIT_PER_MIN", "0"),
                ("BILLD_STRIPE_TAX", "yes"),
            ]),
        ));

        assert_eq!(
            (defaults.checkout_rate_limit_per_min, defaults.stripe_tax),
            (10, false)
        );
        assert_eq!((set.checkout_rate_limit_per_min, set.stripe_tax), (3, true));
        assert!(bad.contains("BILLD_CHECKOUT_RATE_LIMIT_PER_MIN"), "{bad}");
        assert!(bad.contains("BILLD_STRIPE_TAX"), "{bad}");
    }

    #[test]
    fn runtime_threads_default_to_one_per_core_and_read_the_environment() {
        let defaults = Config::load(None, &env(&[])).unwrap();
        let set = Config::load(None, &env(&[("BILLD_WORKER_THREADS", "3")])).unwrap();
        let bad = errors(Config::load(None, &env(&[("BILLD_WORKER_THREADS", "-1")])));

        assert_eq!((defaults.worker_threads, set.worker_threads), (0, 3));
        assert!(
            bad.contains(
                "BILLD_WORKER_THREADS (set in the environment): must be between 0 and 1024, got -1"
            ),
            "{bad}"
        );
    }

    #[test]
    fn the_scheduler_is_on_by_default_and_takes_per_job_intervals() {
        let config = Config::load(None, &HashMap::new()).unwrap();
        assert!(config.scheduler);
        assert!(config.scheduler_intervals.is_empty());

        let config = Config::load(
            None,
            &env(&[
                ("BILLD_SCHEDULER", "off"),
                (
                    "BILLD_SCHEDULER_INTERVALS",
                    "renewal_reminders=60, card_expiry=86400",
                ),
            ]),
        )
        .unwrap();
        assert!(!config.scheduler);
        assert_eq!(config.scheduler_intervals["renewal_reminders"], 60);
        assert_eq!(config.scheduler_intervals["card_expiry"], 86_400);

        let bad = errors(Config::load(
            None,
            &env(&[
                ("BILLD_SCHEDULER", "sometimes"),
                ("BILLD_SCHEDULER_INTERVALS", "renewal_reminders=0"),
            ]),
        ));
        assert!(bad.contains("must be on or off"), "{bad}");
        assert!(bad.contains("BILLD_SCHEDULER_INTERVALS"), "{bad}");
    }

    #[test]
    fn with_no_file_and_no_environment_the_defaults_apply() {
        let config = Config::load(None, &env(&[])).unwrap();
        assert_eq!(config.database_url.expose(), "sqlite://billd.db");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.stripe_api_base, "https://api.stripe.com");
        assert_eq!(config.webhook_tolerance_secs, 300);
        assert!(config.stripe_webhook_secrets.is_empty());
        assert!(config.stripe_api_key.is_none());
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn plan_changes_prorate_on_the_next_invoice_unless_always_invoice_is_configured() {
        let default = Config::load(None, &env(&[])).unwrap();
        let always = Config::load(
            None,
            &env(&[("BILLD_PRORATION_BEHAVIOR", "always_invoice")]),
        )
        .unwrap();
        let wrong = errors(Config::load(
            None,
            &env(&[("BILLD_PRORATION_BEHAVIOR", "sometimes")]),
        ));

        assert_eq!(
            default.proration_behavior,
            ProrationBehavior::CreateProrations
        );
        assert_eq!(always.proration_behavior, ProrationBehavior::AlwaysInvoice);
        assert_eq!(default.downgrade_timing, DowngradeTiming::Immediate);
        assert!(wrong.contains("BILLD_PRORATION_BEHAVIOR"), "{wrong}");
    }

    #[test]
    fn the_file_overrides_defaults_and_the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billd.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:9000\"\nwebhook_tolerance_secs = 60\nstripe_webhook_secrets = [\"whsec_a\", \"whsec_b\"]\n",
        )
        .unwrap();

        let config = Config::load(
            Some(&path),
            &env(&[
                ("BILLD_WEBHOOK_TOLERANCE_SECS", "120"),
                ("BILLD_LOG_FORMAT", "json"),
            ]),
        )
        .unwrap();

        assert_eq!(config.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(config.webhook_tolerance_secs, 120);
        assert_eq!(config.log_format, LogFormat::Json);
        let secrets: Vec<&str> = config
            .stripe_webhook_secrets
            .iter()
            .map(|s| s.expose_secret())
            .collect();
        assert_eq!(secrets, vec!["whsec_a", "whsec_b"]);
    }

    #[test]
    fn account_deletion_deletes_the_stripe_customer_unless_told_to_anonymize() {
        let default = Config::load(None, &env(&[])).unwrap();
        let anonymize =
            Config::load(None, &env(&[("BILLD_DELETE_STRIPE_CUSTOMER", "anonymize")])).unwrap();
        let wrong = errors(Config::load(
            None,
            &env(&[("BILLD_DELETE_STRIPE_CUSTOMER", "keep")]),
        ));

        assert_eq!(
            default.delete_stripe_customer,
            billd_core::StripeCustomerErasure::Delete
        );
        assert_eq!(
            anonymize.delete_stripe_customer,
            billd_core::StripeCustomerErasure::Anonymize
        );
        assert!(wrong.contains("BILLD_DELETE_STRIPE_CUSTOMER"), "{wrong}");
    }

    #[test]
    fn webhook_secrets_from_the_environment_are_comma_separated() {
        let config = Config::load(
            None,
            &env(&[("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_new, whsec_old")]),
        )
        .unwrap();
        assert_eq!(config.stripe_webhook_secrets.len(), 2);
        assert_eq!(
            config.stripe_webhook_secrets[1].expose_secret(),
            "whsec_old"
        );
    }

    #[test]
    fn invalid_values_are_reported_together_naming_the_variable_and_its_source() {
        let message = errors(Config::load(
            None,
            &env(&[
                ("BILLD_LISTEN", "not-an-address"),
                ("BILLD_WEBHOOK_TOLERANCE_SECS", "abc"),
                ("BILLD_INBOX_MAX_ATTEMPTS", "0"),
                ("BILLD_LOG_FORMAT", "yaml"),
            ]),
        ));
        assert!(
            message.contains("BILLD_LISTEN (set in the environment): must be an address"),
            "{message}"
        );
        assert!(message.contains("BILLD_WEBHOOK_TOLERANCE_SECS (set in the environment): must be an integer, got \"abc\""), "{message}");
        assert!(message.contains("BILLD_INBOX_MAX_ATTEMPTS (set in the environment): must be between 1 and 1000, got 0"), "{message}");
        assert!(
            message.contains("BILLD_LOG_FORMAT (set in the environment): must be json or text"),
            "{message}"
        );
    }

    #[test]
    fn a_bad_secret_is_named_but_never_echoed() {
        let message = errors(Config::load(
            None,
            &env(&[
                ("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_ok,hunter2secret"),
                ("BILLD_STRIPE_API_KEY", "pk_live_publishable"),
                ("BILLD_DATABASE_URL", "mysql://root:pa55word@db/billd"),
            ]),
        ));
        assert!(
            message.contains("BILLD_STRIPE_WEBHOOK_SECRETS"),
            "{message}"
        );
        assert!(message.contains("BILLD_STRIPE_API_KEY"), "{message}");
        assert!(message.contains("BILLD_DATABASE_URL"), "{message}");
        for secret in ["hunter2secret", "pk_live_publishable", "pa55word"] {
            assert!(!message.contains(secret), "{message}");
        }
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("billd.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let message = errors(Config::load(Some(&path), &env(&[])));
        assert!(message.contains("lisen"), "{message}");
        assert!(message.contains("unknown setting"), "{message}");
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let message = errors(Config::load(
            Some(Path::new("/nonexistent/billd.toml")),
            &env(&[]),
        ));
        assert!(
            message.contains("BILLD_CONFIG: cannot read /nonexistent/billd.toml"),
            "{message}"
        );
    }

    #[test]
    fn alert_settings_default_to_hourly_dedupe_and_the_webhook_url_is_a_redacted_secret() {
        let defaults = Config::load(None, &HashMap::new()).unwrap().alerts;
        assert!(defaults.webhook_url.is_none());
        assert_eq!(defaults.dedupe_window_secs, 3600);
        assert_eq!(defaults.webhook_silence_secs, 6 * 3600);

        let config = Config::load(
            None,
            &env(&[
                (
                    "BILLD_ALERT_WEBHOOK_URL",
                    "https://hooks.slack.com/services/T0/B0/s3cr3tT0ken",
                ),
                ("BILLD_ALERT_DEDUPE_WINDOW_SECS", "600"),
                ("BILLD_ALERT_PAYMENT_FAILURE_PERCENT", "25"),
            ]),
        )
        .unwrap();
        let server = config.alerts.server_config();

        assert_eq!(server.dedupe_window_secs, 600);
        assert_eq!(server.payment_failure_percent, 25);
        assert_eq!(
            server.webhook_url.as_deref(),
            Some("https://hooks.slack.com/services/T0/B0/s3cr3tT0ken")
        );
        assert!(!format!("{config:?}").contains("s3cr3tT0ken"));
        let err = errors(Config::load(
            None,
            &env(&[
                ("BILLD_ALERT_WEBHOOK_URL", "ftp://example.com/s3cr3t"),
                ("BILLD_ALERT_PAYMENT_FAILURE_PERCENT", "101"),
            ]),
        ));
        assert!(err.contains("BILLD_ALERT_WEBHOOK_URL"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        assert!(err.contains("BILLD_ALERT_PAYMENT_FAILURE_PERCENT"), "{err}");
    }

    #[test]
    fn debug_output_redacts_every_secret_including_the_database_password() {
        let config = Config::load(
            None,
            &env(&[
                (
                    "BILLD_DATABASE_URL",
                    "postgres://billd:s3cretpw@db.internal:5432/billd?sslmode=require",
                ),
                ("BILLD_STRIPE_API_KEY", "sk_test_abcdefgh12345678"),
                ("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_topsecretvalue"),
                ("BILLD_API_KEYS", "app_key_0123456789abcdef"),
                ("BILLD_ADMIN_API_KEYS", "admin_key_0123456789abcdef"),
                ("BILLD_SMTP_URL", "smtp://mailer:mailpw@smtp.example:587"),
            ]),
        )
        .unwrap();

        let debug = format!("{config:?}");

        for secret in [
            "s3cretpw",
            "sk_test_abcdefgh12345678",
            "whsec_topsecretvalue",
            "app_key_0123456789abcdef",
            "admin_key_0123456789abcdef",
            "mailpw",
        ] {
            assert!(!debug.contains(secret), "{secret} leaked in {debug}");
        }
        assert!(
            debug.contains("postgres://billd:[REDACTED]@db.internal:5432/billd"),
            "{debug}"
        );
    }

    #[test]
    fn url_redaction_handles_urls_without_passwords_and_query_passwords() {
        assert_eq!(redact_url("sqlite://billd.db"), "sqlite://billd.db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=pw"),
            "postgres://h/db?user=[REDACTED]&password=[REDACTED]"
        );
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db"),
            "postgres://u:[REDACTED]@h/db"
        );
    }
}
