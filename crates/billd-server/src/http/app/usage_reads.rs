//! Read batching for `GET …/entitlements` on PostgreSQL: the reads that
//! arrive together are sent as ONE statement for all their customers
//! (`UsageStore::usage_snapshots`), instead of one statement per read on a
//! pool that consumes share.
//!
//! Exactness is kept by when a read may join a statement: a read is queued
//! when it arrives, and a statement takes only reads already queued when it
//! is sent. So every read's statement starts after the read arrived, and its
//! snapshot holds every write committed before that, in this process or
//! another one: a read that follows a consume's `200` (at any instance)
//! sees it, exactly as with one statement per read.
//!
//! Up to [`IN_FLIGHT`] statements run at once; reads arriving while they all
//! run wait in the queue and go together in the next one. Under no load a
//! statement is one read and nothing waits.

use std::sync::Arc;

use billd_core::CustomerId;
use billd_store::{StoreError, StoreResult, UsageSnapshot, UsageStore};
use tokio::sync::{mpsc, oneshot};

use crate::http::app::usage_batch::{answer_each, in_batches};

/// Most reads in one statement.
pub const MAX_BATCH: usize = 256;

/// Statements under way at once: enough to keep reads flowing while one
/// statement is on the wire, few enough to leave the pool's other
/// connections to consumes and webhooks.
pub const IN_FLIGHT: usize = 2;

/// A read's answer.
type Reply = oneshot::Sender<StoreResult<Option<UsageSnapshot>>>;

struct Read {
    customer: CustomerId,
    known_version: Option<i64>,
    reply: Reply,
}

/// A handle to the read sender; cheap to clone. It stops when the last
/// handle is dropped.
#[derive(Clone)]
pub struct ReadBatcher {
    reads: mpsc::Sender<Read>,
}

impl std::fmt::Debug for ReadBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadBatcher").finish_non_exhaustive()
    }
}

impl ReadBatcher {
    /// Spawns the sender on the current tokio runtime.
    pub fn start<S: UsageStore + ?Sized>(
        store: Arc<S>,
        max_batch: usize,
        in_flight: usize,
    ) -> Self {
        let max_batch = max_batch.max(1);
        let (reads, rx) = mpsc::channel(max_batch * 4);
        tokio::spawn(send_batches(store, rx, max_batch, in_flight.max(1)));
        ReadBatcher { reads }
    }

