//! Metered overage over real HTTP against stripe-sim, on both databases: a
//! customer consumes past the included quota, each consume's overage is a
//! meter event sent through the outbox, the meter's total at the emulator
//! equals billd's overage count whatever is replayed or resent, the
//! renewal invoice bills it, and the cap answers `402 overage_cap_reached`.

use billd_core::Catalog;
use billd_server::http::ApiConfig;
use billd_server::Clock;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

/// The seed's plans with 5 generations of overage per period at 0.40 EUR.
pub(crate) fn catalog() -> Catalog {
    Catalog::from_toml(&billd_core::catalog::SEED_CATALOG_TOML.replacen(
        "generations = { kind = \"metered\" }",
        "generations = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 1, cap = 5, unit_amount = 40 } }",
        1,
    ))
    .unwrap()
}

pub(crate) async fn consume(h: &Harness, user: &str, amount: u64, key: &str) -> (u16, Value) {
    let response = h
        .http
        .post(format!("{}/v1/customers/{user}/usage/generations", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "amount": amount, "idempotency_key": key }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The meter's total for the Stripe customer over the first period, as the
/// emulator has it.
pub(crate) fn meter_total(h: &Harness, meter: &str, cus: &str) -> i64 {
    let summary = h.stripe(
        "GET",
        &format!(
            "/v1/billing/meters/{meter}/event_summaries?customer={cus}&start_time={}&end_time={}",
            t0(),
            t0() + 30 * DAY
        ),
        "",
    );
    summary["data"][0]["aggregated_value"].as_i64().unwrap()
}

/// The meter and the metered overage price at the emulator: (meter, price).
pub(crate) fn metered_price(h: &Harness) -> (String, String) {
    let meter = h.stripe(
        "POST",
        "/v1/billing/meters",
        "display_name=generations&event_name=billd_generations&default_aggregation[formula]=sum",
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let overage = h.stripe(
        "POST",
        "/v1/prices",
        &format!("product_data[name]=generations overage&currency=eur&unit_amount=40&recurring[interval]=month&recurring[usage_type]=metered&recurring[meter]={meter}&lookup_key=billd_gen_overage_eur"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    (meter, overage)
}

async fn a_checkout_subscribes_to_the_plan_and_its_metered_overage_price(db: Db) {
    let h = Harness::start_with(
        db,
        t0(),
        WebhookKnobs::default(),
        catalog(),
        ApiConfig::default(),
    )
    .await;
    let (_, overage) = metered_price(&h);
    let put = h
        .http
        .put(format!("{}/v1/customers/u_co", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "email": "u_co@example.com" }))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let session: Value = h
        .http
        .post(format!("{}/v1/customers/u_co/checkout", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "plan": "standard", "success_url": "https://app.test/ok", "cancel_url": "https://app.test/no" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = session["session_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{session:#}"));
    let items = h.stripe("GET", &format!("/v1/checkout/sessions/{id}/line_items"), "");
    let prices: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["price"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        prices,
        [h.standard_price.as_str(), overage.as_str()],
        "{items:#}"
    );
    h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{id}/complete"),
        "payment_method=pm_card_visa",
    );
    let ent = h
        .wait_for("u_co", "paid standard", |e| {
            e["plan"] == "standard" && e["access"] == "paid"
        })
        .await;
    let gen = &ent["features"]["generations"];
    assert_eq!(
        (&gen["included"], &gen["overage_cap"]),
        (&json!(10), &json!(5)),
        "{ent:#}"
    );
    h.shutdown().await;
}

async fn overage_past_the_quota_is_metered_once_billed_at_renewal_and_capped(db: Db) {
    let h = Harness::start_with(
        db,
        t0(),
        WebhookKnobs::default(),
        catalog(),
        ApiConfig::default(),
    )
    .await;
    let (meter, overage) = metered_price(&h);
    let (clock, cus) = h.customer("u_over", "pm_card_visa", true).await;
    h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={}&items[1][price]={overage}&metadata[billd_customer_id]=u_over",
            h.standard_price
        ),
    );
    h.wait_for("u_over", "standard, paid", |e| {
        e["plan"] == "standard" && e["access"] == "paid"
    })
    .await;

    // 10 included, then 5 of overage: 8 + 4 (2 over), the same key again,
    // then 3 (all over), then 1 past the cap.
    assert_eq!(consume(&h, "u_over", 8, "k1").await.0, 200);
    let (status, second) = consume(&h, "u_over", 4, "k2").await;
    assert_eq!((status, &second["used"]), (200, &json!(12)), "{second:#}");
    let (status, replay) = consume(&h, "u_over", 4, "k2").await;
    assert_eq!(
        (status, &replay["used"], &replay["replayed"]),
        (200, &json!(12), &json!(true))
    );
    assert_eq!(consume(&h, "u_over", 3, "k3").await.0, 200);
    let (status, refused) = consume(&h, "u_over", 1, "k4").await;
    assert_eq!(status, 402, "{refused:#}");
    assert_eq!(
        (
            &refused["error"]["code"],
            &refused["error"]["included"],
            &refused["error"]["cap"],
            &refused["error"]["used"]
        ),
        (
            &json!("overage_cap_reached"),
            &json!(10),
            &json!(5),
            &json!(15)
        )
    );
    let (_, ent) = h.entitlements("u_over").await;
    let gen = &ent["features"]["generations"];
    assert_eq!(
        (
            &gen["included"],
            &gen["used"],
            &gen["overage_used"],
            &gen["overage_cap"]
        ),
        (&json!(10), &json!(15), &json!(5), &json!(5)),
        "{ent:#}"
    );

    // The outbox sends two meter events (k2: 2, k3: 3): the meter's total
    // at Stripe is billd's overage count.
    let meter_rows = || async {
        h.store
            .list_outbox(&billd_store::OutboxFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "meter_event")
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rows = loop {
        let rows = meter_rows().await;
        let sent = rows
            .iter()
            .all(|row| row.status == billd_store::OutboxStatus::Sent);
        if sent || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|row| row.status == billd_store::OutboxStatus::Sent),
        "{rows:#?}"
    );
    assert_eq!(meter_total(&h, &meter, &cus), 5);

    // A resend of a sent event (a lost answer) is refused by its identifier
    // and counts as delivered: the total does not move.
    let resent = h
        .stripe_client
        .create_meter_event("billd_generations", &cus, 2, "u_over:k2", h.clock.now())
        .await
        .unwrap();
    assert!(resent.is_none());
    assert_eq!(meter_total(&h, &meter, &cus), 5);

    // The renewal invoice bills the plan ahead and the overage behind.
    h.advance(&clock, t0() + 30 * DAY + 3600);
    h.wait_for("u_over", "the next period", |e| {
        e["features"]["generations"]["used"] == 0
    })
    .await;
    let invoices = h.stripe("GET", &format!("/v1/invoices?customer={cus}"), "");
    let renewal = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["billing_reason"] == "subscription_cycle")
        .unwrap_or_else(|| panic!("{invoices:#}"))
        .clone();
    let line = renewal["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["pricing"]["price_details"]["price"] == overage.as_str())
        .unwrap_or_else(|| panic!("{:#}", renewal["lines"]))
        .clone();
    assert_eq!(
        (&line["quantity"], &line["amount"]),
        (&json!(5), &json!(5 * 40))
    );
    assert_eq!(renewal["amount_due"], 900 + 5 * 40);
    let (_, ent) = h.entitlements("u_over").await;
    assert_eq!(ent["features"]["generations"]["overage_used"], 0);
    h.shutdown().await;
}

on_both_databases!(
    overage_past_the_quota_is_metered_once_billed_at_renewal_and_capped,
    a_checkout_subscribes_to_the_plan_and_its_metered_overage_price,
);
