//! `billd doctor`: audits a deployment the way the seed audit audited code.
//! It checks the configuration, the database and its migrations, the Stripe
//! key, billd's webhook endpoint at Stripe (enabled, every handled event
//! type, the pinned API version), every catalog price, the customer portal
//! and Stripe Tax, and prints one row per check with the fix for each
//! failure. Any `fail` makes the command exit non-zero; `warn` does not.
//!
//! It only reads: nothing is created or changed, at Stripe or in the
//! database (a missing SQLite file is reported, not created).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use billd_core::Catalog;
use billd_server::pipeline::HANDLED_EVENT_TYPES;
use billd_store::MigrationStatus;
use billd_stripe::client::{ClientConfig, Params, StripeClient, StripeError};
use billd_stripe::API_VERSION;
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;

/// Stripe's API base; anything else is an emulator or a proxy.
const STRIPE_API_BASE: &str = "https://api.stripe.com";

/// The path billd serves Stripe webhooks on.
const WEBHOOK_PATH: &str = "/webhooks/stripe";

/// Options of `billd doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// Print the checks as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Configured as billd needs it.
    Pass,
    /// Works, but probably not what production wants.
    Warn,
    /// billd will misbehave until this is fixed.
    Fail,
    /// Not checked (an earlier check failed, or the feature is off).
    Skip,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "pass",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        })
    }
}

/// One row of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. `webhook events`.
    pub check: String,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a warning or failure.
    pub fix: Option<String>,
}

/// Every check, in the order they ran.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// True when no check failed.
    pub ok: bool,
    /// The rows.
    pub checks: Vec<Check>,
}

impl Report {
    fn push(&mut self, check: &str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            check: check.to_string(),
            status,
            detail,
            fix,
        });
        self.ok = !self.checks.iter().any(|c| c.status == Status::Fail);
    }

    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Status::Pass, detail.into(), None);
    }

    fn warn(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Warn, detail.into(), Some(fix.into()));
    }

    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(check, Status::Fail, detail.into(), Some(fix.into()));
    }

    fn skip(&mut self, check: &str, detail: impl Into<String>) {
        self.push(check, Status::Skip, detail.into(), None);
    }

    /// How many checks failed.
    pub fn failures(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    /// The human-readable table: one line per check, the fix indented below
    /// a warning or failure.
    pub fn table(&self) -> String {
        let width = self
            .checks
            .iter()
            .map(|c| c.check.len())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = format!("{:<6} {:<width$}  DETAIL\n", "STATUS", "CHECK");
        for c in &self.checks {
            out.push_str(&format!(
                "{:<6} {:<width$}  {}\n",
                c.status.to_string(),
                c.check,
                c.detail
            ));
            if let Some(fix) = &c.fix {
                out.push_str(&format!("{:<6} {:<width$}  fix: {fix}\n", "", ""));
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} passed, {} warning(s), {} failed, {} skipped\n",
            count(Status::Pass),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        ));
        out
    }
}

/// Runs every check and prints the report; an error when any check failed,
/// so the process exits non-zero.
pub async fn run(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    args: &DoctorArgs,
) -> anyhow::Result<()> {
    let report = diagnose(file, env).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let failures = report.failures();
    anyhow::ensure!(failures == 0, "doctor: {failures} check(s) failed");
    Ok(())
}

/// Every check against the configuration `file` and `env` describe.
pub async fn diagnose(file: Option<&Path>, env: &HashMap<String, String>) -> Report {
    let mut r = Report {
        ok: true,
        checks: Vec::new(),
    };
    let config = match Config::load(file, env) {
        Ok(config) => {
            r.pass(
                "config",
                "valid (built-in defaults < billd.toml < BILLD_* environment)",
            );
            config
        }
        Err(errors) => {
            for e in errors.0 {
                r.fail(
                    "config",
                    e.0,
                    "correct the setting named (in billd.toml or the environment)",
                );
            }
            r.skip("everything else", "the configuration must load first");
            return r;
        }
    };
    let catalog = check_catalog(&mut r, &config);
    check_database(&mut r, &config).await;
    check_local_settings(&mut r, &config);
    let Some(stripe) = check_stripe_key(&mut r, &config).await else {
        for check in ["webhook endpoint", "prices", "billing portal", "stripe tax"] {
            r.skip(check, "needs a working Stripe key");
        }
        return r;
    };
    let fix_base = FixBase::new(&config);
    check_webhook(&mut r, &config, &stripe, &fix_base).await;
    if let Some(catalog) = &catalog {
        check_prices(&mut r, catalog, &stripe, &fix_base).await;
        check_overages(&mut r, catalog, &stripe, &fix_base).await;
        check_credit_packs(&mut r, catalog, &stripe, &fix_base).await;
    } else {
        r.skip("prices", "the plan catalog did not load");
    }
    check_portal(&mut r, &stripe).await;
    check_tax(&mut r, env, &stripe, &fix_base).await;
    r
}

fn check_catalog(r: &mut Report, config: &Config) -> Option<Catalog> {
    let source = config
        .plans
        .as_ref()
        .map_or("built-in seed catalog".to_string(), |p| {
            p.display().to_string()
        });
    match crate::billing::catalog(config) {
        Ok(catalog) => {
            r.pass(
                "plans",
                format!(
                    "{} plan(s), {} price(s) from {source}",
                    catalog.plans().len(),
                    catalog.prices().count()
                ),
            );
            Some(catalog)
        }
        Err(e) => {
            r.fail(
                "plans",
                format!("{e:#}"),
                "fix the plans file BILLD_PLANS names",
            );
            None
        }
    }
}

