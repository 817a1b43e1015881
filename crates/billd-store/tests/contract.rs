//! One contract for every store: each test below runs against SQLite (a file
//! in a temp dir) and PostgreSQL (a fresh database on the server named by
//! `BILLD_TEST_POSTGRES_URL`, which `scripts/test.sh` starts).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use billd_store::{
    connect, EventFilter, EventFinish, EventResult, EventStatus, InsertOutcome, NewEvent, PgStore,
    SqliteOptions, SqliteStore, Store, StoreError, StoredEvent,
};
use tempfile::TempDir;

#[path = "contract/batches.rs"]
mod batches;
use batches::{
    a_batch_claim_takes_each_customers_due_events_together_up_to_the_cap,
    a_thousand_events_of_one_customer_are_claimed_in_batches_of_the_cap,
    releasing_every_claim_makes_leased_events_and_outbox_rows_due_at_once,
    renewing_extends_only_the_leases_still_held_under_their_claim,
};
#[path = "contract/console_counters.rs"]
mod console_counters;
#[path = "contract/counts.rs"]
mod counts;
#[path = "contract/fencing.rs"]
mod fencing;
#[path = "contract/jobs.rs"]
mod jobs;
#[path = "contract/rate_limit.rs"]
mod rate_limit;
#[path = "contract/received.rs"]
mod received;
use rate_limit::{
    a_refused_hit_is_not_counted_and_ended_windows_are_pruned,
    concurrent_hits_from_two_stores_admit_exactly_the_limit,
    two_stores_on_one_database_share_one_limit_per_window,
};

/// A store under test plus what keeps it alive.
struct Harness {
    store: Arc<dyn Store>,
    url: String,
    _dir: Option<TempDir>,
}

impl Harness {
    /// A second, independent store on the same database (another process).
    async fn another(&self) -> Arc<dyn Store> {
        connect(&self.url).await.expect("second store connects")
    }
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("billd.db").display());
    let store = connect(&url).await.expect("sqlite store opens");
    store.migrate().await.expect("sqlite migrations apply");
    Harness {
        store,
        url,
        _dir: Some(dir),
    }
}

async fn postgres() -> Harness {
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    let store = connect(&url).await.expect("postgres store connects");
    store.migrate().await.expect("postgres migrations apply");
    Harness {
        store,
        url,
        _dir: None,
    }
}

/// Declares each contract test twice, as `<name>::on_sqlite` and
/// `<name>::on_postgres`.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    let harness = super::sqlite().await;
                    super::$name(&harness).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    let harness = super::postgres().await;
                    super::$name(&harness).await;
                }
            }
        )*
    };
}

contract!(
    an_inserted_event_is_stored_pending_with_every_field,
    a_duplicate_id_is_reported_and_stored_once,
    a_repeated_id_inside_one_batch_is_stored_once,
    a_large_batch_stores_every_event,
    batches_around_the_one_statement_size_report_each_event,
    migrations_can_run_again,
    migration_status_reports_pending_migrations_until_migrate_runs,
    claims_take_the_oldest_created_first_then_the_earlier_insert,
    a_claimed_event_is_processing_under_a_lease_with_one_more_attempt,
    an_event_under_a_live_lease_is_not_claimed_again,
    an_event_whose_lease_expired_is_reclaimed,
    a_claim_takes_at_most_one_event_per_customer,
    a_batch_claim_takes_each_customers_due_events_together_up_to_the_cap,
    a_thousand_events_of_one_customer_are_claimed_in_batches_of_the_cap,
    renewing_extends_only_the_leases_still_held_under_their_claim,
    releasing_every_claim_makes_leased_events_and_outbox_rows_due_at_once,
    a_customer_with_a_leased_event_gets_nothing_more_until_it_finishes,
    events_without_a_customer_are_independent,
    a_failed_event_is_retried_only_from_its_next_attempt_time,
    a_dead_event_is_never_claimed_and_keeps_its_error,
    processed_skipped_and_unlinked_events_are_not_claimed,
    finishing_an_event_that_is_not_processing_is_refused,
    finishing_a_batch_records_every_outcome_and_reports_unclaimed_ids,
    requeueing_one_event_makes_it_pending_with_attempts_reset,
    requeueing_by_status_touches_only_that_status,
    listing_filters_by_status_and_type_newest_first_with_a_limit,
    stats_count_every_status_and_the_oldest_waiting_event,
    two_stores_claiming_in_parallel_never_share_an_event_or_a_customer,
    two_stores_inserting_the_same_events_at_once_store_each_once,
    two_stores_on_one_database_share_one_limit_per_window,
    a_refused_hit_is_not_counted_and_ended_windows_are_pruned,
    concurrent_hits_from_two_stores_admit_exactly_the_limit,
    console_activity_counts_each_bucket_and_tells_webhooks_from_billds_own_events,
    console_events_filter_by_arrival_and_operator_actions_and_runs_list_newest_first,
    console_lists_merge_received_rows_and_a_customers_two_kinds_of_events_newest_first,
);

// ---------------------------------------------------------------- fixtures

/// An event in Stripe's shape (`invoice.paid` about an invoice of
/// `customer`), as the webhook endpoint would insert it.
fn event(id: &str, customer: Option<&str>, created: i64) -> NewEvent {
    event_of_type(id, "invoice.paid", customer, created)
}

