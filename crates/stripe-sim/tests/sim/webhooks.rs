//! Signed webhook delivery over real HTTP, retries and delivery knobs; event listing.

use crate::support::*;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use stripe_sim::{SimConfig, SimHandle};

async fn served(cfg: SimConfig) -> SimHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    stripe_sim::serve(
        listener,
        SimConfig {
            seed: 9,
            time_scale: 0.0005,
            ..cfg
        },
    )
    .await
    .unwrap()
}

fn endpoint(h: &SimHandle, url: &str, events: &[&str]) -> String {
    let evs: String = events
        .iter()
        .map(|e| format!("&enabled_events[]={e}"))
        .collect();
    let ep = post(&h.sim, "/v1/webhook_endpoints", &format!("url={url}{evs}"));
    ep["secret"].as_str().unwrap().to_string()
}

fn verify(secret: &str, header: &str, body: &str) -> bool {
    let mut t = "";
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v,
            Some(("v1", v)) => sigs.push(v.to_string()),
            _ => {}
        }
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let want = hex::encode(mac.finalize().into_bytes());
    sigs.contains(&want)
}

#[tokio::test]
async fn events_are_delivered_signed_with_the_endpoint_secret_and_filtered_by_enabled_events() {
    let h = served(SimConfig::default()).await;
    let rx = Receiver::start(0).await;
    let secret = endpoint(&h, &rx.url, &["customer.created", "customer.updated"]);
    assert!(secret.starts_with("whsec_"));
    assert!(get(&h.sim, "/v1/webhook_endpoints")["data"][0]
        .get("secret")
        .is_none());
    let cus = id(&post(&h.sim, "/v1/customers", "email=w@x.io"));
    post(&h.sim, &format!("/v1/customers/{cus}"), "name=W");
    post(&h.sim, "/v1/products", "name=not-subscribed");
    let got = rx.wait_for("two events", |b| b.len() >= 2).await;
    assert_eq!(
        got.iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["customer.created", "customer.updated"]
    );
    assert_eq!(got[1]["data"]["previous_attributes"]["name"], Value::Null);
    for (sig, body) in rx.got.lock().unwrap().iter() {
        assert!(verify(&secret, sig, body), "bad signature {sig}");
        let t: i64 = sig
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(
            (now - t).abs() < 60,
            "signature timestamp is wall-clock time"
        );
    }
    assert_eq!(got[0]["api_version"], stripe_sim::API_VERSION);
    h.shutdown().await;
}

