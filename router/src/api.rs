//! The router's HTTP API.
//!
//! - `GET /v1/route?from=<location>|<lat>,<lon>[&class=C&key=K[&op=O]]`:
//!   the region to use, with a TTL (also as `Cache-Control: max-age`).
//!   Without `from`, the router's own location. 400 for bad input, 404
//!   for an unknown class, 503 when no region can be named.
//! - `GET /v1/regions`: every region's health from here, the delegations
//!   in force and the router's workers.
//! - `GET /healthz`, `GET /metrics` (Prometheus).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parallax_core::rollout::RolloutView;
use parallax_core::routing::OwnershipView;
use parallax_core::worker::WorkerStatus;
use serde::{Deserialize, Serialize};

use crate::Router;
use crate::decide::{Candidate, Refusal};
use crate::failover::Failover;
use crate::health::Health;

/// The query of `GET /v1/route`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteQuery {
    /// Where the client is: a location name or `<lat>,<lon>`; the router's
    /// own location if absent.
    pub from: Option<String>,
    /// The class of the entity the request is about.
    pub class: Option<String>,
    /// Its key.
    pub key: Option<String>,
    /// `read`, `write` (the default), `delete`, `incr`, `add`, `remove`, `resolve`.
    pub op: Option<String>,
}

/// The answer of `GET /v1/route`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteAnswer {
    /// The region to use.
    pub region: String,
    /// Its base URL.
    pub url: String,
    /// How long the answer may be cached (seconds).
    pub ttl_s: u32,
    /// Where the client was taken to be.
    pub from: String,
    /// The location of the router that answered.
    pub router: String,
    /// Why this region.
    pub why: String,
    /// The region that owns the key (or is the class's primary), when the
    /// request must reach one region.
    pub owner: Option<String>,
    /// Every region, nearest first, with its state from here.
    pub candidates: Vec<Candidate>,
}

/// The answer of `GET /v1/regions`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionsAnswer {
    /// The location of the router that answered.
    pub router: String,
    /// Every region's health from here.
    pub regions: BTreeMap<String, Health>,
    /// The ownership delegations in force, as last read.
    pub ownership: OwnershipView,
    /// The rollout stages set at runtime, as last read.
    #[serde(default)]
    pub stages: RolloutView,
    /// The last failovers this router ran (finished, then under way).
    pub failovers: Vec<Failover>,
    /// The router's workers.
    pub workers: Vec<WorkerStatus>,
}

/// A refusal as JSON: `{"error": <code>, "detail": <sentence>}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RouteError {
    /// `bad_request`, `not_found` or `unavailable`.
    pub error: String,
    /// What failed, on what input, and what to do.
    pub detail: String,
}

/// The router's routes.
pub fn app(router: Router) -> axum::Router {
    axum::Router::new()
        .route("/v1/route", get(route))
        .route("/v1/regions", get(regions))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            refusal(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such route. Fix: GET /v1/route, /v1/regions, /healthz or /metrics".into(),
            )
        })
        .with_state(router)
}

fn refusal(status: StatusCode, error: &str, detail: String) -> Response {
    (
        status,
        Json(RouteError {
            error: error.to_owned(),
            detail,
        }),
    )
        .into_response()
}

async fn route(
    State(router): State<Router>,
    query: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            router.inner.metrics.answer("", 400);
            return refusal(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "{}. Fix: GET /v1/route?from=<location>|<lat>,<lon>[&class=C&key=K&op=write]",
                    e.body_text()
                ),
            );
        }
    };
    match router.route(&q) {
        Ok(answer) => {
            router.inner.metrics.answer(&answer.region, 200);
            let cache = format!("max-age={}", answer.ttl_s);
            ([(header::CACHE_CONTROL, cache)], Json(answer)).into_response()
        }
        Err(r) => {
            let (status, code) = match &r {
                Refusal::Bad(_) => (StatusCode::BAD_REQUEST, "bad_request"),
                Refusal::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
                Refusal::NoRegion(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            router.inner.metrics.answer("", status.as_u16());
            refusal(status, code, r.message().to_owned())
        }
    }
}

async fn regions(State(router): State<Router>) -> Json<RegionsAnswer> {
    Json(RegionsAnswer {
        router: router.location().to_owned(),
        regions: router.health(),
        ownership: router.ownership(),
        stages: router.stages(),
        failovers: router.failovers(),
        workers: router.workers(),
    })
}

async fn metrics(State(router): State<Router>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        router.metrics_text(),
    )
        .into_response()
}
