//! The app API (`/v1/customers/…`, app or admin key) and the admin API
//! (`/v1/admin/…`, admin key): customer profiles, entitlements, the audit
//! log and inbox operations.

use std::sync::Arc;

use crate::openapi::{route, Verb};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use billd_core::{
    entitlements, usage_keys, Catalog, Currency, CustomerId, Email, EmailError, Entitlements,
    StripeCustomerErasure,
};
use billd_store::{
    AuditRecord, CustomerProfile, CustomerRecord, EventFilter, EventStatus, StoreError, StoredEvent,
};
use billd_stripe::client::StripeClient;
use serde::{Deserialize, Serialize};

use crate::auth::{require_admin_key, require_app_key, ApiKeys};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::idempotency::Idempotency;
use crate::lifecycle::BillingBackend;

/// The largest request body the app and admin API take (413
/// `payload_too_large` beyond), the webhook endpoint's limit too. Every body
/// is a few short fields, each bounded by [`bounds`]; a body under this limit
/// with a field over its bound is told which field (400 `field_too_long`).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most characters each free-text field of a request may have (400
/// `field_too_long`, naming the field, beyond). Far above any real value;
/// they stop a client from storing, forwarding to Stripe or echoing back
/// megabytes. README.md lists them.
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

/// Default and largest page sizes of the admin lists.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Knobs of the app API (checkout, plan changes, account deletion).
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Checkout requests one customer may make per minute; more → 429.
    pub checkout_rate_limit_per_min: u32,
    /// Checkout enables Stripe Tax (`automatic_tax[enabled]`).
    pub stripe_tax: bool,
    /// How plan changes are prorated (`BILLD_PRORATION_BEHAVIOR`).
    pub proration_behavior: crate::subscription_api::ProrationBehavior,
    /// What account deletion does to the Stripe customer
    /// (`BILLD_DELETE_STRIPE_CUSTOMER`).
    pub stripe_customer_erasure: StripeCustomerErasure,
    /// When downgrades take effect (`BILLD_DOWNGRADE_TIMING`).
    pub downgrade_timing: crate::subscription_api::DowngradeTiming,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            checkout_rate_limit_per_min: 10,
            stripe_tax: false,
            proration_behavior: Default::default(),
            stripe_customer_erasure: StripeCustomerErasure::default(),
            downgrade_timing: Default::default(),
        }
    }
}

/// What the API handlers share.
pub struct ApiState<S: BillingBackend + ?Sized> {
    pub(crate) store: Arc<S>,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The Stripe API; `None` makes the endpoints that call Stripe answer
    /// 503 `stripe_unavailable`.
    pub(crate) stripe: Option<StripeClient>,
    pub(crate) config: Arc<ApiConfig>,
}

