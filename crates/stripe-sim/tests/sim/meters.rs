//! Billing Meters: meters, meter events deduplicated by identifier, their
//! summaries, and metered prices billed on the renewal invoice.

use serde_json::Value;

use crate::support::*;

/// A meter summing `value` per `stripe_customer_id` for `event_name`.
fn meter(sim: &stripe_sim::Sim, event_name: &str) -> String {
    id(&post(
        sim,
        "/v1/billing/meters",
        &format!(
            "display_name=Generations&event_name={event_name}&default_aggregation[formula]=sum"
        ),
    ))
}

fn meter_event(sim: &stripe_sim::Sim, cus: &str, value: u64, identifier: &str) -> (u16, Value) {
    sim.call(
        "POST",
        "/v1/billing/meter_events",
        &format!("event_name=gen&payload[stripe_customer_id]={cus}&payload[value]={value}&identifier={identifier}"),
    )
}

#[test]
fn meters_are_created_listed_and_retrieved_and_an_event_name_is_one_active_meters() {
    let sim = sim();
    let mtr = meter(&sim, "gen");
    let got = get(&sim, &format!("/v1/billing/meters/{mtr}"));
    assert_eq!(
        (
            got["object"].as_str(),
            got["event_name"].as_str(),
            got["status"].as_str(),
            got["customer_mapping"]["event_payload_key"].as_str(),
            got["value_settings"]["event_payload_key"].as_str(),
        ),
        (
            Some("billing.meter"),
            Some("gen"),
            Some("active"),
            Some("stripe_customer_id"),
            Some("value")
        )
    );
    let list = get(&sim, "/v1/billing/meters?status=active");
    assert_eq!(list["data"][0]["id"], mtr.as_str());
    let (status, _) = sim.call(
        "POST",
        "/v1/billing/meters",
        "display_name=Again&event_name=gen&default_aggregation[formula]=sum",
    );
    assert_eq!(status, 400);
    let (status, body) = sim.call(
        "POST",
        "/v1/prices",
        "product_data[name]=Overage&currency=eur&unit_amount=50&recurring[interval]=month&recurring[usage_type]=metered",
    );
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["param"], "recurring[meter]");
}

#[test]
fn a_metered_price_bills_the_meters_sum_for_the_period_on_the_renewal_invoice_once_per_identifier()
{
    let sim = sim();
    let plan = standard_price(&sim);
    let mtr = meter(&sim, "gen");
    let overage = id(&post(
        &sim,
        "/v1/prices",
        &format!("product_data[name]=Overage&currency=eur&unit_amount=50&recurring[interval]=month&recurring[usage_type]=metered&recurring[meter]={mtr}&transform_quantity[divide_by]=10&transform_quantity[round]=up"),
    ));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let (_, other) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={plan}&items[1][price]={overage}"),
    );
    let metered_item = &sub["items"]["data"][1];
    assert_eq!(metered_item["price"]["recurring"]["usage_type"], "metered");
    assert!(metered_item.get("quantity").is_none(), "{metered_item:#}");
    assert_eq!(metered_item["plan"]["meter"], mtr.as_str());

    let (status, first) = meter_event(&sim, &cus, 7, "user_1:a");
    assert_eq!(status, 200, "{first:#}");
    assert_eq!(first["object"], "billing.meter_event");
    assert_eq!(first["payload"]["value"], "7");
    assert_eq!(meter_event(&sim, &cus, 5, "user_1:b").0, 200);
    let (status, again) = meter_event(&sim, &cus, 7, "user_1:a");
    assert_eq!(status, 400);
    assert_eq!(
        again["error"]["message"],
        "An event already exists with identifier user_1:a."
    );
    assert_eq!(meter_event(&sim, &other, 100, "user_2:a").0, 200);
    let summary = get(
        &sim,
        &format!(
            "/v1/billing/meters/{mtr}/event_summaries?customer={cus}&start_time={T0}&end_time={}",
            T0 + 31 * DAY
        ),
    );
    assert_eq!(summary["data"][0]["aggregated_value"], 12);

    // The first invoice bills the plan only; the renewal bills the plan
    // ahead and the month's usage behind: ceil(12 / 10) × 0.50 EUR.
    let first_invoice = get(
        &sim,
        &format!("/v1/invoices/{}", sub["latest_invoice"].as_str().unwrap()),
    );
    assert_eq!(first_invoice["amount_due"], 3000);
    advance(&sim, &clock, T0 + 31 * DAY + 60);
    let invoices = get(&sim, &format!("/v1/invoices?customer={cus}"));
    let renewal = invoices["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["billing_reason"] == "subscription_cycle")
        .unwrap_or_else(|| panic!("{invoices:#}"));
    let usage: Vec<&Value> = renewal["lines"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["pricing"]["price_details"]["price"] == overage.as_str())
        .collect();
    assert_eq!(usage.len(), 1, "{:#}", renewal["lines"]);
    assert_eq!(
        (usage[0]["quantity"].as_i64(), usage[0]["amount"].as_i64()),
        (Some(2), Some(100))
    );
    assert_eq!(usage[0]["period"]["start"], T0);
    assert_eq!(renewal["amount_due"], 3000 + 100);
}

