//! The plan catalog: features, plans, their limits and their Stripe prices.
//!
//! Loaded from the TOML plans file (`BILLD_PLANS`, documented in
//! `docs/src/pricing.md`), or the built-in seed catalog (free / standard /
//! pro in EUR). Features are metered (N per period), capacity (N live at
//! once, optionally per seat) or flags (on/off); plans have limits, an
//! optional seat range and trial, and prices per currency and interval.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::PriceId;
use crate::money::Currency;

/// Why a catalog (or a plan/feature name) is invalid. [`CatalogError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    /// The TOML itself does not parse or has unknown keys.
    #[error("plans file is not valid: {0}")]
    InvalidToml(String),
    /// A currency code is not three letters.
    #[error("invalid currency {0:?}")]
    InvalidCurrency(String),
    /// A plan or feature name is not `[a-z0-9_-]{1,64}`.
    #[error("invalid name {0:?}: use 1 to 64 of a-z, 0-9, '_' and '-'")]
    InvalidName(String),
    /// There is no `free` plan.
    #[error("the catalog must define a `free` plan")]
    MissingFreePlan,
    /// The `free` plan lists prices.
    #[error("the `free` plan must not have prices")]
    FreePlanHasPrices,
    /// A plan's limits name a feature not declared under `[features]`.
    #[error("plan {plan} limits unknown feature {feature}")]
    UnknownFeature {
        /// The plan.
        plan: String,
        /// The undeclared feature.
        feature: String,
    },
    /// A plan does not set a limit for a declared feature.
    #[error("plan {plan} has no limit for feature {feature}")]
    MissingLimit {
        /// The plan.
        plan: String,
        /// The feature without a limit.
        feature: String,
    },
    /// A paid plan has no price in the default currency.
    #[error("plan {plan} has no price in the default currency {currency}")]
    MissingDefaultPrice {
        /// The plan.
        plan: String,
        /// The default currency.
        currency: String,
    },
    /// A price id or lookup key is used twice.
    #[error("price {0} is used by more than one plan or currency")]
    DuplicatePrice(String),
    /// A price entry is neither a `price_…` id nor a lookup key, or a
    /// currency's prices are neither one price nor `month`/`year` entries.
    #[error("invalid price for plan {plan}: {reason}")]
    InvalidPrice {
        /// The plan.
        plan: String,
        /// What is wrong.
        reason: String,
    },
    /// The grace period is out of range (0..=60 days).
    #[error("grace_period_days must be between 0 and 60, got {0}")]
    InvalidGracePeriod(i64),
    /// A policy name is not one of the documented values.
    #[error("unknown policy {0:?}")]
    InvalidPolicy(String),
    /// `bind_price` named a plan/currency/interval with no price entry.
    #[error("plan {plan} has no {interval} price in {currency}")]
    NoSuchPrice {
        /// The plan.
        plan: String,
        /// The currency.
        currency: String,
        /// The interval.
        interval: String,
    },
    /// A feature's declaration is inconsistent (e.g. a per-seat flag).
    #[error("feature {feature}: {reason}")]
    InvalidFeature {
        /// The feature.
        feature: String,
        /// What is wrong.
        reason: String,
    },
    /// A plan's value for a feature does not fit the feature's kind (a
    /// number for a flag, `true` for a metered feature, a negative limit).
    #[error("plan {plan} feature {feature}: {reason}")]
    InvalidLimit {
        /// The plan.
        plan: String,
        /// The feature.
        feature: String,
        /// What is wrong.
        reason: String,
    },
    /// A plan's `seats` range is out of bounds or on the free plan.
    #[error("plan {plan} seats: {reason}")]
    InvalidSeats {
        /// The plan.
        plan: String,
        /// What is wrong.
        reason: String,
    },
    /// A plan's `trial_days` is out of bounds or on the free plan, or
    /// `trial_card` is given without `trial_days`.
    #[error("plan {plan} trial_days: {reason}")]
    InvalidTrial {
        /// The plan.
        plan: String,
        /// What is wrong.
        reason: String,
    },
    /// A metered feature's `overage` is malformed (on a feature that is not
    /// metered, `per` below 1, a negative `cap`, a bad price or meter name).
    #[error("feature {feature} overage: {reason}")]
    InvalidOverage {
        /// The feature.
        feature: String,
        /// What is wrong.
        reason: String,
    },
    /// A credit pack names a feature not declared under `[features]`.
    #[error("credit pack {pack} names unknown feature {feature}")]
    CreditPackUnknownFeature {
        /// The pack.
        pack: String,
        /// The undeclared feature.
        feature: String,
    },
    /// A credit pack's feature is not metered (credits are consumed after
    /// a period's included quota, which only a metered feature has).
    #[error(
        "credit pack {pack}: feature {feature} is {kind}; only a metered feature takes credits"
    )]
    CreditPackFeatureKind {
        /// The pack.
        pack: String,
        /// The feature.
        feature: String,
        /// The feature's kind.
        kind: String,
    },
    /// A credit pack's `amount` is not a whole number of at least 1.
    #[error("credit pack {pack}: amount must be at least 1, got {amount}")]
    CreditPackInvalidAmount {
        /// The pack.
        pack: String,
        /// The amount given.
        amount: i64,
    },
    /// A credit pack's prices are missing, malformed, not one price per
    /// currency, or lack the default currency.
    #[error("credit pack {pack} prices: {reason}")]
    CreditPackInvalidPrice {
        /// The pack.
        pack: String,
        /// What is wrong.
        reason: String,
    },
}

impl CatalogError {
    /// A stable snake_case code for start-up errors and logs.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::InvalidToml(_) => "catalog_invalid_toml",
            CatalogError::InvalidCurrency(_) => "catalog_invalid_currency",
            CatalogError::InvalidName(_) => "catalog_invalid_name",
            CatalogError::MissingFreePlan => "catalog_missing_free_plan",
            CatalogError::FreePlanHasPrices => "catalog_free_plan_has_prices",
            CatalogError::UnknownFeature { .. } => "catalog_unknown_feature",
            CatalogError::MissingLimit { .. } => "catalog_missing_limit",
            CatalogError::MissingDefaultPrice { .. } => "catalog_missing_default_price",
            CatalogError::DuplicatePrice(_) => "catalog_duplicate_price",
            CatalogError::InvalidPrice { .. } => "catalog_invalid_price",
            CatalogError::InvalidGracePeriod(_) => "catalog_invalid_grace_period",
            CatalogError::NoSuchPrice { .. } => "catalog_no_such_price",
            CatalogError::InvalidPolicy(_) => "catalog_invalid_policy",
            CatalogError::InvalidFeature { .. } => "catalog_invalid_feature",
            CatalogError::InvalidLimit { .. } => "catalog_invalid_limit",
            CatalogError::InvalidSeats { .. } => "catalog_invalid_seats",
            CatalogError::InvalidTrial { .. } => "catalog_invalid_trial",
            CatalogError::InvalidOverage { .. } => "catalog_invalid_overage",
            CatalogError::CreditPackUnknownFeature { .. } => "catalog_credit_pack_unknown_feature",
            CatalogError::CreditPackFeatureKind { .. } => "catalog_credit_pack_feature_kind",
            CatalogError::CreditPackInvalidAmount { .. } => "catalog_credit_pack_invalid_amount",
            CatalogError::CreditPackInvalidPrice { .. } => "catalog_credit_pack_invalid_price",
        }
    }
}

