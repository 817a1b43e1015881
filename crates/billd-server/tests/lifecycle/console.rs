//! The operator console over real HTTP: log-in with an admin key, the
//! session cookie, CSRF on every action, the log-in rate limit, escaping,
//! and the pages and actions an operator uses.

use reqwest::header::{CONTENT_SECURITY_POLICY, LOCATION, SET_COOKIE, X_FRAME_OPTIONS};
use reqwest::redirect::Policy;
use serde_json::json;

use crate::admin::{deliver_poison, paid};
use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY, APP_KEY};

/// A console visitor: no redirects followed, its cookie kept by hand.
struct Visitor<'h> {
    h: &'h Harness,
    http: reqwest::Client,
    cookie: Option<String>,
}

/// What a request answered.
struct Page {
    status: u16,
    location: Option<String>,
    set_cookie: Option<String>,
    csp: Option<String>,
    frame: Option<String>,
    body: String,
}

impl<'h> Visitor<'h> {
    fn new(h: &'h Harness) -> Self {
        let http = reqwest::Client::builder()
            .redirect(Policy::none())
            .build()
            .unwrap();
        Visitor {
            h,
            http,
            cookie: None,
        }
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = match &self.cookie {
            Some(cookie) => request.header("Cookie", cookie),
            None => request,
        };
        let response = request.send().await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &reqwest::header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let set_cookie = header(SET_COOKIE);
        if let Some(set) = &set_cookie {
            let pair = set.split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        Page {
            status: response.status().as_u16(),
            location: header(LOCATION),
            set_cookie,
            csp: header(CONTENT_SECURITY_POLICY),
            frame: header(X_FRAME_OPTIONS),
            body: response.text().await.unwrap(),
        }
    }

    async fn get(&mut self, path: &str) -> Page {
        let request = self.http.get(format!("{}{path}", self.h.base));
        self.send(request).await
    }

    async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let request = self.http.post(format!("{}{path}", self.h.base)).form(form);
        self.send(request).await
    }

    async fn log_in(&mut self) {
        let page = self.post("/console/login", &[("key", ADMIN_KEY)]).await;
        assert_eq!(page.status, 303, "{}", page.body);
        assert!(self.cookie.is_some());
    }
}

/// The CSRF token of the first form of a page.
fn csrf(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").unwrap() + "name=\"csrf\" value=\"".len();
    body[at..].split('"').next().unwrap().to_owned()
}

/// The paid customer `u_ada`, renamed `<script>alert(1)</script>` with
/// `email`, and a dead event of its Stripe customer (`evt_poison_<b>`, an
/// id holding markup): what the console must show as text.
pub(crate) async fn paid_with_a_dead_event(h: &Harness, email: &str) {
    let (cus, _) = paid(h).await;
    let renamed = h
        .http
        .put(format!("{}/v1/customers/u_ada", h.base))
        .bearer_auth(APP_KEY)
        .json(&json!({ "email": email, "name": "<script>alert(1)</script>" }))
        .send()
        .await
        .unwrap();
    assert!(renamed.status().is_success());
    deliver_poison(h, "evt_poison_<b>", &cus).await;
    // Acknowledged, it is `received`, with no customer yet, until the
    // worker's next round derives it; the customer's pages list it after.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let event = h.store.get_event("evt_poison_<b>").await.unwrap().unwrap();
        if event.status != billd_store::EventStatus::Received {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never derived");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

async fn the_console_needs_an_admin_session_and_csrf_and_limits_log_ins(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    let mut v = Visitor::new(&h);
    let page = v.get("/console").await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/console/login"))
    );
    let page = v.get("/console/login").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<form class=\"login\""), "{}", page.body);
    let csp = page.csp.unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.frame.as_deref(), Some("DENY"));

    // An app key is no admin key: an HTML page, not the API's JSON.
    let page = v.post("/console/login", &[("key", APP_KEY)]).await;
    assert_eq!(page.status, 401);
    assert!(page.body.starts_with("<!doctype html>"), "{}", page.body);
    assert!(v.cookie.is_none());

    v.log_in().await;
    let cookie = v.cookie.clone().unwrap();
    let page = v.get("/console").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("dead events"));
    let set = page.set_cookie.unwrap();
    for attribute in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/console",
        "Max-Age=28800",
    ] {
        assert!(set.contains(attribute), "{set}");
    }
    for path in [
        "/console",
        "/console/customers",
        "/console/events",
        "/console/emails",
        "/console/reconciliation",
        "/console/alerts",
    ] {
        let page = v.get(path).await;
        assert_eq!(page.status, 200, "{path}");
        assert!(!page.body.contains(ADMIN_KEY) && !page.body.contains(&h.webhook_secret));
        assert!(page.csp.is_some(), "{path}");
    }
    let css = v.get("/console/assets/console.css").await;
    assert_eq!(css.status, 200);

    // Log-out wants the session's own token.
    let token = csrf(&v.get("/console").await.body);
    let page = v.post("/console/logout", &[("csrf", "forged")]).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("csrf_invalid"));
    let page = v.post("/console/logout", &[("csrf", &token)]).await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/console/login"))
    );
    assert!(page.set_cookie.unwrap().contains("Max-Age=0"));
    assert_eq!(v.get("/console").await.status, 303);
    // A cookie from another key set is no session either.
    v.cookie = Some(cookie.replace('.', "x"));
    assert_eq!(v.get("/console").await.status, 303);

    // Ten attempts a minute from one address: 2 were made above.
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(v.post("/console/login", &[("key", "guess")]).await.status);
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 401, 401, 401, 429]);
    // The right key too, until the minute is over.
    let page = v.post("/console/login", &[("key", ADMIN_KEY)]).await;
    assert_eq!(page.status, 429);
    h.shutdown().await;
}

