//! The minimal servers the benchmarks compare billd with, each on the same
//! HTTP stack (axum on tokio, billd's response layer):
//! - `billd bench usage-ceiling` serves `POST /v1/customers/{id}/usage/{feature}`
//!   behind billd's bearer-key middleware, where a consume is nothing but
//!   one conditional counter UPDATE and one idempotency-key INSERT in a
//!   bare two-table schema ([`billd_store::ceiling::UsageCeiling`]), and
//!   `GET /v1/customers/{id}/entitlements` behind the same middleware,
//!   answering JSON bytes computed once (entitlement reads' ceiling);
//! - `billd bench webhooks-ceiling` serves `POST /webhooks/stripe`, where a
//!   delivery is verified as billd verifies it (Stripe's signature) and
//!   stored as (id unique, body) in a bare table, group-committed
//!   ([`billd_store::ceiling::InboxCeiling`]); with `--apply` it also
//!   applies what it stored, one upsert per event into a bare table of
//!   customers, in batches (`bench apply`'s ceiling).
//!
//! They run as child processes (hidden commands) so that they compete for
//! the cores as `billd serve` does; [`ServerProcess`] starts either kind
//! and reads its peak RSS.

use std::path::Path as FsPath;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_server::http::ApiKeys;
use billd_store::ceiling::{InboxCeiling, UsageCeiling};
use secrecy::SecretString;
use serde::Deserialize;

/// Options of the hidden `billd bench usage-ceiling`.
#[derive(Debug, clap::Args)]
pub struct CeilingArgs {
    /// `sqlite://…` (a file of its own) or `postgres://…`.
    #[arg(long)]
    database_url: String,
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// The one accepted app key.
    #[arg(long)]
    api_key: String,
    /// Table name prefix (PostgreSQL tables are dropped and created).
    #[arg(long)]
    prefix: String,
    /// Customers `<customer_prefix>0` … `<customer_prefix>{customers - 1}`
    /// have a counter from the start.
    #[arg(long)]
    customer_prefix: String,
    /// How many customers.
    #[arg(long)]
    customers: usize,
    /// Every counter's limit.
    #[arg(long)]
    limit: i64,
}

/// The request body: the bench always sends a key.
#[derive(Deserialize)]
struct Body {
    idempotency_key: String,
}