impl<S: BillingBackend + ?Sized> Clone for ApiState<S> {
    fn clone(&self) -> Self {
        ApiState {
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            clock: self.clock.clone(),
            stripe: self.stripe.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: BillingBackend + ?Sized> ApiState<S> {
    /// The Stripe client, or 503 when billd runs without one.
    pub fn stripe(&self) -> Result<&StripeClient, ApiError> {
        Ok(billd_stripe::client::configured(self.stripe.as_ref())?)
    }
}

/// The app and admin API routes, authenticated by `keys`, ready to merge
/// into [`crate::app`]'s router. `stripe` serves the endpoints that call
/// Stripe (checkout, portal, plan changes).
pub fn routes<S: BillingBackend + ?Sized>(
    store: Arc<S>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    keys: ApiKeys,
    stripe: Option<StripeClient>,
    config: ApiConfig,
) -> Router {
    let usage = crate::app_api::routes(store.clone(), catalog.clone(), clock.clone(), keys.clone());
    let keys = Arc::new(keys);
    let idem = Idempotency::new(store.clone(), clock.clone());
    let state = ApiState {
        store,
        catalog,
        clock,
        stripe,
        config: Arc::new(config),
    };
    let checkout = crate::checkout::routes(state.clone(), keys.clone(), &idem);
    let app = route(
        Router::new(),
        Verb::Put,
        "/v1/customers/{id}",
        put_customer::<S>,
    );
    let app = route(app, Verb::Get, "/v1/customers/{id}", get_customer::<S>);
    let app = route(
        app,
        Verb::Delete,
        "/v1/customers/{id}",
        crate::account::delete_customer::<S>,
    );
    let app = route(
        app,
        Verb::Get,
        "/v1/customers/{id}/entitlements",
        get_entitlements::<S>,
    );
    let app = app
        .merge(crate::subscription_api::router::<S>(&idem))
        .route_layer(axum::middleware::from_fn_with_state(
            keys.clone(),
            require_app_key,
        ));
    let admin = route(Router::new(), Verb::Get, "/v1/admin/audit", get_audit::<S>);
    let admin = route(admin, Verb::Get, "/v1/admin/events", list_events::<S>);
    let admin = route(
        admin,
        Verb::Post,
        "/v1/admin/events/{id}/replay",
        replay_event::<S>,
    );
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        keys,
        require_admin_key,
    ));
    app.merge(admin)
        .with_state(state)
        .layer(axum::middleware::from_fn(crate::log_errors))
        .merge(usage)
        .merge(checkout)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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

/// `PUT /v1/customers/{id}` body: every field optional; an absent field
/// is cleared.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    /// Email address for billing notices (`name@example.com`, at most 254
    /// characters; empty clears it).
    #[schema(max_length = 254)]
    pub email: Option<String>,
    /// Display name (at most 256 characters).
    #[schema(max_length = 256)]
    pub name: Option<String>,
    /// ISO currency code for checkouts (`eur`).
    #[schema(max_length = 64)]
    pub preferred_currency: Option<String>,
}

/// The profile a [`CustomerBody`] asks for, parsed: 400 `field_too_long`,
/// `invalid_email` or `invalid_currency`.
fn customer_profile(id: CustomerId, body: CustomerBody) -> Result<CustomerProfile, ApiError> {
    bounded_opt("email", body.email.as_deref(), bounds::EMAIL)?;
    bounded_opt("name", body.name.as_deref(), bounds::NAME)?;
    bounded_opt(
        "preferred_currency",
        body.preferred_currency.as_deref(),
        bounds::CODE,
    )?;
    let email = body
        .email
        .as_deref()
        .filter(|e| !e.trim().is_empty())
        .map(Email::parse)
        .transpose()
        .map_err(|e| match e {
            EmailError::TooLong => ApiError::FieldTooLong {
                field: "email",
                max: bounds::EMAIL,
            },
            EmailError::Invalid(_) => ApiError::InvalidRequest {
                code: "invalid_email",
                message: e.to_string(),
            },
        })?;
    let preferred_currency = body
        .preferred_currency
        .as_deref()
        .map(Currency::parse)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest {
            code: "invalid_currency",
            message: e.to_string(),
        })?
        .map(|c| c.to_string());
    Ok(CustomerProfile {
        customer_id: id,
        email: email.map(String::from),
        name: body.name,
        preferred_currency,
    })
}

/// A customer as the API shows it (no billing state document).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    /// The app's user id.
    #[schema(value_type = String)]
    pub id: CustomerId,
    /// Email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Preferred checkout currency.
    pub preferred_currency: Option<String>,
    /// The linked Stripe customer.
    pub stripe_customer_id: Option<String>,
    /// When the customer was created (unix seconds).
    pub created_at: i64,
}

#[utoipa::path(
    put, path = "/v1/customers/{id}", tag = "app",
    description = "Creates or updates a customer by the app's own user id.",
    params(crate::openapi::CustomerPath),
    request_body = CustomerBody,
    responses(
        (status = 200, description = "Updated.", body = CustomerView),
        (status = 201, description = "Created.", body = CustomerView),
        (status = 400, description = "`invalid_email`, `invalid_currency`, `field_too_long`, `invalid_body`.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`customer_deleted`: the id belonged to a deleted account (its profile is never written again).", body = crate::openapi::ErrorBody),
    )
)]
async fn put_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CustomerBody>, JsonRejection>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body?;
    let profile = customer_profile(id, body)?;
    let upserted = state
        .store
        .upsert_customer(&profile, state.clock.now())
        .await
        .map_err(store_error)?;
    let c = upserted.customer;
    // The store never rewrites a deleted customer's erased profile; the
    // answer is the same 404 every other per-customer route gives.
    if c.deleted_at.is_some() {
        return Err(crate::account::customer_deleted(&c.customer_id));
    }
    let status = if upserted.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(CustomerView::from(c))))
}

impl From<CustomerRecord> for CustomerView {
    fn from(c: CustomerRecord) -> Self {
        CustomerView {
            id: c.customer_id,
            email: c.email,
            name: c.name,
            preferred_currency: c.preferred_currency,
            stripe_customer_id: c.stripe_customer_id.map(|s| s.to_string()),
            created_at: c.created_at,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/customers/{id}", tag = "app",
    description = "The customer's profile: the same body `PUT` answers.",
    params(crate::openapi::CustomerPath),
    responses(
        (status = 200, description = "The customer.", body = CustomerView),
        (status = 404, description = "`customer_not_found`, `customer_deleted`: no such customer, or the account was deleted.", body = crate::openapi::ErrorBody),
    )
)]
async fn get_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    let id = customer_id(&id)?;
    let record = crate::account::live_customer(&*state.store, &id).await?;
    Ok(Json(CustomerView::from(record)))
}

