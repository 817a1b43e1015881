//! The pure decisions of reconciliation: how billd's snapshot of a
//! subscription differs from Stripe's ([`compare`]) and the second a heal
//! is stamped at ([`heal_created`]). No I/O.

use billd_core::event::Subscription;
use billd_core::state::{resolve_plan, SubscriptionState};
use billd_core::{Catalog, PriceId};
use serde_json::Value;

use super::types::{DriftKind, FieldDrift};

/// The second a heal is stamped at: late enough to beat what billd holds
/// (an authoritative snapshot of the same second is beaten by the next
/// second) and every undelivered snapshot of the subscription, so that
/// Stripe's current object wins; never later, so that any webhook Stripe
/// creates afterwards still wins over it.
pub fn heal_created(
    known: Option<&SubscriptionState>,
    stripe: &Subscription,
    latest_missed: Option<&i64>,
) -> i64 {
    let mut created = stripe
        .created
        .max(latest_missed.copied().unwrap_or(i64::MIN));
    if let Some(known) = known {
        created = created.max(known.stamp.created + i64::from(known.stamp.authoritative));
    }
    created
}

/// Every difference between billd's snapshot (none: billd lacks the
/// subscription) and Stripe's object, most significant first.
pub fn compare(
    known: Option<&SubscriptionState>,
    stripe: &Subscription,
    catalog: &Catalog,
) -> Vec<FieldDrift> {
    let Some(known) = known else {
        return vec![FieldDrift {
            kind: DriftKind::Missing,
            billd: "-".to_owned(),
            stripe: describe(stripe, catalog),
        }];
    };
    let ours = &known.snapshot;
    let mut out = Vec::new();
    if ours.status != stripe.status {
        out.push(FieldDrift {
            kind: DriftKind::Status,
            billd: ours.status.as_str().to_owned(),
            stripe: stripe.status.as_str().to_owned(),
        });
    }
    let price = |s: &Subscription| s.price.as_ref().map(|p| p.id.to_string());
    if price(ours) != price(stripe) {
        out.push(FieldDrift {
            kind: DriftKind::Plan,
            billd: plan_label(ours, catalog),
            stripe: plan_label(stripe, catalog),
        });
    }
    if ours.cancel_at_period_end != stripe.cancel_at_period_end {
        out.push(FieldDrift {
            kind: DriftKind::CancelFlag,
            billd: ours.cancel_at_period_end.to_string(),
            stripe: stripe.cancel_at_period_end.to_string(),
        });
    }
    let period = |s: &Subscription| (s.current_period_start, s.current_period_end);
    if period(ours) != period(stripe) {
        out.push(FieldDrift {
            kind: DriftKind::Period,
            billd: period_label(ours),
            stripe: period_label(stripe),
        });
    }
    out
}

fn describe(s: &Subscription, catalog: &Catalog) -> String {
    format!("{} {}", s.status.as_str(), plan_label(s, catalog))
}

/// `plan (price)`, or the price alone when the catalog does not know it.
fn plan_label(s: &Subscription, catalog: &Catalog) -> String {
    let price = s
        .price
        .as_ref()
        .map_or_else(|| "no price".to_owned(), |p| p.id.to_string());
    match resolve_plan(catalog, s) {
        Some(plan) => format!("{} ({price})", plan.name),
        None => price,
    }
}

fn period_label(s: &Subscription) -> String {
    let show = |t: Option<i64>| t.map_or_else(|| "-".to_owned(), |t| t.to_string());
    format!(
        "{}..{}",
        show(s.current_period_start),
        show(s.current_period_end)
    )
}

