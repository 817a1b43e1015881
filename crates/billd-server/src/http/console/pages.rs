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

use crate::http::admin::{
    customer_view, events as list_events, read_overview, replay_one, resync as resync_customer,
    search, EventSummary, EventsQuery, SearchQuery,
};
use crate::pipeline::BillingBackend;

use super::html::{csrf_field, esc, opt, page, query_value, respond, status_options, time};
use super::session::Session;
use super::{act, customer_path, error_page, ConsoleState, CsrfForm};

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
    let mut body = String::from("<h2>Inbox</h2><div class=\"cards\">");
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
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td class=\"{class}\">{}</td>\
             <td>{}</td><td><pre>{}</pre></td><td><form class=\"inline\" method=\"post\" \
             action=\"/console/events/{}/replay\">{}<button class=\"quiet\" type=\"submit\">Replay</button>\
             </form></td></tr>",
            time(Some(e.received_at)),
            esc(&e.event_type),
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
    let _ = write!(
        body,
        "<h2>Actions</h2><form class=\"inline\" method=\"post\" action=\"{}/resync\">{}\
         <button type=\"submit\">Resync from Stripe</button></form>",
        esc(&customer_path(&c.id)),
        csrf_field(&session.csrf)
    );
    body += "<h2>Events</h2>";
    body += &events_table(&view.events, &session.csrf);
    body += "<h2>Audit</h2><div class=\"table\"><table><tr><th>At</th><th>Field</th>\
             <th>Before</th><th>After</th><th>Why</th></tr>";
    for a in &view.audit {
        let a = serde_json::to_value(a).unwrap_or_default();
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td><pre>{}</pre></td><td><pre>{}</pre></td><td>{}</td></tr>",
            time(a["at"].as_i64()),
            esc(&text(&a["field"])),
            opt(a["before"].as_str()),
            opt(a["after"].as_str()),
            esc(&text(&a["reason"]))
        );
    }
    body += "</table></div><h2>Emails and outbox</h2><div class=\"table\"><table>\
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

/// `/console/events` filters.
#[derive(Debug, Deserialize)]
pub(super) struct EventsFilter {
    status: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
}

pub(super) async fn events<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Query(filter): Query<EventsFilter>,
) -> Response {
    // An empty field in the form means no filter.
    let some = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let (status, event_type) = (some(filter.status), some(filter.event_type));
    let query = EventsQuery {
        status: status.clone(),
        event_type: event_type.clone(),
        limit: Some(200),
    };
    let found = match list_events(&state.api, query).await {
        Ok(list) => list,
        Err(e) => return error_page(&e),
    };
    let options = status_options(
        billd_store::EventStatus::ALL.map(|s| s.as_str()),
        status.as_deref(),
    );
    let mut body = format!(
        "<form method=\"get\" action=\"/console/events\"><select name=\"status\">{options}</select> \
         <input type=\"text\" name=\"type\" value=\"{}\" placeholder=\"event type\"> \
         <button type=\"submit\">Filter</button></form><p></p>",
        esc(event_type.as_deref().unwrap_or(""))
    );
    body += &events_table(&found.data, &session.csrf);
    respond(
        StatusCode::OK,
        page("Events", "/console/events", &session.csrf, &body),
    )
}

pub(super) async fn replay<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let back = format!("/console/events?type=&status=pending#{}", query_value(&id));
    let done = replay_one(&state.api, id.clone());
    act(&session, form, done, &format!("event {id} replayed"), &back).await
}

pub(super) async fn resync<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let done = resync_customer(&state.api, &id);
    let what = format!("customer {id} resynced");
    act(&session, form, done, &what, &customer_path(&id)).await
}
