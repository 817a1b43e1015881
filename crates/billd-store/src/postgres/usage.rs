//! [`UsageStore`] on PostgreSQL, and the one-statement consume that
//! `BillingStore::consume` uses too (see [`consume`]).
//!
//! A consume is ONE statement in its own implicit transaction: one network
//! round trip and one commit (PostgreSQL flushes the WAL of concurrent
//! commits together). The statement checks the customer's version, looks up
//! the idempotency key, adds to the counter only if it stays within the
//! limit (an upsert: READ COMMITTED re-checks the condition on the latest
//! row after waiting for a concurrent writer) and stores the answer under
//! the key. Two concurrent requests with the same key both pass the
//! look-up; the second one's answer insert then waits for the first and
//! fails on the key's primary key, which undoes its whole statement, and
//! the retry finds the first answer. A refusal reads once more, so a
//! request that waited for a same-key request finds that answer too.

use std::collections::HashMap;

use async_trait::async_trait;
use billd_core::CustomerId;
use sqlx::postgres::PgPool;

use super::billing::consume_together;
use super::change_feed;
use super::PgStore;
use crate::billing::{
    check_amount, first_plain_consumes, from_db, period_column, replay, Direction, StoredRequest,
};
use crate::dialect::Dialect;
use crate::usage::{
    snapshot_of, GuardedConsume, GuardedOutcome, SnapshotRow, UsageSnapshot, UsageStore, SNAPSHOTS,
};
use crate::{StoreError, StoreResult, UsageOutcome, UsageRequest};

/// The primary key a same-key race fails on.
const REQUESTS_KEY: &str = "usage_requests_pkey";

/// The SQLSTATE of a transaction PostgreSQL aborted to break a lock cycle.
const DEADLOCK_DETECTED: &str = "40P01";

/// How often a consume that lost a same-key race is retried; the retry
/// finds the winner's answer, so one is enough unless keys are reused
/// across features at the same instant.
const KEY_RACE_RETRIES: usize = 3;

/// `$1` customer, `$2` idempotency key, `$3` feature, `$4` period column,
/// `$5` amount, `$6` limit, `$7` expected customer version (NULL: no
/// check), `$8` now. One row: whether the version matched, the counter
/// after an applied consume, and the earlier request under the key.
const CONSUME: &str = "\
WITH fresh AS ( \
    SELECT 1 WHERE $7::BIGINT IS NULL OR EXISTS ( \
        SELECT 1 FROM customers \
        WHERE customer_id = $1 AND version = $7 AND deleted_at IS NULL) \
), prior AS ( \
    SELECT direction, feature, amount, used, quota FROM usage_requests \
    WHERE customer_id = $1 AND idempotency_key = $2 \
), bump AS ( \
    INSERT INTO usage_counters AS c (customer_id, feature, period_start, used) \
    SELECT $1, $3, $4, $5 \
    WHERE EXISTS (SELECT 1 FROM fresh) AND NOT EXISTS (SELECT 1 FROM prior) AND $5 <= $6 \
    ON CONFLICT (customer_id, feature, period_start) \
    DO UPDATE SET used = c.used + EXCLUDED.used WHERE c.used + EXCLUDED.used <= $6 \
    RETURNING c.used \
), answer AS ( \
    INSERT INTO usage_requests \
      (customer_id, idempotency_key, direction, feature, period_start, amount, used, quota, \
       created_at) \
    SELECT $1, $2, 'consume', $3, $4, $5, used, $6, $8 FROM bump \
    RETURNING used \
) \
SELECT EXISTS (SELECT 1 FROM fresh) AS fresh, (SELECT used FROM answer) AS applied, \
       p.direction, p.feature, p.amount, p.used, p.quota \
FROM (SELECT 1) AS one LEFT JOIN prior AS p ON TRUE";

/// After a refusal: the earlier request under the key (committed since the
/// consume's snapshot, perhaps) and the counter now.
const AFTER_REFUSAL: &str = "\
SELECT (SELECT used FROM usage_counters \
        WHERE customer_id = $1 AND feature = $3 AND period_start = $4) AS current, \
       p.direction, p.feature, p.amount, p.used, p.quota \
FROM (SELECT 1) AS one \
LEFT JOIN usage_requests AS p ON p.customer_id = $1 AND p.idempotency_key = $2";

