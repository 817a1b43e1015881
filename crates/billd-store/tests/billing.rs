//! The billing contract: customers, object links, the audit log, the
//! outbox, usage counters and `commit_event`. Each test runs against SQLite
//! (a file in a temp dir) and PostgreSQL (a fresh database on the server
//! named by `BILLD_TEST_POSTGRES_URL`, which `scripts/test.sh` starts).

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::sync::Arc;

use billd_core::state::StripeCustomerLink;
use billd_core::{
    AlertKind, AuditEntry, CustomerId, CustomerState, Effect, FeatureName, StripeCustomerId,
    UsageKey,
};
use billd_store::{
    BillingStore, CustomerCommit, CustomerProfile, EventResult, EventStatus, NewEvent,
    NewOutboxItem, OutboxFilter, OutboxResult, OutboxStatus, PgStore, SqliteStore, Store,
    StoreError, UsageOutcome, UsageRequest, IDEMPOTENCY_CONFLICT, LEASE_CONFLICT,
    OUTBOX_LEASE_CONFLICT, VERSION_CONFLICT,
};
use tempfile::TempDir;

const NOW: i64 = 1_800_000_000;

/// A store under test, seen through both traits, plus what keeps it alive.
struct Harness {
    store: Arc<dyn Store>,
    billing: Arc<dyn BillingStore>,
    /// Opens another, independent store on the same database.
    url: String,
    _dir: Option<TempDir>,
}

impl Harness {
    /// Another, independent store on the same database, as a checkout store.
    async fn another_checkout(&self) -> Arc<dyn Store> {
        if self.url.starts_with("sqlite:") {
            Arc::new(
                SqliteStore::connect(&self.url)
                    .await
                    .expect("sqlite reopens"),
            )
        } else {
            Arc::new(
                PgStore::connect(&self.url)
                    .await
                    .expect("postgres reconnects"),
            )
        }
    }

    async fn another(&self) -> Arc<dyn BillingStore> {
        if self.url.starts_with("sqlite:") {
            Arc::new(
                SqliteStore::connect(&self.url)
                    .await
                    .expect("sqlite reopens"),
            )
        } else {
            Arc::new(
                PgStore::connect(&self.url)
                    .await
                    .expect("postgres reconnects"),
            )
        }
    }
}

async fn sqlite() -> Harness {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("billd.db").display());
    let store = Arc::new(
        SqliteStore::connect(&url)
            .await
            .expect("sqlite store opens"),
    );
    store.migrate().await.expect("sqlite migrations apply");
    Harness {
        store: store.clone(),
        billing: store,
        url,
        _dir: Some(dir),
    }
}

async fn postgres() -> Harness {
    let url = billd_store::testing::fresh_postgres_database()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
    let store = Arc::new(
        PgStore::connect(&url)
            .await
            .expect("postgres store connects"),
    );
    store.migrate().await.expect("postgres migrations apply");
    Harness {
        store: store.clone(),
        billing: store,
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
    upserting_a_customer_creates_it_then_updates_only_its_profile,
    an_unknown_customer_reads_as_none,
    a_committed_state_is_read_back_with_the_next_version,
    a_commit_at_a_stale_version_is_a_version_conflict_and_writes_nothing,
    of_concurrent_commits_at_one_version_exactly_one_wins,
    commit_event_writes_state_audit_outbox_links_and_finishes_the_event,
    commit_event_for_an_event_not_under_lease_writes_nothing,
    commit_event_with_a_version_conflict_leaves_the_event_claimed,
    commit_event_without_a_customer_only_finishes_the_event,
    commit_event_under_a_claim_that_was_superseded_writes_nothing,
    commit_events_applies_a_batch_in_one_transaction_or_writes_nothing,
    a_round_of_several_customers_keeps_each_commits_guards_and_order,
    an_effect_decided_twice_is_one_outbox_row,
    an_outbox_row_is_claimed_retried_and_sent,
    an_outbox_row_that_fails_for_good_is_dead_until_requeued,
    two_stores_never_claim_the_same_outbox_row,
    a_late_outbox_finish_after_a_reclaim_is_refused_and_the_reclaim_decides,
    a_renewed_outbox_lease_keeps_the_row_from_being_reclaimed,
    a_stripe_customer_links_to_one_customer_only,
    a_deleted_stripe_customer_is_unlinked_but_still_finds_its_customer,
    many_customers_read_in_one_call_read_as_one_at_a_time,
    an_object_keeps_the_customer_it_was_first_linked_to,
    requeue_unlinked_puts_back_the_matching_and_the_customerless_parked_events,
    the_audit_log_lists_a_customers_rows_newest_first,
    consume_adds_within_the_limit_and_refuses_beyond_it,
    a_repeated_idempotency_key_returns_the_first_answer,
    an_idempotency_key_reused_for_another_request_is_a_conflict,
    concurrent_consumers_never_exceed_the_limit,
    a_consume_batch_answers_each_request_as_alone_and_keeps_only_what_was_applied,
    release_lowers_a_capacity_counter_never_below_zero,
    metered_usage_is_counted_per_period,
    deleting_a_customer_erases_its_profile_and_keeps_its_history,
    customers_are_listed_in_id_order_page_by_page,
    outbox_stats_count_rows_per_status_and_the_oldest_waiting,
);

fn customer(raw: &str) -> CustomerId {
    CustomerId::parse(raw).expect("valid customer id")
}

fn stripe(raw: &str) -> StripeCustomerId {
    StripeCustomerId::parse(raw).expect("valid stripe customer id")
}

fn profile(id: &str, email: &str) -> CustomerProfile {
    CustomerProfile {
        customer_id: customer(id),
        email: Some(email.to_owned()),
        name: Some("Ada".to_owned()),
        preferred_currency: Some("eur".to_owned()),
    }
}

/// A state that knows one Stripe customer, so that it differs from the default.
fn state_with(stripe_id: &str, deleted: bool) -> CustomerState {
    let mut state = CustomerState::default();
    state.stripe_customers.insert(
        stripe(stripe_id),
        StripeCustomerLink {
            created: Some(NOW - 100),
            deleted,
            ..StripeCustomerLink::default()
        },
    );
    state.applied_facts.insert(format!("fact:{stripe_id}"));
    state
}

fn audit(field: &str, reason: &str) -> AuditEntry {
    AuditEntry {
        field: field.to_owned(),
        before: Some("none".to_owned()),
        after: Some("active".to_owned()),
        reason: reason.to_owned(),
        event_type: "customer.subscription.updated".to_owned(),
        at: NOW,
    }
}

fn alert(dedupe_key: &str) -> NewOutboxItem {
    NewOutboxItem::from_effect(&Effect::AdminAlert {
        alert: AlertKind::DisputeOpened,
        dedupe_key: dedupe_key.to_owned(),
        message: "dispute opened".to_owned(),
    })
    .expect("effect encodes")
}

fn commit(id: &str, expected_version: i64, state: CustomerState) -> CustomerCommit {
    CustomerCommit {
        customer_id: customer(id),
        expected_version,
        state,
        audit: Vec::new(),
        outbox: Vec::new(),
        links: Vec::new(),
    }
}

fn event(id: &str, stripe_customer: Option<&str>, object_id: Option<&str>) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        event_type: "customer.subscription.updated".to_owned(),
        api_version: Some("2026-09-30.endive".to_owned()),
        created: NOW - 10,
        object_id: object_id.map(str::to_owned),
        stripe_customer: stripe_customer.map(str::to_owned),
        payload: "{}".to_owned(),
        received_at: NOW - 5,
    }
}

