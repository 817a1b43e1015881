//! `billd reconcile [--dry-run]`: compares every Stripe subscription with
//! billd's state, heals drift through the lifecycle handler, ingests the
//! events Stripe could not deliver, and prints the drift table.

use std::sync::Arc;

use anyhow::Context as _;
use billd_server::jobs::Alerter;
use billd_server::jobs::{ReconcileConfig, ReconcileReport, Reconciler};
use billd_server::pipeline::LifecycleHandler;
use billd_server::{InboxWorker, Metrics, SystemClock};
use billd_store::Store;
use billd_stripe::client::{ClientConfig, StripeClient};
use clap::Args;

use crate::config::Config;

/// `billd reconcile` options.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// Only report: write nothing (no inbox rows, no state, no audit).
    #[arg(long)]
    pub dry_run: bool,
}

/// Runs one reconciliation and prints its report. Events it inserts are
/// applied here (a running `billd serve` may share the work).
pub async fn run(
    config: &Config,
    store: Arc<dyn Store>,
    args: &ReconcileArgs,
) -> anyhow::Result<()> {
    let key = config.stripe_api_key.clone().context(
        "billd reconcile needs BILLD_STRIPE_API_KEY (and BILLD_STRIPE_API_BASE for an emulator)",
    )?;
    let stripe = StripeClient::new(ClientConfig::new(config.stripe_api_base.clone(), key))
        .context("building the Stripe client")?;
    let catalog = Arc::new(crate::billing::catalog(config)?);
    let clock = Arc::new(SystemClock);
    let registry = LifecycleHandler::new(
        store.clone(),
        catalog.clone(),
        Some(stripe.clone()),
        clock.clone(),
    )
    .registry();
    let worker = InboxWorker::new(
        store.clone(),
        registry,
        crate::server_config(config).worker,
        Arc::new(Metrics::default()),
        clock.clone(),
    );
    // Drift alerts go to the outbox; the serving billd delivers them.
    let alerter = Alerter::new(store.clone(), &config.alerts.server_config());
    let reconciler = Reconciler::new(
        store,
        stripe,
        catalog,
        clock,
        None,
        ReconcileConfig::default(),
    )
    .with_alerter(alerter);
    let report = reconciler
        .run(args.dry_run, Some(&worker))
        .await
        .context("reconciliation")?;
    print!("{}", render(&report));
    Ok(())
}

