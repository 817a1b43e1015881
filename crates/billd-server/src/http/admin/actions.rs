//! The record of what operators did: every action of the console and of
//! the admin API writes a row naming who did it, to what, and how it ended
//! (`GET /v1/admin/actions`, and the console's timelines).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use billd_core::CustomerId;
use billd_store::{NewOperatorAction, OperatorAction};
use serde::Deserialize;

use crate::http::api::{customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::{List, DEFAULT_LIMIT, MAX_LIMIT};

/// Who did an action.
#[derive(Debug, Clone)]
pub(crate) enum Actor {
    /// A console session, by its id (the session's nonce, not its cookie).
    Console(String),
    /// A caller of the admin API with an admin key.
    AdminApi,
}

impl Actor {
    fn name(&self) -> String {
        match self {
            Actor::Console(session) => format!("console session {session}"),
            Actor::AdminApi => "admin API".to_owned(),
        }
    }
}

/// What an action was, to record once it has run.
#[derive(Debug, Clone)]
pub(crate) struct Action {
    /// `replay_event`, `replay_events`, `resync_customer`, `retry_outbox`,
    /// `cancel_subscription`, `resume_subscription`.
    pub(crate) name: &'static str,
    /// An event id, a customer id, an outbox row id, or a filter.
    pub(crate) target: String,
    /// The customer it concerns, when one.
    pub(crate) customer: Option<CustomerId>,
}

/// Records `action` by `actor` with how it ended. The action has already
/// happened, so a failure to record is logged, not answered: the caller's
/// answer must say what happened to the action itself.
pub(crate) async fn record<S: BillingBackend + ?Sized, T>(
    state: &ApiState<S>,
    actor: &Actor,
    action: Action,
    result: &Result<T, ApiError>,
    detail: impl FnOnce(&T) -> Option<String>,
) {
    let outcome = match result {
        Ok(done) => detail(done).map_or_else(|| "ok".to_owned(), |d| format!("ok: {d}")),
        Err(e) => e.code().to_owned(),
    };
    let row = NewOperatorAction {
        actor: actor.name(),
        action: action.name.to_owned(),
        target: action.target,
        customer_id: action.customer,
        outcome,
    };
    match state
        .store
        .record_operator_action(&row, state.clock.now())
        .await
    {
        Ok(_) => tracing::info!(
            actor = %row.actor, action = %row.action, target = %row.target,
            outcome = %row.outcome, "operator action"
        ),
        Err(e) => tracing::error!(
            error = %e, actor = %row.actor, action = %row.action, target = %row.target,
            outcome = %row.outcome, "operator action done but not recorded"
        ),
    }
}

/// `GET /v1/admin/actions` query.
#[derive(Debug, Deserialize)]
pub struct ActionsQuery {
    /// Only actions concerning this customer.
    pub customer: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

#[utoipa::path(
    get, path = "/v1/admin/actions", tag = "admin", operation_id = "list_operator_actions",
    description = "What operators did through the console and the admin API (replays, resyncs, retries, cancellations), newest first: who (`console session <id>` or `admin API`), what, to what, and how it ended (`ok`, `ok: <detail>`, or the error's code).",
    params(("customer" = Option<String>, Query, description = "Only actions concerning this customer"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "`{data: [{id, at, actor, action, target, customer_id, outcome}]}`.", body = Object),
        (status = 400, description = "`invalid_query`, `invalid_customer_id`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn list_actions<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<ActionsQuery>, QueryRejection>,
) -> Result<Json<List<OperatorAction>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let customer = query.customer.as_deref().map(customer_id).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let data = state
        .store
        .operator_actions(customer.as_ref(), limit)
        .await
        .map_err(store_error)?;
    Ok(Json(List { data }))
}
