//! The idempotency table: a key is taken by exactly one run, its answer
//! replays for the same request, another request or a run in flight is
//! refused, a dead run's lease ends, and keys expire.

use std::sync::Arc;

use billd_core::IdempotencyKey;
use billd_store::{IdempotencyScope, IdempotentRequest, KeyTaken, Store, StoredAnswer};

use super::{customer, postgres, sqlite, Harness, NOW};

contract!(
    a_new_key_runs_and_its_answer_replays_for_the_same_request_only,
    a_key_in_flight_is_in_use_until_its_lease_ends_then_the_same_request_takes_it_over,
    a_key_given_back_after_a_server_error_runs_again,
    keys_are_scoped_per_customer_and_key_class,
    an_expired_key_runs_again_and_the_sweep_deletes_only_expired_keys,
    of_concurrent_takes_from_two_stores_exactly_one_runs,
);

const DAY: i64 = 86_400;

fn scope(user: &str, class: &str, key: &str) -> IdempotencyScope {
    IdempotencyScope {
        customer_id: customer(user),
        key_class: class.to_owned(),
        key: IdempotencyKey::parse(key).unwrap(),
    }
}

fn request(
    scope: &IdempotencyScope,
    fingerprint: &str,
    token: &str,
    now: i64,
) -> IdempotentRequest {
    IdempotentRequest {
        scope: scope.clone(),
        fingerprint: fingerprint.to_owned(),
        token: token.to_owned(),
        locked_until: now + 60,
        expires_at: now + DAY,
    }
}

fn answer(status: u16, body: &str) -> StoredAnswer {
    StoredAnswer {
        status,
        body: body.to_owned(),
    }
}

async fn a_new_key_runs_and_its_answer_replays_for_the_same_request_only(h: &Harness) {
    let k = scope("u_idem", "app", "k1");

    let first = h
        .store
        .take_idempotency_key(&request(&k, "fp_a", "t1", NOW), NOW)
        .await
        .unwrap();
    let stored = h
        .store
        .store_idempotent_answer(&k, "t1", &answer(200, "{\"ok\":1}"))
        .await
        .unwrap();
    let again = h
        .store
        .take_idempotency_key(&request(&k, "fp_a", "t2", NOW + 5), NOW + 5)
        .await
        .unwrap();
    let other = h
        .store
        .take_idempotency_key(&request(&k, "fp_b", "t3", NOW + 6), NOW + 6)
        .await
        .unwrap();
    let overwritten = h
        .store
        .store_idempotent_answer(&k, "t1", &answer(201, "{}"))
        .await
        .unwrap();

    assert_eq!(first, KeyTaken::Run { first_seen: NOW });
    assert!(stored);
    assert_eq!(again, KeyTaken::Replay(answer(200, "{\"ok\":1}")));
    assert_eq!(other, KeyTaken::Reused);
    assert!(!overwritten, "an answered key keeps its first answer");
    assert!(h
        .store
        .store_idempotent_answer(&k, "t1", &answer(500, "{}"))
        .await
        .is_err());
}

async fn a_key_in_flight_is_in_use_until_its_lease_ends_then_the_same_request_takes_it_over(
    h: &Harness,
) {
    let k = scope("u_lease", "app", "k1");
    h.store
        .take_idempotency_key(&request(&k, "fp", "dead", NOW), NOW)
        .await
        .unwrap();

    let during = h
        .store
        .take_idempotency_key(&request(&k, "fp", "t2", NOW + 59), NOW + 59)
        .await
        .unwrap();
    let other_during = h
        .store
        .take_idempotency_key(&request(&k, "fp_other", "t3", NOW + 59), NOW + 59)
        .await
        .unwrap();
    let other_after = h
        .store
        .take_idempotency_key(&request(&k, "fp_other", "t4", NOW + 60), NOW + 60)
        .await
        .unwrap();
    let after = h
        .store
        .take_idempotency_key(&request(&k, "fp", "t5", NOW + 60), NOW + 60)
        .await
        .unwrap();
    let late_dead_run = h
        .store
        .store_idempotent_answer(&k, "dead", &answer(200, "{\"run\":\"dead\"}"))
        .await
        .unwrap();
    let new_run = h
        .store
        .store_idempotent_answer(&k, "t5", &answer(200, "{\"run\":\"t5\"}"))
        .await
        .unwrap();

    assert_eq!(during, KeyTaken::InUse);
    assert_eq!(other_during, KeyTaken::Reused);
    assert_eq!(other_after, KeyTaken::Reused);
    assert_eq!(
        after,
        KeyTaken::Run { first_seen: NOW },
        "the take-over keeps when the key was first seen"
    );
    assert!(
        !late_dead_run,
        "a run whose key was taken over stores nothing"
    );
    assert!(new_run);
    assert_eq!(
        h.store
            .take_idempotency_key(&request(&k, "fp", "t6", NOW + 61), NOW + 61)
            .await
            .unwrap(),
        KeyTaken::Replay(answer(200, "{\"run\":\"t5\"}"))
    );
}

