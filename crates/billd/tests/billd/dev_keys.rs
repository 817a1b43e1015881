//! Dev mode's generated keys and counters, on the real binary: `billd
//! serve` with no configuration prints an admin key that opens
//! `/v1/admin/*` and is the same after a restart; `billd doctor` reports
//! the generated keys instead of warning that none are set; the emails dev
//! mode delivers (to the log, or to SMTP when configured) are counted in
//! `billd_emails_total` on `/metrics`.

use crate::ClearEnv;
use std::process::Command;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use billd_store::{OutboxFilter, OutboxStatus};
use serde_json::Value;

use crate::smtp_sink::SmtpSink;

use crate::dev_mode::{spawn, BEGIN, END};

/// What `billd serve` printed up to the end of its walkthrough.
struct Banner {
    lines: Vec<String>,
}

impl Banner {
    fn read(rx: &Receiver<String>) -> Banner {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        loop {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| {
                    panic!("no walkthrough printed; stderr:\n{}", lines.join("\n"))
                });
            let end = line == END;
            lines.push(line);
            if end {
                return Banner { lines };
            }
        }
    }

    /// The key on the line saying `the dev <what> API key is KEY (kept …`.
    fn key(&self, what: &str) -> Option<String> {
        let marker = format!("the dev {what} API key is ");
        self.lines.iter().find_map(|line| {
            let rest = &line[line.find(&marker)? + marker.len()..];
            Some(rest.split_whitespace().next()?.to_owned())
        })
    }

    /// The walkthrough's shell steps.
    fn steps(&self) -> Vec<String> {
        let begin = self.lines.iter().position(|l| l == BEGIN).unwrap();
        let end = self.lines.iter().position(|l| l == END).unwrap();
        self.lines[begin + 1..end].to_vec()
    }
}

fn sh(script: &str) -> String {
    let out = Command::new("sh").arg("-ec").arg(script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "script failed:\n{script}\nstdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `billd doctor --json`'s `api keys` row, run in `dir` with no configuration.
fn doctor_api_keys(dir: &std::path::Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_billd"))
        .args(["doctor", "--json"])
        .current_dir(dir)
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "doctor --json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "api keys")
        .cloned()
        .unwrap_or_else(|| panic!("no api keys row: {report:#}"))
}

async fn admin_events(base: &str, key: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .get(format!("{base}/v1/admin/events"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_prints_an_admin_key_that_opens_the_admin_api_across_a_restart_and_doctor_reports_the_generated_keys(
) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = [("BILLD_LISTEN", format!("127.0.0.1:{port}"))];

    // Before the first start: nothing is set and nothing generated yet.
    let before = doctor_api_keys(dir.path());

    let (billd, rx) = spawn(dir.path(), &[], &listen);
    let banner = Banner::read(&rx);
    let app = banner.key("app").expect("no app key printed");
    let admin = banner.key("admin").expect("no admin key printed");
    let with_admin = admin_events(&base, &admin).await;
    let with_app = admin_events(&base, &app).await;
    drop(billd);

    let (_billd, rx) = spawn(dir.path(), &[], &listen);
    let again = Banner::read(&rx);
    let after_restart = admin_events(&base, &admin).await;
    let after = doctor_api_keys(dir.path());

    assert_ne!(app, admin);
    assert_eq!(with_admin, 200);
    assert_eq!(with_app, 403);
    assert_eq!(
        std::fs::read_to_string(dir.path().join(".billd/dev_admin_key")).unwrap(),
        admin
    );
    assert_eq!(again.key("admin").as_deref(), Some(admin.as_str()));
    assert_eq!(again.key("app").as_deref(), Some(app.as_str()));
    assert_eq!(after_restart, 200);
    for row in [&before, &after] {
        assert_eq!(row["status"], "pass", "{row:#}");
        let detail = row["detail"].as_str().unwrap();
        assert!(!detail.contains("is empty"), "{detail}");
        assert!(detail.contains(".billd/dev_api_key"), "{detail}");
        assert!(detail.contains(".billd/dev_admin_key"), "{detail}");
    }
    assert!(
        before["detail"]
            .as_str()
            .unwrap()
            .contains("billd serve generates"),
        "{before:#}"
    );
    assert!(
        !after["detail"].as_str().unwrap().contains("generates"),
        "{after:#}"
    );
}

/// `billd_emails_total{outcome}` as `/metrics` shows it.
async fn emails_total(base: &str, outcome: &str) -> u64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("billd_emails_total{{outcome=\"{outcome}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Runs dev mode's walkthrough (all but its last step, which only reads)
/// against `billd serve` with `envs`, waits until every email and alert row
/// of the outbox is done, and returns `(rows done, billd_emails_total for
/// `outcome`)`.
async fn emails_counted_in_dev_mode(envs: &[(&str, String)], outcome: &str) -> (usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut envs = envs.to_vec();
    envs.push(("BILLD_LISTEN", format!("127.0.0.1:{port}")));
    let (_billd, rx) = spawn(dir.path(), &[], &envs);
    let steps = Banner::read(&rx).steps();
    let (_, setup) = steps.split_last().unwrap();
    sh(&setup.join("\n"));

    // The receipt of the walkthrough's payment, and any other email.
    let store = billd_store::connect(&format!(
        "sqlite://{}",
        dir.path().join("billd.db").display()
    ))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let rows: Vec<_> = store
            .list_outbox(&OutboxFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|row| row.kind == "email" || row.kind == "admin_alert")
            .collect();
        let receipt = rows
            .iter()
            .any(|row| row.dedupe_key.starts_with("payment_succeeded"));
        if receipt && rows.iter().all(|row| row.status == OutboxStatus::Sent) {
            break rows.len();
        }
        assert!(Instant::now() < deadline, "emails not all done: {rows:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    (done, emails_total(&base, outcome).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_plain_dev_mode_each_email_written_to_the_log_is_counted_on_metrics() {
    let (done, logged) = emails_counted_in_dev_mode(&[], "logged").await;

    assert!(done >= 1);
    assert_eq!(logged, u64::try_from(done).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_dev_mode_with_smtp_each_email_the_server_accepted_is_counted_on_metrics() {
    let sink = SmtpSink::start();

    let (done, sent) = emails_counted_in_dev_mode(
        &[
            ("BILLD_SMTP_URL", format!("{}?tls=none", sink.url())),
            ("BILLD_EMAIL_FROM", "billing@example.com".to_owned()),
        ],
        "sent",
    )
    .await;

    assert!(done >= 1);
    assert_eq!(sink.messages().len(), done);
    assert_eq!(sent, u64::try_from(done).unwrap());
}
