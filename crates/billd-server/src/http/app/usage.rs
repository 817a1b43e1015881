//! The app API's quota endpoints: `POST /v1/customers/{id}/usage/{feature}`
//! consumes, `…/usage/{feature}/release` gives capacity back. The limit is
//! decided by `billd_core` (entitlements, then `check_consume`), the counter
//! changes in the store's one conditional update, so concurrent callers can
//! never push a counter past its limit. On SQLite consumes are
//! group-committed ([`crate::http::app::usage_batch`]).
//!
//! A consume reads nothing first: the counter and limit come from the
//! customer's state as last seen ([`crate::http::app::usage_cache`]) through
//! [`billd_core::consume_target`], and the store applies the consume only
//! while the customer is still at that state's version
//! ([`billd_store::UsageStore`]); a changed state is read again and the
//! consume decided again.

use std::sync::Arc;

use crate::http::idempotency::Idempotency;
use crate::http::openapi::{route_with, Verb};
use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::{Json, Router};
use billd_core::{
    consume_target, entitlements, usage_keys, Access, Catalog, ConsumeError, CustomerId,
    Entitlements, FeatureKind, FeatureName, Quantity,
};
use billd_store::{
    GuardedConsume, GuardedOutcome, StoreError, UsageOutcome, UsageRequest, IDEMPOTENCY_CONFLICT,
};
use serde::{Deserialize, Serialize};

use crate::http::app::usage_batch::{ConsumeBatcher, MAX_BATCH, PG_IN_FLIGHT};
use crate::http::app::usage_cache::{CachedState, CurrentSnapshot, StateCache};
use crate::http::app::usage_reads::ReadBatcher;
use crate::http::auth::{require_app_key, ApiKeys};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;
use crate::pipeline::Clock;

/// How often one consume is decided again on a re-read state when the
/// customer's state keeps changing under it (then 503, retry later).
const STALE_RETRIES: usize = 5;

/// What the usage handlers share.
struct UsageState<S: BillingBackend + ?Sized> {
    store: Arc<S>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    /// Consumes go through a writer that group-commits them (see
    /// [`crate::http::app::usage_batch`]).
    consumer: ConsumeBatcher,
    /// Customer states consumes were decided on.
    states: Arc<StateCache>,
}

impl<S: BillingBackend + ?Sized> Clone for UsageState<S> {
    fn clone(&self) -> Self {
        UsageState {
            store: self.store.clone(),
            catalog: self.catalog.clone(),
            clock: self.clock.clone(),
            consumer: self.consumer.clone(),
            states: self.states.clone(),
        }
    }
}

/// The usage routes behind the app key, ready to merge into the app's router.
pub fn routes<S: BillingBackend + ?Sized>(
    store: Arc<S>,
    catalog: Arc<Catalog>,
    clock: Arc<dyn Clock>,
    keys: ApiKeys,
    states: Arc<StateCache>,
) -> Router {
    let idem = Idempotency::new(store.clone(), clock.clone());
    let router = route_with(
        Router::new(),
        Verb::Post,
        "/v1/customers/{id}/usage/{feature}",
        consume_usage::<S>,
        idem.layer(),
    );
    route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/usage/{feature}/release",
        release_usage::<S>,
        idem.layer(),
    )
    .route_layer(axum::middleware::from_fn_with_state(
        Arc::new(keys),
        require_app_key,
    ))
    .with_state(UsageState {
        consumer: ConsumeBatcher::start(
            store.clone(),
            clock.clone(),
            MAX_BATCH,
            match store.backend() {
                billd_store::Backend::Sqlite => 1,
                billd_store::Backend::Postgres => PG_IN_FLIGHT,
            },
        ),
        states,
        store,
        catalog,
        clock,
    })
    .layer(axum::middleware::from_fn(crate::http::router::log_errors))
}

