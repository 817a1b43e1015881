//! Domain events: what billd learns from Stripe, already parsed and typed.
//!
//! `billd-stripe` maps raw webhook JSON to these; [`crate::apply()`] consumes
//! them. Each carries the Stripe event id and its `created` second.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::{
    ChargeId, CheckoutSessionId, CustomerId, DiscountId, DisputeId, EventId, InvoiceId,
    PaymentIntentId, PaymentMethodId, PriceId, StripeCustomerId, StripeSubscriptionId,
};
use crate::money::{Currency, Money};

/// The metadata key carrying the app's user id on every Stripe object billd creates.
pub const METADATA_CUSTOMER_ID: &str = "billd_customer_id";
/// The metadata key carrying the plan name on subscriptions billd creates.
pub const METADATA_PLAN: &str = "billd_plan";

/// One event from Stripe (or an authoritative re-fetch of an object).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The Stripe event id (for a re-fetch: the id of the event that asked for it).
    pub id: EventId,
    /// `event.created` in unix seconds (for a re-fetch: the tied second it
    /// settles, see [`crate::Effect::RefetchSubscription`]).
    pub created: i64,
    /// True when the payload was fetched from the Stripe API rather than
    /// delivered by a webhook: it wins a same-second tie against any
    /// webhook snapshot.
    pub authoritative: bool,
    /// For a re-fetch, which round of its tie it answers (see
    /// [`crate::Effect::RefetchSubscription`]): a later round was fetched
    /// later and wins over an earlier one. 0 for webhooks.
    #[serde(default)]
    pub refetch_round: u32,
    /// For an authoritative snapshot, the wall-clock nanosecond at which
    /// billd observed it: when it sent the read, or when the answer to its
    /// own write arrived. It orders such snapshots of the same second by
    /// when they were true at Stripe. 0 for webhooks.
    #[serde(default)]
    pub observed_ns: u64,
    /// What happened.
    pub kind: EventKind,
}

/// What an event says happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// `customer.subscription.created|updated|paused|resumed|trial_will_end`:
    /// the subscription object as it is now.
    Subscription {
        /// Which event type delivered the snapshot.
        change: SubscriptionChange,
        /// The object.
        subscription: Subscription,
    },
    /// `customer.subscription.deleted`: terminal.
    SubscriptionDeleted {
        /// The object at deletion.
        subscription: Subscription,
    },
    /// `checkout.session.completed|expired|async_payment_succeeded|async_payment_failed`.
    Checkout {
        /// Completed, expired, or its delayed payment settled.
        change: CheckoutChange,
        /// The session.
        session: CheckoutSession,
    },
    /// `invoice.*`.
    Invoice {
        /// Which invoice event.
        change: InvoiceChange,
        /// The invoice.
        invoice: Invoice,
    },
    /// `charge.refunded`.
    ChargeRefunded {
        /// The charge with its refunded totals.
        charge: Charge,
    },
    /// `charge.dispute.created|updated|closed`.
    Dispute {
        /// Which dispute event.
        change: DisputeChange,
        /// The dispute.
        dispute: Dispute,
    },
    /// `customer.created|updated`.
    Customer {
        /// Created or updated.
        change: CustomerChange,
        /// The customer.
        customer: StripeCustomer,
    },
    /// `customer.deleted`: terminal for that Stripe customer.
    CustomerDeleted {
        /// The customer at deletion.
        customer: StripeCustomer,
    },
    /// `customer.discount.created|updated|deleted`.
    Discount {
        /// Which discount event.
        change: DiscountChange,
        /// The discount.
        discount: Discount,
    },
    /// `payment_method.attached|updated|automatically_updated`.
    PaymentMethod {
        /// Which payment method event.
        change: PaymentMethodChange,
        /// The payment method.
        payment_method: PaymentMethod,
    },
    /// `invoice_payment.paid`: which payment intent paid which invoice. It
    /// ties the payment intent to the invoice's customer, so a later refund
    /// or dispute naming only the payment intent links.
    InvoicePayment {
        /// The invoice payment.
        payment: InvoicePayment,
    },
    /// `payment_intent.succeeded`: ties the payment intent to its Stripe
    /// customer, for the same reason.
    PaymentIntentSucceeded {
        /// The payment intent.
        payment_intent: PaymentIntent,
    },
}

