//! `/v1/subscriptions` and `/v1/subscription_items`.

use crate::billing::{self, NewSubscription, PayOutcome};
use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::resources::{coupons, customers, payment_methods};
use crate::state::{CardBehavior, Inner};
use serde_json::{json, Value};

fn parse_items(p: &Value) -> ApiResult<Vec<(String, i64)>> {
    let Some(Value::Array(items)) = params::at(p, "items") else {
        return Err(ApiError::missing("items"));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let price = str_at(it, "price")
                .ok_or_else(|| ApiError::missing(&format!("items[{i}][price]")))?;
            let qty = params::bounded_at(it, "quantity", 0..=1_000_000_000)?.unwrap_or(1);
            if qty < 1 {
                return Err(ApiError::invalid(
                    &format!("items[{i}][quantity]"),
                    "Quantity must be at least 1.",
                ));
            }
            Ok((price.to_string(), qty))
        })
        .collect()
}

fn trial_end_from(p: &Value, now: i64) -> ApiResult<Option<i64>> {
    if let Some(days) = params::bounded_at(p, "trial_period_days", 0..=730)? {
        if days < 0 {
            return Err(ApiError::invalid(
                "trial_period_days",
                "trial_period_days must be positive.",
            ));
        }
        return Ok((days > 0).then_some(now + days * 86_400));
    }
    match str_at(p, "trial_end") {
        None | Some("now") => Ok(None),
        Some(t) => {
            let t: i64 = t
                .parse()
                .map_err(|_| ApiError::invalid("trial_end", "Invalid timestamp."))?;
            if t <= now {
                return Err(ApiError::invalid(
                    "trial_end",
                    "Invalid timestamp: must be an integer Unix timestamp in the future.",
                ));
            }
            Ok(Some(t))
        }
    }
}

