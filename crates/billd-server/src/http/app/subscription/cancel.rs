//! `POST /v1/customers/{id}/subscription/cancel` and `…/resume`: set or
//! clear `cancel_at_period_end` at Stripe.

use axum::extract::{Path, State};
use axum::Json;
use billd_stripe::client::Params;

use crate::http::api::{customer_id, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::{observation_ns, BillingBackend};

use super::decide::idempotency_key;
use super::feed::{feed_back, view};
use super::live::{load, LiveSubscription};
use super::types::{SubscriptionOutcome, SubscriptionView};

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/cancel", tag = "app", operation_id = "cancel_subscription",
    description = "Cancels at the end of the period. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "`status` `cancel_scheduled`: the subscription, `cancel_at_period_end` true (also when it was already).", body = SubscriptionView),
        (status = 409, description = "`no_subscription`, `subscription_ended`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn cancel<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_cancel_at_period_end(state, id, true).await
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/resume", tag = "app", operation_id = "resume_subscription",
    description = "Undoes a cancellation before the period ends. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "`status` `resumed`: the subscription, `cancel_at_period_end` false (also when it was already).", body = SubscriptionView),
        (status = 409, description = "`no_subscription`, `subscription_ended`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn resume<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_cancel_at_period_end(state, id, false).await
}

/// Sets or clears `cancel_at_period_end` at Stripe and applies the answer
/// (also the console's cancel and resume actions).
pub(crate) async fn set_cancel_at_period_end<S: BillingBackend + ?Sized>(
    state: ApiState<S>,
    id: String,
    cancel: bool,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = customer_id(&id)?;
    let ctx = load(&state, &id).await?;
    let live = &ctx.live;
    let already = live.object["cancel_at_period_end"].as_bool() == Some(cancel);
    let (updated, observed) = if already {
        // Nothing to change at Stripe; answering the state is idempotent.
        (
            LiveSubscription::parse(live.object.clone())?,
            ctx.live_observed_ns,
        )
    } else {
        let action = if cancel { "cancel" } else { "resume" };
        let key = idempotency_key(action, live, action, &ctx.watermark);
        let object = state
            .stripe()?
            .post(
                &format!("/v1/subscriptions/{}", live.id),
                &Params::new().set("cancel_at_period_end", cancel),
                Some(&key),
            )
            .await?;
        (LiveSubscription::parse(object)?, observation_ns())
    };
    feed_back(&state, &ctx, &updated, observed).await?;
    let outcome = if cancel {
        SubscriptionOutcome::CancelScheduled
    } else {
        SubscriptionOutcome::Resumed
    };
    Ok(Json(view(&state, &id, &updated, outcome).await?))
}
