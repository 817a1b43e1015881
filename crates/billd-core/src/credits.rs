//! Credit packs' balance rules: prepaid units of a metered feature, bought
//! one-time through Checkout, credited once per payment, consumed after the
//! period's included quota and before overage, never reset by renewals; a
//! refund removes what is left of its pack.
//!
//! The customer's state keeps the packs bought (the [`CreditLedger`], keyed
//! by payment intent, which makes a duplicate or reordered webhook credit
//! once); what was consumed from each pack is a counter of the store, taken
//! in the consume's transaction ([`take`]), so consuming never rewrites the
//! state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::catalog::{FeatureName, PackName};

/// Metadata keys billd puts on a pack's Checkout session (and its payment
/// intent): what was bought, so the grant does not depend on a catalog
/// edited since.
pub const METADATA_PACK: &str = "billd_credit_pack";
/// The feature of the pack bought.
pub const METADATA_FEATURE: &str = "billd_credit_feature";
/// The units of the pack bought.
pub const METADATA_AMOUNT: &str = "billd_credit_amount";

/// One pack bought, by its payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The feature its units are of (unknown while only its refund is known).
    pub feature: Option<FeatureName>,
    /// The pack's name in the catalog at purchase.
    pub pack: Option<PackName>,
    /// Units the pack brought (0 until its payment is known as paid).
    pub amount: u64,
    /// Its payment is known as paid.
    pub paid: bool,
    /// Its payment was refunded: what is left is gone.
    pub refunded: bool,
    /// When the session completed (`created` of the event): consumption is
    /// first bought, first used.
    pub purchased_at: i64,
}

impl Grant {
    /// Whether its units can be consumed.
    pub fn is_live(&self) -> bool {
        self.paid && !self.refunded
    }
}

/// A live pack to consume from: its payment (the store's counter of what
/// was used) and its units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditSource {
    /// The payment intent id.
    pub payment: String,
    /// The units the pack brought.
    pub amount: u64,
}

/// Every pack of a customer, by payment intent id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditLedger {
    grants: BTreeMap<String, Grant>,
}

/// How a consume splits over the included quota, credits and overage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    /// Units within the period's included quota.
    pub included: u64,
    /// Units taken from credits.
    pub credits: u64,
    /// Units of overage.
    pub overage: u64,
}

/// What a pack was bought as: the session's metadata and completion time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purchase {
    /// The feature.
    pub feature: FeatureName,
    /// The pack's name.
    pub pack: PackName,
    /// Its units.
    pub amount: u64,
    /// When it was paid.
    pub at: i64,
}

impl Purchase {
    /// The purchase a completed session's metadata tells, when it is a
    /// pack's (all three keys present and valid).
    pub fn from_metadata(metadata: &BTreeMap<String, String>, at: i64) -> Option<Self> {
        Some(Self {
            pack: PackName::parse(metadata.get(METADATA_PACK)?).ok()?,
            feature: FeatureName::parse(metadata.get(METADATA_FEATURE)?).ok()?,
            amount: metadata
                .get(METADATA_AMOUNT)?
                .parse()
                .ok()
                .filter(|a| *a > 0)?,
            at,
        })
    }
}

impl CreditLedger {
    /// No packs.
    pub fn new() -> Self {
        Self::default()
    }

    /// No pack was ever bought or refunded.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    fn grant(&mut self, payment: &str) -> &mut Grant {
        self.grants
            .entry(payment.to_owned())
            .or_insert_with(|| Grant {
                feature: None,
                pack: None,
                amount: 0,
                paid: false,
                refunded: false,
                purchased_at: i64::MAX,
            })
    }

    /// The payment of a pack was paid: credited once, whatever how often
    /// (or after its refund) this is told. True the first time.
    pub fn paid(&mut self, payment: &str, purchase: &Purchase) -> bool {
        let grant = self.grant(payment);
        let first = !grant.paid;
        if first {
            grant.feature = Some(purchase.feature.clone());
            grant.pack = Some(purchase.pack.clone());
            grant.amount = purchase.amount;
            grant.paid = true;
        }
        // Duplicates of the same completion may carry other seconds; the
        // earliest orders consumption, whatever the delivery order.
        grant.purchased_at = grant.purchased_at.min(purchase.at);
        first
    }

    /// The payment was refunded: what is left of its pack goes (told before
    /// the payment, the pack never counts). True the first time.
    pub fn refunded(&mut self, payment: &str) -> bool {
        let grant = self.grant(payment);
        let first = !grant.refunded;
        grant.refunded = true;
        first
    }

    /// Whether `payment` bought a pack (a refund of it is the pack's, not
    /// the subscription's).
    pub fn is_pack_payment(&self, payment: &str) -> bool {
        self.grants.get(payment).is_some_and(|g| g.paid)
    }

    /// The live packs of `feature`, first bought first.
    pub fn sources(&self, feature: &FeatureName) -> Vec<CreditSource> {
        let mut live: Vec<(&String, &Grant)> = self
            .grants
            .iter()
            .filter(|(_, g)| g.is_live() && g.feature.as_ref() == Some(feature))
            .collect();
        live.sort_by_key(|(payment, g)| (g.purchased_at, *payment));
        live.into_iter()
            .map(|(payment, g)| CreditSource {
                payment: payment.clone(),
                amount: g.amount,
            })
            .collect()
    }

    /// Units of `feature` that can be consumed from credits, `used` giving
    /// what was consumed from each payment's pack.
    pub fn balance(&self, feature: &FeatureName, used: impl Fn(&str) -> u64) -> u64 {
        balance(&self.sources(feature), used)
    }

    /// Every grant by payment.
    pub fn grants(&self) -> &BTreeMap<String, Grant> {
        &self.grants
    }
}

