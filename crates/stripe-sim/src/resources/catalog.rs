//! `/v1/products` and `/v1/prices`.

use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Map, Value};

/// `POST /v1/products`.
pub fn create_product(s: &mut Inner, p: &Value) -> ApiResult {
    let name = params::req_str(p, "name")?.to_string();
    let id = match str_at(p, "id") {
        Some(id) if s.objects.contains_key(id) => {
            return Err(ApiError::state(
                "resource_already_exists",
                "Product already exists.",
            ))
        }
        Some(id) => id.to_string(),
        None => s.id("prod"),
    };
    let now = s.now();
    let prod = json!({
        "id": id,
        "object": "product",
        "active": params::bool_at(p, "active")?.unwrap_or(true),
        "created": now,
        "default_price": null,
        "description": str_at(p, "description"),
        "images": [],
        "livemode": false,
        "marketing_features": [],
        "metadata": params::metadata(p, "metadata"),
        "name": name,
        "package_dimensions": null,
        "shippable": null,
        "statement_descriptor": null,
        "tax_code": null,
        "tax_details": null,
        "type": "service",
        "unit_label": null,
        "updated": now,
        "url": null,
    });
    let prod = s.insert(prod);
    s.emit("product.created", &prod, None, now);
    Ok(prod)
}

/// `POST /v1/products/{id}`.
pub fn update_product(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get_live("product", id, "id")?;
    let mut after = before.clone();
    if let Some(n) = str_at(p, "name") {
        after["name"] = json!(n);
    }
    if let Some(d) = params::at(p, "description").and_then(Value::as_str) {
        after["description"] = if d.is_empty() { Value::Null } else { json!(d) };
    }
    if let Some(a) = params::bool_at(p, "active")? {
        after["active"] = json!(a);
    }
    if let Some(dp) = str_at(p, "default_price") {
        s.get("price", dp, "default_price")?;
        after["default_price"] = json!(dp);
    }
    params::apply_metadata(&mut after, p, "metadata");
    if after != before {
        after["updated"] = json!(s.now());
        s.put(after.clone());
        s.emit(
            "product.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            s.now(),
        );
    }
    Ok(after)
}

/// `GET /v1/products`.
pub fn list_products(s: &Inner, p: &Value) -> ApiResult {
    let active = params::bool_at(p, "active")?;
    s.list("product", "/v1/products", p, |o| {
        active.is_none_or(|a| o["active"] == a)
    })
}

