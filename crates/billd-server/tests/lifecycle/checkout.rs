//! Issue 5's checkout and portal endpoints through real HTTP against
//! stripe-sim, on both databases: single-flight under concurrency, the
//! session Stripe sees, completion to paid access, double submission,
//! plan switches, promotion codes, the currency lock, the rate limit,
//! Stripe outages and the portal.

use billd_core::Catalog;
use billd_server::http::ApiConfig;
use billd_server::Clock;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, APP_KEY};

const OK_URL: &str = "https://app.test/billing/done";
const CANCEL_URL: &str = "https://app.test/billing";

/// The seed catalog plus a USD price for `standard`.
const TWO_CURRENCY_CATALOG: &str = r#"
currency = "eur"

[features]
generations = { kind = "metered" }
websites    = { kind = "capacity" }

[plans.free]
limits = { generations = 3, websites = 1 }

[plans.standard]
limits = { generations = 10, websites = 3 }
prices = { eur = { lookup_key = "billd_standard_eur" }, usd = { lookup_key = "billd_standard_usd" } }

[plans.pro]
limits = { generations = 25, websites = 10 }
prices = { eur = { lookup_key = "billd_pro_eur" } }
"#;

async fn post(
    h: &Harness,
    path: &str,
    key: Option<&str>,
    body: Value,
) -> (u16, Value, Option<String>) {
    let mut request = h.http.post(format!("{}{path}", h.base)).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

async fn checkout(h: &Harness, user: &str, body: Value) -> (u16, Value) {
    let (status, body, _) = post(
        h,
        &format!("/v1/customers/{user}/checkout"),
        Some(APP_KEY),
        body,
    )
    .await;
    (status, body)
}

fn plan(name: &str) -> Value {
    json!({ "plan": name, "success_url": OK_URL, "cancel_url": CANCEL_URL })
}

async fn profile(h: &Harness, user: &str) {
    let response = h
        .http
        .put(format!("{}/v1/customers/{user}", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "email": format!("{user}@example.com"), "name": "Ada" }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

/// Stripe customers carrying `metadata[billd_customer_id] = user`.
fn stripe_customers_of(h: &Harness, user: &str) -> Vec<Value> {
    h.stripe("GET", "/v1/customers?limit=100", "")["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["metadata"]["billd_customer_id"] == user)
        .cloned()
        .collect()
}

fn sessions_of(h: &Harness, cus: &str) -> Vec<Value> {
    h.stripe(
        "GET",
        &format!("/v1/checkout/sessions?customer={cus}&limit=100"),
        "",
    )["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn subscriptions_of(h: &Harness, cus: &str) -> Vec<Value> {
    h.stripe(
        "GET",
        &format!("/v1/subscriptions?customer={cus}&status=all"),
        "",
    )["data"]
        .as_array()
        .unwrap()
        .clone()
}

fn complete(h: &Harness, session: &str) {
    h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{session}/complete"),
        "payment_method=pm_card_visa",
    );
}

async fn twenty_concurrent_checkouts_get_one_session_and_a_paid_customer_cannot_buy_twice(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_rush").await;

    let answers =
        futures::future::join_all((0..20).map(|_| checkout(&h, "u_rush", plan("pro")))).await;

    let urls: Vec<&Value> = answers.iter().map(|(_, b)| &b["url"]).collect();
    assert!(answers.iter().all(|(s, _)| *s == 200), "{answers:?}");
    assert!(
        urls.iter().all(|u| *u == urls[0] && u.is_string()),
        "{urls:?}"
    );
    let customers = stripe_customers_of(&h, "u_rush");
    assert_eq!(customers.len(), 1, "{customers:?}");
    let cus = customers[0]["id"].as_str().unwrap();
    assert_eq!(customers[0]["email"], "u_rush@example.com");
    let sessions = sessions_of(&h, cus);
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let session = &sessions[0];
    assert_eq!(session["id"], answers[0].1["session_id"]);
    assert_eq!(session["url"], *urls[0]);
    assert_eq!(session["mode"], "subscription");
    assert_eq!(session["client_reference_id"], "u_rush");
    assert_eq!(session["metadata"]["billd_customer_id"], "u_rush");
    assert_eq!(session["billing_address_collection"], "required");
    assert_eq!(session["tax_id_collection"]["enabled"], true);
    assert_eq!(session["automatic_tax"]["enabled"], false);
    assert_eq!(session["currency"], "eur");

    complete(&h, session["id"].as_str().unwrap());
    h.wait_for("u_rush", "paid pro", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;
    let subscription = &subscriptions_of(&h, cus)[0];
    assert_eq!(subscription["metadata"]["billd_customer_id"], "u_rush");
    assert_eq!(subscription["metadata"]["billd_plan"], "pro");

    let (status, body) = checkout(&h, "u_rush", plan("pro")).await;
    let (other_status, other) = checkout(&h, "u_rush", plan("standard")).await;

    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_subscribed")),
        "{body}"
    );
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/subscription/change"));
    assert_eq!(
        (other_status, other["error"]["code"].as_str()),
        (409, Some("already_subscribed"))
    );
    assert_eq!(subscriptions_of(&h, cus).len(), 1);
    assert_eq!(sessions_of(&h, cus).len(), 1);
    assert_eq!(stripe_customers_of(&h, "u_rush").len(), 1);
    h.shutdown().await;
}

async fn another_plan_expires_the_open_session_and_the_same_request_reuses_the_new_one(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_switch").await;
    let (_, first) = checkout(&h, "u_switch", plan("standard")).await;

    let (status, second) = checkout(&h, "u_switch", plan("pro")).await;
    let (_, again) = checkout(&h, "u_switch", plan("pro")).await;
    let mut other_url = plan("pro");
    other_url["success_url"] = json!("https://app.test/elsewhere");
    let (_, third) = checkout(&h, "u_switch", other_url).await;

    assert_eq!(status, 200, "{second}");
    assert_ne!(first["session_id"], second["session_id"]);
    assert_eq!(again["session_id"], second["session_id"]);
    assert_ne!(third["session_id"], second["session_id"]);
    let old = h.sim.object(first["session_id"].as_str().unwrap()).unwrap();
    let replaced = h
        .sim
        .object(second["session_id"].as_str().unwrap())
        .unwrap();
    let open = h.sim.object(third["session_id"].as_str().unwrap()).unwrap();
    assert_eq!(old["status"], "expired");
    assert_eq!(replaced["status"], "expired");
    assert_eq!(open["status"], "open");
    assert_eq!(open["success_url"], "https://app.test/elsewhere");
    let cus = open["customer"].as_str().unwrap();
    assert_eq!(sessions_of(&h, cus).len(), 3);
    assert_eq!(stripe_customers_of(&h, "u_switch").len(), 1);
    h.shutdown().await;
}

async fn promotion_codes_are_checked_at_stripe_before_the_session(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_promo").await;
    let coupon = h.stripe("POST", "/v1/coupons", "percent_off=20&duration=once")["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe(
        "POST",
        "/v1/promotion_codes",
        &format!("promotion[type]=coupon&promotion[coupon]={coupon}&code=LAUNCH20"),
    );
    let off = h.stripe(
        "POST",
        "/v1/promotion_codes",
        &format!("promotion[type]=coupon&promotion[coupon]={coupon}&code=OLD10"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe(
        "POST",
        &format!("/v1/promotion_codes/{off}"),
        "active=false",
    );
    let soon = t0() + 600;
    h.stripe(
        "POST",
        "/v1/promotion_codes",
        &format!("promotion[type]=coupon&promotion[coupon]={coupon}&code=SOON&expires_at={soon}"),
    );
    let with_code = |code: &str| {
        let mut body = plan("pro");
        body["promotion_code"] = json!(code);
        body
    };

    let (unknown_status, unknown) = checkout(&h, "u_promo", with_code("NOPE")).await;
    let (inactive_status, inactive) = checkout(&h, "u_promo", with_code("OLD10")).await;
    let (status, valid) = checkout(&h, "u_promo", with_code("launch20")).await;
    h.clock.set(soon + 1);
    let (expired_status, expired) = checkout(&h, "u_promo", with_code("SOON")).await;

    assert_eq!(
        (unknown_status, unknown["error"]["code"].as_str()),
        (400, Some("promotion_code_invalid")),
        "{unknown}"
    );
    assert_eq!(
        (inactive_status, inactive["error"]["code"].as_str()),
        (400, Some("promotion_code_expired")),
        "{inactive}"
    );
    assert_eq!(
        (expired_status, expired["error"]["code"].as_str()),
        (400, Some("promotion_code_expired")),
        "{expired}"
    );
    assert_eq!(status, 200, "{valid}");
    let session = h.sim.object(valid["session_id"].as_str().unwrap()).unwrap();
    assert_eq!(session["discounts"][0]["coupon"], coupon.as_str());
    assert!(session["discounts"][0]["promotion_code"]
        .as_str()
        .unwrap()
        .starts_with("promo_"));
    // The session with the code is still the open one: the refused
    // requests changed nothing.
    assert_eq!(session["status"], "open");
    h.shutdown().await;
}

async fn a_stripe_customer_locked_to_another_currency_is_a_clear_conflict(db: Db) {
    let catalog = Catalog::from_toml(TWO_CURRENCY_CATALOG).unwrap();
    let h = Harness::start_with(
        db,
        t0(),
        WebhookKnobs::default(),
        catalog,
        ApiConfig::default(),
    )
    .await;
    h.stripe(
        "POST",
        "/v1/prices",
        "product_data[name]=standard-usd&currency=usd&unit_amount=1000&recurring[interval]=month&lookup_key=billd_standard_usd",
    );
    profile(&h, "u_cur").await;
    let (_, first) = checkout(&h, "u_cur", plan("standard")).await;
    complete(&h, first["session_id"].as_str().unwrap());
    h.wait_for("u_cur", "paid standard", |e| e["access"] == "paid")
        .await;
    let cus = stripe_customers_of(&h, "u_cur")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sub = subscriptions_of(&h, &cus)[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe("DELETE", &format!("/v1/subscriptions/{sub}"), "");
    h.wait_for("u_cur", "canceled", |e| e["status"] == "canceled")
        .await;

    let mut usd = plan("standard");
    usd["currency"] = json!("usd");
    let (status, body) = checkout(&h, "u_cur", usd).await;
    let (eur_status, eur) = checkout(&h, "u_cur", plan("standard")).await;

    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("currency_locked")),
        "{body}"
    );
    assert!(body["error"]["message"].as_str().unwrap().contains("eur"));
    assert_eq!(eur_status, 200, "{eur}");
    assert_eq!(eur["currency"], "eur");
    h.shutdown().await;
}

async fn the_rate_limit_counts_new_sessions_only(db: Db) {
    let config = ApiConfig {
        checkout_rate_limit_per_min: 2,
        ..ApiConfig::default()
    };
    let h = Harness::start_with(db, t0(), WebhookKnobs::default(), Catalog::seed(), config).await;
    profile(&h, "u_rate").await;
    let (s1, _) = checkout(&h, "u_rate", plan("standard")).await;
    let (s2, open) = checkout(&h, "u_rate", plan("pro")).await;

    let (status, body, retry_after) = post(
        &h,
        "/v1/customers/u_rate/checkout",
        Some(APP_KEY),
        plan("standard"),
    )
    .await;
    let repeats =
        futures::future::join_all((0..10).map(|_| checkout(&h, "u_rate", plan("pro")))).await;
    h.clock.set(h.clock.now() + 61);
    let (later, _) = checkout(&h, "u_rate", plan("standard")).await;

    assert_eq!((s1, s2), (200, 200));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    let retry_after: u64 = retry_after.unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(
        repeats
            .iter()
            .all(|(s, b)| *s == 200 && b["session_id"] == open["session_id"]),
        "{repeats:?}"
    );
    assert_eq!(later, 200);
    h.shutdown().await;
}

async fn stripe_answering_5xx_is_a_503_and_a_retry_then_succeeds(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_down").await;
    h.sim.update_config(|c| c.faults.next_errors = 100);

    let (status, body) = checkout(&h, "u_down", plan("pro")).await;
    h.sim.update_config(|c| c.faults.next_errors = 0);
    let (retry, ok) = checkout(&h, "u_down", plan("pro")).await;

    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("stripe_unavailable")),
        "{body}"
    );
    assert_eq!(retry, 200, "{ok}");
    assert_eq!(stripe_customers_of(&h, "u_down").len(), 1);
    h.shutdown().await;
}

async fn the_portal_opens_for_a_customer_with_a_stripe_customer_only(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_portal").await;
    let portal = |user: &'static str, url: &'static str| {
        let h = &h;
        async move {
            let (status, body, _) = post(
                h,
                &format!("/v1/customers/{user}/portal"),
                Some(APP_KEY),
                json!({ "return_url": url }),
            )
            .await;
            (status, body)
        }
    };

    let (before, none) = portal("u_portal", "https://app.test/account").await;
    checkout(&h, "u_portal", plan("pro")).await;
    let (status, body) = portal("u_portal", "https://app.test/account").await;
    let (bad, bad_body) = portal("u_portal", "not a url").await;
    let (unknown, _) = portal("u_nobody", "https://app.test/account").await;

    assert_eq!(
        (before, none["error"]["code"].as_str()),
        (409, Some("no_stripe_customer")),
        "{none}"
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body["url"].as_str().unwrap().contains("billing_portal"),
        "{body}"
    );
    assert_eq!(
        (bad, bad_body["error"]["code"].as_str()),
        (400, Some("invalid_url"))
    );
    assert_eq!(unknown, 404);
    h.shutdown().await;
}

async fn bad_checkout_requests_are_refused_before_stripe_with_stable_codes(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_bad").await;
    let with = |field: &str, value: Value| {
        let mut body = plan("pro");
        body[field] = value;
        body
    };

    let cases = [
        ("u_bad", plan("free"), 400, "plan_not_purchasable"),
        ("u_bad", plan("platinum"), 400, "unknown_plan"),
        (
            "u_bad",
            with("currency", json!("usd")),
            400,
            "currency_not_available",
        ),
        (
            "u_bad",
            with("success_url", json!("/relative")),
            400,
            "invalid_url",
        ),
        (
            "u_bad",
            with("cancel_url", json!("ftp://app.test/")),
            400,
            "invalid_url",
        ),
        ("u_bad", with("colour", json!("red")), 400, "invalid_body"),
        ("u_ghost", plan("pro"), 404, "customer_not_found"),
    ];
    for (user, body, status, code) in cases {
        let (got, answer) = checkout(&h, user, body.clone()).await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body} → {answer}"
        );
    }
    for path in ["/v1/customers/u_bad/checkout", "/v1/customers/u_bad/portal"] {
        let (status, _, _) = post(&h, path, None, plan("pro")).await;
        let (wrong, _, _) = post(&h, path, Some("not-a-key"), plan("pro")).await;
        assert_eq!((status, wrong), (401, 401), "{path}");
    }
    assert!(stripe_customers_of(&h, "u_bad").is_empty());
    h.shutdown().await;
}

async fn with_stripe_tax_configured_checkout_enables_automatic_tax(db: Db) {
    let config = ApiConfig {
        stripe_tax: true,
        ..ApiConfig::default()
    };
    let h = Harness::start_with(db, t0(), WebhookKnobs::default(), Catalog::seed(), config).await;
    h.stripe(
        "POST",
        "/v1/tax/settings",
        "head_office[address][country]=DE",
    );
    profile(&h, "u_tax").await;

    let (status, body) = checkout(&h, "u_tax", plan("standard")).await;

    assert_eq!(status, 200, "{body}");
    let session = h.sim.object(body["session_id"].as_str().unwrap()).unwrap();
    assert_eq!(session["automatic_tax"]["enabled"], true);
    assert_eq!(session["billing_address_collection"], "required");
    h.shutdown().await;
}

async fn a_session_left_open_by_a_crashed_process_is_expired_by_the_next_new_session(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    profile(&h, "u_orphan").await;
    let (_, first) = checkout(&h, "u_orphan", plan("standard")).await;
    let cus = h.sim.object(first["session_id"].as_str().unwrap()).unwrap()["customer"]
        .as_str()
        .unwrap()
        .to_string();
    // What a billd process that died between Stripe's answer and its
    // database write leaves behind.
    let orphan = h.stripe(
        "POST",
        "/v1/checkout/sessions",
        &format!(
            "mode=subscription&customer={cus}&line_items[0][price]={}&success_url={OK_URL}&metadata[billd_customer_id]=u_orphan",
            h.pro_price
        ),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let foreign = h.stripe(
        "POST",
        "/v1/checkout/sessions",
        &format!(
            "mode=subscription&customer={cus}&line_items[0][price]={}&success_url={OK_URL}",
            h.pro_price
        ),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    let (status, second) = checkout(&h, "u_orphan", plan("pro")).await;

    assert_eq!(status, 200, "{second}");
    let status_of = |id: &str| h.sim.object(id).unwrap()["status"].clone();
    assert_eq!(status_of(first["session_id"].as_str().unwrap()), "expired");
    assert_eq!(status_of(&orphan), "expired");
    // A session billd did not make is not billd's to expire.
    assert_eq!(status_of(&foreign), "open");
    assert_eq!(status_of(second["session_id"].as_str().unwrap()), "open");
    h.shutdown().await;
}

/// The success page's call: a paid session is applied from Stripe at once,
/// with no webhook at all (every delivery is dropped here), repeatably, and
/// only for the customer it was made for.
async fn sync_applies_a_paid_session_without_webhooks_and_only_for_its_customer(db: Db) {
    let no_webhooks = WebhookKnobs {
        drop_rate: 1.0,
        ..WebhookKnobs::default()
    };
    let h = Harness::start(db, t0(), no_webhooks).await;
    profile(&h, "u_sync").await;
    profile(&h, "u_other").await;
    let (status, session) = checkout(&h, "u_sync", plan("pro")).await;
    assert_eq!(status, 200, "{session:#}");
    let session = session["session_id"].as_str().unwrap().to_owned();
    let sync = |user: &'static str, session: String| {
        let h = &h;
        async move {
            let (status, body, _) = post(
                h,
                &format!("/v1/customers/{user}/checkout/sync"),
                Some(APP_KEY),
                json!({ "session_id": session }),
            )
            .await;
            (status, body)
        }
    };

    let (status, open) = sync("u_sync", session.clone()).await;
    assert_eq!(
        (status, &open["error"]["code"]),
        (409, &json!("checkout_not_complete")),
        "{open:#}"
    );

    complete(&h, &session);
    let (status, paid) = sync("u_sync", session.clone()).await;
    assert_eq!(status, 200, "{paid:#}");
    assert_eq!(
        (&paid["plan"], &paid["access"], &paid["status"]),
        (&json!("pro"), &json!("paid"), &json!("active")),
        "{paid:#}"
    );
    assert_eq!(h.entitlements("u_sync").await, (200, paid.clone()));
    let (status, again) = sync("u_sync", session.clone()).await;
    assert_eq!((status, &again), (200, &paid));

    for (user, session, status, code) in [
        (
            "u_other",
            session.clone(),
            404,
            "checkout_session_not_found",
        ),
        (
            "u_sync",
            "cs_test_unknown".to_owned(),
            404,
            "checkout_session_not_found",
        ),
        ("u_sync", "sub_123".to_owned(), 400, "invalid_session_id"),
        ("u_nobody", session.clone(), 404, "customer_not_found"),
    ] {
        let (got, body) = sync(user, session).await;
        assert_eq!(
            (got, &body["error"]["code"]),
            (status, &json!(code)),
            "{user}: {body:#}"
        );
    }
    let (status, other) = h.entitlements("u_other").await;
    assert_eq!((status, &other["plan"]), (200, &json!("free")), "{other:#}");
    h.shutdown().await;
}

on_both_databases!(
    a_session_left_open_by_a_crashed_process_is_expired_by_the_next_new_session,
    with_stripe_tax_configured_checkout_enables_automatic_tax,
    twenty_concurrent_checkouts_get_one_session_and_a_paid_customer_cannot_buy_twice,
    another_plan_expires_the_open_session_and_the_same_request_reuses_the_new_one,
    promotion_codes_are_checked_at_stripe_before_the_session,
    a_stripe_customer_locked_to_another_currency_is_a_clear_conflict,
    the_rate_limit_counts_new_sessions_only,
    stripe_answering_5xx_is_a_503_and_a_retry_then_succeeds,
    the_portal_opens_for_a_customer_with_a_stripe_customer_only,
    bad_checkout_requests_are_refused_before_stripe_with_stable_codes,
    sync_applies_a_paid_session_without_webhooks_and_only_for_its_customer,
);
