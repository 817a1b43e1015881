//! The HTTP face: authentication, idempotency, failure injection, Stripe's headers,
//! and the routing table from `(method, path)` to resource handlers.

use crate::billing::{self, PayOutcome};
use crate::config::{SimConfig, API_VERSION};
use crate::error::{ApiError, ApiResult};
use crate::form;
use crate::params;
use crate::resources::{
    catalog, checkout, coupons, customers, events, invoices, payment_methods, payments,
    subscriptions, test_clocks,
};
use crate::state::{IdempotentResult, Inner, RequestCtx};
use serde_json::{json, Value};

/// A response before it becomes HTTP.
#[derive(Debug, Clone)]
pub struct SimResponse {
    /// Status code.
    pub status: u16,
    /// JSON body (or, for `html`, the page).
    pub body: Value,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// An HTML page instead of JSON (the hosted Checkout page).
    pub html: Option<String>,
}

/// One incoming request, transport-independent.
#[derive(Debug, Clone, Default)]
pub struct SimRequest {
    /// `GET`, `POST`, `DELETE`.
    pub method: String,
    /// Path, e.g. `/v1/customers`.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// `Authorization` header.
    pub authorization: Option<String>,
    /// `Idempotency-Key` header.
    pub idempotency_key: Option<String>,
    /// `Stripe-Version` header.
    pub stripe_version: Option<String>,
    /// `Content-Type` header.
    pub content_type: Option<String>,
    /// Raw body.
    pub body: Vec<u8>,
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len();
        if n < 2 {
            return None;
        }
        out.push((acc >> 16) as u8);
        if n > 2 {
            out.push((acc >> 8) as u8);
        }
        if n > 3 {
            out.push(acc as u8);
        }
    }
    Some(out)
}

/// Checks `Authorization`: `Bearer sk_test_…`, or Basic with the key as user (as SDKs send).
pub fn authenticate(header: Option<&str>) -> ApiResult<()> {
    let Some(h) = header else {
        return Err(ApiError::unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').",
        ));
    };
    let key = if let Some(k) = h.strip_prefix("Bearer ") {
        k.trim().to_string()
    } else if let Some(b) = h.strip_prefix("Basic ") {
        let decoded = base64_decode(b.trim())
            .and_then(|d| String::from_utf8(d).ok())
            .unwrap_or_default();
        decoded.split(':').next().unwrap_or_default().to_string()
    } else {
        String::new()
    };
    if key.starts_with("sk_test_") && key.len() > "sk_test_".len() {
        Ok(())
    } else {
        let shown = if key.len() > 12 {
            format!("{}***{}", &key[..8], &key[key.len() - 4..])
        } else {
            "***".into()
        };
        Err(ApiError::unauthorized(format!(
            "Invalid API Key provided: {shown}. stripe-sim accepts any test secret key (sk_test_…)."
        )))
    }
}

fn params_of(req: &SimRequest) -> Value {
    let mut p = form::parse(&req.query);
    let is_json = req
        .content_type
        .as_deref()
        .is_some_and(|c| c.starts_with("application/json"));
    let body = if is_json {
        serde_json::from_slice::<Value>(&req.body).unwrap_or(Value::Null)
    } else {
        form::parse(&String::from_utf8_lossy(&req.body))
    };
    form::merge(&mut p, body);
    p
}

