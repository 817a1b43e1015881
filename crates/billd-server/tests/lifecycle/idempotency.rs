//! Issue 13 item 6: `Idempotency-Key` on the app API's mutating routes
//! (checkout, plan change, cancel, resume, usage), over real HTTP against
//! stripe-sim, on both databases. Keys expire by billd's (manual) clock.

use billd_core::Catalog;
use billd_server::http::ApiConfig;
use billd_server::http::ProrationBehavior;
use billd_server::Clock;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY, DAY};

/// An answer: status, body, and whether billd said it is a replay.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    body: Value,
    replayed: bool,
}

async fn send(h: &Harness, path: &str, bearer: &str, key: Option<&str>, body: Value) -> Answer {
    let mut request = h
        .http
        .post(format!("{}{path}", h.base))
        .bearer_auth(bearer)
        .json(&body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.unwrap();
    let replayed = match response.headers().get("idempotent-replayed") {
        None => false,
        Some(v) => {
            assert_eq!(v, "true");
            true
        }
    };
    Answer {
        status: response.status().as_u16(),
        body: response.json().await.unwrap_or(Value::Null),
        replayed,
    }
}

async fn subscription(
    h: &Harness,
    user: &str,
    action: &str,
    key: Option<&str>,
    body: Value,
) -> Answer {
    let path = format!("/v1/customers/{user}/subscription/{action}");
    send(h, &path, APP_KEY, key, body).await
}

fn code(answer: &Answer) -> (u16, &str) {
    (
        answer.status,
        answer.body["error"]["code"].as_str().unwrap_or(""),
    )
}

async fn harness(db: Db) -> Harness {
    let api = ApiConfig {
        proration_behavior: ProrationBehavior::AlwaysInvoice,
        ..ApiConfig::default()
    };
    Harness::start_with(db, t0(), WebhookKnobs::default(), Catalog::seed(), api).await
}

/// A customer on `plan` (paying `price`) ten days into the period; returns
/// (Stripe customer, subscription).
async fn subscribed(h: &Harness, user: &str, price: &str, plan: &str) -> (String, String) {
    let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
    let sub = h.subscribe(user, &cus, price)["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_for(user, plan, |e| e["plan"] == plan && e["access"] == "paid")
        .await;
    h.advance(&clock, h.clock.now() + 10 * DAY);
    (cus, sub)
}

/// The changes Stripe made to the subscription's price: its
/// `customer.subscription.updated` events whose previous attributes name
/// the items.
fn price_changes(h: &Harness, sub: &str) -> usize {
    h.sim
        .events()
        .iter()
        .filter(|e| {
            e["type"] == "customer.subscription.updated"
                && e["data"]["object"]["id"] == sub
                && e["data"]["previous_attributes"].get("items").is_some()
        })
        .count()
}

fn proration_invoices(h: &Harness, cus: &str) -> usize {
    h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "")["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["billing_reason"] == "subscription_update")
        .count()
}

async fn a_double_submitted_change_with_one_key_answers_the_first_200_again_and_stripe_changes_once(
    db: Db,
) {
    let h = harness(db).await;
    let (cus, sub) = subscribed(&h, "u_double", &h.standard_price, "standard").await;
    let before = price_changes(&h, &sub);

    let first = subscription(
        &h,
        "u_double",
        "change",
        Some("chg-1"),
        json!({ "plan": "pro" }),
    )
    .await;
    let second = subscription(
        &h,
        "u_double",
        "change",
        Some("chg-1"),
        json!({ "plan": "pro" }),
    )
    .await;
    let unkeyed = subscription(&h, "u_double", "change", None, json!({ "plan": "pro" })).await;

    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first.body["status"], "changed");
    assert!(!first.replayed);
    assert_eq!(
        (second.status, &second.body, second.replayed),
        (200, &first.body, true),
        "the second submit answers the first answer, not 409 same_plan"
    );
    assert_eq!(
        code(&unkeyed),
        (409, "same_plan"),
        "without a key: {unkeyed:?}"
    );
    assert_eq!(
        price_changes(&h, &sub) - before,
        1,
        "Stripe changed the price once"
    );
    assert_eq!(proration_invoices(&h, &cus), 1, "and charged once");
    h.shutdown().await;
}

async fn the_same_key_with_another_request_is_reused_and_keys_are_checked_and_scoped(db: Db) {
    let h = harness(db).await;
    subscribed(&h, "u_reuse", &h.standard_price, "standard").await;
    let first = subscription(
        &h,
        "u_reuse",
        "change",
        Some("k-1"),
        json!({ "plan": "pro" }),
    )
    .await;
    assert_eq!(first.status, 200, "{first:?}");

    let other_body = subscription(
        &h,
        "u_reuse",
        "change",
        Some("k-1"),
        json!({ "plan": "standard" }),
    )
    .await;
    let other_route = subscription(&h, "u_reuse", "cancel", Some("k-1"), json!({})).await;
    let too_long = "k".repeat(256);
    let mut invalid = Vec::new();
    for bad in ["", too_long.as_str(), "caf\u{e9}"] {
        invalid.push(subscription(&h, "u_reuse", "cancel", Some(bad), json!({})).await);
    }
    let admin_class = send(
        &h,
        "/v1/customers/u_reuse/subscription/change",
        ADMIN_KEY,
        Some("k-1"),
        json!({ "plan": "pro" }),
    )
    .await;
    let other_customer = subscription(
        &h,
        "u_nobody",
        "change",
        Some("k-1"),
        json!({ "plan": "pro" }),
    )
    .await;

    assert_eq!(
        code(&other_body),
        (400, "idempotency_key_reused"),
        "{other_body:?}"
    );
    assert_eq!(
        code(&other_route),
        (400, "idempotency_key_reused"),
        "{other_route:?}"
    );
    for answer in &invalid {
        assert_eq!(code(answer), (400, "invalid_idempotency_key"), "{answer:?}");
    }
    // Another key class or another customer: the key is theirs, not the
    // first request's, so the request runs.
    assert_eq!(code(&admin_class), (409, "same_plan"), "{admin_class:?}");
    assert!(!admin_class.replayed);
    assert_eq!(code(&other_customer), (404, "customer_not_found"));
    let (_, now) = h.entitlements("u_reuse").await;
    assert_eq!(
        now["cancel_at_period_end"], false,
        "the refused cancel did nothing"
    );
    h.shutdown().await;
}

async fn concurrent_requests_with_one_key_run_once(db: Db) {
    let h = harness(db).await;
    let (cus, sub) = subscribed(&h, "u_race", &h.standard_price, "standard").await;
    let before = price_changes(&h, &sub);

    let answers = futures::future::join_all((0..4).map(|_| {
        subscription(
            &h,
            "u_race",
            "change",
            Some("race-1"),
            json!({ "plan": "pro" }),
        )
    }))
    .await;

    let ran: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == 200 && !a.replayed)
        .collect();
    assert_eq!(ran.len(), 1, "exactly one request ran: {answers:#?}");
    for answer in &answers {
        let in_use = code(answer) == (409, "idempotency_key_in_use");
        let replay = answer.status == 200 && answer.body == ran[0].body;
        assert!(in_use || replay, "{answer:?}");
    }
    assert_eq!(price_changes(&h, &sub) - before, 1);
    assert_eq!(proration_invoices(&h, &cus), 1);
    let after = subscription(
        &h,
        "u_race",
        "change",
        Some("race-1"),
        json!({ "plan": "pro" }),
    )
    .await;
    assert_eq!(
        (after.status, &after.body, after.replayed),
        (200, &ran[0].body, true)
    );
    h.shutdown().await;
}