fn parse_name(raw: &str) -> Result<String, CatalogError> {
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(CatalogError::InvalidName(raw.to_owned()))
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses a name: 1 to 64 of `a-z`, `0-9`, `_`, `-`.
            pub fn parse(raw: &str) -> Result<Self, CatalogError> {
                parse_name(raw).map(Self)
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = CatalogError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(&value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A plan's name in the catalog (`free`, `standard`, `pro`).
    PlanName
);
name_type!(
    /// A limited feature's name (`generations`, `websites`).
    FeatureName
);
name_type!(
    /// A credit pack's name in the catalog (`gen_100`).
    PackName
);

/// How a feature's usage is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// N per billing period, reset at renewal.
    Metered,
    /// At most N live at once: consumed on create, released on delete.
    Capacity,
    /// On or off per plan; nothing is counted.
    Flag,
}

impl FeatureKind {
    /// Whether usage is counted (metered or capacity).
    pub fn is_counted(self) -> bool {
        !matches!(self, FeatureKind::Flag)
    }

    /// The kind's name in the plans file.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureKind::Metered => "metered",
            FeatureKind::Capacity => "capacity",
            FeatureKind::Flag => "flag",
        }
    }
}

/// How often a price bills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Interval {
    /// Every month (Stripe `recurring[interval]=month`).
    Month,
    /// Every year (Stripe `recurring[interval]=year`).
    Year,
}

impl Interval {
    /// Both intervals, shortest first.
    pub const ALL: [Interval; 2] = [Interval::Month, Interval::Year];

    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Month => "month",
            Interval::Year => "year",
        }
    }

    /// How many of these make a year, to compare prices across intervals.
    pub fn per_year(self) -> i64 {
        match self {
            Interval::Month => 12,
            Interval::Year => 1,
        }
    }

    /// Parses `month` or `year` (Stripe's `recurring.interval` with
    /// `interval_count` 1).
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "month" => Some(Interval::Month),
            "year" => Some(Interval::Year),
            _ => None,
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens when a charge is refunded in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundPolicy {
    /// Paid access ends and the subscription is canceled at Stripe.
    #[default]
    RevokeAndCancel,
    /// The refund is recorded (and the customer notified), access is unchanged.
    RecordOnly,
}

impl std::str::FromStr for RefundPolicy {
    type Err = CatalogError;
    /// Parses `revoke_and_cancel` or `record_only` (e.g. from an environment variable).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "revoke_and_cancel" => Ok(Self::RevokeAndCancel),
            "record_only" => Ok(Self::RecordOnly),
            other => Err(CatalogError::InvalidPolicy(other.to_owned())),
        }
    }
}

impl std::str::FromStr for DowngradePolicy {
    type Err = CatalogError;
    /// Parses `immediate` or `at_period_end` (e.g. from an environment variable).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "immediate" => Ok(Self::Immediate),
            "at_period_end" => Ok(Self::AtPeriodEnd),
            other => Err(CatalogError::InvalidPolicy(other.to_owned())),
        }
    }
}

/// When a downgrade's lower metered limits take effect.
///
/// Either way nothing is deleted and usage is kept; over the limit, new
/// consumption is refused until usage is under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DowngradePolicy {
    /// The new plan's limits apply at once.
    #[default]
    Immediate,
    /// Metered limits stay at least those of the plan the billing period
    /// started on, until the period ends (capacity limits apply at once).
    AtPeriodEnd,
}

/// A plan's Stripe price in one currency and interval.
///
/// Either a concrete `price_…` id, or a lookup key (Stripe's `lookup_key`)
/// that dev mode and the emulator create with `unit_amount` and then bind
/// with [`Catalog::bind_price`]. A subscription matches a price by id, or by
/// the lookup key on its price object, so an unbound lookup key still works
/// against an account whose prices carry that key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// The Stripe price id, once known.
    pub id: Option<PriceId>,
    /// The Stripe `lookup_key` to find or create the price by.
    pub lookup_key: Option<String>,
    /// Amount per interval (per seat on a plan with seats) in minor units,
    /// for creating the price and showing it.
    pub unit_amount: Option<i64>,
}

impl Price {
    /// Whether a Stripe price (its id and lookup key) is this catalog price.
    pub fn matches(&self, id: &PriceId, lookup_key: Option<&str>) -> bool {
        self.id.as_ref() == Some(id)
            || (lookup_key.is_some() && self.lookup_key.as_deref() == lookup_key)
    }
}

/// The seat range of a plan sold per seat: the subscription item's quantity
/// lies in `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatRange {
    /// The fewest seats (at least 1).
    pub min: u64,
    /// The most seats.
    pub max: u64,
}

impl SeatRange {
    /// The largest `max` a plans file may set (far above any team, far
    /// below Stripe's quantity bound).
    pub const LIMIT: u64 = 1_000_000;

    /// Whether `seats` is in the range.
    pub fn contains(&self, seats: u64) -> bool {
        (self.min..=self.max).contains(&seats)
    }
}

/// Pay-as-you-go beyond a metered feature's included quota: consumption
/// past the plan's limit is allowed, up to `cap` more per period, and
/// reported to a Stripe Billing Meter whose metered price bills it on the
/// next invoice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overage {
    /// The metered Stripe price (in the catalog's currency), by id or by
    /// lookup key.
    pub price: Price,
    /// How many units of the feature one unit of the price buys (Stripe's
    /// `transform_quantity[divide_by]`, rounded up); at least 1.
    pub per: u64,
    /// The most overage per billing period (whatever the seats).
    pub cap: u64,
    /// The meter's `event_name`: what billd's meter events are sent as.
    pub meter_event_name: String,
    /// The metered price's interval (default `month`): Stripe bills every
    /// item of a subscription at one interval, so only subscriptions at
    /// this interval carry the metered price and get overage.
    pub interval: Interval,
}

impl Overage {
    /// The default meter event name of a feature without `meter`.
    pub fn default_event_name(feature: &FeatureName) -> String {
        format!("billd_{feature}")
    }
}

/// A credit pack: `amount` prepaid units of a metered feature, bought
/// once through Checkout in payment mode at its one-time price
/// (`[credit_packs.<name>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditPack {
    /// The pack's name (`gen_100`).
    pub name: PackName,
    /// The metered feature its units are of.
    pub feature: FeatureName,
    /// Units it brings (at least 1).
    pub amount: u64,
    /// Its one-time Stripe price per currency.
    pub prices: BTreeMap<Currency, Price>,
}

/// One plan: its limits and flags per feature, seats, trial and prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's name.
    pub name: PlanName,
    /// Limit per counted feature (every declared metered or capacity
    /// feature has one), per seat for `per_seat` features.
    pub limits: BTreeMap<FeatureName, u64>,
    /// On/off per flag feature (every declared flag has one).
    #[serde(default)]
    pub flags: BTreeMap<FeatureName, bool>,
    /// The seat range when the plan is sold per seat.
    #[serde(default)]
    pub seats: Option<SeatRange>,
    /// Days of trial a new subscription starts with.
    #[serde(default)]
    pub trial_days: Option<u32>,
    /// Whether the trial's checkout asks for a card (`trial_card`, default
    /// true). Without one, Stripe cancels the subscription at the trial's
    /// end unless the customer has added a payment method by then.
    #[serde(default = "card_by_default")]
    pub trial_card: bool,
    /// Stripe price per currency and interval (empty for `free`).
    pub prices: BTreeMap<Currency, BTreeMap<Interval, Price>>,
}

fn card_by_default() -> bool {
    true
}

impl Plan {
    /// Whether a checkout of the plan starts a trial without asking for a
    /// card.
    pub fn trial_without_card(&self) -> bool {
        self.trial_days.is_some() && !self.trial_card
    }

    /// The base limit for a counted feature (0 if the feature is unknown
    /// or a flag), before any per-seat multiplication.
    pub fn limit(&self, feature: &FeatureName) -> u64 {
        self.limits.get(feature).copied().unwrap_or(0)
    }

    /// Whether a flag feature is on under this plan (false if unknown).
    pub fn flag(&self, feature: &FeatureName) -> bool {
        self.flags.get(feature).copied().unwrap_or(false)
    }

