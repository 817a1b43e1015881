//! `POST /v1/customers/{id}/checkout`: the single-flight Checkout session
//! (see `checkout/mod.rs`), answered from the open session or made anew
//! after closing the earlier ones.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use billd_store::{CheckoutRecord, CustomerRecord};
use billd_stripe::client::Params;

use crate::http::api::{bounded, bounded_opt, bounds, customer_id, store_error};
use crate::http::error::ApiError;
use crate::pipeline::{ensure_stripe_customer, BillingBackend};

use super::request::{
    absolute_url, already_subscribed, checkout_currency, currency_locked, ensure_interval,
    ensure_not_subscribed, may_be_open, parse_interval, purchasable_plan, seats_error,
    session_error, CheckoutRequest,
};
use super::stripe::{expire_session, open_sessions, promotion_code_id, Expired};
use super::types::{CheckoutBody, CheckoutView};
use super::CheckoutState;

/// An open session this close to its `expires_at` is not handed out again:
/// the customer would land on an expired page.
const EXPIRY_MARGIN_SECS: i64 = 300;

/// How often a request retries after losing the row to another process.
const RACE_RETRIES: usize = 3;

#[utoipa::path(
    post, path = "/v1/customers/{id}/checkout", tag = "app",
    description = "A Stripe Checkout session for a plan; single-flight per customer. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = CheckoutBody,
    responses(
        (status = 200, description = "Send the user to `url`.", body = CheckoutView),
        (status = 400, description = "`unknown_plan`, `plan_not_purchasable`, `invalid_currency`, `currency_not_available`, `invalid_interval`, `interval_not_available`, `seats_out_of_range`, `seats_not_available`, `invalid_url`, `promotion_code_invalid`, `promotion_code_expired`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`already_subscribed`, `currency_locked`, `checkout_busy`.", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "`rate_limited` (Retry-After).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn create_checkout<S: BillingBackend + ?Sized>(
    State(state): State<CheckoutState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CheckoutBody>, JsonRejection>,
) -> Result<Json<CheckoutView>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    bounded("plan", &body.plan, bounds::CODE)?;
    bounded_opt("currency", body.currency.as_deref(), bounds::CODE)?;
    bounded_opt("interval", body.interval.as_deref(), bounds::CODE)?;
    bounded_opt(
        "promotion_code",
        body.promotion_code.as_deref(),
        bounds::PROMOTION_CODE,
    )?;
    let plan = purchasable_plan(&state.api.catalog, &body.plan)?;
    let interval = parse_interval(body.interval.as_deref())?;
    let seats = billd_core::checkout_seats(plan, body.seats).map_err(seats_error)?;
    let success_url = absolute_url("success_url", &body.success_url)?;
    let cancel_url = absolute_url("cancel_url", &body.cancel_url)?;
    let promotion_code = body
        .promotion_code
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned);
    let record = crate::http::app::account::live_customer(&*state.api.store, &id).await?;
    let currency = checkout_currency(
        &state.api.catalog,
        plan,
        body.currency.as_deref(),
        record.preferred_currency.as_deref(),
    )?;
    ensure_interval(plan, &currency, interval)?;
    ensure_not_subscribed(&id, &record.state)?;
    let request = CheckoutRequest {
        plan: plan.name.clone(),
        currency,
        success_url,
        cancel_url,
        promotion_code,
        interval,
        seats,
    };

    let lock = state.lock_for(&id);
    let _serialised = lock.lock().await;
    let mut counted = false;
    for _ in 0..RACE_RETRIES {
        // Re-read under the lock: the request ahead may have created the
        // session (or the Stripe customer) this one should reuse.
        let record = crate::http::app::account::live_customer(&*state.api.store, &id).await?;
        ensure_not_subscribed(&id, &record.state)?;
        let now = state.api.clock.now();
        let open = state
            .api
            .store
            .get_checkout(&id)
            .await
            .map_err(store_error)?;
        if let Some(row) = &open {
            if row.fingerprint == request.fingerprint()
                && may_be_open(row, &record.state, now + EXPIRY_MARGIN_SECS)
            {
                return Ok(Json(CheckoutView::of(row, interval, seats)));
            }
        }
        if !counted {
            state.take_rate_token(&id, now).await?;
            counted = true;
        }
        if let Some(view) = new_session(&state, &record, open.as_ref(), &request, now).await? {
            return Ok(Json(view));
        }
    }
    Err(ApiError::Conflict {
        code: "checkout_busy",
        message: "another billd process is creating a checkout for this customer; retry".into(),
    })
}

