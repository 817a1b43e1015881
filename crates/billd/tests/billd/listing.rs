//! `billd events list` and `billd audit` on the real binary over a database
//! with ids longer than any fixed column: every row's cells start where the
//! header's column does, times are RFC 3339 UTC (no unix seconds), and
//! `--json` prints one parsable object per line.

use crate::ClearEnv;
use std::process::{Command, Output};

use billd_core::{AuditEntry, CustomerId, CustomerState};
use billd_store::{CustomerCommit, EventResult, NewEvent};
use serde_json::Value;

/// 2026-04-10T09:30:00Z.
const T0: i64 = 1_775_813_400;
const T0_RFC3339: &str = "2026-04-10T09:30:00Z";

const LONG_EVENT: &str =
    "evt_1QzLongIdentifierFromAnotherAccount0123456789abcdefghijklmnopqrstuvwxyz";
const LONG_TYPE: &str = "customer.subscription.pending_update_applied";
const LONG_CUSTOMER: &str = "workspace_0123456789abcdef0123456789abcdef_owner";
const LONG_FIELD: &str =
    "subscription.sub_1QzVeryLongSubscriptionId0123456789abcdefghij.cancel_at_period_end";

fn billd(dir: &std::path::Path, db: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_billd"))
        .args(args)
        .current_dir(dir)
        .clear_env()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("BILLD_DATABASE_URL", db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "billd {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn event(id: &str, event_type: &str, created: i64) -> NewEvent {
    NewEvent {
        id: id.to_owned(),
        event_type: event_type.to_owned(),
        api_version: Some(billd_stripe::API_VERSION.to_owned()),
        created,
        object_id: None,
        stripe_customer: None,
        payload: format!(r#"{{"id":"{id}","type":"{event_type}"}}"#),
        received_at: created + 1,
    }
}

/// Character offsets (not bytes) of `needle` in `line`.
fn column(line: &str, needle: &str) -> usize {
    let at = line
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in {line:?}"));
    line[..at].chars().count()
}

/// Each `(header, cell)` of a row starts at its header's column, after a
/// space.
fn assert_aligned(table: &str, row_key: &str, cells: &[(&str, &str)]) {
    let header = table.lines().next().unwrap();
    let row: Vec<char> = table
        .lines()
        .find(|l| l.contains(row_key))
        .unwrap_or_else(|| panic!("no row {row_key}:\n{table}"))
        .chars()
        .collect();
    for (name, cell) in cells {
        let at = column(header, name);
        let shown: String = row.iter().skip(at).take(cell.chars().count()).collect();
        assert_eq!(&shown, cell, "{cell:?} is not under {name:?}:\n{table}");
        assert!(
            at == 0 || row[at - 1] == ' ',
            "{cell:?} runs into the column before it:\n{table}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_aligns_long_ids_under_their_headers_with_rfc3339_times_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());
    billd(dir.path(), &db, &["migrate"]);
    let store = billd_store::connect(&db).await.unwrap();
    store
        .insert_events(&[
            event(LONG_EVENT, LONG_TYPE, T0),
            event("evt_short", "invoice.paid", T0 + 60),
        ])
        .await
        .unwrap();
    for e in store.claim_events(T0 + 100, T0 + 200, 10).await.unwrap() {
        let result = if e.id == "evt_short" {
            EventResult::Dead {
                error: "handler gave up".into(),
            }
        } else {
            EventResult::Skipped
        };
        store
            .finish_event(&e.id, e.claim, result, T0 + 101)
            .await
            .unwrap();
    }

    let table = stdout(&billd(dir.path(), &db, &["events", "list"]));
    let json = stdout(&billd(dir.path(), &db, &["events", "list", "--json"]));

    assert_eq!(table.lines().count(), 3, "{table}");
    assert_aligned(
        &table,
        LONG_EVENT,
        &[
            ("ID", LONG_EVENT),
            ("TYPE", LONG_TYPE),
            ("STATUS", "skipped"),
            ("CREATED", T0_RFC3339),
            ("RECEIVED", "2026-04-10T09:30:01Z"),
        ],
    );
    assert_aligned(
        &table,
        "evt_short",
        &[
            ("ID", "evt_short"),
            ("TYPE", "invoice.paid"),
            ("STATUS", "dead"),
            ("CREATED", "2026-04-10T09:31:00Z"),
            ("LAST ERROR", "handler gave up"),
        ],
    );
    // The attempts are right-aligned: they end where the header does.
    let header = table.lines().next().unwrap();
    let attempts_end = column(header, "ATTEMPTS") + "ATTEMPTS".len();
    for row in table.lines().skip(1) {
        assert_eq!(row.chars().nth(attempts_end - 1), Some('1'), "{table}");
    }
    assert!(!table.contains(&T0.to_string()), "{table}");

    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    let long = lines.iter().find(|v| v["id"] == LONG_EVENT).unwrap();
    assert_eq!(long["type"], LONG_TYPE);
    assert_eq!(long["status"], "skipped");
    assert_eq!(long["attempts"], 1);
    assert_eq!(long["created"], T0_RFC3339);
    assert_eq!(long["processed_at"], "2026-04-10T09:31:41Z");
    let short = lines.iter().find(|v| v["id"] == "evt_short").unwrap();
    assert_eq!(short["last_error"], "handler gave up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_aligns_long_fields_and_values_with_rfc3339_times_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("billd.db").display());
    billd(dir.path(), &db, &["migrate"]);
    let store = billd_store::connect(&db).await.unwrap();
    let entry = |field: &str, before: Option<&str>, after: &str, at: i64| AuditEntry {
        field: field.to_owned(),
        before: before.map(str::to_owned),
        after: Some(after.to_owned()),
        reason: LONG_EVENT.to_owned(),
        event_type: LONG_TYPE.to_owned(),
        at,
    };
    store
        .commit_customer(
            &CustomerCommit {
                customer_id: CustomerId::parse(LONG_CUSTOMER).unwrap(),
                expected_version: 0,
                state: CustomerState::default(),
                audit: vec![
                    entry(LONG_FIELD, Some("false"), "true", T0),
                    entry(
                        "access",
                        None,
                        "paid_until_the_end_of_the_period_then_free",
                        T0 + 5,
                    ),
                ],
                outbox: Vec::new(),
                links: Vec::new(),
            },
            T0 + 5,
        )
        .await
        .unwrap();

    let table = stdout(&billd(dir.path(), &db, &["audit", LONG_CUSTOMER]));
    let json = stdout(&billd(dir.path(), &db, &["audit", LONG_CUSTOMER, "--json"]));

    assert_eq!(table.lines().count(), 3, "{table}");
    let reason = format!("{LONG_EVENT} ({LONG_TYPE})");
    assert_aligned(
        &table,
        LONG_FIELD,
        &[
            ("AT", T0_RFC3339),
            ("FIELD", LONG_FIELD),
            ("BEFORE", "false"),
            ("AFTER", "true"),
            ("REASON", &reason),
        ],
    );
    assert_aligned(
        &table,
        "access",
        &[
            ("AT", "2026-04-10T09:30:05Z"),
            ("FIELD", "access"),
            ("BEFORE", "-"),
            ("AFTER", "paid_until_the_end_of_the_period_then_free"),
            ("REASON", &reason),
        ],
    );
    assert!(!table.contains(&T0.to_string()), "{table}");

    let lines: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{json}");
    // Newest first, like the table.
    assert_eq!(lines[0]["field"], "access");
    assert_eq!(lines[0]["before"], Value::Null);
    assert_eq!(lines[0]["at"], "2026-04-10T09:30:05Z");
    assert_eq!(lines[1]["field"], LONG_FIELD);
    assert_eq!(lines[1]["before"], "false");
    assert_eq!(lines[1]["after"], "true");
    assert_eq!(lines[1]["customer"], LONG_CUSTOMER);
    assert_eq!(lines[1]["reason"], LONG_EVENT);
    assert_eq!(lines[1]["event_type"], LONG_TYPE);
}
