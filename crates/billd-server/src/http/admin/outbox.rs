//! The outbox for operators: emails, Stripe calls and alerts waiting,
//! sent or dead, and retrying a dead one.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use billd_store::{OutboxFilter, OutboxItem, OutboxStatus};
use serde::{Deserialize, Serialize};

use crate::http::api::{customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::{List, DEFAULT_LIMIT, MAX_LIMIT};

/// `GET /v1/admin/outbox` query.
#[derive(Debug, Default, Deserialize)]
pub struct OutboxQuery {
    /// Only rows with this status (`pending`, `processing`, `sent`, `dead`).
    pub status: Option<String>,
    /// Only rows of this customer.
    pub customer: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/admin/outbox", tag = "admin", operation_id = "list_outbox",
    description = "Outbox rows (emails, Stripe calls, alerts), newest first.",
    params(
        ("status" = Option<String>, Query, description = "pending, processing, sent, dead"),
        ("customer" = Option<String>, Query, description = "The app's user id"),
        ("limit" = Option<u32>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "`{data: [{id, dedupe_key, customer_id, kind, payload, status, attempts, next_attempt_at, last_error, created_at, …}]}`.", body = Object),
        (status = 400, description = "`invalid_query`, `invalid_status`, `invalid_customer_id`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn list_outbox<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Json<List<OutboxItem>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    Ok(Json(outbox_rows(&state, &query).await?))
}

/// The outbox rows `query` picks, newest first (also the console's page).
pub(crate) async fn outbox_rows<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    query: &OutboxQuery,
) -> Result<List<OutboxItem>, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(text) => Some(
            OutboxStatus::ALL
                .into_iter()
                .find(|s| s.as_str() == text)
                .ok_or_else(|| ApiError::InvalidRequest {
                    code: "invalid_status",
                    message: format!(
                        "status must be one of pending, processing, sent, dead (got {text:?})"
                    ),
                })?,
        ),
    };
    let filter = OutboxFilter {
        status,
        customer_id: query.customer.as_deref().map(customer_id).transpose()?,
        limit: query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    let data = state
        .store
        .list_outbox(&filter)
        .await
        .map_err(store_error)?;
    Ok(List { data })
}

/// The answer to a retry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// The outbox row id.
    pub id: i64,
    /// Always `pending`: the outbox worker delivers it again.
    pub status: String,
}

#[utoipa::path(
    post, path = "/v1/admin/outbox/{id}/retry", tag = "admin", operation_id = "retry_outbox",
    description = "Puts a dead outbox row (an email that could not be delivered, say) back to pending, its attempts reset. Only dead rows: one pending, being delivered or sent is never sent again.",
    params(("id" = i64, Path, description = "Outbox row id")),
    responses(
        (status = 200, description = "Back to `pending`.", body = Retried),
        (status = 400, description = "`invalid_path`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`dead_outbox_row_not_found`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn retry_outbox<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<Retried>, ApiError> {
    let action = super::Action {
        name: "retry_outbox",
        target: id.clone(),
        customer: None,
    };
    let done = retry_dead(&state, &id).await;
    super::record_action(&state, &super::Actor::AdminApi, action, &done, |_| None).await;
    Ok(Json(done?))
}

/// Retries dead outbox row `id` (also the console's retry action).
pub(crate) async fn retry_dead<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &str,
) -> Result<Retried, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::InvalidRequest {
        code: "invalid_path",
        message: format!("{id:?} is not an outbox row id"),
    })?;
    let retried = state
        .store
        .requeue_outbox(id, state.clock.now())
        .await
        .map_err(store_error)?;
    if !retried {
        return Err(ApiError::NotFound {
            code: "dead_outbox_row_not_found",
            message: format!("no dead outbox row {id}"),
        });
    }
    Ok(Retried {
        id,
        status: OutboxStatus::Pending.as_str().to_owned(),
    })
}
