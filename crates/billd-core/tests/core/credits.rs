//! Credit packs: a paid pack's session credits its units once, a refund of
//! its payment removes what is left without touching the subscription's
//! access, and consumes take the included quota, then credits, then
//! overage, the credits surviving renewals.

use std::collections::BTreeMap;

use billd_core::credits::{split, take};
use billd_core::event::{Charge, CheckoutChange, CheckoutSession, SubscriptionStatus};
use billd_core::{
    consume_target, entitlements, Access, Catalog, ChargeId, CheckoutSessionId, Event, EventKind,
    Money, PaymentIntentId, Usage,
};
use proptest::prelude::*;

use crate::support::*;

fn catalog() -> Catalog {
    let text = format!(
        "{}\n[credit_packs.gen_100]\nfeature = \"generations\"\namount = 100\nprices = {{ eur = {{ lookup_key = \"billd_gen_100_eur\", unit_amount = 500 }} }}\n",
        billd_core::catalog::SEED_CATALOG_TOML
    );
    Catalog::from_toml(&text).unwrap()
}

fn bought(id: &str, at: i64, n: u32) -> Event {
    paid_by(id, at, n, CheckoutChange::Completed, "paid")
}

/// A pack's session `n` told by `change` with `payment_status`.
fn paid_by(id: &str, at: i64, n: u32, change: CheckoutChange, status: &str) -> Event {
    let session = CheckoutSession {
        id: CheckoutSessionId::parse(&format!("cs_pack_{n}")).unwrap(),
        customer: Some(cus()),
        subscription: None,
        client_reference_id: Some("user_1".to_owned()),
        mode: Some("payment".to_owned()),
        payment_status: Some(status.to_owned()),
        payment_intent: Some(PaymentIntentId::parse(&format!("pi_pack_{n}")).unwrap()),
        metadata: [
            ("billd_credit_pack", "gen_100"),
            ("billd_credit_feature", "generations"),
            ("billd_credit_amount", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    };
    event(id, at, EventKind::Checkout { change, session })
}

fn refunded(id: &str, at: i64, n: u32) -> Event {
    let charge = Charge {
        id: ChargeId::parse(&format!("ch_pack_{n}")).unwrap(),
        customer: Some(cus()),
        amount: Money::new(500, eur()),
        amount_refunded: 500,
        refunded: true,
        payment_intent: Some(PaymentIntentId::parse(&format!("pi_pack_{n}")).unwrap()),
        metadata: BTreeMap::new(),
    };
    event(id, at, EventKind::ChargeRefunded { charge })
}

const NOW: i64 = T0 + DAY;

#[test]
fn a_delayed_payment_credits_its_pack_once_when_it_succeeds_in_any_order_and_never_when_it_fails() {
    let catalog = catalog();
    let usage = Usage::new();
    let sub = updated(
        "evt_1",
        T0,
        subscription(1, "pro", SubscriptionStatus::Active, T0),
    );
    let credits = |events: &[Event]| {
        let state = fold(&catalog, events, NOW);
        entitlements(&state, &catalog, &usage, NOW).features[&feature("generations")].credits
    };
    let completed = paid_by("evt_2", T0, 1, CheckoutChange::Completed, "unpaid");
    let succeeded = paid_by(
        "evt_3",
        T0 + 60,
        1,
        CheckoutChange::AsyncPaymentSucceeded,
        "paid",
    );
    let failed = paid_by(
        "evt_4",
        T0 + 60,
        1,
        CheckoutChange::AsyncPaymentFailed,
        "unpaid",
    );
    // The sync's completed-and-paid, told after the payment settled.
    let synced = paid_by(
        "evt_billd_checkout_cs_pack_1_paid",
        T0,
        1,
        CheckoutChange::Completed,
        "paid",
    );
    assert_eq!(credits(&[sub.clone(), completed.clone()]), 0);
    for events in [
        vec![sub.clone(), completed.clone(), succeeded.clone()],
        vec![sub.clone(), succeeded.clone(), completed.clone()],
        vec![
            sub.clone(),
            completed.clone(),
            succeeded.clone(),
            synced.clone(),
        ],
        vec![
            sub.clone(),
            synced.clone(),
            succeeded.clone(),
            completed.clone(),
        ],
        vec![sub.clone(), succeeded.clone(), succeeded.clone()],
    ] {
        assert_eq!(credits(&events), 100);
    }
    assert_eq!(
        credits(&[sub.clone(), completed.clone(), failed.clone()]),
        0
    );
    assert_eq!(credits(&[sub, failed, completed]), 0);
}

#[test]
fn a_paid_pack_is_credited_once_and_its_refund_removes_what_is_left_but_not_the_plan() {
    let catalog = catalog();
    let sub = updated(
        "evt_1",
        T0,
        subscription(1, "pro", SubscriptionStatus::Active, T0),
    );
    let state = fold(&catalog, &[sub.clone(), bought("evt_2", T0, 1)], NOW);
    let target = consume_target(&state, &catalog, &feature("generations"), 1, NOW).unwrap();
    let credits = target.credits.clone().unwrap();
    assert_eq!((credits.included, credits.sources.len()), (25, 1));

    let mut usage = Usage::new();
    usage.set_credits_used("pi_pack_1", 30);
    let ent = entitlements(&state, &catalog, &usage, NOW);
    assert_eq!(ent.features[&feature("generations")].credits, 70);
    assert_eq!(ent.features[&feature("websites")].credits, 0);

    // A duplicate completion credits nothing more.
    let again = fold(
        &catalog,
        &[
            sub.clone(),
            bought("evt_2", T0, 1),
            bought("evt_3", T0 + 5, 1),
        ],
        NOW,
    );
    assert_eq!(
        entitlements(&again, &catalog, &usage, NOW).features[&feature("generations")].credits,
        70
    );

    // The refund, before or after the completion: nothing left, the plan's
    // access untouched (the refund is the pack's, not the subscription's).
    for events in [
        vec![
            sub.clone(),
            bought("evt_2", T0, 1),
            refunded("evt_4", T0 + 9, 1),
        ],
        vec![
            sub.clone(),
            refunded("evt_4", T0 + 9, 1),
            bought("evt_2", T0, 1),
        ],
    ] {
        let state = fold(&catalog, &events, NOW);
        let ent = entitlements(&state, &catalog, &usage, NOW);
        assert_eq!(ent.features[&feature("generations")].credits, 0);
        assert_eq!((ent.plan.as_str(), ent.access), ("pro", Access::Paid));
        let target = consume_target(&state, &catalog, &feature("generations"), 1, NOW).unwrap();
        assert_eq!(target.credits, None);
    }
}

#[test]
fn a_session_that_is_not_a_paid_pack_credits_nothing() {
    let catalog = catalog();
    let mut unpaid = bought("evt_2", T0, 1);
    if let EventKind::Checkout { session, .. } = &mut unpaid.kind {
        session.payment_status = Some("unpaid".to_owned());
    }
    let mut subscription_mode = bought("evt_3", T0, 2);
    if let EventKind::Checkout { session, .. } = &mut subscription_mode.kind {
        session.mode = Some("subscription".to_owned());
    }
    let state = fold(&catalog, &[unpaid, subscription_mode], NOW);
    let ent = entitlements(&state, &catalog, &Usage::new(), NOW);
    assert_eq!(ent.features[&feature("generations")].credits, 0);
}

proptest! {
    /// A model of the store's consume with credits over several periods:
    /// each period's counter counts included and overage units only, the
    /// packs' counters what credits gave. Whatever the consumes, a period
    /// uses its quota before credits and credits before overage, credits
    /// are never taken twice, and a renewal keeps what is left of them.
    #[test]
    fn consumes_take_the_quota_then_credits_then_overage_across_renewals(
        periods in prop::collection::vec(prop::collection::vec(1u64..30, 0..8), 1..5),
        included in 0u64..20,
        cap in 0u64..20,
    ) {
        let catalog = catalog();
        let state = fold(&catalog, &[bought("evt_1", T0, 1), bought("evt_2", T0 + 1, 2)], NOW);
        let sources = state.credits.sources(&feature("generations"));
        prop_assert_eq!(sources.len(), 2);
        let mut credits_used: BTreeMap<String, u64> = BTreeMap::new();
        for consumes in periods {
            let before = state.credits.balance(&feature("generations"), |p| credits_used.get(p).copied().unwrap_or(0));
            let mut counter = 0u64;
            let mut taken_this_period = 0u64;
            for amount in consumes {
                let used = |p: &str| credits_used.get(p).copied().unwrap_or(0);
                let balance = billd_core::credits::balance(&sources, used);
                let fits = split(
                    amount,
                    included.saturating_sub(counter),
                    balance,
                    (included + cap).saturating_sub(counter.max(included)),
                );
                let Some(s) = fits else {
                    prop_assert!(amount > included.saturating_sub(counter) + balance + (included + cap).saturating_sub(counter.max(included)));
                    continue;
                };
                if s.credits > 0 {
                    prop_assert!(counter + s.included >= included, "credits before the quota is used");
                }
                if s.overage > 0 {
                    prop_assert_eq!(s.credits, balance, "overage before credits are used");
                }
                let taken = take(&sources, used, s.credits);
                prop_assert_eq!(taken.iter().map(|(_, n)| n).sum::<u64>(), s.credits);
                for (payment, n) in taken {
                    *credits_used.entry(payment).or_default() += n;
                }
                counter += s.included + s.overage;
                taken_this_period += s.credits;
                prop_assert!(counter <= included + cap);
            }
            let after = state.credits.balance(&feature("generations"), |p| credits_used.get(p).copied().unwrap_or(0));
            // Renewal resets the counter only: the balance is what this
            // period left.
            prop_assert_eq!(after, before - taken_this_period);
        }
        prop_assert!(credits_used.values().all(|u| *u <= 100));
    }
}
