//! The API client against a loopback HTTP server that answers with scripted
//! Stripe responses, to pin down the retry and error policy exactly.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use billd_stripe::client::{
    ClientConfig, Params, RecordedRequest, Recorder, StripeClient, StripeError,
};
use secrecy::SecretString;
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct Seen {
    requests: Arc<Mutex<Vec<(HeaderMap, String, String)>>>,
    script: Arc<Mutex<Vec<Response>>>,
}

async fn handler(
    State(seen): State<Seen>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    seen.requests
        .lock()
        .unwrap()
        .push((headers, uri.to_string(), body));
    let mut script = seen.script.lock().unwrap();
    if script.is_empty() {
        return (StatusCode::OK, axum::Json(json!({"id": "ok"}))).into_response();
    }
    script.remove(0)
}

async fn server(script: Vec<Response>) -> (String, Seen) {
    let seen = Seen::default();
    *seen.script.lock().unwrap() = script;
    let app = Router::new()
        .fallback(any(handler))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn client(base: &str) -> StripeClient {
    let mut config = ClientConfig::new(base, SecretString::from("sk_test_123"));
    config.initial_backoff = Duration::from_millis(5);
    config.max_backoff = Duration::from_millis(50);
    StripeClient::new(config).unwrap()
}

fn error(status: StatusCode, kind: &str, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"type": kind, "code": code, "message": format!("{code} happened"), "decline_code": "insufficient_funds", "param": "source"}})),
    )
        .into_response()
}

#[tokio::test]
async fn server_errors_are_retried_with_the_same_idempotency_key() {
    let (base, seen) = server(vec![
        error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "boom"),
        error(StatusCode::SERVICE_UNAVAILABLE, "api_error", "boom"),
    ])
    .await;

    let got = client(&base)
        .post(
            "/v1/customers",
            &Params::new().set("metadata[billd_customer_id]", "u1"),
            None,
        )
        .await
        .unwrap();

    assert_eq!(got, json!({"id": "ok"}));
    let reqs = seen.requests.lock().unwrap();
    assert_eq!(reqs.len(), 3);
    let keys: Vec<_> = reqs
        .iter()
        .map(|(h, _, _)| h["idempotency-key"].to_str().unwrap().to_owned())
        .collect();
    assert!(keys.iter().all(|k| k == &keys[0]), "keys differ: {keys:?}");
    assert_eq!(reqs[0].0["stripe-version"], billd_stripe::API_VERSION);
    assert_eq!(reqs[0].0["authorization"], "Bearer sk_test_123");
    assert_eq!(reqs[0].2, "metadata%5Bbilld_customer_id%5D=u1");
}

#[tokio::test]
async fn the_recorder_sees_each_call_once_with_its_parameters() {
    // A retried call is one request to record: the check is of what billd
    // asks, not of how often the network made it ask.
    let (base, seen) = server(vec![error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "api_error",
        "boom",
    )])
    .await;
    let log: Arc<Mutex<Vec<RecordedRequest>>> = Arc::default();
    let sink = log.clone();
    let mut config = ClientConfig::new(&base, SecretString::from("sk_test_123"));
    config.initial_backoff = Duration::from_millis(5);
    config.recorder = Some(Recorder::new(move |r| sink.lock().unwrap().push(r.clone())));
    let client = StripeClient::new(config).unwrap();

    client
        .post(
            "/v1/subscriptions/sub_1",
            &Params::new().set("items[0][price]", "price_1"),
            None,
        )
        .await
        .unwrap();
    client
        .get(
            "/v1/invoices/in_1",
            &Params::new().set("expand[]", "payments"),
        )
        .await
        .unwrap();

    assert_eq!(seen.requests.lock().unwrap().len(), 3);
    let pair = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    assert_eq!(
        *log.lock().unwrap(),
        vec![
            RecordedRequest {
                method: "POST".into(),
                path: "/v1/subscriptions/sub_1".into(),
                params: pair("items[0][price]", "price_1"),
            },
            RecordedRequest {
                method: "GET".into(),
                path: "/v1/invoices/in_1".into(),
                params: pair("expand[]", "payments"),
            },
        ]
    );
}

