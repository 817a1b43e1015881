//! [`Dialect`] of the PostgreSQL store: one pool for everything.

use sqlx::postgres::{PgPool, Postgres};
use sqlx::Transaction;

use super::PgStore;
use crate::dialect::Dialect;

impl Dialect for PgStore {
    type Db = Postgres;
    type Limit = Option<i64>;

    const JSON: &'static str = "::jsonb";
    const IN_JSON_ARRAY: &'static str = "= ANY (ARRAY(SELECT json_array_elements_text($1::json)))";
    const GREATEST: &'static str = "GREATEST";
    const INDEXED_BY_OUTBOX_DUE: &'static str = "";
    const BYTE_ORDER: &'static str = " COLLATE \"C\"";
    // A delta appended meanwhile is not in the DELETE's snapshot, so it
    // stays and is summed next time; two folds at once delete disjoint rows.
    // Statuses already folded are left alone: a read with nothing to fold
    // writes nothing (and waits for no WAL flush).
    const FOLD_OUTBOX_COUNTS: Option<&'static str> = Some(
        "WITH gone AS ( \
           DELETE FROM outbox_counts WHERE status IN ( \
             SELECT status FROM outbox_counts GROUP BY status HAVING COUNT(*) > 1) \
           RETURNING status, n) \
         INSERT INTO outbox_counts (status, n) \
         SELECT status, SUM(n) FROM gone GROUP BY status HAVING SUM(n) <> 0",
    );
    // Only minutes with more than one row: a day's folded minutes are
    // read, not rewritten.
    const FOLD_EVENT_MINUTES: Option<&'static str> = Some(
        "WITH gone AS ( \
           DELETE FROM stripe_event_minutes \
           WHERE minute >= $1 AND minute < $2 AND minute IN ( \
             SELECT minute FROM stripe_event_minutes WHERE minute >= $1 AND minute < $2 \
             GROUP BY minute HAVING COUNT(*) > 1) \
           RETURNING *) \
         INSERT INTO stripe_event_minutes \
           (minute, events, webhooks, payments_failed, payments_succeeded, dead) \
         SELECT minute, SUM(events), SUM(webhooks), SUM(payments_failed), \
                SUM(payments_succeeded), SUM(dead) \
         FROM gone GROUP BY minute \
         HAVING SUM(events) <> 0 OR SUM(webhooks) <> 0 OR SUM(payments_failed) <> 0 \
             OR SUM(payments_succeeded) <> 0 OR SUM(dead) <> 0",
    );
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";

    fn reader(&self) -> &PgPool {
        &self.pool
    }

    fn writer(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    /// PostgreSQL reads LIMIT NULL as "no limit".
    fn limit(limit: u32) -> Option<i64> {
        (limit > 0).then_some(i64::from(limit))
    }

    fn erased(&self) -> &crate::erasure::ErasedCustomers {
        &self.erased
    }
}
