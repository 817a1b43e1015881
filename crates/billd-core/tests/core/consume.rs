//! `consume_target`: the counter and limit a consume enforces agree with the
//! entitlements for every access, without reading usage.

use billd_core::event::{DisputeChange, DisputeStatus, SubscriptionStatus};
use billd_core::{
    apply, check_consume, consume_target, entitlements, Access, Catalog, ConsumeError, Usage,
};
use proptest::prelude::*;

use crate::support::*;

#[test]
fn a_frozen_customer_gets_limit_zero_and_the_reason() {
    let catalog = Catalog::seed();
    let active = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    let frozen = apply(
        &active,
        &dispute_event(
            "evt_2",
            T0 + 1,
            DisputeChange::Created,
            dispute(1, DisputeStatus::NeedsResponse),
        ),
        &catalog,
        T0 + 1,
    )
    .state;

    let target = consume_target(&frozen, &catalog, &feature("generations"), 1, T0 + 1).unwrap();

    let ent = entitlements(&frozen, &catalog, &Usage::new(), T0 + 1);
    assert_eq!(target.refused, Some(Access::Frozen));
    assert_eq!(target.limit, 0);
    assert_eq!(target.key, ent.features[&feature("generations")].usage_key);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_target_matches_the_entitlements_whatever_the_plan_status_and_time(
        pro in any::<bool>(),
        status in prop::sample::select(vec![
            SubscriptionStatus::Active,
            SubscriptionStatus::Trialing,
            SubscriptionStatus::PastDue,
            SubscriptionStatus::Unpaid,
            SubscriptionStatus::Canceled,
            SubscriptionStatus::Incomplete,
        ]),
        later_days in 0_i64..40,
        capacity in any::<bool>(),
        amount in 1_u64..40,
    ) {
        let catalog = Catalog::seed();
        let plan = if pro { "pro" } else { "standard" };
        let state = fold(&catalog, &[updated("evt_1", T0, subscription(1, plan, status, T0))], T0);
        let now = T0 + later_days * DAY;
        let name = feature(if capacity { "websites" } else { "generations" });

        let target = consume_target(&state, &catalog, &name, amount, now).unwrap();

        let ent = entitlements(&state, &catalog, &Usage::new(), now);
        let quota = &ent.features[&name];
        prop_assert_eq!(&target.key, &quota.usage_key);
        match check_consume(&ent, &name, amount) {
            Ok(limit) | Err(ConsumeError::QuotaExceeded { limit, .. }) => {
                prop_assert_eq!((target.limit, target.refused), (limit, None));
            }
            Err(ConsumeError::NoAccess(access)) => {
                prop_assert_eq!((target.limit, target.refused), (0, Some(access)));
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }
}
