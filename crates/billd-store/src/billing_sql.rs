//! [`BillingStore`](crate::BillingStore): one body for both stores.
//!
//! `billing_store!` is invoked once in each backend's `billing` module
//! (`sqlite/billing.rs`, `postgres/billing.rs`), where it expands into the
//! trait impl and its helpers, typed for that backend. What differs between
//! the backends comes from [`Dialect`](crate::dialect::Dialect); the SQL is
//! shared.
//!
//! Why the same code holds on both: on SQLite every write runs on the
//! single writer connection inside `BEGIN IMMEDIATE`, so read-check-write
//! sequences (version checks, conditional counters) cannot interleave. On
//! PostgreSQL several processes may share the database: version checks and
//! conditional counters are single `UPDATE … WHERE` statements (READ
//! COMMITTED re-checks the condition after waiting for a concurrent
//! writer), idempotency keys and outbox dedupe keys are unique indexes, and
//! outbox claims skip rows another claimer holds.

/// Implements [`BillingStore`](crate::BillingStore) for `$store`, a store
/// with a [`Dialect`](crate::dialect::Dialect). Invoke it in the backend's
/// `billing` module: it calls that backend's inbox `super::finish`.
macro_rules! billing_store {
    ($store:ty) => {
        use async_trait::async_trait;
        use std::collections::HashSet;
        use billd_core::{CustomerId, StripeCustomerId, Usage, UsageKey};
        use sqlx::QueryBuilder;

        use $crate::billing::{
            check_amount, commit_links, from_db, into_outbox, outbox_columns, outbox_not_held,
            outbox_stats, period_column, replay, state_json, to_db, usage_from_rows, AuditRow,
            CustomerRow, Direction, OutboxRow, StoredRequest, StripeColumn, AUDIT_COLUMNS,
            CUSTOMER_COLUMNS, OUTBOX_COLUMNS,
        };
        use $crate::dialect::Dialect;
        use $crate::usage::GuardedOutcome;
        use $crate::{
            AuditRecord, BillingStore, CommitReceipt, CustomerCommit, CustomerProfile,
            CustomerRecord, EventResult, NewOutboxItem, OutboxFilter, OutboxItem, OutboxResult,
            OutboxStats, StoreError, StoreResult, UpsertedCustomer, UsageOutcome, UsageRequest,
            LEASE_CONFLICT, VERSION_CONFLICT,
        };

        /// The backend's connection, as a transaction or pool lends it.
        type Conn = <<$store as Dialect>::Db as sqlx::Database>::Connection;

        const JSON: &str = <$store as Dialect>::JSON;
        const IN_JSON_ARRAY: &str = <$store as Dialect>::IN_JSON_ARRAY;
        const GREATEST: &str = <$store as Dialect>::GREATEST;
        const INDEXED_BY_OUTBOX_DUE: &str = <$store as Dialect>::INDEXED_BY_OUTBOX_DUE;
        const SKIP_LOCKED: &str = <$store as Dialect>::SKIP_LOCKED;

        #[async_trait]
        impl BillingStore for $store {
            async fn upsert_customer(
                &self,
                profile: &CustomerProfile,
                now: i64,
            ) -> StoreResult<UpsertedCustomer> {
                let mut tx = self.begin_write().await?;
                let inserted: Option<CustomerRow> = sqlx::query_as(&format!(
                    "INSERT INTO customers \
                       (customer_id, email, name, preferred_currency, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $5) \
                     ON CONFLICT (customer_id) DO NOTHING RETURNING {CUSTOMER_COLUMNS}"
                ))
                .bind(profile.customer_id.as_str())
                .bind(profile.email.as_deref())
                .bind(profile.name.as_deref())
                .bind(profile.preferred_currency.as_deref())
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let (row, created) = match inserted {
                    Some(row) => (row, true),
                    None => {
                        // A deleted customer's erased profile is never written again.
                        let updated: Option<CustomerRow> = sqlx::query_as(&format!(
                            "UPDATE customers SET email = $2, name = $3, preferred_currency = $4, \
                               updated_at = $5 \
                             WHERE customer_id = $1 AND deleted_at IS NULL \
                             RETURNING {CUSTOMER_COLUMNS}"
                        ))
                        .bind(profile.customer_id.as_str())
                        .bind(profile.email.as_deref())
                        .bind(profile.name.as_deref())
                        .bind(profile.preferred_currency.as_deref())
                        .bind(now)
                        .fetch_optional(&mut *tx)
                        .await?;
                        let row = match updated {
                            Some(row) => row,
                            None => {
                                sqlx::query_as(&format!(
                                "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = $1"
                            ))
                                .bind(profile.customer_id.as_str())
                                .fetch_one(&mut *tx)
                                .await?
                            }
                        };
                        (row, false)
                    }
                };
                tx.commit().await?;
                Ok(UpsertedCustomer {
                    customer: CustomerRecord::try_from(row)?,
                    created,
                })
            }

            async fn get_customer(
                &self,
                customer_id: &CustomerId,
            ) -> StoreResult<Option<CustomerRecord>> {
                let row: Option<CustomerRow> = sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers WHERE customer_id = $1"
                ))
                .bind(customer_id.as_str())
                .fetch_optional(self.reader())
                .await?;
                row.map(CustomerRecord::try_from).transpose()
            }

            async fn find_customer_by_stripe(
                &self,
                stripe_customer_id: &StripeCustomerId,
            ) -> StoreResult<Option<CustomerId>> {
                let current: Option<String> = sqlx::query_scalar(
                    "SELECT customer_id FROM customers WHERE stripe_customer_id = $1",
                )
                .bind(stripe_customer_id.as_str())
                .fetch_optional(self.reader())
                .await?;
                match current {
                    Some(id) => parse_customer(&id).map(Some),
                    None => {
                        self.find_customer_by_object(stripe_customer_id.as_str())
                            .await
                    }
                }
            }

            async fn find_customer_by_object(
                &self,
                object_id: &str,
            ) -> StoreResult<Option<CustomerId>> {
                let found: Option<String> =
                    sqlx::query_scalar("SELECT customer_id FROM object_links WHERE object_id = $1")
                        .bind(object_id)
                        .fetch_optional(self.reader())
                        .await?;
                found.as_deref().map(parse_customer).transpose()
            }

            async fn get_customers(
                &self,
                customer_ids: &[&CustomerId],
            ) -> StoreResult<std::collections::HashMap<CustomerId, CustomerRecord>> {
                if customer_ids.is_empty() {
                    return Ok(std::collections::HashMap::new());
                }
                let ids: Vec<&str> = customer_ids.iter().map(|id| id.as_str()).collect();
                let rows: Vec<CustomerRow> = sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers \
                     WHERE customer_id {IN_JSON_ARRAY}"
                ))
                .bind(ids_json(&ids)?)
                .fetch_all(self.reader())
                .await?;
                rows.into_iter()
                    .map(|row| {
                        let record = CustomerRecord::try_from(row)?;
                        Ok((record.customer_id.clone(), record))
                    })
                    .collect()
            }

            async fn find_customers_by_objects(
                &self,
                object_ids: &[&str],
            ) -> StoreResult<std::collections::HashMap<String, CustomerId>> {
                if object_ids.is_empty() {
                    return Ok(std::collections::HashMap::new());
                }
                let rows: Vec<(String, String)> = sqlx::query_as(&format!(
                    "SELECT object_id, customer_id FROM object_links \
                     WHERE object_id {IN_JSON_ARRAY}"
                ))
                .bind(ids_json(object_ids)?)
                .fetch_all(self.reader())
                .await?;
                rows.into_iter()
                    .map(|(object, customer)| Ok((object, parse_customer(&customer)?)))
                    .collect()
            }

            async fn find_customers_by_stripe(
                &self,
                stripe_customer_ids: &[&StripeCustomerId],
            ) -> StoreResult<std::collections::HashMap<String, CustomerId>> {
                if stripe_customer_ids.is_empty() {
                    return Ok(std::collections::HashMap::new());
                }
                let ids: Vec<&str> = stripe_customer_ids.iter().map(|id| id.as_str()).collect();
                // Both of `find_customer_by_stripe`'s reads in one
                // statement: the current link (rank 0) wins over an
                // earlier one kept as an object link (rank 1).
                let rows: Vec<(i32, String, String)> = sqlx::query_as(&format!(
                    "SELECT 0, stripe_customer_id, customer_id FROM customers \
                     WHERE stripe_customer_id {IN_JSON_ARRAY} \
                     UNION ALL \
                     SELECT 1, object_id, customer_id FROM object_links \
                     WHERE object_id {IN_JSON_ARRAY}"
                ))
                .bind(ids_json(&ids)?)
                .fetch_all(self.reader())
                .await?;
                let mut found = std::collections::HashMap::new();
                for rank in [0, 1] {
                    for (_, stripe, customer) in rows.iter().filter(|row| row.0 == rank) {
                        if !found.contains_key(stripe) {
                            found.insert(stripe.clone(), parse_customer(customer)?);
                        }
                    }
                }
                Ok(found)
            }

            async fn link_stripe_customer(
                &self,
                customer_id: &CustomerId,
                stripe_customer_id: &StripeCustomerId,
                now: i64,
            ) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                ensure_customer(&mut tx, customer_id, now).await?;
                let owner: Option<String> = sqlx::query_scalar(
                    "SELECT customer_id FROM customers WHERE stripe_customer_id = $1 \
                     UNION SELECT customer_id FROM object_links WHERE object_id = $1",
                )
                .bind(stripe_customer_id.as_str())
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .find(|owner: &String| owner != customer_id.as_str());
                if owner.is_some() {
                    return Err(StoreError::Conflict {
                        constraint: "customers.stripe_customer_id".to_owned(),
                    });
                }
                sqlx::query(
                    "UPDATE customers SET stripe_customer_id = $2, updated_at = $3 \
                     WHERE customer_id = $1 AND stripe_customer_id IS DISTINCT FROM $2",
                )
                .bind(customer_id.as_str())
                .bind(stripe_customer_id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                insert_link(&mut tx, stripe_customer_id.as_str(), customer_id, now).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn link_object(
                &self,
                object_id: &str,
                customer_id: &CustomerId,
                now: i64,
            ) -> StoreResult<CustomerId> {
                let mut tx = self.begin_write().await?;
                ensure_customer(&mut tx, customer_id, now).await?;
                insert_link(&mut tx, object_id, customer_id, now).await?;
                let owner: String =
                    sqlx::query_scalar("SELECT customer_id FROM object_links WHERE object_id = $1")
                        .bind(object_id)
                        .fetch_one(&mut *tx)
                        .await?;
                tx.commit().await?;
                parse_customer(&owner)
            }

            async fn commit_event(
                &self,
                event_id: &str,
                claim: i64,
                commit: Option<&CustomerCommit>,
                result: &EventResult,
                now: i64,
            ) -> StoreResult<CommitReceipt> {
                let finish = $crate::EventFinish {
                    id: event_id.to_owned(),
                    claim,
                    result: result.clone(),
                };
                let commits: Vec<(CustomerCommit, Vec<String>)> = commit
                    .map(|commit| (commit.clone(), vec![event_id.to_owned()]))
                    .into_iter()
                    .collect();
                let receipts = self
                    .commit_events(&commits, std::slice::from_ref(&finish), now)
                    .await?;
                Ok(receipts.into_iter().next().unwrap_or(CommitReceipt {
                    version: None,
                    outbox_inserted: 0,
                }))
            }

            async fn commit_events(
                &self,
                commits: &[(CustomerCommit, Vec<String>)],
                finishes: &[$crate::EventFinish],
                now: i64,
            ) -> StoreResult<Vec<CommitReceipt>> {
                let mut tx = self.begin_write().await?;
                // The backend's own (its `billing` module): row by row, or
                // a statement per table.
                let receipts = write_round(&mut tx, commits, finishes, now).await?;
                tx.commit().await?;
                Ok(receipts)
            }

            async fn commit_customer(
                &self,
                commit: &CustomerCommit,
                now: i64,
            ) -> StoreResult<CommitReceipt> {
                let mut tx = self.begin_write().await?;
                let receipt = write_commit(&mut tx, commit, &[], now).await?;
                tx.commit().await?;
                Ok(receipt)
            }

            async fn requeue_unlinked(&self, ids: &[&str], _now: i64) -> StoreResult<u64> {
                if ids.is_empty() {
                    return Ok(0);
                }
                // Asked of a reader first: the worker calls this after
                // every commit that links anything, and on SQLite an
                // UPDATE takes the single writer even when it changes
                // nothing. An event parked after this read waits for the
                // next link, as one parked after the UPDATE would.
                let parked: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM stripe_events WHERE status = 'unlinked' LIMIT 1",
                )
                .fetch_optional(self.reader())
                .await?;
                if parked.is_none() {
                    return Ok(0);
                }
                let ids_json = serde_json::to_string(ids)
                    .map_err(|e| StoreError::Other(format!("encoding ids: {e}")))?;
                let done = sqlx::query(&format!(
                    "UPDATE stripe_events \
                     SET status = 'pending', attempts = 0, next_attempt_at = NULL, \
                         processed_at = NULL \
                     WHERE status = 'unlinked' \
                       AND (stripe_customer IS NULL \
                            OR stripe_customer {IN_JSON_ARRAY} \
                            OR object_id {IN_JSON_ARRAY})"
                ))
                .bind(ids_json)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected())
            }

            async fn list_audit(
                &self,
                customer_id: &CustomerId,
                limit: u32,
            ) -> StoreResult<Vec<AuditRecord>> {
                let rows: Vec<AuditRow> = sqlx::query_as(&format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE customer_id = $1 \
                     ORDER BY id DESC LIMIT $2"
                ))
                .bind(customer_id.as_str())
                .bind(Self::limit(limit))
                .fetch_all(self.reader())
                .await?;
                rows.into_iter().map(AuditRecord::try_from).collect()
            }

            async fn enqueue_outbox(
                &self,
                customer_id: Option<&CustomerId>,
                items: &[NewOutboxItem],
                now: i64,
            ) -> StoreResult<u64> {
                if items.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                let inserted = insert_outbox(&mut tx, customer_id, items, now).await?;
                tx.commit().await?;
                Ok(inserted)
            }

            async fn claim_outbox(
                &self,
                now: i64,
                lease_until: i64,
                limit: u32,
            ) -> StoreResult<Vec<OutboxItem>> {
                if limit == 0 {
                    return Ok(Vec::new());
                }
                let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
                    "UPDATE outbox \
                     SET status = 'processing', attempts = attempts + 1, next_attempt_at = $2, \
                         claim_token = claim_token + 1 \
                     WHERE id IN ( \
                       SELECT id FROM outbox{INDEXED_BY_OUTBOX_DUE} \
                       WHERE status IN ('pending', 'processing') \
                         AND (next_attempt_at IS NULL OR next_attempt_at <= $1) \
                       ORDER BY id LIMIT $3{SKIP_LOCKED}) \
                     RETURNING {OUTBOX_COLUMNS}"
                ))
                .bind(now)
                .bind(lease_until)
                .bind(i64::from(limit))
                .fetch_all(self.writer())
                .await?;
                into_outbox(rows)
            }

            async fn finish_outbox(
                &self,
                id: i64,
                claim_token: i64,
                result: &OutboxResult,
                now: i64,
            ) -> StoreResult<()> {
                let (status, error, next_attempt_at, done_at) = outbox_columns(result, now);
                let mut conn = self.writer().acquire().await?;
                let done = sqlx::query(
                    "UPDATE outbox \
                     SET status = $3, last_error = COALESCE($4, last_error), \
                         next_attempt_at = $5, done_at = $6 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'processing'",
                )
                .bind(id)
                .bind(claim_token)
                .bind(status)
                .bind(error)
                .bind(next_attempt_at)
                .bind(done_at)
                .execute(&mut *conn)
                .await?;
                if done.rows_affected() > 0 {
                    return Ok(());
                }
                let exists: Option<i64> = sqlx::query_scalar("SELECT id FROM outbox WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                Err(outbox_not_held(exists.is_some()))
            }

            async fn renew_outbox(
                &self,
                id: i64,
                claim_token: i64,
                lease_until: i64,
            ) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE outbox SET next_attempt_at = $3 \
                     WHERE id = $1 AND claim_token = $2 AND status = 'processing'",
                )
                .bind(id)
                .bind(claim_token)
                .bind(lease_until)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn list_outbox(&self, filter: &OutboxFilter) -> StoreResult<Vec<OutboxItem>> {
                let mut query =
                    QueryBuilder::new(format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE 1 = 1"));
                if let Some(status) = filter.status {
                    query.push(" AND status = ").push_bind(status.as_str());
                }
                if let Some(customer) = &filter.customer_id {
                    query
                        .push(" AND customer_id = ")
                        .push_bind(customer.as_str());
                }
                query
                    .push(" ORDER BY id DESC LIMIT ")
                    .push_bind(Self::limit(filter.limit));
                let rows: Vec<OutboxRow> = query.build_query_as().fetch_all(self.reader()).await?;
                let mut items = into_outbox(rows)?;
                items.reverse();
                Ok(items)
            }

            async fn requeue_outbox(&self, id: i64, now: i64) -> StoreResult<bool> {
                let done = sqlx::query(
                    "UPDATE outbox \
                     SET status = 'pending', attempts = 0, next_attempt_at = $2, done_at = NULL \
                     WHERE id = $1 AND status = 'dead'",
                )
                .bind(id)
                .bind(now)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn consume(
                &self,
                request: &UsageRequest,
                limit: u64,
                now: i64,
            ) -> StoreResult<UsageOutcome> {
                // Not shared: one statement on PostgreSQL (its `usage.rs`).
                super::usage::consume(self, request, limit, now).await
            }

            async fn consume_batch(
                &self,
                batch: &[(UsageRequest, u64)],
                now: i64,
            ) -> StoreResult<Vec<StoreResult<UsageOutcome>>> {
                let batch: Vec<_> = batch
                    .iter()
                    .map(|(request, limit)| (request, *limit, None))
                    .collect();
                let answers = consume_together(self, &batch, now).await?;
                Ok(answers
                    .into_iter()
                    .map(|answer| match answer? {
                        GuardedOutcome::Decided(outcome) => Ok(outcome),
                        GuardedOutcome::Stale => Err(StoreError::Other(
                            "a consume without a version check answered stale".to_owned(),
                        )),
                    })
                    .collect())
            }

            async fn release(&self, request: &UsageRequest, now: i64) -> StoreResult<UsageOutcome> {
                let amount = check_amount(request)?;
                let mut tx = self.begin_write().await?;
                if let Some(stored) = claim_key(&mut tx, request, Direction::Release, now).await? {
                    return replay(stored, Direction::Release, request);
                }
                ensure_counter(&mut tx, request).await?;
                let used: i64 = sqlx::query_scalar(&format!(
                    "UPDATE usage_counters SET used = {GREATEST}(used - $4, 0) \
                     WHERE customer_id = $1 AND feature = $2 AND period_start = $3 \
                     RETURNING used"
                ))
                .bind(request.customer_id.as_str())
                .bind(request.key.feature.as_str())
                .bind(period_column(&request.key))
                .bind(amount)
                .fetch_one(&mut *tx)
                .await?;
                record_answer(&mut tx, request, used, 0).await?;
                tx.commit().await?;
                Ok(UsageOutcome::Applied {
                    used: from_db(used),
                    limit: 0,
                    replayed: false,
                })
            }

            async fn delete_customer(
                &self,
                commit: &CustomerCommit,
                now: i64,
            ) -> StoreResult<CommitReceipt> {
                let mut tx = self.begin_write().await?;
                let receipt = write_commit(&mut tx, commit, &[], now).await?;
                sqlx::query(
                    "UPDATE customers \
                     SET email = NULL, name = NULL, preferred_currency = NULL, \
                         deleted_at = COALESCE(deleted_at, $2), updated_at = $2 \
                     WHERE customer_id = $1",
                )
                .bind(commit.customer_id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let stripe_customers = erase_stored(&mut tx, &commit.customer_id, &[]).await?;
                tx.commit().await?;
                self.erased().add(stripe_customers);
                Ok(receipt)
            }

            async fn list_customers(
                &self,
                after: Option<&CustomerId>,
                limit: u32,
            ) -> StoreResult<Vec<CustomerRecord>> {
                let rows: Vec<CustomerRow> = sqlx::query_as(&format!(
                    "SELECT {CUSTOMER_COLUMNS} FROM customers \
                     WHERE $1 IS NULL OR customer_id > $1 \
                     ORDER BY customer_id LIMIT $2"
                ))
                .bind(after.map(CustomerId::as_str))
                .bind(Self::limit(limit))
                .fetch_all(self.reader())
                .await?;
                rows.into_iter().map(CustomerRecord::try_from).collect()
            }

            async fn outbox_stats(&self) -> StoreResult<OutboxStats> {
                // Counters kept by triggers (migration console_counters),
                // not a count of every email ever sent.
                if let Some(fold) = <$store as Dialect>::FOLD_OUTBOX_COUNTS {
                    sqlx::query(fold).execute(self.writer()).await?;
                }
                let counts: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, CAST(SUM(n) AS BIGINT) FROM outbox_counts \
                     GROUP BY status HAVING SUM(n) <> 0",
                )
                .fetch_all(self.reader())
                .await?;
                let oldest: Option<i64> = sqlx::query_scalar(
                    "SELECT MIN(created_at) FROM outbox WHERE status IN ('pending', 'processing')",
                )
                .fetch_one(self.reader())
                .await?;
                outbox_stats(counts, oldest)
            }

            async fn load_usage(
                &self,
                customer_id: &CustomerId,
                keys: &[UsageKey],
            ) -> StoreResult<Usage> {
                let rows: Vec<(String, i64, i64)> = sqlx::query_as(
                    "SELECT feature, period_start, used FROM usage_counters WHERE customer_id = $1",
                )
                .bind(customer_id.as_str())
                .fetch_all(self.reader())
                .await?;
                Ok(usage_from_rows(keys, rows))
            }
        }

        /// `ids` as the JSON array [`IN_JSON_ARRAY`] reads.
        fn ids_json(ids: &[&str]) -> StoreResult<String> {
            serde_json::to_string(ids).map_err(|e| StoreError::Other(format!("encoding ids: {e}")))
        }

        fn parse_customer(raw: &str) -> StoreResult<CustomerId> {
            CustomerId::parse(raw)
                .map_err(|e| StoreError::Other(format!("stored customer id: {e}")))
        }

        /// Creates an empty customer row if there is none.
        async fn ensure_customer(
            conn: &mut Conn,
            customer_id: &CustomerId,
            now: i64,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO customers (customer_id, created_at, updated_at) VALUES ($1, $2, $2) \
                 ON CONFLICT (customer_id) DO NOTHING",
            )
            .bind(customer_id.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// Links an object unless it is linked already (the first link wins).
        async fn insert_link(
            conn: &mut Conn,
            object_id: &str,
            customer_id: &CustomerId,
            now: i64,
        ) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO object_links (object_id, customer_id, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (object_id) DO NOTHING",
            )
            .bind(object_id)
            .bind(customer_id.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// The customer part of a commit: version check, state, links, audit,
        /// outbox. For a deleted customer (a late or replayed event) it then
        /// erases again what the commit and anything stored since brought:
        /// `event_id`'s payload, the new audit values, every stored payload
        /// of the customer (see [`erase_stored`]).
        async fn write_commit(
            conn: &mut Conn,
            commit: &CustomerCommit,
            event_ids: &[&str],
            now: i64,
        ) -> StoreResult<CommitReceipt> {
            let state = state_json(&commit.state)?;
            let stripe = StripeColumn::of(&commit.state);
            let (keep_stripe, stripe_value) = stripe.binds();
            let customer = commit.customer_id.as_str();
            let updated: Option<(i64, Option<i64>)> = sqlx::query_as(&format!(
                "UPDATE customers \
                 SET state = $3{JSON}, version = version + 1, updated_at = $4, \
                     stripe_customer_id = CASE WHEN $5 THEN stripe_customer_id ELSE $6 END \
                 WHERE customer_id = $1 AND version = $2 \
                 RETURNING version, deleted_at"
            ))
            .bind(customer)
            .bind(commit.expected_version)
            .bind(state.as_str())
            .bind(now)
            .bind(keep_stripe)
            .bind(stripe_value)
            .fetch_optional(&mut *conn)
            .await?;
            let deleted = updated.is_some_and(|(_, deleted_at)| deleted_at.is_some());
            let mut version = updated.map(|(version, _)| version);
            if version.is_none() && commit.expected_version == 0 {
                version = sqlx::query_scalar(&format!(
                    "INSERT INTO customers \
                       (customer_id, stripe_customer_id, state, version, created_at, updated_at) \
                     VALUES ($1, $2, $3{JSON}, 1, $4, $4) \
                     ON CONFLICT (customer_id) DO NOTHING RETURNING version"
                ))
                .bind(customer)
                .bind(stripe_value)
                .bind(state.as_str())
                .bind(now)
                .fetch_optional(&mut *conn)
                .await?;
            }
            let Some(version) = version else {
                return Err(StoreError::Conflict {
                    constraint: VERSION_CONFLICT.to_owned(),
                });
            };
            for object_id in commit_links(commit) {
                insert_link(&mut *conn, object_id, &commit.customer_id, now).await?;
            }
            for entry in &commit.audit {
                sqlx::query(
                    "INSERT INTO audit_log \
                       (customer_id, at, field, before_value, after_value, reason, event_type) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(customer)
                .bind(entry.at)
                .bind(entry.field.as_str())
                .bind(entry.before.as_deref())
                .bind(entry.after.as_deref())
                .bind(entry.reason.as_str())
                .bind(entry.event_type.as_str())
                .execute(&mut *conn)
                .await?;
            }
            let outbox_inserted =
                insert_outbox(conn, Some(&commit.customer_id), &commit.outbox, now).await?;
            if deleted {
                erase_stored(conn, &commit.customer_id, event_ids).await?;
            }
            Ok(CommitReceipt {
                version: Some(version),
                outbox_inserted,
            })
        }

        /// A round's writes row by row, in order: each commit's
        /// [`write_commit`], then each event's outcome. Any error leaves the
        /// caller's transaction to be rolled back whole.
        async fn write_round_each(
            conn: &mut Conn,
            commits: &[(CustomerCommit, Vec<String>)],
            finishes: &[$crate::EventFinish],
            now: i64,
        ) -> StoreResult<Vec<CommitReceipt>> {
            let mut receipts = Vec::with_capacity(commits.len());
            for (commit, events) in commits {
                let event_ids: Vec<&str> = events.iter().map(String::as_str).collect();
                receipts.push(write_commit(&mut *conn, commit, &event_ids, now).await?);
            }
            for done in finishes {
                if !super::finish(&mut *conn, &done.id, done.claim, &done.result, now).await? {
                    return Err(unfinished(conn, &done.id).await);
                }
            }
            Ok(receipts)
        }

        /// A round's writes with one statement per table (the backend's
        /// `write_states`, `write_links`, `write_audit`, `write_outbox` and
        /// `finish_many`): same guards and conflict rules as
        /// [`write_commit`]. A round naming one customer or one event twice
        /// is written row by row instead: one statement cannot update a row
        /// twice.
        async fn write_round(
            conn: &mut Conn,
            commits: &[(CustomerCommit, Vec<String>)],
            finishes: &[$crate::EventFinish],
            now: i64,
        ) -> StoreResult<Vec<CommitReceipt>> {
            let customers: HashSet<&str> = commits
                .iter()
                .map(|(commit, _)| commit.customer_id.as_str())
                .collect();
            let events: HashSet<&str> = finishes.iter().map(|done| done.id.as_str()).collect();
            if customers.len() != commits.len() || events.len() != finishes.len() {
                return write_round_each(conn, commits, finishes, now).await;
            }
            let written = write_states(&mut *conn, commits, now).await?;
            write_links(&mut *conn, commits, now).await?;
            write_audit(&mut *conn, commits).await?;
            let inserted = write_outbox(&mut *conn, commits, now).await?;
            for ((commit, events), (_, deleted)) in commits.iter().zip(&written) {
                if *deleted {
                    let event_ids: Vec<&str> = events.iter().map(String::as_str).collect();
                    erase_stored(&mut *conn, &commit.customer_id, &event_ids).await?;
                }
            }
            if !finishes.is_empty() {
                let finished = super::finish_many(&mut *conn, finishes, now).await?;
                if let Some(done) = finishes.iter().find(|done| !finished.contains(&done.id)) {
                    return Err(unfinished(conn, &done.id).await);
                }
            }
            Ok(written
                .into_iter()
                .zip(inserted)
                .map(|((version, _), outbox_inserted)| CommitReceipt {
                    version: Some(version),
                    outbox_inserted,
                })
                .collect())
        }

        /// Why an event's outcome was not written: unknown (`NotFound`) or
        /// no longer under the caller's lease.
        async fn unfinished(conn: &mut Conn, event_id: &str) -> StoreError {
            let exists: Result<Option<String>, sqlx::Error> =
                sqlx::query_scalar("SELECT status FROM stripe_events WHERE id = $1")
                    .bind(event_id)
                    .fetch_optional(&mut *conn)
                    .await;
            match exists {
                Err(e) => e.into(),
                Ok(None) => StoreError::NotFound,
                Ok(Some(_)) => StoreError::Conflict {
                    constraint: LEASE_CONFLICT.to_owned(),
                },
            }
        }

        /// Redacts what the database still holds about a deleted customer,
        /// with `billd_core`'s rules: the personal values of its audit rows,
        /// the personal fields of its outbox payloads (and a card expiry in
        /// a dedupe key), and those of every
        /// stored Stripe payload about it (events naming one of its Stripe
        /// customers, events naming no customer whose object is linked to
        /// it, and `event_ids`). Rows stay, with their ids, types, amounts and
        /// dates; rows already redacted are not written again. Returns the
        /// customer's Stripe customer ids.
        async fn erase_stored(
            conn: &mut Conn,
            customer_id: &CustomerId,
            event_ids: &[&str],
        ) -> StoreResult<Vec<String>> {
            let customer = customer_id.as_str();
            let audit: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT id, field, before_value, after_value FROM audit_log WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_all(&mut *conn)
            .await?;
            for (id, field, before, after) in audit {
                let redacted =
                    billd_core::redact_audit_values(&field, before.as_deref(), after.as_deref());
                if redacted != (before, after) {
                    sqlx::query(
                        "UPDATE audit_log SET before_value = $2, after_value = $3 WHERE id = $1",
                    )
                    .bind(id)
                    .bind(redacted.0)
                    .bind(redacted.1)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            let outbox: Vec<(i64, String, String)> = sqlx::query_as(
                "SELECT id, dedupe_key, CAST(payload AS TEXT) FROM outbox WHERE customer_id = $1",
            )
            .bind(customer)
            .fetch_all(&mut *conn)
            .await?;
            for (id, dedupe_key, payload) in outbox {
                let key = billd_core::redact_dedupe_key(&dedupe_key, id);
                let payload = billd_core::scrub_json_text(&payload);
                if key.is_some() || payload.is_some() {
                    sqlx::query(&format!(
                        "UPDATE outbox SET dedupe_key = COALESCE($2, dedupe_key), \
                           payload = COALESCE($3{JSON}, payload) \
                         WHERE id = $1"
                    ))
                    .bind(id)
                    .bind(key)
                    .bind(payload)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            let mut events: Vec<(String, String)> = sqlx::query_as(
                "SELECT id, payload FROM stripe_events \
                 WHERE stripe_customer IN \
                       (SELECT object_id FROM object_links WHERE customer_id = $1) \
                    OR (stripe_customer IS NULL AND object_id IN \
                        (SELECT object_id FROM object_links WHERE customer_id = $1))",
            )
            .bind(customer)
            .fetch_all(&mut *conn)
            .await?;
            for id in event_ids {
                if events.iter().any(|(found, _)| found == id) {
                    continue;
                }
                let payload: Option<String> =
                    sqlx::query_scalar("SELECT payload FROM stripe_events WHERE id = $1")
                        .bind(*id)
                        .fetch_optional(&mut *conn)
                        .await?;
                events.extend(payload.map(|payload| ((*id).to_owned(), payload)));
            }
            for (id, payload) in events {
                if let Some(scrubbed) = billd_core::scrub_json_text(&payload) {
                    sqlx::query("UPDATE stripe_events SET payload = $2 WHERE id = $1")
                        .bind(id)
                        .bind(scrubbed)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            let stripe_customers: Vec<String> = sqlx::query_scalar(
                "SELECT object_id FROM object_links \
                 WHERE customer_id = $1 AND substr(object_id, 1, 4) = 'cus_'",
            )
            .bind(customer)
            .fetch_all(&mut *conn)
            .await?;
            Ok(stripe_customers)
        }

        /// `events` with the payloads of erased Stripe customers scrubbed
        /// (`None`: nothing to scrub), reloading the store's set of them
        /// from the database when it is due (see `crate::erasure`).
        pub(super) async fn scrub_incoming(
            store: &$store,
            events: &[$crate::NewEvent],
        ) -> StoreResult<Option<Vec<$crate::NewEvent>>> {
            let erased = store.erased();
            if let Some(_reloading) = erased.reload_guard().await {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT l.object_id FROM object_links l \
                     JOIN customers c ON c.customer_id = l.customer_id \
                     WHERE c.deleted_at IS NOT NULL AND substr(l.object_id, 1, 4) = 'cus_'",
                )
                .fetch_all(store.reader())
                .await?;
                erased.loaded(ids);
            }
            Ok(erased.scrub(events))
        }

        /// Per derived row, its payload scrubbed when it is about an erased
        /// Stripe customer (`None`: stored as received), reloading the
        /// store's set when due; the lean ingest scrubs when the worker
        /// derives a row, the first moment its customer is known.
        pub(super) async fn scrub_derived(
            store: &$store,
            derived: &[$crate::Derived],
        ) -> StoreResult<Vec<Option<String>>> {
            let erased = store.erased();
            if let Some(_reloading) = erased.reload_guard().await {
                let ids: Vec<String> = sqlx::query_scalar(
                    "SELECT l.object_id FROM object_links l \
                     JOIN customers c ON c.customer_id = l.customer_id \
                     WHERE c.deleted_at IS NOT NULL AND substr(l.object_id, 1, 4) = 'cus_'",
                )
                .fetch_all(store.reader())
                .await?;
                erased.loaded(ids);
            }
            Ok(erased.scrub_derived(derived))
        }

        /// Inserts outbox rows, due now, skipping existing dedupe keys.
        pub(super) async fn insert_outbox(
            conn: &mut Conn,
            customer_id: Option<&CustomerId>,
            items: &[NewOutboxItem],
            now: i64,
        ) -> StoreResult<u64> {
            let mut inserted = 0;
            for item in items {
                let done = sqlx::query(&format!(
                    "INSERT INTO outbox \
                       (dedupe_key, customer_id, kind, payload, next_attempt_at, created_at) \
                     VALUES ($1, $2, $3, $4{JSON}, $5, $5) \
                     ON CONFLICT (dedupe_key) DO NOTHING"
                ))
                .bind(item.dedupe_key.as_str())
                .bind(customer_id.map(CustomerId::as_str))
                .bind(item.kind.as_str())
                .bind(item.payload.as_str())
                .bind(now)
                .execute(&mut *conn)
                .await?;
                inserted += done.rows_affected();
            }
            Ok(inserted)
        }

        /// One consume inside the caller's transaction, decided only while the
        /// customer is at `version` and not deleted (`Stale` otherwise, nothing
        /// written); `None` checks no version. The flag is `consume_in`'s.
        pub(super) async fn guarded_in(
            conn: &mut Conn,
            request: &UsageRequest,
            limit: u64,
            version: Option<i64>,
            now: i64,
        ) -> StoreResult<(GuardedOutcome, bool)> {
            if let Some(version) = version {
                let current: Option<i64> = sqlx::query_scalar(
                    "SELECT version FROM customers \
                     WHERE customer_id = $1 AND version = $2 AND deleted_at IS NULL",
                )
                .bind(request.customer_id.as_str())
                .bind(version)
                .fetch_optional(&mut *conn)
                .await?;
                if current.is_none() {
                    return Ok((GuardedOutcome::Stale, false));
                }
            }
            let (outcome, keep) = consume_in(conn, request, limit, now).await?;
            Ok((GuardedOutcome::Decided(outcome), keep))
        }

        /// Consumes (request, limit, version to check) committed together in one
        /// write transaction, each answered as if alone.
        pub(super) async fn consume_together(
            store: &$store,
            batch: &[(&UsageRequest, u64, Option<i64>)],
            now: i64,
        ) -> StoreResult<Vec<StoreResult<GuardedOutcome>>> {
            let mut out = Vec::with_capacity(batch.len());
            if batch.is_empty() {
                return Ok(out);
            }
            let mut tx = store.begin_write().await?;
            for (request, limit, version) in batch {
                // A savepoint per request: a refused or failed one is undone
                // alone, the others still commit together.
                sqlx::query("SAVEPOINT consume").execute(&mut *tx).await?;
                let result = guarded_in(&mut tx, request, *limit, *version, now).await;
                if !matches!(result, Ok((_, true))) {
                    sqlx::query("ROLLBACK TO SAVEPOINT consume")
                        .execute(&mut *tx)
                        .await?;
                }
                sqlx::query("RELEASE SAVEPOINT consume")
                    .execute(&mut *tx)
                    .await?;
                out.push(result.map(|(outcome, _)| outcome));
            }
            tx.commit().await?;
            Ok(out)
        }

        /// One consume inside the caller's transaction. The flag says whether it
        /// wrote something to keep (false for a replay or a refusal, whose
        /// idempotency row must be rolled back: a refused request leaves no trace).
        pub(super) async fn consume_in(
            conn: &mut Conn,
            request: &UsageRequest,
            limit: u64,
            now: i64,
        ) -> StoreResult<(UsageOutcome, bool)> {
            let amount = check_amount(request)?;
            // A limit beyond BIGINT cannot be reached anyway.
            let limit_db = i64::try_from(limit).unwrap_or(i64::MAX);
            if let Some(stored) = claim_key(&mut *conn, request, Direction::Consume, now).await? {
                return Ok((replay(stored, Direction::Consume, request)?, false));
            }
            ensure_counter(&mut *conn, request).await?;
            if let Some(credits) = &request.credits {
                return consume_with_credits(conn, request, credits, limit, now).await;
            }
            let used: Option<i64> = sqlx::query_scalar(
                "UPDATE usage_counters SET used = used + $4 \
                     WHERE customer_id = $1 AND feature = $2 AND period_start = $3 \
                       AND used + $4 <= $5 \
                     RETURNING used",
            )
            .bind(request.customer_id.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .bind(amount)
            .bind(limit_db)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(used) = used else {
                let used = counter(&mut *conn, request).await?;
                return Ok((
                    UsageOutcome::LimitExceeded {
                        used: from_db(used),
                        limit,
                    },
                    false,
                ));
            };
            record_answer(&mut *conn, request, used, limit_db).await?;
            if let Some(row) = request.meter_row(used, now)? {
                insert_outbox(&mut *conn, Some(&request.customer_id), &[row], now).await?;
            }
            Ok((
                UsageOutcome::Applied {
                    used: from_db(used),
                    limit,
                    replayed: false,
                },
                true,
            ))
        }

        /// The rest of [`consume_in`] for a consume that may take credits:
        /// the period's counter (locked by a no-op update, so concurrent
        /// consumes of the customer's credits queue behind each other) and
        /// the packs' counters are read, the amount split over the included
        /// quota, the packs and overage (`billd_core::credits::split`), and
        /// the counters written, all in the caller's transaction.
        async fn consume_with_credits(
            conn: &mut Conn,
            request: &UsageRequest,
            credits: &billd_core::CreditTarget,
            limit: u64,
            now: i64,
        ) -> StoreResult<(UsageOutcome, bool)> {
            use billd_core::credits::{balance, split, take};
            let locked: i64 = sqlx::query_scalar(
                "UPDATE usage_counters SET used = used \
                     WHERE customer_id = $1 AND feature = $2 AND period_start = $3 \
                     RETURNING used",
            )
            .bind(request.customer_id.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .fetch_one(&mut *conn)
            .await?;
            let counter = from_db(locked);
            // The packs' counters exist and are locked too (a no-op update
            // again): a consume of another period, which locks another
            // period counter, still cannot take the same units.
            for source in &credits.sources {
                sqlx::query(
                    "INSERT INTO usage_counters (customer_id, feature, period_start, used) \
                     VALUES ($1, $2, 0, 0) \
                     ON CONFLICT (customer_id, feature, period_start) DO NOTHING",
                )
                .bind(request.customer_id.as_str())
                .bind($crate::billing::credit_counter(&source.payment))
                .execute(&mut *conn)
                .await?;
            }
            let rows: Vec<(String, i64)> = sqlx::query_as(
                "UPDATE usage_counters SET used = used \
                 WHERE customer_id = $1 AND period_start = 0 AND feature LIKE 'credits:%' \
                 RETURNING feature, used",
            )
            .bind(request.customer_id.as_str())
            .fetch_all(&mut *conn)
            .await?;
            let used_of = |payment: &str| {
                let name = $crate::billing::credit_counter(payment);
                rows.iter()
                    .find(|(feature, _)| *feature == name)
                    .map_or(0, |(_, used)| from_db(*used))
            };
            let included_left = credits.included.saturating_sub(counter);
            let overage_left = limit.saturating_sub(counter.max(credits.included));
            let left = balance(&credits.sources, used_of);
            let Some(parts) = split(request.amount, included_left, left, overage_left) else {
                return Ok((
                    UsageOutcome::LimitExceeded {
                        used: counter,
                        limit,
                    },
                    false,
                ));
            };
            let to_counter = parts.included + parts.overage;
            let used = counter.saturating_add(to_counter);
            let used_db = to_db(used, "usage counter")?;
            if to_counter > 0 {
                sqlx::query(
                    "UPDATE usage_counters SET used = $4 \
                     WHERE customer_id = $1 AND feature = $2 AND period_start = $3",
                )
                .bind(request.customer_id.as_str())
                .bind(request.key.feature.as_str())
                .bind(period_column(&request.key))
                .bind(used_db)
                .execute(&mut *conn)
                .await?;
            }
            for (payment, units) in take(&credits.sources, used_of, parts.credits) {
                sqlx::query(
                    "INSERT INTO usage_counters (customer_id, feature, period_start, used) \
                     VALUES ($1, $2, 0, $3) \
                     ON CONFLICT (customer_id, feature, period_start) \
                     DO UPDATE SET used = usage_counters.used + excluded.used",
                )
                .bind(request.customer_id.as_str())
                .bind($crate::billing::credit_counter(&payment))
                .bind(to_db(units, "credits taken")?)
                .execute(&mut *conn)
                .await?;
            }
            let limit_db = i64::try_from(limit).unwrap_or(i64::MAX);
            record_answer(&mut *conn, request, used_db, limit_db).await?;
            if let Some(row) = request.meter_row_of(used_db, to_counter, now)? {
                insert_outbox(&mut *conn, Some(&request.customer_id), &[row], now).await?;
            }
            Ok((
                UsageOutcome::Applied {
                    used,
                    limit,
                    replayed: false,
                },
                true,
            ))
        }

        /// Takes the idempotency key: inserts its row (answer filled in later) or,
        /// when the key was used before, returns the stored request.
        async fn claim_key(
            conn: &mut Conn,
            request: &UsageRequest,
            direction: Direction,
            now: i64,
        ) -> StoreResult<Option<StoredRequest>> {
            let taken = sqlx::query(
                "INSERT INTO usage_requests \
                   (customer_id, idempotency_key, direction, feature, period_start, amount, used, \
                    quota, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0, 0, $7) \
                 ON CONFLICT (customer_id, idempotency_key) DO NOTHING",
            )
            .bind(request.customer_id.as_str())
            .bind(request.idempotency_key.as_str())
            .bind(direction.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .bind(to_db(request.amount, "usage amount")?)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if taken.rows_affected() > 0 {
                return Ok(None);
            }
            let stored: StoredRequest = sqlx::query_as(
                "SELECT direction, feature, amount, used, quota FROM usage_requests \
                 WHERE customer_id = $1 AND idempotency_key = $2",
            )
            .bind(request.customer_id.as_str())
            .bind(request.idempotency_key.as_str())
            .fetch_one(&mut *conn)
            .await?;
            Ok(Some(stored))
        }

        /// Creates the counter at 0 if it does not exist.
        async fn ensure_counter(conn: &mut Conn, request: &UsageRequest) -> StoreResult<()> {
            sqlx::query(
                "INSERT INTO usage_counters (customer_id, feature, period_start, used) \
                 VALUES ($1, $2, $3, 0) \
                 ON CONFLICT (customer_id, feature, period_start) DO NOTHING",
            )
            .bind(request.customer_id.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .execute(&mut *conn)
            .await?;
            Ok(())
        }

        /// The counter's current value.
        async fn counter(conn: &mut Conn, request: &UsageRequest) -> StoreResult<i64> {
            let used: i64 = sqlx::query_scalar(
                "SELECT used FROM usage_counters \
                 WHERE customer_id = $1 AND feature = $2 AND period_start = $3",
            )
            .bind(request.customer_id.as_str())
            .bind(request.key.feature.as_str())
            .bind(period_column(&request.key))
            .fetch_one(&mut *conn)
            .await?;
            Ok(used)
        }

        /// Stores the answer under the idempotency key taken by [`claim_key`].
        async fn record_answer(
            conn: &mut Conn,
            request: &UsageRequest,
            used: i64,
            quota: i64,
        ) -> StoreResult<()> {
            sqlx::query(
                "UPDATE usage_requests SET used = $3, quota = $4 \
                 WHERE customer_id = $1 AND idempotency_key = $2",
            )
            .bind(request.customer_id.as_str())
            .bind(request.idempotency_key.as_str())
            .bind(used)
            .bind(quota)
            .execute(&mut *conn)
            .await?;
            Ok(())
        }
    };
}

pub(crate) use billing_store;
