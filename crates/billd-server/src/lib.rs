//! billd's HTTP server and background workers: the Stripe webhook endpoint
//! with group commit into the inbox, health/readiness/metrics endpoints, and
//! the inbox worker with its handler registry.

pub mod account;
pub mod alerts;
pub mod api;
pub mod app_api;
pub mod auth;
pub mod billing;
pub mod business;
pub mod checkout;
pub mod clock;
pub mod error;
pub mod idempotency;
pub mod ingest;
pub mod jobs;
pub mod lifecycle;
pub mod metrics;
pub mod notify;
pub mod openapi;
pub mod outbox;
pub mod queue_gauges;
pub mod reconcile;
pub mod respond;
pub mod scheduler;
pub(crate) mod stripe_customer;
pub mod subscription_api;
pub mod usage_batch;
pub mod usage_cache;
pub mod webhook;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_store::Store;
use secrecy::SecretString;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::error::ApiError;
pub use crate::ingest::{IngestConfig, Ingestor};
pub use crate::metrics::Metrics;
pub use crate::worker::{
    Backoff, EventHandler, HandlerError, HandlerOutcome, HandlerRegistry, InboxWorker, WorkerConfig,
};

/// How webhooks are verified.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoint secrets (`whsec_…`); a delivery matching any of them is
    /// accepted, which is how secrets are rotated.
    pub secrets: Vec<SecretString>,
    /// Allowed distance between the signed timestamp and arrival, seconds.
    pub tolerance_secs: i64,
}

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

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Arc<dyn Store>,
    /// Process metrics.
    pub metrics: Arc<Metrics>,
    /// Time source.
    pub clock: Arc<dyn Clock>,
    /// Webhook verification settings.
    pub webhook: Arc<WebhookConfig>,
    /// The group-commit writer.
    pub ingestor: Ingestor,
    /// `/readyz` lag threshold, seconds.
    pub ready_max_lag_secs: i64,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("backend", &self.store.backend())
            .field("webhook", &self.webhook)
            .finish_non_exhaustive()
    }
}

/// The HTTP application.
pub fn app(state: AppState) -> Router {
    use openapi::{route, route_with, Verb};
    let router = route_with(
        Router::new(),
        Verb::Post,
        "/webhooks/stripe",
        webhook::receive,
        |m| m.layer(DefaultBodyLimit::max(webhook::MAX_BODY_BYTES)),
    );
    let router = route(router, Verb::Get, "/healthz", healthz);
    let router = route(router, Verb::Get, "/readyz", readyz);
    let router = route(router, Verb::Get, "/metrics", metrics);
    let router = route(router, Verb::Get, "/openapi.json", openapi::openapi_json);
    router
        .layer(axum::middleware::from_fn(log_errors))
        .with_state(state)
}

/// Logs each error response once, with its cause, where the request is
/// known; handlers and `IntoResponse` stay free of logging.
pub(crate) async fn log_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    if let Some(err) = response.extensions().get::<error::LoggedError>() {
        let status = response.status().as_u16();
        if response.status().is_server_error() {
            tracing::error!(%method, %path, status, code = err.code, detail = %err.detail, "request failed");
        } else {
            tracing::info!(%method, %path, status, code = err.code, detail = %err.detail, "request rejected");
        }
    }
    response
}

#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "The process runs.", body = Object)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The `/readyz` body when ready.
#[derive(Debug, Serialize)]
struct Ready {
    status: &'static str,
    database: &'static str,
    inbox_lag_secs: i64,
}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`{status, database, inbox_lag_secs}`.", body = Object),
        (status = 503, description = "`not_ready`: database down or inbox lagging.", body = openapi::ErrorBody),
    ))]
async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !state.ingestor.is_running() {
        return Err(ApiError::NotReady("the inbox writer has stopped".into()));
    }
    if let Err(e) = state.store.ping().await {
        state.metrics.store_error(&e);
        return Err(ApiError::NotReady(format!("database: {e}")));
    }
    let stats = state.store.inbox_stats().await.map_err(|e| {
        state.metrics.store_error(&e);
        ApiError::NotReady(format!("database: {e}"))
    })?;
    let lag = metrics::inbox_lag_secs(&stats, state.clock.now());
    if lag > state.ready_max_lag_secs {
        return Err(ApiError::NotReady(format!(
            "inbox lag {lag}s exceeds {}s",
            state.ready_max_lag_secs
        )));
    }
    Ok(Json(Ready {
        status: "ready",
        database: "ok",
        inbox_lag_secs: lag,
    }))
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format.", body = String, content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let stats = match state.store.inbox_stats().await {
        Ok(stats) => Some(stats),
        Err(e) => {
            state.metrics.store_error(&e);
            None
        }
    };
    let mut body = state.metrics.render(stats.as_ref(), state.clock.now());
    match metrics::DeadLetters::load(state.store.as_ref()).await {
        Ok(dead) => body.push_str(&dead.render()),
        Err(e) => state.metrics.store_error(&e),
    }
    match queue_gauges::QueueGauges::load(state.store.as_ref()).await {
        Ok(gauges) => body.push_str(&gauges.render(state.clock.now())),
        Err(e) => state.metrics.store_error(&e),
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], body)
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

/// Like [`start`], also serving `routes` (e.g. [`api::routes`]) on the
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
    /// Extra routes (e.g. [`api::routes`]).
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
        let router = app(state)
            .merge(routes)
            .layer(axum::middleware::from_fn(respond::shape));
        axum::serve(listener, router)
            .with_graceful_shutdown(async move { http_cancel.cancelled().await })
            .await
    });
    let worker = (workers == Workers::Run).then(|| {
        let worker = InboxWorker::new(store, registry, config.worker, metrics.clone(), clock);
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
