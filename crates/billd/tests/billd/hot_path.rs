//! The hot path as a property: generated sequences of consumes (each with
//! a fresh idempotency key), replays of earlier keys, plan changes (made at
//! the Stripe emulator and applied from its webhooks), account deletions,
//! entitlement reads and CLI writers, sent to real `billd serve` processes,
//! every answer checked against a pure model of the customers.
//!
//! On PostgreSQL two `billd serve` processes share the database and every
//! request goes to one picked by the generator, so a read or a replay at
//! one process follows a consume, a plan change or a deletion answered by
//! the other. On SQLite a second `billd serve` cannot exist (the serving
//! lock, tested in `recovery.rs`; the memory answers rely on every write
//! going through the one process): both "processes" are the one server,
//! and the CLI writer the generator starts beside it must refuse.
//!
//! The model is what the documentation promises: a consume answers 200
//! while the plan's limit allows it and 402 past it; a key that got a 200
//! answers that 200 again (`replayed`), whatever happened since, until the
//! account is deleted; after a deletion everything answers 404
//! `customer_deleted`; a read shows the plan and the counter of every 200
//! before it. A memory answer left stale by any write fails the property.
//!
//! Fixed seed and case count (`BILLD_HOT_PATH_SEED`, 17;
//! `BILLD_HOT_PATH_CASES`, 8), so a run is repeatable; no failure file.

use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_store::{EventFilter, EventStatus, OutboxFilter, OutboxStatus, Store};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use reqwest::Method;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

use crate::crash::{free_port, Billd};
use crate::many_instances::{call, id, knob, plan_prices, start_proxy, webhook_endpoint};

const APP_KEY: &str = "app_key_hot_path_0123456789abcdef";
/// Customers of one case.
const CUSTOMERS: usize = 3;
/// The capacity feature every consume counts.
const FEATURE: &str = "slots";
/// Its limit per plan (the plans file below).
const LIMITS: [(&str, u64); 3] = [("free", 2), ("standard", 4), ("pro", 7)];
const PLANS: &str = r#"
currency = "eur"
downgrade = "immediate"

[features]
slots = { kind = "capacity" }

[plans.free]
limits = { slots = 2 }

[plans.standard]
limits = { slots = 4 }
prices = { eur = { lookup_key = "billd_standard_eur", unit_amount = 900 } }

[plans.pro]
limits = { slots = 7 }
prices = { eur = { lookup_key = "billd_pro_eur", unit_amount = 1900 } }
"#;

fn limit_of(plan: &str) -> u64 {
    LIMITS.iter().find(|(p, _)| *p == plan).unwrap().1
}

/// One step of a case. `to` picks the process (modulo how many serve).
#[derive(Debug, Clone)]
enum Op {
    /// Consume `amount` with a fresh key.
    Consume {
        customer: usize,
        amount: u64,
        to: usize,
    },
    /// The `pick`-th (modulo) consume answered 200 so far, sent again with
    /// its key and amount (a fresh consume when none was).
    Replay { pick: usize, to: usize },
    /// Subscribe to, or switch the subscription to, `pro` or `standard`
    /// at the emulator; waits until billd applied its webhooks.
    Plan { customer: usize, pro: bool },
    /// `DELETE /v1/customers/{id}` (a read once deleted).
    Delete { customer: usize, to: usize },
    /// `GET /v1/customers/{id}/entitlements`.
    Read { customer: usize, to: usize },
    /// `billd migrate` beside the server(s): refused on SQLite, runs on
    /// PostgreSQL.
    CliWrite,
}

fn op() -> impl Strategy<Value = Op> {
    let customer = 0..CUSTOMERS;
    let to = 0..2_usize;
    prop_oneof![
        6 => (customer.clone(), 1..=3_u64, to.clone())
            .prop_map(|(customer, amount, to)| Op::Consume { customer, amount, to }),
        3 => (any::<usize>(), to.clone()).prop_map(|(pick, to)| Op::Replay { pick, to }),
        2 => (customer.clone(), any::<bool>()).prop_map(|(customer, pro)| Op::Plan { customer, pro }),
        1 => (customer.clone(), to.clone()).prop_map(|(customer, to)| Op::Delete { customer, to }),
        5 => (customer, to).prop_map(|(customer, to)| Op::Read { customer, to }),
        1 => Just(Op::CliWrite),
    ]
}

