//! Alerts and business metrics through `start_billing`: each condition
//! raises one alert per dedupe window on both channels (a real SMTP sink,
//! aiosmtpd with billd-email's `smtp_sink.py`, and a JSON receiver on
//! loopback), and `/metrics` reads back exactly what the lifecycle applied
//! even when every webhook is delivered twice.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use billd_core::Catalog;
use billd_email::{parse_mailbox, BackendConfig, Branding, Notifier, Templates};
use billd_server::billing::{start_billing, BillingConfig};
use billd_server::http::ApiConfig;
use billd_server::http::ApiKeys;
use billd_server::jobs::{AlertConfig, Alerter};
use billd_server::jobs::{ReconcileConfig, Reconciler};
use billd_server::pipeline::BillingBackend;
use billd_server::pipeline::EmailDelivery;
use billd_server::pipeline::OutboxConfig;
use billd_server::telemetry::Metrics;
use billd_server::{Clock, ManualClock, Running, Workers};
use billd_store::{BillingStore, NewEvent, Store};
use secrecy::SecretString;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle, WebhookKnobs};

use crate::mail::SmtpSink;
use crate::on_both_databases;
use crate::support::{open_store, server_config, Db, RequestCheck, APP_KEY};

const WINDOW: i64 = 3600;

/// A JSON webhook receiver on loopback keeping every body it was sent.
struct Receiver {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

async fn receiver() -> Receiver {
    async fn keep(State(bodies): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>) {
        bodies.lock().unwrap().push(body);
    }
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/billing", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/hooks/billing", post(keep))
        .with_state(bodies.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, bodies }
}

struct World {
    sim: SimHandle,
    running: Running,
    base: String,
    store: Arc<dyn BillingBackend>,
    clock: Arc<ManualClock>,
    price: String,
    smtp: SmtpSink,
    hooks: Receiver,
    /// billd's Stripe requests, checked when the world is dropped.
    requests: RequestCheck,
    _db: Option<tempfile::TempDir>,
}

/// stripe-sim, billd through `start_billing` on a manual clock started now,
/// admin alerts to an SMTP sink and to a webhook receiver, alert checks
/// every 100 ms.
async fn start(
    db: Db,
    knobs: WebhookKnobs,
    inbox_max_attempts: i32,
    tune: impl FnOnce(&mut AlertConfig),
) -> World {
    let sim = stripe_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            seed: 17,
            time_scale: 0.0005,
            webhooks: knobs,
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

    let smtp = SmtpSink::start();
    let smtp_port = smtp.port;
    let hooks = receiver().await;

    let (store, db_dir) = open_store(db).await;
    // This world has one clock, which also checks webhook signatures, and
    // stripe-sim signs them with the wall clock: so it starts now. Nothing
    // here depends on the calendar, only on durations from the start (the
    // suite also runs under faketime on other dates to keep it so).
    let clock = Arc::new(ManualClock::new(wall_clock_minute()));
    let metrics = Arc::new(Metrics::default());
    let notifier = Notifier::new(
        Templates::embedded(Branding {
            product_name: "Sitegen".to_owned(),
            account_url: "https://app.example.com/account".to_owned(),
        })
        .unwrap(),
        format!("smtp://127.0.0.1:{smtp_port}?tls=none")
            .parse::<BackendConfig>()
            .unwrap()
            .build()
            .unwrap(),
        parse_mailbox("billing@sitegen.example").unwrap(),
        Some(parse_mailbox("ops@sitegen.example").unwrap()),
    );
    let outbox = OutboxConfig {
        poll_interval: Duration::from_millis(30),
        ..OutboxConfig::default()
    };
    let requests = RequestCheck::new();
    let profiles: Arc<dyn BillingStore> = store.clone();
    let delivery = EmailDelivery::new(notifier, profiles, outbox.max_attempts);
    let mut alerts = AlertConfig {
        webhook_url: Some(hooks.url.clone()),
        dedupe_window_secs: WINDOW,
        check_interval: Duration::from_millis(100),
        ..AlertConfig::default()
    };
    tune(&mut alerts);
    let mut config = server_config(secret);
    config.worker.max_attempts = inbox_max_attempts;
    let billing = BillingConfig {
        catalog: Arc::new(Catalog::seed()),
        stripe: Some(requests.client(sim.url(), "sk_test_alerts")),
        api_keys: ApiKeys::new(vec![SecretString::from(APP_KEY)], vec![]),
        outbox,
        api: ApiConfig::default(),
        delivery: Arc::new(delivery),
        metrics,
        alerts,
        scheduler: billd_server::jobs::SchedulerConfig::off(),
    };
    let inbox: Arc<dyn Store> = store.clone();
    let running = start_billing(
        listener,
        inbox,
        config,
        billing,
        clock.clone(),
        Workers::Run,
    )
    .unwrap();
    World {
        sim,
        running,
        base,
        store,
        clock,
        price,
        smtp,
        hooks,
        requests,
        _db: db_dir,
    }
}

