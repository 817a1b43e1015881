//! Scrape-time gauges of the work billd has queued: outbox depth by status
//! and the age of the oldest row still waiting, and each scheduler job's
//! last and next run. Read from the store on every `/metrics` scrape, so
//! they are right whichever instance did the work.

use std::fmt::Write as _;

use billd_store::{JobRecord, OutboxStats, OutboxStatus, Store, StoreResult};

/// The outbox statuses shown as depth: what waits or needs an operator.
const DEPTH_STATUSES: [OutboxStatus; 3] = [
    OutboxStatus::Pending,
    OutboxStatus::Processing,
    OutboxStatus::Dead,
];

/// One per-job gauge: its value for a job, if it has one.
type JobGauge = (&'static str, &'static str, fn(&JobRecord) -> Option<i64>);

/// Outbox depth and scheduler job times, as read at one scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueGauges {
    /// Outbox rows per status and the oldest waiting row.
    pub outbox: OutboxStats,
    /// Every scheduler job that ever ran or was scheduled.
    pub jobs: Vec<JobRecord>,
}

impl QueueGauges {
    /// Reads both from the store.
    pub async fn load(store: &dyn Store) -> StoreResult<Self> {
        Ok(QueueGauges {
            outbox: store.outbox_stats().await?,
            jobs: store.list_jobs().await?,
        })
    }

    /// Prometheus text: `billd_outbox_depth{status}`,
    /// `billd_outbox_oldest_waiting_seconds`, and per job
    /// `billd_scheduler_last_run_timestamp_seconds`,
    /// `billd_scheduler_last_success_timestamp_seconds` (only while the
    /// last run succeeded), `billd_scheduler_last_run_failed` and
    /// `billd_scheduler_next_run_timestamp_seconds`.
    pub fn render(&self, now: i64) -> String {
        let mut out = String::from(
            "# HELP billd_outbox_depth Outbox rows (emails, alerts, Stripe calls) waiting or dead, by status.\n# TYPE billd_outbox_depth gauge\n",
        );
        for status in DEPTH_STATUSES {
            let n = self
                .outbox
                .by_status
                .iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "billd_outbox_depth{{status=\"{status}\"}} {n}");
        }
        let oldest = self
            .outbox
            .oldest_waiting_created_at
            .map_or(0, |created| (now - created).max(0));
        let _ = writeln!(
            out,
            "# HELP billd_outbox_oldest_waiting_seconds Age of the oldest outbox row not yet sent or dead (0 when none).\n# TYPE billd_outbox_oldest_waiting_seconds gauge\nbilld_outbox_oldest_waiting_seconds {oldest}"
        );
        let mut jobs: Vec<&JobRecord> = self.jobs.iter().collect();
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        let series: [JobGauge; 4] = [
            (
                "billd_scheduler_last_run_timestamp_seconds",
                "When each scheduler job last finished a run, unix seconds.",
                |job| job.last_run_at,
            ),
            (
                "billd_scheduler_last_success_timestamp_seconds",
                "When each scheduler job last finished a run that succeeded, unix seconds (absent while its last run failed).",
                |job| job.last_run_at.filter(|_| job.last_error.is_none()),
            ),
            (
                "billd_scheduler_last_run_failed",
                "1 when a scheduler job's last run failed, else 0.",
                |job| {
                    job.last_run_at
                        .map(|_| i64::from(job.last_error.is_some()))
                },
            ),
            (
                "billd_scheduler_next_run_timestamp_seconds",
                "When each scheduler job is due next, unix seconds.",
                |job| Some(job.next_run_at),
            ),
        ];
        for (name, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for job in &jobs {
                if let Some(v) = value(job) {
                    let _ = writeln!(out, "{name}{{job=\"{}\"}} {v}", job.name);
                }
            }
        }
        out
    }
}
