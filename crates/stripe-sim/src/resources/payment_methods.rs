//! `/v1/payment_methods` and Stripe's test payment method ids (`pm_card_visa`, …).

use crate::clock::year_month;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, str_at};
use crate::state::{previous_attributes, CardBehavior, Inner};
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
        let attached = s.peek(&pm)["customer"].clone();
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
    // Test cards expire a few years ahead of "now", like Stripe's.
    let (year, _) = year_month(s.now());
    Ok(new_card(s, brand, last4, behavior, 12, year + 3))
}

fn new_card(
    s: &mut Inner,
    brand: &str,
    last4: &str,
    behavior: CardBehavior,
    exp_month: i64,
    exp_year: i64,
) -> String {
    let id = s.id("pm");
    let now = s.now();
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
            "exp_month": exp_month,
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
    id
}

/// Stripe's test card numbers and the test method each behaves like.
const TEST_NUMBERS: &[(&str, &str)] = &[
    ("4242424242424242", "pm_card_visa"),
    ("4000056655665556", "pm_card_visa_debit"),
    ("5555555555554444", "pm_card_mastercard"),
    ("378282246310005", "pm_card_amex"),
    ("4000000000000002", "pm_card_chargeDeclined"),
    (
        "4000000000009995",
        "pm_card_chargeDeclinedInsufficientFunds",
    ),
    ("4000000000000341", "pm_card_chargeCustomerFail"),
    ("4000002760003184", "pm_card_authenticationRequired"),
    ("4000002500003155", "pm_card_threeDSecure2Required"),
    ("4000000000000259", "pm_card_createDispute"),
];

fn luhn_ok(number: &str) -> bool {
    let digits: Vec<u32> = number.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 12 || digits.len() != number.len() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                *d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// `POST /v1/payment_methods` with `type=card` and either `card[token]=tok_visa`
/// (`tok_` + the name of a `pm_card_` test method) or a test card number with
/// `card[exp_month]`/`card[exp_year]` (what lets tests pick an expiry date).
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    if params::req_str(p, "type")? != "card" {
        return Err(ApiError::invalid(
            "type",
            "stripe-sim supports card payment methods only.",
        ));
    }
    let id = if let Some(tok) = str_at(p, "card.token") {
        let pm_name = format!("pm_card_{}", tok.strip_prefix("tok_").unwrap_or(tok));
        if !is_test_token(&pm_name) {
            return Err(ApiError::no_such("token", tok, "card[token]"));
        }
        create_from_token(s, &pm_name)?
    } else {
        let number: String = params::req_str(p, "card.number")?
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if !luhn_ok(&number) {
            return Err(
                ApiError::card("incorrect_number", None, "Your card number is incorrect.")
                    .with("param", json!("card[number]")),
            );
        }
        let month = params::i64_at(p, "card.exp_month")?
            .ok_or_else(|| ApiError::missing("card[exp_month]"))?;
        let year = params::i64_at(p, "card.exp_year")?
            .ok_or_else(|| ApiError::missing("card[exp_year]"))?;
        let year = if year < 100 { 2000 + year } else { year };
        if !(1..=12).contains(&month) {
            return Err(ApiError::card(
                "invalid_expiry_month",
                None,
                "Your card's expiration month is invalid.",
            ));
        }
        let (now_y, now_m) = year_month(s.now());
        if (year, month) < (now_y, i64::from(now_m)) {
            return Err(ApiError::card(
                "invalid_expiry_year",
                None,
                "Your card's expiration year is invalid.",
            ));
        }
        let like = TEST_NUMBERS
            .iter()
            .find(|(n, _)| *n == number)
            .map_or("pm_card_visa", |(_, t)| t);
        let (_, brand, _, behavior) = TEST_CARDS
            .iter()
            .find(|c| c.0 == like)
            .copied()
            .unwrap_or(TEST_CARDS[0]);
        let brand = match number.chars().next() {
            Some('5') | Some('2') => "mastercard",
            Some('3') => "amex",
            _ => brand,
        };
        let last4 = number[number.len() - 4..].to_string();
        new_card(s, brand, &last4, behavior, month, year)
    };
    let mut pm = s.get("payment_method", &id, "id")?;
    params::apply_metadata(&mut pm, p, "metadata");
    s.put(pm.clone());
    Ok(pm)
}

/// `POST /v1/payment_methods/{id}`: `card[exp_month]`, `card[exp_year]`,
/// `billing_details[name|email|phone]`, `metadata` → `payment_method.updated`.
pub fn update(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("payment_method", id, "id")?;
    let mut after = before.clone();
    if let Some(m) = params::i64_at(p, "card.exp_month")? {
        if !(1..=12).contains(&m) {
            return Err(ApiError::invalid(
                "card[exp_month]",
                "Your card's expiration month is invalid.",
            ));
        }
        after["card"]["exp_month"] = json!(m);
    }
    if let Some(y) = params::i64_at(p, "card.exp_year")? {
        after["card"]["exp_year"] = json!(if y < 100 { 2000 + y } else { y });
    }
    for k in ["name", "email", "phone"] {
        if let Some(v) = str_at(p, &format!("billing_details.{k}")) {
            after["billing_details"][k] = json!(v);
        }
    }
    params::apply_metadata(&mut after, p, "metadata");
    if after != before {
        s.put(after.clone());
        let at = s.now_for_customer(after["customer"].as_str());
        s.emit(
            "payment_method.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            at,
        );
    }
    Ok(after)
}

/// `POST /_sim/payment_methods/{id}/automatically_update`: what the card networks'
/// account updater does (new `exp_month`/`exp_year`, optionally `last4`);
/// Stripe has no API for it, so it is a control: `payment_method.automatically_updated`.
pub fn automatically_update(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("payment_method", id, "id")?;
    let mut after = before.clone();
    after["card"]["exp_month"] =
        json!(params::i64_at(p, "exp_month")?.ok_or_else(|| ApiError::missing("exp_month"))?);
    after["card"]["exp_year"] =
        json!(params::i64_at(p, "exp_year")?.ok_or_else(|| ApiError::missing("exp_year"))?);
    if let Some(l4) = str_at(p, "last4") {
        after["card"]["last4"] = json!(l4);
    }
    s.put(after.clone());
    let at = s.now_for_customer(after["customer"].as_str());
    s.emit(
        "payment_method.automatically_updated",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    Ok(after)
}

/// Whether a card has expired by unix time `t`.
pub fn is_expired(pm: &Value, t: i64) -> bool {
    let (y, m) = year_month(t);
    match (
        pm["card"]["exp_year"].as_i64(),
        pm["card"]["exp_month"].as_i64(),
    ) {
        (Some(ey), Some(em)) => (ey, em) < (y, i64::from(m)),
        _ => false,
    }
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
        "electronic_commerce_indicator": null,
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
