//! Same-second ties and the re-fetches that settle them: one re-fetch per
//! tie until it lands, another round only for a webhook of that second that
//! arrives after it, and a fetch that lands late never regresses the state.

use billd_core::event::SubscriptionStatus;
use billd_core::{apply, Catalog, CustomerState, Effect, Event, Outcome, MAX_REFETCH_ROUNDS};

use crate::support::*;

/// The re-fetch effects of applying `events` in order, from an empty state.
fn refetches(catalog: &Catalog, events: &[Event]) -> (CustomerState, Vec<(u32, String)>) {
    let mut state = CustomerState::default();
    let mut asked = Vec::new();
    for e in events {
        let decision = apply(&state, e, catalog, e.created);
        for effect in decision.effects {
            if let Effect::RefetchSubscription {
                round, dedupe_key, ..
            } = effect
            {
                asked.push((round, dedupe_key));
            }
        }
        state = decision.state;
    }
    (state, asked)
}

fn webhook(id: &str, created: i64, status: SubscriptionStatus) -> Event {
    updated(id, created, subscription(1, "pro", status, T0))
}

fn refetched(round: u32, created: i64, status: SubscriptionStatus) -> Event {
    let id = if round == 0 {
        format!("evt_billd_refetch_sub_1_{created}")
    } else {
        format!("evt_billd_refetch_sub_1_{created}_r{round}")
    };
    let mut e = webhook(&id, created, status);
    e.authoritative = true;
    e.refetch_round = round;
    e
}

fn status(state: &CustomerState) -> SubscriptionStatus {
    state.subscriptions[&sub_id(1)].snapshot.status
}

#[test]
fn every_tie_found_before_the_refetch_lands_shares_one_refetch() {
    let catalog = Catalog::seed();
    let a = webhook("evt_a", T0, SubscriptionStatus::Incomplete);
    let b = webhook("evt_b", T0, SubscriptionStatus::Active);
    let c = webhook("evt_c", T0, SubscriptionStatus::PastDue);

    for order in [
        vec![a.clone(), b.clone(), c.clone()],
        vec![c.clone(), a.clone(), b.clone()],
        vec![b.clone(), c.clone(), a.clone(), b.clone()],
    ] {
        let (_, asked) = refetches(&catalog, &order);

        let key = format!("refetch_subscription:sub_1:{T0}");
        assert!(!asked.is_empty(), "{order:?}");
        assert!(
            asked.iter().all(|(round, k)| *round == 0 && *k == key),
            "{asked:?}"
        );
    }
}

#[test]
fn a_webhook_of_the_tied_second_after_the_refetch_asks_for_the_next_round_which_wins() {
    let catalog = Catalog::seed();
    let (state, _) = refetches(
        &catalog,
        &[
            webhook("evt_a", T0, SubscriptionStatus::Incomplete),
            webhook("evt_b", T0, SubscriptionStatus::Active),
            refetched(0, T0, SubscriptionStatus::PastDue),
        ],
    );
    assert_eq!(status(&state), SubscriptionStatus::PastDue);

    // Stripe's clock still reads T0 (a test clock) when the card is fixed.
    let late = apply(
        &state,
        &webhook("evt_c", T0, SubscriptionStatus::Active),
        &catalog,
        T0,
    );

    assert_eq!(late.outcome, Outcome::Stale);
    assert_eq!(
        late.effects,
        vec![Effect::RefetchSubscription {
            subscription: sub_id(1),
            tie_created: T0,
            round: 1,
            dedupe_key: format!("refetch_subscription:sub_1:{T0}:1"),
        }]
    );
    // The second round was fetched later: it wins although `active` ranks
    // below `past_due` among webhook payloads.
    let settled = apply(
        &late.state,
        &refetched(1, T0, SubscriptionStatus::Active),
        &catalog,
        T0,
    );
    assert_eq!(settled.outcome, Outcome::Applied);
    assert_eq!(status(&settled.state), SubscriptionStatus::Active);
    let replayed = apply(
        &settled.state,
        &refetched(0, T0, SubscriptionStatus::PastDue),
        &catalog,
        T0,
    );
    assert_eq!(replayed.outcome, Outcome::Stale);
    assert_eq!(status(&replayed.state), SubscriptionStatus::Active);
}

#[test]
fn a_refetch_landing_after_a_newer_webhook_changes_nothing() {
    let catalog = Catalog::seed();
    let (state, asked) = refetches(
        &catalog,
        &[
            webhook("evt_a", T0, SubscriptionStatus::Active),
            webhook("evt_b", T0, SubscriptionStatus::PastDue),
            webhook("evt_c", T0 + 30, SubscriptionStatus::Active),
        ],
    );
    assert_eq!(asked.len(), 1);

    // The fetch was answered before evt_c happened and arrives after it.
    let late = apply(
        &state,
        &refetched(0, T0, SubscriptionStatus::PastDue),
        &catalog,
        T0 + 40,
    );

    assert_eq!(late.outcome, Outcome::Stale);
    assert_eq!(status(&late.state), SubscriptionStatus::Active);
    assert_eq!(late.state.subscriptions[&sub_id(1)].stamp.created, T0 + 30);
    assert_eq!(
        late.state.subscriptions[&sub_id(1)].past_due_since,
        None,
        "{:#?}",
        late.state.subscriptions[&sub_id(1)]
    );
    assert!(late.audit.is_empty(), "{:#?}", late.audit);
    assert!(late.effects.is_empty(), "{:#?}", late.effects);
}

