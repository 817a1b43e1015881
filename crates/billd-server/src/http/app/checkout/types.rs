//! The checkout and portal API's bodies and answers.

use billd_store::CheckoutRecord;
use serde::{Deserialize, Serialize};

/// `POST /v1/customers/{id}/checkout` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutBody {
    /// The plan to buy (not `free`).
    #[schema(max_length = 64)]
    pub plan: String,
    /// ISO currency code; default: the customer's preferred currency when
    /// the plan has a price in it, else the catalog's.
    #[schema(max_length = 64)]
    pub currency: Option<String>,
    /// Where Stripe sends the customer after paying (absolute http/https).
    #[schema(max_length = 2048)]
    pub success_url: String,
    /// Where Stripe sends the customer who gives up (absolute http/https).
    #[schema(max_length = 2048)]
    pub cancel_url: String,
    /// A promotion code the customer typed (e.g. `LAUNCH20`).
    #[schema(max_length = 255)]
    pub promotion_code: Option<String>,
    /// `month` (default) or `year`: which of the plan's prices to buy.
    #[schema(max_length = 64)]
    pub interval: Option<String>,
    /// Seats to buy on a plan sold per seat (default: the plan's minimum;
    /// only 1 on other plans): the subscription item's quantity.
    pub seats: Option<u64>,
}

/// The answer to a checkout request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckoutView {
    /// Stripe's hosted Checkout page.
    pub url: String,
    /// The Checkout session (`cs_…`).
    pub session_id: String,
    /// The plan it sells.
    pub plan: String,
    /// Its currency.
    pub currency: String,
    /// Its billing interval (`month` or `year`).
    pub interval: String,
    /// The seats it sells (the line item's quantity).
    pub seats: u64,
    /// When Stripe expires the session (unix seconds).
    pub expires_at: i64,
}

impl CheckoutView {
    /// The answer for a stored session. The row keeps no interval or
    /// seats: a row answers only a request with its fingerprint, which
    /// covers both, so the request's values are the row's.
    pub(super) fn of(row: &CheckoutRecord, interval: billd_core::Interval, seats: u64) -> Self {
        CheckoutView {
            url: row.url.clone(),
            session_id: row.session_id.clone(),
            plan: row.plan.clone(),
            currency: row.currency.clone(),
            interval: interval.as_str().to_owned(),
            seats,
            expires_at: row.expires_at,
        }
    }
}

/// `POST /v1/customers/{id}/checkout/sync` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutSyncBody {
    /// The completed Checkout session (`cs_…`), e.g. from the success URL's
    /// `{CHECKOUT_SESSION_ID}`.
    pub session_id: String,
}

/// `POST /v1/customers/{id}/portal` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortalBody {
    /// Where the portal's "return" link goes (absolute http/https).
    #[schema(max_length = 2048)]
    pub return_url: String,
}

/// The answer to a portal request.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PortalView {
    /// Stripe's customer portal, valid for a short while.
    pub url: String,
}
