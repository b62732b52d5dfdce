//! The router: every area's routes, under one layer stack. From the
//! outside in: a trace span per request (method and path) and an event
//! when it is answered (status and latency); the bound on requests served
//! at once ([`crate::admission`]); a time limit; the bound on bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::admission::{self, InFlight, RequestLimits};
use crate::app::App;
use crate::error::WebError;
use crate::handlers;

/// The web app's router, with the default [`RequestLimits`].
pub fn router(app: App) -> Router {
    router_with_limits(app, RequestLimits::default())
}

/// The web app's router, serving at most `limits` requests at once.
pub fn router_with_limits(app: App, limits: RequestLimits) -> Router {
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
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(InFlight::new(limits)),
            admission::admit,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    tracing::info_span!("request", method = %req.method(), path = req.uri().path())
                })
                .on_request(())
                .on_response(answered)
                // `answered` has said it; the default would say it again as an ERROR.
                .on_failure(()),
        )
        .with_state(app)
}

/// The event of an answer, in its request's span: DEBUG, or WARN for a
/// 5xx (the app failed, or shed load).
fn answered(resp: &Response, latency: Duration, _span: &Span) {
    let status = resp.status().as_u16();
    let latency_ms = latency.as_secs_f64() * 1e3;
    if resp.status().is_server_error() {
        tracing::warn!(status, latency_ms, "answered with a server error");
    } else {
        tracing::debug!(status, latency_ms, "answered");
    }
}

/// The largest request body the app takes.
const MAX_BODY_BYTES: usize = 1 << 20;

/// How much of a too-large body is read (and dropped) before the 413.
const MAX_DRAIN_BYTES: usize = 64 << 20;

/// Reads a request body of at most [`MAX_BODY_BYTES`] before the route
/// sees it; a larger one is answered 413 naming the limit and the fix.
/// The rest of a too-large body is read and dropped first (up to
/// [`MAX_DRAIN_BYTES`]): a server that answers before the client has sent
/// everything closes a socket with unread bytes in it, which the kernel
/// turns into a reset, and the client sees the reset instead of the 413.
async fn limit_body(
    State(app): State<App>,
    req: Request,
    next: Next,
) -> Result<Response, WebError> {
    let (parts, body) = req.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_DRAIN_BYTES) {
        return Err(too_large(&app));
    }
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut read = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|_| WebError::BodyUnreadable)?;
        read += chunk.len();
        if read <= MAX_BODY_BYTES {
            kept.extend_from_slice(&chunk);
        } else if read > MAX_DRAIN_BYTES {
            return Err(too_large(&app));
        }
    }
    if read > MAX_BODY_BYTES {
        return Err(too_large(&app));
    }
    Ok(next.run(Request::from_parts(parts, Body::from(kept))).await)
}

/// 413, naming the body limit and the SQL text limit.
pub(crate) fn too_large(app: &App) -> WebError {
    WebError::TooLarge {
        body_mib: MAX_BODY_BYTES >> 20,
        sql_kib: app.sql().limits().max_sql_bytes >> 10,
    }
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}