/// Body of a consume or release.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageBody {
    /// How much (default 1): a whole number from 1 to 2^53 − 1; anything
    /// else is 400 `invalid_amount`. Taken as any JSON value and parsed by
    /// [`Quantity::from_json`], so a wrong amount is told apart from a
    /// malformed body.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 9_007_199_254_740_991_u64)]
    pub amount: Option<serde_json::Value>,
    /// Required unless the `Idempotency-Key` header is sent (which then
    /// serves as this key; both given must be equal): the same key again
    /// returns the first answer and counts nothing. Keys are per customer;
    /// at most 255 characters.
    #[schema(max_length = 255)]
    pub idempotency_key: Option<String>,
}

/// The answer to a consume or release.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UsageAnswer {
    /// The feature.
    #[schema(value_type = String)]
    pub feature: FeatureName,
    /// The counter after the request.
    pub used: u64,
    /// The limit under the plan that applies.
    pub limit: u64,
    /// What may still be consumed.
    pub remaining: u64,
    /// True when this is the stored answer of an earlier request.
    pub replayed: bool,
}

fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::InvalidRequest {
        code,
        message: message.into(),
    }
}

fn unknown_feature(raw: &str) -> ApiError {
    ApiError::NotFound {
        code: "unknown_feature",
        message: format!("no feature {raw} in the catalog"),
    }
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict { constraint } if constraint == IDEMPOTENCY_CONFLICT => {
            ApiError::InvalidRequest {
                code: "idempotency_key_reused",
                message: "this idempotency key was used for a different request".to_owned(),
            }
        }
        other => crate::http::api::store_error(other),
    }
}

/// A parsed request: whose counter, which feature, how much, which key.
struct Parsed {
    customer: CustomerId,
    feature: FeatureName,
    amount: Quantity,
    idempotency_key: String,
}

fn parse(
    id: &str,
    feature: &str,
    catalog: &Catalog,
    headers: &HeaderMap,
    body: Result<Json<UsageBody>, JsonRejection>,
) -> Result<Parsed, ApiError> {
    let customer =
        CustomerId::parse(id).map_err(|e| invalid("invalid_customer_id", e.to_string()))?;
    let name = FeatureName::parse(feature).map_err(|_| unknown_feature(feature))?;
    match catalog.features().get(&name) {
        None => return Err(unknown_feature(feature)),
        Some(FeatureKind::Flag) => {
            return Err(invalid(
                "flag_feature",
                format!("{feature} is a flag (on or off per plan, read it from the entitlements' flags); only metered and capacity features are counted"),
            ))
        }
        Some(_) => {}
    }
    let Json(body) = body?;
    let amount = match &body.amount {
        None => Quantity::ONE,
        Some(raw) => Quantity::from_json(raw).map_err(|e| invalid(e.code(), e.to_string()))?,
    };
    crate::http::api::bounded_opt(
        "idempotency_key",
        body.idempotency_key.as_deref(),
        crate::http::api::bounds::IDEMPOTENCY_KEY,
    )?;
    // The header is the counter's key too, so that a request whose stored
    // answer expired (or was never stored) still counts once.
    let header = crate::http::idempotency::key_of(headers)?;
    let idempotency_key = match (body.idempotency_key, header) {
        (Some(body_key), Some(header_key)) if body_key != header_key.as_str() => {
            return Err(invalid(
                "invalid_idempotency_key",
                "the Idempotency-Key header and the body's idempotency_key differ",
            ))
        }
        (None, Some(header_key)) => Some(String::from(header_key)),
        (body_key, _) => body_key,
    };
    let idempotency_key = idempotency_key
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            invalid(
                "idempotency_key_required",
                "idempotency_key (or an Idempotency-Key header) is required so a retried request is counted once",
            )
        })?;
    Ok(Parsed {
        customer,
        feature: name,
        amount,
        idempotency_key,
    })
}