/// The file a `sqlite:` URL names, unless it is in memory.
fn sqlite_file(url: &str) -> Option<&Path> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| Path::new(path))
}

async fn check_database(r: &mut Report, config: &Config) {
    let shown = config.database_url.redacted();
    if let Some(file) = sqlite_file(config.database_url.expose()) {
        if !file.exists() {
            r.fail(
                "database",
                format!("{shown}: the file does not exist"),
                "run `billd migrate` to create it (or correct BILLD_DATABASE_URL)",
            );
            r.skip("migrations", "no database");
            return;
        }
    }
    let store = match tokio::time::timeout(
        Duration::from_secs(15),
        billd_store::connect(config.database_url.expose()),
    )
    .await
    {
        Ok(Ok(store)) => store,
        Ok(Err(e)) => {
            r.fail(
                "database",
                format!("{shown}: {e}"),
                "check BILLD_DATABASE_URL and that the database server is running and reachable",
            );
            r.skip("migrations", "no database");
            return;
        }
        Err(_) => {
            r.fail(
                "database",
                format!("{shown}: no answer within 15 s"),
                "check BILLD_DATABASE_URL and that the database server is reachable",
            );
            r.skip("migrations", "no database");
            return;
        }
    };
    if let Err(e) = store.ping().await {
        r.fail(
            "database",
            format!("{shown}: {e}"),
            "check that the database server is running",
        );
        r.skip("migrations", "no database");
        return;
    }
    r.pass("database", format!("{shown} answers"));
    match store.migration_status().await {
        Ok(status) => report_migrations(r, &status),
        Err(e) => r.fail(
            "migrations",
            format!("cannot read the migration table: {e}"),
            "check the database user's permissions",
        ),
    }
}

fn report_migrations(r: &mut Report, status: &MigrationStatus) {
    if !status.failed.is_empty() {
        r.fail(
            "migrations",
            format!("migration(s) {:?} failed part-way", status.failed),
            "repair the schema by hand, delete the failed row from _sqlx_migrations, then run `billd migrate`",
        );
    } else if !status.modified.is_empty() {
        r.fail(
            "migrations",
            format!(
                "migration(s) {:?} were applied from a different text than this billd carries",
                status.modified
            ),
            "run the billd version that migrated this database (migrations must never be edited)",
        );
    } else if !status.unknown.is_empty() {
        r.fail(
            "migrations",
            format!(
                "the database has migration(s) {:?} this billd does not know (a newer billd migrated it)",
                status.unknown
            ),
            "upgrade this billd to the version that migrated the database",
        );
    } else if !status.pending.is_empty() {
        let names: Vec<String> = status
            .pending
            .iter()
            .map(|(v, d)| format!("{v} {d}"))
            .collect();
        r.fail(
            "migrations",
            format!("{} pending: {}", status.pending.len(), names.join(", ")),
            "run `billd migrate` (billd serve also migrates at start-up)",
        );
    } else {
        r.pass(
            "migrations",
            format!("all {} applied", status.applied.len()),
        );
    }
}

fn check_local_settings(r: &mut Report, config: &Config) {
    check_api_keys(r, config, Path::new(crate::dev::STATE_DIR));
    let Some(smtp) = &config.smtp_url else {
        r.warn(
            "email",
            "BILLD_SMTP_URL is not set: customer emails and alerts are only logged",
            "set BILLD_SMTP_URL, BILLD_EMAIL_FROM and BILLD_ADMIN_EMAIL",
        );
        return;
    };
    let email = billd_email::EmailConfig::from_vars(|name| match name {
        "BILLD_SMTP_URL" => Some(smtp.expose().to_owned()),
        "BILLD_EMAIL_FROM" => config.email_from.clone(),
        "BILLD_ADMIN_EMAIL" => config.admin_email.clone(),
        "BILLD_TEMPLATES" => config.templates.as_ref().map(|d| d.display().to_string()),
        "BILLD_PRODUCT_NAME" => config.product_name.clone(),
        "BILLD_ACCOUNT_URL" => config.account_url.clone(),
        _ => None,
    });
    match email {
        Err(e) => r.fail(
            "email",
            format!("{e}"),
            "correct the email settings (BILLD_SMTP_URL, BILLD_EMAIL_FROM)",
        ),
        Ok(_) if config.admin_email.is_none() => r.warn(
            "email",
            format!("SMTP {}; BILLD_ADMIN_EMAIL is not set", smtp.redacted()),
            "set BILLD_ADMIN_EMAIL so that alerts reach someone",
        ),
        Ok(_) => r.pass("email", format!("SMTP {}", smtp.redacted())),
    }
}