/// Handles one request against the state.
pub fn handle(s: &mut Inner, req: &SimRequest) -> SimResponse {
    s.request_count += 1;
    let request_id = format!("req_sim{:010}", s.request_count);
    let version = req
        .stripe_version
        .clone()
        .unwrap_or_else(|| API_VERSION.to_string());
    let mut headers = vec![
        ("Request-Id", request_id.clone()),
        ("Stripe-Version", version),
    ];
    let path = req.path.trim_end_matches('/').to_string();
    let segs: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    let is_api = segs.first() == Some(&"v1");
    let p = params_of(req);
    let error = |e: ApiError, mut headers: Vec<(&'static str, String)>| {
        if matches!(e.status, 429 | 500) {
            headers.push(("Stripe-Should-Retry", "true".into()));
        }
        SimResponse {
            status: e.status,
            body: e.body(),
            headers,
            html: None,
        }
    };
    if is_api {
        if let Err(e) = authenticate(req.authorization.as_deref()) {
            return error(e, headers);
        }
        if let Some(e) = injected_fault(s) {
            return error(e, headers);
        }
    }
    let idem_key = req
        .idempotency_key
        .clone()
        .filter(|_| is_api && req.method == "POST");
    let fingerprint = format!("{} {} {}", req.method, path, p);
    if let Some(key) = &idem_key {
        headers.push(("Idempotency-Key", key.clone()));
        if let Some(prev) = s.idempotency.get(key) {
            if prev.fingerprint != fingerprint {
                return error(
                    ApiError::idempotency(format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                    )),
                    headers,
                );
            }
            headers.push(("Idempotent-Replayed", "true".into()));
            return SimResponse {
                status: prev.status,
                body: prev.body.clone(),
                headers,
                html: None,
            };
        }
    }
    if req.method == "GET" && segs.len() == 3 && segs[0] == "_sim" {
        match segs[1] {
            "checkout" => return checkout_page(s, segs[2], headers),
            "invoices" | "billing_portal" => return summary_page(s, segs[1], segs[2], headers),
            _ => {}
        }
    }
    s.request = Some(RequestCtx {
        id: request_id,
        idempotency_key: idem_key.clone(),
    });
    let result = route(s, &req.method, &segs, &p).and_then(|mut v| {
        s.expand(&mut v, &params::expand_paths(&p))?;
        Ok(v)
    });
    s.request = None;
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, e.body()),
    };
    if let Some(key) = idem_key {
        if status < 500 {
            s.idempotency.insert(
                key,
                IdempotentResult {
                    fingerprint,
                    status,
                    body: body.clone(),
                },
            );
        }
    }
    if status >= 400 {
        return error_with_body(status, body, headers);
    }
    // A browser posting the hosted page's form is sent on to success_url.
    if status == 200
        && params::str_at(&p, "redirect") == Some("1")
        && body["object"] == "checkout.session"
    {
        if let Some(url) = body["success_url"].as_str() {
            let url = url.replace(
                "{CHECKOUT_SESSION_ID}",
                body["id"].as_str().unwrap_or_default(),
            );
            headers.push(("Location", url));
            return SimResponse {
                status: 303,
                body,
                headers,
                html: None,
            };
        }
    }
    SimResponse {
        status,
        body,
        headers,
        html: None,
    }
}

