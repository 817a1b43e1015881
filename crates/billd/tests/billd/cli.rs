//! `billd` commands run as a user would: migrate, events list/show/replay,
//! configuration errors, and dev-mode serve.

use crate::ClearEnv;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use billd_store::{EventResult, EventStatus, NewEvent};
use billd_stripe::webhook::sign;

fn billd(dir: &std::path::Path, db: &str, args: &[&str]) -> Output {
    billd_with(dir, db, args, &[])
}

/// [`billd`] with more environment variables.
fn billd_with(dir: &std::path::Path, db: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_billd"))
        .args(args)
        .current_dir(dir)
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BILLD_DATABASE_URL", db)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn event(id: &str, event_type: &str) -> NewEvent {
    NewEvent {
        id: id.to_string(),
        event_type: event_type.to_string(),
        api_version: Some(billd_stripe::API_VERSION.to_string()),
        created: 1_700_000_000,
        object_id: Some("in_1".to_string()),
        stripe_customer: Some(format!("cus_{id}")),
        payload: format!(
            r#"{{"id":"{id}","type":"{event_type}","created":1700000000,"data":{{"object":{{"id":"in_1"}}}}}}"#
        ),
        received_at: 1_700_000_001,
    }
}

#[test]
fn every_command_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["events", "--help"],
        &["events", "list", "--help"],
        &["events", "show", "--help"],
        &["events", "replay", "--help"],
        &["bench", "webhooks", "--help"],
        &["bench", "usage", "--help"],
        &["doctor", "--help"],
        &["sim", "--help"],
        &["reconcile", "--help"],
    ] {
        let out = billd(dir.path(), "sqlite://x.db", args);
        assert!(out.status.success(), "{args:?}");
        assert!(text(&out.stdout).contains("Usage:"), "{args:?}");
    }
}

#[test]
fn an_invalid_setting_stops_start_up_with_a_message_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let out = billd_with(
        dir.path(),
        "postgres://u:hunter22@127.0.0.1:1/x",
        &["migrate"],
        &[
            ("BILLD_LISTEN", "nowhere"),
            ("BILLD_WEBHOOK_TOLERANCE_SECS", "-5"),
        ],
    );

    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("BILLD_LISTEN (set in the environment)"),
        "{stderr}"
    );
    assert!(stderr.contains("BILLD_WEBHOOK_TOLERANCE_SECS"), "{stderr}");
    assert!(!stderr.contains("hunter22"), "{stderr}");
}

