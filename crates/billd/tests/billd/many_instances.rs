//! Many instances on one PostgreSQL database: three `billd serve`
//! processes behind a round-robin proxy while stripe-sim delivers the
//! webhooks of thousands of Stripe events for many customers (with
//! duplicates and reorders), and two of them, picked by a seeded random
//! generator, are killed (-9) mid-run and restarted. Then every event is
//! processed, each email arrived once at a real SMTP server (once more for
//! each kill it was in flight at, or each delivery of it that outlived its
//! claim), each scheduled job ran at most once per period, and every
//! customer's entitlements equal those of a single `billd serve` that was
//! given the same events once each, in order.
//!
//! Sizes come from the environment, so that `scripts/soak.sh` runs the same
//! bigger and longer: `BILLD_MANY_CUSTOMERS` (60), `BILLD_MANY_EVENTS`
//! (1,200: the emulator delivers one webhook at a time, so the events take
//! most of the test's time; the soak script runs 200 and 5,000),
//! `BILLD_MANY_SEED` (15), `BILLD_MANY_SOAK_SECS` (0: one round; otherwise
//! rounds of fresh customers on the same database and processes until that
//! many seconds have passed, each round with its two kills and all its
//! checks).

use std::collections::{BTreeMap, HashSet};
use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use billd_store::{EventFilter, EventStatus, OutboxFilter, OutboxStatus, Store};
use futures::StreamExt as _;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

use crate::crash::Billd;
use crate::smtp_sink::{dedupe_key, free_port, SmtpSink};

const APP_KEY: &str = "app_key_many_instances_0123456789";
const INSTANCES: usize = 3;
/// Scheduler jobs run this often in the test (seconds), so a round sees
/// several periods.
const JOB_INTERVAL_SECS: i64 = 4;
const JOBS: [&str; 7] = [
    "outbox_sweep",
    "inbox_sweep",
    "idempotency_sweep",
    "renewal_reminders",
    "card_expiry",
    "grace_expiry",
    "reconcile",
];

/// Statuses of an event still to be applied.
fn waiting(status: EventStatus) -> bool {
    matches!(
        status,
        EventStatus::Pending
            | EventStatus::Processing
            | EventStatus::Failed
            | EventStatus::Unlinked
    )
}

/// A test knob from the environment, or its default.
pub(crate) fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Forwards each webhook to the next instance in turn, and to the one
/// after it when that one does not answer (it was killed): what a load
/// balancer in front of several billd does. A 5xx is passed on, and the
/// emulator retries it later, as Stripe would.
#[derive(Clone)]
struct Proxy {
    ports: Arc<Vec<u16>>,
    next: Arc<AtomicUsize>,
    client: reqwest::Client,
}

async fn forward(State(proxy): State<Proxy>, headers: HeaderMap, body: Bytes) -> StatusCode {
    for _ in 0..proxy.ports.len() * 3 {
        let port = proxy.ports[proxy.next.fetch_add(1, Ordering::Relaxed) % proxy.ports.len()];
        let mut request = proxy
            .client
            .post(format!("http://127.0.0.1:{port}/webhooks/stripe"))
            .body(body.clone());
        for name in ["stripe-signature", "content-type"] {
            if let Some(value) = headers.get(name) {
                request = request.header(name, value);
            }
        }
        if let Ok(answer) = request.send().await {
            return StatusCode::from_u16(answer.status().as_u16())
                .unwrap_or(StatusCode::BAD_GATEWAY);
        }
    }
    StatusCode::BAD_GATEWAY
}

/// A round-robin webhook proxy in front of `ports`; its port.
pub(crate) async fn start_proxy(ports: Vec<u16>) -> u16 {
    let proxy = Proxy {
        ports: Arc::new(ports),
        next: Arc::new(AtomicUsize::new(0)),
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let router = axum::Router::new()
        .route("/webhooks/stripe", axum::routing::post(forward))
        .with_state(proxy);
    tokio::spawn(async move { axum::serve(listener, router).await });
    port
}

/// A call to the emulator that must succeed.
pub(crate) fn call(sim: &SimHandle, method: &str, path: &str, form: &str) -> Value {
    let (status, body) = sim.sim.call(method, path, form);
    assert_eq!(status, 200, "{method} {path} {form}: {body}");
    body
}

/// The `id` of an emulator object.
pub(crate) fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_owned()
}

