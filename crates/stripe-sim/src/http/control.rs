//! `/_sim/config`: reading and changing knobs at run time.

use super::*;

pub(crate) fn sim_config(s: &mut Inner, method: &str, p: &Value) -> ApiResult {
    if method == "POST" {
        let mut current = serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())?;
        overlay(&mut current, p, "")?;
        let cfg: SimConfig = serde_json::from_value(current)
            .map_err(|e| ApiError::invalid("config", e.to_string()))?;
        s.cfg = cfg;
    }
    serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())
}

/// Writes form values over a typed JSON tree, converting strings to the type already there.
pub(crate) fn overlay(target: &mut Value, given: &Value, path: &str) -> ApiResult<()> {
    let Value::Object(m) = given else {
        return Ok(());
    };
    for (k, v) in m {
        if path.is_empty() && k == "expand" {
            continue;
        }
        let name = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}[{k}]")
        };
        let Some(slot) = target.get_mut(k) else {
            return Err(ApiError::invalid(&name, format!("Unknown setting: {name}")));
        };
        match (slot.clone(), v) {
            (Value::Object(_), Value::Object(_)) => overlay(slot, v, &name)?,
            (_, Value::Array(items)) => {
                let parsed: Result<Vec<i64>, _> = items
                    .iter()
                    .map(|i| i.as_str().unwrap_or_default().parse::<i64>())
                    .collect();
                *slot = json!(parsed.map_err(|_| ApiError::invalid(&name, "Expected integers."))?);
            }
            (old, Value::String(sv)) => {
                *slot = if sv.is_empty() && (old.is_null() || name == "frozen_time") {
                    Value::Null
                } else if let Ok(i) = sv.parse::<i64>() {
                    if old.is_f64() {
                        json!(i as f64)
                    } else {
                        json!(i)
                    }
                } else if let Ok(f) = sv.parse::<f64>() {
                    json!(f)
                } else if sv == "true" || sv == "false" {
                    json!(sv == "true")
                } else {
                    json!(sv)
                };
            }
            (_, other) => *slot = other.clone(),
        }
    }
    Ok(())
}
