//! Checkout, subscriptions, invoices, prorations and test clocks.

use crate::support::*;
use serde_json::Value;

fn checkout(sim: &stripe_sim::Sim, price: &str, extra: &str) -> Value {
    post(
        sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&line_items[0][quantity]=1&success_url=https://app.test/ok?s={{CHECKOUT_SESSION_ID}}&cancel_url=https://app.test/no{extra}"),
    )
}

#[test]
fn completing_checkout_creates_customer_subscription_and_paid_invoice_with_stripes_event_sequence()
{
    let sim = sim();
    let price = standard_price(&sim);
    let cs = checkout(
        &sim,
        &price,
        "&client_reference_id=u1&metadata[billd_customer_id]=u1&subscription_data[metadata][billd_plan]=standard&customer_email=u1@example.com&billing_address_collection=auto&automatic_tax[enabled]=false",
    );
    assert_eq!(cs["status"], "open");
    assert_eq!(cs["payment_status"], "unpaid");
    assert!(cs["url"]
        .as_str()
        .unwrap()
        .contains(cs["id"].as_str().unwrap()));
    assert_eq!(cs["expires_at"], T0 + 24 * 3600);
    let before = sim.events().len();
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "payment_method=pm_card_visa",
    );
    assert_eq!(done["status"], "complete");
    assert_eq!(done["payment_status"], "paid");
    assert_eq!(done["client_reference_id"], "u1");
    assert_eq!(
        events_since(&sim, before),
        [
            "customer.created",
            "payment_method.attached",
            "customer.subscription.created",
            "invoice.created",
            "invoice.finalized",
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.succeeded",
            "invoice_payment.paid",
            "invoice.paid",
            "invoice.payment_succeeded",
            "customer.subscription.updated",
            "checkout.session.completed",
        ]
    );
    let sub = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}",
            done["subscription"].as_str().unwrap()
        ),
    );
    assert_eq!(sub["status"], "active");
    assert_eq!(sub["metadata"]["billd_plan"], "standard");
    assert_eq!(sub["items"]["data"][0]["current_period_start"], T0);
    assert_eq!(sub["items"]["data"][0]["current_period_end"], T0 + 31 * DAY);
    let inv = get(
        &sim,
        &format!("/v1/invoices/{}", sub["latest_invoice"].as_str().unwrap()),
    );
    assert_eq!(inv["status"], "paid");
    assert_eq!(inv["amount_paid"], 3000);
    assert_eq!(
        inv["parent"]["subscription_details"]["subscription"],
        sub["id"]
    );
    assert!(
        inv.get("subscription").is_none(),
        "no top-level invoice.subscription in this API version"
    );
    let updated = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "customer.subscription.updated")
        .unwrap();
    assert_eq!(
        updated["data"]["previous_attributes"]["status"],
        "incomplete"
    );
    let created = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "customer.subscription.created")
        .unwrap();
    assert_eq!(created["data"]["object"]["latest_invoice"], inv["id"]);
    let cus = get(
        &sim,
        &format!("/v1/customers/{}", done["customer"].as_str().unwrap()),
    );
    assert_eq!(cus["email"], "u1@example.com");
}

#[test]
fn checkout_in_another_currency_charges_the_price_currency_option() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = checkout(&sim, &price, "&currency=usd");
    assert_eq!(cs["amount_total"], 3500);
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "",
    );
    let sub = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice",
            done["subscription"].as_str().unwrap()
        ),
    );
    assert_eq!(sub["currency"], "usd");
    assert_eq!(sub["latest_invoice"]["amount_paid"], 3500);
}

