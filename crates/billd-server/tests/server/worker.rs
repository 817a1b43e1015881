//! The inbox worker's retry, dead-letter, replay and lease-reclaim machinery,
//! driven with a handler that fails on purpose and a clock the test moves.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use billd_server::telemetry::Scrape;
use billd_server::{
    EventHandler, HandlerError, HandlerOutcome, HandlerRegistry, InboxWorker, IngestLoad,
    ManualClock, Metrics,
};
use billd_store::{EventStatus, StoreError, StoredEvent};

use crate::on_both_databases;
use crate::support::{fresh_db, server_config, stripe_event, Db, TestDb};

on_both_databases!(
    unknown_event_types_are_marked_skipped_after_one_attempt,
    a_failing_event_is_retried_after_its_backoff_and_then_processed,
    an_event_that_keeps_failing_is_dead_after_max_attempts_and_counted,
    a_dead_event_that_is_replayed_is_processed,
    an_event_claimed_by_a_crashed_worker_is_reclaimed_after_the_lease,
    a_worker_that_outlives_its_lease_does_not_overwrite_the_reclaimers_outcome,
    a_burst_for_one_customer_drains_in_back_to_back_rounds_not_one_per_poll_interval,
    a_burst_of_two_thousand_events_for_one_customer_drains_in_a_few_batched_rounds,
    rounds_stay_short_while_webhooks_wait_for_their_acknowledgement,
    the_next_round_is_claimed_while_one_is_applied_unless_webhooks_wait,
    the_heartbeat_keeps_a_long_running_batch_leased_past_its_first_lease,
    a_batch_whose_worker_stopped_renewing_is_reclaimed_by_another_worker_after_the_lease,
    a_malformed_event_is_dead_after_one_attempt_and_its_customers_next_event_is_applied_at_once,
    a_transiently_failing_event_retries_while_its_customers_later_event_is_applied,
    events_naming_no_customer_are_applied_after_the_customer_batches_never_beside_them,
    a_webhook_stored_lean_is_derived_and_applied_in_one_round,
    a_round_of_several_customers_is_applied_in_one_transaction,
    a_round_whose_commit_fails_on_one_customer_applies_the_others_and_that_customers_good_events,
    an_event_linked_by_a_later_event_of_its_round_is_applied_in_the_same_round,
);

const T0: i64 = 1_800_000_000;

/// Fails the first `failures` calls, then succeeds.
struct FlakyHandler {
    failures: AtomicU32,
    calls: AtomicU32,
}

impl FlakyHandler {
    fn failing(times: u32) -> Arc<Self> {
        Arc::new(FlakyHandler {
            failures: AtomicU32::new(times),
            calls: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl EventHandler for FlakyHandler {
    async fn handle(&self, _event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(HandlerError::transient(anyhow::anyhow!(
                "induced failure, {left} left"
            )));
        }
        Ok(HandlerOutcome::Processed)
    }
}

struct Setup {
    db: TestDb,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
    worker: InboxWorker,
}

/// A migrated database holding one `invoice.paid` event, and a worker
/// (max 3 attempts, lease 60 s, backoff 10 s doubling to 100 s) whose
/// registry sends `invoice.paid` to `handler`.
async fn setup<H: EventHandler + 'static>(db: Db, handler: Option<Arc<H>>) -> Setup {
    let body = stripe_event("evt_work_1", "invoice.paid", "invoice", T0 - 10);
    let event = billd_server::pipeline::parse_envelope(body.as_bytes(), T0).unwrap();
    setup_with(db, handler, vec![event]).await
}

/// [`setup`] with `events` in the inbox instead.
async fn setup_with<H: EventHandler + 'static>(
    db: Db,
    handler: Option<Arc<H>>,
    events: Vec<billd_store::NewEvent>,
) -> Setup {
    let db = fresh_db(db).await;
    db.store.insert_events(&events).await.unwrap();
    let mut registry = HandlerRegistry::new();
    if let Some(handler) = handler {
        registry.register("invoice.paid", handler);
    }
    let clock = Arc::new(ManualClock::new(T0));
    let metrics = Arc::new(Metrics::default());
    let worker = InboxWorker::new(
        db.store.clone(),
        registry,
        server_config().worker,
        metrics.clone(),
        clock.clone(),
    );
    Setup {
        db,
        clock,
        metrics,
        worker,
    }
}

async fn event(setup: &Setup) -> StoredEvent {
    setup
        .db
        .store
        .get_event("evt_work_1")
        .await
        .unwrap()
        .unwrap()
}

/// `evt_work_2` … `evt_work_{last}`: more `invoice.paid` events of the
/// setup's customer, one second apart.
fn more_work(last: i64) -> Vec<billd_store::NewEvent> {
    (2..=last)
        .map(|i| {
            let body = stripe_event(&format!("evt_work_{i}"), "invoice.paid", "invoice", T0 + i);
            billd_server::pipeline::parse_envelope(body.as_bytes(), T0).unwrap()
        })
        .collect()
}

/// A worker over the setup's store, clock and metrics sending
/// `invoice.paid` to `handler`, with `config`.
fn worker_with<H: EventHandler + 'static>(
    s: &Setup,
    handler: Arc<H>,
    config: billd_server::WorkerConfig,
) -> InboxWorker {
    let mut registry = HandlerRegistry::new();
    registry.register("invoice.paid", handler);
    InboxWorker::new(
        s.db.store.clone(),
        registry,
        config,
        s.metrics.clone(),
        s.clock.clone(),
    )
}

