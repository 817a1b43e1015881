//! [`BillingStore`](crate::BillingStore) on SQLite: the shared body
//! (`crate::billing_sql`), whose writes run on the single writer connection
//! inside `BEGIN IMMEDIATE`.

crate::billing_sql::billing_store!(super::SqliteStore);