#[test]
fn a_log_that_is_not_a_terminal_has_no_colour_codes() {
    // Under systemd or into a file, colour codes would be noise in every
    // line; the test's pipe is such a destination.
    let dir = tempfile::tempdir().unwrap();
    let out = billd_with(
        dir.path(),
        "sqlite://x.db",
        &["migrate"],
        &[("RUST_LOG", "debug")],
    );

    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(" DEBUG "), "a log was written: {stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn a_billd_toml_in_the_working_directory_is_read_when_no_config_is_given() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billd.toml"), "log_format = \"yaml\"\n").unwrap();

    let out = billd(dir.path(), "sqlite://x.db", &["migrate"]);

    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("BILLD_LOG_FORMAT (set in billd.toml)"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_can_be_listed_shown_and_dead_ones_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());
    let migrate = billd(dir.path(), &db, &["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    let store = billd_store::connect(&db).await.unwrap();
    store
        .insert_events(&[
            event("evt_cli_dead", "invoice.paid"),
            event("evt_cli_ok", "customer.updated"),
        ])
        .await
        .unwrap();
    let claimed = store
        .claim_events(1_700_000_100, 1_700_000_200, 10)
        .await
        .unwrap();
    for e in &claimed {
        let result = if e.id == "evt_cli_dead" {
            EventResult::Dead {
                error: "boom: handler gave up".into(),
            }
        } else {
            EventResult::Processed
        };
        store
            .finish_event(&e.id, e.claim, result, 1_700_000_101)
            .await
            .unwrap();
    }

    let all = text(&billd(dir.path(), &db, &["events", "list"]).stdout);
    let dead = text(&billd(dir.path(), &db, &["events", "list", "--status", "dead"]).stdout);
    let by_type = text(
        &billd(
            dir.path(),
            &db,
            &["events", "list", "--type", "customer.updated"],
        )
        .stdout,
    );
    let shown = billd(dir.path(), &db, &["events", "show", "evt_cli_dead"]);
    let unknown = billd(dir.path(), &db, &["events", "show", "evt_nope"]);

    assert!(
        all.contains("evt_cli_dead") && all.contains("evt_cli_ok"),
        "{all}"
    );
    assert!(
        dead.contains("evt_cli_dead") && !dead.contains("evt_cli_ok"),
        "{dead}"
    );
    assert!(
        by_type.contains("evt_cli_ok") && !by_type.contains("evt_cli_dead"),
        "{by_type}"
    );
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["attempts"], 1);
    assert_eq!(shown["last_error"], "boom: handler gave up");
    assert_eq!(shown["payload"]["data"]["object"]["id"], "in_1");
    assert!(!unknown.status.success());
    assert!(text(&unknown.stderr).contains("no event evt_nope"));

    let replay = billd(dir.path(), &db, &["events", "replay", "--status", "dead"]);

    assert!(
        text(&replay.stdout).contains("1 dead event(s) requeued"),
        "{}",
        text(&replay.stdout)
    );
    let requeued = store.get_event("evt_cli_dead").await.unwrap().unwrap();
    assert_eq!(requeued.status, EventStatus::Pending);
    let one = billd(dir.path(), &db, &["events", "replay", "evt_cli_ok"]);
    assert!(one.status.success());
    assert_eq!(
        store.get_event("evt_cli_ok").await.unwrap().unwrap().status,
        EventStatus::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinked_events_are_listed_by_status_and_requeued_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());
    let migrate = billd(dir.path(), &db, &["migrate"]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    let store = billd_store::connect(&db).await.unwrap();
    store
        .insert_events(&[
            event("evt_cli_parked", "charge.dispute.created"),
            event("evt_cli_applied", "invoice.paid"),
        ])
        .await
        .unwrap();
    for e in store
        .claim_events(1_700_000_100, 1_700_000_200, 10)
        .await
        .unwrap()
    {
        let result = if e.id == "evt_cli_parked" {
            EventResult::Unlinked
        } else {
            EventResult::Processed
        };
        store
            .finish_event(&e.id, e.claim, result, 1_700_000_101)
            .await
            .unwrap();
    }

    let unlinked = billd(dir.path(), &db, &["events", "list", "--status", "unlinked"]);
    let replay = billd(
        dir.path(),
        &db,
        &["events", "replay", "--status", "unlinked"],
    );

    let listed = text(&unlinked.stdout);
    assert!(unlinked.status.success(), "{}", text(&unlinked.stderr));
    assert!(
        listed.contains("evt_cli_parked") && listed.contains("unlinked"),
        "{listed}"
    );
    assert!(!listed.contains("evt_cli_applied"), "{listed}");
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    assert!(
        text(&replay.stdout).contains("1 unlinked event(s) requeued"),
        "{}",
        text(&replay.stdout)
    );
    let parked = store.get_event("evt_cli_parked").await.unwrap().unwrap();
    assert_eq!(parked.status, EventStatus::Pending);
    let after = text(&billd(dir.path(), &db, &["events", "list", "--status", "unlinked"]).stdout);
    assert!(!after.contains("evt_cli_parked"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_a_stripe_key_but_no_webhook_secret_prints_a_dev_secret_and_accepts_events_signed_with_it(
) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_billd"))
        .current_dir(dir.path())
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BILLD_STRIPE_API_KEY", "sk_test_cli")
        .env("BILLD_LISTEN", format!("127.0.0.1:{port}"))
        .env("BILLD_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut secret = None;
    let mut json_logs = 0;
    while secret.is_none() || json_logs == 0 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("billd printed no dev secret");
        if line.starts_with('{') {
            let log: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(log["level"].is_string(), "{line}");
            json_logs += 1;
        }
        if let Some(s) = line
            .split_whitespace()
            .find(|w| w.starts_with("whsec_dev_"))
        {
            secret = Some(s.to_string());
        }
    }
    let secret = secret.unwrap();
    assert!(
        dir.path().join("billd.db").exists(),
        "the default SQLite file is created"
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = format!(
        r#"{{"id":"evt_dev_1","object":"event","type":"customer.created","created":{now},"data":{{"object":{{"id":"cus_dev","object":"customer"}}}}}}"#
    );
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/webhooks/stripe");
    let mut accepted = None;
    while accepted.is_none() && Instant::now() < deadline {
        match client
            .post(&url)
            .header("Stripe-Signature", sign(&secret, now, body.as_bytes()))
            .body(body.clone())
            .send()
            .await
        {
            Ok(response) => accepted = Some(response.status().as_u16()),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let wrong = client
        .post(&url)
        .header(
            "Stripe-Signature",
            sign("whsec_other", now, body.as_bytes()),
        )
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(accepted, Some(200));
    assert_eq!(wrong, 400);
}
