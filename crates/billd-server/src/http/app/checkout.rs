//! `POST /v1/customers/{id}/checkout` and `POST /v1/customers/{id}/portal`.
//!
//! Checkout is single-flight (the audit's double-click item): for each
//! customer billd keeps one row naming the latest Checkout session it
//! created (`billd_store::CheckoutStore`). A request identical to the one
//! that row answers (same plan, currency, URLs and promotion code) gets that
//! session back, with no Stripe call, until the session completes, expires
//! or is about to expire. A different request expires the old session at
//! Stripe first, then creates a new one. Requests for one customer are
//! serialised by an in-process lock; across billd processes the session's
//! idempotency key (customer, generation, request digest) and the row's
//! compare-and-set on `generation` make them converge on one session.
//!
//! The per-customer rate limit (`checkout_rate_limit_per_min`) counts only
//! requests that go to Stripe (a new session, or a failed attempt at one):
//! a double-click storm answered from the open session is never limited.
//! The counter is a store row (`billd_store::RateLimitStore`), so the limit
//! holds across every billd process on one database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::http::idempotency::Idempotency;
use crate::http::openapi::{route, route_with, Verb};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::{Json, Router};
use billd_core::event::SubscriptionStatus;
use billd_core::{CheckoutSessionId, Currency, CustomerId, CustomerState, Plan, PlanName};
use billd_store::{CheckoutRecord, CustomerRecord, RateDecision};
use billd_stripe::client::{Params, StripeClient, StripeError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::http::api::{bounded, bounded_opt, bounds, customer_id, store_error, ApiState};
use crate::http::auth::{require_app_key, ApiKeys};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;
use crate::pipeline::{ensure_stripe_customer, linked_stripe_customer, StripeCustomer};

/// An open session this close to its `expires_at` is not handed out again:
/// the customer would land on an expired page.
const EXPIRY_MARGIN_SECS: i64 = 300;

/// The rate limit's window.
const WINDOW_SECS: i64 = 60;

/// The rate limit's scope in the store's shared table.
const RATE_SCOPE: &str = "checkout";

/// How often a request retries after losing the row to another process.
const RACE_RETRIES: usize = 3;

/// What the checkout and portal handlers share.
pub(crate) struct CheckoutState<S: BillingBackend + ?Sized> {
    api: ApiState<S>,
    locks: Arc<Mutex<HashMap<CustomerId, Weak<tokio::sync::Mutex<()>>>>>,
    prices: Arc<Mutex<HashMap<String, String>>>,
}

impl<S: BillingBackend + ?Sized> Clone for CheckoutState<S> {
    fn clone(&self) -> Self {
        CheckoutState {
            api: self.api.clone(),
            locks: self.locks.clone(),
            prices: self.prices.clone(),
        }
    }
}

/// The checkout and portal routes behind the app key. Checkout honours
/// `Idempotency-Key` (`idem`); the sync only reads Stripe and a portal
/// session is a short-lived link that changes nothing, so both ignore the
/// header.
pub(crate) fn routes<S: BillingBackend + ?Sized>(
    api: ApiState<S>,
    keys: Arc<ApiKeys>,
    idem: &Idempotency<S>,
) -> Router {
    let router = route_with(
        Router::new(),
        Verb::Post,
        "/v1/customers/{id}/checkout",
        create_checkout::<S>,
        idem.layer(),
    );
    let router = route(
        router,
        Verb::Post,
        "/v1/customers/{id}/checkout/sync",
        sync_checkout::<S>,
    );
    route(
        router,
        Verb::Post,
        "/v1/customers/{id}/portal",
        create_portal::<S>,
    )
    .route_layer(axum::middleware::from_fn_with_state(keys, require_app_key))
    .with_state(CheckoutState {
        api,
        locks: Arc::default(),
        prices: Arc::default(),
    })
    .layer(axum::middleware::from_fn(crate::http::router::log_errors))
}

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

/// A validated checkout request.
#[derive(Debug, Clone)]
struct CheckoutRequest {
    plan: PlanName,
    currency: Currency,
    success_url: String,
    cancel_url: String,
    promotion_code: Option<String>,
}

impl CheckoutRequest {
    /// A digest of everything that shapes the session: equal digests mean
    /// the open session answers the request.
    fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        for part in [
            self.plan.as_str(),
            self.currency.as_str(),
            &self.success_url,
            &self.cancel_url,
            self.promotion_code.as_deref().unwrap_or(""),
        ] {
            hash.update(part.as_bytes());
            hash.update([0u8]);
        }
        hex::encode(&hash.finalize()[..16])
    }
}

