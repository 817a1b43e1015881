//! `billd bench console`: fills a database with many customers and events
//! ([`billd_store::bench_data`]), starts `billd serve` on it as a child
//! process, logs in to the operator console and times every page (a
//! benchmark, not a test: nothing is asserted).
//!
//! Each page is requested `requests` times, one request at a time, each for
//! another customer or event, and timed from the request sent to the last
//! byte read over loopback: an upper bound of the server's time. The floor
//! is the log-in form, the same HTTP stack, session layer and HTML shell
//! with no database read.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use billd_server::{Clock, SystemClock};
use billd_store::bench_data::{seed_console, ConsoleSeed};

use crate::bench_ceiling::{free_port, rss_mib, run_tag, serve_command, ServerProcess};
use crate::bench_usage::percentile_ms;

/// What a page must render in at p99 (the console's target).
const TARGET_MS: f64 = 50.0;

/// Options of `billd bench console`.
#[derive(Debug, clap::Args)]
pub struct ConsoleBenchArgs {
    /// Customers to create.
    #[arg(long, default_value_t = 100_000)]
    customers: usize,
    /// Events per customer (received over 30 days; 1 % dead).
    #[arg(long, default_value_t = 10)]
    events_per_customer: usize,
    /// Requests per page.
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Also benchmark this database (e.g. `postgres://…`; it is migrated
    /// and written to, with a unique prefix on every id).
    #[arg(long)]
    database_url: Option<String>,
    /// Skip SQLite (only with --database-url).
    #[arg(long)]
    no_sqlite: bool,
}

/// A page's path for request `k` (each request another customer or event).
type PagePath = Box<dyn Fn(usize) -> String>;

/// One page's figures.
struct PageFigures {
    name: &'static str,
    ok: usize,
    p50_ms: f64,
    p99_ms: f64,
}

/// Runs the benchmark and prints a table per database.
pub async fn run(args: &ConsoleBenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut targets: Vec<(&'static str, String)> = Vec::new();
    if !args.no_sqlite {
        let path = dir.path().join("bench-console.db");
        targets.push(("sqlite", format!("sqlite://{}", path.display())));
    }
    if let Some(url) = &args.database_url {
        targets.push(("postgres", url.clone()));
    }
    anyhow::ensure!(!targets.is_empty(), "nothing to benchmark");
    let plans = dir.path().join("bench-plans.toml");
    std::fs::write(&plans, crate::bench_usage::CATALOG).context("writing the bench catalog")?;
    for (backend, url) in targets {
        bench_backend(backend, &url, &plans, args).await?;
    }
    Ok(())
}

async fn bench_backend(
    backend: &'static str,
    url: &str,
    plans: &Path,
    args: &ConsoleBenchArgs,
) -> anyhow::Result<()> {
    let run = run_tag();
    let seed = ConsoleSeed {
        prefix: format!("b{run}_"),
        customers: args.customers.max(1),
        events_per_customer: args.events_per_customer.max(1),
        now: SystemClock.now(),
    };
    {
        let store = billd_store::connect(url)
            .await
            .context("opening the store")?;
        store.migrate().await.context("migrating")?;
    }
    let started = Instant::now();
    seed_console(url, &seed)
        .await
        .context("filling the database")?;
    eprintln!(
        "{backend}: {} customers and {} events written in {:.1} s",
        seed.customers,
        seed.customers * seed.events_per_customer,
        started.elapsed().as_secs_f64()
    );

    let port = free_port()?;
    let admin_key = format!("bench_admin_key_{run}");
    let work_dir = plans.parent().unwrap_or(Path::new("/"));
    let mut command = serve_command(
        work_dir,
        url,
        port,
        plans,
        &format!("bench_app_key_{run}"),
        "whsec_bench_unused",
    )?;
    command
        .env("BILLD_ADMIN_API_KEYS", &admin_key)
        // No scheduled job runs during the measurement.
        .env("BILLD_SCHEDULER", "off");
    let server = ServerProcess::start(command, port).await?;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let login = client
        .post(format!("{base}/console/login"))
        .form(&[("key", admin_key.as_str())])
        .send()
        .await?;
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
        .context("the console gave no session cookie")?;

    let n = seed.customers;
    // A spread of customers: request k looks at customer pick(k).
    let pick = move |k: usize| (k.wrapping_mul(7_919) + 13) % n;
    let pages: Vec<(&'static str, PagePath)> = {
        let s = seed.clone();
        let s2 = seed.clone();
        let s3 = seed.clone();
        let s4 = seed.clone();
        let s5 = seed.clone();
        let s6 = seed.clone();
        vec![
            (
                "floor: log-in form",
                Box::new(|_| "/console/login".to_owned()),
            ),
            ("overview", Box::new(|_| "/console".to_owned())),
            (
                "customers (first page)",
                Box::new(|_| "/console/customers".to_owned()),
            ),
            (
                "customers by email start",
                Box::new(move |k| {
                    format!(
                        "/console/customers?query={}",
                        s.email(pick(k))
                            .to_uppercase()
                            .split('@')
                            .next()
                            .unwrap_or("")
                    )
                }),
            ),
            (
                "customers by Stripe id",
                Box::new(move |k| {
                    format!("/console/customers?query={}", s2.stripe_customer(pick(k)))
                }),
            ),
            (
                "one customer",
                Box::new(move |k| format!("/console/customers/{}", s3.customer(pick(k)))),
            ),
            (
                "events (newest)",
                Box::new(|_| "/console/events".to_owned()),
            ),
            (
                "events (dead)",
                Box::new(|_| "/console/events?status=dead".to_owned()),
            ),
            (
                "events of a customer",
                Box::new(move |k| format!("/console/events?customer={}", s4.customer(pick(k)))),
            ),
            (
                "events by type and day",
                Box::new(move |k| {
                    let day = billd_core::calendar::rfc3339(s5.now - 86_400 * (k % 29) as i64);
                    format!(
                        "/console/events?type=invoice.paid&from={0}&until={0}",
                        &day[..10]
                    )
                }),
            ),
            (
                "one event",
                Box::new(move |k| {
                    format!(
                        "/console/events/{}",
                        s6.event(pick(k), k % s6.events_per_customer)
                    )
                }),
            ),
            ("emails", Box::new(|_| "/console/emails".to_owned())),
            (
                "reconciliation",
                Box::new(|_| "/console/reconciliation".to_owned()),
            ),
            ("alerts", Box::new(|_| "/console/alerts".to_owned())),
        ]
    };
    let mut figures = Vec::new();
    for (name, path) in &pages {
        // One warm-up request: the first read of a page's tables.
        let _ = client
            .get(format!("{base}{}", path(0)))
            .header("Cookie", &cookie)
            .send()
            .await;
        let mut latencies = Vec::with_capacity(args.requests);
        let mut failures = Vec::new();
        for k in 0..args.requests {
            let target = format!("{base}{}", path(k + 1));
            let sent = Instant::now();
            let response = client.get(&target).header("Cookie", &cookie).send().await?;
            let status = response.status();
            let _ = response.bytes().await?;
            if status.is_success() {
                latencies.push(sent.elapsed());
            } else if failures.len() < 3 {
                failures.push(format!("{status} {target}"));
            }
        }
        for failure in &failures {
            eprintln!("{backend}: {name}: {failure}");
        }
        latencies.sort();
        figures.push(PageFigures {
            name,
            ok: latencies.len(),
            p50_ms: percentile_ms(&latencies, 0.50),
            p99_ms: percentile_ms(&latencies, 0.99),
        });
    }
    let rss = server.peak_rss_kib();
    server.stop().await;

    println!(
        "\n{backend}: {} customers, {} events; {} requests per page, one at a time",
        seed.customers,
        seed.customers * seed.events_per_customer,
        args.requests
    );
    println!(
        "{:<26} {:>6} {:>8} {:>8} {:>10}",
        "page", "200s", "p50 ms", "p99 ms", "p99 ≤ 50"
    );
    let floor = figures.first().map_or(f64::NAN, |f| f.p99_ms);
    for f in &figures {
        println!(
            "{:<26} {:>6} {:>8.2} {:>8.2} {:>10}",
            f.name,
            f.ok,
            f.p50_ms,
            f.p99_ms,
            if f.p99_ms <= TARGET_MS { "yes" } else { "NO" }
        );
    }
    let worst = figures
        .iter()
        .skip(1)
        .max_by(|a, b| a.p99_ms.total_cmp(&b.p99_ms));
    if let Some(w) = worst {
        println!(
            "{backend}: slowest page {} at p99 {:.2} ms ({:.1}× the floor's {:.2} ms); server peak RSS {} MiB",
            w.name,
            w.p99_ms,
            w.p99_ms / floor,
            floor,
            rss_mib(rss)
        );
    }
    Ok(())
}
