//! Stripe's form encoding: `a[b][c]=v`, `items[0][price]=p`, `expand[]=x`.
//!
//! Stripe's SDKs send nested parameters as bracketed keys; we decode them into
//! a `serde_json::Value` tree so handlers read parameters the way the API
//! reference documents them. Numeric segments become arrays (ordered by index),
//! `[]` appends, and every leaf is a string, exactly as it arrived.

use serde_json::{Map, Value};

/// Decodes an `application/x-www-form-urlencoded` string into a JSON object tree.
pub fn parse(input: &str) -> Value {
    let mut root = Value::Object(Map::new());
    for (key, value) in
        serde_urlencoded::from_str::<Vec<(String, String)>>(input).unwrap_or_default()
    {
        insert(&mut root, &segments(&key), Value::String(value));
    }
    arrays_from_numeric_maps(root)
}

/// Merges `extra`'s top-level keys into `base` (used to combine query and body).
pub fn merge(base: &mut Value, extra: Value) {
    if let (Value::Object(b), Value::Object(e)) = (base, extra) {
        for (k, v) in e {
            b.insert(k, v);
        }
    }
}

fn segments(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (head, mut rest) = match key.find('[') {
        Some(i) => (&key[..i], &key[i..]),
        None => (key, ""),
    };
    out.push(head.to_string());
    while let Some(stripped) = rest.strip_prefix('[') {
        match stripped.find(']') {
            Some(end) => {
                out.push(stripped[..end].to_string());
                rest = &stripped[end + 1..];
            }
            None => {
                // An unterminated bracket is kept literally, as one segment.
                out.push(stripped.to_string());
                break;
            }
        }
    }
    out
}

// Arrays are built as maps keyed by index (or by a running counter for `[]`)
// and converted afterwards, so `items[1]` may arrive before `items[0]`.
const APPEND_PREFIX: &str = "\u{0}append";

fn insert(node: &mut Value, path: &[String], leaf: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(map) = node else {
        return;
    };
    let key = if first.is_empty() {
        format!("{APPEND_PREFIX}{:08}", map.len())
    } else {
        first.clone()
    };
    if rest.is_empty() {
        map.insert(key, leaf);
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    insert(child, rest, leaf);
}

fn arrays_from_numeric_maps(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let is_array = !map.is_empty()
                && map.keys().all(|k| {
                    k.starts_with(APPEND_PREFIX)
                        || (!k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()))
                });
            if is_array {
                let mut items: Vec<(u64, String, Value)> = map
                    .into_iter()
                    .map(|(k, v)| {
                        let idx = k
                            .trim_start_matches(APPEND_PREFIX)
                            .parse::<u64>()
                            .unwrap_or(u64::MAX);
                        (idx, k, arrays_from_numeric_maps(v))
                    })
                    .collect();
                items.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
                Value::Array(items.into_iter().map(|(_, _, v)| v).collect())
            } else {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, arrays_from_numeric_maps(v)))
                        .collect(),
                )
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_keys_become_objects_and_indexed_keys_become_arrays() {
        let v = parse("customer=cus_1&items[1][price]=p2&items[0][price]=p1&items[0][quantity]=2&metadata[a]=b&subscription_data[metadata][k]=v");
        assert_eq!(
            v,
            json!({"customer":"cus_1","items":[{"price":"p1","quantity":"2"},{"price":"p2"}],"metadata":{"a":"b"},"subscription_data":{"metadata":{"k":"v"}}})
        );
    }

    #[test]
    fn empty_brackets_append_in_arrival_order() {
        let v = parse("expand[]=data.customer&expand[]=latest_invoice&types[]=a");
        assert_eq!(
            v,
            json!({"expand":["data.customer","latest_invoice"],"types":["a"]})
        );
    }

    #[test]
    fn percent_encoding_and_empty_values_are_decoded() {
        let v = parse("email=a%2Bb%40x.io&metadata[gone]=&name=J+R");
        assert_eq!(
            v,
            json!({"email":"a+b@x.io","metadata":{"gone":""},"name":"J R"})
        );
    }

    #[test]
    fn merge_overwrites_top_level_keys() {
        let mut a = json!({"a":"1","b":"2"});
        merge(&mut a, json!({"b":"3"}));
        assert_eq!(a, json!({"a":"1","b":"3"}));
    }
}
