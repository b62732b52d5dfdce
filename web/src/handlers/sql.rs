//! User SQL: the console page (`/sql`) and `POST /api/v1/sql`, both run
//! through [`SqlEngine::user_query`](crate::sql::SqlEngine::user_query),
//! on the user-query pool with its own limits.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parallax_core::client::percent_encode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::app::App;
use crate::body_limit::too_large;
use crate::error::{PageAnswer, WebError};
use crate::pages::{Cell, Page, SqlConsole, SqlTable};

/// The console and the API.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/sql", get(sql_page_get).post(sql_page_post))
        .route("/api/v1/sql", post(sql_api))
}

#[derive(Debug, Deserialize)]
struct SqlRequest {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

async fn sql_api(
    State(app): State<App>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, WebError> {
    let body = body.map_err(|_| too_large(&app))?;
    let req: SqlRequest = serde_json::from_slice(&body).map_err(|e| {
        WebError::BadRequest(format!(
            "{e}. Fix: send {{\"sql\": \"SELECT ...\", \"format\": \"json\" | \"csv\" | \"arrow\"}}"
        ))
    })?;
    let format = req.format.as_deref().unwrap_or("json");
    if !matches!(format, "json" | "csv" | "arrow") {
        return Err(WebError::BadRequest(format!(
            "format `{format}` is not one of json, csv, arrow"
        )));
    }
    let result = app.sql().user_query(&req.sql).await?;
    Ok(match format {
        "csv" => (
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            result.csv()?,
        )
            .into_response(),
        "arrow" => (
            [(header::CONTENT_TYPE, "application/vnd.apache.arrow.stream")],
            result.arrow_ipc()?,
        )
            .into_response(),
        _ => Json(json!({
            "columns": result.columns(),
            "rows": result.json_rows(),
            "truncated": result.truncated,
            "elapsed_ms": result.elapsed.as_secs_f64() * 1e3,
        }))
        .into_response(),
    })
}

/// Example queries on the console.
const EXAMPLES: [(&str, &str); 6] = [
    (
        "p99 latency per region, last hour",
        "SELECT region, count(*) AS requests, approx_quantile(latency_us, 0.99) / 1000 AS p99_ms\nFROM requests\nWHERE ts > now() - INTERVAL '1 hour'\nGROUP BY region ORDER BY region",
    ),
    (
        "worst replication lag by region pair, last hour",
        "SELECT src, dst, max(lag_ms) AS worst_ms, approx_quantile(lag_ms, 0.99) AS p99_ms\nFROM replication_lag\nWHERE ts > now() - INTERVAL '1 hour'\nGROUP BY src, dst ORDER BY worst_ms DESC",
    ),
    (
        "conflicts by class and outcome, today",
        "SELECT class, outcome, count(*) AS n\nFROM conflicts\nWHERE date = current_date()\nGROUP BY class, outcome ORDER BY n DESC",
    ),
    (
        "errors per hour in one region, 30 days (whole hours by partition: fast)",
        "SELECT date, hour, count(*) AS requests, count(*) FILTER (WHERE status >= 500) AS errors\nFROM requests\nWHERE region = 'us-east' AND date >= current_date() - INTERVAL '30 days'\nGROUP BY date, hour ORDER BY date, hour",
    ),
    (
        "p99 latency by class, 30 days (from the hourly latency rollup: fast)",
        "SELECT class, sum(requests) AS requests, approx_quantile(latency_us, 0.99) / 1000 AS p99_ms\nFROM latency_1h\nWHERE ts > now() - INTERVAL '30 days'\nGROUP BY class ORDER BY p99_ms DESC",
    ),
    (
        "divergent keys",
        "SELECT ts, class, key, regions, state, reason, age_ms\nFROM divergence\nWHERE state = 'divergent'\nORDER BY ts DESC LIMIT 100",
    ),
];

#[derive(Debug, Default, Deserialize)]
struct SqlForm {
    #[serde(default)]
    sql: Option<String>,
}

async fn sql_page_get(State(app): State<App>, Query(form): Query<SqlForm>) -> PageAnswer {
    sql_page(app, form.sql).await
}

async fn sql_page_post(State(app): State<App>, form: axum::Form<SqlForm>) -> PageAnswer {
    sql_page(app, form.0.sql).await
}

/// The console, with the answer to `text` (or why there is none) when given.
async fn sql_page(app: App, text: Option<String>) -> PageAnswer {
    let f = app.default_filters();
    let mut c = app.chrome("SQL", "/sql", f);
    c.filter_bar = false;
    let limits = app.sql().limits();
    let mut console = SqlConsole {
        text: text.clone().unwrap_or_else(|| EXAMPLES[0].1.to_owned()),
        tables: parallax_collector::tables::TABLES
            .iter()
            .chain(&parallax_collector::rollup::ROLLUPS)
            .copied()
            .collect::<Vec<_>>()
            .join(", "),
        limits: format!(
            "{} MiB of memory, {} s, {} rows",
            limits.memory_bytes >> 20,
            limits.timeout.as_secs(),
            limits.max_rows
        ),
        result: None,
        examples: EXAMPLES
            .iter()
            .map(|(label, q)| {
                (
                    (*label).to_owned(),
                    format!("/sql?sql={}", percent_encode(q)),
                )
            })
            .collect(),
    };
    let mut status = StatusCode::OK;
    if let Some(q) = text.filter(|t| !t.trim().is_empty()) {
        match app.sql().user_query(&q).await {
            Ok(r) => {
                console.result = Some(SqlTable {
                    meta: format!(
                        "{} row{}{} in {:.1} ms",
                        r.num_rows(),
                        if r.num_rows() == 1 { "" } else { "s" },
                        if r.truncated {
                            " (more were cut off by the row limit)"
                        } else {
                            ""
                        },
                        r.elapsed.as_secs_f64() * 1e3
                    ),
                    headers: r.columns(),
                    rows: r
                        .json_rows()
                        .into_iter()
                        .map(|row| {
                            row.into_iter()
                                .map(|v| match v {
                                    Value::Number(n) => Cell::n(n.as_f64().unwrap_or(f64::NAN)),
                                    Value::String(s) => Cell::t(s),
                                    Value::Null => Cell::t("NULL"),
                                    other => Cell::t(other.to_string()),
                                })
                                .collect()
                        })
                        .collect(),
                });
            }
            Err(e) => {
                let e = WebError::Sql(e);
                status = e.status();
                c.error = Some(format!("{} ({}): {e}", e.code(), status.as_u16()));
            }
        }
    }
    let mut page = Page::new(c, Vec::new());
    page.sql = Some(console);
    PageAnswer::with_status(page, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql::{SqlEngine, SqlLimits};

    /// Every example on the console runs (on empty tables: what matters is
    /// that it parses, plans and is allowed).
    #[tokio::test]
    async fn every_console_example_runs() {
        let dir = tempfile::tempdir().unwrap();
        let e = SqlEngine::open(dir.path(), SqlLimits::default())
            .await
            .unwrap();
        for (name, sql) in EXAMPLES {
            if let Err(err) = e.query(sql).await {
                panic!("{name}: {err}");
            }
        }
    }
}
