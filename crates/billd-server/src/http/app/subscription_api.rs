//! Plan changes and cancellation (app key): `POST /v1/customers/{id}/
//! subscription/preview`, `…/change`, `…/cancel` and `…/resume`.
//!
//! Stripe decides the money: the preview is Stripe's invoice preview, the
//! change is a subscription update with the configured proration
//! behaviour. With `always_invoice` the update uses
//! `payment_behavior=pending_if_incomplete`, so a proration invoice that
//! needs 3-D Secure leaves the old price in place (Stripe's pending update)
//! until it is paid; billd answers `action_required` with the hosted invoice
//! URL and keeps granting the old plan. With `create_prorations` nothing is
//! charged at the change (the prorations go on the next invoice), so the new
//! price applies at once.
//!
//! After a successful call the subscription object Stripe returned is fed
//! into the inbox as a synthetic authoritative event (id prefix
//! [`SYNC_EVENT_PREFIX`]) and applied before answering, so the entitlements
//! show the change at once. It is stamped at Stripe's current second (the
//! subscription's test clock in test mode, else billd's clock), never before
//! the subscription's watermark: it beats the webhooks of earlier changes
//! still on their way and the same-second webhook of this change (which says
//! the same), while any webhook Stripe creates in a later second still wins.
//! Two feed-backs in one second, or a feed-back and a re-fetch, are ordered
//! by when billd observed them (wall-clock nanoseconds, also in the
//! feed-back's id): a re-fetch read before this change does not undo it,
//! whatever its round. If billd's clock ran ahead of Stripe's, a Stripe-side change
//! within that skew would be masked until its next event or reconciliation.

use std::time::{Duration, Instant};

use crate::http::idempotency::{Idempotency, KeyedRun};
use crate::http::openapi::{route, route_with, Verb};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_core::{
    entitlements, usage_keys, Catalog, CustomerId, Entitlements, FeatureName, Plan, PlanName,
    PriceId,
};
use billd_store::{CustomerRecord, EventStatus, NewEvent};
use billd_stripe::client::{Params, StripeClient};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::http::api::{bounded, bounds, customer_id, store_error, ApiState};
use crate::http::error::ApiError;
use crate::pipeline::observation_ns;
use crate::pipeline::{synthetic_subscription_event, BillingBackend, SYNC_EVENT_PREFIX};

/// How long a handler waits for the inbox worker to apply the subscription
/// it fed back before answering anyway (the event is applied later).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// How Stripe prorates a plan change (`BILLD_PRORATION_BEHAVIOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProrationBehavior {
    /// Proration items go on the next invoice; nothing is charged now.
    #[default]
    CreateProrations,
    /// The proration is invoiced and charged at once; the new price is
    /// granted only when that invoice is paid.
    AlwaysInvoice,
}

impl ProrationBehavior {
    /// Stripe's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ProrationBehavior::CreateProrations => "create_prorations",
            ProrationBehavior::AlwaysInvoice => "always_invoice",
        }
    }
}

impl std::str::FromStr for ProrationBehavior {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "create_prorations" => Ok(ProrationBehavior::CreateProrations),
            "always_invoice" => Ok(ProrationBehavior::AlwaysInvoice),
            other => Err(format!(
                "must be create_prorations or always_invoice, got {other:?}"
            )),
        }
    }
}

/// When a downgrade takes effect at Stripe (`BILLD_DOWNGRADE_TIMING`).
/// Upgrades are always immediate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DowngradeTiming {
    /// The cheaper price applies now, with proration.
    #[default]
    Immediate,
    /// The customer keeps the current plan until the period ends; a
    /// subscription schedule's second phase starts the cheaper price with
    /// the next period, without proration.
    PeriodEnd,
}

impl DowngradeTiming {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            DowngradeTiming::Immediate => "immediate",
            DowngradeTiming::PeriodEnd => "period_end",
        }
    }
}

impl std::str::FromStr for DowngradeTiming {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "immediate" => Ok(DowngradeTiming::Immediate),
            "period_end" => Ok(DowngradeTiming::PeriodEnd),
            other => Err(format!("must be immediate or period_end, got {other:?}")),
        }
    }
}

/// The plan-change and cancellation routes, to merge into the app-key
/// router. The three that change the subscription honour `Idempotency-Key`
/// (`idem`); the preview changes nothing.
pub(crate) fn router<S: BillingBackend + ?Sized>(idem: &Idempotency<S>) -> Router<ApiState<S>> {
    let router = route(
        Router::new(),
        Verb::Post,
        "/v1/customers/{id}/subscription/preview",
        preview::<S>,
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/change",
        change::<S>,
        idem.layer(),
    );
    let router = route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/cancel",
        cancel::<S>,
        idem.layer(),
    );
    route_with(
        router,
        Verb::Post,
        "/v1/customers/{id}/subscription/resume",
        resume::<S>,
        idem.layer(),
    )
}

