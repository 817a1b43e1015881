//! Billing Meters: `/v1/billing/meters`, `/v1/billing/meter_events` and a
//! meter's event summaries, and the metered lines a renewal invoice bills.
//!
//! A meter event names its meter by `event_name` and its customer and value
//! by the meter's payload keys; Stripe refuses an `identifier` it already
//! has ("An event already exists with identifier …"), which makes a resend
//! harmless. A metered price (`recurring[usage_type]=metered`,
//! `recurring[meter]`) bills, at the end of each period, the meter's
//! aggregate for the customer over that period times its unit amount
//! (after `transform_quantity`).

use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::state::Inner;
use serde_json::{json, Value};

/// How far back a meter event's timestamp may lie (Stripe: 35 days).
const PAST_SECS: i64 = 35 * 86_400;
/// How far ahead a meter event's timestamp may lie (Stripe: 5 minutes).
const FUTURE_SECS: i64 = 300;

/// `POST /v1/billing/meters`.
pub fn create_meter(s: &mut Inner, p: &Value) -> ApiResult {
    let display_name = params::req_str(p, "display_name")?.to_string();
    let event_name = params::req_str(p, "event_name")?.to_string();
    if event_name.len() > 100 {
        return Err(ApiError::invalid(
            "event_name",
            "event_name must be at most 100 characters.",
        ));
    }
    let formula = params::req_str(p, "default_aggregation.formula")?.to_string();
    if !matches!(formula.as_str(), "sum" | "count" | "last") {
        return Err(ApiError::invalid_enum(
            "default_aggregation[formula]",
            &["count", "last", "sum"],
        ));
    }
    if active_meter(s, &event_name).is_some() {
        return Err(ApiError::invalid(
            "event_name",
            format!("An active meter with event_name `{event_name}` already exists."),
        ));
    }
    let window = str_at(p, "event_time_window").map(str::to_string);
    if window
        .as_deref()
        .is_some_and(|w| !matches!(w, "day" | "hour"))
    {
        return Err(ApiError::invalid_enum(
            "event_time_window",
            &["day", "hour"],
        ));
    }
    let customer_key = str_at(p, "customer_mapping.event_payload_key")
        .unwrap_or("stripe_customer_id")
        .to_string();
    let value_key = str_at(p, "value_settings.event_payload_key")
        .unwrap_or("value")
        .to_string();
    let now = s.now();
    let meter = json!({
        "id": s.id("mtr"),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {"event_payload_key": customer_key, "type": "by_id"},
        "default_aggregation": {"formula": formula},
        "display_name": display_name,
        "event_name": event_name,
        "event_time_window": window,
        "livemode": false,
        "status": "active",
        "status_transitions": {"deactivated_at": null},
        "updated": now,
        "value_settings": {"event_payload_key": value_key},
    });
    Ok(s.insert(meter))
}

/// `GET /v1/billing/meters` with `status`.
pub fn list_meters(s: &Inner, p: &Value) -> ApiResult {
    let status = str_at(p, "status").map(str::to_string);
    s.list("billing.meter", "/v1/billing/meters", p, |o| {
        status.as_ref().is_none_or(|x| o["status"] == x.as_str())
    })
}

/// The active meter with `event_name`.
fn active_meter(s: &Inner, event_name: &str) -> Option<Value> {
    s.by_kind.get("billing.meter")?.iter().find_map(|id| {
        let m = s.objects.get(id)?;
        (m["event_name"] == event_name && m["status"] == "active").then(|| m.clone())
    })
}

/// `POST /v1/billing/meter_events`.
pub fn create_meter_event(s: &mut Inner, p: &Value) -> ApiResult {
    let event_name = params::req_str(p, "event_name")?.to_string();
    let Some(Value::Object(payload)) = params::at(p, "payload") else {
        return Err(ApiError::missing("payload"));
    };
    let payload = payload.clone();
    let identifier = match str_at(p, "identifier") {
        Some(id) if id.is_empty() || id.len() > 100 => {
            return Err(ApiError::invalid(
                "identifier",
                "identifier must be 1 to 100 characters.",
            ))
        }
        Some(id) => id.to_string(),
        None => s.id("mtrevt"),
    };
    if s.meter_events.contains_key(&identifier) {
        return Err(ApiError::invalid(
            "identifier",
            format!("An event already exists with identifier {identifier}."),
        ));
    }
    let meter = active_meter(s, &event_name);
    let (customer_key, value_key) = meter.as_ref().map_or_else(
        || ("stripe_customer_id".to_string(), "value".to_string()),
        |m| {
            (
                m["customer_mapping"]["event_payload_key"]
                    .as_str()
                    .unwrap_or("stripe_customer_id")
                    .to_string(),
                m["value_settings"]["event_payload_key"]
                    .as_str()
                    .unwrap_or("value")
                    .to_string(),
            )
        },
    );
    let customer = payload
        .get(&customer_key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing(&format!("payload[{customer_key}]")))?
        .to_string();
    let value = payload
        .get(&value_key)
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::missing(&format!("payload[{value_key}]")))?;
    // Stripe takes decimal values too; the emulator sums whole numbers.
    value.parse::<i64>().map_err(|_| {
        ApiError::invalid(
            &format!("payload[{value_key}]"),
            "stripe-sim takes whole-number meter event values.",
        )
    })?;
    let now = s.now_for_customer(Some(&customer));
    let timestamp = i64_at(p, "timestamp")?.unwrap_or(now);
    if timestamp < now - PAST_SECS || timestamp > now + FUTURE_SECS {
        return Err(ApiError::invalid(
            "timestamp",
            "Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
        ));
    }
    let event = json!({
        "object": "billing.meter_event",
        "created": now,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": false,
        "payload": payload,
        "timestamp": timestamp,
    });
    s.meter_events.insert(identifier, event.clone());
    Ok(event)
}

