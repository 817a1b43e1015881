//! The billing engine: subscriptions, invoices, payments and the schedule a test
//! clock runs through (renewals, trials, retries, expiries).
//!
//! Every function takes the state and an explicit time, so the same code serves
//! API requests ("now") and test clock advances (each scheduled moment in turn).

use crate::clock::add_interval;
use crate::config::RetriesExhausted;
use crate::error::{ApiError, ApiResult};
pub use crate::resources::catalog::{licensed_unit_amount, unit_amount_in};
use crate::state::{previous_attributes, CardBehavior, Inner};
use serde_json::{json, Value};

mod invoice;
mod payment;
mod schedule;

pub use invoice::*;
pub use payment::*;
pub use schedule::*;

/// The outcome of one payment attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum PayOutcome {
    /// Paid (or nothing was due).
    Paid,
    /// Declined; the card error a client would see.
    Declined(ApiError),
    /// 3-D Secure is needed: the payment intent is `requires_action`.
    RequiresAction(String),
}

/// A requested subscription, before it exists.
#[derive(Debug, Clone, Default)]
pub struct NewSubscription {
    /// `cus_…`.
    pub customer: String,
    /// `(price id, quantity)` per item.
    pub items: Vec<(String, i64)>,
    /// Currency; defaults to the first price's.
    pub currency: Option<String>,
    /// Subscription metadata.
    pub metadata: Value,
    /// Trial end (unix seconds), if any.
    pub trial_end: Option<i64>,
    /// Default payment method (`pm_…`).
    pub default_payment_method: Option<String>,
    /// Coupon to apply, with its promotion code.
    pub coupon: Option<(String, Option<String>)>,
    /// `trial_settings[end_behavior][missing_payment_method]`.
    pub missing_payment_method: Option<String>,
    /// `allow_incomplete` (default), `default_incomplete` or `error_if_incomplete`.
    pub payment_behavior: Option<String>,
    /// `cancel_at_period_end` at creation.
    pub cancel_at_period_end: bool,
}

pub(crate) fn s_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// The plan object Stripe still embeds next to `price` on subscription items.
pub fn plan_from_price(price: &Value) -> Value {
    json!({
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": "per_unit",
        "created": price["created"],
        "currency": price["currency"],
        "interval": price["recurring"]["interval"],
        "interval_count": price["recurring"]["interval_count"],
        "livemode": false,
        "metadata": price["metadata"],
        "meter": price["recurring"]["meter"],
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": null,
        "transform_usage": null,
        "trial_period_days": price["recurring"]["trial_period_days"],
        "usage_type": price["recurring"]["usage_type"],
    })
}

pub(crate) fn sub_item(
    s: &mut Inner,
    sub: &str,
    price: &Value,
    qty: i64,
    start: i64,
    end: i64,
) -> Value {
    let mut item = json!({
        "id": s.id("si"),
        "object": "subscription_item",
        "billing_thresholds": null,
        "created": start,
        "current_period_end": end,
        "current_period_start": start,
        "current_trial": null,
        "discounts": [],
        "metadata": {},
        "plan": plan_from_price(price),
        "price": price,
        "quantity": qty,
        "subscription": sub,
        "tax_rates": [],
    });
    // A metered item has no quantity: its meter's usage is billed.
    if crate::resources::meters::is_metered(price) {
        if let Some(item) = item.as_object_mut() {
            item.remove("quantity");
        }
    }
    item
}

pub(crate) fn price_interval(price: &Value) -> (String, i64) {
    (
        price["recurring"]["interval"]
            .as_str()
            .unwrap_or("month")
            .to_string(),
        price["recurring"]["interval_count"].as_i64().unwrap_or(1),
    )
}

/// Period end of a subscription (from its first item).
pub fn period(sub: &Value) -> (i64, i64) {
    let item = &sub["items"]["data"][0];
    (
        item["current_period_start"].as_i64().unwrap_or(0),
        item["current_period_end"].as_i64().unwrap_or(0),
    )
}

/// Emits `customer.subscription.updated` if `after` differs from `before`, and stores it.
pub fn save_sub(s: &mut Inner, before: &Value, after: &Value, at: i64) {
    s.put(after.clone());
    if before != after {
        let mut prev = previous_attributes(before, after);
        if let Some(m) = prev.as_object_mut() {
            // `latest_invoice` moves with every invoice; Stripe reports it, but not on its own.
            if m.len() == 1 && m.contains_key("latest_invoice") {
                return;
            }
        }
        s.emit("customer.subscription.updated", after, Some(prev), at);
    }
}

