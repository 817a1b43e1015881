//! The real SMTP server of the email tests, shared by every test binary
//! that checks emails (`#[path]`-included from billd-email, billd-server
//! and billd): aiosmtpd running `smtp_sink.py` (next to this file), which
//! writes each message it accepts as JSON into a temporary directory.

#![allow(
    dead_code,
    reason = "each including test binary uses part of the harness"
)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A loopback port nothing listens on (right now).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// aiosmtpd on a loopback port, writing into its own temporary directory;
/// stopped when dropped.
pub struct SmtpSink {
    /// The port it listens on.
    pub port: u16,
    /// Where the messages land (`NAME.json` + `NAME.eml`).
    pub dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    /// On a free port.
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// On `port` (e.g. one billd was already told about).
    pub fn start_on(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// With aiosmtpd options, e.g. `--tlscert`/`--tlskey` (STARTTLS) or
    /// `--smtpscert`/`--smtpskey` (implicit TLS).
    pub fn start_with(port: u16, options: &[String]) -> Self {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let dir = tempfile::tempdir().unwrap();
        let scripts = workspace_root().join("crates/billd-email/tests");
        let mut child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(options)
            .args(["-c", "smtp_sink.Sink"])
            .arg(dir.path())
            .env("PYTHONPATH", &scripts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {python} (install Python 3 and `python3 -m pip install aiosmtpd`; scripts/test.sh does): {e}")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut err) = child.stderr.take() {
                    std::io::Read::read_to_string(&mut err, &mut stderr).ok();
                }
                panic!(
                    "aiosmtpd exited with {status} (is it installed? `python3 -m pip install aiosmtpd`): {stderr}"
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Listening is not enough for implicit TLS: give the
                // server the moment it needs to finish starting.
                std::thread::sleep(Duration::from_millis(100));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { port, dir, child }
    }

    /// `smtp://127.0.0.1:PORT` (add `?tls=none` for a plain session).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message received so far, in arrival order.
    pub fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.extension().is_some_and(|x| x == "json")
                    && !p.file_name().unwrap().to_string_lossy().starts_with('.')
            })
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// All messages, once `done` holds for them (polled), plus `settle`
    /// more so that a duplicate would have arrived too.
    pub async fn wait_until(
        &self,
        within: Duration,
        settle: Duration,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + within;
        while !done(&self.messages()) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; got {:?}",
                self.messages().iter().map(dedupe_key).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(settle).await;
        self.messages()
    }

    /// Messages whose dedupe key starts with `prefix`, once at least one
    /// arrived and a second more passed (so that a duplicate would too).
    pub async fn wait_for_key(&self, prefix: &str) -> Vec<Value> {
        let all = self
            .wait_until(
                Duration::from_secs(30),
                Duration::from_secs(1),
                &format!("an email {prefix:?}"),
                |all| all.iter().any(|m| dedupe_key(m).starts_with(prefix)),
            )
            .await;
        all.into_iter()
            .filter(|m| dedupe_key(m).starts_with(prefix))
            .collect()
    }

    /// Messages whose subject starts with `prefix`, as [`Self::wait_for_key`]
    /// (all messages are returned).
    pub async fn wait_for_subject(&self, prefix: &str, within: Duration) -> Vec<Value> {
        self.wait_until(
            within,
            Duration::from_millis(1500),
            &format!("an email {prefix:?}"),
            |all| all.iter().any(|m| subject(m).starts_with(prefix)),
        )
        .await
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace root, wherever the including crate is.
fn workspace_root() -> PathBuf {
    // CARGO_MANIFEST_DIR is crates/<crate>; the workspace is two levels up.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf()
}

/// The `X-Billd-Dedupe-Key` header.
pub fn dedupe_key(message: &Value) -> String {
    header(message, "x-billd-dedupe-key")
}

/// The `Subject` header.
pub fn subject(message: &Value) -> String {
    header(message, "subject")
}

/// A header by lower-case name; empty when absent.
pub fn header(message: &Value, name: &str) -> String {
    message["headers"][name]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The decoded body of the first MIME part of `content_type`; empty when
/// there is none.
pub fn part(message: &Value, content_type: &str) -> String {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == content_type)
        .map(|p| p["content"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Fails if a dedupe key arrived twice.
pub fn assert_each_key_once(all: &[Value]) {
    let mut keys: Vec<String> = all.iter().map(dedupe_key).collect();
    let total = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), total, "duplicate emails: {all:#?}");
}
