//! Metered overage: consumption past the included quota is allowed up to
//! the cap while overage is open, counted as overage and reported once per
//! consume; balances are checked as properties against a model of the
//! store (the conditional update and the idempotency keys).

use std::collections::{BTreeMap, BTreeSet};

use billd_core::event::SubscriptionStatus;
use billd_core::{
    check_consume, consume_target, entitlements, Catalog, ConsumeError, CustomerId, CustomerState,
    Effect, Usage,
};
use proptest::prelude::*;

use crate::support::*;

/// The seed catalog with overage on generations: 5 more per period.
fn catalog() -> Catalog {
    let text = billd_core::catalog::SEED_CATALOG_TOML
        .replacen(
            "prices = { eur = { lookup_key = \"billd_pro_eur\", unit_amount = 1900 } }",
            "prices = { eur = { lookup_key = \"billd_pro_eur\", unit_amount = 1900 }, usd = { lookup_key = \"billd_pro_usd\", unit_amount = 2100 } }",
            1,
        )
        .replacen(
        "generations = { kind = \"metered\" }",
        "generations = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 1, cap = 5 } }",
        1,
    );
    Catalog::from_toml(&text).unwrap()
}

fn pro(status: SubscriptionStatus) -> CustomerState {
    fold(
        &catalog(),
        &[updated("evt_1", T0, subscription(1, "pro", status, T0))],
        T0 + DAY,
    )
}

const NOW: i64 = T0 + DAY;

fn customer() -> CustomerId {
    CustomerId::parse("user_1").unwrap()
}

#[test]
fn a_paying_customer_sees_included_used_and_overage_and_may_consume_up_to_the_cap() {
    let (catalog, state) = (catalog(), pro(SubscriptionStatus::Active));
    let target = consume_target(&state, &catalog, &feature("generations"), 1, NOW).unwrap();
    assert_eq!(target.limit, 25 + 5);
    let meter = target.overage.clone().unwrap();
    assert_eq!(
        (
            meter.included,
            meter.event_name.as_str(),
            meter.stripe_customer.as_str()
        ),
        (25, "billd_generations", "cus_1")
    );

    let usage = Usage::new().with(target.key.clone(), 28);
    let ent = entitlements(&state, &catalog, &usage, NOW);
    let gen = &ent.features[&feature("generations")];
    assert_eq!(
        (
            gen.included,
            gen.used,
            gen.overage_used,
            gen.overage_cap,
            gen.remaining,
            gen.over_limit
        ),
        (25, 28, 3, Some(5), 0, false)
    );
    assert_eq!(check_consume(&ent, &feature("generations"), 2), Ok(30));
    let refused = check_consume(&ent, &feature("generations"), 3).unwrap_err();
    assert_eq!(refused.code(), "overage_cap_reached");
    assert_eq!(
        refused,
        ConsumeError::OverageCapReached {
            included: 25,
            cap: 5,
            used: 28,
            requested: 3
        }
    );
    // Capacity features have no overage.
    let sites = &ent.features[&feature("websites")];
    assert_eq!((sites.overage_cap, sites.overage_used), (None, 0));
}

#[test]
fn overage_is_closed_on_free_in_a_trial_in_grace_and_for_another_currency() {
    let catalog = catalog();
    let free = consume_target(
        &CustomerState::default(),
        &catalog,
        &feature("generations"),
        1,
        NOW,
    )
    .unwrap();
    assert_eq!((free.limit, free.overage), (3, None));

    let trial = pro(SubscriptionStatus::Trialing);
    let target = consume_target(&trial, &catalog, &feature("generations"), 1, NOW).unwrap();
    assert_eq!((target.limit, target.overage), (25, None));

    let grace = pro(SubscriptionStatus::PastDue);
    let target = consume_target(&grace, &catalog, &feature("generations"), 1, NOW).unwrap();
    assert_eq!((target.limit, target.overage), (25, None));
    let ent = entitlements(&grace, &catalog, &Usage::new(), NOW);
    let refused = check_consume(&ent, &feature("generations"), 26).unwrap_err();
    assert_eq!(refused.code(), "quota_exceeded");

    let mut usd_sub = subscription(1, "pro", SubscriptionStatus::Active, T0);
    if let Some(price) = usd_sub.price.as_mut() {
        price.currency = Some(billd_core::Currency::parse("usd").unwrap());
        price.lookup_key = Some("billd_pro_usd".to_owned());
    }
    let usd = fold(&catalog, &[updated("evt_1", T0, usd_sub)], NOW);
    let target = consume_target(&usd, &catalog, &feature("generations"), 1, NOW).unwrap();
    assert_eq!((target.limit, target.overage), (25, None));
}