/// Creates a subscription: the object, its first invoice, and the first payment
/// attempt according to `payment_behavior`. Returns the subscription id and the
/// payment outcome.
pub fn create_subscription(s: &mut Inner, req: NewSubscription) -> ApiResult<(String, PayOutcome)> {
    let now = s.now_for_customer(Some(&req.customer));
    if req.items.is_empty() {
        return Err(ApiError::missing("items"));
    }
    let mut prices = Vec::new();
    for (i, (pid, _)) in req.items.iter().enumerate() {
        let price = s.get("price", pid, &format!("items[{i}][price]"))?;
        if price["type"] != "recurring" {
            return Err(ApiError::invalid(
                &format!("items[{i}][price]"),
                "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
            ));
        }
        if price["active"] != true {
            return Err(ApiError::invalid(
                &format!("items[{i}][price]"),
                "The price specified is inactive.",
            ));
        }
        prices.push(price);
    }
    let interval = price_interval(&prices[0]);
    if let Some(i) = prices.iter().position(|p| price_interval(p) != interval) {
        return Err(ApiError::invalid(
            &format!("items[{i}][price]"),
            "All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.",
        ));
    }
    let currency = req
        .currency
        .clone()
        .unwrap_or_else(|| s_of(&prices[0]["currency"]));
    for p in &prices {
        unit_amount_in(p, &currency)?;
    }
    check_customer_currency(s, &req.customer, &currency)?;
    let pm = req
        .default_payment_method
        .clone()
        .or_else(|| customer_default_pm(s, &req.customer));
    let behavior = req
        .payment_behavior
        .clone()
        .unwrap_or_else(|| "allow_incomplete".into());
    if behavior == "error_if_incomplete" && req.trial_end.is_none() {
        match pm.as_ref().and_then(|p| s.cards.get(p)) {
            Some(
                CardBehavior::Decline
                | CardBehavior::CustomerFail
                | CardBehavior::InsufficientFunds,
            )
            | None => {
                return Err(decline_error(
                    pm.as_ref().and_then(|p| s.cards.get(p)).copied(),
                ));
            }
            Some(CardBehavior::AuthRequired) => {
                return Err(ApiError::card(
                    "subscription_payment_intent_requires_action",
                    None,
                    "Payment for this subscription requires additional user action before it can be completed successfully.",
                ));
            }
            _ => {}
        }
    }
    let (interval, count) = price_interval(&prices[0]);
    let start = now;
    let end = match req.trial_end {
        Some(t) => t,
        None => add_interval(start, &interval, count),
    };
    let id = s.id("sub");
    let mut items = Vec::new();
    for (price, (_, qty)) in prices.iter().zip(&req.items) {
        items.push(sub_item(s, &id, price, *qty, start, end));
    }
    let clock = s
        .objects
        .get(&req.customer)
        .map(|c| c["test_clock"].clone())
        .unwrap_or(Value::Null);
    let mut discounts = Vec::new();
    if let Some((coupon, promo)) = &req.coupon {
        discounts.push(create_discount(
            s,
            coupon,
            promo.as_deref(),
            &req.customer,
            Some(&id),
            now,
        )?);
    }
    let status = if req.trial_end.is_some() {
        "trialing"
    } else {
        "incomplete"
    };
    let first_invoice = s.id("in");
    let sub = json!({
        "id": id,
        "object": "subscription",
        "application": null,
        "application_fee_percent": null,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": end,
        "billing_cycle_anchor_config": null,
        "billing_mode": {"type": "classic", "flexible": null},
        "billing_schedules": [],
        "billing_thresholds": null,
        "cancel_at": null,
        "cancel_at_period_end": false,
        "canceled_at": null,
        "cancellation_details": {"comment": null, "feedback": null, "feedback_option": null, "reason": null},
        "collection_method": "charge_automatically",
        "created": now,
        "currency": currency,
        "customer": req.customer,
        "customer_account": null,
        "days_until_due": null,
        "default_payment_method": req.default_payment_method,
        "default_source": null,
        "default_tax_rates": [],
        "description": null,
        "discounts": discounts,
        "ended_at": null,
        "invoice_settings": {"account_tax_ids": null, "custom_fields": null, "description": null, "footer": null, "issuer": {"type": "self"}},
        "items": {
            "object": "list",
            "data": items,
            "has_more": false,
            "url": format!("/v1/subscription_items?subscription={id}"),
        },
        "latest_invoice": first_invoice,
        "livemode": false,
        "managed_payments": {"enabled": false},
        "metadata": req.metadata,
        "next_pending_invoice_item_invoice": null,
        "on_behalf_of": null,
        "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null, "save_default_payment_method": "off"},
        "pending_invoice_item_interval": null,
        "pending_setup_intent": null,
        "pending_update": null,
        "schedule": null,
        "start_date": now,
        "status": status,
        "test_clock": clock,
        "transfer_data": null,
        "trial_end": req.trial_end,
        "trial_settings": {"end_behavior": {"billing_cycle_anchor": null, "missing_payment_method": req.missing_payment_method.clone().unwrap_or_else(|| "create_invoice".into())}},
        "trial_start": req.trial_end.map(|_| now),
    });
    // Billing cycle anchor: when there is no trial it is the start, per Stripe.
    let mut sub = sub;
    if req.trial_end.is_none() {
        sub["billing_cycle_anchor"] = json!(start);
    }
    if req.cancel_at_period_end {
        sub["cancel_at_period_end"] = json!(true);
        sub["cancel_at"] = json!(end);
        sub["canceled_at"] = json!(now);
    }
    if let Some((coupon, _)) = &req.coupon {
        let duration = coupon_duration(s, coupon);
        s.subs.entry(id.clone()).or_default().coupon = Some((coupon.clone(), duration));
    }
    s.subs.entry(id.clone()).or_default();
    lock_customer_currency(s, &req.customer, &currency, now)?;
    let sub = s.insert(sub);
    s.emit("customer.subscription.created", &sub, None, now);
    if let Some(di) = sub["discounts"][0].as_str() {
        let d = s.peek(di).clone();
        s.emit("customer.discount.created", &d, None, now);
    }
    let inv = create_invoice_as(s, &id, "subscription_create", now, first_invoice)?;
    let outcome = if behavior == "default_incomplete" && invoice_due(s, &inv) > 0 {
        open_payment_intent(s, &inv, pm.as_deref(), now)?;
        PayOutcome::Declined(ApiError::state(
            "default_incomplete",
            "Payment not attempted.",
        ))
    } else {
        pay_invoice(s, &inv, pm.as_deref(), now)?
    };
    if matches!(outcome, PayOutcome::Paid) {
        let before = s.get("subscription", &id, "id")?;
        let mut after = before.clone();
        if after["status"] == "incomplete" {
            after["status"] = json!("active");
        }
        save_sub(s, &before, &after, now);
    }
    Ok((id, outcome))
}

