//! Lenient parsing of Stripe events and objects for the pinned API version.
//!
//! Only the fields billd uses are read; unknown fields are ignored and
//! optional ones may be missing or null, so a Stripe change in a field billd
//! does not use never breaks ingestion. A field billd uses that has the wrong
//! shape (an id without its prefix, an unknown status) is an error naming
//! the field. Event types billd does not handle parse to
//! [`ParsedEvent::Unhandled`] so the inbox can store and skip them.
//!
//! Shape of the pinned version (`2026-09-30.endive`): period dates live on
//! subscription items, and an invoice's subscription is at
//! `parent.subscription_details.subscription`. Includable properties
//! (`invoice.payments`, `charge.refunds`) are never in a webhook, so none is
//! read: `invoice_payment.paid` says which payment intent paid which invoice.

use std::collections::BTreeMap;

use billd_core::event::{
    Card, Charge, CheckoutChange, CheckoutSession, Coupon, CustomerChange, Discount,
    DiscountChange, Dispute, DisputeChange, DisputeStatus, Invoice, InvoiceChange, InvoicePayment,
    PaymentIntent, PaymentMethod, PaymentMethodChange, StripeCustomer, Subscription,
    SubscriptionChange, SubscriptionPrice, SubscriptionStatus,
};
use billd_core::{
    ChargeId, CheckoutSessionId, Currency, DiscountId, DisputeId, Event, EventId, EventKind,
    IdError, InvoiceId, Money, PaymentIntentId, PaymentMethodId, PriceId, StripeCustomerId,
    StripeSubscriptionId,
};
use serde::Deserialize;
use serde_json::Value;

/// Every Stripe event type billd parses into a domain event and applies
/// (the last two only tie a payment intent to its invoice or customer);
/// [`parse_event`] gives every other type as [`ParsedEvent::Unhandled`].
pub const HANDLED_EVENT_TYPES: [&str; 31] = [
    "checkout.session.completed",
    "checkout.session.expired",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.paused",
    "customer.subscription.resumed",
    "customer.subscription.trial_will_end",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "invoice.finalized",
    "invoice.upcoming",
    "charge.refunded",
    "charge.dispute.created",
    "charge.dispute.updated",
    "charge.dispute.closed",
    "customer.created",
    "customer.updated",
    "customer.deleted",
    "customer.discount.created",
    "customer.discount.updated",
    "customer.discount.deleted",
    "payment_method.attached",
    "payment_method.updated",
    "payment_method.automatically_updated",
    "invoice_payment.paid",
    "payment_intent.succeeded",
];

/// Why a webhook payload could not be parsed. [`ParseError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not JSON, or a used field has the wrong JSON type.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A required field is missing.
    #[error("missing field {0}")]
    MissingField(&'static str),
    /// An id field does not have its object's prefix.
    #[error("invalid id in {field}: {source}")]
    InvalidId {
        /// The JSON path of the field.
        field: &'static str,
        /// What is wrong with it.
        source: IdError,
    },
    /// A field has a value billd does not know (e.g. a new status).
    #[error("invalid value {value:?} in {field}")]
    InvalidValue {
        /// The JSON path of the field.
        field: &'static str,
        /// The value.
        value: String,
    },
}

impl ParseError {
    /// A stable snake_case code for the inbox's `last_error` and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::InvalidJson(_) => "invalid_json",
            ParseError::MissingField(_) => "missing_field",
            ParseError::InvalidId { .. } => "invalid_id",
            ParseError::InvalidValue { .. } => "invalid_value",
        }
    }
}

/// A parsed webhook event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedEvent {
    /// A type billd acts on.
    Handled {
        /// The domain event (boxed: it is much larger than the other variant).
        event: Box<Event>,
        /// `api_version` of the payload, if present.
        api_version: Option<String>,
    },
    /// A type billd does not act on: store it and mark it skipped.
    Unhandled {
        /// The event id.
        id: EventId,
        /// The Stripe event type.
        event_type: String,
        /// `event.created`.
        created: i64,
        /// `api_version`, if present.
        api_version: Option<String>,
        /// `data.object.id`, if present.
        object_id: Option<String>,
    },
}