/// `POST /v1/prices`.
pub fn create_price(s: &mut Inner, p: &Value) -> ApiResult {
    let currency = params::req_str(p, "currency")?.to_lowercase();
    let unit_amount = params::bounded_at(p, "unit_amount", 0..=99_999_999)?
        .ok_or_else(|| ApiError::missing("unit_amount"))?;
    let product = match (str_at(p, "product"), str_at(p, "product_data.name")) {
        (Some(prod), _) => {
            s.get_live("product", prod, "product")?;
            prod.to_string()
        }
        (None, Some(name)) => {
            let prod = create_product(s, &json!({"name": name}))?;
            prod["id"].as_str().unwrap_or_default().to_string()
        }
        (None, None) => return Err(ApiError::missing("product")),
    };
    let lookup_key = str_at(p, "lookup_key").map(str::to_string);
    if let Some(key) = &lookup_key {
        let clash = find_by_lookup_key(s, key);
        if let Some(old) = clash {
            if params::bool_at(p, "transfer_lookup_key")? == Some(true) {
                let mut old = s.get("price", &old, "lookup_key")?;
                old["lookup_key"] = Value::Null;
                s.put(old);
            } else {
                return Err(ApiError::invalid(
                    "lookup_key",
                    format!("A price (`{old}`) already uses that lookup key."),
                ));
            }
        }
    }
    let recurring =
        match params::at(p, "recurring") {
            Some(r) if r.is_object() => {
                let interval = params::req_str(p, "recurring.interval")?;
                if !matches!(interval, "day" | "week" | "month" | "year") {
                    return Err(ApiError::invalid_enum(
                        "recurring[interval]",
                        &["day", "month", "week", "year"],
                    ));
                }
                let usage_type = str_at(p, "recurring.usage_type").unwrap_or("licensed");
                if !matches!(usage_type, "licensed" | "metered") {
                    return Err(ApiError::invalid_enum(
                        "recurring[usage_type]",
                        &["licensed", "metered"],
                    ));
                }
                let meter = str_at(p, "recurring.meter").map(str::to_string);
                match (usage_type, &meter) {
                    ("metered", None) => {
                        return Err(ApiError::invalid(
                            "recurring[meter]",
                            "A meter is required for prices with `recurring[usage_type]=metered`.",
                        ))
                    }
                    ("licensed", Some(_)) => return Err(ApiError::invalid(
                        "recurring[meter]",
                        "A meter can only be set on prices with `recurring[usage_type]=metered`.",
                    )),
                    (_, Some(m)) => {
                        s.get("billing.meter", m, "recurring[meter]")?;
                    }
                    _ => {}
                }
                json!({
                    "interval": interval,
                    "interval_count": interval_count(p, interval)?,
                    "meter": meter,
                    "trial_period_days": i64_at(p, "recurring.trial_period_days")?,
                    "usage_type": usage_type,
                })
            }
            _ => Value::Null,
        };
    let transform_quantity = match params::at(p, "transform_quantity") {
        Some(t) if t.is_object() => {
            let divide_by =
                params::bounded_at(p, "transform_quantity.divide_by", 1..=1_000_000_000)?
                    .ok_or_else(|| ApiError::missing("transform_quantity[divide_by]"))?;
            let round = params::req_str(p, "transform_quantity.round")?;
            if !matches!(round, "up" | "down") {
                return Err(ApiError::invalid_enum(
                    "transform_quantity[round]",
                    &["down", "up"],
                ));
            }
            json!({"divide_by": divide_by, "round": round})
        }
        _ => Value::Null,
    };
    let mut options = Map::new();
    if let Some(Value::Object(opts)) = params::at(p, "currency_options") {
        for cur in opts.keys() {
            let path = format!("currency_options.{cur}.unit_amount");
            let amount = params::bounded_at(p, &path, 0..=99_999_999)?
                .ok_or_else(|| ApiError::missing(&params::bracketed(&path)))?;
            options.insert(cur.to_lowercase(), currency_option(amount));
        }
    }
    options.insert(currency.clone(), currency_option(unit_amount));
    let id = s.id("price");
    let now = s.now();
    let price = json!({
        "id": id,
        "object": "price",
        "active": params::bool_at(p, "active")?.unwrap_or(true),
        "billing_scheme": "per_unit",
        "created": now,
        "currency": currency,
        "currency_options": options,
        "custom_unit_amount": null,
        "livemode": false,
        "lookup_key": lookup_key,
        "metadata": params::metadata(p, "metadata"),
        "nickname": str_at(p, "nickname"),
        "product": product,
        "recurring": recurring,
        "tax_behavior": "unspecified",
        "tiers_mode": null,
        "transform_quantity": transform_quantity,
        "type": if recurring.is_null() { "one_time" } else { "recurring" },
        "unit_amount": unit_amount,
        "unit_amount_decimal": unit_amount.to_string(),
    });
    let price = s.insert(price);
    s.emit("price.created", &price, None, now);
    let prod = s.get("product", &product, "product")?;
    if prod["default_price"].is_null() {
        let mut prod2 = prod.clone();
        prod2["default_price"] = json!(id);
        s.put(prod2.clone());
        s.emit(
            "product.updated",
            &prod2,
            Some(previous_attributes(&prod, &prod2)),
            now,
        );
    }
    Ok(price)
}

/// Stripe allows intervals up to three years.
fn interval_count(p: &Value, interval: &str) -> ApiResult<i64> {
    let max = match interval {
        "day" => 1095,
        "week" => 156,
        "month" => 36,
        _ => 3,
    };
    Ok(params::bounded_at(p, "recurring.interval_count", 1..=max)?.unwrap_or(1))
}

