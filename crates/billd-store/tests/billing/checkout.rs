//! The checkout table: the single-flight row per customer, replaced only by
//! compare-and-set on its generation.

use billd_core::CustomerId;
use billd_store::{CheckoutRecord, CustomerProfile};

use super::{customer, postgres, sqlite, Harness, NOW};

contract!(
    a_first_checkout_is_stored_and_read_back,
    only_a_writer_that_read_the_current_generation_replaces_the_checkout,
    closing_marks_only_the_named_open_session,
    of_concurrent_first_checkouts_from_two_stores_exactly_one_is_stored,
);

async fn with_customer(h: &Harness, raw: &str) -> CustomerId {
    let id = customer(raw);
    h.billing
        .upsert_customer(
            &CustomerProfile {
                customer_id: id.clone(),
                email: None,
                name: None,
                preferred_currency: None,
            },
            NOW,
        )
        .await
        .unwrap();
    id
}

fn session(id: &CustomerId, generation: i64, session: &str) -> CheckoutRecord {
    CheckoutRecord {
        customer_id: id.clone(),
        generation,
        session_id: session.to_owned(),
        url: format!("https://checkout.test/{session}"),
        plan: "pro".to_owned(),
        currency: "eur".to_owned(),
        fingerprint: format!("fp-{session}"),
        expires_at: NOW + 86_400,
        closed_at: None,
        created_at: NOW,
    }
}

async fn a_first_checkout_is_stored_and_read_back(h: &Harness) {
    let id = with_customer(h, "u_checkout").await;
    assert_eq!(h.store.get_checkout(&id).await.unwrap(), None);

    let first = session(&id, 1, "cs_1");
    let stored = h.store.put_checkout(&first, NOW).await.unwrap();

    assert!(stored);
    assert_eq!(h.store.get_checkout(&id).await.unwrap(), Some(first));
}

async fn only_a_writer_that_read_the_current_generation_replaces_the_checkout(h: &Harness) {
    let id = with_customer(h, "u_cas").await;
    assert!(h
        .store
        .put_checkout(&session(&id, 1, "cs_1"), NOW)
        .await
        .unwrap());

    let again_first = h
        .store
        .put_checkout(&session(&id, 1, "cs_other"), NOW)
        .await
        .unwrap();
    let skipped_ahead = h
        .store
        .put_checkout(&session(&id, 3, "cs_3"), NOW)
        .await
        .unwrap();
    let next = h
        .store
        .put_checkout(&session(&id, 2, "cs_2"), NOW + 5)
        .await
        .unwrap();

    assert!(!again_first);
    assert!(!skipped_ahead);
    assert!(next);
    let row = h.store.get_checkout(&id).await.unwrap().unwrap();
    assert_eq!((row.generation, row.session_id.as_str()), (2, "cs_2"));
    assert_eq!(row.created_at, NOW + 5);
    let bad = CheckoutRecord {
        generation: 0,
        ..session(&id, 1, "cs_0")
    };
    assert!(h.store.put_checkout(&bad, NOW).await.is_err());
}

async fn closing_marks_only_the_named_open_session(h: &Harness) {
    let id = with_customer(h, "u_close").await;
    h.store
        .put_checkout(&session(&id, 1, "cs_1"), NOW)
        .await
        .unwrap();

    h.store
        .close_checkout(&id, "cs_unknown", NOW + 1)
        .await
        .unwrap();
    assert_eq!(
        h.store.get_checkout(&id).await.unwrap().unwrap().closed_at,
        None
    );
    h.store.close_checkout(&id, "cs_1", NOW + 2).await.unwrap();
    h.store.close_checkout(&id, "cs_1", NOW + 3).await.unwrap();
    assert_eq!(
        h.store.get_checkout(&id).await.unwrap().unwrap().closed_at,
        Some(NOW + 2)
    );

    h.store
        .put_checkout(&session(&id, 2, "cs_2"), NOW + 4)
        .await
        .unwrap();
    assert_eq!(
        h.store.get_checkout(&id).await.unwrap().unwrap().closed_at,
        None
    );
}

async fn of_concurrent_first_checkouts_from_two_stores_exactly_one_is_stored(h: &Harness) {
    let id = with_customer(h, "u_race").await;
    let other = h.another_checkout().await;

    let (first, second) = (session(&id, 1, "cs_a"), session(&id, 1, "cs_b"));
    let (a, b) = tokio::join!(
        h.store.put_checkout(&first, NOW),
        other.put_checkout(&second, NOW),
    );

    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one writer wins: {a} {b}");
    let winner = if a { "cs_a" } else { "cs_b" };
    assert_eq!(
        h.store.get_checkout(&id).await.unwrap().unwrap().session_id,
        winner
    );
}