impl ParsedEvent {
    /// The event id.
    pub fn id(&self) -> &EventId {
        match self {
            ParsedEvent::Handled { event, .. } => &event.id,
            ParsedEvent::Unhandled { id, .. } => id,
        }
    }

    /// The Stripe event type.
    pub fn event_type(&self) -> &str {
        match self {
            ParsedEvent::Handled { event, .. } => event.event_type(),
            ParsedEvent::Unhandled { event_type, .. } => event_type,
        }
    }

    /// `event.created`.
    pub fn created(&self) -> i64 {
        match self {
            ParsedEvent::Handled { event, .. } => event.created,
            ParsedEvent::Unhandled { created, .. } => *created,
        }
    }

    /// `api_version`, if present.
    pub fn api_version(&self) -> Option<&str> {
        match self {
            ParsedEvent::Handled { api_version, .. }
            | ParsedEvent::Unhandled { api_version, .. } => api_version.as_deref(),
        }
    }

    /// The id of the object the event is about.
    pub fn object_id(&self) -> Option<String> {
        match self {
            ParsedEvent::Handled { event, .. } => event.object_id(),
            ParsedEvent::Unhandled { object_id, .. } => object_id.clone(),
        }
    }
}

#[derive(Deserialize)]
struct RawEnvelope {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    created: i64,
    #[serde(default)]
    api_version: Option<String>,
    data: RawData,
}

#[derive(Deserialize)]
struct RawData {
    object: Value,
}

/// Parses a webhook body (already signature-checked) into a domain event.
pub fn parse_event(raw: &str) -> Result<ParsedEvent, ParseError> {
    let envelope: RawEnvelope = serde_json::from_str(raw).map_err(json_error)?;
    let id = parse_id("id", &envelope.id, EventId::parse)?;
    let object = &envelope.data.object;
    let Some(kind) = parse_kind(&envelope.event_type, object)? else {
        return Ok(ParsedEvent::Unhandled {
            id,
            event_type: envelope.event_type,
            created: envelope.created,
            api_version: envelope.api_version,
            object_id: object.get("id").and_then(Value::as_str).map(str::to_owned),
        });
    };
    Ok(ParsedEvent::Handled {
        event: Box::new(Event {
            id,
            created: envelope.created,
            authoritative: false,
            refetch_round: 0,
            observed_ns: 0,
            kind,
        }),
        api_version: envelope.api_version,
    })
}

/// Builds the authoritative snapshot billd feeds back after a
/// [`billd_core::Effect::RefetchSubscription`]: `object` is the subscription
/// as `GET /v1/subscriptions/{id}` returned it, `tie_created` the effect's
/// tied second, `trigger` the event whose tie asked for it. A fetched
/// `canceled` subscription is a deletion (terminal at Stripe).
pub fn refetched_subscription_event(
    trigger: EventId,
    tie_created: i64,
    object: &Value,
) -> Result<Event, ParseError> {
    let subscription = parse_subscription(object)?;
    let kind = if subscription.status == SubscriptionStatus::Canceled {
        EventKind::SubscriptionDeleted { subscription }
    } else {
        EventKind::Subscription {
            change: SubscriptionChange::Updated,
            subscription,
        }
    };
    Ok(Event {
        id: trigger,
        created: tie_created,
        authoritative: true,
        refetch_round: 0,
        observed_ns: 0,
        kind,
    })
}

