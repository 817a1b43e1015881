//! Stripe's published definitions for the pinned API version, generated from
//! the official Node SDK's types by `scripts/stripe-defs.py` into
//! `stripe-defs.json`: the parameters of every endpoint the emulator serves
//! (requests naming anything else are refused as Stripe does) and the shape
//! of every object it emits (checked by the conformance tests with
//! [`check_object`]).
//!
//! A type node is a string (`"s"` string, `"n"` number, `"i"` integer (a
//! request parameter the Python SDK types `int`), `"d"` decimal string, the
//! SDK's `Decimal`, e.g. `unit_amount_decimal`, `"b"` boolean,
//! `"null"`, `"true"`, `"false"`, `"void"` never present, `"any"`) or an
//! object: `{"e":[..]}` one of these literals, `{"u":[..]}` any of these,
//! `{"o":{name:[optional,type]}}` an object, `{"a":t}` an array, `{"l":t}` a
//! list, `{"sr":t}` a search result, `{"m":t}` a map, `{"r":"invoice"}` the
//! resource whose `object` is `invoice`.

use serde_json::Value;
use std::collections::BTreeSet;
use std::sync::OnceLock;

const TABLE: &str = include_str!("stripe-defs.json");

/// The generated table, parsed once.
pub fn table() -> &'static Value {
    static T: OnceLock<Value> = OnceLock::new();
    T.get_or_init(|| serde_json::from_str(TABLE).expect("stripe-defs.json is valid JSON"))
}

/// Which SDK release the table was generated from, e.g. `stripe@23.0.1 (npm)`.
pub fn sdk() -> &'static str {
    table()["sdk"].as_str().unwrap_or_default()
}

/// The parameter definition of `method` on `/v1/...` `rest` (ids as any
/// segment the SDK writes as `{}`), or `None` for an endpoint outside the table.
pub fn endpoint(method: &str, rest: &[&str]) -> Option<&'static Value> {
    let eps = table()["endpoints"].as_object()?;
    // Literal segments win over `{}` (`/v1/customers/search` is not a customer id).
    let mut best: Option<(usize, &'static Value)> = None;
    for (key, def) in eps {
        let Some((m, path)) = key.split_once(' ') else {
            continue;
        };
        let segs: Vec<&str> = path.trim_start_matches("/v1/").split('/').collect();
        if m != method || segs.len() != rest.len() {
            continue;
        }
        let mut literal = 0;
        let matches = segs.iter().zip(rest).all(|(s, r)| {
            if *s == "{}" {
                true
            } else {
                literal += 1;
                s == r
            }
        });
        if matches && best.is_none_or(|(l, _)| literal > l) {
            best = Some((literal, def));
        }
    }
    best.map(|(_, d)| d)
}

/// The first parameter of `params` that `def` does not have, in Stripe's
/// bracketed spelling (`phases[1][iterations]`).
pub fn unknown_param(def: &Value, params: &Value) -> Option<String> {
    fn walk(def: &Value, v: &Value, path: &str) -> Option<String> {
        match (def, v) {
            (Value::Object(d), _) if d.contains_key("u") => {
                let alts = d["u"].as_array()?;
                // Unknown only when no alternative takes it.
                let mut first = None;
                for a in alts {
                    match walk(a, v, path) {
                        None => return None,
                        Some(p) => {
                            first.get_or_insert(p);
                        }
                    }
                }
                first
            }
            (Value::Object(d), Value::Object(m)) if d.contains_key("o") => {
                let fields = d["o"].as_object()?;
                for (k, sub) in m {
                    let here = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}[{k}]")
                    };
                    match fields.get(k) {
                        None => return Some(here),
                        Some(f) => {
                            if let Some(p) = walk(&f[1], sub, &here) {
                                return Some(p);
                            }
                        }
                    }
                }
                None
            }
            (Value::Object(d), Value::Object(m)) if d.contains_key("m") => m
                .iter()
                .find_map(|(k, sub)| walk(&d["m"], sub, &format!("{path}[{k}]"))),
            (Value::Object(d), Value::Array(items)) if d.contains_key("a") => items
                .iter()
                .enumerate()
                .find_map(|(i, sub)| walk(&d["a"], sub, &format!("{path}[{i}]"))),
            // Form values are strings: a leaf where an object is expected
            // (`discounts=` to clear) is a value question, not an unknown name.
            (Value::Object(d), Value::Object(_)) if d.contains_key("a") => Some(path.into()),
            (Value::String(s), Value::Object(_))
                if s == "s" || s == "n" || s == "i" || s == "d" || s == "b" =>
            {
                Some(path.into())
            }
            (Value::Object(d), Value::Object(_)) if d.contains_key("e") => Some(path.into()),
            _ => None,
        }
    }
    walk(def, params, "")
}

