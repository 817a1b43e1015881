//! The one place that maps errors to HTTP statuses.

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use billd_stripe::webhook::VerifyError;

/// Every error an HTTP handler can return. `IntoResponse` below is the only
/// status table; the body is always `{"error":{"code","message"}}` with a
/// stable `code`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The `Stripe-Signature` header did not verify.
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// The body is not a JSON Stripe event.
    #[error("the body is not a Stripe event: {0}")]
    PayloadInvalid(String),
    /// The body is larger than the endpoint accepts.
    #[error("the body is larger than {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body is not JSON (`Content-Type: application/json`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A string field of a request is longer than billd accepts.
    #[error("{field} must be at most {max} characters")]
    FieldTooLong {
        /// The field, as the request names it (`email`, `success_url`).
        field: &'static str,
        /// The most characters it may have.
        max: usize,
    },
    /// A response axum or hyper made before any billd code ran: no route
    /// for the path, a method the path does not serve, an extractor's
    /// rejection a handler does not take itself. `respond.rs` gives it
    /// the error shape; its status is kept and its code follows from it.
    #[error("{message}")]
    Framework {
        /// The status axum answered.
        status: StatusCode,
        /// What was wrong.
        message: String,
    },
    /// The database cannot be reached; the caller should retry.
    #[error("the store is unavailable")]
    StoreUnavailable(String),
    /// The service is not ready (see `/readyz`).
    #[error("not ready: {0}")]
    NotReady(String),
    /// No API key, or one billd does not know.
    #[error("a valid API key is required (Authorization: Bearer …)")]
    Unauthorized,
    /// A valid app key on an admin route.
    #[error("this key may not use the admin API")]
    Forbidden,
    /// The thing asked for does not exist.
    #[error("{message}")]
    NotFound {
        /// Stable code, e.g. `customer_not_found`.
        code: &'static str,
        /// What was not found.
        message: String,
    },
    /// The request is malformed.
    #[error("{message}")]
    InvalidRequest {
        /// Stable code, e.g. `invalid_customer_id`.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The request conflicts with the customer's current state (e.g.
    /// `already_subscribed`, `currency_locked`).
    #[error("{message}")]
    Conflict {
        /// Stable code.
        code: &'static str,
        /// What conflicts, and what to do instead.
        message: String,
    },
    /// A quota or payment stands in the way (e.g. `quota_exceeded`).
    #[error("{message}")]
    PaymentRequired {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// A consumption would exceed the feature's limit (402
    /// `quota_exceeded`); the body also carries `feature`, `limit`, `used`,
    /// `remaining` and `requested`.
    #[error("quota exceeded: {used} of {limit} used, {requested} requested")]
    QuotaExceeded {
        /// The feature.
        feature: billd_core::FeatureName,
        /// The limit under the plan that applies.
        limit: u64,
        /// Used now.
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// A consumption would pass the overage cap of a metered feature sold
    /// beyond its quota (402 `overage_cap_reached`); the body also carries
    /// `feature`, `included`, `cap`, `used` and `requested`.
    #[error("overage cap reached: {used} used of {included} included plus {cap} overage, {requested} requested")]
    OverageCapReached {
        /// The feature.
        feature: billd_core::FeatureName,
        /// The included quota.
        included: u64,
        /// The overage cap per period.
        cap: u64,
        /// Used now, overage included.
        used: u64,
        /// The amount asked for.
        requested: u64,
    },
    /// Access is blocked, frozen or the grace period is over (403
    /// `no_access`); the body also carries `access`.
    #[error("no access: the customer's access is {access}")]
    NoAccess {
        /// The access decision, as the entitlements show it (`blocked`, …).
        access: String,
    },
    /// The customer may not do this now (e.g. `no_access` when blocked).
    #[error("{message}")]
    Denied {
        /// Stable code.
        code: &'static str,
        /// Why.
        message: String,
    },
    /// Too many requests; the caller may retry after `retry_after_secs`
    /// (sent as `Retry-After`).
    #[error("{message}")]
    RateLimited {
        /// Seconds until a retry can succeed (at least 1).
        retry_after_secs: u64,
        /// What was limited.
        message: String,
    },
    /// Stripe cannot be reached or answers 5xx/429 after retries; the call
    /// changed nothing billd knows of, and the caller should retry.
    #[error("Stripe is unavailable; retry later")]
    StripeUnavailable(String),
    /// Stripe refused a request billd built: a bug or an account set-up
    /// problem, not the caller's fault. The cause is logged.
    #[error("Stripe refused the request")]
    StripeRejected(String),
    /// A bug or an unclassified failure; the cause is logged, never returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Signature(e) => e.code(),
            ApiError::PayloadInvalid(_) => "payload_invalid",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::FieldTooLong { .. } => "field_too_long",
            ApiError::Framework { status, .. } => framework_code(*status),
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound { code, .. }
            | ApiError::InvalidRequest { code, .. }
            | ApiError::Conflict { code, .. }
            | ApiError::PaymentRequired { code, .. }
            | ApiError::Denied { code, .. } => code,
            ApiError::QuotaExceeded { .. } => "quota_exceeded",
            ApiError::OverageCapReached { .. } => "overage_cap_reached",
            ApiError::NoAccess { .. } => "no_access",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::StripeUnavailable(_) => "stripe_unavailable",
            ApiError::StripeRejected(_) => "stripe_error",
            ApiError::Internal(_) => "internal",
        }
    }

    /// Whether the same request may get another answer when simply sent
    /// again (an outage, a rate-limit window, a race with another
    /// process): such answers are never stored under an `Idempotency-Key`.
    pub fn is_transient(&self) -> bool {
        self.status().is_server_error()
            || matches!(
                self,
                ApiError::RateLimited { .. }
                    | ApiError::Conflict {
                        code: "checkout_busy" | "idempotency_key_in_use",
                        ..
                    }
            )
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Signature(_) | ApiError::PayloadInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::FieldTooLong { .. } => StatusCode::BAD_REQUEST,
            // Only error statuses reach here (see `crate::http::respond`); a
            // success status would be a bug, answered as one.
            ApiError::Framework { status, .. } if status.is_client_error() => *status,
            ApiError::Framework { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::StoreUnavailable(_) | ApiError::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PaymentRequired { .. }
            | ApiError::QuotaExceeded { .. }
            | ApiError::OverageCapReached { .. } => StatusCode::PAYMENT_REQUIRED,
            ApiError::Denied { .. } | ApiError::NoAccess { .. } => StatusCode::FORBIDDEN,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StripeUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::StripeRejected(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// The code of a [`ApiError::Framework`] answer, from its status.
fn framework_code(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::URI_TOO_LONG => "uri_too_long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_client_error() => "invalid_request",
        _ => "internal",
    }
}

impl From<JsonRejection> for ApiError {
    /// A JSON body the app API could not take: over the limit → 413
    /// `payload_too_large`; not `application/json` → 415
    /// `unsupported_media_type`; anything else (not JSON, the wrong shape,
    /// an unknown field) → 400 `invalid_body`.
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge {
                limit: crate::http::api::MAX_BODY_BYTES,
            },
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ApiError::UnsupportedMediaType(rejection.body_text())
            }
            _ => ApiError::InvalidRequest {
                code: "invalid_body",
                message: rejection.body_text(),
            },
        }
    }
}