fn error_with_body(
    status: u16,
    body: Value,
    mut headers: Vec<(&'static str, String)>,
) -> SimResponse {
    if matches!(status, 429 | 500) {
        headers.push(("Stripe-Should-Retry", "true".into()));
    }
    SimResponse {
        status,
        body,
        headers,
        html: None,
    }
}

fn injected_fault(s: &mut Inner) -> Option<ApiError> {
    let f = &mut s.cfg.faults;
    if f.next_rate_limits > 0 {
        f.next_rate_limits -= 1;
        return Some(ApiError::rate_limited());
    }
    if f.next_errors > 0 {
        f.next_errors -= 1;
        return Some(ApiError::internal());
    }
    let (rl, er) = (f.rate_limit_rate, f.error_rate);
    if rl > 0.0 && s.knob_rng.unit() < rl {
        return Some(ApiError::rate_limited());
    }
    if er > 0.0 && s.knob_rng.unit() < er {
        return Some(ApiError::internal());
    }
    None
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A minimal hosted Checkout page for people trying the emulator in a browser.
fn checkout_page(s: &mut Inner, id: &str, headers: Vec<(&'static str, String)>) -> SimResponse {
    let sess = match checkout::retrieve(s, id) {
        Ok(v) => v,
        Err(e) => {
            return SimResponse {
                status: e.status,
                body: e.body(),
                headers,
                html: None,
            }
        }
    };
    let amount = sess["amount_total"].as_i64().unwrap_or(0);
    let currency = sess["currency"].as_str().unwrap_or_default().to_uppercase();
    let status = sess["status"].as_str().unwrap_or_default();
    let id = html_escape(id);
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stripe-sim Checkout</title></head><body>\
         <h1>stripe-sim Checkout (test mode)</h1><p>Session <code>{id}</code> is <b>{status}</b>. \
         Total: {}.{:02} {currency}</p>\
         <form method=\"post\" action=\"/_sim/checkout/sessions/{id}/complete\">\
         <input type=\"hidden\" name=\"redirect\" value=\"1\">\
         <label>Email <input name=\"email\" value=\"customer@example.com\"></label><br>\
         <label>Card <select name=\"payment_method\">\
         <option>pm_card_visa</option><option>pm_card_mastercard</option><option>pm_card_chargeDeclined</option>\
         <option>pm_card_chargeCustomerFail</option><option>pm_card_authenticationRequired</option>\
         <option>pm_card_createDispute</option></select></label><br>\
         <label>Promotion code <input name=\"promotion_code\"></label><br>\
         <button type=\"submit\">Pay</button></form></body></html>",
        amount / 100,
        amount % 100
    );
    SimResponse {
        status: 200,
        body: Value::Null,
        headers,
        html: Some(page),
    }
}

/// The hosted invoice and billing portal URLs lead somewhere readable.
fn summary_page(
    s: &Inner,
    kind: &str,
    id: &str,
    headers: Vec<(&'static str, String)>,
) -> SimResponse {
    let (title, object, rows) = if kind == "invoices" {
        let Ok(inv) = s.get("invoice", id, "id") else {
            let e = ApiError::no_such("invoice", id, "id");
            return SimResponse {
                status: 404,
                body: e.body(),
                headers,
                html: None,
            };
        };
        let rows: Vec<String> = inv["lines"]["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                format!(
                    "<li>{}: {}</li>",
                    html_escape(l["description"].as_str().unwrap_or_default()),
                    l["amount"]
                )
            })
            .collect();
        ("Invoice", inv, rows)
    } else {
        let Ok(bps) = s.get("billing_portal.session", id, "id") else {
            let e = ApiError::no_such("billing portal session", id, "id");
            return SimResponse {
                status: 404,
                body: e.body(),
                headers,
                html: None,
            };
        };
        let rows: Vec<String> = s
            .by_kind
            .get("subscription")
            .into_iter()
            .flatten()
            .filter_map(|sid| s.objects.get(sid))
            .filter(|sub| sub["customer"] == bps["customer"])
            .map(|sub| {
                format!(
                    "<li><code>{}</code>: {}</li>",
                    html_escape(sub["id"].as_str().unwrap_or_default()),
                    html_escape(sub["status"].as_str().unwrap_or_default())
                )
            })
            .collect();
        ("Billing portal", bps, rows)
    };
    let page = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>stripe-sim {title}</title></head><body>\
         <h1>stripe-sim {title} (test mode)</h1><p><code>{}</code> {}</p><ul>{}</ul>\
         <p>Changes go through the Stripe API; this page only shows the state.</p></body></html>",
        html_escape(object["id"].as_str().unwrap_or_default()),
        html_escape(object["status"].as_str().unwrap_or_default()),
        rows.join("")
    );
    SimResponse {
        status: 200,
        body: Value::Null,
        headers,
        html: Some(page),
    }
}

fn sim_config(s: &mut Inner, method: &str, p: &Value) -> ApiResult {
    if method == "POST" {
        let mut current = serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())?;
        overlay(&mut current, p, "")?;
        let cfg: SimConfig = serde_json::from_value(current)
            .map_err(|e| ApiError::invalid("config", e.to_string()))?;
        s.cfg = cfg;
    }
    serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())
}

