//! The wire protocol: auth, errors, idempotency, lists, expand, headers, faults.

use crate::support::*;
use stripe_sim::SimRequest;

fn request(method: &str, path: &str, auth: Option<&str>, body: &str) -> SimRequest {
    SimRequest {
        method: method.into(),
        path: path.into(),
        authorization: auth.map(str::to_string),
        body: body.as_bytes().to_vec(),
        ..SimRequest::default()
    }
}

#[test]
fn requests_without_a_test_secret_key_get_401_with_stripes_error_object() {
    let sim = sim();
    for auth in [
        None,
        Some("Bearer sk_live_123456789"),
        Some("Bearer pk_test_123"),
        Some("Token x"),
    ] {
        let r = sim.handle(&request("GET", "/v1/customers", auth, ""));
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        assert!(r.body["error"]["message"].as_str().unwrap().len() > 10);
    }
    let r = sim.handle(&request(
        "GET",
        "/v1/customers",
        Some("Basic c2tfdGVzdF94eXo6"),
        "",
    ));
    assert_eq!(r.status, 200);
}

#[test]
fn responses_carry_request_id_and_echo_stripe_version() {
    let sim = sim();
    let mut req = request("GET", "/v1/customers", Some("Bearer sk_test_1"), "");
    req.stripe_version = Some("2025-01-27.acacia".into());
    let r = sim.handle(&req);
    let header = |n: &str| {
        r.headers
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, v)| v.clone())
    };
    assert!(header("Request-Id").unwrap().starts_with("req_"));
    assert_eq!(
        header("Stripe-Version").as_deref(),
        Some("2025-01-27.acacia")
    );
    let r2 = sim.handle(&request(
        "GET",
        "/v1/customers",
        Some("Bearer sk_test_1"),
        "",
    ));
    let v = r2
        .headers
        .iter()
        .find(|(k, _)| *k == "Stripe-Version")
        .map(|(_, v)| v.clone());
    assert_eq!(v.as_deref(), Some(stripe_sim::API_VERSION));
}

#[test]
fn unknown_urls_and_unknown_ids_are_404() {
    let sim = sim();
    let (status, body) = sim.call("GET", "/v1/nothing_here", "");
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Unrecognized request URL"));
    let (status, body) = sim.call("GET", "/v1/customers/cus_missing", "");
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "resource_missing");
    assert_eq!(body["error"]["param"], "id");
}

#[test]
fn same_idempotency_key_replays_and_different_params_are_an_idempotency_error() {
    let sim = sim();
    let mut req = request(
        "POST",
        "/v1/customers",
        Some("Bearer sk_test_1"),
        "email=a@example.com",
    );
    req.idempotency_key = Some("key-1".into());
    let first = sim.handle(&req);
    let second = sim.handle(&req);
    assert_eq!(first.status, 200);
    assert_eq!(first.body, second.body);
    assert!(second
        .headers
        .iter()
        .any(|(k, v)| *k == "Idempotent-Replayed" && v == "true"));
    assert_eq!(
        get(&sim, "/v1/customers")["data"].as_array().unwrap().len(),
        1
    );
    req.body = b"email=b@example.com".to_vec();
    let third = sim.handle(&req);
    assert_eq!(third.status, 400);
    assert_eq!(third.body["error"]["type"], "idempotency_error");
}

