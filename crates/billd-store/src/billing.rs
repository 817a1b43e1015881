//! The billing side of the store: customers and their state documents,
//! object links, the audit log, the outbox and usage counters.
//!
//! The inbox worker applies an event with `billd_core::apply` and then calls
//! [`BillingStore::commit_event`], which writes everything the decision
//! produced and finishes the inbox row in ONE transaction: either all of it
//! is durable or none of it is, so a crash never applies an event twice or
//! loses its effects.

use std::collections::HashMap;

use async_trait::async_trait;
use serde::Serialize;

use billd_core::{
    AuditEntry, CustomerId, CustomerState, Effect, StripeCustomerId, Usage, UsageKey,
};

use crate::{EventResult, StoreError, StoreResult};

/// The `constraint` of the [`StoreError::Conflict`] that
/// [`BillingStore::commit_event`] returns when the customer's version moved
/// since it was read: reload the state, apply again, commit again.
pub const VERSION_CONFLICT: &str = "customers.version";

/// The `constraint` of the [`StoreError::Conflict`] that
/// [`BillingStore::commit_event`] returns when the inbox row is no longer
/// `processing` under the caller's claim (its lease ended and another
/// worker took it, or finished it): nothing was
/// written; drop the result.
pub const LEASE_CONFLICT: &str = "stripe_events.status";

/// The `constraint` of the [`StoreError::Conflict`] that
/// [`BillingStore::finish_outbox`] returns when the caller's claim is no
/// longer the row's (its lease ended and another worker claimed the row, or
/// it was already finished): nothing was written; the newer claim decides.
pub const OUTBOX_LEASE_CONFLICT: &str = "outbox.claim_token";

/// The `constraint` of the [`StoreError::Conflict`] that the usage calls
/// return when an idempotency key is reused for a different request.
pub const IDEMPOTENCY_CONFLICT: &str = "usage_requests.idempotency_key";

/// A customer's profile as the app sets it (`PUT /v1/customers/{id}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomerProfile {
    /// The app's own user id.
    pub customer_id: CustomerId,
    /// Where billd sends this customer's emails.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Lower-case ISO currency code for checkouts (`eur`), when the app has one.
    pub preferred_currency: Option<String>,
}

/// A stored customer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CustomerRecord {
    /// The app's own user id.
    pub customer_id: CustomerId,
    /// The Stripe customer currently linked (none before the first
    /// checkout, and after the Stripe customer was deleted).
    pub stripe_customer_id: Option<StripeCustomerId>,
    /// Email address.
    pub email: Option<String>,
    /// Display name.
    pub name: Option<String>,
    /// Preferred checkout currency.
    pub preferred_currency: Option<String>,
    /// The billing state document.
    pub state: CustomerState,
    /// Optimistic concurrency counter: 0 for a customer whose state was
    /// never committed, +1 per commit.
    pub version: i64,
    /// When the account was deleted (the row and its audit trail stay).
    pub deleted_at: Option<i64>,
    /// When the row was created.
    pub created_at: i64,
    /// When the row last changed.
    pub updated_at: i64,
}

/// What [`BillingStore::upsert_customer`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpsertedCustomer {
    /// The customer after the write.
    pub customer: CustomerRecord,
    /// True when the row did not exist before.
    pub created: bool,
}

/// One outbox row to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxItem {
    /// Unique key: a second row with the same key is ignored, so an effect
    /// decided twice is delivered once.
    pub dedupe_key: String,
    /// What to do (`email`, `admin_alert`, `cancel_subscription`,
    /// `refetch_subscription`, …), for listing and routing.
    pub kind: String,
    /// The work item as JSON.
    pub payload: String,
}

impl NewOutboxItem {
    /// The outbox row for a core [`Effect`]: its dedupe key, its serde tag as
    /// `kind`, and the effect itself as the payload (read back with
    /// [`OutboxItem::effect`]).
    pub fn from_effect(effect: &Effect) -> StoreResult<Self> {
        let value = serde_json::to_value(effect)
            .map_err(|e| StoreError::Other(format!("encoding effect: {e}")))?;
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("effect")
            .to_owned();
        Ok(NewOutboxItem {
            dedupe_key: effect.dedupe_key().to_owned(),
            kind,
            payload: value.to_string(),
        })
    }
}

/// Status of an outbox row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting to be delivered (first try, or a retry at `next_attempt_at`).
    Pending,
    /// Claimed by a worker whose lease (`next_attempt_at`) has not ended.
    Processing,
    /// Delivered.
    Sent,
    /// Failed too often; needs an operator.
    Dead,
}

impl OutboxStatus {
    /// Every status.
    pub const ALL: [OutboxStatus; 4] = [
        OutboxStatus::Pending,
        OutboxStatus::Processing,
        OutboxStatus::Sent,
        OutboxStatus::Dead,
    ];

