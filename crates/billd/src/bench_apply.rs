//! `billd bench apply`: how soon an acknowledged webhook is applied, on a
//! `billd serve` child process over real HTTP, and the same for a minimal
//! server that stores and applies the same events (a benchmark, not a
//! test: nothing is asserted).
//!
//! The events are real Stripe histories: one customer's checkout at the
//! emulator (customer, checkout session, subscription, invoice, payment
//! intent, charge events), then a cancellation at period end and its
//! undoing, taken from the emulator's event list and given each bench
//! customer's own object ids, `metadata[billd_customer_id]` and fresh
//! event ids. Customer `k` gets its history's events in order, from the
//! start and round again.
//!
//! For each database and each server (the minimal one, then billd):
//! 1. latency: `--rate` events/s for `--rate-secs` across `--customers`
//!    customers, open loop; per event, from its acknowledgement (the 200)
//!    to the moment it is seen applied;
//! 2. burst: `--burst` events of one new customer, as fast as
//!    `--connections` connections send them; from the first send until
//!    every one is applied;
//! 3. sustained: `--events` events across the customers from
//!    `--connections` connections; applied events/s from the first send
//!    until every one is applied;
//!
//! and the server's peak RSS (`VmHWM`).
//!
//! "Applied" is read from the database by the bench, on a connection of
//! its own, every `--poll-ms` (10 ms in 2. and 3.): the ids of the stored
//! events that are not applied yet ([`billd_store::ceiling::Unapplied`]).
//! billd finishes an event's inbox row in the transaction that applies it
//! to its customer (state, entitlements, outbox), so the row leaving
//! `pending`/`processing`/`failed`/`unlinked` is the moment the
//! entitlements change; the query reads an index of those rows only, so it
//! costs in proportion to the backlog and adds no load to the server's
//! HTTP side, unlike polling the entitlements endpoint would. An event
//! counts as applied at the end of the first poll that started after its
//! acknowledgement and did not list it: the figures are late by up to one
//! poll interval plus one query, never early.
//!
//! The minimal server (`billd bench webhooks-ceiling --apply`) has the same
//! HTTP stack, signature check and group commit as `bench webhooks`' and
//! applies what it stored in batches: each body parsed as JSON, one
//! stamped upsert of its customer's row, the row marked applied
//! ([`billd_store::ceiling::InboxCeiling::open_applying`]).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billd_server::{Clock, SystemClock};
use billd_store::ceiling::{InboxCeiling, Unapplied};
use billd_stripe::webhook::sign;
use serde_json::Value;

use crate::bench_ceiling::{
    billd_command, free_port, rss_mib, run_tag, serve_command, ServerProcess,
};
use crate::loadgen;

const SECRET: &str = "whsec_bench_apply";

/// The billd customer id the template history is made for; each bench
/// customer's own replaces it.
const TEMPLATE_USER: &str = "bench_template_user";

/// Options of `billd bench apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyBenchArgs {
    /// Customers the latency and sustained runs spread events over.
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Offered rate of the latency run, events per second.
    #[arg(long, default_value_t = 1_000)]
    rate: u64,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 5)]
    rate_secs: u64,
    /// Events of the one-customer burst.
    #[arg(long, default_value_t = 2_000)]
    burst: usize,
    /// Events of the sustained run.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Keep-alive connections of the burst and sustained runs (and most
    /// requests in flight in the latency run).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// How often the latency run looks for applied events, milliseconds.
    #[arg(long, default_value_t = 2)]
    poll_ms: u64,
    /// Also benchmark PostgreSQL: a database URL the benchmark may write
    /// to (it is migrated; ids get a unique prefix, the minimal server's
    /// tables are created and dropped).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Skip SQLite (only with --postgres-url).
    #[arg(long)]
    no_sqlite: bool,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout_secs: u64,
}

/// One server's figures.
struct Served {
    /// Acknowledged → applied, sorted, of the latency run's events.
    latency: Vec<Duration>,
    /// Events acknowledged in the latency run.
    acked: usize,
    burst: Bulk,
    sustained: Bulk,
    peak_rss_kib: Option<u64>,
}

