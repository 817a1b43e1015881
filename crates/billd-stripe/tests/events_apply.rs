//! Raw webhook JSON, shaped like Stripe's example objects, through
//! `parse_event` and `billd_core::apply`: the pure path the inbox worker runs.

// Helpers outside `#[test]` functions read fixtures that are valid by
// construction; clippy's allow-unwrap-in-tests does not reach them.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures are valid by construction"
)]

use billd_core::{apply, entitlements, Access, Catalog, CustomerState, Effect, Event, Usage};
use billd_stripe::events::{parse_event, ParsedEvent};
use serde_json::{json, Value};

const T: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn object(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(include_str!("events_fixtures/stripe_objects.json")).unwrap();
    all[name].clone()
}

fn webhook(id: &str, event_type: &str, created: i64, object: &Value) -> String {
    json!({
        "id": id, "object": "event", "api_version": billd_stripe::API_VERSION,
        "created": created, "type": event_type, "data": { "object": object }
    })
    .to_string()
}

fn subscription(status: &str) -> Value {
    let mut s = object("subscription");
    s["status"] = json!(status);
    s["created"] = json!(T);
    s["cancel_at_period_end"] = json!(false);
    s["cancel_at"] = Value::Null;
    s["trial_end"] = Value::Null;
    s["metadata"] = json!({ "billd_customer_id": "user_42", "billd_plan": "pro" });
    let item = &mut s["items"]["data"][0];
    item["price"]["lookup_key"] = json!("billd_pro_eur");
    item["price"]["currency"] = json!("eur");
    item["current_period_start"] = json!(T);
    item["current_period_end"] = json!(T + 30 * DAY);
    s
}

