//! Crash safety of the real binary: `billd serve` is `kill -9`ed while
//! concurrent clients deliver signed events; after a restart every event
//! that got a 2xx is in the inbox and is processed exactly once.

use crate::ClearEnv;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use billd_store::{EventFilter, EventStatus};
use billd_stripe::webhook::sign;
use serde_json::Value;

pub const SECRET: &str = "whsec_crash_test";
const EVENTS: usize = 2400;
const CLIENTS: usize = 32;
const KILL_AFTER_ACKS: usize = 700;
const WORKER_CONCURRENCY: usize = 16;
const CUSTOMERS: usize = 50;

pub fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `invoice.created` events wrapping Stripe's example invoice, spread over 50
/// customers so the worker has parallel work. billd stores that type and
/// skips it, so every event ends `skipped` without needing a linked customer.
fn events() -> Vec<(String, String)> {
    let created = now();
    (0..EVENTS)
        .map(|i| {
            let id = format!("evt_crash_{i:05}");
            let body = invoice_created(
                &id,
                &format!("in_crash_{i:05}"),
                &format!("cus_crash_{}", i % CUSTOMERS),
                created,
            );
            (id, body)
        })
        .collect()
}

/// An `invoice.created` event `id` wrapping Stripe's example invoice as
/// `invoice` of `customer`: billd stores that type and skips it.
pub fn invoice_created(id: &str, invoice_id: &str, customer: &str, created: i64) -> String {
    let fixtures: Value = serde_json::from_str(include_str!(
        "../../../billd-server/tests/server/fixtures/stripe_objects.json"
    ))
    .unwrap();
    let mut invoice = fixtures["invoice"].clone();
    invoice["id"] = Value::from(invoice_id);
    invoice["customer"] = Value::from(customer);
    serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": billd_stripe::API_VERSION,
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": "invoice.created",
        "data": { "object": invoice }
    })
    .to_string()
}

/// `billd serve` as a child process: on `port`, over `database_url`, run
/// in `dir`, with nothing from the test's environment but `PATH` and `env`.
pub struct Billd {
    pub dir: std::path::PathBuf,
    pub database_url: String,
    pub port: u16,
    /// More `BILLD_*` variables.
    pub env: Vec<(&'static str, String)>,
}

impl Billd {
    pub fn spawn(&self) -> Child {
        self.command().spawn().unwrap()
    }

