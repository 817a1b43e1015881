//! The console's pages and actions, each over the admin API's own read or
//! action (so the console and the API cannot disagree).

use std::fmt::Write as _;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Form};
use serde::Deserialize;
use serde_json::Value;

use billd_core::CustomerId;
use billd_store::{EventStatus, ReplayFilter};

use crate::http::admin::{
    customer_view, describe_filter, events as list_events, read_overview, replay_matching,
    replay_one, resync as resync_customer, search, Action, EventSummary, EventsQuery, SearchQuery,
};
use crate::http::api::customer_id;
use crate::http::app::subscription::set_cancel_at_period_end;
use crate::http::error::ApiError;
use crate::pipeline::BillingBackend;

use super::html::{
    bars, csrf_field, esc, money, opt, page, query_value, respond, status_options, time, utc_day,
};
use super::session::Session;
use super::{
    act, act_checked, csrf_refusal_token, customer_path, error_page, ConsoleState, CsrfForm,
};

/// A JSON value's text (a string without its quotes).
fn text(value: &Value) -> String {
    value
        .as_str()
        .map_or_else(|| value.to_string(), str::to_owned)
}

fn card(label: &str, value: &str) -> String {
    format!(
        "<div class=\"card\"><div class=\"n\">{}</div><div class=\"l\">{}</div></div>",
        esc(value),
        esc(label)
    )
}

pub(super) async fn overview<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
) -> Response {
    let overview = match read_overview(&state.api).await {
        Ok(o) => o,
        Err(e) => return error_page(&e),
    };
    let mut body = String::from("<div class=\"cards\">");
    let rate = overview
        .payment_failure_rate
        .map_or_else(|| "—".to_owned(), |r| format!("{:.1} %", r * 100.0));
    body += &card(
        "webhooks / min (last hour)",
        &format!("{:.1}", overview.webhooks_per_minute),
    );
    body += &card("payment failure rate (24 h)", &rate);
    body += &card("dead events", &overview.dead_events.to_string());
    body += &card("alerts (24 h)", &overview.alerts_24h.to_string());
    let reconciled = overview.last_reconciliation.as_ref().map_or_else(
        || "never".to_owned(),
        |r| format!("{} drift / {} checked", r.drift, r.checked),
    );
    body += &card("last reconciliation", &reconciled);
    body += "</div><h2>Last 24 hours</h2><div class=\"charts\">";
    let series = |f: fn(&billd_store::ActivityBucket) -> i64| -> Vec<(i64, i64)> {
        overview.activity.iter().map(|b| (b.start, f(b))).collect()
    };
    body += &bars("webhooks per hour", &series(|b| b.webhooks));
    body += &bars("failed payments per hour", &series(|b| b.payments_failed));
    body += &bars("events now dead, by arrival hour", &series(|b| b.dead));
    if let Some(r) = &overview.last_reconciliation {
        let _ = write!(
            body,
            "</div><p>Last reconciliation finished {}: {} subscriptions checked, {} differences \
             healed, {} unlinked. <a href=\"/console/reconciliation\">All runs</a></p>",
            time(Some(r.finished_at)),
            r.checked,
            r.drift,
            r.unlinked
        );
    } else {
        body += "</div>";
    }
    body += "<h2>Inbox</h2><div class=\"cards\">";
    body += &card("inbox lag (s)", &overview.inbox.lag_secs.to_string());
    for (status, n) in &overview.inbox.by_status {
        body += &card(&format!("{status} events"), &n.to_string());
    }
    body += "</div><h2>Outbox</h2><div class=\"cards\">";
    body += &card("outbox lag (s)", &overview.outbox.lag_secs.to_string());
    for (status, n) in &overview.outbox.by_status {
        body += &card(&format!("{status} rows"), &n.to_string());
    }
    body += "</div><h2>Scheduled jobs</h2><div class=\"table\"><table><tr><th>Job</th>\
             <th>Last run</th><th>Result</th><th>Next run</th><th>Runs</th><th>Failures</th></tr>";
    for job in &overview.jobs {
        let result = match &job.last_error {
            Some(error) => format!("<span class=\"bad\">{}</span>", esc(error)),
            None if job.last_run_at.is_some() => "<span class=\"ok\">ok</span>".to_owned(),
            None => String::new(),
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{result}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&job.name),
            time(job.last_run_at),
            time(Some(job.next_run_at)),
            job.runs,
            job.failures
        );
    }
    body += "</table></div>";
    respond(
        StatusCode::OK,
        page("Overview", "/console", &session.csrf, &body),
    )
}

