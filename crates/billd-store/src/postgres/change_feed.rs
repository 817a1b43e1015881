//! Whether anything an entitlements read reads (a customer's `customers`
//! row and its `usage_counters` rows) changed since a moment, known without
//! reading, on a database that other processes write too.
//!
//! Triggers (migration `change_feed`) announce every such change on the
//! channel `billd_changes` with the customer's id, at commit and in commit
//! order, whoever writes. One connection per process listens and numbers
//! the announcements as they arrive; a mark ([`WriteMark`]) is the count
//! at a moment, and a customer whose last announcement is numbered at most
//! a mark is unchanged since that mark.
//!
//! Arrival lags commit, so a reader first *settles*: it announces a token
//! on a channel only this process listens to and waits for it to come
//! back. PostgreSQL delivers notifications of different transactions in
//! the order they committed, so once the token is back every change
//! committed before the reader asked has arrived. The readers waiting at
//! once share one token.
//!
//! While the listening connection is down nothing is answered from memory,
//! and a reconnection makes every earlier mark stale (announcements made
//! in between are lost).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgNotification, PgPool};
use tokio::sync::{oneshot, Notify};

use crate::usage::WriteMark;

/// The channel the triggers announce changes on.
const CHANGES: &str = "billd_changes";

/// Customers are tracked in this many buckets by a hash of their id; two
/// customers in one bucket only cost each other a read now and then.
const BUCKETS: usize = 1 << 16;

/// How long to wait before listening again after the connection failed.
const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// A token not back by then means a connection that no longer delivers
/// (a half-open TCP connection looks alive): its readers read the database
/// instead, and the listener connects again.
const TOKEN_TIMEOUT: Duration = Duration::from_secs(1);

/// The announcements received, by customer bucket.
#[derive(Debug)]
pub(super) struct ChangeFeed {
    /// Announcements numbered so far (the current mark).
    seen: AtomicU64,
    /// Marks below this are stale for every customer (a reconnection, or a
    /// TRUNCATE).
    floor: AtomicU64,
    /// The number of the last announcement for each bucket.
    buckets: Box<[AtomicU64]>,
    /// Whether the listening connection is up and listening.
    live: AtomicBool,
    /// Whether [`ChangeFeed::follow`] has started the listener.
    started: AtomicBool,
    sync: Mutex<Waiting>,
    /// Wakes the listener to send a token for the readers waiting.
    asked: Notify,
}

/// The readers waiting to settle.
#[derive(Debug, Default)]
struct Waiting {
    /// The token under way and the readers it answers.
    sent: Option<(u64, Vec<oneshot::Sender<bool>>)>,
    /// Readers that asked after the token under way was sent.
    waiting: Vec<oneshot::Sender<bool>>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            seen: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            live: AtomicBool::new(false),
            started: AtomicBool::new(false),
            sync: Mutex::default(),
            asked: Notify::new(),
        }
    }
}

/// The bucket of a customer id (the snapshot's `change_key`).
pub(super) fn bucket_of(customer: &str) -> i64 {
    // SipHash with fixed keys: the same id always lands in the same bucket.
    let mut hasher = DefaultHasher::new();
    customer.hash(&mut hasher);
    // The modulo keeps the value below 2^16, so it fits any integer type.
    i64::try_from(hasher.finish() % BUCKETS as u64).unwrap_or(0)
}

impl ChangeFeed {
    fn waiting(&self) -> MutexGuard<'_, Waiting> {
        // Holders only move senders and numbers; a panic leaves nothing
        // that a reader could mistake for settled.
        self.sync.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts listening on `pool` (once; later calls do nothing).
    pub(super) fn follow(self: &Arc<Self>, pool: &PgPool) {
        if self.started.swap(true, Ordering::SeqCst) {
            return;
        }
        tokio::spawn(listen(self.clone(), pool.clone()));
    }

    /// The current mark, while the listener is up.
    pub(super) fn mark(&self) -> Option<WriteMark> {
        self.live.load(Ordering::SeqCst).then(|| WriteMark {
            commits: self.seen.load(Ordering::SeqCst),
        })
    }

