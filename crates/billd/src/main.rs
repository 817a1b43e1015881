//! billd's command-line entry point: `serve` (default), `migrate`,
//! `events list|show|replay`, `audit <customer>`, `reconcile`, `bench webhooks|usage`, `doctor`,
//! `sim` and `reference`.

mod bench;
mod bench_apply;
mod bench_ceiling;
mod bench_console;
mod bench_usage;
mod billing;
mod config;
mod dev;
mod doctor;
mod loadgen;
mod reconcile_cmd;
mod reference;
mod sim_cmd;
mod table;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use billd_server::{
    Backoff, IngestConfig, ServerConfig, SystemClock, WebhookConfig, WorkerConfig, Workers,
};
use billd_store::{EventFilter, EventStatus, Store};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigErrors, LogFormat};
use crate::dev::DevMode;

/// `billd --version`: the crate version, the git revision it was built
/// from and the Stripe API version billd speaks (pinned, see
/// `billd_stripe::API_VERSION`).
fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        format!(
            "{} (git {}, Stripe API {})",
            env!("CARGO_PKG_VERSION"),
            env!("BILLD_GIT_REVISION"),
            billd_stripe::API_VERSION
        )
    })
}

/// billd: a self-hosted Stripe billing engine.
#[derive(Debug, Parser)]
#[command(name = "billd", version = version(), about, propagate_version = true)]
struct Cli {
    /// Path to a billd.toml (default: ./billd.toml when it exists). Its
    /// settings override the built-in defaults; BILLD_* environment
    /// variables override both.
    #[arg(long, env = "BILLD_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs migrations, then serves HTTP and processes the inbox (the default).
    Serve,
    /// Applies database migrations and exits.
    Migrate,
    /// Inspects and replays the webhook inbox.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Runs the built-in Stripe emulator alone (test mode: any sk_test_ key).
    Sim(sim_cmd::SimArgs),
    /// Checks the configuration, database, Stripe key, webhook endpoint,
    /// prices, portal and tax settings; exits non-zero on any failure.
    Doctor(doctor::DoctorArgs),
    /// Compares every Stripe subscription with billd's state, heals drift
    /// and ingests the events Stripe could not deliver; prints the drift.
    Reconcile(reconcile_cmd::ReconcileArgs),
    /// Shows a customer's billing audit log, newest first.
    Audit {
        /// The app's customer id.
        customer: String,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// One JSON object per row and line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Prints a reference page generated from the code: the configuration
    /// (`config`), the HTTP API from the OpenAPI document (`api`), the
    /// OpenAPI document as JSON (`openapi`), or an example billd.toml
    /// (`toml`) or environment file (`env`) listing every setting.
    Reference {
        /// Which page.
        #[arg(value_enum)]
        page: reference::Page,
    },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// Lists inbox events, newest first.
    List {
        /// Only events with this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Only events of this type (e.g. invoice.paid).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// At most this many events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// One JSON object per event and line (JSON Lines) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Shows one event: payload, status, attempts, last error.
    Show {
        /// The Stripe event id (evt_…).
        id: String,
    },
    /// Puts events back to pending so the worker processes them again.
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ReplayArgs {
    /// The Stripe event id (evt_…) to replay.
    id: Option<String>,
    /// Replay every event with this status.
    #[arg(long, value_enum)]
    status: Option<ReplayStatus>,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Drives the real webhook endpoint on loopback and prints throughput,
    /// ack latency, the store's raw group-commit ceiling, and a `billd
    /// serve` child against a minimal durable inbox server (rates, latency
    /// at a fixed offered rate, peak RSS).
    Webhooks(bench::BenchArgs),
    /// Drives the usage (consume) endpoint of a `billd serve` child process
    /// and prints consumes/s, latency, the store's raw ceiling and the
    /// server's peak RSS.
    Usage(bench_usage::UsageBenchArgs),
    /// Fills a database with many customers and events, starts a `billd
    /// serve` child on it and prints each console page's latency (p50,
    /// p99) against the log-in form's.
    Console(bench_console::ConsoleBenchArgs),
    /// Sends webhooks to a `billd serve` child process and prints how soon
    /// they are applied (acknowledged → applied latency at a fixed rate, a
    /// one-customer burst, sustained applied events/s, peak RSS) against a
    /// minimal server that stores and applies the same events.
    Apply(bench_apply::ApplyBenchArgs),
    /// The minimal consume server `bench usage` measures billd against
    /// (started by it as a child process).
    #[command(hide = true)]
    UsageCeiling(bench_ceiling::CeilingArgs),
    /// The minimal durable webhook inbox `bench webhooks` measures billd
    /// against, and with `--apply` the minimal applying one of `bench
    /// apply` (started by them as a child process).
    #[command(hide = true)]
    WebhooksCeiling(bench_ceiling::InboxCeilingArgs),
}

/// An inbox status on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    /// Acknowledged, not derived by the worker yet.
    Received,
    Pending,
    Processing,
    Processed,
    Failed,
    Dead,
    Skipped,
    Unlinked,
}

impl From<StatusArg> for EventStatus {
    fn from(s: StatusArg) -> Self {
        match s {
            StatusArg::Received => EventStatus::Received,
            StatusArg::Pending => EventStatus::Pending,
            StatusArg::Processing => EventStatus::Processing,
            StatusArg::Processed => EventStatus::Processed,
            StatusArg::Failed => EventStatus::Failed,
            StatusArg::Dead => EventStatus::Dead,
            StatusArg::Skipped => EventStatus::Skipped,
            StatusArg::Unlinked => EventStatus::Unlinked,
        }
    }
}

/// Statuses that may be replayed in bulk. Replaying `processed` events in
/// bulk would re-apply history, so it is deliberately not offered here.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReplayStatus {
    Dead,
    Failed,
    Skipped,
    Unlinked,
}

impl From<ReplayStatus> for EventStatus {
    fn from(s: ReplayStatus) -> Self {
        match s {
            ReplayStatus::Dead => EventStatus::Dead,
            ReplayStatus::Failed => EventStatus::Failed,
            ReplayStatus::Skipped => EventStatus::Skipped,
            ReplayStatus::Unlinked => EventStatus::Unlinked,
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = load_config(&cli);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = runtime_threads(&cli, config.as_ref()) {
        runtime.worker_threads(threads);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("billd: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("billd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The configuration file in effect: `--config`/`BILLD_CONFIG`, else a
/// `billd.toml` in the working directory when there is one.
fn config_file(cli: &Cli) -> Option<PathBuf> {
    cli.config
        .clone()
        .or_else(|| Some(PathBuf::from("billd.toml")).filter(|p| p.is_file()))
}

/// The configuration, loaded once before the runtime starts (it sizes the
/// runtime), for the commands that run on it; benchmarks, the emulator and
/// doctor (which reports on the configuration itself) get `None`.
fn load_config(cli: &Cli) -> Option<Result<Config, ConfigErrors>> {
    match &cli.command {
        Some(
            Command::Bench(_) | Command::Sim(_) | Command::Doctor(_) | Command::Reference { .. },
        ) => None,
        _ => {
            let env: HashMap<String, String> = std::env::vars().collect();
            Some(Config::load(config_file(cli).as_deref(), &env))
        }
    }
}

/// Async runtime threads for this command when set (`BILLD_WORKER_THREADS`
/// for `serve`, `--worker-threads` for `bench webhooks`); otherwise tokio's
/// default, one per core. When the configuration does not load, the runtime
/// still starts and `run` reports the configuration's errors.
fn runtime_threads(cli: &Cli, config: Option<&Result<Config, ConfigErrors>>) -> Option<usize> {
    let configured = match &cli.command {
        None | Some(Command::Serve) => config
            .and_then(|loaded| loaded.as_ref().ok())
            .map_or(0, |c| c.worker_threads),
        Some(Command::Bench(BenchCommand::Webhooks(args))) => args.worker_threads(),
        Some(_) => 0,
    };
    (configured > 0).then_some(configured)
}

async fn run(cli: Cli, config: Option<Result<Config, ConfigErrors>>) -> anyhow::Result<()> {
    if let Some(Command::Bench(BenchCommand::Webhooks(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench::run(args).await;
    }
    if let Some(Command::Bench(BenchCommand::Usage(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench_usage::run(args).await;
    }
    if let Some(Command::Bench(BenchCommand::Console(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench_console::run(args).await;
    }
    if let Some(Command::Bench(BenchCommand::Apply(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench_apply::run(args).await;
    }
    if let Some(Command::Bench(BenchCommand::UsageCeiling(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench_ceiling::run(args).await;
    }
    if let Some(Command::Bench(BenchCommand::WebhooksCeiling(args))) = &cli.command {
        init_tracing(LogFormat::Text, "warn");
        return bench_ceiling::run_inbox(args).await;
    }
    if let Some(Command::Sim(args)) = &cli.command {
        init_tracing(LogFormat::Text, "info");
        return sim_cmd::run(args).await;
    }
    if let Some(Command::Reference { page }) = &cli.command {
        print!("{}", reference::render(*page));
        return Ok(());
    }
    if let Some(Command::Doctor(args)) = &cli.command {
        // An invalid configuration is one of doctor's findings, not a reason
        // to stop before the report.
        let env: HashMap<String, String> = std::env::vars().collect();
        init_tracing(LogFormat::Text, "error");
        return doctor::run(config_file(&cli).as_deref(), &env, args).await;
    }
    let config = config.context("no configuration was loaded for this command")??;
    let serving = matches!(cli.command, None | Some(Command::Serve));
    init_tracing(config.log_format, if serving { "info" } else { "warn" });
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let _lock = exclusive(
                &config,
                "migrate",
                "stop it first: `billd serve` applies the migrations itself when it starts",
            )?;
            let store = open_store(&config).await?;
            store.migrate().await.context("applying migrations")?;
            println!("migrations applied to {}", config.database_url.redacted());
            Ok(())
        }
        Command::Events(cmd) => {
            let _lock = match &cmd {
                EventsCommand::Replay(_) => Some(exclusive(
                    &config,
                    "events replay",
                    "replay through its admin API instead (POST /v1/admin/events/{id}/replay or POST /v1/admin/events/replay)",
                )?),
                EventsCommand::List { .. } | EventsCommand::Show { .. } => None,
            };
            let store = open_reading(&config).await?;
            events(store.as_ref(), cmd).await
        }
        Command::Bench(_) | Command::Sim(_) | Command::Doctor(_) | Command::Reference { .. } => {
            Ok(())
        }
        Command::Reconcile(args) => {
            let _lock = exclusive(
                &config,
                "reconcile",
                "stop it for the reconciliation, or resync customers one at a time through its admin API (POST /v1/admin/customers/{id}/resync)",
            )?;
            let store = open_store(&config).await?;
            store.migrate().await.context("applying migrations")?;
            reconcile_cmd::run(&config, store, &args).await
        }
        Command::Audit {
            customer,
            limit,
            json,
        } => {
            let store = open_reading(&config).await?;
            billing::audit(store.as_ref(), &customer, limit, json).await
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    // Colour codes only for a terminal: a log file or journald would keep
    // them as noise in every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A second initialisation (tests) is harmless, so its error is ignored.
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    billd_store::connect(config.database_url.expose())
        .await
        .with_context(|| format!("opening the database {}", config.database_url.redacted()))
}

/// The SQLite file's serving lock, for a command that writes the database
/// and so must not run beside `billd serve` (whose entitlement answers from
/// memory rely on every write going through it): refused naming the serving
/// process and what to do instead. `None` on PostgreSQL, where any number
/// of processes write.
fn exclusive(
    config: &Config,
    command: &str,
    instead: &str,
) -> anyhow::Result<Option<billd_store::ServeLock>> {
    match billd_store::ServeLock::acquire(config.database_url.expose()) {
        Ok(lock) => Ok(lock),
        Err(billd_store::ServeLockError::Held {
            database,
            holder,
            lock,
        }) => Err(anyhow::anyhow!(
            "billd {command} writes the SQLite database {}, which a running billd serves ({holder}; lock file {}); one process writes a SQLite file while it is served: {instead}",
            database.display(),
            lock.display()
        )),
        Err(e) => Err(e.into()),
    }
}

/// The store for a command that only reads: migrated first unless a running
/// `billd serve` holds the SQLite file (it migrated it when it started, and
/// this process must not write beside it).
async fn open_reading(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    // `Some(lock)`: no server holds the file (`lock` is `None` on
    // PostgreSQL, which any number of processes migrate and write).
    let free = match billd_store::ServeLock::acquire(config.database_url.expose()) {
        Ok(lock) => Some(lock),
        Err(billd_store::ServeLockError::Held { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let store = open_store(config).await?;
    if let Some(lock) = free {
        store.migrate().await.context("applying migrations")?;
        // Released at once: a read-only command must not keep a server
        // from starting.
        drop(lock);
    }
    Ok(store)
}

/// The server settings a configuration implies.
fn server_config(config: &Config) -> ServerConfig {
    ServerConfig {
        webhook: WebhookConfig {
            secrets: config.stripe_webhook_secrets.clone(),
            tolerance_secs: config.webhook_tolerance_secs,
        },
        ingest: IngestConfig {
            max_batch: config.ingest_max_batch,
            ..IngestConfig::default()
        },
        worker: WorkerConfig {
            max_attempts: config.inbox_max_attempts,
            lease_secs: config.inbox_lease_secs,
            heartbeat: Duration::from_secs(
                u64::try_from(config.inbox_lease_secs / 3)
                    .unwrap_or(1)
                    .max(1),
            ),
            concurrency: config.worker_concurrency,
            round_events: config.inbox_batch,
            round_events_under_ingest: config.inbox_batch_under_ingest,
            poll_interval: Duration::from_secs(1),
            batch: WorkerConfig::default().batch,
            backoff: Backoff {
                base_secs: config.inbox_backoff_base_secs,
                cap_secs: config.inbox_backoff_cap_secs,
            },
        },
        ready_max_lag_secs: config.ready_max_lag_secs,
    }
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("BILLD_LISTEN: cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut dev = DevMode::apply(&mut config, Path::new(dev::STATE_DIR), addr).await?;
    tracing::info!(config = %config.summary(), "starting billd");
    // Held until this function returns (or the process dies).
    let serve_lock = billd_store::ServeLock::acquire(config.database_url.expose())?;
    let store = open_store(&config).await?;
    store.migrate().await.context("applying migrations")?;
    if let Some(lock) = &serve_lock {
        // This process alone serves the file: every lease and claim left
        // in it belongs to a process that died, so release them now rather
        // than after their leases.
        let now = billd_server::Clock::now(&SystemClock);
        let released = store
            .release_all_claims(now)
            .await
            .context("releasing the claims of a previous process")?;
        tracing::info!(
            lock = %lock.path().display(),
            events = released.events,
            outbox = released.outbox,
            jobs = released.jobs,
            "serving lock taken; claims left by a previous process released"
        );
    }
    let mut billing_config = billing::billing_config(&config)?;
    billing_config.delivery =
        billing::delivery(&config, store.clone(), billing_config.outbox.max_attempts)?;
    if let Some(catalog) = dev.take_catalog() {
        billing_config.catalog = Arc::new(catalog);
    }
    if dev.is_active() {
        eprintln!("{}", dev.banner(&format!("http://{addr}")));
    }
    let running = billd_server::billing::start_billing(
        listener,
        store,
        server_config(&config),
        billing_config,
        Arc::new(SystemClock),
        Workers::Run,
    )?;
    tracing::info!(%addr, "billd is listening");
    let cancel = running.cancel_token();
    tokio::spawn(stop_on_signal(cancel));
    running.wait().await?;
    dev.shutdown().await;
    tracing::info!("billd stopped");
    Ok(())
}

async fn stop_on_signal(cancel: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    cancel.cancel();
}

async fn events(store: &dyn Store, cmd: EventsCommand) -> anyhow::Result<()> {
    let now = billd_server::Clock::now(&SystemClock);
    match cmd {
        EventsCommand::List {
            status,
            event_type,
            limit,
            json,
        } => {
            let rows = store
                .list_events(&EventFilter {
                    status: status.map(EventStatus::from),
                    event_type,
                    limit,
                })
                .await?;
            if json {
                print!("{}", table::json_lines(&events_json(&rows)));
            } else {
                print!("{}", events_table(&rows));
            }
            Ok(())
        }
        EventsCommand::Show { id } => {
            let event = store
                .get_event(&id)
                .await?
                .with_context(|| format!("no event {id} in the inbox"))?;
            let payload: serde_json::Value = serde_json::from_str(&event.payload)
                .unwrap_or_else(|_| serde_json::Value::String(event.payload.clone()));
            let mut shown = serde_json::to_value(&event)?;
            shown["payload"] = payload;
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        EventsCommand::Replay(ReplayArgs { id, status }) => {
            if let Some(id) = id {
                if !store.requeue_event(&id, now).await? {
                    anyhow::bail!("no event {id} in the inbox");
                }
                println!("{id} requeued");
            } else if let Some(status) = status {
                let status = EventStatus::from(status);
                let n = store.requeue_by_status(status, now).await?;
                println!("{n} {} event(s) requeued", status.as_str());
            }
            Ok(())
        }
    }
}

/// `billd events list`'s table: times in RFC 3339 UTC, the error last.
fn events_table(rows: &[billd_store::StoredEvent]) -> String {
    use table::Align::{Left, Right};
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                e.event_type.clone(),
                e.status.as_str().to_string(),
                e.attempts.to_string(),
                table::rfc3339(e.created),
                table::rfc3339(e.received_at),
                e.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table::render(
        &[
            ("ID", Left),
            ("TYPE", Left),
            ("STATUS", Left),
            ("ATTEMPTS", Right),
            ("CREATED", Left),
            ("RECEIVED", Left),
            ("LAST ERROR", Left),
        ],
        &cells,
    )
}

/// `billd events list --json`: one object per event (no payload: see
/// `billd events show`), times in RFC 3339 UTC.
fn events_json(rows: &[billd_store::StoredEvent]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|e| {
            serde_json::json!({
                "id": e.id,
                "type": e.event_type,
                "status": e.status.as_str(),
                "attempts": e.attempts,
                "created": table::rfc3339(e.created),
                "received_at": table::rfc3339(e.received_at),
                "processed_at": e.processed_at.map(table::rfc3339),
                "last_error": e.last_error,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn no_subcommand_means_serve_and_replay_needs_an_id_or_a_status() {
        assert!(Cli::try_parse_from(["billd"]).unwrap().command.is_none());
        assert!(Cli::try_parse_from(["billd", "events", "replay"]).is_err());
        assert!(
            Cli::try_parse_from(["billd", "events", "replay", "evt_1", "--status", "dead"])
                .is_err()
        );
        assert!(
            Cli::try_parse_from(["billd", "events", "replay", "--status", "processed"]).is_err()
        );
        assert!(Cli::try_parse_from(["billd", "events", "replay", "--status", "dead"]).is_ok());
    }

    #[test]
    fn server_settings_follow_the_configuration() {
        let env = HashMap::from([
            ("BILLD_INBOX_MAX_ATTEMPTS".to_string(), "4".to_string()),
            ("BILLD_WEBHOOK_TOLERANCE_SECS".to_string(), "42".to_string()),
        ]);
        let config = Config::load(None, &env).unwrap();
        let server = server_config(&config);
        assert_eq!(server.worker.max_attempts, 4);
        assert_eq!(server.webhook.tolerance_secs, 42);
    }
}
