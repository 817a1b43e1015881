//! Prometheus metrics, hand-rolled with atomics: a handful of counters does
//! not justify a registry crate. Names follow `billd_<thing>_<unit>`, labels
//! are low-cardinality (reason codes, statuses, outcomes).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use billd_store::{EventStatus, InboxStats};

/// A counter per label value, for the few labelled counters billd has.
#[derive(Debug, Default)]
pub struct LabelledCounter(Mutex<BTreeMap<&'static str, u64>>);

impl LabelledCounter {
    /// Adds one to `label`.
    pub fn inc(&self, label: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry(label).or_default() += 1;
        }
    }

    /// The current value for `label`.
    pub fn get(&self, label: &str) -> u64 {
        self.0
            .lock()
            .map(|m| m.get(label).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }
}

/// A counter per pair of label values (`job`, `outcome`).
#[derive(Debug, Default)]
pub struct PairCounter(Mutex<BTreeMap<(&'static str, &'static str), u64>>);

impl PairCounter {
    /// Adds one to `(first, second)`.
    pub fn inc(&self, first: &'static str, second: &'static str) {
        if let Ok(mut map) = self.0.lock() {
            *map.entry((first, second)).or_default() += 1;
        }
    }

    /// The current value for `(first, second)`.
    pub fn get(&self, first: &str, second: &str) -> u64 {
        self.0
            .lock()
            .map(|m| {
                m.iter()
                    .find(|((a, b), _)| *a == first && *b == second)
                    .map_or(0, |(_, n)| *n)
            })
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str, labels: (&str, &str)) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        if let Ok(map) = self.0.lock() {
            for ((a, b), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{{}=\"{a}\",{}=\"{b}\"}} {n}",
                    labels.0, labels.1
                );
            }
        }
    }
}

/// All of billd's process-local metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Webhook requests received (any outcome).
    pub webhooks_received: AtomicU64,
    /// Webhooks stored as new inbox rows.
    pub webhooks_accepted: AtomicU64,
    /// Webhooks whose event id was already stored.
    pub webhooks_duplicate: AtomicU64,
    /// Webhooks refused, by reason code.
    pub webhooks_rejected: LabelledCounter,
    /// Group-commit transactions.
    pub ingest_batches: AtomicU64,
    /// Events written through group commit (sum of batch sizes).
    pub ingest_batched_events: AtomicU64,
    /// Processing attempts started by the inbox worker.
    pub processing_attempts: AtomicU64,
    /// Processing outcomes (`processed`, `skipped`, `unlinked`, `retry`, `dead`).
    pub processing_outcomes: LabelledCounter,
    /// Events made `dead`, by reason code (`payload_invalid`, `id_invalid`,
    /// `shape_unknown`, `invariant_violated`, `stripe_refused`,
    /// `attempts_exhausted`).
    pub events_dead: LabelledCounter,
    /// Store errors by class (`unavailable`, `other`, ...).
    pub store_errors: LabelledCounter,
    /// Reconciliation runs that completed (dry runs not counted).
    pub reconcile_runs: AtomicU64,
    /// Drifted subscriptions reconciliation found and healed, by kind
    /// (`missing`, `status`, `plan`, `cancel_flag`, `period`).
    pub reconcile_drift: LabelledCounter,
    /// Payments, disputes and refunds the lifecycle applied.
    pub business: crate::telemetry::business::BusinessMetrics,
    /// Email and email-channel alert deliveries, counted by
    /// `alerts::AlertDelivery` around the configured delivery.
    pub emails: super::emails::EmailCounters,
    /// Alerts written to the outbox, by kind.
    pub alerts_raised: LabelledCounter,
    /// Alerts not written because their window already had one, by kind.
    pub alerts_suppressed: LabelledCounter,
    /// Webhook-channel alert deliveries, by outcome.
    pub alert_webhook_deliveries: LabelledCounter,
    /// Scheduler job runs by job and outcome (`succeeded`, `failed`).
    pub scheduler_runs: PairCounter,
}

impl Metrics {
    /// Counts a store error by its class.
    pub fn store_error(&self, err: &billd_store::StoreError) {
        self.store_errors.inc(store_error_kind(err));
    }

