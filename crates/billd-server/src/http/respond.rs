//! The last layer every HTTP response leaves through
//! ([`crate::http::router::service`] puts it around the whole router):
//!
//! - an error response no billd code made (axum's answer for an unknown
//!   route or a method the route does not serve, an extractor rejection no
//!   handler takes itself, hyper's refusals) gets the error shape
//!   `{"error":{"code","message"}}`, its status kept and its code chosen in
//!   [`crate::http::error`], the only place errors map to HTTP; headers such as
//!   `Allow` stay;
//! - every JSON body ends with a newline, so `curl` output pasted into a
//!   terminal leaves the prompt on its own line.

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::header::{ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, BytesMut};

use crate::http::error::{ApiError, LoggedError};

/// The most of a bare error body kept as the message (axum's are a line).
const MAX_MESSAGE_BYTES: usize = 4096;

/// The middleware; see the module documentation.
pub async fn shape(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let response = if is_bare_error(&response) {
        with_error_shape(response, &method, &path).await
    } else {
        response
    };
    with_final_newline(response).await
}

/// An error status without the marker every [`ApiError`] answer carries.
fn is_bare_error(response: &Response) -> bool {
    let status = response.status();
    (status.is_client_error() || status.is_server_error())
        && response.extensions().get::<LoggedError>().is_none()
}

async fn with_error_shape(response: Response, method: &Method, path: &str) -> Response {
    let (parts, body) = response.into_parts();
    let text = to_bytes(body, MAX_MESSAGE_BYTES)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if !text.is_empty() {
        text
    } else {
        default_message(parts.status, &parts.headers, method, path)
    };
    let mut shaped = ApiError::Framework {
        status: parts.status,
        message,
    }
    .into_response();
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// What an empty bare answer meant.
fn default_message(status: StatusCode, headers: &HeaderMap, method: &Method, path: &str) -> String {
    match status {
        StatusCode::NOT_FOUND => format!("no route {method} {path}"),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = headers
                .get(ALLOW)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            format!("{path} does not serve {method} (allowed: {allowed})")
        }
        other => other
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    }
}

async fn with_final_newline(response: Response) -> Response {
    let json = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    // billd's JSON answers are built in memory already; none streams.
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(bytes) => bytes,
        Err(e) => {
            return ApiError::Internal(anyhow::anyhow!("reading a JSON response: {e}"))
                .into_response()
        }
    };
    if bytes.ends_with(b"\n") {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let mut body = BytesMut::with_capacity(bytes.len() + 1);
    body.put(bytes);
    body.put_u8(b'\n');
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body.freeze()))
}
