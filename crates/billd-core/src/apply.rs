//! `apply`: one event in, the next state plus the effects and audit rows out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::{access_at, Access};
use crate::catalog::Catalog;
use crate::credits::Purchase;
use crate::event::{
    CheckoutChange, CheckoutSession, DiscountChange, Event, EventKind, InvoiceChange, Subscription,
    SubscriptionChange, SubscriptionStatus,
};
use crate::ids::{StripeCustomerId, StripeSubscriptionId};
use crate::money::Money;
use crate::state::{
    resolve_plan, CheckoutState, CustomerState, DiscountState, DisputeState, InvoiceState, Latest,
    RefundState, RevocationCause, Stamp, StripeCustomerLink, SubscriptionState,
};

/// Emails billd sends (rendered and delivered by the notifications worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailTemplate {
    /// A subscription became active or trialing.
    SubscriptionConfirmed,
    /// An invoice was paid.
    PaymentSucceeded,
    /// A payment attempt failed.
    PaymentFailed,
    /// A payment needs the customer's confirmation (3-D Secure).
    ActionRequired,
    /// The trial ends soon.
    TrialEnding,
    /// Cancellation at period end was requested.
    CancellationScheduled,
    /// The subscription ended.
    SubscriptionCanceled,
    /// The plan changed.
    PlanChanged,
    /// Money was refunded.
    RefundIssued,
    /// A chargeback was opened; access is frozen meanwhile.
    ChargebackNotice,
    /// An invoice was finalized.
    InvoiceFinalized,
    /// A renewal is coming up.
    RenewalReminder,
    /// The card on file expires soon.
    CardExpiring,
    /// The grace period after a failed payment ends soon.
    GraceEnding,
    /// The grace period after a failed payment ended: paid access is
    /// suspended until the payment goes through.
    AccessSuspended,
}

/// Alerts for the operator (`BILLD_ADMIN_EMAIL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A dispute was opened.
    DisputeOpened,
    /// A dispute was closed (won or lost).
    DisputeClosed,
    /// A subscription's price is not in the catalog.
    UnknownPrice,
    /// The Stripe customer was deleted at Stripe.
    StripeCustomerDeleted,
    /// Inbox events were dead-lettered (retries exhausted).
    EventsDead,
    /// Outbox rows (emails, alerts, Stripe calls) were dead-lettered.
    OutboxDead,
    /// Many webhook deliveries failed signature verification in a short time.
    SignatureFailures,
    /// The share of failed payments crossed its threshold.
    PaymentFailureRate,
    /// No webhook arrived for a long time although renewals were due.
    WebhookSilence,
    /// Reconciliation found billd's state drifted from Stripe's.
    ReconcileDrift,
}

/// Why billd asks Stripe to cancel a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A dispute was lost: paid access stays revoked.
    DisputeLost,
    /// The charge was refunded in full (policy `revoke_and_cancel`).
    FullRefund,
    /// The customer deleted their account in the app.
    AccountDeleted,
}

impl From<RevocationCause> for CancelReason {
    fn from(cause: RevocationCause) -> Self {
        match cause {
            RevocationCause::DisputeLost => CancelReason::DisputeLost,
            RevocationCause::FullRefund => CancelReason::FullRefund,
        }
    }
}

/// A side effect, written to the outbox in the same transaction as the state.
///
/// `dedupe_key` is stable: the same effect decided twice (a replay, another
/// delivery order) has the same key and is delivered once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Effect {
    /// Send the customer an email.
    Email {
        /// Which email.
        template: EmailTemplate,
        /// Outbox dedupe key.
        dedupe_key: String,
        /// Template values (amounts already formatted, urls, ids).
        params: BTreeMap<String, String>,
    },
    /// Alert the operator.
    AdminAlert {
        /// Which alert.
        alert: AlertKind,
        /// Outbox dedupe key.
        dedupe_key: String,
        /// A one-line human description.
        message: String,
    },
    /// Cancel the subscription at Stripe now.
    CancelSubscription {
        /// Which subscription.
        subscription: StripeSubscriptionId,
        /// Why.
        reason: CancelReason,
        /// Outbox dedupe key.
        dedupe_key: String,
    },
    /// Two snapshots of the subscription share a second: fetch it from the
    /// Stripe API and feed it back as an [`Event`] with `authoritative: true`,
    /// `created` = `tie_created` and `refetch_round` = `round`
    /// (`billd_stripe::events::refetched_subscription_event` builds it).
    /// Stamped at the tied second, the fetched object settles the tie and
    /// nothing else: any webhook created later still wins, so billd's clock
    /// never competes with Stripe's, and a fetch that lands after a newer
    /// webhook is stale. Until the re-fetch succeeds the precedence
    /// documented on [`Stamp`] holds.
    ///
    /// Every tie found before a re-fetch of that second is applied shares
    /// round 0 and its dedupe key: one re-fetch. A webhook of the same
    /// second that arrives after it (a test clock keeps Stripe's time still;
    /// the fetch may also have raced the change) asks for the next round,
    /// up to [`MAX_REFETCH_ROUNDS`].
    RefetchSubscription {
        /// Which subscription.
        subscription: StripeSubscriptionId,
        /// The tied second.
        tie_created: i64,
        /// Which re-fetch of this tie (0 for the first).
        #[serde(default)]
        round: u32,
        /// Outbox dedupe key.
        dedupe_key: String,
    },
    /// Delete or anonymise the Stripe customer of a deleted account. It runs
    /// only once the account's `CancelSubscription` effects (`after`) are
    /// done, so no subscription can outlive the customer unnoticed.
    DeleteStripeCustomer {
        /// Which Stripe customer.
        customer: StripeCustomerId,
        /// Delete, or only erase the personal fields.
        erasure: StripeCustomerErasure,
        /// Dedupe keys of the outbox rows that must be done first.
        after: Vec<String>,
        /// Outbox dedupe key.
        dedupe_key: String,
    },
    /// Report a consume's overage to a Stripe Billing Meter
    /// (`POST /v1/billing/meter_events`). Written with the consume, in its
    /// transaction; Stripe refuses a second event with the same
    /// `identifier`, so a resend cannot bill twice.
    MeterEvent {
        /// The meter's `event_name`.
        event_name: String,
        /// `payload[stripe_customer_id]`.
        stripe_customer: StripeCustomerId,
        /// `payload[value]`: the overage units of the consume.
        value: u64,
        /// Stripe's dedupe key for the event (see [`meter_identifier`]).
        identifier: String,
        /// When the consume happened (unix seconds).
        timestamp: i64,
        /// Outbox dedupe key.
        dedupe_key: String,
    },
}