async fn cancel_resume_checkout_and_usage_each_replay_their_first_answer(db: Db) {
    let h = harness(db).await;
    subscribed(&h, "u_each", &h.standard_price, "standard").await;

    // Cancel, resume without a key, then the same cancel again: a replay
    // that cancels nothing.
    let cancel = subscription(&h, "u_each", "cancel", Some("cancel-1"), json!({})).await;
    let resume = subscription(&h, "u_each", "resume", Some("resume-1"), json!({})).await;
    let cancel_again = subscription(&h, "u_each", "cancel", Some("cancel-1"), json!({})).await;
    let (_, after_cancels) = h.entitlements("u_each").await;
    let resume_again = subscription(&h, "u_each", "resume", Some("resume-1"), json!({})).await;

    assert_eq!(
        (cancel.status, &cancel.body["status"]),
        (200, &json!("cancel_scheduled"))
    );
    assert_eq!(cancel.body["cancel_at_period_end"], true);
    assert_eq!(
        (resume.status, &resume.body["status"]),
        (200, &json!("resumed"))
    );
    assert_eq!(resume.body["cancel_at_period_end"], false);
    assert_eq!(
        (&cancel_again.body, cancel_again.replayed),
        (&cancel.body, true)
    );
    assert_eq!(
        after_cancels["cancel_at_period_end"], false,
        "the replayed cancel did not cancel again: {after_cancels:#}"
    );
    assert_eq!(
        (&resume_again.body, resume_again.replayed),
        (&resume.body, true)
    );

    // Checkout, for a customer without a subscription.
    h.customer("u_buyer", "pm_card_visa", true).await;
    let checkout_body = json!({
        "plan": "pro",
        "success_url": "https://app.test/ok",
        "cancel_url": "https://app.test/no",
    });
    let checkout = send(
        &h,
        "/v1/customers/u_buyer/checkout",
        APP_KEY,
        Some("co-1"),
        checkout_body.clone(),
    )
    .await;
    let checkout_again = send(
        &h,
        "/v1/customers/u_buyer/checkout",
        APP_KEY,
        Some("co-1"),
        checkout_body,
    )
    .await;
    assert_eq!(checkout.status, 200, "{checkout:?}");
    assert!(!checkout.replayed);
    assert_eq!(
        (
            checkout_again.status,
            &checkout_again.body,
            checkout_again.replayed
        ),
        (200, &checkout.body, true)
    );

    // Usage: the header alone is the counter's key.
    let consume = "/v1/customers/u_each/usage/generations";
    let used = send(&h, consume, APP_KEY, Some("use-1"), json!({ "amount": 2 })).await;
    let used_again = send(&h, consume, APP_KEY, Some("use-1"), json!({ "amount": 2 })).await;
    let used_more = send(&h, consume, APP_KEY, Some("use-1"), json!({ "amount": 3 })).await;
    let both_differ = send(
        &h,
        consume,
        APP_KEY,
        Some("use-2"),
        json!({ "amount": 1, "idempotency_key": "other" }),
    )
    .await;
    let release = "/v1/customers/u_each/usage/websites/release";
    let released = send(&h, release, APP_KEY, Some("rel-1"), json!({})).await;
    let released_again = send(&h, release, APP_KEY, Some("rel-1"), json!({})).await;
    let (_, now) = h.entitlements("u_each").await;

    assert_eq!(
        (used.status, &used.body["used"]),
        (200, &json!(2)),
        "{used:?}"
    );
    assert_eq!(
        (used_again.status, &used_again.body, used_again.replayed),
        (200, &used.body, true)
    );
    assert_eq!(code(&used_more), (400, "idempotency_key_reused"));
    assert_eq!(code(&both_differ), (400, "invalid_idempotency_key"));
    assert_eq!(released.status, 200, "{released:?}");
    assert_eq!(
        (&released_again.body, released_again.replayed),
        (&released.body, true)
    );
    assert_eq!(
        now["features"]["generations"]["used"], 2,
        "counted once: {now:#}"
    );
    h.shutdown().await;
}

