//! Quota arithmetic as properties: consumption never exceeds the limit, and
//! what is refused is exactly what would exceed it.

use billd_core::event::SubscriptionStatus;
use billd_core::{check_consume, entitlements, usage_key, Catalog, ConsumeError, Usage};
use proptest::prelude::*;

use crate::support::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn consumption_is_allowed_exactly_when_it_stays_within_the_limit(
        pro in any::<bool>(),
        used in 0_u64..40,
        amount in 1_u64..40,
    ) {
        let catalog = Catalog::seed();
        let plan = if pro { "pro" } else { "standard" };
        let state = fold(&catalog, &[updated("evt_1", T0, subscription(1, plan, SubscriptionStatus::Active, T0))], T0);
        let key = usage_key(&state, &catalog, &feature("generations"), T0).unwrap();
        let ent = entitlements(&state, &catalog, &Usage::new().with(key, used), T0);
        let limit = if pro { 25 } else { 10 };
        match check_consume(&ent, &feature("generations"), amount) {
            Ok(returned) => {
                prop_assert_eq!(returned, limit);
                prop_assert!(used + amount <= limit);
            }
            Err(ConsumeError::QuotaExceeded { limit: l, used: u, requested }) => {
                prop_assert_eq!((l, u, requested), (limit, used, amount));
                prop_assert!(used + amount > limit);
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
        let quota = &ent.features[&feature("generations")];
        prop_assert_eq!(quota.remaining, limit.saturating_sub(used));
        prop_assert_eq!(quota.over_limit, used > limit);
    }

    #[test]
    fn consuming_one_at_a_time_stops_exactly_at_the_limit(start in 0_u64..30) {
        let catalog = Catalog::seed();
        let state = fold(&catalog, &[updated("evt_1", T0, subscription(1, "standard", SubscriptionStatus::Active, T0))], T0);
        let key = usage_key(&state, &catalog, &feature("websites"), T0).unwrap();
        let mut used = start;
        while check_consume(&entitlements(&state, &catalog, &Usage::new().with(key.clone(), used), T0), &feature("websites"), 1).is_ok() {
            used += 1;
        }
        prop_assert_eq!(used, start.max(3));
    }
}
