//! The pure decisions of a checkout: the validated request and its
//! fingerprint, URLs, the purchasable plan and its currency, whether the
//! customer may check out or their open session still answers, and how
//! Stripe's refusals map to the caller's codes. No I/O.

use billd_core::event::SubscriptionStatus;
use billd_core::{
    CheckoutSessionId, Currency, CustomerId, CustomerState, Interval, Plan, PlanName, SeatsError,
};
use billd_store::CheckoutRecord;
use billd_stripe::client::StripeError;
use sha2::{Digest, Sha256};

use crate::http::api::{bounded, bounds};
use crate::http::error::ApiError;

/// A validated checkout request.
#[derive(Debug, Clone)]
pub(super) struct CheckoutRequest {
    pub(super) plan: PlanName,
    pub(super) currency: Currency,
    pub(super) success_url: String,
    pub(super) cancel_url: String,
    pub(super) promotion_code: Option<String>,
    pub(super) interval: Interval,
    pub(super) seats: u64,
}

impl CheckoutRequest {
    /// A digest of everything that shapes the session: equal digests mean
    /// the open session answers the request.
    pub(super) fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let seats = self.seats.to_string();
        for part in [
            self.plan.as_str(),
            self.currency.as_str(),
            &self.success_url,
            &self.cancel_url,
            self.promotion_code.as_deref().unwrap_or(""),
            self.interval.as_str(),
            &seats,
        ] {
            hash.update(part.as_bytes());
            hash.update([0u8]);
        }
        hex::encode(&hash.finalize()[..16])
    }
}

/// The billing interval a request names (default `month`), or 400
/// `invalid_interval`.
pub(crate) fn parse_interval(raw: Option<&str>) -> Result<Interval, ApiError> {
    match raw {
        None => Ok(Interval::Month),
        Some(raw) => Interval::parse(raw).ok_or_else(|| ApiError::InvalidRequest {
            code: "invalid_interval",
            message: format!("interval must be month or year, got {raw:?}"),
        }),
    }
}

/// A refused seat count as the caller's error: 409 `seats_in_use` (release
/// capacity first), 409 `same_seats`, else 400 with the rule's code.
pub(crate) fn seats_error(e: SeatsError) -> ApiError {
    match e {
        SeatsError::InUse { .. } | SeatsError::Unchanged(_) => ApiError::Conflict {
            code: e.code(),
            message: e.to_string(),
        },
        SeatsError::NotPerSeat { .. } | SeatsError::OutOfRange { .. } => ApiError::InvalidRequest {
            code: e.code(),
            message: e.to_string(),
        },
    }
}

/// 400 `interval_not_available` when the plan has no price at `interval`
/// in `currency`.
pub(crate) fn ensure_interval(
    plan: &Plan,
    currency: &Currency,
    interval: Interval,
) -> Result<(), ApiError> {
    if plan.price(currency, interval).is_some() {
        return Ok(());
    }
    let offered: Vec<&str> = plan
        .prices
        .get(currency)
        .into_iter()
        .flat_map(|by_interval| by_interval.keys().map(|i| i.as_str()))
        .collect();
    Err(ApiError::InvalidRequest {
        code: "interval_not_available",
        message: format!(
            "plan {} has no {interval} price in {currency} (offered: {})",
            plan.name,
            offered.join(", ")
        ),
    })
}

/// An absolute http(s) URL, or 400 `field_too_long` / `invalid_url`.
pub(super) fn absolute_url(field: &'static str, raw: &str) -> Result<String, ApiError> {
    bounded(field, raw, bounds::URL)?;
    let invalid = |why: String| ApiError::InvalidRequest {
        code: "invalid_url",
        message: format!("{field} must be an absolute http or https URL: {why}"),
    };
    let url = url::Url::parse(raw.trim()).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("{raw:?}")));
    }
    Ok(raw.trim().to_owned())
}

/// The paid plan a request names, or 400 `unknown_plan` /
/// `plan_not_purchasable`.
pub(super) fn purchasable_plan<'c>(
    catalog: &'c billd_core::Catalog,
    raw: &str,
) -> Result<&'c Plan, ApiError> {
    let unknown = || ApiError::InvalidRequest {
        code: "unknown_plan",
        message: format!("no plan {raw:?} in the catalog"),
    };
    let name = PlanName::parse(raw).map_err(|_| unknown())?;
    let plan = catalog.plan(&name).ok_or_else(unknown)?;
    if plan.prices.is_empty() {
        return Err(ApiError::InvalidRequest {
            code: "plan_not_purchasable",
            message: format!("plan {name} is free and cannot be bought"),
        });
    }
    Ok(plan)
}

