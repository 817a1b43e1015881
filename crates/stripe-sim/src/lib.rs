//! stripe-sim: a stateful emulator of the Stripe API for billd's tests and dev mode.
//!
//! It speaks Stripe's wire format (form-encoded bodies with nested keys,
//! `expand[]`, list pagination, `Idempotency-Key`, error objects, unknown
//! parameters rejected), keeps every object as Stripe's JSON for the pinned API
//! version [`API_VERSION`], runs a billing engine driven by test clocks, and
//! delivers signed webhooks with failure knobs.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let sim = stripe_sim::serve(listener, stripe_sim::SimConfig { seed: 7, ..Default::default() }).await?;
//! println!("Stripe API at {}", sim.url());
//! # Ok(()) }
//! ```
//!
//! # Browser actions (the only private controls)
//! - `POST /_sim/checkout/sessions/{id}/complete` — `payment_method` (default
//!   `pm_card_visa`), optional `email`, `name`, `promotion_code` (a code, when the
//!   session allows them). Declining cards answer 402 and leave the session open
//!   (nothing is created, as on Stripe's page); `pm_card_authenticationRequired`
//!   answers the `requires_action` payment intent. `delayed=true` (a
//!   `mode=payment` session) pays as a bank debit would: the session completes
//!   `unpaid` and its payment intent stays `processing` until settled.
//! - `POST /_sim/payment_intents/{id}/authenticate` — `outcome=success|failure`.
//! - `POST /_sim/payment_intents/{id}/settle` — `outcome=success|failure`: the
//!   bank's answer to a delayed payment (a `mode=payment` session completed
//!   with `delayed=true`), emitting `checkout.session.async_payment_succeeded`
//!   or `…_failed`.
//! - `POST /_sim/disputes/{id}/close` — `outcome=won|lost`.
//! - `GET /_sim/checkout/{id}` is a small HTML page (the session's `url`) posting
//!   to the complete control, for people trying things in a browser.
//!
//! Two more controls stand in for things Stripe does on its own or in its
//! dashboard, with no API: `POST /_sim/payment_methods/{id}/automatically_update`
//! (`exp_month`, `exp_year`, `last4`: the card networks' updater) and
//! `POST /_sim/webhook_endpoints/{id}/roll_secret` (`expires_in`: the old secret
//! keeps signing, as a second `v1`, until then).
//!
//! `GET /_sim/request_problems` lists the requests served (the first 1,000)
//! that Stripe's published definitions refuse, whatever the emulator
//! answered; each is also logged as a warning.
//!
//! # Knobs
//! [`SimConfig`] at start; live through [`Sim::update_config`] or
//! `GET|POST /_sim/config` (form keys mirror the struct:
//! `webhooks[duplicate_rate]=0.5`, `webhooks[drop_rate]=1`,
//! `webhooks[reorder_window_ms]=200`, `webhooks[delay_ms]=50`,
//! `faults[next_errors]=2`, `faults[rate_limit_rate]=0.1`, `frozen_time=…`,
//! `retry_schedule_days[]=3`, `retries_exhausted=unpaid`, `time_scale=0.001`,
//! `portal_configured=false`). Moving `frozen_time` forward runs what falls due.
//!
//! # Time
//! Objects of a customer with a `test_clock` live at that clock's time; others at
//! the sim-wide frozen time ([`Sim::set_time`]) or the wall clock. Webhook
//! signatures always use the wall clock, since receivers check tolerance against theirs.
//!
//! # Known simplifications
//! - Checkout supports `mode=subscription` and `mode=payment` (one-time prices,
//!   paid at once; 3-D Secure cards are refused there); declining cards are
//!   refused on the page (no customer or subscription is created, the session
//!   stays open).
//! - Invoices are finalized when created (no one-hour draft); `invoice.updated`
//!   is not emitted; taxes are never computed.
//! - Subscription schedules are created `from_subscription` only; an update
//!   replaces the phases; `end_behavior=cancel` releases like `release`.
//! - Updating a subscription (or previewing an update) swaps items' price and
//!   quantity, adds items (`items[i][price]` without an id) and deletes them
//!   (`items[i][deleted]`, refused in a pending update as Stripe does); an
//!   added or deleted item is not prorated, and a deleted metered item's
//!   usage is not billed. Items at mixed intervals are refused as Stripe
//!   does.
//! - An `incomplete` subscription expiring sends `customer.subscription.updated`.
//! - Events are rendered in the pinned version whatever an endpoint's
//!   `api_version`; first delivery attempts go out one at a time.
//! - Billing Meters: meter events are whole numbers, validated and counted
//!   at once (Stripe aggregates asynchronously and reports bad events
//!   later); an identifier stays known for good (Stripe: at least 24 hours);
//!   event summaries are one summary over the window asked for; a metered
//!   item's usage is billed at renewal only (not on cancellation); no
//!   `billing.meter.*` events.

