//! Reconciliation (issue 6): the emulator drops a share of webhook
//! deliveries during a scenario; `Reconciler` finds the subscriptions billd
//! got wrong, heals them through the lifecycle handler and ingests the
//! missed events, so that billd ends equal to Stripe.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_core::{Catalog, CustomerId, StripeSubscriptionId};
use billd_server::jobs::{DriftKind, ReconcileConfig, ReconcileReport, Reconciler};
use billd_server::{Clock, Metrics};
use billd_store::{EventFilter, EventStatus, Store};
use serde_json::Value;
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, DAY};

/// What reconciliation compares, as Stripe has it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    status: String,
    price: Option<String>,
    cancel_at_period_end: bool,
    period: (Option<i64>, Option<i64>),
}

fn stripe_view(sub: &Value) -> View {
    let item = &sub["items"]["data"][0];
    View {
        status: sub["status"].as_str().unwrap().to_string(),
        price: item["price"]["id"].as_str().map(str::to_string),
        cancel_at_period_end: sub["cancel_at_period_end"].as_bool().unwrap(),
        period: (
            item["current_period_start"].as_i64(),
            item["current_period_end"].as_i64(),
        ),
    }
}

/// billd's stored snapshot of `sub` for `customer`, if it has one.
async fn billd_view(h: &Harness, customer: &str, sub: &str) -> Option<View> {
    let record = h
        .store
        .get_customer(&CustomerId::parse(customer).unwrap())
        .await
        .unwrap()?;
    let state = record
        .state
        .subscriptions
        .get(&StripeSubscriptionId::parse(sub).unwrap())?;
    let s = &state.snapshot;
    Some(View {
        status: s.status.as_str().to_string(),
        price: s.price.as_ref().map(|p| p.id.to_string()),
        cancel_at_period_end: s.cancel_at_period_end,
        period: (s.current_period_start, s.current_period_end),
    })
}

/// Every subscription at the emulator whose metadata names a billd customer.
fn linked_subscriptions(h: &Harness) -> Vec<(String, String, Value)> {
    let list = h.stripe("GET", "/v1/subscriptions", "status=all&limit=100");
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            let customer = s["metadata"]["billd_customer_id"].as_str()?;
            Some((
                customer.to_string(),
                s["id"].as_str().unwrap().to_string(),
                s.clone(),
            ))
        })
        .collect()
}

/// Subscriptions billd holds differently from the emulator, read straight
/// from both sides.
async fn drifted(h: &Harness) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (customer, sub, object) in linked_subscriptions(h) {
        if billd_view(h, &customer, &sub).await != Some(stripe_view(&object)) {
            out.insert(sub);
        }
    }
    out
}

