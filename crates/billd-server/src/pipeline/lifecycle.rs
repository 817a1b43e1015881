//! The lifecycle handler: every Stripe event billd acts on goes parse →
//! link → load → `billd_core::apply` → commit, where the commit writes the
//! state, audit rows, outbox rows, object links and the inbox row's outcome
//! in one transaction (`BillingStore::commit_event`).
//!
//! Linking finds the billd customer an event belongs to, in this order: the
//! Stripe customer already linked; a Stripe object already linked
//! (subscription, charge, payment intent, a payment's invoice, the event's
//! own object);
//! `metadata[billd_customer_id]` or a Checkout `client_reference_id` (the
//! link is written with the event's commit); for a dispute, the charge
//! fetched from Stripe.
//! An event none of these resolve is parked as `unlinked` and requeued
//! when a link to its Stripe customer or object appears.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use billd_core::{
    apply, erase_personal_data, Catalog, CustomerId, Event, EventId, EventKind, StripeCustomerId,
};
use billd_store::{
    BillingStore, CustomerCommit, EventFinish, EventResult, Store, StoreError, StoredEvent,
    LEASE_CONFLICT, VERSION_CONFLICT,
};
use billd_stripe::client::{Params, StripeClient};
use billd_stripe::events::{parse_event, refetched_subscription_event, ParsedEvent};
use futures::future::BoxFuture;
use futures::StreamExt as _;
use serde_json::Value;

use crate::pipeline::clock::Clock;
use crate::pipeline::outbox::{outbox_items, AlertChannels};
use crate::pipeline::worker::{
    DeadReason, EventHandler, HandlerError, HandlerOutcome, HandlerRegistry,
};
use crate::telemetry::observe;
use crate::telemetry::Metrics;

pub use billd_stripe::events::HANDLED_EVENT_TYPES;

/// Customers a round applies between two yields to the runtime.
const YIELD_EVERY: usize = 8;

/// Ids of the synthetic events the outbox feeds back after re-fetching a
/// subscription start with this; they carry Stripe's fetched object and
/// are applied as authoritative at the tied second.
pub const REFETCH_EVENT_PREFIX: &str = "evt_billd_refetch_";

/// Ids of the synthetic events reconciliation inserts to heal a drifted
/// subscription start with this (`crate::jobs`, reconciliation); applied like a
/// re-fetch: Stripe's current object, authoritative.
pub const RECONCILE_EVENT_PREFIX: &str = "evt_billd_reconcile_";
/// Ids of the synthetic events the plan-change and cancellation endpoints
/// feed back (the subscription object Stripe answered) start with this;
/// like re-fetches they are authoritative (see `http::app::subscription` for the
/// second they are stamped at).
pub const SYNC_EVENT_PREFIX: &str = "evt_billd_sync_";
/// Ids of the synthetic events the checkout sync feeds back for a credit
/// pack's session start with this: a `checkout.session.completed` carrying
/// the session as Stripe returned it, applied like its webhook (the pack is
/// credited once by its payment intent, whichever comes first).
pub const CHECKOUT_SYNC_EVENT_PREFIX: &str = "evt_billd_checkout_";
/// The envelope field of those synthetic events that says when billd
/// observed the object (`billd_core::Event::observed_ns`).
pub const OBSERVED_NS_FIELD: &str = "billd_observed_ns";

/// Customers of a round linked and loaded at once, by default.
const DEFAULT_CONCURRENCY: usize = 16;

/// How often a commit is retried when another writer moved the customer's
/// version in between; each retry reloads the state and applies again.
const VERSION_RETRIES: usize = 8;

/// What the lifecycle needs from the store: the inbox and the billing tables.
pub trait BillingBackend: Store + BillingStore {}

impl<T: Store + BillingStore + ?Sized> BillingBackend for T {}

/// Applies handled Stripe events to customers' billing state.
pub struct LifecycleHandler<S: BillingBackend + ?Sized> {
    store: Arc<S>,
    catalog: Arc<Catalog>,
    stripe: Option<StripeClient>,
    clock: Arc<dyn Clock>,
    /// Counts payments, disputes and refunds of committed decisions.
    metrics: Option<Arc<Metrics>>,
    /// Admin alerts get a row per channel.
    alert_channels: AlertChannels,
    /// Customers of a round linked and loaded at once.
    concurrency: usize,
}

impl<S: BillingBackend + ?Sized> std::fmt::Debug for LifecycleHandler<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleHandler")
            .field("stripe", &self.stripe)
            .finish_non_exhaustive()
    }
}