/// Stripe ties a customer to the currency of its first subscription or invoice.
pub fn check_customer_currency(s: &Inner, customer: &str, currency: &str) -> ApiResult<()> {
    let locked = s
        .objects
        .get(customer)
        .and_then(|c| c["currency"].as_str())
        .map(str::to_string);
    match locked {
        Some(c) if c != currency => Err(ApiError::invalid(
            "currency",
            format!(
                "You cannot combine currencies on a single customer. This customer has an active subscription, \
                 subscription schedule, discount, quote, or invoice item with currency {c}."
            ),
        )),
        _ => Ok(()),
    }
}

fn lock_customer_currency(s: &mut Inner, customer: &str, currency: &str, at: i64) -> ApiResult<()> {
    let before = s.get("customer", customer, "customer")?;
    if before["currency"].is_null() {
        let mut after = before.clone();
        after["currency"] = json!(currency);
        s.put(after.clone());
        s.emit(
            "customer.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            at,
        );
    }
    Ok(())
}

pub(crate) fn coupon_duration(s: &Inner, coupon: &str) -> Option<i64> {
    let c = s.objects.get(coupon)?;
    match c["duration"].as_str() {
        Some("once") => Some(1),
        Some("repeating") => c["duration_in_months"].as_i64(),
        _ => None,
    }
}