/// The app and admin API keys. Without a Stripe key `billd serve` runs in
/// dev mode, which generates (and keeps under `state_dir`) a key for each
/// empty list: then an empty list is no problem, and the row says which
/// file holds the key instead of warning.
fn check_api_keys(r: &mut Report, config: &Config, state_dir: &Path) {
    let dev_mode = config.stripe_api_key.is_none();
    let describe = |configured: usize, what: &str, admin: bool| {
        if configured > 0 {
            return format!("{configured} {what} key(s)");
        }
        let (file, kept) = crate::dev::dev_key_file(state_dir, admin);
        if kept {
            format!("the dev-mode {what} key in {}", file.display())
        } else {
            format!(
                "a dev-mode {what} key billd serve generates into {}",
                file.display()
            )
        }
    };
    match (config.api_keys.len(), config.admin_api_keys.len()) {
        (0, _) if !dev_mode => r.warn(
            "api keys",
            "BILLD_API_KEYS is empty: the app API answers 401 to every call",
            "set BILLD_API_KEYS (comma-separated, at least 16 characters each)",
        ),
        (app, 0) if !dev_mode => r.warn(
            "api keys",
            format!("{app} app key(s); BILLD_ADMIN_API_KEYS is empty: the admin API is closed"),
            "set BILLD_ADMIN_API_KEYS to use /v1/admin/…",
        ),
        (app, admin) => r.pass(
            "api keys",
            format!(
                "{}, {}",
                describe(app, "app", false),
                describe(admin, "admin", true)
            ),
        ),
    }
}

/// Checks the key's presence, mode and validity; a client when it works.
async fn check_stripe_key(r: &mut Report, config: &Config) -> Option<StripeClient> {
    let base = config.stripe_api_base.trim_end_matches('/');
    let Some(key) = &config.stripe_api_key else {
        r.fail(
            "stripe key",
            "BILLD_STRIPE_API_KEY is not set: billd serve runs against its built-in emulator (dev mode), nothing is charged",
            "set BILLD_STRIPE_API_KEY to a secret key from https://dashboard.stripe.com/apikeys (sk_live_… in production)",
        );
        return None;
    };
    let secret = key.expose_secret();
    let (kind, live) = match secret {
        k if k.starts_with("sk_live_") => ("secret key", true),
        k if k.starts_with("sk_test_") => ("secret key", false),
        k if k.starts_with("rk_live_") => ("restricted key", true),
        k if k.starts_with("rk_test_") => ("restricted key", false),
        _ => ("key", false),
    };
    let mode = if live {
        "LIVE mode: real money"
    } else {
        "test mode: nothing real is charged"
    };
    if base == STRIPE_API_BASE {
        r.pass("stripe api base", base);
    } else {
        r.warn(
            "stripe api base",
            format!("{base} is not Stripe (an emulator or a proxy)"),
            format!("unset BILLD_STRIPE_API_BASE in production (default {STRIPE_API_BASE})"),
        );
    }
    let mut client_config = ClientConfig::new(base, key.clone());
    // A doctor run should answer in seconds, not wait out a long backoff.
    client_config.max_retries = 1;
    client_config.request_timeout = Duration::from_secs(10);
    let client = match StripeClient::new(client_config) {
        Ok(c) => c,
        Err(e) => {
            r.fail(
                "stripe key",
                format!("cannot build an HTTP client: {e}"),
                "",
            );
            return None;
        }
    };
    match client.get("/v1/account", &Params::new()).await {
        Ok(account) => {
            let id = account["id"].as_str().unwrap_or("?");
            r.pass("stripe key", format!("{kind}, {mode}; account {id}"));
            Some(client)
        }
        Err(StripeError::Api(e)) if e.status == 401 => {
            r.fail(
                "stripe key",
                format!("{kind}, {mode}: Stripe rejects it (401: {})", e.message),
                "put a valid key from https://dashboard.stripe.com/apikeys into BILLD_STRIPE_API_KEY (a rolled or deleted key stops working)",
            );
            None
        }
        Err(StripeError::Api(e)) if e.status == 403 => {
            r.fail(
                "stripe key",
                format!("{kind}, {mode}: not permitted to read the account (403: {})", e.message),
                "give the restricted key read access to the account, webhook endpoints, prices, products, portal configurations and tax settings, or use a secret key",
            );
            None
        }
        Err(e) => {
            r.fail(
                "stripe key",
                format!("{kind}, {mode}: GET {base}/v1/account failed: {e}"),
                "check network access to the Stripe API and BILLD_STRIPE_API_BASE",
            );
            None
        }
    }
}

/// Renders runnable `curl` fixes against the configured API base.
struct FixBase {
    base: String,
}

impl FixBase {
    fn new(config: &Config) -> Self {
        FixBase {
            base: config.stripe_api_base.trim_end_matches('/').to_string(),
        }
    }

    fn curl(&self, method: &str, path: &str, form: &[(&str, String)]) -> String {
        let mut out = String::from("curl");
        if method != "POST" || form.is_empty() {
            out.push_str(&format!(" -X {method}"));
        }
        out.push_str(&format!(
            " {}{path} -u \"$BILLD_STRIPE_API_KEY:\"",
            self.base
        ));
        for (k, v) in form {
            out.push_str(&format!(" -d '{k}={v}'"));
        }
        out
    }
}

fn events_form(events: &[&str]) -> Vec<(&'static str, String)> {
    events
        .iter()
        .map(|e| ("enabled_events[]", (*e).to_string()))
        .collect()
}

fn stripe_error_fix(e: &StripeError, what: &str) -> String {
    match e {
        StripeError::Api(api) if api.status == 403 => {
            format!("give the restricted key read access to {what}")
        }
        _ => "check network access to the Stripe API and retry".to_string(),
    }
}

/// How well an endpoint fits billd: fewer problems first.
fn endpoint_problems(ep: &Value) -> usize {
    let enabled = usize::from(ep["status"] != "enabled");
    let version = usize::from(ep["api_version"].as_str() != Some(API_VERSION));
    enabled + version + missing_events(ep).len()
}

