//! The pricing rules of a subscription: how many seats a checkout or a plan
//! change buys, whether a seat change leaves room for the capacity in use,
//! and how each plan and interval of the catalog stands for a customer
//! (the plan picker's eligibility).

use serde::{Deserialize, Serialize};

use crate::access::Entitlements;
use crate::catalog::{Catalog, FeatureKind, FeatureName, Interval, Plan, PlanName};
use crate::money::Currency;

/// Why a seat count is refused. [`SeatsError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeatsError {
    /// The plan is not sold per seat, and more than one seat was asked for.
    #[error("plan {plan} is not sold per seat")]
    NotPerSeat {
        /// The plan.
        plan: PlanName,
    },
    /// The count lies outside the plan's `seats = { min, max }`.
    #[error("plan {plan} is sold with {min} to {max} seats, not {requested}")]
    OutOfRange {
        /// The plan.
        plan: PlanName,
        /// The fewest seats.
        min: u64,
        /// The most seats.
        max: u64,
        /// The count asked for.
        requested: u64,
    },
    /// Fewer seats would put a per-seat capacity feature under what is in
    /// use (nothing is deleted for the customer: they release first).
    #[error("{feature} has {used} in use, more than {limit} allowed with {seats} seats")]
    InUse {
        /// The feature.
        feature: FeatureName,
        /// Live now.
        used: u64,
        /// The limit with the new seat count.
        limit: u64,
        /// The seat count asked for.
        seats: u64,
    },
    /// The subscription has this seat count already.
    #[error("the subscription has {0} seats already")]
    Unchanged(u64),
}

impl SeatsError {
    /// A stable snake_case code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            SeatsError::NotPerSeat { .. } => "seats_not_available",
            SeatsError::OutOfRange { .. } => "seats_out_of_range",
            SeatsError::InUse { .. } => "seats_in_use",
            SeatsError::Unchanged(_) => "same_seats",
        }
    }
}

fn in_range(plan: &Plan, seats: u64) -> Result<u64, SeatsError> {
    match plan.seats {
        Some(range) if range.contains(seats) => Ok(seats),
        Some(range) => Err(SeatsError::OutOfRange {
            plan: plan.name.clone(),
            min: range.min,
            max: range.max,
            requested: seats,
        }),
        None if seats == 1 => Ok(1),
        None => Err(SeatsError::NotPerSeat {
            plan: plan.name.clone(),
        }),
    }
}

/// The seats a checkout buys: the count asked for (in the plan's range;
/// only 1 on a plan without seats), else the plan's minimum (1 without
/// seats). It is the Checkout line item's quantity.
pub fn checkout_seats(plan: &Plan, requested: Option<u64>) -> Result<u64, SeatsError> {
    match requested {
        Some(seats) => in_range(plan, seats),
        None => Ok(plan.seats.map_or(1, |range| range.min)),
    }
}

/// The seats after a plan change from `current` seats: the count asked
/// for (checked against the target plan), else the current count brought
/// into the target plan's range (1 on a plan without seats).
pub fn seats_after_change(
    target: &Plan,
    current: u64,
    requested: Option<u64>,
) -> Result<u64, SeatsError> {
    match (requested, target.seats) {
        (Some(seats), _) => in_range(target, seats),
        (None, Some(range)) => Ok(current.clamp(range.min, range.max)),
        (None, None) => Ok(1),
    }
}

/// Checks a seat change on `plan` from `current` to `seats` against the
/// usage in `ent` (the customer's entitlements now): in range, different,
/// and leaving every per-seat capacity feature at or above what is live.
/// Metered usage never blocks: over a lowered metered limit the customer
/// is only refused new consumption until the period resets.
pub fn check_seat_change(
    catalog: &Catalog,
    plan: &Plan,
    current: u64,
    seats: u64,
    ent: &Entitlements,
) -> Result<(), SeatsError> {
    if plan.seats.is_none() {
        return Err(SeatsError::NotPerSeat {
            plan: plan.name.clone(),
        });
    }
    in_range(plan, seats)?;
    if seats == current {
        return Err(SeatsError::Unchanged(seats));
    }
    for (feature, kind) in catalog.features() {
        if *kind != FeatureKind::Capacity || !catalog.is_per_seat(feature) {
            continue;
        }
        let used = ent.features.get(feature).map_or(0, |e| e.used);
        let limit = catalog.limit_for(plan, feature, seats);
        if used > limit {
            return Err(SeatsError::InUse {
                feature: feature.clone(),
                used,
                limit,
                seats,
            });
        }
    }
    Ok(())
}

