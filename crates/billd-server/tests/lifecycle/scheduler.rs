//! The scheduler: exactly one instance runs each due job run, on SQLite and
//! on PostgreSQL; runs are recorded so nothing runs early; failures are
//! recorded, counted and retried. And the billing jobs end to end against
//! stripe-sim test clocks, with emails to a real SMTP sink.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use billd_core::Catalog;
use billd_server::jobs::{billing_scheduler, JobContext};
use billd_server::jobs::{Job, JobReport, JobRun, RunOutcome, Scheduler, SchedulerConfig};
use billd_server::telemetry::Scrape;
use billd_server::{Clock, ManualClock, Metrics};
use billd_store::{EventFilter, EventStatus, Store};

use crate::mail::{dedupe_key, part, subject, SmtpSink, ACCOUNT_URL};
use crate::on_both_databases;
use crate::support::{open_store, t0, Db, Harness, DAY};

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
    let text = metrics.render(&Scrape::default(), T);
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

// ------------------------------------------------- the jobs, end to end

/// The context the billing jobs run with, over the harness's store and
/// billing clock.
fn jobs_of(h: &Harness) -> JobContext {
    let store: Arc<dyn Store> = h.store.clone();
    JobContext {
        store,
        catalog: Arc::new(Catalog::seed()),
        stripe: None,
        clock: h.clock.clone(),
        metrics: Arc::new(Metrics::default()),
    }
}

/// What `job` reported across the runs of several schedulers, and how many
/// times it ran.
fn reported(runs: &[Vec<JobRun>], job: &str, what: &str) -> (usize, u64) {
    let mine: Vec<&JobRun> = runs.iter().flatten().filter(|r| r.job == job).collect();
    let total = mine
        .iter()
        .map(|r| match &r.outcome {
            RunOutcome::Succeeded(report) => report.get(what),
            RunOutcome::Failed(e) => panic!("{job} failed: {e}"),
        })
        .sum();
    (mine.len(), total)
}

async fn a_renewal_reminder_is_emailed_once_three_days_before_the_period_end(db: Db) {
    let sink = SmtpSink::start();
    let h = Harness::start_with_delivery(db, t0(), sink.delivery()).await;
    let (clock, cus) = h.customer("u_remind", "pm_card_visa", true).await;
    let sub = h.subscribe("u_remind", &cus, &h.pro_price);
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    h.wait_for("u_remind", "pro access", |e| e["access"] == "paid")
        .await;
    let ctx = jobs_of(&h);
    let a = billing_scheduler(&ctx, SchedulerConfig::default());
    let b = billing_scheduler(&ctx, SchedulerConfig::default());

    // Four days before the renewal nothing is due.
    h.advance(&clock, period_end - 4 * DAY);
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(
        reported(&[ra, rb], "renewal_reminders", "emails_queued"),
        (1, 0)
    );

    // Three days before, on billd's clock only (Stripe's own
    // `invoice.upcoming` comes later): two schedulers, one run, one email.
    h.clock.set(period_end - 3 * DAY + 60);
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(
        reported(&[ra, rb], "renewal_reminders", "emails_queued"),
        (1, 1)
    );
    // (Sent before billd's clock jumps again: a jump past the outbox lease
    // in the middle of a send would let another claim take the row.)
    sink.wait_for_key("renewal_reminder:").await;
    // A later run, then Stripe's `invoice.upcoming` for the same renewal,
    // queue nothing more.
    h.clock.set(period_end - 3 * DAY + 60 + 3600);
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(
        reported(&[ra, rb], "renewal_reminders", "emails_queued"),
        (1, 0)
    );
    h.advance(&clock, period_end - 3 * DAY + 120);
    wait_until_processed(&h, "invoice.upcoming").await;

    let reminders = sink.wait_for_key("renewal_reminder:").await;
    assert_eq!(reminders.len(), 1, "{reminders:#?}");
    let reminder = &reminders[0];
    let sub_id = sub["id"].as_str().unwrap();
    assert_eq!(
        dedupe_key(reminder),
        format!("renewal_reminder:{sub_id}:{period_end}")
    );
    assert_eq!(
        reminder["rcpt_tos"],
        serde_json::json!(["u_remind@example.com"])
    );
    assert!(subject(reminder).starts_with("Your subscription renews on"));
    let text = part(reminder, "text/plain");
    assert!(text.contains("Pro subscription renews on"), "{text}");
    assert!(part(reminder, "text/html").contains("<strong>Pro</strong>"));
    h.shutdown().await;
}

