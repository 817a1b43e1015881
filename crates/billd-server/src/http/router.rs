//! The router around the ops endpoints and the webhook: the state the
//! handlers share, `/healthz`, `/readyz`, `/metrics`, `/openapi.json`, and
//! the error log every response passes.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_store::Store;
use secrecy::SecretString;
use serde::Serialize;

use crate::http::error::{self, ApiError};
use crate::http::{openapi, respond, webhook};
use crate::pipeline::{self, Clock, Ingestor};
use crate::telemetry::{self, Metrics};

/// How webhooks are verified.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Endpoint secrets (`whsec_…`); a delivery matching any of them is
    /// accepted, which is how secrets are rotated.
    pub secrets: Vec<SecretString>,
    /// Allowed distance between the signed timestamp and arrival, seconds.
    pub tolerance_secs: i64,
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

/// [`app`] with `routes` merged in, every response leaving through
/// `respond::shape`: what the listener serves.
pub fn service(state: AppState, routes: Router) -> Router {
    app(state)
        .merge(routes)
        .layer(axum::middleware::from_fn(respond::shape))
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
pub(crate) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The `/readyz` body when ready.
#[derive(Debug, Serialize)]
pub(crate) struct Ready {
    status: &'static str,
    database: &'static str,
    inbox_lag_secs: i64,
}

#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`{status, database, inbox_lag_secs}`.", body = Object),
        (status = 503, description = "`not_ready`: database down or inbox lagging.", body = openapi::ErrorBody),
    ))]
pub(crate) async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    if !state.ingestor.is_running() {
        return Err(ApiError::NotReady("the inbox writer has stopped".into()));
    }
    if let Err(e) = state.store.ping().await {
        pipeline::count_store_error(&state.metrics, &e);
        return Err(ApiError::NotReady(format!("database: {e}")));
    }
    let stats = state.store.inbox_stats().await.map_err(|e| {
        pipeline::count_store_error(&state.metrics, &e);
        ApiError::NotReady(format!("database: {e}"))
    })?;
    let lag = pipeline::inbox_lag_secs(&stats, state.clock.now());
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
pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = state.clock.now();
    let scrape = pipeline::read_scrape(state.store.as_ref(), &state.metrics, now).await;
    (
        [(CONTENT_TYPE, telemetry::CONTENT_TYPE)],
        state.metrics.render(&scrape, now),
    )
}
