//! Payment intents, charges and the outcome of each payment attempt, with retries.

use super::*;

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
    let amount = inv["amount_remaining"].as_i64().unwrap_or(0);
    let reason = inv["billing_reason"].as_str().unwrap_or("manual");
    let pi = payment_intent_json(
        s,
        &id,
        PaymentIntentFields {
            amount,
            currency: &inv["currency"],
            customer: &inv["customer"],
            description: json!(if reason == "subscription_create" {
                "Subscription creation"
            } else {
                "Subscription update"
            }),
            payment_method: pm,
            setup_future_usage: json!("off_session"),
            metadata: json!({}),
        },
        at,
    );
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

/// What differs between payment intents: an invoice's or a one-time Checkout payment's.
pub(crate) struct PaymentIntentFields<'a> {
    /// `amount`.
    pub amount: i64,
    /// `currency`.
    pub currency: &'a Value,
    /// `customer`.
    pub customer: &'a Value,
    /// `description`.
    pub description: Value,
    /// `payment_method`.
    pub payment_method: Option<&'a str>,
    /// `setup_future_usage`.
    pub setup_future_usage: Value,
    /// `metadata`.
    pub metadata: Value,
}

/// A new payment intent `id` (not stored), awaiting confirmation when it has a payment method.
pub(crate) fn payment_intent_json(
    s: &mut Inner,
    id: &str,
    f: PaymentIntentFields<'_>,
    at: i64,
) -> Value {
    let secret = format!("{id}_secret_{}", s.ids.tail(25));
    json!({
        "id": id,
        "object": "payment_intent",
        "amount": f.amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "allowed_payment_method_types": null,
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
        "currency": f.currency,
        "customer": f.customer,
        "customer_account": null,
        "description": f.description,
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "managed_payments": {"enabled": false},
        "metadata": f.metadata,
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": f.payment_method,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"installments": null, "mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_record": null,
        "processing": null,
        "receipt_email": null,
        "review": null,
        "setup_future_usage": f.setup_future_usage,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": if f.payment_method.is_some() { "requires_confirmation" } else { "requires_payment_method" },
        "transfer_data": null,
        "transfer_group": null,
    })
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
    let expired = pm
        .as_ref()
        .and_then(|p| s.objects.get(p))
        .is_some_and(|o| crate::resources::payment_methods::is_expired(o, at));
    // An expired card declines whatever it is.
    let behavior = pm
        .as_ref()
        .and_then(|p| s.cards.get(p))
        .copied()
        .filter(|_| !expired);
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
            // A renewal needing authentication is retried like a decline meanwhile.
            schedule_retry(s, inv_id, at)?;
            let inv = s.get("invoice", inv_id, "invoice")?;
            s.emit(
                "invoice.payment_action_required",
                &inv,
                Some(previous_attributes(&before_inv, &inv)),
                at,
            );
            Ok(PayOutcome::RequiresAction(pi_id))
        }
        other => {
            let err = if expired {
                ApiError::card(
                    "expired_card",
                    Some("expired_card"),
                    "Your card has expired.",
                )
            } else {
                decline_error(other)
            };
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

pub(crate) fn schedule_retry(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
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
        "source": null,
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
    apply_pending_update(s, &sub_id, inv_id, at)
}

/// Applies a held `pending_if_incomplete` update once its invoice is paid.
fn apply_pending_update(s: &mut Inner, sub_id: &str, inv_id: &str, at: i64) -> ApiResult<()> {
    let held = s.subs.get(sub_id).and_then(|m| m.pending_update.clone());
    let Some((_, items)) = held.filter(|(inv, _)| inv == inv_id) else {
        return Ok(());
    };
    if let Some(m) = s.subs.get_mut(sub_id) {
        m.pending_update = None;
    }
    let before = s.get("subscription", sub_id, "subscription")?;
    let mut after = before.clone();
    after["items"] = items;
    after["pending_update"] = Value::Null;
    save_sub(s, &before, &after, at);
    s.emit(
        "customer.subscription.pending_update_applied",
        &after,
        None,
        at,
    );
    Ok(())
}

/// After a renewal or retry fails: active/trialing → past_due.
pub(crate) fn after_invoice_failed(s: &mut Inner, inv_id: &str, at: i64) -> ApiResult<()> {
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

pub(crate) fn retries_exhausted(s: &mut Inner, sub_id: &str, at: i64) -> ApiResult<()> {
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