#[test]
fn lists_paginate_with_has_more_starting_after_and_ending_before() {
    let sim = sim();
    let ids: Vec<String> = (0..5)
        .map(|i| id(&post(&sim, "/v1/customers", &format!("email=u{i}@x.io"))))
        .collect();
    let page = get(&sim, "/v1/customers?limit=2");
    assert_eq!(page["object"], "list");
    assert_eq!(page["url"], "/v1/customers");
    assert_eq!(page["has_more"], true);
    assert_eq!(page["data"][0]["id"], ids[4]);
    let next = get(
        &sim,
        &format!("/v1/customers?limit=2&starting_after={}", ids[3]),
    );
    assert_eq!(next["data"][0]["id"], ids[2]);
    let last = get(
        &sim,
        &format!("/v1/customers?limit=2&starting_after={}", ids[1]),
    );
    assert_eq!(last["data"].as_array().unwrap().len(), 1);
    assert_eq!(last["has_more"], false);
    let before = get(
        &sim,
        &format!("/v1/customers?limit=10&ending_before={}", ids[2]),
    );
    assert_eq!(before["data"].as_array().unwrap().len(), 2);
    let (status, _) = sim.call("GET", "/v1/customers?limit=0", "");
    assert_eq!(status, 400);
}

#[test]
fn customers_are_created_updated_filtered_by_email_and_deleted() {
    let sim = sim();
    let c = post(
        &sim,
        "/v1/customers",
        "email=jo@example.com&name=Jo&metadata[billd_customer_id]=u1",
    );
    let cid = id(&c);
    assert!(cid.starts_with("cus_"));
    assert_eq!(c["metadata"]["billd_customer_id"], "u1");
    post(&sim, "/v1/customers", "email=other@example.com");
    let updated = post(
        &sim,
        &format!("/v1/customers/{cid}"),
        "name=Joanna&metadata[plan]=pro",
    );
    assert_eq!(updated["name"], "Joanna");
    assert_eq!(updated["metadata"]["billd_customer_id"], "u1");
    let ev = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "customer.updated")
        .unwrap();
    assert_eq!(ev["data"]["previous_attributes"]["name"], "Jo");
    let found = get(&sim, "/v1/customers?email=jo@example.com");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], cid);
    let deleted = ok(&sim, "DELETE", &format!("/v1/customers/{cid}"), "");
    assert_eq!(
        deleted,
        serde_json::json!({"id": cid, "object": "customer", "deleted": true})
    );
    assert_eq!(get(&sim, &format!("/v1/customers/{cid}"))["deleted"], true);
    assert!(event_types(&sim).contains(&"customer.deleted".to_string()));
}

#[test]
fn prices_have_currency_options_and_unique_lookup_keys() {
    let sim = sim();
    let price = standard_price(&sim);
    // Includable: only with expand[].
    assert!(get(&sim, &format!("/v1/prices/{price}"))
        .get("currency_options")
        .is_none());
    let p = get(
        &sim,
        &format!("/v1/prices/{price}?expand[]=currency_options"),
    );
    assert_eq!(p["currency_options"]["usd"]["unit_amount"], 3500);
    assert_eq!(p["recurring"]["interval"], "month");
    let listed = get(&sim, "/v1/prices?lookup_keys[]=standard_monthly");
    assert_eq!(listed["data"][0]["id"], price);
    let (status, body) = sim.call(
        "POST",
        "/v1/prices",
        &format!(
            "product={}&currency=eur&unit_amount=1&lookup_key=standard_monthly",
            p["product"].as_str().unwrap()
        ),
    );
    assert_eq!(status, 400, "{body}");
    let prod = get(
        &sim,
        &format!("/v1/products/{}", p["product"].as_str().unwrap()),
    );
    assert_eq!(prod["default_price"], price);
}

#[test]
fn expand_replaces_ids_with_objects_including_nested_and_list_paths() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(&sim, "/v1/customers", "email=e@x.io"));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_visa&expand[]=latest_invoice.customer&expand[]=customer"),
    );
    assert_eq!(sub["customer"]["object"], "customer");
    assert_eq!(sub["latest_invoice"]["object"], "invoice");
    assert_eq!(sub["latest_invoice"]["customer"]["id"], cus);
    let list = get(&sim, "/v1/subscriptions?expand[]=data.customer");
    assert_eq!(list["data"][0]["customer"]["email"], "e@x.io");
}