/// The meter event `identifier` of a consume: `{customer}:{idempotency
/// key}`, since billd's keys are per customer and Stripe's identifiers are
/// per account. Stripe allows 100 characters; a longer pair is shortened
/// to its first 83 characters and a 16-hex-digit FNV-1a hash of the whole.
pub fn meter_identifier(customer: &str, idempotency_key: &str) -> String {
    let full = format!("{customer}:{idempotency_key}");
    if full.len() <= 100 {
        return full;
    }
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut cut = 83;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}:{hash:016x}", &full[..cut])
}

/// What account deletion does to the Stripe customer
/// (`BILLD_DELETE_STRIPE_CUSTOMER`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StripeCustomerErasure {
    /// `DELETE /v1/customers/{id}`: Stripe deletes the customer.
    #[default]
    Delete,
    /// Unset email, name and address; the customer, its metadata and its
    /// payment history stay at Stripe.
    Anonymize,
}

impl Effect {
    /// The outbox dedupe key.
    pub fn dedupe_key(&self) -> &str {
        match self {
            Effect::Email { dedupe_key, .. }
            | Effect::AdminAlert { dedupe_key, .. }
            | Effect::CancelSubscription { dedupe_key, .. }
            | Effect::RefetchSubscription { dedupe_key, .. }
            | Effect::DeleteStripeCustomer { dedupe_key, .. }
            | Effect::MeterEvent { dedupe_key, .. } => dedupe_key,
        }
    }
}

/// How many re-fetches one subscription's tied second may ask for; past
/// this, the documented precedence settles later ties of that second.
pub const MAX_REFETCH_ROUNDS: u32 = 16;

/// One change to a customer's billing state, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// What changed (`subscription.sub_1.status`, `access`, …).
    pub field: String,
    /// The value before (none: absent).
    pub before: Option<String>,
    /// The value after (none: removed).
    pub after: Option<String>,
    /// Why: the event id.
    pub reason: String,
    /// The event type.
    pub event_type: String,
    /// When billd applied it.
    pub at: i64,
}

/// What `apply` did with the event: informational (metrics, the inbox's
/// status). The adapter must persist [`Decision::state`] whatever the
/// outcome: a stale snapshot still records what it observed (e.g. for
/// `past_due_since`), which is what makes delivery order irrelevant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The event changed the state, recorded a fact, or (a payment) only
    /// links objects to the customer.
    Applied,
    /// Seen before (same event or same fact): nothing changed.
    Duplicate,
    /// Older than what billd already has, or about a terminal object.
    Stale,
}

/// The result of applying one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The next state.
    pub state: CustomerState,
    /// Outbox items to write with it.
    pub effects: Vec<Effect>,
    /// Audit rows to write with it.
    pub audit: Vec<AuditEntry>,
    /// What happened to the event.
    pub outcome: Outcome,
}

pub(crate) fn params<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

pub(crate) fn email(
    template: EmailTemplate,
    dedupe_key: String,
    params: BTreeMap<String, String>,
) -> Effect {
    Effect::Email {
        template,
        dedupe_key,
        params,
    }
}