/// Inserts one event and claims it, as the inbox worker does.
async fn claimed(h: &Harness, id: &str) {
    h.store
        .insert_events(&[event(id, Some("cus_claimed"), None)])
        .await
        .expect("event inserted");
    let claimed = h
        .store
        .claim_events(NOW, NOW + 60, 10)
        .await
        .expect("claim");
    assert!(claimed.iter().any(|e| e.id == id), "{id} claimed");
}

fn usage(id: &str, feature: &str, period: Option<i64>, amount: u64, key: &str) -> UsageRequest {
    UsageRequest {
        customer_id: customer(id),
        key: UsageKey {
            feature: FeatureName::parse(feature).expect("valid feature"),
            period_start: period,
        },
        amount,
        idempotency_key: key.to_owned(),
        overage: None,
        credits: None,
    }
}

fn used(outcome: UsageOutcome) -> u64 {
    match outcome {
        UsageOutcome::Applied { used, .. } | UsageOutcome::LimitExceeded { used, .. } => used,
    }
}

fn is_conflict(error: &StoreError, constraint: &str) -> bool {
    matches!(error, StoreError::Conflict { constraint: c } if c == constraint)
}

async fn upserting_a_customer_creates_it_then_updates_only_its_profile(h: &Harness) {
    let first = h
        .billing
        .upsert_customer(&profile("user_1", "a@example.com"), NOW)
        .await
        .unwrap();
    h.billing
        .commit_customer(&commit("user_1", 0, state_with("cus_1", false)), NOW + 1)
        .await
        .unwrap();

    let second = h
        .billing
        .upsert_customer(&profile("user_1", "b@example.com"), NOW + 2)
        .await
        .unwrap();

    assert!(first.created);
    assert_eq!(first.customer.version, 0);
    assert_eq!(first.customer.state, CustomerState::default());
    assert!(!second.created);
    assert_eq!(second.customer.email.as_deref(), Some("b@example.com"));
    assert_eq!(second.customer.preferred_currency.as_deref(), Some("eur"));
    assert_eq!(second.customer.created_at, NOW);
    assert_eq!(second.customer.updated_at, NOW + 2);
    assert_eq!(
        second.customer.version, 1,
        "a profile update keeps the version"
    );
    assert_eq!(second.customer.state, state_with("cus_1", false));
    assert_eq!(second.customer.stripe_customer_id, Some(stripe("cus_1")));
}

async fn an_unknown_customer_reads_as_none(h: &Harness) {
    let found = h.billing.get_customer(&customer("nobody")).await.unwrap();
    let by_stripe = h
        .billing
        .find_customer_by_stripe(&stripe("cus_nobody"))
        .await
        .unwrap();
    let by_object = h
        .billing
        .find_customer_by_object("sub_nobody")
        .await
        .unwrap();

    assert_eq!(found, None);
    assert_eq!(by_stripe, None);
    assert_eq!(by_object, None);
}

async fn a_committed_state_is_read_back_with_the_next_version(h: &Harness) {
    let state = state_with("cus_2", false);

    let first = h
        .billing
        .commit_customer(&commit("user_2", 0, state.clone()), NOW)
        .await
        .unwrap();
    let second = h
        .billing
        .commit_customer(&commit("user_2", 1, state.clone()), NOW + 1)
        .await
        .unwrap();
    let stored = h
        .billing
        .get_customer(&customer("user_2"))
        .await
        .unwrap()
        .unwrap();

    assert_eq!(first.version, Some(1));
    assert_eq!(second.version, Some(2));
    assert_eq!(stored.version, 2);
    assert_eq!(stored.state, state);
    assert_eq!(stored.updated_at, NOW + 1);
}

async fn a_commit_at_a_stale_version_is_a_version_conflict_and_writes_nothing(h: &Harness) {
    h.billing
        .commit_customer(&commit("user_3", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let mut stale = commit("user_3", 0, state_with("cus_3", false));
    stale.audit.push(audit("status", "evt_stale"));
    stale.outbox.push(alert("stale_alert"));

    let error = h
        .billing
        .commit_customer(&stale, NOW + 1)
        .await
        .unwrap_err();

    assert!(is_conflict(&error, VERSION_CONFLICT), "{error:?}");
    let stored = h
        .billing
        .get_customer(&customer("user_3"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 1);
    assert_eq!(stored.state, CustomerState::default());
    assert!(h
        .billing
        .list_audit(&customer("user_3"), 0)
        .await
        .unwrap()
        .is_empty());
    assert!(h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .is_empty());
}

async fn of_concurrent_commits_at_one_version_exactly_one_wins(h: &Harness) {
    h.billing
        .commit_customer(&commit("user_20", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let other = h.another().await;

    let mut tasks = Vec::new();
    for n in 0..12 {
        let store = if n % 2 == 0 {
            h.billing.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut next = commit("user_20", 1, state_with(&format!("cus_20_{n}"), false));
            next.audit.push(audit("writer", &format!("evt_{n}")));
            store.commit_customer(&next, NOW + 1).await
        }));
    }
    let mut won = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(receipt) => {
                assert_eq!(receipt.version, Some(2));
                won += 1;
            }
            Err(error) if is_conflict(&error, VERSION_CONFLICT) => {}
            // SQLite's second connection may time out on the file lock.
            Err(StoreError::Unavailable(_)) => {}
            Err(error) => panic!("unexpected error {error:?}"),
        }
    }

    assert_eq!(won, 1);
    let stored = h
        .billing
        .get_customer(&customer("user_20"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 2);
    let rows = h.billing.list_audit(&customer("user_20"), 0).await.unwrap();
    assert_eq!(rows.len(), 1, "only the winner's audit row is written");
    let winner = rows[0].reason.trim_start_matches("evt_");
    assert_eq!(
        stored.stripe_customer_id,
        Some(stripe(&format!("cus_20_{winner}")))
    );
}

async fn commit_event_writes_state_audit_outbox_links_and_finishes_the_event(h: &Harness) {
    claimed(h, "evt_commit").await;
    let mut full = commit("user_4", 0, state_with("cus_4", false));
    full.audit
        .push(audit("subscription.sub_4.status", "evt_commit"));
    full.outbox.push(alert("dispute_opened:dp_4"));
    full.links.push("sub_4".to_owned());

    let receipt = h
        .billing
        .commit_event("evt_commit", 1, Some(&full), &EventResult::Processed, NOW)
        .await
        .unwrap();

    assert_eq!(receipt.version, Some(1));
    assert_eq!(receipt.outbox_inserted, 1);
    let event = h.store.get_event("evt_commit").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Processed);
    assert_eq!(event.processed_at, Some(NOW));
    let stored = h
        .billing
        .get_customer(&customer("user_4"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, full.state);
    assert_eq!(stored.stripe_customer_id, Some(stripe("cus_4")));
    let rows = h.billing.list_audit(&customer("user_4"), 0).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].field, "subscription.sub_4.status");
    assert_eq!(rows[0].before.as_deref(), Some("none"));
    assert_eq!(rows[0].after.as_deref(), Some("active"));
    assert_eq!(rows[0].reason, "evt_commit");
    let outbox = h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].kind, "admin_alert");
    assert_eq!(outbox[0].customer_id, Some(customer("user_4")));
    assert_eq!(outbox[0].status, OutboxStatus::Pending);
    assert!(matches!(
        outbox[0].effect().unwrap(),
        Effect::AdminAlert { .. }
    ));
    assert_eq!(
        h.billing.find_customer_by_object("sub_4").await.unwrap(),
        Some(customer("user_4"))
    );
    assert_eq!(
        h.billing
            .find_customer_by_stripe(&stripe("cus_4"))
            .await
            .unwrap(),
        Some(customer("user_4"))
    );
}

