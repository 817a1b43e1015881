//! `GET /v1/admin/overview`: the state of billd's queues and jobs at a
//! glance, for the console's front page and for scripts.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use billd_store::JobRecord;
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
}

#[utoipa::path(
    get, path = "/v1/admin/overview", tag = "admin", operation_id = "get_overview",
    description = "Inbox and outbox depth per status and their lag, dead events, and the last run of every scheduled job (reconciliation among them).",
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
    })
}
