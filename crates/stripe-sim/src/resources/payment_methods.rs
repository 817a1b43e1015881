//! `/v1/payment_methods` and Stripe's test payment method ids (`pm_card_visa`, …).

use crate::error::{ApiError, ApiResult};
use crate::params::str_at;
use crate::state::{CardBehavior, Inner};
use serde_json::{json, Value};

/// A Stripe test payment method: `(id, brand, last4, behaviour)`.
const TEST_CARDS: &[(&str, &str, &str, CardBehavior)] = &[
    ("pm_card_visa", "visa", "4242", CardBehavior::Succeed),
    ("pm_card_visa_debit", "visa", "5556", CardBehavior::Succeed),
    (
        "pm_card_mastercard",
        "mastercard",
        "4444",
        CardBehavior::Succeed,
    ),
    ("pm_card_amex", "amex", "8431", CardBehavior::Succeed),
    (
        "pm_card_chargeDeclined",
        "visa",
        "0002",
        CardBehavior::Decline,
    ),
    (
        "pm_card_chargeDeclinedInsufficientFunds",
        "visa",
        "9995",
        CardBehavior::InsufficientFunds,
    ),
    (
        "pm_card_chargeCustomerFail",
        "visa",
        "0341",
        CardBehavior::CustomerFail,
    ),
    (
        "pm_card_authenticationRequired",
        "visa",
        "3184",
        CardBehavior::AuthRequired,
    ),
    (
        "pm_card_threeDSecure2Required",
        "visa",
        "3220",
        CardBehavior::AuthRequired,
    ),
    (
        "pm_card_createDispute",
        "visa",
        "0259",
        CardBehavior::Dispute,
    ),
];

/// Whether `id` is one of Stripe's test payment method ids.
pub fn is_test_token(id: &str) -> bool {
    TEST_CARDS.iter().any(|c| c.0 == id)
}

/// The behaviour of a Stripe test payment method id, if it is one.
pub fn token_behavior(id: &str) -> Option<CardBehavior> {
    TEST_CARDS.iter().find(|c| c.0 == id).map(|c| c.3)
}

/// Turns a payment method reference into a stored `pm_…` id: a test id creates a
/// fresh payment method (as Stripe does), an existing id is checked. With `customer`,
/// the method is attached to it.
pub fn resolve(s: &mut Inner, id: &str, customer: Option<&str>) -> ApiResult<String> {
    let pm = if is_test_token(id) {
        create_from_token(s, id)?
    } else {
        s.get("payment_method", id, "payment_method")?;
        id.to_string()
    };
    if let Some(c) = customer {
        let attached = s.objects[&pm]["customer"].clone();
        if attached.is_null() {
            attach_to(s, &pm, c)?;
        } else if attached != c {
            return Err(ApiError::invalid(
                "payment_method",
                "The payment method you provided has already been attached to another customer.",
            ));
        }
    }
    Ok(pm)
}

fn create_from_token(s: &mut Inner, token: &str) -> ApiResult<String> {
    let Some(&(_, brand, last4, behavior)) = TEST_CARDS.iter().find(|c| c.0 == token) else {
        return Err(ApiError::no_such("payment_method", token, "payment_method"));
    };
    let id = s.id("pm");
    let now = s.now();
    // Test cards expire a few years ahead of "now", like Stripe's.
    let exp_year = 1970 + now / 31_556_952 + 3;
    let fingerprint = s.ids.tail(16);
    let pm = json!({
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {"city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null},
            "email": null, "name": null, "phone": null, "tax_id": null,
        },
        "card": {
            "brand": brand,
            "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "pass"},
            "country": "US",
            "display_brand": brand,
            "exp_month": 12,
            "exp_year": exp_year,
            "fingerprint": fingerprint,
            "funding": "credit",
            "generated_from": null,
            "last4": last4,
            "networks": {"available": [brand], "preferred": null},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": true},
            "wallet": null,
        },
        "created": now,
        "customer": null,
        "customer_account": null,
        "livemode": false,
        "metadata": {},
        "type": "card",
    });
    s.insert(pm);
    s.cards.insert(id.clone(), behavior);
    Ok(id)
}

