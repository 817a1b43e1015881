//! `billd bench webhooks`: drives the real webhook endpoint on loopback and
//! prints figures (it is a benchmark, not a test: nothing is asserted).
//!
//! For each database it measures, in one run:
//! 1. the store's raw ceiling: the same rows inserted with `receive_events`
//!    in batches as large as the HTTP run can queue, as many at once as
//!    the webhook writer commits at once, without HTTP;
//! 2. accepted events/s through HTTP from `connections` keep-alive
//!    connections sending pre-signed unique events as fast as acks come;
//! 3. the HTTP stack alone: the same requests signed with a secret billd
//!    does not know, each verified and rejected with 400, nothing stored
//!    (1, 2 and 3 alternate in rounds);
//! 4. ack latency (p50 … max) at a fixed offered rate (open loop);
//! 5. the same offered rate straight into a group-commit writer like the
//!    endpoint's, no HTTP: the store's own ack latency, the floor of 4;
//! 6. the minimal durable insert ceiling, a child process
//!    ([`crate::bench_ceiling`]: the same HTTP stack, Stripe signature
//!    check and group commit, storing only (id unique, body) in a bare
//!    table), then `billd serve` as a child process, each given the
//!    throughput run and the fixed-rate run of 2 and 4; their ratios and
//!    each one's peak RSS.
//!
//! The requests come from [`crate::loadgen`], a lean HTTP/1.1 client, since
//! it shares the machine's cores with the server it measures.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billd_server::pipeline::commits_in_flight;
use billd_server::{
    Clock, HandlerRegistry, IngestConfig, Ingestor, Metrics, ServerConfig, SystemClock,
    WebhookConfig, WorkerConfig, Workers,
};
use billd_store::{Backend, InsertOutcome, ReceivedEvent, Store};
use billd_stripe::webhook::sign;
use secrecy::SecretString;

use crate::bench_ceiling::{
    billd_command, free_port, rss_mib, run_tag, serve_command, ServerProcess,
};
use crate::loadgen;

const SECRET: &str = "whsec_bench_secret";

/// Signs the requests of the no-store run: billd rejects them after the
/// signature check.
const UNKNOWN_SECRET: &str = "whsec_bench_unknown";

/// Options of `billd bench webhooks`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Events sent in the throughput run (and inserted in the ceiling run).
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Concurrent keep-alive connections in the throughput run.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Alternating rounds of the ceiling, the throughput run and the
    /// no-store run, each with `events / rounds` events.
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Offered rate of the latency run, events per second.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Most requests in flight in the latency run (keep-alive connections);
    /// past it, sends wait and their wait counts as latency.
    #[arg(long, default_value_t = 256)]
    rate_connections: usize,
    /// Length of the latency run, seconds.
    #[arg(long, default_value_t = 5)]
    rate_secs: u64,
    /// Also benchmark PostgreSQL: a database URL the benchmark may write
    /// to (it is migrated; rows get a unique prefix).
    #[arg(long)]
    postgres_url: Option<String>,
    /// Skip SQLite (only with --postgres-url).
    #[arg(long)]
    no_sqlite: bool,
    /// Async runtime threads of the benchmark process (server and client);
    /// 0 is one per core, `billd serve`'s default (BILLD_WORKER_THREADS).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout_secs: u64,
}

impl BenchArgs {
    /// `--worker-threads` (0: one per core).
    pub fn worker_threads(&self) -> usize {
        self.worker_threads
    }
}

struct Figures {
    backend: &'static str,
    ceiling_per_sec: f64,
    http_per_sec: f64,
    http_accepted: usize,
    rejected_per_sec: f64,
    rejected: usize,
    offered: u64,
    /// Ack latency through HTTP at the offered rate.
    http: Latencies,
    /// The same offered rate into the group-commit writer, no HTTP.
    floor: Latencies,
    mean_batch: f64,
    /// 6.: the minimal durable insert server, then `billd serve`.
    ceiling_server: Served,
    billd_server: Served,
}

/// A child server's figures under the throughput and fixed-rate runs.
struct Served {
    per_sec: f64,
    accepted: usize,
    latency: Latencies,
    peak_rss_kib: Option<u64>,
}

