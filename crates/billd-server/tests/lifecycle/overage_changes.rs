//! Metered overage items across plan changes, over real HTTP against
//! stripe-sim on both databases: a subscription made without the metered
//! item gets it at its next plan change (and its overage is then billed);
//! a switch to the interval the overage is not sold at removes the item
//! (Stripe bills every item of a subscription at one interval) and the
//! switch back adds it again, under either proration behaviour; a
//! downgrade scheduled for the period end keeps it in both phases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_server::http::{ApiConfig, DowngradeTiming, ProrationBehavior};
use billd_server::jobs::{ReconcileConfig, Reconciler};
use billd_store::Store;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::overage::{consume, meter_total, metered_price};
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

/// Standard and pro monthly, team monthly and yearly; 5 generations of
/// overage per period at 0.40 EUR, sold monthly.
const CATALOG: &str = r#"
currency = "eur"

[features]
generations = { kind = "metered", overage = { price = "billd_gen_overage_eur", per = 1, cap = 5, unit_amount = 40 } }
websites    = { kind = "capacity" }

[plans.free]
limits = { generations = 3, websites = 1 }

[plans.standard]
limits = { generations = 10, websites = 3 }
prices = { eur = { lookup_key = "billd_standard_eur", unit_amount = 900 } }

[plans.pro]
limits = { generations = 25, websites = 10 }
prices = { eur = { lookup_key = "billd_pro_eur", unit_amount = 1900 } }

[plans.team]
limits = { generations = 100, websites = 20 }

[plans.team.prices.eur]
month = { lookup_key = "billd_team_eur_month", unit_amount = 1500 }
year  = { lookup_key = "billd_team_eur_year",  unit_amount = 15000 }
"#;

