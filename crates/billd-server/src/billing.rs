//! Everything billing adds to the server, started in one call: the
//! lifecycle handler for every handled event type, the app and admin API
//! beside the webhook endpoint, and the outbox worker next to the inbox
//! worker, all stopped by the same cancellation token.

use std::sync::Arc;

use billd_core::Catalog;
use billd_store::Store;
use billd_stripe::client::StripeClient;
use tokio::net::TcpListener;

use crate::api::ApiConfig;
use crate::auth::ApiKeys;
use crate::clock::Clock;
use crate::lifecycle::LifecycleHandler;
use crate::outbox::{Delivery, OutboxConfig, OutboxWorker};
use crate::{api, start_with_routes, Running, ServerConfig, Workers};

/// What billing runs with.
#[derive(Clone)]
pub struct BillingConfig {
    /// Plans, features and policies.
    pub catalog: Arc<Catalog>,
    /// The Stripe API (or an emulator); `None` leaves Stripe calls failing
    /// and retrying in the outbox, and disputes without a customer unlinked.
    pub stripe: Option<StripeClient>,
    /// App and admin API keys.
    pub api_keys: ApiKeys,
    /// Outbox worker settings.
    pub outbox: OutboxConfig,
    /// App API knobs.
    pub api: ApiConfig,
    /// Where emails and alerts go ([`crate::outbox::LogDelivery`] by default).
    pub delivery: Arc<dyn Delivery>,
}

impl std::fmt::Debug for BillingConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingConfig")
            .field("stripe", &self.stripe)
            .field("api_keys", &self.api_keys)
            .field("outbox", &self.outbox)
            .finish_non_exhaustive()
    }
}

/// Starts billd with billing: [`crate::start_with_routes`] with the
/// lifecycle registry and the API routes, plus the outbox worker (when
/// `workers` is `Run`). `clock` drives both the webhook checks and billing
/// decisions.
pub fn start_billing(
    listener: TcpListener,
    store: Arc<dyn Store>,
    config: ServerConfig,
    billing: BillingConfig,
    clock: Arc<dyn Clock>,
    workers: Workers,
) -> std::io::Result<Running> {
    let registry = LifecycleHandler::new(
        store.clone(),
        billing.catalog.clone(),
        billing.stripe.clone(),
        clock.clone(),
    )
    .registry();
    let routes = api::routes(
        store.clone(),
        billing.catalog.clone(),
        clock.clone(),
        billing.api_keys,
        billing.stripe.clone(),
        billing.api,
    );
    let running = start_with_routes(
        listener,
        store.clone(),
        config,
        registry,
        clock.clone(),
        workers,
        routes,
    )?;
    if workers == Workers::Run {
        let outbox = OutboxWorker::new(
            store,
            billing.stripe,
            billing.delivery,
            clock,
            billing.outbox,
        );
        // Stops with the server's token. A row in hand when the process
        // exits is claimed again once its lease ends.
        tokio::spawn(outbox.run(running.cancel_token()));
    }
    Ok(running)
}