/// Writes form values over a typed JSON tree, converting strings to the type already there.
fn overlay(target: &mut Value, given: &Value, path: &str) -> ApiResult<()> {
    let Value::Object(m) = given else {
        return Ok(());
    };
    for (k, v) in m {
        if path.is_empty() && k == "expand" {
            continue;
        }
        let name = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}[{k}]")
        };
        let Some(slot) = target.get_mut(k) else {
            return Err(ApiError::invalid(&name, format!("Unknown setting: {name}")));
        };
        match (slot.clone(), v) {
            (Value::Object(_), Value::Object(_)) => overlay(slot, v, &name)?,
            (_, Value::Array(items)) => {
                let parsed: Result<Vec<i64>, _> = items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().parse::<i64>())
                    .collect();
                *slot = json!(parsed.map_err(|_| ApiError::invalid(&name, "Expected integers."))?);
            }
            (old, Value::String(sv)) => {
                *slot = if sv.is_empty() && (old.is_null() || name == "frozen_time") {
                    Value::Null
                } else if let Ok(i) = sv.parse::<i64>() {
                    if old.is_f64() {
                        json!(i as f64)
                    } else {
                        json!(i)
                    }
                } else if let Ok(f) = sv.parse::<f64>() {
                    json!(f)
                } else if sv == "true" || sv == "false" {
                    json!(sv == "true")
                } else {
                    json!(sv)
                };
            }
            (_, other) => *slot = other.clone(),
        }
    }
    Ok(())
}

const CUSTOMER: &[&str] = &[
    "address",
    "balance",
    "cash_balance",
    "description",
    "email",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "validate",
    "default_source",
];
const PRODUCT: &[&str] = &[
    "id",
    "name",
    "active",
    "description",
    "metadata",
    "default_price",
    "default_price_data",
    "images",
    "marketing_features",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "unit_label",
    "url",
    "type",
];
const PRICE: &[&str] = &[
    "currency",
    "unit_amount",
    "product",
    "product_data",
    "recurring",
    "lookup_key",
    "transfer_lookup_key",
    "currency_options",
    "nickname",
    "metadata",
    "active",
    "billing_scheme",
    "custom_unit_amount",
    "tax_behavior",
    "tiers",
    "tiers_mode",
    "transform_quantity",
    "unit_amount_decimal",
];
const CHECKOUT: &[&str] = &[
    "adaptive_pricing",
    "after_expiration",
    "allow_promotion_codes",
    "automatic_tax",
    "billing_address_collection",
    "branding_settings",
    "cancel_url",
    "client_reference_id",
    "consent_collection",
    "currency",
    "custom_fields",
    "custom_text",
    "customer",
    "customer_creation",
    "customer_email",
    "customer_update",
    "discounts",
    "expires_at",
    "invoice_creation",
    "line_items",
    "locale",
    "metadata",
    "mode",
    "name_collection",
    "optional_items",
    "origin_context",
    "payment_intent_data",
    "payment_method_collection",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "permissions",
    "phone_number_collection",
    "redirect_on_completion",
    "return_url",
    "saved_payment_method_options",
    "setup_intent_data",
    "shipping_address_collection",
    "shipping_options",
    "submit_type",
    "subscription_data",
    "success_url",
    "tax_id_collection",
    "ui_mode",
    "wallet_options",
];
const SUBSCRIPTION: &[&str] = &[
    "customer",
    "items",
    "add_invoice_items",
    "application_fee_percent",
    "automatic_tax",
    "backdate_start_date",
    "billing_cycle_anchor",
    "billing_cycle_anchor_config",
    "billing_mode",
    "billing_thresholds",
    "cancel_at",
    "cancel_at_period_end",
    "cancellation_details",
    "collection_method",
    "currency",
    "days_until_due",
    "default_payment_method",
    "default_source",
    "default_tax_rates",
    "description",
    "discounts",
    "invoice_settings",
    "metadata",
    "off_session",
    "on_behalf_of",
    "pause_collection",
    "payment_behavior",
    "payment_settings",
    "pending_invoice_item_interval",
    "proration_behavior",
    "proration_date",
    "transfer_data",
    "trial_end",
    "trial_from_plan",
    "trial_period_days",
    "trial_settings",
];
const PREVIEW: &[&str] = &[
    "customer",
    "subscription",
    "subscription_details",
    "automatic_tax",
    "currency",
    "customer_details",
    "discounts",
    "invoice_items",
    "issuer",
    "on_behalf_of",
    "preview_mode",
    "schedule",
    "schedule_details",
];
const REFUND: &[&str] = &[
    "amount",
    "charge",
    "payment_intent",
    "reason",
    "metadata",
    "refund_application_fee",
    "reverse_transfer",
    "instructions_email",
    "origin",
    "currency",
    "customer",
];
const COUPON: &[&str] = &[
    "id",
    "amount_off",
    "currency",
    "currency_options",
    "duration",
    "duration_in_months",
    "max_redemptions",
    "metadata",
    "name",
    "percent_off",
    "redeem_by",
    "applies_to",
];
const PROMOTION_CODE: &[&str] = &[
    "promotion",
    "coupon",
    "code",
    "active",
    "customer",
    "expires_at",
    "max_redemptions",
    "metadata",
    "restrictions",
];
const WEBHOOK_ENDPOINT: &[&str] = &[
    "url",
    "enabled_events",
    "api_version",
    "connect",
    "description",
    "metadata",
    "disabled",
];
const PORTAL: &[&str] = &[
    "customer",
    "configuration",
    "flow_data",
    "locale",
    "on_behalf_of",
    "return_url",
];
const INVOICE_PAY: &[&str] = &[
    "payment_method",
    "off_session",
    "forgive",
    "mandate",
    "paid_out_of_band",
    "source",
];