/// The customer's entitlements now (404 `customer_not_found` or
/// `customer_deleted`).
async fn load_entitlements<S: BillingBackend + ?Sized>(
    state: &UsageState<S>,
    customer: &CustomerId,
) -> Result<Entitlements, ApiError> {
    let record = crate::http::app::account::live_customer(&*state.store, customer).await?;
    let now = state.clock.now();
    let keys = usage_keys(&record.state, &state.catalog, now);
    let usage = state
        .store
        .load_usage(customer, &keys)
        .await
        .map_err(store_error)?;
    Ok(entitlements(&record.state, &state.catalog, &usage, now))
}

/// The customer's entitlements now, as JSON. From memory when the store
/// proves nothing of this customer was committed since its last snapshot was
/// read (`UsageStore::still_current`: SQLite, whose every write goes through
/// this process; PostgreSQL after `UsageStore::settle`, from the database's
/// announcements of changes), the bytes computed at most once per snapshot
/// and second;
/// otherwise [`read_entitlements`] (404 `customer_not_found` or
/// `customer_deleted`), whose bytes are those of the last snapshot again
/// when the read found it unchanged.
pub(crate) async fn current_entitlements_json<S: BillingBackend + ?Sized>(
    store: &S,
    catalog: &Catalog,
    now: i64,
    states: &StateCache,
    reads: Option<&ReadBatcher>,
    customer: &CustomerId,
) -> Result<Bytes, ApiError> {
    let last = states.snapshot(customer);
    if let Some(current) = &last {
        // Settled first: every write committed before this read arrived,
        // in any process, is then known to the store.
        if let Some(mark) = current.mark {
            let settled = !store.settles() || store.settle().await;
            if settled && store.still_current(mark, &current.snapshot) {
                return answer_of(current, catalog, now);
            }
        }
    }
    read_entitlements(store, catalog, now, states, reads, customer, last).await
}

/// The entitlements of a current snapshot at `now` as JSON: the bytes
/// already computed for that second, else computed and kept.
fn answer_of(current: &CurrentSnapshot, catalog: &Catalog, now: i64) -> Result<Bytes, ApiError> {
    if let Some(answer) = current.answered.at(now) {
        return Ok(answer);
    }
    let usage = current
        .snapshot
        .usage(&usage_keys(&current.state, catalog, now));
    let answer = json_bytes(&entitlements(&current.state, catalog, &usage, now))?;
    current.answered.remember(now, answer.clone());
    Ok(answer)
}

/// `value` as the JSON an `axum::Json` answer would carry, with the final
/// newline every JSON answer gets (`respond::shape`), so that those bytes
/// are sent as they are.
fn json_bytes(value: &impl Serialize) -> Result<Bytes, ApiError> {
    let mut json = serde_json::to_vec(value)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("serialising entitlements: {e}")))?;
    json.push(b'\n');
    Ok(Bytes::from(json))
}