    /// The `billd serve` command [`Billd::spawn`] runs: its output is
    /// discarded, its log (`RUST_LOG`: `error` unless `env` sets it) is
    /// appended to [`Billd::log_path`].
    pub fn command(&self) -> Command {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_billd"));
        command
            .arg("serve")
            .current_dir(&self.dir)
            .clear_env()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("BILLD_DATABASE_URL", &self.database_url)
            .env("BILLD_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("RUST_LOG", "error")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log);
        command
    }

    /// The server's log: `billd-PORT.log` in `dir` (a restart on the same
    /// port appends to it).
    pub fn log_path(&self) -> std::path::PathBuf {
        self.dir.join(format!("billd-{}.log", self.port))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The webhook endpoint.
    pub fn url(&self) -> String {
        format!("{}/webhooks/stripe", self.base())
    }

    pub async fn wait_healthy(&self, client: &reqwest::Client, child: &mut Child) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                child.try_wait().unwrap().is_none(),
                "billd exited during start-up"
            );
            let health = client.get(format!("{}/healthz", self.base())).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "billd did not become healthy");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Posts `body` signed with [`SECRET`]; true when billd acknowledged it.
pub async fn deliver(client: &reqwest::Client, url: &str, body: &str) -> bool {
    let header = sign(SECRET, now(), body.as_bytes());
    let response = client
        .post(url)
        .header("Stripe-Signature", header)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(30))
        .send()
        .await;
    response.is_ok_and(|r| r.status().is_success())
}

async fn every_acknowledged_event_survives_kill_9_and_is_processed_once(
    database_url: String,
    dir: std::path::PathBuf,
) {
    let billd = Billd {
        dir,
        database_url,
        port: free_port(),
        env: vec![
            ("BILLD_STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()),
            ("BILLD_INBOX_LEASE_SECS", "3".to_owned()),
            ("BILLD_WORKER_CONCURRENCY", WORKER_CONCURRENCY.to_string()),
        ],
    };
    let client = reqwest::Client::new();
    let events = Arc::new(events());
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;

    // Act 1: concurrent deliveries, with kill -9 once enough were acked.
    let next = Arc::new(AtomicUsize::new(0));
    let acked: Arc<Mutex<Vec<usize>>> = Arc::new(Mutex::new(Vec::new()));
    let ack_count = Arc::new(AtomicUsize::new(0));
    let url = billd.url();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (client, events, next, acked, ack_count, url) = (
                client.clone(),
                events.clone(),
                next.clone(),
                acked.clone(),
                ack_count.clone(),
                url.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some((_, body)) = events.get(i) else {
                        break;
                    };
                    if deliver(&client, &url, body).await {
                        acked.lock().unwrap().push(i);
                        ack_count.fetch_add(1, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    while ack_count.load(Ordering::SeqCst) < KILL_AFTER_ACKS {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().unwrap(); // SIGKILL: no graceful shutdown, no flush.
    child.wait().unwrap();
    let killed_after = ack_count.load(Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    let acked_before_kill: Vec<usize> = acked.lock().unwrap().clone();
    let sent = next.load(Ordering::SeqCst).min(EVENTS);
    assert!(
        acked_before_kill.len() < EVENTS,
        "the kill landed after every event was acked ({killed_after} acked at kill); the test proves nothing"
    );

    // Act 2: restart; redeliver what was not acknowledged, as Stripe would.
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let store = billd_store::connect(&billd.database_url).await.unwrap();
    for (i, (id, _)) in events.iter().enumerate() {
        if acked_before_kill.contains(&i) {
            assert!(
                store.get_event(id).await.unwrap().is_some(),
                "{id} was acknowledged before kill -9 but is not in the inbox"
            );
        }
    }
    let missing: Vec<usize> = (0..EVENTS)
        .filter(|i| !acked_before_kill.contains(i))
        .collect();
    for chunk in missing.chunks(CLIENTS) {
        let results = futures_all(chunk.iter().map(|&i| {
            let (client, url, body) = (client.clone(), url.clone(), events[i].1.clone());
            tokio::spawn(async move { deliver(&client, &url, &body).await })
        }))
        .await;
        assert!(
            results.iter().all(|ok| *ok),
            "redelivery after restart failed"
        );
    }

    // Assert: everything is in the inbox and is processed exactly once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let rows = loop {
        let rows = store
            .list_events(&EventFilter {
                limit: 100_000,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        let done = rows.len() == EVENTS && rows.iter().all(|e| e.status == EventStatus::Skipped);
        if done {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "inbox did not settle: {} rows, {} not skipped",
            rows.len(),
            rows.iter()
                .filter(|e| e.status != EventStatus::Skipped)
                .count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        sent > acked_before_kill.len(),
        "some deliveries failed at the kill"
    );
    assert!(acked_before_kill.len() >= KILL_AFTER_ACKS);
    // Only events that were under a lease at the moment of the kill (the
    // batches of at most WORKER_CONCURRENCY customers, each at most all of
    // that customer's events) may have needed a second attempt; none was
    // processed twice.
    let retried: Vec<&str> = rows
        .iter()
        .filter(|e| e.attempts != 1)
        .map(|e| e.id.as_str())
        .collect();
    assert!(rows.iter().all(|e| (1..=2).contains(&e.attempts)));
    assert!(
        retried.len() <= WORKER_CONCURRENCY * EVENTS / CUSTOMERS,
        "{} events were attempted more than once: {retried:?}",
        retried.len()
    );
    assert!(rows.iter().all(|e| e.processed_at.is_some()));
    eprintln!(
        "kill -9 after {killed_after} acks; {} acked before the kill, {} redelivered, {} needed a second attempt",
        acked_before_kill.len(),
        missing.len(),
        retried.len()
    );
}

async fn futures_all<I>(handles: I) -> Vec<bool>
where
    I: Iterator<Item = tokio::task::JoinHandle<bool>>,
{
    let handles: Vec<_> = handles.collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_acknowledged_event_survives_kill_9_and_is_processed_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("billd.db").display());
    every_acknowledged_event_survives_kill_9_and_is_processed_once(url, dir.path().to_path_buf())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_acknowledged_event_survives_kill_9_and_is_processed_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    every_acknowledged_event_survives_kill_9_and_is_processed_once(url, dir.path().to_path_buf())
        .await;
}
