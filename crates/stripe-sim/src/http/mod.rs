//! The HTTP face: authentication, idempotency, failure injection, Stripe's headers,
//! and the routing table from `(method, path)` to resource handlers.

use crate::billing::{self, PayOutcome};
use crate::config::{SimConfig, API_VERSION};
use crate::error::{ApiError, ApiResult};
use crate::form;
use crate::params;
use crate::resources::{
    account, catalog, checkout, coupons, customers, events, invoices, meters, payment_methods,
    payments, search, subscriptions, test_clocks,
};
use crate::state::{IdempotentResult, Inner, RequestCtx};
use serde_json::{json, Value};

mod control;
mod known_params;
mod pages;

use control::sim_config;
use known_params::check_params;
use pages::{checkout_page, summary_page};

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
        // Show the key as Stripe does, cut by characters so any input is safe.
        let chars: Vec<char> = key.chars().collect();
        let shown = if chars.len() > 12 {
            let head: String = chars[..8].iter().collect();
            let tail: String = chars[chars.len() - 4..].iter().collect();
            format!("{head}***{tail}")
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
        // Stripe's v1 API takes form bodies only; a JSON body that works here would fail there.
        if let Some(ct) = req
            .content_type
            .as_deref()
            .filter(|c| c.starts_with("application/json"))
        {
            if !req.body.is_empty() {
                return error(
                    ApiError::invalid(
                        "Content-Type",
                        format!("Invalid request: unsupported Content-Type {ct}. Use application/x-www-form-urlencoded."),
                    ),
                    headers,
                );
            }
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
    let expand = params::expand_paths(&p);
    let result = route(s, &req.method, &segs, &p).and_then(|mut v| {
        s.expand(&mut v, &expand)?;
        crate::defs::strip_includable(&mut v, &expand);
        Ok(v)
    });
    s.request = None;
    let (status, body) = match result {
        Ok(v) => (200, v),
        Err(e) => (e.status, e.body()),
    };
    if is_api {
        // Whatever the emulator answered: a request real Stripe refuses is
        // a defect in the caller the emulator may not have noticed.
        let problems = crate::defs::check_decoded(&req.method, &path, &p);
        if !problems.is_empty() {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            let line = format!("{} {}: {}", req.method, path, problems.join("; "));
            tracing::warn!(request = %line, "stripe-sim: a request Stripe's definitions refuse");
            if s.request_problems.len() < crate::state::MAX_REQUEST_PROBLEMS {
                s.request_problems.push(line);
            }
        }
        if let Some(log) = s.exchanges.as_mut() {
            log.push(crate::state::Exchange {
                method: req.method.clone(),
                path: path.clone(),
                params: p.clone(),
                status,
                body: body.clone(),
            });
        }
    }
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
            ("POST", ["payment_intents", id, "settle"]) => {
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
                checkout::settle(s, id, success)
            }
            ("POST", ["disputes", id, "close"]) => payments::close_dispute(s, id, p),
            ("POST", ["webhook_endpoints", id, "roll_secret"]) => events::roll_secret(s, id, p),
            ("POST", ["payment_methods", id, "automatically_update"]) => {
                payment_methods::automatically_update(s, id, p)
            }
            ("GET" | "POST", ["config"]) => sim_config(s, method, p),
            ("GET", ["request_problems"]) => Ok(serde_json::json!({
                "object": "list",
                "data": s.request_problems,
            })),
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
        ("GET", ["customers", "search"]) => {
            search::search(s, "customer", "/v1/customers/search", p)
        }
        ("GET", ["customers", id]) => customers::retrieve(s, id),
        ("POST", ["customers", id]) => customers::update(s, id, p),
        ("DELETE", ["customers", id]) => customers::delete(s, id),
        ("GET", ["customers", id, "payment_methods"]) => payment_methods::list(s, Some(id), p),

        ("POST", ["products"]) => catalog::create_product(s, p),
        ("GET", ["products"]) => catalog::list_products(s, p),
        ("GET", ["products", id]) => s.get("product", id, "id"),
        ("POST", ["products", id]) => catalog::update_product(s, id, p),
        ("POST", ["billing", "meters"]) => meters::create_meter(s, p),
        ("GET", ["billing", "meters"]) => meters::list_meters(s, p),
        ("GET", ["billing", "meters", id]) => s.get("billing.meter", id, "id"),
        ("GET", ["billing", "meters", id, "event_summaries"]) => meters::event_summaries(s, id, p),
        ("POST", ["billing", "meter_events"]) => meters::create_meter_event(s, p),
        ("POST", ["prices"]) => catalog::create_price(s, p),
        ("GET", ["prices"]) => catalog::list_prices(s, p),
        ("GET", ["prices", id]) => s.get("price", id, "id"),
        ("POST", ["prices", id]) => catalog::update_price(s, id, p),

        ("GET", ["payment_methods"]) => payment_methods::list(s, None, p),
        ("POST", ["payment_methods"]) => payment_methods::create(s, p),
        ("GET", ["payment_methods", id]) => payment_methods::retrieve(s, id),
        ("POST", ["payment_methods", id]) => payment_methods::update(s, id, p),
        ("POST", ["payment_methods", id, "attach"]) => payment_methods::attach(s, id, p),
        ("POST", ["payment_methods", id, "detach"]) => payment_methods::detach(s, id),

        ("POST", ["checkout", "sessions"]) => checkout::create(s, p),
        ("GET", ["checkout", "sessions"]) => checkout::list(s, p),
        ("GET", ["checkout", "sessions", id]) => checkout::retrieve(s, id),
        ("GET", ["checkout", "sessions", id, "line_items"]) => checkout::line_items(s, id),
        ("POST", ["checkout", "sessions", id, "expire"]) => checkout::expire(s, id),
        ("POST", ["billing_portal", "sessions"]) => checkout::create_portal_session(s, p),
        ("GET", ["billing_portal", "configurations"]) => {
            if s.cfg.portal_configured {
                account::default_portal_configuration(s)?;
            }
            account::list_portal_configurations(s, p)
        }
        ("POST", ["billing_portal", "configurations"]) => {
            account::create_portal_configuration(s, p)
        }
        ("GET", ["billing_portal", "configurations", id]) => {
            s.get("billing_portal.configuration", id, "id")
        }
        ("POST", ["billing_portal", "configurations", id]) => {
            account::update_portal_configuration(s, id, p)
        }
        ("GET", ["account"]) => account::account(s),
        ("GET", ["tax", "settings"]) => account::tax_settings(s),
        ("POST", ["tax", "settings"]) => account::update_tax_settings(s, p),

        ("POST", ["subscriptions"]) => subscriptions::create(s, p),
        ("GET", ["subscriptions"]) => subscriptions::list(s, p),
        ("GET", ["subscriptions", "search"]) => {
            search::search(s, "subscription", "/v1/subscriptions/search", p)
        }
        ("GET", ["subscriptions", id]) => subscriptions::retrieve(s, id),
        ("POST", ["subscriptions", id]) => subscriptions::update(s, id, p),
        ("DELETE", ["subscriptions", id]) => subscriptions::cancel(s, id),
        ("POST", ["subscriptions", id, "resume"]) => subscriptions::resume(s, id),
        ("POST", ["subscription_schedules"]) => {
            crate::resources::subscription_schedules::create(s, p)
        }
        ("GET", ["subscription_schedules", id]) => {
            crate::resources::subscription_schedules::retrieve(s, id)
        }
        ("POST", ["subscription_schedules", id]) => {
            crate::resources::subscription_schedules::update(s, id, p)
        }
        ("POST", ["subscription_schedules", id, "release"]) => {
            crate::resources::subscription_schedules::release(s, id)
        }
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
        let odd = authenticate(Some("Bearer sk_liveééééééééééé")).err();
        assert!(odd.is_some_and(|e| e.message.contains("***")));
    }
}
