//! Version-guarded consumes (`UsageStore`): applied only while the customer
//! is at the version the limit was decided on, with the same idempotency
//! and limit semantics as `BillingStore::consume`.

use std::collections::HashMap;

use billd_core::{CustomerId, CustomerState, FeatureName, UsageKey};
use billd_store::{GuardedConsume, GuardedOutcome, StoreError, UsageOutcome};

use super::{commit, customer, postgres, profile, sqlite, usage, Harness, NOW};

contract!(
    a_guarded_consume_applies_only_at_the_customers_current_version,
    an_unknown_or_deleted_customer_is_stale_even_for_a_repeated_key,
    a_repeated_key_gets_its_first_answer_even_at_limit_zero,
    concurrent_guarded_consumes_stop_at_the_limit_and_count_each_key_once,
    a_guarded_batch_answers_each_consume_as_alone_and_keeps_only_what_was_applied,
    a_guarded_batch_over_many_counters_answers_each_consume_as_alone,
    a_usage_snapshot_has_the_counters_and_the_state_only_when_its_version_changed,
    snapshots_of_many_customers_answer_each_read_as_alone_in_order,
    an_overage_consume_writes_one_meter_event_in_its_transaction_on_every_path,
    a_consume_takes_the_quota_then_credits_first_bought_first_then_overage_on_every_path,
    concurrent_consumes_of_two_periods_never_take_a_packs_unit_twice,
);

fn guarded(id: &str, amount: u64, key: &str, limit: u64, version: i64) -> GuardedConsume {
    GuardedConsume {
        request: usage(id, "websites", None, amount, key),
        limit,
        customer_version: version,
    }
}

fn applied(used: u64, limit: u64, replayed: bool) -> GuardedOutcome {
    GuardedOutcome::Decided(UsageOutcome::Applied {
        used,
        limit,
        replayed,
    })
}

async fn counter(h: &Harness, id: &str) -> u64 {
    let key = UsageKey {
        feature: FeatureName::parse("websites").unwrap(),
        period_start: None,
    };
    h.billing
        .load_usage(&customer(id), std::slice::from_ref(&key))
        .await
        .unwrap()
        .used(&key)
}