    /// The name stored in `outbox.status`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::Processing => "processing",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(raw: &str) -> Option<Self> {
        OutboxStatus::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

impl std::fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored outbox row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboxItem {
    /// Row id.
    pub id: i64,
    /// Unique dedupe key (also a good Stripe idempotency key).
    pub dedupe_key: String,
    /// The customer it concerns, if any.
    pub customer_id: Option<CustomerId>,
    /// What to do.
    pub kind: String,
    /// The work item as JSON.
    pub payload: String,
    /// Current status.
    pub status: OutboxStatus,
    /// Delivery attempts made so far.
    pub attempts: i32,
    /// When the next attempt may start (pending) or the lease ends (processing).
    pub next_attempt_at: Option<i64>,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When the row was written.
    pub created_at: i64,
    /// When it was sent or declared dead.
    pub done_at: Option<i64>,
    /// Fencing token of the latest claim (0 before the first): each claim
    /// bumps it, and only its holder may renew or finish the row.
    pub claim_token: i64,
}

impl OutboxItem {
    /// The payload as a core [`Effect`] (rows written with
    /// [`NewOutboxItem::from_effect`]).
    pub fn effect(&self) -> Result<Effect, serde_json::Error> {
        serde_json::from_str(&self.payload)
    }
}

/// How a worker finished one claimed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxResult {
    /// Delivered.
    Sent,
    /// Failed; back to `pending`, due at `next_attempt_at`.
    Retry {
        /// Error message kept in `last_error`.
        error: String,
        /// Unix seconds of the next attempt.
        next_attempt_at: i64,
    },
    /// Failed for the last time.
    Dead {
        /// Error message kept in `last_error`.
        error: String,
    },
}

/// Filter for listing outbox rows.
#[derive(Debug, Clone, Default)]
pub struct OutboxFilter {
    /// Only rows with this status.
    pub status: Option<OutboxStatus>,
    /// Only rows of this customer.
    pub customer_id: Option<CustomerId>,
    /// At most this many rows, newest first; 0 means no limit.
    pub limit: u32,
}

/// Outbox depth and lag, for `/metrics` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxStats {
    /// Number of rows per status (every status listed, 0 when absent).
    pub by_status: Vec<(OutboxStatus, i64)>,
    /// `created_at` of the oldest row not yet sent or dead.
    pub oldest_waiting_created_at: Option<i64>,
}

/// A stored audit row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditRecord {
    /// Row id (increasing in write order).
    pub id: i64,
    /// Whose state changed.
    pub customer_id: CustomerId,
    /// When billd applied the change.
    pub at: i64,
    /// What changed.
    pub field: String,
    /// Value before (none: absent).
    pub before: Option<String>,
    /// Value after (none: removed).
    pub after: Option<String>,
    /// Why: an event id, or the API call.
    pub reason: String,
    /// The event type, or the API call's name.
    pub event_type: String,
}

/// Everything one applied decision writes for one customer.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerCommit {
    /// Whose state.
    pub customer_id: CustomerId,
    /// The `version` the state was loaded at (0 for a customer without a
    /// row, or with a row whose state was never committed). A mismatch is
    /// [`VERSION_CONFLICT`] and nothing is written.
    pub expected_version: i64,
    /// The next state (`Decision::state`), stored whatever the outcome.
    pub state: CustomerState,
    /// Audit rows (`Decision::audit`).
    pub audit: Vec<AuditEntry>,
    /// Outbox rows (`Decision::effects` via [`NewOutboxItem::from_effect`]);
    /// a row whose dedupe key exists is skipped.
    pub outbox: Vec<NewOutboxItem>,
    /// Stripe object ids (`sub_`, `in_`, `ch_`, `pi_`, `cs_`, …) to link to
    /// this customer; an object already linked keeps its first customer.
    pub links: Vec<String>,
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReceipt {
    /// The customer's version after the commit (none when no customer
    /// state was written).
    pub version: Option<i64>,
    /// Outbox rows actually inserted (duplicates of a dedupe key are not).
    pub outbox_inserted: u64,
}

/// One idempotent change to a usage counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRequest {
    /// Whose counter.
    pub customer_id: CustomerId,
    /// Which counter (`billd_core::FeatureEntitlement::usage_key`).
    pub key: UsageKey,
    /// How much to add (consume) or subtract (release); at least 1.
    pub amount: u64,
    /// The caller's key: the same key again returns the stored answer and
    /// changes nothing. Keys are per customer.
    pub idempotency_key: String,
    /// Where a consume's part beyond the included quota is reported
    /// (`billd_core::ConsumeTarget::overage`): an applied consume that
    /// passes it writes a `meter_event` outbox row in its transaction.
    /// Ignored by a release.
    pub overage: Option<billd_core::OverageMeter>,
    /// The credit packs a consume may take from past the included quota
    /// (`billd_core::ConsumeTarget::credits`): the consume then splits over
    /// the quota, the packs (first bought first) and overage in its
    /// transaction, the counter counting the included and overage units
    /// only. Ignored by a release.
    pub credits: Option<billd_core::CreditTarget>,
}

