//! Consumes guarded by the customer's version, for the usage endpoint's hot
//! path. The endpoint decides the counter and the limit from a customer
//! state it may have read earlier (`billd_core::consume_target`); the store
//! applies the consume only if that state is still the customer's current
//! one, checked in the same transaction as the conditional update. So the
//! endpoint needs no read before a consume, and a plan change, a dispute or
//! a deletion committed since the state was read is never missed: the
//! answer is [`GuardedOutcome::Stale`], nothing is written, and the caller
//! reads the customer again.

use async_trait::async_trait;
use billd_core::{CustomerId, CustomerState, Usage, UsageKey};

use crate::billing::{corrupt, usage_from_rows};
use crate::{StoreResult, UsageOutcome, UsageRequest};

/// One consume decided on the customer state read at `customer_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedConsume {
    /// The consume (`BillingStore::consume`'s request).
    pub request: UsageRequest,
    /// The limit of the conditional update (0 admits nothing new but still
    /// answers a repeated idempotency key).
    pub limit: u64,
    /// `CustomerRecord::version` of the state the limit was computed from.
    pub customer_version: i64,
}

/// What a guarded consume found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardedOutcome {
    /// The customer is still at that version and not deleted: the answer
    /// `BillingStore::consume` gives (a repeated key's stored answer, an
    /// applied consume, or a refusal).
    Decided(UsageOutcome),
    /// The customer's version moved, or it was deleted, or it does not
    /// exist: nothing was written or answered; read it again and decide again.
    Stale,
}

/// Version-guarded consumes. Implemented by both stores; the contract tests
/// are in `tests/billing/usage.rs`.
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// One guarded consume, committed before it returns (the version check,
    /// the idempotency key and the conditional update are atomic).
    async fn consume_guarded(
        &self,
        consume: &GuardedConsume,
        now: i64,
    ) -> StoreResult<GuardedOutcome>;

    /// Several guarded consumes committed together (group commit): each
    /// answer is what [`UsageStore::consume_guarded`] would give for that
    /// consume alone, in order; one that fails fails alone. An error for
    /// the whole batch means nothing was committed.
    async fn consume_guarded_batch(
        &self,
        batch: &[GuardedConsume],
        now: i64,
    ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>>;

    /// The customer's version, deletion, state (unless it is at
    /// `known_version`) and counters in one statement on a reader
    /// connection (never the writer); `None` when there is no such customer.
    async fn usage_snapshot(
        &self,
        customer: &CustomerId,
        known_version: Option<i64>,
    ) -> StoreResult<Option<UsageSnapshot>>;

    /// [`UsageStore::usage_snapshot`] of several customers, answered in
    /// order, as of one moment after the call: every write committed before
    /// it is in every answer. On PostgreSQL one statement for all of them
    /// (so that the reads that arrive together cost one round trip); where
    /// reads are local (SQLite) one read each.
    async fn usage_snapshots(
        &self,
        reads: &[(CustomerId, Option<i64>)],
    ) -> StoreResult<Vec<Option<UsageSnapshot>>> {
        let mut snapshots = Vec::with_capacity(reads.len());
        for (customer, known_version) in reads {
            snapshots.push(self.usage_snapshot(customer, *known_version).await?);
        }
        Ok(snapshots)
    }

    /// A mark to take just before a [`UsageStore::usage_snapshot`], so that
    /// [`UsageStore::still_current`] can later tell, without reading, that
    /// nothing of that customer was written since. `Some` only where this
    /// store learns of every write to the database: SQLite under `billd
    /// serve`'s serving lock (whose writes all go through its one writer
    /// connection), and PostgreSQL while it follows the changes of every
    /// process ([`UsageStore::follow_changes`]).
    fn write_mark(&self) -> Option<WriteMark> {
        None
    }

    /// Whether nothing that `snapshot` reads (the customer's row and its
    /// counters) has been committed since `mark` was taken, the snapshot
    /// having been read after taking it: then the snapshot is still what
    /// the database held when [`UsageStore::settle`] last answered true (on
    /// SQLite: now). Writes for other customers do not matter.
    fn still_current(&self, mark: WriteMark, snapshot: &UsageSnapshot) -> bool {
        let _ = (mark, snapshot);
        false
    }

    /// Waits until [`UsageStore::still_current`] accounts for every write
    /// committed before the call, in any process; false when the store
    /// cannot tell (then read instead). On PostgreSQL one round trip,
    /// shared by the readers that ask together; where every write goes
    /// through this store (SQLite) there is nothing to wait for
    /// ([`UsageStore::settles`] is false).
    async fn settle(&self) -> bool {
        true
    }

    /// Whether [`UsageStore::settle`] has anything to wait for, so that a
    /// memory answer on SQLite needs no await at all.
    fn settles(&self) -> bool {
        false
    }

    /// Starts following the writes of other processes where the store can
    /// (PostgreSQL: listening for the database's announcements of changed
    /// customers), so that it gives write marks; later calls do nothing.
    /// Needs a tokio runtime.
    fn follow_changes(&self) {}
}

