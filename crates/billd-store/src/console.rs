//! What the operator console and its admin API read across tables: finding
//! a customer by any id it is known by, a customer's events, replaying the
//! events a filter picks, and the record of what operators did. One body
//! for both databases.

use async_trait::async_trait;
use billd_core::CustomerId;

use crate::billing::{into_outbox, CustomerRow, OutboxRow, CUSTOMER_COLUMNS, OUTBOX_COLUMNS};
use crate::dialect::Dialect;
use crate::row::{into_events, EventRow, EVENT_COLUMNS};
use crate::{CustomerRecord, EventStatus, PgStore, SqliteStore, StoreResult, StoredEvent};

/// Which events a replay puts back to `pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFilter {
    /// Only events with this status.
    pub status: EventStatus,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events of this customer (see [`ConsoleStore::customer_events`]).
    pub customer_id: Option<CustomerId>,
    /// Only events received at or after this instant.
    pub received_from: Option<i64>,
    /// Only events received before this instant.
    pub received_until: Option<i64>,
}

/// Which inbox rows a console list shows (every field narrows it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events with this status.
    pub status: Option<EventStatus>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events of this customer (see [`ConsoleStore::customer_events`]).
    pub customer_id: Option<CustomerId>,
    /// Only events received at or after this instant.
    pub received_from: Option<i64>,
    /// Only events received before this instant.
    pub received_until: Option<i64>,
    /// At most this many, newest first; 0 means no limit.
    pub limit: u32,
}

/// An operator's action to record (see [`ConsoleStore::record_operator_action`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOperatorAction {
    /// Who: `console session <id>` or `admin API`.
    pub actor: String,
    /// What (`replay_event`, `resync_customer`, `cancel_subscription`, …).
    pub action: String,
    /// To what: an event id, a customer id, an outbox row, a filter.
    pub target: String,
    /// The customer it concerns, when one.
    pub customer_id: Option<CustomerId>,
    /// How it ended: `ok`, `ok: <detail>`, or the error's stable code.
    pub outcome: String,
}

/// A recorded operator action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OperatorAction {
    /// Row id (increasing in write order).
    pub id: i64,
    /// When it was done.
    pub at: i64,
    /// Who: `console session <id>` or `admin API`.
    pub actor: String,
    /// What.
    pub action: String,
    /// To what.
    pub target: String,
    /// The customer it concerns, when one.
    pub customer_id: Option<String>,
    /// How it ended.
    pub outcome: String,
}

/// Recounts `stripe_event_minutes` from the events (as the migration
/// console_counters filled it): for rows written without the store, whose
/// PostgreSQL inserts count themselves.
pub(crate) const RECOUNT_EVENT_MINUTES: [&str; 2] = [
    "DELETE FROM stripe_event_minutes",
    "INSERT INTO stripe_event_minutes \
       (minute, events, webhooks, payments_failed, payments_succeeded, dead) \
     SELECT received_at - received_at % 60, COUNT(*), \
       SUM(CASE WHEN substr(id, 1, 10) <> 'evt_billd_' THEN 1 ELSE 0 END), \
       SUM(CASE WHEN type = 'invoice.payment_failed' THEN 1 ELSE 0 END), \
       SUM(CASE WHEN type = 'invoice.paid' THEN 1 ELSE 0 END), \
       SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END) \
     FROM stripe_events WHERE status IS NOT NULL \
     GROUP BY received_at - received_at % 60",
];

/// Inbox activity in one time bucket (see [`ConsoleStore::activity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ActivityBucket {
    /// The bucket's start (unix seconds).
    pub start: i64,
    /// Events received (Stripe's and billd's own: re-fetches, reconciliation, feed-backs).
    pub events: i64,
    /// Of them, Stripe's webhooks.
    pub webhooks: i64,
    /// `invoice.payment_failed` events.
    pub payments_failed: i64,
    /// `invoice.paid` events.
    pub payments_succeeded: i64,
    /// Events that are dead now.
    pub dead: i64,
}

