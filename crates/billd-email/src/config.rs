//! `BILLD_SMTP_URL` and friends, parsed once at start-up.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use lettre::message::Mailbox;
use secrecy::SecretString;

use crate::backend::{EmailBackend, FileBackend, LogBackend, SendError, SmtpBackend};
use crate::message::parse_mailbox;
use crate::render::Branding;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text (`smtp://`, `tls=none`): local relays and test sinks only.
    None,
    /// STARTTLS when the server offers it, else plain (`tls=starttls`).
    StartTls,
    /// STARTTLS or fail: never falls back to plain (`tls=required`).
    StartTlsRequired,
    /// TLS from the first byte (`smtps://`).
    Implicit,
}

/// SMTP login; the password stays redacted in `Debug`.
#[derive(Debug, Clone)]
pub struct SmtpAuth {
    /// User name.
    pub user: String,
    /// Password.
    pub password: SecretString,
}

/// A parsed `smtp://` or `smtps://` URL.
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// Server host name or address.
    pub host: String,
    /// Port (default 25 plain, 587 STARTTLS, 465 implicit TLS).
    pub port: u16,
    /// Connection protection.
    pub tls: TlsMode,
    /// Login, from the URL's user and password.
    pub auth: Option<SmtpAuth>,
    /// Per-command timeout (`timeout=SECONDS`, default 30).
    pub timeout: Duration,
    /// An extra trusted root (`ca=/path/ca.pem`), for a relay with a
    /// private CA; the Mozilla roots stay trusted too.
    pub ca_file: Option<PathBuf>,
}

/// Which backend delivers email.
#[derive(Debug, Clone)]
pub enum BackendConfig {
    /// `smtp://[user:pass@]host[:port][?tls=none|starttls|required][&timeout=SECS][&ca=/ca.pem]`
    /// or `smtps://[user:pass@]host[:port][?timeout=SECS][&ca=/ca.pem]`.
    Smtp(SmtpConfig),
    /// `file:///absolute/dir`: one `.eml` file per message.
    File(PathBuf),
    /// `log`: messages are logged, not sent.
    Log,
}

/// Why the email configuration is unusable. [`EmailConfigError::code`] is
/// stable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailConfigError {
    /// `BILLD_SMTP_URL` is not a URL billd understands.
    #[error("BILLD_SMTP_URL: {0}")]
    SmtpUrl(String),
    /// `BILLD_EMAIL_FROM` or `BILLD_ADMIN_EMAIL` is not an address.
    #[error("{var}: {message}")]
    Address {
        /// The variable.
        var: &'static str,
        /// Why.
        message: String,
    },
}

impl EmailConfigError {
    /// A stable snake_case code.
    pub fn code(&self) -> &'static str {
        match self {
            EmailConfigError::SmtpUrl(_) => "invalid_smtp_url",
            EmailConfigError::Address { .. } => "invalid_email_address",
        }
    }
}

fn url_error(message: impl Into<String>) -> EmailConfigError {
    EmailConfigError::SmtpUrl(message.into())
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl FromStr for BackendConfig {
    type Err = EmailConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw == "log" || raw == "log:" || raw == "log://" {
            return Ok(BackendConfig::Log);
        }
        let url = url::Url::parse(raw).map_err(|e| {
            url_error(format!(
                "not a URL ({e}); expected smtp://host:port, smtps://host, file:///dir or log"
            ))
        })?;
        match url.scheme() {
            "smtp" | "smtps" => parse_smtp(&url).map(BackendConfig::Smtp),
            "file" => {
                if url.query().is_some() {
                    return Err(url_error("file:// takes no parameters"));
                }
                let dir = url.to_file_path().map_err(|()| {
                    url_error("file:// needs an absolute local path (file:///var/mail/billd)")
                })?;
                Ok(BackendConfig::File(dir))
            }
            other => Err(url_error(format!(
                "unsupported scheme {other:?}; use smtp, smtps, file or log"
            ))),
        }
    }
}

