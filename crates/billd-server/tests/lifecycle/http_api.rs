//! Issue 13's HTTP contract, through real HTTP on loopback: out-of-range
//! amounts and free strings are 400s with their own codes, every error
//! (unknown route, wrong method, oversized body, extractor rejections) has
//! the error shape with the right status, `GET /v1/customers/{id}` reads
//! what `PUT` wrote, every JSON body ends with a newline, and (a property
//! test) no request of any shape, to any route in the OpenAPI document,
//! gets a 5xx.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use reqwest::header::CONTENT_TYPE;
use reqwest::Method;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY};

/// A request and the answer it must get: method, path, key, content type,
/// body, status, code.
type Probe<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    Option<&'a str>,
    Option<String>,
    u16,
    &'a str,
);

/// An answer: status, headers, raw body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// The `error.code`, after checking the error shape and the newline.
    #[track_caller]
    fn error_code(&self) -> String {
        match error_shape(self) {
            Ok(code) => code,
            Err(why) => panic!("{why}"),
        }
    }
}

/// The code of an error answer with the `{"error":{"code","message"}}`
/// shape, a JSON content type and a final newline; else what is wrong.
fn error_shape(answer: &Answer) -> Result<String, String> {
    let what = || format!("{} {:?}", answer.status, answer.text);
    let json_type = answer
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json_type {
        return Err(format!("not application/json: {}", what()));
    }
    if !answer.text.ends_with('\n') {
        return Err(format!("no final newline: {}", what()));
    }
    let body: Value =
        serde_json::from_str(&answer.text).map_err(|e| format!("not JSON ({e}): {}", what()))?;
    let code = body["error"]["code"]
        .as_str()
        .ok_or_else(|| format!("no error.code: {}", what()))?;
    if code.is_empty() || !code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
        return Err(format!("code is not snake_case: {}", what()));
    }
    if !body["error"]["message"].is_string() {
        return Err(format!("no error.message: {}", what()));
    }
    Ok(code.to_owned())
}

async fn send(
    h: &Harness,
    method: Method,
    path: &str,
    key: Option<&str>,
    content_type: Option<&str>,
    body: Option<String>,
) -> Answer {
    let mut request = h.http.request(method, format!("{}{path}", h.base));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(content_type) = content_type {
        request = request.header(CONTENT_TYPE, content_type);
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        text: response.text().await.unwrap(),
    }
}

async fn json_call(h: &Harness, method: Method, path: &str, body: Value) -> Answer {
    send(
        h,
        method,
        path,
        Some(APP_KEY),
        Some("application/json"),
        Some(body.to_string()),
    )
    .await
}

async fn put_customer(h: &Harness, user: &str, body: Value) -> Answer {
    json_call(h, Method::PUT, &format!("/v1/customers/{user}"), body).await
}

