//! Dev mode as a new user meets it: `billd serve` with no configuration runs
//! the built-in Stripe emulator, and the walkthrough it prints works; `billd
//! sim` runs the emulator alone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The walkthrough markers printed by `billd serve` (src/dev.rs).
const BEGIN: &str = "# --- try it (sh) ---";
const END: &str = "# --- end ---";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, String)],
) -> (Running, Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billd"));
    command
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Running(child), rx)
}

/// The shell lines between the walkthrough markers.
fn walkthrough(rx: &Receiver<String>) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    let mut inside = false;
    let mut steps = Vec::new();
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "no walkthrough printed; stderr so far:\n{}",
                    seen.join("\n")
                )
            });
        seen.push(line.clone());
        if line == BEGIN {
            inside = true;
        } else if line == END {
            return steps;
        } else if inside {
            steps.push(line);
        }
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

#[test]
fn serve_with_no_configuration_runs_the_emulator_whose_printed_walkthrough_ends_on_the_paid_plan_across_a_restart(
) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let (billd, rx) = spawn(
        dir.path(),
        &[],
        &[("BILLD_LISTEN", format!("127.0.0.1:{port}"))],
    );

    let steps = walkthrough(&rx);
    assert!(steps.len() >= 4, "{steps:?}");
    let (check, setup) = steps.split_last().unwrap();
    let setup = setup.join("\n");
    let created = sh(&setup);
    let check = format!("{}\n{check}", steps[0]);

    assert!(created.contains("\"id\":\"alice\""), "{created}");
    assert!(created.contains("\"status\":\"complete\""), "{created}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let entitlements = sh(&check);
        let body: serde_json::Value = serde_json::from_str(&entitlements).unwrap();
        if body["plan"] == "pro" && body["access"] == "paid" {
            assert_eq!(body["status"], "active", "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the walkthrough's customer never got the paid plan: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(dir.path().join(".billd/sim.json").is_file());

    // A restart keeps the emulator's state next to the database: the same
    // price is offered and the customer is still on the paid plan.
    drop(billd);
    let (_billd, rx) = spawn(
        dir.path(),
        &[],
        &[("BILLD_LISTEN", format!("127.0.0.1:{port}"))],
    );
    let again = walkthrough(&rx);
    // Checkout goes through billd's own endpoint, which finds the price by
    // the catalog's lookup key (the unit tests in src/dev.rs check that a
    // restart keeps the emulator's prices).
    let checkout = |steps: &[String]| {
        steps
            .iter()
            .find(|l| l.contains("/v1/customers/alice/checkout"))
            .cloned()
            .unwrap()
    };
    assert_eq!(checkout(&steps), checkout(&again));
    let entitlements = sh(&format!("{}\n{}", again[0], again.last().unwrap()));
    let body: serde_json::Value = serde_json::from_str(&entitlements).unwrap();
    assert_eq!(body["plan"], "pro", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billd_sim_answers_customers_with_a_test_key_and_401_without() {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let listen = format!("127.0.0.1:{port}");
    let (_sim, _rx) = spawn(
        dir.path(),
        &["sim", "--listen", &listen, "--seed", "3"],
        &[],
    );
    let http = reqwest::Client::new();
    let url = format!("http://{listen}/v1/customers");
    let deadline = Instant::now() + Duration::from_secs(30);
    let with_key = loop {
        match http.get(&url).bearer_auth("sk_test_anything").send().await {
            Ok(response) => break response,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("billd sim never answered on {listen}: {e}"),
        }
    };

    let without_key = http.get(&url).send().await.unwrap();
    let live_key = http
        .get(&url)
        .bearer_auth("sk_live_nope")
        .send()
        .await
        .unwrap();

    assert_eq!(with_key.status(), 200);
    let list: serde_json::Value = with_key.json().await.unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(without_key.status(), 401);
    assert_eq!(live_key.status(), 401);
}