async fn a_key_expires_after_24_hours_and_a_server_error_is_not_kept(db: Db) {
    let h = harness(db).await;
    subscribed(&h, "u_expiry", &h.standard_price, "standard").await;

    // Stripe down: the 503 is not kept, so the retry runs.
    h.sim.update_config(|c| c.faults.next_errors = 100);
    let down = subscription(&h, "u_expiry", "cancel", Some("c-1"), json!({})).await;
    h.sim.update_config(|c| c.faults.next_errors = 0);
    let first = subscription(&h, "u_expiry", "cancel", Some("c-1"), json!({})).await;
    assert_eq!(code(&down), (503, "stripe_unavailable"), "{down:?}");
    assert_eq!((first.status, first.replayed), (200, false), "{first:?}");

    let start = h.clock.now();
    let resumed = subscription(&h, "u_expiry", "resume", None, json!({})).await;
    assert_eq!(resumed.status, 200);
    h.clock.set(start + DAY - 1);
    let within = subscription(&h, "u_expiry", "cancel", Some("c-1"), json!({})).await;
    let (_, still) = h.entitlements("u_expiry").await;
    h.clock.set(start + DAY);
    let expired = subscription(&h, "u_expiry", "cancel", Some("c-1"), json!({})).await;
    let (_, now) = h.entitlements("u_expiry").await;

    assert_eq!((&within.body, within.replayed), (&first.body, true));
    assert_eq!(still["cancel_at_period_end"], false, "{still:#}");
    assert_eq!(
        (expired.status, expired.replayed),
        (200, false),
        "{expired:?}"
    );
    assert_eq!(
        now["cancel_at_period_end"], true,
        "the expired key ran again: {now:#}"
    );
    h.shutdown().await;
}

