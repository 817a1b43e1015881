//! billd-server through real HTTP on loopback, against SQLite files in temp
//! dirs and fresh PostgreSQL databases (`BILLD_TEST_POSTGRES_URL`).

#![expect(
    clippy::unwrap_used,
    reason = "test bodies and helpers live in plain functions the generated #[tokio::test]s call; a failed setup should panic"
)]

mod outbox_lease;
mod queue_gauges;
mod support;
mod webhooks;
mod worker;
