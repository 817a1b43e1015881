//! The billing engine: subscriptions, invoices, payments and the schedule a test
//! clock runs through (renewals, trials, retries, expiries).
//!
//! Every function takes the state and an explicit time, so the same code serves
//! API requests ("now") and test clock advances (each scheduled moment in turn).

use crate::clock::add_interval;
use crate::config::RetriesExhausted;
use crate::error::{ApiError, ApiResult};
pub use crate::resources::catalog::unit_amount_in;
use crate::state::{previous_attributes, CardBehavior, Inner};
use serde_json::{json, Value};

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

fn s_of(v: &Value) -> String {
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
        "meter": null,
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": null,
        "transform_usage": null,
        "trial_period_days": price["recurring"]["trial_period_days"],
        "usage_type": "licensed",
    })
}

fn sub_item(s: &mut Inner, sub: &str, price: &Value, qty: i64, start: i64, end: i64) -> Value {
    json!({
        "id": s.id("si"),
        "object": "subscription_item",
        "billing_thresholds": null,
        "created": start,
        "current_period_end": end,
        "current_period_start": start,
        "discounts": [],
        "metadata": {},
        "plan": plan_from_price(price),
        "price": price,
        "quantity": qty,
        "subscription": sub,
        "tax_rates": [],
    })
}

fn price_interval(price: &Value) -> (String, i64) {
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
    let currency = req
        .currency
        .clone()
        .unwrap_or_else(|| s_of(&prices[0]["currency"]));
    for p in &prices {
        unit_amount_in(p, &currency)?;
    }
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
        "cancellation_details": {"comment": null, "feedback": null, "reason": null},
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
            "total_count": req.items.len(),
            "url": format!("/v1/subscription_items?subscription={id}"),
        },
        "latest_invoice": null,
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
        "trial_settings": {"end_behavior": {"missing_payment_method": req.missing_payment_method.clone().unwrap_or_else(|| "create_invoice".into())}},
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
    let sub = s.insert(sub);
    s.emit("customer.subscription.created", &sub, None, now);
    if let Some(di) = sub["discounts"][0].as_str() {
        let d = s.objects[di].clone();
        s.emit("customer.discount.created", &d, None, now);
    }
    let inv = create_invoice(s, &id, "subscription_create", now)?;
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

fn coupon_duration(s: &Inner, coupon: &str) -> Option<i64> {
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

fn customer_default_pm(s: &Inner, customer: &str) -> Option<String> {
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

fn invoice_due(s: &Inner, inv: &str) -> i64 {
    s.objects
        .get(inv)
        .and_then(|i| i["amount_remaining"].as_i64())
        .unwrap_or(0)
}

/// One invoice line.
#[expect(
    clippy::too_many_arguments,
    reason = "an invoice line has that many independent facts"
)]
fn line(
    s: &mut Inner,
    sub: &str,
    si: &str,
    price: &Value,
    qty: i64,
    amount: i64,
    currency: &str,
    period: (i64, i64),
    proration: bool,
    description: String,
) -> Value {
    json!({
        "id": s.id("il"),
        "object": "line_item",
        "amount": amount,
        "currency": currency,
        "description": description,
        "discount_amounts": [],
        "discountable": true,
        "discounts": [],
        "invoice": null,
        "livemode": false,
        "metadata": {},
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": null,
            "subscription_item_details": {
                "invoice_item": null,
                "proration": proration,
                "proration_details": {"credited_items": null},
                "subscription": sub,
                "subscription_item": si,
            },
        },
        "period": {"start": period.0, "end": period.1},
        "pretax_credit_amounts": [],
        "pricing": {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": price["unit_amount_decimal"],
        },
        "quantity": qty,
        "quantity_decimal": qty.to_string(),
        "subscription": sub,
        "subtotal": amount,
        "taxes": [],
    })
}

fn product_name(s: &Inner, price: &Value) -> String {
    price["product"]
        .as_str()
        .and_then(|p| s.objects.get(p))
        .and_then(|p| p["name"].as_str())
        .unwrap_or("Subscription")
        .to_string()
}

/// Lines for a subscription's current period, plus pending prorations.
fn period_lines(s: &mut Inner, sub_id: &str, with_pending: bool) -> ApiResult<Vec<Value>> {
    let sub = s.get("subscription", sub_id, "subscription")?;
    let currency = s_of(&sub["currency"]);
    let trialing = sub["status"] == "trialing";
    let mut lines = Vec::new();
    if with_pending {
        if let Some(meta) = s.subs.get_mut(sub_id) {
            lines.append(&mut meta.pending_lines);
        }
    }
    for item in sub["items"]["data"].as_array().cloned().unwrap_or_default() {
        let price = &item["price"];
        let qty = item["quantity"].as_i64().unwrap_or(1);
        let amount = if trialing {
            0
        } else {
            unit_amount_in(price, &currency)? * qty
        };
        let name = product_name(s, price);
        let desc = if trialing {
            format!("Trial period for {name}")
        } else {
            format!("{qty} × {name}")
        };
        let per = (
            item["current_period_start"].as_i64().unwrap_or(0),
            item["current_period_end"].as_i64().unwrap_or(0),
        );
        let si = s_of(&item["id"]);
        lines.push(line(
            s, sub_id, &si, price, qty, amount, &currency, per, false, desc,
        ));
    }
    Ok(lines)
}

/// Creates, finalizes and stores an invoice for a subscription's current period.
pub fn create_invoice(s: &mut Inner, sub_id: &str, reason: &str, at: i64) -> ApiResult<String> {
    let lines = period_lines(s, sub_id, true)?;
    create_invoice_with_lines(s, sub_id, reason, lines, at)
}

