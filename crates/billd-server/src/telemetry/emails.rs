//! The email delivery counters `/metrics` shows (`billd_emails_total`).
//! What counts as which outcome is the pipeline's to decide
//! (`pipeline::count_email`); this only holds and renders the counts.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counts of email outcomes since start, for the metrics endpoint
/// (`Metrics::emails`). Counted where `crate::billing::start_billing` hands
/// rows to the configured delivery (`pipeline::count_email`), whatever that delivery is (SMTP,
/// the log, a test's), so `/metrics` shows every delivery it made.
#[derive(Debug, Default)]
pub struct EmailCounters {
    /// Handed to the backend.
    pub sent: AtomicU64,
    /// Skipped: nobody to send to.
    pub no_recipient: AtomicU64,
    /// Written to the log: no mailer configured (dev mode).
    pub logged: AtomicU64,
    /// Failed, will be retried.
    pub transient: AtomicU64,
    /// Failed for good: the row is dead.
    pub dead: AtomicU64,
}

impl EmailCounters {
    /// Prometheus text lines for `billd_emails_total{outcome}`.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP billd_emails_total Email and alert deliveries by outcome.\n# TYPE billd_emails_total counter\n",
        );
        for (outcome, n) in [
            ("sent", &self.sent),
            ("no_recipient", &self.no_recipient),
            ("logged", &self.logged),
            ("transient_failure", &self.transient),
            ("dead", &self.dead),
        ] {
            out.push_str(&format!(
                "billd_emails_total{{outcome=\"{outcome}\"}} {}\n",
                n.load(Ordering::Relaxed)
            ));
        }
        out
    }
}