/// The `usage_counters` feature column of what was consumed from the credit
/// pack bought by `payment` (period column 0): a counter of the customer
/// like the others, so every reader of a customer's counters sees it and a
/// consume's transaction writes it with the period's counter.
pub(crate) fn credit_counter(payment: &str) -> String {
    format!("{CREDIT_COUNTER_PREFIX}{payment}")
}

/// The prefix of [`credit_counter`]'s names (never a feature name, which
/// has no `:`).
pub(crate) const CREDIT_COUNTER_PREFIX: &str = "credits:";

impl UsageRequest {
    /// The `meter_event` outbox row of this consume, applied with the
    /// counter at `used` afterwards, when it went past the included quota.
    pub(crate) fn meter_row(&self, used: i64, now: i64) -> StoreResult<Option<NewOutboxItem>> {
        self.meter_row_of(used, self.amount, now)
    }

    /// [`UsageRequest::meter_row`] for a consume that added `units` to the
    /// counter (less than its amount when credits gave the rest).
    pub(crate) fn meter_row_of(
        &self,
        used: i64,
        units: u64,
        now: i64,
    ) -> StoreResult<Option<NewOutboxItem>> {
        let Some(meter) = &self.overage else {
            return Ok(None);
        };
        meter
            .event(
                &self.customer_id,
                &self.idempotency_key,
                from_db(used),
                units,
                now,
            )
            .map(|effect| NewOutboxItem::from_effect(&effect))
            .transpose()
    }
}

/// The answer to a consume or release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum UsageOutcome {
    /// The counter changed; `used` is its value right after this request.
    Applied {
        /// The counter after the change.
        used: u64,
        /// The limit the consumption was checked against (0 for a release).
        limit: u64,
        /// True when this is the stored answer of an earlier request with
        /// the same idempotency key.
        replayed: bool,
    },
    /// `used + amount` would exceed the limit; nothing changed and nothing
    /// was stored, so the same key may be retried later.
    LimitExceeded {
        /// The counter now.
        used: u64,
        /// The limit.
        limit: u64,
    },
}

