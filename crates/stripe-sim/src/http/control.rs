//! `/_sim/config`: reading and changing knobs at run time.

use super::*;

pub(crate) fn sim_config(s: &mut Inner, method: &str, p: &Value) -> ApiResult {
    if method == "POST" {
        let mut current = serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())?;
        overlay(&mut current, p, "")?;
        let cfg: SimConfig = serde_json::from_value(current)
            .map_err(|e| ApiError::invalid("config", e.to_string()))?;
        validate(&cfg)?;
        let before = s.now();
        let target = cfg.frozen_time;
        s.cfg = cfg;
        // Moving frozen time forward runs what falls due, as Sim::set_time does.
        if let Some(t) = target.filter(|t| *t > before) {
            s.cfg.frozen_time = Some(before);
            crate::billing::catch_up(s, t)?;
            s.cfg.frozen_time = Some(t);
        }
    }
    serde_json::to_value(&s.cfg).map_err(|_| ApiError::internal())
}

fn validate(cfg: &SimConfig) -> ApiResult<()> {
    let w = &cfg.webhooks;
    let f = &cfg.faults;
    for (name, p) in [
        ("webhooks[duplicate_rate]", w.duplicate_rate),
        ("webhooks[drop_rate]", w.drop_rate),
        ("faults[error_rate]", f.error_rate),
        ("faults[rate_limit_rate]", f.rate_limit_rate),
    ] {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid(
                name,
                "A probability must be between 0 and 1.",
            ));
        }
    }
    if cfg.time_scale < 0.0 {
        return Err(ApiError::invalid(
            "time_scale",
            "time_scale must not be negative.",
        ));
    }
    Ok(())
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