#[test]
fn a_declined_card_on_checkout_answers_402_and_leaves_the_session_open() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = checkout(&sim, &price, "");
    for pm in ["pm_card_chargeDeclined", "pm_card_chargeCustomerFail"] {
        let (status, body) = sim.call(
            "POST",
            &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
            &format!("payment_method={pm}"),
        );
        assert_eq!(status, 402);
        assert_eq!(body["error"]["type"], "card_error");
        assert_eq!(body["error"]["code"], "card_declined");
        assert_eq!(body["error"]["decline_code"], "generic_decline");
    }
    assert_eq!(
        get(&sim, &format!("/v1/checkout/sessions/{}", id(&cs)))["status"],
        "open"
    );
    assert!(get(&sim, "/v1/subscriptions?status=all")["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn three_d_secure_on_checkout_waits_for_authentication_then_completes() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = checkout(&sim, &price, "");
    let pi = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "payment_method=pm_card_authenticationRequired",
    );
    assert_eq!(pi["object"], "payment_intent");
    assert_eq!(pi["status"], "requires_action");
    assert_eq!(pi["next_action"]["type"], "use_stripe_sdk");
    assert!(event_types(&sim).contains(&"invoice.payment_action_required".to_string()));
    assert_eq!(
        get(&sim, &format!("/v1/checkout/sessions/{}", id(&cs)))["status"],
        "open"
    );
    let subs = get(&sim, "/v1/subscriptions?status=all");
    assert_eq!(subs["data"][0]["status"], "incomplete");
    let after = post(
        &sim,
        &format!("/_sim/payment_intents/{}/authenticate", id(&pi)),
        "outcome=success",
    );
    assert_eq!(after["status"], "succeeded");
    assert_eq!(
        get(&sim, &format!("/v1/checkout/sessions/{}", id(&cs)))["status"],
        "complete"
    );
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&subs["data"][0])))["status"],
        "active"
    );
    assert_eq!(
        event_types(&sim).last().map(String::as_str),
        Some("checkout.session.completed")
    );
}

#[test]
fn failed_three_d_secure_leaves_the_subscription_incomplete_with_payment_failed() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(&sim, "/v1/customers", "email=a@b.c"));
    let sub = post(&sim, "/v1/subscriptions", &format!("customer={cus}&items[0][price]={price}&default_payment_method=pm_card_authenticationRequired&expand[]=latest_invoice.payments"));
    assert_eq!(sub["status"], "incomplete");
    let pi = sub["latest_invoice"]["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    let after = post(
        &sim,
        &format!("/_sim/payment_intents/{pi}/authenticate"),
        "outcome=failure",
    );
    assert_eq!(after["status"], "requires_payment_method");
    assert_eq!(
        after["last_payment_error"]["code"],
        "payment_intent_authentication_failure"
    );
    assert_eq!(
        event_types(&sim).last().map(String::as_str),
        Some("invoice.payment_failed")
    );
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "incomplete"
    );
}

#[test]
fn checkout_sessions_expire_by_call_and_by_time() {
    let sim = sim();
    let price = standard_price(&sim);
    let a = checkout(&sim, &price, "");
    let expired = post(
        &sim,
        &format!("/v1/checkout/sessions/{}/expire", id(&a)),
        "",
    );
    assert_eq!(expired["status"], "expired");
    assert_eq!(
        sim.call(
            "POST",
            &format!("/v1/checkout/sessions/{}/expire", id(&a)),
            ""
        )
        .0,
        400
    );
    let b = checkout(&sim, &price, "");
    sim.set_time(Some(T0 + 25 * 3600));
    assert_eq!(
        get(&sim, &format!("/v1/checkout/sessions/{}", id(&b)))["status"],
        "expired"
    );
    let (status, _) = sim.call(
        "POST",
        &format!("/_sim/checkout/sessions/{}/complete", id(&b)),
        "",
    );
    assert_eq!(status, 400);
    assert_eq!(
        event_types(&sim)
            .iter()
            .filter(|t| *t == "checkout.session.expired")
            .count(),
        2
    );
}

#[test]
fn error_if_incomplete_with_a_declining_card_is_a_402_and_creates_nothing() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(&sim, "/v1/customers", "email=a@b.c"));
    let pm = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
        &format!("customer={cus}"),
    ));
    let (status, body) = sim.call(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method={pm}&payment_behavior=error_if_incomplete"),
    );
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["decline_code"], "generic_decline");
    assert!(get(&sim, "/v1/subscriptions?status=all")["data"]
        .as_array()
        .unwrap()
        .is_empty());
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&default_payment_method={pm}"),
    );
    assert_eq!(sub["status"], "incomplete");
    assert!(event_types(&sim).contains(&"invoice.payment_failed".to_string()));
}

