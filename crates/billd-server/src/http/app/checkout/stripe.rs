//! The Stripe calls of a checkout besides creating the session: the
//! promotion code checked as Stripe will check it, the customer's open
//! sessions, and expiring one.

use billd_core::CustomerId;
use billd_stripe::client::{Params, StripeClient, StripeError};
use serde_json::Value;

use crate::http::error::ApiError;
use crate::pipeline::StripeCustomer;

/// The id of the promotion code the customer typed, checked as Stripe will
/// check it: unknown or for someone else → 400 `promotion_code_invalid`;
/// inactive, expired or used up → 400 `promotion_code_expired`.
pub(super) async fn promotion_code_id(
    stripe: &StripeClient,
    code: &str,
    customer: &StripeCustomer,
    now: i64,
) -> Result<String, ApiError> {
    let invalid = |message: String| ApiError::InvalidRequest {
        code: "promotion_code_invalid",
        message,
    };
    let expired = |message: String| ApiError::InvalidRequest {
        code: "promotion_code_expired",
        message,
    };
    let found = stripe
        .get(
            "/v1/promotion_codes",
            &Params::new().set("code", code).set("limit", 100),
        )
        .await?;
    let codes: Vec<&Value> = found["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|pc| {
            pc["code"]
                .as_str()
                .is_some_and(|c| c.eq_ignore_ascii_case(code))
        })
        .collect();
    let Some(promo) = codes
        .iter()
        .find(|pc| pc["active"] == true)
        .or_else(|| codes.first())
    else {
        return Err(invalid(format!("no promotion code {code}")));
    };
    if promo["active"] != true {
        return Err(expired(format!(
            "promotion code {code} is no longer active"
        )));
    }
    if promo["expires_at"].as_i64().is_some_and(|t| t <= now) {
        return Err(expired(format!("promotion code {code} has expired")));
    }
    if let Some(max) = promo["max_redemptions"].as_i64() {
        if promo["times_redeemed"].as_i64().unwrap_or(0) >= max {
            return Err(expired(format!(
                "promotion code {code} has been redeemed the most times it may be"
            )));
        }
    }
    if promo["customer"]
        .as_str()
        .is_some_and(|only| only != customer.id.as_str())
    {
        return Err(invalid(format!(
            "promotion code {code} belongs to another customer"
        )));
    }
    promo["id"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| ApiError::StripeRejected(format!("promotion code {code} without an id")))
}

/// The open Checkout sessions billd made for this customer at Stripe.
pub(super) async fn open_sessions(
    stripe: &StripeClient,
    customer: &StripeCustomer,
    id: &CustomerId,
) -> Result<Vec<String>, ApiError> {
    let params = Params::new()
        .set("customer", customer.id.as_str())
        .set("status", "open");
    let sessions = stripe
        .list_all("/v1/checkout/sessions", &params, 1000)
        .await?;
    Ok(sessions
        .iter()
        .filter(|s| s["metadata"]["billd_customer_id"] == id.as_str())
        // A credit pack's session is a purchase of its own, not a plan's.
        .filter(|s| s["mode"] != "payment")
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}

/// What expiring an earlier session found.
pub(super) enum Expired {
    /// It is closed (now, or it was already expired).
    Closed,
    /// The customer completed it: they are subscribing.
    Completed,
}

/// Expires a session at Stripe; a session that is no longer open is looked
/// up to tell expired from completed.
pub(super) async fn expire_session(
    stripe: &StripeClient,
    session_id: &str,
) -> Result<Expired, ApiError> {
    let path = format!("/v1/checkout/sessions/{session_id}");
    let key = format!("billd-checkout-expire-{session_id}");
    match stripe
        .post(&format!("{path}/expire"), &Params::new(), Some(&key))
        .await
    {
        Ok(_) => Ok(Expired::Closed),
        Err(StripeError::Api(e)) if e.status == 400 || e.status == 404 => {
            if e.status == 404 {
                return Ok(Expired::Closed);
            }
            let session = stripe.get(&path, &Params::new()).await?;
            Ok(if session["status"] == "complete" {
                Expired::Completed
            } else {
                Expired::Closed
            })
        }
        Err(e) => Err(e.into()),
    }
}
