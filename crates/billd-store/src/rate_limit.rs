//! Rate limits shared by every billd process on one database: a fixed window
//! per (scope, subject), starting at the first hit it counts. One upsert
//! decides and counts, so two processes (or two requests) can never both
//! take the last hit of a window; the same call prunes ended windows, so
//! the table holds at most the subjects active in the last window.

use async_trait::async_trait;

use crate::dialect::Dialect;
use crate::{PgStore, SqliteStore, StoreError, StoreResult};

/// What [`RateLimitStore::take_rate_token`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Counted; go ahead.
    Allowed,
    /// The window is full: nothing was counted; the window ends in
    /// `retry_after_secs` (at least 1).
    Limited {
        /// Seconds until the window ends.
        retry_after_secs: i64,
    },
}

/// The rate limit table. Implemented by both stores.
#[async_trait]
pub trait RateLimitStore: Send + Sync + 'static {
    /// Counts one hit of `subject` in `scope` if fewer than `limit` hits
    /// were counted in its current window of `window_secs`; a window that
    /// has ended is replaced by one starting `now`. Atomic across processes.
    async fn take_rate_token(
        &self,
        scope: &str,
        subject: &str,
        limit: u32,
        window_secs: i64,
        now: i64,
    ) -> StoreResult<RateDecision>;
}

/// What the upsert returns: the row after it.
#[derive(sqlx::FromRow)]
struct WindowRow {
    expires_at: i64,
    hits: i64,
}

/// [`RateLimitStore`] for a store with a [`Dialect`].
macro_rules! rate_limit_store {
    ($store:ty) => {
        #[async_trait]
        impl RateLimitStore for $store {
            async fn take_rate_token(
                &self,
                scope: &str,
                subject: &str,
                limit: u32,
                window_secs: i64,
                now: i64,
            ) -> StoreResult<RateDecision> {
                if window_secs < 1 {
                    return Err(StoreError::Other(format!(
                        "rate limit window must be at least 1 s, got {window_secs}"
                    )));
                }
                // Ended windows would be replaced by the upsert anyway;
                // deleting them keeps the table to the active subjects.
                sqlx::query("DELETE FROM rate_limits WHERE expires_at <= $1")
                    .bind(now)
                    .execute(self.writer())
                    .await?;
                // A full window keeps `hits` at `limit + 1`: the refused
                // hit is not counted, and the answer tells it apart.
                let row: WindowRow = sqlx::query_as(
                    "INSERT INTO rate_limits (scope, subject, window_start, expires_at, hits) \
                     VALUES ($1, $2, $3, $3 + $4, 1) \
                     ON CONFLICT (scope, subject) DO UPDATE SET \
                       window_start = CASE WHEN rate_limits.expires_at <= $3 \
                         THEN $3 ELSE rate_limits.window_start END, \
                       expires_at = CASE WHEN rate_limits.expires_at <= $3 \
                         THEN $3 + $4 ELSE rate_limits.expires_at END, \
                       hits = CASE WHEN rate_limits.expires_at <= $3 THEN 1 \
                         WHEN rate_limits.hits > $5 THEN rate_limits.hits \
                         ELSE rate_limits.hits + 1 END \
                     RETURNING expires_at, hits",
                )
                .bind(scope)
                .bind(subject)
                .bind(now)
                .bind(window_secs)
                .bind(i64::from(limit))
                .fetch_one(self.writer())
                .await?;
                Ok(if row.hits <= i64::from(limit) {
                    RateDecision::Allowed
                } else {
                    RateDecision::Limited {
                        retry_after_secs: (row.expires_at - now).max(1),
                    }
                })
            }
        }
    };
}

rate_limit_store!(SqliteStore);
rate_limit_store!(PgStore);
