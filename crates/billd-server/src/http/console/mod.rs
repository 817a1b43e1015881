//! The operator console at `/console`: server-rendered pages over the
//! admin API's reads (no script; forms for the actions), behind a log-in
//! with an admin key. Sessions are signed cookies ([`session`]); every form
//! carries the session's CSRF token; failed log-ins are limited per client
//! address; every answer carries a Content-Security-Policy without inline
//! scripts and `X-Frame-Options: DENY`.

mod emails;
mod html;
mod ops;
mod pages;
mod session;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use billd_store::RateDecision;
use serde::Deserialize;

use crate::http::admin::{record_action, Action, Actor};
use crate::http::api::{store_error, ApiState};
use crate::http::auth::{ApiKeys, Role};
use crate::http::error::{ApiError, LoggedError};
use crate::pipeline::BillingBackend;

use html::{bare, esc, respond};
pub(crate) use session::Sessions;
use session::{cookie_value, Session, COOKIE};

/// Log-in attempts allowed per client address per minute.
const LOGINS_PER_MINUTE: u32 = 10;

/// What the console's handlers share.
pub(crate) struct ConsoleState<S: BillingBackend + ?Sized> {
    pub(crate) api: ApiState<S>,
    keys: Arc<ApiKeys>,
    sessions: Sessions,
}

impl<S: BillingBackend + ?Sized> Clone for ConsoleState<S> {
    fn clone(&self) -> Self {
        ConsoleState {
            api: self.api.clone(),
            keys: self.keys.clone(),
            sessions: self.sessions.clone(),
        }
    }
}

/// The console's routes; `secure` marks its cookie `Secure` (billd served
/// over https).
pub(crate) fn routes<S: BillingBackend + ?Sized>(
    api: ApiState<S>,
    keys: Arc<ApiKeys>,
    secure: bool,
) -> Router {
    let sessions = Sessions::new(&keys, secure);
    let state = ConsoleState {
        api,
        keys,
        sessions,
    };
    let pages = Router::new()
        .route("/console", get(pages::overview::<S>))
        .route("/console/customers", get(pages::customers::<S>))
        .route("/console/customers/{id}", get(pages::customer::<S>))
        .route("/console/customers/{id}/resync", post(pages::resync::<S>))
        .route("/console/customers/{id}/cancel", post(pages::cancel::<S>))
        .route("/console/customers/{id}/resume", post(pages::resume::<S>))
        .route("/console/events", get(pages::events::<S>))
        .route("/console/events/replay", post(pages::replay_all::<S>))
        .route("/console/events/{id}", get(pages::event::<S>))
        .route("/console/events/{id}/replay", post(pages::replay::<S>))
        .route("/console/emails", get(emails::emails::<S>))
        .route("/console/reconciliation", get(ops::reconciliation::<S>))
        .route("/console/alerts", get(ops::alerts::<S>))
        .route("/console/emails/{id}/retry", post(emails::retry::<S>))
        .route("/console/logout", post(logout::<S>))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session::<S>,
        ));
    Router::new()
        .route("/console/login", get(login_form).post(login::<S>))
        .route("/console/assets/console.css", get(stylesheet))
        .route("/console/assets/console.js", get(script))
        .merge(pages)
        .with_state(state)
}

/// Pages and actions need a session: without one, the log-in page. The
/// session's cookie is sent back with its last use moved to now.
async fn require_session<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    mut request: Request,
    next: Next,
) -> Response {
    let now = state.api.clock.now();
    let checked = request
        .headers()
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|cookies| cookie_value(cookies, COOKIE))
        .and_then(|value| state.sessions.check(value, now));
    let Some((session, renewed)) = checked else {
        return see_other("/console/login");
    };
    request.extensions_mut().insert(session);
    let mut response = next.run(request).await;
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.cookie(&renewed)) {
        // Log-out sets its own (expired) cookie.
        if !response.headers().contains_key(header::SET_COOKIE) {
            response.headers_mut().insert(header::SET_COOKIE, cookie);
        }
    }
    response
}

/// A 303 to `to`, with the console's headers.
pub(crate) fn see_other(to: &str) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(location) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    html::secure_headers(response.headers_mut());
    response
}

/// An error as a page: the status and stable code of the API's answer.
/// Marked as made by billd, so the JSON error layer leaves it as it is.
pub(crate) fn error_page(error: &ApiError) -> Response {
    let status = error.status();
    let message = if status.is_server_error() {
        "billd could not answer this now; see its log.".to_owned()
    } else {
        error.to_string()
    };
    let body = format!(
        "<h1>{}</h1><p class=\"bad\"><code>{}</code> {}</p>\
         <p><a href=\"/console\">Back to the overview</a></p>",
        status.as_u16(),
        esc(error.code()),
        esc(&message)
    );
    let mut response = respond(status, bare("Error", &body));
    response.extensions_mut().insert(LoggedError {
        code: error.code(),
        detail: message,
    });
    response
}

async fn stylesheet() -> Response {
    asset(html::CSS, "text/css; charset=utf-8")
}

async fn script() -> Response {
    asset(html::JS, "text/javascript; charset=utf-8")
}

