//! Customer profiles and entitlements: `PUT` and `GET
//! /v1/customers/{id}`, `GET /v1/customers/{id}/entitlements` (app key).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::{Json, Router};
use billd_core::{Currency, CustomerId, Email, EmailError};
use billd_store::{CustomerProfile, CustomerRecord};
use serde::{Deserialize, Serialize};

use crate::http::api::{bounded_opt, bounds, customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::http::openapi::{route, Verb};
use crate::pipeline::BillingBackend;

/// The customer routes: `PUT`, `GET` and `DELETE /v1/customers/{id}` and
/// the entitlements.
pub(crate) fn router<S: BillingBackend + ?Sized>() -> Router<ApiState<S>> {
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
        crate::http::app::account::delete_customer::<S>,
    );
    route(
        app,
        Verb::Get,
        "/v1/customers/{id}/entitlements",
        get_entitlements::<S>,
    )
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
#[schema(as = Customer)]
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
    params(crate::http::openapi::CustomerPath),
    request_body = CustomerBody,
    responses(
        (status = 200, description = "Updated.", body = CustomerView),
        (status = 201, description = "Created.", body = CustomerView),
        (status = 400, description = "`invalid_email`, `invalid_currency`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`customer_deleted`: the id belonged to a deleted account (its profile is never written again).", body = crate::http::openapi::ErrorBody),
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
        return Err(crate::http::app::account::customer_deleted(&c.customer_id));
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
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "The customer.", body = CustomerView),
        (status = 404, description = "`customer_not_found`, `customer_deleted`: no such customer, or the account was deleted.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn get_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    let id = customer_id(&id)?;
    let record = crate::http::app::account::live_customer(&*state.store, &id).await?;
    Ok(Json(CustomerView::from(record)))
}

#[utoipa::path(
    get, path = "/v1/customers/{id}/entitlements", tag = "app",
    description = "Plan, status, access and per-feature limits, usage and remaining.",
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "`plan`, `status`, `access`, `grace_until`, `trial_end`, `cancel_at_period_end`, `action_required`, `discount`, `features.{name}.{limit,included,used,remaining,overage_used,overage_cap,resets_at}` (`overage_cap` is set while overage is open).", body = crate::http::openapi::EntitlementsDoc),
    )
)]
async fn get_entitlements<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let id = customer_id(&id)?;
    let answer = crate::http::app::usage::current_entitlements_json(
        &*state.store,
        &state.catalog,
        state.clock.now(),
        &state.states,
        state.reads.as_ref(),
        &id,
    )
    .await?;
    Ok((
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        answer,
    ))
}
