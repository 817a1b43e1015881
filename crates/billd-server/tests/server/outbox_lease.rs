//! Outbox lease fencing in the worker: a delivery that outlives its lease
//! keeps its rows while the heartbeat renews them, and when the lease is
//! lost anyway, the late outcome is dropped instead of overwriting the
//! reclaiming worker's.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use billd_core::{AlertKind, Effect};
use billd_server::pipeline::{Delivered, Delivery, DeliveryError, OutboxConfig, OutboxWorker};
use billd_server::ManualClock;
use billd_store::{NewOutboxItem, OutboxFilter, OutboxItem, OutboxStatus, Store};
use tokio::sync::Semaphore;

use crate::on_both_databases;
use crate::support::{fresh_db, Db};

on_both_databases!(
    a_delivery_outliving_its_lease_is_reclaimed_and_its_late_outcome_is_dropped,
    the_heartbeat_keeps_a_slow_delivery_from_being_reclaimed,
);

const T0: i64 = 1_800_000_000;
const LEASE: i64 = 10;

/// Counts deliveries (shared by every worker of a test); a gated one
/// announces it started, then waits for the test to let it finish.
struct CountingDelivery {
    delivered: Arc<AtomicUsize>,
    gate: Option<(Arc<Semaphore>, Arc<Semaphore>)>,
}

#[async_trait]
impl Delivery for CountingDelivery {
    async fn deliver(
        &self,
        _item: &OutboxItem,
        _effect: &Effect,
    ) -> Result<Delivered, DeliveryError> {
        self.delivered.fetch_add(1, Ordering::SeqCst);
        if let Some((started, release)) = &self.gate {
            started.add_permits(1);
            release
                .acquire()
                .await
                .map_err(|e| DeliveryError::Transient(e.to_string()))?
                .forget();
        }
        Ok(Delivered::Sent)
    }
}

struct Setup {
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    delivered: Arc<AtomicUsize>,
    started: Arc<Semaphore>,
    release: Arc<Semaphore>,
    _db: crate::support::TestDb,
}

async fn setup(db: Db) -> Setup {
    let db = fresh_db(db).await;
    let alert = NewOutboxItem::from_effect(&Effect::AdminAlert {
        alert: AlertKind::OutboxDead,
        message: "slow".to_owned(),
        dedupe_key: "alert:slow".to_owned(),
    })
    .unwrap();
    db.store.enqueue_outbox(None, &[alert], T0).await.unwrap();
    Setup {
        store: db.store.clone(),
        clock: Arc::new(ManualClock::new(T0)),
        delivered: Arc::new(AtomicUsize::new(0)),
        started: Arc::new(Semaphore::new(0)),
        release: Arc::new(Semaphore::new(0)),
        _db: db,
    }
}

impl Setup {
    /// A worker with a `LEASE`-second lease; `gated` deliveries wait for
    /// [`Setup::release`].
    fn worker(&self, gated: bool, heartbeat: Duration) -> OutboxWorker<dyn Store> {
        OutboxWorker::new(
            self.store.clone(),
            None,
            Arc::new(CountingDelivery {
                delivered: self.delivered.clone(),
                gate: gated.then(|| (self.started.clone(), self.release.clone())),
            }),
            self.clock.clone(),
            OutboxConfig {
                lease_secs: LEASE,
                heartbeat,
                ..OutboxConfig::default()
            },
        )
    }

    async fn row(&self) -> OutboxItem {
        let rows = self
            .store
            .list_outbox(&OutboxFilter::default())
            .await
            .unwrap();
        assert_eq!(rows.len(), 1);
        rows.into_iter().next().unwrap()
    }
}

async fn a_delivery_outliving_its_lease_is_reclaimed_and_its_late_outcome_is_dropped(db: Db) {
    let s = setup(db).await;
    let slow = s.worker(true, Duration::from_secs(3600));
    let slow = tokio::spawn(async move { slow.run_once().await.unwrap() });
    s.started.acquire().await.unwrap().forget();

    // The slow delivery is still running when its lease ends.
    s.clock.advance(LEASE + 1);
    let second = s
        .worker(false, Duration::from_secs(3600))
        .run_once()
        .await
        .unwrap();
    s.release.add_permits(1);
    let first = slow.await.unwrap();

    assert_eq!(second.claimed, 1, "the expired lease is claimed again");
    assert_eq!(second.sent, 1);
    assert_eq!(first.sent, 0, "{first:?}");
    assert_eq!(first.lost, 1, "the late outcome is dropped: {first:?}");
    let row = s.row().await;
    assert_eq!(row.status, OutboxStatus::Sent);
    assert_eq!(row.attempts, 2);
    assert_eq!(
        row.done_at,
        Some(T0 + LEASE + 1),
        "the reclaim's finish stands"
    );
    assert_eq!(s.delivered.load(Ordering::SeqCst), 2);
}

async fn the_heartbeat_keeps_a_slow_delivery_from_being_reclaimed(db: Db) {
    let s = setup(db).await;
    let slow = s.worker(true, Duration::from_millis(100));
    let slow = tokio::spawn(async move { slow.run_once().await.unwrap() });
    s.started.acquire().await.unwrap().forget();

    // Half a lease passes; wait until the heartbeat has moved the lease.
    s.clock.advance(LEASE / 2);
    let renewed_to = T0 + LEASE / 2 + LEASE;
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.row().await.next_attempt_at != Some(renewed_to) {
        assert!(Instant::now() < deadline, "the lease was never renewed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Past the first lease, within the renewed one.
    s.clock.advance(LEASE / 2 + 1);
    let second = s
        .worker(false, Duration::from_secs(3600))
        .run_once()
        .await
        .unwrap();
    s.release.add_permits(1);
    let first = slow.await.unwrap();

    assert_eq!(second.claimed, 0, "a renewed lease is not reclaimed");
    assert_eq!(first.sent, 1, "{first:?}");
    assert_eq!(first.lost, 0);
    let row = s.row().await;
    assert_eq!(row.status, OutboxStatus::Sent);
    assert_eq!(row.attempts, 1);
    assert_eq!(s.delivered.load(Ordering::SeqCst), 1);
}
