//! `/v1/checkout/sessions` (mode `subscription`) and the browser's side of it:
//! `POST /_sim/checkout/sessions/{id}/complete`.

use crate::billing::{self, NewSubscription, PayOutcome};
use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::resources::{account, coupons, customers, payment_methods};
use crate::state::{previous_attributes, CardBehavior, CheckoutPlan, Inner};
use serde_json::{json, Value};

/// `POST /v1/checkout/sessions`.
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    let mode = params::req_str(p, "mode")?.to_string();
    let payment = match mode.as_str() {
        "subscription" => false,
        "payment" => true,
        _ => {
            return Err(ApiError::invalid(
                "mode",
                "stripe-sim supports Checkout in mode=subscription and mode=payment only.",
            ))
        }
    };
    if payment && params::at(p, "subscription_data").is_some() {
        return Err(ApiError::invalid(
            "subscription_data",
            "You can not pass `subscription_data` in `payment` mode.",
        ));
    }
    if !payment && params::at(p, "payment_intent_data").is_some() {
        return Err(ApiError::invalid(
            "payment_intent_data",
            "You can not pass `payment_intent_data` in `subscription` mode.",
        ));
    }
    let ui_mode = str_at(p, "ui_mode").map(str::to_string);
    let success_url = str_at(p, "success_url").map(str::to_string);
    if success_url.is_none() && ui_mode.as_deref() != Some("embedded") {
        return Err(ApiError::missing("success_url"));
    }
    params::email_at(p, "customer_email")?;
    let customer = str_at(p, "customer").map(str::to_string);
    if let Some(c) = &customer {
        customers::require(s, c, "customer")?;
        if str_at(p, "customer_email").is_some() {
            return Err(ApiError::invalid(
                "customer_email",
                "You may only specify one of these parameters: customer, customer_email.",
            ));
        }
    }
    if params::at(p, "customer_update").is_some() && customer.is_none() {
        return Err(ApiError::invalid(
            "customer_update",
            "`customer_update` can only be used with `customer`.",
        ));
    }
    let now = s.now_for_customer(customer.as_deref());
    let Some(Value::Array(items)) = params::at(p, "line_items") else {
        return Err(ApiError::missing("line_items"));
    };
    let mut line_items = Vec::new();
    let mut currency = str_at(p, "currency").map(str::to_lowercase);
    for (i, it) in items.iter().enumerate() {
        let pid = str_at(it, "price")
            .ok_or_else(|| ApiError::missing(&format!("line_items[{i}][price]")))?;
        let price = s.get("price", pid, &format!("line_items[{i}][price]"))?;
        if payment && price["type"] != "one_time" {
            return Err(ApiError::invalid(
                &format!("line_items[{i}][price]"),
                "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.",
            ));
        }
        if !payment && price["type"] != "recurring" {
            return Err(ApiError::invalid(
                &format!("line_items[{i}][price]"),
                "In subscription mode, you must provide at least one recurring price.",
            ));
        }
        if price["active"] != true {
            return Err(ApiError::invalid(
                &format!("line_items[{i}][price]"),
                format!(
                    "The price `{pid}` is not available to be purchased because it is not active."
                ),
            ));
        }
        let metered = crate::resources::meters::is_metered(&price);
        if metered && params::at(it, "quantity").is_some() {
            return Err(ApiError::invalid(
                &format!("line_items[{i}][quantity]"),
                format!("Quantity should not be specified where usage_type is `metered`. Remove quantity from `line_items[{i}]`."),
            ));
        }
        let qty = params::bounded_at(it, "quantity", 1..=1_000_000_000)?.unwrap_or(1);
        let cur = currency
            .get_or_insert_with(|| price["currency"].as_str().unwrap_or("usd").to_string())
            .clone();
        let unit = billing::licensed_unit_amount(&price, &cur)?;
        line_items.push((price, qty, unit));
    }
    let currency = currency.unwrap_or_else(|| "usd".into());
    if let Some(c) = &customer {
        billing::check_customer_currency(s, c, &currency)?;
    }
    let subtotal: i64 = line_items.iter().map(|(_, q, u)| q * u).sum();
    let trial_days = params::bounded_at(p, "subscription_data.trial_period_days", 1..=730)?;
    let trial_end = i64_at(p, "subscription_data.trial_end")?;
    if trial_end.is_some_and(|t| t < now + 2 * 86_400) {
        return Err(ApiError::invalid(
            "subscription_data[trial_end]",
            "subscription_data[trial_end] must be at least 48 hours in the future.",
        ));
    }
    let allow_promo = params::bool_at(p, "allow_promotion_codes")?;
    let discounts = match params::at(p, "discounts") {
        Some(Value::Array(d)) if !d.is_empty() => {
            if allow_promo == Some(true) {
                return Err(ApiError::invalid("discounts", "You may only specify one of these parameters: allow_promotion_codes, discounts."));
            }
            let cus_for_check = customer.clone().unwrap_or_default();
            let purchase = coupons::Purchase {
                amount: subtotal,
                currency: &currency,
            };
            let (coupon, promo) =
                coupons::from_params(s, p, "discounts.0", &cus_for_check, now, Some(purchase))?
                    .ok_or_else(|| ApiError::missing("discounts[0][coupon]"))?;
            json!([{"coupon": coupon, "promotion_code": promo}])
        }
        _ => Value::Null,
    };
    let expires_at = i64_at(p, "expires_at")?.unwrap_or(now + 24 * 3600);
    if expires_at < now + 30 * 60 || expires_at > now + 24 * 3600 {
        return Err(ApiError::invalid("expires_at", "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation."));
    }
    let id = s.id("cs_test");
    let url = format!("{}/_sim/checkout/{id}", s.cfg.public_url);
    let automatic_tax = params::bool_at(p, "automatic_tax.enabled")?.unwrap_or(false);
    let save_address = matches!(str_at(p, "customer_update.address"), Some("auto"))
        || matches!(str_at(p, "customer_update.shipping"), Some("auto"));
    let save_name = str_at(p, "customer_update.name") == Some("auto");
    let collect_tax_id = params::bool_at(p, "tax_id_collection.enabled")?.unwrap_or(false);
    if let Some(c) = &customer {
        if collect_tax_id && !save_name {
            return Err(ApiError::invalid(
                "customer_update[name]",
                "customer_update[name] must be `auto` when collecting tax IDs for an existing customer.",
            ));
        }
        if automatic_tax && !save_address && s.peek(c)["address"]["country"].is_null() {
            return Err(ApiError::invalid(
                "automatic_tax[enabled]",
                "Automatic tax calculation in Checkout requires a valid address on the Customer. Add a valid address to the Customer or set either customer_update[address] to 'auto' or customer_update[shipping] to 'auto' to save the address entered in Checkout.",
            ));
        }
    }
    if automatic_tax && !account::tax_active(s) {
        return Err(ApiError::invalid(
            "automatic_tax[enabled]",
            "Stripe Tax has not been activated on your account. Please visit https://dashboard.stripe.com/settings/tax/activate to get started.",
        ));
    }
    let session = json!({
        "id": id,
        "object": "checkout.session",
        "adaptive_pricing": null,
        "after_expiration": null,
        "allow_promotion_codes": allow_promo,
        "allowed_payment_method_types": null,
        "amount_subtotal": subtotal,
        "amount_total": subtotal,
        "automatic_tax": {"enabled": automatic_tax, "liability": if automatic_tax { json!({"type": "self"}) } else { Value::Null }, "provider": null, "status": if automatic_tax { json!("requires_location_inputs") } else { Value::Null }},
        "billing_address_collection": str_at(p, "billing_address_collection"),
        "cancel_url": str_at(p, "cancel_url"),
        "client_reference_id": str_at(p, "client_reference_id"),
        "client_secret": null,
        "collected_information": null,
        "consent": null,
        "consent_collection": null,
        "created": now,
        "currency": currency,
        "currency_conversion": null,
        "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null},
        "customer": customer,
        "customer_account": null,
        "customer_creation": match (&customer, payment) {
            (Some(_), _) => Value::Null,
            (None, true) => json!("if_required"),
            (None, false) => json!("always"),
        },
        "customer_details": str_at(p, "customer_email").map(|e| json!({"address": null, "business_name": null, "email": e, "individual_name": null, "name": null, "phone": null, "tax_exempt": "none", "tax_ids": null})),
        "customer_email": str_at(p, "customer_email"),
        "discounts": discounts,
        "expires_at": expires_at,
        "integration_identifier": null,
        "invoice": null,
        "invoice_creation": if payment {
            json!({"enabled": false, "invoice_data": {"account_tax_ids": null, "custom_fields": null, "description": null, "footer": null, "issuer": null, "metadata": {}, "rendering_options": null}})
        } else {
            Value::Null
        },
        "livemode": false,
        "locale": str_at(p, "locale"),
        "managed_payments": {"enabled": false},
        "metadata": params::metadata(p, "metadata"),
        "mode": mode,
        "origin_context": null,
        "payment_intent": null,
        "payment_link": null,
        "payment_method_collection": if payment { json!(str_at(p, "payment_method_collection").unwrap_or("if_required")) } else { json!(str_at(p, "payment_method_collection").unwrap_or("always")) },
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_status": "unpaid",
        "permissions": null,
        "phone_number_collection": {"enabled": false},
        "recovered_from": null,
        "saved_payment_method_options": {"allow_redisplay_filters": ["always"], "payment_method_remove": "disabled", "payment_method_save": null},
        "setup_intent": null,
        "shipping_address_collection": null,
        "shipping_cost": null,
        "shipping_options": [],
        "status": "open",
        "submit_type": null,
        "subscription": null,
        "success_url": success_url,
        "tax_id_collection": {"enabled": params::bool_at(p, "tax_id_collection.enabled")?.unwrap_or(false), "required": "never"},
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": ui_mode.unwrap_or_else(|| "hosted".into()),
        "url": url,
        "wallet_options": null,
    });
    let session = s.insert(session);
    // Private: what the subscription will be made of.
    let items: Vec<Value> = line_items
        .iter()
        .map(|(price, q, u)| json!({"price": price["id"], "quantity": q, "unit": u}))
        .collect();
    s.checkout_items.insert(
        id.clone(),
        CheckoutPlan {
            items,
            trial_days,
            trial_end,
            metadata: params::metadata(p, "subscription_data.metadata"),
            missing_payment_method: str_at(
                p,
                "subscription_data.trial_settings.end_behavior.missing_payment_method",
            )
            .map(str::to_string),
            collect_address: automatic_tax
                || str_at(p, "billing_address_collection") == Some("required"),
            save_address,
            save_name,
            collect_tax_id,
            payment_metadata: params::metadata(p, "payment_intent_data.metadata"),
        },
    );
    Ok(session)
}