/// Runs `worker` (nothing wakes it) until its handler has been called
/// `events` times, failing after `within` with `why`; then stops it and
/// waits for it to end.
async fn run_until_handled(
    worker: InboxWorker,
    calls: &AtomicU32,
    events: u32,
    within: std::time::Duration,
    why: &str,
) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(Arc::new(tokio::sync::Notify::new()), cancel.clone()));
    let deadline = std::time::Instant::now() + within;
    while calls.load(Ordering::SeqCst) < events {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {events} events applied{why}",
            calls.load(Ordering::SeqCst)
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    cancel.cancel();
    running.await.unwrap();
}

async fn unknown_event_types_are_marked_skipped_after_one_attempt(db: Db) {
    let s = setup(db, None::<Arc<FlakyHandler>>).await;

    let report = s.worker.run_once().await.unwrap();

    assert_eq!(report.claimed, 1);
    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Skipped);
    assert_eq!(e.attempts, 1);
    assert_eq!(e.processed_at, Some(T0));
    assert_eq!(
        s.worker.run_once().await.unwrap().claimed,
        0,
        "nothing left to do"
    );
    assert_eq!(s.metrics.processing_outcomes.get("skipped"), 1);
}

async fn a_failing_event_is_retried_after_its_backoff_and_then_processed(db: Db) {
    let handler = FlakyHandler::failing(1);
    let s = setup(db, Some(handler.clone())).await;

    let first = s.worker.run_once().await.unwrap();
    let failed = event(&s).await;

    assert_eq!(first.retried, 1);
    assert_eq!(failed.status, EventStatus::Failed);
    assert_eq!(failed.attempts, 1);
    assert!(failed
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("induced failure"));
    let retry_at = failed.next_attempt_at.unwrap();
    // First retry: 10 s base, jittered down by at most half.
    assert!((T0 + 5..=T0 + 10).contains(&retry_at), "{retry_at}");

    s.clock.set(retry_at - 1);
    assert_eq!(
        s.worker.run_once().await.unwrap().claimed,
        0,
        "not before its time"
    );
    s.clock.set(retry_at);
    assert_eq!(s.worker.run_once().await.unwrap().claimed, 1);

    let done = event(&s).await;
    assert_eq!(done.status, EventStatus::Processed);
    assert_eq!(done.attempts, 2);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
    assert_eq!(s.metrics.processing_outcomes.get("retry"), 1);
    assert_eq!(s.metrics.processing_outcomes.get("processed"), 1);
}

async fn an_event_that_keeps_failing_is_dead_after_max_attempts_and_counted(db: Db) {
    let handler = FlakyHandler::failing(u32::MAX);
    let s = setup(db, Some(handler.clone())).await;

    for _ in 0..5 {
        s.worker.run_once().await.unwrap();
        s.clock.advance(1000);
    }

    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Dead);
    assert_eq!(e.attempts, 3);
    assert!(e.last_error.is_some());
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        3,
        "no attempt after dead"
    );
    assert_eq!(s.metrics.processing_outcomes.get("dead"), 1);
    assert_eq!(s.metrics.processing_outcomes.get("retry"), 2);
    let text = s.metrics.render(&Scrape::default(), T0);
    assert!(
        text.contains("billd_processing_outcomes_total{outcome=\"dead\"} 1\n"),
        "{text}"
    );
}

async fn a_dead_event_that_is_replayed_is_processed(db: Db) {
    let handler = FlakyHandler::failing(3);
    let s = setup(db, Some(handler.clone())).await;
    for _ in 0..3 {
        s.worker.run_once().await.unwrap();
        s.clock.advance(1000);
    }
    assert_eq!(event(&s).await.status, EventStatus::Dead);

    let requeued =
        s.db.store
            .requeue_by_status(EventStatus::Dead, billd_server::Clock::now(&*s.clock))
            .await
            .unwrap();
    s.worker.run_once().await.unwrap();

    assert_eq!(requeued, 1);
    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Processed);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 4);
}

async fn an_event_claimed_by_a_crashed_worker_is_reclaimed_after_the_lease(db: Db) {
    let handler = FlakyHandler::failing(0);
    let s = setup(db, Some(handler.clone())).await;
    // A worker that claims the event and then dies without finishing it.
    let abandoned = s.db.store.claim_events(T0, T0 + 60, 10).await.unwrap();
    assert_eq!(abandoned.len(), 1);

    s.clock.set(T0 + 59);
    let during_lease = s.worker.run_once().await.unwrap();
    s.clock.set(T0 + 61);
    let after_lease = s.worker.run_once().await.unwrap();

    assert_eq!(during_lease.claimed, 0, "a live lease is respected");
    assert_eq!(after_lease.claimed, 1);
    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Processed);
    assert_eq!(e.attempts, 2);
    assert_eq!(
        handler.calls.load(Ordering::SeqCst),
        1,
        "processed exactly once"
    );
}

