//! After a call that changed the subscription: Stripe's answer fed into
//! the inbox as a synthetic authoritative event and waited for (see
//! `subscription/mod.rs` for the ordering), and the answer built from the
//! entitlements that result.

use std::time::{Duration, Instant};

use billd_core::CustomerId;
use billd_store::{EventStatus, NewEvent};
use billd_stripe::client::Params;
use serde_json::Value;

use crate::http::api::{store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::{synthetic_subscription_event, BillingBackend, SYNC_EVENT_PREFIX};

use super::live::{Context, LiveSubscription};
use super::types::{SubscriptionOutcome, SubscriptionView};

/// How long a handler waits for the inbox worker to apply the subscription
/// it fed back before answering anyway (the event is applied later).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Stripe's current time for the subscription: its test clock's frozen
/// time when it lives on one (test mode), else billd's clock, which tracks
/// Stripe's wall clock.
async fn stripe_now<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    object: &Value,
) -> Result<i64, ApiError> {
    let clock = object["test_clock"]
        .as_str()
        .or_else(|| object["test_clock"]["id"].as_str());
    let Some(clock) = clock else {
        return Ok(state.clock.now());
    };
    let clock = state
        .stripe()?
        .get(
            &format!("/v1/test_helpers/test_clocks/{clock}"),
            &Params::new(),
        )
        .await?;
    Ok(clock["frozen_time"]
        .as_i64()
        .unwrap_or_else(|| state.clock.now()))
}

/// Feeds Stripe's answer into the inbox as an authoritative snapshot at
/// Stripe's current second (never before the subscription's watermark),
/// observed at `observed_ns`, and waits (bounded) until the worker
/// applied it, so the caller's next entitlements read shows it.
pub(super) async fn feed_back<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    updated: &LiveSubscription,
    observed_ns: u64,
) -> Result<(), ApiError> {
    feed_back_snapshot(
        state,
        ctx.watermark.0,
        &updated.id,
        &updated.object,
        observed_ns,
    )
    .await
    .map(drop)
}

/// Feeds a subscription object read from Stripe into the inbox as an
/// authoritative snapshot at Stripe's current second, never before
/// `watermark` (the second of the snapshot billd holds), and waits (bounded)
/// until the worker applied it; answers whether it was applied in time.
pub(crate) async fn feed_back_snapshot<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    watermark: i64,
    subscription: &str,
    object: &Value,
    observed_ns: u64,
) -> Result<bool, ApiError> {
    // The observation time orders this snapshot against billd's other
    // reads and writes of the same second; the watermark itself is
    // Stripe's time, never billd's.
    let created = watermark.max(stripe_now(state, object).await?);
    let event = sync_event(
        subscription,
        created,
        observed_ns,
        object.clone(),
        state.clock.now(),
    );
    insert_and_wait(state, event).await
}

/// Inserts a synthetic inbox event and waits (bounded) until the worker
/// applied it; false when it is not applied yet (it will be, later).
pub(crate) async fn insert_and_wait<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    event: NewEvent,
) -> Result<bool, ApiError> {
    let id = event.id.clone();
    state
        .store
        .insert_events(&[event])
        .await
        .map_err(store_error)?;
    let deadline = Instant::now() + APPLY_WAIT;
    while Instant::now() < deadline {
        let done = state
            .store
            .get_event(&id)
            .await
            .map_err(store_error)?
            .is_some_and(|e| {
                !matches!(
                    e.status,
                    EventStatus::Received | EventStatus::Pending | EventStatus::Processing
                )
            });
        if done {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(event_id = %id, "fed-back event not applied yet; answering anyway");
    Ok(false)
}

/// The synthetic inbox event carrying a subscription object Stripe returned
/// to a change, shaped like a webhook (see [`crate::pipeline::refetch_event`]),
/// observed at `observed_ns`, which also orders two of them by id.
pub fn sync_event(
    subscription: &str,
    created: i64,
    observed_ns: u64,
    object: Value,
    now: i64,
) -> NewEvent {
    let id = format!("{SYNC_EVENT_PREFIX}{subscription}_{observed_ns:039}");
    synthetic_subscription_event(id, subscription, created, observed_ns, object, now)
}

pub(super) async fn view<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    live: &LiveSubscription,
    status: SubscriptionOutcome,
) -> Result<SubscriptionView, ApiError> {
    let record = crate::http::app::account::live_customer(&*state.store, id).await?;
    let entitlements = state.entitlements_of(&record).await?;
    Ok(SubscriptionView {
        status,
        plan: entitlements.plan.clone(),
        requested_plan: None,
        subscription_status: live.status.clone(),
        cancel_at_period_end: live.object["cancel_at_period_end"].as_bool() == Some(true),
        current_period_end: Some(live.current_period_end).filter(|t| *t > 0),
        hosted_invoice_url: None,
        invoice: None,
        effective_at: None,
        entitlements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fed_back_subscription_is_an_authoritative_event_and_later_feed_backs_sort_after() {
        let live = super::super::live::fixture("price_a");
        let first = sync_event("sub_1", 500, 7, live.object.clone(), 900);
        let second = sync_event("sub_1", 500, 80, live.object.clone(), 900);

        let event = crate::pipeline::parse_stored(&crate::pipeline::claimed(first.clone()))
            .unwrap()
            .unwrap();

        assert!(event.authoritative);
        assert_eq!(event.created, 500);
        assert_eq!(event.observed_ns, 7);
        assert_eq!(first.stripe_customer.as_deref(), Some("cus_1"));
        assert!(second.id > first.id, "{} vs {}", second.id, first.id);
    }
}