#[test]
fn a_consume_within_the_quota_reports_nothing_and_one_across_it_reports_its_overage_part() {
    let (catalog, state) = (catalog(), pro(SubscriptionStatus::Active));
    let meter = consume_target(&state, &catalog, &feature("generations"), 1, NOW)
        .unwrap()
        .overage
        .unwrap();
    assert_eq!(meter.event(&customer(), "k1", 25, 25, NOW), None);
    let Some(Effect::MeterEvent {
        value,
        identifier,
        dedupe_key,
        timestamp,
        ..
    }) = meter.event(&customer(), "k2", 27, 4, NOW)
    else {
        panic!("a meter event");
    };
    assert_eq!(
        (value, identifier.as_str(), dedupe_key.as_str(), timestamp),
        (2, "user_1:k2", "meter_event:user_1:k2", NOW)
    );
}

#[test]
fn a_long_identifier_is_shortened_to_stripes_bound_and_stays_distinct() {
    let long_a = "a".repeat(120);
    let long_b = format!("{}b", "a".repeat(119));
    let a = billd_core::meter_identifier("user_1", &long_a);
    let b = billd_core::meter_identifier("user_1", &long_b);
    assert!(a.len() <= 100 && b.len() <= 100);
    assert_ne!(a, b);
    assert_eq!(a, billd_core::meter_identifier("user_1", &long_a));
}

/// One request of the model: an idempotency key (from a small set, so
/// replays happen) and an amount.
fn requests() -> impl Strategy<Value = Vec<(u8, u64)>> {
    prop::collection::vec((0u8..12, 1u64..9), 1..40)
}

proptest! {
    /// The store's conditional update and idempotency keys, modelled: a
    /// new key consumes when `used + amount <= limit` and reports its
    /// overage part; a repeated key replays and writes nothing.
    #[test]
    fn included_and_overage_never_double_count_never_pass_the_cap_and_replays_report_nothing(
        requests in requests(),
    ) {
        let (catalog, state) = (catalog(), pro(SubscriptionStatus::Active));
        let mut used = 0u64;
        let mut answers: BTreeMap<String, u64> = BTreeMap::new();
        let mut reported = 0u64;
        let mut identifiers = BTreeSet::new();
        for (key, amount) in requests {
            let key = format!("k{key}");
            let target = consume_target(&state, &catalog, &feature("generations"), amount, NOW).unwrap();
            let meter = target.overage.clone().unwrap();
            if let Some(first) = answers.get(&key) {
                // A replay answers the first answer and writes nothing.
                prop_assert!(*first <= target.limit);
                continue;
            }
            let ent = entitlements(&state, &catalog, &Usage::new().with(target.key.clone(), used), NOW);
            let decided = check_consume(&ent, &feature("generations"), amount);
            if used + amount > target.limit {
                prop_assert_eq!(decided.unwrap_err().code(), "overage_cap_reached");
                continue;
            }
            prop_assert_eq!(decided, Ok(target.limit));
            used += amount;
            answers.insert(key.clone(), used);
            if let Some(Effect::MeterEvent { value, identifier, .. }) =
                meter.event(&customer(), &key, used, amount, NOW)
            {
                prop_assert!(value > 0 && value <= amount);
                prop_assert!(identifiers.insert(identifier));
                reported += value;
            }
            let ent = entitlements(&state, &catalog, &Usage::new().with(target.key.clone(), used), NOW);
            let gen = &ent.features[&feature("generations")];
            // Nothing negative, nothing counted twice, the cap holds.
            prop_assert_eq!(gen.used, used);
            prop_assert_eq!(gen.overage_used, reported);
            prop_assert_eq!(gen.used - gen.overage_used, used.min(gen.included));
            prop_assert!(gen.overage_used <= gen.overage_cap.unwrap());
            prop_assert!(!gen.over_limit);
        }
    }
}