/// Waits until every non-dropped delivery has reached billd and billd has
/// applied everything it has (inbox and outbox idle): a last event is sent
/// with drops off, and deliveries go out in order.
async fn settle(h: &Harness) {
    h.sim.update_config(|c| c.webhooks.drop_rate = 0.0);
    let (_, plain) = h.customer("u_sentinel", "pm_card_visa", true).await;
    h.stripe(
        "POST",
        &format!("/v1/customers/{plain}"),
        "metadata[sentinel]=1",
    );
    let sentinel = h.sim.events().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let arrived = h.store.get_event(&sentinel).await.unwrap().is_some();
        let inbox = h.store.inbox_stats().await.unwrap();
        let processing = inbox
            .by_status
            .iter()
            .any(|(s, n)| *s == EventStatus::Processing && *n > 0);
        let outbox = h.store.outbox_stats().await.unwrap();
        if arrived
            && !processing
            && inbox.oldest_waiting_received_at.is_none()
            && outbox.oldest_waiting_created_at.is_none()
        {
            // One more look after a pause: an outbox re-fetch may just
            // have queued an event.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let inbox = h.store.inbox_stats().await.unwrap();
            if inbox.oldest_waiting_received_at.is_none() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "billd did not settle: {inbox:?} {outbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn reconciler(h: &Harness, metrics: Arc<Metrics>) -> Reconciler {
    let store: Arc<dyn Store> = h.store.clone();
    Reconciler::new(
        store,
        h.stripe_client.clone(),
        Arc::new(Catalog::seed()),
        h.clock.clone(),
        Some(metrics),
        ReconcileConfig {
            page_limit: 2,
            max_requests_per_sec: 500,
            page_retry_backoff: Duration::from_millis(20),
            settle_timeout: Duration::from_secs(20),
            ..ReconcileConfig::default()
        },
    )
}

/// Everything that a dry run must leave alone.
async fn persistent_state(h: &Harness) -> (Vec<String>, String, usize) {
    let events = h
        .store
        .list_events(&EventFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| format!("{} {}", e.id, e.status))
        .collect();
    let customers = h.store.list_customers(None, 0).await.unwrap();
    let mut audit = 0;
    let mut states = BTreeMap::new();
    for c in &customers {
        audit += h.store.list_audit(&c.customer_id, 0).await.unwrap().len();
        states.insert(
            c.customer_id.to_string(),
            serde_json::to_string(&c.state).unwrap(),
        );
    }
    (events, format!("{states:?}"), audit)
}

fn drift_total(metrics: &Metrics) -> u64 {
    [
        DriftKind::Missing,
        DriftKind::Status,
        DriftKind::Plan,
        DriftKind::CancelFlag,
        DriftKind::Period,
    ]
    .iter()
    .map(|k| metrics.reconcile_drift.get(k.as_str()))
    .sum()
}

fn rows(report: &ReconcileReport) -> Vec<String> {
    report
        .drift
        .iter()
        .map(|d| {
            format!(
                "{} {} {} {} -> {}",
                d.kind.as_str(),
                d.customer,
                d.subscription,
                d.billd,
                d.stripe
            )
        })
        .collect()
}

/// Several customers subscribe, renew, fail a payment, cancel, upgrade,
/// while the emulator drops 35% of deliveries (seeded, so the same ones
/// every run).
async fn run_scenario(h: &Harness) {
    let sub_item = |sub: &Value| sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let period_end = |sub: &Value| {
        sub["items"]["data"][0]["current_period_end"]
            .as_i64()
            .unwrap()
    };

    let (clock, cus) = h.customer("u_renew", "pm_card_visa", true).await;
    let sub = h.subscribe("u_renew", &cus, &h.standard_price);
    h.advance(&clock, period_end(&sub) + 3600);

    let (clock, cus) = h.customer("u_fail", "pm_card_visa", true).await;
    let sub = h.subscribe("u_fail", &cus, &h.standard_price);
    h.pay_with(&cus, "pm_card_chargeCustomerFail");
    h.advance(&clock, period_end(&sub) + 3600);

    let (_, cus) = h.customer("u_cancel", "pm_card_visa", true).await;
    let sub = h.subscribe("u_cancel", &cus, &h.pro_price);
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        "cancel_at_period_end=true",
    );

    let (clock, cus) = h.customer("u_upgrade", "pm_card_visa", true).await;
    let sub = h.subscribe("u_upgrade", &cus, &h.standard_price);
    h.advance(&clock, h.clock.now() + DAY);
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        &format!(
            "items[0][id]={}&items[0][price]={}&proration_behavior=none",
            sub_item(&sub),
            h.pro_price
        ),
    );

    let (_, cus) = h.customer("u_gone", "pm_card_visa", true).await;
    let sub = h.subscribe("u_gone", &cus, &h.pro_price);
    h.stripe(
        "DELETE",
        &format!("/v1/subscriptions/{}", sub["id"].as_str().unwrap()),
        "",
    );

    for user in ["u_plain_1", "u_plain_2", "u_plain_3"] {
        let (clock, cus) = h.customer(user, "pm_card_visa", true).await;
        let sub = h.subscribe(user, &cus, &h.standard_price);
        h.advance(&clock, period_end(&sub) + 60);
    }
}

