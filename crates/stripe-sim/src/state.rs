//! The emulator's in-memory state: every object as Stripe's JSON, plus the
//! private bookkeeping Stripe keeps but does not show (card behaviours,
//! billing schedules, delivery outcomes).

use crate::config::{SimConfig, API_VERSION};
use crate::error::{ApiError, ApiResult};
use crate::ids::IdGen;
use crate::params;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedSender;

/// How a card behaves when charged, from Stripe's test payment methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CardBehavior {
    /// Charges succeed.
    Succeed,
    /// Attaching fails and charges are declined.
    Decline,
    /// Attaching works, charges are declined.
    CustomerFail,
    /// Every payment needs 3-D Secure.
    AuthRequired,
    /// Charges succeed, then a dispute opens.
    Dispute,
    /// Declined for insufficient funds.
    InsufficientFunds,
}

/// A stored `Idempotency-Key` result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdempotentResult {
    /// Method, path and parameters of the first request.
    pub fingerprint: String,
    /// Status answered.
    pub status: u16,
    /// Body answered.
    pub body: Value,
}

/// Per-subscription schedule state Stripe keeps privately.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SubMeta {
    /// Pending proration lines, billed on the next invoice.
    pub pending_lines: Vec<Value>,
    /// `trial_will_end` already sent for this trial end.
    pub trial_will_end_sent_for: Option<i64>,
    /// `invoice.upcoming` already sent for this period end.
    pub upcoming_sent_for: Option<i64>,
    /// Unix time at which the first failed renewal payment happened.
    pub first_failure_at: Option<i64>,
    /// A held `pending_if_incomplete` update: the invoice that must be paid and the items to apply.
    pub pending_update: Option<(String, Value)>,
    /// Coupon applied, with the number of invoices it still discounts (`None` = forever).
    pub coupon: Option<(String, Option<i64>)>,
}

/// One webhook delivery to send.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event delivered.
    pub event_id: String,
    /// The endpoint it goes to.
    pub endpoint_id: String,
    /// The endpoint URL.
    pub url: String,
    /// The endpoint's signing secrets: the current one, then rolled ones still valid.
    pub secrets: Vec<String>,
    /// The JSON body.
    pub payload: String,
    /// 1-based attempt number.
    pub attempt: u32,
}

/// The request being handled, recorded on the events it causes.
#[derive(Debug, Clone, Default)]
pub struct RequestCtx {
    /// `req_…`.
    pub id: String,
    /// The `Idempotency-Key` header, if sent.
    pub idempotency_key: Option<String>,
}

/// What a Checkout session will create when completed (kept privately, as Stripe does).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CheckoutPlan {
    /// `{price, quantity, unit}` per line item.
    pub items: Vec<Value>,
    /// `subscription_data[trial_period_days]`.
    pub trial_days: Option<i64>,
    /// `subscription_data[trial_end]`.
    pub trial_end: Option<i64>,
    /// `subscription_data[metadata]`.
    pub metadata: Value,
    /// `subscription_data[trial_settings][end_behavior][missing_payment_method]`.
    pub missing_payment_method: Option<String>,
    /// The page asks for a billing address (`billing_address_collection=required` or automatic tax).
    #[serde(default)]
    pub collect_address: bool,
    /// `customer_update[address]=auto`: the address entered is saved on the customer.
    #[serde(default)]
    pub save_address: bool,
    /// `customer_update[name]=auto`.
    #[serde(default)]
    pub save_name: bool,
    /// `tax_id_collection[enabled]`.
    #[serde(default)]
    pub collect_tax_id: bool,
    /// `payment_intent_data[metadata]` of a `mode=payment` session.
    #[serde(default)]
    pub payment_metadata: Value,
}

impl CheckoutPlan {
    /// The trial end for a subscription starting at `now`, if there is a trial.
    pub fn trial_end_from(&self, now: i64) -> Option<i64> {
        self.trial_end
            .or_else(|| self.trial_days.filter(|d| *d > 0).map(|d| now + d * 86_400))
    }
}

