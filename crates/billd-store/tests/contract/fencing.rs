//! Lease fencing: a worker that outlives its lease (and whose event another
//! worker reclaimed) finishes late; its outcome must not replace the newer
//! claim's. Every claim carries a number (`StoredEvent::claim`) and a finish
//! only lands under the current one.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use billd_store::{EventFinish, EventResult, EventStatus, StoreError};

use super::{event, insert, status_of, Harness};

macro_rules! fencing_contract {
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

fencing_contract!(
    a_late_finish_after_a_reclaim_is_refused_and_the_second_claimers_finish_wins,
    a_late_finish_in_a_batch_is_reported_false_and_leaves_the_newer_claim_alone,
    a_requeue_does_not_reset_the_claim_so_a_finish_from_before_it_is_refused,
);

fn retry(error: &str, next_attempt_at: i64) -> EventResult {
    EventResult::Retry {
        error: error.to_owned(),
        next_attempt_at,
    }
}

async fn a_late_finish_after_a_reclaim_is_refused_and_the_second_claimers_finish_wins(h: &Harness) {
    insert(&h.store, &[event("evt_1", Some("cus_a"), 10)]).await;
    let second_store = h.another().await;
    // A 10-second lease that the first worker overruns.
    let first = h.store.claim_events(1_000, 1_010, 10).await.unwrap();
    let second = second_store.claim_events(1_010, 1_070, 10).await.unwrap();

    let late = h
        .store
        .finish_event("evt_1", first[0].claim, retry("first worker", 1_500), 1_011)
        .await;
    let while_second_holds_it = status_of(&h.store, "evt_1").await;
    second_store
        .finish_event("evt_1", second[0].claim, EventResult::Processed, 1_012)
        .await
        .unwrap();
    let later_still = h
        .store
        .finish_event("evt_1", first[0].claim, retry("first worker", 1_500), 1_013)
        .await;
    let after = status_of(&h.store, "evt_1").await;

    assert_eq!((first.len(), second.len()), (1, 1));
    assert_eq!(first[0].claim + 1, second[0].claim);
    assert!(matches!(late, Err(StoreError::Conflict { .. })), "{late:?}");
    assert_eq!(while_second_holds_it.status, EventStatus::Processing);
    assert_eq!(while_second_holds_it.claim, second[0].claim);
    assert_eq!(while_second_holds_it.next_attempt_at, Some(1_070));
    assert_eq!(while_second_holds_it.last_error, None);
    assert!(
        matches!(later_still, Err(StoreError::Conflict { .. })),
        "{later_still:?}"
    );
    assert_eq!(after.status, EventStatus::Processed);
    assert_eq!(after.processed_at, Some(1_012));
    assert_eq!(after.last_error, None);
    assert_eq!(after.attempts, 2);
}

async fn a_late_finish_in_a_batch_is_reported_false_and_leaves_the_newer_claim_alone(h: &Harness) {
    insert(
        &h.store,
        &[event("evt_1", Some("cus_a"), 10), event("evt_2", None, 20)],
    )
    .await;
    let first = h.store.claim_events(1_000, 1_010, 10).await.unwrap();
    // Only evt_1 is reclaimed; nobody took evt_2 from its first worker.
    let second = h
        .another()
        .await
        .claim_events(1_010, 1_070, 1)
        .await
        .unwrap();

    let finished = h
        .store
        .finish_events(
            &[
                EventFinish {
                    id: "evt_1".to_owned(),
                    claim: first[0].claim,
                    result: EventResult::Dead {
                        error: "first worker".to_owned(),
                    },
                },
                EventFinish {
                    id: "evt_2".to_owned(),
                    claim: first[1].claim,
                    result: EventResult::Skipped,
                },
            ],
            1_011,
        )
        .await
        .unwrap();

    assert_eq!(
        ids_and_claims(&first),
        [("evt_1".to_owned(), 1), ("evt_2".to_owned(), 1)]
    );
    assert_eq!(ids_and_claims(&second), [("evt_1".to_owned(), 2)]);
    assert_eq!(finished, [false, true]);
    let reclaimed = status_of(&h.store, "evt_1").await;
    assert_eq!(reclaimed.status, EventStatus::Processing);
    assert_eq!(reclaimed.claim, 2);
    assert_eq!(reclaimed.last_error, None);
    assert_eq!(
        status_of(&h.store, "evt_2").await.status,
        EventStatus::Skipped
    );
}

async fn a_requeue_does_not_reset_the_claim_so_a_finish_from_before_it_is_refused(h: &Harness) {
    insert(&h.store, &[event("evt_1", None, 10)]).await;
    let before = h.store.claim_events(1_000, 1_060, 10).await.unwrap();
    // An operator replays the event while its first worker is still busy.
    h.store.requeue_event("evt_1", 1_001).await.unwrap();
    let after = h.store.claim_events(1_002, 1_062, 10).await.unwrap();

    let stale = h
        .store
        .finish_event("evt_1", before[0].claim, EventResult::Processed, 1_003)
        .await;
    let current = status_of(&h.store, "evt_1").await;

    assert_eq!(after[0].attempts, 1, "the requeue reset the attempts");
    assert_eq!(after[0].claim, before[0].claim + 1);
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    assert_eq!(current.status, EventStatus::Processing);
    assert_eq!(current.processed_at, None);
}

fn ids_and_claims(events: &[billd_store::StoredEvent]) -> Vec<(String, i64)> {
    events.iter().map(|e| (e.id.clone(), e.claim)).collect()
}
