//! The ordering invariant, as a property: any permutation of an event
//! history, with duplicates, reaches the same final state (and the same
//! entitlements) as in-order, once-only delivery; and so does the same
//! delivery through the inbox worker's failure handling (failed attempts
//! rolled back, retries overtaken by later events, dead events replayed).

use std::collections::BTreeMap;

use billd_core::event::{
    Card, Charge, CheckoutChange, CheckoutSession, CustomerChange, Discount, DiscountChange,
    DisputeChange, DisputeStatus, InvoiceChange, PaymentMethod, PaymentMethodChange,
    StripeCustomer, Subscription, SubscriptionChange, SubscriptionStatus,
};
use billd_core::{
    apply, entitlements, usage_key, Catalog, ChargeId, CheckoutSessionId, CustomerState,
    DiscountId, DowngradePolicy, Event, EventKind, Money, PaymentIntentId, PaymentMethodId,
    StripeCustomerId, Usage,
};
use proptest::prelude::*;

use crate::support::*;

#[derive(Debug, Clone)]
enum Step {
    Tick(u8),
    Status(SubscriptionStatus),
    Plan(bool),
    CancelAtPeriodEnd(bool),
    Renew,
    Refetch(SubscriptionStatus),
    TrialWillEnd,
    Delete,
    NewSubscription,
    InvoiceFailed,
    InvoiceActionRequired,
    InvoicePaid,
    InvoiceFinalized,
    Upcoming,
    DisputeOpened,
    DisputeUpdated,
    DisputeClosed(bool),
    Refund(bool),
    CustomerUpdated,
    CustomerDeleted,
    DiscountCreated,
    DiscountDeleted,
    PaymentMethodUpdated,
    Checkout(bool),
    /// A credit pack bought (false) or the last one's payment refunded (true).
    Pack(bool),
}

fn status() -> impl Strategy<Value = SubscriptionStatus> {
    prop_oneof![
        1 => Just(SubscriptionStatus::Incomplete),
        1 => Just(SubscriptionStatus::Trialing),
        4 => Just(SubscriptionStatus::Active),
        3 => Just(SubscriptionStatus::PastDue),
        1 => Just(SubscriptionStatus::Unpaid),
        1 => Just(SubscriptionStatus::Paused),
        1 => Just(SubscriptionStatus::Canceled),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (0_u8..5).prop_map(Step::Tick),
        8 => status().prop_map(Step::Status),
        2 => any::<bool>().prop_map(Step::Plan),
        1 => any::<bool>().prop_map(Step::CancelAtPeriodEnd),
        2 => Just(Step::Renew),
        1 => status().prop_map(Step::Refetch),
        1 => Just(Step::TrialWillEnd),
        1 => Just(Step::Delete),
        1 => Just(Step::NewSubscription),
        2 => Just(Step::InvoiceFailed),
        1 => Just(Step::InvoiceActionRequired),
        2 => Just(Step::InvoicePaid),
        1 => Just(Step::InvoiceFinalized),
        1 => Just(Step::Upcoming),
        1 => Just(Step::DisputeOpened),
        1 => Just(Step::DisputeUpdated),
        1 => any::<bool>().prop_map(Step::DisputeClosed),
        1 => any::<bool>().prop_map(Step::Refund),
        1 => Just(Step::CustomerUpdated),
        1 => Just(Step::CustomerDeleted),
        1 => Just(Step::DiscountCreated),
        1 => Just(Step::DiscountDeleted),
        1 => Just(Step::PaymentMethodUpdated),
        1 => any::<bool>().prop_map(Step::Checkout),
        1 => any::<bool>().prop_map(Step::Pack),
    ]
}

