//! The Stripe event envelope: the few fields billd reads from a delivered
//! (or listed) event to store it in the inbox. The webhook endpoint parses
//! every delivery with it, reconciliation every event Stripe lists.

use billd_store::NewEvent;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

/// An event body billd cannot store: what is wrong with it (the webhook
/// answers 400 `payload_invalid`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadInvalid(pub String);

/// The fields of an event envelope billd reads; everything else is skipped
/// without building a JSON tree (the raw body is what gets stored).
#[derive(Deserialize)]
struct Envelope {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    created: Option<i64>,
    api_version: Option<String>,
    data: Option<EnvelopeData>,
}

#[derive(Deserialize)]
struct EnvelopeData {
    object: Option<ObjectHead>,
}

/// `data.object`: must be a JSON object; only `id`, `object` and
/// `customer` are read.
#[derive(Default)]
struct ObjectHead {
    id: Option<String>,
    object: Option<String>,
    customer: Option<String>,
}

/// `customer` is an id, an expanded customer object, or null.
#[derive(Deserialize)]
#[serde(untagged)]
enum CustomerRef {
    Id(String),
    Expanded { id: Option<String> },
    Other(IgnoredAny),
}

impl<'de> Deserialize<'de> for ObjectHead {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadVisitor;
        impl<'de> Visitor<'de> for HeadVisitor {
            type Value = ObjectHead;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ObjectHead, A::Error> {
                let mut head = ObjectHead::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    match key.as_ref() {
                        "id" => head.id = map.next_value::<Option<String>>()?,
                        "object" => head.object = map.next_value::<Option<String>>()?,
                        "customer" => {
                            head.customer = match map.next_value::<Option<CustomerRef>>()? {
                                Some(CustomerRef::Id(id)) => Some(id),
                                Some(CustomerRef::Expanded { id }) => id,
                                Some(CustomerRef::Other(_)) | None => None,
                            }
                        }
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(head)
            }
        }
        deserializer.deserialize_map(HeadVisitor)
    }
}

/// Parses the minimal Stripe event envelope into an inbox row: `id`
/// (`evt_…`), `type`, `created`, `data.object` (a JSON object), plus
/// `api_version`, the object's id and the Stripe customer it concerns
/// (`data.object.customer`, or the object itself for a customer).
pub fn parse_envelope(body: &[u8], received_at: i64) -> Result<NewEvent, PayloadInvalid> {
    let invalid = |m: &str| PayloadInvalid(m.to_string());
    let text = std::str::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?;
    let envelope: Envelope = serde_json::from_str(text)
        .map_err(|e| PayloadInvalid(format!("not a JSON Stripe event: {e}")))?;
    let id = envelope
        .id
        .filter(|id| id.starts_with("evt_") && id.len() > 4 && id.len() <= 255)
        .ok_or_else(|| invalid("`id` must be a Stripe event id (evt_…)"))?;
    let event_type = envelope
        .event_type
        .filter(|t| !t.is_empty() && t.len() <= 255)
        .ok_or_else(|| invalid("`type` must be a non-empty string"))?;
    let created = envelope
        .created
        .ok_or_else(|| invalid("`created` must be an integer"))?;
    let object = envelope
        .data
        .and_then(|d| d.object)
        .ok_or_else(|| invalid("`data.object` must be an object"))?;
    // PostgreSQL's text cannot hold NUL, and a row that fails to insert
    // fails the whole group commit it is in: refuse it at the door.
    let fields = [
        Some(&id),
        Some(&event_type),
        envelope.api_version.as_ref(),
        object.id.as_ref(),
        object.object.as_ref(),
        object.customer.as_ref(),
    ];
    if fields.into_iter().flatten().any(|f| f.contains('\0')) {
        return Err(invalid("a field of the event holds a NUL character"));
    }
    let stripe_customer = match object.customer {
        Some(customer) => Some(customer),
        None if object.object.as_deref() == Some("customer") => object.id.clone(),
        None => None,
    };
    Ok(NewEvent {
        id,
        event_type,
        api_version: envelope.api_version,
        created,
        object_id: object.id,
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
    fn a_nul_character_in_a_stored_field_is_refused() {
        for body in [
            r#"{"id":"evt_1","type":"a\u0000b","created":5,"data":{"object":{}}}"#,
            r#"{"id":"evt_\u0000","type":"customer.updated","created":5,"data":{"object":{}}}"#,
            r#"{"id":"evt_1","type":"x","created":5,"data":{"object":{"customer":"cus_\u0000"}}}"#,
        ] {
            let refused = parse_envelope(body.as_bytes(), 7).unwrap_err();
            assert!(refused.0.contains("NUL"), "{refused}");
        }
        // Elsewhere in the payload it is only text, stored as sent.
        let body = r#"{"id":"evt_1","type":"x","created":5,"data":{"object":{"name":"a\u0000"}}}"#;
        assert!(parse_envelope(body.as_bytes(), 7).is_ok());
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
    fn unknown_fields_escaped_keys_and_a_null_customer_are_accepted() {
        let body = br#"{"id":"evt_\u0031","type":"invoice.paid","created":5,"extra":[1,{"a":null}],"data":{"object":{"id":"in_1","cust\u006fmer":null,"lines":{"data":[]}}}}"#;
        let event = parse_envelope(body, 0).unwrap();
        assert_eq!(event.id, "evt_1");
        assert_eq!(event.object_id.as_deref(), Some("in_1"));
        assert_eq!(event.stripe_customer, None);
    }
}
