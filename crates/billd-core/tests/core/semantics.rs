//! The lifecycle semantics of issue 4, one test each.

use std::collections::BTreeMap;

use billd_core::event::{
    Coupon, Discount, DiscountChange, DisputeChange, DisputeStatus, InvoiceChange, StripeCustomer,
    SubscriptionChange, SubscriptionStatus,
};
use billd_core::{
    apply, check_consume, entitlements, usage_key, Access, Catalog, ConsumeError, CustomerId,
    CustomerState, DiscountId, Effect, EmailTemplate, EventKind, Outcome, RefundPolicy, Usage,
    UsageKey,
};

use crate::support::*;

fn dedupe_keys(effects: &[Effect]) -> Vec<String> {
    effects.iter().map(|e| e.dedupe_key().to_owned()).collect()
}

#[test]
fn renewal_starts_a_fresh_metered_counter_for_the_new_period() {
    // Arrange: pro, 20 generations used in the first period.
    let catalog = Catalog::seed();
    let first = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    let key = usage_key(&first, &catalog, &feature("generations"), T0 + DAY).unwrap();
    let usage = Usage::new().with(key.clone(), 20);
    assert_eq!(
        entitlements(&first, &catalog, &usage, T0 + DAY).features[&feature("generations")]
            .remaining,
        5
    );

    // Act: the renewal snapshot moves the item period forward.
    let renewed = apply(
        &first,
        &updated(
            "evt_2",
            T0 + 30 * DAY,
            subscription(1, "pro", SubscriptionStatus::Active, T0 + 30 * DAY),
        ),
        &catalog,
        T0 + 30 * DAY,
    )
    .state;

    // Assert: the new period reads a new, empty counter; the old one is untouched.
    let ent = entitlements(&renewed, &catalog, &usage, T0 + 30 * DAY + 1);
    let generations = &ent.features[&feature("generations")];
    assert_eq!(
        (generations.limit, generations.used, generations.remaining),
        (25, 0, 25)
    );
    assert_eq!(generations.resets_at, Some(T0 + 60 * DAY));
    assert_ne!(generations.usage_key, key);
}

#[test]
fn past_due_keeps_access_for_the_grace_period_from_when_it_first_became_past_due_then_blocks() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            updated(
                "evt_2",
                T0 + DAY,
                subscription(1, "pro", SubscriptionStatus::PastDue, T0),
            ),
            // A later update while still past_due must not restart the clock.
            updated(
                "evt_3",
                T0 + 2 * DAY,
                subscription(1, "pro", SubscriptionStatus::PastDue, T0),
            ),
        ],
        T0 + 2 * DAY,
    );
    let grace_until = T0 + DAY + 3 * DAY;
    assert_eq!(
        state.subscriptions[&sub_id(1)].past_due_since,
        Some(T0 + DAY)
    );

    let during = entitlements(&state, &catalog, &Usage::new(), grace_until - 1);
    assert_eq!(
        (during.access, during.grace_until, during.plan.as_str()),
        (Access::Grace, Some(grace_until), "pro")
    );
    assert_eq!(during.features[&feature("generations")].remaining, 25);

    let after = entitlements(&state, &catalog, &Usage::new(), grace_until);
    assert_eq!(after.access, Access::Blocked);
    assert_eq!(after.features[&feature("generations")].remaining, 0);
    assert_eq!(
        check_consume(&after, &feature("generations"), 1),
        Err(ConsumeError::NoAccess(Access::Blocked))
    );
}

#[test]
fn paying_after_past_due_clears_past_due_since_and_restores_paid_access() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::PastDue, T0),
            ),
            invoice_event("evt_2", T0 + 5 * DAY, InvoiceChange::Paid, invoice(1, 2)),
            updated(
                "evt_3",
                T0 + 5 * DAY,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
        ],
        T0 + 5 * DAY,
    );
    assert_eq!(state.subscriptions[&sub_id(1)].past_due_since, None);
    let ent = entitlements(&state, &catalog, &Usage::new(), T0 + 5 * DAY);
    assert_eq!((ent.access, ent.grace_until), (Access::Paid, None));
}

