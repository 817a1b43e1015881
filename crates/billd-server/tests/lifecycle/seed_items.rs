//! The seed items that had no end-to-end scenario yet: trials (P1-19), a
//! Stripe customer deleted at Stripe (P1-14), discounts and promotion codes
//! (the state side of P1-17), and a dispute parked until its charge's
//! customer is linked.

use std::time::{Duration, Instant};

use billd_core::{CustomerId, Effect};
use billd_server::Clock;
use billd_store::OutboxFilter;
use serde_json::Value;
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY, DAY};

/// `PUT /v1/customers/{user}` on billd, then a Stripe customer carrying
/// `metadata[billd_customer_id]` on a new test clock, with no payment method.
pub(crate) async fn customer_without_card(h: &Harness, user: &str) -> (String, String) {
    let response = h
        .http
        .put(format!("{}/v1/customers/{user}", h.base))
        .bearer_auth(APP_KEY)
        .json(&serde_json::json!({ "email": format!("{user}@example.com") }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let clock = h.stripe(
        "POST",
        "/v1/test_helpers/test_clocks",
        &format!("frozen_time={}", h.clock.now()),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cus = h.stripe(
        "POST",
        "/v1/customers",
        &format!("email={user}@example.com&test_clock={clock}&metadata[billd_customer_id]={user}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    (clock, cus)
}

/// The customer's outbox effects, once `done` holds for them.
pub(crate) async fn wait_for_outbox(
    h: &Harness,
    user: &str,
    what: &str,
    done: impl Fn(&[Effect]) -> bool,
) {
    let filter = OutboxFilter {
        customer_id: Some(CustomerId::parse(user).unwrap()),
        ..OutboxFilter::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let effects: Vec<Effect> = h
            .store
            .list_outbox(&filter)
            .await
            .unwrap()
            .iter()
            .map(|row| row.effect().unwrap())
            .collect();
        if done(&effects) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; outbox: {effects:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) fn has_key(effects: &[Effect], key: &str) -> bool {
    effects.iter().any(|e| e.dedupe_key() == key)
}

async fn a_trial_counts_as_paid_warns_before_it_ends_and_converts_to_active(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_trial", "pm_card_visa", true).await;

    let sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&trial_period_days=14&metadata[billd_customer_id]=u_trial",
            h.pro_price
        ),
    );
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let trial_end = sub["trial_end"].as_i64().unwrap();

    let e = h
        .wait_for("u_trial", "trialing", |e| e["status"] == "trialing")
        .await;
    assert_eq!(e["access"], "paid", "{e:#}");
    assert_eq!(e["plan"], "pro", "{e:#}");
    assert_eq!(e["trial_end"], trial_end, "{e:#}");
    assert_eq!(e["features"]["generations"]["limit"], 25, "{e:#}");

    // Stripe announces the end three days ahead: one email, once.
    h.advance(&clock, trial_end - 3 * DAY + 60);
    wait_for_outbox(&h, "u_trial", "the trial-ending email", |effects| {
        has_key(effects, &format!("trial_ending:{sub_id}:{trial_end}"))
    })
    .await;

    h.advance(&clock, trial_end + 3600);
    let e = h
        .wait_for("u_trial", "active after the trial", |e| {
            e["status"] == "active"
        })
        .await;
    assert_eq!(e["access"], "paid", "{e:#}");
    assert_eq!(e["plan"], "pro", "{e:#}");
    assert_eq!(e["trial_end"], Value::Null, "{e:#}");
    h.shutdown().await;
}

/// A trial without a payment method ends the way the subscription's
/// `trial_settings[end_behavior][missing_payment_method]` says; either way
/// the customer falls back to the free plan.
async fn trial_without_card_ends(db: Db, behavior: &str, status: &str) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let user = format!("u_trial_{behavior}");
    let (clock, cus) = customer_without_card(&h, &user).await;
    let sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&trial_period_days=7\
             &trial_settings[end_behavior][missing_payment_method]={behavior}\
             &metadata[billd_customer_id]={user}",
            h.standard_price
        ),
    );
    let trial_end = sub["trial_end"].as_i64().unwrap();
    h.wait_for(&user, "trialing", |e| {
        e["status"] == "trialing" && e["access"] == "paid" && e["plan"] == "standard"
    })
    .await;

    h.advance(&clock, trial_end + 60);

    let e = h
        .wait_for(&user, "the trial ended", |e| e["status"] == status)
        .await;
    assert_eq!(e["access"], "free", "{e:#}");
    assert_eq!(e["plan"], "free", "{e:#}");
    assert_eq!(e["trial_end"], Value::Null, "{e:#}");
    assert_eq!(e["features"]["generations"]["limit"], 3, "{e:#}");
    h.shutdown().await;
}

async fn a_trial_without_a_card_set_to_cancel_ends_canceled_on_the_free_plan(db: Db) {
    trial_without_card_ends(db, "cancel", "canceled").await;
}

async fn a_trial_without_a_card_set_to_pause_ends_paused_on_the_free_plan(db: Db) {
    trial_without_card_ends(db, "pause", "paused").await;
}

async fn a_stripe_customer_deleted_at_stripe_clears_the_link_downgrades_and_keeps_history(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_gone", "pm_card_visa", true).await;
    let sub = h.subscribe("u_gone", &cus, &h.pro_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    h.wait_for("u_gone", "pro", |e| e["access"] == "paid").await;
    let customer = CustomerId::parse("u_gone").unwrap();
    let linked = h.store.get_customer(&customer).await.unwrap().unwrap();
    assert_eq!(
        linked.stripe_customer_id.as_ref().map(|c| c.to_string()),
        Some(cus.clone())
    );

    h.stripe("DELETE", &format!("/v1/customers/{cus}"), "");

    let e = h
        .wait_for("u_gone", "free after the deletion", |e| e["plan"] == "free")
        .await;
    assert_eq!(e["access"], "free", "{e:#}");
    assert_eq!(e["features"]["generations"]["limit"], 3, "{e:#}");
    wait_for_outbox(&h, "u_gone", "the deletion alert", |effects| {
        has_key(effects, &format!("stripe_customer_deleted:{cus}"))
    })
    .await;
    let record = h.store.get_customer(&customer).await.unwrap().unwrap();
    assert_eq!(record.stripe_customer_id, None, "the link is cleared");
    assert_eq!(record.deleted_at, None, "billd's customer stays");
    // History is kept: the subscription and the audit trail of the paid period.
    let known = record
        .state
        .subscriptions
        .values()
        .find(|s| s.snapshot.id.as_str() == sub_id)
        .expect("the subscription is still known");
    assert!(known.deleted, "{known:#?}");
    let (status, audit) = h
        .admin_get("/v1/admin/audit?customer=u_gone", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200);
    let rows = audit["data"].as_array().unwrap();
    let changed_to = |field: &str, value: &str| {
        rows.iter()
            .any(|r| r["field"] == field && r["after"].as_str() == Some(value))
    };
    assert!(changed_to("plan", "pro"), "{audit:#}");
    assert!(
        changed_to(&format!("stripe_customer.{cus}.deleted"), "true"),
        "{audit:#}"
    );
    h.shutdown().await;
}

async fn a_promotion_code_is_shown_in_the_entitlements_until_its_discount_ends(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_promo", "pm_card_visa", true).await;
    let coupon = h.stripe(
        "POST",
        "/v1/coupons",
        "percent_off=25&duration=once&name=Launch",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let promo = h.stripe(
        "POST",
        "/v1/promotion_codes",
        &format!("promotion[type]=coupon&promotion[coupon]={coupon}&code=LAUNCH25"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();

    let sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&discounts[0][promotion_code]={promo}\
             &metadata[billd_customer_id]=u_promo",
            h.pro_price
        ),
    );
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();

    let e = h
        .wait_for("u_promo", "the discount shown", |e| {
            e["discount"].is_object() && e["access"] == "paid"
        })
        .await;
    let discount = &e["discount"];
    assert_eq!(discount["coupon"], coupon.as_str(), "{e:#}");
    assert_eq!(discount["promotion_code"], promo.as_str(), "{e:#}");
    assert!(
        discount["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("di_")),
        "{e:#}"
    );

    // A `once` coupon leaves at the next invoice: customer.discount.deleted.
    h.advance(&clock, period_end + 3600);

    let e = h
        .wait_for("u_promo", "the discount gone after renewal", |e| {
            e["discount"].is_null()
                && e["features"]["generations"]["resets_at"].as_i64() > Some(period_end + DAY)
        })
        .await;
    assert_eq!(
        (e["plan"].as_str(), e["access"].as_str()),
        (Some("pro"), Some("paid"))
    );
    let record = h
        .store
        .get_customer(&CustomerId::parse("u_promo").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(
        record.state.discounts.values().all(|d| d.deleted),
        "the discount is kept as history, deleted: {:#?}",
        record.state.discounts
    );
    h.shutdown().await;
}

async fn unlinked(h: &Harness) -> Vec<Value> {
    let (status, body) = h
        .admin_get(
            "/v1/admin/events?status=unlinked&limit=1000",
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(status, 200, "{body:#}");
    body["data"].as_array().cloned().unwrap_or_default()
}

async fn a_parked_dispute_is_applied_once_its_charges_customer_is_linked(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    // Nothing at Stripe names the billd customer yet: every event parks.
    let (_, cus) = h
        .customer("u_dispute_late", "pm_card_createDispute", false)
        .await;
    h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={}", h.pro_price),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let parked = unlinked(&h).await;
        if parked.iter().any(|e| e["type"] == "charge.dispute.created")
            && parked
                .iter()
                .any(|e| e["type"] == "customer.subscription.created")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dispute never parked: {parked:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = metrics
        .lines()
        .find_map(|l| l.strip_prefix("billd_inbox_unlinked_events "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(gauge.is_some_and(|n| n >= 2), "{metrics}");

    // The app's user id reaches the Stripe customer: the link appears.
    h.stripe(
        "POST",
        &format!("/v1/customers/{cus}"),
        "metadata[billd_customer_id]=u_dispute_late",
    );

    let e = h
        .wait_for("u_dispute_late", "frozen by the requeued dispute", |e| {
            e["access"] == "frozen" && e["status"] == "active"
        })
        .await;
    assert_eq!(e["plan"], "pro", "{e:#}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let parked = unlinked(&h).await;
        if parked.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "events stay parked: {parked:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let record = h
        .store
        .get_customer(&CustomerId::parse("u_dispute_late").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        record.state.disputes.len(),
        1,
        "{:#?}",
        record.state.disputes
    );
    h.shutdown().await;
}

on_both_databases!(
    a_trial_counts_as_paid_warns_before_it_ends_and_converts_to_active,
    a_trial_without_a_card_set_to_cancel_ends_canceled_on_the_free_plan,
    a_trial_without_a_card_set_to_pause_ends_paused_on_the_free_plan,
    a_stripe_customer_deleted_at_stripe_clears_the_link_downgrades_and_keeps_history,
    a_promotion_code_is_shown_in_the_entitlements_until_its_discount_ends,
    a_parked_dispute_is_applied_once_its_charges_customer_is_linked,
);
