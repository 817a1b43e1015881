//! The operator console in a real browser: Debian's headless Chromium,
//! driven by its chromedriver over the W3C WebDriver protocol (plain JSON
//! over HTTP). `scripts/test.sh` installs both; a missing one fails the
//! test rather than skipping it. Screenshots of every page land in
//! `$BILLD_TEST_ARTIFACTS/console/<database>/` (default: the target
//! directory's `tmp/test-artifacts`).

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::console::paid_with_a_dead_event;
use crate::on_both_databases;
use crate::support::{t0, Db, Harness, ADMIN_KEY};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Every wait of the test gives up after this long: the whole scenario
/// stays well under a minute.
const PATIENCE: Duration = Duration::from_secs(20);

/// A chromedriver process on a loopback port, in a process group of its
/// own with the browser it starts: dropped, the whole group is killed, so
/// a test, passed or failed, leaves no browser behind (ending the session
/// alone leaves Chromium running once the driver is gone).
struct Driver {
    child: Child,
    base: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.wait();
    }
}

/// One browser session: its id and the HTTP client speaking to the driver.
struct Browser {
    driver: Driver,
    http: reqwest::Client,
    session: String,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile and
    /// the flags this machine's closed network needs.
    async fn start(shots: PathBuf) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .process_group(0)
            // Under scripts/test-dates.sh billd runs on a faked clock; the
            // browser keeps the real one (Chromium does not start with
            // libfaketime preloaded), which changes nothing for it.
            .env_remove("LD_PRELOAD")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let ready = match http.get(format!("{}/status", driver.base)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .map(|v| v["value"]["ready"] == true),
                Err(_) => None,
            };
            if ready == Some(true) {
                break;
            }
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            // An alert left open fails the next command instead of being
            // dismissed quietly.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        }}});
        let response = http
            .post(format!("{}/session", driver.base))
            .json(&capabilities)
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let session = body["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {body}"))
            .to_owned();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            http,
            session,
            shots,
            _profile: profile,
        }
    }

    /// One WebDriver command; an error answer (such as an unexpected alert)
    /// fails the test with the driver's message.
    async fn command(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.driver.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            response["value"].get("error").is_none(),
            "{path}: {response}"
        );
        response["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Value {
        self.command(reqwest::Method::GET, path, None).await
    }

    async fn go(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        self.get("/url").await.as_str().unwrap().to_owned()
    }

    /// Waits until the current URL satisfies `want` (a click's navigation
    /// may still be under way when the click's command answers).
    async fn reach(&self, what: &str, want: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let url = self.url().await;
            if want(&url) {
                return;
            }
            assert!(Instant::now() < deadline, "never reached {what}: at {url}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the current URL is `url`.
    async fn reach_url(&self, url: &str) {
        self.reach(url, |at| at == url).await;
    }

    /// The page's HTML as the browser parsed it.
    async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap().to_owned()
    }

    /// The first element matching a CSS selector.
    async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        // The W3C element reference key.
        found["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("{css}: {found}"))
            .to_owned()
    }

    async fn text_of(&self, css: &str) -> String {
        let element = self.find(css).await;
        let text = self.get(&format!("/element/{element}/text")).await;
        text.as_str().unwrap().to_owned()
    }

    /// Clicks a link or button and waits for the page it leads to: until
    /// the clicked element belongs to a page that is gone (every click of
    /// this test navigates).
    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
        let url = format!(
            "{}/session/{}/element/{element}/name",
            self.driver.base, self.session
        );
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer: Value = self
                .http
                .get(&url)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            // Chromium names a node of a page that is gone either way,
            // depending on how far the new page has come.
            let gone = answer["value"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not belong to the document"));
            match answer["value"]["error"].as_str() {
                Some("stale element reference") => return,
                Some(_) if gone => return,
                None => {}
                Some(_) => panic!("{css}: {answer}"),
            }
            assert!(Instant::now() < deadline, "{css}: the page stayed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// Runs a script in the page through the driver (outside the page's
    /// Content-Security-Policy, which forbids the page's own scripts).
    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": [] }))
            .await
    }

    /// No alert, confirm or prompt is open.
    async fn no_dialog(&self) {
        let url = format!("{}/session/{}/alert/text", self.driver.base, self.session);
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["value"]["error"], "no such alert", "{answer}");
    }

    /// Writes a PNG of the viewport as `<name>.png`.
    async fn screenshot(&self, name: &str) {
        let png = self.get("/screenshot").await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }
}

