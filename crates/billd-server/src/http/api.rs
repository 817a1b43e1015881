//! The app API (`/v1/customers/…`, app or admin key, in `app/`) and the
//! admin API (`/v1/admin/…`, admin key, in `admin/`) assembled into one
//! router, with what their handlers share: the state, the body limit, the
//! field bounds and the common error answers.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::Router;
use billd_core::{Catalog, CustomerId, StripeCustomerErasure};
use billd_store::StoreError;
use billd_stripe::client::StripeClient;

use crate::http::auth::{require_admin_key, require_app_key, ApiKeys};
use crate::http::error::ApiError;
use crate::http::idempotency::Idempotency;
use crate::pipeline::{BillingBackend, Clock};

/// The largest request body the app and admin API take (413
/// `payload_too_large` beyond), the webhook endpoint's limit too. Every body
/// is a few short fields, each bounded by [`bounds`]; a body under this limit
/// with a field over its bound is told which field (400 `field_too_long`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most characters each free-text field of a request may have (400
/// `field_too_long`, naming the field, beyond). Far above any real value;
/// they stop a client from storing, forwarding to Stripe or echoing back
/// megabytes. The book lists them (docs/src/integration.md, "Limits on
/// input").
pub mod bounds {
    /// `email` (RFC 5321's limit; see [`billd_core::Email`]).
    pub const EMAIL: usize = billd_core::Email::MAX_LEN;
    /// A customer's `name`.
    pub const NAME: usize = 256;
    /// Codes checked against a list: `plan`, `currency`,
    /// `preferred_currency` (catalog names are at most 64 characters).
    pub const CODE: usize = 64;
    /// `success_url`, `cancel_url`, `return_url` (what browsers and Stripe
    /// reliably take).
    pub const URL: usize = 2048;
    /// `promotion_code` (a code a customer types).
    pub const PROMOTION_CODE: usize = 255;
    /// `idempotency_key`.
    pub const IDEMPOTENCY_KEY: usize = 255;
    /// Free-text query filters (`type` of the admin events list).
    pub const QUERY_TEXT: usize = 255;
    /// Stripe object ids sent by the app (`session_id`; Stripe's own are
    /// well under this).
    pub const STRIPE_ID: usize = 255;
}

/// 400 `field_too_long` when `value` has more than `max` characters.
pub(crate) fn bounded(field: &'static str, value: &str, max: usize) -> Result<(), ApiError> {
    // Counting stops one past the bound, so a huge value costs no more.
    if value.chars().take(max + 1).count() > max {
        return Err(ApiError::FieldTooLong { field, max });
    }
    Ok(())
}

/// [`bounded`] for an optional field.
pub(crate) fn bounded_opt(
    field: &'static str,
    value: Option<&str>,
    max: usize,
) -> Result<(), ApiError> {
    value.map_or(Ok(()), |v| bounded(field, v, max))
}

/// Knobs of the app API (checkout, plan changes, account deletion).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Checkout requests one customer may make per minute; more → 429.
    pub checkout_rate_limit_per_min: u32,
    /// Checkout enables Stripe Tax (`automatic_tax[enabled]`).
    pub stripe_tax: bool,
    /// How plan changes are prorated (`BILLD_PRORATION_BEHAVIOR`).
    pub proration_behavior: crate::http::app::subscription::ProrationBehavior,
    /// What account deletion does to the Stripe customer
    /// (`BILLD_DELETE_STRIPE_CUSTOMER`).
    pub stripe_customer_erasure: StripeCustomerErasure,
    /// When downgrades take effect (`BILLD_DOWNGRADE_TIMING`).
    pub downgrade_timing: crate::http::app::subscription::DowngradeTiming,
    /// The console's session cookie is `Secure` (billd is served over
    /// https: `BILLD_PUBLIC_URL` starts with `https://`).
    pub secure_cookies: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            checkout_rate_limit_per_min: 10,
            stripe_tax: false,
            proration_behavior: Default::default(),
            stripe_customer_erasure: StripeCustomerErasure::default(),
            downgrade_timing: Default::default(),
            secure_cookies: false,
        }
    }
}

/// What the API handlers share.
pub struct ApiState<S: BillingBackend + ?Sized> {
    pub(crate) store: Arc<S>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The Stripe API; `None` makes the endpoints that call Stripe answer
    /// 503 `stripe_unavailable`. Behind an `Arc`: every request clones
    /// the state, and a client's configuration is strings.
    pub(crate) stripe: Option<Arc<StripeClient>>,
    pub(crate) config: Arc<ApiConfig>,
    /// Customer states parsed recently, shared with the usage routes.
    pub(crate) states: Arc<crate::http::app::usage_cache::StateCache>,
    /// On PostgreSQL, entitlement reads that arrive together share one
    /// statement (see [`crate::http::app::usage_reads`]); SQLite answers
    /// from memory or reads locally.
    pub(crate) reads: Option<crate::http::app::usage_reads::ReadBatcher>,
}