/// Runs the benchmark and prints a table.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut targets: Vec<(&'static str, String)> = Vec::new();
    if !args.no_sqlite {
        let path = dir.path().join("bench.db");
        targets.push(("sqlite", format!("sqlite://{}", path.display())));
    }
    if let Some(url) = &args.postgres_url {
        targets.push(("postgres", url.clone()));
    }
    anyhow::ensure!(!targets.is_empty(), "nothing to benchmark");
    let plans = dir.path().join("bench-plans.toml");
    std::fs::write(&plans, crate::bench_usage::CATALOG).context("writing the bench catalog")?;
    let mut all = Vec::new();
    for (backend, url) in targets {
        eprintln!("benchmarking {backend}…");
        let (ceiling_url, serve_url) = if backend == "sqlite" {
            let at = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
            (at("bench-ceiling.db"), at("bench-serve.db"))
        } else {
            (url.clone(), url.clone())
        };
        let mut figures = bench_backend(backend, &url, args).await?;
        let (ceiling_server, billd_server) =
            bench_processes(backend, &ceiling_url, &serve_url, &plans, args).await?;
        figures.ceiling_server = ceiling_server;
        figures.billd_server = billd_server;
        all.push(figures);
    }
    println!(
        "\n{:<9} {:>14} {:>12} {:>7} {:>12} {:>10} {:>9} {:>9} {:>11} {:>9} {:>10}",
        "backend",
        "ceiling ev/s",
        "http ev/s",
        "ratio",
        "no-store/s",
        "offered/s",
        "p50 ms",
        "p99 ms",
        "floor p99",
        "acked",
        "mean batch"
    );
    for f in &all {
        println!(
            "{:<9} {:>14.0} {:>12.0} {:>7.2} {:>12.0} {:>10} {:>9.2} {:>9.2} {:>11.2} {:>9} {:>10.1}",
            f.backend,
            f.ceiling_per_sec,
            f.http_per_sec,
            f.http_per_sec / f.ceiling_per_sec.max(1.0),
            f.rejected_per_sec,
            f.offered,
            f.http.ms(0.50),
            f.http.ms(0.99),
            f.floor.ms(0.99),
            format!("{}/{}", f.http.acked.len(), f.http.sent),
            f.mean_batch,
        );
    }
    for f in &all {
        println!(
            "{}: {} of {} throughput-run events acknowledged, {} of {} no-store requests rejected",
            f.backend, f.http_accepted, args.events, f.rejected, args.events
        );
        for (what, l) in [("through HTTP", &f.http), ("store alone", &f.floor)] {
            println!(
                "{}: latency at {}/s {what}: {} of {} acked, p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
                f.backend, f.offered, l.acked.len(), l.sent, l.ms(0.50), l.ms(0.90), l.ms(0.99), l.ms(0.999), l.ms(1.0)
            );
        }
    }
    println!(
        "\n{:<9} {:<8} {:>10} {:>7} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "backend", "server", "ev/s", "ratio", "offered/s", "p50 ms", "p99 ms", "p99 ×", "RSS MiB"
    );
    for f in &all {
        let (c, b) = (&f.ceiling_server, &f.billd_server);
        for (name, s) in [("minimal", c), ("billd", b)] {
            println!(
                "{:<9} {:<8} {:>10.0} {:>7.2} {:>10} {:>9.2} {:>9.2} {:>9.2} {:>9}",
                f.backend,
                name,
                s.per_sec,
                s.per_sec / c.per_sec.max(1.0),
                f.offered,
                s.latency.ms(0.50),
                s.latency.ms(0.99),
                s.latency.ms(0.99) / c.latency.ms(0.99),
                rss_mib(s.peak_rss_kib),
            );
        }
        println!(
            "{}: child servers acknowledged: minimal {}+{}, billd {}+{} of {}+{} events",
            f.backend,
            c.accepted,
            c.latency.acked.len(),
            b.accepted,
            b.latency.acked.len(),
            args.events,
            c.latency.sent,
        );
    }
    println!(
        "\nminimal = a child process with the same HTTP stack, Stripe signature check and group commit storing only (id unique, body) in a bare table (SQLite WAL, synchronous=FULL; both databases group-committed like billd's ingest); billd = `billd serve` (its worker runs too); each given the {} events over {} connections, then the fixed rate for {} s.",
        args.events, args.connections, args.rate_secs
    );
    println!(
        "ceiling = receive_events in batches of {}, as many at once as the webhook writer commits at once (SQLite {}, PostgreSQL {}; no HTTP); http = {} events over {} connections; no-store = as many requests signed with an unknown secret, verified and rejected (400), nothing stored: the HTTP stack alone on these cores; the three alternate in {} rounds; latency at a fixed offered rate for {} s, through HTTP and then (floor) straight into a group-commit writer like the endpoint's; {} runtime threads on {} cores.",
        args.connections,
        commits_in_flight(Backend::Sqlite),
        commits_in_flight(Backend::Postgres),
        args.events,
        args.connections,
        args.rounds.max(1),
        args.rate_secs,
        tokio::runtime::Handle::current().metrics().num_workers(),
        std::thread::available_parallelism().map_or(1, usize::from),
    );
    Ok(())
}