/// Which `customer.subscription.*` event carried a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionChange {
    /// `customer.subscription.created`.
    Created,
    /// `customer.subscription.updated`.
    Updated,
    /// `customer.subscription.paused`.
    Paused,
    /// `customer.subscription.resumed`.
    Resumed,
    /// `customer.subscription.trial_will_end` (three days before `trial_end`).
    TrialWillEnd,
}

/// A Stripe subscription status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// First payment not (yet) made.
    Incomplete,
    /// First payment never made within 23 hours.
    IncompleteExpired,
    /// In a trial.
    Trialing,
    /// Paid and current.
    Active,
    /// A renewal payment failed; Stripe is retrying.
    PastDue,
    /// Retries exhausted, left open.
    Unpaid,
    /// Ended.
    Canceled,
    /// Trial ended without a payment method.
    Paused,
}

impl SubscriptionStatus {
    /// Stripe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Incomplete => "incomplete",
            Self::IncompleteExpired => "incomplete_expired",
            Self::Trialing => "trialing",
            Self::Active => "active",
            Self::PastDue => "past_due",
            Self::Unpaid => "unpaid",
            Self::Canceled => "canceled",
            Self::Paused => "paused",
        }
    }

    /// Parses Stripe's spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "incomplete" => Self::Incomplete,
            "incomplete_expired" => Self::IncompleteExpired,
            "trialing" => Self::Trialing,
            "active" => Self::Active,
            "past_due" => Self::PastDue,
            "unpaid" => Self::Unpaid,
            "canceled" => Self::Canceled,
            "paused" => Self::Paused,
            _ => return None,
        })
    }

    /// Rank in the usual lifecycle, used to break same-second ties: a status
    /// that normally follows another ranks higher (incomplete → trialing →
    /// active → past_due → unpaid → paused → incomplete_expired → canceled).
    pub fn lifecycle_rank(self) -> u8 {
        match self {
            Self::Incomplete => 0,
            Self::Trialing => 1,
            Self::Active => 2,
            Self::PastDue => 3,
            Self::Unpaid => 4,
            Self::Paused => 5,
            Self::IncompleteExpired => 6,
            Self::Canceled => 7,
        }
    }

    /// No further change is possible at Stripe.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Canceled | Self::IncompleteExpired)
    }
}

/// The price of a subscription item, as the subscription carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionPrice {
    /// The price id.
    pub id: PriceId,
    /// The price's `lookup_key`, if any (matches catalog prices by key).
    pub lookup_key: Option<String>,
    /// The price's currency.
    pub currency: Option<Currency>,
    /// Amount per interval in minor units.
    pub unit_amount: Option<i64>,
}

/// A subscription snapshot: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// `sub_…`.
    pub id: StripeSubscriptionId,
    /// The Stripe customer.
    pub customer: StripeCustomerId,
    /// Stripe's status.
    pub status: SubscriptionStatus,
    /// When the subscription object was created (unix seconds).
    pub created: i64,
    /// The first item's price.
    pub price: Option<SubscriptionPrice>,
    /// The first item's quantity: the seat count on a plan with seats.
    #[serde(default)]
    pub quantity: Option<u64>,
    /// The first item's `current_period_start` (period dates live on items).
    pub current_period_start: Option<i64>,
    /// The first item's `current_period_end`.
    pub current_period_end: Option<i64>,
    /// Cancels at the end of the current period.
    pub cancel_at_period_end: bool,
    /// A scheduled cancellation time.
    pub cancel_at: Option<i64>,
    /// When the trial ends.
    pub trial_end: Option<i64>,
    /// The subscription's discount ids.
    pub discounts: Vec<String>,
    /// The subscription's metadata (`billd_customer_id`, `billd_plan`).
    pub metadata: BTreeMap<String, String>,
}

/// `checkout.session.completed`, `.expired`, `.async_payment_succeeded` or
/// `.async_payment_failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutChange {
    /// The customer finished the Checkout page.
    Completed,
    /// The session expired unused.
    Expired,
    /// A completed session's delayed payment (bank debit, transfer) was paid.
    AsyncPaymentSucceeded,
    /// A completed session's delayed payment failed.
    AsyncPaymentFailed,
}

