//! Zero-configuration dev mode.
//!
//! With no `BILLD_STRIPE_API_KEY`, `billd serve` starts the built-in Stripe
//! emulator (stripe-sim) on a loopback port, points billd's Stripe client at
//! it, creates the catalog's prices there, registers billd's own webhook
//! endpoint with the secret the emulator returns, makes up an app API key and
//! an admin API key when none is configured, and prints a walkthrough. The emulator's state is kept
//! in `.billd/sim.json` next to the dev database so both survive restarts.
//!
//! With an API key but no `BILLD_STRIPE_WEBHOOK_SECRETS`, billd makes up a
//! webhook secret (kept in `.billd/` so it survives restarts) and prints it
//! with a ready-to-paste curl example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use billd_core::{Catalog, PriceId};
use rand::distributions::Alphanumeric;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

use crate::config::Config;

/// The API key billd uses with the emulator (any `sk_test_` key is accepted).
pub const DEV_STRIPE_KEY: &str = "sk_test_billd_dev";

/// Where `billd serve` keeps dev-mode state (relative to its working directory).
pub const STATE_DIR: &str = ".billd";

/// The generated app API key's file in [`STATE_DIR`].
pub const APP_KEY_FILE: &str = "dev_api_key";

/// The generated admin API key's file in [`STATE_DIR`].
pub const ADMIN_KEY_FILE: &str = "dev_admin_key";

/// The prefix of a generated app API key.
const APP_KEY_PREFIX: &str = "billd_dev_";

/// The prefix of a generated admin API key.
const ADMIN_KEY_PREFIX: &str = "billd_dev_admin_";

/// Stripe's real API base, the built-in default of `stripe_api_base`.
const STRIPE_API_BASE: &str = "https://api.stripe.com";

/// The built-in emulator as dev mode set it up.
#[derive(Debug)]
pub struct Emulator {
    /// The emulator's base URL (billd's `stripe_api_base`).
    pub url: String,
    /// The in-process server; `None` when `BILLD_STRIPE_API_BASE` names one already running.
    pub handle: Option<SimHandle>,
    /// The catalog with the emulator's price ids bound.
    pub catalog: Option<Catalog>,
    /// The first bound price (plan, id), for the walkthrough.
    pub example_price: Option<(String, String)>,
    /// The generated app API key, when `BILLD_API_KEYS` was unset.
    pub app_key: Option<SecretString>,
    /// The generated admin API key, when `BILLD_ADMIN_API_KEYS` was unset.
    pub admin_key: Option<SecretString>,
}

/// What dev mode filled in for a configuration that left things unset.
#[derive(Debug, Default)]
pub struct DevMode {
    /// The generated webhook secret, when none was configured and a real Stripe key is.
    pub webhook_secret: Option<SecretString>,
    /// Where the generated secret is kept.
    pub secret_file: Option<PathBuf>,
    /// The built-in emulator, when no Stripe API key is configured.
    pub emulator: Option<Emulator>,
}

impl DevMode {
    /// Fills the gaps of `config` for local use, keeping dev state under
    /// `state_dir`; billd listens on `billd_addr` (already bound).
    pub async fn apply(
        config: &mut Config,
        state_dir: &Path,
        billd_addr: SocketAddr,
    ) -> anyhow::Result<DevMode> {
        let mut dev = DevMode::default();
        if config.stripe_api_key.is_none() {
            dev.emulator = Some(start_emulator(config, state_dir, billd_addr).await?);
        } else if config.stripe_webhook_secrets.is_empty() {
            let file = state_dir.join("dev_webhook_secret");
            let secret = kept_secret(&file, "whsec_", || generate("whsec_dev_"))?;
            config
                .stripe_webhook_secrets
                .push(SecretString::from(secret.clone()));
            dev.webhook_secret = Some(SecretString::from(secret));
            dev.secret_file = Some(file);
        }
        Ok(dev)
    }

    /// Whether anything was filled in.
    pub fn is_active(&self) -> bool {
        self.webhook_secret.is_some() || self.emulator.is_some()
    }

    /// The catalog with the emulator's price ids, replacing the configured one.
    pub fn take_catalog(&mut self) -> Option<Catalog> {
        self.emulator.as_mut().and_then(|e| e.catalog.take())
    }

