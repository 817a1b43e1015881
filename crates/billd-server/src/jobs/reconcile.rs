//! Reconciliation: catches what Stripe never delivered.
//!
//! One run
//! 1. lists the events Stripe could not deliver (`delivery_success=false`,
//!    last 30 days) and notes those the inbox lacks;
//! 2. lists every subscription (`status=all`), paged and paced below
//!    Stripe's rate limit, backing off when Stripe answers 429 anyway, and
//!    compares each with the snapshot billd keeps (status, plan, cancel
//!    flag, current period): a difference is drift;
//! 3. heals each drifted subscription by inserting Stripe's object into the
//!    inbox as a synthetic authoritative event (id
//!    [`RECONCILE_EVENT_PREFIX`]`{sub}_{created}`), which the normal
//!    lifecycle handler applies, writing its audit rows under that event id
//!    — there is no second code path that changes billing state;
//! 4. once those are applied, ingests the missing events through the same
//!    inbox (`insert_events`: an id already there is a duplicate, a no-op).
//!
//! The heal events go first so that each fix is applied (and audited) as
//! reconciliation's; the missed events then only add what a subscription
//! snapshot does not carry (invoices, refunds, disputes) and are stale for
//! the subscriptions already healed.
//!
//! A subscription whose customer billd cannot link (no link, no
//! `metadata[billd_customer_id]`) is not drift billd could fix: it is
//! reported apart and its event is parked as `unlinked` like a webhook's.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::event::{Subscription, METADATA_CUSTOMER_ID};
use billd_core::state::{resolve_plan, SubscriptionState};
use billd_core::{Catalog, CustomerId};
use billd_store::{CustomerRecord, EventStatus, InsertOutcome, NewEvent, Store, StoreError};
use billd_stripe::client::{Params, StripeClient, StripeError};
use billd_stripe::events::parse_subscription;
use serde::Serialize;
use serde_json::Value;

use crate::pipeline::synthetic_subscription_event;
use crate::pipeline::Clock;
use crate::pipeline::InboxWorker;
use crate::pipeline::RECONCILE_EVENT_PREFIX;
use crate::telemetry::Metrics;

/// How far back undelivered events are looked for: Stripe keeps events
/// listable for 30 days.
pub const EVENTS_WINDOW_SECS: i64 = 30 * 86_400;

/// Reconciliation settings.
#[derive(Debug, Clone)]
pub struct ReconcileConfig {
    /// Undelivered events created this long ago or later are ingested.
    pub events_window_secs: i64,
    /// Objects per list page (Stripe allows 1 to 100).
    pub page_limit: u32,
    /// Most list requests per second; Stripe allows 25/s in test mode and
    /// 100/s in live mode, shared with everything else using the key.
    pub max_requests_per_sec: u32,
    /// A page that still fails as unavailable (429, 5xx, network) after
    /// the client's own retries is retried this many more times.
    pub page_retries: u32,
    /// Wait before the first of those retries; doubles each time.
    pub page_retry_backoff: Duration,
    /// How long a run waits for its heal events to be applied before it
    /// ingests the missed events anyway.
    pub settle_timeout: Duration,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            events_window_secs: EVENTS_WINDOW_SECS,
            page_limit: 100,
            max_requests_per_sec: 20,
            page_retries: 6,
            page_retry_backoff: Duration::from_secs(2),
            settle_timeout: Duration::from_secs(60),
        }
    }
}

/// What differs between billd's snapshot of a subscription and Stripe's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// billd does not know the subscription at all.
    Missing,
    /// Stripe's status differs.
    Status,
    /// The price (plan) differs.
    Plan,
    /// `cancel_at_period_end` differs.
    CancelFlag,
    /// The current period (start or end) differs.
    Period,
}

impl DriftKind {
    /// The label used in the drift table and `billd_reconcile_drift_total{kind}`.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::Status => "status",
            DriftKind::Plan => "plan",
            DriftKind::CancelFlag => "cancel_flag",
            DriftKind::Period => "period",
        }
    }
}

/// One difference: its kind and both sides, rendered for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldDrift {
    /// Which field.
    pub kind: DriftKind,
    /// billd's value.
    pub billd: String,
    /// Stripe's value.
    pub stripe: String,
}

