//! Reconciliation's settings, what one run found ([`ReconcileReport`]: drift,
//! unlinked subscriptions, missed events) and why a run failed.

use std::collections::BTreeMap;
use std::time::Duration;

use billd_core::CustomerId;
use billd_store::StoreError;
use billd_stripe::client::StripeError;
use serde::Serialize;

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

/// A live subscription at Stripe without the metered item of an overage
/// the catalog sells at its interval: its overage is metered but not
/// invoiced until the item is added (the next plan change adds it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MissingOverage {
    /// The billd customer.
    pub customer: CustomerId,
    /// The Stripe subscription.
    pub subscription: String,
    /// The features whose metered item it lacks.
    pub features: Vec<String>,
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
    /// Live subscriptions lacking a metered overage item (reported, not
    /// changed at Stripe).
    pub missing_overage: Vec<MissingOverage>,
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
