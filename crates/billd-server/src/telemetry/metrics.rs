//! billd's process metrics on `prometheus-client`. Each [`Metrics`] owns its
//! registry (no global recorder), so the many billd instances one test
//! process starts count apart. Names follow `billd_<thing>_<unit>`, labels
//! are low-cardinality (reason codes, statuses, outcomes).
//!
//! Two conventions of the crate shape the names below: a counter is
//! registered by its base name and the encoder appends `_total`, and the
//! registry ends every help text with a full stop.

use std::borrow::Cow;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::business::BusinessMetrics;
use crate::telemetry::scrape::Scrape;

/// The `Content-Type` of [`Metrics::render`]'s text (Prometheus 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// The label pairs of one series. Values counted on hot paths are
/// `&'static` (no allocation per increment); values read from the store are
/// owned.
type Labels<const N: usize> = [(&'static str, Cow<'static, str>); N];

fn labels<const N: usize>(names: [&'static str; N], values: [Cow<'static, str>; N]) -> Labels<N> {
    std::array::from_fn(|i| (names[i], values[i].clone()))
}

/// Registers an empty family of metrics `name`, for the caller to fill.
fn family<M, const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
) -> Family<Labels<N>, M>
where
    M: Default,
    Family<Labels<N>, M>: prometheus_client::registry::Metric + Clone,
{
    let family = Family::default();
    registry.register(name, help, family.clone());
    family
}

