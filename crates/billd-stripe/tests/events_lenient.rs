//! "A Stripe API change in an unused field never breaks billd": every
//! top-level field of Stripe's example objects is removed, nulled or given
//! another type; fields billd does not read must not change the parse, and
//! fields it does read may fail, but only with a coded error, never a panic.

// Helpers outside `#[test]` functions read fixtures that are valid by
// construction; clippy's allow-unwrap-in-tests does not reach them.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures are valid by construction"
)]

use billd_stripe::events::{parse_event, ParsedEvent};
use serde_json::{json, Value};

fn object(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(include_str!("events_fixtures/stripe_objects.json")).unwrap();
    all[name].clone()
}

fn envelope(event_type: &str, object: &Value) -> String {
    json!({
        "id": "evt_1Lenient", "object": "event", "api_version": billd_stripe::API_VERSION,
        "created": 1_800_000_000, "type": event_type, "data": { "object": object }
    })
    .to_string()
}

/// A fixture, an event type carrying it, placeholder fixes, the fields billd reads.
type Case = (
    &'static str,
    &'static str,
    Vec<(&'static str, Value)>,
    &'static [&'static str],
);

fn cases() -> Vec<Case> {
    vec![
        (
            "subscription",
            "customer.subscription.updated",
            vec![],
            &[
                "id",
                "customer",
                "status",
                "created",
                "items",
                "cancel_at_period_end",
                "cancel_at",
                "trial_end",
                "discounts",
                "metadata",
            ],
        ),
        (
            "invoice",
            "invoice.payment_failed",
            vec![(
                "parent",
                json!({ "type": "subscription_details", "subscription_details": { "subscription": "sub_1" } }),
            )],
            &[
                "id",
                "customer",
                "created",
                "status",
                "amount_due",
                "amount_paid",
                "currency",
                "attempt_count",
                "next_payment_attempt",
                "hosted_invoice_url",
                "invoice_pdf",
                "billing_reason",
                "period_start",
                "period_end",
                "lines",
                "parent",
                "metadata",
            ],
        ),
        (
            "charge",
            "charge.refunded",
            vec![],
            &[
                "id",
                "customer",
                "amount",
                "amount_refunded",
                "refunded",
                "currency",
                "payment_intent",
                "metadata",
            ],
        ),
        (
            "dispute",
            "charge.dispute.updated",
            vec![],
            &[
                "id",
                "charge",
                "payment_intent",
                "status",
                "amount",
                "currency",
                "reason",
            ],
        ),
        (
            "customer",
            "customer.updated",
            vec![],
            &["id", "created", "email", "metadata"],
        ),
        (
            "discount",
            "customer.discount.updated",
            vec![],
            &[
                "id",
                "customer",
                "subscription",
                "source",
                "coupon",
                "promotion_code",
                "start",
                "end",
            ],
        ),
        (
            "payment_method",
            "payment_method.updated",
            vec![],
            &["id", "customer", "card"],
        ),
        (
            "checkout.session",
            "checkout.session.completed",
            vec![],
            &[
                "id",
                "customer",
                "subscription",
                "client_reference_id",
                "mode",
                "payment_status",
                "payment_intent",
                "metadata",
            ],
        ),
    ]
}

fn mutations() -> Vec<Option<Value>> {
    vec![
        None,
        Some(Value::Null),
        Some(json!("a new string")),
        Some(json!(42)),
        Some(json!(true)),
        Some(json!({ "new": "object" })),
        Some(json!(["a", "list"])),
    ]
}

fn parse(
    event_type: &str,
    object: &Value,
) -> Result<ParsedEvent, billd_stripe::events::ParseError> {
    parse_event(&envelope(event_type, object))
}

#[test]
fn changing_a_field_billd_does_not_read_never_changes_the_parse() {
    for (name, event_type, fixes, used) in cases() {
        let mut base = object(name);
        for (field, value) in &fixes {
            base[*field] = value.clone();
        }
        let expected = parse(event_type, &base).unwrap_or_else(|e| panic!("{name}: {e}"));
        let fields: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
        let mut unused_checked = 0;
        for field in fields.iter().filter(|f| !used.contains(&f.as_str())) {
            for mutation in mutations() {
                let mut changed = base.clone();
                match &mutation {
                    None => {
                        changed.as_object_mut().unwrap().remove(field);
                    }
                    Some(value) => changed[field.as_str()] = value.clone(),
                }
                let parsed = parse(event_type, &changed);
                assert_eq!(
                    parsed.as_ref().ok(),
                    Some(&expected),
                    "{name}.{field} = {mutation:?}: {parsed:?}"
                );
            }
            unused_checked += 1;
        }
        assert!(unused_checked > 2, "{name}: too few unused fields checked");
        // A field that did not exist before is ignored too.
        let mut extra = base.clone();
        extra["field_added_in_2027"] = json!({ "anything": [1, 2, 3] });
        assert_eq!(parse(event_type, &extra).ok(), Some(expected));
    }
}

#[test]
fn changing_a_field_billd_reads_fails_cleanly_or_parses() {
    for (name, event_type, fixes, used) in cases() {
        let mut base = object(name);
        for (field, value) in &fixes {
            base[*field] = value.clone();
        }
        for field in used.iter() {
            for mutation in mutations() {
                let mut changed = base.clone();
                match &mutation {
                    None => {
                        changed.as_object_mut().unwrap().remove(*field);
                    }
                    Some(value) => changed[*field] = value.clone(),
                }
                // Reaching here without a panic is half the point; an error
                // must carry one of the documented codes.
                if let Err(e) = parse(event_type, &changed) {
                    assert!(
                        [
                            "invalid_json",
                            "missing_field",
                            "invalid_id",
                            "invalid_value"
                        ]
                        .contains(&e.code()),
                        "{name}.{field}: {e}"
                    );
                }
            }
        }
    }
}

#[test]
fn optional_fields_billd_reads_may_be_null_or_missing() {
    let optional = [
        ("subscription", "customer.subscription.updated", "cancel_at"),
        ("subscription", "customer.subscription.updated", "trial_end"),
        ("subscription", "customer.subscription.updated", "discounts"),
        ("subscription", "customer.subscription.updated", "metadata"),
        (
            "subscription",
            "customer.subscription.updated",
            "cancel_at_period_end",
        ),
        ("subscription", "customer.subscription.updated", "items"),
        ("charge", "charge.refunded", "customer"),
        ("charge", "charge.refunded", "payment_intent"),
        ("dispute", "charge.dispute.created", "reason"),
        ("customer", "customer.updated", "email"),
        ("discount", "customer.discount.created", "source"),
        ("payment_method", "payment_method.attached", "card"),
        (
            "checkout.session",
            "checkout.session.expired",
            "subscription",
        ),
    ];
    for (name, event_type, field) in optional {
        for mutation in [None, Some(Value::Null)] {
            let mut changed = object(name);
            match mutation {
                None => {
                    changed.as_object_mut().unwrap().remove(field);
                }
                Some(value) => changed[field] = value,
            }
            let parsed = parse(event_type, &changed);
            assert!(
                matches!(parsed, Ok(ParsedEvent::Handled { .. })),
                "{name}.{field}: {parsed:?}"
            );
        }
    }
}
