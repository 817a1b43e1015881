//! Outbox emails through billd-email to a real SMTP server (aiosmtpd with
//! billd-email's `smtp_sink.py`), driven by stripe-sim webhooks over real
//! HTTP: one email per dedupe key, retried while SMTP is down, delivered
//! exactly once after a crash between the state change and the send.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_email::{parse_mailbox, BackendConfig, Branding, Notifier, Templates};
use billd_server::billing::{start_billing, BillingConfig};
use billd_server::http::ApiConfig;
use billd_server::http::ApiKeys;
use billd_server::jobs::AlertConfig;
use billd_server::pipeline::EmailDelivery;
use billd_server::pipeline::{OutboxConfig, OutboxWorker};
use billd_server::{Backoff, Running, SystemClock, Workers};
use billd_store::{BillingStore, OutboxFilter, OutboxStatus, SqliteStore, Store};
use billd_stripe::client::StripeClient;
use secrecy::SecretString;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

use crate::mail::{assert_each_key_once, free_port, part, subject, SmtpSink, ACCOUNT_URL};
use crate::support::{server_config, RequestCheck, APP_KEY};

fn notifier(smtp_port: u16) -> Notifier {
    let backend = format!("smtp://127.0.0.1:{smtp_port}?tls=none")
        .parse::<BackendConfig>()
        .unwrap()
        .build()
        .unwrap();
    Notifier::new(
        Templates::embedded(Branding {
            product_name: "Sitegen".to_owned(),
            account_url: ACCOUNT_URL.to_owned(),
        })
        .unwrap(),
        backend,
        parse_mailbox("Sitegen Billing <billing@sitegen.example>").unwrap(),
        Some(parse_mailbox("ops@sitegen.example").unwrap()),
    )
}

fn pending_rows() -> OutboxFilter {
    OutboxFilter {
        status: Some(OutboxStatus::Pending),
        customer_id: None,
        limit: 0,
    }
}

fn outbox_config(poll: Duration) -> OutboxConfig {
    OutboxConfig {
        max_attempts: 30,
        poll_interval: poll,
        backoff: Backoff {
            base_secs: 1,
            cap_secs: 1,
        },
        ..OutboxConfig::default()
    }
}

struct World {
    sim: SimHandle,
    running: Running,
    base: String,
    store: Arc<SqliteStore>,
    stripe: StripeClient,
    /// billd's Stripe requests, checked when the world is dropped.
    _requests: RequestCheck,
    price: String,
    _db: tempfile::TempDir,
}