fn event_of_type(id: &str, event_type: &str, customer: Option<&str>, created: i64) -> NewEvent {
    let object_id = format!("in_{}", id.trim_start_matches("evt_"));
    let payload = serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": "2026-09-30.endive",
        "created": created,
        "data": { "object": {
            "id": object_id,
            "object": "invoice",
            "customer": customer,
            "status": "paid",
            "currency": "eur",
            "amount_paid": 1900,
        }},
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": null, "idempotency_key": null },
        "type": event_type,
    });
    NewEvent {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
        api_version: Some("2026-09-30.endive".to_owned()),
        created,
        object_id: Some(object_id),
        stripe_customer: customer.map(str::to_owned),
        payload: payload.to_string(),
        received_at: created + 1,
    }
}

async fn insert(store: &Arc<dyn Store>, events: &[NewEvent]) {
    let outcomes = store.insert_events(events).await.expect("insert");
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Inserted));
}

async fn status_of(store: &Arc<dyn Store>, id: &str) -> StoredEvent {
    store
        .get_event(id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("{id} is stored"))
}

fn finish(id: &str, claim: i64, result: EventResult) -> EventFinish {
    EventFinish {
        id: id.to_owned(),
        claim,
        result,
    }
}

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn count(stats: &billd_store::InboxStats, status: EventStatus) -> i64 {
    stats
        .by_status
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(-1, |(_, n)| *n)
}

// ----------------------------------------------------------------- inserts

async fn an_inserted_event_is_stored_pending_with_every_field(h: &Harness) {
    let new = event("evt_1", Some("cus_a"), 1_700_000_000);

    let outcomes = h
        .store
        .insert_events(std::slice::from_ref(&new))
        .await
        .expect("insert");

    assert_eq!(outcomes, [InsertOutcome::Inserted]);
    let stored = status_of(&h.store, "evt_1").await;
    assert_eq!(stored.event_type, "invoice.paid");
    assert_eq!(stored.api_version.as_deref(), Some("2026-09-30.endive"));
    assert_eq!(stored.created, 1_700_000_000);
    assert_eq!(stored.object_id, new.object_id);
    assert_eq!(stored.stripe_customer.as_deref(), Some("cus_a"));
    assert_eq!(stored.payload, new.payload);
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.attempts, 0);
    assert_eq!(stored.next_attempt_at, None);
    assert_eq!(stored.last_error, None);
    assert_eq!(stored.received_at, 1_700_000_001);
    assert_eq!(stored.processed_at, None);
    assert!(h
        .store
        .get_event("evt_missing")
        .await
        .expect("get")
        .is_none());
}

async fn a_duplicate_id_is_reported_and_stored_once(h: &Harness) {
    insert(
        &h.store,
        &[event("evt_a", None, 10), event("evt_b", None, 11)],
    )
    .await;
    let mut changed = event("evt_b", Some("cus_x"), 99);
    changed.payload = "{\"changed\":true}".to_owned();

    let outcomes = h
        .store
        .insert_events(&[changed, event("evt_c", None, 12)])
        .await
        .expect("insert");

    assert_eq!(
        outcomes,
        [InsertOutcome::Duplicate, InsertOutcome::Inserted]
    );
    let kept = status_of(&h.store, "evt_b").await;
    assert_eq!(kept.created, 11, "the first delivery is kept unchanged");
    assert_eq!(kept.stripe_customer, None);
    let all = h
        .store
        .list_events(&EventFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 3);
}

async fn a_repeated_id_inside_one_batch_is_stored_once(h: &Harness) {
    let batch = [
        event("evt_1", None, 10),
        event("evt_2", None, 11),
        event("evt_1", None, 12),
        event("evt_1", None, 13),
    ];

    let outcomes = h.store.insert_events(&batch).await.expect("insert");

    assert_eq!(
        outcomes,
        [
            InsertOutcome::Inserted,
            InsertOutcome::Inserted,
            InsertOutcome::Duplicate,
            InsertOutcome::Duplicate
        ]
    );
    assert_eq!(status_of(&h.store, "evt_1").await.created, 10);
    let all = h
        .store
        .list_events(&EventFilter::default())
        .await
        .expect("list");
    assert_eq!(all.len(), 2);
}

async fn batches_around_the_one_statement_size_report_each_event(h: &Harness) {
    // The SQLite store writes batches of up to 64 distinct events as one
    // statement and larger ones in a transaction of chunks: both sides of
    // that bound (63, 64 and 65 distinct ids, counting `evt_old`), each batch
    // repeating an id it carries and one stored before.
    insert(&h.store, &[event("evt_old", None, 0)]).await;
    for size in [62_usize, 63, 64] {
        let mut batch: Vec<NewEvent> = (0..size)
            .map(|n| event(&format!("evt_{size}_{n:02}"), None, n as i64))
            .collect();
        batch.push(event(&format!("evt_{size}_00"), None, 99));
        batch.push(event("evt_old", None, 99));

        let outcomes = h.store.insert_events(&batch).await.expect("insert");

        assert_eq!(outcomes.len(), size + 2);
        assert!(outcomes[..size]
            .iter()
            .all(|o| *o == InsertOutcome::Inserted));
        assert_eq!(
            outcomes[size..],
            [InsertOutcome::Duplicate, InsertOutcome::Duplicate],
            "size {size}"
        );
    }
    let stats = h.store.inbox_stats().await.expect("stats");
    assert_eq!(count(&stats, EventStatus::Pending), 1 + 62 + 63 + 64);
}

