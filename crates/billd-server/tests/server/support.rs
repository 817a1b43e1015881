//! Test helpers: a running billd per test (port 0, its own database),
//! signed Stripe-shaped events, and a store that can be switched off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billd_server::{
    Backoff, Clock, HandlerRegistry, IngestConfig, Running, ServerConfig, SystemClock,
    WebhookConfig, WorkerConfig, Workers,
};
use billd_store::{
    Backend, EventFilter, EventResult, EventStatus, InboxStats, InsertOutcome, NewEvent, Store,
    StoreError, StoreResult, StoredEvent,
};
use billd_stripe::webhook::sign;
use secrecy::SecretString;
use serde_json::Value;

pub const SECRET: &str = "whsec_test_server_secret";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates one `#[tokio::test]` per database for an `async fn(Db)`.
#[macro_export]
macro_rules! on_both_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Db::Postgres).await
                }
            )*
        }
    };
}

/// A fresh, migrated database. The temp dir lives as long as the value.
pub struct TestDb {
    pub store: Arc<dyn Store>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn fresh_db(db: Db) -> TestDb {
    let (url, dir) = match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("billd.db").display());
            (url, Some(dir))
        }
        Db::Postgres => {
            let url = billd_store::testing::fresh_postgres_database()
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
            (url, None)
        }
    };
    let store = billd_store::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    TestDb { store, _dir: dir }
}

pub fn server_config() -> ServerConfig {
    ServerConfig {
        webhook: WebhookConfig {
            secrets: vec![SecretString::from(SECRET.to_string())],
            tolerance_secs: 300,
        },
        ingest: IngestConfig::default(),
        worker: WorkerConfig {
            max_attempts: 3,
            lease_secs: 60,
            heartbeat: Duration::from_secs(20),
            concurrency: 8,
            batch: 256,
            round_events: 1024,
            round_events_under_ingest: WorkerConfig::default().round_events_under_ingest,
            poll_interval: Duration::from_millis(50),
            backoff: Backoff {
                base_secs: 10,
                cap_secs: 100,
            },
        },
        ready_max_lag_secs: 600,
    }
}

/// A billd serving HTTP (no inbox worker unless asked) on a loopback port.
pub struct TestApp {
    pub base: String,
    pub store: Arc<dyn Store>,
    pub client: reqwest::Client,
    pub running: Option<Running>,
    pub db: Option<TestDb>,
}

impl TestApp {
    pub async fn spawn(db: Db) -> TestApp {
        let test_db = fresh_db(db).await;
        let store = test_db.store.clone();
        let mut app = TestApp::spawn_with_store(store, Workers::None).await;
        app.db = Some(test_db);
        app
    }

