//! What a test clock runs through: renewals, trials, retries, expiries, cancellations.

use super::*;

/// Cancels a subscription now (`DELETE /v1/subscriptions/{id}`): `customer.subscription.deleted`.
pub fn cancel_now(s: &mut Inner, sub_id: &str, reason: &str) -> ApiResult<()> {
    let sub = s.get("subscription", sub_id, "id")?;
    let at = s.now_for_customer(sub["customer"].as_str());
    cancel_at(s, sub_id, reason, at)
}

pub(crate) fn cancel_at(s: &mut Inner, sub_id: &str, reason: &str, at: i64) -> ApiResult<()> {
    let before = s.get("subscription", sub_id, "id")?;
    if matches!(
        before["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    ) {
        return Err(ApiError::state(
            "resource_missing",
            format!("No such subscription: '{sub_id}' (already canceled)"),
        ));
    }
    let mut after = before.clone();
    after["status"] = json!("canceled");
    after["ended_at"] = json!(at);
    if after["canceled_at"].is_null() {
        after["canceled_at"] = json!(at);
    }
    after["cancellation_details"]["reason"] = json!(reason);
    s.put(after.clone());
    s.emit(
        "customer.subscription.deleted",
        &after,
        Some(previous_attributes(&before, &after)),
        at,
    );
    // An incomplete subscription's first invoice is voided with it.
    if before["status"] == "incomplete" {
        if let Some(inv) = before["latest_invoice"].as_str() {
            let inv = inv.to_string();
            void_invoice(s, &inv, at)?;
        }
    }
    Ok(())
}

/// One thing a test clock advance has to do, at its time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Due {
    Expire(String),
    TrialWillEnd(String, i64),
    Upcoming(String, i64),
    Renew(String),
    PendingExpire(String),
    Retry(String),
}

pub(crate) fn next_due(s: &Inner, clock: Option<&str>, until: i64) -> Option<(i64, Due)> {
    let clock = clock.map_or(Value::Null, |c| json!(c));
    let mut best: Option<(i64, Due)> = None;
    let mut consider = |t: i64, d: Due| {
        if t <= until && best.as_ref().is_none_or(|(bt, _)| t < *bt) {
            best = Some((t, d));
        }
    };
    let subs = s.by_kind.get("subscription")?;
    for id in subs {
        let Some(sub) = s.objects.get(id) else {
            continue;
        };
        if sub["test_clock"] != clock {
            continue;
        }
        let meta = s.subs.get(id).cloned().unwrap_or_default();
        let (start, end) = period(sub);
        match sub["status"].as_str() {
            Some("incomplete") => {
                let created = sub["created"].as_i64().unwrap_or(0);
                consider(
                    created + s.cfg.incomplete_expiry_hours * 3600,
                    Due::Expire(id.clone()),
                );
            }
            Some("trialing" | "active" | "past_due" | "unpaid") => {
                if let Some(te) = sub["trial_end"]
                    .as_i64()
                    .filter(|_| sub["status"] == "trialing")
                {
                    let at = te - s.cfg.trial_will_end_days * 86_400;
                    if meta.trial_will_end_sent_for != Some(te)
                        && at > sub["created"].as_i64().unwrap_or(0)
                    {
                        consider(at, Due::TrialWillEnd(id.clone(), te));
                    }
                }
                let lead = end - s.cfg.upcoming_lead_days * 86_400;
                if sub["cancel_at_period_end"] != true
                    && meta.upcoming_sent_for != Some(end)
                    && lead > start
                {
                    consider(lead, Due::Upcoming(id.clone(), end));
                }
                if let Some(exp) = sub["pending_update"]["expires_at"].as_i64() {
                    consider(exp, Due::PendingExpire(id.clone()));
                }
                let renew_at = sub["cancel_at"].as_i64().map_or(end, |c| c.min(end));
                consider(renew_at, Due::Renew(id.clone()));
            }
            _ => {}
        }
    }
    for id in s.by_kind.get("invoice").into_iter().flatten() {
        let Some(inv) = s.objects.get(id) else {
            continue;
        };
        if inv["test_clock"] == clock && inv["status"] == "open" {
            if let Some(t) = inv["next_payment_attempt"].as_i64() {
                consider(t, Due::Retry(id.clone()));
            }
        }
    }
    best
}

/// Runs everything scheduled on a test clock up to `until`, in time order,
/// with the clock showing each moment as it is processed.
pub fn advance(s: &mut Inner, clock: &str, until: i64) -> ApiResult<()> {
    for _ in 0..100_000 {
        let Some((t, due)) = next_due(s, Some(clock), until) else {
            break;
        };
        let t = t.max(s.peek(clock)["frozen_time"].as_i64().unwrap_or(t));
        if let Some(c) = s.objects.get_mut(clock) {
            c["frozen_time"] = json!(t);
        }
        run_due(s, due, t)?;
    }
    if let Some(c) = s.objects.get_mut(clock) {
        c["frozen_time"] = json!(until);
    }
    Ok(())
}