/// An absolute http(s) URL, or 400 `field_too_long` / `invalid_url`.
fn absolute_url(field: &'static str, raw: &str) -> Result<String, ApiError> {
    bounded(field, raw, bounds::URL)?;
    let invalid = |why: String| ApiError::InvalidRequest {
        code: "invalid_url",
        message: format!("{field} must be an absolute http or https URL: {why}"),
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{raw:?}")));
    }
    Ok(raw.trim().to_owned())
}

/// The paid plan a request names, or 400 `unknown_plan` /
/// `plan_not_purchasable`.
fn purchasable_plan<'c>(catalog: &'c billd_core::Catalog, raw: &str) -> Result<&'c Plan, ApiError> {
    let unknown = || ApiError::InvalidRequest {
        code: "unknown_plan",
        message: format!("no plan {raw:?} in the catalog"),
    };
    let name = PlanName::parse(raw).map_err(|_| unknown())?;
    let plan = catalog.plan(&name).ok_or_else(unknown)?;
    if plan.prices.is_empty() {
        return Err(ApiError::InvalidRequest {
            code: "plan_not_purchasable",
            message: format!("plan {name} is free and cannot be bought"),
        });
    }
    Ok(plan)
}

/// The checkout currency: the requested one (which must have a price), else
/// the customer's preferred one when the plan has a price in it, else the
/// catalog's default.
fn checkout_currency(
    catalog: &billd_core::Catalog,
    plan: &Plan,
    requested: Option<&str>,
    preferred: Option<&str>,
) -> Result<Currency, ApiError> {
    if let Some(raw) = requested {
        let currency = Currency::parse(raw).map_err(|e| ApiError::InvalidRequest {
            code: "invalid_currency",
            message: e.to_string(),
        })?;
        if !plan.prices.contains_key(&currency) {
            return Err(ApiError::InvalidRequest {
                code: "currency_not_available",
                message: format!(
                    "plan {} has no price in {currency} (available: {})",
                    plan.name,
                    plan.prices
                        .keys()
                        .map(Currency::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Ok(currency);
    }
    let preferred = preferred
        .and_then(|raw| Currency::parse(raw).ok())
        .filter(|c| plan.prices.contains_key(c));
    let currency = preferred.unwrap_or_else(|| catalog.default_currency().clone());
    if !plan.prices.contains_key(&currency) {
        return Err(ApiError::InvalidRequest {
            code: "currency_not_available",
            message: format!("plan {} has no price in {currency}", plan.name),
        });
    }
    Ok(currency)
}

/// 409 `already_subscribed` when the customer has a subscription that bills
/// them (anything live but a first payment still pending): a second one
/// would charge twice; plan changes go through `…/subscription/change`.
fn ensure_not_subscribed(id: &CustomerId, state: &CustomerState) -> Result<(), ApiError> {
    let live = state
        .subscriptions
        .values()
        .find(|s| s.is_live() && s.snapshot.status != SubscriptionStatus::Incomplete);
    match live {
        Some(subscription) => Err(already_subscribed(
            id,
            Some(subscription.snapshot.id.as_str()),
        )),
        None => Ok(()),
    }
}

fn already_subscribed(id: &CustomerId, subscription: Option<&str>) -> ApiError {
    let which = subscription.map_or_else(String::new, |s| format!(" ({s})"));
    ApiError::Conflict {
        code: "already_subscribed",
        message: format!(
            "customer {id} already has a subscription{which}; change plans with POST /v1/customers/{id}/subscription/change"
        ),
    }
}

/// Whether the state shows the session ended (completed or expired).
fn ended_in_state(state: &CustomerState, session_id: &str) -> bool {
    CheckoutSessionId::parse(session_id)
        .ok()
        .and_then(|id| state.checkouts.get(&id))
        .is_some_and(|c| c.completed || c.expired)
}

/// Whether the row's session may still be open at Stripe.
fn may_be_open(row: &CheckoutRecord, state: &CustomerState, now: i64) -> bool {
    row.closed_at.is_none() && row.expires_at > now && !ended_in_state(state, &row.session_id)
}

impl<S: BillingBackend + ?Sized> CheckoutState<S> {
    /// The customer's lock: one checkout at a time per customer in this
    /// process.
    fn lock_for(&self, id: &CustomerId) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(id).and_then(Weak::upgrade) {
            return lock;
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        if locks.len() >= 1024 {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        locks.insert(id.clone(), Arc::downgrade(&lock));
        lock
    }

    /// Counts one request that goes to Stripe, or answers 429 with the
    /// seconds until the customer's window ends. The counter lives in the
    /// store, so every billd process on the database shares the limit.
    async fn take_rate_token(&self, id: &CustomerId, now: i64) -> Result<(), ApiError> {
        let limit = self.api.config.checkout_rate_limit_per_min;
        let decision = self
            .api
            .store
            .take_rate_token(RATE_SCOPE, id.as_str(), limit, WINDOW_SECS, now)
            .await
            .map_err(store_error)?;
        match decision {
            RateDecision::Allowed => Ok(()),
            RateDecision::Limited { retry_after_secs } => Err(ApiError::RateLimited {
                retry_after_secs: u64::try_from(retry_after_secs).unwrap_or(1).max(1),
                message: format!(
                    "at most {limit} new checkout sessions per minute for one customer"
                ),
            }),
        }
    }

    /// The Stripe price id of the plan in the currency: the catalog's bound
    /// id, else the active price carrying its lookup key (cached).
    async fn price_id(
        &self,
        stripe: &StripeClient,
        plan: &PlanName,
        currency: &Currency,
    ) -> Result<String, ApiError> {
        let price =
            self.api
                .catalog
                .price_for(plan, currency)
                .ok_or_else(|| ApiError::InvalidRequest {
                    code: "currency_not_available",
                    message: format!("plan {plan} has no price in {currency}"),
                })?;
        if let Some(id) = &price.id {
            return Ok(id.to_string());
        }
        let Some(lookup_key) = &price.lookup_key else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "plan {plan} in {currency} has neither a price id nor a lookup key"
            )));
        };
        if let Some(id) = self
            .prices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(lookup_key)
        {
            return Ok(id.clone());
        }
        let found = stripe
            .get(
                "/v1/prices",
                &Params::new()
                    .set("lookup_keys[]", lookup_key)
                    .set("active", "true"),
            )
            .await?;
        let id = found["data"][0]["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!(
                    "no active Stripe price has lookup key {lookup_key} (plan {plan}, {currency})"
                ))
            })?;
        self.prices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lookup_key.clone(), id.clone());
        Ok(id)
    }
}