/// The checkout currency: the requested one (which must have a price), else
/// the customer's preferred one when the plan has a price in it, else the
/// catalog's default.
pub(super) fn checkout_currency(
    catalog: &billd_core::Catalog,
    plan: &Plan,
    requested: Option<&str>,
    preferred: Option<&str>,
) -> Result<Currency, ApiError> {
    if let Some(raw) = requested {
        let currency = Currency::parse(raw).map_err(|e| ApiError::InvalidRequest {
            code: "invalid_currency",
            message: e.to_string(),
        })?;
        if !plan.prices.contains_key(&currency) {
            return Err(ApiError::InvalidRequest {
                code: "currency_not_available",
                message: format!(
                    "plan {} has no price in {currency} (available: {})",
                    plan.name,
                    plan.prices
                        .keys()
                        .map(Currency::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        return Ok(currency);
    }
    let preferred = preferred
        .and_then(|raw| Currency::parse(raw).ok())
        .filter(|c| plan.prices.contains_key(c));
    let currency = preferred.unwrap_or_else(|| catalog.default_currency().clone());
    if !plan.prices.contains_key(&currency) {
        return Err(ApiError::InvalidRequest {
            code: "currency_not_available",
            message: format!("plan {} has no price in {currency}", plan.name),
        });
    }
    Ok(currency)
}

/// 409 `already_subscribed` when the customer has a subscription that bills
/// them (anything live but a first payment still pending): a second one
/// would charge twice; plan changes go through `…/subscription/change`.
pub(super) fn ensure_not_subscribed(
    id: &CustomerId,
    state: &CustomerState,
) -> Result<(), ApiError> {
    let live = state
        .subscriptions
        .values()
        .find(|s| s.is_live() && s.snapshot.status != SubscriptionStatus::Incomplete);
    match live {
        Some(subscription) => Err(already_subscribed(
            id,
            Some(subscription.snapshot.id.as_str()),
        )),
        None => Ok(()),
    }
}

pub(super) fn already_subscribed(id: &CustomerId, subscription: Option<&str>) -> ApiError {
    let which = subscription.map_or_else(String::new, |s| format!(" ({s})"));
    ApiError::Conflict {
        code: "already_subscribed",
        message: format!(
            "customer {id} already has a subscription{which}; change plans with POST /v1/customers/{id}/subscription/change"
        ),
    }
}

/// Whether the state shows the session ended (completed or expired).
fn ended_in_state(state: &CustomerState, session_id: &str) -> bool {
    CheckoutSessionId::parse(session_id)
        .ok()
        .and_then(|id| state.checkouts.get(&id))
        .is_some_and(|c| c.completed || c.expired)
}

/// Whether the row's session may still be open at Stripe.
pub(super) fn may_be_open(row: &CheckoutRecord, state: &CustomerState, now: i64) -> bool {
    row.closed_at.is_none() && row.expires_at > now && !ended_in_state(state, &row.session_id)
}

/// 409 `currency_locked`.
pub(super) fn currency_locked(locked: &str, wanted: &Currency) -> ApiError {
    ApiError::Conflict {
        code: "currency_locked",
        message: format!(
            "the customer's Stripe account already bills in {locked} and Stripe cannot mix currencies on one customer; check out in {locked} instead of {wanted}"
        ),
    }
}

/// Maps Stripe refusing the session to the caller's error where the caller
/// can act on it.
pub(super) fn session_error(e: StripeError, currency: &Currency) -> ApiError {
    if let StripeError::Api(api) = &e {
        if api.status == 400 && api.message.contains("combine currencies") {
            return currency_locked("another currency", currency);
        }
        if api.status == 400
            && api
                .param
                .as_deref()
                .is_some_and(|p| p.starts_with("discounts"))
        {
            let code = if api.message.contains("expired")
                || api.message.contains("not active")
                || api.message.contains("maximum number of redemptions")
            {
                "promotion_code_expired"
            } else {
                "promotion_code_invalid"
            };
            return ApiError::InvalidRequest {
                code,
                message: api.message.clone(),
            };
        }
    }
    e.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_are_accepted() {
        for good in ["https://app.test/done", "http://localhost:3000/x?y=1"] {
            assert!(absolute_url("success_url", good).is_ok(), "{good}");
        }
        for bad in [
            "/relative",
            "ftp://app.test/",
            "javascript:alert(1)",
            "",
            "https://",
        ] {
            let e = absolute_url("success_url", bad).unwrap_err();
            assert_eq!(e.code(), "invalid_url", "{bad}");
        }
    }

    #[test]
    fn the_fingerprint_changes_with_every_field_of_the_request() {
        let base = CheckoutRequest {
            plan: PlanName::parse("pro").unwrap(),
            currency: Currency::parse("eur").unwrap(),
            success_url: "https://a.test/ok".into(),
            cancel_url: "https://a.test/no".into(),
            promotion_code: None,
            interval: Interval::Month,
            seats: 1,
        };
        let mut variants = vec![base.clone()];
        variants.push(CheckoutRequest {
            plan: PlanName::parse("standard").unwrap(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            currency: Currency::parse("usd").unwrap(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            success_url: "https://a.test/ok2".into(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            cancel_url: "https://a.test/no2".into(),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            promotion_code: Some("X".into()),
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            interval: Interval::Year,
            ..base.clone()
        });
        variants.push(CheckoutRequest {
            seats: 2,
            ..base.clone()
        });
        let mut prints: Vec<String> = variants.iter().map(CheckoutRequest::fingerprint).collect();
        assert_eq!(prints[0], base.fingerprint());
        prints.sort();
        prints.dedup();
        assert_eq!(prints.len(), 8);
    }

    #[test]
    fn the_currency_defaults_to_a_preferred_one_with_a_price_then_the_catalogs() {
        let catalog = billd_core::Catalog::seed();
        let pro = purchasable_plan(&catalog, "pro").unwrap();
        let pick = |requested, preferred| {
            checkout_currency(&catalog, pro, requested, preferred).map(|c| c.to_string())
        };
        assert_eq!(pick(None, None).unwrap(), "eur");
        assert_eq!(pick(None, Some("usd")).unwrap(), "eur");
        assert_eq!(pick(Some("eur"), Some("usd")).unwrap(), "eur");
        assert_eq!(
            pick(Some("usd"), None).unwrap_err().code(),
            "currency_not_available"
        );
        assert_eq!(
            pick(Some("e"), None).unwrap_err().code(),
            "invalid_currency"
        );
    }

    fn stripe_400(param: Option<&str>, message: &str) -> StripeError {
        StripeError::Api(Box::new(billd_stripe::client::ApiError {
            status: 400,
            kind: "invalid_request_error".into(),
            code: None,
            decline_code: None,
            param: param.map(str::to_owned),
            message: message.into(),
        }))
    }

    #[test]
    fn stripe_refusing_a_session_maps_to_the_callers_codes() {
        let eur = Currency::parse("eur").unwrap();
        let mixed = stripe_400(
            Some("currency"),
            "You cannot combine currencies on a single customer. This customer has an active subscription, subscription schedule, discount, quote, or invoice item with currency usd.",
        );
        let expired = stripe_400(
            Some("discounts[0][promotion_code]"),
            "This promotion code has expired.",
        );
        let first_time = stripe_400(
            Some("discounts[0][promotion_code]"),
            "This promotion code can only be used on a customer's first purchase.",
        );
        let other = stripe_400(Some("line_items[0][price]"), "No such price");

        let codes: Vec<(u16, &str)> = [mixed, expired, first_time, other]
            .into_iter()
            .map(|e| {
                let e = session_error(e, &eur);
                (e.status().as_u16(), e.code())
            })
            .collect();

        assert_eq!(
            codes,
            [
                (409, "currency_locked"),
                (400, "promotion_code_expired"),
                (400, "promotion_code_invalid"),
                (502, "stripe_error"),
            ]
        );
    }

    #[test]
    fn free_and_unknown_plans_cannot_be_bought() {
        let catalog = billd_core::Catalog::seed();
        assert_eq!(
            purchasable_plan(&catalog, "free").unwrap_err().code(),
            "plan_not_purchasable"
        );
        assert_eq!(
            purchasable_plan(&catalog, "platinum").unwrap_err().code(),
            "unknown_plan"
        );
        assert_eq!(
            purchasable_plan(&catalog, "Bad Name").unwrap_err().code(),
            "unknown_plan"
        );
    }
}
