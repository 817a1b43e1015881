//! `billd bench usage`: drives `POST /v1/customers/{id}/usage/{feature}` of a
//! real `billd serve` process over HTTP keep-alive and prints figures (a
//! benchmark, not a test: nothing is asserted).
//!
//! For each database it measures, in one run:
//! 1. the store's raw ceiling: the same consume calls (one per request,
//!    unique idempotency keys, many customers) straight on the store, no
//!    HTTP, both group-committed (`consume_batch` of as many requests as
//!    there are HTTP clients, one batch after the other) and one commit
//!    per consume from as many concurrent tasks; the ratio is taken against
//!    the way the usage endpoint commits on that database (batched on
//!    SQLite, concurrent single commits on PostgreSQL);
//! 2. consumes/s and p50/p99 latency through HTTP from `clients` concurrent
//!    keep-alive clients (closed loop: each sends its next request when the
//!    answer to the previous one arrives);
//! 3. the server's resident memory under that load (its `VmHWM`, peak RSS,
//!    read from `/proc/<pid>/status`).
//!
//! The server is this binary's own `serve`, started as a child process with
//! a one-feature catalog whose free plan allows 10^12 consumes, so the
//! limit is never what answers.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billd_core::{usage_keys, Catalog, CustomerId, UsageKey};
use billd_server::{Clock, SystemClock};
use billd_store::{CustomerProfile, Store, UsageOutcome, UsageRequest};
use rand::distributions::Alphanumeric;
use rand::Rng;

/// The metered feature every request consumes.
const FEATURE: &str = "bench_calls";

/// The bench plan's limit (the catalog's `bench_calls`).
const LIMIT: u64 = 1_000_000_000_000;

/// The plans file the server and the ceiling run use.
const CATALOG: &str = r#"
currency = "eur"

[features]
bench_calls = { kind = "metered" }

[plans.free]
limits = { bench_calls = 1000000000000 }
"#;

