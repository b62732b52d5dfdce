//! What the admin actions share: the token check of the APIs, and the
//! redirect back to a page after a form, with its outcome.

use axum::http::{HeaderMap, header};
use axum::response::Redirect;
use parallax_core::client::percent_encode;

use crate::app::App;
use crate::error::WebError;
use crate::filters::FilterQuery;

/// What a form with the wrong admin token is told.
pub(crate) const WRONG_TOKEN: &str =
    "The admin token is wrong. Fix: use cluster.admin_token from the config.";

/// An API action goes on only with `Authorization: Bearer <admin token>`.
pub(crate) fn require_admin(app: &App, headers: &HeaderMap) -> Result<(), WebError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if app.admin_ok(token) {
        Ok(())
    } else {
        Err(WebError::Unauthorized)
    }
}

/// Back to `path` after a form, with the page's filters and the outcome
/// to show once.
pub(crate) fn back(path: &str, q: &FilterQuery, ok: Result<String, String>) -> Redirect {
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
    Redirect::to(&format!("{path}?{}", qs.join("&")))
}
