//! The one customer gate: once an account is deleted, every
//! `/v1/customers/{id}/…` route answers 404 `customer_deleted` before it
//! reads, counts or calls Stripe, on both databases.

use std::time::{Duration, Instant};

use billd_core::CustomerId;
use billd_store::OutboxFilter;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, APP_KEY};

async fn send(h: &Harness, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = h
        .http
        .request(method.parse().unwrap(), format!("{}{path}", h.base))
        .bearer_auth(APP_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn stripe_requests(h: &Harness) -> u64 {
    h.sim.with_state(|s| s.request_count)
}

/// Waits until the sim has seen no request for a while.
async fn stripe_quiet(h: &Harness) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = stripe_requests(h);
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = stripe_requests(h);
        if now == seen {
            return now;
        }
        assert!(Instant::now() < deadline, "Stripe never went quiet");
        seen = now;
    }
}

async fn every_per_customer_route_answers_customer_deleted_and_nothing_reaches_stripe(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_clock, cus) = h.customer("u_gate", "pm_card_visa", true).await;
    h.subscribe("u_gate", &cus, &h.pro_price);
    h.wait_for("u_gate", "pro access", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;
    // Stripe refuses the deletion's outbox work, which then waits for its
    // backoff on billd's (manual) clock: no Stripe call is due after it.
    h.sim.update_config(|c| c.faults.error_rate = 1.0);
    let (status, deleted) = send(&h, "DELETE", "/v1/customers/u_gate", None).await;
    assert_eq!(status, 200, "{deleted:#}");
    let id = CustomerId::parse("u_gate").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = h
            .store
            .list_outbox(&OutboxFilter {
                customer_id: Some(id.clone()),
                ..OutboxFilter::default()
            })
            .await
            .unwrap();
        if rows.iter().any(|row| row.last_error.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stripe works again: a route that got past the gate would now succeed
    // there, and be counted.
    h.sim.update_config(|c| c.faults.error_rate = 0.0);
    let before = stripe_quiet(&h).await;
    let urls = json!({ "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no" });
    let checkout = json!({ "plan": "standard", "success_url": urls["success_url"], "cancel_url": urls["cancel_url"] });
    let routes: Vec<(&str, &str, Option<Value>)> = vec![
        ("PUT", "", Some(json!({ "email": "back@example.com" }))),
        ("GET", "", None),
        ("GET", "/entitlements", None),
        ("POST", "/checkout", Some(checkout)),
        (
            "POST",
            "/portal",
            Some(json!({ "return_url": "https://app.test/account" })),
        ),
        (
            "POST",
            "/subscription/preview",
            Some(json!({ "plan": "standard" })),
        ),
        (
            "POST",
            "/subscription/change",
            Some(json!({ "plan": "standard" })),
        ),
        ("POST", "/subscription/cancel", None),
        ("POST", "/subscription/resume", None),
        (
            "POST",
            "/usage/generations",
            Some(json!({ "idempotency_key": "after-1" })),
        ),
        (
            "POST",
            "/usage/websites/release",
            Some(json!({ "idempotency_key": "after-2" })),
        ),
    ];

    let mut answers = Vec::new();
    for (method, suffix, body) in routes {
        let (status, answer) =
            send(&h, method, &format!("/v1/customers/u_gate{suffix}"), body).await;
        answers.push((
            format!("{method} {suffix}"),
            status,
            answer["error"]["code"].clone(),
        ));
    }

    for (route, status, code) in &answers {
        assert_eq!(
            (*status, code),
            (404, &json!("customer_deleted")),
            "{route}: {answers:?}"
        );
    }
    assert_eq!(stripe_requests(&h), before, "a route reached Stripe");
    let stored = h.store.get_customer(&id).await.unwrap().unwrap();
    assert_eq!((stored.email, stored.deleted_at.is_some()), (None, true));
    h.shutdown().await;
}

on_both_databases!(every_per_customer_route_answers_customer_deleted_and_nothing_reaches_stripe);
