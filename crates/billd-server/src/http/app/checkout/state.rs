//! What the checkout handlers share across requests: the per-customer
//! lock, the store-backed rate limit and the cache of prices found by
//! lookup key.

use std::sync::{Arc, PoisonError, Weak};

use billd_core::{Currency, CustomerId, Interval, PlanName};
use billd_store::RateDecision;
use billd_stripe::client::{Params, StripeClient};

use crate::http::api::store_error;
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::CheckoutState;

/// The rate limit's window.
const WINDOW_SECS: i64 = 60;

/// The rate limit's scope in the store's shared table.
const RATE_SCOPE: &str = "checkout";

impl<S: BillingBackend + ?Sized> CheckoutState<S> {
    /// The customer's lock: one checkout at a time per customer in this
    /// process.
    pub(super) fn lock_for(&self, id: &CustomerId) -> Arc<tokio::sync::Mutex<()>> {
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
    pub(super) async fn take_rate_token(&self, id: &CustomerId, now: i64) -> Result<(), ApiError> {
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
    pub(super) async fn price_id(
        &self,
        stripe: &StripeClient,
        plan: &PlanName,
        currency: &Currency,
        interval: Interval,
    ) -> Result<String, ApiError> {
        let price = self
            .api
            .catalog
            .price_for(plan, currency, interval)
            .ok_or_else(|| ApiError::InvalidRequest {
                code: "interval_not_available",
                message: format!("plan {plan} has no {interval} price in {currency}"),
            })?;
        self.resolve(stripe, price, &format!("plan {plan}, {currency}"))
            .await
    }

    /// The metered prices a new subscription at `currency` and `interval`
    /// carries: one per feature sold with overage at that interval, in the
    /// catalog's currency (the overage price's).
    pub(super) async fn overage_price_ids(
        &self,
        stripe: &StripeClient,
        currency: &Currency,
        interval: Interval,
    ) -> Result<Vec<String>, ApiError> {
        let catalog = &self.api.catalog;
        let mut ids = Vec::new();
        if currency != catalog.default_currency() {
            return Ok(ids);
        }
        for (feature, overage) in catalog.overages() {
            if overage.interval == interval {
                let what = format!("overage of {feature}");
                ids.push(self.resolve(stripe, &overage.price, &what).await?);
            }
        }
        Ok(ids)
    }

    /// A catalog price's Stripe id: its bound id, else the active price
    /// carrying its lookup key (cached). `what` names it in errors.
    pub(super) async fn resolve(
        &self,
        stripe: &StripeClient,
        price: &billd_core::Price,
        what: &str,
    ) -> Result<String, ApiError> {
        if let Some(id) = &price.id {
            return Ok(id.to_string());
        }
        let Some(lookup_key) = &price.lookup_key else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "{what} has neither a price id nor a lookup key"
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
                    "no active Stripe price has lookup key {lookup_key} ({what})"
                ))
            })?;
        self.prices
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(lookup_key.clone(), id.clone());
        Ok(id)
    }
}