/// The features sold with overage at a live subscription's interval (in the
/// catalog's currency) whose metered price is not an item of `object`, a
/// Stripe subscription: their overage would be metered but not invoiced.
pub fn missing_overage(object: &Value, catalog: &Catalog) -> Vec<String> {
    if matches!(
        object["status"].as_str(),
        Some("canceled" | "incomplete_expired") | None
    ) || object["currency"].as_str() != Some(catalog.default_currency().as_str())
    {
        return Vec::new();
    }
    let items = object
        .pointer("/items/data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let metered =
        |i: &&Value| i.pointer("/price/recurring/usage_type") == Some(&Value::from("metered"));
    let Some(interval) = items
        .iter()
        .find(|i| !metered(i))
        .and_then(|i| i.pointer("/price/recurring/interval"))
        .and_then(Value::as_str)
    else {
        return Vec::new();
    };
    catalog
        .overages()
        .iter()
        .filter(|(_, o)| o.interval.as_str() == interval)
        .filter(|(_, o)| {
            !items.iter().filter(metered).any(|i| {
                let id = i
                    .pointer("/price/id")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                PriceId::parse(id).is_ok_and(|pid| {
                    o.price
                        .matches(&pid, i.pointer("/price/lookup_key").and_then(Value::as_str))
                })
            })
        })
        .map(|(feature, _)| feature.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use billd_core::event::SubscriptionStatus;
    use billd_core::{EventId, Stamp, StripeCustomerId, StripeSubscriptionId};

    fn subscription(status: SubscriptionStatus, cancel: bool, end: i64) -> Subscription {
        Subscription {
            id: StripeSubscriptionId::parse("sub_1").unwrap(),
            customer: StripeCustomerId::parse("cus_1").unwrap(),
            status,
            created: 100,
            price: None,
            quantity: None,
            current_period_start: Some(100),
            current_period_end: Some(end),
            cancel_at_period_end: cancel,
            cancel_at: None,
            trial_end: None,
            discounts: Vec::new(),
            metadata: BTreeMap::new(),
        }
    }

    fn known(snapshot: Subscription, created: i64, authoritative: bool) -> SubscriptionState {
        SubscriptionState {
            plan: None,
            stamp: Stamp {
                created,
                authoritative,
                observed_ns: 0,
                rank: snapshot.status.lifecycle_rank(),
                event_id: EventId::parse("evt_1").unwrap(),
            },
            snapshot,
            deleted: false,
            past_due_since: None,
            past_due_seen: Default::default(),
            last_not_past_due: None,
            period_plans: Default::default(),
        }
    }

    #[test]
    fn every_difference_is_listed_most_significant_first() {
        let catalog = Catalog::seed();
        let ours = known(
            subscription(SubscriptionStatus::Active, false, 200),
            150,
            false,
        );
        let theirs = subscription(SubscriptionStatus::PastDue, true, 300);

        let fields = compare(Some(&ours), &theirs, &catalog);

        let kinds: Vec<DriftKind> = fields.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![DriftKind::Status, DriftKind::CancelFlag, DriftKind::Period]
        );
        assert_eq!(fields[0].billd, "active");
        assert_eq!(fields[0].stripe, "past_due");
        assert_eq!(fields[2].stripe, "100..300");
    }

    #[test]
    fn an_equal_snapshot_is_no_drift_and_an_unknown_one_is_missing() {
        let catalog = Catalog::seed();
        let same = subscription(SubscriptionStatus::Active, false, 200);

        assert!(compare(Some(&known(same.clone(), 150, false)), &same, &catalog).is_empty());
        let missing = compare(None, &same, &catalog);
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].kind, DriftKind::Missing);
    }

    #[test]
    fn a_heal_is_stamped_no_earlier_than_billd_and_every_missed_snapshot() {
        let theirs = subscription(SubscriptionStatus::Active, false, 200);
        let ours = known(theirs.clone(), 150, false);

        assert_eq!(heal_created(None, &theirs, None), 100);
        assert_eq!(heal_created(Some(&ours), &theirs, None), 150);
        assert_eq!(heal_created(Some(&ours), &theirs, Some(&170)), 170);
        // billd's snapshot of that second is itself authoritative: only the
        // next second beats it.
        let fetched = known(theirs.clone(), 150, true);
        assert_eq!(heal_created(Some(&fetched), &theirs, None), 151);
        assert_eq!(heal_created(Some(&fetched), &theirs, Some(&170)), 170);
    }

    #[test]
    fn drift_kinds_have_stable_labels() {
        let labels: Vec<&str> = [
            DriftKind::Missing,
            DriftKind::Status,
            DriftKind::Plan,
            DriftKind::CancelFlag,
            DriftKind::Period,
        ]
        .map(DriftKind::as_str)
        .to_vec();
        assert_eq!(
            labels,
            vec!["missing", "status", "plan", "cancel_flag", "period"]
        );
    }

    #[test]
    fn a_live_subscription_lacking_the_metered_item_of_its_interval_is_reported() {
        let catalog = Catalog::from_toml(&billd_core::catalog::SEED_CATALOG_TOML.replacen(
            "generations = { kind = \"metered\" }",
            "generations = { kind = \"metered\", overage = { price = \"billd_gen_overage_eur\", per = 1, cap = 5 } }",
            1,
        ))
        .unwrap();
        let item = |id: &str, interval: &str, usage: &str, key: &str| {
            serde_json::json!({ "price": { "id": id, "lookup_key": key,
                "recurring": { "interval": interval, "usage_type": usage } } })
        };
        let sub = |status: &str, currency: &str, items: Vec<Value>| serde_json::json!({ "status": status, "currency": currency, "items": { "data": items } });
        let plan = item("price_std", "month", "licensed", "billd_standard_eur");
        let metered = item("price_over", "month", "metered", "billd_gen_overage_eur");
        let yearly = item("price_std_y", "year", "licensed", "billd_standard_eur_y");
        assert_eq!(
            missing_overage(&sub("active", "eur", vec![plan.clone()]), &catalog),
            ["generations"]
        );
        assert_eq!(
            missing_overage(&sub("trialing", "eur", vec![plan.clone()]), &catalog),
            ["generations"]
        );
        for (status, currency, items) in [
            ("active", "eur", vec![plan.clone(), metered]),
            ("canceled", "eur", vec![plan.clone()]),
            ("active", "usd", vec![plan]),
            ("active", "eur", vec![yearly]),
        ] {
            let object = sub(status, currency, items);
            assert!(missing_overage(&object, &catalog).is_empty(), "{object}");
        }
    }
}
