//! Event parsing against Stripe's published example objects
//! (`events_fixtures/stripe_objects.json`), wrapped in event envelopes.

// Helpers outside `#[test]` functions read fixtures that are valid by
// construction; clippy's allow-unwrap-in-tests does not reach them.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures are valid by construction"
)]

use billd_core::event::{
    CheckoutChange, DisputeStatus, InvoiceChange, SubscriptionChange, SubscriptionStatus,
};
use billd_core::{Event, EventKind};
use billd_stripe::events::{
    parse_event, refetched_subscription_event, ParsedEvent, HANDLED_EVENT_TYPES,
};
use billd_stripe::API_VERSION;
use serde_json::{json, Value};

const CREATED: i64 = 1_800_000_000;

fn object(name: &str) -> Value {
    let all: Value =
        serde_json::from_str(include_str!("events_fixtures/stripe_objects.json")).unwrap();
    all[name].clone()
}

fn envelope(event_type: &str, object: &Value) -> String {
    json!({
        "id": "evt_1TestEnvelope",
        "object": "event",
        "api_version": API_VERSION,
        "created": CREATED,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
        "data": { "object": object, "previous_attributes": {} }
    })
    .to_string()
}

fn handled(event_type: &str, object: &Value) -> Event {
    match parse_event(&envelope(event_type, object)) {
        Ok(ParsedEvent::Handled { event, api_version }) => {
            assert_eq!(api_version.as_deref(), Some(API_VERSION));
            assert_eq!(event.id.as_str(), "evt_1TestEnvelope");
            assert_eq!(event.created, CREATED);
            assert!(!event.authoritative);
            assert_eq!(event.event_type(), event_type);
            *event
        }
        other => panic!("{event_type}: expected a handled event, got {other:?}"),
    }
}