impl World {
    #[track_caller]
    fn stripe(&self, method: &str, path: &str, form: &str) -> Value {
        let (status, body) = self.sim.sim.call(method, path, form);
        assert_eq!(status, 200, "{method} {path} → {status}: {body:#}");
        body
    }

    /// A billd customer with an email, a Stripe customer paying with `pm`,
    /// subscribed to Pro; returns the Stripe customer id.
    async fn subscribe(&self, user: &str, pm: &str) -> String {
        let put = reqwest::Client::new()
            .put(format!("{}/v1/customers/{user}", self.base))
            .bearer_auth(APP_KEY)
            .json(&serde_json::json!({ "email": format!("{user}@example.com") }))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success(), "{}", put.status());
        let cus = self.stripe(
            "POST",
            "/v1/customers",
            &format!("email={user}@example.com&metadata[billd_customer_id]={user}"),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let pm = self.stripe(
            "POST",
            &format!("/v1/payment_methods/{pm}/attach"),
            &format!("customer={cus}"),
        )["id"]
            .as_str()
            .unwrap()
            .to_owned();
        self.stripe(
            "POST",
            "/v1/subscriptions",
            &format!(
                "customer={cus}&items[0][price]={}&default_payment_method={pm}&metadata[billd_customer_id]={user}",
                self.price
            ),
        );
        cus
    }

    /// Admin emails about `kind`.
    fn alert_emails(&self, kind: &str) -> Vec<Value> {
        self.smtp
            .messages()
            .into_iter()
            .filter(|m| {
                m["headers"]["subject"]
                    .as_str()
                    .is_some_and(|s| s.ends_with(&format!("billing alert: {kind}")))
            })
            .collect()
    }

    /// Webhook posts about `kind`.
    fn alert_posts(&self, kind: &str) -> Vec<Value> {
        self.hooks
            .bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|b| b["alert"] == kind)
            .cloned()
            .collect()
    }

    /// Waits until `n` alerts of `kind` arrived on each channel, then long
    /// enough for the monitor to have re-checked many times, and asserts
    /// that exactly `n` arrived on each.
    async fn expect_alerts(&self, kind: &str, n: usize) -> (Vec<Value>, Vec<Value>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.alert_emails(kind).len() < n || self.alert_posts(kind).len() < n {
            if Instant::now() >= deadline {
                // The outbox rows say why one did not go (a retry waits for
                // this world's manual clock, which the wait does not move).
                let outbox = self
                    .store
                    .list_outbox(&billd_store::OutboxFilter::default())
                    .await;
                panic!(
                    "expected {n} {kind} alert(s); emails {:#?}, posts {:#?}, outbox {outbox:#?}",
                    self.alert_emails(kind),
                    self.hooks.bodies.lock().unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let (emails, posts) = (self.alert_emails(kind), self.alert_posts(kind));
        assert_eq!(emails.len(), n, "{kind} emails: {emails:#?}");
        assert_eq!(posts.len(), n, "{kind} posts: {posts:#?}");
        (emails, posts)
    }

    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Polls `/metrics` until every `(series, value)` reads as given.
    async fn expect_metrics(&self, expected: &[(&str, f64)]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = self.metrics().await;
            if expected.iter().all(|(s, v)| value(&text, s) == Some(*v)) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "metrics never read {expected:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop(self) {
        self.running.shutdown().await.unwrap();
        self.sim.shutdown().await;
    }
}

/// The wall clock, to the minute.
fn wall_clock_minute() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - now % 60
}

/// The value of one series (`name{labels}`) in Prometheus text.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// An inbox event whose payload cannot be parsed: its handler fails.
fn broken_event(id: &str, now: i64) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        event_type: "invoice.paid".to_owned(),
        api_version: Some(billd_stripe::API_VERSION.to_owned()),
        created: now,
        object_id: None,
        stripe_customer: None,
        payload: "{ not json".to_owned(),
        received_at: now,
    }
}