#[test]
fn injected_faults_answer_500_and_429_for_the_next_calls_then_recover() {
    let sim = sim();
    sim.update_config(|c| {
        c.faults.next_errors = 1;
        c.faults.next_rate_limits = 1;
    });
    let r = sim.handle(&request(
        "GET",
        "/v1/customers",
        Some("Bearer sk_test_1"),
        "",
    ));
    assert_eq!(r.status, 429);
    assert!(r
        .headers
        .iter()
        .any(|(k, v)| *k == "Stripe-Should-Retry" && v == "true"));
    let (status, body) = sim.call("GET", "/v1/customers", "");
    assert_eq!(status, 500);
    assert_eq!(body["error"]["type"], "api_error");
    assert_eq!(sim.call("GET", "/v1/customers", "").0, 200);
}

#[test]
fn sim_config_control_reads_and_sets_knobs() {
    let sim = sim();
    let cfg = post(&sim, "/_sim/config", "webhooks[duplicate_rate]=0.5&faults[next_errors]=2&retry_schedule_days[]=1&retry_schedule_days[]=2");
    assert_eq!(cfg["webhooks"]["duplicate_rate"], 0.5);
    assert_eq!(sim.config().faults.next_errors, 2);
    assert_eq!(sim.config().retry_schedule_days, vec![1, 2]);
    let (status, _) = sim.call("POST", "/_sim/config", "no_such_knob=1");
    assert_eq!(status, 400);
}

#[test]
fn the_same_seed_and_requests_give_the_same_ids() {
    let (a, b) = (sim(), sim());
    for s in [&a, &b] {
        standard_price(s);
        post(s, "/v1/customers", "email=x@y.z");
    }
    assert_eq!(
        get(&a, "/v1/customers")["data"][0]["id"],
        get(&b, "/v1/customers")["data"][0]["id"]
    );
    assert_eq!(
        get(&a, "/v1/prices")["data"][0]["id"],
        get(&b, "/v1/prices")["data"][0]["id"]
    );
}

#[test]
fn unknown_parameters_are_rejected_as_stripe_does() {
    let sim = sim();
    let (status, body) = sim.call("POST", "/v1/customers", "email=a@b.c&emial=typo");
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "parameter_unknown");
    assert_eq!(body["error"]["param"], "emial");
    assert_eq!(
        sim.call("POST", "/v1/customers", "email=a@b.c&expand[]=test_clock")
            .0,
        200
    );
}

#[test]
fn hosted_pages_render_for_checkout_invoices_and_the_portal() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test/ok"),
    );
    let page = sim.handle(&stripe_sim::SimRequest {
        method: "GET".into(),
        path: format!("/_sim/checkout/{}", id(&cs)),
        ..Default::default()
    });
    assert_eq!(page.status, 200);
    assert!(page.html.unwrap().contains("30.00 EUR"));
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "redirect=0",
    );
    let inv = get(
        &sim,
        &format!("/v1/invoices/{}", done["invoice"].as_str().unwrap()),
    );
    let path = inv["hosted_invoice_url"]
        .as_str()
        .unwrap()
        .split_once("/_sim/")
        .unwrap()
        .1
        .to_string();
    let page = sim.handle(&stripe_sim::SimRequest {
        method: "GET".into(),
        path: format!("/_sim/{path}"),
        ..Default::default()
    });
    assert!(page.html.unwrap().contains("paid"));
}

#[test]
fn the_checkout_page_form_redirects_to_success_url_with_the_session_id() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = post(&sim, "/v1/checkout/sessions", &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test/ok?s={{CHECKOUT_SESSION_ID}}"));
    let r = sim.handle(&stripe_sim::SimRequest {
        method: "POST".into(),
        path: format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        body: b"redirect=1&payment_method=pm_card_visa&email=web%40x.io".to_vec(),
        ..Default::default()
    });
    assert_eq!(r.status, 303);
    let loc = r
        .headers
        .iter()
        .find(|(k, _)| *k == "Location")
        .map(|(_, v)| v.clone())
        .unwrap();
    assert_eq!(loc, format!("https://a.test/ok?s={}", id(&cs)));
}