/// Builds an invoice object (not stored) for `lines`, applying the subscription's coupon.
pub fn invoice_object(
    s: &mut Inner,
    sub_id: &str,
    reason: &str,
    mut lines: Vec<Value>,
    at: i64,
    id: &str,
) -> ApiResult<Value> {
    let sub = s.get("subscription", sub_id, "subscription")?;
    let customer = s.get(
        "customer",
        sub["customer"].as_str().unwrap_or_default(),
        "customer",
    )?;
    let currency = s_of(&sub["currency"]);
    for l in &mut lines {
        l["invoice"] = json!(id);
    }
    let subtotal: i64 = lines
        .iter()
        .map(|l| l["amount"].as_i64().unwrap_or(0))
        .sum();
    let mut discount_total = 0;
    let mut total_discounts = Vec::new();
    let mut discounts = Vec::new();
    let coupon = s.subs.get(sub_id).and_then(|m| m.coupon.clone());
    if let (Some((coupon, left)), Some(di)) = (coupon, sub["discounts"][0].as_str()) {
        if left.is_none_or(|n| n > 0) && subtotal > 0 {
            let c = s.get("coupon", &coupon, "coupon")?;
            discount_total = if let Some(pct) = c["percent_off"].as_f64() {
                ((subtotal as f64) * pct / 100.0).round() as i64
            } else if c["currency"] == currency.as_str() {
                c["amount_off"].as_i64().unwrap_or(0)
            } else {
                0
            }
            .min(subtotal);
            discounts.push(json!(di));
            total_discounts.push(json!({"amount": discount_total, "discount": di}));
        }
    }
    let total = subtotal - discount_total;
    let public = s.cfg.public_url.clone();
    Ok(json!({
        "id": id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "stripe-sim",
        "account_tax_ids": null,
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "application": null,
        "attempt_count": 0,
        "attempted": false,
        "auto_advance": true,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
        "automatically_finalizes_at": null,
        "billing_reason": reason,
        "collection_method": "charge_automatically",
        "created": at,
        "currency": currency,
        "custom_fields": null,
        "customer": sub["customer"],
        "customer_account": null,
        "customer_address": null,
        "customer_email": customer["email"],
        "customer_name": customer["name"],
        "customer_phone": customer["phone"],
        "customer_shipping": null,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": null,
        "default_source": null,
        "default_tax_rates": [],
        "description": null,
        "discounts": discounts,
        "due_date": null,
        "effective_at": null,
        "ending_balance": null,
        "footer": null,
        "from_invoice": null,
        "hosted_invoice_url": format!("{public}/_sim/invoices/{id}"),
        "invoice_pdf": format!("{public}/_sim/invoices/{id}/pdf"),
        "issuer": {"type": "self"},
        "last_finalization_error": null,
        "latest_revision": null,
        "lines": {"object": "list", "data": lines, "has_more": false, "url": format!("/v1/invoices/{id}/lines")},
        "livemode": false,
        "metadata": {},
        "next_payment_attempt": null,
        "number": null,
        "on_behalf_of": null,
        "parent": {
            "type": "subscription_details",
            "quote_details": null,
            "subscription_details": {"metadata": sub["metadata"], "subscription": sub_id},
        },
        "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
        "payments": {"object": "list", "data": [], "has_more": false, "url": "/v1/invoice_payments"},
        "period_end": at,
        "period_start": at,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": null,
        "rendering": null,
        "shipping_cost": null,
        "shipping_details": null,
        "starting_balance": 0,
        "statement_descriptor": null,
        "status": "draft",
        "status_transitions": {"finalized_at": null, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null},
        "subtotal": subtotal,
        "subtotal_excluding_tax": subtotal,
        "test_clock": sub["test_clock"],
        "total": total,
        "total_discount_amounts": total_discounts,
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": null,
    }))
}

/// Creates an invoice from explicit lines, finalizes it (`invoice.created`,
/// `invoice.finalized`), and links it as the subscription's `latest_invoice`.
/// An invoice with nothing due is paid at once.
pub fn create_invoice_with_lines(
    s: &mut Inner,
    sub_id: &str,
    reason: &str,
    lines: Vec<Value>,
    at: i64,
) -> ApiResult<String> {
    let id = s.id("in");
    let mut inv = invoice_object(s, sub_id, reason, lines, at, &id)?;
    if inv["discounts"].as_array().is_some_and(|d| !d.is_empty()) {
        if let Some(meta) = s.subs.get_mut(sub_id) {
            if let Some((_, Some(left))) = meta.coupon.as_mut() {
                *left -= 1;
            }
        }
    }
    s.insert(inv.clone());
    s.emit("invoice.created", &inv, None, at);
    let before = inv.clone();
    let customer = s_of(&inv["customer"]);
    let seq = {
        let c = s.get("customer", &customer, "customer")?;
        c["next_invoice_sequence"].as_i64().unwrap_or(1)
    };
    if let Some(c) = s.objects.get_mut(&customer) {
        c["next_invoice_sequence"] = json!(seq + 1);
    }
    let prefix = s.objects[&customer]["invoice_prefix"]
        .as_str()
        .unwrap_or("SIM")
        .to_string();
    inv["number"] = json!(format!("{prefix}-{seq:04}"));
    inv["status"] = json!("open");
    inv["effective_at"] = json!(at);
    inv["status_transitions"]["finalized_at"] = json!(at);
    s.put(inv.clone());
    s.emit(
        "invoice.finalized",
        &inv,
        Some(previous_attributes(&before, &inv)),
        at,
    );
    let sub_before = s.get("subscription", sub_id, "subscription")?;
    let mut sub_after = sub_before.clone();
    sub_after["latest_invoice"] = json!(id);
    save_sub(s, &sub_before, &sub_after, at);
    if inv["amount_due"] == 0 {
        mark_paid(s, &id, at)?;
    }
    Ok(id)
}

