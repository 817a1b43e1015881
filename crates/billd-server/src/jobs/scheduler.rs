//! The scheduler: named, idempotent periodic jobs (renewal reminders, card
//! expiry, grace expiry, queue sweeps, reconciliation), declared in one
//! place ([`crate::jobs::billing_jobs`]).
//!
//! Exactly one billd process runs a given job run: a run starts only after
//! [`JobStore::claim_job`] granted this process the job's lease (one
//! conditional write: due, and no live lease), and ends by recording the
//! outcome and the next due time in the same row, so a restart does not run
//! a job early and a process killed mid-run leaves a lease that simply ends.
//! Jobs must still be idempotent (their effects carry outbox dedupe keys):
//! a run that outlives its lease may overlap the next one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billd_store::{JobFinish, JobStore};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Clock;
use crate::telemetry::Metrics;

/// What a job run did, as named counts (for the log and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobReport {
    /// `(what, how many)`, in the order the job reported them.
    pub counts: Vec<(&'static str, u64)>,
}

impl JobReport {
    /// Adds a count.
    pub fn with(mut self, what: &'static str, n: u64) -> Self {
        self.counts.push((what, n));
        self
    }

    /// The count named `what` (0 when not reported).
    pub fn get(&self, what: &str) -> u64 {
        self.counts
            .iter()
            .filter(|(name, _)| *name == what)
            .map(|(_, n)| *n)
            .sum()
    }
}

impl std::fmt::Display for JobReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (what, n)) in self.counts.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{what}={n}")?;
        }
        Ok(())
    }
}

/// A periodic job. `run` must be idempotent: running it twice at the same
/// `now` (a retry, an overlapping run) changes nothing the first did not.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    /// A stable snake_case name: the lease row, the metric label and the
    /// key in `BILLD_SCHEDULER_INTERVALS`.
    fn name(&self) -> &'static str;

    /// One run at `now` (the scheduler's clock).
    async fn run(&self, now: i64) -> anyhow::Result<JobReport>;
}

/// Scheduler settings (`BILLD_SCHEDULER`, `BILLD_SCHEDULER_INTERVALS`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Run the scheduler in this process (`BILLD_SCHEDULER=on|off`).
    pub enabled: bool,
    /// How often each job checks whether it is due (a local check; the
    /// database is asked only when the job's known due time has passed).
    pub tick: Duration,
    /// How long a claimed run may take before another process may start the
    /// job again, seconds.
    pub lease_secs: i64,
    /// How soon a failed run is retried, seconds (at most the interval).
    pub retry_secs: i64,
    /// Per-job interval overrides in seconds, by job name.
    pub intervals: BTreeMap<String, i64>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            enabled: true,
            tick: Duration::from_secs(5),
            lease_secs: 900,
            retry_secs: 60,
            intervals: BTreeMap::new(),
        }
    }
}

impl SchedulerConfig {
    /// A configuration that starts no scheduler (tests of other workers).
    pub fn off() -> Self {
        SchedulerConfig {
            enabled: false,
            ..SchedulerConfig::default()
        }
    }

    /// Parses `BILLD_SCHEDULER_INTERVALS`: `job=secs` pairs separated by
    /// commas (`renewal_reminders=3600,card_expiry=86400`).
    pub fn parse_intervals(raw: &str) -> Result<BTreeMap<String, i64>, String> {
        let mut intervals = BTreeMap::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((name, secs)) = pair.split_once('=') else {
                return Err(format!("expected job=seconds, got {pair:?}"));
            };
            let name = name.trim();
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid_name {
                return Err(format!("job name {name:?} must be snake_case"));
            }
            match secs.trim().parse::<i64>() {
                Ok(n) if (1..=30 * 86_400).contains(&n) => {
                    intervals.insert(name.to_owned(), n);
                }
                _ => {
                    return Err(format!(
                        "interval of {name} must be 1..=2592000 seconds, got {:?}",
                        secs.trim()
                    ))
                }
            }
        }
        Ok(intervals)
    }
}

/// How one attempted run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunOutcome {
    /// The job ran and succeeded.
    Succeeded(JobReport),
    /// The job ran and failed; it is retried after `retry_secs`.
    Failed(String),
}

impl RunOutcome {
    /// The `outcome` label of `billd_scheduler_runs_total`.
    pub fn label(&self) -> &'static str {
        match self {
            RunOutcome::Succeeded(_) => "succeeded",
            RunOutcome::Failed(_) => "failed",
        }
    }
}

/// One run this scheduler performed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    /// Which job.
    pub job: &'static str,
    /// How it ended.
    pub outcome: RunOutcome,
}

struct Scheduled {
    job: Arc<dyn Job>,
    interval_secs: i64,
    /// When this process last learned the job is due; before it, no claim
    /// is attempted (saves a write per tick on SQLite's single writer).
    known_next: AtomicI64,
}

/// Runs registered [`Job`]s at their intervals; see the module docs.
pub struct Scheduler {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    config: SchedulerConfig,
    owner: String,
    jobs: Vec<Arc<Scheduled>>,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("owner", &self.owner)
            .field(
                "jobs",
                &self
                    .jobs
                    .iter()
                    .map(|s| (s.job.name(), s.interval_secs))
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish()
    }
}

