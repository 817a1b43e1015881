//! Effects that follow from the passage of time rather than from an event:
//! the scheduler calls these periodically; dedupe keys make repeated runs
//! harmless. No Stripe event exists for an expiring card or an ending grace
//! period, and a missed `invoice.upcoming` must not mean a missed reminder.

use crate::access::{access_at, Access};
use crate::apply::{
    email, params, AuditEntry, CancelReason, Decision, Effect, EmailTemplate, Outcome,
    StripeCustomerErasure,
};
use crate::catalog::Catalog;
use crate::erasure::CARD_EXPIRING_KEY_PREFIX;
use crate::ids::StripeCustomerId;
use crate::state::CustomerState;

/// Renewal reminders go out this long before the period ends.
pub const RENEWAL_REMINDER_LEAD_SECS: i64 = 3 * 86_400;
/// Card expiry warnings go out this long before the expiry month ends.
pub const CARD_EXPIRY_LEAD_SECS: i64 = 30 * 86_400;
/// Grace-ending warnings go out this long before access is blocked.
pub const GRACE_ENDING_LEAD_SECS: i64 = 86_400;

/// The dedupe key of a renewal reminder, shared by `invoice.upcoming` and
/// the scheduler so that a customer gets one reminder per renewal. Both key
/// by the renewal instant: the scheduler by the item's `current_period_end`,
/// `invoice.upcoming` by its line's period start, which is the same second.
pub fn renewal_reminder_key(scope: &str, renews_at: i64) -> String {
    format!("renewal_reminder:{scope}:{renews_at}")
}

/// A suspension is announced only this long after the grace period ended:
/// a scheduler started long after (a new install on old data, a long
/// outage) does not email customers about a suspension they already live with.
pub const SUSPENSION_NOTICE_WINDOW_SECS: i64 = 7 * 86_400;

/// The dedupe key of the access-suspended email, also recorded in
/// [`CustomerState::applied_facts`] so that the suspension is audited once.
pub fn access_suspended_key(scope: &str, grace_until: i64) -> String {
    format!("access_suspended:{scope}:{grace_until}")
}

/// The `event_type` of the audit row a grace expiry writes (its `reason`
/// is the suspension's key).
pub const GRACE_EXPIRY_EVENT_TYPE: &str = "scheduler.grace_expiry";

/// When the grace period of the customer's past-due subscription has run
/// out at `now` (access went from `grace` to `blocked`) and billd has not
/// recorded that yet: the state with the suspension recorded as a fact, an
/// audit row `access: grace → blocked`, and the `access_suspended` email
/// (dedupe `access_suspended:{sub}:{grace_until}`). None otherwise, and
/// for a suspension older than [`SUSPENSION_NOTICE_WINDOW_SECS`]. A second
/// call on the returned state gives none: the suspension is recorded once.
pub fn grace_expiry(state: &CustomerState, catalog: &Catalog, now: i64) -> Option<Decision> {
    let view = access_at(state, catalog, now);
    let (Access::Blocked, Some(until), Some(sub)) =
        (view.access, view.grace_until, view.subscription)
    else {
        return None;
    };
    if now < until || now - until > SUSPENSION_NOTICE_WINDOW_SECS {
        return None;
    }
    let s = &sub.snapshot;
    let key = access_suspended_key(s.id.as_str(), until);
    if state.applied_facts.contains(&key) {
        return None;
    }
    let mut next = state.clone();
    next.applied_facts.insert(key.clone());
    let audit = AuditEntry {
        field: "access".to_owned(),
        before: Some("grace".to_owned()),
        after: Some("blocked".to_owned()),
        reason: key.clone(),
        event_type: GRACE_EXPIRY_EVENT_TYPE.to_owned(),
        at: now,
    };
    Some(Decision {
        state: next,
        effects: vec![email(
            EmailTemplate::AccessSuspended,
            key,
            params([
                ("subscription", s.id.to_string()),
                ("plan", view.plan.name.to_string()),
                ("grace_until", until.to_string()),
            ]),
        )],
        audit: vec![audit],
        outcome: Outcome::Applied,
    })
}