/// Overruns its lease: while it works, the clock passes the lease's end and
/// another worker reclaims the event and processes it; then this one fails.
struct OverrunningHandler {
    reclaimer: std::sync::OnceLock<(Arc<dyn billd_store::Store>, Arc<ManualClock>)>,
}

#[async_trait]
impl EventHandler for OverrunningHandler {
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        let (store, clock) = self.reclaimer.get().unwrap();
        clock.set(T0 + 61);
        let taken = store.claim_events(T0 + 61, T0 + 121, 10).await.unwrap();
        assert_eq!(taken.len(), 1, "the lease of {} ran out", event.id);
        store
            .finish_event(
                &taken[0].id,
                taken[0].claim,
                billd_store::EventResult::Processed,
                T0 + 62,
            )
            .await
            .unwrap();
        Err(HandlerError::transient(anyhow::anyhow!("too late anyway")))
    }
}

async fn a_worker_that_outlives_its_lease_does_not_overwrite_the_reclaimers_outcome(db: Db) {
    let handler = Arc::new(OverrunningHandler {
        reclaimer: std::sync::OnceLock::new(),
    });
    let s = setup(db, Some(handler.clone())).await;
    assert!(handler
        .reclaimer
        .set((s.db.store.clone(), s.clock.clone()))
        .is_ok());

    let report = s.worker.run_once().await.unwrap();

    assert_eq!(report.claimed, 1);
    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Processed, "the reclaimer's outcome");
    assert_eq!(e.processed_at, Some(T0 + 62));
    assert_eq!(e.last_error, None, "the late failure wrote nothing");
    assert_eq!(e.claim, 2);
    assert_eq!(s.metrics.processing_outcomes.get("lease_lost"), 1);
}

async fn rounds_stay_short_while_webhooks_wait_for_their_acknowledgement(db: Db) {
    let handler = FlakyHandler::failing(0);
    let s = setup(db, Some(handler.clone())).await;
    s.db.store.insert_events(&more_work(20)).await.unwrap();
    let mut config = server_config().worker;
    config.round_events = 1024;
    config.round_events_under_ingest = 6;
    let load = IngestLoad::default();
    let worker = worker_with(&s, handler.clone(), config).with_ingest_load(load.clone());

    // Two deliveries wait for their acknowledgement: rounds of 6.
    let (first, second) = (load.delivery(), load.delivery());
    assert_eq!(worker.run_once().await.unwrap().claimed, 6);
    drop(first);
    assert_eq!(load.waiting(), 1);
    assert_eq!(worker.run_once().await.unwrap().claimed, 6);
    // Nothing waits: the round takes everything due (8 left).
    drop(second);
    assert_eq!(load.waiting(), 0);
    assert_eq!(worker.run_once().await.unwrap().claimed, 8);
    assert_eq!(handler.calls.load(Ordering::SeqCst), 20);
}

/// While it handles `evt_work_1`, looks (for at most `patience`) whether
/// `evt_other` is already claimed; handles everything else at once.
struct AheadObserver {
    store: std::sync::OnceLock<Arc<dyn billd_store::Store>>,
    patience: std::time::Duration,
    saw_ahead: std::sync::atomic::AtomicBool,
    calls: AtomicU32,
}