/// Turns steps into a realistic Stripe event history (what Stripe would
/// send, in the order it happened, several events often in one second).
fn history(steps: &[Step]) -> Vec<Event> {
    let mut t = T0;
    let mut n = 0_u32;
    let mut events = Vec::new();
    let mut next_id = |prefix: &str| {
        n += 1;
        format!("{prefix}_{n:04}")
    };
    let mut sub_n = 1;
    let mut sub = subscription(sub_n, "pro", SubscriptionStatus::Incomplete, T0);
    sub.created = T0;
    let mut alive = true;
    let mut invoice_n = 0;
    let mut invoice_attempt = 0;
    let mut dispute_n = 0;
    let mut dispute_open = false;
    let mut charge_n = 0;
    let mut refunded = 0;
    let mut discount_n = 0;
    let mut customer_deleted = false;
    let mut pack_n = 0;
    let mut pack_refunded = 0;
    let snapshot = |events: &mut Vec<Event>,
                    id: String,
                    t: i64,
                    change: SubscriptionChange,
                    s: &Subscription| {
        events.push(event(
            &id,
            t,
            EventKind::Subscription {
                change,
                subscription: s.clone(),
            },
        ));
    };
    snapshot(
        &mut events,
        next_id("evt"),
        t,
        SubscriptionChange::Created,
        &sub,
    );
    for step in steps {
        match step {
            Step::Tick(k) => t += [0, 1, 3600, DAY, 3 * DAY][usize::from(*k)],
            Step::Status(status) if alive => {
                sub.status = *status;
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::Updated,
                    &sub,
                );
            }
            Step::Plan(pro) if alive => {
                let changed =
                    subscription(sub_n, if *pro { "pro" } else { "standard" }, sub.status, 0);
                sub.price = changed.price;
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::Updated,
                    &sub,
                );
            }
            Step::CancelAtPeriodEnd(on) if alive => {
                sub.cancel_at_period_end = *on;
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::Updated,
                    &sub,
                );
            }
            Step::Renew if alive => {
                let end = sub.current_period_end.unwrap_or(t);
                sub.current_period_start = Some(end);
                sub.current_period_end = Some(end + 30 * DAY);
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::Updated,
                    &sub,
                );
            }
            Step::Refetch(status) if alive => {
                sub.status = *status;
                let mut e = event(
                    &next_id("evt"),
                    t,
                    EventKind::Subscription {
                        change: SubscriptionChange::Updated,
                        subscription: sub.clone(),
                    },
                );
                e.authoritative = true;
                events.push(e);
            }
            Step::TrialWillEnd if alive => {
                sub.trial_end = Some(t + 3 * DAY);
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::TrialWillEnd,
                    &sub,
                );
            }
            Step::Delete if alive => {
                alive = false;
                events.push(deleted(&next_id("evt"), t, sub.clone()));
            }
            Step::NewSubscription if !alive => {
                sub_n += 1;
                sub = subscription(sub_n, "standard", SubscriptionStatus::Active, t);
                sub.created = t;
                alive = true;
                if customer_deleted {
                    // The customer comes back: billd links a new Stripe customer.
                    let customer = StripeCustomer {
                        id: StripeCustomerId::parse(&format!("cus_{}", sub_n + 1)).unwrap(),
                        created: Some(t),
                        email: None,
                        metadata: BTreeMap::new(),
                    };
                    sub.customer = customer.id.clone();
                    events.push(event(
                        &next_id("evt"),
                        t,
                        EventKind::Customer {
                            change: CustomerChange::Created,
                            customer,
                        },
                    ));
                }
                snapshot(
                    &mut events,
                    next_id("evt"),
                    t,
                    SubscriptionChange::Created,
                    &sub,
                );
            }
            Step::InvoiceFailed
            | Step::InvoiceActionRequired
            | Step::InvoicePaid
            | Step::InvoiceFinalized => {
                if invoice_n == 0 || matches!(step, Step::InvoiceFinalized) {
                    invoice_n += 1;
                    invoice_attempt = 0;
                }
                let change = match step {
                    Step::InvoiceFailed => {
                        invoice_attempt += 1;
                        InvoiceChange::PaymentFailed
                    }
                    Step::InvoiceActionRequired => {
                        invoice_attempt += 1;
                        InvoiceChange::PaymentActionRequired
                    }
                    Step::InvoicePaid => InvoiceChange::Paid,
                    _ => InvoiceChange::Finalized,
                };
                let mut inv = invoice(invoice_n, invoice_attempt);
                inv.subscription = Some(sub.id.clone());
                events.push(invoice_event(&next_id("evt"), t, change, inv.clone()));
                if change == InvoiceChange::Paid {
                    events.push(invoice_event(
                        &next_id("evt"),
                        t,
                        InvoiceChange::PaymentSucceeded,
                        inv,
                    ));
                    invoice_n += 1;
                    invoice_attempt = 0;
                }
            }
            Step::Upcoming => {
                let mut inv = invoice(0, 0);
                inv.id = None;
                inv.subscription = Some(sub.id.clone());
                inv.next_payment_attempt = sub.current_period_end;
                events.push(invoice_event(
                    &next_id("evt"),
                    t,
                    InvoiceChange::Upcoming,
                    inv,
                ));
            }
            Step::DisputeOpened if !dispute_open => {
                dispute_n += 1;
                dispute_open = true;
                events.push(dispute_event(
                    &next_id("evt"),
                    t,
                    DisputeChange::Created,
                    dispute(dispute_n, DisputeStatus::NeedsResponse),
                ));
            }
            Step::DisputeUpdated if dispute_open => {
                events.push(dispute_event(
                    &next_id("evt"),
                    t,
                    DisputeChange::Updated,
                    dispute(dispute_n, DisputeStatus::UnderReview),
                ));
            }
            Step::DisputeClosed(won) if dispute_open => {
                dispute_open = false;
                let status = if *won {
                    DisputeStatus::Won
                } else {
                    DisputeStatus::Lost
                };
                events.push(dispute_event(
                    &next_id("evt"),
                    t,
                    DisputeChange::Closed,
                    dispute(dispute_n, status),
                ));
            }
            Step::Refund(full) => {
                if refunded >= 900 || charge_n == 0 {
                    charge_n += 1;
                    refunded = 0;
                }
                refunded = if *full {
                    900
                } else {
                    (refunded + 300).min(900)
                };
                events.push(refund_event(&next_id("evt"), t, charge_n, refunded));
            }
            Step::CustomerUpdated if !customer_deleted => {
                let customer = StripeCustomer {
                    id: cus(),
                    created: Some(T0 - DAY),
                    email: Some(format!("{}@example.com", next_id("user"))),
                    metadata: BTreeMap::new(),
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::Customer {
                        change: CustomerChange::Updated,
                        customer,
                    },
                ));
            }
            Step::CustomerDeleted if !customer_deleted => {
                customer_deleted = true;
                let customer = StripeCustomer {
                    id: cus(),
                    created: Some(T0 - DAY),
                    email: None,
                    metadata: BTreeMap::new(),
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::CustomerDeleted { customer },
                ));
            }
            Step::DiscountCreated | Step::DiscountDeleted => {
                let deleting = matches!(step, Step::DiscountDeleted);
                if !deleting {
                    discount_n += 1;
                }
                if discount_n == 0 {
                    continue;
                }
                let discount = Discount {
                    id: DiscountId::parse(&format!("di_{discount_n}")).unwrap(),
                    customer: Some(cus()),
                    subscription: Some(sub.id.clone()),
                    coupon: None,
                    promotion_code: Some(format!("promo_{discount_n}")),
                    start: Some(t),
                    end: Some(t + 90 * DAY),
                };
                let change = if deleting {
                    DiscountChange::Deleted
                } else {
                    DiscountChange::Created
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::Discount { change, discount },
                ));
            }
            Step::PaymentMethodUpdated => {
                let year = 2027 + i32::try_from(events.len() % 5).unwrap();
                let payment_method = PaymentMethod {
                    id: PaymentMethodId::parse("pm_1").unwrap(),
                    customer: Some(cus()),
                    card: Some(Card {
                        brand: Some("visa".to_owned()),
                        last4: Some("4242".to_owned()),
                        exp_month: Some(8),
                        exp_year: Some(year),
                    }),
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::PaymentMethod {
                        change: PaymentMethodChange::AutomaticallyUpdated,
                        payment_method,
                    },
                ));
            }
            Step::Checkout(completed) => {
                let session = CheckoutSession {
                    id: CheckoutSessionId::parse(&format!("cs_test_{}", events.len() % 3)).unwrap(),
                    customer: Some(cus()),
                    subscription: completed.then(|| sub.id.clone()),
                    client_reference_id: Some("user_1".to_owned()),
                    mode: Some("subscription".to_owned()),
                    payment_status: Some(if *completed { "paid" } else { "unpaid" }.to_owned()),
                    payment_intent: None,
                    metadata: BTreeMap::new(),
                };
                let change = if *completed {
                    CheckoutChange::Completed
                } else {
                    CheckoutChange::Expired
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::Checkout { change, session },
                ));
            }
            Step::Pack(false) => {
                pack_n += 1;
                let session = CheckoutSession {
                    id: CheckoutSessionId::parse(&format!("cs_pack_{pack_n}")).unwrap(),
                    customer: Some(cus()),
                    subscription: None,
                    client_reference_id: Some("user_1".to_owned()),
                    mode: Some("payment".to_owned()),
                    payment_status: Some("paid".to_owned()),
                    payment_intent: Some(
                        PaymentIntentId::parse(&format!("pi_pack_{pack_n}")).unwrap(),
                    ),
                    metadata: [
                        ("billd_credit_pack", "gen_100"),
                        ("billd_credit_feature", "generations"),
                        ("billd_credit_amount", "100"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::Checkout {
                        change: CheckoutChange::Completed,
                        session,
                    },
                ));
            }
            // Stripe refunds a payment in full once.
            Step::Pack(true) if pack_n > pack_refunded => {
                pack_refunded = pack_n;
                let charge = Charge {
                    id: ChargeId::parse(&format!("ch_pack_{pack_n}")).unwrap(),
                    customer: Some(cus()),
                    amount: Money::new(500, eur()),
                    amount_refunded: 500,
                    refunded: true,
                    payment_intent: Some(
                        PaymentIntentId::parse(&format!("pi_pack_{pack_n}")).unwrap(),
                    ),
                    metadata: BTreeMap::new(),
                };
                events.push(event(
                    &next_id("evt"),
                    t,
                    EventKind::ChargeRefunded { charge },
                ));
            }
            // Steps that do not fit the current state (e.g. an update after deletion) emit nothing.
            _ => {}
        }
    }
    events
}

