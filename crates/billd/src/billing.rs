//! Billing wiring for `billd serve` (catalog, Stripe client, API keys) and
//! the `billd audit <customer>` command.

use std::sync::Arc;

use anyhow::Context as _;
use billd_core::{Catalog, CustomerId};
use billd_server::auth::ApiKeys;
use billd_server::billing::BillingConfig;
use billd_server::outbox::{LogDelivery, OutboxConfig};
use billd_store::{AuditRecord, Store};
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
        outbox: OutboxConfig::default(),
        delivery: Arc::new(LogDelivery),
    })
}

/// `billd audit <customer>`: the customer's audit rows, newest first.
pub async fn audit(store: &dyn Store, customer: &str, limit: u32) -> anyhow::Result<()> {
    let customer = CustomerId::parse(customer).context("customer id")?;
    let rows = store.list_audit(&customer, limit).await?;
    print!("{}", render_audit(&rows));
    Ok(())
}

fn render_audit(rows: &[AuditRecord]) -> String {
    let mut out = format!(
        "{:<12} {:<40} {:<24} {:<24} {}\n",
        "AT", "FIELD", "BEFORE", "AFTER", "REASON"
    );
    for row in rows {
        out.push_str(&format!(
            "{:<12} {:<40} {:<24} {:<24} {} ({})\n",
            row.at,
            row.field,
            row.before.as_deref().unwrap_or("-"),
            row.after.as_deref().unwrap_or("-"),
            row.reason,
            row.event_type
        ));
    }
    out
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
        assert!(shown.contains("subscription.sub_1.status"), "{shown}");
        assert!(
            shown.contains("evt_1 (customer.subscription.created)"),
            "{shown}"
        );
        assert!(shown.lines().nth(1).unwrap().contains(" - "), "{shown}");
    }
}
