//! `POST /v1/customers/{id}/subscription/change`: the plan change at
//! Stripe (a subscription update, or a subscription schedule for a
//! downgrade at the period end), a change Stripe holds until its invoice
//! is paid, and the answers of each.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use billd_core::{CustomerId, Plan};
use billd_stripe::client::{Params, StripeClient};
use serde_json::Value;

use crate::http::api::{customer_id, ApiState};
use crate::http::error::ApiError;
use crate::http::idempotency::KeyedRun;
use crate::pipeline::{observation_ns, BillingBackend};

use super::decide::{
    at_period_end, conflict, idempotency_key, invoice_summary, is_current, parse_body,
    refuse_same_plan, Target,
};
use super::feed::{feed_back, view};
use super::live::{load, overage_price_ids, target_price, Context, LiveSubscription, MeteredItems};
use super::types::{PlanChangeBody, ProrationBehavior, SubscriptionOutcome, SubscriptionView};

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/change", tag = "app", operation_id = "change_plan",
    description = "Applies a plan change (another plan, the other interval, or other seats) with proration (BILLD_PRORATION_BEHAVIOR). Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = PlanChangeBody,
    responses(
        (status = 200, description = "`status` `changed` (applies now) or `scheduled` (a downgrade at the period end): the subscription.", body = SubscriptionView),
        (status = 202, description = "`status` `action_required` (the proration invoice needs 3-D Secure at `hosted_invoice_url`) or `payment_failed`; the plan is granted once paid.", body = SubscriptionView),
        (status = 400, description = "`unknown_plan`, `invalid_interval`, `interval_not_available`, `seats_out_of_range`, `seats_not_available`, `field_too_long`, `invalid_body`, `invalid_proration_date`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`no_subscription`, `subscription_ended`, `same_plan`, `change_pending`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn change<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    keyed: Option<Extension<KeyedRun>>,
    body: Result<Json<PlanChangeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let (body, plan) = parse_body(body, &state.catalog)?;
    let ctx = load(&state, &id).await?;
    let wanted = Target::of(&body, plan, &ctx.live)?;
    apply_change(&state, &id, keyed, &body, &ctx, &wanted).await
}

/// Makes the change `wanted` (checked already) of the loaded subscription.
pub(super) async fn apply_change<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    keyed: Option<Extension<KeyedRun>>,
    body: &PlanChangeBody,
    ctx: &Context,
    wanted: &Target,
) -> Result<Response, ApiError> {
    let live = &ctx.live;
    let plan = &wanted.plan;
    let stripe = state.stripe()?;
    let target = target_price(stripe, plan, &live.currency, wanted.interval).await?;
    let price = target["id"].as_str().unwrap_or_default().to_owned();
    if let Some(pending) = &live.pending_price {
        // A change is waiting for its invoice to be paid: the same change
        // again must not create a second invoice.
        if *pending != price {
            return Err(conflict(
                "change_pending",
                "another plan change waits for its payment; pay or let it expire first",
            ));
        }
        let invoice = latest_invoice(stripe, live.latest_invoice.as_deref()).await?;
        return answer_held(state, id, plan, live, invoice).await;
    }
    let deferred = at_period_end(state, live, &target, wanted.seats);
    if let Some(schedule) = live.object["schedule"].as_str() {
        let scheduled = stripe
            .get(
                &format!("/v1/subscription_schedules/{schedule}"),
                &Params::new(),
            )
            .await?;
        let next_price = scheduled
            .pointer("/phases/1/items/0/price")
            .and_then(|p| p.as_str().or_else(|| p["id"].as_str()));
        if deferred && next_price == Some(price.as_str()) {
            // The same downgrade again: it is scheduled already.
            return answer_scheduled(state, id, plan, live).await;
        }
        // Any other change replaces the scheduled downgrade.
        stripe
            .post(
                &format!("/v1/subscription_schedules/{schedule}/release"),
                &Params::new(),
                Some(&format!("billd:release:{schedule}")),
            )
            .await?;
        if is_current(&state.catalog, live, wanted) {
            // Back to the current plan: dropping the schedule was the change.
            let observed = observation_ns();
            let object = stripe.retrieve_subscription(&live.id).await?;
            let updated = LiveSubscription::parse(object)?;
            feed_back(state, ctx, &updated, observed).await?;
            let mut view = view(state, id, &updated, SubscriptionOutcome::Changed).await?;
            view.requested_plan = Some(plan.name.clone());
            return Ok(Json(view).into_response());
        }
    }
    refuse_same_plan(&state.catalog, live, wanted)?;
    let overage =
        overage_price_ids(stripe, &state.catalog, &live.currency, wanted.interval).await?;
    if deferred {
        return schedule_downgrade(state, ctx, id, plan, &price, wanted.seats, &overage).await;
    }
    let metered = MeteredItems::of(live, &state.catalog, &overage, wanted.interval);
    let now = state.clock.now();
    // Under an Idempotency-Key the change is prorated as of the key's first
    // run: a run that takes over from one that died sends Stripe the same
    // request, under the same Stripe key, and gets the first run's result
    // instead of a second change.
    let default_date = keyed
        .map(|Extension(run)| run.first_seen)
        .filter(|t| *t >= live.current_period_start && *t <= now)
        .unwrap_or(now);
    let proration_date = match body.proration_date {
        None => default_date,
        Some(t) if t >= live.current_period_start && t <= now.max(live.current_period_start) => t,
        Some(t) => {
            return Err(ApiError::InvalidRequest {
                code: "invalid_proration_date",
                message: format!(
                    "proration_date {t} must lie in the current period ({} to now)",
                    live.current_period_start
                ),
            })
        }
    };
    let behavior = state.config.proration_behavior;
    let mut params = Params::new()
        .set("items[0][id]", &live.item_id)
        .set("items[0][price]", &price)
        .set("items[0][quantity]", wanted.seats)
        .set("proration_behavior", behavior.as_str())
        .set("proration_date", proration_date)
        .set("metadata[billd_plan]", plan.name.as_str());
    let pending = behavior == ProrationBehavior::AlwaysInvoice;
    if pending {
        // Stripe keeps the old price until the proration invoice is paid.
        params = params.set("payment_behavior", "pending_if_incomplete");
        // A pending update takes prices and quantities only, no deletion:
        // the metered items the new interval cannot carry go first.
        remove_metered(stripe, ctx, &metered.remove).await?;
    }
    let mut index = 1;
    if !pending {
        for item in &metered.remove {
            params = params
                .set(format!("items[{index}][id]"), item)
                .set(format!("items[{index}][deleted]"), "true");
            index += 1;
        }
    }
    // Metered prices take no quantity: the meter's sum is the quantity.
    for overage_price in &metered.add {
        params = params.set(format!("items[{index}][price]"), overage_price);
        index += 1;
    }
    // The seats and metered items are part of the intended change: the
    // same price with other seats is another change.
    let key = idempotency_key(
        "plan_change",
        live,
        &format!(
            "{price}x{}+{}-{}",
            wanted.seats,
            metered.add.join(","),
            metered.remove.join(",")
        ),
        &ctx.watermark,
    );
    let updated = stripe
        .post(
            &format!("/v1/subscriptions/{}", live.id),
            &params,
            Some(&key),
        )
        .await?;
    // A write's answer is as new as its arrival: Stripe made the change
    // before answering.
    let observed = observation_ns();
    let updated = LiveSubscription::parse(updated)?;
    let new_invoice = updated
        .latest_invoice
        .clone()
        .filter(|inv| live.latest_invoice.as_ref() != Some(inv));
    if updated.pending_price.is_some() {
        let invoice = latest_invoice(stripe, updated.latest_invoice.as_deref()).await?;
        return answer_held(state, id, plan, &updated, invoice).await;
    }
    let invoice = match new_invoice {
        Some(inv) => latest_invoice(stripe, Some(&inv)).await?,
        None => None,
    };
    feed_back(state, ctx, &updated, observed).await?;
    let mut view = view(state, id, &updated, SubscriptionOutcome::Changed).await?;
    view.requested_plan = Some(plan.name.clone());
    view.invoice = invoice.as_ref().map(invoice_summary);
    Ok(Json(view).into_response())
}