/// The `standard` and `pro` monthly EUR prices the tests' catalogs name by
/// lookup key, created at the emulator.
pub(crate) fn plan_prices(sim: &SimHandle) -> [String; 2] {
    ["standard", "pro"].map(|plan| {
        let amount = if plan == "pro" { 1900 } else { 900 };
        id(&call(
            sim,
            "POST",
            "/v1/prices",
            &format!(
                "product_data[name]={plan}&currency=eur&unit_amount={amount}\
                 &recurring[interval]=month&lookup_key=billd_{plan}_eur"
            ),
        ))
    })
}

/// A webhook endpoint for every event type, delivering to `proxy`.
pub(crate) fn webhook_endpoint(sim: &SimHandle, proxy: u16) -> Value {
    call(
        sim,
        "POST",
        "/v1/webhook_endpoints",
        &format!("url=http://127.0.0.1:{proxy}/webhooks/stripe&enabled_events[]=*"),
    )
}

/// A customer of one round: billd's id, and its subscription and item at
/// the emulator.
struct Customer {
    user: String,
    subscription: String,
    item: String,
}

/// The instances, the emulator and the mail sink of a run.
struct Cluster {
    sim: SimHandle,
    smtp: SmtpSink,
    instances: Vec<(Billd, Child)>,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    prices: [String; 2],
    started: Instant,
}

