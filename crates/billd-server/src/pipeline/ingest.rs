//! Group commit for the webhook path: request handlers hand verified events
//! to one writer task, which drains everything queued (up to a cap) and
//! writes it in one transaction. What it writes is lean: the event id and
//! the raw body ([`Store::receive_events`]); the inbox worker derives the
//! rest later, in its own batched transactions. One fsync then acknowledges many
//! deliveries, so throughput is not capped at one commit per event; each
//! handler still answers only after its own event is durably committed.
//! On PostgreSQL a few group commits run at once (the server flushes them
//! together); SQLite has one writer, which starts the next commit as soon as
//! the previous one ends, with whatever queued meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use billd_store::{Backend, InsertOutcome, ReceivedEvent, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::telemetry::Metrics;

/// Why an event could not be committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The database cannot be reached; the sender should retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Any other store failure.
    #[error("store error: {0}")]
    Other(String),
    /// The writer task is gone (shutting down).
    #[error("the inbox writer has stopped")]
    WriterStopped,
}

type Job = (
    ReceivedEvent,
    oneshot::Sender<Result<InsertOutcome, IngestError>>,
);

/// Handle to the group-commit writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
    waiting: IngestLoad,
}

/// How many deliveries are waiting for their acknowledgement (queued for
/// the writer or in its commit): the inbox worker reads it to keep its
/// rounds short while webhooks wait, on SQLite for the one writer they
/// share. Cheap to clone; all clones count the same deliveries.
#[derive(Debug, Clone, Default)]
pub struct IngestLoad(Arc<AtomicUsize>);

impl IngestLoad {
    /// Deliveries submitted and not answered yet.
    pub fn waiting(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts one delivery as waiting for its acknowledgement until the
    /// returned guard is dropped (answered, or the request went away).
    pub fn delivery(&self) -> WaitingDelivery<'_> {
        self.0.fetch_add(1, Ordering::Relaxed);
        WaitingDelivery(&self.0)
    }
}

/// One delivery counted by an [`IngestLoad`] while it lives.
#[derive(Debug)]
pub struct WaitingDelivery<'a>(&'a AtomicUsize);

impl Drop for WaitingDelivery<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Tuning for the writer.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Most events written in one transaction.
    pub max_batch: usize,
    /// Events that may wait for the writer before senders are slowed down.
    pub queue: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 1024,
            queue: 16 * 1024,
        }
    }
}

impl Ingestor {
    /// Starts the writer task. It stops once every `Ingestor` clone is
    /// dropped and the queue is drained, so in-flight requests always get
    /// their answer during a graceful shutdown. `committed` is notified
    /// after each commit that inserted rows, to wake the inbox worker.
    pub fn spawn(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        committed: Arc<Notify>,
        config: IngestConfig,
    ) -> (Ingestor, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let in_flight = commits_in_flight(store.backend());
        let handle = tokio::spawn(writer(
            Batcher {
                store,
                metrics,
                committed,
            },
            rx,
            WriterLimits {
                max_batch: config.max_batch.max(1),
                in_flight,
            },
        ));
        (
            Ingestor {
                tx,
                waiting: IngestLoad::default(),
            },
            handle,
        )
    }

    /// The count of deliveries waiting for their acknowledgement.
    pub fn load(&self) -> IngestLoad {
        self.waiting.clone()
    }

    /// Queues `event` and waits until it is committed (or found to be a
    /// duplicate of a committed row).
    pub async fn submit(&self, event: ReceivedEvent) -> Result<InsertOutcome, IngestError> {
        let _waiting = self.waiting.delivery();
        let (done, wait) = oneshot::channel();
        self.tx
            .send((event, done))
            .await
            .map_err(|_| IngestError::WriterStopped)?;
        wait.await.map_err(|_| IngestError::WriterStopped)?
    }

    /// Whether the writer task is still running.
    pub fn is_running(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Concurrent group commits on PostgreSQL.
const POSTGRES_COMMITS_IN_FLIGHT: usize = 4;

/// How many group commits the writer runs at once on `backend`.
pub fn commits_in_flight(backend: Backend) -> usize {
    match backend {
        // One connection writes; a second batch would only queue for it.
        Backend::Sqlite => 1,
        // PostgreSQL flushes concurrent commits together: while one batch
        // waits for its fsync, the next is already on its way.
        Backend::Postgres => POSTGRES_COMMITS_IN_FLIGHT,
    }
}

struct WriterLimits {
    max_batch: usize,
    in_flight: usize,
}

/// What one group commit needs; shared by the commits in flight.
struct Batcher {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    committed: Arc<Notify>,
}

async fn writer(batcher: Batcher, mut rx: mpsc::Receiver<Job>, limits: WriterLimits) {
    let batcher = Arc::new(batcher);
    let slots = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        // Waiting for a free commit slot before taking events lets them
        // queue meanwhile: that queue is the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut jobs: Vec<Job> = Vec::with_capacity(limits.max_batch.min(1024));
        if rx.recv_many(&mut jobs, limits.max_batch).await == 0 {
            break;
        }
        if limits.in_flight == 1 {
            // Waiting here for the deliveries the last commit acknowledged
            // to come back (to commit more at once) was measured: it only
            // added that wait to every acknowledgement, at no gain in
            // events/s, as the next commit already overlaps their return.
            batcher.commit(jobs).await;
            drop(slot);
        } else {
            let batcher = batcher.clone();
            tokio::spawn(async move {
                batcher.commit(jobs).await;
                drop(slot);
            });
        }
    }
    // Every commit in flight answers its senders before the writer stops.
    if let Ok(all) = u32::try_from(limits.in_flight) {
        let _ = slots.acquire_many(all).await;
    }
}

impl Batcher {
    /// Writes one batch and answers every sender.
    async fn commit(&self, jobs: Vec<Job>) {
        let (store, metrics, committed) = (&self.store, &self.metrics, &self.committed);
        // A sender that gave up (client disconnected) still gets its event
        // written: Stripe will redeliver and find a duplicate, which is fine.
        let (events, waiters): (Vec<ReceivedEvent>, Vec<_>) = jobs.into_iter().unzip();
        metrics.ingest_batches.inc();
        metrics.ingest_batched_events.inc_by(events.len() as u64);
        match store.receive_events(&events).await {
            Ok(outcomes) if outcomes.len() == waiters.len() => {
                let any_new = outcomes.contains(&InsertOutcome::Inserted);
                for (done, outcome) in waiters.into_iter().zip(outcomes) {
                    let _ = done.send(Ok(outcome));
                }
                if any_new {
                    committed.notify_one();
                }
            }
            Ok(outcomes) => {
                tracing::error!(
                    sent = waiters.len(),
                    returned = outcomes.len(),
                    "store returned the wrong number of insert outcomes"
                );
                let err = IngestError::Other("store returned a wrong outcome count".into());
                for done in waiters {
                    let _ = done.send(Err(err.clone()));
                }
            }
            Err(e) => {
                crate::pipeline::count_store_error(metrics, &e);
                tracing::warn!(error = %e, batch = waiters.len(), "inbox insert failed");
                let err = match e {
                    StoreError::Unavailable(m) => IngestError::Unavailable(m),
                    other => IngestError::Other(other.to_string()),
                };
                for done in waiters {
                    let _ = done.send(Err(err.clone()));
                }
            }
        }
    }
}