pub(super) async fn customers<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Query(query): Query<SearchQuery>,
) -> Response {
    let found = match search(&state.api, &query).await {
        Ok(page) => page,
        Err(e) => return error_page(&e),
    };
    let typed = query.query.clone().unwrap_or_default();
    let mut body = format!(
        "<form method=\"get\" action=\"/console/customers\">\
         <input type=\"text\" name=\"query\" value=\"{}\" placeholder=\"billd id, email or Stripe id\"> \
         <button type=\"submit\">Search</button></form><p></p>\
         <div class=\"table\"><table><tr><th>Customer</th><th>Email</th><th>Name</th>\
         <th>Stripe customer</th><th>Created</th><th>Deleted</th></tr>",
        esc(&typed)
    );
    for c in &found.data {
        let _ = write!(
            body,
            "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td>{}</td><td><code>{}</code></td>\
             <td>{}</td><td>{}</td></tr>",
            esc(&customer_path(&c.id)),
            esc(&c.id),
            opt(c.email.as_deref()),
            opt(c.name.as_deref()),
            opt(c.stripe_customer_id.as_deref()),
            time(Some(c.created_at)),
            time(c.deleted_at)
        );
    }
    body += "</table></div>";
    if found.data.is_empty() {
        body += "<p class=\"muted\">No customer matches.</p>";
    }
    if let Some(cursor) = &found.next_cursor {
        let _ = write!(
            body,
            "<p><a href=\"/console/customers?query={}&amp;cursor={}\">Next page</a></p>",
            query_value(&typed),
            query_value(cursor)
        );
    }
    respond(
        StatusCode::OK,
        page("Customers", "/console/customers", &session.csrf, &body),
    )
}

fn events_table(events: &[EventSummary], csrf: &str) -> String {
    let mut body = String::from(
        "<div class=\"table\"><table><tr><th>Received</th><th>Type</th><th>Event</th>\
         <th>Status</th><th>Attempts</th><th>Last error</th><th></th></tr>",
    );
    for e in events {
        let status = e.status.as_str();
        let class = if status == "dead" || status == "failed" {
            "bad"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><a href=\"/console/events/{}\"><code>{}</code></a></td>\
             <td class=\"{class}\">{}</td>\
             <td>{}</td><td><pre>{}</pre></td><td><form class=\"inline\" method=\"post\" \
             action=\"/console/events/{}/replay\">{}<button class=\"quiet\" type=\"submit\">Replay</button>\
             </form></td></tr>",
            time(Some(e.received_at)),
            esc(&e.event_type),
            esc(&query_value(&e.id)),
            esc(&e.id),
            esc(status),
            e.attempts,
            opt(e.last_error.as_deref()),
            esc(&query_value(&e.id)),
            csrf_field(csrf)
        );
    }
    body + "</table></div>"
}