#[test]
fn incomplete_subscription_grants_only_the_free_plan_until_paid() {
    let catalog = Catalog::seed();
    let incomplete = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Incomplete, T0),
        )],
        T0,
    );
    let ent = entitlements(&incomplete, &catalog, &Usage::new(), T0);
    assert_eq!(
        (ent.access, ent.plan.as_str(), ent.status.as_str()),
        (Access::Free, "free", "incomplete")
    );
    assert_eq!(ent.features[&feature("generations")].limit, 3);

    let paid = apply(
        &incomplete,
        &updated(
            "evt_2",
            T0 + 60,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 60,
    );
    let ent = entitlements(&paid.state, &catalog, &Usage::new(), T0 + 60);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Paid, "pro"));
    assert!(dedupe_keys(&paid.effects).contains(&"subscription_confirmed:sub_1".to_owned()));
}

#[test]
fn payment_action_required_shows_the_hosted_invoice_url_until_the_invoice_is_paid() {
    let catalog = Catalog::seed();
    let base = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Incomplete, T0),
        )],
        T0,
    );
    let pending = apply(
        &base,
        &invoice_event(
            "evt_2",
            T0 + 1,
            InvoiceChange::PaymentActionRequired,
            invoice(1, 1),
        ),
        &catalog,
        T0 + 1,
    );
    let ent = entitlements(&pending.state, &catalog, &Usage::new(), T0 + 1);
    let action = ent.action_required.expect("an action is required");
    assert_eq!(
        action.url.as_deref(),
        Some("https://invoice.stripe.com/i/in_1")
    );
    assert_eq!(action.invoice.as_str(), "in_1");
    assert!(pending.effects.iter().any(|e| matches!(
        e,
        Effect::Email {
            template: EmailTemplate::ActionRequired,
            ..
        }
    )));

    let paid = apply(
        &pending.state,
        &invoice_event("evt_3", T0 + 100, InvoiceChange::Paid, invoice(1, 1)),
        &catalog,
        T0 + 100,
    );
    assert_eq!(
        entitlements(&paid.state, &catalog, &Usage::new(), T0 + 100).action_required,
        None
    );
}

#[test]
fn open_dispute_freezes_access_and_a_won_dispute_restores_it() {
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
    let opened = apply(
        &active,
        &dispute_event(
            "evt_2",
            T0 + 1,
            DisputeChange::Created,
            dispute(1, DisputeStatus::NeedsResponse),
        ),
        &catalog,
        T0 + 1,
    );
    let ent = entitlements(&opened.state, &catalog, &Usage::new(), T0 + 1);
    assert_eq!(ent.access, Access::Frozen);
    assert_eq!(
        check_consume(&ent, &feature("generations"), 1),
        Err(ConsumeError::NoAccess(Access::Frozen))
    );
    let keys = dedupe_keys(&opened.effects);
    assert!(keys.contains(&"dispute_opened:dp_1".to_owned()), "{keys:?}");
    assert!(
        keys.contains(&"chargeback_notice:dp_1".to_owned()),
        "{keys:?}"
    );

    let won = apply(
        &opened.state,
        &dispute_event(
            "evt_3",
            T0 + 2,
            DisputeChange::Closed,
            dispute(1, DisputeStatus::Won),
        ),
        &catalog,
        T0 + 2,
    );
    let ent = entitlements(&won.state, &catalog, &Usage::new(), T0 + 2);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Paid, "pro"));
    assert!(!won
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelSubscription { .. })));
}

#[test]
fn lost_dispute_keeps_paid_access_revoked_and_cancels_the_subscription_at_stripe() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            dispute_event(
                "evt_2",
                T0 + 1,
                DisputeChange::Created,
                dispute(1, DisputeStatus::NeedsResponse),
            ),
        ],
        T0 + 1,
    );
    let lost = apply(
        &state,
        &dispute_event(
            "evt_3",
            T0 + 2,
            DisputeChange::Closed,
            dispute(1, DisputeStatus::Lost),
        ),
        &catalog,
        T0 + 2,
    );
    let ent = entitlements(&lost.state, &catalog, &Usage::new(), T0 + 2);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Free, "free"));
    assert!(lost.effects.contains(&Effect::CancelSubscription {
        subscription: sub_id(1),
        reason: billd_core::CancelReason::DisputeLost,
        dedupe_key: "cancel_subscription:sub_1".to_owned(),
    }));
    // A later (older-second) update of the same subscription does not restore access.
    let late = apply(
        &lost.state,
        &updated(
            "evt_4",
            T0 + 3,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 3,
    );
    assert_eq!(
        entitlements(&late.state, &catalog, &Usage::new(), T0 + 3).access,
        Access::Free
    );
}