/// A subscription whose latest state billd missed. Counted once, under its
/// most significant difference (`kind`, in [`DriftKind`] order); `fields`
/// lists every difference.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// The most significant difference.
    pub kind: DriftKind,
    /// The billd customer the subscription belongs to.
    pub customer: CustomerId,
    /// The Stripe subscription.
    pub subscription: String,
    /// billd's value of `kind`.
    pub billd: String,
    /// Stripe's value of `kind`.
    pub stripe: String,
    /// Every difference, most significant first.
    pub fields: Vec<FieldDrift>,
    /// The synthetic event that heals it.
    pub heal_event: String,
}

/// A Stripe subscription billd cannot link to any customer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnlinkedSubscription {
    /// The Stripe subscription.
    pub subscription: String,
    /// Its Stripe customer.
    pub stripe_customer: String,
    /// Its status at Stripe.
    pub status: String,
    /// The event parked for it (applied once the customer is linked).
    pub event: String,
}

/// What one run found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Nothing was written.
    pub dry_run: bool,
    /// Subscriptions listed at Stripe.
    pub subscriptions_checked: usize,
    /// Drifted subscriptions, by subscription id.
    pub drift: Vec<Drift>,
    /// Subscriptions whose customer billd cannot link.
    pub unlinked: Vec<UnlinkedSubscription>,
    /// Events Stripe lists as not (yet) delivered in the window.
    pub undelivered_events: usize,
    /// Those the inbox lacked: ingested (or, in a dry run, to ingest).
    pub missing_events: Vec<String>,
    /// Heal events newly inserted (a repeated one is a duplicate).
    pub heal_events_inserted: usize,
    /// Missing events newly inserted.
    pub events_ingested: usize,
    /// Events of this run not yet applied when it ended (the inbox worker
    /// applies them later).
    pub not_settled: Vec<String>,
    /// List pages retried after Stripe stayed unavailable (429, 5xx).
    pub page_retries: u32,
    /// Subscriptions Stripe listed that billd could not read, with why.
    pub unreadable: Vec<String>,
}