fn history_and_delivery() -> impl Strategy<Value = (Vec<Event>, Vec<Event>)> {
    prop::collection::vec(step(), 1..40).prop_flat_map(|steps| {
        let events = history(&steps);
        let n = events.len();
        (Just(events), prop::collection::vec(any::<bool>(), n)).prop_flat_map(
            |(events, duplicate)| {
                let mut delivery = events.clone();
                delivery.extend(
                    events
                        .iter()
                        .zip(duplicate)
                        .filter(|(_, d)| *d)
                        .map(|(e, _)| e.clone()),
                );
                (Just(events), Just(delivery).prop_shuffle())
            },
        )
    })
}

/// What the inbox worker does with one delivered event on its way to being
/// applied: it fails transiently some number of times (each failure rolls
/// its transaction back, so the state is untouched, and its retry comes
/// `delay` deliveries later, since a retrying event no longer holds its
/// customer's later events back), or it is dead at once (a permanent
/// failure) and an operator replays it after everything else.
#[derive(Debug, Clone)]
enum Fate {
    Applies,
    Retries { failures: u8, delay: u8 },
    DeadThenReplayed,
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        6 => Just(Fate::Applies),
        3 => (1..4u8, 0..8u8).prop_map(|(failures, delay)| Fate::Retries { failures, delay }),
        1 => Just(Fate::DeadThenReplayed),
    ]
}