/// The billing tables. Implemented by both stores; the contract tests in
/// `tests/billing.rs` run against both.
#[async_trait]
pub trait BillingStore: Send + Sync + 'static {
    /// Creates the customer or updates its profile fields (not its state,
    /// version or Stripe link). A deleted customer stays deleted and its
    /// erased profile is not written: the record comes back unchanged.
    async fn upsert_customer(
        &self,
        profile: &CustomerProfile,
        now: i64,
    ) -> StoreResult<UpsertedCustomer>;

    /// One customer, or none.
    async fn get_customer(&self, customer_id: &CustomerId) -> StoreResult<Option<CustomerRecord>>;

    /// The customer a Stripe customer belongs to: the one currently linked,
    /// else the one it was linked to before (a deleted Stripe customer's
    /// later events still find their customer).
    async fn find_customer_by_stripe(
        &self,
        stripe_customer_id: &StripeCustomerId,
    ) -> StoreResult<Option<CustomerId>>;

    /// The customer a Stripe object (`sub_`, `in_`, `ch_`, `pi_`, `cs_`, …)
    /// was linked to.
    async fn find_customer_by_object(&self, object_id: &str) -> StoreResult<Option<CustomerId>>;

    /// The records of `customer_ids` that exist, keyed by id: what a round
    /// of the inbox worker loads, in one read where the store can (a read
    /// per customer costs a round trip each on PostgreSQL, a call into a
    /// reader's thread each on SQLite).
    async fn get_customers(
        &self,
        customer_ids: &[&CustomerId],
    ) -> StoreResult<HashMap<CustomerId, CustomerRecord>> {
        let mut found = HashMap::new();
        for &id in customer_ids {
            if let Some(record) = self.get_customer(id).await? {
                found.insert(id.clone(), record);
            }
        }
        Ok(found)
    }

    /// [`BillingStore::find_customer_by_object`] for many objects, in one
    /// read where the store can: the customer of each that has one, keyed
    /// by the object id.
    async fn find_customers_by_objects(
        &self,
        object_ids: &[&str],
    ) -> StoreResult<HashMap<String, CustomerId>> {
        let mut found = HashMap::new();
        for &id in object_ids {
            if let Some(customer) = self.find_customer_by_object(id).await? {
                found.insert(id.to_owned(), customer);
            }
        }
        Ok(found)
    }

    /// [`BillingStore::find_customer_by_stripe`] for many Stripe customers,
    /// in one read where the store can: the customer of each that has one,
    /// keyed by the Stripe customer id.
    async fn find_customers_by_stripe(
        &self,
        stripe_customer_ids: &[&StripeCustomerId],
    ) -> StoreResult<HashMap<String, CustomerId>> {
        let mut found = HashMap::new();
        for &id in stripe_customer_ids {
            if let Some(customer) = self.find_customer_by_stripe(id).await? {
                found.insert(id.to_string(), customer);
            }
        }
        Ok(found)
    }

    /// Links a Stripe customer to a customer, creating the customer row
    /// (empty profile) if missing. Linking the same pair again is a no-op;
    /// a Stripe customer linked to another customer is a `Conflict`.
    async fn link_stripe_customer(
        &self,
        customer_id: &CustomerId,
        stripe_customer_id: &StripeCustomerId,
        now: i64,
    ) -> StoreResult<()>;

    /// Links a Stripe object to a customer (creating the customer row if
    /// missing). Returns the customer the object is linked to afterwards,
    /// which is an earlier one if the object was already linked.
    async fn link_object(
        &self,
        object_id: &str,
        customer_id: &CustomerId,
        now: i64,
    ) -> StoreResult<CustomerId>;

    /// In ONE transaction: when `commit` is given, checks the version
    /// (mismatch: [`VERSION_CONFLICT`]), stores the state (creating the row
    /// if needed) with version + 1, mirrors the state's linked Stripe
    /// customer into `stripe_customer_id` (cleared once every Stripe
    /// customer in the state is deleted) and links every Stripe customer of
    /// the state as an object, writes the audit rows, the outbox rows and
    /// the object links (for a deleted customer, then redacts what the
    /// commit and anything stored since brought, this event's payload
    /// included, like [`BillingStore::delete_customer`]); then finishes the
    /// inbox row like
    /// [`crate::Store::finish_event`] under `claim` (not `processing`, or
    /// reclaimed since: [`LEASE_CONFLICT`]; unknown: `NotFound`). Any error
    /// writes nothing.
    async fn commit_event(
        &self,
        event_id: &str,
        claim: i64,
        commit: Option<&CustomerCommit>,
        result: &EventResult,
        now: i64,
    ) -> StoreResult<CommitReceipt>;

    /// [`BillingStore::commit_event`] for a batch of one worker's claimed
    /// events, in ONE transaction (one commit, one fsync): writes each
    /// customer commit, paired with the ids of the events it applies
    /// (whose payloads are redacted with a deleted customer's), like
    /// `commit_event` does, then finishes every event of `finishes` under
    /// its claim. Any version mismatch ([`VERSION_CONFLICT`]), event no
    /// longer held ([`LEASE_CONFLICT`]), unknown event (`NotFound`) or other
    /// error writes nothing at all. Returns one receipt per commit.
    async fn commit_events(
        &self,
        commits: &[(CustomerCommit, Vec<String>)],
        finishes: &[crate::EventFinish],
        now: i64,
    ) -> StoreResult<Vec<CommitReceipt>>;

    /// Like [`BillingStore::commit_event`] for a change that no inbox event
    /// carries (an API call, the scheduler): state, audit, outbox and links
    /// in one transaction.
    async fn commit_customer(
        &self,
        commit: &CustomerCommit,
        now: i64,
    ) -> StoreResult<CommitReceipt>;

    /// Puts `unlinked` inbox events whose Stripe customer or object id is
    /// one of `ids` back to `pending`, and every `unlinked` event that names
    /// no Stripe customer (a dispute names only its charge, whose owner may
    /// be what just got linked; if not, it parks again); returns how many.
    /// Called when a link appears (pass the Stripe customer id and the newly
    /// linked objects).
    async fn requeue_unlinked(&self, ids: &[&str], now: i64) -> StoreResult<u64>;

    /// A customer's audit rows, newest first; `limit` 0 means no limit.
    async fn list_audit(
        &self,
        customer_id: &CustomerId,
        limit: u32,
    ) -> StoreResult<Vec<AuditRecord>>;

    /// Writes outbox rows outside an event (scheduler); duplicates of a
    /// dedupe key are skipped. Returns how many were inserted.
    async fn enqueue_outbox(
        &self,
        customer_id: Option<&CustomerId>,
        items: &[NewOutboxItem],
        now: i64,
    ) -> StoreResult<u64>;

    /// Claims up to `limit` due outbox rows (pending with `next_attempt_at`
    /// unset or `<= now`; processing whose lease ended before `now`), oldest
    /// first: they become `processing` with `next_attempt_at = lease_until`
    /// and `attempts + 1` and a new `claim_token`. Safe with several
    /// processes on one database.
    async fn claim_outbox(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> StoreResult<Vec<OutboxItem>>;

    /// Records how delivery of a claimed row ended, if `claim_token` (from
    /// [`OutboxItem::claim_token`]) is still the row's and it is still
    /// `processing`; otherwise nothing is written and the answer is
    /// `Conflict` with [`OUTBOX_LEASE_CONFLICT`]. An unknown id is `NotFound`.
    async fn finish_outbox(
        &self,
        id: i64,
        claim_token: i64,
        result: &OutboxResult,
        now: i64,
    ) -> StoreResult<()>;

    /// Extends the lease of a claimed row to `lease_until` (a heartbeat
    /// while a slow delivery runs), if `claim_token` is still the row's and
    /// it is still `processing`. False when the claim was lost.
    async fn renew_outbox(&self, id: i64, claim_token: i64, lease_until: i64) -> StoreResult<bool>;

    /// Outbox rows matching a filter, newest first.
    async fn list_outbox(&self, filter: &OutboxFilter) -> StoreResult<Vec<OutboxItem>>;

    /// Puts one dead outbox row back to `pending` (attempts reset, due
    /// now), for an operator retrying it. False when no dead row has that
    /// id: a row still pending, being delivered or sent is left alone, so a
    /// retry can never send twice.
    async fn requeue_outbox(&self, id: i64, now: i64) -> StoreResult<bool>;

    /// Adds `amount` to the counter if the result stays within `limit`, as
    /// one atomic conditional update: concurrent consumers never exceed the
    /// limit. Idempotent by `(customer, idempotency_key)`: a repeat returns
    /// the first answer with `replayed: true`; the same key with another
    /// feature, period, amount or direction is [`IDEMPOTENCY_CONFLICT`].
    async fn consume(
        &self,
        request: &UsageRequest,
        limit: u64,
        now: i64,
    ) -> StoreResult<UsageOutcome>;

    /// Several consumes, each with its own limit, committed together (one
    /// commit, one fsync: group commit under load). Each answer is what
    /// [`BillingStore::consume`] would give for that request alone, in
    /// order; a request that fails (e.g. [`IDEMPOTENCY_CONFLICT`]) fails
    /// alone. An error for the whole batch means nothing was committed.
    /// The default applies them one by one.
    async fn consume_batch(
        &self,
        batch: &[(UsageRequest, u64)],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<UsageOutcome>>> {
        let mut out = Vec::with_capacity(batch.len());
        for (request, limit) in batch {
            out.push(self.consume(request, *limit, now).await);
        }
        Ok(out)
    }

    /// Subtracts `amount` from a capacity counter, never below zero; same
    /// idempotency rules as [`BillingStore::consume`]. Always `Applied`.
    async fn release(&self, request: &UsageRequest, now: i64) -> StoreResult<UsageOutcome>;

    /// Commits like [`BillingStore::commit_customer`] (the state from
    /// `billd_core::erase_personal_data`, the outbox rows from
    /// `billd_core::account_deletion_effects`) and, in the same transaction,
    /// erases the profile (email, name, currency), sets `deleted_at` (kept
    /// from the first deletion) and redacts with `billd_core::erasure`'s
    /// rules the personal values of the customer's audit rows and the
    /// personal fields of its outbox payloads and of every stored Stripe
    /// payload about it. The row, its state, its links, its events and its
    /// audit trail stay. From then on, events arriving for its Stripe
    /// customers are stored scrubbed ([`crate::Store::insert_events`]), and
    /// every commit for the customer redacts again what it brings.
    async fn delete_customer(
        &self,
        commit: &CustomerCommit,
        now: i64,
    ) -> StoreResult<CommitReceipt>;

    /// Customers in id order, starting after `after`; `limit` 0 means no
    /// limit. Deleted customers are included (see `deleted_at`). For the
    /// scheduler and reconciliation, which walk every customer in pages.
    async fn list_customers(
        &self,
        after: Option<&CustomerId>,
        limit: u32,
    ) -> StoreResult<Vec<CustomerRecord>>;

    /// Outbox depth per status and the age of the oldest waiting row.
    async fn outbox_stats(&self) -> StoreResult<OutboxStats>;

    /// The counters named by `keys` (`billd_core::usage_keys`); a counter
    /// never used reads 0.
    async fn load_usage(&self, customer_id: &CustomerId, keys: &[UsageKey]) -> StoreResult<Usage>;
}

/// Columns selected wherever a full [`CustomerRecord`] is read; `state` is
/// cast to text so both databases return a string.
pub(crate) const CUSTOMER_COLUMNS: &str = "customer_id, stripe_customer_id, email, name, \
     preferred_currency, CAST(state AS TEXT) AS state, version, deleted_at, created_at, updated_at";

/// Columns selected wherever a full [`OutboxItem`] is read.
pub(crate) const OUTBOX_COLUMNS: &str = "id, dedupe_key, customer_id, kind, \
     CAST(payload AS TEXT) AS payload, status, attempts, next_attempt_at, last_error, \
     created_at, done_at, claim_token";

/// Columns selected wherever a full [`AuditRecord`] is read.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, customer_id, at, field, before_value, after_value, reason, event_type";

/// A `customers` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct CustomerRow {
    customer_id: String,
    stripe_customer_id: Option<String>,
    email: Option<String>,
    name: Option<String>,
    preferred_currency: Option<String>,
    state: Option<String>,
    version: i64,
    deleted_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
}

