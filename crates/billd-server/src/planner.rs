//! Keeps PostgreSQL's planner statistics of billd's busiest tables close to
//! their rows while they are young ([`Store::refresh_statistics`]).
//! Autovacuum analyses a table a minute or more after it changed a lot;
//! until then a new database's inbox looks empty to the planner, which
//! then walks a whole index or table for each claim, finish and lookup of
//! the first burst of events.

use std::sync::Arc;
use std::time::Duration;

use billd_store::Store;
use tokio_util::sync::CancellationToken;

/// How often a serving process looks for tables whose statistics lag.
pub const STATISTICS_INTERVAL: Duration = Duration::from_secs(2);

/// Refreshes lagging statistics every `every` until `cancel` fires. A
/// failed look is retried at the next tick.
pub async fn keep_statistics(store: Arc<dyn Store>, every: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
        match store.refresh_statistics().await {
            Ok(tables) if !tables.is_empty() => {
                tracing::info!(tables = %tables.join(", "), "planner statistics refreshed");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "refreshing planner statistics failed"),
        }
    }
}
