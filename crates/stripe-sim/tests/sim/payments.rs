//! Charges, refunds, disputes, coupons and promotion codes.

use crate::support::*;
use serde_json::{json, Value};

fn paid_subscription(sim: &stripe_sim::Sim, pm: &str) -> (String, Value) {
    let price = standard_price(sim);
    let cus = id(&post(
        sim,
        "/v1/customers",
        &format!("email=r@x.io&payment_method={pm}"),
    ));
    let pm_id = get(sim, &format!("/v1/customers/{cus}/payment_methods"))["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    post(
        sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={pm_id}"),
    );
    post(
        sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    let charge = get(sim, &format!("/v1/charges?customer={cus}"))["data"][0].clone();
    (cus, charge)
}

#[test]
fn charges_are_listed_by_customer_with_card_details() {
    let sim = sim();
    let (cus, charge) = paid_subscription(&sim, "pm_card_mastercard");
    assert_eq!(charge["status"], "succeeded");
    assert_eq!(charge["amount"], 3000);
    assert_eq!(
        charge["payment_method_details"]["card"]["brand"],
        "mastercard"
    );
    assert_eq!(charge["payment_method_details"]["card"]["last4"], "4444");
    assert_eq!(
        get(&sim, &format!("/v1/charges/{}", id(&charge)))["customer"],
        cus
    );
    assert!(get(&sim, "/v1/charges?customer=cus_other")["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn partial_then_full_refunds_never_exceed_the_charge() {
    let sim = sim();
    let (_, charge) = paid_subscription(&sim, "pm_card_visa");
    let ch = id(&charge);
    let r1 = post(
        &sim,
        "/v1/refunds",
        &format!("charge={ch}&amount=1000&reason=requested_by_customer"),
    );
    assert_eq!(r1["status"], "succeeded");
    assert_eq!(r1["amount"], 1000);
    let after = get(&sim, &format!("/v1/charges/{ch}"));
    assert_eq!(
        (
            after["amount_refunded"].as_i64(),
            after["refunded"].as_bool()
        ),
        (Some(1000), Some(false))
    );
    let (status, body) = sim.call("POST", "/v1/refunds", &format!("charge={ch}&amount=2001"));
    assert_eq!(status, 400, "{body}");
    let r2 = post(
        &sim,
        "/v1/refunds",
        &format!(
            "payment_intent={}",
            charge["payment_intent"].as_str().unwrap()
        ),
    );
    assert_eq!(r2["amount"], 2000);
    assert_eq!(get(&sim, &format!("/v1/charges/{ch}"))["refunded"], true);
    assert_eq!(
        sim.call("POST", "/v1/refunds", &format!("charge={ch}")).0,
        400
    );
    let refunded = sim
        .events()
        .into_iter()
        .filter(|e| e["type"] == "charge.refunded")
        .collect::<Vec<_>>();
    assert_eq!(refunded.len(), 2);
    assert_eq!(refunded[0]["data"]["object"]["amount_refunded"], 1000);
    assert!(
        refunded[0]["data"].get("previous_attributes").is_none(),
        "only *.updated events carry previous_attributes"
    );
    assert_eq!(
        get(&sim, &format!("/v1/refunds?charge={ch}"))["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        event_types(&sim)
            .iter()
            .filter(|t| *t == "refund.created")
            .count(),
        2
    );
}

#[test]
fn the_dispute_card_opens_a_dispute_that_closes_won_or_lost() {
    let sim = sim();
    let (_, charge) = paid_subscription(&sim, "pm_card_createDispute");
    assert_eq!(
        get(&sim, &format!("/v1/charges/{}", id(&charge)))["disputed"],
        true
    );
    let disputes = get(&sim, &format!("/v1/disputes?charge={}", id(&charge)));
    let dp = disputes["data"][0].clone();
    assert_eq!(dp["status"], "needs_response");
    assert_eq!(dp["amount"], 3000);
    assert!(event_types(&sim).contains(&"charge.dispute.created".to_string()));
    assert!(event_types(&sim).contains(&"charge.dispute.funds_withdrawn".to_string()));
    let closed = post(
        &sim,
        &format!("/_sim/disputes/{}/close", id(&dp)),
        "outcome=lost",
    );
    assert_eq!(closed["status"], "lost");
    let ev = sim
        .events()
        .into_iter()
        .find(|e| e["type"] == "charge.dispute.closed")
        .unwrap();
    assert_eq!(ev["data"]["object"]["status"], "lost");
    assert_eq!(
        sim.call(
            "POST",
            &format!("/_sim/disputes/{}/close", id(&dp)),
            "outcome=won"
        )
        .0,
        400
    );
    assert!(get(&sim, "/v1/disputes?charge=ch_other")["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn promotion_codes_apply_on_checkout_and_honour_max_redemptions_and_expiry() {
    let sim = sim();
    let price = standard_price(&sim);
    post(&sim, "/v1/coupons", "id=HALF&percent_off=50&duration=once");
    let promo = post(
        &sim,
        "/v1/promotion_codes",
        "promotion[type]=coupon&promotion[coupon]=HALF&code=LAUNCH&max_redemptions=1",
    );
    assert_eq!(
        get(&sim, "/v1/promotion_codes?code=LAUNCH")["data"][0]["id"],
        id(&promo)
    );
    let session = |extra: &str| {
        post(
            &sim,
            "/v1/checkout/sessions",
            &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test/ok{extra}"),
        )
    };
    let cs = session("&allow_promotion_codes=true");
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "promotion_code=launch",
    );
    assert_eq!(done["amount_total"], 1500);
    assert_eq!(done["total_details"]["amount_discount"], 1500);
    let sub = get(
        &sim,
        &format!(
            "/v1/subscriptions/{}?expand[]=latest_invoice&expand[]=discounts",
            done["subscription"].as_str().unwrap()
        ),
    );
    assert_eq!(sub["latest_invoice"]["amount_paid"], 1500);
    assert_eq!(sub["discounts"][0]["object"], "discount");
    assert_eq!(sub["discounts"][0]["promotion_code"], id(&promo));
    assert!(event_types(&sim).contains(&"customer.discount.created".to_string()));
    assert_eq!(
        get(&sim, &format!("/v1/promotion_codes/{}", id(&promo)))["times_redeemed"],
        1
    );
    let (status, body) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test/ok&discounts[0][promotion_code]={}", id(&promo)),
    );
    assert_eq!(status, 400, "{body}");
    let late = post(
        &sim,
        "/v1/promotion_codes",
        &format!(
            "promotion[type]=coupon&promotion[coupon]=HALF&code=LATE&expires_at={}",
            T0 + 10
        ),
    );
    sim.set_time(Some(T0 + 11));
    let (status, _) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("mode=subscription&line_items[0][price]={price}&success_url=https://a.test/ok&discounts[0][promotion_code]={}", id(&late)),
    );
    assert_eq!(status, 400);
}

#[test]
fn a_once_coupon_discounts_only_the_first_invoice() {
    let sim = sim();
    let price = standard_price(&sim);
    post(
        &sim,
        "/v1/coupons",
        "id=TENOFF&amount_off=1000&currency=eur&duration=once",
    );
    let (clock, cus) = clocked_customer(&sim, "pm_card_visa");
    let sub = post(&sim, "/v1/subscriptions", &format!("customer={cus}&items[0][price]={price}&discounts[0][coupon]=TENOFF&expand[]=latest_invoice"));
    assert_eq!(sub["latest_invoice"]["amount_paid"], 2000);
    advance(&sim, &clock, T0 + 32 * DAY);
    let s = get(
        &sim,
        &format!("/v1/subscriptions/{}?expand[]=latest_invoice", id(&sub)),
    );
    assert_eq!(s["latest_invoice"]["amount_paid"], 3000);
    assert_eq!(s["discounts"], serde_json::json!([]));
    assert!(event_types(&sim).contains(&"customer.discount.deleted".to_string()));
}

#[test]
fn payment_methods_attach_detach_and_declining_cards_cannot_attach() {
    let sim = sim();
    let cus = id(&post(&sim, "/v1/customers", "email=pm@x.io"));
    let pm = post(
        &sim,
        "/v1/payment_methods/pm_card_visa/attach",
        &format!("customer={cus}"),
    );
    assert!(id(&pm).starts_with("pm_") && id(&pm) != "pm_card_visa");
    assert_eq!(pm["card"]["brand"], "visa");
    assert_eq!(pm["card"]["exp_month"], 12);
    assert!(pm["card"]["exp_year"].as_i64().unwrap() > 2026);
    let (status, body) = sim.call(
        "POST",
        "/v1/payment_methods/pm_card_chargeDeclined/attach",
        &format!("customer={cus}"),
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("card_declined"))
    );
    assert_eq!(
        get(
            &sim,
            &format!("/v1/payment_methods?customer={cus}&type=card")
        )["data"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let detached = post(&sim, &format!("/v1/payment_methods/{}/detach", id(&pm)), "");
    assert_eq!(detached["customer"], Value::Null);
    assert!(event_types(&sim).contains(&"payment_method.detached".to_string()));
}

#[test]
fn a_charge_with_an_open_dispute_cannot_be_refunded() {
    let sim = sim();
    let (_, charge) = paid_subscription(&sim, "pm_card_createDispute");
    let (status, body) = sim.call("POST", "/v1/refunds", &format!("charge={}", id(&charge)));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("charge_disputed"))
    );
}

#[test]
fn cards_with_chosen_expiry_can_be_created_updated_and_expire_on_renewal() {
    let sim = sim();
    let price = standard_price(&sim);
    let (clock, cus) = clocked_customer(&sim, "");
    // Expires at the end of January 2026; the first renewal is on 1 February.
    let pm = post(&sim, "/v1/payment_methods", "type=card&card[number]=4242424242424242&card[exp_month]=1&card[exp_year]=2026&card[cvc]=123");
    assert_eq!(
        (
            pm["card"]["exp_month"].as_i64(),
            pm["card"]["last4"].as_str()
        ),
        (Some(1), Some("4242"))
    );
    post(
        &sim,
        &format!("/v1/payment_methods/{}/attach", id(&pm)),
        &format!("customer={cus}"),
    );
    post(
        &sim,
        &format!("/v1/customers/{cus}"),
        &format!("invoice_settings[default_payment_method]={}", id(&pm)),
    );
    let sub = post(
        &sim,
        "/v1/subscriptions",
        &format!("customer={cus}&items[0][price]={price}"),
    );
    assert_eq!(sub["status"], "active");
    advance(&sim, &clock, T0 + 32 * DAY);
    let charge = get(&sim, &format!("/v1/charges?customer={cus}"))["data"][0].clone();
    assert_eq!(charge["failure_code"], "expired_card");
    assert_eq!(
        get(&sim, &format!("/v1/subscriptions/{}", id(&sub)))["status"],
        "past_due"
    );
    let updated = post(
        &sim,
        &format!("/v1/payment_methods/{}", id(&pm)),
        "card[exp_year]=2030",
    );
    assert_eq!(updated["card"]["exp_year"], 2030);
    assert!(event_types(&sim).contains(&"payment_method.updated".to_string()));
    let auto = post(
        &sim,
        &format!("/_sim/payment_methods/{}/automatically_update", id(&pm)),
        "exp_month=6&exp_year=2031&last4=1111",
    );
    assert_eq!(auto["card"]["last4"], "1111");
    assert!(event_types(&sim).contains(&"payment_method.automatically_updated".to_string()));
    let (status, body) = sim.call(
        "POST",
        "/v1/payment_methods",
        "type=card&card[number]=4242424242424241&card[exp_month]=1&card[exp_year]=2030",
    );
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (402, Some("incorrect_number"))
    );
    let tok = post(
        &sim,
        "/v1/payment_methods",
        "type=card&card[token]=tok_mastercard",
    );
    assert_eq!(tok["card"]["brand"], "mastercard");
}

#[test]
fn promotion_code_restrictions_on_minimum_amount_and_first_purchase_are_enforced() {
    let sim = sim();
    let price = standard_price(&sim);
    post(
        &sim,
        "/v1/coupons",
        "id=TEN&percent_off=10&duration=forever",
    );
    let big = post(&sim, "/v1/promotion_codes", "promotion[type]=coupon&promotion[coupon]=TEN&code=BIG&restrictions[minimum_amount]=5000&restrictions[minimum_amount_currency]=eur");
    let first = post(
        &sim,
        "/v1/promotion_codes",
        "promotion[type]=coupon&promotion[coupon]=TEN&code=FIRST&restrictions[first_time_transaction]=true",
    );
    let cus = id(&post(
        &sim,
        "/v1/customers",
        "payment_method=pm_card_visa&invoice_settings[default_payment_method]=pm_card_visa",
    ));
    let sub = |promo: &str| {
        sim.call(
            "POST",
            "/v1/subscriptions",
            &format!("customer={cus}&items[0][price]={price}&discounts[0][promotion_code]={promo}"),
        )
    };
    assert_eq!(sub(&id(&big)).0, 400, "30.00 is below the 50.00 minimum");
    assert_eq!(sub(&id(&first)).0, 200, "a first purchase");
    assert_eq!(sub(&id(&first)).0, 400, "no longer a first purchase");
}

#[test]
fn a_payment_mode_checkout_charges_a_one_time_price_once_and_its_refund_is_told() {
    let sim = sim();
    let (_, cus) = clocked_customer(&sim, "pm_card_visa");
    let one_time = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Pack&currency=eur&unit_amount=500&lookup_key=pack_100",
    ));
    let recurring = standard_price(&sim);
    let base = format!("mode=payment&customer={cus}&success_url=https://app.test/ok&cancel_url=https://app.test/no");

    // A recurring price, or subscription_data, has no place in payment mode;
    // payment_intent_data none in subscription mode.
    let (status, body) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("{base}&line_items[0][price]={recurring}&line_items[0][quantity]=1"),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "line_items[0][price]");
    let (status, body) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("{base}&line_items[0][price]={one_time}&line_items[0][quantity]=1&subscription_data[metadata][a]=b"),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = sim.call(
        "POST",
        "/v1/checkout/sessions",
        &format!("mode=subscription&customer={cus}&success_url=https://app.test/ok&line_items[0][price]={recurring}&line_items[0][quantity]=1&payment_intent_data[metadata][a]=b"),
    );
    assert_eq!(status, 400, "{body}");

    let cs = post(
        &sim,
        "/v1/checkout/sessions",
        &format!("{base}&line_items[0][price]={one_time}&line_items[0][quantity]=1&metadata[pack]=gen_100&payment_intent_data[metadata][pack]=gen_100"),
    );
    assert_eq!(
        (
            &cs["mode"],
            &cs["payment_status"],
            &cs["payment_intent"],
            &cs["amount_total"]
        ),
        (
            &json!("payment"),
            &json!("unpaid"),
            &Value::Null,
            &json!(500)
        )
    );
    assert_eq!(cs["invoice_creation"]["enabled"], false);
    let before = sim.events().len();
    let done = post(
        &sim,
        &format!("/_sim/checkout/sessions/{}/complete", id(&cs)),
        "payment_method=pm_card_visa",
    );
    assert_eq!(
        (
            &done["status"],
            &done["payment_status"],
            &done["subscription"]
        ),
        (&json!("complete"), &json!("paid"), &Value::Null)
    );
    let pi = get(
        &sim,
        &format!(
            "/v1/payment_intents/{}",
            done["payment_intent"].as_str().unwrap()
        ),
    );
    assert_eq!(
        (
            &pi["status"],
            &pi["amount"],
            &pi["metadata"]["pack"],
            &pi["customer"]
        ),
        (
            &json!("succeeded"),
            &json!(500),
            &json!("gen_100"),
            &json!(cus)
        )
    );
    assert_eq!(
        events_since(&sim, before),
        [
            "payment_method.attached",
            "payment_intent.created",
            "charge.succeeded",
            "payment_intent.succeeded",
            "checkout.session.completed"
        ]
    );
    assert!(
        get(&sim, &format!("/v1/subscriptions?customer={cus}"))["data"]
            .as_array()
            .unwrap()
            .is_empty(),
        "a payment makes no subscription"
    );

    let before = sim.events().len();
    post(&sim, "/v1/refunds", &format!("payment_intent={}", id(&pi)));
    assert_eq!(
        events_since(&sim, before),
        ["refund.created", "charge.refunded"]
    );
    let refunded = sim.events().last().unwrap().clone();
    let charge = &refunded["data"]["object"];
    assert_eq!(
        (
            &charge["refunded"],
            &charge["amount_refunded"],
            &charge["payment_intent"]
        ),
        (&json!(true), &json!(500), &pi["id"])
    );
}