    /// The price in a currency and interval.
    pub fn price(&self, currency: &Currency, interval: Interval) -> Option<&Price> {
        self.prices.get(currency)?.get(&interval)
    }

    /// Whether the plan is sold (has any price).
    pub fn is_paid(&self) -> bool {
        !self.prices.is_empty()
    }

    /// The seat count a subscription item's `quantity` stands for: the
    /// quantity on a plan with seats, else 1 (a quantity on a plan without
    /// seats buys nothing more).
    pub fn seats_of(&self, quantity: Option<u64>) -> u64 {
        match self.seats {
            Some(_) => quantity.unwrap_or(1).max(1),
            None => 1,
        }
    }
}

/// Where a Stripe price sits in the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceSlot<'c> {
    /// The plan.
    pub plan: &'c Plan,
    /// The currency.
    pub currency: &'c Currency,
    /// The interval.
    pub interval: Interval,
    /// The catalog's entry.
    pub price: &'c Price,
}

/// The validated plan catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    default_currency: Currency,
    grace_period_days: u32,
    refund_policy: RefundPolicy,
    downgrade: DowngradePolicy,
    features: BTreeMap<FeatureName, FeatureKind>,
    #[serde(default)]
    per_seat: BTreeSet<FeatureName>,
    #[serde(default)]
    overage: BTreeMap<FeatureName, Overage>,
    plans: BTreeMap<PlanName, Plan>,
    #[serde(default)]
    credit_packs: BTreeMap<PackName, CreditPack>,
}

/// The seed's plans: free (3 generations, 1 website), standard (10, 3) and
/// pro (25, 10), priced monthly in EUR by lookup key so dev mode can create
/// them. Written in the old one-price form, which means `month`.
pub const SEED_CATALOG_TOML: &str = r#"
currency = "eur"
grace_period_days = 3
refund_policy = "revoke_and_cancel"
downgrade = "immediate"

[features]
generations = { kind = "metered" }
websites    = { kind = "capacity" }

[plans.free]
limits = { generations = 3, websites = 1 }

[plans.standard]
limits = { generations = 10, websites = 3 }
prices = { eur = { lookup_key = "billd_standard_eur", unit_amount = 900 } }

[plans.pro]
limits = { generations = 25, websites = 10 }
prices = { eur = { lookup_key = "billd_pro_eur", unit_amount = 1900 } }
"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    currency: String,
    #[serde(default = "default_grace")]
    grace_period_days: i64,
    #[serde(default)]
    refund_policy: RefundPolicy,
    #[serde(default)]
    downgrade: DowngradePolicy,
    features: BTreeMap<String, RawFeature>,
    plans: BTreeMap<String, RawPlan>,
    #[serde(default)]
    credit_packs: BTreeMap<String, RawCreditPack>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCreditPack {
    feature: String,
    amount: i64,
    #[serde(default)]
    prices: BTreeMap<String, toml::Value>,
}

