//! Issue 4's "How it is checked", through real HTTP.

use billd_core::{CustomerId, UsageKey};
use billd_server::Clock;
use billd_store::{EventFilter, UsageRequest};
use serde_json::Value;
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{first_charge, t0, Db, Harness, ADMIN_KEY, APP_KEY, DAY};

fn limit(e: &Value, feature: &str) -> Option<u64> {
    e["features"][feature]["limit"].as_u64()
}

async fn subscribing_to_pro_grants_pro_limits(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_pro", "pm_card_visa", true).await;

    h.subscribe("u_pro", &cus, &h.pro_price);

    let e = h
        .wait_for("u_pro", "pro access", |e| {
            e["plan"] == "pro" && e["access"] == "paid" && e["status"] == "active"
        })
        .await;
    assert_eq!(limit(&e, "generations"), Some(25));
    assert_eq!(limit(&e, "websites"), Some(10));
    h.shutdown().await;
}

async fn a_failed_renewal_keeps_access_for_the_grace_period_then_blocks_until_paid(db: Db) {
    let start = t0();
    let h = Harness::start(db, start, WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_grace", "pm_card_visa", true).await;
    let sub = h.subscribe("u_grace", &cus, &h.standard_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    h.wait_for("u_grace", "standard access", |e| e["access"] == "paid")
        .await;

    h.pay_with(&cus, "pm_card_chargeCustomerFail");
    h.advance(&clock, period_end + 3600);

    let e = h
        .wait_for("u_grace", "past_due with grace", |e| {
            e["status"] == "past_due" && e["access"] == "grace"
        })
        .await;
    assert_eq!(limit(&e, "generations"), Some(10));
    let grace_until = e["grace_until"].as_i64().unwrap();
    assert_eq!(grace_until, period_end + 3 * DAY, "{e:#}");

    // Only billd's clock moves: no event is needed for the grace to end.
    h.clock.set(grace_until + 1);
    let (_, e) = h.entitlements("u_grace").await;
    assert_eq!(e["access"], "blocked", "{e:#}");
    assert_eq!(e["features"]["generations"]["remaining"], 0);

    h.pay_with(&cus, "pm_card_visa");
    let invoice = h.stripe("GET", &format!("/v1/subscriptions/{sub_id}"), "")["latest_invoice"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe("POST", &format!("/v1/invoices/{invoice}/pay"), "");
    h.wait_for("u_grace", "paid again", |e| {
        e["status"] == "active" && e["access"] == "paid"
    })
    .await;
    h.shutdown().await;
}

async fn a_dispute_freezes_access_and_a_won_dispute_restores_it(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_won", "pm_card_createDispute", true).await;
    h.subscribe("u_won", &cus, &h.pro_price);

    h.wait_for("u_won", "frozen", |e| e["access"] == "frozen")
        .await;
    let charge = first_charge(&h, &cus);
    let dispute = h.stripe("GET", &format!("/v1/disputes?charge={charge}"), "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.stripe(
        "POST",
        &format!("/_sim/disputes/{dispute}/close"),
        "outcome=won",
    );

    let e = h
        .wait_for("u_won", "restored", |e| e["access"] == "paid")
        .await;
    assert_eq!(e["plan"], "pro");
    h.shutdown().await;
}

async fn a_lost_dispute_stays_revoked_and_cancels_the_subscription_at_stripe(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_lost", "pm_card_createDispute", true).await;
    let sub = h.subscribe("u_lost", &cus, &h.pro_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    h.wait_for("u_lost", "frozen", |e| e["access"] == "frozen")
        .await;
    let charge = first_charge(&h, &cus);
    let dispute = h.stripe("GET", &format!("/v1/disputes?charge={charge}"), "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    h.stripe(
        "POST",
        &format!("/_sim/disputes/{dispute}/close"),
        "outcome=lost",
    );

    // The outbox cancels at Stripe; the cancellation's own webhook follows.
    h.wait_for_stripe(&sub_id, "the subscription canceled", |s| {
        s["status"] == "canceled"
    })
    .await;
    let e = h
        .wait_for("u_lost", "no paid access", |e| {
            e["status"] == "canceled" && e["access"] != "paid"
        })
        .await;
    assert_eq!(limit(&e, "generations"), Some(3), "{e:#}");
    h.shutdown().await;
}

async fn a_full_refund_downgrades_to_free_and_cancels(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_refund", "pm_card_visa", true).await;
    let sub = h.subscribe("u_refund", &cus, &h.pro_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    h.wait_for("u_refund", "pro", |e| e["access"] == "paid")
        .await;
    let charge = first_charge(&h, &cus);

    h.stripe("POST", "/v1/refunds", &format!("charge={charge}"));

    h.wait_for_stripe(&sub_id, "the subscription canceled", |s| {
        s["status"] == "canceled"
    })
    .await;
    let e = h
        .wait_for("u_refund", "free", |e| e["plan"] == "free")
        .await;
    assert_eq!(limit(&e, "generations"), Some(3));
    h.shutdown().await;
}

async fn a_partial_refund_is_recorded_and_changes_no_access(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_partial", "pm_card_visa", true).await;
    h.subscribe("u_partial", &cus, &h.pro_price);
    h.wait_for("u_partial", "pro", |e| e["access"] == "paid")
        .await;
    let charge = first_charge(&h, &cus);

    h.stripe(
        "POST",
        "/v1/refunds",
        &format!("charge={charge}&amount=500"),
    );

    let customer = CustomerId::parse("u_partial").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let record = h.store.get_customer(&customer).await.unwrap().unwrap();
        if record
            .state
            .refunds
            .values()
            .any(|r| r.amount_refunded == 500)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "refund never recorded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, e) = h.entitlements("u_partial").await;
    assert_eq!(
        (e["plan"].as_str(), e["access"].as_str()),
        (Some("pro"), Some("paid"))
    );
    h.shutdown().await;
}

async fn a_downgrade_below_usage_keeps_usage_and_blocks_new_consumption(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_down", "pm_card_visa", true).await;
    let sub = h.subscribe("u_down", &cus, &h.pro_price);
    let e = h.wait_for("u_down", "pro", |e| e["plan"] == "pro").await;
    let key: UsageKey =
        serde_json::from_value(e["features"]["generations"]["usage_key"].clone()).unwrap();
    let consumed = h
        .store
        .consume(
            &UsageRequest {
                customer_id: CustomerId::parse("u_down").unwrap(),
                key,
                amount: 15,
                idempotency_key: "gen-1".into(),
                overage: None,
                credits: None,
            },
            25,
            h.clock.now(),
        )
        .await
        .unwrap();
    assert!(matches!(
        consumed,
        billd_store::UsageOutcome::Applied { used: 15, .. }
    ));
    // The customer downgrades a minute later. (Within the subscription's
    // first second, a same-second tie was already settled by one re-fetch
    // per second, so the change would only show at the next event.)
    h.advance(&clock, h.clock.now() + 60);

    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        &format!(
            "items[0][id]={item}&items[0][price]={}&proration_behavior=none",
            h.standard_price
        ),
    );

    let e = h
        .wait_for("u_down", "standard", |e| e["plan"] == "standard")
        .await;
    let generations = &e["features"]["generations"];
    assert_eq!(generations["limit"], 10, "{e:#}");
    assert_eq!(generations["used"], 15, "{e:#}");
    assert_eq!(generations["remaining"], 0, "{e:#}");
    assert_eq!(generations["over_limit"], true, "{e:#}");
    h.shutdown().await;
}

async fn a_payment_needing_authentication_says_an_action_is_required(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h
        .customer("u_sca", "pm_card_authenticationRequired", true)
        .await;

    h.subscribe("u_sca", &cus, &h.pro_price);

    let e = h
        .wait_for("u_sca", "an action required", |e| {
            e["action_required"]["url"].is_string()
        })
        .await;
    assert_eq!(e["status"], "incomplete", "{e:#}");
    assert_eq!(e["access"], "free", "{e:#}");
    h.shutdown().await;
}

/// One script: subscribe pro, downgrade to standard, renew once.
async fn lifecycle_script(h: &Harness, user: &str) -> Value {
    let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
    let sub = h.subscribe(user, &cus, &h.pro_price);
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    h.advance(&clock, h.clock.now() + 60);
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        &format!(
            "items[0][id]={item}&items[0][price]={}&proration_behavior=none",
            h.standard_price
        ),
    );
    h.advance(&clock, period_end + 3600);
    h.wait_for(user, "renewed on standard", |e| {
        e["plan"] == "standard"
            && e["status"] == "active"
            && e["features"]["generations"]["resets_at"].as_i64() > Some(period_end + DAY)
    })
    .await
}

async fn reordered_and_duplicated_deliveries_reach_the_same_state(db: Db) {
    let start = t0();
    let ordered = Harness::start(db, start, WebhookKnobs::default()).await;
    let shuffled = Harness::start(
        db,
        start,
        WebhookKnobs {
            duplicate_rate: 1.0,
            reorder_window_ms: 300,
            ..WebhookKnobs::default()
        },
    )
    .await;

    let a = lifecycle_script(&ordered, "u_order").await;
    let b = lifecycle_script(&shuffled, "u_order").await;

    let view = |e: &Value| {
        serde_json::json!({
            "plan": e["plan"], "status": e["status"], "access": e["access"],
            "cancel_at_period_end": e["cancel_at_period_end"],
            "generations": e["features"]["generations"]["limit"],
            "websites": e["features"]["websites"]["limit"],
            "resets_at": e["features"]["generations"]["resets_at"],
        })
    };
    assert_eq!(view(&a), view(&b));
    // Every delivery arrived twice: still one row per event id.
    let (_, events) = shuffled
        .admin_get("/v1/admin/events?limit=1000", Some(ADMIN_KEY))
        .await;
    let ids: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["id"].as_str())
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(ids.len(), unique.len());
    ordered.shutdown().await;
    shuffled.shutdown().await;
}

async fn events_of_an_unknown_stripe_customer_are_parked_then_applied_once_linked(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    // No metadata on the Stripe customer: its own events cannot be linked.
    let (_, cus) = h.customer("u_late", "pm_card_visa", false).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, unlinked) = h
            .admin_get("/v1/admin/events?status=unlinked", Some(ADMIN_KEY))
            .await;
        if unlinked["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|e| e["type"] == "customer.created"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "customer.created never parked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The subscription carries the metadata: it links the Stripe customer.
    h.subscribe("u_late", &cus, &h.pro_price);

    h.wait_for("u_late", "pro", |e| e["access"] == "paid").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, unlinked) = h
            .admin_get("/v1/admin/events?status=unlinked", Some(ADMIN_KEY))
            .await;
        if unlinked["data"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events stay unlinked: {unlinked:#}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    h.shutdown().await;
}

async fn the_audit_log_and_admin_api_need_an_admin_key(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_audit", "pm_card_visa", true).await;
    h.subscribe("u_audit", &cus, &h.pro_price);
    h.wait_for("u_audit", "pro", |e| e["access"] == "paid")
        .await;

    let path = "/v1/admin/audit?customer=u_audit";
    assert_eq!(h.admin_get(path, None).await.0, 401);
    assert_eq!(h.admin_get(path, Some("wrong")).await.0, 401);
    let (status, body) = h.admin_get(path, Some(APP_KEY)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, audit) = h.admin_get(path, Some(ADMIN_KEY)).await;
    assert_eq!(status, 200);
    let rows = audit["data"].as_array().unwrap();
    assert!(
        rows.iter().any(
            |r| r["reason"].as_str().is_some_and(|r| r.starts_with("evt_"))
                && r["after"].as_str().is_some_and(|a| a.contains("active"))
        ),
        "{audit:#}"
    );

    let (status, _) = h.entitlements("nobody").await;
    assert_eq!(status, 404);
    let unauthenticated = h
        .http
        .get(format!("{}/v1/customers/u_audit/entitlements", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status().as_u16(), 401);

    let (_, events) = h
        .admin_get("/v1/admin/events?limit=1", Some(ADMIN_KEY))
        .await;
    let id = events["data"][0]["id"].as_str().unwrap().to_string();
    let replay = |key: &'static str, id: String| {
        h.http
            .post(format!("{}/v1/admin/events/{id}/replay", h.base))
            .bearer_auth(key)
            .send()
    };
    assert_eq!(
        replay(APP_KEY, id.clone()).await.unwrap().status().as_u16(),
        403
    );
    assert_eq!(replay(ADMIN_KEY, id).await.unwrap().status().as_u16(), 200);
    assert_eq!(
        replay(ADMIN_KEY, "evt_missing".into())
            .await
            .unwrap()
            .status()
            .as_u16(),
        404
    );
    // A replayed event applies as a duplicate: access is unchanged.
    h.wait_for("u_audit", "still pro", |e| e["access"] == "paid")
        .await;
    h.shutdown().await;
}

/// Real Stripe never puts an invoice's `payments` (includable) in a webhook:
/// a refund or dispute naming only its payment intent reaches its payer
/// through `invoice_payment.paid`, which names the invoice and the payment
/// intent. `payment_intent.succeeded` (which names the customer too) is
/// switched off here so that the invoice payment alone has to link it.
async fn a_refund_and_a_dispute_naming_only_their_payment_intent_reach_the_payer(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let endpoint = h.stripe("GET", "/v1/webhook_endpoints", "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let events: Vec<String> = billd_server::pipeline::HANDLED_EVENT_TYPES
        .iter()
        .filter(|t| **t != "payment_intent.succeeded")
        .map(|t| format!("enabled_events[]={t}"))
        .collect();
    h.stripe(
        "POST",
        &format!("/v1/webhook_endpoints/{endpoint}"),
        &events.join("&"),
    );
    let mut payers = Vec::new();
    for user in ["u_payer", "u_bystander"] {
        let (_, cus) = h.customer(user, "pm_card_visa", true).await;
        h.subscribe(user, &cus, &h.pro_price);
        h.wait_for(user, "pro", |e| e["access"] == "paid").await;
        let pi = h.stripe("GET", &format!("/v1/payment_intents?customer={cus}"), "")["data"][0]
            ["id"]
            .as_str()
            .unwrap()
            .to_string();
        payers.push((CustomerId::parse(user).unwrap(), pi));
    }
    let (payer, pi) = &payers[0];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while h.store.find_customer_by_object(pi).await.unwrap().as_ref() != Some(payer) {
        assert!(std::time::Instant::now() < deadline, "{pi} never linked");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let received = h.store.list_events(&EventFilter::default()).await.unwrap();
    assert!(
        received
            .iter()
            .any(|e| e.event_type == "invoice_payment.paid"),
        "billd got no invoice_payment.paid"
    );
    for e in &received {
        assert_ne!(e.event_type, "payment_intent.succeeded", "switched off");
        let payload: Value = serde_json::from_str(&e.payload).unwrap();
        assert!(
            payload["data"]["object"].get("payments").is_none(),
            "{payload:#}"
        );
    }

    // A charge and a dispute billd has never seen, naming no customer.
    let charge = "ch_1NoCustomerKnown000000";
    h.deliver(
        "evt_1RefundOfTheIntentOnly",
        "charge.refunded",
        serde_json::json!({
            "id": charge, "object": "charge", "customer": null, "amount": 1900,
            "amount_refunded": 500, "refunded": false, "currency": "eur",
            "payment_intent": pi, "metadata": {},
        }),
    )
    .await;
    h.deliver(
        "evt_1DisputeOfTheIntentOnly",
        "charge.dispute.created",
        serde_json::json!({
            "id": "dp_1NoCustomerKnown000000", "object": "dispute", "charge": charge,
            "payment_intent": pi, "status": "needs_response", "amount": 1900,
            "currency": "eur", "reason": "fraudulent",
        }),
    )
    .await;
    h.wait_for("u_payer", "frozen by the dispute", |e| {
        e["access"] == "frozen"
    })
    .await;
    let state = h.store.get_customer(payer).await.unwrap().unwrap().state;
    assert_eq!(
        state
            .refunds
            .iter()
            .map(|(id, r)| (id.to_string(), r.amount_refunded))
            .collect::<Vec<_>>(),
        vec![(charge.to_owned(), 500)]
    );
    assert_eq!(state.disputes.len(), 1);
    let (bystander, _) = &payers[1];
    let other = h
        .store
        .get_customer(bystander)
        .await
        .unwrap()
        .unwrap()
        .state;
    assert!(other.refunds.is_empty() && other.disputes.is_empty());
    let (_, e) = h.entitlements("u_bystander").await;
    assert_eq!(e["access"], "paid");
    h.shutdown().await;
}

on_both_databases!(
    subscribing_to_pro_grants_pro_limits,
    a_failed_renewal_keeps_access_for_the_grace_period_then_blocks_until_paid,
    a_dispute_freezes_access_and_a_won_dispute_restores_it,
    a_lost_dispute_stays_revoked_and_cancels_the_subscription_at_stripe,
    a_full_refund_downgrades_to_free_and_cancels,
    a_partial_refund_is_recorded_and_changes_no_access,
    a_refund_and_a_dispute_naming_only_their_payment_intent_reach_the_payer,
    a_downgrade_below_usage_keeps_usage_and_blocks_new_consumption,
    a_payment_needing_authentication_says_an_action_is_required,
    reordered_and_duplicated_deliveries_reach_the_same_state,
    events_of_an_unknown_stripe_customer_are_parked_then_applied_once_linked,
    the_audit_log_and_admin_api_need_an_admin_key,
);