async fn an_operator_finds_a_customer_replays_its_dead_event_and_resyncs(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    paid_with_a_dead_event(&h, "u_ada@example.com").await;

    let mut v = Visitor::new(&h);
    v.log_in().await;
    let page = v.get("/console/customers?query=U_ADA%40example").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("href=\"/console/customers/u_ada\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(!page.body.contains("<script>alert(1)"));

    // The poison event is on the customer's page once the worker has
    // derived it (until then it names no Stripe customer).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let page = loop {
        let page = v.get("/console/customers/u_ada").await;
        if page.body.contains("evt_poison_&lt;b&gt;") {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "{}", page.body);
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<div class=\"n\">pro</div>"),
        "{}",
        page.body
    );
    assert!(page.body.contains("customer.subscription.created"));
    assert!(!page.body.contains("<script>alert(1)"));
    assert!(!page.body.contains("evt_poison_<b>"));

    // The poison event is dead; replaying it needs the token.
    let dead = "/console/events?status=dead";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !v.get(dead).await.body.contains("evt_poison_&lt;b&gt;") {
        assert!(std::time::Instant::now() < deadline, "never dead");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let replay = "/console/events/evt_poison_%3Cb%3E/replay";
    let page = v.post(replay, &[]).await;
    assert_eq!(page.status, 403);
    let token = csrf(&v.get(dead).await.body);
    let page = v.post(replay, &[("csrf", &token)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let event = h.store.get_event("evt_poison_<b>").await.unwrap().unwrap();
    assert!(event.attempts <= 1, "{event:?}");

    let page = v
        .post("/console/customers/u_ada/resync", &[("csrf", &token)])
        .await;
    assert_eq!(
        (page.status, page.location.as_deref()),
        (303, Some("/console/customers/u_ada"))
    );
    let page = v.get("/console/customers/u_nobody").await;
    assert_eq!(page.status, 404);
    assert!(page.body.contains("customer_not_found"));
    h.shutdown().await;
}

/// A dead outbox row: a re-fetch of a subscription Stripe does not have
/// (Stripe answers 404, which retrying cannot fix).
async fn dead_outbox_row(h: &Harness) -> i64 {
    let effect = billd_core::Effect::RefetchSubscription {
        subscription: billd_core::StripeSubscriptionId::parse("sub_gone").unwrap(),
        tie_created: t0(),
        round: 0,
        dedupe_key: "refetch_subscription:sub_gone:1".to_owned(),
    };
    let items = billd_server::pipeline::outbox_items(&[effect], Default::default()).unwrap();
    h.store.enqueue_outbox(None, &items, t0()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (status, rows) = h
            .admin_get("/v1/admin/outbox?status=dead", Some(ADMIN_KEY))
            .await;
        assert_eq!(status, 200, "{rows}");
        if let Some(id) = rows["data"][0]["id"].as_i64() {
            assert_eq!(rows["data"][0]["kind"], "refetch_subscription");
            return id;
        }
        assert!(std::time::Instant::now() < deadline, "never dead");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn a_dead_outbox_row_is_retried_once_and_a_sent_one_never(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    paid(&h).await;
    let dead = dead_outbox_row(&h).await;

    let mut v = Visitor::new(&h);
    v.log_in().await;
    let page = v.get("/console/emails?status=dead").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains("refetch_subscription:sub_gone:1"),
        "{}",
        page.body
    );
    let retry = format!("/console/emails/{dead}/retry");
    assert_eq!(v.post(&retry, &[]).await.status, 403);
    let token = csrf(&page.body);
    let page = v.post(&retry, &[("csrf", &token)]).await;
    assert_eq!(page.status, 303, "{}", page.body);
    // Dead again after its new attempt, and retried through the API.
    let dead_again = dead_outbox_row(&h).await;
    assert_eq!(dead_again, dead);
    let response = h
        .http
        .post(format!("{}/v1/admin/outbox/{dead}/retry", h.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A sent email is never sent again.
    let (_, sent) = h
        .admin_get(
            "/v1/admin/outbox?status=sent&customer=u_ada",
            Some(ADMIN_KEY),
        )
        .await;
    let sent = sent["data"][0]["id"].as_i64().unwrap();
    for path in [
        format!("/v1/admin/outbox/{sent}/retry"),
        "/v1/admin/outbox/x/retry".into(),
    ] {
        let response = h
            .http
            .post(format!("{}{path}", h.base))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: serde_json::Value = response.json().await.unwrap();
        let code = body["error"]["code"].as_str().unwrap().to_owned();
        assert!(
            [
                (404, "dead_outbox_row_not_found".to_owned()),
                (400, "invalid_path".to_owned())
            ]
            .contains(&(status, code.clone())),
            "{path}: {status} {code}"
        );
    }
    let (status, body) = h
        .admin_get("/v1/admin/outbox?status=lost", Some(ADMIN_KEY))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_status"))
    );
    h.shutdown().await;
}

/// The latest operator action recorded.
async fn last_action(h: &Harness) -> serde_json::Value {
    let (status, actions) = h
        .admin_get("/v1/admin/actions?limit=1", Some(ADMIN_KEY))
        .await;
    assert_eq!(status, 200, "{actions}");
    actions["data"][0].clone()
}

async fn wait_until_dead(h: &Harness, id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let event = h.store.get_event(id).await.unwrap().unwrap();
        if event.status == billd_store::EventStatus::Dead {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never dead: {event:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn every_console_action_is_recorded_and_events_filter_by_customer_and_day(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    paid_with_a_dead_event(&h, "u_ada@example.com").await;
    wait_until_dead(&h, "evt_poison_<b>").await;
    let mut v = Visitor::new(&h);
    v.log_in().await;

    // The one script is billd's own file, allowed by the policy; no inline script.
    let page = v.get("/console/events?status=dead&customer=u_ada").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.csp.clone().unwrap().contains("script-src 'self'"));
    assert_eq!(page.body.matches("<script").count(), 1, "{}", page.body);
    assert!(page
        .body
        .contains("<script src=\"/console/assets/console.js\" defer></script>"));
    let js = v.get("/console/assets/console.js").await;
    assert_eq!(js.status, 200);
    assert!(js.body.contains("getTimezoneOffset"), "{}", js.body);

    // Filters: customer, type, and UTC days around the event's arrival
    // (webhooks are stamped by the wall clock their signature is checked on).
    let received = h
        .store
        .get_event("evt_poison_<b>")
        .await
        .unwrap()
        .unwrap()
        .received_at;
    let today = billd_core::calendar::rfc3339(received)[..10].to_owned();
    let yesterday = billd_core::calendar::rfc3339(received - 86_400)[..10].to_owned();
    let shown = |body: &str| body.contains("evt_poison_&lt;b&gt;");
    assert!(shown(&page.body), "{}", page.body);
    for (query, expected) in [
        ("customer=u_nobody".to_owned(), false),
        (format!("from={today}&until={today}"), true),
        (format!("until={yesterday}"), false),
        (
            format!("from={today}&customer=u_ada&type=customer.created"),
            false,
        ),
    ] {
        let page = v.get(&format!("/console/events?status=dead&{query}")).await;
        assert_eq!(page.status, 200, "{query}: {}", page.body);
        assert_eq!(shown(&page.body), expected, "{query}");
    }
    let page = v.get("/console/events?from=2027-02-30").await;
    assert_eq!(page.status, 400);
    assert!(page.body.contains("invalid_date"), "{}", page.body);

    // One event, its payload pretty-printed and escaped.
    let page = v.get("/console/events/evt_poison_%3Cb%3E").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body.contains("<pre class=\"payload\">{\n  &quot;"),
        "{}",
        page.body
    );
    assert!(!page.body.contains("evt_poison_<b>"));
    assert_eq!(v.get("/console/events/evt_none").await.status, 404);

    // Bulk replay of the dead events a filter picks: it needs the token,
    // then takes exactly this customer's dead event, recorded as this
    // session's action.
    let token = csrf(&page.body);
    let form = [
        ("customer", "u_ada"),
        ("type", ""),
        ("from", today.as_str()),
        ("until", ""),
    ];
    let page = v.post("/console/events/replay", &form).await;
    assert_eq!(page.status, 403);
    let mut with_token = form.to_vec();
    with_token.push(("csrf", &token));
    let page = v.post("/console/events/replay", &with_token).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let action = last_action(&h).await;
    assert_eq!(action["action"], "replay_events");
    assert_eq!(action["outcome"], "ok: 1 replayed", "{action}");
    assert_eq!(action["customer_id"], "u_ada");
    let actor = action["actor"].as_str().unwrap().to_owned();
    assert!(actor.starts_with("console session "), "{actor}");
    assert!(action["target"]
        .as_str()
        .unwrap()
        .contains("customer=u_ada"));
    wait_until_dead(&h, "evt_poison_<b>").await;

    // Cancel at period end, and resume, from the customer page.
    let page = v.get("/console/customers/u_ada").await;
    assert!(
        page.body
            .contains("action=\"/console/customers/u_ada/cancel\""),
        "{}",
        page.body
    );
    assert!(page.body.contains("<h2>Invoices</h2>"));
    assert!(page.body.contains("Stripe&#39;s page") || page.body.contains("Stripe's page"));
    let page = v
        .post("/console/customers/u_ada/cancel", &[("csrf", &token)])
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    let (_, e) = h.entitlements("u_ada").await;
    assert_eq!(e["cancel_at_period_end"], true, "{e}");
    let action = last_action(&h).await;
    assert_eq!(
        (&action["action"], &action["outcome"]),
        (&json!("cancel_subscription"), &json!("ok"))
    );
    assert_eq!(action["actor"], actor.as_str());
    let page = v.get("/console/customers/u_ada").await;
    assert!(
        page.body
            .contains("action=\"/console/customers/u_ada/resume\""),
        "{}",
        page.body
    );
    let page = v
        .post("/console/customers/u_ada/resume", &[("csrf", &token)])
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(
        h.entitlements("u_ada").await.1["cancel_at_period_end"],
        false
    );
    assert_eq!(last_action(&h).await["action"], "resume_subscription");

    // A refused action is recorded with its code; a forged form is no action.
    let page = v
        .post("/console/customers/u_nobody/resync", &[("csrf", &token)])
        .await;
    assert_eq!(page.status, 404);
    let action = last_action(&h).await;
    assert_eq!(
        (&action["action"], &action["outcome"]),
        (&json!("resync_customer"), &json!("customer_not_found"))
    );
    let before = action["id"].clone();
    let page = v
        .post("/console/customers/u_ada/cancel", &[("csrf", "x")])
        .await;
    assert_eq!(page.status, 403);
    assert_eq!(last_action(&h).await["id"], before);

    // The admin API's actions are recorded too, as the admin API's.
    let response = h
        .http
        .post(format!("{}/v1/admin/customers/u_ada/resync", h.base))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let action = last_action(&h).await;
    assert_eq!(
        (&action["actor"], &action["action"]),
        (&json!("admin API"), &json!("resync_customer"))
    );
    assert_eq!(action["outcome"], "ok: 1 subscriptions");

    // The timeline merges events, state changes and operator actions.
    let page = v.get("/console/customers/u_ada").await;
    for needle in [
        "<h2>Timeline</h2>",
        "<td>event</td>",
        "<td>change</td>",
        "<td>operator</td>",
        "cancel_subscription",
        "by admin API",
    ] {
        assert!(page.body.contains(needle), "{needle}: {}", page.body);
    }
    let (_, view) = h
        .admin_get("/v1/admin/customers/u_ada", Some(ADMIN_KEY))
        .await;
    assert!(view["actions"].as_array().unwrap().len() >= 4, "{view}");
    let (status, body) = h
        .admin_get("/v1/admin/actions?customer=u%20x", Some(ADMIN_KEY))
        .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_customer_id"))
    );
    h.shutdown().await;
}

async fn the_overview_charts_the_last_day_and_the_alerts_page_lists_alerts(db: Db) {
    let h = Harness::start(db, t0(), Default::default()).await;
    paid_with_a_dead_event(&h, "u_ada@example.com").await;
    wait_until_dead(&h, "evt_poison_<b>").await;
    // Webhooks are stamped by the wall clock; look at the day they arrived.
    let received = h
        .store
        .get_event("evt_poison_<b>")
        .await
        .unwrap()
        .unwrap()
        .received_at;
    h.clock.set(received + 1);
    let alert = billd_core::Effect::AdminAlert {
        alert: billd_core::AlertKind::DisputeOpened,
        dedupe_key: "dispute_opened:du_html".to_owned(),
        message: "dispute <b>du_html</b> opened".to_owned(),
    };
    let items = billd_server::pipeline::outbox_items(&[alert], Default::default()).unwrap();
    h.store
        .enqueue_outbox(None, &items, received)
        .await
        .unwrap();

    let (status, overview) = h.admin_get("/v1/admin/overview", Some(ADMIN_KEY)).await;
    assert_eq!(status, 200, "{overview}");
    let activity = overview["activity"].as_array().unwrap();
    assert_eq!(activity.len(), 24);
    // The poison's hour: the current one, or the one before when it came
    // in the hour's last second.
    let hour = received - received.rem_euclid(3600);
    let last = activity.iter().find(|b| b["start"] == hour).unwrap();
    assert!(activity[22]["start"] == hour || activity[23]["start"] == hour);
    assert!(last["webhooks"].as_i64().unwrap() >= 5, "{last}");
    assert_eq!(last["dead"], 1, "{last}");
    let paid = last["payments_succeeded"].as_i64().unwrap();
    assert!(paid >= 1, "{last}");
    assert_eq!(last["payments_failed"], 0);
    assert_eq!(overview["payment_failure_rate"], 0.0);
    let sum = |k: &str| activity.iter().map(|b| b[k].as_i64().unwrap()).sum::<i64>();
    let per_minute = overview["webhooks_per_minute"].as_f64().unwrap();
    assert!(
        (per_minute - sum("webhooks") as f64 / 60.0).abs() < 1e-9,
        "{overview}"
    );
    assert_eq!(overview["alerts_24h"], 1);
    assert!(overview["last_reconciliation"].is_null());

    let mut v = Visitor::new(&h);
    v.log_in().await;
    let page = v.get("/console").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(page.body.matches("<rect class=\"bar\"").count(), 72);
    for needle in [
        "webhooks / min (last hour)",
        "payment failure rate (24 h)",
        "0.0 %",
        "never",
    ] {
        assert!(page.body.contains(needle), "{needle}: {}", page.body);
    }
    let page = v.get("/console/alerts").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("dispute_opened"), "{}", page.body);
    assert!(page
        .body
        .contains("dispute &lt;b&gt;du_html&lt;/b&gt; opened"));
    assert!(!page.body.contains("<b>du_html"));
    let (_, alerts) = h.admin_get("/v1/admin/alerts", Some(ADMIN_KEY)).await;
    assert_eq!(alerts["data"][0]["alert"], "dispute_opened", "{alerts}");
    assert_eq!(
        alerts["data"][0]["message"],
        "dispute <b>du_html</b> opened"
    );
    let (_, none) = h
        .admin_get(
            &format!("/v1/admin/alerts?since={}", received + 10),
            Some(ADMIN_KEY),
        )
        .await;
    assert_eq!(none["data"], json!([]));
    let page = v.get("/console/reconciliation").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("No reconciliation has run yet."));
    h.shutdown().await;
}

on_both_databases!(
    the_overview_charts_the_last_day_and_the_alerts_page_lists_alerts,
    every_console_action_is_recorded_and_events_filter_by_customer_and_day,
    the_console_needs_an_admin_session_and_csrf_and_limits_log_ins,
    an_operator_finds_a_customer_replays_its_dead_event_and_resyncs,
    a_dead_outbox_row_is_retried_once_and_a_sent_one_never,
);
