//! Stripe's lists read page by page below the rate limit, backing off
//! when Stripe answers 429 or 5xx anyway.

use std::time::{Duration, Instant};

use billd_stripe::client::{Params, StripeClient, StripeError};
use serde_json::Value;

use super::types::ReconcileConfig;

/// Lists Stripe collections page by page, no faster than the configured
/// rate, retrying a page Stripe keeps refusing as unavailable.
pub(super) struct Pager<'a> {
    stripe: &'a StripeClient,
    config: &'a ReconcileConfig,
    last_request: Option<Instant>,
    pub(super) retries: u32,
}

impl<'a> Pager<'a> {
    pub(super) fn new(stripe: &'a StripeClient, config: &'a ReconcileConfig) -> Self {
        Pager {
            stripe,
            config,
            last_request: None,
            retries: 0,
        }
    }

    pub(super) async fn list_all(
        &mut self,
        path: &str,
        params: Params,
    ) -> Result<Vec<Value>, StripeError> {
        let mut out = Vec::new();
        let mut starting_after: Option<String> = None;
        loop {
            let page_params = params
                .clone()
                .set("limit", self.config.page_limit.clamp(1, 100))
                .set_opt("starting_after", starting_after.as_deref());
            let page = self.get(path, &page_params).await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .ok_or_else(|| StripeError::Decode(format!("{path}: list without data")))?;
            let last_id = data
                .last()
                .and_then(|o| o.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            out.extend(data.iter().cloned());
            let has_more = page.get("has_more").and_then(Value::as_bool) == Some(true);
            match last_id {
                Some(id) if has_more => starting_after = Some(id),
                _ => return Ok(out),
            }
        }
    }

    async fn get(&mut self, path: &str, params: &Params) -> Result<Value, StripeError> {
        let mut attempt = 0u32;
        loop {
            self.pace().await;
            match self.stripe.get(path, params).await {
                Err(StripeError::Unavailable(why)) if attempt < self.config.page_retries => {
                    let delay = self
                        .config
                        .page_retry_backoff
                        .saturating_mul(1 << attempt.min(6));
                    tracing::warn!(path, attempt, delay_ms = delay.as_millis() as u64, %why, "stripe list unavailable; backing off");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                    self.retries += 1;
                }
                other => return other,
            }
        }
    }

    async fn pace(&mut self) {
        let interval = Duration::from_secs(1) / self.config.max_requests_per_sec.max(1);
        if let Some(last) = self.last_request {
            let next = last + interval;
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
        }
        self.last_request = Some(Instant::now());
    }
}