/// The customer's entitlements as of one read on a reader connection
/// (`UsageStore::usage_snapshot`; on PostgreSQL in one statement with the
/// reads queued with it, [`ReadBatcher`]), whose version and counters are always
/// read, so the answer is current (a consume answered 200 before is in
/// it), but whose state is parsed only when its version is not the one
/// cached. The read is remembered as the customer's snapshot: for answers
/// from memory where the store can tell when it goes stale (`mark`), and
/// so that a read finding the same version and counters as `last` answers
/// `last`'s bytes (entitlements are a function of the state at a version,
/// the counters, the catalog and the second).
async fn read_entitlements<S: BillingBackend + ?Sized>(
    store: &S,
    catalog: &Catalog,
    now: i64,
    states: &StateCache,
    reads: Option<&ReadBatcher>,
    customer: &CustomerId,
    last: Option<CurrentSnapshot>,
) -> Result<Bytes, ApiError> {
    // Taken before the read: a commit of this customer after it makes the
    // read stale.
    let mark = store.write_mark();
    let cached = states.get(customer);
    let known_version = cached.as_ref().map(|c| c.version);
    let read = match reads {
        Some(reads) => reads.read(customer, known_version).await,
        None => store.usage_snapshot(customer, known_version).await,
    };
    let mut snapshot = read
        .map_err(store_error)?
        .ok_or_else(|| crate::http::api::customer_not_found(customer))?;
    if snapshot.deleted {
        return Err(crate::http::app::account::customer_deleted(customer));
    }
    let current = match (snapshot.state.take(), cached, last) {
        // Nothing changed since the last read: its answer stands.
        (None, Some(_), Some(last)) if *last.snapshot == snapshot => {
            CurrentSnapshot { mark, ..last }
        }
        (None, Some(cached), _) => CurrentSnapshot {
            mark,
            state: cached.state,
            snapshot: Arc::new(snapshot),
            answered: Arc::default(),
        },
        (Some(state), ..) => {
            let state = Arc::new(state);
            states.put(
                customer,
                CachedState {
                    version: snapshot.version,
                    state: state.clone(),
                },
            );
            CurrentSnapshot {
                mark,
                state,
                snapshot: Arc::new(snapshot),
                answered: Arc::default(),
            }
        }
        (None, None, _) => {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "the store left out a state the caller does not have"
            )))
        }
    };
    let answer = answer_of(&current, catalog, now)?;
    states.put_snapshot(customer, current);
    Ok(answer)
}

fn answer(feature: FeatureName, used: u64, limit: u64, replayed: bool) -> Json<UsageAnswer> {
    Json(UsageAnswer {
        feature,
        used,
        limit,
        remaining: limit.saturating_sub(used),
        replayed,
    })
}

/// One guarded consume, group-committed with the consumes that arrive
/// with it.
async fn consume<S: BillingBackend + ?Sized>(
    state: &UsageState<S>,
    consume: GuardedConsume,
) -> Result<GuardedOutcome, StoreError> {
    state.consumer.consume(consume).await
}

/// The customer's state: the cached one, unless `reread`, else read
/// (404 `customer_not_found` or `customer_deleted`) and cached.
async fn customer_state<S: BillingBackend + ?Sized>(
    state: &UsageState<S>,
    customer: &CustomerId,
    reread: bool,
) -> Result<CachedState, ApiError> {
    if !reread {
        if let Some(cached) = state.states.get(customer) {
            return Ok(cached);
        }
    }
    let record = crate::http::app::account::live_customer(&*state.store, customer).await?;
    let cached = CachedState {
        version: record.version,
        state: Arc::new(record.state),
    };
    state.states.put(customer, cached.clone());
    Ok(cached)
}

