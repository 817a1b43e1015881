//! What "personal data" means once an account is deleted: which fields of
//! Stripe's JSON (webhook payloads, re-fetched objects) and of billd's own
//! JSON (outbox payloads) hold it, which audit fields record it, and how
//! each is redacted.
//!
//! Redaction keeps the shape: a personal string becomes [`ERASED`], a
//! personal number `null`, and an object or array under a personal key
//! keeps its keys with every value redacted. So a scrubbed event still
//! parses (a replay still applies, with the personal values gone), and its
//! ids, types, amounts and dates stay for dedupe, ordering and billing.
//! The store applies these rules to the rows it holds; nothing here knows
//! about tables.

use serde_json::Value;

use crate::apply::AuditEntry;

/// What a redacted value reads as.
pub const ERASED: &str = "[erased]";

/// The metadata key that survives scrubbing: it is the app's own user id,
/// which billd keeps anyway (the customer row), and it links Stripe objects
/// to their customer.
pub const KEPT_METADATA_KEY: &str = "billd_customer_id";

/// Object keys whose whole value is personal, wherever they appear (Stripe
/// objects of any type, `previous_attributes`, expanded objects, billd's
/// email parameters; a dispute's `evidence` is free text and documents
/// about the buyer). `description` is on the list because Stripe lets the
/// account (and Checkout) write anything there, names included; `expires`
/// is the card expiry billd puts in its own `card_expiring` email.
const PERSONAL_KEYS: [&str; 36] = [
    "email",
    "name",
    "phone",
    "address",
    "shipping",
    "shipping_details",
    "billing_details",
    "customer_details",
    "customer_email",
    "customer_name",
    "customer_address",
    "customer_phone",
    "customer_shipping",
    "customer_tax_ids",
    "tax_ids",
    "receipt_email",
    "description",
    "last4",
    "dynamic_last4",
    "exp_month",
    "exp_year",
    "fingerprint",
    "expires",
    "ip_address",
    "client_ip",
    "user_agent",
    "account_holder_name",
    "cardholder_name",
    "payer_email",
    "payer_name",
    "custom_fields",
    "evidence",
    "customer_email_address",
    "customer_purchase_ip",
    "billing_address",
    "shipping_address",
];

/// The last segment of an audit field (`stripe_customer.cus_1.email`,
/// `payment_method.pm_1.card`) that makes its values personal.
const PERSONAL_AUDIT_SUFFIXES: [&str; 6] =
    ["email", "name", "phone", "address", "card", "shipping"];

/// How the dedupe key of a card-expiry email starts; the rest is
/// `{payment_method}:{yyyy-mm}`, the card's expiry month.
pub const CARD_EXPIRING_KEY_PREFIX: &str = "card_expiring:";

/// Whether the value under `key` (at any depth) is personal data.
pub fn is_personal_key(key: &str) -> bool {
    PERSONAL_KEYS.contains(&key)
}

/// Redacts the personal fields of a JSON document in place (see the module
/// doc for the rules; metadata values go too, except
/// [`KEPT_METADATA_KEY`]). Returns whether anything changed, so a caller
/// rewrites only what needs it; scrubbing twice changes nothing the second
/// time.
pub fn scrub_json(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            let mut changed = false;
            for (key, child) in map.iter_mut() {
                changed |= if is_personal_key(key) {
                    erase_leaves(child)
                } else if key == "dedupe_key" {
                    scrub_dedupe_key_value(child)
                } else if key == "metadata" {
                    scrub_metadata(child)
                } else {
                    scrub_json(child)
                };
            }
            changed
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            let this = scrub_json(item);
            changed | this
        }),
        _ => false,
    }
}

/// [`scrub_json`] on a stored JSON text: the scrubbed text when something
/// changed, `None` when nothing did (or the text is not JSON, which no
/// stored payload is: billd only stores what parsed).
pub fn scrub_json_text(raw: &str) -> Option<String> {
    let mut value: Value = serde_json::from_str(raw).ok()?;
    scrub_json(&mut value).then(|| value.to_string())
}

