//! The region's HTTP API (axum).
//!
//! Client routes need `Authorization: Bearer <cluster.client_token>`;
//! `POST /v1/peer/rpc` needs the peer secret; `/healthz` and `/readyz` are
//! open. Every error is JSON `{"error": <code>, "detail": <sentence>}`.
//!
//! Class and key are path segments, percent-encoded by clients; the router
//! decodes them. The bodies and answers of the routes are the types declared
//! here (and in [`parallax_core::protocol`]); [`parallax_core::client`] sends and reads the
//! same types, so the two sides cannot drift apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use parallax_core::entity::Op;
use parallax_core::error::Error;
use parallax_core::protocol::{
    PeerRequest, ReadConsistency, SessionToken, WriteConsistency, decode, encode,
};
use parallax_core::routing::OwnershipView;
use parallax_core::secrets::Secrets;
use parallax_core::telemetry::{Event, RequestEvent};
use parallax_core::transport::{FROM_HEADER, PEER_PATH};
use serde::Deserialize;
use serde_json::Value;
use tower_http::timeout::TimeoutLayer;

use crate::node::{Node, ReadRequest, WriteRequest};

mod admin;
mod entities;
mod feed;

pub use parallax_core::api::*;

use admin::{
    anti_entropy, audit_records, audit_rpc, failover_records, get_ownership, get_rollout,
    inject_fault, move_ownership, move_rollout, stats, tree_json,
};
use entities::{
    conflict_log, delete_entity, get_entity, list_conflicts, post_op, put_entity, resolve,
};

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    node: Node,
    /// Change-feed readers at once (`limits.max_feed_readers`).
    feed_readers: Arc<tokio::sync::Semaphore>,
    /// Backups at once: one (each holds a read snapshot of the whole store
    /// and streams it; a second would double the pinned pages for nothing).
    backups: Arc<tokio::sync::Semaphore>,
}

impl ApiState {
    /// State for `node` (its secrets are the ones it accepts, read at each
    /// request, so a reload takes effect at once).
    pub fn new(node: Node) -> ApiState {
        ApiState {
            backups: Arc::new(tokio::sync::Semaphore::new(1)),
            feed_readers: Arc::new(tokio::sync::Semaphore::new(
                node.config().limits.max_feed_readers,
            )),
            node,
        }
    }
}

/// The region's router: client API, region-to-region endpoint, health.
pub fn router(node: Node) -> Router {
    let limits = node.config().limits.clone();
    let state = ApiState::new(node);
    let client = Router::new()
        .route(
            "/v1/entities/{class}/{key}",
            get(get_entity).put(put_entity).delete(delete_entity),
        )
        .route("/v1/entities/{class}/{key}/ops", post(post_op))
        .route("/v1/conflicts", get(list_conflicts))
        .route("/v1/conflicts/log", get(conflict_log))
        .route("/v1/conflicts/{class}/{key}/resolve", post(resolve))
        .route("/v1/cache-reports", post(feed::cache_report))
        .route("/v1/stats", get(stats))
        .route(
            "/v1/admin/ownership",
            get(get_ownership).post(move_ownership),
        )
        .route("/v1/admin/rollout", get(get_rollout).post(move_rollout))
        .route("/v1/admin/fault", post(inject_fault))
        .route("/v1/admin/audit-records", post(audit_records))
        .route("/v1/admin/failovers", post(failover_records))
        .route("/v1/admin/anti-entropy", post(anti_entropy))
        .route("/v1/tree/{class}", get(tree_json))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(limits.request_timeout_ms),
        ))
        .layer(tower::limit::ConcurrencyLimitLayer::new(
            limits.max_concurrent_requests,
        ));
    // Feed readers wait (long polls) or stay (streams): outside the
    // concurrency limit of the other client requests, under their own.
    let feed = Router::new()
        .route("/v1/changes", get(feed::changes))
        .route("/v1/changes/stream", get(feed::stream))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(limits.request_timeout_ms),
        ));
    let peer = Router::new()
        .route(PEER_PATH, post(peer_rpc))
        .route("/v1/audit", post(audit_rpc))
        .layer(DefaultBodyLimit::max(limits.max_peer_body_bytes));
    Router::new()
        .merge(client)
        .merge(feed)
        .merge(peer)
        // A backup streams for as long as the store takes to read: no
        // request time limit.
        .route("/v1/admin/backup", get(admin::backup))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Query parameters of entity requests.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    consistency: Option<String>,
    token: Option<String>,
    max_staleness_ms: Option<String>,
    home: Option<String>,
}

struct Meta {
    op: &'static str,
    class: String,
    consistency: String,
    client_geo: String,
}

fn client_geo(headers: &HeaderMap) -> String {
    headers
        .get(CLIENT_GEO_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect()
}

/// Turns an [`Error`] into its JSON answer.
pub fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(e.to_api())).into_response()
}

fn json_response<T: serde::Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

