//! Telemetry: the process metrics `/metrics` renders ([`Metrics`]), the
//! business metrics counted from Stripe events, the email delivery counts
//! and the scrape-time gauges of queued work.
//!
//! Depends on none of `http`, `pipeline` and `jobs` (they count into it);
//! what it needs to know arrives as plain data or store rows.

mod business;
mod emails;
mod metrics;
mod queue_gauges;

pub use business::{
    observe, BusinessMetrics, FailureWindow, Observation, PaymentOutcome,
    DEFAULT_PAYMENT_WINDOW_SECS,
};
pub use emails::EmailCounters;
pub use metrics::{
    inbox_lag_secs, store_error_kind, DeadLetters, LabelledCounter, Metrics, PairCounter,
};
pub use queue_gauges::QueueGauges;
