//! Outbox emails through billd-email to a real SMTP server (aiosmtpd with
//! billd-email's `smtp_sink.py`), driven by stripe-sim webhooks over real
//! HTTP: one email per dedupe key, retried while SMTP is down, delivered
//! exactly once after a crash between the state change and the send.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::net::{TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_email::{parse_mailbox, BackendConfig, Branding, Notifier, Templates};
use billd_server::alerts::AlertConfig;
use billd_server::api::ApiConfig;
use billd_server::auth::ApiKeys;
use billd_server::billing::{start_billing, BillingConfig};
use billd_server::notify::EmailDelivery;
use billd_server::outbox::{OutboxConfig, OutboxWorker};
use billd_server::{
    Backoff, IngestConfig, Running, ServerConfig, SystemClock, WebhookConfig, WorkerConfig, Workers,
};
use billd_store::{BillingStore, OutboxFilter, OutboxStatus, SqliteStore, Store};
use billd_stripe::client::{ClientConfig, StripeClient};
use secrecy::SecretString;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

const APP_KEY: &str = "app_key_notify";
const ACCOUNT_URL: &str = "https://app.example.com/account/billing";

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// aiosmtpd writing what it receives (as JSON) into a directory.
struct SmtpSink {
    child: Child,
}

impl SmtpSink {
    fn start_on(port: u16, dir: &Path) -> Self {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../billd-email/tests");
        let mut child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "smtp_sink.Sink"])
            .arg(dir)
            .env("PYTHONPATH", &scripts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (`python3 -m pip install aiosmtpd`; scripts/test.sh does): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aiosmtpd exited with {status} (is it installed? `python3 -m pip install aiosmtpd`)");
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { child }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every message received in `dir`.
fn messages(dir: &Path) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "json")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn dedupe_key(message: &Value) -> String {
    message["headers"]["x-billd-dedupe-key"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn subject(message: &Value) -> String {
    message["headers"]["subject"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn part(message: &Value, content_type: &str) -> String {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == content_type)
        .map(|p| p["content"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Waits until a message with a subject starting with `prefix` arrived,
/// then a little longer so a duplicate would arrive too.
async fn wait_for_subject(dir: &Path, prefix: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    while !messages(dir).iter().any(|m| subject(m).starts_with(prefix)) {
        assert!(
            Instant::now() < deadline,
            "no email {prefix:?}; got {:?}",
            messages(dir).iter().map(subject).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    messages(dir)
}

/// Fails if a dedupe key arrived twice.
fn assert_each_key_once(all: &[Value]) {
    let mut keys: Vec<String> = all.iter().map(dedupe_key).collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "duplicate emails: {all:#?}");
}

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
    let stripe = StripeClient::new(ClientConfig::new(
        sim.url(),
        SecretString::from("sk_test_n"),
    ))
    .unwrap();
    let outbox = outbox_config(poll);
    let delivery = EmailDelivery::new(notifier(smtp_port), store.clone(), outbox.max_attempts);
    let config = ServerConfig {
        webhook: WebhookConfig {
            secrets: vec![SecretString::from(secret)],
            tolerance_secs: 300,
        },
        ingest: IngestConfig::default(),
        worker: WorkerConfig {
            poll_interval: Duration::from_millis(30),
            backoff: Backoff {
                base_secs: 1,
                cap_secs: 1,
            },
            ..WorkerConfig::default()
        },
        ready_max_lag_secs: 600,
    };
    let billing = BillingConfig {
        catalog: Arc::new(Catalog::seed()),
        stripe: Some(stripe.clone()),
        api_keys: ApiKeys::new(vec![SecretString::from(APP_KEY)], vec![]),
        outbox,
        api: ApiConfig::default(),
        delivery: Arc::new(delivery),
        metrics: Arc::default(),
        alerts: AlertConfig::default(),
        scheduler: billd_server::scheduler::SchedulerConfig::off(),
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
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sink = SmtpSink::start_on(port, dir.path());
    let world = start_world(port, Duration::from_millis(30)).await;

    let subscription = world.subscribe("u_ada").await;
    let all = wait_for_subject(dir.path(), "Payment received", Duration::from_secs(30)).await;

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
    let dir = tempfile::tempdir().unwrap();
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
    let _sink = SmtpSink::start_on(port, dir.path());

    let all = wait_for_subject(dir.path(), "Payment received", Duration::from_secs(30)).await;

    assert_each_key_once(&all);
    assert!(all
        .iter()
        .all(|m| m["rcpt_tos"] == serde_json::json!(["u_bob@example.com"])));
    world.stop().await;
}

#[tokio::test]
async fn an_email_committed_before_a_crash_is_sent_exactly_once_by_the_next_worker() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _sink = SmtpSink::start_on(port, dir.path());
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
    assert!(messages(dir.path()).is_empty());

    // Each restart builds a fresh worker over the same database.
    let restarted = |store: Arc<SqliteStore>| {
        let profiles: Arc<dyn BillingStore> = store.clone();
        OutboxWorker::new(
            store,
            Some(stripe.clone()),
            Arc::new(EmailDelivery::new(notifier(port), profiles, 30)),
            Arc::new(SystemClock),
            outbox_config(Duration::from_millis(30)),
        )
    };
    let first = restarted(store.clone()).run_once().await.unwrap();
    let second = restarted(store.clone()).run_once().await.unwrap();

    let all = wait_for_subject(dir.path(), "Payment received", Duration::from_secs(10)).await;
    assert!(first.sent >= 1, "{first:?}");
    assert_eq!(second.claimed, 0, "{second:?}");
    assert_each_key_once(&all);
    assert_eq!(all.len(), first.sent, "{all:#?}");
}
