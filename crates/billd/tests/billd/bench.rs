//! `billd bench usage` and `billd bench webhooks` run end to end on a small
//! load: every request is answered, and the figures are printed.

use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_usage_benchmark_answers_every_consume_and_prints_the_ratio_and_rss() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_billd"))
                .args([
                    "bench",
                    "usage",
                    "--consumes",
                    "60",
                    "--clients",
                    "4",
                    "--customers",
                    "5",
                ])
                .current_dir(dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sqlite: 60 of 60 HTTP consumes answered 200"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("sqlite "))
        .unwrap_or_else(|| panic!("no sqlite row: {stdout}"));
    assert!(
        row.ends_with("MiB"),
        "the server's peak RSS is shown: {row}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_webhook_benchmark_acknowledges_every_event_in_each_phase() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || {
            Command::new(env!("CARGO_BIN_EXE_billd"))
                .args([
                    "bench",
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
                .current_dir(dir)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("sqlite: 150 of 150 throughput-run events acknowledged"),
        "{stdout}"
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("sqlite "))
        .unwrap_or_else(|| panic!("no sqlite row: {stdout}"));
    assert!(row.contains(" 100/100 "), "every paced event acked: {row}");
}