    /// Whether no change of the customer in bucket `key` arrived after
    /// `mark` (true only while the listener is up).
    pub(super) fn unchanged_since(&self, mark: WriteMark, key: Option<i64>) -> bool {
        let Some(bucket) = key
            .and_then(|k| usize::try_from(k).ok())
            .and_then(|k| self.buckets.get(k))
        else {
            return false;
        };
        self.live.load(Ordering::SeqCst)
            && mark.commits >= self.floor.load(Ordering::SeqCst)
            && bucket.load(Ordering::SeqCst) <= mark.commits
    }

    /// Waits until every change committed before the call has arrived;
    /// false when that cannot be known (the listener is down or its
    /// connection failed meanwhile).
    pub(super) async fn settle(&self) -> bool {
        let (answer, settled) = oneshot::channel();
        {
            let mut sync = self.waiting();
            if !self.live.load(Ordering::SeqCst) {
                return false;
            }
            sync.waiting.push(answer);
            if sync.sent.is_none() && sync.waiting.len() == 1 {
                self.asked.notify_one();
            }
        }
        tokio::time::timeout(TOKEN_TIMEOUT, settled)
            .await
            .is_ok_and(|answer| answer.unwrap_or(false))
    }

    /// Whether a token is under way.
    fn token_under_way(&self) -> bool {
        self.waiting().sent.is_some()
    }

    /// The readers waiting now, under `token` (none under way).
    fn take_waiting(&self, token: u64) -> bool {
        let mut sync = self.waiting();
        if sync.sent.is_some() || sync.waiting.is_empty() {
            return false;
        }
        let readers = std::mem::take(&mut sync.waiting);
        sync.sent = Some((token, readers));
        true
    }

    /// Answers the readers of `token`; whether readers asked since (then
    /// the next token is due).
    fn token_back(&self, token: u64) -> bool {
        let mut sync = self.waiting();
        if sync.sent.as_ref().is_some_and(|(t, _)| *t == token) {
            if let Some((_, readers)) = sync.sent.take() {
                for reader in readers {
                    let _ = reader.send(true);
                }
            }
        }
        sync.sent.is_none() && !sync.waiting.is_empty()
    }

    /// Numbers a change of `customer` (every customer when empty).
    fn changed(&self, customer: &str) {
        // Only the listener writes these; a reader loading `seen` between
        // the two stores gets a mark the change is above (stale at worst).
        let number = self.seen.load(Ordering::SeqCst) + 1;
        if customer.is_empty() {
            self.floor.store(number, Ordering::SeqCst);
        } else if let Ok(bucket) = usize::try_from(bucket_of(customer)) {
            if let Some(bucket) = self.buckets.get(bucket) {
                bucket.store(number, Ordering::SeqCst);
            }
        }
        self.seen.store(number, Ordering::SeqCst);
    }

    /// The listener is down: nothing from memory until it is back, every
    /// mark so far stale, and the readers waiting answered `false`.
    fn lost(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.changed("");
        let mut sync = self.waiting();
        let readers = sync.sent.take().map(|(_, r)| r).unwrap_or_default();
        for reader in readers.into_iter().chain(sync.waiting.drain(..)) {
            let _ = reader.send(false);
        }
    }

    /// The listener listens again: marks from now on hold.
    fn listening(&self) {
        // Announcements made while it was down were lost.
        self.changed("");
        self.live.store(true, Ordering::SeqCst);
    }
}

