//! Stripe webhook signature verification.
//!
//! Our own verifier rather than async-stripe's: that one keeps only the last
//! `v1` signature of the header (so a delivery signed during a secret rotation
//! can fail) and hard-codes its tolerance and clock. Here every `v1` is tried
//! against every configured secret, `v0` is ignored, and `now` is an argument
//! so the tolerance edges are testable to the second.
//!
//! Header format (`Stripe-Signature`): `t=<unix seconds>,v1=<hex>[,v1=<hex>][,v0=<hex>]`;
//! each `v1` is HMAC-SHA256 over `"{t}.{raw body}"` keyed with the whole
//! endpoint secret (`whsec_…` included), hex encoded.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Stripe's default tolerance between the signed timestamp and arrival.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// Name of the HTTP header Stripe signs deliveries with.
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";

/// Why a delivery was refused. Each variant has a stable snake_case code
/// ([`VerifyError::code`]) that the HTTP layer returns to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// No `Stripe-Signature` header, or an empty one.
    #[error("the Stripe-Signature header is missing")]
    SignatureMissing,
    /// The header is not `t=…,v1=…`: no timestamp, a timestamp that is not an
    /// integer, or an element without `=`.
    #[error("the Stripe-Signature header is malformed: {0}")]
    SignatureMalformed(&'static str),
    /// The header has a timestamp but no `v1` signature (for example only
    /// the legacy `v0` scheme, which is never accepted).
    #[error("the Stripe-Signature header has no v1 signature")]
    SignatureV1Missing,
    /// No `v1` signature matches the body under any configured secret.
    #[error("no v1 signature matches the payload under any configured secret")]
    SignatureMismatch,
    /// The signature is valid but its timestamp is too far from `now`
    /// (a replay, or a badly skewed clock).
    #[error("the signature timestamp is {age_secs}s away from now, beyond the {tolerance_secs}s tolerance")]
    TimestampOutOfTolerance {
        /// `now - t`; negative when the timestamp is in the future.
        age_secs: i64,
        /// The tolerance in force.
        tolerance_secs: i64,
    },
}

impl VerifyError {
    /// The stable error code returned to HTTP callers and used as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::SignatureMissing => "signature_missing",
            VerifyError::SignatureMalformed(_) => "signature_malformed",
            VerifyError::SignatureV1Missing => "signature_v1_missing",
            VerifyError::SignatureMismatch => "signature_mismatch",
            VerifyError::TimestampOutOfTolerance { .. } => "timestamp_out_of_tolerance",
        }
    }
}

/// A parsed `Stripe-Signature` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeader {
    /// The signed timestamp `t` (unix seconds, Stripe's clock).
    pub timestamp: i64,
    /// Every `v1` signature, decoded. Entries that are not 32 bytes of hex
    /// are kept as `None`: they can never match, but another `v1` may.
    pub v1: Vec<Option<[u8; 32]>>,
}

impl SignatureHeader {
    /// Parses a header value. `v0` and unknown schemes are ignored.
    pub fn parse(header: &str) -> Result<Self, VerifyError> {
        if header.trim().is_empty() {
            return Err(VerifyError::SignatureMissing);
        }
        let mut timestamp = None;
        let mut v1 = Vec::new();
        for element in header.split(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            let (key, value) = element
                .split_once('=')
                .ok_or(VerifyError::SignatureMalformed("an element has no '='"))?;
            match key.trim() {
                "t" => {
                    if timestamp.is_some() {
                        return Err(VerifyError::SignatureMalformed("more than one timestamp"));
                    }
                    let t = value.trim().parse::<i64>().map_err(|_| {
                        VerifyError::SignatureMalformed("timestamp is not an integer")
                    })?;
                    timestamp = Some(t);
                }
                "v1" => v1.push(decode_signature(value.trim())),
                _ => {}
            }
        }
        let timestamp = timestamp.ok_or(VerifyError::SignatureMalformed("no timestamp"))?;
        if v1.is_empty() {
            return Err(VerifyError::SignatureV1Missing);
        }
        Ok(SignatureHeader { timestamp, v1 })
    }
}

fn decode_signature(value: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(value, &mut out).ok()?;
    Some(out)
}

fn keyed_mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Verifies a delivery: the header's timestamp and `v1` signatures against
/// the raw `body` under each of `secrets` (several during a rotation), then
/// the timestamp against `now` within `tolerance_secs` in either direction
/// (exactly `tolerance_secs` old is accepted).
///
/// Signatures are checked before the timestamp so that an unsigned request
/// learns nothing about our clock. Comparisons are constant time.
pub fn verify<S: AsRef<str>>(
    header: Option<&str>,
    body: &[u8],
    secrets: &[S],
    tolerance_secs: i64,
    now: i64,
) -> Result<(), VerifyError> {
    let header = SignatureHeader::parse(header.ok_or(VerifyError::SignatureMissing)?)?;
    let mut matched = false;
    for secret in secrets {
        let mac = keyed_mac(secret.as_ref(), header.timestamp, body);
        for candidate in header.v1.iter().flatten() {
            // `verify_slice` compares in constant time. Keep looping after a
            // match so the time taken does not depend on which one matched.
            matched |= mac.clone().verify_slice(candidate).is_ok();
        }
    }
    if !matched {
        return Err(VerifyError::SignatureMismatch);
    }
    let age_secs = now.saturating_sub(header.timestamp);
    if age_secs.saturating_abs() > tolerance_secs {
        return Err(VerifyError::TimestampOutOfTolerance {
            age_secs,
            tolerance_secs,
        });
    }
    Ok(())
}

/// The hex `v1` signature of `body` at `timestamp` under `secret`.
pub fn compute_signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(keyed_mac(secret, timestamp, body).finalize().into_bytes())
}

/// A complete `Stripe-Signature` header value (`t=…,v1=…`) as Stripe would
/// send it; used by tests, the benchmark and the emulator.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        compute_signature(secret, timestamp, body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_with_extra_whitespace_and_unknown_schemes_parses() {
        let sig = "a".repeat(64);
        let parsed = SignatureHeader::parse(&format!(" t=12 , v1={sig}, v0=zz, x=1")).unwrap();
        assert_eq!(parsed.timestamp, 12);
        assert_eq!(parsed.v1, vec![Some([0xaa; 32])]);
    }

    #[test]
    fn a_v1_that_is_not_hex_is_kept_as_unmatchable() {
        let parsed = SignatureHeader::parse("t=1,v1=nothex").unwrap();
        assert_eq!(parsed.v1, vec![None]);
    }

    #[test]
    fn two_timestamps_are_malformed() {
        let err = SignatureHeader::parse("t=1,t=2,v1=00").unwrap_err();
        assert_eq!(err.code(), "signature_malformed");
    }
}