    /// Stops the in-process emulator, if any.
    pub async fn shutdown(self) {
        if let Some(handle) = self.emulator.and_then(|e| e.handle) {
            handle.shutdown().await;
        }
    }

    /// The loud message printed at start-up.
    pub fn banner(&self, base_url: &str) -> String {
        let mut out = String::new();
        out.push_str(
            "================================ billd DEV MODE ================================\n",
        );
        if let Some(emulator) = &self.emulator {
            out.push_str(&emulator_walkthrough(emulator, base_url));
        }
        if let Some(secret) = &self.webhook_secret {
            let secret = secret.expose_secret();
            out.push_str(&format!(
                "BILLD_STRIPE_WEBHOOK_SECRETS is not set: accepting webhooks signed with the dev secret\n\n    {secret}\n\n"
            ));
            if let Some(file) = &self.secret_file {
                out.push_str(&format!(
                    "(kept in {}). Send a signed test event:\n\n",
                    file.display()
                ));
            }
            out.push_str(&format!(
                "    SECRET={secret}\n    T=$(date +%s)\n    BODY='{{\"id\":\"evt_dev_'$T'\",\"object\":\"event\",\"type\":\"customer.created\",\"created\":'$T',\"data\":{{\"object\":{{\"id\":\"cus_dev\",\"object\":\"customer\"}}}}}}'\n    SIG=$(printf '%s' \"$T.$BODY\" | openssl dgst -sha256 -hmac \"$SECRET\" | sed 's/^.* //')\n    curl -sS -X POST {base_url}/webhooks/stripe -H \"Stripe-Signature: t=$T,v1=$SIG\" -H 'Content-Type: application/json' -d \"$BODY\"\n\n"
            ));
            out.push_str("Or: stripe listen --forward-to ");
            out.push_str(&format!("{base_url}/webhooks/stripe (then set BILLD_STRIPE_WEBHOOK_SECRETS to the whsec_ it prints)\n"));
        }
        out.push_str(
            "================================================================================\n",
        );
        out
    }
}

/// The walkthrough's shell steps start after this line and end before [`WALKTHROUGH_END`].
pub const WALKTHROUGH_BEGIN: &str = "# --- try it (sh) ---";
/// Ends the walkthrough's shell steps.
pub const WALKTHROUGH_END: &str = "# --- end ---";

fn emulator_walkthrough(emulator: &Emulator, base_url: &str) -> String {
    let sim = &emulator.url;
    let mut out = format!(
        "TEST MODE: BILLD_STRIPE_API_KEY is not set, so billd talks to its built-in Stripe\n\
         emulator at {sim}. NOTHING REAL IS CHARGED. Set BILLD_STRIPE_API_KEY for production.\n\n"
    );
    let key = match &emulator.app_key {
        Some(key) => {
            out.push_str(&format!(
                "BILLD_API_KEYS is not set: the dev app API key is {} (kept in .billd/).\n\n",
                key.expose_secret()
            ));
            key.expose_secret().to_string()
        }
        // Quoted, so the printed `KEY=` line stays valid shell until replaced.
        None => "'<one of your BILLD_API_KEYS>'".to_string(),
    };
    if let Some(admin) = &emulator.admin_key {
        out.push_str(&format!(
            "BILLD_ADMIN_API_KEYS is not set: the dev admin API key is {} (kept in .billd/), for /v1/admin/…\n\n",
            admin.expose_secret()
        ));
    }
    let Some((plan, _price)) = &emulator.example_price else {
        out.push_str("The catalog has no priced plan, so there is nothing to check out.\n");
        return out;
    };
    // Re-runnable as pasted: once alice is subscribed, checkout answers 409
    // `already_subscribed` (printed, naming the subscription), the payment
    // steps are skipped and the last step shows the plan she has.
    out.push_str(&format!(
        "Subscribe a customer to the {plan} plan with card pm_card_visa:\n\n\
{WALKTHROUGH_BEGIN}\n\
KEY={key}\n\
curl -sS -X PUT {base_url}/v1/customers/alice -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' -d '{{\"email\":\"alice@example.com\"}}'\n\
CHECKOUT=$(curl -sS -X POST {base_url}/v1/customers/alice/checkout -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' -d '{{\"plan\":\"{plan}\",\"success_url\":\"{base_url}/\",\"cancel_url\":\"{base_url}/\"}}'); printf '%s\\n' \"$CHECKOUT\"\n\
SESSION=$(printf '%s' \"$CHECKOUT\" | sed -n 's/.*\"session_id\":\"\\(cs_[^\"]*\\)\".*/\\1/p')\n\
if [ -n \"$SESSION\" ]; then curl -sS -X POST {sim}/_sim/checkout/sessions/$SESSION/complete -u {DEV_STRIPE_KEY}: -d payment_method=pm_card_visa; fi\n\
if [ -n \"$SESSION\" ]; then curl -sS -X POST {base_url}/v1/customers/alice/checkout/sync -H \"Authorization: Bearer $KEY\" -H 'Content-Type: application/json' -d '{{\"session_id\":\"'$SESSION'\"}}'; fi\n\
curl -sS {base_url}/v1/customers/alice/entitlements -H \"Authorization: Bearer $KEY\"\n\
{WALKTHROUGH_END}\n\n\
The sync step applies the paid session at once, as your success page would with the\n\
{{CHECKOUT_SESSION_ID}} Stripe puts in success_url; the webhooks bring the same moments later.\n\
Paste it again: checkout answers 409 already_subscribed and the last step shows plan {plan}.\n"
    ));
    out
}

