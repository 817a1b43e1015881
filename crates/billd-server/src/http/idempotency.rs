//! `Idempotency-Key` on the app API's mutating routes (checkout, plan
//! change, cancel, resume, usage consume and release), with Stripe's
//! semantics:
//!
//! - the first request with a key runs; its answer (status and body) is
//!   stored durably before it is sent;
//! - the same key with the same request (method, path and a digest of the
//!   body) answers the stored answer again, with `Idempotent-Replayed: true`;
//! - the same key with another request is `400 idempotency_key_reused`;
//! - the same key while its first request still runs is
//!   `409 idempotency_key_in_use`;
//! - a key is 1 to 255 printable ASCII characters
//!   (`400 invalid_idempotency_key`), scoped per customer and per API key
//!   class, and forgotten after 24 hours.
//!
//! Answers a retry may change are not stored (5xx, `429 rate_limited`,
//! `409 checkout_busy`: see [`crate::http::error::Transient`]): the key is given
//! back and a retry runs again. The handler runs in a task of its own, so a
//! client that hangs up does not leave its key in use; a process that dies
//! mid-request leaves a lease ([`LEASE_SECS`]) after which the same request
//! runs again. That second run cannot charge twice: every Stripe call is
//! idempotent by a key derived from the request and the state it saw, and
//! the handlers re-read Stripe before changing anything.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use billd_core::{CustomerId, IdempotencyKey};
use billd_store::{IdempotencyScope, IdempotencyStore, IdempotentRequest, KeyTaken, StoredAnswer};
use sha2::{Digest, Sha256};

use crate::http::auth::Role;
use crate::http::error::{ApiError, Transient};
use crate::pipeline::Clock;

/// The request header carrying the client's key.
pub const HEADER: &str = "idempotency-key";

/// The response header marking a stored answer sent again.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// How long a key and its answer are kept.
pub const KEY_TTL_SECS: i64 = 86_400;

/// How long a run holds its key before the same request may take it over
/// (the run's process is presumed dead). Longer than any handler takes:
/// Stripe calls with their retries, plus the wait for the inbox worker.
pub const LEASE_SECS: i64 = 120;

/// The largest request body read to digest it: axum's default body limit,
/// which the JSON extractors would enforce anyway.
const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;

/// The largest answer stored; billd's answers are a few KiB.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A run of a request under a key, for handlers that make the request's
/// effect depend on when it was made: a run that took over a dead run's
/// key acts as of the first run, so it asks Stripe for the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyedRun {
    /// When the key was first taken (unix seconds, billd's clock).
    pub first_seen: i64,
}

/// What the middleware needs: the store of answers and the clock keys
/// expire by.
pub struct Idempotency<S: IdempotencyStore + ?Sized> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
}

impl<S: IdempotencyStore + ?Sized> Clone for Idempotency<S> {
    fn clone(&self) -> Self {
        Idempotency {
            store: self.store.clone(),
            clock: self.clock.clone(),
        }
    }
}

impl<S: IdempotencyStore + ?Sized> Idempotency<S> {
    /// The middleware's state over `store`, expiring keys by `clock`.
    pub fn new(store: Arc<S>, clock: Arc<dyn Clock>) -> Self {
        Idempotency { store, clock }
    }

    /// Wraps one route's method router in the middleware (for
    /// [`crate::http::openapi::route_with`]).
    pub fn layer<T>(
        &self,
    ) -> impl FnOnce(axum::routing::MethodRouter<T>) -> axum::routing::MethodRouter<T>
    where
        T: Clone + Send + Sync + 'static,
    {
        let state = self.clone();
        move |method_router| {
            method_router.layer(axum::middleware::from_fn_with_state(state, idempotent::<S>))
        }
    }
}

/// The client's key, or `None` without the header; 400
/// `invalid_idempotency_key` for a key that is not 1 to 255 printable
/// ASCII characters, or for the header given twice.
pub fn key_of(headers: &axum::http::HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |message: String| ApiError::InvalidRequest {
        code: "invalid_idempotency_key",
        message,
    };
    if values.next().is_some() {
        return Err(invalid("send one Idempotency-Key header".to_owned()));
    }
    let raw = value
        .to_str()
        .map_err(|_| invalid("Idempotency-Key must be printable ASCII".to_owned()))?;
    IdempotencyKey::parse(raw).map(Some).map_err(|e| {
        invalid(format!(
            "Idempotency-Key: {e} (1 to 255 printable ASCII characters)"
        ))
    })
}