    pub async fn spawn_with_store(store: Arc<dyn Store>, workers: Workers) -> TestApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let running = billd_server::start(
            listener,
            store.clone(),
            server_config(),
            HandlerRegistry::new(),
            Arc::new(SystemClock),
            workers,
        )
        .unwrap();
        TestApp {
            base: format!("http://{}", running.addr),
            store,
            client: reqwest::Client::new(),
            running: Some(running),
            db: None,
        }
    }

    pub async fn post_webhook(
        &self,
        header: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(format!("{}/webhooks/stripe", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Signs `body` now with the test secret and posts it.
    pub async fn deliver(&self, body: &str) -> (u16, Value) {
        let header = sign(SECRET, now(), body.as_bytes());
        self.post_webhook(Some(&header), body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn all_events(&self) -> Vec<StoredEvent> {
        self.store
            .list_events(&EventFilter {
                limit: 100_000,
                ..EventFilter::default()
            })
            .await
            .unwrap()
    }
}

pub fn now() -> i64 {
    SystemClock.now()
}

fn objects() -> Value {
    serde_json::from_str(include_str!("fixtures/stripe_objects.json")).unwrap()
}

/// A Stripe event of `event_type` wrapping Stripe's example `object`
/// (`invoice`, `customer`, `subscription`, `charge`), with a unique id.
pub fn stripe_event(id: &str, event_type: &str, object: &str, created: i64) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let data = objects()[object].clone();
    assert!(data.is_object(), "no fixture object {object}");
    serde_json::json!({
        "id": id,
        "object": "event",
        "api_version": billd_stripe::API_VERSION,
        "created": created,
        "livemode": false,
        "pending_webhooks": 1,
        "request": { "id": format!("req_{}", SEQ.fetch_add(1, Ordering::Relaxed)), "idempotency_key": null },
        "type": event_type,
        "data": { "object": data }
    })
    .to_string()
}

/// A store that forwards to a real one until it is switched off, then
/// answers `Unavailable` like a database that cannot be reached; it can
/// also refuse every commit that would finish one of `refused`'s events
/// (as a constraint the event's writes violate would), and counts commits.
pub struct SwitchableStore {
    pub inner: Arc<dyn Store>,
    pub down: AtomicBool,
    /// Event ids whose commits fail.
    pub refused: std::sync::Mutex<Vec<String>>,
    /// `commit_events` calls, refused ones included.
    pub batch_commits: AtomicU64,
    /// `commit_event` calls, refused ones included.
    pub single_commits: AtomicU64,
    /// `find_customer_by_object` calls (one object each).
    pub object_reads: AtomicU64,
    /// `find_customers_by_objects` calls (many objects each).
    pub object_batch_reads: AtomicU64,
}

impl SwitchableStore {
    /// Forwards everything to `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Self {
        SwitchableStore {
            inner,
            down: AtomicBool::new(false),
            refused: std::sync::Mutex::new(Vec::new()),
            batch_commits: AtomicU64::new(0),
            single_commits: AtomicU64::new(0),
            object_reads: AtomicU64::new(0),
            object_batch_reads: AtomicU64::new(0),
        }
    }

    fn check(&self) -> StoreResult<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("connection refused (test)".into()))
        } else {
            Ok(())
        }
    }

    /// Fails when one of `ids` is refused.
    fn check_commit<'a>(&self, mut ids: impl Iterator<Item = &'a str>) -> StoreResult<()> {
        let refused = self.refused.lock().unwrap();
        match ids.find(|id| refused.iter().any(|r| r == id)) {
            Some(id) => Err(StoreError::Other(format!("commit of {id} refused (test)"))),
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Store for SwitchableStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    async fn migrate(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.migrate().await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.check()?;
        self.inner.ping().await
    }
    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<Vec<InsertOutcome>> {
        self.check()?;
        self.inner.insert_events(events).await
    }
    async fn receive_events(
        &self,
        events: &[billd_store::ReceivedEvent],
    ) -> StoreResult<Vec<InsertOutcome>> {
        self.check()?;
        self.inner.receive_events(events).await
    }
    async fn received_events(&self, limit: u32) -> StoreResult<Vec<billd_store::ReceivedEvent>> {
        self.check()?;
        self.inner.received_events(limit).await
    }
    async fn derive_events(&self, derived: &[billd_store::Derived], now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.derive_events(derived, now).await
    }
    async fn derive_and_claim(
        &self,
        derived: &[billd_store::Derived],
        now: i64,
        lease_until: i64,
        limits: billd_store::ClaimLimits,
    ) -> StoreResult<billd_store::DeriveClaim> {
        self.check()?;
        self.inner
            .derive_and_claim(derived, now, lease_until, limits)
            .await
    }
    async fn claim_event_batches(
        &self,
        now: i64,
        lease_until: i64,
        limits: billd_store::ClaimLimits,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.check()?;
        self.inner
            .claim_event_batches(now, lease_until, limits)
            .await
    }
    async fn renew_events(&self, held: &[(String, i64)], lease_until: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.renew_events(held, lease_until).await
    }
    async fn release_all_claims(&self, now: i64) -> StoreResult<billd_store::ReleasedClaims> {
        self.check()?;
        self.inner.release_all_claims(now).await
    }
    async fn finish_event(
        &self,
        id: &str,
        claim: i64,
        result: EventResult,
        now: i64,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.finish_event(id, claim, result, now).await
    }
    async fn get_event(&self, id: &str) -> StoreResult<Option<StoredEvent>> {
        self.check()?;
        self.inner.get_event(id).await
    }
    async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<StoredEvent>> {
        self.check()?;
        self.inner.list_events(filter).await
    }
    async fn requeue_event(&self, id: &str, now: i64) -> StoreResult<bool> {
        self.check()?;
        self.inner.requeue_event(id, now).await
    }
    async fn requeue_by_status(&self, status: EventStatus, now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.requeue_by_status(status, now).await
    }
    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        self.check()?;
        self.inner.inbox_stats().await
    }
}