fn default_grace() -> i64 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    kind: FeatureKind,
    #[serde(default)]
    per_seat: Option<bool>,
    #[serde(default)]
    overage: Option<RawOverage>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverage {
    price: String,
    per: i64,
    cap: i64,
    #[serde(default)]
    meter: Option<String>,
    #[serde(default)]
    unit_amount: Option<i64>,
    #[serde(default)]
    interval: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    limits: BTreeMap<String, toml::Value>,
    #[serde(default)]
    seats: Option<RawSeats>,
    #[serde(default)]
    trial_days: Option<i64>,
    #[serde(default)]
    trial_card: Option<bool>,
    #[serde(default)]
    prices: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSeats {
    min: i64,
    max: i64,
}

impl Catalog {
    /// The seed catalog (see [`SEED_CATALOG_TOML`]).
    pub fn seed() -> Self {
        // The seed text is a constant checked by `seed_catalog_is_valid`; a
        // failure here is a programming error caught by that test.
        match Self::from_toml(SEED_CATALOG_TOML) {
            Ok(catalog) => catalog,
            Err(e) => panic!("built-in seed catalog is invalid: {e}"),
        }
    }

    /// Parses and validates a plans file.
    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::InvalidToml(e.message().to_owned()))?;
        let default_currency = Currency::parse(&raw.currency)
            .map_err(|_| CatalogError::InvalidCurrency(raw.currency))?;
        if !(0..=60).contains(&raw.grace_period_days) {
            return Err(CatalogError::InvalidGracePeriod(raw.grace_period_days));
        }
        let mut features = BTreeMap::new();
        let mut per_seat = BTreeSet::new();
        let mut overage = BTreeMap::new();
        let mut seen_prices = BTreeSet::new();
        for (name, raw_feature) in raw.features {
            let feature = FeatureName::parse(&name)?;
            if let Some(raw_overage) = raw_feature.overage {
                let parsed = parse_overage(&feature, raw_feature.kind, raw_overage)?;
                for key in price_keys(&parsed.price) {
                    if !seen_prices.insert(key.clone()) {
                        return Err(CatalogError::DuplicatePrice(key));
                    }
                }
                overage.insert(feature.clone(), parsed);
            }
            if raw_feature.per_seat == Some(true) {
                if !raw_feature.kind.is_counted() {
                    return Err(CatalogError::InvalidFeature {
                        feature: name,
                        reason: "a flag cannot be per_seat".to_owned(),
                    });
                }
                per_seat.insert(feature.clone());
            }
            features.insert(feature, raw_feature.kind);
        }

        let mut plans = BTreeMap::new();
        for (name, raw_plan) in raw.plans {
            let plan = parse_plan(&name, raw_plan, &features, &mut seen_prices)?;
            plans.insert(plan.name.clone(), plan);
        }

        let free = plans
            .get(&Self::free_plan_name())
            .ok_or(CatalogError::MissingFreePlan)?;
        if free.is_paid() {
            return Err(CatalogError::FreePlanHasPrices);
        }
        if free.seats.is_some() {
            return Err(CatalogError::InvalidSeats {
                plan: "free".to_owned(),
                reason: "the free plan has no subscription to count seats on".to_owned(),
            });
        }
        if free.trial_days.is_some() {
            return Err(CatalogError::InvalidTrial {
                plan: "free".to_owned(),
                reason: "the free plan has no subscription to try".to_owned(),
            });
        }
        for plan in plans.values() {
            if plan.name != Self::free_plan_name() && !plan.prices.contains_key(&default_currency) {
                return Err(CatalogError::MissingDefaultPrice {
                    plan: plan.name.to_string(),
                    currency: default_currency.to_string(),
                });
            }
        }

        let mut credit_packs = BTreeMap::new();
        for (name, raw_pack) in raw.credit_packs {
            let pack = parse_credit_pack(
                &name,
                raw_pack,
                &features,
                &default_currency,
                &mut seen_prices,
            )?;
            credit_packs.insert(pack.name.clone(), pack);
        }

        Ok(Self {
            default_currency,
            grace_period_days: u32::try_from(raw.grace_period_days).unwrap_or(0),
            refund_policy: raw.refund_policy,
            downgrade: raw.downgrade,
            features,
            per_seat,
            overage,
            plans,
            credit_packs,
        })
    }

    fn free_plan_name() -> PlanName {
        PlanName("free".to_owned())
    }

    /// The default checkout currency.
    pub fn default_currency(&self) -> &Currency {
        &self.default_currency
    }

    /// How long `past_due` keeps access, in days.
    pub fn grace_period_days(&self) -> u32 {
        self.grace_period_days
    }

    /// How long `past_due` keeps access, in seconds.
    pub fn grace_period_secs(&self) -> i64 {
        i64::from(self.grace_period_days) * 86_400
    }

    /// What a full refund does.
    pub fn refund_policy(&self) -> RefundPolicy {
        self.refund_policy
    }

    /// Overrides the plans file's refund policy (tests compare both policies).
    pub fn with_refund_policy(mut self, policy: RefundPolicy) -> Self {
        self.refund_policy = policy;
        self
    }

    /// When downgrades take effect.
    pub fn downgrade_policy(&self) -> DowngradePolicy {
        self.downgrade
    }

    /// Overrides the downgrade policy.
    pub fn with_downgrade_policy(mut self, policy: DowngradePolicy) -> Self {
        self.downgrade = policy;
        self
    }

    /// The declared features and their kinds.
    pub fn features(&self) -> &BTreeMap<FeatureName, FeatureKind> {
        &self.features
    }

    /// The overage of a metered feature sold beyond its quota.
    pub fn overage(&self, feature: &FeatureName) -> Option<&Overage> {
        self.overage.get(feature)
    }

    /// Every feature's overage.
    pub fn overages(&self) -> &BTreeMap<FeatureName, Overage> {
        &self.overage
    }

    /// Records the concrete Stripe id of an overage price known by lookup
    /// key (dev mode); a feature without overage is left alone.
    pub fn bind_overage_price(&mut self, feature: &FeatureName, id: PriceId) {
        if let Some(overage) = self.overage.get_mut(feature) {
            overage.price.id = Some(id);
        }
    }

    /// Every credit pack by name.
    pub fn credit_packs(&self) -> &BTreeMap<PackName, CreditPack> {
        &self.credit_packs
    }

    /// A credit pack by name.
    pub fn credit_pack(&self, name: &PackName) -> Option<&CreditPack> {
        self.credit_packs.get(name)
    }

    /// Whether some credit pack sells units of `feature`.
    pub fn sells_credits(&self, feature: &FeatureName) -> bool {
        self.credit_packs.values().any(|p| &p.feature == feature)
    }

    /// Records the concrete Stripe id of a pack's price known by lookup key
    /// (dev mode); an unknown pack or currency is left alone.
    pub fn bind_pack_price(&mut self, pack: &PackName, currency: &Currency, id: PriceId) {
        if let Some(price) = self
            .credit_packs
            .get_mut(pack)
            .and_then(|p| p.prices.get_mut(currency))
        {
            price.id = Some(id);
        }
    }

    /// Whether a feature's limit is per seat.
    pub fn is_per_seat(&self, feature: &FeatureName) -> bool {
        self.per_seat.contains(feature)
    }

    /// A counted feature's limit under `plan` for `seats` seats: the plan's
    /// limit, times the seats for a per-seat feature (saturating).
    pub fn limit_for(&self, plan: &Plan, feature: &FeatureName, seats: u64) -> u64 {
        let base = plan.limit(feature);
        if self.is_per_seat(feature) {
            base.saturating_mul(seats.max(1))
        } else {
            base
        }
    }

    /// All plans by name.
    pub fn plans(&self) -> &BTreeMap<PlanName, Plan> {
        &self.plans
    }

    /// A plan by name.
    pub fn plan(&self, name: &PlanName) -> Option<&Plan> {
        self.plans.get(name)
    }

    /// The `free` plan, which always exists.
    pub fn free_plan(&self) -> &Plan {
        // `from_toml` refuses a catalog without `free`, and no method removes plans.
        match self.plans.get(&Self::free_plan_name()) {
            Some(plan) => plan,
            None => unreachable!("validated catalog has a free plan"),
        }
    }

    /// The plan a Stripe price belongs to, by id or by the price's lookup key.
    pub fn plan_for_price(&self, id: &PriceId, lookup_key: Option<&str>) -> Option<&Plan> {
        self.slot_for_price(id, lookup_key).map(|slot| slot.plan)
    }

    /// Where a Stripe price sits in the catalog (plan, currency, interval),
    /// by id or by the price's lookup key.
    pub fn slot_for_price(&self, id: &PriceId, lookup_key: Option<&str>) -> Option<PriceSlot<'_>> {
        self.slots().find(|slot| slot.price.matches(id, lookup_key))
    }

    /// Every price with its place in the catalog.
    pub fn slots(&self) -> impl Iterator<Item = PriceSlot<'_>> {
        self.plans.values().flat_map(|plan| {
            plan.prices.iter().flat_map(move |(currency, by_interval)| {
                by_interval.iter().map(move |(interval, price)| PriceSlot {
                    plan,
                    currency,
                    interval: *interval,
                    price,
                })
            })
        })
    }

    /// Every price: (plan, currency, interval, price), e.g. for dev mode to
    /// create the prices known only by lookup key.
    pub fn prices(&self) -> impl Iterator<Item = (&PlanName, &Currency, Interval, &Price)> {
        self.slots()
            .map(|slot| (&slot.plan.name, slot.currency, slot.interval, slot.price))
    }

    /// The price of a plan in a currency and interval.
    pub fn price_for(
        &self,
        plan: &PlanName,
        currency: &Currency,
        interval: Interval,
    ) -> Option<&Price> {
        self.plans.get(plan)?.price(currency, interval)
    }

    /// Records the amount of a price the plans file gives by id only, as
    /// Stripe has it (the plan picker); a price not in the catalog is left
    /// alone.
    pub fn set_unit_amount(
        &mut self,
        plan: &PlanName,
        currency: &Currency,
        interval: Interval,
        amount: i64,
    ) {
        if let Some(price) = self
            .plans
            .get_mut(plan)
            .and_then(|p| p.prices.get_mut(currency))
            .and_then(|by_interval| by_interval.get_mut(&interval))
        {
            price.unit_amount = Some(amount);
        }
    }

    /// Records the concrete Stripe id of a price known by lookup key (dev mode).
    pub fn bind_price(
        &mut self,
        plan: &PlanName,
        currency: &Currency,
        interval: Interval,
        id: PriceId,
    ) -> Result<(), CatalogError> {
        let price = self
            .plans
            .get_mut(plan)
            .and_then(|p| p.prices.get_mut(currency))
            .and_then(|by_interval| by_interval.get_mut(&interval))
            .ok_or_else(|| CatalogError::NoSuchPrice {
                plan: plan.to_string(),
                currency: currency.to_string(),
                interval: interval.to_string(),
            })?;
        price.id = Some(id);
        Ok(())
    }
}

