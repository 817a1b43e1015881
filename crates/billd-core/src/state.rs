//! A customer's billing state as billd knows it, persisted as one JSON
//! document per customer.
//!
//! Every part of the state is built so that applying the same set of events
//! in any order, with duplicates, gives the same value: snapshots keep the
//! content of the highest [`Stamp`], facts are merged with max/min/or, and
//! collections are maps keyed by Stripe object id.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Plan, PlanName, RefundPolicy};
use crate::credits::CreditLedger;
use crate::event::{
    CheckoutSession, Discount, Dispute, Invoice, PaymentMethod, Subscription, SubscriptionStatus,
};
use crate::ids::{
    ChargeId, CheckoutSessionId, DiscountId, DisputeId, EventId, InvoiceId, PaymentIntentId,
    PaymentMethodId, StripeCustomerId, StripeSubscriptionId,
};
use crate::money::Money;

/// The order of two observations of the same Stripe object.
///
/// Compared field by field, in this order, which is billd's documented
/// precedence for snapshots:
/// 1. `created`: the newer event wins;
/// 2. `authoritative`: in the same second, an object re-fetched from the
///    Stripe API (see [`crate::Effect::RefetchSubscription`]) beats any
///    webhook payload;
/// 3. `observed_ns`: for two objects billd got from the API in the same
///    second, the one it observed later wins: a re-fetch read before a
///    change billd made itself must not beat that change's answer, whatever
///    their rounds (0 for webhooks, and for snapshots stored before billd
///    recorded it);
/// 4. `rank`: for webhook payloads in the same second, the state that
///    normally comes later in the object's lifecycle wins (for subscriptions
///    [`SubscriptionStatus::lifecycle_rank`]: e.g. `past_due` beats
///    `active`, `canceled` beats everything); for re-fetches of the same
///    tie, the later round (fetched later) wins whatever it says;
/// 5. `event_id`: finally the lexicographically greater event id, which is
///    arbitrary but the same on every replica and every replay.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// `event.created` in unix seconds.
    pub created: i64,
    /// Re-fetched from the API rather than delivered by webhook.
    pub authoritative: bool,
    /// For an authoritative snapshot, when billd observed it (see
    /// [`crate::Event::observed_ns`]); 0 otherwise.
    #[serde(default)]
    pub observed_ns: u64,
    /// Lifecycle rank of the observed state; for a re-fetch, its round.
    pub rank: u8,
    /// The event that carried the observation.
    pub event_id: EventId,
}

/// A value together with the stamp of the observation it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latest<T> {
    /// Which observation.
    pub stamp: Stamp,
    /// What it said.
    pub value: T,
}

impl<T: Clone> Latest<T> {
    /// Keeps the observation with the higher stamp; true if `value` was taken.
    pub fn merge(slot: &mut Option<Latest<T>>, stamp: Stamp, value: &T) -> bool {
        match slot {
            Some(current) if current.stamp >= stamp => false,
            _ => {
                *slot = Some(Latest {
                    stamp,
                    value: value.clone(),
                });
                true
            }
        }
    }
}

/// A Stripe customer linked to this billd customer.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StripeCustomerLink {
    /// When Stripe created the customer, once known.
    pub created: Option<i64>,
    /// Deleted at Stripe: terminal; the link no longer grants anything.
    pub deleted: bool,
    /// The latest customer snapshot's email.
    pub email: Option<String>,
    /// The latest customer snapshot's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Stamp of the customer snapshot `email`/`metadata` came from.
    pub stamp: Option<Stamp>,
}