#[test]
fn upgrading_with_create_prorations_bills_the_difference_on_the_next_renewal() {
    let sim = sim();
    let (std_price, pro) = (standard_price(&sim), pro_price(&sim));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={std_price}"),
    );
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let (start, end) = (T0, T0 + 31 * DAY);
    let half = start + (end - start) / 2;
    advance(&sim, &clock, half);
    let preview = post(
        &sim,
        "/v1/invoices/create_preview",
        &format!("customer={cus}&subscription={}&subscription_details[items][0][id]={si}&subscription_details[items][0][price]={pro}&subscription_details[proration_date]={half}&subscription_details[proration_behavior]=always_invoice", id(&sub)),
    );
    assert_eq!(preview["amount_due"], 1000, "{:#}", preview["lines"]);
    let updated = post(&sim, &format!("/v1/subscriptions/{}", id(&sub)), &format!("items[0][id]={si}&items[0][price]={pro}&proration_behavior=create_prorations&proration_date={half}"));
    assert_eq!(updated["items"]["data"][0]["price"]["id"], pro);
    let ev = sim
        .events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == "customer.subscription.updated")
        .unwrap();
    assert_eq!(
        ev["data"]["previous_attributes"]["items"]["data"][0]["price"]["id"],
        std_price
    );
    advance(&sim, &clock, end + 3600);
    let sub = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    let inv = &sub["latest_invoice"];
    assert_eq!(inv["billing_reason"], "subscription_cycle");
    // -1500 unused standard, +2500 remaining pro, +5000 next month of pro
    assert_eq!(inv["amount_paid"], 6000, "{:#}", inv["lines"]);
    assert_eq!(inv["lines"]["data"].as_array().unwrap().len(), 3);
    assert_eq!(sub["items"]["data"][0]["current_period_start"], end);
}

#[test]
fn always_invoice_charges_the_proration_immediately_and_none_charges_nothing() {
    let sim = sim();
    let (std_price, pro) = (standard_price(&sim), pro_price(&sim));
    let cus = id(&post(&sim, "/v1/customers", "email=a@b.c&payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa"));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={std_price}"),
    );
    assert_eq!(sub["status"], "active", "{sub:#}");
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let half = T0 + 31 * DAY / 2;
    sim.set_time(Some(half));
    let up = post(&sim, &format!("/v1/subscriptions/{}", id(&sub)), &format!("items[0][id]={si}&items[0][price]={pro}&proration_behavior=always_invoice&expand[]=latest_invoice"));
    assert_eq!(
        up["latest_invoice"]["billing_reason"],
        "subscription_update"
    );
    assert_eq!(up["latest_invoice"]["amount_paid"], 1000);
    let invoices = get(&sim, &format!("/v1/invoices?subscription={}", id(&sub)))["data"]
        .as_array()
        .unwrap()
        .len();
    post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!("items[0][id]={si}&items[0][price]={std_price}&proration_behavior=none"),
    );
    assert_eq!(
        get(&sim, &format!("/v1/invoices?subscription={}", id(&sub)))["data"]
            .as_array()
            .unwrap()
            .len(),
        invoices
    );
}

#[test]
fn cancel_at_period_end_cancels_at_renewal_and_can_be_undone_before() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let sid = id(&sub);
    let c = post(
        &sim,
        &format!("/v1/subscriptions/{sid}"),
        "cancel_at_period_end=true",
    );
    assert_eq!(c["cancel_at_period_end"], true);
    assert_eq!(c["cancel_at"], T0 + 31 * DAY);
    let u = post(
        &sim,
        &format!("/v1/subscriptions/{sid}"),
        "cancel_at_period_end=false",
    );
    assert_eq!(u["cancel_at"], serde_json::Value::Null);
    post(
        &sim,
        &format!("/v1/subscriptions/{sid}"),
        "cancel_at_period_end=true",
    );
    advance(&sim, &clock, T0 + 40 * DAY);
    let s = get(&sim, &format!("/v1/subscriptions/{sid}"));
    assert_eq!(s["status"], "canceled");
    assert_eq!(s["ended_at"], T0 + 31 * DAY);
    assert!(event_types(&sim).contains(&"customer.subscription.deleted".to_string()));
    assert!(
        !event_types(&sim).contains(&"invoice.upcoming".to_string()),
        "no upcoming invoice for a subscription ending"
    );
    assert!(
        get(&sim, &format!("/v1/subscriptions?customer={cus}"))["data"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get(
            &sim,
            &format!("/v1/subscriptions?customer={cus}&status=all")
        )["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn deleting_a_subscription_cancels_it_now() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let gone = ok(
        &sim,
        "DELETE",
        &format!("/v1/subscriptions/{}", id(&sub)),
        "",
    );
    assert_eq!(gone["status"], "canceled");
    assert_eq!(gone["canceled_at"], T0);
    assert_eq!(
        sim.call("DELETE", &format!("/v1/subscriptions/{}", id(&sub)), "")
            .0,
        400
    );
}

#[test]
fn advancing_a_test_clock_renews_with_upcoming_notice_and_new_item_periods() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let resp = post(
        &sim,
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &format!("frozen_time={}", T0 + 32 * DAY),
    );
    assert_eq!(resp["status"], "advancing");
    assert_eq!(
        get(&sim, &format!("/v1/test_helpers/test_clocks/{clock}"))["status"],
        "ready"
    );
    let upcoming = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "invoice.upcoming")
        .unwrap();
    assert_eq!(upcoming["created"], T0 + 28 * DAY);
    let s = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    assert_eq!(s["status"], "active");
    assert_eq!(s["items"]["data"][0]["current_period_start"], T0 + 31 * DAY);
    assert_eq!(s["items"]["data"][0]["current_period_end"], T0 + 59 * DAY);
    let invoices = get(&sim, &format!("/v1/invoices?customer={cus}"));
    assert_eq!(invoices["data"].as_array().unwrap().len(), 2);
    assert_eq!(invoices["data"][0]["status"], "paid");
    assert_eq!(invoices["data"][0]["created"], T0 + 31 * DAY);
    let paid = sim
        .events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == "invoice.paid")
        .unwrap();
    assert_eq!(paid["created"], T0 + 31 * DAY);
}