#![recursion_limit = "256"]
#![warn(missing_docs)]

pub mod billing;
pub mod clock;
pub mod config;
pub mod defs;
pub mod error;
pub mod form;
pub mod http;
pub mod ids;
pub mod params;
pub mod resources;
pub mod state;
pub mod webhooks;

pub use config::{ApiFaults, RetriesExhausted, SimConfig, WebhookKnobs, API_VERSION};
pub use http::{SimRequest, SimResponse};

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::Value;
use state::{Delivery, Inner};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use tokio_util::sync::CancellationToken;

/// A Stripe emulator instance. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct Sim {
    inner: Arc<Mutex<Inner>>,
    pending_rx: Arc<Mutex<Option<UnboundedReceiver<Delivery>>>>,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim").finish_non_exhaustive()
    }
}

impl Sim {
    /// A fresh emulator. Webhook delivery starts with [`Sim::router`] (or [`serve`]),
    /// which must run inside a Tokio runtime.
    pub fn new(config: SimConfig) -> Self {
        let (tx, rx) = unbounded_channel();
        let mut inner = Inner::new(config);
        inner.deliveries = Some(tx);
        Self {
            inner: Arc::new(Mutex::new(inner)),
            pending_rx: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// An emulator restored from `config.snapshot_path` if that file exists
    /// (a fresh one otherwise); fails if the file cannot be read or parsed.
    pub fn load(config: SimConfig) -> std::io::Result<Self> {
        let path = config.snapshot_path.clone();
        let sim = Self::new(config);
        if let Some(path) = path.filter(|p| p.exists()) {
            let text = std::fs::read_to_string(&path)?;
            let snap: state::Snapshot = serde_json::from_str(&text).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?;
            sim.lock().restore(snap);
        }
        Ok(sim)
    }

    /// Writes the snapshot file (if configured) atomically: temp file, then rename.
    fn save(&self, s: &Inner) {
        let Some(path) = &s.cfg.snapshot_path else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec(&s.snapshot()).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::warn!(error = %e, path = %path.display(), "stripe-sim: cannot write snapshot");
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the webhook delivery and wall-clock tasks once (no-op afterwards or outside a runtime).
    fn start_delivery(&self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let rx = self
            .pending_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            let seed = self.lock().cfg.seed;
            tokio::spawn(webhooks::run(Arc::downgrade(&self.inner), rx, seed));
            self.start_ticker();
        }
    }

    /// The emulator as an axum router (all of `/v1/…` and `/_sim/…`).
    pub fn router(&self) -> Router {
        self.start_delivery();
        Router::new().fallback(dispatch).with_state(self.clone())
    }

    /// Handles one request in-process, without HTTP (also used by the router).
    pub fn handle(&self, req: &SimRequest) -> SimResponse {
        let mut s = self.lock();
        let r = http::handle(&mut s, req);
        if req.method != "GET" && r.status < 500 {
            self.save(&s);
        }
        r
    }

    /// Convenience for Rust callers: `method path` with a form body, authenticated with a test key.
    pub fn call(&self, method: &str, path: &str, form: &str) -> (u16, Value) {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        let r = self.handle(&SimRequest {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            authorization: Some("Bearer sk_test_sim".into()),
            body: form.as_bytes().to_vec(),
            ..SimRequest::default()
        });
        (r.status, r.body)
    }

    /// The current configuration (knobs included).
    pub fn config(&self) -> SimConfig {
        self.lock().cfg.clone()
    }

    /// Changes the configuration live (webhook knobs, faults, time).
    pub fn update_config(&self, f: impl FnOnce(&mut SimConfig)) {
        f(&mut self.lock().cfg);
    }

    /// Freezes sim-wide time (for objects without a test clock) at `t`, or unfreezes
    /// with `None`. Moving it forward runs what falls due meanwhile (renewals,
    /// trial ends, retries, expiries) for those objects, like a test clock advance.
    pub fn set_time(&self, t: Option<i64>) {
        let mut s = self.lock();
        let before = s.now();
        s.cfg.frozen_time = t;
        if let Some(t) = t.filter(|t| *t > before) {
            s.cfg.frozen_time = Some(before);
            if let Err(e) = billing::catch_up(&mut s, t) {
                tracing::warn!(error = ?e, "stripe-sim: catching up to the new time failed");
            }
            s.cfg.frozen_time = Some(t);
        }
        self.save(&s);
    }

    /// Runs due work on the wall clock every second while time is not frozen.
    fn start_ticker(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let mut s = inner.lock().unwrap_or_else(PoisonError::into_inner);
                if s.cfg.frozen_time.is_none() {
                    let now = s.now();
                    if let Err(e) = billing::catch_up(&mut s, now) {
                        tracing::warn!(error = ?e, "stripe-sim: scheduled work failed");
                    }
                }
            }
        });
    }

    /// A stored object by id, as Stripe JSON.
    pub fn object(&self, id: &str) -> Option<Value> {
        self.lock().objects.get(id).cloned()
    }

    /// Starts recording every `/v1` request and answer (see [`Sim::exchanges`]).
    pub fn record_exchanges(&self) {
        self.lock().exchanges.get_or_insert_with(Vec::new);
    }

    /// The requests and answers recorded since [`Sim::record_exchanges`].
    pub fn exchanges(&self) -> Vec<state::Exchange> {
        self.lock().exchanges.clone().unwrap_or_default()
    }

    /// Each request recorded since [`Sim::record_exchanges`] that Stripe's
    /// definitions refuse ([`defs::check_decoded`]), with what is wrong,
    /// whatever the emulator answered: how a suite whose Stripe client runs
    /// in another process (billd's CLI) checks every request it sent.
    pub fn request_problems(&self) -> Vec<String> {
        self.exchanges()
            .iter()
            .filter_map(|x| {
                let problems = defs::check_decoded(&x.method, &x.path, &x.params);
                (!problems.is_empty()).then(|| {
                    let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                    format!(
                        "{} {} {}: {}",
                        x.method,
                        x.path,
                        x.params,
                        problems.join("; ")
                    )
                })
            })
            .collect()
    }

    /// How the answers recorded since [`Sim::record_exchanges`] (the
    /// successful ones) and every event so far differ from Stripe's
    /// definitions ([`defs::check_object`], [`defs::check_event`]): each
    /// distinct problem with how often it was seen. Empty when all conform.
    pub fn shape_problems(&self) -> std::collections::BTreeMap<String, usize> {
        let mut problems = std::collections::BTreeMap::new();
        for x in self.exchanges().iter().filter(|x| x.status == 200) {
            let seen = defs::Seen {
                expand: params::expand_paths(&x.params).into_iter().collect(),
                webhook: false,
            };
            for p in defs::check_object(&x.body, &seen) {
                *problems.entry(p).or_default() += 1;
            }
        }
        for e in self.events() {
            for p in defs::check_event(&e) {
                *problems.entry(p).or_default() += 1;
            }
        }
        problems
    }

    /// Every event so far, oldest first.
    pub fn events(&self) -> Vec<Value> {
        let s = self.lock();
        s.by_kind
            .get("event")
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| s.objects.get(i).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs `f` with the state locked, for tests that need to look or poke deeper.
    pub fn with_state<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.lock())
    }
}

