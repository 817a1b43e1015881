//! Stripe API client: form-encoded requests pinned to [`crate::API_VERSION`],
//! an idempotency key on every mutating call, and retries with exponential
//! backoff and jitter on the failures Stripe documents as retryable
//! (connection errors, 409 `lock_timeout`, 429, 5xx), honouring
//! `Stripe-Should-Retry` and `Retry-After`.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

/// How to reach Stripe (or an emulator speaking its API).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL without a trailing slash, e.g. `https://api.stripe.com`.
    pub api_base: String,
    /// Secret key (`sk_test_…` / `sk_live_…` / `rk_…`).
    pub api_key: SecretString,
    /// Retries after the first attempt for retryable failures.
    pub max_retries: u32,
    /// Delay before the first retry; doubles each retry.
    pub initial_backoff: Duration,
    /// Upper bound of one backoff delay.
    pub max_backoff: Duration,
    /// Timeout of one HTTP attempt.
    pub request_timeout: Duration,
    /// Sees every call before it is sent (once per call, not per retry):
    /// the test suites check billd's requests against Stripe's definitions
    /// with it. `None`, the default, costs nothing.
    pub recorder: Option<Recorder>,
}

/// One call as the client makes it: the path as the caller gave it, and
/// the parameters in Stripe's bracketed spelling (the query of a `GET`, the
/// form body otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST` or `DELETE`.
    pub method: String,
    /// E.g. `/v1/subscriptions/sub_123`.
    pub path: String,
    /// The parameters, in the order they are sent.
    pub params: Vec<(String, String)>,
}

/// A hook called with every [`RecordedRequest`]. Cheap to clone.
#[derive(Clone)]
pub struct Recorder(Arc<dyn Fn(&RecordedRequest) + Send + Sync>);

impl Recorder {
    /// A recorder calling `f` for every request.
    pub fn new(f: impl Fn(&RecordedRequest) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Recorder(..)")
    }
}

impl ClientConfig {
    /// A configuration with Stripe's recommended retry policy.
    pub fn new(api_base: impl Into<String>, api_key: SecretString) -> Self {
        Self {
            api_base: api_base.into().trim_end_matches('/').to_owned(),
            api_key,
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            request_timeout: Duration::from_secs(30),
            recorder: None,
        }
    }
}

/// An error object returned by Stripe (`{"error": {...}}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status of the response.
    pub status: u16,
    /// `error.type`, e.g. `card_error`, `invalid_request_error`.
    pub kind: String,
    /// `error.code`, e.g. `resource_missing`, `card_declined`.
    pub code: Option<String>,
    /// `error.decline_code` for card errors.
    pub decline_code: Option<String>,
    /// `error.param`: the parameter at fault.
    pub param: Option<String>,
    /// Human-readable message.
    pub message: String,
}

/// Why a Stripe call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error object that retrying will not fix
    /// (or that still failed after every retry).
    #[error("stripe api error {}: {} ({})", .0.status, .0.message, .0.code.as_deref().unwrap_or(&.0.kind))]
    Api(Box<ApiError>),
    /// Stripe could not be reached or kept failing (network, 5xx, 429) after
    /// every retry. The caller may try again later.
    #[error("stripe unavailable: {0}")]
    Unavailable(String),
    /// Stripe answered 2xx with a body that is not JSON.
    #[error("stripe response could not be decoded: {0}")]
    Decode(String),
}

impl StripeError {
    /// True when the error is Stripe saying the object does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StripeError::Api(e) if e.status == 404)
    }
}

/// Form parameters in Stripe's nested-key syntax, e.g.
/// `("items[0][price]", "price_…")`, `("expand[]", "latest_invoice")`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// No parameters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one parameter.
    pub fn set(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.0.push((key.into(), value.to_string()));
        self
    }

    /// Adds one parameter when the value is present.
    pub fn set_opt(self, key: impl Into<String>, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    /// The pairs, in insertion order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    fn encode(&self) -> String {
        // serde_urlencoded percent-encodes brackets, which Stripe accepts.
        serde_urlencoded::to_string(&self.0).unwrap_or_default()
    }
}

/// A Stripe API client. Cheap to clone.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    config: ClientConfig,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("api_base", &self.config.api_base)
            .finish_non_exhaustive()
    }
}

/// The client billd runs with, or [`StripeError::Unavailable`] when it runs
/// without one: callers then answer 503 or retry later, exactly as when
/// Stripe cannot be reached.
pub fn configured(client: Option<&StripeClient>) -> Result<&StripeClient, StripeError> {
    client.ok_or_else(|| StripeError::Unavailable("no Stripe client is configured".into()))
}