#[async_trait]
impl EventHandler for AheadObserver {
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        if event.id == "evt_work_1" {
            let store = self.store.get().unwrap();
            let deadline = std::time::Instant::now() + self.patience;
            while std::time::Instant::now() < deadline {
                let other = store.get_event("evt_other").await.unwrap().unwrap();
                if other.status == EventStatus::Processing {
                    self.saw_ahead.store(true, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(HandlerOutcome::Processed)
    }
}

/// Runs a worker whose rounds take one event over `evt_work_1` and an
/// event of another customer, with `waiting` deliveries waiting for their
/// acknowledgement, until both are handled; whether the second was
/// claimed while the first was handled.
async fn claimed_ahead(db: Db, waiting: usize, patience: std::time::Duration) -> bool {
    let handler = Arc::new(AheadObserver {
        store: std::sync::OnceLock::new(),
        patience,
        saw_ahead: std::sync::atomic::AtomicBool::new(false),
        calls: AtomicU32::new(0),
    });
    let s = setup(db, Some(handler.clone())).await;
    assert!(handler.store.set(s.db.store.clone()).is_ok());
    let mut other: serde_json::Value = serde_json::from_str(&stripe_event(
        "evt_other",
        "invoice.paid",
        "invoice",
        T0 - 5,
    ))
    .unwrap();
    other["data"]["object"]["customer"] = serde_json::json!("cus_someone_else");
    let other = billd_server::pipeline::parse_envelope(other.to_string().as_bytes(), T0).unwrap();
    assert_ne!(other.stripe_customer, event(&s).await.stripe_customer);
    s.db.store.insert_events(&[other]).await.unwrap();
    let mut config = server_config().worker;
    config.round_events = 1;
    config.round_events_under_ingest = 1;
    let load = IngestLoad::default();
    let held: Vec<_> = (0..waiting).map(|_| load.delivery()).collect();
    let worker = worker_with(&s, handler.clone(), config).with_ingest_load(load.clone());
    run_until_handled(
        worker,
        &handler.calls,
        2,
        std::time::Duration::from_secs(20),
        "",
    )
    .await;
    drop(held);
    for id in ["evt_work_1", "evt_other"] {
        let e = s.db.store.get_event(id).await.unwrap().unwrap();
        assert_eq!(e.status, EventStatus::Processed, "{id}");
    }
    handler.saw_ahead.load(Ordering::SeqCst)
}

async fn the_next_round_is_claimed_while_one_is_applied_unless_webhooks_wait(db: Db) {
    let (ahead, apart) = (
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(300),
    );
    // Nothing waits: the other customer's event is claimed (under lease)
    // while the first round's event is handled.
    assert!(claimed_ahead(db, 0, ahead).await);
    // While webhooks wait for their acknowledgement, one round at a time
    // (the other event stays pending until the first round is done): on
    // SQLite from the first delivery, on PostgreSQL from a crowd of them.
    let busy = billd_server::pipeline::INGEST_BUSY;
    match db {
        Db::Sqlite => assert!(!claimed_ahead(db, 1, apart).await),
        Db::Postgres => {
            assert!(claimed_ahead(db, busy - 1, ahead).await);
            assert!(!claimed_ahead(db, busy, apart).await);
        }
    }
}

async fn a_burst_for_one_customer_drains_in_back_to_back_rounds_not_one_per_poll_interval(db: Db) {
    let handler = FlakyHandler::failing(0);
    let s = setup(db, Some(handler.clone())).await;
    // Twenty events of one customer (a checkout makes about ten), for a
    // worker that nothing wakes: none may wait for a poll interval.
    let burst = more_work(20);
    let customer = event(&s).await.stripe_customer;
    assert!(customer.is_some());
    assert!(burst.iter().all(|e| e.stripe_customer == customer));
    s.db.store.insert_events(&burst).await.unwrap();

    // A worker that sleeps a minute after a round that finds nothing, and
    // that nothing wakes.
    let mut config = server_config().worker;
    config.poll_interval = std::time::Duration::from_secs(60);
    let worker = worker_with(&s, handler.clone(), config);
    run_until_handled(
        worker,
        &handler.calls,
        20,
        std::time::Duration::from_secs(10),
        ": the worker waited between rounds",
    )
    .await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), 20);
}

/// Parses each event as the lifecycle handler does (so a malformed payload
/// fails with the real parse error), fails the events named in `outage` as
/// a store outage would, and records the events it applied.
#[derive(Default)]
struct ParsingHandler {
    outage: std::sync::Mutex<Vec<String>>,
    applied: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl EventHandler for ParsingHandler {
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        if self.outage.lock().unwrap().contains(&event.id) {
            return Err(StoreError::Unavailable("connection refused (test)".into()).into());
        }
        billd_server::pipeline::parse_stored(event)?;
        self.applied.lock().unwrap().push(event.id.clone());
        Ok(HandlerOutcome::Processed)
    }
}

/// An `invoice.paid` that parses (Stripe's example invoice, whose
/// subscription id is a placeholder, given a real one), all of one
/// customer, created at `created`, with `tweak` applied to its payload.
fn invoice_paid(
    id: &str,
    created: i64,
    tweak: impl FnOnce(&mut serde_json::Value),
) -> billd_store::NewEvent {
    let mut body: serde_json::Value =
        serde_json::from_str(&stripe_event(id, "invoice.paid", "invoice", created)).unwrap();
    body["data"]["object"]["parent"]["subscription_details"]["subscription"] = "sub_work".into();
    tweak(&mut body);
    billd_server::pipeline::parse_envelope(body.to_string().as_bytes(), T0).unwrap()
}

async fn a_malformed_event_is_dead_after_one_attempt_and_its_customers_next_event_is_applied_at_once(
    db: Db,
) {
    let handler = Arc::new(ParsingHandler::default());
    // The older event is the customer's first in line.
    let bad = invoice_paid("evt_work_bad", T0 - 20, |body| {
        body["data"]["object"]["id"] = "not_an_invoice_id".into();
    });
    let good = invoice_paid("evt_work_1", T0 - 10, |_| {});
    assert!(bad.stripe_customer.is_some());
    assert_eq!(bad.stripe_customer, good.stripe_customer);
    let s = setup_with(db, Some(handler.clone()), vec![bad, good]).await;

    let first = s.worker.run_once().await.unwrap();
    let second = s.worker.run_once().await.unwrap();

    // One batch: the dead event fails alone, its neighbour is applied.
    assert_eq!(
        (first.claimed, first.batches, first.dead, first.retried),
        (2, 1, 1, 0)
    );
    let dead = s.db.store.get_event("evt_work_bad").await.unwrap().unwrap();
    assert_eq!(dead.status, EventStatus::Dead);
    assert_eq!(dead.attempts, 1, "no retry for what cannot parse");
    let error = dead.last_error.unwrap();
    assert!(error.starts_with("id_invalid: "), "{error}");
    assert_eq!(second.claimed, 0, "nothing left to retry");
    let next = event(&s).await;
    assert_eq!(next.status, EventStatus::Processed, "{:?}", next.last_error);
    assert_eq!(*handler.applied.lock().unwrap(), ["evt_work_1"]);
    assert_eq!(s.metrics.events_dead.get("id_invalid"), 1);
    assert_eq!(s.metrics.processing_outcomes.get("retry"), 0);
    let text = s.metrics.render(&Scrape::default(), T0);
    assert!(
        text.contains("billd_events_dead_total{reason=\"id_invalid\"} 1\n"),
        "{text}"
    );
}

async fn a_transiently_failing_event_retries_while_its_customers_later_event_is_applied(db: Db) {
    let handler = Arc::new(ParsingHandler::default());
    handler.outage.lock().unwrap().push("evt_work_1".into());
    let events = vec![
        invoice_paid("evt_work_1", T0 - 10, |_| {}),
        invoice_paid("evt_work_2", T0 - 5, |_| {}),
    ];
    let s = setup_with(db, Some(handler.clone()), events).await;

    let first = s.worker.run_once().await.unwrap();
    let failed = event(&s).await;
    let meanwhile = s.worker.run_once().await.unwrap();

    assert_eq!((first.claimed, first.batches, first.retried), (2, 1, 1));
    assert_eq!(failed.status, EventStatus::Failed);
    let retry_at = failed.next_attempt_at.unwrap();
    assert!(retry_at > T0, "{retry_at}");
    assert_eq!(meanwhile.claimed, 0, "the retry is not due yet");
    assert_eq!(*handler.applied.lock().unwrap(), ["evt_work_2"]);
    let later = s.db.store.get_event("evt_work_2").await.unwrap().unwrap();
    assert_eq!(later.status, EventStatus::Processed, "not held back");

    handler.outage.lock().unwrap().clear();
    s.clock.set(retry_at);
    s.worker.run_once().await.unwrap();

    let done = event(&s).await;
    assert_eq!(done.status, EventStatus::Processed);
    assert_eq!(done.attempts, 2);
    assert_eq!(
        *handler.applied.lock().unwrap(),
        ["evt_work_2", "evt_work_1"]
    );
    assert_eq!(s.metrics.events_dead.get("attempts_exhausted"), 0);
}

/// Counts the batches and events a handler is given.
#[derive(Default)]
struct BatchCounter {
    batches: AtomicU32,
    events: AtomicU32,
}

#[async_trait]
impl EventHandler for BatchCounter {
    async fn handle(&self, _event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        self.events.fetch_add(1, Ordering::SeqCst);
        Ok(HandlerOutcome::Processed)
    }

