//! `/console/emails`: the outbox (emails, Stripe calls, alerts) by status,
//! with a retry for dead rows.

use std::fmt::Write as _;

use axum::extract::rejection::FormRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Form};
use billd_store::OutboxStatus;

use crate::http::admin::{outbox_rows, retry_dead, Action, OutboxQuery};
use crate::pipeline::BillingBackend;

use super::html::{csrf_field, esc, opt, page, respond, status_options, time};
use super::session::Session;
use super::{act, customer_path, error_page, ConsoleState, CsrfForm};

pub(super) async fn emails<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Query(mut query): Query<OutboxQuery>,
) -> Response {
    // An empty field in the form means no filter.
    query.status = query.status.filter(|s| !s.is_empty());
    query.customer = query.customer.filter(|s| !s.is_empty());
    query.limit = Some(200);
    let rows = match outbox_rows(&state.api, &query).await {
        Ok(list) => list.data,
        Err(e) => return error_page(&e),
    };
    let options = status_options(
        OutboxStatus::ALL.map(|s| s.as_str()),
        query.status.as_deref(),
    );
    let mut body = format!(
        "<form method=\"get\" action=\"/console/emails\"><select name=\"status\">{options}</select> \
         <button type=\"submit\">Filter</button></form><p></p>\
         <div class=\"table\"><table><tr><th>Created</th><th>Kind</th><th>Customer</th><th>Key</th>\
         <th>Status</th><th>Attempts</th><th>Last error</th><th></th></tr>"
    );
    for row in &rows {
        let status = row.status.as_str();
        let customer = row.customer_id.as_ref().map_or_else(
            || "<span class=\"muted\">—</span>".to_owned(),
            |c| {
                format!(
                    "<a href=\"{}\">{}</a>",
                    esc(&customer_path(c.as_str())),
                    esc(c.as_str())
                )
            },
        );
        let retry = if row.status == OutboxStatus::Dead {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/console/emails/{}/retry\">{}\
                 <button class=\"quiet\" type=\"submit\">Retry</button></form>",
                row.id,
                csrf_field(&session.csrf)
            )
        } else {
            String::new()
        };
        let class = if row.status == OutboxStatus::Dead {
            "bad"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{customer}</td><td><code>{}</code></td>\
             <td class=\"{class}\">{}</td><td>{}</td><td><pre>{}</pre></td><td>{retry}</td></tr>",
            time(Some(row.created_at)),
            esc(&row.kind),
            esc(&row.dedupe_key),
            esc(status),
            row.attempts,
            opt(row.last_error.as_deref()),
        );
    }
    body += "</table></div>";
    respond(
        StatusCode::OK,
        page("Emails and outbox", "/console/emails", &session.csrf, &body),
    )
}

pub(super) async fn retry<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    let action = Action {
        name: "retry_outbox",
        target: id.clone(),
        customer: None,
    };
    let done = retry_dead(&state.api, &id);
    let back = "/console/emails?status=pending";
    act(&state, &session, form, action, done, |_| None, back).await
}
