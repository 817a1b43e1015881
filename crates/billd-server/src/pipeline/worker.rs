//! The inbox worker: each round derives the columns of events the webhook
//! stored lean (id and body only) and claims due events in per-customer
//! batches, many customers a round, in one write transaction; hands the
//! round's events to their handler in one call (the lifecycle handler
//! applies them in one transaction, each customer's in order), and records
//! the outcomes. Failures retry
//! with exponential backoff and jitter; after `max_attempts` an event is
//! `dead`, and one that cannot succeed however often it is tried (see
//! [`HandlerError`]) is `dead` at once. A heartbeat renews the round's
//! leases while its handlers run, so leases can be short: events left
//! `processing` by a crashed process come back when their lease ends (the
//! store's claim reclaims them), or at once on a SQLite start-up
//! (`Store::release_all_claims`). The next round is derived and claimed
//! while the current one is applied, and processed after it, except while
//! webhooks wait for their acknowledgement on SQLite (or many wait on
//! PostgreSQL; see [`INGEST_BUSY`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use billd_store::{
    Backend, ClaimLimits, Derived, EventFinish, EventResult, Store, StoreResult, StoredEvent,
};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::pipeline::clock::Clock;
use crate::pipeline::ingest::IngestLoad;
use crate::telemetry::Metrics;

/// How a handler finished an event it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandlerOutcome {
    /// Applied.
    Processed,
    /// Deliberately ignored.
    Skipped,
    /// About a Stripe customer billd cannot link yet.
    Unlinked,
    /// Applied, and the handler already finished the inbox row in the
    /// transaction that applied it (or found another worker owns it): the
    /// worker must not finish it again.
    Committed,
}

/// Why an event is `dead`: a stable snake_case code, the prefix of the
/// event's `last_error` and the label of `billd_events_dead_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadReason {
    /// The payload is not JSON, or a field has the wrong JSON type.
    PayloadInvalid,
    /// An id field does not parse as its kind of id.
    IdInvalid,
    /// A required field is missing, or a value billd does not know (a new
    /// status, say): the event's shape is not one billd understands.
    ShapeUnknown,
    /// Applying the event would break an invariant billd keeps.
    InvariantViolated,
    /// Stripe refused what the event needed (a 400, or a 404 for an object
    /// the event names): asking again gets the same answer.
    StripeRefused,
    /// A transient failure outlasted every attempt.
    AttemptsExhausted,
}

impl DeadReason {
    /// The stable code.
    pub fn code(self) -> &'static str {
        match self {
            DeadReason::PayloadInvalid => "payload_invalid",
            DeadReason::IdInvalid => "id_invalid",
            DeadReason::ShapeUnknown => "shape_unknown",
            DeadReason::InvariantViolated => "invariant_violated",
            DeadReason::StripeRefused => "stripe_refused",
            DeadReason::AttemptsExhausted => "attempts_exhausted",
        }
    }
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The same input fails the same way every time: the event is `dead`
    /// at once, for an operator to replay after a fix.
    Permanent(DeadReason),
    /// The store or Stripe could not answer now: retried with backoff.
    Transient,
}

/// A processing failure and its class. The class is decided here, from the
/// error's type, and nowhere else: parse errors (billd-stripe's
/// `ParseError`, billd-core's `IdError`, JSON) are permanent, everything
/// else (store, Stripe, anything unforeseen) is transient, so an error
/// nobody classified is retried rather than dropped.
#[derive(Debug)]
pub struct HandlerError {
    class: FailureClass,
    source: anyhow::Error,
}

