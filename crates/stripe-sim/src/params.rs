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

/// A required string parameter: absent is `parameter_missing`, sent empty
/// (Stripe's way of unsetting) `parameter_invalid_empty`.
pub fn req_str<'a>(p: &'a Value, path: &str) -> ApiResult<&'a str> {
    str_at(p, path).ok_or_else(|| {
        let param = bracketed(path);
        if at(p, path).and_then(Value::as_str) == Some("") {
            ApiError::invalid_empty(&param)
        } else {
            ApiError::missing(&param)
        }
    })
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
            _ => Err(ApiError::invalid_integer(
                &bracketed(path),
                format!("Invalid integer: {s}"),
            )),
        },
    }
}

/// An integer parameter within `range` (Stripe's limits for amounts, quantities, days),
/// refused as `parameter_invalid_integer` in Stripe's words.
pub fn bounded_at(
    p: &Value,
    path: &str,
    range: std::ops::RangeInclusive<i64>,
) -> ApiResult<Option<i64>> {
    let param = || bracketed(path);
    match i64_at(p, path)? {
        Some(v) if v < 0 && *range.start() == 0 => Err(ApiError::invalid_integer(
            &param(),
            "Invalid non-negative integer",
        )),
        Some(v) if v < *range.start() => Err(ApiError::invalid_integer(
            &param(),
            format!(
                "This value must be greater than or equal to {}.",
                range.start()
            ),
        )),
        Some(v) if v > *range.end() => Err(ApiError::invalid_integer(
            &param(),
            format!("This value must be less than or equal to {}.", range.end()),
        )),
        v => Ok(v),
    }
}

/// An email parameter, if present and non-empty, refused as `email_invalid`
/// when Stripe would refuse it: one `@`, a name without spaces or
/// `"(),:;<>[\]` and without leading, trailing or doubled dots, and a domain
/// of at least two dot-separated labels of letters, digits and inner `-`.
/// Nothing is trimmed: Stripe refuses a surrounding space too.
pub fn email_at<'a>(p: &'a Value, path: &str) -> ApiResult<Option<&'a str>> {
    match str_at(p, path) {
        Some(e) if !valid_email(e) => Err(ApiError::invalid_email(&bracketed(path), e)),
        e => Ok(e),
    }
}

fn valid_email(e: &str) -> bool {
    const SPECIALS: &[char] = &['"', '(', ')', ',', ':', ';', '<', '>', '[', '\\', ']', '@'];
    let Some((local, domain)) = e.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || SPECIALS.contains(&c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
    e.len() <= 512 && local_ok && domain_ok
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
    fn integer_errors_carry_stripes_code() {
        for (v, msg) in [
            ("-5", "Invalid non-negative integer"),
            ("12.5", "Invalid integer: 12.5"),
            (
                "100000000",
                "This value must be less than or equal to 99999999.",
            ),
        ] {
            let e =
                bounded_at(&json!({"unit_amount": v}), "unit_amount", 0..=99_999_999).unwrap_err();
            assert_eq!(e.code.as_deref(), Some("parameter_invalid_integer"), "{v}");
            assert_eq!(e.message, msg);
        }
        let e = bounded_at(&json!({"q": "0"}), "q", 1..=10).unwrap_err();
        assert_eq!(e.message, "This value must be greater than or equal to 1.");
    }

    #[test]
    fn emails_stripe_refuses_are_email_invalid() {
        for bad in [
            "plain",
            "a@com",
            "a@gmail",
            " a@example.com",
            "a@example.com ",
            "a b@example.com",
            "@example.com",
            "a@@example.com",
            "a@.example.com",
            "a@example..com",
            "a@-x.com",
            ".a@example.com",
            "a..b@example.com",
            "a\u{ff20}example.com",
        ] {
            let e = email_at(&json!({"email": bad}), "email").unwrap_err();
            assert_eq!(e.code.as_deref(), Some("email_invalid"), "{bad}");
            assert_eq!(e.param.as_deref(), Some("email"));
            assert_eq!(e.message, format!("Invalid email address: {bad}"));
        }
        for good in [
            "a@b.c",
            "first.last+tag@sub.example.co",
            "x_y-z@xn--bcher-kva.de",
        ] {
            assert_eq!(
                email_at(&json!({"email": good}), "email").ok().flatten(),
                Some(good)
            );
        }
        assert_eq!(
            email_at(&json!({"email": ""}), "email").ok().flatten(),
            None
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
