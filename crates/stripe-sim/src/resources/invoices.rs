//! `/v1/invoices`.

use crate::billing::{self, PayOutcome};
use crate::clock::add_interval;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::resources::payment_methods;
use crate::state::Inner;
use serde_json::{json, Value};

/// `GET /v1/invoices` with `customer`, `subscription`, `status`.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    let customer = str_at(p, "customer").map(str::to_string);
    let sub = str_at(p, "subscription").map(str::to_string);
    let status = str_at(p, "status").map(str::to_string);
    s.list("invoice", "/v1/invoices", p, |o| {
        customer
            .as_ref()
            .is_none_or(|c| o["customer"] == c.as_str())
            && sub
                .as_ref()
                .is_none_or(|x| o["parent"]["subscription_details"]["subscription"] == x.as_str())
            && status.as_ref().is_none_or(|x| o["status"] == x.as_str())
    })
}

/// `GET /v1/invoices/{id}/lines`.
pub fn lines(s: &Inner, id: &str) -> ApiResult {
    Ok(s.get("invoice", id, "id")?["lines"].clone())
}

/// `POST /v1/invoices/{id}/finalize`: the emulator finalizes subscription invoices
/// as they are created, so only the state check remains.
pub fn finalize(s: &Inner, id: &str) -> ApiResult {
    let inv = s.get("invoice", id, "id")?;
    if inv["status"] != "draft" {
        return Err(ApiError::state(
            "invoice_not_editable",
            format!("This invoice is already finalized, you can't re-finalize a non-draft invoice. (status: {})", inv["status"]),
        ));
    }
    Ok(inv)
}

/// `POST /v1/invoices/{id}/pay` with optional `payment_method`; a decline is a 402.
pub fn pay(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let inv = s.get("invoice", id, "id")?;
    if inv["status"] == "paid" {
        return Err(ApiError::state(
            "invoice_already_paid",
            "Invoice is already paid",
        ));
    }
    let customer = inv["customer"].as_str().map(str::to_string);
    let pm = match str_at(p, "payment_method") {
        Some(pm) => Some(payment_methods::resolve(s, pm, customer.as_deref())?),
        None => None,
    };
    let at = s.now_for_customer(customer.as_deref());
    match billing::pay_invoice(s, id, pm.as_deref(), at)? {
        PayOutcome::Paid => billing::after_invoice_paid(s, id, at)?,
        PayOutcome::Declined(e) => return Err(e),
        PayOutcome::RequiresAction(_) => return Err(ApiError::card(
            "invoice_payment_intent_requires_action",
            None,
            "This payment requires additional user action before it can be completed successfully.",
        )),
    }
    s.get("invoice", id, "id")
}

/// `POST /v1/invoices/{id}/void`.
pub fn void(s: &mut Inner, id: &str) -> ApiResult {
    let inv = s.get("invoice", id, "id")?;
    let at = s.now_for_customer(inv["customer"].as_str());
    billing::void_invoice(s, id, at)
}

