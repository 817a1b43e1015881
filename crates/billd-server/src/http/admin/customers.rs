//! Customers for operators: search by any id a customer is known by,
//! everything about one customer, and a resync from Stripe.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use billd_core::{CustomerId, Entitlements, StripeSubscriptionId};
use billd_store::{AuditRecord, CustomerRecord, OperatorAction, OutboxFilter, OutboxItem};
use billd_stripe::client::Params;
use serde::{Deserialize, Serialize};

use crate::http::api::{
    bounded_opt, bounds, customer_id, customer_not_found, store_error, ApiState,
};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::{EventSummary, DEFAULT_LIMIT, MAX_LIMIT};

/// How many of a customer's latest events, audit rows and emails the
/// customer view holds.
const RECENT: u32 = 50;

/// `GET /v1/admin/customers` query.
#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    /// A billd id (or its start), an email (or its start), or a Stripe id.
    pub query: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// One customer in a search result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerSummary {
    /// The app's user id.
    pub id: String,
    /// Email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// The linked Stripe customer.
    pub stripe_customer_id: Option<String>,
    /// When the account was deleted.
    pub deleted_at: Option<i64>,
    /// When billd first saw the customer.
    pub created_at: i64,
}

impl From<&CustomerRecord> for CustomerSummary {
    fn from(record: &CustomerRecord) -> Self {
        CustomerSummary {
            id: record.customer_id.to_string(),
            email: record.email.clone(),
            name: record.name.clone(),
            stripe_customer_id: record.stripe_customer_id.as_ref().map(ToString::to_string),
            deleted_at: record.deleted_at,
            created_at: record.created_at,
        }
    }
}

/// A page of customers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerPage {
    /// The customers, in id order.
    pub data: Vec<CustomerSummary>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[utoipa::path(
    get, path = "/v1/admin/customers", tag = "admin", operation_id = "search_customers",
    description = "Customers by billd id (or its start), email (or its start, any case) or any linked Stripe id (customer, subscription, invoice, charge …), in id order, paginated with cursors. Without `query`, every customer.",
    params(
        ("query" = Option<String>, Query, description = "What to look for"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page"),
        ("limit" = Option<u32>, Query, description = "Default 100, at most 1000"),
    ),
    responses(
        (status = 200, description = "A page of customers.", body = CustomerPage),
        (status = 400, description = "`invalid_query`, `invalid_customer_id` (cursor), `field_too_long`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn search_customers<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<CustomerPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest {
        code: "invalid_query",
        message: e.body_text(),
    })?;
    Ok(Json(search(&state, &query).await?))
}

/// A page of the customers `query` names (also the console's search).
pub(crate) async fn search<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    query: &SearchQuery,
) -> Result<CustomerPage, ApiError> {
    bounded_opt("query", query.query.as_deref(), bounds::QUERY_TEXT)?;
    let after = query.cursor.as_deref().map(customer_id).transpose()?;
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    // One more than the page tells whether there is a next one.
    let mut rows = state
        .store
        .search_customers(
            query.query.as_deref().unwrap_or(""),
            after.as_ref(),
            limit + 1,
        )
        .await
        .map_err(store_error)?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.customer_id.to_string())
    } else {
        None
    };
    Ok(CustomerPage {
        data: rows.iter().map(CustomerSummary::from).collect(),
        next_cursor,
    })
}

/// Everything about one customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AdminCustomerView)]
pub struct CustomerView {
    /// Who.
    pub customer: CustomerSummary,
    /// What it may do now (the body of `GET …/entitlements`); absent for a
    /// deleted customer.
    #[schema(value_type = Option<crate::http::openapi::EntitlementsDoc>)]
    pub entitlements: Option<Entitlements>,
    /// The billing state billd holds (subscriptions, invoices, disputes …).
    #[schema(value_type = Object)]
    pub state: billd_core::CustomerState,
    /// Optimistic concurrency counter of the state.
    pub version: i64,
    /// The latest events of its Stripe customers and objects, newest first.
    pub events: Vec<EventSummary>,
    /// The latest audit rows, newest first.
    #[schema(value_type = Vec<Object>)]
    pub audit: Vec<AuditRecord>,
    /// The latest emails and other outbox rows, newest first.
    #[schema(value_type = Vec<Object>)]
    pub outbox: Vec<OutboxItem>,
    /// The latest operator actions concerning it (console and admin API),
    /// newest first.
    #[schema(value_type = Vec<Object>)]
    pub actions: Vec<OperatorAction>,
}