fn parse_plan(
    name: &str,
    raw: RawPlan,
    features: &BTreeMap<FeatureName, FeatureKind>,
    seen_prices: &mut BTreeSet<String>,
) -> Result<Plan, CatalogError> {
    let plan_name = PlanName::parse(name)?;
    let mut limits = BTreeMap::new();
    let mut flags = BTreeMap::new();
    for (feature, value) in raw.limits {
        let feature = FeatureName::parse(&feature)?;
        let Some(kind) = features.get(&feature) else {
            return Err(CatalogError::UnknownFeature {
                plan: name.to_owned(),
                feature: feature.to_string(),
            });
        };
        let invalid = |reason: String| CatalogError::InvalidLimit {
            plan: name.to_owned(),
            feature: feature.to_string(),
            reason,
        };
        match (kind, &value) {
            (FeatureKind::Flag, toml::Value::Boolean(on)) => {
                flags.insert(feature.clone(), *on);
            }
            (FeatureKind::Flag, other) => {
                return Err(invalid(format!(
                    "a flag is true or false, got {}",
                    other.type_str()
                )))
            }
            (_, toml::Value::Integer(n)) => {
                let n = u64::try_from(*n)
                    .map_err(|_| invalid(format!("a limit is 0 or more, got {n}")))?;
                limits.insert(feature.clone(), n);
            }
            (kind, other) => {
                return Err(invalid(format!(
                    "a {} limit is a whole number, got {}",
                    kind.as_str(),
                    other.type_str()
                )))
            }
        }
    }
    if let Some(missing) = features
        .keys()
        .find(|f| !limits.contains_key(*f) && !flags.contains_key(*f))
    {
        return Err(CatalogError::MissingLimit {
            plan: name.to_owned(),
            feature: missing.to_string(),
        });
    }
    let seats = raw
        .seats
        .map(|s| {
            let invalid = |reason: String| CatalogError::InvalidSeats {
                plan: name.to_owned(),
                reason,
            };
            let max_allowed = i64::try_from(SeatRange::LIMIT).unwrap_or(i64::MAX);
            if s.min < 1 {
                return Err(invalid(format!("min must be at least 1, got {}", s.min)));
            }
            if s.max < s.min || s.max > max_allowed {
                return Err(invalid(format!(
                    "max must lie in min ({}) to {max_allowed}, got {}",
                    s.min, s.max
                )));
            }
            Ok(SeatRange {
                min: s.min.unsigned_abs(),
                max: s.max.unsigned_abs(),
            })
        })
        .transpose()?;
    let trial_days = raw
        .trial_days
        .map(|days| {
            // Stripe's own bound on trial_period_days.
            u32::try_from(days)
                .ok()
                .filter(|d| (1..=730).contains(d))
                .ok_or_else(|| CatalogError::InvalidTrial {
                    plan: name.to_owned(),
                    reason: format!("must lie in 1 to 730 days, got {days}"),
                })
        })
        .transpose()?;
    if raw.trial_card.is_some() && trial_days.is_none() {
        return Err(CatalogError::InvalidTrial {
            plan: name.to_owned(),
            reason: "trial_card needs trial_days".to_owned(),
        });
    }
    let mut prices = BTreeMap::new();
    for (currency, value) in raw.prices {
        let code =
            Currency::parse(&currency).map_err(|_| CatalogError::InvalidCurrency(currency))?;
        let by_interval = parse_currency_prices(name, &code, value)?;
        for price in by_interval.values() {
            for key in price_keys(price) {
                if !seen_prices.insert(key.clone()) {
                    return Err(CatalogError::DuplicatePrice(key));
                }
            }
        }
        prices.insert(code, by_interval);
    }
    Ok(Plan {
        name: plan_name,
        limits,
        flags,
        seats,
        trial_days,
        trial_card: raw.trial_card.unwrap_or(true),
        prices,
    })
}

fn parse_credit_pack(
    name: &str,
    raw: RawCreditPack,
    features: &BTreeMap<FeatureName, FeatureKind>,
    default_currency: &Currency,
    seen_prices: &mut BTreeSet<String>,
) -> Result<CreditPack, CatalogError> {
    let pack = PackName::parse(name)?;
    let feature = FeatureName::parse(&raw.feature)?;
    let kind = features
        .get(&feature)
        .ok_or_else(|| CatalogError::CreditPackUnknownFeature {
            pack: name.to_owned(),
            feature: feature.to_string(),
        })?;
    if *kind != FeatureKind::Metered {
        return Err(CatalogError::CreditPackFeatureKind {
            pack: name.to_owned(),
            feature: feature.to_string(),
            kind: kind.as_str().to_owned(),
        });
    }
    let amount = u64::try_from(raw.amount).ok().filter(|a| *a >= 1).ok_or(
        CatalogError::CreditPackInvalidAmount {
            pack: name.to_owned(),
            amount: raw.amount,
        },
    )?;
    let invalid = |reason: String| CatalogError::CreditPackInvalidPrice {
        pack: name.to_owned(),
        reason,
    };
    let mut prices = BTreeMap::new();
    for (currency, value) in raw.prices {
        let code =
            Currency::parse(&currency).map_err(|_| CatalogError::InvalidCurrency(currency))?;
        // One one-time price per currency, in the plans' price forms
        // (a `price_…` id or a `{ lookup_key, unit_amount }` table).
        let price = parse_price(name, &code, value).map_err(|e| match e {
            CatalogError::InvalidPrice { reason, .. } => invalid(reason),
            other => other,
        })?;
        for key in price_keys(&price) {
            if !seen_prices.insert(key.clone()) {
                return Err(CatalogError::DuplicatePrice(key));
            }
        }
        prices.insert(code, price);
    }
    if !prices.contains_key(default_currency) {
        return Err(invalid(format!(
            "no price in the default currency {default_currency}"
        )));
    }
    Ok(CreditPack {
        name: pack,
        feature,
        amount,
        prices,
    })
}

/// The id and lookup key of a price, the names a catalog may use once.
fn price_keys(price: &Price) -> impl Iterator<Item = String> {
    [
        price.id.as_ref().map(|p| p.to_string()),
        price.lookup_key.clone(),
    ]
    .into_iter()
    .flatten()
}

fn parse_overage(
    feature: &FeatureName,
    kind: FeatureKind,
    raw: RawOverage,
) -> Result<Overage, CatalogError> {
    let invalid = |reason: String| CatalogError::InvalidOverage {
        feature: feature.to_string(),
        reason,
    };
    if kind != FeatureKind::Metered {
        return Err(invalid(format!(
            "only a metered feature has overage, not a {} one",
            kind.as_str()
        )));
    }
    let per = u64::try_from(raw.per)
        .ok()
        .filter(|per| *per >= 1)
        .ok_or_else(|| invalid(format!("per must be at least 1, got {}", raw.per)))?;
    let cap = u64::try_from(raw.cap)
        .map_err(|_| invalid(format!("cap must be 0 or more, got {}", raw.cap)))?;
    if raw.price.is_empty() || raw.price.len() > 200 {
        return Err(invalid("price must be 1 to 200 characters".to_owned()));
    }
    // A `price_…` value is a Stripe price id; anything else is a lookup key.
    let price = if raw.price.starts_with("price_") {
        Price {
            id: Some(PriceId::parse(&raw.price).map_err(|e| invalid(e.to_string()))?),
            lookup_key: None,
            unit_amount: raw.unit_amount,
        }
    } else {
        Price {
            id: None,
            lookup_key: Some(raw.price),
            unit_amount: raw.unit_amount,
        }
    };
    if price.unit_amount.is_some_and(|a| a < 0) {
        return Err(invalid("unit_amount must not be negative".to_owned()));
    }
    let meter_event_name = raw
        .meter
        .unwrap_or_else(|| Overage::default_event_name(feature));
    // Stripe's bound on a meter's event_name.
    if meter_event_name.is_empty() || meter_event_name.len() > 100 {
        return Err(invalid("meter must be 1 to 100 characters".to_owned()));
    }
    let interval = match raw.interval.as_deref() {
        None => Interval::Month,
        Some(raw) => Interval::parse(raw)
            .ok_or_else(|| invalid(format!("interval must be month or year, got {raw:?}")))?,
    };
    Ok(Overage {
        price,
        per,
        cap,
        meter_event_name,
        interval,
    })
}

/// One currency's prices: `"price_…"` or `{ lookup_key, unit_amount, id }`
/// (the old one-price form, meaning `month`), or a table of `month` and
/// `year` entries each in one of those forms.
fn parse_currency_prices(
    plan: &str,
    currency: &Currency,
    value: toml::Value,
) -> Result<BTreeMap<Interval, Price>, CatalogError> {
    let invalid = |reason: String| CatalogError::InvalidPrice {
        plan: plan.to_owned(),
        reason,
    };
    let by_interval = match value {
        toml::Value::Table(table)
            if Interval::ALL.iter().any(|i| table.contains_key(i.as_str())) =>
        {
            let mut by_interval = BTreeMap::new();
            for (key, entry) in table {
                let interval = Interval::parse(&key).ok_or_else(|| {
                    invalid(format!(
                        "{currency}: {key:?} is not an interval (month or year); a currency has either one price or month/year entries"
                    ))
                })?;
                by_interval.insert(interval, parse_price(plan, currency, entry)?);
            }
            by_interval
        }
        one => BTreeMap::from([(Interval::Month, parse_price(plan, currency, one)?)]),
    };
    Ok(by_interval)
}