/// A row of [`SNAPSHOTS`]: the read's 1-based position, then a [`SnapshotRow`].
type PositionedRow = (
    i64,
    i64,
    bool,
    bool,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// The earlier request under the key, when there is one (all NULL if not).
#[derive(sqlx::FromRow)]
struct Prior {
    direction: Option<String>,
    feature: Option<String>,
    amount: Option<i64>,
    used: Option<i64>,
    quota: Option<i64>,
}

impl Prior {
    fn stored(self) -> Option<StoredRequest> {
        match self {
            Prior {
                direction: Some(direction),
                feature: Some(feature),
                amount: Some(amount),
                used: Some(used),
                quota: Some(quota),
            } => Some((direction, feature, amount, used, quota)),
            _ => None,
        }
    }
}

/// The row of [`CONSUME`].
#[derive(sqlx::FromRow)]
struct Consumed {
    fresh: bool,
    applied: Option<i64>,
    #[sqlx(flatten)]
    prior: Prior,
}

/// The row of [`AFTER_REFUSAL`].
#[derive(sqlx::FromRow)]
struct Refused {
    current: Option<i64>,
    #[sqlx(flatten)]
    prior: Prior,
}

/// `BillingStore::consume`: the statement without the version check.
pub(super) async fn consume(
    store: &PgStore,
    request: &UsageRequest,
    limit: u64,
    now: i64,
) -> StoreResult<UsageOutcome> {
    let outcome = if request.overage.is_some() || request.credits.is_some() {
        with_meter(store, request, limit, None, now).await?
    } else {
        consume_one(&store.pool, request, limit, None, now).await?
    };
    match outcome {
        GuardedOutcome::Decided(outcome) => Ok(outcome),
        // Without a version to check, the statement always decides.
        GuardedOutcome::Stale => Err(StoreError::Other(
            "an unguarded consume reported a stale customer".into(),
        )),
    }
}

/// One consume as one statement; `version` None skips the version check.
pub(super) async fn consume_one(
    pool: &PgPool,
    request: &UsageRequest,
    limit: u64,
    version: Option<i64>,
    now: i64,
) -> StoreResult<GuardedOutcome> {
    let amount = check_amount(request)?;
    // A limit beyond BIGINT cannot be reached anyway.
    let limit_db = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut attempt = 0;
    let row = loop {
        let result: Result<Consumed, StoreError> = sqlx::query_as(CONSUME)
            .bind(request.customer_id.as_str())
            .bind(request.idempotency_key.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .bind(amount)
            .bind(limit_db)
            .bind(version)
            .bind(now)
            .fetch_one(pool)
            .await
            .map_err(StoreError::from);
        match result {
            Err(StoreError::Conflict { constraint })
                if constraint == REQUESTS_KEY && attempt < KEY_RACE_RETRIES =>
            {
                attempt += 1;
            }
            other => break other?,
        }
    };
    if !row.fresh {
        return Ok(GuardedOutcome::Stale);
    }
    if let Some(prior) = row.prior.stored() {
        return replay(prior, Direction::Consume, request).map(GuardedOutcome::Decided);
    }
    if let Some(used) = row.applied {
        return Ok(GuardedOutcome::Decided(UsageOutcome::Applied {
            used: from_db(used),
            limit,
            replayed: false,
        }));
    }
    let refused: Refused = sqlx::query_as(AFTER_REFUSAL)
        .bind(request.customer_id.as_str())
        .bind(request.idempotency_key.as_str())
        .bind(request.key.feature.as_str())
        .bind(period_column(&request.key))
        .fetch_one(pool)
        .await?;
    let current = refused.current;
    if let Some(prior) = refused.prior.stored() {
        return replay(prior, Direction::Consume, request).map(GuardedOutcome::Decided);
    }
    Ok(GuardedOutcome::Decided(UsageOutcome::LimitExceeded {
        used: from_db(current.unwrap_or(0)),
        limit,
    }))
}

/// `$1`..`$3` customers, features and period columns: their counters, at
/// 0 where missing (for live customers only; the counters' foreign key).
const ENSURE_COUNTERS: &str = "\
INSERT INTO usage_counters (customer_id, feature, period_start, used) \
SELECT r.customer_id, r.feature, r.period_start, 0 \
FROM UNNEST($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS r(customer_id, feature, period_start) \
JOIN customers AS c ON c.customer_id = r.customer_id AND c.deleted_at IS NULL \
ON CONFLICT (customer_id, feature, period_start) DO NOTHING";

/// The consumes of a batch, each on a counter of its own and under a key
/// of its own: `$1` customers, `$2` keys, `$3` features, `$4` period
/// columns, `$5` amounts, `$6` limits, `$7` expected customer versions,
/// `$8` now. Applies those whose customer is at the version, whose key is
/// new and that fit under their limit, records their answers, and returns
/// (customer, key, counter after) for each applied one.
const CONSUME_MANY: &str = "\
WITH r AS ( \
    SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BIGINT[], \
                         $6::BIGINT[], $7::BIGINT[]) \
        AS r(customer_id, idempotency_key, feature, period_start, amount, quota, version) \
), due AS ( \
    SELECT r.* FROM r \
    JOIN customers AS c ON c.customer_id = r.customer_id \
        AND c.version = r.version AND c.deleted_at IS NULL \
    WHERE NOT EXISTS (SELECT 1 FROM usage_requests AS p \
        WHERE p.customer_id = r.customer_id AND p.idempotency_key = r.idempotency_key) \
), bump AS ( \
    UPDATE usage_counters AS u SET used = u.used + due.amount FROM due \
    WHERE u.customer_id = due.customer_id AND u.feature = due.feature \
      AND u.period_start = due.period_start AND u.used + due.amount <= due.quota \
    RETURNING due.customer_id, due.idempotency_key, due.feature, due.period_start, \
              due.amount, due.quota, u.used \
), answer AS ( \
    INSERT INTO usage_requests \
      (customer_id, idempotency_key, direction, feature, period_start, amount, used, quota, \
       created_at) \
    SELECT customer_id, idempotency_key, 'consume', feature, period_start, amount, used, quota, $8 \
    FROM bump \
    RETURNING customer_id, idempotency_key, used \
) \
SELECT customer_id, idempotency_key, used FROM answer";

/// `UsageStore::consume_guarded_batch`: the consumes that can go together
/// (no credits or overage, each on a counter and under a key no earlier one
/// of the batch uses) are applied in one transaction of two statements, so
/// that concurrent consumes share a commit (and its announcement of the
/// changed customers, which PostgreSQL serialises database-wide). Every
/// other one, and every one of those that the statement did not apply (a
/// stale version, a repeated key, over its limit), is then decided alone,
/// in batch order, by the one-statement path, which gives its exact answer.
async fn consume_batch(
    store: &PgStore,
    batch: &[GuardedConsume],
    now: i64,
) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
    let mut answers: Vec<Option<GuardedOutcome>> = (0..batch.len()).map(|_| None).collect();
    let mut together = first_plain_consumes(batch.iter().map(|c| &c.request));
    // In counter order, so that two batches under way at once lock their
    // counters in the same order and never wait on each other in a cycle.
    together.sort_by_key(|&(i, _)| {
        let key = &batch[i].request.key;
        (
            batch[i].request.customer_id.as_str(),
            key.feature.as_str(),
            period_column(key),
        )
    });
    if together.len() > 1 {
        for (i, used) in apply_together(store, batch, &together, now).await? {
            let consume = &batch[i];
            answers[i] = Some(GuardedOutcome::Decided(UsageOutcome::Applied {
                used: from_db(used),
                limit: consume.limit,
                replayed: false,
            }));
        }
    }
    let mut out = Vec::with_capacity(batch.len());
    for (consume, answer) in batch.iter().zip(answers) {
        out.push(match answer {
            Some(answer) => Ok(answer),
            None => store.consume_guarded(consume, now).await,
        });
    }
    Ok(out)
}

/// The consumes `together` (batch positions and amounts) in one
/// transaction: the positions applied and their counters after. A
/// same-key race with another process, or a lock cycle with another
/// process's batch, applies none of them (each is then decided alone).
async fn apply_together(
    store: &PgStore,
    batch: &[GuardedConsume],
    together: &[(usize, i64)],
    now: i64,
) -> StoreResult<Vec<(usize, i64)>> {
    let mut customers = Vec::with_capacity(together.len());
    let mut idempotency = Vec::with_capacity(together.len());
    let mut features = Vec::with_capacity(together.len());
    let mut periods = Vec::with_capacity(together.len());
    let mut amounts = Vec::with_capacity(together.len());
    let mut limits = Vec::with_capacity(together.len());
    let mut versions = Vec::with_capacity(together.len());
    let mut position = HashMap::with_capacity(together.len());
    for &(i, amount) in together {
        let consume = &batch[i];
        let request = &consume.request;
        customers.push(request.customer_id.as_str());
        idempotency.push(request.idempotency_key.as_str());
        features.push(request.key.feature.as_str());
        periods.push(period_column(&request.key));
        amounts.push(amount);
        // A limit beyond BIGINT cannot be reached anyway.
        limits.push(i64::try_from(consume.limit).unwrap_or(i64::MAX));
        versions.push(consume.customer_version);
        position.insert(
            (
                request.customer_id.as_str(),
                request.idempotency_key.as_str(),
            ),
            i,
        );
    }
    let mut tx = store.pool.begin().await?;
    sqlx::query(ENSURE_COUNTERS)
        .bind(&customers)
        .bind(&features)
        .bind(&periods)
        .execute(&mut *tx)
        .await?;
    let applied: Result<Vec<(String, String, i64)>, sqlx::Error> = sqlx::query_as(CONSUME_MANY)
        .bind(&customers)
        .bind(&idempotency)
        .bind(&features)
        .bind(&periods)
        .bind(&amounts)
        .bind(&limits)
        .bind(&versions)
        .bind(now)
        .fetch_all(&mut *tx)
        .await;
    let applied = match applied {
        Err(sqlx::Error::Database(e))
            if e.constraint() == Some(REQUESTS_KEY)
                || e.code().as_deref() == Some(DEADLOCK_DETECTED) =>
        {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        other => other?,
    };
    tx.commit().await?;
    applied
        .into_iter()
        .map(|(customer, key, used)| {
            position
                .get(&(customer.as_str(), key.as_str()))
                .map(|&i| (i, used))
                .ok_or_else(|| {
                    StoreError::Other(format!("an applied consume {customer}/{key} not asked"))
                })
        })
        .collect()
}

/// A consume that may report overage or take credits: the meter event's
/// outbox row and the packs' counters must commit with it, which the
/// one-statement [`consume_one`] cannot write, so it takes the
/// transactional path (one transaction, as a batch of one).
async fn with_meter(
    store: &PgStore,
    request: &UsageRequest,
    limit: u64,
    version: Option<i64>,
    now: i64,
) -> StoreResult<GuardedOutcome> {
    let mut answers = consume_together(store, &[(request, limit, version)], now).await?;
    answers
        .pop()
        .unwrap_or_else(|| Err(StoreError::Other("a batch of one answered nothing".into())))
}

#[async_trait]
impl UsageStore for PgStore {
    async fn consume_guarded(
        &self,
        consume: &GuardedConsume,
        now: i64,
    ) -> StoreResult<GuardedOutcome> {
        let version = Some(consume.customer_version);
        if consume.request.overage.is_some() || consume.request.credits.is_some() {
            return with_meter(self, &consume.request, consume.limit, version, now).await;
        }
        consume_one(&self.pool, &consume.request, consume.limit, version, now).await
    }

    async fn consume_guarded_batch(
        &self,
        batch: &[GuardedConsume],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
        consume_batch(self, batch, now).await
    }

    async fn usage_snapshot(
        &self,
        customer: &CustomerId,
        known_version: Option<i64>,
    ) -> StoreResult<Option<UsageSnapshot>> {
        let mut one = self
            .usage_snapshots(&[(customer.clone(), known_version)])
            .await?;
        Ok(one.pop().flatten())
    }

    async fn usage_snapshots(
        &self,
        reads: &[(CustomerId, Option<i64>)],
    ) -> StoreResult<Vec<Option<UsageSnapshot>>> {
        // Reads of the same customer with the same known version (a hot
        // customer) are asked once.
        let mut asked: HashMap<(&str, Option<i64>), usize> = HashMap::new();
        let mut customers = Vec::new();
        let mut knowns = Vec::new();
        let position: Vec<usize> = reads
            .iter()
            .map(|(customer, known)| {
                *asked.entry((customer.as_str(), *known)).or_insert_with(|| {
                    customers.push(customer.as_str());
                    knowns.push(*known);
                    customers.len() - 1
                })
            })
            .collect();
        let rows: Vec<PositionedRow> = sqlx::query_as(SNAPSHOTS)
            .bind(&customers)
            .bind(&knowns)
            .fetch_all(self.reader())
            .await?;
        let mut per_customer: Vec<Vec<SnapshotRow>> = vec![Vec::new(); customers.len()];
        for (i, version, deleted, known, state, key, feature, period, used) in rows {
            let slot = usize::try_from(i - 1)
                .ok()
                .and_then(|i| per_customer.get_mut(i))
                .ok_or_else(|| StoreError::Other(format!("a snapshot row for position {i}")))?;
            slot.push((version, deleted, known, state, key, feature, period, used));
        }
        let mut uses = vec![0_usize; customers.len()];
        for &i in &position {
            uses[i] += 1;
        }
        let mut snapshots = per_customer
            .into_iter()
            .zip(&customers)
            .map(|(rows, customer)| {
                let mut snapshot = snapshot_of(customer, rows)?;
                if let Some(snapshot) = &mut snapshot {
                    snapshot.change_key = Some(change_feed::bucket_of(customer));
                }
                Ok(snapshot)
            })
            .collect::<StoreResult<Vec<_>>>()?;
        // Each answer once, moved out at its last use.
        let answers = position
            .into_iter()
            .map(|i| {
                uses[i] -= 1;
                if uses[i] == 0 {
                    snapshots[i].take()
                } else {
                    snapshots[i].clone()
                }
            })
            .collect();
        Ok(answers)
    }

    fn write_mark(&self) -> Option<crate::WriteMark> {
        self.changes.mark()
    }

    fn still_current(&self, mark: crate::WriteMark, snapshot: &UsageSnapshot) -> bool {
        self.changes.unchanged_since(mark, snapshot.change_key)
    }

    async fn settle(&self) -> bool {
        self.changes.settle().await
    }

    fn settles(&self) -> bool {
        true
    }

    fn follow_changes(&self) {
        self.changes.follow(&self.pool);
    }
}
