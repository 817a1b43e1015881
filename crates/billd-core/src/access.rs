//! Access policy, entitlements and quota arithmetic.
//!
//! | status | access |
//! | --- | --- |
//! | active, trialing | the plan's limits (`paid`) |
//! | past_due | the plan's limits until `past_due_since + grace` (`grace`), then `blocked` |
//! | incomplete, incomplete_expired, unpaid, canceled, paused, none | the free plan (`free`) |
//! | any, with an open dispute | `frozen` until the dispute closes |
//!
//! A subscription whose Stripe customer was deleted, or whose paid access
//! was revoked (lost dispute, full refund under the default policy), gives
//! the free plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, DowngradePolicy, FeatureKind, FeatureName, Overage, Plan, PlanName};
use crate::event::SubscriptionStatus;
use crate::ids::InvoiceId;
use crate::state::{resolve_plan, CustomerState, SubscriptionState};

/// What a customer may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// The paid plan's limits.
    Paid,
    /// The paid plan's limits while a failed payment is retried.
    Grace,
    /// The free plan's limits.
    Free,
    /// Nothing: the grace period ran out.
    Blocked,
    /// Nothing: a dispute is open.
    Frozen,
}

impl Access {
    /// Consumption is possible at all.
    pub fn allows_consumption(self) -> bool {
        matches!(self, Access::Paid | Access::Grace | Access::Free)
    }
}

/// The access decision with what it was derived from.
#[derive(Debug, Clone)]
pub struct AccessView<'a> {
    /// The decision.
    pub access: Access,
    /// The plan whose limits apply (or would apply, when blocked/frozen).
    pub plan: &'a Plan,
    /// The subscription that decided it.
    pub subscription: Option<&'a SubscriptionState>,
    /// End of the grace period, for `past_due`.
    pub grace_until: Option<i64>,
    /// The seats `plan`'s per-seat limits are multiplied by: the
    /// subscription item's quantity on a plan with seats, else 1.
    pub seats: u64,
}

/// Decides access at `now`.
pub fn access_at<'a>(state: &'a CustomerState, catalog: &'a Catalog, now: i64) -> AccessView<'a> {
    let free = catalog.free_plan();
    let subscription = state.current_subscription();
    let frozen = state.has_open_dispute();
    let Some(sub) = subscription else {
        return AccessView {
            access: if frozen { Access::Frozen } else { Access::Free },
            plan: free,
            subscription: None,
            grace_until: None,
            seats: 1,
        };
    };
    let customer_deleted = state
        .stripe_customers
        .get(&sub.snapshot.customer)
        .is_some_and(|link| link.deleted);
    let paid_plan = resolve_plan(catalog, &sub.snapshot).unwrap_or(free);
    let grants_paid = sub.is_live() && !customer_deleted && !state.is_revoked(sub, catalog);
    let (access, plan, grace_until) = if !grants_paid {
        (Access::Free, free, None)
    } else {
        match sub.snapshot.status {
            SubscriptionStatus::Active | SubscriptionStatus::Trialing => {
                (Access::Paid, paid_plan, None)
            }
            SubscriptionStatus::PastDue => {
                let since = sub.past_due_since.unwrap_or(sub.stamp.created);
                let until = since.saturating_add(catalog.grace_period_secs());
                let access = if now < until {
                    Access::Grace
                } else {
                    Access::Blocked
                };
                (access, paid_plan, Some(until))
            }
            _ => (Access::Free, free, None),
        }
    };
    AccessView {
        access: if frozen { Access::Frozen } else { access },
        plan,
        subscription: Some(sub),
        grace_until,
        seats: plan.seats_of(sub.snapshot.quantity),
    }
}

/// Which counter a feature's usage is kept in.
///
/// Metered usage is keyed by the start of the billing period, so a renewal
/// (a new period start) starts a fresh counter whatever order the renewal
/// and the consumptions are recorded in; capacity usage has one counter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    /// The feature.
    pub feature: FeatureName,
    /// The period start for metered features; none for capacity.
    pub period_start: Option<i64>,
}