fn finish(
    state: &ApiState,
    meta: Meta,
    started: Instant,
    result: Result<(Response, String), Error>,
) -> Response {
    let (response, served_by) = match result {
        Ok(r) => r,
        Err(e) => {
            if e.status() >= 500 {
                tracing::warn!(region = %state.node.region(), op = meta.op, class = %meta.class, error = %e, "Request failed.");
            }
            (error_response(&e), String::new())
        }
    };
    let node = &state.node;
    node.telemetry().emit(Event::Request(RequestEvent {
        ts_us: node.clock().now_us(),
        region: node.region().to_owned(),
        op: meta.op.to_owned(),
        class: meta.class,
        status: response.status().as_u16(),
        latency_us: started.elapsed().as_micros() as u64,
        consistency: meta.consistency,
        served_by,
        client_geo: meta.client_geo,
    }));
    response
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Which secret a route takes, and where the config names it.
#[derive(Clone, Copy, Debug)]
enum Secret {
    Client,
    Admin,
    Peer,
}

impl Secret {
    fn field(self) -> &'static str {
        match self {
            Secret::Client => "cluster.client_token",
            Secret::Admin => "cluster.admin_token",
            Secret::Peer => "cluster.peer_secret",
        }
    }

    fn accepted(self, s: &Secrets) -> &[Arc<str>] {
        match self {
            Secret::Client => &s.client,
            Secret::Admin => &s.admin,
            Secret::Peer => &s.peer,
        }
    }
}

/// Whether the request's bearer token is one of the secrets of `kinds`
/// in force now (the current ones and those `cluster.accept_*` lists).
fn authorize(state: &ApiState, headers: &HeaderMap, kinds: &[Secret]) -> Result<(), Error> {
    let names: Vec<&str> = kinds.iter().map(|k| k.field()).collect();
    let Some(given) = bearer(headers) else {
        return Err(Error::Unauthorized(format!(
            "missing bearer token. Fix: send `Authorization: Bearer <{}>` from the cluster config",
            names.join("> or <")
        )));
    };
    let secrets = state.node.secrets();
    if kinds
        .iter()
        .flat_map(|k| k.accepted(&secrets))
        .any(|t| constant_time_eq(given.as_bytes(), t.as_bytes()))
    {
        Ok(())
    } else {
        Err(Error::Unauthorized(format!(
            "the bearer token is not valid here. Fix: send the {} from the cluster config",
            names.join(" or ")
        )))
    }
}

fn client_auth(state: &ApiState, headers: &HeaderMap) -> Result<(), Error> {
    authorize(state, headers, &[Secret::Client, Secret::Admin])
}

fn path_error(e: PathRejection) -> Error {
    Error::BadRequest(format!(
        "the path is not valid: {e}. Fix: use /v1/entities/{{class}}/{{key}} with a URL-encoded key"
    ))
}

fn query_error(e: QueryRejection) -> Error {
    Error::BadRequest(format!(
        "the query string is not valid: {e}. Fix: use only consistency=, token=, max_staleness_ms= and home="
    ))
}

fn body_error(e: BytesRejection, limit: usize) -> Error {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Error::PayloadTooLarge(limit)
    } else {
        Error::BadRequest(format!("cannot read the request body: {e}"))
    }
}

fn parse_json(body: &Bytes) -> Result<Value, Error> {
    if body.is_empty() {
        return Err(Error::BadRequest(
            "the request body is empty. Fix: send a JSON value".into(),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        Error::BadRequest(format!(
            "the request body is not valid JSON: {e}. Fix: send a JSON value"
        ))
    })
}

fn session(headers: &HeaderMap, params: &Params) -> Result<Option<SessionToken>, Error> {
    let text = match headers.get(TOKEN_HEADER) {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::BadRequest(format!("the {TOKEN_HEADER} header is not text")))?,
        ),
        None => params.token.as_deref(),
    };
    text.map(str::parse).transpose()
}

fn staleness(params: &Params) -> Result<Option<u64>, Error> {
    params
        .max_staleness_ms
        .as_deref()
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                Error::BadRequest(format!(
                    "max_staleness_ms `{s}` is not a whole number of milliseconds"
                ))
            })
        })
        .transpose()
}

async fn healthz(State(state): State<ApiState>) -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
            region: state.node.region().to_owned(),
        },
    )
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.node.is_ready() {
        json_response(
            StatusCode::OK,
            &Health {
                status: "ready".into(),
                region: state.node.region().to_owned(),
            },
        )
    } else {
        error_response(&Error::ShuttingDown(state.node.region().to_owned()))
    }
}

async fn peer_rpc(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = authorize(&state, &headers, &[Secret::Peer]) {
        return error_response(&e);
    }
    let from = headers
        .get(FROM_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !state.node.config().regions.contains_key(&from) {
        return error_response(&Error::BadRequest(format!(
            "region-to-region request from `{from}`, which is not a declared region"
        )));
    }
    let limit = state.node.config().limits.max_peer_body_bytes;
    let req: PeerRequest = match body
        .map_err(|e| body_error(e, limit))
        .and_then(|b| decode(&b))
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    let reply = state.node.handle_peer(&from, req).await;
    (
        [(header::CONTENT_TYPE, "application/msgpack")],
        encode(&reply),
    )
        .into_response()
}

async fn not_found() -> Response {
    error_response(&Error::NotFoundRoute)
}

async fn method_not_allowed() -> Response {
    error_response(&Error::MethodNotAllowed)
}
