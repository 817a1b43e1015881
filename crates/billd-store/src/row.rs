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

/// The body of `Store::release_all_claims` on either database: ends every
/// inbox lease, outbox claim and job lease at `$now` in the write
/// transaction `$tx`, commits, and returns the counts.
macro_rules! release_all_claims {
    ($tx:expr, $now:expr) => {{
        let mut tx = $tx;
        let mut released = [0; 3];
        for (statement, count) in [
            $crate::row::RELEASE_EVENTS,
            $crate::row::RELEASE_OUTBOX,
            $crate::row::RELEASE_JOBS,
        ]
        .into_iter()
        .zip(&mut released)
        {
            *count = sqlx::query(statement)
                .bind($now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        let [events, outbox, jobs] = released;
        Ok($crate::ReleasedClaims {
            events,
            outbox,
            jobs,
        })
    }};
}
pub(crate) use release_all_claims;

#[derive(sqlx::FromRow)]
pub(crate) struct EventRow {
    id: String,
    // NULL until the worker derives a received row.
    #[sqlx(rename = "type")]
    event_type: Option<String>,
    api_version: Option<String>,
    created: Option<i64>,
    object_id: Option<String>,
    stripe_customer: Option<String>,
    payload: String,
    status: Option<String>,
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
        let status: EventStatus = match row.status {
            None => EventStatus::Received,
            Some(status) => status.parse().map_err(|e| {
                StoreError::Other(format!("stripe_events.status of {}: {e}", row.id))
            })?,
        };
        Ok(StoredEvent {
            id: row.id,
            // A received row shows an empty type and `created` 0 until the
            // worker derives it (`EventStatus::Received`).
            event_type: row.event_type.unwrap_or_default(),
            api_version: row.api_version,
            created: row.created.unwrap_or(0),
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
pub(crate) fn first_occurrences<E: HasEventId>(events: &[E]) -> (Vec<usize>, Vec<bool>) {
    let mut seen = std::collections::HashSet::with_capacity(events.len());
    let mut unique = Vec::with_capacity(events.len());
    let mut repeated = vec![false; events.len()];
    for (index, event) in events.iter().enumerate() {
        if seen.insert(event.event_id()) {
            unique.push(index);
        } else {
            repeated[index] = true;
        }
    }
    (unique, repeated)
}

/// Builds the per-input outcomes from the set of ids the database reports
/// as newly inserted.
pub(crate) fn outcomes<E: HasEventId>(
    events: &[E],
    repeated: &[bool],
    inserted: &std::collections::HashSet<String>,
) -> Vec<crate::InsertOutcome> {
    events
        .iter()
        .zip(repeated)
        .map(|(event, &repeated)| {
            if !repeated && inserted.contains(event.event_id()) {
                crate::InsertOutcome::Inserted
            } else {
                crate::InsertOutcome::Duplicate
            }
        })
        .collect()
}

/// Rows inserted by one batch: an event id to dedupe on.
pub(crate) trait HasEventId {
    fn event_id(&self) -> &str;
}

impl HasEventId for crate::NewEvent {
    fn event_id(&self) -> &str {
        &self.id
    }
}

impl HasEventId for crate::ReceivedEvent {
    fn event_id(&self) -> &str {
        &self.id
    }
}

/// Received rows (not derived yet): how many, and the arrival of the
/// oldest. The counters leave them out (nothing but the row is written at
/// acknowledgement); the worker keeps this queue short.
pub(crate) const RECEIVED_STATS: &str =
    "SELECT COUNT(*), MIN(received_at) FROM stripe_events WHERE status IS NULL";

/// Up to `$1` received rows, oldest first.
pub(crate) const RECEIVED_ROWS: &str = "SELECT id, payload, received_at FROM stripe_events \
     WHERE status IS NULL ORDER BY seq LIMIT $1";

/// The JSON array of arrays a derivation batch is bound as on SQLite (and
/// the column vectors it is bound as on PostgreSQL): per row `[id, status,
/// type, api_version, created, object_id, stripe_customer, scrubbed payload
/// or null, last_error, processed_at]`.
pub(crate) struct DerivedColumns<'a> {
    pub(crate) ids: Vec<&'a str>,
    pub(crate) statuses: Vec<&'static str>,
    pub(crate) types: Vec<&'a str>,
    pub(crate) api_versions: Vec<Option<&'a str>>,
    pub(crate) created: Vec<i64>,
    pub(crate) object_ids: Vec<Option<&'a str>>,
    pub(crate) customers: Vec<Option<&'a str>>,
    pub(crate) payloads: Vec<Option<&'a str>>,
    pub(crate) errors: Vec<Option<&'a str>>,
    pub(crate) processed_at: Vec<Option<i64>>,
}

impl<'a> DerivedColumns<'a> {
    /// The columns of `derived`, with `scrubbed[i]` (when given) as the
    /// payload to write back for row `i`. Ids are sorted so that two
    /// PostgreSQL processes deriving overlapping batches lock rows in one
    /// order.
    pub(crate) fn new(
        derived: &'a [crate::Derived],
        scrubbed: &'a [Option<String>],
        now: i64,
    ) -> Self {
        let mut order: Vec<usize> = (0..derived.len()).collect();
        order.sort_unstable_by(|&a, &b| derived[a].id().cmp(derived[b].id()));
        let n = derived.len();
        let mut columns = DerivedColumns {
            ids: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            api_versions: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            object_ids: Vec::with_capacity(n),
            customers: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            errors: Vec::with_capacity(n),
            processed_at: Vec::with_capacity(n),
        };
        for index in order {
            let payload = scrubbed.get(index).and_then(Option::as_deref);
            match &derived[index] {
                crate::Derived::Event(event) => {
                    columns.ids.push(&event.id);
                    columns.statuses.push(EventStatus::Pending.as_str());
                    columns.types.push(&event.event_type);
                    columns.api_versions.push(event.api_version.as_deref());
                    columns.created.push(event.created);
                    columns.object_ids.push(event.object_id.as_deref());
                    columns.customers.push(event.stripe_customer.as_deref());
                    columns.payloads.push(payload);
                    columns.errors.push(None);
                    columns.processed_at.push(None);
                }
                crate::Derived::Invalid { id, error } => {
                    // Nothing could be read: an empty type and `created` 0
                    // (a derived row has both), for an operator to look at.
                    columns.ids.push(id);
                    columns.statuses.push(EventStatus::Dead.as_str());
                    columns.types.push("");
                    columns.api_versions.push(None);
                    columns.created.push(0);
                    columns.object_ids.push(None);
                    columns.customers.push(None);
                    columns.payloads.push(None);
                    columns.errors.push(Some(error));
                    columns.processed_at.push(Some(now));
                }
            }
        }
        columns
    }

    /// The rows as one JSON array of arrays (SQLite's `json_each`).
    pub(crate) fn to_json(&self) -> Result<String, StoreError> {
        let rows: Vec<serde_json::Value> = (0..self.ids.len())
            .map(|i| {
                serde_json::json!([
                    self.ids[i],
                    self.statuses[i],
                    self.types[i],
                    self.api_versions[i],
                    self.created[i],
                    self.object_ids[i],
                    self.customers[i],
                    self.payloads[i],
                    self.errors[i],
                    self.processed_at[i],
                ])
            })
            .collect();
        serde_json::to_string(&rows)
            .map_err(|e| StoreError::Other(format!("encoding derived events: {e}")))
    }
}

/// Builds [`crate::InboxStats`] from `(status, count)` rows of derived
/// rows and the count of received ones, listing every status (zero when
/// absent) so that metrics gauges go back to 0.
pub(crate) fn stats(
    counts: Vec<(String, i64)>,
    received: i64,
    oldest_waiting_received_at: Option<i64>,
) -> Result<crate::InboxStats, StoreError> {
    let mut by_status: Vec<(EventStatus, i64)> = EventStatus::ALL
        .into_iter()
        .map(|s| {
            (
                s,
                if s == EventStatus::Received {
                    received
                } else {
                    0
                },
            )
        })
        .collect();
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