/// Where an event belongs.
#[derive(Debug)]
struct Link {
    customer: CustomerId,
    /// Ids whose parked events should be retried because this event just
    /// created a link for them.
    new_links: Vec<String>,
    /// The event's Stripe customer is (now) linked to `customer`, so the
    /// round's later events of that Stripe customer link there without
    /// asking the database again.
    stripe_owned: bool,
}

impl<S: BillingBackend + ?Sized> LifecycleHandler<S> {
    /// A handler over `store`. `stripe` is used to find the customer of a
    /// dispute from its charge; without it such disputes stay unlinked.
    pub fn new(
        store: Arc<S>,
        catalog: Arc<Catalog>,
        stripe: Option<StripeClient>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        LifecycleHandler {
            store,
            catalog,
            stripe,
            clock,
            metrics: None,
            alert_channels: AlertChannels::default(),
            concurrency: DEFAULT_CONCURRENCY,
        }
    }

    /// Links and loads up to `concurrency` customers of a round at once
    /// (`BILLD_WORKER_CONCURRENCY`).
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Counts what committed decisions record (`billd_payments_total`, …)
    /// into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Writes each admin alert once per enabled channel.
    pub fn with_alert_channels(mut self, channels: AlertChannels) -> Self {
        self.alert_channels = channels;
        self
    }

    /// A registry routing every type of [`HANDLED_EVENT_TYPES`] to this handler.
    pub fn registry(self) -> HandlerRegistry {
        let handler: Arc<dyn EventHandler> = Arc::new(self);
        let mut registry = HandlerRegistry::new();
        for event_type in HANDLED_EVENT_TYPES {
            registry.register(event_type, handler.clone());
        }
        registry
    }

    /// Finds the customer `event` belongs to. Links it finds missing (its
    /// Stripe customer, its own object, for a customer found by an object
    /// or named in its metadata) are not written here but returned in
    /// [`Link::new_links`], and written with the event's commit (the first
    /// link of an object wins there): a round of new customers costs no
    /// write transaction per customer before its one commit, and an event
    /// whose commit fails leaves no link behind.
    async fn link(&self, event: &Event) -> anyhow::Result<Option<Link>> {
        self.link_read(event, None, &ObjectOwners::new()).await
    }

    /// [`Self::link`], given the owner of the event's Stripe customer when
    /// the round read it already (`Some(None)`: it has none), and the
    /// owners of the objects the round read already, so those reads are
    /// not made again.
    async fn link_read(
        &self,
        event: &Event,
        owner: Option<Option<CustomerId>>,
        objects: &ObjectOwners,
    ) -> anyhow::Result<Option<Link>> {
        let hints = event.link_hints();
        if let Some(stripe_customer) = &hints.stripe_customer {
            let owner = match owner {
                Some(owner) => owner,
                None => self.store.find_customer_by_stripe(stripe_customer).await?,
            };
            if let Some(customer) = owner {
                return Ok(Some(Link {
                    customer,
                    new_links: Vec::new(),
                    stripe_owned: true,
                }));
            }
        }
        // From here on the Stripe customer (if any) has no owner yet: the
        // event's customer adopts it.
        let adopted: Vec<String> = hints
            .stripe_customer
            .iter()
            .map(ToString::to_string)
            .collect();
        for object in linking_objects(event) {
            let owner = match objects.get(&object) {
                Some(owner) => owner.clone(),
                None => self.store.find_customer_by_object(&object).await?,
            };
            if let Some(customer) = owner {
                return Ok(Some(Link {
                    stripe_owned: !adopted.is_empty(),
                    customer,
                    new_links: adopted,
                }));
            }
        }
        if let Some(customer) = hints.billd_customer_id.clone() {
            let stripe_owned = !adopted.is_empty();
            let mut new_links = adopted;
            new_links.extend(event.object_id());
            return Ok(Some(Link {
                customer,
                new_links,
                stripe_owned,
            }));
        }
        if let EventKind::Dispute { dispute, .. } = &event.kind {
            if let Some(customer) = self.dispute_customer(dispute.charge.as_ref()).await? {
                return Ok(Some(Link {
                    customer,
                    new_links: Vec::new(),
                    stripe_owned: false,
                }));
            }
        }
        Ok(None)
    }

    /// Disputes may arrive without a customer: ask Stripe whose charge it was.
    async fn dispute_customer(
        &self,
        charge: Option<&billd_core::ChargeId>,
    ) -> anyhow::Result<Option<CustomerId>> {
        let (Some(stripe), Some(charge)) = (&self.stripe, charge) else {
            return Ok(None);
        };
        let object = stripe
            .get(&format!("/v1/charges/{charge}"), &Params::new())
            .await
            .with_context(|| format!("fetching charge {charge} for a dispute"))?;
        let Some(stripe_customer) = object
            .get("customer")
            .and_then(Value::as_str)
            .and_then(|raw| StripeCustomerId::parse(raw).ok())
        else {
            return Ok(None);
        };
        Ok(self.store.find_customer_by_stripe(&stripe_customer).await?)
    }

