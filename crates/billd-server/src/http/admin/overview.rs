//! `GET /v1/admin/overview`: the state of billd's queues and jobs at a
//! glance, for the console's front page and for scripts.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use billd_store::{ActivityBucket, JobRecord};
use serde::Serialize;

use crate::http::api::{store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

/// A queue's depth and lag.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct QueueView {
    /// Rows per status (every status listed).
    pub by_status: BTreeMap<String, i64>,
    /// Seconds since the oldest row still waiting arrived; 0 when none waits.
    pub lag_secs: i64,
}

/// A scheduled job's last run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// The job (`reconcile`, `renewal_reminders`, …).
    pub name: String,
    /// When the last run finished.
    pub last_run_at: Option<i64>,
    /// The last run's error; none when it succeeded.
    pub last_error: Option<String>,
    /// When it is due next.
    pub next_run_at: i64,
    /// Finished runs, and how many of them failed.
    pub runs: i64,
    /// Failed runs.
    pub failures: i64,
}

impl From<JobRecord> for JobView {
    fn from(job: JobRecord) -> Self {
        JobView {
            name: job.name,
            last_run_at: job.last_run_at,
            last_error: job.last_error,
            next_run_at: job.next_run_at,
            runs: job.runs,
            failures: job.failures,
        }
    }
}

/// The overview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// When this was read (unix seconds, billd's clock).
    pub at: i64,
    /// The inbox of Stripe events.
    pub inbox: QueueView,
    /// Events that need an operator (`dead`): replay them after a fix.
    pub dead_events: i64,
    /// The outbox (emails, Stripe calls, alerts).
    pub outbox: QueueView,
    /// The scheduled jobs (reconciliation among them), by name.
    pub jobs: Vec<JobView>,
    /// Inbox activity per hour over the last 24 hours, oldest first (24
    /// buckets, the last one the current hour).
    #[schema(value_type = Vec<Object>)]
    pub activity: Vec<ActivityBucket>,
    /// Stripe's webhooks received per minute over the last hour: the
    /// current minute and the 59 before it, by minute of arrival, counted
    /// once the worker derives them.
    pub webhooks_per_minute: f64,
    /// `invoice.payment_failed` / (`invoice.payment_failed` + `invoice.paid`)
    /// over the last 24 hours; none without either.
    pub payment_failure_rate: Option<f64>,
    /// The last reconciliation run, when one finished.
    pub last_reconciliation: Option<ReconcileSummary>,
    /// Alerts raised in the last 24 hours.
    pub alerts_24h: i64,
}

/// A reconciliation run at a glance.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ReconcileSummary {
    /// When it finished.
    pub finished_at: i64,
    /// Subscriptions compared with Stripe.
    pub checked: i64,
    /// Differences found and healed.
    pub drift: i64,
    /// Subscriptions of Stripe customers billd does not know.
    pub unlinked: i64,
}

/// How many hourly buckets the overview's charts hold.
const HOURS: i64 = 24;

/// The start of the first of the `HOURS` hours ending with the hour of `now`.
fn first_hour(now: i64) -> i64 {
    now - now.rem_euclid(3600) - (HOURS - 1) * 3600
}

/// The `HOURS` hourly buckets from `first`, every hour present (those
/// `found` lacks at zero).
fn hourly(first: i64, found: &[ActivityBucket]) -> Vec<ActivityBucket> {
    (0..HOURS)
        .map(|h| {
            let start = first + h * 3600;
            found
                .iter()
                .find(|b| b.start == start)
                .copied()
                .unwrap_or(ActivityBucket {
                    start,
                    ..ActivityBucket::default()
                })
        })
        .collect()
}

#[utoipa::path(
    get, path = "/v1/admin/overview", tag = "admin", operation_id = "get_overview",
    description = "Inbox and outbox depth per status and their lag, dead events, the last run of every scheduled job, inbox activity per hour over 24 hours (events, webhooks, payment failures and successes, dead), webhooks per minute over the last hour, the payment failure rate over 24 hours, the last reconciliation run, and alerts raised in 24 hours.",
    responses((status = 200, description = "The overview.", body = Overview))
)]
pub(super) async fn get_overview<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
) -> Result<Json<Overview>, ApiError> {
    Ok(Json(read_overview(&state).await?))
}

/// The overview as of now (also the console's front page).
pub(crate) async fn read_overview<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
) -> Result<Overview, ApiError> {
    let now = state.clock.now();
    let store = &state.store;
    let inbox = store.inbox_stats().await.map_err(store_error)?;
    let outbox = store.outbox_stats().await.map_err(store_error)?;
    let jobs = store.list_jobs().await.map_err(store_error)?;
    let dead_events = inbox
        .by_status
        .iter()
        .filter(|(status, _)| *status == billd_store::EventStatus::Dead)
        .map(|(_, n)| *n)
        .sum();
    let lag = |oldest: Option<i64>| oldest.map_or(0, |at| (now - at).max(0));
    let first = first_hour(now);
    let found = store
        .activity(first, first + HOURS * 3600, 3600)
        .await
        .map_err(store_error)?;
    let activity = hourly(first, &found);
    // The counters are per minute: the last hour is this minute and the 59
    // before it.
    let this_minute = now - now.rem_euclid(60);
    let last_hour = store
        .activity(this_minute - 59 * 60, this_minute + 60, 3600)
        .await
        .map_err(store_error)?;
    let webhooks_last_hour: i64 = last_hour.iter().map(|b| b.webhooks).sum();
    let (failed, paid) = activity.iter().fold((0, 0), |(f, p), b| {
        (f + b.payments_failed, p + b.payments_succeeded)
    });
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let payment_failure_rate = (failed + paid > 0).then(|| failed as f64 / (failed + paid) as f64);
    let last_reconciliation = store
        .reconcile_runs(1)
        .await
        .map_err(store_error)?
        .into_iter()
        .next()
        .map(|r| ReconcileSummary {
            finished_at: r.finished_at,
            checked: r.checked,
            drift: r.drift,
            unlinked: r.unlinked,
        });
    let alerts_24h = store
        .count_alerts(now - HOURS * 3600)
        .await
        .map_err(store_error)?;
    Ok(Overview {
        at: now,
        inbox: QueueView {
            by_status: inbox
                .by_status
                .iter()
                .map(|(status, n)| (status.as_str().to_owned(), *n))
                .collect(),
            lag_secs: lag(inbox.oldest_waiting_received_at),
        },
        dead_events,
        outbox: QueueView {
            by_status: outbox
                .by_status
                .iter()
                .map(|(status, n)| (status.as_str().to_owned(), *n))
                .collect(),
            lag_secs: lag(outbox.oldest_waiting_created_at),
        },
        jobs: jobs.into_iter().map(JobView::from).collect(),
        activity,
        #[allow(clippy::cast_precision_loss)]
        webhooks_per_minute: webhooks_last_hour as f64 / 60.0,
        payment_failure_rate,
        last_reconciliation,
        alerts_24h,
    })
}
