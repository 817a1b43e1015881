//! Credit packs' balance arithmetic: prepaid units of a metered feature,
//! bought one-time, credited once per payment, consumed after the period's
//! included quota and before overage, never reset by renewals; a refund
//! removes what is left of its pack.
//!
//! The rules only: the catalog does not sell packs yet (`[credit_packs]` is
//! refused with `catalog_unsupported`), so nothing here is reachable from
//! the API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One pack bought: its units, what of them was consumed, whether its
/// payment was refunded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Units the pack brought (0 until its payment is known as paid).
    pub amount: u64,
    /// Units consumed from it.
    pub used: u64,
    /// Its payment was refunded: what is left is gone.
    pub refunded: bool,
    /// Its payment is known as paid.
    pub paid: bool,
}

impl Grant {
    /// What can still be consumed from it.
    pub fn left(&self) -> u64 {
        if self.refunded || !self.paid {
            0
        } else {
            self.amount.saturating_sub(self.used)
        }
    }
}

/// One feature's packs, by payment (the key that makes crediting once
/// whatever the duplicates), oldest first by key order of purchase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditLedger {
    grants: BTreeMap<String, Grant>,
    /// Purchase order of the payments (consumption is first in, first out).
    order: Vec<String>,
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

impl CreditLedger {
    /// No packs.
    pub fn new() -> Self {
        Self::default()
    }

    fn grant(&mut self, payment: &str) -> &mut Grant {
        if !self.grants.contains_key(payment) {
            self.order.push(payment.to_owned());
        }
        self.grants.entry(payment.to_owned()).or_default()
    }

    /// The payment of a pack of `amount` units is paid: credited once,
    /// whatever how often (or after its refund) this is told.
    pub fn paid(&mut self, payment: &str, amount: u64) {
        let grant = self.grant(payment);
        grant.amount = amount;
        grant.paid = true;
    }

    /// The payment was refunded: what is left of its pack goes (told before
    /// the payment, the pack never counts).
    pub fn refunded(&mut self, payment: &str) {
        self.grant(payment).refunded = true;
    }

    /// Units that can be consumed from credits now.
    pub fn balance(&self) -> u64 {
        self.grants
            .values()
            .map(Grant::left)
            .fold(0, u64::saturating_add)
    }

    /// Takes `units` from the packs, oldest first; the units taken (at most
    /// the balance).
    pub fn take(&mut self, units: u64) -> u64 {
        let mut wanted = units;
        for payment in &self.order {
            if wanted == 0 {
                break;
            }
            if let Some(grant) = self.grants.get_mut(payment) {
                let from_it = grant.left().min(wanted);
                grant.used += from_it;
                wanted -= from_it;
            }
        }
        units - wanted
    }

    /// A pack's grant, by payment.
    pub fn grant_of(&self, payment: &str) -> Option<&Grant> {
        self.grants.get(payment)
    }
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

    fn apply(ledger: &mut CreditLedger, (payment, what): (usize, Told)) {
        let key = format!("pi_{payment}");
        match what {
            Told::Paid => ledger.paid(&key, PACKS[payment]),
            Told::Refunded => ledger.refunded(&key),
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
            prop_assert_eq!(in_order.balance(), expected);
            prop_assert_eq!(reordered.balance(), expected);
        }

        #[test]
        fn consumption_never_takes_more_than_was_credited_and_a_refund_removes_only_what_is_left(
            events in told(),
            takes in prop::collection::vec(0u64..40, 0..10),
        ) {
            let mut ledger = CreditLedger::new();
            let mut taken = 0u64;
            for (i, e) in events.iter().enumerate() {
                apply(&mut ledger, *e);
                if let Some(units) = takes.get(i) {
                    let before = ledger.balance();
                    let got = ledger.take(*units);
                    prop_assert_eq!(got, (*units).min(before));
                    prop_assert_eq!(ledger.balance(), before - got);
                    taken += got;
                }
            }
            let credited: u64 = (0..4)
                .filter_map(|p| ledger.grant_of(&format!("pi_{p}")))
                .filter(|g| g.paid)
                .map(|g| g.amount)
                .sum();
            let used: u64 = (0..4)
                .filter_map(|p| ledger.grant_of(&format!("pi_{p}")))
                .map(|g| {
                    assert!(g.used <= g.amount);
                    g.used
                })
                .sum();
            prop_assert_eq!(used, taken);
            prop_assert!(taken <= credited);
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
        let mut ledger = CreditLedger::new();
        ledger.paid("pi_a", 100);
        ledger.paid("pi_b", 50);
        assert_eq!(ledger.take(120), 120);
        ledger.refunded("pi_b");
        assert_eq!(ledger.balance(), 0);
        assert_eq!(ledger.grant_of("pi_b").map(|g| g.used), Some(20));
        ledger.paid("pi_b", 50);
        assert_eq!(
            ledger.balance(),
            0,
            "a late duplicate of the payment credits nothing"
        );
    }
}