impl StripeClient {
    /// Builds a client; fails only if the TLS/HTTP stack cannot be set up.
    pub fn new(config: ClientConfig) -> Result<Self, StripeError> {
        let http = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StripeError::Unavailable(format!("http client: {e}")))?;
        Ok(Self { http, config })
    }

    /// The API base this client talks to.
    pub fn api_base(&self) -> &str {
        &self.config.api_base
    }

    /// True for a test-mode key (`sk_test_…`, `rk_test_…`).
    pub fn is_test_mode(&self) -> bool {
        let key = self.config.api_key.expose_secret();
        key.starts_with("sk_test_") || key.starts_with("rk_test_")
    }

    /// `GET {path}?{params}`.
    pub async fn get(&self, path: &str, params: &Params) -> Result<Value, StripeError> {
        self.send(Method::GET, path, params, None).await
    }

    /// `POST {path}` with a form body. Without `idempotency_key` a random one
    /// is generated, so that this call's own retries can never apply twice;
    /// callers that may repeat the call after a crash pass a key derived from
    /// their own state instead.
    pub async fn post(
        &self,
        path: &str,
        params: &Params,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let key = idempotency_key.map_or_else(random_idempotency_key, str::to_owned);
        self.send(Method::POST, path, params, Some(&key)).await
    }

    /// `DELETE {path}` (idempotent by nature at Stripe; a key is sent anyway
    /// so that a replay returns the first answer rather than a 404).
    pub async fn delete(
        &self,
        path: &str,
        params: &Params,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        let key = idempotency_key.map_or_else(random_idempotency_key, str::to_owned);
        self.send(Method::DELETE, path, params, Some(&key)).await
    }

    /// Every object of a list endpoint, following `has_more`/`starting_after`
    /// page by page (100 per page), up to `max_items`.
    pub async fn list_all(
        &self,
        path: &str,
        params: &Params,
        max_items: usize,
    ) -> Result<Vec<Value>, StripeError> {
        let mut out = Vec::new();
        let mut starting_after: Option<String> = None;
        loop {
            let page_params = params
                .clone()
                .set("limit", 100)
                .set_opt("starting_after", starting_after.as_deref());
            let page = self.get(path, &page_params).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| StripeError::Decode(format!("{path}: list without data")))?;
            let last_id = data
                .last()
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            out.extend(data.iter().cloned());
            let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            match last_id {
                Some(id) if has_more && out.len() < max_items => starting_after = Some(id),
                _ => break,
            }
        }
        out.truncate(max_items);
        Ok(out)
    }

    /// Retrieves a subscription (for same-second ordering ties and
    /// reconciliation).
    pub async fn retrieve_subscription(&self, id: &str) -> Result<Value, StripeError> {
        self.get(&format!("/v1/subscriptions/{id}"), &Params::new())
            .await
    }

    /// Cancels a subscription immediately. A subscription that is already
    /// canceled counts as success, so the outbox can retry this safely.
    pub async fn cancel_subscription(
        &self,
        id: &str,
        idempotency_key: &str,
    ) -> Result<Value, StripeError> {
        let path = format!("/v1/subscriptions/{id}");
        match self
            .delete(&path, &Params::new(), Some(idempotency_key))
            .await
        {
            Err(StripeError::Api(e)) if is_already_canceled(&e) => {
                self.get(&path, &Params::new()).await
            }
            other => other,
        }
    }

    /// `POST /v1/billing/meter_events`: `value` units of `event_name` for
    /// `stripe_customer` at `timestamp`, under Stripe's dedupe
    /// `identifier`. Stripe refuses an identifier it already has (a resend
    /// after a lost answer): that counts as delivered, and the answer is
    /// `Ok(None)`; a new event answers `Ok(Some(event))`.
    pub async fn create_meter_event(
        &self,
        event_name: &str,
        stripe_customer: &str,
        value: u64,
        identifier: &str,
        timestamp: i64,
    ) -> Result<Option<Value>, StripeError> {
        let params = Params::new()
            .set("event_name", event_name)
            .set("payload[stripe_customer_id]", stripe_customer)
            .set("payload[value]", value)
            .set("identifier", identifier)
            .set("timestamp", timestamp);
        match self
            // No idempotency key of billd's: the identifier is Stripe's
            // dedupe, and a resend must meet it rather than a replayed answer.
            .post("/v1/billing/meter_events", &params, None)
            .await
        {
            Ok(event) => Ok(Some(event)),
            Err(StripeError::Api(e)) if is_duplicate_meter_event(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        params: &Params,
        idempotency_key: Option<&str>,
    ) -> Result<Value, StripeError> {
        if let Some(recorder) = &self.config.recorder {
            (recorder.0)(&RecordedRequest {
                method: method.as_str().to_owned(),
                path: path.to_owned(),
                params: params.pairs().to_vec(),
            });
        }
        let mut attempt = 0u32;
        loop {
            match self.send_once(&method, path, params, idempotency_key).await {
                Ok(v) => return Ok(v),
                Err(failure) => {
                    let retry = failure.retryable && attempt < self.config.max_retries;
                    if !retry {
                        return Err(failure.error);
                    }
                    let delay = failure
                        .retry_after
                        .unwrap_or_else(|| self.backoff(attempt))
                        .min(self.config.max_backoff);
                    tracing::debug!(
                        path,
                        attempt,
                        delay_ms = delay.as_millis() as u64,
                        error = %failure.error,
                        "retrying stripe call"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Exponential backoff with "equal jitter": half fixed, half random, so
    /// that many clients retrying at once spread out but never retry at 0 ms.
    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .config
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt))
            .min(self.config.max_backoff);
        let half = base / 2;
        let jitter = rand::thread_rng().gen_range(0..=half.as_millis() as u64);
        half + Duration::from_millis(jitter)
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        params: &Params,
        idempotency_key: Option<&str>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{}", self.config.api_base, path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.config.api_key.expose_secret())
            .header("Stripe-Version", crate::API_VERSION);
        if let Some(key) = idempotency_key {
            req = req.header("Idempotency-Key", key);
        }
        let encoded = params.encode();
        req = if *method == Method::GET {
            if encoded.is_empty() {
                req
            } else {
                req.query(params.pairs())
            }
        } else {
            req.header("Content-Type", "application/x-www-form-urlencoded")
                .body(encoded)
        };

        let resp = req.send().await.map_err(|e| Failure {
            // A request that never got an answer may or may not have reached
            // Stripe; the idempotency key makes the retry safe either way.
            retryable: true,
            retry_after: None,
            error: StripeError::Unavailable(format!("{method} {path}: {e}")),
        })?;
        let status = resp.status();
        let should_retry = resp
            .headers()
            .get("stripe-should-retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v == "true");
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.bytes().await.map_err(|e| Failure {
            retryable: true,
            retry_after: None,
            error: StripeError::Unavailable(format!("{method} {path}: reading body: {e}")),
        })?;

        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|e| Failure {
                retryable: false,
                retry_after: None,
                error: StripeError::Decode(format!("{method} {path}: {e}")),
            });
        }

        let api_error = parse_error(status, &body);
        let retryable = should_retry.unwrap_or_else(|| {
            status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
                || (status == StatusCode::CONFLICT
                    && api_error.code.as_deref() == Some("lock_timeout"))
        });
        let error = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            StripeError::Unavailable(format!(
                "{method} {path}: {} {}",
                status.as_u16(),
                api_error.message
            ))
        } else {
            StripeError::Api(Box::new(api_error))
        };
        Err(Failure {
            retryable,
            retry_after,
            error,
        })
    }
}

struct Failure {
    retryable: bool,
    retry_after: Option<Duration>,
    error: StripeError,
}

fn parse_error(status: StatusCode, body: &[u8]) -> ApiError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let e = v.get("error").unwrap_or(&Value::Null);
    let s = |k: &str| e.get(k).and_then(Value::as_str).map(str::to_owned);
    ApiError {
        status: status.as_u16(),
        kind: s("type").unwrap_or_else(|| "api_error".to_owned()),
        code: s("code"),
        decline_code: s("decline_code"),
        param: s("param"),
        message: s("message").unwrap_or_else(|| {
            String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>()
        }),
    }
}

fn is_already_canceled(e: &ApiError) -> bool {
    // Stripe refuses to cancel a canceled subscription with a 400 whose
    // message says so; the subscription itself is still retrievable.
    e.status == 400 && e.message.contains("canceled")
}

fn is_duplicate_meter_event(e: &ApiError) -> bool {
    // Stripe answers a meter event whose identifier it has seen with a 400
    // "An event already exists with identifier …".
    e.status == 400 && e.message.contains("already exists with identifier")
}

fn random_idempotency_key() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("billd-{n:032x}")
}
