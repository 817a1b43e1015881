//! The overview reads counters the database maintains: derived events per
//! minute of arrival (`activity`) and outbox rows per status
//! (`outbox_stats`). They must equal a fresh count of the rows through
//! every kind of change, deletions included.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::collections::BTreeMap;
use std::sync::Arc;

use billd_core::{AlertKind, Effect};
use billd_store::{
    ActivityBucket, Derived, EventFilter, EventResult, EventStatus, NewOutboxItem, OutboxFilter,
    OutboxResult, ReceivedEvent, ReplayFilter, Store,
};

use super::{event_of_type, insert, Harness};

macro_rules! console_counters_contract {
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

console_counters_contract!(
    console_counters_equal_a_fresh_count_after_inserts_derives_finishes_replays_and_deletes,
);

/// Minutes of arrival the test's events fall in (0 to 20 minutes).
const UNTIL: i64 = 1_260;

/// Per-minute buckets counted from the rows themselves.
async fn counted_activity(store: &Arc<dyn Store>) -> Vec<ActivityBucket> {
    let mut by_minute: BTreeMap<i64, ActivityBucket> = BTreeMap::new();
    for e in store.list_events(&EventFilter::default()).await.unwrap() {
        if e.status == EventStatus::Received {
            continue;
        }
        let start = e.received_at - e.received_at.rem_euclid(60);
        let b = by_minute.entry(start).or_insert(ActivityBucket {
            start,
            ..ActivityBucket::default()
        });
        b.events += 1;
        b.webhooks += i64::from(!e.id.starts_with("evt_billd_"));
        b.payments_failed += i64::from(e.event_type == "invoice.payment_failed");
        b.payments_succeeded += i64::from(e.event_type == "invoice.paid");
        b.dead += i64::from(e.status == EventStatus::Dead);
    }
    by_minute.into_values().collect()
}

async fn counted_outbox(store: &Arc<dyn Store>) -> BTreeMap<&'static str, i64> {
    let mut by_status = BTreeMap::new();
    for item in store.list_outbox(&OutboxFilter::default()).await.unwrap() {
        *by_status.entry(item.status.as_str()).or_default() += 1;
    }
    by_status
}

async fn reported_outbox(store: &Arc<dyn Store>) -> BTreeMap<&'static str, i64> {
    store
        .outbox_stats()
        .await
        .unwrap()
        .by_status
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(status, n)| (status.as_str(), n))
        .collect()
}

/// Both counters against the rows, at a named step.
async fn check(store: &Arc<dyn Store>, step: &str) {
    assert_eq!(
        store.activity(0, UNTIL, 60).await.unwrap(),
        counted_activity(store).await,
        "activity after {step}"
    );
    assert_eq!(
        reported_outbox(store).await,
        counted_outbox(store).await,
        "outbox after {step}"
    );
}

fn alert(key: &str) -> NewOutboxItem {
    NewOutboxItem::from_effect(&Effect::AdminAlert {
        alert: AlertKind::DisputeOpened,
        dedupe_key: key.to_owned(),
        message: "dispute opened".to_owned(),
    })
    .unwrap()
}

/// Deletes rows behind the store's back (as a retention job or an operator
/// would): the counters must follow.
async fn delete(url: &str, statements: &[&str]) {
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }
}