/// Serves until killed.
pub async fn run(args: &CeilingArgs) -> anyhow::Result<()> {
    let customers = (0..args.customers).map(|i| format!("{}{i}", args.customer_prefix));
    let ceiling = UsageCeiling::open(&args.database_url, &args.prefix, customers, args.limit)
        .await
        .context("creating the ceiling's tables")?;
    let keys = ApiKeys::new(vec![SecretString::from(args.api_key.clone())], Vec::new());
    let answer = cached_entitlements()?;
    let router = Router::new()
        .route(
            "/v1/customers/{id}/usage/{feature}",
            axum::routing::post(consume),
        )
        .route(
            "/v1/customers/{id}/entitlements",
            axum::routing::get(move |Path(_): Path<String>| {
                let answer = answer.clone();
                async move { ([(CONTENT_TYPE, "application/json")], answer) }
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(keys),
            billd_server::http::require_app_key,
        ))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(ceiling)
        .layer(axum::middleware::from_fn(billd_server::http::shape));
    listen_and_serve(&args.listen, router).await
}

/// The entitlements of a bench customer (free plan, nothing used) as JSON,
/// computed once: the read ceiling answers these bytes to every read, the
/// least a server that keeps entitlements in memory can do.
fn cached_entitlements() -> anyhow::Result<Bytes> {
    let catalog =
        billd_core::Catalog::from_toml(crate::bench_usage::CATALOG).context("the bench catalog")?;
    let now = billd_server::Clock::now(&billd_server::SystemClock);
    let answer = billd_core::entitlements(
        &billd_core::CustomerState::default(),
        &catalog,
        &billd_core::Usage::default(),
        now,
    );
    // With the final newline every JSON answer gets, as billd's memory
    // answers have it: `shape` then sends the bytes as they are.
    let mut json = serde_json::to_vec(&answer)?;
    json.push(b'\n');
    Ok(Bytes::from(json))
}

async fn listen_and_serve(listen: &str, router: Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    axum::serve(listener, router).await?;
    Ok(())
}

async fn consume(
    State(ceiling): State<UsageCeiling>,
    Path((customer, _feature)): Path<(String, String)>,
    Json(body): Json<Body>,
) -> Response {
    match ceiling.consume(customer, body.idempotency_key).await {
        Ok(Some(used)) => {
            Json(serde_json::json!({ "used": used, "limit": ceiling.limit() })).into_response()
        }
        Ok(None) => StatusCode::PAYMENT_REQUIRED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Options of the hidden `billd bench webhooks-ceiling`.
#[derive(Debug, clap::Args)]
pub struct InboxCeilingArgs {
    /// `sqlite://…` (a file of its own) or `postgres://…`.
    #[arg(long)]
    database_url: String,
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// The one webhook signing secret.
    #[arg(long)]
    secret: String,
    /// Table name prefix (the PostgreSQL table is dropped and created).
    #[arg(long)]
    prefix: String,
    /// Also apply what is stored ([`InboxCeiling::open_applying`]).
    #[arg(long)]
    apply: bool,
}

/// billd's default signature tolerance, so both reject alike.
const TOLERANCE_SECS: i64 = 300;

#[derive(Clone)]
struct Inbox {
    ceiling: InboxCeiling,
    secrets: Arc<[String]>,
}

/// The one field of the envelope the ceiling reads.
#[derive(Deserialize)]
struct Envelope {
    id: String,
}

/// Serves webhooks until killed.
pub async fn run_inbox(args: &InboxCeilingArgs) -> anyhow::Result<()> {
    let ceiling = if args.apply {
        InboxCeiling::open_applying(&args.database_url, &args.prefix).await
    } else {
        InboxCeiling::open(&args.database_url, &args.prefix).await
    }
    .context("creating the ceiling's tables")?;
    let router = Router::new()
        .route("/webhooks/stripe", axum::routing::post(deliver))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(Inbox {
            ceiling,
            secrets: vec![args.secret.clone()].into(),
        })
        .layer(axum::middleware::from_fn(billd_server::http::shape));
    listen_and_serve(&args.listen, router).await
}

async fn deliver(State(inbox): State<Inbox>, headers: HeaderMap, body: Bytes) -> Response {
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if billd_stripe::webhook::verify(signature, &body, &inbox.secrets, TOLERANCE_SECS, now).is_err()
    {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let Ok(Envelope { id }) = serde_json::from_str(&text) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    match inbox.ceiling.insert(id, text).await {
        Ok(_) => StatusCode::OK.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// A benchmarked server running as a child process, killed on drop.
pub struct ServerProcess {
    child: tokio::process::Child,
    /// Where it listens.
    pub addr: std::net::SocketAddr,
}

impl ServerProcess {
    /// Spawns `command` (which must listen on `port` of 127.0.0.1) and
    /// waits until it answers `GET /healthz`.
    pub async fn start(mut command: tokio::process::Command, port: u16) -> anyhow::Result<Self> {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a server")?;
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("the server exited before answering: {status}");
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the server did not answer /healthz within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(ServerProcess {
            child,
            addr: ([127, 0, 0, 1], port).into(),
        })
    }

    /// Its peak resident set so far (`VmHWM`), KiB; `None` off Linux.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        self.child.id().and_then(|p| proc_status_kib(p, "VmHWM"))
    }

    /// Kills it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// A `billd serve` command on `url`, listening on `port`, with the bench's
/// catalog, app key and webhook secret, run in `work_dir` (so that no
/// `billd.toml` of the caller's applies).
pub fn serve_command(
    work_dir: &FsPath,
    url: &str,
    port: u16,
    plans: &FsPath,
    api_key: &str,
    webhook_secret: &str,
) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("locating the billd binary")?;
    let mut command = tokio::process::Command::new(exe);
    command
        .arg("serve")
        .current_dir(work_dir)
        .env("BILLD_DATABASE_URL", url)
        .env("BILLD_LISTEN", format!("127.0.0.1:{port}"))
        .env("BILLD_PLANS", plans)
        .env("BILLD_API_KEYS", api_key)
        // A Stripe key keeps dev mode (and its emulator) off; no call
        // reaches Stripe in a benchmark.
        .env("BILLD_STRIPE_API_KEY", "sk_test_bench_unused")
        .env("BILLD_STRIPE_API_BASE", "http://127.0.0.1:9")
        .env("BILLD_STRIPE_WEBHOOK_SECRETS", webhook_secret)
        .env("BILLD_SMTP_URL", "")
        .env("RUST_LOG", "warn");
    Ok(command)
}

/// A `billd <args…>` command run in `work_dir`.
pub fn billd_command(work_dir: &FsPath, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
    let exe = std::env::current_exe().context("locating the billd binary")?;
    let mut command = tokio::process::Command::new(exe);
    command.args(args).current_dir(work_dir);
    Ok(command)
}

/// A random lower-case tag that keeps one run's ids, customers and tables
/// apart from earlier runs' in a shared database.
pub fn run_tag() -> String {
    use rand::Rng as _;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(8)
        .map(char::from)
        .collect::<String>()
        .to_lowercase()
}

/// A port free at the time of asking.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// A `kB` field of `/proc/<pid>/status` (Linux only; `None` elsewhere or
/// once the process is gone).
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// RSS in MiB for a table, `n/a` when unknown.
pub fn rss_mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_status_reads_this_processes_peak_rss() {
        if cfg!(target_os = "linux") {
            assert!(proc_status_kib(std::process::id(), "VmHWM").unwrap() > 0);
        }
    }
}
