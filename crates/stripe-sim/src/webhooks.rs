//! Signed webhook delivery: at least once, retried with Stripe-like backoff (scaled
//! by `time_scale`), with knobs to duplicate, reorder, delay and drop.

use crate::state::{Delivery, Inner};
use hmac::{Hmac, Mac};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::Sha256;
use std::sync::{Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

/// The `Stripe-Signature` header for `payload` signed at `t` with `secret`:
/// `t={t},v1={hex(HMAC-SHA256(secret, "{t}.{payload}"))}`.
pub fn signature_header(secret: &str, t: i64, payload: &str) -> String {
    signature_header_multi(&[secret.to_string()], t, payload)
}

/// The header with one `v1` per secret, as Stripe sends while a rolled secret overlaps.
pub fn signature_header_multi(secrets: &[String], t: i64, payload: &str) -> String {
    let mut h = format!("t={t}");
    for secret in secrets {
        h.push_str(",v1=");
        h.push_str(&sign(secret, t, payload));
    }
    h
}

fn sign(secret: &str, t: i64, payload: &str) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        // HMAC accepts keys of any length; this branch cannot be reached.
        return String::new();
    };
    mac.update(format!("{t}.{payload}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Stripe's retry delay after `attempt` failed attempts, in real seconds before scaling:
/// doubling from a minute, capped at six hours (about three days over 16 attempts).
pub fn backoff_secs(attempt: u32) -> f64 {
    let minutes = 2f64.powi(attempt.saturating_sub(1).min(20) as i32);
    (minutes * 60.0).min(6.0 * 3600.0)
}

fn wall_clock() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs deliveries until the emulator is dropped. Holds only a weak reference so
/// that dropping the last `Sim` stops it.
pub async fn run(inner: Weak<Mutex<Inner>>, mut rx: UnboundedReceiver<Delivery>, seed: u64) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "stripe-sim: cannot build HTTP client; webhooks disabled");
            return;
        }
    };
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xdead_beef);
    while let Some(first) = rx.recv().await {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let knobs = lock(&strong).cfg.webhooks.clone();
        drop(strong);
        let mut batch = vec![first];
        if knobs.reorder_window_ms > 0 {
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(knobs.reorder_window_ms);
            while let Ok(Some(d)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                batch.push(d);
            }
            batch.shuffle(&mut rng);
        }
        for d in batch {
            if knobs.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(knobs.delay_ms)).await;
            }
            // First attempts go out one by one so that, without knobs, order is kept.
            if !attempt(&inner, &client, &d).await {
                let (inner, client) = (inner.clone(), client.clone());
                tokio::spawn(async move { retry(inner, client, d).await });
            }
        }
    }
}

async fn attempt(inner: &Weak<Mutex<Inner>>, client: &reqwest::Client, d: &Delivery) -> bool {
    let t = wall_clock();
    let result = client
        .post(&d.url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header(
            "User-Agent",
            "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        )
        .header(
            "Stripe-Signature",
            signature_header_multi(&d.secrets, t, &d.payload),
        )
        .body(d.payload.clone())
        .send()
        .await;
    let ok = matches!(&result, Ok(r) if r.status().is_success());
    if !ok {
        let why = match &result {
            Ok(r) => r.status().to_string(),
            Err(e) => e.to_string(),
        };
        tracing::debug!(event = %d.event_id, url = %d.url, attempt = d.attempt, why, "stripe-sim: webhook delivery failed");
    }
    if let Some(strong) = inner.upgrade() {
        lock(&strong).delivery_result(&d.event_id, &d.endpoint_id, ok);
    }
    ok
}

async fn retry(inner: Weak<Mutex<Inner>>, client: reqwest::Client, mut d: Delivery) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let (scale, max) = {
            let s = lock(&strong);
            (s.cfg.time_scale, s.cfg.webhooks.max_attempts)
        };
        drop(strong);
        if d.attempt >= max {
            return;
        }
        let wait = (backoff_secs(d.attempt) * scale).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        d.attempt += 1;
        if attempt(&inner, &client, &d).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_payload() {
        // Independently computed: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let h = signature_header("whsec_test", 1_700_000_000, "{\"a\":1}");
        assert_eq!(
            h,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn backoff_doubles_then_caps_at_six_hours() {
        assert_eq!(backoff_secs(1), 60.0);
        assert_eq!(backoff_secs(2), 120.0);
        assert_eq!(backoff_secs(15), 6.0 * 3600.0);
    }
}