async fn console_counters_equal_a_fresh_count_after_inserts_derives_finishes_replays_and_deletes(
    h: &Harness,
) {
    let store = &h.store;
    let types = ["invoice.paid", "invoice.payment_failed", "customer.updated"];
    // Webhooks and billd's own events over several minutes, several per
    // minute, inserted already derived.
    let batch: Vec<_> = (0..24_i64)
        .map(|n| {
            let id = if n % 5 == 0 {
                format!("evt_billd_sync_{n}")
            } else {
                format!("evt_{n:02}")
            };
            let customer = format!("cus_{n}");
            event_of_type(&id, types[(n % 3) as usize], Some(&customer), n * 37)
        })
        .collect();
    insert(store, &batch).await;
    check(store, "inserts").await;
    store.insert_events(&batch[..6]).await.unwrap();
    check(store, "duplicates").await;

    // Acknowledged rows count once derived, an invalid one as dead.
    let late: Vec<_> = (0..4_i64)
        .map(|n| {
            event_of_type(
                &format!("evt_late_{n}"),
                types[(n % 3) as usize],
                None,
                600 + n,
            )
        })
        .collect();
    let received: Vec<_> = late
        .iter()
        .map(|e| ReceivedEvent {
            id: e.id.clone(),
            payload: e.payload.clone(),
            received_at: e.received_at,
        })
        .collect();
    store.receive_events(&received).await.unwrap();
    check(store, "receiving").await;
    let mut derived: Vec<Derived> = late[..3].iter().cloned().map(Derived::Event).collect();
    derived.push(Derived::Invalid {
        id: "evt_late_3".to_owned(),
        error: "payload_invalid: test".to_owned(),
    });
    store.derive_events(&derived, 700).await.unwrap();
    check(store, "deriving").await;

    // Claims, and every outcome.
    let claimed = store.claim_events(1_000, 1_060, 30).await.unwrap();
    check(store, "claims").await;
    for (n, stored) in claimed.iter().enumerate() {
        let result = match n % 3 {
            0 => EventResult::Dead {
                error: "x".to_owned(),
            },
            1 => EventResult::Processed,
            _ => EventResult::Retry {
                error: "y".to_owned(),
                next_attempt_at: 1_005,
            },
        };
        store
            .finish_event(&stored.id, stored.claim, result, 1_001)
            .await
            .unwrap();
    }
    check(store, "finishes").await;
    let dead_before = counted_activity(store)
        .await
        .iter()
        .map(|b| b.dead)
        .sum::<i64>();
    assert!(dead_before >= 2, "some events died: {dead_before}");

    // Replays of dead events (one type's, then the rest) and requeues.
    let replayed = store
        .replay_events(
            &ReplayFilter {
                status: EventStatus::Dead,
                event_type: Some("invoice.paid".to_owned()),
                customer_id: None,
                received_from: None,
                received_until: None,
            },
            1_100,
        )
        .await
        .unwrap();
    assert!(replayed > 0);
    check(store, "a replay").await;
    store
        .requeue_by_status(EventStatus::Dead, 1_110)
        .await
        .unwrap();
    check(store, "requeues").await;
    assert_eq!(
        store.activity(0, UNTIL, UNTIL).await.unwrap()[0].dead,
        0,
        "nothing is dead after the requeue"
    );

    // The outbox: inserts, claims, every outcome, a requeue.
    let items: Vec<_> = (0..6).map(|n| alert(&format!("a{n}"))).collect();
    store
        .enqueue_outbox(None, &items[..2], 1_200)
        .await
        .unwrap();
    store
        .enqueue_outbox(None, &items[2..], 1_201)
        .await
        .unwrap();
    store
        .enqueue_outbox(None, &items[..3], 1_202)
        .await
        .unwrap();
    check(store, "outbox inserts and duplicates").await;
    let taken = store.claim_outbox(1_210, 1_270, 5).await.unwrap();
    check(store, "outbox claims").await;
    for (n, item) in taken.iter().enumerate() {
        let result = match n % 3 {
            0 => OutboxResult::Sent,
            1 => OutboxResult::Dead {
                error: "bounced".to_owned(),
            },
            _ => OutboxResult::Retry {
                error: "timeout".to_owned(),
                next_attempt_at: 1_300,
            },
        };
        store
            .finish_outbox(item.id, item.claim_token, &result, 1_211)
            .await
            .unwrap();
    }
    check(store, "outbox outcomes").await;
    let dead = store
        .list_outbox(&OutboxFilter {
            status: Some(billd_store::OutboxStatus::Dead),
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    assert!(store.requeue_outbox(dead[0].id, 1_220).await.unwrap());
    check(store, "an outbox requeue").await;

    // Pruning: rows deleted take their counts with them.
    delete(
        &h.url,
        &[
            "DELETE FROM stripe_events WHERE received_at < 200",
            "DELETE FROM stripe_events WHERE id = 'evt_late_3'",
            "DELETE FROM outbox WHERE status = 'sent'",
        ],
    )
    .await;
    check(store, "deletes").await;
    let left = store.activity(0, UNTIL, UNTIL).await.unwrap();
    assert!(left[0].events < 28, "the deletes removed counts: {left:?}");
}
