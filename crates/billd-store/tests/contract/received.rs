//! The lean ingest: a webhook is acknowledged once `receive_events` has
//! durably stored its id and body; the worker derives the rest
//! (`derive_events`) before it claims.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::collections::BTreeMap;
use std::sync::Arc;

use billd_store::{
    Derived, EventFilter, EventStatus, InsertOutcome, NewEvent, ReceivedEvent, Store,
};

use super::{event, insert, Harness};

macro_rules! received_contract {
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

received_contract!(
    a_received_event_is_stored_once_and_shows_as_received_until_derived,
    derived_events_become_pending_with_their_columns_and_are_claimed_in_created_order,
    received_events_are_durable_for_a_store_opened_afterwards,
    two_stores_receiving_and_deriving_the_same_events_store_and_derive_each_once,
    derive_and_claim_claims_what_it_derives_in_the_same_call_up_to_the_cap_on_events,
    derive_and_claim_leaves_a_new_event_of_a_customer_under_lease_pending,
    a_young_inbox_is_analysed_once_it_outgrows_its_statistics,
);

/// `event`'s row as the webhook acknowledges it.
fn received(event: &NewEvent) -> ReceivedEvent {
    ReceivedEvent {
        id: event.id.clone(),
        payload: event.payload.clone(),
        received_at: event.received_at,
    }
}

async fn counts(store: &Arc<dyn Store>) -> BTreeMap<&'static str, i64> {
    store
        .inbox_stats()
        .await
        .unwrap()
        .by_status
        .into_iter()
        .filter(|(_, n)| *n != 0)
        .map(|(status, n)| (status.as_str(), n))
        .collect()
}

async fn a_received_event_is_stored_once_and_shows_as_received_until_derived(h: &Harness) {
    let derived_before = event("evt_old", Some("cus_1"), 5);
    insert(&h.store, std::slice::from_ref(&derived_before)).await;
    let a = event("evt_a", Some("cus_1"), 10);
    let b = event("evt_b", None, 11);

    let outcomes = h
        .store
        .receive_events(&[received(&a), received(&b), received(&a)])
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        [
            InsertOutcome::Inserted,
            InsertOutcome::Inserted,
            InsertOutcome::Duplicate
        ]
    );
    // Already stored: received, or derived (by the full insert).
    let again = h
        .store
        .receive_events(&[received(&b), received(&derived_before)])
        .await
        .unwrap();
    assert_eq!(again, [InsertOutcome::Duplicate, InsertOutcome::Duplicate]);
    assert_eq!(
        h.store
            .insert_events(std::slice::from_ref(&a))
            .await
            .unwrap(),
        [InsertOutcome::Duplicate]
    );

    let stored = h.store.get_event("evt_a").await.unwrap().unwrap();
    assert_eq!(stored.status, EventStatus::Received);
    assert_eq!(stored.payload, a.payload);
    assert_eq!(stored.received_at, a.received_at);
    assert_eq!(
        (
            stored.event_type.as_str(),
            stored.created,
            &stored.stripe_customer
        ),
        ("", 0, &None),
        "nothing derived yet"
    );
    let listed = h
        .store
        .list_events(&EventFilter {
            status: Some(EventStatus::Received),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["evt_b", "evt_a"]
    );
    let queue = h.store.received_events(10).await.unwrap();
    assert_eq!(queue, [received(&a), received(&b)], "oldest first");
    assert_eq!(
        counts(&h.store).await,
        BTreeMap::from([("pending", 1), ("received", 2)])
    );
    let stats = h.store.inbox_stats().await.unwrap();
    assert_eq!(
        stats.oldest_waiting_received_at,
        Some(derived_before.received_at)
    );
    // Not claimable before it is derived.
    let claimed = h.store.claim_events(100, 130, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["evt_old"]
    );
}

