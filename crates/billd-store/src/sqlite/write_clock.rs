//! Whether anything a customer's entitlements read (its `customers` row and
//! its `usage_counters` rows) was written since a moment, known without
//! asking the database. Every write of the serving process goes through the
//! one writer connection, and no other process writes the file while
//! `billd serve` holds its serving lock (the CLI's writing commands take the
//! same lock). On that connection:
//!
//! - SQLite's update hook reports each changed `customers` row by rowid;
//!   changed counters are reported through TEMP triggers (connection-local,
//!   so no schema change) that insert the owning customer's rowid into a
//!   TEMP table, whose insert the update hook sees too;
//! - the commit hook, called before the commit becomes visible, numbers the
//!   commit and records that number for every customer it changed;
//! - the connection is released to the pool only after its commits are
//!   visible, so the count of commits at the last release is a mark every
//!   commit up to which a later read sees.
//!
//! A snapshot read after taking a mark is current as long as its customer
//! was last changed by a commit numbered at most the mark: a commit for
//! another customer leaves it current. Inserting a customer counts as
//! changing every customer (it is rare, and so a replaced row, whose rowid
//! would change, cannot go unnoticed).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use sqlx::sqlite::{SqliteOperation, UpdateHookResult};
use sqlx::SqliteConnection;

use crate::usage::WriteMark;

/// Customers remembered as changed; past it the whole map is forgotten and
/// every customer counts as changed at that commit (one statement read
/// each, then memory again).
const REMEMBERED: usize = 65_536;

/// The TEMP table counters' changes are reported through.
const TOUCHED: &str = "billd_touched";

/// Creates the TEMP table and triggers on a writer connection (needs the
/// migrated schema). Idempotent.
const ARM: [&str; 4] = [
    "CREATE TEMP TABLE IF NOT EXISTS billd_touched (customer_rowid INTEGER PRIMARY KEY)",
    "CREATE TEMP TRIGGER IF NOT EXISTS billd_counter_inserted AFTER INSERT ON main.usage_counters \
     BEGIN \
       INSERT INTO billd_touched (customer_rowid) \
         SELECT rowid FROM customers WHERE customer_id = NEW.customer_id; \
       DELETE FROM billd_touched; \
     END",
    "CREATE TEMP TRIGGER IF NOT EXISTS billd_counter_updated AFTER UPDATE ON main.usage_counters \
     BEGIN \
       INSERT INTO billd_touched (customer_rowid) \
         SELECT rowid FROM customers WHERE customer_id IN (OLD.customer_id, NEW.customer_id); \
       DELETE FROM billd_touched; \
     END",
    "CREATE TEMP TRIGGER IF NOT EXISTS billd_counter_deleted AFTER DELETE ON main.usage_counters \
     BEGIN \
       INSERT INTO billd_touched (customer_rowid) \
         SELECT rowid FROM customers WHERE customer_id = OLD.customer_id; \
       DELETE FROM billd_touched; \
     END",
];

/// Commits of the writer connection and the customers each changed.
#[derive(Debug, Default)]
pub(super) struct WriteClock {
    /// Commit hooks called (bumped before the commit is visible).
    begun: AtomicU64,
    /// `begun` as of the writer's last release to the pool (every commit
    /// counted up to it is visible).
    settled: AtomicU64,
    /// Whether the current writer connection reports counter changes (its
    /// TEMP triggers exist); until then nothing is answered from memory.
    armed: AtomicBool,
    changes: Mutex<Changes>,
}

/// The customers changed, by commit.
#[derive(Debug, Default)]
struct Changes {
    /// Customers (rowids) the open transaction changed.
    pending: Vec<i64>,
    /// The open transaction changed every customer (it inserted one).
    pending_all: bool,
    /// The last commit that changed each customer remembered.
    changed: HashMap<i64, u64>,
    /// Every customer counts as changed at this commit.
    floor: u64,
}

impl WriteClock {
    fn changes(&self) -> MutexGuard<'_, Changes> {
        // The hooks hold the lock only to push or move numbers; a panic
        // there leaves nothing half-done that matters more than a stale
        // `pending`, which can only make answers more conservative.
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Installs the hooks and the TEMP triggers on a new writer connection.
    /// The triggers need the schema: on a database not yet migrated the
    /// clock stays unarmed until [`WriteClock::arm`] runs after migrating.
    pub(super) async fn install(
        self: &std::sync::Arc<Self>,
        conn: &mut SqliteConnection,
    ) -> Result<(), sqlx::Error> {
        self.armed.store(false, Ordering::SeqCst);
        {
            let mut handle = conn.lock_handle().await?;
            let clock = self.clone();
            handle.set_update_hook(move |change| clock.changed(&change));
            let clock = self.clone();
            handle.set_commit_hook(move || {
                clock.committing();
                true
            });
            let clock = self.clone();
            handle.set_rollback_hook(move || clock.rolled_back());
        }
        self.arm(conn).await
    }

