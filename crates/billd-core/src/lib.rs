//! billd's pure billing domain: ids, money, the plan catalog, subscription
//! state, access policy and quota rules.
//!
//! No I/O and no async: adapters parse Stripe payloads into [`Event`]s, call
//! [`apply()`] inside their transaction, persist [`Decision::state`], and write
//! [`Decision::effects`] to the outbox and [`Decision::audit`] to the audit
//! log. Time is always an argument (unix seconds).

#![warn(missing_docs)]

pub mod access;
pub mod apply;
pub mod catalog;
pub mod event;
pub mod ids;
pub mod money;
pub mod schedule;
pub mod state;

pub use access::{
    access_at, check_consume, entitlements, usage_key, usage_keys, usage_period, Access,
    ConsumeError, Entitlements, FeatureEntitlement, Period, Usage, UsageKey,
};
pub use apply::{
    apply, AlertKind, AuditEntry, CancelReason, Decision, Effect, EmailTemplate, Outcome,
};
pub use catalog::{
    Catalog, CatalogError, DowngradePolicy, FeatureKind, FeatureName, Plan, PlanName, Price,
    RefundPolicy,
};
pub use event::{Event, EventKind, LinkHints};
pub use ids::{
    ChargeId, CheckoutSessionId, CustomerId, DiscountId, DisputeId, EventId, IdError, InvoiceId,
    PaymentIntentId, PaymentMethodId, PriceId, PromotionCodeId, StripeCustomerId,
    StripeSubscriptionId,
};
pub use money::{Currency, Money, MoneyError};
pub use schedule::{account_deletion_effects, erase_personal_data, scheduled_effects};
pub use state::{CustomerState, Stamp};