pub(super) async fn customer<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let view = match customer_view(&state.api, &id).await {
        Ok(view) => view,
        Err(e) => return error_page(&e),
    };
    let c = &view.customer;
    let mut body = format!(
        "<div class=\"cards\">{}{}{}</div>",
        card("email", c.email.as_deref().unwrap_or("—")),
        card("name", c.name.as_deref().unwrap_or("—")),
        card(
            "Stripe customer",
            c.stripe_customer_id.as_deref().unwrap_or("—")
        ),
    );
    if let Some(e) = &view.entitlements {
        let e = serde_json::to_value(e).unwrap_or_default();
        let _ = write!(
            body,
            "<h2>Entitlements</h2><div class=\"cards\">{}{}{}{}</div>\
             <p></p><div class=\"table\"><table><tr><th>Feature</th><th>Used</th><th>Limit</th><th></th></tr>",
            card("plan", &text(&e["plan"])),
            card("access", &text(&e["access"])),
            card("status", &text(&e["status"])),
            card("cancels at period end", &text(&e["cancel_at_period_end"])),
        );
        for (name, f) in e["features"].as_object().into_iter().flatten() {
            let (used, limit) = (
                f["used"].as_u64().unwrap_or(0),
                f["limit"].as_u64().unwrap_or(0),
            );
            // A meter needs no inline style, which the policy forbids.
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{used}</td><td>{limit}</td><td><meter min=\"0\" \
                 max=\"{}\" value=\"{used}\"></meter></td></tr>",
                esc(name),
                limit.max(1)
            );
        }
        body += "</table></div>";
    } else {
        body += "<p class=\"notice\">This account is deleted.</p>";
    }
    let live = view
        .state
        .current_subscription()
        .filter(|s| s.is_live() && view.customer.deleted_at.is_none());
    let cancelling = view
        .entitlements
        .as_ref()
        .is_some_and(|e| e.cancel_at_period_end);
    body += &actions_of(&c.id, live.is_some(), cancelling, &session.csrf);
    body += &invoices(&view.state);
    body += &timeline(&view, &session.csrf);
    body += "<h2>Emails and outbox</h2><div class=\"table\"><table>\
             <tr><th>Created</th><th>Kind</th><th>Key</th><th>Status</th><th>Attempts</th><th>Last error</th></tr>";
    for row in &view.outbox {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(Some(row.created_at)),
            esc(&row.kind),
            esc(&row.dedupe_key),
            esc(row.status.as_str()),
            row.attempts,
            opt(row.last_error.as_deref())
        );
    }
    body += "</table></div><h2>Billing state</h2><div class=\"table\"><pre>";
    body += &esc(&serde_json::to_string_pretty(&view.state).unwrap_or_default());
    body += "</pre></div>";
    respond(
        StatusCode::OK,
        page(
            &format!("Customer {}", c.id),
            "/console/customers",
            &session.csrf,
            &body,
        ),
    )
}

/// The customer page's action buttons: resync, and cancel at period end
/// or resume when it has a subscription.
fn actions_of(id: &str, subscribed: bool, cancelling: bool, csrf: &str) -> String {
    let path = esc(&customer_path(id));
    let csrf = csrf_field(csrf);
    let mut html = format!(
        "<h2>Actions</h2><form class=\"inline\" method=\"post\" action=\"{path}/resync\">{csrf}\
         <button type=\"submit\">Resync from Stripe</button></form> "
    );
    if subscribed {
        let (what, label) = if cancelling {
            ("resume", "Resume (undo the cancellation)")
        } else {
            ("cancel", "Cancel at period end")
        };
        let _ = write!(
            html,
            "<form class=\"inline\" method=\"post\" action=\"{path}/{what}\">{csrf}\
             <button type=\"submit\">{label}</button></form>"
        );
    }
    html
}

/// The invoices billd knows, newest first, with Stripe's hosted pages.
fn invoices(state: &billd_core::CustomerState) -> String {
    let mut rows: Vec<_> = state.invoices.iter().collect();
    rows.sort_by_key(|(id, inv)| (std::cmp::Reverse(inv.invoice.value.created), (*id).clone()));
    let mut html = String::from(
        "<h2>Invoices</h2><div class=\"table\"><table><tr><th>Created</th><th>Invoice</th>\
         <th>Status</th><th>Amount due</th><th>Paid</th><th>Failed attempts</th><th></th></tr>",
    );
    for (id, inv) in &rows {
        let i = &inv.invoice.value;
        // Only web links: never a `javascript:` URL in an href.
        let link = i
            .hosted_invoice_url
            .as_deref()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"));
        let _ = write!(
            html,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(i.created),
            esc(id.as_str()),
            opt(i.status.as_deref()),
            money(&i.amount_due),
            if inv.paid { "yes" } else { "no" },
            inv.failed_attempts,
            link.map_or_else(String::new, |u| format!(
                "<a href=\"{}\" rel=\"noopener noreferrer\">Stripe's page</a>",
                esc(u)
            )),
        );
    }
    html += "</table></div>";
    if rows.is_empty() {
        html += "<p class=\"muted\">No invoice yet.</p>";
    }
    html
}

