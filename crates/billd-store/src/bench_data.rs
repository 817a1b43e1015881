//! Bulk data for benchmarks: many customers with their Stripe links,
//! events, audit rows and emails, written in large multi-row INSERTs into
//! a database billd has migrated (what years of webhooks would leave, in a
//! minute). Only `billd bench console` uses it; nothing here is a path a
//! running billd takes.

use std::str::FromStr;

use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
use sqlx::QueryBuilder;

use crate::StoreResult;

/// What [`seed_console`] writes.
#[derive(Debug, Clone)]
pub struct ConsoleSeed {
    /// Prefix of every customer id (`{prefix}{i}`), Stripe id and event id,
    /// so runs on a shared database stay apart.
    pub prefix: String,
    /// Customers, `0..customers`.
    pub customers: usize,
    /// Events per customer (1 in 100 dead, 1 in 50 skipped, the rest
    /// processed), received over the 30 days before `now`.
    pub events_per_customer: usize,
    /// The instant the data ends at.
    pub now: i64,
}

impl ConsoleSeed {
    /// Customer `i`'s id.
    pub fn customer(&self, i: usize) -> String {
        format!("{}{i}", self.prefix)
    }

    /// Customer `i`'s email.
    pub fn email(&self, i: usize) -> String {
        format!("{}{i}@example.com", self.prefix)
    }

    /// Customer `i`'s Stripe customer id.
    pub fn stripe_customer(&self, i: usize) -> String {
        format!("cus_{}{i}", self.prefix)
    }

    /// Event `j` of customer `i`.
    pub fn event(&self, i: usize, j: usize) -> String {
        format!("evt_{}{i}_{j}", self.prefix)
    }
}

/// Rows per INSERT statement (well under both databases' bind limits).
const ROWS: usize = 400;

/// Event types the seeded events cycle through.
const TYPES: [&str; 6] = [
    "customer.subscription.created",
    "invoice.finalized",
    "invoice.paid",
    "customer.subscription.updated",
    "invoice_payment.paid",
    "invoice.payment_failed",
];

/// One event's row.
struct EventRow {
    id: String,
    event_type: &'static str,
    created: i64,
    object_id: String,
    stripe_customer: String,
    payload: String,
    status: &'static str,
    last_error: Option<&'static str>,
}

fn event_row(seed: &ConsoleSeed, i: usize, j: usize) -> EventRow {
    let n = i * seed.events_per_customer + j;
    let total = (seed.customers * seed.events_per_customer).max(1);
    // Spread evenly over 30 days, the newest last.
    let age = i64::try_from((total - n) * 30 * 86_400 / total).unwrap_or(0);
    let created = seed.now - age;
    let event_type = TYPES[n % TYPES.len()];
    let object_id = format!("in_{}{i}_{j}", seed.prefix);
    let stripe_customer = seed.stripe_customer(i);
    let id = seed.event(i, j);
    let payload = serde_json::json!({
        "id": id, "object": "event", "api_version": "2026-09-30.endive",
        "created": created, "type": event_type, "livemode": false,
        "pending_webhooks": 1, "request": { "id": null, "idempotency_key": null },
        "data": { "object": {
            "id": object_id, "object": "invoice", "customer": stripe_customer,
            "status": "paid", "currency": "eur", "amount_due": 1900, "amount_paid": 1900,
            "billing_reason": "subscription_cycle", "hosted_invoice_url": null,
        }},
    })
    .to_string();
    let (status, last_error) = match n % 100 {
        0 => (
            "dead",
            Some("payload_invalid: data.object.id: not a Stripe id"),
        ),
        1 | 2 => ("skipped", None),
        _ => ("processed", None),
    };
    EventRow {
        id,
        event_type,
        created,
        object_id,
        stripe_customer,
        payload,
        status,
        last_error,
    }
}