/// Credits a pack once its session in `payment` mode completed paid: the
/// session's metadata says what was bought, its payment intent is the
/// grant's key. True when this credited it (the first time).
fn credit_pack(state: &mut CustomerState, event: &Event, session: &CheckoutSession) -> bool {
    let paid = session.mode.as_deref() == Some("payment")
        && session.payment_status.as_deref() == Some("paid");
    let (true, Some(pi)) = (paid, &session.payment_intent) else {
        return false;
    };
    match Purchase::from_metadata(&session.metadata, event.created) {
        Some(purchase) => state.credits.paid(pi.as_str(), &purchase),
        None => false,
    }
}

/// Applies one event to a customer's state.
///
/// Pure and deterministic: the same state, event, catalog and `now` give the
/// same decision. Any permutation (with duplicates) of a set of events
/// reaches the same final state; only effects and audit rows depend on the
/// order, and effects carry dedupe keys.
pub fn apply(state: &CustomerState, event: &Event, catalog: &Catalog, now: i64) -> Decision {
    let mut next = state.clone();
    let mut effects = Vec::new();
    let outcome = match &event.kind {
        EventKind::Subscription {
            change,
            subscription,
        } => apply_subscription(
            &mut next,
            event,
            subscription,
            *change,
            catalog,
            &mut effects,
        ),
        EventKind::SubscriptionDeleted { subscription } => {
            apply_subscription_deleted(&mut next, event, subscription, catalog, &mut effects)
        }
        EventKind::Checkout { change, session } => {
            // A session's outcome is a lattice (completed beats expired), so
            // no fact bookkeeping is needed: merging again changes nothing.
            // A settled payment's payload is newer than the completion's of
            // the same second (it says whether the payment went through).
            let rank = match change {
                CheckoutChange::Expired => 0,
                CheckoutChange::Completed => 1,
                CheckoutChange::AsyncPaymentSucceeded | CheckoutChange::AsyncPaymentFailed => 2,
            };
            let this = stamp(event, rank);
            if let Some(customer) = &session.customer {
                next.stripe_customers.entry(customer.clone()).or_default();
            }
            let entry = next
                .checkouts
                .entry(session.id.clone())
                .or_insert_with(|| CheckoutState {
                    session: Latest {
                        stamp: this.clone(),
                        value: session.clone(),
                    },
                    completed: false,
                    expired: false,
                });
            // A payment settles only after its session completed.
            let flag = match change {
                CheckoutChange::Expired => &mut entry.expired,
                _ => &mut entry.completed,
            };
            let first = !*flag;
            *flag = true;
            let mut slot = Some(entry.session.clone());
            let newer = Latest::merge(&mut slot, this, session);
            if let Some(latest) = slot {
                entry.session = latest;
            }
            // A pack is credited by whichever tells first that its session
            // is paid: the completion (card), the delayed payment's success,
            // or the success page's sync (its payload fetched from Stripe).
            let credited = matches!(
                change,
                CheckoutChange::Completed | CheckoutChange::AsyncPaymentSucceeded
            ) && credit_pack(&mut next, event, session);
            if first || newer || credited {
                Outcome::Applied
            } else {
                Outcome::Duplicate
            }
        }
        EventKind::Invoice { change, invoice } => {
            apply_invoice(&mut next, event, *change, invoice, &mut effects)
        }
        EventKind::ChargeRefunded { charge } => {
            let fact = format!("charge.refunded:{}:{}", charge.id, charge.amount_refunded);
            if !next.applied_facts.insert(fact) {
                Outcome::Duplicate
            } else {
                let entry = next
                    .refunds
                    .entry(charge.id.clone())
                    .or_insert_with(|| RefundState {
                        amount: charge.amount.clone(),
                        amount_refunded: 0,
                        refunded: false,
                        fully_refunded_at: None,
                        customer: charge.customer.clone(),
                        payment_intent: charge.payment_intent.clone(),
                    });
                entry.amount_refunded = entry.amount_refunded.max(charge.amount_refunded);
                if charge.refunded {
                    entry.refunded = true;
                    entry.fully_refunded_at = Some(
                        entry
                            .fully_refunded_at
                            .map_or(event.created, |at| at.min(event.created)),
                    );
                }
                if entry.customer.is_none() {
                    entry.customer = charge.customer.clone();
                }
                if entry.payment_intent.is_none() {
                    entry.payment_intent = charge.payment_intent.clone();
                }
                // A full refund of a pack's payment removes what is left of
                // it (told before the payment, the pack never counts).
                if charge.refunded {
                    if let Some(pi) = &charge.payment_intent {
                        next.credits.refunded(pi.as_str());
                    }
                }
                effects.push(email(
                    EmailTemplate::RefundIssued,
                    format!("refund_issued:{}:{}", charge.id, charge.amount_refunded),
                    params([
                        ("charge", charge.id.to_string()),
                        (
                            "amount_refunded",
                            Money::new(charge.amount_refunded, charge.amount.currency.clone())
                                .to_string(),
                        ),
                        ("full", charge.refunded.to_string()),
                    ]),
                ));
                Outcome::Applied
            }
        }
        EventKind::Dispute { dispute, .. } => {
            let fact = format!(
                "charge.dispute:{}:{}:{}",
                dispute.id,
                dispute.status.as_str(),
                event.id
            );
            if !next.applied_facts.insert(fact) {
                Outcome::Duplicate
            } else {
                let closed = dispute.status.is_closed();
                let this = stamp(event, dispute.status as u8);
                let previous = next.disputes.get(&dispute.id).cloned();
                let entry =
                    next.disputes
                        .entry(dispute.id.clone())
                        .or_insert_with(|| DisputeState {
                            dispute: dispute.clone(),
                            closed,
                            stamp: this.clone(),
                            first_seen: event.created,
                            closed_at: None,
                        });
                if (closed, &this) > (entry.closed, &entry.stamp) {
                    entry.dispute = dispute.clone();
                    entry.closed = closed;
                    entry.stamp = this;
                }
                entry.first_seen = entry.first_seen.min(event.created);
                if closed {
                    entry.closed_at = Some(
                        entry
                            .closed_at
                            .map_or(event.created, |at| at.min(event.created)),
                    );
                }
                let amount = dispute.amount.to_string();
                if previous.is_none() && !entry.closed {
                    effects.push(Effect::AdminAlert {
                        alert: crate::AlertKind::DisputeOpened,
                        dedupe_key: format!("dispute_opened:{}", dispute.id),
                        message: format!(
                            "dispute {} opened for {amount} ({}); access frozen",
                            dispute.id,
                            dispute.reason.as_deref().unwrap_or("no reason")
                        ),
                    });
                    effects.push(email(
                        EmailTemplate::ChargebackNotice,
                        format!("chargeback_notice:{}", dispute.id),
                        params([
                            ("dispute", dispute.id.to_string()),
                            ("amount", amount.clone()),
                        ]),
                    ));
                }
                if entry.closed && previous.as_ref().is_none_or(|p| !p.closed) {
                    effects.push(Effect::AdminAlert {
                        alert: crate::AlertKind::DisputeClosed,
                        dedupe_key: format!("dispute_closed:{}", dispute.id),
                        message: format!(
                            "dispute {} closed: {} ({amount})",
                            dispute.id,
                            entry.dispute.status.as_str()
                        ),
                    });
                }
                Outcome::Applied
            }
        }
        EventKind::Customer { customer, .. } => {
            let link = next
                .stripe_customers
                .entry(customer.id.clone())
                .or_default();
            merge_created(link, customer.created);
            if link.deleted {
                Outcome::Stale
            } else {
                let this = stamp(event, 0);
                if link.stamp.as_ref() == Some(&this) {
                    Outcome::Duplicate
                } else if link.stamp.as_ref().is_some_and(|s| *s > this) {
                    Outcome::Stale
                } else {
                    link.email = customer.email.clone();
                    link.metadata = customer.metadata.clone();
                    link.stamp = Some(this);
                    Outcome::Applied
                }
            }
        }
        EventKind::CustomerDeleted { customer } => {
            let link = next
                .stripe_customers
                .entry(customer.id.clone())
                .or_default();
            merge_created(link, customer.created);
            let this = stamp(event, u8::MAX);
            if link.deleted {
                if link.stamp.as_ref().is_none_or(|s| *s < this) {
                    link.email = customer.email.clone();
                    link.metadata = customer.metadata.clone();
                    link.stamp = Some(this);
                }
                Outcome::Duplicate
            } else {
                link.deleted = true;
                link.email = customer.email.clone();
                link.metadata = customer.metadata.clone();
                link.stamp = Some(this);
                effects.push(Effect::AdminAlert {
                    alert: crate::AlertKind::StripeCustomerDeleted,
                    dedupe_key: format!("stripe_customer_deleted:{}", customer.id),
                    message: format!(
                        "Stripe customer {} was deleted at Stripe; the customer is on the free plan",
                        customer.id
                    ),
                });
                Outcome::Applied
            }
        }
        EventKind::Discount { change, discount } => {
            let deleted = *change == DiscountChange::Deleted;
            let this = stamp(event, u8::from(deleted));
            match next.discounts.get_mut(&discount.id) {
                Some(entry) if entry.deleted && !deleted => Outcome::Stale,
                Some(entry) if entry.deleted => {
                    // Two deletions (a redelivery under a new event id):
                    // keep the higher stamp so the order does not matter.
                    let mut slot = Some(entry.discount.clone());
                    if Latest::merge(&mut slot, this, discount) {
                        if let Some(latest) = slot {
                            entry.discount = latest;
                        }
                    }
                    Outcome::Duplicate
                }
                Some(entry) if deleted => {
                    entry.deleted = true;
                    entry.discount = Latest {
                        stamp: this,
                        value: discount.clone(),
                    };
                    Outcome::Applied
                }
                Some(entry) => {
                    if entry.discount.stamp == this {
                        Outcome::Duplicate
                    } else {
                        let mut slot = Some(entry.discount.clone());
                        if Latest::merge(&mut slot, this, discount) {
                            if let Some(latest) = slot {
                                entry.discount = latest;
                            }
                            Outcome::Applied
                        } else {
                            Outcome::Stale
                        }
                    }
                }
                None => {
                    next.discounts.insert(
                        discount.id.clone(),
                        DiscountState {
                            discount: Latest {
                                stamp: this,
                                value: discount.clone(),
                            },
                            deleted,
                        },
                    );
                    Outcome::Applied
                }
            }
        }
        EventKind::PaymentMethod { payment_method, .. } => {
            let this = stamp(event, 0);
            let slot = next.payment_methods.get(&payment_method.id).cloned();
            if slot.as_ref().is_some_and(|l| l.stamp == this) {
                Outcome::Duplicate
            } else {
                let mut slot = slot;
                if Latest::merge(&mut slot, this, payment_method) {
                    if let Some(latest) = slot {
                        next.payment_methods
                            .insert(payment_method.id.clone(), latest);
                    }
                    Outcome::Applied
                } else {
                    Outcome::Stale
                }
            }
        }
        // Nothing to decide: the payment only links (the adapter records
        // the payment intent as this customer's, idempotently), so the state
        // keeps no trace of it and a replay changes nothing either.
        EventKind::InvoicePayment { .. } | EventKind::PaymentIntentSucceeded { .. } => {
            Outcome::Applied
        }
    };

    // Revocations (lost dispute, full refund) and late-arriving subscriptions
    // both lead here: whichever event makes a revoked subscription known
    // asks Stripe to cancel it.
    let before = state.revoked_live_subscriptions(catalog);
    for (subscription, reason) in next.revoked_live_subscriptions(catalog) {
        if !before.contains_key(&subscription) {
            effects.push(Effect::CancelSubscription {
                dedupe_key: format!("cancel_subscription:{subscription}"),
                subscription,
                reason: reason.into(),
            });
        }
    }

    let audit = audit_diff(state, &next, event, catalog, now);
    Decision {
        state: next,
        effects,
        audit,
        outcome,
    }
}