/// Options of `billd bench usage`.
#[derive(Debug, clap::Args)]
pub struct UsageBenchArgs {
    /// Consume requests sent through HTTP (and consume calls in the ceiling run).
    #[arg(long, default_value_t = 20_000)]
    consumes: usize,
    /// Concurrent keep-alive HTTP clients (and concurrent store callers in
    /// the ceiling run).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Distinct customers the requests are spread over.
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Also benchmark this database (e.g. `postgres://…`; it is migrated
    /// and written to, customers get a unique prefix).
    #[arg(long)]
    database_url: Option<String>,
    /// Skip SQLite (only with --database-url).
    #[arg(long)]
    no_sqlite: bool,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout_secs: u64,
}

struct Figures {
    backend: String,
    batched_per_sec: f64,
    unbatched_per_sec: f64,
    http_per_sec: f64,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
    peak_rss_kib: Option<u64>,
}

impl Figures {
    /// The raw ceiling of the way the usage endpoint commits on this database.
    fn ceiling(&self) -> f64 {
        if self.backend == "sqlite" {
            self.batched_per_sec
        } else {
            self.unbatched_per_sec
        }
    }
}

/// Runs the benchmark and prints a table.
pub async fn run(args: &UsageBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut targets: Vec<String> = Vec::new();
    if !args.no_sqlite {
        targets.push(format!(
            "sqlite://{}",
            dir.path().join("bench-usage.db").display()
        ));
    }
    if let Some(url) = &args.database_url {
        targets.push(url.clone());
    }
    anyhow::ensure!(!targets.is_empty(), "nothing to benchmark");
    let plans = dir.path().join("bench-plans.toml");
    std::fs::write(&plans, CATALOG).context("writing the bench catalog")?;
    let mut all = Vec::new();
    for url in targets {
        let backend = if url.starts_with("sqlite:") {
            "sqlite"
        } else {
            "postgres"
        };
        eprintln!("benchmarking usage on {backend}…");
        all.push(bench_backend(backend, &url, &plans, args).await?);
    }
    println!(
        "\n{:<9} {:>16} {:>16} {:>14} {:>7} {:>9} {:>9} {:>15}",
        "backend",
        "batched/s",
        "unbatched/s",
        "http cons/s",
        "ratio",
        "p50 ms",
        "p99 ms",
        "server peak RSS"
    );
    for f in &all {
        println!(
            "{:<9} {:>16.0} {:>16.0} {:>14.0} {:>7.2} {:>9.2} {:>9.2} {:>15}",
            f.backend,
            f.batched_per_sec,
            f.unbatched_per_sec,
            f.http_per_sec,
            f.http_per_sec / f.ceiling().max(1.0),
            f.p50_ms,
            f.p99_ms,
            f.peak_rss_kib.map_or("n/a".to_string(), |k| format!(
                "{:.1} MiB",
                k as f64 / 1024.0
            )),
        );
    }
    for f in &all {
        println!(
            "{}: {} of {} HTTP consumes answered 200",
            f.backend, f.ok, args.consumes
        );
    }
    println!(
        "\nbatched = store.consume_batch of {} per commit, one after the other; unbatched = store.consume (one commit each) from {} concurrent tasks; neither over HTTP. http = {} consumes over {} keep-alive clients to a `billd serve` child process; {} customers. ratio = http / the ceiling of the endpoint's commit mode (sqlite: batched, postgres: unbatched).",
        args.clients, args.clients, args.consumes, args.clients, args.customers
    );
    Ok(())
}

async fn bench_backend(
    backend: &'static str,
    url: &str,
    plans: &Path,
    args: &UsageBenchArgs,
) -> anyhow::Result<Figures> {
    let run: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(8)
        .map(char::from)
        .collect();
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let catalog = Catalog::from_toml(CATALOG).context("the bench catalog")?;
    let customers: Vec<CustomerId> = (0..args.customers.max(1))
        .map(|i| CustomerId::parse(&format!("bench_{run}_{i}")))
        .collect::<Result<_, _>>()
        .context("customer ids")?;

    // Customers, then the raw ceiling, on a store this process opens.
    let (batched_per_sec, unbatched_per_sec) = {
        let store = billd_store::connect(url)
            .await
            .context("opening the store")?;
        store.migrate().await.context("migrating")?;
        let now = SystemClock.now();
        for customer in &customers {
            store
                .upsert_customer(
                    &CustomerProfile {
                        customer_id: customer.clone(),
                        email: None,
                        name: None,
                        preferred_currency: None,
                    },
                    now,
                )
                .await
                .context("creating bench customers")?;
        }
        let keys = usage_key_per_customer(store.as_ref(), &catalog, &customers, now).await?;
        let keys = Arc::new(keys);
        let batched = tokio::time::timeout(phase, batched_ceiling(&store, &keys, &run, args))
            .await
            .context("ceiling phase timed out")??;
        let unbatched = tokio::time::timeout(phase, ceiling(store, keys, &run, args))
            .await
            .context("unbatched ceiling phase timed out")??;
        (batched, unbatched)
    };

    // Through HTTP, against a real server process.
    let port = free_port()?;
    let api_key = format!("bench_app_key_{run}");
    let mut server =
        tokio::process::Command::new(std::env::current_exe().context("locating the billd binary")?)
            .arg("serve")
            // Not the caller's directory: a billd.toml there must not apply.
            .current_dir(plans.parent().unwrap_or(Path::new("/")))
            .env("BILLD_DATABASE_URL", url)
            .env("BILLD_LISTEN", format!("127.0.0.1:{port}"))
            .env("BILLD_PLANS", plans)
            .env("BILLD_API_KEYS", &api_key)
            // A Stripe key and secret keep dev mode (and its emulator) off; the
            // benchmark never needs Stripe.
            .env("BILLD_STRIPE_API_KEY", "sk_test_bench_unused")
            .env("BILLD_STRIPE_API_BASE", "http://127.0.0.1:9")
            .env("BILLD_STRIPE_WEBHOOK_SECRETS", "whsec_bench_unused")
            .env("BILLD_SMTP_URL", "")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting billd serve")?;
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    wait_until_up(&client, &base, &mut server).await?;

    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<Duration>();
    let customers = Arc::new(customers);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (client, base, next, ok, lat_tx, customers, api_key, run) = (
            client.clone(),
            base.clone(),
            next.clone(),
            ok.clone(),
            lat_tx.clone(),
            customers.clone(),
            api_key.clone(),
            run.clone(),
        );
        let total = args.consumes;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let customer = &customers[i % customers.len()];
                let sent = Instant::now();
                let answered = client
                    .post(format!("{base}/v1/customers/{customer}/usage/{FEATURE}"))
                    .bearer_auth(&api_key)
                    .json(&serde_json::json!({ "idempotency_key": format!("h_{run}_{i}") }))
                    .send()
                    .await
                    .map(|r| r.status().is_success());
                if let Ok(true) = answered {
                    ok.fetch_add(1, Ordering::Relaxed);
                    let _ = lat_tx.send(sent.elapsed());
                }
            }
        }));
    }
    drop(lat_tx);
    let rss_probe = tokio::spawn(async move {
        // VmHWM is the peak; sampling VmRSS as well keeps a figure if the
        // kernel does not report VmHWM.
        let mut peak = 0;
        loop {
            match pid
                .and_then(|p| proc_status_kib(p, "VmHWM").or_else(|| proc_status_kib(p, "VmRSS")))
            {
                Some(kib) => peak = peak.max(kib),
                None => return (peak > 0).then_some(peak),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let joined = tokio::time::timeout(phase, async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let peak_rss_kib = pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    rss_probe.abort();
    let _ = server.kill().await;
    joined.context("HTTP phase timed out")?;
    let mut latencies = Vec::with_capacity(args.consumes);
    while let Some(l) = lat_rx.recv().await {
        latencies.push(l);
    }
    latencies.sort();
    let ok = ok.load(Ordering::Relaxed);
    Ok(Figures {
        backend: backend.to_string(),
        batched_per_sec,
        unbatched_per_sec,
        http_per_sec: ok as f64 / elapsed,
        ok,
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
        peak_rss_kib,
    })
}

/// The counter each customer's consumes go to, as the API computes it.
async fn usage_key_per_customer(
    store: &dyn Store,
    catalog: &Catalog,
    customers: &[CustomerId],
    now: i64,
) -> anyhow::Result<Vec<(CustomerId, UsageKey)>> {
    let mut out = Vec::with_capacity(customers.len());
    for customer in customers {
        let record = store
            .get_customer(customer)
            .await?
            .context("a bench customer vanished")?;
        let key = usage_keys(&record.state, catalog, now)
            .into_iter()
            .find(|k| k.feature.as_str() == FEATURE)
            .context("the bench feature has no usage counter")?;
        out.push((customer.clone(), key));
    }
    Ok(out)
}

/// Consumes/s of `store.consume_batch` in batches of `args.clients`, one
/// after the other (the one writer of the usage endpoint on SQLite).
async fn batched_ceiling(
    store: &Arc<dyn Store>,
    keys: &[(CustomerId, UsageKey)],
    run: &str,
    args: &UsageBenchArgs,
) -> anyhow::Result<f64> {
    let requests: Vec<(UsageRequest, u64)> = (0..args.consumes)
        .map(|i| {
            let (customer, key) = &keys[i % keys.len()];
            let request = UsageRequest {
                customer_id: customer.clone(),
                key: key.clone(),
                amount: 1,
                idempotency_key: format!("b_{run}_{i}"),
            };
            (request, LIMIT)
        })
        .collect();
    let started = Instant::now();
    let mut applied = 0usize;
    for chunk in requests.chunks(args.clients.max(1)) {
        for answer in store.consume_batch(chunk, SystemClock.now()).await? {
            match answer? {
                UsageOutcome::Applied { .. } => applied += 1,
                UsageOutcome::LimitExceeded { .. } => anyhow::bail!("the bench limit was reached"),
            }
        }
    }
    Ok(applied as f64 / started.elapsed().as_secs_f64())
}

/// Consumes/s of `store.consume` from `args.clients` concurrent tasks.
async fn ceiling(
    store: Arc<dyn Store>,
    keys: Arc<Vec<(CustomerId, UsageKey)>>,
    run: &str,
    args: &UsageBenchArgs,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.clients.max(1) {
        let (store, keys, next, done, run) = (
            store.clone(),
            keys.clone(),
            next.clone(),
            done.clone(),
            run.to_string(),
        );
        let total = args.consumes;
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return anyhow::Ok(());
                }
                let (customer, key) = &keys[i % keys.len()];
                let request = UsageRequest {
                    customer_id: customer.clone(),
                    key: key.clone(),
                    amount: 1,
                    idempotency_key: format!("c_{run}_{i}"),
                };
                match store.consume(&request, LIMIT, SystemClock.now()).await? {
                    UsageOutcome::Applied { .. } => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    UsageOutcome::LimitExceeded { .. } => {
                        anyhow::bail!("the bench limit was reached")
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.context("a ceiling task panicked")??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

async fn wait_until_up(
    client: &reqwest::Client,
    base: &str,
    server: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = server.try_wait()? {
            anyhow::bail!("billd serve exited before answering: {status}");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "billd serve did not answer /healthz within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `kB` field of `/proc/<pid>/status` (Linux only; `None` elsewhere or
/// once the process is gone).
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_catalog_gives_free_customers_a_metered_counter() {
        let catalog = Catalog::from_toml(CATALOG).unwrap();
        let keys = usage_keys(
            &billd_core::CustomerState::default(),
            &catalog,
            1_800_000_000,
        );
        assert!(
            keys.iter().any(|k| k.feature.as_str() == FEATURE),
            "{keys:?}"
        );
    }

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let l: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&l, 0.50), 50.0);
        assert_eq!(percentile_ms(&l, 0.99), 99.0);
        assert!(percentile_ms(&[], 0.5).is_nan());
    }

    #[test]
    fn proc_status_reads_this_processes_peak_rss() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        }
    }
}
