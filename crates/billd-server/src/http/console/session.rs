//! Console sessions without a session table: the cookie carries when the
//! session started, when it was last used and a random nonce, signed with
//! a key derived from the admin keys. Every billd process sharing those
//! keys accepts it, rotating the admin keys ends every session, and a
//! session idle for [`IDLE_SECS`] is over. The CSRF token of a session is
//! derived from its nonce, so forms need no server-side state either.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::http::auth::ApiKeys;

/// A session ends after this long without a request.
pub(crate) const IDLE_SECS: i64 = 8 * 3600;

/// The cookie's name.
pub(crate) const COOKIE: &str = "billd_console";

/// A valid session read from its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    /// When it started (unix seconds).
    pub(crate) started: i64,
    /// Its random nonce (hex); names the session in logs.
    pub(crate) nonce: String,
    /// The token its forms must send back.
    pub(crate) csrf: String,
}

/// Issues and checks console session cookies.
#[derive(Clone)]
pub(crate) struct Sessions {
    key: [u8; 32],
    secure: bool,
}

impl Sessions {
    /// Sessions signed with a key derived from `keys`' admin keys; cookies
    /// marked `Secure` when billd is served over https.
    pub(crate) fn new(keys: &ApiKeys, secure: bool) -> Self {
        let mut digest = Sha256::new();
        digest.update(b"billd console session v1\0");
        for key in keys.admin_keys() {
            digest.update(key.as_bytes());
            digest.update([0]);
        }
        Sessions {
            key: digest.finalize().into(),
            secure,
        }
    }

    fn mac(&self, parts: &[&str]) -> String {
        // An HMAC accepts a key of any length: this cannot fail.
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(b"|");
        }
        hex::encode(mac.finalize().into_bytes())
    }

    /// A new session's cookie value at `now`.
    pub(crate) fn start(&self, now: i64) -> String {
        let mut nonce = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut nonce);
        self.value(now, now, &hex::encode(nonce))
    }

    fn value(&self, started: i64, seen: i64, nonce: &str) -> String {
        let (started, seen) = (started.to_string(), seen.to_string());
        let mac = self.mac(&["session", &started, &seen, nonce]);
        format!("{started}.{seen}.{nonce}.{mac}")
    }

    /// The session of cookie value `value` at `now`, with the value to
    /// send back (its last use moved to `now`); `None` when it is forged,
    /// signed under other admin keys, or idle for too long.
    pub(crate) fn check(&self, value: &str, now: i64) -> Option<(Session, String)> {
        let mut fields = value.split('.');
        let (started, seen, nonce, mac) = (
            fields.next()?,
            fields.next()?,
            fields.next()?,
            fields.next()?,
        );
        if fields.next().is_some() {
            return None;
        }
        let expected = self.mac(&["session", started, seen, nonce]);
        if !bool::from(expected.as_bytes().ct_eq(mac.as_bytes())) {
            return None;
        }
        let (started, seen): (i64, i64) = (started.parse().ok()?, seen.parse().ok()?);
        if now.saturating_sub(seen) > IDLE_SECS || seen > now.saturating_add(60) {
            return None;
        }
        let session = Session {
            started,
            nonce: nonce.to_owned(),
            csrf: self.mac(&["csrf", nonce]),
        };
        Some((session, self.value(started, now, nonce)))
    }

    /// Whether `token` is the CSRF token of `session`.
    pub(crate) fn csrf_ok(session: &Session, token: &str) -> bool {
        bool::from(session.csrf.as_bytes().ct_eq(token.as_bytes()))
    }

    /// The `Set-Cookie` value carrying `value` (empty and expired: log out).
    pub(crate) fn cookie(&self, value: &str) -> String {
        let max_age = if value.is_empty() { 0 } else { IDLE_SECS };
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{COOKIE}={value}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
        )
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub(crate) fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header
        .split(';')
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn sessions(admin: &str) -> Sessions {
        let keys = ApiKeys::new(vec![], vec![SecretString::from(admin.to_owned())]);
        Sessions::new(&keys, false)
    }

    #[test]
    fn a_session_lives_while_used_and_ends_after_eight_idle_hours() {
        let s = sessions("admin_one");
        let value = s.start(1_000);
        let (session, renewed) = s.check(&value, 1_000 + IDLE_SECS).unwrap();
        assert_eq!(session.started, 1_000);
        // Used at the last second: it lives eight more hours from then.
        assert!(s.check(&renewed, 1_000 + 2 * IDLE_SECS).is_some());
        assert!(s.check(&value, 1_001 + IDLE_SECS).is_none());
    }

    #[test]
    fn a_forged_or_foreign_cookie_is_no_session() {
        let s = sessions("admin_one");
        let value = s.start(1_000);
        assert!(sessions("admin_two").check(&value, 1_000).is_none());
        let forged = value.replacen("1000.1000", "1000.9999", 1);
        assert!(s.check(&forged, 9_999).is_none());
        for junk in ["", "a.b.c.d", "1.2.3", "1.2.3.4.5"] {
            assert!(s.check(junk, 1_000).is_none(), "{junk}");
        }
    }

    #[test]
    fn the_csrf_token_is_the_sessions_own() {
        let s = sessions("admin_one");
        let (one, _) = s.check(&s.start(1_000), 1_000).unwrap();
        let (two, _) = s.check(&s.start(1_000), 1_000).unwrap();
        assert!(Sessions::csrf_ok(&one, &one.csrf));
        assert!(!Sessions::csrf_ok(&one, &two.csrf));
        assert!(!Sessions::csrf_ok(&one, ""));
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_over_https() {
        let keys = ApiKeys::new(vec![], vec![SecretString::from("k".to_owned())]);
        let cookie = Sessions::new(&keys, true).cookie("v");
        assert!(cookie.contains("HttpOnly; SameSite=Strict"), "{cookie}");
        assert!(cookie.ends_with("; Secure"), "{cookie}");
        assert!(!sessions("k").cookie("v").contains("Secure"));
        assert!(sessions("k").cookie("").contains("Max-Age=0"));
        assert_eq!(cookie_value("a=1; billd_console=xyz", COOKIE), Some("xyz"));
    }
}