    async fn handle_batch(
        &self,
        events: &[&StoredEvent],
    ) -> Vec<Result<HandlerOutcome, HandlerError>> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut outcomes = Vec::new();
        for event in events {
            outcomes.push(self.handle(event).await);
        }
        outcomes
    }
}

async fn a_burst_of_two_thousand_events_for_one_customer_drains_in_a_few_batched_rounds(db: Db) {
    let handler = Arc::new(BatchCounter::default());
    let burst: Vec<_> = (0..2_000)
        .map(|i| {
            let body = stripe_event(
                &format!("evt_burst_{i:04}"),
                "invoice.paid",
                "invoice",
                T0 - 3_000 + i,
            );
            billd_server::pipeline::parse_envelope(body.as_bytes(), T0).unwrap()
        })
        .collect();
    assert!(burst
        .iter()
        .all(|e| e.stripe_customer == burst[0].stripe_customer));
    let s = setup_with(db, Some(handler.clone()), burst).await;

    let mut rounds = Vec::new();
    loop {
        let report = s.worker.run_once().await.unwrap();
        if report.claimed == 0 {
            break;
        }
        rounds.push((report.claimed, report.batches));
        assert!(rounds.len() <= 8, "{rounds:?}");
    }

    // 256 events a batch (the default): 2,000 events are 8 rounds of one
    // batch each, not 2,000 rounds of one event.
    assert_eq!(rounds.len(), 8, "{rounds:?}");
    assert!(
        rounds.iter().all(|&(_, batches)| batches == 1),
        "{rounds:?}"
    );
    assert_eq!(
        rounds.iter().map(|&(claimed, _)| claimed).sum::<usize>(),
        2_000
    );
    assert_eq!(handler.batches.load(Ordering::SeqCst), 8);
    assert_eq!(handler.events.load(Ordering::SeqCst), 2_000);
    let processed =
        s.db.store
            .list_events(&billd_store::EventFilter {
                status: Some(EventStatus::Processed),
                ..billd_store::EventFilter::default()
            })
            .await
            .unwrap();
    assert_eq!(processed.len(), 2_000);
    assert!(processed.iter().all(|e| e.attempts == 1));
}

/// Runs past its lease: moves the store's clock beyond the lease's end and
/// waits (on the database, not on a timer) until the heartbeat has
/// renewed it, then checks that another worker finds nothing to take.
struct LongRunningHandler {
    env: std::sync::OnceLock<(Arc<dyn billd_store::Store>, Arc<ManualClock>)>,
    others_claim: std::sync::Mutex<Option<usize>>,
}

