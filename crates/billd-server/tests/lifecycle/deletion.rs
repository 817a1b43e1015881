//! Account deletion (`DELETE /v1/customers/{id}`) through real HTTP, on
//! both databases: Stripe down for a while, the outbox finishing the work
//! once it recovers, PII erased, the audit kept, late webhooks harmless.

use std::time::{Duration, Instant};

use billd_core::{CustomerId, StripeCustomerErasure, StripeCustomerId};
use billd_server::Clock as _;
use billd_store::{EventFilter, OutboxFilter};
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, RequestCheck, ADMIN_KEY, APP_KEY, DAY};

async fn send(h: &Harness, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = h
        .http
        .request(method.parse().unwrap(), format!("{}{path}", h.base))
        .bearer_auth(APP_KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn stripe_fails(h: &Harness, failing: bool) {
    h.sim
        .update_config(|c| c.faults.error_rate = if failing { 1.0 } else { 0.0 });
}

/// Runs the outbox until `done` holds: billd's billing clock moves an hour
/// per poll, so rows waiting for a retry become due.
async fn until(h: &Harness, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        h.clock.set(h.clock.now() + 3600);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn processed(h: &Harness, event_type: &str) -> usize {
    h.store
        .list_events(&EventFilter {
            status: Some(billd_store::EventStatus::Processed),
            event_type: Some(event_type.to_owned()),
            limit: 100,
        })
        .await
        .unwrap()
        .len()
}

async fn a_deleted_account_is_canceled_and_deleted_at_stripe_once_it_recovers_and_stays_erased(
    db: Db,
) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_gone", "pm_card_visa", true).await;
    let sub = h.subscribe("u_gone", &cus, &h.pro_price)["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.wait_for("u_gone", "pro access", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;
    let id = CustomerId::parse("u_gone").unwrap();
    let audit_before = h.store.list_audit(&id, 0).await.unwrap().len();
    stripe_fails(&h, true);

    let (status, deleted) = send(&h, "DELETE", "/v1/customers/u_gone", None).await;

    assert_eq!(status, 200, "{deleted:#}");
    assert_eq!(deleted["id"], "u_gone");
    assert_eq!(deleted["deleted_at"], h.clock.now());
    let actions: Vec<(String, String)> = deleted["pending_stripe_actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["action"].as_str().unwrap().into(),
                a["object"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("cancel_subscription".to_owned(), sub.clone()),
            ("delete_stripe_customer".to_owned(), cus.clone()),
        ]
    );
    // The account answers as deleted at once, whatever Stripe does.
    let (status, e) = h.entitlements("u_gone").await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (404, &json!("customer_deleted"))
    );
    let (status, e) = send(
        &h,
        "POST",
        "/v1/customers/u_gone/usage/generations",
        Some(json!({ "idempotency_key": "after" })),
    )
    .await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (404, &json!("customer_deleted"))
    );
    let (status, e) = send(
        &h,
        "PUT",
        "/v1/customers/u_gone",
        Some(json!({ "email": "back@example.com" })),
    )
    .await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (404, &json!("customer_deleted"))
    );
    // While Stripe answers 500 the work waits; nothing at Stripe changed.
    let outbox = || async {
        h.store
            .list_outbox(&OutboxFilter {
                customer_id: Some(id.clone()),
                ..OutboxFilter::default()
            })
            .await
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !outbox().await.iter().any(|row| row.last_error.is_some()) {
        assert!(Instant::now() < deadline, "the outbox never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(h.sim.object(&sub).unwrap()["status"], "active");
    let rows_before = outbox().await.len();

    let (status, again) = send(&h, "DELETE", "/v1/customers/u_gone", None).await;

    assert_eq!(status, 200, "{again:#}");
    assert_eq!(
        (&again["id"], &again["deleted_at"]),
        (&deleted["id"], &deleted["deleted_at"])
    );
    assert_eq!(
        outbox().await.len(),
        rows_before,
        "a repeat enqueues nothing"
    );

    stripe_fails(&h, false);
    until(
        &h,
        "the subscription canceled and the customer deleted",
        || {
            h.sim.object(&sub).unwrap()["status"] == "canceled"
                && h.sim.object(&cus).unwrap()["deleted"] == true
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, answer) = send(&h, "DELETE", "/v1/customers/u_gone", None).await;
        if answer["pending_stripe_actions"] == json!([]) {
            break;
        }
        assert!(Instant::now() < deadline, "still pending: {answer:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Stripe's own webhooks about the deletion arrive after it: they are
    // recorded, and bring nothing back.
    let deadline = Instant::now() + Duration::from_secs(20);
    while processed(&h, "customer.deleted").await == 0 {
        assert!(
            Instant::now() < deadline,
            "customer.deleted never processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A replayed old webhook carrying the email changes nothing either.
    let created = h
        .store
        .list_events(&EventFilter {
            status: None,
            event_type: Some("customer.created".into()),
            limit: 10,
        })
        .await
        .unwrap();
    let created = created.first().expect("customer.created was received");
    let replay = h
        .http
        .post(format!("{}/v1/admin/events/{}/replay", h.base, created.id))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status().as_u16(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let event = h.store.get_event(&created.id).await.unwrap().unwrap();
        if event.status == billd_store::EventStatus::Processed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replay never processed: {event:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stored = h.store.get_customer(&id).await.unwrap().unwrap();
    assert_eq!(stored.deleted_at, deleted["deleted_at"].as_i64());
    assert_eq!((stored.email, stored.name), (None, None));
    let state = serde_json::to_string(&stored.state).unwrap();
    assert!(!state.contains("u_gone@example.com"), "{state}");
    assert_eq!(
        stored
            .state
            .subscriptions
            .values()
            .next()
            .unwrap()
            .snapshot
            .status,
        billd_core::event::SubscriptionStatus::Canceled
    );
    let (status, _) = h.entitlements("u_gone").await;
    assert_eq!(status, 404);
    let audit = h.store.list_audit(&id, 0).await.unwrap();
    assert!(audit.len() > audit_before);
    let deletion: Vec<_> = audit.iter().filter(|r| r.field == "account").collect();
    assert_eq!(deletion.len(), 1, "{audit:?}");
    assert_eq!(
        (deletion[0].reason.as_str(), deletion[0].after.as_deref()),
        ("api", Some("deleted"))
    );

    // Past the period end nothing is charged any more.
    let paid = |h: &Harness| {
        h.stripe("GET", &format!("/v1/invoices?customer={cus}&limit=100"), "")["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["status"] == "paid")
            .count()
    };
    let paid_before = paid(&h);
    h.advance(&clock, h.clock.now() + 40 * DAY);
    assert_eq!(paid(&h), paid_before);
    h.shutdown().await;
}

async fn deleting_an_unknown_customer_is_a_404_and_a_customer_without_stripe_is_erased_at_once(
    db: Db,
) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (status, e) = send(&h, "DELETE", "/v1/customers/u_nobody", None).await;
    assert_eq!(
        (status, &e["error"]["code"]),
        (404, &json!("customer_not_found"))
    );
    let (status, _) = send(
        &h,
        "PUT",
        "/v1/customers/u_free",
        Some(json!({ "email": "free@example.com", "name": "Free" })),
    )
    .await;
    assert_eq!(status, 201);

    let (status, deleted) = send(&h, "DELETE", "/v1/customers/u_free", None).await;

    assert_eq!(status, 200, "{deleted:#}");
    assert_eq!(deleted["pending_stripe_actions"], json!([]));
    let stored = h
        .store
        .get_customer(&CustomerId::parse("u_free").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.email, stored.name), (None, None));
    h.shutdown().await;
}

/// `BILLD_DELETE_STRIPE_CUSTOMER=anonymize` unsets the personal fields and
/// keeps the customer and its metadata; a customer Stripe no longer has
/// counts as done.
#[tokio::test]
async fn anonymizing_a_stripe_customer_unsets_its_personal_fields_and_keeps_its_metadata() {
    let handle = stripe_sim::serve(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        stripe_sim::SimConfig::default(),
    )
    .await
    .unwrap();
    let (status, cus) = handle.sim.call(
        "POST",
        "/v1/customers",
        "email=jenny@example.com&name=Jenny&phone=555&address[city]=Paris&metadata[billd_customer_id]=u_anon",
    );
    assert_eq!(status, 200, "{cus}");
    let id = StripeCustomerId::parse(cus["id"].as_str().unwrap()).unwrap();
    let requests = RequestCheck::new();
    let stripe = requests.client(handle.url(), "sk_test_billd");

    billd_server::pipeline::erase_stripe_customer(
        &stripe,
        &id,
        StripeCustomerErasure::Anonymize,
        "anonymize_stripe_customer:test",
    )
    .await
    .unwrap();
    billd_server::pipeline::erase_stripe_customer(
        &stripe,
        &StripeCustomerId::parse("cus_missing").unwrap(),
        StripeCustomerErasure::Delete,
        "delete_stripe_customer:cus_missing",
    )
    .await
    .unwrap();

    let after = handle.sim.object(id.as_str()).unwrap();
    assert_eq!(
        (
            &after["email"],
            &after["name"],
            &after["phone"],
            &after["address"]
        ),
        (&Value::Null, &Value::Null, &Value::Null, &Value::Null),
        "{after:#}"
    );
    assert_eq!(after["metadata"]["billd_customer_id"], "u_anon");
    assert_ne!(after["deleted"], true);
    handle.shutdown().await;
}

/// The personal data of the erasure test: distinctive enough that any
/// occurrence anywhere in the database is theirs.
const PII_EMAIL: &str = "bobbina.quartermaine@example.com";
const PII_NAME: &str = "Bobbina Quartermaine";
const PII_PHONE: &str = "+15555550123";
const PII_LINE1: &str = "17 Erasure Street";
/// `pm_card_visa`'s last four digits.
const PII_LAST4: &str = "4242";

/// A form value with the characters a form body would misread escaped.
fn form_value(value: &str) -> String {
    value
        .replace('+', "%2B")
        .replace(' ', "%20")
        .replace('@', "%40")
}

/// Waits until no inbox event is waiting or being processed any more.
async fn inbox_settled(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut open = Vec::new();
        for status in [
            billd_store::EventStatus::Pending,
            billd_store::EventStatus::Processing,
            billd_store::EventStatus::Failed,
        ] {
            open.extend(
                h.store
                    .list_events(&EventFilter {
                        status: Some(status),
                        event_type: None,
                        limit: 100,
                    })
                    .await
                    .unwrap(),
            );
        }
        if open.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "inbox never settled: {:?}",
            open.iter()
                .map(|e| (&e.id, &e.event_type, e.status, &e.last_error))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn after_deletion_no_personal_data_of_the_customer_is_left_in_any_table_or_column(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (status, _) = send(
        &h,
        "PUT",
        "/v1/customers/u_pii",
        Some(json!({ "email": PII_EMAIL, "name": PII_NAME })),
    )
    .await;
    assert_eq!(status, 201);
    let clock = h.stripe(
        "POST",
        "/v1/test_helpers/test_clocks",
        &format!("frozen_time={}", h.clock.now()),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let cus = h.stripe(
        "POST",
        "/v1/customers",
        &format!(
            "email={}&name={}&phone={}&address[line1]={}&address[city]=Paris&test_clock={clock}\
             &metadata[billd_customer_id]=u_pii",
            form_value(PII_EMAIL),
            form_value(PII_NAME),
            form_value(PII_PHONE),
            form_value(PII_LINE1),
        ),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.pay_with(&cus, "pm_card_visa");
    let pm = h.stripe("GET", &format!("/v1/customers/{cus}/payment_methods"), "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.stripe(
        "POST",
        &format!("/v1/payment_methods/{pm}"),
        &format!(
            "billing_details[name]={}&billing_details[email]={}&billing_details[phone]={}",
            form_value(PII_NAME),
            form_value(PII_EMAIL),
            form_value(PII_PHONE),
        ),
    );
    h.subscribe("u_pii", &cus, &h.pro_price);
    h.wait_for("u_pii", "pro access", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;
    inbox_settled(&h).await;
    let id = CustomerId::parse("u_pii").unwrap();
    let needles = [PII_EMAIL, PII_NAME, PII_PHONE, PII_LINE1, PII_LAST4];
    // The search must see the data while it is there, or finding nothing
    // later would prove nothing.
    let before = billd_store::testing::find_in_every_column(&h.db_url, &needles)
        .await
        .unwrap();
    for needle in needles {
        assert!(
            before.iter().any(|hit| hit.contains(needle)),
            "{needle} was never stored: {before:#?}"
        );
    }
    let audit_fields: Vec<String> = h
        .store
        .list_audit(&id, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.field)
        .collect();
    let email_field = format!("stripe_customer.{cus}.email");
    let card_field = format!("payment_method.{pm}.card");
    assert!(audit_fields.contains(&email_field), "{audit_fields:?}");
    assert!(audit_fields.contains(&card_field), "{audit_fields:?}");
    let events_before = h
        .store
        .list_events(&EventFilter::default())
        .await
        .unwrap()
        .len();
    // Stripe is unreachable for billd, so the account is erased at billd
    // while the Stripe customer still has everything.
    stripe_fails(&h, true);

    let (status, deleted) = send(&h, "DELETE", "/v1/customers/u_pii", None).await;
    assert_eq!(status, 200, "{deleted:#}");
    // Once the outbox has failed once its retry waits for billd's clock,
    // which stands still until the renewal below moves it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = h
            .store
            .list_outbox(&OutboxFilter {
                customer_id: Some(id.clone()),
                ..OutboxFilter::default()
            })
            .await
            .unwrap();
        if rows.iter().any(|row| row.last_error.is_some()) {
            break;
        }
        assert!(Instant::now() < deadline, "the outbox never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stripe_fails(&h, false);

    // Late webhooks about the customer, still carrying the personal data:
    // a profile change, a card change, and a renewal (invoice with
    // customer_email/name/phone, a charge with billing_details).
    h.stripe(
        "POST",
        &format!("/v1/customers/{cus}"),
        &format!("address[line2]=late&phone={}", form_value(PII_PHONE)),
    );
    h.stripe(
        "POST",
        &format!("/v1/payment_methods/{pm}"),
        &format!("billing_details[name]={}%20Jr", form_value(PII_NAME)),
    );
    h.advance(&clock, h.clock.now() + 32 * DAY);
    until(&h, "the Stripe customer deleted", || {
        h.sim.object(&cus).unwrap()["deleted"] == true
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while processed(&h, "customer.deleted").await == 0 {
        assert!(
            Instant::now() < deadline,
            "customer.deleted never processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inbox_settled(&h).await;
    let dead = h
        .store
        .list_events(&EventFilter {
            status: Some(billd_store::EventStatus::Dead),
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(dead.is_empty(), "{dead:?}");

    let hits = billd_store::testing::find_in_every_column(&h.db_url, &needles)
        .await
        .unwrap();
    assert!(hits.is_empty(), "personal data left behind: {hits:#?}");
    // What billing needs stays: every event (by id), the audit trail with
    // what changed and when, the fact of the deletion, the invoices.
    let events_after = h.store.list_events(&EventFilter::default()).await.unwrap();
    assert!(
        events_after.len() > events_before,
        "late events were stored"
    );
    let audit = h.store.list_audit(&id, 0).await.unwrap();
    let email_rows: Vec<_> = audit.iter().filter(|r| r.field == email_field).collect();
    assert!(!email_rows.is_empty());
    for row in &email_rows {
        for value in [&row.before, &row.after].into_iter().flatten() {
            assert_eq!(value, "[erased]", "{row:?}");
        }
    }
    assert!(audit.iter().any(|r| r.field == card_field));
    assert!(audit
        .iter()
        .any(|r| r.field == "account" && r.after.as_deref() == Some("deleted")));
    let stored = h.store.get_customer(&id).await.unwrap().unwrap();
    assert!(!stored.state.invoices.is_empty(), "{:?}", stored.state);
    h.shutdown().await;
}

on_both_databases!(
    after_deletion_no_personal_data_of_the_customer_is_left_in_any_table_or_column,
    a_deleted_account_is_canceled_and_deleted_at_stripe_once_it_recovers_and_stays_erased,
    deleting_an_unknown_customer_is_a_404_and_a_customer_without_stripe_is_erased_at_once,
);