async fn dispatch(
    axum::extract::State(sim): axum::extract::State<Sim>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let req = SimRequest {
        method: method.as_str().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        authorization: header("authorization"),
        idempotency_key: header("idempotency-key"),
        stripe_version: header("stripe-version"),
        content_type: header("content-type"),
        body: body.to_vec(),
    };
    let r = sim.handle(&req);
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = match r.html {
        Some(page) => (status, axum::response::Html(page)).into_response(),
        // Like Stripe's, the body ends with a newline, so curl output reads
        // line by line.
        None => (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            format!("{}\n", r.body),
        )
            .into_response(),
    };
    for (k, v) in r.headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

/// A running emulator server.
#[derive(Debug)]
pub struct SimHandle {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// The emulator, for reading and setting state from Rust.
    pub sim: Sim,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    /// `http://addr`, for `BILLD_STRIPE_API_BASE` or `stripe.api_base`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits for it.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Serves an emulator on `listener` (restored from `snapshot_path` if set and present).
/// `public_url` defaults to the listener's address.
pub async fn serve(
    listener: tokio::net::TcpListener,
    mut config: SimConfig,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    if config.public_url == SimConfig::default().public_url {
        config.public_url = format!("http://{addr}");
    }
    let sim = Sim::load(config)?;
    let app = sim.router();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "stripe-sim server stopped");
        }
    });
    Ok(SimHandle {
        addr,
        sim,
        shutdown,
        task,
    })
}

/// Runs an emulator on `listen` until Ctrl-C: what `stripe-sim` and `billd sim` do.
pub async fn run(listen: &str, config: SimConfig) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let handle = serve(listener, config).await?;
    // A command-line entry point: say where it listens even without a tracing subscriber.
    eprintln!(
        "stripe-sim: Stripe API emulator (TEST MODE, any sk_test_ key) on {}",
        handle.url()
    );
    tokio::signal::ctrl_c().await?;
    handle.shutdown().await;
    Ok(())
}