#[async_trait]
impl EventHandler for LongRunningHandler {
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        let (store, clock) = self.env.get().unwrap();
        let first_lease_end = event.next_attempt_at.unwrap();
        clock.set(first_lease_end + 5);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let now_held = store.get_event(&event.id).await.unwrap().unwrap();
            if now_held.next_attempt_at.unwrap() > first_lease_end + 5 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the heartbeat never renewed the lease"
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        let taken = store
            .claim_events(first_lease_end + 5, first_lease_end + 65, 10)
            .await
            .unwrap();
        *self.others_claim.lock().unwrap() = Some(taken.len());
        Ok(HandlerOutcome::Processed)
    }
}

async fn the_heartbeat_keeps_a_long_running_batch_leased_past_its_first_lease(db: Db) {
    let handler = Arc::new(LongRunningHandler {
        env: std::sync::OnceLock::new(),
        others_claim: std::sync::Mutex::new(None),
    });
    let s = setup(db, Some(handler.clone())).await;
    assert!(handler
        .env
        .set((s.db.store.clone(), s.clock.clone()))
        .is_ok());
    let mut config = server_config().worker;
    config.heartbeat = std::time::Duration::from_millis(20);
    let worker = worker_with(&s, handler.clone(), config);

    let report = worker.run_once().await.unwrap();

    assert_eq!(report.claimed, 1);
    assert_eq!(
        *handler.others_claim.lock().unwrap(),
        Some(0),
        "another worker took the event while its batch ran"
    );
    let e = event(&s).await;
    assert_eq!(e.status, EventStatus::Processed);
    assert_eq!(
        (e.attempts, e.claim),
        (1, 1),
        "processed under its first claim"
    );
    assert_eq!(s.metrics.processing_outcomes.get("lease_lost"), 0);
}

async fn a_batch_whose_worker_stopped_renewing_is_reclaimed_by_another_worker_after_the_lease(
    db: Db,
) {
    let handler = FlakyHandler::failing(0);
    let events: Vec<_> = (1..=3)
        .map(|i| {
            let body = stripe_event(
                &format!("evt_work_{i}"),
                "invoice.paid",
                "invoice",
                T0 - 10 + i,
            );
            billd_server::pipeline::parse_envelope(body.as_bytes(), T0).unwrap()
        })
        .collect();
    let s = setup_with(db, Some(handler.clone()), events).await;
    // A process that claimed the batch under the default (short) lease and
    // died: nothing renews it.
    let lease = billd_server::WorkerConfig::default().lease_secs;
    assert_eq!(lease, 30);
    let limits = billd_store::ClaimLimits {
        groups: 16,
        per_customer: 256,
        events: u32::MAX,
    };
    let abandoned =
        s.db.store
            .claim_event_batches(T0, T0 + lease, limits)
            .await
            .unwrap();
    assert_eq!(abandoned.len(), 3);

    s.clock.set(T0 + lease - 1);
    let during = s.worker.run_once().await.unwrap();
    s.clock.set(T0 + lease);
    let after = s.worker.run_once().await.unwrap();

    assert_eq!(during.claimed, 0, "a live lease is respected");
    assert_eq!((after.claimed, after.batches), (3, 1));
    for i in 1..=3 {
        let e =
            s.db.store
                .get_event(&format!("evt_work_{i}"))
                .await
                .unwrap()
                .unwrap();
        assert_eq!(e.status, EventStatus::Processed);
        assert_eq!((e.attempts, e.claim), (2, 2));
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), 3, "each applied once");
}

/// Records, per event, how many handler calls were running beside it.
#[derive(Default)]
struct OverlapProbe {
    running: AtomicU32,
    /// Events without a Stripe customer that ran beside another call.
    loose_beside_others: AtomicU32,
}

#[async_trait]
impl EventHandler for OverlapProbe {
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        let before = self.running.fetch_add(1, Ordering::SeqCst);
        // Give the round's other tasks their turn, as a commit would.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        let beside = before > 0 || self.running.load(Ordering::SeqCst) > 1;
        if beside && event.stripe_customer.is_none() {
            self.loose_beside_others.fetch_add(1, Ordering::SeqCst);
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(HandlerOutcome::Processed)
    }
}