async fn five_dead_events_raise_one_alert_per_window_on_both_channels(db: Db) {
    // Ten attempts allowed, but a payload that is not JSON is a permanent
    // failure: dead at its first attempt, so the alert comes at once.
    let w = start(db, WebhookKnobs::default(), 10, |_| {}).await;
    let now = w.clock.now();

    let events: Vec<NewEvent> = (0..5)
        .map(|i| broken_event(&format!("evt_broken_{i}"), now))
        .collect();
    w.store.insert_events(&events).await.unwrap();

    let (emails, posts) = w.expect_alerts("events_dead", 1).await;
    w.expect_metrics(&[
        (
            "billd_dead_letters{queue=\"inbox\",kind=\"invoice.paid\"}",
            5.0,
        ),
        ("billd_dead_letters{queue=\"inbox\",kind=\"all\"}", 5.0),
        ("billd_events_dead_total{reason=\"payload_invalid\"}", 5.0),
        ("billd_alerts_total{kind=\"events_dead\"}", 1.0),
    ])
    .await;
    let dead = w.store.get_event("evt_broken_0").await.unwrap().unwrap();
    assert_eq!(dead.attempts, 1);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or("")
            .starts_with("payload_invalid: "),
        "{:?}",
        dead.last_error
    );
    assert_eq!(
        emails[0]["rcpt_tos"],
        serde_json::json!(["ops@sitegen.example"])
    );
    let text = posts[0]["text"].as_str().unwrap();
    assert!(text.starts_with("[billd] events_dead: "), "{text}");
    assert!(text.contains("invoice.paid"), "{text}");

    // The next window: a new dead event alerts again, once.
    w.clock.set(now + WINDOW);
    w.store
        .insert_events(&[
            broken_event("evt_broken_5", now + WINDOW),
            broken_event("evt_broken_6", now + WINDOW),
        ])
        .await
        .unwrap();

    w.expect_alerts("events_dead", 2).await;
    w.stop().await;
}