/// The harness on [`CATALOG`] with the team prices and the metered price at
/// the emulator: (harness, team monthly, team yearly, (meter, metered price)).
async fn harness(db: Db, api: ApiConfig) -> (Harness, String, String, (String, String)) {
    let catalog = Catalog::from_toml(CATALOG).unwrap();
    let h = Harness::start_with(db, t0(), WebhookKnobs::default(), catalog, api).await;
    let price = |interval: &str, amount: u32| {
        h.stripe(
            "POST",
            "/v1/prices",
            &format!(
                "product_data[name]=team&currency=eur&unit_amount={amount}&recurring[interval]={interval}&lookup_key=billd_team_eur_{interval}"
            ),
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let month = price("month", 1500);
    let year = price("year", 15000);
    let metered = metered_price(&h);
    (h, month, year, metered)
}

async fn post(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    let response = h
        .http
        .post(format!("{}{path}", h.base))
        .bearer_auth(APP_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// The prices of the subscription's items at the emulator, in order.
fn item_prices(h: &Harness, sub: &str) -> Vec<String> {
    h.stripe("GET", &format!("/v1/subscriptions/{sub}"), "")["items"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["price"]["id"].as_str().unwrap().to_owned())
        .collect()
}

/// A customer on a test clock subscribed at the emulator to `items`
/// (`items[0][price]=…&…`), once billd shows `plan`: (clock, customer, subscription).
async fn subscribed(h: &Harness, user: &str, items: &str, plan: &str) -> (String, String, String) {
    let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
    let sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&{items}&metadata[billd_customer_id]={user}"),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    h.wait_for(user, plan, |e| e["plan"] == plan && e["access"] == "paid")
        .await;
    (clock, cus, sub)
}

/// What a dry reconciliation reports as lacking its metered item:
/// (subscription, features).
async fn missing_overage(h: &Harness) -> Vec<(String, Vec<String>)> {
    let store: Arc<dyn Store> = h.store.clone();
    let reconciler = Reconciler::new(
        store,
        h.stripe_client.clone(),
        Arc::new(Catalog::from_toml(CATALOG).unwrap()),
        h.clock.clone(),
        None,
        ReconcileConfig::default(),
    );
    let report = reconciler.run(true, None).await.unwrap();
    report
        .missing_overage
        .into_iter()
        .map(|m| (m.subscription, m.features))
        .collect()
}

async fn a_subscription_without_the_metered_item_gets_it_at_its_next_plan_change(db: Db) {
    let (h, _, _, (meter, overage)) = harness(db, ApiConfig::default()).await;
    // Made before the catalog sold overage: the plan's price only.
    let items = format!("items[0][price]={}", h.standard_price);
    let (clock, cus, sub) = subscribed(&h, "u_old", &items, "standard").await;
    assert_eq!(item_prices(&h, &sub), [h.standard_price.as_str()]);
    assert_eq!(
        missing_overage(&h).await,
        [(sub.clone(), vec!["generations".to_owned()])]
    );

    h.advance(&clock, t0() + 5 * DAY);
    let (status, body) = post(
        &h,
        "/v1/customers/u_old/subscription/change",
        json!({ "plan": "pro" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        item_prices(&h, &sub),
        [h.pro_price.clone(), overage.clone()]
    );
    h.wait_for("u_old", "pro", |e| e["plan"] == "pro").await;

    // Its overage is billed now: 25 included, then 3 over.
    assert_eq!(consume(&h, "u_old", 28, "k1").await.0, 200);
    // The outbox sends the meter event asynchronously.
    let deadline = Instant::now() + Duration::from_secs(20);
    while meter_total(&h, &meter, &cus) != 3 {
        assert!(Instant::now() < deadline, "the meter never reached 3");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.advance(&clock, t0() + 31 * DAY);
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
        (&json!(3), &json!(3 * 40))
    );
    h.shutdown().await;
}

/// Month → year drops the monthly metered item (no overage at year);
/// year → month brings it back.
async fn interval_switches_swap_the_metered_item(db: Db, behavior: ProrationBehavior) {
    let api = ApiConfig {
        proration_behavior: behavior,
        ..ApiConfig::default()
    };
    let (h, month, year, (_, overage)) = harness(db, api).await;
    let items = format!("items[0][price]={month}&items[1][price]={overage}");
    let (clock, _, sub) = subscribed(&h, "u_switch", &items, "team").await;
    let (_, ent) = h.entitlements("u_switch").await;
    assert_eq!(ent["features"]["generations"]["overage_cap"], 5, "{ent:#}");
    h.advance(&clock, t0() + 10 * DAY);

    let to_year = json!({ "plan": "team", "interval": "year" });
    let (status, preview) = post(
        &h,
        "/v1/customers/u_switch/subscription/preview",
        to_year.clone(),
    )
    .await;
    assert_eq!(status, 200, "{preview:#}");
    let (status, body) = post(&h, "/v1/customers/u_switch/subscription/change", to_year).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(body["status"], "changed", "{body:#}");
    assert_eq!(item_prices(&h, &sub), [year.as_str()]);
    let ent = h
        .wait_for("u_switch", "team yearly", |e| {
            e["features"]["generations"]["overage_cap"].is_null() && e["access"] == "paid"
        })
        .await;
    assert_eq!(ent["plan"], "team");
    // No overage at year: the plan's limit is a hard limit.
    assert_eq!(consume(&h, "u_switch", 100, "y1").await.0, 200);
    let (status, refused) = consume(&h, "u_switch", 1, "y2").await;
    assert_eq!(
        (status, &refused["error"]["code"]),
        (402, &json!("quota_exceeded"))
    );

    let (status, body) = post(
        &h,
        "/v1/customers/u_switch/subscription/change",
        json!({ "plan": "team", "interval": "month" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(item_prices(&h, &sub), [month.clone(), overage.clone()]);
    h.wait_for("u_switch", "team monthly with overage", |e| {
        e["features"]["generations"]["overage_cap"] == 5
    })
    .await;
    h.shutdown().await;
}

async fn a_month_to_year_switch_drops_the_metered_item_and_back_adds_it(db: Db) {
    interval_switches_swap_the_metered_item(db, ProrationBehavior::CreateProrations).await;
}

async fn under_always_invoice_the_metered_item_goes_before_the_held_switch(db: Db) {
    interval_switches_swap_the_metered_item(db, ProrationBehavior::AlwaysInvoice).await;
}

async fn a_downgrade_at_period_end_keeps_the_metered_item_in_both_phases(db: Db) {
    let api = ApiConfig {
        downgrade_timing: DowngradeTiming::PeriodEnd,
        ..ApiConfig::default()
    };
    let (h, _, _, (_, overage)) = harness(db, api).await;
    let items = format!("items[0][price]={}&items[1][price]={overage}", h.pro_price);
    let (clock, _, sub) = subscribed(&h, "u_later", &items, "pro").await;
    h.advance(&clock, t0() + 10 * DAY);

    let (status, body) = post(
        &h,
        "/v1/customers/u_later/subscription/change",
        json!({ "plan": "standard" }),
    )
    .await;
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("scheduled")),
        "{body:#}"
    );
    let schedule_id = h.stripe("GET", &format!("/v1/subscriptions/{sub}"), "")["schedule"]
        .as_str()
        .unwrap()
        .to_owned();
    let schedule = h.stripe(
        "GET",
        &format!("/v1/subscription_schedules/{schedule_id}"),
        "",
    );
    let phase_prices = |i: usize| -> Vec<String> {
        schedule["phases"][i]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|it| {
                let p = &it["price"];
                p.as_str().or_else(|| p["id"].as_str()).unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(
        phase_prices(0),
        [h.pro_price.clone(), overage.clone()],
        "{schedule:#}"
    );
    assert_eq!(
        phase_prices(1),
        [h.standard_price.clone(), overage.clone()],
        "{schedule:#}"
    );
    assert_eq!(
        item_prices(&h, &sub),
        [h.pro_price.clone(), overage.clone()]
    );

    let period_end = body["effective_at"].as_i64().unwrap();
    h.advance(&clock, period_end + 60);
    h.wait_for("u_later", "standard with overage", |e| {
        e["plan"] == "standard" && e["features"]["generations"]["overage_cap"] == 5
    })
    .await;
    assert_eq!(
        item_prices(&h, &sub),
        [h.standard_price.clone(), overage.clone()]
    );
    h.shutdown().await;
}

on_both_databases!(
    a_downgrade_at_period_end_keeps_the_metered_item_in_both_phases,
    a_subscription_without_the_metered_item_gets_it_at_its_next_plan_change,
    a_month_to_year_switch_drops_the_metered_item_and_back_adds_it,
    under_always_invoice_the_metered_item_goes_before_the_held_switch,
);
