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

mod compare;
mod job;
mod pager;
mod plan;
mod run;
mod types;

pub use compare::{compare, heal_created, missing_overage};
pub use job::ReconcileJob;
pub use run::Reconciler;
pub use types::{
    Drift, DriftKind, FieldDrift, MissingOverage, ReconcileConfig, ReconcileError, ReconcileReport,
    UnlinkedSubscription, EVENTS_WINDOW_SECS,
};
