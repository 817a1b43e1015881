//! Trials sold through billd's Checkout, over real HTTP against stripe-sim
//! on both databases: a plan's `trial_days` with a card ends in a paid,
//! active subscription; with `trial_card = false` the checkout asks for no
//! card and a trial ending without one is canceled, back on free (with one
//! added meanwhile it converts). Either
//! way the trial-ending email is written three days ahead, and overage
//! stays closed while trialing.

use std::time::{Duration, Instant};

use billd_core::{Catalog, CustomerId};
use billd_server::http::ApiConfig;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::overage::{consume, metered_price};
use crate::seed_items::{customer_without_card, has_key, wait_for_outbox};
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

/// The seed's plans with overage on generations, a 7-day trial with a card
/// on standard and a 14-day trial without one on pro.
const TRIAL_CATALOG: &str = r#"
currency = "eur"

[features]
generations = { kind = "metered", overage = { price = "billd_gen_overage_eur", per = 1, cap = 5, unit_amount = 40 } }
websites    = { kind = "capacity" }

[plans.free]
limits = { generations = 3, websites = 1 }

[plans.standard]
limits     = { generations = 10, websites = 3 }
trial_days = 7
prices     = { eur = { lookup_key = "billd_standard_eur", unit_amount = 900 } }

[plans.pro]
limits     = { generations = 25, websites = 10 }
trial_days = 14
trial_card = false
prices     = { eur = { lookup_key = "billd_pro_eur", unit_amount = 1900 } }
"#;

async fn harness(db: Db) -> Harness {
    let catalog = Catalog::from_toml(TRIAL_CATALOG).unwrap();
    let h = Harness::start_with(
        db,
        t0(),
        WebhookKnobs::default(),
        catalog,
        ApiConfig::default(),
    )
    .await;
    metered_price(&h);
    h
}

/// Waits until billd links `user` to the Stripe customer `cus` (from the
/// customer's own webhook), so its checkout runs on that customer's clock.
async fn linked(h: &Harness, user: &str, cus: &str) {
    let id = CustomerId::parse(user).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let record = h.store.get_customer(&id).await.unwrap().unwrap();
        let stripe = record
            .stripe_customer_id
            .clone()
            .or_else(|| record.state.stripe_customer().cloned());
        if stripe.is_some_and(|s| s.as_str() == cus) {
            return;
        }
        assert!(Instant::now() < deadline, "{user} never linked to {cus}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// billd's checkout of `plan` for `user`, completed at the emulator with
/// `payment_method` (`none`: no card); returns the session and the
/// subscription it made.
async fn checkout(h: &Harness, user: &str, plan: &str, payment_method: &str) -> (Value, Value) {
    let response = h
        .http
        .post(format!("{}/v1/customers/{user}/checkout", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "plan": plan, "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let view: Value = response.json().await.unwrap();
    let id = view["session_id"].as_str().unwrap();
    let session = h.stripe("GET", &format!("/v1/checkout/sessions/{id}"), "");
    let done = h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{id}/complete"),
        &format!("payment_method={payment_method}"),
    );
    let sub = h.stripe(
        "GET",
        &format!(
            "/v1/subscriptions/{}",
            done["subscription"].as_str().unwrap()
        ),
        "",
    );
    (session, sub)
}

async fn a_trial_with_a_card_ends_in_a_paid_active_subscription_with_overage(db: Db) {
    let h = harness(db).await;
    let (clock, cus) = h.customer("u_tcard", "pm_card_visa", true).await;
    linked(&h, "u_tcard", &cus).await;
    let (session, sub) = checkout(&h, "u_tcard", "standard", "pm_card_visa").await;
    assert_eq!(
        session["payment_method_collection"], "always",
        "{session:#}"
    );
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let trial_end = sub["trial_end"].as_i64().unwrap();
    assert_eq!(trial_end, t0() + 7 * DAY, "{sub:#}");
    assert_eq!(
        sub["trial_settings"]["end_behavior"]["missing_payment_method"],
        "create_invoice"
    );

    // During the trial: the plan's limit, no overage (Stripe bills no usage).
    let e = h
        .wait_for("u_tcard", "trialing", |e| e["status"] == "trialing")
        .await;
    assert_eq!(
        (&e["plan"], &e["access"]),
        (&json!("standard"), &json!("paid"))
    );
    assert_eq!(
        e["features"]["generations"]["overage_cap"],
        Value::Null,
        "{e:#}"
    );
    assert_eq!(consume(&h, "u_tcard", 10, "t1").await.0, 200);
    let (status, refused) = consume(&h, "u_tcard", 1, "t2").await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (402, &json!("quota_exceeded"))
    );

    h.advance(&clock, trial_end - 3 * DAY + 60);
    wait_for_outbox(&h, "u_tcard", "the trial-ending email", |effects| {
        has_key(effects, &format!("trial_ending:{sub_id}:{trial_end}"))
    })
    .await;

    h.advance(&clock, trial_end + 3600);
    let e = h
        .wait_for("u_tcard", "active after the trial", |e| {
            e["status"] == "active"
        })
        .await;
    assert_eq!(
        (&e["plan"], &e["access"]),
        (&json!("standard"), &json!("paid"))
    );
    assert_eq!(e["trial_end"], Value::Null, "{e:#}");
    assert_eq!(e["features"]["generations"]["overage_cap"], 5, "{e:#}");
    let invoices = h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "");
    let first_paid = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["billing_reason"] == "subscription_cycle")
        .unwrap_or_else(|| panic!("{invoices:#}"));
    assert_eq!(
        (&first_paid["amount_paid"], &first_paid["status"]),
        (&json!(900), &json!("paid")),
        "{first_paid:#}"
    );
    h.shutdown().await;
}