async fn bench_backend(
    backend: &'static str,
    url: &str,
    args: &BenchArgs,
) -> anyhow::Result<Figures> {
    let store = billd_store::connect(url)
        .await
        .context("opening the store")?;
    store.migrate().await.context("migrating")?;
    let run = run_tag();
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let now = SystemClock.now();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = billd_server::start(
        listener,
        store.clone(),
        ServerConfig {
            webhook: WebhookConfig {
                secrets: vec![SecretString::from(SECRET.to_string())],
                tolerance_secs: 3600,
            },
            ingest: IngestConfig::default(),
            worker: WorkerConfig::default(),
            ready_max_lag_secs: 3600,
        },
        HandlerRegistry::new(),
        Arc::new(SystemClock),
        // Ingestion alone is measured; the worker would compete for the
        // same two cores and database.
        Workers::None,
    )?;
    let addr = running.addr;

    // 1., 2. and 3. in alternating rounds: the raw ceiling (the same rows
    // given to `insert_events` in batches of `connections`, no HTTP), then
    // as many events through HTTP, then as many requests billd rejects. The
    // first two thus write to an inbox of the same size, and a slow spell of
    // the disk hits all three.
    let rows = Arc::new(received_rows(&format!("{run}c"), args.events, now)?);
    let commits_at_once = commits_in_flight(store.backend());
    let requests = Arc::new(presign(&format!("{run}h"), args.events, now, addr, SECRET));
    let unverifiable = Arc::new(presign(
        &format!("{run}x"),
        args.events,
        now,
        addr,
        UNKNOWN_SECRET,
    ));
    let rounds = args.rounds.clamp(1, args.events.max(1));
    let per_round = args.events.div_ceil(rounds);
    let (mut ceiling_secs, mut http_secs, mut http_accepted) = (0.0, 0.0, 0);
    let (mut rejected_secs, mut rejected) = (0.0, 0);
    for round in 0..rounds {
        let range =
            (round * per_round).min(args.events)..((round + 1) * per_round).min(args.events);
        let started = Instant::now();
        let inserted = ceiling(
            &store,
            &rows,
            range.clone(),
            args.connections,
            commits_at_once,
        );
        tokio::time::timeout(phase, inserted)
            .await
            .context("ceiling phase timed out")??;
        ceiling_secs += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let answered = closed_loop(&requests, range.clone(), args.connections, addr, 200);
        http_accepted += tokio::time::timeout(phase, answered)
            .await
            .context("throughput phase timed out")?;
        http_secs += started.elapsed().as_secs_f64();

        let started = Instant::now();
        let answered = closed_loop(&unverifiable, range, args.connections, addr, 400);
        rejected += tokio::time::timeout(phase, answered)
            .await
            .context("no-store phase timed out")?;
        rejected_secs += started.elapsed().as_secs_f64();
    }
    let ceiling_per_sec = args.events as f64 / ceiling_secs.max(f64::EPSILON);
    let http_per_sec = http_accepted as f64 / http_secs.max(f64::EPSILON);
    let rejected_per_sec = rejected as f64 / rejected_secs.max(f64::EPSILON);

    // 4. Fixed offered rate, open loop, through HTTP.
    let total = (args.rate * args.rate_secs) as usize;
    let requests = presign(&format!("{run}r"), total, now, addr, SECRET);
    let http = paced_webhooks(args, requests, addr, phase)
        .await
        .context("latency phase timed out")?;
    let batches = running.metrics.ingest_batches.get();
    let batched = running.metrics.ingest_batched_events.get();

    // 5. The same offered rate straight into a group-commit writer like the
    // webhook endpoint's, no HTTP: the store's own latency, the floor of 4.
    let rows = Arc::new(received_rows(&format!("{run}f"), total, now)?);
    let (ingestor, writer) = Ingestor::spawn(
        store.clone(),
        Arc::new(Metrics::default()),
        Arc::new(tokio::sync::Notify::new()),
        IngestConfig::default(),
    );
    let floor = open_loop(args, total, phase, {
        let ingestor = ingestor.clone();
        move |i| {
            let (ingestor, rows) = (ingestor.clone(), rows.clone());
            async move {
                matches!(
                    ingestor.submit(rows[i].clone()).await,
                    Ok(InsertOutcome::Inserted)
                )
            }
        }
    })
    .await
    .context("store latency phase timed out")?;
    drop(ingestor);
    let _ = writer.await;
    running.shutdown().await?;
    Ok(Figures {
        backend,
        ceiling_per_sec,
        http_per_sec,
        http_accepted,
        rejected_per_sec,
        rejected,
        offered: args.rate,
        http,
        floor,
        mean_batch: batched as f64 / batches.max(1) as f64,
        ceiling_server: Served::none(),
        billd_server: Served::none(),
    })
}