    /// [`UsageStore::usage_snapshot`], in one statement with the reads
    /// queued with it.
    pub async fn read(
        &self,
        customer: &CustomerId,
        known_version: Option<i64>,
    ) -> StoreResult<Option<UsageSnapshot>> {
        let stopped = || StoreError::Unavailable("the entitlement reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.reads
            .send(Read {
                customer: customer.clone(),
                known_version,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn send_batches<S: UsageStore + ?Sized>(
    store: Arc<S>,
    rx: mpsc::Receiver<Read>,
    max_batch: usize,
    in_flight: usize,
) {
    in_batches(rx, max_batch, in_flight, move |batch: Vec<Read>| {
        let store = store.clone();
        async move {
            let asked: Vec<(CustomerId, Option<i64>)> = batch
                .iter()
                .map(|r| (r.customer.clone(), r.known_version))
                .collect();
            let answers = store
                .usage_snapshots(&asked)
                .await
                .map(|snapshots| snapshots.into_iter().map(Ok).collect());
            let replies = batch.into_iter().map(|r| r.reply).collect();
            answer_each(replies, answers, "usage_snapshots");
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use async_trait::async_trait;
    use billd_core::{FeatureName, Usage, UsageKey};
    use billd_store::{
        BillingStore, CustomerProfile, GuardedConsume, GuardedOutcome, SqliteStore, Store,
        UsageOutcome, UsageRequest,
    };
    use tokio::sync::Semaphore;

    /// A store whose batched reads read the database at once, report their
    /// size, and then hold their answer until the test lets one through:
    /// what a statement on the wire looks like from the batcher.
    struct HeldReads {
        inner: SqliteStore,
        sent: mpsc::UnboundedSender<usize>,
        gate: Arc<Semaphore>,
    }

    #[async_trait]
    impl UsageStore for HeldReads {
        async fn consume_guarded(
            &self,
            consume: &GuardedConsume,
            now: i64,
        ) -> StoreResult<GuardedOutcome> {
            self.inner.consume_guarded(consume, now).await
        }

        async fn consume_guarded_batch(
            &self,
            batch: &[GuardedConsume],
            now: i64,
        ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
            self.inner.consume_guarded_batch(batch, now).await
        }

        async fn usage_snapshot(
            &self,
            customer: &CustomerId,
            known_version: Option<i64>,
        ) -> StoreResult<Option<UsageSnapshot>> {
            self.inner.usage_snapshot(customer, known_version).await
        }

        async fn usage_snapshots(
            &self,
            reads: &[(CustomerId, Option<i64>)],
        ) -> StoreResult<Vec<Option<UsageSnapshot>>> {
            let answers = self.inner.usage_snapshots(reads).await;
            self.sent.send(reads.len()).unwrap();
            self.gate.acquire().await.unwrap().forget();
            answers
        }
    }

    fn websites() -> UsageKey {
        UsageKey {
            feature: FeatureName::parse("websites").unwrap(),
            period_start: None,
        }
    }

    fn used(snapshot: StoreResult<Option<UsageSnapshot>>) -> u64 {
        let key = websites();
        let usage: Usage = snapshot.unwrap().unwrap().usage(std::slice::from_ref(&key));
        usage.used(&key)
    }

    /// A store with `customers` customers, `user{i}` having used i websites.
    async fn held_reads(
        dir: &tempfile::TempDir,
        customers: u64,
    ) -> (Arc<HeldReads>, mpsc::UnboundedReceiver<usize>) {
        let url = format!("sqlite://{}", dir.path().join("r.db").display());
        let inner = SqliteStore::connect(&url).await.unwrap();
        inner.migrate().await.unwrap();
        for i in 0..customers {
            let customer = CustomerId::parse(&format!("user{i}")).unwrap();
            inner
                .upsert_customer(
                    &CustomerProfile {
                        customer_id: customer.clone(),
                        email: None,
                        name: None,
                        preferred_currency: None,
                    },
                    0,
                )
                .await
                .unwrap();
            if i > 0 {
                consume(&inner, &customer, i, "setup").await;
            }
        }
        let (sent, reads) = mpsc::unbounded_channel();
        let store = HeldReads {
            inner,
            sent,
            gate: Arc::new(Semaphore::new(0)),
        };
        (Arc::new(store), reads)
    }

    async fn consume(store: &SqliteStore, customer: &CustomerId, amount: u64, key: &str) {
        let request = UsageRequest {
            customer_id: customer.clone(),
            key: websites(),
            amount,
            idempotency_key: key.to_owned(),
            overage: None,
            credits: None,
        };
        let outcome = store.consume(&request, 1_000, 0).await.unwrap();
        assert!(
            matches!(outcome, UsageOutcome::Applied { .. }),
            "{outcome:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_after_a_commit_never_joins_a_statement_sent_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sent) = held_reads(&dir, 1).await;
        let batcher = ReadBatcher::start(store.clone(), MAX_BATCH, IN_FLIGHT);
        let customer = CustomerId::parse("user0").unwrap();

        let before = tokio::spawn({
            let (batcher, customer) = (batcher.clone(), customer.clone());
            async move { batcher.read(&customer, None).await }
        });
        // That read's statement has read the database and is on its way back.
        assert_eq!(sent.recv().await, Some(1));
        // A consume answered now (`200`) …
        consume(&store.inner, &customer, 1, "after").await;
        // … so a read arriving after it must see it, even though a read of
        // the same customer is still under way.
        let after = tokio::spawn({
            let (batcher, customer) = (batcher.clone(), customer.clone());
            async move { batcher.read(&customer, None).await }
        });
        store.gate.add_permits(2);

        assert_eq!(used(before.await.unwrap()), 0);
        assert_eq!(used(after.await.unwrap()), 1, "the read after the 200");
        assert_eq!(sent.recv().await, Some(1), "its own statement");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_queued_together_share_one_statement_and_each_get_their_customers_answer() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut sent) = held_reads(&dir, 64).await;
        // One statement at a time, so the reads queue behind the first.
        let batcher = ReadBatcher::start(store.clone(), MAX_BATCH, 1);
        let first = tokio::spawn({
            let batcher = batcher.clone();
            async move {
                batcher
                    .read(&CustomerId::parse("user0").unwrap(), None)
                    .await
            }
        });
        assert_eq!(sent.recv().await, Some(1));

        // Each of these is queued at its first poll, before the gate opens;
        // the customers in reverse and one of them twice.
        let customers: Vec<CustomerId> = (1..64)
            .rev()
            .chain([5])
            .map(|i| CustomerId::parse(&format!("user{i}")).unwrap())
            .collect();
        let (answers, ()) = futures::future::join(
            futures::future::join_all(customers.iter().map(|c| batcher.read(c, None))),
            async { store.gate.add_permits(2) },
        )
        .await;

        assert_eq!(used(first.await.unwrap()), 0);
        assert_eq!(
            sent.recv().await,
            Some(64),
            "one statement for the 64 queued reads"
        );
        for (customer, answer) in customers.iter().zip(answers) {
            let expected: u64 = customer.as_str()["user".len()..].parse().unwrap();
            assert_eq!(used(answer), expected, "{customer}");
        }
    }
}
