//! The minimal server `billd bench usage` compares billd with: the same
//! HTTP stack (axum on tokio, billd's bearer-key middleware and response
//! layer) serving `POST /v1/customers/{id}/usage/{feature}`, where a
//! consume is nothing but one conditional counter UPDATE and one
//! idempotency-key INSERT in a bare two-table schema.
//!
//! On SQLite (same file settings as billd: WAL, `synchronous=FULL`) one
//! writer task commits whatever has queued up as one transaction; on
//! PostgreSQL each consume is one statement on a pool of billd's size, and
//! PostgreSQL groups the WAL flushes of concurrent commits. It runs as a
//! child process (`billd bench usage-ceiling`, hidden) so that it competes
//! for the cores exactly as `billd serve` does.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use billd_server::http::ApiKeys;
use secrecy::SecretString;
use serde::Deserialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::{mpsc, oneshot};

/// Most consumes in one SQLite commit (billd's usage writer's bound).
const MAX_BATCH: usize = 512;

/// PostgreSQL connections (billd's pool size).
const PG_CONNECTIONS: u32 = 16;

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

struct Job {
    customer: String,
    key: String,
    reply: oneshot::Sender<Result<Option<i64>, sqlx::Error>>,
}

#[derive(Clone)]
enum Db {
    /// The writer task's queue.
    Sqlite(mpsc::Sender<Job>),
    Postgres(PgPool),
}

#[derive(Clone)]
struct Ceiling {
    db: Db,
    limit: i64,
    counters: Arc<str>,
    requests: Arc<str>,
}

/// Serves until killed.
pub async fn run(args: &CeilingArgs) -> anyhow::Result<()> {
    let counters: Arc<str> = format!("{}_counters", args.prefix).into();
    let requests: Arc<str> = format!("{}_requests", args.prefix).into();
    let schema = [
        format!("DROP TABLE IF EXISTS {requests}"),
        format!("DROP TABLE IF EXISTS {counters}"),
        format!("CREATE TABLE {counters} (customer_id TEXT PRIMARY KEY, used BIGINT NOT NULL)"),
        format!(
            "CREATE TABLE {requests} (customer_id TEXT NOT NULL, idempotency_key TEXT NOT NULL, \
             used BIGINT NOT NULL, PRIMARY KEY (customer_id, idempotency_key))"
        ),
    ];
    let seed = format!("INSERT INTO {counters} (customer_id, used) VALUES ($1, 0)");
    let db = if args.database_url.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&args.database_url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .context("opening the ceiling's SQLite file")?;
        for statement in &schema {
            sqlx::query(statement).execute(&pool).await?;
        }
        let mut tx = pool.begin().await?;
        for i in 0..args.customers {
            let customer = format!("{}{i}", args.customer_prefix);
            sqlx::query(&seed).bind(customer).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        let (jobs, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(sqlite_writer(
            pool,
            rx,
            args.limit,
            counters.clone(),
            requests.clone(),
        ));
        Db::Sqlite(jobs)
    } else {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(PG_CONNECTIONS)
            .connect(&args.database_url)
            .await
            .context("connecting to PostgreSQL")?;
        for statement in &schema {
            sqlx::query(statement).execute(&pool).await?;
        }
        let mut tx = pool.begin().await?;
        for i in 0..args.customers {
            let customer = format!("{}{i}", args.customer_prefix);
            sqlx::query(&seed).bind(customer).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Db::Postgres(pool)
    };
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
        .with_state(Ceiling {
            db,
            limit: args.limit,
            counters,
            requests,
        })
        .layer(axum::middleware::from_fn(billd_server::http::shape));
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    axum::serve(listener, router).await?;
    Ok(())
}

async fn consume(
    State(state): State<Ceiling>,
    Path((customer, _feature)): Path<(String, String)>,
    Json(body): Json<Body>,
) -> Response {
    let used = match &state.db {
        Db::Sqlite(jobs) => {
            let (reply, answer) = oneshot::channel();
            let job = Job {
                customer,
                key: body.idempotency_key,
                reply,
            };
            if jobs.send(job).await.is_err() {
                return StatusCode::SERVICE_UNAVAILABLE.into_response();
            }
            answer.await.unwrap_or(Err(sqlx::Error::PoolClosed))
        }
        Db::Postgres(pool) => {
            let sql = format!(
                "WITH bump AS (UPDATE {c} SET used = used + 1 \
                   WHERE customer_id = $1 AND used + 1 <= $3 RETURNING used) \
                 INSERT INTO {r} (customer_id, idempotency_key, used) \
                 SELECT $1, $2, used FROM bump RETURNING used",
                c = state.counters,
                r = state.requests
            );
            sqlx::query_scalar(&sql)
                .bind(&customer)
                .bind(&body.idempotency_key)
                .bind(state.limit)
                .fetch_optional(pool)
                .await
        }
    };
    match used {
        Ok(Some(used)) => {
            Json(serde_json::json!({ "used": used, "limit": state.limit })).into_response()
        }
        Ok(None) => StatusCode::PAYMENT_REQUIRED.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

/// Commits whatever has queued up as one transaction: per consume, the
/// conditional UPDATE, then the key's INSERT when it applied.
async fn sqlite_writer(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Job>,
    limit: i64,
    counters: Arc<str>,
    requests: Arc<str>,
) {
    let bump = format!(
        "UPDATE {counters} SET used = used + 1 WHERE customer_id = $1 AND used + 1 <= $2 \
         RETURNING used"
    );
    let record =
        format!("INSERT INTO {requests} (customer_id, idempotency_key, used) VALUES ($1, $2, $3)");
    let mut jobs = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
        let outcome: Result<Vec<Option<i64>>, sqlx::Error> = async {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut answers = Vec::with_capacity(jobs.len());
            for job in &jobs {
                let used: Option<i64> = sqlx::query_scalar(&bump)
                    .bind(&job.customer)
                    .bind(limit)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(used) = used {
                    sqlx::query(&record)
                        .bind(&job.customer)
                        .bind(&job.key)
                        .bind(used)
                        .execute(&mut *tx)
                        .await?;
                }
                answers.push(used);
            }
            tx.commit().await?;
            Ok(answers)
        }
        .await;
        match outcome {
            Ok(answers) => {
                for (job, answer) in jobs.drain(..).zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(_) => {
                // A failed batch answers 503 to all of it; the bench
                // counts only 200s.
                for job in jobs.drain(..) {
                    let _ = job.reply.send(Err(sqlx::Error::PoolClosed));
                }
            }
        }
    }
}