/// `…/subscription/preview` and `…/subscription/change` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeBody {
    /// The catalog plan to move to.
    #[schema(max_length = 64)]
    pub plan: String,
    /// For `change`: the `proration_date` a preview answered, so the change
    /// is prorated at exactly the previewed instant (default: now).
    #[serde(default)]
    pub proration_date: Option<i64>,
}

/// One line of a previewed invoice.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct PreviewLine {
    /// Stripe's line description.
    pub description: String,
    /// Amount in minor units (negative: a credit).
    pub amount: i64,
    /// A proration line (unused time credited or remaining time charged).
    pub proration: bool,
}

/// A feature whose current usage is above the new plan's limit: nothing is
/// deleted, new consumption is refused until usage is below the limit.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QuotaOverflow {
    /// The feature.
    #[schema(value_type = String)]
    pub feature: FeatureName,
    /// Current usage.
    pub used: u64,
    /// The new plan's limit.
    pub new_limit: u64,
}

/// The answer to a preview.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PreviewView {
    /// The plan previewed.
    #[schema(value_type = String)]
    pub plan: PlanName,
    /// The subscription's currency.
    pub currency: String,
    /// Charged when the change is made (minor units).
    pub amount_due_now: i64,
    /// The next renewal invoice (minor units), prorations included when
    /// they are deferred to it.
    pub next_renewal_amount: i64,
    /// When the next renewal happens (the current period's end).
    pub renews_at: i64,
    /// `immediate` or `period_end`: when the new plan would apply.
    #[schema(value_type = String)]
    pub effective: &'static str,
    /// The instant the preview prorates at; pass it to `change` to be
    /// charged exactly this.
    pub proration_date: i64,
    /// The previewed invoice lines (now and at renewal).
    pub lines: Vec<PreviewLine>,
    /// Features over the new plan's limits.
    pub quota_overflow: Vec<QuotaOverflow>,
}

/// A proration invoice the change created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InvoiceSummary {
    /// `in_…`.
    pub id: String,
    /// Amount due (minor units).
    pub amount_due: i64,
    /// Amount paid (minor units).
    pub amount_paid: i64,
    /// Stripe's invoice status.
    pub status: Option<String>,
    /// Stripe's hosted invoice page.
    pub hosted_invoice_url: Option<String>,
}

/// What a change, cancel or resume did: the `status` of its answer, in
/// every one of the three. Stripe's own status of the subscription is
/// `subscription_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionOutcome {
    /// Change: the new plan applies now.
    Changed,
    /// Change: a downgrade applies at the period end (`effective_at`).
    Scheduled,
    /// Change: the proration invoice needs the customer (3-D Secure) at
    /// `hosted_invoice_url`; the old plan applies until it is paid.
    ActionRequired,
    /// Change: the proration invoice was declined; the plan is unchanged.
    PaymentFailed,
    /// Cancel: the subscription ends at the period end
    /// (`cancel_at_period_end` true); the plan applies until then.
    CancelScheduled,
    /// Resume: the subscription renews again (`cancel_at_period_end`
    /// false).
    Resumed,
}

/// The answer to a change, cancel or resume.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SubscriptionView {
    /// What the call did (the same vocabulary for change, cancel and
    /// resume).
    pub status: SubscriptionOutcome,
    /// The plan whose limits apply now.
    #[schema(value_type = String)]
    pub plan: PlanName,
    /// The plan asked for (change only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub requested_plan: Option<PlanName>,
    /// The Stripe subscription status.
    pub subscription_status: String,
    /// The subscription ends at the period end.
    pub cancel_at_period_end: bool,
    /// The current period's end.
    pub current_period_end: Option<i64>,
    /// Where the customer pays or confirms the proration invoice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hosted_invoice_url: Option<String>,
    /// The invoice the change created, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invoice: Option<InvoiceSummary>,
    /// When a scheduled downgrade takes effect (the period end).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effective_at: Option<i64>,
    /// The customer's entitlements after the call.
    #[schema(value_type = Object)]
    pub entitlements: Entitlements,
}

/// What billd needs of the Stripe subscription, read fresh before a change.
#[derive(Debug)]
struct LiveSubscription {
    id: String,
    object: Value,
    status: String,
    currency: String,
    item_id: String,
    price: Value,
    current_period_start: i64,
    current_period_end: i64,
    pending_price: Option<String>,
    latest_invoice: Option<String>,
}

