//! Payment intents, charges, refunds, disputes and invoice payments.

use crate::billing::{self, PayOutcome};
use crate::error::{ApiError, ApiResult};
use crate::params::{self, str_at};
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Value};

/// `GET /v1/payment_intents` with `customer`.
pub fn list_payment_intents(s: &Inner, p: &Value) -> ApiResult {
    let customer = str_at(p, "customer").map(str::to_string);
    s.list("payment_intent", "/v1/payment_intents", p, |o| {
        customer
            .as_ref()
            .is_none_or(|c| o["customer"] == c.as_str())
    })
}

/// `POST /v1/payment_intents/{id}/confirm` with `payment_method`: pays the invoice behind it.
pub fn confirm_payment_intent(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let pi = s.get("payment_intent", id, "id")?;
    if !matches!(
        pi["status"].as_str(),
        Some("requires_payment_method" | "requires_confirmation")
    ) {
        return Err(ApiError::state(
            "payment_intent_unexpected_state",
            format!(
                "You cannot confirm this PaymentIntent because it has a status of {}.",
                pi["status"]
            ),
        ));
    }
    let customer = pi["customer"].as_str().map(str::to_string);
    let pm = match str_at(p, "payment_method") {
        Some(pm) => Some(crate::resources::payment_methods::resolve(
            s,
            pm,
            customer.as_deref(),
        )?),
        None => pi["payment_method"].as_str().map(str::to_string),
    };
    let pm = pm.ok_or_else(|| ApiError::missing("payment_method"))?;
    let inv = billing::find_invoice_of_pi(s, id).ok_or_else(|| {
        ApiError::state(
            "payment_intent_unexpected_state",
            "This PaymentIntent does not pay an invoice.",
        )
    })?;
    let at = s.now_for_customer(customer.as_deref());
    match billing::pay_invoice(s, &inv, Some(&pm), at)? {
        PayOutcome::Paid => billing::after_invoice_paid(s, &inv, at)?,
        PayOutcome::Declined(e) => return Err(e),
        PayOutcome::RequiresAction(_) => {}
    }
    s.get("payment_intent", id, "id")
}

/// `GET /v1/charges` with `customer` and `payment_intent`.
pub fn list_charges(s: &Inner, p: &Value) -> ApiResult {
    let customer = str_at(p, "customer").map(str::to_string);
    let pi = str_at(p, "payment_intent").map(str::to_string);
    s.list("charge", "/v1/charges", p, |o| {
        customer
            .as_ref()
            .is_none_or(|c| o["customer"] == c.as_str())
            && pi
                .as_ref()
                .is_none_or(|x| o["payment_intent"] == x.as_str())
    })
}

/// `GET /v1/invoice_payments` with `invoice`.
pub fn list_invoice_payments(s: &Inner, p: &Value) -> ApiResult {
    let inv = str_at(p, "invoice").map(str::to_string);
    s.list("invoice_payment", "/v1/invoice_payments", p, |o| {
        inv.as_ref().is_none_or(|x| o["invoice"] == x.as_str())
    })
}

/// `POST /v1/refunds` (`charge` or `payment_intent`, optional `amount`, `reason`, `metadata`).
pub fn create_refund(s: &mut Inner, p: &Value) -> ApiResult {
    let charge_id = match (str_at(p, "charge"), str_at(p, "payment_intent")) {
        (Some(c), _) => c.to_string(),
        (None, Some(pi)) => {
            let pi = s.get("payment_intent", pi, "payment_intent")?;
            pi["latest_charge"]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::state(
                        "charge_not_refundable",
                        "This PaymentIntent does not have a successful charge to refund.",
                    )
                })?
        }
        _ => return Err(ApiError::missing("charge")),
    };
    let before = s.get("charge", &charge_id, "charge")?;
    if before["status"] != "succeeded" {
        return Err(ApiError::state(
            "charge_not_refundable",
            "This charge cannot be refunded: it did not succeed.",
        ));
    }
    let open_dispute = s.by_kind.get("dispute").into_iter().flatten().any(|d| {
        s.objects.get(d).is_some_and(|d| {
            d["charge"] == charge_id.as_str()
                && !matches!(d["status"].as_str(), Some("won" | "lost"))
        })
    });
    if open_dispute {
        return Err(ApiError::state(
            "charge_disputed",
            format!("Charge {charge_id} has been charged back; cannot issue a refund."),
        ));
    }
    let captured = before["amount_captured"].as_i64().unwrap_or(0);
    let refunded = before["amount_refunded"].as_i64().unwrap_or(0);
    let remaining = captured - refunded;
    let amount = params::i64_at(p, "amount")?.unwrap_or(remaining);
    if remaining <= 0 {
        return Err(ApiError::state(
            "charge_already_refunded",
            format!("Charge {charge_id} has already been refunded."),
        ));
    }
    if amount <= 0 || amount > remaining {
        return Err(ApiError::invalid(
            "amount",
            format!("Refund amount ({amount}) is greater than unrefunded amount on charge ({remaining})"),
        ));
    }
    let reason = str_at(p, "reason").map(str::to_string);
    if let Some(r) = &reason {
        if !matches!(
            r.as_str(),
            "duplicate" | "fraudulent" | "requested_by_customer"
        ) {
            return Err(ApiError::invalid("reason", "Invalid reason."));
        }
    }
    let at = s.now_for_customer(before["customer"].as_str());
    let id = s.id("re");
    let txn = s.id("txn");
    let refund = json!({
        "id": id,
        "object": "refund",
        "amount": amount,
        "balance_transaction": txn,
        "charge": charge_id,
        "created": at,
        "currency": before["currency"],
        "customer": before["customer"],
        "customer_account": null,
        "destination_details": {"card": {"reference_status": "pending", "reference_type": "acquirer_reference_number", "type": "refund"}, "type": "card"},
        "metadata": params::metadata(p, "metadata"),
        "payment_intent": before["payment_intent"],
        "payment_method": before["payment_method"],
        "reason": reason,
        "receipt_number": null,
        "source_transfer_reversal": null,
        "status": "succeeded",
        "transfer_reversal": null,
    });
    s.insert(refund.clone());
    let mut after = before.clone();
    after["amount_refunded"] = json!(refunded + amount);
    after["refunded"] = json!(refunded + amount == captured);
    if let Some(d) = after["refunds"]["data"].as_array_mut() {
        d.insert(0, refund.clone());
    }
    s.put(after.clone());
    s.emit("refund.created", &refund, None, at);
    s.emit(
        "charge.refunded",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    Ok(refund)
}

