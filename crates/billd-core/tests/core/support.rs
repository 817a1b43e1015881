//! Builders for events and states used by the tests.

#![allow(dead_code, reason = "not every test binary module uses every builder")]

use std::collections::BTreeMap;

use billd_core::event::{
    Charge, Dispute, DisputeChange, DisputeStatus, Invoice, InvoiceChange, Subscription,
    SubscriptionChange, SubscriptionPrice, SubscriptionStatus,
};
use billd_core::{
    apply, Catalog, ChargeId, Currency, CustomerState, Decision, DisputeId, Event, EventId,
    EventKind, FeatureName, InvoiceId, Money, PriceId, StripeCustomerId, StripeSubscriptionId,
};

pub const DAY: i64 = 86_400;
/// 2026-11-01T00:00:00Z.
pub const T0: i64 = 1_793_491_200;

pub fn eur() -> Currency {
    Currency::parse("eur").unwrap()
}

pub fn feature(name: &str) -> FeatureName {
    FeatureName::parse(name).unwrap()
}

pub fn cus() -> StripeCustomerId {
    StripeCustomerId::parse("cus_1").unwrap()
}

pub fn sub_id(n: u32) -> StripeSubscriptionId {
    StripeSubscriptionId::parse(&format!("sub_{n}")).unwrap()
}

/// A subscription on the seed catalog's plan (`standard`/`pro`, by lookup key).
pub fn subscription(
    n: u32,
    plan: &str,
    status: SubscriptionStatus,
    period_start: i64,
) -> Subscription {
    Subscription {
        id: sub_id(n),
        customer: cus(),
        status,
        created: T0 - DAY,
        price: Some(SubscriptionPrice {
            id: PriceId::parse(&format!("price_{plan}")).unwrap(),
            lookup_key: Some(format!("billd_{plan}_eur")),
            currency: Some(eur()),
            unit_amount: Some(900),
        }),
        quantity: Some(1),
        current_period_start: Some(period_start),
        current_period_end: Some(period_start + 30 * DAY),
        cancel_at_period_end: false,
        cancel_at: None,
        trial_end: None,
        discounts: vec![],
        metadata: BTreeMap::from([("billd_customer_id".to_owned(), "user_1".to_owned())]),
    }
}

pub fn event(id: &str, created: i64, kind: EventKind) -> Event {
    Event {
        id: EventId::parse(id).unwrap(),
        created,
        authoritative: false,
        refetch_round: 0,
        observed_ns: 0,
        kind,
    }
}

pub fn updated(id: &str, created: i64, subscription: Subscription) -> Event {
    event(
        id,
        created,
        EventKind::Subscription {
            change: SubscriptionChange::Updated,
            subscription,
        },
    )
}

pub fn deleted(id: &str, created: i64, mut subscription: Subscription) -> Event {
    subscription.status = SubscriptionStatus::Canceled;
    event(id, created, EventKind::SubscriptionDeleted { subscription })
}

pub fn invoice(n: u32, attempt: u32) -> Invoice {
    Invoice {
        id: Some(InvoiceId::parse(&format!("in_{n}")).unwrap()),
        customer: Some(cus()),
        subscription: Some(sub_id(1)),
        created: Some(T0 + i64::from(n)),
        status: Some("open".to_owned()),
        amount_due: Money::new(900, eur()),
        amount_paid: Money::new(0, eur()),
        attempt_count: attempt,
        next_payment_attempt: None,
        hosted_invoice_url: Some(format!("https://invoice.stripe.com/i/in_{n}")),
        invoice_pdf: None,
        billing_reason: Some("subscription_cycle".to_owned()),
        period_start: None,
        period_end: None,
        metadata: BTreeMap::new(),
    }
}

pub fn invoice_event(id: &str, created: i64, change: InvoiceChange, mut invoice: Invoice) -> Event {
    if matches!(
        change,
        InvoiceChange::Paid | InvoiceChange::PaymentSucceeded
    ) {
        invoice.amount_paid = invoice.amount_due.clone();
        invoice.status = Some("paid".to_owned());
    }
    event(id, created, EventKind::Invoice { change, invoice })
}

pub fn dispute(n: u32, status: DisputeStatus) -> Dispute {
    Dispute {
        id: DisputeId::parse(&format!("dp_{n}")).unwrap(),
        charge: Some(ChargeId::parse("ch_1").unwrap()),
        customer: None,
        payment_intent: None,
        status,
        amount: Money::new(900, eur()),
        reason: Some("fraudulent".to_owned()),
    }
}

pub fn dispute_event(id: &str, created: i64, change: DisputeChange, dispute: Dispute) -> Event {
    event(id, created, EventKind::Dispute { change, dispute })
}

pub fn refund_event(id: &str, created: i64, charge: u32, amount_refunded: i64) -> Event {
    let charge = Charge {
        id: ChargeId::parse(&format!("ch_{charge}")).unwrap(),
        customer: Some(cus()),
        amount: Money::new(900, eur()),
        amount_refunded,
        refunded: amount_refunded >= 900,
        payment_intent: None,
        metadata: BTreeMap::new(),
    };
    event(id, created, EventKind::ChargeRefunded { charge })
}

/// Applies events in order with the seed catalog, returning the last decision.
pub fn run(catalog: &Catalog, state: &CustomerState, events: &[Event], now: i64) -> Decision {
    let mut decision = Decision {
        state: state.clone(),
        effects: vec![],
        audit: vec![],
        outcome: billd_core::Outcome::Duplicate,
    };
    for e in events {
        decision = apply(&decision.state, e, catalog, now);
    }
    decision
}

/// The final state after applying events in order.
pub fn fold(catalog: &Catalog, events: &[Event], now: i64) -> CustomerState {
    run(catalog, &CustomerState::default(), events, now).state
}
