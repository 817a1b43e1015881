//! Issue 18's first slice over real HTTP against stripe-sim, on both
//! databases: yearly prices in checkout, a month→year switch charged as
//! previewed, seats up and down (previewed, and refused below the capacity
//! in use), flags in the entitlements, and the plan picker.

use billd_core::Catalog;
use billd_server::http::{ApiConfig, ProrationBehavior};
use billd_server::Clock;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, APP_KEY, DAY};

/// A team plan sold per seat, monthly and yearly, beside the seed's
/// standard; `sites` is per seat, `custom_domain` a flag.
const TEAM_CATALOG: &str = r#"
currency = "eur"

[features]
generations   = { kind = "metered" }
sites         = { kind = "capacity", per_seat = true }
custom_domain = { kind = "flag" }

[plans.free]
limits = { generations = 3, sites = 1, custom_domain = false }

[plans.standard]
limits = { generations = 10, sites = 3, custom_domain = false }
prices = { eur = { lookup_key = "billd_standard_eur", unit_amount = 900 } }

[plans.team]
limits = { generations = 100, sites = 5, custom_domain = true }
seats  = { min = 1, max = 10 }

[plans.team.prices.eur]
month = { lookup_key = "billd_team_eur_month", unit_amount = 1500 }
year  = { lookup_key = "billd_team_eur_year",  unit_amount = 15000 }
"#;

const OK_URL: &str = "https://app.test/billing/done";
const CANCEL_URL: &str = "https://app.test/billing";

/// The harness on the team catalog, with the team prices at the emulator:
/// (harness, monthly team price, yearly team price).
async fn harness(db: Db, behavior: ProrationBehavior) -> (Harness, String, String) {
    let api = ApiConfig {
        proration_behavior: behavior,
        ..ApiConfig::default()
    };
    let catalog = Catalog::from_toml(TEAM_CATALOG).unwrap();
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
    (h, month, year)
}

