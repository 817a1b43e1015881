//! Group commit for the usage endpoint: concurrent consumes are handed to
//! one writer task, which commits whatever has queued up while the previous
//! commit was under way as one `consume_guarded_batch` and then answers
//! each caller. Under no load a batch is one request and nothing waits;
//! under load the commit's cost is shared. Every answer is sent only after
//! its batch committed, so a 200 is still durable.
//!
//! On SQLite, which has a single writer anyway, one batch at a time (one
//! transaction, one fsync). On PostgreSQL [`PG_IN_FLIGHT`] batches at once,
//! since each statement is a network round trip: there a batch applies the
//! consumes of distinct counters in one transaction of two statements, and
//! so one announcement of the changed customers (`NOTIFY`, whose commits
//! PostgreSQL serialises database-wide) serves them all.

use std::sync::Arc;

use billd_store::{GuardedConsume, GuardedOutcome, StoreError, StoreResult, UsageStore};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::pipeline::Clock;

/// Most consumes in one commit.
pub const MAX_BATCH: usize = 512;

/// Batches under way at once on PostgreSQL: one on the wire while the next
/// one gathers.
pub const PG_IN_FLIGHT: usize = 2;

struct Job {
    consume: GuardedConsume,
    reply: oneshot::Sender<StoreResult<GuardedOutcome>>,
}

/// A handle to the consume writer; cheap to clone. The writer stops when
/// the last handle is dropped.
#[derive(Clone)]
pub struct ConsumeBatcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for ConsumeBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumeBatcher").finish_non_exhaustive()
    }
}

impl ConsumeBatcher {
    /// Spawns the writer on the current tokio runtime.
    pub fn start<S: UsageStore + ?Sized>(
        store: Arc<S>,
        clock: Arc<dyn Clock>,
        max_batch: usize,
        in_flight: usize,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (jobs, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(write_batches(store, clock, rx, max_batch, in_flight.max(1)));
        ConsumeBatcher { jobs }
    }

    /// [`UsageStore::consume_guarded`], committed in a group with whatever
    /// else is waiting.
    pub async fn consume(&self, consume: GuardedConsume) -> StoreResult<GuardedOutcome> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { consume, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the usage writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the usage writer has stopped".into()))?
    }
}

async fn write_batches<S: UsageStore + ?Sized>(
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    rx: mpsc::Receiver<Job>,
    max_batch: usize,
    in_flight: usize,
) {
    in_batches(rx, max_batch, in_flight, move |jobs: Vec<Job>| {
        let (store, now) = (store.clone(), clock.now());
        async move {
            let batch: Vec<GuardedConsume> = jobs.iter().map(|j| j.consume.clone()).collect();
            let answers = store.consume_guarded_batch(&batch, now).await;
            let replies = jobs.into_iter().map(|j| j.reply).collect();
            answer_each(replies, answers, "consume_guarded_batch");
        }
    })
    .await;
}

/// Hands what queues on `rx` to `handle` in batches of at most
/// `max_batch`, up to `in_flight` batches under way at once, until every
/// sender is gone. A batch takes what queued by the time a slot was free,
/// so what queues while every slot is busy goes together in the next one.
/// With one slot each batch is handled in this task, without a hand-over
/// to another.
pub(super) async fn in_batches<J, F, H>(
    mut rx: mpsc::Receiver<J>,
    max_batch: usize,
    in_flight: usize,
    handle: H,
) where
    J: Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
    H: Fn(Vec<J>) -> F,
{
    let slots = Arc::new(Semaphore::new(in_flight.max(1)));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max_batch);
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let handled = handle(batch);
        let handled = async move {
            handled.await;
            drop(slot);
        };
        if in_flight <= 1 {
            handled.await;
        } else {
            tokio::spawn(handled);
        }
    }
}

/// Sends each caller its answer, or the batch's error to every caller;
/// `what` names the call in the error when the answers do not match the
/// callers one to one.
pub(super) fn answer_each<T>(
    replies: Vec<oneshot::Sender<StoreResult<T>>>,
    answers: StoreResult<Vec<StoreResult<T>>>,
    what: &str,
) {
    match answers {
        Ok(answers) if answers.len() == replies.len() => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                // A caller that went away (client disconnected) needs no answer.
                let _ = reply.send(answer);
            }
        }
        Ok(answers) => {
            let message = format!(
                "{what} gave {} answers for {} requests",
                answers.len(),
                replies.len()
            );
            for reply in replies {
                let _ = reply.send(Err(StoreError::Other(message.clone())));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(copy(&e)));
            }
        }
    }
}

/// The same classification for every caller of a failed batch.
pub(super) fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict { constraint } => StoreError::Conflict {
            constraint: constraint.clone(),
        },
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::Other(m) => StoreError::Other(m.clone()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use billd_core::{CustomerId, FeatureName, UsageKey};
    use billd_store::{
        BillingStore, CustomerProfile, SqliteStore, Store, UsageOutcome, UsageRequest,
    };

    fn request(customer: &str, key: &str) -> UsageRequest {
        UsageRequest {
            customer_id: CustomerId::parse(customer).unwrap(),
            key: UsageKey {
                feature: FeatureName::parse("websites").unwrap(),
                period_start: None,
            },
            amount: 1,
            idempotency_key: key.to_string(),
            overage: None,
            credits: None,
        }
    }

    fn at_version_zero(customer: &str, key: &str) -> GuardedConsume {
        GuardedConsume {
            request: request(customer, key),
            limit: 25,
            customer_version: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_consumes_through_the_batcher_never_exceed_the_limit_and_are_committed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let store = Arc::new(SqliteStore::connect(&url).await.unwrap());
        store.migrate().await.unwrap();
        store
            .upsert_customer(
                &CustomerProfile {
                    customer_id: CustomerId::parse("u1").unwrap(),
                    email: None,
                    name: None,
                    preferred_currency: None,
                },
                0,
            )
            .await
            .unwrap();
        let batcher = ConsumeBatcher::start(
            store.clone(),
            Arc::new(crate::pipeline::SystemClock),
            MAX_BATCH,
            1,
        );

        let answers = futures::future::join_all((0..64).map(|i| {
            let batcher = batcher.clone();
            async move {
                batcher
                    .consume(at_version_zero("u1", &format!("k{i}")))
                    .await
            }
        }))
        .await;

        let applied = answers
            .iter()
            .filter(|a| matches!(a, Ok(GuardedOutcome::Decided(UsageOutcome::Applied { .. }))))
            .count();
        let refused = answers
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Ok(GuardedOutcome::Decided(UsageOutcome::LimitExceeded { .. }))
                )
            })
            .count();
        assert_eq!((applied, refused), (25, 39), "{answers:?}");
        let after = store.consume(&request("u1", "later"), 25, 0).await.unwrap();
        assert_eq!(
            after,
            UsageOutcome::LimitExceeded {
                used: 25,
                limit: 25
            }
        );
    }
}
