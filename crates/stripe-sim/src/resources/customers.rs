//! `/v1/customers`.

use crate::error::{ApiError, ApiResult};
use crate::params::{self, str_at};
use crate::resources::payment_methods;
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Value};

/// `POST /v1/customers`.
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    create_with_currency(s, p, None)
}

/// Creates a customer already tied to `currency`, as Checkout does for the
/// customers it creates.
pub fn create_with_currency(s: &mut Inner, p: &Value, currency: Option<&str>) -> ApiResult {
    let email = params::email_at(p, "email")?;
    let clock = str_at(p, "test_clock").map(str::to_string);
    if let Some(clk) = &clock {
        s.get_live("test_helpers.test_clock", clk, "test_clock")?;
        let on_clock = s
            .by_kind
            .get("customer")
            .into_iter()
            .flatten()
            .filter(|c| s.peek(c)["test_clock"] == clk.as_str() && s.peek(c)["deleted"] != true)
            .count();
        // Stripe's limit: three customers per test clock.
        if on_clock >= 3 {
            return Err(ApiError::invalid(
                "test_clock",
                "Test clocks can have at most 3 customers. Create another test clock.",
            ));
        }
    }
    let id = s.id("cus");
    let now = match &clock {
        Some(clk) => s.peek(clk)["frozen_time"]
            .as_i64()
            .unwrap_or_else(|| s.now()),
        None => s.now(),
    };
    let prefix = s.ids.tail(8).to_uppercase();
    let cus = json!({
        "id": id,
        "object": "customer",
        "address": address_from(p),
        "balance": 0,
        "created": now,
        "currency": currency,
        "customer_account": null,
        "default_source": null,
        "delinquent": false,
        "description": str_at(p, "description"),
        "discount": null,
        "email": email,
        "invoice_prefix": prefix,
        "invoice_settings": {
            "custom_fields": null,
            "default_payment_method": null,
            "footer": null,
            "rendering_options": null,
        },
        "livemode": false,
        "metadata": params::metadata(p, "metadata"),
        "name": str_at(p, "name"),
        "next_invoice_sequence": 1,
        "phone": str_at(p, "phone"),
        "preferred_locales": [],
        "shipping": null,
        "tax_exempt": "none",
        "test_clock": clock,
    });
    let cus = s.insert(cus);
    s.emit("customer.created", &cus, None, now);
    if let Some(pm) = str_at(p, "payment_method") {
        payment_methods::attach_to(s, pm, &id)?;
    }
    if let Some(pm) = str_at(p, "invoice_settings.default_payment_method") {
        set_default_payment_method(s, &id, pm)?;
    }
    s.get("customer", &id, "id")
}

/// A Stripe address object from `address[line1|line2|city|state|postal_code|country]`.
pub fn address_from(p: &Value) -> Value {
    match params::at(p, "address") {
        Some(Value::Object(a)) => {
            let f = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .filter(|v| !v.is_empty())
                    .map(str::to_string)
            };
            json!({
                "city": f("city"), "country": f("country"), "line1": f("line1"),
                "line2": f("line2"), "postal_code": f("postal_code"), "state": f("state"),
            })
        }
        _ => Value::Null,
    }
}

/// `GET /v1/customers/{id}`: deleted customers retrieve as `{id, object, deleted}`.
pub fn retrieve(s: &Inner, id: &str) -> ApiResult {
    s.get("customer", id, "id")
}

/// `POST /v1/customers/{id}`.
pub fn update(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get_live("customer", id, "id")?;
    params::email_at(p, "email")?;
    let mut after = before.clone();
    for key in ["email", "name", "description", "phone"] {
        if let Some(v) = params::at(p, key).and_then(Value::as_str) {
            after[key] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    match params::at(p, "address") {
        Some(Value::String(v)) if v.is_empty() => after["address"] = Value::Null,
        Some(Value::Object(_)) => after["address"] = address_from(p),
        _ => {}
    }
    params::apply_metadata(&mut after, p, "metadata");
    if let Some(pm) = str_at(p, "invoice_settings.default_payment_method") {
        let pm = payment_methods::resolve(s, pm, Some(id))?;
        after["invoice_settings"]["default_payment_method"] = json!(pm);
    }
    if before == after {
        return Ok(after);
    }
    s.put(after.clone());
    let now = s.now_for_customer(Some(id));
    s.emit(
        "customer.updated",
        &after,
        Some(previous_attributes(&before, &after)),
        now,
    );
    Ok(after)
}

/// Sets `invoice_settings.default_payment_method`, emitting `customer.updated`.
pub fn set_default_payment_method(s: &mut Inner, customer: &str, pm: &str) -> ApiResult {
    update(
        s,
        customer,
        &json!({"invoice_settings": {"default_payment_method": pm}}),
    )
}

/// `DELETE /v1/customers/{id}`: cancels the customer's subscriptions first, as Stripe does.
pub fn delete(s: &mut Inner, id: &str) -> ApiResult {
    let cus = s.get_live("customer", id, "id")?;
    let subs: Vec<String> = s
        .by_kind
        .get("subscription")
        .map(|ids| {
            ids.iter()
                .filter(|sid| {
                    s.objects.get(*sid).is_some_and(|sub| {
                        sub["customer"] == id
                            && !matches!(
                                sub["status"].as_str(),
                                Some("canceled" | "incomplete_expired")
                            )
                    })
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    for sub in subs {
        crate::billing::cancel_now(s, &sub, "cancellation_requested")?;
    }
    let now = s.now_for_customer(Some(id));
    let gone = json!({"id": id, "object": "customer", "deleted": true});
    s.put(gone.clone());
    s.emit("customer.deleted", &cus, None, now);
    Ok(gone)
}

/// `GET /v1/customers` with `email` and `test_clock` filters.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    let email = str_at(p, "email").map(str::to_string);
    let clock = str_at(p, "test_clock").map(str::to_string);
    s.list("customer", "/v1/customers", p, |c| {
        email.as_ref().is_none_or(|e| c["email"] == e.as_str())
            && clock.as_ref().is_none_or(|k| c["test_clock"] == k.as_str())
    })
}

/// A live customer or a 400 naming `param` (Stripe's answer for a bad reference).
pub fn require(s: &Inner, id: &str, param: &str) -> ApiResult {
    s.get_live("customer", id, param)
        .map_err(|_| ApiError::no_such("customer", id, param))
}