/// An `invoice_payment.paid` names no customer: it is linked to one only
/// when applied, so it must not run beside a batch that may be that
/// customer's (they would conflict on the customer's version).
async fn events_naming_no_customer_are_applied_after_the_customer_batches_never_beside_them(
    db: Db,
) {
    let handler = Arc::new(OverlapProbe::default());
    let mut events = Vec::new();
    for i in 0..6_i64 {
        let paid = stripe_event(
            &format!("evt_cus_{i}"),
            "invoice.paid",
            "invoice",
            T0 - 100 + i,
        );
        events.push(billd_server::pipeline::parse_envelope(paid.as_bytes(), T0).unwrap());
        let loose = serde_json::json!({
            "id": format!("evt_loose_{i}"), "object": "event", "type": "invoice_payment.paid",
            "created": T0 - 100 + i, "api_version": billd_stripe::API_VERSION,
            "data": { "object": { "id": format!("inpay_{i}"), "object": "invoice_payment" } }
        })
        .to_string();
        events.push(billd_server::pipeline::parse_envelope(loose.as_bytes(), T0).unwrap());
    }
    assert!(events.iter().any(|e| e.stripe_customer.is_none()));
    let s = setup_with(db, Some(handler.clone()), events).await;
    let mut registry = HandlerRegistry::new();
    registry.register("invoice.paid", handler.clone());
    registry.register("invoice_payment.paid", handler.clone());
    let worker = InboxWorker::new(
        s.db.store.clone(),
        registry,
        server_config().worker,
        s.metrics.clone(),
        s.clock.clone(),
    );

    let report = worker.run_once().await.unwrap();

    assert_eq!(report.claimed, 12);
    assert_eq!(report.batches, 7, "one customer's batch and six alone");
    assert_eq!(handler.loose_beside_others.load(Ordering::SeqCst), 0);
}

async fn a_webhook_stored_lean_is_derived_and_applied_in_one_round(db: Db) {
    let handler = FlakyHandler::failing(0);
    let s = setup_with(db, Some(handler.clone()), Vec::new()).await;
    let body = stripe_event("evt_lean_1", "invoice.paid", "invoice", T0 - 10);
    // What the webhook endpoint writes: the id and the body. A row whose
    // body is no envelope cannot come through the endpoint (it answers 400)
    // but is dead at once, not retried, if one is there.
    let rows = [
        billd_store::ReceivedEvent {
            id: "evt_lean_1".to_owned(),
            payload: body,
            received_at: T0,
        },
        billd_store::ReceivedEvent {
            id: "evt_lean_bad".to_owned(),
            payload: "{\"id\":\"evt_lean_bad\"}".to_owned(),
            received_at: T0,
        },
    ];
    s.db.store.receive_events(&rows).await.unwrap();

    let report = s.worker.run_once().await.unwrap();

    assert_eq!((report.derived, report.claimed), (2, 1));
    assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
    let applied = s.db.store.get_event("evt_lean_1").await.unwrap().unwrap();
    assert_eq!(applied.status, EventStatus::Processed);
    assert_eq!(applied.event_type, "invoice.paid");
    assert_eq!(applied.created, T0 - 10);
    assert_eq!(
        applied.stripe_customer.as_deref(),
        Some("cus_QXg1o8vcGmoR32")
    );
    let bad = s.db.store.get_event("evt_lean_bad").await.unwrap().unwrap();
    assert_eq!(bad.status, EventStatus::Dead);
    assert!(
        bad.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("payload_invalid: ")),
        "{:?}",
        bad.last_error
    );
    assert_eq!(s.metrics.events_dead.get("payload_invalid"), 1);
    let next = s.worker.run_once().await.unwrap();
    assert_eq!((next.derived, next.claimed), (0, 0), "nothing left");
}

/// A `customer.updated` of Stripe customer `cus` naming billd customer
/// `user` in its metadata (so it links at once), created at `created`.
fn customer_updated(id: &str, cus: &str, user: &str, created: i64) -> billd_store::NewEvent {
    let mut body: serde_json::Value =
        serde_json::from_str(&stripe_event(id, "customer.updated", "customer", created)).unwrap();
    body["data"]["object"]["id"] = cus.into();
    body["data"]["object"]["metadata"] = serde_json::json!({ "billd_customer_id": user });
    billd_server::pipeline::parse_envelope(body.to_string().as_bytes(), T0).unwrap()
}

/// The lifecycle handler's worker over `events` in a store that can refuse
/// commits and counts them.
struct LifecycleSetup {
    db: TestDb,
    store: Arc<crate::support::SwitchableStore>,
    worker: InboxWorker,
    clock: Arc<ManualClock>,
    metrics: Arc<Metrics>,
}

async fn lifecycle_setup(db: Db, events: Vec<billd_store::NewEvent>) -> LifecycleSetup {
    let db = fresh_db(db).await;
    db.store.insert_events(&events).await.unwrap();
    let store = Arc::new(crate::support::SwitchableStore::new(db.store.clone()));
    let clock = Arc::new(ManualClock::new(T0));
    let metrics = Arc::new(Metrics::default());
    let registry = billd_server::pipeline::LifecycleHandler::new(
        store.clone(),
        Arc::new(billd_core::Catalog::seed()),
        None,
        clock.clone(),
    )
    .registry();
    let worker = InboxWorker::new(
        store.clone(),
        registry,
        server_config().worker,
        metrics.clone(),
        clock.clone(),
    );
    LifecycleSetup {
        db,
        store,
        worker,
        clock,
        metrics,
    }
}

async fn status_of(db: &TestDb, id: &str) -> (EventStatus, i32) {
    let event = db.store.get_event(id).await.unwrap().unwrap();
    (event.status, event.attempts)
}

