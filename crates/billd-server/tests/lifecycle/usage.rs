//! Issue 5's usage endpoints (`POST /v1/customers/{id}/usage/{feature}` and
//! `…/release`) through real HTTP, on both databases.

use billd_store::BillingStore as _;
use serde_json::{json, Value};
use stripe_sim::WebhookKnobs;

use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY, DAY};

async fn post(h: &Harness, path: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut request = h.http.post(format!("{}{path}", h.base)).json(&body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn consume(h: &Harness, user: &str, feature: &str, body: Value) -> (u16, Value) {
    post(
        h,
        &format!("/v1/customers/{user}/usage/{feature}"),
        Some(APP_KEY),
        body,
    )
    .await
}

/// A customer on the free plan: a profile, no Stripe customer.
async fn free_customer(h: &Harness, user: &str) {
    let response = h
        .http
        .put(format!("{}/v1/customers/{user}", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "email": format!("{user}@example.com") }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
}

async fn sixty_four_concurrent_clients_get_exactly_the_twenty_five_generations_of_pro(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_rush", "pm_card_visa", true).await;
    h.subscribe("u_rush", &cus, &h.pro_price);
    h.wait_for("u_rush", "pro access", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;

    let answers = futures::future::join_all((0..64).map(|i| {
        let h = &h;
        async move {
            consume(
                h,
                "u_rush",
                "generations",
                json!({ "idempotency_key": format!("k{i}") }),
            )
            .await
        }
    }))
    .await;

    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 402 && b["error"]["code"] == "quota_exceeded")
        .count();
    assert_eq!(ok.len(), 25, "{answers:?}");
    assert_eq!(refused, 39, "{answers:?}");
    let mut used: Vec<u64> = ok.iter().map(|b| b["used"].as_u64().unwrap()).collect();
    used.sort_unstable();
    assert_eq!(used, (1..=25).collect::<Vec<u64>>());
    assert!(ok
        .iter()
        .all(|b| b["limit"] == 25 && b["feature"] == "generations"));
    let (_, e) = h.entitlements("u_rush").await;
    assert_eq!(e["features"]["generations"]["used"], 25, "{e:#}");
    assert_eq!(e["features"]["generations"]["remaining"], 0, "{e:#}");
    h.shutdown().await;
}

async fn one_idempotency_key_retried_from_many_clients_is_counted_once(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    free_customer(&h, "u_retry").await;
    let body = json!({ "amount": 2, "idempotency_key": "gen-1" });

    let answers = futures::future::join_all(
        (0..16).map(|_| consume(&h, "u_retry", "generations", body.clone())),
    )
    .await;

    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer:#}");
        assert_eq!(answer["used"], 2, "{answer:#}");
        assert_eq!(answer["limit"], 3, "{answer:#}");
        assert_eq!(answer["remaining"], 1, "{answer:#}");
    }
    let (status, next) = consume(
        &h,
        "u_retry",
        "generations",
        json!({ "idempotency_key": "gen-2" }),
    )
    .await;
    assert_eq!((status, next["used"].as_u64()), (200, Some(3)), "{next:#}");
    // Now full, yet the first key still gets its first answer.
    let (status, replay) = consume(&h, "u_retry", "generations", body).await;
    assert_eq!(
        (status, replay["used"].as_u64()),
        (200, Some(2)),
        "{replay:#}"
    );
    assert_eq!(replay["replayed"], true);
    let (status, over) = consume(
        &h,
        "u_retry",
        "generations",
        json!({ "idempotency_key": "gen-3" }),
    )
    .await;
    assert_eq!(status, 402, "{over:#}");
    assert_eq!(over["error"]["code"], "quota_exceeded");
    assert_eq!(over["error"]["remaining"], 0);
    h.shutdown().await;
}

async fn capacity_is_released_and_bad_usage_requests_get_stable_codes(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    free_customer(&h, "u_sites").await;

    let (status, site) = consume(
        &h,
        "u_sites",
        "websites",
        json!({ "idempotency_key": "s1" }),
    )
    .await;
    assert_eq!((status, site["used"].as_u64()), (200, Some(1)), "{site:#}");
    let (status, full) = consume(
        &h,
        "u_sites",
        "websites",
        json!({ "idempotency_key": "s2" }),
    )
    .await;
    assert_eq!(
        (status, &full["error"]["code"]),
        (402, &json!("quota_exceeded"))
    );
    let (status, released) = post(
        &h,
        "/v1/customers/u_sites/usage/websites/release",
        Some(APP_KEY),
        json!({ "idempotency_key": "r1" }),
    )
    .await;
    assert_eq!(status, 200, "{released:#}");
    assert_eq!(
        (released["used"].as_u64(), released["remaining"].as_u64()),
        (Some(0), Some(1))
    );
    let (status, again) = consume(
        &h,
        "u_sites",
        "websites",
        json!({ "idempotency_key": "s2" }),
    )
    .await;
    assert_eq!(
        (status, again["used"].as_u64()),
        (200, Some(1)),
        "{again:#}"
    );

    let cases = [
        (
            "/v1/customers/u_sites/usage/websites",
            json!({}),
            400,
            "idempotency_key_required",
        ),
        (
            "/v1/customers/u_sites/usage/websites",
            json!({ "idempotency_key": " " }),
            400,
            "idempotency_key_required",
        ),
        (
            "/v1/customers/u_sites/usage/videos",
            json!({ "idempotency_key": "x" }),
            404,
            "unknown_feature",
        ),
        (
            "/v1/customers/u_sites/usage/websites",
            json!({ "idempotency_key": "z", "amount": 0 }),
            400,
            "invalid_amount",
        ),
        (
            "/v1/customers/u_sites/usage/generations/release",
            json!({ "idempotency_key": "r2" }),
            400,
            "not_a_capacity_feature",
        ),
        (
            "/v1/customers/u_nobody/usage/websites",
            json!({ "idempotency_key": "n" }),
            404,
            "customer_not_found",
        ),
        // The same key for a different request is refused, not replayed.
        (
            "/v1/customers/u_sites/usage/websites",
            json!({ "idempotency_key": "s1", "amount": 5 }),
            400,
            "idempotency_key_reused",
        ),
    ];
    for (path, body, want_status, want_code) in cases {
        let (status, answer) = post(&h, path, Some(APP_KEY), body.clone()).await;
        assert_eq!(status, want_status, "{path} {body} → {answer:#}");
        assert_eq!(
            answer["error"]["code"], want_code,
            "{path} {body} → {answer:#}"
        );
    }
    h.shutdown().await;
}

async fn a_customer_whose_grace_period_is_over_gets_no_access(db: Db) {
    let start = t0();
    let h = Harness::start(db, start, WebhookKnobs::default()).await;
    let (clock, cus) = h.customer("u_late", "pm_card_visa", true).await;
    let sub = h.subscribe("u_late", &cus, &h.standard_price);
    let period_end = sub["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    h.wait_for("u_late", "standard access", |e| e["access"] == "paid")
        .await;
    let (status, first) = consume(
        &h,
        "u_late",
        "generations",
        json!({ "idempotency_key": "g1" }),
    )
    .await;
    assert_eq!(status, 200, "{first:#}");
    h.pay_with(&cus, "pm_card_chargeCustomerFail");
    h.advance(&clock, period_end + 3600);
    let e = h
        .wait_for("u_late", "grace", |e| e["access"] == "grace")
        .await;
    let (status, during) = consume(
        &h,
        "u_late",
        "generations",
        json!({ "idempotency_key": "g2" }),
    )
    .await;
    assert_eq!(status, 200, "grace still consumes: {during:#}");

    h.clock.set(e["grace_until"].as_i64().unwrap() + DAY);

    let (status, after) = consume(
        &h,
        "u_late",
        "generations",
        json!({ "idempotency_key": "g3" }),
    )
    .await;
    assert_eq!(status, 403, "{after:#}");
    assert_eq!(after["error"]["code"], "no_access");
    assert_eq!(after["error"]["access"], "blocked");
    // A retry of a request answered before access ended gets that answer.
    let (status, replay) = consume(
        &h,
        "u_late",
        "generations",
        json!({ "idempotency_key": "g2" }),
    )
    .await;
    assert_eq!(
        (status, &replay["used"]),
        (200, &during["used"]),
        "{replay:#}"
    );
    assert_eq!(replay["replayed"], true, "{replay:#}");
    h.shutdown().await;
}

async fn every_app_route_needs_a_key_and_an_app_key_cannot_use_the_admin_api(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    free_customer(&h, "u_auth").await;
    let routes = [
        ("PUT", "/v1/customers/u_auth"),
        ("DELETE", "/v1/customers/u_auth"),
        ("GET", "/v1/customers/u_auth/entitlements"),
        ("POST", "/v1/customers/u_auth/usage/generations"),
        ("POST", "/v1/customers/u_auth/usage/websites/release"),
        ("GET", "/v1/admin/audit?customer=u_auth"),
        ("GET", "/v1/admin/events"),
        ("POST", "/v1/admin/events/evt_1/replay"),
    ];
    for (method, path) in routes {
        for key in [None, Some("wrong_key")] {
            let mut request = h
                .http
                .request(method.parse().unwrap(), format!("{}{path}", h.base))
                .json(&json!({ "idempotency_key": "a" }));
            if let Some(key) = key {
                request = request.bearer_auth(key);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status().as_u16(),
                401,
                "{method} {path} with {key:?}"
            );
        }
    }
    for (method, path) in routes.iter().filter(|(_, p)| p.starts_with("/v1/admin")) {
        let response = h
            .http
            .request(method.parse().unwrap(), format!("{}{path}", h.base))
            .bearer_auth(APP_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{method} {path}");
        let admin = h
            .http
            .request(method.parse().unwrap(), format!("{}{path}", h.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        assert_ne!(admin.status().as_u16(), 401, "{method} {path}");
        assert_ne!(admin.status().as_u16(), 403, "{method} {path}");
    }
    // The admin key may use the app API too.
    let (status, answer) = post(
        &h,
        "/v1/customers/u_auth/usage/generations",
        Some(ADMIN_KEY),
        json!({ "idempotency_key": "admin-1" }),
    )
    .await;
    assert_eq!(status, 200, "{answer:#}");
    h.shutdown().await;
}

async fn a_consume_after_the_customers_state_changed_is_decided_on_the_new_state(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_moves", "pm_card_visa", true).await;
    for i in 0..3 {
        let (status, body) = consume(
            &h,
            "u_moves",
            "generations",
            json!({ "idempotency_key": format!("free{i}") }),
        )
        .await;
        assert_eq!((status, &body["limit"]), (200, &json!(3)), "{body:#}");
    }
    let (status, full) = consume(
        &h,
        "u_moves",
        "generations",
        json!({ "idempotency_key": "free3" }),
    )
    .await;
    assert_eq!(status, 402, "{full:#}");

    // The subscription's webhook changes the state the consumes above were
    // decided on: the next consume sees the paid plan.
    h.subscribe("u_moves", &cus, &h.pro_price);
    h.wait_for("u_moves", "pro access", |e| {
        e["plan"] == "pro" && e["access"] == "paid"
    })
    .await;
    let (status, paid) = consume(
        &h,
        "u_moves",
        "generations",
        json!({ "idempotency_key": "pro0" }),
    )
    .await;
    assert_eq!(status, 200, "{paid:#}");
    assert_eq!((&paid["limit"], &paid["used"]), (&json!(25), &json!(1)));

    let deleted = h
        .http
        .delete(format!("{}/v1/customers/u_moves", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    for key in ["pro1", "pro0"] {
        let (status, gone) = consume(
            &h,
            "u_moves",
            "generations",
            json!({ "idempotency_key": key }),
        )
        .await;
        assert_eq!(
            (status, &gone["error"]["code"]),
            (404, &json!("customer_deleted")),
            "{key}: {gone:#}"
        );
    }
    h.shutdown().await;
}

/// The plan `billd_core` gives the customer's stored state (read from the
/// store, not through the endpoint under test).
async fn stored_plan(h: &Harness, user: &str) -> Value {
    use billd_server::Clock as _;
    let record = h
        .store
        .get_customer(&billd_core::CustomerId::parse(user).unwrap())
        .await
        .unwrap()
        .unwrap();
    let catalog = billd_core::Catalog::seed();
    let usage = billd_core::Usage::default();
    let ent = billd_core::entitlements(&record.state, &catalog, &usage, h.clock.now());
    serde_json::to_value(ent.plan).unwrap()
}

/// The entitlements read twice (the second may come from memory).
async fn read_twice(h: &Harness, user: &str) -> Value {
    let _ = h.entitlements(user).await;
    let (status, e) = h.entitlements(user).await;
    assert_eq!(status, 200, "{e:#}");
    e
}

/// Entitlements may be answered from memory (SQLite): each kind of write
/// is seen by the very next read, however often it was read before.
async fn a_read_after_each_kind_of_write_sees_it(db: Db) {
    let h = Harness::start(db, t0(), WebhookKnobs::default()).await;
    let (_, cus) = h.customer("u_reads", "pm_card_visa", true).await;
    let used = |e: &Value, feature: &str| e["features"][feature]["used"].as_u64();
    let e = read_twice(&h, "u_reads").await;
    assert_eq!(
        (used(&e, "generations"), used(&e, "websites")),
        (Some(0), Some(0))
    );

    let (status, body) = consume(
        &h,
        "u_reads",
        "generations",
        json!({ "idempotency_key": "g1" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        used(&read_twice(&h, "u_reads").await, "generations"),
        Some(1)
    );
    let (status, body) = consume(
        &h,
        "u_reads",
        "websites",
        json!({ "idempotency_key": "w1" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(used(&read_twice(&h, "u_reads").await, "websites"), Some(1));

    let (status, body) = post(
        &h,
        "/v1/customers/u_reads/usage/websites/release",
        Some(APP_KEY),
        json!({ "idempotency_key": "r1" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(used(&read_twice(&h, "u_reads").await, "websites"), Some(0));

    // A replayed key changes nothing and is read as such.
    let (status, body) = consume(
        &h,
        "u_reads",
        "generations",
        json!({ "idempotency_key": "g1" }),
    )
    .await;
    assert_eq!((status, &body["replayed"]), (200, &json!(true)), "{body:#}");
    assert_eq!(
        used(&read_twice(&h, "u_reads").await, "generations"),
        Some(1)
    );

    // The webhook's plan change: once the store has it, the next read has it.
    assert_eq!(
        read_twice(&h, "u_reads").await["plan"],
        stored_plan(&h, "u_reads").await
    );
    h.subscribe("u_reads", &cus, &h.pro_price);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored_plan(&h, "u_reads").await != json!("pro") {
        assert!(
            std::time::Instant::now() < deadline,
            "the subscription never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, e) = h.entitlements("u_reads").await;
    assert_eq!((status, &e["plan"]), (200, &json!("pro")), "{e:#}");

    let deleted = h
        .http
        .delete(format!("{}/v1/customers/u_reads", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (status, gone) = h.entitlements("u_reads").await;
    assert_eq!(
        (status, &gone["error"]["code"]),
        (404, &json!("customer_deleted")),
        "{gone:#}"
    );
}

/// On SQLite a current read is answered from memory, not the database: a
/// write this process did not make (another connection to the file, which
/// `billd serve`'s serving lock rules out in production) goes unseen until
/// this process writes again. On PostgreSQL every read is a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_current_read_does_not_query_sqlite() {
    use billd_server::Clock as _;
    let h = Harness::start(Db::Sqlite, t0(), WebhookKnobs::default()).await;
    free_customer(&h, "u_memory").await;
    let (status, body) = consume(
        &h,
        "u_memory",
        "generations",
        json!({ "idempotency_key": "m1" }),
    )
    .await;
    assert_eq!(status, 200, "{body:#}");
    let used = |e: &Value| e["features"]["generations"]["used"].as_u64();
    assert_eq!(used(&h.entitlements("u_memory").await.1), Some(1));

    let customer = billd_core::CustomerId::parse("u_memory").unwrap();
    let record = h.store.get_customer(&customer).await.unwrap().unwrap();
    let key = billd_core::usage_keys(&record.state, &billd_core::Catalog::seed(), h.clock.now())
        .into_iter()
        .find(|k| k.feature.as_str() == "generations")
        .unwrap();
    let elsewhere = billd_store::SqliteStore::connect(&h.db_url).await.unwrap();
    // The background workers may write too (then the read is a query and
    // sees the sneaked consume): a few rounds, one of which must be served
    // from memory.
    let mut from_memory = 0;
    for round in 0..5_u64 {
        read_twice(&h, "u_memory").await;
        let request = billd_store::UsageRequest {
            customer_id: customer.clone(),
            key: key.clone(),
            amount: 1,
            idempotency_key: format!("behind_its_back{round}"),
            overage: None,
            credits: None,
        };
        let outcome = elsewhere
            .consume(&request, u64::MAX, h.clock.now())
            .await
            .unwrap();
        assert!(
            matches!(outcome, billd_store::UsageOutcome::Applied { .. }),
            "{outcome:?}"
        );
        let after = used(&h.entitlements("u_memory").await.1).unwrap();
        // The database now holds 2 + round: only memory can answer less.
        assert!(after <= 2 + round, "{after} in round {round}");
        from_memory += u64::from(after < 2 + round);
    }
    elsewhere.close().await;
    assert!(from_memory > 0, "every read queried the database");

    // A write of this process is seen at once.
    let deleted = h
        .http
        .delete(format!("{}/v1/customers/u_memory", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let (status, gone) = h.entitlements("u_memory").await;
    assert_eq!(
        (status, &gone["error"]["code"]),
        (404, &json!("customer_deleted"))
    );
}

/// On SQLite a memory answer is invalidated by a write for its customer
/// only: a consume, a release or a deletion of another customer leaves it
/// standing (seen because a write this process did not make, which the
/// serving lock rules out in production, stays unseen), while its own
/// customer's next write is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_for_one_customer_leaves_another_customers_memory_answer_standing() {
    use billd_server::Clock as _;
    let h = Harness::start(Db::Sqlite, t0(), WebhookKnobs::default()).await;
    free_customer(&h, "u_kept").await;
    free_customer(&h, "u_busy").await;
    free_customer(&h, "u_gone").await;
    let used = |e: &Value| e["features"]["generations"]["used"].as_u64();
    let customer = billd_core::CustomerId::parse("u_kept").unwrap();
    let record = h.store.get_customer(&customer).await.unwrap().unwrap();
    let key = billd_core::usage_keys(&record.state, &billd_core::Catalog::seed(), h.clock.now())
        .into_iter()
        .find(|k| k.feature.as_str() == "generations")
        .unwrap();
    let elsewhere = billd_store::SqliteStore::connect(&h.db_url).await.unwrap();
    // Background workers may write u_kept's row (its Stripe customer),
    // which makes that round's read a query: a few rounds, one of which
    // must be answered from memory (with every commit invalidating every
    // answer, none would be: each round writes for u_busy).
    let mut from_memory = 0;
    for round in 0..5_u64 {
        assert_eq!(used(&read_twice(&h, "u_kept").await), Some(round));
        let request = billd_store::UsageRequest {
            customer_id: customer.clone(),
            key: key.clone(),
            amount: 1,
            idempotency_key: format!("behind_its_back{round}"),
            overage: None,
            credits: None,
        };
        let outcome = elsewhere
            .consume(&request, u64::MAX, h.clock.now())
            .await
            .unwrap();
        assert!(
            matches!(outcome, billd_store::UsageOutcome::Applied { .. }),
            "{outcome:?}"
        );
        // Writes of this process for another customer: each is seen by
        // that customer's next read.
        let sites = |e: &Value| e["features"]["websites"]["used"].as_u64();
        let (status, body) = consume(
            &h,
            "u_busy",
            "websites",
            json!({ "idempotency_key": format!("busy_site{round}") }),
        )
        .await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(sites(&h.entitlements("u_busy").await.1), Some(1));
        let (status, body) = post(
            &h,
            "/v1/customers/u_busy/usage/websites/release",
            Some(APP_KEY),
            json!({ "idempotency_key": format!("busy_release{round}") }),
        )
        .await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(sites(&h.entitlements("u_busy").await.1), Some(0));

        let after = used(&h.entitlements("u_kept").await.1).unwrap();
        // The database holds 1 + round: only memory can answer round.
        assert!(
            after == round || after == round + 1,
            "{after} in round {round}"
        );
        from_memory += u64::from(after == round);
        // Seen from now on: a write of this process for u_kept.
        let (status, body) = consume(
            &h,
            "u_kept",
            "websites",
            json!({ "idempotency_key": format!("kept{round}") }),
        )
        .await;
        assert_eq!(status, 200, "{body:#}");
        let (status, body) = post(
            &h,
            "/v1/customers/u_kept/usage/websites/release",
            Some(APP_KEY),
            json!({ "idempotency_key": format!("kept_release{round}") }),
        )
        .await;
        assert_eq!(status, 200, "{body:#}");
        assert_eq!(used(&h.entitlements("u_kept").await.1), Some(round + 1));
    }
    assert!(
        from_memory > 0,
        "a write for u_busy made u_kept's read a query"
    );

    // Deleting another customer leaves the answer standing too.
    read_twice(&h, "u_kept").await;
    let request = billd_store::UsageRequest {
        customer_id: customer.clone(),
        key: key.clone(),
        amount: 1,
        idempotency_key: "behind_its_back_last".to_owned(),
        overage: None,
        credits: None,
    };
    elsewhere
        .consume(&request, u64::MAX, h.clock.now())
        .await
        .unwrap();
    elsewhere.close().await;
    let deleted = h
        .http
        .delete(format!("{}/v1/customers/u_gone", h.base))
        .bearer_auth(APP_KEY)
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert_eq!(
        h.entitlements("u_gone").await.1["error"]["code"],
        json!("customer_deleted")
    );
    let after = used(&h.entitlements("u_kept").await.1);
    assert!(matches!(after, Some(5 | 6)), "{after:?}");
}

on_both_databases!(
    sixty_four_concurrent_clients_get_exactly_the_twenty_five_generations_of_pro,
    one_idempotency_key_retried_from_many_clients_is_counted_once,
    capacity_is_released_and_bad_usage_requests_get_stable_codes,
    a_customer_whose_grace_period_is_over_gets_no_access,
    every_app_route_needs_a_key_and_an_app_key_cannot_use_the_admin_api,
    a_consume_after_the_customers_state_changed_is_decided_on_the_new_state,
    a_read_after_each_kind_of_write_sees_it,
);