/// An outbox dedupe key without the personal data some keys carry (the
/// card expiry month in a card-expiry email's key), made unique with
/// `row_id` (two such rows of one card differ only by that month); `None`
/// when the key carries none, or was redacted already. A deleted account
/// decides no more emails, so nothing needs the original key again.
pub fn redact_dedupe_key(key: &str, row_id: i64) -> Option<String> {
    let stripped = strip_card_expiry(key)?;
    Some(format!("{stripped}:{row_id}"))
}

/// `card_expiring:{pm}:{ERASED}` for a card-expiry key still carrying its
/// month.
fn strip_card_expiry(key: &str) -> Option<String> {
    let rest = key.strip_prefix(CARD_EXPIRING_KEY_PREFIX)?;
    let (pm, month) = rest.split_once(':')?;
    if month.starts_with(ERASED) {
        return None;
    }
    Some(format!("{CARD_EXPIRING_KEY_PREFIX}{pm}:{ERASED}"))
}

fn scrub_dedupe_key_value(value: &mut Value) -> bool {
    let Value::String(key) = value else {
        return false;
    };
    match strip_card_expiry(key) {
        Some(stripped) => {
            *key = stripped;
            true
        }
        None => false,
    }
}

/// Whether an audit field's values are personal data (an email, a card's
/// brand/last4/expiry, a name, …); the field name itself (what changed) is
/// not.
pub fn is_personal_audit_field(field: &str) -> bool {
    field
        .rsplit_once('.')
        .is_some_and(|(_, last)| PERSONAL_AUDIT_SUFFIXES.contains(&last))
}

/// The audit row with its values replaced by [`ERASED`] when the field is
/// personal ([`is_personal_audit_field`]): the row still says what changed
/// and when, and whether a value was there before and after.
pub fn redact_audit(entry: &AuditEntry) -> AuditEntry {
    let (before, after) = redact_audit_values(
        &entry.field,
        entry.before.as_deref(),
        entry.after.as_deref(),
    );
    AuditEntry {
        before,
        after,
        ..entry.clone()
    }
}

/// [`redact_audit`] on a stored row's `(before, after)`.
pub fn redact_audit_values(
    field: &str,
    before: Option<&str>,
    after: Option<&str>,
) -> (Option<String>, Option<String>) {
    let redact = |value: Option<&str>| {
        value.map(|v| {
            if is_personal_audit_field(field) {
                ERASED.to_owned()
            } else {
                v.to_owned()
            }
        })
    };
    (redact(before), redact(after))
}

/// Redacts every value under a personal key.
fn erase_leaves(value: &mut Value) -> bool {
    match value {
        Value::String(s) if s == ERASED => false,
        Value::String(s) => {
            *s = ERASED.to_owned();
            true
        }
        Value::Number(_) => {
            *value = Value::Null;
            true
        }
        Value::Object(map) => map.values_mut().fold(false, |changed, child| {
            let this = erase_leaves(child);
            changed | this
        }),
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            let this = erase_leaves(item);
            changed | this
        }),
        Value::Bool(_) | Value::Null => false,
    }
}

