//! `billd reconcile [--dry-run]` as an operator runs it, against stripe-sim
//! whose webhooks never reach billd (the endpoint is unreachable).

use crate::ClearEnv;
use std::process::{Command, Output};

use billd_core::{CustomerId, StripeSubscriptionId};
use billd_store::{EventFilter, Store};
use stripe_sim::{SimConfig, SimHandle, WebhookKnobs};

async fn reconcile(dir: &std::path::Path, db: &str, api_base: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billd"));
    command
        .arg("reconcile")
        .args(args)
        .current_dir(dir)
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BILLD_DATABASE_URL", db)
        .env("BILLD_STRIPE_API_KEY", "sk_test_reconcile_cli")
        .env("BILLD_STRIPE_API_BASE", api_base);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "billd reconcile {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The drift rows of the table: (kind, customer, subscription, rest).
fn drift_rows(out: &Output) -> Vec<(String, String, String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(" sub_"))
        .filter(|l| !l.starts_with("unlinked"))
        .map(|l| {
            let mut words = l.split_whitespace();
            let kind = words.next().unwrap().to_string();
            let customer = words.next().unwrap().to_string();
            let sub = words.next().unwrap().to_string();
            (kind, customer, sub, words.collect::<Vec<_>>().join(" "))
        })
        .collect()
}

fn call(sim: &SimHandle, method: &str, path: &str, form: &str) -> serde_json::Value {
    let (status, body) = sim.sim.call(method, path, form);
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

fn subscribe(sim: &SimHandle, user: &str, price: &str) -> String {
    let cus = call(
        sim,
        "POST",
        "/v1/customers",
        &format!("email={user}@example.com&metadata[billd_customer_id]={user}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pm = call(
        sim,
        "POST",
        "/v1/payment_methods/pm_card_visa/attach",
        &format!("customer={cus}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        sim,
        "POST",
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={pm}"),
    );
    call(
        sim,
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&metadata[billd_customer_id]={user}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn cancel_flag(store: &dyn Store, user: &str, sub: &str) -> Option<bool> {
    let record = store
        .get_customer(&CustomerId::parse(user).unwrap())
        .await
        .unwrap()?;
    record
        .state
        .subscriptions
        .get(&StripeSubscriptionId::parse(sub).unwrap())
        .map(|s| s.snapshot.cancel_at_period_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_heals_what_stripe_never_delivered_and_a_dry_run_changes_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim = stripe_sim::serve(
        listener,
        SimConfig {
            seed: 5,
            webhooks: WebhookKnobs {
                max_attempts: 1,
                ..WebhookKnobs::default()
            },
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    sim.sim.record_exchanges();
    let api_base = sim.url();
    let price = call(
        &sim,
        "POST",
        "/v1/prices",
        "product_data[name]=standard&currency=eur&unit_amount=900&recurring[interval]=month&lookup_key=billd_standard_eur",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Nothing listens on the discard port: every delivery fails.
    call(
        &sim,
        "POST",
        "/v1/webhook_endpoints",
        "url=http://127.0.0.1:9/webhooks/stripe&enabled_events[]=*",
    );
    let sub_a = subscribe(&sim, "u_a", &price);
    let sub_b = subscribe(&sim, "u_b", &price);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());

    // A dry run shows both subscriptions missing and writes nothing.
    let dry = reconcile(dir.path(), &db, &api_base, &["--dry-run"]).await;
    let stdout = String::from_utf8_lossy(&dry.stdout).into_owned();
    let mut rows = drift_rows(&dry);
    rows.sort();
    let expected_subs = {
        let mut subs = vec![("u_a", &sub_a), ("u_b", &sub_b)];
        subs.sort_by_key(|(_, s)| s.to_string());
        subs
    };
    let mut shown: Vec<(String, String)> = rows
        .iter()
        .map(|(kind, customer, sub, _)| {
            assert_eq!(kind, "missing", "{stdout}");
            (customer.clone(), sub.clone())
        })
        .collect();
    shown.sort_by(|a, b| a.1.cmp(&b.1));
    let expected: Vec<(String, String)> = expected_subs
        .iter()
        .map(|(u, s)| (u.to_string(), s.to_string()))
        .collect();
    assert_eq!(shown, expected, "{stdout}");
    assert!(stdout.contains("dry run: nothing changed"), "{stdout}");
    let store = billd_store::connect(&db).await.unwrap();
    let inbox = store.list_events(&EventFilter::default()).await.unwrap();
    assert!(inbox.is_empty(), "{inbox:?}");
    assert_eq!(cancel_flag(store.as_ref(), "u_a", &sub_a).await, None);

    // The real run prints the same drift and heals it.
    let healed = reconcile(dir.path(), &db, &api_base, &[]).await;
    let healed_stdout = String::from_utf8_lossy(&healed.stdout).into_owned();
    let mut healed_rows = drift_rows(&healed);
    healed_rows.sort();
    assert_eq!(healed_rows, rows, "{healed_stdout}");
    assert!(
        healed_stdout.contains("healed: 2 heal event(s)"),
        "{healed_stdout}"
    );
    assert_eq!(
        cancel_flag(store.as_ref(), "u_a", &sub_a).await,
        Some(false)
    );
    assert_eq!(
        cancel_flag(store.as_ref(), "u_b", &sub_b).await,
        Some(false)
    );
    let inbox = store.list_events(&EventFilter::default()).await.unwrap();
    assert!(
        inbox.iter().any(|e| e.event_type == "invoice.paid"),
        "missed events were not ingested: {inbox:?}"
    );

    // A change billd never hears of: cancel at period end.
    call(
        &sim,
        "POST",
        &format!("/v1/subscriptions/{sub_a}"),
        "cancel_at_period_end=true",
    );
    let dry = reconcile(dir.path(), &db, &api_base, &["--dry-run"]).await;
    let rows = drift_rows(&dry);
    assert_eq!(rows.len(), 1, "{}", String::from_utf8_lossy(&dry.stdout));
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()),
        ("cancel_flag", "u_a", sub_a.as_str())
    );
    assert_eq!(rows[0].3, "false -> true");
    assert_eq!(
        cancel_flag(store.as_ref(), "u_a", &sub_a).await,
        Some(false)
    );

    reconcile(dir.path(), &db, &api_base, &[]).await;
    assert_eq!(cancel_flag(store.as_ref(), "u_a", &sub_a).await, Some(true));
    let audit = store
        .list_audit(&CustomerId::parse("u_a").unwrap(), 0)
        .await
        .unwrap();
    assert!(
        audit
            .iter()
            .any(|a| a.reason.starts_with("evt_billd_reconcile_") && a.field.contains(&sub_a)),
        "{audit:#?}"
    );

    let again = reconcile(dir.path(), &db, &api_base, &[]).await;
    let again_stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        again_stdout.starts_with("no drift: 2 subscription(s) checked"),
        "{again_stdout}"
    );
    crate::assert_requests_conform(&sim.sim);
    sim.shutdown().await;
}

#[test]
fn reconcile_without_a_stripe_key_says_which_variable_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());

    let out = Command::new(env!("CARGO_BIN_EXE_billd"))
        .args(["reconcile", "--dry-run"])
        .current_dir(dir.path())
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BILLD_DATABASE_URL", &db)
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("BILLD_STRIPE_API_KEY"), "{stderr}");
}