/// The middleware: requests without the header pass through untouched.
async fn idempotent<S: IdempotencyStore + ?Sized>(
    State(state): State<Idempotency<S>>,
    request: Request,
    next: Next,
) -> Response {
    match keyed(state, request, next).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Takes the key, then runs the request and keeps its answer, or answers
/// from the key (replay, reused, in use).
async fn keyed<S: IdempotencyStore + ?Sized>(
    state: Idempotency<S>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = key_of(request.headers())? else {
        return Ok(next.run(request).await);
    };
    let (mut parts, body) = request.into_parts();
    let customer = RawPathParams::from_request_parts(&mut parts, &())
        .await
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(name, _)| *name == "id")
                .and_then(|(_, value)| CustomerId::parse(value).ok())
        });
    let Some(customer_id) = customer else {
        // Not a customer's route, or an id the handler refuses with 400
        // anyway: nothing to scope the key by, nothing to store.
        return Ok(next.run(Request::from_parts(parts, body)).await);
    };
    let key_class = match parts.extensions.get::<Role>() {
        Some(Role::Admin) => "admin",
        _ => "app",
    };
    let body = axum::body::to_bytes(body, MAX_REQUEST_BYTES)
        .await
        .map_err(|e| body_error(&e))?;
    let now = state.clock.now();
    let scope = IdempotencyScope {
        customer_id,
        key_class: key_class.to_owned(),
        key,
    };
    let keyed = IdempotentRequest {
        scope: scope.clone(),
        fingerprint: fingerprint(&parts, &body),
        token: hex::encode(rand::random::<[u8; 16]>()),
        locked_until: now + LEASE_SECS,
        expires_at: now + KEY_TTL_SECS,
    };
    let taken = state
        .store
        .take_idempotency_key(&keyed, now)
        .await
        .map_err(crate::http::api::store_error)?;
    let first_seen = match taken {
        KeyTaken::Run { first_seen } => first_seen,
        KeyTaken::Replay(answer) => return Ok(replay(answer)),
        KeyTaken::Reused => {
            return Err(ApiError::InvalidRequest {
                code: "idempotency_key_reused",
                message: "this Idempotency-Key was used for a different request".to_owned(),
            })
        }
        KeyTaken::InUse => {
            return Err(ApiError::Conflict {
                code: "idempotency_key_in_use",
                message: "a request with this Idempotency-Key is still running; retry shortly"
                    .to_owned(),
            })
        }
    };
    parts.extensions.insert(KeyedRun { first_seen });
    let request = Request::from_parts(parts, Body::from(body));
    let token = keyed.token;
    // The run and the storing of its answer go on even if the client
    // hangs up: the key is then answered, not left in use until its lease
    // ends.
    let run = {
        let (store, scope, token) = (state.store.clone(), scope.clone(), token.clone());
        tokio::spawn(async move {
            let response = next.run(request).await;
            finish(&*store, &scope, &token, response).await
        })
    };
    match run.await {
        Ok(response) => Ok(response),
        Err(e) => {
            // The handler panicked: no answer to keep, a retry runs again.
            if let Err(release) = state.store.release_idempotency_key(&scope, &token).await {
                tracing::warn!(error = %release, "could not give back an idempotency key");
            }
            Err(ApiError::Internal(anyhow::anyhow!(
                "the request under an Idempotency-Key failed: {e}"
            )))
        }
    }
}

/// 413 when the body is over the limit, else 400 (the client sent a body
/// that could not be read).
fn body_error(e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if cause.is::<http_body_util::LengthLimitError>() {
            return ApiError::PayloadTooLarge {
                limit: MAX_REQUEST_BYTES,
            };
        }
        source = cause.source();
    }
    ApiError::InvalidRequest {
        code: "invalid_body",
        message: format!("the request body could not be read: {e}"),
    }
}

/// A digest of what makes two requests the same request: method, path
/// (with query) and body bytes.
fn fingerprint(parts: &axum::http::request::Parts, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(parts.method.as_str().as_bytes());
    hash.update([0u8]);
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path(), |pq| pq.as_str());
    hash.update(target.as_bytes());
    hash.update([0u8]);
    hash.update(body);
    hex::encode(hash.finalize())
}

/// A stored answer, sent again.
fn replay(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    let mut response = (status, answer.body).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}

/// Stores the run's answer under its key (durably, before it is sent), or
/// gives the key back when the answer is one a retry may change.
async fn finish<S: IdempotencyStore + ?Sized>(
    store: &S,
    scope: &IdempotencyScope,
    token: &str,
    response: Response,
) -> Response {
    let (parts, body) = response.into_parts();
    let keep = !parts.status.is_server_error() && parts.extensions.get::<Transient>().is_none();
    let bytes = match axum::body::to_bytes(body, MAX_ANSWER_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => {
            give_back(store, scope, token).await;
            return ApiError::Internal(anyhow::anyhow!("reading the answer to store it: {e}"))
                .into_response();
        }
    };
    let text = keep.then(|| std::str::from_utf8(&bytes).ok()).flatten();
    match text {
        Some(text) => {
            let answer = StoredAnswer {
                status: parts.status.as_u16(),
                body: text.to_owned(),
            };
            match store.store_idempotent_answer(scope, token, &answer).await {
                Ok(true) => {}
                // Another run took the key over (this one outlived its
                // lease); its answer is the one kept.
                Ok(false) => tracing::warn!(
                    customer = %scope.customer_id,
                    "an idempotent answer was not stored: the key was taken over"
                ),
                // The effect happened; the client gets its answer. A retry
                // finds the key in use until the lease ends, then runs
                // again, which the handlers' own idempotency makes safe.
                Err(e) => tracing::error!(
                    customer = %scope.customer_id, error = %e,
                    "an idempotent answer could not be stored"
                ),
            }
        }
        None => give_back(store, scope, token).await,
    }
    Response::from_parts(parts, Body::from(bytes))
}

async fn give_back<S: IdempotencyStore + ?Sized>(store: &S, scope: &IdempotencyScope, token: &str) {
    if let Err(e) = store.release_idempotency_key(scope, token).await {
        // The lease ends on its own; until then a retry is told to wait.
        tracing::warn!(customer = %scope.customer_id, error = %e, "could not give back an idempotency key");
    }
}
