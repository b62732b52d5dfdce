//! Entity routes: read, write, delete, operations, and the reconciliation
//! queue.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;

use super::*;

pub(super) async fn get_entity(
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

pub(super) async fn write(
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

pub(super) async fn put_entity(
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

pub(super) async fn delete_entity(
    State(state): State<ApiState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Params>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    write(&state, "delete", path, query, &headers, |_| Ok(Op::Delete)).await
}

pub(super) async fn post_op(
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

pub(super) async fn resolve(
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
pub(super) struct ListParams {
    class: Option<String>,
    limit: Option<usize>,
    after: Option<u64>,
}

pub(super) async fn list_conflicts(
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

pub(super) async fn conflict_log(
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