impl LiveSubscription {
    fn parse(object: Value) -> Result<Self, ApiError> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let item = object.pointer("/items/data/0").cloned().unwrap_or_default();
        let missing = |what: &str| {
            ApiError::StripeRejected(format!("Stripe subscription without {what}: {object}"))
        };
        Ok(LiveSubscription {
            id: text(&object["id"]).ok_or_else(|| missing("id"))?,
            status: text(&object["status"]).unwrap_or_default(),
            currency: text(&object["currency"]).unwrap_or_default(),
            item_id: text(&item["id"]).ok_or_else(|| missing("items"))?,
            price: item["price"].clone(),
            current_period_start: item["current_period_start"].as_i64().unwrap_or_default(),
            current_period_end: item["current_period_end"].as_i64().unwrap_or_default(),
            pending_price: object
                .pointer("/pending_update/subscription_items/0/price")
                .and_then(|p| p.as_str().or_else(|| p["id"].as_str()))
                .map(str::to_owned),
            latest_invoice: object["latest_invoice"]
                .as_str()
                .or_else(|| object["latest_invoice"]["id"].as_str())
                .map(str::to_owned),
            object,
        })
    }

    fn price_id(&self) -> String {
        self.price["id"].as_str().unwrap_or_default().to_owned()
    }

    fn is_ended(&self) -> bool {
        matches!(self.status.as_str(), "canceled" | "incomplete_expired")
    }
}

/// The customer, their current subscription in billd's state, and that
/// subscription as Stripe has it now.
struct Context {
    record: CustomerRecord,
    watermark: (i64, String),
    live: LiveSubscription,
    /// When `live` was asked for (see [`crate::pipeline::observation_ns`]).
    live_observed_ns: u64,
}

fn conflict(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::Conflict {
        code,
        message: message.into(),
    }
}

/// Loads the customer and their subscription (billd's view, then Stripe's).
/// `allow_ended`: a subscription that has ended is returned (resume answers
/// `subscription_ended`) instead of `no_subscription`.
async fn load<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
) -> Result<Context, ApiError> {
    let record = crate::http::app::account::live_customer(&*state.store, id).await?;
    let Some(current) = record.state.current_subscription() else {
        return Err(conflict(
            "no_subscription",
            format!("customer {id} has no subscription; start one with checkout"),
        ));
    };
    if !current.is_live() {
        return Err(conflict(
            "subscription_ended",
            format!(
                "subscription {} has ended; start a new one with checkout",
                current.snapshot.id
            ),
        ));
    }
    let sub = current.snapshot.id.to_string();
    let watermark = (current.stamp.created, current.stamp.event_id.to_string());
    // A read is as new as its request: Stripe may answer it with the state
    // from before a change whose own answer arrives first.
    let live_observed_ns = observation_ns();
    let object = state.stripe()?.retrieve_subscription(&sub).await?;
    let live = LiveSubscription::parse(object)?;
    if live.is_ended() {
        return Err(conflict(
            "subscription_ended",
            format!("subscription {sub} has ended; start a new one with checkout"),
        ));
    }
    Ok(Context {
        record,
        watermark,
        live,
        live_observed_ns,
    })
}

fn parse_body(
    body: Result<Json<PlanChangeBody>, JsonRejection>,
    catalog: &Catalog,
) -> Result<(PlanChangeBody, Plan), ApiError> {
    let Json(body) = body?;
    bounded("plan", &body.plan, bounds::CODE)?;
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

/// The plan the Stripe price belongs to.
fn plan_of_price<'c>(catalog: &'c Catalog, price: &Value) -> Option<&'c Plan> {
    let id = PriceId::parse(price["id"].as_str()?).ok()?;
    catalog.plan_for_price(&id, price["lookup_key"].as_str())
}

/// The Stripe price object of `plan` in `currency` (by id, or found by its
/// lookup key).
async fn target_price(
    stripe: &StripeClient,
    plan: &Plan,
    currency: &str,
) -> Result<Value, ApiError> {
    let price = plan
        .prices
        .iter()
        .find(|(c, _)| c.to_string() == currency)
        .map(|(_, p)| p)
        .ok_or_else(|| ApiError::InvalidRequest {
            code: "currency_not_available",
            message: format!(
                "plan {} has no price in {currency}, the subscription's currency",
                plan.name
            ),
        })?;
    if let Some(id) = &price.id {
        return Ok(stripe
            .get(&format!("/v1/prices/{id}"), &Params::new())
            .await?);
    }
    let key = price.lookup_key.clone().unwrap_or_default();
    let list = stripe
        .get(
            "/v1/prices",
            &Params::new()
                .set("lookup_keys[]", &key)
                .set("active", "true"),
        )
        .await?;
    list.pointer("/data/0").cloned().ok_or_else(|| {
        ApiError::StripeRejected(format!(
            "no active Stripe price has the lookup key {key} of plan {}",
            plan.name
        ))
    })
}

