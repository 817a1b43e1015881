//! Crash recovery on SQLite with the real binary: one `billd serve` per
//! database file, and a restart after `kill -9` releases the dead process's
//! leases at once instead of waiting them out.

use std::process::Stdio;
use std::time::{Duration, Instant};

use billd_store::{ClaimLimits, EventFilter, EventStatus};

use crate::crash::{deliver, free_port, invoice_created, now, Billd, SECRET};

fn billd(dir: &std::path::Path, env: Vec<(&'static str, String)>) -> Billd {
    let mut env = env;
    env.push(("BILLD_STRIPE_WEBHOOK_SECRETS", SECRET.to_owned()));
    Billd {
        dir: dir.to_path_buf(),
        database_url: format!("sqlite://{}", dir.join("billd.db").display()),
        port: free_port(),
        env,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_sqlite_file_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = billd(dir.path(), Vec::new());
    let client = reqwest::Client::new();
    let mut running = first.spawn();
    first.wait_healthy(&client, &mut running).await;
    let second = Billd {
        port: free_port(),
        ..billd(dir.path(), Vec::new())
    };

    let output = tokio::task::spawn_blocking(move || {
        second
            .command()
            .env("RUST_LOG", "off")
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let still_serving = client
        .get(format!("{}/healthz", first.base()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    running.kill().unwrap();
    running.wait().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the second billd served too");
    assert!(
        stderr.contains("already served by another billd"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("pid {} on ", running.id())),
        "the holder is named: {stderr}"
    );
    assert!(still_serving, "the first billd kept serving");
}

/// `billd <args>` on `billd`'s database and configuration, waited for.
async fn cli(billd: &Billd, args: &'static [&'static str]) -> std::process::Output {
    let command = billd.command();
    // `command()` runs `serve`: the same environment, another command.
    let mut cli = std::process::Command::new(command.get_program());
    cli.args(args)
        .current_dir(&billd.dir)
        .env_clear()
        .envs(
            command
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))),
        )
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::task::spawn_blocking(move || cli.output().unwrap())
        .await
        .unwrap()
}

/// The CLI commands that write the database refuse to run beside the
/// serving process (whose entitlement answers from memory rely on every
/// write going through it), naming it and what to do instead; reading
/// commands still run; once it stopped, the writing ones run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_cli_commands_refuse_a_served_sqlite_file_naming_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = billd(
        dir.path(),
        vec![("BILLD_STRIPE_API_KEY", "sk_test_unused".to_owned())],
    );
    let client = reqwest::Client::new();
    let mut running = server.spawn();
    server.wait_healthy(&client, &mut running).await;

    let holder = format!("pid {} on ", running.id());
    for (args, instead) in [
        (&["migrate"][..], "applies the migrations itself"),
        (
            &["events", "replay", "--status", "dead"][..],
            "POST /v1/admin/events/replay",
        ),
        (&["reconcile"][..], "POST /v1/admin/customers/{id}/resync"),
    ] {
        let output = cli(&server, args).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} ran: {stderr}");
        assert!(stderr.contains(&holder), "{args:?}: {stderr}");
        assert!(stderr.contains(instead), "{args:?}: {stderr}");
    }
    let listed = cli(&server, &["events", "list"]).await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    running.kill().unwrap();
    running.wait().unwrap();

    let replayed = cli(&server, &["events", "replay", "--status", "dead"]).await;
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&replayed.stdout).trim(),
        "0 dead event(s) requeued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_leased_by_a_killed_serve_are_applied_at_restart_not_after_their_lease() {
    const EVENTS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the test may wait.
    let billd = billd(
        dir.path(),
        vec![("BILLD_INBOX_LEASE_SECS", "600".to_owned())],
    );
    let client = reqwest::Client::new();
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let created = now();
    let bodies: Vec<(String, String)> = (0..EVENTS)
        .map(|i| {
            let id = format!("evt_recover_{i:04}");
            let body = invoice_created(&id, &format!("in_recover_{i:04}"), "cus_recover", created);
            (id, body)
        })
        .collect();
    let (first, rest) = bodies.split_at(EVENTS / 2);
    for (_, body) in first {
        assert!(deliver(&client, &billd.url(), body).await);
    }
    let store = billd_store::connect(&billd.database_url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while skipped(&*store).await < EVENTS / 2 {
        assert!(
            Instant::now() < deadline,
            "the first events were not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What the killed process held at its death: the rest of the events,
    // stored and claimed under a lease that has ten minutes to run.
    let rest: Vec<billd_store::NewEvent> = rest
        .iter()
        .map(|(_, body)| billd_server::pipeline::parse_envelope(body.as_bytes(), now()).unwrap())
        .collect();
    store.insert_events(&rest).await.unwrap();
    let limits = ClaimLimits {
        groups: 16,
        per_customer: 1_000,
        events: u32::MAX,
    };
    let leased = store
        .claim_event_batches(now(), now() + 600, limits)
        .await
        .unwrap();
    assert_eq!(leased.len(), rest.len());

    let started = Instant::now();
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let rows = store
            .list_events(&EventFilter {
                limit: 10_000,
                ..EventFilter::default()
            })
            .await
            .unwrap();
        if rows.len() == EVENTS && rows.iter().all(|e| e.status == EventStatus::Skipped) {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} events done a minute after the restart",
            rows.iter()
                .filter(|e| e.status == EventStatus::Skipped)
                .count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let waited = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();

    for event in &rows {
        let was_leased = leased.iter().any(|l| l.id == event.id);
        let attempts = if was_leased { 2 } else { 1 };
        assert_eq!(event.attempts, attempts, "{}", event.id);
    }
    eprintln!(
        "{} events leased for 600 s at the kill were applied {:.2} s after the restart",
        leased.len(),
        waited.as_secs_f64()
    );
}

async fn skipped(store: &dyn billd_store::Store) -> usize {
    let rows = store
        .list_events(&EventFilter {
            status: Some(EventStatus::Skipped),
            limit: 10_000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    rows.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_leased_by_a_killed_serve_runs_at_restart_not_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let billd = billd(
        dir.path(),
        vec![
            ("BILLD_SCHEDULER", "on".to_owned()),
            ("BILLD_SCHEDULER_INTERVALS", "outbox_sweep=1".to_owned()),
        ],
    );
    let client = reqwest::Client::new();
    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let store = billd_store::connect(&billd.database_url).await.unwrap();
    let sweep = || async {
        let jobs = store.list_jobs().await.unwrap();
        jobs.into_iter().find(|j| j.name == "outbox_sweep")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while sweep().await.is_none_or(|j| j.runs == 0) {
        assert!(Instant::now() < deadline, "the outbox sweep never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    // What a process killed mid-run leaves: the job under a lease with an
    // hour to run (the scheduler's own last 15 minutes). It may have left
    // one itself; otherwise take one as it would have.
    let job = sweep().await.unwrap();
    store
        .claim_job(
            "outbox_sweep",
            "killed-process",
            job.next_run_at.max(now()),
            now() + 3_600,
        )
        .await
        .unwrap();
    let job = sweep().await.unwrap();
    assert!(
        job.lease_until.is_some_and(|until| until > now() + 600),
        "{job:?}"
    );

    let mut child = billd.spawn();
    billd.wait_healthy(&client, &mut child).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let after = sweep().await.unwrap();
        if after.runs > job.runs {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "the job waited for the dead process's lease: {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(after.last_error.is_none(), "{after:?}");
}