async fn a_large_batch_stores_every_event(h: &Harness) {
    // 777 is not a multiple of 64: the SQLite store splits it into several
    // multi-row statements.
    let batch: Vec<NewEvent> = (0..777)
        .map(|n| event(&format!("evt_{n:04}"), Some(&format!("cus_{}", n % 13)), n))
        .collect();
    insert(&h.store, &batch[..100]).await;

    let outcomes = h.store.insert_events(&batch).await.expect("insert");

    assert!(outcomes[..100]
        .iter()
        .all(|o| *o == InsertOutcome::Duplicate));
    assert!(outcomes[100..]
        .iter()
        .all(|o| *o == InsertOutcome::Inserted));
    let stats = h.store.inbox_stats().await.expect("stats");
    assert_eq!(count(&stats, EventStatus::Pending), 777);
    let last = status_of(&h.store, "evt_0776").await;
    assert_eq!(last.created, 776);
}

async fn migrations_can_run_again(h: &Harness) {
    insert(&h.store, &[event("evt_1", None, 1)]).await;

    h.store.migrate().await.expect("second migrate");
    h.another()
        .await
        .migrate()
        .await
        .expect("migrate from another store");

    assert_eq!(
        status_of(&h.store, "evt_1").await.status,
        EventStatus::Pending
    );
    h.store.ping().await.expect("ping");
}

async fn migration_status_reports_pending_migrations_until_migrate_runs(h: &Harness) {
    let dir = tempfile::tempdir().expect("temp dir");
    let fresh_url = if h.url.starts_with("sqlite:") {
        format!("sqlite://{}", dir.path().join("fresh.db").display())
    } else {
        billd_store::testing::fresh_postgres_database()
            .await
            .expect("a fresh database")
    };
    let fresh = connect(&fresh_url).await.expect("fresh store opens");

    let before = fresh
        .migration_status()
        .await
        .expect("status of an empty db");
    let migrated = h.store.migration_status().await.expect("status");
    let still_before = fresh.migration_status().await.expect("status again");
    fresh.migrate().await.expect("migrate");
    let after = fresh
        .migration_status()
        .await
        .expect("status after migrate");

    assert!(!before.pending.is_empty(), "{before:?}");
    assert!(before.applied.is_empty(), "{before:?}");
    assert_eq!(before, still_before, "reading the status changes nothing");
    assert!(migrated.is_current(), "{migrated:?}");
    assert!(after.is_current(), "{after:?}");
    assert_eq!(after.applied.len(), before.pending.len());
}

// ------------------------------------------------------------------ claims

async fn claims_take_the_oldest_created_first_then_the_earlier_insert(h: &Harness) {
    // Same `created` second: the one stored first goes first. The ids sort
    // the other way round, so id order cannot pass for insertion order.
    insert(
        &h.store,
        &[event("evt_late", None, 300), event("evt_tie_b", None, 100)],
    )
    .await;
    insert(
        &h.store,
        &[event("evt_tie_a", None, 100), event("evt_early", None, 50)],
    )
    .await;

    let first = h.store.claim_events(1_000, 1_060, 3).await.expect("claim");
    let rest = h.store.claim_events(1_000, 1_060, 3).await.expect("claim");

    assert_eq!(ids(&first), ["evt_early", "evt_tie_b", "evt_tie_a"]);
    assert_eq!(ids(&rest), ["evt_late"]);
}

async fn a_claimed_event_is_processing_under_a_lease_with_one_more_attempt(h: &Harness) {
    insert(&h.store, &[event("evt_1", Some("cus_a"), 10)]).await;

    let claimed = h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    assert_eq!(claimed.len(), 1);
    for stored in [claimed[0].clone(), status_of(&h.store, "evt_1").await] {
        assert_eq!(stored.status, EventStatus::Processing);
        assert_eq!(stored.next_attempt_at, Some(1_060));
        assert_eq!(stored.attempts, 1);
    }
    assert!(h
        .store
        .claim_events(1_000, 1_060, 0)
        .await
        .expect("claim")
        .is_empty());
}