fn invoice(paid: bool) -> Value {
    let mut i = object("invoice");
    i["parent"]["subscription_details"]["subscription"] = json!("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
    i["currency"] = json!("eur");
    i["amount_due"] = json!(1900);
    i["amount_paid"] = json!(if paid { 1900 } else { 0 });
    i["status"] = json!(if paid { "paid" } else { "open" });
    i["attempt_count"] = json!(1);
    i["hosted_invoice_url"] = json!("https://invoice.stripe.com/i/acct_1/test_sca");
    i
}

/// What `invoice_payment.paid` carries: the invoice and the payment intent
/// that paid it (the invoice's own `payments` is includable, so never in a webhook).
fn invoice_payment() -> Value {
    json!({
        "id": "inpay_1PgafzB7WZ01zgkWa8nJ2Vbc", "object": "invoice_payment",
        "amount_paid": 1900, "amount_requested": 1900, "created": T + 60, "currency": "eur",
        "invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "is_default": true, "livemode": false,
        "payment": { "type": "payment_intent", "payment_intent": "pi_1PgafyB7WZ01zgkWSjxsAJo3" },
        "status": "paid", "status_transitions": { "canceled_at": null, "paid_at": T + 60 }
    })
}

fn dispute(status: &str) -> Value {
    let mut d = object("dispute");
    d["status"] = json!(status);
    d["payment_intent"] = json!("pi_1PgafyB7WZ01zgkWSjxsAJo3");
    d
}

/// The webhooks Stripe sends for: subscribe with 3-D Secure, pay, then lose a chargeback.
fn history() -> Vec<String> {
    vec![
        webhook(
            "evt_01",
            "customer.subscription.created",
            T,
            &subscription("incomplete"),
        ),
        webhook(
            "evt_02",
            "invoice.payment_action_required",
            T,
            &invoice(false),
        ),
        webhook("evt_03", "invoice.paid", T + 60, &invoice(true)),
        webhook(
            "evt_03b",
            "invoice_payment.paid",
            T + 60,
            &invoice_payment(),
        ),
        webhook(
            "evt_04",
            "customer.subscription.updated",
            T + 60,
            &subscription("active"),
        ),
        webhook(
            "evt_05",
            "charge.dispute.created",
            T + DAY,
            &dispute("needs_response"),
        ),
        webhook(
            "evt_06",
            "charge.dispute.closed",
            T + 20 * DAY,
            &dispute("lost"),
        ),
    ]
}

fn events(raw: &[String]) -> Vec<Event> {
    raw.iter()
        .map(|body| match parse_event(body).unwrap() {
            ParsedEvent::Handled { event, .. } => *event,
            other => panic!("unhandled {other:?}"),
        })
        .collect()
}

#[test]
fn webhooks_drive_access_from_sca_to_paid_to_frozen_to_revoked() {
    let catalog = Catalog::seed();
    let all = events(&history());
    let usage = Usage::new();
    let mut state = CustomerState::default();
    let mut seen = Vec::new();
    for (i, event) in all.iter().enumerate() {
        let decision = apply(&state, event, &catalog, event.created);
        state = decision.state;
        seen.extend(decision.effects);
        let ent = entitlements(&state, &catalog, &usage, event.created);
        // evt_03 pays the invoice, but the subscription stays `incomplete`
        // (free) until its own update, evt_04, arrives.
        let (access, plan) = [
            (Access::Free, "free"),
            (Access::Free, "free"),
            (Access::Free, "free"),
            (Access::Free, "free"),
            (Access::Paid, "pro"),
            (Access::Frozen, "pro"),
            (Access::Free, "free"),
        ][i];
        let sca_url = ent.action_required.as_ref().and_then(|a| a.url.clone());
        let expected_sca =
            (i == 1).then(|| "https://invoice.stripe.com/i/acct_1/test_sca".to_owned());
        assert_eq!(
            (ent.access, ent.plan.as_str(), sca_url),
            (access, plan, expected_sca),
            "after {}",
            event.id
        );
    }
    let keys: Vec<&str> = seen.iter().map(Effect::dedupe_key).collect();
    for key in [
        "action_required:in_1Pgc6tB7WZ01zgkWu9fdqL6I:1",
        "payment_succeeded:in_1Pgc6tB7WZ01zgkWu9fdqL6I",
        "subscription_confirmed:sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
        "dispute_opened:dp_1Pgc71B7WZ01zgkWMevJiAUx",
        "dispute_closed:dp_1Pgc71B7WZ01zgkWMevJiAUx",
        "cancel_subscription:sub_1Pgc6rB7WZ01zgkWNy0Cn5nw",
    ] {
        assert!(keys.contains(&key), "{key} missing from {keys:?}");
    }
}

#[test]
fn the_invoice_payment_ties_the_disputed_payment_intent_to_the_paid_invoice() {
    let catalog = Catalog::seed();
    let all = events(&history());
    let paid = &all[2];
    let payment = &all[3];
    let dispute = all[5].link_hints();
    assert_eq!(dispute.stripe_customer, None);
    assert!(dispute.payment_intent.is_some());
    // The adapter links the payment's intent to whoever owns its invoice.
    let hints = payment.link_hints();
    assert_eq!(
        hints.invoice.map(|id| id.to_string()),
        paid.object_id(),
        "the invoice the payment names is the paid one"
    );
    assert_eq!(hints.payment_intent, dispute.payment_intent);
    // Linking is all it does: the state is left as it was.
    let before = all[..3].iter().fold(CustomerState::default(), |state, e| {
        apply(&state, e, &catalog, e.created).state
    });
    assert_eq!(
        apply(&before, payment, &catalog, payment.created).state,
        before
    );
}

#[test]
fn the_same_webhooks_reversed_and_duplicated_reach_the_same_state() {
    let catalog = Catalog::seed();
    let in_order = events(&history());
    let mut shuffled: Vec<Event> = in_order.iter().rev().cloned().collect();
    shuffled.extend(in_order.iter().step_by(2).cloned());
    let fold = |list: &[Event]| {
        list.iter().fold(CustomerState::default(), |state, e| {
            apply(&state, e, &catalog, e.created).state
        })
    };
    assert_eq!(fold(&shuffled), fold(&in_order));
}
