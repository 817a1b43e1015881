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

mod credits;
mod portal;
mod request;
mod session;
mod state;
mod stripe;
mod sync;
mod types;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use axum::Router;
use billd_core::CustomerId;

use crate::http::api::ApiState;
use crate::http::auth::{require_app_key, ApiKeys};
use crate::http::idempotency::Idempotency;
use crate::http::openapi::{route, route_with, Verb};
use crate::pipeline::BillingBackend;

// The handlers' OpenAPI descriptions, for the document's `paths(…)`.
pub(crate) use credits::__path_create_credits_checkout;
pub(crate) use portal::__path_create_portal;
pub(crate) use request::{parse_interval, seats_error};
pub(crate) use session::__path_create_checkout;
pub(crate) use sync::__path_sync_checkout;

/// What the checkout and portal handlers share.
pub(crate) struct CheckoutState<S: BillingBackend + ?Sized> {
    pub(super) api: ApiState<S>,
    pub(super) locks: Arc<Mutex<HashMap<CustomerId, Weak<tokio::sync::Mutex<()>>>>>,
    pub(super) prices: Arc<Mutex<HashMap<String, String>>>,
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
        session::create_checkout::<S>,
        idem.layer(),
    );
    let router = route(
        router,
        Verb::Post,
        "/v1/customers/{id}/checkout/sync",
        sync::sync_checkout::<S>,
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/credits/checkout",
        credits::create_credits_checkout::<S>,
        idem.layer(),
    );
    route(
        router,
        Verb::Post,
        "/v1/customers/{id}/portal",
        portal::create_portal::<S>,
    )
    .route_layer(axum::middleware::from_fn_with_state(keys, require_app_key))
    .with_state(CheckoutState {
        api,
        locks: Arc::default(),
        prices: Arc::default(),
    })
    .layer(axum::middleware::from_fn(crate::http::router::log_errors))
}