fn parse_kind(event_type: &str, object: &Value) -> Result<Option<EventKind>, ParseError> {
    let subscription = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Subscription {
            change,
            subscription: parse_subscription(object)?,
        })
    };
    let invoice = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Invoice {
            change,
            invoice: parse_invoice(object, change == InvoiceChange::Upcoming)?,
        })
    };
    let dispute = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Dispute {
            change,
            dispute: parse_dispute(object)?,
        })
    };
    let customer = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Customer {
            change,
            customer: parse_customer(object)?,
        })
    };
    let discount = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Discount {
            change,
            discount: parse_discount(object)?,
        })
    };
    let payment_method = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::PaymentMethod {
            change,
            payment_method: parse_payment_method(object)?,
        })
    };
    let checkout = |change| -> Result<EventKind, ParseError> {
        Ok(EventKind::Checkout {
            change,
            session: parse_checkout_session(object)?,
        })
    };
    let kind = match event_type {
        "customer.subscription.created" => subscription(SubscriptionChange::Created)?,
        "customer.subscription.updated" => subscription(SubscriptionChange::Updated)?,
        "customer.subscription.paused" => subscription(SubscriptionChange::Paused)?,
        "customer.subscription.resumed" => subscription(SubscriptionChange::Resumed)?,
        "customer.subscription.trial_will_end" => subscription(SubscriptionChange::TrialWillEnd)?,
        "customer.subscription.deleted" => EventKind::SubscriptionDeleted {
            subscription: parse_subscription(object)?,
        },
        "checkout.session.completed" => checkout(CheckoutChange::Completed)?,
        "checkout.session.expired" => checkout(CheckoutChange::Expired)?,
        "checkout.session.async_payment_succeeded" => {
            checkout(CheckoutChange::AsyncPaymentSucceeded)?
        }
        "checkout.session.async_payment_failed" => checkout(CheckoutChange::AsyncPaymentFailed)?,
        "invoice.paid" => invoice(InvoiceChange::Paid)?,
        "invoice.payment_succeeded" => invoice(InvoiceChange::PaymentSucceeded)?,
        "invoice.payment_failed" => invoice(InvoiceChange::PaymentFailed)?,
        "invoice.payment_action_required" => invoice(InvoiceChange::PaymentActionRequired)?,
        "invoice.finalized" => invoice(InvoiceChange::Finalized)?,
        "invoice.upcoming" => invoice(InvoiceChange::Upcoming)?,
        "charge.refunded" => EventKind::ChargeRefunded {
            charge: parse_charge(object)?,
        },
        "charge.dispute.created" => dispute(DisputeChange::Created)?,
        "charge.dispute.updated" => dispute(DisputeChange::Updated)?,
        "charge.dispute.closed" => dispute(DisputeChange::Closed)?,
        "customer.created" => customer(CustomerChange::Created)?,
        "customer.updated" => customer(CustomerChange::Updated)?,
        "customer.deleted" => EventKind::CustomerDeleted {
            customer: parse_customer(object)?,
        },
        "customer.discount.created" => discount(DiscountChange::Created)?,
        "customer.discount.updated" => discount(DiscountChange::Updated)?,
        "customer.discount.deleted" => discount(DiscountChange::Deleted)?,
        "payment_method.attached" => payment_method(PaymentMethodChange::Attached)?,
        "payment_method.updated" => payment_method(PaymentMethodChange::Updated)?,
        "payment_method.automatically_updated" => {
            payment_method(PaymentMethodChange::AutomaticallyUpdated)?
        }
        "invoice_payment.paid" => EventKind::InvoicePayment {
            payment: parse_invoice_payment(object)?,
        },
        "payment_intent.succeeded" => EventKind::PaymentIntentSucceeded {
            payment_intent: parse_payment_intent(object)?,
        },
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

fn json_error(e: serde_json::Error) -> ParseError {
    ParseError::InvalidJson(e.to_string())
}

fn from_object<T: for<'de> Deserialize<'de>>(object: &Value) -> Result<T, ParseError> {
    T::deserialize(object).map_err(json_error)
}

fn parse_id<T>(
    field: &'static str,
    raw: &str,
    parse: fn(&str) -> Result<T, IdError>,
) -> Result<T, ParseError> {
    parse(raw).map_err(|source| ParseError::InvalidId { field, source })
}

/// An expandable reference: an id string, or the expanded object's `id`.
fn ref_id(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(id) => Some(id),
        Value::Object(object) => object.get("id").and_then(Value::as_str),
        _ => None,
    }
}

fn parse_ref<T>(
    field: &'static str,
    value: Option<&Value>,
    parse: fn(&str) -> Result<T, IdError>,
) -> Result<Option<T>, ParseError> {
    ref_id(value)
        .map(|raw| parse_id(field, raw, parse))
        .transpose()
}