impl<S: BillingBackend + ?Sized> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            clock: self.clock.clone(),
            stripe: self.stripe.clone(),
            config: self.config.clone(),
            states: self.states.clone(),
            reads: self.reads.clone(),
        }
    }
}

impl<S: BillingBackend + ?Sized> ApiState<S> {
    /// The Stripe client, or 503 when billd runs without one.
    pub fn stripe(&self) -> Result<&StripeClient, ApiError> {
        Ok(billd_stripe::client::configured(self.stripe.as_deref())?)
    }

    /// What `record`'s customer may do now: its state with the usage
    /// counters of the current periods (the body of `GET …/entitlements`).
    pub(crate) async fn entitlements_of(
        &self,
        record: &billd_store::CustomerRecord,
    ) -> Result<billd_core::Entitlements, ApiError> {
        let now = self.clock.now();
        let keys = billd_core::usage_keys(&record.state, &self.catalog, now);
        let usage = self
            .store
            .load_usage(&record.customer_id, &keys)
            .await
            .map_err(store_error)?;
        Ok(billd_core::entitlements(
            &record.state,
            &self.catalog,
            &usage,
            now,
        ))
    }
}

/// The app and admin API routes, authenticated by `keys`, ready to merge
/// into [`crate::http::router::app`]'s router. `stripe` serves the endpoints that call
/// Stripe (checkout, portal, plan changes).
pub fn routes<S: BillingBackend + ?Sized>(
    store: Arc<S>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    keys: ApiKeys,
    stripe: Option<StripeClient>,
    config: ApiConfig,
) -> Router {
    let states = Arc::new(crate::http::app::usage_cache::StateCache::new(
        crate::http::app::usage_cache::CAPACITY,
    ));
    let usage = crate::http::app::usage::routes(
        store.clone(),
        catalog.clone(),
        clock.clone(),
        keys.clone(),
        states.clone(),
    );
    let keys = Arc::new(keys);
    let idem = Idempotency::new(store.clone(), clock.clone());
    // On PostgreSQL, entitlement reads answer from memory only while this
    // process hears every process's changes.
    store.follow_changes();
    let reads = (store.backend() == billd_store::Backend::Postgres).then(|| {
        crate::http::app::usage_reads::ReadBatcher::start(
            store.clone(),
            crate::http::app::usage_reads::MAX_BATCH,
            crate::http::app::usage_reads::IN_FLIGHT,
        )
    });
    let state = ApiState {
        store,
        catalog,
        clock,
        stripe: stripe.map(Arc::new),
        config: Arc::new(config),
        states,
        reads,
    };
    let checkout = crate::http::app::checkout::routes(state.clone(), keys.clone(), &idem);
    let app = crate::http::app::customers::router::<S>()
        .merge(crate::http::app::subscription::router::<S>(&idem))
        .route_layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            require_app_key,
        ));
    let admin = crate::http::admin::router::<S>();
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        keys.clone(),
        require_admin_key,
    ));
    let secure = state.config.secure_cookies;
    let console = crate::http::console::routes(state.clone(), keys, secure);
    app.merge(admin)
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::http::router::log_errors))
        .merge(usage)
        .merge(checkout)
        .merge(console)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized))
}

/// The most of an oversized body billd reads, and discards, before
/// answering 413.
const DRAIN_MAX_BYTES: u64 = 16 << 20;

/// 413 `payload_too_large` for a body whose declared length is over
/// [`MAX_BODY_BYTES`], answered after reading it (up to [`DRAIN_MAX_BYTES`]):
/// answered at once, hyper would close the connection under a client still
/// sending, which then sees a reset connection instead of the answer.
async fn refuse_oversized(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use futures::StreamExt;
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY_BYTES as u64 => {
            if len <= DRAIN_MAX_BYTES {
                let mut body = request.into_body().into_data_stream();
                while let Some(Ok(_)) = body.next().await {}
            }
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
            .into_response()
        }
        _ => next.run(request).await,
    }
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Unavailable(cause) => ApiError::StoreUnavailable(cause),
        other => ApiError::Internal(other.into()),
    }
}

pub(crate) fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| ApiError::InvalidRequest {
        code: "invalid_customer_id",
        message: e.to_string(),
    })
}

pub(crate) fn customer_not_found(id: &CustomerId) -> ApiError {
    ApiError::NotFound {
        code: "customer_not_found",
        message: format!("no customer {id}"),
    }
}
