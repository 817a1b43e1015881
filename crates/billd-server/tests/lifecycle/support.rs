//! A billd per test (loopback port 0, its own SQLite file or PostgreSQL
//! database) wired to an in-process stripe-sim: the sim's webhook endpoint
//! points at billd, billd's Stripe client at the sim. Customers live on sim
//! test clocks; billd's billing clock is moved with them.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use billd_core::Catalog;
use billd_server::http;
use billd_server::http::ApiConfig;
use billd_server::http::ApiKeys;
use billd_server::pipeline::{BillingBackend, LifecycleHandler};
use billd_server::pipeline::{Delivery, LogDelivery, OutboxConfig, OutboxWorker};
use billd_server::{
    Backoff, Clock, IngestConfig, ManualClock, Running, ServerConfig, SystemClock, WebhookConfig,
    WorkerConfig, Workers,
};
use billd_store::{PgStore, SqliteStore, Store};
use billd_stripe::client::{ClientConfig, RecordedRequest, Recorder, StripeClient};
use secrecy::SecretString;
use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle, WebhookKnobs};

pub const DAY: i64 = 86_400;
pub const APP_KEY: &str = "app_key_lifecycle";
pub const ADMIN_KEY: &str = "admin_key_lifecycle";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Generates one test per database for an `async fn(Db)`.
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

/// The instant every scenario starts at: 2026-04-10T09:30:00Z, fixed so that
/// no test depends on the date it runs on (a period that starts today would
/// last 28 to 31 days, and prorations with it). A period starting then ends
/// on 10 May, 30 days later, so "ten days into the period" leaves exactly
/// two thirds of it; and it is not the start of a calendar month, where a
/// subscription's first period would begin at the same second as the free
/// plan's month. Only billing time is fixed: webhook signatures are still
/// checked against the wall clock, which is what stripe-sim signs with.
pub const T0: i64 = 1_775_813_400;

/// [`T0`], for the harnesses of one test (two runs of the same script see
/// the same Stripe timestamps).
pub fn t0() -> i64 {
    T0
}

/// The server settings of these tests: webhooks signed with `secret`, the
/// inbox polled every 30 ms, retries after 1 s.
pub fn server_config(secret: String) -> ServerConfig {
    ServerConfig {
        webhook: WebhookConfig {
            secrets: vec![SecretString::from(secret)],
            tolerance_secs: 300,
        },
        ingest: IngestConfig::default(),
        worker: WorkerConfig {
            poll_interval: Duration::from_millis(30),
            backoff: Backoff {
                base_secs: 1,
                cap_secs: 1,
            },
            ..WorkerConfig::default()
        },
        ready_max_lag_secs: 600,
    }
}

/// billd's requests to Stripe, recorded by its client and checked against
/// Stripe's published definitions (`stripe_sim::defs::check_request`):
/// stripe-sim accepting a request proves only that the emulator does, so a
/// wrong name, type, enumeration value or endpoint must fail here even where
/// the emulator lets it through. Checked by [`RequestCheck::check`] and, as a
/// backstop, when dropped (unless the test is already failing).
#[derive(Default)]
pub struct RequestCheck {
    log: Arc<Mutex<Vec<RecordedRequest>>>,
}

impl RequestCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// A hook for [`ClientConfig::recorder`] that appends to this log.
    pub fn recorder(&self) -> Recorder {
        let log = self.log.clone();
        Recorder::new(move |r| log.lock().unwrap().push(r.clone()))
    }

    /// A client for `api_base` (a stripe-sim) that records into this log.
    pub fn client(&self, api_base: impl Into<String>, key: &str) -> StripeClient {
        let mut config = ClientConfig::new(api_base, SecretString::from(key.to_owned()));
        config.recorder = Some(self.recorder());
        StripeClient::new(config).unwrap()
    }

    /// Checks every request recorded since the last check; panics naming
    /// each request Stripe's definitions refuse, and what is wrong with it.
    pub fn check(&self) {
        let requests = std::mem::take(&mut *self.log.lock().unwrap());
        let mut endpoints = std::collections::BTreeSet::new();
        let mut bad = Vec::new();
        for r in &requests {
            endpoints.extend(stripe_sim::defs::endpoint_key(&r.method, &r.path));
            let problems = stripe_sim::defs::check_request(&r.method, &r.path, &r.params);
            if !problems.is_empty() {
                let form: Vec<String> = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                bad.push(format!(
                    "{} {} [{}]: {}",
                    r.method,
                    r.path,
                    form.join("&"),
                    problems.join("; ")
                ));
            }
        }
        // Seen with `--no-capture`: what the check covered.
        eprintln!(
            "stripe requests checked: {} over {} endpoints: {}",
            requests.len(),
            endpoints.len(),
            endpoints.into_iter().collect::<Vec<_>>().join(", ")
        );
        assert!(
            bad.is_empty(),
            "billd sent {} Stripe request(s) that Stripe's definitions refuse:\n{}",
            bad.len(),
            bad.join("\n")
        );
    }
}