/// A point in the store's sequence of commits ([`UsageStore::write_mark`]):
/// every commit up to it was visible when it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteMark {
    pub(crate) commits: u64,
}

/// The columns of a snapshot row: `$known` is the version whose state the
/// caller has (or NULL), `$key` the column naming the customer's row to the
/// store's change tracking (`change_key`).
macro_rules! snapshot_columns {
    ($known:literal, $key:literal) => {
        concat!(
            "c.version, c.deleted_at IS NOT NULL AS deleted, \
             COALESCE(c.version = ",
            $known,
            ", FALSE) AS known, \
             CASE WHEN c.version = ",
            $known,
            " THEN NULL ELSE CAST(c.state AS TEXT) END AS state, ",
            $key,
            " AS change_key, u.feature, u.period_start, u.used"
        )
    };
}

/// `$1` customer, `$2` the version whose state the caller has (or NULL):
/// the customer's version, whether it is deleted, its state unless at
/// `$2`, and one row per counter (NULLs when it has none). On SQLite, whose
/// writer reports the changed customers by their row's rowid
/// (`sqlite::write_clock`), `change_key` is that rowid. A customer's rowid
/// never changes: billd never replaces a customers row (an insert of one
/// invalidates every memory answer anyway) and never runs `VACUUM`.
pub(crate) const SNAPSHOT_SQLITE: &str = concat!(
    "SELECT ",
    snapshot_columns!("$2", "c.rowid"),
    " FROM customers AS c \
     LEFT JOIN usage_counters AS u ON u.customer_id = c.customer_id \
     WHERE c.customer_id = $1"
);

/// The snapshots of many customers in one statement (PostgreSQL): `$1` the
/// customers, `$2` the version whose state the caller has for each (NULL
/// where none), `i` the 1-based position of the customer the row is for;
/// otherwise the rows of [`SNAPSHOT_SQLITE`], with no change tracking
/// (`change_key` NULL). A customer that does not exist has no row.
pub(crate) const SNAPSHOTS: &str = concat!(
    "SELECT r.i, ",
    snapshot_columns!("r.known", "CAST(NULL AS BIGINT)"),
    " FROM UNNEST($1::TEXT[], $2::BIGINT[]) WITH ORDINALITY AS r(customer_id, known, i) \
     JOIN customers AS c ON c.customer_id = r.customer_id \
     LEFT JOIN usage_counters AS u ON u.customer_id = c.customer_id"
);

/// A row of [`SNAPSHOT_SQLITE`] (and of [`SNAPSHOTS`] after its position).
pub(crate) type SnapshotRow = (
    i64,
    bool,
    bool,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// A customer's billing state and counters as one read saw them (for
/// `GET …/entitlements`, which keeps states it parsed).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageSnapshot {
    /// `CustomerRecord::version` at the read.
    pub version: i64,
    /// Whether the customer is deleted.
    pub deleted: bool,
    /// The state at `version`; `None` when that is the version the caller
    /// said it has.
    pub state: Option<CustomerState>,
    /// Every counter of the customer: (feature, period column, used).
    counters: Vec<(String, i64, i64)>,
    /// The customer's row to the store's change tracking
    /// ([`UsageStore::still_current`]), where there is one.
    pub(crate) change_key: Option<i64>,
}

impl UsageSnapshot {
    /// The counters of `keys` (the current periods' ones).
    pub fn usage(&self, keys: &[UsageKey]) -> Usage {
        usage_from_rows(keys, self.counters.clone())
    }
}

/// The snapshot of [`SNAPSHOT_SQLITE`]'s rows (one customer's); `None` when there are none (no
/// such customer).
pub(crate) fn snapshot_of(
    customer: &str,
    rows: Vec<SnapshotRow>,
) -> StoreResult<Option<UsageSnapshot>> {
    let Some((version, deleted, known, state, change_key, ..)) = rows.first().cloned() else {
        return Ok(None);
    };
    let state = match (known, state) {
        (true, _) => None,
        (false, None) => Some(CustomerState::default()),
        (false, Some(json)) => {
            Some(serde_json::from_str(&json).map_err(|e| corrupt("customers.state", customer, e))?)
        }
    };
    let counters = rows
        .into_iter()
        .filter_map(|(.., feature, period, used)| Some((feature?, period?, used?)))
        .collect();
    Ok(Some(UsageSnapshot {
        version,
        deleted,
        state,
        counters,
        change_key,
    }))
}