async fn fifty_bad_signatures_raise_one_alert_and_the_next_window_alerts_again(db: Db) {
    let w = start(db, WebhookKnobs::default(), 5, |a| {
        a.signature_failures = 10;
        a.signature_window_secs = 300;
    })
    .await;
    let http = reqwest::Client::new();
    let probe = |t: i64| {
        http.post(format!("{}/webhooks/stripe", w.base))
            .header("Stripe-Signature", format!("t={t},v1={}", "0".repeat(64)))
            .body(r#"{"id":"evt_forged","object":"event","type":"invoice.paid"}"#)
            .send()
    };

    for _ in 0..50 {
        assert_eq!(probe(w.clock.now()).await.unwrap().status(), 400);
    }

    let (emails, _) = w.expect_alerts("signature_failures", 1).await;
    let body = emails[0]["parts"][0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(body.contains("failed signature verification"), "{body}");

    w.clock.set(w.clock.now() + WINDOW);
    for _ in 0..50 {
        assert_eq!(probe(w.clock.now()).await.unwrap().status(), 400);
    }

    w.expect_alerts("signature_failures", 2).await;
    w.stop().await;
}

async fn webhook_silence_alerts_once_per_window_only_while_renewals_are_due(db: Db) {
    let w = start(db, WebhookKnobs::default(), 5, |a| {
        a.webhook_silence_secs = 2 * 3600;
    })
    .await;
    let start_time = w.clock.now();
    w.subscribe("u_quiet", "pm_card_visa").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let period_end = loop {
        let record = w
            .store
            .get_customer(&billd_core::CustomerId::parse("u_quiet").unwrap())
            .await
            .unwrap();
        let end = record.and_then(|r| {
            r.state
                .subscriptions
                .values()
                .find(|s| s.snapshot.status.as_str() == "active")
                .and_then(|s| s.snapshot.current_period_end)
        });
        if let Some(end) = end {
            break end;
        }
        assert!(Instant::now() < deadline, "the subscription never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Silent for longer than the threshold, but no renewal was due.
    w.clock.set(start_time + 3 * 3600);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(w.alert_posts("webhook_silence").is_empty());

    // The period ended and Stripe said nothing.
    w.clock.set(period_end + 60);
    let (_, posts) = w.expect_alerts("webhook_silence", 1).await;
    assert!(
        posts[0]["message"]
            .as_str()
            .unwrap()
            .contains("1 subscription(s) were due to renew"),
        "{posts:#?}"
    );

    // Still silent a window later: one more.
    w.clock.set(period_end + 60 + WINDOW);
    w.expect_alerts("webhook_silence", 2).await;
    w.stop().await;
}

async fn metrics_count_what_was_applied_once_and_a_dispute_and_the_failure_rate_alert_once(db: Db) {
    let every_webhook_twice = WebhookKnobs {
        duplicate_rate: 1.0,
        ..WebhookKnobs::default()
    };
    let w = start(db, every_webhook_twice, 5, |a| {
        a.payment_failure_percent = 30;
        a.payment_min_count = 3;
    })
    .await;

    let paying = w.subscribe("u_pays", "pm_card_visa").await;
    w.subscribe("u_declined", "pm_card_chargeCustomerFail")
        .await;
    w.subscribe("u_disputes", "pm_card_createDispute").await;
    w.expect_metrics(&[("billd_payments_total{outcome=\"succeeded\"}", 2.0)])
        .await;
    let charge = w.stripe("GET", &format!("/v1/charges?customer={paying}"), "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    w.stripe(
        "POST",
        "/v1/refunds",
        &format!("charge={charge}&amount=500"),
    );

    let expected = [
        ("billd_payments_total{outcome=\"succeeded\"}", 2.0),
        ("billd_payments_total{outcome=\"failed\"}", 1.0),
        ("billd_payments_total{outcome=\"action_required\"}", 0.0),
        ("billd_disputes_total{event=\"opened\"}", 1.0),
        ("billd_disputes_total{event=\"won\"}", 0.0),
        ("billd_disputes_total{event=\"lost\"}", 0.0),
        ("billd_refunds_total{kind=\"partial\"}", 1.0),
        ("billd_refunds_total{kind=\"full\"}", 0.0),
    ];
    w.expect_metrics(&expected).await;
    let (_, posts) = w.expect_alerts("dispute_opened", 1).await;
    assert!(posts[0]["message"].as_str().unwrap().contains("opened"));
    w.expect_alerts("payment_failure_rate", 1).await;

    // Everything was delivered twice, and nothing counted twice.
    let text = w.expect_metrics(&expected).await;
    assert!(
        value(&text, "billd_webhooks_duplicate_total").unwrap() > 0.0,
        "{text}"
    );
    let ratio = value(&text, "billd_payment_failure_ratio").unwrap();
    assert!((ratio - 1.0 / 3.0).abs() < 1e-9, "{text}");
    assert!(value(&text, "billd_emails_total{outcome=\"sent\"}").unwrap() >= 2.0);
    assert!(
        value(
            &text,
            "billd_alert_webhook_deliveries_total{outcome=\"sent\"}"
        )
        .unwrap()
            >= 2.0
    );
    w.stop().await;
}

async fn refused_emails_die_and_raise_one_outbox_dead_alert_not_one_per_email(db: Db) {
    let w = start(db, WebhookKnobs::default(), 5, |_| {}).await;

    // The sink refuses every address whose local part starts with "reject".
    w.subscribe("reject_a", "pm_card_visa").await;
    w.subscribe("reject_b", "pm_card_visa").await;

    let (_, posts) = w.expect_alerts("outbox_dead", 1).await;
    assert!(
        posts[0]["message"].as_str().unwrap().contains("email"),
        "{posts:#?}"
    );
    let text = w.metrics().await;
    let dead = value(&text, "billd_dead_letters{queue=\"outbox\",kind=\"email\"}").unwrap();
    assert!(dead >= 2.0, "{text}");
    assert_eq!(
        value(&text, "billd_emails_total{outcome=\"dead\"}"),
        Some(dead),
        "{text}"
    );
    let to_admin = w
        .smtp
        .messages()
        .into_iter()
        .filter(|m| m["rcpt_tos"] == serde_json::json!(["ops@sitegen.example"]))
        .count();
    assert_eq!(to_admin, 1, "one admin message, the outbox_dead alert");
    w.stop().await;
}

async fn reconciliation_drift_alerts_once_per_window(db: Db) {
    let every_webhook_lost = WebhookKnobs {
        drop_rate: 1.0,
        ..WebhookKnobs::default()
    };
    let w = start(db, every_webhook_lost, 5, |_| {}).await;
    w.subscribe("u_unheard", "pm_card_visa").await;
    let billing: Arc<dyn BillingStore> = w.store.clone();
    let alerter = Alerter::new(
        billing,
        &AlertConfig {
            webhook_url: Some(w.hooks.url.clone()),
            dedupe_window_secs: WINDOW,
            ..AlertConfig::default()
        },
    );
    let reconciler = || {
        let store: Arc<dyn Store> = w.store.clone();
        Reconciler::new(
            store,
            w.requests.client(w.sim.url(), "sk_test_alerts"),
            Arc::new(Catalog::seed()),
            w.clock.clone(),
            None,
            ReconcileConfig {
                max_requests_per_sec: 500,
                settle_timeout: Duration::from_secs(20),
                ..ReconcileConfig::default()
            },
        )
        .with_alerter(alerter.clone())
    };

    let report = reconciler().run(false, None).await.unwrap();
    assert!(!report.drift.is_empty(), "{report:#?}");

    let (_, posts) = w.expect_alerts("reconcile_drift", 1).await;
    assert!(
        posts[0]["message"]
            .as_str()
            .unwrap()
            .contains("difference(s) between Stripe and billd"),
        "{posts:#?}"
    );
    // Healed: a second run finds nothing and says nothing; more drift in
    // the same window is folded into the alert already sent.
    let again = reconciler().run(false, None).await.unwrap();
    assert!(again.drift.is_empty(), "{again:#?}");
    let now = w.clock.now();
    assert!(!alerter.raise_drift(&[("status", 1)], now).await.unwrap());
    w.expect_alerts("reconcile_drift", 1).await;

    w.clock.set(now + WINDOW);
    assert!(alerter
        .raise_drift(&[("status", 1)], now + WINDOW)
        .await
        .unwrap());
    w.expect_alerts("reconcile_drift", 2).await;
    w.stop().await;
}

on_both_databases!(
    refused_emails_die_and_raise_one_outbox_dead_alert_not_one_per_email,
    reconciliation_drift_alerts_once_per_window,
    five_dead_events_raise_one_alert_per_window_on_both_channels,
    fifty_bad_signatures_raise_one_alert_and_the_next_window_alerts_again,
    webhook_silence_alerts_once_per_window_only_while_renewals_are_due,
    metrics_count_what_was_applied_once_and_a_dispute_and_the_failure_rate_alert_once,
);
