//! The router: every area's routes, under one layer stack. From the
//! outside in: a trace span per request (method and path) and an event
//! when it is answered (status and latency); its count and time in the
//! metrics ([`crate::metrics`]); the bound on requests served at once
//! ([`crate::admission`]); a time limit; the bound on bodies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use tower_http::trace::TraceLayer;
use tracing::Span;

use crate::admission::{self, InFlight, RequestLimits};
use crate::app::App;
use crate::body_limit::{self, MAX_BODY_BYTES};
use crate::handlers;
use crate::metrics;

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
        .route("/metrics", get(metrics))
        .route_service(
            &format!("{}/{{*call}}", crate::flight::FLIGHT_PATH),
            crate::flight::service(app.clone()),
        )
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            body_limit::limit_body,
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(120),
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(InFlight::new(limits)),
            admission::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            app.metrics().clone(),
            metrics::record,
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

async fn metrics(State(app): State<App>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics().render(),
    )
        .into_response()
}

async fn app_js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/app.js"),
    )
        .into_response()
}
