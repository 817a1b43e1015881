//! The admin API behind the operator console: the overview, customer
//! search with cursors, everything about one customer, a resync from
//! Stripe, and replaying events by filter.

use billd_stripe::webhook::sign;
use serde_json::{json, Value};

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY};

async fn admin_post(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    let response = h
        .http
        .post(format!("{}{path}", h.base))
        .bearer_auth(ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put_customer(h: &Harness, user: &str, email: &str) {
    let response = h
        .http
        .put(format!("{}/v1/customers/{user}", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A paid customer `u_ada` with its Stripe customer and subscription.
pub(crate) async fn paid(h: &Harness) -> (String, String) {
    let (_, cus) = h.customer("u_ada", "pm_card_visa", true).await;
    let sub = h.subscribe("u_ada", &cus, &h.pro_price)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.wait_for("u_ada", "pro", |e| e["plan"] == "pro").await;
    (cus, sub)
}

async fn customers_are_found_by_any_id_and_paged_with_cursors(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let (cus, sub) = paid(&h).await;
    for (user, email) in [
        ("u_bob", "Bob@Example.com"),
        ("u_cy", "cy@x.io"),
        ("v_dee", "dee@x.io"),
    ] {
        put_customer(&h, user, email).await;
    }
    let search = |query: &str| format!("/v1/admin/customers?query={query}");
    for (query, expected) in [
        ("u_", vec!["u_ada", "u_bob", "u_cy"]),
        ("u_ada", vec!["u_ada"]),
        ("bob%40example", vec!["u_bob"]),
        ("BOB", vec!["u_bob"]),
        (cus.as_str(), vec!["u_ada"]),
        (sub.as_str(), vec!["u_ada"]),
        ("nobody", vec![]),
    ] {
        let (status, page) = h.admin_get(&search(query), Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(ids(&page), expected, "{query}");
        assert_eq!(page["next_cursor"], Value::Null);
    }
    // Every customer once, two per page, in id order.
    let mut seen = Vec::new();
    let mut path = "/v1/admin/customers?limit=2".to_owned();
    loop {
        let (status, page) = h.admin_get(&path, Some(ADMIN_KEY)).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/admin/customers?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["u_ada", "u_bob", "u_cy", "v_dee"]);

    let (status, body) = h
        .admin_get(&search(&"x".repeat(256)), Some(ADMIN_KEY))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("field_too_long"))
    );
    let (status, body) = h
        .admin_get("/v1/admin/customers?cursor=bad%20id", Some(ADMIN_KEY))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_customer_id"))
    );
    let (status, _) = h.admin_get(&search("u_"), Some(APP_KEY)).await;
    assert_eq!(status, 403);
    h.shutdown().await;
}

async fn one_customer_shows_entitlements_events_audit_and_emails(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let (cus, sub) = paid(&h).await;
    let (status, view) = h
        .admin_get("/v1/admin/customers/u_ada", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["customer"]["stripe_customer_id"], json!(cus));
    assert_eq!(view["customer"]["email"], "u_ada@example.com");
    assert_eq!(view["entitlements"]["plan"], "pro");
    assert!(view["state"]["subscriptions"][&sub].is_object(), "{view:#}");
    let events = view["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "customer.subscription.created"),
        "{events:#?}"
    );
    // Its Stripe customer's events, and those naming none whose object is
    // its own (an invoice payment names only its invoice).
    assert!(events
        .iter()
        .all(|e| e["stripe_customer"] == json!(cus) || e["stripe_customer"].is_null()));
    assert!(!view["audit"].as_array().unwrap().is_empty());
    assert!(view["outbox"]
        .as_array()
        .unwrap()
        .iter()
        .any(|row| row["kind"] == "email"));

    let (status, body) = h
        .admin_get("/v1/admin/customers/u_none", Some(ADMIN_KEY))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("customer_not_found"))
    );
    h.shutdown().await;
}

async fn a_resync_applies_what_stripe_holds_when_no_webhook_came(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let (_, sub) = paid(&h).await;
    // Webhooks stop; the subscription changes at Stripe.
    let endpoints = h.stripe("GET", "/v1/webhook_endpoints", "");
    let endpoint = endpoints["data"][0]["id"].as_str().unwrap();
    h.stripe(
        "POST",
        &format!("/v1/webhook_endpoints/{endpoint}"),
        "disabled=true",
    );
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{sub}"),
        "cancel_at_period_end=true",
    );
    let (_, before) = h.entitlements("u_ada").await;
    assert_eq!(before["cancel_at_period_end"], false);

    let (status, resynced) = admin_post(&h, "/v1/admin/customers/u_ada/resync", json!({})).await;
    assert_eq!(status, 200, "{resynced}");
    assert_eq!(resynced["subscriptions"], json!([sub]));
    assert_eq!(resynced["applied"], true);
    assert_eq!(resynced["entitlements"]["cancel_at_period_end"], true);
    let (_, after) = h.entitlements("u_ada").await;
    assert_eq!(after["cancel_at_period_end"], true);
    // Again: nothing new, the same answer.
    let (status, again) = admin_post(&h, "/v1/admin/customers/u_ada/resync", json!({})).await;
    assert_eq!(
        (status, &again["entitlements"]),
        (200, &resynced["entitlements"])
    );

    put_customer(&h, "u_new", "new@x.io").await;
    let (status, body) = admin_post(&h, "/v1/admin/customers/u_new/resync", json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("no_stripe_customer"))
    );
    h.shutdown().await;
}