/// `POST /v1/invoices/create_preview`: the invoice a subscription change would produce
/// (`subscription`, `subscription_details[items][i][id|price|quantity]`,
/// `subscription_details[proration_behavior]`, `subscription_details[proration_date]`).
pub fn create_preview(s: &mut Inner, p: &Value) -> ApiResult {
    let sub_id = params::req_str(p, "subscription")?.to_string();
    let sub = s.get("subscription", &sub_id, "subscription")?;
    if let Some(c) = str_at(p, "customer") {
        if sub["customer"] != c {
            return Err(ApiError::invalid(
                "subscription",
                "The subscription does not belong to this customer.",
            ));
        }
    }
    let now = s.now_for_customer(sub["customer"].as_str());
    let behavior = str_at(p, "subscription_details.proration_behavior")
        .unwrap_or("create_prorations")
        .to_string();
    let date = i64_at(p, "subscription_details.proration_date")?.unwrap_or(now);
    let currency = sub["currency"].as_str().unwrap_or_default().to_string();
    let mut changed = sub.clone();
    let mut prorations = Vec::new();
    let mut interval_changed = false;
    if let Some(Value::Array(items)) = params::at(p, "subscription_details.items") {
        for (i, it) in items.iter().enumerate() {
            let param = format!("subscription_details[items][{i}][id]");
            let Some(si) = str_at(it, "id") else {
                // A new item, as the update adds it.
                let at = format!("subscription_details[items][{i}]");
                let pid = str_at(it, "price")
                    .ok_or_else(|| ApiError::missing(&format!("{at}[price]")))?;
                let price = s.get("price", pid, &format!("{at}[price]"))?;
                let qty = params::bounded_at(it, "quantity", 1..=1_000_000_000)?;
                billing::add_item(s, &mut changed, &price, qty, &at)?;
                continue;
            };
            if params::bool_at(it, "deleted")?.unwrap_or(false) {
                if !changed["items"]["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|x| x["id"] == si))
                {
                    return Err(ApiError::no_such("subscription_item", si, &param));
                }
                billing::remove_item(&mut changed, si);
                continue;
            }
            let item = sub["items"]["data"]
                .as_array()
                .and_then(|d| d.iter().find(|x| x["id"] == si))
                .cloned()
                .ok_or_else(|| ApiError::no_such("subscription_item", si, &param))?;
            let price = match str_at(it, "price") {
                Some(pid) => s.get(
                    "price",
                    pid,
                    &format!("subscription_details[items][{i}][price]"),
                )?,
                None => item["price"].clone(),
            };
            let qty =
                i64_at(it, "quantity")?.unwrap_or_else(|| item["quantity"].as_i64().unwrap_or(1));
            let new_interval =
                billing::price_interval(&price) != billing::price_interval(&item["price"]);
            interval_changed |= new_interval;
            if behavior != "none" {
                let mut lines = billing::proration_lines(s, &sub, &item, &price, qty, date)?;
                if new_interval {
                    // As the update does: the new interval is billed in full
                    // from now; only the credit stays.
                    lines.truncate(1);
                }
                prorations.extend(lines);
            }
            billing::set_item(&mut changed, si, &price, qty);
        }
    }
    billing::check_one_interval(&changed, "subscription_details[items]")?;
    let mut lines = s
        .subs
        .get(&sub_id)
        .map(|m| m.pending_lines.clone())
        .unwrap_or_default();
    lines.extend(prorations);
    // A new interval restarts the billing cycle now and invoices at once
    // (see the update): the preview is that invoice, whatever the behaviour.
    if behavior != "always_invoice" || interval_changed {
        // The next renewal: the (changed) items for the following period.
        for item in changed["items"]["data"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let price = &item["price"];
            let qty = item["quantity"].as_i64().unwrap_or(1);
            let amount = billing::licensed_unit_amount(price, &currency)? * qty;
            let start = if interval_changed {
                now
            } else {
                item["current_period_end"].as_i64().unwrap_or(now)
            };
            let end = add_interval(
                start,
                price["recurring"]["interval"].as_str().unwrap_or("month"),
                price["recurring"]["interval_count"].as_i64().unwrap_or(1),
            );
            lines.push(json!({
                "id": s.id("il_tmp"),
                "object": "line_item",
                "amount": amount,
                "currency": currency,
                "description": format!("{qty} × {}", price["nickname"].as_str().unwrap_or("Subscription")),
                "discount_amounts": [],
                "discountable": true,
                "discounts": [],
                "invoice": null,
                "livemode": false,
                "metadata": {},
                "parent": {"type": "subscription_item_details", "invoice_item_details": null, "subscription_item_details": {"invoice_item": null, "proration": false, "proration_details": {"credited_items": null}, "subscription": sub_id, "subscription_item": item["id"]}},
                "period": {"start": start, "end": end},
                "pretax_credit_amounts": [],
                "pricing": {"type": "price_details", "price_details": {"price": price["id"], "product": price["product"]}, "unit_amount_decimal": price["unit_amount_decimal"]},
                "quantity": qty,
                "quantity_decimal": qty.to_string(),
                "subscription": sub_id,
                "subtotal": amount,
                "taxes": [],
            }));
        }
    }
    let id = format!("upcoming_{}", s.id("in"));
    let reason = if behavior == "always_invoice" {
        "subscription_update"
    } else {
        "upcoming"
    };
    let mut inv = billing::invoice_object(s, &sub_id, reason, lines, now, &id)?;
    inv["hosted_invoice_url"] = Value::Null;
    inv["invoice_pdf"] = Value::Null;
    if reason == "upcoming" {
        inv["billing_reason"] = json!("subscription_cycle");
    }
    Ok(inv)
}
