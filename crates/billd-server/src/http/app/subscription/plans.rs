//! The plan picker (app key): `GET /v1/plans`, every plan of the catalog
//! with its features, limits, seats and prices by currency and interval;
//! and `GET /v1/customers/{id}/plans`, the same with how each plan and
//! interval stands for the customer (billd-core's [`eligibility`]) and,
//! for a paid change of a live subscription, Stripe's preview of what it
//! charges.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use billd_core::{
    eligibility, Catalog, Currency, CustomerState, Eligibility, FeatureKind, Interval, Money, Plan,
    Price, SeatRange, Subscribed,
};
use billd_stripe::client::{Params, StripeClient};
use serde::Serialize;

use crate::http::api::{customer_id, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::decide::Target;
use super::live::load;
use super::preview::preview_target;

/// One feature of a plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanFeatureView {
    /// `metered`, `capacity` or `flag`.
    pub kind: String,
    /// The limit (metered, capacity), per seat when `per_seat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The limit is multiplied by the seats.
    pub per_seat: bool,
    /// On or off (flags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// One price of a plan.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanPriceView {
    /// Amount per interval (per seat on a plan with seats), minor units;
    /// null when neither the catalog nor Stripe has it.
    pub unit_amount: Option<i64>,
    /// The amount formatted (`15.00 EUR`).
    pub formatted: Option<String>,
    /// Stripe's `lookup_key`.
    pub lookup_key: Option<String>,
    /// The Stripe price id, when known.
    pub price_id: Option<String>,
}

/// A plan as the picker shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    /// The plan's name.
    pub name: String,
    /// Sold per seat: the range of seats.
    #[schema(value_type = Option<Object>)]
    pub seats: Option<SeatRange>,
    /// Days of trial a checkout starts with.
    pub trial_days: Option<u32>,
    /// With a trial: whether its checkout asks for a card (`false`: no card
    /// until the trial ends, when the subscription is canceled without one).
    pub trial_card: Option<bool>,
    /// Every declared feature.
    pub features: BTreeMap<String, PlanFeatureView>,
    /// Prices by currency, then interval (`month`, `year`); empty for free.
    pub prices: BTreeMap<String, BTreeMap<String, PlanPriceView>>,
}

/// `GET /v1/plans`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlansView {
    /// The catalog's default currency.
    pub default_currency: String,
    /// Every plan, cheapest first (free first).
    pub plans: Vec<PlanView>,
}

/// What the customer has now.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CurrentView {
    /// The plan.
    pub plan: String,
    /// The interval of its price (null when not the catalog's).
    pub interval: Option<String>,
    /// The seats.
    pub seats: u64,
}

/// One plan at one interval for the customer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChoiceView {
    /// The interval (null for the free plan).
    pub interval: Option<String>,
    /// `current`, `upgrade`, `downgrade`, `switch_interval` or `unavailable`.
    #[schema(value_type = String)]
    pub eligibility: Eligibility,
    /// Why it is unavailable: `no_price_in_currency`,
    /// `cancel_to_downgrade`, `seats_out_of_range`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    /// The seats the change (or checkout) buys.
    pub seats: u64,
    /// What choosing it charges now, minor units: Stripe's preview for a
    /// change of a live subscription (0 when prorations wait for the next
    /// invoice), the first invoice's amount for a checkout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_due_now: Option<i64>,
    /// `amount_due_now` formatted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_due_now_formatted: Option<String>,
    /// For a change: the next renewal invoice, prorations included when
    /// they are deferred to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_renewal_amount: Option<i64>,
}

/// A plan with the customer's choices.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerPlanView {
    /// The plan.
    #[serde(flatten)]
    pub plan: PlanView,
    /// One per interval the plan has in the customer's currency (one
    /// without interval for free; one `unavailable` when none).
    pub choices: Vec<ChoiceView>,
}

/// `GET /v1/customers/{id}/plans`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerPlansView {
    /// The currency the customer is billed (or would check out) in.
    pub currency: String,
    /// The subscription now (null on free).
    pub current: Option<CurrentView>,
    /// Every plan, cheapest first.
    pub plans: Vec<CustomerPlanView>,
}

fn formatted(amount: Option<i64>, currency: &Currency) -> Option<String> {
    amount.map(|a| Money::new(a, currency.clone()).to_string())
}

