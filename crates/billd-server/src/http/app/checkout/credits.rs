//! `POST /v1/customers/{id}/credits/checkout`: a Stripe Checkout session in
//! `payment` mode for one credit pack at its one-time price.
//!
//! Unlike a plan's checkout it is not single-flight: buying a pack twice is
//! buying two packs, and only a session that completes paid credits
//! anything (once, by its payment intent, when its webhook is applied). The
//! session and its payment intent carry what was bought in their metadata,
//! so the grant does not depend on a catalog edited since. Requests that go
//! to Stripe count against the checkout rate limit.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::Json;
use billd_core::credits::{METADATA_AMOUNT, METADATA_FEATURE, METADATA_PACK};
use billd_core::{Catalog, CreditPack, Currency, PackName};
use billd_stripe::client::Params;
use serde::{Deserialize, Serialize};

use crate::http::api::{bounded, bounded_opt, bounds, customer_id};
use crate::http::error::ApiError;
use crate::pipeline::{ensure_stripe_customer, BillingBackend};

use super::request::{absolute_url, currency_locked, session_error};
use super::CheckoutState;

/// `POST /v1/customers/{id}/credits/checkout` body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreditsCheckoutBody {
    /// The credit pack to buy (`[credit_packs.<name>]`).
    #[schema(max_length = 64)]
    pub pack: String,
    /// ISO currency code; default: the customer's preferred currency when
    /// the pack has a price in it, else the catalog's.
    #[schema(max_length = 64)]
    pub currency: Option<String>,
    /// Where Stripe sends the customer after paying (absolute http/https).
    #[schema(max_length = 2048)]
    pub success_url: String,
    /// Where Stripe sends the customer who gives up (absolute http/https).
    #[schema(max_length = 2048)]
    pub cancel_url: String,
}

/// The answer to a credit pack checkout.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreditsCheckoutView {
    /// Stripe's hosted Checkout page.
    pub url: String,
    /// The Checkout session (`cs_…`).
    pub session_id: String,
    /// The pack it sells.
    pub pack: String,
    /// The metered feature the pack's units are of.
    pub feature: String,
    /// Units the pack brings once paid.
    pub amount: u64,
    /// Its currency.
    pub currency: String,
    /// When Stripe expires the session (unix seconds).
    pub expires_at: i64,
}

/// The pack a request names, or 400 `unknown_pack`.
fn pack_of<'c>(catalog: &'c Catalog, raw: &str) -> Result<&'c CreditPack, ApiError> {
    PackName::parse(raw)
        .ok()
        .and_then(|name| catalog.credit_pack(&name))
        .ok_or_else(|| ApiError::InvalidRequest {
            code: "unknown_pack",
            message: format!("no credit pack {raw:?} in the catalog"),
        })
}

/// The currency as a plan's checkout chooses it: the requested one (which
/// must have a price), else the customer's preferred one when the pack has
/// a price in it, else the catalog's default.
fn pack_currency(
    catalog: &Catalog,
    pack: &CreditPack,
    requested: Option<&str>,
    preferred: Option<&str>,
) -> Result<Currency, ApiError> {
    let currency = match requested {
        Some(raw) => Currency::parse(raw).map_err(|e| ApiError::InvalidRequest {
            code: "invalid_currency",
            message: e.to_string(),
        })?,
        None => preferred
            .and_then(|raw| Currency::parse(raw).ok())
            .filter(|c| pack.prices.contains_key(c))
            .unwrap_or_else(|| catalog.default_currency().clone()),
    };
    if !pack.prices.contains_key(&currency) {
        return Err(ApiError::InvalidRequest {
            code: "currency_not_available",
            message: format!(
                "credit pack {} has no price in {currency} (available: {})",
                pack.name,
                pack.prices
                    .keys()
                    .map(Currency::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    Ok(currency)
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/credits/checkout", tag = "app",
    description = "A Stripe Checkout session in payment mode for a credit pack. Its units are credited once the session completes paid (its webhook), consumed after the period's included quota and before overage, and kept across renewals; a refund of the payment removes what is left. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = CreditsCheckoutBody,
    responses(
        (status = 200, description = "Send the user to `url`.", body = CreditsCheckoutView),
        (status = 400, description = "`unknown_pack`, `invalid_currency`, `currency_not_available`, `invalid_url`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`currency_locked`.", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "`rate_limited` (Retry-After).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn create_credits_checkout<S: BillingBackend + ?Sized>(
    State(state): State<CheckoutState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CreditsCheckoutBody>, JsonRejection>,
) -> Result<Json<CreditsCheckoutView>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    bounded("pack", &body.pack, bounds::CODE)?;
    bounded_opt("currency", body.currency.as_deref(), bounds::CODE)?;
    let catalog = &state.api.catalog;
    let pack = pack_of(catalog, &body.pack)?;
    let success_url = absolute_url("success_url", &body.success_url)?;
    let cancel_url = absolute_url("cancel_url", &body.cancel_url)?;
    let record = crate::http::app::account::live_customer(&*state.api.store, &id).await?;
    let currency = pack_currency(
        catalog,
        pack,
        body.currency.as_deref(),
        record.preferred_currency.as_deref(),
    )?;
    let now = state.api.clock.now();
    state.take_rate_token(&id, now).await?;
    let stripe = state.api.stripe()?;
    let customer = ensure_stripe_customer(state.api.store.as_ref(), stripe, &record, now).await?;
    if let Some(locked) = customer
        .currency
        .as_deref()
        .filter(|c| *c != currency.as_str())
    {
        return Err(currency_locked(locked, &currency));
    }
    let price = match pack.prices.get(&currency) {
        Some(price) => {
            state
                .resolve(
                    stripe,
                    price,
                    &format!("credit pack {}, {currency}", pack.name),
                )
                .await?
        }
        None => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "credit pack {} lost its {currency} price",
                pack.name
            )))
        }
    };
    let amount = pack.amount.to_string();
    let mut params = Params::new()
        .set("mode", "payment")
        .set("customer", customer.id.as_str())
        .set("client_reference_id", id.as_str())
        .set("currency", currency.as_str())
        .set("line_items[0][price]", &price)
        .set("line_items[0][quantity]", 1)
        .set("success_url", &success_url)
        .set("cancel_url", &cancel_url);
    // The session's metadata credits the pack; the payment intent's ties a
    // refund seen at Stripe to the pack bought.
    for scope in ["metadata", "payment_intent_data[metadata]"] {
        params = params
            .set(format!("{scope}[billd_customer_id]"), id.as_str())
            .set(format!("{scope}[{METADATA_PACK}]"), pack.name.as_str())
            .set(
                format!("{scope}[{METADATA_FEATURE}]"),
                pack.feature.as_str(),
            )
            .set(format!("{scope}[{METADATA_AMOUNT}]"), &amount);
    }
    let session = stripe
        .post("/v1/checkout/sessions", &params, None)
        .await
        .map_err(|e| session_error(e, &currency))?;
    let field = |name: &str| {
        session[name].as_str().map(str::to_owned).ok_or_else(|| {
            ApiError::StripeRejected(format!("Checkout session without {name}: {session}"))
        })
    };
    let view = CreditsCheckoutView {
        url: field("url")?,
        session_id: field("id")?,
        pack: pack.name.to_string(),
        feature: pack.feature.to_string(),
        amount: pack.amount,
        currency: currency.to_string(),
        expires_at: session["expires_at"].as_i64().unwrap_or(now + 86_400),
    };
    tracing::info!(customer = %id, session = %view.session_id, pack = %view.pack, "created a credit pack checkout session");
    Ok(Json(view))
}