/// Usage counters as the store has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    counters: BTreeMap<UsageKey, u64>,
    /// Units consumed from each credit pack, by payment intent.
    credits_used: BTreeMap<String, u64>,
}

impl Usage {
    /// No usage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a counter.
    pub fn set(&mut self, key: UsageKey, used: u64) {
        self.counters.insert(key, used);
    }

    /// Sets a counter, builder style.
    pub fn with(mut self, key: UsageKey, used: u64) -> Self {
        self.set(key, used);
        self
    }

    /// A counter's value (0 when never used).
    pub fn used(&self, key: &UsageKey) -> u64 {
        self.counters.get(key).copied().unwrap_or(0)
    }

    /// Sets what was consumed from the credit pack of `payment`.
    pub fn set_credits_used(&mut self, payment: &str, used: u64) {
        self.credits_used.insert(payment.to_owned(), used);
    }

    /// What was consumed from the credit pack of `payment` (0 when nothing).
    pub fn credits_used(&self, payment: &str) -> u64 {
        self.credits_used.get(payment).copied().unwrap_or(0)
    }
}

/// A metered billing period `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Inclusive start, unix seconds.
    pub start: i64,
    /// Exclusive end, unix seconds.
    pub end: i64,
}

/// The period metered usage counts against at `now`: the current
/// subscription's item period while it is live, else the UTC calendar month.
pub fn usage_period(state: &CustomerState, now: i64) -> Period {
    let from_subscription = state.current_subscription().and_then(|sub| {
        let s = &sub.snapshot;
        match (sub.is_live(), s.current_period_start, s.current_period_end) {
            (true, Some(start), Some(end)) if start < end => Some(Period { start, end }),
            _ => None,
        }
    });
    from_subscription.unwrap_or_else(|| calendar_month(now))
}

/// The UTC calendar month containing `now`.
pub fn calendar_month(now: i64) -> Period {
    let (year, month, _) = crate::calendar::civil_from_days(now.div_euclid(86_400));
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    Period {
        start: crate::calendar::days_from_civil(year, month, 1) * 86_400,
        end: crate::calendar::days_from_civil(next_year, next_month, 1) * 86_400,
    }
}

/// The usage counter for a feature at `now` (what the store increments).
pub fn usage_key(
    state: &CustomerState,
    catalog: &Catalog,
    feature: &FeatureName,
    now: i64,
) -> Option<UsageKey> {
    let kind = catalog.features().get(feature)?;
    Some(UsageKey {
        feature: feature.clone(),
        period_start: match kind {
            FeatureKind::Metered => Some(usage_period(state, now).start),
            FeatureKind::Capacity => None,
            // A flag has no counter.
            FeatureKind::Flag => return None,
        },
    })
}

/// Every counter entitlements read at `now` (what the store loads into [`Usage`]).
pub fn usage_keys(state: &CustomerState, catalog: &Catalog, now: i64) -> Vec<UsageKey> {
    catalog
        .features()
        .keys()
        .filter_map(|feature| usage_key(state, catalog, feature, now))
        .collect()
}

/// A payment the customer must confirm.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRequired {
    /// Always `confirm_payment` for now (3-D Secure).
    pub kind: String,
    /// The invoice.
    pub invoice: InvoiceId,
    /// Where the customer confirms (Stripe's hosted invoice page).
    pub url: Option<String>,
}

/// A discount as shown to the app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountView {
    /// The discount id.
    pub id: String,
    /// The coupon id.
    pub coupon: Option<String>,
    /// The coupon's name.
    pub name: Option<String>,
    /// Percent off in basis points (2550 = 25.5 %).
    pub percent_off_bp: Option<i64>,
    /// Amount off, formatted (`5.00 EUR`).
    pub amount_off: Option<String>,
    /// The promotion code entered.
    pub promotion_code: Option<String>,
    /// When it ends.
    pub end: Option<i64>,
}