#[test]
fn trials_warn_three_days_before_and_convert_to_active_when_paid() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&trial_period_days=14"),
    );
    assert_eq!(sub["status"], "trialing");
    assert_eq!(sub["trial_end"], T0 + 14 * DAY);
    assert_eq!(sub["items"]["data"][0]["current_period_end"], T0 + 14 * DAY);
    let first = get(
        &sim,
        &format!("/v1/invoices/{}", sub["latest_invoice"].as_str().unwrap()),
    );
    assert_eq!(
        (first["amount_due"].as_i64(), first["status"].as_str()),
        (Some(0), Some("paid"))
    );
    advance(&sim, &clock, T0 + 12 * DAY);
    let warn = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "customer.subscription.trial_will_end")
        .unwrap();
    assert_eq!(warn["created"], T0 + 11 * DAY);
    advance(&sim, &clock, T0 + 15 * DAY);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["status"], "active");
    assert_eq!(s["latest_invoice"]["amount_paid"], 3000);
}

#[test]
fn failed_renewals_go_past_due_retry_on_schedule_then_cancel() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let bad = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
        &format!("customer={cus}"),
    ));
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={bad}"),
    );
    let renewal = T0 + 31 * DAY;
    advance(&sim, &clock, renewal + 3600);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["status"], "past_due");
    assert_eq!(s["latest_invoice"]["attempt_count"], 1);
    assert_eq!(
        s["latest_invoice"]["next_payment_attempt"],
        renewal + 3 * DAY
    );
    advance(&sim, &clock, renewal + 4 * DAY);
    let inv = get(
        &sim,
        &format!(
            "/v1/invoices/{}",
            s["latest_invoice"]["id"].as_str().unwrap()
        ),
    );
    assert_eq!(inv["attempt_count"], 2);
    assert_eq!(inv["next_payment_attempt"], renewal + 5 * DAY);
    advance(&sim, &clock, renewal + 8 * DAY);
    let s = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    assert_eq!(s["status"], "canceled");
    assert_eq!(s["cancellation_details"]["reason"], "payment_failed");
    let failed = event_types(&sim)
        .iter()
        .filter(|t| *t == "invoice.payment_failed")
        .count();
    assert_eq!(failed, 4);
}

#[test]
fn paying_a_past_due_invoice_with_a_new_card_reactivates_the_subscription() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_chargeCustomerFail");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&trial_period_days=7"),
    );
    advance(&sim, &clock, T0 + 8 * DAY);
    let s = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    assert_eq!(s["status"], "past_due");
    let paid = post(
        &sim,
        &format!("/v1/invoices/{}/pay", s["latest_invoice"].as_str().unwrap()),
        "payment_method=pm_card_visa",
    );
    assert_eq!(paid["status"], "paid");
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "active"
    );
}

#[test]
fn unpaid_incomplete_subscriptions_expire_after_23_hours() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_chargeCustomerFail");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    assert_eq!(sub["status"], "incomplete");
    advance(&sim, &clock, T0 + 22 * 3600);
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "incomplete"
    );
    advance(&sim, &clock, T0 + 24 * 3600);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["status"], "incomplete_expired");
    assert_eq!(s["canceled_at"], s["ended_at"]);
    assert_eq!(s["latest_invoice"]["status"], "void");
}

#[test]
fn trials_without_a_payment_method_can_pause_and_resume() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&trial_period_days=7&trial_settings[end_behavior][missing_payment_method]=pause"),
    );
    advance(&sim, &clock, T0 + 8 * DAY);
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "paused"
    );
    assert!(event_types(&sim).contains(&"customer.subscription.paused".to_string()));
    let pm = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_visa/attach",
        &format!("customer={cus}"),
    ));
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={pm}"),
    );
    let resumed = post(&sim, &format!("/v1/subscriptions/{}/resume", id(&sub)), "");
    assert_eq!(resumed["status"], "active");
    assert_eq!(
        resumed["items"]["data"][0]["current_period_start"],
        T0 + 8 * DAY
    );
}