/// A trial sold without a card; `add_card`: the customer adds one (as the
/// portal does) before it ends.
async fn cardless_trial(db: Db, add_card: bool) {
    let h = harness(db).await;
    let plans: Value = h
        .http
        .get(format!("{}/v1/plans", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let trial = |name: &str| {
        let plan = plans["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{plans:#}"));
        (plan["trial_days"].clone(), plan["trial_card"].clone())
    };
    assert_eq!(trial("pro"), (json!(14), json!(false)));
    assert_eq!(trial("standard"), (json!(7), json!(true)));
    assert_eq!(trial("free"), (Value::Null, Value::Null));
    let (clock, cus) = customer_without_card(&h, "u_tnocard").await;
    linked(&h, "u_tnocard", &cus).await;
    let (session, sub) = checkout(&h, "u_tnocard", "pro", "none").await;
    assert_eq!(
        session["payment_method_collection"], "if_required",
        "{session:#}"
    );
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let trial_end = sub["trial_end"].as_i64().unwrap();
    assert_eq!(trial_end, t0() + 14 * DAY, "{sub:#}");
    assert_eq!(
        sub["trial_settings"]["end_behavior"]["missing_payment_method"],
        "cancel"
    );
    assert_eq!(sub["default_payment_method"], Value::Null, "{sub:#}");

    let e = h
        .wait_for("u_tnocard", "trialing pro", |e| {
            e["status"] == "trialing" && e["plan"] == "pro"
        })
        .await;
    assert_eq!(e["access"], "paid", "{e:#}");
    assert_eq!(e["features"]["generations"]["limit"], 25, "{e:#}");
    assert_eq!(e["features"]["generations"]["overage_cap"], Value::Null);

    h.advance(&clock, trial_end - 3 * DAY + 60);
    wait_for_outbox(&h, "u_tnocard", "the trial-ending email", |effects| {
        has_key(effects, &format!("trial_ending:{sub_id}:{trial_end}"))
    })
    .await;

    if add_card {
        h.pay_with(&cus, "pm_card_visa");
        h.advance(&clock, trial_end + 60);
        let e = h
            .wait_for("u_tnocard", "active after the trial", |e| {
                e["status"] == "active"
            })
            .await;
        assert_eq!((&e["plan"], &e["access"]), (&json!("pro"), &json!("paid")));
        let invoices = h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "");
        assert!(
            invoices["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["billing_reason"] == "subscription_cycle" && i["amount_paid"] == 1900),
            "{invoices:#}"
        );
        h.shutdown().await;
        return;
    }
    h.advance(&clock, trial_end + 60);
    let e = h
        .wait_for("u_tnocard", "canceled at the trial's end", |e| {
            e["status"] == "canceled"
        })
        .await;
    assert_eq!((&e["plan"], &e["access"]), (&json!("free"), &json!("free")));
    assert_eq!(e["features"]["generations"]["limit"], 3, "{e:#}");
    let ended = h.stripe("GET", &format!("/v1/subscriptions/{sub_id}"), "");
    assert_eq!(ended["status"], "canceled", "{ended:#}");
    // Nothing was charged: the only invoice is the trial's zero one.
    let invoices = h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "");
    assert!(
        invoices["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["amount_paid"] == 0),
        "{invoices:#}"
    );
    let events = h.stripe("GET", "/v1/events?type=customer.subscription.deleted", "");
    assert!(
        events["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ev| ev["data"]["object"]["id"] == sub_id.as_str()),
        "{events:#}"
    );
    h.shutdown().await;
}

async fn a_trial_without_a_card_asks_for_none_and_ends_canceled_on_free_limits(db: Db) {
    cardless_trial(db, false).await;
}

async fn a_trial_without_a_card_converts_when_a_card_is_added_before_it_ends(db: Db) {
    cardless_trial(db, true).await;
}

on_both_databases!(
    a_trial_with_a_card_ends_in_a_paid_active_subscription_with_overage,
    a_trial_without_a_card_asks_for_none_and_ends_canceled_on_free_limits,
    a_trial_without_a_card_converts_when_a_card_is_added_before_it_ends,
);