/// One flag feature: on or off now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagEntitlement {
    /// The plan that applies turns it on, and access allows using it (not
    /// blocked or frozen).
    pub enabled: bool,
}

/// One feature's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureEntitlement {
    /// Metered or capacity.
    pub kind: FeatureKind,
    /// The limit under the plan that applies, times the seats for a
    /// per-seat feature.
    pub limit: u64,
    /// The quota included in the plan: the same as `limit`.
    #[serde(default)]
    pub included: u64,
    /// Used in the current period (metered) or live now (capacity),
    /// overage included.
    pub used: u64,
    /// What may still be consumed within the included quota (0 when
    /// blocked or frozen).
    pub remaining: u64,
    /// The part of `used` beyond `included` while overage is open (0
    /// otherwise): what the period's invoice bills.
    #[serde(default)]
    pub overage_used: u64,
    /// The most overage this period, while overage is open: a metered
    /// feature with `overage` in the catalog, on a paid plan with paid
    /// access, billed in the catalog's currency. `None` otherwise.
    #[serde(default)]
    pub overage_cap: Option<u64>,
    /// Units of credit packs left for a metered feature: consumed after
    /// the included quota and before overage, kept across renewals (0
    /// without packs).
    #[serde(default)]
    pub credits: u64,
    /// Usage exceeds the limit (and the overage cap, while overage is
    /// open), after a downgrade: nothing is deleted, consumption is blocked
    /// until usage is under it.
    pub over_limit: bool,
    /// When metered usage resets (the period end).
    pub resets_at: Option<i64>,
    /// The counter the store consumes from.
    pub usage_key: UsageKey,
}

/// The answer to "what may this customer do now?" (`GET …/entitlements`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entitlements {
    /// The plan whose limits apply.
    pub plan: PlanName,
    /// The Stripe subscription status, or `none`.
    pub status: String,
    /// paid, grace, free, blocked or frozen.
    pub access: Access,
    /// End of the grace period (past_due).
    pub grace_until: Option<i64>,
    /// End of the trial (trialing).
    pub trial_end: Option<i64>,
    /// The subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// A payment awaiting confirmation.
    pub action_required: Option<ActionRequired>,
    /// The active discount.
    pub discount: Option<DiscountView>,
    /// The seat count, when the plan that applies is sold per seat.
    #[serde(default)]
    pub seats: Option<u64>,
    /// Quotas by counted (metered or capacity) feature.
    pub features: BTreeMap<FeatureName, FeatureEntitlement>,
    /// Flag features, on or off.
    #[serde(default)]
    pub flags: BTreeMap<FeatureName, FlagEntitlement>,
}