/// What is left of `sources`, `used` giving what was consumed from each.
pub fn balance(sources: &[CreditSource], used: impl Fn(&str) -> u64) -> u64 {
    sources
        .iter()
        .map(|s| s.amount.saturating_sub(used(&s.payment)))
        .fold(0, u64::saturating_add)
}

/// Takes `units` from `sources`, first bought first: the units to add to
/// each pack's counter (only packs taken from), at most the balance in all.
pub fn take(
    sources: &[CreditSource],
    used: impl Fn(&str) -> u64,
    units: u64,
) -> Vec<(String, u64)> {
    let mut wanted = units;
    let mut taken = Vec::new();
    for source in sources {
        if wanted == 0 {
            break;
        }
        let from_it = source
            .amount
            .saturating_sub(used(&source.payment))
            .min(wanted);
        if from_it > 0 {
            taken.push((source.payment.clone(), from_it));
            wanted -= from_it;
        }
    }
    taken
}

/// Splits a consume of `amount` with `included_left` of the quota,
/// `credits` of balance and `overage_left` of overage: included first,
/// then credits, then overage; `None` when it does not fit.
pub fn split(amount: u64, included_left: u64, credits: u64, overage_left: u64) -> Option<Split> {
    let included = amount.min(included_left);
    let rest = amount - included;
    let from_credits = rest.min(credits);
    let overage = rest - from_credits;
    (overage <= overage_left).then_some(Split {
        included,
        credits: from_credits,
        overage,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What a payment's webhooks tell: paid, or refunded.
    #[derive(Debug, Clone, Copy)]
    enum Told {
        Paid,
        Refunded,
    }

    /// Payments 0..4 with their pack sizes, and a sequence of what is told
    /// about them, duplicates included, in any order.
    fn told() -> impl Strategy<Value = Vec<(usize, Told)>> {
        prop::collection::vec(
            (
                0usize..4,
                prop_oneof![Just(Told::Paid), Just(Told::Refunded)],
            ),
            0..30,
        )
    }

    const PACKS: [u64; 4] = [100, 50, 10, 1];

    fn feature() -> FeatureName {
        FeatureName::parse("generations").unwrap()
    }

    fn purchase(payment: usize) -> Purchase {
        Purchase {
            feature: feature(),
            pack: PackName::parse("pack").unwrap(),
            amount: PACKS[payment],
            // Bought in payment order, whatever the order told.
            at: 1_000 + payment as i64,
        }
    }

    fn apply(ledger: &mut CreditLedger, (payment, what): (usize, Told)) {
        let key = format!("pi_{payment}");
        match what {
            Told::Paid => {
                ledger.paid(&key, &purchase(payment));
            }
            Told::Refunded => {
                ledger.refunded(&key);
            }
        }
    }

    /// A ledger with the store's counters of what each pack gave.
    #[derive(Default)]
    struct Books {
        ledger: CreditLedger,
        used: BTreeMap<String, u64>,
    }

    impl Books {
        fn used(&self) -> impl Fn(&str) -> u64 + '_ {
            |p| self.used.get(p).copied().unwrap_or(0)
        }

        fn balance(&self) -> u64 {
            self.ledger.balance(&feature(), self.used())
        }

        fn take(&mut self, units: u64) -> u64 {
            let taken = take(&self.ledger.sources(&feature()), self.used(), units);
            let mut total = 0;
            for (payment, n) in taken {
                *self.used.entry(payment).or_default() += n;
                total += n;
            }
            total
        }
    }

    proptest! {
        #[test]
        fn a_pack_is_credited_once_whatever_the_duplicates_and_the_order(
            events in told(),
            seed in any::<u64>(),
        ) {
            let mut in_order = CreditLedger::new();
            for e in &events {
                apply(&mut in_order, *e);
            }
            // The same facts in another order, each told twice.
            let mut shuffled: Vec<_> = events.iter().chain(events.iter()).copied().collect();
            let n = shuffled.len();
            for i in 0..n {
                let j = (seed.wrapping_mul(i as u64 + 1).wrapping_add(17) % (n as u64)) as usize;
                shuffled.swap(i, j);
            }
            let mut reordered = CreditLedger::new();
            for e in &shuffled {
                apply(&mut reordered, *e);
            }
            let expected: u64 = (0..4)
                .filter(|p| events.iter().any(|(q, t)| q == p && matches!(t, Told::Paid)))
                .filter(|p| !events.iter().any(|(q, t)| q == p && matches!(t, Told::Refunded)))
                .map(|p| PACKS[p])
                .sum();
            prop_assert_eq!(in_order.balance(&feature(), |_| 0), expected);
            prop_assert_eq!(reordered.balance(&feature(), |_| 0), expected);
            // The same state whatever the order: consumption order included.
            prop_assert_eq!(&in_order, &reordered);
        }

        #[test]
        fn consumption_never_takes_more_than_was_credited_and_a_refund_removes_only_what_is_left(
            events in told(),
            takes in prop::collection::vec(0u64..40, 0..10),
        ) {
            let mut books = Books::default();
            let mut taken = 0u64;
            for (i, e) in events.iter().enumerate() {
                apply(&mut books.ledger, *e);
                if let Some(units) = takes.get(i) {
                    let before = books.balance();
                    let got = books.take(*units);
                    prop_assert_eq!(got, (*units).min(before));
                    prop_assert_eq!(books.balance(), before - got);
                    taken += got;
                }
            }
            for (payment, used) in &books.used {
                let grant = &books.ledger.grants()[payment];
                prop_assert!(*used <= grant.amount);
            }
            prop_assert_eq!(books.used.values().sum::<u64>(), taken);
            let live_left: u64 = books
                .ledger
                .grants()
                .iter()
                .filter(|(_, g)| g.is_live())
                .map(|(p, g)| g.amount - books.used.get(p).copied().unwrap_or(0))
                .sum();
            prop_assert_eq!(books.balance(), live_left);
        }

        #[test]
        fn a_consume_takes_the_quota_then_credits_then_overage_and_nothing_twice(
            amount in 1u64..200,
            included_left in 0u64..100,
            credits in 0u64..100,
            overage_left in 0u64..100,
        ) {
            match split(amount, included_left, credits, overage_left) {
                Some(s) => {
                    prop_assert_eq!(s.included + s.credits + s.overage, amount);
                    prop_assert!(s.included <= included_left);
                    prop_assert!(s.credits <= credits);
                    prop_assert!(s.overage <= overage_left);
                    if s.credits > 0 {
                        prop_assert_eq!(s.included, included_left);
                    }
                    if s.overage > 0 {
                        prop_assert_eq!(s.credits, credits);
                    }
                }
                None => prop_assert!(amount > included_left + credits + overage_left),
            }
        }
    }

    #[test]
    fn a_refund_keeps_what_was_consumed_and_removes_the_rest_of_its_pack_only() {
        let mut books = Books::default();
        books.ledger.paid("pi_a", &purchase(0));
        books.ledger.paid("pi_b", &purchase(1));
        assert_eq!(books.take(120), 120);
        assert_eq!(books.used.get("pi_a"), Some(&100), "the older pack first");
        books.ledger.refunded("pi_b");
        assert_eq!(books.balance(), 0);
        assert_eq!(books.used.get("pi_b"), Some(&20));
        assert!(!books.ledger.paid("pi_b", &purchase(1)));
        assert_eq!(
            books.balance(),
            0,
            "a late duplicate of the payment credits nothing"
        );
    }

    #[test]
    fn a_purchase_is_read_from_the_sessions_metadata_only_when_complete() {
        let metadata: BTreeMap<String, String> = [
            (METADATA_PACK, "gen_100"),
            (METADATA_FEATURE, "generations"),
            (METADATA_AMOUNT, "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let purchase = Purchase::from_metadata(&metadata, 7).unwrap();
        assert_eq!((purchase.amount, purchase.at), (100, 7));
        for key in [METADATA_PACK, METADATA_FEATURE, METADATA_AMOUNT] {
            let mut partial = metadata.clone();
            partial.remove(key);
            assert_eq!(Purchase::from_metadata(&partial, 7), None, "{key}");
        }
        let mut zero = metadata;
        zero.insert(METADATA_AMOUNT.to_owned(), "0".to_owned());
        assert_eq!(Purchase::from_metadata(&zero, 7), None);
    }
}
