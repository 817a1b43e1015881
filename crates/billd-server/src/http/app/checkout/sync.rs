//! `POST /v1/customers/{id}/checkout/sync`: a completed session read from
//! Stripe and applied at once, for the success page: a plan's subscription,
//! or a credit pack's payment (credited once with its webhooks, whichever
//! comes first, by its payment intent).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use billd_core::{CheckoutSessionId, CustomerId};
use billd_stripe::client::{Params, StripeError};
use serde_json::{json, Value};

use crate::http::api::{bounded, bounds, customer_id};
use crate::http::error::ApiError;
use crate::pipeline::{parse_envelope, BillingBackend, CHECKOUT_SYNC_EVENT_PREFIX};

use super::types::CheckoutSyncBody;
use super::CheckoutState;

#[utoipa::path(
    post, path = "/v1/customers/{id}/checkout/sync", tag = "app",
    description = "Applies a completed Checkout session at once, read from Stripe, without waiting for its webhooks: a plan's subscription, or a credit pack's payment once it is paid (credited once, whether the webhook came before or comes after); answers the entitlements. For the success page: put `{CHECKOUT_SESSION_ID}` in `success_url` and call this with it. Safe to repeat.",
    params(crate::http::openapi::CustomerPath),
    request_body = CheckoutSyncBody,
    responses(
        (status = 200, description = "The customer's entitlements with the session's subscription or paid credit pack applied (the body of `GET …/entitlements`).", body = crate::http::openapi::EntitlementsDoc),
        (status = 400, description = "`invalid_session_id`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`customer_not_found`, `checkout_session_not_found` (unknown, or another customer's).", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`checkout_not_complete` (the session is still open or expired).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn sync_checkout<S: BillingBackend + ?Sized>(
    State(state): State<CheckoutState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CheckoutSyncBody>, JsonRejection>,
) -> Result<Json<billd_core::Entitlements>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    bounded("session_id", &body.session_id, bounds::STRIPE_ID)?;
    let session_id =
        CheckoutSessionId::parse(body.session_id.trim()).map_err(|e| ApiError::InvalidRequest {
            code: "invalid_session_id",
            message: e.to_string(),
        })?;
    let api = &state.api;
    let record = crate::http::app::account::live_customer(&*api.store, &id).await?;
    let not_found = || ApiError::NotFound {
        code: "checkout_session_not_found",
        message: format!("customer {id} has no Checkout session {session_id}"),
    };
    let observed = crate::pipeline::observation_ns();
    let session = match api
        .stripe()?
        .get(
            &format!("/v1/checkout/sessions/{session_id}"),
            &Params::new().set("expand[]", "subscription"),
        )
        .await
    {
        Ok(session) => session,
        Err(StripeError::Api(e)) if e.status == 404 => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    let stripe_customer = record.stripe_customer_id.as_ref().map(|c| c.as_str());
    if !session_belongs_to(&session, &id, stripe_customer) {
        return Err(not_found());
    }
    let status = session["status"].as_str().unwrap_or_default();
    if status != "complete" {
        return Err(ApiError::Conflict {
            code: "checkout_not_complete",
            message: format!(
                "Checkout session {session_id} is {status}, not complete: nothing to apply"
            ),
        });
    }
    if session["mode"] == "payment" {
        feed_back_payment(api, &session).await?;
    }
    if let Some(subscription) = session["subscription"]
        .as_object()
        .map(|o| Value::Object(o.clone()))
    {
        let sub_id = subscription["id"].as_str().unwrap_or_default().to_owned();
        let watermark = billd_core::StripeSubscriptionId::parse(&sub_id)
            .ok()
            .and_then(|sid| record.state.subscriptions.get(&sid))
            .map_or(i64::MIN, |known| known.stamp.created);
        crate::http::app::subscription::feed_back_snapshot(
            api,
            watermark,
            &sub_id,
            &subscription,
            observed,
        )
        .await?;
    }
    let record = crate::http::app::account::live_customer(&*api.store, &id).await?;
    Ok(Json(api.entitlements_of(&record).await?))
}

/// Whether a Checkout session from Stripe was made for customer `id`: billd
/// stamps its sessions with `metadata[billd_customer_id]` and
/// `client_reference_id`, and makes them for the customer's Stripe customer.
fn session_belongs_to(session: &Value, id: &CustomerId, stripe_customer: Option<&str>) -> bool {
    let named = [
        session["metadata"]["billd_customer_id"].as_str(),
        session["client_reference_id"].as_str(),
    ]
    .into_iter()
    .flatten()
    .any(|named| named == id.as_str());
    let customer = session["customer"]
        .as_str()
        .or_else(|| session["customer"]["id"].as_str());
    named || (customer.is_some() && customer == stripe_customer)
}

/// Feeds a `payment` mode session as Stripe returned it into the inbox as
/// the `checkout.session.completed` it is, and waits for it: a paid pack's
/// session credits the pack exactly as its webhook would (the grant's key
/// is the payment intent, so the later or earlier webhook adds nothing).
/// One id per session and payment status: a repeated sync is a duplicate,
/// one after a delayed payment settled is not.
async fn feed_back_payment<S: BillingBackend + ?Sized>(
    api: &crate::http::api::ApiState<S>,
    session: &Value,
) -> Result<(), ApiError> {
    let id = session["id"].as_str().unwrap_or_default();
    let status = session["payment_status"].as_str().unwrap_or("unpaid");
    // The session's creation is Stripe's second, never after its
    // completion: a pack's purchase order is the same whichever of the
    // webhook and the sync comes first (the earliest is kept).
    let created = session["created"]
        .as_i64()
        .unwrap_or_else(|| api.clock.now());
    let payload = json!({
        "id": format!("{CHECKOUT_SYNC_EVENT_PREFIX}{id}_{status}"),
        "object": "event",
        "type": "checkout.session.completed",
        "created": created,
        "api_version": billd_stripe::API_VERSION,
        "data": { "object": session },
    });
    let event = parse_envelope(payload.to_string().as_bytes(), api.clock.now())
        .map_err(|e| ApiError::StripeRejected(format!("Checkout session {id}: {}", e.0)))?;
    crate::http::app::subscription::insert_and_wait(api, event).await?;
    Ok(())
}