/// A price's amount per year, to tell an upgrade from a downgrade across
/// intervals.
fn yearly_amount(price: &Value) -> i64 {
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
/// year) under `BILLD_DOWNGRADE_TIMING=period_end`.
fn at_period_end<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    live: &LiveSubscription,
    target: &Value,
) -> bool {
    state.config.downgrade_timing == DowngradeTiming::PeriodEnd
        && yearly_amount(target) < yearly_amount(&live.price)
}

/// Refuses a change to the plan the subscription is on already.
fn refuse_same_plan(
    catalog: &Catalog,
    live: &LiveSubscription,
    plan: &Plan,
) -> Result<(), ApiError> {
    if plan_of_price(catalog, &live.price).is_some_and(|p| p.name == plan.name) {
        return Err(conflict(
            "same_plan",
            format!("the subscription is on plan {} already", plan.name),
        ));
    }
    Ok(())
}

fn preview_params(
    live: &LiveSubscription,
    price: &str,
    behavior: &str,
    proration_date: i64,
) -> Params {
    Params::new()
        .set("subscription", &live.id)
        .set("subscription_details[items][0][id]", &live.item_id)
        .set("subscription_details[items][0][price]", price)
        .set("subscription_details[proration_behavior]", behavior)
        .set("subscription_details[proration_date]", proration_date)
}