/// A price's amount: the catalog's, else Stripe's (a price given by id).
async fn amount_of(stripe: Option<&StripeClient>, price: &Price) -> Result<Option<i64>, ApiError> {
    if price.unit_amount.is_some() {
        return Ok(price.unit_amount);
    }
    match (stripe, &price.id) {
        (Some(stripe), Some(id)) => Ok(stripe
            .get(&format!("/v1/prices/{id}"), &Params::new())
            .await?["unit_amount"]
            .as_i64()),
        _ => Ok(None),
    }
}

/// The catalog with every amount known (from Stripe for prices given by
/// id), so eligibility compares real amounts.
async fn with_amounts(
    catalog: &Catalog,
    stripe: Option<&StripeClient>,
) -> Result<Catalog, ApiError> {
    let mut filled = catalog.clone();
    let missing: Vec<_> = catalog
        .prices()
        .filter(|(_, _, _, p)| p.unit_amount.is_none())
        .map(|(plan, currency, interval, price)| {
            (plan.clone(), currency.clone(), interval, price.clone())
        })
        .collect();
    for (plan, currency, interval, price) in missing {
        if let Some(amount) = amount_of(stripe, &price).await? {
            filled.set_unit_amount(&plan, &currency, interval, amount);
        }
    }
    Ok(filled)
}

fn plan_view(catalog: &Catalog, plan: &Plan) -> PlanView {
    let features = catalog
        .features()
        .iter()
        .map(|(name, kind)| {
            let view = PlanFeatureView {
                kind: kind.as_str().to_owned(),
                limit: kind.is_counted().then(|| plan.limit(name)),
                per_seat: catalog.is_per_seat(name),
                enabled: (*kind == FeatureKind::Flag).then(|| plan.flag(name)),
            };
            (name.to_string(), view)
        })
        .collect();
    let prices = plan
        .prices
        .iter()
        .map(|(currency, by_interval)| {
            let by_interval = by_interval
                .iter()
                .map(|(interval, price)| {
                    let view = PlanPriceView {
                        unit_amount: price.unit_amount,
                        formatted: formatted(price.unit_amount, currency),
                        lookup_key: price.lookup_key.clone(),
                        price_id: price.id.as_ref().map(ToString::to_string),
                    };
                    (interval.as_str().to_owned(), view)
                })
                .collect();
            (currency.to_string(), by_interval)
        })
        .collect();
    PlanView {
        name: plan.name.to_string(),
        seats: plan.seats,
        trial_days: plan.trial_days,
        trial_card: plan.trial_days.map(|_| plan.trial_card),
        features,
        prices,
    }
}

/// Plans cheapest first: by the lowest amount per year for one seat in
/// `currency` (free, and plans without a price there, first and last).
fn ordered<'c>(catalog: &'c Catalog, currency: &Currency) -> Vec<&'c Plan> {
    let mut plans: Vec<&Plan> = catalog.plans().values().collect();
    plans.sort_by_key(|plan| {
        let cheapest = Interval::ALL
            .iter()
            .filter_map(|i| billd_core::yearly_amount(plan, currency, *i, 1))
            .min();
        let rank = match (plan.is_paid(), cheapest) {
            (false, _) => (0, 0),
            (true, Some(amount)) => (1, amount),
            (true, None) => (2, 0),
        };
        (rank, plan.name.clone())
    });
    plans
}

#[utoipa::path(
    get, path = "/v1/plans", tag = "app", operation_id = "list_plans",
    description = "Every plan of the catalog with its features, limits, seats, trial and prices by currency and interval (minor units and formatted), cheapest first.",
    responses(
        (status = 200, description = "The plans.", body = PlansView),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(crate) async fn list_plans<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
) -> Result<Json<PlansView>, ApiError> {
    let catalog = with_amounts(&state.catalog, state.stripe().ok()).await?;
    let currency = catalog.default_currency().clone();
    Ok(Json(PlansView {
        default_currency: currency.to_string(),
        plans: ordered(&catalog, &currency)
            .into_iter()
            .map(|plan| plan_view(&catalog, plan))
            .collect(),
    }))
}

/// What the customer is subscribed to, when a live subscription is on a
/// catalog plan.
fn subscribed(catalog: &Catalog, state: &CustomerState) -> Option<Subscribed> {
    let sub = state.current_subscription().filter(|s| s.is_live())?;
    let price = sub.snapshot.price.as_ref()?;
    let slot = catalog.slot_for_price(&price.id, price.lookup_key.as_deref())?;
    Some(Subscribed {
        plan: slot.plan.name.clone(),
        interval: Some(slot.interval),
        currency: price
            .currency
            .clone()
            .unwrap_or_else(|| slot.currency.clone()),
        seats: slot.plan.seats_of(sub.snapshot.quantity),
    })
}