/// One subscription as billd knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionState {
    /// The latest applied snapshot (the watermark is `stamp`).
    pub snapshot: Subscription,
    /// The catalog plan its price resolved to when applied (none: unknown price).
    pub plan: Option<PlanName>,
    /// The watermark: stamp of the snapshot in `snapshot`.
    pub stamp: Stamp,
    /// `customer.subscription.deleted` was applied: terminal.
    pub deleted: bool,
    /// When the subscription became `past_due` (the first `past_due`
    /// snapshot after the last snapshot in any other status); none unless
    /// the current status is `past_due`.
    pub past_due_since: Option<i64>,
    /// Stamps of `past_due` snapshots newer than `last_not_past_due`; kept
    /// so that `past_due_since` does not depend on delivery order.
    pub past_due_seen: BTreeSet<Stamp>,
    /// Stamp of the newest snapshot seen in a status other than `past_due`.
    pub last_not_past_due: Option<Stamp>,
    /// The plan each recent billing period started on (by period start):
    /// the plan of the oldest snapshot seen for that period. Only the three
    /// latest periods are kept.
    #[serde(default)]
    pub period_plans: BTreeMap<i64, PeriodPlan>,
}

/// The plan a billing period started on, as first observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodPlan {
    /// The oldest snapshot seen with this period.
    pub stamp: Stamp,
    /// Its plan.
    pub plan: Option<PlanName>,
}

/// How many billing periods' starting plans a subscription keeps.
const PERIOD_PLANS_KEPT: usize = 3;

impl SubscriptionState {
    /// Records the plan a snapshot shows for its period, stale or not:
    /// the oldest observation per period wins, whatever the delivery order.
    pub(crate) fn observe_period_plan(
        &mut self,
        stamp: &Stamp,
        period_start: Option<i64>,
        plan: Option<&PlanName>,
    ) {
        let Some(start) = period_start else { return };
        let older = self
            .period_plans
            .get(&start)
            .is_none_or(|seen| *stamp < seen.stamp);
        if older {
            self.period_plans.insert(
                start,
                PeriodPlan {
                    stamp: stamp.clone(),
                    plan: plan.cloned(),
                },
            );
        }
        // Dropping all but the latest periods commutes with adding: a period
        // once outside the latest three can never re-enter them.
        while self.period_plans.len() > PERIOD_PLANS_KEPT {
            self.period_plans.pop_first();
        }
    }

    /// The subscription may still bill the customer (not deleted, not terminal).
    pub fn is_live(&self) -> bool {
        !self.deleted && !self.snapshot.status.is_terminal()
    }

    /// Records a snapshot's status for `past_due_since`, stale or not.
    pub(crate) fn observe_status(&mut self, stamp: &Stamp, status: SubscriptionStatus) {
        if status == SubscriptionStatus::PastDue {
            if self
                .last_not_past_due
                .as_ref()
                .is_none_or(|floor| stamp > floor)
            {
                self.past_due_seen.insert(stamp.clone());
            }
        } else if self
            .last_not_past_due
            .as_ref()
            .is_none_or(|floor| stamp > floor)
        {
            self.last_not_past_due = Some(stamp.clone());
            self.past_due_seen.retain(|s| s > stamp);
        }
        self.past_due_since =
            if self.snapshot.status == SubscriptionStatus::PastDue && !self.deleted {
                self.past_due_seen.iter().next().map(|s| s.created)
            } else {
                None
            };
    }
}

/// A Checkout session's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutState {
    /// The latest session payload.
    pub session: Latest<CheckoutSession>,
    /// `checkout.session.completed` seen (wins over expired).
    pub completed: bool,
    /// `checkout.session.expired` seen.
    pub expired: bool,
}

/// One invoice as billd knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceState {
    /// The latest invoice payload.
    pub invoice: Latest<Invoice>,
    /// `invoice.paid` or `invoice.payment_succeeded` seen.
    pub paid: bool,
    /// `invoice.finalized` seen.
    pub finalized: bool,
    /// Highest `attempt_count` of a failed payment.
    pub failed_attempts: u32,
    /// The hosted URL from the latest `invoice.payment_action_required`.
    pub action_required: Option<Latest<Option<String>>>,
}

