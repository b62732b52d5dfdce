//! The repair actions, carried out by a region with the admin token:
//! resolving a conflicted entity of the reconciliation queue, and running
//! anti-entropy now. Each has a form (answered with a redirect back to its
//! page) and an API twin.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Redirect;
use axum::routing::post;
use axum::{Json, Router};
use parallax_core::api::Resolution;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::{WRONG_TOKEN, back, require_admin};
use crate::app::App;
use crate::error::WebError;
use crate::filters::FilterQuery;

/// The forms and their API twins.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/conflicts/resolve", post(resolve_form))
        .route("/api/v1/conflicts/{class}/{key}/resolve", post(resolve_api))
        .route("/anti-entropy", post(anti_entropy_form))
        .route("/api/v1/anti-entropy", post(anti_entropy_api))
}

#[derive(Debug, Deserialize)]
struct ResolveForm {
    class: String,
    key: String,
    region: String,
    #[serde(default)]
    choice: Option<String>,
    #[serde(default)]
    value: Option<String>,
    admin_token: String,
}

async fn resolve_form(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    body: axum::Form<ResolveForm>,
) -> Redirect {
    let form = body.0;
    if !app.admin_ok(&form.admin_token) {
        return back("/conflicts", &q, Err(WRONG_TOKEN.into()));
    }
    let resolution = match form.choice.as_deref() {
        Some("custom") | None => {
            match serde_json::from_str::<Value>(form.value.as_deref().unwrap_or("")) {
                Ok(v) => Resolution::Value(v),
                Err(e) => {
                    return back(
                        "/conflicts",
                        &q,
                        Err(format!(
                            "The value is not JSON ({e}). Fix: e.g. {{\"reconciled\": true}}"
                        )),
                    );
                }
            }
        }
        Some(i) => {
            let Ok(i) = i.parse::<usize>() else {
                return back(
                    "/conflicts",
                    &q,
                    Err(format!("choice `{i}` is not a sibling number")),
                );
            };
            match app
                .regions()
                .sibling(&form.region, &form.class, &form.key, i)
                .await
            {
                Ok(Some(v)) => Resolution::Value(v),
                Ok(None) => Resolution::Delete,
                Err(e) => return back("/conflicts", &q, Err(e.to_string())),
            }
        }
    };
    let out = app
        .regions()
        .resolve(&form.region, &form.class, &form.key, resolution)
        .await
        .map_err(|e| e.to_string());
    back("/conflicts", &q, out)
}

async fn resolve_api(
    State(app): State<App>,
    Path((class, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, WebError> {
    require_admin(&app, &headers)?;
    let Ok(Json(body)) = body else {
        return Err(WebError::BadRequest(
            "send {\"value\": <reconciled JSON>} or {\"delete\": true}, optionally with \"region\""
                .into(),
        ));
    };
    let region = body["region"]
        .as_str()
        .map_or_else(|| app.config().primary().to_owned(), str::to_owned);
    let r = if body["delete"] == Value::Bool(true) {
        Resolution::Delete
    } else if let Some(v) = body.get("value") {
        Resolution::Value(v.clone())
    } else {
        return Err(WebError::BadRequest(
            "send {\"value\": <reconciled JSON>} or {\"delete\": true}".into(),
        ));
    };
    let m = app
        .regions()
        .resolve(&region, &class, &key, r)
        .await
        .map_err(WebError::ResolveFailed)?;
    Ok(Json(json!({ "resolved": true, "detail": m })))
}

#[derive(Debug, Deserialize)]
struct AntiEntropyForm {
    region: String,
    admin_token: String,
}

async fn anti_entropy_form(
    State(app): State<App>,
    Query(q): Query<FilterQuery>,
    body: axum::Form<AntiEntropyForm>,
) -> Redirect {
    if !app.admin_ok(&body.admin_token) {
        return back("/divergence", &q, Err(WRONG_TOKEN.into()));
    }
    let out = app
        .regions()
        .anti_entropy(&body.region)
        .await
        .map(|reports| {
            let pulled: u64 = reports
                .iter()
                .flat_map(|p| &p.classes)
                .map(|c| c.pulled + c.pushed)
                .sum();
            format!(
                "Anti-entropy ran in {}: {pulled} entities repaired.",
                body.region
            )
        })
        .map_err(|e| e.to_string());
    back("/divergence", &q, out)
}

async fn anti_entropy_api(
    State(app): State<App>,
    headers: HeaderMap,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, WebError> {
    require_admin(&app, &headers)?;
    let region = body
        .ok()
        .and_then(|b| b.0["region"].as_str().map(str::to_owned))
        .unwrap_or_else(|| app.config().primary().to_owned());
    let reports = app
        .regions()
        .anti_entropy(&region)
        .await
        .map_err(WebError::AntiEntropyFailed)?;
    Ok(Json(json!({ "region": region, "reports": reports })))
}