/// The top-level parameters Stripe accepts on the POST endpoints billd uses;
/// anything else is `parameter_unknown`, as on Stripe, so that a request that
/// would fail there fails here too.
fn known_params(rest: &[&str]) -> Option<&'static [&'static str]> {
    Some(match rest {
        ["customers"] | ["customers", _] => CUSTOMER,
        ["products"] | ["products", _] => PRODUCT,
        ["prices"] | ["prices", _] => PRICE,
        ["checkout", "sessions"] => CHECKOUT,
        ["subscriptions"] | ["subscriptions", _] => SUBSCRIPTION,
        ["invoices", "create_preview"] => PREVIEW,
        ["invoices", _, "pay"] => INVOICE_PAY,
        ["refunds"] => REFUND,
        ["coupons"] => COUPON,
        ["promotion_codes"] | ["promotion_codes", _] => PROMOTION_CODE,
        ["webhook_endpoints"] | ["webhook_endpoints", _] => WEBHOOK_ENDPOINT,
        ["billing_portal", "sessions"] => PORTAL,
        ["test_helpers", "test_clocks"] => &["frozen_time", "name"],
        ["test_helpers", "test_clocks", _, "advance"] => &["frozen_time"],
        ["payment_methods", _, "attach"] => &["customer"],
        _ => return None,
    })
}

fn check_params(method: &str, rest: &[&str], p: &Value) -> ApiResult<()> {
    if method != "POST" {
        return Ok(());
    }
    let (Some(known), Value::Object(m)) = (known_params(rest), p) else {
        return Ok(());
    };
    match m
        .keys()
        .find(|k| k.as_str() != "expand" && !known.contains(&k.as_str()))
    {
        Some(k) => {
            let mut e = ApiError::invalid(k, format!("Received unknown parameter: {k}"));
            e.set_code("parameter_unknown");
            Err(e)
        }
        None => Ok(()),
    }
}