fn stamp(event: &Event, rank: u8) -> Stamp {
    Stamp {
        created: event.created,
        authoritative: event.authoritative,
        // A webhook's payload is Stripe's, whenever it arrived.
        observed_ns: if event.authoritative {
            event.observed_ns
        } else {
            0
        },
        rank,
        event_id: event.id.clone(),
    }
}

/// The stamp rank of a re-fetch: its round, so that a later round wins.
fn refetch_rank(round: u32) -> u8 {
    u8::try_from(round).unwrap_or(u8::MAX)
}

/// Which re-fetch a webhook snapshot asks for, given the watermark `current`:
/// none unless it ties with it (same second, another event). While only
/// webhooks share the second, every tie asks for round 0 (one re-fetch);
/// once a re-fetch of round n settled it, a new webhook of that second may
/// carry a change the fetch did not see, so it asks for round n + 1.
fn refetch_round_for(current: &Stamp, event: &Event) -> Option<u32> {
    if event.authoritative || current.created != event.created || current.event_id == event.id {
        return None;
    }
    let round = if current.authoritative {
        u32::from(current.rank) + 1
    } else {
        0
    };
    (round < MAX_REFETCH_ROUNDS).then_some(round)
}

fn merge_created(link: &mut StripeCustomerLink, created: Option<i64>) {
    link.created = link.created.max(created);
}