impl Scheduler {
    /// A scheduler without jobs. Its lease owner id is unique per instance
    /// (process id and a random suffix).
    pub fn new(
        store: Arc<dyn JobStore>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        config: SchedulerConfig,
    ) -> Self {
        let suffix: u64 = rand::thread_rng().gen();
        Scheduler {
            store,
            clock,
            metrics,
            config,
            owner: format!("billd-{}-{suffix:016x}", std::process::id()),
            jobs: Vec::new(),
        }
    }

    /// Adds `job`, run every `default_interval_secs` unless
    /// `BILLD_SCHEDULER_INTERVALS` names another interval for it.
    pub fn register(&mut self, job: Arc<dyn Job>, default_interval_secs: i64) -> &mut Self {
        let interval_secs = self
            .config
            .intervals
            .get(job.name())
            .copied()
            .unwrap_or(default_interval_secs)
            .max(1);
        self.jobs.push(Arc::new(Scheduled {
            job,
            interval_secs,
            known_next: AtomicI64::new(i64::MIN),
        }));
        self
    }

    /// This instance's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The registered jobs and their intervals, in seconds.
    pub fn jobs(&self) -> Vec<(&'static str, i64)> {
        self.jobs
            .iter()
            .map(|s| (s.job.name(), s.interval_secs))
            .collect()
    }

    /// Runs, concurrently, every job that is due and whose lease this
    /// instance wins; returns what ran.
    pub async fn run_due(&self) -> Vec<JobRun> {
        let runs = self.jobs.iter().map(|s| self.run_if_due(s));
        futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Runs the scheduler until `cancel` fires: one loop per job, so a long
    /// reconciliation does not hold up the reminders. A run in progress
    /// finishes before its loop stops.
    pub async fn run(self, cancel: CancellationToken) {
        for name in self.config.intervals.keys() {
            if !self.jobs.iter().any(|s| s.job.name() == name) {
                tracing::warn!(job = %name, "BILLD_SCHEDULER_INTERVALS names an unknown job");
            }
        }
        tracing::info!(owner = %self.owner, jobs = ?self.jobs(), "scheduler started");
        let this = Arc::new(self);
        let loops = this.jobs.iter().cloned().map(|scheduled| {
            let this = this.clone();
            let cancel = cancel.clone();
            async move {
                loop {
                    this.run_if_due(&scheduled).await;
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(this.config.tick) => {}
                    }
                }
            }
        });
        futures::future::join_all(loops).await;
        tracing::info!("scheduler stopped");
    }

    async fn run_if_due(&self, scheduled: &Scheduled) -> Option<JobRun> {
        let name = scheduled.job.name();
        let now = self.clock.now();
        if now < scheduled.known_next.load(Ordering::SeqCst) {
            return None;
        }
        let lease_until = now.saturating_add(self.config.lease_secs);
        let claimed = match self
            .store
            .claim_job(name, &self.owner, now, lease_until)
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::warn!(job = name, error = %e, "scheduler could not claim a job");
                return None;
            }
        };
        if claimed.is_none() {
            // Not due, or another process holds it: learn when to ask again.
            self.refresh_known_next(scheduled, now).await;
            return None;
        }
        let outcome = match scheduled.job.run(now).await {
            Ok(report) => RunOutcome::Succeeded(report),
            Err(e) => RunOutcome::Failed(format!("{e:#}")),
        };
        let finished_at = self.clock.now();
        let next_run_at = match &outcome {
            RunOutcome::Succeeded(report) => {
                tracing::info!(job = name, %report, "scheduled job ran");
                now.saturating_add(scheduled.interval_secs).max(finished_at)
            }
            RunOutcome::Failed(error) => {
                tracing::warn!(job = name, %error, "scheduled job failed; will retry");
                finished_at.saturating_add(self.config.retry_secs.min(scheduled.interval_secs))
            }
        };
        self.metrics.scheduler_runs.inc(name, outcome.label());
        let finish = JobFinish {
            next_run_at,
            error: match &outcome {
                RunOutcome::Failed(error) => Some(error.clone()),
                RunOutcome::Succeeded(_) => None,
            },
        };
        match self
            .store
            .finish_job(name, &self.owner, &finish, finished_at)
            .await
        {
            Ok(true) => scheduled.known_next.store(next_run_at, Ordering::SeqCst),
            Ok(false) => {
                tracing::warn!(
                    job = name,
                    "scheduled job outlived its lease; another process took it over"
                );
            }
            // The lease ends by itself and the job runs again then; its
            // effects are deduplicated, so that is only wasted work.
            Err(e) => tracing::warn!(job = name, error = %e, "could not record a job run"),
        }
        Some(JobRun { job: name, outcome })
    }

    async fn refresh_known_next(&self, scheduled: &Scheduled, now: i64) {
        let name = scheduled.job.name();
        let next = match self.store.list_jobs().await {
            Ok(jobs) => jobs.into_iter().find(|j| j.name == name).map(|j| {
                // Held by a live lease: look again when it ends.
                j.lease_until
                    .filter(|until| *until > now)
                    .map_or(j.next_run_at, |until| until.max(j.next_run_at))
            }),
            Err(e) => {
                tracing::warn!(job = name, error = %e, "scheduler could not read job rows");
                None
            }
        };
        if let Some(next) = next {
            scheduled.known_next.store(next, Ordering::SeqCst);
        }
    }
}