#[test]
fn full_refund_downgrades_to_free_and_cancels_under_the_default_policy() {
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
    let refunded = apply(
        &active,
        &refund_event("evt_2", T0 + 10, 1, 900),
        &catalog,
        T0 + 10,
    );
    let ent = entitlements(&refunded.state, &catalog, &Usage::new(), T0 + 10);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Free, "free"));
    let keys = dedupe_keys(&refunded.effects);
    assert!(
        keys.contains(&"cancel_subscription:sub_1".to_owned()),
        "{keys:?}"
    );
    assert!(
        keys.contains(&"refund_issued:ch_1:900".to_owned()),
        "{keys:?}"
    );
}

#[test]
fn full_refund_is_only_recorded_under_the_record_only_policy() {
    let catalog = Catalog::seed().with_refund_policy(RefundPolicy::RecordOnly);
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            refund_event("evt_2", T0 + 10, 1, 900),
        ],
        T0 + 10,
    );
    assert!(state.refunds[&billd_core::ChargeId::parse("ch_1").unwrap()].refunded);
    assert_eq!(
        entitlements(&state, &catalog, &Usage::new(), T0 + 10).access,
        Access::Paid
    );
}

#[test]
fn partial_refund_is_recorded_without_changing_access() {
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
    let partial = apply(
        &active,
        &refund_event("evt_2", T0 + 10, 1, 300),
        &catalog,
        T0 + 10,
    );
    let refund = &partial.state.refunds[&billd_core::ChargeId::parse("ch_1").unwrap()];
    assert_eq!((refund.amount_refunded, refund.refunded), (300, false));
    assert_eq!(
        entitlements(&partial.state, &catalog, &Usage::new(), T0 + 10).access,
        Access::Paid
    );
    assert!(!partial
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CancelSubscription { .. })));
    assert!(partial.audit.iter().any(
        |a| a.field == "refund.ch_1.amount_refunded" && a.after.as_deref() == Some("3.00 EUR")
    ));
}

#[test]
fn deleted_stripe_customer_clears_the_link_and_falls_back_to_free_keeping_history() {
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
    assert_eq!(active.stripe_customer(), Some(&cus()));
    let customer = StripeCustomer {
        id: cus(),
        created: Some(T0 - DAY),
        email: Some("a@example.com".to_owned()),
        metadata: BTreeMap::new(),
    };
    let gone = apply(
        &active,
        &event("evt_2", T0 + 5, EventKind::CustomerDeleted { customer }),
        &catalog,
        T0 + 5,
    );
    assert_eq!(gone.state.stripe_customer(), None);
    assert!(
        gone.state.subscriptions.contains_key(&sub_id(1)),
        "history is kept"
    );
    let ent = entitlements(&gone.state, &catalog, &Usage::new(), T0 + 5);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Free, "free"));
    assert!(gone
        .audit
        .iter()
        .any(|a| a.field == "stripe_customer" && a.after.as_deref() == Some("none")));
}

