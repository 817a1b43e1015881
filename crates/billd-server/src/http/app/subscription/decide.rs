//! The pure decisions of a plan change: which plan a body or price names,
//! upgrade or downgrade, the refusals, Stripe's idempotency key, and how
//! Stripe's invoices read as preview lines and summaries. No I/O.

use axum::extract::rejection::JsonRejection;
use axum::Json;
use billd_core::{Catalog, Interval, Plan, PlanName, PriceId};
use billd_stripe::client::Params;
use serde_json::Value;

use crate::http::api::{bounded, bounded_opt, bounds, ApiState};
use crate::http::app::checkout::{parse_interval, seats_error};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::live::{LiveSubscription, MeteredItems};
use super::types::{DowngradeTiming, InvoiceSummary, PlanChangeBody, PreviewLine};

pub(super) fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code,
        message: message.into(),
    }
}

/// What a preview or change asks for: the plan, the interval and the seats
/// (checked against the plan; the current count when none is given).
pub(super) struct Target {
    pub(super) plan: Plan,
    pub(super) interval: Interval,
    pub(super) seats: u64,
}

impl Target {
    /// The target of a body against the live subscription.
    pub(super) fn of(
        body: &PlanChangeBody,
        plan: Plan,
        live: &LiveSubscription,
    ) -> Result<Self, ApiError> {
        let interval = parse_interval(body.interval.as_deref())?;
        let seats = billd_core::seats_after_change(&plan, live.quantity, body.seats)
            .map_err(seats_error)?;
        Ok(Target {
            plan,
            interval,
            seats,
        })
    }
}

pub(super) fn parse_body(
    body: Result<Json<PlanChangeBody>, JsonRejection>,
    catalog: &Catalog,
) -> Result<(PlanChangeBody, Plan), ApiError> {
    let Json(body) = body?;
    bounded("plan", &body.plan, bounds::CODE)?;
    bounded_opt("interval", body.interval.as_deref(), bounds::CODE)?;
    parse_interval(body.interval.as_deref())?;
    let plan = PlanName::parse(&body.plan)
        .ok()
        .and_then(|name| catalog.plan(&name))
        .filter(|plan| !plan.prices.is_empty())
        .cloned()
        .ok_or_else(|| ApiError::InvalidRequest {
            code: "unknown_plan",
            message: format!("{:?} is not a paid plan of the catalog", body.plan),
        })?;
    Ok((body, plan))
}

/// Where the Stripe price sits in the catalog (plan, currency, interval).
pub(crate) fn slot_of_price<'c>(
    catalog: &'c Catalog,
    price: &Value,
) -> Option<billd_core::PriceSlot<'c>> {
    let id = PriceId::parse(price["id"].as_str()?).ok()?;
    catalog.slot_for_price(&id, price["lookup_key"].as_str())
}

/// Whether the live subscription is on `target` already: the same plan at
/// the same interval with the same seats.
pub(super) fn is_current(catalog: &Catalog, live: &LiveSubscription, target: &Target) -> bool {
    slot_of_price(catalog, &live.price).is_some_and(|slot| {
        slot.plan.name == target.plan.name
            && slot.interval == target.interval
            && live.quantity == target.seats
    })
}

/// A price's amount per year, to tell an upgrade from a downgrade across
/// intervals.
pub(super) fn yearly_amount(price: &Value) -> i64 {
    let amount = price["unit_amount"].as_i64().unwrap_or_default();
    let count = price
        .pointer("/recurring/interval_count")
        .and_then(Value::as_i64)
        .unwrap_or(1)
        .max(1);
    let per_year = match price.pointer("/recurring/interval").and_then(Value::as_str) {
        Some("day") => 365,
        Some("week") => 52,
        Some("year") => 1,
        _ => 12,
    };
    amount * per_year / count
}

/// Whether this change waits for the period end: a downgrade (cheaper per
/// year for the seats) under `BILLD_DOWNGRADE_TIMING=period_end`.
pub(super) fn at_period_end<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    live: &LiveSubscription,
    target: &Value,
    seats: u64,
) -> bool {
    let times = |amount: i64, seats: u64| amount.saturating_mul(i64::try_from(seats).unwrap_or(1));
    state.config.downgrade_timing == DowngradeTiming::PeriodEnd
        && times(yearly_amount(target), seats) < times(yearly_amount(&live.price), live.quantity)
}