/// Runs everything scheduled for objects without a test clock up to `until`:
/// after the sim-wide frozen time moves, or periodically on the wall clock.
pub fn catch_up(s: &mut Inner, until: i64) -> ApiResult<()> {
    let frozen = s.cfg.frozen_time.is_some();
    for _ in 0..100_000 {
        let Some((t, due)) = next_due(s, None, until) else {
            break;
        };
        if frozen {
            s.cfg.frozen_time = Some(t);
        }
        run_due(s, due, t)?;
    }
    if frozen {
        s.cfg.frozen_time = Some(until);
    }
    Ok(())
}

pub(crate) fn run_due(s: &mut Inner, due: Due, t: i64) -> ApiResult<()> {
    match due {
        Due::Expire(id) => {
            let before = s.get("subscription", &id, "id")?;
            let mut after = before.clone();
            after["status"] = json!("incomplete_expired");
            // Stripe stamps both, with no cancellation reason.
            after["ended_at"] = json!(t);
            after["canceled_at"] = json!(t);
            save_sub(s, &before, &after, t);
            if let Some(inv) = before["latest_invoice"].as_str() {
                let inv = inv.to_string();
                if s.peek(&inv)["status"] == "open" {
                    void_invoice(s, &inv, t)?;
                }
            }
        }
        Due::TrialWillEnd(id, te) => {
            s.subs
                .entry(id.clone())
                .or_default()
                .trial_will_end_sent_for = Some(te);
            let sub = s.get("subscription", &id, "id")?;
            s.emit("customer.subscription.trial_will_end", &sub, None, t);
        }
        Due::Upcoming(id, end) => {
            s.subs.entry(id.clone()).or_default().upcoming_sent_for = Some(end);
            let preview = preview_renewal(s, &id, t)?;
            s.emit("invoice.upcoming", &preview, None, t);
        }
        Due::Renew(id) => renew(s, &id, t)?,
        Due::PendingExpire(id) => {
            let held = s.subs.get_mut(&id).and_then(|m| m.pending_update.take());
            let before = s.get("subscription", &id, "id")?;
            let mut after = before.clone();
            after["pending_update"] = Value::Null;
            save_sub(s, &before, &after, t);
            s.emit(
                "customer.subscription.pending_update_expired",
                &after,
                None,
                t,
            );
            if let Some((inv, _)) = held {
                if s.peek(&inv)["status"] == "open" {
                    void_invoice(s, &inv, t)?;
                }
            }
        }
        Due::Retry(inv) => {
            let outcome = pay_invoice(s, &inv, None, t)?;
            match outcome {
                PayOutcome::Paid => after_invoice_paid(s, &inv, t)?,
                _ => {
                    // Stop retrying this attempt time even if scheduling decided nothing new.
                    let sched = s.get("invoice", &inv, "invoice")?;
                    if sched["next_payment_attempt"]
                        .as_i64()
                        .is_some_and(|n| n <= t)
                    {
                        let mut i2 = sched.clone();
                        i2["next_payment_attempt"] = Value::Null;
                        s.put(i2);
                    }
                    after_invoice_failed(s, &inv, t)?;
                }
            }
        }
    }
    Ok(())
}

/// What the next renewal invoice will look like (for `invoice.upcoming`).
pub(crate) fn preview_renewal(s: &mut Inner, sub_id: &str, at: i64) -> ApiResult<Value> {
    let sub = s.get("subscription", sub_id, "id")?;
    let mut lines = s
        .subs
        .get(sub_id)
        .map(|m| m.pending_lines.clone())
        .unwrap_or_default();
    let (_, end) = period(&sub);
    let currency = s_of(&sub["currency"]);
    // The usage of the period ending, as far as metered so far.
    lines.extend(usage_lines(s, sub_id)?);
    for item in sub["items"]["data"].as_array().cloned().unwrap_or_default() {
        let price = &item["price"];
        if crate::resources::meters::is_metered(price) {
            continue;
        }
        let qty = item["quantity"].as_i64().unwrap_or(1);
        let (iv, n) = price_interval(price);
        let amount = unit_amount_in(price, &currency)? * qty;
        let si = s_of(&item["id"]);
        let name = product_name(s, price);
        lines.push(line(
            s,
            sub_id,
            &si,
            price,
            qty,
            amount,
            &currency,
            (end, add_interval(end, &iv, n)),
            false,
            format!("{qty} × {name}"),
        ));
    }
    let id = format!("upcoming_{}", s.id("in"));
    let mut inv = invoice_object(s, sub_id, "upcoming", lines, at, &id)?;
    inv["billing_reason"] = json!("subscription_cycle");
    inv["period_start"] = json!(end);
    inv["period_end"] = json!(end);
    inv["next_payment_attempt"] = json!(end);
    inv["hosted_invoice_url"] = Value::Null;
    inv["invoice_pdf"] = Value::Null;
    Ok(inv)
}