/// Reminders, card expiry and grace warnings due at `now`.
pub fn scheduled_effects(state: &CustomerState, catalog: &Catalog, now: i64) -> Vec<Effect> {
    let mut effects = Vec::new();
    let view = access_at(state, catalog, now);
    if let Some(sub) = view.subscription.filter(|s| s.is_live()) {
        let s = &sub.snapshot;
        if let Some(end) = s.current_period_end {
            let due = view.access == Access::Paid
                && !s.cancel_at_period_end
                && now < end
                && end - now <= RENEWAL_REMINDER_LEAD_SECS;
            if due {
                effects.push(email(
                    EmailTemplate::RenewalReminder,
                    renewal_reminder_key(s.id.as_str(), end),
                    params([
                        ("subscription", s.id.to_string()),
                        ("plan", view.plan.name.to_string()),
                        ("renews_at", end.to_string()),
                    ]),
                ));
            }
        }
        if let (Access::Grace, Some(until)) = (view.access, view.grace_until) {
            if until - now <= GRACE_ENDING_LEAD_SECS {
                effects.push(email(
                    EmailTemplate::GraceEnding,
                    format!("grace_ending:{}:{until}", s.id),
                    params([
                        ("subscription", s.id.to_string()),
                        ("grace_until", until.to_string()),
                    ]),
                ));
            }
        }
    }
    for (id, pm) in &state.payment_methods {
        let Some(card) = &pm.value.card else { continue };
        let (Some(month), Some(year)) = (card.exp_month, card.exp_year) else {
            continue;
        };
        // A card is valid through the last day of its expiry month.
        let expires_at = crate::access::calendar_month(month_start(year, month)).end;
        if now < expires_at && expires_at - now <= CARD_EXPIRY_LEAD_SECS {
            effects.push(email(
                EmailTemplate::CardExpiring,
                format!("{CARD_EXPIRING_KEY_PREFIX}{id}:{year:04}-{month:02}"),
                params([
                    ("payment_method", id.to_string()),
                    ("brand", card.brand.clone().unwrap_or_default()),
                    ("last4", card.last4.clone().unwrap_or_default()),
                    ("expires", format!("{month:02}/{year:04}")),
                ]),
            ));
        }
    }
    effects
}

fn month_start(year: i32, month: u32) -> i64 {
    let month = i64::from(month.clamp(1, 12));
    crate::calendar::days_from_civil(i64::from(year), month, 1) * 86_400
}

/// What deleting the customer's account at the app requires at Stripe:
/// every live subscription canceled first (DESIGN: cancel, then erase).
pub fn account_deletion_effects(state: &CustomerState) -> Vec<Effect> {
    state
        .subscriptions
        .values()
        .filter(|s| s.is_live())
        .map(|s| Effect::CancelSubscription {
            subscription: s.snapshot.id.clone(),
            reason: CancelReason::AccountDeleted,
            dedupe_key: format!("cancel_subscription:{}", s.snapshot.id),
        })
        .collect()
}

/// Everything deleting the account requires at Stripe, in order: the
/// cancels of [`account_deletion_effects`], then one
/// [`Effect::DeleteStripeCustomer`] per Stripe customer (those in the state
/// not yet deleted at Stripe, plus `linked`, the one the customer row
/// names), each waiting for every cancel.
pub fn account_erasure_effects(
    state: &CustomerState,
    linked: Option<&StripeCustomerId>,
    erasure: StripeCustomerErasure,
) -> Vec<Effect> {
    let mut effects = account_deletion_effects(state);
    let after: Vec<String> = effects.iter().map(|e| e.dedupe_key().to_owned()).collect();
    let mut customers: Vec<&StripeCustomerId> = state
        .stripe_customers
        .iter()
        .filter(|(_, link)| !link.deleted)
        .map(|(id, _)| id)
        .chain(linked)
        .collect();
    customers.sort();
    customers.dedup();
    effects.extend(customers.into_iter().map(|customer| {
        let verb = match erasure {
            StripeCustomerErasure::Delete => "delete",
            StripeCustomerErasure::Anonymize => "anonymize",
        };
        Effect::DeleteStripeCustomer {
            customer: customer.clone(),
            erasure,
            after: after.clone(),
            dedupe_key: format!("{verb}_stripe_customer:{customer}"),
        }
    }));
    effects
}

/// Removes personal data (emails, card details, metadata) and keeps the
/// billing history: ids, statuses, amounts and what the audit log refers to.
pub fn erase_personal_data(state: &CustomerState) -> CustomerState {
    let mut erased = state.clone();
    for link in erased.stripe_customers.values_mut() {
        link.email = None;
        link.metadata.clear();
    }
    for pm in erased.payment_methods.values_mut() {
        pm.value.card = None;
    }
    for checkout in erased.checkouts.values_mut() {
        checkout.session.value.client_reference_id = None;
        checkout.session.value.metadata.clear();
    }
    for sub in erased.subscriptions.values_mut() {
        sub.snapshot.metadata.clear();
    }
    for invoice in erased.invoices.values_mut() {
        invoice.invoice.value.metadata.clear();
    }
    erased
}