/// A delivery (as [`history_and_delivery`]) and a fate for each delivered
/// event.
fn history_delivery_and_fates() -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<Fate>)> {
    history_and_delivery().prop_flat_map(|(in_order, delivery)| {
        let n = delivery.len();
        (
            Just(in_order),
            Just(delivery),
            prop::collection::vec(fate(), n),
        )
    })
}

/// Runs `delivery` through the worker's failure handling as [`Fate`]s say:
/// every attempt that fails is computed and thrown away (the rolled-back
/// transaction), retries are requeued later, dead events are replayed last.
/// Returns the final state, the order events were applied in, and how many
/// attempts failed.
fn deliver_with_failures<'a>(
    catalog: &Catalog,
    delivery: &'a [Event],
    fates: &[Fate],
) -> (CustomerState, Vec<&'a Event>, usize) {
    // (event, failures left, delay) in the order the worker takes them.
    let mut queue: std::collections::VecDeque<(&Event, u8, usize)> = delivery
        .iter()
        .zip(fates)
        .filter_map(|(e, fate)| match fate {
            Fate::Applies => Some((e, 0, 0)),
            Fate::Retries { failures, delay } => Some((e, *failures, usize::from(*delay))),
            Fate::DeadThenReplayed => None,
        })
        .collect();
    let dead: Vec<&Event> = delivery
        .iter()
        .zip(fates)
        .filter(|(_, fate)| matches!(fate, Fate::DeadThenReplayed))
        .map(|(e, _)| e)
        .collect();
    let mut state = CustomerState::default();
    let mut applied = Vec::with_capacity(delivery.len());
    let mut failed = dead.len();
    while let Some((e, failures, delay)) = queue.pop_front() {
        let decision = apply(&state, e, catalog, e.created);
        if failures == 0 {
            state = decision.state;
            applied.push(e);
        } else {
            failed += 1;
            let at = delay.min(queue.len());
            queue.insert(at, (e, failures - 1, delay));
        }
    }
    for e in dead {
        state = apply(&state, e, catalog, e.created).state;
        applied.push(e);
    }
    (state, applied, failed)
}