fn mark_paid(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let before = s.get("invoice", inv_id, "invoice")?;
    let mut inv = before.clone();
    let due = inv["amount_due"].as_i64().unwrap_or(0);
    inv["status"] = json!("paid");
    inv["amount_paid"] = json!(due);
    inv["amount_remaining"] = json!(0);
    inv["attempted"] = json!(true);
    inv["next_payment_attempt"] = Value::Null;
    inv["status_transitions"]["paid_at"] = json!(at);
    if let Some(items) = inv["payments"]["data"].as_array_mut() {
        for ip in items.iter_mut() {
            ip["status"] = json!("paid");
            ip["amount_paid"] = json!(due);
            ip["status_transitions"]["paid_at"] = json!(at);
        }
    }
    for ip in inv["payments"]["data"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        s.put(ip);
    }
    s.put(inv.clone());
    let prev = previous_attributes(&before, &inv);
    s.emit("invoice.paid", &inv, Some(prev.clone()), at);
    s.emit("invoice.payment_succeeded", &inv, Some(prev), at);
    Ok(())
}

/// The payment intent of an open invoice, creating it (and its `invoice_payment`) if needed.
pub fn open_payment_intent(
    s: &mut Inner,
    inv_id: &str,
    pm: Option<&str>,
    at: i64,
) -> ApiResult<String> {
    let inv = s.get("invoice", inv_id, "invoice")?;
    if let Some(pi) = inv["payments"]["data"]
        .as_array()
        .and_then(|d| d.iter().rev().find(|p| p["status"] == "open"))
        .and_then(|p| p["payment"]["payment_intent"].as_str())
    {
        let pi = pi.to_string();
        if let Some(pm) = pm {
            if let Some(o) = s.objects.get_mut(&pi) {
                o["payment_method"] = json!(pm);
            }
        }
        return Ok(pi);
    }
    let id = s.id("pi");
    let secret = format!("{id}_secret_{}", s.ids.tail(25));
    let amount = inv["amount_remaining"].as_i64().unwrap_or(0);
    let reason = inv["billing_reason"].as_str().unwrap_or("manual");
    let pi = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": null,
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic",
        "client_secret": secret,
        "confirmation_method": "automatic",
        "created": at,
        "currency": inv["currency"],
        "customer": inv["customer"],
        "customer_account": null,
        "description": if reason == "subscription_create" { "Subscription creation" } else { "Subscription update" },
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "managed_payments": {"enabled": false},
        "metadata": {},
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": pm,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "processing": null,
        "receipt_email": null,
        "review": null,
        "setup_future_usage": "off_session",
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": if pm.is_some() { "requires_confirmation" } else { "requires_payment_method" },
        "transfer_data": null,
        "transfer_group": null,
    });
    s.insert(pi.clone());
    s.emit("payment_intent.created", &pi, None, at);
    let ip = json!({
        "id": s.id("inpay"),
        "object": "invoice_payment",
        "amount_paid": null,
        "amount_requested": amount,
        "created": at,
        "currency": inv["currency"],
        "invoice": inv_id,
        "is_default": true,
        "livemode": false,
        "payment": {"type": "payment_intent", "payment_intent": id},
        "status": "open",
        "status_transitions": {"canceled_at": null, "paid_at": null},
    });
    s.insert(ip.clone());
    let mut inv2 = inv.clone();
    if let Some(d) = inv2["payments"]["data"].as_array_mut() {
        d.push(ip);
    }
    s.put(inv2);
    Ok(id)
}

/// The card error for a declining card.
pub fn decline_error(b: Option<CardBehavior>) -> ApiError {
    match b {
        Some(CardBehavior::InsufficientFunds) => ApiError::card(
            "card_declined",
            Some("insufficient_funds"),
            "Your card has insufficient funds.",
        ),
        None => ApiError::state(
            "invoice_no_customer_payment_method",
            "This customer has no attached payment source or default payment method.",
        ),
        _ => ApiError::card(
            "card_declined",
            Some("generic_decline"),
            "Your card was declined.",
        ),
    }
}

