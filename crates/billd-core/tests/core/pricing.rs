//! Pricing rules as properties: per-seat limits, seat changes against the
//! capacity in use, flags in the entitlements, and the plan picker's
//! eligibility (interval switches, upgrades and downgrades).

use billd_core::event::{Subscription, SubscriptionPrice, SubscriptionStatus};
use billd_core::{
    check_seat_change, checkout_seats, eligibility, entitlements, seats_after_change, usage_key,
    Catalog, Currency, Eligibility, Interval, PlanName, PriceId, SeatsError, Subscribed,
    Unavailable, Usage,
};
use proptest::prelude::*;

use crate::support::*;

/// The issue's example catalog without the parts of later slices
/// (overage, credit packs), plus a solo plan sold monthly only.
pub const TEAM_CATALOG: &str = r#"
currency = "eur"

[features]
generations   = { kind = "metered" }
websites      = { kind = "capacity", per_seat = true }
projects      = { kind = "capacity", per_seat = false }
custom_domain = { kind = "flag" }

[plans.free]
limits = { generations = 3, websites = 1, projects = 1, custom_domain = false }

[plans.solo]
limits = { generations = 50, websites = 5, projects = 3, custom_domain = false }
prices = { eur = { lookup_key = "solo_eur", unit_amount = 900 } }

[plans.team]
limits     = { generations = 100, websites = 20, projects = 10, custom_domain = true }
seats      = { min = 2, max = 50 }
trial_days = 14

[plans.team.prices.eur]
month = { lookup_key = "team_eur_month", unit_amount = 1500 }
year  = { lookup_key = "team_eur_year",  unit_amount = 15000 }

[plans.team.prices.usd]
month = { lookup_key = "team_usd_month", unit_amount = 1600 }
"#;

fn catalog() -> Catalog {
    Catalog::from_toml(TEAM_CATALOG).unwrap()
}

fn plan(name: &str) -> PlanName {
    PlanName::parse(name).unwrap()
}

/// An active subscription to `lookup_key`'s price with `quantity` seats.
fn team_subscription(lookup_key: &str, quantity: u64) -> Subscription {
    let mut sub = subscription(1, "team", SubscriptionStatus::Active, T0);
    sub.price = Some(SubscriptionPrice {
        id: PriceId::parse(&format!("price_{lookup_key}")).unwrap(),
        lookup_key: Some(lookup_key.to_owned()),
        currency: Some(eur()),
        unit_amount: None,
    });
    sub.quantity = Some(quantity);
    sub
}