/// Billing calls forward like the inbox calls, and fail the same way when
/// the store is switched off.
#[async_trait]
impl billd_store::BillingStore for SwitchableStore {
    async fn upsert_customer(
        &self,
        profile: &billd_store::CustomerProfile,
        now: i64,
    ) -> StoreResult<billd_store::UpsertedCustomer> {
        self.check()?;
        self.inner.upsert_customer(profile, now).await
    }
    async fn get_customer(
        &self,
        customer_id: &billd_core::CustomerId,
    ) -> StoreResult<Option<billd_store::CustomerRecord>> {
        self.check()?;
        self.inner.get_customer(customer_id).await
    }
    async fn find_customer_by_stripe(
        &self,
        stripe_customer_id: &billd_core::StripeCustomerId,
    ) -> StoreResult<Option<billd_core::CustomerId>> {
        self.check()?;
        self.inner.find_customer_by_stripe(stripe_customer_id).await
    }
    async fn find_customer_by_object(
        &self,
        object_id: &str,
    ) -> StoreResult<Option<billd_core::CustomerId>> {
        self.check()?;
        self.object_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.find_customer_by_object(object_id).await
    }
    async fn find_customers_by_objects(
        &self,
        object_ids: &[&str],
    ) -> StoreResult<std::collections::HashMap<String, billd_core::CustomerId>> {
        self.check()?;
        self.object_batch_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.find_customers_by_objects(object_ids).await
    }
    async fn link_stripe_customer(
        &self,
        customer_id: &billd_core::CustomerId,
        stripe_customer_id: &billd_core::StripeCustomerId,
        now: i64,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner
            .link_stripe_customer(customer_id, stripe_customer_id, now)
            .await
    }
    async fn link_object(
        &self,
        object_id: &str,
        customer_id: &billd_core::CustomerId,
        now: i64,
    ) -> StoreResult<billd_core::CustomerId> {
        self.check()?;
        self.inner.link_object(object_id, customer_id, now).await
    }
    async fn commit_event(
        &self,
        event_id: &str,
        claim: i64,
        commit: Option<&billd_store::CustomerCommit>,
        result: &EventResult,
        now: i64,
    ) -> StoreResult<billd_store::CommitReceipt> {
        self.check()?;
        self.single_commits.fetch_add(1, Ordering::SeqCst);
        self.check_commit(std::iter::once(event_id))?;
        self.inner
            .commit_event(event_id, claim, commit, result, now)
            .await
    }
    async fn commit_events(
        &self,
        commits: &[(billd_store::CustomerCommit, Vec<String>)],
        finishes: &[billd_store::EventFinish],
        now: i64,
    ) -> StoreResult<Vec<billd_store::CommitReceipt>> {
        self.check()?;
        self.batch_commits.fetch_add(1, Ordering::SeqCst);
        self.check_commit(finishes.iter().map(|f| f.id.as_str()))?;
        self.inner.commit_events(commits, finishes, now).await
    }
    async fn commit_customer(
        &self,
        commit: &billd_store::CustomerCommit,
        now: i64,
    ) -> StoreResult<billd_store::CommitReceipt> {
        self.check()?;
        self.inner.commit_customer(commit, now).await
    }
    async fn requeue_unlinked(&self, ids: &[&str], now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.requeue_unlinked(ids, now).await
    }
    async fn list_audit(
        &self,
        customer_id: &billd_core::CustomerId,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::AuditRecord>> {
        self.check()?;
        self.inner.list_audit(customer_id, limit).await
    }
    async fn enqueue_outbox(
        &self,
        customer_id: Option<&billd_core::CustomerId>,
        items: &[billd_store::NewOutboxItem],
        now: i64,
    ) -> StoreResult<u64> {
        self.check()?;
        self.inner.enqueue_outbox(customer_id, items, now).await
    }
    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::OutboxItem>> {
        self.check()?;
        self.inner.claim_outbox(now, lease_until, limit).await
    }
    async fn finish_outbox(
        &self,
        id: i64,
        claim_token: i64,
        result: &billd_store::OutboxResult,
        now: i64,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner.finish_outbox(id, claim_token, result, now).await
    }
    async fn renew_outbox(&self, id: i64, claim_token: i64, lease_until: i64) -> StoreResult<bool> {
        self.check()?;
        self.inner.renew_outbox(id, claim_token, lease_until).await
    }
    async fn list_outbox(
        &self,
        filter: &billd_store::OutboxFilter,
    ) -> StoreResult<Vec<billd_store::OutboxItem>> {
        self.check()?;
        self.inner.list_outbox(filter).await
    }
    async fn requeue_outbox(&self, id: i64, now: i64) -> StoreResult<bool> {
        self.check()?;
        self.inner.requeue_outbox(id, now).await
    }
    async fn consume(
        &self,
        request: &billd_store::UsageRequest,
        limit: u64,
        now: i64,
    ) -> StoreResult<billd_store::UsageOutcome> {
        self.check()?;
        self.inner.consume(request, limit, now).await
    }
    async fn release(
        &self,
        request: &billd_store::UsageRequest,
        now: i64,
    ) -> StoreResult<billd_store::UsageOutcome> {
        self.check()?;
        self.inner.release(request, now).await
    }
    async fn delete_customer(
        &self,
        commit: &billd_store::CustomerCommit,
        now: i64,
    ) -> StoreResult<billd_store::CommitReceipt> {
        self.check()?;
        self.inner.delete_customer(commit, now).await
    }
    async fn list_customers(
        &self,
        after: Option<&billd_core::CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::CustomerRecord>> {
        self.check()?;
        self.inner.list_customers(after, limit).await
    }
    async fn outbox_stats(&self) -> StoreResult<billd_store::OutboxStats> {
        self.check()?;
        self.inner.outbox_stats().await
    }
    async fn load_usage(
        &self,
        customer_id: &billd_core::CustomerId,
        keys: &[billd_core::UsageKey],
    ) -> StoreResult<billd_core::Usage> {
        self.check()?;
        self.inner.load_usage(customer_id, keys).await
    }
}

/// Checkout calls forward too, and fail the same way when switched off.
#[async_trait]
impl billd_store::CheckoutStore for SwitchableStore {
    async fn get_checkout(
        &self,
        customer_id: &billd_core::CustomerId,
    ) -> StoreResult<Option<billd_store::CheckoutRecord>> {
        self.check()?;
        self.inner.get_checkout(customer_id).await
    }
    async fn put_checkout(
        &self,
        checkout: &billd_store::CheckoutRecord,
        now: i64,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.put_checkout(checkout, now).await
    }
    async fn close_checkout(
        &self,
        customer_id: &billd_core::CustomerId,
        session_id: &str,
        now: i64,
    ) -> StoreResult<()> {
        self.check()?;
        self.inner
            .close_checkout(customer_id, session_id, now)
            .await
    }
}

/// The console's reads forward like the rest.
#[async_trait]
impl billd_store::ConsoleStore for SwitchableStore {
    async fn search_customers(
        &self,
        query: &str,
        after: Option<&billd_core::CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::CustomerRecord>> {
        self.check()?;
        self.inner.search_customers(query, after, limit).await
    }
    async fn customer_events(
        &self,
        customer_id: &billd_core::CustomerId,
        limit: u32,
    ) -> StoreResult<Vec<StoredEvent>> {
        self.check()?;
        self.inner.customer_events(customer_id, limit).await
    }
    async fn replay_events(
        &self,
        filter: &billd_store::ReplayFilter,
        now: i64,
    ) -> StoreResult<u64> {
        self.check()?;
        self.inner.replay_events(filter, now).await
    }
    async fn find_events(&self, query: &billd_store::EventQuery) -> StoreResult<Vec<StoredEvent>> {
        self.check()?;
        self.inner.find_events(query).await
    }
    async fn record_operator_action(
        &self,
        action: &billd_store::NewOperatorAction,
        now: i64,
    ) -> StoreResult<i64> {
        self.check()?;
        self.inner.record_operator_action(action, now).await
    }
    async fn operator_actions(
        &self,
        customer_id: Option<&billd_core::CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::OperatorAction>> {
        self.check()?;
        self.inner.operator_actions(customer_id, limit).await
    }
    async fn activity(
        &self,
        from: i64,
        until: i64,
        bucket_secs: i64,
    ) -> StoreResult<Vec<billd_store::ActivityBucket>> {
        self.check()?;
        self.inner.activity(from, until, bucket_secs).await
    }
    async fn alerts(&self, since: i64, limit: u32) -> StoreResult<Vec<billd_store::OutboxItem>> {
        self.check()?;
        self.inner.alerts(since, limit).await
    }
    async fn count_alerts(&self, since: i64) -> StoreResult<i64> {
        self.check()?;
        self.inner.count_alerts(since).await
    }
    async fn record_reconcile_run(
        &self,
        run: &billd_store::NewReconcileRun,
        now: i64,
    ) -> StoreResult<i64> {
        self.check()?;
        self.inner.record_reconcile_run(run, now).await
    }
    async fn reconcile_runs(
        &self,
        limit: u32,
    ) -> StoreResult<Vec<billd_store::ReconcileRunRecord>> {
        self.check()?;
        self.inner.reconcile_runs(limit).await
    }
}

/// Scheduler leases and sweeps forward like the rest.
#[async_trait]
impl billd_store::JobStore for SwitchableStore {
    async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        now: i64,
        lease_until: i64,
    ) -> StoreResult<Option<billd_store::JobRecord>> {
        self.check()?;
        self.inner.claim_job(name, owner, now, lease_until).await
    }
    async fn finish_job(
        &self,
        name: &str,
        owner: &str,
        finish: &billd_store::JobFinish,
        now: i64,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.finish_job(name, owner, finish, now).await
    }
    async fn list_jobs(&self) -> StoreResult<Vec<billd_store::JobRecord>> {
        self.check()?;
        self.inner.list_jobs().await
    }
    async fn release_expired_outbox_leases(&self, now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.release_expired_outbox_leases(now).await
    }
    async fn release_expired_inbox_leases(&self, now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.release_expired_inbox_leases(now).await
    }
}

/// The shared rate limits forward like the rest.
#[async_trait]
impl billd_store::RateLimitStore for SwitchableStore {
    async fn take_rate_token(
        &self,
        scope: &str,
        subject: &str,
        limit: u32,
        window_secs: i64,
        now: i64,
    ) -> StoreResult<billd_store::RateDecision> {
        self.check()?;
        self.inner
            .take_rate_token(scope, subject, limit, window_secs, now)
            .await
    }
}

/// Guarded consumes forward like the rest.
#[async_trait]
impl billd_store::UsageStore for SwitchableStore {
    async fn consume_guarded(
        &self,
        consume: &billd_store::GuardedConsume,
        now: i64,
    ) -> StoreResult<billd_store::GuardedOutcome> {
        self.check()?;
        self.inner.consume_guarded(consume, now).await
    }
    async fn consume_guarded_batch(
        &self,
        batch: &[billd_store::GuardedConsume],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<billd_store::GuardedOutcome>>> {
        self.check()?;
        self.inner.consume_guarded_batch(batch, now).await
    }
    async fn usage_snapshot(
        &self,
        customer: &billd_core::CustomerId,
        known_version: Option<i64>,
    ) -> StoreResult<Option<billd_store::UsageSnapshot>> {
        self.check()?;
        self.inner.usage_snapshot(customer, known_version).await
    }
    fn write_mark(&self) -> Option<billd_store::WriteMark> {
        self.inner.write_mark()
    }
    fn still_current(
        &self,
        mark: billd_store::WriteMark,
        snapshot: &billd_store::UsageSnapshot,
    ) -> bool {
        self.inner.still_current(mark, snapshot)
    }
    async fn settle(&self) -> bool {
        self.check().is_ok() && self.inner.settle().await
    }
    fn settles(&self) -> bool {
        self.inner.settles()
    }
    fn follow_changes(&self) {
        self.inner.follow_changes();
    }
}

/// Stored idempotent answers forward like the rest.
#[async_trait]
impl billd_store::IdempotencyStore for SwitchableStore {
    async fn take_idempotency_key(
        &self,
        request: &billd_store::IdempotentRequest,
        now: i64,
    ) -> StoreResult<billd_store::KeyTaken> {
        self.check()?;
        self.inner.take_idempotency_key(request, now).await
    }
    async fn store_idempotent_answer(
        &self,
        scope: &billd_store::IdempotencyScope,
        token: &str,
        answer: &billd_store::StoredAnswer,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner
            .store_idempotent_answer(scope, token, answer)
            .await
    }
    async fn release_idempotency_key(
        &self,
        scope: &billd_store::IdempotencyScope,
        token: &str,
    ) -> StoreResult<bool> {
        self.check()?;
        self.inner.release_idempotency_key(scope, token).await
    }
    async fn delete_expired_idempotency_keys(&self, now: i64) -> StoreResult<u64> {
        self.check()?;
        self.inner.delete_expired_idempotency_keys(now).await
    }
}