/// A signed delivery of `event_type` about Stripe customer `cus` whose
/// subscription id does not parse: dead at once as `id_invalid`.
pub(crate) async fn deliver_poison(h: &Harness, id: &str, cus: &str) {
    let body = json!({
        "id": id, "object": "event", "api_version": billd_stripe::API_VERSION,
        "created": t0(), "type": "customer.subscription.updated",
        "data": { "object": { "id": "not_a_subscription", "object": "subscription", "customer": cus } },
    })
    .to_string();
    let header = sign(
        &h.webhook_secret,
        billd_server::pipeline::Clock::now(&billd_server::pipeline::SystemClock),
        body.as_bytes(),
    );
    let response = h
        .http
        .post(format!("{}/webhooks/stripe", h.base))
        .header("Stripe-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

async fn dead_events_are_replayed_by_filter(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let (cus, _) = paid(&h).await;
    deliver_poison(&h, "evt_poison_1", &cus).await;
    deliver_poison(&h, "evt_poison_2", &cus).await;
    deliver_poison(&h, "evt_poison_3", "cus_someone_else").await;
    let dead = || async {
        let (_, overview) = h.admin_get("/v1/admin/overview", Some(ADMIN_KEY)).await;
        overview["dead_events"].as_i64().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dead().await < 3 {
        assert!(std::time::Instant::now() < deadline, "never dead");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, overview) = h.admin_get("/v1/admin/overview", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{overview}");
    assert_eq!(overview["inbox"]["by_status"]["dead"], 3);
    assert!(
        overview["inbox"]["by_status"]["processed"]
            .as_i64()
            .unwrap()
            > 0
    );
    assert!(overview["outbox"]["by_status"].is_object());
    assert!(overview["jobs"].is_array());

    // The customer's two, not the stranger's.
    let (status, replayed) = admin_post(
        &h,
        "/v1/admin/events/replay",
        json!({ "customer": "u_ada" }),
    )
    .await;
    assert_eq!(
        (status, &replayed["replayed"]),
        (200, &json!(2)),
        "{replayed}"
    );
    // Replayed, they fail the same way again and are dead again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while dead().await < 3 {
        assert!(std::time::Instant::now() < deadline, "not dead again");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (_, replayed) = admin_post(
        &h,
        "/v1/admin/events/replay",
        json!({ "status": "dead", "type": "invoice.paid" }),
    )
    .await;
    assert_eq!(replayed["replayed"], 0);
    let (_, replayed) = admin_post(
        &h,
        "/v1/admin/events/replay",
        json!({ "received_until": t0() - 86_400 * 365 * 30 }),
    )
    .await;
    assert_eq!(replayed["replayed"], 0);
    let (_, replayed) = admin_post(&h, "/v1/admin/events/replay", json!({})).await;
    assert_eq!(replayed["replayed"], 3);

    for (body, code) in [
        (json!({ "status": "processed" }), "invalid_status"),
        (json!({ "status": "nonsense" }), "invalid_status"),
        (json!({ "customer": "bad id" }), "invalid_customer_id"),
        (json!({ "colour": "red" }), "invalid_body"),
    ] {
        let (status, answer) = admin_post(&h, "/v1/admin/events/replay", body).await;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (400, Some(code))
        );
    }
    h.shutdown().await;
}

on_both_databases!(
    customers_are_found_by_any_id_and_paged_with_cursors,
    one_customer_shows_entitlements_events_audit_and_emails,
    a_resync_applies_what_stripe_holds_when_no_webhook_came,
    dead_events_are_replayed_by_filter,
);
