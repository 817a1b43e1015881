//! Billing wiring for `billd serve` (catalog, Stripe client, API keys) and
//! the `billd audit <customer>` command.

use std::sync::Arc;

use anyhow::Context as _;
use billd_core::{Catalog, CustomerId};
use billd_email::EmailConfig;
use billd_server::billing::BillingConfig;
use billd_server::http::ApiConfig;
use billd_server::http::ApiKeys;
use billd_server::jobs::SchedulerConfig;
use billd_server::pipeline::EmailDelivery;
use billd_server::pipeline::{Delivery, LogDelivery, OutboxConfig};
use billd_server::telemetry::Metrics;
use billd_store::{AuditRecord, BillingStore, Store};
use billd_stripe::client::{ClientConfig, StripeClient};

use crate::config::Config;

/// The plan catalog `BILLD_PLANS` names, or the built-in seed catalog.
pub fn catalog(config: &Config) -> anyhow::Result<Catalog> {
    let Some(path) = &config.plans else {
        return Ok(Catalog::seed());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("BILLD_PLANS: reading {}", path.display()))?;
    Catalog::from_toml(&text).with_context(|| format!("BILLD_PLANS: {}", path.display()))
}

/// What billing runs with under `config`. Without a Stripe key there is no
/// Stripe client: outbox Stripe calls wait and retry (dev mode).
pub fn billing_config(config: &Config) -> anyhow::Result<BillingConfig> {
    let stripe = config
        .stripe_api_key
        .clone()
        .map(|key| StripeClient::new(ClientConfig::new(config.stripe_api_base.clone(), key)))
        .transpose()
        .context("building the Stripe client")?;
    Ok(BillingConfig {
        catalog: Arc::new(catalog(config)?),
        stripe,
        api_keys: ApiKeys::new(config.api_keys.clone(), config.admin_api_keys.clone()),
        outbox: OutboxConfig {
            lease_secs: config.outbox_lease_secs,
            heartbeat: std::time::Duration::from_secs(
                u64::try_from(config.outbox_lease_secs / 3)
                    .unwrap_or(1)
                    .max(1),
            ),
            ..OutboxConfig::default()
        },
        api: ApiConfig {
            checkout_rate_limit_per_min: config.checkout_rate_limit_per_min,
            stripe_tax: config.stripe_tax,
            proration_behavior: config.proration_behavior,
            stripe_customer_erasure: config.delete_stripe_customer,
            downgrade_timing: config.downgrade_timing,
            secure_cookies: config
                .public_url
                .as_deref()
                .is_some_and(|url| url.starts_with("https://")),
        },
        delivery: Arc::new(LogDelivery),
        metrics: Arc::new(Metrics::default()),
        alerts: config.alerts.server_config(),
        scheduler: SchedulerConfig {
            enabled: config.scheduler,
            intervals: config.scheduler_intervals.clone(),
            ..SchedulerConfig::default()
        },
    })
}

/// Where outbox emails and alerts go: SMTP through billd-email when
/// `BILLD_SMTP_URL` is set, else the log. Checked at start-up, so a bad
/// address or a missing `BILLD_EMAIL_FROM` stops `serve` instead of
/// dead-lettering every email later. `start_billing` counts the outcomes
/// (`billd_emails_total` on `/metrics`).
pub fn delivery(
    config: &Config,
    store: Arc<dyn Store>,
    max_attempts: i32,
) -> anyhow::Result<Arc<dyn Delivery>> {
    let Some(smtp_url) = &config.smtp_url else {
        return Ok(Arc::new(LogDelivery));
    };
    // Every variable billd-email reads comes from the binary's config (file
    // or environment), the one list of settings.
    let email = EmailConfig::from_vars(|name| match name {
        "BILLD_SMTP_URL" => Some(smtp_url.expose().to_owned()),
        "BILLD_EMAIL_FROM" => config.email_from.clone(),
        "BILLD_ADMIN_EMAIL" => config.admin_email.clone(),
        "BILLD_TEMPLATES" => config.templates.as_ref().map(|d| d.display().to_string()),
        "BILLD_PRODUCT_NAME" => config.product_name.clone(),
        "BILLD_ACCOUNT_URL" => config.account_url.clone(),
        _ => None,
    })
    .context("email configuration")?;
    let store: Arc<dyn BillingStore> = store;
    let delivery = EmailDelivery::from_config(&email, store, max_attempts)
        .map_err(|e| anyhow::anyhow!("email configuration: {e}"))?;
    Ok(Arc::new(delivery))
}

