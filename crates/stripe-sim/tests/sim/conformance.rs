//! Every object the emulator answers or delivers over a typical scenario,
//! checked against Stripe's published definitions for the pinned API version
//! (`stripe_sim::defs`, generated from the official SDK): no property the
//! definitions lack, every non-optional one present, includable properties
//! only when expanded and never in webhooks, ids where Stripe sends ids.

use crate::support::*;
use std::collections::{BTreeMap, BTreeSet};
use stripe_sim::defs::{check_event, check_object, Seen};
use stripe_sim::Sim;

/// Checks every recorded answer and every event; returns
/// (objects checked, kinds seen, distinct problems).
pub fn conformance(sim: &Sim) -> (usize, BTreeSet<String>, BTreeMap<String, usize>) {
    let mut problems: BTreeMap<String, usize> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    let mut objects = 0;
    fn count(v: &serde_json::Value, kinds: &mut BTreeSet<String>, n: &mut usize) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(k) = m.get("object").and_then(|o| o.as_str()) {
                    if k != "list" && k != "search_result" {
                        kinds.insert(k.to_string());
                        *n += 1;
                    }
                }
                m.values().for_each(|x| count(x, kinds, n));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| count(x, kinds, n)),
            _ => {}
        }
    }
    for x in sim.exchanges().iter().filter(|x| x.status == 200) {
        let seen = Seen {
            expand: stripe_sim::params::expand_paths(&x.params)
                .into_iter()
                .collect(),
            webhook: false,
        };
        count(&x.body, &mut kinds, &mut objects);
        for p in check_object(&x.body, &seen) {
            *problems.entry(p).or_default() += 1;
        }
    }
    for e in sim.events() {
        count(&e, &mut kinds, &mut objects);
        for p in check_event(&e) {
            *problems.entry(p).or_default() += 1;
        }
    }
    (objects, kinds, problems)
}

#[test]
fn every_answer_and_webhook_of_a_typical_scenario_conforms_to_stripes_definitions() {
    let sim = sim();
    sim.record_exchanges();
    let price = standard_price(&sim);
    let pro = pro_price(&sim);
    let (clock, cus, cs) = paid_checkout_with_promotion(&sim, &price);
    get(&sim, &format!("/v1/checkout/sessions/{}", id(&cs)));
    get(
        &sim,
        &format!("/v1/checkout/sessions/{}?expand[]=line_items", id(&cs)),
    );
    let sub = get(&sim, &format!("/v1/subscriptions?customer={cus}"))["data"][0].clone();
    // A downgrade at the period end through a schedule, as billd makes it.
    let sched = post(
        &sim,
        "/v1/subscription_schedules",
        &format!("from_subscription={}", id(&sub)),
    );
    let end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    let start = sched["phases"][0]["start_date"].as_i64().unwrap();
    post(
        &sim,
        &format!("/v1/subscription_schedules/{}", id(&sched)),
        &format!("phases[0][items][0][price]={price}&phases[0][start_date]={start}&phases[0][end_date]={end}&phases[1][items][0][price]={pro}&phases[1][duration][interval]=month&phases[1][duration][interval_count]=1&phases[1][proration_behavior]=none&end_behavior=release"),
    );
    get(&sim, &format!("/v1/subscription_schedules/{}", id(&sched)));
    advance(&sim, &clock, T0 + 32 * DAY);
    advance(&sim, &clock, T0 + 63 * DAY);
    let inv = get(&sim, &format!("/v1/invoices?customer={cus}"))["data"][0].clone();
    get(&sim, &format!("/v1/invoices/{}", id(&inv)));
    get(
        &sim,
        &format!("/v1/invoices/{}?expand[]=payments", id(&inv)),
    );
    get(
        &sim,
        &format!("/v1/invoices?customer={cus}&expand[]=data.payments"),
    );
    get(&sim, &format!("/v1/invoices/{}/lines", id(&inv)));
    get(&sim, &format!("/v1/invoice_payments?invoice={}", id(&inv)));
    let charge = get(&sim, &format!("/v1/charges?customer={cus}"))["data"][0].clone();
    get(
        &sim,
        &format!("/v1/charges/{}?expand[]=refunds", id(&charge)),
    );
    get(&sim, &format!("/v1/payment_intents?customer={cus}"));
    let dp = get(&sim, &format!("/v1/disputes?charge={}", id(&charge)))["data"][0].clone();
    post(
        &sim,
        &format!("/_sim/disputes/{}/close", id(&dp)),
        "outcome=won",
    );
    post(
        &sim,
        "/v1/refunds",
        &format!("charge={}&amount=100", id(&charge)),
    );
    get(&sim, &format!("/v1/refunds?charge={}", id(&charge)));
    get(&sim, &format!("/v1/charges/{}", id(&charge)));
    post(
        &sim,
        "/v1/billing_portal/sessions",
        &format!("customer={cus}"),
    );
    post(
        &sim,
        "/v1/invoices/create_preview",
        &format!("subscription={}", id(&sub)),
    );
    get(
        &sim,
        &format!("/v1/checkout/sessions/{}/line_items", id(&cs)),
    );
    get(&sim, "/v1/prices?expand[]=data.currency_options");
    get(&sim, &format!("/v1/prices/{price}"));
    get(
        &sim,
        &format!("/v1/prices/{price}?expand[]=currency_options"),
    );
    get(&sim, "/v1/products");
    get(&sim, &format!("/v1/customers/{cus}"));
    get(&sim, &format!("/v1/customers/{cus}/payment_methods"));
    get(&sim, "/v1/customers/search?query=email:'c@example.com'");
    get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    get(
        &sim,
        &format!("/v1/subscription_items?subscription={}", id(&sub)),
    );
    get(&sim, "/v1/events?limit=100");
    get(&sim, &format!("/v1/test_helpers/test_clocks/{clock}"));
    get(&sim, "/v1/coupons/C10");
    get(&sim, "/v1/account");
    get(&sim, "/v1/billing_portal/configurations");
    ok(
        &sim,
        "DELETE",
        &format!("/v1/subscriptions/{}", id(&sub)),
        "",
    );

    let (objects, kinds, problems) = conformance(&sim);
    let report: Vec<String> = problems
        .iter()
        .map(|(p, n)| format!("{p} (×{n})"))
        .collect();
    println!(
        "conformance: {objects} objects of {} kinds checked against {}, {} distinct problems",
        kinds.len(),
        stripe_sim::defs::sdk(),
        problems.len()
    );
    for k in [
        "checkout.session",
        "subscription",
        "subscription_item",
        "subscription_schedule",
        "invoice",
        "invoice_payment",
        "payment_intent",
        "charge",
        "refund",
        "dispute",
        "test_helpers.test_clock",
        "event",
        "price",
        "product",
        "customer",
        "line_item",
    ] {
        assert!(kinds.contains(k), "the scenario emitted no {k}");
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
}

#[test]
fn includable_properties_come_only_with_expand_and_never_in_webhooks() {
    let sim = sim();
    let price = standard_price(&sim);
    assert!(get(&sim, &format!("/v1/prices/{price}"))
        .get("currency_options")
        .is_none());
    assert!(get(
        &sim,
        &format!("/v1/prices/{price}?expand[]=currency_options")
    )["currency_options"]["usd"]
        .is_object());
    let (_clock, cus) = clocked_customer(&sim, "pm_card_visa");
    post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let inv = get(&sim, &format!("/v1/invoices?customer={cus}"))["data"][0].clone();
    assert!(inv.get("payments").is_none(), "{inv:#}");
    let full = get(
        &sim,
        &format!("/v1/invoices/{}?expand[]=payments", id(&inv)),
    );
    assert_eq!(full["payments"]["object"], "list");
    for e in sim.events() {
        let o = &e["data"]["object"];
        for f in ["payments", "refunds", "currency_options"] {
            assert!(o.get(f).is_none(), "{} carries {f}", e["type"]);
        }
    }
}

#[test]
fn a_parameter_the_pinned_version_lacks_is_parameter_unknown_even_when_nested() {
    let sim = sim();
    let price = standard_price(&sim);
    let (_clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let sched = post(
        &sim,
        "/v1/subscription_schedules",
        &format!("from_subscription={}", id(&sub)),
    );
    let (status, body) = sim.call(
        "POST",
        &format!("/v1/subscription_schedules/{}", id(&sched)),
        &format!("phases[0][items][0][price]={price}&phases[1][items][0][price]={price}&phases[1][iterations]=1"),
    );
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "phases[1][iterations]");
    let (status, body) = sim.call("GET", "/v1/invoices?customr=cus_x", "");
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["param"], "customr");
}

