//! The subscription as Stripe has it now ([`LiveSubscription`]), loaded
//! with the customer and billd's own view of it ([`Context`]) before any
//! preview or change; and the catalog price a change moves to.

use billd_core::{Catalog, CustomerId, Interval, Plan, PriceId};
use billd_store::CustomerRecord;
use billd_stripe::client::{Params, StripeClient};
use serde_json::Value;

use crate::http::api::ApiState;
use crate::http::error::ApiError;
use crate::pipeline::{observation_ns, BillingBackend};

use super::decide::conflict;

/// What billd needs of the Stripe subscription, read fresh before a change.
#[derive(Debug)]
pub(super) struct LiveSubscription {
    pub(super) id: String,
    pub(super) object: Value,
    pub(super) status: String,
    pub(super) currency: String,
    pub(super) item_id: String,
    pub(super) price: Value,
    pub(super) quantity: u64,
    pub(super) current_period_start: i64,
    pub(super) current_period_end: i64,
    pub(super) pending_price: Option<String>,
    pub(super) latest_invoice: Option<String>,
}

impl LiveSubscription {
    pub(super) fn parse(object: Value) -> Result<Self, ApiError> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        // The plan's item: the first that is not a metered (overage) one.
        let items = object
            .pointer("/items/data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let item = items
            .iter()
            .find(|i| i.pointer("/price/recurring/usage_type") != Some(&Value::from("metered")))
            .or_else(|| items.first())
            .cloned()
            .unwrap_or_default();
        let missing = |what: &str| {
            ApiError::StripeRejected(format!("Stripe subscription without {what}: {object}"))
        };
        Ok(LiveSubscription {
            id: text(&object["id"]).ok_or_else(|| missing("id"))?,
            status: text(&object["status"]).unwrap_or_default(),
            currency: text(&object["currency"]).unwrap_or_default(),
            item_id: text(&item["id"]).ok_or_else(|| missing("items"))?,
            price: item["price"].clone(),
            quantity: item["quantity"].as_u64().unwrap_or(1).max(1),
            current_period_start: item["current_period_start"].as_i64().unwrap_or_default(),
            current_period_end: item["current_period_end"].as_i64().unwrap_or_default(),
            pending_price: object
                .pointer("/pending_update/subscription_items/0/price")
                .and_then(|p| p.as_str().or_else(|| p["id"].as_str()))
                .map(str::to_owned),
            latest_invoice: object["latest_invoice"]
                .as_str()
                .or_else(|| object["latest_invoice"]["id"].as_str())
                .map(str::to_owned),
            object,
        })
    }

    pub(super) fn price_id(&self) -> String {
        self.price["id"].as_str().unwrap_or_default().to_owned()
    }

    fn is_ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }
}

/// The customer, their current subscription in billd's state, and that
/// subscription as Stripe has it now.
pub(super) struct Context {
    pub(super) record: CustomerRecord,
    pub(super) watermark: (i64, String),
    pub(super) live: LiveSubscription,
    /// When `live` was asked for (see [`crate::pipeline::observation_ns`]).
    pub(super) live_observed_ns: u64,
}

/// Loads the customer and their subscription (billd's view, then Stripe's).
/// `allow_ended`: a subscription that has ended is returned (resume answers
/// `subscription_ended`) instead of `no_subscription`.
pub(super) async fn load<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
) -> Result<Context, ApiError> {
    let record = crate::http::app::account::live_customer(&*state.store, id).await?;
    let Some(current) = record.state.current_subscription() else {
        return Err(conflict(
            "no_subscription",
            format!("customer {id} has no subscription; start one with checkout"),
        ));
    };
    if !current.is_live() {
        return Err(conflict(
            "subscription_ended",
            format!(
                "subscription {} has ended; start a new one with checkout",
                current.snapshot.id
            ),
        ));
    }
    let sub = current.snapshot.id.to_string();
    let watermark = (current.stamp.created, current.stamp.event_id.to_string());
    // A read is as new as its request: Stripe may answer it with the state
    // from before a change whose own answer arrives first.
    let live_observed_ns = observation_ns();
    let object = state.stripe()?.retrieve_subscription(&sub).await?;
    let live = LiveSubscription::parse(object)?;
    if live.is_ended() {
        return Err(conflict(
            "subscription_ended",
            format!("subscription {sub} has ended; start a new one with checkout"),
        ));
    }
    Ok(Context {
        record,
        watermark,
        live,
        live_observed_ns,
    })
}

