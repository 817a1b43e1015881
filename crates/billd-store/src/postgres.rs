//! PostgreSQL implementation. Several billd processes may share one
//! database: claiming locks rows with `FOR UPDATE SKIP LOCKED` and takes a
//! transaction-scoped advisory lock per Stripe customer, so that two
//! processes never work on two events of one customer at once.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::claim::{in_claim_order, page_size, Picker, MAX_PAGES};
use crate::row::{
    finish_columns, first_occurrences, into_events, outcomes, DerivedColumns, EventRow,
    EVENT_COLUMNS, RECEIVED_ROWS, RECEIVED_STATS,
};
use crate::sqlite::not_processing;
use crate::{
    Backend, ClaimLimits, DeriveClaim, Derived, EventFinish, EventResult, EventStatus, InboxStats,
    InsertOutcome, NewEvent, ReceivedEvent, ReleasedClaims, Store, StoreError, StoreResult,
    StoredEvent,
};

mod billing;
mod change_feed;
mod dialect;
mod usage;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// How long a call waits for a pooled connection (including connecting to
/// a server that refuses connections) before reporting `Unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections per process.
const MAX_CONNECTIONS: u32 = 16;

/// Due rows in claim order after a keyset position, leaving out customers
/// that have an event under a live lease and rows another claimer holds.
/// `$1` = now, `$2`/`$3` = the last (created, seq) seen, `$4` = page size.
const CANDIDATES: &str = "SELECT id, stripe_customer, created, seq FROM stripe_events \
     WHERE status IN ('pending', 'failed', 'processing') \
       AND (status = 'pending' OR next_attempt_at <= $1) \
       AND (created, seq) > ($2, $3) \
       AND (stripe_customer IS NULL OR stripe_customer NOT IN ( \
             SELECT stripe_customer FROM stripe_events \
             WHERE status = 'processing' AND next_attempt_at > $1 \
               AND stripe_customer IS NOT NULL)) \
     ORDER BY created, seq LIMIT $4 \
     FOR UPDATE SKIP LOCKED";

/// A billd store in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Stripe customers of deleted accounts: their arriving events are
    /// scrubbed before they are stored.
    erased: Arc<crate::erasure::ErasedCustomers>,
    /// Changes of customers announced by the database, once followed.
    changes: Arc<change_feed::ChangeFeed>,
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), failing with `Unavailable` when
    /// the server cannot be reached within a few seconds.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = pool_options().connect_with(parse(url)?).await?;
        Ok(PgStore {
            pool,
            erased: Arc::default(),
            changes: Arc::default(),
        })
    }

    /// Like [`PgStore::connect`] but connects on first use, so that a process
    /// can start (and answer 503) while the database is down.
    pub fn connect_lazy(url: &str) -> StoreResult<Self> {
        let pool = pool_options().connect_lazy_with(parse(url)?);
        Ok(PgStore {
            pool,
            erased: Arc::default(),
            changes: Arc::default(),
        })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn parse(url: &str) -> StoreResult<PgConnectOptions> {
    // sqlx's message does not echo the URL, so no password leaks through it.
    PgConnectOptions::from_str(url)
        .map_err(|e| StoreError::Other(format!("invalid PostgreSQL URL: {e}")))
}

fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // billd's statements read a few rows through an index. JIT
                // compilation starts whenever the planner's cost estimate
                // passes `jit_above_cost`, which a misestimated join does
                // (the console's hourly counts), and then costs tens of
                // milliseconds on a statement that runs in a few. Set only
                // where the server has the setting (PostgreSQL 11 and later).
                sqlx::query(
                    "SELECT set_config('jit', 'off', false) \
                     FROM pg_settings WHERE name = 'jit'",
                )
                .execute(conn)
                .await?;
                Ok(())
            })
        })
}

