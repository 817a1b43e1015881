//! The official Stripe Node SDK (npm `stripe`, the release of the pinned API
//! version) against the emulator over real HTTP: `node tests/node/scenario.mjs
//! <url>` runs the scenario and prints one JSON object, asserted on here.
//! scripts/test.sh installs the SDK into $BILLD_NODE_SDK (default
//! /var/cache/billd-node-sdk), outside the repository.

use serde_json::{json, Value};

/// Where scripts/test.sh installs the SDK (`npm install --prefix`).
fn sdk_dir() -> String {
    std::env::var("BILLD_NODE_SDK").unwrap_or_else(|_| "/var/cache/billd-node-sdk".into())
}

/// The SDK release the definitions table names (`stripe@23.0.1 (npm)` → `23.0.1`):
/// one pin for the definitions and this test.
fn pinned_release() -> String {
    let sdk = stripe_sim::defs::sdk();
    sdk.strip_prefix("stripe@")
        .and_then(|v| v.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected sdk in the definitions table: {sdk}"))
        .to_string()
}

#[tokio::test]
async fn the_official_node_sdk_runs_a_full_scenario_and_verifies_webhooks() {
    // No silent skip: without node or the SDK this test fails and says why.
    match std::process::Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`node --version` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "node is required for this test (scripts/test.sh installs Node.js and the SDK): {e}"
        ),
    }
    let release = pinned_release();
    let manifest = format!("{}/node_modules/stripe/package.json", sdk_dir());
    let installed: Value = std::fs::read_to_string(&manifest)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_else(|| {
            panic!(
                "the Stripe Node SDK is not installed at {manifest}: run scripts/test.sh, or \
                 `npm install --prefix {} stripe@{release}` (BILLD_NODE_SDK picks another directory)",
                sdk_dir()
            )
        });
    assert_eq!(
        installed["version"], release,
        "{manifest} is not the pinned release (scripts/test.sh reinstalls it)"
    );

    let h = crate::support::serve_for_sdk(4).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/scenario.mjs");
    let stdout = crate::support::run_scenario(
        tokio::process::Command::new("node")
            .arg(script)
            .arg(h.url())
            .env("BILLD_NODE_SDK", sdk_dir()),
        "node",
    )
    .await;
    let r: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("scenario output is not JSON ({e}):\n{stdout}"));

    assert_eq!(r["sdk"], release.as_str());
    assert_eq!(r["api_version"], stripe_sim::config::API_VERSION);
    assert_eq!(
        r["price"],
        json!({"amount": 3000, "interval": "month", "by_lookup_key": true})
    );
    // 2026-01-01 → 2026-02-01 → 2026-03-01.
    let (jan, feb, mar) = (1_767_225_600_i64, 1_769_904_000_i64, 1_772_323_200_i64);
    assert_eq!(
        r["checkout"],
        json!({"opened": "open", "status": "complete", "subscriptions": 1,
               "subscription_status": "active", "metadata_plan": "standard",
               "period_start": jan, "period_end": feb})
    );
    assert_eq!(
        r["renewal"],
        json!({"status": "active", "period_start": feb, "period_end": mar,
               "invoices": ["paid", "paid"]})
    );
    assert_eq!(
        r["failed_renewal"],
        json!({"status": "past_due", "invoice_status": "open", "attempt_count": 1, "amount_due": 3000})
    );
    assert_eq!(
        r["refund"],
        json!({"status": "succeeded", "amount": 500, "charge_amount_refunded": 500,
               "succeeded_charges": 2, "failed_charges": 1})
    );
    assert_eq!(
        (&r["over_refund"]["status"], &r["over_refund"]["param"]),
        (&json!(400), &json!("amount"))
    );

    let e = &r["errors"];
    let err = |k: &str| {
        (
            e[k]["type"].as_str().unwrap_or_default(),
            e[k]["status"].as_i64().unwrap_or_default(),
            e[k]["code"].as_str(),
            e[k]["param"].as_str(),
        )
    };
    assert_eq!(
        err("email"),
        (
            "StripeInvalidRequestError",
            400,
            Some("email_invalid"),
            Some("email")
        )
    );
    assert_eq!(
        err("unit_amount"),
        (
            "StripeInvalidRequestError",
            400,
            Some("parameter_invalid_integer"),
            Some("unit_amount")
        )
    );
    assert_eq!(
        err("interval"),
        (
            "StripeInvalidRequestError",
            400,
            None,
            Some("recurring[interval]")
        )
    );
    assert_eq!(
        err("missing"),
        (
            "StripeInvalidRequestError",
            404,
            Some("resource_missing"),
            Some("id")
        )
    );

    let w = &r["webhooks"];
    let received = w["received"].as_u64().unwrap_or_default();
    assert!(received > 0, "{w:#}");
    assert_eq!(w["verified"], received, "every delivery verifies: {w:#}");
    assert_eq!(w["tampered_rejected"], true);
    let types: Vec<&str> = w["types"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for t in [
        "product.created",
        "price.created",
        "checkout.session.completed",
        "customer.subscription.created",
        "invoice.paid",
        "invoice.payment_failed",
        "charge.failed",
        "charge.refunded",
        "refund.created",
    ] {
        assert!(types.contains(&t), "no verified {t} webhook in {types:?}");
    }
    // Every object the SDK received as Stripe's definitions have it, and
    // every request it sent too, but the one the scenario sends to be
    // refused.
    crate::support::assert_conforms(&h.sim);
    let refused = h.sim.request_problems();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert!(
        refused[0].contains("recurring[interval]=fortnight"),
        "{refused:#?}"
    );
    h.shutdown().await;
}
