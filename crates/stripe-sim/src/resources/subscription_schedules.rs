//! `/v1/subscription_schedules`: a schedule made `from_subscription`, its
//! phases replaced by an update, and `release`. At a period end that starts
//! a new phase the subscription takes that phase's prices (and metadata)
//! before the renewal invoice, so a downgrade scheduled for the period end
//! bills the new price from the next period without proration; after the
//! last phase the schedule releases the subscription.
//!
//! Simplifications: only `from_subscription` creation; `end_behavior=cancel`
//! is accepted but releases like `release`.

use crate::billing;
use crate::clock::add_interval;
use crate::error::{ApiError, ApiResult};
use crate::params::{self, i64_at, str_at};
use crate::state::Inner;
use serde_json::{json, Value};

fn phase(
    s: &Inner,
    items: Vec<(String, i64)>,
    start: i64,
    end: i64,
    currency: &str,
    proration_behavior: &str,
    metadata: Value,
) -> ApiResult<Value> {
    let items = items
        .into_iter()
        .map(|(price, quantity)| {
            let object = s.get("price", &price, "phases[items][price]")?;
            Ok(json!({
                "billing_thresholds": null,
                "discounts": [],
                "metadata": {},
                // Stripe sends the plan's id here, not the object.
                "plan": object["id"],
                "price": price,
                "quantity": quantity,
                "tax_rates": [],
            }))
        })
        .collect::<ApiResult<Vec<Value>>>()?;
    Ok(json!({
        "add_invoice_items": [],
        "application_fee_percent": null,
        "billing_cycle_anchor": null,
        "billing_thresholds": null,
        "collection_method": null,
        "currency": currency,
        "default_payment_method": null,
        "default_tax_rates": [],
        "description": null,
        "discounts": [],
        "end_date": end,
        "invoice_settings": null,
        "items": items,
        "metadata": metadata,
        "on_behalf_of": null,
        "proration_behavior": proration_behavior,
        "start_date": start,
        "transfer_data": null,
        "trial_end": null,
    }))
}

/// `POST /v1/subscription_schedules` with `from_subscription`.
pub fn create(s: &mut Inner, p: &Value) -> ApiResult {
    let Some(sub_id) = str_at(p, "from_subscription").map(str::to_string) else {
        return Err(ApiError::invalid(
            "from_subscription",
            "stripe-sim creates subscription schedules from_subscription only.",
        ));
    };
    let sub = s.get("subscription", &sub_id, "from_subscription")?;
    if !sub["schedule"].is_null() {
        return Err(ApiError::invalid(
            "from_subscription",
            format!(
                "You cannot migrate a subscription that is already attached to a schedule: `{}`.",
                sub["schedule"].as_str().unwrap_or_default()
            ),
        ));
    }
    if matches!(
        sub["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    ) {
        return Err(ApiError::invalid(
            "from_subscription",
            "You cannot create a schedule from a canceled subscription.",
        ));
    }
    let customer = sub["customer"].as_str().unwrap_or_default().to_string();
    let now = s.now_for_customer(Some(&customer));
    let (start, end) = billing::period(&sub);
    let items = sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            (
                i["price"]["id"].as_str().unwrap_or_default().to_string(),
                i["quantity"].as_i64().unwrap_or(1),
            )
        })
        .collect();
    let currency = sub["currency"].as_str().unwrap_or_default().to_string();
    let first = phase(
        s,
        items,
        start,
        end,
        &currency,
        "create_prorations",
        json!({}),
    )?;
    let id = s.id("sub_sched");
    let schedule = json!({
        "id": id,
        "object": "subscription_schedule",
        "application": null,
        "billing_mode": {"type": "classic", "flexible": null},
        "canceled_at": null,
        "completed_at": null,
        "created": now,
        "current_phase": {"start_date": start, "end_date": end},
        "customer": customer,
        "customer_account": null,
        "default_settings": {
            "application_fee_percent": null,
            "automatic_tax": {"enabled": false, "liability": null, "disabled_reason": null},
            "billing_cycle_anchor": "automatic",
            "billing_thresholds": null,
            "collection_method": "charge_automatically",
            "default_payment_method": null,
            "description": null,
            "invoice_settings": {"account_tax_ids": null, "custom_fields": null, "days_until_due": null, "description": null, "footer": null, "issuer": {"type": "self"}},
            "on_behalf_of": null,
            "transfer_data": null,
        },
        "end_behavior": "release",
        "livemode": false,
        "metadata": params::metadata(p, "metadata"),
        "phases": [first],
        "released_at": null,
        "released_subscription": null,
        "status": "active",
        "subscription": sub_id,
        "test_clock": sub["test_clock"],
    });
    s.insert(schedule.clone());
    let mut after = sub.clone();
    after["schedule"] = json!(id);
    billing::save_sub(s, &sub, &after, now);
    s.emit("subscription_schedule.created", &schedule, None, now);
    Ok(schedule)
}

