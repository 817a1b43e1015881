//! Invoices: lines, totals and discounts, finalization, paying, voiding, prorations.

use super::*;

/// One invoice line.
#[expect(
    clippy::too_many_arguments,
    reason = "an invoice line has that many independent facts"
)]
pub(crate) fn line(
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

pub(crate) fn product_name(s: &Inner, price: &Value) -> String {
    price["product"]
        .as_str()
        .and_then(|p| s.objects.get(p))
        .and_then(|p| p["name"].as_str())
        .unwrap_or("Subscription")
        .to_string()
}

/// Lines for a subscription's current period, plus pending prorations.
pub(crate) fn period_lines(
    s: &mut Inner,
    sub_id: &str,
    with_pending: bool,
) -> ApiResult<Vec<Value>> {
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
        // Metered items are billed in arrears, at the period's end
        // ([`usage_lines`]), not in advance.
        if crate::resources::meters::is_metered(price) {
            continue;
        }
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

/// One line per metered item of a subscription: its meter's usage over
/// the item's current period times the price (billed when the period ends).
pub(crate) fn usage_lines(s: &mut Inner, sub_id: &str) -> ApiResult<Vec<Value>> {
    let sub = s.get("subscription", sub_id, "subscription")?;
    let currency = s_of(&sub["currency"]);
    let customer = s_of(&sub["customer"]);
    let mut lines = Vec::new();
    // Usage during a trial is not charged.
    if sub["status"] == "trialing" {
        return Ok(lines);
    }
    for item in sub["items"]["data"].as_array().cloned().unwrap_or_default() {
        let price = &item["price"];
        if !crate::resources::meters::is_metered(price) {
            continue;
        }
        let (qty, _) = crate::resources::meters::item_usage(s, &customer, &item);
        let amount = unit_amount_in(price, &currency)? * qty;
        let per = (
            item["current_period_start"].as_i64().unwrap_or(0),
            item["current_period_end"].as_i64().unwrap_or(0),
        );
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
            per,
            false,
            format!("{name} (usage: {qty})"),
        ));
    }
    Ok(lines)
}

/// Creates, finalizes and stores an invoice for a subscription's current period.
pub fn create_invoice(s: &mut Inner, sub_id: &str, reason: &str, at: i64) -> ApiResult<String> {
    let lines = period_lines(s, sub_id, true)?;
    create_invoice_with_lines(s, sub_id, reason, lines, at)
}

/// Like [`create_invoice`], under an id chosen beforehand (a new subscription
/// names its first invoice as `latest_invoice` from its very first event).
pub fn create_invoice_as(
    s: &mut Inner,
    sub_id: &str,
    reason: &str,
    at: i64,
    id: String,
) -> ApiResult<String> {
    let lines = period_lines(s, sub_id, true)?;
    create_invoice_inner(s, sub_id, reason, lines, at, Some(id))
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
    create_invoice_inner(s, sub_id, reason, lines, at, None)
}

fn create_invoice_inner(
    s: &mut Inner,
    sub_id: &str,
    reason: &str,
    lines: Vec<Value>,
    at: i64,
    preset: Option<String>,
) -> ApiResult<String> {
    // A coupon whose last discounted invoice is behind leaves before this one.
    let used_up = s
        .subs
        .get(sub_id)
        .is_some_and(|m| matches!(m.coupon, Some((_, Some(left))) if left <= 0));
    if used_up {
        end_discount(s, sub_id, at)?;
    }
    let id = match preset {
        Some(id) => id,
        None => s.id("in"),
    };
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
    let prefix = s.peek(&customer)["invoice_prefix"]
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

/// A coupon that has discounted its last invoice leaves the subscription:
/// `customer.discount.deleted`.
fn end_discount(s: &mut Inner, sub_id: &str, at: i64) -> ApiResult<()> {
    if let Some(meta) = s.subs.get_mut(sub_id) {
        meta.coupon = None;
    }
    let before = s.get("subscription", sub_id, "subscription")?;
    let Some(di) = before["discounts"][0].as_str().map(str::to_string) else {
        return Ok(());
    };
    let mut after = before.clone();
    after["discounts"] = json!([]);
    let mut discount = s.get("discount", &di, "discount")?;
    discount["end"] = json!(at);
    s.put(discount.clone());
    save_sub(s, &before, &after, at);
    s.emit("customer.discount.deleted", &discount, None, at);
    Ok(())
}

pub(crate) fn mark_paid(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
    let before = s.get("invoice", inv_id, "invoice")?;
    let mut inv = before.clone();
    let due = inv["amount_due"].as_i64().unwrap_or(0);
    inv["status"] = json!("paid");
    inv["amount_paid"] = json!(due);
    inv["amount_remaining"] = json!(0);
    inv["attempted"] = json!(true);
    inv["next_payment_attempt"] = Value::Null;
    inv["status_transitions"]["paid_at"] = json!(at);
    let mut newly_paid = Vec::new();
    if let Some(items) = inv["payments"]["data"].as_array_mut() {
        for ip in items.iter_mut() {
            if ip["status"] != "paid" {
                ip["status"] = json!("paid");
                ip["amount_paid"] = json!(due);
                ip["status_transitions"]["paid_at"] = json!(at);
                newly_paid.push(ip.clone());
            }
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
    // The invoice's `payments` is includable, never in a webhook: this event
    // is how Stripe tells which payment intent paid the invoice.
    for ip in &newly_paid {
        s.emit("invoice_payment.paid", ip, None, at);
    }
    let prev = previous_attributes(&before, &inv);
    s.emit("invoice.paid", &inv, Some(prev.clone()), at);
    s.emit("invoice.payment_succeeded", &inv, Some(prev), at);
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

pub(crate) fn mark_uncollectible(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
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
    let old_amount = licensed_unit_amount(old_price, &currency)? * old_qty;
    let new_amount = licensed_unit_amount(new_price, &currency)? * qty;
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
