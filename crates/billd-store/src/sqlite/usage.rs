//! [`UsageStore`] on SQLite: on the single writer connection, inside
//! `BEGIN IMMEDIATE`, the version check and the consume cannot interleave
//! with any other write (another process's writer waits for the lock).
//!
//! That is what lets a group-committed batch cost a few statements
//! ([`consume_batch`]): the versions of the batch's customers are read
//! once; then the consumes of distinct counters and keys together, and the
//! others one by one, are an INSERT of the idempotency keys whose answers
//! (the counter after each consume) are computed in the statement and
//! which inserts nothing past the limit or over an existing key, and the
//! counters set to the answers stored. Nothing else can write between the
//! two, and a consume that is refused or replayed wrote nothing, so no
//! savepoint is needed to undo it. Each statement is a hand-over to
//! SQLite's connection thread and back, so two statements for the whole
//! batch instead of two per consume is what sets the writer's rate.

use std::collections::HashMap;

use async_trait::async_trait;
use billd_core::CustomerId;
use sqlx::SqliteConnection;

use super::billing::{consume_in, guarded_in, insert_outbox};
use super::SqliteStore;
use crate::billing::{
    check_amount, first_plain_consumes, from_db, period_column, replay, Direction, StoredRequest,
};
use crate::dialect::Dialect;
use crate::usage::{
    snapshot_of, GuardedConsume, GuardedOutcome, SnapshotRow, UsageSnapshot, UsageStore,
    SNAPSHOT_SQLITE,
};
use crate::{StoreError, StoreResult, UsageOutcome, UsageRequest};

/// The live versions of the customers in `$1` (a JSON array of ids): one
/// prepared statement whatever the batch's size.
const VERSIONS: &str = "SELECT customer_id, version FROM customers \
     WHERE customer_id IN (SELECT value FROM json_each($1)) AND deleted_at IS NULL";

/// `$1` customer, `$2` key, `$3` feature, `$4` period column, `$5` amount,
/// `$6` limit, `$7` now: stores the consume's answer under its key unless
/// the key exists or the counter would pass the limit; returns the counter
/// after it.
const TAKE_KEY: &str = "INSERT INTO usage_requests \
       (customer_id, idempotency_key, direction, feature, period_start, amount, used, quota, \
        created_at) \
     SELECT $1, $2, 'consume', $3, $4, $5, n.after, $6, $7 \
     FROM (SELECT COALESCE((SELECT used FROM usage_counters \
                            WHERE customer_id = $1 AND feature = $3 AND period_start = $4), 0) \
                  + $5 AS after) AS n \
     WHERE n.after <= $6 \
     ON CONFLICT (customer_id, idempotency_key) DO NOTHING \
     RETURNING used";

/// The counter set to the answer [`TAKE_KEY`] just stored.
const SET_COUNTER: &str = "INSERT INTO usage_counters (customer_id, feature, period_start, used) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (customer_id, feature, period_start) DO UPDATE SET used = excluded.used";

/// After [`TAKE_KEY`] inserted nothing: the earlier request under the key,
/// if any, and the counter.
const NOT_TAKEN: &str = "SELECT (SELECT used FROM usage_counters \
            WHERE customer_id = $1 AND feature = $3 AND period_start = $4) AS current, \
        p.direction, p.feature, p.amount, p.used, p.quota \
     FROM (SELECT 1) AS one \
     LEFT JOIN usage_requests AS p ON p.customer_id = $1 AND p.idempotency_key = $2";

/// [`TAKE_KEY`] for many consumes at once, each on a counter and under a
/// key of its own: `$1` a JSON array of [customer, key, feature, period
/// column, amount, limit], `$2` now. Returns (customer, key, counter
/// after) for each answer stored.
const TAKE_KEYS: &str = "INSERT INTO usage_requests \
       (customer_id, idempotency_key, direction, feature, period_start, amount, used, quota, \
        created_at) \
     SELECT r.c, r.k, 'consume', r.f, r.p, r.a, COALESCE(u.used, 0) + r.a, r.q, $2 \
     FROM (SELECT json_extract(value, '$[0]') AS c, json_extract(value, '$[1]') AS k, \
                  json_extract(value, '$[2]') AS f, json_extract(value, '$[3]') AS p, \
                  json_extract(value, '$[4]') AS a, json_extract(value, '$[5]') AS q \
           FROM json_each($1)) AS r \
     LEFT JOIN usage_counters AS u \
       ON u.customer_id = r.c AND u.feature = r.f AND u.period_start = r.p \
     WHERE COALESCE(u.used, 0) + r.a <= r.q \
     ON CONFLICT (customer_id, idempotency_key) DO NOTHING \
     RETURNING customer_id, idempotency_key, used";

