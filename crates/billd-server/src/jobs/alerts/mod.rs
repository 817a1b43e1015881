//! Operator alerts: conditions that mean billing is breaking, sent to the
//! admin email (`BILLD_ADMIN_EMAIL`) and, when `BILLD_ALERT_WEBHOOK_URL` is
//! set, to a JSON webhook (Slack-compatible `{"text": …}` plus structured
//! fields).
//!
//! Every alert is one outbox row per channel, so it is retried like any
//! email and never lost by a crash. Its dedupe key is
//! `{kind}:{subject}:{bucket}` (`:webhook` appended for the webhook
//! channel), where `bucket` is the occurrence time divided by the dedupe
//! window: however many times a condition is seen within one window, and
//! however many billd instances see it, the outbox keeps one row per
//! channel. The next window alerts again.
//!
//! Conditions ([`AlertMonitor::check_once`], run every
//! `BILLD_ALERT_CHECK_INTERVAL_SECS`): inbox events or outbox rows
//! dead-lettered; a spike of webhook signature failures; the payment failure
//! rate over its threshold; no webhook for a long time while renewals were
//! due. The lifecycle's own alerts (a dispute opened, …) get a row per
//! channel through `pipeline::outbox_items`; reconciliation reports drift with
//! [`Alerter::raise_drift`].

mod alerter;
mod checks;
mod config;
mod delivery;
mod monitor;

pub use alerter::{alert_label, dedupe_key, Alerter};
pub use config::{AlertConfig, SIGNATURE_FAILURE_CODES};
pub use delivery::AlertDelivery;
pub use monitor::AlertMonitor;
