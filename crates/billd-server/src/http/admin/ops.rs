//! Reconciliation runs and alerts for operators: `GET /v1/admin/reconciliation`
//! and `GET /v1/admin/alerts` (also the console's pages of the same names).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use billd_core::Effect;
use billd_store::{OutboxItem, ReconcileRunRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::api::{store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::{List, DEFAULT_LIMIT, MAX_LIMIT};

/// `?limit=` of the lists here; alerts also take `since`.
#[derive(Debug, Default, Deserialize)]
pub struct OpsQuery {
    /// Only alerts raised at or after this instant (unix seconds; default:
    /// the last 30 days).
    pub since: Option<i64>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// One reconciliation run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconcileRunView {
    /// Row id.
    pub id: i64,
    /// When it started and finished (unix seconds).
    pub started_at: i64,
    /// When it finished.
    pub finished_at: i64,
    /// Subscriptions compared with Stripe.
    pub checked: i64,
    /// Differences found (each healed by an authoritative snapshot).
    pub drift: i64,
    /// Subscriptions of Stripe customers billd does not know.
    pub unlinked: i64,
    /// Missed events ingested.
    pub ingested: i64,
    /// The whole report (`drift`, `unlinked`, `missing_events`, …).
    #[schema(value_type = Object)]
    pub report: Value,
}

impl From<ReconcileRunRecord> for ReconcileRunView {
    fn from(r: ReconcileRunRecord) -> Self {
        ReconcileRunView {
            id: r.id,
            started_at: r.started_at,
            finished_at: r.finished_at,
            checked: r.checked,
            drift: r.drift,
            unlinked: r.unlinked,
            ingested: r.ingested,
            report: serde_json::from_str(&r.report).unwrap_or(Value::Null),
        }
    }
}

/// One alert raised.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertView {
    /// Its outbox row.
    pub id: i64,
    /// When it was raised.
    pub raised_at: i64,
    /// Which alert (`events_dead`, `dispute_opened`, `reconcile_drift`, …).
    pub alert: String,
    /// What it says.
    pub message: String,
    /// Its delivery: `pending`, `processing`, `sent`, `dead`.
    pub status: String,
    /// Delivery attempts so far.
    pub attempts: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
}

impl From<OutboxItem> for AlertView {
    fn from(row: OutboxItem) -> Self {
        let (alert, message) = match serde_json::from_str::<Effect>(&row.payload) {
            Ok(Effect::AdminAlert { alert, message, .. }) => (
                serde_json::to_value(alert)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                message,
            ),
            // Not an alert's payload: shown as stored rather than hidden.
            _ => (String::new(), row.payload.clone()),
        };
        AlertView {
            id: row.id,
            raised_at: row.created_at,
            alert,
            message,
            status: row.status.as_str().to_owned(),
            attempts: row.attempts,
            last_error: row.last_error,
        }
    }
}

fn parse(query: Result<Query<OpsQuery>, QueryRejection>) -> Result<OpsQuery, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::InvalidRequest {
            code: "invalid_query",
            message: e.body_text(),
        })
}

#[utoipa::path(
    get, path = "/v1/admin/reconciliation", tag = "admin", operation_id = "list_reconcile_runs",
    description = "Finished reconciliation runs (the scheduler's and `billd reconcile`'s, not dry runs), newest first, each with what it checked, found and healed.",
    params(("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "The runs, newest first.", body = List<ReconcileRunView>),
        (status = 400, description = "`invalid_query`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn list_runs<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<OpsQuery>, QueryRejection>,
) -> Result<Json<List<ReconcileRunView>>, ApiError> {
    Ok(Json(runs(&state, &parse(query)?).await?))
}

/// The latest reconciliation runs (also the console's page).
pub(crate) async fn runs<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    query: &OpsQuery,
) -> Result<List<ReconcileRunView>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let rows = state
        .store
        .reconcile_runs(limit)
        .await
        .map_err(store_error)?;
    Ok(List {
        data: rows.into_iter().map(ReconcileRunView::from).collect(),
    })
}

/// How far back alerts are listed by default.
const ALERTS_DEFAULT_WINDOW_SECS: i64 = 30 * 86_400;

#[utoipa::path(
    get, path = "/v1/admin/alerts", tag = "admin", operation_id = "list_alerts",
    description = "Alerts raised (dead events, disputes, payment failure rate, reconciliation drift, webhook silence, signature failures …), newest first, with their delivery status.",
    params(("since" = Option<i64>, Query, description = "Raised at or after (unix seconds); default the last 30 days"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "The alerts, newest first.", body = List<AlertView>),
        (status = 400, description = "`invalid_query`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn list_alerts<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<OpsQuery>, QueryRejection>,
) -> Result<Json<List<AlertView>>, ApiError> {
    Ok(Json(alerts(&state, &parse(query)?).await?))
}

/// The alerts `query` picks (also the console's page).
pub(crate) async fn alerts<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    query: &OpsQuery,
) -> Result<List<AlertView>, ApiError> {
    let since = query
        .since
        .unwrap_or_else(|| state.clock.now() - ALERTS_DEFAULT_WINDOW_SECS);
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let rows = state
        .store
        .alerts(since, limit)
        .await
        .map_err(store_error)?;
    Ok(List {
        data: rows.into_iter().map(AlertView::from).collect(),
    })
}
