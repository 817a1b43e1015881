//! End to end: billd (webhook endpoint, inbox worker, lifecycle handler,
//! outbox worker, app and admin API) on a loopback port against an
//! in-process stripe-sim delivering signed webhooks over real HTTP; every
//! scenario on SQLite and PostgreSQL (`BILLD_TEST_POSTGRES_URL`).

#![expect(
    clippy::unwrap_used,
    reason = "scenarios and helpers live in plain functions the generated #[tokio::test]s call; a failed setup should panic"
)]

mod admin;
mod alerts;
mod browser;
mod checkout;
mod console;
mod credits;
mod deleted_gate;
mod deletion;
mod fuzz;
mod http_api;
mod idempotency;
mod mail;
mod notify;
mod openapi;
mod overage;
mod overage_changes;
mod plan_change;
mod pricing;
mod reconcile;
mod scenarios;
mod scheduler;
mod seed_items;
mod support;
mod ties;
mod trials;
mod usage;
mod wiring;