#[utoipa::path(
    get, path = "/v1/customers/{id}/entitlements", tag = "app",
    description = "Plan, status, access and per-feature limits, usage and remaining.",
    params(crate::openapi::CustomerPath),
    responses(
        (status = 200, description = "`plan`, `status`, `access`, `grace_until`, `trial_end`, `cancel_at_period_end`, `action_required`, `discount`, `features.{name}.{limit,used,remaining,resets_at}`.", body = Object),
    )
)]
async fn get_entitlements<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<Entitlements>, ApiError> {
    let id = customer_id(&id)?;
    let record = crate::account::live_customer(&*state.store, &id).await?;
    let now = state.clock.now();
    let keys = usage_keys(&record.state, &state.catalog, now);
    let usage = state
        .store
        .load_usage(&id, &keys)
        .await
        .map_err(store_error)?;
    Ok(Json(entitlements(
        &record.state,
        &state.catalog,
        &usage,
        now,
    )))
}

/// `GET /v1/admin/audit` query.
#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    /// Whose audit log.
    pub customer: String,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// A page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct List<T> {
    /// The rows, newest first.
    pub data: Vec<T>,
}

#[utoipa::path(
    get, path = "/v1/admin/audit", tag = "admin", operation_id = "list_audit",
    description = "A customer's audit rows, newest first.",
    params(("customer" = String, Query, description = "The app's user id"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "`{data: [{id, customer_id, at, field, before, after, reason, event_type}]}`.", body = Object),
        (status = 400, description = "`invalid_query`, `invalid_customer_id`.", body = crate::openapi::ErrorBody),
    )
)]
async fn get_audit<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<List<AuditRecord>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let id = customer_id(&query.customer)?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let data = state
        .store
        .list_audit(&id, limit)
        .await
        .map_err(store_error)?;
    Ok(Json(List { data }))
}

/// `GET /v1/admin/events` query.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Only events with this status (`unlinked`, `dead`, …).
    pub status: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// An inbox row without its payload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventSummary {
    /// Stripe event id.
    pub id: String,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Stripe's `created`.
    pub created: i64,
    /// `data.object.id`.
    pub object_id: Option<String>,
    /// The Stripe customer.
    pub stripe_customer: Option<String>,
    /// Processing status.
    #[schema(value_type = String)]
    pub status: EventStatus,
    /// Attempts so far.
    pub attempts: i32,
    /// The last processing error.
    pub last_error: Option<String>,
    /// When billd received it.
    pub received_at: i64,
    /// When processing finished.
    pub processed_at: Option<i64>,
}

impl From<StoredEvent> for EventSummary {
    fn from(e: StoredEvent) -> Self {
        EventSummary {
            id: e.id,
            event_type: e.event_type,
            created: e.created,
            object_id: e.object_id,
            stripe_customer: e.stripe_customer,
            status: e.status,
            attempts: e.attempts,
            last_error: e.last_error,
            received_at: e.received_at,
            processed_at: e.processed_at,
        }
    }
}

#[utoipa::path(
    get, path = "/v1/admin/events", tag = "admin",
    description = "Inbox rows without payloads, newest first.",
    params(("status" = Option<String>, Query, description = "pending, processing, processed, failed, dead, skipped, unlinked"), ("type" = Option<String>, Query, description = "Event type"), ("limit" = Option<u32>, Query, description = "Default 100, at most 1000")),
    responses(
        (status = 200, description = "The rows, newest first.", body = List<EventSummary>),
        (status = 400, description = "`invalid_query`, `invalid_status`, `field_too_long`.", body = crate::openapi::ErrorBody),
    )
)]
async fn list_events<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<List<EventSummary>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<EventStatus>)
        .transpose()
        .map_err(|e| ApiError::InvalidRequest {
            code: "invalid_status",
            message: e.to_string(),
        })?;
    bounded_opt("type", query.event_type.as_deref(), bounds::QUERY_TEXT)?;
    let filter = EventFilter {
        status,
        event_type: query.event_type,
        limit: query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
    };
    let events = state
        .store
        .list_events(&filter)
        .await
        .map_err(store_error)?;
    Ok(Json(List {
        data: events.into_iter().map(EventSummary::from).collect(),
    }))
}

/// The answer to a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// The event id.
    pub id: String,
    /// Always `pending`: the worker picks it up.
    #[schema(value_type = String)]
    pub status: EventStatus,
}

#[utoipa::path(
    post, path = "/v1/admin/events/{id}/replay", tag = "admin",
    description = "Puts an event back to pending.",
    params(("id" = String, Path, description = "Stripe event id")),
    responses(
        (status = 200, description = "Back to `pending`.", body = Replayed),
        (status = 404, description = "`event_not_found`.", body = crate::openapi::ErrorBody),
    )
)]
async fn replay_event<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<Replayed>, ApiError> {
    let found = state
        .store
        .requeue_event(&id, state.clock.now())
        .await
        .map_err(store_error)?;
    if !found {
        return Err(ApiError::NotFound {
            code: "event_not_found",
            message: format!("no event {id}"),
        });
    }
    Ok(Json(Replayed {
        id,
        status: EventStatus::Pending,
    }))
}