#[test]
fn downgrade_below_usage_keeps_usage_and_blocks_new_consumption_until_under_the_limit() {
    let catalog = Catalog::seed();
    let pro = fold(
        &catalog,
        &[updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    let key = usage_key(&pro, &catalog, &feature("generations"), T0).unwrap();
    let websites = UsageKey {
        feature: feature("websites"),
        period_start: None,
    };
    let usage = Usage::new().with(key, 15).with(websites, 5);

    let downgrade = apply(
        &pro,
        &updated(
            "evt_2",
            T0 + DAY,
            subscription(1, "standard", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + DAY,
    );
    assert!(dedupe_keys(&downgrade.effects).contains(&"plan_changed:sub_1:evt_2".to_owned()));
    let ent = entitlements(&downgrade.state, &catalog, &usage, T0 + DAY);
    let generations = &ent.features[&feature("generations")];
    assert_eq!(
        (
            generations.limit,
            generations.used,
            generations.remaining,
            generations.over_limit
        ),
        (10, 15, 0, true)
    );
    assert!(matches!(
        check_consume(&ent, &feature("generations"), 1),
        Err(ConsumeError::QuotaExceeded {
            limit: 10,
            used: 15,
            requested: 1
        })
    ));
    assert!(ent.features[&feature("websites")].over_limit);
}

#[test]
fn discounts_are_recorded_and_shown_until_deleted() {
    let catalog = Catalog::seed();
    let discount = Discount {
        id: DiscountId::parse("di_1").unwrap(),
        customer: Some(cus()),
        subscription: Some(sub_id(1)),
        coupon: Some(Coupon {
            id: "LAUNCH".to_owned(),
            name: Some("Launch".to_owned()),
            percent_off_bp: Some(2000),
            amount_off: None,
            duration: Some("once".to_owned()),
        }),
        promotion_code: Some("promo_1".to_owned()),
        start: Some(T0),
        end: None,
    };
    let created = fold(
        &catalog,
        &[
            updated(
                "evt_0",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            event(
                "evt_1",
                T0,
                EventKind::Discount {
                    change: DiscountChange::Created,
                    discount: discount.clone(),
                },
            ),
        ],
        T0,
    );
    // Once its subscription has ended, a subscription discount is not shown.
    let ended = apply(
        &created,
        &deleted(
            "evt_9",
            T0 + 5,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 5,
    );
    assert_eq!(
        entitlements(&ended.state, &catalog, &Usage::new(), T0 + 5).discount,
        None
    );
    let shown = entitlements(&created, &catalog, &Usage::new(), T0)
        .discount
        .expect("discount shown");
    assert_eq!(
        (
            shown.coupon.as_deref(),
            shown.percent_off_bp,
            shown.promotion_code.as_deref()
        ),
        (Some("LAUNCH"), Some(2000), Some("promo_1"))
    );

    let gone = apply(
        &created,
        &event(
            "evt_2",
            T0 + 1,
            EventKind::Discount {
                change: DiscountChange::Deleted,
                discount: discount.clone(),
            },
        ),
        &catalog,
        T0 + 1,
    );
    assert_eq!(
        entitlements(&gone.state, &catalog, &Usage::new(), T0 + 1).discount,
        None
    );
    // An update delivered after the deletion does not bring it back.
    let late = apply(
        &gone.state,
        &event(
            "evt_3",
            T0 + 2,
            EventKind::Discount {
                change: DiscountChange::Updated,
                discount,
            },
        ),
        &catalog,
        T0 + 2,
    );
    assert_eq!(late.outcome, Outcome::Stale);
}

#[test]
fn trialing_counts_as_paid_and_shows_the_trial_end() {
    let catalog = Catalog::seed();
    let mut trial = subscription(1, "standard", SubscriptionStatus::Trialing, T0);
    trial.trial_end = Some(T0 + 14 * DAY);
    let state = fold(
        &catalog,
        &[event(
            "evt_1",
            T0,
            EventKind::Subscription {
                change: SubscriptionChange::Created,
                subscription: trial.clone(),
            },
        )],
        T0,
    );
    let ent = entitlements(&state, &catalog, &Usage::new(), T0);
    assert_eq!(
        (ent.access, ent.plan.as_str(), ent.trial_end),
        (Access::Paid, "standard", Some(T0 + 14 * DAY))
    );

    let ending = apply(
        &state,
        &event(
            "evt_2",
            T0 + 11 * DAY,
            EventKind::Subscription {
                change: SubscriptionChange::TrialWillEnd,
                subscription: trial,
            },
        ),
        &catalog,
        T0 + 11 * DAY,
    );
    assert!(dedupe_keys(&ending.effects).contains(&format!("trial_ending:sub_1:{}", T0 + 14 * DAY)));
}

#[test]
fn an_older_snapshot_delivered_late_is_ignored() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[updated(
            "evt_2",
            T0 + 10,
            subscription(1, "pro", SubscriptionStatus::Canceled, T0),
        )],
        T0,
    );
    let late = apply(
        &state,
        &updated(
            "evt_1",
            T0,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 20,
    );
    assert_eq!(late.outcome, Outcome::Stale);
    assert_eq!(
        late.state.subscriptions[&sub_id(1)].snapshot.status,
        SubscriptionStatus::Canceled
    );
    assert!(late.audit.is_empty());
}

#[test]
fn same_second_snapshots_follow_the_documented_precedence_and_ask_for_a_refetch() {
    let catalog = Catalog::seed();
    let past_due = updated(
        "evt_a",
        T0,
        subscription(1, "pro", SubscriptionStatus::PastDue, T0),
    );
    let active = updated(
        "evt_b",
        T0,
        subscription(1, "pro", SubscriptionStatus::Active, T0),
    );
    for order in [
        [past_due.clone(), active.clone()],
        [active.clone(), past_due.clone()],
    ] {
        let first = apply(&CustomerState::default(), &order[0], &catalog, T0);
        let second = apply(&first.state, &order[1], &catalog, T0);
        assert_eq!(
            second.state.subscriptions[&sub_id(1)].snapshot.status,
            SubscriptionStatus::PastDue
        );
        assert!(second.effects.contains(&Effect::RefetchSubscription {
            subscription: sub_id(1),
            tie_created: T0,
            round: 0,
            dedupe_key: format!("refetch_subscription:sub_1:{T0}"),
        }));
    }
}

#[test]
fn an_authoritative_refetch_wins_a_same_second_tie() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_a",
                T0,
                subscription(1, "pro", SubscriptionStatus::PastDue, T0),
            ),
            updated(
                "evt_b",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
        ],
        T0,
    );
    let mut refetched = updated(
        "evt_b",
        T0,
        subscription(1, "pro", SubscriptionStatus::Active, T0),
    );
    refetched.authoritative = true;
    let decision = apply(&state, &refetched, &catalog, T0 + 1);
    assert_eq!(
        decision.state.subscriptions[&sub_id(1)].snapshot.status,
        SubscriptionStatus::Active
    );
    assert!(!decision
        .effects
        .iter()
        .any(|e| matches!(e, Effect::RefetchSubscription { .. })));
    // Another webhook payload of that same second no longer overrides it.
    let again = apply(
        &decision.state,
        &updated(
            "evt_c",
            T0,
            subscription(1, "pro", SubscriptionStatus::Unpaid, T0),
        ),
        &catalog,
        T0 + 1,
    );
    assert_eq!(again.outcome, Outcome::Stale);
}

#[test]
fn a_deleted_subscription_is_terminal() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[deleted(
            "evt_9",
            T0 + 10,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        )],
        T0,
    );
    let newer = apply(
        &state,
        &updated(
            "evt_10",
            T0 + 20,
            subscription(1, "pro", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 20,
    );
    assert_eq!(newer.outcome, Outcome::Stale);
    let ent = entitlements(&newer.state, &catalog, &Usage::new(), T0 + 20);
    assert_eq!(
        (ent.access, ent.status.as_str()),
        (Access::Free, "canceled")
    );
}

#[test]
fn a_duplicate_fact_event_is_applied_once_without_a_second_effect() {
    let catalog = Catalog::seed();
    let paid = invoice_event("evt_1", T0, InvoiceChange::Paid, invoice(1, 1));
    let first = apply(&CustomerState::default(), &paid, &catalog, T0);
    assert_eq!(first.outcome, Outcome::Applied);
    assert_eq!(
        dedupe_keys(&first.effects),
        vec!["payment_succeeded:in_1".to_owned()]
    );
    let second = apply(&first.state, &paid, &catalog, T0);
    assert_eq!(second.outcome, Outcome::Duplicate);
    assert!(second.effects.is_empty() && second.audit.is_empty());
    assert_eq!(second.state, first.state);
    // invoice.payment_succeeded for the same invoice sends no second email.
    let succeeded = apply(
        &second.state,
        &invoice_event("evt_2", T0, InvoiceChange::PaymentSucceeded, invoice(1, 1)),
        &catalog,
        T0,
    );
    assert!(succeeded.effects.is_empty());
}

#[test]
fn each_failed_payment_attempt_has_its_own_dedupe_key() {
    let catalog = Catalog::seed();
    let first = apply(
        &CustomerState::default(),
        &invoice_event("evt_1", T0, InvoiceChange::PaymentFailed, invoice(1, 1)),
        &catalog,
        T0,
    );
    let second = apply(
        &first.state,
        &invoice_event(
            "evt_2",
            T0 + DAY,
            InvoiceChange::PaymentFailed,
            invoice(1, 2),
        ),
        &catalog,
        T0 + DAY,
    );
    assert_eq!(
        dedupe_keys(&first.effects),
        vec!["payment_failed:in_1:1".to_owned()]
    );
    assert_eq!(
        dedupe_keys(&second.effects),
        vec!["payment_failed:in_1:2".to_owned()]
    );
    assert_eq!(
        second.state.invoices[&billd_core::InvoiceId::parse("in_1").unwrap()].failed_attempts,
        2
    );
}

#[test]
fn a_dispute_closed_before_its_creation_is_delivered_stays_closed() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            dispute_event(
                "evt_2",
                T0 + 5,
                DisputeChange::Closed,
                dispute(1, DisputeStatus::Won),
            ),
            dispute_event(
                "evt_1",
                T0 + 1,
                DisputeChange::Created,
                dispute(1, DisputeStatus::NeedsResponse),
            ),
            dispute_event(
                "evt_3",
                T0 + 9,
                DisputeChange::Updated,
                dispute(1, DisputeStatus::UnderReview),
            ),
        ],
        T0 + 9,
    );
    assert!(!state.has_open_dispute());
    assert_eq!(
        entitlements(&state, &catalog, &Usage::new(), T0 + 9).access,
        Access::Free
    );
}

