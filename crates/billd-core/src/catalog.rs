//! The plan catalog: features, plans, their limits and their Stripe prices.
//!
//! Loaded from the TOML format in DESIGN.md (`BILLD_PLANS`), or the built-in
//! seed catalog (free / standard / pro in EUR).

use std::collections::BTreeMap;
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
    /// A price entry is neither a `price_…` id nor a lookup key.
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
    /// `bind_price` named a plan/currency with no price entry.
    #[error("plan {plan} has no price in {currency}")]
    NoSuchPrice {
        /// The plan.
        plan: String,
        /// The currency.
        currency: String,
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

/// How a feature's usage is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    /// N per billing period, reset at renewal.
    Metered,
    /// At most N live at once: consumed on create, released on delete.
    Capacity,
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

/// A plan's Stripe price in one currency.
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
    /// Amount per interval in minor units, for creating the price.
    pub unit_amount: Option<i64>,
}

impl Price {
    fn matches(&self, id: &PriceId, lookup_key: Option<&str>) -> bool {
        self.id.as_ref() == Some(id)
            || (lookup_key.is_some() && self.lookup_key.as_deref() == lookup_key)
    }
}

/// One plan: its limits per feature and its prices per currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan's name.
    pub name: PlanName,
    /// Limit per feature (every declared feature has one).
    pub limits: BTreeMap<FeatureName, u64>,
    /// Stripe price per currency (empty for `free`).
    pub prices: BTreeMap<Currency, Price>,
}

impl Plan {
    /// The limit for a feature (0 if the feature is unknown).
    pub fn limit(&self, feature: &FeatureName) -> u64 {
        self.limits.get(feature).copied().unwrap_or(0)
    }
}

/// The validated plan catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    default_currency: Currency,
    grace_period_days: u32,
    refund_policy: RefundPolicy,
    downgrade: DowngradePolicy,
    features: BTreeMap<FeatureName, FeatureKind>,
    plans: BTreeMap<PlanName, Plan>,
}

/// The seed's plans: free (3 generations, 1 website), standard (10, 3) and
/// pro (25, 10), priced in EUR by lookup key so dev mode can create them.
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
}

fn default_grace() -> i64 {
    3
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeature {
    kind: FeatureKind,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    #[serde(default)]
    limits: BTreeMap<String, u64>,
    #[serde(default)]
    prices: BTreeMap<String, RawPrice>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPrice {
    Id(String),
    Lookup {
        lookup_key: String,
        #[serde(default)]
        unit_amount: Option<i64>,
        #[serde(default)]
        id: Option<String>,
    },
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
        let features = raw
            .features
            .into_iter()
            .map(|(name, f)| Ok((FeatureName::parse(&name)?, f.kind)))
            .collect::<Result<BTreeMap<_, _>, CatalogError>>()?;

        let mut plans = BTreeMap::new();
        let mut seen_prices = std::collections::BTreeSet::new();
        for (name, raw_plan) in raw.plans {
            let plan_name = PlanName::parse(&name)?;
            let mut limits = BTreeMap::new();
            for (feature, limit) in raw_plan.limits {
                let feature = FeatureName::parse(&feature)?;
                if !features.contains_key(&feature) {
                    return Err(CatalogError::UnknownFeature {
                        plan: name,
                        feature: feature.to_string(),
                    });
                }
                limits.insert(feature, limit);
            }
            if let Some(missing) = features.keys().find(|f| !limits.contains_key(*f)) {
                return Err(CatalogError::MissingLimit {
                    plan: name,
                    feature: missing.to_string(),
                });
            }
            let mut prices = BTreeMap::new();
            for (currency, raw_price) in raw_plan.prices {
                let currency = Currency::parse(&currency)
                    .map_err(|_| CatalogError::InvalidCurrency(currency))?;
                let price = parse_price(&name, raw_price)?;
                for key in [
                    price.id.as_ref().map(|p| p.to_string()),
                    price.lookup_key.clone(),
                ]
                .into_iter()
                .flatten()
                {
                    if !seen_prices.insert(key.clone()) {
                        return Err(CatalogError::DuplicatePrice(key));
                    }
                }
                prices.insert(currency, price);
            }
            plans.insert(
                plan_name.clone(),
                Plan {
                    name: plan_name,
                    limits,
                    prices,
                },
            );
        }

        let free = plans
            .get(&Self::free_plan_name())
            .ok_or(CatalogError::MissingFreePlan)?;
        if !free.prices.is_empty() {
            return Err(CatalogError::FreePlanHasPrices);
        }
        for plan in plans.values() {
            if plan.name != Self::free_plan_name() && !plan.prices.contains_key(&default_currency) {
                return Err(CatalogError::MissingDefaultPrice {
                    plan: plan.name.to_string(),
                    currency: default_currency.to_string(),
                });
            }
        }

        Ok(Self {
            default_currency,
            grace_period_days: u32::try_from(raw.grace_period_days).unwrap_or(0),
            refund_policy: raw.refund_policy,
            downgrade: raw.downgrade,
            features,
            plans,
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
        self.plans
            .values()
            .find(|plan| plan.prices.values().any(|p| p.matches(id, lookup_key)))
    }

    /// Every price: (plan, currency, price), e.g. for dev mode to create
    /// the prices known only by lookup key.
    pub fn prices(&self) -> impl Iterator<Item = (&PlanName, &Currency, &Price)> {
        self.plans.values().flat_map(|plan| {
            plan.prices
                .iter()
                .map(move |(currency, price)| (&plan.name, currency, price))
        })
    }

    /// The price of a plan in a currency.
    pub fn price_for(&self, plan: &PlanName, currency: &Currency) -> Option<&Price> {
        self.plans.get(plan)?.prices.get(currency)
    }

    /// Records the concrete Stripe id of a price known by lookup key (dev mode).
    pub fn bind_price(
        &mut self,
        plan: &PlanName,
        currency: &Currency,
        id: PriceId,
    ) -> Result<(), CatalogError> {
        let price = self
            .plans
            .get_mut(plan)
            .and_then(|p| p.prices.get_mut(currency))
            .ok_or_else(|| CatalogError::NoSuchPrice {
                plan: plan.to_string(),
                currency: currency.to_string(),
            })?;
        price.id = Some(id);
        Ok(())
    }
}

fn parse_price(plan: &str, raw: RawPrice) -> Result<Price, CatalogError> {
    let invalid = |reason: String| CatalogError::InvalidPrice {
        plan: plan.to_owned(),
        reason,
    };
    let (id, lookup_key, unit_amount) = match raw {
        RawPrice::Id(id) => (Some(id), None, None),
        RawPrice::Lookup {
            lookup_key,
            unit_amount,
            id,
        } => (id, Some(lookup_key), unit_amount),
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
            catalog.price_for(&name("standard"), &usd).unwrap().id,
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
            .map(|(plan, currency, price)| {
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
            .bind_price(&name("pro"), &eur, created.clone())
            .unwrap();
        assert_eq!(
            catalog.plan_for_price(&created, None).unwrap().name,
            name("pro")
        );
        let usd = Currency::parse("usd").unwrap();
        assert_eq!(
            catalog
                .bind_price(&name("pro"), &usd, created)
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
}