fn lines_of(invoice: &Value) -> Vec<PreviewLine> {
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

fn amount_due(invoice: &Value) -> i64 {
    invoice["amount_due"].as_i64().unwrap_or_default()
}

/// Features whose current usage exceeds `plan`'s limits.
async fn quota_overflow<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    record: &CustomerRecord,
    plan: &Plan,
) -> Result<Vec<QuotaOverflow>, ApiError> {
    let now = state.clock.now();
    let keys = usage_keys(&record.state, &state.catalog, now);
    let usage = state
        .store
        .load_usage(&record.customer_id, &keys)
        .await
        .map_err(store_error)?;
    let current = entitlements(&record.state, &state.catalog, &usage, now);
    Ok(current
        .features
        .into_iter()
        .filter_map(|(feature, e)| {
            let new_limit = plan.limit(&feature);
            (e.used > new_limit).then_some(QuotaOverflow {
                feature,
                used: e.used,
                new_limit,
            })
        })
        .collect())
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/preview", tag = "app", operation_id = "preview_plan_change",
    description = "Prorated amounts of a plan change, from Stripe's invoice preview, and any quota overflow.",
    params(crate::http::openapi::CustomerPath),
    request_body = PlanChangeBody,
    responses(
        (status = 200, description = "What is charged now and at renewal, the currency, quota overflow.", body = PreviewView),
        (status = 400, description = "`unknown_plan`, `field_too_long`, `invalid_body`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "No live subscription, or the same plan.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn preview<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    body: Result<Json<PlanChangeBody>, JsonRejection>,
) -> Result<Json<PreviewView>, ApiError> {
    let id = customer_id(&id)?;
    let (_, plan) = parse_body(body, &state.catalog)?;
    let ctx = load(&state, &id).await?;
    let live = &ctx.live;
    refuse_same_plan(&state.catalog, live, &plan)?;
    let stripe = state.stripe()?;
    let target = target_price(stripe, &plan, &live.currency).await?;
    let price = target["id"].as_str().unwrap_or_default().to_owned();
    let proration_date = state.clock.now();
    let behavior = state.config.proration_behavior;
    let preview = |behavior: &'static str| {
        let params = preview_params(live, &price, behavior, proration_date);
        async move {
            stripe
                .post("/v1/invoices/create_preview", &params, None)
                .await
        }
    };
    let deferred = at_period_end(&state, live, &target);
    let (amount_due_now, next_renewal_amount, lines) = if deferred {
        // Nothing is prorated: the cheaper price bills from the next period.
        let renewal = preview("none").await?;
        (0, amount_due(&renewal), lines_of(&renewal))
    } else if behavior == ProrationBehavior::AlwaysInvoice {
        let now = preview("always_invoice").await?;
        let renewal = preview("none").await?;
        let mut lines = lines_of(&now);
        lines.extend(lines_of(&renewal));
        (amount_due(&now), amount_due(&renewal), lines)
    } else {
        let upcoming = preview("create_prorations").await?;
        (0, amount_due(&upcoming), lines_of(&upcoming))
    };
    let quota_overflow = quota_overflow(&state, &ctx.record, &plan).await?;
    Ok(Json(PreviewView {
        plan: plan.name,
        currency: live.currency.clone(),
        amount_due_now,
        next_renewal_amount,
        renews_at: live.current_period_end,
        effective: if deferred { "period_end" } else { "immediate" },
        proration_date,
        lines,
        quota_overflow,
    }))
}

/// A Stripe idempotency key naming one intended change of one subscription
/// from the state billd saw: a double submit reuses it (Stripe applies the
/// change once), a later change (even back to an earlier price) gets a new
/// one because the watermark moved.
fn idempotency_key(
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

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/change", tag = "app", operation_id = "change_plan",
    description = "Applies a plan change with proration (BILLD_PRORATION_BEHAVIOR). Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    request_body = PlanChangeBody,
    responses(
        (status = 200, description = "`status` `changed` (applies now) or `scheduled` (a downgrade at the period end): the subscription.", body = SubscriptionView),
        (status = 202, description = "`status` `action_required` (the proration invoice needs 3-D Secure at `hosted_invoice_url`) or `payment_failed`; the plan is granted once paid.", body = SubscriptionView),
        (status = 400, description = "`unknown_plan`, `field_too_long`, `invalid_body`, `invalid_proration_date`.", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "`no_subscription`, `subscription_ended`, `same_plan`, `change_pending`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn change<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
    keyed: Option<Extension<KeyedRun>>,
    body: Result<Json<PlanChangeBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = customer_id(&id)?;
    let (body, plan) = parse_body(body, &state.catalog)?;
    let ctx = load(&state, &id).await?;
    let live = &ctx.live;
    let stripe = state.stripe()?;
    let target = target_price(stripe, &plan, &live.currency).await?;
    let price = target["id"].as_str().unwrap_or_default().to_owned();
    if let Some(pending) = &live.pending_price {
        // A change is waiting for its invoice to be paid: the same change
        // again must not create a second invoice.
        if *pending != price {
            return Err(conflict(
                "change_pending",
                "another plan change waits for its payment; pay or let it expire first",
            ));
        }
        let invoice = latest_invoice(stripe, live.latest_invoice.as_deref()).await?;
        return answer_held(&state, &id, &plan, live, invoice).await;
    }
    let deferred = at_period_end(&state, live, &target);
    if let Some(schedule) = live.object["schedule"].as_str() {
        let scheduled = stripe
            .get(
                &format!("/v1/subscription_schedules/{schedule}"),
                &Params::new(),
            )
            .await?;
        let next_price = scheduled
            .pointer("/phases/1/items/0/price")
            .and_then(|p| p.as_str().or_else(|| p["id"].as_str()));
        if deferred && next_price == Some(price.as_str()) {
            // The same downgrade again: it is scheduled already.
            return answer_scheduled(&state, &id, &plan, live).await;
        }
        // Any other change replaces the scheduled downgrade.
        stripe
            .post(
                &format!("/v1/subscription_schedules/{schedule}/release"),
                &Params::new(),
                Some(&format!("billd:release:{schedule}")),
            )
            .await?;
        if plan_of_price(&state.catalog, &live.price).is_some_and(|p| p.name == plan.name) {
            // Back to the current plan: dropping the schedule was the change.
            let observed = observation_ns();
            let object = stripe.retrieve_subscription(&live.id).await?;
            let updated = LiveSubscription::parse(object)?;
            feed_back(&state, &ctx, &updated, observed).await?;
            let mut view = view(&state, &id, &updated, SubscriptionOutcome::Changed).await?;
            view.requested_plan = Some(plan.name);
            return Ok(Json(view).into_response());
        }
    }
    refuse_same_plan(&state.catalog, live, &plan)?;
    if deferred {
        return schedule_downgrade(&state, &ctx, &id, &plan, &price).await;
    }
    let now = state.clock.now();
    // Under an Idempotency-Key the change is prorated as of the key's first
    // run: a run that takes over from one that died sends Stripe the same
    // request, under the same Stripe key, and gets the first run's result
    // instead of a second change.
    let default_date = keyed
        .map(|Extension(run)| run.first_seen)
        .filter(|t| *t >= live.current_period_start && *t <= now)
        .unwrap_or(now);
    let proration_date = match body.proration_date {
        None => default_date,
        Some(t) if t >= live.current_period_start && t <= now.max(live.current_period_start) => t,
        Some(t) => {
            return Err(ApiError::InvalidRequest {
                code: "invalid_proration_date",
                message: format!(
                    "proration_date {t} must lie in the current period ({} to now)",
                    live.current_period_start
                ),
            })
        }
    };
    let behavior = state.config.proration_behavior;
    let mut params = Params::new()
        .set("items[0][id]", &live.item_id)
        .set("items[0][price]", &price)
        .set("proration_behavior", behavior.as_str())
        .set("proration_date", proration_date)
        .set("metadata[billd_plan]", plan.name.as_str());
    if behavior == ProrationBehavior::AlwaysInvoice {
        // Stripe keeps the old price until the proration invoice is paid.
        params = params.set("payment_behavior", "pending_if_incomplete");
    }
    let key = idempotency_key("plan_change", live, &price, &ctx.watermark);
    let updated = stripe
        .post(
            &format!("/v1/subscriptions/{}", live.id),
            &params,
            Some(&key),
        )
        .await?;
    // A write's answer is as new as its arrival: Stripe made the change
    // before answering.
    let observed = observation_ns();
    let updated = LiveSubscription::parse(updated)?;
    let new_invoice = updated
        .latest_invoice
        .clone()
        .filter(|inv| live.latest_invoice.as_ref() != Some(inv));
    if updated.pending_price.is_some() {
        let invoice = latest_invoice(stripe, updated.latest_invoice.as_deref()).await?;
        return answer_held(&state, &id, &plan, &updated, invoice).await;
    }
    let invoice = match new_invoice {
        Some(inv) => latest_invoice(stripe, Some(&inv)).await?,
        None => None,
    };
    feed_back(&state, &ctx, &updated, observed).await?;
    let mut view = view(&state, &id, &updated, SubscriptionOutcome::Changed).await?;
    view.requested_plan = Some(plan.name);
    view.invoice = invoice.as_ref().map(invoice_summary);
    Ok(Json(view).into_response())
}

/// Schedules a downgrade for the period end: a subscription schedule made
/// from the subscription, whose first phase keeps the current price until
/// the period ends and whose second phase bills `price` for one period
/// without proration, then releases the subscription.
async fn schedule_downgrade<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    id: &CustomerId,
    plan: &Plan,
    price: &str,
) -> Result<Response, ApiError> {
    let live = &ctx.live;
    let stripe = state.stripe()?;
    // The new phase lasts one period of the new price: read its interval
    // before making the schedule, so a bad price leaves nothing behind.
    let recurring = stripe
        .get(&format!("/v1/prices/{price}"), &Params::new())
        .await?["recurring"]
        .clone();
    let (Some(interval), Some(interval_count)) = (
        recurring["interval"].as_str().map(str::to_owned),
        recurring["interval_count"].as_i64(),
    ) else {
        return Err(ApiError::StripeRejected(format!(
            "price {price} is not recurring: {recurring}"
        )));
    };
    let created = stripe
        .post(
            "/v1/subscription_schedules",
            &Params::new().set("from_subscription", &live.id),
            Some(&idempotency_key("schedule", live, price, &ctx.watermark)),
        )
        .await?;
    let schedule = created["id"]
        .as_str()
        .ok_or_else(|| ApiError::StripeRejected(format!("schedule without id: {created}")))?;
    let start = created
        .pointer("/phases/0/start_date")
        .and_then(Value::as_i64)
        .unwrap_or(live.current_period_start);
    let phases = Params::new()
        .set("phases[0][items][0][price]", live.price_id())
        .set("phases[0][start_date]", start)
        .set("phases[0][end_date]", live.current_period_end)
        .set("phases[1][items][0][price]", price)
        // One period of the new price (`iterations` is gone since API 2025-09-30).
        .set("phases[1][duration][interval]", interval.as_str())
        .set("phases[1][duration][interval_count]", interval_count)
        .set("phases[1][proration_behavior]", "none")
        .set("phases[1][metadata][billd_plan]", plan.name.as_str())
        .set("end_behavior", "release");
    stripe
        .post(
            &format!("/v1/subscription_schedules/{schedule}"),
            &phases,
            Some(&idempotency_key(
                "schedule_phases",
                live,
                price,
                &ctx.watermark,
            )),
        )
        .await?;
    answer_scheduled(state, id, plan, live).await
}

/// A downgrade waiting for the period end: the current plan applies until
/// `effective_at`.
async fn answer_scheduled<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    plan: &Plan,
    live: &LiveSubscription,
) -> Result<Response, ApiError> {
    let mut view = view(state, id, live, SubscriptionOutcome::Scheduled).await?;
    view.requested_plan = Some(plan.name.clone());
    view.effective_at = Some(live.current_period_end);
    Ok(Json(view).into_response())
}

async fn latest_invoice(
    stripe: &StripeClient,
    id: Option<&str>,
) -> Result<Option<Value>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    // `payments` is includable: Stripe sends it only when asked for.
    Ok(Some(
        stripe
            .get(
                &format!("/v1/invoices/{id}"),
                &Params::new().set("expand[]", "payments"),
            )
            .await?,
    ))
}