fn is_paid_status(status: SubscriptionStatus) -> bool {
    matches!(
        status,
        SubscriptionStatus::Active | SubscriptionStatus::Trialing
    )
}

fn apply_subscription(
    next: &mut CustomerState,
    event: &Event,
    subscription: &Subscription,
    change: SubscriptionChange,
    catalog: &Catalog,
    effects: &mut Vec<Effect>,
) -> Outcome {
    next.stripe_customers
        .entry(subscription.customer.clone())
        .or_default();
    if change == SubscriptionChange::TrialWillEnd {
        let trial_end = subscription.trial_end.unwrap_or(event.created);
        let fact = format!("trial_will_end:{}:{trial_end}", subscription.id);
        if next.applied_facts.insert(fact) {
            effects.push(email(
                EmailTemplate::TrialEnding,
                format!("trial_ending:{}:{trial_end}", subscription.id),
                params([
                    ("subscription", subscription.id.to_string()),
                    ("trial_end", trial_end.to_string()),
                ]),
            ));
        }
    }

    let rank = if event.authoritative {
        refetch_rank(event.refetch_round)
    } else {
        subscription.status.lifecycle_rank()
    };
    let this = stamp(event, rank);
    let plan = resolve_plan(catalog, subscription).map(|p| p.name.clone());
    let previous = next.subscriptions.get(&subscription.id).cloned();
    if previous.as_ref().is_some_and(|p| p.deleted) {
        return Outcome::Stale;
    }
    if let Some(round) = previous
        .as_ref()
        .and_then(|p| refetch_round_for(&p.stamp, event))
    {
        let dedupe_key = if round == 0 {
            format!("refetch_subscription:{}:{}", subscription.id, event.created)
        } else {
            format!(
                "refetch_subscription:{}:{}:{round}",
                subscription.id, event.created
            )
        };
        effects.push(Effect::RefetchSubscription {
            subscription: subscription.id.clone(),
            tie_created: event.created,
            round,
            dedupe_key,
        });
    }

    let entry = next
        .subscriptions
        .entry(subscription.id.clone())
        .or_insert_with(|| SubscriptionState {
            snapshot: subscription.clone(),
            plan: plan.clone(),
            stamp: this.clone(),
            deleted: false,
            past_due_since: None,
            past_due_seen: Default::default(),
            last_not_past_due: None,
            period_plans: Default::default(),
        });
    let outcome = match &previous {
        Some(p) if p.stamp == this => Outcome::Duplicate,
        Some(p) if p.stamp > this => Outcome::Stale,
        _ => {
            entry.snapshot = subscription.clone();
            entry.plan = plan.clone();
            entry.stamp = this.clone();
            Outcome::Applied
        }
    };
    entry.observe_status(&this, subscription.status);
    entry.observe_period_plan(&this, subscription.current_period_start, plan.as_ref());

    if outcome == Outcome::Applied {
        let sub = subscription.id.to_string();
        let was_paid = previous
            .as_ref()
            .is_some_and(|p| is_paid_status(p.snapshot.status));
        if is_paid_status(subscription.status) && !was_paid {
            effects.push(email(
                EmailTemplate::SubscriptionConfirmed,
                format!("subscription_confirmed:{sub}"),
                params([
                    ("subscription", sub.clone()),
                    ("plan", plan_label(&plan)),
                    ("status", subscription.status.as_str().to_owned()),
                ]),
            ));
        }
        if let Some(p) = &previous {
            if p.plan.is_some() && plan.is_some() && p.plan != plan {
                effects.push(email(
                    EmailTemplate::PlanChanged,
                    format!("plan_changed:{sub}:{}", event.id),
                    params([
                        ("subscription", sub.clone()),
                        ("from", plan_label(&p.plan)),
                        ("to", plan_label(&plan)),
                    ]),
                ));
            }
            if subscription.cancel_at_period_end && !p.snapshot.cancel_at_period_end {
                let ends = subscription
                    .current_period_end
                    .map_or_else(String::new, |e| e.to_string());
                effects.push(email(
                    EmailTemplate::CancellationScheduled,
                    format!("cancellation_scheduled:{sub}:{ends}"),
                    params([("subscription", sub.clone()), ("ends_at", ends)]),
                ));
            }
        }
        if plan.is_none() {
            if let Some(price) = &subscription.price {
                effects.push(Effect::AdminAlert {
                    alert: crate::AlertKind::UnknownPrice,
                    dedupe_key: format!("unknown_price:{sub}:{}", price.id),
                    message: format!(
                        "subscription {sub} uses price {} which is not in the plan catalog; the customer gets the free plan",
                        price.id
                    ),
                });
            }
        }
    }
    outcome
}

