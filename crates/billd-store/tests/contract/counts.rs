//! `inbox_stats` reads counters the database maintains (no count over every
//! event); they must agree with the rows through every kind of change.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::collections::BTreeMap;
use std::sync::Arc;

use billd_store::{EventFilter, EventResult, EventStatus, Store};

use super::{event, insert, Harness};

macro_rules! counts_contract {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let harness = super::super::sqlite().await;
                    super::$name(&harness).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let harness = super::super::postgres().await;
                    super::$name(&harness).await;
                }
            }
        )*
    };
}

counts_contract!(
    stats_agree_with_the_rows_after_inserts_duplicates_claims_finishes_and_requeues,
    stats_read_from_two_stores_while_both_write_stay_exact,
);

/// Counts per status from the rows themselves.
async fn counted(store: &Arc<dyn Store>) -> BTreeMap<&'static str, i64> {
    let mut by_status: BTreeMap<&'static str, i64> = BTreeMap::new();
    for stored in store.list_events(&EventFilter::default()).await.unwrap() {
        *by_status.entry(stored.status.as_str()).or_default() += 1;
    }
    by_status
}

async fn reported(store: &Arc<dyn Store>) -> BTreeMap<&'static str, i64> {
    let stats = store.inbox_stats().await.unwrap();
    assert_eq!(stats.by_status.len(), EventStatus::ALL.len());
    stats
        .by_status
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(status, n)| (status.as_str(), n))
        .collect()
}

async fn stats_agree_with_the_rows_after_inserts_duplicates_claims_finishes_and_requeues(
    h: &Harness,
) {
    let batch: Vec<_> = (0..12)
        .map(|n| event(&format!("evt_{n:02}"), Some(&format!("cus_{n}")), n))
        .collect();
    insert(&h.store, &batch).await;
    let mut checkpoints = vec![(reported(&h.store).await, counted(&h.store).await)];
    // Duplicates insert nothing.
    h.store.insert_events(&batch[..5]).await.unwrap();
    checkpoints.push((reported(&h.store).await, counted(&h.store).await));
    let claimed = h.store.claim_events(1_000, 1_010, 8).await.unwrap();
    checkpoints.push((reported(&h.store).await, counted(&h.store).await));
    let results = [
        EventResult::Processed,
        EventResult::Skipped,
        EventResult::Unlinked,
        EventResult::Dead {
            error: "x".to_owned(),
        },
        EventResult::Retry {
            error: "y".to_owned(),
            next_attempt_at: 1_005,
        },
    ];
    for (stored, result) in claimed.iter().zip(results) {
        h.store
            .finish_event(&stored.id, stored.claim, result, 1_001)
            .await
            .unwrap();
    }
    checkpoints.push((reported(&h.store).await, counted(&h.store).await));
    // Expired leases and the due retry are claimed again.
    h.store.claim_events(1_010, 1_070, 20).await.unwrap();
    checkpoints.push((reported(&h.store).await, counted(&h.store).await));
    h.store
        .requeue_by_status(EventStatus::Dead, 1_020)
        .await
        .unwrap();
    h.store.requeue_event("evt_00", 1_020).await.unwrap();
    checkpoints.push((reported(&h.store).await, counted(&h.store).await));

    for (index, (reported, counted)) in checkpoints.iter().enumerate() {
        assert_eq!(reported, counted, "checkpoint {index}");
    }
    assert_eq!(checkpoints[0].0.get("pending"), Some(&12));
    assert_eq!(checkpoints[2].0.get("processing"), Some(&8));
}

async fn stats_read_from_two_stores_while_both_write_stay_exact(h: &Harness) {
    let stores = [h.store.clone(), h.another().await];
    let writers: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(which, store)| {
            let store = store.clone();
            tokio::spawn(async move {
                for round in 0..20 {
                    let batch: Vec<_> = (0..10)
                        .map(|n| event(&format!("evt_{which}_{round}_{n}"), None, round))
                        .collect();
                    store.insert_events(&batch).await.unwrap();
                    for stored in store.claim_events(2_000, 2_060, 7).await.unwrap() {
                        store
                            .finish_event(&stored.id, stored.claim, EventResult::Processed, 2_001)
                            .await
                            .unwrap();
                    }
                    // Reading folds the counters on PostgreSQL, racing the
                    // other store's writes and reads.
                    store.inbox_stats().await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let total: i64 = reported(&h.store).await.values().sum();
    assert_eq!(reported(&h.store).await, counted(&h.store).await);
    assert_eq!(reported(&stores[1]).await, counted(&h.store).await);
    assert_eq!(total, 400);
}
