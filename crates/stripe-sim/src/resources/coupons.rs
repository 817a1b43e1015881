//! `/v1/coupons` and `/v1/promotion_codes`, and their validation when redeemed.

use crate::error::{ApiError, ApiResult};
use crate::params::{self, f64_at, i64_at, str_at};
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Value};

/// `POST /v1/coupons`.
pub fn create_coupon(s: &mut Inner, p: &Value) -> ApiResult {
    let percent_off = f64_at(p, "percent_off")?;
    let amount_off = params::bounded_at(p, "amount_off", 1..=99_999_999)?;
    let currency = str_at(p, "currency").map(str::to_lowercase);
    match (percent_off, amount_off) {
        (Some(pct), None) if pct > 0.0 && pct <= 100.0 => {}
        (None, Some(a)) if a > 0 => {
            if currency.is_none() {
                return Err(ApiError::missing("currency"));
            }
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "percent_off",
                "Coupons take either percent_off or amount_off, not both.",
            ))
        }
        (None, None) => return Err(ApiError::missing("percent_off")),
        _ => return Err(ApiError::invalid("percent_off", "Invalid discount amount.")),
    }
    let duration = str_at(p, "duration").unwrap_or("once").to_string();
    if !matches!(duration.as_str(), "once" | "repeating" | "forever") {
        return Err(ApiError::invalid("duration", "Invalid duration."));
    }
    let months = params::bounded_at(p, "duration_in_months", 1..=1200)?;
    if duration == "repeating" && months.is_none() {
        return Err(ApiError::missing("duration_in_months"));
    }
    let id = match str_at(p, "id") {
        Some(id) if s.objects.contains_key(id) => {
            return Err(ApiError::state(
                "resource_already_exists",
                "Coupon already exists.",
            ))
        }
        Some(id) => id.to_string(),
        None => s.ids.tail(8),
    };
    let coupon = json!({
        "id": id,
        "object": "coupon",
        "amount_off": amount_off,
        "created": s.now(),
        "currency": currency,
        "duration": duration,
        "duration_in_months": months,
        "livemode": false,
        "max_redemptions": i64_at(p, "max_redemptions")?,
        "metadata": params::metadata(p, "metadata"),
        "name": str_at(p, "name"),
        "percent_off": percent_off,
        "redeem_by": i64_at(p, "redeem_by")?,
        "times_redeemed": 0,
        "valid": true,
    });
    let coupon = s.insert(coupon);
    s.emit("coupon.created", &coupon, None, s.now());
    Ok(coupon)
}

/// `GET /v1/coupons/{id}`: `valid` reflects expiry and redemptions at the time of the call.
pub fn retrieve_coupon(s: &Inner, id: &str) -> ApiResult {
    let mut c = s.get("coupon", id, "id")?;
    c["valid"] = json!(coupon_valid(s, &c, s.now()));
    Ok(c)
}

fn coupon_valid(_s: &Inner, c: &Value, now: i64) -> bool {
    c["deleted"] != true
        && c["redeem_by"].as_i64().is_none_or(|t| t > now)
        && c["max_redemptions"]
            .as_i64()
            .is_none_or(|m| c["times_redeemed"].as_i64().unwrap_or(0) < m)
}

/// `GET /v1/coupons`.
pub fn list_coupons(s: &Inner, p: &Value) -> ApiResult {
    s.list("coupon", "/v1/coupons", p, |_| true)
}

/// `DELETE /v1/coupons/{id}`.
pub fn delete_coupon(s: &mut Inner, id: &str) -> ApiResult {
    let c = s.get_live("coupon", id, "id")?;
    let mut gone = c.clone();
    gone["deleted"] = json!(true);
    s.put(gone);
    s.emit("coupon.deleted", &c, None, s.now());
    Ok(json!({"id": id, "object": "coupon", "deleted": true}))
}

/// `POST /v1/promotion_codes` (`promotion[coupon]`; API 2025-09-30 removed `coupon`).
pub fn create_promotion_code(s: &mut Inner, p: &Value) -> ApiResult {
    let coupon = str_at(p, "promotion.coupon")
        .ok_or_else(|| ApiError::missing("promotion[coupon]"))?
        .to_string();
    s.get_live("coupon", &coupon, "promotion[coupon]")?;
    let code = match str_at(p, "code") {
        Some(c) => c.to_string(),
        None => s.ids.tail(8).to_uppercase(),
    };
    let clash = s
        .by_kind
        .get("promotion_code")
        .into_iter()
        .flatten()
        .any(|id| {
            s.objects
                .get(id)
                .is_some_and(|pc| pc["code"] == code.as_str() && pc["active"] == true)
        });
    if clash {
        return Err(ApiError::invalid(
            "code",
            "An active promotion code with `code` already exists.",
        ));
    }
    if let Some(c) = str_at(p, "customer") {
        crate::resources::customers::require(s, c, "customer")?;
    }
    let id = s.id("promo");
    let pc = json!({
        "id": id,
        "object": "promotion_code",
        "active": params::bool_at(p, "active")?.unwrap_or(true),
        "code": code,
        "created": s.now(),
        "customer": str_at(p, "customer"),
        "customer_account": null,
        "expires_at": i64_at(p, "expires_at")?,
        "livemode": false,
        "max_redemptions": i64_at(p, "max_redemptions")?,
        "metadata": params::metadata(p, "metadata"),
        "promotion": {"coupon": coupon, "type": "coupon"},
        "restrictions": {
            "currency_options": {},
            "first_time_transaction": params::bool_at(p, "restrictions.first_time_transaction")?.unwrap_or(false),
            "minimum_amount": i64_at(p, "restrictions.minimum_amount")?,
            "minimum_amount_currency": str_at(p, "restrictions.minimum_amount_currency"),
        },
        "times_redeemed": 0,
    });
    let pc = s.insert(pc);
    s.emit("promotion_code.created", &pc, None, s.now());
    Ok(pc)
}

