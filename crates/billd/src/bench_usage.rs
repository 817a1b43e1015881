//! `billd bench usage`: drives `POST /v1/customers/{id}/usage/{feature}`
//! and `GET /v1/customers/{id}/entitlements` of a real `billd serve`
//! process over HTTP keep-alive and prints figures (a benchmark, not a
//! test: nothing is asserted).
//!
//! For each database it measures, in one run and with the same load:
//! 1. the ceiling: a minimal server for the same work
//!    ([`crate::bench_ceiling`], a child process like billd's: same HTTP
//!    stack and key check, one conditional counter UPDATE and one
//!    idempotency-key INSERT per consume, group-committed, bare schema);
//! 2. billd (`billd serve` as a child process);
//!
//! each with `clients` concurrent keep-alive clients (closed loop: each
//! sends its next request when the answer to the previous one arrives),
//! then with one client (its p50 is the latency an app sees on an idle
//! server), and each server's peak RSS (`VmHWM` from `/proc/<pid>/status`).
//! Then billd's entitlement reads with `clients` clients. Every consume has
//! a unique idempotency key; a one-feature catalog's free plan allows 10^12
//! consumes, so the limit is never what answers.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use billd_core::CustomerId;
use billd_server::{Clock, SystemClock};
use billd_store::CustomerProfile;

use crate::bench_ceiling::{
    billd_command, free_port, rss_mib, run_tag, serve_command, ServerProcess,
};

/// The metered feature every request consumes.
const FEATURE: &str = "bench_calls";

/// The bench plan's limit (the catalog's `bench_calls`).
const LIMIT: u64 = 1_000_000_000_000;

/// The plans file the server uses (also `bench webhooks`' `billd serve`).
pub(crate) const CATALOG: &str = r#"
currency = "eur"

[features]
bench_calls = { kind = "metered" }

[plans.free]
limits = { bench_calls = 1000000000000 }
"#;

/// Options of `billd bench usage`.
#[derive(Debug, clap::Args)]
pub struct UsageBenchArgs {
    /// Consume requests sent with `clients` clients (and entitlement reads).
    #[arg(long, default_value_t = 20_000)]
    consumes: usize,
    /// Consume requests sent by the single client.
    #[arg(long, default_value_t = 2_000)]
    single: usize,
    /// Entitlement reads sent with `clients` clients (to each server).
    #[arg(long, default_value_t = 100_000)]
    reads: usize,
    /// Concurrent keep-alive HTTP clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Distinct customers the requests are spread over.
    #[arg(long, default_value_t = 1_000)]
    customers: usize,
    /// Also benchmark this database (e.g. `postgres://…`; it is migrated
    /// and written to, customers get a unique prefix, the ceiling's tables
    /// are created and dropped).
    #[arg(long)]
    database_url: Option<String>,
    /// Skip SQLite (only with --database-url).
    #[arg(long)]
    no_sqlite: bool,
    /// Give up on any one phase after this many seconds.
    #[arg(long, default_value_t = 120)]
    phase_timeout_secs: u64,
}