fn parse_currency(field: &'static str, raw: Option<&str>) -> Result<Currency, ParseError> {
    let raw = raw.ok_or(ParseError::MissingField(field))?;
    Currency::parse(raw).map_err(|_| ParseError::InvalidValue {
        field,
        value: raw.to_owned(),
    })
}

/// Metadata values are strings at Stripe; anything else is dropped.
fn metadata(raw: Option<BTreeMap<String, Value>>) -> BTreeMap<String, String> {
    raw.unwrap_or_default()
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k, s)),
            _ => None,
        })
        .collect()
}

#[derive(Deserialize)]
struct RawList<T> {
    #[serde(default = "Vec::new")]
    data: Vec<T>,
}

#[derive(Deserialize)]
struct RawSubscription {
    id: String,
    customer: Option<Value>,
    status: String,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    items: Option<RawList<RawSubscriptionItem>>,
    #[serde(default)]
    cancel_at_period_end: Option<bool>,
    #[serde(default)]
    cancel_at: Option<i64>,
    #[serde(default)]
    trial_end: Option<i64>,
    #[serde(default)]
    discounts: Option<Vec<Value>>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawSubscriptionItem {
    #[serde(default)]
    price: Option<RawPrice>,
    #[serde(default)]
    current_period_start: Option<i64>,
    #[serde(default)]
    current_period_end: Option<i64>,
    #[serde(default)]
    quantity: Option<u64>,
}

#[derive(Deserialize)]
struct RawPrice {
    id: String,
    #[serde(default)]
    lookup_key: Option<String>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    unit_amount: Option<i64>,
    #[serde(default)]
    recurring: Option<RawRecurring>,
}

#[derive(Deserialize)]
struct RawRecurring {
    #[serde(default)]
    usage_type: Option<String>,
}

impl RawSubscriptionItem {
    /// A metered item (overage billed by a meter) is not the plan's item.
    fn is_metered(&self) -> bool {
        self.price
            .as_ref()
            .and_then(|p| p.recurring.as_ref())
            .and_then(|r| r.usage_type.as_deref())
            == Some("metered")
    }
}

/// Parses a subscription object (from an event or from the API).
pub fn parse_subscription(object: &Value) -> Result<Subscription, ParseError> {
    let raw: RawSubscription = from_object(object)?;
    let status =
        SubscriptionStatus::parse(&raw.status).ok_or_else(|| ParseError::InvalidValue {
            field: "status",
            value: raw.status.clone(),
        })?;
    let customer = parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?
        .ok_or(ParseError::MissingField("customer"))?;
    // The plan's item: the first one that is not metered.
    let first_item = raw.items.and_then(|items| {
        let mut items = items.data;
        let at = items.iter().position(|i| !i.is_metered()).unwrap_or(0);
        (at < items.len()).then(|| items.swap_remove(at))
    });
    let (price, quantity, current_period_start, current_period_end) = match first_item {
        Some(item) => {
            let price = item
                .price
                .map(|p| -> Result<SubscriptionPrice, ParseError> {
                    Ok(SubscriptionPrice {
                        id: parse_id("items.data[0].price.id", &p.id, PriceId::parse)?,
                        lookup_key: p.lookup_key,
                        currency: p
                            .currency
                            .as_deref()
                            .map(|c| parse_currency("items.data[0].price.currency", Some(c)))
                            .transpose()?,
                        unit_amount: p.unit_amount,
                    })
                })
                .transpose()?;
            (
                price,
                item.quantity,
                item.current_period_start,
                item.current_period_end,
            )
        }
        None => (None, None, None, None),
    };
    Ok(Subscription {
        id: parse_id("id", &raw.id, StripeSubscriptionId::parse)?,
        customer,
        status,
        created: raw.created.unwrap_or(0),
        price,
        quantity,
        current_period_start,
        current_period_end,
        cancel_at_period_end: raw.cancel_at_period_end.unwrap_or(false),
        cancel_at: raw.cancel_at,
        trial_end: raw.trial_end,
        discounts: raw
            .discounts
            .unwrap_or_default()
            .iter()
            .filter_map(|d| ref_id(Some(d)).map(str::to_owned))
            .collect(),
        metadata: metadata(raw.metadata),
    })
}

#[derive(Deserialize)]
struct RawInvoice {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    amount_due: Option<i64>,
    #[serde(default)]
    amount_paid: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    attempt_count: Option<u32>,
    #[serde(default)]
    next_payment_attempt: Option<i64>,
    #[serde(default)]
    hosted_invoice_url: Option<String>,
    #[serde(default)]
    invoice_pdf: Option<String>,
    #[serde(default)]
    billing_reason: Option<String>,
    #[serde(default)]
    period_start: Option<i64>,
    #[serde(default)]
    period_end: Option<i64>,
    #[serde(default)]
    lines: Option<RawList<RawInvoiceLine>>,
    #[serde(default)]
    parent: Option<RawInvoiceParent>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Deserialize)]