/// An embedded asset, cacheable for an hour.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

fn login_page(status: StatusCode, notice: Option<&str>) -> Response {
    let notice = notice.map_or(String::new(), |n| {
        format!("<p class=\"notice\">{}</p>", esc(n))
    });
    let body = format!(
        "<form class=\"login\" method=\"post\" action=\"/console/login\">\
         <h1>billd console</h1>{notice}<label for=\"key\">Admin key</label>\
         <input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" required>\
         <button type=\"submit\">Log in</button></form>"
    );
    let mut response = respond(status, bare("Log in", &body));
    if status.is_client_error() {
        response.extensions_mut().insert(LoggedError {
            code: if status == StatusCode::TOO_MANY_REQUESTS {
                "rate_limited"
            } else {
                "unauthorized"
            },
            detail: notice,
        });
    }
    response
}

async fn login_form() -> Response {
    login_page(StatusCode::OK, None)
}

/// The client's address, when the server knows it.
pub(crate) struct Peer(Option<SocketAddr>);

impl<T: Send + Sync> FromRequestParts<T> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &T) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

/// The log-in form.
#[derive(Deserialize)]
struct LoginForm {
    key: String,
}

async fn login<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    Peer(peer): Peer,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let now = state.api.clock.now();
    let subject = peer.map_or_else(|| "unknown".to_owned(), |p| p.ip().to_string());
    // Every attempt counts, so a guesser gets ten a minute per address.
    match state
        .api
        .store
        .take_rate_token("console_login", &subject, LOGINS_PER_MINUTE, 60, now)
        .await
    {
        Ok(RateDecision::Allowed) => {}
        Ok(RateDecision::Limited { .. }) => {
            return login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many log-in attempts from this address; wait a minute."),
            )
        }
        Err(e) => return error_page(&store_error(e)),
    }
    let admin = form
        .ok()
        .is_some_and(|Form(f)| state.keys.role(&f.key) == Some(Role::Admin));
    if !admin {
        tracing::info!(client = %subject, "console log-in refused");
        return login_page(StatusCode::UNAUTHORIZED, Some("That is not an admin key."));
    }
    let value = state.sessions.start(now);
    let mut response = see_other("/console");
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.cookie(&value)) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    tracing::info!(client = %subject, "console log-in");
    response
}

/// A form that only carries the CSRF token.
#[derive(Deserialize)]
pub(crate) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The refusal of an action whose form does not carry the session's
/// token; `None` when it does.
pub(crate) fn csrf_refusal(
    session: &Session,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Option<Response> {
    let token = form.map(|Form(f)| f.csrf).unwrap_or_default();
    csrf_refusal_token(session, &token)
}

/// [`csrf_refusal`] for a form that carries more than the token.
pub(crate) fn csrf_refusal_token(session: &Session, token: &str) -> Option<Response> {
    if Sessions::csrf_ok(session, token) {
        return None;
    }
    Some(error_page(&ApiError::Denied {
        code: "csrf_invalid",
        message: "the form's CSRF token is missing or not this session's; reload the page"
            .to_owned(),
    }))
}

/// Runs an action: refused without the session's CSRF token (and then
/// `run`, a future not yet polled, never runs); otherwise recorded as done
/// by this session (with how it ended) and answered with a 303 to `back`,
/// or its error page.
pub(crate) async fn act<S: BillingBackend + ?Sized, T>(
    state: &ConsoleState<S>,
    session: &Session,
    form: Result<Form<CsrfForm>, FormRejection>,
    action: Action,
    run: impl std::future::Future<Output = Result<T, ApiError>>,
    detail: impl FnOnce(&T) -> Option<String>,
    back: &str,
) -> Response {
    if let Some(refused) = csrf_refusal(session, form) {
        return refused;
    }
    act_checked(state, session, action, run, detail, back).await
}

/// [`act`] once the form's CSRF token has been checked.
pub(crate) async fn act_checked<S: BillingBackend + ?Sized, T>(
    state: &ConsoleState<S>,
    session: &Session,
    action: Action,
    run: impl std::future::Future<Output = Result<T, ApiError>>,
    detail: impl FnOnce(&T) -> Option<String>,
    back: &str,
) -> Response {
    let done = run.await;
    let actor = Actor::Console(session.nonce.clone());
    record_action(&state.api, &actor, action, &done, detail).await;
    match done {
        Ok(_) => see_other(back),
        Err(e) => error_page(&e),
    }
}

async fn logout<S: BillingBackend + ?Sized>(
    State(state): State<ConsoleState<S>>,
    axum::Extension(session): axum::Extension<Session>,
    form: Result<Form<CsrfForm>, FormRejection>,
) -> Response {
    if let Some(refused) = csrf_refusal(&session, form) {
        return refused;
    }
    let mut response = see_other("/console/login");
    if let Ok(cookie) = HeaderValue::from_str(&state.sessions.cookie("")) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    response
}

/// The path of an action's page to return to, from its id.
pub(crate) fn customer_path(id: &str) -> String {
    format!("/console/customers/{}", html::query_value(id))
}
