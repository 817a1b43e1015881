//! What the operator console and its admin API read across tables: finding
//! a customer by any id it is known by, a customer's events, and replaying
//! the events a filter picks. One body for both databases.

use async_trait::async_trait;
use billd_core::CustomerId;

use crate::billing::{CustomerRow, CUSTOMER_COLUMNS};
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

/// The console's reads and its bulk replay. Implemented by both stores.
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
                let rows: Vec<CustomerRow> = sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers \
                     WHERE ($2 IS NULL OR customer_id > $2) \
                       AND ($1 = '' \
                         OR substr(customer_id, 1, length($1)) = $1 \
                         OR lower(substr(email, 1, length($1))) = lower($1) \
                         OR stripe_customer_id = $1 \
                         OR customer_id IN \
                            (SELECT customer_id FROM object_links WHERE object_id = $1)) \
                     ORDER BY customer_id LIMIT $3"
                ))
                .bind(query)
                .bind(after.map(CustomerId::as_str))
                .bind(<$store as Dialect>::limit(limit))
                .fetch_all(self.reader())
                .await?;
                rows.into_iter().map(CustomerRecord::try_from).collect()
            }

            async fn customer_events(
                &self,
                customer_id: &CustomerId,
                limit: u32,
            ) -> StoreResult<Vec<StoredEvent>> {
                let rows: Vec<EventRow> = sqlx::query_as(&format!(
                    "SELECT {EVENT_COLUMNS} FROM stripe_events WHERE {} \
                     ORDER BY seq DESC LIMIT $2",
                    events_of_customer!("$1")
                ))
                .bind(customer_id.as_str())
                .bind(<$store as Dialect>::limit(limit))
                .fetch_all(self.reader())
                .await?;
                into_events(rows)
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
        }
    };
}

console_store!(SqliteStore);
console_store!(PgStore);