#[test]
fn billing_portal_sessions_have_a_url_for_the_customer() {
    let sim = sim();
    let cus = id(&post(&sim, "/v1/customers", "email=p@x.io"));
    let bps = post(
        &sim,
        "/v1/billing_portal/sessions",
        &format!("customer={cus}&return_url=https://app.test/account"),
    );
    assert_eq!(bps["object"], "billing_portal.session");
    assert_eq!(bps["customer"], cus);
    assert!(bps["url"].as_str().unwrap().starts_with("http"));
    assert_eq!(
        sim.call("POST", "/v1/billing_portal/sessions", "customer=cus_nope")
            .0,
        404
    );
}

#[test]
fn default_incomplete_waits_for_the_payment_intent_to_be_confirmed() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(&sim, "/v1/customers", "email=d@x.io"));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&payment_behavior=default_incomplete&expand[]=latest_invoice.payments"),
    );
    assert_eq!(sub["status"], "incomplete");
    assert_eq!(sub["latest_invoice"]["attempt_count"], 0);
    assert!(get(&sim, &format!("/v1/charges?customer={cus}"))["data"]
        .as_array()
        .unwrap()
        .is_empty());
    let pi = sub["latest_invoice"]["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        get(&sim, &format!("/v1/payment_intents/{pi}"))["status"],
        "requires_payment_method"
    );
    let (status, body) = sim.call(
        "POST",
        &format!("/v1/payment_intents/{pi}/confirm"),
        "payment_method=pm_card_chargeCustomerFail",
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("card_declined"))
    );
    let confirmed = post(
        &sim,
        &format!("/v1/payment_intents/{pi}/confirm"),
        "payment_method=pm_card_visa",
    );
    assert_eq!(confirmed["status"], "succeeded");
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "active"
    );
}

#[test]
fn paused_collection_voids_renewal_invoices_until_it_resumes() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!(
            "pause_collection[behavior]=void&pause_collection[resumes_at]={}",
            T0 + 40 * DAY
        ),
    );
    advance(&sim, &clock, T0 + 32 * DAY);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["status"], "active");
    assert_eq!(s["latest_invoice"]["status"], "void");
    advance(&sim, &clock, T0 + 60 * DAY);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["pause_collection"], Value::Null);
    assert_eq!(s["latest_invoice"]["status"], "paid");
}

#[test]
fn a_renewal_needing_authentication_goes_past_due_and_recovers_when_authenticated() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let sca = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_authenticationRequired/attach",
        &format!("customer={cus}"),
    ));
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={sca}"),
    );
    advance(&sim, &clock, T0 + 32 * DAY);
    let s = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice.payments.data",
            id(&sub)
        ),
    );
    assert_eq!(s["status"], "past_due");
    assert_eq!(s["latest_invoice"]["next_payment_attempt"], T0 + 34 * DAY);
    assert!(event_types(&sim).contains(&"invoice.payment_action_required".to_string()));
    let pi = s["latest_invoice"]["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        &sim,
        &format!("/_sim/payment_intents/{pi}/authenticate"),
        "outcome=success",
    );
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "active"
    );
}

#[test]
fn subscription_items_must_share_one_billing_interval() {
    let sim = sim();
    let monthly = standard_price(&sim);
    let yearly = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Y&currency=eur&unit_amount=30000&recurring[interval]=year",
    ));
    let cus = id(&post(&sim, "/v1/customers", "email=i@x.io"));
    let (status, body) = sim.call(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={monthly}&items[1][price]={yearly}&default_payment_method=pm_card_visa"),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn ending_a_trial_now_bills_immediately() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&trial_period_days=30"),
    );
    sim.set_time(Some(T0 + 5 * DAY));
    let ended = post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        "trial_end=now&expand[]=latest_invoice",
    );
    assert_eq!(ended["status"], "active");
    assert_eq!(ended["latest_invoice"]["amount_paid"], 3000);
    assert_eq!(
        ended["items"]["data"][0]["current_period_start"],
        T0 + 5 * DAY
    );
    assert!(event_types(&sim).contains(&"customer.subscription.trial_will_end".to_string()));
}