/// Attached to error responses so the logging middleware can log the cause
/// once, with the request's method and path, instead of every handler
/// logging on its own.
#[derive(Debug, Clone)]
pub struct LoggedError {
    /// The stable code.
    pub code: &'static str,
    /// The full cause chain (never sent to the client for 5xx).
    pub detail: String,
}

/// Attached to error responses a retry may change ([`ApiError::is_transient`]),
/// so the `Idempotency-Key` middleware gives the key back instead of
/// storing them.
#[derive(Debug, Clone, Copy)]
pub struct Transient;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        // Internal details stay in the log; the client gets an opaque message.
        let message = match &self {
            ApiError::Internal(_) => "internal error".to_string(),
            ApiError::Framework { status, .. } if status.is_server_error() => {
                "internal error".to_string()
            }
            ApiError::StoreUnavailable(_) => "the store is unavailable; retry later".to_string(),
            other => other.to_string(),
        };
        let detail = match &self {
            ApiError::Internal(e) => format!("{e:#}"),
            ApiError::StoreUnavailable(cause)
            | ApiError::StripeUnavailable(cause)
            | ApiError::StripeRejected(cause) => cause.clone(),
            other => other.to_string(),
        };
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        };
        let mut error = serde_json::json!({ "code": code, "message": message });
        // Quota answers say where the customer stands, so the app can show
        // it without a second call.
        match &self {
            ApiError::QuotaExceeded {
                feature,
                limit,
                used,
                requested,
            } => {
                error["feature"] = serde_json::json!(feature);
                error["limit"] = serde_json::json!(limit);
                error["used"] = serde_json::json!(used);
                error["remaining"] = serde_json::json!(limit.saturating_sub(*used));
                error["requested"] = serde_json::json!(requested);
            }
            ApiError::OverageCapReached {
                feature,
                included,
                cap,
                used,
                requested,
            } => {
                error["feature"] = serde_json::json!(feature);
                error["included"] = serde_json::json!(included);
                error["cap"] = serde_json::json!(cap);
                error["used"] = serde_json::json!(used);
                error["requested"] = serde_json::json!(requested);
            }
            ApiError::NoAccess { access } => error["access"] = serde_json::json!(access),
            _ => {}
        }
        let body = serde_json::json!({ "error": error });
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.is_transient() {
            response.extensions_mut().insert(Transient);
        }
        response
            .extensions_mut()
            .insert(LoggedError { code, detail });
        response
    }
}