#[test]
fn every_state_change_is_audited_with_the_event_that_caused_it() {
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
    let decision = apply(
        &active,
        &updated(
            "evt_2",
            T0 + DAY,
            subscription(1, "pro", SubscriptionStatus::PastDue, T0),
        ),
        &catalog,
        T0 + DAY,
    );
    let fields: Vec<(&str, Option<&str>, Option<&str>)> = decision
        .audit
        .iter()
        .map(|a| (a.field.as_str(), a.before.as_deref(), a.after.as_deref()))
        .collect();
    assert!(
        fields.contains(&(
            "subscription.sub_1.status",
            Some("active"),
            Some("past_due")
        )),
        "{fields:?}"
    );
    assert!(
        fields.contains(&("access", Some("paid"), Some("grace"))),
        "{fields:?}"
    );
    let since = (T0 + DAY).to_string();
    assert!(
        fields.contains(&(
            "subscription.sub_1.past_due_since",
            Some("none"),
            Some(since.as_str())
        )),
        "{fields:?}"
    );
    assert!(decision.audit.iter().all(|a| a.reason == "evt_2"
        && a.event_type == "customer.subscription.updated"
        && a.at == T0 + DAY));
}

#[test]
fn a_price_missing_from_the_catalog_gives_the_free_plan_and_alerts_the_operator() {
    let catalog = Catalog::seed();
    let mut odd = subscription(1, "pro", SubscriptionStatus::Active, T0);
    odd.price = odd.price.map(|mut p| {
        p.id = billd_core::PriceId::parse("price_legacy").unwrap();
        p.lookup_key = None;
        p
    });
    odd.metadata.clear();
    let decision = apply(
        &CustomerState::default(),
        &updated("evt_1", T0, odd),
        &catalog,
        T0,
    );
    assert!(dedupe_keys(&decision.effects).contains(&"unknown_price:sub_1:price_legacy".to_owned()));
    let ent = entitlements(&decision.state, &catalog, &Usage::new(), T0);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Paid, "free"));
}