/// The first parameter of `params` whose value lies outside the enumeration
/// `def` gives it, with the accepted values: `recurring[interval]=fortnight`
/// gives `("recurring[interval]", ["day", "month", "week", "year"])`.
///
/// The SDK writes every enumeration open (`'day' | ... | OtherString`, so
/// that old SDKs take new values), which the table keeps as a union of the
/// literals and `"s"`; the API itself takes only the literals, so such a
/// union is read as closed. An empty value (Stripe's "unset") and shapes the
/// table does not describe are left to [`unknown_param`] and the handlers.
pub fn invalid_enum(def: &'static Value, params: &Value) -> Option<(String, Vec<&'static str>)> {
    walk_enum(def, params, "").err().flatten()
}

/// `Ok` when `v` fits `def`; `Err(None)` when it does not fit but is no
/// enumeration's business; `Err(Some(..))` for a value outside an enumeration.
type EnumVerdict = Result<(), Option<(String, Vec<&'static str>)>>;

fn walk_enum(def: &'static Value, v: &Value, path: &str) -> EnumVerdict {
    let at = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}[{k}]")
        }
    };
    // A bad value deeper in wins over a shape mismatch elsewhere.
    let all = |verdicts: &mut dyn Iterator<Item = EnumVerdict>| -> EnumVerdict {
        let mut mismatch = false;
        for r in verdicts {
            match r {
                Err(Some(bad)) => return Err(Some(bad)),
                Err(None) => mismatch = true,
                Ok(()) => {}
            }
        }
        if mismatch {
            Err(None)
        } else {
            Ok(())
        }
    };
    match (def, v) {
        (Value::String(t), _) if t == "any" => Ok(()),
        (Value::String(t), Value::String(_))
            if t == "s" || t == "n" || t == "i" || t == "d" || t == "b" =>
        {
            Ok(())
        }
        (Value::String(t), Value::String(s)) if t == "true" || t == "false" => {
            if s == t {
                Ok(())
            } else {
                Err(None)
            }
        }
        (Value::Object(d), Value::String(s)) if d.contains_key("e") => {
            let lits = literals(&d["e"]);
            if s.is_empty() || lits.contains(&s.as_str()) {
                Ok(())
            } else {
                Err(Some((path.to_string(), named(lits))))
            }
        }
        (Value::Object(d), _) if d.contains_key("u") => {
            let alts: Vec<&'static Value> = d["u"].as_array().into_iter().flatten().collect();
            let is_open_enum = alts.iter().any(|a| *a == "s")
                && alts.iter().any(|a| !named(literals(&a["e"])).is_empty());
            let mut first_bad = None;
            for a in alts {
                if is_open_enum && *a == "s" {
                    continue;
                }
                match walk_enum(a, v, path) {
                    Ok(()) => return Ok(()),
                    Err(Some(bad)) => {
                        // Several literal alternatives (Emptyable<'a' | 'b'>) list together.
                        let (p, vals) = first_bad.get_or_insert((bad.0.clone(), Vec::new()));
                        if *p == bad.0 {
                            vals.extend(bad.1);
                        }
                    }
                    Err(None) => {}
                }
            }
            Err(first_bad)
        }
        (Value::Object(d), Value::Object(m)) if d.contains_key("o") => {
            let fields = d["o"].as_object();
            all(&mut m
                .iter()
                .map(|(k, sub)| match fields.and_then(|f| f.get(k)) {
                    Some(f) => walk_enum(&f[1], sub, &at(k)),
                    None => Err(None),
                }))
        }
        (Value::Object(d), Value::Object(m)) if d.contains_key("m") => {
            all(&mut m.iter().map(|(k, sub)| walk_enum(&d["m"], sub, &at(k))))
        }
        (Value::Object(d), Value::Array(items)) if d.contains_key("a") => all(&mut items
            .iter()
            .enumerate()
            .map(|(i, sub)| walk_enum(&d["a"], sub, &at(&i.to_string())))),
        _ => Err(None),
    }
}