impl ReconcileReport {
    /// Drifted subscriptions per kind.
    pub fn drift_by_kind(&self) -> BTreeMap<DriftKind, usize> {
        let mut by_kind = BTreeMap::new();
        for d in &self.drift {
            *by_kind.entry(d.kind).or_default() += 1;
        }
        by_kind
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Stripe could not be listed.
    #[error("stripe: {0}")]
    Stripe(#[from] StripeError),
    /// The database failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Runs reconciliation against one Stripe account and one store.
pub struct Reconciler {
    store: Arc<dyn Store>,
    stripe: StripeClient,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    metrics: Option<Arc<Metrics>>,
    config: ReconcileConfig,
    /// Raises `reconcile_drift` after a run that healed drift.
    alerter: Option<crate::jobs::alerts::Alerter>,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("stripe", &self.stripe)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The plan of a run, before anything is written.
struct Plan {
    report: ReconcileReport,
    heal: Vec<NewEvent>,
    missing: Vec<NewEvent>,
}

impl Reconciler {
    /// A reconciler. `clock` is the wall clock (the 30-day window and
    /// `received_at`); `metrics`, when given, counts runs and drift.
    pub fn new(
        store: Arc<dyn Store>,
        stripe: StripeClient,
        catalog: Arc<Catalog>,
        clock: Arc<dyn Clock>,
        metrics: Option<Arc<Metrics>>,
        config: ReconcileConfig,
    ) -> Self {
        Reconciler {
            store,
            stripe,
            catalog,
            clock,
            metrics,
            config,
            alerter: None,
        }
    }

    /// Alerts the operator (once per dedupe window) when a run heals drift:
    /// drift means webhooks are being missed.
    pub fn with_alerter(mut self, alerter: crate::jobs::alerts::Alerter) -> Self {
        self.alerter = Some(alerter);
        self
    }

    /// One run. A dry run only reads. Otherwise heal events are inserted
    /// and awaited (driving `worker` when given, as the CLI does; else the
    /// running server's inbox worker applies them), then the missing events
    /// are inserted (and, with `worker`, applied too).
    pub async fn run(
        &self,
        dry_run: bool,
        worker: Option<&InboxWorker>,
    ) -> Result<ReconcileReport, ReconcileError> {
        let Plan {
            mut report,
            heal,
            missing,
        } = self.plan().await?;
        report.dry_run = dry_run;
        if dry_run {
            return Ok(report);
        }
        for d in &report.drift {
            tracing::info!(
                customer = %d.customer, subscription = %d.subscription, kind = d.kind.as_str(),
                billd = %d.billd, stripe = %d.stripe, event_id = %d.heal_event,
                "reconciliation: healing drift"
            );
        }
        for u in &report.unlinked {
            tracing::warn!(
                subscription = %u.subscription, stripe_customer = %u.stripe_customer,
                "reconciliation: subscription of an unlinked Stripe customer; parked"
            );
        }
        report.heal_events_inserted = inserted(&self.store.insert_events(&heal).await?);
        let heal_ids: Vec<String> = heal.iter().map(|e| e.id.clone()).collect();
        let mut not_settled = self.settle(&heal_ids, worker).await?;
        report.events_ingested = inserted(&self.store.insert_events(&missing).await?);
        if worker.is_some() {
            let missing_ids: Vec<String> = missing.iter().map(|e| e.id.clone()).collect();
            not_settled.extend(self.settle(&missing_ids, worker).await?);
        }
        report.not_settled = not_settled;
        if let Some(metrics) = &self.metrics {
            metrics.reconcile_runs.fetch_add(1, Ordering::Relaxed);
            for d in &report.drift {
                metrics.reconcile_drift.inc(d.kind.as_str());
            }
        }
        if let Some(alerter) = &self.alerter {
            let by_kind: Vec<(&str, u64)> = report
                .drift_by_kind()
                .into_iter()
                .map(|(kind, n)| (kind.as_str(), n as u64))
                .collect();
            alerter.raise_drift(&by_kind, self.clock.now()).await?;
        }
        tracing::info!(
            checked = report.subscriptions_checked,
            drift = report.drift.len(),
            unlinked = report.unlinked.len(),
            ingested = report.events_ingested,
            "reconciliation finished"
        );
        Ok(report)
    }

    async fn plan(&self) -> Result<Plan, ReconcileError> {
        let now = self.clock.now();
        let mut pager = Pager::new(&self.stripe, &self.config);
        let mut report = ReconcileReport::default();

        let undelivered = pager
            .list_all(
                "/v1/events",
                Params::new()
                    .set("delivery_success", "false")
                    .set("created[gte]", now - self.config.events_window_secs),
            )
            .await?;
        report.undelivered_events = undelivered.len();
        // The newest undelivered snapshot of each subscription: a heal must
        // be stamped at least that late, or that event, ingested next,
        // would be newer than Stripe's current object.
        let mut latest_missed: HashMap<String, i64> = HashMap::new();
        let mut missing = Vec::new();
        for event in &undelivered {
            let (Some(id), Some(created)) = (
                event.get("id").and_then(Value::as_str),
                event.get("created").and_then(Value::as_i64),
            ) else {
                continue;
            };
            let is_subscription = event
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("customer.subscription."));
            if let Some(sub) = event.pointer("/data/object/id").and_then(Value::as_str) {
                if is_subscription {
                    let latest = latest_missed.entry(sub.to_owned()).or_insert(created);
                    *latest = (*latest).max(created);
                }
            }
            if self.store.get_event(id).await?.is_some() {
                continue;
            }
            match crate::pipeline::parse_envelope(event.to_string().as_bytes(), now) {
                Ok(new) => missing.push(new),
                Err(e) => tracing::warn!(event_id = id, error = ?e, "undelivered event unreadable"),
            }
        }
        // Oldest first, so that a dry run and a real run list them alike.
        missing.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        report.missing_events = missing.iter().map(|e| e.id.clone()).collect();

        // Every page of the listing was asked for after this.
        let observed = crate::pipeline::observation_ns();
        let subscriptions = pager
            .list_all("/v1/subscriptions", Params::new().set("status", "all"))
            .await?;
        report.subscriptions_checked = subscriptions.len();
        let mut customers: HashMap<CustomerId, Option<CustomerRecord>> = HashMap::new();
        let mut heal = Vec::new();
        for object in subscriptions {
            let subscription = match parse_subscription(&object) {
                Ok(s) => s,
                Err(e) => {
                    let id = object.get("id").and_then(Value::as_str).unwrap_or("?");
                    report.unreadable.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let sub_id = subscription.id.to_string();
            let customer = self.link(&subscription).await?;
            let Some(customer) = customer else {
                let created = heal_created(None, &subscription, latest_missed.get(&sub_id));
                let event = self.heal_event(&sub_id, created, observed, object, now);
                report.unlinked.push(UnlinkedSubscription {
                    subscription: sub_id,
                    stripe_customer: subscription.customer.to_string(),
                    status: subscription.status.as_str().to_owned(),
                    event: event.id.clone(),
                });
                heal.push(event);
                continue;
            };
            if !customers.contains_key(&customer) {
                let record = self.store.get_customer(&customer).await?;
                customers.insert(customer.clone(), record);
            }
            let known = customers
                .get(&customer)
                .and_then(Option::as_ref)
                .and_then(|r| r.state.subscriptions.get(&subscription.id));
            let fields = compare(known, &subscription, &self.catalog);
            let Some(first) = fields.first().cloned() else {
                continue;
            };
            let created = heal_created(known, &subscription, latest_missed.get(&sub_id));
            let event = self.heal_event(&sub_id, created, observed, object, now);
            report.drift.push(Drift {
                kind: first.kind,
                customer,
                subscription: sub_id,
                billd: first.billd,
                stripe: first.stripe,
                fields,
                heal_event: event.id.clone(),
            });
            heal.push(event);
        }
        report
            .drift
            .sort_by(|a, b| a.subscription.cmp(&b.subscription));
        report.page_retries = pager.retries;
        Ok(Plan {
            report,
            heal,
            missing,
        })
    }

    /// The customer the lifecycle handler would link this subscription to:
    /// the one it is linked to, its Stripe customer's, or its metadata's.
    async fn link(&self, subscription: &Subscription) -> Result<Option<CustomerId>, StoreError> {
        if let Some(c) = self
            .store
            .find_customer_by_object(subscription.id.as_str())
            .await?
        {
            return Ok(Some(c));
        }
        if let Some(c) = self
            .store
            .find_customer_by_stripe(&subscription.customer)
            .await?
        {
            return Ok(Some(c));
        }
        Ok(subscription
            .metadata
            .get(METADATA_CUSTOMER_ID)
            .and_then(|raw| CustomerId::parse(raw).ok()))
    }

    fn heal_event(
        &self,
        subscription: &str,
        created: i64,
        observed_ns: u64,
        object: Value,
        now: i64,
    ) -> NewEvent {
        let id = format!("{RECONCILE_EVENT_PREFIX}{subscription}_{created}");
        synthetic_subscription_event(id, subscription, created, observed_ns, object, now)
    }

    /// Waits until every event of `ids` is finished (applied, parked,
    /// skipped or dead), running `worker` rounds meanwhile when given;
    /// returns those still waiting at the deadline.
    async fn settle(
        &self,
        ids: &[String],
        worker: Option<&InboxWorker>,
    ) -> Result<Vec<String>, StoreError> {
        let deadline = Instant::now() + self.config.settle_timeout;
        let mut waiting: Vec<String> = ids.to_vec();
        loop {
            if let Some(worker) = worker {
                worker.run_once().await?;
            }
            let mut still = Vec::new();
            for id in waiting {
                let done = self.store.get_event(&id).await?.is_none_or(|e| {
                    matches!(
                        e.status,
                        EventStatus::Processed
                            | EventStatus::Skipped
                            | EventStatus::Unlinked
                            | EventStatus::Dead
                    )
                });
                if !done {
                    still.push(id);
                }
            }
            waiting = still;
            if waiting.is_empty() || Instant::now() >= deadline {
                return Ok(waiting);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn inserted(outcomes: &[InsertOutcome]) -> usize {
    outcomes
        .iter()
        .filter(|o| **o == InsertOutcome::Inserted)
        .count()
}

/// The second a heal is stamped at: late enough to beat what billd holds
/// (an authoritative snapshot of the same second is beaten by the next
/// second) and every undelivered snapshot of the subscription, so that
/// Stripe's current object wins; never later, so that any webhook Stripe
/// creates afterwards still wins over it.
pub fn heal_created(
    known: Option<&SubscriptionState>,
    stripe: &Subscription,
    latest_missed: Option<&i64>,
) -> i64 {
    let mut created = stripe
        .created
        .max(latest_missed.copied().unwrap_or(i64::MIN));
    if let Some(known) = known {
        created = created.max(known.stamp.created + i64::from(known.stamp.authoritative));
    }
    created
}

/// Every difference between billd's snapshot (none: billd lacks the
/// subscription) and Stripe's object, most significant first.
pub fn compare(
    known: Option<&SubscriptionState>,
    stripe: &Subscription,
    catalog: &Catalog,
) -> Vec<FieldDrift> {
    let Some(known) = known else {
        return vec![FieldDrift {
            kind: DriftKind::Missing,
            billd: "-".to_owned(),
            stripe: describe(stripe, catalog),
        }];
    };
    let ours = &known.snapshot;
    let mut out = Vec::new();
    if ours.status != stripe.status {
        out.push(FieldDrift {
            kind: DriftKind::Status,
            billd: ours.status.as_str().to_owned(),
            stripe: stripe.status.as_str().to_owned(),
        });
    }
    let price = |s: &Subscription| s.price.as_ref().map(|p| p.id.to_string());
    if price(ours) != price(stripe) {
        out.push(FieldDrift {
            kind: DriftKind::Plan,
            billd: plan_label(ours, catalog),
            stripe: plan_label(stripe, catalog),
        });
    }
    if ours.cancel_at_period_end != stripe.cancel_at_period_end {
        out.push(FieldDrift {
            kind: DriftKind::CancelFlag,
            billd: ours.cancel_at_period_end.to_string(),
            stripe: stripe.cancel_at_period_end.to_string(),
        });
    }
    let period = |s: &Subscription| (s.current_period_start, s.current_period_end);
    if period(ours) != period(stripe) {
        out.push(FieldDrift {
            kind: DriftKind::Period,
            billd: period_label(ours),
            stripe: period_label(stripe),
        });
    }
    out
}

fn describe(s: &Subscription, catalog: &Catalog) -> String {
    format!("{} {}", s.status.as_str(), plan_label(s, catalog))
}

/// `plan (price)`, or the price alone when the catalog does not know it.
fn plan_label(s: &Subscription, catalog: &Catalog) -> String {
    let price = s
        .price
        .as_ref()
        .map_or_else(|| "no price".to_owned(), |p| p.id.to_string());
    match resolve_plan(catalog, s) {
        Some(plan) => format!("{} ({price})", plan.name),
        None => price,
    }
}

fn period_label(s: &Subscription) -> String {
    let show = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    format!(
        "{}..{}",
        show(s.current_period_start),
        show(s.current_period_end)
    )
}

/// Lists Stripe collections page by page, no faster than the configured
/// rate, retrying a page Stripe keeps refusing as unavailable.
struct Pager<'a> {
    stripe: &'a StripeClient,
    config: &'a ReconcileConfig,
    last_request: Option<Instant>,
    retries: u32,
}

impl<'a> Pager<'a> {
    fn new(stripe: &'a StripeClient, config: &'a ReconcileConfig) -> Self {
        Pager {
            stripe,
            config,
            last_request: None,
            retries: 0,
        }
    }

    async fn list_all(&mut self, path: &str, params: Params) -> Result<Vec<Value>, StripeError> {
        let mut out = Vec::new();
        let mut starting_after: Option<String> = None;
        loop {
            let page_params = params
                .clone()
                .set("limit", self.config.page_limit.clamp(1, 100))
                .set_opt("starting_after", starting_after.as_deref());
            let page = self.get(path, &page_params).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| StripeError::Decode(format!("{path}: list without data")))?;
            let last_id = data
                .last()
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            out.extend(data.iter().cloned());
            let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            match last_id {
                Some(id) if has_more => starting_after = Some(id),
                _ => return Ok(out),
            }
        }
    }

    async fn get(&mut self, path: &str, params: &Params) -> Result<Value, StripeError> {
        let mut attempt = 0u32;
        loop {
            self.pace().await;
            match self.stripe.get(path, params).await {
                Err(StripeError::Unavailable(why)) if attempt < self.config.page_retries => {
                    let delay = self
                        .config
                        .page_retry_backoff
                        .saturating_mul(1 << attempt.min(6));
                    tracing::warn!(path, attempt, delay_ms = delay.as_millis() as u64, %why, "stripe list unavailable; backing off");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    self.retries += 1;
                }
                other => return other,
            }
        }
    }

    async fn pace(&mut self) {
        let interval = Duration::from_secs(1) / self.config.max_requests_per_sec.max(1);
        if let Some(last) = self.last_request {
            let next = last + interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        self.last_request = Some(Instant::now());
    }
}

/// The scheduler's `reconcile` job (daily by default; interval through
/// `BILLD_SCHEDULER_INTERVALS=reconcile=…`): one real run, its heal events
/// applied by the serving process's own inbox worker.
pub struct ReconcileJob {
    reconciler: Option<Reconciler>,
}

impl std::fmt::Debug for ReconcileJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReconcileJob")
            .field("reconciler", &self.reconciler)
            .finish()
    }
}

impl ReconcileJob {
    /// The job over `ctx`; without a Stripe client each run only says so.
    pub fn new(ctx: &crate::jobs::JobContext) -> Self {
        let reconciler = ctx.stripe.clone().map(|stripe| {
            Reconciler::new(
                ctx.store.clone(),
                stripe,
                ctx.catalog.clone(),
                ctx.clock.clone(),
                Some(ctx.metrics.clone()),
                ReconcileConfig::default(),
            )
        });
        ReconcileJob { reconciler }
    }
}

#[async_trait::async_trait]
impl crate::jobs::scheduler::Job for ReconcileJob {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    async fn run(&self, _now: i64) -> anyhow::Result<crate::jobs::scheduler::JobReport> {
        let report = crate::jobs::scheduler::JobReport::default();
        let Some(reconciler) = &self.reconciler else {
            return Ok(report.with("no_stripe_client", 1));
        };
        let run = reconciler.run(false, None).await?;
        Ok(report
            .with("checked", run.subscriptions_checked as u64)
            .with("drift", run.drift.len() as u64)
            .with("unlinked", run.unlinked.len() as u64)
            .with("events_ingested", run.events_ingested as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billd_core::event::SubscriptionStatus;
    use billd_core::{EventId, Stamp, StripeCustomerId, StripeSubscriptionId};

    fn subscription(status: SubscriptionStatus, cancel: bool, end: i64) -> Subscription {
        Subscription {
            id: StripeSubscriptionId::parse("sub_1").unwrap(),
            customer: StripeCustomerId::parse("cus_1").unwrap(),
            status,
            created: 100,
            price: None,
            current_period_start: Some(100),
            current_period_end: Some(end),
            cancel_at_period_end: cancel,
            cancel_at: None,
            trial_end: None,
            discounts: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    fn known(snapshot: Subscription, created: i64, authoritative: bool) -> SubscriptionState {
        SubscriptionState {
            plan: None,
            stamp: Stamp {
                created,
                authoritative,
                observed_ns: 0,
                rank: snapshot.status.lifecycle_rank(),
                event_id: EventId::parse("evt_1").unwrap(),
            },
            snapshot,
            deleted: false,
            past_due_since: None,
            past_due_seen: Default::default(),
            last_not_past_due: None,
            period_plans: Default::default(),
        }
    }

    #[test]
    fn every_difference_is_listed_most_significant_first() {
        let catalog = Catalog::seed();
        let ours = known(
            subscription(SubscriptionStatus::Active, false, 200),
            150,
            false,
        );
        let theirs = subscription(SubscriptionStatus::PastDue, true, 300);

        let fields = compare(Some(&ours), &theirs, &catalog);

        let kinds: Vec<DriftKind> = fields.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![DriftKind::Status, DriftKind::CancelFlag, DriftKind::Period]
        );
        assert_eq!(fields[0].billd, "active");
        assert_eq!(fields[0].stripe, "past_due");
        assert_eq!(fields[2].stripe, "100..300");
    }

    #[test]
    fn an_equal_snapshot_is_no_drift_and_an_unknown_one_is_missing() {
        let catalog = Catalog::seed();
        let same = subscription(SubscriptionStatus::Active, false, 200);

        assert!(compare(Some(&known(same.clone(), 150, false)), &same, &catalog).is_empty());
        let missing = compare(None, &same, &catalog);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].kind, DriftKind::Missing);
    }

    #[test]
    fn a_heal_is_stamped_no_earlier_than_billd_and_every_missed_snapshot() {
        let theirs = subscription(SubscriptionStatus::Active, false, 200);
        let ours = known(theirs.clone(), 150, false);

        assert_eq!(heal_created(None, &theirs, None), 100);
        assert_eq!(heal_created(Some(&ours), &theirs, None), 150);
        assert_eq!(heal_created(Some(&ours), &theirs, Some(&170)), 170);
        // billd's snapshot of that second is itself authoritative: only the
        // next second beats it.
        let fetched = known(theirs.clone(), 150, true);
        assert_eq!(heal_created(Some(&fetched), &theirs, None), 151);
        assert_eq!(heal_created(Some(&fetched), &theirs, Some(&170)), 170);
    }

    #[test]
    fn drift_kinds_have_stable_labels() {
        let labels: Vec<&str> = [
            DriftKind::Missing,
            DriftKind::Status,
            DriftKind::Plan,
            DriftKind::CancelFlag,
            DriftKind::Period,
        ]
        .map(DriftKind::as_str)
        .to_vec();
        assert_eq!(
            labels,
            vec!["missing", "status", "plan", "cancel_flag", "period"]
        );
    }
}
