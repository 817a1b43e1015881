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
    /// When Stripe expires the session (unix seconds).
    pub expires_at: i64,
}

impl From<&CheckoutRecord> for CheckoutView {
    fn from(row: &CheckoutRecord) -> Self {
        CheckoutView {
            url: row.url.clone(),
            session_id: row.session_id.clone(),
            plan: row.plan.clone(),
            currency: row.currency.clone(),
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