#[test]
fn an_archived_price_cannot_be_sold_in_checkout() {
    let sim = sim();
    let price = standard_price(&sim);
    post(&sim, &format!("/v1/prices/{price}"), "active=false");
    let (status, body) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test"),
    );
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("line_items[0][price]"))
    );
}

#[test]
fn moving_sim_wide_time_renews_subscriptions_without_a_test_clock() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    sim.set_time(Some(T0 + 32 * DAY));
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["items"]["data"][0]["current_period_start"], T0 + 31 * DAY);
    assert_eq!(s["latest_invoice"]["created"], T0 + 31 * DAY);
    assert_eq!(s["latest_invoice"]["status"], "paid");
    post(
        &sim,
        "/_sim/config",
        &format!("frozen_time={}", T0 + 60 * DAY),
    );
    let invoices = get(&sim, &format!("/v1/invoices?customer={cus}"));
    assert_eq!(invoices["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        sim.call("POST", "/_sim/config", "webhooks[drop_rate]=2").0,
        400
    );
}

#[test]
fn a_trial_checkout_may_skip_the_card_when_collection_is_if_required_and_then_cancels() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!(
            "mode=subscription&line_items[0][price]={price}&success_url=https://a.test&payment_method_collection=if_required\
             &subscription_data[trial_period_days]=7&subscription_data[trial_settings][end_behavior][missing_payment_method]=cancel"
        ),
    );
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "payment_method=none",
    );
    assert_eq!(done["payment_status"], "no_payment_required");
    let sub_id = done["subscription"].as_str().unwrap().to_string();
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{sub_id}"))["default_payment_method"],
        Value::Null
    );
    sim.set_time(Some(T0 + 8 * DAY));
    let s = get(&sim, &format!("/v1/subscriptions/{sub_id}"));
    assert_eq!(s["status"], "canceled");
    let plain = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test"),
    );
    assert_eq!(
        sim.call(
            "POST",
            &format!("/_sim/checkout/sessions/{}/complete", id(&plain)),
            "payment_method=none"
        )
        .0,
        400
    );
}

#[test]
fn a_customer_is_locked_to_the_currency_of_its_first_subscription() {
    let sim = sim();
    let price = standard_price(&sim);
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    assert_eq!(
        get(&sim, &format!("/v1/customers/{cus}"))["currency"],
        Value::Null
    );
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    assert_eq!(
        get(&sim, &format!("/v1/customers/{cus}"))["currency"],
        "eur"
    );
    ok(
        &sim,
        "DELETE",
        &format!("/v1/subscriptions/{}", id(&sub)),
        "",
    );
    let (status, body) = sim.call(
        "POST",
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}&currency=usd"),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("combine currencies"));
    let (status, _) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("mode=subscription&customer={cus}&currency=usd&line_items[0][price]={price}&success_url=https://a.test"),
    );
    assert_eq!(status, 400);
}

#[test]
fn pending_if_incomplete_holds_an_upgrade_until_its_invoice_is_paid() {
    let sim = sim();
    let (std_price, pro) = (standard_price(&sim), pro_price(&sim));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={std_price}"),
    );
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let sca = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_authenticationRequired/attach",
        &format!("customer={cus}"),
    ));
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={sca}"),
    );
    advance(&sim, &clock, T0 + 10 * DAY);
    let held = post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!("items[0][id]={si}&items[0][price]={pro}&payment_behavior=pending_if_incomplete&proration_behavior=always_invoice&expand[]=latest_invoice.payments.data"),
    );
    assert_eq!(held["status"], "active");
    assert_eq!(
        held["items"]["data"][0]["price"]["id"], std_price,
        "not granted until paid"
    );
    assert_eq!(
        held["pending_update"]["subscription_items"][0]["price"]["id"],
        pro
    );
    assert_eq!(
        held["pending_update"]["expires_at"],
        T0 + 10 * DAY + 23 * 3600
    );
    let pi = held["latest_invoice"]["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        &sim,
        &format!("/_sim/payment_intents/{pi}/authenticate"),
        "outcome=success",
    );
    let s = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    assert_eq!(s["items"]["data"][0]["price"]["id"], pro);
    assert_eq!(s["pending_update"], Value::Null);
    assert!(event_types(&sim).contains(&"customer.subscription.pending_update_applied".to_string()));
}