/// The chain of causes, outermost first, joined by `: ` (what `last_error`
/// keeps), leaving out a cause whose text its wrapper already ends with
/// (billd-stripe's `ParseError::InvalidId` prints its `IdError` itself).
impl std::fmt::Display for HandlerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut previous = String::new();
        for (index, cause) in self.source.chain().enumerate() {
            let text = cause.to_string();
            if index > 0 {
                if previous.ends_with(&text) {
                    continue;
                }
                f.write_str(": ")?;
            }
            f.write_str(&text)?;
            previous = text;
        }
        Ok(())
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl HandlerError {
    /// A failure that retrying may fix.
    pub fn transient(source: impl Into<anyhow::Error>) -> Self {
        HandlerError {
            class: FailureClass::Transient,
            source: source.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(reason: DeadReason, source: impl Into<anyhow::Error>) -> Self {
        HandlerError {
            class: FailureClass::Permanent(reason),
            source: source.into(),
        }
    }

    /// Whether retrying can help.
    pub fn class(&self) -> FailureClass {
        self.class
    }
}

/// The classification table: the first error in the chain (outermost
/// context first) whose type says what went wrong decides.
impl From<anyhow::Error> for HandlerError {
    fn from(source: anyhow::Error) -> Self {
        let class = source
            .chain()
            .find_map(classify)
            .unwrap_or(FailureClass::Transient);
        HandlerError { class, source }
    }
}

fn classify(error: &(dyn std::error::Error + 'static)) -> Option<FailureClass> {
    use billd_stripe::events::ParseError;
    if let Some(e) = error.downcast_ref::<ParseError>() {
        return Some(FailureClass::Permanent(match e {
            ParseError::InvalidJson(_) => DeadReason::PayloadInvalid,
            ParseError::InvalidId { .. } => DeadReason::IdInvalid,
            ParseError::MissingField(_) | ParseError::InvalidValue { .. } => {
                DeadReason::ShapeUnknown
            }
        }));
    }
    if error.is::<billd_core::IdError>() {
        return Some(FailureClass::Permanent(DeadReason::IdInvalid));
    }
    if error.is::<serde_json::Error>() {
        return Some(FailureClass::Permanent(DeadReason::PayloadInvalid));
    }
    if let Some(billd_stripe::client::StripeError::Api(e)) =
        error.downcast_ref::<billd_stripe::client::StripeError>()
    {
        // 400 and 404 are about the event's own objects; 401, 403 and 409
        // are about billd's key or a moment's conflict, which a fix or a
        // retry resolves without touching the event.
        if e.status == 400 || e.status == 404 {
            return Some(FailureClass::Permanent(DeadReason::StripeRefused));
        }
    }
    if error.is::<billd_store::StoreError>() || error.is::<billd_stripe::client::StripeError>() {
        return Some(FailureClass::Transient);
    }
    None
}

impl From<billd_store::StoreError> for HandlerError {
    fn from(source: billd_store::StoreError) -> Self {
        HandlerError::transient(source)
    }
}

impl From<billd_stripe::events::ParseError> for HandlerError {
    fn from(source: billd_stripe::events::ParseError) -> Self {
        anyhow::Error::new(source).into()
    }
}

/// Applies one type (or several types) of Stripe event.
#[async_trait]
pub trait EventHandler: Send + Sync + 'static {
    /// Handles one claimed event. A transient `Err` is retried with
    /// backoff; a permanent one makes the event `dead` at once.
    async fn handle(&self, event: &StoredEvent) -> Result<HandlerOutcome, HandlerError>;

    /// Handles a round's claimed events of this handler, several
    /// customers' (each customer's in claim order), returning one outcome
    /// per event: a failing event fails alone. By default one
    /// [`EventHandler::handle`] after another; a handler that can apply
    /// them together (in one transaction) overrides it.
    async fn handle_batch(
        &self,
        events: &[&StoredEvent],
    ) -> Vec<Result<HandlerOutcome, HandlerError>> {
        let mut outcomes = Vec::with_capacity(events.len());
        for event in events {
            outcomes.push(self.handle(event).await);
        }
        outcomes
    }
}

/// Handlers keyed by event type. Types without a handler are `skipped`.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: HashMap<String, Arc<dyn EventHandler>>,
}

impl HandlerRegistry {
    /// An empty registry: every event is skipped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes `event_type` to `handler` (replacing an earlier one).
    pub fn register(&mut self, event_type: &str, handler: Arc<dyn EventHandler>) -> &mut Self {
        self.handlers.insert(event_type.to_string(), handler);
        self
    }

    /// The handler for `event_type`, if any.
    pub fn get(&self, event_type: &str) -> Option<&Arc<dyn EventHandler>> {
        self.handlers.get(event_type)
    }
}

impl std::fmt::Debug for HandlerRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&String> = self.handlers.keys().collect();
        types.sort();
        f.debug_struct("HandlerRegistry")
            .field("types", &types)
            .finish()
    }
}