/// A finished reconciliation run to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReconcileRun {
    /// When it started.
    pub started_at: i64,
    /// Subscriptions compared.
    pub checked: i64,
    /// Differences found (and healed).
    pub drift: i64,
    /// Subscriptions of Stripe customers billd does not know.
    pub unlinked: i64,
    /// Missed events ingested.
    pub ingested: i64,
    /// The whole report, as JSON.
    pub report: String,
}

/// A recorded reconciliation run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileRunRecord {
    /// Row id.
    pub id: i64,
    /// When it started.
    pub started_at: i64,
    /// When it finished.
    pub finished_at: i64,
    /// Subscriptions compared.
    pub checked: i64,
    /// Differences found (and healed).
    pub drift: i64,
    /// Subscriptions of Stripe customers billd does not know.
    pub unlinked: i64,
    /// Missed events ingested.
    pub ingested: i64,
    /// The whole report, as JSON.
    pub report: String,
}

/// The console's reads, its bulk replay, and the operators' record.
/// Implemented by both stores.
#[async_trait]
pub trait ConsoleStore: Send + Sync + 'static {
    /// Customers `query` names, in id order after `after`, at most `limit`
    /// (0: no limit): by billd id (or the start of one), email (or its
    /// start, ignoring case), or any Stripe id linked to the customer (its
    /// Stripe customer, subscriptions, invoices, charges …). An empty
    /// query lists every customer. Deleted customers are included.
    async fn search_customers(
        &self,
        query: &str,
        after: Option<&CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<CustomerRecord>>;

    /// A customer's inbox events, newest first, at most `limit` (0: no
    /// limit): those naming one of its Stripe customers, and those naming
    /// none whose object is linked to it (a dispute names only a charge).
    async fn customer_events(
        &self,
        customer_id: &CustomerId,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>>;

    /// Puts every event `filter` picks back to `pending` with its attempts
    /// reset, for the worker to apply again; returns how many.
    async fn replay_events(&self, filter: &ReplayFilter, now: i64) -> StoreResult<u64>;

    /// Inbox rows `query` picks, newest first.
    async fn find_events(&self, query: &EventQuery) -> StoreResult<Vec<StoredEvent>>;

    /// Records what an operator did; returns the row's id.
    async fn record_operator_action(
        &self,
        action: &NewOperatorAction,
        now: i64,
    ) -> StoreResult<i64>;

    /// Recorded operator actions, newest first, only those concerning
    /// `customer_id` when given; at most `limit` (0: no limit).
    async fn operator_actions(
        &self,
        customer_id: Option<&CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<OperatorAction>>;

    /// Events received in `[from, until)` (once derived: a `received` row
    /// counts moments later) counted per `bucket_secs`-long
    /// bucket from `from`; buckets without events are absent. Counted by
    /// the minute of arrival: an event is in the bucket its minute's start
    /// falls in, so `from`, `until` and `bucket_secs` are meant to be whole
    /// minutes.
    async fn activity(
        &self,
        from: i64,
        until: i64,
        bucket_secs: i64,
    ) -> StoreResult<Vec<ActivityBucket>>;

    /// Admin alerts raised (their outbox rows), newest first, created at or
    /// after `since`; at most `limit` (0: no limit).
    async fn alerts(&self, since: i64, limit: u32) -> StoreResult<Vec<crate::OutboxItem>>;

    /// How many admin alerts were raised at or after `since`.
    async fn count_alerts(&self, since: i64) -> StoreResult<i64>;

    /// Records a finished reconciliation run; returns its id.
    async fn record_reconcile_run(&self, run: &NewReconcileRun, now: i64) -> StoreResult<i64>;

    /// Recorded reconciliation runs, newest first, at most `limit` (0: no limit).
    async fn reconcile_runs(&self, limit: u32) -> StoreResult<Vec<ReconcileRunRecord>>;
}

/// A disjoint part of the events [`ConsoleStore::find_events`] lists,
/// each read through an index of its own.
enum EventPart<'a> {
    /// Derived rows: every index on `stripe_events` but the id's holds
    /// only them (`stripe_events_order` in insertion order).
    Derived,
    /// Received rows, not derived yet (`stripe_events_received`).
    Received,
    /// Events naming one of the customer's Stripe customers.
    OfStripeCustomer(&'a CustomerId),
    /// Events naming no Stripe customer whose object is linked to the
    /// customer (a dispute names only a charge).
    OfLinkedObject(&'a CustomerId),
}

/// The parts `query` reads. Received rows have nothing but an id, so any
/// condition but none leaves them out.
fn event_parts(query: &EventQuery) -> Vec<EventPart<'_>> {
    if let Some(customer) = &query.customer_id {
        return vec![
            EventPart::OfStripeCustomer(customer),
            EventPart::OfLinkedObject(customer),
        ];
    }
    let unfiltered = query.event_type.is_none()
        && query.received_from.is_none()
        && query.received_until.is_none();
    match query.status {
        Some(EventStatus::Received) => vec![EventPart::Received],
        None if unfiltered => vec![EventPart::Derived, EventPart::Received],
        _ => vec![EventPart::Derived],
    }
}

/// The events of customer `$n` (a bind), as a condition on `stripe_events`.
macro_rules! events_of_customer {
    ($n:literal) => {
        concat!(
            "(stripe_customer IN (SELECT object_id FROM object_links WHERE customer_id = ",
            $n,
            ") OR (stripe_customer IS NULL AND object_id IN \
               (SELECT object_id FROM object_links WHERE customer_id = ",
            $n,
            ")))"
        )
    };
}

macro_rules! console_store {
    ($store:ty) => {
        #[async_trait]
        impl ConsoleStore for $store {
            async fn search_customers(
                &self,
                query: &str,
                after: Option<&CustomerId>,
                limit: u32,
            ) -> StoreResult<Vec<CustomerRecord>> {
                let query = query.trim();
                let after = after.map(CustomerId::as_str);
                let limit = <$store as Dialect>::limit(limit);
                let rows: Vec<CustomerRow> = if query.is_empty() {
                    sqlx::query_as(&format!(
                        "SELECT {CUSTOMER_COLUMNS} FROM customers \
                         WHERE ($1 IS NULL OR customer_id > $1) ORDER BY customer_id LIMIT $2"
                    ))
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                } else {
                    // Each way a customer is known by has its own index: an
                    // id or email start is a range (`$1` up to `$1` followed
                    // by the last code point), a Stripe id an equality.
                    let byte = <$store as Dialect>::BYTE_ORDER;
                    sqlx::query_as(&format!(
                        "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id IN ( \
                           SELECT customer_id FROM customers \
                            WHERE customer_id{byte} >= $1 AND customer_id{byte} < $1 || $2 \
                           UNION SELECT customer_id FROM customers \
                            WHERE lower(email){byte} >= lower($1) \
                              AND lower(email){byte} < lower($1) || $2 \
                           UNION SELECT customer_id FROM customers WHERE stripe_customer_id = $1 \
                           UNION SELECT customer_id FROM object_links WHERE object_id = $1) \
                         AND ($3 IS NULL OR customer_id > $3) \
                         ORDER BY customer_id LIMIT $4"
                    ))
                    .bind(query)
                    .bind(char::MAX.to_string())
                    .bind(after)
                    .bind(limit)
                    .fetch_all(self.reader())
                    .await?
                };
                rows.into_iter().map(CustomerRecord::try_from).collect()
            }

            async fn customer_events(
                &self,
                customer_id: &CustomerId,
                limit: u32,
            ) -> StoreResult<Vec<StoredEvent>> {
                self.find_events(&EventQuery {
                    customer_id: Some(customer_id.clone()),
                    limit,
                    ..EventQuery::default()
                })
                .await
            }

            async fn replay_events(&self, filter: &ReplayFilter, _now: i64) -> StoreResult<u64> {
                let done = sqlx::query(&format!(
                    "UPDATE stripe_events \
                     SET status = 'pending', attempts = 0, next_attempt_at = NULL, \
                         processed_at = NULL \
                     WHERE status = $1 \
                       AND ($2 IS NULL OR type = $2) \
                       AND ($3 IS NULL OR received_at >= $3) \
                       AND ($4 IS NULL OR received_at < $4) \
                       AND ($5 IS NULL OR {})",
                    events_of_customer!("$5")
                ))
                .bind(filter.status.as_str())
                .bind(filter.event_type.as_deref())
                .bind(filter.received_from)
                .bind(filter.received_until)
                .bind(filter.customer_id.as_ref().map(CustomerId::as_str))
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }

            async fn find_events(&self, query: &EventQuery) -> StoreResult<Vec<StoredEvent>> {
                let ranged = query.received_from.is_some() || query.received_until.is_some();
                // Within a time range the arrival indexes give the order;
                // otherwise the insertion order does.
                let order = if ranged {
                    " ORDER BY received_at DESC, seq DESC LIMIT "
                } else {
                    " ORDER BY seq DESC LIMIT "
                };
                let limit = <$store as Dialect>::limit(query.limit);
                let parts = event_parts(query);
                // Each part is read newest first through an index of its
                // own (an `OR` of them would be one scan of the table), and
                // the parts, disjoint, are merged.
                let union = parts.len() > 1;
                let mut q = sqlx::QueryBuilder::new("");
                for (i, part) in parts.iter().enumerate() {
                    if union {
                        q.push(if i == 0 { "SELECT * FROM (" } else { " UNION ALL SELECT * FROM (" });
                    }
                    q.push(format!("SELECT {EVENT_COLUMNS}, seq FROM stripe_events WHERE "));
                    match part {
                        EventPart::Derived => q.push("status IS NOT NULL"),
                        EventPart::Received => q.push("status IS NULL"),
                        EventPart::OfStripeCustomer(customer) => q
                            .push("stripe_customer IN (SELECT object_id FROM object_links WHERE customer_id = ")
                            .push_bind(customer.as_str())
                            .push(")"),
                        EventPart::OfLinkedObject(customer) => q
                            .push("stripe_customer IS NULL AND object_id IN \
                                   (SELECT object_id FROM object_links WHERE customer_id = ")
                            .push_bind(customer.as_str())
                            .push(")"),
                    };
                    // Only the conditions given: a `$n IS NULL OR …` term
                    // would keep the planner from the index that condition
                    // needs.
                    match query.status {
                        Some(EventStatus::Received) => {
                            q.push(" AND status IS NULL");
                        }
                        Some(status) => {
                            q.push(" AND status = ").push_bind(status.as_str());
                        }
                        None => {}
                    }
                    if let Some(event_type) = &query.event_type {
                        q.push(" AND type = ").push_bind(event_type.as_str());
                    }
                    if let Some(from) = query.received_from {
                        q.push(" AND received_at >= ").push_bind(from);
                    }
                    if let Some(until) = query.received_until {
                        q.push(" AND received_at < ").push_bind(until);
                    }
                    if ranged {
                        // What the arrival indexes hold (received rows are
                        // not derived yet, and have no type to filter on).
                        q.push(" AND status IS NOT NULL");
                    }
                    q.push(order).push_bind(limit);
                    if union {
                        q.push(format!(") AS part{i}"));
                    }
                }
                if union {
                    q.push(order).push_bind(limit);
                }
                let rows: Vec<EventRow> = q.build_query_as().fetch_all(self.reader()).await?;
                into_events(rows)
            }

            async fn record_operator_action(
                &self,
                action: &NewOperatorAction,
                now: i64,
            ) -> StoreResult<i64> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO operator_actions \
                     (at, actor, action, target, customer_id, outcome) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                )
                .bind(now)
                .bind(&action.actor)
                .bind(&action.action)
                .bind(&action.target)
                .bind(action.customer_id.as_ref().map(CustomerId::as_str))
                .bind(&action.outcome)
                .fetch_one(self.writer())
                .await?;
                Ok(id)
            }

            async fn operator_actions(
                &self,
                customer_id: Option<&CustomerId>,
                limit: u32,
            ) -> StoreResult<Vec<OperatorAction>> {
                let rows: Vec<(i64, i64, String, String, String, Option<String>, String)> =
                    sqlx::query_as(
                        "SELECT id, at, actor, action, target, customer_id, outcome \
                         FROM operator_actions \
                         WHERE ($1 IS NULL OR customer_id = $1) \
                         ORDER BY id DESC LIMIT $2",
                    )
                    .bind(customer_id.map(CustomerId::as_str))
                    .bind(<$store as Dialect>::limit(limit))
                    .fetch_all(self.reader())
                    .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(id, at, actor, action, target, customer_id, outcome)| OperatorAction {
                            id,
                            at,
                            actor,
                            action,
                            target,
                            customer_id,
                            outcome,
                        },
                    )
                    .collect())
            }

            async fn activity(
                &self,
                from: i64,
                until: i64,
                bucket_secs: i64,
            ) -> StoreResult<Vec<ActivityBucket>> {
                // Per-minute counters kept by triggers (migration
                // console_counters), not the day's events: a day is 1,440
                // rows however busy it was.
                if let Some(fold) = <$store as Dialect>::FOLD_EVENT_MINUTES {
                    sqlx::query(fold)
                        .bind(from)
                        .bind(until)
                        .execute(self.writer())
                        .await?;
                }
                let rows: Vec<(i64, i64, i64, i64, i64, i64)> = sqlx::query_as(
                    "SELECT b, CAST(SUM(events) AS BIGINT), CAST(SUM(webhooks) AS BIGINT), \
                       CAST(SUM(payments_failed) AS BIGINT), \
                       CAST(SUM(payments_succeeded) AS BIGINT), CAST(SUM(dead) AS BIGINT) \
                     FROM (SELECT (minute - $1) / $3 AS b, events, webhooks, payments_failed, \
                             payments_succeeded, dead \
                           FROM stripe_event_minutes WHERE minute >= $1 AND minute < $2) AS m \
                     GROUP BY b HAVING SUM(events) <> 0 ORDER BY b",
                )
                .bind(from)
                .bind(until)
                .bind(bucket_secs.max(1))
                .fetch_all(self.reader())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(b, events, webhooks, failed, succeeded, dead)| ActivityBucket {
                        start: from + b * bucket_secs.max(1),
                        events,
                        webhooks,
                        payments_failed: failed,
                        payments_succeeded: succeeded,
                        dead,
                    })
                    .collect())
            }

            async fn alerts(&self, since: i64, limit: u32) -> StoreResult<Vec<crate::OutboxItem>> {
                let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
                    "SELECT {OUTBOX_COLUMNS} FROM outbox \
                     WHERE kind = 'admin_alert' AND created_at >= $1 \
                     ORDER BY id DESC LIMIT $2"
                ))
                .bind(since)
                .bind(<$store as Dialect>::limit(limit))
                .fetch_all(self.reader())
                .await?;
                into_outbox(rows)
            }

            async fn count_alerts(&self, since: i64) -> StoreResult<i64> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM outbox \
                     WHERE kind = 'admin_alert' AND created_at >= $1",
                )
                .bind(since)
                .fetch_one(self.reader())
                .await?;
                Ok(n)
            }

            async fn record_reconcile_run(
                &self,
                run: &NewReconcileRun,
                now: i64,
            ) -> StoreResult<i64> {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO reconcile_runs \
                     (started_at, finished_at, checked, drift, unlinked, ingested, report) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                )
                .bind(run.started_at)
                .bind(now)
                .bind(run.checked)
                .bind(run.drift)
                .bind(run.unlinked)
                .bind(run.ingested)
                .bind(&run.report)
                .fetch_one(self.writer())
                .await?;
                Ok(id)
            }

            async fn reconcile_runs(&self, limit: u32) -> StoreResult<Vec<ReconcileRunRecord>> {
                let rows: Vec<(i64, i64, i64, i64, i64, i64, i64, String)> = sqlx::query_as(
                    "SELECT id, started_at, finished_at, checked, drift, unlinked, ingested, report \
                     FROM reconcile_runs ORDER BY id DESC LIMIT $1",
                )
                .bind(<$store as Dialect>::limit(limit))
                .fetch_all(self.reader())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(id, started_at, finished_at, checked, drift, unlinked, ingested, report)| {
                            ReconcileRunRecord {
                                id,
                                started_at,
                                finished_at,
                                checked,
                                drift,
                                unlinked,
                                ingested,
                                report,
                            }
                        },
                    )
                    .collect())
            }
        }
    };
}

console_store!(SqliteStore);
console_store!(PgStore);