impl InvoiceState {
    /// Still waiting for the customer to confirm a payment (3-D Secure).
    pub fn needs_action(&self) -> bool {
        self.action_required.is_some() && !self.paid
    }
}

/// Refunds of one charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundState {
    /// The charged amount.
    pub amount: Money,
    /// Total refunded (the highest total seen).
    pub amount_refunded: i64,
    /// Fully refunded.
    pub refunded: bool,
    /// `created` of the first event that reported a full refund.
    pub fully_refunded_at: Option<i64>,
    /// The Stripe customer.
    pub customer: Option<StripeCustomerId>,
    /// The charge's payment intent (a credit pack's refund is not the
    /// subscription's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_intent: Option<PaymentIntentId>,
}

/// One dispute as billd knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisputeState {
    /// The dispute from the winning observation: a closed status beats any
    /// open one whatever their `created`, then the higher stamp.
    pub dispute: Dispute,
    /// Whether `dispute.status` is closed.
    pub closed: bool,
    /// Stamp of the winning observation.
    pub stamp: Stamp,
    /// Earliest event seen about the dispute.
    pub first_seen: i64,
    /// Earliest event that reported it closed.
    pub closed_at: Option<i64>,
}

/// A discount (coupon or promotion code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscountState {
    /// The latest discount payload.
    pub discount: Latest<Discount>,
    /// `customer.discount.deleted` applied: terminal.
    pub deleted: bool,
}

/// Why billd revoked paid access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevocationCause {
    /// A dispute was lost.
    DisputeLost,
    /// A charge was fully refunded (and the policy revokes).
    FullRefund,
}

/// A revocation of paid access: subscriptions created at or before `at` no
/// longer grant their plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// When (the event's `created`).
    pub at: i64,
    /// Why.
    pub cause: RevocationCause,
}

/// Everything billd knows about one customer's billing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CustomerState {
    /// Stripe customers seen for this customer (normally one).
    pub stripe_customers: BTreeMap<StripeCustomerId, StripeCustomerLink>,
    /// Subscriptions by id (history kept; see [`CustomerState::current_subscription`]).
    pub subscriptions: BTreeMap<StripeSubscriptionId, SubscriptionState>,
    /// Checkout sessions by id.
    pub checkouts: BTreeMap<CheckoutSessionId, CheckoutState>,
    /// Invoices by id.
    pub invoices: BTreeMap<InvoiceId, InvoiceState>,
    /// Refunds by charge.
    pub refunds: BTreeMap<ChargeId, RefundState>,
    /// Disputes by id.
    pub disputes: BTreeMap<DisputeId, DisputeState>,
    /// Discounts by id.
    pub discounts: BTreeMap<DiscountId, DiscountState>,
    /// Payment methods by id (card expiry for warnings).
    pub payment_methods: BTreeMap<PaymentMethodId, Latest<PaymentMethod>>,
    /// Keys of fact events already applied (exactly-once).
    pub applied_facts: BTreeSet<String>,
    /// Credit packs bought, by payment intent.
    #[serde(default, skip_serializing_if = "CreditLedger::is_empty")]
    pub credits: CreditLedger,
}

impl CustomerState {
    /// The linked Stripe customer: the most recently created one not deleted.
    pub fn stripe_customer(&self) -> Option<&StripeCustomerId> {
        self.stripe_customers
            .iter()
            .filter(|(_, link)| !link.deleted)
            .max_by_key(|(id, link)| (link.created, *id))
            .map(|(id, _)| id)
    }

    /// The subscription that decides access. A live subscription in a
    /// paying status (active, trialing, past_due) beats any other live one,
    /// so that a second, still `incomplete` checkout does not take access
    /// away from the subscription being paid; then live beats ended; then
    /// the most recently created wins.
    pub fn current_subscription(&self) -> Option<&SubscriptionState> {
        self.subscriptions.values().max_by_key(|s| {
            let paying = matches!(
                s.snapshot.status,
                SubscriptionStatus::Active
                    | SubscriptionStatus::Trialing
                    | SubscriptionStatus::PastDue
            );
            let class = match (s.is_live(), paying) {
                (true, true) => 2,
                (true, false) => 1,
                (false, _) => 0,
            };
            (class, s.snapshot.created, &s.snapshot.id)
        })
    }