/// `GET /v1/refunds` with `charge` and `payment_intent`.
pub fn list_refunds(s: &Inner, p: &Value) -> ApiResult {
    let charge = str_at(p, "charge").map(str::to_string);
    let pi = str_at(p, "payment_intent").map(str::to_string);
    s.list("refund", "/v1/refunds", p, |o| {
        charge.as_ref().is_none_or(|c| o["charge"] == c.as_str())
            && pi
                .as_ref()
                .is_none_or(|x| o["payment_intent"] == x.as_str())
    })
}

/// Opens a dispute on a charge, as happens with `pm_card_createDispute`.
pub fn open_dispute(s: &mut Inner, charge_id: &str, at: i64) -> ApiResult<String> {
    let before = s.get("charge", charge_id, "charge")?;
    let id = s.id("dp");
    let evidence_keys = [
        "access_activity_log",
        "billing_address",
        "cancellation_policy",
        "cancellation_policy_disclosure",
        "cancellation_rebuttal",
        "customer_communication",
        "customer_email_address",
        "customer_name",
        "customer_purchase_ip",
        "customer_signature",
        "duplicate_charge_documentation",
        "duplicate_charge_explanation",
        "duplicate_charge_id",
        "product_description",
        "receipt",
        "refund_policy",
        "refund_policy_disclosure",
        "refund_refusal_explanation",
        "service_date",
        "service_documentation",
        "shipping_address",
        "shipping_carrier",
        "shipping_date",
        "shipping_documentation",
        "shipping_tracking_number",
        "uncategorized_file",
        "uncategorized_text",
    ];
    let mut evidence = serde_json::Map::new();
    for k in evidence_keys {
        evidence.insert(k.to_string(), Value::Null);
    }
    evidence.insert("enhanced_evidence".to_string(), json!({}));
    let dispute = json!({
        "id": id,
        "object": "dispute",
        "amount": before["amount"],
        "balance_transactions": [],
        "charge": charge_id,
        "created": at,
        "currency": before["currency"],
        "enhanced_eligibility_types": [],
        "evidence": evidence,
        "evidence_details": {"due_by": at + 7 * 86_400, "enhanced_eligibility": {}, "has_evidence": false, "past_due": false, "submission_count": 0},
        "is_charge_refundable": false,
        "livemode": false,
        "metadata": {},
        "payment_intent": before["payment_intent"],
        "payment_method_details": {"card": {"brand": before["payment_method_details"]["card"]["brand"], "case_type": "chargeback", "network": before["payment_method_details"]["card"]["network"], "network_reason_code": "10.4"}, "type": "card"},
        "reason": "fraudulent",
        "status": "needs_response",
    });
    s.insert(dispute.clone());
    let mut after = before.clone();
    after["disputed"] = json!(true);
    s.put(after);
    s.emit("charge.dispute.created", &dispute, None, at);
    s.emit("charge.dispute.funds_withdrawn", &dispute, None, at);
    Ok(id)
}

/// `POST /_sim/disputes/{id}/close` with `outcome=won|lost`: `charge.dispute.closed`.
pub fn close_dispute(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let outcome = params::req_str(p, "outcome")?;
    if !matches!(outcome, "won" | "lost") {
        return Err(ApiError::invalid("outcome", "outcome must be won or lost"));
    }
    let before = s.get("dispute", id, "id")?;
    if matches!(before["status"].as_str(), Some("won" | "lost")) {
        return Err(ApiError::state(
            "dispute_already_closed",
            "This dispute is already closed.",
        ));
    }
    let charge = before["charge"].as_str().unwrap_or_default().to_string();
    let at = {
        let ch = s.get("charge", &charge, "charge")?;
        s.now_for_customer(ch["customer"].as_str())
    };
    let mut after = before.clone();
    after["status"] = json!(outcome);
    s.put(after.clone());
    s.emit(
        "charge.dispute.closed",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    if outcome == "won" {
        s.emit("charge.dispute.funds_reinstated", &after, None, at);
    }
    Ok(after)
}

/// `POST /v1/disputes/{id}/close`: accepting the dispute (it is lost).
pub fn accept_dispute(s: &mut Inner, id: &str) -> ApiResult {
    close_dispute(s, id, &json!({"outcome": "lost"}))
}

/// `GET /v1/disputes` with `charge` and `payment_intent`.
pub fn list_disputes(s: &Inner, p: &Value) -> ApiResult {
    let charge = str_at(p, "charge").map(str::to_string);
    let pi = str_at(p, "payment_intent").map(str::to_string);
    s.list("dispute", "/v1/disputes", p, |o| {
        charge.as_ref().is_none_or(|c| o["charge"] == c.as_str())
            && pi
                .as_ref()
                .is_none_or(|x| o["payment_intent"] == x.as_str())
    })
}
