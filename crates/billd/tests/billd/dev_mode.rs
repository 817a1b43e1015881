//! Dev mode as a new user meets it: `billd serve` with no configuration runs
//! the built-in Stripe emulator, and the walkthrough it prints works; `billd
//! sim` runs the emulator alone.

use crate::ClearEnv;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The walkthrough markers printed by `billd serve` (src/dev.rs).
pub(crate) const BEGIN: &str = "# --- try it (sh) ---";
/// Ends the walkthrough.
pub(crate) const END: &str = "# --- end ---";

/// A `billd` child process, killed when dropped.
pub(crate) struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `billd ARGS` in `dir` with nothing of the test's environment but `PATH`
/// (and libfaketime's, see [`crate::ClearEnv`]) and `envs`; its stderr
/// lines arrive on the receiver.
pub(crate) fn spawn(
    dir: &std::path::Path,
    args: &[&str],
    envs: &[(&str, String)],
) -> (Running, Receiver<String>) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_billd"));
    command
        .args(args)
        .current_dir(dir)
        .clear_env()
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
pub(crate) fn walkthrough(rx: &Receiver<String>) -> Vec<String> {
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

/// Every JSON value a script printed, in order (curl prints bodies as they
/// come, one after the other).
fn printed_json(out: &str) -> Vec<serde_json::Value> {
    serde_json::Deserializer::from_str(out)
        .into_iter::<serde_json::Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not a sequence of JSON bodies ({e}):\n{out}"))
}

/// The emulator's base URL as the walkthrough names it.
fn emulator_url(steps: &[String]) -> String {
    let step = steps
        .iter()
        .find(|l| l.contains("/_sim/checkout/sessions/"))
        .unwrap_or_else(|| panic!("no payment step: {steps:#?}"));
    let start = step.find("http://").unwrap();
    let end = start + step[start..].find("/_sim/").unwrap();
    step[start..end].to_owned()
}

#[test]
fn serve_with_no_configuration_prints_a_walkthrough_that_pasted_literally_ends_on_the_paid_plan_and_again_after_a_restart(
) {
    let dir = tempfile::tempdir().unwrap();
    let port = crate::crash::free_port();
    let listen = [("BILLD_LISTEN", format!("127.0.0.1:{port}"))];
    let (billd, rx) = spawn(dir.path(), &[], &listen);

    // The steps as printed, run once, with no pause: the last one already
    // shows the paid plan.
    let steps = walkthrough(&rx);
    let out = sh(&steps.join("\n"));
    let bodies = printed_json(&out);
    assert!(bodies[0]["id"] == "alice", "{out}");
    assert!(
        bodies.iter().any(|b| b["status"] == "complete"),
        "the session was not paid:\n{out}"
    );
    let last = bodies.last().unwrap();
    assert_eq!(
        (&last["plan"], &last["access"], &last["status"]),
        (
            &serde_json::json!("pro"),
            &serde_json::json!("paid"),
            &serde_json::json!("active")
        ),
        "{out}"
    );
    // Each body ends its own line, so pasted output reads line by line.
    for line in out.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("{e}: a line that is not one body: {line}\n{out}"));
    }
    assert!(dir.path().join(".billd/sim.json").is_file());
    // Every request billd sent the built-in emulator is one Stripe's
    // definitions accept.
    let problems = sh(&format!(
        "curl -s {}/_sim/request_problems",
        emulator_url(&steps)
    ));
    let problems: serde_json::Value = serde_json::from_str(&problems).unwrap();
    assert_eq!(problems["data"], serde_json::json!([]), "{problems:#}");

    // After a restart the emulator is on the same port, and the same steps
    // pasted again show the existing subscription instead of failing.
    drop(billd);
    let (_billd, rx) = spawn(dir.path(), &[], &listen);
    let again = walkthrough(&rx);
    assert_eq!(emulator_url(&steps), emulator_url(&again));
    assert_eq!(steps, again);
    let out = sh(&steps.join("\n"));
    let bodies = printed_json(&out);
    assert!(
        bodies
            .iter()
            .any(|b| b["error"]["code"] == "already_subscribed"),
        "{out}"
    );
    let last = bodies.last().unwrap();
    assert_eq!(
        (&last["plan"], &last["access"]),
        (&serde_json::json!("pro"), &serde_json::json!("paid")),
        "{out}"
    );
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