async fn a_guarded_consume_applies_only_at_the_customers_current_version(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_g1", "g1@example.com"), NOW)
        .await
        .unwrap();

    let at_zero = h
        .store
        .consume_guarded(&guarded("user_g1", 1, "a", 3, 0), NOW)
        .await
        .unwrap();
    h.billing
        .commit_customer(&commit("user_g1", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let still_at_zero = h
        .store
        .consume_guarded(&guarded("user_g1", 1, "b", 3, 0), NOW)
        .await
        .unwrap();
    let at_one = h
        .store
        .consume_guarded(&guarded("user_g1", 1, "b", 3, 1), NOW)
        .await
        .unwrap();

    assert_eq!(at_zero, applied(1, 3, false));
    assert_eq!(still_at_zero, GuardedOutcome::Stale);
    assert_eq!(at_one, applied(2, 3, false), "a stale try wrote nothing");
    assert_eq!(counter(h, "user_g1").await, 2);
}

async fn an_unknown_or_deleted_customer_is_stale_even_for_a_repeated_key(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_g2", "g2@example.com"), NOW)
        .await
        .unwrap();
    let first = h
        .store
        .consume_guarded(&guarded("user_g2", 1, "k", 3, 0), NOW)
        .await
        .unwrap();
    h.billing
        .delete_customer(&commit("user_g2", 0, CustomerState::default()), NOW)
        .await
        .unwrap();

    let unknown = h
        .store
        .consume_guarded(&guarded("user_nobody", 1, "k", 3, 0), NOW)
        .await
        .unwrap();
    let deleted_at_old_version = h
        .store
        .consume_guarded(&guarded("user_g2", 1, "k", 3, 0), NOW)
        .await
        .unwrap();
    let deleted_at_new_version = h
        .store
        .consume_guarded(&guarded("user_g2", 1, "k", 3, 1), NOW)
        .await
        .unwrap();

    assert_eq!(first, applied(1, 3, false));
    assert_eq!(unknown, GuardedOutcome::Stale);
    assert_eq!(deleted_at_old_version, GuardedOutcome::Stale);
    assert_eq!(deleted_at_new_version, GuardedOutcome::Stale);
}

async fn a_repeated_key_gets_its_first_answer_even_at_limit_zero(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_g3", "g3@example.com"), NOW)
        .await
        .unwrap();
    let first = h
        .store
        .consume_guarded(&guarded("user_g3", 2, "k", 5, 0), NOW)
        .await
        .unwrap();

    let again = h
        .store
        .consume_guarded(&guarded("user_g3", 2, "k", 0, 0), NOW + 1)
        .await
        .unwrap();
    let new_key = h
        .store
        .consume_guarded(&guarded("user_g3", 1, "other", 0, 0), NOW + 1)
        .await
        .unwrap();
    let other_amount = h
        .store
        .consume_guarded(&guarded("user_g3", 3, "k", 5, 0), NOW + 1)
        .await
        .unwrap_err();

    assert_eq!(first, applied(2, 5, false));
    assert_eq!(again, applied(2, 5, true));
    assert_eq!(
        new_key,
        GuardedOutcome::Decided(UsageOutcome::LimitExceeded { used: 2, limit: 0 })
    );
    assert!(
        super::is_conflict(&other_amount, billd_store::IDEMPOTENCY_CONFLICT),
        "{other_amount:?}"
    );
    assert_eq!(counter(h, "user_g3").await, 2);
}

async fn concurrent_guarded_consumes_stop_at_the_limit_and_count_each_key_once(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_g4", "g4@example.com"), NOW)
        .await
        .unwrap();

    // 32 keys, each sent by two tasks at once, against a limit of 25.
    let mut tasks = Vec::new();
    for n in 0..64 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{}", n / 2);
            let answer = store
                .consume_guarded(&guarded("user_g4", 1, &key, 25, 0), NOW)
                .await;
            (key, answer)
        }));
    }
    let mut by_key: HashMap<String, Vec<GuardedOutcome>> = HashMap::new();
    for task in tasks {
        let (key, answer) = task.await.unwrap();
        match answer {
            Ok(outcome) => by_key.entry(key).or_default().push(outcome),
            // SQLite may time out waiting for its writer under this load:
            // Unavailable, never a wrong answer.
            Err(StoreError::Unavailable(_)) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }

    let mut counted = 0;
    for (key, answers) in &by_key {
        let used: Vec<Option<u64>> = answers
            .iter()
            .map(|a| match a {
                GuardedOutcome::Decided(UsageOutcome::Applied { used, .. }) => Some(*used),
                _ => None,
            })
            .collect();
        if used.iter().any(Option::is_some) {
            counted += 1;
            assert!(
                used.windows(2).all(|w| w[0] == w[1]),
                "{key}: both senders get the one answer, {answers:?}"
            );
        }
    }
    assert_eq!(counted, 25, "{by_key:?}");
    assert_eq!(counter(h, "user_g4").await, 25);
}

