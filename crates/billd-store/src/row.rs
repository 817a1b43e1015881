//! The inbox row as both databases return it, converted into
//! [`StoredEvent`] so that sqlx types stay inside this crate.

use crate::{EventStatus, StoreError, StoredEvent};

/// Column list selected wherever a full [`StoredEvent`] is read.
pub(crate) const EVENT_COLUMNS: &str = "id, type, api_version, created, object_id, \
     stripe_customer, payload, status, attempts, next_attempt_at, last_error, received_at, \
     processed_at, claim";

/// Ends every inbox lease: the rows are due at `$1`.
pub(crate) const RELEASE_EVENTS: &str =
    "UPDATE stripe_events SET next_attempt_at = $1 WHERE status = 'processing'";

/// Ends every outbox claim: the rows are due at `$1`.
pub(crate) const RELEASE_OUTBOX: &str =
    "UPDATE outbox SET next_attempt_at = $1 WHERE status = 'processing'";

/// Ends every scheduler job lease still live at `$1`: the job may be
/// claimed at once (when due). The owner is kept, so the rows still say
/// who held them last.
pub(crate) const RELEASE_JOBS: &str =
    "UPDATE scheduler_jobs SET lease_until = $1 WHERE lease_until > $1";

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: String,
    #[sqlx(rename = "type")]
    event_type: String,
    api_version: Option<String>,
    created: i64,
    object_id: Option<String>,
    stripe_customer: Option<String>,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    received_at: i64,
    processed_at: Option<i64>,
    claim: i64,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = StoreError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        // The CHECK constraint makes this unreachable unless someone edits
        // the table by hand; report it rather than guessing.
        let status: EventStatus = row
            .status
            .parse()
            .map_err(|e| StoreError::Other(format!("stripe_events.status of {}: {e}", row.id)))?;
        Ok(StoredEvent {
            id: row.id,
            event_type: row.event_type,
            api_version: row.api_version,
            created: row.created,
            object_id: row.object_id,
            stripe_customer: row.stripe_customer,
            payload: row.payload,
            status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            received_at: row.received_at,
            processed_at: row.processed_at,
            claim: row.claim,
        })
    }
}

/// Converts a batch of rows, failing on the first bad one.
pub(crate) fn into_events(rows: Vec<EventRow>) -> Result<Vec<StoredEvent>, StoreError> {
    rows.into_iter().map(StoredEvent::try_from).collect()
}

/// What `finish_event` writes for one [`crate::EventResult`]:
/// `(status, last_error, next_attempt_at, processed_at)`. `last_error` of
/// `None` keeps the previous error, so `billd events show` still tells why an
/// event needed retries after it finally went through.
pub(crate) fn finish_columns(
    result: &crate::EventResult,
    now: i64,
) -> (EventStatus, Option<&str>, Option<i64>, Option<i64>) {
    use crate::EventResult;
    match result {
        EventResult::Processed => (EventStatus::Processed, None, None, Some(now)),
        EventResult::Skipped => (EventStatus::Skipped, None, None, Some(now)),
        EventResult::Unlinked => (EventStatus::Unlinked, None, None, None),
        EventResult::Retry {
            error,
            next_attempt_at,
        } => (
            EventStatus::Failed,
            Some(error.as_str()),
            Some(*next_attempt_at),
            None,
        ),
        EventResult::Dead { error } => (EventStatus::Dead, Some(error.as_str()), None, Some(now)),
    }
}

/// Splits a batch into the events to send to the database and the
/// positions that repeat an id seen earlier in the same batch (those are
/// duplicates whatever the table holds).
pub(crate) fn first_occurrences(events: &[crate::NewEvent]) -> (Vec<usize>, Vec<bool>) {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let mut unique = Vec::with_capacity(events.len());
    let mut repeated = vec![false; events.len()];
    for (index, event) in events.iter().enumerate() {
        if seen.insert(event.id.as_str()) {
            unique.push(index);
        } else {
            repeated[index] = true;
        }
    }
    (unique, repeated)
}

/// Builds the per-input outcomes from the set of ids the database reports
/// as newly inserted.
pub(crate) fn outcomes(
    events: &[crate::NewEvent],
    repeated: &[bool],
    inserted: &std::collections::HashSet<String>,
) -> Vec<crate::InsertOutcome> {
    events
        .iter()
        .zip(repeated)
        .map(|(event, &repeated)| {
            if !repeated && inserted.contains(&event.id) {
                crate::InsertOutcome::Inserted
            } else {
                crate::InsertOutcome::Duplicate
            }
        })
        .collect()
}

/// Builds [`crate::InboxStats`] from `(status, count)` rows, listing every
/// status (zero when absent) so that metrics gauges go back to 0.
pub(crate) fn stats(
    counts: Vec<(String, i64)>,
    oldest_waiting_received_at: Option<i64>,
) -> Result<crate::InboxStats, StoreError> {
    let mut by_status: Vec<(EventStatus, i64)> =
        EventStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for (status, count) in counts {
        let status: EventStatus = status
            .parse()
            .map_err(|e| StoreError::Other(format!("stripe_events.status: {e}")))?;
        if let Some(slot) = by_status.iter_mut().find(|(s, _)| *s == status) {
            slot.1 = count;
        }
    }
    Ok(crate::InboxStats {
        by_status,
        oldest_waiting_received_at,
    })
}
