//! Account-level settings `billd doctor` inspects: `/v1/account`,
//! `/v1/billing_portal/configurations` and `/v1/tax/settings`.

use crate::error::{ApiError, ApiResult};
use crate::params::{self, str_at};
use crate::state::{previous_attributes, Inner};
use serde_json::{json, Value};

/// `GET /v1/account`: the test account behind every key.
pub fn account(s: &mut Inner) -> ApiResult {
    if s.account_id.is_none() {
        s.account_id = Some(format!("acct_{}", s.ids.tail(16)));
    }
    let id = s.account_id.clone().unwrap_or_default();
    let requirements = json!({
        "alternatives": [], "current_deadline": null, "currently_due": [], "disabled_reason": null,
        "errors": [], "eventually_due": [], "past_due": [], "pending_verification": [],
    });
    Ok(json!({
        "id": id,
        "object": "account",
        "business_profile": {"mcc": null, "minority_owned_business_designation": null, "name": "stripe-sim", "product_description": null, "specified_commercial_transactions_act_url": null, "support_address": null, "support_email": null, "support_phone": null, "support_url": null, "url": null},
        "business_type": null,
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": true,
        "controller": {"type": "account"},
        "country": "US",
        "created": 0,
        "default_currency": "usd",
        "details_submitted": true,
        "email": "stripe-sim@example.com",
        "external_accounts": {"object": "list", "data": [], "has_more": false, "url": format!("/v1/accounts/{id}/external_accounts")},
        "future_requirements": requirements,
        "metadata": {},
        "payouts_enabled": true,
        "requirements": requirements,
        "settings": {
            "branding": {"icon": null, "logo": null, "primary_color": null, "secondary_color": null},
            "card_payments": {"statement_descriptor_prefix": null, "statement_descriptor_prefix_kana": null, "statement_descriptor_prefix_kanji": null},
            "dashboard": {"display_name": "stripe-sim", "timezone": "Etc/UTC"},
            "payments": {"statement_descriptor": null, "statement_descriptor_kana": null, "statement_descriptor_kanji": null, "statement_descriptor_prefix_kana": null, "statement_descriptor_prefix_kanji": null},
        },
        "tos_acceptance": {"date": null, "ip": null, "user_agent": null},
        "type": "standard",
    }))
}

fn portal_features(p: &Value) -> Value {
    let enabled = |k: &str| {
        params::bool_at(p, &format!("features.{k}.enabled"))
            .ok()
            .flatten()
            .unwrap_or(false)
    };
    json!({
        "customer_update": {"allowed_updates": [], "enabled": enabled("customer_update")},
        "invoice_history": {"enabled": enabled("invoice_history")},
        "payment_method_update": {"enabled": enabled("payment_method_update"), "payment_method_configuration": null},
        "subscription_cancel": {
            "cancellation_reason": {"enabled": false, "feedback_options": null, "options": []},
            "enabled": enabled("subscription_cancel"),
            "mode": str_at(p, "features.subscription_cancel.mode").unwrap_or("at_period_end"),
            "proration_behavior": "none",
        },
        "subscription_update": {
            "billing_cycle_anchor": null,
            "default_allowed_updates": [],
            "enabled": enabled("subscription_update"),
            "proration_behavior": str_at(p, "features.subscription_update.proration_behavior").unwrap_or("none"),
            "schedule_at_period_end": {"conditions": []},
            "trial_update_behavior": "end_trial",
        },
    })
}

/// `POST /v1/billing_portal/configurations`; the first one is the default.
pub fn create_portal_configuration(s: &mut Inner, p: &Value) -> ApiResult {
    let id = s.id("bpc");
    let is_default = s
        .by_kind
        .get("billing_portal.configuration")
        .is_none_or(Vec::is_empty);
    let now = s.now();
    let cfg = json!({
        "id": id,
        "object": "billing_portal.configuration",
        "active": true,
        "application": null,
        "business_profile": {
            "headline": str_at(p, "business_profile.headline"),
            "privacy_policy_url": str_at(p, "business_profile.privacy_policy_url"),
            "terms_of_service_url": str_at(p, "business_profile.terms_of_service_url"),
        },
        "created": now,
        "default_return_url": str_at(p, "default_return_url"),
        "features": portal_features(p),
        "is_default": is_default,
        "livemode": false,
        "login_page": {"enabled": false, "url": null},
        "metadata": params::metadata(p, "metadata"),
        "name": str_at(p, "name"),
        "updated": now,
    });
    let cfg = s.insert(cfg);
    s.emit("billing_portal.configuration.created", &cfg, None, now);
    Ok(cfg)
}