/// The string literals of an `{"e": [..]}` node (booleans and numbers are
/// never form values).
fn literals(e: &'static Value) -> Vec<&'static str> {
    e.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The literals worth naming in a message: all but the empty "unset" value.
fn named(lits: Vec<&'static str>) -> Vec<&'static str> {
    lits.into_iter().filter(|l| !l.is_empty()).collect()
}

/// What is wrong with one request, as [`check_request`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No endpoint of the table has this method and path.
    UnknownEndpoint,
    /// The endpoint has no parameter of this name (bracketed spelling).
    UnknownParam(String),
    /// The value is not of the parameter's type (`integer`, `boolean`, an
    /// object, a list...).
    WrongType {
        /// The parameter, e.g. `items[0][quantity]`.
        param: String,
        /// The value as sent (`<object>` or `<list>` for a nested one).
        value: String,
        /// What the definitions want there.
        expected: String,
    },
    /// The value is not one of the parameter's enumeration.
    NotInEnum {
        /// The parameter, e.g. `proration_behavior`.
        param: String,
        /// The value as sent.
        value: String,
        /// The values the definitions accept.
        allowed: Vec<&'static str>,
    },
    /// A required parameter is absent (at the top level, or inside an
    /// object parameter that is sent).
    MissingRequired(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::UnknownEndpoint => f.write_str("no such endpoint in Stripe's definitions"),
            Problem::UnknownParam(p) => write!(f, "{p}: unknown parameter"),
            Problem::WrongType {
                param,
                value,
                expected,
            } => write!(f, "{param}={value}: not {expected}"),
            Problem::NotInEnum {
                param,
                value,
                allowed,
            } => write!(f, "{param}={value}: not one of {}", allowed.join(", ")),
            Problem::MissingRequired(p) => write!(f, "{p}: required, missing"),
        }
    }
}

/// The table's key (`POST /v1/subscriptions/{}`) of the endpoint `method`
/// `path` calls, or `None` when the table has no such endpoint.
pub fn endpoint_key(method: &str, path: &str) -> Option<&'static str> {
    let rest = path
        .split_once('?')
        .map_or(path, |(p, _)| p)
        .strip_prefix("/v1/")?;
    let rest: Vec<&str> = rest.split('/').collect();
    let def = endpoint(method, &rest)?;
    table()["endpoints"]
        .as_object()?
        .iter()
        .find(|(_, d)| std::ptr::eq(*d, def))
        .map(|(k, _)| k.as_str())
}

/// Everything Stripe's definitions find wrong with a request: the endpoint
/// (method and path template), and each parameter's name, nesting, type
/// (number, boolean, string, object, list), enumeration and presence when
/// required. `params` are form pairs in Stripe's bracketed spelling; a query
/// string on `path` counts too. Empty when the request is well-formed.
///
/// Unlike the emulator's refusals (the first problem, as Stripe answers),
/// this lists every problem, and it is pure: billd's test suites run it over
/// every request billd's client sent.
pub fn check_request(method: &str, path: &str, params: &[(String, String)]) -> Vec<Problem> {
    let (path, query) = path.split_once('?').unwrap_or((path, ""));
    let rest: Vec<&str> = match path.strip_prefix("/v1/") {
        Some(r) => r.split('/').collect(),
        None => return vec![Problem::UnknownEndpoint],
    };
    let Some(def) = endpoint(method, &rest) else {
        return vec![Problem::UnknownEndpoint];
    };
    let mut pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    pairs.extend_from_slice(params);
    let tree = crate::form::parse(&serde_urlencoded::to_string(&pairs).unwrap_or_default());
    let mut out = Vec::new();
    fits(def, &tree, "", &mut out);
    out
}

/// [`check_request`] for parameters already decoded into their nested form
/// (what the emulator records of each request it served, see
/// [`crate::Sim::request_problems`]).
pub fn check_decoded(method: &str, path: &str, params: &Value) -> Vec<Problem> {
    let rest: Vec<&str> = match path.strip_prefix("/v1/") {
        Some(r) => r.split('/').collect(),
        None => return vec![Problem::UnknownEndpoint],
    };
    let Some(def) = endpoint(method, &rest) else {
        return vec![Problem::UnknownEndpoint];
    };
    let mut out = Vec::new();
    fits(def, params, "", &mut out);
    out
}

/// A `Decimal` as Stripe writes and takes it: a plain decimal number in a
/// string (`"1250.5"`, `"-3"`), with at most 12 decimal places; no exponent,
/// no sign-only or empty value.
fn is_decimal(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    !whole.is_empty()
        && all_digits(whole)
        && all_digits(frac)
        && frac.len() <= 12
        && frac.is_empty() != digits.contains('.')
}

fn bracket(path: &str, k: &str) -> String {
    if path.is_empty() {
        k.to_string()
    } else {
        format!("{path}[{k}]")
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(_) => "<list>".into(),
        Value::Object(_) => "<object>".into(),
        other => other.to_string(),
    }
}