/// Starts (or reaches) the emulator and sets billd's configuration to use it.
async fn start_emulator(
    config: &mut Config,
    state_dir: &Path,
    billd_addr: SocketAddr,
) -> anyhow::Result<Emulator> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let (url, handle) = if config.stripe_api_base.trim_end_matches('/') == STRIPE_API_BASE {
        let listener = bind_kept_port(&state_dir.join("sim_port")).await?;
        let handle = stripe_sim::serve(
            listener,
            SimConfig {
                snapshot_path: Some(state_dir.join("sim.json")),
                ..SimConfig::default()
            },
        )
        .await
        .context("dev mode: starting the Stripe emulator")?;
        (handle.url(), Some(handle))
    } else {
        // An emulator the user runs (e.g. `billd sim`) named by BILLD_STRIPE_API_BASE.
        (
            config.stripe_api_base.trim_end_matches('/').to_string(),
            None,
        )
    };
    config.stripe_api_base = url.clone();
    config.stripe_api_key = Some(SecretString::from(DEV_STRIPE_KEY));
    let sim = SimClient {
        http: reqwest::Client::new(),
        base: url.clone(),
    };

    let mut catalog = crate::billing::catalog(config)?;
    let example_price = bind_prices(&sim, &mut catalog).await?;
    bind_overages(&sim, &mut catalog).await?;
    bind_packs(&sim, &mut catalog).await?;

    let secret = register_webhook(&sim, &format!("http://{billd_addr}/webhooks/stripe")).await?;
    config
        .stripe_webhook_secrets
        .push(SecretString::from(secret));

    let app_key = dev_key(
        &mut config.api_keys,
        &state_dir.join(APP_KEY_FILE),
        APP_KEY_PREFIX,
    )?;
    let admin_key = dev_key(
        &mut config.admin_api_keys,
        &state_dir.join(ADMIN_KEY_FILE),
        ADMIN_KEY_PREFIX,
    )?;
    Ok(Emulator {
        url,
        handle,
        catalog: Some(catalog),
        example_price,
        app_key,
        admin_key,
    })
}