async fn after_dropped_deliveries_reconciliation_makes_billd_equal_stripe(db: Db) {
    let start = t0();
    let knobs = WebhookKnobs {
        drop_rate: 0.35,
        ..WebhookKnobs::default()
    };
    let h = Harness::start(db, start, knobs).await;
    run_scenario(&h).await;
    // A Stripe customer and subscription billd cannot link (no metadata).
    let (_, stranger) = h.customer("u_stranger", "pm_card_visa", false).await;
    let stranger_sub = h.stripe(
        "POST",
        "/v1/subscriptions",
        &format!("customer={stranger}&items[0][price]={}", h.standard_price),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    settle(&h).await;

    // What billd missed: subscriptions it holds differently from Stripe,
    // each of which lost at least one delivery of its own events.
    let expected = drifted(&h).await;
    assert!(!expected.is_empty(), "the seed drops no state change");
    let dropped: BTreeSet<String> = h
        .sim
        .events()
        .iter()
        .filter(|e| {
            e["type"]
                .as_str()
                .unwrap()
                .starts_with("customer.subscription.")
        })
        .filter(|e| !h.sim.with_state(|s| s.delivered(e["id"].as_str().unwrap())))
        .filter_map(|e| e["data"]["object"]["id"].as_str().map(str::to_string))
        .collect();
    assert!(
        expected.is_subset(&dropped),
        "drift {expected:?} without dropped deliveries {dropped:?}"
    );
    let metrics = Arc::new(Metrics::default());
    let reconciler = reconciler(&h, metrics.clone());

    // A dry run reports and changes nothing.
    let before = persistent_state(&h).await;
    let dry = reconciler.run(true, None).await.unwrap();
    assert!(dry.dry_run);
    let dry_subs: BTreeSet<String> = dry.drift.iter().map(|d| d.subscription.clone()).collect();
    assert_eq!(dry_subs, expected, "{:#?}", dry.drift);
    assert!(!dry.missing_events.is_empty());
    assert_eq!(
        persistent_state(&h).await,
        before,
        "a dry run wrote something"
    );
    assert_eq!(drift_total(&metrics), 0);

    // The real run reports the same drift and heals it.
    let report = reconciler.run(false, None).await.unwrap();
    assert_eq!(rows(&report), rows(&dry));
    assert_eq!(report.missing_events, dry.missing_events);
    assert_eq!(report.events_ingested, dry.missing_events.len());
    assert!(report.not_settled.is_empty(), "{:?}", report.not_settled);
    assert_eq!(drift_total(&metrics), expected.len() as u64);
    assert_eq!(metrics.reconcile_runs.get(), 1);
    let by_kind = report.drift_by_kind();
    for kind in by_kind.keys() {
        assert_eq!(
            metrics.reconcile_drift.get(kind.as_str()),
            by_kind[kind] as u64
        );
    }
    settle(&h).await;

    for (customer, sub, object) in linked_subscriptions(&h) {
        assert_eq!(
            billd_view(&h, &customer, &sub).await,
            Some(stripe_view(&object)),
            "{customer} {sub}"
        );
    }
    for d in &report.drift {
        let audit = h.store.list_audit(&d.customer, 0).await.unwrap();
        assert!(
            audit.iter().any(|a| a.reason == d.heal_event),
            "no audit row for {} under {}",
            d.subscription,
            d.heal_event
        );
        assert!(d.heal_event.starts_with("evt_billd_reconcile_"));
    }
    let stranger_row = report
        .unlinked
        .iter()
        .find(|u| u.subscription == stranger_sub)
        .expect("the unlinked subscription is reported");
    let parked = h
        .store
        .get_event(&stranger_row.event)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(parked.status, EventStatus::Unlinked);
    for id in &report.missing_events {
        assert!(h.store.get_event(id).await.unwrap().is_some(), "{id}");
    }

    // Nothing is left to heal.
    let again = reconciler.run(false, None).await.unwrap();
    assert!(again.drift.is_empty(), "{:#?}", again.drift);
    assert!(again.missing_events.is_empty());
    assert_eq!(again.heal_events_inserted, 0);
    assert_eq!(again.unlinked.len(), 1);
    assert_eq!(drift_total(&metrics), expected.len() as u64);

    // Both real runs are recorded for operators, newest first; the dry run is not.
    let (status, runs) = h
        .admin_get("/v1/admin/reconciliation", Some(crate::support::ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{runs}");
    let runs = runs["data"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["drift"], 0);
    assert_eq!(runs[1]["drift"], report.drift.len() as i64);
    assert_eq!(runs[1]["checked"], report.subscriptions_checked as i64);
    assert_eq!(runs[1]["unlinked"], 1);
    assert_eq!(
        runs[1]["report"]["drift"].as_array().unwrap().len(),
        report.drift.len()
    );
    let (_, overview) = h
        .admin_get("/v1/admin/overview", Some(crate::support::ADMIN_KEY))
        .await;
    assert_eq!(overview["last_reconciliation"]["drift"], 0, "{overview}");
    h.shutdown().await;
}

async fn a_rate_limited_listing_backs_off_and_completes(db: Db) {
    let start = t0();
    let h = Harness::start(db, start, WebhookKnobs::default()).await;
    for user in ["u_rl_1", "u_rl_2", "u_rl_3"] {
        let (_, cus) = h.customer(user, "pm_card_visa", true).await;
        h.subscribe(user, &cus, &h.standard_price);
    }
    settle(&h).await;
    // More 429s in a row than the client's own retries absorb.
    h.sim.update_config(|c| c.faults.next_rate_limits = 9);

    let report = reconciler(&h, Arc::new(Metrics::default()))
        .run(false, None)
        .await
        .unwrap();

    assert!(report.page_retries >= 1, "{report:#?}");
    assert_eq!(report.subscriptions_checked, 3);
    assert!(report.drift.is_empty(), "{:#?}", report.drift);
    assert_eq!(h.sim.config().faults.next_rate_limits, 0);
    h.shutdown().await;
}

async fn the_scheduled_reconcile_job_heals_a_subscription_whose_webhooks_were_all_dropped(db: Db) {
    let knobs = WebhookKnobs {
        drop_rate: 1.0,
        ..WebhookKnobs::default()
    };
    let h = Harness::start(db, t0(), knobs).await;
    let (_, cus) = h.customer("u_job", "pm_card_visa", true).await;
    let sub = h.subscribe("u_job", &cus, &h.pro_price)["id"]
        .as_str()
        .unwrap()
        .to_string();
    let metrics = Arc::new(Metrics::default());
    let ctx = billd_server::jobs::JobContext {
        store: {
            let store: Arc<dyn Store> = h.store.clone();
            store
        },
        catalog: Arc::new(Catalog::seed()),
        stripe: Some(h.stripe_client.clone()),
        clock: h.clock.clone(),
        metrics: metrics.clone(),
    };
    let job = billd_server::jobs::ReconcileJob::new(&ctx);

    let report = billd_server::jobs::Job::run(&job, 0).await.unwrap();

    assert_eq!(billd_server::jobs::Job::name(&job), "reconcile");
    assert_eq!(report.get("drift"), 1, "{report}");
    assert_eq!(metrics.reconcile_drift.get("missing"), 1);
    let object = h.stripe("GET", &format!("/v1/subscriptions/{sub}"), "");
    assert_eq!(
        billd_view(&h, "u_job", &sub).await,
        Some(stripe_view(&object))
    );
    h.shutdown().await;
}

on_both_databases!(
    after_dropped_deliveries_reconciliation_makes_billd_equal_stripe,
    a_rate_limited_listing_backs_off_and_completes,
    the_scheduled_reconcile_job_heals_a_subscription_whose_webhooks_were_all_dropped,
);