fn missing_events(ep: &Value) -> Vec<&'static str> {
    let enabled: Vec<&str> = ep["enabled_events"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if enabled.contains(&"*") {
        return Vec::new();
    }
    HANDLED_EVENT_TYPES
        .iter()
        .copied()
        .filter(|t| !enabled.contains(t))
        .collect()
}

async fn check_webhook(r: &mut Report, config: &Config, stripe: &StripeClient, fix: &FixBase) {
    let expected_url = config
        .public_url
        .as_ref()
        .map(|u| format!("{}{WEBHOOK_PATH}", u.trim_end_matches('/')));
    let endpoints = match stripe
        .list_all("/v1/webhook_endpoints", &Params::new(), 1000)
        .await
    {
        Ok(list) => list,
        Err(e) => {
            r.fail(
                "webhook endpoint",
                format!("cannot list webhook endpoints: {e}"),
                stripe_error_fix(&e, "webhook endpoints"),
            );
            check_webhook_secrets(r, config);
            return;
        }
    };
    let url_of = |ep: &Value| ep["url"].as_str().unwrap_or_default().to_string();
    let mut candidates: Vec<&Value> = endpoints
        .iter()
        .filter(|ep| {
            let url = url_of(ep);
            match &expected_url {
                Some(expected) => url.trim_end_matches('/') == expected,
                None => url.trim_end_matches('/').ends_with(WEBHOOK_PATH),
            }
        })
        .collect();
    candidates.sort_by_key(|ep| endpoint_problems(ep));
    let mut create = vec![
        (
            "url",
            expected_url
                .clone()
                .unwrap_or_else(|| format!("https://<billd's public host>{WEBHOOK_PATH}")),
        ),
        ("api_version", API_VERSION.to_string()),
    ];
    create.extend(events_form(&HANDLED_EVENT_TYPES));
    let create_fix = fix.curl("POST", "/v1/webhook_endpoints", &create);
    let Some(ep) = candidates.first() else {
        let others: Vec<String> = endpoints.iter().map(url_of).collect();
        let wanted = expected_url.clone().map_or_else(
            || format!("a URL ending in {WEBHOOK_PATH}"),
            |u| format!("{u} (BILLD_PUBLIC_URL)"),
        );
        let detail = if others.is_empty() {
            format!("no webhook endpoint at Stripe; billd needs one at {wanted}")
        } else {
            format!(
                "none of the {} endpoint(s) ({}) is at {wanted}",
                others.len(),
                others.join(", ")
            )
        };
        r.fail(
            "webhook endpoint",
            detail,
            format!("create it, then put the whsec_ secret it returns into BILLD_STRIPE_WEBHOOK_SECRETS: {create_fix}"),
        );
        for check in ["webhook status", "webhook events", "webhook api version"] {
            r.skip(check, "no endpoint");
        }
        check_webhook_secrets(r, config);
        return;
    };
    let id = ep["id"].as_str().unwrap_or("?");
    let mut detail = format!("{id} → {}", url_of(ep));
    if candidates.len() > 1 {
        let rest: Vec<&str> = candidates[1..]
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
        detail.push_str(&format!(
            " (also at a billd URL: {}; each delivers every event again)",
            rest.join(", ")
        ));
    }
    r.pass("webhook endpoint", detail);

    if ep["status"] == "enabled" {
        r.pass("webhook status", "enabled");
    } else {
        r.fail(
            "webhook status",
            format!(
                "{id} is {} (Stripe sends nothing to it)",
                ep["status"].as_str().unwrap_or("not enabled")
            ),
            fix.curl(
                "POST",
                &format!("/v1/webhook_endpoints/{id}"),
                &[("disabled", "false".to_string())],
            ),
        );
    }

    let missing = missing_events(ep);
    if missing.is_empty() {
        r.pass(
            "webhook events",
            format!(
                "all {} event types billd handles are enabled",
                HANDLED_EVENT_TYPES.len()
            ),
        );
    } else {
        // An update replaces the whole list, so the fix keeps what is
        // enabled and adds what is missing.
        let mut all: Vec<&str> = ep["enabled_events"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        all.extend(missing.iter().copied());
        r.fail(
            "webhook events",
            format!(
                "{} of {} event types billd handles are not enabled: {}",
                missing.len(),
                HANDLED_EVENT_TYPES.len(),
                missing.join(", ")
            ),
            fix.curl(
                "POST",
                &format!("/v1/webhook_endpoints/{id}"),
                &events_form(&all),
            ),
        );
    }

    match ep["api_version"].as_str() {
        Some(v) if v == API_VERSION => r.pass("webhook api version", v),
        other => {
            let mut recreate = vec![
                ("url", url_of(ep)),
                ("api_version", API_VERSION.to_string()),
            ];
            recreate.extend(events_form(&HANDLED_EVENT_TYPES));
            r.fail(
                "webhook api version",
                format!(
                    "{id} sends events shaped for API version {}, billd parses {API_VERSION}",
                    other.unwrap_or("(the account default)")
                ),
                format!(
                    "an endpoint's API version cannot be changed: create a new one ({}), add its whsec_ secret to BILLD_STRIPE_WEBHOOK_SECRETS beside the old one, then delete the old endpoint ({})",
                    fix.curl("POST", "/v1/webhook_endpoints", &recreate),
                    fix.curl("DELETE", &format!("/v1/webhook_endpoints/{id}"), &[])
                ),
            );
        }
    }
    check_webhook_secrets(r, config);
}

fn check_webhook_secrets(r: &mut Report, config: &Config) {
    match config.stripe_webhook_secrets.len() {
        0 => r.fail(
            "webhook secrets",
            "BILLD_STRIPE_WEBHOOK_SECRETS is empty: every webhook from Stripe is rejected (400 bad signature)",
            "copy the endpoint's signing secret (Dashboard → Developers → Webhooks → the endpoint → Signing secret, whsec_…) into BILLD_STRIPE_WEBHOOK_SECRETS",
        ),
        1 => r.pass("webhook secrets", "1 signing secret"),
        n => r.pass(
            "webhook secrets",
            format!("{n} signing secrets (a rotation in progress: drop the old one once it expires)"),
        ),
    }
}

async fn check_prices(r: &mut Report, catalog: &Catalog, stripe: &StripeClient, fix: &FixBase) {
    if catalog.prices().count() == 0 {
        r.warn(
            "prices",
            "the catalog has no priced plan: nothing can be bought",
            "add prices to the plans file (BILLD_PLANS)",
        );
        return;
    }
    for (plan, currency, interval, price) in catalog.prices() {
        // Monthly prices keep the name they had before yearly ones existed.
        let check = match interval {
            billd_core::Interval::Month => format!("price {plan}/{currency}"),
            other => format!("price {plan}/{currency}/{other}"),
        };
        let found = match (&price.id, &price.lookup_key) {
            (Some(id), _) => match stripe
                .get(&format!("/v1/prices/{id}"), &Params::new())
                .await
            {
                Ok(p) => Ok(p),
                Err(e) if e.is_not_found() => Err((
                    format!("no price {id} at Stripe"),
                    "create the price in the Stripe dashboard and put its id into BILLD_PLANS"
                        .to_string(),
                )),
                Err(e) => Err((
                    format!("cannot read {id}: {e}"),
                    stripe_error_fix(&e, "prices"),
                )),
            },
            (None, Some(key)) => match stripe
                .get(
                    "/v1/prices",
                    &Params::new().set("lookup_keys[]", key).set("limit", 1),
                )
                .await
            {
                Ok(list) => match list["data"].get(0) {
                    Some(p) => Ok(p.clone()),
                    None => {
                        let mut form = vec![
                            ("product_data[name]", plan.to_string()),
                            ("currency", currency.to_string()),
                            ("recurring[interval]", interval.as_str().to_string()),
                            ("lookup_key", key.clone()),
                        ];
                        if let Some(amount) = price.unit_amount {
                            form.push(("unit_amount", amount.to_string()));
                        }
                        Err((
                            format!("no price has lookup key {key:?}"),
                            fix.curl("POST", "/v1/prices", &form),
                        ))
                    }
                },
                Err(e) => Err((
                    format!("cannot look up {key:?}: {e}"),
                    stripe_error_fix(&e, "prices"),
                )),
            },
            (None, None) => Err((
                "the catalog names neither a price id nor a lookup key".to_string(),
                "give the price an id or a lookup_key in BILLD_PLANS".to_string(),
            )),
        };
        let p = match found {
            Ok(p) => p,
            Err((detail, fix)) => {
                r.fail(&check, detail, fix);
                continue;
            }
        };
        let id = p["id"].as_str().unwrap_or("?").to_string();
        let mut problems = Vec::new();
        let mut fixes = Vec::new();
        if p["active"] != true {
            problems.push(format!("{id} is archived (active=false)"));
            fixes.push(fix.curl(
                "POST",
                &format!("/v1/prices/{id}"),
                &[("active", "true".to_string())],
            ));
        }
        if p["type"] != "recurring" || p["recurring"].is_null() {
            problems.push(format!(
                "{id} is a one-time price; a subscription needs a recurring one"
            ));
            fixes.push("create a recurring price for the plan and point BILLD_PLANS at it".into());
        }
        if p["type"] == "recurring"
            && (p["recurring"]["interval"].as_str() != Some(interval.as_str())
                || p["recurring"]["interval_count"].as_i64().unwrap_or(1) != 1)
        {
            problems.push(format!(
                "{id} bills every {} {}, the catalog lists it as its {interval} price",
                p["recurring"]["interval_count"].as_i64().unwrap_or(1),
                p["recurring"]["interval"].as_str().unwrap_or("?")
            ));
            fixes.push(format!(
                "point BILLD_PLANS' {plan}.{currency}.{interval} at a price billed every {interval}"
            ));
        }
        if p["currency"].as_str() != Some(currency.as_str()) {
            problems.push(format!(
                "{id} is in {}, the catalog expects {currency}",
                p["currency"].as_str().unwrap_or("?")
            ));
            fixes.push(format!(
                "point BILLD_PLANS' {plan}.{currency} at a price in {currency}"
            ));
        }
        if let Some(product) = p["product"].as_str() {
            match stripe
                .get(&format!("/v1/products/{product}"), &Params::new())
                .await
            {
                Ok(prod) if prod["active"] == false => {
                    problems.push(format!(
                        "its product {product} is archived: Checkout refuses it"
                    ));
                    fixes.push(fix.curl(
                        "POST",
                        &format!("/v1/products/{product}"),
                        &[("active", "true".to_string())],
                    ));
                }
                Ok(_) => {}
                Err(e) => {
                    problems.push(format!("cannot read its product {product}: {e}"));
                    fixes.push(stripe_error_fix(&e, "products"));
                }
            }
        }
        if !problems.is_empty() {
            r.fail(&check, problems.join("; "), fixes.join(" ; "));
            continue;
        }
        let amount = p["unit_amount"].as_i64();
        let interval = p["recurring"]["interval"].as_str().unwrap_or("?");
        match (price.unit_amount, amount) {
            (Some(want), Some(have)) if want != have => r.warn(
                &check,
                format!("{id}: {have} {currency} per {interval}, the catalog says {want}"),
                "align unit_amount in BILLD_PLANS with Stripe (Stripe's amount is what is charged)",
            ),
            _ => r.pass(
                &check,
                format!(
                    "{id}: active, {} {currency} per {interval}",
                    amount.map_or("?".to_string(), |a| a.to_string())
                ),
            ),
        }
    }
}

/// The active meter with `event_name` at Stripe, if any.
async fn meter_named(
    stripe: &StripeClient,
    event_name: &str,
) -> Result<Option<Value>, StripeError> {
    let meters = stripe
        .list_all(
            "/v1/billing/meters",
            &Params::new().set("status", "active"),
            1000,
        )
        .await?;
    Ok(meters.into_iter().find(|m| m["event_name"] == event_name))
}

/// The form that creates a metered overage price on `meter`.
fn overage_price_form(
    feature: &billd_core::FeatureName,
    overage: &billd_core::Overage,
    currency: &billd_core::Currency,
    lookup_key: &str,
    meter: &str,
) -> Vec<(&'static str, String)> {
    let mut form = vec![
        ("product_data[name]", format!("{feature} overage")),
        ("currency", currency.to_string()),
        ("recurring[interval]", overage.interval.as_str().to_string()),
        ("recurring[usage_type]", "metered".to_string()),
        ("recurring[meter]", meter.to_string()),
        ("lookup_key", lookup_key.to_string()),
    ];
    if let Some(amount) = overage.price.unit_amount {
        form.push(("unit_amount", amount.to_string()));
    }
    if overage.per > 1 {
        form.push(("transform_quantity[divide_by]", overage.per.to_string()));
        form.push(("transform_quantity[round]", "up".to_string()));
    }
    form
}

/// Each metered feature's overage: its price exists at Stripe, is an
/// active metered price in the catalog's currency at the overage's
/// interval, and its meter exists, is active and has the catalog's event
/// name with the payload keys billd sends.
async fn check_overages(r: &mut Report, catalog: &Catalog, stripe: &StripeClient, fix: &FixBase) {
    let currency = catalog.default_currency();
    for (feature, overage) in catalog.overages() {
        let check = format!("overage {feature}");
        let event_name = &overage.meter_event_name;
        let found = match (&overage.price.id, &overage.price.lookup_key) {
            (Some(id), _) => stripe
                .get(&format!("/v1/prices/{id}"), &Params::new())
                .await
                .map(Some),
            (None, Some(key)) => stripe
                .get(
                    "/v1/prices",
                    &Params::new().set("lookup_keys[]", key).set("limit", 1),
                )
                .await
                .map(|list| list["data"].get(0).cloned()),
            (None, None) => Ok(None),
        };
        let price = match found {
            Ok(Some(price)) => price,
            Ok(None) => {
                let name = overage.price.id.as_ref().map_or_else(
                    || overage.price.lookup_key.clone().unwrap_or_default(),
                    |id| id.to_string(),
                );
                let create_fix = match meter_named(stripe, event_name).await {
                    Err(e) => stripe_error_fix(&e, "billing meters"),
                    Ok(None) => fix.curl(
                        "POST",
                        "/v1/billing/meters",
                        &[
                            ("display_name", format!("{feature} overage")),
                            ("event_name", event_name.clone()),
                            ("default_aggregation[formula]", "sum".to_string()),
                        ],
                    ) + " # then run billd doctor again for the price",
                    Ok(Some(meter)) if overage.price.id.is_none() => fix.curl(
                        "POST",
                        "/v1/prices",
                        &overage_price_form(
                            feature,
                            overage,
                            currency,
                            &name,
                            meter["id"].as_str().unwrap_or("?"),
                        ),
                    ),
                    Ok(Some(_)) => "create the metered price in the Stripe dashboard and put its id into BILLD_PLANS".to_string(),
                };
                r.fail(
                    &check,
                    format!("no metered price {name:?} at Stripe"),
                    create_fix,
                );
                continue;
            }
            Err(e) => {
                r.fail(
                    &check,
                    format!("cannot read the overage price: {e}"),
                    stripe_error_fix(&e, "prices"),
                );
                continue;
            }
        };
        let id = price["id"].as_str().unwrap_or("?").to_string();
        let mut problems = Vec::new();
        if price["active"] != true {
            problems.push(format!("{id} is archived (active=false)"));
        }
        if price["recurring"]["usage_type"] != "metered" {
            problems.push(format!("{id} is not a metered price"));
        }
        if price["recurring"]["interval"].as_str() != Some(overage.interval.as_str()) {
            problems.push(format!(
                "{id} bills every {}, the catalog says {}",
                price["recurring"]["interval"].as_str().unwrap_or("?"),
                overage.interval
            ));
        }
        if price["currency"].as_str() != Some(currency.as_str()) {
            problems.push(format!(
                "{id} is in {}, overage is billed in {currency}",
                price["currency"].as_str().unwrap_or("?")
            ));
        }
        let meter = match price["recurring"]["meter"].as_str() {
            None => {
                problems.push(format!("{id} has no meter"));
                None
            }
            Some(mtr) => match stripe
                .get(&format!("/v1/billing/meters/{mtr}"), &Params::new())
                .await
            {
                Ok(meter) => Some(meter),
                Err(e) => {
                    problems.push(format!("cannot read its meter {mtr}: {e}"));
                    None
                }
            },
        };
        if let Some(meter) = &meter {
            let mtr = meter["id"].as_str().unwrap_or("?");
            if meter["status"] != "active" {
                problems.push(format!("its meter {mtr} is deactivated"));
            }
            if meter["event_name"] != event_name.as_str() {
                problems.push(format!(
                    "its meter {mtr} counts {}, billd sends {event_name}",
                    meter["event_name"]
                ));
            }
            if meter["default_aggregation"]["formula"] != "sum" {
                problems.push(format!("its meter {mtr} does not sum values"));
            }
            if meter["customer_mapping"]["event_payload_key"] != "stripe_customer_id"
                || meter["value_settings"]["event_payload_key"] != "value"
            {
                problems.push(format!(
                    "its meter {mtr} reads other payload keys than stripe_customer_id and value"
                ));
            }
        }
        if !problems.is_empty() {
            r.fail(
                &check,
                problems.join("; "),
                format!("point BILLD_PLANS' {feature} overage at an active metered price in {currency} whose meter sums {event_name}"),
            );
            continue;
        }
        r.pass(
            &check,
            format!(
                "{id}: metered on {} ({event_name}), {} {currency} per {} {feature}",
                meter.as_ref().and_then(|m| m["id"].as_str()).unwrap_or("?"),
                price["unit_amount"]
                    .as_i64()
                    .map_or("?".to_string(), |a| a.to_string()),
                overage.per
            ),
        );
    }
}

/// Each credit pack's price in each currency: it exists at Stripe (by id
/// or lookup key), is active, one-time (Checkout sells it in payment
/// mode), in that currency.
async fn check_credit_packs(
    r: &mut Report,
    catalog: &Catalog,
    stripe: &StripeClient,
    fix: &FixBase,
) {
    for pack in catalog.credit_packs().values() {
        for (currency, price) in &pack.prices {
            let check = format!("credit pack {} {currency}", pack.name);
            let name = price.id.as_ref().map_or_else(
                || price.lookup_key.clone().unwrap_or_default(),
                |id| id.to_string(),
            );
            let found = match (&price.id, &price.lookup_key) {
                (Some(id), _) => stripe
                    .get(&format!("/v1/prices/{id}"), &Params::new())
                    .await
                    .map(Some),
                (None, Some(key)) => stripe
                    .get(
                        "/v1/prices",
                        &Params::new().set("lookup_keys[]", key).set("limit", 1),
                    )
                    .await
                    .map(|list| list["data"].get(0).cloned()),
                (None, None) => Ok(None),
            };
            let found = match found {
                Ok(Some(found)) => found,
                Ok(None) => {
                    let create = match (&price.id, price.unit_amount) {
                        (None, Some(amount)) => fix.curl(
                            "POST",
                            "/v1/prices",
                            &[
                                ("product_data[name]", format!("credit pack {}", pack.name)),
                                ("currency", currency.to_string()),
                                ("unit_amount", amount.to_string()),
                                ("lookup_key", name.clone()),
                            ],
                        ),
                        _ => "create the one-time price in the Stripe dashboard and put its id into BILLD_PLANS".to_string(),
                    };
                    r.fail(&check, format!("no price {name:?} at Stripe"), create);
                    continue;
                }
                Err(e) => {
                    r.fail(
                        &check,
                        format!("cannot read the credit pack's price: {e}"),
                        stripe_error_fix(&e, "prices"),
                    );
                    continue;
                }
            };
            let id = found["id"].as_str().unwrap_or("?").to_string();
            let mut problems = Vec::new();
            if found["active"] != true {
                problems.push(format!("{id} is archived (active=false)"));
            }
            if found["type"] != "one_time" {
                problems.push(format!(
                    "{id} is a recurring price; Checkout sells a pack at a one-time price"
                ));
            }
            if found["currency"].as_str() != Some(currency.as_str()) {
                problems.push(format!(
                    "{id} is in {}, the catalog says {currency}",
                    found["currency"].as_str().unwrap_or("?")
                ));
            }
            if !problems.is_empty() {
                r.fail(
                    &check,
                    problems.join("; "),
                    format!(
                        "point BILLD_PLANS' credit pack {} at an active one-time price in {currency}",
                        pack.name
                    ),
                );
                continue;
            }
            r.pass(
                &check,
                format!(
                    "{id}: {} {currency} for {} {}",
                    found["unit_amount"]
                        .as_i64()
                        .map_or("?".to_string(), |a| a.to_string()),
                    pack.amount,
                    pack.feature
                ),
            );
        }
    }
}

async fn check_portal(r: &mut Report, stripe: &StripeClient) {
    match stripe
        .get(
            "/v1/billing_portal/configurations",
            &Params::new().set("active", true).set("limit", 100),
        )
        .await
    {
        Ok(list) => {
            let configs = list["data"].as_array().cloned().unwrap_or_default();
            match configs.iter().find(|c| c["is_default"] == true) {
                Some(c) => r.pass(
                    "billing portal",
                    format!(
                        "default configuration {} is active",
                        c["id"].as_str().unwrap_or("?")
                    ),
                ),
                None if !configs.is_empty() => r.warn(
                    "billing portal",
                    "active configurations exist but none is the default one portal sessions use",
                    "save the portal settings once at https://dashboard.stripe.com/settings/billing/portal",
                ),
                None => r.warn(
                    "billing portal",
                    "no customer portal configuration: POST /v1/customers/{id}/portal fails until one exists",
                    "save the portal settings once at https://dashboard.stripe.com/settings/billing/portal (test mode: /test/settings/billing/portal)",
                ),
            }
        }
        Err(e) => r.warn(
            "billing portal",
            format!("cannot list portal configurations: {e}"),
            stripe_error_fix(&e, "billing portal configurations"),
        ),
    }
}

/// Whether Stripe Tax is switched on: `BILLD_STRIPE_TAX=true` in the
/// environment (read here so the check works before the setting has a
/// place in billd.toml).
fn tax_enabled(env: &HashMap<String, String>) -> bool {
    env.get("BILLD_STRIPE_TAX")
        .is_some_and(|v| matches!(v.trim(), "true" | "1" | "yes" | "on"))
}

async fn check_tax(
    r: &mut Report,
    env: &HashMap<String, String>,
    stripe: &StripeClient,
    fix: &FixBase,
) {
    if !tax_enabled(env) {
        r.skip("stripe tax", "BILLD_STRIPE_TAX is off");
        return;
    }
    match stripe.get("/v1/tax/settings", &Params::new()).await {
        Ok(settings) if settings["status"] == "active" => {
            r.pass("stripe tax", "active");
        }
        Ok(settings) => {
            let missing: Vec<&str> = settings["status_details"]["pending"]["missing_fields"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            r.fail(
                "stripe tax",
                format!(
                    "BILLD_STRIPE_TAX=true but Stripe Tax is {} (missing: {}): checkout with automatic tax fails",
                    settings["status"].as_str().unwrap_or("not active"),
                    if missing.is_empty() { "?".to_string() } else { missing.join(", ") }
                ),
                format!(
                    "set the head office at https://dashboard.stripe.com/settings/tax, or {}",
                    fix.curl(
                        "POST",
                        "/v1/tax/settings",
                        &[
                            ("head_office[address][country]", "<country>".to_string()),
                            ("defaults[tax_behavior]", "exclusive".to_string()),
                        ],
                    )
                ),
            );
        }
        Err(e) => r.fail(
            "stripe tax",
            format!("cannot read the tax settings: {e}"),
            stripe_error_fix(&e, "tax settings"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_endpoint_misses_no_event_and_a_partial_one_lists_what_it_misses() {
        let all = serde_json::json!({"enabled_events": ["*"]});
        let partial = serde_json::json!({"enabled_events": ["invoice.paid"]});

        assert!(missing_events(&all).is_empty());
        let missing = missing_events(&partial);
        assert_eq!(missing.len(), HANDLED_EVENT_TYPES.len() - 1);
        assert!(!missing.contains(&"invoice.paid"));
    }

    #[test]
    fn empty_api_keys_warn_unless_dev_mode_generates_them() {
        let dir = tempfile::tempdir().unwrap();
        let row = |env: &[(&str, &str)]| {
            let env = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            let mut r = Report::default();
            check_api_keys(&mut r, &Config::load(None, &env).unwrap(), dir.path());
            r.checks.remove(0)
        };
        let stripe = ("BILLD_STRIPE_API_KEY", "sk_test_doctor");

        let production = row(&[stripe]);
        let no_admin = row(&[stripe, ("BILLD_API_KEYS", "app_key_0123456789abcdef")]);
        let dev_first_start = row(&[]);
        std::fs::write(dir.path().join("dev_api_key"), "billd_dev_kept").unwrap();
        let dev_kept = row(&[("BILLD_ADMIN_API_KEYS", "admin_key_0123456789abcdef")]);

        assert_eq!(production.status, Status::Warn);
        assert!(production.detail.contains("BILLD_API_KEYS is empty"));
        assert_eq!(no_admin.status, Status::Warn);
        assert!(no_admin.detail.contains("BILLD_ADMIN_API_KEYS is empty"));
        assert_eq!(dev_first_start.status, Status::Pass);
        assert!(
            dev_first_start
                .detail
                .contains("billd serve generates into")
                && dev_first_start.detail.contains("dev_admin_key"),
            "{}",
            dev_first_start.detail
        );
        assert_eq!(dev_kept.status, Status::Pass);
        assert_eq!(
            dev_kept.detail,
            format!(
                "the dev-mode app key in {}, 1 admin key(s)",
                dir.path().join("dev_api_key").display()
            )
        );
    }

    #[test]
    fn sqlite_urls_name_their_file_and_memory_databases_name_none() {
        assert_eq!(
            sqlite_file("sqlite://data/billd.db?mode=rwc"),
            Some(Path::new("data/billd.db"))
        );
        assert_eq!(sqlite_file("sqlite:billd.db"), Some(Path::new("billd.db")));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[test]
    fn one_failure_makes_the_report_fail_and_the_table_shows_its_fix() {
        let mut r = Report::default();
        r.pass("a", "fine");
        r.warn("b", "meh", "do b");
        assert!(r.ok);
        r.fail("c", "broken", "do c");

        assert!(!r.ok);
        assert_eq!(r.failures(), 1);
        let table = r.table();
        assert!(table.contains("FAIL   c      broken"), "{table}");
        assert!(table.contains("fix: do c"), "{table}");
        assert!(
            table.contains("1 passed, 1 warning(s), 1 failed"),
            "{table}"
        );
    }
}