/// A stored value that does not parse: only a hand-edited database gets
/// here, so report it rather than guess.
pub(crate) fn corrupt(what: &str, key: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("{what} of {key}: {error}"))
}

impl TryFrom<CustomerRow> for CustomerRecord {
    type Error = StoreError;

    fn try_from(row: CustomerRow) -> Result<Self, Self::Error> {
        let key = row.customer_id.as_str();
        let state = match row.state.as_deref() {
            None => CustomerState::default(),
            Some(json) => {
                serde_json::from_str(json).map_err(|e| corrupt("customers.state", key, e))?
            }
        };
        let stripe_customer_id = row
            .stripe_customer_id
            .as_deref()
            .map(StripeCustomerId::parse)
            .transpose()
            .map_err(|e| corrupt("customers.stripe_customer_id", key, e))?;
        Ok(CustomerRecord {
            customer_id: CustomerId::parse(key)
                .map_err(|e| corrupt("customers.customer_id", key, e))?,
            stripe_customer_id,
            email: row.email,
            name: row.name,
            preferred_currency: row.preferred_currency,
            state,
            version: row.version,
            deleted_at: row.deleted_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// An `outbox` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct OutboxRow {
    id: i64,
    dedupe_key: String,
    customer_id: Option<String>,
    kind: String,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: Option<i64>,
    last_error: Option<String>,
    created_at: i64,
    done_at: Option<i64>,
    claim_token: i64,
}

impl TryFrom<OutboxRow> for OutboxItem {
    type Error = StoreError;

    fn try_from(row: OutboxRow) -> Result<Self, Self::Error> {
        let key = row.id.to_string();
        let status = OutboxStatus::parse(&row.status)
            .ok_or_else(|| corrupt("outbox.status", &key, &row.status))?;
        let customer_id = row
            .customer_id
            .as_deref()
            .map(CustomerId::parse)
            .transpose()
            .map_err(|e| corrupt("outbox.customer_id", &key, e))?;
        Ok(OutboxItem {
            id: row.id,
            dedupe_key: row.dedupe_key,
            customer_id,
            kind: row.kind,
            payload: row.payload,
            status,
            attempts: row.attempts,
            next_attempt_at: row.next_attempt_at,
            last_error: row.last_error,
            created_at: row.created_at,
            done_at: row.done_at,
            claim_token: row.claim_token,
        })
    }
}

/// Converts outbox rows and puts them in id (claim) order.
pub(crate) fn into_outbox(rows: Vec<OutboxRow>) -> StoreResult<Vec<OutboxItem>> {
    let mut items = rows
        .into_iter()
        .map(OutboxItem::try_from)
        .collect::<StoreResult<Vec<_>>>()?;
    items.sort_by_key(|item| item.id);
    Ok(items)
}

/// An `audit_log` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct AuditRow {
    id: i64,
    customer_id: String,
    at: i64,
    field: String,
    before_value: Option<String>,
    after_value: Option<String>,
    reason: String,
    event_type: String,
}

impl TryFrom<AuditRow> for AuditRecord {
    type Error = StoreError;

    fn try_from(row: AuditRow) -> Result<Self, Self::Error> {
        Ok(AuditRecord {
            customer_id: CustomerId::parse(&row.customer_id)
                .map_err(|e| corrupt("audit_log.customer_id", &row.id.to_string(), e))?,
            id: row.id,
            at: row.at,
            field: row.field,
            before: row.before_value,
            after: row.after_value,
            reason: row.reason,
            event_type: row.event_type,
        })
    }
}

/// What a commit writes into `customers.stripe_customer_id`: the state's
/// linked Stripe customer; cleared once every Stripe customer the state
/// knows is deleted; left alone while the state knows none (a link made by
/// [`BillingStore::link_stripe_customer`] before any event about it).
pub(crate) enum StripeColumn {
    /// Leave the column as it is.
    Keep,
    /// Set it (`None`: clear it).
    Set(Option<String>),
}

impl StripeColumn {
    pub(crate) fn of(state: &CustomerState) -> Self {
        match state.stripe_customer() {
            Some(id) => StripeColumn::Set(Some(id.as_str().to_owned())),
            None if state.stripe_customers.is_empty() => StripeColumn::Keep,
            None => StripeColumn::Set(None),
        }
    }

    /// `(keep, value)` for `CASE WHEN keep THEN stripe_customer_id ELSE value END`.
    pub(crate) fn binds(&self) -> (bool, Option<&str>) {
        match self {
            StripeColumn::Keep => (true, None),
            StripeColumn::Set(value) => (false, value.as_deref()),
        }
    }
}

/// Every object id a commit links: the Stripe customers the state knows
/// (so later events of a deleted Stripe customer still find the customer)
/// and the commit's own links, without repeats.
pub(crate) fn commit_links(commit: &CustomerCommit) -> Vec<&str> {
    let mut links: Vec<&str> = commit
        .state
        .stripe_customers
        .keys()
        .map(StripeCustomerId::as_str)
        .chain(commit.links.iter().map(String::as_str))
        .collect();
    links.sort_unstable();
    links.dedup();
    links
}

/// The state document to store.
pub(crate) fn state_json(state: &CustomerState) -> StoreResult<String> {
    serde_json::to_string(state).map_err(|e| StoreError::Other(format!("encoding state: {e}")))
}

/// A counter value or amount as the databases store it (BIGINT).
pub(crate) fn to_db(value: u64, what: &str) -> StoreResult<i64> {
    i64::try_from(value).map_err(|_| StoreError::Other(format!("{what} {value} is too large")))
}

/// A stored counter as the API reports it; negatives cannot be stored
/// (CHECK constraints), so a negative reads 0.
pub(crate) fn from_db(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// `period_start` column of a usage key: 0 for capacity features.
pub(crate) fn period_column(key: &UsageKey) -> i64 {
    key.period_start.unwrap_or(0)
}

/// Whether consuming or releasing; stored with the idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Consume,
    Release,
}

impl Direction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Direction::Consume => "consume",
            Direction::Release => "release",
        }
    }
}