/// The body of [`seed_console`] for one pool type (the SQL is the same).
macro_rules! seed_with {
    ($pool:expr, $seed:expr, $json:expr, $analyze:expr) => {{
        let (pool, seed) = (&$pool, $seed);
        let state = serde_json::to_string(&billd_core::CustomerState::default())
            .unwrap_or_else(|_| "{}".to_owned());
        let email = crate::NewOutboxItem::from_effect(&billd_core::Effect::Email {
            template: billd_core::EmailTemplate::RefundIssued,
            dedupe_key: "bench".to_owned(),
            params: std::collections::BTreeMap::new(),
        })?;
        let mut start = 0;
        while start < seed.customers {
            let end = (start + ROWS).min(seed.customers);
            let mut tx = pool.begin().await?;
            let mut q = QueryBuilder::new(
                "INSERT INTO customers (customer_id, stripe_customer_id, email, name, state, \
                 version, created_at, updated_at) ",
            );
            q.push_values(start..end, |mut b, i| {
                b.push_bind(seed.customer(i))
                    .push_bind(seed.stripe_customer(i))
                    .push_bind(seed.email(i))
                    .push_bind(format!("Customer {i}"))
                    .push_bind(state.clone())
                    .push_unseparated($json)
                    .push_bind(1_i64)
                    .push_bind(seed.now - 40 * 86_400)
                    .push_bind(seed.now - 40 * 86_400);
            });
            q.build().execute(&mut *tx).await?;
            let mut q =
                QueryBuilder::new("INSERT INTO object_links (object_id, customer_id, created_at) ");
            q.push_values(start..end, |mut b, i| {
                b.push_bind(seed.stripe_customer(i))
                    .push_bind(seed.customer(i))
                    .push_bind(seed.now);
            });
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::new(
                "INSERT INTO audit_log (customer_id, at, field, before_value, after_value, \
                 reason, event_type) ",
            );
            q.push_values(start..end, |mut b, i| {
                b.push_bind(seed.customer(i))
                    .push_bind(seed.now - 86_400)
                    .push_bind("access")
                    .push_bind("none")
                    .push_bind("paid")
                    .push_bind(seed.event(i, 0))
                    .push_bind("invoice.paid");
            });
            q.build().execute(&mut *tx).await?;
            let mut q = QueryBuilder::new(
                "INSERT INTO outbox (dedupe_key, customer_id, kind, payload, status, attempts, \
                 created_at, done_at) ",
            );
            q.push_values(start..end, |mut b, i| {
                b.push_bind(format!("refund_issued:{}", seed.customer(i)))
                    .push_bind(seed.customer(i))
                    .push_bind(email.kind.clone())
                    .push_bind(email.payload.clone())
                    .push_unseparated($json)
                    .push_bind("sent")
                    .push_bind(1_i32)
                    .push_bind(seed.now - 86_400)
                    .push_bind(seed.now - 86_400);
            });
            q.build().execute(&mut *tx).await?;
            tx.commit().await?;
            start = end;
        }
        let pairs: Vec<(usize, usize)> = (0..seed.customers)
            .flat_map(|i| (0..seed.events_per_customer).map(move |j| (i, j)))
            .collect();
        for chunk in pairs.chunks(ROWS * 25) {
            let mut tx = pool.begin().await?;
            for rows in chunk.chunks(ROWS) {
                let mut q = QueryBuilder::new(
                    "INSERT INTO stripe_events (id, type, api_version, created, object_id, \
                     stripe_customer, payload, status, attempts, last_error, received_at, \
                     processed_at) ",
                );
                q.push_values(rows, |mut b, (i, j)| {
                    let e = event_row(seed, *i, *j);
                    b.push_bind(e.id)
                        .push_bind(e.event_type)
                        .push_bind("2026-09-30.endive")
                        .push_bind(e.created)
                        .push_bind(e.object_id)
                        .push_bind(e.stripe_customer)
                        .push_bind(e.payload)
                        .push_unseparated($json)
                        .push_bind(e.status)
                        .push_bind(1_i32)
                        .push_bind(e.last_error)
                        .push_bind(e.created + 1)
                        .push_bind(e.created + 2);
                });
                q.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        // The store's PostgreSQL inserts count their own rows per minute;
        // these did not (on SQLite the triggers did, and this recounts the
        // same), so the overview reads the counters it would in production.
        for statement in crate::console::RECOUNT_EVENT_MINUTES {
            sqlx::query(statement).execute(pool).await?;
        }
        // PostgreSQL's autovacuum would have analysed (and vacuumed) a
        // database that grew this way over years; a bulk load has not.
        // billd never analyses a SQLite file, so neither does the bench.
        if let Some(analyze) = $analyze {
            sqlx::query(analyze).execute(pool).await?;
        }
        Ok(())
    }};
}

/// Writes `seed` into the database at `url` (`sqlite://…` or
/// `postgres://…`), which billd must have migrated.
pub async fn seed_console(url: &str, seed: &ConsoleSeed) -> StoreResult<()> {
    if url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(url)?
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(std::time::Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        seed_with!(pool, seed, "", None::<&str>)
    } else {
        let pool = PgPoolOptions::new().max_connections(2).connect(url).await?;
        seed_with!(pool, seed, "::jsonb", Some("VACUUM ANALYZE"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_spread_over_thirty_days_with_a_few_dead_and_skipped() {
        let seed = ConsoleSeed {
            prefix: "b_".into(),
            customers: 10,
            events_per_customer: 10,
            now: 1_000_000_000,
        };
        let rows: Vec<EventRow> = (0..10)
            .flat_map(|i| (0..10).map(move |j| (i, j)))
            .map(|(i, j)| event_row(&seed, i, j))
            .collect();
        assert_eq!(rows[0].created, seed.now - 30 * 86_400);
        assert!(rows.windows(2).all(|w| w[0].created <= w[1].created));
        assert!(rows.last().unwrap().created < seed.now);
        let count = |s: &str| rows.iter().filter(|r| r.status == s).count();
        assert_eq!(
            (count("dead"), count("skipped"), count("processed")),
            (1, 2, 97)
        );
        assert!(rows.iter().all(|r| r.payload.contains(&r.id)));
    }
}