/// `GET /v1/subscription_schedules/{id}`.
pub fn retrieve(s: &Inner, id: &str) -> ApiResult {
    s.get("subscription_schedule", id, "id")
}

/// `POST /v1/subscription_schedules/{id}`: `phases` (replacing them all:
/// `items[][price|quantity]`, `start_date` of the first, `end_date` or
/// `duration[interval|interval_count]` (API 2025-09-30 removed `iterations`;
/// with neither, one interval of the phase's first price), `proration_behavior`,
/// `metadata`), `end_behavior`, `metadata`.
pub fn update(s: &mut Inner, id: &str, p: &Value) -> ApiResult {
    let before = s.get("subscription_schedule", id, "id")?;
    if before["status"] != "active" && before["status"] != "not_started" {
        return Err(ApiError::state(
            "resource_missing",
            format!(
                "You cannot update a subscription schedule that is currently in the `{}` status.",
                before["status"].as_str().unwrap_or_default()
            ),
        ));
    }
    let now = s.now_for_customer(before["customer"].as_str());
    let mut after = before.clone();
    params::apply_metadata(&mut after, p, "metadata");
    if let Some(b) = str_at(p, "end_behavior") {
        if !matches!(b, "release" | "cancel") {
            return Err(ApiError::invalid(
                "end_behavior",
                "Invalid end_behavior: must be one of release or cancel.",
            ));
        }
        after["end_behavior"] = json!(b);
    }
    if let Some(Value::Array(raw)) = params::at(p, "phases") {
        let currency = before["phases"][0]["currency"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut phases = Vec::new();
        let mut start = before["phases"][0]["start_date"].as_i64().unwrap_or(now);
        for (i, ph) in raw.iter().enumerate() {
            if i == 0 {
                start = i64_at(ph, "start_date")?.unwrap_or(start);
            }
            let Some(Value::Array(items)) = params::at(ph, "items") else {
                return Err(ApiError::missing(&format!("phases[{i}][items]")));
            };
            let items = items
                .iter()
                .enumerate()
                .map(|(j, it)| {
                    let price = str_at(it, "price").ok_or_else(|| {
                        ApiError::missing(&format!("phases[{i}][items][{j}][price]"))
                    })?;
                    let qty = params::bounded_at(it, "quantity", 1..=1_000_000_000)?.unwrap_or(1);
                    Ok((price.to_string(), qty))
                })
                .collect::<ApiResult<Vec<_>>>()?;
            let first_price = s.get(
                "price",
                &items.first().map(|i| i.0.clone()).unwrap_or_default(),
                &format!("phases[{i}][items][0][price]"),
            )?;
            let end = match i64_at(ph, "end_date")? {
                Some(end) => end,
                None => match str_at(ph, "duration.interval") {
                    Some(interval) => {
                        if !matches!(interval, "day" | "week" | "month" | "year") {
                            return Err(ApiError::invalid(
                                &format!("phases[{i}][duration][interval]"),
                                "Invalid duration interval: must be one of day, week, month, or year.",
                            ));
                        }
                        let count = params::bounded_at(ph, "duration.interval_count", 1..=1000)?
                            .unwrap_or(1);
                        add_interval(start, interval, count)
                    }
                    None => {
                        let (interval, count) = billing::price_interval(&first_price);
                        add_interval(start, &interval, count)
                    }
                },
            };
            if end <= start {
                return Err(ApiError::invalid(
                    &format!("phases[{i}][end_date]"),
                    "The phase's end_date must be after its start_date.",
                ));
            }
            let behavior = str_at(ph, "proration_behavior").unwrap_or("create_prorations");
            phases.push(phase(
                s,
                items,
                start,
                end,
                &currency,
                behavior,
                params::metadata(ph, "metadata"),
            )?);
            start = end;
        }
        after["current_phase"] = json!({
            "start_date": phases[0]["start_date"],
            "end_date": phases[0]["end_date"],
        });
        after["phases"] = json!(phases);
    }
    s.put(after.clone());
    s.emit(
        "subscription_schedule.updated",
        &after,
        Some(crate::state::previous_attributes(&before, &after)),
        now,
    );
    Ok(after)
}

/// `POST /v1/subscription_schedules/{id}/release`: the subscription stays,
/// the schedule stops managing it.
pub fn release(s: &mut Inner, id: &str) -> ApiResult {
    let sched = s.get("subscription_schedule", id, "id")?;
    let now = s.now_for_customer(sched["customer"].as_str());
    release_at(s, id, now)
}

fn release_at(s: &mut Inner, id: &str, at: i64) -> ApiResult {
    let before = s.get("subscription_schedule", id, "id")?;
    if before["status"] != "active" && before["status"] != "not_started" {
        return Err(ApiError::state(
            "resource_missing",
            format!(
                "You cannot release a subscription schedule that is currently in the `{}` status.",
                before["status"].as_str().unwrap_or_default()
            ),
        ));
    }
    let mut after = before.clone();
    after["status"] = json!("released");
    after["released_at"] = json!(at);
    after["released_subscription"] = before["subscription"].clone();
    after["subscription"] = Value::Null;
    after["current_phase"] = Value::Null;
    s.put(after.clone());
    if let Some(sub_id) = before["subscription"].as_str() {
        let sub = s.get("subscription", sub_id, "subscription")?;
        let mut released = sub.clone();
        released["schedule"] = Value::Null;
        billing::save_sub(s, &sub, &released, at);
    }
    s.emit("subscription_schedule.released", &after, None, at);
    Ok(after)
}

/// Runs at a subscription's period end `t`, before the renewal: enters the
/// schedule phase starting at `t` (its prices and metadata, no proration),
/// or releases the subscription once the last phase has ended.
pub fn on_period_end(s: &mut Inner, sub_id: &str, t: i64) -> ApiResult<()> {
    let sub = s.get("subscription", sub_id, "id")?;
    let Some(sched_id) = sub["schedule"].as_str().map(str::to_string) else {
        return Ok(());
    };
    let sched = s.get("subscription_schedule", &sched_id, "schedule")?;
    if sched["status"] != "active" {
        return Ok(());
    }
    let phases = sched["phases"].as_array().cloned().unwrap_or_default();
    let current = phases.iter().find(|ph| {
        ph["start_date"].as_i64().is_some_and(|st| st <= t)
            && ph["end_date"].as_i64().is_none_or(|e| e > t)
    });
    let Some(current) = current else {
        release_at(s, &sched_id, t)?;
        return Ok(());
    };
    if sched["current_phase"]["start_date"] == current["start_date"] {
        return Ok(());
    }
    let mut after = sub.clone();
    let item_ids: Vec<String> = sub["items"]["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    for (item, si) in current["items"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(&item_ids)
    {
        let price = s.get("price", item["price"].as_str().unwrap_or_default(), "price")?;
        billing::set_item(
            &mut after,
            si,
            &price,
            item["quantity"].as_i64().unwrap_or(1),
        );
    }
    if let Some(meta) = current["metadata"].as_object() {
        for (k, v) in meta {
            after["metadata"][k] = v.clone();
        }
    }
    billing::save_sub(s, &sub, &after, t);
    let mut updated = sched.clone();
    updated["current_phase"] = json!({
        "start_date": current["start_date"],
        "end_date": current["end_date"],
    });
    s.put(updated.clone());
    s.emit(
        "subscription_schedule.updated",
        &updated,
        Some(crate::state::previous_attributes(&sched, &updated)),
        t,
    );
    Ok(())
}