/// Attempts to pay an open invoice with `pm` (or its subscription's payment method),
/// creating the payment intent and charge and emitting Stripe's event sequence.
pub fn pay_invoice(
    s: &mut Inner,
    inv_id: &str,
    pm: Option<&str>,
    at: i64,
) -> ApiResult<PayOutcome> {
    let inv = s.get("invoice", inv_id, "invoice")?;
    match inv["status"].as_str() {
        Some("paid") => return Ok(PayOutcome::Paid),
        Some("open") => {}
        _ => {
            return Err(ApiError::state(
                "invoice_not_editable",
                format!("You cannot pay an invoice with status {}.", inv["status"]),
            ))
        }
    }
    if inv["amount_remaining"].as_i64().unwrap_or(0) <= 0 {
        mark_paid(s, inv_id, at)?;
        return Ok(PayOutcome::Paid);
    }
    let sub_id = s_of(&inv["parent"]["subscription_details"]["subscription"]);
    let pm = match pm {
        Some(p) => Some(p.to_string()),
        None => s
            .objects
            .get(&sub_id)
            .cloned()
            .and_then(|sub| sub_payment_method(s, &sub)),
    };
    let pi_id = open_payment_intent(s, inv_id, pm.as_deref(), at)?;
    let behavior = pm.as_ref().and_then(|p| s.cards.get(p)).copied();
    let mut inv = s.get("invoice", inv_id, "invoice")?;
    let before_inv = inv.clone();
    inv["attempted"] = json!(true);
    inv["attempt_count"] = json!(inv["attempt_count"].as_i64().unwrap_or(0) + 1);
    s.put(inv.clone());
    let pi_before = s.get("payment_intent", &pi_id, "payment_intent")?;
    let mut pi = pi_before.clone();
    pi["payment_method"] = json!(pm);
    match behavior {
        Some(CardBehavior::Succeed | CardBehavior::Dispute) => {
            let pm = pm.unwrap_or_default();
            let ch = create_charge(s, &pi, &pm, None, at)?;
            pi["status"] = json!("succeeded");
            pi["amount_received"] = pi["amount"].clone();
            pi["latest_charge"] = json!(ch);
            pi["last_payment_error"] = Value::Null;
            pi["next_action"] = Value::Null;
            s.put(pi.clone());
            s.emit("payment_intent.succeeded", &pi, None, at);
            mark_paid(s, inv_id, at)?;
            if behavior == Some(CardBehavior::Dispute) {
                crate::resources::payments::open_dispute(s, &ch, at)?;
            }
            Ok(PayOutcome::Paid)
        }
        Some(CardBehavior::AuthRequired) => {
            pi["status"] = json!("requires_action");
            pi["next_action"] = json!({
                "type": "use_stripe_sdk",
                "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": format!("{}/_sim/payment_intents/{pi_id}/authenticate", s.cfg.public_url)},
            });
            s.put(pi.clone());
            s.emit("payment_intent.requires_action", &pi, None, at);
            s.emit(
                "invoice.payment_action_required",
                &inv,
                Some(previous_attributes(&before_inv, &inv)),
                at,
            );
            Ok(PayOutcome::RequiresAction(pi_id))
        }
        other => {
            let err = decline_error(other);
            if let Some(pm) = &pm {
                let ch = create_charge(s, &pi, pm, Some(&err), at)?;
                pi["latest_charge"] = json!(ch);
            }
            pi["status"] = json!("requires_payment_method");
            pi["last_payment_error"] = json!({
                "type": err.kind,
                "code": err.code,
                "decline_code": err.decline_code,
                "message": err.message,
                "payment_method": pm.as_ref().and_then(|p| s.objects.get(p)).cloned(),
            });
            s.put(pi.clone());
            s.emit("payment_intent.payment_failed", &pi, None, at);
            schedule_retry(s, inv_id, at)?;
            let inv = s.get("invoice", inv_id, "invoice")?;
            s.emit(
                "invoice.payment_failed",
                &inv,
                Some(previous_attributes(&before_inv, &inv)),
                at,
            );
            Ok(PayOutcome::Declined(err.with("payment_intent", pi)))
        }
    }
}

fn schedule_retry(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let mut inv = s.get("invoice", inv_id, "invoice")?;
    // The first invoice of a subscription is not retried: the subscription stays
    // incomplete until paid or expired.
    if inv["billing_reason"] == "subscription_create" {
        return Ok(());
    }
    let sub_id = s_of(&inv["parent"]["subscription_details"]["subscription"]);
    let first = {
        let meta = s.subs.entry(sub_id).or_default();
        *meta.first_failure_at.get_or_insert(at)
    };
    let failures = inv["attempt_count"].as_i64().unwrap_or(1);
    let next = s
        .cfg
        .retry_schedule_days
        .get((failures - 1).max(0) as usize)
        .map(|d| first + d * 86_400);
    inv["next_payment_attempt"] = json!(next);
    s.put(inv);
    Ok(())
}

/// Creates a charge for a payment intent (failed if `failure` is given).
pub fn create_charge(
    s: &mut Inner,
    pi: &Value,
    pm: &str,
    failure: Option<&ApiError>,
    at: i64,
) -> ApiResult<String> {
    let pm_obj = s.get("payment_method", pm, "payment_method")?;
    let id = s.id("ch");
    let amount = pi["amount"].as_i64().unwrap_or(0);
    let ok = failure.is_none();
    let receipt = format!("{}/_sim/receipts/{id}", s.cfg.public_url);
    let ch = json!({
        "id": id,
        "object": "charge",
        "amount": amount,
        "amount_captured": if ok { amount } else { 0 },
        "amount_refunded": 0,
        "application": null,
        "application_fee": null,
        "application_fee_amount": null,
        "balance_transaction": if ok { json!(s.id("txn")) } else { Value::Null },
        "billing_details": pm_obj["billing_details"],
        "calculated_statement_descriptor": "STRIPE-SIM",
        "captured": ok,
        "created": at,
        "currency": pi["currency"],
        "customer": pi["customer"],
        "description": pi["description"],
        "disputed": false,
        "failure_balance_transaction": null,
        "failure_code": failure.and_then(|f| f.code.clone()),
        "failure_message": failure.map(|f| f.message.clone()),
        "fraud_details": {},
        "livemode": false,
        "metadata": {},
        "on_behalf_of": null,
        "outcome": {
            "advice_code": null,
            "network_advice_code": null,
            "network_decline_code": null,
            "network_status": if ok { "approved_by_network" } else { "declined_by_network" },
            "reason": failure.and_then(|f| f.decline_code.clone()),
            "risk_level": "normal",
            "risk_score": 20,
            "seller_message": if ok { "Payment complete." } else { "The bank did not return any further details with this decline." },
            "type": if ok { "authorized" } else { "issuer_declined" },
        },
        "paid": ok,
        "payment_intent": pi["id"],
        "payment_method": pm,
        "payment_method_details": {"card": crate::resources::payment_methods::card_details(&pm_obj), "type": "card"},
        "receipt_email": null,
        "receipt_number": null,
        "receipt_url": receipt,
        "refunded": false,
        "refunds": {"object": "list", "data": [], "has_more": false, "url": format!("/v1/charges/{id}/refunds")},
        "review": null,
        "shipping": null,
        "source_transfer": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": if ok { "succeeded" } else { "failed" },
        "transfer_data": null,
        "transfer_group": null,
    });
    s.insert(ch.clone());
    s.emit(
        if ok {
            "charge.succeeded"
        } else {
            "charge.failed"
        },
        &ch,
        None,
        at,
    );
    Ok(id)
}

