//! The gauges `/metrics` reads from the store at every scrape, so they are
//! right whichever instance did the work: inbox depth and lag, dead
//! letters, outbox depth and the scheduler's job times. They arrive as
//! plain values (the pipeline reads the store; telemetry reads none) and
//! are registered in the scrape's own registry.

use std::borrow::Cow;
use std::collections::BTreeMap;

use prometheus_client::registry::Registry;

use crate::telemetry::metrics::{gauge, gauges};

/// What one scrape read from the store. A part is `None` when its read
/// failed; its series are then left out of that scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scrape {
    /// Inbox rows per status and the processing lag.
    pub inbox: Option<InboxDepth>,
    /// Dead-lettered rows of both queues.
    pub dead_letters: Option<DeadLetters>,
    /// Outbox depth and scheduler job times.
    pub queues: Option<QueueGauges>,
}

/// Inbox rows by status, and how long the oldest waiting event has waited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxDepth {
    /// Rows per status, every status listed (0 when none).
    pub by_status: Vec<(&'static str, i64)>,
    /// Events parked because no customer could be linked yet.
    pub unlinked: i64,
    /// Seconds the oldest waiting event has waited (0 when none waits).
    pub lag_secs: i64,
}

/// Dead-lettered rows by queue and kind (event type for the inbox, effect
/// kind for the outbox).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetters {
    /// `(event type, count)` of dead inbox events.
    pub inbox: BTreeMap<String, u64>,
    /// `(outbox kind, count)` of dead outbox rows.
    pub outbox: BTreeMap<String, u64>,
}

/// Outbox depth and scheduler job times.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGauges {
    /// Outbox rows per status shown: what waits or needs an operator
    /// (`pending`, `processing`, `dead`), each listed.
    pub outbox_depth: Vec<(&'static str, i64)>,
    /// Age of the oldest outbox row not yet sent or dead (0 when none).
    pub outbox_oldest_waiting_secs: i64,
    /// Every scheduler job that ever ran or was scheduled.
    pub jobs: Vec<JobTimes>,
}

/// One scheduler job's last and next run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobTimes {
    /// The job's name (`renewal_reminders`, …).
    pub name: String,
    /// When the last run finished, unix seconds (none before the first).
    pub last_run_at: Option<i64>,
    /// Whether the last run failed.
    pub last_run_failed: bool,
    /// When the job is due next, unix seconds.
    pub next_run_at: i64,
}

/// One per-job gauge: its value for a job, if it has one.
type JobGauge = (&'static str, &'static str, fn(&JobTimes) -> Option<i64>);

const JOB_GAUGES: [JobGauge; 4] = [
    (
        "billd_scheduler_last_run_timestamp_seconds",
        "When each scheduler job last finished a run, unix seconds",
        |job| job.last_run_at,
    ),
    (
        "billd_scheduler_last_success_timestamp_seconds",
        "When each scheduler job last finished a run that succeeded, unix seconds (absent while its last run failed)",
        |job| job.last_run_at.filter(|_| !job.last_run_failed),
    ),
    (
        "billd_scheduler_last_run_failed",
        "1 when a scheduler job's last run failed, else 0",
        |job| job.last_run_at.map(|_| i64::from(job.last_run_failed)),
    ),
    (
        "billd_scheduler_next_run_timestamp_seconds",
        "When each scheduler job is due next, unix seconds",
        |job| Some(job.next_run_at),
    ),
];

/// One label value per row, for the single-label gauges.
fn by_label<'a>(
    rows: &'a [(&'static str, i64)],
) -> impl Iterator<Item = ([Cow<'static, str>; 1], i64)> + 'a {
    rows.iter().map(|(value, n)| ([Cow::Borrowed(*value)], *n))
}

impl Scrape {
    /// Registers every gauge this scrape read in `registry`.
    pub(crate) fn register(&self, registry: &mut Registry) {
        if let Some(inbox) = &self.inbox {
            inbox.register(registry);
        }
        if let Some(dead) = &self.dead_letters {
            dead.register(registry);
        }
        if let Some(queues) = &self.queues {
            queues.register(registry);
        }
    }
}

impl InboxDepth {
    fn register(&self, registry: &mut Registry) {
        gauges(
            registry,
            "billd_inbox_depth_events",
            "Inbox rows by status",
            ["status"],
            by_label(&self.by_status),
        );
        // Parked events wait for a link that may never come: their own
        // gauge makes the alert rule one line.
        gauge(
            registry,
            "billd_inbox_unlinked_events",
            "Events parked because no customer could be linked yet",
            self.unlinked,
        );
        gauge(
            registry,
            "billd_processing_lag_seconds",
            "Age of the oldest event waiting to be processed",
            self.lag_secs,
        );
    }
}

impl DeadLetters {
    /// `billd_dead_letters{queue,kind}`; the totals per queue are always
    /// listed (`kind="all"`), so an alert rule sees 0.
    fn register(&self, registry: &mut Registry) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let mut rows = Vec::new();
        for (queue, counts) in [("inbox", &self.inbox), ("outbox", &self.outbox)] {
            let total = count(counts.values().sum());
            rows.push(([Cow::Borrowed(queue), Cow::Borrowed("all")], total));
            for (kind, n) in counts {
                rows.push(([Cow::Borrowed(queue), Cow::Owned(kind.clone())], count(*n)));
            }
        }
        gauges(
            registry,
            "billd_dead_letters",
            "Dead-lettered rows waiting for an operator, by queue and kind",
            ["queue", "kind"],
            rows,
        );
    }
}

impl QueueGauges {
    /// `billd_outbox_depth{status}`, `billd_outbox_oldest_waiting_seconds`,
    /// and per job `billd_scheduler_last_run_timestamp_seconds`,
    /// `billd_scheduler_last_success_timestamp_seconds` (only while the
    /// last run succeeded), `billd_scheduler_last_run_failed` and
    /// `billd_scheduler_next_run_timestamp_seconds`.
    fn register(&self, registry: &mut Registry) {
        gauges(
            registry,
            "billd_outbox_depth",
            "Outbox rows (emails, alerts, Stripe calls) waiting or dead, by status",
            ["status"],
            by_label(&self.outbox_depth),
        );
        gauge(
            registry,
            "billd_outbox_oldest_waiting_seconds",
            "Age of the oldest outbox row not yet sent or dead (0 when none)",
            self.outbox_oldest_waiting_secs,
        );
        for (name, help, value) in JOB_GAUGES {
            gauges(
                registry,
                name,
                help,
                ["job"],
                self.jobs
                    .iter()
                    .filter_map(|job| value(job).map(|v| ([Cow::Owned(job.name.clone())], v))),
            );
        }
    }
}
