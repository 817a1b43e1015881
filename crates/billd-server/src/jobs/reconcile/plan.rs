//! The read-only half of a run: undelivered events the inbox lacks, every
//! subscription compared with billd's snapshot, and the heal events that
//! would fix the drift. Nothing is written here.

use std::collections::HashMap;

use billd_core::event::{Subscription, METADATA_CUSTOMER_ID};
use billd_core::CustomerId;
use billd_store::{CustomerRecord, NewEvent, StoreError};
use billd_stripe::client::Params;
use billd_stripe::events::parse_subscription;
use serde_json::Value;

use crate::pipeline::{synthetic_subscription_event, RECONCILE_EVENT_PREFIX};

use super::compare::{compare, heal_created, missing_overage};
use super::pager::Pager;
use super::run::Reconciler;
use super::types::{Drift, MissingOverage, ReconcileError, ReconcileReport, UnlinkedSubscription};

/// The plan of a run, before anything is written.
pub(super) struct Plan {
    pub(super) report: ReconcileReport,
    pub(super) heal: Vec<NewEvent>,
    pub(super) missing: Vec<NewEvent>,
}

impl Reconciler {
    /// Reads Stripe and the store and plans a run: the report, the heal
    /// events and the missing events, nothing written yet.
    pub(super) async fn plan(&self) -> Result<Plan, ReconcileError> {
        let now = self.clock.now();
        let mut pager = Pager::new(&self.stripe, &self.config);
        let mut report = ReconcileReport::default();

        let undelivered = pager
            .list_all(
                "/v1/events",
                Params::new()
                    .set("delivery_success", "false")
                    .set("created[gte]", now - self.config.events_window_secs),
            )
            .await?;
        report.undelivered_events = undelivered.len();
        // The newest undelivered snapshot of each subscription: a heal must
        // be stamped at least that late, or that event, ingested next,
        // would be newer than Stripe's current object.
        let mut latest_missed: HashMap<String, i64> = HashMap::new();
        let mut missing = Vec::new();
        for event in &undelivered {
            let (Some(id), Some(created)) = (
                event.get("id").and_then(Value::as_str),
                event.get("created").and_then(Value::as_i64),
            ) else {
                continue;
            };
            let is_subscription = event
                .get("type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("customer.subscription."));
            if let Some(sub) = event.pointer("/data/object/id").and_then(Value::as_str) {
                if is_subscription {
                    let latest = latest_missed.entry(sub.to_owned()).or_insert(created);
                    *latest = (*latest).max(created);
                }
            }
            if self.store.get_event(id).await?.is_some() {
                continue;
            }
            match crate::pipeline::parse_envelope(event.to_string().as_bytes(), now) {
                Ok(new) => missing.push(new),
                Err(e) => tracing::warn!(event_id = id, error = ?e, "undelivered event unreadable"),
            }
        }
        // Oldest first, so that a dry run and a real run list them alike.
        missing.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        report.missing_events = missing.iter().map(|e| e.id.clone()).collect();

        // Every page of the listing was asked for after this.
        let observed = crate::pipeline::observation_ns();
        let subscriptions = pager
            .list_all("/v1/subscriptions", Params::new().set("status", "all"))
            .await?;
        report.subscriptions_checked = subscriptions.len();
        let mut customers: HashMap<CustomerId, Option<CustomerRecord>> = HashMap::new();
        let mut heal = Vec::new();
        for object in subscriptions {
            let subscription = match parse_subscription(&object) {
                Ok(s) => s,
                Err(e) => {
                    let id = object.get("id").and_then(Value::as_str).unwrap_or("?");
                    report.unreadable.push(format!("{id}: {e}"));
                    continue;
                }
            };
            let sub_id = subscription.id.to_string();
            let customer = self.link(&subscription).await?;
            let Some(customer) = customer else {
                let created = heal_created(None, &subscription, latest_missed.get(&sub_id));
                let event = self.heal_event(&sub_id, created, observed, object, now);
                report.unlinked.push(UnlinkedSubscription {
                    subscription: sub_id,
                    stripe_customer: subscription.customer.to_string(),
                    status: subscription.status.as_str().to_owned(),
                    event: event.id.clone(),
                });
                heal.push(event);
                continue;
            };
            let features = missing_overage(&object, &self.catalog);
            if !features.is_empty() {
                report.missing_overage.push(MissingOverage {
                    customer: customer.clone(),
                    subscription: sub_id.clone(),
                    features,
                });
            }
            if !customers.contains_key(&customer) {
                let record = self.store.get_customer(&customer).await?;
                customers.insert(customer.clone(), record);
            }
            let known = customers
                .get(&customer)
                .and_then(Option::as_ref)
                .and_then(|r| r.state.subscriptions.get(&subscription.id));
            let fields = compare(known, &subscription, &self.catalog);
            let Some(first) = fields.first().cloned() else {
                continue;
            };
            let created = heal_created(known, &subscription, latest_missed.get(&sub_id));
            let event = self.heal_event(&sub_id, created, observed, object, now);
            report.drift.push(Drift {
                kind: first.kind,
                customer,
                subscription: sub_id,
                billd: first.billd,
                stripe: first.stripe,
                fields,
                heal_event: event.id.clone(),
            });
            heal.push(event);
        }
        report
            .drift
            .sort_by(|a, b| a.subscription.cmp(&b.subscription));
        report.page_retries = pager.retries;
        Ok(Plan {
            report,
            heal,
            missing,
        })
    }

    /// The customer the lifecycle handler would link this subscription to:
    /// the one it is linked to, its Stripe customer's, or its metadata's.
    async fn link(&self, subscription: &Subscription) -> Result<Option<CustomerId>, StoreError> {
        if let Some(c) = self
            .store
            .find_customer_by_object(subscription.id.as_str())
            .await?
        {
            return Ok(Some(c));
        }
        if let Some(c) = self
            .store
            .find_customer_by_stripe(&subscription.customer)
            .await?
        {
            return Ok(Some(c));
        }
        Ok(subscription
            .metadata
            .get(METADATA_CUSTOMER_ID)
            .and_then(|raw| CustomerId::parse(raw).ok()))
    }

    fn heal_event(
        &self,
        subscription: &str,
        created: i64,
        observed_ns: u64,
        object: Value,
        now: i64,
    ) -> NewEvent {
        let id = format!("{RECONCILE_EVENT_PREFIX}{subscription}_{created}");
        synthetic_subscription_event(id, subscription, created, observed_ns, object, now)
    }
}