fn currency_option(amount: i64) -> Value {
    json!({
        "custom_unit_amount": null,
        "tax_behavior": "unspecified",
        "unit_amount": amount,
        "unit_amount_decimal": amount.to_string(),
    })
}

fn find_by_lookup_key(s: &Inner, key: &str) -> Option<String> {
    s.by_kind.get("price")?.iter().find_map(|id| {
        let p = s.objects.get(id)?;
        (p["lookup_key"] == key).then(|| id.clone())
    })
}

/// `POST /v1/prices/{id}`: `active`, `lookup_key`, `nickname`, `metadata`.
pub fn update_price(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("price", id, "id")?;
    let mut after = before.clone();
    if let Some(a) = params::bool_at(p, "active")? {
        after["active"] = json!(a);
    }
    if let Some(n) = str_at(p, "nickname") {
        after["nickname"] = json!(n);
    }
    if let Some(k) = str_at(p, "lookup_key") {
        if let Some(old) = find_by_lookup_key(s, k).filter(|o| o != id) {
            if params::bool_at(p, "transfer_lookup_key")? != Some(true) {
                return Err(ApiError::invalid(
                    "lookup_key",
                    format!("A price (`{old}`) already uses that lookup key."),
                ));
            }
            let mut o = s.get("price", &old, "lookup_key")?;
            o["lookup_key"] = Value::Null;
            s.put(o);
        }
        after["lookup_key"] = json!(k);
    }
    params::apply_metadata(&mut after, p, "metadata");
    if after != before {
        s.put(after.clone());
        s.emit(
            "price.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            s.now(),
        );
    }
    Ok(after)
}

/// `GET /v1/prices` with `active`, `product`, `currency`, `type`, `lookup_keys[]`.
pub fn list_prices(s: &Inner, p: &Value) -> ApiResult {
    let active = params::bool_at(p, "active")?;
    let product = str_at(p, "product").map(str::to_string);
    let currency = str_at(p, "currency").map(str::to_lowercase);
    let kind = str_at(p, "type").map(str::to_string);
    let keys: Option<Vec<String>> = params::at(p, "lookup_keys").map(|v| match v {
        Value::Array(a) => a
            .iter()
            .filter_map(|k| k.as_str().map(str::to_string))
            .collect(),
        Value::String(k) => vec![k.clone()],
        _ => Vec::new(),
    });
    s.list("price", "/v1/prices", p, |o| {
        active.is_none_or(|a| o["active"] == a)
            && product.as_ref().is_none_or(|x| o["product"] == x.as_str())
            && currency
                .as_ref()
                .is_none_or(|x| o["currency"] == x.as_str())
            && kind.as_ref().is_none_or(|x| o["type"] == x.as_str())
            && keys
                .as_ref()
                .is_none_or(|ks| ks.iter().any(|k| o["lookup_key"] == k.as_str()))
    })
}

/// What one unit of `price` adds to an invoice billed in advance: its unit
/// amount in `currency`, or 0 for a metered price (billed in arrears from
/// its meter, [`crate::resources::meters`]).
pub fn licensed_unit_amount(price: &Value, currency: &str) -> ApiResult<i64> {
    let amount = unit_amount_in(price, currency)?;
    Ok(if crate::resources::meters::is_metered(price) {
        0
    } else {
        amount
    })
}

/// The unit amount of `price` in `currency` (its own or one of its `currency_options`).
pub fn unit_amount_in(price: &Value, currency: &str) -> ApiResult<i64> {
    price["currency_options"][currency]["unit_amount"]
        .as_i64()
        .or_else(|| {
            (price["currency"] == currency)
                .then(|| price["unit_amount"].as_i64())
                .flatten()
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "currency",
                format!(
                    "The price {} has no amount in {currency}.",
                    price["id"].as_str().unwrap_or_default()
                ),
            )
        })
}