impl Served {
    /// Placeholder until 6. has run.
    fn none() -> Served {
        Served {
            per_sec: 0.0,
            accepted: 0,
            latency: Latencies {
                acked: Vec::new(),
                sent: 0,
            },
            peak_rss_kib: None,
        }
    }
}

/// 6.: the minimal durable insert server, then `billd serve`, each a child
/// process given the throughput run and then the fixed-rate run.
async fn bench_processes(
    backend: &'static str,
    ceiling_url: &str,
    serve_url: &str,
    plans: &std::path::Path,
    args: &BenchArgs,
) -> anyhow::Result<(Served, Served)> {
    let run = run_tag();
    let work_dir = plans.parent().unwrap_or(std::path::Path::new("/"));
    let port = free_port()?;
    let table_prefix = format!("bench_inbox_{run}");
    let listen = format!("127.0.0.1:{port}");
    let command = billd_command(
        work_dir,
        &[
            "bench",
            "webhooks-ceiling",
            "--database-url",
            ceiling_url,
            "--listen",
            &listen,
            "--secret",
            SECRET,
            "--prefix",
            &table_prefix,
        ],
    )?;
    let ceiling = load_process(command, port, &format!("{run}m"), args).await;
    if backend == "postgres" {
        billd_store::ceiling::InboxCeiling::drop_tables(ceiling_url, &table_prefix).await;
    }
    let ceiling = ceiling?;
    let port = free_port()?;
    let command = serve_command(
        work_dir,
        serve_url,
        port,
        plans,
        &format!("bench_app_key_{run}"),
        SECRET,
    )?;
    let billd = load_process(command, port, &format!("{run}b"), args).await?;
    Ok((ceiling, billd))
}

/// Starts a child server, gives it the throughput run (`--events` over
/// `--connections`) and the fixed-rate run, reads its peak RSS and stops it.
async fn load_process(
    command: tokio::process::Command,
    port: u16,
    prefix: &str,
    args: &BenchArgs,
) -> anyhow::Result<Served> {
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let server = ServerProcess::start(command, port).await?;
    let now = SystemClock.now();
    let requests = Arc::new(presign(
        &format!("{prefix}t"),
        args.events,
        now,
        server.addr,
        SECRET,
    ));
    let started = Instant::now();
    let answered = closed_loop(
        &requests,
        0..args.events,
        args.connections,
        server.addr,
        200,
    );
    let accepted = tokio::time::timeout(phase, answered)
        .await
        .context("child throughput phase timed out")?;
    let per_sec = accepted as f64 / started.elapsed().as_secs_f64().max(f64::EPSILON);
    drop(requests);
    let total = (args.rate * args.rate_secs) as usize;
    let requests = presign(&format!("{prefix}r"), total, now, server.addr, SECRET);
    let latency = paced_webhooks(args, requests, server.addr, phase)
        .await
        .context("child latency phase timed out")?;
    let peak_rss_kib = server.peak_rss_kib();
    server.stop().await;
    Ok(Served {
        per_sec,
        accepted,
        latency,
        peak_rss_kib,
    })
}

