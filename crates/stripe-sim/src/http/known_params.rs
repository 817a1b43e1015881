//! The top-level POST parameters Stripe accepts, per endpoint.

use super::*;

const CUSTOMER: &[&str] = &[
    "address",
    "balance",
    "cash_balance",
    "description",
    "email",
    "invoice_prefix",
    "invoice_settings",
    "metadata",
    "name",
    "next_invoice_sequence",
    "payment_method",
    "phone",
    "preferred_locales",
    "shipping",
    "source",
    "tax",
    "tax_exempt",
    "tax_id_data",
    "test_clock",
    "validate",
    "default_source",
];
const PRODUCT: &[&str] = &[
    "id",
    "name",
    "active",
    "description",
    "metadata",
    "default_price",
    "default_price_data",
    "images",
    "marketing_features",
    "package_dimensions",
    "shippable",
    "statement_descriptor",
    "tax_code",
    "unit_label",
    "url",
    "type",
];
const PRICE: &[&str] = &[
    "currency",
    "unit_amount",
    "product",
    "product_data",
    "recurring",
    "lookup_key",
    "transfer_lookup_key",
    "currency_options",
    "nickname",
    "metadata",
    "active",
    "billing_scheme",
    "custom_unit_amount",
    "tax_behavior",
    "tiers",
    "tiers_mode",
    "transform_quantity",
    "unit_amount_decimal",
];
const CHECKOUT: &[&str] = &[
    "adaptive_pricing",
    "after_expiration",
    "allow_promotion_codes",
    "automatic_tax",
    "billing_address_collection",
    "branding_settings",
    "cancel_url",
    "client_reference_id",
    "consent_collection",
    "currency",
    "custom_fields",
    "custom_text",
    "customer",
    "customer_creation",
    "customer_email",
    "customer_update",
    "discounts",
    "expires_at",
    "invoice_creation",
    "line_items",
    "locale",
    "metadata",
    "mode",
    "name_collection",
    "optional_items",
    "origin_context",
    "payment_intent_data",
    "payment_method_collection",
    "payment_method_configuration",
    "payment_method_data",
    "payment_method_options",
    "payment_method_types",
    "permissions",
    "phone_number_collection",
    "redirect_on_completion",
    "return_url",
    "saved_payment_method_options",
    "setup_intent_data",
    "shipping_address_collection",
    "shipping_options",
    "submit_type",
    "subscription_data",
    "success_url",
    "tax_id_collection",
    "ui_mode",
    "wallet_options",
];
const SUBSCRIPTION: &[&str] = &[
    "customer",
    "items",
    "add_invoice_items",
    "application_fee_percent",
    "automatic_tax",
    "backdate_start_date",
    "billing_cycle_anchor",
    "billing_cycle_anchor_config",
    "billing_mode",
    "billing_thresholds",
    "cancel_at",
    "cancel_at_period_end",
    "cancellation_details",
    "collection_method",
    "currency",
    "days_until_due",
    "default_payment_method",
    "default_source",
    "default_tax_rates",
    "description",
    "discounts",
    "invoice_settings",
    "metadata",
    "off_session",
    "on_behalf_of",
    "pause_collection",
    "payment_behavior",
    "payment_settings",
    "pending_invoice_item_interval",
    "proration_behavior",
    "proration_date",
    "transfer_data",
    "trial_end",
    "trial_from_plan",
    "trial_period_days",
    "trial_settings",
];
const PREVIEW: &[&str] = &[
    "customer",
    "subscription",
    "subscription_details",
    "automatic_tax",
    "currency",
    "customer_details",
    "discounts",
    "invoice_items",
    "issuer",
    "on_behalf_of",
    "preview_mode",
    "schedule",
    "schedule_details",
];
const REFUND: &[&str] = &[
    "amount",
    "charge",
    "payment_intent",
    "reason",
    "metadata",
    "refund_application_fee",
    "reverse_transfer",
    "instructions_email",
    "origin",
    "currency",
    "customer",
];
const COUPON: &[&str] = &[
    "id",
    "amount_off",
    "currency",
    "currency_options",
    "duration",
    "duration_in_months",
    "max_redemptions",
    "metadata",
    "name",
    "percent_off",
    "redeem_by",
    "applies_to",
];
const PROMOTION_CODE: &[&str] = &[
    "promotion",
    "coupon",
    "code",
    "active",
    "customer",
    "expires_at",
    "max_redemptions",
    "metadata",
    "restrictions",
];
const WEBHOOK_ENDPOINT: &[&str] = &[
    "url",
    "enabled_events",
    "api_version",
    "connect",
    "description",
    "metadata",
    "disabled",
];
const PORTAL: &[&str] = &[
    "customer",
    "configuration",
    "flow_data",
    "locale",
    "on_behalf_of",
    "return_url",
];
const INVOICE_PAY: &[&str] = &[
    "payment_method",
    "off_session",
    "forgive",
    "mandate",
    "paid_out_of_band",
    "source",
];

/// The top-level parameters Stripe accepts on the POST endpoints billd uses;
/// anything else is `parameter_unknown`, as on Stripe, so that a request that
/// would fail there fails here too.
pub(crate) fn known_params(rest: &[&str]) -> Option<&'static [&'static str]> {
    Some(match rest {
        ["customers"] | ["customers", _] => CUSTOMER,
        ["products"] | ["products", _] => PRODUCT,
        ["prices"] | ["prices", _] => PRICE,
        ["checkout", "sessions"] => CHECKOUT,
        ["subscriptions"] | ["subscriptions", _] => SUBSCRIPTION,
        ["invoices", "create_preview"] => PREVIEW,
        ["invoices", _, "pay"] => INVOICE_PAY,
        ["refunds"] => REFUND,
        ["coupons"] => COUPON,
        ["promotion_codes"] | ["promotion_codes", _] => PROMOTION_CODE,
        ["webhook_endpoints"] | ["webhook_endpoints", _] => WEBHOOK_ENDPOINT,
        ["billing_portal", "sessions"] => PORTAL,
        ["test_helpers", "test_clocks"] => &["frozen_time", "name"],
        ["test_helpers", "test_clocks", _, "advance"] => &["frozen_time"],
        ["payment_methods", _, "attach"] => &["customer"],
        ["payment_methods"] => &[
            "type",
            "card",
            "billing_details",
            "metadata",
            "allow_redisplay",
            "customer",
            "payment_method",
        ],
        ["payment_methods", _] => &["card", "billing_details", "metadata", "allow_redisplay"],
        _ => return None,
    })
}

pub(crate) fn check_params(method: &str, rest: &[&str], p: &Value) -> ApiResult<()> {
    if method != "POST" {
        return Ok(());
    }
    let (Some(known), Value::Object(m)) = (known_params(rest), p) else {
        return Ok(());
    };
    match m
        .keys()
        .find(|k| k.as_str() != "expand" && !known.contains(&k.as_str()))
    {
        Some(k) => {
            let mut e = ApiError::invalid(k, format!("Received unknown parameter: {k}"));
            e.set_code("parameter_unknown");
            Err(e)
        }
        None => Ok(()),
    }
}
