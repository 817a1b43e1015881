//! Credit packs over real HTTP against stripe-sim, on both databases, with
//! every webhook delivered twice and shuffled: a pack bought through
//! Checkout in payment mode is credited once, consumed after the period's
//! included quota and before overage, kept across a renewal, and a refund
//! of its payment removes what is left of it without touching the plan.
//! The success page's sync credits a paid pack once with its webhook,
//! whichever comes first, and a pack paid by a delayed method is credited
//! when its payment succeeds, not when it fails.

use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_server::http::ApiConfig;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::overage::{consume, metered_price};
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

/// The overage scenario's catalog (10 included in standard, 5 of overage)
/// with a pack of 100 generations at 5 EUR.
fn catalog() -> Catalog {
    let overage = crate::overage::catalog();
    let text = format!(
        "{}\n[credit_packs.gen_100]\nfeature = \"generations\"\namount = 100\nprices = {{ eur = {{ lookup_key = \"billd_gen_100_eur\", unit_amount = 500 }} }}\n",
        billd_core::catalog::SEED_CATALOG_TOML.replacen(
            "generations = { kind = \"metered\" }",
            "generations = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 1, cap = 5, unit_amount = 40 } }",
            1,
        )
    );
    let catalog = Catalog::from_toml(&text).unwrap();
    assert_eq!(catalog.overages(), overage.overages());
    catalog
}

