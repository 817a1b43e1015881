//! The pipeline: what happens to a Stripe event once it is in, and to what
//! billing decides. Group commit into the inbox ([`Ingestor`]), the inbox
//! worker ([`InboxWorker`]) and the lifecycle handler it dispatches to
//! ([`LifecycleHandler`]), the outbox ([`OutboxWorker`]) and its email
//! delivery ([`EmailDelivery`]), the Stripe customer of a billd customer,
//! the clock everything reads time from, and what telemetry shows of the
//! store ([`read_scrape`]).
//!
//! Depends on billd-core, billd-store, billd-stripe, billd-email and
//! `telemetry`; never on `http` or `jobs`.

mod clock;
mod envelope;
mod ingest;
mod lifecycle;
mod notify;
mod outbox;
mod readings;
mod stripe_customer;
mod worker;

pub use clock::{observation_ns, Clock, ManualClock, SystemClock};
pub use envelope::{parse_envelope, PayloadInvalid};
pub use ingest::{
    commits_in_flight, IngestConfig, IngestError, IngestLoad, Ingestor, WaitingDelivery,
};
#[cfg(test)]
pub(crate) use lifecycle::claimed;
pub use lifecycle::{
    parse_stored, BillingBackend, LifecycleHandler, CHECKOUT_SYNC_EVENT_PREFIX,
    HANDLED_EVENT_TYPES, OBSERVED_NS_FIELD, RECONCILE_EVENT_PREFIX, REFETCH_EVENT_PREFIX,
    SYNC_EVENT_PREFIX,
};
pub use notify::{count_email, EmailDelivery};
pub use outbox::{
    outbox_items, refetch_event, synthetic_subscription_event, AlertChannels, Delivered, Delivery,
    DeliveryError, LogDelivery, OutboxConfig, OutboxReport, OutboxWorker, ALERT_WEBHOOK_KIND,
};
pub use readings::{count_store_error, inbox_lag_secs, read_scrape, store_error_kind};
pub(crate) use stripe_customer::{ensure_stripe_customer, linked_stripe_customer, StripeCustomer};
pub use stripe_customer::{erase_stripe_customer, StripeCustomerError};
pub use worker::{
    Backoff, DeadReason, EventHandler, FailureClass, HandlerError, HandlerOutcome, HandlerRegistry,
    InboxWorker, RoundReport, WorkerConfig, INGEST_BUSY,
};