#[tokio::test]
async fn failed_deliveries_are_retried_until_acknowledged() {
    let h = served(SimConfig::default()).await;
    let rx = Receiver::start(2).await;
    endpoint(&h, &rx.url, &["*"]);
    let cus = post(&h.sim, "/v1/customers", "email=r@x.io");
    let got = rx.wait_for("a third attempt", |b| b.len() >= 3).await;
    assert!(got.iter().all(|e| e["type"] == "customer.created"));
    let ev_id = got[0]["id"].as_str().unwrap().to_string();
    assert!(
        got.iter().all(|e| e["id"] == ev_id.as_str()),
        "the same event is redelivered"
    );
    for _ in 0..100 {
        if get(&h.sim, &format!("/v1/events/{ev_id}"))["pending_webhooks"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        get(&h.sim, &format!("/v1/events/{ev_id}"))["pending_webhooks"],
        0
    );
    assert_eq!(
        get(&h.sim, "/v1/events?delivery_success=true")["data"][0]["id"],
        ev_id,
        "delivered in the end"
    );
    assert!(get(&h.sim, "/v1/events?delivery_success=false")["data"]
        .as_array()
        .unwrap()
        .is_empty());
    let _ = cus;
    h.shutdown().await;
}

#[tokio::test]
async fn dropped_events_are_never_delivered_and_list_as_unsuccessful() {
    let h = served(SimConfig::default()).await;
    let rx = Receiver::start(0).await;
    endpoint(&h, &rx.url, &["*"]);
    h.sim.update_config(|c| c.webhooks.drop_rate = 1.0);
    post(&h.sim, "/v1/customers", "email=d@x.io");
    h.sim.update_config(|c| c.webhooks.drop_rate = 0.0);
    post(&h.sim, "/v1/products", "name=marker");
    rx.wait_for("the marker", |b| {
        b.iter().any(|e| e["type"] == "product.created")
    })
    .await;
    assert!(!rx.bodies().iter().any(|e| e["type"] == "customer.created"));
    // The receiver sees the body before the sim records the 200; wait for that too.
    for _ in 0..200 {
        if get(&h.sim, "/v1/events?type=product.created")["data"][0]["pending_webhooks"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let failed = get(&h.sim, "/v1/events?delivery_success=false");
    assert_eq!(failed["data"].as_array().unwrap().len(), 1);
    assert_eq!(failed["data"][0]["type"], "customer.created");
    assert_eq!(failed["data"][0]["pending_webhooks"], 1);
    assert_eq!(
        get(&h.sim, "/v1/events?delivery_success=true")["data"][0]["type"],
        "product.created"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn duplicate_and_reorder_knobs_send_everything_twice_in_shuffled_order() {
    let h = served(SimConfig::default()).await;
    let rx = Receiver::start(0).await;
    endpoint(&h, &rx.url, &["customer.created"]);
    h.sim.update_config(|c| {
        c.webhooks.duplicate_rate = 1.0;
        c.webhooks.reorder_window_ms = 1000;
    });
    let ids: Vec<String> = (0..8)
        .map(|i| id(&post(&h.sim, "/v1/customers", &format!("email=o{i}@x.io"))))
        .collect();
    let got = rx.wait_for("16 deliveries", |b| b.len() >= 16).await;
    let order: Vec<String> = got
        .iter()
        .map(|e| e["data"]["object"]["id"].as_str().unwrap().to_string())
        .collect();
    for cid in &ids {
        assert_eq!(
            order.iter().filter(|o| *o == cid).count(),
            2,
            "{cid} delivered twice"
        );
    }
    let mut first_seen: Vec<String> = Vec::new();
    for o in &order {
        if !first_seen.contains(o) {
            first_seen.push(o.clone());
        }
    }
    assert_ne!(first_seen, ids, "order was shuffled");
    h.shutdown().await;
}

#[tokio::test]
async fn the_server_answers_real_http_with_stripes_headers() {
    let h = served(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let r = client
        .get(format!("{}/v1/customers", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(format!("{}/v1/customers", h.url()))
        .bearer_auth("sk_test_123")
        .header("Idempotency-Key", "abc")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("email=h%40x.io&metadata[k]=v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("request-id").is_some());
    assert_eq!(r.headers().get("idempotency-key").unwrap(), "abc");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["email"], "h@x.io");
    assert_eq!(body["metadata"]["k"], "v");
    h.shutdown().await;
}

#[test]
fn events_list_filters_by_type_types_and_created() {
    let sim = sim();
    post(&sim, "/v1/customers", "email=a@x.io");
    sim.set_time(Some(T0 + 100));
    post(&sim, "/v1/products", "name=P");
    let only = get(&sim, "/v1/events?type=customer.created");
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    let wild = get(&sim, "/v1/events?type=product.*");
    assert_eq!(wild["data"][0]["type"], "product.created");
    let both = get(
        &sim,
        "/v1/events?types[]=customer.created&types[]=product.created",
    );
    assert_eq!(both["data"].as_array().unwrap().len(), 2);
    let late = get(&sim, &format!("/v1/events?created[gte]={}", T0 + 50));
    assert_eq!(late["data"].as_array().unwrap().len(), 1);
    assert_eq!(late["data"][0]["type"], "product.created");
    let ev = get(
        &sim,
        &format!("/v1/events/{}", late["data"][0]["id"].as_str().unwrap()),
    );
    assert_eq!(ev["object"], "event");
    assert!(ev["request"]["id"].as_str().unwrap().starts_with("req_"));
}

#[test]
fn webhook_endpoints_refuse_unknown_event_types_and_can_be_updated_and_disabled() {
    let sim = sim();
    let (status, body) = sim.call(
        "POST",
        "/v1/webhook_endpoints",
        "url=http://127.0.0.1:9/h&enabled_events[]=invoice.payed",
    );
    // Stripe's enumeration of event types, from its definitions.
    assert_eq!(status, 400);
    assert_eq!(body["error"]["param"], "enabled_events[0]");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Invalid enabled_events[0]: must be one of "));
    let ep = post(
        &sim,
        "/v1/webhook_endpoints",
        "url=http://127.0.0.1:9/h&enabled_events[]=invoice.paid&api_version=2026-09-30.endive",
    );
    assert_eq!(ep["api_version"], "2026-09-30.endive");
    let up = post(
        &sim,
        &format!("/v1/webhook_endpoints/{}", id(&ep)),
        "enabled_events[]=invoice.paid&enabled_events[]=charge.refunded&disabled=true",
    );
    assert_eq!(up["status"], "disabled");
    assert_eq!(up["enabled_events"].as_array().unwrap().len(), 2);
    let gone = ok(
        &sim,
        "DELETE",
        &format!("/v1/webhook_endpoints/{}", id(&ep)),
        "",
    );
    assert_eq!(gone["deleted"], true);
    assert!(get(&sim, "/v1/webhook_endpoints")["data"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_rolled_secret_keeps_signing_alongside_the_new_one_until_it_expires() {
    let h = served(SimConfig::default()).await;
    let rx = Receiver::start(0).await;
    let old = endpoint(&h, &rx.url, &["customer.created"]);
    let ep_id = get(&h.sim, "/v1/webhook_endpoints")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let rolled = post(
        &h.sim,
        &format!("/_sim/webhook_endpoints/{ep_id}/roll_secret"),
        "expires_in=3600",
    );
    let new = rolled["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    post(&h.sim, "/v1/customers", "email=r@x.io");
    rx.wait_for("one delivery", |b| !b.is_empty()).await;
    let (sig, body) = rx.got.lock().unwrap()[0].clone();
    assert_eq!(sig.matches("v1=").count(), 2);
    assert!(verify(&old, &sig, &body) && verify(&new, &sig, &body));
    h.shutdown().await;
}
