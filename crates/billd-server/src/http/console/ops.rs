//! The console's reconciliation and alerts pages, over the admin API's own
//! reads.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;

use crate::http::admin::{list_alert_rows, reconcile_runs, OpsQuery};
use crate::pipeline::BillingBackend;

use super::error_page;
use super::html::{esc, page, respond, time};
use super::session::Session;
use super::ConsoleState;

/// How many runs and alerts the pages show.
const SHOWN: u32 = 50;

pub(super) async fn reconciliation<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
) -> Response {
    let query = OpsQuery {
        limit: Some(SHOWN),
        ..OpsQuery::default()
    };
    let runs = match reconcile_runs(&state.api, &query).await {
        Ok(runs) => runs.data,
        Err(e) => return error_page(&e),
    };
    let mut body = String::from(
        "<p class=\"muted\">Each run compares every subscription with Stripe and heals what \
         differs with an authoritative snapshot. Drift means webhooks were missed.</p>\
         <div class=\"table\"><table><tr><th>Finished</th><th>Checked</th><th>Drift</th>\
         <th>Unlinked</th><th>Missed events ingested</th></tr>",
    );
    for run in &runs {
        let class = if run.drift > 0 { "bad" } else { "ok" };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td><td>{}</td></tr>",
            time(Some(run.finished_at)),
            run.checked,
            run.drift,
            run.unlinked,
            run.ingested
        );
    }
    body += "</table></div>";
    if runs.is_empty() {
        body += "<p class=\"muted\">No reconciliation has run yet.</p>";
    }
    // What the last run found, difference by difference.
    let drift = runs
        .first()
        .and_then(|r| r.report["drift"].as_array().cloned())
        .unwrap_or_default();
    if !drift.is_empty() {
        body += "<h2>Differences healed by the last run</h2><div class=\"table\"><table>\
                 <tr><th>Customer</th><th>Subscription</th><th>Kind</th><th>billd had</th>\
                 <th>Stripe has</th></tr>";
        for d in &drift {
            let text = |k: &str| esc(d[k].as_str().unwrap_or(""));
            let _ = write!(
                body,
                "<tr><td><a href=\"/console/customers/{}\">{}</a></td><td><code>{}</code></td>\
                 <td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&super::html::query_value(
                    d["customer"].as_str().unwrap_or("")
                )),
                text("customer"),
                text("subscription"),
                text("kind"),
                text("billd"),
                text("stripe")
            );
        }
        body += "</table></div>";
    }
    respond(
        StatusCode::OK,
        page(
            "Reconciliation",
            "/console/reconciliation",
            &session.csrf,
            &body,
        ),
    )
}

pub(super) async fn alerts<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Extension(session): Extension<Session>,
) -> Response {
    let query = OpsQuery {
        limit: Some(SHOWN),
        ..OpsQuery::default()
    };
    let alerts = match list_alert_rows(&state.api, &query).await {
        Ok(alerts) => alerts.data,
        Err(e) => return error_page(&e),
    };
    let mut body = String::from(
        "<p class=\"muted\">Alerts of the last 30 days, newest first. Each is raised once per \
         window and delivered by email (and webhook when configured).</p>\
         <div class=\"table\"><table><tr><th>Raised</th><th>Alert</th><th>Message</th>\
         <th>Delivery</th><th>Last error</th></tr>",
    );
    for a in &alerts {
        let class = if a.status == "dead" { "bad" } else { "" };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{}</td><td>{}</td></tr>",
            time(Some(a.raised_at)),
            esc(&a.alert),
            esc(&a.message),
            esc(&a.status),
            super::html::opt(a.last_error.as_deref())
        );
    }
    body += "</table></div>";
    if alerts.is_empty() {
        body += "<p class=\"muted\">No alert in the last 30 days.</p>";
    }
    respond(
        StatusCode::OK,
        page("Alerts", "/console/alerts", &session.csrf, &body),
    )
}