impl From<billd_stripe::client::StripeError> for ApiError {
    /// The default mapping of a failed Stripe call: unreachable, 5xx or 429
    /// after retries → 503 `stripe_unavailable` (retry later); anything else
    /// Stripe refused → 502 `stripe_error`. Handlers that expect a specific
    /// refusal (an unknown promotion code, a currency lock) match it first.
    fn from(e: billd_stripe::client::StripeError) -> Self {
        use billd_stripe::client::StripeError;
        match e {
            StripeError::Api(api) if api.status == 429 || api.status >= 500 => {
                ApiError::StripeUnavailable(StripeError::Api(api).to_string())
            }
            StripeError::Unavailable(cause) => ApiError::StripeUnavailable(cause),
            other => ApiError::StripeRejected(other.to_string()),
        }
    }
}

impl From<crate::pipeline::PayloadInvalid> for ApiError {
    /// 400 `payload_invalid`.
    fn from(e: crate::pipeline::PayloadInvalid) -> Self {
        ApiError::PayloadInvalid(e.0)
    }
}

impl From<crate::pipeline::StripeCustomerError> for ApiError {
    /// A Stripe call answers as any Stripe call does, a store failure as
    /// any store failure; a refusal is 502 `stripe_error`.
    fn from(e: crate::pipeline::StripeCustomerError) -> Self {
        use crate::pipeline::StripeCustomerError;
        match e {
            StripeCustomerError::Stripe(e) => e.into(),
            StripeCustomerError::Store(e) => crate::http::api::store_error(e),
            StripeCustomerError::Rejected(cause) => ApiError::StripeRejected(cause),
            StripeCustomerError::Internal(e) => ApiError::Internal(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use billd_stripe::client::StripeError;

    fn stripe_api_error(status: u16) -> StripeError {
        StripeError::Api(Box::new(billd_stripe::client::ApiError {
            status,
            kind: "api_error".into(),
            code: None,
            decline_code: None,
            param: None,
            message: "boom".into(),
        }))
    }

    #[test]
    fn a_rate_limited_answer_is_429_with_retry_after_of_at_least_one_second() {
        let response = ApiError::RateLimited {
            retry_after_secs: 0,
            message: "slow down".into(),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[tokio::test]
    async fn a_quota_answer_is_402_and_says_where_the_customer_stands() {
        let response = ApiError::QuotaExceeded {
            feature: billd_core::FeatureName::parse("generations").unwrap(),
            limit: 25,
            used: 24,
            requested: 2,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::PAYMENT_REQUIRED);
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body["error"],
            serde_json::json!({
                "code": "quota_exceeded",
                "message": "quota exceeded: 24 of 25 used, 2 requested",
                "feature": "generations", "limit": 25, "used": 24, "remaining": 1, "requested": 2,
            })
        );
    }

    #[test]
    fn answers_a_retry_may_change_are_marked_transient_and_others_are_not() {
        let conflict = |code| ApiError::Conflict {
            code,
            message: String::new(),
        };
        let transient = [
            ApiError::RateLimited {
                retry_after_secs: 1,
                message: String::new(),
            },
            conflict("checkout_busy"),
            ApiError::StoreUnavailable(String::new()),
            ApiError::from(stripe_api_error(503)),
            ApiError::Internal(anyhow::anyhow!("bug")),
        ];
        let kept = [
            conflict("same_plan"),
            ApiError::InvalidRequest {
                code: "unknown_plan",
                message: String::new(),
            },
            ApiError::NotFound {
                code: "customer_not_found",
                message: String::new(),
            },
        ];
        for e in transient {
            let code = e.code();
            assert!(
                e.into_response().extensions().get::<Transient>().is_some(),
                "{code}"
            );
        }
        for e in kept {
            let code = e.code();
            assert!(
                e.into_response().extensions().get::<Transient>().is_none(),
                "{code}"
            );
        }
    }

    #[test]
    fn stripe_overload_maps_to_503_and_a_refusal_to_502() {
        for status in [429, 500, 503] {
            let e = ApiError::from(stripe_api_error(status));
            assert_eq!(
                (e.status(), e.code()),
                (StatusCode::SERVICE_UNAVAILABLE, "stripe_unavailable")
            );
        }
        let e = ApiError::from(StripeError::Unavailable("connection refused".into()));
        assert_eq!(e.code(), "stripe_unavailable");
        // billd running without a Stripe client answers like an unreachable Stripe.
        let e = ApiError::from(billd_stripe::client::configured(None).unwrap_err());
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "stripe_unavailable")
        );
        let e = ApiError::from(stripe_api_error(400));
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_GATEWAY, "stripe_error")
        );
    }
}
