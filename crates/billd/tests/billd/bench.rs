//! `billd bench usage`, `billd bench webhooks` and `billd bench apply` run
//! end to end on a small load: every request is answered (every event
//! applied), and the figures are printed.

use crate::ClearEnv;
use std::process::Command;

/// Runs `billd bench <args>` in a fresh directory with a clean environment,
/// asserts it succeeded, and returns its stdout and its `sqlite …` row.
async fn bench(args: &'static [&'static str]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_billd"))
                .arg("bench")
                .args(args)
                .current_dir(dir)
                .clear_env()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("sqlite "))
        .unwrap_or_else(|| panic!("no sqlite row: {stdout}"))
        .to_owned();
    (stdout, row)
}

/// The cells of the `sqlite <server> …` row of the per-server table.
fn server_row<'a>(stdout: &'a str, server: &str) -> Vec<&'a str> {
    stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.len() > 2 && cells[..2] == ["sqlite", server])
        .unwrap_or_else(|| panic!("no {server} row: {stdout}"))
}

fn positive(cell: &str) -> bool {
    cell.parse::<f64>().is_ok_and(|x| x > 0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_usage_benchmark_answers_every_request_and_prints_the_ratios_and_rss() {
    let (stdout, _) = bench(&[
        "usage",
        "--consumes",
        "60",
        "--single",
        "10",
        "--clients",
        "4",
        "--customers",
        "5",
        "--reads",
        "60",
    ])
    .await;

    assert!(
        stdout.contains(
            "sqlite: 200s: ceiling 60+10, billd 60+10 of 60+10 consumes; ceiling 60, billd 60 of 60 reads"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("sqlite: billd/ceiling consumes/s "),
        "{stdout}"
    );
    for server in ["ceiling", "billd"] {
        let row = server_row(&stdout, server);
        assert!(
            positive(row.last().unwrap()),
            "the {server} server's peak RSS is shown: {row:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_webhook_benchmark_acknowledges_every_event_in_each_phase() {
    let (stdout, row) = bench(&[
        "webhooks",
        "--events",
        "150",
        "--rounds",
        "3",
        "--connections",
        "8",
        "--rate",
        "100",
        "--rate-secs",
        "1",
    ])
    .await;

    assert!(
        stdout.contains(
            "sqlite: 150 of 150 throughput-run events acknowledged, 150 of 150 no-store requests rejected"
        ),
        "{stdout}"
    );
    assert!(row.contains(" 100/100 "), "every paced event acked: {row}");
    for path in ["through HTTP", "store alone"] {
        assert!(
            stdout.contains(&format!(
                "sqlite: latency at 100/s {path}: 100 of 100 acked, p50 "
            )),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(
            "sqlite: child servers acknowledged: minimal 150+100, billd 150+100 of 150+100 events"
        ),
        "{stdout}"
    );
    for server in ["minimal", "billd"] {
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().take(2).eq(["sqlite", server]))
            .unwrap_or_else(|| panic!("no {server} row: {stdout}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert!(
            cells[2].parse::<f64>().is_ok_and(|rate| rate > 0.0),
            "the {server} server's rate is shown: {row}"
        );
        assert!(
            cells[cells.len() - 1]
                .parse::<f64>()
                .is_ok_and(|mib| mib > 0.0),
            "the {server} server's peak RSS is shown: {row}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_apply_benchmark_applies_every_acknowledged_event_on_both_servers() {
    let (stdout, _) = bench(&[
        "apply",
        "--customers",
        "5",
        "--rate",
        "40",
        "--rate-secs",
        "1",
        "--burst",
        "30",
        "--events",
        "60",
        "--connections",
        "4",
    ])
    .await;

    for server in ["minimal", "billd"] {
        let row = server_row(&stdout, server);
        assert_eq!(row[5], "40/40", "every paced event applied: {row:?}");
        assert!(positive(row[6]), "the burst's time is shown: {row:?}");
        assert!(positive(row[7]), "the applied rate is shown: {row:?}");
        assert!(
            positive(row.last().unwrap()),
            "the {server} server's peak RSS is shown: {row:?}"
        );
        assert!(
            stdout.contains(&format!("sqlite: {server}: burst 30 events acked in ")),
            "{stdout}"
        );
    }
    assert!(stdout.contains("sqlite: billd/minimal: p99 "), "{stdout}");
    let inbox = stdout
        .lines()
        .find(|l| l.starts_with("sqlite: billd's inbox after the run: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        !inbox.contains("dead") && !inbox.contains("pending") && !inbox.contains("unlinked"),
        "{inbox}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_console_benchmark_renders_every_page_for_its_seeded_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_billd"))
                .args(["bench", "console", "--customers", "300"])
                .args(["--events-per-customer", "3", "--requests", "5"])
                .current_dir(dir)
                .clear_env()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        stdout.contains("sqlite: 300 customers, 900 events; 5 requests per page"),
        "{stdout}"
    );
    // Every page answered every request with a 200, the floor among them.
    let pages: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("page "))
        .skip(1)
        .take_while(|l| !l.starts_with("sqlite: slowest"))
        .collect();
    assert_eq!(pages.len(), 14, "{stdout}");
    for page in pages {
        let cells: Vec<&str> = page.split_whitespace().collect();
        let ok = cells[cells.len() - 4];
        assert_eq!(ok, "5", "{page}");
    }
    assert!(stdout.contains("server peak RSS"), "{stdout}");
}
