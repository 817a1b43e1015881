//! [`CheckoutStore`] on PostgreSQL: each write is one statement whose
//! condition (no row yet, or the generation read) the database checks
//! atomically.

use async_trait::async_trait;
use billd_core::CustomerId;

use super::PgStore;
use crate::checkout::{check_generation, CheckoutRow, CHECKOUT_COLUMNS};
use crate::{CheckoutRecord, CheckoutStore, StoreResult};

#[async_trait]
impl CheckoutStore for PgStore {
    async fn get_checkout(&self, customer_id: &CustomerId) -> StoreResult<Option<CheckoutRecord>> {
        let row: Option<CheckoutRow> = sqlx::query_as(&format!(
            "SELECT {CHECKOUT_COLUMNS} FROM checkout_sessions WHERE customer_id = $1"
        ))
        .bind(customer_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(CheckoutRecord::try_from).transpose()
    }

    async fn put_checkout(&self, checkout: &CheckoutRecord, now: i64) -> StoreResult<bool> {
        check_generation(checkout)?;
        let sql = if checkout.generation == 1 {
            "INSERT INTO checkout_sessions (customer_id, generation, session_id, url, plan, \
               currency, fingerprint, expires_at, closed_at, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9, $9) \
             ON CONFLICT (customer_id) DO NOTHING"
        } else {
            "UPDATE checkout_sessions SET generation = $2, session_id = $3, url = $4, \
               plan = $5, currency = $6, fingerprint = $7, expires_at = $8, \
               closed_at = NULL, created_at = $9, updated_at = $9 \
             WHERE customer_id = $1 AND generation = $2 - 1"
        };
        let done = sqlx::query(sql)
            .bind(checkout.customer_id.as_str())
            .bind(checkout.generation)
            .bind(&checkout.session_id)
            .bind(&checkout.url)
            .bind(&checkout.plan)
            .bind(&checkout.currency)
            .bind(&checkout.fingerprint)
            .bind(checkout.expires_at)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn close_checkout(
        &self,
        customer_id: &CustomerId,
        session_id: &str,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE checkout_sessions SET closed_at = $3, updated_at = $3 \
             WHERE customer_id = $1 AND session_id = $2 AND closed_at IS NULL",
        )
        .bind(customer_id.as_str())
        .bind(session_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