/// The meter's aggregate of `customer`'s events timestamped in
/// `[start, end)`.
pub fn aggregate(s: &Inner, meter: &Value, customer: &str, start: i64, end: i64) -> i64 {
    let customer_key = meter["customer_mapping"]["event_payload_key"]
        .as_str()
        .unwrap_or("stripe_customer_id");
    let value_key = meter["value_settings"]["event_payload_key"]
        .as_str()
        .unwrap_or("value");
    let mut events: Vec<&Value> = s
        .meter_events
        .values()
        .filter(|e| e["event_name"] == meter["event_name"])
        .filter(|e| e["payload"][customer_key] == customer)
        .filter(|e| {
            let t = e["timestamp"].as_i64().unwrap_or(0);
            start <= t && t < end
        })
        .collect();
    let value = |e: &Value| {
        e["payload"][value_key]
            .as_str()
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    match meter["default_aggregation"]["formula"].as_str() {
        Some("count") => i64::try_from(events.len()).unwrap_or(i64::MAX),
        Some("last") => {
            events.sort_by_key(|e| (e["timestamp"].as_i64(), e["created"].as_i64()));
            events.last().map_or(0, |e| value(e))
        }
        _ => events.iter().map(|e| value(e)).sum(),
    }
}

/// `GET /v1/billing/meters/{id}/event_summaries`: one summary over
/// `[start_time, end_time)` (the emulator ignores `value_grouping_window`).
pub fn event_summaries(s: &Inner, id: &str, p: &Value) -> ApiResult {
    let meter = s.get("billing.meter", id, "id")?;
    let customer = params::req_str(p, "customer")?.to_string();
    let start = i64_at(p, "start_time")?.ok_or_else(|| ApiError::missing("start_time"))?;
    let end = i64_at(p, "end_time")?.ok_or_else(|| ApiError::missing("end_time"))?;
    if end <= start {
        return Err(ApiError::invalid(
            "end_time",
            "end_time must be after start_time.",
        ));
    }
    let total = aggregate(s, &meter, &customer, start, end);
    Ok(json!({
        "object": "list",
        "url": format!("/v1/billing/meters/{id}/event_summaries"),
        "has_more": false,
        "data": [{
            "id": format!("mtrusg_{id}_{customer}_{start}"),
            "object": "billing.meter_event_summary",
            "aggregated_value": total,
            "end_time": end,
            "livemode": false,
            "meter": id,
            "start_time": start,
        }],
    }))
}

/// Whether a price is metered (billed from a meter, in arrears).
pub fn is_metered(price: &Value) -> bool {
    price["recurring"]["usage_type"] == "metered"
}

/// The quantity a metered price bills for a meter aggregate:
/// `transform_quantity` applied (divide, rounded as it says), never below 0.
pub fn billed_quantity(price: &Value, aggregate: i64) -> i64 {
    let aggregate = aggregate.max(0);
    match price["transform_quantity"]["divide_by"].as_i64() {
        Some(by) if by > 1 => {
            if price["transform_quantity"]["round"] == "down" {
                aggregate / by
            } else {
                (aggregate + by - 1) / by
            }
        }
        _ => aggregate,
    }
}

/// The metered usage of `item` (a subscription item with a metered price)
/// over its current period, for `customer`: (quantity billed, aggregate).
pub fn item_usage(s: &Inner, customer: &str, item: &Value) -> (i64, i64) {
    let price = &item["price"];
    let Some(meter) = price["recurring"]["meter"]
        .as_str()
        .and_then(|m| s.objects.get(m))
    else {
        return (0, 0);
    };
    let start = item["current_period_start"].as_i64().unwrap_or(0);
    let end = item["current_period_end"].as_i64().unwrap_or(0);
    let total = aggregate(s, meter, customer, start, end);
    (billed_quantity(price, total), total)
}