fn parse_price(plan: &str, currency: &Currency, raw: toml::Value) -> Result<Price, CatalogError> {
    let invalid = |reason: String| CatalogError::InvalidPrice {
        plan: plan.to_owned(),
        reason: format!("{currency}: {reason}"),
    };
    let (id, lookup_key, unit_amount) = match raw {
        toml::Value::String(id) => (Some(id), None, None),
        toml::Value::Table(mut table) => {
            let mut text = |key: &str| match table.remove(key) {
                None => Ok(None),
                Some(toml::Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(invalid(format!(
                    "{key} must be a string, got {}",
                    other.type_str()
                ))),
            };
            let id = text("id")?;
            let lookup_key = text("lookup_key")?;
            let unit_amount = match table.remove("unit_amount") {
                None => None,
                Some(toml::Value::Integer(n)) => Some(n),
                Some(other) => {
                    return Err(invalid(format!(
                        "unit_amount must be a whole number of minor units, got {}",
                        other.type_str()
                    )))
                }
            };
            if let Some(unknown) = table.keys().next() {
                return Err(invalid(format!(
                    "unknown key {unknown:?} (expected id, lookup_key, unit_amount)"
                )));
            }
            if lookup_key.is_none() {
                return Err(invalid("a price table needs a lookup_key".to_owned()));
            }
            (id, lookup_key, unit_amount)
        }
        other => {
            return Err(invalid(format!(
                "a price is a \"price_…\" id or a {{ lookup_key, unit_amount }} table, got {}",
                other.type_str()
            )))
        }
    };
    let id = id
        .map(|id| PriceId::parse(&id).map_err(|e| invalid(e.to_string())))
        .transpose()?;
    if let Some(key) = &lookup_key {
        if key.is_empty() || key.len() > 200 {
            return Err(invalid("lookup_key must be 1 to 200 characters".to_owned()));
        }
    }
    if unit_amount.is_some_and(|a| a < 0) {
        return Err(invalid("unit_amount must not be negative".to_owned()));
    }
    Ok(Price {
        id,
        lookup_key,
        unit_amount,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> PlanName {
        PlanName::parse(s).unwrap()
    }

    fn feature(s: &str) -> FeatureName {
        FeatureName::parse(s).unwrap()
    }

    #[test]
    fn seed_catalog_is_valid_and_has_the_seed_limits() {
        let catalog = Catalog::from_toml(SEED_CATALOG_TOML).unwrap();
        let expected = [("free", 3, 1), ("standard", 10, 3), ("pro", 25, 10)];
        for (plan, generations, websites) in expected {
            let plan = catalog.plan(&name(plan)).unwrap();
            assert_eq!(plan.limit(&feature("generations")), generations);
            assert_eq!(plan.limit(&feature("websites")), websites);
        }
        assert_eq!(catalog.default_currency().as_str(), "eur");
        assert_eq!(catalog.grace_period_secs(), 3 * 86_400);
        assert_eq!(
            catalog.features()[&feature("websites")],
            FeatureKind::Capacity
        );
        assert_eq!(catalog.refund_policy(), RefundPolicy::RevokeAndCancel);
    }

    #[test]
    fn design_example_with_price_ids_parses_and_looks_up_both_ways() {
        let text = r#"
            currency = "eur"
            grace_period_days = 5
            [features]
            generations = { kind = "metered" }
            [plans.free]
            limits = { generations = 3 }
            [plans.standard]
            limits = { generations = 10 }
            prices = { eur = "price_std_eur", usd = "price_std_usd" }
        "#;
        let catalog = Catalog::from_toml(text).unwrap();
        let usd = Currency::parse("usd").unwrap();
        let price = PriceId::parse("price_std_usd").unwrap();
        assert_eq!(
            catalog.plan_for_price(&price, None).unwrap().name,
            name("standard")
        );
        assert_eq!(
            catalog
                .price_for(&name("standard"), &usd, Interval::Month)
                .unwrap()
                .id,
            Some(price)
        );
        assert!(catalog
            .plan_for_price(&PriceId::parse("price_other").unwrap(), None)
            .is_none());
        assert_eq!(catalog.grace_period_days(), 5);
    }

    #[test]
    fn seed_prices_are_listed_with_lookup_keys_and_amounts_for_dev_mode() {
        let catalog = Catalog::seed();
        let listed: Vec<(String, String, Option<String>, Option<i64>)> = catalog
            .prices()
            .map(|(plan, currency, interval, price)| {
                assert_eq!(interval, Interval::Month);
                (
                    plan.to_string(),
                    currency.to_string(),
                    price.lookup_key.clone(),
                    price.unit_amount,
                )
            })
            .collect();
        assert_eq!(
            listed,
            vec![
                (
                    "pro".into(),
                    "eur".into(),
                    Some("billd_pro_eur".into()),
                    Some(1900)
                ),
                (
                    "standard".into(),
                    "eur".into(),
                    Some("billd_standard_eur".into()),
                    Some(900)
                ),
            ]
        );
    }

    #[test]
    fn lookup_key_prices_match_by_key_and_can_be_bound_to_an_id() {
        let mut catalog = Catalog::seed();
        let created = PriceId::parse("price_created_by_dev_mode").unwrap();
        let eur = Currency::parse("eur").unwrap();
        assert!(catalog.plan_for_price(&created, None).is_none());
        assert_eq!(
            catalog
                .plan_for_price(&created, Some("billd_pro_eur"))
                .unwrap()
                .name,
            name("pro")
        );
        catalog
            .bind_price(&name("pro"), &eur, Interval::Month, created.clone())
            .unwrap();
        assert_eq!(
            catalog.plan_for_price(&created, None).unwrap().name,
            name("pro")
        );
        let usd = Currency::parse("usd").unwrap();
        assert_eq!(
            catalog
                .bind_price(&name("pro"), &usd, Interval::Month, created)
                .unwrap_err()
                .code(),
            "catalog_no_such_price"
        );
    }

    fn error_code(text: &str) -> &'static str {
        Catalog::from_toml(text).unwrap_err().code()
    }

    #[test]
    fn invalid_catalogs_are_refused_with_stable_codes() {
        let head = "currency = \"eur\"\n[features]\ngenerations = { kind = \"metered\" }\n";
        let free = "[plans.free]\nlimits = { generations = 3 }\n";
        assert_eq!(error_code("currency = "), "catalog_invalid_toml");
        assert_eq!(
            error_code(&format!(
                "{head}{free}[plans.x]\nlimits = {{ generations = 1 }}\nprice = {{}}\n"
            )),
            "catalog_invalid_toml"
        );
        assert_eq!(
            error_code(&format!("{head}{free}").replace("\"eur\"", "\"euro\"")),
            "catalog_invalid_currency"
        );
        assert_eq!(
            error_code(&format!("{head}[plans.basic]\nlimits = {{ generations = 3 }}\nprices = {{ eur = \"price_1\" }}\n")),
            "catalog_missing_free_plan"
        );
        assert_eq!(
            error_code(&format!("{head}[plans.free]\nlimits = {{ generations = 3 }}\nprices = {{ eur = \"price_1\" }}\n")),
            "catalog_free_plan_has_prices"
        );
        assert_eq!(
            error_code(&format!(
                "{head}[plans.free]\nlimits = {{ generations = 3, sites = 1 }}\n"
            )),
            "catalog_unknown_feature"
        );
        assert_eq!(
            error_code(&format!("{head}[plans.free]\nlimits = {{}}\n")),
            "catalog_missing_limit"
        );
        assert_eq!(
            error_code(&format!("{head}{free}[plans.pro]\nlimits = {{ generations = 9 }}\nprices = {{ usd = \"price_1\" }}\n")),
            "catalog_missing_default_price"
        );
        assert_eq!(
            error_code(&format!(
                "{head}{free}[plans.a]\nlimits = {{ generations = 9 }}\nprices = {{ eur = \"price_1\" }}\n[plans.b]\nlimits = {{ generations = 9 }}\nprices = {{ eur = \"price_1\" }}\n"
            )),
            "catalog_duplicate_price"
        );
        assert_eq!(
            error_code(&format!("{head}{free}[plans.a]\nlimits = {{ generations = 9 }}\nprices = {{ eur = \"prod_1\" }}\n")),
            "catalog_invalid_price"
        );
        assert_eq!(
            error_code(&format!("{head}{free}[plans.Pro]\nlimits = {{ generations = 9 }}\nprices = {{ eur = \"price_1\" }}\n")),
            "catalog_invalid_name"
        );
        assert_eq!(
            error_code(&format!("grace_period_days = 90\n{head}{free}")),
            "catalog_invalid_grace_period"
        );
    }

    #[test]
    fn policies_parse_from_their_documented_names() {
        assert_eq!("record_only".parse(), Ok(RefundPolicy::RecordOnly));
        assert_eq!(
            "revoke_and_cancel".parse(),
            Ok(RefundPolicy::RevokeAndCancel)
        );
        assert_eq!("at_period_end".parse(), Ok(DowngradePolicy::AtPeriodEnd));
        assert_eq!("immediate".parse(), Ok(DowngradePolicy::Immediate));
        let err = "sometimes".parse::<RefundPolicy>().unwrap_err();
        assert_eq!(err.code(), "catalog_invalid_policy");
        assert!("".parse::<DowngradePolicy>().is_err());
    }

    #[test]
    fn refund_policy_is_configurable_in_the_file() {
        let text = format!("refund_policy = \"record_only\"\n{SEED_CATALOG_TOML}")
            .replace("refund_policy = \"revoke_and_cancel\"\n", "");
        let catalog = Catalog::from_toml(&text).unwrap();
        assert_eq!(catalog.refund_policy(), RefundPolicy::RecordOnly);
        let text = SEED_CATALOG_TOML.replace("\"immediate\"", "\"at_period_end\"");
        let catalog = Catalog::from_toml(&text).unwrap();
        assert_eq!(catalog.downgrade_policy(), DowngradePolicy::AtPeriodEnd);
        assert_eq!(
            Catalog::seed().downgrade_policy(),
            DowngradePolicy::Immediate
        );
    }

    const ISSUE_EXAMPLE: &str = r#"
        currency = "eur"

        [features]
        generations   = { kind = "metered" }
        websites      = { kind = "capacity", per_seat = false }
        seats_sites   = { kind = "capacity", per_seat = true }
        custom_domain = { kind = "flag" }

        [plans.free]
        limits = { generations = 3, websites = 1, seats_sites = 1, custom_domain = false }

        [plans.team]
        limits     = { generations = 100, websites = 20, seats_sites = 5, custom_domain = true }
        seats      = { min = 1, max = 50 }
        trial_days = 14

        [plans.team.prices.eur]
        month = { lookup_key = "billd_team_eur_month", unit_amount = 1500 }
        year  = { lookup_key = "billd_team_eur_year",  unit_amount = 15000 }

        [plans.team.prices.usd]
        year = "price_team_usd_year"
    "#;

    #[test]
    fn the_interval_form_parses_with_seats_trials_flags_and_per_seat_features() {
        let catalog = Catalog::from_toml(ISSUE_EXAMPLE).unwrap();
        let team = catalog.plan(&name("team")).unwrap();
        let eur = Currency::parse("eur").unwrap();
        let usd = Currency::parse("usd").unwrap();

        assert_eq!(team.seats, Some(SeatRange { min: 1, max: 50 }));
        assert_eq!(team.trial_days, Some(14));
        assert!(team.trial_card && !team.trial_without_card());
        let cardless = Catalog::from_toml(&ISSUE_EXAMPLE.replace(
            "trial_days = 14",
            "trial_days = 14\n        trial_card = false",
        ))
        .unwrap();
        assert!(cardless.plan(&name("team")).unwrap().trial_without_card());
        assert!(team.flag(&feature("custom_domain")));
        assert!(!catalog.free_plan().flag(&feature("custom_domain")));
        assert_eq!(team.limit(&feature("custom_domain")), 0);
        assert_eq!(
            catalog.features()[&feature("custom_domain")],
            FeatureKind::Flag
        );
        assert!(catalog.is_per_seat(&feature("seats_sites")));
        assert!(!catalog.is_per_seat(&feature("websites")));
        assert_eq!(catalog.limit_for(team, &feature("seats_sites"), 4), 20);
        assert_eq!(catalog.limit_for(team, &feature("websites"), 4), 20);
        assert_eq!(
            team.price(&eur, Interval::Year).unwrap().unit_amount,
            Some(15000)
        );
        assert!(team.price(&usd, Interval::Month).is_none());
        let slot = catalog
            .slot_for_price(
                &PriceId::parse("price_other").unwrap(),
                Some("billd_team_eur_year"),
            )
            .unwrap();
        assert_eq!(
            (
                slot.plan.name.as_str(),
                slot.currency.as_str(),
                slot.interval
            ),
            ("team", "eur", Interval::Year)
        );
        let slot = catalog
            .slot_for_price(&PriceId::parse("price_team_usd_year").unwrap(), None)
            .unwrap();
        assert_eq!(
            (slot.currency.as_str(), slot.interval),
            ("usd", Interval::Year)
        );
        assert_eq!(catalog.prices().count(), 3);
    }

    #[test]
    fn the_old_one_price_form_means_month_and_mixes_with_the_interval_form() {
        let text = format!(
            "{SEED_CATALOG_TOML}\n[plans.team]\nlimits = {{ generations = 1, websites = 1 }}\n[plans.team.prices.eur]\nyear = {{ lookup_key = \"t_y\", unit_amount = 100 }}\n"
        );
        let catalog = Catalog::from_toml(&text).unwrap();
        let eur = Currency::parse("eur").unwrap();
        let pro = catalog.plan(&name("pro")).unwrap();
        assert_eq!(
            pro.prices[&eur].keys().collect::<Vec<_>>(),
            [&Interval::Month]
        );
        let team = catalog.plan(&name("team")).unwrap();
        assert_eq!(
            team.prices[&eur].keys().collect::<Vec<_>>(),
            [&Interval::Year]
        );
        assert_eq!(team.seats_of(Some(9)), 1);
        assert_eq!(pro.seats, None);
    }

    #[test]
    fn bad_pricing_entries_are_refused_with_stable_codes() {
        let ok = Catalog::from_toml(ISSUE_EXAMPLE);
        assert!(ok.is_ok(), "{ok:?}");
        let cases = [
            ("custom_domain = true }", "custom_domain = 1 }", "catalog_invalid_limit"),
            ("generations = 100,", "generations = true,", "catalog_invalid_limit"),
            ("generations = 100,", "generations = -1,", "catalog_invalid_limit"),
            (
                "custom_domain = { kind = \"flag\" }",
                "custom_domain = { kind = \"flag\", per_seat = true }",
                "catalog_invalid_feature",
            ),
            (
                "custom_domain = { kind = \"flag\" }",
                "custom_domain = { kind = \"toggle\" }",
                "catalog_invalid_toml",
            ),
            ("min = 1, max = 50", "min = 0, max = 50", "catalog_invalid_seats"),
            ("min = 1, max = 50", "min = 5, max = 4", "catalog_invalid_seats"),
            ("min = 1, max = 50", "min = 1, max = 2000000", "catalog_invalid_seats"),
            ("trial_days = 14", "trial_days = 0", "catalog_invalid_trial"),
            ("trial_days = 14", "trial_days = 731", "catalog_invalid_trial"),
            ("trial_days = 14", "trial_card = false", "catalog_invalid_trial"),
            (
                "trial_days = 14",
                "trial_days = 14\n        trial_card = \"no\"",
                "catalog_invalid_toml",
            ),
            (
                "[plans.free]\n        limits = {",
                "[plans.free]\n        trial_card = false\n        limits = {",
                "catalog_invalid_trial",
            ),
            (
                "month = { lookup_key",
                "week = { lookup_key",
                "catalog_invalid_price",
            ),
            (
                "unit_amount = 1500 }",
                "unit_amount = 1500, currency = \"eur\" }",
                "catalog_invalid_price",
            ),
            ("unit_amount = 1500 }", "unit_amount = 15.0 }", "catalog_invalid_price"),
            (
                "year = \"price_team_usd_year\"",
                "year = 3",
                "catalog_invalid_price",
            ),
            (
                "year = \"price_team_usd_year\"",
                "year = \"billd_team_eur_month\"",
                "catalog_invalid_price",
            ),
            (
                "year = \"price_team_usd_year\"",
                "year = { lookup_key = \"billd_team_eur_month\" }",
                "catalog_duplicate_price",
            ),
            (
                "generations   = { kind = \"metered\" }",
                "generations   = { kind = \"metered\", overage = { price = \"p\", per = 0, cap = 10 } }",
                "catalog_invalid_overage",
            ),
            (
                "generations   = { kind = \"metered\" }",
                "generations   = { kind = \"metered\", overage = { price = \"p\", per = 1, cap = -1 } }",
                "catalog_invalid_overage",
            ),
            (
                "generations   = { kind = \"metered\" }",
                "generations   = { kind = \"metered\", overage = { price = \"p\", per = 1 } }",
                "catalog_invalid_toml",
            ),
            (
                "generations   = { kind = \"metered\" }",
                "generations   = { kind = \"metered\", overage = { price = \"p\", per = 1, cap = 1, tiers = 2 } }",
                "catalog_invalid_toml",
            ),
            (
                "websites      = { kind = \"capacity\", per_seat = false }",
                "websites      = { kind = \"capacity\", per_seat = false, overage = { price = \"p\", per = 1, cap = 1 } }",
                "catalog_invalid_overage",
            ),
            (
                "generations   = { kind = \"metered\" }",
                "generations   = { kind = \"metered\", overage = { price = \"billd_team_eur_year\", per = 1, cap = 1 } }",
                "catalog_duplicate_price",
            ),
            (
                "[plans.free]\n        limits = {",
                "[plans.free]\n        seats = { min = 1, max = 2 }\n        limits = {",
                "catalog_invalid_seats",
            ),
            (
                "[plans.free]\n        limits = {",
                "[plans.free]\n        trial_days = 7\n        limits = {",
                "catalog_invalid_trial",
            ),
        ];
        for (from, to, code) in cases {
            assert!(ISSUE_EXAMPLE.contains(from), "{from}");
            let text = ISSUE_EXAMPLE.replacen(from, to, 1);
            assert_eq!(error_code(&text), code, "{to}");
        }
    }

    const PACK: &str = "\n[credit_packs.gen_100]\nfeature = \"generations\"\namount  = 100\nprices  = { eur = { lookup_key = \"billd_gen_100_eur\", unit_amount = 500 } }\n";

    #[test]
    fn credit_packs_parse_as_in_the_issue() {
        let catalog = Catalog::from_toml(&format!("{ISSUE_EXAMPLE}{PACK}")).unwrap();
        let name = PackName::parse("gen_100").unwrap();
        let pack = catalog.credit_pack(&name).unwrap();
        assert_eq!((pack.feature.as_str(), pack.amount), ("generations", 100));
        let eur = pack.prices.get(&Currency::parse("eur").unwrap()).unwrap();
        assert_eq!(
            (eur.lookup_key.as_deref(), eur.unit_amount, eur.id.as_ref()),
            (Some("billd_gen_100_eur"), Some(500), None)
        );
        assert!(catalog.sells_credits(&feature("generations")));
        assert!(!catalog.sells_credits(&feature("websites")));
        assert!(Catalog::seed().credit_packs().is_empty());
    }

    #[test]
    fn a_bad_credit_pack_has_its_own_code() {
        let cases = [
            (
                "feature = \"generations\"",
                "feature = \"nope\"",
                "catalog_credit_pack_unknown_feature",
            ),
            (
                "feature = \"generations\"",
                "feature = \"websites\"",
                "catalog_credit_pack_feature_kind",
            ),
            (
                "amount  = 100",
                "amount  = 0",
                "catalog_credit_pack_invalid_amount",
            ),
            (
                "amount  = 100",
                "amount  = -5",
                "catalog_credit_pack_invalid_amount",
            ),
            (
                "unit_amount = 500",
                "unit_amount = -1",
                "catalog_credit_pack_invalid_price",
            ),
            ("eur = {", "usd = {", "catalog_credit_pack_invalid_price"),
            (
                "{ lookup_key = \"billd_gen_100_eur\", unit_amount = 500 }",
                "3",
                "catalog_credit_pack_invalid_price",
            ),
            (
                "billd_gen_100_eur",
                "billd_team_eur_month",
                "catalog_duplicate_price",
            ),
            (
                "amount  = 100",
                "amount  = 100\nextra = 1",
                "catalog_invalid_toml",
            ),
        ];
        for (from, to, code) in cases {
            assert!(PACK.contains(from), "{from}");
            let text = format!("{ISSUE_EXAMPLE}{}", PACK.replacen(from, to, 1));
            assert_eq!(error_code(&text), code, "{to}");
        }
        let no_prices = format!(
            "{ISSUE_EXAMPLE}\n[credit_packs.gen_100]\nfeature = \"generations\"\namount = 1\n"
        );
        assert_eq!(error_code(&no_prices), "catalog_credit_pack_invalid_price");
    }

    #[test]
    fn metered_overage_parses_as_in_the_issue_and_catalogs_without_it_have_none() {
        let text = ISSUE_EXAMPLE.replacen(
            "generations   = { kind = \"metered\" }",
            "generations   = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 1, cap = 1000 } }",
            1,
        );
        let catalog = Catalog::from_toml(&text).unwrap();
        let overage = catalog.overage(&feature("generations")).unwrap();
        assert_eq!(
            overage,
            &Overage {
                price: Price {
                    id: None,
                    lookup_key: Some("billd_gen_overage_eur".to_owned()),
                    unit_amount: None,
                },
                per: 1,
                cap: 1000,
                meter_event_name: "billd_generations".to_owned(),
                interval: Interval::Month,
            }
        );
        assert!(catalog.overage(&feature("websites")).is_none());
        assert!(Catalog::seed().overages().is_empty());

        let named = ISSUE_EXAMPLE.replacen(
            "generations   = { kind = \"metered\" }",
            "generations   = { kind = \"metered\", overage = { price = \"price_gen\", per = 10, cap = 0, meter = \"gen\", unit_amount = 2 } }",
            1,
        );
        let catalog = Catalog::from_toml(&named).unwrap();
        let overage = catalog.overage(&feature("generations")).unwrap();
        assert_eq!(
            (
                overage.price.id.as_ref().map(PriceId::as_str),
                overage.price.unit_amount
            ),
            (Some("price_gen"), Some(2))
        );
        assert_eq!(
            (overage.per, overage.cap, overage.meter_event_name.as_str()),
            (10, 0, "gen")
        );
    }
}