/// Attaches a stored payment method to a customer, emitting `payment_method.attached`.
/// Cards that decline every charge fail here too, as Stripe validates them.
pub fn attach_to(s: &mut Inner, pm: &str, customer: &str) -> ApiResult<String> {
    let pm = if is_test_token(pm) {
        create_from_token(s, pm)?
    } else {
        pm.to_string()
    };
    let mut obj = s.get("payment_method", &pm, "payment_method")?;
    crate::resources::customers::require(s, customer, "customer")?;
    if s.cards.get(&pm) == Some(&CardBehavior::Decline) {
        return Err(ApiError::card(
            "card_declined",
            Some("generic_decline"),
            "Your card was declined.",
        )
        .with("payment_method", obj));
    }
    if obj["customer"] == customer {
        return Ok(pm);
    }
    if !obj["customer"].is_null() {
        return Err(ApiError::invalid(
            "payment_method",
            "The payment method you provided has already been attached to a customer.",
        ));
    }
    obj["customer"] = json!(customer);
    s.put(obj.clone());
    let now = s.now_for_customer(Some(customer));
    s.emit("payment_method.attached", &obj, None, now);
    Ok(pm)
}

/// `POST /v1/payment_methods/{id}/attach`.
pub fn attach(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let customer = crate::params::req_str(p, "customer")?.to_string();
    let pm = attach_to(s, id, &customer)?;
    s.get("payment_method", &pm, "id")
}

/// `POST /v1/payment_methods/{id}/detach`.
pub fn detach(s: &mut Inner, id: &str) -> ApiResult {
    let mut obj = s.get("payment_method", id, "id")?;
    let Some(customer) = obj["customer"].as_str().map(str::to_string) else {
        return Err(ApiError::state(
            "payment_method_unexpected_state",
            "The payment method you provided is not attached to a customer so detachment is impossible.",
        ));
    };
    let prev = json!({"customer": customer});
    obj["customer"] = Value::Null;
    s.put(obj.clone());
    let now = s.now_for_customer(Some(&customer));
    s.emit("payment_method.detached", &obj, Some(prev), now);
    Ok(obj)
}

/// `GET /v1/payment_methods/{id}`.
pub fn retrieve(s: &mut Inner, id: &str) -> ApiResult {
    s.get("payment_method", id, "id")
}

/// `GET /v1/payment_methods?customer=` and `GET /v1/customers/{id}/payment_methods`.
pub fn list(s: &Inner, customer: Option<&str>, p: &Value) -> ApiResult {
    let customer = customer
        .or_else(|| str_at(p, "customer"))
        .map(str::to_string);
    if let Some(c) = &customer {
        crate::resources::customers::require(s, c, "customer")?;
    }
    let url = match &customer {
        Some(c) => format!("/v1/customers/{c}/payment_methods"),
        None => "/v1/payment_methods".to_string(),
    };
    s.list("payment_method", &url, p, |pm| {
        customer
            .as_ref()
            .is_none_or(|c| pm["customer"] == c.as_str())
    })
}

/// The card summary Stripe copies onto charges (`payment_method_details.card`).
pub fn card_details(pm: &Value) -> Value {
    let c = &pm["card"];
    json!({
        "amount_authorized": null,
        "authorization_code": null,
        "brand": c["brand"],
        "checks": c["checks"],
        "country": c["country"],
        "exp_month": c["exp_month"],
        "exp_year": c["exp_year"],
        "extended_authorization": {"status": "disabled"},
        "fingerprint": c["fingerprint"],
        "funding": c["funding"],
        "incremental_authorization": {"status": "unavailable"},
        "installments": null,
        "last4": c["last4"],
        "mandate": null,
        "multicapture": {"status": "unavailable"},
        "network": c["brand"],
        "network_token": {"used": false},
        "network_transaction_id": null,
        "overcapture": {"maximum_amount_capturable": 0, "status": "unavailable"},
        "regulated_status": "unregulated",
        "three_d_secure": null,
        "transaction_link_id": null,
        "wallet": null,
    })
}
