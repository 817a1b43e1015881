//! The one place that maps errors to HTTP statuses.

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
            ApiError::StoreUnavailable(_) => "store_unavailable",
            ApiError::NotReady(_) => "not_ready",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound { code, .. } | ApiError::InvalidRequest { code, .. } => code,
            ApiError::Internal(_) => "internal",
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Signature(_) | ApiError::PayloadInvalid(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::StoreUnavailable(_) | ApiError::NotReady(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        // Internal details stay in the log; the client gets an opaque message.
        let message = match &self {
            ApiError::Internal(_) => "internal error".to_string(),
            ApiError::StoreUnavailable(_) => "the store is unavailable; retry later".to_string(),
            other => other.to_string(),
        };
        let detail = match &self {
            ApiError::Internal(e) => format!("{e:#}"),
            ApiError::StoreUnavailable(cause) => cause.clone(),
            other => other.to_string(),
        };
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let mut response = (status, Json(body)).into_response();
        response
            .extensions_mut()
            .insert(LoggedError { code, detail });
        response
    }
}
