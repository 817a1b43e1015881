//! Erasure of a deleted customer's personal data from what the store holds
//! besides its state: audit values, outbox payloads and stored Stripe
//! payloads, at deletion, for events arriving later, and for events a worker
//! commits for the customer afterwards.

use std::collections::BTreeMap;

use billd_core::{AuditEntry, Effect, EmailTemplate, ERASED};
use billd_store::{EventResult, EventStatus, NewEvent, NewOutboxItem};
use serde_json::{json, Value};

use super::{commit, customer, postgres, sqlite, state_with, Harness, NOW};

contract!(
    deleting_a_customer_redacts_its_audit_values_outbox_payloads_and_stored_events_and_nobody_elses,
    an_event_arriving_for_an_erased_stripe_customer_is_stored_scrubbed_by_this_store_and_by_another,
    an_event_committed_for_a_deleted_customer_is_scrubbed_with_the_audit_values_it_brings,
);

fn personal_audit(field: &str, after: &str) -> AuditEntry {
    AuditEntry {
        field: field.to_owned(),
        before: None,
        after: Some(after.to_owned()),
        reason: "evt_x".to_owned(),
        event_type: "customer.updated".to_owned(),
        at: NOW,
    }
}

fn card_expiring(pm: &str) -> NewOutboxItem {
    NewOutboxItem::from_effect(&Effect::Email {
        template: EmailTemplate::CardExpiring,
        dedupe_key: format!("card_expiring:{pm}:2029-12"),
        params: BTreeMap::from([
            ("payment_method".to_owned(), pm.to_owned()),
            ("last4".to_owned(), "4242".to_owned()),
            ("expires".to_owned(), "12/2029".to_owned()),
        ]),
    })
    .expect("effect encodes")
}

/// A `customer.updated` event carrying the customer's email and address.
fn customer_event(id: &str, stripe_customer: &str, email: &str) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        event_type: "customer.updated".to_owned(),
        api_version: Some("2026-09-30.endive".to_owned()),
        created: NOW - 10,
        object_id: Some(stripe_customer.to_owned()),
        stripe_customer: Some(stripe_customer.to_owned()),
        payload: json!({
            "id": id, "object": "event", "type": "customer.updated", "created": NOW - 10,
            "data": { "object": {
                "id": stripe_customer, "object": "customer", "email": email,
                "address": { "line1": "1 Main St" },
                "metadata": { "billd_customer_id": "someone" }
            } }
        })
        .to_string(),
        received_at: NOW - 5,
    }
}

/// A dispute event: it names no customer, only its charge.
fn dispute_event(id: &str, charge: &str) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        event_type: "charge.dispute.created".to_owned(),
        api_version: Some("2026-09-30.endive".to_owned()),
        created: NOW - 10,
        object_id: Some(charge.to_owned()),
        stripe_customer: None,
        payload: json!({
            "id": id, "type": "charge.dispute.created", "created": NOW - 10,
            "data": { "object": {
                "id": charge, "amount": 900,
                "evidence": { "customer_email_address": "x", "billing_address": "2 High St",
                              "customer_name": "Grace" }
            } }
        })
        .to_string(),
        received_at: NOW - 5,
    }
}

async fn payload(h: &Harness, id: &str) -> Value {
    let event = h.store.get_event(id).await.unwrap().unwrap();
    serde_json::from_str(&event.payload).unwrap()
}

/// `user` with Stripe customer `cus`, an email and a card in its audit
/// trail, a card-expiry email in the outbox and `charge` linked to it.
async fn customer_with_history(h: &Harness, user: &str, cus: &str, charge: &str) {
    let mut first = commit(user, 0, state_with(cus, false));
    first.audit = vec![
        personal_audit(&format!("stripe_customer.{cus}.email"), "a@example.com"),
        personal_audit("payment_method.pm_1.card", "visa 4242 12/2029"),
        personal_audit("subscription.sub_1.status", "active"),
    ];
    first.outbox = vec![card_expiring(&format!("pm_{user}"))];
    first.links = vec![charge.to_owned()];
    h.billing.commit_customer(&first, NOW).await.unwrap();
}

