//! Consumes guarded by the customer's version, for the usage endpoint's hot
//! path. The endpoint decides the counter and the limit from a customer
//! state it may have read earlier (`billd_core::consume_target`); the store
//! applies the consume only if that state is still the customer's current
//! one, checked in the same transaction as the conditional update. So the
//! endpoint needs no read before a consume, and a plan change, a dispute or
//! a deletion committed since the state was read is never missed: the
//! answer is [`GuardedOutcome::Stale`], nothing is written, and the caller
//! reads the customer again.

use async_trait::async_trait;

use crate::{StoreResult, UsageOutcome, UsageRequest};

/// One consume decided on the customer state read at `customer_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedConsume {
    /// The consume (`BillingStore::consume`'s request).
    pub request: UsageRequest,
    /// The limit of the conditional update (0 admits nothing new but still
    /// answers a repeated idempotency key).
    pub limit: u64,
    /// `CustomerRecord::version` of the state the limit was computed from.
    pub customer_version: i64,
}

/// What a guarded consume found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardedOutcome {
    /// The customer is still at that version and not deleted: the answer
    /// `BillingStore::consume` gives (a repeated key's stored answer, an
    /// applied consume, or a refusal).
    Decided(UsageOutcome),
    /// The customer's version moved, or it was deleted, or it does not
    /// exist: nothing was written or answered; read it again and decide again.
    Stale,
}

/// Version-guarded consumes. Implemented by both stores; the contract tests
/// are in `tests/billing/usage.rs`.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// One guarded consume, committed before it returns (the version check,
    /// the idempotency key and the conditional update are atomic).
    async fn consume_guarded(
        &self,
        consume: &GuardedConsume,
        now: i64,
    ) -> StoreResult<GuardedOutcome>;

    /// Several guarded consumes committed together (group commit): each
    /// answer is what [`UsageStore::consume_guarded`] would give for that
    /// consume alone, in order; one that fails fails alone. An error for
    /// the whole batch means nothing was committed.
    async fn consume_guarded_batch(
        &self,
        batch: &[GuardedConsume],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>>;
}