/// Deletes metered items (their usage is not prorated) ahead of a change
/// Stripe may hold as a pending update, which cannot delete items.
async fn remove_metered(
    stripe: &StripeClient,
    ctx: &Context,
    items: &[String],
) -> Result<(), ApiError> {
    if items.is_empty() {
        return Ok(());
    }
    let live = &ctx.live;
    let params = items.iter().enumerate().fold(
        Params::new().set("proration_behavior", "none"),
        |params, (i, item)| {
            params
                .set(format!("items[{i}][id]"), item)
                .set(format!("items[{i}][deleted]"), "true")
        },
    );
    stripe
        .post(
            &format!("/v1/subscriptions/{}", live.id),
            &params,
            Some(&idempotency_key(
                "metered_remove",
                live,
                &items.join(","),
                &ctx.watermark,
            )),
        )
        .await?;
    Ok(())
}

/// Schedules a downgrade for the period end: a subscription schedule made
/// from the subscription, whose first phase keeps the current price until
/// the period ends and whose second phase bills `price` for one period
/// without proration, then releases the subscription.
async fn schedule_downgrade<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    id: &CustomerId,
    plan: &Plan,
    price: &str,
    seats: u64,
    overage: &[String],
) -> Result<Response, ApiError> {
    let live = &ctx.live;
    let stripe = state.stripe()?;
    // The new phase lasts one period of the new price: read its interval
    // before making the schedule, so a bad price leaves nothing behind.
    let recurring = stripe
        .get(&format!("/v1/prices/{price}"), &Params::new())
        .await?["recurring"]
        .clone();
    let (Some(interval), Some(interval_count)) = (
        recurring["interval"].as_str().map(str::to_owned),
        recurring["interval_count"].as_i64(),
    ) else {
        return Err(ApiError::StripeRejected(format!(
            "price {price} is not recurring: {recurring}"
        )));
    };
    let created = stripe
        .post(
            "/v1/subscription_schedules",
            &Params::new().set("from_subscription", &live.id),
            Some(&idempotency_key("schedule", live, price, &ctx.watermark)),
        )
        .await?;
    let schedule = created["id"]
        .as_str()
        .ok_or_else(|| ApiError::StripeRejected(format!("schedule without id: {created}")))?;
    let start = created
        .pointer("/phases/0/start_date")
        .and_then(Value::as_i64)
        .unwrap_or(live.current_period_start);
    // A phase lists every item of the subscription: the metered ones stay
    // in the first phase as they are, and the second carries the overage
    // sold at its interval (metered items take no quantity).
    let current_metered: Vec<String> = live
        .object
        .pointer("/items/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|i| i.pointer("/price/recurring/usage_type") == Some(&Value::from("metered")))
        .filter_map(|i| i.pointer("/price/id").and_then(Value::as_str))
        .map(str::to_owned)
        .collect();
    let phases = Params::new()
        .set("phases[0][items][0][price]", live.price_id())
        .set("phases[0][items][0][quantity]", live.quantity)
        .set("phases[0][start_date]", start)
        .set("phases[0][end_date]", live.current_period_end)
        .set("phases[1][items][0][price]", price)
        .set("phases[1][items][0][quantity]", seats);
    let phases = current_metered
        .iter()
        .enumerate()
        .fold(phases, |phases, (i, p)| {
            phases.set(format!("phases[0][items][{}][price]", i + 1), p)
        });
    let phases = overage
        .iter()
        .enumerate()
        .fold(phases, |phases, (i, p)| {
            phases.set(format!("phases[1][items][{}][price]", i + 1), p)
        })
        // One period of the new price (`iterations` is gone since API 2025-09-30).
        .set("phases[1][duration][interval]", interval.as_str())
        .set("phases[1][duration][interval_count]", interval_count)
        .set("phases[1][proration_behavior]", "none")
        .set("phases[1][metadata][billd_plan]", plan.name.as_str())
        .set("end_behavior", "release");
    stripe
        .post(
            &format!("/v1/subscription_schedules/{schedule}"),
            &phases,
            Some(&idempotency_key(
                "schedule_phases",
                live,
                price,
                &ctx.watermark,
            )),
        )
        .await?;
    answer_scheduled(state, id, plan, live).await
}

/// A downgrade waiting for the period end: the current plan applies until
/// `effective_at`.
async fn answer_scheduled<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    plan: &Plan,
    live: &LiveSubscription,
) -> Result<Response, ApiError> {
    let mut view = view(state, id, live, SubscriptionOutcome::Scheduled).await?;
    view.requested_plan = Some(plan.name.clone());
    view.effective_at = Some(live.current_period_end);
    Ok(Json(view).into_response())
}

