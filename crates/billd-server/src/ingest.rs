//! Group commit for the webhook path: request handlers hand verified events
//! to one writer task, which drains everything queued (up to a cap) and
//! writes it in one transaction. One fsync then acknowledges many
//! deliveries, so throughput is not capped at one commit per event; each
//! handler still answers only after its own event is durably committed.
//! On PostgreSQL a few group commits run at once (the server flushes them
//! together); SQLite has one writer, so there the writer tops a batch up
//! under load instead (see [`top_up`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_store::{Backend, InsertOutcome, NewEvent, Store, StoreError};
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
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
    /// Longest the writer waits, after a commit, for the deliveries that
    /// commit acknowledged to come back before it starts the next one (see
    /// [`top_up`]). Only under load: an idle writer commits at once.
    pub max_top_up: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_batch: 1024,
            queue: 16 * 1024,
            max_top_up: Duration::from_millis(1),
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
        let in_flight = match store.backend() {
            // One connection writes; a second batch would only queue for it.
            Backend::Sqlite => 1,
            // PostgreSQL flushes concurrent commits together: while one
            // batch waits for its fsync, the next is already on its way.
            Backend::Postgres => POSTGRES_COMMITS_IN_FLIGHT,
        };
        let handle = tokio::spawn(writer(
            Batcher {
                store,
                metrics,
                committed,
            },
            rx,
            WriterLimits {
                max_batch: config.max_batch.max(1),
                max_top_up: config.max_top_up,
                in_flight,
            },
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

/// Concurrent group commits on PostgreSQL.
const POSTGRES_COMMITS_IN_FLIGHT: usize = 4;

struct WriterLimits {
    max_batch: usize,
    max_top_up: Duration,
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
    let mut last = Pace::default();
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
            top_up(&mut rx, &mut jobs, &last, &limits).await;
            let started = Instant::now();
            let size = jobs.len();
            batcher.commit(jobs).await;
            last = Pace {
                batch: size,
                commit: started.elapsed(),
            };
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

/// Size and duration of the previous group commit.
#[derive(Default)]
struct Pace {
    batch: usize,
    commit: Duration,
}

/// With one writer, the deliveries a commit acknowledged come back (their
/// senders' next events) a little after it; starting the next commit at once
/// would take only the first few of them and leave the rest for the commit
/// after, so batches shrink to half and each fsync carries half as many
/// events. When the previous batch was larger than what is queued now, wait
/// a fraction of the previous commit's duration (at most `max_top_up`) for
/// the queue to reach that size. An idle writer (previous batch of one)
/// never waits, so a lone delivery is committed at once.
async fn top_up(
    rx: &mut mpsc::Receiver<Job>,
    jobs: &mut Vec<Job>,
    last: &Pace,
    limits: &WriterLimits,
) {
    let target = last.batch.min(limits.max_batch);
    if last.batch <= 1 || jobs.len() >= target {
        return;
    }
    let deadline = Instant::now() + (last.commit / 2).min(limits.max_top_up);
    while jobs.len() < target {
        let room = limits.max_batch - jobs.len();
        match tokio::time::timeout_at(deadline.into(), rx.recv_many(jobs, room)).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

impl Batcher {
    /// Writes one batch and answers every sender.
    async fn commit(&self, jobs: Vec<Job>) {
        let (store, metrics, committed) = (&self.store, &self.metrics, &self.committed);
        // A sender that gave up (client disconnected) still gets its event
        // written: Stripe will redeliver and find a duplicate, which is fine.
        let (events, waiters): (Vec<NewEvent>, Vec<_>) = jobs.into_iter().unzip();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: usize) -> Job {
        let (done, _) = oneshot::channel();
        let event = NewEvent {
            id: format!("evt_{n}"),
            event_type: "invoice.paid".to_owned(),
            api_version: None,
            created: 0,
            object_id: None,
            stripe_customer: None,
            payload: "{}".to_owned(),
            received_at: 0,
        };
        (event, done)
    }

    fn limits() -> WriterLimits {
        WriterLimits {
            max_batch: 64,
            max_top_up: Duration::from_secs(5),
            in_flight: 1,
        }
    }

    #[tokio::test]
    async fn an_idle_writer_never_waits_to_top_up_a_lone_event() {
        let (_tx, mut rx) = mpsc::channel::<Job>(16);
        let mut jobs = vec![job(0)];
        let idle = Pace {
            batch: 1,
            commit: Duration::from_secs(10),
        };

        let started = Instant::now();
        top_up(&mut rx, &mut jobs, &idle, &limits()).await;

        assert_eq!(jobs.len(), 1);
        assert!(started.elapsed() < Duration::from_millis(500));
    }

    #[tokio::test]
    async fn under_load_the_batch_waits_for_the_previous_batchs_size() {
        let (tx, mut rx) = mpsc::channel::<Job>(16);
        let mut jobs = vec![job(0)];
        let busy = Pace {
            batch: 4,
            commit: Duration::from_secs(10),
        };
        let late = tokio::spawn(async move {
            for n in 1..6 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send(job(n)).await.unwrap();
            }
        });

        let started = Instant::now();
        top_up(&mut rx, &mut jobs, &busy, &limits()).await;

        assert_eq!(jobs.len(), 4, "stops at the previous batch's size");
        assert!(started.elapsed() < Duration::from_secs(4));
        late.await.unwrap();
    }

    #[tokio::test]
    async fn the_wait_is_bounded_by_half_the_previous_commit() {
        let (_tx, mut rx) = mpsc::channel::<Job>(16);
        let mut jobs = vec![job(0)];
        let busy = Pace {
            batch: 50,
            commit: Duration::from_millis(60),
        };

        let started = Instant::now();
        top_up(&mut rx, &mut jobs, &busy, &limits()).await;
        let waited = started.elapsed();

        assert_eq!(jobs.len(), 1);
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
    }
}