#[test]
fn a_delayed_payment_completes_its_session_unpaid_and_tells_its_outcome_when_settled() {
    let sim = sim();
    let (_, cus) = clocked_customer(&sim, "pm_card_visa");
    let one_time = id(&post(
        &sim,
        "/v1/prices",
        "product_data[name]=Pack&currency=eur&unit_amount=500&lookup_key=pack_100",
    ));
    let session = || {
        post(
            &sim,
            "/v1/checkout/sessions",
            &format!("mode=payment&customer={cus}&success_url=https://app.test/ok&line_items[0][price]={one_time}&line_items[0][quantity]=1"),
        )
    };
    for (outcome, event, paid, pi_status) in [
        (
            "success",
            "checkout.session.async_payment_succeeded",
            "paid",
            "succeeded",
        ),
        (
            "failure",
            "checkout.session.async_payment_failed",
            "unpaid",
            "requires_payment_method",
        ),
    ] {
        let cs = id(&session());
        let before = sim.events().len();
        let done = post(
            &sim,
            &format!("/_sim/checkout/sessions/{cs}/complete"),
            "payment_method=pm_card_visa&delayed=true",
        );
        assert_eq!(
            (&done["status"], &done["payment_status"]),
            (&json!("complete"), &json!("unpaid"))
        );
        let pi = done["payment_intent"].as_str().unwrap().to_owned();
        assert_eq!(
            get(&sim, &format!("/v1/payment_intents/{pi}"))["status"],
            "processing"
        );
        assert_eq!(
            events_since(&sim, before),
            [
                "payment_method.attached",
                "payment_intent.created",
                "payment_intent.processing",
                "checkout.session.completed"
            ]
        );
        let before = sim.events().len();
        let settled = post(
            &sim,
            &format!("/_sim/payment_intents/{pi}/settle"),
            &format!("outcome={outcome}"),
        );
        assert_eq!(settled["status"], pi_status);
        let told = events_since(&sim, before);
        assert_eq!(told.last().map(String::as_str), Some(event), "{told:?}");
        let last = sim.events().last().unwrap().clone();
        assert_eq!(
            (
                &last["data"]["object"]["id"],
                &last["data"]["object"]["payment_status"]
            ),
            (&json!(cs), &json!(paid))
        );
        // Settled once: the payment intent is no longer processing.
        let (status, _) = sim.call(
            "POST",
            &format!("/_sim/payment_intents/{pi}/settle"),
            "outcome=success",
        );
        assert_eq!(status, 400);
    }
}