/// The inbox rows of `n` unique events, as the webhook endpoint would
/// insert them.
fn received_rows(prefix: &str, n: usize, now: i64) -> anyhow::Result<Vec<ReceivedEvent>> {
    (0..n)
        .map(|i| {
            let (_, body) = event_body(prefix, i, now);
            let event = billd_server::pipeline::parse_envelope(body.as_bytes(), now)
                .map_err(|e| anyhow::anyhow!("bench event does not parse: {e}"))?;
            Ok(ReceivedEvent {
                id: event.id,
                payload: event.payload,
                received_at: now,
            })
        })
        .collect()
}

/// Acknowledgement latencies of one open-loop run.
struct Latencies {
    /// Sorted, of the sends that succeeded.
    acked: Vec<Duration>,
    sent: usize,
}

impl Latencies {
    /// The `p` quantile (0 < p ≤ 1) in milliseconds; NaN with no ack.
    fn ms(&self, p: f64) -> f64 {
        if self.acked.is_empty() {
            return f64::NAN;
        }
        let n = self.acked.len();
        let idx = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        self.acked[idx].as_secs_f64() * 1000.0
    }
}

/// Sends `requests` to `addr` at `--rate` per second ([`open_loop`]); a
/// 200 is an ack.
async fn paced_webhooks(
    args: &BenchArgs,
    requests: Vec<Vec<u8>>,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<Latencies, tokio::time::error::Elapsed> {
    let (total, requests) = (requests.len(), Arc::new(requests));
    let pool = Arc::new(loadgen::Pool::new(addr));
    open_loop(args, total, timeout, move |i| {
        let (pool, requests) = (pool.clone(), requests.clone());
        async move {
            pool.send(&requests[i])
                .await
                .is_ok_and(|answer| answer.status == 200)
        }
    })
    .await
}

/// Calls `send(i)` for `i` in `0..total` at `--rate` per second,
/// open loop: send times are fixed in advance and latency counts from the
/// scheduled time, so queueing shows. At most `--rate-connections` sends are
/// out at once; past it, sends wait and their wait counts. `send` answers
/// whether the send was acknowledged.
async fn open_loop<F, Fut>(
    args: &BenchArgs,
    total: usize,
    timeout: Duration,
    send: F,
) -> Result<Latencies, tokio::time::error::Elapsed>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Option<Duration>>();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(args.rate_connections.max(1)));
    let sender = tokio::spawn(async move {
        for i in 0..total {
            let due = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(due.into()).await;
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let (sent, lat_tx) = (send(i), lat_tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let ok = sent.await;
                let _ = lat_tx.send(ok.then(|| due.elapsed()));
            });
        }
    });
    let mut acked = Vec::with_capacity(total);
    let collect = async {
        let mut received = 0;
        while received < total {
            match lat_rx.recv().await {
                Some(Some(l)) => {
                    acked.push(l);
                    received += 1;
                }
                Some(None) => received += 1,
                None => break,
            }
        }
    };
    let outcome = tokio::time::timeout(timeout, collect).await;
    sender.abort();
    outcome?;
    acked.sort();
    Ok(Latencies { acked, sent: total })
}

