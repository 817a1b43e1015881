//! Batch claims, lease renewal and the release of every claim at a SQLite
//! start-up.

use billd_store::{ClaimLimits, EventResult, EventStatus, NewOutboxItem, OutboxFilter};

use super::{event, finish, ids, insert, status_of, Harness};

fn limits(groups: u32, per_customer: u32) -> ClaimLimits {
    ClaimLimits {
        groups,
        per_customer,
        events: u32::MAX,
    }
}

pub(crate) async fn a_batch_claim_takes_each_customers_due_events_together_up_to_the_cap(
    h: &Harness,
) {
    insert(
        &h.store,
        &[
            event("evt_a1", Some("cus_a"), 1),
            event("evt_b1", Some("cus_b"), 2),
            event("evt_a2", Some("cus_a"), 3),
            event("evt_free", None, 4),
            event("evt_a3", Some("cus_a"), 5),
            event("evt_a4", Some("cus_a"), 6),
            event("evt_c1", Some("cus_c"), 7),
        ],
    )
    .await;

    let first = h
        .store
        .claim_event_batches(1_000, 1_060, limits(3, 3))
        .await
        .expect("claim");
    // cus_a and cus_b are leased now: only the rest of the backlog is due.
    let second = h
        .store
        .claim_event_batches(1_000, 1_060, limits(3, 3))
        .await
        .expect("claim");

    assert_eq!(
        ids(&first),
        ["evt_a1", "evt_b1", "evt_a2", "evt_free", "evt_a3"]
    );
    assert_eq!(ids(&second), ["evt_c1"], "evt_a4 waits for cus_a's batch");
    assert!(first
        .iter()
        .all(|e| e.status == EventStatus::Processing && e.next_attempt_at == Some(1_060)));
}

pub(crate) async fn a_thousand_events_of_one_customer_are_claimed_in_batches_of_the_cap(
    h: &Harness,
) {
    let burst: Vec<_> = (0..1_000)
        .map(|n| event(&format!("evt_{n:04}"), Some("cus_a"), n))
        .collect();
    insert(&h.store, &burst).await;

    let mut rounds = Vec::new();
    loop {
        let claimed = h
            .store
            .claim_event_batches(1_000, 1_060, limits(16, 256))
            .await
            .expect("claim");
        if claimed.is_empty() {
            break;
        }
        let done: Vec<_> = claimed
            .iter()
            .map(|e| finish(&e.id, e.claim, EventResult::Processed))
            .collect();
        h.store.finish_events(&done, 1_000).await.expect("finish");
        rounds.push(claimed.len());
    }

    assert_eq!(rounds, [256, 256, 256, 232]);
}

pub(crate) async fn renewing_extends_only_the_leases_still_held_under_their_claim(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_1", Some("cus_a"), 1),
            event("evt_2", Some("cus_a"), 2),
            event("evt_3", Some("cus_a"), 3),
        ],
    )
    .await;
    let claimed = h
        .store
        .claim_event_batches(1_000, 1_030, limits(1, 10))
        .await
        .expect("claim");
    assert_eq!(claimed.len(), 3);
    h.store
        .finish_event("evt_3", claimed[2].claim, EventResult::Processed, 1_001)
        .await
        .expect("finish");
    let held: Vec<(String, i64)> = vec![
        ("evt_1".to_owned(), claimed[0].claim),
        // A stale claim number: a worker that lost this event long ago.
        ("evt_2".to_owned(), claimed[1].claim - 1),
        ("evt_3".to_owned(), claimed[2].claim),
    ];

    let renewed = h.store.renew_events(&held, 1_050).await.expect("renew");

    assert_eq!(renewed, 1);
    assert_eq!(
        status_of(&h.store, "evt_1").await.next_attempt_at,
        Some(1_050)
    );
    assert_eq!(
        status_of(&h.store, "evt_2").await.next_attempt_at,
        Some(1_030)
    );
    assert_eq!(
        status_of(&h.store, "evt_3").await.status,
        EventStatus::Processed
    );
    // The renewed lease holds the customer past the original lease's end.
    let meanwhile = h
        .store
        .claim_event_batches(1_040, 1_100, limits(16, 256))
        .await
        .expect("claim");
    assert!(meanwhile.is_empty(), "{:?}", ids(&meanwhile));
}

pub(crate) async fn releasing_every_claim_makes_leased_events_and_outbox_rows_due_at_once(
    h: &Harness,
) {
    insert(
        &h.store,
        &[
            event("evt_1", Some("cus_a"), 1),
            event("evt_2", None, 2),
            event("evt_3", Some("cus_b"), 3),
        ],
    )
    .await;
    let leased = h
        .store
        .claim_event_batches(1_000, 1_300, limits(2, 10))
        .await
        .expect("claim");
    assert_eq!(ids(&leased), ["evt_1", "evt_2"]);
    let item = NewOutboxItem {
        dedupe_key: "alert_1".to_owned(),
        kind: "admin_alert".to_owned(),
        payload: "{}".to_owned(),
    };
    h.store
        .enqueue_outbox(None, &[item], 1_000)
        .await
        .expect("enqueue");
    let sending = h.store.claim_outbox(1_000, 1_300, 10).await.expect("claim");
    assert_eq!(sending.len(), 1);

    let released = h.store.release_all_claims(1_001).await.expect("release");
    let reclaimed = h
        .store
        .claim_event_batches(1_001, 1_031, limits(16, 256))
        .await
        .expect("claim");
    let resent = h.store.claim_outbox(1_001, 1_031, 10).await.expect("claim");

    assert_eq!((released.events, released.outbox), (2, 1));
    assert_eq!(ids(&reclaimed), ["evt_1", "evt_2", "evt_3"]);
    assert_eq!(reclaimed[0].attempts, 2, "the first attempt counts");
    assert_eq!(resent.len(), 1);
    assert!(resent[0].claim_token > sending[0].claim_token);
    // The old holder's late finish is refused: the claim moved on.
    assert!(h
        .store
        .finish_event("evt_1", leased[0].claim, EventResult::Processed, 1_002)
        .await
        .is_err());
    let rows = h
        .store
        .list_outbox(&OutboxFilter::default())
        .await
        .expect("list");
    assert_eq!(rows.len(), 1);
}