#[test]
fn the_plan_falls_back_to_the_billd_plan_metadata() {
    let catalog = Catalog::seed();
    let mut sub = subscription(1, "pro", SubscriptionStatus::Active, T0);
    sub.price = sub.price.map(|mut p| {
        p.id = billd_core::PriceId::parse("price_unbound").unwrap();
        p.lookup_key = None;
        p
    });
    sub.metadata
        .insert("billd_plan".to_owned(), "standard".to_owned());
    let state = fold(&catalog, &[updated("evt_1", T0, sub)], T0);
    assert_eq!(
        entitlements(&state, &catalog, &Usage::new(), T0)
            .plan
            .as_str(),
        "standard"
    );
}

#[test]
fn quota_arithmetic_allows_up_to_the_limit_and_no_further() {
    let catalog = Catalog::seed();
    let state = CustomerState::default();
    let key = usage_key(&state, &catalog, &feature("generations"), T0).unwrap();
    let ent = entitlements(&state, &catalog, &Usage::new().with(key, 2), T0);
    assert_eq!(check_consume(&ent, &feature("generations"), 1), Ok(3));
    assert!(matches!(
        check_consume(&ent, &feature("generations"), 2),
        Err(ConsumeError::QuotaExceeded { .. })
    ));
    assert_eq!(
        check_consume(&ent, &feature("generations"), u64::MAX)
            .unwrap_err()
            .code(),
        "quota_exceeded"
    );
    assert_eq!(
        check_consume(&ent, &feature("generations"), 0)
            .unwrap_err()
            .code(),
        "invalid_amount"
    );
    assert_eq!(
        check_consume(&ent, &feature("exports"), 1)
            .unwrap_err()
            .code(),
        "unknown_feature"
    );
}

