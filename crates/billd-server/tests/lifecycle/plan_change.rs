//! Issue 5's plan changes and cancellation (`POST /v1/customers/{id}/
//! subscription/preview|change|cancel|resume`) over real HTTP against
//! stripe-sim, on both databases.

use billd_core::Catalog;
use billd_server::http::ApiConfig;
use billd_server::http::{DowngradeTiming, ProrationBehavior};
use billd_server::Clock;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

async fn post(h: &Harness, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = h.http.post(format!("{}{path}", h.base)).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn call(h: &Harness, user: &str, action: &str, body: Value) -> (u16, Value) {
    post(
        h,
        &format!("/v1/customers/{user}/subscription/{action}"),
        Some(APP_KEY),
        body,
    )
    .await
}

async fn harness(db: Db, behavior: ProrationBehavior) -> Harness {
    let api = ApiConfig {
        proration_behavior: behavior,
        ..ApiConfig::default()
    };
    Harness::start_with(db, t0(), WebhookKnobs::default(), Catalog::seed(), api).await
}

/// A customer paying `price` with `pm`, ten days into the period, once billd
/// shows `plan`; returns (test clock, Stripe customer, subscription).
async fn subscribed(h: &Harness, user: &str, price: &str, plan: &str) -> (String, String, String) {
    let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
    let sub = h.subscribe(user, &cus, price)["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_for(user, plan, |e| e["plan"] == plan && e["access"] == "paid")
        .await;
    h.advance(&clock, h.clock.now() + 10 * DAY);
    (clock, cus, sub)
}

fn invoices(h: &Harness, cus: &str, reason: &str) -> Vec<Value> {
    h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "")["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["billing_reason"] == reason)
        .cloned()
        .collect()
}

async fn an_upgrade_with_always_invoice_charges_the_previewed_amount_and_grants_pro_at_once(
    db: Db,
) {
    let h = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, _) = subscribed(&h, "u_up", &h.standard_price, "standard").await;

    let (status, preview) = call(&h, "u_up", "preview", json!({ "plan": "pro" })).await;
    assert_eq!(status, 200, "{preview}");
    let (status, changed) = call(
        &h,
        "u_up",
        "change",
        json!({ "plan": "pro", "proration_date": preview["proration_date"] }),
    )
    .await;

    assert_eq!(status, 200, "{changed}");
    let due_now = preview["amount_due_now"].as_i64().unwrap();
    // 20 of 30 days left: 2/3 of (19 € − 9 €), within rounding.
    assert!((660..=670).contains(&due_now), "{preview:#}");
    assert_eq!(preview["currency"], "eur");
    assert_eq!(preview["next_renewal_amount"], 1900, "{preview:#}");
    assert!(preview["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["proration"] == true));
    assert_eq!(preview["quota_overflow"], json!([]));
    let created = invoices(&h, &cus, "subscription_update");
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0]["amount_due"].as_i64(), Some(due_now));
    assert_eq!(created[0]["status"], "paid");
    assert_eq!(changed["status"], "changed");
    assert_eq!(changed["invoice"]["amount_due"].as_i64(), Some(due_now));
    assert_eq!(changed["plan"], "pro");
    let (_, now) = h.entitlements("u_up").await;
    assert_eq!(now["plan"], "pro", "entitlements without waiting: {now:#}");
    assert_eq!(now["features"]["generations"]["limit"], 25);
    h.shutdown().await;
}

async fn an_upgrade_with_create_prorations_defers_the_previewed_amount_to_the_next_invoice(db: Db) {
    let h = harness(db, ProrationBehavior::CreateProrations).await;
    let (_, cus, sub) = subscribed(&h, "u_later", &h.standard_price, "standard").await;

    let (status, preview) = call(&h, "u_later", "preview", json!({ "plan": "pro" })).await;
    assert_eq!(status, 200, "{preview}");
    let (status, changed) = call(&h, "u_later", "change", json!({ "plan": "pro" })).await;

    assert_eq!(status, 200, "{changed}");
    assert_eq!(preview["amount_due_now"], 0);
    let upcoming = h.stripe(
        "POST",
        "/v1/invoices/create_preview",
        &format!("subscription={sub}"),
    );
    assert_eq!(
        preview["next_renewal_amount"], upcoming["amount_due"],
        "{preview:#} vs {upcoming:#}"
    );
    assert!(preview["next_renewal_amount"].as_i64().unwrap() > 1900);
    assert!(invoices(&h, &cus, "subscription_update").is_empty());
    assert_eq!(changed["plan"], "pro");
    let (_, now) = h.entitlements("u_later").await;
    assert_eq!(now["plan"], "pro", "{now:#}");
    h.shutdown().await;
}

async fn a_downgrade_below_current_usage_is_previewed_as_overflow_and_blocks_new_consumption(
    db: Db,
) {
    let h = harness(db, ProrationBehavior::CreateProrations).await;
    subscribed(&h, "u_down", &h.pro_price, "pro").await;
    let (status, used) = post(
        &h,
        "/v1/customers/u_down/usage/generations",
        Some(APP_KEY),
        json!({ "amount": 15, "idempotency_key": "fifteen" }),
    )
    .await;
    assert_eq!(status, 200, "{used}");

    let (status, preview) = call(&h, "u_down", "preview", json!({ "plan": "standard" })).await;
    assert_eq!(status, 200, "{preview}");
    let (status, changed) = call(&h, "u_down", "change", json!({ "plan": "standard" })).await;
    let (refused, body) = post(
        &h,
        "/v1/customers/u_down/usage/generations",
        Some(APP_KEY),
        json!({ "idempotency_key": "one-more" }),
    )
    .await;

    assert_eq!(
        preview["quota_overflow"],
        json!([{ "feature": "generations", "used": 15, "new_limit": 10 }])
    );
    assert!(preview["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["proration"] == true && l["amount"].as_i64().unwrap() < 0));
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["plan"], "standard");
    assert_eq!(
        (refused, &body["error"]["code"]),
        (402, &json!("quota_exceeded"))
    );
    let (_, now) = h.entitlements("u_down").await;
    assert_eq!(now["features"]["generations"]["limit"], 10);
    assert_eq!(now["features"]["generations"]["used"], 15, "nothing lost");
    h.shutdown().await;
}

async fn a_proration_needing_3ds_answers_action_required_and_grants_pro_only_once_confirmed(
    db: Db,
) {
    let h = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, _) = subscribed(&h, "u_sca", &h.standard_price, "standard").await;
    h.pay_with(&cus, "pm_card_authenticationRequired");

    let (status, held) = call(&h, "u_sca", "change", json!({ "plan": "pro" })).await;
    let (again, repeat) = call(&h, "u_sca", "change", json!({ "plan": "pro" })).await;

    assert_eq!(status, 202, "{held}");
    assert_eq!(held["status"], "action_required");
    let url = held["hosted_invoice_url"].as_str().unwrap().to_string();
    assert!(url.starts_with("http"), "{url}");
    assert_eq!(held["plan"], "standard");
    assert_eq!((again, &repeat["hosted_invoice_url"]), (202, &json!(url)));
    assert_eq!(invoices(&h, &cus, "subscription_update").len(), 1);
    let (_, now) = h.entitlements("u_sca").await;
    assert_eq!(now["plan"], "standard", "not granted before payment");

    let invoice = h.stripe(
        "GET",
        &format!(
            "/v1/invoices/{}?expand[]=payments",
            held["invoice"]["id"].as_str().unwrap()
        ),
        "",
    );
    let pi = invoice["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe(
        "POST",
        &format!("/_sim/payment_intents/{pi}/authenticate"),
        "outcome=success",
    );
    h.wait_for("u_sca", "pro after 3-D Secure", |e| e["plan"] == "pro")
        .await;
    h.shutdown().await;
}

/// A held upgrade whose card is declined is `payment_failed`, not
/// `action_required`: billd finds the invoice's payment intent by fetching
/// the invoice with `expand[]=payments` (an includable property Stripe
/// sends only when asked for).
async fn a_declined_proration_answers_payment_failed_from_the_expanded_invoice(db: Db) {
    let h = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, _) = subscribed(&h, "u_decl", &h.standard_price, "standard").await;
    h.pay_with(&cus, "pm_card_chargeCustomerFail");

    let (status, held) = call(&h, "u_decl", "change", json!({ "plan": "pro" })).await;

    assert_eq!(status, 202, "{held}");
    assert_eq!(held["status"], "payment_failed", "{held}");
    assert_eq!(held["plan"], "standard");
    let (_, now) = h.entitlements("u_decl").await;
    assert_eq!(now["plan"], "standard", "not granted without payment");
    h.shutdown().await;
}