fn invoice_summary(invoice: &Value) -> InvoiceSummary {
    InvoiceSummary {
        id: invoice["id"].as_str().unwrap_or_default().to_owned(),
        amount_due: amount_due(invoice),
        amount_paid: invoice["amount_paid"].as_i64().unwrap_or_default(),
        status: invoice["status"].as_str().map(str::to_owned),
        hosted_invoice_url: invoice["hosted_invoice_url"].as_str().map(str::to_owned),
    }
}

/// A change Stripe holds as a pending update until its invoice is paid:
/// 202 with where to pay; the plan stays the old one.
async fn answer_held<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    plan: &Plan,
    live: &LiveSubscription,
    invoice: Option<Value>,
) -> Result<Response, ApiError> {
    let stripe = state.stripe()?;
    let needs_action = match invoice
        .as_ref()
        .and_then(|inv| inv.pointer("/payments/data/0/payment/payment_intent"))
        .and_then(|pi| pi.as_str().or_else(|| pi["id"].as_str()))
    {
        Some(pi) => {
            let intent = stripe
                .get(&format!("/v1/payment_intents/{pi}"), &Params::new())
                .await?;
            intent["status"] == "requires_action"
        }
        // Without a payment intent to look at, the hosted page is where the
        // customer acts either way.
        None => true,
    };
    let status = if needs_action {
        SubscriptionOutcome::ActionRequired
    } else {
        SubscriptionOutcome::PaymentFailed
    };
    let mut view = view(state, id, live, status).await?;
    view.requested_plan = Some(plan.name.clone());
    view.hosted_invoice_url = invoice
        .as_ref()
        .and_then(|inv| inv["hosted_invoice_url"].as_str())
        .map(str::to_owned);
    view.invoice = invoice.as_ref().map(invoice_summary);
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/cancel", tag = "app", operation_id = "cancel_subscription",
    description = "Cancels at the end of the period. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "`status` `cancel_scheduled`: the subscription, `cancel_at_period_end` true (also when it was already).", body = SubscriptionView),
        (status = 409, description = "`no_subscription`, `subscription_ended`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn cancel<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_cancel_at_period_end(state, id, true).await
}

#[utoipa::path(
    post, path = "/v1/customers/{id}/subscription/resume", tag = "app", operation_id = "resume_subscription",
    description = "Undoes a cancellation before the period ends. Honours `Idempotency-Key`.",
    params(crate::http::openapi::CustomerPath, crate::http::openapi::IdempotencyHeader),
    responses(
        (status = 200, description = "`status` `resumed`: the subscription, `cancel_at_period_end` false (also when it was already).", body = SubscriptionView),
        (status = 409, description = "`no_subscription`, `subscription_ended`.", body = crate::http::openapi::ErrorBody),
        crate::http::openapi::StripeCallErrors,
    )
)]
async fn resume<S: BillingBackend + ?Sized>(
    State(state): State<ApiState<S>>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionView>, ApiError> {
    set_cancel_at_period_end(state, id, false).await
}

async fn set_cancel_at_period_end<S: BillingBackend + ?Sized>(
    state: ApiState<S>,
    id: String,
    cancel: bool,
) -> Result<Json<SubscriptionView>, ApiError> {
    let id = customer_id(&id)?;
    let ctx = load(&state, &id).await?;
    let live = &ctx.live;
    let already = live.object["cancel_at_period_end"].as_bool() == Some(cancel);
    let (updated, observed) = if already {
        // Nothing to change at Stripe; answering the state is idempotent.
        (
            LiveSubscription::parse(live.object.clone())?,
            ctx.live_observed_ns,
        )
    } else {
        let action = if cancel { "cancel" } else { "resume" };
        let key = idempotency_key(action, live, action, &ctx.watermark);
        let object = state
            .stripe()?
            .post(
                &format!("/v1/subscriptions/{}", live.id),
                &Params::new().set("cancel_at_period_end", cancel),
                Some(&key),
            )
            .await?;
        (LiveSubscription::parse(object)?, observation_ns())
    };
    feed_back(&state, &ctx, &updated, observed).await?;
    let outcome = if cancel {
        SubscriptionOutcome::CancelScheduled
    } else {
        SubscriptionOutcome::Resumed
    };
    Ok(Json(view(&state, &id, &updated, outcome).await?))
}

/// Stripe's current time for the subscription: its test clock's frozen
/// time when it lives on one (test mode), else billd's clock, which tracks
/// Stripe's wall clock.
async fn stripe_now<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    object: &Value,
) -> Result<i64, ApiError> {
    let clock = object["test_clock"]
        .as_str()
        .or_else(|| object["test_clock"]["id"].as_str());
    let Some(clock) = clock else {
        return Ok(state.clock.now());
    };
    let clock = state
        .stripe()?
        .get(
            &format!("/v1/test_helpers/test_clocks/{clock}"),
            &Params::new(),
        )
        .await?;
    Ok(clock["frozen_time"]
        .as_i64()
        .unwrap_or_else(|| state.clock.now()))
}

