//! The alert conditions the monitor checks: rows dead-lettered in the inbox
//! or the outbox, a spike of webhook signature failures, the payment
//! failure rate, and webhook silence while renewals were due.

use std::collections::BTreeMap;

use billd_core::event::SubscriptionStatus;
use billd_core::AlertKind;
use billd_store::{EventFilter, EventStatus, OutboxFilter, OutboxStatus, StoreResult};

use crate::pipeline::REFETCH_EVENT_PREFIX;
use crate::telemetry::Metrics;

use super::config::SIGNATURE_FAILURE_CODES;
use super::monitor::AlertMonitor;

/// How many customers one page of the webhook-silence walk reads.
const CUSTOMER_PAGE: u32 = 500;

impl AlertMonitor {
    /// One alert per queue and window in which rows died, over the last
    /// window: `(kind, subject, message, died_at)`.
    pub(super) async fn dead_letters(
        &self,
        now: i64,
    ) -> StoreResult<Vec<(AlertKind, String, String, i64)>> {
        let since = now - self.alerter.window_secs;
        let window = self.alerter.window_secs;
        let mut alerts = Vec::new();

        let events = self
            .store
            .list_events(&EventFilter {
                status: Some(EventStatus::Dead),
                ..EventFilter::default()
            })
            .await?;
        let mut buckets: BTreeMap<i64, DeadBucket> = BTreeMap::new();
        for event in &events {
            if let Some(at) = event.processed_at.filter(|at| *at > since) {
                buckets
                    .entry(at.div_euclid(window))
                    .or_insert_with(|| DeadBucket::new(at))
                    .add(at, &event.event_type, event.last_error.as_deref());
            }
        }
        for bucket in buckets.into_values() {
            alerts.push((
                AlertKind::EventsDead,
                "inbox".to_owned(),
                format!(
                    "{} webhook event(s) were dead-lettered ({}); last error (its reason \
                     code first): {}; see `billd events list --status dead`, fix the cause, then \
                     `billd events replay --status dead`",
                    bucket.total(),
                    tally(&bucket.counts),
                    bucket.error.as_deref().unwrap_or("unknown")
                ),
                bucket.first_at,
            ));
        }

        let rows = self
            .store
            .list_outbox(&OutboxFilter {
                status: Some(OutboxStatus::Dead),
                ..OutboxFilter::default()
            })
            .await?;
        let mut buckets: BTreeMap<i64, DeadBucket> = BTreeMap::new();
        for row in &rows {
            if let Some(at) = row.done_at.filter(|at| *at > since) {
                buckets
                    .entry(at.div_euclid(window))
                    .or_insert_with(|| DeadBucket::new(at))
                    .add(at, &row.kind, row.last_error.as_deref());
            }
        }
        for bucket in buckets.into_values() {
            alerts.push((
                AlertKind::OutboxDead,
                "outbox".to_owned(),
                format!(
                    "{} outbox item(s) could not be delivered and are dead ({}); last error: {}",
                    bucket.total(),
                    tally(&bucket.counts),
                    bucket.error.as_deref().unwrap_or("unknown")
                ),
                bucket.first_at,
            ));
        }
        Ok(alerts)
    }

    /// The spike message when at least `signature_failures` signature
    /// failures happened within `signature_window_secs`.
    pub(super) fn signature_spike(&self, now: i64) -> Option<String> {
        let total = signature_failures(&self.metrics);
        let window = self.config.signature_window_secs;
        let mut state = self.state.lock().ok()?;
        let samples = &mut state.signature_samples;
        samples.push_back((now, total));
        // Keep the newest sample at or before the window's start as the
        // baseline; older ones are no longer needed.
        while samples.len() > 1 && samples.get(1).is_some_and(|(at, _)| *at <= now - window) {
            samples.pop_front();
        }
        let baseline = samples.front().map_or(0, |(_, n)| *n);
        let recent = total.saturating_sub(baseline);
        (recent >= self.config.signature_failures.max(1)).then(|| {
            format!(
                "{recent} webhook request(s) failed signature verification within {window}s \
                 (threshold {}): a webhook secret may have been rotated without updating \
                 BILLD_STRIPE_WEBHOOK_SECRETS, or someone is probing the endpoint",
                self.config.signature_failures
            )
        })
    }

    /// The message when the failure ratio is over the threshold.
    pub(super) fn payment_failure_rate(&self, now: i64) -> Option<String> {
        let window = self.metrics.business.failure_window(now);
        let threshold = u64::from(self.config.payment_failure_percent);
        let over = window.total >= self.config.payment_min_count.max(1)
            && window.failed * 100 >= threshold * window.total;
        over.then(|| {
            format!(
                "{} of {} payment(s) failed within {}s ({:.0}%, threshold {threshold}%)",
                window.failed,
                window.total,
                self.config.payment_window_secs,
                window.ratio() * 100.0
            )
        })
    }

    /// The message when no webhook arrived for `webhook_silence_secs` while
    /// a live subscription's period ended since the last one (Stripe would
    /// have sent at least its renewal invoice).
    pub(super) async fn webhook_silence(&self, now: i64) -> StoreResult<Option<String>> {
        let recent = self
            .store
            .list_events(&EventFilter {
                limit: 50,
                ..EventFilter::default()
            })
            .await?;
        let Some(last) = recent
            .iter()
            .filter(|e| !e.id.starts_with(REFETCH_EVENT_PREFIX))
            .map(|e| e.received_at)
            .max()
        else {
            return Ok(None);
        };
        if now - last < self.config.webhook_silence_secs {
            return Ok(None);
        }
        let mut due = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .list_customers(after.as_ref(), CUSTOMER_PAGE)
                .await?;
            for customer in &page {
                if customer.deleted_at.is_some() {
                    continue;
                }
                for (id, sub) in &customer.state.subscriptions {
                    let live = !sub.deleted
                        && matches!(
                            sub.snapshot.status,
                            SubscriptionStatus::Active
                                | SubscriptionStatus::Trialing
                                | SubscriptionStatus::PastDue
                        );
                    let ended = sub
                        .snapshot
                        .current_period_end
                        .is_some_and(|end| end > last && end <= now);
                    if live && ended {
                        due.push(id.to_string());
                    }
                }
            }
            match page.last() {
                Some(last) if page.len() == CUSTOMER_PAGE as usize => {
                    after = Some(last.customer_id.clone());
                }
                _ => break,
            }
        }
        if due.is_empty() {
            return Ok(None);
        }
        let shown = due.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
        Ok(Some(format!(
            "no webhook received for {}s although {} subscription(s) were due to renew since \
             ({shown}); check the endpoint at Stripe (`billd doctor`) and run `billd reconcile`",
            now - last,
            due.len()
        )))
    }
}

/// Cumulative signature failures seen by the webhook endpoint.
pub(super) fn signature_failures(metrics: &Metrics) -> u64 {
    SIGNATURE_FAILURE_CODES
        .iter()
        .map(|code| metrics.webhooks_rejected.get(code))
        .sum()
}

/// The dead rows of one queue within one window.
#[derive(Debug)]
struct DeadBucket {
    first_at: i64,
    counts: BTreeMap<String, u64>,
    error: Option<String>,
}

impl DeadBucket {
    fn new(at: i64) -> Self {
        DeadBucket {
            first_at: at,
            counts: BTreeMap::new(),
            error: None,
        }
    }

    fn add(&mut self, at: i64, kind: &str, error: Option<&str>) {
        self.first_at = self.first_at.min(at);
        *self.counts.entry(kind.to_owned()).or_default() += 1;
        if self.error.is_none() {
            self.error = error.map(str::to_owned);
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

fn tally(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}