#[test]
fn an_unpaid_pending_update_expires_after_23_hours() {
    let sim = sim();
    let (std_price, pro) = (standard_price(&sim), pro_price(&sim));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={std_price}"),
    );
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let bad = id(&post(
        &sim,
        "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
        &format!("customer={cus}"),
    ));
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={bad}"),
    );
    let held = post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!("items[0][id]={si}&items[0][price]={pro}&payment_behavior=pending_if_incomplete&expand[]=latest_invoice"),
    );
    assert_eq!(held["status"], "active");
    assert_eq!(held["latest_invoice"]["next_payment_attempt"], Value::Null);
    advance(&sim, &clock, T0 + DAY);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["pending_update"], Value::Null);
    assert_eq!(s["items"]["data"][0]["price"]["id"], std_price);
    assert_eq!(s["latest_invoice"]["status"], "void");
    assert!(event_types(&sim).contains(&"customer.subscription.pending_update_expired".to_string()));
}

#[test]
fn events_caused_by_a_clock_advance_carry_no_request() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    advance(&sim, &clock, T0 + 32 * DAY);
    let renewal = sim
        .events()
        .into_iter()
        .rev()
        .find(|e| e["type"] == "invoice.paid")
        .unwrap();
    assert_eq!(renewal["request"]["id"], Value::Null);
    let created = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "customer.subscription.created")
        .unwrap();
    assert!(created["request"]["id"].is_string());
}

#[test]
fn checkout_collects_the_billing_address_and_tax_ids_and_saves_them_as_customer_update_allows() {
    let sim = sim();
    let price = standard_price(&sim);
    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test&billing_address_collection=required&tax_id_collection[enabled]=true"),
    );
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "address[country]=DE&address[postal_code]=10115&address[city]=Berlin&tax_id[type]=eu_vat&tax_id[value]=DE123456789",
    );
    assert_eq!(done["customer_details"]["address"]["country"], "DE");
    assert_eq!(
        done["customer_details"]["tax_ids"][0]["value"],
        "DE123456789"
    );
    let cus = get(
        &sim,
        &format!("/v1/customers/{}", done["customer"].as_str().unwrap()),
    );
    assert_eq!(cus["address"]["city"], "Berlin");

    // An existing customer: automatic tax needs an address on file or customer_update.
    post(&sim, "/v1/tax/settings", "head_office[address][country]=DE");
    let existing = id(&post(&sim, "/v1/customers", "email=e@x.io"));
    let base = format!("mode=subscription&customer={existing}&line_items[0][price]={price}&success_url=https://a.test&automatic_tax[enabled]=true");
    assert_eq!(sim.call("POST", "/v1/checkout/sessions", &base).0, 400);
    let (status, _) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("{base}&tax_id_collection[enabled]=true&customer_update[address]=auto"),
    );
    assert_eq!(
        status, 400,
        "tax ids for an existing customer need customer_update[name]=auto"
    );
    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("{base}&customer_update[address]=auto"),
    );
    post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "address[country]=FR&address[postal_code]=75001",
    );
    assert_eq!(
        get(&sim, &format!("/v1/customers/{existing}"))["address"]["country"],
        "FR"
    );
}

#[test]
fn test_clocks_hold_three_customers_and_advance_two_intervals_at_most() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    for _ in 0..2 {
        post(&sim, "/v1/customers", &format!("test_clock={clock}"));
    }
    let (status, body) = sim.call("POST", "/v1/customers", &format!("test_clock={clock}"));
    assert_eq!(
        (status, body["error"]["param"].as_str()),
        (400, Some("test_clock"))
    );
    post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let (status, _) = sim.call(
        "POST",
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &format!("frozen_time={}", T0 + 70 * DAY),
    );
    assert_eq!(status, 400, "more than two monthly intervals at once");
    advance(&sim, &clock, T0 + 59 * DAY);
    advance(&sim, &clock, T0 + 110 * DAY);
    assert_eq!(
        get(&sim, &format!("/v1/invoices?customer={cus}"))["data"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[test]
fn switching_to_a_yearly_price_resets_the_cycle_and_bills_the_year_less_the_unused_month() {
    let sim = sim();
    let monthly = standard_price(&sim);
    let yearly = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Yearly&currency=eur&unit_amount=30000&recurring[interval]=year",
    ));
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={monthly}"),
    );
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let half = T0 + 31 * DAY / 2;
    sim.set_time(Some(half));
    let up = post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!("items[0][id]={si}&items[0][price]={yearly}&proration_date={half}&expand[]=latest_invoice"),
    );
    assert_eq!(up["billing_cycle_anchor"], half);
    assert_eq!(up["items"]["data"][0]["current_period_start"], half);
    assert_eq!(
        up["items"]["data"][0]["current_period_end"],
        half + 365 * DAY
    );
    assert_eq!(
        up["latest_invoice"]["billing_reason"],
        "subscription_update"
    );
    assert_eq!(up["latest_invoice"]["amount_paid"], 30000 - 1500);
}