/// Buys a pack through billd's endpoint and the emulator's Checkout page:
/// (session, payment intent).
async fn buy_pack(h: &Harness, user: &str) -> (String, String) {
    let response = h
        .http
        .post(format!("{}/v1/customers/{user}/credits/checkout", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "pack": "gen_100", "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no" }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let view: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{view:#}");
    assert_eq!(
        (
            &view["pack"],
            &view["feature"],
            &view["amount"],
            &view["currency"]
        ),
        (
            &json!("gen_100"),
            &json!("generations"),
            &json!(100),
            &json!("eur")
        ),
        "{view:#}"
    );
    let id = view["session_id"].as_str().unwrap().to_string();
    let session = h.stripe("GET", &format!("/v1/checkout/sessions/{id}"), "");
    assert_eq!(session["mode"], "payment", "{session:#}");
    let items = h.stripe("GET", &format!("/v1/checkout/sessions/{id}/line_items"), "");
    assert_eq!(items["data"][0]["price"]["type"], "one_time", "{items:#}");
    let done = h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{id}/complete"),
        "payment_method=pm_card_visa",
    );
    assert_eq!(done["payment_status"], "paid", "{done:#}");
    let pi = done["payment_intent"].as_str().unwrap().to_string();
    (id, pi)
}

/// Waits until billd has applied the stored event `id`.
async fn wait_processed(h: &Harness, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = h.store.get_event(id).await.unwrap();
        if event
            .as_ref()
            .is_some_and(|e| e.status == billd_store::EventStatus::Processed)
        {
            return;
        }
        assert!(Instant::now() < deadline, "{id} not processed: {event:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn generations(ent: &Value) -> (Value, Value, Value) {
    let gen = &ent["features"]["generations"];
    (
        gen["used"].clone(),
        gen["credits"].clone(),
        gen["overage_used"].clone(),
    )
}

async fn a_pack_is_credited_once_used_after_the_quota_kept_at_renewal_and_refunded(db: Db) {
    let knobs = WebhookKnobs {
        duplicate_rate: 1.0,
        reorder_window_ms: 100,
        ..WebhookKnobs::default()
    };
    let h = Harness::start_with(db, t0(), knobs, catalog(), ApiConfig::default()).await;
    let (_, overage) = metered_price(&h);
    // The pack's one-time price, found by its lookup key.
    h.stripe(
        "POST",
        "/v1/prices",
        "product_data[name]=gen_100&currency=eur&unit_amount=500&lookup_key=billd_gen_100_eur",
    );
    let (clock, cus) = h.customer("u_cred", "pm_card_visa", true).await;
    h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&items[1][price]={overage}&metadata[billd_customer_id]=u_cred",
            h.standard_price
        ),
    );
    h.wait_for("u_cred", "standard, paid", |e| {
        e["plan"] == "standard" && e["access"] == "paid"
    })
    .await;

    // Bought: 100 credits, once whatever the duplicated deliveries.
    let (first_session, first_pi) = buy_pack(&h, "u_cred").await;
    let ent = h
        .wait_for("u_cred", "the first pack", |e| {
            e["features"]["generations"]["credits"] == 100
        })
        .await;
    assert_eq!(generations(&ent), (json!(0), json!(100), json!(0)));

    // 10 included first: 8, then 5 (2 included, 3 credits), then its replay.
    assert_eq!(consume(&h, "u_cred", 8, "k1").await.0, 200);
    let (status, second) = consume(&h, "u_cred", 5, "k2").await;
    assert_eq!((status, &second["used"]), (200, &json!(10)), "{second:#}");
    let (_, replay) = consume(&h, "u_cred", 5, "k2").await;
    assert_eq!(replay["replayed"], true);
    let (_, ent) = h.entitlements("u_cred").await;
    assert_eq!(generations(&ent), (json!(10), json!(97), json!(0)));

    // The renewal resets the quota, not the credits.
    h.advance(&clock, t0() + 30 * DAY + 3600);
    let ent = h
        .wait_for("u_cred", "the next period", |e| {
            e["features"]["generations"]["used"] == 0
        })
        .await;
    assert_eq!(generations(&ent), (json!(0), json!(97), json!(0)));
    assert_eq!(consume(&h, "u_cred", 10, "k3").await.0, 200);
    assert_eq!(consume(&h, "u_cred", 7, "k4").await.0, 200);
    let (_, ent) = h.entitlements("u_cred").await;
    assert_eq!(generations(&ent), (json!(10), json!(90), json!(0)));

    // A second pack; its completion told again under another event id
    // credits nothing more (the grant's key is the payment intent).
    let (second_session, _) = buy_pack(&h, "u_cred").await;
    h.wait_for("u_cred", "the second pack", |e| {
        e["features"]["generations"]["credits"] == 190
    })
    .await;
    let session = h.stripe(
        "GET",
        &format!("/v1/checkout/sessions/{second_session}"),
        "",
    );
    h.deliver("evt_pack_again", "checkout.session.completed", session)
        .await;
    wait_processed(&h, "evt_pack_again").await;
    let (_, ent) = h.entitlements("u_cred").await;
    assert_eq!(generations(&ent), (json!(10), json!(190), json!(0)));

    // Refunding the first pack's payment removes what is left of it (90);
    // the plan is untouched.
    h.stripe("POST", "/v1/refunds", &format!("payment_intent={first_pi}"));
    let ent = h
        .wait_for("u_cred", "the refund", |e| {
            e["features"]["generations"]["credits"] == 100
        })
        .await;
    assert_eq!(
        (&ent["plan"], &ent["access"]),
        (&json!("standard"), &json!("paid")),
        "{ent:#}"
    );
    let session = h.stripe("GET", &format!("/v1/checkout/sessions/{first_session}"), "");
    h.deliver("evt_pack_late", "checkout.session.completed", session)
        .await;
    wait_processed(&h, "evt_pack_late").await;
    let (_, ent) = h.entitlements("u_cred").await;
    assert_eq!(ent["features"]["generations"]["credits"], 100);

    // Credits before overage: 101 more takes the 100 left, then 1 of
    // overage, the only unit metered.
    let (status, last) = consume(&h, "u_cred", 101, "k5").await;
    assert_eq!((status, &last["used"]), (200, &json!(11)), "{last:#}");
    let (_, ent) = h.entitlements("u_cred").await;
    assert_eq!(generations(&ent), (json!(11), json!(0), json!(1)));
    let (status, refused) = consume(&h, "u_cred", 5, "k6").await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (402, &json!("overage_cap_reached")),
        "{refused:#}"
    );
    let rows = h
        .store
        .list_outbox(&billd_store::OutboxFilter::default())
        .await
        .unwrap();
    let meters: Vec<_> = rows.iter().filter(|r| r.kind == "meter_event").collect();
    assert_eq!(meters.len(), 1, "{meters:#?}");
    let payload: Value = serde_json::from_str(&meters[0].payload).unwrap();
    assert_eq!(payload["value"], json!(1), "{meters:#?}");
    assert!(
        !rows.iter().any(|r| r.kind == "cancel_subscription"),
        "a pack's refund does not cancel the plan: {rows:#?}"
    );
    let sub = h.stripe("GET", &format!("/v1/subscriptions?customer={cus}"), "");
    assert_eq!(sub["data"][0]["status"], "active");
    h.shutdown().await;
}

