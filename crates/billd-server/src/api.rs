//! The app API (`/v1/customers/…`, app or admin key) and the admin API
//! (`/v1/admin/…`, admin key): customer profiles, entitlements, the audit
//! log and inbox operations.

use std::sync::Arc;

use crate::openapi::{route, Verb};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Json, Router};
use billd_core::{
    entitlements, usage_keys, Catalog, Currency, CustomerId, Entitlements, StripeCustomerErasure,
};
use billd_store::{
    AuditRecord, CustomerProfile, EventFilter, EventStatus, StoreError, StoredEvent,
};
use billd_stripe::client::StripeClient;
use serde::{Deserialize, Serialize};

use crate::auth::{require_admin_key, require_app_key, ApiKeys};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::idempotency::Idempotency;
use crate::lifecycle::BillingBackend;

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

pub(crate) fn invalid_body(e: impl std::fmt::Display) -> ApiError {
    ApiError::InvalidRequest {
        code: "invalid_body",
        message: e.to_string(),
    }
}

pub(crate) fn customer_not_found(id: &CustomerId) -> ApiError {
    ApiError::NotFound {
        code: "customer_not_found",
        message: format!("no customer {id}"),
    }
}

/// `PUT /v1/customers/{id}` body: every field optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerBody {
    /// Email address for billing notices.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// ISO currency code for checkouts (`eur`).
    pub preferred_currency: Option<String>,
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
        (status = 400, description = "`invalid_currency`, `invalid_body`.", body = crate::openapi::ErrorBody),
        (status = 404, description = "`customer_deleted`: the id belonged to a deleted account (its profile is never written again).", body = crate::openapi::ErrorBody),
    )
)]
async fn put_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    body: Result<Json<CustomerBody>, JsonRejection>,
) -> Result<(StatusCode, Json<CustomerView>), ApiError> {
    let id = customer_id(&id)?;
    let Json(body) = body.map_err(|e| invalid_body(e.body_text()))?;
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
    let profile = CustomerProfile {
        customer_id: id,
        email: body.email.filter(|e| !e.trim().is_empty()),
        name: body.name,
        preferred_currency,
    };
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
    Ok((
        status,
        Json(CustomerView {
            id: c.customer_id,
            email: c.email,
            name: c.name,
            preferred_currency: c.preferred_currency,
            stripe_customer_id: c.stripe_customer_id.map(|s| s.to_string()),
            created_at: c.created_at,
        }),
    ))
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
        (status = 400, description = "`invalid_query`, `invalid_status`.", body = crate::openapi::ErrorBody),
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