fn no_access(access: Access) -> ApiError {
    ApiError::NoAccess {
        access: serde_json::to_value(access)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{access:?}").to_lowercase()),
    }
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/usage/{feature}", tag = "app",
    description = "Consumes `amount` (default 1) of a feature, idempotent by `idempotency_key` (body) or `Idempotency-Key` (header).",
    params(crate::http::openapi::UsagePath, crate::http::openapi::IdempotencyHeader),
    request_body = UsageBody,
    responses(
        (status = 200, description = "Counted (or the stored answer of the same key).", body = UsageAnswer),
        (status = 400, description = "`idempotency_key_required`, `invalid_amount`, `idempotency_key_reused`, `flag_feature`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 402, description = "`quota_exceeded` (with `feature`, `limit`, `used`, `remaining`, `requested`), or with overage open `overage_cap_reached` (with `feature`, `included`, `cap`, `used`, `requested`).", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "`no_access` (with `access`).", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_feature`.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn consume_usage<S: BillingBackend + ?Sized>(
    State(state): State<UsageState<S>>,
    Path((id, feature)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<UsageBody>, JsonRejection>,
) -> Result<Json<UsageAnswer>, ApiError> {
    let p = parse(&id, &feature, &state.catalog, &headers, body)?;
    for attempt in 0..=STALE_RETRIES {
        let cached = customer_state(&state, &p.customer, attempt > 0).await?;
        let target = consume_target(
            &cached.state,
            &state.catalog,
            &p.feature,
            p.amount.get(),
            state.clock.now(),
        )
        .map_err(|e| match e {
            ConsumeError::UnknownFeature => unknown_feature(&feature),
            other => invalid(other.code(), other.to_string()),
        })?;
        let guarded = GuardedConsume {
            request: UsageRequest {
                customer_id: p.customer.clone(),
                key: target.key,
                amount: p.amount.get(),
                idempotency_key: p.idempotency_key.clone(),
                overage: target.overage.clone(),
                credits: target.credits.clone(),
            },
            limit: target.limit,
            customer_version: cached.version,
        };
        let outcome = match consume(&state, guarded).await.map_err(store_error)? {
            GuardedOutcome::Decided(outcome) => outcome,
            GuardedOutcome::Stale => {
                state.states.forget(&p.customer, cached.version);
                continue;
            }
        };
        // Without access the limit was 0: only a stored answer applies.
        return match (outcome, target.refused) {
            (
                UsageOutcome::Applied {
                    used,
                    limit,
                    replayed,
                },
                _,
            ) => Ok(answer(p.feature, used, limit, replayed)),
            (UsageOutcome::LimitExceeded { .. }, Some(access)) => Err(no_access(access)),
            (UsageOutcome::LimitExceeded { used, limit }, None) => match &target.overage {
                Some(meter) => Err(ApiError::OverageCapReached {
                    feature: p.feature,
                    included: meter.included,
                    cap: limit.saturating_sub(meter.included),
                    used,
                    requested: p.amount.get(),
                }),
                None => Err(ApiError::QuotaExceeded {
                    feature: p.feature,
                    limit,
                    used,
                    requested: p.amount.get(),
                }),
            },
        };
    }
    Err(ApiError::StoreUnavailable(
        "the customer's billing state kept changing during the consume; retry".to_owned(),
    ))
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/usage/{feature}/release", tag = "app",
    description = "Gives capacity back (capacity features only), never below 0.",
    params(crate::http::openapi::UsagePath, crate::http::openapi::IdempotencyHeader),
    request_body = UsageBody,
    responses(
        (status = 200, description = "Released.", body = UsageAnswer),
        (status = 400, description = "`not_a_capacity_feature`, `idempotency_key_required`, `invalid_amount`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "`unknown_feature`.", body = crate::http::openapi::ErrorBody),
    )
)]
async fn release_usage<S: BillingBackend + ?Sized>(
    State(state): State<UsageState<S>>,
    Path((id, feature)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<UsageBody>, JsonRejection>,
) -> Result<Json<UsageAnswer>, ApiError> {
    let p = parse(&id, &feature, &state.catalog, &headers, body)?;
    if state.catalog.features().get(&p.feature) != Some(&FeatureKind::Capacity) {
        return Err(invalid(
            "not_a_capacity_feature",
            format!("{feature} is metered; only capacity features can be released"),
        ));
    }
    // Releasing is allowed whatever the access: giving capacity back is how
    // a customer over a limit gets under it.
    let ent = load_entitlements(&state, &p.customer).await?;
    let quota = ent
        .features
        .get(&p.feature)
        .ok_or_else(|| unknown_feature(&feature))?;
    let request = UsageRequest {
        customer_id: p.customer,
        key: quota.usage_key.clone(),
        amount: p.amount.get(),
        idempotency_key: p.idempotency_key,
        overage: None,
        credits: None,
    };
    let limit = quota.limit;
    match state
        .store
        .release(&request, state.clock.now())
        .await
        .map_err(store_error)?
    {
        UsageOutcome::Applied { used, replayed, .. } => {
            Ok(answer(p.feature, used, limit, replayed))
        }
        UsageOutcome::LimitExceeded { used, .. } => Ok(answer(p.feature, used, limit, false)),
    }
}
