//! Telemetry: the process metrics `/metrics` renders ([`Metrics`], on
//! `prometheus-client`), the business metrics counted from Stripe events,
//! the email delivery counts and the scrape-time gauges of queued work.
//!
//! Depends on none of `http`, `pipeline` and `jobs` (they count into it),
//! nor on billd-store: what it needs to know arrives as plain values
//! ([`Scrape`]). `src/layout.rs` tests both.

mod business;
mod metrics;
mod scrape;

pub use business::{
    observe, BusinessMetrics, FailureWindow, Observation, PaymentOutcome,
    DEFAULT_PAYMENT_WINDOW_SECS,
};
pub use metrics::{LabelledCounter, Metrics, PairCounter, CONTENT_TYPE};
pub use scrape::{DeadLetters, InboxDepth, JobTimes, QueueGauges, Scrape};