#[test]
fn expanding_a_property_the_object_does_not_have_is_a_400() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(&sim, "/v1/customers", "email=e@x.io"));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_visa"),
    );
    // Since API 2025-03-31 an invoice has no payment_intent; its payments list has them.
    let (status, body) = sim.call(
        "GET",
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice.payment_intent",
            id(&sub)
        ),
        "",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "expand");
    let ok = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice.payments.data",
            id(&sub)
        ),
    );
    assert_eq!(
        ok["latest_invoice"]["payments"]["data"][0]["payment"]["type"],
        "payment_intent"
    );
    let secret = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice.confirmation_secret",
            id(&sub)
        ),
    );
    assert_eq!(
        secret["latest_invoice"]["confirmation_secret"]["type"],
        "payment_intent"
    );
    assert!(
        secret["latest_invoice"]["confirmation_secret"]["client_secret"]
            .as_str()
            .unwrap()
            .contains("_secret_")
    );
}

#[test]
fn checkout_line_items_are_expandable_on_the_session() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&line_items[0][quantity]=2&success_url=https://a.test&expand[]=line_items"),
    );
    assert_eq!(cs["line_items"]["data"][0]["quantity"], 2);
    assert_eq!(cs["line_items"]["data"][0]["amount_total"], 6000);
    assert_eq!(cs["line_items"]["data"][0]["price"]["id"], price);
}

#[test]
fn a_snapshot_file_restores_the_state_and_new_ids_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sim.json");
    let cfg = stripe_sim::SimConfig {
        seed: 5,
        frozen_time: Some(T0),
        snapshot_path: Some(path.clone()),
        ..Default::default()
    };
    let first = stripe_sim::Sim::load(cfg.clone()).unwrap();
    let price = standard_price(&first);
    let cus = id(&post(&first, "/v1/customers", "email=keep@x.io"));
    drop(first);
    let again = stripe_sim::Sim::load(cfg).unwrap();
    assert_eq!(
        get(&again, &format!("/v1/customers/{cus}"))["email"],
        "keep@x.io"
    );
    let sub = post(
        &again,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_visa"),
    );
    assert_eq!(sub["status"], "active");
    let other = id(&post(&again, "/v1/customers", "email=new@x.io"));
    assert_ne!(other, cus);
    assert_eq!(
        get(&again, "/v1/customers")["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    std::fs::write(&path, "not json").unwrap();
    assert!(stripe_sim::Sim::load(stripe_sim::SimConfig {
        snapshot_path: Some(path),
        ..Default::default()
    })
    .is_err());
}

#[test]
fn customers_and_subscriptions_are_searchable_by_metadata_and_status() {
    let sim = sim();
    let price = standard_price(&sim);
    let a = id(&post(
        &sim,
        "/v1/customers",
        "email=a@x.io&metadata[billd_customer_id]=u-1",
    ));
    post(
        &sim,
        "/v1/customers",
        "email=b@x.io&metadata[billd_customer_id]=u-2",
    );
    let found = get(
        &sim,
        "/v1/customers/search?query=metadata%5B%27billd_customer_id%27%5D%3A%27u-1%27",
    );
    assert_eq!(found["object"], "search_result");
    assert_eq!(found["data"].as_array().unwrap().len(), 1);
    assert_eq!(found["data"][0]["id"], a);
    post(&sim, "/v1/subscriptions", &format!("customer={a}&items[0][price]={price}&default_payment_method=pm_card_visa&metadata[billd_plan]=standard"));
    let subs = get(&sim, "/v1/subscriptions/search?query=status%3A%27active%27%20AND%20metadata%5B%27billd_plan%27%5D%3A%27standard%27");
    assert_eq!(subs["data"][0]["customer"], a);
    let (status, body) = sim.call("GET", "/v1/customers/search?query=email%3Dbroken", "");
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("query"))
    );
}