on_both_databases!(
    a_double_submitted_change_with_one_key_answers_the_first_200_again_and_stripe_changes_once,
    the_same_key_with_another_request_is_reused_and_keys_are_checked_and_scoped,
    concurrent_requests_with_one_key_run_once,
    cancel_resume_checkout_and_usage_each_replay_their_first_answer,
    a_key_expires_after_24_hours_and_a_server_error_is_not_kept,
);

/// Every route that honours the header says so in the OpenAPI document,
/// with the codes it adds; the portal, the checkout sync and the preview,
/// which only read Stripe, do not.
#[test]
fn the_keyed_operations_document_the_header_and_its_codes() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(billd_server::http::ApiDoc::openapi()).unwrap();
    let keyed = [
        "/v1/customers/{id}/checkout",
        "/v1/customers/{id}/subscription/change",
        "/v1/customers/{id}/subscription/cancel",
        "/v1/customers/{id}/subscription/resume",
        "/v1/customers/{id}/usage/{feature}",
        "/v1/customers/{id}/usage/{feature}/release",
    ];
    let takes_header = |path: &str| {
        doc["paths"][path]["post"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    };
    for path in keyed {
        assert!(takes_header(path), "{path}");
        let responses = doc["paths"][path]["post"]["responses"].to_string();
        for code in [
            "invalid_idempotency_key",
            "idempotency_key_reused",
            "idempotency_key_in_use",
        ] {
            assert!(responses.contains(code), "{path} lacks {code}");
        }
    }
    for path in [
        "/v1/customers/{id}/portal",
        "/v1/customers/{id}/checkout/sync",
        "/v1/customers/{id}/subscription/preview",
    ] {
        assert!(!takes_header(path), "{path}");
    }
    let outcome = doc["components"]["schemas"]["SubscriptionOutcome"]["enum"].to_string();
    for status in [
        "changed",
        "scheduled",
        "action_required",
        "payment_failed",
        "cancel_scheduled",
        "resumed",
    ] {
        assert!(outcome.contains(status), "{outcome}");
    }
}
