//! Stored answers of app API requests sent with an `Idempotency-Key`
//! header, Stripe's way: the first request with a key runs and its answer
//! is kept; the same key with the same request answers it again; the same
//! key with another request, or while the first still runs, is refused.
//!
//! A request first *takes* its key: one `INSERT … ON CONFLICT DO NOTHING`
//! decides between concurrent requests and processes, so exactly one runs.
//! The taker holds the row under a lease (`locked_until`) and a token of
//! its own; it stores the answer, or gives the key back, only while the
//! token is still its. A process that died mid-request leaves a lease that
//! ends: the same request may then take the key over and run again (the
//! server's Stripe calls are idempotent by keys derived from the request
//! and the state it saw, so a second run does not charge twice).

use async_trait::async_trait;
use billd_core::{CustomerId, IdempotencyKey};

use crate::dialect::Dialect;
use crate::{PgStore, SqliteStore, StoreError, StoreResult};

/// Whose key: keys are scoped per customer and per API key class, so one
/// customer's (or one class of caller's) keys never answer another's
/// requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyScope {
    /// The customer the request is about.
    pub customer_id: CustomerId,
    /// The class of API key that sent it (`app`, `admin`).
    pub key_class: String,
    /// The client's key.
    pub key: IdempotencyKey,
}

/// A request about to run under a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentRequest {
    /// Whose key.
    pub scope: IdempotencyScope,
    /// A digest of the request (method, path, body): the same key with
    /// another fingerprint is another request.
    pub fingerprint: String,
    /// Identifies this run; only it may store the answer or give the key
    /// back.
    pub token: String,
    /// The lease: until then no other run may take over the key.
    pub locked_until: i64,
    /// When the key is forgotten (a request after that runs again).
    pub expires_at: i64,
}

/// A stored answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAnswer {
    /// The HTTP status (below 500: server errors are never stored).
    pub status: u16,
    /// The body as sent.
    pub body: String,
}

/// What [`IdempotencyStore::take_idempotency_key`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyTaken {
    /// The key is this run's: run the request, then store its answer or
    /// give the key back. `first_seen` is when the key was first taken
    /// (earlier than now when this run took over from one that died).
    Run {
        /// When a run first took this key (unix seconds).
        first_seen: i64,
    },
    /// The same request was answered before: answer this again.
    Replay(StoredAnswer),
    /// The key was used for a different request.
    Reused,
    /// The same request runs right now (its lease has not ended).
    InUse,
}

/// The idempotency table. Implemented by both stores.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Takes the key for `request` at `now`: a new key (or one whose row
    /// expired) is taken; a key whose answer is stored replays it (or is
    /// `Reused` for another fingerprint); a key under a live lease is
    /// `InUse` (or `Reused`); a key whose lease ended without an answer is
    /// taken over by the same request. Atomic across processes.
    async fn take_idempotency_key(
        &self,
        request: &IdempotentRequest,
        now: i64,
    ) -> StoreResult<KeyTaken>;

    /// Stores the answer of the run holding `token`; false (nothing
    /// written) when the key is no longer that run's. Statuses of 500 and
    /// above are refused: give the key back instead.
    async fn store_idempotent_answer(
        &self,
        scope: &IdempotencyScope,
        token: &str,
        answer: &StoredAnswer,
    ) -> StoreResult<bool>;

    /// Gives the key back (deletes its unanswered row) if `token` still
    /// holds it, so that a retry runs again; false otherwise.
    async fn release_idempotency_key(
        &self,
        scope: &IdempotencyScope,
        token: &str,
    ) -> StoreResult<bool>;

    /// Deletes rows that expired at `now`; returns how many.
    async fn delete_expired_idempotency_keys(&self, now: i64) -> StoreResult<u64>;
}

/// How often a take is tried again when the row it found went away in
/// between (its run gave the key back, or it expired).
const TAKE_ATTEMPTS: usize = 3;

/// What a take finds when the key is someone else's.
#[derive(sqlx::FromRow)]
struct KeyRow {
    fingerprint: String,
    status: Option<i64>,
    body: Option<String>,
}

fn decide(row: KeyRow, request: &IdempotentRequest) -> StoreResult<KeyTaken> {
    if row.fingerprint != request.fingerprint {
        return Ok(KeyTaken::Reused);
    }
    match (row.status, row.body) {
        (Some(status), Some(body)) => {
            let status = u16::try_from(status).map_err(|_| {
                StoreError::Other(format!("idempotency_keys.status {status} out of range"))
            })?;
            Ok(KeyTaken::Replay(StoredAnswer { status, body }))
        }
        // An unanswered row the take-over did not get: its lease is live
        // (or another request took it over in between).
        _ => Ok(KeyTaken::InUse),
    }
}

