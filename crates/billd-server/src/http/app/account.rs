//! Account deletion: `DELETE /v1/customers/{id}`.
//!
//! One store transaction erases the personal data (profile, the state
//! document's copies, personal audit values, and the personal fields of the
//! customer's stored Stripe payloads and outbox rows), keeps the row, its
//! ids, its events and its audit trail, sets
//! `deleted_at`, writes an audit row and enqueues the Stripe work: cancel
//! every live subscription now, then delete (or anonymise, per
//! `BILLD_DELETE_STRIPE_CUSTOMER`) the Stripe customer. The outbox retries
//! that work until Stripe confirms, across crashes; the customer is only
//! touched once every cancel is done.

use axum::extract::{Path, State};
use axum::Json;
use billd_core::{
    account_erasure_effects, erase_personal_data, AuditEntry, CancelReason, CustomerId, Effect,
    StripeCustomerErasure,
};
use billd_store::{
    CustomerCommit, CustomerRecord, NewOutboxItem, OutboxFilter, OutboxStatus, StoreError,
    VERSION_CONFLICT,
};
use serde::Serialize;

use crate::http::api::{customer_id, customer_not_found, store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

/// How often a deletion is retried when a webhook moved the customer's
/// version in between.
const VERSION_RETRIES: usize = 8;

/// The audit row's `reason` for a deletion through the API.
pub const DELETION_REASON: &str = "api";

/// The answer to `DELETE /v1/customers/{id}`, the same for every repeat
/// (only `pending_stripe_actions` shrinks as the outbox works).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct DeletedCustomer {
    /// The app's user id (kept, with the audit trail).
    #[schema(value_type = String)]
    pub id: CustomerId,
    /// When the account was first deleted (unix seconds).
    pub deleted_at: i64,
    /// The Stripe work not yet confirmed (empty once Stripe has it all).
    pub pending_stripe_actions: Vec<PendingStripeAction>,
}

/// One Stripe call of a deletion that is not done yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PendingStripeAction {
    /// `cancel_subscription`, `delete_stripe_customer` or
    /// `anonymize_stripe_customer`.
    #[schema(value_type = String)]
    pub action: &'static str,
    /// The Stripe object (`sub_…`, `cus_…`).
    pub object: String,
    /// `pending` or `processing` (retried), or `dead` (needs an operator:
    /// `billd` alerts and keeps the row).
    #[schema(value_type = String)]
    pub status: OutboxStatus,
    /// The last error, while Stripe refuses or is unreachable.
    pub last_error: Option<String>,
}

/// The 404 for a customer whose account was deleted.
pub fn customer_deleted(id: &CustomerId) -> ApiError {
    ApiError::NotFound {
        code: "customer_deleted",
        message: format!("customer {id} was deleted; its id is not reused"),
    }
}

/// The customer, unless unknown (404 `customer_not_found`) or deleted
/// (404 `customer_deleted`): the one gate every `/v1/customers/{id}/…`
/// route passes before it reads, counts or calls Stripe.
pub async fn live_customer<S: BillingBackend + ?Sized>(
    store: &S,
    id: &CustomerId,
) -> Result<CustomerRecord, ApiError> {
    let record = store
        .get_customer(id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| customer_not_found(id))?;
    if record.deleted_at.is_some() {
        return Err(customer_deleted(id));
    }
    Ok(record)
}

#[utoipa::path(
    delete, path = "/v1/customers/{id}", tag = "app",
    description = "Deletes the account: erases personal data, keeps the audit trail, cancels at Stripe and deletes (or anonymises) the Stripe customer through the outbox. Idempotent.",
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "Deleted (now or before).", body = DeletedCustomer),
        (status = 404, description = "`customer_not_found`.", body = crate::http::openapi::ErrorBody),
    )
)]
/// `DELETE /v1/customers/{id}`.
pub(crate) async fn delete_customer<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<DeletedCustomer>, ApiError> {
    let id = customer_id(&id)?;
    for _ in 0..VERSION_RETRIES {
        let record = state
            .store
            .get_customer(&id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| customer_not_found(&id))?;
        if let Some(deleted_at) = record.deleted_at {
            return answer(&*state.store, id, deleted_at).await;
        }
        let now = state.clock.now();
        let outbox = account_erasure_effects(
            &record.state,
            record.stripe_customer_id.as_ref(),
            state.config.stripe_customer_erasure,
        )
        .iter()
        .map(NewOutboxItem::from_effect)
        .collect::<Result<Vec<_>, _>>()
        .map_err(store_error)?;
        let commit = CustomerCommit {
            customer_id: id.clone(),
            expected_version: record.version,
            state: erase_personal_data(&record.state),
            audit: vec![AuditEntry {
                field: "account".into(),
                before: Some("active".into()),
                after: Some("deleted".into()),
                reason: DELETION_REASON.into(),
                event_type: "account.deleted".into(),
                at: now,
            }],
            outbox,
            links: Vec::new(),
        };
        match state.store.delete_customer(&commit, now).await {
            Ok(_) => {
                tracing::info!(customer = %id, "account deleted");
                return answer(&*state.store, id, now).await;
            }
            // A webhook committed in between: erase what it brought too.
            Err(StoreError::Conflict { constraint }) if constraint == VERSION_CONFLICT => continue,
            Err(e) => return Err(store_error(e)),
        }
    }
    Err(ApiError::Internal(anyhow::anyhow!(
        "customer {id} kept changing during {VERSION_RETRIES} deletion attempts"
    )))
}

async fn answer<S: BillingBackend + ?Sized>(
    store: &S,
    id: CustomerId,
    deleted_at: i64,
) -> Result<Json<DeletedCustomer>, ApiError> {
    let rows = store
        .list_outbox(&OutboxFilter {
            status: None,
            customer_id: Some(id.clone()),
            limit: 0,
        })
        .await
        .map_err(store_error)?;
    let mut pending: Vec<PendingStripeAction> = rows
        .iter()
        .filter(|row| row.status != OutboxStatus::Sent)
        .filter_map(|row| {
            let (action, object) = match row.effect().ok()? {
                Effect::CancelSubscription {
                    subscription,
                    reason: CancelReason::AccountDeleted,
                    ..
                } => ("cancel_subscription", subscription.to_string()),
                Effect::DeleteStripeCustomer {
                    customer, erasure, ..
                } => (erasure_action(erasure), customer.to_string()),
                _ => return None,
            };
            Some(PendingStripeAction {
                action,
                object,
                status: row.status,
                last_error: row.last_error.clone(),
            })
        })
        .collect();
    // The outbox lists newest first; show the work in the order it runs.
    pending.reverse();
    Ok(Json(DeletedCustomer {
        id,
        deleted_at,
        pending_stripe_actions: pending,
    }))
}

fn erasure_action(erasure: StripeCustomerErasure) -> &'static str {
    match erasure {
        StripeCustomerErasure::Delete => "delete_stripe_customer",
        StripeCustomerErasure::Anonymize => "anonymize_stripe_customer",
    }
}