async fn latest_invoice(
    stripe: &StripeClient,
    id: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    // `payments` is includable: Stripe sends it only when asked for.
    Ok(Some(
        stripe
            .get(
                &format!("/v1/invoices/{id}"),
                &Params::new().set("expand[]", "payments"),
            )
            .await?,
    ))
}

/// A change Stripe holds as a pending update until its invoice is paid:
/// 202 with where to pay; the plan stays the old one.
async fn answer_held<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    plan: &Plan,
    live: &LiveSubscription,
    invoice: Option<Value>,
) -> Result<Response, ApiError> {
    let stripe = state.stripe()?;
    let needs_action = match invoice
        .as_ref()
        .and_then(|inv| inv.pointer("/payments/data/0/payment/payment_intent"))
        .and_then(|pi| pi.as_str().or_else(|| pi["id"].as_str()))
    {
        Some(pi) => {
            let intent = stripe
                .get(&format!("/v1/payment_intents/{pi}"), &Params::new())
                .await?;
            intent["status"] == "requires_action"
        }
        // Without a payment intent to look at, the hosted page is where the
        // customer acts either way.
        None => true,
    };
    let status = if needs_action {
        SubscriptionOutcome::ActionRequired
    } else {
        SubscriptionOutcome::PaymentFailed
    };
    let mut view = view(state, id, live, status).await?;
    view.requested_plan = Some(plan.name.clone());
    view.hosted_invoice_url = invoice
        .as_ref()
        .and_then(|inv| inv["hosted_invoice_url"].as_str())
        .map(str::to_owned);
    view.invoice = invoice.as_ref().map(invoice_summary);
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}
