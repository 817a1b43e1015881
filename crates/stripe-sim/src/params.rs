//! Typed reads of decoded form parameters, with Stripe's error messages.

use crate::error::{ApiError, ApiResult};
use serde_json::{Map, Value};

/// A string parameter at a dotted path (`subscription_data.trial_period_days`), if present and non-empty.
pub fn str_at<'a>(p: &'a Value, path: &str) -> Option<&'a str> {
    let mut cur = p;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// A required string parameter.
pub fn req_str<'a>(p: &'a Value, path: &str) -> ApiResult<&'a str> {
    str_at(p, path).ok_or_else(|| ApiError::missing(&bracketed(path)))
}

/// The largest integer any parameter may carry: 9999-12-31T23:59:59Z as a timestamp.
/// Bounding every integer keeps billing arithmetic far from overflow.
pub const MAX_INTEGER: i64 = 253_402_300_799;

/// An integer parameter, within ±[`MAX_INTEGER`].
pub fn i64_at(p: &Value, path: &str) -> ApiResult<Option<i64>> {
    match str_at(p, path) {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(v) if v.abs() <= MAX_INTEGER => Ok(Some(v)),
            _ => Err(ApiError::invalid(
                &bracketed(path),
                format!("Invalid integer: {s}"),
            )),
        },
    }
}

/// An integer parameter within `range` (Stripe's limits for amounts, quantities, days).
pub fn bounded_at(
    p: &Value,
    path: &str,
    range: std::ops::RangeInclusive<i64>,
) -> ApiResult<Option<i64>> {
    match i64_at(p, path)? {
        Some(v) if !range.contains(&v) => Err(ApiError::invalid(
            &bracketed(path),
            format!(
                "This value must be between {} and {}.",
                range.start(),
                range.end()
            ),
        )),
        v => Ok(v),
    }
}

/// A float parameter (for `percent_off`).
pub fn f64_at(p: &Value, path: &str) -> ApiResult<Option<f64>> {
    match str_at(p, path) {
        None => Ok(None),
        Some(s) => s
            .parse::<f64>()
            .map(Some)
            .map_err(|_| ApiError::invalid(&bracketed(path), format!("Invalid decimal: {s}"))),
    }
}

/// A boolean parameter (`true`/`false`).
pub fn bool_at(p: &Value, path: &str) -> ApiResult<Option<bool>> {
    match str_at(p, path) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(s) => Err(ApiError::invalid(
            &bracketed(path),
            format!("Invalid boolean: {s}"),
        )),
    }
}

/// The value (any shape) at a dotted path.
pub fn at<'a>(p: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = p;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The `expand[]` paths of a request.
pub fn expand_paths(p: &Value) -> Vec<String> {
    match p.get("expand") {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Applies `metadata[...]` from params onto an object's metadata: empty values unset keys,
/// and `metadata=` (empty string) clears it, as Stripe does.
pub fn apply_metadata(target: &mut Value, p: &Value, path: &str) {
    let Some(given) = at(p, path) else {
        return;
    };
    let mut meta = match target.get("metadata") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    match given {
        Value::String(s) if s.is_empty() => meta.clear(),
        Value::Object(m) => {
            for (k, v) in m {
                match v.as_str() {
                    Some("") | None => {
                        meta.remove(k);
                    }
                    Some(s) => {
                        meta.insert(k.clone(), Value::String(s.to_string()));
                    }
                }
            }
        }
        _ => {}
    }
    target["metadata"] = Value::Object(meta);
}

/// Metadata given in params as a fresh object.
pub fn metadata(p: &Value, path: &str) -> Value {
    let mut v = serde_json::json!({"metadata": {}});
    apply_metadata(&mut v, p, path);
    v["metadata"].take()
}

/// `a.b.c` → `a[b][c]`, the way Stripe names parameters in errors.
pub fn bracketed(path: &str) -> String {
    let mut parts = path.split('.');
    let mut out = parts.next().unwrap_or_default().to_string();
    for p in parts {
        out.push('[');
        out.push_str(p);
        out.push(']');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn integers_out_of_range_are_refused() {
        assert!(i64_at(&json!({"a": "99999999999999999"}), "a").is_err());
        assert!(bounded_at(&json!({"a": "731"}), "a", 0..=730).is_err());
        assert_eq!(
            bounded_at(&json!({"a": "7"}), "a", 0..=730).ok().flatten(),
            Some(7)
        );
    }

    #[test]
    fn metadata_updates_merge_and_empty_values_unset() {
        let mut obj = json!({"metadata": {"a": "1", "b": "2"}});
        apply_metadata(
            &mut obj,
            &json!({"metadata": {"b": "", "c": "3"}}),
            "metadata",
        );
        assert_eq!(obj["metadata"], json!({"a": "1", "c": "3"}));
    }

    #[test]
    fn integer_parameters_reject_garbage_with_bracketed_param_name() {
        let e = i64_at(
            &json!({"subscription_data": {"trial_period_days": "x"}}),
            "subscription_data.trial_period_days",
        )
        .err();
        assert_eq!(
            e.and_then(|e| e.param.clone()),
            Some("subscription_data[trial_period_days]".to_string())
        );
    }
}