#[utoipa::path(
    get, path = "/v1/admin/customers/{id}", tag = "admin", operation_id = "get_admin_customer",
    description = "Everything about one customer: profile, entitlements, billing state, its latest 50 events, audit rows, outbox rows (emails among them) and operator actions. Deleted customers too.",
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "The customer.", body = CustomerView),
        (status = 400, description = "`invalid_customer_id`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`customer_not_found`.", body = crate::http::openapi::ErrorBody),
    )
)]
pub(super) async fn get_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<CustomerView>, ApiError> {
    Ok(Json(customer_view(&state, &id).await?))
}

/// Everything about customer `id` (also the console's customer page).
pub(crate) async fn customer_view<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &str,
) -> Result<CustomerView, ApiError> {
    let id = customer_id(id)?;
    let store = &state.store;
    let record = store
        .get_customer(&id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| customer_not_found(&id))?;
    let entitlements = match record.deleted_at {
        Some(_) => None,
        None => Some(state.entitlements_of(&record).await?),
    };
    let events = store
        .customer_events(&id, RECENT)
        .await
        .map_err(store_error)?;
    let audit = store.list_audit(&id, RECENT).await.map_err(store_error)?;
    let outbox = store
        .list_outbox(&OutboxFilter {
            customer_id: Some(id.clone()),
            limit: RECENT,
            ..OutboxFilter::default()
        })
        .await
        .map_err(store_error)?;
    let actions = store
        .operator_actions(Some(&id), RECENT)
        .await
        .map_err(store_error)?;
    Ok(CustomerView {
        customer: CustomerSummary::from(&record),
        entitlements,
        version: record.version,
        state: record.state,
        events: events.into_iter().map(EventSummary::from).collect(),
        audit,
        outbox,
        actions,
    })
}

/// The answer to a resync.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Resynced {
    /// The Stripe subscriptions read and fed back.
    pub subscriptions: Vec<String>,
    /// False when the worker had not applied all of them before billd
    /// answered (they are applied moments later).
    pub applied: bool,
    /// The entitlements after the resync.
    #[schema(value_type = crate::http::openapi::EntitlementsDoc)]
    pub entitlements: Entitlements,
}

#[utoipa::path(
    post, path = "/v1/admin/customers/{id}/resync", tag = "admin", operation_id = "resync_customer",
    description = "Reads every subscription of the customer's Stripe customer from Stripe now and applies each as an authoritative snapshot through the inbox (what reconciliation does, for one customer, at once). Safe to repeat.",
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "Resynced.", body = Resynced),
        (status = 400, description = "`invalid_customer_id`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`customer_not_found`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`customer_deleted`, `no_stripe_customer` (never checked out: nothing to read).", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(super) async fn resync_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<Resynced>, ApiError> {
    let action = super::Action {
        name: "resync_customer",
        target: id.clone(),
        customer: CustomerId::parse(&id).ok(),
    };
    let done = resync(&state, &id).await;
    super::record_action(&state, &super::Actor::AdminApi, action, &done, |r| {
        Some(format!("{} subscriptions", r.subscriptions.len()))
    })
    .await;
    Ok(Json(done?))
}

/// Reads customer `id`'s subscriptions from Stripe and applies them (also
/// the console's resync action).
pub(crate) async fn resync<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &str,
) -> Result<Resynced, ApiError> {
    let id: CustomerId = customer_id(id)?;
    let record = crate::http::app::account::live_customer(&*state.store, &id).await?;
    let Some(stripe_customer) = record.stripe_customer_id.clone() else {
        return Err(ApiError::Conflict {
            code: "no_stripe_customer",
            message: format!("customer {id} has no Stripe customer yet: nothing to resync"),
        });
    };
    let observed = crate::pipeline::observation_ns();
    let stripe = state.stripe()?;
    let listed = stripe
        .list_all(
            "/v1/subscriptions",
            &Params::new()
                .set("customer", stripe_customer.as_str())
                .set("status", "all"),
            usize::MAX,
        )
        .await?;
    let mut subscriptions = Vec::new();
    let mut applied = true;
    for object in &listed {
        let Some(sub_id) = object["id"].as_str() else {
            continue;
        };
        let watermark = StripeSubscriptionId::parse(sub_id)
            .ok()
            .and_then(|sid| record.state.subscriptions.get(&sid))
            .map_or(i64::MIN, |known| known.stamp.created);
        applied &= crate::http::app::subscription::feed_back_snapshot(
            state, watermark, sub_id, object, observed,
        )
        .await?;
        subscriptions.push(sub_id.to_owned());
    }
    let record = crate::http::app::account::live_customer(&*state.store, &id).await?;
    Ok(Resynced {
        subscriptions,
        applied,
        entitlements: state.entitlements_of(&record).await?,
    })
}
