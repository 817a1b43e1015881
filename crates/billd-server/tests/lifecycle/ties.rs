//! Same-second ties settled by re-fetching the subscription from Stripe,
//! through real HTTP: a test clock keeps Stripe's time still, so every
//! change of a scenario shares one second.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use billd_core::{CustomerId, Effect};
use billd_server::pipeline::refetch_event;
use billd_server::Clock;
use billd_store::{EventFilter, EventStatus, OutboxFilter};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness};

/// The re-fetches billd asked for (outbox, dedupe key → round) and the
/// re-fetched events that came back (inbox ids), for one subscription.
async fn refetch_traffic(
    h: &Harness,
    user: &str,
    sub: &str,
) -> (BTreeMap<String, u32>, Vec<String>) {
    let rows = h
        .store
        .list_outbox(&OutboxFilter {
            customer_id: Some(CustomerId::parse(user).unwrap()),
            ..OutboxFilter::default()
        })
        .await
        .unwrap();
    let asked = rows
        .iter()
        .filter_map(|row| match row.effect().unwrap() {
            Effect::RefetchSubscription {
                subscription,
                round,
                dedupe_key,
                ..
            } if subscription.as_str() == sub => Some((dedupe_key, round)),
            _ => None,
        })
        .collect();
    let events = h
        .store
        .list_events(&EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    let prefix = format!("evt_billd_refetch_{sub}_");
    let fetched = events
        .into_iter()
        .filter(|e| e.id.starts_with(&prefix))
        .map(|e| e.id)
        .collect();
    (asked, fetched)
}

async fn wait_processed(h: &Harness, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = h.store.get_event(id).await.unwrap();
        if event
            .as_ref()
            .is_some_and(|e| e.status == EventStatus::Processed)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never processed: {event:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_change_in_the_tied_second_after_its_refetch_still_reaches_billd(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_tie", "pm_card_visa", true).await;
    let sub = h.subscribe("u_tie", &cus, &h.pro_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let tie = sub["created"].as_i64().unwrap();
    // Creating a subscription sends several snapshots in its first second:
    // billd re-fetches it once they tie.
    wait_processed(&h, &format!("evt_billd_refetch_{sub_id}_{tie}")).await;
    h.wait_for("u_tie", "pro", |e| {
        e["access"] == "paid" && e["plan"] == "pro"
    })
    .await;

    // Stripe's clock has not moved: this change shares the tied second.
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{sub_id}"),
        "cancel_at_period_end=true",
    );

    let e = h
        .wait_for("u_tie", "the cancellation seen", |e| {
            e["cancel_at_period_end"] == true
        })
        .await;
    assert_eq!(e["plan"], "pro", "{e:#}");
    let (asked, fetched) = refetch_traffic(&h, "u_tie", &sub_id).await;
    // One re-fetch per round, each fed back once.
    assert_eq!(
        asked.get(&format!("refetch_subscription:{sub_id}:{tie}")),
        Some(&0),
        "{asked:#?}"
    );
    assert!(asked.values().any(|round| *round > 0), "{asked:#?}");
    let mut rounds: Vec<u32> = asked.values().copied().collect();
    rounds.sort_unstable();
    rounds.dedup();
    assert_eq!(rounds.len(), asked.len(), "{asked:#?}");
    assert_eq!(fetched.len(), asked.len(), "{asked:#?} {fetched:#?}");
    h.shutdown().await;
}

async fn a_refetch_older_than_the_watermark_does_not_regress_the_subscription(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_stale", "pm_card_visa", true).await;
    let sub = h.subscribe("u_stale", &cus, &h.pro_price);
    let sub_id = sub["id"].as_str().unwrap().to_string();
    let tie = sub["created"].as_i64().unwrap();
    // billd's own re-fetch of the tied first second must land before the
    // change: arriving after it, that (authoritative) answer would carry
    // the cancellation itself and the stamp checked below would race.
    wait_processed(&h, &format!("evt_billd_refetch_{sub_id}_{tie}")).await;
    h.wait_for("u_stale", "pro", |e| e["access"] == "paid")
        .await;
    h.advance(&clock, h.clock.now() + 60);
    h.stripe(
        "POST",
        &format!("/v1/subscriptions/{sub_id}"),
        "cancel_at_period_end=true",
    );
    h.wait_for("u_stale", "the cancellation seen", |e| {
        e["cancel_at_period_end"] == true
    })
    .await;

    // A re-fetch of the first second, answered before the change, lands now.
    let late = refetch_event(&sub_id, tie, 7, 1, sub.clone(), h.clock.now());
    let id = late.id.clone();
    h.store.insert_events(&[late]).await.unwrap();
    wait_processed(&h, &id).await;

    let e = h.wait_for("u_stale", "an answer", |_| true).await;
    assert_eq!(e["cancel_at_period_end"], true, "{e:#}");
    assert_eq!(
        (e["plan"].as_str(), e["access"].as_str()),
        (Some("pro"), Some("paid"))
    );
    let record = h
        .store
        .get_customer(&CustomerId::parse("u_stale").unwrap())
        .await
        .unwrap()
        .unwrap();
    let known = record
        .state
        .subscriptions
        .values()
        .find(|s| s.snapshot.id.as_str() == sub_id)
        .unwrap();
    assert!(known.stamp.created > tie, "{known:#?}");
    assert!(!known.stamp.authoritative, "{known:#?}");
    h.shutdown().await;
}

on_both_databases!(
    a_change_in_the_tied_second_after_its_refetch_still_reaches_billd,
    a_refetch_older_than_the_watermark_does_not_regress_the_subscription,
);