    /// Renders the Prometheus text format. `inbox` comes from the store at
    /// scrape time (None when the store could not be read), `now` for lag.
    pub fn render(&self, inbox: Option<&InboxStats>, now: i64) -> String {
        let mut out = String::with_capacity(2048);
        counter(
            &mut out,
            "billd_webhooks_received_total",
            "Webhook requests received.",
            self.webhooks_received.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "billd_webhooks_accepted_total",
            "Webhook events stored as new inbox rows.",
            self.webhooks_accepted.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "billd_webhooks_duplicate_total",
            "Webhook events acknowledged as duplicates of a stored event.",
            self.webhooks_duplicate.load(Ordering::Relaxed),
        );
        labelled(
            &mut out,
            "billd_webhooks_rejected_total",
            "Webhook requests refused, by reason code.",
            "reason",
            &self.webhooks_rejected.snapshot(),
        );
        counter(
            &mut out,
            "billd_ingest_batches_total",
            "Group-commit transactions written by the webhook writer.",
            self.ingest_batches.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "billd_ingest_events_total",
            "Events submitted to group commit (sum of batch sizes).",
            self.ingest_batched_events.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "billd_processing_attempts_total",
            "Inbox processing attempts.",
            self.processing_attempts.load(Ordering::Relaxed),
        );
        labelled(
            &mut out,
            "billd_processing_outcomes_total",
            "Inbox processing outcomes.",
            "outcome",
            &self.processing_outcomes.snapshot(),
        );
        labelled(
            &mut out,
            "billd_events_dead_total",
            "Inbox events made dead, by reason code.",
            "reason",
            &self.events_dead.snapshot(),
        );
        labelled(
            &mut out,
            "billd_store_errors_total",
            "Store errors, by class.",
            "kind",
            &self.store_errors.snapshot(),
        );
        counter(
            &mut out,
            "billd_reconcile_runs_total",
            "Reconciliation runs completed.",
            self.reconcile_runs.load(Ordering::Relaxed),
        );
        labelled(
            &mut out,
            "billd_reconcile_drift_total",
            "Subscriptions whose state billd had missed, found and healed by reconciliation, by kind.",
            "kind",
            &self.reconcile_drift.snapshot(),
        );
        out.push_str(&self.business.render(now));
        out.push_str(&self.emails.render());
        labelled(
            &mut out,
            "billd_alerts_total",
            "Alerts written to the outbox (one row per channel), by kind.",
            "kind",
            &self.alerts_raised.snapshot(),
        );
        labelled(
            &mut out,
            "billd_alerts_suppressed_total",
            "Alert conditions folded into an alert already sent in the same window, by kind.",
            "kind",
            &self.alerts_suppressed.snapshot(),
        );
        labelled(
            &mut out,
            "billd_alert_webhook_deliveries_total",
            "Alert webhook posts, by outcome.",
            "outcome",
            &self.alert_webhook_deliveries.snapshot(),
        );
        self.scheduler_runs.render(
            &mut out,
            "billd_scheduler_runs_total",
            "Scheduler job runs, by job and outcome.",
            ("job", "outcome"),
        );
        if let Some(stats) = inbox {
            let _ = writeln!(
                out,
                "# HELP billd_inbox_depth_events Inbox rows by status.\n# TYPE billd_inbox_depth_events gauge"
            );
            for status in EventStatus::ALL {
                let n = stats
                    .by_status
                    .iter()
                    .find(|(s, _)| *s == status)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "billd_inbox_depth_events{{status=\"{}\"}} {n}",
                    status.as_str()
                );
            }
            // Parked events wait for a link that may never come: their own
            // gauge makes the alert rule one line.
            let unlinked = stats
                .by_status
                .iter()
                .find(|(s, _)| *s == EventStatus::Unlinked)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(
                out,
                "# HELP billd_inbox_unlinked_events Events parked because no customer could be linked yet.\n# TYPE billd_inbox_unlinked_events gauge\nbilld_inbox_unlinked_events {unlinked}"
            );
            let lag = inbox_lag_secs(stats, now);
            let _ = writeln!(
                out,
                "# HELP billd_processing_lag_seconds Age of the oldest event waiting to be processed.\n# TYPE billd_processing_lag_seconds gauge\nbilld_processing_lag_seconds {lag}"
            );
        }
        out
    }
}

