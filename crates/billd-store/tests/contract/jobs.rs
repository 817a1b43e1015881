//! The scheduler's lease rows and queue sweeps, against both stores.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use billd_store::{EventStatus, JobFinish, NewOutboxItem, OutboxFilter, OutboxStatus};

use super::{event, Harness};

macro_rules! jobs_contract {
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

jobs_contract!(
    a_new_job_is_claimed_at_once_and_not_again_while_its_lease_lives,
    a_finished_run_records_its_outcome_and_the_job_waits_for_its_next_run,
    an_expired_lease_goes_to_another_owner_and_the_old_owner_cannot_finish,
    many_stores_claiming_one_due_job_at_once_give_exactly_one_lease,
    the_outbox_sweep_puts_rows_with_expired_leases_back_to_pending,
    the_inbox_sweep_marks_events_with_expired_leases_failed_for_a_retry,
    releasing_every_claim_ends_live_job_leases_so_a_due_job_runs_at_once,
);

const T: i64 = 1_800_000_000;

async fn a_new_job_is_claimed_at_once_and_not_again_while_its_lease_lives(h: &Harness) {
    let store = &h.store;

    let first = store.claim_job("reminders", "a", T, T + 60).await.unwrap();
    let again = store
        .claim_job("reminders", "b", T + 59, T + 120)
        .await
        .unwrap();

    let first = first.expect("a job without a row is due");
    assert_eq!(first.lease_owner.as_deref(), Some("a"));
    assert_eq!(first.lease_until, Some(T + 60));
    assert_eq!(first.runs, 0);
    assert!(again.is_none(), "a live lease is never shared");
    let other = store
        .claim_job("card_expiry", "b", T, T + 60)
        .await
        .unwrap();
    assert!(other.is_some(), "leases are per job");
}

async fn a_finished_run_records_its_outcome_and_the_job_waits_for_its_next_run(h: &Harness) {
    let store = &h.store;
    store
        .claim_job("sweep", "a", T, T + 60)
        .await
        .unwrap()
        .unwrap();

    let finished = store
        .finish_job(
            "sweep",
            "a",
            &JobFinish {
                next_run_at: T + 300,
                error: Some("database busy".into()),
            },
            T + 5,
        )
        .await
        .unwrap();

    assert!(finished);
    let jobs = store.list_jobs().await.unwrap();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(job.name, "sweep");
    assert_eq!((job.lease_owner.as_deref(), job.lease_until), (None, None));
    assert_eq!(job.last_run_at, Some(T + 5));
    assert_eq!(job.next_run_at, T + 300);
    assert_eq!(job.last_error.as_deref(), Some("database busy"));
    assert_eq!((job.runs, job.failures), (1, 1));
    assert!(store
        .claim_job("sweep", "b", T + 299, T + 400)
        .await
        .unwrap()
        .is_none());

    let next = store
        .claim_job("sweep", "b", T + 300, T + 400)
        .await
        .unwrap();
    assert_eq!(next.unwrap().lease_owner.as_deref(), Some("b"));
    let ok = JobFinish {
        next_run_at: T + 600,
        error: None,
    };
    assert!(store.finish_job("sweep", "b", &ok, T + 301).await.unwrap());
    let job = store.list_jobs().await.unwrap().remove(0);
    assert_eq!(job.last_error, None);
    assert_eq!((job.runs, job.failures), (2, 1));
}

async fn an_expired_lease_goes_to_another_owner_and_the_old_owner_cannot_finish(h: &Harness) {
    let store = &h.store;
    store
        .claim_job("reconcile", "crashed", T, T + 60)
        .await
        .unwrap()
        .unwrap();

    let taken = store
        .claim_job("reconcile", "b", T + 60, T + 120)
        .await
        .unwrap();
    let late = JobFinish {
        next_run_at: T + 1000,
        error: None,
    };
    let late_finish = store
        .finish_job("reconcile", "crashed", &late, T + 61)
        .await
        .unwrap();

    assert_eq!(taken.unwrap().lease_owner.as_deref(), Some("b"));
    assert!(!late_finish, "a lost lease cannot record a run");
    let job = store.list_jobs().await.unwrap().remove(0);
    assert_eq!(job.lease_owner.as_deref(), Some("b"));
    assert_eq!(job.runs, 0);
}

async fn many_stores_claiming_one_due_job_at_once_give_exactly_one_lease(h: &Harness) {
    let mut stores = vec![h.store.clone()];
    for _ in 0..3 {
        stores.push(h.another().await);
    }
    for round in 0..5_i64 {
        let now = T + round * 100;
        let claims = stores.iter().enumerate().map(|(i, store)| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .claim_job("renewal_reminders", &format!("owner-{i}"), now, now + 50)
                    .await
                    .unwrap()
            })
        });
        let won: Vec<_> = futures_join(claims).await.into_iter().flatten().collect();

        assert_eq!(won.len(), 1, "round {round}: exactly one claimer wins");
        let owner = won[0].lease_owner.clone().unwrap();
        let next = JobFinish {
            next_run_at: now + 100,
            error: None,
        };
        assert!(h
            .store
            .finish_job("renewal_reminders", &owner, &next, now + 1)
            .await
            .unwrap());
    }
    assert_eq!(h.store.list_jobs().await.unwrap()[0].runs, 5);
}