async fn an_amount_out_of_range_is_400_invalid_amount_and_counts_nothing(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let answer = put_customer(&h, "u_big", json!({})).await;
    assert_eq!(answer.status, 201, "{}", answer.text);

    // Raw JSON text: 2^64 and beyond do not fit a serde_json number.
    for amount in [
        "9223372036854775808",  // 2^63: once a 500 from the store
        "18446744073709551615", // 2^64 − 1
        "18446744073709551616", // 2^64
        "9007199254740992",     // 2^53, one past the bound
        "-1",
        "0",
        "1.5",
        "1e3",
        "\"5\"",
        "[1]",
    ] {
        for path in [
            "/v1/customers/u_big/usage/generations",
            "/v1/customers/u_big/usage/websites/release",
        ] {
            let body = format!(r#"{{"amount":{amount},"idempotency_key":"k"}}"#);
            let answer = send(
                &h,
                Method::POST,
                path,
                Some(APP_KEY),
                Some("application/json"),
                Some(body),
            )
            .await;
            assert_eq!(
                (answer.status, answer.error_code().as_str()),
                (400, "invalid_amount"),
                "{path} amount {amount}: {}",
                answer.text
            );
        }
    }
    // A number no float holds fails in the JSON parser: a malformed body,
    // whose message names the field.
    let answer = send(
        &h,
        Method::POST,
        "/v1/customers/u_big/usage/generations",
        Some(APP_KEY),
        Some("application/json"),
        Some(r#"{"amount":1e400,"idempotency_key":"k"}"#.to_owned()),
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (400, "invalid_body"),
        "{}",
        answer.text
    );
    assert!(answer.text.contains("amount"), "{}", answer.text);
    // The largest amount is an amount: over the free plan's limit.
    let answer = json_call(
        &h,
        Method::POST,
        "/v1/customers/u_big/usage/generations",
        json!({ "amount": 9_007_199_254_740_991_u64, "idempotency_key": "max" }),
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (402, "quota_exceeded"),
        "{}",
        answer.text
    );
    let (_, ent) = h.entitlements("u_big").await;
    assert_eq!(ent["features"]["generations"]["used"], 0, "{ent:#}");
    h.shutdown().await;
}

async fn put_customer_validates_the_email_and_bounds_every_string(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let cases = [
        (json!({ "email": "not an email" }), "invalid_email", None),
        (json!({ "email": "bob@localhost" }), "invalid_email", None),
        (
            json!({ "email": format!("{}@example.com", "a".repeat(1_000_000)) }),
            "field_too_long",
            Some("email"),
        ),
        (
            json!({ "email": format!("{}@example.com", "a".repeat(243)) }),
            "field_too_long",
            Some("email"),
        ),
        (
            json!({ "name": "n".repeat(257) }),
            "field_too_long",
            Some("name"),
        ),
        (
            json!({ "preferred_currency": "e".repeat(65) }),
            "field_too_long",
            Some("preferred_currency"),
        ),
    ];
    for (body, code, field) in cases {
        let answer = put_customer(&h, "u_strings", body.clone()).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (400, code),
            "{}",
            answer.text
        );
        if let Some(field) = field {
            let message = answer.json()["error"]["message"]
                .as_str()
                .unwrap()
                .to_owned();
            assert!(message.starts_with(&format!("{field} ")), "{message}");
        }
    }
    let answer = h
        .http
        .get(format!("{}/v1/customers/u_strings", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 404, "nothing was stored");

    // At the bounds, and with surrounding whitespace, it is accepted.
    let email = format!("{}@example.com", "a".repeat(64));
    let answer = put_customer(
        &h,
        "u_strings",
        json!({ "email": format!(" {email} "), "name": "n".repeat(256) }),
    )
    .await;
    assert_eq!(answer.status, 201, "{}", answer.text);
    assert_eq!(answer.json()["email"], json!(email));

    // The other bodies with free strings.
    let long = |n: usize| "x".repeat(n);
    let url = |n: usize| format!("https://example.com/{}", "p".repeat(n - 20));
    let checkout = |plan: String, success: String, code: Option<String>| {
        json!({ "plan": plan, "success_url": success, "cancel_url": "https://example.com/c",
                "promotion_code": code })
    };
    let cases = [
        (
            "/v1/customers/u_strings/checkout",
            checkout(long(65), url(100), None),
            "plan",
        ),
        (
            "/v1/customers/u_strings/checkout",
            checkout("pro".into(), url(2049), None),
            "success_url",
        ),
        (
            "/v1/customers/u_strings/checkout",
            checkout("pro".into(), url(100), Some(long(256))),
            "promotion_code",
        ),
        (
            "/v1/customers/u_strings/portal",
            json!({ "return_url": url(5000) }),
            "return_url",
        ),
        (
            "/v1/customers/u_strings/subscription/change",
            json!({ "plan": long(100) }),
            "plan",
        ),
        (
            "/v1/customers/u_strings/subscription/preview",
            json!({ "plan": long(100) }),
            "plan",
        ),
        (
            "/v1/customers/u_strings/usage/generations",
            json!({ "idempotency_key": long(256) }),
            "idempotency_key",
        ),
    ];
    for (path, body, field) in cases {
        let answer = json_call(&h, Method::POST, path, body).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (400, "field_too_long"),
            "{path}: {}",
            answer.text
        );
        let message = answer.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.starts_with(&format!("{field} must be at most ")),
            "{message}"
        );
    }
    let answer = send(
        &h,
        Method::GET,
        &format!("/v1/admin/events?type={}", long(256)),
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (400, "field_too_long"),
        "{}",
        answer.text
    );
    h.shutdown().await;
}