/// `POST /v1/billing_portal/configurations/{id}` (`active`, `default_return_url`, `metadata`).
pub fn update_portal_configuration(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("billing_portal.configuration", id, "id")?;
    let mut after = before.clone();
    if let Some(a) = params::bool_at(p, "active")? {
        if !a && before["is_default"] == true {
            return Err(ApiError::invalid(
                "active",
                "The default configuration cannot be deactivated.",
            ));
        }
        after["active"] = json!(a);
    }
    if let Some(u) = str_at(p, "default_return_url") {
        after["default_return_url"] = json!(u);
    }
    params::apply_metadata(&mut after, p, "metadata");
    if after != before {
        after["updated"] = json!(s.now());
        s.put(after.clone());
        s.emit(
            "billing_portal.configuration.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            s.now(),
        );
    }
    Ok(after)
}

/// `GET /v1/billing_portal/configurations` (`active`, `is_default`).
pub fn list_portal_configurations(s: &Inner, p: &Value) -> ApiResult {
    let active = params::bool_at(p, "active")?;
    let is_default = params::bool_at(p, "is_default")?;
    s.list(
        "billing_portal.configuration",
        "/v1/billing_portal/configurations",
        p,
        |o| {
            active.is_none_or(|a| o["active"] == a)
                && is_default.is_none_or(|d| o["is_default"] == d)
        },
    )
}

/// The configuration a portal session without `configuration` uses. Like an
/// account whose portal settings were saved once, the emulator has a default
/// unless `portal_configured` is off.
pub fn default_portal_configuration(s: &mut Inner) -> ApiResult<String> {
    let existing = s
        .by_kind
        .get("billing_portal.configuration")
        .and_then(|ids| {
            ids.iter()
                .find(|id| s.objects.get(*id).is_some_and(|c| c["is_default"] == true))
                .cloned()
        });
    match existing {
        Some(id) => Ok(id),
        None if s.cfg.portal_configured => {
            let cfg = create_portal_configuration(
                s,
                &json!({"features": {"invoice_history": {"enabled": "true"}, "payment_method_update": {"enabled": "true"}, "subscription_cancel": {"enabled": "true"}}}),
            )?;
            Ok(cfg["id"].as_str().unwrap_or_default().to_string())
        }
        None => Err(ApiError::state(
            "billing_portal_configuration_missing",
            "You can't create a portal session in test mode until you save your customer portal settings in test mode at https://dashboard.stripe.com/test/settings/billing/portal.",
        )),
    }
}

fn tax_settings_default() -> Value {
    json!({
        "object": "tax.settings",
        "defaults": {"provider": "stripe", "tax_behavior": null, "tax_code": null},
        "head_office": null,
        "livemode": false,
        "status": "pending",
        "status_details": {"pending": {"missing_fields": ["head_office"]}},
    })
}

/// `GET /v1/tax/settings`: `pending` until a head office is set.
pub fn tax_settings(s: &Inner) -> ApiResult {
    Ok(s.tax_settings.clone().unwrap_or_else(tax_settings_default))
}

/// `POST /v1/tax/settings` (`head_office[address][…]`, `defaults[tax_behavior|tax_code]`).
pub fn update_tax_settings(s: &mut Inner, p: &Value) -> ApiResult {
    let before = tax_settings(s)?;
    let mut after = before.clone();
    if let Some(addr) = params::at(p, "head_office.address") {
        let field = |k: &str| addr.get(k).and_then(Value::as_str).map(str::to_string);
        after["head_office"] = json!({"address": {
            "city": field("city"), "country": field("country"), "line1": field("line1"),
            "line2": field("line2"), "postal_code": field("postal_code"), "state": field("state"),
        }});
    }
    for k in ["tax_behavior", "tax_code"] {
        if let Some(v) = str_at(p, &format!("defaults.{k}")) {
            after["defaults"][k] = json!(v);
        }
    }
    if after["head_office"]["address"]["country"].is_string() {
        after["status"] = json!("active");
        after["status_details"] = json!({"active": {}});
    }
    s.tax_settings = Some(after.clone());
    if after != before {
        s.emit(
            "tax.settings.updated",
            &after,
            Some(previous_attributes(&before, &after)),
            s.now(),
        );
    }
    Ok(after)
}

/// Whether Stripe Tax can compute taxes (Checkout's `automatic_tax` needs it).
pub fn tax_active(s: &Inner) -> bool {
    s.tax_settings
        .as_ref()
        .is_some_and(|t| t["status"] == "active")
}