/// A counter per combination of `N` label values.
#[derive(Debug, Clone)]
struct Counters<const N: usize> {
    names: [&'static str; N],
    family: Family<Labels<N>, Counter>,
}

impl<const N: usize> Counters<N> {
    fn register(registry: &mut Registry, name: &str, help: &str, names: [&'static str; N]) -> Self {
        Counters {
            names,
            family: family(registry, name, help),
        }
    }

    fn counter(&self, values: [&'static str; N]) -> Counter {
        self.family
            .get_or_create_owned(&labels(self.names, values.map(Cow::Borrowed)))
    }

    fn get(&self, values: [&str; N]) -> u64 {
        let key = labels(self.names, values.map(|v| Cow::Owned(v.to_owned())));
        self.family.get(&key).map_or(0, |counter| counter.get())
    }
}

/// A counter per value of one label.
#[derive(Debug, Clone)]
pub struct LabelledCounter(Counters<1>);

impl LabelledCounter {
    /// Registers `name{label}` in `registry`. `listed` values are shown
    /// from the start (at 0), so dashboards see those series before
    /// anything happened; others appear when first counted.
    pub(crate) fn register(
        registry: &mut Registry,
        name: &str,
        help: &str,
        label: &'static str,
        listed: &[&'static str],
    ) -> Self {
        let counters = Counters::register(registry, name, help, [label]);
        for value in listed {
            counters.counter([value]);
        }
        LabelledCounter(counters)
    }

    /// Adds one to `value`.
    pub fn inc(&self, value: &'static str) {
        self.0.counter([value]).inc();
    }

    /// The current count of `value` (0 when never counted).
    pub fn get(&self, value: &str) -> u64 {
        self.0.get([value])
    }
}

/// A counter per pair of label values (`job`, `outcome`).
#[derive(Debug, Clone)]
pub struct PairCounter(Counters<2>);

impl PairCounter {
    /// Adds one to `(first, second)`.
    pub fn inc(&self, first: &'static str, second: &'static str) {
        self.0.counter([first, second]).inc();
    }

    /// The current count of `(first, second)` (0 when never counted).
    pub fn get(&self, first: &str, second: &str) -> u64 {
        self.0.get([first, second])
    }
}

/// Registers the gauge `name` at `value`.
pub(crate) fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let gauge: Gauge = Gauge::default();
    gauge.set(value);
    registry.register(name, help, gauge);
}

/// Registers the gauge family `name{names…}` with one series per row.
pub(crate) fn gauges<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    names: [&'static str; N],
    rows: impl IntoIterator<Item = ([Cow<'static, str>; N], i64)>,
) {
    let family: Family<Labels<N>, Gauge> = family(registry, name, help);
    for (values, value) in rows {
        family.get_or_create(&labels(names, values)).set(value);
    }
}

/// Registers the counter `name` (exposed as `name_total`).
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

/// All of billd's process-local metrics, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Webhook requests received (any outcome).
    pub webhooks_received: Counter,
    /// Webhooks stored as new inbox rows.
    pub webhooks_accepted: Counter,
    /// Webhooks whose event id was already stored.
    pub webhooks_duplicate: Counter,
    /// Webhooks refused, by reason code.
    pub webhooks_rejected: LabelledCounter,
    /// Group-commit transactions.
    pub ingest_batches: Counter,
    /// Events written through group commit (sum of batch sizes).
    pub ingest_batched_events: Counter,
    /// Processing attempts started by the inbox worker.
    pub processing_attempts: Counter,
    /// Processing outcomes (`processed`, `skipped`, `unlinked`, `retry`, `dead`).
    pub processing_outcomes: LabelledCounter,
    /// Events made `dead`, by reason code (`payload_invalid`, `id_invalid`,
    /// `shape_unknown`, `invariant_violated`, `stripe_refused`,
    /// `attempts_exhausted`).
    pub events_dead: LabelledCounter,
    /// Store errors by class (`unavailable`, `other`, ...).
    pub store_errors: LabelledCounter,
    /// Reconciliation runs that completed (dry runs not counted).
    pub reconcile_runs: Counter,
    /// Drifted subscriptions reconciliation found and healed, by kind
    /// (`missing`, `status`, `plan`, `cancel_flag`, `period`).
    pub reconcile_drift: LabelledCounter,
    /// Payments, disputes and refunds the lifecycle applied.
    pub business: BusinessMetrics,
    /// Email and email-channel alert deliveries, by outcome (`sent`,
    /// `no_recipient`, `logged`, `transient_failure`, `dead`), counted
    /// around the configured delivery (`pipeline::count_email`).
    pub emails: LabelledCounter,
    /// Alerts written to the outbox, by kind.
    pub alerts_raised: LabelledCounter,
    /// Alerts not written because their window already had one, by kind.
    pub alerts_suppressed: LabelledCounter,
    /// Webhook-channel alert deliveries, by outcome.
    pub alert_webhook_deliveries: LabelledCounter,
    /// Scheduler job runs by job and outcome (`succeeded`, `failed`).
    pub scheduler_runs: PairCounter,
}

/// The outcomes `billd_emails_total` always lists.
const EMAIL_OUTCOMES: [&str; 5] = [
    "sent",
    "no_recipient",
    "logged",
    "transient_failure",
    "dead",
];

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        // Registration order is the order `/metrics` shows.
        let webhooks_received = counter(r, "billd_webhooks_received", "Webhook requests received");
        let webhooks_accepted = counter(
            r,
            "billd_webhooks_accepted",
            "Webhook events stored as new inbox rows",
        );
        let webhooks_duplicate = counter(
            r,
            "billd_webhooks_duplicate",
            "Webhook events acknowledged as duplicates of a stored event",
        );
        let webhooks_rejected = LabelledCounter::register(
            r,
            "billd_webhooks_rejected",
            "Webhook requests refused, by reason code",
            "reason",
            &[],
        );
        let ingest_batches = counter(
            r,
            "billd_ingest_batches",
            "Group-commit transactions written by the webhook writer",
        );
        let ingest_batched_events = counter(
            r,
            "billd_ingest_events",
            "Events submitted to group commit (sum of batch sizes)",
        );
        let processing_attempts =
            counter(r, "billd_processing_attempts", "Inbox processing attempts");
        let processing_outcomes = LabelledCounter::register(
            r,
            "billd_processing_outcomes",
            "Inbox processing outcomes",
            "outcome",
            &[],
        );
        let events_dead = LabelledCounter::register(
            r,
            "billd_events_dead",
            "Inbox events made dead, by reason code",
            "reason",
            &[],
        );
        let store_errors = LabelledCounter::register(
            r,
            "billd_store_errors",
            "Store errors, by class",
            "kind",
            &[],
        );
        let reconcile_runs = counter(r, "billd_reconcile_runs", "Reconciliation runs completed");
        let reconcile_drift = LabelledCounter::register(
            r,
            "billd_reconcile_drift",
            "Subscriptions whose state billd had missed, found and healed by reconciliation, by kind",
            "kind",
            &[],
        );
        let business = BusinessMetrics::register(r);
        let emails = LabelledCounter::register(
            r,
            "billd_emails",
            "Email and alert deliveries by outcome",
            "outcome",
            &EMAIL_OUTCOMES,
        );
        let alerts_raised = LabelledCounter::register(
            r,
            "billd_alerts",
            "Alerts written to the outbox (one row per channel), by kind",
            "kind",
            &[],
        );
        let alerts_suppressed = LabelledCounter::register(
            r,
            "billd_alerts_suppressed",
            "Alert conditions folded into an alert already sent in the same window, by kind",
            "kind",
            &[],
        );
        let alert_webhook_deliveries = LabelledCounter::register(
            r,
            "billd_alert_webhook_deliveries",
            "Alert webhook posts, by outcome",
            "outcome",
            &[],
        );
        let scheduler_runs = PairCounter(Counters::register(
            r,
            "billd_scheduler_runs",
            "Scheduler job runs, by job and outcome",
            ["job", "outcome"],
        ));
        Metrics {
            registry,
            webhooks_received,
            webhooks_accepted,
            webhooks_duplicate,
            webhooks_rejected,
            ingest_batches,
            ingest_batched_events,
            processing_attempts,
            processing_outcomes,
            events_dead,
            store_errors,
            reconcile_runs,
            reconcile_drift,
            business,
            emails,
            alerts_raised,
            alerts_suppressed,
            alert_webhook_deliveries,
            scheduler_runs,
        }
    }
}

impl Metrics {
    /// The Prometheus text format ([`CONTENT_TYPE`]): the process counters,
    /// then the gauges of this scrape: the payment failure ratio of the
    /// window ending at `now`, and what `scrape` read from the store.
    pub fn render(&self, scrape: &Scrape, now: i64) -> String {
        let mut at_scrape = Registry::default();
        self.business.register_failure_ratio(&mut at_scrape, now);
        scrape.register(&mut at_scrape);
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        let _ = prometheus_text::encode(&mut out, &at_scrape);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::InboxDepth;

    #[test]
    fn rendering_includes_labelled_counters_inbox_depth_and_lag() {
        let metrics = Metrics::default();
        metrics.webhooks_received.inc_by(3);
        metrics.webhooks_rejected.inc("signature_mismatch");
        metrics.webhooks_rejected.inc("signature_mismatch");
        let scrape = Scrape {
            inbox: Some(InboxDepth {
                by_status: vec![("pending", 4), ("processed", 0), ("dead", 1)],
                unlinked: 2,
                lag_secs: 10,
            }),
            ..Scrape::default()
        };

        let text = metrics.render(&scrape, 1000);

        assert!(text.contains(
            "# HELP billd_webhooks_received_total Webhook requests received.\n\
             # TYPE billd_webhooks_received_total counter\n\
             billd_webhooks_received_total 3\n"
        ));
        assert!(text.contains("billd_webhooks_rejected_total{reason=\"signature_mismatch\"} 2\n"));
        assert!(text.contains("billd_inbox_depth_events{status=\"pending\"} 4\n"));
        assert!(text.contains("billd_inbox_depth_events{status=\"processed\"} 0\n"));
        assert!(text.contains("billd_processing_lag_seconds 10\n"));
        assert!(text.contains("billd_inbox_unlinked_events 2\n"));
        assert!(text.contains("billd_emails_total{outcome=\"logged\"} 0\n"));
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn each_metrics_counts_apart_from_every_other() {
        let (one, other) = (Metrics::default(), Metrics::default());

        one.processing_outcomes.inc("processed");
        one.scheduler_runs.inc("reconcile", "failed");

        assert_eq!(one.processing_outcomes.get("processed"), 1);
        assert_eq!(other.processing_outcomes.get("processed"), 0);
        assert_eq!(one.scheduler_runs.get("reconcile", "failed"), 1);
        assert_eq!(other.scheduler_runs.get("reconcile", "failed"), 0);
        assert!(!other
            .render(&Scrape::default(), 0)
            .contains("billd_processing_outcomes_total"));
    }
}