/// Completes or fails 3-D Secure on a payment intent (`/_sim/payment_intents/{id}/authenticate`).
pub fn authenticate(s: &mut Inner, pi_id: &str, success: bool) -> ApiResult<PayOutcome> {
    let pi = s.get("payment_intent", pi_id, "id")?;
    if pi["status"] != "requires_action" {
        return Err(ApiError::state(
            "payment_intent_unexpected_state",
            format!(
                "This PaymentIntent's status is {}, not requires_action.",
                pi["status"]
            ),
        ));
    }
    let inv_id = find_invoice_of_pi(s, pi_id);
    let at = s.now_for_customer(pi["customer"].as_str());
    let pm = s_of(&pi["payment_method"]);
    if success {
        let ch = create_charge(s, &pi, &pm, None, at)?;
        let mut pi2 = pi.clone();
        pi2["status"] = json!("succeeded");
        pi2["amount_received"] = pi["amount"].clone();
        pi2["latest_charge"] = json!(ch);
        pi2["next_action"] = Value::Null;
        s.put(pi2.clone());
        s.emit("payment_intent.succeeded", &pi2, None, at);
        if let Some(inv) = &inv_id {
            mark_paid(s, inv, at)?;
            after_invoice_paid(s, inv, at)?;
        }
        Ok(PayOutcome::Paid)
    } else {
        let err = ApiError::card(
            "payment_intent_authentication_failure",
            None,
            "The provided PaymentMethod has failed authentication.",
        );
        let mut pi2 = pi.clone();
        pi2["status"] = json!("requires_payment_method");
        pi2["next_action"] = Value::Null;
        pi2["last_payment_error"] = json!({"type": "invalid_request_error", "code": err.code, "message": err.message, "payment_method": s.objects.get(&pm)});
        s.put(pi2.clone());
        s.emit("payment_intent.payment_failed", &pi2, None, at);
        if let Some(inv_id) = &inv_id {
            let before = s.get("invoice", inv_id, "invoice")?;
            schedule_retry(s, inv_id, at)?;
            let inv = s.get("invoice", inv_id, "invoice")?;
            s.emit(
                "invoice.payment_failed",
                &inv,
                Some(previous_attributes(&before, &inv)),
                at,
            );
        }
        Ok(PayOutcome::Declined(err.with("payment_intent", pi2)))
    }
}

/// The invoice a payment intent pays, if any.
pub fn find_invoice_of_pi(s: &Inner, pi_id: &str) -> Option<String> {
    s.by_kind.get("invoice_payment")?.iter().find_map(|id| {
        let ip = s.objects.get(id)?;
        (ip["payment"]["payment_intent"] == pi_id).then(|| s_of(&ip["invoice"]))
    })
}

/// After an invoice is paid outside a renewal (3-D Secure, `POST /pay`, retries):
/// an incomplete, past_due or unpaid subscription becomes active.
pub fn after_invoice_paid(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let inv = s.get("invoice", inv_id, "invoice")?;
    let sub_id = s_of(&inv["parent"]["subscription_details"]["subscription"]);
    let Ok(before) = s.get("subscription", &sub_id, "subscription") else {
        return Ok(());
    };
    if matches!(
        before["status"].as_str(),
        Some("incomplete" | "past_due" | "unpaid")
    ) {
        let mut after = before.clone();
        after["status"] = json!("active");
        if let Some(m) = s.subs.get_mut(&sub_id) {
            m.first_failure_at = None;
        }
        save_sub(s, &before, &after, at);
    }
    Ok(())
}

/// After a renewal or retry fails: active/trialing → past_due.
fn after_invoice_failed(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let inv = s.get("invoice", inv_id, "invoice")?;
    let sub_id = s_of(&inv["parent"]["subscription_details"]["subscription"]);
    let before = s.get("subscription", &sub_id, "subscription")?;
    if matches!(before["status"].as_str(), Some("active" | "trialing")) {
        let mut after = before.clone();
        after["status"] = json!("past_due");
        save_sub(s, &before, &after, at);
    }
    if inv["next_payment_attempt"].is_null()
        && inv["billing_reason"] != "subscription_create"
        && inv["status"] == "open"
    {
        retries_exhausted(s, &sub_id, at)?;
    }
    Ok(())
}

fn retries_exhausted(s: &mut Inner, sub_id: &str, at: i64) -> ApiResult<()> {
    match s.cfg.retries_exhausted {
        RetriesExhausted::Cancel => cancel_at(s, sub_id, "payment_failed", at),
        RetriesExhausted::Unpaid => {
            let before = s.get("subscription", sub_id, "subscription")?;
            let mut after = before.clone();
            after["status"] = json!("unpaid");
            save_sub(s, &before, &after, at);
            Ok(())
        }
    }
}