/// The id of the promotion code the customer typed, checked as Stripe will
/// check it: unknown or for someone else → 400 `promotion_code_invalid`;
/// inactive, expired or used up → 400 `promotion_code_expired`.
async fn promotion_code_id(
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

/// 409 `currency_locked`.
fn currency_locked(locked: &str, wanted: &Currency) -> ApiError {
    ApiError::Conflict {
        code: "currency_locked",
        message: format!(
            "the customer's Stripe account already bills in {locked} and Stripe cannot mix currencies on one customer; check out in {locked} instead of {wanted}"
        ),
    }
}

/// Maps Stripe refusing the session to the caller's error where the caller
/// can act on it.
fn session_error(e: StripeError, currency: &Currency) -> ApiError {
    if let StripeError::Api(api) = &e {
        if api.status == 400 && api.message.contains("combine currencies") {
            return currency_locked("another currency", currency);
        }
        if api.status == 400
            && api
                .param
                .as_deref()
                .is_some_and(|p| p.starts_with("discounts"))
        {
            let code = if api.message.contains("expired")
                || api.message.contains("not active")
                || api.message.contains("maximum number of redemptions")
            {
                "promotion_code_expired"
            } else {
                "promotion_code_invalid"
            };
            return ApiError::InvalidRequest {
                code,
                message: api.message.clone(),
            };
        }
    }
    e.into()
}

/// The open Checkout sessions billd made for this customer at Stripe.
async fn open_sessions(
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
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect())
}

