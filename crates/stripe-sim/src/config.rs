//! Emulator configuration: seed, time, billing schedule and failure knobs.

use serde::{Deserialize, Serialize};

/// The Stripe API version the emulator's objects are shaped for.
pub const API_VERSION: &str = "2026-09-30.endive";

/// What happens to a subscription once every payment retry has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetriesExhausted {
    /// The subscription is canceled (Stripe's default).
    Cancel,
    /// The subscription becomes `unpaid` and stays.
    Unpaid,
}

/// Webhook delivery knobs; probabilities are in `[0, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookKnobs {
    /// Probability that a delivery is sent twice.
    pub duplicate_rate: f64,
    /// Deliveries queued within this window (ms) are shuffled before sending; 0 keeps order.
    pub reorder_window_ms: u64,
    /// Delay (ms) before each first delivery attempt.
    pub delay_ms: u64,
    /// Probability that an event is never delivered to an endpoint (it lists with `delivery_success=false`).
    pub drop_rate: f64,
    /// Attempts per delivery before giving up (Stripe retries for about 3 days).
    pub max_attempts: u32,
}

impl Default for WebhookKnobs {
    fn default() -> Self {
        Self {
            duplicate_rate: 0.0,
            reorder_window_ms: 0,
            delay_ms: 0,
            drop_rate: 0.0,
            max_attempts: 16,
        }
    }
}

/// Failures injected on `/v1` API calls, so clients can prove they survive them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiFaults {
    /// Probability that a call answers 500.
    pub error_rate: f64,
    /// Probability that a call answers 429.
    pub rate_limit_rate: f64,
    /// The next N calls answer 500.
    pub next_errors: u32,
    /// The next N calls answer 429.
    pub next_rate_limits: u32,
}

/// Everything that shapes one emulator instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Seeds ids and the knobs' randomness.
    pub seed: u64,
    /// Multiplies Stripe's real webhook retry delays (e.g. `0.0001` turns an hour into 360 ms).
    pub time_scale: f64,
    /// A sim-wide frozen "now" (unix seconds) for objects without a test clock; `None` = real time.
    pub frozen_time: Option<i64>,
    /// Days before renewal that `invoice.upcoming` is sent.
    pub upcoming_lead_days: i64,
    /// Days before a trial ends that `customer.subscription.trial_will_end` is sent.
    pub trial_will_end_days: i64,
    /// Days after the first failed renewal payment at which it is retried.
    pub retry_schedule_days: Vec<i64>,
    /// What happens when the retries are exhausted.
    pub retries_exhausted: RetriesExhausted,
    /// Hours an `incomplete` subscription waits for its first payment.
    pub incomplete_expiry_hours: i64,
    /// Base URL used in `url` fields (checkout, portal, hosted invoices).
    pub public_url: String,
    /// Keep the state in this JSON file: loaded by [`crate::Sim::load`], rewritten
    /// after every change. `None` = memory only.
    pub snapshot_path: Option<std::path::PathBuf>,
    /// Whether the account has a default billing portal configuration (as one whose
    /// portal settings were saved); off makes portal sessions fail as on a fresh account.
    pub portal_configured: bool,
    /// Webhook delivery knobs.
    pub webhooks: WebhookKnobs,
    /// API failure injection.
    pub faults: ApiFaults,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            time_scale: 1.0,
            frozen_time: None,
            upcoming_lead_days: 3,
            trial_will_end_days: 3,
            retry_schedule_days: vec![3, 5, 7],
            retries_exhausted: RetriesExhausted::Cancel,
            incomplete_expiry_hours: 23,
            public_url: "http://127.0.0.1:12111".to_string(),
            snapshot_path: None,
            portal_configured: true,
            webhooks: WebhookKnobs::default(),
            faults: ApiFaults::default(),
        }
    }
}