async fn deleting_a_customer_redacts_its_audit_values_outbox_payloads_and_stored_events_and_nobody_elses(
    h: &Harness,
) {
    customer_with_history(h, "user_e1", "cus_e1", "ch_e1").await;
    customer_with_history(h, "user_e2", "cus_e2", "ch_e2").await;
    let events = [
        customer_event("evt_e1", "cus_e1", "a@example.com"),
        dispute_event("evt_e1_dispute", "ch_e1"),
        customer_event("evt_e2", "cus_e2", "b@example.com"),
        dispute_event("evt_e2_dispute", "ch_e2"),
    ];
    h.store.insert_events(&events).await.unwrap();

    h.billing
        .delete_customer(&commit("user_e1", 1, state_with("cus_e1", false)), NOW + 10)
        .await
        .unwrap();

    let audit = h.billing.list_audit(&customer("user_e1"), 0).await.unwrap();
    let values: Vec<(&str, Option<&str>)> = audit
        .iter()
        .map(|r| (r.field.as_str(), r.after.as_deref()))
        .collect();
    assert!(
        values.contains(&("stripe_customer.cus_e1.email", Some(ERASED))),
        "{values:?}"
    );
    assert!(
        values.contains(&("payment_method.pm_1.card", Some(ERASED))),
        "{values:?}"
    );
    assert!(
        values.contains(&("subscription.sub_1.status", Some("active"))),
        "{values:?}"
    );
    assert!(audit.iter().all(|r| r.at == NOW && r.reason == "evt_x"));
    let outbox = h
        .billing
        .list_outbox(&billd_store::OutboxFilter::default())
        .await
        .unwrap();
    let params = |user: &str| -> Value {
        let row = outbox
            .iter()
            .find(|r| r.customer_id == Some(customer(user)))
            .unwrap();
        serde_json::from_str::<Value>(&row.payload).unwrap()["params"].clone()
    };
    assert_eq!(params("user_e1")["last4"], ERASED);
    assert_eq!(params("user_e1")["expires"], ERASED);
    assert_eq!(params("user_e1")["payment_method"], "pm_user_e1");
    let key = |user: &str| {
        outbox
            .iter()
            .find(|r| r.customer_id == Some(customer(user)))
            .map(|r| r.dedupe_key.clone())
            .unwrap()
    };
    assert!(
        key("user_e1").starts_with("card_expiring:pm_user_e1:[erased]:"),
        "{}",
        key("user_e1")
    );
    assert_eq!(key("user_e2"), "card_expiring:pm_user_e2:2029-12");
    assert!(matches!(
        outbox[0].effect().unwrap(),
        Effect::Email {
            template: EmailTemplate::CardExpiring,
            ..
        }
    ));
    let e1 = payload(h, "evt_e1").await;
    assert_eq!(e1["data"]["object"]["email"], ERASED);
    assert_eq!(e1["data"]["object"]["address"]["line1"], ERASED);
    assert_eq!(
        e1["data"]["object"]["metadata"]["billd_customer_id"],
        "someone"
    );
    assert_eq!(
        (&e1["id"], &e1["created"]),
        (&json!("evt_e1"), &json!(NOW - 10))
    );
    let dispute = payload(h, "evt_e1_dispute").await;
    assert_eq!(
        dispute["data"]["object"]["evidence"]["customer_name"],
        ERASED
    );
    assert_eq!(
        dispute["data"]["object"]["evidence"]["billing_address"],
        ERASED
    );
    assert_eq!(dispute["data"]["object"]["amount"], 900);
    // The other customer keeps everything.
    assert_eq!(
        payload(h, "evt_e2").await["data"]["object"]["email"],
        "b@example.com"
    );
    assert_eq!(
        payload(h, "evt_e2_dispute").await["data"]["object"]["evidence"]["customer_name"],
        "Grace"
    );
    assert_eq!(params("user_e2")["last4"], "4242");
    let other = h.billing.list_audit(&customer("user_e2"), 0).await.unwrap();
    assert!(other
        .iter()
        .any(|r| r.after.as_deref() == Some("a@example.com")));
}

