//! The region's HTTP API (axum).
//!
//! Client routes need `Authorization: Bearer <cluster.client_token>`;
//! `POST /v1/peer/rpc` needs the peer secret; `/healthz` and `/readyz` are
//! open. Every error is JSON `{"error": <code>, "detail": <sentence>}`.
//!
//! Class and key are path segments, percent-encoded by clients; the router
//! decodes them. The bodies and answers of the routes are the types declared
//! here (and in [`crate::protocol`]); [`crate::client`] sends and reads the
//! same types, so the two sides cannot drift apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tower_http::timeout::TimeoutLayer;

use crate::entity::Op;
use crate::error::Error;
use crate::node::{Node, ReadRequest, WriteRequest, parse_op};
use crate::protocol::{
    PeerRequest, ReadConsistency, SessionToken, WriteConsistency, decode, encode,
};
use crate::routing::{Delegation, OwnershipView};
use crate::store::{ConflictRecord, QueuedConflict};
use crate::sync::AntiEntropyReport;
use crate::telemetry::{AuditEvent, DivergenceEvent, Event, RequestEvent};
use crate::transport::{FROM_HEADER, PEER_PATH};
use crate::command::Fault;

/// Header carrying a session token (the query parameter `token` also works).
pub const TOKEN_HEADER: &str = "x-parallax-token";

/// Shared state of the handlers.
#[derive(Clone, Debug)]
pub struct ApiState {
    node: Node,
    client_token: Arc<str>,
    admin_token: Arc<str>,
    peer_secret: Arc<str>,
}