/// The routing table.
pub fn route(s: &mut Inner, method: &str, segs: &[&str], p: &Value) -> ApiResult {
    let not_found = || ApiError::unrecognized_url(method, &format!("/{}", segs.join("/")));
    if segs.first() == Some(&"_sim") {
        return match (method, &segs[1..]) {
            ("POST", ["checkout", "sessions", id, "complete"]) => checkout::complete(s, id, p),
            ("POST", ["payment_intents", id, "authenticate"]) => {
                let success = match params::str_at(p, "outcome").unwrap_or("success") {
                    "success" => true,
                    "failure" => false,
                    _ => {
                        return Err(ApiError::invalid(
                            "outcome",
                            "outcome must be success or failure",
                        ))
                    }
                };
                match billing::authenticate(s, id, success)? {
                    PayOutcome::Paid => checkout::on_authenticated(s, id)?,
                    _ => checkout::on_authentication_failed(s, id),
                }
                s.get("payment_intent", id, "id")
            }
            ("POST", ["disputes", id, "close"]) => payments::close_dispute(s, id, p),
            ("GET" | "POST", ["config"]) => sim_config(s, method, p),
            _ => Err(not_found()),
        };
    }
    let Some(("v1", rest)) = segs.split_first().map(|(a, b)| (*a, b)) else {
        return Err(not_found());
    };
    check_params(method, rest, p)?;
    match (method, rest) {
        ("POST", ["customers"]) => customers::create(s, p),
        ("GET", ["customers"]) => customers::list(s, p),
        ("GET", ["customers", id]) => customers::retrieve(s, id),
        ("POST", ["customers", id]) => customers::update(s, id, p),
        ("DELETE", ["customers", id]) => customers::delete(s, id),
        ("GET", ["customers", id, "payment_methods"]) => payment_methods::list(s, Some(id), p),

        ("POST", ["products"]) => catalog::create_product(s, p),
        ("GET", ["products"]) => catalog::list_products(s, p),
        ("GET", ["products", id]) => s.get("product", id, "id"),
        ("POST", ["products", id]) => catalog::update_product(s, id, p),
        ("POST", ["prices"]) => catalog::create_price(s, p),
        ("GET", ["prices"]) => catalog::list_prices(s, p),
        ("GET", ["prices", id]) => s.get("price", id, "id"),
        ("POST", ["prices", id]) => catalog::update_price(s, id, p),

        ("GET", ["payment_methods"]) => payment_methods::list(s, None, p),
        ("GET", ["payment_methods", id]) => payment_methods::retrieve(s, id),
        ("POST", ["payment_methods", id, "attach"]) => payment_methods::attach(s, id, p),
        ("POST", ["payment_methods", id, "detach"]) => payment_methods::detach(s, id),

        ("POST", ["checkout", "sessions"]) => checkout::create(s, p),
        ("GET", ["checkout", "sessions"]) => checkout::list(s, p),
        ("GET", ["checkout", "sessions", id]) => checkout::retrieve(s, id),
        ("GET", ["checkout", "sessions", id, "line_items"]) => checkout::line_items(s, id),
        ("POST", ["checkout", "sessions", id, "expire"]) => checkout::expire(s, id),
        ("POST", ["billing_portal", "sessions"]) => checkout::create_portal_session(s, p),

        ("POST", ["subscriptions"]) => subscriptions::create(s, p),
        ("GET", ["subscriptions"]) => subscriptions::list(s, p),
        ("GET", ["subscriptions", id]) => subscriptions::retrieve(s, id),
        ("POST", ["subscriptions", id]) => subscriptions::update(s, id, p),
        ("DELETE", ["subscriptions", id]) => subscriptions::cancel(s, id),
        ("POST", ["subscriptions", id, "resume"]) => subscriptions::resume(s, id),
        ("GET", ["subscription_items"]) => subscriptions::list_items(s, p),
        ("GET", ["subscription_items", id]) => subscriptions::retrieve_item(s, id),

        ("POST", ["invoices", "create_preview"]) => invoices::create_preview(s, p),
        ("GET", ["invoices"]) => invoices::list(s, p),
        ("GET", ["invoices", id]) => s.get("invoice", id, "id"),
        ("GET", ["invoices", id, "lines"]) => invoices::lines(s, id),
        ("POST", ["invoices", id, "finalize"]) => invoices::finalize(s, id),
        ("POST", ["invoices", id, "pay"]) => invoices::pay(s, id, p),
        ("POST", ["invoices", id, "void"]) => invoices::void(s, id),
        ("GET", ["invoice_payments"]) => payments::list_invoice_payments(s, p),
        ("GET", ["invoice_payments", id]) => s.get("invoice_payment", id, "id"),

        ("GET", ["payment_intents"]) => payments::list_payment_intents(s, p),
        ("GET", ["payment_intents", id]) => s.get("payment_intent", id, "id"),
        ("POST", ["payment_intents", id, "confirm"]) => payments::confirm_payment_intent(s, id, p),
        ("GET", ["charges"]) => payments::list_charges(s, p),
        ("GET", ["charges", id]) => s.get("charge", id, "id"),
        ("POST", ["refunds"]) => payments::create_refund(s, p),
        ("GET", ["refunds"]) => payments::list_refunds(s, p),
        ("GET", ["refunds", id]) => s.get("refund", id, "id"),
        ("GET", ["disputes"]) => payments::list_disputes(s, p),
        ("GET", ["disputes", id]) => s.get("dispute", id, "id"),
        ("POST", ["disputes", id, "close"]) => payments::accept_dispute(s, id),

        ("POST", ["coupons"]) => coupons::create_coupon(s, p),
        ("GET", ["coupons"]) => coupons::list_coupons(s, p),
        ("GET", ["coupons", id]) => coupons::retrieve_coupon(s, id),
        ("DELETE", ["coupons", id]) => coupons::delete_coupon(s, id),
        ("POST", ["promotion_codes"]) => coupons::create_promotion_code(s, p),
        ("GET", ["promotion_codes"]) => coupons::list_promotion_codes(s, p),
        ("GET", ["promotion_codes", id]) => s.get("promotion_code", id, "id"),
        ("POST", ["promotion_codes", id]) => coupons::update_promotion_code(s, id, p),
        ("GET", ["discounts", id]) => s.get("discount", id, "id"),

        ("GET", ["events"]) => events::list(s, p),
        ("GET", ["events", id]) => events::retrieve(s, id),
        ("POST", ["webhook_endpoints"]) => events::create_endpoint(s, p),
        ("GET", ["webhook_endpoints"]) => events::list_endpoints(s, p),
        ("GET", ["webhook_endpoints", id]) => events::retrieve_endpoint(s, id),
        ("POST", ["webhook_endpoints", id]) => events::update_endpoint(s, id, p),
        ("DELETE", ["webhook_endpoints", id]) => events::delete_endpoint(s, id),

        ("POST", ["test_helpers", "test_clocks"]) => test_clocks::create(s, p),
        ("GET", ["test_helpers", "test_clocks"]) => test_clocks::list(s, p),
        ("GET", ["test_helpers", "test_clocks", id]) => test_clocks::retrieve(s, id),
        ("DELETE", ["test_helpers", "test_clocks", id]) => test_clocks::delete(s, id),
        ("POST", ["test_helpers", "test_clocks", id, "advance"]) => test_clocks::advance(s, id, p),
        _ => Err(not_found()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_test_keys_authenticate_and_live_keys_do_not() {
        assert!(authenticate(Some("Bearer sk_test_abc")).is_ok());
        // base64("sk_test_abc:")
        assert!(authenticate(Some("Basic c2tfdGVzdF9hYmM6")).is_ok());
        assert_eq!(
            authenticate(Some("Bearer sk_live_abc"))
                .err()
                .map(|e| e.status),
            Some(401)
        );
        assert_eq!(authenticate(None).err().map(|e| e.status), Some(401));
    }
}