/// `POST /v1/subscriptions`.
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    let customer = params::req_str(p, "customer")?.to_string();
    customers::require(s, &customer, "customer")?;
    let items = parse_items(p)?;
    let now = s.now_for_customer(Some(&customer));
    let default_pm = match str_at(p, "default_payment_method") {
        Some(pm) => Some(payment_methods::resolve(s, pm, Some(&customer))?),
        None => None,
    };
    let currency = match str_at(p, "currency") {
        Some(c) => c.to_lowercase(),
        None => s.get("price", &items[0].0, "items[0][price]")?["currency"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let mut amount = 0;
    for (i, (price, qty)) in items.iter().enumerate() {
        let price = s.get("price", price, &format!("items[{i}][price]"))?;
        amount += billing::licensed_unit_amount(&price, &currency)? * qty;
    }
    let purchase = coupons::Purchase {
        amount,
        currency: &currency,
    };
    let coupon = coupons::from_params(s, p, "discounts.0", &customer, now, Some(purchase))?;
    let req = NewSubscription {
        customer,
        items,
        currency: str_at(p, "currency").map(str::to_lowercase),
        metadata: params::metadata(p, "metadata"),
        trial_end: trial_end_from(p, now)?,
        default_payment_method: default_pm,
        coupon,
        missing_payment_method: str_at(p, "trial_settings.end_behavior.missing_payment_method")
            .map(str::to_string),
        payment_behavior: str_at(p, "payment_behavior").map(str::to_string),
        cancel_at_period_end: params::bool_at(p, "cancel_at_period_end")?.unwrap_or(false),
    };
    let (id, _) = billing::create_subscription(s, req)?;
    s.get("subscription", &id, "id")
}

/// `GET /v1/subscriptions/{id}`.
pub fn retrieve(s: &Inner, id: &str) -> ApiResult {
    s.get("subscription", id, "id")
}

/// `GET /v1/subscriptions` with `customer`, `price`, `status` (default: all but canceled; `all`), `test_clock`.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    let customer = str_at(p, "customer").map(str::to_string);
    let price = str_at(p, "price").map(str::to_string);
    let status = str_at(p, "status").map(str::to_string);
    let clock = str_at(p, "test_clock").map(str::to_string);
    s.list("subscription", "/v1/subscriptions", p, |o| {
        let st = o["status"].as_str().unwrap_or_default();
        let status_ok = match status.as_deref() {
            None => !matches!(st, "canceled" | "incomplete_expired"),
            Some("all") => true,
            Some("ended") => matches!(st, "canceled" | "incomplete_expired"),
            Some(x) => st == x,
        };
        status_ok
            && customer
                .as_ref()
                .is_none_or(|c| o["customer"] == c.as_str())
            && clock.as_ref().is_none_or(|c| o["test_clock"] == c.as_str())
            && price.as_ref().is_none_or(|pr| {
                o["items"]["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|i| i["price"]["id"] == pr.as_str()))
            })
    })
}

/// `POST /v1/subscriptions/{id}`: items (price/quantity with `proration_behavior`),
/// `cancel_at_period_end`, `cancel_at`, `metadata`, `default_payment_method`, `trial_end=now`.
pub fn update(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("subscription", id, "id")?;
    if matches!(
        before["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    ) {
        return Err(ApiError::state(
            "resource_missing",
            "A canceled subscription can only update its cancellation_details and metadata.",
        ));
    }
    let customer = before["customer"].as_str().unwrap_or_default().to_string();
    let now = s.now_for_customer(Some(&customer));
    let mut after = before.clone();
    params::apply_metadata(&mut after, p, "metadata");
    if let Some(pm) = str_at(p, "default_payment_method") {
        after["default_payment_method"] = json!(payment_methods::resolve(s, pm, Some(&customer))?);
    }
    let (_, period_end) = billing::period(&before);
    if let Some(c) = params::bool_at(p, "cancel_at_period_end")? {
        after["cancel_at_period_end"] = json!(c);
        if c {
            after["cancel_at"] = json!(period_end);
            after["canceled_at"] = json!(now);
            after["cancellation_details"]["reason"] = json!("cancellation_requested");
        } else {
            after["cancel_at"] = Value::Null;
            after["canceled_at"] = Value::Null;
            after["cancellation_details"]["reason"] = Value::Null;
        }
    }
    if let Some(v) = params::at(p, "cancel_at").and_then(Value::as_str) {
        if v.is_empty() {
            after["cancel_at"] = Value::Null;
            after["canceled_at"] = Value::Null;
            after["cancel_at_period_end"] = json!(false);
        } else {
            let t: i64 = v
                .parse()
                .map_err(|_| ApiError::invalid("cancel_at", "Invalid timestamp."))?;
            after["cancel_at"] = json!(t);
            after["canceled_at"] = json!(now);
            after["cancel_at_period_end"] = json!(t == period_end);
        }
    }
    if let Some(c) = params::at(p, "cancellation_details.comment").and_then(Value::as_str) {
        after["cancellation_details"]["comment"] = json!(c);
    }
    if let Some(f) = str_at(p, "cancellation_details.feedback") {
        after["cancellation_details"]["feedback"] = json!(f);
    }
    if str_at(p, "trial_end") == Some("now") && before["status"] == "trialing" {
        // Ending a trial now starts a paid period immediately.
        after["trial_end"] = json!(now);
        if let Some(items) = after["items"]["data"].as_array_mut() {
            for it in items {
                it["current_period_end"] = json!(now);
            }
        }
        billing::save_sub(s, &before, &after, now);
        // Stripe sends trial_will_end when a trial is ended immediately, too.
        s.emit("customer.subscription.trial_will_end", &after, None, now);
        billing::renew(s, id, now)?;
        return s.get("subscription", id, "id");
    }
    if let Some(pc) = params::at(p, "pause_collection") {
        after["pause_collection"] = match pc.get("behavior").and_then(Value::as_str) {
            Some(b @ ("void" | "keep_as_draft" | "mark_uncollectible")) => {
                json!({"behavior": b, "resumes_at": i64_at(pc, "resumes_at")?})
            }
            Some(_) => {
                return Err(ApiError::invalid(
                    "pause_collection[behavior]",
                    "Invalid pause_collection behavior.",
                ))
            }
            None => Value::Null,
        };
    }
    let behavior = str_at(p, "proration_behavior")
        .unwrap_or("create_prorations")
        .to_string();
    if !matches!(
        behavior.as_str(),
        "create_prorations" | "always_invoice" | "none"
    ) {
        return Err(ApiError::invalid(
            "proration_behavior",
            "Invalid proration_behavior.",
        ));
    }
    let proration_date = i64_at(p, "proration_date")?.unwrap_or(now);
    let payment_behavior = str_at(p, "payment_behavior").unwrap_or("allow_incomplete");
    if !matches!(
        payment_behavior,
        "allow_incomplete" | "default_incomplete" | "error_if_incomplete" | "pending_if_incomplete"
    ) {
        return Err(ApiError::invalid(
            "payment_behavior",
            "Invalid payment_behavior.",
        ));
    }
    // Everything but the items, for a pending update that keeps the old items.
    let base = after.clone();
    let mut lines = Vec::new();
    let mut items_changed = false;
    let mut interval_changed = false;
    if let Some(Value::Array(items)) = params::at(p, "items") {
        for (i, it) in items.iter().enumerate() {
            let deleted = params::bool_at(it, "deleted")?.unwrap_or(false);
            if deleted && payment_behavior == "pending_if_incomplete" {
                // A pending update changes items' price and quantity only.
                return Err(ApiError::invalid(
                    &format!("items[{i}][deleted]"),
                    "You can only update `price` and `quantity` of subscription items when using `payment_behavior=pending_if_incomplete`.",
                ));
            }
            let Some(si) = str_at(it, "id") else {
                // A new item: metered ones are not prorated (billed in
                // arrears from their meter); stripe-sim prorates no new item.
                let pid = str_at(it, "price")
                    .ok_or_else(|| ApiError::missing(&format!("items[{i}][price]")))?;
                let price = s.get("price", pid, &format!("items[{i}][price]"))?;
                billing::unit_amount_in(&price, after["currency"].as_str().unwrap_or_default())?;
                let qty = params::bounded_at(it, "quantity", 1..=1_000_000_000)?;
                billing::add_item(s, &mut after, &price, qty, &format!("items[{i}]"))?;
                items_changed = true;
                continue;
            };
            if deleted {
                if !after["items"]["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["id"] == si))
                {
                    return Err(ApiError::no_such(
                        "subscription_item",
                        si,
                        &format!("items[{i}][id]"),
                    ));
                }
                billing::remove_item(&mut after, si);
                items_changed = true;
                continue;
            }
            let item = after["items"]["data"]
                .as_array()
                .and_then(|d| d.iter().find(|x| x["id"] == si))
                .cloned()
                .ok_or_else(|| {
                    ApiError::no_such("subscription_item", si, &format!("items[{i}][id]"))
                })?;
            let price = match str_at(it, "price") {
                Some(pid) => s.get("price", pid, &format!("items[{i}][price]"))?,
                None => item["price"].clone(),
            };
            billing::unit_amount_in(&price, after["currency"].as_str().unwrap_or_default())?;
            let qty = params::bounded_at(it, "quantity", 1..=1_000_000_000)?
                .unwrap_or_else(|| item["quantity"].as_i64().unwrap_or(1));
            if price["id"] == item["price"]["id"] && item["quantity"] == qty {
                continue;
            }
            items_changed = true;
            let new_interval =
                billing::price_interval(&price) != billing::price_interval(&item["price"]);
            interval_changed |= new_interval;
            if behavior != "none" {
                let mut prorations =
                    billing::proration_lines(s, &after, &item, &price, qty, proration_date)?;
                if new_interval {
                    // The new interval is billed in full from now; only the credit stays.
                    prorations.truncate(1);
                }
                lines.extend(prorations);
            }
            billing::set_item(&mut after, si, &price, qty);
        }
    }
    if after["items"]["data"].as_array().is_some_and(Vec::is_empty) {
        return Err(ApiError::invalid(
            "items",
            "A subscription must have at least one active plan.",
        ));
    }
    billing::check_one_interval(&after, "items")?;
    if interval_changed {
        // Stripe resets the billing cycle to now and invoices at once when the interval changes.
        billing::start_new_period(&mut after, now);
        after["billing_cycle_anchor"] = json!(now);
        if after["status"] == "trialing" {
            after["status"] = json!("active");
            after["trial_end"] = json!(now);
        }
        billing::save_sub(s, &before, &after, now);
        s.subs
            .entry(id.to_string())
            .or_default()
            .pending_lines
            .extend(lines);
        let inv = billing::create_invoice(s, id, "subscription_update", now)?;
        match billing::pay_invoice(s, &inv, None, now)? {
            PayOutcome::Paid => billing::after_invoice_paid(s, &inv, now)?,
            _ => {
                let b = s.get("subscription", id, "id")?;
                if b["status"] == "active" {
                    let mut a = b.clone();
                    a["status"] = json!("past_due");
                    billing::save_sub(s, &b, &a, now);
                }
            }
        }
        return s.get("subscription", id, "id");
    }
    let immediate = behavior == "always_invoice" || payment_behavior == "pending_if_incomplete";
    if immediate && !lines.is_empty() && payment_behavior == "error_if_incomplete" {
        // Stripe refuses the whole update when the payment cannot go through.
        let pm = billing::sub_payment_method(s, &after);
        match pm.as_ref().and_then(|p| s.cards.get(p)).copied() {
            Some(CardBehavior::Succeed | CardBehavior::Dispute) => {}
            Some(CardBehavior::AuthRequired) => {
                return Err(ApiError::card(
                    "subscription_payment_intent_requires_action",
                    None,
                    "Payment for this subscription requires additional user action before it can be completed successfully.",
                ))
            }
            other => return Err(billing::decline_error(other)),
        }
    }
    if payment_behavior == "pending_if_incomplete" && items_changed && !lines.is_empty() {
        billing::save_sub(s, &before, &base, now);
        let inv = billing::create_invoice_with_lines(s, id, "subscription_update", lines, now)?;
        let outcome = billing::pay_invoice(s, &inv, None, now)?;
        let cur = s.get("subscription", id, "id")?;
        if outcome == PayOutcome::Paid {
            let mut applied = cur.clone();
            applied["items"] = after["items"].clone();
            billing::save_sub(s, &cur, &applied, now);
        } else {
            let mut held = cur.clone();
            let expires_at = now + 23 * 3600;
            held["pending_update"] = json!({
                "billing_cycle_anchor": null,
                "cancel_at_period_end": null,
                "discount": null,
                "discounts": [],
                "expires_at": expires_at,
                "metadata": null,
                "subscription_items": after["items"]["data"],
                "trial_end": null,
                "trial_from_plan": null,
            });
            billing::save_sub(s, &cur, &held, now);
            // A held update's invoice waits to be paid; it is not dunned.
            if let Some(i) = s.objects.get_mut(&inv) {
                i["next_payment_attempt"] = Value::Null;
            }
            s.subs.entry(id.to_string()).or_default().pending_update =
                Some((inv, after["items"].clone()));
        }
        return s.get("subscription", id, "id");
    }
    billing::save_sub(s, &before, &after, now);
    if !lines.is_empty() {
        if immediate {
            let inv = billing::create_invoice_with_lines(s, id, "subscription_update", lines, now)?;
            match billing::pay_invoice(s, &inv, None, now)? {
                PayOutcome::Paid => billing::after_invoice_paid(s, &inv, now)?,
                _ => {
                    let b = s.get("subscription", id, "id")?;
                    if b["status"] == "active" {
                        let mut a = b.clone();
                        a["status"] = json!("past_due");
                        billing::save_sub(s, &b, &a, now);
                    }
                }
            }
        } else {
            s.subs
                .entry(id.to_string())
                .or_default()
                .pending_lines
                .extend(lines);
        }
    }
    s.get("subscription", id, "id")
}

/// `DELETE /v1/subscriptions/{id}`.
pub fn cancel(s: &mut Inner, id: &str) -> ApiResult {
    billing::cancel_now(s, id, "cancellation_requested")?;
    s.get("subscription", id, "id")
}

/// `POST /v1/subscriptions/{id}/resume`.
pub fn resume(s: &mut Inner, id: &str) -> ApiResult {
    billing::resume(s, id)?;
    s.get("subscription", id, "id")
}

/// `GET /v1/subscription_items?subscription=`.
pub fn list_items(s: &Inner, p: &Value) -> ApiResult {
    let sub_id = params::req_str(p, "subscription")?;
    let sub = s.get("subscription", sub_id, "subscription")?;
    let mut list = sub["items"].clone();
    list["url"] = json!("/v1/subscription_items");
    Ok(list)
}

/// `GET /v1/subscription_items/{id}`.
pub fn retrieve_item(s: &Inner, id: &str) -> ApiResult {
    s.by_kind
        .get("subscription")
        .into_iter()
        .flatten()
        .filter_map(|sid| s.objects.get(sid))
        .find_map(|sub| {
            sub["items"]["data"]
                .as_array()?
                .iter()
                .find(|i| i["id"] == id)
                .cloned()
        })
        .ok_or_else(|| ApiError::no_such("subscription_item", id, "id"))
}
