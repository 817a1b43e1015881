//! `POST /v1/customers/{id}/portal`: a Stripe customer portal session.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use billd_stripe::client::Params;

use crate::http::api::customer_id;
use crate::http::error::ApiError;
use crate::pipeline::{linked_stripe_customer, BillingBackend};

use super::request::absolute_url;
use super::types::{PortalBody, PortalView};
use super::CheckoutState;

#[utoipa::path(
    post, path = "/v1/customers/{id}/portal", tag = "app",
    description = "A Stripe customer portal session.",
    params(crate::http::openapi::CustomerPath),
    request_body = PortalBody,
    responses(
        (status = 200, description = "Stripe's customer portal.", body = PortalView),
        (status = 400, description = "`invalid_url`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`no_stripe_customer`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn create_portal<S: BillingBackend + ?Sized>(
    State(state): State<CheckoutState<S>>,
    Path(id): Path<String>,
    body: Result<Json<PortalBody>, JsonRejection>,
) -> Result<Json<PortalView>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    let return_url = absolute_url("return_url", &body.return_url)?;
    let record = crate::http::app::account::live_customer(&*state.api.store, &id).await?;
    let no_customer = || ApiError::Conflict {
        code: "no_stripe_customer",
        message: format!("customer {id} has no Stripe customer yet; start with a checkout"),
    };
    let stripe_customer = linked_stripe_customer(&record).ok_or_else(no_customer)?;
    let stripe = state.api.stripe()?;
    let params = Params::new()
        .set("customer", stripe_customer.as_str())
        .set("return_url", &return_url);
    // A portal session is a short-lived link that changes nothing; the
    // client's random idempotency key keeps its own retries safe.
    let session = match stripe
        .post("/v1/billing_portal/sessions", &params, None)
        .await
    {
        Ok(session) => session,
        Err(e) if e.is_not_found() => return Err(no_customer()),
        Err(e) => return Err(e.into()),
    };
    let url = session["url"].as_str().map(str::to_owned).ok_or_else(|| {
        ApiError::StripeRejected(format!("portal session without url: {session}"))
    })?;
    Ok(Json(PortalView { url }))
}
