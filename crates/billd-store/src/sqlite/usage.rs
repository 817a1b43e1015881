//! [`UsageStore`] on SQLite: on the single writer connection, inside
//! `BEGIN IMMEDIATE`, the version check and the consume cannot interleave
//! with any other write.

use async_trait::async_trait;
use sqlx::SqliteConnection;

use super::billing::consume_in;
use super::SqliteStore;
use crate::billing::check_amount;
use crate::dialect::Dialect;
use crate::usage::{GuardedConsume, GuardedOutcome, UsageStore};
use crate::{StoreResult, UsageOutcome, UsageRequest};

/// `BillingStore::consume`: the shared consume in its own write transaction.
pub(super) async fn consume(
    store: &SqliteStore,
    request: &UsageRequest,
    limit: u64,
    now: i64,
) -> StoreResult<UsageOutcome> {
    check_amount(request)?;
    let mut tx = store.begin_write().await?;
    let (outcome, keep) = consume_in(&mut tx, request, limit, now).await?;
    if keep {
        tx.commit().await?;
    }
    Ok(outcome)
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn consume_guarded(
        &self,
        consume: &GuardedConsume,
        now: i64,
    ) -> StoreResult<GuardedOutcome> {
        check_amount(&consume.request)?;
        let mut tx = self.begin_write().await?;
        let (outcome, keep) = guarded_in(&mut tx, consume, now).await?;
        if keep {
            tx.commit().await?;
        }
        Ok(outcome)
    }

    async fn consume_guarded_batch(
        &self,
        batch: &[GuardedConsume],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
        let mut out = Vec::with_capacity(batch.len());
        if batch.is_empty() {
            return Ok(out);
        }
        let mut tx = self.begin_write().await?;
        for consume in batch {
            // A savepoint per request: a refused or failed one is undone
            // alone, the others still commit together.
            sqlx::query("SAVEPOINT consume").execute(&mut *tx).await?;
            let result = guarded_in(&mut tx, consume, now).await;
            if !matches!(result, Ok((_, true))) {
                sqlx::query("ROLLBACK TO SAVEPOINT consume")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT consume")
                .execute(&mut *tx)
                .await?;
            out.push(result.map(|(outcome, _)| outcome));
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The version check, then the consume, in the caller's transaction; the
/// flag says whether something was written to keep.
async fn guarded_in(
    conn: &mut SqliteConnection,
    consume: &GuardedConsume,
    now: i64,
) -> StoreResult<(GuardedOutcome, bool)> {
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM customers \
         WHERE customer_id = ?1 AND version = ?2 AND deleted_at IS NULL",
    )
    .bind(consume.request.customer_id.as_str())
    .bind(consume.customer_version)
    .fetch_optional(&mut *conn)
    .await?;
    if current.is_none() {
        return Ok((GuardedOutcome::Stale, false));
    }
    let (outcome, keep) = consume_in(conn, &consume.request, consume.limit, now).await?;
    Ok((GuardedOutcome::Decided(outcome), keep))
}