#[tokio::test]
async fn a_card_error_is_returned_at_once_with_its_codes() {
    let (base, seen) = server(vec![error(
        StatusCode::PAYMENT_REQUIRED,
        "card_error",
        "card_declined",
    )])
    .await;

    let err = client(&base)
        .post("/v1/invoices/in_1/pay", &Params::new(), Some("k1"))
        .await
        .unwrap_err();

    let StripeError::Api(api) = err else {
        panic!("expected an api error, got {err:?}")
    };
    assert_eq!(api.status, 402);
    assert_eq!(api.kind, "card_error");
    assert_eq!(api.code.as_deref(), Some("card_declined"));
    assert_eq!(api.decline_code.as_deref(), Some("insufficient_funds"));
    assert_eq!(api.param.as_deref(), Some("source"));
    assert_eq!(seen.requests.lock().unwrap().len(), 1);
    assert_eq!(seen.requests.lock().unwrap()[0].0["idempotency-key"], "k1");
}

#[tokio::test]
async fn stripe_should_retry_false_stops_retries_and_429_retry_after_is_honoured() {
    let mut no_retry = error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "x");
    no_retry
        .headers_mut()
        .insert("stripe-should-retry", "false".parse().unwrap());
    let (base, seen) = server(vec![no_retry]).await;
    let err = client(&base)
        .get("/v1/customers/cus_1", &Params::new())
        .await;
    assert!(matches!(err, Err(StripeError::Unavailable(_))));
    assert_eq!(seen.requests.lock().unwrap().len(), 1);

    let mut limited = error(
        StatusCode::TOO_MANY_REQUESTS,
        "invalid_request_error",
        "rate_limit",
    );
    limited
        .headers_mut()
        .insert("retry-after", "0".parse().unwrap());
    let (base, seen) = server(vec![limited]).await;
    let ok = client(&base)
        .get("/v1/customers/cus_1", &Params::new())
        .await;
    assert!(ok.is_ok());
    assert_eq!(seen.requests.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn retries_give_up_after_the_configured_count() {
    let script = (0..10)
        .map(|_| error(StatusCode::BAD_GATEWAY, "api_error", "down"))
        .collect();
    let (base, seen) = server(script).await;

    let err = client(&base)
        .get("/v1/subscriptions/sub_1", &Params::new())
        .await
        .unwrap_err();

    assert!(matches!(err, StripeError::Unavailable(_)), "{err:?}");
    // One attempt plus three retries.
    assert_eq!(seen.requests.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable() {
    // Bind then drop, so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client(&format!("http://127.0.0.1:{port}"))
        .get("/v1/customers", &Params::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StripeError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn list_all_follows_pages_with_starting_after() {
    let page = |ids: &[&str], more: bool| {
        let data: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
        (
            StatusCode::OK,
            axum::Json(json!({"object": "list", "data": data, "has_more": more})),
        )
            .into_response()
    };
    let (base, seen) = server(vec![
        page(&["sub_1", "sub_2"], true),
        page(&["sub_3"], false),
    ])
    .await;

    let all = client(&base)
        .list_all(
            "/v1/subscriptions",
            &Params::new().set("status", "all"),
            1000,
        )
        .await
        .unwrap();

    let ids: Vec<_> = all.iter().map(|o| o["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["sub_1", "sub_2", "sub_3"]);
    let reqs = seen.requests.lock().unwrap();
    assert!(reqs[0].1.contains("status=all") && reqs[0].1.contains("limit=100"));
    assert!(reqs[1].1.contains("starting_after=sub_2"), "{}", reqs[1].1);
}

#[tokio::test]
async fn an_https_api_base_is_spoken_to_over_tls() {
    // api.stripe.com is https only: the client must open a TLS handshake
    // (a record starting 0x16 0x03), not send plain HTTP or refuse the scheme.
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first_bytes = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut head = [0u8; 2];
        socket.read_exact(&mut head).await.unwrap();
        head
    });
    let mut config = ClientConfig::new(
        format!("https://localhost:{}", addr.port()),
        SecretString::from("sk_test_123"),
    );
    config.max_retries = 0;
    config.request_timeout = Duration::from_secs(2);
    let client = StripeClient::new(config).unwrap();
    let call = tokio::spawn(async move { client.get("/v1/customers/cus_1", &Params::new()).await });
    let head = tokio::time::timeout(Duration::from_secs(5), first_bytes)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head, [0x16, 0x03], "a TLS ClientHello record");
    // The server never answers the handshake: the call fails, it does not hang.
    let result = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap()
        .unwrap();
    assert!(result.is_err());
}
