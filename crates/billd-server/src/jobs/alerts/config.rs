//! The alerts' channels and thresholds (`BILLD_ALERT_*`) and which webhook
//! rejections count as signature failures.

use std::time::Duration;

use crate::pipeline::AlertChannels;

/// Webhook rejection reasons that count as signature failures.
pub const SIGNATURE_FAILURE_CODES: [&str; 5] = [
    "signature_missing",
    "signature_malformed",
    "signature_v1_missing",
    "signature_mismatch",
    "timestamp_out_of_tolerance",
];

/// Alert channels and thresholds (`BILLD_ALERT_*`).
#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// `BILLD_ALERT_WEBHOOK_URL`: also post alerts here.
    pub webhook_url: Option<String>,
    /// `BILLD_ALERT_DEDUPE_WINDOW_SECS`: one alert per condition per window.
    pub dedupe_window_secs: i64,
    /// `BILLD_ALERT_CHECK_INTERVAL_SECS`: how often conditions are checked.
    pub check_interval: Duration,
    /// `BILLD_ALERT_SIGNATURE_FAILURES`: this many signature failures …
    pub signature_failures: u64,
    /// `BILLD_ALERT_SIGNATURE_WINDOW_SECS`: … within this many seconds alert.
    pub signature_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_FAILURE_PERCENT`: alert when at least this share
    /// of payments failed …
    pub payment_failure_percent: u32,
    /// `BILLD_ALERT_PAYMENT_WINDOW_SECS`: … over this window …
    pub payment_window_secs: i64,
    /// `BILLD_ALERT_PAYMENT_MIN_COUNT`: … counting at least this many payments.
    pub payment_min_count: u64,
    /// `BILLD_ALERT_WEBHOOK_SILENCE_SECS`: alert when no webhook arrived for
    /// this long while a subscription's period ended in the meantime.
    pub webhook_silence_secs: i64,
}

impl AlertConfig {
    /// The channels this config enables besides the admin email.
    pub fn channels(&self) -> AlertChannels {
        AlertChannels {
            webhook: self.webhook_url.is_some(),
        }
    }
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_url: None,
            dedupe_window_secs: 3600,
            check_interval: Duration::from_secs(30),
            signature_failures: 20,
            signature_window_secs: 300,
            payment_failure_percent: 50,
            payment_window_secs: 3600,
            payment_min_count: 10,
            webhook_silence_secs: 6 * 3600,
        }
    }
}