impl ApiState {
    /// State for `node`, with the tokens from its config.
    pub fn new(node: Node) -> ApiState {
        let c = &node.config().cluster;
        ApiState {
            client_token: c.client_token.as_str().into(),
            admin_token: c.admin_token.as_str().into(),
            peer_secret: c.peer_secret.as_str().into(),
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
        .route("/v1/stats", get(stats))
        .route(
            "/v1/admin/ownership",
            get(get_ownership).post(move_ownership),
        )
        .route("/v1/admin/fault", post(inject_fault))
        .route("/v1/admin/audit-records", post(audit_records))
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
    let peer = Router::new()
        .route(PEER_PATH, post(peer_rpc))
        .route("/v1/audit", post(audit_rpc))
        .layer(DefaultBodyLimit::max(limits.max_peer_body_bytes));
    Router::new()
        .merge(client)
        .merge(peer)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /v1/conflicts`: a region's reconciliation queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictList {
    /// The region that answered.
    pub region: String,
    /// Its conflicted entities.
    pub conflicts: Vec<QueuedConflict>,
}

/// `GET /v1/conflicts/log`: recorded conflict outcomes, oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictLog {
    /// The region that answered.
    pub region: String,
    /// Its records.
    pub records: Vec<ConflictRecord>,
}

/// The body of `POST /v1/conflicts/{class}/{key}/resolve`.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// `{"value": <the reconciled value>}`.
    Value(Value),
    /// `{"delete": true}`: the entity is deleted.
    Delete,
}

impl Resolution {
    /// Reads a resolve body, naming the fix when it is neither form.
    pub fn parse(body: &Value) -> Result<Resolution, Error> {
        match (body.get("value"), body.get("delete")) {
            (Some(value), None) => Ok(Resolution::Value(value.clone())),
            (None, Some(Value::Bool(true))) => Ok(Resolution::Delete),
            _ => Err(Error::BadRequest(
                "a resolution needs exactly one of \"value\" or \"delete\". \
                 Fix: send {\"value\": <the reconciled value>} or {\"delete\": true}"
                    .into(),
            )),
        }
    }
}

impl Serialize for Resolution {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        match self {
            Resolution::Value(v) => m.serialize_entry("value", v)?,
            Resolution::Delete => m.serialize_entry("delete", &true)?,
        }
        m.end()
    }
}

/// The body of `POST /v1/entities/{class}/{key}/ops`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum EntityOp {
    /// Adds `by` to a counter (negative for a pncounter).
    Incr {
        /// The amount.
        by: i64,
    },
    /// Subtracts `by` from a pncounter.
    Decr {
        /// The amount.
        by: u64,
    },
    /// Adds a member to a set.
    Add {
        /// The member (any JSON).
        member: Value,
    },
    /// Removes a member from a set.
    Remove {
        /// The member (any JSON).
        member: Value,
    },
}

/// `GET` and `POST /v1/admin/ownership`: the delegations in force and the
/// effective owner of each region's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ownership {
    /// The region that answered.
    pub region: String,
    /// Original owner -> delegation.
    pub delegations: std::collections::BTreeMap<String, Delegation>,
    /// Original owner -> who owns its keys now.
    pub owners: std::collections::BTreeMap<String, EffectiveOwner>,
}

/// Who owns a region's keys now, under which epoch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveOwner {
    /// The owning region.
    pub owner: String,
    /// The epoch of its ownership.
    pub epoch: u64,
}

/// The body of `POST /v1/admin/ownership`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveOwnership {
    /// The region whose keys move.
    pub region: String,
    /// The region taking them (the same region hands them back).
    pub delegate: String,
}

/// The body of `POST /v1/admin/fault`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRequest {
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// What to do to it.
    pub action: Fault,
}

/// What `POST /v1/admin/fault` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultAnswer {
    /// The region that changed its copy.
    pub region: String,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// What was done.
    pub action: Fault,
}

/// The body of `POST /v1/admin/anti-entropy` (empty: every peer).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AntiEntropyRequest {
    /// Only with this peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

/// What `POST /v1/admin/anti-entropy` answers: one report per peer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyAnswer {
    /// The region that ran it.
    pub region: String,
    /// One report per peer.
    pub reports: Vec<AntiEntropyReport>,
}

/// The body of `POST /v1/admin/audit-records`: the rows of the `audits`
/// and `divergence` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditRecords {
    /// One row per audited class.
    pub audits: Vec<AuditEvent>,
    /// One row per key found differing.
    pub records: Vec<DivergenceEvent>,
}

/// What `POST /v1/admin/audit-records` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecordsAnswer {
    /// The region whose collector keeps them.
    pub region: String,
    /// Rows of `audits` taken.
    pub audits: usize,
    /// Rows of `divergence` taken.
    pub records: usize,
}

/// What `/healthz` and `/readyz` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: String,
    /// The region that answered.
    pub region: String,
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

/// Header naming where the client is (for the `requests` table).
pub const CLIENT_GEO_HEADER: &str = "x-parallax-client-geo";

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

/// Compares a secret with what a request presented in time that does not
/// depend on where they first differ (only on the length), so the time of
/// a refusal does not tell an attacker how much of a token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn authorize(headers: &HeaderMap, accepted: &[(&str, &str)]) -> Result<(), Error> {
    let names: Vec<&str> = accepted.iter().map(|(name, _)| *name).collect();
    let Some(given) = bearer(headers) else {
        return Err(Error::Unauthorized(format!(
            "missing bearer token. Fix: send `Authorization: Bearer <{}>` from the cluster config",
            names.join("> or <")
        )));
    };
    if accepted
        .iter()
        .any(|(_, t)| constant_time_eq(given.as_bytes(), t.as_bytes()))
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
    authorize(
        headers,
        &[
            ("cluster.client_token", &state.client_token),
            ("cluster.admin_token", &state.admin_token),
        ],
    )
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

async fn get_entity(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let mut meta = Meta {
        op: "get",
        class: String::new(),
        consistency: "local".into(),
        client_geo: client_geo(&headers),
    };
    let result = async {
        client_auth(&state, &headers)?;
        let Path((class, key)) = path.map_err(path_error)?;
        meta.class.clone_from(&class);
        let Query(params) = query.map_err(query_error)?;
        let default_bound = state
            .node
            .config()
            .classes
            .get(&class)
            .map_or(5_000, |c| c.bounded_staleness_ms);
        let consistency = ReadConsistency::parse(
            params.consistency.as_deref(),
            staleness(&params)?,
            default_bound,
        )?;
        meta.consistency = consistency.name().to_owned();
        let session = session(&headers, &params)?;
        let out = state
            .node
            .read(
                ReadRequest {
                    class,
                    key,
                    consistency,
                    session,
                },
                None,
            )
            .await?;
        let served = out.served_by.clone();
        Ok((json_response(StatusCode::OK, &out), served))
    }
    .await;
    finish(&state, meta, started, result)
}

async fn write(
    state: &ApiState,
    op_name: &'static str,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: &HeaderMap,
    make_op: impl FnOnce(&str) -> Result<Op, Error>,
) -> Response {
    let started = Instant::now();
    let mut meta = Meta {
        op: op_name,
        class: String::new(),
        consistency: "async".into(),
        client_geo: client_geo(headers),
    };
    let result = async {
        client_auth(state, headers)?;
        let Path((class, key)) = path.map_err(path_error)?;
        meta.class.clone_from(&class);
        let Query(params) = query.map_err(query_error)?;
        let consistency = WriteConsistency::parse(params.consistency.as_deref())?;
        meta.consistency = consistency.name().to_owned();
        let session = session(headers, &params)?;
        let op = make_op(&class)?;
        meta.op = op.kind().as_str();
        let out = state
            .node
            .write(
                WriteRequest {
                    class,
                    key,
                    op,
                    consistency,
                    session,
                    home: params.home,
                },
                None,
            )
            .await?;
        let served = out.served_by.clone();
        let mut response = json_response(StatusCode::OK, &out);
        if let Ok(v) = HeaderValue::from_str(&out.token) {
            response.headers_mut().insert(TOKEN_HEADER, v);
        }
        Ok((response, served))
    }
    .await;
    finish(state, meta, started, result)
}

async fn put_entity(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    write(&state, "put", path, query, &headers, |_| {
        let body = body.map_err(|e| body_error(e, limit))?;
        Ok(Op::Put(parse_json(&body)?))
    })
    .await
}

async fn delete_entity(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    write(&state, "delete", path, query, &headers, |_| Ok(Op::Delete)).await
}

async fn post_op(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    write(&state, "op", path, query, &headers, |class| {
        let body = body.map_err(|e| body_error(e, limit))?;
        parse_op(&parse_json(&body)?, class)
    })
    .await
}

async fn resolve(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    write(&state, "resolve", path, query, &headers, |_| {
        let body = body.map_err(|e| body_error(e, limit))?;
        Ok(match Resolution::parse(&parse_json(&body)?)? {
            Resolution::Value(v) => Op::Resolve(Some(v)),
            Resolution::Delete => Op::Resolve(None),
        })
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    class: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

async fn list_conflicts(
    State(state): State<ApiState>,
    query: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        client_auth(&state, &headers)?;
        let Query(p) = query.map_err(|e| {
            Error::BadRequest(format!("bad query: {e}. Fix: use class= and limit="))
        })?;
        let queue = state
            .node
            .queue(p.class.as_deref(), p.limit.unwrap_or(1_000))?;
        Ok(json_response(
            StatusCode::OK,
            &ConflictList {
                region: state.node.region().to_owned(),
                conflicts: queue,
            },
        ))
    })();
    result.unwrap_or_else(|e| error_response(&e))
}

async fn conflict_log(
    State(state): State<ApiState>,
    query: Result<Query<ListParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        client_auth(&state, &headers)?;
        let Query(p) = query.map_err(|e| {
            Error::BadRequest(format!("bad query: {e}. Fix: use after= and limit="))
        })?;
        let records = state
            .node
            .conflict_log(p.after.unwrap_or(0), p.limit.unwrap_or(1_000))?;
        Ok(json_response(
            StatusCode::OK,
            &ConflictLog {
                region: state.node.region().to_owned(),
                records,
            },
        ))
    })();
    result.unwrap_or_else(|e| error_response(&e))
}

async fn stats(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match client_auth(&state, &headers) {
        Ok(()) => json_response(StatusCode::OK, &state.node.stats()),
        Err(e) => error_response(&e),
    }
}

fn admin_auth(state: &ApiState, headers: &HeaderMap) -> Result<(), Error> {
    authorize(headers, &[("cluster.admin_token", &state.admin_token)])
}

fn ownership_body(state: &ApiState, view: &OwnershipView) -> Ownership {
    let owners = state
        .node
        .config()
        .regions
        .keys()
        .map(|r| {
            let (owner, epoch) = view.effective(r);
            (r.clone(), EffectiveOwner { owner, epoch })
        })
        .collect();
    Ownership {
        region: state.node.region().to_owned(),
        delegations: view.delegations.clone(),
        owners,
    }
}

async fn get_ownership(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match admin_auth(&state, &headers) {
        Ok(()) => json_response(
            StatusCode::OK,
            &ownership_body(&state, &state.node.ownership()),
        ),
        Err(e) => error_response(&e),
    }
}

async fn move_ownership(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    let result = async {
        admin_auth(&state, &headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let req: MoveOwnership = serde_json::from_value(parse_json(&body)?).map_err(|e| {
            Error::BadRequest(format!(
                "{e}. Fix: send {{\"region\": <the region whose keys move>, \"delegate\": <the region taking them>}}"
            ))
        })?;
        let view = state.node.move_ownership(&req.region, &req.delegate).await?;
        Ok(json_response(StatusCode::OK, &ownership_body(&state, &view)))
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

async fn inject_fault(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !state.node.fault_injection_allowed() {
        return error_response(&Error::NotFoundRoute);
    }
    let limit = state.node.config().limits.max_body_bytes;
    let result = async {
        admin_auth(&state, &headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let f: FaultRequest = serde_json::from_value(parse_json(&body)?).map_err(|e| {
            Error::BadRequest(format!(
                "{e}. Fix: send {{\"class\": .., \"key\": .., \"action\": \"corrupt\" | \"drop\" | \"rollback\"}}"
            ))
        })?;
        state.node.inject_fault(&f.class, &f.key, f.action).await?;
        Ok(json_response(
            StatusCode::OK,
            &FaultAnswer {
                region: state.node.region().to_owned(),
                class: f.class,
                key: f.key,
                action: f.action,
            },
        ))
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

/// The auditor hands its records to a region, whose collector keeps them.
async fn audit_records(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_peer_body_bytes;
    let result = (|| {
        admin_auth(&state, &headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let r: AuditRecords = serde_json::from_slice(&body).map_err(|e| {
            Error::BadRequest(format!(
                "{e}. Fix: send {{\"audits\": [...], \"records\": [...]}} as `parallax audit` does"
            ))
        })?;
        let (a, d) = (r.audits.len(), r.records.len());
        state.node.record_audit(r.audits, r.records);
        Ok(json_response(
            StatusCode::OK,
            &AuditRecordsAnswer {
                region: state.node.region().to_owned(),
                audits: a,
                records: d,
            },
        ))
    })();
    result.unwrap_or_else(|e| error_response(&e))
}

async fn anti_entropy(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let limit = state.node.config().limits.max_body_bytes;
    let result = async {
        admin_auth(&state, &headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let req: AntiEntropyRequest = if body.is_empty() {
            AntiEntropyRequest::default()
        } else {
            serde_json::from_value(parse_json(&body)?).map_err(|e| {
                Error::BadRequest(format!("{e}. Fix: send {{}} or {{\"peer\": <region>}}"))
            })?
        };
        let reports = state.node.run_anti_entropy(req.peer.as_deref()).await?;
        Ok(json_response(
            StatusCode::OK,
            &AntiEntropyAnswer {
                region: state.node.region().to_owned(),
                reports,
            },
        ))
    }
    .await;
    result.unwrap_or_else(|e| error_response(&e))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeParams {
    level: Option<u32>,
    index: Option<u32>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A class's Merkle tree, one node at a time, for humans.
async fn tree_json(
    State(state): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TreeParams>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let result = (|| {
        admin_auth(&state, &headers)?;
        let Path(class) = path.map_err(path_error)?;
        let Query(p) = query.map_err(|e| {
            Error::BadRequest(format!("bad query: {e}. Fix: use level= and index="))
        })?;
        let node = crate::merkle::NodeId {
            level: p.level.unwrap_or(0),
            index: p.index.unwrap_or(0),
        };
        let (req, entries) = if node.level < crate::merkle::DEPTH {
            (
                crate::protocol::TreeRequest::Children {
                    class: class.clone(),
                    nodes: vec![node],
                    small: 0,
                },
                false,
            )
        } else {
            (
                crate::protocol::TreeRequest::Entries {
                    class: class.clone(),
                    nodes: vec![node],
                },
                true,
            )
        };
        let roots = state
            .node
            .handle_tree(crate::protocol::TreeRequest::Roots {
                classes: vec![class.clone()],
            })?;
        let body = state.node.handle_tree(req)?;
        let mut out =
            serde_json::json!({ "region": state.node.region(), "class": class, "node": node });
        if let crate::protocol::TreeResponse::Roots(r) = roots {
            out["root"] = Value::from(hex(&r[0].root));
            out["entities"] = Value::from(r[0].count);
        }
        if let crate::protocol::TreeResponse::Nodes(n) = body {
            match n.into_iter().next() {
                Some(crate::protocol::NodeBody::Children(c)) if !entries => {
                    out["children"] = c
                        .chunks(crate::merkle::FINGERPRINT_BYTES)
                        .enumerate()
                        .map(|(i, fp)| serde_json::json!({ "index": node.child(i).index, "fingerprint": hex(fp) }))
                        .collect();
                }
                Some(crate::protocol::NodeBody::Entries(e)) => {
                    out["entries"] = e
                        .iter()
                        .map(|e| serde_json::json!({ "key": e.key, "fingerprint": hex(&e.fp) }))
                        .collect();
                }
                _ => {}
            }
        }
        Ok(json_response(StatusCode::OK, &out))
    })();
    result.unwrap_or_else(|e| error_response(&e))
}

async fn audit_rpc(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = authorize(
        &headers,
        &[
            ("cluster.admin_token", &state.admin_token),
            ("cluster.peer_secret", &state.peer_secret),
        ],
    ) {
        return error_response(&e);
    }
    let limit = state.node.config().limits.max_peer_body_bytes;
    let req: crate::protocol::AuditRequest = match body
        .map_err(|e| body_error(e, limit))
        .and_then(|b| decode(&b))
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    use crate::protocol::{AuditRequest, AuditResponse};
    let result = match req {
        AuditRequest::Tree(t) => state.node.handle_tree(t).map(AuditResponse::Tree),
        AuditRequest::Repair(items) => state.node.repair(items).await.map(|()| AuditResponse::Done),
        AuditRequest::Replace(items) => state
            .node
            .replace(items)
            .await
            .map(|()| AuditResponse::Done),
    };
    let wire: Result<AuditResponse, crate::error::WireError> = result.map_err(|e| (&e).into());
    (
        [(header::CONTENT_TYPE, "application/msgpack")],
        encode(&wire),
    )
        .into_response()
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
    if let Err(e) = authorize(&headers, &[("cluster.peer_secret", &state.peer_secret)]) {
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