async fn commit_event_for_an_event_not_under_lease_writes_nothing(h: &Harness) {
    h.store
        .insert_events(&[event("evt_unclaimed", None, None)])
        .await
        .unwrap();
    let mut full = commit("user_5", 0, state_with("cus_5", false));
    full.audit.push(audit("status", "evt_unclaimed"));
    full.outbox.push(alert("alert_5"));
    full.links.push("sub_5".to_owned());

    let error = h
        .billing
        .commit_event(
            "evt_unclaimed",
            0,
            Some(&full),
            &EventResult::Processed,
            NOW,
        )
        .await
        .unwrap_err();
    let unknown = h
        .billing
        .commit_event("evt_missing", 1, None, &EventResult::Processed, NOW)
        .await
        .unwrap_err();

    assert!(is_conflict(&error, LEASE_CONFLICT), "{error:?}");
    assert!(matches!(unknown, StoreError::NotFound), "{unknown:?}");
    assert_eq!(
        h.billing.get_customer(&customer("user_5")).await.unwrap(),
        None
    );
    assert_eq!(
        h.billing.find_customer_by_object("sub_5").await.unwrap(),
        None
    );
    assert!(h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .is_empty());
    let event = h.store.get_event("evt_unclaimed").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Pending);
}

async fn commit_event_with_a_version_conflict_leaves_the_event_claimed(h: &Harness) {
    h.billing
        .commit_customer(&commit("user_6", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    claimed(h, "evt_conflict").await;

    let error = h
        .billing
        .commit_event(
            "evt_conflict",
            1,
            Some(&commit("user_6", 0, state_with("cus_6", false))),
            &EventResult::Processed,
            NOW,
        )
        .await
        .unwrap_err();

    assert!(is_conflict(&error, VERSION_CONFLICT), "{error:?}");
    let event = h.store.get_event("evt_conflict").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Processing);
    // The retry with the current version goes through.
    h.billing
        .commit_event(
            "evt_conflict",
            1,
            Some(&commit("user_6", 1, state_with("cus_6", false))),
            &EventResult::Processed,
            NOW,
        )
        .await
        .unwrap();
    let stored = h
        .billing
        .get_customer(&customer("user_6"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.version, 2);
}

async fn commit_event_without_a_customer_only_finishes_the_event(h: &Harness) {
    claimed(h, "evt_unlinked").await;

    let receipt = h
        .billing
        .commit_event("evt_unlinked", 1, None, &EventResult::Unlinked, NOW)
        .await
        .unwrap();

    assert_eq!(receipt.version, None);
    let event = h.store.get_event("evt_unlinked").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Unlinked);
}

async fn commit_event_under_a_claim_that_was_superseded_writes_nothing(h: &Harness) {
    claimed(h, "evt_stale").await;
    // The lease (NOW + 60) ran out and another worker took the event.
    let reclaimed = h.store.claim_events(NOW + 60, NOW + 120, 10).await.unwrap();
    let mut full = commit("user_21", 0, state_with("cus_21", false));
    full.outbox.push(alert("alert_21"));

    let late = h
        .billing
        .commit_event(
            "evt_stale",
            1,
            Some(&full),
            &EventResult::Processed,
            NOW + 61,
        )
        .await
        .unwrap_err();
    let nothing_written = h.billing.get_customer(&customer("user_21")).await.unwrap();
    let current = h
        .billing
        .commit_event(
            "evt_stale",
            2,
            Some(&full),
            &EventResult::Processed,
            NOW + 62,
        )
        .await
        .unwrap();

    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].claim, 2);
    assert!(is_conflict(&late, LEASE_CONFLICT), "{late:?}");
    assert_eq!(nothing_written, None);
    assert_eq!(current.version, Some(1));
    assert_eq!(current.outbox_inserted, 1);
    let event = h.store.get_event("evt_stale").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Processed);
}

async fn commit_events_applies_a_batch_in_one_transaction_or_writes_nothing(h: &Harness) {
    let events: Vec<NewEvent> = ["evt_b1", "evt_b2", "evt_b3"]
        .into_iter()
        .map(|id| event(id, Some("cus_b"), None))
        .collect();
    h.store.insert_events(&events).await.unwrap();
    let limits = billd_store::ClaimLimits {
        groups: 1,
        per_customer: 3,
        events: u32::MAX,
    };
    let batch = h
        .store
        .claim_event_batches(NOW, NOW + 60, limits)
        .await
        .unwrap();
    assert_eq!(batch.len(), 3, "one customer's batch");
    let finish = |id: &str, claim: i64| billd_store::EventFinish {
        id: id.to_owned(),
        claim,
        result: EventResult::Processed,
    };
    let mut batch = commit("user_b", 0, state_with("cus_b", false));
    batch.audit.push(audit("status", "evt_b1"));
    batch.audit.push(audit("status", "evt_b2"));
    batch.outbox.push(alert("alert_b"));
    let applies = vec!["evt_b1".to_owned(), "evt_b2".to_owned()];

    // evt_b3 was never claimed under claim 7: the whole batch is refused.
    let refused = h
        .billing
        .commit_events(
            &[(batch.clone(), applies.clone())],
            &[finish("evt_b1", 1), finish("evt_b3", 7)],
            NOW,
        )
        .await
        .unwrap_err();
    let receipts = h
        .billing
        .commit_events(
            &[(batch.clone(), applies)],
            &[finish("evt_b1", 1), finish("evt_b2", 1)],
            NOW,
        )
        .await
        .unwrap();

    assert!(is_conflict(&refused, LEASE_CONFLICT), "{refused:?}");
    assert_eq!(receipts.len(), 1);
    assert_eq!(
        receipts[0].version,
        Some(1),
        "one commit after the refused one"
    );
    assert_eq!(receipts[0].outbox_inserted, 1);
    for (id, status) in [
        ("evt_b1", EventStatus::Processed),
        ("evt_b2", EventStatus::Processed),
        ("evt_b3", EventStatus::Processing),
    ] {
        let event = h.store.get_event(id).await.unwrap().unwrap();
        assert_eq!(event.status, status, "{id}");
    }
    let rows = h.billing.list_audit(&customer("user_b"), 0).await.unwrap();
    assert_eq!(rows.len(), 2, "the refused batch wrote no audit row");
}