/// [`IdempotencyStore`] for a store with a [`Dialect`]. Every step is one
/// statement whose condition the database checks atomically, so neither
/// backend needs a transaction.
macro_rules! idempotency_store {
    ($store:ty) => {
        #[async_trait]
        impl IdempotencyStore for $store {
            async fn take_idempotency_key(
                &self,
                request: &IdempotentRequest,
                now: i64,
            ) -> StoreResult<KeyTaken> {
                let scope = &request.scope;
                for _ in 0..TAKE_ATTEMPTS {
                    // Expiry on read: an expired row is no answer, whether
                    // or not the sweep has deleted it yet.
                    sqlx::query(
                        "DELETE FROM idempotency_keys WHERE customer_id = $1 AND key_class = $2 \
                         AND idempotency_key = $3 AND expires_at <= $4",
                    )
                    .bind(scope.customer_id.as_str())
                    .bind(&scope.key_class)
                    .bind(scope.key.as_str())
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (customer_id, key_class, idempotency_key, \
                           fingerprint, token, locked_until, status, body, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL, $7, $8) \
                         ON CONFLICT (customer_id, key_class, idempotency_key) DO NOTHING",
                    )
                    .bind(scope.customer_id.as_str())
                    .bind(&scope.key_class)
                    .bind(scope.key.as_str())
                    .bind(&request.fingerprint)
                    .bind(&request.token)
                    .bind(request.locked_until)
                    .bind(now)
                    .bind(request.expires_at)
                    .execute(self.writer())
                    .await?;
                    if inserted.rows_affected() == 1 {
                        return Ok(KeyTaken::Run { first_seen: now });
                    }
                    // The same request whose run died without an answer:
                    // its lease ended, this run takes the key over.
                    let taken_over: Option<i64> = sqlx::query_scalar(
                        "UPDATE idempotency_keys SET token = $5, locked_until = $6 \
                         WHERE customer_id = $1 AND key_class = $2 AND idempotency_key = $3 \
                           AND fingerprint = $4 AND status IS NULL AND locked_until <= $7 \
                           AND expires_at > $7 \
                         RETURNING created_at",
                    )
                    .bind(scope.customer_id.as_str())
                    .bind(&scope.key_class)
                    .bind(scope.key.as_str())
                    .bind(&request.fingerprint)
                    .bind(&request.token)
                    .bind(request.locked_until)
                    .bind(now)
                    .fetch_optional(self.writer())
                    .await?;
                    if let Some(first_seen) = taken_over {
                        return Ok(KeyTaken::Run { first_seen });
                    }
                    let row: Option<KeyRow> = sqlx::query_as(
                        "SELECT fingerprint, status, body \
                         FROM idempotency_keys WHERE customer_id = $1 AND key_class = $2 \
                           AND idempotency_key = $3 AND expires_at > $4",
                    )
                    .bind(scope.customer_id.as_str())
                    .bind(&scope.key_class)
                    .bind(scope.key.as_str())
                    .bind(now)
                    .fetch_optional(self.writer())
                    .await?;
                    if let Some(row) = row {
                        return decide(row, request);
                    }
                    // Gone since the insert (given back after a 5xx, or
                    // expired): try to take it again.
                }
                Ok(KeyTaken::InUse)
            }

            async fn store_idempotent_answer(
                &self,
                scope: &IdempotencyScope,
                token: &str,
                answer: &StoredAnswer,
            ) -> StoreResult<bool> {
                if answer.status >= 500 {
                    return Err(StoreError::Other(format!(
                        "a {} answer is not stored under an idempotency key",
                        answer.status
                    )));
                }
                let done = sqlx::query(
                    "UPDATE idempotency_keys SET status = $5, body = $6, locked_until = NULL \
                     WHERE customer_id = $1 AND key_class = $2 AND idempotency_key = $3 \
                       AND token = $4 AND status IS NULL",
                )
                .bind(scope.customer_id.as_str())
                .bind(&scope.key_class)
                .bind(scope.key.as_str())
                .bind(token)
                .bind(i64::from(answer.status))
                .bind(&answer.body)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_idempotency_key(
                &self,
                scope: &IdempotencyScope,
                token: &str,
            ) -> StoreResult<bool> {
                let done = sqlx::query(
                    "DELETE FROM idempotency_keys WHERE customer_id = $1 AND key_class = $2 \
                     AND idempotency_key = $3 AND token = $4 AND status IS NULL",
                )
                .bind(scope.customer_id.as_str())
                .bind(&scope.key_class)
                .bind(scope.key.as_str())
                .bind(token)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_expired_idempotency_keys(&self, now: i64) -> StoreResult<u64> {
                let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= $1")
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

idempotency_store!(SqliteStore);
idempotency_store!(PgStore);