async fn futures_join<T: Send + 'static>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut out = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        out.push(handle.await.unwrap());
    }
    out
}

async fn the_outbox_sweep_puts_rows_with_expired_leases_back_to_pending(h: &Harness) {
    let store = &h.store;
    let items: Vec<NewOutboxItem> = ["a", "b"]
        .iter()
        .map(|key| NewOutboxItem {
            dedupe_key: (*key).to_owned(),
            kind: "email".into(),
            payload: "{}".into(),
        })
        .collect();
    store.enqueue_outbox(None, &items, T).await.unwrap();
    let claimed = store.claim_outbox(T, T + 30, 1).await.unwrap();
    assert_eq!(claimed.len(), 1);

    let early = store.release_expired_outbox_leases(T + 29).await.unwrap();
    let swept = store.release_expired_outbox_leases(T + 30).await.unwrap();

    assert_eq!((early, swept), (0, 1));
    let rows = store.list_outbox(&OutboxFilter::default()).await.unwrap();
    assert!(rows.iter().all(|row| row.status == OutboxStatus::Pending));
    let swept_row = rows.iter().find(|row| row.id == claimed[0].id).unwrap();
    assert_eq!(swept_row.attempts, 1, "attempts are kept");
    assert_eq!(
        store.claim_outbox(T + 30, T + 60, 10).await.unwrap().len(),
        2
    );
}

async fn the_inbox_sweep_marks_events_with_expired_leases_failed_for_a_retry(h: &Harness) {
    let store = &h.store;
    store
        .insert_events(&[event("evt_swept", Some("cus_1"), T)])
        .await
        .unwrap();
    store.claim_events(T, T + 30, 10).await.unwrap();

    let early = store.release_expired_inbox_leases(T + 29).await.unwrap();
    let swept = store.release_expired_inbox_leases(T + 30).await.unwrap();

    assert_eq!((early, swept), (0, 1));
    let stored = store.get_event("evt_swept").await.unwrap().unwrap();
    assert_eq!(stored.status, EventStatus::Failed);
    assert_eq!(stored.attempts, 1);
    assert!(stored.last_error.unwrap().contains("lease expired"));
    assert_eq!(
        store.claim_events(T + 30, T + 60, 10).await.unwrap().len(),
        1
    );
}

/// A SQLite start-up (the serve lock held) releases the job leases a
/// killed process left, as it releases its inbox and outbox claims: the
/// job runs at once instead of after the lease, and the dead holder's late
/// finish is refused once the new owner holds it.
async fn releasing_every_claim_ends_live_job_leases_so_a_due_job_runs_at_once(h: &Harness) {
    let store = &h.store;
    store
        .claim_job("reminders", "dead", T, T + 600)
        .await
        .unwrap()
        .expect("due");
    let finished = JobFinish {
        next_run_at: T + 3_600,
        error: None,
    };
    store
        .claim_job("waiting", "dead", T, T + 60)
        .await
        .unwrap()
        .expect("due");
    assert!(store
        .finish_job("waiting", "dead", &finished, T + 1)
        .await
        .unwrap());

    let released = store.release_all_claims(T + 2).await.unwrap();
    let reclaimed = store
        .claim_job("reminders", "fresh", T + 2, T + 62)
        .await
        .unwrap();
    let not_due = store
        .claim_job("waiting", "fresh", T + 2, T + 62)
        .await
        .unwrap();

    assert_eq!(released.jobs, 1, "only the live lease: {released:?}");
    let reclaimed = reclaimed.expect("the released lease is claimed at once");
    assert_eq!(reclaimed.lease_owner.as_deref(), Some("fresh"));
    assert!(not_due.is_none(), "a release makes nothing due early");
    assert!(!store
        .finish_job("reminders", "dead", &finished, T + 3)
        .await
        .unwrap());
}
