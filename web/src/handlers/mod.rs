//! The request handlers, by area, and what they share: the JSON error
//! answer, the HTML page answer, the admin token check and the redirect
//! back to a page after a form.

pub(crate) mod alerts;
pub(crate) mod dashboards;
pub(crate) mod repair;
pub(crate) mod sql;

use askama::Template;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use parallax_replicator::client::percent_encode;
use serde_json::json;

use crate::filters::FilterQuery;
use crate::pages::Page;
use crate::sql::SqlError;

/// A JSON error answer.
pub fn error(status: u16, code: &str, detail: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        axum::Json(json!({ "error": code, "detail": detail })),
    )
        .into_response()
}

/// What a form with the wrong admin token is told.
pub(crate) const WRONG_TOKEN: &str =
    "The admin token is wrong. Fix: use cluster.admin_token from the config.";

/// 401 for an API action without the admin token.
pub(crate) fn unauthorized() -> Response {
    error(
        401,
        "unauthorized",
        "send Authorization: Bearer <cluster.admin_token>",
    )
}

pub(crate) fn sql_error(e: &SqlError) -> Response {
    error(e.status(), e.code(), &e.to_string())
}

pub(crate) fn html(page: &Page, status: StatusCode) -> Response {
    match page.render() {
        Ok(body) => (status, Html(body)).into_response(),
        Err(e) => error(500, "render_failed", &e.to_string()),
    }
}

/// The bearer token of a request, empty without one.
pub(crate) fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
}

/// Back to `path` after a form, with the page's filters and the outcome
/// to show once.
pub(crate) fn back(path: &str, q: &FilterQuery, ok: Result<String, String>) -> Response {
    let f = FilterQuery {
        flash: None,
        failed: None,
        ..q.clone()
    };
    let mut qs = Vec::new();
    for (k, v) in [
        ("range", &f.range),
        ("from", &f.from),
        ("to", &f.to),
        ("region", &f.region),
        ("class", &f.class),
    ] {
        if let Some(v) = v {
            qs.push(format!("{k}={}", percent_encode(v)));
        }
    }
    match ok {
        Ok(m) => qs.push(format!("flash={}", percent_encode(&m))),
        Err(m) => qs.push(format!("failed={}", percent_encode(&m))),
    }
    Redirect::to(&format!("{path}?{}", qs.join("&"))).into_response()
}