/// stripe-sim, a SQLite store and billd with billing whose emails go to
/// SMTP on `smtp_port`; the outbox polls every `poll`.
async fn start_world(smtp_port: u16, poll: Duration) -> World {
    let sim = stripe_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            seed: 5,
            time_scale: 0.0005,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    let (status, price) = sim.sim.call(
        "POST",
        "/v1/prices",
        "product_data[name]=Pro&currency=eur&unit_amount=1900&recurring[interval]=month&lookup_key=billd_pro_eur",
    );
    assert_eq!(status, 200, "{price}");
    let price = price["id"].as_str().unwrap().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (status, endpoint) = sim.sim.call(
        "POST",
        "/v1/webhook_endpoints",
        &format!("url={base}/webhooks/stripe&enabled_events[]=*"),
    );
    assert_eq!(status, 200, "{endpoint}");
    let secret = endpoint["secret"].as_str().unwrap().to_owned();

    let db = tempfile::tempdir().unwrap();
    let store = SqliteStore::connect(&format!(
        "sqlite://{}",
        db.path().join("billd.db").display()
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let store = Arc::new(store);
    let requests = RequestCheck::new();
    let stripe = requests.client(sim.url(), "sk_test_n");
    let outbox = outbox_config(poll);
    let delivery = EmailDelivery::new(notifier(smtp_port), store.clone(), outbox.max_attempts);
    let config = server_config(secret);
    let billing = BillingConfig {
        catalog: Arc::new(Catalog::seed()),
        stripe: Some(stripe.clone()),
        api_keys: ApiKeys::new(vec![SecretString::from(APP_KEY)], vec![]),
        outbox,
        api: ApiConfig::default(),
        delivery: Arc::new(delivery),
        metrics: Arc::default(),
        alerts: AlertConfig::default(),
        scheduler: billd_server::jobs::SchedulerConfig::off(),
    };
    let dyn_store: Arc<dyn Store> = store.clone();
    let running = start_billing(
        listener,
        dyn_store,
        config,
        billing,
        Arc::new(SystemClock),
        Workers::Run,
    )
    .unwrap();
    World {
        sim,
        running,
        base,
        store,
        stripe,
        _requests: requests,
        price,
        _db: db,
    }
}

impl World {
    fn call(&self, method: &str, path: &str, form: &str) -> Value {
        let (status, body) = self.sim.sim.call(method, path, form);
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    /// A billd customer with a profile, subscribed at Stripe to Pro.
    async fn subscribe(&self, user: &str) -> Value {
        let put = reqwest::Client::new()
            .put(format!("{}/v1/customers/{user}", self.base))
            .bearer_auth(APP_KEY)
            .json(&serde_json::json!({ "email": format!("{user}@example.com"), "name": "Ada Lovelace" }))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.status());
        let cus = self.call(
            "POST",
            "/v1/customers",
            &format!("email={user}@example.com&metadata[billd_customer_id]={user}"),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.call(
            "POST",
            "/v1/subscriptions",
            &format!(
                "customer={cus}&items[0][price]={}&default_payment_method=pm_card_visa",
                self.price
            ),
        )
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        self.sim.shutdown().await;
    }
}

#[tokio::test]
async fn a_paid_subscription_emails_the_receipt_once_with_amount_and_invoice_link() {
    let sink = SmtpSink::start();
    let world = start_world(sink.port, Duration::from_millis(30)).await;

    let subscription = world.subscribe("u_ada").await;
    let all = sink
        .wait_for_subject("Payment received", Duration::from_secs(30))
        .await;

    assert_each_key_once(&all);
    let receipt = all
        .iter()
        .find(|m| subject(m).starts_with("Payment received"))
        .unwrap();
    assert_eq!(subject(receipt), "Payment received: €19.00");
    assert_eq!(
        receipt["rcpt_tos"],
        serde_json::json!(["u_ada@example.com"])
    );
    assert!(receipt["headers"]["to"]
        .as_str()
        .unwrap()
        .contains("Ada Lovelace"));
    let invoice = subscription["latest_invoice"].as_str().unwrap();
    let text = part(receipt, "text/plain");
    let html = part(receipt, "text/html");
    assert!(text.contains("€19.00") && text.contains(invoice), "{text}");
    assert!(html.contains("€19.00"), "{html}");
    let hosted = world.call("GET", &format!("/v1/invoices/{invoice}"), "")["hosted_invoice_url"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(text.contains(&hosted), "no invoice link {hosted} in {text}");
    world.stop().await;
}

#[tokio::test]
async fn with_smtp_down_the_email_is_retried_then_delivered_once_it_is_back() {
    let port = free_port();
    let world = start_world(port, Duration::from_millis(30)).await;

    world.subscribe("u_bob").await;
    // Nothing listens: the outbox records failed attempts and waits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failed = world
            .store
            .list_outbox(&pending_rows())
            .await
            .unwrap()
            .into_iter()
            .any(|row| row.kind == "email" && row.attempts >= 1 && row.last_error.is_some());
        if failed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed email attempt recorded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sink = SmtpSink::start_on(port);

    let all = sink
        .wait_for_subject("Payment received", Duration::from_secs(30))
        .await;

    assert_each_key_once(&all);
    assert!(all
        .iter()
        .all(|m| m["rcpt_tos"] == serde_json::json!(["u_bob@example.com"])));
    world.stop().await;
}

#[tokio::test]
async fn an_email_committed_before_a_crash_is_sent_exactly_once_by_the_next_worker() {
    let sink = SmtpSink::start();
    let port = sink.port;
    // The first process's outbox worker polls once at start and then
    // sleeps past the test: its state changes commit, its emails never go.
    let world = start_world(port, Duration::from_secs(3600)).await;
    world.subscribe("u_cy").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let pending = world.store.list_outbox(&pending_rows()).await.unwrap();
        if pending
            .iter()
            .any(|r| r.dedupe_key.starts_with("payment_succeeded"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no receipt queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = world.store.clone();
    let stripe = world.stripe.clone();
    world.stop().await;
    assert!(sink.messages().is_empty());

    // Each restart builds a fresh worker over the same database. The
    // emulator is gone, so a Stripe row (a subscription refetch) fails and
    // is retried: with the tests' 1 s backoff it could fall due again while
    // a slow first run still works, and the second worker would claim it.
    // An hour's backoff keeps the second run about the emails alone.
    let restarted = |store: Arc<SqliteStore>| {
        let profiles: Arc<dyn BillingStore> = store.clone();
        OutboxWorker::new(
            store,
            Some(stripe.clone()),
            Arc::new(EmailDelivery::new(notifier(port), profiles, 30)),
            Arc::new(SystemClock),
            OutboxConfig {
                backoff: Backoff {
                    base_secs: 3600,
                    cap_secs: 3600,
                },
                ..outbox_config(Duration::from_millis(30))
            },
        )
    };
    let first = restarted(store.clone()).run_once().await.unwrap();
    let second = restarted(store.clone()).run_once().await.unwrap();

    let all = sink
        .wait_for_subject("Payment received", Duration::from_secs(10))
        .await;
    assert!(first.sent >= 1, "{first:?}");
    assert_eq!(second.claimed, 0, "{second:?}");
    assert_each_key_once(&all);
    assert_eq!(all.len(), first.sent, "{all:#?}");
}

/// `billd_emails_total{outcome}` on `/metrics`, or `None` without that line.
async fn emails_total(base: &str, outcome: &str) -> Option<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("billd_emails_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn each_email_start_billing_delivers_is_counted_on_its_metrics_endpoint() {
    let sink = SmtpSink::start();
    // The world hands start_billing an EmailDelivery built on its own and
    // fresh metrics: nothing connects the two but start_billing itself.
    let world = start_world(sink.port, Duration::from_millis(30)).await;

    world.subscribe("u_dee").await;
    sink.wait_for_subject("Payment received", Duration::from_secs(30))
        .await;
    // Every email row done (sent rows were counted before being marked).
    let deadline = Instant::now() + Duration::from_secs(30);
    let sent_rows = loop {
        let rows: Vec<_> = world
            .store
            .list_outbox(&OutboxFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "email" || row.kind == "admin_alert")
            .collect();
        if rows.iter().all(|row| row.status == OutboxStatus::Sent) {
            break rows.len();
        }
        assert!(Instant::now() < deadline, "emails not all sent: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let delivered = sink.messages().len();
    assert!(delivered >= 1);
    assert_eq!(sent_rows, delivered);
    assert_eq!(
        emails_total(&world.base, "sent").await,
        Some(u64::try_from(delivered).unwrap())
    );
    assert_eq!(emails_total(&world.base, "dead").await, Some(0));
    world.stop().await;
}