/// A subscription's period ends at `t`: cancel if scheduled, pause or cancel a trial
/// without a payment method when so configured, else start the next period and bill it.
pub fn renew(s: &mut Inner, sub_id: &str, t: i64) -> ApiResult<()> {
    crate::resources::subscription_schedules::on_period_end(s, sub_id, t)?;
    let before = s.get("subscription", sub_id, "id")?;
    if before["cancel_at"].as_i64().is_some_and(|c| c <= t) {
        return cancel_at(s, sub_id, "cancellation_requested", t);
    }
    let pm = sub_payment_method(s, &before);
    if before["status"] == "trialing" && pm.is_none() {
        match before["trial_settings"]["end_behavior"]["missing_payment_method"].as_str() {
            Some("cancel") => return cancel_at(s, sub_id, "payment_disabled", t),
            Some("pause") => {
                let mut after = before.clone();
                after["status"] = json!("paused");
                save_sub(s, &before, &after, t);
                s.emit("customer.subscription.paused", &after, None, t);
                return Ok(());
            }
            _ => {}
        }
    }
    // The period's metered usage goes on this renewal's invoice.
    let usage = usage_lines(s, sub_id)?;
    s.subs
        .entry(sub_id.to_string())
        .or_default()
        .pending_lines
        .extend(usage);
    let mut after = before.clone();
    start_new_period(&mut after, t);
    if after["status"] == "trialing" {
        after["status"] = json!("active");
    }
    save_sub(s, &before, &after, t);
    let inv = create_invoice(s, sub_id, "subscription_cycle", t)?;
    if before["status"] == "unpaid" {
        // Stripe keeps invoicing unpaid subscriptions but stops attempting payment.
        return Ok(());
    }
    if let Some(behavior) = collection_paused(s, sub_id, t)? {
        if s.peek(&inv)["status"] == "open" {
            match behavior.as_str() {
                "void" => {
                    void_invoice(s, &inv, t)?;
                }
                _ => mark_uncollectible(s, &inv, t)?,
            }
        }
        return Ok(());
    }
    match pay_invoice(s, &inv, None, t)? {
        PayOutcome::Paid => after_invoice_paid(s, &inv, t),
        _ => after_invoice_failed(s, &inv, t),
    }
}

/// The `pause_collection` behaviour in force at `t`, clearing it once `resumes_at` has passed.
pub(crate) fn collection_paused(s: &mut Inner, sub_id: &str, t: i64) -> ApiResult<Option<String>> {
    let before = s.get("subscription", sub_id, "id")?;
    let pc = &before["pause_collection"];
    let Some(behavior) = pc["behavior"].as_str().map(str::to_string) else {
        return Ok(None);
    };
    if pc["resumes_at"].as_i64().is_some_and(|r| r <= t) {
        let mut after = before.clone();
        after["pause_collection"] = Value::Null;
        save_sub(s, &before, &after, t);
        return Ok(None);
    }
    Ok(Some(behavior))
}

pub(crate) fn start_new_period(sub: &mut Value, t: i64) {
    if let Some(items) = sub["items"]["data"].as_array_mut() {
        for item in items {
            let (iv, n) = price_interval(&item["price"]);
            item["current_period_start"] = json!(t);
            item["current_period_end"] = json!(add_interval(t, &iv, n));
        }
    }
}

/// Resumes a paused subscription (`POST /v1/subscriptions/{id}/resume`): a new period
/// starting now, invoiced and charged.
pub fn resume(s: &mut Inner, sub_id: &str) -> ApiResult<PayOutcome> {
    let before = s.get("subscription", sub_id, "id")?;
    if before["status"] != "paused" {
        return Err(ApiError::state(
            "subscription_not_paused",
            "Only paused subscriptions can be resumed.",
        ));
    }
    let t = s.now_for_customer(before["customer"].as_str());
    let mut after = before.clone();
    start_new_period(&mut after, t);
    after["status"] = json!("active");
    after["pause_collection"] = Value::Null;
    save_sub(s, &before, &after, t);
    s.emit("customer.subscription.resumed", &after, None, t);
    let inv = create_invoice(s, sub_id, "subscription_cycle", t)?;
    let out = pay_invoice(s, &inv, None, t)?;
    match &out {
        PayOutcome::Paid => after_invoice_paid(s, &inv, t)?,
        _ => after_invoice_failed(s, &inv, t)?,
    }
    Ok(out)
}
