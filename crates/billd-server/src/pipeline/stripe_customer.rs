//! The Stripe customer of a billd customer: created once, with an
//! idempotency key derived from the billd customer id (and a generation
//! that moves on only when an earlier Stripe customer was deleted), carrying
//! `metadata[billd_customer_id]`, linked in the store at once and reused
//! from then on (audit item W2). Checkout calls it; anything else that needs
//! a Stripe customer should too. Account deletion erases it again
//! ([`erase_stripe_customer`], from the outbox).

use billd_core::{CustomerId, StripeCustomerErasure, StripeCustomerId};
use billd_store::{CustomerRecord, StoreError};
use billd_stripe::client::{Params, StripeClient, StripeError};
use serde_json::Value;

use crate::pipeline::lifecycle::BillingBackend;

/// Why the customer's live Stripe customer could not be had. The HTTP
/// layer's error table maps each to its answer.
#[derive(Debug, thiserror::Error)]
pub enum StripeCustomerError {
    /// A Stripe call failed.
    #[error(transparent)]
    Stripe(#[from] StripeError),
    /// Linking the customer failed in the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stripe answered, but not with a customer billd can use.
    #[error("{0}")]
    Rejected(String),
    /// Stripe answered with something billd cannot read.
    #[error(transparent)]
    Internal(anyhow::Error),
}

/// A live Stripe customer as billd needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StripeCustomer {
    /// `cus_…`.
    pub id: StripeCustomerId,
    /// The currency Stripe locked the customer to with its first
    /// subscription (or invoice); `None` while it has none.
    pub currency: Option<String>,
}

impl StripeCustomer {
    fn from_object(object: &Value) -> Result<Self, StripeCustomerError> {
        let raw = object.get("id").and_then(Value::as_str).unwrap_or_default();
        let id = StripeCustomerId::parse(raw).map_err(|e| {
            StripeCustomerError::Internal(anyhow::anyhow!(
                "Stripe returned customer id {raw:?}: {e}"
            ))
        })?;
        Ok(StripeCustomer {
            id,
            currency: object
                .get("currency")
                .and_then(Value::as_str)
                .map(str::to_ascii_lowercase),
        })
    }
}

/// The Stripe customer billd currently links to `record`, if any.
pub(crate) fn linked_stripe_customer(record: &CustomerRecord) -> Option<StripeCustomerId> {
    record
        .stripe_customer_id
        .clone()
        .or_else(|| record.state.stripe_customer().cloned())
}

/// The idempotency key of the `generation`-th Stripe customer of `customer`:
/// a retry after a crash (or a second billd process) gets the same Stripe
/// customer back instead of a duplicate.
pub(crate) fn customer_idempotency_key(customer: &CustomerId, generation: usize) -> String {
    format!("billd-customer-{customer}-{generation}")
}

/// The customer's live Stripe customer: the linked one if Stripe still has
/// it, else a new one (created idempotently and linked before returning).
pub(crate) async fn ensure_stripe_customer<S: BillingBackend + ?Sized>(
    store: &S,
    stripe: &StripeClient,
    record: &CustomerRecord,
    now: i64,
) -> Result<StripeCustomer, StripeCustomerError> {
    let linked = linked_stripe_customer(record);
    if let Some(id) = &linked {
        match stripe
            .get(&format!("/v1/customers/{id}"), &Params::new())
            .await
        {
            Ok(object) if object.get("deleted").and_then(Value::as_bool) != Some(true) => {
                return StripeCustomer::from_object(&object);
            }
            // Deleted at Stripe (the webhook may not have arrived yet):
            // the customer gets a new one below.
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    // Every Stripe customer billd knew for this customer is gone; the next
    // one is numbered after them so its idempotency key is fresh.
    let mut known: Vec<&StripeCustomerId> = record.state.stripe_customers.keys().collect();
    if let Some(id) = &linked {
        if !known.contains(&id) {
            known.push(id);
        }
    }
    let generation = known.len();
    let customer = &record.customer_id;
    let params = Params::new()
        .set_opt("email", record.email.as_deref())
        .set_opt("name", record.name.as_deref())
        .set("metadata[billd_customer_id]", customer.as_str());
    let key = customer_idempotency_key(customer, generation);
    let created = match stripe.post("/v1/customers", &params, Some(&key)).await {
        Ok(object) => StripeCustomer::from_object(&object)?,
        // The key was used with other parameters: an earlier attempt created
        // the customer (then crashed before linking it) and the profile has
        // changed since. Find that customer by its metadata.
        Err(StripeError::Api(e)) if e.kind == "idempotency_error" => {
            find_by_metadata(stripe, customer, &known)
                .await?
                .ok_or_else(|| {
                    StripeCustomerError::Rejected(format!(
                        "idempotency key {key} was used with other parameters and no Stripe customer carries metadata[billd_customer_id]={customer}"
                    ))
                })?
        }
        Err(e) => return Err(e.into()),
    };
    store
        .link_stripe_customer(customer, &created.id, now)
        .await?;
    tracing::info!(customer = %customer, stripe_customer = %created.id, generation, "created the Stripe customer");
    Ok(created)
}

/// The newest live Stripe customer carrying `metadata[billd_customer_id]`
/// that is not one of `known` (all of which are deleted).
async fn find_by_metadata(
    stripe: &StripeClient,
    customer: &CustomerId,
    known: &[&StripeCustomerId],
) -> Result<Option<StripeCustomer>, StripeCustomerError> {
    let query = format!("metadata['billd_customer_id']:'{customer}'");
    let found = stripe
        .get(
            "/v1/customers/search",
            &Params::new().set("query", query).set("limit", 100),
        )
        .await?;
    let newest = found
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| {
            let id = c.get("id").and_then(Value::as_str).unwrap_or_default();
            !known.iter().any(|k| k.as_str() == id)
        })
        .max_by_key(|c| c.get("created").and_then(Value::as_i64).unwrap_or(0));
    newest.map(StripeCustomer::from_object).transpose()
}

/// Deletes or anonymises `customer` at Stripe with `idempotency_key`. A
/// customer Stripe does not have (already deleted) counts as done.
pub async fn erase_stripe_customer(
    stripe: &StripeClient,
    customer: &StripeCustomerId,
    erasure: StripeCustomerErasure,
    idempotency_key: &str,
) -> Result<(), StripeError> {
    let path = format!("/v1/customers/{customer}");
    let result = match erasure {
        StripeCustomerErasure::Delete => {
            stripe
                .delete(&path, &Params::new(), Some(idempotency_key))
                .await
        }
        // An empty value unsets a field at Stripe; metadata stays, so the
        // customer can still be matched to the (erased) billd customer.
        StripeCustomerErasure::Anonymize => {
            let params = Params::new()
                .set("email", "")
                .set("name", "")
                .set("phone", "")
                .set("address", "");
            stripe.post(&path, &params, Some(idempotency_key)).await
        }
    };
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => {
            tracing::info!(%customer, "stripe customer already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