/// The Stripe price object of `plan` in `currency` at `interval` (by id,
/// or found by its lookup key).
pub(crate) async fn target_price(
    stripe: &StripeClient,
    plan: &Plan,
    currency: &str,
    interval: Interval,
) -> Result<Value, ApiError> {
    let by_interval = plan
        .prices
        .iter()
        .find(|(c, _)| c.as_str() == currency)
        .map(|(_, p)| p)
        .ok_or_else(|| ApiError::InvalidRequest {
            code: "currency_not_available",
            message: format!(
                "plan {} has no price in {currency}, the subscription's currency",
                plan.name
            ),
        })?;
    let price = by_interval
        .get(&interval)
        .ok_or_else(|| ApiError::InvalidRequest {
            code: "interval_not_available",
            message: format!("plan {} has no {interval} price in {currency}", plan.name),
        })?;
    if let Some(id) = &price.id {
        return Ok(stripe
            .get(&format!("/v1/prices/{id}"), &Params::new())
            .await?);
    }
    let key = price.lookup_key.clone().unwrap_or_default();
    let list = stripe
        .get(
            "/v1/prices",
            &Params::new()
                .set("lookup_keys[]", &key)
                .set("active", "true"),
        )
        .await?;
    list.pointer("/data/0").cloned().ok_or_else(|| {
        ApiError::StripeRejected(format!(
            "no active Stripe price has the lookup key {key} of plan {}",
            plan.name
        ))
    })
}

/// The metered (overage) prices a subscription at `currency` and
/// `interval` carries: one per feature sold with overage at that interval,
/// in the catalog's currency; by id, or found by lookup key.
pub(crate) async fn overage_price_ids(
    stripe: &StripeClient,
    catalog: &Catalog,
    currency: &str,
    interval: Interval,
) -> Result<Vec<String>, ApiError> {
    let mut ids = Vec::new();
    if currency != catalog.default_currency().as_str() {
        return Ok(ids);
    }
    for (feature, overage) in catalog.overages() {
        if overage.interval != interval {
            continue;
        }
        if let Some(id) = &overage.price.id {
            ids.push(id.to_string());
            continue;
        }
        let key = overage.price.lookup_key.clone().unwrap_or_default();
        let list = stripe
            .get(
                "/v1/prices",
                &Params::new()
                    .set("lookup_keys[]", &key)
                    .set("active", "true"),
            )
            .await?;
        let id = list
            .pointer("/data/0/id")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                ApiError::StripeRejected(format!(
                    "no active Stripe price has the lookup key {key} of the overage of {feature}"
                ))
            })?;
        ids.push(id.to_owned());
    }
    Ok(ids)
}

/// How a change brings a subscription's metered items in line with the
/// overage sold at its new interval.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct MeteredItems {
    /// Item ids to delete: an overage price of the catalog not sold at the
    /// new interval, or any metered item at another interval (Stripe bills
    /// every item of a subscription at one interval).
    pub(super) remove: Vec<String>,
    /// Overage prices the subscription lacks (it predates the overage, or
    /// was made outside billd).
    pub(super) add: Vec<String>,
    /// Overage prices it keeps, in its item order.
    pub(super) keep: Vec<String>,
}

impl MeteredItems {
    /// The difference between `live`'s metered items and `wanted` (from
    /// [`overage_price_ids`]) for a subscription moving to `interval`.
    pub(super) fn of(
        live: &LiveSubscription,
        catalog: &Catalog,
        wanted: &[String],
        interval: Interval,
    ) -> Self {
        let mut plan = MeteredItems::default();
        let items = live
            .object
            .pointer("/items/data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for item in items
            .iter()
            .filter(|i| i.pointer("/price/recurring/usage_type") == Some(&Value::from("metered")))
        {
            let price = &item["price"];
            let id = price["id"].as_str().unwrap_or_default();
            if wanted.iter().any(|w| w == id) {
                plan.keep.push(id.to_owned());
                continue;
            }
            let ours = PriceId::parse(id).is_ok_and(|pid| {
                catalog
                    .overages()
                    .values()
                    .any(|o| o.price.matches(&pid, price["lookup_key"].as_str()))
            });
            let other_interval = price.pointer("/recurring/interval").and_then(Value::as_str)
                != Some(interval.as_str());
            if ours || other_interval {
                plan.remove
                    .push(item["id"].as_str().unwrap_or_default().to_owned());
            }
        }
        plan.add = wanted
            .iter()
            .filter(|w| !plan.keep.contains(w))
            .cloned()
            .collect();
        plan
    }
}

/// A live subscription on `price` (for the tests of this module's files).
#[cfg(test)]
pub(super) fn fixture(price: &str) -> LiveSubscription {
    LiveSubscription::parse(serde_json::json!({
        "id": "sub_1", "object": "subscription", "customer": "cus_1",
        "status": "active", "created": 100, "cancel_at_period_end": false, "currency": "eur",
        "items": { "object": "list", "data": [{
            "id": "si_1", "price": { "id": price }, "current_period_start": 100,
            "current_period_end": 200
        }] },
        "metadata": {}
    }))
    .unwrap()
}