/// Creates a `discount` object (and counts the redemption).
pub fn create_discount(
    s: &mut Inner,
    coupon: &str,
    promo: Option<&str>,
    customer: &str,
    sub: Option<&str>,
    now: i64,
) -> ApiResult<String> {
    let c = s.get("coupon", coupon, "coupon")?;
    let id = s.id("di");
    let end = match c["duration"].as_str() {
        Some("repeating") => c["duration_in_months"]
            .as_i64()
            .map(|m| add_interval(now, "month", m)),
        _ => None,
    };
    s.insert(json!({
        "id": id,
        "object": "discount",
        "checkout_session": null,
        "customer": customer,
        "customer_account": null,
        "end": end,
        "invoice": null,
        "invoice_item": null,
        "promotion_code": promo,
        "source": {"coupon": coupon, "type": "coupon"},
        "start": now,
        "subscription": sub,
        "subscription_item": null,
    }));
    let mut c2 = c.clone();
    c2["times_redeemed"] = json!(c["times_redeemed"].as_i64().unwrap_or(0) + 1);
    if c2["max_redemptions"]
        .as_i64()
        .is_some_and(|m| c2["times_redeemed"].as_i64().unwrap_or(0) >= m)
    {
        c2["valid"] = json!(false);
    }
    s.put(c2);
    if let Some(pc) = promo {
        let mut p = s.get("promotion_code", pc, "promotion_code")?;
        let n = p["times_redeemed"].as_i64().unwrap_or(0) + 1;
        p["times_redeemed"] = json!(n);
        if p["max_redemptions"].as_i64().is_some_and(|m| n >= m) {
            p["active"] = json!(false);
        }
        s.put(p);
    }
    Ok(id)
}

pub(crate) fn customer_default_pm(s: &Inner, customer: &str) -> Option<String> {
    s.objects
        .get(customer)
        .and_then(|c| c["invoice_settings"]["default_payment_method"].as_str())
        .map(str::to_string)
}

/// The payment method a subscription charges: its own default, else the customer's.
pub fn sub_payment_method(s: &Inner, sub: &Value) -> Option<String> {
    sub["default_payment_method"]
        .as_str()
        .map(str::to_string)
        .or_else(|| customer_default_pm(s, sub["customer"].as_str().unwrap_or_default()))
}

pub(crate) fn invoice_due(s: &Inner, inv: &str) -> i64 {
    s.objects
        .get(inv)
        .and_then(|i| i["amount_remaining"].as_i64())
        .unwrap_or(0)
}

/// Swaps the price/quantity of a subscription item in the JSON.
pub fn set_item(sub: &mut Value, si: &str, price: &Value, qty: i64) {
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        for item in items.iter_mut().filter(|i| i["id"] == si) {
            item["price"] = price.clone();
            item["plan"] = plan_from_price(price);
            item["quantity"] = json!(qty);
        }
    }
}

/// Removes an item (`items[i][deleted]=true`) from the subscription JSON.
pub fn remove_item(sub: &mut Value, si: &str) {
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        items.retain(|i| i["id"] != si);
    }
}

/// Adds an item for `price` (`items[i][price]` without an id) over the
/// subscription's current period. A metered price takes no quantity, as
/// Stripe says.
pub fn add_item(
    s: &mut Inner,
    sub: &mut Value,
    price: &Value,
    qty: Option<i64>,
    param: &str,
) -> ApiResult<()> {
    if crate::resources::meters::is_metered(price) && qty.is_some() {
        return Err(ApiError::invalid(
            &format!("{param}[quantity]"),
            format!("Quantity should not be specified where usage_type is `metered`. Remove quantity from `{param}`."),
        ));
    }
    if sub["items"]["data"]
        .as_array()
        .is_some_and(|d| d.iter().any(|i| i["price"]["id"] == price["id"]))
    {
        return Err(ApiError::invalid(
            &format!("{param}[price]"),
            "Cannot add multiple subscription items with the same price.",
        ));
    }
    let (start, end) = period(sub);
    let sub_id = s_of(&sub["id"]);
    let item = sub_item(s, &sub_id, price, qty.unwrap_or(1), start, end);
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        items.push(item);
    }
    Ok(())
}

/// Stripe's refusal of a subscription whose items bill at different
/// intervals.
pub fn check_one_interval(sub: &Value, param: &str) -> ApiResult<()> {
    let intervals: std::collections::HashSet<_> = sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| price_interval(&i["price"]))
        .collect();
    if intervals.len() > 1 {
        return Err(ApiError::invalid(
            param,
            "All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.",
        ));
    }
    Ok(())
}