fn plan_label(plan: &Option<crate::PlanName>) -> String {
    plan.as_ref()
        .map_or_else(|| "unknown".to_owned(), ToString::to_string)
}

fn apply_subscription_deleted(
    next: &mut CustomerState,
    event: &Event,
    subscription: &Subscription,
    catalog: &Catalog,
    effects: &mut Vec<Effect>,
) -> Outcome {
    next.stripe_customers
        .entry(subscription.customer.clone())
        .or_default();
    let plan = resolve_plan(catalog, subscription).map(|p| p.name.clone());
    let this = stamp(event, u8::MAX);
    let previous_status = next
        .subscriptions
        .get(&subscription.id)
        .map(|s| s.snapshot.status);
    if let Some(existing) = next.subscriptions.get_mut(&subscription.id) {
        if existing.deleted {
            if existing.stamp < this {
                existing.snapshot = subscription.clone();
                existing.plan = plan;
                existing.stamp = this;
            }
            return Outcome::Duplicate;
        }
    }
    next.subscriptions.insert(
        subscription.id.clone(),
        SubscriptionState {
            snapshot: subscription.clone(),
            plan: plan.clone(),
            stamp: this,
            deleted: true,
            past_due_since: None,
            past_due_seen: Default::default(),
            last_not_past_due: None,
            period_plans: Default::default(),
        },
    );
    // A subscription that never started (its first payment never came)
    // ends without a goodbye.
    let started = previous_status.is_none_or(|status| {
        !matches!(
            status,
            SubscriptionStatus::Incomplete | SubscriptionStatus::IncompleteExpired
        )
    });
    if started {
        effects.push(email(
            EmailTemplate::SubscriptionCanceled,
            format!("subscription_canceled:{}", subscription.id),
            params([
                ("subscription", subscription.id.to_string()),
                ("plan", plan_label(&plan)),
            ]),
        ));
    }
    Outcome::Applied
}

/// When an upcoming invoice renews the subscription: its line's period
/// start (the current period's end), else the next payment attempt.
fn renews_at(invoice: &crate::event::Invoice, fallback: i64) -> i64 {
    invoice
        .period_start
        .or(invoice.next_payment_attempt)
        .unwrap_or(fallback)
}

