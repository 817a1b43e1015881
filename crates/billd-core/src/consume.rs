//! What one consume must enforce, decided from the customer's state alone.
//!
//! The usage endpoint does not read the counters before consuming: the
//! store's one conditional update (`used + amount <= limit`) is the check
//! that counts, so only the counter and the limit are needed, and both
//! follow from the state, the catalog and the time.

use serde::{Deserialize, Serialize};

use crate::access::{
    access_at, check_consume, entitlements, open_overage, Access, Balance, ConsumeError, Usage,
    UsageKey,
};
use crate::apply::{meter_identifier, Effect};
use crate::catalog::{Catalog, FeatureName};
use crate::credits::CreditSource;
use crate::ids::{CustomerId, StripeCustomerId};
use crate::state::CustomerState;

/// Where a consume's overage is reported: the included quota of its
/// counter, the meter and the Stripe customer billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverageMeter {
    /// The included quota; counter units past it are overage.
    pub included: u64,
    /// The meter's `event_name`.
    pub event_name: String,
    /// The Stripe customer whose subscription bills the overage.
    pub stripe_customer: StripeCustomerId,
}

impl OverageMeter {
    /// The meter event of a consume of `amount` under `idempotency_key`
    /// that took the counter to `used_after` at `now`, or `None` when it
    /// stayed within the included quota. One per consume (the dedupe key
    /// and the identifier are the consume's key), so a replayed consume,
    /// which writes nothing, reports nothing more.
    pub fn event(
        &self,
        customer: &CustomerId,
        idempotency_key: &str,
        used_after: u64,
        amount: u64,
        now: i64,
    ) -> Option<Effect> {
        let balance = Balance {
            included: self.included,
            cap: 0,
        };
        let value = balance.overage_added(used_after, amount);
        (value > 0).then(|| {
            let identifier = meter_identifier(customer.as_str(), idempotency_key);
            Effect::MeterEvent {
                event_name: self.event_name.clone(),
                stripe_customer: self.stripe_customer.clone(),
                value,
                dedupe_key: format!("meter_event:{identifier}"),
                identifier,
                timestamp: now,
            }
        })
    }
}

/// The credit packs a consume may take from, past the included quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditTarget {
    /// The included quota: the counter's units up to it are included,
    /// those past it overage.
    pub included: u64,
    /// The live packs of the feature, first bought first.
    pub sources: Vec<CreditSource>,
}

/// The counter a consume changes and the limit the store enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeTarget {
    /// The counter (`FeatureEntitlement::usage_key`).
    pub key: UsageKey,
    /// The limit of the store's conditional update: the plan's limit, or 0
    /// when access forbids consuming (nothing new is admitted, but the
    /// stored answer of a repeated idempotency key is still found).
    pub limit: u64,
    /// Why nothing new may be consumed, when access forbids it.
    pub refused: Option<Access>,
    /// Where the overage goes, while overage is open: the limit is then
    /// the included quota plus the cap, and a refusal is
    /// `overage_cap_reached`.
    pub overage: Option<OverageMeter>,
    /// The credit packs to take from once the included quota is used, when
    /// the customer has live packs of the feature and may consume. The
    /// counter then counts the included and overage units only.
    pub credits: Option<CreditTarget>,
}

/// The target of consuming `amount` of `feature` at `now`: the same counter
/// and limit [`entitlements`] shows, without reading usage. An amount over
/// the limit is not refused here: the store answers it, so that a repeated
/// key still gets its first answer.
pub fn consume_target(
    state: &CustomerState,
    catalog: &Catalog,
    feature: &FeatureName,
    amount: u64,
    now: i64,
) -> Result<ConsumeTarget, ConsumeError> {
    let ent = entitlements(state, catalog, &Usage::default(), now);
    let quota = ent
        .features
        .get(feature)
        .ok_or(ConsumeError::UnknownFeature)?;
    let key = quota.usage_key.clone();
    let view = access_at(state, catalog, now);
    let overage = open_overage(&view, catalog, feature)
        .zip(view.subscription)
        .map(|(overage, sub)| OverageMeter {
            included: quota.limit,
            event_name: overage.meter_event_name.clone(),
            stripe_customer: sub.snapshot.customer.clone(),
        });
    let sources = state.credits.sources(feature);
    let credits = (!sources.is_empty()).then_some(CreditTarget {
        included: quota.limit,
        sources,
    });
    match check_consume(&ent, feature, amount) {
        Ok(limit) | Err(ConsumeError::QuotaExceeded { limit, .. }) => Ok(ConsumeTarget {
            key,
            limit,
            refused: None,
            overage,
            credits,
        }),
        Err(ConsumeError::OverageCapReached { included, cap, .. }) => Ok(ConsumeTarget {
            key,
            limit: included.saturating_add(cap),
            refused: None,
            overage,
            credits,
        }),
        Err(ConsumeError::NoAccess(access)) => Ok(ConsumeTarget {
            key,
            limit: 0,
            refused: Some(access),
            overage: None,
            credits: None,
        }),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use crate::access::calendar_month;

    const NOW: i64 = 1_800_000_000;

    fn catalog() -> Catalog {
        Catalog::from_toml(
            r#"
currency = "eur"

[features]
generations = { kind = "metered" }
websites = { kind = "capacity" }

[plans.free]
limits = { generations = 3, websites = 1 }
"#,
        )
        .unwrap()
    }

    fn feature(raw: &str) -> FeatureName {
        FeatureName::parse(raw).unwrap()
    }

    #[test]
    fn a_free_customer_consumes_the_free_plans_metered_counter_of_this_month() {
        let target = consume_target(
            &CustomerState::default(),
            &catalog(),
            &feature("generations"),
            1,
            NOW,
        )
        .unwrap();

        assert_eq!(
            target,
            ConsumeTarget {
                key: UsageKey {
                    feature: feature("generations"),
                    period_start: Some(calendar_month(NOW).start),
                },
                limit: 3,
                refused: None,
                overage: None,
                credits: None,
            }
        );
    }

    #[test]
    fn the_target_is_the_counter_and_limit_the_entitlements_show() {
        let (state, catalog) = (CustomerState::default(), catalog());
        let ent = entitlements(&state, &catalog, &Usage::default(), NOW);

        for (name, quota) in &ent.features {
            let target = consume_target(&state, &catalog, name, 1, NOW).unwrap();
            assert_eq!((&target.key, target.limit), (&quota.usage_key, quota.limit));
        }
    }

    #[test]
    fn an_amount_over_the_limit_is_left_to_the_store_to_refuse() {
        let target = consume_target(
            &CustomerState::default(),
            &catalog(),
            &feature("websites"),
            5,
            NOW,
        )
        .unwrap();

        assert_eq!((target.limit, target.refused), (1, None));
    }

    #[test]
    fn an_unknown_feature_or_a_zero_amount_is_refused() {
        let state = CustomerState::default();
        assert_eq!(
            consume_target(&state, &catalog(), &feature("nope"), 1, NOW),
            Err(ConsumeError::UnknownFeature)
        );
        assert_eq!(
            consume_target(&state, &catalog(), &feature("websites"), 0, NOW),
            Err(ConsumeError::InvalidAmount)
        );
    }
}