/// Pushes onto `out` what keeps form value `v` (every leaf a string) at
/// `path` from fitting type node `def`.
fn fits(def: &'static Value, v: &Value, path: &str, out: &mut Vec<Problem>) {
    let wrong = |expected: &str| Problem::WrongType {
        param: path.to_string(),
        value: shown(v),
        expected: expected.to_string(),
    };
    match def {
        Value::String(t) => {
            let s = v.as_str();
            let ok = match t.as_str() {
                "any" => true,
                "s" => s.is_some(),
                // Form numbers are decimal strings; Stripe's "unset" is an
                // empty string, which the SDK spells as a `""` alternative.
                "n" => s.is_some_and(|s| s.parse::<f64>().is_ok_and(f64::is_finite)),
                "i" => s.is_some_and(|s| s.parse::<i64>().is_ok()),
                "d" => s.is_some_and(is_decimal),
                "b" => s.is_some_and(|s| s == "true" || s == "false"),
                "true" | "false" => s == Some(t.as_str()),
                _ => false,
            };
            if !ok {
                let expected = match t.as_str() {
                    "s" => "a string",
                    "n" => "a number",
                    "i" => "an integer",
                    "d" => "a decimal string",
                    "b" => "a boolean",
                    "true" => "true",
                    "false" => "false",
                    _ => "sendable",
                };
                out.push(wrong(expected));
            }
        }
        Value::Object(d) => {
            if let Some(e) = d.get("e") {
                let lits = literals(e);
                match v.as_str() {
                    Some(s) if lits.contains(&s) => {}
                    Some(s) => out.push(Problem::NotInEnum {
                        param: path.to_string(),
                        value: s.to_string(),
                        allowed: named(lits),
                    }),
                    None => out.push(wrong("a string")),
                }
            } else if let Some(alts) = d.get("u").and_then(Value::as_array) {
                union_fits(alts, v, path, out);
            } else if let Some(fields) = d.get("o").and_then(Value::as_object) {
                let Value::Object(m) = v else {
                    out.push(wrong("an object"));
                    return;
                };
                for (k, sub) in m {
                    let here = bracket(path, k);
                    match fields.get(k) {
                        Some(f) => fits(&f[1], sub, &here, out),
                        None => out.push(Problem::UnknownParam(here)),
                    }
                }
                for (k, f) in fields {
                    if f[0] == 0 && !m.contains_key(k) {
                        out.push(Problem::MissingRequired(bracket(path, k)));
                    }
                }
            } else if let Some(item) = d.get("a") {
                let Value::Array(items) = v else {
                    out.push(wrong("a list"));
                    return;
                };
                for (i, x) in items.iter().enumerate() {
                    fits(item, x, &bracket(path, &i.to_string()), out);
                }
            } else if let Some(item) = d.get("m") {
                let Value::Object(m) = v else {
                    out.push(wrong("a map"));
                    return;
                };
                for (k, x) in m {
                    fits(item, x, &bracket(path, k), out);
                }
            } else {
                // Lists, search results and resources are never parameters.
                out.push(wrong("sendable"));
            }
        }
        _ => out.push(wrong("sendable")),
    }
}

/// A union fits when one alternative does. The SDK writes enumerations open
/// (`'a' | 'b' | string`); the API takes only the literals (see
/// [`invalid_enum`]), so the bare string alternative is dropped there. When
/// none fits, the problems of the alternative closest to fitting stand, and
/// a string outside every literal alternative is one enumeration problem.
fn union_fits(alts: &'static [Value], v: &Value, path: &str, out: &mut Vec<Problem>) {
    let is_open_enum =
        alts.iter().any(|a| a == "s") && alts.iter().any(|a| !named(literals(&a["e"])).is_empty());
    let alts: Vec<&'static Value> = alts
        .iter()
        .filter(|a| !(is_open_enum && *a == "s"))
        .collect();
    let mut best: Option<Vec<Problem>> = None;
    for a in &alts {
        let mut mine = Vec::new();
        fits(a, v, path, &mut mine);
        if mine.is_empty() {
            return;
        }
        if best.as_ref().is_none_or(|b| mine.len() < b.len()) {
            best = Some(mine);
        }
    }
    let enum_alts: Vec<&'static str> = alts.iter().flat_map(|a| named(literals(&a["e"]))).collect();
    match v.as_str() {
        Some(s) if !enum_alts.is_empty() && !alts.iter().any(|a| a.is_string()) => {
            out.push(Problem::NotInEnum {
                param: path.to_string(),
                value: s.to_string(),
                allowed: enum_alts,
            });
        }
        _ => out.extend(best.unwrap_or_default()),
    }
}