async fn derived_events_become_pending_with_their_columns_and_are_claimed_in_created_order(
    h: &Harness,
) {
    // Received in the opposite order of `created`.
    let events: Vec<NewEvent> = (0..5)
        .map(|n| event(&format!("evt_{n}"), Some("cus_1"), 50 - n))
        .collect();
    let rows: Vec<ReceivedEvent> = events.iter().map(received).collect();
    h.store.receive_events(&rows).await.unwrap();
    let mut derived: Vec<Derived> = events[..4].iter().cloned().map(Derived::Event).collect();
    derived.push(Derived::Invalid {
        id: "evt_4".to_owned(),
        error: "payload_invalid: not a JSON Stripe event".to_owned(),
    });

    assert_eq!(h.store.derive_events(&derived, 900).await.unwrap(), 5);
    // Deriving again changes nothing.
    assert_eq!(h.store.derive_events(&derived, 901).await.unwrap(), 0);

    assert!(h.store.received_events(10).await.unwrap().is_empty());
    let stored = h.store.get_event("evt_1").await.unwrap().unwrap();
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.event_type, events[1].event_type);
    assert_eq!(stored.api_version, events[1].api_version);
    assert_eq!(stored.created, events[1].created);
    assert_eq!(stored.object_id, events[1].object_id);
    assert_eq!(stored.stripe_customer, events[1].stripe_customer);
    assert_eq!(stored.payload, events[1].payload);
    let dead = h.store.get_event("evt_4").await.unwrap().unwrap();
    assert_eq!(dead.status, EventStatus::Dead);
    assert_eq!(
        dead.last_error.as_deref(),
        Some("payload_invalid: not a JSON Stripe event")
    );
    assert_eq!(dead.processed_at, Some(900));
    assert_eq!(
        counts(&h.store).await,
        BTreeMap::from([("dead", 1), ("pending", 4)])
    );
    let by_type = h
        .store
        .list_events(&EventFilter {
            event_type: Some("invoice.paid".to_owned()),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(by_type.len(), 4);

    let claimed = h
        .store
        .claim_event_batches(
            1_000,
            1_030,
            billd_store::ClaimLimits {
                groups: 4,
                per_customer: 10,
                events: u32::MAX,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["evt_3", "evt_2", "evt_1", "evt_0"],
        "oldest created first, one customer's batch"
    );
}

async fn received_events_are_durable_for_a_store_opened_afterwards(h: &Harness) {
    let events: Vec<NewEvent> = (0..100)
        .map(|n| event(&format!("evt_{n:03}"), Some(&format!("cus_{}", n % 7)), n))
        .collect();
    let rows: Vec<ReceivedEvent> = events.iter().map(received).collect();
    let outcomes = h.store.receive_events(&rows).await.unwrap();
    assert!(outcomes.iter().all(|o| *o == InsertOutcome::Inserted));

    // Every acknowledged row is committed: another store (a new process,
    // new connections) reads all of them, and dedupes against them.
    let later = h.another().await;
    assert_eq!(later.received_events(1_000).await.unwrap(), rows);
    let again = later.receive_events(&rows[..10]).await.unwrap();
    assert!(again.iter().all(|o| *o == InsertOutcome::Duplicate));
}

async fn two_stores_receiving_and_deriving_the_same_events_store_and_derive_each_once(h: &Harness) {
    let events: Vec<NewEvent> = (0..300)
        .map(|n| event(&format!("evt_{n:03}"), Some(&format!("cus_{}", n % 11)), n))
        .collect();
    let stores = [h.store.clone(), h.another().await];
    let mut tasks = Vec::new();
    for (which, store) in stores.iter().enumerate() {
        let (store, events) = (store.clone(), events.clone());
        tasks.push(tokio::spawn(async move {
            let mut inserted = 0;
            // The two stores walk the events in opposite orders, in
            // batches of 30, deriving what is received after each.
            let mut order: Vec<&NewEvent> = events.iter().collect();
            if which == 1 {
                order.reverse();
            }
            for chunk in order.chunks(30) {
                let rows: Vec<ReceivedEvent> = chunk.iter().map(|e| received(e)).collect();
                let outcomes = store.receive_events(&rows).await.unwrap();
                inserted += outcomes
                    .iter()
                    .filter(|o| **o == InsertOutcome::Inserted)
                    .count();
                let queue = store.received_events(1_000).await.unwrap();
                let derived: Vec<Derived> = queue
                    .iter()
                    .map(|row| {
                        let event = events.iter().find(|e| e.id == row.id).unwrap();
                        Derived::Event(event.clone())
                    })
                    .collect();
                store.derive_events(&derived, 500).await.unwrap();
            }
            inserted
        }));
    }
    let mut inserted = 0;
    for task in tasks {
        inserted += task.await.unwrap();
    }

    assert_eq!(inserted, 300, "each event stored by exactly one store");
    assert!(h.store.received_events(1_000).await.unwrap().is_empty());
    assert_eq!(counts(&h.store).await, BTreeMap::from([("pending", 300)]));
    let pending = h
        .store
        .list_events(&EventFilter {
            status: Some(EventStatus::Pending),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(pending.len(), 300);
    assert!(pending
        .iter()
        .all(|e| e.event_type == "invoice.paid" && e.stripe_customer.is_some()));
}

/// The version of the lean-ingest migration.
const LEAN_MIGRATION: i64 = 20_261_207_000_000;

/// Migrates `url` up to (not including) the lean ingest, stores events the
/// way billd did before it, then migrates the rest: the old rows keep every
/// column, count and claim.
async fn events_stored_before_the_lean_migration_stay_valid(url: &str, dir: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut before = sqlx::migrate::Migrator::new(path).await.unwrap();
    before.migrations = before
        .migrations
        .iter()
        .filter(|m| m.version < LEAN_MIGRATION)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    let old_insert = "INSERT INTO stripe_events \
        (id, type, api_version, created, object_id, stripe_customer, payload, received_at) \
        VALUES ($1, 'invoice.paid', NULL, $2, NULL, $3, '{}', $2)";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap();
        before.run(&pool).await.unwrap();
        for (id, created, customer) in [("evt_o1", 7, Some("cus_o")), ("evt_o2", 3, None)] {
            sqlx::query(old_insert)
                .bind(id)
                .bind(created)
                .bind(customer)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        before.run(&pool).await.unwrap();
        for (id, created, customer) in [("evt_o1", 7_i64, Some("cus_o")), ("evt_o2", 3, None)] {
            sqlx::query(old_insert)
                .bind(id)
                .bind(created)
                .bind(customer)
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    }

    let store = billd_store::connect(url).await.unwrap();
    store.migrate().await.unwrap();

    let old = store.get_event("evt_o1").await.unwrap().unwrap();
    assert_eq!(old.status, EventStatus::Pending);
    assert_eq!(
        (
            old.event_type.as_str(),
            old.created,
            old.stripe_customer.as_deref()
        ),
        ("invoice.paid", 7, Some("cus_o"))
    );
    assert_eq!(counts(&store).await, BTreeMap::from([("pending", 2)]));
    let new = event("evt_n1", None, 1);
    store.receive_events(&[received(&new)]).await.unwrap();
    store
        .derive_events(&[Derived::Event(new)], 10)
        .await
        .unwrap();
    let claimed = store.claim_events(100, 130, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["evt_n1", "evt_o2", "evt_o1"]
    );
    assert_eq!(counts(&store).await, BTreeMap::from([("processing", 3)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_the_lean_migration_stay_valid_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("old.db").display());
    events_stored_before_the_lean_migration_stay_valid(&url, "migrations/sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stored_before_the_lean_migration_stay_valid_on_postgres() {
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap();
    events_stored_before_the_lean_migration_stay_valid(&url, "migrations/postgres").await;
}

async fn derive_and_claim_claims_what_it_derives_in_the_same_call_up_to_the_cap_on_events(
    h: &Harness,
) {
    // Six customers, received newest first.
    let events: Vec<NewEvent> = (0..6)
        .map(|n| event(&format!("evt_{n}"), Some(&format!("cus_{n}")), 60 - n))
        .collect();
    let rows: Vec<ReceivedEvent> = events.iter().map(received).collect();
    h.store.receive_events(&rows).await.unwrap();
    let derived: Vec<Derived> = events.iter().cloned().map(Derived::Event).collect();
    let limits = billd_store::ClaimLimits {
        groups: 100,
        per_customer: 10,
        events: 4,
    };

    let first = h
        .store
        .derive_and_claim(&derived, 1_000, 1_030, limits)
        .await
        .unwrap();

    assert_eq!(first.derived, 6);
    assert_eq!(
        first
            .claimed
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        ["evt_5", "evt_4", "evt_3", "evt_2"],
        "oldest created first, four events in all"
    );
    assert!(first
        .claimed
        .iter()
        .all(|e| e.status == EventStatus::Processing && e.claim == 1));
    // What the claim hands over is what it stored.
    for claimed in &first.claimed {
        let stored = h.store.get_event(&claimed.id).await.unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&stored).unwrap(),
            serde_json::to_value(claimed).unwrap(),
            "{}",
            claimed.id
        );
    }
    assert!(h.store.received_events(10).await.unwrap().is_empty());
    // Nothing left to derive; the rest is claimed.
    let second = h
        .store
        .derive_and_claim(&[], 1_000, 1_030, limits)
        .await
        .unwrap();
    assert_eq!(second.derived, 0);
    assert_eq!(
        second
            .claimed
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>(),
        ["evt_1", "evt_0"]
    );
}

async fn derive_and_claim_leaves_a_new_event_of_a_customer_under_lease_pending(h: &Harness) {
    let limits = billd_store::ClaimLimits {
        groups: 100,
        per_customer: 10,
        events: 100,
    };
    let derive_and_claim = |events: &[&NewEvent], now: i64| {
        let rows: Vec<ReceivedEvent> = events.iter().map(|e| received(e)).collect();
        let derived: Vec<Derived> = events.iter().map(|&e| Derived::Event(e.clone())).collect();
        let store = h.store.clone();
        async move {
            store.receive_events(&rows).await.unwrap();
            let claim = store
                .derive_and_claim(&derived, now, now + 30, limits)
                .await
                .unwrap();
            claim.claimed.into_iter().map(|e| e.id).collect::<Vec<_>>()
        }
    };
    let leased = event("evt_leased", Some("cus_busy"), 10);
    assert_eq!(derive_and_claim(&[&leased], 1_000).await, ["evt_leased"]);

    // While its lease lasts, the customer's new event is derived but not
    // claimed; another customer's is.
    let later = event("evt_later", Some("cus_busy"), 20);
    let other = event("evt_other", Some("cus_free"), 30);
    assert_eq!(
        derive_and_claim(&[&later, &other], 1_010).await,
        ["evt_other"]
    );
    let waiting = h.store.get_event("evt_later").await.unwrap().unwrap();
    assert_eq!((waiting.status, waiting.claim), (EventStatus::Pending, 0));

    // Once the lease ended, both of that customer's events are claimed
    // together, in created order, with a new event of theirs.
    let newest = event("evt_newest", Some("cus_busy"), 40);
    assert_eq!(
        derive_and_claim(&[&newest], 1_031).await,
        ["evt_leased", "evt_later", "evt_newest"]
    );
}

/// On PostgreSQL a new inbox's statistics (and its indexes', built empty)
/// say it is empty until analysed; once more rows changed than the last
/// analysis saw (and at least the floor), `refresh_statistics` analyses
/// it, and then not again until it changes as much once more. SQLite has
/// nothing to refresh.
async fn a_young_inbox_is_analysed_once_it_outgrows_its_statistics(h: &Harness) {
    use sqlx::Connection;

    let rows: Vec<ReceivedEvent> = (0..1_500)
        .map(|i| received(&event(&format!("evt_stat_{i}"), Some("cus_1"), i)))
        .collect();
    if h.store.backend() == billd_store::Backend::Sqlite {
        h.store.receive_events(&rows).await.unwrap();
        assert!(h.store.refresh_statistics().await.unwrap().is_empty());
        return;
    }
    let mut db = sqlx::PgConnection::connect(&h.url).await.unwrap();
    // Autovacuum, free to analyse the table at any moment of the test,
    // would reset the change count the assertions below read.
    sqlx::query("ALTER TABLE stripe_events SET (autovacuum_enabled = false)")
        .execute(&mut db)
        .await
        .unwrap();
    const PKEY_ROWS: &str = "SELECT reltuples FROM pg_class WHERE relname = 'stripe_events_pkey'";
    let built: f32 = sqlx::query_scalar(PKEY_ROWS)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(built < 1.0, "built empty: {built}");
    // Below the floor (and once the change counts have arrived): left
    // alone.
    h.store.receive_events(&rows[..100]).await.unwrap();
    changes_counted(&mut db, 100).await;
    let small = h.store.refresh_statistics().await.unwrap();
    assert!(!small.iter().any(|t| t == "stripe_events"), "{small:?}");
    h.store.receive_events(&rows[100..]).await.unwrap();
    changes_counted(&mut db, 1_500).await;
    let analysed = h.store.refresh_statistics().await.unwrap();
    assert!(
        analysed.iter().any(|t| t == "stripe_events"),
        "the inbox was never analysed: {analysed:?}"
    );
    let analysed_rows: f32 = sqlx::query_scalar(PKEY_ROWS)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(analysed_rows >= 1_500.0, "{analysed_rows}");
    // From a small sample: the ids' histogram has the refresh's target of
    // buckets, not the server's default of 100.
    let buckets: i32 = sqlx::query_scalar(
        "SELECT array_length(histogram_bounds::text::text[], 1) - 1 FROM pg_stats \
         WHERE schemaname = current_schema() AND tablename = 'stripe_events' \
           AND attname = 'id'",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!(buckets, billd_store::STATISTICS_TARGET);
    // Analysed now: the next look leaves it alone.
    let again = h.store.refresh_statistics().await.unwrap();
    assert!(!again.iter().any(|t| t == "stripe_events"), "{again:?}");

    // A role that does not own the tables (it could not analyse them)
    // leaves them alone, however much they changed.
    let more: Vec<ReceivedEvent> = (1_500..4_000)
        .map(|i| received(&event(&format!("evt_stat_{i}"), Some("cus_1"), i)))
        .collect();
    h.store.receive_events(&more).await.unwrap();
    changes_counted(&mut db, 2_500).await;
    let options: sqlx::postgres::PgConnectOptions = h.url.parse().unwrap();
    let database = options.get_database().unwrap().to_owned();
    let role = format!("{database}_reader");
    for statement in [
        format!("CREATE ROLE \"{role}\" LOGIN"),
        format!("GRANT SELECT ON ALL TABLES IN SCHEMA public TO \"{role}\""),
    ] {
        sqlx::query(&statement).execute(&mut db).await.unwrap();
    }
    let reader_url = format!(
        "postgres://{role}@{}:{}/{database}",
        options.get_host(),
        options.get_port()
    );
    let reader = billd_store::connect(&reader_url).await.unwrap();
    let as_reader = reader.refresh_statistics().await.unwrap();
    assert!(as_reader.is_empty(), "{as_reader:?}");
    // The owner still sees the table due.
    let as_owner = h.store.refresh_statistics().await.unwrap();
    assert!(
        as_owner.iter().any(|t| t == "stripe_events"),
        "{as_owner:?}"
    );
    drop(reader);
    for statement in [
        format!("DROP OWNED BY \"{role}\""),
        format!("DROP ROLE \"{role}\""),
    ] {
        let _ = sqlx::query(&statement).execute(&mut db).await;
    }
}

/// Waits until PostgreSQL's statistics count at least `changes` row changes
/// of `stripe_events` since its last analysis (a backend reports its counts
/// up to ten seconds after its commits).
async fn changes_counted(db: &mut sqlx::PgConnection, changes: i64) {
    for _ in 0..300 {
        let counted: i64 = sqlx::query_scalar(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = 'stripe_events'",
        )
        .fetch_one(&mut *db)
        .await
        .unwrap();
        if counted >= changes {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("PostgreSQL never counted {changes} changes of stripe_events");
}
