//! Shared helpers: a sim with frozen time, request shorthands, a webhook receiver.

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing;
use axum::Router;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use stripe_sim::{Sim, SimConfig};

/// 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600;
pub const DAY: i64 = 86_400;

pub fn sim() -> Checked {
    let sim = Sim::new(SimConfig {
        seed: 42,
        frozen_time: Some(T0),
        ..SimConfig::default()
    });
    sim.record_exchanges();
    Checked(sim)
}

/// A [`Sim`] whose every successful answer and every event is checked
/// against Stripe's definitions when the test ends
/// ([`crate::conformance::conformance`]): the whole suite, not one
/// scenario, is held to the shapes Stripe publishes.
pub struct Checked(pub Sim);

impl std::ops::Deref for Checked {
    type Target = Sim;
    fn deref(&self) -> &Sim {
        &self.0
    }
}

impl Drop for Checked {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        assert_conforms(&self.0);
    }
}

/// Panics naming every object `sim` answered or delivered since it began
/// recording that Stripe's definitions refuse.
pub fn assert_conforms(sim: &Sim) {
    let (_, _, problems) = crate::conformance::conformance(sim);
    let report: Vec<String> = problems
        .iter()
        .map(|(p, n)| format!("{p} (×{n})"))
        .collect();
    assert!(
        report.is_empty(),
        "objects Stripe's definitions refuse:\n{}",
        report.join("\n")
    );
}

#[track_caller]
pub fn ok(sim: &Sim, method: &str, path: &str, form: &str) -> Value {
    let (status, body) = sim.call(method, path, form);
    assert_eq!(status, 200, "{method} {path} {form} → {status}: {body:#}");
    body
}

#[track_caller]
pub fn post(sim: &Sim, path: &str, form: &str) -> Value {
    ok(sim, "POST", path, form)
}

#[track_caller]
pub fn get(sim: &Sim, path: &str) -> Value {
    ok(sim, "GET", path, "")
}

pub fn id(v: &Value) -> String {
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {v:#}"))
        .to_string()
}

/// A monthly price of 30.00 EUR (with a USD option) on a "Standard" product.
pub fn standard_price(sim: &Sim) -> String {
    let prod = post(sim, "/v1/products", "name=Standard");
    id(&post(
        sim,
        "/v1/prices",
        &format!(
            "product={}&currency=eur&unit_amount=3000&recurring[interval]=month&currency_options[usd][unit_amount]=3500&lookup_key=standard_monthly",
            id(&prod)
        ),
    ))
}

pub fn pro_price(sim: &Sim) -> String {
    id(&post(
        sim,
        "/v1/prices",
        "product_data[name]=Pro&currency=eur&unit_amount=5000&recurring[interval]=month",
    ))
}

pub fn event_types(sim: &Sim) -> Vec<String> {
    sim.events()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

pub fn events_since(sim: &Sim, n: usize) -> Vec<String> {
    event_types(sim).into_iter().skip(n).collect()
}

/// A customer on a fresh test clock at T0, with `pm` as default payment method.
pub fn clocked_customer(sim: &Sim, pm: &str) -> (String, String) {
    let clock = id(&post(
        sim,
        "/v1/test_helpers/test_clocks",
        &format!("frozen_time={T0}"),
    ));
    let cus = id(&post(
        sim,
        "/v1/customers",
        &format!("email=c@example.com&test_clock={clock}"),
    ));
    if !pm.is_empty() {
        let pm = id(&post(
            sim,
            &format!("/v1/payment_methods/{pm}/attach"),
            &format!("customer={cus}"),
        ));
        post(
            sim,
            &format!("/v1/customers/{cus}"),
            &format!("invoice_settings[default_payment_method]={pm}"),
        );
    }
    (clock, cus)
}

pub fn advance(sim: &Sim, clock: &str, to: i64) {
    post(
        sim,
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &format!("frozen_time={to}"),
    );
}

/// A webhook receiver on a random loopback port that records every delivery and
/// answers 500 to the first `fail_first` of them.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<(String, String)>>>,
}

impl Receiver {
    pub async fn start(fail_first: usize) -> Self {
        let got: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let (g, s) = (got.clone(), seen.clone());
        let g2 = got.clone();
        let app = Router::new().route(
            "/hook",
            routing::get(move || {
                let g2 = g2.clone();
                async move { axum::Json(g2.lock().unwrap().clone()) }
            })
            .post(move |headers: HeaderMap, body: Bytes| {
                let (g, s) = (g.clone(), s.clone());
                async move {
                    let sig = headers
                        .get("stripe-signature")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let n = s.fetch_add(1, Ordering::SeqCst);
                    g.lock()
                        .unwrap()
                        .push((sig, String::from_utf8_lossy(&body).to_string()));
                    if n < fail_first {
                        StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, got }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    /// Waits until `pred` holds over the deliveries, or fails after 10 s.
    pub async fn wait_for(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        for _ in 0..400 {
            let b = self.bodies();
            if pred(&b) {
                return b;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!(
            "timed out waiting for {what}; got {:?}",
            self.bodies()
                .iter()
                .map(|e| e["type"].clone())
                .collect::<Vec<_>>()
        );
    }
}

/// The start both shape scenarios share: a `TEN` promotion code (10 % off),
/// a webhook endpoint for every event, and a clocked customer paying with
/// `pm_card_createDispute` who completed a subscription Checkout session
/// for `price` with that code; returns (clock, customer, session).
pub fn paid_checkout_with_promotion(sim: &Sim, price: &str) -> (String, String, Value) {
    post(sim, "/v1/coupons", "id=C10&percent_off=10&duration=forever");
    let promo = post(
        sim,
        "/v1/promotion_codes",
        "promotion[type]=coupon&promotion[coupon]=C10&code=TEN",
    );
    post(
        sim,
        "/v1/webhook_endpoints",
        "url=http://127.0.0.1:9/x&enabled_events[]=*",
    );
    let (clock, cus) = clocked_customer(sim, "pm_card_createDispute");
    let cs = post(
        sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&customer={cus}&line_items[0][price]={price}&success_url=https://a.test&discounts[0][promotion_code]={}", id(&promo)),
    );
    post(
        sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "payment_method=pm_card_createDispute",
    );
    (clock, cus, cs)
}

/// The emulator served on a loopback port, webhook retries in milliseconds,
/// for the official SDKs' scenarios.
pub async fn serve_for_sdk(seed: u64) -> stripe_sim::SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = stripe_sim::serve(
        listener,
        SimConfig {
            seed,
            time_scale: 0.0005,
            ..SimConfig::default()
        },
    )
    .await
    .unwrap();
    // What the SDK's scenario gets back is held to Stripe's shapes too.
    handle.sim.record_exchanges();
    handle
}

/// Runs an SDK scenario script to its end; its stdout, or a panic with
/// both outputs when it failed.
pub async fn run_scenario(command: &mut tokio::process::Command, what: &str) -> String {
    let out = command.output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} scenario failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
