//! Every kind of object and event the emulator emits, compared key by key with
//! Stripe's published example object of the same `object` type.

use crate::support::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Keys Stripe's examples have that the emulator leaves out on purpose.
const OMISSIONS: &[(&str, &str, &str)] = &[
    (
        "invoice",
        "subscription",
        "API 2026-09-30: an invoice's subscription is parent.subscription_details.subscription",
    ),
    (
        "event",
        "data.object",
        "the example event wraps a plan; every event's object is checked against its own kind",
    ),
    (
        "charge",
        "refunds",
        "includable: only with expand[] (checked in conformance.rs)",
    ),
];

fn fixtures() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/stripe_shapes.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Missing keys (and values of another JSON type) of `got` versus `want`, recursing into objects both have (and the
/// first element of arrays both have).
fn missing(kind: &str, path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    let (Value::Object(w), Value::Object(g)) = (want, got) else {
        return;
    };
    for (k, wv) in w {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        if OMISSIONS
            .iter()
            .any(|(o, key, _)| *o == kind && *key == here)
        {
            continue;
        }
        match g.get(k) {
            None => out.push(here),
            // Free-form maps: the example's keys are sample data.
            Some(_) if k == "metadata" => {}
            Some(gv) if !wv.is_null() && !gv.is_null() && kind_of(wv) != kind_of(gv) => {
                out.push(format!(
                    "{here} (is {}, Stripe's is {})",
                    kind_of(gv),
                    kind_of(wv)
                ));
            }
            Some(gv) => {
                if let (Value::Array(wa), Value::Array(ga)) = (wv, gv) {
                    if let (Some(w0), Some(g0)) = (wa.first(), ga.first()) {
                        missing(kind, &format!("{here}[]"), w0, g0, out);
                    }
                } else {
                    missing(kind, &here, wv, gv, out);
                }
            }
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn collect(v: &Value, found: &mut BTreeMap<String, Vec<Value>>) {
    match v {
        Value::Object(m) => {
            if let Some(kind) = m.get("object").and_then(Value::as_str) {
                if m.get("deleted") != Some(&Value::Bool(true)) && kind != "list" {
                    found.entry(kind.to_string()).or_default().push(v.clone());
                }
            }
            m.values().for_each(|x| collect(x, found));
        }
        Value::Array(a) => a.iter().for_each(|x| collect(x, found)),
        _ => {}
    }
}

#[test]
fn every_emitted_object_has_the_keys_of_stripes_example_object() {
    let sim = sim();
    // A scenario touching every resource and event kind.
    let price = standard_price(&sim);
    let (clock, cus, cs) = paid_checkout_with_promotion(&sim, &price);
    advance(&sim, &clock, T0 + 32 * DAY);
    let charge = get(&sim, &format!("/v1/charges?customer={cus}"))["data"][0].clone();
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
    post(
        &sim,
        "/v1/billing_portal/sessions",
        &format!("customer={cus}"),
    );
    let sub = get(&sim, "/v1/subscriptions")["data"][0].clone();
    post(
        &sim,
        "/v1/invoices/create_preview",
        &format!("subscription={}", id(&sub)),
    );
    get(
        &sim,
        &format!("/v1/checkout/sessions/{}/line_items", id(&cs)),
    );

    let mut found: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    sim.with_state(|s| s.objects.values().for_each(|o| collect(o, &mut found)));
    collect(
        &get(
            &sim,
            &format!("/v1/checkout/sessions/{}/line_items", id(&cs)),
        ),
        &mut found,
    );
    let fixtures = fixtures();
    let want_kinds: BTreeSet<&str> = [
        "customer",
        "price",
        "product",
        "checkout.session",
        "subscription",
        "subscription_item",
        "invoice",
        "line_item",
        "invoice_payment",
        "payment_intent",
        "charge",
        "refund",
        "dispute",
        "coupon",
        "promotion_code",
        "discount",
        "event",
        "webhook_endpoint",
        "test_helpers.test_clock",
        "billing_portal.session",
        "billing_portal.configuration",
        "payment_method",
        "item",
        "plan",
    ]
    .into();
    for kind in &want_kinds {
        assert!(found.contains_key(*kind), "the scenario emitted no {kind}");
    }
    let mut problems = Vec::new();
    for (kind, objs) in &found {
        let Some(example) = fixtures["resources"].get(kind) else {
            continue;
        };
        let mut out = Vec::new();
        for o in objs {
            missing(kind, "", example, o, &mut out);
        }
        let out: BTreeSet<String> = out.into_iter().collect();
        if !out.is_empty() {
            problems.push(format!("{kind} ({} seen): missing {out:?}", objs.len()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    let types: BTreeSet<String> = event_types(&sim).into_iter().collect();
    for t in [
        "customer.created",
        "customer.updated",
        "payment_method.attached",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.discount.created",
        "invoice.created",
        "invoice.finalized",
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.upcoming",
        "charge.succeeded",
        "charge.refunded",
        "charge.dispute.created",
        "charge.dispute.closed",
        "refund.created",
        "payment_intent.succeeded",
        "checkout.session.completed",
        "test_helpers.test_clock.ready",
    ] {
        assert!(types.contains(t), "scenario did not emit {t}");
    }
    // Events carry Stripe's envelope around the same object shapes.
    for e in sim.events() {
        assert_eq!(e["api_version"], stripe_sim::API_VERSION);
        assert!(e["data"]["object"]["object"].is_string(), "{e:#}");
    }
}