/// A Checkout session: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutSession {
    /// `cs_…`.
    pub id: CheckoutSessionId,
    /// The Stripe customer, if created/attached.
    pub customer: Option<StripeCustomerId>,
    /// The subscription created by the session.
    pub subscription: Option<StripeSubscriptionId>,
    /// billd puts the app's user id here.
    pub client_reference_id: Option<String>,
    /// `payment`, `subscription` or `setup`.
    pub mode: Option<String>,
    /// `paid`, `unpaid`, `no_payment_required`.
    pub payment_status: Option<String>,
    /// The payment intent of a `payment` mode session.
    #[serde(default)]
    pub payment_intent: Option<PaymentIntentId>,
    /// The session metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Which `invoice.*` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceChange {
    /// `invoice.upcoming` (a preview, no id).
    Upcoming,
    /// `invoice.finalized`.
    Finalized,
    /// `invoice.payment_action_required` (SCA / 3-D Secure).
    PaymentActionRequired,
    /// `invoice.payment_failed`.
    PaymentFailed,
    /// `invoice.payment_succeeded`.
    PaymentSucceeded,
    /// `invoice.paid`.
    Paid,
}

impl InvoiceChange {
    /// Stripe's event type suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upcoming => "upcoming",
            Self::Finalized => "finalized",
            Self::PaymentActionRequired => "payment_action_required",
            Self::PaymentFailed => "payment_failed",
            Self::PaymentSucceeded => "payment_succeeded",
            Self::Paid => "paid",
        }
    }
}

/// An invoice: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    /// `in_…` (absent on `invoice.upcoming`).
    pub id: Option<InvoiceId>,
    /// The Stripe customer.
    pub customer: Option<StripeCustomerId>,
    /// `parent.subscription_details.subscription`.
    pub subscription: Option<StripeSubscriptionId>,
    /// When the invoice was created.
    pub created: Option<i64>,
    /// Invoice status (`draft`, `open`, `paid`, …).
    pub status: Option<String>,
    /// `amount_due`.
    pub amount_due: Money,
    /// `amount_paid`.
    pub amount_paid: Money,
    /// Payment attempts so far.
    pub attempt_count: u32,
    /// When Stripe retries next.
    pub next_payment_attempt: Option<i64>,
    /// The hosted page (where a customer pays or confirms 3-D Secure).
    pub hosted_invoice_url: Option<String>,
    /// The PDF.
    pub invoice_pdf: Option<String>,
    /// `subscription_create`, `subscription_cycle`, `manual`, …
    pub billing_reason: Option<String>,
    /// The billed period start (first line's period, else the invoice's).
    pub period_start: Option<i64>,
    /// The billed period end.
    pub period_end: Option<i64>,
    /// The invoice metadata.
    pub metadata: BTreeMap<String, String>,
}

/// An `invoice_payment` object: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoicePayment {
    /// `inpay_…`.
    pub id: String,
    /// The invoice it paid.
    pub invoice: InvoiceId,
    /// `payment.payment_intent` (absent for a payment record).
    pub payment_intent: Option<PaymentIntentId>,
}

/// A payment intent: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentIntent {
    /// `pi_…`.
    pub id: PaymentIntentId,
    /// The Stripe customer.
    pub customer: Option<StripeCustomerId>,
    /// The payment intent metadata.
    pub metadata: BTreeMap<String, String>,
}

/// A charge after `charge.refunded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// `ch_…`.
    pub id: ChargeId,
    /// The Stripe customer.
    pub customer: Option<StripeCustomerId>,
    /// The amount charged.
    pub amount: Money,
    /// The total refunded so far.
    pub amount_refunded: i64,
    /// True when fully refunded.
    pub refunded: bool,
    /// The payment intent (its invoice links the charge to a subscription).
    pub payment_intent: Option<PaymentIntentId>,
    /// The charge metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Which `charge.dispute.*` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeChange {
    /// `charge.dispute.created`.
    Created,
    /// `charge.dispute.updated`.
    Updated,
    /// `charge.dispute.closed`.
    Closed,
}

/// A dispute status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisputeStatus {
    /// An inquiry awaiting a response.
    WarningNeedsResponse,
    /// An inquiry under review.
    WarningUnderReview,
    /// A chargeback awaiting evidence.
    NeedsResponse,
    /// Evidence submitted.
    UnderReview,
    /// An inquiry closed without a chargeback.
    WarningClosed,
    /// Prevented (e.g. by a refund before escalation).
    Prevented,
    /// Decided for the merchant.
    Won,
    /// Decided for the cardholder.
    Lost,
}