#[test]
fn a_subscription_schedule_switches_price_at_the_period_end_without_proration_then_releases() {
    let sim = sim();
    let (std_price, pro) = (standard_price(&sim), pro_price(&sim));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={pro}"),
    );
    let end = T0 + 31 * DAY;
    let sched = post(
        &sim,
        "/v1/subscription_schedules",
        &format!("from_subscription={}", id(&sub)),
    );
    assert_eq!(sched["phases"][0]["end_date"], end);
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["schedule"],
        id(&sched)
    );
    let updated = post(
        &sim,
        &format!("/v1/subscription_schedules/{}", id(&sched)),
        &format!("phases[0][items][0][price]={pro}&phases[0][start_date]={T0}&phases[0][end_date]={end}&phases[1][items][0][price]={std_price}&phases[1][duration][interval]=month&phases[1][duration][interval_count]=1&phases[1][proration_behavior]=none&phases[1][metadata][billd_plan]=standard&end_behavior=release"),
    );
    assert_eq!(updated["phases"].as_array().unwrap().len(), 2);

    advance(&sim, &clock, end - 3600);
    let before = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    advance(&sim, &clock, end + 3600);
    let after = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );

    assert_eq!(before["items"]["data"][0]["price"]["id"], pro);
    assert_eq!(after["items"]["data"][0]["price"]["id"], std_price);
    assert_eq!(after["metadata"]["billd_plan"], "standard");
    assert_eq!(
        after["latest_invoice"]["billing_reason"],
        "subscription_cycle"
    );
    assert_eq!(
        after["latest_invoice"]["amount_paid"], 3000,
        "{:#}",
        after["latest_invoice"]["lines"]
    );
    let next_end = after["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    advance(&sim, &clock, next_end + 3600);
    let released = get(&sim, &format!("/v1/subscription_schedules/{}", id(&sched)));
    assert_eq!(released["status"], "released");
    assert_eq!(released["released_subscription"], id(&sub));
    let sub = get(&sim, &format!("/v1/subscriptions/{}", id(&sub)));
    assert_eq!(sub["schedule"], Value::Null);
    assert_eq!(sub["items"]["data"][0]["price"]["id"], std_price);
}

#[test]
fn a_switch_to_a_yearly_price_is_previewed_as_the_invoice_it_creates_and_seats_prorate() {
    let sim = sim();
    let monthly = standard_price(&sim);
    let yearly = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Yearly&currency=eur&unit_amount=30000&recurring[interval]=year",
    ));
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={monthly}&items[0][quantity]=2"),
    );
    let si = sub["items"]["data"][0]["id"].as_str().unwrap().to_string();
    let half = T0 + 31 * DAY / 2;
    advance(&sim, &clock, half);
    let more_seats = post(
        &sim,
        "/v1/invoices/create_preview",
        &format!("subscription={}&subscription_details[items][0][id]={si}&subscription_details[items][0][quantity]=3&subscription_details[proration_date]={half}&subscription_details[proration_behavior]=always_invoice", id(&sub)),
    );
    let preview = post(
        &sim,
        "/v1/invoices/create_preview",
        &format!("subscription={}&subscription_details[items][0][id]={si}&subscription_details[items][0][price]={yearly}&subscription_details[proration_date]={half}&subscription_details[proration_behavior]=create_prorations", id(&sub)),
    );
    let updated = post(
        &sim,
        &format!("/v1/subscriptions/{}", id(&sub)),
        &format!("items[0][id]={si}&items[0][price]={yearly}&proration_behavior=create_prorations&proration_date={half}&expand[]=latest_invoice"),
    );

    // One more seat of 3000 for half the month.
    assert_eq!(more_seats["amount_due"], 1500, "{:#}", more_seats["lines"]);
    let invoice = &updated["latest_invoice"];
    assert_eq!(invoice["billing_reason"], "subscription_update");
    // Two yearly seats from now, less the unused half month of two monthly seats.
    assert_eq!(
        invoice["amount_due"],
        2 * 30000 - 3000,
        "{:#}",
        invoice["lines"]
    );
    assert_eq!(
        preview["amount_due"], invoice["amount_due"],
        "{:#}",
        preview["lines"]
    );
    let item = &updated["items"]["data"][0];
    assert_eq!(item["quantity"], 2);
    assert_eq!(item["current_period_start"], half);
    let year = item["current_period_end"].as_i64().unwrap() - half;
    assert!((365 * DAY..=366 * DAY).contains(&year), "{item:#}");
}