/// The invoice example names its subscription `"subscription"`, a placeholder.
fn invoice_object() -> Value {
    let mut invoice = object("invoice");
    invoice["parent"]["subscription_details"]["subscription"] =
        json!("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
    invoice["hosted_invoice_url"] = json!("https://invoice.stripe.com/i/acct_1/test_1");
    invoice
}

/// Every object carries a usable example for each handled type.
fn example_for(event_type: &str) -> Value {
    match event_type
        .rsplit_once('.')
        .map_or(event_type, |(prefix, _)| prefix)
    {
        "customer.subscription" => object("subscription"),
        "checkout.session" => object("checkout.session"),
        "invoice" => invoice_object(),
        "charge" => object("charge"),
        "charge.dispute" => object("dispute"),
        "customer" => object("customer"),
        "customer.discount" => object("discount"),
        "payment_method" => object("payment_method"),
        "payment_intent" => object("payment_intent"),
        "invoice_payment" => {
            // The example names its invoice and id by placeholders.
            let mut payment = object("invoice_payment");
            payment["id"] = json!("inpay_1PgafzB7WZ01zgkWa8nJ2Vbc");
            payment["invoice"] = json!("in_1Pgc6tB7WZ01zgkWu9fdqL6I");
            payment["payment"]["payment_intent"] = json!("pi_1PgafyB7WZ01zgkWSjxsAJo3");
            payment
        }
        other => panic!("no example for {other}"),
    }
}

#[test]
fn every_handled_event_type_parses_from_stripes_example_object() {
    for event_type in HANDLED_EVENT_TYPES {
        let event = handled(event_type, &example_for(event_type));
        assert!(event.object_id().is_some(), "{event_type} has an object id");
    }
}

#[test]
fn subscription_events_read_price_and_period_from_the_first_item() {
    let mut subscription = object("subscription");
    subscription["metadata"] = json!({ "billd_customer_id": "user_42", "billd_plan": "pro" });
    for (event_type, change) in [
        ("customer.subscription.created", SubscriptionChange::Created),
        ("customer.subscription.updated", SubscriptionChange::Updated),
        ("customer.subscription.paused", SubscriptionChange::Paused),
        ("customer.subscription.resumed", SubscriptionChange::Resumed),
        (
            "customer.subscription.trial_will_end",
            SubscriptionChange::TrialWillEnd,
        ),
    ] {
        let EventKind::Subscription {
            change: parsed,
            subscription: s,
        } = handled(event_type, &subscription).kind
        else {
            panic!("{event_type} is a subscription snapshot");
        };
        assert_eq!(parsed, change);
        assert_eq!(s.id.as_str(), "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
        assert_eq!(s.customer.as_str(), "cus_QXg1o8vcGmoR32");
        assert_eq!(s.status, SubscriptionStatus::Active);
        assert_eq!(s.created, 1_234_567_890);
        let price = s.price.expect("first item price");
        assert_eq!(price.id.as_str(), "price_1PgafmB7WZ01zgkW6dKueIc5");
        assert_eq!(
            price.currency.map(|c| c.to_string()).as_deref(),
            Some("usd")
        );
        assert_eq!((price.unit_amount, price.lookup_key), (Some(2000), None));
        assert_eq!(s.current_period_start, Some(1_896_570_518));
        assert_eq!(s.current_period_end, Some(976_287_773));
        assert!(s.cancel_at_period_end);
        assert_eq!(
            (s.cancel_at, s.trial_end),
            (Some(1_234_567_890), Some(1_234_567_890))
        );
        assert_eq!(s.metadata["billd_plan"], "pro");
    }
    let hints = handled("customer.subscription.updated", &subscription).link_hints();
    assert_eq!(
        hints.billd_customer_id.map(|c| c.to_string()).as_deref(),
        Some("user_42")
    );
}

#[test]
fn subscription_deleted_is_its_own_terminal_kind() {
    let event = handled("customer.subscription.deleted", &object("subscription"));
    assert!(
        matches!(event.kind, EventKind::SubscriptionDeleted { ref subscription } if subscription.id.as_str() == "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
    );
}

#[test]
fn invoice_events_take_the_subscription_from_the_parent_details() {
    for (event_type, change) in [
        ("invoice.paid", InvoiceChange::Paid),
        ("invoice.payment_succeeded", InvoiceChange::PaymentSucceeded),
        ("invoice.payment_failed", InvoiceChange::PaymentFailed),
        (
            "invoice.payment_action_required",
            InvoiceChange::PaymentActionRequired,
        ),
        ("invoice.finalized", InvoiceChange::Finalized),
        ("invoice.upcoming", InvoiceChange::Upcoming),
    ] {
        let EventKind::Invoice {
            change: parsed,
            invoice,
        } = handled(event_type, &invoice_object()).kind
        else {
            panic!("{event_type} is an invoice event");
        };
        assert_eq!(parsed, change);
        assert_eq!(
            invoice.id.map(|i| i.to_string()).as_deref(),
            Some("in_1Pgc6tB7WZ01zgkWu9fdqL6I")
        );
        assert_eq!(
            invoice.customer.map(|c| c.to_string()).as_deref(),
            Some("cus_QXg1o8vcGmoR32")
        );
        assert_eq!(
            invoice.subscription.map(|s| s.to_string()).as_deref(),
            Some("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
        );
        assert_eq!(invoice.amount_due.to_string(), "10.00 USD");
        assert_eq!(invoice.amount_paid.minor, 0);
        assert_eq!(
            (invoice.attempt_count, invoice.next_payment_attempt),
            (0, Some(1_234_567_890))
        );
        assert_eq!(
            invoice.hosted_invoice_url.as_deref(),
            Some("https://invoice.stripe.com/i/acct_1/test_1")
        );
        assert_eq!(
            (invoice.invoice_pdf, invoice.billing_reason.as_deref()),
            (None, Some("manual"))
        );
        // The service period comes from the line, not the invoice header.
        assert_eq!(
            (invoice.period_start, invoice.period_end),
            (Some(1_721_954_054), Some(1_721_954_054))
        );
        assert_eq!(invoice.status.as_deref(), Some("draft"));
    }
}

#[test]
fn an_invoice_links_through_its_subscriptions_metadata() {
    let mut invoice = invoice_object();
    invoice["parent"]["subscription_details"]["metadata"] =
        json!({ "billd_customer_id": "user_42", "billd_plan": "pro" });
    let event = handled("invoice.payment_failed", &invoice);
    assert_eq!(
        event
            .link_hints()
            .billd_customer_id
            .map(|c| c.to_string())
            .as_deref(),
        Some("user_42")
    );
    // The invoice's own metadata wins over the copy.
    invoice["metadata"] = json!({ "billd_customer_id": "user_7" });
    let event = handled("invoice.payment_failed", &invoice);
    assert_eq!(
        event
            .link_hints()
            .billd_customer_id
            .map(|c| c.to_string())
            .as_deref(),
        Some("user_7")
    );
}

#[test]
fn an_upcoming_invoice_without_an_id_still_parses() {
    let mut upcoming = invoice_object();
    upcoming.as_object_mut().unwrap().remove("id");
    let event = handled("invoice.upcoming", &upcoming);
    let EventKind::Invoice { invoice, .. } = event.kind else {
        panic!("invoice event")
    };
    assert_eq!(invoice.id, None);
    assert!(invoice.subscription.is_some());

    // Preview ids are not invoice ids; only on invoice.upcoming are they dropped.
    let mut preview = invoice_object();
    preview["id"] = json!("upcoming_in_1Pgc6tB7WZ01zgkW");
    let EventKind::Invoice { invoice, .. } = handled("invoice.upcoming", &preview).kind else {
        panic!("invoice event")
    };
    assert_eq!(invoice.id, None);
    let err = parse_event(&envelope("invoice.paid", &preview)).unwrap_err();
    assert_eq!(err.code(), "invalid_id");
}

#[test]
fn a_placeholder_id_in_a_used_field_is_refused_naming_the_field() {
    // Stripe's example invoice has `"subscription": "subscription"`.
    let err = parse_event(&envelope("invoice.paid", &object("invoice"))).unwrap_err();
    assert_eq!(err.code(), "invalid_id");
    assert!(
        err.to_string()
            .contains("parent.subscription_details.subscription"),
        "{err}"
    );
}

#[test]
fn charge_refunded_reports_the_refunded_total_and_flag() {
    let mut charge = object("charge");
    charge["refunded"] = json!(true);
    charge["amount_refunded"] = json!(100);
    charge["customer"] = json!("cus_QXg1o8vcGmoR32");
    charge["payment_intent"] = json!("pi_1PgafyB7WZ01zgkWSjxsAJo3");
    let EventKind::ChargeRefunded { charge } = handled("charge.refunded", &charge).kind else {
        panic!("charge.refunded")
    };
    assert_eq!(charge.id.as_str(), "ch_1PgafuB7WZ01zgkWXYmPNZs8");
    assert_eq!(charge.amount.to_string(), "1.00 USD");
    assert_eq!((charge.amount_refunded, charge.refunded), (100, true));
    assert_eq!(
        charge.customer.map(|c| c.to_string()).as_deref(),
        Some("cus_QXg1o8vcGmoR32")
    );
    assert_eq!(
        charge.payment_intent.map(|p| p.to_string()).as_deref(),
        Some("pi_1PgafyB7WZ01zgkWSjxsAJo3")
    );
}

#[test]
fn the_example_charge_without_customer_parses_with_none() {
    let EventKind::ChargeRefunded { charge } = handled("charge.refunded", &object("charge")).kind
    else {
        panic!("charge.refunded")
    };
    assert_eq!(
        (charge.customer, charge.refunded, charge.amount_refunded),
        (None, false, 0)
    );
}

#[test]
fn dispute_events_parse_status_amount_and_reason() {
    for event_type in [
        "charge.dispute.created",
        "charge.dispute.updated",
        "charge.dispute.closed",
    ] {
        let EventKind::Dispute { dispute, .. } = handled(event_type, &object("dispute")).kind
        else {
            panic!("{event_type} is a dispute event")
        };
        assert_eq!(dispute.id.as_str(), "dp_1Pgc71B7WZ01zgkWMevJiAUx");
        assert_eq!(
            dispute.charge.map(|c| c.to_string()).as_deref(),
            Some("ch_1PgafuB7WZ01zgkWXYmPNZs8")
        );
        assert_eq!(dispute.status, DisputeStatus::WarningNeedsResponse);
        assert_eq!(dispute.amount.to_string(), "10.00 USD");
        assert_eq!(dispute.reason.as_deref(), Some("general"));
        assert_eq!(dispute.customer, None);
    }
}

#[test]
fn a_dispute_with_an_expanded_charge_offers_the_charge_customer_for_linking() {
    let mut dispute = object("dispute");
    dispute["charge"] = json!({ "id": "ch_1PgafuB7WZ01zgkWXYmPNZs8", "object": "charge", "customer": "cus_QXg1o8vcGmoR32" });
    dispute["status"] = json!("lost");
    let event = handled("charge.dispute.closed", &dispute);
    assert_eq!(
        event
            .link_hints()
            .stripe_customer
            .map(|c| c.to_string())
            .as_deref(),
        Some("cus_QXg1o8vcGmoR32")
    );
    let EventKind::Dispute { dispute, .. } = event.kind else {
        panic!("dispute")
    };
    assert_eq!(dispute.status, DisputeStatus::Lost);
    assert_eq!(
        dispute.charge.map(|c| c.to_string()).as_deref(),
        Some("ch_1PgafuB7WZ01zgkWXYmPNZs8")
    );
}

#[test]
fn customer_events_parse_email_and_metadata_and_deletion() {
    let mut customer = object("customer");
    customer["email"] = json!("jenny@example.com");
    customer["metadata"] = json!({ "billd_customer_id": "user_42", "ignored_number": 5 });
    let EventKind::Customer {
        customer: parsed, ..
    } = handled("customer.updated", &customer).kind
    else {
        panic!("customer.updated")
    };
    assert_eq!(parsed.id.as_str(), "cus_QXg1o8vcGmoR32");
    assert_eq!(
        (parsed.email.as_deref(), parsed.created),
        (Some("jenny@example.com"), Some(1_234_567_890))
    );
    assert_eq!(parsed.metadata.len(), 1, "non-string metadata is dropped");
    assert!(matches!(
        handled("customer.created", &customer).kind,
        EventKind::Customer { .. }
    ));

    // A deleted customer arrives as a stub.
    let stub = json!({ "id": "cus_QXg1o8vcGmoR32", "object": "customer", "deleted": true });
    let EventKind::CustomerDeleted { customer } = handled("customer.deleted", &stub).kind else {
        panic!("customer.deleted")
    };
    assert_eq!(
        (customer.id.as_str(), customer.email),
        ("cus_QXg1o8vcGmoR32", None)
    );
}

#[test]
fn discount_events_parse_the_coupon_and_promotion_code() {
    let EventKind::Discount { discount, .. } =
        handled("customer.discount.created", &object("discount")).kind
    else {
        panic!("discount")
    };
    assert_eq!(discount.id.as_str(), "di_1Pgc6rB7WZ01zgkW7Al8Fal9");
    assert_eq!(
        discount.customer.map(|c| c.to_string()).as_deref(),
        Some("cus_QXg1o8vcGmoR32")
    );
    assert_eq!((discount.coupon, discount.promotion_code), (None, None));
    assert_eq!(
        (discount.start, discount.end),
        (Some(1_234_567_890), Some(1_234_567_890))
    );

    let mut with_coupon = object("discount");
    with_coupon["source"]["coupon"] = json!({ "id": "LAUNCH", "object": "coupon", "name": "Launch", "percent_off": 25.5, "duration": "once" });
    with_coupon["promotion_code"] = json!("promo_1Abc");
    with_coupon["subscription"] = json!("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw");
    let EventKind::Discount { discount, .. } =
        handled("customer.discount.updated", &with_coupon).kind
    else {
        panic!("discount")
    };
    let coupon = discount.coupon.expect("coupon");
    assert_eq!(
        (
            coupon.id.as_str(),
            coupon.percent_off_bp,
            coupon.name.as_deref()
        ),
        ("LAUNCH", Some(2550), Some("Launch"))
    );
    assert_eq!(discount.promotion_code.as_deref(), Some("promo_1Abc"));
    assert!(discount.subscription.is_some());

    let mut amount_off = object("discount");
    amount_off["source"]["coupon"] = json!({ "id": "FIVE", "amount_off": 500, "currency": "eur" });
    let EventKind::Discount { discount, .. } =
        handled("customer.discount.deleted", &amount_off).kind
    else {
        panic!("discount")
    };
    assert_eq!(
        discount
            .coupon
            .and_then(|c| c.amount_off)
            .map(|m| m.to_string())
            .as_deref(),
        Some("5.00 EUR")
    );
}

#[test]
fn payment_method_events_parse_the_card_expiry() {
    let mut pm = object("payment_method");
    pm["customer"] = json!("cus_QXg1o8vcGmoR32");
    for event_type in [
        "payment_method.attached",
        "payment_method.updated",
        "payment_method.automatically_updated",
    ] {
        let EventKind::PaymentMethod { payment_method, .. } = handled(event_type, &pm).kind else {
            panic!("{event_type}")
        };
        assert_eq!(payment_method.id.as_str(), "pm_1Pgc75B7WZ01zgkWlHVgdEGJ");
        assert_eq!(
            payment_method.customer.map(|c| c.to_string()).as_deref(),
            Some("cus_QXg1o8vcGmoR32")
        );
        let card = payment_method.card.expect("card");
        assert_eq!(
            (
                card.brand.as_deref(),
                card.last4.as_deref(),
                card.exp_month,
                card.exp_year
            ),
            (Some("visa"), Some("4242"), Some(8), Some(2030))
        );
    }
}

#[test]
fn checkout_session_events_parse_the_links_to_customer_and_subscription() {
    let mut session = object("checkout.session");
    session["customer"] = json!("cus_QXg1o8vcGmoR32");
    session["subscription"] =
        json!({ "id": "sub_1Pgc6rB7WZ01zgkWNy0Cn5nw", "object": "subscription" });
    session["client_reference_id"] = json!("user_42");
    session["mode"] = json!("subscription");
    let event = handled("checkout.session.completed", &session);
    assert_eq!(
        event
            .link_hints()
            .billd_customer_id
            .map(|c| c.to_string())
            .as_deref(),
        Some("user_42")
    );
    let EventKind::Checkout { change, session } = event.kind else {
        panic!("checkout")
    };
    assert_eq!(change, CheckoutChange::Completed);
    assert_eq!(
        session.id.as_str(),
        "cs_test_a1YS1URlnyQCN5fUUduORoQ7Pw41PJqDWkIVQCpJPqkfIhd6tVY8XB1OLY"
    );
    assert_eq!(
        session.subscription.map(|s| s.to_string()).as_deref(),
        Some("sub_1Pgc6rB7WZ01zgkWNy0Cn5nw")
    );
    assert_eq!(
        (session.mode.as_deref(), session.payment_status.as_deref()),
        (Some("subscription"), Some("unpaid"))
    );

    let EventKind::Checkout { change, session } =
        handled("checkout.session.expired", &object("checkout.session")).kind
    else {
        panic!("checkout")
    };
    assert_eq!(
        (change, session.customer, session.subscription),
        (CheckoutChange::Expired, None, None)
    );
}

#[test]
fn a_delayed_payments_outcome_is_a_checkout_change() {
    for (event_type, expected) in [
        (
            "checkout.session.async_payment_succeeded",
            CheckoutChange::AsyncPaymentSucceeded,
        ),
        (
            "checkout.session.async_payment_failed",
            CheckoutChange::AsyncPaymentFailed,
        ),
    ] {
        let mut session = object("checkout.session");
        session["mode"] = json!("payment");
        session["payment_intent"] = json!("pi_3Pgc6rB7WZ01zgkW0a1b2c3d");
        let EventKind::Checkout { change, session } = handled(event_type, &session).kind else {
            panic!("{event_type}")
        };
        assert_eq!(change, expected);
        assert_eq!(
            session.payment_intent.map(|p| p.to_string()).as_deref(),
            Some("pi_3Pgc6rB7WZ01zgkW0a1b2c3d")
        );
        assert!(HANDLED_EVENT_TYPES.contains(&event_type));
    }
}

#[test]
fn unknown_event_types_are_unhandled_rather_than_errors() {
    let parsed = parse_event(&envelope(
        "product.created",
        &json!({ "id": "prod_1", "object": "product" }),
    ))
    .unwrap();
    assert!(
        matches!(parsed, ParsedEvent::Unhandled { .. }),
        "{parsed:?}"
    );
    assert_eq!(parsed.event_type(), "product.created");
    assert_eq!(parsed.object_id().as_deref(), Some("prod_1"));
    assert_eq!(
        (parsed.id().as_str(), parsed.created(), parsed.api_version()),
        ("evt_1TestEnvelope", CREATED, Some(API_VERSION))
    );
}

#[test]
fn unknown_fields_are_ignored_and_unused_fields_may_be_missing() {
    let minimal = json!({
        "id": "sub_1", "customer": "cus_1", "status": "past_due",
        "a_field_from_the_future": { "nested": [1, 2, 3] },
        "items": { "data": [{ "price": { "id": "price_1", "transform_quantity": "changed shape" } }] },
        "metadata": null
    });
    let EventKind::Subscription { subscription, .. } =
        handled("customer.subscription.updated", &minimal).kind
    else {
        panic!("subscription")
    };
    assert_eq!(subscription.status, SubscriptionStatus::PastDue);
    assert_eq!(
        subscription.price.map(|p| p.id.to_string()).as_deref(),
        Some("price_1")
    );
    assert_eq!(
        (subscription.current_period_start, subscription.trial_end),
        (None, None)
    );
    assert!(!subscription.cancel_at_period_end && subscription.metadata.is_empty());
}

#[test]
fn broken_payloads_are_errors_with_stable_codes() {
    assert_eq!(parse_event("{not json").unwrap_err().code(), "invalid_json");
    assert_eq!(
        parse_event(&envelope(
            "customer.subscription.updated",
            &json!({ "id": "sub_1", "customer": "cus_1" })
        ))
        .unwrap_err()
        .code(),
        "invalid_json"
    );
    let odd_status = json!({ "id": "sub_1", "customer": "cus_1", "status": "resting" });
    let err = parse_event(&envelope("customer.subscription.updated", &odd_status)).unwrap_err();
    assert_eq!(
        (err.code(), err.to_string().contains("resting")),
        ("invalid_value", true)
    );
    let no_customer = json!({ "id": "sub_1", "status": "active" });
    assert_eq!(
        parse_event(&envelope("customer.subscription.updated", &no_customer))
            .unwrap_err()
            .code(),
        "missing_field"
    );
    let bad_id =
        envelope("charge.refunded", &object("charge")).replace("evt_1TestEnvelope", "ev_1");
    assert_eq!(parse_event(&bad_id).unwrap_err().code(), "invalid_id");
    let no_currency = json!({ "id": "ch_1", "amount": 5 });
    assert_eq!(
        parse_event(&envelope("charge.refunded", &no_currency))
            .unwrap_err()
            .code(),
        "missing_field"
    );
}

#[test]
fn a_refetched_subscription_becomes_an_authoritative_snapshot() {
    let trigger = billd_core::EventId::parse("evt_tie").unwrap();
    let event = refetched_subscription_event(trigger.clone(), CREATED + 5, &object("subscription"))
        .unwrap();
    assert!(event.authoritative);
    assert_eq!((event.id, event.created), (trigger.clone(), CREATED + 5));
    assert!(matches!(
        event.kind,
        EventKind::Subscription {
            change: SubscriptionChange::Updated,
            ..
        }
    ));

    let mut canceled = object("subscription");
    canceled["status"] = json!("canceled");
    let event = refetched_subscription_event(trigger, CREATED + 5, &canceled).unwrap();
    assert!(matches!(event.kind, EventKind::SubscriptionDeleted { .. }));
}

#[test]
fn invoice_payment_paid_names_the_invoice_and_the_payment_intent_for_linking() {
    let payment = json!({
        "id": "inpay_1PgafzB7WZ01zgkWa8nJ2Vbc", "object": "invoice_payment",
        "amount_paid": 1900, "amount_requested": 1900, "created": CREATED, "currency": "eur",
        "invoice": "in_1Pgc6tB7WZ01zgkWu9fdqL6I", "is_default": true, "livemode": false,
        "payment": { "type": "payment_intent", "payment_intent": "pi_1PgafyB7WZ01zgkWSjxsAJo3" },
        "status": "paid", "status_transitions": { "canceled_at": null, "paid_at": CREATED }
    });
    let event = handled("invoice_payment.paid", &payment);
    assert_eq!(
        event.object_id().as_deref(),
        Some("inpay_1PgafzB7WZ01zgkWa8nJ2Vbc")
    );
    let hints = event.link_hints();
    assert_eq!(
        (
            hints.invoice.map(|i| i.to_string()),
            hints.payment_intent.map(|p| p.to_string()),
            hints.stripe_customer,
        ),
        (
            Some("in_1Pgc6tB7WZ01zgkWu9fdqL6I".to_owned()),
            Some("pi_1PgafyB7WZ01zgkWSjxsAJo3".to_owned()),
            None
        )
    );
    let mut bad = payment.clone();
    bad["invoice"] = Value::Null;
    let err = parse_event(&envelope("invoice_payment.paid", &bad)).unwrap_err();
    assert_eq!(err.code(), "missing_field", "{err}");
}

#[test]
fn payment_intent_succeeded_ties_the_payment_intent_to_its_customer() {
    let intent = json!({
        "id": "pi_1PgafyB7WZ01zgkWSjxsAJo3", "object": "payment_intent",
        "customer": "cus_QXg1o8vcGmoR32", "status": "succeeded", "amount": 1900,
        "currency": "eur", "metadata": { "billd_customer_id": "user_42" }
    });
    let hints = handled("payment_intent.succeeded", &intent).link_hints();
    assert_eq!(
        (
            hints.stripe_customer.map(|c| c.to_string()),
            hints.billd_customer_id.map(|c| c.to_string()),
            hints.payment_intent.map(|p| p.to_string()),
        ),
        (
            Some("cus_QXg1o8vcGmoR32".to_owned()),
            Some("user_42".to_owned()),
            Some("pi_1PgafyB7WZ01zgkWSjxsAJo3".to_owned())
        )
    );
}
