//! Single-flight Checkout: one row per customer naming the latest Checkout
//! session billd created for them. The server answers repeated identical
//! checkout requests with this session while it is open, and replaces the
//! row only by compare-and-set on `generation`, so concurrent requests and
//! several billd processes converge on one session.

use async_trait::async_trait;
use billd_core::CustomerId;
use serde::Serialize;

use crate::dialect::Dialect;
use crate::{PgStore, SqliteStore, StoreError, StoreResult};

/// A customer's latest Checkout session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckoutRecord {
    /// Whose session.
    pub customer_id: CustomerId,
    /// Counts the sessions billd created for this customer (1 for the
    /// first); part of the Stripe idempotency key of the session.
    pub generation: i64,
    /// The Stripe Checkout session (`cs_…`).
    pub session_id: String,
    /// Where the customer pays.
    pub url: String,
    /// The plan it sells.
    pub plan: String,
    /// Its currency.
    pub currency: String,
    /// A digest of the request it answers (plan, currency, URLs, promotion
    /// code): an identical request gets this session back.
    pub fingerprint: String,
    /// When Stripe expires the session (unix seconds).
    pub expires_at: i64,
    /// When billd expired it or saw it end; `None` while it may be open.
    pub closed_at: Option<i64>,
    /// When the row was written.
    pub created_at: i64,
}

/// The checkout table. Implemented by both stores.
#[async_trait]
pub trait CheckoutStore: Send + Sync + 'static {
    /// The customer's latest Checkout session, if billd ever created one.
    async fn get_checkout(&self, customer_id: &CustomerId) -> StoreResult<Option<CheckoutRecord>>;

    /// Stores `checkout` (its `closed_at` is ignored: a new session is open)
    /// as the customer's latest session if the stored row's generation is
    /// `checkout.generation - 1` (no row counts as 0). Returns false, writing
    /// nothing, when another writer got there first. The customer must exist.
    async fn put_checkout(&self, checkout: &CheckoutRecord, now: i64) -> StoreResult<bool>;

    /// Marks the customer's row closed if it still names `session_id` and is
    /// open; a no-op otherwise.
    async fn close_checkout(
        &self,
        customer_id: &CustomerId,
        session_id: &str,
        now: i64,
    ) -> StoreResult<()>;
}

/// Columns selected wherever a full [`CheckoutRecord`] is read.
pub(crate) const CHECKOUT_COLUMNS: &str = "customer_id, generation, session_id, url, plan, \
     currency, fingerprint, expires_at, closed_at, created_at";

/// A `checkout_sessions` row as both databases return it.
#[derive(sqlx::FromRow)]
pub(crate) struct CheckoutRow {
    customer_id: String,
    generation: i64,
    session_id: String,
    url: String,
    plan: String,
    currency: String,
    fingerprint: String,
    expires_at: i64,
    closed_at: Option<i64>,
    created_at: i64,
}

impl TryFrom<CheckoutRow> for CheckoutRecord {
    type Error = StoreError;

    fn try_from(row: CheckoutRow) -> Result<Self, Self::Error> {
        let customer_id = CustomerId::parse(&row.customer_id).map_err(|e| {
            StoreError::Other(format!(
                "checkout_sessions.customer_id of {}: {e}",
                row.customer_id
            ))
        })?;
        Ok(CheckoutRecord {
            customer_id,
            generation: row.generation,
            session_id: row.session_id,
            url: row.url,
            plan: row.plan,
            currency: row.currency,
            fingerprint: row.fingerprint,
            expires_at: row.expires_at,
            closed_at: row.closed_at,
            created_at: row.created_at,
        })
    }
}

/// A generation below 1 cannot be stored (CHECK constraint); refuse it
/// before the database does, with a clearer message.
pub(crate) fn check_generation(checkout: &CheckoutRecord) -> StoreResult<()> {
    if checkout.generation < 1 {
        return Err(StoreError::Other(format!(
            "checkout generation must be at least 1, got {}",
            checkout.generation
        )));
    }
    Ok(())
}

/// [`CheckoutStore`] for a store with a [`Dialect`]. Each write is one
/// statement whose condition (no row yet, or the generation read) the
/// database checks atomically, so neither backend needs a transaction.
macro_rules! checkout_store {
    ($store:ty) => {
        #[async_trait]
        impl CheckoutStore for $store {
            async fn get_checkout(
                &self,
                customer_id: &CustomerId,
            ) -> StoreResult<Option<CheckoutRecord>> {
                let row: Option<CheckoutRow> = sqlx::query_as(&format!(
                    "SELECT {CHECKOUT_COLUMNS} FROM checkout_sessions WHERE customer_id = $1"
                ))
                .bind(customer_id.as_str())
                .fetch_optional(self.reader())
                .await?;
                row.map(CheckoutRecord::try_from).transpose()
            }

            async fn put_checkout(&self, checkout: &CheckoutRecord, now: i64) -> StoreResult<bool> {
                check_generation(checkout)?;
                let sql = if checkout.generation == 1 {
                    "INSERT INTO checkout_sessions (customer_id, generation, session_id, url, \
                       plan, currency, fingerprint, expires_at, closed_at, created_at, \
                       updated_at) \
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
                    .execute(self.writer())
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
                .execute(self.writer())
                .await?;
                Ok(())
            }
        }
    };
}

checkout_store!(SqliteStore);
checkout_store!(PgStore);
