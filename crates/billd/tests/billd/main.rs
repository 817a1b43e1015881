//! The real `billd` binary: its commands, dev mode, and crash safety.

#![expect(
    clippy::unwrap_used,
    reason = "helpers outside #[test] functions panic on setup failure"
)]

mod bench;
mod cli;
mod crash;
mod dev_keys;
mod dev_mode;
mod doctor;
mod email_crash;
mod listing;
mod readme;
mod reconcile;
#[path = "../../../billd-email/tests/support/smtp_sink.rs"]
mod smtp_sink;