fn apply_invoice(
    next: &mut CustomerState,
    event: &Event,
    change: InvoiceChange,
    invoice: &crate::event::Invoice,
    effects: &mut Vec<Effect>,
) -> Outcome {
    let attempt = invoice.attempt_count;
    let Some(id) = &invoice.id else {
        // `invoice.upcoming` previews have no id; key them by what they preview.
        let scope = invoice
            .subscription
            .as_ref()
            .map(ToString::to_string)
            .or_else(|| invoice.customer.as_ref().map(ToString::to_string))
            .unwrap_or_default();
        let when = renews_at(invoice, event.created);
        let fact = format!("invoice.{}:{scope}:{when}", change.as_str());
        if !next.applied_facts.insert(fact) {
            return Outcome::Duplicate;
        }
        if change == InvoiceChange::Upcoming {
            effects.push(email(
                EmailTemplate::RenewalReminder,
                crate::schedule::renewal_reminder_key(&scope, when),
                params([
                    ("amount_due", invoice.amount_due.to_string()),
                    ("renews_at", when.to_string()),
                ]),
            ));
        }
        return Outcome::Applied;
    };

    let fact = match change {
        InvoiceChange::PaymentFailed | InvoiceChange::PaymentActionRequired => {
            format!("invoice.{}:{id}:{attempt}", change.as_str())
        }
        _ => format!("invoice.{}:{id}", change.as_str()),
    };
    if !next.applied_facts.insert(fact) {
        return Outcome::Duplicate;
    }
    let this = stamp(event, change as u8);
    let entry = next
        .invoices
        .entry(id.clone())
        .or_insert_with(|| InvoiceState {
            invoice: Latest {
                stamp: this.clone(),
                value: invoice.clone(),
            },
            paid: false,
            finalized: false,
            failed_attempts: 0,
            action_required: None,
        });
    let mut slot = Some(entry.invoice.clone());
    Latest::merge(&mut slot, this.clone(), invoice);
    if let Some(latest) = slot {
        entry.invoice = latest;
    }
    let hosted = invoice.hosted_invoice_url.clone().unwrap_or_default();
    match change {
        InvoiceChange::Paid | InvoiceChange::PaymentSucceeded => {
            let first = !entry.paid;
            entry.paid = true;
            if first && invoice.amount_paid.minor > 0 {
                effects.push(email(
                    EmailTemplate::PaymentSucceeded,
                    format!("payment_succeeded:{id}"),
                    params([
                        ("invoice", id.to_string()),
                        ("amount_paid", invoice.amount_paid.to_string()),
                        (
                            "invoice_pdf",
                            invoice.invoice_pdf.clone().unwrap_or_default(),
                        ),
                        ("hosted_invoice_url", hosted),
                    ]),
                ));
            }
        }
        InvoiceChange::PaymentFailed => {
            entry.failed_attempts = entry.failed_attempts.max(attempt);
            effects.push(email(
                EmailTemplate::PaymentFailed,
                format!("payment_failed:{id}:{attempt}"),
                params([
                    ("invoice", id.to_string()),
                    ("amount_due", invoice.amount_due.to_string()),
                    ("attempt_count", attempt.to_string()),
                    (
                        "next_payment_attempt",
                        invoice
                            .next_payment_attempt
                            .map_or_else(String::new, |t| t.to_string()),
                    ),
                    ("hosted_invoice_url", hosted),
                ]),
            ));
        }
        InvoiceChange::PaymentActionRequired => {
            Latest::merge(
                &mut entry.action_required,
                this,
                &invoice.hosted_invoice_url,
            );
            effects.push(email(
                EmailTemplate::ActionRequired,
                format!("action_required:{id}:{attempt}"),
                params([
                    ("invoice", id.to_string()),
                    ("amount_due", invoice.amount_due.to_string()),
                    ("hosted_invoice_url", hosted),
                ]),
            ));
        }
        InvoiceChange::Finalized => {
            entry.finalized = true;
            effects.push(email(
                EmailTemplate::InvoiceFinalized,
                format!("invoice_finalized:{id}"),
                params([
                    ("invoice", id.to_string()),
                    ("amount_due", invoice.amount_due.to_string()),
                    (
                        "invoice_pdf",
                        invoice.invoice_pdf.clone().unwrap_or_default(),
                    ),
                    ("hosted_invoice_url", hosted),
                ]),
            ));
        }
        InvoiceChange::Upcoming => {
            let when = renews_at(invoice, event.created);
            let scope = invoice
                .subscription
                .as_ref()
                .map_or_else(|| id.to_string(), ToString::to_string);
            effects.push(email(
                EmailTemplate::RenewalReminder,
                crate::schedule::renewal_reminder_key(&scope, when),
                params([
                    ("amount_due", invoice.amount_due.to_string()),
                    ("renews_at", when.to_string()),
                ]),
            ));
        }
    }
    Outcome::Applied
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value
        .as_ref()
        .map_or_else(|| "none".to_owned(), ToString::to_string)
}