async fn a_guarded_batch_answers_each_consume_as_alone_and_keeps_only_what_was_applied(
    h: &Harness,
) {
    h.billing
        .upsert_customer(&profile("user_g5", "g5@example.com"), NOW)
        .await
        .unwrap();
    h.store
        .consume_guarded(&guarded("user_g5", 1, "earlier", 3, 0), NOW)
        .await
        .unwrap();
    let batch = [
        guarded("user_g5", 1, "a", 3, 0),
        guarded("user_g5", 1, "stale", 3, 7),
        guarded("user_g5", 5, "too_much", 3, 0),
        guarded("user_g5", 1, "earlier", 3, 0),
        guarded("user_g5", 2, "earlier", 3, 0),
        guarded("user_g5", 1, "b", 3, 0),
    ];

    let answers = h.store.consume_guarded_batch(&batch, NOW).await.unwrap();

    let answers: Vec<Result<GuardedOutcome, String>> = answers
        .into_iter()
        .map(|a| a.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(answers.len(), 6);
    assert_eq!(answers[0], Ok(applied(2, 3, false)));
    assert_eq!(answers[1], Ok(GuardedOutcome::Stale));
    assert_eq!(
        answers[2],
        Ok(GuardedOutcome::Decided(UsageOutcome::LimitExceeded {
            used: 2,
            limit: 3
        }))
    );
    assert_eq!(answers[3], Ok(applied(1, 3, true)));
    assert!(answers[4].is_err(), "another amount under a used key");
    assert_eq!(answers[5], Ok(applied(3, 3, false)));
    assert_eq!(counter(h, "user_g5").await, 3);
}

/// A batch whose consumes are on many counters (on PostgreSQL, applied
/// together in one statement where they can be) answers each as alone, in
/// batch order.
async fn a_guarded_batch_over_many_counters_answers_each_consume_as_alone(h: &Harness) {
    for id in [
        "user_m1", "user_m2", "user_m3", "user_m4", "user_m5", "user_m6",
    ] {
        h.billing
            .upsert_customer(&profile(id, "m@example.com"), NOW)
            .await
            .unwrap();
    }
    h.store
        .consume_guarded(&guarded("user_m4", 1, "earlier", 5, 0), NOW)
        .await
        .unwrap();
    h.billing
        .delete_customer(&commit("user_m6", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let batch = [
        guarded("user_m1", 2, "a", 5, 0),
        guarded("user_m2", 1, "b", 5, 7),
        guarded("user_m3", 9, "c", 5, 0),
        guarded("user_m4", 1, "earlier", 5, 0),
        guarded("user_m5", 5, "e", 5, 0),
        guarded("user_m1", 3, "a2", 5, 0),
        guarded("user_m1", 1, "a3", 5, 0),
        guarded("user_nobody", 1, "n", 5, 0),
        guarded("user_m6", 1, "d", 5, 1),
        guarded("user_m3", 5, "c2", 5, 0),
    ];

    let answers = h.store.consume_guarded_batch(&batch, NOW).await.unwrap();

    let answers: Vec<GuardedOutcome> = answers.into_iter().map(Result::unwrap).collect();
    let refused = |used| GuardedOutcome::Decided(UsageOutcome::LimitExceeded { used, limit: 5 });
    assert_eq!(
        answers,
        [
            applied(2, 5, false),
            GuardedOutcome::Stale,
            refused(0),
            applied(1, 5, true),
            applied(5, 5, false),
            applied(5, 5, false),
            refused(5),
            GuardedOutcome::Stale,
            GuardedOutcome::Stale,
            applied(5, 5, false),
        ]
    );
    for (id, used) in [
        ("user_m1", 5),
        ("user_m2", 0),
        ("user_m3", 5),
        ("user_m4", 1),
        ("user_m5", 5),
    ] {
        assert_eq!(counter(h, id).await, used, "{id}");
    }
    // Each applied consume's answer is stored under its key.
    let again = h
        .store
        .consume_guarded_batch(&[batch[0].clone(), batch[4].clone()], NOW)
        .await
        .unwrap();
    let again: Vec<GuardedOutcome> = again.into_iter().map(Result::unwrap).collect();
    assert_eq!(again, [applied(2, 5, true), applied(5, 5, true)]);
}

async fn a_usage_snapshot_has_the_counters_and_the_state_only_when_its_version_changed(
    h: &Harness,
) {
    h.billing
        .upsert_customer(&profile("user_s1", "s1@example.com"), NOW)
        .await
        .unwrap();
    let key = UsageKey {
        feature: FeatureName::parse("websites").unwrap(),
        period_start: None,
    };
    let keys = std::slice::from_ref(&key);
    let before_any = h
        .store
        .usage_snapshot(&customer("user_s1"), None)
        .await
        .unwrap()
        .unwrap();
    h.store
        .consume_guarded(&guarded("user_s1", 2, "a", 5, 0), NOW)
        .await
        .unwrap();
    let unknown_version = h
        .store
        .usage_snapshot(&customer("user_s1"), None)
        .await
        .unwrap()
        .unwrap();
    let known_version = h
        .store
        .usage_snapshot(&customer("user_s1"), Some(0))
        .await
        .unwrap()
        .unwrap();
    h.billing
        .commit_customer(&commit("user_s1", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    let changed = h
        .store
        .usage_snapshot(&customer("user_s1"), Some(0))
        .await
        .unwrap()
        .unwrap();
    h.billing
        .delete_customer(&commit("user_s1", 1, CustomerState::default()), NOW)
        .await
        .unwrap();
    let deleted = h
        .store
        .usage_snapshot(&customer("user_s1"), Some(1))
        .await
        .unwrap()
        .unwrap();
    let unknown = h
        .store
        .usage_snapshot(&customer("user_nobody"), None)
        .await
        .unwrap();

    assert_eq!(before_any.usage(keys).used(&key), 0);
    assert_eq!(
        (unknown_version.version, unknown_version.deleted),
        (0, false)
    );
    assert_eq!(unknown_version.state, Some(CustomerState::default()));
    assert_eq!(unknown_version.usage(keys).used(&key), 2);
    assert_eq!(known_version.state, None, "the caller has that state");
    assert_eq!(known_version.usage(keys).used(&key), 2);
    assert_eq!((changed.version, changed.deleted), (1, false));
    assert!(changed.state.is_some());
    assert!(deleted.deleted);
    assert!(unknown.is_none());
}

async fn snapshots_of_many_customers_answer_each_read_as_alone_in_order(h: &Harness) {
    // 40 customers, customer i with i websites used (0 has no counter row),
    // every third one at version 1, one deleted.
    let ids: Vec<String> = (0..40).map(|i| format!("user_many{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        h.billing
            .upsert_customer(&profile(id, &format!("{id}@example.com")), NOW)
            .await
            .unwrap();
        if i > 0 {
            let amount = u64::try_from(i).unwrap();
            h.store
                .consume_guarded(&guarded(id, amount, "k", 100, 0), NOW)
                .await
                .unwrap();
        }
        if i % 3 == 0 {
            h.billing
                .commit_customer(&commit(id, 0, CustomerState::default()), NOW)
                .await
                .unwrap();
        }
    }
    h.billing
        .delete_customer(&commit("user_many7", 0, CustomerState::default()), NOW)
        .await
        .unwrap();
    // Every customer twice (once knowing version 0, once knowing nothing),
    // one of them a third time, and a customer that does not exist, in an
    // order unlike the rows'.
    let mut reads: Vec<(CustomerId, Option<i64>)> = Vec::new();
    for id in ids.iter().rev() {
        reads.push((customer(id), Some(0)));
        reads.push((customer("user_nobody"), None));
        reads.push((customer(id), None));
    }
    reads.push((customer("user_many5"), Some(0)));

    let together = h.store.usage_snapshots(&reads).await.unwrap();

    assert_eq!(together.len(), reads.len());
    for ((id, known), snapshot) in reads.iter().zip(&together) {
        let alone = h.store.usage_snapshot(id, *known).await.unwrap();
        assert_eq!(snapshot, &alone, "{id} knowing {known:?}");
    }
    let key = UsageKey {
        feature: FeatureName::parse("websites").unwrap(),
        period_start: None,
    };
    let keys = std::slice::from_ref(&key);
    for (i, id) in ids.iter().enumerate() {
        if i == 7 {
            continue;
        }
        let at = reads
            .iter()
            .position(|(c, k)| c.as_str() == id && k.is_none())
            .unwrap();
        let snapshot = together[at].as_ref().unwrap();
        assert_eq!(
            snapshot.usage(keys).used(&key),
            u64::try_from(i).unwrap(),
            "{id}"
        );
        let version = i64::from(i % 3 == 0);
        assert_eq!(
            (snapshot.version, snapshot.deleted),
            (version, false),
            "{id}"
        );
        assert!(snapshot.state.is_some(), "{id}: the caller knew no version");
        let known = together[at - 2].as_ref().unwrap();
        assert_eq!(known.state.is_none(), known.version == 0, "{id}");
    }
    let deleted = reads
        .iter()
        .position(|(c, _)| c.as_str() == "user_many7")
        .unwrap();
    assert!(together[deleted].as_ref().unwrap().deleted);
    assert!(
        together.iter().skip(1).step_by(3).all(Option::is_none),
        "user_nobody"
    );
    assert!(h.store.usage_snapshots(&[]).await.unwrap().is_empty());
}

/// A metered consume whose overage (past 3 included) is reported.
fn metered(id: &str, amount: u64, key: &str) -> billd_store::UsageRequest {
    let mut request = usage(id, "generations", Some(NOW - 100), amount, key);
    request.overage = Some(billd_core::OverageMeter {
        included: 3,
        event_name: "billd_generations".to_owned(),
        stripe_customer: billd_core::StripeCustomerId::parse("cus_meter").unwrap(),
    });
    request
}

/// (dedupe key, value) of the customer's meter event rows.
async fn meter_events(h: &Harness, id: &str) -> Vec<(String, u64)> {
    h.billing
        .list_outbox(&billd_store::OutboxFilter {
            status: None,
            customer_id: Some(customer(id)),
            limit: 0,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row.kind == "meter_event")
        .map(|row| match row.effect().unwrap() {
            billd_core::Effect::MeterEvent {
                value, identifier, ..
            } => {
                assert_eq!(row.dedupe_key, format!("meter_event:{identifier}"));
                (identifier, value)
            }
            other => panic!("not a meter event: {other:?}"),
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

async fn an_overage_consume_writes_one_meter_event_in_its_transaction_on_every_path(h: &Harness) {
    for id in ["user_m1", "user_m2", "user_m3"] {
        h.billing
            .upsert_customer(&profile(id, &format!("{id}@example.com")), NOW)
            .await
            .unwrap();
    }
    let limit = 3 + 4;
    let guarded = |id: &str, amount: u64, key: &str| GuardedConsume {
        request: metered(id, amount, key),
        limit,
        customer_version: 0,
    };

    // One by one, guarded: within the quota, across it, a replay, past the cap.
    let one = |g: GuardedConsume| async move { h.store.consume_guarded(&g, NOW).await.unwrap() };
    assert_eq!(
        one(guarded("user_m1", 2, "a")).await,
        applied(2, limit, false)
    );
    assert_eq!(
        one(guarded("user_m1", 3, "b")).await,
        applied(5, limit, false)
    );
    assert_eq!(
        one(guarded("user_m1", 3, "b")).await,
        applied(5, limit, true)
    );
    assert_eq!(
        one(guarded("user_m1", 3, "c")).await,
        GuardedOutcome::Decided(UsageOutcome::LimitExceeded { used: 5, limit })
    );
    assert_eq!(
        one(guarded("user_m1", 2, "d")).await,
        applied(7, limit, false)
    );
    assert_eq!(
        meter_events(h, "user_m1").await,
        [("user_m1:b".to_owned(), 2), ("user_m1:d".to_owned(), 2)]
    );

    // Group-committed: the same answers, the same rows.
    let batch = [
        guarded("user_m2", 2, "a"),
        guarded("user_m2", 3, "b"),
        guarded("user_m2", 3, "b"),
        guarded("user_m2", 3, "c"),
        guarded("user_m2", 2, "d"),
    ];
    let answers: Vec<GuardedOutcome> = h
        .store
        .consume_guarded_batch(&batch, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(answers[4], applied(7, limit, false));
    assert_eq!(
        meter_events(h, "user_m2").await,
        [("user_m2:b".to_owned(), 2), ("user_m2:d".to_owned(), 2)]
    );

    // Unguarded (`BillingStore::consume`), and the key's replay.
    for _ in 0..2 {
        h.billing
            .consume(&metered("user_m3", 5, "x"), limit, NOW)
            .await
            .unwrap();
    }
    assert_eq!(
        meter_events(h, "user_m3").await,
        [("user_m3:x".to_owned(), 2)]
    );
}

/// A metered consume with overage past 3 included (cap 4) and two packs:
/// 5 units bought first, then 10.
fn credited(id: &str, amount: u64, key: &str) -> billd_store::UsageRequest {
    let mut request = metered(id, amount, key);
    request.credits = Some(billd_core::CreditTarget {
        included: 3,
        sources: vec![
            billd_core::credits::CreditSource {
                payment: "pi_first".to_owned(),
                amount: 5,
            },
            billd_core::credits::CreditSource {
                payment: "pi_second".to_owned(),
                amount: 10,
            },
        ],
    });
    request
}

/// A consume of the credits scenario: (amount, key, answer, books after it).
type Step = (u64, &'static str, GuardedOutcome, (u64, u64, u64));

/// (period counter, credits used per pack) of the customer.
async fn credit_books(h: &Harness, id: &str) -> (u64, u64, u64) {
    let key = UsageKey {
        feature: FeatureName::parse("generations").unwrap(),
        period_start: Some(NOW - 100),
    };
    let usage = h
        .billing
        .load_usage(&customer(id), std::slice::from_ref(&key))
        .await
        .unwrap();
    (
        usage.used(&key),
        usage.credits_used("pi_first"),
        usage.credits_used("pi_second"),
    )
}

async fn a_consume_takes_the_quota_then_credits_first_bought_first_then_overage_on_every_path(
    h: &Harness,
) {
    for id in ["user_c1", "user_c2", "user_c3"] {
        h.billing
            .upsert_customer(&profile(id, &format!("{id}@example.com")), NOW)
            .await
            .unwrap();
    }
    let limit = 3 + 4;
    let guarded = |id: &str, amount: u64, key: &str| GuardedConsume {
        request: credited(id, amount, key),
        limit,
        customer_version: 0,
    };
    // 2 included; 1 included + 6 credits (5 of the first pack, 1 of the
    // second); a replay; 9 credits (none left); 5, past the cap of 4; 4 of
    // overage. Each: (amount, key, answer, books after it).
    let steps: [Step; 6] = [
        (2, "a", applied(2, limit, false), (2, 0, 0)),
        (7, "b", applied(3, limit, false), (3, 5, 1)),
        (7, "b", applied(3, limit, true), (3, 5, 1)),
        (9, "c", applied(3, limit, false), (3, 5, 10)),
        (
            5,
            "d",
            GuardedOutcome::Decided(UsageOutcome::LimitExceeded { used: 3, limit }),
            (3, 5, 10),
        ),
        (4, "e", applied(7, limit, false), (3 + 4, 5, 10)),
    ];

    // One by one, guarded.
    for (amount, key, answer, books) in &steps {
        let got = h
            .store
            .consume_guarded(&guarded("user_c1", *amount, key), NOW)
            .await
            .unwrap();
        assert_eq!(&got, answer, "{key}");
        assert_eq!(&credit_books(h, "user_c1").await, books, "{key}");
    }
    // Only the overage is metered: 4 units, by the last consume.
    assert_eq!(
        meter_events(h, "user_c1").await,
        [("user_c1:e".to_owned(), 4)]
    );

    // Group-committed: the same answers and counters.
    let batch: Vec<GuardedConsume> = steps
        .iter()
        .map(|(amount, key, ..)| guarded("user_c2", *amount, key))
        .collect();
    let answers: Vec<GuardedOutcome> = h
        .store
        .consume_guarded_batch(&batch, NOW)
        .await
        .unwrap()
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let expected: Vec<GuardedOutcome> = steps.iter().map(|(_, _, a, _)| *a).collect();
    assert_eq!(answers, expected);
    assert_eq!(credit_books(h, "user_c2").await, (7, 5, 10));
    assert_eq!(
        meter_events(h, "user_c2").await,
        [("user_c2:e".to_owned(), 4)]
    );

    // Unguarded, and a stale version writes nothing.
    h.billing
        .consume(&credited("user_c3", 10, "x"), limit, NOW)
        .await
        .unwrap();
    assert_eq!(credit_books(h, "user_c3").await, (3, 5, 2));
    let stale = GuardedConsume {
        customer_version: 9,
        ..guarded("user_c3", 1, "y")
    };
    assert_eq!(
        h.store.consume_guarded(&stale, NOW).await.unwrap(),
        GuardedOutcome::Stale
    );
    assert_eq!(credit_books(h, "user_c3").await, (3, 5, 2));
}

async fn concurrent_consumes_of_two_periods_never_take_a_packs_unit_twice(h: &Harness) {
    h.billing
        .upsert_customer(&profile("user_c4", "c4@example.com"), NOW)
        .await
        .unwrap();
    // 40 consumes of 1 at once, half on this period's counter and half on
    // the next one's (a renewal under way), no overage: 3 included in each
    // period and the packs' 15 units, 21 in all.
    let mut tasks = Vec::new();
    for n in 0..40u64 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut consume = GuardedConsume {
                request: credited("user_c4", 1, &format!("k{n}")),
                limit: 3,
                customer_version: 0,
            };
            consume.request.overage = None;
            if n % 2 == 1 {
                consume.request.key.period_start = Some(NOW + 1_000);
            }
            store.consume_guarded(&consume, NOW).await
        }));
    }
    let (mut applied, mut unavailable) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            Ok(GuardedOutcome::Decided(UsageOutcome::Applied { .. })) => applied += 1,
            Ok(_) => {}
            // SQLite may time out waiting for its writer under this load.
            Err(StoreError::Unavailable(_)) => unavailable += 1,
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    let (counter, first, second) = credit_books(h, "user_c4").await;
    assert!(counter <= 3 && first <= 5 && second <= 10);
    let next = UsageKey {
        feature: FeatureName::parse("generations").unwrap(),
        period_start: Some(NOW + 1_000),
    };
    let next_counter = h
        .billing
        .load_usage(&customer("user_c4"), std::slice::from_ref(&next))
        .await
        .unwrap()
        .used(&next);
    assert!(next_counter <= 3);
    assert_eq!(applied, counter + next_counter + first + second);
    if unavailable == 0 {
        assert_eq!(applied, 21);
    }
}

/// PostgreSQL only: other processes write the database, so a snapshot is
/// known current only from the database's announcements of changes, heard
/// by a store that follows them ([`UsageStore::follow_changes`]).
mod followed_changes {
    use std::sync::Arc;
    use std::time::Duration;

    use billd_core::CustomerState;
    use billd_store::{BillingStore, PgStore, UsageStore};

    use super::super::{commit, customer, postgres, profile};
    use super::{guarded, NOW};

    async fn connect(url: &str) -> sqlx::PgConnection {
        <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .unwrap()
    }

    /// The pid of the database's one listening connection, if any.
    async fn listening_backend(sql: &mut sqlx::PgConnection) -> Option<i32> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = 'billd change feed'",
        )
        .fetch_all(sql)
        .await
        .unwrap();
        assert!(pids.len() <= 1, "{pids:?}");
        pids.first().copied()
    }

    /// Settles `store`, waiting for its listener to be up first.
    async fn settled(store: &PgStore) {
        for _ in 0..200 {
            if store.write_mark().is_some() && store.settle().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the change feed did not start listening");
    }

    /// Whether a snapshot of `id` read after `mark` is still current once
    /// settled.
    async fn current(store: &PgStore, mark: billd_store::WriteMark, id: &str) -> bool {
        let snapshot = store
            .usage_snapshot(&customer(id), None)
            .await
            .unwrap()
            .unwrap();
        assert!(store.settle().await);
        store.still_current(mark, &snapshot)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_stays_current_until_any_process_changes_its_customer() {
        let harness = postgres().await;
        let reader = PgStore::connect(&harness.url).await.unwrap();
        let writer: Arc<dyn BillingStore> = harness.another().await;
        for id in ["user_f1", "user_f2"] {
            writer
                .upsert_customer(&profile(id, "f@example.com"), NOW)
                .await
                .unwrap();
        }
        assert_eq!(reader.write_mark(), None, "no marks before following");
        reader.follow_changes();
        settled(&reader).await;

        // Nothing written since: both current.
        let mark = reader.write_mark().unwrap();
        let f1 = reader
            .usage_snapshot(&customer("user_f1"), None)
            .await
            .unwrap()
            .unwrap();
        let f2 = reader
            .usage_snapshot(&customer("user_f2"), None)
            .await
            .unwrap()
            .unwrap();
        assert!(reader.settle().await);
        assert!(reader.still_current(mark, &f1));
        assert!(reader.still_current(mark, &f2));

        // A consume by another process: stale at once after settling (no
        // wait for the announcement beyond `settle`), the other customer
        // not. Twenty times, since an announcement usually arrives soon
        // enough even without settling.
        let consumer = PgStore::connect(&harness.url).await.unwrap();
        for i in 0..20 {
            let mark = reader.write_mark().unwrap();
            let f1 = reader
                .usage_snapshot(&customer("user_f1"), None)
                .await
                .unwrap()
                .unwrap();
            consumer
                .consume_guarded(&guarded("user_f1", 1, &format!("k{i}"), 50, 0), NOW)
                .await
                .unwrap();
            assert!(reader.settle().await);
            assert!(!reader.still_current(mark, &f1), "a counter changed ({i})");
            assert!(reader.still_current(mark, &f2), "another customer ({i})");
        }

        // A state committed by another process.
        let mark = reader.write_mark().unwrap();
        assert!(current(&reader, mark, "user_f2").await);
        writer
            .commit_customer(&commit("user_f2", 0, CustomerState::default()), NOW)
            .await
            .unwrap();
        assert!(!current(&reader, mark, "user_f2").await, "a state changed");

        // A write no billd code makes (an operator's SQL) is heard as well,
        // and a rolled-back one is not.
        let mark = reader.write_mark().unwrap();
        let mut sql = connect(&harness.url).await;
        let mut tx = sqlx::Connection::begin(&mut sql).await.unwrap();
        sqlx::query("UPDATE usage_counters SET used = 0 WHERE customer_id = 'user_f1'")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        assert!(current(&reader, mark, "user_f1").await, "rolled back");
        sqlx::query("UPDATE usage_counters SET used = 0 WHERE customer_id = 'user_f1'")
            .execute(&mut sql)
            .await
            .unwrap();
        assert!(!current(&reader, mark, "user_f1").await, "committed");

        // A TRUNCATE changes every customer.
        let mark = reader.write_mark().unwrap();
        assert!(current(&reader, mark, "user_f2").await);
        sqlx::query("TRUNCATE usage_counters")
            .execute(&mut sql)
            .await
            .unwrap();
        assert!(!current(&reader, mark, "user_f2").await, "truncated");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_listener_answers_nothing_from_memory_until_it_listens_again() {
        let harness = postgres().await;
        let reader = PgStore::connect(&harness.url).await.unwrap();
        reader
            .upsert_customer(&profile("user_l1", "l@example.com"), NOW)
            .await
            .unwrap();
        reader.follow_changes();
        settled(&reader).await;
        let mark = reader.write_mark().unwrap();
        assert!(current(&reader, mark, "user_l1").await);

        // The server ends the listening connection (a restart, a network
        // failure, an operator).
        let mut sql = connect(&harness.url).await;
        let before = listening_backend(&mut sql).await.unwrap();
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(before)
            .execute(&mut sql)
            .await
            .unwrap();
        // It listens again on a new connection (by then it has noticed).
        let mut again = None;
        for _ in 0..200 {
            again = listening_backend(&mut sql)
                .await
                .filter(|pid| *pid != before);
            if again.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert!(again.is_some(), "the change feed did not listen again");
        // Changes made while it was down are lost, so every earlier mark is
        // stale, even once it listens again.
        settled(&reader).await;
        assert!(!current(&reader, mark, "user_l1").await);
        let mark = reader.write_mark().unwrap();
        assert!(current(&reader, mark, "user_l1").await);
    }
}