async fn a_round_of_several_customers_is_applied_in_one_transaction(db: Db) {
    let events: Vec<_> = (0..20)
        .map(|n| {
            customer_updated(
                &format!("evt_many_{n:02}"),
                &format!("cus_many{n:02}"),
                &format!("u_many_{n:02}"),
                T0 - 100 + n,
            )
        })
        .collect();
    let LifecycleSetup {
        db, store, worker, ..
    } = lifecycle_setup(db, events).await;

    let report = worker.run_once().await.unwrap();

    assert_eq!((report.claimed, report.batches), (20, 20));
    assert_eq!(store.batch_commits.load(Ordering::SeqCst), 1);
    assert_eq!(store.single_commits.load(Ordering::SeqCst), 0);
    // Twenty Stripe customers nobody owns yet: the objects they could link
    // through are read in one statement, not one read per event.
    assert_eq!(store.object_batch_reads.load(Ordering::SeqCst), 1);
    assert_eq!(store.object_reads.load(Ordering::SeqCst), 0);
    for n in 0..20 {
        let id = format!("evt_many_{n:02}");
        assert_eq!(
            status_of(&db, &id).await,
            (EventStatus::Processed, 1),
            "{id}"
        );
        let customer = billd_core::CustomerId::parse(&format!("u_many_{n:02}")).unwrap();
        let record = db.store.get_customer(&customer).await.unwrap().unwrap();
        assert_eq!(record.version, 1, "{customer}");
    }
}

/// The round's one commit fails (one event's writes are refused): each
/// customer is committed alone, and the customer of the refused event one
/// event at a time, so only that event fails, and is retried.
async fn a_round_whose_commit_fails_on_one_customer_applies_the_others_and_that_customers_good_events(
    db: Db,
) {
    let events = vec![
        customer_updated("evt_a_1", "cus_aaa", "u_a", T0 - 50),
        customer_updated("evt_b_1", "cus_bbb", "u_b", T0 - 40),
        customer_updated("evt_b_bad", "cus_bbb", "u_b", T0 - 30),
        customer_updated("evt_c_1", "cus_ccc", "u_c", T0 - 20),
        customer_updated("evt_b_2", "cus_bbb", "u_b", T0 - 10),
    ];
    let LifecycleSetup {
        db,
        store,
        worker,
        clock,
        ..
    } = lifecycle_setup(db, events).await;
    store.refused.lock().unwrap().push("evt_b_bad".to_owned());

    let report = worker.run_once().await.unwrap();

    assert_eq!((report.claimed, report.batches), (5, 3));
    assert_eq!((report.retried, report.dead), (1, 0));
    for id in ["evt_a_1", "evt_b_1", "evt_c_1", "evt_b_2"] {
        assert_eq!(
            status_of(&db, id).await,
            (EventStatus::Processed, 1),
            "{id}"
        );
    }
    assert_eq!(status_of(&db, "evt_b_bad").await, (EventStatus::Failed, 1));
    // The round, then one per customer, then u_b's three events alone.
    assert_eq!(store.batch_commits.load(Ordering::SeqCst), 1 + 3);
    assert_eq!(store.single_commits.load(Ordering::SeqCst), 3);
    for user in ["u_a", "u_b", "u_c"] {
        let customer = billd_core::CustomerId::parse(user).unwrap();
        assert!(db.store.get_customer(&customer).await.unwrap().is_some());
    }

    // Once its writes go through, the retry applies it.
    store.refused.lock().unwrap().clear();
    let failed = db.store.get_event("evt_b_bad").await.unwrap().unwrap();
    clock.set(failed.next_attempt_at.unwrap());
    let retry = worker.run_once().await.unwrap();
    assert_eq!(retry.claimed, 1);
    assert_eq!(
        status_of(&db, "evt_b_bad").await,
        (EventStatus::Processed, 2)
    );
}

/// The first event of a Stripe customer names no billd customer; the
/// second, in the same round, links it: the first is linked again once the
/// round is committed and applied then, not parked.
async fn an_event_linked_by_a_later_event_of_its_round_is_applied_in_the_same_round(db: Db) {
    let mut anonymous = customer_updated("evt_r_1", "cus_rrr", "u_r", T0 - 20);
    let mut body: serde_json::Value = serde_json::from_str(&anonymous.payload).unwrap();
    body["data"]["object"]["metadata"] = serde_json::json!({});
    anonymous.payload = body.to_string();
    let named = customer_updated("evt_r_2", "cus_rrr", "u_r", T0 - 10);
    let other = customer_updated("evt_o_1", "cus_ooo", "u_o", T0 - 5);
    let s = lifecycle_setup(db, vec![anonymous, named, other]).await;

    let report = s.worker.run_once().await.unwrap();

    assert_eq!((report.claimed, report.retried, report.dead), (3, 0, 0));
    for id in ["evt_r_1", "evt_r_2", "evt_o_1"] {
        assert_eq!(
            status_of(&s.db, id).await,
            (EventStatus::Processed, 1),
            "{id}"
        );
    }
    assert_eq!(s.metrics.processing_outcomes.get("lease_lost"), 0);
    // The round's commit, then the relinked event's.
    assert_eq!(s.store.batch_commits.load(Ordering::SeqCst), 2);
}
