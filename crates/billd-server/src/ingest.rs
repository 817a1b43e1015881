//! Group commit for the webhook path: request handlers hand verified events
//! to one writer task, which drains everything queued (up to a cap) and
//! writes it in one transaction. One fsync then acknowledges many
//! deliveries, so throughput is not capped at one commit per event; each
//! handler still answers only after its own event is durably committed.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use billd_store::{InsertOutcome, NewEvent, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

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
    NewEvent,
    oneshot::Sender<Result<InsertOutcome, IngestError>>,
);

/// Handle to the group-commit writer; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ingestor {
    tx: mpsc::Sender<Job>,
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
        let handle = tokio::spawn(writer(
            store,
            metrics,
            committed,
            rx,
            config.max_batch.max(1),
        ));
        (Ingestor { tx }, handle)
    }

    /// Queues `event` and waits until it is committed (or found to be a
    /// duplicate of a committed row).
    pub async fn submit(&self, event: NewEvent) -> Result<InsertOutcome, IngestError> {
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

async fn writer(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    committed: Arc<Notify>,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        // A sender that gave up (client disconnected) still gets its event
        // written: Stripe will redeliver and find a duplicate, which is fine.
        let (events, waiters): (Vec<NewEvent>, Vec<_>) = jobs.drain(..).unzip();
        metrics.ingest_batches.fetch_add(1, Ordering::Relaxed);
        metrics
            .ingest_batched_events
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        match store.insert_events(&events).await {
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
                metrics.store_error(&e);
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
