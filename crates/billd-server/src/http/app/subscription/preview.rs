//! `POST /v1/customers/{id}/subscription/preview`: what a plan change
//! would charge now and at renewal (Stripe's invoice preview), and which
//! features the new plan's limits would put over quota.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use billd_core::Plan;
use billd_store::CustomerRecord;

use crate::http::api::{customer_id, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::decide::{
    amount_due, at_period_end, lines_of, parse_body, preview_params, refuse_same_plan, Target,
};
use super::live::{load, overage_price_ids, target_price, Context, MeteredItems};
use super::types::{PlanChangeBody, PreviewView, ProrationBehavior, QuotaOverflow};

/// Features whose current usage exceeds `plan`'s limits with `seats` seats.
pub(super) async fn quota_overflow<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    record: &CustomerRecord,
    plan: &Plan,
    seats: u64,
) -> Result<Vec<QuotaOverflow>, ApiError> {
    let current = state.entitlements_of(record).await?;
    Ok(current
        .features
        .into_iter()
        .filter_map(|(feature, e)| {
            let new_limit = state.catalog.limit_for(plan, &feature, seats);
            (e.used > new_limit).then_some(QuotaOverflow {
                feature,
                used: e.used,
                new_limit,
            })
        })
        .collect())
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/preview", tag = "app", operation_id = "preview_plan_change",
    description = "Prorated amounts of a plan change (another plan, the other interval, or other seats), from Stripe's invoice preview, and any quota overflow.",
    params(crate::http::openapi::CustomerPath),
    request_body = PlanChangeBody,
    responses(
        (status = 200, description = "What is charged now and at renewal, the currency, quota overflow.", body = PreviewView),
        (status = 400, description = "`unknown_plan`, `invalid_interval`, `interval_not_available`, `seats_out_of_range`, `seats_not_available`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "No live subscription, or the same plan, interval and seats.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn preview<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    body: Result<Json<PlanChangeBody>, JsonRejection>,
) -> Result<Json<PreviewView>, ApiError> {
    let id = customer_id(&id)?;
    let (body, plan) = parse_body(body, &state.catalog)?;
    let ctx = load(&state, &id).await?;
    let wanted = Target::of(&body, plan, &ctx.live)?;
    refuse_same_plan(&state.catalog, &ctx.live, &wanted)?;
    Ok(Json(preview_target(&state, &ctx, wanted).await?))
}

/// Previews the change `wanted` (checked already) of the loaded subscription.
pub(super) async fn preview_target<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    wanted: Target,
) -> Result<PreviewView, ApiError> {
    let live = &ctx.live;
    let stripe = state.stripe()?;
    let target = target_price(stripe, &wanted.plan, &live.currency, wanted.interval).await?;
    let price = target["id"].as_str().unwrap_or_default().to_owned();
    let proration_date = state.clock.now();
    let behavior = state.config.proration_behavior;
    let seats = wanted.seats;
    let overage =
        overage_price_ids(stripe, &state.catalog, &live.currency, wanted.interval).await?;
    let metered = MeteredItems::of(live, &state.catalog, &overage, wanted.interval);
    let preview = |behavior: &'static str| {
        let params = preview_params(live, &price, seats, &metered, behavior, proration_date);
        async move {
            stripe
                .post("/v1/invoices/create_preview", &params, None)
                .await
        }
    };
    let deferred = at_period_end(state, live, &target, seats);
    let switches_interval = super::decide::slot_of_price(&state.catalog, &live.price)
        .is_some_and(|slot| slot.interval != wanted.interval);
    let (amount_due_now, next_renewal_amount, lines) = if switches_interval && !deferred {
        // Stripe restarts the billing cycle at an interval switch and
        // invoices the new period at once, whatever the proration
        // behaviour: that invoice is due now, and the next renewal is one
        // full period of the new price.
        let now = preview(behavior.as_str()).await?;
        let per_period = target["unit_amount"]
            .as_i64()
            .unwrap_or_default()
            .saturating_mul(i64::try_from(seats).unwrap_or(1));
        (amount_due(&now), per_period, lines_of(&now))
    } else if deferred {
        // Nothing is prorated: the cheaper price bills from the next period.
        let renewal = preview("none").await?;
        (0, amount_due(&renewal), lines_of(&renewal))
    } else if behavior == ProrationBehavior::AlwaysInvoice {
        let now = preview("always_invoice").await?;
        let renewal = preview("none").await?;
        let mut lines = lines_of(&now);
        lines.extend(lines_of(&renewal));
        (amount_due(&now), amount_due(&renewal), lines)
    } else {
        let upcoming = preview("create_prorations").await?;
        (0, amount_due(&upcoming), lines_of(&upcoming))
    };
    let quota_overflow = quota_overflow(state, &ctx.record, &wanted.plan, seats).await?;
    Ok(PreviewView {
        plan: wanted.plan.name,
        interval: wanted.interval.as_str().to_owned(),
        seats,
        currency: live.currency.clone(),
        amount_due_now,
        next_renewal_amount,
        renews_at: live.current_period_end,
        effective: if deferred { "period_end" } else { "immediate" },
        proration_date,
        lines,
        quota_overflow,
    })
}
