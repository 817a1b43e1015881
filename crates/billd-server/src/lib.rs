//! billd's HTTP server and background workers, in four modules whose
//! dependencies point one way (docs/src/development.md, "Layout"):
//!
//! - [`http`]: the router, authentication, the error → status table, the
//!   OpenAPI document, the app API ([`http`]'s `app/`), the admin API and
//!   the Stripe webhook endpoint;
//! - [`pipeline`]: what happens to an event once it is in: group commit
//!   into the inbox, the inbox worker, the lifecycle handler, the outbox and
//!   its deliveries (email), Stripe customers, the clock, and what
//!   `/metrics` reads of the store;
//! - [`jobs`]: the scheduler and what it runs (reconciliation, sweeps,
//!   reminders), and the alert monitor;
//! - [`telemetry`]: metrics (on `prometheus-client`), business metrics,
//!   queue gauges.
//!
//! `http` → `pipeline`, `jobs` → `pipeline`; any of them → `telemetry`,
//! which depends on none of them, nor on billd-store. This file and [`billing`] start them
//! together.

pub mod billing;
pub mod http;
pub mod jobs;
#[cfg(test)]
mod layout;
pub mod pipeline;
pub mod planner;
pub mod telemetry;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use billd_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::http::{ApiError, AppState, WebhookConfig};
pub use crate::pipeline::{
    Backoff, Clock, DeadReason, EventHandler, FailureClass, HandlerError, HandlerOutcome,
    HandlerRegistry, InboxWorker, IngestConfig, IngestLoad, Ingestor, ManualClock, SystemClock,
    WorkerConfig,
};
pub use crate::telemetry::Metrics;

/// Everything the server and its workers are tuned by.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Webhook verification.
    pub webhook: WebhookConfig,
    /// Group commit.
    pub ingest: IngestConfig,
    /// Inbox worker.
    pub worker: WorkerConfig,
    /// `/readyz` fails when the oldest waiting event is older than this.
    pub ready_max_lag_secs: i64,
}

/// A running server: HTTP listener, group-commit writer and inbox worker.
#[derive(Debug)]
pub struct Running {
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    /// Shared metrics (for tests and the benchmark).
    pub metrics: Arc<Metrics>,
    cancel: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    writer: JoinHandle<()>,
    worker: Option<JoinHandle<()>>,
}

/// Whether to run the inbox worker next to the HTTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// Serve HTTP and process the inbox.
    Run,
    /// Serve HTTP only (benchmarks, tests of ingestion alone).
    None,
}

/// Starts billd on `listener`: the writer, the HTTP server and (unless
/// `workers` is `None`) the inbox worker. The store must be migrated.
pub fn start(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    registry: HandlerRegistry,
    clock: Arc<dyn Clock>,
    workers: Workers,
) -> std::io::Result<Running> {
    start_with_routes(
        listener,
        store,
        config,
        registry,
        clock,
        workers,
        Router::new(),
    )
}

/// Like [`start`], also serving `routes` (e.g. [`http::routes`]) on the
/// same listener.
pub fn start_with_routes(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    registry: HandlerRegistry,
    clock: Arc<dyn Clock>,
    workers: Workers,
    routes: Router,
) -> std::io::Result<Running> {
    start_with_parts(
        listener,
        store,
        config,
        clock,
        workers,
        Parts {
            registry,
            routes,
            metrics: Arc::new(Metrics::default()),
        },
    )
}

/// What [`start_with_parts`] serves besides the webhook endpoint.
#[derive(Debug)]
pub struct Parts {
    /// Inbox handlers.
    pub registry: HandlerRegistry,
    /// Extra routes (e.g. [`http::routes`]).
    pub routes: Router,
    /// The metrics `/metrics` renders, shared with whatever else counts
    /// into them (lifecycle, alert monitor, email delivery).
    pub metrics: Arc<Metrics>,
}

/// Like [`start_with_routes`], with metrics created by the caller.
pub fn start_with_parts(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    workers: Workers,
    parts: Parts,
) -> std::io::Result<Running> {
    let Parts {
        registry,
        routes,
        metrics,
    } = parts;
    let addr = listener.local_addr()?;
    let wake = Arc::new(Notify::new());
    let (ingestor, writer) =
        Ingestor::spawn(store.clone(), metrics.clone(), wake.clone(), config.ingest);
    let ingest_load = ingestor.load();
    let state = AppState {
        store: store.clone(),
        metrics: metrics.clone(),
        clock: clock.clone(),
        webhook: Arc::new(config.webhook),
        ingestor,
        ready_max_lag_secs: config.ready_max_lag_secs,
    };
    let cancel = CancellationToken::new();
    let http_cancel = cancel.clone();
    let http = tokio::spawn(async move {
        let router = http::service(state, routes);
        // The peer's address: the console limits log-ins per client.
        let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await
    });
    if workers == Workers::Run && store.backend() == billd_store::Backend::Postgres {
        tokio::spawn(planner::keep_statistics(
            store.clone(),
            planner::STATISTICS_INTERVAL,
            cancel.clone(),
        ));
    }
    let worker = (workers == Workers::Run).then(|| {
        let worker = InboxWorker::new(store, registry, config.worker, metrics.clone(), clock)
            .with_ingest_load(ingest_load);
        tokio::spawn(worker.run(wake, cancel.clone()))
    });
    Ok(Running {
        addr,
        metrics,
        cancel,
        http,
        writer,
        worker,
    })
}

impl Running {
    /// A token that stops everything when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the server stops (after `cancel_token().cancel()`):
    /// in-flight requests finish, the writer commits what is queued, the
    /// worker ends its round.
    pub async fn wait(self) -> anyhow::Result<()> {
        let served = self.http.await;
        // The router (and with it every Ingestor handle) is dropped once
        // `serve` returns, so the writer drains its queue and exits.
        self.writer.await?;
        if let Some(worker) = self.worker {
            worker.await?;
        }
        served??;
        Ok(())
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.wait().await
    }
}