/// A flat view of everything worth auditing; `apply` diffs it before/after.
fn audit_view(state: &CustomerState, catalog: &Catalog, now: i64) -> BTreeMap<String, String> {
    let mut view = BTreeMap::new();
    view.insert("stripe_customer".to_owned(), opt(&state.stripe_customer()));
    for (id, link) in &state.stripe_customers {
        view.insert(
            format!("stripe_customer.{id}.deleted"),
            link.deleted.to_string(),
        );
        if let Some(email) = &link.email {
            view.insert(format!("stripe_customer.{id}.email"), email.clone());
        }
    }
    for (id, sub) in &state.subscriptions {
        let s = &sub.snapshot;
        let p = |field: &str| format!("subscription.{id}.{field}");
        view.insert(p("status"), s.status.as_str().to_owned());
        view.insert(p("deleted"), sub.deleted.to_string());
        view.insert(p("plan"), opt(&sub.plan));
        view.insert(p("price"), opt(&s.price.as_ref().map(|p| p.id.clone())));
        view.insert(p("current_period_start"), opt(&s.current_period_start));
        view.insert(p("current_period_end"), opt(&s.current_period_end));
        view.insert(
            p("cancel_at_period_end"),
            s.cancel_at_period_end.to_string(),
        );
        view.insert(p("cancel_at"), opt(&s.cancel_at));
        view.insert(p("trial_end"), opt(&s.trial_end));
        view.insert(p("past_due_since"), opt(&sub.past_due_since));
        view.insert(p("discounts"), s.discounts.join(","));
    }
    for (id, checkout) in &state.checkouts {
        let status = if checkout.completed {
            "completed"
        } else {
            "expired"
        };
        view.insert(format!("checkout.{id}.status"), status.to_owned());
    }
    for (id, inv) in &state.invoices {
        view.insert(format!("invoice.{id}.paid"), inv.paid.to_string());
        view.insert(format!("invoice.{id}.finalized"), inv.finalized.to_string());
        view.insert(
            format!("invoice.{id}.failed_attempts"),
            inv.failed_attempts.to_string(),
        );
        view.insert(
            format!("invoice.{id}.action_required"),
            inv.needs_action().to_string(),
        );
    }
    for (id, refund) in &state.refunds {
        view.insert(
            format!("refund.{id}.amount_refunded"),
            Money::new(refund.amount_refunded, refund.amount.currency.clone()).to_string(),
        );
        view.insert(format!("refund.{id}.refunded"), refund.refunded.to_string());
    }
    for (payment, grant) in state.credits.grants() {
        view.insert(
            format!("credits.{payment}"),
            format!(
                "feature={} amount={} paid={} refunded={}",
                opt(&grant.feature.as_ref().map(ToString::to_string)),
                grant.amount,
                grant.paid,
                grant.refunded
            ),
        );
    }
    for (id, dispute) in &state.disputes {
        view.insert(
            format!("dispute.{id}.status"),
            dispute.dispute.status.as_str().to_owned(),
        );
    }
    for (id, discount) in &state.discounts {
        let d = &discount.discount.value;
        let summary = if discount.deleted {
            "deleted".to_owned()
        } else {
            format!(
                "coupon={} promotion_code={} end={}",
                opt(&d.coupon.as_ref().map(|c| c.id.clone())),
                opt(&d.promotion_code),
                opt(&d.end)
            )
        };
        view.insert(format!("discount.{id}"), summary);
    }
    for (id, pm) in &state.payment_methods {
        if let Some(card) = &pm.value.card {
            view.insert(
                format!("payment_method.{id}.card"),
                format!(
                    "{} {} {}/{}",
                    opt(&card.brand),
                    opt(&card.last4),
                    opt(&card.exp_month),
                    opt(&card.exp_year)
                ),
            );
        }
    }
    let access = access_at(state, catalog, now);
    view.insert("access".to_owned(), access_label(access.access).to_owned());
    view.insert("plan".to_owned(), access.plan.name.to_string());
    view
}

fn access_label(access: Access) -> &'static str {
    match access {
        Access::Paid => "paid",
        Access::Grace => "grace",
        Access::Free => "free",
        Access::Blocked => "blocked",
        Access::Frozen => "frozen",
    }
}

fn audit_diff(
    before: &CustomerState,
    after: &CustomerState,
    event: &Event,
    catalog: &Catalog,
    now: i64,
) -> Vec<AuditEntry> {
    let old = audit_view(before, catalog, now);
    let new = audit_view(after, catalog, now);
    let fields: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    fields
        .into_iter()
        .filter(|f| old.get(*f) != new.get(*f))
        .map(|field| AuditEntry {
            field: field.clone(),
            before: old.get(field).cloned(),
            after: new.get(field).cloned(),
            reason: event.id.to_string(),
            event_type: event.event_type().to_owned(),
            at: now,
        })
        .collect()
}