/// Computes entitlements at `now` from the state and the usage counters.
pub fn entitlements(
    state: &CustomerState,
    catalog: &Catalog,
    usage: &Usage,
    now: i64,
) -> Entitlements {
    let view = access_at(state, catalog, now);
    let period = usage_period(state, now);
    let live_sub = view.subscription.filter(|s| s.is_live());
    // Under `at_period_end`, a paying customer who downgraded keeps the
    // metered limits of the plan the current period started on.
    let grandfathered = live_sub
        .filter(|_| catalog.downgrade_policy() == DowngradePolicy::AtPeriodEnd)
        .filter(|_| matches!(view.access, Access::Paid | Access::Grace))
        .and_then(|s| {
            let start = s.snapshot.current_period_start?;
            s.period_plans.get(&start)?.plan.as_ref()
        })
        .and_then(|name| catalog.plan(name));
    let seats = view.seats;
    let features = catalog
        .features()
        .iter()
        .filter(|(_, kind)| kind.is_counted())
        .map(|(name, kind)| {
            let key = UsageKey {
                feature: name.clone(),
                period_start: (*kind == FeatureKind::Metered).then_some(period.start),
            };
            let plan_limit = catalog.limit_for(view.plan, name, seats);
            let limit = match (kind, grandfathered) {
                (FeatureKind::Metered, Some(start_plan)) => {
                    plan_limit.max(catalog.limit_for(start_plan, name, seats))
                }
                _ => plan_limit,
            };
            let used = usage.used(&key);
            let remaining = if view.access.allows_consumption() {
                limit.saturating_sub(used)
            } else {
                0
            };
            let overage_cap = open_overage(&view, catalog, name).map(|o| o.cap);
            let balance = Balance {
                included: limit,
                cap: overage_cap.unwrap_or(0),
            };
            let entitlement = FeatureEntitlement {
                kind: *kind,
                limit,
                included: limit,
                used,
                remaining,
                overage_used: if overage_cap.is_some() {
                    balance.overage(used)
                } else {
                    0
                },
                overage_cap,
                credits: state
                    .credits
                    .balance(name, |payment| usage.credits_used(payment)),
                over_limit: used > balance.ceiling(),
                resets_at: (*kind == FeatureKind::Metered).then_some(period.end),
                usage_key: key,
            };
            (name.clone(), entitlement)
        })
        .collect();
    let flags = catalog
        .features()
        .iter()
        .filter(|(_, kind)| **kind == FeatureKind::Flag)
        .map(|(name, _)| {
            let enabled = view.plan.flag(name) && view.access.allows_consumption();
            (name.clone(), FlagEntitlement { enabled })
        })
        .collect();
    let action_required = state.pending_action().map(|(id, inv)| ActionRequired {
        kind: "confirm_payment".to_owned(),
        invoice: id.clone(),
        url: inv
            .action_required
            .as_ref()
            .and_then(|l| l.value.clone())
            .or_else(|| inv.invoice.value.hosted_invoice_url.clone()),
    });
    let discount = state
        .discounts
        .values()
        .filter(|d| !d.deleted && d.discount.value.end.is_none_or(|end| end > now))
        // A discount on a subscription applies only while that subscription lives.
        .filter(|d| {
            d.discount
                .value
                .subscription
                .as_ref()
                .is_none_or(|id| live_sub.is_some_and(|s| &s.snapshot.id == id))
        })
        .max_by_key(|d| (d.discount.value.start, &d.discount.value.id))
        .map(|d| {
            let v = &d.discount.value;
            DiscountView {
                id: v.id.to_string(),
                coupon: v.coupon.as_ref().map(|c| c.id.clone()),
                name: v.coupon.as_ref().and_then(|c| c.name.clone()),
                percent_off_bp: v.coupon.as_ref().and_then(|c| c.percent_off_bp),
                amount_off: v
                    .coupon
                    .as_ref()
                    .and_then(|c| c.amount_off.as_ref().map(ToString::to_string)),
                promotion_code: v.promotion_code.clone(),
                end: v.end,
            }
        });
    Entitlements {
        plan: view.plan.name.clone(),
        status: view.subscription.map_or_else(
            || "none".to_owned(),
            |s| s.snapshot.status.as_str().to_owned(),
        ),
        access: view.access,
        grace_until: view.grace_until,
        trial_end: live_sub
            .filter(|s| s.snapshot.status == SubscriptionStatus::Trialing)
            .and_then(|s| s.snapshot.trial_end),
        cancel_at_period_end: live_sub.is_some_and(|s| s.snapshot.cancel_at_period_end),
        action_required,
        discount,
        seats: view.plan.seats.map(|_| seats),
        features,
        flags,
    }
}