async fn a_card_expiring_next_month_gets_one_warning(db: Db) {
    let sink = SmtpSink::start();
    let h = Harness::start_with_delivery(db, t0(), sink.delivery()).await;
    let (_, cus) = h.customer("u_card", "pm_card_visa", true).await;
    // A card valid through the end of this month: it expires within 30 days.
    let (year, month) = year_month(h.clock.now());
    let pm = h.stripe(
        "POST",
        "/v1/payment_methods",
        &format!(
            "type=card&card[number]=4000056655665556&card[exp_month]={month}&card[exp_year]={year}"
        ),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.pay_with(&cus, &pm);
    wait_for_state(&h, "u_card", |state| {
        state["payment_methods"].get(pm.as_str()).is_some()
    })
    .await;
    let ctx = jobs_of(&h);
    let a = billing_scheduler(&ctx, SchedulerConfig::default());
    let b = billing_scheduler(&ctx, SchedulerConfig::default());

    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    let (runs, _) = reported(&[ra, rb], "card_expiry", "emails_queued");
    let key = format!("card_expiring:{pm}:{year:04}-{month:02}");
    sink.wait_for_key(&key).await;
    h.clock.advance(6 * 3600);
    let again = a.run_due().await;

    assert_eq!(runs, 1);
    assert_eq!(reported(&[again], "card_expiry", "emails_queued"), (1, 0));
    let warnings = sink.wait_for_key(&key).await;
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let text = part(&warnings[0], "text/plain");
    assert!(text.contains("ending in 5556"), "{text}");
    assert!(text.contains(&format!("{month:02}/{year:04}")), "{text}");
    assert!(text.contains(ACCOUNT_URL), "{text}");
    h.shutdown().await;
}

async fn when_the_grace_period_ends_access_is_blocked_and_one_suspension_email_is_sent(db: Db) {
    let sink = SmtpSink::start();
    let h = Harness::start_with_delivery(db, t0(), sink.delivery()).await;
    let (clock, cus) = h.customer("u_lapse", "pm_card_visa", true).await;
    let sub = h.subscribe("u_lapse", &cus, &h.standard_price);
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    h.wait_for("u_lapse", "standard access", |e| e["access"] == "paid")
        .await;
    h.pay_with(&cus, "pm_card_chargeCustomerFail");
    h.advance(&clock, period_end + 3600);
    let e = h
        .wait_for("u_lapse", "past_due with grace", |e| e["access"] == "grace")
        .await;
    let grace_until = e["grace_until"].as_i64().unwrap();
    let ctx = jobs_of(&h);
    let a = billing_scheduler(&ctx, SchedulerConfig::default());
    let b = billing_scheduler(&ctx, SchedulerConfig::default());

    h.clock.set(grace_until + 60);
    let (ra, rb) = tokio::join!(a.run_due(), b.run_due());
    assert_eq!(reported(&[ra, rb], "grace_expiry", "suspended"), (1, 1));
    sink.wait_for_key("access_suspended:").await;
    h.clock.advance(300);
    let again = a.run_due().await;
    assert_eq!(reported(&[again], "grace_expiry", "suspended"), (1, 0));

    let (_, e) = h.entitlements("u_lapse").await;
    assert_eq!(e["access"], "blocked", "{e:#}");
    let key = format!("access_suspended:{sub_id}:{grace_until}");
    let emails = sink.wait_for_key("access_suspended:").await;
    assert_eq!(emails.len(), 1, "{emails:#?}");
    assert_eq!(dedupe_key(&emails[0]), key);
    assert_eq!(
        subject(&emails[0]),
        "Your Standard plan is suspended: payment still missing"
    );
    assert!(part(&emails[0], "text/plain").contains(ACCOUNT_URL));
    let customer = billd_core::CustomerId::parse("u_lapse").unwrap();
    let audit = h.store.list_audit(&customer, 0).await.unwrap();
    let suspensions: Vec<_> = audit.iter().filter(|row| row.reason == key).collect();
    assert_eq!(suspensions.len(), 1, "{audit:#?}");
    assert_eq!(
        (
            suspensions[0].field.as_str(),
            suspensions[0].before.as_deref(),
            suspensions[0].after.as_deref()
        ),
        ("access", Some("grace"), Some("blocked"))
    );
    h.shutdown().await;
}

/// `(year, month)` of a unix time, UTC.
fn year_month(t: i64) -> (i64, i64) {
    let days = t.div_euclid(DAY);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month)
}

/// Waits until an event of `event_type` was processed.
async fn wait_until_processed(h: &Harness, event_type: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let events = h
            .store
            .list_events(&EventFilter {
                event_type: Some(event_type.to_owned()),
                ..EventFilter::default()
            })
            .await
            .unwrap();
        if events.iter().any(|e| e.status == EventStatus::Processed) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {event_type} processed: {events:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the customer's stored state satisfies `done`.
async fn wait_for_state(h: &Harness, user: &str, done: impl Fn(&serde_json::Value) -> bool) {
    let customer = billd_core::CustomerId::parse(user).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(record) = h.store.get_customer(&customer).await.unwrap() {
            if done(&serde_json::to_value(&record.state).unwrap()) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{user}'s state never got there");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

mod end_to_end {
    use super::*;

    on_both_databases!(
        a_renewal_reminder_is_emailed_once_three_days_before_the_period_end,
        a_card_expiring_next_month_gets_one_warning,
        when_the_grace_period_ends_access_is_blocked_and_one_suspension_email_is_sent,
    );
}
