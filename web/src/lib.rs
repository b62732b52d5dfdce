//! The parallax web app: SLO dashboards, SQL over the collector's Parquet
//! files, and alert rules that call webhooks.
//!
//! The data comes from the collector's tables under `<data-dir>/tables/`,
//! read through DataFusion ([`sql`]); nothing here writes them.

pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;

pub use sql::{QueryResult, SqlEngine, SqlError, SqlLimits};

/// The web app's shared state.
#[derive(Clone, Debug)]
pub struct App {
    sql: Arc<SqlEngine>,
}

impl App {
    /// An app over a SQL engine.
    pub fn new(sql: SqlEngine) -> App {
        App { sql: Arc::new(sql) }
    }

    /// The SQL engine.
    pub fn sql(&self) -> &SqlEngine {
        &self.sql
    }
}

/// The web app's router.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/api/v1/sql", post(sql_api))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ))
        .with_state(app)
}

/// A JSON error answer.
pub fn error(status: u16, code: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(serde_json::json!({ "error": code, "detail": detail })),
    )
        .into_response()
}

fn sql_error(e: &SqlError) -> Response {
    error(e.status(), e.code(), &e.to_string())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn sql_api(State(app): State<App>, body: Result<Bytes, BytesRejection>) -> Response {
    let Ok(body) = body else {
        return error(413, "payload_too_large", "the request body is over 1 MiB");
    };
    let req: SqlRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                400,
                "bad_request",
                &format!(
                    "{e}. Fix: send {{\"sql\": \"SELECT ...\", \"format\": \"json\" | \"csv\" | \"arrow\"}}"
                ),
            );
        }
    };
    let format = req.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "arrow") {
        return error(
            400,
            "bad_request",
            &format!("format `{format}` is not one of json, csv, arrow"),
        );
    }
    let result = match app.sql.query(&req.sql).await {
        Ok(r) => r,
        Err(e) => return sql_error(&e),
    };
    match format {
        "csv" => match result.csv() {
            Ok(bytes) => {
                ([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], bytes).into_response()
            }
            Err(e) => sql_error(&e),
        },
        "arrow" => match result.arrow_ipc() {
            Ok(bytes) => (
                [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
                bytes,
            )
                .into_response(),
            Err(e) => sql_error(&e),
        },
        _ => axum::Json(serde_json::json!({
            "columns": result.columns(),
            "rows": result.json_rows(),
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed.as_secs_f64() * 1e3,
        }))
        .into_response(),
    }
}