/// One row of a customer's timeline.
struct Moment {
    at: i64,
    kind: &'static str,
    what: String,
    detail: String,
}

/// The customer's events, audit rows and operator actions merged, newest
/// first (what happened to it, why, and who did what).
fn timeline(view: &crate::http::admin::CustomerView, csrf: &str) -> String {
    let mut moments = Vec::new();
    for e in &view.events {
        let status = e.status.as_str();
        let class = if status == "dead" || status == "failed" {
            "bad"
        } else {
            ""
        };
        moments.push(Moment {
            at: e.received_at,
            kind: "event",
            what: format!(
                "<a href=\"/console/events/{}\">{}</a>",
                esc(&query_value(&e.id)),
                esc(&e.event_type)
            ),
            detail: format!(
                "<span class=\"{class}\">{}</span> <code>{}</code> <form class=\"inline\" \
                 method=\"post\" action=\"/console/events/{}/replay\">{}\
                 <button class=\"quiet\" type=\"submit\">Replay</button></form>",
                esc(status),
                esc(&e.id),
                esc(&query_value(&e.id)),
                csrf_field(csrf)
            ),
        });
    }
    for a in &view.audit {
        moments.push(Moment {
            at: a.at,
            kind: "change",
            what: esc(&a.field),
            detail: format!(
                "{} → {} <span class=\"muted\">({} {})</span>",
                opt(a.before.as_deref()),
                opt(a.after.as_deref()),
                esc(&a.event_type),
                esc(&a.reason)
            ),
        });
    }
    for a in &view.actions {
        let class = if a.outcome.starts_with("ok") {
            "ok"
        } else {
            "bad"
        };
        moments.push(Moment {
            at: a.at,
            kind: "operator",
            what: esc(&a.action),
            detail: format!(
                "{} by {}: <span class=\"{class}\">{}</span>",
                esc(&a.target),
                esc(&a.actor),
                esc(&a.outcome)
            ),
        });
    }
    // Stable: same-second rows keep events, then changes, then actions.
    moments.sort_by_key(|m| std::cmp::Reverse(m.at));
    let mut html = String::from(
        "<h2>Timeline</h2><div class=\"table\"><table><tr><th>At</th><th>Kind</th>\
         <th>What</th><th>Detail</th></tr>",
    );
    for m in &moments {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            time(Some(m.at)),
            m.kind,
            m.what,
            m.detail
        );
    }
    html + "</table></div>"
}

/// `/console/events` filters (also the bulk replay's form): every field
/// may be empty, which means no filter.
#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsFilter {
    #[serde(default)]
    status: String,
    #[serde(rename = "type", default)]
    event_type: String,
    #[serde(default)]
    customer: String,
    /// A UTC day, `YYYY-MM-DD`: received on it or later.
    #[serde(default)]
    from: String,
    /// A UTC day, `YYYY-MM-DD`: received on it or earlier.
    #[serde(default)]
    until: String,
    /// The CSRF token (the bulk replay's form only).
    #[serde(default)]
    csrf: String,
}

/// A filter's fields, parsed.
struct ParsedFilter {
    status: Option<String>,
    event_type: Option<String>,
    customer: Option<CustomerId>,
    received_from: Option<i64>,
    received_until: Option<i64>,
}

