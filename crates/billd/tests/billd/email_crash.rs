//! Emails survive `kill -9` of the real binary: `billd serve` commits the
//! state changes (and their outbox rows) that stripe-sim's webhooks cause,
//! its outbox worker is stuck mid-send on an SMTP server that accepts the
//! connection and never answers, and the process is killed there. After a
//! restart with a real SMTP server (aiosmtpd) on the same port, every
//! email arrives exactly once, text and HTML.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_store::{OutboxFilter, OutboxItem, OutboxStatus, Store};
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

use crate::crash::Billd;
use crate::smtp_sink::{assert_each_key_once, dedupe_key, free_port, part, subject, SmtpSink};

const APP_KEY: &str = "app_key_email_crash_0123456789";
const USERS: [&str; 3] = ["u_ada", "u_bob", "u_cy"];
/// Short, so rows the killed process had claimed are retried soon after
/// the restart (the heartbeat keeps a live process's claims).
const OUTBOX_LEASE_SECS: &str = "3";

/// An SMTP server that accepts connections and never says a word: a send
/// to it hangs in the greeting, after the outbox row was claimed and
/// before anything was delivered.
struct BlackHole {
    port: u16,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl BlackHole {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                held.push(stream);
            }
        });
        BlackHole {
            port,
            accepted,
            task,
        }
    }

    /// Closes the listener and every held connection, freeing the port.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

fn call(sim: &SimHandle, method: &str, path: &str, form: &str) -> Value {
    let (status, body) = sim.sim.call(method, path, form);
    assert_eq!(status, 200, "{method} {path}: {body}");
    body
}

/// A billd customer with an email address, subscribed to Pro at Stripe
/// with a card that pays: billd queues at least the payment receipt.
async fn subscribe(sim: &SimHandle, client: &reqwest::Client, base: &str, user: &str, price: &str) {
    let put = client
        .put(format!("{base}/v1/customers/{user}"))
        .bearer_auth(APP_KEY)
        .json(
            &serde_json::json!({ "email": format!("{user}@example.com"), "name": "Ada Lovelace" }),
        )
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "PUT customer: {}", put.status());
    let cus = call(
        sim,
        "POST",
        "/v1/customers",
        &format!("email={user}@example.com&metadata[billd_customer_id]={user}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    call(
        sim,
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_visa"),
    );
}

async fn email_rows(store: &dyn Store) -> Vec<OutboxItem> {
    store
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "email")
        .collect()
}

fn receipt_key(user: &str) -> impl Fn(&OutboxItem) -> bool + '_ {
    move |row| {
        row.dedupe_key.starts_with("payment_succeeded")
            && row.customer_id.as_ref().is_some_and(|c| c.as_str() == user)
    }
}

async fn emails_committed_before_kill_9_are_sent_exactly_once_after_restart(
    database_url: String,
    dir: std::path::PathBuf,
) {
    let sim = stripe_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        SimConfig {
            seed: 9,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    sim.sim.record_exchanges();
    let price = call(
        &sim,
        "POST",
        "/v1/prices",
        "product_data[name]=Pro&currency=eur&unit_amount=1900&recurring[interval]=month&lookup_key=billd_pro_eur",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let port = free_port();
    let endpoint = call(
        &sim,
        "POST",
        "/v1/webhook_endpoints",
        &format!("url=http://127.0.0.1:{port}/webhooks/stripe&enabled_events[]=*"),
    );
    let hole = BlackHole::start().await;
    let smtp_port = hole.port;
    let billd = Billd {
        dir,
        database_url,
        port,
        env: vec![
            (
                "BILLD_STRIPE_WEBHOOK_SECRETS",
                endpoint["secret"].as_str().unwrap().to_owned(),
            ),
            ("BILLD_STRIPE_API_KEY", "sk_test_email_crash".to_owned()),
            ("BILLD_STRIPE_API_BASE", sim.url()),
            ("BILLD_API_KEYS", APP_KEY.to_owned()),
            (
                "BILLD_SMTP_URL",
                format!("smtp://127.0.0.1:{smtp_port}?tls=none&timeout=600"),
            ),
            (
                "BILLD_EMAIL_FROM",
                "Sitegen Billing <billing@sitegen.example>".to_owned(),
            ),
            ("BILLD_OUTBOX_LEASE_SECS", OUTBOX_LEASE_SECS.to_owned()),
            ("BILLD_SCHEDULER", "off".to_owned()),
        ],
    };
    let client = reqwest::Client::new();
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let store = billd_store::connect(&billd.database_url).await.unwrap();

    // Act 1: state changes that queue emails; the send hangs; kill -9 then.
    for user in USERS {
        subscribe(&sim, &client, &billd.base(), user, &price).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = email_rows(store.as_ref()).await;
        let receipts = USERS.iter().all(|user| rows.iter().any(receipt_key(user)));
        let in_flight = rows.iter().any(|r| r.status == OutboxStatus::Processing);
        if receipts && in_flight && hole.accepted.load(Ordering::SeqCst) > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no receipt queued for every user with a send in flight: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL: the send never completes.
    child.wait().unwrap();
    let before_restart = email_rows(store.as_ref()).await;
    hole.stop().await;

    // Act 2: a real SMTP server on the same port; restart.
    let sink = SmtpSink::start_on(smtp_port);
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = email_rows(store.as_ref()).await;
        let settled = rows.iter().all(|r| r.status == OutboxStatus::Sent);
        if settled && sink.messages().len() >= rows.len() {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "emails not all sent after the restart: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A duplicate would arrive within this.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let all = sink.messages();
    child.kill().unwrap();
    child.wait().unwrap();

    // Assert: every queued email arrived once; nothing else arrived.
    assert!(
        before_restart
            .iter()
            .all(|r| r.status != OutboxStatus::Sent),
        "nothing was sent before the kill: {before_restart:#?}"
    );
    assert!(
        before_restart
            .iter()
            .any(|r| r.status == OutboxStatus::Processing),
        "the kill landed mid-send"
    );
    assert_each_key_once(&all);
    let mut received: Vec<String> = all.iter().map(dedupe_key).collect();
    let mut queued: Vec<String> = rows.iter().map(|r| r.dedupe_key.clone()).collect();
    received.sort();
    queued.sort();
    assert_eq!(received, queued, "each queued email, once");
    for user in USERS {
        let receipt = all
            .iter()
            .find(|m| {
                dedupe_key(m).starts_with("payment_succeeded")
                    && m["rcpt_tos"] == serde_json::json!([format!("{user}@example.com")])
            })
            .unwrap_or_else(|| panic!("no receipt for {user}: {all:#?}"));
        assert_eq!(subject(receipt), "Payment received: €19.00");
        assert!(part(receipt, "text/plain").contains("€19.00"));
        assert!(part(receipt, "text/html").contains("€19.00"));
        assert!(
            receipt["headers"]["message-id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{receipt:#?}"
        );
    }
    eprintln!(
        "kill -9 with {} email rows queued ({} in flight); {} delivered once after restart",
        before_restart.len(),
        before_restart
            .iter()
            .filter(|r| r.status == OutboxStatus::Processing)
            .count(),
        all.len()
    );
    crate::assert_requests_conform(&sim.sim);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_emails_committed_before_kill_9_are_sent_exactly_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("billd.db").display());
    emails_committed_before_kill_9_are_sent_exactly_once_after_restart(
        url,
        dir.path().to_path_buf(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_emails_committed_before_kill_9_are_sent_exactly_once_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    emails_committed_before_kill_9_are_sent_exactly_once_after_restart(
        url,
        dir.path().to_path_buf(),
    )
    .await;
}