async fn an_event_under_a_live_lease_is_not_claimed_again(h: &Harness) {
    insert(&h.store, &[event("evt_1", None, 10)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    let again = h.store.claim_events(1_059, 1_119, 10).await.expect("claim");

    assert!(again.is_empty());
}

async fn an_event_whose_lease_expired_is_reclaimed(h: &Harness) {
    // A worker that crashed leaves its event `processing`.
    insert(&h.store, &[event("evt_1", Some("cus_a"), 10)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    let reclaimed = h.store.claim_events(1_060, 1_120, 10).await.expect("claim");

    assert_eq!(ids(&reclaimed), ["evt_1"]);
    assert_eq!(reclaimed[0].attempts, 2);
    assert_eq!(reclaimed[0].next_attempt_at, Some(1_120));
}

async fn a_claim_takes_at_most_one_event_per_customer(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_a1", Some("cus_a"), 1),
            event("evt_a2", Some("cus_a"), 2),
            event("evt_b1", Some("cus_b"), 3),
            event("evt_a3", Some("cus_a"), 4),
            event("evt_b2", Some("cus_b"), 5),
        ],
    )
    .await;

    let claimed = h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    assert_eq!(ids(&claimed), ["evt_a1", "evt_b1"]);
}

async fn a_customer_with_a_leased_event_gets_nothing_more_until_it_finishes(h: &Harness) {
    insert(&h.store, &[event("evt_a1", Some("cus_a"), 1)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");
    // Arrives while evt_a1 is being processed.
    insert(
        &h.store,
        &[
            event("evt_a2", Some("cus_a"), 2),
            event("evt_b1", Some("cus_b"), 3),
        ],
    )
    .await;

    let during = h.store.claim_events(1_010, 1_070, 10).await.expect("claim");
    h.store
        .finish_event("evt_a1", 1, EventResult::Processed, 1_020)
        .await
        .expect("finish");
    let after = h.store.claim_events(1_030, 1_090, 10).await.expect("claim");

    assert_eq!(ids(&during), ["evt_b1"]);
    assert_eq!(ids(&after), ["evt_a2"]);
}

async fn events_without_a_customer_are_independent(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_1", None, 1),
            event("evt_2", None, 2),
            event("evt_3", None, 3),
        ],
    )
    .await;

    let first = h.store.claim_events(1_000, 1_060, 2).await.expect("claim");
    let second = h.store.claim_events(1_000, 1_060, 2).await.expect("claim");

    assert_eq!(ids(&first), ["evt_1", "evt_2"]);
    assert_eq!(ids(&second), ["evt_3"]);
}

// ------------------------------------------------------------------ finish

async fn a_failed_event_is_retried_only_from_its_next_attempt_time(h: &Harness) {
    insert(&h.store, &[event("evt_1", Some("cus_a"), 1)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    h.store
        .finish_event(
            "evt_1",
            1,
            EventResult::Retry {
                error: "stripe timed out".to_owned(),
                next_attempt_at: 1_200,
            },
            1_010,
        )
        .await
        .expect("finish");
    let failed = status_of(&h.store, "evt_1").await;
    let too_early = h.store.claim_events(1_199, 1_259, 10).await.expect("claim");
    let due = h.store.claim_events(1_200, 1_260, 10).await.expect("claim");
    h.store
        .finish_event("evt_1", 2, EventResult::Processed, 1_210)
        .await
        .expect("finish");

    assert_eq!(failed.status, EventStatus::Failed);
    assert_eq!(failed.next_attempt_at, Some(1_200));
    assert_eq!(failed.last_error.as_deref(), Some("stripe timed out"));
    assert!(too_early.is_empty());
    assert_eq!(ids(&due), ["evt_1"]);
    assert_eq!(due[0].attempts, 2);
    let done = status_of(&h.store, "evt_1").await;
    assert_eq!(done.status, EventStatus::Processed);
    assert_eq!(done.processed_at, Some(1_210));
    assert_eq!(done.next_attempt_at, None);
    assert_eq!(
        done.last_error.as_deref(),
        Some("stripe timed out"),
        "the last error stays visible after a later success"
    );
}

async fn a_dead_event_is_never_claimed_and_keeps_its_error(h: &Harness) {
    insert(&h.store, &[event("evt_1", Some("cus_a"), 1)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    h.store
        .finish_event(
            "evt_1",
            1,
            EventResult::Dead {
                error: "gave up after 8 attempts".to_owned(),
            },
            1_010,
        )
        .await
        .expect("finish");

    let dead = status_of(&h.store, "evt_1").await;
    assert_eq!(dead.status, EventStatus::Dead);
    assert_eq!(dead.last_error.as_deref(), Some("gave up after 8 attempts"));
    assert_eq!(dead.processed_at, Some(1_010));
    assert_eq!(dead.next_attempt_at, None);
    assert!(h
        .store
        .claim_events(99_999, 100_059, 10)
        .await
        .expect("claim")
        .is_empty());
}

async fn processed_skipped_and_unlinked_events_are_not_claimed(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_p", Some("cus_a"), 1),
            event_of_type(
                "evt_s",
                "radar.early_fraud_warning.created",
                Some("cus_b"),
                2,
            ),
            event("evt_u", Some("cus_unknown"), 3),
        ],
    )
    .await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");

    for (id, result) in [
        ("evt_p", EventResult::Processed),
        ("evt_s", EventResult::Skipped),
        ("evt_u", EventResult::Unlinked),
    ] {
        h.store
            .finish_event(id, 1, result, 1_010)
            .await
            .expect("finish");
    }

    assert_eq!(
        status_of(&h.store, "evt_p").await.status,
        EventStatus::Processed
    );
    let skipped = status_of(&h.store, "evt_s").await;
    assert_eq!(skipped.status, EventStatus::Skipped);
    assert_eq!(skipped.processed_at, Some(1_010));
    let unlinked = status_of(&h.store, "evt_u").await;
    assert_eq!(unlinked.status, EventStatus::Unlinked);
    assert_eq!(unlinked.processed_at, None);
    assert!(h
        .store
        .claim_events(99_999, 100_059, 10)
        .await
        .expect("claim")
        .is_empty());
}

async fn finishing_an_event_that_is_not_processing_is_refused(h: &Harness) {
    insert(&h.store, &[event("evt_1", None, 1)]).await;

    let pending = h
        .store
        .finish_event("evt_1", 0, EventResult::Processed, 10)
        .await;
    let unknown = h
        .store
        .finish_event("evt_nope", 1, EventResult::Processed, 10)
        .await;

    assert!(
        matches!(pending, Err(StoreError::Conflict { .. })),
        "{pending:?}"
    );
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");
    assert_eq!(
        status_of(&h.store, "evt_1").await.status,
        EventStatus::Pending
    );
}

async fn finishing_a_batch_records_every_outcome_and_reports_unclaimed_ids(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_ok", Some("cus_a"), 1),
            event("evt_retry", Some("cus_b"), 2),
            event("evt_dead", Some("cus_c"), 3),
        ],
    )
    .await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");
    insert(&h.store, &[event("evt_unclaimed", None, 4)]).await;

    let finished = h
        .store
        .finish_events(
            &[
                finish("evt_ok", 1, EventResult::Processed),
                finish(
                    "evt_retry",
                    1,
                    EventResult::Retry {
                        error: "rate limited".to_owned(),
                        next_attempt_at: 1_300,
                    },
                ),
                finish(
                    "evt_dead",
                    1,
                    EventResult::Dead {
                        error: "invalid payload".to_owned(),
                    },
                ),
                finish("evt_unclaimed", 0, EventResult::Processed),
                finish("evt_unknown", 1, EventResult::Processed),
            ],
            1_010,
        )
        .await
        .expect("finish batch");

    assert_eq!(finished, [true, true, true, false, false]);
    assert_eq!(
        status_of(&h.store, "evt_ok").await.status,
        EventStatus::Processed
    );
    let retry = status_of(&h.store, "evt_retry").await;
    assert_eq!(retry.status, EventStatus::Failed);
    assert_eq!(retry.next_attempt_at, Some(1_300));
    assert_eq!(
        status_of(&h.store, "evt_dead").await.status,
        EventStatus::Dead
    );
    assert_eq!(
        status_of(&h.store, "evt_unclaimed").await.status,
        EventStatus::Pending
    );
    assert!(h
        .store
        .finish_events(&[], 1_010)
        .await
        .expect("empty")
        .is_empty());
}

// ----------------------------------------------------------------- requeue

async fn requeueing_one_event_makes_it_pending_with_attempts_reset(h: &Harness) {
    insert(&h.store, &[event("evt_1", Some("cus_a"), 1)]).await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");
    h.store
        .finish_event(
            "evt_1",
            1,
            EventResult::Dead {
                error: "boom".to_owned(),
            },
            1_010,
        )
        .await
        .expect("finish");

    let found = h
        .store
        .requeue_event("evt_1", 2_000)
        .await
        .expect("requeue");
    let missing = h
        .store
        .requeue_event("evt_nope", 2_000)
        .await
        .expect("requeue");

    assert!(found);
    assert!(!missing);
    let requeued = status_of(&h.store, "evt_1").await;
    assert_eq!(requeued.status, EventStatus::Pending);
    assert_eq!(requeued.attempts, 0);
    assert_eq!(requeued.processed_at, None);
    assert_eq!(requeued.last_error.as_deref(), Some("boom"));
    let claimed = h.store.claim_events(2_001, 2_061, 10).await.expect("claim");
    assert_eq!(ids(&claimed), ["evt_1"]);
}

async fn requeueing_by_status_touches_only_that_status(h: &Harness) {
    insert(
        &h.store,
        &[
            event("evt_d1", Some("cus_a"), 1),
            event("evt_d2", Some("cus_b"), 2),
            event("evt_ok", Some("cus_c"), 3),
        ],
    )
    .await;
    h.store.claim_events(1_000, 1_060, 10).await.expect("claim");
    for id in ["evt_d1", "evt_d2"] {
        h.store
            .finish_event(
                id,
                1,
                EventResult::Dead {
                    error: "boom".to_owned(),
                },
                1_010,
            )
            .await
            .expect("finish");
    }
    h.store
        .finish_event("evt_ok", 1, EventResult::Processed, 1_010)
        .await
        .expect("finish");

    let requeued = h
        .store
        .requeue_by_status(EventStatus::Dead, 2_000)
        .await
        .expect("requeue");

    assert_eq!(requeued, 2);
    assert_eq!(
        status_of(&h.store, "evt_d1").await.status,
        EventStatus::Pending
    );
    assert_eq!(
        status_of(&h.store, "evt_d2").await.status,
        EventStatus::Pending
    );
    assert_eq!(
        status_of(&h.store, "evt_ok").await.status,
        EventStatus::Processed
    );
}

// ------------------------------------------------------------ list, stats

async fn listing_filters_by_status_and_type_newest_first_with_a_limit(h: &Harness) {
    insert(
        &h.store,
        &[
            event_of_type("evt_1", "invoice.paid", None, 1),
            event_of_type("evt_2", "customer.subscription.updated", None, 2),
            event_of_type("evt_3", "invoice.paid", None, 3),
            event_of_type("evt_4", "invoice.paid", None, 4),
        ],
    )
    .await;
    h.store.claim_events(1_000, 1_060, 1).await.expect("claim");

    let all = h
        .store
        .list_events(&EventFilter::default())
        .await
        .expect("list");
    let paid = h
        .store
        .list_events(&EventFilter {
            event_type: Some("invoice.paid".to_owned()),
            limit: 2,
            ..EventFilter::default()
        })
        .await
        .expect("list");
    let pending_paid = h
        .store
        .list_events(&EventFilter {
            status: Some(EventStatus::Pending),
            event_type: Some("invoice.paid".to_owned()),
            limit: 0,
        })
        .await
        .expect("list");
    let processing = h
        .store
        .list_events(&EventFilter {
            status: Some(EventStatus::Processing),
            ..EventFilter::default()
        })
        .await
        .expect("list");

    assert_eq!(ids(&all), ["evt_4", "evt_3", "evt_2", "evt_1"]);
    assert_eq!(ids(&paid), ["evt_4", "evt_3"]);
    assert_eq!(ids(&pending_paid), ["evt_4", "evt_3"]);
    assert_eq!(ids(&processing), ["evt_1"]);
}

async fn stats_count_every_status_and_the_oldest_waiting_event(h: &Harness) {
    let empty = h.store.inbox_stats().await.expect("stats");
    insert(
        &h.store,
        &[
            event("evt_1", Some("cus_a"), 100),
            event("evt_2", Some("cus_b"), 200),
            event("evt_3", Some("cus_c"), 300),
        ],
    )
    .await;
    h.store.claim_events(1_000, 1_060, 2).await.expect("claim");
    h.store
        .finish_event(
            "evt_1",
            1,
            EventResult::Retry {
                error: "later".to_owned(),
                next_attempt_at: 5_000,
            },
            1_010,
        )
        .await
        .expect("finish");

    let stats = h.store.inbox_stats().await.expect("stats");

    assert_eq!(empty.by_status.len(), EventStatus::ALL.len());
    assert!(empty.by_status.iter().all(|(_, n)| *n == 0));
    assert_eq!(empty.oldest_waiting_received_at, None);
    assert_eq!(count(&stats, EventStatus::Failed), 1);
    assert_eq!(count(&stats, EventStatus::Processing), 1);
    assert_eq!(count(&stats, EventStatus::Pending), 1);
    assert_eq!(count(&stats, EventStatus::Dead), 0);
    // evt_1 (received at 101) failed and waits for its retry.
    assert_eq!(stats.oldest_waiting_received_at, Some(101));
}

// ------------------------------------------------------------- concurrency

async fn two_stores_claiming_in_parallel_never_share_an_event_or_a_customer(h: &Harness) {
    let total: i64 = 300;
    let batch: Vec<NewEvent> = (0..total)
        .map(|n| {
            // 12 customers with many events each, and some events of nobody.
            let customer = (n % 5 != 0).then(|| format!("cus_{}", n % 12));
            event(&format!("evt_{n:04}"), customer.as_deref(), 1_000 + n % 7)
        })
        .collect();
    insert(&h.store, &batch).await;
    let stores = [h.store.clone(), h.another().await];
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let claimed_ever: Arc<Mutex<HashSet<String>>> = Arc::default();

    let workers = stores.into_iter().flat_map(|store| {
        // Two workers per store: claims race within a process and across.
        [store.clone(), store].map(|store| {
            let in_flight = in_flight.clone();
            let claimed_ever = claimed_ever.clone();
            tokio::spawn(async move {
                let mut idle_rounds = 0;
                while idle_rounds < 20 {
                    // A lease far in the future: nothing may be reclaimed.
                    let claimed = store
                        .claim_events(2_000, 1_000_000, 4)
                        .await
                        .expect("claim");
                    if claimed.is_empty() {
                        idle_rounds += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                        continue;
                    }
                    idle_rounds = 0;
                    for event in &claimed {
                        assert!(
                            claimed_ever.lock().expect("lock").insert(event.id.clone()),
                            "{} was claimed twice",
                            event.id
                        );
                        if let Some(customer) = &event.stripe_customer {
                            assert!(
                                in_flight.lock().expect("lock").insert(customer.clone()),
                                "two events of {customer} were processing at once"
                            );
                        }
                    }
                    tokio::task::yield_now().await;
                    for event in claimed {
                        // Released before the finish commits: another claimer
                        // may take the customer's next event right after it.
                        if let Some(customer) = &event.stripe_customer {
                            in_flight.lock().expect("lock").remove(customer);
                        }
                        store
                            .finish_event(&event.id, event.claim, EventResult::Processed, 2_001)
                            .await
                            .expect("finish");
                    }
                }
            })
        })
    });
    let workers: Vec<_> = workers.collect();
    for worker in workers {
        worker.await.expect("worker panicked");
    }

    assert_eq!(claimed_ever.lock().expect("lock").len(), 300);
    let stats = h.store.inbox_stats().await.expect("stats");
    assert_eq!(count(&stats, EventStatus::Processed), total);
}

async fn two_stores_inserting_the_same_events_at_once_store_each_once(h: &Harness) {
    // Stripe retries a delivery while the first attempt is still in flight
    // and the retry reaches another billd process: the same ids arrive in
    // two concurrent batches, in different orders.
    let events: Vec<NewEvent> = (0..400)
        .map(|n| event(&format!("evt_{n:04}"), Some(&format!("cus_{}", n % 9)), n))
        .collect();
    let mut reversed = events.clone();
    reversed.reverse();
    let stores = [h.store.clone(), h.another().await];

    let tasks: Vec<_> = stores
        .into_iter()
        .zip([events, reversed])
        .map(|(store, events)| {
            tokio::spawn(async move {
                let mut inserted = Vec::new();
                for batch in events.chunks(50) {
                    let outcomes = store.insert_events(batch).await.expect("insert");
                    inserted.extend(
                        batch
                            .iter()
                            .zip(outcomes)
                            .filter(|(_, o)| *o == InsertOutcome::Inserted)
                            .map(|(e, _)| e.id.clone()),
                    );
                }
                inserted
            })
        })
        .collect();
    let mut inserted = Vec::new();
    for task in tasks {
        inserted.extend(task.await.expect("task"));
    }

    inserted.sort();
    let expected: Vec<String> = (0..400).map(|n| format!("evt_{n:04}")).collect();
    assert_eq!(
        inserted, expected,
        "every id reported Inserted exactly once"
    );
    let stats = h.store.inbox_stats().await.expect("stats");
    assert_eq!(count(&stats, EventStatus::Pending), 400);
}

// ------------------------------------------------- backend-specific checks

#[tokio::test]
async fn a_postgres_server_that_refuses_connections_is_unavailable() {
    // Port 1 on loopback: nothing listens there.
    let url = "postgres://postgres@127.0.0.1:1/postgres";

    let lazy = PgStore::connect_lazy(url).expect("lazy store");
    let events = [event("evt_1", None, 1)];

    // Both wait out the pool's acquire timeout; wait for them together.
    let (connect_error, insert_error) = tokio::join!(
        async { PgStore::connect(url).await.map(|_| ()) },
        lazy.insert_events(&events)
    );

    assert!(
        matches!(connect_error, Err(StoreError::Unavailable(_))),
        "{connect_error:?}"
    );
    assert!(
        matches!(insert_error, Err(StoreError::Unavailable(_))),
        "{insert_error:?}"
    );
}

#[tokio::test]
async fn a_sqlite_store_keeps_committed_events_after_reopening() {
    let harness = sqlite().await;
    insert(&harness.store, &[event("evt_1", Some("cus_a"), 1)]).await;
    drop(harness.store);

    let reopened = connect(&harness.url).await.expect("reopen");

    assert_eq!(
        status_of(&reopened, "evt_1").await.status,
        EventStatus::Pending
    );
}

#[tokio::test]
async fn an_unknown_database_scheme_is_refused_without_echoing_the_url() {
    let result = connect("mysql://root:hunter2@localhost/billd")
        .await
        .map(|_| ());

    let Err(StoreError::Other(message)) = result else {
        panic!("expected Other, got {result:?}");
    };
    assert!(message.contains("mysql"));
    assert!(!message.contains("hunter2"));
}

#[test]
fn statuses_round_trip_through_their_names() {
    for status in EventStatus::ALL {
        assert_eq!(status.as_str().parse::<EventStatus>(), Ok(status));
    }
    assert!("done".parse::<EventStatus>().is_err());
}

#[tokio::test]
async fn a_postgres_store_does_not_show_its_password_in_debug_output() {
    let store = PgStore::connect_lazy("postgres://billd:hunter2@127.0.0.1:1/billd").expect("lazy");

    let shown = format!("{store:?}");

    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn a_sqlite_file_locked_by_another_writer_past_the_busy_timeout_is_unavailable() {
    use sqlx::{Connection, Executor};

    let harness = sqlite().await;
    let store = SqliteStore::connect_with(
        &harness.url,
        &SqliteOptions {
            busy_timeout: std::time::Duration::from_millis(200),
            ..SqliteOptions::default()
        },
    )
    .await
    .expect("store");
    // Another process holds the write lock and does not let go.
    let mut other = sqlx::SqliteConnection::connect(&harness.url)
        .await
        .expect("other connection");
    other.execute("BEGIN IMMEDIATE").await.expect("lock");

    let result = store.insert_events(&[event("evt_1", None, 1)]).await;

    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    other.execute("ROLLBACK").await.expect("unlock");
    let retried = store.insert_events(&[event("evt_1", None, 1)]).await;
    assert_eq!(
        retried.expect("insert after unlock"),
        [InsertOutcome::Inserted]
    );
}

async fn console_activity_counts_each_bucket_and_tells_webhooks_from_billds_own_events(
    h: &Harness,
) {
    // Received one second after `created` (see `event_of_type`).
    insert(
        &h.store,
        &[
            event_of_type("evt_1", "invoice.paid", Some("cus_a"), 3599),
            event_of_type("evt_2", "invoice.payment_failed", Some("cus_a"), 3600),
            event_of_type(
                "evt_billd_sync_1",
                "customer.subscription.updated",
                None,
                7199,
            ),
            event_of_type("evt_3", "invoice.paid", None, 10_799),
            event_of_type("evt_0", "invoice.paid", None, 3598),
        ],
    )
    .await;
    let buckets = h
        .store
        .activity(3600, 10_800, 3600)
        .await
        .expect("activity");
    let bucket = |start, events, webhooks, failed, succeeded| billd_store::ActivityBucket {
        start,
        events,
        webhooks,
        payments_failed: failed,
        payments_succeeded: succeeded,
        dead: 0,
    };
    assert_eq!(
        buckets,
        [bucket(3600, 2, 2, 1, 1), bucket(7200, 1, 0, 0, 0)],
        "evt_0 arrived before the range and evt_3 at its end"
    );
}

async fn console_lists_merge_received_rows_and_a_customers_two_kinds_of_events_newest_first(
    h: &Harness,
) {
    let ada = billd_core::CustomerId::parse("u_ada").expect("id");
    let cus_ada = billd_core::StripeCustomerId::parse("cus_ada").expect("id");
    h.store
        .link_stripe_customer(&ada, &cus_ada, 1)
        .await
        .expect("link");
    // evt_d1 names no Stripe customer; its object (`in_d1`) is Ada's.
    h.store.link_object("in_d1", &ada, 1).await.expect("link");
    // One at a time: a batch's rows may be stored in another order.
    for stored in [
        event("evt_a1", Some("cus_ada"), 100),
        event("evt_d1", None, 200),
        event("evt_b1", Some("cus_bob"), 300),
        event("evt_a2", Some("cus_ada"), 50),
        event("evt_x1", None, 400),
    ] {
        insert(&h.store, &[stored]).await;
    }
    // Acknowledged, not derived yet: in the newest-first list at its place.
    let received = billd_store::ReceivedEvent {
        id: "evt_r1".into(),
        payload: "{}".into(),
        received_at: 500,
    };
    h.store.receive_events(&[received]).await.expect("receive");
    insert(&h.store, &[event("evt_a3", Some("cus_ada"), 10)]).await;

    let find = |query: billd_store::EventQuery| {
        let store = h.store.clone();
        async move { store.find_events(&query).await.expect("find") }
    };
    let all = find(billd_store::EventQuery::default()).await;
    assert_eq!(
        ids(&all),
        ["evt_a3", "evt_r1", "evt_x1", "evt_a2", "evt_b1", "evt_d1", "evt_a1"],
        "insertion order, newest first, received rows included"
    );
    let newest = find(billd_store::EventQuery {
        limit: 2,
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&newest), ["evt_a3", "evt_r1"]);
    let listed = h
        .store
        .list_events(&EventFilter {
            limit: 3,
            ..EventFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(
        ids(&listed),
        ["evt_a3", "evt_r1", "evt_x1"],
        "the CLI's list"
    );
    let only_received = find(billd_store::EventQuery {
        status: Some(EventStatus::Received),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&only_received), ["evt_r1"]);

    let of_ada = find(billd_store::EventQuery {
        customer_id: Some(ada.clone()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        ids(&of_ada),
        ["evt_a3", "evt_a2", "evt_d1", "evt_a1"],
        "by her Stripe customer and by her linked object, merged newest first"
    );
    let recent = h.store.customer_events(&ada, 3).await.expect("events");
    assert_eq!(ids(&recent), ["evt_a3", "evt_a2", "evt_d1"]);
    let received_of_ada = find(billd_store::EventQuery {
        customer_id: Some(ada.clone()),
        status: Some(EventStatus::Received),
        ..Default::default()
    })
    .await;
    assert!(received_of_ada.is_empty(), "{:?}", ids(&received_of_ada));
    let in_range = find(billd_store::EventQuery {
        customer_id: Some(ada),
        received_from: Some(100),
        received_until: Some(300),
        ..Default::default()
    })
    .await;
    assert_eq!(ids(&in_range), ["evt_d1", "evt_a1"], "in arrival order");
}

async fn console_events_filter_by_arrival_and_operator_actions_and_runs_list_newest_first(
    h: &Harness,
) {
    insert(
        &h.store,
        &[
            event("evt_a", Some("cus_a"), 99),
            event("evt_b", Some("cus_a"), 199),
            event("evt_c", Some("cus_b"), 299),
        ],
    )
    .await;
    let query = billd_store::EventQuery {
        received_from: Some(200),
        received_until: Some(300),
        ..Default::default()
    };
    assert_eq!(
        ids(&h.store.find_events(&query).await.expect("console store")),
        ["evt_b"]
    );
    let query = billd_store::EventQuery {
        event_type: Some("invoice.paid".into()),
        limit: 2,
        ..Default::default()
    };
    assert_eq!(
        ids(&h.store.find_events(&query).await.expect("console store")),
        ["evt_c", "evt_b"]
    );

    let ada = billd_core::CustomerId::parse("u_ada").expect("console store");
    for (action, customer) in [
        ("retry_outbox", None),
        ("resync_customer", Some(ada.clone())),
    ] {
        let row = billd_store::NewOperatorAction {
            actor: "console session 00ff".into(),
            action: action.into(),
            target: "x".into(),
            customer_id: customer,
            outcome: "ok".into(),
        };
        h.store
            .record_operator_action(&row, 500)
            .await
            .expect("console store");
    }
    let all = h
        .store
        .operator_actions(None, 0)
        .await
        .expect("console store");
    let names: Vec<&str> = all.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(names, ["resync_customer", "retry_outbox"]);
    let of_ada = h
        .store
        .operator_actions(Some(&ada), 0)
        .await
        .expect("console store");
    assert_eq!(of_ada.len(), 1);
    assert_eq!(
        (of_ada[0].at, of_ada[0].customer_id.as_deref()),
        (500, Some("u_ada"))
    );

    for drift in [3, 0] {
        let run = billd_store::NewReconcileRun {
            started_at: 600,
            checked: 10,
            drift,
            unlinked: 1,
            ingested: 2,
            report: "{}".into(),
        };
        h.store
            .record_reconcile_run(&run, 700)
            .await
            .expect("console store");
    }
    let runs = h.store.reconcile_runs(1).await.expect("console store");
    assert_eq!(runs.len(), 1);
    assert_eq!((runs[0].drift, runs[0].finished_at), (0, 700));
    assert_eq!(
        h.store
            .reconcile_runs(0)
            .await
            .expect("console store")
            .len(),
        2
    );
}