/// Retry delays as data: `base · 2^(attempts-1)`, capped, then jittered
/// down by up to half so that events failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay after the first failed attempt, seconds.
    pub base_secs: i64,
    /// Longest delay, seconds.
    pub cap_secs: i64,
}

impl Backoff {
    /// The un-jittered delay after `attempts` failed attempts (attempts ≥ 1).
    pub fn delay_secs(&self, attempts: i32) -> i64 {
        let exponent = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(40);
        self.base_secs
            .saturating_mul(1_i64 << exponent)
            .min(self.cap_secs)
            .max(0)
    }

    /// The delay with jitter: `unit` in [0, 1) picks a point in
    /// [delay/2, delay]. Taking `unit` as an argument keeps this testable.
    pub fn jittered_secs(&self, attempts: i32, unit: f64) -> i64 {
        let delay = self.delay_secs(attempts);
        let half = delay / 2;
        let spread = (delay - half) as f64 * unit.clamp(0.0, 1.0);
        (half + spread.round() as i64).max(1)
    }
}

/// Inbox worker settings.
#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    /// Attempts before an event is `dead`.
    pub max_attempts: i32,
    /// How long a claim lasts before another worker may reclaim it,
    /// seconds: how long a crashed process's events wait (PostgreSQL; on
    /// SQLite a restart releases them at once).
    pub lease_secs: i64,
    /// Customers whose events a handler links and loads at once.
    pub concurrency: u32,
    /// Events of one customer claimed per round.
    pub batch: u32,
    /// Events claimed per round in all, over as many customers as that
    /// takes: the lifecycle handler commits them in one transaction.
    pub round_events: u32,
    /// Events claimed per round while webhooks wait for their
    /// acknowledgement (at most `round_events`). A round's two write
    /// transactions take SQLite's one writer for a time that grows with
    /// the round, and every delivery that arrives meanwhile waits for them;
    /// a short round also keeps the worker's buffers (and so the process's
    /// peak memory) small while the webhooks use the cores. With nothing
    /// waiting, rounds take `round_events`.
    pub round_events_under_ingest: u32,
    /// How often to look for due events when nothing wakes the worker.
    pub poll_interval: Duration,
    /// Retry backoff.
    pub backoff: Backoff,
    /// How often the leases of a round still running are renewed (to
    /// `now + lease_secs`), so a long batch keeps its events; well under
    /// `lease_secs`.
    pub heartbeat: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            max_attempts: 10,
            lease_secs: 30,
            concurrency: 16,
            batch: 256,
            round_events: 128,
            round_events_under_ingest: 32,
            poll_interval: Duration::from_secs(1),
            backoff: Backoff {
                base_secs: 10,
                cap_secs: 3600,
            },
            heartbeat: Duration::from_secs(10),
        }
    }
}

/// Received events (stored lean by the webhook) derived per round at most:
/// one read and one write transaction for up to this many.
pub const DERIVE_BATCH: u32 = 1024;

/// Deliveries waiting for their acknowledgement from which, on
/// PostgreSQL, rounds run one at a time. Fewer is a trickle (1,000 events/s
/// keeps 2 to 5 waiting), whose events then wait for one round rather than
/// two; a flood of deliveries keeps dozens waiting.
pub const INGEST_BUSY: usize = 16;

/// What one round claimed.
#[derive(Debug, Default)]
struct Claim {
    /// Received events read (and derived) by the claim's transaction.
    read: usize,
    /// The events claimed, leased to this worker.
    claimed: Vec<StoredEvent>,
}

/// The leases of a round claimed while another is processed, for that
/// round's heartbeat to renew.
#[derive(Debug, Default)]
struct HeldLeases(std::sync::Mutex<Vec<(String, i64)>>);