/// Binds the emulator on the loopback port kept in `file` (so that URLs in
/// the walkthrough, and in the emulator's saved state, stay valid across
/// restarts), else on a new port, which is kept for the next start.
async fn bind_kept_port(file: &Path) -> anyhow::Result<tokio::net::TcpListener> {
    let kept = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|port| *port != 0);
    if let Some(port) = kept {
        match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => return Ok(listener),
            Err(e) => eprintln!(
                "billd: dev mode: the Stripe emulator's port {port} (kept in {}) is taken ({e}); using a new one",
                file.display()
            ),
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("dev mode: binding the Stripe emulator on loopback")?;
    let port = listener.local_addr()?.port();
    std::fs::write(file, format!("{port}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(listener)
}

/// Where dev mode keeps the key it uses for an empty `BILLD_API_KEYS`
/// (`admin` false) or `BILLD_ADMIN_API_KEYS` (`admin` true) under
/// `state_dir`, and whether a key is kept there already (else `billd serve`
/// generates one at start-up).
pub fn dev_key_file(state_dir: &Path, admin: bool) -> (PathBuf, bool) {
    let (file, prefix) = if admin {
        (ADMIN_KEY_FILE, ADMIN_KEY_PREFIX)
    } else {
        (APP_KEY_FILE, APP_KEY_PREFIX)
    };
    let file = state_dir.join(file);
    let kept = std::fs::read_to_string(&file).is_ok_and(|s| s.trim().starts_with(prefix));
    (file, kept)
}

/// When `keys` is empty: the key kept in `file` (or a new one kept there)
/// becomes the only key, and is returned for the banner.
fn dev_key(
    keys: &mut Vec<SecretString>,
    file: &Path,
    prefix: &str,
) -> anyhow::Result<Option<SecretString>> {
    if !keys.is_empty() {
        return Ok(None);
    }
    let key = kept_secret(file, prefix, || generate(prefix))?;
    keys.push(SecretString::from(key.clone()));
    Ok(Some(SecretString::from(key)))
}

/// Finds or creates every lookup-key price of the catalog in the emulator and
/// binds its id; returns the first (plan, price id).
async fn bind_prices(
    sim: &SimClient,
    catalog: &mut Catalog,
) -> anyhow::Result<Option<(String, String)>> {
    let wanted: Vec<_> = catalog
        .prices()
        .filter(|(_, _, _, price)| price.id.is_none())
        .filter_map(|(plan, currency, interval, price)| {
            Some((
                plan.clone(),
                currency.clone(),
                interval,
                price.lookup_key.clone()?,
                price.unit_amount?,
            ))
        })
        .collect();
    let mut example = None;
    for (plan, currency, interval, lookup_key, amount) in wanted {
        let found = sim
            .call(
                reqwest::Method::GET,
                &format!("/v1/prices?lookup_keys[]={lookup_key}"),
                &[],
            )
            .await?;
        let id = match found["data"][0]["id"].as_str() {
            Some(id) => id.to_string(),
            None => {
                let created = sim
                    .call(
                        reqwest::Method::POST,
                        "/v1/prices",
                        &[
                            ("product_data[name]", plan.to_string()),
                            ("currency", currency.to_string()),
                            ("unit_amount", amount.to_string()),
                            ("recurring[interval]", interval.as_str().to_string()),
                            ("lookup_key", lookup_key.clone()),
                        ],
                    )
                    .await?;
                created["id"]
                    .as_str()
                    .context("the emulator created a price without an id")?
                    .to_string()
            }
        };
        let price_id = PriceId::parse(&id).with_context(|| format!("price id {id}"))?;
        catalog.bind_price(&plan, &currency, interval, price_id)?;
        if example.is_none() || plan.to_string() == "pro" {
            example = Some((plan.to_string(), id));
        }
    }
    Ok(example)
}

/// Finds or creates, in the emulator, the meter and the metered price of
/// every overage the catalog names by lookup key, and binds the price's id.
async fn bind_overages(sim: &SimClient, catalog: &mut Catalog) -> anyhow::Result<()> {
    let currency = catalog.default_currency().clone();
    let wanted: Vec<_> = catalog
        .overages()
        .iter()
        .filter(|(_, overage)| overage.price.id.is_none())
        .map(|(feature, overage)| (feature.clone(), overage.clone()))
        .collect();
    for (feature, overage) in wanted {
        let Some(lookup_key) = overage.price.lookup_key.clone() else {
            continue;
        };
        let found = sim
            .call(
                reqwest::Method::GET,
                &format!("/v1/prices?lookup_keys[]={lookup_key}"),
                &[],
            )
            .await?;
        let id = match found["data"][0]["id"].as_str() {
            Some(id) => id.to_string(),
            None => {
                let amount = overage.price.unit_amount.with_context(|| {
                    format!(
                        "dev mode: the overage of {feature} ({lookup_key}) has no unit_amount to create its price with"
                    )
                })?;
                let meters = sim
                    .call(
                        reqwest::Method::GET,
                        "/v1/billing/meters?status=active&limit=100",
                        &[],
                    )
                    .await?;
                let existing = meters["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["event_name"] == overage.meter_event_name.as_str())
                    .and_then(|m| m["id"].as_str())
                    .map(str::to_string);
                let meter = match existing {
                    Some(meter) => meter,
                    None => sim
                        .call(
                            reqwest::Method::POST,
                            "/v1/billing/meters",
                            &[
                                ("display_name", format!("{feature} overage")),
                                ("event_name", overage.meter_event_name.clone()),
                                ("default_aggregation[formula]", "sum".to_string()),
                            ],
                        )
                        .await?["id"]
                        .as_str()
                        .context("the emulator created a meter without an id")?
                        .to_string(),
                };
                let mut form = vec![
                    ("product_data[name]", format!("{feature} overage")),
                    ("currency", currency.to_string()),
                    ("unit_amount", amount.to_string()),
                    ("recurring[interval]", overage.interval.as_str().to_string()),
                    ("recurring[usage_type]", "metered".to_string()),
                    ("recurring[meter]", meter),
                    ("lookup_key", lookup_key.clone()),
                ];
                if overage.per > 1 {
                    form.push(("transform_quantity[divide_by]", overage.per.to_string()));
                    form.push(("transform_quantity[round]", "up".to_string()));
                }
                sim.call(reqwest::Method::POST, "/v1/prices", &form).await?["id"]
                    .as_str()
                    .context("the emulator created a price without an id")?
                    .to_string()
            }
        };
        let price_id = PriceId::parse(&id).with_context(|| format!("price id {id}"))?;
        catalog.bind_overage_price(&feature, price_id);
    }
    Ok(())
}

/// Finds or creates, in the emulator, the one-time price of every credit
/// pack the catalog names by lookup key, and binds its id.
async fn bind_packs(sim: &SimClient, catalog: &mut Catalog) -> anyhow::Result<()> {
    let wanted: Vec<_> = catalog
        .credit_packs()
        .values()
        .flat_map(|pack| {
            pack.prices
                .iter()
                .filter(|(_, price)| price.id.is_none())
                .filter_map(|(currency, price)| {
                    Some((
                        pack.name.clone(),
                        currency.clone(),
                        price.lookup_key.clone()?,
                        price.unit_amount,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for (pack, currency, lookup_key, amount) in wanted {
        let found = sim
            .call(
                reqwest::Method::GET,
                &format!("/v1/prices?lookup_keys[]={lookup_key}"),
                &[],
            )
            .await?;
        let id = match found["data"][0]["id"].as_str() {
            Some(id) => id.to_string(),
            None => {
                let amount = amount.with_context(|| {
                    format!(
                        "dev mode: credit pack {pack} ({lookup_key}) has no unit_amount to create its price with"
                    )
                })?;
                // No `recurring`: a one-time price, what Checkout sells in
                // payment mode.
                sim.call(
                    reqwest::Method::POST,
                    "/v1/prices",
                    &[
                        ("product_data[name]", format!("credit pack {pack}")),
                        ("currency", currency.to_string()),
                        ("unit_amount", amount.to_string()),
                        ("lookup_key", lookup_key.clone()),
                    ],
                )
                .await?["id"]
                    .as_str()
                    .context("the emulator created a price without an id")?
                    .to_string()
            }
        };
        let price_id = PriceId::parse(&id).with_context(|| format!("price id {id}"))?;
        catalog.bind_pack_price(&pack, &currency, price_id);
    }
    Ok(())
}

/// Registers billd's endpoint for every event type billd handles (replacing
/// one left from an earlier run at the same URL) and returns its secret.
async fn register_webhook(sim: &SimClient, url: &str) -> anyhow::Result<String> {
    let existing = sim
        .call(reqwest::Method::GET, "/v1/webhook_endpoints?limit=100", &[])
        .await?;
    for endpoint in existing["data"].as_array().into_iter().flatten() {
        if endpoint["url"] == url {
            if let Some(id) = endpoint["id"].as_str() {
                sim.call(
                    reqwest::Method::DELETE,
                    &format!("/v1/webhook_endpoints/{id}"),
                    &[],
                )
                .await?;
            }
        }
    }
    let mut form = vec![
        ("url", url.to_string()),
        ("api_version", billd_stripe::API_VERSION.to_string()),
    ];
    for event_type in billd_server::pipeline::HANDLED_EVENT_TYPES {
        form.push(("enabled_events[]", event_type.to_string()));
    }
    let created = sim
        .call(reqwest::Method::POST, "/v1/webhook_endpoints", &form)
        .await?;
    created["secret"]
        .as_str()
        .filter(|s| s.starts_with("whsec_"))
        .map(str::to_string)
        .context("the emulator returned no webhook secret")
}

/// A minimal client for dev-mode set-up calls to the emulator.
struct SimClient {
    http: reqwest::Client,
    base: String,
}

impl SimClient {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, String)],
    ) -> anyhow::Result<Value> {
        let what = format!("dev mode: {method} {}{path}", self.base);
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(DEV_STRIPE_KEY)
            .header("Stripe-Version", billd_stripe::API_VERSION);
        if !form.is_empty() {
            request = request.form(form);
        }
        let response = request.send().await.with_context(|| what.clone())?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| what.clone())?;
        if !status.is_success() {
            anyhow::bail!("{what}: {status}: {body}");
        }
        Ok(body)
    }
}

/// The secret kept in `file` (when it has `prefix`), or a new one written there.
fn kept_secret(
    file: &Path,
    prefix: &str,
    generate: impl FnOnce() -> String,
) -> anyhow::Result<String> {
    match std::fs::read_to_string(file) {
        Ok(s) if s.trim().starts_with(prefix) => Ok(s.trim().to_string()),
        _ => {
            let secret = generate();
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(file, &secret).with_context(|| format!("writing {}", file.display()))?;
            Ok(secret)
        }
    }
}

fn generate(prefix: &str) -> String {
    let random: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    format!("{prefix}{random}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with_key(extra: &[(&str, &str)]) -> Config {
        let mut env = HashMap::from([(
            "BILLD_STRIPE_API_KEY".to_string(),
            "sk_test_real".to_string(),
        )]);
        for (k, v) in extra {
            env.insert((*k).to_string(), (*v).to_string());
        }
        Config::load(None, &env).unwrap()
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[tokio::test]
    async fn with_a_stripe_key_but_no_webhook_secrets_a_dev_secret_is_generated_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = with_key(&[]);
        let mut second = with_key(&[]);

        let dev1 = DevMode::apply(&mut first, dir.path(), addr())
            .await
            .unwrap();
        let dev2 = DevMode::apply(&mut second, dir.path(), addr())
            .await
            .unwrap();

        let s1 = dev1
            .webhook_secret
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        assert!(s1.starts_with("whsec_dev_"));
        assert!(dev1.emulator.is_none());
        assert_eq!(dev2.webhook_secret.unwrap().expose_secret(), s1);
        assert_eq!(first.stripe_webhook_secrets[0].expose_secret(), s1);
        assert!(dev1.banner("http://127.0.0.1:8080").contains(&s1));
    }

    #[tokio::test]
    async fn configured_webhook_secrets_turn_the_dev_secret_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = with_key(&[("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_real")]);
        let dev = DevMode::apply(&mut config, dir.path(), addr())
            .await
            .unwrap();
        assert!(!dev.is_active());
        assert_eq!(config.stripe_webhook_secrets.len(), 1);
        assert!(!dir.path().join("dev_webhook_secret").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_stripe_key_the_emulator_gets_the_catalog_prices_and_billds_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::load(None, &HashMap::new()).unwrap();

        let mut dev = DevMode::apply(&mut config, dir.path(), addr())
            .await
            .unwrap();

        let emulator = dev.emulator.as_ref().unwrap();
        let sim = emulator.handle.as_ref().unwrap().sim.clone();
        assert_eq!(config.stripe_api_base, emulator.url);
        assert_eq!(
            config.stripe_api_key.as_ref().unwrap().expose_secret(),
            DEV_STRIPE_KEY
        );
        let (_, endpoints) = sim.call("GET", "/v1/webhook_endpoints", "");
        let endpoint = &endpoints["data"][0];
        assert_eq!(endpoint["url"], "http://127.0.0.1:9/webhooks/stripe");
        assert_eq!(endpoint["api_version"], billd_stripe::API_VERSION);
        // Stripe shows an endpoint's secret only on creation; the end-to-end
        // test proves billd verifies the emulator's signatures with it.
        assert_eq!(config.stripe_webhook_secrets.len(), 1);
        assert!(config.stripe_webhook_secrets[0]
            .expose_secret()
            .starts_with("whsec_"));
        let key = emulator
            .app_key
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        assert!(key.starts_with("billd_dev_"));
        assert_eq!(config.api_keys[0].expose_secret(), key);
        let admin = emulator
            .admin_key
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_string();
        assert!(admin.starts_with("billd_dev_admin_"));
        assert_ne!(admin, key);
        assert_eq!(config.admin_api_keys.len(), 1);
        assert_eq!(config.admin_api_keys[0].expose_secret(), admin);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ADMIN_KEY_FILE)).unwrap(),
            admin
        );
        let banner = dev.banner("http://127.0.0.1:9");
        assert!(banner.contains("NOTHING REAL IS CHARGED"), "{banner}");
        assert!(banner.contains(&key), "{banner}");
        assert!(
            banner.contains(&format!("the dev admin API key is {admin} ")),
            "{banner}"
        );
        let catalog = dev.take_catalog().unwrap();
        for (_, _, _, price) in catalog.prices() {
            let id = price.id.as_ref().unwrap().to_string();
            assert_eq!(
                sim.object(&id).unwrap()["lookup_key"],
                price.lookup_key.clone().unwrap().as_str()
            );
        }
        dev.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_emulator_gets_each_overages_meter_and_metered_price_once() {
        let dir = tempfile::tempdir().unwrap();
        let plans = dir.path().join("plans.toml");
        std::fs::write(
            &plans,
            billd_core::catalog::SEED_CATALOG_TOML.replacen(
                "generations = { kind = \"metered\" }",
                "generations = { kind = \"metered\", overage = { price = \"gen_over\", per = 1, cap = 9, unit_amount = 20 } }",
                1,
            ),
        )
        .unwrap();
        let env = HashMap::from([("BILLD_PLANS".to_string(), plans.display().to_string())]);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut config = Config::load(None, &env).unwrap();
            let mut dev = DevMode::apply(&mut config, dir.path(), addr())
                .await
                .unwrap();
            let sim = dev
                .emulator
                .as_ref()
                .unwrap()
                .handle
                .as_ref()
                .unwrap()
                .sim
                .clone();
            let catalog = dev.take_catalog().unwrap();
            let overage =
                &catalog.overages()[&billd_core::FeatureName::parse("generations").unwrap()];
            let id = overage.price.id.as_ref().unwrap().to_string();
            let price = sim.object(&id).unwrap();
            assert_eq!(
                (
                    &price["recurring"]["usage_type"],
                    &price["unit_amount"],
                    &price["lookup_key"]
                ),
                (
                    &serde_json::json!("metered"),
                    &serde_json::json!(20),
                    &serde_json::json!("gen_over")
                )
            );
            let meter = sim
                .object(price["recurring"]["meter"].as_str().unwrap())
                .unwrap();
            assert_eq!(meter["event_name"], "billd_generations");
            let (_, meters) = sim.call("GET", "/v1/billing/meters", "");
            assert_eq!(meters["data"].as_array().unwrap().len(), 1);
            ids.push(id);
            dev.shutdown().await;
        }
        assert_eq!(ids[0], ids[1], "a restart reuses the price");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_emulator_gets_each_credit_packs_one_time_price_once() {
        let dir = tempfile::tempdir().unwrap();
        let plans = dir.path().join("plans.toml");
        std::fs::write(
            &plans,
            format!(
                "{}\n[credit_packs.gen_100]\nfeature = \"generations\"\namount = 100\nprices = {{ eur = {{ lookup_key = \"billd_gen_100_eur\", unit_amount = 500 }} }}\n",
                billd_core::catalog::SEED_CATALOG_TOML
            ),
        )
        .unwrap();
        let env = HashMap::from([("BILLD_PLANS".to_string(), plans.display().to_string())]);
        let mut ids = Vec::new();
        for _ in 0..2 {
            let mut config = Config::load(None, &env).unwrap();
            let mut dev = DevMode::apply(&mut config, dir.path(), addr())
                .await
                .unwrap();
            let sim = dev
                .emulator
                .as_ref()
                .unwrap()
                .handle
                .as_ref()
                .unwrap()
                .sim
                .clone();
            let catalog = dev.take_catalog().unwrap();
            let pack = catalog
                .credit_pack(&billd_core::PackName::parse("gen_100").unwrap())
                .unwrap();
            let eur = billd_core::Currency::parse("eur").unwrap();
            let id = pack.prices[&eur].id.as_ref().unwrap().to_string();
            let price = sim.object(&id).unwrap();
            assert_eq!(
                (&price["type"], &price["unit_amount"], &price["lookup_key"]),
                (
                    &serde_json::json!("one_time"),
                    &serde_json::json!(500),
                    &serde_json::json!("billd_gen_100_eur")
                )
            );
            ids.push(id);
            dev.shutdown().await;
        }
        assert_eq!(ids[0], ids[1], "a restart reuses the price");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_reuses_the_emulators_prices_and_replaces_its_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = Config::load(None, &HashMap::new()).unwrap();
        let mut dev1 = DevMode::apply(&mut first, dir.path(), addr())
            .await
            .unwrap();
        let prices1: Vec<String> = dev1
            .take_catalog()
            .unwrap()
            .prices()
            .map(|(_, _, _, p)| p.id.as_ref().unwrap().to_string())
            .collect();
        dev1.shutdown().await;

        let mut second = Config::load(None, &HashMap::new()).unwrap();
        let mut dev2 = DevMode::apply(&mut second, dir.path(), addr())
            .await
            .unwrap();
        let prices2: Vec<String> = dev2
            .take_catalog()
            .unwrap()
            .prices()
            .map(|(_, _, _, p)| p.id.as_ref().unwrap().to_string())
            .collect();
        let sim = dev2
            .emulator
            .as_ref()
            .unwrap()
            .handle
            .as_ref()
            .unwrap()
            .sim
            .clone();
        let (_, endpoints) = sim.call("GET", "/v1/webhook_endpoints", "");

        assert_eq!(prices1, prices2);
        assert_eq!(
            endpoints["data"].as_array().unwrap().len(),
            1,
            "{endpoints}"
        );
        assert_eq!(
            first.api_keys[0].expose_secret(),
            second.api_keys[0].expose_secret()
        );
        assert_eq!(
            first.admin_api_keys[0].expose_secret(),
            second.admin_api_keys[0].expose_secret()
        );
        dev2.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_configured_app_keys_no_key_is_generated_and_the_walkthrough_asks_for_one() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([(
            "BILLD_API_KEYS".to_string(),
            "app_key_configured_1234".to_string(),
        )]);
        let mut config = Config::load(None, &env).unwrap();

        let dev = DevMode::apply(&mut config, dir.path(), addr())
            .await
            .unwrap();

        let banner = dev.banner("http://127.0.0.1:9");
        assert!(dev.emulator.as_ref().unwrap().app_key.is_none());
        assert_eq!(config.api_keys.len(), 1);
        assert!(!dir.path().join("dev_api_key").exists());
        assert!(
            banner.contains("KEY='<one of your BILLD_API_KEYS>'"),
            "{banner}"
        );
        dev.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_configured_admin_keys_no_admin_key_is_generated_or_printed() {
        let dir = tempfile::tempdir().unwrap();
        let env = HashMap::from([(
            "BILLD_ADMIN_API_KEYS".to_string(),
            "admin_key_configured_1234".to_string(),
        )]);
        let mut config = Config::load(None, &env).unwrap();

        let dev = DevMode::apply(&mut config, dir.path(), addr())
            .await
            .unwrap();

        let banner = dev.banner("http://127.0.0.1:9");
        let emulator = dev.emulator.as_ref().unwrap();
        assert!(emulator.admin_key.is_none());
        assert!(emulator.app_key.is_some());
        assert_eq!(config.admin_api_keys.len(), 1);
        assert_eq!(
            config.admin_api_keys[0].expose_secret(),
            "admin_key_configured_1234"
        );
        assert!(!dir.path().join(ADMIN_KEY_FILE).exists());
        assert!(!banner.contains("admin API key"), "{banner}");
        dev.shutdown().await;
    }
}
