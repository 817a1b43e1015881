//! The HTTP surface: the router ([`app`], [`service`]), bearer-key
//! authentication, the one error → status table ([`ApiError`]), the last
//! layer every response leaves through, the OpenAPI document, the app API
//! (`app/`: customers, checkout, subscriptions, usage, account deletion),
//! the admin API (`admin/`) and the Stripe webhook endpoint.
//!
//! Depends on `pipeline` and `telemetry`; nothing depends on it but the
//! crate root, which starts the server.

mod admin;
mod api;
mod app;
mod auth;
mod console;
mod error;
mod idempotency;
mod openapi;
mod respond;
mod router;
mod webhook;

pub use api::{bounds, routes, ApiConfig, ApiState, MAX_BODY_BYTES};
pub use app::{DowngradeTiming, ProrationBehavior};
pub use auth::{require_app_key, ApiKeys, Role};
pub use error::{ApiError, LoggedError, Transient};
pub use openapi::{
    served_routes, ApiDoc, CustomerPath, ErrorBody, ErrorDetail, IdempotencyHeader,
    StripeCallErrors, UsagePath, Verb,
};
pub use respond::shape;
pub use router::{app, service, AppState, WebhookConfig};