/// The model of one customer.
#[derive(Debug, Clone)]
struct Model {
    id: String,
    plan: &'static str,
    used: u64,
    deleted: bool,
    /// Its subscription and item at the emulator, once subscribed.
    stripe: Option<(String, String)>,
}

/// A consume answered 200: where to send it again and what it answered.
#[derive(Debug, Clone)]
struct Answered {
    customer: usize,
    amount: u64,
    key: String,
    used: u64,
    limit: u64,
}

/// The serving processes, the emulator and a store handle of one test.
struct Setup {
    sim: SimHandle,
    servers: Vec<(Billd, Child)>,
    store: Arc<dyn Store>,
    client: reqwest::Client,
    prices: [String; 2],
    /// The emulator's events before the webhook endpoint existed (never
    /// delivered).
    undelivered: usize,
    sqlite: bool,
    /// How many answers of each kind were checked, by [`Seen`] index.
    seen: [AtomicUsize; 7],
}

/// The kinds of answers checked, so a run that never reached one fails.
#[derive(Debug, Clone, Copy)]
enum Seen {
    Counted,
    Refused,
    Replayed,
    PlanChanged,
    Deleted,
    Gone,
    Read,
}

const SEEN: [Seen; 7] = [
    Seen::Counted,
    Seen::Refused,
    Seen::Replayed,
    Seen::PlanChanged,
    Seen::Deleted,
    Seen::Gone,
    Seen::Read,
];

impl Drop for Setup {
    fn drop(&mut self) {
        for (_, child) in &mut self.servers {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Setup {
    async fn start(database_url: String, dir: &std::path::Path, servers: usize) -> Setup {
        let sim = stripe_sim::serve(
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
            SimConfig::default(),
        )
        .await
        .unwrap();
        let prices = plan_prices(&sim);
        let ports: Vec<u16> = (0..servers).map(|_| free_port()).collect();
        let proxy = start_proxy(ports.clone()).await;
        let endpoint = webhook_endpoint(&sim, proxy);
        let undelivered = sim.sim.events().len();
        let plans = dir.join("hot-path-plans.toml");
        std::fs::write(&plans, PLANS).unwrap();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut started = Vec::new();
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
                    ("BILLD_STRIPE_API_KEY", "sk_test_hot_path".to_owned()),
                    ("BILLD_STRIPE_API_BASE", sim.url()),
                    ("BILLD_API_KEYS", APP_KEY.to_owned()),
                    ("BILLD_SMTP_URL", String::new()),
                    ("BILLD_SCHEDULER", "off".to_owned()),
                    ("BILLD_PLANS", plans.display().to_string()),
                ],
            };
            let mut child = billd.spawn();
            billd.wait_healthy(&client, &mut child).await;
            started.push((billd, child));
        }
        let store = billd_store::connect(&database_url).await.unwrap();
        Setup {
            sqlite: database_url.starts_with("sqlite:"),
            sim,
            servers: started,
            store,
            client,
            prices,
            undelivered,
            seen: Default::default(),
        }
    }

