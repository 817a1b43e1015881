//! `POST /v1/customers/{id}/subscription/seats` and `…/seats/preview`: the
//! seat count of a plan sold per seat (the Stripe item's quantity), as a
//! plan change to the same plan and interval with other seats, refused with
//! 409 `seats_in_use` when fewer seats would leave less per-seat capacity
//! than is live.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use billd_core::check_seat_change;
use serde::Deserialize;

use crate::http::api::{customer_id, ApiState};
use crate::http::app::checkout::seats_error;
use crate::http::error::ApiError;
use crate::http::idempotency::KeyedRun;
use crate::pipeline::BillingBackend;

use super::change::apply_change;
use super::decide::{conflict, slot_of_price, Target};
use super::live::{load, Context};
use super::preview::preview_target;
use super::types::{PlanChangeBody, PreviewView, SubscriptionView};

/// `…/subscription/seats` and `…/seats/preview` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatsBody {
    /// The new seat count, in the plan's `seats` range.
    pub seats: u64,
    /// For the change: the `proration_date` a preview answered.
    #[serde(default)]
    pub proration_date: Option<i64>,
}

/// The current plan and interval with `seats`, checked against the plan's
/// range and the capacity in use.
async fn seats_target<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    body: &SeatsBody,
) -> Result<(PlanChangeBody, Target), ApiError> {
    let live = &ctx.live;
    let slot = slot_of_price(&state.catalog, &live.price).ok_or_else(|| {
        conflict(
            "unknown_current_plan",
            format!(
                "the subscription's price {} is not in the catalog",
                live.price_id()
            ),
        )
    })?;
    let plan = slot.plan.clone();
    let ent = state.entitlements_of(&ctx.record).await?;
    check_seat_change(&state.catalog, &plan, live.quantity, body.seats, &ent)
        .map_err(seats_error)?;
    let change = PlanChangeBody {
        plan: plan.name.to_string(),
        interval: Some(slot.interval.as_str().to_owned()),
        seats: Some(body.seats),
        proration_date: body.proration_date,
    };
    let target = Target {
        plan,
        interval: slot.interval,
        seats: body.seats,
    };
    Ok((change, target))
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/seats/preview", tag = "app", operation_id = "preview_seats",
    description = "Prorated amounts of a seat change, from Stripe's invoice preview.",
    params(crate::http::openapi::CustomerPath),
    request_body = SeatsBody,
    responses(
        (status = 200, description = "What is charged now and at renewal.", body = PreviewView),
        (status = 400, description = "`seats_out_of_range`, `seats_not_available` (the plan is not sold per seat), `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`seats_in_use` (release capacity first), `same_seats`, `no_subscription`, `subscription_ended`, `unknown_current_plan`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn preview_seats<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    body: Result<Json<SeatsBody>, JsonRejection>,
) -> Result<Json<PreviewView>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    let ctx = load(&state, &id).await?;
    let (_, target) = seats_target(&state, &ctx, &body).await?;
    Ok(Json(preview_target(&state, &ctx, target).await?))
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/seats", tag = "app", operation_id = "change_seats",
    description = "Changes the seat count (the Stripe item's quantity) with proration (BILLD_PRORATION_BEHAVIOR); per-seat limits follow. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = SeatsBody,
    responses(
        (status = 200, description = "`status` `changed`: the subscription and the entitlements with the new seats.", body = SubscriptionView),
        (status = 202, description = "`status` `action_required` or `payment_failed`: the seats apply once the proration invoice is paid.", body = SubscriptionView),
        (status = 400, description = "`seats_out_of_range`, `seats_not_available`, `invalid_body`, `invalid_proration_date`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`seats_in_use` (release capacity first), `same_seats`, `no_subscription`, `subscription_ended`, `change_pending`, `unknown_current_plan`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn change_seats<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    keyed: Option<Extension<KeyedRun>>,
    body: Result<Json<SeatsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    let ctx = load(&state, &id).await?;
    let (change, target) = seats_target(&state, &ctx, &body).await?;
    Ok(apply_change(&state, &id, keyed, &change, &ctx, &target)
        .await?
        .into_response())
}