/// Where a database's screenshots go.
fn artifacts(db: Db) -> PathBuf {
    let root = std::env::var_os("BILLD_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-artifacts"));
    let db = match db {
        Db::Sqlite => "sqlite",
        Db::Postgres => "postgres",
    };
    root.join("console").join(db)
}

async fn an_operator_uses_the_console_in_a_browser(db: Db) {
    // One attempt: an event Stripe's outage fails is dead at once, for the
    // operator to replay once Stripe is back.
    let h = Harness::start_with_attempts(db, t0(), 1).await;
    paid_with_a_dead_event(&h, "ada@example.com").await;
    let deadline = Instant::now() + PATIENCE;
    while h
        .store
        .get_event("evt_poison_<b>")
        .await
        .unwrap()
        .map(|e| e.status)
        != Some(billd_store::EventStatus::Dead)
    {
        assert!(Instant::now() < deadline, "never dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let b = Browser::start(artifacts(db)).await;
    let base = &h.base;

    // Every page sends a visitor without a session to the log-in form.
    b.go(&format!("{base}/console/customers")).await;
    b.reach_url(&format!("{base}/console/login")).await;
    b.screenshot("login").await;
    b.type_into("#key", "not the key").await;
    b.click("form.login button").await;
    assert!(b.source().await.contains("class=\"notice\""));
    b.type_into("#key", ADMIN_KEY).await;
    b.click("form.login button").await;
    b.reach_url(&format!("{base}/console")).await;
    let html = b.source().await;
    assert!(html.contains("dead events"), "{html}");
    // The key is never shown back, nor kept in a field.
    assert!(!html.contains(ADMIN_KEY));
    b.screenshot("overview").await;

    // Every page of the navigation opens, with the session's cookie.
    for (name, path) in [
        ("customers", "/console/customers"),
        ("events", "/console/events"),
        ("emails", "/console/emails"),
    ] {
        b.click(&format!("header a[href=\"{path}\"]")).await;
        b.reach_url(&format!("{base}{path}")).await;
        let title = b.get("/title").await;
        assert!(!b.source().await.contains("csrf_invalid"), "{name}");
        assert!(title.as_str().unwrap().len() > 1, "{name}");
        b.screenshot(name).await;
    }

    // A search by email finds the customer; its name is text, not a script.
    b.click("header a[href=\"/console/customers\"]").await;
    b.type_into("input[name=query]", "ADA@example").await;
    b.click("form[action=\"/console/customers\"] button").await;
    b.reach("the search", |at| at.contains("query=ADA%40example"))
        .await;
    let row = b.text_of("table tr:nth-child(2)").await;
    assert!(row.contains("<script>alert(1)</script>"), "{row}");
    b.no_dialog().await;
    b.click("a[href=\"/console/customers/u_ada\"]").await;
    b.reach_url(&format!("{base}/console/customers/u_ada"))
        .await;
    assert!(b.source().await.contains("evt_poison_&lt;b&gt;"));
    // One script, billd's own file; it showed every time in the viewer's
    // zone, keeping UTC on hover.
    let scripts = b
        .script(
            "return Array.from(document.querySelectorAll('script'))\
             .map(s => s.getAttribute('src')).join(',')",
        )
        .await;
    assert_eq!(scripts, "/console/assets/console.js");
    let local = b
        .script(
            "const t = Array.from(document.querySelectorAll('time[datetime]'));\
             return t.length > 0 && t.every(e => e.dataset.local === '1' \
               && e.title.endsWith('(UTC)') && /UTC[+-]\\d\\d:\\d\\d$/.test(e.textContent))",
        )
        .await;
    assert_eq!(local, true);
    b.no_dialog().await;
    b.screenshot("customer").await;

    // Resync from Stripe: back on the customer's page, still pro.
    b.click("form[action=\"/console/customers/u_ada/resync\"] button")
        .await;
    b.reach_url(&format!("{base}/console/customers/u_ada"))
        .await;
    assert!(b.source().await.contains("<div class=\"n\">pro</div>"));

    // Without its CSRF field (removed by the driver's script, which the
    // page's policy does not govern) the form is refused.
    let removed = b
        .script(
            "const f = document.querySelector('form[action$=\"/resync\"] input[name=csrf]'); \
             f.remove(); return document.querySelectorAll('form[action$=\"/resync\"] input').length",
        )
        .await;
    assert_eq!(removed, 0);
    b.click("form[action=\"/console/customers/u_ada/resync\"] button")
        .await;
    b.reach_url(&format!("{base}/console/customers/u_ada/resync"))
        .await;
    assert!(b.source().await.contains("csrf_invalid"));
    b.screenshot("refused").await;

    // The dead event, replayed from the events page filtered to dead ones.
    b.go(&format!("{base}/console/events?status=dead")).await;
    assert!(b.source().await.contains("evt_poison_&lt;b&gt;"));
    let before = h.store.get_event("evt_poison_<b>").await.unwrap().unwrap();
    b.click("form[action=\"/console/events/evt_poison_%3Cb%3E/replay\"] button")
        .await;
    b.reach_url(&format!("{base}/console/events/evt_poison_%3Cb%3E"))
        .await;
    assert!(b.source().await.contains("<h2>Payload</h2>"));
    // Its payload cannot parse, so the replay ends dead again, after one
    // more attempt.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let event = h.store.get_event("evt_poison_<b>").await.unwrap().unwrap();
        if event.status == billd_store::EventStatus::Dead && event.claim > before.claim {
            break;
        }
        assert!(Instant::now() < deadline, "not replayed: {event:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.go(&format!("{base}/console/events?status=dead")).await;
    assert!(b.source().await.contains("evt_poison_&lt;b&gt;"));

    // A dispute billd must ask Stripe about (its charge is linked to no
    // one), delivered while Stripe fails: dead after its one attempt.
    // Stripe is back; the operator replays it and sees it processed.
    let ada = billd_core::CustomerId::parse("u_ada").unwrap();
    let cus = h.store.get_customer(&ada).await.unwrap().unwrap();
    let cus = cus.stripe_customer_id.unwrap().to_string();
    let charge = h.stripe("GET", &format!("/v1/charges?customer={cus}"), "")["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.sim.update_config(|c| c.faults.next_errors = 1_000);
    h.deliver(
        "evt_1DisputeDuringOutage",
        "charge.dispute.created",
        serde_json::json!({
            "id": "dp_1DisputeDuringOutage00", "object": "dispute", "charge": charge,
            "status": "needs_response", "amount": 1900, "currency": "eur",
            "reason": "fraudulent",
        }),
    )
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let event = h.store.get_event("evt_1DisputeDuringOutage").await.unwrap();
        let status = event.as_ref().map(|e| e.status);
        if status == Some(billd_store::EventStatus::Dead) {
            break;
        }
        assert!(Instant::now() < deadline, "never dead: {event:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.sim.update_config(|c| c.faults.next_errors = 0);
    b.go(&format!("{base}/console/events/evt_1DisputeDuringOutage"))
        .await;
    b.screenshot("event").await;
    b.click("form[action=\"/console/events/evt_1DisputeDuringOutage/replay\"] button")
        .await;
    b.reach_url(&format!("{base}/console/events/evt_1DisputeDuringOutage"))
        .await;
    let deadline = Instant::now() + PATIENCE;
    while !b
        .source()
        .await
        .contains("<div class=\"n\">processed</div>")
    {
        assert!(
            Instant::now() < deadline,
            "the replayed dispute was never processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        b.go(&format!("{base}/console/events/evt_1DisputeDuringOutage"))
            .await;
    }
    let (_, e) = h.entitlements("u_ada").await;
    assert_eq!(e["access"], "frozen", "{e}");
    b.go(&format!("{base}/console/reconciliation")).await;
    b.screenshot("reconciliation").await;
    b.go(&format!("{base}/console/alerts")).await;
    b.screenshot("alerts").await;

    // Log out: the next page is the log-in form again.
    b.click("header form[action=\"/console/logout\"] button")
        .await;
    b.reach_url(&format!("{base}/console/login")).await;
    b.go(&format!("{base}/console")).await;
    b.reach_url(&format!("{base}/console/login")).await;
    drop(b);
    h.shutdown().await;
}

on_both_databases!(an_operator_uses_the_console_in_a_browser);