/// The drift table and a summary.
pub fn render(report: &ReconcileReport) -> String {
    let mut out = String::new();
    if report.drift.is_empty() {
        out.push_str(&format!(
            "no drift: {} subscription(s) checked, each matches Stripe\n",
            report.subscriptions_checked
        ));
    } else {
        out.push_str(&format!(
            "{:<12} {:<24} {:<32} {}\n",
            "KIND", "CUSTOMER", "SUBSCRIPTION", "BILLD -> STRIPE"
        ));
        for d in &report.drift {
            let also: Vec<&str> = d.fields.iter().skip(1).map(|f| f.kind.as_str()).collect();
            let also = if also.is_empty() {
                String::new()
            } else {
                format!("  (also {})", also.join(", "))
            };
            out.push_str(&format!(
                "{:<12} {:<24} {:<32} {} -> {}{also}\n",
                d.kind.as_str(),
                d.customer,
                d.subscription,
                d.billd,
                d.stripe
            ));
        }
        let kinds: Vec<String> = report
            .drift_by_kind()
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.as_str()))
            .collect();
        out.push_str(&format!(
            "{} drifted subscription(s) of {} checked ({})\n",
            report.drift.len(),
            report.subscriptions_checked,
            kinds.join(", ")
        ));
    }
    for m in &report.missing_overage {
        out.push_str(&format!(
            "missing overage: {} of {} has no metered item for {}: its overage is metered but not invoiced; the next plan change adds it\n",
            m.subscription,
            m.customer,
            m.features.join(", ")
        ));
    }
    for u in &report.unlinked {
        out.push_str(&format!(
            "unlinked: {} of Stripe customer {} ({}) names no billd customer; parked as {}\n",
            u.subscription, u.stripe_customer, u.status, u.event
        ));
    }
    for why in &report.unreadable {
        out.push_str(&format!("unreadable: {why}\n"));
    }
    out.push_str(&format!(
        "{} undelivered event(s) at Stripe, {} missing from the inbox\n",
        report.undelivered_events,
        report.missing_events.len()
    ));
    if report.dry_run {
        out.push_str("dry run: nothing changed; run `billd reconcile` to heal\n");
    } else {
        out.push_str(&format!(
            "healed: {} heal event(s) and {} missed event(s) inserted into the inbox\n",
            report.heal_events_inserted, report.events_ingested
        ));
        if !report.not_settled.is_empty() {
            out.push_str(&format!(
                "{} event(s) not applied yet (the inbox worker retries them): {}\n",
                report.not_settled.len(),
                report.not_settled.join(", ")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use billd_core::CustomerId;
    use billd_server::jobs::{Drift, DriftKind, FieldDrift};

    fn drift() -> Drift {
        Drift {
            kind: DriftKind::Status,
            customer: CustomerId::parse("u_1").unwrap(),
            subscription: "sub_1".into(),
            billd: "active".into(),
            stripe: "past_due".into(),
            fields: vec![
                FieldDrift {
                    kind: DriftKind::Status,
                    billd: "active".into(),
                    stripe: "past_due".into(),
                },
                FieldDrift {
                    kind: DriftKind::Period,
                    billd: "1..2".into(),
                    stripe: "2..3".into(),
                },
            ],
            heal_event: "evt_billd_reconcile_sub_1_2".into(),
        }
    }

    #[test]
    fn the_table_shows_each_drift_with_both_sides_and_a_summary() {
        let report = ReconcileReport {
            subscriptions_checked: 4,
            drift: vec![drift()],
            undelivered_events: 3,
            missing_events: vec!["evt_1".into()],
            heal_events_inserted: 1,
            events_ingested: 1,
            ..ReconcileReport::default()
        };

        let shown = render(&report);

        let row = shown.lines().nth(1).unwrap();
        assert!(row.starts_with("status "), "{shown}");
        assert!(row.contains("u_1"), "{shown}");
        assert!(row.contains("active -> past_due  (also period)"), "{shown}");
        assert!(
            shown.contains("1 drifted subscription(s) of 4 checked (status 1)"),
            "{shown}"
        );
        assert!(
            shown.contains("3 undelivered event(s) at Stripe, 1 missing"),
            "{shown}"
        );
        assert!(shown.contains("healed: 1 heal event(s)"), "{shown}");
    }

    #[test]
    fn a_dry_run_says_nothing_changed_and_no_drift_says_so() {
        let report = ReconcileReport {
            dry_run: true,
            subscriptions_checked: 2,
            ..ReconcileReport::default()
        };

        let shown = render(&report);

        assert!(
            shown.starts_with("no drift: 2 subscription(s) checked"),
            "{shown}"
        );
        assert!(shown.contains("dry run: nothing changed"), "{shown}");
        assert!(!shown.contains("healed"), "{shown}");
    }

    #[test]
    fn a_subscription_without_its_metered_item_is_named_with_its_features() {
        let report = ReconcileReport {
            missing_overage: vec![billd_server::jobs::MissingOverage {
                customer: billd_core::CustomerId::parse("u_1").unwrap(),
                subscription: "sub_1".into(),
                features: vec!["generations".into(), "exports".into()],
            }],
            ..ReconcileReport::default()
        };

        let shown = render(&report);

        assert!(
            shown.contains(
                "missing overage: sub_1 of u_1 has no metered item for generations, exports"
            ),
            "{shown}"
        );
    }
}