/// Inserts `rows[range]` with `receive_events` in batches of `batch`,
/// `in_flight` batches at once.
async fn ceiling(
    store: &Arc<dyn Store>,
    rows: &Arc<Vec<ReceivedEvent>>,
    range: std::ops::Range<usize>,
    batch: usize,
    in_flight: usize,
) -> anyhow::Result<()> {
    let batch = batch.max(1);
    let next = Arc::new(AtomicUsize::new(range.start));
    let mut tasks = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (store, rows, next, end) = (store.clone(), rows.clone(), next.clone(), range.end);
        tasks.push(tokio::spawn(async move {
            loop {
                let start = next.fetch_add(batch, Ordering::Relaxed);
                if start >= end {
                    return anyhow::Ok(());
                }
                store
                    .receive_events(&rows[start..(start + batch).min(end)])
                    .await?;
            }
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Sends `requests[range]` from `connections` keep-alive connections, each
/// sending its next request as soon as the previous one is answered, and
/// counts the answers with `status`.
async fn closed_loop(
    requests: &Arc<Vec<Vec<u8>>>,
    range: std::ops::Range<usize>,
    connections: usize,
    addr: std::net::SocketAddr,
    status: u16,
) -> usize {
    let pool = Arc::new(loadgen::Pool::new(addr));
    let next = Arc::new(AtomicUsize::new(range.start));
    let expected = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections.max(1) {
        let (pool, requests, next, expected, end) = (
            pool.clone(),
            requests.clone(),
            next.clone(),
            expected.clone(),
            range.end,
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    break;
                }
                // Each task has one request out at a time, so the pool
                // holds at most `connections` connections.
                if pool
                    .send(&requests[i])
                    .await
                    .is_ok_and(|answer| answer.status == status)
                {
                    expected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    expected.load(Ordering::Relaxed)
}

/// Webhook requests for `n` unique events signed with `secret`, ready to
/// write.
fn presign(
    prefix: &str,
    n: usize,
    now: i64,
    addr: std::net::SocketAddr,
    secret: &str,
) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let (_, body) = event_body(prefix, i, now);
            let signature = sign(secret, now, body.as_bytes());
            loadgen::post_request(
                addr,
                "/webhooks/stripe",
                &[
                    ("stripe-signature", &signature),
                    ("content-type", "application/json"),
                ],
                body.as_bytes(),
            )
        })
        .collect()
}

/// An `invoice.paid` event shaped like Stripe's (about 2 KB), unique per `i`.
fn event_body(prefix: &str, i: usize, now: i64) -> (String, String) {
    let id = format!("evt_bench_{prefix}_{i}");
    let customer = format!("cus_bench_{}", i % 5000);
    let lines = serde_json::json!({
        "object": "list", "has_more": false, "total_count": 1, "url": "/v1/invoices/in_bench/lines",
        "data": [{
            "id": format!("il_bench_{i}"), "object": "line_item", "amount": 1900, "currency": "eur",
            "description": "1 × Standard (at €19.00 / month)",
            "period": { "start": now, "end": now + 2_592_000 },
            "pricing": { "type": "price_details", "price_details": { "price": "price_standard_eur", "product": "prod_standard" } },
            "quantity": 1
        }]
    });
    let parent = serde_json::json!({
        "type": "subscription_details",
        "subscription_details": {
            "subscription": format!("sub_bench_{}", i % 5000),
            "metadata": { "billd_customer_id": format!("user_{}", i % 5000), "billd_plan": "standard" }
        }
    });
    let invoice = serde_json::json!({
        "id": format!("in_bench_{prefix}_{i}"),
        "object": "invoice",
        "account_country": "DE",
        "account_name": "billd bench",
        "amount_due": 1900, "amount_paid": 1900, "amount_remaining": 0,
        "attempt_count": 1, "attempted": true, "auto_advance": false,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "created": now, "currency": "eur",
        "customer": customer,
        "customer_email": format!("user{i}@example.com"),
        "hosted_invoice_url": format!("https://invoice.stripe.com/i/acct_bench/test_{i}"),
        "lines": lines,
        "parent": parent,
        "period_end": now, "period_start": now - 2_592_000,
        "status": "paid", "status_transitions": { "finalized_at": now, "paid_at": now },
        "subtotal": 1900, "total": 1900, "metadata": {}
    });
    let body = serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": billd_stripe::API_VERSION,
        "created": now,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": "invoice.paid",
        "data": { "object": invoice }
    });
    (id, body.to_string())
}
