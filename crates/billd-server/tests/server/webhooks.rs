//! The webhook pipeline: accepted events are stored once, concurrent
//! duplicates collapse into one row, rejections store nothing, oversized
//! bodies get 413 and an unreachable store 503.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use billd_server::Workers;
use billd_store::{EventStatus, Store};
use billd_stripe::webhook::{compute_signature, sign};

use crate::on_both_databases;
use crate::support::{now, stripe_event, Db, SwitchableStore, TestApp, SECRET};

on_both_databases!(
    an_accepted_event_is_stored_once_with_its_envelope_fields,
    a_redelivered_event_is_acknowledged_as_a_duplicate_without_a_second_row,
    one_hundred_concurrent_deliveries_of_one_event_store_one_row_and_all_succeed,
    concurrent_distinct_events_are_all_stored_through_group_commit,
    every_rejection_reason_answers_400_with_its_code_and_stores_nothing,
    a_body_over_one_mebibyte_is_refused_with_413_and_stores_nothing,
    a_store_that_is_down_answers_503_and_readyz_fails,
    health_readiness_and_metrics_answer,
);

async fn an_accepted_event_is_stored_once_with_its_envelope_fields(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = stripe_event("evt_accept_1", "invoice.paid", "invoice", 1_700_000_000);

    let (status, ack) = app.deliver(&body).await;

    assert_eq!(status, 200, "{ack}");
    assert_eq!(ack["received"], true);
    assert_eq!(ack["duplicate"], false);
    // Acknowledged lean: the id and the body, nothing derived yet.
    let events = app.all_events().await;
    assert_eq!(events.len(), 1);
    let received = &events[0];
    assert_eq!(received.status, EventStatus::Received);
    assert_eq!(received.payload, body);
    assert_eq!((received.event_type.as_str(), received.created), ("", 0));
    assert_eq!(received.stripe_customer, None);

    // The worker derives the envelope's columns before it claims anything.
    let worker = billd_server::InboxWorker::new(
        app.store.clone(),
        billd_server::HandlerRegistry::new(),
        crate::support::server_config().worker,
        Arc::new(billd_server::Metrics::default()),
        Arc::new(billd_server::SystemClock),
    );
    assert_eq!(worker.derive_received().await.unwrap(), 1);
    let events = app.all_events().await;
    assert_eq!(events.len(), 1);
    let stored = &events[0];
    assert_eq!(stored.id, "evt_accept_1");
    assert_eq!(stored.event_type, "invoice.paid");
    assert_eq!(
        stored.api_version.as_deref(),
        Some(billd_stripe::API_VERSION)
    );
    assert_eq!(stored.created, 1_700_000_000);
    assert_eq!(
        stored.object_id.as_deref(),
        Some("in_1Pgc6tB7WZ01zgkWu9fdqL6I")
    );
    assert_eq!(
        stored.stripe_customer.as_deref(),
        Some("cus_QXg1o8vcGmoR32")
    );
    assert_eq!(stored.payload, body, "the raw body is kept byte for byte");
    assert_eq!(stored.status, EventStatus::Pending);
    assert_eq!(stored.attempts, 0);
    assert!((stored.received_at - now()).abs() <= 5);
}

async fn a_redelivered_event_is_acknowledged_as_a_duplicate_without_a_second_row(db: Db) {
    let app = TestApp::spawn(db).await;
    let body = stripe_event("evt_dup_1", "customer.updated", "customer", 1_700_000_000);
    assert_eq!(app.deliver(&body).await.0, 200);

    let (status, ack) = app.deliver(&body).await;

    assert_eq!(status, 200);
    assert_eq!(ack["duplicate"], true);
    assert_eq!(app.all_events().await.len(), 1);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("billd_webhooks_accepted_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("billd_webhooks_duplicate_total 1\n"),
        "{metrics}"
    );
}