/// An earlier request stored under the same idempotency key:
/// `(direction, feature, amount, used, quota)`.
pub(crate) type StoredRequest = (String, String, i64, i64, i64);

/// The stored answer for a repeated key, or [`IDEMPOTENCY_CONFLICT`] when
/// the key was used for a different request.
pub(crate) fn replay(
    stored: StoredRequest,
    direction: Direction,
    request: &UsageRequest,
) -> StoreResult<UsageOutcome> {
    let (stored_direction, feature, amount, used, quota) = stored;
    let same = stored_direction == direction.as_str()
        && feature == request.key.feature.as_str()
        && u64::try_from(amount).ok() == Some(request.amount);
    if !same {
        return Err(StoreError::Conflict {
            constraint: IDEMPOTENCY_CONFLICT.to_owned(),
        });
    }
    Ok(UsageOutcome::Applied {
        used: from_db(used),
        limit: from_db(quota),
        replayed: true,
    })
}

/// Usage from `(feature, period_start, used)` rows, keeping the counters
/// named by `keys`.
pub(crate) fn usage_from_rows(keys: &[UsageKey], rows: Vec<(String, i64, i64)>) -> Usage {
    let mut usage = Usage::new();
    for (feature, _, used) in &rows {
        if let Some(payment) = feature.strip_prefix(CREDIT_COUNTER_PREFIX) {
            usage.set_credits_used(payment, from_db(*used));
        }
    }
    for key in keys {
        let column = period_column(key);
        if let Some((_, _, used)) = rows
            .iter()
            .find(|(feature, period, _)| feature == key.feature.as_str() && *period == column)
        {
            usage.set(key.clone(), from_db(*used));
        }
    }
    usage
}