/// A closed-loop run's figures.
struct Bulk {
    acked: usize,
    /// From the first send until the last acknowledgement.
    acked_in: Duration,
    /// From the first send until every acknowledged event was applied.
    applied_in: Duration,
}

impl Bulk {
    fn applied_per_sec(&self) -> f64 {
        self.acked as f64 / self.applied_in.as_secs_f64().max(f64::EPSILON)
    }
}

struct Figures {
    backend: &'static str,
    minimal: Served,
    billd: Served,
    /// billd's inbox by status after the run.
    statuses: String,
}

/// Runs the benchmark and prints a table.
pub async fn run(args: &ApplyBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut targets: Vec<(&'static str, String, String)> = Vec::new();
    if !args.no_sqlite {
        let at = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        targets.push(("sqlite", at("bench-apply-ceiling.db"), at("bench-apply.db")));
    }
    if let Some(url) = &args.postgres_url {
        targets.push(("postgres", url.clone(), url.clone()));
    }
    anyhow::ensure!(!targets.is_empty(), "nothing to benchmark");
    let plans = dir.path().join("bench-plans.toml");
    std::fs::write(&plans, billd_core::catalog::SEED_CATALOG_TOML)
        .context("writing the catalog")?;
    let history = Arc::new(History::at_the_emulator()?);
    eprintln!(
        "one customer's history at the emulator: {} events ({})",
        history.events.len(),
        history.types()
    );
    let mut all = Vec::new();
    for (backend, ceiling_url, serve_url) in targets {
        eprintln!("benchmarking apply on {backend}…");
        all.push(bench_backend(backend, &ceiling_url, &serve_url, &plans, &history, args).await?);
    }
    println!(
        "\n{:<9} {:<8} {:>9} {:>9} {:>9} {:>11} {:>9} {:>12} {:>9}",
        "backend",
        "server",
        "p50 ms",
        "p99 ms",
        "max ms",
        "applied",
        "burst s",
        "applied/s",
        "RSS MiB"
    );
    for f in &all {
        for (name, s) in [("minimal", &f.minimal), ("billd", &f.billd)] {
            println!(
                "{:<9} {:<8} {:>9.2} {:>9.2} {:>9.2} {:>11} {:>9.3} {:>12.0} {:>9}",
                f.backend,
                name,
                ms(&s.latency, 0.50),
                ms(&s.latency, 0.99),
                ms(&s.latency, 1.0),
                format!("{}/{}", s.latency.len(), s.acked),
                s.burst.applied_in.as_secs_f64(),
                s.sustained.applied_per_sec(),
                rss_mib(s.peak_rss_kib),
            );
        }
    }
    println!();
    for f in &all {
        let (m, b) = (&f.minimal, &f.billd);
        println!(
            "{}: billd/minimal: p99 {:.2}×, burst {:.2}×, applied/s {:.2}",
            f.backend,
            ms(&b.latency, 0.99) / ms(&m.latency, 0.99),
            b.burst.applied_in.as_secs_f64() / m.burst.applied_in.as_secs_f64().max(f64::EPSILON),
            b.sustained.applied_per_sec() / m.sustained.applied_per_sec().max(f64::EPSILON),
        );
        for (name, s) in [("minimal", m), ("billd", b)] {
            println!(
                "{}: {name}: burst {} events acked in {:.3} s, applied in {:.3} s; sustained {} events acked in {:.2} s ({:.0}/s), applied in {:.2} s",
                f.backend,
                s.burst.acked,
                s.burst.acked_in.as_secs_f64(),
                s.burst.applied_in.as_secs_f64(),
                s.sustained.acked,
                s.sustained.acked_in.as_secs_f64(),
                s.sustained.acked as f64 / s.sustained.acked_in.as_secs_f64().max(f64::EPSILON),
                s.sustained.applied_in.as_secs_f64(),
            );
        }
        println!("{}: billd's inbox after the run: {}", f.backend, f.statuses);
    }
    println!(
        "\nlatency = acknowledged → applied at {}/s offered for {} s across {} customers (open loop, at most {} in flight), applied read from the database every {} ms; burst = {} events of one customer over {} connections, first send → all applied; applied/s = {} events across the customers over {} connections, first send → all applied. minimal = the same HTTP stack, signature check and group commit storing (id unique, body), then applying in batches (JSON parse, one stamped upsert per event into a bare customers table, row marked applied); billd = `billd serve`.",
        args.rate,
        args.rate_secs,
        args.customers,
        args.connections,
        args.poll_ms,
        args.burst,
        args.connections,
        args.events,
        args.connections,
    );
    Ok(())
}

async fn bench_backend(
    backend: &'static str,
    ceiling_url: &str,
    serve_url: &str,
    plans: &Path,
    history: &Arc<History>,
    args: &ApplyBenchArgs,
) -> anyhow::Result<Figures> {
    let run = run_tag();
    let work_dir = plans.parent().unwrap_or(Path::new("/"));

    let port = free_port()?;
    let prefix = format!("bench_apply_{run}");
    let listen = format!("127.0.0.1:{port}");
    let command = billd_command(
        work_dir,
        &[
            "bench",
            "webhooks-ceiling",
            "--apply",
            "--database-url",
            ceiling_url,
            "--listen",
            &listen,
            "--secret",
            SECRET,
            "--prefix",
            &prefix,
        ],
    )?;
    let minimal = async {
        let server = ServerProcess::start(command, port).await?;
        let probe = Unapplied::ceiling(ceiling_url, &prefix).await?;
        load(server, &probe, history, &format!("{run}m"), args).await
    }
    .await;
    if backend == "postgres" {
        InboxCeiling::drop_tables(ceiling_url, &prefix).await;
    }
    let minimal = minimal?;

    {
        let store = billd_store::connect(serve_url)
            .await
            .context("opening the store")?;
        store.migrate().await.context("migrating")?;
    }
    let port = free_port()?;
    let mut command = serve_command(
        work_dir,
        serve_url,
        port,
        plans,
        &format!("bench_app_key_{run}"),
        SECRET,
    )?;
    // The scheduler's jobs would call Stripe, which is not there.
    command.env("BILLD_SCHEDULER", "off");
    let server = ServerProcess::start(command, port).await?;
    let probe = Unapplied::billd(serve_url).await?;
    let billd = load(server, &probe, history, &format!("{run}b"), args).await?;
    let store = billd_store::connect(serve_url).await?;
    let statuses = store
        .inbox_stats()
        .await?
        .by_status
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(status, n)| format!("{n} {}", status.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Figures {
        backend,
        minimal,
        billd,
        statuses,
    })
}

/// Runs the three phases against `server`, then stops it.
async fn load(
    server: ServerProcess,
    probe: &Unapplied,
    history: &Arc<History>,
    run: &str,
    args: &ApplyBenchArgs,
) -> anyhow::Result<Served> {
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let customers = args.customers.max(1);
    let mut next_of = vec![0usize; customers + 1];
    let mut events_for = |customer: usize, n: usize| {
        let start = next_of[customer];
        next_of[customer] += n;
        (start..start + n).map(move |seq| (customer, seq))
    };

    // 1. Latency at a fixed offered rate, customers in turn.
    let total = (args.rate * args.rate_secs) as usize;
    let mut plan = Vec::with_capacity(total);
    for i in 0..total {
        plan.extend(events_for(i % customers, 1));
    }
    let requests = history.requests(run, &plan, server.addr);
    let tracker = Tracker::new(probe, Duration::from_millis(args.poll_ms.max(1)));
    let acked = tokio::time::timeout(phase, async {
        let sent = paced(&requests, args, server.addr, &tracker).await;
        tracker.until_applied().await?;
        anyhow::Ok(sent)
    })
    .await
    .context("the latency run timed out")??;
    let mut latency = tracker.latencies();
    latency.sort();

    // 2. A burst for one customer nobody has sent anything for yet.
    let plan: Vec<_> = events_for(customers, args.burst).collect();
    let requests = history.requests(run, &plan, server.addr);
    let burst = tokio::time::timeout(phase, bulk(&requests, args, server.addr, probe))
        .await
        .context("the burst timed out")??;

    // 3. Sustained, customers in turn.
    let mut plan = Vec::with_capacity(args.events);
    for i in 0..args.events {
        plan.extend(events_for(i % customers, 1));
    }
    let requests = history.requests(run, &plan, server.addr);
    let sustained = tokio::time::timeout(phase, bulk(&requests, args, server.addr, probe))
        .await
        .context("the sustained run timed out")??;

    let peak_rss_kib = server.peak_rss_kib();
    server.stop().await;
    Ok(Served {
        latency,
        acked,
        burst,
        sustained,
        peak_rss_kib,
    })
}

/// A request ready to write, with its event id.
struct Request {
    id: String,
    bytes: Vec<u8>,
}

/// Sends `requests` at `--rate` per second, open loop (send times fixed in
/// advance; at most `--connections` in flight, past it sends wait), and
/// hands each acknowledged id to `tracker`. Returns how many were acked.
async fn paced(
    requests: &[Request],
    args: &ApplyBenchArgs,
    addr: std::net::SocketAddr,
    tracker: &Tracker<'_>,
) -> usize {
    let pool = Arc::new(loadgen::Pool::new(addr));
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.connections.max(1)));
    let started = Instant::now();
    let sends = requests.iter().enumerate().map(|(i, request)| {
        let (pool, in_flight) = (pool.clone(), in_flight.clone());
        async move {
            tokio::time::sleep_until((started + interval.mul_f64(i as f64)).into()).await;
            let Ok(_permit) = in_flight.acquire_owned().await else {
                return;
            };
            let answer = pool.send(&request.bytes).await;
            if answer.is_ok_and(|a| a.status == 200) {
                tracker.acked(&request.id, Instant::now());
            }
        }
    });
    let polling = tracker.poll_while_sending();
    tokio::select! {
        _ = futures::future::join_all(sends) => {}
        () = polling => {}
    }
    tracker.acked_count()
}

