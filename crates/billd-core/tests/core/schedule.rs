//! Time-driven effects and account deletion.

use std::collections::BTreeMap;

use billd_core::event::{
    Card, CustomerChange, InvoiceChange, PaymentMethod, PaymentMethodChange, StripeCustomer,
    SubscriptionStatus,
};
use billd_core::{
    account_deletion_effects, account_erasure_effects, apply, entitlements, erase_personal_data,
    grace_expiry, scheduled_effects, CancelReason, Catalog, CustomerState, Effect, EmailTemplate,
    EventKind, PaymentMethodId, StripeCustomerErasure, StripeCustomerId, Usage,
};

use crate::support::*;

fn keys(effects: &[Effect]) -> Vec<String> {
    effects.iter().map(|e| e.dedupe_key().to_owned()).collect()
}

fn card_state(exp_month: u32, exp_year: i32) -> CustomerState {
    let payment_method = PaymentMethod {
        id: PaymentMethodId::parse("pm_1").unwrap(),
        customer: Some(cus()),
        card: Some(Card {
            brand: Some("visa".to_owned()),
            last4: Some("4242".to_owned()),
            exp_month: Some(exp_month),
            exp_year: Some(exp_year),
        }),
    };
    fold(
        &Catalog::seed(),
        &[event(
            "evt_1",
            T0,
            EventKind::PaymentMethod {
                change: PaymentMethodChange::Attached,
                payment_method,
            },
        )],
        T0,
    )
}

#[test]
fn renewal_reminder_is_due_three_days_before_the_period_end_and_shares_its_key_with_invoice_upcoming(
) {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    let end = T0 + 30 * DAY;
    assert!(scheduled_effects(&state, &catalog, end - 4 * DAY).is_empty());
    let due = keys(&scheduled_effects(&state, &catalog, end - 2 * DAY));
    assert_eq!(due, vec![format!("renewal_reminder:sub_1:{end}")]);

    // Stripe's invoice.upcoming previews the next period, which starts at `end`.
    let mut upcoming = invoice(0, 0);
    upcoming.id = None;
    upcoming.period_start = Some(end);
    upcoming.next_payment_attempt = Some(end + 3600);
    let decision = apply(
        &state,
        &invoice_event("evt_2", end - 3 * DAY, InvoiceChange::Upcoming, upcoming),
        &catalog,
        end - 3 * DAY,
    );
    assert_eq!(keys(&decision.effects), due);
}

#[test]
fn no_renewal_reminder_for_a_subscription_ending_at_period_end() {
    let catalog = Catalog::seed();
    let mut ending = subscription(1, "pro", SubscriptionStatus::Active, T0);
    ending.cancel_at_period_end = true;
    let state = fold(&catalog, &[updated("evt_1", T0, ending)], T0);
    assert!(scheduled_effects(&state, &catalog, T0 + 29 * DAY).is_empty());
    assert!(entitlements(&state, &catalog, &Usage::new(), T0).cancel_at_period_end);
}

#[test]
fn an_expiring_card_is_warned_within_thirty_days_of_the_end_of_its_expiry_month() {
    let catalog = Catalog::seed();
    // Expires end of December 2026 (T0 is 2026-11-01).
    let state = card_state(12, 2026);
    assert!(
        scheduled_effects(&state, &catalog, T0).is_empty(),
        "61 days before"
    );
    let due = keys(&scheduled_effects(&state, &catalog, T0 + 45 * DAY));
    assert_eq!(due, vec!["card_expiring:pm_1:2026-12".to_owned()]);
    assert!(
        scheduled_effects(&state, &catalog, T0 + 61 * DAY).is_empty(),
        "already expired"
    );
}

#[test]
fn grace_ending_is_warned_a_day_before_access_is_blocked() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::PastDue, T0),
        )],
        T0,
    );
    assert!(!keys(&scheduled_effects(&state, &catalog, T0 + DAY))
        .iter()
        .any(|k| k.starts_with("grace_ending")));
    let due = keys(&scheduled_effects(&state, &catalog, T0 + 2 * DAY + 1));
    assert!(
        due.contains(&format!("grace_ending:sub_1:{}", T0 + 3 * DAY)),
        "{due:?}"
    );
}

#[test]
fn account_deletion_cancels_every_live_subscription_first() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            deleted(
                "evt_2",
                T0 + 1,
                subscription(2, "pro", SubscriptionStatus::Active, T0),
            ),
        ],
        T0,
    );
    assert_eq!(
        account_deletion_effects(&state),
        vec![Effect::CancelSubscription {
            subscription: sub_id(1),
            reason: CancelReason::AccountDeleted,
            dedupe_key: "cancel_subscription:sub_1".to_owned(),
        }]
    );
}