#[test]
fn refetch_rounds_of_one_second_stop_at_the_limit() {
    let catalog = Catalog::seed();
    let mut state = fold(
        &catalog,
        &[
            webhook("evt_a", T0, SubscriptionStatus::Active),
            webhook("evt_b", T0, SubscriptionStatus::Active),
        ],
        T0,
    );
    let mut rounds = Vec::new();
    for n in 0..(MAX_REFETCH_ROUNDS + 3) {
        state = apply(
            &state,
            &refetched(n, T0, SubscriptionStatus::Active),
            &catalog,
            T0,
        )
        .state;
        let decision = apply(
            &state,
            &webhook(&format!("evt_late_{n}"), T0, SubscriptionStatus::Active),
            &catalog,
            T0,
        );
        rounds.extend(decision.effects.iter().filter_map(|e| match e {
            Effect::RefetchSubscription { round, .. } => Some(*round),
            _ => None,
        }));
        state = decision.state;
    }

    let expected: Vec<u32> = (1..MAX_REFETCH_ROUNDS).collect();
    assert_eq!(rounds, expected);
}

#[test]
fn webhooks_and_refetch_rounds_of_one_second_converge_in_any_order() {
    let catalog = Catalog::seed();
    let events = [
        webhook("evt_a", T0, SubscriptionStatus::Incomplete),
        webhook("evt_b", T0, SubscriptionStatus::PastDue),
        refetched(0, T0, SubscriptionStatus::PastDue),
        webhook("evt_c", T0, SubscriptionStatus::Active),
        refetched(1, T0, SubscriptionStatus::Active),
    ];
    let expected = fold(&catalog, &events, T0);
    assert_eq!(status(&expected), SubscriptionStatus::Active);

    // Heap's algorithm: every permutation of the five events.
    let mut order: Vec<usize> = (0..events.len()).collect();
    let mut c = vec![0; events.len()];
    let check = |order: &[usize]| {
        let delivered: Vec<Event> = order.iter().map(|&i| events[i].clone()).collect();
        assert_eq!(fold(&catalog, &delivered, T0), expected, "{order:?}");
    };
    check(&order);
    let mut i = 0;
    while i < order.len() {
        if c[i] < i {
            if i % 2 == 0 {
                order.swap(0, i);
            } else {
                order.swap(c[i], i);
            }
            check(&order);
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
}

/// An authoritative snapshot of the subscription, with `cancel_at_period_end`
/// as billd observed it at `observed_ns`.
fn observed(id: &str, round: u32, observed_ns: u64, cancel: bool) -> Event {
    let mut sub = subscription(1, "pro", SubscriptionStatus::Active, T0);
    sub.cancel_at_period_end = cancel;
    let mut e = updated(id, T0, sub);
    e.authoritative = true;
    e.refetch_round = round;
    e.observed_ns = observed_ns;
    e
}

#[test]
fn a_change_billd_made_beats_a_later_round_refetch_read_before_it_in_either_order() {
    let catalog = Catalog::seed();
    // billd cancels (its answer fed back), and the cancellation's webhook
    // of the same second asks for a round-1 re-fetch.
    let canceled = observed("evt_billd_sync_sub_1_100", 0, 100, true);
    let (state, asked) = refetches(
        &catalog,
        &[
            webhook("evt_a", T0, SubscriptionStatus::Active),
            canceled,
            updated("evt_b", T0, {
                let mut s = subscription(1, "pro", SubscriptionStatus::Active, T0);
                s.cancel_at_period_end = true;
                s
            }),
        ],
    );
    assert_eq!(asked.last().map(|(round, _)| *round), Some(1), "{asked:?}");
    // The re-fetch is read before billd resumes, whose answer is fed back
    // still in the same second, and the two land in either order.
    let refetch = observed("evt_billd_refetch_sub_1_T0_r1", 1, 150, true);
    let resumed = observed("evt_billd_sync_sub_1_200", 0, 200, false);

    for order in [[&refetch, &resumed], [&resumed, &refetch]] {
        let mut s = state.clone();
        for e in order {
            s = apply(&s, e, &catalog, T0).state;
        }
        let sub = &s.subscriptions[&sub_id(1)];
        assert!(!sub.snapshot.cancel_at_period_end, "{order:?}");
        assert_eq!(sub.stamp.event_id.as_str(), "evt_billd_sync_sub_1_200");
    }
    // A round-1 re-fetch read after the resume wins over it, as it should.
    let later = observed("evt_billd_refetch_sub_1_T0_r1", 1, 250, false);
    let s = apply(&state, &resumed, &catalog, T0).state;
    let s = apply(&s, &later, &catalog, T0);
    assert_eq!(s.outcome, Outcome::Applied);
}
