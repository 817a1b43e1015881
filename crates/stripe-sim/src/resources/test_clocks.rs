//! `/v1/test_helpers/test_clocks`.

use crate::billing;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::state::Inner;
use serde_json::{json, Value};

/// `POST /v1/test_helpers/test_clocks` (`frozen_time`, `name`).
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    let frozen = i64_at(p, "frozen_time")?.ok_or_else(|| ApiError::missing("frozen_time"))?;
    let id = s.id("clock");
    let clock = json!({
        "id": id,
        "object": "test_helpers.test_clock",
        "created": s.now(),
        "deletes_after": s.now() + 30 * 86_400,
        "frozen_time": frozen,
        "livemode": false,
        "name": str_at(p, "name"),
        "status": "ready",
        "status_details": {},
    });
    let clock = s.insert(clock);
    s.emit("test_helpers.test_clock.created", &clock, None, frozen);
    Ok(clock)
}

/// `GET /v1/test_helpers/test_clocks/{id}`.
pub fn retrieve(s: &Inner, id: &str) -> ApiResult {
    s.get_live("test_helpers.test_clock", id, "id")
}

/// `GET /v1/test_helpers/test_clocks`.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    s.list(
        "test_helpers.test_clock",
        "/v1/test_helpers/test_clocks",
        p,
        |_| true,
    )
}

/// `DELETE /v1/test_helpers/test_clocks/{id}`: deletes the clock and its customers.
pub fn delete(s: &mut Inner, id: &str) -> ApiResult {
    let clock = s.get_live("test_helpers.test_clock", id, "id")?;
    let customers: Vec<String> = s
        .by_kind
        .get("customer")
        .into_iter()
        .flatten()
        .filter(|c| {
            s.objects
                .get(*c)
                .is_some_and(|o| o["test_clock"] == id && o["deleted"] != true)
        })
        .cloned()
        .collect();
    for c in customers {
        crate::resources::customers::delete(s, &c)?;
    }
    let mut gone = clock.clone();
    gone["deleted"] = json!(true);
    s.put(gone);
    s.emit(
        "test_helpers.test_clock.deleted",
        &clock,
        None,
        clock["frozen_time"].as_i64().unwrap_or(0),
    );
    Ok(json!({"id": id, "object": "test_helpers.test_clock", "deleted": true}))
}

fn shortest_two_intervals(s: &Inner, clock: &str, from: i64) -> Option<i64> {
    s.by_kind
        .get("subscription")
        .into_iter()
        .flatten()
        .map(|id| s.peek(id))
        .filter(|sub| {
            sub["test_clock"] == clock
                && !matches!(
                    sub["status"].as_str(),
                    Some("canceled" | "incomplete_expired")
                )
        })
        .filter_map(|sub| {
            let price = &sub["items"]["data"][0]["price"]["recurring"];
            let interval = price["interval"].as_str()?;
            let n = price["interval_count"].as_i64().unwrap_or(1);
            Some(crate::clock::add_interval(from, interval, 2 * n))
        })
        .min()
}

/// `POST /v1/test_helpers/test_clocks/{id}/advance` (`frozen_time`): runs every renewal,
/// trial end, retry and expiry up to that moment. The answer shows the clock
/// `advancing` (as Stripe's does); a retrieve right after shows it `ready`.
pub fn advance(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let clock = s.get_live("test_helpers.test_clock", id, "id")?;
    let to = params::i64_at(p, "frozen_time")?.ok_or_else(|| ApiError::missing("frozen_time"))?;
    let from = clock["frozen_time"].as_i64().unwrap_or(0);
    if to <= from {
        return Err(ApiError::invalid(
            "frozen_time",
            "The test clock's frozen time cannot be set to a time in the past or to the current frozen time.",
        ));
    }
    // Stripe lets a clock move at most two intervals of the shortest subscription
    // on it at once (and, without subscriptions, we bound it to five years).
    let limit = shortest_two_intervals(s, id, from).unwrap_or(from + 5 * 366 * 86_400);
    if to > limit {
        return Err(ApiError::invalid(
            "frozen_time",
            format!("Cannot advance the test clock beyond {limit}: at most two intervals of the shortest subscription on it at a time."),
        ));
    }
    let mut advancing = clock.clone();
    advancing["status"] = json!("advancing");
    s.emit("test_helpers.test_clock.advancing", &advancing, None, from);
    // What happens while the clock moves is Stripe's doing, not the caller's request.
    let request = s.request.take();
    let advanced = billing::advance(s, id, to);
    s.request = request;
    advanced?;
    let mut ready = s.get("test_helpers.test_clock", id, "id")?;
    ready["status"] = json!("ready");
    s.put(ready.clone());
    s.emit("test_helpers.test_clock.ready", &ready, None, to);
    advancing["frozen_time"] = json!(to);
    Ok(advancing)
}
