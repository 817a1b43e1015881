//! The plan-change API's types: the two configuration values
//! ([`ProrationBehavior`], [`DowngradeTiming`]), the request body and the
//! answers of preview, change, cancel and resume.

use billd_core::{Entitlements, FeatureName, PlanName};
use serde::{Deserialize, Serialize};

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

/// `…/subscription/preview` and `…/subscription/change` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeBody {
    /// The catalog plan to move to (the current one to switch interval).
    #[schema(max_length = 64)]
    pub plan: String,
    /// `month` (default) or `year`: which of the plan's prices to move to.
    #[schema(max_length = 64)]
    #[serde(default)]
    pub interval: Option<String>,
    /// Seats on the new plan (default: the current count brought into the
    /// plan's range; 1 on a plan without seats).
    #[serde(default)]
    pub seats: Option<u64>,
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
    /// The interval previewed (`month` or `year`).
    pub interval: String,
    /// The seats after the change.
    pub seats: u64,
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
    #[schema(value_type = crate::http::openapi::EntitlementsDoc)]
    pub entitlements: Entitlements,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