impl DisputeStatus {
    /// Parses Stripe's spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "warning_needs_response" => Self::WarningNeedsResponse,
            "warning_under_review" => Self::WarningUnderReview,
            "warning_closed" => Self::WarningClosed,
            "needs_response" => Self::NeedsResponse,
            "under_review" => Self::UnderReview,
            "won" => Self::Won,
            "lost" => Self::Lost,
            "prevented" => Self::Prevented,
            _ => return None,
        })
    }

    /// Stripe's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WarningNeedsResponse => "warning_needs_response",
            Self::WarningUnderReview => "warning_under_review",
            Self::WarningClosed => "warning_closed",
            Self::NeedsResponse => "needs_response",
            Self::UnderReview => "under_review",
            Self::Won => "won",
            Self::Lost => "lost",
            Self::Prevented => "prevented",
        }
    }

    /// The dispute is decided; no further status change follows.
    pub fn is_closed(self) -> bool {
        matches!(
            self,
            Self::WarningClosed | Self::Prevented | Self::Won | Self::Lost
        )
    }
}

/// A dispute: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispute {
    /// `dp_…`/`du_…`.
    pub id: DisputeId,
    /// The disputed charge.
    pub charge: Option<ChargeId>,
    /// The charge's customer, when the charge was expanded in the payload.
    pub customer: Option<StripeCustomerId>,
    /// The payment intent.
    pub payment_intent: Option<PaymentIntentId>,
    /// Stripe's status.
    pub status: DisputeStatus,
    /// The disputed amount.
    pub amount: Money,
    /// The cardholder's reason (`fraudulent`, `general`, …).
    pub reason: Option<String>,
}

/// `customer.created` or `customer.updated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerChange {
    /// `customer.created`.
    Created,
    /// `customer.updated`.
    Updated,
}

/// A Stripe customer: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StripeCustomer {
    /// `cus_…`.
    pub id: StripeCustomerId,
    /// When the customer object was created.
    pub created: Option<i64>,
    /// The email on file.
    pub email: Option<String>,
    /// The customer metadata (`billd_customer_id`).
    pub metadata: BTreeMap<String, String>,
}

/// Which `customer.discount.*` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscountChange {
    /// `customer.discount.created`.
    Created,
    /// `customer.discount.updated`.
    Updated,
    /// `customer.discount.deleted` (terminal).
    Deleted,
}

/// The coupon behind a discount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coupon {
    /// The coupon id (free-form at Stripe).
    pub id: String,
    /// Its display name.
    pub name: Option<String>,
    /// Percent off, in hundredths of a percent (2550 = 25.5 %) to stay exact.
    pub percent_off_bp: Option<i64>,
    /// Amount off.
    pub amount_off: Option<Money>,
    /// `once`, `repeating`, `forever`.
    pub duration: Option<String>,
}

/// A discount: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discount {
    /// `di_…`.
    pub id: DiscountId,
    /// The Stripe customer.
    pub customer: Option<StripeCustomerId>,
    /// The subscription it applies to, if any.
    pub subscription: Option<StripeSubscriptionId>,
    /// The coupon (`source.coupon`), id or expanded.
    pub coupon: Option<Coupon>,
    /// The promotion code the customer entered, if any.
    pub promotion_code: Option<String>,
    /// When the discount started.
    pub start: Option<i64>,
    /// When it ends (none: forever).
    pub end: Option<i64>,
}

/// Which `payment_method.*` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethodChange {
    /// `payment_method.attached`.
    Attached,
    /// `payment_method.updated`.
    Updated,
    /// `payment_method.automatically_updated` (the card network sent new details).
    AutomaticallyUpdated,
}

/// A card's display details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// `visa`, `mastercard`, …
    pub brand: Option<String>,
    /// Last four digits.
    pub last4: Option<String>,
    /// Expiry month, 1-12.
    pub exp_month: Option<u32>,
    /// Expiry year, four digits.
    pub exp_year: Option<i32>,
}

/// A payment method: the fields billd uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentMethod {
    /// `pm_…`.
    pub id: PaymentMethodId,
    /// The Stripe customer it is attached to.
    pub customer: Option<StripeCustomerId>,
    /// The card, for card payment methods.
    pub card: Option<Card>,
}