/// `billd audit <customer>`: the customer's audit rows, newest first, as a
/// table or (`json`) JSON Lines.
pub async fn audit(
    store: &dyn Store,
    customer: &str,
    limit: u32,
    json: bool,
) -> anyhow::Result<()> {
    let customer = CustomerId::parse(customer).context("customer id")?;
    let rows = store.list_audit(&customer, limit).await?;
    if json {
        print!("{}", crate::table::json_lines(&audit_json(&rows)));
    } else {
        print!("{}", render_audit(&rows));
    }
    Ok(())
}

fn render_audit(rows: &[AuditRecord]) -> String {
    use crate::table::Align::Left;
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                crate::table::rfc3339(row.at),
                row.field.clone(),
                row.before.clone().unwrap_or_else(|| "-".into()),
                row.after.clone().unwrap_or_else(|| "-".into()),
                format!("{} ({})", row.reason, row.event_type),
            ]
        })
        .collect();
    crate::table::render(
        &[
            ("AT", Left),
            ("FIELD", Left),
            ("BEFORE", Left),
            ("AFTER", Left),
            ("REASON", Left),
        ],
        &cells,
    )
}

/// `billd audit --json`: one object per row, `at` in RFC 3339 UTC, an
/// absent value `null`.
fn audit_json(rows: &[AuditRecord]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|row| {
            serde_json::json!({
                "id": row.id,
                "customer": row.customer_id.as_str(),
                "at": crate::table::rfc3339(row.at),
                "field": row.field,
                "before": row.before,
                "after": row.after,
                "reason": row.reason,
                "event_type": row.event_type,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn without_billd_plans_the_seed_catalog_is_used_and_a_bad_file_is_an_error() {
        let config = Config::load(None, &HashMap::new()).unwrap();
        assert_eq!(catalog(&config).unwrap(), Catalog::seed());

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plans.toml");
        std::fs::write(&path, "currency = 12").unwrap();
        let env = HashMap::from([("BILLD_PLANS".to_string(), path.display().to_string())]);
        let config = Config::load(None, &env).unwrap();
        let err = format!("{:#}", catalog(&config).unwrap_err());
        assert!(err.contains("BILLD_PLANS"), "{err}");
    }

    #[tokio::test]
    async fn smtp_delivery_needs_a_sender_and_without_smtp_emails_go_to_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let store = billd_store::connect(&url).await.unwrap();

        let config = Config::load(None, &HashMap::new()).unwrap();
        assert!(delivery(&config, store.clone(), 5).is_ok());

        let env = HashMap::from([(
            "BILLD_SMTP_URL".to_string(),
            "smtp://127.0.0.1:2525".to_string(),
        )]);
        let config = Config::load(None, &env).unwrap();
        let err = format!("{:#}", delivery(&config, store.clone(), 5).err().unwrap());
        assert!(err.contains("BILLD_EMAIL_FROM"), "{err}");

        let mut env = env;
        env.insert("BILLD_EMAIL_FROM".into(), "billing@example.com".into());
        let config = Config::load(None, &env).unwrap();
        assert!(delivery(&config, store, 5).is_ok());
    }

    #[test]
    fn audit_rows_show_before_after_and_the_reason() {
        let rows = vec![AuditRecord {
            id: 1,
            customer_id: CustomerId::parse("u1").unwrap(),
            at: 1_700_000_000,
            field: "subscription.sub_1.status".into(),
            before: None,
            after: Some("active".into()),
            reason: "evt_1".into(),
            event_type: "customer.subscription.created".into(),
        }];
        let shown = render_audit(&rows);
        assert!(shown.contains("2023-11-14T22:13:20Z"), "{shown}");
        assert!(shown.contains("subscription.sub_1.status"), "{shown}");
        assert!(
            shown.contains("evt_1 (customer.subscription.created)"),
            "{shown}"
        );
        assert!(shown.lines().nth(1).unwrap().contains(" - "), "{shown}");
    }
}