/// Refuses a change to the plan, interval and seats the subscription is on
/// already.
pub(super) fn refuse_same_plan(
    catalog: &Catalog,
    live: &LiveSubscription,
    target: &Target,
) -> Result<(), ApiError> {
    if is_current(catalog, live, target) {
        return Err(conflict(
            "same_plan",
            format!(
                "the subscription is on plan {} ({}, {} seats) already",
                target.plan.name, target.interval, target.seats
            ),
        ));
    }
    Ok(())
}

/// The invoice preview of a change: the plan's item and the metered items
/// as the change would leave them (Stripe refuses a preview whose items
/// bill at different intervals, as it refuses the change).
pub(super) fn preview_params(
    live: &LiveSubscription,
    price: &str,
    seats: u64,
    metered: &MeteredItems,
    behavior: &str,
    proration_date: i64,
) -> Params {
    let mut params = Params::new()
        .set("subscription", &live.id)
        .set("subscription_details[items][0][id]", &live.item_id)
        .set("subscription_details[items][0][price]", price)
        .set("subscription_details[items][0][quantity]", seats)
        .set("subscription_details[proration_behavior]", behavior)
        .set("subscription_details[proration_date]", proration_date);
    let mut index = 1;
    for item in &metered.remove {
        params = params
            .set(format!("subscription_details[items][{index}][id]"), item)
            .set(
                format!("subscription_details[items][{index}][deleted]"),
                "true",
            );
        index += 1;
    }
    for overage in &metered.add {
        params = params.set(
            format!("subscription_details[items][{index}][price]"),
            overage,
        );
        index += 1;
    }
    params
}

pub(super) fn lines_of(invoice: &Value) -> Vec<PreviewLine> {
    invoice
        .pointer("/lines/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|line| PreviewLine {
            description: line["description"].as_str().unwrap_or_default().to_owned(),
            amount: line["amount"].as_i64().unwrap_or_default(),
            proration: ["subscription_item_details", "invoice_item_details"]
                .iter()
                .any(|kind| line["parent"][kind]["proration"].as_bool() == Some(true)),
        })
        .collect()
}

pub(super) fn amount_due(invoice: &Value) -> i64 {
    invoice["amount_due"].as_i64().unwrap_or_default()
}

/// A Stripe idempotency key naming one intended change of one subscription
/// from the state billd saw: a double submit reuses it (Stripe applies the
/// change once), a later change (even back to an earlier price) gets a new
/// one because the watermark moved.
pub(super) fn idempotency_key(
    action: &str,
    live: &LiveSubscription,
    target: &str,
    watermark: &(i64, String),
) -> String {
    let raw = format!(
        "billd:{action}:{}:{}:{target}:{}:{}",
        live.id,
        live.price_id(),
        watermark.0,
        watermark.1
    );
    if raw.len() <= 255 {
        return raw;
    }
    // Stripe keys are at most 255 characters; FNV-1a keeps it deterministic.
    let hash = raw.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("billd:{action}:{}:{hash:016x}", live.id)
}

pub(super) fn invoice_summary(invoice: &Value) -> InvoiceSummary {
    InvoiceSummary {
        id: invoice["id"].as_str().unwrap_or_default().to_owned(),
        amount_due: amount_due(invoice),
        amount_paid: invoice["amount_paid"].as_i64().unwrap_or_default(),
        status: invoice["status"].as_str().map(str::to_owned),
        hosted_invoice_url: invoice["hosted_invoice_url"].as_str().map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_idempotency_key_repeats_for_a_double_submit_and_changes_with_the_watermark() {
        let live = super::super::live::fixture("price_a");
        let seen = (500, "evt_1".to_owned());

        let once = idempotency_key("plan_change", &live, "price_b", &seen);
        let twice = idempotency_key("plan_change", &live, "price_b", &seen);
        let later = idempotency_key("plan_change", &live, "price_b", &(600, "evt_2".into()));
        let long = idempotency_key("plan_change", &live, &"p".repeat(300), &seen);

        assert_eq!(once, twice);
        assert_ne!(once, later);
        assert!(long.len() <= 255 && long.starts_with("billd:plan_change:sub_1:"));
    }

    #[test]
    fn a_cheaper_price_per_year_is_a_downgrade_whatever_the_interval() {
        let monthly = json!({ "unit_amount": 900, "recurring": { "interval": "month", "interval_count": 1 } });
        let yearly = json!({ "unit_amount": 9000, "recurring": { "interval": "year", "interval_count": 1 } });
        let quarterly = json!({ "unit_amount": 3000, "recurring": { "interval": "month", "interval_count": 3 } });

        assert!(yearly_amount(&yearly) < yearly_amount(&monthly));
        assert!(yearly_amount(&quarterly) > yearly_amount(&monthly));
    }
}