/// The tables whose rows billd's hot statements find through the planner:
/// the inbox, the outbox, customers and what a round or a consume writes.
const STATISTICS_TABLES: [&str; 8] = [
    "audit_log",
    "customers",
    "idempotency_keys",
    "object_links",
    "outbox",
    "stripe_events",
    "usage_counters",
    "usage_requests",
];

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    async fn migrate(&self) -> StoreResult<()> {
        // sqlx serialises concurrent migrators with an advisory lock.
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn migration_status(&self) -> StoreResult<crate::MigrationStatus> {
        crate::migrations::postgres_status(&self.pool, &MIGRATOR).await
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_events(&self, events: &[NewEvent]) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let scrubbed = billing::scrub_incoming(self, events).await?;
        let events = scrubbed.as_deref().unwrap_or(events);
        let (mut unique, repeated) = first_occurrences(events);
        // Two processes inserting overlapping batches in different orders
        // would each wait for a key the other holds (a deadlock, one batch
        // aborted). Taking keys in one global order rules that out; within
        // one group commit, id order is as good as arrival order for `seq`.
        unique.sort_unstable_by(|&a, &b| events[a].id.cmp(&events[b].id));
        let pick = |f: fn(&NewEvent) -> &str| -> Vec<&str> {
            unique.iter().map(|&i| f(&events[i])).collect()
        };
        let pick_opt = |f: fn(&NewEvent) -> Option<&str>| -> Vec<Option<&str>> {
            unique.iter().map(|&i| f(&events[i])).collect()
        };
        let pick_int = |f: fn(&NewEvent) -> i64| -> Vec<i64> {
            unique.iter().map(|&i| f(&events[i])).collect()
        };
        // One statement for the whole batch: the arrays are unnested in
        // order, so `seq` follows the (sorted) batch order. A single statement is
        // its own transaction and commits (durably, synchronous_commit=on)
        // before it returns.
        // No insert trigger counts statuses or minutes (it would copy every
        // body into a transition table on the webhook path): the statement
        // appends its own deltas to the counters.
        let inserted: Vec<String> = sqlx::query_scalar(
            "WITH inserted AS ( \
               INSERT INTO stripe_events \
                 (id, type, api_version, created, object_id, stripe_customer, payload, \
                  received_at, status) \
               SELECT *, 'pending' FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], \
                                    $5::text[], $6::text[], $7::text[], $8::int8[]) \
               ON CONFLICT (id) DO NOTHING RETURNING id, type, received_at), \
             counted AS ( \
               INSERT INTO stripe_event_count_deltas (status, n) \
               SELECT 'pending', COUNT(*) FROM inserted HAVING COUNT(*) > 0), \
             minutes AS ( \
               INSERT INTO stripe_event_minutes \
                 (minute, events, webhooks, payments_failed, payments_succeeded, dead) \
               SELECT received_at - received_at % 60, COUNT(*), \
                 COUNT(*) FILTER (WHERE substr(id, 1, 10) <> 'evt_billd_'), \
                 COUNT(*) FILTER (WHERE type = 'invoice.payment_failed'), \
                 COUNT(*) FILTER (WHERE type = 'invoice.paid'), 0 \
               FROM inserted GROUP BY received_at - received_at % 60) \
             SELECT id FROM inserted",
        )
        .bind(pick(|e| e.id.as_str()))
        .bind(pick(|e| e.event_type.as_str()))
        .bind(pick_opt(|e| e.api_version.as_deref()))
        .bind(pick_int(|e| e.created))
        .bind(pick_opt(|e| e.object_id.as_deref()))
        .bind(pick_opt(|e| e.stripe_customer.as_deref()))
        .bind(pick(|e| e.payload.as_str()))
        .bind(pick_int(|e| e.received_at))
        .fetch_all(&self.pool)
        .await?;
        let inserted: HashSet<String> = inserted.into_iter().collect();
        Ok(outcomes(events, &repeated, &inserted))
    }

    async fn receive_events(&self, events: &[ReceivedEvent]) -> StoreResult<Vec<InsertOutcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let (mut unique, repeated) = first_occurrences(events);
        // Keys in one global order across processes (see `insert_events`).
        unique.sort_unstable_by(|&a, &b| events[a].id.cmp(&events[b].id));
        let ids: Vec<&str> = unique.iter().map(|&i| events[i].id.as_str()).collect();
        let payloads: Vec<&str> = unique.iter().map(|&i| events[i].payload.as_str()).collect();
        let received: Vec<i64> = unique.iter().map(|&i| events[i].received_at).collect();
        // One statement, its own transaction, durable (synchronous_commit
        // on) when it returns.
        let inserted: HashSet<String> = sqlx::query_scalar(
            "INSERT INTO stripe_events (id, payload, received_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::int8[]) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(ids)
        .bind(payloads)
        .bind(received)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        Ok(outcomes(events, &repeated, &inserted))
    }

    async fn received_events(&self, limit: u32) -> StoreResult<Vec<ReceivedEvent>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(RECEIVED_ROWS)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, payload, received_at)| ReceivedEvent {
                id,
                payload,
                received_at,
            })
            .collect())
    }

    async fn derive_events(&self, derived: &[Derived], now: i64) -> StoreResult<u64> {
        if derived.is_empty() {
            return Ok(0);
        }
        let scrubbed = billing::scrub_derived(self, derived).await?;
        let c = DerivedColumns::new(derived, &scrubbed, now);
        let mut conn = self.pool.acquire().await?;
        let (written, _) = derive_in(&mut conn, &c, &HashSet::new(), 0).await?;
        Ok(written)
    }

    async fn claim_event_batches(
        &self,
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<Vec<StoredEvent>> {
        if limits.groups == 0 {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let claimed = claim_in(&mut tx, now, lease_until, limits).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    async fn derive_and_claim(
        &self,
        derived: &[Derived],
        now: i64,
        lease_until: i64,
        limits: ClaimLimits,
    ) -> StoreResult<DeriveClaim> {
        let scrubbed = billing::scrub_derived(self, derived).await?;
        let c = DerivedColumns::new(derived, &scrubbed, now);
        let mut tx = self.pool.begin().await?;
        // The rows derived now are offered to the claim after the due rows
        // derived before, in claim order (`created`, then arrival: the
        // order they were read in), and the ones it takes are derived as
        // leased: one write of each such row, not a derivation and then a
        // claim.
        let mut picker = Picker::new(limits);
        // Each event derived now, with the payload written back for it
        // (scrubbed for an erased customer), if any.
        let mut fresh: Vec<(&NewEvent, Option<&str>)> = derived
            .iter()
            .enumerate()
            .filter_map(|(index, d)| match d {
                Derived::Event(event) => {
                    Some((event, scrubbed.get(index).and_then(Option::as_deref)))
                }
                Derived::Invalid { .. } => None,
            })
            .collect();
        fresh.sort_by_key(|(event, _)| event.created);
        if limits.groups > 0 {
            let mut usable = Usable::new();
            pick_due(&mut tx, now, limits, &mut picker, &mut usable).await?;
            let customers = fresh
                .iter()
                .filter_map(|(event, _)| event.stripe_customer.as_deref())
                .collect();
            settle_customers(&mut tx, now, customers, &mut usable).await?;
            for (event, _) in &fresh {
                let allowed = event
                    .stripe_customer
                    .as_ref()
                    .is_none_or(|c| usable.get(c).copied().unwrap_or(false));
                if allowed {
                    picker.offer(event.id.clone(), event.stripe_customer.clone());
                }
            }
        }
        let ids = picker.into_ids();
        let by_id: HashMap<&str, (&NewEvent, Option<&str>)> = fresh
            .iter()
            .map(|&(event, payload)| (event.id.as_str(), (event, payload)))
            .collect();
        let (taken_fresh, taken_due): (Vec<&String>, Vec<&String>) =
            ids.iter().partition(|id| by_id.contains_key(id.as_str()));
        let taken_fresh: HashSet<&str> = taken_fresh.into_iter().map(String::as_str).collect();
        let taken_due: Vec<String> = taken_due.into_iter().cloned().collect();
        let (written, leased) = if derived.is_empty() {
            (0, Vec::new())
        } else {
            derive_in(&mut tx, &c, &taken_fresh, lease_until).await?
        };
        let mut claimed = claim_picked(&mut tx, lease_until, &taken_due).await?;
        tx.commit().await?;
        // The leased fresh rows as their columns were just written.
        for (id, attempts, claim) in leased {
            let Some(&(event, scrubbed)) = by_id.get(id.as_str()) else {
                continue;
            };
            claimed.push(StoredEvent {
                payload: scrubbed.map_or_else(|| event.payload.clone(), str::to_owned),
                id,
                event_type: event.event_type.clone(),
                api_version: event.api_version.clone(),
                created: event.created,
                object_id: event.object_id.clone(),
                stripe_customer: event.stripe_customer.clone(),
                status: EventStatus::Processing,
                attempts,
                claim,
                next_attempt_at: Some(lease_until),
                last_error: None,
                received_at: event.received_at,
                processed_at: None,
            });
        }
        Ok(DeriveClaim {
            derived: written,
            claimed: in_claim_order(&ids, claimed),
        })
    }

    async fn finish_event(
        &self,
        id: &str,
        claim: i64,
        result: EventResult,
        now: i64,
    ) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await?;
        if finish(&mut conn, id, claim, &result, now).await? {
            return Ok(());
        }
        let current: Option<(String, i64)> =
            sqlx::query_as("SELECT status, claim FROM stripe_events WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
        Err(not_processing(current, claim))
    }

    async fn finish_events(&self, results: &[EventFinish], now: i64) -> StoreResult<Vec<bool>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.pool.acquire().await?;
        let finished = finish_many(&mut conn, results, now).await?;
        Ok(results
            .iter()
            .map(|done| finished.contains(&done.id))
            .collect())
    }

    async fn renew_events(&self, held: &[(String, i64)], lease_until: i64) -> StoreResult<u64> {
        if held.is_empty() {
            return Ok(0);
        }
        let ids: Vec<&str> = held.iter().map(|(id, _)| id.as_str()).collect();
        let claims: Vec<i64> = held.iter().map(|(_, claim)| *claim).collect();
        let done = sqlx::query(
            "UPDATE stripe_events AS e SET next_attempt_at = $1 \
             FROM UNNEST($2::text[], $3::int8[]) AS r(id, claim) \
             WHERE e.id = r.id AND e.claim = r.claim AND e.status = 'processing'",
        )
        .bind(lease_until)
        .bind(ids)
        .bind(claims)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn release_all_claims(&self, now: i64) -> StoreResult<ReleasedClaims> {
        crate::row::release_all_claims!(self.pool.begin().await?, now)
    }

    async fn get_event(&self, id: &str) -> StoreResult<Option<StoredEvent>> {
        let row: Option<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM stripe_events WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(StoredEvent::try_from).transpose()
    }

    async fn requeue_event(&self, id: &str, _now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE stripe_events \
             SET status = 'pending', attempts = 0, next_attempt_at = NULL, processed_at = NULL \
             WHERE id = $1",
        )
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn requeue_by_status(&self, status: EventStatus, _now: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE stripe_events \
             SET status = 'pending', attempts = 0, next_attempt_at = NULL, processed_at = NULL \
             WHERE status = $1",
        )
        .bind(status.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn refresh_statistics(&self) -> StoreResult<Vec<String>> {
        // `reltuples` is -1 before a table's first analysis. Only the
        // owner (or a superuser) may analyse a table; for anyone else
        // PostgreSQL skips it with a warning, and the change count would
        // call for it again at every look.
        let stale: Vec<String> = sqlx::query_scalar(
            "SELECT s.relname::text FROM pg_stat_user_tables s \
             JOIN pg_class c ON c.oid = s.relid \
             WHERE s.schemaname = current_schema() AND s.relname = ANY($1) \
               AND s.n_mod_since_analyze > GREATEST($2, c.reltuples) \
               AND pg_has_role(c.relowner, 'MEMBER') \
             ORDER BY s.relname",
        )
        .bind(&STATISTICS_TABLES[..])
        .bind(crate::STATISTICS_MIN_CHANGES)
        .fetch_all(&self.pool)
        .await?;
        let mut analysed = Vec::with_capacity(stale.len());
        for table in stale {
            // Another instance analysing the same table holds its lock:
            // that analysis does the job, so this one gives up rather than
            // queue behind it. (The whole table: an ANALYZE of some
            // columns leaves the change count that triggers this as it
            // is.)
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "SELECT set_config('lock_timeout', '200ms', true), \
                        set_config('default_statistics_target', $1, true)",
            )
            .bind(crate::STATISTICS_TARGET.to_string())
            .execute(&mut *tx)
            .await?;
            match sqlx::query(&format!("ANALYZE {table}"))
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {
                    tx.commit().await?;
                    analysed.push(table);
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(analysed)
    }

    async fn inbox_stats(&self) -> StoreResult<InboxStats> {
        // Triggers append each statement's net change per status
        // (migration w_stripe_event_counts). Folding them into one row per
        // status here keeps the table small; a delta appended meanwhile is
        // not in this DELETE's snapshot, so it stays and is summed next.
        // Statuses with one row are left alone, so a read with nothing to
        // fold writes nothing.
        sqlx::query(
            "WITH gone AS ( \
               DELETE FROM stripe_event_count_deltas WHERE status IN ( \
                 SELECT status FROM stripe_event_count_deltas \
                 GROUP BY status HAVING COUNT(*) > 1) \
               RETURNING status, n) \
             INSERT INTO stripe_event_count_deltas (status, n) \
             SELECT status, SUM(n) FROM gone GROUP BY status HAVING SUM(n) <> 0",
        )
        .execute(&self.pool)
        .await?;
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, SUM(n)::int8 FROM stripe_event_count_deltas GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(received_at) FROM stripe_events WHERE status IN ('pending', 'failed')",
        )
        .fetch_one(&self.pool)
        .await?;
        let (received, oldest_received): (i64, Option<i64>) =
            sqlx::query_as(RECEIVED_STATS).fetch_one(&self.pool).await?;
        let oldest = oldest.into_iter().chain(oldest_received).min();
        crate::row::stats(counts, received, oldest)
    }
}

/// The derive of [`Store::derive_events`] on the caller's connection (or
/// transaction): writes the derived columns of received rows; those in `claim` are
/// leased at once (until `lease_until`), the rest become pending (or dead).
/// Returns how many rows were written, and the id, attempts and claim of
/// each row leased.
async fn derive_in(
    conn: &mut sqlx::PgConnection,
    c: &DerivedColumns<'_>,
    claim: &HashSet<&str>,
    lease_until: i64,
) -> StoreResult<(u64, Vec<(String, i32, i64)>)> {
    let claimed: Vec<bool> = c.ids.iter().map(|id| claim.contains(id)).collect();
    // Rows another process is deriving right now are skipped, not
    // waited for (it writes the same columns); the rest are locked in
    // id order, so two derivers never deadlock.
    let written: Vec<(String, bool, i32, i64)> = sqlx::query_as(
        "UPDATE stripe_events AS e \
             SET status = CASE WHEN r.claimed THEN 'processing' ELSE r.status END, \
                 type = r.type, api_version = r.api_version, \
                 created = r.created, object_id = r.object_id, \
                 stripe_customer = r.stripe_customer, payload = COALESCE(r.payload, e.payload), \
                 last_error = r.last_error, processed_at = r.processed_at, \
                 attempts = e.attempts + CASE WHEN r.claimed THEN 1 ELSE 0 END, \
                 claim = e.claim + CASE WHEN r.claimed THEN 1 ELSE 0 END, \
                 next_attempt_at = CASE WHEN r.claimed THEN $12 ELSE e.next_attempt_at END \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], \
                         $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], \
                         $11::bool[]) \
                  AS r(id, status, type, api_version, created, object_id, stripe_customer, \
                       payload, last_error, processed_at, claimed) \
             WHERE e.id = r.id AND e.status IS NULL \
               AND e.id IN (SELECT id FROM stripe_events \
                            WHERE id = ANY($1) AND status IS NULL \
                            ORDER BY id FOR UPDATE SKIP LOCKED) \
             RETURNING e.id, r.claimed, e.attempts, e.claim",
    )
    .bind(&c.ids)
    .bind(&c.statuses)
    .bind(&c.types)
    .bind(&c.api_versions)
    .bind(&c.created)
    .bind(&c.object_ids)
    .bind(&c.customers)
    .bind(&c.payloads)
    .bind(&c.errors)
    .bind(&c.processed_at)
    .bind(&claimed)
    .bind(lease_until)
    .fetch_all(&mut *conn)
    .await?;
    let count = written.len() as u64;
    let leased = written
        .into_iter()
        .filter(|row| row.1)
        .map(|(id, _, attempts, claim)| (id, attempts, claim))
        .collect();
    Ok((count, leased))
}

/// Customer → whether this claim may take an event of theirs.
type Usable = HashMap<String, bool>;

/// The claim of [`Store::claim_event_batches`] inside the caller's
/// transaction (its advisory locks last until that transaction ends).
async fn claim_in(
    tx: &mut sqlx::PgConnection,
    now: i64,
    lease_until: i64,
    limits: ClaimLimits,
) -> StoreResult<Vec<StoredEvent>> {
    let mut picker = Picker::new(limits);
    pick_due(tx, now, limits, &mut picker, &mut Usable::new()).await?;
    let ids = picker.into_ids();
    let claimed = claim_picked(tx, lease_until, &ids).await?;
    Ok(in_claim_order(&ids, claimed))
}

/// Offers the picker the due rows already derived, in claim order, page
/// by page, skipping customers another claimer works on.
async fn pick_due(
    tx: &mut sqlx::PgConnection,
    now: i64,
    limits: ClaimLimits,
    picker: &mut Picker,
    usable: &mut Usable,
) -> StoreResult<()> {
    let page = page_size(limits);
    let mut after = (i64::MIN, i64::MIN);
    for _ in 0..MAX_PAGES {
        let rows: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(CANDIDATES)
            .bind(now)
            .bind(after.0)
            .bind(after.1)
            .bind(page)
            .fetch_all(&mut *tx)
            .await?;
        let exhausted = i64::try_from(rows.len()).is_ok_and(|n| n < page);
        let customers = rows.iter().filter_map(|row| row.1.as_deref()).collect();
        settle_customers(tx, now, customers, usable).await?;
        for (id, customer, created, seq) in rows {
            after = (created, seq);
            let allowed = customer
                .as_ref()
                .is_none_or(|c| usable.get(c).copied().unwrap_or(false));
            if allowed {
                picker.offer(id, customer);
            }
        }
        if exhausted || picker.is_full() {
            break;
        }
    }
    Ok(())
}

/// Decides, for the customers of `customers` not in `usable` yet, whether
/// this claim may take their events: it must get the customer's advisory
/// lock (another process claiming for the same customer right now holds it
/// until it commits) and find no event of theirs under a live lease.
async fn settle_customers(
    tx: &mut sqlx::PgConnection,
    now: i64,
    customers: Vec<&str>,
    usable: &mut Usable,
) -> StoreResult<()> {
    let mut fresh: Vec<String> = Vec::new();
    for customer in customers {
        if !usable.contains_key(customer) && !fresh.iter().any(|c| c == customer) {
            fresh.push(customer.to_owned());
        }
    }
    if fresh.is_empty() {
        return Ok(());
    }
    let locked: HashSet<String> = sqlx::query_scalar(
        "SELECT c FROM UNNEST($1::text[]) AS c \
             WHERE pg_try_advisory_xact_lock(hashtextextended(c, 0))",
    )
    .bind(&fresh)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    // With the lock held, a new statement sees every lease committed by a
    // claimer that held it before us.
    let leased: HashSet<String> = if locked.is_empty() {
        HashSet::new()
    } else {
        let locked: Vec<&String> = locked.iter().collect();
        sqlx::query_scalar(
            "SELECT DISTINCT stripe_customer FROM stripe_events \
                 WHERE status = 'processing' AND next_attempt_at > $1 \
                   AND stripe_customer = ANY($2)",
        )
        .bind(now)
        .bind(locked)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    };
    for customer in fresh {
        let ok = locked.contains(&customer) && !leased.contains(&customer);
        usable.insert(customer, ok);
    }
    Ok(())
}

/// Leases the derived rows `ids` (in no particular order).
async fn claim_picked(
    tx: &mut sqlx::PgConnection,
    lease_until: i64,
    ids: &[String],
) -> StoreResult<Vec<StoredEvent>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<EventRow> = sqlx::query_as(&format!(
        "UPDATE stripe_events \
             SET status = 'processing', attempts = attempts + 1, claim = claim + 1, \
                 next_attempt_at = $1 \
             WHERE id = ANY($2) \
             RETURNING {EVENT_COLUMNS}"
    ))
    .bind(lease_until)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    into_events(rows)
}

/// Writes the outcomes of events still under the lease of their claim, in
/// one statement; returns the ids written.
pub(crate) async fn finish_many(
    conn: &mut sqlx::PgConnection,
    results: &[EventFinish],
    now: i64,
) -> StoreResult<HashSet<String>> {
    let mut ids = Vec::with_capacity(results.len());
    let mut claims = Vec::with_capacity(results.len());
    let mut statuses = Vec::with_capacity(results.len());
    let mut errors = Vec::with_capacity(results.len());
    let mut next_attempts = Vec::with_capacity(results.len());
    let mut processed = Vec::with_capacity(results.len());
    for done in results {
        let (status, error, next_attempt_at, processed_at) = finish_columns(&done.result, now);
        ids.push(done.id.as_str());
        claims.push(done.claim);
        statuses.push(status.as_str());
        errors.push(error);
        next_attempts.push(next_attempt_at);
        processed.push(processed_at);
    }
    // One statement (one round trip) for the whole batch.
    let finished: HashSet<String> = sqlx::query_scalar(
        "UPDATE stripe_events AS e \
         SET status = r.status, last_error = COALESCE(r.last_error, e.last_error), \
             next_attempt_at = r.next_attempt_at, processed_at = r.processed_at \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], \
                     $6::int8[]) \
              AS r(id, status, last_error, next_attempt_at, processed_at, claim) \
         WHERE e.id = r.id AND e.status = 'processing' AND e.claim = r.claim \
         RETURNING e.id",
    )
    .bind(ids)
    .bind(statuses)
    .bind(errors)
    .bind(next_attempts)
    .bind(processed)
    .bind(claims)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    Ok(finished)
}

/// Writes one outcome if the event is still under the lease of `claim`;
/// true when it was.
async fn finish(
    conn: &mut sqlx::PgConnection,
    id: &str,
    claim: i64,
    result: &EventResult,
    now: i64,
) -> StoreResult<bool> {
    let (status, error, next_attempt_at, processed_at) = finish_columns(result, now);
    let done = sqlx::query(
        "UPDATE stripe_events \
         SET status = $1, last_error = COALESCE($2, last_error), next_attempt_at = $3, \
             processed_at = $4 \
         WHERE id = $5 AND status = 'processing' AND claim = $6",
    )
    .bind(status.as_str())
    .bind(error)
    .bind(next_attempt_at)
    .bind(processed_at)
    .bind(id)
    .bind(claim)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() > 0)
}
