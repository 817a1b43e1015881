//! [`BillingStore`](crate::BillingStore) on SQLite: the shared body
//! (`crate::billing_sql`), whose writes run on the single writer connection
//! inside `BEGIN IMMEDIATE`.

use std::collections::HashMap;

use serde_json::{json, Value};

crate::billing_sql::billing_store!(super::SqliteStore);

// The table writers of the shared `write_round`: one statement per table, each reading its rows
// from one JSON array (`json_each`), as PostgreSQL's do from `UNNEST`.
// Every statement is a call into the writer connection's thread and runs
// while the webhooks' group commit waits for that one writer: row by row,
// a round of a few hundred events was a few thousand calls. Same guards
// and conflict rules as [`write_commit`]: a customer is written only at
// its expected version (or created when it had no row), a link's first
// customer wins, an outbox row whose dedupe key exists is skipped, an
// outcome is written only under its lease; rows go in in the round's
// order. A round naming one customer or one event twice is written row by
// row instead: one statement cannot update a row twice.

/// `rows` as the one JSON array a statement reads with `json_each`.
fn rows_json(rows: &[Value]) -> StoreResult<String> {
    serde_json::to_string(rows).map_err(|e| StoreError::Other(format!("encoding rows: {e}")))
}

/// Each commit's state at its expected version, then the customers
/// without a row (expected version 0) created; per commit, its new version
/// and whether the customer is deleted. [`VERSION_CONFLICT`] when any
/// commit finds neither.
async fn write_states(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
    now: i64,
) -> StoreResult<Vec<(i64, bool)>> {
    let mut rows = Vec::with_capacity(commits.len());
    for (commit, _) in commits {
        let column = StripeColumn::of(&commit.state);
        let (keep, stripe) = column.binds();
        rows.push(json!([
            commit.customer_id.as_str(),
            commit.expected_version,
            state_json(&commit.state)?,
            keep,
            stripe,
        ]));
    }
    // Columns renamed in a subquery: json_each's own (`id`, `key`, …) would
    // shadow the table's.
    let updated: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "UPDATE customers \
         SET state = r.state, version = version + 1, updated_at = ?2, \
             stripe_customer_id = CASE WHEN r.keep THEN stripe_customer_id ELSE r.stripe END \
         FROM (SELECT value ->> 0 AS cid, value ->> 1 AS expected, value ->> 2 AS state, \
                      value ->> 3 AS keep, value ->> 4 AS stripe \
               FROM json_each(?1)) AS r \
         WHERE customers.customer_id = r.cid AND customers.version = r.expected \
         RETURNING customer_id, version, deleted_at",
    )
    .bind(rows_json(&rows)?)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut written: HashMap<String, (i64, bool)> = updated
        .into_iter()
        .map(|(id, version, deleted_at)| (id, (version, deleted_at.is_some())))
        .collect();
    let new: Vec<Value> = commits
        .iter()
        .zip(&rows)
        .filter(|((commit, _), _)| {
            commit.expected_version == 0 && !written.contains_key(commit.customer_id.as_str())
        })
        .map(|(_, row)| json!([row[0], row[4], row[2]]))
        .collect();
    if !new.is_empty() {
        let created: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO customers \
               (customer_id, stripe_customer_id, state, version, created_at, updated_at) \
             SELECT value ->> 0, value ->> 1, value ->> 2, 1, ?2, ?2 \
             FROM json_each(?1) WHERE true ORDER BY key \
             ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id, version",
        )
        .bind(rows_json(&new)?)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        written.extend(
            created
                .into_iter()
                .map(|(id, version)| (id, (version, false))),
        );
    }
    commits
        .iter()
        .map(|(commit, _)| {
            written
                .get(commit.customer_id.as_str())
                .copied()
                .ok_or_else(|| StoreError::Conflict {
                    constraint: VERSION_CONFLICT.to_owned(),
                })
        })
        .collect()
}

/// Every commit's links (see `commit_links`); an object already linked
/// keeps its first customer.
async fn write_links(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
    now: i64,
) -> StoreResult<()> {
    let mut rows = Vec::new();
    for (commit, _) in commits {
        for object_id in commit_links(commit) {
            rows.push(json!([object_id, commit.customer_id.as_str()]));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO object_links (object_id, customer_id, created_at) \
         SELECT value ->> 0, value ->> 1, ?2 FROM json_each(?1) WHERE true ORDER BY key \
         ON CONFLICT (object_id) DO NOTHING",
    )
    .bind(rows_json(&rows)?)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every commit's audit rows, in order.
async fn write_audit(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
) -> StoreResult<()> {
    let rows: Vec<Value> = commits
        .iter()
        .flat_map(|(commit, _)| {
            commit.audit.iter().map(|entry| {
                json!([
                    commit.customer_id.as_str(),
                    entry.at,
                    entry.field.as_str(),
                    entry.before.as_deref(),
                    entry.after.as_deref(),
                    entry.reason.as_str(),
                    entry.event_type.as_str(),
                ])
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO audit_log \
           (customer_id, at, field, before_value, after_value, reason, event_type) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, \
                value ->> 6 \
         FROM json_each(?1) ORDER BY key",
    )
    .bind(rows_json(&rows)?)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Every commit's outbox rows, due now, skipping existing dedupe keys; per
/// commit, the rows inserted. Of two rows of the round with one key, the
/// first is inserted, as row by row.
async fn write_outbox(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
    now: i64,
) -> StoreResult<Vec<u64>> {
    let mut inserted = vec![0; commits.len()];
    // A key's first commit in the round: the one its row is inserted for.
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut rows = Vec::new();
    for (i, (commit, _)) in commits.iter().enumerate() {
        for item in &commit.outbox {
            first.entry(item.dedupe_key.as_str()).or_insert(i);
            rows.push(json!([
                item.dedupe_key.as_str(),
                commit.customer_id.as_str(),
                item.kind.as_str(),
                item.payload.as_str(),
            ]));
        }
    }
    if rows.is_empty() {
        return Ok(inserted);
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "INSERT INTO outbox (dedupe_key, customer_id, kind, payload, next_attempt_at, created_at) \
         SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, ?2, ?2 \
         FROM json_each(?1) WHERE true ORDER BY key \
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key",
    )
    .bind(rows_json(&rows)?)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    for key in keys {
        if let Some(&i) = first.get(key.as_str()) {
            inserted[i] += 1;
        }
    }
    Ok(inserted)
}