async fn a_key_given_back_after_a_server_error_runs_again(h: &Harness) {
    let k = scope("u_5xx", "app", "k1");
    h.store
        .take_idempotency_key(&request(&k, "fp", "t1", NOW), NOW)
        .await
        .unwrap();

    let wrong_token = h
        .store
        .release_idempotency_key(&k, "t_other")
        .await
        .unwrap();
    let released = h.store.release_idempotency_key(&k, "t1").await.unwrap();
    let retry = h
        .store
        .take_idempotency_key(&request(&k, "fp_changed", "t2", NOW + 1), NOW + 1)
        .await
        .unwrap();

    assert!(!wrong_token);
    assert!(released);
    assert_eq!(
        retry,
        KeyTaken::Run {
            first_seen: NOW + 1
        }
    );
    h.store
        .store_idempotent_answer(&k, "t2", &answer(200, "{}"))
        .await
        .unwrap();
    assert!(
        !h.store.release_idempotency_key(&k, "t2").await.unwrap(),
        "an answered key is never given back"
    );
}

async fn keys_are_scoped_per_customer_and_key_class(h: &Harness) {
    let mine = scope("u_a", "app", "same");
    let other_customer = scope("u_b", "app", "same");
    let other_class = scope("u_a", "admin", "same");
    h.store
        .take_idempotency_key(&request(&mine, "fp", "t1", NOW), NOW)
        .await
        .unwrap();
    h.store
        .store_idempotent_answer(&mine, "t1", &answer(200, "{}"))
        .await
        .unwrap();

    for (scope, token) in [(&other_customer, "t2"), (&other_class, "t3")] {
        let taken = h
            .store
            .take_idempotency_key(&request(scope, "fp_other", token, NOW), NOW)
            .await
            .unwrap();
        assert_eq!(taken, KeyTaken::Run { first_seen: NOW }, "{scope:?}");
    }
}

async fn an_expired_key_runs_again_and_the_sweep_deletes_only_expired_keys(h: &Harness) {
    let old = scope("u_exp", "app", "old");
    let young = scope("u_exp", "app", "young");
    for (k, at) in [(&old, NOW), (&young, NOW + DAY / 2)] {
        h.store
            .take_idempotency_key(&request(k, "fp", "t", at), at)
            .await
            .unwrap();
        h.store
            .store_idempotent_answer(k, "t", &answer(200, "{\"first\":true}"))
            .await
            .unwrap();
    }

    let just_before = h
        .store
        .take_idempotency_key(&request(&old, "fp", "t2", NOW + DAY - 1), NOW + DAY - 1)
        .await
        .unwrap();
    let swept = h
        .store
        .delete_expired_idempotency_keys(NOW + DAY)
        .await
        .unwrap();
    let after_expiry = h
        .store
        .take_idempotency_key(&request(&old, "fp_new", "t3", NOW + DAY), NOW + DAY)
        .await
        .unwrap();
    let young_still = h
        .store
        .take_idempotency_key(&request(&young, "fp", "t4", NOW + DAY), NOW + DAY)
        .await
        .unwrap();

    assert_eq!(
        just_before,
        KeyTaken::Replay(answer(200, "{\"first\":true}"))
    );
    assert_eq!(swept, 1);
    assert_eq!(
        after_expiry,
        KeyTaken::Run {
            first_seen: NOW + DAY
        }
    );
    assert_eq!(
        young_still,
        KeyTaken::Replay(answer(200, "{\"first\":true}"))
    );
    // Expired on read too, before any sweep.
    let read_expired = h
        .store
        .take_idempotency_key(
            &request(&young, "fp_new", "t5", NOW + DAY + DAY / 2),
            NOW + DAY + DAY / 2,
        )
        .await
        .unwrap();
    assert_eq!(
        read_expired,
        KeyTaken::Run {
            first_seen: NOW + DAY + DAY / 2
        }
    );
}

async fn of_concurrent_takes_from_two_stores_exactly_one_runs(h: &Harness) {
    let other: Arc<dyn Store> = h.another_checkout().await;
    let k = scope("u_race", "app", "k1");

    let takes = take_at_once(h, &other, &k).await;

    let runs = takes
        .iter()
        .filter(|t| matches!(t, KeyTaken::Run { .. }))
        .count();
    let in_use = takes.iter().filter(|t| **t == KeyTaken::InUse).count();
    assert_eq!((runs, in_use), (1, takes.len() - 1), "{takes:?}");
}

/// Eight takes of one key, half through each store, at once.
async fn take_at_once(h: &Harness, other: &Arc<dyn Store>, k: &IdempotencyScope) -> Vec<KeyTaken> {
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 {
            h.store.clone()
        } else {
            other.clone()
        };
        let request = request(k, "fp", &format!("t{i}"), NOW);
        tasks.push(tokio::spawn(async move {
            store.take_idempotency_key(&request, NOW).await.unwrap()
        }));
    }
    let mut takes = Vec::new();
    for task in tasks {
        takes.push(task.await.unwrap());
    }
    takes
}