impl EventsFilter {
    fn parse(&self) -> Result<ParsedFilter, ApiError> {
        let some = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        let day = |field: &'static str, v: &str| -> Result<Option<i64>, ApiError> {
            some(v)
                .map(|v| {
                    utc_day(&v).ok_or_else(|| ApiError::InvalidRequest {
                        code: "invalid_date",
                        message: format!("{field} must be a day as YYYY-MM-DD (got {v:?})"),
                    })
                })
                .transpose()
        };
        Ok(ParsedFilter {
            status: some(&self.status),
            event_type: some(&self.event_type),
            customer: some(&self.customer).map(|c| customer_id(&c)).transpose()?,
            received_from: day("from", &self.from)?,
            // The whole `until` day is included.
            received_until: day("until", &self.until)?.map(|d| d + 86_400),
        })
    }

    /// The filter as hidden fields (the bulk replay's form repeats it).
    fn hidden_fields(&self) -> String {
        let mut html = String::new();
        for (name, value) in [
            ("type", &self.event_type),
            ("customer", &self.customer),
            ("from", &self.from),
            ("until", &self.until),
        ] {
            let _ = write!(
                html,
                "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                esc(value.trim())
            );
        }
        html
    }
}

pub(super) async fn events<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Query(filter): Query<EventsFilter>,
) -> Response {
    let parsed = match filter.parse() {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let query = EventsQuery {
        status: parsed.status.clone(),
        event_type: parsed.event_type.clone(),
        customer: parsed.customer.as_ref().map(ToString::to_string),
        received_from: parsed.received_from,
        received_until: parsed.received_until,
        limit: Some(200),
    };
    let found = match list_events(&state.api, query).await {
        Ok(list) => list,
        Err(e) => return error_page(&e),
    };
    let options = status_options(
        EventStatus::ALL.map(|s| s.as_str()),
        parsed.status.as_deref(),
    );
    let mut body = format!(
        "<form method=\"get\" action=\"/console/events\"><select name=\"status\">{options}</select> \
         <input type=\"text\" name=\"type\" value=\"{}\" placeholder=\"event type\"> \
         <input type=\"text\" name=\"customer\" value=\"{}\" placeholder=\"customer id\"> \
         <label>from <input type=\"date\" name=\"from\" value=\"{}\"></label> \
         <label>until <input type=\"date\" name=\"until\" value=\"{}\"></label> \
         <span class=\"muted\">(UTC days)</span> \
         <button type=\"submit\">Filter</button></form>",
        esc(filter.event_type.trim()),
        esc(filter.customer.trim()),
        esc(filter.from.trim()),
        esc(filter.until.trim()),
    );
    // Bulk replay takes dead events only, whatever status the list shows.
    let _ = write!(
        body,
        "<form class=\"inline\" method=\"post\" action=\"/console/events/replay\">{}{}\
         <button type=\"submit\">Replay every dead event matching this filter</button></form><p></p>",
        csrf_field(&session.csrf),
        filter.hidden_fields()
    );
    body += &events_table(&found.data, &session.csrf);
    respond(
        StatusCode::OK,
        page("Events", "/console/events", &session.csrf, &body),
    )
}

/// `/console/events/{id}`: one event with its payload pretty-printed.
pub(super) async fn event<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    let found = match state.api.store.get_event(&id).await {
        Ok(found) => found,
        Err(e) => return error_page(&crate::http::api::store_error(e)),
    };
    let Some(e) = found else {
        return error_page(&ApiError::NotFound {
            code: "event_not_found",
            message: format!("no event {id}"),
        });
    };
    // Shown as stored when it is not JSON (a redacted or odd payload).
    let payload = serde_json::from_str::<Value>(&e.payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| e.payload.clone());
    let summary = EventSummary::from(e);
    let mut body = format!(
        "<div class=\"cards\">{}{}{}{}</div>",
        card("type", &summary.event_type),
        card("status", summary.status.as_str()),
        card("attempts", &summary.attempts.to_string()),
        card(
            "Stripe customer",
            summary.stripe_customer.as_deref().unwrap_or("—")
        ),
    );
    let _ = write!(
        body,
        "<p>Received {}, processed {}, created at Stripe {}.</p>",
        time(Some(summary.received_at)),
        time(summary.processed_at),
        time(Some(summary.created))
    );
    if let Some(error) = &summary.last_error {
        let _ = write!(body, "<p class=\"bad\">Last error: {}</p>", esc(error));
    }
    let _ = write!(
        body,
        "<form class=\"inline\" method=\"post\" action=\"/console/events/{}/replay\">{}\
         <button type=\"submit\">Replay</button></form>\
         <h2>Payload</h2><div class=\"table\"><pre class=\"payload\">{}</pre></div>",
        esc(&query_value(&summary.id)),
        csrf_field(&session.csrf),
        esc(&payload)
    );
    respond(
        StatusCode::OK,
        page(
            &format!("Event {}", summary.id),
            "/console/events",
            &session.csrf,
            &body,
        ),
    )
}