/// One load phase's figures.
#[derive(Debug, Clone, Copy)]
struct Load {
    per_sec: f64,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// One server's figures.
struct Served {
    many: Load,
    single: Load,
    peak_rss_kib: Option<u64>,
}

struct Figures {
    backend: &'static str,
    ceiling: Served,
    billd: Served,
    ceiling_reads: Load,
    reads: Load,
}

/// Runs the benchmark and prints a table.
pub async fn run(args: &UsageBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut targets: Vec<(&'static str, String, String)> = Vec::new();
    if !args.no_sqlite {
        let at = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        targets.push(("sqlite", at("bench-usage.db"), at("bench-ceiling.db")));
    }
    if let Some(url) = &args.database_url {
        targets.push(("postgres", url.clone(), url.clone()));
    }
    anyhow::ensure!(!targets.is_empty(), "nothing to benchmark");
    let plans = dir.path().join("bench-plans.toml");
    std::fs::write(&plans, CATALOG).context("writing the bench catalog")?;
    let mut all = Vec::new();
    for (backend, url, ceiling_url) in targets {
        eprintln!("benchmarking usage on {backend}…");
        all.push(bench_backend(backend, &url, &ceiling_url, &plans, args).await?);
    }
    let rss = rss_mib;
    println!(
        "\n{:<9} {:<8} {:>10} {:>8} {:>8} {:>12} {:>9}",
        "backend", "server", "cons/s", "p50 ms", "p99 ms", "1-client p50", "RSS MiB"
    );
    for f in &all {
        for (name, s) in [("ceiling", &f.ceiling), ("billd", &f.billd)] {
            println!(
                "{:<9} {:<8} {:>10.0} {:>8.2} {:>8.2} {:>12.3} {:>9}",
                f.backend,
                name,
                s.many.per_sec,
                s.many.p50_ms,
                s.many.p99_ms,
                s.single.p50_ms,
                rss(s.peak_rss_kib)
            );
        }
    }
    println!();
    for f in &all {
        println!(
            "{}: billd/ceiling consumes/s {:.2}, p99 {:.2}×, 1-client p50 {:.2}×",
            f.backend,
            f.billd.many.per_sec / f.ceiling.many.per_sec.max(1.0),
            f.billd.many.p99_ms / f.ceiling.many.p99_ms,
            f.billd.single.p50_ms / f.ceiling.single.p50_ms,
        );
        println!(
            "{}: entitlement reads: billd {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; read ceiling {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; billd/ceiling reads/s {:.2}, p99 {:.2}×",
            f.backend,
            f.reads.per_sec,
            f.reads.p50_ms,
            f.reads.p99_ms,
            f.ceiling_reads.per_sec,
            f.ceiling_reads.p50_ms,
            f.ceiling_reads.p99_ms,
            f.reads.per_sec / f.ceiling_reads.per_sec.max(1.0),
            f.reads.p99_ms / f.ceiling_reads.p99_ms,
        );
        println!(
            "{}: 200s: ceiling {}+{}, billd {}+{} of {}+{} consumes; ceiling {}, billd {} of {} reads",
            f.backend,
            f.ceiling.many.ok,
            f.ceiling.single.ok,
            f.billd.many.ok,
            f.billd.single.ok,
            args.consumes,
            args.single,
            f.ceiling_reads.ok,
            f.reads.ok,
            args.reads
        );
    }
    println!(
        "\n{} consumes over {} keep-alive clients, then {} consumes from 1 client, then {} entitlement reads over {} keep-alive clients (raw HTTP/1.1), to each server, {} customers. ceiling = the same HTTP stack and key check, one conditional UPDATE + one key INSERT per consume, group-committed (sqlite) or one statement each (postgres), bare schema; a read answers JSON bytes computed once.",
        args.consumes, args.clients, args.single, args.reads, args.clients, args.customers
    );
    Ok(())
}

async fn bench_backend(
    backend: &'static str,
    url: &str,
    ceiling_url: &str,
    plans: &Path,
    args: &UsageBenchArgs,
) -> anyhow::Result<Figures> {
    let run = run_tag();
    let phase = Duration::from_secs(args.phase_timeout_secs);
    let prefix = format!("bench_{run}_");
    let customers: Vec<CustomerId> = (0..args.customers.max(1))
        .map(|i| CustomerId::parse(&format!("{prefix}{i}")))
        .collect::<Result<_, _>>()
        .context("customer ids")?;
    let customers = Arc::new(customers);
    let api_key = format!("bench_app_key_{run}");
    let work_dir = plans.parent().unwrap_or(Path::new("/"));

    // The ceiling first, on its own tables (SQLite: its own file).
    let port = free_port()?;
    let table_prefix = format!("bench_ceiling_{run}");
    let listen = format!("127.0.0.1:{port}");
    let (count, limit) = (customers.len().to_string(), LIMIT.to_string());
    let command = billd_command(
        work_dir,
        &[
            "bench",
            "usage-ceiling",
            "--database-url",
            ceiling_url,
            "--listen",
            &listen,
            "--api-key",
            &api_key,
            "--prefix",
            &table_prefix,
            "--customer-prefix",
            &prefix,
            "--customers",
            &count,
            "--limit",
            &limit,
        ],
    )?;
    let ceiling = serve(command, port, &customers, &api_key, &run, "c", args, phase).await;
    if backend == "postgres" {
        billd_store::ceiling::UsageCeiling::drop_tables(ceiling_url, &table_prefix).await;
    }
    let (ceiling, ceiling_reads) = ceiling?;

    // billd, on a store this process migrates and fills with customers.
    {
        let store = billd_store::connect(url)
            .await
            .context("opening the store")?;
        store.migrate().await.context("migrating")?;
        let now = SystemClock.now();
        for customer in customers.iter() {
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
    }
    let port = free_port()?;
    let command = serve_command(work_dir, url, port, plans, &api_key, "whsec_bench_unused")?;
    let (billd, reads) = serve(command, port, &customers, &api_key, &run, "h", args, phase).await?;
    Ok(Figures {
        backend,
        ceiling,
        billd,
        ceiling_reads,
        reads,
    })
}

/// Starts a server, runs the consume phases then the entitlement reads
/// against it, then kills it.
#[allow(clippy::too_many_arguments, reason = "one call per server")]
async fn serve(
    command: tokio::process::Command,
    port: u16,
    customers: &Arc<Vec<CustomerId>>,
    api_key: &str,
    run: &str,
    tag: &str,
    args: &UsageBenchArgs,
    phase: Duration,
) -> anyhow::Result<(Served, Load)> {
    let server = ServerProcess::start(command, port).await?;
    let base = Arc::<str>::from(format!("http://127.0.0.1:{port}"));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()?;
    let consume = |tag: String| {
        let (client, base, customers, api_key) = (
            client.clone(),
            base.clone(),
            customers.clone(),
            api_key.to_owned(),
        );
        move |i: usize| {
            let customer = &customers[i % customers.len()];
            client
                .post(format!("{base}/v1/customers/{customer}/usage/{FEATURE}"))
                .bearer_auth(&api_key)
                .json(&serde_json::json!({ "idempotency_key": format!("{tag}{i}") }))
        }
    };
    let many = tokio::time::timeout(
        phase,
        drive(
            args.clients,
            args.consumes,
            consume(format!("{tag}_{run}_m")),
        ),
    )
    .await
    .context("the concurrent consume phase timed out")?;
    let single = tokio::time::timeout(
        phase,
        drive(1, args.single, consume(format!("{tag}_{run}_s"))),
    )
    .await
    .context("the single-client consume phase timed out")?;
    // Reads go through the raw client: reqwest costs the shared cores more
    // than a memory answer costs the server.
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(
        customers
            .iter()
            .map(|customer| {
                format!(
                    "GET /v1/customers/{customer}/entitlements HTTP/1.1\r\n\
                     Host: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n\r\n"
                )
                .into_bytes()
            })
            .collect(),
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let read_load =
        tokio::time::timeout(phase, drive_raw(addr, args.clients, args.reads, requests))
            .await
            .context("the entitlement read phase timed out")?;
    let peak_rss_kib = server.peak_rss_kib();
    server.stop().await;
    Ok((
        Served {
            many,
            single,
            peak_rss_kib,
        },
        read_load?,
    ))
}

/// Sends `total` requests made by `request(i)` from `clients` closed-loop
/// clients; counts and times the 2xx answers.
async fn drive<F>(clients: usize, total: usize, request: F) -> Load
where
    F: Fn(usize) -> reqwest::RequestBuilder + Clone + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (next, request) = (next.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return latencies;
                }
                let sent = Instant::now();
                if let Ok(r) = request(i).send().await {
                    let ok = r.status().is_success();
                    // The whole answer, as a client would read it.
                    if r.bytes().await.is_ok() && ok {
                        latencies.push(sent.elapsed());
                    }
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        if let Ok(l) = t.await {
            latencies.extend(l);
        }
    }
    load_of(latencies, started)
}

/// The figures of a phase that started at `started` and just ended.
fn load_of(mut latencies: Vec<Duration>, started: Instant) -> Load {
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Load {
        per_sec: latencies.len() as f64 / elapsed,
        ok: latencies.len(),
        p50_ms: percentile_ms(&latencies, 0.50),
        p99_ms: percentile_ms(&latencies, 0.99),
    }
}

/// Sends `total` requests, request `i` being `requests[i % len]`, over
/// `clients` closed-loop HTTP/1.1 keep-alive connections written and read
/// by hand (status line, `Content-Length` body): the cheapest client, so
/// that the cores it shares with the server go to the server. Counts and
/// times the 2xx answers; an error ends that connection.
async fn drive_raw(
    addr: std::net::SocketAddr,
    clients: usize,
    total: usize,
    requests: Arc<Vec<Vec<u8>>>,
) -> anyhow::Result<Load> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut connections = Vec::new();
    for _ in 0..clients.max(1) {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        connections.push(stream);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut stream in connections {
        let (next, requests) = (next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let mut latencies = Vec::new();
            let mut buf = Vec::with_capacity(8192);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || requests.is_empty() {
                    return latencies;
                }
                let sent = Instant::now();
                if stream
                    .write_all(&requests[i % requests.len()])
                    .await
                    .is_err()
                {
                    return latencies;
                }
                buf.clear();
                let Some(ok) = read_answer(&mut stream, &mut buf).await else {
                    return latencies;
                };
                if ok {
                    latencies.push(sent.elapsed());
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(total);
    for t in tasks {
        if let Ok(l) = t.await {
            latencies.extend(l);
        }
    }
    Ok(load_of(latencies, started))
}

/// Reads one HTTP/1.1 answer (headers, then a `Content-Length` body) into
/// `buf`; whether its status is 2xx, `None` when the connection failed.
async fn read_answer(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<bool> {
    use tokio::io::AsyncReadExt as _;
    let mut chunk = [0_u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buf[..end]).ok()?;
            let ok = head.split(' ').nth(1)?.starts_with('2');
            let length: usize = head
                .split("\r\n")
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Some(ok);
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The nearest-rank percentile `p` of sorted latencies, in ms (NaN for none).
pub(crate) fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
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
        let catalog = billd_core::Catalog::from_toml(CATALOG).unwrap();
        let keys = billd_core::usage_keys(
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
}