/// Buys a pack and pays it on the emulator's page by bank debit: the
/// session completes `unpaid` until the payment settles. (session, payment
/// intent).
async fn buy_pack_delayed(h: &Harness, user: &str) -> (String, String) {
    let view: Value = h
        .http
        .post(format!("{}/v1/customers/{user}/credits/checkout", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "pack": "gen_100", "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = view["session_id"].as_str().unwrap().to_string();
    let done = h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{id}/complete"),
        "payment_method=pm_card_visa&delayed=true",
    );
    assert_eq!(
        (&done["status"], &done["payment_status"]),
        (&json!("complete"), &json!("unpaid")),
        "{done:#}"
    );
    let pi = done["payment_intent"].as_str().unwrap().to_string();
    (id, pi)
}

/// `POST …/checkout/sync` for `session`: the entitlements it answers.
async fn sync(h: &Harness, user: &str, session: &str) -> Value {
    let response = h
        .http
        .post(format!("{}/v1/customers/{user}/checkout/sync", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "session_id": session }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{body:#}");
    body
}

/// The id of the emulator's one event of `event_type` about `session`.
fn event_about(h: &Harness, event_type: &str, session: &str) -> String {
    let events = h.stripe("GET", &format!("/v1/events?type={event_type}"), "");
    let found: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"]["object"]["id"] == session)
        .filter_map(|e| e["id"].as_str())
        .collect();
    assert_eq!(found.len(), 1, "{events:#}");
    found[0].to_owned()
}

async fn a_pack_is_credited_once_by_the_sync_and_its_webhooks_in_either_order_and_when_paid_later(
    db: Db,
) {
    let knobs = WebhookKnobs {
        duplicate_rate: 1.0,
        reorder_window_ms: 100,
        ..WebhookKnobs::default()
    };
    let h = Harness::start_with(db, t0(), knobs, catalog(), ApiConfig::default()).await;
    let (_, overage) = metered_price(&h);
    h.stripe(
        "POST",
        "/v1/prices",
        "product_data[name]=gen_100&currency=eur&unit_amount=500&lookup_key=billd_gen_100_eur",
    );
    let (_, cus) = h.customer("u_sync", "pm_card_visa", true).await;
    h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&items[1][price]={overage}&metadata[billd_customer_id]=u_sync",
            h.standard_price
        ),
    );
    h.wait_for("u_sync", "standard, paid", |e| {
        e["plan"] == "standard" && e["access"] == "paid"
    })
    .await;
    let credits = |ent: &Value| ent["features"]["generations"]["credits"].clone();

    // The sync before the webhook: Stripe's webhooks are lost for now, the
    // success page's sync credits the pack, a repeated sync and the webhook
    // told late add nothing.
    h.sim.update_config(|c| c.webhooks.drop_rate = 1.0);
    let (first, _) = buy_pack(&h, "u_sync").await;
    assert_eq!(credits(&sync(&h, "u_sync", &first).await), 100);
    assert_eq!(credits(&sync(&h, "u_sync", &first).await), 100);
    let session = h.stripe("GET", &format!("/v1/checkout/sessions/{first}"), "");
    h.deliver("evt_pack_after_sync", "checkout.session.completed", session)
        .await;
    wait_processed(&h, "evt_pack_after_sync").await;
    let (_, ent) = h.entitlements("u_sync").await;
    assert_eq!(credits(&ent), 100, "{ent:#}");
    h.sim.update_config(|c| c.webhooks.drop_rate = 0.0);

    // The webhook before the sync: the sync adds nothing.
    let (second, _) = buy_pack(&h, "u_sync").await;
    h.wait_for("u_sync", "the second pack", |e| credits(e) == 200)
        .await;
    assert_eq!(credits(&sync(&h, "u_sync", &second).await), 200);
    let (_, ent) = h.entitlements("u_sync").await;
    assert_eq!(credits(&ent), 200, "{ent:#}");

    // Paid by bank debit: completed unpaid credits nothing, whether told
    // by the webhook or the sync; the payment's success credits it once.
    let (third, third_pi) = buy_pack_delayed(&h, "u_sync").await;
    wait_processed(&h, &event_about(&h, "checkout.session.completed", &third)).await;
    assert_eq!(credits(&sync(&h, "u_sync", &third).await), 200);
    h.stripe(
        "POST",
        &format!("/_sim/payment_intents/{third_pi}/settle"),
        "outcome=success",
    );
    h.wait_for("u_sync", "the settled pack", |e| credits(e) == 300)
        .await;
    assert_eq!(credits(&sync(&h, "u_sync", &third).await), 300);
    let session = h.stripe("GET", &format!("/v1/checkout/sessions/{third}"), "");
    assert_eq!(session["payment_status"], "paid", "{session:#}");
    h.deliver(
        "evt_pack_settled_again",
        "checkout.session.async_payment_succeeded",
        session,
    )
    .await;
    wait_processed(&h, "evt_pack_settled_again").await;
    let (_, ent) = h.entitlements("u_sync").await;
    assert_eq!(credits(&ent), 300, "{ent:#}");

    // A bank debit that fails credits nothing, told by its webhook or the
    // sync.
    let (fourth, fourth_pi) = buy_pack_delayed(&h, "u_sync").await;
    h.stripe(
        "POST",
        &format!("/_sim/payment_intents/{fourth_pi}/settle"),
        "outcome=failure",
    );
    let failed = event_about(&h, "checkout.session.async_payment_failed", &fourth);
    wait_processed(&h, &failed).await;
    wait_processed(&h, &event_about(&h, "checkout.session.completed", &fourth)).await;
    assert_eq!(credits(&sync(&h, "u_sync", &fourth).await), 300);
    let (_, ent) = h.entitlements("u_sync").await;
    assert_eq!(credits(&ent), 300, "{ent:#}");
    h.shutdown().await;
}

on_both_databases!(
    a_pack_is_credited_once_used_after_the_quota_kept_at_renewal_and_refunded,
    a_pack_is_credited_once_by_the_sync_and_its_webhooks_in_either_order_and_when_paid_later,
);