/// The overage of `feature` open to the customer now: the catalog sells
/// overage for it, the plan that applies is paid, access is `paid` (a
/// customer in grace, on free, blocked or frozen gets none), the
/// subscription is `active` (a trial is not charged for usage) and the
/// subscription's price is in the catalog's currency and at the overage
/// price's interval (the metered price can be an item of it).
pub fn open_overage<'c>(
    view: &AccessView<'_>,
    catalog: &'c Catalog,
    feature: &FeatureName,
) -> Option<&'c Overage> {
    let overage = catalog.overage(feature)?;
    let sub = view.subscription?;
    let price = sub.snapshot.price.as_ref()?;
    // The plan's price tells the subscription's currency and interval; a
    // price outside the catalog (a plan named by metadata) tells neither.
    let slot = catalog.slot_for_price(&price.id, price.lookup_key.as_deref())?;
    let billed_with_it =
        slot.currency == catalog.default_currency() && slot.interval == overage.interval;
    // A trial bills nothing, metered usage included: no overage in it.
    let active = sub.snapshot.status == SubscriptionStatus::Active;
    (view.access == Access::Paid && view.plan.is_paid() && active && billed_with_it)
        .then_some(overage)
}

/// A metered counter's balance: the included quota, then up to `cap` of
/// overage. The arithmetic of included and overage units, in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    /// The plan's included quota.
    pub included: u64,
    /// The most overage per period (0: none).
    pub cap: u64,
}

impl Balance {
    /// The most the counter may reach: included plus the cap.
    pub fn ceiling(self) -> u64 {
        self.included.saturating_add(self.cap)
    }

    /// The overage part of a counter at `used`.
    pub fn overage(self, used: u64) -> u64 {
        used.saturating_sub(self.included)
    }

    /// The overage a consume of `amount` that took the counter to
    /// `used_after` added: the units of it beyond the included quota.
    pub fn overage_added(self, used_after: u64, amount: u64) -> u64 {
        self.overage(used_after).min(amount)
    }
}

/// Why a consumption is refused. [`ConsumeError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsumeError {
    /// The amount is zero.
    #[error("amount must be at least 1")]
    InvalidAmount,
    /// The feature is not in the catalog.
    #[error("unknown feature")]
    UnknownFeature,
    /// Access is blocked or frozen.
    #[error("no access: {0:?}")]
    NoAccess(Access),
    /// The consumption would pass the overage cap (overage open).
    #[error("overage cap reached: {used} used of {included} included plus {cap} overage, {requested} requested")]
    OverageCapReached {
        /// The included quota.
        included: u64,
        /// The overage cap.
        cap: u64,
        /// Used so far (overage included).
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// The consumption would exceed the limit.
    #[error("quota exceeded: {used} of {limit} used, {requested} requested")]
    QuotaExceeded {
        /// The limit.
        limit: u64,
        /// Used so far.
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
}

impl ConsumeError {
    /// A stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            ConsumeError::InvalidAmount => "invalid_amount",
            ConsumeError::UnknownFeature => "unknown_feature",
            ConsumeError::NoAccess(_) => "no_access",
            ConsumeError::QuotaExceeded { .. } => "quota_exceeded",
            ConsumeError::OverageCapReached { .. } => "overage_cap_reached",
        }
    }
}

/// Checks a consumption against the entitlements and returns the limit the
/// store's conditional update must enforce (`used + amount <= limit`): the
/// included quota plus the overage cap while overage is open.
pub fn check_consume(
    ent: &Entitlements,
    feature: &FeatureName,
    amount: u64,
) -> Result<u64, ConsumeError> {
    if amount == 0 {
        return Err(ConsumeError::InvalidAmount);
    }
    let quota = ent
        .features
        .get(feature)
        .ok_or(ConsumeError::UnknownFeature)?;
    if !ent.access.allows_consumption() {
        return Err(ConsumeError::NoAccess(ent.access));
    }
    let balance = Balance {
        included: quota.limit,
        cap: quota.overage_cap.unwrap_or(0),
    };
    let ceiling = balance.ceiling();
    let passes = quota
        .used
        .checked_add(amount)
        .is_none_or(|total| total > ceiling);
    if passes {
        if let Some(cap) = quota.overage_cap {
            return Err(ConsumeError::OverageCapReached {
                included: quota.limit,
                cap,
                used: quota.used,
                requested: amount,
            });
        }
        return Err(ConsumeError::QuotaExceeded {
            limit: quota.limit,
            used: quota.used,
            requested: amount,
        });
    }
    Ok(ceiling)
}