fn subscribed(plan_name: &str, interval: Interval, seats: u64) -> Subscribed {
    Subscribed {
        plan: plan(plan_name),
        interval: Some(interval),
        currency: eur(),
        seats,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn per_seat_limits_are_the_plan_limit_times_the_seats_and_others_are_not(
        seats in 2_u64..=50,
        yearly in any::<bool>(),
    ) {
        let catalog = catalog();
        let key = if yearly { "team_eur_year" } else { "team_eur_month" };
        let state = fold(&catalog, &[updated("evt_1", T0, team_subscription(key, seats))], T0);
        let ent = entitlements(&state, &catalog, &Usage::new(), T0);

        prop_assert_eq!(ent.plan.as_str(), "team");
        prop_assert_eq!(ent.seats, Some(seats));
        prop_assert_eq!(ent.features[&feature("websites")].limit, 20 * seats);
        prop_assert_eq!(ent.features[&feature("projects")].limit, 10);
        prop_assert_eq!(ent.features[&feature("generations")].limit, 100);
        prop_assert!(ent.flags[&feature("custom_domain")].enabled);
        prop_assert!(!ent.features.contains_key(&feature("custom_domain")));
    }

    #[test]
    fn a_seat_change_is_refused_exactly_when_live_capacity_exceeds_the_new_limit(
        current in 2_u64..=50,
        seats in 0_u64..=60,
        websites_used in 0_u64..=1000,
        projects_used in 0_u64..=15,
    ) {
        let catalog = catalog();
        let team = catalog.plan(&plan("team")).unwrap();
        let state = fold(&catalog, &[updated("evt_1", T0, team_subscription("team_eur_month", current))], T0);
        let usage = Usage::new()
            .with(usage_key(&state, &catalog, &feature("websites"), T0).unwrap(), websites_used)
            .with(usage_key(&state, &catalog, &feature("projects"), T0).unwrap(), projects_used);
        let ent = entitlements(&state, &catalog, &usage, T0);

        let verdict = check_seat_change(&catalog, team, current, seats, &ent);

        if !(2..=50).contains(&seats) {
            let is_out_of_range = matches!(verdict, Err(SeatsError::OutOfRange { .. }));
            prop_assert!(is_out_of_range, "{:?}", verdict);
        } else if seats == current {
            prop_assert_eq!(verdict, Err(SeatsError::Unchanged(seats)));
        } else if websites_used > 20 * seats {
            // Only the per-seat capacity feature counts: `projects` is not
            // per seat, so its usage never blocks a seat change.
            prop_assert_eq!(verdict, Err(SeatsError::InUse {
                feature: feature("websites"),
                used: websites_used,
                limit: 20 * seats,
                seats,
            }));
        } else {
            prop_assert_eq!(verdict, Ok(()));
        }
    }

    #[test]
    fn a_plan_change_keeps_the_seats_within_the_targets_range(
        current in 1_u64..=80,
        requested in proptest::option::of(0_u64..=80),
    ) {
        let catalog = catalog();
        let team = catalog.plan(&plan("team")).unwrap();
        let solo = catalog.plan(&plan("solo")).unwrap();

        match (requested, seats_after_change(team, current, requested)) {
            (None, Ok(seats)) => prop_assert_eq!(seats, current.clamp(2, 50)),
            (Some(n), Ok(seats)) => prop_assert!(n == seats && (2..=50).contains(&n)),
            (Some(n), Err(e)) => {
                prop_assert!(!(2..=50).contains(&n));
                prop_assert_eq!(e.code(), "seats_out_of_range");
            }
            (None, Err(e)) => prop_assert!(false, "{e}"),
        }
        match (requested, seats_after_change(solo, current, requested)) {
            (None | Some(1), Ok(seats)) => prop_assert_eq!(seats, 1),
            (Some(_), Err(e)) => prop_assert_eq!(e.code(), "seats_not_available"),
            (other, verdict) => prop_assert!(false, "{other:?} {verdict:?}"),
        }
    }

    #[test]
    fn the_current_plan_at_the_other_interval_is_an_interval_switch(
        seats in 2_u64..=50,
        yearly in any::<bool>(),
    ) {
        let catalog = catalog();
        let team = catalog.plan(&plan("team")).unwrap();
        let (now, other) = if yearly {
            (Interval::Year, Interval::Month)
        } else {
            (Interval::Month, Interval::Year)
        };
        let current = subscribed("team", now, seats);

        let same = eligibility(&catalog, team, Some(now), Some(&current), &eur());
        let switch = eligibility(&catalog, team, Some(other), Some(&current), &eur());

        prop_assert_eq!(same.eligibility, Eligibility::Current);
        prop_assert_eq!(switch.eligibility, Eligibility::SwitchInterval);
        prop_assert_eq!(switch.seats, seats);
    }

    #[test]
    fn upgrade_and_downgrade_follow_the_yearly_amount_for_the_seats_kept(
        seats in 1_u64..=50,
        from_team in any::<bool>(),
        team_interval in prop_oneof![Just(Interval::Month), Just(Interval::Year)],
    ) {
        let catalog = catalog();
        let team = catalog.plan(&plan("team")).unwrap();
        let solo = catalog.plan(&plan("solo")).unwrap();
        let team_seats = seats.clamp(2, 50);
        let team_yearly = match team_interval {
            Interval::Month => 1500 * 12,
            Interval::Year => 15000,
        } * i64::try_from(team_seats).unwrap();
        let solo_yearly = 900 * 12;

        let (choice, expected) = if from_team {
            let current = subscribed("team", team_interval, team_seats);
            let choice = eligibility(&catalog, solo, Some(Interval::Month), Some(&current), &eur());
            (choice, if solo_yearly > team_yearly { Eligibility::Upgrade } else { Eligibility::Downgrade })
        } else {
            let current = subscribed("solo", Interval::Month, 1);
            let choice = eligibility(&catalog, team, Some(team_interval), Some(&current), &eur());
            (choice, if team_yearly > solo_yearly { Eligibility::Upgrade } else { Eligibility::Downgrade })
        };

        prop_assert_eq!(choice.eligibility, expected);
        prop_assert_eq!(choice.reason, None);
    }
}

#[test]
fn a_flag_is_off_when_the_plan_has_it_off_or_access_is_frozen_or_blocked() {
    let catalog = catalog();
    let free = entitlements(&Default::default(), &catalog, &Usage::new(), T0);
    assert!(!free.flags[&feature("custom_domain")].enabled);
    assert_eq!(free.seats, None);

    let mut past_due = team_subscription("team_eur_month", 3);
    past_due.status = SubscriptionStatus::PastDue;
    let state = fold(&catalog, &[updated("evt_1", T0, past_due)], T0);
    let in_grace = entitlements(&state, &catalog, &Usage::new(), T0);
    let blocked = entitlements(&state, &catalog, &Usage::new(), T0 + 30 * DAY);
    assert!(in_grace.flags[&feature("custom_domain")].enabled);
    assert!(!blocked.flags[&feature("custom_domain")].enabled);
}

#[test]
fn the_free_plan_and_missing_currencies_are_unavailable_with_a_reason() {
    let catalog = catalog();
    let free = catalog.free_plan();
    let team = catalog.plan(&plan("team")).unwrap();
    let solo = catalog.plan(&plan("solo")).unwrap();
    let usd = Currency::parse("usd").unwrap();
    let on_team = subscribed("team", Interval::Month, 3);

    let cases = [
        (
            eligibility(&catalog, free, None, None, &eur()),
            Eligibility::Current,
            None,
        ),
        (
            eligibility(&catalog, free, None, Some(&on_team), &eur()),
            Eligibility::Unavailable,
            Some(Unavailable::CancelToDowngrade),
        ),
        (
            eligibility(&catalog, team, Some(Interval::Year), None, &eur()),
            Eligibility::Upgrade,
            None,
        ),
        (
            eligibility(&catalog, team, Some(Interval::Year), None, &usd),
            Eligibility::Unavailable,
            Some(Unavailable::NoPriceInCurrency),
        ),
        (
            eligibility(&catalog, solo, Some(Interval::Year), Some(&on_team), &eur()),
            Eligibility::Unavailable,
            Some(Unavailable::NoPriceInCurrency),
        ),
    ];
    for (choice, eligibility, reason) in cases {
        assert_eq!((choice.eligibility, choice.reason), (eligibility, reason));
    }
    // From free, a checkout buys the plan's fewest seats.
    assert_eq!(
        eligibility(&catalog, team, Some(Interval::Month), None, &eur()).seats,
        2
    );
}

#[test]
fn a_checkout_buys_the_seats_asked_for_in_range_else_the_minimum() {
    let catalog = catalog();
    let team = catalog.plan(&plan("team")).unwrap();
    let solo = catalog.plan(&plan("solo")).unwrap();

    assert_eq!(checkout_seats(team, None), Ok(2));
    assert_eq!(checkout_seats(team, Some(7)), Ok(7));
    assert_eq!(
        checkout_seats(team, Some(51)).unwrap_err().code(),
        "seats_out_of_range"
    );
    assert_eq!(
        checkout_seats(team, Some(1)).unwrap_err().code(),
        "seats_out_of_range"
    );
    assert_eq!(checkout_seats(solo, None), Ok(1));
    assert_eq!(checkout_seats(solo, Some(1)), Ok(1));
    assert_eq!(
        checkout_seats(solo, Some(2)).unwrap_err().code(),
        "seats_not_available"
    );
}
