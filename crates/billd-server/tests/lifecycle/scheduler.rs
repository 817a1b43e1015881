//! The scheduler: exactly one instance runs each due job run, on SQLite and
//! on PostgreSQL; runs are recorded so nothing runs early; failures are
//! recorded, counted and retried.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use billd_server::scheduler::{Job, JobReport, RunOutcome, Scheduler, SchedulerConfig};
use billd_server::{ManualClock, Metrics};
use billd_store::Store;

use crate::on_both_databases;
use crate::support::{open_store, Db};

const T: i64 = 1_800_000_000;

/// Counts its runs; fails while `failing` is set.
struct Counting {
    name: &'static str,
    runs: Arc<AtomicU64>,
    failing: bool,
}

#[async_trait]
impl Job for Counting {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, _now: i64) -> anyhow::Result<JobReport> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        // Long enough for a second scheduler to try the same job meanwhile.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if self.failing {
            anyhow::bail!("smtp relay refused the batch");
        }
        Ok(JobReport::default().with("runs", n))
    }
}

fn scheduler(
    store: &Arc<dyn Store>,
    clock: &Arc<ManualClock>,
    metrics: &Arc<Metrics>,
    jobs: &[(&'static str, &Arc<AtomicU64>, bool)],
) -> Scheduler {
    let mut scheduler = Scheduler::new(
        store.clone(),
        clock.clone(),
        metrics.clone(),
        SchedulerConfig::default(),
    );
    for (name, runs, failing) in jobs {
        scheduler.register(
            Arc::new(Counting {
                name,
                runs: (*runs).clone(),
                failing: *failing,
            }),
            600,
        );
    }
    scheduler
}

async fn two_schedulers_on_one_database_run_each_due_job_once(db: Db) {
    let (store, _dir) = open_store(db).await;
    let store: Arc<dyn Store> = store;
    let clock = Arc::new(ManualClock::new(T));
    let metrics = Arc::new(Metrics::default());
    let (reminders, sweep) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let jobs = [
        ("renewal_reminders", &reminders, false),
        ("outbox_sweep", &sweep, false),
    ];
    let a = scheduler(&store, &clock, &metrics, &jobs);
    let b = scheduler(&store, &clock, &metrics, &jobs);

    let (ran_a, ran_b) = tokio::join!(a.run_due(), b.run_due());

    assert_eq!(ran_a.len() + ran_b.len(), 2, "{ran_a:?} {ran_b:?}");
    assert_eq!(reminders.load(Ordering::SeqCst), 1);
    assert_eq!(sweep.load(Ordering::SeqCst), 1);

    // Not due again before its interval, from either instance.
    clock.advance(599);
    let (again_a, again_b) = tokio::join!(a.run_due(), b.run_due());
    assert!(again_a.is_empty() && again_b.is_empty());

    // Due again: once more, whoever wins.
    clock.advance(1);
    let (next_a, next_b) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(next_a.len() + next_b.len(), 2);
    assert_eq!(reminders.load(Ordering::SeqCst), 2);
    assert_eq!(sweep.load(Ordering::SeqCst), 2);
    assert_eq!(
        metrics.scheduler_runs.get("renewal_reminders", "succeeded"),
        2
    );
    let rows = store.list_jobs().await.unwrap();
    let row = rows.iter().find(|r| r.name == "renewal_reminders").unwrap();
    assert_eq!((row.runs, row.next_run_at), (2, T + 600 + 600));
}

async fn a_restarted_scheduler_does_not_run_a_job_before_it_is_due(db: Db) {
    let (store, _dir) = open_store(db).await;
    let store: Arc<dyn Store> = store;
    let clock = Arc::new(ManualClock::new(T));
    let metrics = Arc::new(Metrics::default());
    let runs = Arc::new(AtomicU64::new(0));
    let jobs = [("card_expiry", &runs, false)];
    scheduler(&store, &clock, &metrics, &jobs).run_due().await;

    clock.advance(300);
    let restarted = scheduler(&store, &clock, &metrics, &jobs);
    let early = restarted.run_due().await;
    clock.advance(300);
    let due = restarted.run_due().await;

    assert!(early.is_empty());
    assert_eq!(due.len(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

async fn a_failed_run_is_recorded_counted_and_retried_sooner(db: Db) {
    let (store, _dir) = open_store(db).await;
    let store: Arc<dyn Store> = store;
    let clock = Arc::new(ManualClock::new(T));
    let metrics = Arc::new(Metrics::default());
    let runs = Arc::new(AtomicU64::new(0));
    let s = scheduler(&store, &clock, &metrics, &[("grace_expiry", &runs, true)]);

    let ran = s.run_due().await;

    assert!(matches!(&ran[0].outcome, RunOutcome::Failed(e) if e.contains("refused")));
    let row = store.list_jobs().await.unwrap().remove(0);
    assert_eq!(
        row.last_error.as_deref(),
        Some("smtp relay refused the batch")
    );
    assert_eq!((row.runs, row.failures), (1, 1));
    assert_eq!(
        row.next_run_at,
        T + 60,
        "retried after retry_secs, not the interval"
    );
    assert_eq!(metrics.scheduler_runs.get("grace_expiry", "failed"), 1);
    let text = metrics.render(None, T);
    assert!(
        text.contains("billd_scheduler_runs_total{job=\"grace_expiry\",outcome=\"failed\"} 1\n"),
        "{text}"
    );
    clock.advance(60);
    assert_eq!(s.run_due().await.len(), 1);
}

on_both_databases!(
    two_schedulers_on_one_database_run_each_due_job_once,
    a_restarted_scheduler_does_not_run_a_job_before_it_is_due,
    a_failed_run_is_recorded_counted_and_retried_sooner,
);