/// Cancels a subscription now (`DELETE /v1/subscriptions/{id}`): `customer.subscription.deleted`.
pub fn cancel_now(s: &mut Inner, sub_id: &str, reason: &str) -> ApiResult<()> {
    let sub = s.get("subscription", sub_id, "id")?;
    let at = s.now_for_customer(sub["customer"].as_str());
    cancel_at(s, sub_id, reason, at)
}

fn cancel_at(s: &mut Inner, sub_id: &str, reason: &str, at: i64) -> ApiResult<()> {
    let before = s.get("subscription", sub_id, "id")?;
    if matches!(
        before["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    ) {
        return Err(ApiError::state(
            "resource_missing",
            format!("No such subscription: '{sub_id}' (already canceled)"),
        ));
    }
    let mut after = before.clone();
    after["status"] = json!("canceled");
    after["ended_at"] = json!(at);
    if after["canceled_at"].is_null() {
        after["canceled_at"] = json!(at);
    }
    after["cancellation_details"]["reason"] = json!(reason);
    s.put(after.clone());
    s.emit(
        "customer.subscription.deleted",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    // An incomplete subscription's first invoice is voided with it.
    if before["status"] == "incomplete" {
        if let Some(inv) = before["latest_invoice"].as_str() {
            let inv = inv.to_string();
            void_invoice(s, &inv, at)?;
        }
    }
    Ok(())
}

/// Voids an open invoice: `invoice.voided`.
pub fn void_invoice(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<Value> {
    let before = s.get("invoice", inv_id, "id")?;
    if before["status"] != "open" {
        return Err(ApiError::state(
            "invoice_not_editable",
            format!(
                "You can only void open invoices; this one is {}.",
                before["status"]
            ),
        ));
    }
    let mut inv = before.clone();
    inv["status"] = json!("void");
    inv["next_payment_attempt"] = Value::Null;
    inv["status_transitions"]["voided_at"] = json!(at);
    s.put(inv.clone());
    s.emit(
        "invoice.voided",
        &inv,
        Some(previous_attributes(&before, &inv)),
        at,
    );
    Ok(inv)
}

/// One thing a test clock advance has to do, at its time.
#[derive(Debug, Clone, PartialEq)]
enum Due {
    Expire(String),
    TrialWillEnd(String, i64),
    Upcoming(String, i64),
    Renew(String),
    Retry(String),
}

fn next_due(s: &Inner, clock: &str, until: i64) -> Option<(i64, Due)> {
    let mut best: Option<(i64, Due)> = None;
    let mut consider = |t: i64, d: Due| {
        if t <= until && best.as_ref().is_none_or(|(bt, _)| t < *bt) {
            best = Some((t, d));
        }
    };
    let subs = s.by_kind.get("subscription")?;
    for id in subs {
        let Some(sub) = s.objects.get(id) else {
            continue;
        };
        if sub["test_clock"] != clock {
            continue;
        }
        let meta = s.subs.get(id).cloned().unwrap_or_default();
        let (start, end) = period(sub);
        match sub["status"].as_str() {
            Some("incomplete") => {
                let created = sub["created"].as_i64().unwrap_or(0);
                consider(
                    created + s.cfg.incomplete_expiry_hours * 3600,
                    Due::Expire(id.clone()),
                );
            }
            Some("trialing" | "active" | "past_due" | "unpaid") => {
                if let Some(te) = sub["trial_end"]
                    .as_i64()
                    .filter(|_| sub["status"] == "trialing")
                {
                    let at = te - s.cfg.trial_will_end_days * 86_400;
                    if meta.trial_will_end_sent_for != Some(te)
                        && at > sub["created"].as_i64().unwrap_or(0)
                    {
                        consider(at, Due::TrialWillEnd(id.clone(), te));
                    }
                }
                let lead = end - s.cfg.upcoming_lead_days * 86_400;
                if sub["cancel_at_period_end"] != true
                    && meta.upcoming_sent_for != Some(end)
                    && lead > start
                {
                    consider(lead, Due::Upcoming(id.clone(), end));
                }
                let renew_at = sub["cancel_at"].as_i64().map_or(end, |c| c.min(end));
                consider(renew_at, Due::Renew(id.clone()));
            }
            _ => {}
        }
    }
    for id in s.by_kind.get("invoice").into_iter().flatten() {
        let Some(inv) = s.objects.get(id) else {
            continue;
        };
        if inv["test_clock"] == clock && inv["status"] == "open" {
            if let Some(t) = inv["next_payment_attempt"].as_i64() {
                consider(t, Due::Retry(id.clone()));
            }
        }
    }
    best
}

/// Runs everything scheduled on a test clock up to `until`, in time order,
/// with the clock showing each moment as it is processed.
pub fn advance(s: &mut Inner, clock: &str, until: i64) -> ApiResult<()> {
    for _ in 0..100_000 {
        let Some((t, due)) = next_due(s, clock, until) else {
            break;
        };
        let t = t.max(s.objects[clock]["frozen_time"].as_i64().unwrap_or(t));
        if let Some(c) = s.objects.get_mut(clock) {
            c["frozen_time"] = json!(t);
        }
        run_due(s, due, t)?;
    }
    if let Some(c) = s.objects.get_mut(clock) {
        c["frozen_time"] = json!(until);
    }
    Ok(())
}

fn run_due(s: &mut Inner, due: Due, t: i64) -> ApiResult<()> {
    match due {
        Due::Expire(id) => {
            let before = s.get("subscription", &id, "id")?;
            let mut after = before.clone();
            after["status"] = json!("incomplete_expired");
            after["ended_at"] = json!(t);
            save_sub(s, &before, &after, t);
            if let Some(inv) = before["latest_invoice"].as_str() {
                let inv = inv.to_string();
                if s.objects[&inv]["status"] == "open" {
                    void_invoice(s, &inv, t)?;
                }
            }
        }
        Due::TrialWillEnd(id, te) => {
            s.subs
                .entry(id.clone())
                .or_default()
                .trial_will_end_sent_for = Some(te);
            let sub = s.get("subscription", &id, "id")?;
            s.emit("customer.subscription.trial_will_end", &sub, None, t);
        }
        Due::Upcoming(id, end) => {
            s.subs.entry(id.clone()).or_default().upcoming_sent_for = Some(end);
            let preview = preview_renewal(s, &id, t)?;
            s.emit("invoice.upcoming", &preview, None, t);
        }
        Due::Renew(id) => renew(s, &id, t)?,
        Due::Retry(inv) => {
            let outcome = pay_invoice(s, &inv, None, t)?;
            match outcome {
                PayOutcome::Paid => after_invoice_paid(s, &inv, t)?,
                _ => {
                    // Stop retrying this attempt time even if scheduling decided nothing new.
                    let sched = s.get("invoice", &inv, "invoice")?;
                    if sched["next_payment_attempt"]
                        .as_i64()
                        .is_some_and(|n| n <= t)
                    {
                        let mut i2 = sched.clone();
                        i2["next_payment_attempt"] = Value::Null;
                        s.put(i2);
                    }
                    after_invoice_failed(s, &inv, t)?;
                }
            }
        }
    }
    Ok(())
}

/// What the next renewal invoice will look like (for `invoice.upcoming`).
fn preview_renewal(s: &mut Inner, sub_id: &str, at: i64) -> ApiResult<Value> {
    let sub = s.get("subscription", sub_id, "id")?;
    let mut lines = s
        .subs
        .get(sub_id)
        .map(|m| m.pending_lines.clone())
        .unwrap_or_default();
    let (_, end) = period(&sub);
    let currency = s_of(&sub["currency"]);
    for item in sub["items"]["data"].as_array().cloned().unwrap_or_default() {
        let price = &item["price"];
        let qty = item["quantity"].as_i64().unwrap_or(1);
        let (iv, n) = price_interval(price);
        let amount = unit_amount_in(price, &currency)? * qty;
        let si = s_of(&item["id"]);
        let name = product_name(s, price);
        lines.push(line(
            s,
            sub_id,
            &si,
            price,
            qty,
            amount,
            &currency,
            (end, add_interval(end, &iv, n)),
            false,
            format!("{qty} × {name}"),
        ));
    }
    let id = format!("upcoming_{}", s.id("in"));
    let mut inv = invoice_object(s, sub_id, "upcoming", lines, at, &id)?;
    inv["billing_reason"] = json!("subscription_cycle");
    inv["period_start"] = json!(end);
    inv["period_end"] = json!(end);
    inv["next_payment_attempt"] = json!(end);
    inv["hosted_invoice_url"] = Value::Null;
    inv["invoice_pdf"] = Value::Null;
    Ok(inv)
}

/// A subscription's period ends at `t`: cancel if scheduled, pause or cancel a trial
/// without a payment method when so configured, else start the next period and bill it.
pub fn renew(s: &mut Inner, sub_id: &str, t: i64) -> ApiResult<()> {
    let before = s.get("subscription", sub_id, "id")?;
    if before["cancel_at"].as_i64().is_some_and(|c| c <= t) {
        return cancel_at(s, sub_id, "cancellation_requested", t);
    }
    let pm = sub_payment_method(s, &before);
    if before["status"] == "trialing" && pm.is_none() {
        match before["trial_settings"]["end_behavior"]["missing_payment_method"].as_str() {
            Some("cancel") => return cancel_at(s, sub_id, "payment_disabled", t),
            Some("pause") => {
                let mut after = before.clone();
                after["status"] = json!("paused");
                save_sub(s, &before, &after, t);
                s.emit("customer.subscription.paused", &after, None, t);
                return Ok(());
            }
            _ => {}
        }
    }
    let mut after = before.clone();
    start_new_period(&mut after, t);
    if after["status"] == "trialing" {
        after["status"] = json!("active");
    }
    save_sub(s, &before, &after, t);
    let inv = create_invoice(s, sub_id, "subscription_cycle", t)?;
    if before["status"] == "unpaid" {
        // Stripe keeps invoicing unpaid subscriptions but stops attempting payment.
        return Ok(());
    }
    if let Some(behavior) = collection_paused(s, sub_id, t)? {
        if s.objects[&inv]["status"] == "open" {
            match behavior.as_str() {
                "void" => {
                    void_invoice(s, &inv, t)?;
                }
                _ => mark_uncollectible(s, &inv, t)?,
            }
        }
        return Ok(());
    }
    match pay_invoice(s, &inv, None, t)? {
        PayOutcome::Paid => after_invoice_paid(s, &inv, t),
        _ => after_invoice_failed(s, &inv, t),
    }
}

/// The `pause_collection` behaviour in force at `t`, clearing it once `resumes_at` has passed.
fn collection_paused(s: &mut Inner, sub_id: &str, t: i64) -> ApiResult<Option<String>> {
    let before = s.get("subscription", sub_id, "id")?;
    let pc = &before["pause_collection"];
    let Some(behavior) = pc["behavior"].as_str().map(str::to_string) else {
        return Ok(None);
    };
    if pc["resumes_at"].as_i64().is_some_and(|r| r <= t) {
        let mut after = before.clone();
        after["pause_collection"] = Value::Null;
        save_sub(s, &before, &after, t);
        return Ok(None);
    }
    Ok(Some(behavior))
}

fn mark_uncollectible(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let before = s.get("invoice", inv_id, "id")?;
    let mut inv = before.clone();
    inv["status"] = json!("uncollectible");
    inv["next_payment_attempt"] = Value::Null;
    inv["status_transitions"]["marked_uncollectible_at"] = json!(at);
    s.put(inv.clone());
    s.emit(
        "invoice.marked_uncollectible",
        &inv,
        Some(previous_attributes(&before, &inv)),
        at,
    );
    Ok(())
}

fn start_new_period(sub: &mut Value, t: i64) {
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        for item in items {
            let (iv, n) = price_interval(&item["price"]);
            item["current_period_start"] = json!(t);
            item["current_period_end"] = json!(add_interval(t, &iv, n));
        }
    }
}

/// Resumes a paused subscription (`POST /v1/subscriptions/{id}/resume`): a new period
/// starting now, invoiced and charged.
pub fn resume(s: &mut Inner, sub_id: &str) -> ApiResult<PayOutcome> {
    let before = s.get("subscription", sub_id, "id")?;
    if before["status"] != "paused" {
        return Err(ApiError::state(
            "subscription_not_paused",
            "Only paused subscriptions can be resumed.",
        ));
    }
    let t = s.now_for_customer(before["customer"].as_str());
    let mut after = before.clone();
    start_new_period(&mut after, t);
    after["status"] = json!("active");
    after["pause_collection"] = Value::Null;
    save_sub(s, &before, &after, t);
    s.emit("customer.subscription.resumed", &after, None, t);
    let inv = create_invoice(s, sub_id, "subscription_cycle", t)?;
    let out = pay_invoice(s, &inv, None, t)?;
    match &out {
        PayOutcome::Paid => after_invoice_paid(s, &inv, t)?,
        _ => after_invoice_failed(s, &inv, t)?,
    }
    Ok(out)
}

/// Time-based proration lines for switching `item` to `new_price` × `qty` at `t`.
pub fn proration_lines(
    s: &mut Inner,
    sub: &Value,
    item: &Value,
    new_price: &Value,
    qty: i64,
    t: i64,
) -> ApiResult<Vec<Value>> {
    let currency = s_of(&sub["currency"]);
    let start = item["current_period_start"].as_i64().unwrap_or(t);
    let end = item["current_period_end"].as_i64().unwrap_or(t);
    if sub["status"] == "trialing" || end <= start || t >= end {
        return Ok(Vec::new());
    }
    let t = t.max(start);
    let frac = |amount: i64| -> i64 {
        let num = i128::from(amount) * i128::from(end - t);
        let den = i128::from(end - start);
        // round half away from zero, as Stripe does per line
        let q = (num.abs() * 2 + den) / (den * 2);
        (if num < 0 { -q } else { q }) as i64
    };
    let old_price = &item["price"];
    let old_qty = item["quantity"].as_i64().unwrap_or(1);
    let old_amount = unit_amount_in(old_price, &currency)? * old_qty;
    let new_amount = unit_amount_in(new_price, &currency)? * qty;
    let si = s_of(&item["id"]);
    let sub_id = s_of(&sub["id"]);
    let old_name = product_name(s, old_price);
    let new_name = product_name(s, new_price);
    let credit = line(
        s,
        &sub_id,
        &si,
        old_price,
        old_qty,
        -frac(old_amount),
        &currency,
        (t, end),
        true,
        format!("Unused time on {old_qty} × {old_name}"),
    );
    let debit = line(
        s,
        &sub_id,
        &si,
        new_price,
        qty,
        frac(new_amount),
        &currency,
        (t, end),
        true,
        format!("Remaining time on {qty} × {new_name}"),
    );
    Ok(vec![credit, debit])
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    fn catalog(s: &mut Inner) -> (String, String) {
        let p = crate::resources::catalog::create_price(
            s,
            &json!({"currency": "eur", "unit_amount": "3000", "recurring": {"interval": "month"}, "product_data": {"name": "Standard"}}),
        )
        .unwrap_or_default();
        let c =
            crate::resources::customers::create(s, &json!({"email": "a@b.c"})).unwrap_or_default();
        (s_of(&p["id"]), s_of(&c["id"]))
    }

    #[test]
    fn half_a_period_left_prorates_half_of_each_price() {
        let mut s = Inner::new(SimConfig {
            frozen_time: Some(1_000_000),
            ..SimConfig::default()
        });
        let (price, cus) = catalog(&mut s);
        let pm = crate::resources::payment_methods::resolve(&mut s, "pm_card_visa", Some(&cus))
            .unwrap_or_default();
        let req = NewSubscription {
            customer: cus,
            items: vec![(price, 1)],
            default_payment_method: Some(pm),
            ..Default::default()
        };
        let (sub_id, outcome) =
            create_subscription(&mut s, req).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(outcome, PayOutcome::Paid);
        let sub = s.get("subscription", &sub_id, "id").unwrap_or_default();
        let (start, end) = period(&sub);
        let dearer = crate::resources::catalog::create_price(
            &mut s,
            &json!({"currency": "eur", "unit_amount": "5000", "recurring": {"interval": "month"}, "product_data": {"name": "Pro"}}),
        )
        .unwrap_or_default();
        let item = sub["items"]["data"][0].clone();
        let lines = proration_lines(&mut s, &sub, &item, &dearer, 1, start + (end - start) / 2)
            .unwrap_or_default();
        assert_eq!(lines[0]["amount"], -1500);
        assert_eq!(lines[1]["amount"], 2500);
        assert_eq!(
            lines[0]["parent"]["subscription_item_details"]["proration"],
            true
        );
    }
}
