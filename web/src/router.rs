//! The router: every area's routes, under one layer stack (a time limit on
//! every request and a bound on request bodies).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

use crate::app::App;
use crate::handlers::{self, error};

/// The web app's router.
pub fn router(app: App) -> Router {
    handlers::dashboards::routes()
        .merge(handlers::sql::routes())
        .merge(handlers::repair::routes())
        .merge(handlers::alerts::routes())
        .route("/static/app.js", get(app_js))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            limit_body,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ))
        .with_state(app)
}

/// The largest request body the app takes.
pub(crate) const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a too-large body is read (and dropped) before the 413.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most [`MAX_BODY_BYTES`] before the route
/// sees it; a larger one is answered 413 naming the limit and the fix.
/// The rest of a too-large body is read and dropped first (up to
/// [`MAX_DRAIN_BYTES`]): a server that answers before the client has sent
/// everything closes a socket with unread bytes in it, which the kernel
/// turns into a reset, and the client sees the reset instead of the 413.
async fn limit_body(State(app): State<App>, req: Request, next: Next) -> Response {
    let too_large = || {
        error(
            413,
            "payload_too_large",
            &format!(
                "the request body is over the {} MiB limit. Fix: send a smaller body; a SQL query \
                 may be at most {} KiB, sent as {{\"sql\": \"SELECT ...\"}}",
                MAX_BODY_BYTES >> 20,
                app.sql().limits().max_sql_bytes >> 10
            ),
        )
    };
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return too_large();
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut read = 0;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return error(400, "bad_request", "the request body could not be read");
        };
        read += chunk.len();
        if read <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if read > MAX_DRAIN_BYTES {
            return too_large();
        }
    }
    if read > MAX_BODY_BYTES {
        return too_large();
    }
    next.run(Request::from_parts(parts, Body::from(kept))).await
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}