/// The consumes of a batch that may be applied together, in one set-based
/// step: (batch position, amount) of each that is the first of the batch on
/// its counter and under its key, takes no credits, reports no overage and
/// has a valid amount. Every consume claims its counter and key, so a later
/// one on either is decided after it, as in batch order.
pub(crate) fn first_plain_consumes<'a>(
    requests: impl Iterator<Item = &'a UsageRequest>,
) -> Vec<(usize, i64)> {
    let mut counters = std::collections::HashSet::new();
    let mut keys = std::collections::HashSet::new();
    let mut together = Vec::new();
    for (i, request) in requests.enumerate() {
        let first = counters.insert((
            request.customer_id.as_str(),
            request.key.feature.as_str(),
            period_column(&request.key),
        )) & keys.insert((
            request.customer_id.as_str(),
            request.idempotency_key.as_str(),
        ));
        let plain = request.credits.is_none() && request.overage.is_none();
        match check_amount(request) {
            Ok(amount) if first && plain => together.push((i, amount)),
            _ => {}
        }
    }
    together
}

/// The error for an amount of zero.
pub(crate) fn check_amount(request: &UsageRequest) -> StoreResult<i64> {
    if request.amount == 0 {
        return Err(StoreError::Other(
            "usage amount must be at least 1".to_owned(),
        ));
    }
    to_db(request.amount, "usage amount")
}