async fn one_hundred_concurrent_deliveries_of_one_event_store_one_row_and_all_succeed(db: Db) {
    let app = Arc::new(TestApp::spawn(db).await);
    let body = stripe_event("evt_storm_1", "invoice.paid", "invoice", 1_700_000_000);

    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (app, body) = (app.clone(), body.clone());
            tokio::spawn(async move { app.deliver(&body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut new_rows = 0;
    for t in tasks {
        let (status, ack) = t.await.unwrap();
        statuses.push(status);
        if ack["duplicate"] == false {
            new_rows += 1;
        }
    }

    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(new_rows, 1, "exactly one delivery created the row");
    assert_eq!(app.all_events().await.len(), 1);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("billd_webhooks_duplicate_total 99\n"),
        "{metrics}"
    );
}

async fn concurrent_distinct_events_are_all_stored_through_group_commit(db: Db) {
    let app = Arc::new(TestApp::spawn(db).await);

    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let app = app.clone();
            tokio::spawn(async move {
                let body = stripe_event(
                    &format!("evt_many_{i}"),
                    "invoice.paid",
                    "invoice",
                    1_700_000_000 + i,
                );
                app.deliver(&body).await.0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }

    assert_eq!(app.all_events().await.len(), 200);
    let metrics = &app.running.as_ref().unwrap().metrics;
    let batches = metrics.ingest_batches.get();
    assert!((1..=200).contains(&batches), "{batches}");
}

async fn every_rejection_reason_answers_400_with_its_code_and_stores_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let t = now();
    let body = stripe_event("evt_reject_1", "invoice.paid", "invoice", t);
    let good_v1 = compute_signature(SECRET, t, body.as_bytes());
    let not_an_event =
        r#"{"id":"evt_x","object":"event","type":"invoice.paid","created":1,"data":{}}"#;
    let cases: Vec<(Option<String>, String, &str)> = vec![
        (None, body.clone(), "signature_missing"),
        (Some("garbage".into()), body.clone(), "signature_malformed"),
        (
            Some(format!("t={t},v0={good_v1}")),
            body.clone(),
            "signature_v1_missing",
        ),
        (
            Some(sign("whsec_wrong", t, body.as_bytes())),
            body.clone(),
            "signature_mismatch",
        ),
        (
            Some(format!("t={t},v1={good_v1}")),
            body.replace("invoice.paid", "invoice.voided"),
            "signature_mismatch",
        ),
        (
            Some(sign(SECRET, t - 301, body.as_bytes())),
            body.clone(),
            "timestamp_out_of_tolerance",
        ),
        (
            Some(sign(SECRET, t, not_an_event.as_bytes())),
            not_an_event.to_string(),
            "payload_invalid",
        ),
        (
            Some(sign(SECRET, t, b"[]")),
            "[]".to_string(),
            "payload_invalid",
        ),
    ];

    for (header, body, code) in &cases {
        let (status, error) = app.post_webhook(header.as_deref(), body.clone()).await;
        assert_eq!(status, 400, "{code}: {error}");
        assert_eq!(error["error"]["code"], *code, "{error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }

    assert!(app.all_events().await.is_empty());
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("billd_webhooks_rejected_total{reason=\"signature_mismatch\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("billd_webhooks_rejected_total{reason=\"payload_invalid\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("billd_webhooks_accepted_total 0\n"),
        "{metrics}"
    );
}

async fn a_body_over_one_mebibyte_is_refused_with_413_and_stores_nothing(db: Db) {
    let app = TestApp::spawn(db).await;
    let padding = "x".repeat(1024 * 1024);
    let body = format!(
        r#"{{"id":"evt_big_1","object":"event","type":"invoice.paid","created":1,"data":{{"object":{{"id":"in_1","pad":"{padding}"}}}}}}"#
    );
    let header = sign(SECRET, now(), body.as_bytes());

    let (status, error) = app.post_webhook(Some(&header), body).await;

    assert_eq!(status, 413);
    assert_eq!(error["error"]["code"], "payload_too_large");
    assert!(app.all_events().await.is_empty());
}

async fn a_store_that_is_down_answers_503_and_readyz_fails(db: Db) {
    let test_db = crate::support::fresh_db(db).await;
    let switchable = Arc::new(SwitchableStore::new(test_db.store.clone()));
    let app = TestApp::spawn_with_store(switchable.clone(), Workers::None).await;
    assert_eq!(app.get("/readyz").await.0, 200);
    switchable.down.store(true, Ordering::SeqCst);

    let body = stripe_event("evt_down_1", "invoice.paid", "invoice", 1_700_000_000);
    let (status, error) = app.deliver(&body).await;
    let (ready, _) = app.get("/readyz").await;

    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "store_unavailable");
    assert_eq!(ready, 503);
    switchable.down.store(false, Ordering::SeqCst);
    assert!(test_db
        .store
        .get_event("evt_down_1")
        .await
        .unwrap()
        .is_none());
    // Stripe retries the delivery; once the store is back it is accepted.
    assert_eq!(app.deliver(&body).await.0, 200);
    assert!(test_db
        .store
        .get_event("evt_down_1")
        .await
        .unwrap()
        .is_some());
}

async fn health_readiness_and_metrics_answer(db: Db) {
    let app = TestApp::spawn(db).await;

    let (health, _) = app.get("/healthz").await;
    let (ready, ready_body) = app.get("/readyz").await;
    let (metrics_status, metrics) = app.get("/metrics").await;

    assert_eq!(health, 200);
    assert_eq!(ready, 200, "{ready_body}");
    assert!(ready_body.contains("\"database\":\"ok\""), "{ready_body}");
    assert_eq!(metrics_status, 200);
    assert!(
        metrics.contains("billd_inbox_depth_events{status=\"pending\"} 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("billd_processing_lag_seconds 0\n"),
        "{metrics}"
    );
}

/// A real outage rather than an injected one: PostgreSQL at a port where
/// nothing listens (the store connects lazily, as `serve` would find it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_that_cannot_be_reached_answers_503() {
    // Bound but not listening, for the whole test: connections are refused,
    // and no other test's server can take the port meanwhile (a released
    // port can be, and a server that is not PostgreSQL is another failure).
    let reserved = tokio::net::TcpSocket::new_v4().unwrap();
    reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let closed_port = reserved.local_addr().unwrap().port();
    let url = format!("postgres://billd:pw@127.0.0.1:{closed_port}/billd");
    let store: Arc<dyn Store> = Arc::new(billd_store::PgStore::connect_lazy(&url).unwrap());
    let app = TestApp::spawn_with_store(store, Workers::None).await;

    let body = stripe_event("evt_pg_down_1", "invoice.paid", "invoice", 1_700_000_000);
    let (status, error) = app.deliver(&body).await;

    assert_eq!(status, 503, "{error}");
    assert_eq!(error["error"]["code"], "store_unavailable");
    assert_eq!(app.get("/readyz").await.0, 503);
    drop(reserved);
}