async fn get_customer_answers_what_put_answered(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let put = put_customer(
        &h,
        "u_read",
        json!({ "email": "read@example.com", "name": "Rea D", "preferred_currency": "EUR" }),
    )
    .await;
    assert_eq!(put.status, 201, "{}", put.text);
    let get = send(
        &h,
        Method::GET,
        "/v1/customers/u_read",
        Some(APP_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(get.status, 200, "{}", get.text);
    assert_eq!(get.json(), put.json());
    assert_eq!(get.json()["preferred_currency"], "eur");
    let admin = send(
        &h,
        Method::GET,
        "/v1/customers/u_read",
        Some(ADMIN_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(admin.json(), put.json());

    let cases = [
        (
            "/v1/customers/u_nobody",
            Some(APP_KEY),
            404,
            "customer_not_found",
        ),
        (
            "/v1/customers/bad%20id",
            Some(APP_KEY),
            400,
            "invalid_customer_id",
        ),
        ("/v1/customers/u_read", None, 401, "unauthorized"),
    ];
    for (path, key, status, code) in cases {
        let answer = send(&h, Method::GET, path, key, None, None).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (status, code),
            "{path}: {}",
            answer.text
        );
    }
    let deleted = send(
        &h,
        Method::DELETE,
        "/v1/customers/u_read",
        Some(APP_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text);
    let answer = send(
        &h,
        Method::GET,
        "/v1/customers/u_read",
        Some(APP_KEY),
        None,
        None,
    )
    .await;
    assert_eq!(
        (answer.status, answer.error_code().as_str()),
        (404, "customer_deleted"),
        "{}",
        answer.text
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_wrong_methods_and_rejected_requests_get_the_error_shape() {
    let h = Harness::start(Db::Sqlite, t0(), WebhookKnobs::default()).await;
    put_customer(&h, "u_shape", json!({})).await;
    let usage = "/v1/customers/u_shape/usage/generations";
    let three_mb = format!(r#"{{"idempotency_key":"{}"}}"#, "k".repeat(3 << 20));
    let two_mb_email = format!(r#"{{"email":"{}@example.com"}}"#, "e".repeat(2 << 20));
    let (app, admin, json, text) = (
        Some(APP_KEY),
        Some(ADMIN_KEY),
        Some("application/json"),
        Some("text/plain"),
    );
    let body = |b: &str| Some(b.to_owned());
    #[rustfmt::skip]
    let cases: Vec<Probe> = vec![
        (Method::GET, "/nope", None, None, None, 404, "not_found"),
        (Method::GET, "/v1/customers/u_shape/nope", app, None, None, 404, "not_found"),
        (Method::POST, "/v1/customers/u_shape", app, None, None, 405, "method_not_allowed"),
        (Method::GET, usage, app, None, None, 405, "method_not_allowed"),
        (Method::DELETE, "/openapi.json", None, None, None, 405, "method_not_allowed"),
        (Method::GET, "/webhooks/stripe", None, None, None, 405, "method_not_allowed"),
        // The app API's body limit (1 MiB), on routes that read JSON.
        (Method::POST, usage, app, json, Some(three_mb), 413, "payload_too_large"),
        (Method::PUT, "/v1/customers/u_shape", app, json, Some(two_mb_email), 413, "payload_too_large"),
        // Extractor rejections.
        (Method::POST, usage, app, json, body("{not json"), 400, "invalid_body"),
        (Method::POST, usage, app, json, body(r#"{"colour":1}"#), 400, "invalid_body"),
        (Method::POST, usage, app, json, body("[]"), 400, "invalid_body"),
        (Method::POST, usage, app, text, body(r#"{"idempotency_key":"k"}"#), 415, "unsupported_media_type"),
        (Method::POST, usage, app, None, None, 415, "unsupported_media_type"),
        (Method::GET, "/v1/customers/%FF%FE/entitlements", app, None, None, 400, "invalid_request"),
        (Method::GET, "/v1/admin/events?limit=-1", admin, None, None, 400, "invalid_query"),
        (Method::GET, "/v1/admin/audit", admin, None, None, 400, "invalid_query"),
    ];
    for (method, path, key, content_type, body, status, code) in cases {
        let answer = send(&h, method.clone(), path, key, content_type, body).await;
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (status, code),
            "{method} {path}: {}",
            &answer.text[..answer.text.len().min(300)]
        );
        if status == 405 {
            let allow = answer
                .headers
                .get("allow")
                .map(|v| v.to_str().unwrap().to_owned());
            assert!(
                allow.is_some_and(|a| !a.is_empty()),
                "{method} {path}: no Allow"
            );
        }
    }
    let answer = send(
        &h,
        Method::POST,
        "/v1/customers/u_shape",
        Some(APP_KEY),
        None,
        None,
    )
    .await;
    let allow = answer.headers["allow"].to_str().unwrap().to_owned();
    for method in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_body_ends_with_a_newline() {
    let h = Harness::start(Db::Sqlite, t0(), WebhookKnobs::default()).await;
    let put = put_customer(&h, "u_nl", json!({ "email": "nl@example.com" })).await;
    let answers = [
        put,
        send(
            &h,
            Method::GET,
            "/v1/customers/u_nl",
            Some(APP_KEY),
            None,
            None,
        )
        .await,
        send(
            &h,
            Method::GET,
            "/v1/customers/u_nl/entitlements",
            Some(APP_KEY),
            None,
            None,
        )
        .await,
        json_call(
            &h,
            Method::POST,
            "/v1/customers/u_nl/usage/generations",
            json!({ "idempotency_key": "nl" }),
        )
        .await,
        send(
            &h,
            Method::GET,
            "/v1/admin/events",
            Some(ADMIN_KEY),
            None,
            None,
        )
        .await,
        send(&h, Method::GET, "/openapi.json", None, None, None).await,
        send(&h, Method::GET, "/healthz", None, None, None).await,
        send(&h, Method::GET, "/readyz", None, None, None).await,
        send(&h, Method::GET, "/v1/customers/u_nl", None, None, None).await,
        send(
            &h,
            Method::POST,
            "/webhooks/stripe",
            None,
            None,
            Some("{}".into()),
        )
        .await,
    ];
    for answer in &answers {
        let content_type = answer.headers[CONTENT_TYPE].to_str().unwrap();
        assert!(
            content_type.starts_with("application/json"),
            "{content_type}"
        );
        assert!(
            answer.text.ends_with("}\n") && !answer.text.ends_with("\n\n"),
            "{} {:?}",
            answer.status,
            &answer.text[answer.text.len().saturating_sub(80)..]
        );
        answer.json();
    }
    h.shutdown().await;
}

on_both_databases!(
    an_amount_out_of_range_is_400_invalid_amount_and_counts_nothing,
    put_customer_validates_the_email_and_bounds_every_string,
    get_customer_answers_what_put_answered,
    no_request_to_any_documented_route_gets_a_5xx,
);

// ----------------------------------------------------------- property test

/// One generated request.
#[derive(Debug, Clone)]
struct Case {
    method: Method,
    path: String,
    key: Option<&'static str>,
    content_type: Option<&'static str>,
    body: Option<String>,
}

/// What the document says a body field holds.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Integer,
    Text,
    Other,
}

/// A documented operation: method, templated path, query parameter names
/// and the fields of its JSON body's schema.
#[derive(Debug, Clone)]
struct Operation {
    method: Method,
    path: String,
    query: Vec<String>,
    fields: Vec<(String, Kind)>,
}

/// Every operation of the served OpenAPI document, so a new route is
/// covered without touching this test.
fn operations(doc: &Value) -> Vec<Operation> {
    let resolve = |schema: &Value| -> Value {
        match schema["$ref"].as_str() {
            Some(r) => doc
                .pointer(r.trim_start_matches('#'))
                .cloned()
                .unwrap_or(Value::Null),
            None => schema.clone(),
        }
    };
    let kind = |schema: &Value| {
        let types = match &schema["type"] {
            Value::Array(types) => types.clone(),
            one => vec![one.clone()],
        };
        if types.contains(&json!("integer")) || types.contains(&json!("number")) {
            Kind::Integer
        } else if types.contains(&json!("string")) {
            Kind::Text
        } else {
            Kind::Other
        }
    };
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Ok(method) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let query = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_owned))
                .collect();
            let schema = resolve(&op["requestBody"]["content"]["application/json"]["schema"]);
            let fields = schema["properties"]
                .as_object()
                .map(|p| p.iter().map(|(k, v)| (k.clone(), kind(v))).collect())
                .unwrap_or_default();
            out.push(Operation {
                method,
                path: path.clone(),
                query,
                fields,
            });
        }
    }
    out
}

/// Integers at the edges of the ranges servers and databases use, and
/// numbers no serde_json value holds.
const EDGE_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "1.5",
    "1e3",
    "1e400",
    "9007199254740991",
    "9007199254740992",
    "2147483648",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775809",
];

/// An integer as JSON text: mostly an edge, else any 64-bit value.
fn integer() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => proptest::sample::select(EDGE_NUMBERS).prop_map(str::to_owned),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
    ]
}

/// Strings that mean something to billd (catalog names, URLs, codes) or
/// sit at a bound, next to arbitrary text.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("pro".to_owned()),
        1 => Just("standard".to_owned()),
        1 => Just("free".to_owned()),
        1 => Just("eur".to_owned()),
        1 => Just("usd".to_owned()),
        2 => Just("https://example.com/done".to_owned()),
        1 => Just("LAUNCH20".to_owned()),
        1 => Just("bob@example.com".to_owned()),
        1 => Just(String::new()),
        1 => proptest::sample::select(vec![64usize, 65, 255, 256, 257, 2049, 3000])
            .prop_map(|n| "x".repeat(n)),
        4 => any::<String>(),
        2 => "[a-z_]{1,12}",
    ]
}

fn quoted(s: String) -> String {
    Value::String(s).to_string()
}

/// Any JSON value as text.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        integer(),
        any::<f64>().prop_map(|f| json!(f).to_string()),
        text().prop_map(quoted),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((text(), inner), 0..4).prop_map(|pairs| {
                let fields: Vec<String> = pairs
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", quoted(k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

/// A value for a field: mostly of the documented kind, else anything.
fn field_value(kind: Kind) -> BoxedStrategy<String> {
    match kind {
        Kind::Integer => prop_oneof![4 => integer(), 1 => json_text()].boxed(),
        Kind::Text => prop_oneof![4 => text().prop_map(quoted), 1 => json_text()].boxed(),
        Kind::Other => json_text().boxed(),
    }
}

/// A body for an operation: mostly an object of its schema's fields (each
/// present or not, with any value, sometimes one field more), else any
/// JSON, else not JSON at all, else none.
fn body(fields: Vec<(String, Kind)>) -> impl Strategy<Value = Option<String>> {
    let values: Vec<_> = fields
        .iter()
        .map(|(name, kind)| {
            let name = name.clone();
            (proptest::bool::weighted(0.8), field_value(*kind)).prop_map(move |(present, v)| {
                present.then(|| format!("{}:{v}", quoted(name.clone())))
            })
        })
        .collect();
    let object =
        (values, proptest::option::weighted(0.1, json_text())).prop_map(|(values, extra)| {
            let mut parts: Vec<String> = values.into_iter().flatten().collect();
            if let Some(extra) = extra {
                parts.push(format!("\"extra\":{extra}"));
            }
            Some(format!("{{{}}}", parts.join(",")))
        });
    prop_oneof![
        8 => object,
        2 => json_text().prop_map(Some),
        1 => Just(None),
        1 => any::<String>().prop_map(Some),
        1 => Just(Some("{\"a\":".to_owned())),
    ]
}

/// A path segment for `{id}` or `{feature}`: mostly one that exists.
fn segment(known: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![
        12 => proptest::sample::select(known).prop_map(str::to_owned),
        1 => Just("%FF%FE".to_owned()),
        1 => Just("bad%20id".to_owned()),
        1 => Just("a".repeat(200)),
        1 => "[a-zA-Z0-9_.:@-]{1,20}",
        1 => any::<String>()
            .prop_map(|s| url::form_urlencoded::byte_serialize(s.as_bytes()).collect()),
    ]
}

/// A query string: the operation's parameters and others, any values.
fn query(names: Vec<String>) -> impl Strategy<Value = String> {
    let names = if names.is_empty() {
        vec!["limit".to_owned()]
    } else {
        names
    };
    let name = prop_oneof![
        3 => proptest::sample::select(names),
        1 => "[a-z]{1,8}",
    ];
    let value = prop_oneof![
        integer(),
        Just("u_prop".to_owned()),
        Just("unlinked".to_owned()),
        text(),
    ];
    proptest::collection::vec((name, value), 0..4).prop_map(|pairs| {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            query.append_pair(&k, &v);
        }
        query.finish()
    })
}

fn case(op: Operation) -> impl Strategy<Value = Case> {
    const IDS: &[&str] = &["u_prop", "u_prop", "u_sub", "u_sub", "u_gone", "u_missing"];
    const FEATURES: &[&str] = &["generations", "websites"];
    let key = prop_oneof![
        6 => Just(Some(ADMIN_KEY)),
        3 => Just(Some(APP_KEY)),
        1 => Just(None),
    ];
    let content_type = prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ];
    let other_methods = vec![
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ];
    let method = prop_oneof![
        9 => Just(op.method.clone()),
        1 => proptest::sample::select(other_methods),
    ];
    (
        method,
        segment(IDS),
        segment(FEATURES),
        query(op.query.clone()),
        key,
        content_type,
        body(op.fields.clone()),
    )
        .prop_map(
            move |(method, id, feature, query, key, content_type, body)| {
                // Deleting the customers the other cases go deep with would
                // leave every later case at `customer_deleted`.
                let id = if method == Method::DELETE && (id == "u_prop" || id == "u_sub") {
                    "u_gone".to_owned()
                } else {
                    id
                };
                let mut path = op.path.replace("{id}", &id).replace("{feature}", &feature);
                if !query.is_empty() {
                    path = format!("{path}?{query}");
                }
                Case {
                    method,
                    path,
                    key,
                    content_type,
                    body,
                }
            },
        )
}

/// Requests per documented operation: every route gets its share, and the
/// whole test stays within a few seconds per database.
const CASES_PER_OPERATION: u32 = 128;

async fn no_request_to_any_documented_route_gets_a_5xx(db: Db) {
    let h = Arc::new(Harness::start(db, t0(), WebhookKnobs::default()).await);
    // A customer with a profile, one with a paid subscription (so the
    // Stripe-calling routes get past their first checks), one deleted.
    put_customer(&h, "u_prop", json!({ "email": "prop@example.com" })).await;
    let (_, cus) = h.customer("u_sub", "pm_card_visa", true).await;
    h.subscribe("u_sub", &cus, &h.pro_price);
    h.wait_for("u_sub", "pro access", |e| e["plan"] == "pro")
        .await;
    put_customer(&h, "u_gone", json!({})).await;
    send(
        &h,
        Method::DELETE,
        "/v1/customers/u_gone",
        Some(APP_KEY),
        None,
        None,
    )
    .await;

    let doc = send(&h, Method::GET, "/openapi.json", None, None, None)
        .await
        .json();
    let ops = operations(&doc);
    assert!(ops.len() >= 20, "{ops:?}");
    let usage = ops
        .iter()
        .find(|o| o.path == "/v1/customers/{id}/usage/{feature}")
        .unwrap();
    assert!(
        matches!(usage.fields.as_slice(), [(a, Kind::Integer), (k, Kind::Text)] if a == "amount" && k == "idempotency_key"),
        "{usage:?}"
    );

    let runtime = tokio::runtime::Handle::current();
    let harness = h.clone();
    let result = tokio::task::spawn_blocking(move || {
        for op in ops {
            let mut runner = TestRunner::new(Config {
                cases: CASES_PER_OPERATION,
                failure_persistence: None,
                // A failing case is shrunk over real HTTP; keep that short.
                max_shrink_iters: 64,
                ..Config::default()
            });
            let what = format!("{} {}", op.method, op.path);
            runner
                .run(&case(op), |case| {
                    let answer = runtime.block_on(send(
                        &harness,
                        case.method.clone(),
                        &case.path,
                        case.key,
                        case.content_type,
                        case.body.clone(),
                    ));
                    if answer.status >= 500 {
                        return Err(TestCaseError::fail(format!(
                            "{} {}",
                            answer.status, answer.text
                        )));
                    }
                    if answer.status >= 400 {
                        error_shape(&answer).map_err(TestCaseError::fail)?;
                    }
                    Ok(())
                })
                .map_err(|e| format!("{what}: {e}"))?;
        }
        Ok::<(), String>(())
    })
    .await
    .unwrap();
    if let Err(e) = result {
        panic!("{e}");
    }
    match Arc::try_unwrap(h) {
        Ok(h) => h.shutdown().await,
        Err(_) => panic!("the harness is still shared"),
    }
}