    async fn apply_and_commit(
        &self,
        stored: &StoredEvent,
        event: &Event,
        link: &Link,
    ) -> Result<(), HandlerError> {
        let customer = &link.customer;
        let mut links = object_links(event);
        links.extend(link.new_links.iter().cloned());
        links.sort();
        links.dedup();
        for _ in 0..VERSION_RETRIES {
            let now = self.clock.now();
            let record = self.store.get_customer(customer).await?;
            let deleted = record.as_ref().is_some_and(|r| r.deleted_at.is_some());
            let (state, version) = record.map(|r| (r.state, r.version)).unwrap_or_default();
            let mut decision = apply(&state, event, &self.catalog, now);
            if deleted {
                // A deleted account stays erased: a late or replayed event
                // still records what happened at Stripe (the cancel, the
                // customer's deletion) but brings no personal data back and
                // sends nothing (no email to a deleted user, no Stripe call
                // beyond the deletion's own). The store redacts the audit
                // values and the event's payload in the same commit.
                decision.state = erase_personal_data(&decision.state);
                decision.effects.clear();
            }
            // An effect that cannot be written as an outbox row is a bug in
            // what `apply` decided, not something a retry changes.
            let outbox = outbox_items(&decision.effects, self.alert_channels)
                .map_err(|e| HandlerError::permanent(DeadReason::InvariantViolated, e))?;
            let observed = observe(&state, &decision.state);
            let commit = CustomerCommit {
                customer_id: customer.clone(),
                expected_version: version,
                state: decision.state,
                audit: decision.audit,
                outbox,
                links: links.clone(),
            };
            match self
                .store
                .commit_event(
                    &stored.id,
                    stored.claim,
                    Some(&commit),
                    &EventResult::Processed,
                    now,
                )
                .await
            {
                Ok(receipt) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.business.record(&observed, now);
                    }
                    tracing::debug!(
                        %customer,
                        outcome = ?decision.outcome,
                        outbox = receipt.outbox_inserted,
                        "event applied"
                    );
                    return Ok(());
                }
                Err(StoreError::Conflict { constraint }) if constraint == VERSION_CONFLICT => {
                    continue
                }
                Err(StoreError::Conflict { constraint }) if constraint == LEASE_CONFLICT => {
                    // Another worker owns the event now; it applies it.
                    tracing::warn!("lost the event's lease before committing; dropped");
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HandlerError::transient(anyhow::anyhow!(
            "customer {customer} kept changing during {VERSION_RETRIES} attempts"
        )))
    }
}

/// Sets the outcome of each event that failed alone.
fn record_failed(
    failed: Vec<(usize, HandlerError)>,
    outcomes: &mut [Result<HandlerOutcome, HandlerError>],
) {
    for (index, error) in failed {
        outcomes[index] = Err(error);
    }
}

