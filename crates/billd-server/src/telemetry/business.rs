//! Business metrics: payment outcomes, disputes and refunds, counted from
//! what the lifecycle actually committed.
//!
//! Each committed decision is compared with the state it started from
//! ([`observe`]): a fact appears in a customer's state exactly once however
//! often and in whatever order Stripe delivers its events, so a duplicate
//! or a redelivery under a new event id counts nothing. Counters live in
//! the process (a restart starts them at 0, which Prometheus' `rate()`
//! handles); the failure ratio is taken over a sliding window of the
//! outcomes this process applied.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

use billd_core::event::DisputeStatus;
use billd_core::CustomerState;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::telemetry::metrics::LabelledCounter;

/// The outcome of one payment attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// An invoice with an amount due was paid.
    Succeeded,
    /// A payment attempt failed.
    Failed,
    /// A payment attempt needs the customer (3-D Secure).
    ActionRequired,
}

impl PaymentOutcome {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentOutcome::Succeeded => "succeeded",
            PaymentOutcome::Failed => "failed",
            PaymentOutcome::ActionRequired => "action_required",
        }
    }
}

/// Something a committed decision newly recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// A payment attempt ended.
    Payment(PaymentOutcome),
    /// A dispute became known.
    DisputeOpened,
    /// A dispute closed in the merchant's favour.
    DisputeWon,
    /// A dispute closed in the customer's favour.
    DisputeLost,
    /// Money was refunded; `full` when the charge is now refunded entirely.
    Refund {
        /// The refunded amount reached the charge's amount.
        full: bool,
    },
}

/// What `after` records that `before` did not: new payment attempt facts,
/// invoices newly paid, disputes newly seen or closed, new refund facts.
/// Pure: both states are the customer's documents around one commit.
pub fn observe(before: &CustomerState, after: &CustomerState) -> Vec<Observation> {
    let mut seen = Vec::new();
    for fact in after.applied_facts.difference(&before.applied_facts) {
        if fact.starts_with("invoice.payment_failed:") {
            seen.push(Observation::Payment(PaymentOutcome::Failed));
        } else if fact.starts_with("invoice.payment_action_required:") {
            seen.push(Observation::Payment(PaymentOutcome::ActionRequired));
        } else if let Some(rest) = fact.strip_prefix("charge.refunded:") {
            // `charge.refunded:{charge}:{amount_refunded}`: one fact per
            // distinct cumulative amount, i.e. per refund.
            let Some((charge, amount)) = rest.rsplit_once(':') else {
                continue;
            };
            let amount: i64 = amount.parse().unwrap_or(0);
            let full = after
                .refunds
                .iter()
                .find(|(id, _)| id.as_str() == charge)
                .is_some_and(|(_, r)| amount >= r.amount.minor);
            seen.push(Observation::Refund { full });
        }
    }
    for (id, invoice) in &after.invoices {
        let was_paid = before.invoices.get(id).is_some_and(|i| i.paid);
        // A zero invoice (a trial's first) is no payment.
        if invoice.paid && !was_paid && invoice.invoice.value.amount_paid.minor > 0 {
            seen.push(Observation::Payment(PaymentOutcome::Succeeded));
        }
    }
    for (id, dispute) in &after.disputes {
        let previous = before.disputes.get(id);
        if previous.is_none() {
            seen.push(Observation::DisputeOpened);
        }
        if dispute.closed && previous.is_none_or(|p| !p.closed) {
            match dispute.dispute.status {
                DisputeStatus::Won => seen.push(Observation::DisputeWon),
                DisputeStatus::Lost => seen.push(Observation::DisputeLost),
                _ => {}
            }
        }
    }
    seen
}

/// Payment outcomes of the last `secs` seconds, for the failure ratio.
#[derive(Debug)]
struct PaymentWindow {
    secs: i64,
    /// `(when, failed)`, oldest first.
    samples: VecDeque<(i64, bool)>,
}

impl PaymentWindow {
    fn prune(&mut self, now: i64) {
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| *at <= now - self.secs)
        {
            self.samples.pop_front();
        }
    }
}

/// Counters of payments, disputes and refunds, and the failure window.
#[derive(Debug)]
pub struct BusinessMetrics {
    /// `billd_payments_total{outcome}`.
    pub payments: LabelledCounter,
    /// `billd_disputes_total{event}`.
    pub disputes: LabelledCounter,
    /// `billd_refunds_total{kind}`.
    pub refunds: LabelledCounter,
    window: Mutex<PaymentWindow>,
}

/// The default failure-ratio window, seconds.
pub const DEFAULT_PAYMENT_WINDOW_SECS: i64 = 3600;

impl BusinessMetrics {
    /// Registers the counters in `registry`, every label value listed (0
    /// when nothing happened), so dashboards see the series.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        BusinessMetrics {
            payments: LabelledCounter::register(
                registry,
                "billd_payments",
                "Payment attempts applied, by outcome",
                "outcome",
                &["succeeded", "failed", "action_required"],
            ),
            disputes: LabelledCounter::register(
                registry,
                "billd_disputes",
                "Disputes applied, by event",
                "event",
                &["opened", "won", "lost"],
            ),
            refunds: LabelledCounter::register(
                registry,
                "billd_refunds",
                "Refunds applied; full when the charge is now refunded entirely",
                "kind",
                &["full", "partial"],
            ),
            window: Mutex::new(PaymentWindow {
                secs: DEFAULT_PAYMENT_WINDOW_SECS,
                samples: VecDeque::new(),
            }),
        }
    }
}

/// Failed and total (succeeded + failed) payments within a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureWindow {
    /// Failed attempts.
    pub failed: u64,
    /// Succeeded plus failed attempts.
    pub total: u64,
}

