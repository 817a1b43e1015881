//! billd's pure billing domain: ids, money, the plan catalog, subscription
//! state, access policy and quota rules.
//!
//! No I/O and no async: adapters parse Stripe payloads into [`Event`]s, call
//! [`apply()`] inside their transaction, persist [`Decision::state`], and write
//! [`Decision::effects`] to the outbox and [`Decision::audit`] to the audit
//! log. Time is always an argument (unix seconds).
//!
//! # How the adapters use it
//! 1. Inbox worker: `billd_stripe::events::parse_event(payload)`; for a
//!    handled event, find the billd customer from [`Event::link_hints`]
//!    (Stripe customer id, else `metadata[billd_customer_id]`; none: park
//!    the event as `unlinked`); load that customer's [`CustomerState`] (a
//!    JSON document, `Default` for a new customer); `apply(&state, &event,
//!    &catalog, now)`; in one transaction store `decision.state` (always,
//!    whatever [`Outcome`]), one outbox row per [`Effect`] (unique on
//!    [`Effect::dedupe_key`], insert-or-ignore) and one audit row per
//!    [`AuditEntry`].
//! 2. Outbox worker: [`Effect::RefetchSubscription`] → `GET
//!    /v1/subscriptions/{id}`, then
//!    `billd_stripe::events::refetched_subscription_event(trigger,
//!    tie_created, &object)` and back to step 1; [`Effect::CancelSubscription`]
//!    → `DELETE /v1/subscriptions/{id}`; emails and alerts → the mailer.
//! 3. Entitlements: [`usage_keys`] names the counters to load into
//!    [`Usage`]; [`entitlements`] answers `GET …/entitlements`.
//! 4. Consume: [`entitlements`] then [`check_consume`], which returns the
//!    limit for the store's atomic `used + amount <= limit` update on the
//!    counter `FeatureEntitlement::usage_key` (its `period_start` is `None`
//!    for capacity features).
//! 5. Scheduler: [`scheduled_effects`] per customer (renewal reminders,
//!    card expiry, grace ending), written to the outbox like step 1; and
//!    [`grace_expiry`] (access suspended: audit row, email, recorded once).
//! 6. Account deletion: [`account_deletion_effects`], then
//!    [`erase_personal_data`]; the stored copies (audit values, raw Stripe
//!    payloads, outbox payloads) are redacted with [`erasure`]'s rules.

#![warn(missing_docs)]

pub mod access;
pub mod apply;
pub mod calendar;
pub mod catalog;
pub mod consume;
pub mod credits;
pub mod email;
pub mod erasure;
pub mod event;
pub mod ids;
pub mod money;
pub mod pricing;
pub mod quantity;
pub mod schedule;
pub mod state;

pub use access::{
    access_at, check_consume, entitlements, open_overage, usage_key, usage_keys, usage_period,
    Access, Balance, ConsumeError, Entitlements, FeatureEntitlement, FlagEntitlement, Period,
    Usage, UsageKey,
};
pub use apply::{
    apply, meter_identifier, AlertKind, AuditEntry, CancelReason, Decision, Effect, EmailTemplate,
    Outcome, StripeCustomerErasure, MAX_REFETCH_ROUNDS,
};
pub use catalog::{
    Catalog, CatalogError, CreditPack, DowngradePolicy, FeatureKind, FeatureName, Interval,
    Overage, PackName, Plan, PlanName, Price, PriceSlot, RefundPolicy, SeatRange,
};
pub use consume::{consume_target, ConsumeTarget, CreditTarget, OverageMeter};
pub use email::{Email, EmailError};
pub use erasure::{
    is_personal_audit_field, redact_audit, redact_audit_values, redact_dedupe_key, scrub_json,
    scrub_json_text, ERASED,
};
pub use event::{Event, EventKind, LinkHints};
pub use ids::{
    ChargeId, CheckoutSessionId, CustomerId, DiscountId, DisputeId, EventId, IdError,
    IdempotencyKey, InvoiceId, PaymentIntentId, PaymentMethodId, PriceId, PromotionCodeId,
    StripeCustomerId, StripeSubscriptionId,
};
pub use money::{Currency, Money, MoneyError};
pub use pricing::{
    check_seat_change, checkout_seats, eligibility, seats_after_change, yearly_amount, Choice,
    Eligibility, SeatsError, Subscribed, Unavailable,
};
pub use quantity::{Quantity, QuantityError};
pub use schedule::{
    access_suspended_key, account_deletion_effects, account_erasure_effects, erase_personal_data,
    grace_expiry, scheduled_effects,
};
pub use state::{CustomerState, Stamp};
