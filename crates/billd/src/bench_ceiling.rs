//! The minimal server `billd bench usage` compares billd with: the same
//! HTTP stack (axum on tokio, billd's bearer-key middleware and response
//! layer) serving `POST /v1/customers/{id}/usage/{feature}`, where a
//! consume is nothing but one conditional counter UPDATE and one
//! idempotency-key INSERT in a bare two-table schema
//! ([`billd_store::ceiling::UsageCeiling`]). It runs as a child process
//! (`billd bench usage-ceiling`, hidden) so that it competes for the cores
//! exactly as `billd serve` does.

use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_server::http::ApiKeys;
use billd_store::ceiling::UsageCeiling;
use secrecy::SecretString;
use serde::Deserialize;

/// Options of the hidden `billd bench usage-ceiling`.
#[derive(Debug, clap::Args)]
pub struct CeilingArgs {
    /// `sqlite://…` (a file of its own) or `postgres://…`.
    #[arg(long)]
    database_url: String,
    /// Address to listen on.
    #[arg(long)]
    listen: String,
    /// The one accepted app key.
    #[arg(long)]
    api_key: String,
    /// Table name prefix (PostgreSQL tables are dropped and created).
    #[arg(long)]
    prefix: String,
    /// Customers `<customer_prefix>0` … `<customer_prefix>{customers - 1}`
    /// have a counter from the start.
    #[arg(long)]
    customer_prefix: String,
    /// How many customers.
    #[arg(long)]
    customers: usize,
    /// Every counter's limit.
    #[arg(long)]
    limit: i64,
}

/// The request body: the bench always sends a key.
#[derive(Deserialize)]
struct Body {
    idempotency_key: String,
}

/// Serves until killed.
pub async fn run(args: &CeilingArgs) -> anyhow::Result<()> {
    let customers = (0..args.customers).map(|i| format!("{}{i}", args.customer_prefix));
    let ceiling = UsageCeiling::open(&args.database_url, &args.prefix, customers, args.limit)
        .await
        .context("creating the ceiling's tables")?;
    let keys = ApiKeys::new(vec![SecretString::from(args.api_key.clone())], Vec::new());
    let router = Router::new()
        .route(
            "/v1/customers/{id}/usage/{feature}",
            axum::routing::post(consume),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::new(keys),
            billd_server::http::require_app_key,
        ))
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .with_state(ceiling)
        .layer(axum::middleware::from_fn(billd_server::http::shape));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    axum::serve(listener, router).await?;
    Ok(())
}

async fn consume(
    State(ceiling): State<UsageCeiling>,
    Path((customer, _feature)): Path<(String, String)>,
    Json(body): Json<Body>,
) -> Response {
    match ceiling.consume(customer, body.idempotency_key).await {
        Ok(Some(used)) => {
            Json(serde_json::json!({ "used": used, "limit": ceiling.limit() })).into_response()
        }
        Ok(None) => StatusCode::PAYMENT_REQUIRED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}