    /// Creates the TEMP triggers when the schema has the tables they watch;
    /// arms the clock once they exist.
    pub(super) async fn arm(&self, conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        let tables: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM main.sqlite_master \
             WHERE type = 'table' AND name IN ('customers', 'usage_counters')",
        )
        .fetch_one(&mut *conn)
        .await?;
        if tables < 2 {
            return Ok(());
        }
        for statement in ARM {
            sqlx::query(statement).execute(&mut *conn).await?;
        }
        self.armed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// The update hook: a changed row of the writer connection.
    fn changed(&self, change: &UpdateHookResult<'_>) {
        match (change.database, change.table, &change.operation) {
            ("main", "customers", SqliteOperation::Insert) => self.changes().pending_all = true,
            ("main", "customers", _) | ("temp", TOUCHED, SqliteOperation::Insert) => {
                self.changes().pending.push(change.rowid);
            }
            _ => {}
        }
    }

    /// The commit hook, before the commit is visible: numbers it and
    /// records it for the customers it changed.
    pub(super) fn committing(&self) {
        let mut changes = self.changes();
        let commit = self.begun.load(Ordering::SeqCst) + 1;
        let Changes {
            pending,
            pending_all,
            changed,
            floor,
        } = &mut *changes;
        if std::mem::take(pending_all) || changed.len() + pending.len() > REMEMBERED {
            *floor = commit;
            changed.clear();
            pending.clear();
        }
        for customer in pending.drain(..) {
            changed.insert(customer, commit);
        }
        // After the changes: a mark that counts this commit can only be
        // compared with them.
        self.begun.store(commit, Ordering::SeqCst);
    }

    /// The rollback hook: the open transaction's changes never happened.
    fn rolled_back(&self) {
        let mut changes = self.changes();
        changes.pending.clear();
        changes.pending_all = false;
    }

    /// Called when the writer connection is back in the pool: no commit of
    /// it is pending any more (there is one writer connection, so no other
    /// commit can start while this runs).
    pub(super) fn settled(&self) {
        self.settled
            .store(self.begun.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// A mark for a read about to start: every commit it counts is visible
    /// to that read. `None` while counter changes are not reported.
    pub(super) fn mark(&self) -> Option<WriteMark> {
        self.armed.load(Ordering::SeqCst).then(|| WriteMark {
            commits: self.settled.load(Ordering::SeqCst),
        })
    }

    /// Whether no commit counted after `mark` changed the customer whose
    /// row is `customer` (a commit after the mark may be one the read did
    /// not see).
    pub(super) fn unchanged_since(&self, mark: WriteMark, customer: Option<i64>) -> bool {
        let Some(customer) = customer else {
            return false;
        };
        if !self.armed.load(Ordering::SeqCst) {
            return false;
        }
        let changes = self.changes();
        let last = changes
            .changed
            .get(&customer)
            .copied()
            .unwrap_or(0)
            .max(changes.floor);
        last <= mark.commits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> WriteClock {
        let clock = WriteClock::default();
        clock.armed.store(true, Ordering::SeqCst);
        clock
    }

    fn change(clock: &WriteClock, table: &str, operation: SqliteOperation, rowid: i64) {
        let database = if table == TOUCHED { "temp" } else { "main" };
        clock.changed(&UpdateHookResult {
            operation,
            database,
            table,
            rowid,
        });
    }

    #[test]
    fn a_commit_changing_a_customer_makes_only_its_marks_stale() {
        let clock = clock();
        let mark = clock.mark().unwrap();
        assert!(clock.unchanged_since(mark, Some(1)));
        change(&clock, TOUCHED, SqliteOperation::Insert, 1);
        change(&clock, "usage_requests", SqliteOperation::Insert, 7);
        clock.committing();
        assert!(!clock.unchanged_since(mark, Some(1)));
        assert!(clock.unchanged_since(mark, Some(2)), "another customer");
        assert!(clock.unchanged_since(mark, Some(7)), "not a customer row");
        // Not yet visible: a mark taken now does not count the commit.
        let before = clock.mark().unwrap();
        assert!(!clock.unchanged_since(before, Some(1)));
        clock.settled();
        let after = clock.mark().unwrap();
        assert!(clock.unchanged_since(after, Some(1)));

        change(&clock, "customers", SqliteOperation::Update, 2);
        clock.committing();
        assert!(!clock.unchanged_since(after, Some(2)));
        assert!(clock.unchanged_since(after, Some(1)));
    }

    #[test]
    fn a_rolled_back_change_changes_nothing_and_an_inserted_customer_changes_all() {
        let clock = clock();
        let mark = clock.mark().unwrap();
        change(&clock, "customers", SqliteOperation::Delete, 3);
        clock.rolled_back();
        clock.committing();
        assert!(clock.unchanged_since(mark, Some(3)));
        change(&clock, "customers", SqliteOperation::Insert, 9);
        clock.committing();
        assert!(!clock.unchanged_since(mark, Some(3)));
        assert!(!clock.unchanged_since(mark, None), "no key, no answer");
    }

    #[test]
    fn past_the_remembered_customers_every_customer_counts_as_changed() {
        let clock = clock();
        let mark = clock.mark().unwrap();
        for customer in 0..=i64::try_from(REMEMBERED).unwrap() {
            change(&clock, TOUCHED, SqliteOperation::Insert, customer);
        }
        clock.committing();
        assert!(!clock.unchanged_since(mark, Some(-1)));
        assert!(clock.changes().changed.is_empty());
    }

    #[test]
    fn an_unarmed_clock_answers_nothing_from_memory() {
        let clock = WriteClock::default();
        assert_eq!(clock.mark(), None);
        assert!(!clock.unchanged_since(WriteMark { commits: 0 }, Some(1)));
    }
}