impl FailureWindow {
    /// `failed / total`, 0 when nothing was paid or failed.
    pub fn ratio(self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.failed as f64 / self.total as f64
        }
    }
}

impl BusinessMetrics {
    /// Sets the failure-ratio window (`BILLD_ALERT_PAYMENT_WINDOW_SECS`).
    pub fn set_payment_window(&self, secs: i64) {
        if let Ok(mut window) = self.window.lock() {
            window.secs = secs.max(1);
        }
    }

    /// Counts what one committed decision recorded, at `now`.
    pub fn record(&self, observations: &[Observation], now: i64) {
        for observation in observations {
            match observation {
                Observation::Payment(outcome) => {
                    self.payments.inc(outcome.as_str());
                    if *outcome != PaymentOutcome::ActionRequired {
                        if let Ok(mut window) = self.window.lock() {
                            window
                                .samples
                                .push_back((now, *outcome == PaymentOutcome::Failed));
                            window.prune(now);
                        }
                    }
                }
                Observation::DisputeOpened => self.disputes.inc("opened"),
                Observation::DisputeWon => self.disputes.inc("won"),
                Observation::DisputeLost => self.disputes.inc("lost"),
                Observation::Refund { full: true } => self.refunds.inc("full"),
                Observation::Refund { full: false } => self.refunds.inc("partial"),
            }
        }
    }

    /// Failed and total payments of the window ending at `now`.
    pub fn failure_window(&self, now: i64) -> FailureWindow {
        let Ok(mut window) = self.window.lock() else {
            return FailureWindow::default();
        };
        window.prune(now);
        let failed = window.samples.iter().filter(|(_, f)| *f).count() as u64;
        FailureWindow {
            failed,
            total: window.samples.len() as u64,
        }
    }

    /// Registers `billd_payment_failure_ratio` of the window ending at
    /// `now` in a scrape's `registry`.
    pub(crate) fn register_failure_ratio(&self, registry: &mut Registry, now: i64) {
        let ratio = Gauge::<f64, AtomicU64>::default();
        ratio.set(self.failure_window(now).ratio());
        registry.register(
            "billd_payment_failure_ratio",
            "Failed / (succeeded + failed) payments over the alert window",
            ratio,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Metrics, Scrape};
    use billd_core::state::RefundState;
    use billd_core::{ChargeId, Currency, Money};

    fn with_facts(facts: &[&str]) -> CustomerState {
        let mut state = CustomerState::default();
        state
            .applied_facts
            .extend(facts.iter().map(|f| (*f).to_owned()));
        state
    }

    fn with_refund(mut state: CustomerState, charge: &str, amount: i64) -> CustomerState {
        state.refunds.insert(
            ChargeId::parse(charge).unwrap(),
            RefundState {
                amount: Money::new(amount, Currency::parse("eur").unwrap()),
                amount_refunded: 0,
                refunded: false,
                fully_refunded_at: None,
                customer: None,
                payment_intent: None,
            },
        );
        state
    }

    #[test]
    fn each_new_payment_attempt_fact_counts_once_and_known_facts_count_nothing() {
        let before = with_facts(&["invoice.payment_failed:in_1:1"]);
        let after = with_facts(&[
            "invoice.payment_failed:in_1:1",
            "invoice.payment_failed:in_1:2",
            "invoice.payment_action_required:in_2:1",
        ]);

        let seen = observe(&before, &after);
        let again = observe(&after, &after);

        assert_eq!(
            seen,
            vec![
                Observation::Payment(PaymentOutcome::ActionRequired),
                Observation::Payment(PaymentOutcome::Failed),
            ]
        );
        assert!(again.is_empty());
    }

    #[test]
    fn a_refund_is_full_when_it_reaches_the_charge_amount_and_partial_otherwise() {
        let before = with_refund(with_facts(&[]), "ch_1", 1900);
        let partial = with_refund(with_facts(&["charge.refunded:ch_1:500"]), "ch_1", 1900);
        let full = with_refund(
            with_facts(&["charge.refunded:ch_1:500", "charge.refunded:ch_1:1900"]),
            "ch_1",
            1900,
        );

        assert_eq!(
            observe(&before, &partial),
            vec![Observation::Refund { full: false }]
        );
        assert_eq!(
            observe(&partial, &full),
            vec![Observation::Refund { full: true }]
        );
    }

    #[test]
    fn the_failure_ratio_covers_only_the_window_and_ignores_action_required() {
        let all = Metrics::default();
        let metrics = &all.business;
        metrics.set_payment_window(100);
        metrics.record(&[Observation::Payment(PaymentOutcome::Failed)], 1000);
        metrics.record(
            &[
                Observation::Payment(PaymentOutcome::Succeeded),
                Observation::Payment(PaymentOutcome::ActionRequired),
            ],
            1050,
        );

        assert_eq!(
            metrics.failure_window(1060),
            FailureWindow {
                failed: 1,
                total: 2
            }
        );
        assert_eq!(
            metrics.failure_window(1100),
            FailureWindow {
                failed: 0,
                total: 1
            }
        );
        assert_eq!(metrics.failure_window(1150), FailureWindow::default());
        assert_eq!(metrics.payments.get("action_required"), 1);
    }

    #[test]
    fn rendering_lists_every_label_even_at_zero() {
        let metrics = Metrics::default();
        metrics.business.record(
            &[
                Observation::DisputeOpened,
                Observation::Refund { full: true },
            ],
            10,
        );

        let text = metrics.render(&Scrape::default(), 10);

        assert!(
            text.contains("billd_payments_total{outcome=\"failed\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("billd_disputes_total{event=\"opened\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("billd_disputes_total{event=\"lost\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("billd_refunds_total{kind=\"full\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("billd_payment_failure_ratio 0.0\n"), "{text}");
    }
}
