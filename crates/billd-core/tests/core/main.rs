//! billd-core's integration tests: lifecycle semantics and convergence.

// Helpers outside `#[test]` functions build fixtures that are valid by
// construction; clippy's allow-unwrap-in-tests does not reach them.
#![allow(
    clippy::unwrap_used,
    reason = "test fixtures are valid by construction"
)]

mod consume;
mod convergence;
mod credits;
mod overage;
mod pricing;
mod quota;
mod refetch;
mod schedule;
mod semantics;
mod support;
