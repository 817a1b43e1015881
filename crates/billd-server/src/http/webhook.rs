//! `POST /webhooks/stripe`: verify, parse the envelope, group-commit into the
//! inbox, then acknowledge. Never 2xx before the commit.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use billd_store::{InsertOutcome, ReceivedEvent};
use billd_stripe::webhook::{verify, VerifyError, SIGNATURE_HEADER};
use secrecy::ExposeSecret;
use serde::Serialize;

use crate::http::error::ApiError;
use crate::http::router::AppState;
use crate::pipeline::{parse_envelope, IngestError};

/// The largest body the endpoint reads; Stripe events are far smaller.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The acknowledgement body.
#[derive(Debug, Serialize)]
pub struct Ack {
    /// Always true: the event is durably stored.
    pub received: bool,
    /// True when this event id had already been stored.
    pub duplicate: bool,
}

/// The webhook handler.
#[utoipa::path(
    post, path = "/webhooks/stripe", tag = "stripe", operation_id = "receive_webhook",
    description = "A Stripe event, verified by its Stripe-Signature header and stored before the answer; processed asynchronously.",
    request_body(content = Object, description = "The Stripe event (raw JSON, at most 1 MiB)."),
    params(("Stripe-Signature" = String, Header, description = "t=…,v1=… (HMAC-SHA256 with an endpoint secret)")),
    responses(
        (status = 200, description = "Stored (`duplicate` when the event id was already stored).", body = Object),
        (status = 400, description = "Bad signature (`signature_*`, `timestamp_out_of_tolerance`) or `payload_invalid`.", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "`payload_too_large`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`store_unavailable`: Stripe retries.", body = crate::http::openapi::ErrorBody),
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(event_id))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Ack>, ApiError> {
    state.metrics.webhooks_received.inc();
    let result = accept(&state, &headers, body).await;
    match &result {
        Ok(ack) if ack.duplicate => {
            state.metrics.webhooks_duplicate.inc();
        }
        Ok(_) => {
            state.metrics.webhooks_accepted.inc();
        }
        Err(e) => state.metrics.webhooks_rejected.inc(e.code()),
    }
    result.map(Json)
}

async fn accept(
    state: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Ack, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            }
        } else {
            ApiError::PayloadInvalid(rejection.body_text())
        }
    })?;
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|v| {
            v.to_str()
                .map_err(|_| VerifyError::SignatureMalformed("header is not ASCII"))
        })
        .transpose()?;
    let now = state.clock.now();
    let secrets: Vec<&str> = state
        .webhook
        .secrets
        .iter()
        .map(|s| s.expose_secret())
        .collect();
    verify(header, &body, &secrets, state.webhook.tolerance_secs, now)?;

    // The whole envelope is checked here, so a body billd cannot store is
    // refused (400) rather than acknowledged; only the id and the body are
    // written, the worker derives the rest from the body later.
    let event = parse_envelope(&body, now)?;
    tracing::Span::current().record("event_id", event.id.as_str());
    let received = ReceivedEvent {
        id: event.id,
        payload: event.payload,
        received_at: now,
    };
    match state.ingestor.submit(received).await {
        Ok(InsertOutcome::Inserted) => Ok(Ack {
            received: true,
            duplicate: false,
        }),
        Ok(InsertOutcome::Duplicate) => Ok(Ack {
            received: true,
            duplicate: true,
        }),
        Err(IngestError::Unavailable(cause)) => Err(ApiError::StoreUnavailable(cause)),
        Err(IngestError::WriterStopped) => Err(ApiError::StoreUnavailable(
            "the inbox writer has stopped".into(),
        )),
        Err(IngestError::Other(cause)) => Err(ApiError::Internal(anyhow::anyhow!(cause))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_missing_a_required_field_are_payload_invalid() {
        for body in [
            &br#"not json"#[..],
            br#"[1,2]"#,
            br#"{"type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"in_1","type":"x","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":"1","data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":[1]}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":null}}"#,
            br#"{"id":"evt_1","type":"","created":1,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":1.5,"data":{"object":{}}}"#,
            br#"{"id":"evt_1","type":"x","created":1,"data":{"object":{"id":"a"}}} trailing"#,
        ] {
            let err = ApiError::from(parse_envelope(body, 0).unwrap_err());
            assert_eq!(
                err.code(),
                "payload_invalid",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