#[test]
fn a_meter_event_needs_its_payload_keys_and_a_recent_timestamp() {
    let sim = sim();
    meter(&sim, "gen");
    let (status, body) = sim.call(
        "POST",
        "/v1/billing/meter_events",
        "event_name=gen&payload[value]=3",
    );
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("payload[stripe_customer_id]"))
    );
    let (status, _) = sim.call(
        "POST",
        "/v1/billing/meter_events",
        &format!(
            "event_name=gen&payload[stripe_customer_id]=cus_x&payload[value]=3&timestamp={}",
            T0 - 40 * DAY
        ),
    );
    assert_eq!(status, 400);
}

#[test]
fn metered_items_are_added_and_deleted_by_an_update_and_every_item_bills_at_one_interval() {
    let sim = sim();
    let month = standard_price(&sim);
    let year = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Yearly&currency=eur&unit_amount=9000&recurring[interval]=year",
    ));
    let mtr = meter(&sim, "gen");
    let overage = id(&post(
        &sim,
        "/v1/prices",
        &format!("product_data[name]=Overage&currency=eur&unit_amount=50&recurring[interval]=month&recurring[usage_type]=metered&recurring[meter]={mtr}"),
    ));
    let (_, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={month}"),
    );
    let sub_id = id(&sub);
    let plan_item = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/subscriptions/{sub_id}");

    // A metered item takes no quantity.
    let (status, body) = sim.call(
        "POST",
        &path,
        &format!("items[0][price]={overage}&items[0][quantity]=1"),
    );
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &Value::from("items[0][quantity]")),
        "{body:#}"
    );
    let added = post(&sim, &path, &format!("items[0][price]={overage}"));
    let items = added["items"]["data"].as_array().unwrap();
    assert_eq!(items.len(), 2, "{added:#}");
    assert_eq!(items[1]["price"]["id"], overage.as_str());
    assert_eq!(
        items[1]["current_period_end"],
        items[0]["current_period_end"]
    );
    let metered_item = items[1]["id"].as_str().unwrap().to_string();

    // The yearly price beside the monthly metered one: refused as Stripe does.
    let (status, body) = sim.call(
        "POST",
        &path,
        &format!("items[0][id]={plan_item}&items[0][price]={year}"),
    );
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(
        (&body["error"]["type"], &body["error"]["param"], &body["error"]["message"]),
        (
            &Value::from("invalid_request_error"),
            &Value::from("items"),
            &Value::from("All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.")
        )
    );
    let (status, preview) = sim.call(
        "POST",
        "/v1/invoices/create_preview",
        &format!("subscription={sub_id}&subscription_details[items][0][id]={plan_item}&subscription_details[items][0][price]={year}"),
    );
    assert_eq!(
        (status, &preview["error"]["param"]),
        (400, &Value::from("subscription_details[items]")),
        "{preview:#}"
    );
    // A pending update cannot delete an item.
    let (status, body) = sim.call(
        "POST",
        &path,
        &format!("payment_behavior=pending_if_incomplete&proration_behavior=always_invoice&items[0][id]={metered_item}&items[0][deleted]=true"),
    );
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &Value::from("items[0][deleted]")),
        "{body:#}"
    );

    // Deleting the metered item in the same update makes the switch valid.
    let (status, preview) = sim.call(
        "POST",
        "/v1/invoices/create_preview",
        &format!("subscription={sub_id}&subscription_details[items][0][id]={plan_item}&subscription_details[items][0][price]={year}&subscription_details[items][1][id]={metered_item}&subscription_details[items][1][deleted]=true"),
    );
    assert_eq!(status, 200, "{preview:#}");
    let switched = post(
        &sim,
        &path,
        &format!("items[0][id]={plan_item}&items[0][price]={year}&items[1][id]={metered_item}&items[1][deleted]=true"),
    );
    let items = switched["items"]["data"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{switched:#}");
    assert_eq!(items[0]["price"]["id"], year.as_str());
    let (status, _) = sim.call("POST", &path, &format!("items[0][price]={overage}"));
    assert_eq!(status, 400);
}