/// Marks a session past its `expires_at` as expired (`checkout.session.expired`).
fn refresh_expiry(s: &mut Inner, id: &str) -> ApiResult<Value> {
    let sess = s.get("checkout.session", id, "id")?;
    let now = s.now_for_customer(sess["customer"].as_str());
    if sess["status"] == "open" && sess["expires_at"].as_i64().is_some_and(|t| t <= now) {
        return expire_at(s, id, now);
    }
    Ok(sess)
}

fn expire_at(s: &mut Inner, id: &str, at: i64) -> ApiResult<Value> {
    let before = s.get("checkout.session", id, "id")?;
    let mut after = before.clone();
    after["status"] = json!("expired");
    after["url"] = Value::Null;
    s.put(after.clone());
    s.emit(
        "checkout.session.expired",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    Ok(after)
}

/// `GET /v1/checkout/sessions/{id}`.
pub fn retrieve(s: &mut Inner, id: &str) -> ApiResult {
    refresh_expiry(s, id)
}

/// `GET /v1/checkout/sessions` with `customer`, `status`, `subscription`.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    let customer = str_at(p, "customer").map(str::to_string);
    let status = str_at(p, "status").map(str::to_string);
    let sub = str_at(p, "subscription").map(str::to_string);
    s.list("checkout.session", "/v1/checkout/sessions", p, |o| {
        customer
            .as_ref()
            .is_none_or(|c| o["customer"] == c.as_str())
            && status.as_ref().is_none_or(|c| o["status"] == c.as_str())
            && sub.as_ref().is_none_or(|c| o["subscription"] == c.as_str())
    })
}