    /// Some dispute is open: access is frozen.
    pub fn has_open_dispute(&self) -> bool {
        self.disputes.values().any(|d| !d.closed)
    }

    /// The latest revocation of paid access under the catalog's policy.
    pub fn revocation(&self, catalog: &Catalog) -> Option<Revocation> {
        let lost = self
            .disputes
            .values()
            .filter(|d| d.closed && d.dispute.status == crate::event::DisputeStatus::Lost)
            .map(|d| Revocation {
                at: d.closed_at.unwrap_or(d.stamp.created),
                cause: RevocationCause::DisputeLost,
            });
        let refunded = self.refunds.values().filter_map(|r| {
            let of_a_pack = r
                .payment_intent
                .as_ref()
                .is_some_and(|pi| self.credits.is_pack_payment(pi.as_str()));
            (catalog.refund_policy() == RefundPolicy::RevokeAndCancel && !of_a_pack)
                .then_some(r.fully_refunded_at)
                .flatten()
                .map(|at| Revocation {
                    at,
                    cause: RevocationCause::FullRefund,
                })
        });
        lost.chain(refunded)
            .max_by_key(|r| (r.at, r.cause == RevocationCause::DisputeLost))
    }

    /// The subscription's paid access was revoked (created at or before a revocation).
    pub fn is_revoked(&self, subscription: &SubscriptionState, catalog: &Catalog) -> bool {
        self.revocation(catalog)
            .is_some_and(|r| subscription.snapshot.created <= r.at)
    }

    /// Live subscriptions whose access was revoked: billd asks Stripe to cancel them.
    pub fn revoked_live_subscriptions(
        &self,
        catalog: &Catalog,
    ) -> BTreeMap<StripeSubscriptionId, RevocationCause> {
        let Some(revocation) = self.revocation(catalog) else {
            return BTreeMap::new();
        };
        self.subscriptions
            .values()
            .filter(|s| s.is_live() && s.snapshot.created <= revocation.at)
            .map(|s| (s.snapshot.id.clone(), revocation.cause))
            .collect()
    }

    /// The invoice awaiting customer action (3-D Secure), the newest first.
    /// An invoice of a subscription that has ended no longer asks for action.
    pub fn pending_action(&self) -> Option<(&InvoiceId, &InvoiceState)> {
        self.invoices
            .iter()
            .filter(|(_, inv)| inv.needs_action())
            .filter(|(_, inv)| {
                inv.invoice
                    .value
                    .subscription
                    .as_ref()
                    .and_then(|id| self.subscriptions.get(id))
                    .is_none_or(SubscriptionState::is_live)
            })
            .max_by_key(|(id, inv)| (inv.invoice.value.created, *id))
    }

    /// The most recent invoice.
    pub fn last_invoice(&self) -> Option<&InvoiceState> {
        self.invoices
            .iter()
            .max_by_key(|(id, inv)| (inv.invoice.value.created, *id))
            .map(|(_, inv)| inv)
    }
}

/// Resolves a subscription snapshot's plan: by price id or lookup key,
/// else by `metadata[billd_plan]` when it names a catalog plan.
pub fn resolve_plan<'c>(catalog: &'c Catalog, subscription: &Subscription) -> Option<&'c Plan> {
    let by_price = subscription
        .price
        .as_ref()
        .and_then(|p| catalog.plan_for_price(&p.id, p.lookup_key.as_deref()));
    by_price.or_else(|| {
        subscription
            .metadata
            .get(crate::event::METADATA_PLAN)
            .and_then(|raw| PlanName::parse(raw).ok())
            .and_then(|name| catalog.plan(&name))
    })
}