    fn saw(&self, kind: Seen) {
        self.seen[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn base(&self, to: usize) -> String {
        self.servers[to % self.servers.len()].0.base()
    }

    async fn send(&self, method: Method, url: String, body: Option<Value>) -> (u16, Value) {
        let mut request = self.client.request(method, url).bearer_auth(APP_KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer = request.send().await.unwrap();
        let status = answer.status().as_u16();
        let text = answer.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Until every event the emulator made is stored and applied and every
    /// outbox row is done (billd's own Stripe calls make more events:
    /// until there are no more).
    async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let made: Vec<String> = self.sim.sim.events()[self.undelivered..]
                .iter()
                .map(id)
                .collect();
            let events = self
                .store
                .list_events(&EventFilter::default())
                .await
                .unwrap();
            let applied = made.iter().all(|e| {
                events.iter().any(|s| {
                    &s.id == e && matches!(s.status, EventStatus::Processed | EventStatus::Skipped)
                })
            });
            let sending = self
                .store
                .list_outbox(&OutboxFilter::default())
                .await
                .unwrap()
                .iter()
                .any(|r| !matches!(r.status, OutboxStatus::Sent | OutboxStatus::Dead));
            if applied && !sending && self.sim.sim.events().len() == self.undelivered + made.len() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the webhooks were not applied: {} events made, {} stored",
                made.len(),
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

fn check(what: &str, ok: bool, answer: &Value) -> Result<(), TestCaseError> {
    if ok {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!("{what}: got {answer}")))
    }
}

fn deleted(status: u16, answer: &Value) -> bool {
    status == 404 && answer["error"]["code"] == "customer_deleted"
}

/// Runs one case's operations on fresh customers, checking each answer.
async fn run_case(setup: &Setup, case: usize, ops: &[Op]) -> Result<(), TestCaseError> {
    let mut models = Vec::new();
    for i in 0..CUSTOMERS {
        let customer = format!("hp_{case}_{i}");
        let (status, body) = setup
            .send(
                Method::PUT,
                format!("{}/v1/customers/{customer}", setup.base(i)),
                Some(serde_json::json!({ "email": format!("{customer}@example.com") })),
            )
            .await;
        assert!((200..300).contains(&status), "PUT {customer}: {body}");
        models.push(Model {
            id: customer,
            plan: "free",
            used: 0,
            deleted: false,
            stripe: None,
        });
    }
    let mut answered: Vec<Answered> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let at = format!("step {step} {op:?}");
        let op = match op {
            Op::Replay { to, .. } if answered.is_empty() => Op::Consume {
                customer: 0,
                amount: 1,
                to: *to,
            },
            Op::Delete { customer, to } if models[*customer].deleted => Op::Read {
                customer: *customer,
                to: *to,
            },
            Op::Plan { customer, .. } if models[*customer].deleted => Op::Read {
                customer: *customer,
                to: 0,
            },
            other => other.clone(),
        };
        match op {
            Op::Consume {
                customer,
                amount,
                to,
            } => {
                let key = format!("k{step}");
                let (status, answer) = consume(setup, &models[customer].id, amount, &key, to).await;
                let m = &mut models[customer];
                let limit = limit_of(m.plan);
                if m.deleted {
                    check(&at, deleted(status, &answer), &answer)?;
                    setup.saw(Seen::Gone);
                } else if m.used + amount <= limit {
                    m.used += amount;
                    check(
                        &format!("{at}: 200 with used {} of {limit}", m.used),
                        status == 200
                            && answer["used"] == m.used
                            && answer["limit"] == limit
                            && answer["remaining"] == limit - m.used
                            && answer["replayed"] == false,
                        &answer,
                    )?;
                    setup.saw(Seen::Counted);
                    answered.push(Answered {
                        customer,
                        amount,
                        key,
                        used: m.used,
                        limit,
                    });
                } else {
                    let e = &answer["error"];
                    check(
                        &format!("{at}: 402 at used {} of {limit}", m.used),
                        status == 402
                            && e["code"] == "quota_exceeded"
                            && e["used"] == m.used
                            && e["limit"] == limit,
                        &answer,
                    )?;
                    setup.saw(Seen::Refused);
                }
            }
            Op::Replay { pick, to } => {
                let first = answered[pick % answered.len()].clone();
                let (status, answer) = consume(
                    setup,
                    &models[first.customer].id,
                    first.amount,
                    &first.key,
                    to,
                )
                .await;
                if models[first.customer].deleted {
                    check(&at, deleted(status, &answer), &answer)?;
                    setup.saw(Seen::Gone);
                } else {
                    check(
                        &format!("{at}: the first answer {first:?} again"),
                        status == 200
                            && answer["used"] == first.used
                            && answer["limit"] == first.limit
                            && answer["remaining"] == first.limit - first.used
                            && answer["replayed"] == true,
                        &answer,
                    )?;
                    setup.saw(Seen::Replayed);
                }
            }
            Op::Plan { customer, pro } => {
                let price = &setup.prices[usize::from(pro)];
                let m = &mut models[customer];
                match &m.stripe {
                    None => {
                        let stripe_customer = id(&call(
                            &setup.sim,
                            "POST",
                            "/v1/customers",
                            &format!(
                                "email={0}@example.com&metadata[billd_customer_id]={0}",
                                m.id
                            ),
                        ));
                        let subscription = call(
                            &setup.sim,
                            "POST",
                            "/v1/subscriptions",
                            &format!(
                                "customer={stripe_customer}&items[0][price]={price}\
                                 &default_payment_method=pm_card_visa"
                            ),
                        );
                        m.stripe = Some((
                            id(&subscription),
                            subscription["items"]["data"][0]["id"]
                                .as_str()
                                .unwrap()
                                .to_owned(),
                        ));
                    }
                    Some((subscription, item)) => {
                        call(
                            &setup.sim,
                            "POST",
                            &format!("/v1/subscriptions/{subscription}"),
                            &format!("items[0][id]={item}&items[0][price]={price}"),
                        );
                    }
                }
                m.plan = if pro { "pro" } else { "standard" };
                setup.settle().await;
                setup.saw(Seen::PlanChanged);
            }
            Op::Delete { customer, to } => {
                let (status, answer) = setup
                    .send(
                        Method::DELETE,
                        format!("{}/v1/customers/{}", setup.base(to), models[customer].id),
                        None,
                    )
                    .await;
                check(&at, status == 200, &answer)?;
                models[customer].deleted = true;
                setup.saw(Seen::Deleted);
            }
            Op::Read { customer, to } => {
                let m = &models[customer];
                let (status, answer) = setup
                    .send(
                        Method::GET,
                        format!("{}/v1/customers/{}/entitlements", setup.base(to), m.id),
                        None,
                    )
                    .await;
                if m.deleted {
                    check(&at, deleted(status, &answer), &answer)?;
                    setup.saw(Seen::Gone);
                } else {
                    let limit = limit_of(m.plan);
                    let f = &answer["features"][FEATURE];
                    check(
                        &format!("{at}: {} with used {} of {limit}", m.plan, m.used),
                        status == 200
                            && answer["plan"] == m.plan
                            && f["used"] == m.used
                            && f["limit"] == limit
                            && f["remaining"] == limit.saturating_sub(m.used),
                        &answer,
                    )?;
                    setup.saw(Seen::Read);
                }
            }
            Op::CliWrite => {
                let output = cli_migrate(&setup.servers[0].0).await;
                let stderr = String::from_utf8_lossy(&output.stderr);
                let holder = format!("pid {} on ", setup.servers[0].1.id());
                let ok = if setup.sqlite {
                    !output.status.success() && stderr.contains(&holder)
                } else {
                    output.status.success()
                };
                check(&at, ok, &Value::String(stderr.into_owned()))?;
            }
        }
    }
    Ok(())
}

async fn consume(setup: &Setup, customer: &str, amount: u64, key: &str, to: usize) -> (u16, Value) {
    setup
        .send(
            Method::POST,
            format!("{}/v1/customers/{customer}/usage/{FEATURE}", setup.base(to)),
            Some(serde_json::json!({ "amount": amount, "idempotency_key": key })),
        )
        .await
}

/// `billd migrate` with the first server's database and configuration.
async fn cli_migrate(billd: &Billd) -> std::process::Output {
    let command = billd.command();
    let mut cli = std::process::Command::new(command.get_program());
    cli.arg("migrate")
        .current_dir(&billd.dir)
        .env_clear()
        .envs(
            command
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || cli.output().unwrap())
        .await
        .unwrap()
}

/// Runs the property on `servers` processes serving `database_url`.
async fn property(database_url: String, servers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let setup = Arc::new(Setup::start(database_url, dir.path(), servers).await);
    let seed = knob("BILLD_HOT_PATH_SEED", 17);
    let mut seed_bytes = [0_u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: u32::try_from(knob("BILLD_HOT_PATH_CASES", 8)).unwrap(),
            failure_persistence: None,
            // Every shrink step replays a case over HTTP and webhooks.
            max_shrink_iters: 48,
            max_shrink_time: 120_000,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let runtime = tokio::runtime::Handle::current();
    let shared = setup.clone();
    let result = tokio::task::spawn_blocking(move || {
        let case = AtomicUsize::new(0);
        runner
            .run(&proptest::collection::vec(op(), 4..28), |ops| {
                let case = case.fetch_add(1, Ordering::Relaxed);
                runtime.block_on(run_case(&shared, case, &ops))
            })
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
    let seen: Vec<(Seen, usize)> = SEEN
        .iter()
        .map(|kind| (*kind, setup.seen[*kind as usize].load(Ordering::Relaxed)))
        .collect();
    eprintln!("hot path, seed {seed}: answers checked {seen:?}");
    assert!(
        seen.iter().all(|(_, n)| *n > 0),
        "a kind of answer was never reached: {seen:?}"
    );
    crate::assert_requests_conform(&setup.sim.sim);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_serving_processes_answer_consumes_replays_plan_changes_deletions_and_reads_as_the_model(
) {
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    property(url, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_serving_process_beside_a_refused_cli_writer_answers_as_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("hot-path.db").display());
    property(url, 1).await;
}

/// `slots` used as an entitlements answer shows it.
fn slots_used(status: u16, answer: &Value) -> u64 {
    assert_eq!(status, 200, "entitlements: {answer}");
    answer["features"][FEATURE]["used"].as_u64().unwrap()
}

/// On PostgreSQL a process sends the entitlement reads that arrive together
/// as one statement. Reads at one process, many at once and with other
/// reads always under way (so that each joins a batch while another
/// statement is on the wire), each sent after a consume answered `200` at
/// the other process: every one shows that consume, and each customer's
/// read shows that customer's counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batched_reads_at_one_process_show_every_consume_answered_at_the_other() {
    const READ_CUSTOMERS: usize = 8;
    const ROUNDS: usize = 6;
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    let dir = tempfile::tempdir().unwrap();
    let setup = Arc::new(Setup::start(url, dir.path(), 2).await);
    let customers: Vec<String> = (0..READ_CUSTOMERS).map(|i| format!("br_{i}")).collect();
    for customer in &customers {
        let (status, body) = setup
            .send(
                Method::PUT,
                format!("{}/v1/customers/{customer}", setup.base(0)),
                Some(serde_json::json!({ "email": format!("{customer}@example.com") })),
            )
            .await;
        assert!((200..300).contains(&status), "PUT {customer}: {body}");
    }
    let reader = setup.clone();
    let read = move |customer: String| {
        let setup = reader.clone();
        async move {
            let (status, answer) = setup
                .send(
                    Method::GET,
                    format!("{}/v1/customers/{customer}/entitlements", setup.base(1)),
                    None,
                )
                .await;
            slots_used(status, &answer)
        }
    };
    // Readers that keep statements under way at the second process until
    // the consumes are done (bounded either way).
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background: Vec<_> = (0..READ_CUSTOMERS)
        .map(|r| {
            let (done, read, customer) = (done.clone(), read.clone(), customers[r].clone());
            tokio::spawn(async move {
                for _ in 0..5_000 {
                    if done.load(Ordering::Relaxed) {
                        break;
                    }
                    read(customer.clone()).await;
                }
            })
        })
        .collect();

    // Each customer's counter goes up and down (a consume, then a release
    // of it), every change answered at the first process and then read at
    // the second.
    let mut used = [0_u64; READ_CUSTOMERS];
    for round in 0..ROUNDS {
        for (c, customer) in customers.iter().enumerate() {
            for release in [false, true] {
                let path = if release { "/release" } else { "" };
                let (status, answer) = setup
                    .send(
                        Method::POST,
                        format!("{}/v1/customers/{customer}/usage/{FEATURE}{path}", setup.base(0)),
                        Some(serde_json::json!({ "amount": 1, "idempotency_key": format!("k{round}{path}") })),
                    )
                    .await;
                assert_eq!(status, 200, "{customer}{path}: {answer}");
                used[c] = if release { used[c] - 1 } else { used[c] + 1 };
                // Every customer read at once, the changed one four times.
                let reads = customers
                    .iter()
                    .cloned()
                    .chain(std::iter::repeat_n(customer.clone(), 3))
                    .map(&read);
                let answers = futures::future::join_all(reads).await;
                let expected = used.iter().copied().chain(std::iter::repeat_n(used[c], 3));
                for (i, (got, want)) in answers.into_iter().zip(expected).enumerate() {
                    assert_eq!(
                        got, want,
                        "read {i} after the 200 of {customer}{path} in round {round}"
                    );
                }
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    for reader in background {
        reader.await.unwrap();
    }
}