/// [`SET_COUNTER`] for the answers [`TAKE_KEYS`] stored: `$1` a JSON array
/// of [customer, feature, period column, counter after].
const SET_COUNTERS: &str = "INSERT INTO usage_counters (customer_id, feature, period_start, used) \
     SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), \
            json_extract(value, '$[2]'), json_extract(value, '$[3]') \
     FROM json_each($1) WHERE TRUE \
     ON CONFLICT (customer_id, feature, period_start) DO UPDATE SET used = excluded.used";

/// The row of [`NOT_TAKEN`].
type NotTaken = (
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
);

/// Consumes (request, limit, version to check or `None`) committed in one
/// write transaction, each answered as if alone (see the module's
/// documentation). An error for one consume leaves nothing of it; an error
/// that could leave half a consume fails the whole batch, uncommitted.
pub(super) async fn consume_batch(
    store: &SqliteStore,
    batch: &[(&UsageRequest, u64, Option<i64>)],
    now: i64,
) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
    let mut out = Vec::with_capacity(batch.len());
    if batch.is_empty() {
        return Ok(out);
    }
    let mut tx = store.begin_write().await?;
    let guarded: Vec<&str> = batch
        .iter()
        .filter(|(_, _, version)| version.is_some())
        .map(|(request, _, _)| request.customer_id.as_str())
        .collect();
    let live: HashMap<String, i64> = if guarded.is_empty() {
        HashMap::new()
    } else {
        let ids = serde_json::to_string(&guarded)
            .map_err(|e| StoreError::Other(format!("customer ids as JSON: {e}")))?;
        sqlx::query_as::<_, (String, i64)>(VERSIONS)
            .bind(ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect()
    };
    let mut taken = take_together(&mut tx, batch, &live, now).await?;
    for (i, (request, limit, version)) in batch.iter().enumerate() {
        if let Some(version) = version {
            if live.get(request.customer_id.as_str()) != Some(version) {
                out.push(Ok(GuardedOutcome::Stale));
                continue;
            }
        }
        if let Some(used) = taken.remove(&i) {
            out.push(Ok(GuardedOutcome::Decided(UsageOutcome::Applied {
                used: from_db(used),
                limit: *limit,
                replayed: false,
            })));
            continue;
        }
        if request.credits.is_some() {
            // Credits take the shared transactional consume, whose refusal
            // or replay must be undone alone.
            sqlx::query("SAVEPOINT credits").execute(&mut *tx).await?;
            let result = consume_in(&mut tx, request, *limit, now).await;
            if !matches!(result, Ok((_, true))) {
                sqlx::query("ROLLBACK TO SAVEPOINT credits")
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("RELEASE SAVEPOINT credits")
                .execute(&mut *tx)
                .await?;
            out.push(result.map(|(outcome, _)| GuardedOutcome::Decided(outcome)));
            continue;
        }
        let answer = consume_lean(&mut tx, request, *limit, now).await?;
        out.push(answer.map(GuardedOutcome::Decided));
    }
    tx.commit().await?;
    Ok(out)
}

/// The first step of [`consume_batch`]: the consumes that can go together
/// (at their customer's live version, no credits or overage, each the first
/// of the batch on its counter and under its key) take their keys in one
/// statement and set their counters in another. Returns the counter after
/// each one applied, by batch position; the others (refused, replayed)
/// wrote nothing and are decided alone, in batch order, like the rest.
async fn take_together(
    conn: &mut SqliteConnection,
    batch: &[(&UsageRequest, u64, Option<i64>)],
    live: &HashMap<String, i64>,
    now: i64,
) -> StoreResult<HashMap<usize, i64>> {
    let mut together = Vec::new();
    let mut position = HashMap::new();
    for (i, amount) in first_plain_consumes(batch.iter().map(|(request, ..)| *request)) {
        let (request, limit, version) = batch[i];
        let fresh = version.is_some_and(|v| live.get(request.customer_id.as_str()) == Some(&v));
        if !fresh {
            continue;
        }
        together.push(serde_json::json!([
            request.customer_id.as_str(),
            request.idempotency_key.as_str(),
            request.key.feature.as_str(),
            period_column(&request.key),
            amount,
            // A limit beyond BIGINT cannot be reached anyway.
            i64::try_from(limit).unwrap_or(i64::MAX),
        ]));
        position.insert(
            (
                request.customer_id.as_str(),
                request.idempotency_key.as_str(),
            ),
            i,
        );
    }
    let mut applied = HashMap::new();
    if together.len() < 2 {
        return Ok(applied);
    }
    let taken: Vec<(String, String, i64)> = match sqlx::query_as(TAKE_KEYS)
        .bind(serde_json::Value::Array(together).to_string())
        .bind(now)
        .fetch_all(&mut *conn)
        .await
    {
        Ok(taken) => taken,
        // SQLite undoes a failed statement alone: each consume is then
        // decided alone, and reports its own error.
        Err(_) => return Ok(applied),
    };
    let mut set = Vec::with_capacity(taken.len());
    for (customer, key, used) in taken {
        let i = *position
            .get(&(customer.as_str(), key.as_str()))
            .ok_or_else(|| StoreError::Other(format!("a key {customer}/{key} not asked")))?;
        let request = batch[i].0;
        set.push(serde_json::json!([
            customer,
            request.key.feature.as_str(),
            period_column(&request.key),
            used
        ]));
        applied.insert(i, used);
    }
    if !set.is_empty() {
        sqlx::query(SET_COUNTERS)
            .bind(serde_json::Value::Array(set).to_string())
            .execute(&mut *conn)
            .await?;
    }
    Ok(applied)
}

/// One consume of [`consume_batch`]. The outer error is one that may leave
/// half of it written (the whole batch must fail); the inner one left
/// nothing.
async fn consume_lean(
    conn: &mut SqliteConnection,
    request: &UsageRequest,
    limit: u64,
    now: i64,
) -> StoreResult<StoreResult<UsageOutcome>> {
    let amount = match check_amount(request) {
        Ok(amount) => amount,
        Err(e) => return Ok(Err(e)),
    };
    // A limit beyond BIGINT cannot be reached anyway.
    let limit_db = i64::try_from(limit).unwrap_or(i64::MAX);
    let period = period_column(&request.key);
    let taken: Option<i64> = match sqlx::query_scalar(TAKE_KEY)
        .bind(request.customer_id.as_str())
        .bind(request.idempotency_key.as_str())
        .bind(request.key.feature.as_str())
        .bind(period)
        .bind(amount)
        .bind(limit_db)
        .bind(now)
        .fetch_optional(&mut *conn)
        .await
    {
        Ok(taken) => taken,
        // SQLite undoes a failed statement alone.
        Err(e) => return Ok(Err(e.into())),
    };
    if let Some(used) = taken {
        sqlx::query(SET_COUNTER)
            .bind(request.customer_id.as_str())
            .bind(request.key.feature.as_str())
            .bind(period)
            .bind(used)
            .execute(&mut *conn)
            .await?;
        // The meter event of the overage, in the consume's transaction.
        if let Some(row) = request.meter_row(used, now)? {
            insert_outbox(&mut *conn, Some(&request.customer_id), &[row], now).await?;
        }
        return Ok(Ok(UsageOutcome::Applied {
            used: from_db(used),
            limit,
            replayed: false,
        }));
    }
    let (current, direction, feature, amount, used, quota): NotTaken =
        match sqlx::query_as(NOT_TAKEN)
            .bind(request.customer_id.as_str())
            .bind(request.idempotency_key.as_str())
            .bind(request.key.feature.as_str())
            .bind(period)
            .fetch_one(&mut *conn)
            .await
        {
            Ok(row) => row,
            Err(e) => return Ok(Err(e.into())),
        };
    let prior: Option<StoredRequest> = match (direction, feature, amount, used, quota) {
        (Some(d), Some(f), Some(a), Some(u), Some(q)) => Some((d, f, a, u, q)),
        _ => None,
    };
    Ok(match prior {
        Some(prior) => replay(prior, Direction::Consume, request),
        None => Ok(UsageOutcome::LimitExceeded {
            used: from_db(current.unwrap_or(0)),
            limit,
        }),
    })
}

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
        consume_batch(self, &batch, now).await
    }

    async fn usage_snapshot(
        &self,
        customer: &CustomerId,
        known_version: Option<i64>,
    ) -> StoreResult<Option<UsageSnapshot>> {
        let rows: Vec<SnapshotRow> = sqlx::query_as(SNAPSHOT_SQLITE)
            .bind(customer.as_str())
            .bind(known_version)
            .fetch_all(self.reader())
            .await?;
        snapshot_of(customer.as_str(), rows)
    }

    fn write_mark(&self) -> Option<crate::WriteMark> {
        self.writes.mark()
    }

    fn still_current(&self, mark: crate::WriteMark, snapshot: &UsageSnapshot) -> bool {
        self.writes.unchanged_since(mark, snapshot.change_key)
    }
}
