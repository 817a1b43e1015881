//! `/v1/events` and `/v1/webhook_endpoints`.

use crate::config::API_VERSION;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, str_at};
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Value};

/// `GET /v1/events/{id}`.
pub fn retrieve(s: &Inner, id: &str) -> ApiResult {
    s.get("event", id, "id")
}

/// `GET /v1/events` with `type` (`*` wildcards as Stripe: `invoice.*`), `types[]`,
/// `created[gt|gte|lt|lte]` or `created`, `delivery_success`.
pub fn list(s: &Inner, p: &Value) -> ApiResult {
    let ty = str_at(p, "type").map(str::to_string);
    let types: Option<Vec<String>> = match params::at(p, "types") {
        Some(Value::Array(a)) => Some(
            a.iter()
                .filter_map(|t| t.as_str().map(str::to_string))
                .collect(),
        ),
        Some(Value::String(t)) => Some(vec![t.clone()]),
        _ => None,
    };
    if ty.is_some() && types.is_some() {
        return Err(ApiError::invalid(
            "types",
            "You may only specify one of these parameters: type, types.",
        ));
    }
    let delivery = params::bool_at(p, "delivery_success")?;
    let matches = |pattern: &str, t: &str| match pattern.strip_suffix('*') {
        Some(prefix) => t.starts_with(prefix),
        None => pattern == t,
    };
    s.list("event", "/v1/events", p, |e| {
        let t = e["type"].as_str().unwrap_or_default();
        let id = e["id"].as_str().unwrap_or_default();
        ty.as_ref().is_none_or(|x| matches(x, t))
            && types
                .as_ref()
                .is_none_or(|xs| xs.iter().any(|x| matches(x, t)))
            && delivery.is_none_or(|want| s.delivered(id) == want)
    })
}

fn enabled_events(p: &Value) -> ApiResult<Option<Vec<Value>>> {
    let events = match params::at(p, "enabled_events") {
        None => return Ok(None),
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(Value::String(e)) if !e.is_empty() => vec![json!(e)],
        _ => {
            return Err(ApiError::invalid(
                "enabled_events",
                "enabled_events must list at least one event type.",
            ))
        }
    };
    if let Some(bad) = events.iter().find(|e| {
        !e.as_str()
            .is_some_and(crate::resources::event_types::is_valid)
    }) {
        return Err(ApiError::invalid(
            "enabled_events",
            format!(
                "Invalid enabled_events: {}",
                bad.as_str().unwrap_or_default()
            ),
        ));
    }
    Ok(Some(events))
}

/// `POST /v1/webhook_endpoints` (`url`, `enabled_events[]`, `api_version`, `description`,
/// `metadata`); the `secret` is returned here only, as on Stripe.
pub fn create_endpoint(s: &mut Inner, p: &Value) -> ApiResult {
    let url = params::req_str(p, "url")?.to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid(
            "url",
            "Invalid URL: must be http or https.",
        ));
    }
    let events = enabled_events(p)?.ok_or_else(|| ApiError::missing("enabled_events"))?;
    let id = s.id("we");
    let secret = format!("whsec_{}", s.ids.tail(32));
    let ep = json!({
        "id": id,
        "object": "webhook_endpoint",
        "api_version": str_at(p, "api_version").unwrap_or(API_VERSION),
        "application": null,
        "created": s.now(),
        "description": str_at(p, "description"),
        "enabled_events": events,
        "livemode": false,
        "metadata": params::metadata(p, "metadata"),
        "secret": secret,
        "status": "enabled",
        "url": url,
    });
    Ok(s.insert(ep))
}

/// Stripe shows the secret on creation only.
fn public(mut ep: Value) -> Value {
    if let Some(m) = ep.as_object_mut() {
        m.remove("secret");
    }
    ep
}

/// `GET /v1/webhook_endpoints/{id}`.
pub fn retrieve_endpoint(s: &Inner, id: &str) -> ApiResult {
    s.get_live("webhook_endpoint", id, "id").map(public)
}

/// `POST /v1/webhook_endpoints/{id}` (`url`, `enabled_events[]`, `disabled`, `description`, `metadata`).
pub fn update_endpoint(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get_live("webhook_endpoint", id, "id")?;
    let mut after = before.clone();
    if let Some(u) = str_at(p, "url") {
        after["url"] = json!(u);
    }
    if let Some(e) = enabled_events(p)? {
        after["enabled_events"] = json!(e);
    }
    if let Some(d) = params::bool_at(p, "disabled")? {
        after["status"] = json!(if d { "disabled" } else { "enabled" });
    }
    if let Some(d) = str_at(p, "description") {
        after["description"] = json!(d);
    }
    params::apply_metadata(&mut after, p, "metadata");
    let _ = previous_attributes(&before, &after);
    s.put(after.clone());
    Ok(public(after))
}

/// `DELETE /v1/webhook_endpoints/{id}`.
pub fn delete_endpoint(s: &mut Inner, id: &str) -> ApiResult {
    let mut ep = s.get_live("webhook_endpoint", id, "id")?;
    ep["deleted"] = json!(true);
    s.put(ep);
    Ok(json!({"id": id, "object": "webhook_endpoint", "deleted": true}))
}

/// `POST /_sim/webhook_endpoints/{id}/roll_secret` (`expires_in` seconds, default 0):
/// the dashboard's "roll secret". The old secret keeps signing (a second `v1`)
/// until it expires; the answer shows the new secret.
pub fn roll_secret(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let mut ep = s.get_live("webhook_endpoint", id, "id")?;
    let expires_in = params::bounded_at(p, "expires_in", 0..=7 * 86_400)?.unwrap_or(0);
    let old = ep["secret"].as_str().unwrap_or_default().to_string();
    let until = s.now() + expires_in;
    if expires_in > 0 {
        s.rolled_secrets
            .entry(id.to_string())
            .or_default()
            .push((old, until));
    }
    ep["secret"] = json!(format!("whsec_{}", s.ids.tail(32)));
    s.put(ep.clone());
    Ok(ep)
}

/// `GET /v1/webhook_endpoints`.
pub fn list_endpoints(s: &Inner, p: &Value) -> ApiResult {
    let mut list = s.list("webhook_endpoint", "/v1/webhook_endpoints", p, |_| true)?;
    if let Some(d) = list["data"].as_array_mut() {
        for ep in d.iter_mut() {
            *ep = public(ep.take());
        }
    }
    Ok(list)
}