struct RawInvoiceLine {
    #[serde(default)]
    period: Option<RawPeriod>,
}

#[derive(Deserialize)]
struct RawPeriod {
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    end: Option<i64>,
}

#[derive(Deserialize)]
struct RawInvoiceParent {
    #[serde(default)]
    subscription_details: Option<RawSubscriptionDetails>,
}

#[derive(Deserialize)]
struct RawSubscriptionDetails {
    #[serde(default)]
    subscription: Option<Value>,
    /// The subscription's metadata when the invoice was created.
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

/// `preview`: an `invoice.upcoming` object, which is not a real invoice; its
/// id is absent, null, or a preview id (`upcoming_in_…`) and is dropped.
fn parse_invoice(object: &Value, preview: bool) -> Result<Invoice, ParseError> {
    let raw: RawInvoice = from_object(object)?;
    let id = match raw.id.as_deref() {
        Some(id) if preview && InvoiceId::parse(id).is_err() => None,
        Some(id) => Some(parse_id("id", id, InvoiceId::parse)?),
        None => None,
    };
    let currency = parse_currency("currency", raw.currency.as_deref())?;
    let details = raw
        .parent
        .as_ref()
        .and_then(|p| p.subscription_details.as_ref());
    let subscription = details.and_then(|d| d.subscription.as_ref());
    // A subscription invoice carries the subscription's metadata (with
    // `billd_customer_id`) in its parent details; the invoice's own wins.
    let mut invoice_metadata = details
        .map(|d| metadata(d.metadata.clone()))
        .unwrap_or_default();
    invoice_metadata.extend(metadata(raw.metadata));
    // The billed service period is on the lines; the invoice-level period
    // only says which pending items were collected.
    let line_period = raw
        .lines
        .as_ref()
        .and_then(|l| l.data.iter().find_map(|line| line.period.as_ref()));
    Ok(Invoice {
        id,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        subscription: parse_ref(
            "parent.subscription_details.subscription",
            subscription,
            StripeSubscriptionId::parse,
        )?,
        created: raw.created,
        status: raw.status,
        amount_due: Money::new(raw.amount_due.unwrap_or(0), currency.clone()),
        amount_paid: Money::new(raw.amount_paid.unwrap_or(0), currency),
        attempt_count: raw.attempt_count.unwrap_or(0),
        next_payment_attempt: raw.next_payment_attempt,
        hosted_invoice_url: raw.hosted_invoice_url,
        invoice_pdf: raw.invoice_pdf,
        billing_reason: raw.billing_reason,
        period_start: line_period.and_then(|p| p.start).or(raw.period_start),
        period_end: line_period.and_then(|p| p.end).or(raw.period_end),
        metadata: invoice_metadata,
    })
}

#[derive(Deserialize)]
struct RawInvoicePayment {
    id: String,
    #[serde(default)]
    invoice: Option<Value>,
    #[serde(default)]
    payment: Option<RawInvoicePaymentRef>,
}

#[derive(Deserialize)]
struct RawInvoicePaymentRef {
    #[serde(default)]
    payment_intent: Option<Value>,
}

fn parse_invoice_payment(object: &Value) -> Result<InvoicePayment, ParseError> {
    let raw: RawInvoicePayment = from_object(object)?;
    Ok(InvoicePayment {
        invoice: parse_ref("invoice", raw.invoice.as_ref(), InvoiceId::parse)?
            .ok_or(ParseError::MissingField("invoice"))?,
        payment_intent: parse_ref(
            "payment.payment_intent",
            raw.payment.as_ref().and_then(|p| p.payment_intent.as_ref()),
            PaymentIntentId::parse,
        )?,
        id: raw.id,
    })
}

#[derive(Deserialize)]
struct RawPaymentIntent {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

fn parse_payment_intent(object: &Value) -> Result<PaymentIntent, ParseError> {
    let raw: RawPaymentIntent = from_object(object)?;
    Ok(PaymentIntent {
        id: parse_id("id", &raw.id, PaymentIntentId::parse)?,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        metadata: metadata(raw.metadata),
    })
}

#[derive(Deserialize)]
struct RawCharge {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    amount_refunded: Option<i64>,
    #[serde(default)]
    refunded: Option<bool>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    payment_intent: Option<Value>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

fn parse_charge(object: &Value) -> Result<Charge, ParseError> {
    let raw: RawCharge = from_object(object)?;
    Ok(Charge {
        id: parse_id("id", &raw.id, ChargeId::parse)?,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        amount: Money::new(
            raw.amount.ok_or(ParseError::MissingField("amount"))?,
            parse_currency("currency", raw.currency.as_deref())?,
        ),
        amount_refunded: raw.amount_refunded.unwrap_or(0),
        refunded: raw.refunded.unwrap_or(false),
        payment_intent: parse_ref(
            "payment_intent",
            raw.payment_intent.as_ref(),
            PaymentIntentId::parse,
        )?,
        metadata: metadata(raw.metadata),
    })
}

#[derive(Deserialize)]
struct RawDispute {
    id: String,
    #[serde(default)]
    charge: Option<Value>,
    #[serde(default)]
    payment_intent: Option<Value>,
    status: String,
    #[serde(default)]
    amount: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

fn parse_dispute(object: &Value) -> Result<Dispute, ParseError> {
    let raw: RawDispute = from_object(object)?;
    let status = DisputeStatus::parse(&raw.status).ok_or_else(|| ParseError::InvalidValue {
        field: "status",
        value: raw.status.clone(),
    })?;
    // A dispute has no customer of its own; an expanded charge carries one.
    let customer = raw
        .charge
        .as_ref()
        .and_then(Value::as_object)
        .and_then(|charge| charge.get("customer"));
    Ok(Dispute {
        id: parse_id("id", &raw.id, DisputeId::parse)?,
        charge: parse_ref("charge", raw.charge.as_ref(), ChargeId::parse)?,
        customer: parse_ref("charge.customer", customer, StripeCustomerId::parse)?,
        payment_intent: parse_ref(
            "payment_intent",
            raw.payment_intent.as_ref(),
            PaymentIntentId::parse,
        )?,
        status,
        amount: Money::new(
            raw.amount.ok_or(ParseError::MissingField("amount"))?,
            parse_currency("currency", raw.currency.as_deref())?,
        ),
        reason: raw.reason,
    })
}

#[derive(Deserialize)]
struct RawCustomer {
    id: String,
    #[serde(default)]
    created: Option<i64>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

fn parse_customer(object: &Value) -> Result<StripeCustomer, ParseError> {
    let raw: RawCustomer = from_object(object)?;
    Ok(StripeCustomer {
        id: parse_id("id", &raw.id, StripeCustomerId::parse)?,
        created: raw.created,
        email: raw.email,
        metadata: metadata(raw.metadata),
    })
}

#[derive(Deserialize)]
struct RawDiscount {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    subscription: Option<Value>,
    #[serde(default)]
    source: Option<RawDiscountSource>,
    /// Older API versions put the coupon at the top level.
    #[serde(default)]
    coupon: Option<Value>,
    #[serde(default)]
    promotion_code: Option<Value>,
    #[serde(default)]
    start: Option<i64>,
    #[serde(default)]
    end: Option<i64>,
}

#[derive(Deserialize)]
struct RawDiscountSource {
    #[serde(default)]
    coupon: Option<Value>,
}

#[derive(Deserialize)]
struct RawCoupon {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    percent_off: Option<f64>,
    #[serde(default)]
    amount_off: Option<i64>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    duration: Option<String>,
}

fn parse_coupon(value: &Value) -> Result<Option<Coupon>, ParseError> {
    match value {
        Value::String(id) => Ok(Some(Coupon {
            id: id.clone(),
            name: None,
            percent_off_bp: None,
            amount_off: None,
            duration: None,
        })),
        Value::Object(_) => {
            let raw: RawCoupon = from_object(value)?;
            let amount_off = match (raw.amount_off, raw.currency.as_deref()) {
                (Some(amount), Some(currency)) => Some(Money::new(
                    amount,
                    parse_currency("source.coupon.currency", Some(currency))?,
                )),
                _ => None,
            };
            Ok(Some(Coupon {
                id: raw.id,
                name: raw.name,
                // Stripe sends a decimal percentage (25.5); basis points keep it exact.
                #[expect(
                    clippy::cast_possible_truncation,
                    reason = "a percentage in 0..=100 times 100 fits an i64"
                )]
                percent_off_bp: raw.percent_off.map(|p| (p * 100.0).round() as i64),
                amount_off,
                duration: raw.duration,
            }))
        }
        _ => Ok(None),
    }
}

fn parse_discount(object: &Value) -> Result<Discount, ParseError> {
    let raw: RawDiscount = from_object(object)?;
    let coupon = raw
        .source
        .as_ref()
        .and_then(|s| s.coupon.as_ref())
        .or(raw.coupon.as_ref());
    Ok(Discount {
        id: parse_id("id", &raw.id, DiscountId::parse)?,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        subscription: parse_ref(
            "subscription",
            raw.subscription.as_ref(),
            StripeSubscriptionId::parse,
        )?,
        coupon: coupon.map(parse_coupon).transpose()?.flatten(),
        promotion_code: ref_id(raw.promotion_code.as_ref()).map(str::to_owned),
        start: raw.start,
        end: raw.end,
    })
}

#[derive(Deserialize)]
struct RawPaymentMethod {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    card: Option<RawCard>,
}

#[derive(Deserialize)]
struct RawCard {
    #[serde(default)]
    brand: Option<String>,
    #[serde(default)]
    last4: Option<String>,
    #[serde(default)]
    exp_month: Option<u32>,
    #[serde(default)]
    exp_year: Option<i32>,
}

fn parse_payment_method(object: &Value) -> Result<PaymentMethod, ParseError> {
    let raw: RawPaymentMethod = from_object(object)?;
    Ok(PaymentMethod {
        id: parse_id("id", &raw.id, PaymentMethodId::parse)?,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        card: raw.card.map(|c| Card {
            brand: c.brand,
            last4: c.last4,
            exp_month: c.exp_month,
            exp_year: c.exp_year,
        }),
    })
}

#[derive(Deserialize)]
struct RawCheckoutSession {
    id: String,
    #[serde(default)]
    customer: Option<Value>,
    #[serde(default)]
    subscription: Option<Value>,
    #[serde(default)]
    client_reference_id: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    payment_status: Option<String>,
    #[serde(default)]
    payment_intent: Option<Value>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, Value>>,
}

fn parse_checkout_session(object: &Value) -> Result<CheckoutSession, ParseError> {
    let raw: RawCheckoutSession = from_object(object)?;
    Ok(CheckoutSession {
        id: parse_id("id", &raw.id, CheckoutSessionId::parse)?,
        customer: parse_ref("customer", raw.customer.as_ref(), StripeCustomerId::parse)?,
        subscription: parse_ref(
            "subscription",
            raw.subscription.as_ref(),
            StripeSubscriptionId::parse,
        )?,
        client_reference_id: raw.client_reference_id,
        mode: raw.mode,
        payment_status: raw.payment_status,
        payment_intent: parse_ref(
            "payment_intent",
            raw.payment_intent.as_ref(),
            PaymentIntentId::parse,
        )?,
        metadata: metadata(raw.metadata),
    })
}
