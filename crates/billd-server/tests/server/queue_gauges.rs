//! `/metrics` shows the queued work read from the store: outbox depth by
//! status, the oldest waiting row's age, and each scheduler job's last run,
//! last success, failure flag and next run.

use billd_core::{AlertKind, Effect};
use billd_store::{JobFinish, NewOutboxItem, OutboxResult};

use crate::on_both_databases;
use crate::support::{now, Db, TestApp};

on_both_databases!(metrics_show_outbox_depth_its_oldest_waiting_row_and_scheduler_runs,);

fn alert(key: &str) -> NewOutboxItem {
    NewOutboxItem::from_effect(&Effect::AdminAlert {
        alert: AlertKind::OutboxDead,
        message: key.to_owned(),
        dedupe_key: key.to_owned(),
    })
    .unwrap()
}

async fn metrics_show_outbox_depth_its_oldest_waiting_row_and_scheduler_runs(db: Db) {
    let app = TestApp::spawn(db).await;
    let t = now();
    let store = &app.store;
    let keys = ["a", "b", "c", "d"].map(alert);
    store
        .enqueue_outbox(None, &keys[..1], t - 600)
        .await
        .unwrap();
    store
        .enqueue_outbox(None, &keys[1..], t - 60)
        .await
        .unwrap();
    // Oldest first: `a` ends dead, `b` is left processing.
    let claimed = store.claim_outbox(t, t + 300, 2).await.unwrap();
    let dead = OutboxResult::Dead {
        error: "refused".to_owned(),
    };
    store
        .finish_outbox(claimed[0].id, claimed[0].claim_token, &dead, t)
        .await
        .unwrap();
    for (job, error) in [("reconcile", Some("stripe down")), ("outbox_sweep", None)] {
        store
            .claim_job(job, "test", t - 30, t + 60)
            .await
            .unwrap()
            .unwrap();
        let finish = JobFinish {
            next_run_at: t + 3600,
            error: error.map(str::to_owned),
        };
        assert!(store
            .finish_job(job, "test", &finish, t - 20)
            .await
            .unwrap());
    }

    let (status, metrics) = app.get("/metrics").await;

    assert_eq!(status, 200);
    for line in [
        "billd_outbox_depth{status=\"pending\"} 2\n".to_owned(),
        "billd_outbox_depth{status=\"processing\"} 1\n".to_owned(),
        "billd_outbox_depth{status=\"dead\"} 1\n".to_owned(),
        format!(
            "billd_scheduler_last_run_timestamp_seconds{{job=\"reconcile\"}} {}\n",
            t - 20
        ),
        "billd_scheduler_last_run_failed{job=\"reconcile\"} 1\n".to_owned(),
        format!(
            "billd_scheduler_last_success_timestamp_seconds{{job=\"outbox_sweep\"}} {}\n",
            t - 20
        ),
        "billd_scheduler_last_run_failed{job=\"outbox_sweep\"} 0\n".to_owned(),
        format!(
            "billd_scheduler_next_run_timestamp_seconds{{job=\"outbox_sweep\"}} {}\n",
            t + 3600
        ),
    ] {
        assert!(metrics.contains(&line), "no {line:?} in\n{metrics}");
    }
    assert!(
        !metrics.contains("billd_scheduler_last_success_timestamp_seconds{job=\"reconcile\"}"),
        "a job whose last run failed shows no last success:\n{metrics}"
    );
    // `b` (written 60 s before `t`) is the oldest row not sent or dead;
    // the scrape happens at `t` or a second or two later.
    let oldest: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("billd_outbox_oldest_waiting_seconds "))
        .unwrap()
        .parse()
        .unwrap();
    assert!((60..=70).contains(&oldest), "{oldest}");
}