impl Drop for RequestCheck {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.check();
        }
    }
}

pub struct Harness {
    pub sim: stripe_sim::Sim,
    pub base: String,
    pub http: reqwest::Client,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn BillingBackend>,
    /// The URL of the test's database.
    pub db_url: String,
    pub pro_price: String,
    pub standard_price: String,
    /// billd's Stripe client (pointed at the sim).
    pub stripe_client: StripeClient,
    /// Every request `stripe_client` sends, checked at [`Harness::shutdown`].
    pub requests: RequestCheck,
    /// The signing secret of the emulator's endpoint for billd.
    pub webhook_secret: String,
    running: Option<Running>,
    sim_handle: Option<SimHandle>,
    outbox: Option<tokio::task::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub async fn open_store(db: Db) -> (Arc<dyn BillingBackend>, Option<tempfile::TempDir>) {
    let (store, dir, _) = open_store_at(db).await;
    (store, dir)
}

/// Like [`open_store`], also returning the database's URL.
pub async fn open_store_at(db: Db) -> (Arc<dyn BillingBackend>, Option<tempfile::TempDir>, String) {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("billd.db").display());
            let store = SqliteStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            (Arc::new(store), Some(dir), url)
        }
        Db::Postgres => {
            let url = billd_store::testing::fresh_postgres_database()
                .await
                .unwrap_or_else(|e| panic!("PostgreSQL test database: {e}"));
            let store = PgStore::connect(&url).await.unwrap();
            store.migrate().await.unwrap();
            (Arc::new(store), None, url)
        }
    }
}

impl Harness {
    pub async fn start(db: Db, t0: i64, knobs: WebhookKnobs) -> Harness {
        Self::start_with(db, t0, knobs, Catalog::seed(), ApiConfig::default()).await
    }

    /// Like [`Harness::start`] with a catalog and API knobs of the test's own.
    pub async fn start_with(
        db: Db,
        t0: i64,
        knobs: WebhookKnobs,
        catalog: Catalog,
        api_config: ApiConfig,
    ) -> Harness {
        let delivery = |_: Arc<dyn BillingBackend>| -> Arc<dyn Delivery> { Arc::new(LogDelivery) };
        Self::start_full(db, t0, knobs, catalog, api_config, delivery, 20).await
    }

    /// Like [`Harness::start`], with the inbox worker giving an event up
    /// (`dead`) after `max_attempts` transient failures instead of 20.
    pub async fn start_with_attempts(db: Db, t0: i64, max_attempts: i32) -> Harness {
        let (catalog, api) = (Catalog::seed(), ApiConfig::default());
        let delivery = |_: Arc<dyn BillingBackend>| -> Arc<dyn Delivery> { Arc::new(LogDelivery) };
        Self::start_full(
            db,
            t0,
            WebhookKnobs::default(),
            catalog,
            api,
            delivery,
            max_attempts,
        )
        .await
    }

    /// Like [`Harness::start`], with the outbox's emails and alerts going
    /// to the delivery `delivery` builds over the test's store.
    pub async fn start_with_delivery(
        db: Db,
        t0: i64,
        delivery: impl FnOnce(Arc<dyn BillingBackend>) -> Arc<dyn Delivery>,
    ) -> Harness {
        let (catalog, api) = (Catalog::seed(), ApiConfig::default());
        Self::start_full(db, t0, WebhookKnobs::default(), catalog, api, delivery, 20).await
    }

