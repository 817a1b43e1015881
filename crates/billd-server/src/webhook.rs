//! `POST /webhooks/stripe`: verify, parse the envelope, group-commit into the
//! inbox, then acknowledge. Never 2xx before the commit.

use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use billd_store::{InsertOutcome, NewEvent};
use billd_stripe::webhook::{verify, SIGNATURE_HEADER};
use secrecy::ExposeSecret;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::ingest::IngestError;
use crate::AppState;

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
#[tracing::instrument(skip_all, fields(event_id))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Ack>, ApiError> {
    state
        .metrics
        .webhooks_received
        .fetch_add(1, Ordering::Relaxed);
    let result = accept(&state, &headers, body).await;
    match &result {
        Ok(ack) if ack.duplicate => {
            state
                .metrics
                .webhooks_duplicate
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => {
            state
                .metrics
                .webhooks_accepted
                .fetch_add(1, Ordering::Relaxed);
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
        .map(|v| v.to_str().unwrap_or(""));
    let now = state.clock.now();
    let secrets: Vec<&str> = state
        .webhook
        .secrets
        .iter()
        .map(|s| s.expose_secret())
        .collect();
    verify(header, &body, &secrets, state.webhook.tolerance_secs, now)?;

    let event = parse_envelope(&body, now)?;
    tracing::Span::current().record("event_id", event.id.as_str());
    match state.ingestor.submit(event).await {
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

/// Parses the minimal Stripe event envelope into an inbox row: `id`
/// (`evt_…`), `type`, `created`, `data.object` (a JSON object), plus
/// `api_version`, the object's id and the Stripe customer it concerns.
pub fn parse_envelope(body: &[u8], received_at: i64) -> Result<NewEvent, ApiError> {
    let invalid = |m: &str| ApiError::PayloadInvalid(m.to_string());
    let text = std::str::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?;
    let value: Value = serde_json::from_str(text)
        .map_err(|e| ApiError::PayloadInvalid(format!("not JSON: {e}")))?;
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| id.starts_with("evt_") && id.len() > 4 && id.len() <= 255)
        .ok_or_else(|| invalid("`id` must be a Stripe event id (evt_…)"))?;
    let event_type = value
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| invalid("`type` must be a non-empty string"))?;
    let created = value
        .get("created")
        .and_then(Value::as_i64)
        .ok_or_else(|| invalid("`created` must be an integer"))?;
    let object = value
        .get("data")
        .and_then(|d| d.get("object"))
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("`data.object` must be an object"))?;
    let api_version = value
        .get("api_version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let object_id = object.get("id").and_then(Value::as_str).map(str::to_string);
    // `customer` is an id, or an expanded customer object; a customer event
    // is about the object itself.
    let stripe_customer = match object.get("customer") {
        Some(Value::String(id)) => Some(id.clone()),
        Some(Value::Object(expanded)) => expanded
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string),
        _ if object.get("object").and_then(Value::as_str) == Some("customer") => object_id.clone(),
        _ => None,
    };
    Ok(NewEvent {
        id: id.to_string(),
        event_type: event_type.to_string(),
        api_version,
        created,
        object_id,
        stripe_customer,
        payload: text.to_string(),
        received_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_customer_of_a_subscription_event_is_its_customer_field() {
        let body = br#"{"id":"evt_1","type":"customer.subscription.updated","created":5,"api_version":"2026-09-30.endive","data":{"object":{"id":"sub_1","object":"subscription","customer":"cus_9"}}}"#;
        let event = parse_envelope(body, 7).unwrap();
        assert_eq!(event.stripe_customer.as_deref(), Some("cus_9"));
        assert_eq!(event.object_id.as_deref(), Some("sub_1"));
        assert_eq!(event.api_version.as_deref(), Some("2026-09-30.endive"));
        assert_eq!((event.created, event.received_at), (5, 7));
    }

    #[test]
    fn the_customer_of_a_customer_event_is_the_object_itself() {
        let body = br#"{"id":"evt_1","type":"customer.updated","created":5,"data":{"object":{"id":"cus_3","object":"customer"}}}"#;
        assert_eq!(
            parse_envelope(body, 0).unwrap().stripe_customer.as_deref(),
            Some("cus_3")
        );
    }

    #[test]
    fn an_expanded_customer_is_read_by_its_id() {
        let body = br#"{"id":"evt_1","type":"invoice.paid","created":5,"data":{"object":{"id":"in_1","customer":{"id":"cus_4","object":"customer"}}}}"#;
        assert_eq!(
            parse_envelope(body, 0).unwrap().stripe_customer.as_deref(),
            Some("cus_4")
        );
    }

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
        ] {
            let err = parse_envelope(body, 0).unwrap_err();
            assert_eq!(
                err.code(),
                "payload_invalid",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
