//! Field validation as Stripe does it, over real HTTP: bad emails, integers
//! and enumeration values are 400 `invalid_request_error` with Stripe's
//! `code` (none for an enumeration, as on Stripe) and `param`.

use serde_json::Value;
use stripe_sim::{SimConfig, SimHandle};

async fn served() -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    stripe_sim::serve(
        listener,
        SimConfig {
            seed: 5,
            frozen_time: Some(crate::support::T0),
            ..SimConfig::default()
        },
    )
    .await
    .unwrap()
}

/// `POST {path}` with a form body over HTTP: (status, body).
async fn post(h: &SimHandle, path: &str, form: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", h.url()))
        .bearer_auth("sk_test_validation")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[track_caller]
fn assert_error(got: &(u16, Value), code: Option<&str>, param: &str, message: &str) {
    let (status, body) = got;
    assert_eq!(*status, 400, "{body:#}");
    let e = &body["error"];
    assert_eq!(e["type"], "invalid_request_error", "{body:#}");
    assert_eq!(e["code"].as_str(), code, "{body:#}");
    assert_eq!(e["param"], param, "{body:#}");
    assert_eq!(e["message"], message, "{body:#}");
}

#[tokio::test]
async fn an_invalid_email_on_a_customer_is_email_invalid_on_create_and_update() {
    let h = served().await;
    for bad in ["not-an-email", "a@gmail", "%20a@example.com"] {
        let shown = bad.replace("%20", " ");
        assert_error(
            &post(&h, "/v1/customers", &format!("email={bad}")).await,
            Some("email_invalid"),
            "email",
            &format!("Invalid email address: {shown}"),
        );
    }
    let (status, cus) = post(&h, "/v1/customers", "email=ok%40example.com").await;
    assert_eq!(status, 200, "{cus:#}");
    let id = cus["id"].as_str().unwrap();
    let (_, price) = post(
        &h,
        "/v1/prices",
        "product_data[name]=P&currency=eur&unit_amount=100&recurring[interval]=month",
    )
    .await;
    let price = price["id"].as_str().unwrap();
    assert_error(
        &post(&h, &format!("/v1/customers/{id}"), "email=x%40y").await,
        Some("email_invalid"),
        "email",
        "Invalid email address: x@y",
    );
    // Refused, not half-applied; clearing with an empty value stays allowed.
    let (_, after) = post(&h, &format!("/v1/customers/{id}"), "name=N").await;
    assert_eq!(after["email"], "ok@example.com");
    let (status, cleared) = post(&h, &format!("/v1/customers/{id}"), "email=").await;
    assert_eq!((status, &cleared["email"]), (200, &Value::Null));
    assert_error(
        &post(
            &h,
            "/v1/checkout/sessions",
            &format!("mode=subscription&customer_email=nobody&success_url=https://x.example&line_items[0][price]={price}&line_items[0][quantity]=1"),
        )
        .await,
        Some("email_invalid"),
        "customer_email",
        "Invalid email address: nobody",
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_negative_or_fractional_unit_amount_is_parameter_invalid_integer() {
    let h = served().await;
    let (_, prod) = post(&h, "/v1/products", "name=P").await;
    let prod = prod["id"].as_str().unwrap().to_string();
    let price = |amount: &str| format!("product={prod}&currency=eur&unit_amount={amount}");
    assert_error(
        &post(&h, "/v1/prices", &price("-5")).await,
        Some("parameter_invalid_integer"),
        "unit_amount",
        "Invalid non-negative integer",
    );
    assert_error(
        &post(&h, "/v1/prices", &price("12.5")).await,
        Some("parameter_invalid_integer"),
        "unit_amount",
        "Invalid integer: 12.5",
    );
    assert_error(
        &post(
            &h,
            "/v1/prices",
            &format!("{}&currency_options[usd][unit_amount]=abc", price("100")),
        )
        .await,
        Some("parameter_invalid_integer"),
        "currency_options[usd][unit_amount]",
        "Invalid integer: abc",
    );
    let (status, ok) = post(&h, "/v1/prices", &price("0")).await;
    assert_eq!(status, 200, "{ok:#}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_value_outside_an_enumeration_is_refused_naming_the_accepted_values() {
    let h = served().await;
    let (_, prod) = post(&h, "/v1/products", "name=P").await;
    let prod = prod["id"].as_str().unwrap().to_string();
    assert_error(
        &post(
            &h,
            "/v1/prices",
            &format!("product={prod}&currency=eur&unit_amount=100&recurring[interval]=fortnight"),
        )
        .await,
        None,
        "recurring[interval]",
        "Invalid recurring[interval]: must be one of day, month, week, or year",
    );
    // Enumerations come from Stripe's definitions for every endpoint, not a hand-written list.
    let (_, cus) = post(&h, "/v1/customers", "email=e%40example.com").await;
    let cus = cus["id"].as_str().unwrap();
    assert_error(
        &post(&h, &format!("/v1/customers/{cus}"), "tax_exempt=sometimes").await,
        None,
        "tax_exempt",
        "Invalid tax_exempt: must be one of exempt, none, or reverse",
    );
    let (status, ok) = post(&h, &format!("/v1/customers/{cus}"), "tax_exempt=exempt").await;
    assert_eq!(status, 200, "{ok:#}");
    let (_, price) = post(
        &h,
        "/v1/prices",
        &format!("product={prod}&currency=eur&unit_amount=100&recurring[interval]=month"),
    )
    .await;
    assert_error(
        &post(
            &h,
            "/v1/subscriptions",
            &format!(
                "customer={cus}&items[0][price]={}&payment_behavior=eventually",
                price["id"].as_str().unwrap()
            ),
        )
        .await,
        None,
        "payment_behavior",
        "Invalid payment_behavior: must be one of allow_incomplete, default_incomplete, error_if_incomplete, or pending_if_incomplete",
    );
    h.shutdown().await;
}

/// Stripe's published error codes have no generic `parameter_invalid`: a
/// required parameter sent empty is `parameter_invalid_empty`, an absent one
/// `parameter_missing`, and a value refused for another reason (a boolean
/// that is not one) carries no code, only `param` and the message.
#[tokio::test]
async fn refusals_carry_stripes_own_codes_or_none() {
    let h = served().await;
    assert_error(
        &post(&h, "/v1/products", "name=").await,
        Some("parameter_invalid_empty"),
        "name",
        "You passed an empty string for 'name'. We assume empty values are an attempt to unset a parameter; however 'name' cannot be unset. You should remove 'name' from your request or supply a non-empty value.",
    );
    assert_error(
        &post(&h, "/v1/products", "description=D").await,
        Some("parameter_missing"),
        "name",
        "Missing required param: name.",
    );
    assert_error(
        &post(&h, "/v1/products", "name=P&active=maybe").await,
        None,
        "active",
        "Invalid boolean: maybe",
    );
}

#[tokio::test]
async fn a_value_of_the_wrong_type_is_refused_as_its_type_says_even_where_no_handler_reads_it() {
    let h = served().await;
    // `limit` is an integer, `percent_off` a number, `livemode`-like
    // booleans are `true`/`false`: the definitions say so, not a handler.
    let (_, prod) = post(&h, "/v1/products", "name=P").await;
    let prod = prod["id"].as_str().unwrap().to_string();
    assert_error(
        &post(&h, "/v1/prices", &format!("product={prod}&currency=eur&unit_amount=100&recurring[interval]=month&recurring[interval_count]=1.5")).await,
        Some("parameter_invalid_integer"),
        "recurring[interval_count]",
        "Invalid integer: 1.5",
    );
    assert_error(
        &post(&h, "/v1/coupons", "percent_off=lots&duration=once").await,
        None,
        "percent_off",
        "Invalid decimal: lots",
    );
    assert_error(
        &post(&h, "/v1/products", "name=Q&active=maybe").await,
        None,
        "active",
        "Invalid boolean: maybe",
    );
    let (status, _) = post(&h, "/v1/coupons", "percent_off=12.5&duration=once").await;
    assert_eq!(status, 200);
    h.shutdown().await;
}
