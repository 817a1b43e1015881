//! Where messages go: SMTP, a directory of `.eml` files, the log, or memory.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::{SmtpConfig, TlsMode};
use crate::message::Message;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The path failed (server down, 4xx, TLS, timeout): retry with backoff.
    Transient,
    /// This message was refused (5xx, invalid message): retrying sends the
    /// same refusal; dead-letter it.
    Permanent,
}

/// Why a message was not delivered. [`SendError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SendError {
    retry: Retry,
    code: &'static str,
    message: String,
}

impl SendError {
    /// A failure worth retrying.
    pub fn transient(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Transient,
            code,
            message: message.into(),
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry: Retry::Permanent,
            code,
            message: message.into(),
        }
    }

    /// Whether the caller should retry.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// Shorthand for `retry() == Retry::Transient`.
    pub fn is_transient(&self) -> bool {
        self.retry == Retry::Transient
    }

    /// A stable snake_case code (`smtp_unreachable`, `smtp_rejected`, …).
    pub fn code(&self) -> &'static str {
        self.code
    }
}

/// Sends messages. Implementations are cheap to share (`Arc<dyn …>`).
#[async_trait]
pub trait EmailBackend: Send + Sync + fmt::Debug {
    /// Delivers one message, or says whether a retry can help.
    async fn send(&self, message: &Message) -> Result<(), SendError>;

    /// A short name for logs and metrics (`smtp`, `file`, `log`, `memory`).
    fn kind(&self) -> &'static str;
}

/// Delivery through an SMTP server.
pub struct SmtpBackend {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    port: u16,
    tls: TlsMode,
}

impl fmt::Debug for SmtpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpBackend")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl SmtpBackend {
    /// Builds the transport (no connection is made until the first send).
    pub fn new(config: &SmtpConfig) -> Result<Self, SendError> {
        let tls_config = |message: String| SendError::permanent("smtp_tls_config", message);
        let tls_parameters = || {
            let mut builder = TlsParameters::builder(config.host.clone());
            if let Some(path) = &config.ca_file {
                let pem = std::fs::read(path)
                    .map_err(|e| tls_config(format!("cannot read {}: {e}", path.display())))?;
                let ca = Certificate::from_pem(&pem)
                    .map_err(|e| tls_config(format!("{}: {e}", path.display())))?;
                builder = builder.add_root_certificate(ca);
            }
            builder.build().map_err(|e| tls_config(e.to_string()))
        };
        let tls = match config.tls {
            TlsMode::None => Tls::None,
            TlsMode::StartTls => Tls::Opportunistic(tls_parameters()?),
            TlsMode::StartTlsRequired => Tls::Required(tls_parameters()?),
            TlsMode::Implicit => Tls::Wrapper(tls_parameters()?),
        };
        // "dangerous" only means no TLS preset: the URL's TLS mode is set here.
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
            .port(config.port)
            .tls(tls)
            .timeout(Some(config.timeout));
        if let Some(auth) = &config.auth {
            // lettre keeps the password as a plain String inside the
            // transport; it never leaves it except to the server.
            builder = builder.credentials(Credentials::new(
                auth.user.clone(),
                auth.password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            host: config.host.clone(),
            port: config.port,
            tls: config.tls,
        })
    }
}

/// lettre reports a failed rustls handshake (an untrusted or expired
/// certificate) as a connection error; rustls surfaces it as an I/O error of
/// kind `InvalidData`, which a refused or reset connection never is.
fn is_handshake_failure(error: &lettre::transport::smtp::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        source = e.source();
    }
    false
}

/// Only a server's 5xx answer is about this message; everything else
/// (unreachable, 4xx, TLS, protocol, timeout) is about the path to the
/// server and may heal, so the outbox retries it and alerts if it never does.
/// Authentication answers are 5xx too but about billd's credentials, which
/// an operator fixes without touching the message: retried as well.
fn classify(error: &lettre::transport::smtp::Error) -> SendError {
    let message = format!("{error}");
    let auth_failure = error
        .status()
        .is_some_and(|code| matches!(code.to_string().as_str(), "530" | "534" | "535" | "538"));
    if auth_failure {
        SendError::transient("smtp_auth_failed", message)
    } else if error.is_permanent() {
        SendError::permanent("smtp_rejected", message)
    } else if error.is_transient() {
        SendError::transient("smtp_deferred", message)
    } else if error.is_tls() || is_handshake_failure(error) {
        SendError::transient("smtp_tls_failed", message)
    } else if error.is_client() || error.is_response() {
        SendError::transient("smtp_protocol_error", message)
    } else {
        SendError::transient("smtp_unreachable", message)
    }
}

#[async_trait]
impl EmailBackend for SmtpBackend {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let mime = message.to_mime()?;
        self.transport
            .send(mime)
            .await
            .map(|_| ())
            .map_err(|e| classify(&e))
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }
}

/// Writes each message as an `.eml` file: for development, where an email
/// client or `cat` shows what would have been sent.
#[derive(Debug, Clone)]
pub struct FileBackend {
    dir: PathBuf,
}

impl FileBackend {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, SendError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            SendError::permanent(
                "email_dir_unusable",
                format!("cannot create {}: {e}", dir.display()),
            )
        })?;
        Ok(Self { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A file-name-safe form of a dedupe key (`payment_failed-in_1-2`).
fn slug(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(120)
        .collect()
}

#[async_trait]
impl EmailBackend for FileBackend {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let bytes = message.to_mime()?.formatted();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Time first so a directory listing reads in sending order; a
        // duplicate shows up as a second file with the same key.
        let name = format!("{nanos:020}-{}.eml", slug(&message.dedupe_key));
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let path = self.dir.join(&name);
        let failed = |e: std::io::Error| {
            SendError::transient(
                "email_file_write_failed",
                format!("{}: {e}", path.display()),
            )
        };
        // Write then rename: a reader never sees half a message.
        tokio::fs::write(&tmp, &bytes).await.map_err(failed)?;
        tokio::fs::rename(&tmp, &path).await.map_err(failed)?;
        tracing::info!(file = %path.display(), dedupe_key = %message.dedupe_key, "email written");
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

/// Logs messages instead of sending them (the default without
/// `BILLD_SMTP_URL`): nothing leaves the machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogBackend;

#[async_trait]
impl EmailBackend for LogBackend {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        tracing::info!(
            to = %message.to,
            template = %message.template,
            dedupe_key = %message.dedupe_key,
            subject = %message.content.subject,
            "email not sent (log backend)"
        );
        tracing::debug!(dedupe_key = %message.dedupe_key, body = %message.content.text, "email text");
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "log"
    }
}

#[derive(Debug, Default)]
struct Memory {
    sent: Vec<Message>,
    failures: VecDeque<SendError>,
}

/// Keeps messages in memory: for other crates' tests, which can also make
/// the next sends fail.
#[derive(Debug, Clone, Default)]
pub struct MemoryBackend {
    inner: Arc<Mutex<Memory>>,
}

impl MemoryBackend {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A test that panicked while holding the lock must not hide what
        // was sent from the next assertion.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was delivered, in order.
    pub fn sent(&self) -> Vec<Message> {
        self.lock().sent.clone()
    }

    /// Makes the next send fail with `error` (queued: call again for more).
    pub fn fail_next(&self, error: SendError) {
        self.lock().failures.push_back(error);
    }
}

#[async_trait]
impl EmailBackend for MemoryBackend {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        message.to_mime()?;
        let mut memory = self.lock();
        if let Some(error) = memory.failures.pop_front() {
            return Err(error);
        }
        memory.sent.push(message.clone());
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "memory"
    }
}
