//! The store's side of telemetry: what `/metrics` and `/readyz` read of the
//! queued work, turned into the plain values `telemetry` renders, and the
//! metric label of a store error.

use std::collections::BTreeMap;

use billd_store::{
    EventFilter, EventStatus, InboxStats, JobRecord, OutboxFilter, OutboxStats, OutboxStatus,
    Store, StoreError, StoreResult,
};

use crate::telemetry::{DeadLetters, InboxDepth, JobTimes, Metrics, QueueGauges, Scrape};

/// The outbox statuses shown as depth: what waits or needs an operator.
const OUTBOX_DEPTH_STATUSES: [OutboxStatus; 3] = [
    OutboxStatus::Pending,
    OutboxStatus::Processing,
    OutboxStatus::Dead,
];

/// Seconds the oldest waiting event has waited (0 when none waits).
pub fn inbox_lag_secs(stats: &InboxStats, now: i64) -> i64 {
    stats
        .oldest_waiting_received_at
        .map_or(0, |t| (now - t).max(0))
}

/// The metric label of a store error.
pub fn store_error_kind(err: &StoreError) -> &'static str {
    match err {
        StoreError::NotFound => "not_found",
        StoreError::Conflict { .. } => "conflict",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Other(_) => "other",
    }
}

/// Counts a store error by its class (`billd_store_errors_total{kind}`).
pub fn count_store_error(metrics: &Metrics, err: &StoreError) {
    metrics.store_errors.inc(store_error_kind(err));
}

/// Reads everything a `/metrics` scrape shows of the store at `now`; a read
/// that fails is counted as a store error and its part left out.
pub async fn read_scrape(store: &dyn Store, metrics: &Metrics, now: i64) -> Scrape {
    let inbox = store.inbox_stats().await.map(|s| inbox_depth(&s, now));
    Scrape {
        inbox: counted(metrics, inbox),
        dead_letters: counted(metrics, dead_letters(store).await),
        queues: counted(metrics, queue_gauges(store, now).await),
    }
}

/// `read`'s value, or none when it failed (counted as a store error).
fn counted<T>(metrics: &Metrics, read: StoreResult<T>) -> Option<T> {
    read.map_err(|e| count_store_error(metrics, &e)).ok()
}

/// The count of `status` in a store's per-status rows (0 when absent).
fn count_of<S: PartialEq>(by_status: &[(S, i64)], status: S) -> i64 {
    by_status
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(0, |(_, n)| *n)
}

fn inbox_depth(stats: &InboxStats, now: i64) -> InboxDepth {
    let count = |status| count_of(&stats.by_status, status);
    InboxDepth {
        by_status: EventStatus::ALL
            .into_iter()
            .map(|status| (status.as_str(), count(status)))
            .collect(),
        unlinked: count(EventStatus::Unlinked),
        lag_secs: inbox_lag_secs(stats, now),
    }
}

/// Counts the dead rows of both queues, by event type and outbox kind.
async fn dead_letters(store: &dyn Store) -> StoreResult<DeadLetters> {
    let dead_events = EventFilter {
        status: Some(EventStatus::Dead),
        ..EventFilter::default()
    };
    let dead_rows = OutboxFilter {
        status: Some(OutboxStatus::Dead),
        ..OutboxFilter::default()
    };
    let events = store.list_events(&dead_events).await?;
    let rows = store.list_outbox(&dead_rows).await?;
    Ok(DeadLetters {
        inbox: tally(events.into_iter().map(|event| event.event_type)),
        outbox: tally(rows.into_iter().map(|row| row.kind)),
    })
}

/// How often each kind occurs.
fn tally(kinds: impl Iterator<Item = String>) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for kind in kinds {
        *counts.entry(kind).or_default() += 1;
    }
    counts
}

async fn queue_gauges(store: &dyn Store, now: i64) -> StoreResult<QueueGauges> {
    let outbox = store.outbox_stats().await?;
    let jobs = store.list_jobs().await?;
    Ok(QueueGauges {
        outbox_depth: outbox_depth(&outbox),
        outbox_oldest_waiting_secs: outbox
            .oldest_waiting_created_at
            .map_or(0, |created| (now - created).max(0)),
        jobs: jobs.iter().map(job_times).collect(),
    })
}

fn outbox_depth(stats: &OutboxStats) -> Vec<(&'static str, i64)> {
    OUTBOX_DEPTH_STATUSES
        .into_iter()
        .map(|status| (status.as_str(), count_of(&stats.by_status, status)))
        .collect()
}

fn job_times(job: &JobRecord) -> JobTimes {
    JobTimes {
        name: job.name.clone(),
        last_run_at: job.last_run_at,
        last_run_failed: job.last_error.is_some(),
        next_run_at: job.next_run_at,
    }
}
