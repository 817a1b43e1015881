//! End-to-end tests of stripe-sim through its request handler and over real HTTP.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns: a failed unwrap is a failed test"
)]

mod api;
mod billing;
mod conformance;
mod meters;
mod node;
mod payments;
mod properties;
mod python;
mod shapes;
mod support;
mod validation;
mod webhooks;