fn scrub_metadata(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => map
            .iter_mut()
            .filter(|(key, _)| key.as_str() != KEPT_METADATA_KEY)
            .fold(false, |changed, (_, child)| {
                let this = erase_leaves(child);
                changed | this
            }),
        other => scrub_json(other),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_customer_event_loses_its_contact_details_and_keeps_ids_dates_and_the_billd_link() {
        let mut event = json!({
            "id": "evt_1", "type": "customer.updated", "created": 1_700_000_000,
            "data": {
                "object": {
                    "id": "cus_1", "object": "customer", "created": 1_690_000_000,
                    "email": "bob@example.com", "name": "Bob", "phone": "+1555",
                    "address": { "line1": "1 Main St", "city": "Paris", "postal_code": "75001" },
                    "shipping": null,
                    "invoice_settings": { "default_payment_method": "pm_1" },
                    "metadata": { "billd_customer_id": "u_bob", "nickname": "bobby" },
                    "delinquent": false, "balance": 0
                },
                "previous_attributes": { "email": "old@example.com" }
            }
        });

        assert!(scrub_json(&mut event));

        let customer = &event["data"]["object"];
        assert_eq!(customer["email"], ERASED);
        assert_eq!(customer["name"], ERASED);
        assert_eq!(customer["phone"], ERASED);
        assert_eq!(
            customer["address"],
            json!({ "line1": ERASED, "city": ERASED, "postal_code": ERASED })
        );
        assert_eq!(customer["shipping"], Value::Null);
        assert_eq!(customer["metadata"]["billd_customer_id"], "u_bob");
        assert_eq!(customer["metadata"]["nickname"], ERASED);
        assert_eq!(event["data"]["previous_attributes"]["email"], ERASED);
        assert_eq!(
            (
                &event["id"],
                &event["created"],
                &customer["id"],
                &customer["created"]
            ),
            (
                &json!("evt_1"),
                &json!(1_700_000_000),
                &json!("cus_1"),
                &json!(1_690_000_000)
            )
        );
        assert_eq!(
            customer["invoice_settings"]["default_payment_method"],
            "pm_1"
        );
        assert_eq!(
            (&customer["delinquent"], &customer["balance"]),
            (&json!(false), &json!(0))
        );
    }

    #[test]
    fn card_and_billing_details_are_erased_and_amounts_stay() {
        let mut charge = json!({
            "id": "ch_1", "object": "charge", "amount": 1900, "currency": "eur",
            "customer": "cus_1", "invoice": "in_1", "receipt_email": "bob@example.com",
            "description": "Bob's subscription",
            "billing_details": {
                "name": "Bob", "email": "bob@example.com", "phone": null,
                "address": { "line1": "1 Main St", "country": "FR" }
            },
            "payment_method_details": {
                "type": "card",
                "card": { "brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2029,
                          "fingerprint": "Xt5EWLLDS7FJjR1c", "funding": "credit" }
            }
        });

        assert!(scrub_json(&mut charge));

        let card = &charge["payment_method_details"]["card"];
        assert_eq!(card["last4"], ERASED);
        assert_eq!(
            (&card["exp_month"], &card["exp_year"]),
            (&Value::Null, &Value::Null)
        );
        assert_eq!(card["fingerprint"], ERASED);
        assert_eq!(card["brand"], "visa");
        assert_eq!(charge["billing_details"]["name"], ERASED);
        assert_eq!(charge["billing_details"]["phone"], Value::Null);
        assert_eq!(charge["billing_details"]["address"]["country"], ERASED);
        assert_eq!(charge["receipt_email"], ERASED);
        assert_eq!(charge["description"], ERASED);
        assert_eq!(
            (&charge["amount"], &charge["invoice"]),
            (&json!(1900), &json!("in_1"))
        );
    }

    #[test]
    fn invoices_and_checkout_sessions_lose_the_customer_copies_lists_included() {
        let mut invoice = json!({
            "id": "in_1", "amount_paid": 900, "customer_email": "bob@example.com",
            "customer_name": "Bob", "customer_phone": "+1555",
            "customer_address": { "line1": "1 Main St" },
            "customer_tax_ids": [{ "type": "eu_vat", "value": "FR123" }],
            "lines": { "data": [{ "id": "il_1", "amount": 900, "description": "1 × Pro" }] }
        });
        let mut session = json!({
            "id": "cs_1", "client_reference_id": "u_bob",
            "customer_details": { "email": "bob@example.com", "name": "Bob", "tax_exempt": "none" }
        });

        assert!(scrub_json(&mut invoice));
        assert!(scrub_json(&mut session));

        for key in ["customer_email", "customer_name", "customer_phone"] {
            assert_eq!(invoice[key], ERASED, "{key}");
        }
        assert_eq!(invoice["customer_address"]["line1"], ERASED);
        assert_eq!(invoice["customer_tax_ids"][0]["value"], ERASED);
        assert_eq!(invoice["lines"]["data"][0]["description"], ERASED);
        assert_eq!(invoice["lines"]["data"][0]["amount"], 900);
        assert_eq!(session["customer_details"]["email"], ERASED);
        assert_eq!(session["client_reference_id"], "u_bob");
    }

    #[test]
    fn scrubbing_twice_changes_nothing_the_second_time_and_clean_json_is_left_alone() {
        let raw = r#"{"id":"evt_1","data":{"object":{"email":"bob@example.com","amount":5}}}"#;

        let once = scrub_json_text(raw).unwrap();

        assert!(!once.contains("bob@example.com"));
        assert_eq!(scrub_json_text(&once), None);
        assert_eq!(scrub_json_text(r#"{"id":"sub_1","status":"active"}"#), None);
        assert_eq!(scrub_json_text("not json"), None);
    }

    #[test]
    fn a_card_expiring_email_keeps_its_template_and_loses_the_card() {
        let mut effect = json!({
            "kind": "email", "template": "card_expiring", "dedupe_key": "card_expiring:pm_1:2029-12",
            "params": { "payment_method": "pm_1", "brand": "visa", "last4": "4242", "expires": "12/2029" }
        });

        assert!(scrub_json(&mut effect));

        assert_eq!(effect["params"]["last4"], ERASED);
        assert_eq!(effect["params"]["expires"], ERASED);
        assert_eq!(effect["params"]["payment_method"], "pm_1");
        assert_eq!(effect["template"], "card_expiring");
        assert_eq!(effect["dedupe_key"], "card_expiring:pm_1:[erased]");
    }

    #[test]
    fn a_card_expiry_dedupe_key_loses_its_month_once_and_stays_unique_by_row() {
        let key = "card_expiring:pm_1:2029-12";

        let redacted = redact_dedupe_key(key, 17).unwrap();

        assert_eq!(redacted, "card_expiring:pm_1:[erased]:17");
        assert_eq!(redact_dedupe_key(&redacted, 18), None);
        assert_eq!(
            redact_dedupe_key("renewal_reminder:sub_1:1800000000", 17),
            None
        );
        let mut effect = json!({ "kind": "email", "dedupe_key": key, "params": {} });
        assert!(scrub_json(&mut effect));
        assert_eq!(effect["dedupe_key"], "card_expiring:pm_1:[erased]");
        assert!(!scrub_json(&mut effect));
    }

    #[test]
    fn personal_audit_fields_are_redacted_and_the_rest_of_the_trail_stays() {
        let entry = |field: &str, before: Option<&str>, after: Option<&str>| AuditEntry {
            field: field.into(),
            before: before.map(Into::into),
            after: after.map(Into::into),
            reason: "evt_1".into(),
            event_type: "customer.updated".into(),
            at: 100,
        };

        let email = redact_audit(&entry(
            "stripe_customer.cus_1.email",
            None,
            Some("bob@example.com"),
        ));
        let card = redact_audit(&entry(
            "payment_method.pm_1.card",
            Some("visa 4242 12/2029"),
            None,
        ));
        let status = redact_audit(&entry(
            "subscription.sub_1.status",
            Some("active"),
            Some("canceled"),
        ));
        let account = redact_audit(&entry("account", Some("active"), Some("deleted")));

        assert_eq!((email.before, email.after.as_deref()), (None, Some(ERASED)));
        assert_eq!((card.before.as_deref(), card.after), (Some(ERASED), None));
        assert_eq!(card.at, 100);
        assert_eq!(status.after.as_deref(), Some("canceled"));
        assert_eq!(account.after.as_deref(), Some("deleted"));
        assert!(!is_personal_audit_field("stripe_customer"));
    }
}