async fn a_round_of_several_customers_keeps_each_commits_guards_and_order(h: &Harness) {
    h.billing
        .commit_customer(&commit("user_r1", 0, state_with("cus_r1", false)), NOW)
        .await
        .unwrap();
    // user_r1 exists at version 1, user_r2 and user_r3 have no row yet;
    // user_r2 and user_r3 both link sub_shared and decide one effect.
    let mut first = commit("user_r1", 1, state_with("cus_r1", false));
    first.audit.push(audit("status", "r1"));
    first.outbox.push(alert("alert_r1"));
    let mut second = commit("user_r2", 0, state_with("cus_r2", false));
    second.links.push("sub_shared".to_owned());
    second.audit.push(audit("plan", "r2 first"));
    second.audit.push(audit("status", "r2 second"));
    second.outbox.push(alert("alert_shared"));
    second.outbox.push(alert("alert_shared"));
    let mut third = commit("user_r3", 0, state_with("cus_r3", false));
    third.links.push("sub_shared".to_owned());
    third.outbox.push(alert("alert_shared"));
    third.outbox.push(alert("alert_r3"));
    let round = |stale: Option<CustomerCommit>| {
        let mut round: Vec<(CustomerCommit, Vec<String>)> = [&first, &second, &third]
            .into_iter()
            .map(|c| (c.clone(), Vec::new()))
            .collect();
        round.extend(stale.map(|c| (c, Vec::new())));
        round
    };

    // A commit at a stale version refuses the whole round.
    let refused = h
        .billing
        .commit_events(
            &round(Some(commit("user_r4", 3, CustomerState::default()))),
            &[],
            NOW,
        )
        .await
        .unwrap_err();
    let receipts = h
        .billing
        .commit_events(&round(None), &[], NOW + 1)
        .await
        .unwrap();
    // A round naming one customer twice: the second commit is at the
    // version the first one wrote.
    let again = h
        .billing
        .commit_events(
            &[
                (
                    commit("user_r3", 1, state_with("cus_r3", false)),
                    Vec::new(),
                ),
                (
                    commit("user_r3", 2, state_with("cus_r3", false)),
                    Vec::new(),
                ),
            ],
            &[],
            NOW + 2,
        )
        .await
        .unwrap();

    assert!(is_conflict(&refused, VERSION_CONFLICT), "{refused:?}");
    let versions: Vec<Option<i64>> = receipts.iter().map(|r| r.version).collect();
    assert_eq!(versions, [Some(2), Some(1), Some(1)]);
    let inserted: Vec<u64> = receipts.iter().map(|r| r.outbox_inserted).collect();
    assert_eq!(
        inserted,
        [1, 1, 1],
        "a key twice in a round is its first commit's"
    );
    let again: Vec<Option<i64>> = again.iter().map(|r| r.version).collect();
    assert_eq!(again, [Some(2), Some(3)]);
    assert_eq!(
        h.billing
            .find_customer_by_object("sub_shared")
            .await
            .unwrap(),
        Some(customer("user_r2")),
        "the round's first link wins"
    );
    assert_eq!(
        h.billing.find_customer_by_object("cus_r3").await.unwrap(),
        Some(customer("user_r3"))
    );
    assert_eq!(
        h.billing.get_customer(&customer("user_r4")).await.unwrap(),
        None
    );
    let reasons: Vec<String> = h
        .billing
        .list_audit(&customer("user_r2"), 0)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.reason)
        .collect();
    assert_eq!(reasons, ["r2 second", "r2 first"], "newest first");
    let outbox: Vec<(String, Option<String>)> = h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|item| {
            (
                item.dedupe_key,
                item.customer_id.map(|c| c.as_str().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        outbox,
        [
            ("alert_r3".to_owned(), Some("user_r3".to_owned())),
            ("alert_shared".to_owned(), Some("user_r2".to_owned())),
            ("alert_r1".to_owned(), Some("user_r1".to_owned())),
        ],
        "newest first, in the round's order; nothing of the refused round"
    );
}

async fn an_effect_decided_twice_is_one_outbox_row(h: &Harness) {
    let mut first = commit("user_7", 0, CustomerState::default());
    first.outbox.push(alert("payment_failed:in_7:1"));
    let mut second = commit("user_7", 1, CustomerState::default());
    second.outbox.push(alert("payment_failed:in_7:1"));
    second.outbox.push(alert("payment_failed:in_7:2"));

    let a = h.billing.commit_customer(&first, NOW).await.unwrap();
    let b = h.billing.commit_customer(&second, NOW).await.unwrap();
    let c = h
        .billing
        .enqueue_outbox(None, &[alert("payment_failed:in_7:2")], NOW)
        .await
        .unwrap();

    assert_eq!(a.outbox_inserted, 1);
    assert_eq!(b.outbox_inserted, 1);
    assert_eq!(c, 0);
    let keys: Vec<String> = h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|item| item.dedupe_key)
        .collect();
    assert_eq!(
        keys,
        ["payment_failed:in_7:2", "payment_failed:in_7:1"],
        "newest first"
    );
}

async fn an_outbox_row_is_claimed_retried_and_sent(h: &Harness) {
    h.billing
        .enqueue_outbox(None, &[alert("a"), alert("b")], NOW)
        .await
        .unwrap();

    let first = h.billing.claim_outbox(NOW, NOW + 30, 1).await.unwrap();
    let while_leased = h.billing.claim_outbox(NOW + 1, NOW + 31, 10).await.unwrap();
    h.billing
        .finish_outbox(
            first[0].id,
            first[0].claim_token,
            &OutboxResult::Retry {
                error: "smtp down".to_owned(),
                next_attempt_at: NOW + 100,
            },
            NOW + 2,
        )
        .await
        .unwrap();
    let before_due = h
        .billing
        .claim_outbox(NOW + 50, NOW + 80, 10)
        .await
        .unwrap();
    let after_due = h
        .billing
        .claim_outbox(NOW + 100, NOW + 130, 10)
        .await
        .unwrap();
    h.billing
        .finish_outbox(
            after_due[0].id,
            after_due[0].claim_token,
            &OutboxResult::Sent,
            NOW + 101,
        )
        .await
        .unwrap();
    let again = h
        .billing
        .finish_outbox(
            after_due[0].id,
            after_due[0].claim_token,
            &OutboxResult::Sent,
            NOW + 102,
        )
        .await
        .unwrap_err();
    let missing = h
        .billing
        .finish_outbox(999_999, 1, &OutboxResult::Sent, NOW)
        .await
        .unwrap_err();

    assert_eq!(first.len(), 1);
    assert_eq!(first[0].dedupe_key, "a");
    assert_eq!(first[0].status, OutboxStatus::Processing);
    assert_eq!(first[0].attempts, 1);
    assert_eq!(first[0].next_attempt_at, Some(NOW + 30));
    assert_eq!(
        while_leased
            .iter()
            .map(|i| i.dedupe_key.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "a leased row is not claimed again"
    );
    // `b` is still leased until NOW + 31; `a` waits for its retry time.
    assert!(before_due.iter().all(|i| i.dedupe_key != "a"));
    let a = after_due.iter().find(|i| i.dedupe_key == "a").unwrap();
    assert_eq!(a.attempts, 2);
    assert_eq!(a.last_error.as_deref(), Some("smtp down"));
    assert!(
        matches!(&again, StoreError::Conflict { constraint } if constraint == OUTBOX_LEASE_CONFLICT),
        "{again:?}"
    );
    assert!(matches!(missing, StoreError::NotFound), "{missing:?}");
    let sent = h
        .billing
        .list_outbox(&OutboxFilter {
            status: Some(OutboxStatus::Sent),
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].done_at, Some(NOW + 101));
}

async fn an_outbox_row_that_fails_for_good_is_dead_until_requeued(h: &Harness) {
    h.billing
        .enqueue_outbox(Some(&customer("user_8")), &[alert("dead")], NOW)
        .await
        .unwrap_err();
    h.billing
        .upsert_customer(&profile("user_8", "d@example.com"), NOW)
        .await
        .unwrap();
    h.billing
        .enqueue_outbox(Some(&customer("user_8")), &[alert("dead")], NOW)
        .await
        .unwrap();
    let claimed = h.billing.claim_outbox(NOW, NOW + 30, 10).await.unwrap();
    // Being delivered: a retry would send it twice.
    let while_claimed = h
        .billing
        .requeue_outbox(claimed[0].id, NOW + 1)
        .await
        .unwrap();
    assert!(!while_claimed);

    h.billing
        .finish_outbox(
            claimed[0].id,
            claimed[0].claim_token,
            &OutboxResult::Dead {
                error: "stripe said no".to_owned(),
            },
            NOW + 1,
        )
        .await
        .unwrap();
    let while_dead = h
        .billing
        .claim_outbox(NOW + 1000, NOW + 1030, 10)
        .await
        .unwrap();
    let requeued = h
        .billing
        .requeue_outbox(claimed[0].id, NOW + 2000)
        .await
        .unwrap();
    let unknown = h.billing.requeue_outbox(999_999, NOW).await.unwrap();
    let after = h
        .billing
        .claim_outbox(NOW + 2000, NOW + 2030, 10)
        .await
        .unwrap();

    assert!(while_dead.is_empty());
    assert!(requeued);
    assert!(!unknown);
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].attempts, 1, "requeue resets the attempts");
    let mine = h
        .billing
        .list_outbox(&OutboxFilter {
            customer_id: Some(customer("user_8")),
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].last_error.as_deref(), Some("stripe said no"));
}