pub(super) async fn replay<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let back = format!("/console/events/{}", query_value(&id));
    let action = Action {
        name: "replay_event",
        target: id.clone(),
        customer: None,
    };
    let done = replay_one(&state.api, id.clone());
    act(&state, &session, form, action, done, |_| None, &back).await
}

/// `POST /console/events/replay`: every dead event the form's filter picks.
pub(super) async fn replay_all<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    form: Result<Form<EventsFilter>, FormRejection>,
) -> Response {
    let filter = form.map(|Form(f)| f).unwrap_or_default();
    if let Some(refused) = csrf_refusal_token(&session, &filter.csrf) {
        return refused;
    }
    let parsed = match filter.parse() {
        Ok(p) => p,
        Err(e) => return error_page(&e),
    };
    let replay = ReplayFilter {
        status: EventStatus::Dead,
        event_type: parsed.event_type,
        customer_id: parsed.customer,
        received_from: parsed.received_from,
        received_until: parsed.received_until,
    };
    let action = Action {
        name: "replay_events",
        target: describe_filter(&replay),
        customer: replay.customer_id.clone(),
    };
    let done = replay_matching(&state.api, &replay);
    let back = format!(
        "/console/events?status=pending&type={}&customer={}&from={}&until={}",
        query_value(filter.event_type.trim()),
        query_value(filter.customer.trim()),
        query_value(filter.from.trim()),
        query_value(filter.until.trim()),
    );
    let detail = |r: &crate::http::admin::ReplayedCount| Some(format!("{} replayed", r.replayed));
    act_checked(&state, &session, action, done, detail, &back).await
}

pub(super) async fn resync<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let action = Action {
        name: "resync_customer",
        target: id.clone(),
        customer: CustomerId::parse(&id).ok(),
    };
    let done = resync_customer(&state.api, &id);
    let detail =
        |r: &crate::http::admin::Resynced| Some(format!("{} subscriptions", r.subscriptions.len()));
    let back = customer_path(&id);
    act(&state, &session, form, action, done, detail, &back).await
}

pub(super) async fn cancel<S: BillingBackend + ?Sized>(
    state: State<ConsoleState<S>>,
    session: Extension<Session>,
    id: Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    set_cancel(state, session, id, form, true).await
}

pub(super) async fn resume<S: BillingBackend + ?Sized>(
    state: State<ConsoleState<S>>,
    session: Extension<Session>,
    id: Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    set_cancel(state, session, id, form, false).await
}

/// Cancel at period end (`cancel`) or resume, through the app API's own
/// path (Stripe first, then the answer applied).
async fn set_cancel<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
    cancel: bool,
) -> Response {
    let action = Action {
        name: if cancel {
            "cancel_subscription"
        } else {
            "resume_subscription"
        },
        target: id.clone(),
        customer: CustomerId::parse(&id).ok(),
    };
    let done = set_cancel_at_period_end(state.api.clone(), id.clone(), cancel);
    let back = customer_path(&id);
    act(&state, &session, form, action, done, |_| None, &back).await
}