/// The paths where two states differ, to keep failures readable.
fn json_diff(actual: &CustomerState, expected: &CustomerState) -> String {
    fn walk(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                for key in x
                    .keys()
                    .chain(y.keys())
                    .collect::<std::collections::BTreeSet<_>>()
                {
                    let null = serde_json::Value::Null;
                    walk(
                        &format!("{path}.{key}"),
                        x.get(key).unwrap_or(&null),
                        y.get(key).unwrap_or(&null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: got {a} expected {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(actual).unwrap(),
        &serde_json::to_value(expected).unwrap(),
        &mut out,
    );
    out.join("\n")
}

fn deliver(catalog: &Catalog, events: &[Event]) -> CustomerState {
    events.iter().fold(CustomerState::default(), |state, e| {
        apply(&state, e, catalog, e.created).state
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn any_permutation_with_duplicates_converges_to_in_order_delivery((in_order, delivery) in history_and_delivery()) {
        let catalog = Catalog::seed();
        let expected = deliver(&catalog, &in_order);
        let actual = deliver(&catalog, &delivery);
        prop_assert!(actual == expected, "state differs: {}", json_diff(&actual, &expected));

        let last = in_order.iter().map(|e| e.created).max().unwrap_or(T0);
        let at_period_end = catalog.clone().with_downgrade_policy(DowngradePolicy::AtPeriodEnd);
        for now in [last, last + 2 * DAY, last + 5 * DAY] {
            for catalog in [&catalog, &at_period_end] {
                let key = usage_key(&expected, catalog, &feature("generations"), now).unwrap();
                let usage = Usage::new().with(key, 12);
                prop_assert_eq!(
                    entitlements(&actual, catalog, &usage, now),
                    entitlements(&expected, catalog, &usage, now)
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn deliveries_with_retries_overtaken_and_dead_events_replayed_converge_to_in_order_delivery(
        (in_order, delivery, fates) in history_delivery_and_fates()
    ) {
        let catalog = Catalog::seed();
        let expected = deliver(&catalog, &in_order);
        let (actual, _, _) = deliver_with_failures(&catalog, &delivery, &fates);
        prop_assert!(actual == expected, "state differs: {}", json_diff(&actual, &expected));
        let now = in_order.iter().map(|e| e.created).max().unwrap_or(T0) + 2 * DAY;
        let key = usage_key(&expected, &catalog, &feature("generations"), now).unwrap();
        let usage = Usage::new().with(key, 12);
        prop_assert_eq!(
            entitlements(&actual, &catalog, &usage, now),
            entitlements(&expected, &catalog, &usage, now)
        );
    }
}

#[test]
fn a_retried_event_is_overtaken_and_a_dead_one_replayed_last() {
    // Guards the failure model: a retry really moves an event behind later
    // ones, and a dead event really comes after everything else.
    let catalog = Catalog::seed();
    let steps = vec![
        Step::Status(SubscriptionStatus::Active),
        Step::Status(SubscriptionStatus::PastDue),
    ];
    // Created, then updated twice.
    let events = history(&steps);
    assert_eq!(events.len(), 3, "{events:?}");
    let mut fates = vec![Fate::Applies; events.len()];
    fates[0] = Fate::Retries {
        failures: 2,
        delay: 1,
    };
    fates[1] = Fate::DeadThenReplayed;

    let (state, applied, failed) = deliver_with_failures(&catalog, &events, &fates);

    assert_eq!(failed, 3, "two failed attempts and one dead event");
    let ids: Vec<&str> = applied.iter().map(|e| e.id.as_str()).collect();
    // The third overtakes the retrying first, whose second failure leaves
    // it next in line; the dead second is replayed last.
    let want = [&events[2], &events[0], &events[1]].map(|e| e.id.as_str());
    assert_eq!(ids, want);
    let expected = deliver(&catalog, &events);
    assert!(state == expected, "{}", json_diff(&state, &expected));
}

#[test]
fn the_generator_produces_same_second_ties_and_every_event_family() {
    // Guards the property against a generator that silently stopped
    // producing the hard cases.
    let steps = vec![
        Step::Status(SubscriptionStatus::Active),
        Step::Status(SubscriptionStatus::PastDue),
        Step::Refetch(SubscriptionStatus::Active),
        Step::InvoicePaid,
        Step::DisputeOpened,
        Step::DisputeClosed(false),
        Step::Refund(true),
        Step::Pack(false),
        Step::Pack(true),
        Step::Tick(3),
        Step::Delete,
    ];
    let events = history(&steps);
    assert!(events.windows(2).any(|w| w[0].created == w[1].created));
    assert!(events.iter().any(|e| e.authoritative));
    let types: std::collections::BTreeSet<&str> = events.iter().map(Event::event_type).collect();
    for expected in [
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "invoice.paid",
        "charge.dispute.closed",
        "charge.refunded",
        "checkout.session.completed",
    ] {
        assert!(
            types.contains(expected),
            "{expected} missing from {types:?}"
        );
    }
}