impl Cluster {
    async fn start(database_url: String, dir: &std::path::Path) -> Cluster {
        let sim = stripe_sim::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            SimConfig {
                seed: knob("BILLD_MANY_SEED", 15),
                webhooks: stripe_sim::config::WebhookKnobs {
                    duplicate_rate: 0.1,
                    reorder_window_ms: 20,
                    ..Default::default()
                },
                ..SimConfig::default()
            },
        )
        .await
        .unwrap();
        let prices = plan_prices(&sim);
        let ports: Vec<u16> = (0..INSTANCES).map(|_| free_port()).collect();
        let proxy = start_proxy(ports.clone()).await;
        let endpoint = webhook_endpoint(&sim, proxy);
        let smtp = SmtpSink::start();
        let intervals = JOBS
            .iter()
            .map(|job| format!("{job}={JOB_INTERVAL_SECS}"))
            .collect::<Vec<_>>()
            .join(",");
        let client = reqwest::Client::new();
        let mut instances = Vec::new();
        for port in ports {
            let billd = Billd {
                dir: dir.to_path_buf(),
                database_url: database_url.clone(),
                port,
                env: vec![
                    (
                        "BILLD_STRIPE_WEBHOOK_SECRETS",
                        endpoint["secret"].as_str().unwrap().to_owned(),
                    ),
                    ("BILLD_STRIPE_API_KEY", "sk_test_many".to_owned()),
                    ("BILLD_STRIPE_API_BASE", sim.url()),
                    ("BILLD_API_KEYS", APP_KEY.to_owned()),
                    ("BILLD_SMTP_URL", smtp.url()),
                    (
                        "BILLD_EMAIL_FROM",
                        "Sitegen Billing <billing@sitegen.example>".to_owned(),
                    ),
                    // A killed instance's claims come back within seconds;
                    // a live one renews its leases every second (a third of
                    // them), also while an email is being sent.
                    ("BILLD_INBOX_LEASE_SECS", "3".to_owned()),
                    ("BILLD_OUTBOX_LEASE_SECS", "3".to_owned()),
                    ("BILLD_SCHEDULER", "on".to_owned()),
                    ("BILLD_SCHEDULER_INTERVALS", intervals.clone()),
                    // The outbox's warnings name each delivery that outlived
                    // its claim: the other way an email is sent twice.
                    (
                        "RUST_LOG",
                        "error,billd_server::pipeline::outbox=warn".to_owned(),
                    ),
                ],
            };
            let mut child = billd.spawn();
            billd.wait_healthy(&client, &mut child).await;
            instances.push((billd, child));
        }
        let store = billd_store::connect(&database_url).await.unwrap();
        Cluster {
            sim,
            smtp,
            instances,
            store,
            client,
            prices,
            started: Instant::now(),
        }
    }

    /// `kill -9` of instance `i`, then the same instance started again.
    /// Returns the outbox rows claimed (by any instance) at the kill: the
    /// email the killed one was sending may have been accepted by the SMTP
    /// server with its `sent` not yet committed.
    async fn kill_and_restart(&mut self, i: usize) -> Vec<String> {
        let child = &mut self.instances[i].1;
        child.kill().unwrap();
        child.wait().unwrap();
        let in_flight = self
            .store
            .list_outbox(&OutboxFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.status == OutboxStatus::Processing)
            .map(|r| r.dedupe_key)
            .collect();
        let (billd, child) = &mut self.instances[i];
        *child = billd.spawn();
        billd.wait_healthy(&self.client, child).await;
        in_flight
    }

    /// How many times each outbox row's delivery outlived its claim (by
    /// row id), as the instances' logs say.
    fn outlived_claims(&self) -> BTreeMap<i64, usize> {
        let mut counts = BTreeMap::new();
        for (billd, _) in &self.instances {
            let log = std::fs::read_to_string(billd.log_path()).unwrap_or_default();
            for line in log.lines().filter(|l| l.contains("outlived its claim")) {
                let id = line
                    .split_once("outbox_id=")
                    .map(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|digits| digits?.parse::<i64>().ok())
                    .unwrap_or_else(|| panic!("no outbox id in {line:?}"));
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        counts
    }

    /// Creates `count` customers of round `round` (billd customer with an
    /// email, Stripe customer, subscription to Standard paid by card).
    async fn customers(&self, round: u64, count: usize) -> Vec<Customer> {
        let base = self.instances[0].0.base();
        let mut customers = Vec::with_capacity(count);
        for i in 0..count {
            let user = format!("u_r{round}_{i}");
            let put = self
                .client
                .put(format!("{base}/v1/customers/{user}"))
                .bearer_auth(APP_KEY)
                .json(&serde_json::json!({ "email": format!("{user}@example.com") }))
                .send()
                .await
                .unwrap();
            assert!(put.status().is_success(), "PUT {user}: {}", put.status());
            let stripe_customer = id(&call(
                &self.sim,
                "POST",
                "/v1/customers",
                &format!("email={user}@example.com&metadata[billd_customer_id]={user}"),
            ));
            let subscription = call(
                &self.sim,
                "POST",
                "/v1/subscriptions",
                &format!(
                    "customer={stripe_customer}&items[0][price]={}&default_payment_method=pm_card_visa",
                    self.prices[0]
                ),
            );
            customers.push(Customer {
                user,
                subscription: id(&subscription),
                item: subscription["items"]["data"][0]["id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            });
        }
        customers
    }

    /// One change at the emulator for customer `c`, by step: a plan change
    /// (Standard ↔ Pro) every fifth step, otherwise a cancellation at the
    /// period's end set or undone.
    fn change(&self, c: &Customer, step: usize) {
        let form = if step % 5 == 4 {
            let price = &self.prices[(step / 5 + 1) % 2];
            format!("items[0][id]={}&items[0][price]={price}", c.item)
        } else {
            format!("cancel_at_period_end={}", step.is_multiple_of(2))
        };
        call(
            &self.sim,
            "POST",
            &format!("/v1/subscriptions/{}", c.subscription),
            &form,
        );
    }

    fn event_count(&self) -> usize {
        self.sim.sim.events().len()
    }

    /// Rows in the inbox, all statuses, and how many wait (to be applied).
    async fn inbox(&self) -> (i64, i64) {
        // A busy machine can keep the pool waiting past its timeout: ask
        // again.
        let stats = loop {
            match self.store.inbox_stats().await {
                Ok(stats) => break stats,
                Err(e) => eprintln!("inbox stats: {e}; asking again"),
            }
        };
        let total = stats.by_status.iter().map(|(_, n)| n).sum();
        let waiting = stats
            .by_status
            .iter()
            .filter(|(status, _)| waiting(*status))
            .map(|(_, n)| n)
            .sum();
        (total, waiting)
    }

    /// Inbox rows of the emulator's events `ids`, once all are stored,
    /// nothing in the inbox waits and every outbox row is sent (or dead).
    async fn settled(
        &self,
        ids: &HashSet<String>,
        within: Duration,
    ) -> Vec<billd_store::StoredEvent> {
        let deadline = Instant::now() + within;
        loop {
            // The cheap counts first; the rows (payloads and all) only once
            // they say nothing waits.
            let (_, waiting) = self.inbox().await;
            let sending = self
                .store
                .list_outbox(&OutboxFilter::default())
                .await
                .unwrap()
                .iter()
                .filter(|r| !matches!(r.status, OutboxStatus::Sent | OutboxStatus::Dead))
                .count();
            let mut stored = 0;
            if waiting == 0 && sending == 0 {
                let rows: Vec<_> = self
                    .store
                    .list_events(&EventFilter::default())
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| ids.contains(&e.id))
                    .collect();
                if rows.len() == ids.len() {
                    return rows;
                }
                stored = rows.len();
            }
            assert!(
                Instant::now() < deadline,
                "not settled: {stored} of {} events stored, {waiting} waiting, {sending} outbox rows unsent",
                ids.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Every customer's entitlements as instance `i` answers them.
    async fn entitlements(&self, base: &str, users: &[String]) -> BTreeMap<String, Value> {
        let mut all = BTreeMap::new();
        for user in users {
            let answer = self
                .client
                .get(format!("{base}/v1/customers/{user}/entitlements"))
                .bearer_auth(APP_KEY)
                .send()
                .await
                .unwrap();
            assert!(answer.status().is_success(), "{user}: {}", answer.status());
            all.insert(user.clone(), answer.json().await.unwrap());
        }
        all
    }
}

/// A child process killed however the test ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the instances however the test ends (a failed check included).
impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.instances {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One round: `customers` new customers, changes until the emulator made
/// `events` events for them, two kills of seeded random instances while
/// the webhooks arrive; then the checks.
async fn round(
    cluster: &mut Cluster,
    round: u64,
    customers: usize,
    events: usize,
    rng: &mut rand::rngs::StdRng,
) {
    let first_event = cluster.event_count();
    let made = cluster.customers(round, customers).await;
    let mut step = 0;
    while cluster.event_count() - first_event < events {
        for c in &made {
            cluster.change(c, step);
        }
        step += 1;
    }
    let (stored_before, _) = cluster.inbox().await;
    let made_events = cluster.event_count() - first_event;

    // Two kills while the emulator delivers: at a third and at two thirds
    // of the round's events stored.
    let mut kills = Vec::new();
    let mut in_flight: Vec<String> = Vec::new();
    for third in [1, 2] {
        let target = stored_before + (made_events * third / 3) as i64;
        let deadline = Instant::now() + Duration::from_secs(300);
        while cluster.inbox().await.0 < target {
            assert!(
                Instant::now() < deadline,
                "deliveries stalled before {target}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let victim = rng.gen_range(0..INSTANCES);
        in_flight.extend(cluster.kill_and_restart(victim).await);
        kills.push(victim);
    }

    // Until the emulator makes no more events (billd's own Stripe calls
    // make some) and billd applied them all.
    let (ids, rows) = loop {
        let count = cluster.event_count();
        let ids: HashSet<String> = cluster.sim.sim.events()[first_event..]
            .iter()
            .map(id)
            .collect();
        let rows = cluster.settled(&ids, Duration::from_secs(300)).await;
        if cluster.event_count() == count {
            break (ids, rows);
        }
    };

    // Every event processed (or, for a type billd keeps but does not act
    // on, skipped), none dead.
    let bad: Vec<String> = rows
        .iter()
        .filter(|e| !matches!(e.status, EventStatus::Processed | EventStatus::Skipped))
        .map(|e| {
            format!(
                "{} {} {:?} {:?}",
                e.id, e.event_type, e.status, e.last_error
            )
        })
        .collect();
    assert!(bad.is_empty(), "events not processed: {bad:#?}");

    // Each email queued was sent, and arrived, exactly once.
    let outbox: Vec<_> = cluster
        .store
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == "email")
        .collect();
    assert!(
        outbox.iter().all(|r| r.status == OutboxStatus::Sent),
        "{outbox:#?}"
    );
    let mut queued: Vec<String> = outbox.iter().map(|r| r.dedupe_key.clone()).collect();
    let messages = cluster
        .smtp
        .wait_until(
            Duration::from_secs(30),
            Duration::from_secs(1),
            "every queued email",
            |all| all.iter().map(dedupe_key).collect::<HashSet<_>>().len() >= queued.len(),
        )
        .await;
    // An email being handed to the SMTP server when its sender was
    // killed may have been accepted without its `sent` being committed: it
    // is sent again (same Message-ID, so a receiving server can drop the
    // copy). So is one whose sender stalled past its claim's lease (a
    // starved machine: the leases here are 3 s) while another instance
    // claimed it; its sender logs that its delivery outlived the claim.
    // An email arrives once more for each such kill or stall, and no
    // other copy is allowed.
    let mut copies: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &messages {
        copies
            .entry(dedupe_key(m))
            .or_default()
            .push(m["headers"]["message-id"].to_string());
    }
    let outlived = cluster.outlived_claims();
    let doubled: Vec<&String> = copies
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .map(|(key, _)| key)
        .collect();
    for key in &doubled {
        let ids = &copies[*key];
        let at_kills = in_flight.iter().filter(|k| k == key).count();
        let row = outbox.iter().find(|r| &&r.dedupe_key == key);
        let stalls = row.and_then(|r| outlived.get(&r.id)).copied().unwrap_or(0);
        assert!(
            ids.len() <= 1 + at_kills + stalls && ids.iter().all(|m| m == &ids[0]),
            "{key} arrived {} times ({ids:?}): in flight at {at_kills} kill(s), \
             its delivery outlived its claim {stalls} time(s); its row: {row:?}",
            ids.len()
        );
    }
    let received: Vec<String> = copies.keys().cloned().collect();
    queued.sort();
    assert_eq!(received, queued, "each queued email, and nothing else");

    // Each job ran, and at most once per period.
    let elapsed = cluster.started.elapsed().as_secs() as i64;
    let jobs = cluster.store.list_jobs().await.unwrap();
    for job in JOBS {
        let row = jobs
            .iter()
            .find(|r| r.name == job)
            .unwrap_or_else(|| panic!("{job} never ran: {jobs:#?}"));
        assert!(
            row.runs >= 1 && row.runs <= elapsed / JOB_INTERVAL_SECS + 1,
            "{job} ran {} times in {elapsed} s at one run per {JOB_INTERVAL_SECS} s",
            row.runs
        );
    }

    // The same events, once each and in order, to one billd of its own.
    let users: Vec<String> = made.iter().map(|c| c.user.clone()).collect();
    let base = cluster.instances[rng.gen_range(0..INSTANCES)].0.base();
    let shared = cluster.entitlements(&base, &users).await;
    let replayed = replay(cluster, &ids, &users).await;
    let differing: Vec<&String> = users
        .iter()
        .filter(|u| shared.get(*u) != replayed.get(*u))
        .collect();
    for user in &differing {
        let c = made.iter().find(|c| &&c.user == user).unwrap();
        let at_stripe = cluster.sim.sim.object(&c.subscription).unwrap();
        eprintln!(
            "differs: {user}: at Stripe cancel_at_period_end={} price={} | shared {} {} | replay {} {}",
            at_stripe["cancel_at_period_end"],
            at_stripe["items"]["data"][0]["price"]["lookup_key"],
            shared[*user]["plan"], shared[*user]["cancel_at_period_end"],
            replayed[*user]["plan"], replayed[*user]["cancel_at_period_end"],
        );
    }
    assert!(
        differing.is_empty(),
        "{} customers differ from the replay, e.g. {:?}: {:#?} vs {:#?}",
        differing.len(),
        differing[0],
        shared.get(differing[0]),
        replayed.get(differing[0])
    );
    eprintln!(
        "many instances: round {round}: {} events ({} customers) stored and processed, kill -9 of instances {kills:?}, {} emails each arrived ({} more than once: in flight at a kill or past a claim), jobs {}, entitlements equal to a single-process replay, at {elapsed} s",
        ids.len(),
        customers,
        received.len(),
        doubled.len(),
        jobs.iter()
            .map(|j| format!("{}={}", j.name, j.runs))
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The round's events `ids` at the emulator, delivered once each in the
/// order it made them to one `billd serve` on a SQLite file of its own
/// (the same emulator for its Stripe calls, no scheduler, no email);
/// its entitlements for `users` once it has applied them.
async fn replay(
    cluster: &Cluster,
    ids: &HashSet<String>,
    users: &[String],
) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let billd = Billd {
        dir: dir.path().to_path_buf(),
        database_url: format!("sqlite://{}", dir.path().join("replay.db").display()),
        port: free_port(),
        env: vec![
            (
                "BILLD_STRIPE_WEBHOOK_SECRETS",
                crate::crash::SECRET.to_owned(),
            ),
            ("BILLD_STRIPE_API_KEY", "sk_test_many".to_owned()),
            ("BILLD_STRIPE_API_BASE", cluster.sim.url()),
            ("BILLD_API_KEYS", APP_KEY.to_owned()),
            ("BILLD_SMTP_URL", String::new()),
            ("BILLD_SCHEDULER", "off".to_owned()),
        ],
    };
    let mut child = KillOnDrop(billd.spawn());
    billd.wait_healthy(&cluster.client, &mut child.0).await;
    for user in users {
        let put = cluster
            .client
            .put(format!("{}/v1/customers/{user}", billd.base()))
            .bearer_auth(APP_KEY)
            .json(&serde_json::json!({ "email": format!("{user}@example.com") }))
            .send()
            .await
            .unwrap();
        assert!(put.status().is_success());
    }
    let events: Vec<String> = cluster
        .sim
        .sim
        .events()
        .into_iter()
        .filter(|e| ids.contains(&id(e)))
        .map(|e| e.to_string())
        .collect();
    // In order, a few at a time (as Stripe sends them).
    let url = billd.url();
    let delivered: Vec<bool> = futures::stream::iter(events.iter())
        .map(|body| crate::crash::deliver(&cluster.client, &url, body))
        .buffered(8)
        .collect()
        .await;
    assert!(
        delivered.iter().all(|ok| *ok),
        "the replay refused an event"
    );
    let store = billd_store::connect(&billd.database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        // Ties between events of one second are settled by re-fetching the
        // subscription from Stripe (an outbox row feeding an event back):
        // settled means the outbox too.
        let rows = store.list_events(&EventFilter::default()).await.unwrap();
        let outbox = store.list_outbox(&OutboxFilter::default()).await.unwrap();
        let done = rows.iter().all(|e| !waiting(e.status))
            && outbox
                .iter()
                .all(|r| matches!(r.status, OutboxStatus::Sent | OutboxStatus::Dead));
        if done && rows.len() >= events.len() {
            break;
        }
        assert!(Instant::now() < deadline, "the replay did not settle");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all = cluster.entitlements(&billd.base(), users).await;
    drop(child);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_on_postgres_with_two_kill_9s_process_every_event_once_and_match_a_single_replay(
) {
    let dir = tempfile::tempdir().unwrap();
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    let customers = knob("BILLD_MANY_CUSTOMERS", 60) as usize;
    let events = knob("BILLD_MANY_EVENTS", 1_200) as usize;
    let soak = Duration::from_secs(knob("BILLD_MANY_SOAK_SECS", 0));
    let mut rng = rand::rngs::StdRng::seed_from_u64(knob("BILLD_MANY_SEED", 15));
    let mut cluster = Cluster::start(url, dir.path()).await;

    let mut rounds = 0;
    loop {
        round(&mut cluster, rounds, customers, events, &mut rng).await;
        rounds += 1;
        if cluster.started.elapsed() >= soak {
            break;
        }
    }
    crate::assert_requests_conform(&cluster.sim.sim);
    eprintln!(
        "many instances: {rounds} round(s) in {:.0} s, every check held",
        cluster.started.elapsed().as_secs_f64()
    );
    drop(cluster);
}