async fn send(
    h: &Harness,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = h
        .http
        .request(method, format!("{}{path}", h.base))
        .bearer_auth(APP_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn post(h: &Harness, path: &str, body: Value) -> (u16, Value) {
    send(h, reqwest::Method::POST, path, Some(body)).await
}

async fn get(h: &Harness, path: &str) -> (u16, Value) {
    send(h, reqwest::Method::GET, path, None).await
}

/// A customer with a test clock paying `price` for `seats` seats, ten days
/// into the period, once billd shows `plan`; returns (clock, Stripe customer, subscription).
async fn subscribed(
    h: &Harness,
    user: &str,
    price: &str,
    seats: u32,
    plan: &str,
) -> (String, String, String) {
    let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
    let sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!(
            "customer={cus}&items[0][price]={price}&items[0][quantity]={seats}&metadata[billd_customer_id]={user}"
        ),
    )["id"]
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

fn item(h: &Harness, sub: &str) -> Value {
    h.stripe("GET", &format!("/v1/subscriptions/{sub}"), "")["items"]["data"][0].clone()
}

async fn a_yearly_checkout_for_three_seats_bills_a_year_and_grants_three_seats(db: Db) {
    let (h, _, year) = harness(db, ProrationBehavior::CreateProrations).await;
    let (status, _) = send(
        &h,
        reqwest::Method::PUT,
        "/v1/customers/u_year",
        Some(json!({ "email": "u_year@example.com" })),
    )
    .await;
    assert!(status < 300);

    let body = json!({ "plan": "team", "interval": "year", "seats": 3, "success_url": OK_URL, "cancel_url": CANCEL_URL });
    let (status, session) = post(&h, "/v1/customers/u_year/checkout", body.clone()).await;
    let (again, same) = post(&h, "/v1/customers/u_year/checkout", body).await;
    let (refused_interval, bad_interval) = post(
        &h,
        "/v1/customers/u_year/checkout",
        json!({ "plan": "standard", "interval": "year", "success_url": OK_URL, "cancel_url": CANCEL_URL }),
    )
    .await;
    let (refused_seats, bad_seats) = post(
        &h,
        "/v1/customers/u_year/checkout",
        json!({ "plan": "team", "seats": 11, "success_url": OK_URL, "cancel_url": CANCEL_URL }),
    )
    .await;

    assert_eq!(status, 200, "{session}");
    assert_eq!(
        (session["interval"].as_str(), session["seats"].as_u64()),
        (Some("year"), Some(3))
    );
    assert_eq!((again, &same["session_id"]), (200, &session["session_id"]));
    assert_eq!(
        (refused_interval, &bad_interval["error"]["code"]),
        (400, &json!("interval_not_available"))
    );
    assert_eq!(
        (refused_seats, &bad_seats["error"]["code"]),
        (400, &json!("seats_out_of_range"))
    );
    let id = session["session_id"].as_str().unwrap();
    let items = h.stripe("GET", &format!("/v1/checkout/sessions/{id}/line_items"), "");
    assert_eq!(items["data"][0]["price"]["id"], year.as_str(), "{items:#}");
    assert_eq!(items["data"][0]["quantity"], 3);
    h.stripe(
        "POST",
        &format!("/_sim/checkout/sessions/{id}/complete"),
        "payment_method=pm_card_visa",
    );
    let ent = h
        .wait_for("u_year", "paid team", |e| {
            e["plan"] == "team" && e["access"] == "paid"
        })
        .await;

    assert_eq!(ent["seats"], 3, "{ent:#}");
    assert_eq!(ent["features"]["sites"]["limit"], 15);
    assert_eq!(ent["features"]["generations"]["limit"], 100);
    assert_eq!(ent["flags"]["custom_domain"], json!({ "enabled": true }));
    let sub = h.stripe("GET", "/v1/subscriptions?status=all", "")["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["billd_customer_id"] == "u_year")
        .cloned()
        .unwrap();
    let line = &sub["items"]["data"][0];
    let (start, end) = (
        line["current_period_start"].as_i64().unwrap(),
        line["current_period_end"].as_i64().unwrap(),
    );
    assert_eq!(line["price"]["recurring"]["interval"], "year");
    assert_eq!(line["quantity"], 3);
    assert!((365 * DAY..=366 * DAY).contains(&(end - start)), "{sub:#}");
    assert_eq!(ent["features"]["generations"]["resets_at"], end);
    let invoice = h.stripe(
        "GET",
        &format!("/v1/invoices/{}", sub["latest_invoice"].as_str().unwrap()),
        "",
    );
    assert_eq!(invoice["amount_paid"], 45_000, "{invoice:#}");
    assert_eq!(invoice["lines"]["data"][0]["quantity"], 3);
    assert_eq!(invoice["lines"]["data"][0]["period"]["end"], end);
    h.shutdown().await;
}

async fn a_month_to_year_switch_is_offered_previewed_and_charged_as_previewed(db: Db) {
    let (h, month, year) = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, sub) = subscribed(&h, "u_switch", &month, 2, "team").await;

    let (status, picker) = get(&h, "/v1/customers/u_switch/plans").await;
    assert_eq!(status, 200, "{picker}");
    let (status, preview) = post(
        &h,
        "/v1/customers/u_switch/subscription/preview",
        json!({ "plan": "team", "interval": "year" }),
    )
    .await;
    assert_eq!(status, 200, "{preview}");
    let (same_status, same) = post(
        &h,
        "/v1/customers/u_switch/subscription/change",
        json!({ "plan": "team" }),
    )
    .await;
    let (status, changed) = post(
        &h,
        "/v1/customers/u_switch/subscription/change",
        json!({ "plan": "team", "interval": "year", "proration_date": preview["proration_date"] }),
    )
    .await;

    let team = picker["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "team")
        .unwrap();
    let choice = |interval: &str| {
        team["choices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["interval"] == interval)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        picker["current"],
        json!({ "plan": "team", "interval": "month", "seats": 2 })
    );
    assert_eq!(choice("month")["eligibility"], "current");
    assert_eq!(choice("year")["eligibility"], "switch_interval");
    assert_eq!(choice("year")["seats"], 2);
    let due_now = preview["amount_due_now"].as_i64().unwrap();
    // Two seats for a year, less the unused 20 of 30 days of the month.
    assert_eq!(due_now, 2 * 15_000 - 2 * 1500 * 20 / 30, "{preview:#}");
    assert_eq!(choice("year")["amount_due_now"], due_now, "{picker:#}");
    assert_eq!(preview["interval"], "year");
    assert_eq!(preview["seats"], 2);
    assert_eq!(
        (same_status, &same["error"]["code"]),
        (409, &json!("same_plan"))
    );
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["status"], "changed");
    let created = invoices(&h, &cus, "subscription_update");
    assert_eq!(created.len(), 1, "{created:#?}");
    assert_eq!(created[0]["amount_due"].as_i64(), Some(due_now));
    assert_eq!(created[0]["status"], "paid");
    let now_item = item(&h, &sub);
    assert_eq!(now_item["price"]["id"], year.as_str());
    assert_eq!(now_item["quantity"], 2);
    let end = now_item["current_period_end"].as_i64().unwrap();
    assert!(
        (365 * DAY..=366 * DAY).contains(&(end - h.clock.now())),
        "{now_item:#}"
    );
    let (_, ent) = h.entitlements("u_switch").await;
    assert_eq!(
        (ent["plan"].as_str(), ent["seats"].as_u64()),
        (Some("team"), Some(2)),
        "{ent:#}"
    );
    assert_eq!(ent["features"]["generations"]["resets_at"], end);
    h.shutdown().await;
}

async fn seats_go_up_and_down_as_previewed_and_never_below_the_capacity_in_use(db: Db) {
    let (h, month, _) = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let (_, cus, sub) = subscribed(&h, "u_seats", &month, 3, "team").await;
    let (status, used) = post(
        &h,
        "/v1/customers/u_seats/usage/sites",
        json!({ "amount": 12, "idempotency_key": "twelve-sites" }),
    )
    .await;
    assert_eq!(status, 200, "{used}");
    let seats = |n: u64| json!({ "seats": n });

    let (status, up_preview) = post(
        &h,
        "/v1/customers/u_seats/subscription/seats/preview",
        seats(5),
    )
    .await;
    assert_eq!(status, 200, "{up_preview}");
    let (status, up) = post(
        &h,
        "/v1/customers/u_seats/subscription/seats",
        json!({ "seats": 5, "proration_date": up_preview["proration_date"] }),
    )
    .await;
    let (_, after_up) = h.entitlements("u_seats").await;
    let (in_use, in_use_body) =
        post(&h, "/v1/customers/u_seats/subscription/seats", seats(2)).await;
    let (in_use_preview, _) = post(
        &h,
        "/v1/customers/u_seats/subscription/seats/preview",
        seats(2),
    )
    .await;
    let (too_many, too_many_body) =
        post(&h, "/v1/customers/u_seats/subscription/seats", seats(11)).await;
    let (same, same_body) = post(&h, "/v1/customers/u_seats/subscription/seats", seats(5)).await;
    let (status_down, down_preview) = post(
        &h,
        "/v1/customers/u_seats/subscription/seats/preview",
        seats(3),
    )
    .await;
    let (status_down_change, down) =
        post(&h, "/v1/customers/u_seats/subscription/seats", seats(3)).await;
    let (_, after_down) = h.entitlements("u_seats").await;

    // Two more seats for the remaining 20 of 30 days.
    let due_now = up_preview["amount_due_now"].as_i64().unwrap();
    assert_eq!(due_now, 2 * 1500 * 20 / 30, "{up_preview:#}");
    assert_eq!(up_preview["seats"], 5);
    assert_eq!(up_preview["next_renewal_amount"], 5 * 1500);
    assert_eq!(status, 200, "{up}");
    assert_eq!(up["status"], "changed");
    assert_eq!(up["invoice"]["amount_due"].as_i64(), Some(due_now));
    assert_eq!(after_up["seats"], 5, "{after_up:#}");
    assert_eq!(after_up["features"]["sites"]["limit"], 25);
    assert_eq!(after_up["features"]["sites"]["used"], 12);
    assert_eq!(
        (in_use, &in_use_body["error"]["code"]),
        (409, &json!("seats_in_use")),
        "{in_use_body:#}"
    );
    assert_eq!(in_use_preview, 409);
    assert_eq!(
        (too_many, &too_many_body["error"]["code"]),
        (400, &json!("seats_out_of_range"))
    );
    assert_eq!(
        (same, &same_body["error"]["code"]),
        (409, &json!("same_seats"))
    );
    assert_eq!(status_down, 200, "{down_preview}");
    assert!(
        down_preview["amount_due_now"].as_i64().unwrap() <= 0,
        "{down_preview:#}"
    );
    assert!(down_preview["lines"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["proration"] == true && l["amount"].as_i64().unwrap() < 0));
    assert_eq!(status_down_change, 200, "{down}");
    assert_eq!(after_down["seats"], 3);
    assert_eq!(after_down["features"]["sites"]["limit"], 15);
    assert_eq!(item(&h, &sub)["quantity"], 3);
    assert_eq!(invoices(&h, &cus, "subscription_update").len(), 2);
    h.shutdown().await;
}

async fn a_plan_without_seats_refuses_seat_changes_and_flags_follow_the_plan(db: Db) {
    let (h, _, _) = harness(db, ProrationBehavior::CreateProrations).await;
    let standard = h.standard_price.clone();
    let (_, free) = send(
        &h,
        reqwest::Method::PUT,
        "/v1/customers/u_flags",
        Some(json!({})),
    )
    .await;
    assert!(free.is_object());
    let (_, on_free) = h.entitlements("u_flags").await;
    subscribed(&h, "u_std", &standard, 1, "standard").await;

    let (status, body) = post(
        &h,
        "/v1/customers/u_std/subscription/seats",
        json!({ "seats": 2 }),
    )
    .await;
    let (_, on_standard) = h.entitlements("u_std").await;
    let (flag_status, flag_body) = post(
        &h,
        "/v1/customers/u_std/usage/custom_domain",
        json!({ "idempotency_key": "flag" }),
    )
    .await;

    assert_eq!(
        on_free["flags"]["custom_domain"],
        json!({ "enabled": false }),
        "{on_free:#}"
    );
    assert_eq!(on_free["seats"], Value::Null);
    assert_eq!(
        on_standard["flags"]["custom_domain"],
        json!({ "enabled": false })
    );
    assert!(on_standard["features"].get("custom_domain").is_none());
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("seats_not_available"))
    );
    assert_eq!(
        (flag_status, &flag_body["error"]["code"]),
        (400, &json!("flag_feature"))
    );
    h.shutdown().await;
}

async fn the_plan_picker_lists_every_plan_and_a_free_or_paying_customers_choices(db: Db) {
    let (h, _, _) = harness(db, ProrationBehavior::AlwaysInvoice).await;
    let standard = h.standard_price.clone();
    send(
        &h,
        reqwest::Method::PUT,
        "/v1/customers/u_free",
        Some(json!({})),
    )
    .await;
    subscribed(&h, "u_paying", &standard, 1, "standard").await;

    let (status, plans) = get(&h, "/v1/plans").await;
    let unauthorised = h
        .http
        .get(format!("{}/v1/plans", h.base))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let (_, free) = get(&h, "/v1/customers/u_free/plans").await;
    let (_, paying) = get(&h, "/v1/customers/u_paying/plans").await;
    let (_, preview) = post(
        &h,
        "/v1/customers/u_paying/subscription/preview",
        json!({ "plan": "team", "interval": "month" }),
    )
    .await;

    assert_eq!(status, 200, "{plans}");
    assert_eq!(unauthorised, 401);
    let names: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["free", "standard", "team"]);
    let team = &plans["plans"][2];
    assert_eq!(team["seats"], json!({ "min": 1, "max": 10 }));
    assert_eq!(
        team["prices"]["eur"]["year"],
        json!({ "unit_amount": 15000, "formatted": "150.00 EUR", "lookup_key": "billd_team_eur_year", "price_id": null })
    );
    assert_eq!(team["prices"]["eur"]["month"]["formatted"], "15.00 EUR");
    assert_eq!(
        team["features"]["sites"],
        json!({ "kind": "capacity", "limit": 5, "per_seat": true })
    );
    assert_eq!(
        team["features"]["custom_domain"],
        json!({ "kind": "flag", "per_seat": false, "enabled": true })
    );

    let choices = |view: &Value, plan: &str| -> Vec<(Value, Value, Value, Value)> {
        view["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == plan)
            .unwrap()["choices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["interval"].clone(),
                    c["eligibility"].clone(),
                    c["reason"].clone(),
                    c["amount_due_now"].clone(),
                )
            })
            .collect()
    };
    assert_eq!(free["current"], Value::Null);
    assert_eq!(free["currency"], "eur");
    assert_eq!(
        choices(&free, "free"),
        [(Value::Null, json!("current"), Value::Null, Value::Null)]
    );
    assert_eq!(
        choices(&free, "team"),
        [
            (json!("month"), json!("upgrade"), Value::Null, json!(1500)),
            (json!("year"), json!("upgrade"), Value::Null, json!(15000)),
        ]
    );
    assert_eq!(
        paying["current"],
        json!({ "plan": "standard", "interval": "month", "seats": 1 })
    );
    assert_eq!(
        choices(&paying, "free"),
        [(
            Value::Null,
            json!("unavailable"),
            json!("cancel_to_downgrade"),
            Value::Null
        )]
    );
    assert_eq!(
        choices(&paying, "standard"),
        [(json!("month"), json!("current"), Value::Null, Value::Null)]
    );
    let team_choices = choices(&paying, "team");
    assert_eq!(team_choices[0].1, "upgrade");
    assert_eq!(team_choices[0].3, preview["amount_due_now"], "{preview:#}");
    assert!(preview["amount_due_now"].as_i64().unwrap() > 0);
    assert_eq!(team_choices[1].1, "upgrade");
    h.shutdown().await;
}

on_both_databases!(
    a_yearly_checkout_for_three_seats_bills_a_year_and_grants_three_seats,
    a_month_to_year_switch_is_offered_previewed_and_charged_as_previewed,
    seats_go_up_and_down_as_previewed_and_never_below_the_capacity_in_use,
    a_plan_without_seats_refuses_seat_changes_and_flags_follow_the_plan,
    the_plan_picker_lists_every_plan_and_a_free_or_paying_customers_choices,
);
