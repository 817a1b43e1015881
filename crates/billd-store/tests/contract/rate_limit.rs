//! The shared rate limit table, against both stores: two store handles on
//! one database are two billd processes and share one limit.

#![expect(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use billd_store::{Backend, RateDecision};

use super::Harness;

const T: i64 = 1_800_000_000;
const WINDOW: i64 = 60;

/// Rows in `rate_limits`, read past the store (the trait has no listing).
async fn rows(h: &Harness) -> i64 {
    let sql = "SELECT COUNT(*) FROM rate_limits";
    match h.store.backend() {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&h.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&h.url).await.unwrap();
            sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
        }
    }
}

pub(super) async fn two_stores_on_one_database_share_one_limit_per_window(h: &Harness) {
    let (a, b) = (h.store.clone(), h.another().await);
    let take = |store: &std::sync::Arc<dyn billd_store::Store>, now: i64| {
        let store = store.clone();
        async move {
            store
                .take_rate_token("checkout", "u_1", 3, WINDOW, now)
                .await
                .unwrap()
        }
    };

    let first = [
        take(&a, T).await,
        take(&b, T + 1).await,
        take(&a, T + 2).await,
    ];
    let fourth = take(&b, T + 10).await;
    let other_subject = a
        .take_rate_token("checkout", "u_2", 3, WINDOW, T + 10)
        .await
        .unwrap();
    let other_scope = b
        .take_rate_token("portal", "u_1", 3, WINDOW, T + 10)
        .await
        .unwrap();
    let next_window = take(&a, T + WINDOW).await;

    assert_eq!(first, [RateDecision::Allowed; 3]);
    assert_eq!(
        fourth,
        RateDecision::Limited {
            retry_after_secs: WINDOW - 10
        }
    );
    assert_eq!(
        (other_subject, other_scope),
        (RateDecision::Allowed, RateDecision::Allowed)
    );
    assert_eq!(next_window, RateDecision::Allowed);
}

pub(super) async fn a_refused_hit_is_not_counted_and_ended_windows_are_pruned(h: &Harness) {
    let store = &h.store;
    let mut answers = Vec::new();
    for now in [T, T + 1, T + 2, T + 3, T + 4] {
        answers.push(
            store
                .take_rate_token("checkout", "u_1", 2, WINDOW, now)
                .await
                .unwrap(),
        );
    }
    store
        .take_rate_token("checkout", "u_old", 2, WINDOW, T)
        .await
        .unwrap();
    let rows_in_window = rows(h).await;

    // The window of u_1 began at T: at T + 60 it has ended, and the refused
    // hits did not stretch or fill the next one.
    let later = [
        store
            .take_rate_token("checkout", "u_1", 2, WINDOW, T + WINDOW)
            .await
            .unwrap(),
        store
            .take_rate_token("checkout", "u_1", 2, WINDOW, T + WINDOW + 1)
            .await
            .unwrap(),
        store
            .take_rate_token("checkout", "u_1", 2, WINDOW, T + WINDOW + 2)
            .await
            .unwrap(),
    ];

    assert_eq!(
        answers,
        [
            RateDecision::Allowed,
            RateDecision::Allowed,
            RateDecision::Limited {
                retry_after_secs: WINDOW - 2
            },
            RateDecision::Limited {
                retry_after_secs: WINDOW - 3
            },
            RateDecision::Limited {
                retry_after_secs: WINDOW - 4
            },
        ]
    );
    assert_eq!(rows_in_window, 2);
    assert_eq!(
        later,
        [
            RateDecision::Allowed,
            RateDecision::Allowed,
            RateDecision::Limited {
                retry_after_secs: WINDOW - 2
            },
        ]
    );
    assert_eq!(rows(h).await, 1, "u_old's ended window was pruned");
}

pub(super) async fn concurrent_hits_from_two_stores_admit_exactly_the_limit(h: &Harness) {
    let stores = [h.store.clone(), h.another().await];
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                store
                    .take_rate_token("checkout", "u_busy", 5, WINDOW, T)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut allowed = 0;
    for task in tasks {
        if task.await.unwrap() == RateDecision::Allowed {
            allowed += 1;
        }
    }

    assert_eq!(allowed, 5);
}