/// Closes the previous session, creates the new one and records it. `None`
/// when another process recorded a different session first (retry).
async fn new_session<S: BillingBackend + ?Sized>(
    state: &CheckoutState<S>,
    record: &CustomerRecord,
    previous: Option<&CheckoutRecord>,
    request: &CheckoutRequest,
    now: i64,
) -> Result<Option<CheckoutView>, ApiError> {
    let api = &state.api;
    let stripe = api.stripe()?;
    let id = &record.customer_id;
    let customer = ensure_stripe_customer(api.store.as_ref(), stripe, record, now).await?;
    if let Some(locked) = customer
        .currency
        .as_deref()
        .filter(|c| *c != request.currency.as_str())
    {
        return Err(currency_locked(locked, &request.currency));
    }
    let price = state
        .price_id(stripe, &request.plan, &request.currency, request.interval)
        .await?;
    let metered = state
        .overage_price_ids(stripe, &request.currency, request.interval)
        .await?;
    let promotion = match &request.promotion_code {
        Some(code) => Some(promotion_code_id(stripe, code, &customer, now).await?),
        None => None,
    };
    // Only a request that passed every check replaces the open session. Any
    // other open session of this customer at Stripe goes too: one left by a
    // process that crashed before recording it, or by a lost race.
    let mut stale: Vec<String> = previous
        .filter(|row| may_be_open(row, &record.state, now))
        .map(|row| row.session_id.clone())
        .into_iter()
        .collect();
    for orphan in open_sessions(stripe, &customer, id).await? {
        if !stale.contains(&orphan) {
            stale.push(orphan);
        }
    }
    for session_id in &stale {
        let outcome = expire_session(stripe, session_id).await?;
        api.store
            .close_checkout(id, session_id, now)
            .await
            .map_err(store_error)?;
        if let Expired::Completed = outcome {
            return Err(already_subscribed(id, None));
        }
    }
    let generation = previous.map_or(0, |row| row.generation) + 1;
    let fingerprint = request.fingerprint();
    let plan = request.plan.as_str();
    let params = Params::new()
        .set("mode", "subscription")
        .set("customer", customer.id.as_str())
        .set("client_reference_id", id.as_str())
        .set("currency", request.currency.as_str())
        .set("line_items[0][price]", &price)
        .set("line_items[0][quantity]", request.seats)
        .set("success_url", &request.success_url)
        .set("cancel_url", &request.cancel_url)
        .set("metadata[billd_customer_id]", id.as_str())
        .set("metadata[billd_plan]", plan)
        .set(
            "subscription_data[metadata][billd_customer_id]",
            id.as_str(),
        )
        .set("subscription_data[metadata][billd_plan]", plan)
        // W8: invoices need the billing address; saved on the customer.
        .set("billing_address_collection", "required")
        .set("customer_update[address]", "auto")
        // Stripe requires saving the name when collecting tax ids for an
        // existing customer.
        .set("tax_id_collection[enabled]", "true")
        .set("customer_update[name]", "auto")
        .set_opt(
            "automatic_tax[enabled]",
            api.config.stripe_tax.then_some("true"),
        )
        .set_opt("discounts[0][promotion_code]", promotion.as_deref())
        .set_opt(
            "subscription_data[trial_period_days]",
            api.catalog.plan(&request.plan).and_then(|p| p.trial_days),
        );
    // A trial without a card: Checkout asks for none while nothing is due,
    // and Stripe cancels the subscription at the trial's end unless a
    // payment method was added by then (the customer is back on free).
    let cardless = api
        .catalog
        .plan(&request.plan)
        .is_some_and(|p| p.trial_without_card());
    let params = params
        .set_opt(
            "payment_method_collection",
            cardless.then_some("if_required"),
        )
        .set_opt(
            "subscription_data[trial_settings][end_behavior][missing_payment_method]",
            cardless.then_some("cancel"),
        );
    // Metered prices take no quantity: the meter's sum is the quantity.
    let params = metered
        .iter()
        .enumerate()
        .fold(params, |params, (i, price)| {
            params.set(format!("line_items[{}][price]", i + 1), price)
        });
    let key = format!("billd-checkout-{id}-{generation}-{fingerprint}");
    let session = stripe
        .post("/v1/checkout/sessions", &params, Some(&key))
        .await
        .map_err(|e| session_error(e, &request.currency))?;
    let field = |name: &str| {
        session[name].as_str().map(str::to_owned).ok_or_else(|| {
            ApiError::StripeRejected(format!("Checkout session without {name}: {session}"))
        })
    };
    let row = CheckoutRecord {
        customer_id: id.clone(),
        generation,
        session_id: field("id")?,
        url: field("url")?,
        plan: plan.to_owned(),
        currency: request.currency.to_string(),
        fingerprint,
        expires_at: session["expires_at"].as_i64().unwrap_or(now + 86_400),
        closed_at: None,
        created_at: now,
    };
    if api
        .store
        .put_checkout(&row, now)
        .await
        .map_err(store_error)?
    {
        tracing::info!(customer = %id, session = %row.session_id, generation, plan, "created a checkout session");
        return Ok(Some(CheckoutView::of(
            &row,
            request.interval,
            request.seats,
        )));
    }
    // Another process recorded generation `generation` first. With the same
    // request it used the same idempotency key, so it holds this very
    // session; otherwise ours must not stay open beside theirs.
    let winner = api.store.get_checkout(id).await.map_err(store_error)?;
    if let Some(winner) = winner.filter(|w| w.session_id == row.session_id) {
        return Ok(Some(CheckoutView::of(
            &winner,
            request.interval,
            request.seats,
        )));
    }
    expire_session(stripe, &row.session_id).await?;
    Ok(None)
}