/// `GET /v1/checkout/sessions/{id}/line_items`.
pub fn line_items(s: &Inner, id: &str) -> ApiResult {
    let sess = s.get("checkout.session", id, "id")?;
    let items = s.checkout_items.get(id).cloned().unwrap_or_default().items;
    let currency = sess["currency"].clone();
    let data: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let price = s
                .objects
                .get(it["price"].as_str().unwrap_or_default())
                .cloned()
                .unwrap_or(Value::Null);
            let total = it["unit"].as_i64().unwrap_or(0) * it["quantity"].as_i64().unwrap_or(1);
            json!({
                "id": format!("li_{}_{i}", &id[8..22.min(id.len())]),
                "object": "item",
                "adjustable_quantity": null,
                "amount_discount": 0,
                "amount_subtotal": total,
                "amount_tax": 0,
                "amount_total": total,
                "currency": currency,
                "description": price["nickname"],
                "metadata": {},
                "price": price,
                "quantity": it["quantity"],
            })
        })
        .collect();
    Ok(
        json!({"object": "list", "data": data, "has_more": false, "url": format!("/v1/checkout/sessions/{id}/line_items")}),
    )
}

/// `POST /v1/checkout/sessions/{id}/expire`.
pub fn expire(s: &mut Inner, id: &str) -> ApiResult {
    let sess = refresh_expiry(s, id)?;
    if sess["status"] != "open" {
        return Err(ApiError::state(
            "checkout_session_not_open",
            format!("Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".", sess["status"].as_str().unwrap_or_default()),
        ));
    }
    let at = s.now_for_customer(sess["customer"].as_str());
    expire_at(s, id, at)
}

/// `POST /_sim/checkout/sessions/{id}/complete`: what a customer does on the Checkout
/// page. `payment_method` (default `pm_card_visa`), optional `email`, `promotion_code`
/// (a code, when the session allows them). A declined card answers 402 and leaves the
/// session open, as the page would; a card needing 3-D Secure answers the
/// `requires_action` payment intent, to be settled with
/// `POST /_sim/payment_intents/{id}/authenticate`.
pub fn complete(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let sess = refresh_expiry(s, id)?;
    if sess["status"] != "open" {
        return Err(ApiError::state(
            "checkout_session_not_open",
            format!(
                "This Checkout Session is {} and can no longer be completed.",
                sess["status"].as_str().unwrap_or_default()
            ),
        ));
    }
    if sess["payment_status"] == "unpaid" && s.pending_sessions.values().any(|v| v == id) {
        return Err(ApiError::state(
            "checkout_session_requires_action",
            "This Checkout Session is waiting for 3-D Secure authentication.",
        ));
    }
    let pm_ref = str_at(p, "payment_method")
        .unwrap_or("pm_card_visa")
        .to_string();
    let plan = s.checkout_items.get(id).cloned().unwrap_or_default();
    let trial = plan.trial_end_from(0).is_some();
    if pm_ref == "none" && !(trial && sess["payment_method_collection"] == "if_required") {
        return Err(ApiError::missing("payment_method"));
    }
    // The page refuses a declining card before anything is created.
    let behavior = match payment_methods::token_behavior(&pm_ref) {
        Some(b) => Some(b),
        None if pm_ref == "none" => None,
        None => {
            s.get("payment_method", &pm_ref, "payment_method")?;
            s.cards.get(&pm_ref).copied()
        }
    };
    if !trial {
        if let Some(
            b @ (CardBehavior::Decline
            | CardBehavior::CustomerFail
            | CardBehavior::InsufficientFunds),
        ) = behavior
        {
            return Err(billing::decline_error(Some(b)));
        }
    } else if behavior == Some(CardBehavior::Decline) {
        return Err(billing::decline_error(Some(CardBehavior::Decline)));
    }
    let customer = match sess["customer"].as_str() {
        Some(c) => c.to_string(),
        None => {
            let email = str_at(p, "email")
                .or_else(|| sess["customer_email"].as_str())
                .unwrap_or("customer@example.com")
                .to_string();
            let mut fields = json!({"email": email, "name": str_at(p, "name")});
            if plan.collect_address {
                fields["address"] = entered_address(p);
            }
            let c = customers::create_with_currency(s, &fields, sess["currency"].as_str())?;
            c["id"].as_str().unwrap_or_default().to_string()
        }
    };
    if sess["customer"].is_string() {
        // An existing customer's details change only where customer_update allows it.
        let mut fields = json!({});
        if plan.collect_address && plan.save_address {
            fields["address"] = entered_address(p);
        }
        if plan.save_name {
            if let Some(n) = str_at(p, "name") {
                fields["name"] = json!(n);
            }
        }
        if fields.as_object().is_some_and(|m| !m.is_empty()) {
            customers::update(s, &customer, &fields)?;
        }
    }
    let now = s.now_for_customer(Some(&customer));
    let pm = match pm_ref.as_str() {
        "none" => None,
        r => Some(payment_methods::resolve(s, r, Some(&customer))?),
    };
    let mut coupon = sess["discounts"][0]["coupon"].as_str().map(|c| {
        (
            c.to_string(),
            sess["discounts"][0]["promotion_code"]
                .as_str()
                .map(str::to_string),
        )
    });
    if let Some(code) = str_at(p, "promotion_code") {
        if sess["allow_promotion_codes"] != true {
            return Err(ApiError::invalid(
                "promotion_code",
                "This Checkout Session does not accept promotion codes.",
            ));
        }
        let pc = s
            .by_kind
            .get("promotion_code")
            .into_iter()
            .flatten()
            .find(|pid| {
                s.objects.get(*pid).is_some_and(|o| {
                    o["code"]
                        .as_str()
                        .is_some_and(|c| c.eq_ignore_ascii_case(code))
                        && o["active"] == true
                })
            })
            .cloned()
            .ok_or_else(|| ApiError::invalid("promotion_code", "This code is invalid."))?;
        let purchase = coupons::Purchase {
            amount: sess["amount_subtotal"].as_i64().unwrap_or(0),
            currency: sess["currency"].as_str().unwrap_or_default(),
        };
        let c = coupons::redeemable_promotion_code(
            s,
            &pc,
            Some(&customer),
            now,
            "promotion_code",
            Some(purchase),
        )?;
        coupon = Some((c, Some(pc)));
    }
    if sess["mode"] == "payment" {
        let delayed = str_at(p, "delayed") == Some("true");
        let how = Payment {
            pm: pm.as_deref(),
            behavior,
            delayed,
        };
        return pay_once(s, id, &customer, how, &plan, now);
    }
    let req = NewSubscription {
        customer: customer.clone(),
        items: plan
            .items
            .iter()
            .map(|i| {
                (
                    i["price"].as_str().unwrap_or_default().to_string(),
                    i["quantity"].as_i64().unwrap_or(1),
                )
            })
            .collect(),
        currency: sess["currency"].as_str().map(str::to_string),
        metadata: plan.metadata.clone(),
        trial_end: plan.trial_end_from(now),
        default_payment_method: pm,
        coupon,
        missing_payment_method: plan.missing_payment_method.clone(),
        payment_behavior: Some("allow_incomplete".into()),
        cancel_at_period_end: false,
    };
    let (sub, outcome) = billing::create_subscription(s, req)?;
    let mut before = s.get("checkout.session", id, "id")?;
    if before["customer"].is_null() {
        // The customer is visible on the session from the moment it exists.
        before["customer"] = json!(customer);
        s.put(before.clone());
    }
    let details = json!({
        "address": if plan.collect_address { entered_address(p) } else { Value::Null },
        "tax_ids": match (plan.collect_tax_id, str_at(p, "tax_id.type"), str_at(p, "tax_id.value")) {
            (true, Some(t), Some(v)) => json!([{"type": t, "value": v}]),
            _ => json!([]),
        },
    });
    s.checkout_details.insert(id.to_string(), details);
    match outcome {
        PayOutcome::Paid => finish(s, id, &sub, now),
        PayOutcome::RequiresAction(pi) => {
            s.pending_sessions.insert(pi.clone(), id.to_string());
            s.get("payment_intent", &pi, "payment_intent")
        }
        PayOutcome::Declined(e) => Err(e),
    }
}

/// Completes a `mode=payment` session: a payment intent for its total,
/// confirmed with the card (`payment_intent.created`, `charge.succeeded`,
/// `payment_intent.succeeded`), then `checkout.session.completed` with
/// `payment_status=paid` and its `payment_intent`. A card needing 3-D
/// Secure is refused on the page (not emulated in this mode). A delayed
/// payment (`delayed=true`, a bank debit's) leaves the payment intent
/// `processing` and the session complete with `payment_status=unpaid`, to be
/// settled with `POST /_sim/payment_intents/{id}/settle`.
fn pay_once(
    s: &mut Inner,
    id: &str,
    customer: &str,
    how: Payment<'_>,
    plan: &CheckoutPlan,
    now: i64,
) -> ApiResult {
    let Payment {
        pm,
        behavior,
        delayed,
    } = how;
    let Some(pm) = pm else {
        return Err(ApiError::missing("payment_method"));
    };
    if behavior == Some(CardBehavior::AuthRequired) {
        return Err(ApiError::invalid(
            "payment_method",
            "stripe-sim does not emulate 3-D Secure on Checkout in payment mode.",
        ));
    }
    let mut sess = s.get("checkout.session", id, "id")?;
    let pi_id = s.id("pi");
    let mut pi = billing::payment_intent_json(
        s,
        &pi_id,
        billing::PaymentIntentFields {
            amount: sess["amount_total"].as_i64().unwrap_or(0),
            currency: &sess["currency"],
            customer: &json!(customer),
            description: Value::Null,
            payment_method: Some(pm),
            setup_future_usage: Value::Null,
            metadata: if plan.payment_metadata.is_object() {
                plan.payment_metadata.clone()
            } else {
                json!({})
            },
        },
        now,
    );
    s.insert(pi.clone());
    s.emit("payment_intent.created", &pi, None, now);
    if delayed {
        pi["status"] = json!("processing");
        s.put(pi.clone());
        s.emit("payment_intent.processing", &pi, None, now);
    } else {
        let ch = billing::create_charge(s, &pi, pm, None, now)?;
        pi["status"] = json!("succeeded");
        pi["amount_received"] = pi["amount"].clone();
        pi["latest_charge"] = json!(ch);
        s.put(pi.clone());
        s.emit("payment_intent.succeeded", &pi, None, now);
        if behavior == Some(CardBehavior::Dispute) {
            crate::resources::payments::open_dispute(s, &ch, now)?;
        }
    }
    let cus = s.get("customer", customer, "customer")?;
    let entered = s.checkout_details.get(id).cloned().unwrap_or_default();
    sess["status"] = json!("complete");
    sess["url"] = Value::Null;
    sess["customer"] = json!(customer);
    sess["payment_intent"] = json!(pi_id);
    sess["payment_status"] = json!(if delayed { "unpaid" } else { "paid" });
    sess["customer_details"] = json!({
        "address": entered["address"],
        "business_name": null,
        "email": cus["email"],
        "individual_name": null,
        "name": cus["name"],
        "phone": null,
        "tax_exempt": "none",
        "tax_ids": entered.get("tax_ids").cloned().unwrap_or_else(|| json!([])),
    });
    s.put(sess.clone());
    s.emit("checkout.session.completed", &sess, None, now);
    Ok(sess)
}

/// How a `mode=payment` session is paid on the page.
struct Payment<'a> {
    pm: Option<&'a str>,
    behavior: Option<CardBehavior>,
    /// A delayed method (bank debit): settled later.
    delayed: bool,
}

