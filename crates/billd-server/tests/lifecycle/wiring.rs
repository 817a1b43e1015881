//! `start_billing`, as the binary calls it: one clock, every part wired.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_server::billing::{start_billing, BillingConfig};
use billd_server::http::ApiConfig;
use billd_server::http::ApiKeys;
use billd_server::jobs::AlertConfig;
use billd_server::pipeline::{LogDelivery, OutboxConfig};
use billd_server::{SystemClock, Workers};
use billd_store::Store;
use secrecy::SecretString;
use serde_json::Value;
use stripe_sim::SimConfig;

use crate::on_both_databases;
use crate::support::{open_store, server_config, Db, RequestCheck, APP_KEY};

async fn start_billing_serves_the_api_and_applies_webhooks(db: Db) {
    let sim = stripe_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            seed: 3,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let call = |method: &str, path: &str, form: &str| {
        let (status, body) = sim.sim.call(method, path, form);
        assert_eq!(status, 200, "{path}: {body}");
        body
    };
    let price = call(
        "POST",
        "/v1/prices",
        "product_data[name]=Pro&currency=eur&unit_amount=1900&recurring[interval]=month&lookup_key=billd_pro_eur",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let secret = call(
        "POST",
        "/v1/webhook_endpoints",
        &format!("url={base}/webhooks/stripe&enabled_events[]=*"),
    )["secret"]
        .as_str()
        .unwrap()
        .to_string();
    let (store, _dir) = open_store(db).await;
    let store: Arc<dyn Store> = store;
    let config = server_config(secret);
    let requests = RequestCheck::new();
    let billing = BillingConfig {
        catalog: Arc::new(Catalog::seed()),
        stripe: Some(requests.client(sim.url(), "sk_test_wiring")),
        api_keys: ApiKeys::new(vec![SecretString::from(APP_KEY)], vec![]),
        outbox: OutboxConfig::default(),
        api: ApiConfig::default(),
        delivery: Arc::new(LogDelivery),
        metrics: Arc::default(),
        alerts: AlertConfig::default(),
        scheduler: billd_server::jobs::SchedulerConfig::off(),
    };
    let running = start_billing(
        listener,
        store,
        config,
        billing,
        Arc::new(SystemClock),
        Workers::Run,
    )
    .unwrap();
    let http = reqwest::Client::new();
    let put = http
        .put(format!("{base}/v1/customers/u_wired"))
        .bearer_auth(APP_KEY)
        .json(&serde_json::json!({ "email": "w@example.com", "preferred_currency": "EUR" }))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status().as_u16(), 201);
    let body: Value = put.json().await.unwrap();
    assert_eq!(body["preferred_currency"], "eur");

    let cus = call(
        "POST",
        "/v1/customers",
        "email=w@example.com&metadata[billd_customer_id]=u_wired",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    call(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_visa"),
    );

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e: Value = http
            .get(format!("{base}/v1/customers/u_wired/entitlements"))
            .bearer_auth(APP_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if e["plan"] == "pro" && e["access"] == "paid" {
            break;
        }
        assert!(Instant::now() < deadline, "never pro: {e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.shutdown().await.unwrap();
    sim.shutdown().await;
}

on_both_databases!(start_billing_serves_the_api_and_applies_webhooks);