/// Listens until the pool closes, reconnecting after failures.
async fn listen(feed: Arc<ChangeFeed>, pool: PgPool) {
    loop {
        match listen_once(&feed, &pool).await {
            Ok(()) => {}
            Err(sqlx::Error::PoolClosed) => {
                feed.lost();
                return;
            }
            Err(e) => tracing::warn!(error = %e, "the change feed's connection failed"),
        }
        feed.lost();
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// One listening connection's life: until it is lost (`Ok`) or fails.
/// Tokens go out on the listening connection itself, so that PostgreSQL
/// hands each back to the same backend that sent it, with no other
/// process to wake on the way.
async fn listen_once(feed: &ChangeFeed, pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A backend's pid is unique on the server while it is connected, so it
    // names a channel only this listener hears. The name tells operators
    // (`pg_stat_activity`) what the long-lived connection is.
    let (_, pid): (String, i32) = sqlx::query_as(
        "SELECT set_config('application_name', 'billd change feed', false), pg_backend_pid()",
    )
    .fetch_one(&mut listener)
    .await?;
    let channel = format!("billd_settle_{pid}");
    listener.listen_all([CHANGES, channel.as_str()]).await?;
    feed.listening();
    let mut token = 0_u64;
    let mut sent_at = tokio::time::Instant::now();
    loop {
        // Every branch is cancel-safe: `try_recv` keeps a partly read
        // message, `notified` a permit it did not take.
        tokio::select! {
            biased;
            () = tokio::time::sleep_until(sent_at + TOKEN_TIMEOUT), if feed.token_under_way() => {
                return Err(sqlx::Error::Protocol(format!(
                    "token {token} not back within {TOKEN_TIMEOUT:?}"
                )));
            }
            notification = listener.try_recv() => {
                let Some(notification) = notification? else {
                    return Ok(());
                };
                received(feed, &channel, &notification);
            }
            () = feed.asked.notified() => {
                token += 1;
                if !feed.take_waiting(token) {
                    continue;
                }
                sent_at = tokio::time::Instant::now();
                // The token is no data: its commit need not wait for the disk.
                sqlx::query(
                    "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, $2)",
                )
                .bind(&channel)
                .bind(token.to_string())
                .execute(&mut listener)
                .await?;
                // What arrived meanwhile (the token among it) is buffered.
                while let Some(notification) = listener.next_buffered() {
                    received(feed, &channel, &notification);
                }
            }
        }
    }
}

/// Takes in one notification, and wakes the listener when a token came
/// back while readers wait for the next one.
fn received(feed: &ChangeFeed, channel: &str, notification: &PgNotification) {
    if notification.channel() == CHANGES {
        feed.changed(notification.payload());
    } else if notification.channel() == channel
        && notification
            .payload()
            .parse()
            .is_ok_and(|token| feed.token_back(token))
    {
        feed.asked.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> ChangeFeed {
        let feed = ChangeFeed::default();
        feed.listening();
        feed
    }

    fn key(customer: &str) -> Option<i64> {
        Some(bucket_of(customer))
    }

    #[test]
    fn a_change_makes_only_its_customers_earlier_marks_stale() {
        let feed = live();
        let mark = feed.mark().expect("live");
        feed.changed("alice");
        assert!(!feed.unchanged_since(mark, key("alice")));
        assert!(feed.unchanged_since(mark, key("bob")));
        let after = feed.mark().expect("live");
        assert!(feed.unchanged_since(after, key("alice")));
    }

    #[test]
    fn a_truncate_or_a_lost_connection_makes_every_mark_stale() {
        let feed = live();
        let mark = feed.mark().expect("live");
        feed.changed("");
        assert!(!feed.unchanged_since(mark, key("bob")));

        let mark = feed.mark().expect("live");
        feed.lost();
        assert_eq!(feed.mark(), None, "nothing from memory while down");
        feed.listening();
        assert!(
            !feed.unchanged_since(mark, key("bob")),
            "changes made while it was down were lost"
        );
        assert!(feed.unchanged_since(feed.mark().expect("live"), key("bob")));
    }

    #[test]
    fn a_snapshot_without_a_key_is_never_current() {
        let feed = live();
        let mark = feed.mark().expect("live");
        assert!(!feed.unchanged_since(mark, None));
        assert!(!feed.unchanged_since(mark, Some(-1)));
    }

    #[tokio::test]
    async fn a_token_that_does_not_come_back_settles_nothing() {
        // Live, but nothing sends or hears tokens: a connection that no
        // longer delivers. The reader gives up after `TOKEN_TIMEOUT`.
        let feed = live();
        let asked = std::time::Instant::now();
        assert!(!feed.settle().await);
        assert!(asked.elapsed() >= TOKEN_TIMEOUT);
    }

    #[tokio::test]
    async fn readers_of_a_feed_that_is_down_settle_nothing() {
        let feed = ChangeFeed::default();
        assert!(!feed.settle().await);
    }
}