async fn a_double_submitted_change_changes_the_subscription_once(db: Db) {
    let h = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, _) = subscribed(&h, "u_twice", &h.standard_price, "standard").await;

    let (a, b) = tokio::join!(
        call(&h, "u_twice", "change", json!({ "plan": "pro" })),
        call(&h, "u_twice", "change", json!({ "plan": "pro" })),
    );

    let statuses = [a.0, b.0];
    assert!(statuses.contains(&200), "{a:?} {b:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 409),
        "{a:?} {b:?}"
    );
    assert_eq!(invoices(&h, &cus, "subscription_update").len(), 1);
    let (_, now) = h.entitlements("u_twice").await;
    assert_eq!(now["plan"], "pro");
    h.shutdown().await;
}

async fn cancel_then_resume_flip_cancel_at_period_end_and_a_passed_period_end_leaves_free(db: Db) {
    let h = harness(db, ProrationBehavior::CreateProrations).await;
    let (clock, _, sub) = subscribed(&h, "u_cancel", &h.standard_price, "standard").await;

    let (status, canceled) = call(&h, "u_cancel", "cancel", json!({})).await;
    assert_eq!(status, 200, "{canceled}");
    assert_eq!(canceled["cancel_at_period_end"], true);
    assert_eq!(canceled["status"], "cancel_scheduled");
    assert_eq!(canceled["subscription_status"], "active");
    let (_, now) = h.entitlements("u_cancel").await;
    assert_eq!(now["cancel_at_period_end"], true, "{now:#}");
    assert_eq!(now["plan"], "standard");
    let (status, resumed) = call(&h, "u_cancel", "resume", json!({})).await;
    assert_eq!(status, 200, "{resumed}");
    assert_eq!(resumed["cancel_at_period_end"], false);
    assert_eq!(resumed["status"], "resumed");
    assert_eq!(resumed["subscription_status"], "active");
    let (_, now) = h.entitlements("u_cancel").await;
    assert_eq!(now["cancel_at_period_end"], false, "{now:#}");

    let (status, again) = call(&h, "u_cancel", "cancel", json!({})).await;
    assert_eq!(status, 200, "{again}");
    let period_end = again["current_period_end"].as_i64().unwrap();
    h.advance(&clock, period_end + 60);
    h.wait_for("u_cancel", "free after the period", |e| {
        e["plan"] == "free" && e["status"] == "canceled"
    })
    .await;
    let (status, ended) = call(&h, "u_cancel", "resume", json!({})).await;
    assert_eq!(
        (status, &ended["error"]["code"]),
        (409, &json!("subscription_ended")),
        "{sub}"
    );
    h.shutdown().await;
}