/// `POST /_sim/payment_intents/{id}/settle`: the bank's answer to a delayed
/// payment of a `mode=payment` session. `outcome=success` charges it
/// (`charge.succeeded`, `payment_intent.succeeded`), marks the session
/// `paid` and emits `checkout.session.async_payment_succeeded`;
/// `outcome=failure` fails it (`payment_intent.payment_failed`) and emits
/// `checkout.session.async_payment_failed`, the session staying `unpaid`.
pub fn settle(s: &mut Inner, pi_id: &str, success: bool) -> ApiResult {
    let mut pi = s.get("payment_intent", pi_id, "id")?;
    if pi["status"] != "processing" {
        return Err(ApiError::state(
            "payment_intent_unexpected_state",
            format!(
                "This PaymentIntent is {}, not processing: nothing to settle.",
                pi["status"].as_str().unwrap_or_default()
            ),
        ));
    }
    let session = s
        .by_kind
        .get("checkout.session")
        .into_iter()
        .flatten()
        .find(|sid| {
            s.objects
                .get(*sid)
                .is_some_and(|o| o["payment_intent"] == pi_id)
        })
        .cloned();
    let customer = pi["customer"].as_str().map(str::to_string);
    let now = s.now_for_customer(customer.as_deref());
    if success {
        let pm = pi["payment_method"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let ch = billing::create_charge(s, &pi, &pm, None, now)?;
        pi["status"] = json!("succeeded");
        pi["amount_received"] = pi["amount"].clone();
        pi["latest_charge"] = json!(ch);
        s.put(pi.clone());
        s.emit("payment_intent.succeeded", &pi, None, now);
    } else {
        pi["status"] = json!("requires_payment_method");
        pi["last_payment_error"] = json!({
            "type": "card_error",
            "code": "payment_intent_payment_attempt_failed",
            "message": "The payment failed.",
        });
        s.put(pi.clone());
        s.emit("payment_intent.payment_failed", &pi, None, now);
    }
    if let Some(sid) = session {
        let mut sess = s.get("checkout.session", &sid, "id")?;
        let kind = if success {
            sess["payment_status"] = json!("paid");
            s.put(sess.clone());
            "checkout.session.async_payment_succeeded"
        } else {
            "checkout.session.async_payment_failed"
        };
        s.emit(kind, &sess, None, now);
    }
    s.get("payment_intent", pi_id, "id")
}

/// The billing address typed on the page: `address[…]` fields, or a test address.
fn entered_address(p: &Value) -> Value {
    let a = customers::address_from(p);
    if a.is_null() {
        json!({"city": "San Francisco", "country": "US", "line1": "510 Townsend St", "line2": null, "postal_code": "94103", "state": "CA"})
    } else {
        a
    }
}

/// Marks a session complete with its subscription: `checkout.session.completed`.
pub fn finish(s: &mut Inner, id: &str, sub_id: &str, at: i64) -> ApiResult {
    let before = s.get("checkout.session", id, "id")?;
    let sub = s.get("subscription", sub_id, "subscription")?;
    let cus = s.get(
        "customer",
        sub["customer"].as_str().unwrap_or_default(),
        "customer",
    )?;
    let inv = sub["latest_invoice"]
        .as_str()
        .and_then(|i| s.objects.get(i))
        .cloned()
        .unwrap_or(Value::Null);
    let mut after = before.clone();
    after["status"] = json!("complete");
    after["url"] = Value::Null;
    after["customer"] = cus["id"].clone();
    after["subscription"] = json!(sub_id);
    after["invoice"] = inv["id"].clone();
    let paid = inv["amount_paid"].as_i64().unwrap_or(0);
    after["payment_status"] = json!(if inv["amount_due"] == 0 {
        "no_payment_required"
    } else {
        "paid"
    });
    if let Some(d) = inv["total_discount_amounts"][0]["amount"].as_i64() {
        after["total_details"]["amount_discount"] = json!(d);
        after["amount_total"] = json!(after["amount_subtotal"].as_i64().unwrap_or(0) - d);
    }
    if sub["status"] == "trialing" {
        after["amount_total"] = json!(paid);
    }
    let entered = s.checkout_details.get(id).cloned().unwrap_or_default();
    after["customer_details"] = json!({
        "address": entered["address"],
        "business_name": null,
        "email": cus["email"],
        "individual_name": null,
        "name": cus["name"],
        "phone": null,
        "tax_exempt": "none",
        "tax_ids": entered.get("tax_ids").cloned().unwrap_or_else(|| json!([])),
    });
    s.put(after.clone());
    s.emit("checkout.session.completed", &after, None, at);
    Ok(after)
}

/// After 3-D Secure succeeds on a Checkout payment, the session completes.
pub fn on_authenticated(s: &mut Inner, pi: &str) -> ApiResult<()> {
    let Some(session) = s.pending_sessions.remove(pi) else {
        return Ok(());
    };
    let Some(inv) = billing::find_invoice_of_pi(s, pi) else {
        return Ok(());
    };
    let inv = s.get("invoice", &inv, "invoice")?;
    let sub = inv["parent"]["subscription_details"]["subscription"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let at = s.now_for_customer(inv["customer"].as_str());
    finish(s, &session, &sub, at)?;
    Ok(())
}

/// After 3-D Secure fails, the session stays open for another card; the incomplete
/// subscription it started is left to expire, as on Stripe.
pub fn on_authentication_failed(s: &mut Inner, pi: &str) {
    s.pending_sessions.remove(pi);
}

/// `POST /v1/billing_portal/sessions` (`customer`, `return_url`, `configuration`, `flow_data`).
pub fn create_portal_session(s: &mut Inner, p: &Value) -> ApiResult {
    let customer = params::req_str(p, "customer")?.to_string();
    customers::require(s, &customer, "customer")?;
    let configuration = match str_at(p, "configuration") {
        Some(c) => {
            let cfg = s.get("billing_portal.configuration", c, "configuration")?;
            if cfg["active"] != true {
                return Err(ApiError::invalid(
                    "configuration",
                    "The configuration is not active.",
                ));
            }
            c.to_string()
        }
        None => account::default_portal_configuration(s)?,
    };
    let id = s.id("bps");
    let flow = params::at(p, "flow_data").map(|f| {
        json!({
            "after_completion": {"hosted_confirmation": null, "redirect": null, "type": f["after_completion"]["type"].as_str().unwrap_or("portal_homepage")},
            "subscription_cancel": f.get("subscription_cancel").map(|c| json!({"retention": null, "subscription": c["subscription"]})),
            "subscription_update": f.get("subscription_update").map(|c| json!({"subscription": c["subscription"]})),
            "subscription_update_confirm": null,
            "type": f["type"],
        })
    });
    let now = s.now_for_customer(Some(&customer));
    let url = format!("{}/_sim/billing_portal/{id}", s.cfg.public_url);
    let session = json!({
        "id": id,
        "object": "billing_portal.session",
        "configuration": configuration,
        "created": now,
        "customer": customer,
        "customer_account": null,
        "flow": flow,
        "livemode": false,
        "locale": str_at(p, "locale"),
        "on_behalf_of": null,
        "return_url": str_at(p, "return_url"),
        "url": url,
    });
    Ok(s.insert(session))
}