/// Removes the includable properties (`invoice.payments`, `charge.refunds`,
/// `price.currency_options`...) that `expand` (paths from `value`'s root)
/// does not name: Stripe sends them only when asked, and never in webhooks
/// (where `expand` is empty).
pub fn strip_includable(value: &mut Value, expand: &[String]) {
    fn walk(v: &mut Value, rel: &str, expand: &[String]) {
        match v {
            Value::Object(m) => {
                if let Some(fields) = m
                    .get("object")
                    .and_then(Value::as_str)
                    .and_then(|k| table()["includable"][k].as_array())
                {
                    for f in fields.iter().filter_map(Value::as_str) {
                        if !expanded(expand.iter(), &join(rel, f)) {
                            m.remove(f);
                        }
                    }
                }
                for (k, sub) in m.iter_mut() {
                    walk(sub, &join(rel, k), expand);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| walk(x, rel, expand)),
            _ => {}
        }
    }
    walk(value, "", expand);
}

/// Whether an `expand[]` path names `path` or goes through it
/// (`latest_invoice.payments.data` expands `latest_invoice.payments`).
fn expanded<'a>(mut expand: impl Iterator<Item = &'a String>, path: &str) -> bool {
    expand.any(|e| e == path || e.strip_prefix(path).is_some_and(|r| r.starts_with('.')))
}

/// Where an object was seen, for [`check_object`].
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The request's `expand[]` paths (relative to the response's root).
    pub expand: BTreeSet<String>,
    /// Inside a webhook event's `data`: nothing there is ever expanded.
    pub webhook: bool,
}

/// The differences between `value` (a response body, a list, or an event)
/// and Stripe's definitions, one line each: `kind.path: what`. Paths name
/// the resource kind they are in (`invoice.payments`, `subscription_schedule.phases[].items[].plan`).
pub fn check_object(value: &Value, seen: &Seen) -> Vec<String> {
    let mut out = Vec::new();
    let mut c = Checker {
        seen,
        out: &mut out,
    };
    match value["object"].as_str() {
        Some("list") => c.list(value, "", "list"),
        Some("search_result") => c.search(value, "", "search_result"),
        Some(kind) => {
            let kind = kind.to_string();
            c.resource(&kind, value, "", "", true);
        }
        None => c.out.push("response: no `object`".into()),
    }
    out
}

/// The differences between a webhook event and Stripe's definitions: its
/// envelope, its `data.object` as delivered (nothing expanded, nothing
/// includable), and `data.previous_attributes` naming only properties of
/// that object. `*.updated` events of a changed object must carry
/// `previous_attributes`.
pub fn check_event(event: &Value) -> Vec<String> {
    let mut envelope = event.clone();
    envelope["data"]["object"] = Value::Object(Default::default());
    let prev = envelope["data"]
        .as_object_mut()
        .and_then(|d| d.remove("previous_attributes"));
    let mut out = check_object(&envelope, &Seen::default());
    let object = &event["data"]["object"];
    let seen = Seen {
        webhook: true,
        ..Seen::default()
    };
    out.extend(check_object(object, &seen));
    let kind = object["object"].as_str().unwrap_or_default();
    let ty = event["type"].as_str().unwrap_or_default();
    match prev {
        Some(Value::Object(prev)) => {
            let fields = &table()["objects"][kind]["o"];
            for k in prev.keys() {
                if fields.get(k).is_none() {
                    out.push(format!(
                        "{ty}.data.previous_attributes.{k}: not a property of {kind}"
                    ));
                }
            }
        }
        Some(_) => out.push(format!("{ty}.data.previous_attributes: not an object")),
        None if ty.ends_with(".updated") => {
            out.push(format!("{ty}.data.previous_attributes: missing"))
        }
        None => {}
    }
    out
}

struct Checker<'a> {
    seen: &'a Seen,
    out: &'a mut Vec<String>,
}