/// Dead-lettered rows by queue and kind (event type for the inbox, effect
/// kind for the outbox), read from the store at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// `(event type, count)` of dead inbox events.
    pub inbox: BTreeMap<String, u64>,
    /// `(outbox kind, count)` of dead outbox rows.
    pub outbox: BTreeMap<String, u64>,
}

impl DeadLetters {
    /// Counts the dead rows of both queues.
    pub async fn load(store: &dyn billd_store::Store) -> billd_store::StoreResult<Self> {
        let mut dead = DeadLetters::default();
        let events = store
            .list_events(&billd_store::EventFilter {
                status: Some(EventStatus::Dead),
                ..billd_store::EventFilter::default()
            })
            .await?;
        for event in events {
            *dead.inbox.entry(event.event_type).or_default() += 1;
        }
        let rows = store
            .list_outbox(&billd_store::OutboxFilter {
                status: Some(billd_store::OutboxStatus::Dead),
                ..billd_store::OutboxFilter::default()
            })
            .await?;
        for row in rows {
            *dead.outbox.entry(row.kind).or_default() += 1;
        }
        Ok(dead)
    }

    /// Prometheus text for `billd_dead_letters{queue,kind}`; the totals per
    /// queue are always listed (`kind="all"`), so an alert rule sees 0.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP billd_dead_letters Dead-lettered rows waiting for an operator, by queue and kind.\n# TYPE billd_dead_letters gauge\n",
        );
        for (queue, counts) in [("inbox", &self.inbox), ("outbox", &self.outbox)] {
            let total: u64 = counts.values().sum();
            let _ = writeln!(
                out,
                "billd_dead_letters{{queue=\"{queue}\",kind=\"all\"}} {total}"
            );
            for (kind, n) in counts {
                let _ = writeln!(
                    out,
                    "billd_dead_letters{{queue=\"{queue}\",kind=\"{}\"}} {n}",
                    label_value(kind)
                );
            }
        }
        out
    }
}

/// Escapes a label value (backslash, quote, newline) for the text format.
fn label_value(raw: &str) -> String {
    raw.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds the oldest waiting event has waited (0 when none waits).
pub fn inbox_lag_secs(stats: &InboxStats, now: i64) -> i64 {
    stats
        .oldest_waiting_received_at
        .map(|t| (now - t).max(0))
        .unwrap_or(0)
}

/// The metric label of a store error.
pub fn store_error_kind(err: &billd_store::StoreError) -> &'static str {
    match err {
        billd_store::StoreError::NotFound => "not_found",
        billd_store::StoreError::Conflict { .. } => "conflict",
        billd_store::StoreError::Unavailable(_) => "unavailable",
        billd_store::StoreError::Other(_) => "other",
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn labelled(out: &mut String, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (value_label, value) in values {
        let _ = writeln!(out, "{name}{{{label}=\"{value_label}\"}} {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_includes_labelled_counters_inbox_depth_and_lag() {
        let metrics = Metrics::default();
        metrics.webhooks_received.fetch_add(3, Ordering::Relaxed);
        metrics.webhooks_rejected.inc("signature_mismatch");
        metrics.webhooks_rejected.inc("signature_mismatch");
        let stats = InboxStats {
            by_status: vec![
                (EventStatus::Pending, 4),
                (EventStatus::Dead, 1),
                (EventStatus::Unlinked, 2),
            ],
            oldest_waiting_received_at: Some(990),
        };

        let text = metrics.render(Some(&stats), 1000);

        assert!(text.contains("billd_webhooks_received_total 3\n"));
        assert!(text.contains("billd_webhooks_rejected_total{reason=\"signature_mismatch\"} 2\n"));
        assert!(text.contains("billd_inbox_depth_events{status=\"pending\"} 4\n"));
        assert!(text.contains("billd_inbox_depth_events{status=\"processed\"} 0\n"));
        assert!(text.contains("billd_processing_lag_seconds 10\n"));
        assert!(text.contains("billd_inbox_unlinked_events 2\n"));
    }
}