    async fn start_full(
        db: Db,
        t0: i64,
        knobs: WebhookKnobs,
        catalog: Catalog,
        api_config: ApiConfig,
        delivery: impl FnOnce(Arc<dyn BillingBackend>) -> Arc<dyn Delivery>,
        max_attempts: i32,
    ) -> Harness {
        let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sim_handle = stripe_sim::serve(
            sim_listener,
            SimConfig {
                seed: 11,
                // Webhook retries in milliseconds rather than hours.
                time_scale: 0.0005,
                webhooks: knobs,
                // Objects without a test clock (payment methods, say) are
                // made at the scenario's instant too, not today.
                frozen_time: Some(t0),
                ..SimConfig::default()
            },
        )
        .await
        .unwrap();
        let sim = sim_handle.sim.clone();
        sim.record_exchanges();
        let price = |name: &str, amount: u32| {
            let (status, body) = sim.call(
                "POST",
                "/v1/prices",
                &format!(
                    "product_data[name]={name}&currency=eur&unit_amount={amount}&recurring[interval]=month&lookup_key=billd_{name}_eur"
                ),
            );
            assert_eq!(status, 200, "{body}");
            body["id"].as_str().unwrap().to_string()
        };
        let pro_price = price("pro", 1900);
        let standard_price = price("standard", 900);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (status, endpoint) = sim.call(
            "POST",
            "/v1/webhook_endpoints",
            &format!("url={base}/webhooks/stripe&enabled_events[]=*"),
        );
        assert_eq!(status, 200, "{endpoint}");
        let secret = endpoint["secret"].as_str().unwrap().to_string();

        let (store, dir, db_url) = open_store_at(db).await;
        let clock = Arc::new(ManualClock::new(t0));
        let mut stripe_config =
            ClientConfig::new(sim_handle.url(), SecretString::from("sk_test_billd"));
        stripe_config.initial_backoff = Duration::from_millis(20);
        let requests = RequestCheck::new();
        stripe_config.recorder = Some(requests.recorder());
        let stripe = StripeClient::new(stripe_config).unwrap();
        let catalog = Arc::new(catalog);
        let registry = LifecycleHandler::new(
            store.clone(),
            catalog.clone(),
            Some(stripe.clone()),
            clock.clone(),
        )
        .registry();
        let routes = http::routes(
            store.clone(),
            catalog,
            clock.clone(),
            ApiKeys::new(
                vec![SecretString::from(APP_KEY)],
                vec![SecretString::from(ADMIN_KEY)],
            ),
            Some(stripe.clone()),
            api_config,
        );
        let mut config = server_config(secret.clone());
        config.worker = WorkerConfig {
            max_attempts,
            lease_secs: 60,
            concurrency: 8,
            ..config.worker
        };
        let inbox_store: Arc<dyn Store> = store.clone();
        // The webhook path checks signatures against the wall clock (the
        // sim signs with it); billing decisions use the test clock.
        let running = billd_server::start_with_routes(
            listener,
            inbox_store,
            config,
            registry,
            Arc::new(SystemClock),
            Workers::Run,
            routes,
        )
        .unwrap();
        let outbox = OutboxWorker::new(
            store.clone(),
            Some(stripe.clone()),
            delivery(store.clone()),
            clock.clone(),
            OutboxConfig {
                poll_interval: Duration::from_millis(30),
                ..OutboxConfig::default()
            },
        );
        let outbox = tokio::spawn(outbox.run(running.cancel_token()));
        Harness {
            sim,
            base,
            http: reqwest::Client::new(),
            clock,
            store,
            db_url,
            pro_price,
            standard_price,
            stripe_client: stripe,
            requests,
            webhook_secret: secret,
            running: Some(running),
            sim_handle: Some(sim_handle),
            outbox: Some(outbox),
            _dir: dir,
        }
    }

    #[track_caller]
    pub fn stripe(&self, method: &str, path: &str, form: &str) -> Value {
        let (status, body) = self.sim.call(method, path, form);
        assert_eq!(status, 200, "{method} {path} {form} → {status}: {body:#}");
        body
    }