#[test]
fn free_customers_count_metered_usage_per_utc_calendar_month() {
    let catalog = Catalog::seed();
    let state = CustomerState::default();
    // 2026-11-15 → November 2026.
    let ent = entitlements(&state, &catalog, &Usage::new(), T0 + 14 * DAY + 3600);
    let generations = &ent.features[&feature("generations")];
    assert_eq!(generations.usage_key.period_start, Some(T0));
    assert_eq!(generations.resets_at, Some(T0 + 30 * DAY));
    // 2026-12-31 → December, resetting on 2027-01-01 (1798761600).
    let december = entitlements(&state, &catalog, &Usage::new(), T0 + 60 * DAY);
    assert_eq!(
        december.features[&feature("generations")].resets_at,
        Some(1_798_761_600)
    );
    assert_eq!(ent.status, "none");
    let keys = billd_core::usage_keys(&state, &catalog, T0 + 14 * DAY + 3600);
    let in_entitlements: Vec<UsageKey> =
        ent.features.values().map(|f| f.usage_key.clone()).collect();
    assert_eq!(keys, in_entitlements);
    assert_eq!(
        ent.features[&feature("websites")].usage_key.period_start,
        None
    );
}

#[test]
fn link_hints_extract_the_billd_customer_id_from_metadata() {
    let e = updated(
        "evt_1",
        T0,
        subscription(1, "pro", SubscriptionStatus::Active, T0),
    );
    let hints = e.link_hints();
    assert_eq!(
        hints.billd_customer_id,
        Some(CustomerId::parse("user_1").unwrap())
    );
    assert_eq!(hints.stripe_customer, Some(cus()));
    assert_eq!(e.object_id().as_deref(), Some("sub_1"));
    assert_eq!(e.event_type(), "customer.subscription.updated");
}

#[test]
fn customer_state_round_trips_through_json_for_the_store() {
    let catalog = Catalog::seed();
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            updated(
                "evt_2",
                T0 + DAY,
                subscription(1, "pro", SubscriptionStatus::PastDue, T0),
            ),
            invoice_event(
                "evt_3",
                T0 + DAY,
                InvoiceChange::PaymentFailed,
                invoice(1, 1),
            ),
            dispute_event(
                "evt_4",
                T0 + DAY,
                DisputeChange::Created,
                dispute(1, DisputeStatus::NeedsResponse),
            ),
            refund_event("evt_5", T0 + DAY, 1, 300),
        ],
        T0 + DAY,
    );
    let json = serde_json::to_string(&state).unwrap();
    let back: CustomerState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, state);
}

#[test]
fn entitlements_serialise_to_the_documented_shape() {
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
    let value = serde_json::to_value(entitlements(&state, &catalog, &Usage::new(), T0)).unwrap();
    assert_eq!(value["plan"], "pro");
    assert_eq!(value["status"], "active");
    assert_eq!(value["access"], "paid");
    assert!(
        value["grace_until"].is_null()
            && value["trial_end"].is_null()
            && value["action_required"].is_null()
    );
    assert_eq!(value["cancel_at_period_end"], false);
    let generations = &value["features"]["generations"];
    assert_eq!(
        (
            generations["limit"].as_u64(),
            generations["used"].as_u64(),
            generations["remaining"].as_u64()
        ),
        (Some(25), Some(0), Some(25))
    );
    assert_eq!(generations["resets_at"].as_i64(), Some(T0 + 30 * DAY));
    assert!(value["features"]["websites"]["resets_at"].is_null());
}

