//! `POST /v1/admin/events/replay`: every event a filter picks back to
//! `pending`, after the fix that makes them apply.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::Json;
use billd_store::{EventStatus, ReplayFilter};
use serde::{Deserialize, Serialize};

use crate::http::api::{bounded_opt, bounds, customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

/// The statuses a replay may pick: those the worker is done with without
/// having applied the event. Processed events are not replayed in bulk.
const REPLAYABLE: [EventStatus; 4] = [
    EventStatus::Dead,
    EventStatus::Failed,
    EventStatus::Unlinked,
    EventStatus::Skipped,
];

/// `POST /v1/admin/events/replay` body; every field narrows the filter.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayBody {
    /// `dead` (the default), `failed`, `unlinked` or `skipped`.
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
}

/// The answer to a bulk replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayedCount {
    /// Events put back to `pending`.
    pub replayed: u64,
}

#[utoipa::path(
    post, path = "/v1/admin/events/replay", tag = "admin", operation_id = "replay_events",
    description = "Puts every event the filter picks back to `pending` with its attempts reset (by default every dead event). Safe to repeat: a second call finds them no longer dead.",
    request_body = ReplayBody,
    responses(
        (status = 200, description = "How many were put back.", body = ReplayedCount),
        (status = 400, description = "`invalid_body`, `invalid_status`, `invalid_customer_id`, `field_too_long`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn replay_events<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    body: Result<Json<ReplayBody>, JsonRejection>,
) -> Result<Json<ReplayedCount>, ApiError> {
    let Json(body) = body?;
    let status = match body.status.as_deref() {
        None => EventStatus::Dead,
        Some(text) => text
            .parse::<EventStatus>()
            .ok()
            .filter(|s| REPLAYABLE.contains(s))
            .ok_or_else(|| ApiError::InvalidRequest {
                code: "invalid_status",
                message: format!(
                    "status must be one of dead, failed, unlinked, skipped (got {text:?})"
                ),
            })?,
    };
    bounded_opt("type", body.event_type.as_deref(), bounds::QUERY_TEXT)?;
    let filter = ReplayFilter {
        status,
        event_type: body.event_type,
        customer_id: body.customer.as_deref().map(customer_id).transpose()?,
        received_from: body.received_from,
        received_until: body.received_until,
    };
    let action = super::Action {
        name: "replay_events",
        target: describe(&filter),
        customer: filter.customer_id.clone(),
    };
    let done = replay_matching(&state, &filter).await;
    super::record_action(&state, &super::Actor::AdminApi, action, &done, |r| {
        Some(format!("{} replayed", r.replayed))
    })
    .await;
    Ok(Json(done?))
}

/// Replays every event `filter` picks (also the console's bulk replay).
pub(crate) async fn replay_matching<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    filter: &ReplayFilter,
) -> Result<ReplayedCount, ApiError> {
    let replayed = state
        .store
        .replay_events(filter, state.clock.now())
        .await
        .map_err(store_error)?;
    Ok(ReplayedCount { replayed })
}

/// A filter as the target of a recorded replay: `status=dead type=… …`.
pub(crate) fn describe(filter: &ReplayFilter) -> String {
    let mut parts = vec![format!("status={}", filter.status.as_str())];
    if let Some(t) = &filter.event_type {
        parts.push(format!("type={t}"));
    }
    if let Some(c) = &filter.customer_id {
        parts.push(format!("customer={c}"));
    }
    if let Some(from) = filter.received_from {
        parts.push(format!("received_from={from}"));
    }
    if let Some(until) = filter.received_until {
        parts.push(format!("received_until={until}"));
    }
    parts.join(" ")
}