async fn two_stores_never_claim_the_same_outbox_row(h: &Harness) {
    let items: Vec<NewOutboxItem> = (0..40).map(|n| alert(&format!("row_{n}"))).collect();
    h.billing.enqueue_outbox(None, &items, NOW).await.unwrap();
    let other = h.another().await;

    let mut tasks = Vec::new();
    for store in [h.billing.clone(), other.clone(), h.billing.clone(), other] {
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = store.claim_outbox(NOW, NOW + 60, 3).await.unwrap();
                if batch.is_empty() {
                    return mine;
                }
                mine.extend(batch.into_iter().map(|item| item.id));
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }

    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(count, 40, "every row claimed");
    assert_eq!(all.len(), 40, "no row claimed twice");
}

async fn a_late_outbox_finish_after_a_reclaim_is_refused_and_the_reclaim_decides(h: &Harness) {
    h.billing
        .enqueue_outbox(None, &[alert("slow")], NOW)
        .await
        .unwrap();
    let other = h.another().await;
    let first = h.billing.claim_outbox(NOW, NOW + 5, 1).await.unwrap();

    // The first worker's delivery outlives its 5 s lease; another claims.
    let second = other.claim_outbox(NOW + 6, NOW + 11, 1).await.unwrap();
    let late = h
        .billing
        .finish_outbox(
            first[0].id,
            first[0].claim_token,
            &OutboxResult::Dead {
                error: "late".to_owned(),
            },
            NOW + 7,
        )
        .await
        .unwrap_err();
    let late_renewal = h
        .billing
        .renew_outbox(first[0].id, first[0].claim_token, NOW + 100)
        .await
        .unwrap();
    other
        .finish_outbox(
            second[0].id,
            second[0].claim_token,
            &OutboxResult::Sent,
            NOW + 8,
        )
        .await
        .unwrap();

    assert_eq!(second.len(), 1, "the expired lease is claimed again");
    assert_eq!(second[0].id, first[0].id);
    assert_ne!(second[0].claim_token, first[0].claim_token);
    assert!(
        matches!(&late, StoreError::Conflict { constraint } if constraint == OUTBOX_LEASE_CONFLICT),
        "{late:?}"
    );
    assert!(!late_renewal, "a lost claim cannot be renewed");
    let rows = h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].status,
        OutboxStatus::Sent,
        "the reclaim's outcome stands"
    );
    assert_eq!(rows[0].last_error, None);
    assert_eq!(rows[0].done_at, Some(NOW + 8));
}

async fn a_renewed_outbox_lease_keeps_the_row_from_being_reclaimed(h: &Harness) {
    h.billing
        .enqueue_outbox(None, &[alert("long")], NOW)
        .await
        .unwrap();
    let first = h.billing.claim_outbox(NOW, NOW + 5, 1).await.unwrap();

    let renewed = h
        .billing
        .renew_outbox(first[0].id, first[0].claim_token, NOW + 20)
        .await
        .unwrap();
    let within_renewal = h.billing.claim_outbox(NOW + 10, NOW + 15, 1).await.unwrap();
    h.billing
        .finish_outbox(
            first[0].id,
            first[0].claim_token,
            &OutboxResult::Sent,
            NOW + 12,
        )
        .await
        .unwrap();
    let renew_after_finish = h
        .billing
        .renew_outbox(first[0].id, first[0].claim_token, NOW + 40)
        .await
        .unwrap();

    assert!(renewed);
    assert!(
        within_renewal.is_empty(),
        "a renewed lease is not reclaimed"
    );
    assert!(!renew_after_finish, "a finished row has no lease to renew");
    let rows = h
        .billing
        .list_outbox(&OutboxFilter::default())
        .await
        .unwrap();
    assert_eq!(rows[0].status, OutboxStatus::Sent);
    assert_eq!(rows[0].next_attempt_at, None);
}