/// Feeds Stripe's answer into the inbox as an authoritative snapshot at
/// Stripe's current second (never before the subscription's watermark),
/// observed at `observed_ns`, and waits (bounded) until the worker
/// applied it, so the caller's next entitlements read shows it.
async fn feed_back<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    ctx: &Context,
    updated: &LiveSubscription,
    observed_ns: u64,
) -> Result<(), ApiError> {
    feed_back_snapshot(
        state,
        ctx.watermark.0,
        &updated.id,
        &updated.object,
        observed_ns,
    )
    .await
    .map(drop)
}

/// Feeds a subscription object read from Stripe into the inbox as an
/// authoritative snapshot at Stripe's current second, never before
/// `watermark` (the second of the snapshot billd holds), and waits (bounded)
/// until the worker applied it; answers whether it was applied in time.
pub(crate) async fn feed_back_snapshot<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    watermark: i64,
    subscription: &str,
    object: &Value,
    observed_ns: u64,
) -> Result<bool, ApiError> {
    // The observation time orders this snapshot against billd's other
    // reads and writes of the same second; the watermark itself is
    // Stripe's time, never billd's.
    let created = watermark.max(stripe_now(state, object).await?);
    let event = sync_event(
        subscription,
        created,
        observed_ns,
        object.clone(),
        state.clock.now(),
    );
    let id = event.id.clone();
    state
        .store
        .insert_events(&[event])
        .await
        .map_err(store_error)?;
    let deadline = Instant::now() + APPLY_WAIT;
    while Instant::now() < deadline {
        let done = state
            .store
            .get_event(&id)
            .await
            .map_err(store_error)?
            .is_some_and(|e| !matches!(e.status, EventStatus::Pending | EventStatus::Processing));
        if done {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(event_id = %id, "fed-back subscription not applied yet; answering anyway");
    Ok(false)
}

/// The synthetic inbox event carrying a subscription object Stripe returned
/// to a change, shaped like a webhook (see [`crate::pipeline::refetch_event`]),
/// observed at `observed_ns`, which also orders two of them by id.
pub fn sync_event(
    subscription: &str,
    created: i64,
    observed_ns: u64,
    object: Value,
    now: i64,
) -> NewEvent {
    let id = format!("{SYNC_EVENT_PREFIX}{subscription}_{observed_ns:039}");
    synthetic_subscription_event(id, subscription, created, observed_ns, object, now)
}

async fn view<S: BillingBackend + ?Sized>(
    state: &ApiState<S>,
    id: &CustomerId,
    live: &LiveSubscription,
    status: SubscriptionOutcome,
) -> Result<SubscriptionView, ApiError> {
    let record = crate::http::app::account::live_customer(&*state.store, id).await?;
    let now = state.clock.now();
    let keys = usage_keys(&record.state, &state.catalog, now);
    let usage = state
        .store
        .load_usage(id, &keys)
        .await
        .map_err(store_error)?;
    let entitlements = entitlements(&record.state, &state.catalog, &usage, now);
    Ok(SubscriptionView {
        status,
        plan: entitlements.plan.clone(),
        requested_plan: None,
        subscription_status: live.status.clone(),
        cancel_at_period_end: live.object["cancel_at_period_end"].as_bool() == Some(true),
        current_period_end: Some(live.current_period_end).filter(|t| *t > 0),
        hosted_invoice_url: None,
        invoice: None,
        effective_at: None,
        entitlements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subscription(price: &str) -> LiveSubscription {
        LiveSubscription::parse(json!({
            "id": "sub_1", "object": "subscription", "customer": "cus_1",
            "status": "active", "created": 100, "cancel_at_period_end": false, "currency": "eur",
            "items": { "object": "list", "data": [{
                "id": "si_1", "price": { "id": price }, "current_period_start": 100,
                "current_period_end": 200
            }] },
            "metadata": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_fed_back_subscription_is_an_authoritative_event_and_later_feed_backs_sort_after() {
        let live = subscription("price_a");
        let first = sync_event("sub_1", 500, 7, live.object.clone(), 900);
        let second = sync_event("sub_1", 500, 80, live.object.clone(), 900);

        let event = crate::pipeline::parse_stored(&crate::pipeline::claimed(first.clone()))
            .unwrap()
            .unwrap();

        assert!(event.authoritative);
        assert_eq!(event.created, 500);
        assert_eq!(event.observed_ns, 7);
        assert_eq!(first.stripe_customer.as_deref(), Some("cus_1"));
        assert!(second.id > first.id, "{} vs {}", second.id, first.id);
    }

    #[test]
    fn the_idempotency_key_repeats_for_a_double_submit_and_changes_with_the_watermark() {
        let live = subscription("price_a");
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
    fn configuration_values_parse_and_print_as_stripe_names() {
        for behavior in [
            ProrationBehavior::CreateProrations,
            ProrationBehavior::AlwaysInvoice,
        ] {
            assert_eq!(behavior.as_str().parse::<ProrationBehavior>(), Ok(behavior));
        }
        assert!("none".parse::<ProrationBehavior>().is_err());
        for timing in [DowngradeTiming::Immediate, DowngradeTiming::PeriodEnd] {
            assert_eq!(timing.as_str().parse::<DowngradeTiming>(), Ok(timing));
        }
        assert!("later".parse::<DowngradeTiming>().is_err());
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