#[utoipa::path(
    get, path = "/v1/customers/{id}/plans", tag = "app", operation_id = "customer_plans",
    description = "The plan picker for one customer: every plan and interval with its eligibility (`current`, `upgrade`, `downgrade`, `switch_interval`, `unavailable` with a reason) and, for a paid change, what it charges now (Stripe's preview for a live subscription).",
    params(crate::http::openapi::CustomerPath),
    responses(
        (status = 200, description = "The plans with the customer's choices.", body = CustomerPlansView),
        (status = 404, description = "`customer_not_found`, `customer_deleted`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
pub(crate) async fn customer_plans<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<CustomerPlansView>, ApiError> {
    let id = customer_id(&id)?;
    let record = crate::http::app::account::live_customer(&*state.store, &id).await?;
    let catalog = with_amounts(&state.catalog, state.stripe().ok()).await?;
    let current = subscribed(&catalog, &record.state);
    let currency = match &current {
        Some(c) => c.currency.clone(),
        None => record
            .preferred_currency
            .as_deref()
            .and_then(|c| Currency::parse(c).ok())
            .unwrap_or_else(|| catalog.default_currency().clone()),
    };
    // The live subscription, read once, for the previews of paid changes.
    let ctx = match &current {
        Some(_) => Some(load(&state, &id).await?),
        None => None,
    };
    let mut plans = Vec::new();
    for plan in ordered(&catalog, &currency) {
        let intervals: Vec<Option<Interval>> = if plan.is_paid() {
            let offered: Vec<Option<Interval>> = plan
                .prices
                .get(&currency)
                .into_iter()
                .flat_map(|by_interval| by_interval.keys().map(|i| Some(*i)))
                .collect();
            if offered.is_empty() {
                // Shown, as unavailable in this currency.
                vec![plan
                    .prices
                    .values()
                    .next()
                    .and_then(|p| p.keys().next().copied())]
            } else {
                offered
            }
        } else {
            vec![None]
        };
        let mut choices = Vec::new();
        for interval in intervals {
            let choice = eligibility(&catalog, plan, interval, current.as_ref(), &currency);
            let mut view = ChoiceView {
                interval: interval.map(|i| i.as_str().to_owned()),
                eligibility: choice.eligibility,
                reason: choice.reason.map(|r| r.code()),
                seats: choice.seats,
                amount_due_now: None,
                amount_due_now_formatted: None,
                next_renewal_amount: None,
            };
            let paid_change = matches!(
                choice.eligibility,
                Eligibility::Upgrade | Eligibility::Downgrade | Eligibility::SwitchInterval
            );
            match (&ctx, interval) {
                (Some(ctx), Some(interval)) if paid_change => {
                    let target = Target {
                        plan: plan.clone(),
                        interval,
                        seats: choice.seats,
                    };
                    let preview = preview_target(&state, ctx, target).await?;
                    view.amount_due_now = Some(preview.amount_due_now);
                    view.next_renewal_amount = Some(preview.next_renewal_amount);
                }
                (None, Some(interval)) if paid_change => {
                    // A checkout: the first invoice is the price for the seats.
                    let seats = i64::try_from(choice.seats).unwrap_or(1);
                    view.amount_due_now = plan
                        .price(&currency, interval)
                        .and_then(|p| p.unit_amount)
                        .map(|a| a.saturating_mul(seats));
                }
                _ => {}
            }
            view.amount_due_now_formatted = formatted(view.amount_due_now, &currency);
            choices.push(view);
        }
        plans.push(CustomerPlanView {
            plan: plan_view(&catalog, plan),
            choices,
        });
    }
    Ok(Json(CustomerPlansView {
        currency: currency.to_string(),
        current: current.map(|c| CurrentView {
            plan: c.plan.to_string(),
            interval: c.interval.map(|i| i.as_str().to_owned()),
            seats: c.seats,
        }),
        plans,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_ordered_free_first_then_by_yearly_amount() {
        let catalog = Catalog::seed();
        let eur = Currency::parse("eur").unwrap();
        let names: Vec<&str> = ordered(&catalog, &eur)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["free", "standard", "pro"]);
        let pro = billd_core::PlanName::parse("pro").unwrap();
        let view = plan_view(&catalog, catalog.plan(&pro).unwrap());
        assert_eq!(
            view.prices["eur"]["month"].formatted.as_deref(),
            Some("19.00 EUR")
        );
        assert_eq!(view.features["websites"].limit, Some(10));
    }
}