async fn an_event_arriving_for_an_erased_stripe_customer_is_stored_scrubbed_by_this_store_and_by_another(
    h: &Harness,
) {
    customer_with_history(h, "user_e3", "cus_e3", "ch_e3").await;
    // Stored before the deletion: the deletion scrubs it.
    h.store
        .insert_events(&[customer_event("evt_e3_before", "cus_e3", "c@example.com")])
        .await
        .unwrap();
    h.billing
        .delete_customer(&commit("user_e3", 1, state_with("cus_e3", false)), NOW + 10)
        .await
        .unwrap();
    let live = customer_event("evt_live", "cus_live", "d@example.com");

    h.store
        .insert_events(&[
            customer_event("evt_e3_late", "cus_e3", "c@example.com"),
            live.clone(),
        ])
        .await
        .unwrap();
    // Another process on the same database learns of the deletion from it.
    let fresh = h.another_checkout().await;
    fresh
        .insert_events(&[customer_event("evt_e3_later", "cus_e3", "c@example.com")])
        .await
        .unwrap();

    for id in ["evt_e3_before", "evt_e3_late", "evt_e3_later"] {
        let stored = payload(h, id).await;
        assert_eq!(stored["data"]["object"]["email"], ERASED, "{id}");
        assert_eq!(stored["id"], id);
        let event = h.store.get_event(id).await.unwrap().unwrap();
        assert_eq!(event.status, EventStatus::Pending);
    }
    let stored_live = h.store.get_event("evt_live").await.unwrap().unwrap();
    assert_eq!(
        stored_live.payload, live.payload,
        "other customers' events are stored as received"
    );
}

async fn an_event_committed_for_a_deleted_customer_is_scrubbed_with_the_audit_values_it_brings(
    h: &Harness,
) {
    customer_with_history(h, "user_e4", "cus_e4", "ch_e4").await;
    h.billing
        .delete_customer(&commit("user_e4", 1, state_with("cus_e4", false)), NOW + 10)
        .await
        .unwrap();
    // An event naming nothing the store links to the customer (the worker
    // linked it by metadata) is stored as received, then committed.
    let mut late = customer_event("evt_e4_late", "cus_e4_other", "e@example.com");
    late.stripe_customer = None;
    late.object_id = Some("cus_e4_other".to_owned());
    h.store.insert_events(&[late]).await.unwrap();
    let claim = h
        .store
        .claim_events(NOW + 20, NOW + 80, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.id == "evt_e4_late")
        .unwrap()
        .claim;
    let mut replay = commit("user_e4", 2, state_with("cus_e4", false));
    replay.audit = vec![personal_audit(
        "stripe_customer.cus_e4.email",
        "e@example.com",
    )];

    h.billing
        .commit_event(
            "evt_e4_late",
            claim,
            Some(&replay),
            &EventResult::Processed,
            NOW + 20,
        )
        .await
        .unwrap();

    let stored = payload(h, "evt_e4_late").await;
    assert_eq!(stored["data"]["object"]["email"], ERASED);
    let event = h.store.get_event("evt_e4_late").await.unwrap().unwrap();
    assert_eq!(event.status, EventStatus::Processed);
    let audit = h.billing.list_audit(&customer("user_e4"), 0).await.unwrap();
    assert!(
        audit
            .iter()
            .all(|r| r.after.as_deref() != Some("e@example.com")),
        "{audit:?}"
    );
    assert_eq!(audit.len(), 4, "the late row is kept, redacted: {audit:?}");
}
