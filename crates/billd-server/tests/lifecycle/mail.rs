//! A real SMTP server for the scenarios that check emails: aiosmtpd with
//! billd-email's `smtp_sink.py`, writing each message it receives as JSON
//! into a directory; and the outbox delivery that sends to it.

use std::net::{TcpListener as StdListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use billd_email::{parse_mailbox, BackendConfig, Branding, Notifier, Templates};
use billd_server::lifecycle::BillingBackend;
use billd_server::notify::EmailDelivery;
use billd_server::outbox::Delivery;
use billd_store::BillingStore;
use serde_json::Value;

pub const ACCOUNT_URL: &str = "https://app.example.com/account/billing";

/// aiosmtpd on a free loopback port, stopped when dropped.
pub struct SmtpSink {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl SmtpSink {
    pub fn start() -> SmtpSink {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../billd-email/tests");
        let mut child = Command::new(&python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "smtp_sink.Sink"])
            .arg(dir.path())
            .env("PYTHONPATH", &scripts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python} with aiosmtpd: {e}"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("aiosmtpd exited with {status} (`python3 -m pip install aiosmtpd`)");
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpSink { port, dir, child }
    }

    /// The outbox delivery that renders and sends to this sink.
    pub fn delivery(&self) -> impl FnOnce(Arc<dyn BillingBackend>) -> Arc<dyn Delivery> {
        let port = self.port;
        move |store| {
            let backend = format!("smtp://127.0.0.1:{port}?tls=none")
                .parse::<BackendConfig>()
                .unwrap()
                .build()
                .unwrap();
            let notifier = Notifier::new(
                Templates::embedded(Branding {
                    product_name: "Sitegen".to_owned(),
                    account_url: ACCOUNT_URL.to_owned(),
                })
                .unwrap(),
                backend,
                parse_mailbox("Sitegen Billing <billing@sitegen.example>").unwrap(),
                None,
            );
            let profiles: Arc<dyn BillingStore> = store;
            Arc::new(EmailDelivery::new(notifier, profiles, 20))
        }
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

    /// Messages whose dedupe key starts with `prefix`, once at least one
    /// arrived and a little longer passed (so that a duplicate would too).
    pub async fn wait_for_key(&self, prefix: &str) -> Vec<Value> {
        let matching = |all: Vec<Value>| -> Vec<Value> {
            all.into_iter()
                .filter(|m| dedupe_key(m).starts_with(prefix))
                .collect()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while matching(self.messages()).is_empty() {
            assert!(
                Instant::now() < deadline,
                "no email {prefix:?}; got {:?}",
                self.messages().iter().map(dedupe_key).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
        matching(self.messages())
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dedupe_key(message: &Value) -> String {
    message["headers"]["x-billd-dedupe-key"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

pub fn subject(message: &Value) -> String {
    message["headers"]["subject"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The `text/plain` or `text/html` part.
pub fn part(message: &Value, content_type: &str) -> String {
    message["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == content_type)
        .map(|p| p["content"].as_str().unwrap().to_owned())
        .unwrap_or_default()
}