#[test]
fn account_erasure_deletes_each_stripe_customer_only_after_every_cancel() {
    let catalog = Catalog::seed();
    let customer = StripeCustomer {
        id: cus(),
        created: Some(T0),
        email: None,
        metadata: BTreeMap::new(),
    };
    let state = fold(
        &catalog,
        &[
            event(
                "evt_1",
                T0,
                EventKind::Customer {
                    change: CustomerChange::Created,
                    customer,
                },
            ),
            updated(
                "evt_2",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
        ],
        T0,
    );
    let linked = StripeCustomerId::parse("cus_2").unwrap();

    let deleted = account_erasure_effects(&state, Some(&linked), StripeCustomerErasure::Delete);
    let anonymized =
        account_erasure_effects(&state, Some(&cus()), StripeCustomerErasure::Anonymize);

    let after = vec!["cancel_subscription:sub_1".to_owned()];
    assert_eq!(
        deleted,
        vec![
            Effect::CancelSubscription {
                subscription: sub_id(1),
                reason: CancelReason::AccountDeleted,
                dedupe_key: "cancel_subscription:sub_1".to_owned(),
            },
            Effect::DeleteStripeCustomer {
                customer: cus(),
                erasure: StripeCustomerErasure::Delete,
                after: after.clone(),
                dedupe_key: "delete_stripe_customer:cus_1".to_owned(),
            },
            Effect::DeleteStripeCustomer {
                customer: linked,
                erasure: StripeCustomerErasure::Delete,
                after: after.clone(),
                dedupe_key: "delete_stripe_customer:cus_2".to_owned(),
            },
        ]
    );
    assert_eq!(
        keys(&anonymized),
        [
            "cancel_subscription:sub_1",
            "anonymize_stripe_customer:cus_1"
        ]
    );
}

#[test]
fn erasing_personal_data_keeps_the_billing_history() {
    let catalog = Catalog::seed();
    let customer = StripeCustomer {
        id: cus(),
        created: Some(T0),
        email: Some("jenny@example.com".to_owned()),
        metadata: BTreeMap::from([("billd_customer_id".to_owned(), "user_1".to_owned())]),
    };
    let mut state = card_state(8, 2030);
    for e in [
        event(
            "evt_2",
            T0,
            EventKind::Customer {
                change: CustomerChange::Created,
                customer,
            },
        ),
        updated(
            "evt_3",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        invoice_event("evt_4", T0, InvoiceChange::Paid, invoice(1, 1)),
    ] {
        state = apply(&state, &e, &catalog, T0).state;
    }
    let erased = erase_personal_data(&state);
    let json = serde_json::to_string(&erased).unwrap();
    assert!(
        !json.contains("jenny@example.com") && !json.contains("4242") && !json.contains("user_1"),
        "{json}"
    );
    assert_eq!(
        erased.subscriptions.keys().collect::<Vec<_>>(),
        state.subscriptions.keys().collect::<Vec<_>>()
    );
    assert_eq!(erased.invoices.len(), 1);
    assert_eq!(erased.applied_facts, state.applied_facts);
}

#[test]
fn grace_expiry_suspends_access_once_with_an_audit_row_and_an_email() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::PastDue, T0),
        )],
        T0,
    );
    let until = T0 + 3 * DAY;
    assert!(
        grace_expiry(&state, &catalog, until - 1).is_none(),
        "still in grace"
    );

    let decision = grace_expiry(&state, &catalog, until + 60).expect("grace is over");

    let key = format!("access_suspended:sub_1:{until}");
    assert_eq!(keys(&decision.effects), vec![key.clone()]);
    match &decision.effects[0] {
        Effect::Email {
            template, params, ..
        } => {
            assert_eq!(*template, EmailTemplate::AccessSuspended);
            assert_eq!(params["grace_until"], until.to_string());
            assert_eq!(params["subscription"], "sub_1");
        }
        other => panic!("not an email: {other:?}"),
    }
    assert_eq!(decision.audit.len(), 1);
    let audit = &decision.audit[0];
    assert_eq!(
        (
            audit.field.as_str(),
            audit.before.as_deref(),
            audit.after.as_deref()
        ),
        ("access", Some("grace"), Some("blocked"))
    );
    assert_eq!(audit.reason, key);
    assert!(decision.state.applied_facts.contains(&key));
    assert!(
        grace_expiry(&decision.state, &catalog, until + 120).is_none(),
        "recorded once"
    );
}

#[test]
fn no_suspension_notice_while_paid_or_long_after_the_grace_period_ended() {
    let catalog = Catalog::seed();
    let active = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    assert!(grace_expiry(&active, &catalog, T0 + 10 * DAY).is_none());
    let past_due = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::PastDue, T0),
        )],
        T0,
    );
    assert!(grace_expiry(&past_due, &catalog, T0 + 3 * DAY + 8 * DAY).is_none());
}