/// What a snapshot file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// Objects by id.
    pub objects: HashMap<String, Value>,
    /// Ids per kind, oldest first.
    pub by_kind: HashMap<String, Vec<String>>,
    /// Stored idempotent results.
    pub idempotency: HashMap<String, IdempotentResult>,
    /// Card behaviours.
    pub cards: HashMap<String, CardBehavior>,
    /// Subscription schedule state.
    pub subs: HashMap<String, SubMeta>,
    /// Endpoints still to succeed, per event.
    pub pending: HashMap<String, HashSet<String>>,
    /// Checkout sessions waiting for 3-D Secure.
    pub pending_sessions: HashMap<String, String>,
    /// What was typed on Checkout pages.
    #[serde(default)]
    pub checkout_details: HashMap<String, Value>,
    /// Checkout sessions' items.
    pub checkout_items: HashMap<String, CheckoutPlan>,
    /// Rolled webhook secrets still in their overlap.
    #[serde(default)]
    pub rolled_secrets: HashMap<String, Vec<(String, i64)>>,
    /// Stripe Tax settings, once changed.
    #[serde(default)]
    pub tax_settings: Option<Value>,
    /// The account id.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Billing meter events by identifier.
    #[serde(default)]
    pub meter_events: HashMap<String, Value>,
    /// Requests served.
    pub request_count: u64,
}

/// Everything behind the emulator's mutex.
#[derive(Debug)]
pub struct Inner {
    /// Configuration, including live knobs.
    pub cfg: SimConfig,
    /// Object id generator.
    pub ids: IdGen,
    /// Randomness for knobs, separate so that knobs never change ids.
    pub knob_rng: IdGen,
    /// Objects by id, as Stripe JSON.
    pub objects: HashMap<String, Value>,
    /// Ids per `object` kind, oldest first.
    pub by_kind: HashMap<String, Vec<String>>,
    /// Stored idempotent results by key.
    pub idempotency: HashMap<String, IdempotentResult>,
    /// Card behaviour per payment method id.
    pub cards: HashMap<String, CardBehavior>,
    /// Subscription schedule state.
    pub subs: HashMap<String, SubMeta>,
    /// Endpoints still to succeed, per event.
    pub pending: HashMap<String, HashSet<String>>,
    /// What was typed on Checkout pages (address, tax ids), by session.
    pub checkout_details: HashMap<String, Value>,
    /// Checkout sessions waiting for 3-D Secure, by payment intent.
    pub pending_sessions: HashMap<String, String>,
    /// Checkout sessions' items `(price, quantity, unit amount)`, trial days and subscription metadata.
    pub checkout_items: HashMap<String, CheckoutPlan>,
    /// Rolled webhook secrets still accepted, with when they stop being used, per endpoint.
    pub rolled_secrets: HashMap<String, Vec<(String, i64)>>,
    /// Stripe Tax settings, once changed.
    pub tax_settings: Option<Value>,
    /// The account id `GET /v1/account` shows.
    pub account_id: Option<String>,
    /// Billing meter events by `identifier` (they have no id).
    pub meter_events: HashMap<String, Value>,
    /// The current request.
    pub request: Option<RequestCtx>,
    /// Requests served, for `Request-Id`.
    pub request_count: u64,
    /// Where webhook deliveries go.
    pub deliveries: Option<UnboundedSender<Delivery>>,
    /// Every `/v1` request and its answer, while recording (conformance tests).
    pub exchanges: Option<Vec<Exchange>>,
    /// Requests served that Stripe's definitions refuse, whatever the
    /// emulator answered (the first [`MAX_REQUEST_PROBLEMS`]), for
    /// `GET /_sim/request_problems`.
    pub request_problems: Vec<String>,
}

/// How many refused requests the emulator keeps (it warns about each).
pub const MAX_REQUEST_PROBLEMS: usize = 1000;

/// One `/v1` request and the emulator's answer, as recorded for the
/// conformance tests ([`crate::Sim::record_exchanges`]).
#[derive(Debug, Clone)]
pub struct Exchange {
    /// `GET`, `POST`, `DELETE`.
    pub method: String,
    /// The path, e.g. `/v1/invoices/in_123`.
    pub path: String,
    /// Query and body parameters, decoded.
    pub params: Value,
    /// The status answered.
    pub status: u16,
    /// The body answered.
    pub body: Value,
}

