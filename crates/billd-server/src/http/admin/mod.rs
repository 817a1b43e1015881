//! The admin API (`/v1/admin/…`, admin key): the overview, customers,
//! the audit log and inbox operations (what the operator console shows).

mod actions;
mod customers;
mod ops;
mod outbox;
mod overview;
mod replay;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::{Json, Router};
use billd_store::{AuditRecord, EventQuery, EventStatus, StoredEvent};
use serde::{Deserialize, Serialize};

use crate::http::api::{bounded_opt, bounds, customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::http::openapi::{route, Verb};
use crate::pipeline::BillingBackend;

pub(crate) use actions::{__path_list_actions, record as record_action, Action, Actor};
pub(crate) use customers::{
    __path_get_customer, __path_resync_customer, __path_search_customers, customer_view, resync,
    search, CustomerView, Resynced, SearchQuery,
};
pub(crate) use ops::{
    __path_list_alerts, __path_list_runs, alerts as list_alert_rows, runs as reconcile_runs,
    OpsQuery,
};
pub(crate) use outbox::{
    __path_list_outbox, __path_retry_outbox, outbox_rows, retry_dead, OutboxQuery,
};
pub(crate) use overview::{__path_get_overview, read_overview};
pub(crate) use replay::{
    __path_replay_events, describe as describe_filter, replay_matching, ReplayedCount,
};

/// Default and largest page sizes of the admin lists.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The admin routes (`/v1/admin/…`), before the admin-key layer.
pub(crate) fn router<S: BillingBackend + ?Sized>() -> Router<ApiState<S>> {
    let admin = route(Router::new(), Verb::Get, "/v1/admin/audit", get_audit::<S>);
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/actions",
        actions::list_actions::<S>,
    );
    let admin = route(admin, Verb::Get, "/v1/admin/events", list_events::<S>);
    let admin = route(
        admin,
        Verb::Post,
        "/v1/admin/events/{id}/replay",
        replay_event::<S>,
    );
    let admin = route(
        admin,
        Verb::Post,
        "/v1/admin/events/replay",
        replay::replay_events::<S>,
    );
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/overview",
        overview::get_overview::<S>,
    );
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/reconciliation",
        ops::list_runs::<S>,
    );
    let admin = route(admin, Verb::Get, "/v1/admin/alerts", ops::list_alerts::<S>);
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/customers",
        customers::search_customers::<S>,
    );
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/customers/{id}",
        customers::get_customer::<S>,
    );
    let admin = route(
        admin,
        Verb::Post,
        "/v1/admin/customers/{id}/resync",
        customers::resync_customer::<S>,
    );
    let admin = route(
        admin,
        Verb::Get,
        "/v1/admin/outbox",
        outbox::list_outbox::<S>,
    );
    route(
        admin,
        Verb::Post,
        "/v1/admin/outbox/{id}/retry",
        outbox::retry_outbox::<S>,
    )
}

/// `GET /v1/admin/audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Whose audit log.
    pub customer: String,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    /// The rows, newest first.
    pub data: Vec<T>,
}

#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin", operation_id = "list_audit",
    description = "A customer's audit rows, newest first.",
    params(("customer" = String, Query, description = "The app's user id"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "`{data: [{id, customer_id, at, field, before, after, reason, event_type}]}`.", body = Object),
        (status = 400, description = "`invalid_query`, `invalid_customer_id`.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn get_audit<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let id = customer_id(&query.customer)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let data = state
        .store
        .list_audit(&id, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(List { data }))
}

/// `GET /v1/admin/events` query.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Only events with this status (`unlinked`, `dead`, …).
    pub status: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// Only events of this customer (the app's user id).
    pub customer: Option<String>,
    /// Only events received at or after this instant (unix seconds).
    pub received_from: Option<i64>,
    /// Only events received before this instant (unix seconds).
    pub received_until: Option<i64>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// An inbox row without its payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventSummary {
    /// Stripe event id.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Stripe's `created`.
    pub created: i64,
    /// `data.object.id`.
    pub object_id: Option<String>,
    /// The Stripe customer.
    pub stripe_customer: Option<String>,
    /// Processing status.
    #[schema(value_type = String)]
    pub status: EventStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// The last processing error.
    pub last_error: Option<String>,
    /// When billd received it.
    pub received_at: i64,
    /// When processing finished.
    pub processed_at: Option<i64>,
}

impl From<StoredEvent> for EventSummary {
    fn from(e: StoredEvent) -> Self {
        EventSummary {
            id: e.id,
            event_type: e.event_type,
            created: e.created,
            object_id: e.object_id,
            stripe_customer: e.stripe_customer,
            status: e.status,
            attempts: e.attempts,
            last_error: e.last_error,
            received_at: e.received_at,
            processed_at: e.processed_at,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/admin/events", tag = "admin",
    description = "Inbox rows without payloads, newest first.",
    params(("status" = Option<String>, Query, description = "pending, processing, processed, failed, dead, skipped, unlinked"), ("type" = Option<String>, Query, description = "Event type"), ("customer" = Option<String>, Query, description = "Only this customer's events (the app's user id)"), ("received_from" = Option<i64>, Query, description = "Received at or after (unix seconds)"), ("received_until" = Option<i64>, Query, description = "Received before (unix seconds)"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "The rows, newest first.", body = List<EventSummary>),
        (status = 400, description = "`invalid_query`, `invalid_status`, `invalid_customer_id`, `field_too_long`.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn list_events<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<List<EventSummary>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    Ok(Json(events(&state, query).await?))
}

/// The inbox rows `query` picks, newest first (also the console's events page).
pub(crate) async fn events<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    query: EventsQuery,
) -> Result<List<EventSummary>, ApiError> {
    let status = query
        .status
        .as_deref()
        .map(str::parse::<EventStatus>)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest {
            code: "invalid_status",
            message: e.to_string(),
        })?;
    bounded_opt("type", query.event_type.as_deref(), bounds::QUERY_TEXT)?;
    let filter = EventQuery {
        status,
        event_type: query.event_type,
        customer_id: query.customer.as_deref().map(customer_id).transpose()?,
        received_from: query.received_from,
        received_until: query.received_until,
        limit: query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    let events = state
        .store
        .find_events(&filter)
        .await
        .map_err(store_error)?;
    Ok(List {
        data: events.into_iter().map(EventSummary::from).collect(),
    })
}

/// The answer to a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The event id.
    pub id: String,
    /// Always `pending`: the worker picks it up.
    #[schema(value_type = String)]
    pub status: EventStatus,
}

#[utoipa::path(
    post, path = "/v1/admin/events/{id}/replay", tag = "admin",
    description = "Puts an event back to pending.",
    params(("id" = String, Path, description = "Stripe event id")),
    responses(
        (status = 200, description = "Back to `pending`.", body = Replayed),
        (status = 404, description = "`event_not_found`.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn replay_event<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    let action = Action {
        name: "replay_event",
        target: id.clone(),
        customer: None,
    };
    let done = replay_one(&state, id).await;
    record_action(&state, &Actor::AdminApi, action, &done, |_| None).await;
    Ok(Json(done?))
}

/// Puts event `id` back to pending (also the console's replay action).
pub(crate) async fn replay_one<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: String,
) -> Result<Replayed, ApiError> {
    let found = state
        .store
        .requeue_event(&id, state.clock.now())
        .await
        .map_err(store_error)?;
    if !found {
        return Err(ApiError::NotFound {
            code: "event_not_found",
            message: format!("no event {id}"),
        });
    }
    Ok(Replayed {
        id,
        status: EventStatus::Pending,
    })
}