/// What expiring an earlier session found.
enum Expired {
    /// It is closed (now, or it was already expired).
    Closed,
    /// The customer completed it: they are subscribing.
    Completed,
}

/// Expires a session at Stripe; a session that is no longer open is looked
/// up to tell expired from completed.
async fn expire_session(stripe: &StripeClient, session_id: &str) -> Result<Expired, ApiError> {
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

#[utoipa::path(
    post, path = "/v1/customers/{id}/checkout", tag = "app",
    description = "A Stripe Checkout session for a plan; single-flight per customer. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = CheckoutBody,
    responses(
        (status = 200, description = "Send the user to `url`.", body = CheckoutView),
        (status = 400, description = "`unknown_plan`, `plan_not_purchasable`, `invalid_currency`, `currency_not_available`, `invalid_url`, `promotion_code_invalid`, `promotion_code_expired`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`already_subscribed`, `currency_locked`, `checkout_busy`.", body = crate::http::openapi::ErrorBody),
        (status = 429, description = "`rate_limited` (Retry-After).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn create_checkout<S: BillingBackend + ?Sized>(
    State(state): State<CheckoutState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CheckoutBody>, JsonRejection>,
) -> Result<Json<CheckoutView>, ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    bounded("plan", &body.plan, bounds::CODE)?;
    bounded_opt("currency", body.currency.as_deref(), bounds::CODE)?;
    bounded_opt(
        "promotion_code",
        body.promotion_code.as_deref(),
        bounds::PROMOTION_CODE,
    )?;
    let plan = purchasable_plan(&state.api.catalog, &body.plan)?;
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
    ensure_not_subscribed(&id, &record.state)?;
    let request = CheckoutRequest {
        plan: plan.name.clone(),
        currency,
        success_url,
        cancel_url,
        promotion_code,
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
                return Ok(Json(CheckoutView::from(row)));
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
        .price_id(stripe, &request.plan, &request.currency)
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
        .set("line_items[0][quantity]", 1)
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
        .set_opt("discounts[0][promotion_code]", promotion.as_deref());
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
        return Ok(Some(CheckoutView::from(&row)));
    }
    // Another process recorded generation `generation` first. With the same
    // request it used the same idempotency key, so it holds this very
    // session; otherwise ours must not stay open beside theirs.
    let winner = api.store.get_checkout(id).await.map_err(store_error)?;
    if let Some(winner) = winner.filter(|w| w.session_id == row.session_id) {
        return Ok(Some(CheckoutView::from(&winner)));
    }
    expire_session(stripe, &row.session_id).await?;
    Ok(None)
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/checkout/sync", tag = "app",
    description = "Applies a completed Checkout session's subscription at once, read from Stripe, without waiting for its webhooks; answers the entitlements. For the success page: put `{CHECKOUT_SESSION_ID}` in `success_url` and call this with it. Safe to repeat.",
    params(crate::http::openapi::CustomerPath),
    request_body = CheckoutSyncBody,
    responses(
        (status = 200, description = "The customer's entitlements with the session's subscription applied (the body of `GET …/entitlements`).", body = Object),
        (status = 400, description = "`invalid_session_id`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`customer_not_found`, `checkout_session_not_found` (unknown, or another customer's).", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`checkout_not_complete` (the session is still open or expired).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn sync_checkout<S: BillingBackend + ?Sized>(
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
    let now = api.clock.now();
    let keys = billd_core::usage_keys(&record.state, &api.catalog, now);
    let usage = api
        .store
        .load_usage(&id, &keys)
        .await
        .map_err(store_error)?;
    Ok(Json(billd_core::entitlements(
        &record.state,
        &api.catalog,
        &usage,
        now,
    )))
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
async fn create_portal<S: BillingBackend + ?Sized>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        for good in ["https://app.test/done", "http://localhost:3000/x?y=1"] {
            assert!(absolute_url("success_url", good).is_ok(), "{good}");
        }
        for bad in [
            "/relative",
            "ftp://app.test/",
            "javascript:alert(1)",
            "",
            "https://",
        ] {
            let e = absolute_url("success_url", bad).unwrap_err();
            assert_eq!(e.code(), "invalid_url", "{bad}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_every_field_of_the_request() {
        let base = CheckoutRequest {
            plan: PlanName::parse("pro").unwrap(),
            currency: Currency::parse("eur").unwrap(),
            success_url: "https://a.test/ok".into(),
            cancel_url: "https://a.test/no".into(),
            promotion_code: None,
        };
        let mut variants = vec![base.clone()];
        variants.push(CheckoutRequest {
            plan: PlanName::parse("standard").unwrap(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            currency: Currency::parse("usd").unwrap(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            success_url: "https://a.test/ok2".into(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            cancel_url: "https://a.test/no2".into(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            promotion_code: Some("X".into()),
            ..base.clone()
        });
        let mut prints: Vec<String> = variants.iter().map(CheckoutRequest::fingerprint).collect();
        assert_eq!(prints[0], base.fingerprint());
        prints.sort();
        prints.dedup();
        assert_eq!(prints.len(), 6);
    }

    #[test]
    fn the_currency_defaults_to_a_preferred_one_with_a_price_then_the_catalogs() {
        let catalog = billd_core::Catalog::seed();
        let pro = purchasable_plan(&catalog, "pro").unwrap();
        let pick = |requested, preferred| {
            checkout_currency(&catalog, pro, requested, preferred).map(|c| c.to_string())
        };
        assert_eq!(pick(None, None).unwrap(), "eur");
        assert_eq!(pick(None, Some("usd")).unwrap(), "eur");
        assert_eq!(pick(Some("eur"), Some("usd")).unwrap(), "eur");
        assert_eq!(
            pick(Some("usd"), None).unwrap_err().code(),
            "currency_not_available"
        );
        assert_eq!(
            pick(Some("e"), None).unwrap_err().code(),
            "invalid_currency"
        );
    }

    fn stripe_400(param: Option<&str>, message: &str) -> StripeError {
        StripeError::Api(Box::new(billd_stripe::client::ApiError {
            status: 400,
            kind: "invalid_request_error".into(),
            code: Some("parameter_invalid".into()),
            decline_code: None,
            param: param.map(str::to_owned),
            message: message.into(),
        }))
    }

    #[test]
    fn stripe_refusing_a_session_maps_to_the_callers_codes() {
        let eur = Currency::parse("eur").unwrap();
        let mixed = stripe_400(
            Some("currency"),
            "You cannot combine currencies on a single customer. This customer has an active subscription, subscription schedule, discount, quote, or invoice item with currency usd.",
        );
        let expired = stripe_400(
            Some("discounts[0][promotion_code]"),
            "This promotion code has expired.",
        );
        let first_time = stripe_400(
            Some("discounts[0][promotion_code]"),
            "This promotion code can only be used on a customer's first purchase.",
        );
        let other = stripe_400(Some("line_items[0][price]"), "No such price");

        let codes: Vec<(u16, &str)> = [mixed, expired, first_time, other]
            .into_iter()
            .map(|e| {
                let e = session_error(e, &eur);
                (e.status().as_u16(), e.code())
            })
            .collect();

        assert_eq!(
            codes,
            [
                (409, "currency_locked"),
                (400, "promotion_code_expired"),
                (400, "promotion_code_invalid"),
                (502, "stripe_error"),
            ]
        );
    }

    #[test]
    fn free_and_unknown_plans_cannot_be_bought() {
        let catalog = billd_core::Catalog::seed();
        assert_eq!(
            purchasable_plan(&catalog, "free").unwrap_err().code(),
            "plan_not_purchasable"
        );
        assert_eq!(
            purchasable_plan(&catalog, "platinum").unwrap_err().code(),
            "unknown_plan"
        );
        assert_eq!(
            purchasable_plan(&catalog, "Bad Name").unwrap_err().code(),
            "unknown_plan"
        );
    }
}
