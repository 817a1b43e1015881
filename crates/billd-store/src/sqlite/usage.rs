//! [`UsageStore`] on SQLite: on the single writer connection, inside
//! `BEGIN IMMEDIATE`, the version check and the consume cannot interleave
//! with any other write.

use async_trait::async_trait;

use super::billing::{consume_in, consume_together, guarded_in};
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
        let version = Some(consume.customer_version);
        let (outcome, keep) =
            guarded_in(&mut tx, &consume.request, consume.limit, version, now).await?;
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
        let batch: Vec<_> = batch
            .iter()
            .map(|c| (&c.request, c.limit, Some(c.customer_version)))
            .collect();
        consume_together(self, &batch, now).await
    }
}
