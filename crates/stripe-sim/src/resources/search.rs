//! `GET /v1/customers/search` and `GET /v1/subscriptions/search`: Stripe's search
//! query language for the clauses billd needs — `field:'v'`, `field~'sub'`,
//! `metadata['k']:'v'`, `created>n` (and `<`, `>=`, `<=`), `-` to negate, joined
//! by `AND` or by `OR` (not both).

use crate::error::{ApiError, ApiResult};
use crate::params::{i64_at, str_at};
use crate::state::Inner;
use serde_json::{json, Value};

#[derive(Debug, PartialEq)]
struct Clause {
    negated: bool,
    field: Field,
    op: String,
    value: String,
}

#[derive(Debug, PartialEq)]
enum Field {
    Top(String),
    Metadata(String),
}

fn invalid(why: &str) -> ApiError {
    ApiError::invalid("query", format!("Invalid search query: {why}"))
}

fn parse_clause(text: &str) -> ApiResult<Clause> {
    let text = text.trim();
    let (negated, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (field, rest) = if let Some(rest) = text.strip_prefix("metadata[") {
        let quote = rest
            .chars()
            .next()
            .filter(|c| *c == '\'' || *c == '"')
            .ok_or_else(|| invalid("metadata key must be quoted"))?;
        let end = rest[1..]
            .find(quote)
            .ok_or_else(|| invalid("unterminated metadata key"))?
            + 1;
        let key = rest[1..end].to_string();
        let after = rest[end + 1..]
            .strip_prefix(']')
            .ok_or_else(|| invalid("expected ]"))?;
        (Field::Metadata(key), after)
    } else {
        let end = text
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .ok_or_else(|| invalid("expected an operator"))?;
        (Field::Top(text[..end].to_string()), &text[end..])
    };
    let op = [">=", "<=", ":", "~", ">", "<"]
        .into_iter()
        .find(|op| rest.starts_with(op))
        .ok_or_else(|| invalid("expected one of : ~ > < >= <="))?;
    let raw = rest[op.len()..].trim();
    let value = if let Some(q) = raw.chars().next().filter(|c| *c == '\'' || *c == '"') {
        raw.strip_prefix(q)
            .and_then(|r| r.strip_suffix(q))
            .ok_or_else(|| invalid("unterminated string"))?
            .to_string()
    } else if !raw.is_empty() && raw.chars().all(|c| c.is_ascii_digit()) {
        raw.to_string()
    } else {
        return Err(invalid("values must be quoted strings or numbers"));
    };
    Ok(Clause {
        negated,
        field,
        op: op.to_string(),
        value,
    })
}

/// Parses a query into its clauses and whether they are OR-ed.
fn parse(query: &str) -> ApiResult<(Vec<Clause>, bool)> {
    let has_and = query.contains(" AND ");
    let has_or = query.contains(" OR ");
    if has_and && has_or {
        return Err(invalid("AND and OR cannot be combined"));
    }
    let sep = if has_or { " OR " } else { " AND " };
    let clauses = query
        .split(sep)
        .map(parse_clause)
        .collect::<ApiResult<Vec<_>>>()?;
    Ok((clauses, has_or))
}

fn matches(o: &Value, c: &Clause) -> bool {
    let v = match &c.field {
        Field::Top(f) => f.split('.').fold(o, |acc, seg| &acc[seg]),
        Field::Metadata(k) => &o["metadata"][k],
    };
    let hit = match c.op.as_str() {
        ":" => match v {
            Value::String(s) => s.eq_ignore_ascii_case(&c.value),
            Value::Number(n) => n.to_string() == c.value,
            Value::Null => c.value.is_empty(),
            _ => false,
        },
        "~" => v
            .as_str()
            .is_some_and(|s| s.to_lowercase().contains(&c.value.to_lowercase())),
        op => {
            let (Some(a), Ok(b)) = (v.as_i64(), c.value.parse::<i64>()) else {
                return false;
            };
            match op {
                ">" => a > b,
                "<" => a < b,
                ">=" => a >= b,
                _ => a <= b,
            }
        }
    };
    hit != c.negated
}

/// Runs a search over `kind`, newest first, with `limit` and a `page` token.
pub fn search(s: &Inner, kind: &str, url: &str, p: &Value) -> ApiResult {
    let query = str_at(p, "query").ok_or_else(|| ApiError::missing("query"))?;
    let (clauses, any) = parse(query)?;
    let limit = i64_at(p, "limit")?.unwrap_or(10).clamp(1, 100) as usize;
    let offset = match str_at(p, "page") {
        Some(tok) => tok
            .strip_prefix("page_")
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| ApiError::invalid("page", "Invalid page token."))?,
        None => 0,
    };
    let hits: Vec<Value> = s
        .by_kind
        .get(kind)
        .into_iter()
        .flatten()
        .rev()
        .filter_map(|id| s.objects.get(id))
        .filter(|o| o["deleted"] != true)
        .filter(|o| {
            if any {
                clauses.iter().any(|c| matches(o, c))
            } else {
                clauses.iter().all(|c| matches(o, c))
            }
        })
        .cloned()
        .collect();
    let page: Vec<Value> = hits.iter().skip(offset).take(limit).cloned().collect();
    let has_more = hits.len() > offset + limit;
    Ok(json!({
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": if has_more { json!(format!("page_{}", offset + limit)) } else { Value::Null },
        "url": url,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clauses_parse_metadata_keys_operators_and_negation() {
        let (cs, any) =
            parse("metadata['billd_customer_id']:'u1' AND -status:\"canceled\" AND created>=100")
                .unwrap_or_default();
        assert!(!any);
        assert_eq!(cs[0].field, Field::Metadata("billd_customer_id".into()));
        assert!(cs[1].negated);
        assert_eq!((cs[2].op.as_str(), cs[2].value.as_str()), (">=", "100"));
        assert!(parse("email:unquoted").is_err());
        assert!(parse("a:'1' AND b:'2' OR c:'3'").is_err());
    }
}
