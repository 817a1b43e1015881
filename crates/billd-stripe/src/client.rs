//! Stripe API client (idempotency keys, retries with backoff on 429/5xx).