/// What an event offers for finding the billd customer it belongs to.
///
/// Linking is the adapter's decision (it owns the customer table); this only
/// gathers the candidates from the payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkHints {
    /// The Stripe customer the object belongs to.
    pub stripe_customer: Option<StripeCustomerId>,
    /// `metadata[billd_customer_id]` (or a Checkout `client_reference_id`), when valid.
    pub billd_customer_id: Option<CustomerId>,
    /// The subscription the object belongs to.
    pub subscription: Option<StripeSubscriptionId>,
    /// The charge a dispute or refund is about.
    pub charge: Option<ChargeId>,
    /// The payment intent a dispute or refund is about, or that a payment
    /// ties to its invoice or customer (`invoice_payment.paid`,
    /// `payment_intent.succeeded`).
    pub payment_intent: Option<PaymentIntentId>,
    /// The invoice a payment paid (`invoice_payment.paid`): its link gives
    /// the customer.
    pub invoice: Option<InvoiceId>,
}

fn metadata_customer(metadata: &BTreeMap<String, String>) -> Option<CustomerId> {
    metadata
        .get(METADATA_CUSTOMER_ID)
        .and_then(|raw| CustomerId::parse(raw).ok())
}

impl Event {
    /// The Stripe event type this domain event came from.
    pub fn event_type(&self) -> &'static str {
        match &self.kind {
            EventKind::Subscription { change, .. } => match change {
                SubscriptionChange::Created => "customer.subscription.created",
                SubscriptionChange::Updated => "customer.subscription.updated",
                SubscriptionChange::Paused => "customer.subscription.paused",
                SubscriptionChange::Resumed => "customer.subscription.resumed",
                SubscriptionChange::TrialWillEnd => "customer.subscription.trial_will_end",
            },
            EventKind::SubscriptionDeleted { .. } => "customer.subscription.deleted",
            EventKind::Checkout { change, .. } => match change {
                CheckoutChange::Completed => "checkout.session.completed",
                CheckoutChange::Expired => "checkout.session.expired",
                CheckoutChange::AsyncPaymentSucceeded => "checkout.session.async_payment_succeeded",
                CheckoutChange::AsyncPaymentFailed => "checkout.session.async_payment_failed",
            },
            EventKind::Invoice { change, .. } => match change {
                InvoiceChange::Upcoming => "invoice.upcoming",
                InvoiceChange::Finalized => "invoice.finalized",
                InvoiceChange::PaymentActionRequired => "invoice.payment_action_required",
                InvoiceChange::PaymentFailed => "invoice.payment_failed",
                InvoiceChange::PaymentSucceeded => "invoice.payment_succeeded",
                InvoiceChange::Paid => "invoice.paid",
            },
            EventKind::ChargeRefunded { .. } => "charge.refunded",
            EventKind::Dispute { change, .. } => match change {
                DisputeChange::Created => "charge.dispute.created",
                DisputeChange::Updated => "charge.dispute.updated",
                DisputeChange::Closed => "charge.dispute.closed",
            },
            EventKind::Customer { change, .. } => match change {
                CustomerChange::Created => "customer.created",
                CustomerChange::Updated => "customer.updated",
            },
            EventKind::CustomerDeleted { .. } => "customer.deleted",
            EventKind::Discount { change, .. } => match change {
                DiscountChange::Created => "customer.discount.created",
                DiscountChange::Updated => "customer.discount.updated",
                DiscountChange::Deleted => "customer.discount.deleted",
            },
            EventKind::PaymentMethod { change, .. } => match change {
                PaymentMethodChange::Attached => "payment_method.attached",
                PaymentMethodChange::Updated => "payment_method.updated",
                PaymentMethodChange::AutomaticallyUpdated => "payment_method.automatically_updated",
            },
            EventKind::InvoicePayment { .. } => "invoice_payment.paid",
            EventKind::PaymentIntentSucceeded { .. } => "payment_intent.succeeded",
        }
    }

    /// The id of the Stripe object the event is about (the inbox's `object id`).
    pub fn object_id(&self) -> Option<String> {
        match &self.kind {
            EventKind::Subscription { subscription, .. }
            | EventKind::SubscriptionDeleted { subscription } => Some(subscription.id.to_string()),
            EventKind::Checkout { session, .. } => Some(session.id.to_string()),
            EventKind::Invoice { invoice, .. } => invoice.id.as_ref().map(ToString::to_string),
            EventKind::ChargeRefunded { charge } => Some(charge.id.to_string()),
            EventKind::Dispute { dispute, .. } => Some(dispute.id.to_string()),
            EventKind::Customer { customer, .. } | EventKind::CustomerDeleted { customer } => {
                Some(customer.id.to_string())
            }
            EventKind::Discount { discount, .. } => Some(discount.id.to_string()),
            EventKind::PaymentMethod { payment_method, .. } => Some(payment_method.id.to_string()),
            EventKind::InvoicePayment { payment } => Some(payment.id.clone()),
            EventKind::PaymentIntentSucceeded { payment_intent } => {
                Some(payment_intent.id.to_string())
            }
        }
    }

    /// Candidates for linking the event to a billd customer.
    pub fn link_hints(&self) -> LinkHints {
        match &self.kind {
            EventKind::Subscription { subscription, .. }
            | EventKind::SubscriptionDeleted { subscription } => LinkHints {
                stripe_customer: Some(subscription.customer.clone()),
                billd_customer_id: metadata_customer(&subscription.metadata),
                subscription: Some(subscription.id.clone()),
                charge: None,
                payment_intent: None,
                invoice: None,
            },
            EventKind::Checkout { session, .. } => LinkHints {
                stripe_customer: session.customer.clone(),
                billd_customer_id: metadata_customer(&session.metadata).or_else(|| {
                    session
                        .client_reference_id
                        .as_deref()
                        .and_then(|raw| CustomerId::parse(raw).ok())
                }),
                subscription: session.subscription.clone(),
                charge: None,
                // A pack's payment: its refund names only the payment intent.
                payment_intent: session.payment_intent.clone(),
                invoice: None,
            },
            EventKind::Invoice { invoice, .. } => LinkHints {
                stripe_customer: invoice.customer.clone(),
                billd_customer_id: metadata_customer(&invoice.metadata),
                subscription: invoice.subscription.clone(),
                charge: None,
                payment_intent: None,
                invoice: None,
            },
            EventKind::ChargeRefunded { charge } => LinkHints {
                stripe_customer: charge.customer.clone(),
                billd_customer_id: metadata_customer(&charge.metadata),
                subscription: None,
                charge: Some(charge.id.clone()),
                payment_intent: charge.payment_intent.clone(),
                invoice: None,
            },
            EventKind::Dispute { dispute, .. } => LinkHints {
                stripe_customer: dispute.customer.clone(),
                billd_customer_id: None,
                subscription: None,
                charge: dispute.charge.clone(),
                payment_intent: dispute.payment_intent.clone(),
                invoice: None,
            },
            EventKind::Customer { customer, .. } | EventKind::CustomerDeleted { customer } => {
                LinkHints {
                    stripe_customer: Some(customer.id.clone()),
                    billd_customer_id: metadata_customer(&customer.metadata),
                    subscription: None,
                    charge: None,
                    payment_intent: None,
                    invoice: None,
                }
            }
            EventKind::Discount { discount, .. } => LinkHints {
                stripe_customer: discount.customer.clone(),
                billd_customer_id: None,
                subscription: discount.subscription.clone(),
                charge: None,
                payment_intent: None,
                invoice: None,
            },
            EventKind::PaymentMethod { payment_method, .. } => LinkHints {
                stripe_customer: payment_method.customer.clone(),
                billd_customer_id: None,
                subscription: None,
                charge: None,
                payment_intent: None,
                invoice: None,
            },
            EventKind::InvoicePayment { payment } => LinkHints {
                stripe_customer: None,
                billd_customer_id: None,
                subscription: None,
                charge: None,
                payment_intent: payment.payment_intent.clone(),
                invoice: Some(payment.invoice.clone()),
            },
            EventKind::PaymentIntentSucceeded { payment_intent } => LinkHints {
                stripe_customer: payment_intent.customer.clone(),
                billd_customer_id: metadata_customer(&payment_intent.metadata),
                subscription: None,
                charge: None,
                payment_intent: Some(payment_intent.id.clone()),
                invoice: None,
            },
        }
    }
}