/// `(status, last_error, next_attempt_at, done_at)` for a finished outbox row.
pub(crate) fn outbox_columns(
    result: &OutboxResult,
    now: i64,
) -> (&'static str, Option<&str>, Option<i64>, Option<i64>) {
    match result {
        OutboxResult::Sent => ("sent", None, None, Some(now)),
        OutboxResult::Retry {
            error,
            next_attempt_at,
        } => (
            "pending",
            Some(error.as_str()),
            Some(*next_attempt_at),
            None,
        ),
        OutboxResult::Dead { error } => ("dead", Some(error.as_str()), None, Some(now)),
    }
}

/// The error for finishing an outbox row the caller no longer holds
/// (`exists` is false for an unknown id).
pub(crate) fn outbox_not_held(exists: bool) -> StoreError {
    if exists {
        StoreError::Conflict {
            constraint: OUTBOX_LEASE_CONFLICT.to_owned(),
        }
    } else {
        StoreError::NotFound
    }
}

/// Builds [`OutboxStats`] from `(status, count)` rows, listing every status.
pub(crate) fn outbox_stats(
    counts: Vec<(String, i64)>,
    oldest_waiting_created_at: Option<i64>,
) -> StoreResult<OutboxStats> {
    let mut by_status: Vec<(OutboxStatus, i64)> =
        OutboxStatus::ALL.into_iter().map(|s| (s, 0)).collect();
    for (status, count) in counts {
        let status = OutboxStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(format!("outbox.status {status:?}")))?;
        if let Some(slot) = by_status.iter_mut().find(|(s, _)| *s == status) {
            slot.1 = count;
        }
    }
    Ok(OutboxStats {
        by_status,
        oldest_waiting_created_at,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use billd_core::state::StripeCustomerLink;
    use billd_core::{AlertKind, CancelReason, EmailTemplate, StripeSubscriptionId};

    use super::*;

    fn link(deleted: bool) -> StripeCustomerLink {
        StripeCustomerLink {
            created: Some(1),
            deleted,
            ..StripeCustomerLink::default()
        }
    }

    #[test]
    fn every_effect_becomes_an_outbox_row_named_by_its_kind_and_reads_back() {
        let subscription = StripeSubscriptionId::parse("sub_1").unwrap();
        let effects = [
            Effect::Email {
                template: EmailTemplate::PaymentFailed,
                dedupe_key: "email".into(),
                params: BTreeMap::from([("amount".to_owned(), "9.00 EUR".to_owned())]),
            },
            Effect::AdminAlert {
                alert: AlertKind::DisputeOpened,
                dedupe_key: "alert".into(),
                message: "dispute".into(),
            },
            Effect::CancelSubscription {
                subscription: subscription.clone(),
                reason: CancelReason::DisputeLost,
                dedupe_key: "cancel".into(),
            },
            Effect::RefetchSubscription {
                subscription,
                tie_created: 7,
                round: 0,
                dedupe_key: "refetch".into(),
            },
        ];

        let rows: Vec<NewOutboxItem> = effects
            .iter()
            .map(|effect| NewOutboxItem::from_effect(effect).unwrap())
            .collect();

        let kinds: Vec<&str> = rows.iter().map(|row| row.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "email",
                "admin_alert",
                "cancel_subscription",
                "refetch_subscription"
            ]
        );
        for (row, effect) in rows.iter().zip(&effects) {
            assert_eq!(row.dedupe_key, effect.dedupe_key());
            let back: Effect = serde_json::from_str(&row.payload).unwrap();
            assert_eq!(&back, effect);
        }
    }

    #[test]
    fn the_stripe_column_follows_the_state_and_is_kept_when_the_state_knows_none() {
        let mut state = CustomerState::default();
        assert!(matches!(StripeColumn::of(&state), StripeColumn::Keep));

        state
            .stripe_customers
            .insert(StripeCustomerId::parse("cus_a").unwrap(), link(false));
        assert_eq!(StripeColumn::of(&state).binds(), (false, Some("cus_a")));

        state
            .stripe_customers
            .insert(StripeCustomerId::parse("cus_a").unwrap(), link(true));
        assert_eq!(StripeColumn::of(&state).binds(), (false, None));
    }

    #[test]
    fn a_commit_links_its_objects_and_every_stripe_customer_once() {
        let mut state = CustomerState::default();
        state
            .stripe_customers
            .insert(StripeCustomerId::parse("cus_a").unwrap(), link(true));
        let commit = CustomerCommit {
            customer_id: CustomerId::parse("user").unwrap(),
            expected_version: 0,
            state,
            audit: Vec::new(),
            outbox: Vec::new(),
            links: vec!["sub_1".into(), "cus_a".into(), "sub_1".into()],
        };

        assert_eq!(commit_links(&commit), ["cus_a", "sub_1"]);
    }
}
