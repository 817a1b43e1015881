//! [`BillingStore`](crate::BillingStore) on PostgreSQL: the shared body
//! (`crate::billing_sql`), whose conditional writes are single statements
//! that READ COMMITTED re-checks after waiting for a concurrent writer.

crate::billing_sql::billing_store!(super::PgStore);