impl HeldLeases {
    fn add(&self, claimed: &[StoredEvent]) {
        let mut held = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        held.extend(claimed.iter().map(|e| (e.id.clone(), e.claim)));
    }

    fn snapshot(&self) -> Vec<(String, i64)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// Envelopes parsed between two yields to the runtime.
const PARSES_PER_YIELD: usize = 32;

/// Counts of what one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Received events whose columns were derived (they became pending,
    /// or dead when their body is not an envelope).
    pub derived: usize,
    /// Events claimed.
    pub claimed: usize,
    /// Customer batches (and events without a customer) claimed.
    pub batches: usize,
    /// Events that will be retried.
    pub retried: usize,
    /// Events that became dead.
    pub dead: usize,
}

/// The inbox worker.
#[derive(Clone)]
pub struct InboxWorker {
    store: Arc<dyn Store>,
    registry: Arc<HandlerRegistry>,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    clock: Arc<dyn Clock>,
    /// Deliveries waiting for their acknowledgement, when this process
    /// takes webhooks.
    ingest: Option<IngestLoad>,
}

impl std::fmt::Debug for InboxWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxWorker")
            .field("registry", &self.registry)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl InboxWorker {
    /// A worker over `store` dispatching to `registry`.
    pub fn new(
        store: Arc<dyn Store>,
        registry: HandlerRegistry,
        config: WorkerConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        InboxWorker {
            store,
            registry: Arc::new(registry),
            config,
            metrics,
            clock,
            ingest: None,
        }
    }

    /// Keeps rounds to `round_events_under_ingest` events while `load`
    /// counts deliveries waiting for their acknowledgement.
    #[must_use]
    pub fn with_ingest_load(mut self, load: IngestLoad) -> Self {
        self.ingest = Some(load);
        self
    }

    /// Whether deliveries wait for their acknowledgement.
    fn webhooks_waiting(&self) -> bool {
        self.ingest.as_ref().is_some_and(|load| load.waiting() > 0)
    }

    /// Whether rounds run one at a time, none claimed while another is
    /// applied: while webhooks wait on SQLite, whose one writer a round
    /// claimed ahead would take from their group commit; on PostgreSQL only
    /// while [`INGEST_BUSY`] or more wait, when the webhooks need the cores
    /// more than a trickle of events needs its latency.
    fn one_round_at_a_time(&self) -> bool {
        let waiting = self.ingest.as_ref().map_or(0, IngestLoad::waiting);
        match self.store.backend() {
            Backend::Sqlite => waiting > 0,
            Backend::Postgres => waiting >= INGEST_BUSY,
        }
    }

    /// Events the next round may claim (and derive).
    fn round_events(&self) -> u32 {
        let full = self.config.round_events.max(1);
        if self.webhooks_waiting() {
            full.min(self.config.round_events_under_ingest.max(1))
        } else {
            full
        }
    }

    /// Runs rounds until `cancel` fires. `wake` is notified by the webhook
    /// writer after each commit so new events are picked up at once.
    pub async fn run(self, wake: Arc<Notify>, cancel: CancellationToken) {
        // The round claimed while the previous one was processed.
        let mut ahead: Option<Claim> = None;
        loop {
            // A round takes at most `batch` events of a customer (and
            // nothing of a customer under a live lease), so a burst can
            // need several: the next round follows at once while rounds
            // find work, rather than after `poll_interval`.
            let claim = match ahead.take() {
                Some(claim) if !claim.claimed.is_empty() => Ok(claim),
                // Claimed empty a round ago: what is due now may differ.
                _ => self.claim_round().await,
            };
            let busy = match claim {
                Ok(claim) if claim.claimed.is_empty() => claim.read > 0,
                Ok(claim) if self.one_round_at_a_time() => {
                    // Webhooks wait for the writer or the cores: one round
                    // at a time, and a short one (`round_events`).
                    if let Err(e) = self.process_claim(claim, &HeldLeases::default()).await {
                        self.round_failed(&e);
                    }
                    true
                }
                Ok(claim) => {
                    // The next round is derived and claimed while this one
                    // is linked, applied and committed. Its customers are
                    // not this round's (their events are under this round's
                    // live lease), and it is processed only after this
                    // round's commit, so per customer nothing runs beside
                    // anything else, as with one round at a time; the
                    // heartbeat of this round keeps its leases too.
                    // A task of its own, so that its parsing runs on the
                    // other core beside this round's applying.
                    let next = Arc::new(HeldLeases::default());
                    let claiming = tokio::spawn({
                        let (worker, next) = (self.clone(), next.clone());
                        async move { worker.claim_round_into(&next).await }
                    });
                    if let Err(e) = self.process_claim(claim, &next).await {
                        self.round_failed(&e);
                    }
                    match claiming.await {
                        Ok(Ok(claim)) => ahead = Some(claim),
                        Ok(Err(e)) => self.round_failed(&e),
                        Err(e) => tracing::error!(error = %e, "claiming the next round panicked"),
                    }
                    true
                }
                Err(e) => {
                    self.round_failed(&e);
                    false
                }
            };
            if cancel.is_cancelled() {
                break;
            }
            if busy {
                // More may be due right away.
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        // A round claimed ahead is applied before the worker stops, rather
        // than left leased (on PostgreSQL, until its lease ends).
        if let Some(claim) = ahead.filter(|claim| !claim.claimed.is_empty()) {
            if let Err(e) = self.process_claim(claim, &HeldLeases::default()).await {
                self.round_failed(&e);
            }
        }
        tracing::info!("inbox worker stopped");
    }

    fn round_failed(&self, e: &billd_store::StoreError) {
        crate::pipeline::count_store_error(&self.metrics, e);
        tracing::warn!(error = %e, "inbox worker round failed");
    }

    /// Derives the columns of up to [`DERIVE_BATCH`] received events (the
    /// webhook stored only their id and body) in one transaction, so the
    /// worker can claim them. Returns how many were read.
    pub async fn derive_received(&self) -> StoreResult<usize> {
        let (read, derived) = self.read_received(self.round_events()).await?;
        if read > 0 {
            self.store.derive_events(&derived, self.clock.now()).await?;
        }
        Ok(read)
    }

    /// Reads up to [`DERIVE_BATCH`] received events (from a reader), no
    /// more than a round claims (a round's buffers are what the worker's
    /// memory grows with), and parses their envelopes: how many were read,
    /// and what to write.
    async fn read_received(&self, round: u32) -> StoreResult<(usize, Vec<Derived>)> {
        let limit = DERIVE_BATCH.min(round);
        let received = self.store.received_events(limit).await?;
        let mut derived: Vec<Derived> = Vec::with_capacity(received.len());
        for (n, row) in received.iter().enumerate() {
            if n % PARSES_PER_YIELD == PARSES_PER_YIELD - 1 {
                // Parsing is CPU work with no await in it: let the requests
                // that share these runtime threads in between.
                tokio::task::yield_now().await;
            }
            derived.push(
                match crate::pipeline::parse_envelope(row.payload.as_bytes(), row.received_at) {
                    Ok(event) if event.id == row.id => Derived::Event(event),
                    Ok(event) => self.invalid(
                        &row.id,
                        format!("the body is the event {}, not {}", event.id, row.id),
                    ),
                    Err(e) => self.invalid(&row.id, e.to_string()),
                },
            );
        }
        Ok((received.len(), derived))
    }

    fn invalid(&self, id: &str, error: String) -> Derived {
        let reason = DeadReason::PayloadInvalid;
        tracing::error!(event_id = %id, %error, reason = reason.code(), "event is dead");
        self.metrics.events_dead.inc(reason.code());
        Derived::Invalid {
            id: id.to_owned(),
            error: format!("{}: {error}", reason.code()),
        }
    }

    /// Derives what was received and claims what is due in one write
    /// transaction, processes the claim and records the outcomes the
    /// handlers did not commit themselves; returns what happened.
    pub async fn run_once(&self) -> StoreResult<RoundReport> {
        let claim = self.claim_round().await?;
        self.process_claim(claim, &HeldLeases::default()).await
    }

    /// Derives what was received and claims what is due, in one write
    /// transaction.
    async fn claim_round(&self) -> StoreResult<Claim> {
        let round = self.round_events();
        let (read, derived) = self.read_received(round).await?;
        let now = self.clock.now();
        let limits = ClaimLimits {
            groups: round,
            per_customer: self.config.batch,
            events: round,
        };
        let claimed = self
            .store
            .derive_and_claim(&derived, now, now + self.config.lease_secs, limits)
            .await?
            .claimed;
        Ok(Claim { read, claimed })
    }

    /// [`InboxWorker::claim_round`], whose leases `held` then lists for
    /// the heartbeat of the round under way.
    async fn claim_round_into(&self, held: &HeldLeases) -> StoreResult<Claim> {
        let claim = self.claim_round().await?;
        held.add(&claim.claimed);
        Ok(claim)
    }

    /// Processes a claimed round and records the outcomes the handlers
    /// did not commit themselves. Its heartbeat also renews the leases in
    /// `ahead` (a round claimed meanwhile, waiting for this one).
    async fn process_claim(&self, claim: Claim, ahead: &HeldLeases) -> StoreResult<RoundReport> {
        let Claim { read, claimed } = claim;
        let batches = batches(&claimed);
        let mut report = RoundReport {
            derived: read,
            claimed: claimed.len(),
            batches: batches.len(),
            ..RoundReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }
        let held: Vec<(String, i64)> = claimed.iter().map(|e| (e.id.clone(), e.claim)).collect();
        let results: Vec<(usize, Option<EventResult>)> = tokio::select! {
            results = self.process_round(&batches) => results,
            () = self.heartbeat(&held, ahead) => unreachable!("the heartbeat runs until the round ends"),
        };
        // Outcomes the handler did not commit itself are recorded in one
        // transaction: on SQLite every commit takes the single writer (and an
        // fsync) away from the webhook group commit.
        let to_finish: Vec<EventFinish> = results
            .into_iter()
            .filter_map(|(index, result)| {
                let event = &claimed[index];
                result.map(|result| EventFinish {
                    id: event.id.clone(),
                    claim: event.claim,
                    result,
                })
            })
            .collect();
        for finish in &to_finish {
            match finish.result {
                EventResult::Retry { .. } => report.retried += 1,
                EventResult::Dead { .. } => report.dead += 1,
                _ => {}
            }
        }
        if !to_finish.is_empty() {
            let finished = self
                .store
                .finish_events(&to_finish, self.clock.now())
                .await?;
            for (finish, ok) in to_finish.iter().zip(finished) {
                if !ok {
                    // Its lease ended and another worker reclaimed it; that
                    // worker's outcome stands.
                    self.metrics.processing_outcomes.inc("lease_lost");
                    tracing::warn!(
                        event_id = %finish.id,
                        claim = finish.claim,
                        "event was reclaimed by another worker before this one finished it; outcome dropped"
                    );
                }
            }
        }
        Ok(report)
    }

    /// Renews the leases of `held` every `heartbeat`, forever (the round
    /// drops it when its handlers are done). A renewal that fails is
    /// retried at the next beat; the rest of the lease absorbs a missed
    /// beat or two.
    async fn heartbeat(&self, held: &[(String, i64)], ahead: &HeldLeases) {
        loop {
            tokio::time::sleep(self.config.heartbeat).await;
            let lease_until = self.clock.now() + self.config.lease_secs;
            let mut renew = held.to_vec();
            renew.extend(ahead.snapshot());
            match self.store.renew_events(&renew, lease_until).await {
                Ok(renewed) => tracing::debug!(renewed, lease_until, "inbox leases renewed"),
                Err(e) => {
                    crate::pipeline::count_store_error(&self.metrics, &e);
                    tracing::warn!(error = %e, "renewing inbox leases failed");
                }
            }
        }
    }

    /// Runs the round's batches (indexes into its claim) through their
    /// handlers: each handler gets all of the round's events it handles in
    /// one call (so it can commit them together), the customers' batches
    /// first, each in claim order, then the events that name no Stripe
    /// customer. Those are linked to their customer only when applied: put
    /// after the batches, they are applied after (and with) the batch that
    /// may be their customer's rather than beside it, where the two would
    /// commit to the same customer at once and lose to each other on its
    /// version. Returns, per event, the outcome still to be recorded (none
    /// when the handler committed it).
    async fn process_round(
        &self,
        batches: &[Vec<(usize, &StoredEvent)>],
    ) -> Vec<(usize, Option<EventResult>)> {
        let (customers, loose): (Vec<_>, Vec<_>) = batches.iter().partition(|batch| {
            batch
                .first()
                .is_some_and(|(_, e)| e.stripe_customer.is_some())
        });
        let mut runs: Vec<HandlerRun<'_>> = Vec::new();
        for &(index, event) in customers.into_iter().chain(loose).flatten() {
            self.metrics.processing_attempts.inc_by(1);
            let handler = self.registry.get(&event.event_type);
            match runs.iter_mut().find(|(h, _)| match (h, handler) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }) {
                Some((_, events)) => events.push((index, event)),
                None => runs.push((handler, vec![(index, event)])),
            }
        }
        let mut results = Vec::new();
        for (handler, events) in runs {
            let stored: Vec<&StoredEvent> = events.iter().map(|(_, event)| *event).collect();
            let outcomes = match handler {
                None => stored.iter().map(|_| Ok(HandlerOutcome::Skipped)).collect(),
                Some(handler) => handler.handle_batch(&stored).await,
            };
            for ((index, event), outcome) in events.into_iter().zip(outcomes) {
                results.push((index, self.record(event, outcome)));
            }
        }
        results
    }

    #[tracing::instrument(skip_all, fields(event_id = %event.id, event_type = %event.event_type, attempt = event.attempts))]
    /// The outcome of one event still to be recorded, or none when the
    /// handler committed it with the state change.
    fn record(
        &self,
        event: &StoredEvent,
        outcome: Result<HandlerOutcome, HandlerError>,
    ) -> Option<EventResult> {
        let now = self.clock.now();
        let result = match outcome {
            Ok(HandlerOutcome::Committed) => {
                self.metrics.processing_outcomes.inc("processed");
                return None;
            }
            Ok(HandlerOutcome::Processed) => EventResult::Processed,
            Ok(HandlerOutcome::Skipped) => EventResult::Skipped,
            Ok(HandlerOutcome::Unlinked) => EventResult::Unlinked,
            Err(e)
                if matches!(e.class(), FailureClass::Permanent(_))
                    || event.attempts >= self.config.max_attempts =>
            {
                let reason = match e.class() {
                    FailureClass::Permanent(reason) => reason,
                    FailureClass::Transient => DeadReason::AttemptsExhausted,
                };
                tracing::error!(error = %e, reason = reason.code(), "event is dead");
                self.metrics.events_dead.inc(reason.code());
                EventResult::Dead {
                    error: format!("{}: {e}", reason.code()),
                }
            }
            Err(e) => {
                let unit: f64 = rand::thread_rng().gen();
                let delay = self.config.backoff.jittered_secs(event.attempts, unit);
                tracing::warn!(error = %e, retry_in_secs = delay, "event processing failed");
                EventResult::Retry {
                    error: e.to_string(),
                    next_attempt_at: now + delay,
                }
            }
        };
        self.metrics.processing_outcomes.inc(outcome_label(&result));
        Some(result)
    }
}

/// Events of one batch that go to one handler (none: skipped), with their
/// indexes into the round's claim.
type HandlerRun<'a> = (
    Option<&'a Arc<dyn EventHandler>>,
    Vec<(usize, &'a StoredEvent)>,
);

/// The claim's events grouped into batches, in claim order: one per Stripe
/// customer, and one per event without a customer.
fn batches(claimed: &[StoredEvent]) -> Vec<Vec<(usize, &StoredEvent)>> {
    let mut batches: Vec<Vec<(usize, &StoredEvent)>> = Vec::new();
    let mut by_customer: HashMap<&str, usize> = HashMap::new();
    for (index, event) in claimed.iter().enumerate() {
        match event.stripe_customer.as_deref() {
            Some(customer) => match by_customer.get(customer) {
                Some(&batch) => batches[batch].push((index, event)),
                None => {
                    by_customer.insert(customer, batches.len());
                    batches.push(vec![(index, event)]);
                }
            },
            None => batches.push(vec![(index, event)]),
        }
    }
    batches
}

fn outcome_label(result: &EventResult) -> &'static str {
    match result {
        EventResult::Processed => "processed",
        EventResult::Skipped => "skipped",
        EventResult::Unlinked => "unlinked",
        EventResult::Retry { .. } => "retry",
        EventResult::Dead { .. } => "dead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_base_and_stops_at_the_cap() {
        let backoff = Backoff {
            base_secs: 10,
            cap_secs: 100,
        };
        let delays: Vec<i64> = (1..=6).map(|a| backoff.delay_secs(a)).collect();
        assert_eq!(delays, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(backoff.delay_secs(1000), 100);
    }

    #[test]
    fn parse_errors_and_stripe_refusals_are_permanent_with_their_reason_and_the_rest_is_transient()
    {
        use anyhow::Context as _;
        use billd_stripe::events::ParseError;
        let class = |e: anyhow::Error| HandlerError::from(e).class();
        let id_error = billd_core::EventId::parse("nope").unwrap_err();
        let permanent = |reason| FailureClass::Permanent(reason);

        assert_eq!(
            class(ParseError::InvalidJson("eof".into()).into()),
            permanent(DeadReason::PayloadInvalid)
        );
        assert_eq!(
            class(ParseError::MissingField("data.object").into()),
            permanent(DeadReason::ShapeUnknown)
        );
        assert_eq!(
            class(
                ParseError::InvalidValue {
                    field: "status",
                    value: "new".into()
                }
                .into()
            ),
            permanent(DeadReason::ShapeUnknown)
        );
        let wrapped = Err::<(), _>(id_error).context("re-fetch event id");
        assert_eq!(
            class(wrapped.unwrap_err()),
            permanent(DeadReason::IdInvalid)
        );
        let json = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(class(json.into()), permanent(DeadReason::PayloadInvalid));
        let store = billd_store::StoreError::Unavailable("down".into());
        assert_eq!(HandlerError::from(store).class(), FailureClass::Transient);
        let stripe = billd_stripe::client::StripeError::Unavailable("503".into());
        assert_eq!(
            class(anyhow::Error::new(stripe).context("fetching charge")),
            FailureClass::Transient
        );
        assert_eq!(class(anyhow::anyhow!("who knows")), FailureClass::Transient);
        let refused = |status| {
            let api = billd_stripe::client::ApiError {
                status,
                kind: "invalid_request_error".into(),
                code: Some("resource_missing".into()),
                decline_code: None,
                param: None,
                message: "No such charge".into(),
            };
            let error = billd_stripe::client::StripeError::Api(Box::new(api));
            class(anyhow::Error::new(error).context("fetching charge"))
        };
        assert_eq!(refused(404), permanent(DeadReason::StripeRefused));
        assert_eq!(refused(400), permanent(DeadReason::StripeRefused));
        for status in [401, 403, 409] {
            assert_eq!(refused(status), FailureClass::Transient, "{status}");
        }
    }

    #[test]
    fn the_message_names_each_cause_once() {
        use anyhow::Context as _;
        let id_error = billd_core::StripeSubscriptionId::parse("nope").unwrap_err();
        let parse = billd_stripe::events::ParseError::InvalidId {
            field: "subscription",
            source: id_error.clone(),
        };
        let error = HandlerError::from(Err::<(), _>(parse).context("stored event").unwrap_err());

        assert_eq!(
            error.to_string(),
            format!("stored event: invalid id in subscription: {id_error}")
        );
    }

    #[test]
    fn jitter_stays_between_half_the_delay_and_the_delay() {
        let backoff = Backoff {
            base_secs: 10,
            cap_secs: 1000,
        };
        assert_eq!(backoff.jittered_secs(3, 0.0), 20);
        assert_eq!(backoff.jittered_secs(3, 1.0), 40);
        assert_eq!(backoff.jittered_secs(3, 0.5), 30);
    }
}