/// `POST /v1/promotion_codes/{id}` (`active`, `metadata`).
pub fn update_promotion_code(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("promotion_code", id, "id")?;
    let mut after = before.clone();
    if let Some(a) = params::bool_at(p, "active")? {
        after["active"] = json!(a);
    }
    params::apply_metadata(&mut after, p, "metadata");
    if after != before {
        s.put(after.clone());
        s.emit(
            "promotion_code.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            s.now(),
        );
    }
    Ok(after)
}

/// `GET /v1/promotion_codes` with `code`, `active`, `coupon`, `customer`.
pub fn list_promotion_codes(s: &Inner, p: &Value) -> ApiResult {
    let code = str_at(p, "code").map(str::to_string);
    let active = params::bool_at(p, "active")?;
    let coupon = str_at(p, "coupon").map(str::to_string);
    let customer = str_at(p, "customer").map(str::to_string);
    s.list("promotion_code", "/v1/promotion_codes", p, |o| {
        code.as_ref().is_none_or(|c| {
            o["code"]
                .as_str()
                .is_some_and(|x| x.eq_ignore_ascii_case(c))
        }) && active.is_none_or(|a| o["active"] == a)
            && coupon
                .as_ref()
                .is_none_or(|c| o["promotion"]["coupon"] == c.as_str())
            && customer
                .as_ref()
                .is_none_or(|c| o["customer"] == c.as_str())
    })
}

/// What a promotion code is being redeemed on, for its restrictions.
#[derive(Debug, Clone, Copy)]
pub struct Purchase<'a> {
    /// Amount before discounts, in the currency's minor unit.
    pub amount: i64,
    /// Lowercase ISO currency.
    pub currency: &'a str,
}

/// Validates a promotion code for `customer` at `now` (and its restrictions against
/// `purchase`); returns its coupon.
pub fn redeemable_promotion_code(
    s: &Inner,
    id: &str,
    customer: Option<&str>,
    now: i64,
    param: &str,
    purchase: Option<Purchase<'_>>,
) -> ApiResult<String> {
    let pc = s.get("promotion_code", id, param)?;
    let bad = |msg: &str| Err(ApiError::invalid(param, msg.to_string()));
    if pc["active"] != true {
        return bad("This promotion code is not active.");
    }
    if pc["expires_at"].as_i64().is_some_and(|t| t <= now) {
        return bad("This promotion code has expired.");
    }
    if pc["max_redemptions"]
        .as_i64()
        .is_some_and(|m| pc["times_redeemed"].as_i64().unwrap_or(0) >= m)
    {
        return bad("This promotion code has reached its maximum number of redemptions.");
    }
    if let (Some(only), Some(c)) = (pc["customer"].as_str(), customer) {
        if only != c {
            return bad("This promotion code cannot be redeemed by this customer.");
        }
    }
    let r = &pc["restrictions"];
    if let (Some(min), Some(buy)) = (r["minimum_amount"].as_i64(), purchase) {
        if r["minimum_amount_currency"]
            .as_str()
            .is_none_or(|c| c == buy.currency)
            && buy.amount < min
        {
            return bad("This promotion code requires a higher minimum order amount.");
        }
    }
    if r["first_time_transaction"] == true {
        let has_paid = customer.is_some_and(|c| {
            s.by_kind.get("charge").into_iter().flatten().any(|ch| {
                let ch = s.peek(ch);
                ch["customer"] == c && ch["status"] == "succeeded"
            })
        });
        if has_paid {
            return bad("This promotion code can only be used on a customer's first purchase.");
        }
    }
    let coupon = pc["promotion"]["coupon"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let c = s.get("coupon", &coupon, param)?;
    if !coupon_valid(s, &c, now) {
        return bad("This promotion code's coupon is no longer valid.");
    }
    Ok(coupon)
}

/// Reads `{prefix}[coupon]` / `{prefix}[promotion_code]` and validates them.
pub fn from_params(
    s: &Inner,
    p: &Value,
    prefix: &str,
    customer: &str,
    now: i64,
    purchase: Option<Purchase<'_>>,
) -> ApiResult<Option<(String, Option<String>)>> {
    if let Some(pc) = str_at(p, &format!("{prefix}.promotion_code")) {
        let param = format!("{}[promotion_code]", params::bracketed(prefix));
        let coupon = redeemable_promotion_code(s, pc, Some(customer), now, &param, purchase)?;
        return Ok(Some((coupon, Some(pc.to_string()))));
    }
    if let Some(c) = str_at(p, &format!("{prefix}.coupon")) {
        let param = format!("{}[coupon]", params::bracketed(prefix));
        let coupon = s.get_live("coupon", c, &param)?;
        if !coupon_valid(s, &coupon, now) {
            return Err(ApiError::invalid(&param, "This coupon is no longer valid."));
        }
        return Ok(Some((c.to_string(), None)));
    }
    Ok(None)
}