    /// `PUT /v1/customers/{user}` on billd, then a Stripe customer on a new
    /// test clock at billd's time, carrying `metadata[billd_customer_id]`
    /// (unless `link` is false) and paying with `pm`.
    pub async fn customer(&self, user: &str, pm: &str, link: bool) -> (String, String) {
        let response = self
            .http
            .put(format!("{}/v1/customers/{user}", self.base))
            .bearer_auth(APP_KEY)
            .json(&serde_json::json!({ "email": format!("{user}@example.com") }))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        let clock = self.stripe(
            "POST",
            "/v1/test_helpers/test_clocks",
            &format!("frozen_time={}", self.clock.now()),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        let metadata = if link {
            format!("&metadata[billd_customer_id]={user}")
        } else {
            String::new()
        };
        let cus = self.stripe(
            "POST",
            "/v1/customers",
            &format!("email={user}@example.com&test_clock={clock}{metadata}"),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        self.pay_with(&cus, pm);
        (clock, cus)
    }

    /// Attaches `pm` and makes it the customer's default.
    pub fn pay_with(&self, cus: &str, pm: &str) {
        let pm = self.stripe(
            "POST",
            &format!("/v1/payment_methods/{pm}/attach"),
            &format!("customer={cus}"),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        self.stripe(
            "POST",
            &format!("/v1/customers/{cus}"),
            &format!("invoice_settings[default_payment_method]={pm}"),
        );
    }

    /// Delivers a webhook of billd's test's own making, signed like the
    /// sim's: for payloads the sim would not send. Panics unless billd
    /// answers 2xx.
    pub async fn deliver(&self, id: &str, event_type: &str, object: Value) {
        let body = serde_json::json!({
            "id": id,
            "object": "event",
            "api_version": billd_stripe::API_VERSION,
            "created": self.clock.now(),
            "livemode": false,
            "pending_webhooks": 1,
            "request": { "id": null, "idempotency_key": null },
            "type": event_type,
            "data": { "object": object },
        })
        .to_string();
        // Signatures are checked against the wall clock (see `server_config`).
        let header =
            billd_stripe::webhook::sign(&self.webhook_secret, SystemClock.now(), body.as_bytes());
        let response = self
            .http
            .post(format!("{}/webhooks/stripe", self.base))
            .header("Content-Type", "application/json")
            .header("Stripe-Signature", header)
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{event_type} {id}: {}",
            response.status()
        );
    }

    pub fn subscribe(&self, user: &str, cus: &str, price: &str) -> Value {
        self.stripe(
            "POST",
            "/v1/subscriptions",
            &format!("customer={cus}&items[0][price]={price}&metadata[billd_customer_id]={user}"),
        )
    }

    /// Moves the customer's test clock and billd's billing clock to `to`.
    pub fn advance(&self, clock: &str, to: i64) {
        self.stripe(
            "POST",
            &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
            &format!("frozen_time={to}"),
        );
        self.clock.set(to);
    }

    pub async fn entitlements(&self, user: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}/v1/customers/{user}/entitlements", self.base))
            .bearer_auth(APP_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Polls the entitlements until `done` holds (webhooks, the inbox and
    /// the outbox run asynchronously); panics with the last answer.
    pub async fn wait_for(&self, user: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (status, body) = self.entitlements(user).await;
            if status == 200 && done(&body) {
                return body;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; last entitlements ({status}): {body:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls a sim object until `done` holds.
    pub async fn wait_for_stripe(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let object = self.sim.object(id).unwrap_or(Value::Null);
            if done(&object) {
                return;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; {id} is {object:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn admin_get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().await.unwrap();
        }
        if let Some(outbox) = self.outbox.take() {
            outbox.await.unwrap();
        }
        if let Some(sim) = self.sim_handle.take() {
            sim.shutdown().await;
        }
        // After the workers stop: nothing billd sends goes unchecked.
        self.requests.check();
        // Nor anything the sim answered or delivered in the scenario.
        let problems = self.sim.shape_problems();
        assert!(
            problems.is_empty(),
            "stripe-sim emitted objects Stripe's definitions refuse: {problems:#?}"
        );
    }
}

/// The first charge of a Stripe customer.
pub fn first_charge(h: &Harness, cus: &str) -> String {
    h.stripe("GET", &format!("/v1/charges?customer={cus}"), "")["data"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no charge for {cus}"))
        .to_string()
}