/// What a customer is subscribed to, as the plan picker compares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribed {
    /// The plan.
    pub plan: PlanName,
    /// The interval of its price (none when the price is not the catalog's).
    pub interval: Option<Interval>,
    /// The subscription's currency.
    pub currency: Currency,
    /// The seat count.
    pub seats: u64,
}

/// How a plan (at an interval) stands for a customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Eligibility {
    /// What the customer has now.
    Current,
    /// Costs more per year (from free: any paid plan, through checkout).
    Upgrade,
    /// Costs less per year, or the same.
    Downgrade,
    /// The current plan at the other interval.
    SwitchInterval,
    /// Cannot be chosen now (see [`Unavailable`]).
    Unavailable,
}

/// Why a choice is [`Eligibility::Unavailable`]. [`Unavailable::code`] is stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// The plan has no price at this interval in the customer's currency
    /// (Stripe bills one customer in one currency).
    NoPriceInCurrency,
    /// The free plan is reached by canceling the subscription.
    CancelToDowngrade,
    /// The customer's seat count does not fit the plan's range, and the
    /// plan change would refuse it.
    SeatsOutOfRange,
}

impl Unavailable {
    /// A stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            Unavailable::NoPriceInCurrency => "no_price_in_currency",
            Unavailable::CancelToDowngrade => "cancel_to_downgrade",
            Unavailable::SeatsOutOfRange => "seats_out_of_range",
        }
    }
}

/// A plan (at an interval) for one customer: its eligibility, the reason
/// when unavailable, and the seats the change would keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// How it stands.
    pub eligibility: Eligibility,
    /// Why it is unavailable.
    pub reason: Option<Unavailable>,
    /// The seats a change to it keeps (1 on a plan without seats).
    pub seats: u64,
}

/// A price's amount per year for `seats` seats, to tell upgrades from
/// downgrades across intervals (none when the catalog does not know it).
pub fn yearly_amount(
    plan: &Plan,
    currency: &Currency,
    interval: Interval,
    seats: u64,
) -> Option<i64> {
    let unit = plan.price(currency, interval)?.unit_amount?;
    let seats = i64::try_from(seats).unwrap_or(i64::MAX);
    Some(
        unit.saturating_mul(interval.per_year())
            .saturating_mul(seats),
    )
}

/// How `target` at `interval` (none for the free plan) stands for a
/// customer on `current` (none: on the free plan), in `currency` (the
/// subscription's, else the one the customer would check out in).
///
/// Amounts compare per year for the seats kept; an amount the catalog
/// does not know (a price given by id only) counts as 0, so the server
/// fills amounts from Stripe before asking.
pub fn eligibility(
    catalog: &Catalog,
    target: &Plan,
    interval: Option<Interval>,
    current: Option<&Subscribed>,
    currency: &Currency,
) -> Choice {
    let unavailable = |reason, seats| Choice {
        eligibility: Eligibility::Unavailable,
        reason: Some(reason),
        seats,
    };
    let choice = |eligibility, seats| Choice {
        eligibility,
        reason: None,
        seats,
    };
    let Some(interval) = interval.filter(|_| target.is_paid()) else {
        // The free plan.
        return match current {
            None => choice(Eligibility::Current, 1),
            Some(_) => unavailable(Unavailable::CancelToDowngrade, 1),
        };
    };
    let Some(current) = current else {
        let seats = target.seats.map_or(1, |range| range.min);
        return match target.price(currency, interval) {
            Some(_) => choice(Eligibility::Upgrade, seats),
            None => unavailable(Unavailable::NoPriceInCurrency, seats),
        };
    };
    let Ok(seats) = seats_after_change(target, current.seats, None) else {
        return unavailable(Unavailable::SeatsOutOfRange, current.seats);
    };
    if target.price(&current.currency, interval).is_none() {
        return unavailable(Unavailable::NoPriceInCurrency, seats);
    }
    if target.name == current.plan {
        return if current.interval == Some(interval) {
            choice(Eligibility::Current, seats)
        } else {
            choice(Eligibility::SwitchInterval, seats)
        };
    }
    let now = match (catalog.plan(&current.plan), current.interval) {
        (Some(plan), Some(i)) => yearly_amount(plan, &current.currency, i, current.seats),
        _ => None,
    }
    .unwrap_or(0);
    let then = yearly_amount(target, &current.currency, interval, seats).unwrap_or(0);
    if then > now {
        choice(Eligibility::Upgrade, seats)
    } else {
        choice(Eligibility::Downgrade, seats)
    }
}