/// The Stripe objects an event ties to its customer, so that later events
/// naming only them (a dispute's payment intent, an invoice's subscription)
/// link.
fn object_links(event: &Event) -> Vec<String> {
    let hints = event.link_hints();
    let mut links: Vec<String> = [
        event.object_id(),
        hints.subscription.map(|id| id.to_string()),
        hints.charge.map(|id| id.to_string()),
        hints.payment_intent.map(|id| id.to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    links.sort();
    links.dedup();
    links
}

/// The Stripe objects whose links may name an event's customer, in the
/// order they are asked.
fn linking_objects(event: &Event) -> Vec<String> {
    let hints = event.link_hints();
    [
        hints.subscription.as_ref().map(ToString::to_string),
        hints.charge.as_ref().map(ToString::to_string),
        hints.payment_intent.as_ref().map(ToString::to_string),
        hints.invoice.as_ref().map(ToString::to_string),
        event.object_id(),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The round of a re-fetch event: the `_r{round}` suffix
/// `crate::pipeline::outbox::refetch_event` gives rounds after the first; 0 otherwise
/// (the first round, and the other synthetic events).
fn refetch_round(id: &str) -> u32 {
    id.strip_prefix(REFETCH_EVENT_PREFIX)
        .and_then(|rest| rest.rsplit_once("_r"))
        .and_then(|(_, round)| round.parse().ok())
        .unwrap_or(0)
}

/// Parses an inbox row into a domain event: a Stripe webhook, or a
/// re-fetched subscription billd fed back itself (authoritative).
pub fn parse_stored(stored: &StoredEvent) -> anyhow::Result<Option<Event>> {
    if stored.id.starts_with(REFETCH_EVENT_PREFIX)
        || stored.id.starts_with(RECONCILE_EVENT_PREFIX)
        || stored.id.starts_with(SYNC_EVENT_PREFIX)
    {
        let envelope: Value =
            serde_json::from_str(&stored.payload).context("re-fetch event payload")?;
        let id = EventId::parse(&stored.id).context("re-fetch event id")?;
        let object = envelope
            .pointer("/data/object")
            .context("re-fetch event without data.object")?;
        let mut event = refetched_subscription_event(id, stored.created, object)
            .context("re-fetched subscription")?;
        event.refetch_round = refetch_round(&stored.id);
        // Absent from events stored before billd recorded it: 0, the oldest.
        event.observed_ns = envelope[OBSERVED_NS_FIELD].as_u64().unwrap_or(0);
        return Ok(Some(event));
    }
    match parse_event(&stored.payload) {
        Ok(ParsedEvent::Handled { event, .. }) => Ok(Some(*event)),
        Ok(ParsedEvent::Unhandled { .. }) => Ok(None),
        // Kept as its type: the worker's classification reads it.
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl<S: BillingBackend + ?Sized> EventHandler for LifecycleHandler<S> {
    async fn handle(&self, stored: &StoredEvent) -> Result<HandlerOutcome, HandlerError> {
        // A payload that does not parse never will: `HandlerError` makes it
        // permanent, so the event is dead at once with its reason.
        let Some(event) = parse_stored(stored)? else {
            return Ok(HandlerOutcome::Skipped);
        };
        let Some(link) = self.link(&event).await? else {
            tracing::info!(event_id = %stored.id, "event cannot be linked to a customer yet");
            return Ok(HandlerOutcome::Unlinked);
        };
        self.apply_linked(stored, &event, link).await
    }

    /// Handles a round's events: several customers' batches, each in claim
    /// order. Parses and links them (the Stripe customers' batches
    /// concurrently, up to `concurrency` at once, each batch's events one
    /// after another; then the events naming no Stripe customer, which may
    /// link through an object an earlier event of the round links), applies
    /// each customer's linked events in order to its state in memory, and
    /// commits every customer's state and every event's outcome in ONE
    /// transaction. A failing event fails alone: one that does not parse or
    /// link is recorded by the worker; a commit that fails falls back to one
    /// transaction per customer, and a customer's that fails to one per
    /// event, so a poison event only fails itself. An event that found no
    /// customer is linked again once the round is committed (an earlier
    /// event may have written the link it needs).
    async fn handle_batch(
        &self,
        events: &[&StoredEvent],
    ) -> Vec<Result<HandlerOutcome, HandlerError>> {
        if events.len() == 1 {
            return vec![self.handle(events[0]).await];
        }
        let mut outcomes: Vec<Result<HandlerOutcome, HandlerError>> =
            events.iter().map(|_| Ok(HandlerOutcome::Skipped)).collect();
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut loose: Vec<usize> = Vec::new();
        let mut by_customer: HashMap<&str, usize> = HashMap::new();
        for (index, stored) in events.iter().enumerate() {
            match stored.stripe_customer.as_deref() {
                Some(customer) => match by_customer.get(customer) {
                    Some(&group) => groups[group].push(index),
                    None => {
                        by_customer.insert(customer, groups.len());
                        groups.push(vec![index]);
                    }
                },
                None => loose.push(index),
            }
        }
        let owners = self.stripe_owners(events, &groups).await;
        let mut parsed: Vec<ParsedGroup> = Vec::with_capacity(groups.len());
        for (n, group) in groups.iter().enumerate() {
            if n % YIELD_EVERY == YIELD_EVERY - 1 {
                // Parsing is CPU work with no await in it (see `apply_batch`).
                tokio::task::yield_now().await;
            }
            parsed.push(
                group
                    .iter()
                    .map(|&index| (index, parse_stored(events[index])))
                    .collect(),
            );
        }
        let objects = self.object_owners(&parsed, events, &owners).await;
        // Boxed before they are streamed: a lazy `map` would keep its
        // closure in this future, which must be Send for every lifetime.
        let mut linking: Vec<BoxFuture<'_, Vec<(usize, Linking)>>> = Vec::new();
        for group in parsed {
            linking.push(Box::pin(self.link_group(group, &owners, &objects)));
        }
        let linked_groups: Vec<Vec<(usize, Linking)>> = futures::stream::iter(linking)
            .buffered(self.concurrency.max(1))
            .collect()
            .await;
        let mut round = Round::default();
        for (index, step) in linked_groups.into_iter().flatten() {
            round.take(index, step, &mut outcomes);
        }
        for index in loose {
            let step = self.link_loose(events[index], &round.objects).await;
            round.take(index, step, &mut outcomes);
        }
        let Round {
            linked, unlinked, ..
        } = round;
        if !linked.is_empty() {
            let all: Vec<&Linked> = linked.iter().collect();
            self.commit_round(events, &all, &mut outcomes).await;
            self.requeue_committed(&all, &outcomes).await;
        }
        // Linked again now that the round's links are committed.
        let mut relinked: Vec<Linked> = Vec::new();
        for (index, event) in unlinked {
            match self.link(&event).await {
                Err(e) => outcomes[index] = Err(HandlerError::from(e)),
                Ok(None) => {
                    tracing::info!(event_id = %events[index].id, "event cannot be linked to a customer yet");
                    outcomes[index] = Ok(HandlerOutcome::Unlinked);
                }
                Ok(Some(link)) => {
                    outcomes[index] = Ok(HandlerOutcome::Committed);
                    relinked.push(Linked { index, event, link });
                }
            }
        }
        if !relinked.is_empty() {
            let all: Vec<&Linked> = relinked.iter().collect();
            self.commit_round(events, &all, &mut outcomes).await;
            self.requeue_committed(&all, &outcomes).await;
        }
        outcomes
    }
}

/// How linking one event of a round ended.
enum Linking {
    /// Parsing or linking failed.
    Failed(HandlerError),
    /// A type billd does not act on.
    Skipped,
    /// No customer found (yet).
    Unlinked(Event),
    /// Its customer.
    Linked(Event, Link),
}

/// What linking a round found.
#[derive(Default)]
struct Round {
    linked: Vec<Linked>,
    unlinked: Vec<(usize, Event)>,
    /// Objects the round's linked events link (committed with them), and
    /// their customer: an event naming no Stripe customer links through
    /// them before they are committed.
    objects: HashMap<String, CustomerId>,
}

impl Round {
    /// Records how the event at `index` linked.
    fn take(
        &mut self,
        index: usize,
        step: Linking,
        outcomes: &mut [Result<HandlerOutcome, HandlerError>],
    ) {
        outcomes[index] = match step {
            Linking::Failed(error) => Err(error),
            Linking::Skipped => Ok(HandlerOutcome::Skipped),
            Linking::Unlinked(event) => {
                self.unlinked.push((index, event));
                Ok(HandlerOutcome::Unlinked)
            }
            Linking::Linked(event, link) => {
                for object in object_links(&event)
                    .into_iter()
                    .chain(link.new_links.clone())
                {
                    self.objects
                        .entry(object)
                        .or_insert_with(|| link.customer.clone());
                }
                self.linked.push(Linked { index, event, link });
                Ok(HandlerOutcome::Committed)
            }
        };
    }
}

/// An event of a batch that found its customer.
struct Linked {
    /// Its position in the batch.
    index: usize,
    event: Event,
    link: Link,
}

/// The owners of a round's Stripe customers, read in one statement: the
/// customer each is linked to, or none; a Stripe customer missing from the
/// map was not read (its events read it themselves).
type StripeOwners = HashMap<String, Option<CustomerId>>;

/// The owners of Stripe objects a round read in one statement: the
/// customer each is linked to, or none; an object missing from the map was
/// not read.
type ObjectOwners = HashMap<String, Option<CustomerId>>;

/// One Stripe customer's events of a round, parsed (none: a type billd does
/// not act on), with their indexes into the round.
type ParsedGroup = Vec<(usize, anyhow::Result<Option<Event>>)>;

/// What a round's read of owners found: every id `asked` with its owner,
/// or none; nothing when the read failed (and so each event reads its own).
fn owners_read(
    asked: impl IntoIterator<Item = String>,
    read: Result<HashMap<String, CustomerId>, StoreError>,
    what: &str,
) -> HashMap<String, Option<CustomerId>> {
    match read {
        Ok(mut found) => asked
            .into_iter()
            .map(|id| {
                let owner = found.remove(&id);
                (id, owner)
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "reading the round's {what} failed; linking each alone");
            HashMap::new()
        }
    }
}

impl<S: BillingBackend + ?Sized> LifecycleHandler<S> {
    /// Reads the owners of the Stripe customers of a round's `groups` in
    /// one statement, rather than one read per customer while linking
    /// (each a round trip on PostgreSQL, a call into a reader's thread on
    /// SQLite). When the read fails the map is empty and each group reads
    /// its own, so the failure is the events' own, as before.
    async fn stripe_owners(&self, events: &[&StoredEvent], groups: &[Vec<usize>]) -> StripeOwners {
        let ids: Vec<StripeCustomerId> = groups
            .iter()
            .filter_map(|group| group.first())
            .filter_map(|&index| events[index].stripe_customer.as_deref())
            .filter_map(|raw| StripeCustomerId::parse(raw).ok())
            .collect();
        if ids.len() < 2 {
            return StripeOwners::new();
        }
        let refs: Vec<&StripeCustomerId> = ids.iter().collect();
        let read = self.store.find_customers_by_stripe(&refs).await;
        owners_read(
            ids.iter().map(ToString::to_string),
            read,
            "Stripe customers",
        )
    }

    /// Reads in one statement the owners of the objects through which the
    /// round's events of Stripe customers without an owner link (a new
    /// customer's checkout names its subscription, invoice, payment…),
    /// rather than one read per object while linking, one after another
    /// for each event. When the read fails the map is empty and each event
    /// reads its own objects, so the failure is the events' own.
    async fn object_owners(
        &self,
        parsed: &[ParsedGroup],
        events: &[&StoredEvent],
        owners: &StripeOwners,
    ) -> ObjectOwners {
        let mut asked: Vec<String> = Vec::new();
        for (index, event) in parsed.iter().flatten() {
            let Ok(Some(event)) = event else { continue };
            let unowned = events[*index]
                .stripe_customer
                .as_ref()
                .is_some_and(|customer| matches!(owners.get(customer), Some(None)));
            if unowned {
                asked.extend(linking_objects(event));
            }
        }
        asked.sort();
        asked.dedup();
        if asked.is_empty() {
            return ObjectOwners::new();
        }
        let refs: Vec<&str> = asked.iter().map(String::as_str).collect();
        let read = self.store.find_customers_by_objects(&refs).await;
        owners_read(asked, read, "object links")
    }

    /// Links one Stripe customer's events of a round (parsed), in order;
    /// once one of them found (or made) the Stripe customer's link, the
    /// rest link through it without a read.
    async fn link_group(
        &self,
        group: ParsedGroup,
        owners: &StripeOwners,
        objects: &ObjectOwners,
    ) -> Vec<(usize, Linking)> {
        let mut known: HashMap<String, CustomerId> = HashMap::new();
        let mut steps = Vec::with_capacity(group.len());
        for (index, parsed) in group {
            let event = match parsed {
                Err(e) => {
                    steps.push((index, Linking::Failed(HandlerError::from(e))));
                    continue;
                }
                Ok(None) => {
                    steps.push((index, Linking::Skipped));
                    continue;
                }
                Ok(Some(event)) => event,
            };
            let stripe_customer = event.link_hints().stripe_customer.map(|id| id.to_string());
            if let Some(customer) = stripe_customer.as_ref().and_then(|id| known.get(id)) {
                let link = Link {
                    customer: customer.clone(),
                    new_links: Vec::new(),
                    stripe_owned: true,
                };
                steps.push((index, Linking::Linked(event, link)));
                continue;
            }
            let owner = stripe_customer
                .as_ref()
                .and_then(|id| owners.get(id).cloned());
            let step = match self.link_read(&event, owner, objects).await {
                Err(e) => Linking::Failed(HandlerError::from(e)),
                Ok(None) => Linking::Unlinked(event),
                Ok(Some(link)) => {
                    if let (true, Some(id)) = (link.stripe_owned, stripe_customer) {
                        known.insert(id, link.customer.clone());
                    }
                    Linking::Linked(event, link)
                }
            };
            steps.push((index, step));
        }
        steps
    }

    /// Parses and links an event naming no Stripe customer: through the
    /// database, else through an object the round links (`objects`).
    async fn link_loose(
        &self,
        stored: &StoredEvent,
        objects: &HashMap<String, CustomerId>,
    ) -> Linking {
        let event = match parse_stored(stored) {
            Err(e) => return Linking::Failed(HandlerError::from(e)),
            Ok(None) => return Linking::Skipped,
            Ok(Some(event)) => event,
        };
        match self.link(&event).await {
            Err(e) => Linking::Failed(HandlerError::from(e)),
            Ok(Some(link)) => Linking::Linked(event, link),
            Ok(None) => {
                let found = linking_objects(&event)
                    .into_iter()
                    .find_map(|object| objects.get(&object).cloned());
                match found {
                    Some(customer) => Linking::Linked(
                        event,
                        Link {
                            customer,
                            new_links: Vec::new(),
                            stripe_owned: false,
                        },
                    ),
                    None => Linking::Unlinked(event),
                }
            }
        }
    }

    /// Applies `linked` and commits them in one transaction; when that
    /// fails, one transaction per customer, and for a customer whose
    /// commit fails, one per event. Sets each event's outcome.
    async fn commit_round(
        &self,
        events: &[&StoredEvent],
        linked: &[&Linked],
        outcomes: &mut [Result<HandlerOutcome, HandlerError>],
    ) {
        let mut customers: Vec<&CustomerId> = Vec::new();
        for item in linked {
            if !customers.contains(&&item.link.customer) {
                customers.push(&item.link.customer);
            }
        }
        if customers.len() > 1 {
            match self.apply_batch(events, linked).await {
                Ok(failed) => return record_failed(failed, outcomes),
                Err(error) => tracing::warn!(
                    %error,
                    customers = customers.len(),
                    events = linked.len(),
                    "round commit failed; committing each customer alone"
                ),
            }
        }
        for customer in customers {
            let own: Vec<&Linked> = linked
                .iter()
                .copied()
                .filter(|item| &item.link.customer == customer)
                .collect();
            match self.apply_batch(events, &own).await {
                Ok(failed) => record_failed(failed, outcomes),
                Err(StoreError::Conflict { constraint }) if constraint == LEASE_CONFLICT => {
                    // The lease ended and another worker reclaimed the
                    // batch (or part of it); it applies them.
                    tracing::warn!(%customer, "lost the batch's lease before committing; dropped");
                }
                Err(error) => {
                    tracing::warn!(%error, %customer, events = own.len(), "customer's commit failed; applying its events one at a time");
                    for item in own {
                        outcomes[item.index] = self
                            .apply_and_commit(events[item.index], &item.event, &item.link)
                            .await
                            .map(|()| HandlerOutcome::Committed);
                    }
                }
            }
        }
    }

    /// Requeues the parked events that the committed events of `linked`
    /// link.
    async fn requeue_committed(
        &self,
        linked: &[&Linked],
        outcomes: &[Result<HandlerOutcome, HandlerError>],
    ) {
        let mut requeue: Vec<String> = Vec::new();
        for item in linked {
            if matches!(outcomes[item.index], Ok(HandlerOutcome::Committed)) {
                requeue.extend(item.link.new_links.iter().cloned());
                requeue.extend(object_links(&item.event));
            }
        }
        requeue.sort();
        requeue.dedup();
        self.requeue_parked(&requeue).await;
    }

    /// Applies and commits one linked event, then requeues what its links
    /// unpark.
    async fn apply_linked(
        &self,
        stored: &StoredEvent,
        event: &Event,
        link: Link,
    ) -> Result<HandlerOutcome, HandlerError> {
        self.apply_and_commit(stored, event, &link).await?;
        let mut requeue = link.new_links;
        requeue.extend(object_links(event));
        self.requeue_parked(&requeue).await;
        Ok(HandlerOutcome::Committed)
    }

    /// Requeues the parked events of the objects in `ids`, whose links now
    /// exist. The events that made them are committed: a failure here must
    /// not fail them. Parked events also get another chance from `billd
    /// events replay`.
    async fn requeue_parked(&self, ids: &[String]) {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        match self.store.requeue_unlinked(&ids, self.clock.now()).await {
            Ok(0) => {}
            Ok(requeued) => tracing::info!(requeued, "parked events requeued after linking"),
            Err(e) => tracing::warn!(error = %e, "requeueing parked events failed"),
        }
    }

    /// Applies the `linked` events of `events` to their customers, one
    /// customer state each, and commits them in one transaction (reloading and applying again while another writer
    /// moves a customer's version). Returns the events that failed alone
    /// (an effect `apply` decided that cannot be written); `Err` when the
    /// commit failed and nothing was written.
    async fn apply_batch(
        &self,
        events: &[&StoredEvent],
        linked: &[&Linked],
    ) -> Result<Vec<(usize, HandlerError)>, StoreError> {
        let mut customers: Vec<&CustomerId> = Vec::new();
        for item in linked {
            if !customers.contains(&&item.link.customer) {
                customers.push(&item.link.customer);
            }
        }
        for _ in 0..VERSION_RETRIES {
            let now = self.clock.now();
            let mut failed = Vec::new();
            let mut commits = Vec::with_capacity(customers.len());
            let mut finishes = Vec::with_capacity(linked.len());
            let mut observed = Vec::new();
            // One read for the round: on PostgreSQL each read is a round
            // trip, on SQLite a call into a reader's thread.
            let mut records = self.store.get_customers(&customers).await?;
            for (n, &customer) in customers.iter().enumerate() {
                if n % YIELD_EVERY == YIELD_EVERY - 1 {
                    // Applying a round is CPU work with no await in it; the
                    // webhooks' and the app's requests share these runtime
                    // threads, so let them in between customers.
                    tokio::task::yield_now().await;
                }
                let record = records.remove(customer);
                let deleted = record.as_ref().is_some_and(|r| r.deleted_at.is_some());
                let (before, version) = record.map(|r| (r.state, r.version)).unwrap_or_default();
                let mut state = before.clone();
                let (mut audit, mut outbox, mut links, mut applied) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                for item in linked.iter().filter(|item| &item.link.customer == customer) {
                    let mut decision = apply(&state, &item.event, &self.catalog, now);
                    if deleted {
                        // As in `apply_and_commit`: a deleted account stays erased.
                        decision.state = erase_personal_data(&decision.state);
                        decision.effects.clear();
                    }
                    let items = match outbox_items(&decision.effects, self.alert_channels) {
                        Ok(items) => items,
                        Err(e) => {
                            failed.push((
                                item.index,
                                HandlerError::permanent(DeadReason::InvariantViolated, e),
                            ));
                            continue;
                        }
                    };
                    state = decision.state;
                    audit.extend(decision.audit);
                    outbox.extend(items);
                    links.extend(object_links(&item.event));
                    links.extend(item.link.new_links.iter().cloned());
                    let stored = events[item.index];
                    applied.push(stored.id.clone());
                    finishes.push(EventFinish {
                        id: stored.id.clone(),
                        claim: stored.claim,
                        result: EventResult::Processed,
                    });
                }
                if applied.is_empty() {
                    continue;
                }
                observed.push(observe(&before, &state));
                links.sort();
                links.dedup();
                let commit = CustomerCommit {
                    customer_id: customer.clone(),
                    expected_version: version,
                    state,
                    audit,
                    outbox,
                    links,
                };
                commits.push((commit, applied));
            }
            match self.store.commit_events(&commits, &finishes, now).await {
                Ok(_) => {
                    if let Some(metrics) = &self.metrics {
                        for seen in &observed {
                            metrics.business.record(seen, now);
                        }
                    }
                    tracing::debug!(events = finishes.len(), "batch applied");
                    return Ok(failed);
                }
                Err(StoreError::Conflict { constraint }) if constraint == VERSION_CONFLICT => {
                    continue
                }
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict {
            constraint: VERSION_CONFLICT.to_owned(),
        })
    }
}

/// `new` as the inbox holds it once a worker claimed it, for tests that
/// parse synthetic events.
#[cfg(test)]
pub(crate) fn claimed(new: billd_store::NewEvent) -> StoredEvent {
    StoredEvent {
        id: new.id,
        event_type: new.event_type,
        api_version: new.api_version,
        created: new.created,
        object_id: new.object_id,
        stripe_customer: new.stripe_customer,
        payload: new.payload,
        status: billd_store::EventStatus::Processing,
        attempts: 1,
        next_attempt_at: None,
        last_error: None,
        received_at: new.received_at,
        processed_at: None,
        claim: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refetched_subscription_comes_back_as_an_authoritative_event_at_the_tied_second() {
        let object = serde_json::json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_1",
            "status": "active", "created": 100, "cancel_at_period_end": false,
            "items": { "object": "list", "data": [] }, "metadata": {}
        });
        let new = crate::pipeline::outbox::refetch_event("sub_1", 500, 0, 77, object, 900);
        assert_eq!(new.id, "evt_billd_refetch_sub_1_500");
        assert_eq!(new.stripe_customer.as_deref(), Some("cus_1"));

        let event = parse_stored(&claimed(new)).unwrap().unwrap();

        assert!(event.authoritative);
        assert_eq!(event.created, 500);
        assert_eq!(event.observed_ns, 77);
        assert_eq!(event.object_id().as_deref(), Some("sub_1"));
    }

    #[test]
    fn a_refetched_canceled_subscription_is_a_deletion() {
        let object = serde_json::json!({
            "id": "sub_2", "object": "subscription", "customer": "cus_1",
            "status": "canceled", "created": 100, "cancel_at_period_end": false,
            "items": { "object": "list", "data": [] }, "metadata": {}
        });
        let new = crate::pipeline::outbox::refetch_event("sub_2", 500, 0, 77, object, 900);

        let event = parse_stored(&claimed(new)).unwrap().unwrap();

        assert_eq!(event.event_type(), "customer.subscription.deleted");
    }

    #[test]
    fn every_handled_type_parses_to_a_domain_event_kind() {
        // A type in the list that the parser treats as unhandled would be
        // skipped silently; catch that here.
        for event_type in HANDLED_EVENT_TYPES {
            let payload = serde_json::json!({
                "id": "evt_1", "object": "event", "type": event_type, "created": 1,
                "data": { "object": {} }
            });
            let parsed = parse_event(&payload.to_string());
            assert!(
                !matches!(parsed, Ok(ParsedEvent::Unhandled { .. })),
                "{event_type} is not handled by the parser"
            );
        }
    }
}