#[test]
fn a_second_incomplete_subscription_does_not_take_access_from_the_paid_one() {
    let catalog = Catalog::seed();
    let mut second = subscription(2, "pro", SubscriptionStatus::Incomplete, T0);
    second.created = T0 + DAY;
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "standard", SubscriptionStatus::Active, T0),
            ),
            updated("evt_2", T0 + DAY, second.clone()),
        ],
        T0 + DAY,
    );
    let ent = entitlements(&state, &catalog, &Usage::new(), T0 + DAY);
    assert_eq!((ent.access, ent.plan.as_str()), (Access::Paid, "standard"));

    // Its pending 3-D Secure confirmation is shown; once it expires it is not.
    let mut sca = invoice(7, 1);
    sca.subscription = Some(sub_id(2));
    let pending = apply(
        &state,
        &invoice_event("evt_3", T0 + DAY, InvoiceChange::PaymentActionRequired, sca),
        &catalog,
        T0 + DAY,
    );
    assert!(
        entitlements(&pending.state, &catalog, &Usage::new(), T0 + DAY)
            .action_required
            .is_some()
    );
    second.status = SubscriptionStatus::IncompleteExpired;
    let expired = apply(
        &pending.state,
        &updated("evt_4", T0 + 2 * DAY, second.clone()),
        &catalog,
        T0 + 2 * DAY,
    );
    assert_eq!(
        entitlements(&expired.state, &catalog, &Usage::new(), T0 + 2 * DAY).action_required,
        None
    );

    // Ending it sends no cancellation email: it never started.
    let gone = apply(
        &expired.state,
        &deleted("evt_5", T0 + 2 * DAY + 1, second),
        &catalog,
        T0 + 2 * DAY + 1,
    );
    assert!(!gone.effects.iter().any(|e| matches!(
        e,
        Effect::Email {
            template: EmailTemplate::SubscriptionCanceled,
            ..
        }
    )));

    // Ending the paid one does.
    let canceled = apply(
        &gone.state,
        &deleted(
            "evt_6",
            T0 + 3 * DAY,
            subscription(1, "standard", SubscriptionStatus::Active, T0),
        ),
        &catalog,
        T0 + 3 * DAY,
    );
    assert!(canceled
        .effects
        .iter()
        .any(|e| e.dedupe_key() == "subscription_canceled:sub_1"));
}

#[test]
fn under_the_at_period_end_policy_a_downgrade_keeps_metered_limits_until_renewal() {
    let catalog = Catalog::seed().with_downgrade_policy(billd_core::DowngradePolicy::AtPeriodEnd);
    let state = fold(
        &catalog,
        &[
            updated(
                "evt_1",
                T0,
                subscription(1, "pro", SubscriptionStatus::Active, T0),
            ),
            updated(
                "evt_2",
                T0 + DAY,
                subscription(1, "standard", SubscriptionStatus::Active, T0),
            ),
        ],
        T0 + DAY,
    );
    let ent = entitlements(&state, &catalog, &Usage::new(), T0 + DAY);
    assert_eq!(ent.plan.as_str(), "standard");
    assert_eq!(
        ent.features[&feature("generations")].limit,
        25,
        "metered: the period's starting plan"
    );
    assert_eq!(
        ent.features[&feature("websites")].limit,
        3,
        "capacity: at once"
    );

    let renewed = apply(
        &state,
        &updated(
            "evt_3",
            T0 + 30 * DAY,
            subscription(1, "standard", SubscriptionStatus::Active, T0 + 30 * DAY),
        ),
        &catalog,
        T0 + 30 * DAY,
    );
    let ent = entitlements(&renewed.state, &catalog, &Usage::new(), T0 + 30 * DAY);
    assert_eq!(ent.features[&feature("generations")].limit, 10);
    // The default policy applies the lower limit at once.
    let immediate = entitlements(&state, &Catalog::seed(), &Usage::new(), T0 + DAY);
    assert_eq!(immediate.features[&feature("generations")].limit, 10);
}
