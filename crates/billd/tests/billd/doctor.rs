//! `billd doctor` run as a user would, against stripe-sim set up the way dev
//! mode sets it up: a correct account passes; each misconfiguration gives a
//! failing row with its fix and a non-zero exit, and running the printed
//! fix makes the row pass.

use crate::ClearEnv;
use std::process::{Command, Output};

use billd_core::Catalog;
use billd_server::pipeline::HANDLED_EVENT_TYPES;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

/// A stripe-sim account configured for billd, and a migrated database.
struct Setup {
    dir: tempfile::TempDir,
    sim: SimHandle,
    db: String,
    /// Extra or replaced `BILLD_*` variables for the next run.
    env: Vec<(String, String)>,
}

/// Every request made of the emulator, billd's and the setup's, is checked
/// against Stripe's definitions when the setup goes.
impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            crate::assert_requests_conform(&self.sim.sim);
        }
    }
}

impl Setup {
    async fn correct() -> Setup {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim = stripe_sim::serve(listener, SimConfig::default())
            .await
            .unwrap();
        sim.sim.record_exchanges();
        for (plan, currency, interval, price) in Catalog::seed().prices() {
            let (status, body) = sim.sim.call(
                "POST",
                "/v1/prices",
                &format!(
                    "product_data[name]={plan}&currency={currency}&unit_amount={}&recurring[interval]={interval}&lookup_key={}",
                    price.unit_amount.unwrap(),
                    price.lookup_key.clone().unwrap()
                ),
            );
            assert_eq!(status, 200, "{body}");
        }
        create_endpoint(&sim, billd_stripe::API_VERSION, &HANDLED_EVENT_TYPES);
        let (status, body) = sim.sim.call(
            "POST",
            "/v1/billing_portal/configurations",
            "features[invoice_history][enabled]=true&features[payment_method_update][enabled]=true",
        );
        assert_eq!(status, 200, "{body}");
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("billd.db").display());
        let setup = Setup {
            dir,
            sim,
            db,
            env: Vec::new(),
        };
        let migrate = setup.billd(&["migrate"]).await;
        assert!(migrate.status.success(), "{}", text(&migrate.stderr));
        setup
    }

    fn set(&mut self, key: &str, value: &str) {
        self.env.push((key.to_string(), value.to_string()));
    }

    fn endpoint(&self) -> Value {
        let (_, list) = self.sim.sim.call("GET", "/v1/webhook_endpoints", "");
        list["data"][0].clone()
    }

    async fn billd(&self, args: &[&str]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_billd"));
        command
            .args(args)
            .current_dir(self.dir.path())
            .clear_env()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BILLD_DATABASE_URL", &self.db)
            .env("BILLD_STRIPE_API_KEY", "sk_test_doctor")
            .env("BILLD_STRIPE_API_BASE", self.sim.url())
            .env("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_doctor_secret")
            .env("BILLD_API_KEYS", "app_key_doctor_0123456789")
            .env("BILLD_ADMIN_API_KEYS", "admin_key_doctor_0123456789");
        for (k, v) in &self.env {
            command.env(k, v);
        }
        // The emulator runs on this test's runtime: wait off its threads.
        tokio::task::spawn_blocking(move || command.output().unwrap())
            .await
            .unwrap()
    }

    /// `billd doctor --json`: the exit status and the rows by check name.
    async fn doctor(&self) -> (bool, Vec<Value>) {
        let out = self.billd(&["doctor", "--json"]).await;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "doctor --json printed no JSON ({e}): {}{}",
                text(&out.stdout),
                text(&out.stderr)
            )
        });
        assert_eq!(report["ok"], out.status.success(), "{report:#}");
        (
            out.status.success(),
            report["checks"].as_array().unwrap().clone(),
        )
    }

    /// Runs a fix doctor printed, as the operator would paste it.
    async fn apply(&self, fix: &str) {
        let command = fix.trim().to_string();
        let out = tokio::task::spawn_blocking(move || {
            Command::new("sh")
                .arg("-c")
                .arg(command)
                .env("BILLD_STRIPE_API_KEY", "sk_test_doctor")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{fix}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let body: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(body.get("error").is_none(), "{fix}: {body}");
    }
}

fn create_endpoint(sim: &SimHandle, api_version: &str, events: &[&str]) -> Value {
    let mut form = format!("url=http://127.0.0.1:9/webhooks/stripe&api_version={api_version}");
    for e in events {
        form.push_str(&format!("&enabled_events[]={e}"));
    }
    let (status, body) = sim.sim.call("POST", "/v1/webhook_endpoints", &form);
    assert_eq!(status, 200, "{body}");
    body
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn row<'a>(rows: &'a [Value], check: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no row {check:?} in {rows:#?}"))
}

fn failing(rows: &[Value]) -> Vec<String> {
    rows.iter()
        .filter(|r| r["status"] == "fail")
        .map(|r| r["check"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_on_an_account_set_up_like_dev_mode_does() {
    let setup = Setup::correct().await;

    let (ok, rows) = setup.doctor().await;
    let table = setup.billd(&["doctor"]).await;

    assert!(ok, "{rows:#?}");
    assert!(failing(&rows).is_empty(), "{rows:#?}");
    for check in [
        "config",
        "database",
        "migrations",
        "stripe key",
        "webhook endpoint",
        "webhook status",
        "webhook events",
        "webhook api version",
        "webhook secrets",
        "price standard/eur",
        "price pro/eur",
        "billing portal",
    ] {
        assert_eq!(row(&rows, check)["status"], "pass", "{check}: {rows:#?}");
    }
    // An emulator is not Stripe: worth a warning, not a failure.
    assert_eq!(row(&rows, "stripe api base")["status"], "warn");
    assert!(row(&rows, "stripe key")["detail"]
        .as_str()
        .unwrap()
        .contains("test mode"));
    assert_eq!(row(&rows, "stripe tax")["status"], "skip");
    let table = text(&table.stdout);
    assert!(table.contains("0 failed"), "{table}");
    assert!(table.contains("pass   webhook events"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_event_type_fails_naming_it_and_the_printed_fix_enables_it() {
    let setup = Setup::correct().await;
    let id = setup.endpoint()["id"].as_str().unwrap().to_string();
    let mut form = String::new();
    for e in HANDLED_EVENT_TYPES
        .iter()
        .filter(|e| **e != "invoice.payment_failed")
    {
        form.push_str(&format!("enabled_events[]={e}&"));
    }
    let (status, _) = setup
        .sim
        .sim
        .call("POST", &format!("/v1/webhook_endpoints/{id}"), &form);
    assert_eq!(status, 200);

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["webhook events"], "{rows:#?}");
    let events = row(&rows, "webhook events");
    assert!(
        events["detail"]
            .as_str()
            .unwrap()
            .contains("not enabled: invoice.payment_failed"),
        "{events}"
    );
    let fix = events["fix"].as_str().unwrap();
    assert!(
        fix.contains("enabled_events[]=invoice.payment_failed"),
        "{fix}"
    );

    setup.apply(fix).await;
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_on_another_api_version_fails_with_the_recreate_fix() {
    let setup = Setup::correct().await;
    let id = setup.endpoint()["id"].as_str().unwrap().to_string();
    setup
        .sim
        .sim
        .call("DELETE", &format!("/v1/webhook_endpoints/{id}"), "");
    create_endpoint(&setup.sim, "2024-06-20", &["*"]);

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["webhook api version"], "{rows:#?}");
    let version = row(&rows, "webhook api version");
    assert!(
        version["detail"].as_str().unwrap().contains("2024-06-20"),
        "{version}"
    );
    let fix = version["fix"].as_str().unwrap();
    assert!(fix.contains("cannot be changed"), "{fix}");
    assert!(
        fix.contains(&format!("api_version={}", billd_stripe::API_VERSION)),
        "{fix}"
    );
    // A wildcard endpoint delivers every type billd handles.
    assert_eq!(row(&rows, "webhook events")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_price_fails_and_the_printed_fix_reactivates_it() {
    let setup = Setup::correct().await;
    let (_, prices) = setup
        .sim
        .sim
        .call("GET", "/v1/prices?lookup_keys[]=billd_pro_eur", "");
    let id = prices["data"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = setup
        .sim
        .sim
        .call("POST", &format!("/v1/prices/{id}"), "active=false");
    assert_eq!(status, 200);

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["price pro/eur"], "{rows:#?}");
    let price = row(&rows, "price pro/eur");
    assert!(
        price["detail"].as_str().unwrap().contains("archived"),
        "{price}"
    );
    let fix = price["fix"].as_str().unwrap();
    assert!(fix.contains("active=true"), "{fix}");

    setup.apply(fix).await;
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_price_fails_with_the_command_that_creates_it() {
    let setup = Setup::correct().await;
    let (_, prices) = setup
        .sim
        .sim
        .call("GET", "/v1/prices?lookup_keys[]=billd_standard_eur", "");
    let id = prices["data"][0]["id"].as_str().unwrap().to_string();
    // Moving the lookup key away leaves the catalog's key unresolved.
    let (status, body) = setup.sim.sim.call(
        "POST",
        &format!("/v1/prices/{id}"),
        "lookup_key=something_else",
    );
    assert_eq!(status, 200, "{body}");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["price standard/eur"], "{rows:#?}");
    let price = row(&rows, "price standard/eur");
    assert!(
        price["detail"]
            .as_str()
            .unwrap()
            .contains("no price has lookup key \"billd_standard_eur\""),
        "{price}"
    );
    setup.apply(price["fix"].as_str().unwrap()).await;
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_endpoint_fails_with_the_command_that_creates_it() {
    let mut setup = Setup::correct().await;
    let id = setup.endpoint()["id"].as_str().unwrap().to_string();
    setup
        .sim
        .sim
        .call("DELETE", &format!("/v1/webhook_endpoints/{id}"), "");
    setup.set("BILLD_PUBLIC_URL", "http://127.0.0.1:9");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["webhook endpoint"], "{rows:#?}");
    let endpoint = row(&rows, "webhook endpoint");
    assert!(
        endpoint["detail"]
            .as_str()
            .unwrap()
            .contains("no webhook endpoint"),
        "{endpoint}"
    );
    for check in ["webhook events", "webhook api version"] {
        assert_eq!(row(&rows, check)["status"], "skip");
    }
    let fix = endpoint["fix"].as_str().unwrap();
    let command = &fix[fix.find("curl").unwrap()..];
    setup.apply(command).await;
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_another_url_than_billd_public_url_fails() {
    let mut setup = Setup::correct().await;
    setup.set("BILLD_PUBLIC_URL", "https://billing.example.com");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    let endpoint = row(&rows, "webhook endpoint");
    assert_eq!(endpoint["status"], "fail");
    assert!(
        endpoint["detail"]
            .as_str()
            .unwrap()
            .contains("https://billing.example.com/webhooks/stripe"),
        "{endpoint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_endpoint_fails_and_the_printed_fix_enables_it() {
    let setup = Setup::correct().await;
    let id = setup.endpoint()["id"].as_str().unwrap().to_string();
    setup.sim.sim.call(
        "POST",
        &format!("/v1/webhook_endpoints/{id}"),
        "disabled=true",
    );

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["webhook status"], "{rows:#?}");
    setup
        .apply(row(&rows, "webhook status")["fix"].as_str().unwrap())
        .await;
    let (ok, _) = setup.doctor().await;
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_stripe_rejects_fails_and_skips_the_stripe_checks() {
    let mut setup = Setup::correct().await;
    setup.set("BILLD_STRIPE_API_KEY", "sk_live_revoked_key");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["stripe key"], "{rows:#?}");
    let key = row(&rows, "stripe key");
    let detail = key["detail"].as_str().unwrap();
    assert!(
        detail.contains("LIVE mode") && detail.contains("401"),
        "{key}"
    );
    assert!(
        !detail.contains("revoked_key"),
        "the key is never echoed: {key}"
    );
    assert_eq!(row(&rows, "webhook endpoint")["status"], "skip");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_migrations_fail_with_billd_migrate_as_the_fix() {
    let mut setup = Setup::correct().await;
    let fresh = format!("sqlite://{}", setup.dir.path().join("fresh.db").display());
    billd_store::connect(&fresh).await.unwrap();
    setup.set("BILLD_DATABASE_URL", &fresh);

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["migrations"], "{rows:#?}");
    let migrations = row(&rows, "migrations");
    assert!(
        migrations["detail"].as_str().unwrap().contains("pending"),
        "{migrations}"
    );
    assert!(migrations["fix"]
        .as_str()
        .unwrap()
        .contains("billd migrate"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripe_key_without_webhook_secrets_fails() {
    let mut setup = Setup::correct().await;
    setup.set("BILLD_STRIPE_WEBHOOK_SECRETS", "");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["webhook secrets"], "{rows:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stripe_tax_switched_on_but_not_active_at_stripe_fails_until_the_head_office_is_set() {
    let mut setup = Setup::correct().await;
    setup.set("BILLD_STRIPE_TAX", "true");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    assert_eq!(failing(&rows), vec!["stripe tax"], "{rows:#?}");
    assert!(row(&rows, "stripe tax")["detail"]
        .as_str()
        .unwrap()
        .contains("head_office"));

    let (status, _) = setup.sim.sim.call(
        "POST",
        "/v1/tax/settings",
        "head_office[address][country]=DE",
    );
    assert_eq!(status, 200);
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
    assert_eq!(row(&rows, "stripe tax")["status"], "pass");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_configuration_is_a_failing_row_not_a_crash() {
    let mut setup = Setup::correct().await;
    setup.set("BILLD_WEBHOOK_TOLERANCE_SECS", "-1");

    let (ok, rows) = setup.doctor().await;

    assert!(!ok);
    let config = row(&rows, "config");
    assert_eq!(config["status"], "fail");
    assert!(config["detail"]
        .as_str()
        .unwrap()
        .contains("BILLD_WEBHOOK_TOLERANCE_SECS"));
}

#[tokio::test]
async fn an_overage_without_its_meter_and_price_fails_and_the_printed_fixes_create_them() {
    let mut setup = Setup::correct().await;
    let plans = setup.dir.path().join("plans.toml");
    std::fs::write(
        &plans,
        billd_core::catalog::SEED_CATALOG_TOML.replacen(
            "generations = { kind = \"metered\" }",
            "generations = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 10, cap = 1000, unit_amount = 20 } }",
            1,
        ),
    )
    .unwrap();
    setup.set("BILLD_PLANS", plans.to_str().unwrap());

    // First the meter is missing, then (once created) the price on it.
    let mut fixes = Vec::new();
    for _ in 0..2 {
        let (ok, rows) = setup.doctor().await;
        assert!(!ok);
        assert_eq!(failing(&rows), vec!["overage generations"], "{rows:#?}");
        let fix = row(&rows, "overage generations")["fix"]
            .as_str()
            .unwrap()
            .to_string();
        setup.apply(&fix).await;
        fixes.push(fix);
    }
    assert!(fixes[0].contains("/v1/billing/meters"), "{fixes:?}");
    assert!(
        fixes[1].contains("recurring[usage_type]=metered"),
        "{fixes:?}"
    );
    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
    let detail = row(&rows, "overage generations")["detail"]
        .as_str()
        .unwrap();
    assert!(
        detail.contains("billd_generations") && detail.contains("20 eur per 10"),
        "{detail}"
    );

    // The fixes made one meter, the one the price counts on.
    let (_, meters) = setup.sim.sim.call("GET", "/v1/billing/meters", "");
    assert_eq!(meters["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_credit_pack_without_its_price_fails_and_the_printed_fix_creates_it() {
    let mut setup = Setup::correct().await;
    let plans = setup.dir.path().join("plans.toml");
    std::fs::write(
        &plans,
        format!(
            "{}\n[credit_packs.gen_100]\nfeature = \"generations\"\namount = 100\nprices = {{ eur = {{ lookup_key = \"billd_gen_100_eur\", unit_amount = 500 }} }}\n",
            billd_core::catalog::SEED_CATALOG_TOML
        ),
    )
    .unwrap();
    setup.set("BILLD_PLANS", plans.to_str().unwrap());

    let (ok, rows) = setup.doctor().await;
    assert!(!ok);
    assert_eq!(failing(&rows), vec!["credit pack gen_100 eur"], "{rows:#?}");
    let fix = row(&rows, "credit pack gen_100 eur")["fix"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(fix.contains("lookup_key=billd_gen_100_eur"), "{fix}");
    assert!(!fix.contains("recurring"), "{fix}");
    setup.apply(&fix).await;

    let (ok, rows) = setup.doctor().await;
    assert!(ok, "{rows:#?}");
    let detail = row(&rows, "credit pack gen_100 eur")["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("500 eur for 100 generations"), "{detail}");
}