/// Sends `requests` from `--connections` closed-loop connections and waits
/// until every acknowledged one is applied.
async fn bulk(
    requests: &[Request],
    args: &ApplyBenchArgs,
    addr: std::net::SocketAddr,
    probe: &Unapplied,
) -> anyhow::Result<Bulk> {
    let pool = Arc::new(loadgen::Pool::new(addr));
    let next = AtomicUsize::new(0);
    let acked_ids = Mutex::new(Vec::with_capacity(requests.len()));
    let started = Instant::now();
    let connections = (0..args.connections.max(1)).map(|_| async {
        while let Some(request) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
            if pool
                .send(&request.bytes)
                .await
                .is_ok_and(|a| a.status == 200)
            {
                lock(&acked_ids).push(request.id.clone());
            }
        }
    });
    futures::future::join_all(connections).await;
    let acked_in = started.elapsed();
    let acked: Vec<String> = std::mem::take(&mut *lock(&acked_ids));
    // Polls ask whether anything is left (one row at most), so polling does
    // not grow with the backlog and take the cores from the server; once
    // a second, whether any of the acknowledged events is left, in case a
    // row not acknowledged here stays unapplied.
    let acked_refs: Vec<&str> = acked.iter().map(String::as_str).collect();
    let mut exact_at = Instant::now();
    loop {
        if !probe.any().await? {
            break;
        }
        if exact_at.elapsed() >= Duration::from_secs(1) {
            if probe.among(&acked_refs).await?.is_empty() {
                break;
            }
            exact_at = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(Bulk {
        acked: acked.len(),
        acked_in,
        applied_in: started.elapsed(),
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Acknowledged events waiting to be seen applied, and the latencies of
/// those seen.
struct Tracker<'a> {
    probe: &'a Unapplied,
    every: Duration,
    waiting: Mutex<HashMap<String, Instant>>,
    latencies: Mutex<Vec<Duration>>,
    acked: AtomicUsize,
}

impl<'a> Tracker<'a> {
    fn new(probe: &'a Unapplied, every: Duration) -> Self {
        Tracker {
            probe,
            every,
            waiting: Mutex::new(HashMap::new()),
            latencies: Mutex::new(Vec::new()),
            acked: AtomicUsize::new(0),
        }
    }

    fn acked(&self, id: &str, at: Instant) {
        lock(&self.waiting).insert(id.to_owned(), at);
        self.acked.fetch_add(1, Ordering::Relaxed);
    }

    fn acked_count(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// One poll: every event acknowledged before it started and not listed
    /// unapplied is applied, at the poll's end. Returns how many still wait.
    async fn poll(&self) -> anyhow::Result<usize> {
        let started = Instant::now();
        // Only the events still waiting are looked up: a poll then costs
        // what they do, not what the inbox holds.
        let asked: Vec<String> = lock(&self.waiting).keys().cloned().collect();
        let asked: Vec<&str> = asked.iter().map(String::as_str).collect();
        let unapplied = self.probe.among(&asked).await?;
        let seen = Instant::now();
        let mut waiting = lock(&self.waiting);
        let mut latencies = lock(&self.latencies);
        waiting.retain(|id, acked| {
            let applied = *acked < started && !unapplied.contains(id);
            if applied {
                latencies.push(seen.duration_since(*acked));
            }
            !applied
        });
        Ok(waiting.len())
    }

    /// Polls every `every` for as long as it is polled (a poll that fails is
    /// retried at the next tick).
    async fn poll_while_sending(&self) {
        loop {
            let _ = self.poll().await;
            tokio::time::sleep(self.every).await;
        }
    }

    /// Polls until nothing waits.
    async fn until_applied(&self) -> anyhow::Result<()> {
        while self.poll().await? > 0 {
            tokio::time::sleep(self.every).await;
        }
        Ok(())
    }

    fn latencies(&self) -> Vec<Duration> {
        std::mem::take(&mut *lock(&self.latencies))
    }
}

/// The `p` quantile (0 < p ≤ 1) of sorted durations, in milliseconds; NaN
/// when empty.
fn ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let n = sorted.len();
    let index = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

/// One customer's events at the emulator, oldest first, and the object ids
/// in them that each bench customer gets its own copy of.
struct History {
    events: Vec<Value>,
    /// Ids of the customer's own objects (not prices or products, which
    /// the catalog knows every customer by).
    own_ids: std::collections::HashSet<String>,
}

impl History {
    /// A checkout of Pro (EUR, monthly, paid by card), a cancellation at
    /// period end and its undoing, at an emulator in this process.
    fn at_the_emulator() -> anyhow::Result<History> {
        let sim = stripe_sim::Sim::new(stripe_sim::SimConfig::default());
        let call = |method: &str, path: &str, form: &str| -> anyhow::Result<Value> {
            let (status, body) = sim.call(method, path, form);
            anyhow::ensure!(status == 200, "emulator {method} {path}: {status} {body}");
            Ok(body)
        };
        let id = |v: &Value| v["id"].as_str().unwrap_or_default().to_owned();
        let price = id(&call(
            "POST",
            "/v1/prices",
            "product_data[name]=Pro&currency=eur&unit_amount=1900&recurring[interval]=month&lookup_key=billd_pro_eur",
        )?);
        let customer = id(&call(
            "POST",
            "/v1/customers",
            &format!("email=bench@example.com&metadata[billd_customer_id]={TEMPLATE_USER}"),
        )?);
        let session = id(&call(
            "POST",
            "/v1/checkout/sessions",
            &format!(
                "mode=subscription&customer={customer}&client_reference_id={TEMPLATE_USER}\
                 &line_items[0][price]={price}&line_items[0][quantity]=1\
                 &success_url=https://example.com/done&subscription_data[metadata][billd_customer_id]={TEMPLATE_USER}"
            ),
        )?);
        call(
            "POST",
            &format!("/_sim/checkout/sessions/{session}/complete"),
            "",
        )?;
        let subscription = sim
            .events()
            .iter()
            .find_map(|e| {
                (e["type"] == "customer.subscription.created").then(|| id(&e["data"]["object"]))
            })
            .context("the checkout created no subscription")?;
        for form in ["cancel_at_period_end=true", "cancel_at_period_end=false"] {
            call("POST", &format!("/v1/subscriptions/{subscription}"), form)?;
        }
        // The catalog's own events (products, prices) are not the
        // customer's.
        let events: Vec<Value> = sim
            .events()
            .into_iter()
            .filter(|e| {
                let kind = e["type"].as_str().unwrap_or_default();
                !kind.starts_with("product.") && !kind.starts_with("price.")
            })
            .collect();
        anyhow::ensure!(!events.is_empty(), "the emulator recorded no event");
        let mut own_ids = std::collections::HashSet::new();
        for event in &events {
            collect_own_ids(&event["data"], &mut own_ids);
        }
        Ok(History { events, own_ids })
    }

    /// The event types, with how many of each.
    fn types(&self) -> String {
        let mut counts: Vec<(String, usize)> = Vec::new();
        for event in &self.events {
            let t = event["type"].as_str().unwrap_or("?").to_owned();
            match counts.iter_mut().find(|(name, _)| *name == t) {
                Some((_, n)) => *n += 1,
                None => counts.push((t, 1)),
            }
        }
        counts
            .iter()
            .map(|(t, n)| {
                if *n > 1 {
                    format!("{t} ×{n}")
                } else {
                    t.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Signed requests for `(customer, seq)` pairs: customer `k`'s event
    /// number `seq` is its history's event `seq % len`, with `k`'s own
    /// object ids and billd customer id and a fresh event id.
    fn requests(
        &self,
        run: &str,
        plan: &[(usize, usize)],
        addr: std::net::SocketAddr,
    ) -> Vec<Request> {
        let now = SystemClock.now();
        plan.iter()
            .map(|&(customer, seq)| {
                let mut event = self.events[seq % self.events.len()].clone();
                let suffix = format!("{run}{customer}");
                let user = format!("bench_{run}_{customer}");
                self.rewrite(&mut event, &suffix, &user);
                let id = format!("evt_{run}_{customer}_{seq}");
                event["id"] = Value::from(id.clone());
                let body = event.to_string();
                let signature = sign(SECRET, now, body.as_bytes());
                let bytes = loadgen::post_request(
                    addr,
                    "/webhooks/stripe",
                    &[
                        ("stripe-signature", &signature),
                        ("content-type", "application/json"),
                    ],
                    body.as_bytes(),
                );
                Request { id, bytes }
            })
            .collect()
    }

    fn rewrite(&self, value: &mut Value, suffix: &str, user: &str) {
        match value {
            Value::String(s) if s == TEMPLATE_USER => *s = user.to_owned(),
            Value::String(s) if self.own_ids.contains(s.as_str()) => s.push_str(suffix),
            Value::Array(items) => items.iter_mut().for_each(|v| self.rewrite(v, suffix, user)),
            Value::Object(fields) => fields
                .values_mut()
                .for_each(|v| self.rewrite(v, suffix, user)),
            _ => {}
        }
    }
}

/// Every id-shaped string (`prefix_rest`) in `value` but prices' and
/// products': the objects of the customer the history is about.
fn collect_own_ids(value: &Value, into: &mut std::collections::HashSet<String>) {
    match value {
        Value::String(s) => {
            let own = s.split_once('_').is_some_and(|(prefix, rest)| {
                !prefix.is_empty()
                    && prefix.len() <= 6
                    && prefix.bytes().all(|b| b.is_ascii_lowercase())
                    && !matches!(prefix, "price" | "prod" | "evt")
                    && rest.len() >= 8
                    && rest.bytes().all(|b| b.is_ascii_alphanumeric())
            });
            if own {
                into.insert(s.clone());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_own_ids(v, into)),
        Value::Object(fields) => fields.values().for_each(|v| collect_own_ids(v, into)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_customer_gets_its_own_ids_and_the_catalogs_prices_stay() {
        let history = History::at_the_emulator().unwrap();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 9));
        let requests = history.requests("t", &[(1, 0), (2, 0)], addr);
        let body = |r: &Request| {
            let text = String::from_utf8_lossy(&r.bytes).into_owned();
            let json = &text[text.find("\r\n\r\n").unwrap() + 4..];
            serde_json::from_str::<Value>(json).unwrap()
        };
        let (one, two) = (body(&requests[0]), body(&requests[1]));

        assert_ne!(one["id"], two["id"]);
        assert_ne!(one["data"]["object"]["id"], two["data"]["object"]["id"]);
        assert!(
            history.types().contains("checkout.session.completed"),
            "{}",
            history.types()
        );
        assert!(
            history.types().contains("invoice.paid"),
            "{}",
            history.types()
        );
        let text = one.to_string();
        assert!(!text.contains(TEMPLATE_USER), "{text}");
        assert!(history.own_ids.iter().all(|id| !id.starts_with("price_")));
    }
}