#[test]
fn the_recorded_requests_are_checked_against_the_definitions_whatever_the_emulator_answered() {
    let sim = sim();
    sim.record_exchanges();
    let price = standard_price(&sim);
    get(&sim, &format!("/v1/prices/{price}"));
    assert_eq!(sim.request_problems(), Vec::<String>::new());
    // Refused by the emulator (unknown parameter) and by the definitions.
    let (status, _) = sim.call("GET", "/v1/invoices?customr=cus_x", "");
    assert_eq!(status, 400);
    // Refused by the emulator too now (its type is checked); the record
    // still names it.
    sim.call("GET", "/v1/customers?limit=many", "");
    let problems = sim.request_problems();
    assert_eq!(problems.len(), 2, "{problems:#?}");
    assert!(
        problems[0].contains("customr: unknown parameter"),
        "{problems:#?}"
    );
    assert!(
        problems[1].contains("limit=many: not an integer"),
        "{problems:#?}"
    );
}

#[test]
fn the_emulator_lists_every_request_stripe_would_refuse_even_when_it_answered() {
    // No recording asked for: the emulator checks every request it serves
    // (dev mode and `billd sim` callers read the list over HTTP).
    let sim = sim();
    let price = standard_price(&sim);
    get(&sim, &format!("/v1/prices/{price}"));
    let (status, listed) = sim.call("GET", "/_sim/request_problems", "");
    assert_eq!((status, &listed["data"]), (200, &serde_json::json!([])));
    sim.call("GET", "/v1/customers?limit=many", "");
    let (_, listed) = sim.call("GET", "/_sim/request_problems", "");
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{listed:#}");
    assert!(
        data[0]
            .as_str()
            .unwrap()
            .starts_with("GET /v1/customers: limit=many: not an integer"),
        "{listed:#}"
    );
}

#[test]
fn integers_and_decimals_are_told_apart_as_the_python_sdk_types_them() {
    let sim = sim();
    // `percent_off` is a float, `limit` an integer; the Node SDK calls both
    // `number`, the Python SDK `float` and `int`.
    let (status, coupon) = sim.call("POST", "/v1/coupons", "percent_off=12.5&duration=once");
    assert_eq!(status, 200, "{coupon:#}");
    sim.call("GET", "/v1/customers?limit=2.5", "");
    sim.call("GET", "/v1/customers?limit=2", "");
    let (_, listed) = sim.call("GET", "/_sim/request_problems", "");
    let data: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(
        data,
        ["GET /v1/customers: limit=2.5: not an integer"],
        "{listed:#}"
    );
    assert!(stripe_sim::defs::sdk().contains("(PyPI)"));
}