#[test]
fn every_list_filters_by_created_range() {
    let sim = sim();
    post(&sim, "/v1/customers", "email=early@x.io");
    sim.set_time(Some(T0 + 100));
    post(&sim, "/v1/customers", "email=late@x.io");
    let late = get(&sim, &format!("/v1/customers?created[gt]={T0}"));
    assert_eq!(late["data"].as_array().unwrap().len(), 1);
    assert_eq!(late["data"][0]["email"], "late@x.io");
    let early = get(&sim, &format!("/v1/customers?created[lte]={T0}"));
    assert_eq!(early["data"][0]["email"], "early@x.io");
    assert_eq!(
        get(&sim, &format!("/v1/customers?created={}", T0 + 100))["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        sim.call("GET", "/v1/customers/cus_nope/payment_methods", "")
            .0,
        404
    );
}

#[test]
fn json_bodies_are_refused_on_the_stripe_api_but_accepted_by_sim_controls() {
    let sim = sim();
    let json_req = |path: &str, body: &str| SimRequest {
        method: "POST".into(),
        path: path.into(),
        authorization: Some("Bearer sk_test_1".into()),
        content_type: Some("application/json".into()),
        body: body.as_bytes().to_vec(),
        ..SimRequest::default()
    };
    assert_eq!(
        sim.handle(&json_req("/v1/customers", r#"{"email":"a@b.c"}"#))
            .status,
        400
    );
    let r = sim.handle(&json_req("/_sim/config", r#"{"faults":{"next_errors":1}}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(sim.config().faults.next_errors, 1);
}

#[test]
fn doctor_can_read_the_account_portal_configuration_and_tax_settings() {
    let sim = sim();
    let acct = get(&sim, "/v1/account");
    assert_eq!(
        (acct["object"].as_str(), acct["charges_enabled"].as_bool()),
        (Some("account"), Some(true))
    );
    let cfgs = get(&sim, "/v1/billing_portal/configurations?is_default=true");
    assert_eq!(cfgs["data"][0]["object"], "billing_portal.configuration");
    assert_eq!(get(&sim, "/v1/tax/settings")["status"], "pending");
    let cus = id(&post(&sim, "/v1/customers", "email=t@x.io"));
    let price = standard_price(&sim);
    let checkout = |sim: &stripe_sim::Sim| {
        sim.call(
            "POST",
            "/v1/checkout/sessions",
            &format!("mode=subscription&customer={cus}&line_items[0][price]={price}&success_url=https://a.test&automatic_tax[enabled]=true&customer_update[address]=auto"),
        )
    };
    assert_eq!(checkout(&sim).0, 400, "Stripe Tax is not active yet");
    let tax = post(
        &sim,
        "/v1/tax/settings",
        "head_office[address][country]=DE&defaults[tax_behavior]=exclusive",
    );
    assert_eq!(tax["status"], "active");
    assert_eq!(checkout(&sim).0, 200);
}

#[test]
fn without_a_saved_portal_configuration_portal_sessions_fail_as_on_a_fresh_account() {
    let sim = stripe_sim::Sim::new(stripe_sim::SimConfig {
        portal_configured: false,
        ..Default::default()
    });
    let cus = id(&post(&sim, "/v1/customers", "email=p@x.io"));
    assert!(get(&sim, "/v1/billing_portal/configurations")["data"]
        .as_array()
        .unwrap()
        .is_empty());
    let (status, body) = sim.call(
        "POST",
        "/v1/billing_portal/sessions",
        &format!("customer={cus}"),
    );
    assert_eq!(status, 400, "{body}");
    let cfg = post(
        &sim,
        "/v1/billing_portal/configurations",
        "features[invoice_history][enabled]=true&business_profile[headline]=Acme",
    );
    assert_eq!(cfg["is_default"], true);
    let session = post(
        &sim,
        "/v1/billing_portal/sessions",
        &format!("customer={cus}"),
    );
    assert_eq!(session["configuration"], id(&cfg));
}