fn join(rel: &str, k: &str) -> String {
    if rel.is_empty() {
        k.to_string()
    } else {
        format!("{rel}.{k}")
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl Checker<'_> {
    /// `rel` is the path from the response root (for `expand[]`), `label` the
    /// path within the nearest resource (for the report).
    fn resource(&mut self, kind: &str, v: &Value, rel: &str, label: &str, root: bool) {
        let t = table();
        if kind == "event"
            && v["data"]["object"]
                .as_object()
                .is_some_and(|m| !m.is_empty())
        {
            // An event, as listed or retrieved: the same as delivered.
            self.out.extend(check_event(v));
            return;
        }
        let deleted = v["deleted"] == true;
        let key = if deleted {
            format!("deleted:{kind}")
        } else {
            kind.to_string()
        };
        let Some(def) = t["objects"].get(&key) else {
            // Outside the table: the emulator emits nothing of the kind.
            if !root {
                self.out
                    .push(format!("{label}: a {kind}, a kind outside the table"));
            }
            return;
        };
        let includable: Vec<&str> = t["includable"][kind]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Value::Object(m) = v {
            for f in &includable {
                if m.contains_key(*f) {
                    let path = join(rel, f);
                    if self.seen.webhook {
                        self.out
                            .push(format!("{kind}.{f}: includable, sent in a webhook"));
                    } else if !expanded(self.seen.expand.iter(), &path) {
                        self.out
                            .push(format!("{kind}.{f}: includable, returned without expand[]"));
                    }
                }
            }
        }
        self.value(def, v, rel, kind);
    }

    fn list(&mut self, v: &Value, rel: &str, label: &str) {
        let Value::Object(m) = v else {
            self.out
                .push(format!("{label}: is {}, a list expected", json_kind(v)));
            return;
        };
        for k in m.keys() {
            if !["object", "data", "has_more", "url"].contains(&k.as_str()) {
                self.out
                    .push(format!("{label}.{k}: a list has no such property"));
            }
        }
        for k in ["data", "has_more", "url"] {
            if !m.contains_key(k) {
                self.out.push(format!("{label}.{k}: missing"));
            }
        }
        self.items(v, rel, label, None);
    }

    fn search(&mut self, v: &Value, rel: &str, label: &str) {
        let Value::Object(m) = v else {
            return;
        };
        for k in m.keys() {
            let known = ["object", "data", "has_more", "url", "next_page"].contains(&k.as_str())
                || (k == "total_count" && self.seen.expand.contains(&join(rel, "total_count")));
            if !known {
                self.out
                    .push(format!("{label}.{k}: a search result has no such property"));
            }
        }
        self.items(v, rel, label, None);
    }

    fn items(&mut self, v: &Value, rel: &str, label: &str, def: Option<&Value>) {
        let data_rel = join(rel, "data");
        for item in v["data"].as_array().into_iter().flatten() {
            match def {
                Some(d) => self.value(d, item, &data_rel, &format!("{label}.data[]")),
                None => match item["object"].as_str() {
                    Some(k) => {
                        let k = k.to_string();
                        self.resource(&k, item, &data_rel, &format!("{label}.data[]"), false)
                    }
                    None => self.out.push(format!("{label}.data[]: no `object`")),
                },
            }
        }
    }

    fn value(&mut self, def: &Value, v: &Value, rel: &str, label: &str) {
        match def {
            Value::String(s) => {
                let ok = match s.as_str() {
                    "s" => v.is_string(),
                    "n" => v.is_number(),
                    "i" => v.is_i64() || v.is_u64(),
                    "d" => v.as_str().is_some_and(is_decimal),
                    "b" | "true" | "false" => v.is_boolean(),
                    "null" => v.is_null(),
                    "void" => false,
                    _ => true,
                };
                if !ok {
                    let want = match s.as_str() {
                        "s" => "string",
                        "n" => "number",
                        "i" => "integer",
                        "d" => "decimal string",
                        "b" | "true" | "false" => "boolean",
                        "void" => "absent",
                        other => other,
                    };
                    self.out
                        .push(format!("{label}: is {}, Stripe's is {want}", json_kind(v)));
                }
            }
            Value::Object(d) => {
                if let Some(e) = d.get("e").and_then(Value::as_array) {
                    let ok = e
                        .iter()
                        .any(|x| x == v || (x.as_f64().is_some() && x.as_f64() == v.as_f64()));
                    if !ok {
                        self.out
                            .push(format!("{label}: {v} is not one of Stripe's values"));
                    }
                } else if let Some(alts) = d.get("u").and_then(Value::as_array) {
                    self.union(alts, v, rel, label);
                } else if let Some(fields) = d.get("o").and_then(Value::as_object) {
                    let Value::Object(m) = v else {
                        self.out
                            .push(format!("{label}: is {}, Stripe's is object", json_kind(v)));
                        return;
                    };
                    for (k, sub) in m {
                        let here = format!("{label}.{k}");
                        match fields.get(k) {
                            None => self.out.push(format!("{here}: not in Stripe's definition")),
                            Some(f) => self.value(&f[1], sub, &join(rel, k), &here),
                        }
                    }
                    for (k, f) in fields {
                        if f[0] == 0 && !m.contains_key(k) {
                            self.out.push(format!("{label}.{k}: missing"));
                        }
                    }
                } else if let Some(item) = d.get("a") {
                    let Value::Array(items) = v else {
                        self.out
                            .push(format!("{label}: is {}, Stripe's is array", json_kind(v)));
                        return;
                    };
                    for x in items {
                        self.value(item, x, rel, &format!("{label}[]"));
                    }
                } else if let Some(item) = d.get("l") {
                    if v["object"] != "list" {
                        self.out
                            .push(format!("{label}: is {}, Stripe's is a list", json_kind(v)));
                        return;
                    }
                    self.list_shape(v, label);
                    self.items(v, rel, label, Some(item));
                } else if let Some(item) = d.get("m") {
                    let Value::Object(m) = v else {
                        self.out
                            .push(format!("{label}: is {}, Stripe's is a map", json_kind(v)));
                        return;
                    };
                    for (k, x) in m {
                        self.value(item, x, &join(rel, k), &format!("{label}.{k}"));
                    }
                } else if let Some(kind) = d.get("r").and_then(Value::as_str) {
                    match v["object"].as_str() {
                        Some(k) if k == kind => self.resource(kind, v, rel, label, false),
                        _ => self.out.push(format!(
                            "{label}: is {}, Stripe's is a {kind}",
                            json_kind(v)
                        )),
                    }
                }
            }
            _ => {}
        }
    }

    fn list_shape(&mut self, v: &Value, label: &str) {
        if let Value::Object(m) = v {
            for k in m.keys() {
                if !["object", "data", "has_more", "url"].contains(&k.as_str()) {
                    self.out
                        .push(format!("{label}.{k}: a list has no such property"));
                }
            }
        }
    }

    fn union(&mut self, alts: &[Value], v: &Value, rel: &str, label: &str) {
        // An expandable property: an id, or the object when `expand[]` asked for it.
        let takes_id = alts.iter().any(|a| a == "s");
        let refs: Vec<&str> = alts.iter().filter_map(|a| a["r"].as_str()).collect();
        if let (Some(kind), true) = (v["object"].as_str(), v.is_object()) {
            if refs.contains(&kind) {
                if takes_id && !expanded(self.seen.expand.iter(), rel) {
                    let why = if self.seen.webhook {
                        "an object in a webhook"
                    } else {
                        "an object without expand[]"
                    };
                    self.out
                        .push(format!("{label}: {why}, Stripe sends the {kind}'s id"));
                }
                let kind = kind.to_string();
                self.resource(&kind, v, rel, label, false);
                return;
            }
        }
        // Otherwise the alternative with the fewest differences.
        let mut best: Option<Vec<String>> = None;
        for a in alts {
            if a == "null" && !v.is_null() {
                continue;
            }
            let mut out = Vec::new();
            Checker {
                seen: self.seen,
                out: &mut out,
            }
            .value(a, v, rel, label);
            if best.as_ref().is_none_or(|b| out.len() < b.len()) {
                best = Some(out);
            }
            if best.as_ref().is_some_and(Vec::is_empty) {
                return;
            }
        }
        self.out.extend(best.unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_is_for_the_pinned_api_version() {
        assert_eq!(table()["api_version"], crate::API_VERSION);
    }

    #[test]
    fn removed_and_nested_unknown_parameters_are_found() {
        let def = endpoint("POST", &["subscription_schedules", "sub_sched_1"]).unwrap();
        let ok = json!({"phases": [{"items": [{"price": "p", "quantity": "1"}],
            "duration": {"interval": "month", "interval_count": "1"}}]});
        assert_eq!(unknown_param(def, &ok), None);
        let removed = json!({"phases": [{"items": [{"price": "p"}]}, {"iterations": "1"}]});
        assert_eq!(
            unknown_param(def, &removed).as_deref(),
            Some("phases[1][iterations]")
        );
        assert!(endpoint("GET", &["customers", "search"]).unwrap()["o"]
            .get("query")
            .is_some());
    }

    fn pairs(form: &[(&str, &str)]) -> Vec<(String, String)> {
        form.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_well_formed_request_has_no_problems() {
        let ok = pairs(&[
            ("customer", "cus_1"),
            ("items[0][price]", "price_1"),
            ("items[0][quantity]", "2"),
            ("proration_behavior", "create_prorations"),
            ("metadata[billd_customer_id]", "u1"),
            ("expand[]", "latest_invoice.payments"),
            ("off_session", "true"),
        ]);
        assert_eq!(check_request("POST", "/v1/subscriptions", &ok), vec![]);
        assert_eq!(
            check_request("GET", "/v1/customers?limit=100&email=a@b.example", &[]),
            vec![]
        );
        assert_eq!(
            endpoint_key("GET", "/v1/customers/search"),
            Some("GET /v1/customers/search")
        );
        assert_eq!(
            endpoint_key("POST", "/v1/subscriptions/sub_1"),
            Some("POST /v1/subscriptions/{}")
        );
    }

    #[test]
    fn an_amount_is_a_number_and_a_decimal_amount_a_decimal_string() {
        let price = |k: &str, v: &str| {
            let form = pairs(&[
                ("currency", "eur"),
                ("product", "prod_1"),
                ("recurring[interval]", "month"),
                (k, v),
            ]);
            check_request("POST", "/v1/prices", &form)
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(price("unit_amount", "1900"), Vec::<String>::new());
        assert_eq!(
            price("unit_amount_decimal", "1900.125"),
            Vec::<String>::new()
        );
        assert_eq!(price("unit_amount_decimal", "-3"), Vec::<String>::new());
        for bad in ["1e3", "12.", ".5", "-", "", "12.5.1", "0.1234567890123"] {
            assert_eq!(
                price("unit_amount_decimal", bad),
                vec![format!("unit_amount_decimal={bad}: not a decimal string")],
                "{bad:?}"
            );
        }
        // An amount in the smallest unit is an integer (the Python SDK's
        // `int`): a fraction is refused where the decimal form takes it.
        for bad in ["many", "12.5"] {
            assert_eq!(
                price("unit_amount", bad),
                vec![format!("unit_amount={bad}: not an integer")]
            );
        }
        assert_eq!(price("unit_amount_decimal", "12.5"), Vec::<String>::new());
    }

    #[test]
    fn bad_requests_are_named_problem_by_problem() {
        let schedule = pairs(&[
            ("phases[0][items][0][price]", "price_1"),
            ("phases[0][end_date]", "1775813400"),
            ("phases[1][items][0][price]", "price_2"),
            ("phases[1][iterations]", "1"),
            ("end_behavior", "release"),
        ]);
        assert_eq!(
            check_request("POST", "/v1/subscription_schedules/sub_sched_1", &schedule),
            vec![Problem::UnknownParam("phases[1][iterations]".into())]
        );

        let bad = pairs(&[
            ("items[0][price]", "price_1"),
            ("items[0][quantity]", "two"),
            ("proration_behavior", "sometimes"),
            ("cancel_at_period_end", "yes"),
            ("items[0][price_data][currency]", "eur"),
        ]);
        let got = check_request("POST", "/v1/subscriptions/sub_1", &bad);
        let shown: Vec<String> = got.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"items[0][quantity]=two: not an integer".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"cancel_at_period_end=yes: not a boolean".to_string()),
            "{shown:?}"
        );
        assert!(
            got.iter()
                .any(|p| matches!(p, Problem::NotInEnum { param, value, allowed }
                if param == "proration_behavior" && value == "sometimes"
                    && allowed.contains(&"none"))),
            "{shown:?}"
        );
        // `price_data` is sent, so what it requires must be too.
        assert!(
            shown.contains(&"items[0][price_data][product]: required, missing".to_string()),
            "{shown:?}"
        );

        // A search without its query; a nested value where a string goes.
        assert_eq!(
            check_request("GET", "/v1/customers/search", &pairs(&[("limit", "10")])),
            vec![Problem::MissingRequired("query".into())]
        );
        let got = check_request(
            "POST",
            "/v1/subscriptions",
            &pairs(&[("items[0][price]", "p"), ("description[x]", "y")]),
        );
        assert!(
            got.iter()
                .any(|p| matches!(p, Problem::WrongType { param, .. } if param == "description")),
            "{got:?}"
        );

        assert_eq!(
            check_request("POST", "/v1/subscriptions/sub_1/frobnicate", &[]),
            vec![Problem::UnknownEndpoint]
        );
        assert_eq!(
            check_request("PATCH", "/v1/subscriptions/sub_1", &[]),
            vec![Problem::UnknownEndpoint]
        );
    }

    #[test]
    fn includable_fields_and_unexpanded_objects_are_reported() {
        let mut seen = Seen::default();
        let charge_ref = json!({"object": "charge", "id": "ch_1"});
        let v = json!({"object": "refund", "charge": charge_ref});
        let out = check_object(&v, &seen);
        assert!(
            out.iter()
                .any(|l| l.starts_with("refund.charge: an object without expand[]")),
            "{out:?}"
        );
        seen.expand.insert("charge".into());
        let out = check_object(&v, &seen);
        assert!(!out.iter().any(|l| l.contains("without expand")), "{out:?}");
        let inv = json!({"object": "invoice", "payments": {"object": "list", "data": [], "has_more": false, "url": "/v1/x"}});
        let out = check_object(
            &inv,
            &Seen {
                webhook: true,
                ..Seen::default()
            },
        );
        assert!(out.contains(&"invoice.payments: includable, sent in a webhook".to_string()));
        assert!(out.contains(&"invoice.id: missing".to_string()), "{out:?}");
    }
}