async fn a_stripe_customer_links_to_one_customer_only(h: &Harness) {
    h.billing
        .link_stripe_customer(&customer("user_9"), &stripe("cus_9"), NOW)
        .await
        .unwrap();
    h.billing
        .link_stripe_customer(&customer("user_9"), &stripe("cus_9"), NOW + 1)
        .await
        .unwrap();

    let error = h
        .billing
        .link_stripe_customer(&customer("user_other"), &stripe("cus_9"), NOW + 2)
        .await
        .unwrap_err();

    assert!(matches!(error, StoreError::Conflict { .. }), "{error:?}");
    let stored = h
        .billing
        .get_customer(&customer("user_9"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.stripe_customer_id, Some(stripe("cus_9")));
    assert_eq!(stored.version, 0, "linking does not touch the state");
    assert_eq!(
        h.billing
            .find_customer_by_stripe(&stripe("cus_9"))
            .await
            .unwrap(),
        Some(customer("user_9"))
    );
}

async fn a_deleted_stripe_customer_is_unlinked_but_still_finds_its_customer(h: &Harness) {
    h.billing
        .link_stripe_customer(&customer("user_10"), &stripe("cus_10"), NOW)
        .await
        .unwrap();
    // A state that does not know the Stripe customer yet keeps the link.
    h.billing
        .commit_customer(&commit("user_10", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let kept = h
        .billing
        .get_customer(&customer("user_10"))
        .await
        .unwrap()
        .unwrap();

    h.billing
        .commit_customer(&commit("user_10", 1, state_with("cus_10", true)), NOW + 1)
        .await
        .unwrap();

    assert_eq!(kept.stripe_customer_id, Some(stripe("cus_10")));
    let stored = h
        .billing
        .get_customer(&customer("user_10"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.stripe_customer_id, None);
    assert_eq!(
        h.billing
            .find_customer_by_stripe(&stripe("cus_10"))
            .await
            .unwrap(),
        Some(customer("user_10"))
    );
}

async fn many_customers_read_in_one_call_read_as_one_at_a_time(h: &Harness) {
    // cus_30 is user_30's current Stripe customer; cus_31 was user_31's
    // and is deleted (only its object link is left); cus_32 is a Stripe
    // customer linked as an object of user_32 while user_32's current one
    // is cus_33; cus_nobody is unknown.
    h.billing
        .link_stripe_customer(&customer("user_30"), &stripe("cus_30"), NOW)
        .await
        .unwrap();
    h.billing
        .link_stripe_customer(&customer("user_31"), &stripe("cus_31"), NOW)
        .await
        .unwrap();
    h.billing
        .commit_customer(&commit("user_31", 0, state_with("cus_31", true)), NOW + 1)
        .await
        .unwrap();
    h.billing
        .link_stripe_customer(&customer("user_32"), &stripe("cus_33"), NOW)
        .await
        .unwrap();
    h.billing
        .link_object("cus_32", &customer("user_32"), NOW)
        .await
        .unwrap();
    let stripes: Vec<StripeCustomerId> = ["cus_30", "cus_31", "cus_32", "cus_33", "cus_nobody"]
        .into_iter()
        .map(stripe)
        .collect();
    let customers: Vec<CustomerId> = ["user_30", "user_31", "user_32", "nobody"]
        .into_iter()
        .map(customer)
        .collect();

    let owners = h
        .billing
        .find_customers_by_stripe(&stripes.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    let records = h
        .billing
        .get_customers(&customers.iter().collect::<Vec<_>>())
        .await
        .unwrap();

    for id in &stripes {
        let alone = h.billing.find_customer_by_stripe(id).await.unwrap();
        assert_eq!(owners.get(id.as_str()).cloned(), alone, "{id}");
    }
    assert_eq!(owners.len(), 4, "{owners:?}");
    for id in &customers {
        let alone = h.billing.get_customer(id).await.unwrap();
        assert_eq!(records.get(id).cloned(), alone, "{id}");
    }
    assert_eq!(records.len(), 3);
    h.billing
        .link_object("sub_30", &customer("user_30"), NOW)
        .await
        .unwrap();
    let objects = ["sub_30", "cus_31", "cus_32", "cus_30", "sub_nobody"];
    let objects_owners = h.billing.find_customers_by_objects(&objects).await.unwrap();
    for object in objects {
        let alone = h.billing.find_customer_by_object(object).await.unwrap();
        assert_eq!(objects_owners.get(object).cloned(), alone, "{object}");
    }
    assert_eq!(
        objects_owners.get("sub_30"),
        Some(&customer("user_30")),
        "{objects_owners:?}"
    );
    assert!(h
        .billing
        .find_customers_by_objects(&[])
        .await
        .unwrap()
        .is_empty());
    assert!(h.billing.get_customers(&[]).await.unwrap().is_empty());
    assert!(h
        .billing
        .find_customers_by_stripe(&[])
        .await
        .unwrap()
        .is_empty());
}

async fn an_object_keeps_the_customer_it_was_first_linked_to(h: &Harness) {
    let first = h
        .billing
        .link_object("ch_11", &customer("user_11"), NOW)
        .await
        .unwrap();
    let second = h
        .billing
        .link_object("ch_11", &customer("user_other"), NOW + 1)
        .await
        .unwrap();

    assert_eq!(first, customer("user_11"));
    assert_eq!(second, customer("user_11"));
    assert_eq!(
        h.billing.find_customer_by_object("ch_11").await.unwrap(),
        Some(customer("user_11"))
    );
}

async fn requeue_unlinked_puts_back_the_matching_and_the_customerless_parked_events(h: &Harness) {
    h.store
        .insert_events(&[
            event("evt_a", Some("cus_12"), Some("sub_12")),
            event("evt_b", Some("cus_b"), Some("ch_12")),
            event("evt_c", Some("cus_other"), Some("sub_other")),
            event("evt_d", Some("cus_12"), None),
            event("evt_e", None, Some("dp_12")),
        ])
        .await
        .unwrap();
    // Park every event but evt_d, which is processed; one claim takes one
    // event per Stripe customer, so claim until nothing is left.
    loop {
        let claimed = h.store.claim_events(NOW, NOW + 60, 10).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        for stored in claimed {
            let result = if stored.id == "evt_d" {
                EventResult::Processed
            } else {
                EventResult::Unlinked
            };
            h.store
                .finish_event(&stored.id, stored.claim, result, NOW)
                .await
                .unwrap();
        }
    }

    let requeued = h
        .billing
        .requeue_unlinked(&["cus_12", "ch_12"], NOW + 1)
        .await
        .unwrap();

    let mut statuses = Vec::new();
    for id in ["evt_a", "evt_b", "evt_c", "evt_d", "evt_e"] {
        statuses.push(h.store.get_event(id).await.unwrap().unwrap().status);
    }
    assert_eq!(requeued, 3);
    assert_eq!(
        statuses,
        [
            EventStatus::Pending,
            EventStatus::Pending,
            EventStatus::Unlinked,
            EventStatus::Processed,
            // Names no Stripe customer: any new link may be the one it needs.
            EventStatus::Pending,
        ]
    );
}

async fn the_audit_log_lists_a_customers_rows_newest_first(h: &Harness) {
    let mut first = commit("user_13", 0, CustomerState::default());
    first.audit = vec![audit("plan", "evt_1"), audit("status", "evt_1")];
    let mut second = commit("user_13", 1, CustomerState::default());
    second.audit = vec![audit("access", "evt_2")];
    let mut other = commit("user_other", 0, CustomerState::default());
    other.audit = vec![audit("plan", "evt_3")];
    h.billing.commit_customer(&first, NOW).await.unwrap();
    h.billing.commit_customer(&second, NOW).await.unwrap();
    h.billing.commit_customer(&other, NOW).await.unwrap();

    let all = h.billing.list_audit(&customer("user_13"), 0).await.unwrap();
    let two = h.billing.list_audit(&customer("user_13"), 2).await.unwrap();

    let fields: Vec<&str> = all.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields, ["access", "status", "plan"]);
    assert!(all.iter().all(|r| r.customer_id == customer("user_13")));
    assert_eq!(two.len(), 2);
    assert_eq!(two[0].reason, "evt_2");
}

async fn consume_adds_within_the_limit_and_refuses_beyond_it(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_14", "c@example.com"), NOW)
        .await
        .unwrap();

    let first = h
        .billing
        .consume(&usage("user_14", "websites", None, 2, "k1"), 3, NOW)
        .await
        .unwrap();
    let refused = h
        .billing
        .consume(&usage("user_14", "websites", None, 2, "k2"), 3, NOW)
        .await
        .unwrap();
    let fits = h
        .billing
        .consume(&usage("user_14", "websites", None, 1, "k3"), 3, NOW)
        .await
        .unwrap();
    let zero = h
        .billing
        .consume(&usage("user_14", "websites", None, 0, "k4"), 3, NOW)
        .await
        .unwrap_err();

    assert_eq!(
        first,
        UsageOutcome::Applied {
            used: 2,
            limit: 3,
            replayed: false
        }
    );
    assert_eq!(refused, UsageOutcome::LimitExceeded { used: 2, limit: 3 });
    assert_eq!(used(fits), 3);
    assert!(matches!(zero, StoreError::Other(_)), "{zero:?}");
    // A refused key was not stored: retried after a release, it goes through.
    h.billing
        .release(&usage("user_14", "websites", None, 1, "r1"), NOW)
        .await
        .unwrap();
    let retried = h
        .billing
        .consume(&usage("user_14", "websites", None, 1, "k2"), 3, NOW)
        .await
        .unwrap();
    assert!(matches!(
        retried,
        UsageOutcome::Applied {
            used: 3,
            replayed: false,
            ..
        }
    ));
}

async fn a_consume_batch_answers_each_request_as_alone_and_keeps_only_what_was_applied(
    h: &Harness,
) {
    for id in ["user_b1", "user_b2"] {
        h.billing
            .upsert_customer(&profile(id, "b@example.com"), NOW)
            .await
            .unwrap();
    }
    let batch = vec![
        (usage("user_b1", "websites", None, 2, "a"), 3),
        // Would exceed the limit after "a": refused, nothing stored.
        (usage("user_b1", "websites", None, 2, "b"), 3),
        (usage("user_b2", "generations", Some(NOW), 4, "a"), 10),
        // The same key again in the same batch: the first answer, replayed.
        (usage("user_b1", "websites", None, 2, "a"), 3),
        // The same key for another feature: this one fails, alone.
        (usage("user_b2", "websites", None, 4, "a"), 10),
        (usage("user_b1", "websites", None, 0, "zero"), 3),
        (usage("user_b1", "websites", None, 1, "c"), 3),
    ];

    let answers = h.billing.consume_batch(&batch, NOW).await.unwrap();

    assert_eq!(answers.len(), batch.len());
    let ok: Vec<Option<&UsageOutcome>> = answers.iter().map(|a| a.as_ref().ok()).collect();
    assert_eq!(
        ok[0],
        Some(&UsageOutcome::Applied {
            used: 2,
            limit: 3,
            replayed: false
        })
    );
    assert_eq!(
        ok[1],
        Some(&UsageOutcome::LimitExceeded { used: 2, limit: 3 })
    );
    assert_eq!(ok[2].map(|o| used(*o)), Some(4));
    assert_eq!(
        ok[3],
        Some(&UsageOutcome::Applied {
            used: 2,
            limit: 3,
            replayed: true
        })
    );
    assert!(
        matches!(&answers[4], Err(StoreError::Conflict { constraint }) if constraint == IDEMPOTENCY_CONFLICT),
        "{:?}",
        answers[4]
    );
    assert!(answers[5].is_err(), "{:?}", answers[5]);
    assert_eq!(ok[6].map(|o| used(*o)), Some(3));
    // Committed: a fresh read sees the counters, and the refused key "b"
    // was not stored (it goes through once there is room).
    h.billing
        .release(&usage("user_b1", "websites", None, 1, "r"), NOW)
        .await
        .unwrap();
    let b = h
        .billing
        .consume(&usage("user_b1", "websites", None, 1, "b"), 3, NOW)
        .await
        .unwrap();
    assert!(
        matches!(
            b,
            UsageOutcome::Applied {
                used: 3,
                replayed: false,
                ..
            }
        ),
        "{b:?}"
    );
    let again = h
        .another()
        .await
        .consume(&usage("user_b2", "generations", Some(NOW), 4, "a"), 10, NOW)
        .await
        .unwrap();
    assert_eq!(
        again,
        UsageOutcome::Applied {
            used: 4,
            limit: 10,
            replayed: true
        }
    );
}

async fn a_repeated_idempotency_key_returns_the_first_answer(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_15", "e@example.com"), NOW)
        .await
        .unwrap();
    let request = usage("user_15", "generations", Some(NOW - 1000), 1, "gen-1");

    let first = h.billing.consume(&request, 10, NOW).await.unwrap();
    let again = h.billing.consume(&request, 10, NOW + 5).await.unwrap();
    let key = request.key.clone();
    let loaded = h
        .billing
        .load_usage(&customer("user_15"), std::slice::from_ref(&key))
        .await
        .unwrap();

    assert_eq!(
        first,
        UsageOutcome::Applied {
            used: 1,
            limit: 10,
            replayed: false
        }
    );
    assert_eq!(
        again,
        UsageOutcome::Applied {
            used: 1,
            limit: 10,
            replayed: true
        }
    );
    assert_eq!(loaded.used(&key), 1);
}

async fn an_idempotency_key_reused_for_another_request_is_a_conflict(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_16", "f@example.com"), NOW)
        .await
        .unwrap();
    h.billing
        .upsert_customer(&profile("user_16b", "g@example.com"), NOW)
        .await
        .unwrap();
    h.billing
        .consume(&usage("user_16", "websites", None, 1, "same"), 5, NOW)
        .await
        .unwrap();

    let other_amount = h
        .billing
        .consume(&usage("user_16", "websites", None, 2, "same"), 5, NOW)
        .await
        .unwrap_err();
    let as_release = h
        .billing
        .release(&usage("user_16", "websites", None, 1, "same"), NOW)
        .await
        .unwrap_err();
    let other_customer = h
        .billing
        .consume(&usage("user_16b", "websites", None, 2, "same"), 5, NOW)
        .await
        .unwrap();

    assert!(
        is_conflict(&other_amount, IDEMPOTENCY_CONFLICT),
        "{other_amount:?}"
    );
    assert!(
        is_conflict(&as_release, IDEMPOTENCY_CONFLICT),
        "{as_release:?}"
    );
    assert_eq!(used(other_customer), 2, "keys are per customer");
}

async fn concurrent_consumers_never_exceed_the_limit(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_17", "h@example.com"), NOW)
        .await
        .unwrap();
    let other = h.another().await;

    let mut tasks = Vec::new();
    for n in 0..24 {
        let store = if n % 2 == 0 {
            h.billing.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            store
                .consume(
                    &usage("user_17", "generations", Some(NOW), 1, &format!("c{n}")),
                    10,
                    NOW,
                )
                .await
        }));
    }
    let mut applied = 0;
    let mut refused = 0;
    for task in tasks {
        // SQLite's second connection may find the file locked past its
        // timeout under this contention: that is Unavailable, never excess.
        match task.await.unwrap() {
            Ok(UsageOutcome::Applied { .. }) => applied += 1,
            Ok(UsageOutcome::LimitExceeded { .. }) => refused += 1,
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    let key = UsageKey {
        feature: FeatureName::parse("generations").unwrap(),
        period_start: Some(NOW),
    };
    let loaded = h
        .billing
        .load_usage(&customer("user_17"), std::slice::from_ref(&key))
        .await
        .unwrap();
    assert_eq!(applied, 10);
    assert!(refused >= 1);
    assert_eq!(loaded.used(&key), 10);
}

async fn release_lowers_a_capacity_counter_never_below_zero(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_18", "i@example.com"), NOW)
        .await
        .unwrap();
    h.billing
        .consume(&usage("user_18", "websites", None, 2, "make"), 3, NOW)
        .await
        .unwrap();

    let down = h
        .billing
        .release(&usage("user_18", "websites", None, 1, "del-1"), NOW)
        .await
        .unwrap();
    let repeated = h
        .billing
        .release(&usage("user_18", "websites", None, 1, "del-1"), NOW)
        .await
        .unwrap();
    let floor = h
        .billing
        .release(&usage("user_18", "websites", None, 5, "del-2"), NOW)
        .await
        .unwrap();

    assert_eq!(used(down), 1);
    assert!(matches!(
        repeated,
        UsageOutcome::Applied {
            used: 1,
            replayed: true,
            ..
        }
    ));
    assert_eq!(used(floor), 0);
}

async fn metered_usage_is_counted_per_period(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_19", "j@example.com"), NOW)
        .await
        .unwrap();
    let old = NOW - 2_592_000;
    h.billing
        .consume(
            &usage("user_19", "generations", Some(old), 9, "old"),
            10,
            NOW,
        )
        .await
        .unwrap();
    h.billing
        .consume(
            &usage("user_19", "generations", Some(NOW), 2, "new"),
            10,
            NOW,
        )
        .await
        .unwrap();
    h.billing
        .consume(&usage("user_19", "websites", None, 1, "site"), 3, NOW)
        .await
        .unwrap();
    let generations = FeatureName::parse("generations").unwrap();
    let websites = FeatureName::parse("websites").unwrap();
    let keys = [
        UsageKey {
            feature: generations.clone(),
            period_start: Some(NOW),
        },
        UsageKey {
            feature: websites.clone(),
            period_start: None,
        },
    ];

    let loaded = h
        .billing
        .load_usage(&customer("user_19"), &keys)
        .await
        .unwrap();

    assert_eq!(loaded.used(&keys[0]), 2, "the new period starts fresh");
    assert_eq!(loaded.used(&keys[1]), 1);
    let old_key = UsageKey {
        feature: generations,
        period_start: Some(old),
    };
    assert_eq!(
        loaded.used(&old_key),
        0,
        "only the asked counters are loaded"
    );
}

async fn deleting_a_customer_erases_its_profile_and_keeps_its_history(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_21", "k@example.com"), NOW)
        .await
        .unwrap();
    let mut first = commit("user_21", 0, state_with("cus_21", false));
    first.audit.push(audit("status", "evt_21"));
    h.billing.commit_customer(&first, NOW).await.unwrap();
    let mut deletion = commit("user_21", 1, state_with("cus_21", false));
    deletion.outbox.push(alert("account_deleted:user_21"));

    let receipt = h
        .billing
        .delete_customer(&deletion, NOW + 10)
        .await
        .unwrap();
    let again = h
        .billing
        .delete_customer(&commit("user_21", 2, state_with("cus_21", false)), NOW + 20)
        .await
        .unwrap();

    assert_eq!(receipt.version, Some(2));
    assert_eq!(receipt.outbox_inserted, 1);
    assert_eq!(again.version, Some(3));
    let stored = h
        .billing
        .get_customer(&customer("user_21"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.deleted_at,
        Some(NOW + 10),
        "the first deletion time stays"
    );
    assert_eq!(stored.email, None);
    assert_eq!(stored.name, None);
    assert_eq!(stored.preferred_currency, None);
    assert_eq!(stored.state, state_with("cus_21", false));
    assert_eq!(
        h.billing
            .list_audit(&customer("user_21"), 0)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        h.billing
            .find_customer_by_stripe(&stripe("cus_21"))
            .await
            .unwrap(),
        Some(customer("user_21"))
    );
    // A stale deletion writes nothing.
    let stale = h
        .billing
        .delete_customer(&commit("user_21", 1, CustomerState::default()), NOW + 30)
        .await
        .unwrap_err();
    assert!(is_conflict(&stale, VERSION_CONFLICT), "{stale:?}");
    // Nor does a later profile update bring the personal data back.
    let upserted = h
        .billing
        .upsert_customer(&profile("user_21", "back@example.com"), NOW + 40)
        .await
        .unwrap();
    assert!(!upserted.created);
    assert_eq!(upserted.customer.email, None);
    assert_eq!(upserted.customer.deleted_at, Some(NOW + 10));
}

async fn customers_are_listed_in_id_order_page_by_page(h: &Harness) {
    for id in ["user_c", "user_a", "user_d", "user_b"] {
        h.billing
            .upsert_customer(&profile(id, "l@example.com"), NOW)
            .await
            .unwrap();
    }

    let first = h.billing.list_customers(None, 3).await.unwrap();
    let rest = h
        .billing
        .list_customers(Some(&first[2].customer_id), 3)
        .await
        .unwrap();
    let all = h.billing.list_customers(None, 0).await.unwrap();

    let ids = |records: &[billd_store::CustomerRecord]| -> Vec<String> {
        records.iter().map(|r| r.customer_id.to_string()).collect()
    };
    assert_eq!(ids(&first), ["user_a", "user_b", "user_c"]);
    assert_eq!(ids(&rest), ["user_d"]);
    assert_eq!(all.len(), 4);
}

async fn outbox_stats_count_rows_per_status_and_the_oldest_waiting(h: &Harness) {
    let empty = h.billing.outbox_stats().await.unwrap();
    h.billing
        .enqueue_outbox(None, &[alert("s1")], NOW)
        .await
        .unwrap();
    h.billing
        .enqueue_outbox(None, &[alert("s2"), alert("s3")], NOW + 5)
        .await
        .unwrap();
    let claimed = h.billing.claim_outbox(NOW + 5, NOW + 60, 1).await.unwrap();
    h.billing
        .finish_outbox(
            claimed[0].id,
            claimed[0].claim_token,
            &OutboxResult::Sent,
            NOW + 6,
        )
        .await
        .unwrap();

    let stats = h.billing.outbox_stats().await.unwrap();

    assert!(empty.by_status.iter().all(|(_, n)| *n == 0));
    assert_eq!(empty.oldest_waiting_created_at, None);
    let count = |status: OutboxStatus| {
        stats
            .by_status
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(OutboxStatus::Pending), Some(2));
    assert_eq!(count(OutboxStatus::Sent), Some(1));
    assert_eq!(count(OutboxStatus::Dead), Some(0));
    assert_eq!(stats.oldest_waiting_created_at, Some(NOW + 5));
}

#[path = "billing/checkout.rs"]
mod checkout;

#[path = "billing/usage.rs"]
mod usage_guarded;

#[path = "billing/erasure.rs"]
mod erasure;

#[path = "billing/idempotency.rs"]
mod idempotency;