impl Inner {
    /// Fresh state for `cfg`.
    pub fn new(cfg: SimConfig) -> Self {
        Self {
            ids: IdGen::new(cfg.seed),
            knob_rng: IdGen::new(cfg.seed ^ 0x5eed_cafe),
            cfg,
            objects: HashMap::new(),
            by_kind: HashMap::new(),
            idempotency: HashMap::new(),
            cards: HashMap::new(),
            subs: HashMap::new(),
            pending: HashMap::new(),
            pending_sessions: HashMap::new(),
            checkout_details: HashMap::new(),
            checkout_items: HashMap::new(),
            rolled_secrets: HashMap::new(),
            tax_settings: None,
            account_id: None,
            meter_events: HashMap::new(),
            request: None,
            request_count: 0,
            deliveries: None,
            exchanges: None,
            request_problems: Vec::new(),
        }
    }

    /// A fresh id with `prefix` (never one already stored, which matters after a restore).
    pub fn id(&mut self, prefix: &str) -> String {
        loop {
            let id = self.ids.next(prefix);
            if !self.objects.contains_key(&id) {
                return id;
            }
        }
    }

    /// The persistent part of the state (pending webhook deliveries are not kept).
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 1,
            objects: self.objects.clone(),
            by_kind: self.by_kind.clone(),
            idempotency: self.idempotency.clone(),
            cards: self.cards.clone(),
            subs: self.subs.clone(),
            pending: self.pending.clone(),
            pending_sessions: self.pending_sessions.clone(),
            checkout_details: self.checkout_details.clone(),
            checkout_items: self.checkout_items.clone(),
            rolled_secrets: self.rolled_secrets.clone(),
            tax_settings: self.tax_settings.clone(),
            account_id: self.account_id.clone(),
            meter_events: self.meter_events.clone(),
            request_count: self.request_count,
        }
    }

    /// Replaces the state with a snapshot; ids continue from a seed that depends on
    /// how much exists, so that a restored emulator stays deterministic.
    pub fn restore(&mut self, snap: Snapshot) {
        self.ids = IdGen::new(self.cfg.seed ^ (snap.objects.len() as u64).rotate_left(32));
        self.objects = snap.objects;
        self.by_kind = snap.by_kind;
        self.idempotency = snap.idempotency;
        self.cards = snap.cards;
        self.subs = snap.subs;
        self.pending = snap.pending;
        self.pending_sessions = snap.pending_sessions;
        self.checkout_details = snap.checkout_details;
        self.checkout_items = snap.checkout_items;
        self.rolled_secrets = snap.rolled_secrets;
        self.tax_settings = snap.tax_settings;
        self.account_id = snap.account_id;
        self.meter_events = snap.meter_events;
        self.request_count = snap.request_count;
    }

    /// Sim-wide "now": the frozen time if set, else the wall clock.
    pub fn now(&self) -> i64 {
        self.cfg.frozen_time.unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        })
    }

    /// "Now" as seen by a customer: its test clock's frozen time, if it has one.
    pub fn now_for_customer(&self, customer: Option<&str>) -> i64 {
        customer
            .and_then(|c| self.objects.get(c))
            .and_then(|c| c["test_clock"].as_str())
            .and_then(|clk| self.objects.get(clk))
            .and_then(|clk| clk["frozen_time"].as_i64())
            .unwrap_or_else(|| self.now())
    }

    /// Stores a new object (it must have `id` and `object`).
    pub fn insert(&mut self, obj: Value) -> Value {
        let id = obj["id"].as_str().unwrap_or_default().to_string();
        let kind = obj["object"].as_str().unwrap_or_default().to_string();
        self.by_kind.entry(kind).or_default().push(id.clone());
        self.objects.insert(id, obj.clone());
        obj
    }

    /// Replaces a stored object.
    pub fn put(&mut self, obj: Value) {
        if let Some(id) = obj["id"].as_str() {
            self.objects.insert(id.to_string(), obj);
        }
    }

    /// The stored object `id`, or `null` when there is none (for reads that tolerate absence).
    pub fn peek(&self, id: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.objects.get(id).unwrap_or(&NULL)
    }

    /// The stored object `id` of `kind`, or Stripe's 404.
    pub fn get(&self, kind: &str, id: &str, param: &str) -> ApiResult<Value> {
        match self.objects.get(id) {
            Some(o) if o["object"] == kind => Ok(o.clone()),
            _ => Err(ApiError::no_such(
                kind.rsplit('.').next().unwrap_or(kind),
                id,
                param,
            )),
        }
    }

    /// A live (not deleted) object of `kind`.
    pub fn get_live(&self, kind: &str, id: &str, param: &str) -> ApiResult<Value> {
        let o = self.get(kind, id, param)?;
        if o["deleted"] == true {
            return Err(ApiError::no_such(kind, id, param));
        }
        Ok(o)
    }

    /// A Stripe list object over the stored `kind`, newest first, filtered and paginated
    /// with `limit`, `starting_after`, `ending_before`.
    pub fn list(
        &self,
        kind: &str,
        url: &str,
        p: &Value,
        keep: impl Fn(&Value) -> bool,
    ) -> ApiResult<Value> {
        let limit = params::i64_at(p, "limit")?.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                "This value must be between 1 and 100.",
            ));
        }
        let limit = limit as usize;
        let all: Vec<&Value> = self
            .by_kind
            .get(kind)
            .map(|ids| {
                ids.iter()
                    .rev()
                    .filter_map(|id| self.objects.get(id))
                    .collect()
            })
            .unwrap_or_default();
        let created = created_range(p)?;
        let items: Vec<&Value> = all
            .into_iter()
            .filter(|o| o["deleted"] != true && keep(o))
            .filter(|o| {
                let c = o["created"].as_i64().unwrap_or(0);
                created.0.is_none_or(|lo| c >= lo) && created.1.is_none_or(|hi| c <= hi)
            })
            .collect();
        let (page, has_more) = if let Some(after) = params::str_at(p, "starting_after") {
            let pos = items
                .iter()
                .position(|o| o["id"] == after)
                .ok_or_else(|| ApiError::no_such(kind, after, "starting_after"))?;
            let rest = &items[pos + 1..];
            (
                rest.iter().take(limit).collect::<Vec<_>>(),
                rest.len() > limit,
            )
        } else if let Some(before) = params::str_at(p, "ending_before") {
            let pos = items
                .iter()
                .position(|o| o["id"] == before)
                .ok_or_else(|| ApiError::no_such(kind, before, "ending_before"))?;
            let head = &items[..pos];
            let start = head.len().saturating_sub(limit);
            (head[start..].iter().collect::<Vec<_>>(), start > 0)
        } else {
            (
                items.iter().take(limit).collect::<Vec<_>>(),
                items.len() > limit,
            )
        };
        Ok(json!({
            "object": "list",
            "data": page.into_iter().map(|o| (*o).clone()).collect::<Vec<_>>(),
            "has_more": has_more,
            "url": url,
        }))
    }

    /// Replaces ids with objects along each `expand[]` path (`customer`,
    /// `data.customer`, `latest_invoice.customer`), four levels at most. A path
    /// naming a property the object does not have is a 400, as on Stripe.
    pub fn expand(&self, value: &mut Value, paths: &[String]) -> ApiResult<()> {
        for path in paths {
            let parts: Vec<&str> = path.split('.').collect();
            if parts.len() > 4 {
                return Err(ApiError::invalid(
                    "expand",
                    "You cannot expand more than 4 levels of a property.",
                ));
            }
            // Checkout's line items are not part of the session until expanded.
            if parts[0] == "line_items" && value["object"] == "checkout.session" {
                let id = value["id"].as_str().unwrap_or_default().to_string();
                value["line_items"] = crate::resources::checkout::line_items(self, &id)?;
            }
            if !self.expand_one(value, &parts) {
                return Err(ApiError::invalid(
                    "expand",
                    format!("This property cannot be expanded ({path})."),
                ));
            }
        }
        Ok(())
    }

    /// Returns false when an object on the path lacks the next property.
    fn expand_one(&self, value: &mut Value, parts: &[&str]) -> bool {
        let Some((first, rest)) = parts.split_first() else {
            return true;
        };
        match value {
            Value::Array(items) => items.iter_mut().all(|item| self.expand_one(item, parts)),
            Value::Object(map) => {
                // Includable properties exist only when expanded.
                if *first == "confirmation_secret"
                    && map.get("object").is_some_and(|o| o == "invoice")
                {
                    let secret = self.invoice_confirmation_secret(map.get("payments"));
                    map.insert("confirmation_secret".to_string(), secret);
                }
                let Some(field) = map.get_mut(*first) else {
                    return false;
                };
                if let Some(id) = field.as_str() {
                    if let Some(obj) = self.objects.get(id) {
                        *field = obj.clone();
                    }
                }
                if let Value::Array(items) = field {
                    // e.g. `discounts` is an array of ids
                    for item in items.iter_mut() {
                        if let Some(obj) = item.as_str().and_then(|id| self.objects.get(id)) {
                            *item = obj.clone();
                        }
                    }
                }
                self.expand_one(field, rest)
            }
            _ => true,
        }
    }

    /// An invoice's `confirmation_secret` (API 2025-03-31+): the client secret of its
    /// open payment intent, for confirming 3-D Secure in the browser.
    fn invoice_confirmation_secret(&self, payments: Option<&Value>) -> Value {
        let pi = payments
            .and_then(|p| p["data"].as_array())
            .and_then(|d| {
                d.iter()
                    .rev()
                    .find_map(|ip| ip["payment"]["payment_intent"].as_str())
            })
            .and_then(|id| self.objects.get(id));
        match pi {
            Some(pi) => json!({"client_secret": pi["client_secret"], "type": "payment_intent"}),
            None => Value::Null,
        }
    }

    /// Records an event at time `at` and queues its webhook deliveries.
    pub fn emit(&mut self, kind: &str, object: &Value, previous: Option<Value>, at: i64) -> String {
        let id = self.id("evt");
        // Webhooks never carry includable properties (nothing is expanded there).
        let mut object = object.clone();
        crate::defs::strip_includable(&mut object, &[]);
        let mut data = json!({ "object": object });
        // Stripe includes previous_attributes on `*.updated` events only.
        let previous = previous.filter(|_| kind.ends_with(".updated"));
        if let Some(mut prev) = previous {
            if let (Some(m), Some(fields)) = (
                prev.as_object_mut(),
                object["object"]
                    .as_str()
                    .and_then(|k| crate::defs::table()["includable"][k].as_array()),
            ) {
                for f in fields.iter().filter_map(Value::as_str) {
                    m.remove(f);
                }
            }
            if prev.as_object().is_some_and(|m| !m.is_empty()) {
                data["previous_attributes"] = prev;
            }
        }
        let req = self.request.clone();
        let endpoints: Vec<Value> = self
            .by_kind
            .get("webhook_endpoint")
            .map(|ids| {
                ids.iter()
                    .filter_map(|i| self.objects.get(i))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let targets: Vec<Value> = endpoints
            .into_iter()
            .filter(|e| e["deleted"] != true && e["status"] == "enabled")
            .filter(|e| {
                e["enabled_events"]
                    .as_array()
                    .is_some_and(|evs| evs.iter().any(|t| t == "*" || t == kind))
            })
            .collect();
        let event = json!({
            "id": id,
            "object": "event",
            "api_version": API_VERSION,
            "created": at,
            "data": data,
            "livemode": false,
            "pending_webhooks": targets.len(),
            "request": {
                "id": req.as_ref().map(|r| r.id.clone()),
                "idempotency_key": req.and_then(|r| r.idempotency_key),
            },
            "type": kind,
        });
        self.insert(event.clone());
        let payload = event.to_string();
        for ep in targets {
            let endpoint_id = ep["id"].as_str().unwrap_or_default().to_string();
            self.pending
                .entry(id.clone())
                .or_default()
                .insert(endpoint_id.clone());
            if self.knob_rng.unit() < self.cfg.webhooks.drop_rate {
                continue;
            }
            let d = Delivery {
                event_id: id.clone(),
                endpoint_id,
                url: ep["url"].as_str().unwrap_or_default().to_string(),
                secrets: self.signing_secrets(&ep),
                payload: payload.clone(),
                attempt: 1,
            };
            let dup = self.knob_rng.unit() < self.cfg.webhooks.duplicate_rate;
            if let Some(tx) = &self.deliveries {
                if dup {
                    let _ = tx.send(d.clone());
                }
                let _ = tx.send(d);
            }
        }
        id
    }

    /// The secrets an endpoint's deliveries are signed with: the current one and,
    /// during a roll's overlap, the previous ones (Stripe then sends several `v1`).
    pub fn signing_secrets(&self, ep: &Value) -> Vec<String> {
        let id = ep["id"].as_str().unwrap_or_default();
        let now = self.now();
        let mut out = vec![ep["secret"].as_str().unwrap_or_default().to_string()];
        if let Some(old) = self.rolled_secrets.get(id) {
            out.extend(
                old.iter()
                    .filter(|(_, until)| *until > now)
                    .map(|(s, _)| s.clone()),
            );
        }
        out
    }

    /// Records the outcome of one delivery attempt.
    pub fn delivery_result(&mut self, event_id: &str, endpoint_id: &str, ok: bool) {
        if ok {
            if let Some(p) = self.pending.get_mut(event_id) {
                p.remove(endpoint_id);
            }
        }
        let left = self.pending.get(event_id).map_or(0, HashSet::len);
        if let Some(ev) = self.objects.get_mut(event_id) {
            ev["pending_webhooks"] = json!(left);
        }
    }

    /// Whether every delivery of an event succeeded.
    pub fn delivered(&self, event_id: &str) -> bool {
        self.pending.get(event_id).is_none_or(HashSet::is_empty)
    }
}

/// The inclusive `created` bounds of a list request: `created=t` or
/// `created[gt|gte|lt|lte]=t`, as every Stripe list accepts.
fn created_range(p: &Value) -> ApiResult<(Option<i64>, Option<i64>)> {
    if matches!(p.get("created"), Some(Value::String(_))) {
        let t = params::i64_at(p, "created")?;
        return Ok((t, t));
    }
    let gt = params::i64_at(p, "created.gt")?.map(|t| t + 1);
    let gte = params::i64_at(p, "created.gte")?;
    let lt = params::i64_at(p, "created.lt")?.map(|t| t - 1);
    let lte = params::i64_at(p, "created.lte")?;
    let lo = match (gt, gte) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let hi = match (lt, lte) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((lo, hi))
}

/// The keys of `after` whose values differ from `before`, with `before`'s values:
/// Stripe's `data.previous_attributes`.
pub fn previous_attributes(before: &Value, after: &Value) -> Value {
    let mut prev = serde_json::Map::new();
    if let (Value::Object(b), Value::Object(a)) = (before, after) {
        for (k, v) in a {
            let old = b.get(k).cloned().unwrap_or(Value::Null);
            if &old != v {
                prev.insert(k.clone(), old);
            }
        }
    }
    Value::Object(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_with_customers(n: usize) -> (Inner, Vec<String>) {
        let mut s = Inner::new(SimConfig::default());
        let ids = (0..n)
            .map(|_| {
                let id = s.id("cus");
                s.insert(json!({"id": id, "object": "customer"}));
                id
            })
            .collect();
        (s, ids)
    }

    #[test]
    fn lists_are_newest_first_and_paginate_both_ways() {
        let (s, ids) = state_with_customers(5);
        let first = s
            .list("customer", "/v1/customers", &json!({"limit": "2"}), |_| {
                true
            })
            .ok();
        let first = first.unwrap_or_default();
        assert_eq!(first["data"][0]["id"], ids[4]);
        assert_eq!(first["has_more"], true);
        let next = s
            .list(
                "customer",
                "/v1/customers",
                &json!({"limit": "2", "starting_after": ids[3]}),
                |_| true,
            )
            .unwrap_or_default();
        assert_eq!(next["data"][0]["id"], ids[2]);
        assert_eq!(next["data"][1]["id"], ids[1]);
        let back = s
            .list(
                "customer",
                "/v1/customers",
                &json!({"limit": "2", "ending_before": ids[1]}),
                |_| true,
            )
            .unwrap_or_default();
        assert_eq!(back["data"][0]["id"], ids[3]);
        assert_eq!(back["data"][1]["id"], ids[2]);
        assert_eq!(back["has_more"], true);
    }

    #[test]
    fn expand_follows_nested_paths_through_lists() {
        let mut s = Inner::new(SimConfig::default());
        s.insert(json!({"id": "cus_1", "object": "customer", "test_clock": "clock_1"}));
        s.insert(json!({"id": "clock_1", "object": "test_helpers.test_clock"}));
        let mut v = json!({"object": "list", "data": [{"id": "sub_1", "customer": "cus_1"}]});
        s.expand(&mut v, &["data.customer.test_clock".to_string()])
            .ok();
        assert_eq!(
            v["data"][0]["customer"]["test_clock"]["object"],
            "test_helpers.test_clock"
        );
    }

    #[test]
    fn previous_attributes_hold_old_values_of_changed_keys_only() {
        let prev = previous_attributes(&json!({"a": 1, "b": 2}), &json!({"a": 1, "b": 3, "c": 4}));
        assert_eq!(prev, json!({"b": 2, "c": null}));
    }
}
