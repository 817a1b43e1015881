//! [`BillingStore`](crate::BillingStore) on PostgreSQL: the shared body
//! (`crate::billing_sql`), whose conditional writes are single statements
//! that READ COMMITTED re-checks after waiting for a concurrent writer.

use std::collections::HashMap;

crate::billing_sql::billing_store!(super::PgStore);

// The table writers of the shared `write_round`: one statement per table (`UNNEST` of one array
// per column), so that a round costs a handful of round trips to the
// server whatever its size. Same guards and conflict rules as
// [`write_commit`]: a customer is written only at its expected version
// (or created when it had no row), a link's first customer wins, an
// outbox row whose dedupe key exists is skipped, an outcome is written
// only under its lease. Rows go in in the round's order (`WITH
// ORDINALITY`), so identities and "first wins" follow it as they do row by
// row. A round naming one customer or one event twice is written row by
// row instead: one statement cannot update a row twice.

/// Each commit's state at its expected version, then the customers
/// without a row (expected version 0) created; per commit, its new version
/// and whether the customer is deleted. [`VERSION_CONFLICT`] when any
/// commit finds neither.
async fn write_states(
    conn: &mut Conn,
    commits: &[(CustomerCommit, Vec<String>)],
    now: i64,
) -> StoreResult<Vec<(i64, bool)>> {
    let mut ids = Vec::with_capacity(commits.len());
    let mut expected = Vec::with_capacity(commits.len());
    let mut states = Vec::with_capacity(commits.len());
    let mut keeps = Vec::with_capacity(commits.len());
    let mut stripes = Vec::with_capacity(commits.len());
    for (commit, _) in commits {
        let column = StripeColumn::of(&commit.state);
        let (keep, stripe) = column.binds();
        ids.push(commit.customer_id.as_str());
        expected.push(commit.expected_version);
        states.push(state_json(&commit.state)?);
        keeps.push(keep);
        stripes.push(stripe.map(str::to_owned));
    }
    let updated: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
        "UPDATE customers AS c \
         SET state = r.state::jsonb, version = c.version + 1, updated_at = $6, \
             stripe_customer_id = CASE WHEN r.keep THEN c.stripe_customer_id ELSE r.stripe END \
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::bool[], $5::text[]) \
              AS r(customer_id, expected, state, keep, stripe) \
         WHERE c.customer_id = r.customer_id AND c.version = r.expected \
         RETURNING c.customer_id, c.version, c.deleted_at",
    )
    .bind(&ids)
    .bind(&expected)
    .bind(&states)
    .bind(&keeps)
    .bind(&stripes)
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut written: HashMap<String, (i64, bool)> = updated
        .into_iter()
        .map(|(id, version, deleted_at)| (id, (version, deleted_at.is_some())))
        .collect();
    let new: Vec<usize> = (0..commits.len())
        .filter(|&i| expected[i] == 0 && !written.contains_key(ids[i]))
        .collect();
    if !new.is_empty() {
        let created: Vec<(String, i64)> = sqlx::query_as(
            "INSERT INTO customers \
               (customer_id, stripe_customer_id, state, version, created_at, updated_at) \
             SELECT r.customer_id, r.stripe, r.state::jsonb, 1, $4, $4 \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY \
                  AS r(customer_id, stripe, state, ord) \
             ORDER BY r.ord \
             ON CONFLICT (customer_id) DO NOTHING RETURNING customer_id, version",
        )
        .bind(new.iter().map(|&i| ids[i]).collect::<Vec<_>>())
        .bind(
            new.iter()
                .map(|&i| stripes[i].as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(new.iter().map(|&i| states[i].as_str()).collect::<Vec<_>>())
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        written.extend(
            created
                .into_iter()
                .map(|(id, version)| (id, (version, false))),
        );
    }
    ids.iter()
        .map(|id| {
            written
                .get(*id)
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
    let mut objects = Vec::new();
    let mut owners = Vec::new();
    for (commit, _) in commits {
        for object_id in commit_links(commit) {
            objects.push(object_id);
            owners.push(commit.customer_id.as_str());
        }
    }
    if objects.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO object_links (object_id, customer_id, created_at) \
         SELECT r.object_id, r.customer_id, $3 \
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS r(object_id, customer_id, ord) \
         ORDER BY r.ord \
         ON CONFLICT (object_id) DO NOTHING",
    )
    .bind(&objects)
    .bind(&owners)
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
    let entries: Vec<(&str, &billd_core::AuditEntry)> = commits
        .iter()
        .flat_map(|(commit, _)| {
            commit
                .audit
                .iter()
                .map(|entry| (commit.customer_id.as_str(), entry))
        })
        .collect();
    if entries.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO audit_log \
           (customer_id, at, field, before_value, after_value, reason, event_type) \
         SELECT r.customer_id, r.at, r.field, r.before_value, r.after_value, r.reason, \
                r.event_type \
         FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[], \
                     $7::text[]) WITH ORDINALITY \
              AS r(customer_id, at, field, before_value, after_value, reason, event_type, ord) \
         ORDER BY r.ord",
    )
    .bind(entries.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(entries.iter().map(|(_, e)| e.at).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|(_, e)| e.field.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|(_, e)| e.before.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|(_, e)| e.after.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|(_, e)| e.reason.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        entries
            .iter()
            .map(|(_, e)| e.event_type.as_str())
            .collect::<Vec<_>>(),
    )
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
    let mut items = Vec::new();
    for (i, (commit, _)) in commits.iter().enumerate() {
        for item in &commit.outbox {
            first.entry(item.dedupe_key.as_str()).or_insert(i);
            items.push((commit.customer_id.as_str(), item));
        }
    }
    if items.is_empty() {
        return Ok(inserted);
    }
    let keys: Vec<String> = sqlx::query_scalar(
        "INSERT INTO outbox (dedupe_key, customer_id, kind, payload, next_attempt_at, created_at) \
         SELECT r.dedupe_key, r.customer_id, r.kind, r.payload::jsonb, $5, $5 \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY \
              AS r(dedupe_key, customer_id, kind, payload, ord) \
         ORDER BY r.ord \
         ON CONFLICT (dedupe_key) DO NOTHING RETURNING dedupe_key",
    )
    .bind(
        items
            .iter()
            .map(|(_, item)| item.dedupe_key.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|(_, item)| item.kind.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        items
            .iter()
            .map(|(_, item)| item.payload.as_str())
            .collect::<Vec<_>>(),
    )
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