async fn plan_change_requests_are_refused_with_stable_codes(db: Db) {
    let h = harness(db, ProrationBehavior::CreateProrations).await;
    subscribed(&h, "u_codes", &h.standard_price, "standard").await;
    h.customer("u_nosub", "pm_card_visa", true).await;
    let (_, cus_usd) = h.customer("u_usd", "pm_card_visa", true).await;
    let usd = h.stripe(
        "POST",
        "/v1/prices",
        "product_data[name]=standard-usd&currency=usd&unit_amount=1000&recurring[interval]=month",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.subscribe("u_usd", &cus_usd, &usd);
    h.wait_for("u_usd", "the usd subscription", |e| e["status"] == "active")
        .await;

    let cases = [
        (
            "u_codes",
            "preview",
            json!({ "plan": "gold" }),
            400,
            "unknown_plan",
        ),
        (
            "u_codes",
            "change",
            json!({ "plan": "free" }),
            400,
            "unknown_plan",
        ),
        (
            "u_codes",
            "preview",
            json!({ "plan": "standard" }),
            409,
            "same_plan",
        ),
        (
            "u_codes",
            "change",
            json!({ "plan": "standard" }),
            409,
            "same_plan",
        ),
        (
            "u_codes",
            "change",
            json!({ "plan": "pro", "proration_date": 5 }),
            400,
            "invalid_proration_date",
        ),
        (
            "u_codes",
            "change",
            json!({ "plan": "pro", "extra": 1 }),
            400,
            "invalid_body",
        ),
        (
            "u_nosub",
            "preview",
            json!({ "plan": "pro" }),
            409,
            "no_subscription",
        ),
        ("u_nosub", "cancel", json!({}), 409, "no_subscription"),
        (
            "u_nobody",
            "preview",
            json!({ "plan": "pro" }),
            404,
            "customer_not_found",
        ),
        (
            "u_usd",
            "preview",
            json!({ "plan": "pro" }),
            400,
            "currency_not_available",
        ),
    ];
    for (user, action, body, status, code) in cases {
        let (got, answer) = call(&h, user, action, body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{user} {action} {body}: {answer}"
        );
    }
    for action in ["preview", "change", "cancel", "resume"] {
        let (status, _) = post(
            &h,
            &format!("/v1/customers/u_codes/subscription/{action}"),
            None,
            json!({ "plan": "pro" }),
        )
        .await;
        assert_eq!(status, 401, "{action} without a key");
    }
    h.shutdown().await;
}

async fn a_downgrade_at_period_end_keeps_pro_until_the_period_ends_then_bills_standard(db: Db) {
    let api = ApiConfig {
        downgrade_timing: DowngradeTiming::PeriodEnd,
        ..ApiConfig::default()
    };
    let h = Harness::start_with(db, t0(), WebhookKnobs::default(), Catalog::seed(), api).await;
    let (clock, cus, _) = subscribed(&h, "u_later_down", &h.pro_price, "pro").await;

    let (status, preview) =
        call(&h, "u_later_down", "preview", json!({ "plan": "standard" })).await;
    assert_eq!(status, 200, "{preview}");
    let (status, scheduled) =
        call(&h, "u_later_down", "change", json!({ "plan": "standard" })).await;
    let (again, repeat) = call(&h, "u_later_down", "change", json!({ "plan": "standard" })).await;

    assert_eq!(preview["effective"], "period_end");
    assert_eq!(preview["amount_due_now"], 0);
    assert_eq!(preview["next_renewal_amount"], 900, "{preview:#}");
    assert_eq!(status, 200, "{scheduled}");
    assert_eq!(scheduled["status"], "scheduled");
    assert_eq!(scheduled["plan"], "pro");
    assert_eq!((again, &repeat["status"]), (200, &json!("scheduled")));
    let period_end = scheduled["effective_at"].as_i64().unwrap();
    assert_eq!(preview["renews_at"].as_i64(), Some(period_end));
    assert!(invoices(&h, &cus, "subscription_update").is_empty());
    h.advance(&clock, period_end - 60);
    let (_, before) = h.entitlements("u_later_down").await;
    assert_eq!(before["plan"], "pro", "still pro before the period ends");

    h.advance(&clock, period_end + 60);
    h.wait_for("u_later_down", "standard after the period end", |e| {
        e["plan"] == "standard" && e["access"] == "paid"
    })
    .await;
    let renewals = invoices(&h, &cus, "subscription_cycle");
    let latest = renewals
        .iter()
        .max_by_key(|i| i["created"].as_i64())
        .unwrap();
    assert_eq!(latest["amount_due"], 900, "{renewals:#?}");
    h.shutdown().await;
}

on_both_databases!(
    a_downgrade_at_period_end_keeps_pro_until_the_period_ends_then_bills_standard,
    an_upgrade_with_always_invoice_charges_the_previewed_amount_and_grants_pro_at_once,
    an_upgrade_with_create_prorations_defers_the_previewed_amount_to_the_next_invoice,
    a_downgrade_below_current_usage_is_previewed_as_overflow_and_blocks_new_consumption,
    a_proration_needing_3ds_answers_action_required_and_grants_pro_only_once_confirmed,
    a_declined_proration_answers_payment_failed_from_the_expanded_invoice,
    a_double_submitted_change_changes_the_subscription_once,
    cancel_then_resume_flip_cancel_at_period_end_and_a_passed_period_end_leaves_free,
    plan_change_requests_are_refused_with_stable_codes,
);