fn parse_smtp(url: &url::Url) -> Result<SmtpConfig, EmailConfigError> {
    let host = url
        .host_str()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| url_error("missing host (smtp://mail.example.com:587)"))?
        .to_owned();
    if url.path() != "" && url.path() != "/" {
        return Err(url_error(format!("unexpected path {:?}", url.path())));
    }
    let implicit = url.scheme() == "smtps";
    let mut tls = if implicit {
        TlsMode::Implicit
    } else {
        TlsMode::None
    };
    let mut timeout = Duration::from_secs(30);
    let mut ca_file = None;
    for (key, value) in url.query_pairs() {
        match key.as_ref() {
            "tls" if implicit => {
                return Err(url_error(
                    "smtps:// is always TLS; tls= is only for smtp:// (starttls, required)",
                ))
            }
            "tls" => {
                tls = match value.as_ref() {
                    "none" => TlsMode::None,
                    "starttls" => TlsMode::StartTls,
                    "required" => TlsMode::StartTlsRequired,
                    other => {
                        return Err(url_error(format!(
                            "tls={other:?}: expected none, starttls or required"
                        )))
                    }
                }
            }
            "timeout" => {
                let secs: u64 = value.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    url_error(format!("timeout={value:?}: expected whole seconds > 0"))
                })?;
                timeout = Duration::from_secs(secs);
            }
            "ca" => {
                let path = PathBuf::from(value.as_ref());
                if !path.is_absolute() {
                    return Err(url_error(format!(
                        "ca={value:?}: expected an absolute path"
                    )));
                }
                ca_file = Some(path);
            }
            other => {
                return Err(url_error(format!(
                    "unknown parameter {other:?}; known: tls, timeout, ca"
                )))
            }
        }
    }
    let port = url.port().unwrap_or(match tls {
        TlsMode::None => 25,
        TlsMode::StartTls | TlsMode::StartTlsRequired => 587,
        TlsMode::Implicit => 465,
    });
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| url_error("user or password is not valid percent-encoded UTF-8"))
    };
    let auth = if url.username().is_empty() {
        if url.password().is_some() {
            return Err(url_error(
                "a password needs a user (smtp://user:password@host)",
            ));
        }
        None
    } else {
        Some(SmtpAuth {
            user: decode(url.username())?,
            password: SecretString::from(decode(url.password().unwrap_or_default())?),
        })
    };
    if ca_file.is_some() && tls == TlsMode::None {
        return Err(url_error("ca= needs TLS: add tls=required or use smtps://"));
    }
    // Opportunistic STARTTLS can be stripped by anyone on the path, so it
    // does not count as protection for a password either.
    let plaintext = matches!(tls, TlsMode::None | TlsMode::StartTls);
    if auth.is_some() && plaintext && !is_loopback(&host) {
        return Err(url_error(format!(
            "refusing to send a password to {host} without TLS; use smtps:// or ?tls=required"
        )));
    }
    Ok(SmtpConfig {
        host,
        port,
        tls,
        auth,
        timeout,
        ca_file,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl BackendConfig {
    /// Builds the backend this configuration names.
    pub fn build(&self) -> Result<Arc<dyn EmailBackend>, SendError> {
        Ok(match self {
            BackendConfig::Smtp(config) => Arc::new(SmtpBackend::new(config)?),
            BackendConfig::File(dir) => Arc::new(FileBackend::new(dir)?),
            BackendConfig::Log => Arc::new(LogBackend),
        })
    }
}

/// Everything email needs, from `BILLD_*` variables.
#[derive(Clone)]
pub struct EmailConfig {
    /// `BILLD_SMTP_URL` (unset → log).
    pub backend: BackendConfig,
    /// `BILLD_EMAIL_FROM` (unset → `billd <billd@localhost>`, refused with SMTP).
    pub from: Mailbox,
    /// `BILLD_ADMIN_EMAIL`: where alerts go (unset → alerts are only logged).
    pub admin: Option<Mailbox>,
    /// `BILLD_TEMPLATES`: a directory of template overrides.
    pub templates: Option<PathBuf>,
    /// `BILLD_PRODUCT_NAME` and `BILLD_ACCOUNT_URL`.
    pub branding: Branding,
}

impl fmt::Debug for EmailConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConfig")
            .field("backend", &self.backend)
            .field("from", &self.from.to_string())
            .field("admin", &self.admin.as_ref().map(ToString::to_string))
            .field("templates", &self.templates)
            .field("branding", &self.branding)
            .finish()
    }
}

impl EmailConfig {
    /// Reads the variables through `var` (e.g. `|k| std::env::var(k).ok()`),
    /// so tests need not touch the process environment.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, EmailConfigError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let backend = match set("BILLD_SMTP_URL") {
            Some(url) => url.parse()?,
            None => BackendConfig::Log,
        };
        let from = match set("BILLD_EMAIL_FROM") {
            Some(raw) => parse_mailbox(&raw).map_err(|e| EmailConfigError::Address {
                var: "BILLD_EMAIL_FROM",
                message: e.to_string(),
            })?,
            None if matches!(backend, BackendConfig::Smtp(_)) => {
                return Err(EmailConfigError::Address {
                    var: "BILLD_EMAIL_FROM",
                    message: "required when BILLD_SMTP_URL is set (e.g. \"Billing <billing@example.com>\")"
                        .to_owned(),
                })
            }
            None => parse_mailbox("billd <billd@localhost>").map_err(|e| {
                EmailConfigError::Address {
                    var: "BILLD_EMAIL_FROM",
                    message: e.to_string(),
                }
            })?,
        };
        let admin = set("BILLD_ADMIN_EMAIL")
            .map(|raw| {
                parse_mailbox(&raw).map_err(|e| EmailConfigError::Address {
                    var: "BILLD_ADMIN_EMAIL",
                    message: e.to_string(),
                })
            })
            .transpose()?;
        let defaults = Branding::default();
        Ok(Self {
            backend,
            from,
            admin,
            templates: set("BILLD_TEMPLATES").map(PathBuf::from),
            branding: Branding {
                product_name: set("BILLD_PRODUCT_NAME").unwrap_or(defaults.product_name),
                account_url: set("BILLD_ACCOUNT_URL").unwrap_or(defaults.account_url),
            },
        })
    }
}
