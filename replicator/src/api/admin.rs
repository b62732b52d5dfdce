//! Stats, ownership, drills, audits, anti-entropy and tree routes.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;

use super::*;

pub(super) async fn stats(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match client_auth(&state, &headers) {
        Ok(()) => json_response(StatusCode::OK, &state.node.stats()),
        Err(e) => error_response(&e),
    }
}

pub(super) fn admin_auth(state: &ApiState, headers: &HeaderMap) -> Result<(), Error> {
    authorize(state, headers, &[Secret::Admin])
}

pub(super) fn ownership_body(state: &ApiState, view: &OwnershipView) -> Ownership {
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

pub(super) async fn get_ownership(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match admin_auth(&state, &headers) {
        Ok(()) => json_response(
            StatusCode::OK,
            &ownership_body(&state, &state.node.ownership()),
        ),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn move_ownership(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let fix = "send {\"region\": <the region whose keys move>, \"delegate\": <the region taking them>}, \
               optionally with \"expect_epoch\" and \"unreachable_for_ms\"";
    let st = &state;
    admin_post(st, &headers, body, fix, |req: MoveOwnership| async move {
        let view = st.node.move_ownership_if(&req).await?;
        Ok(ownership_body(st, &view))
    })
    .await
}

/// An admin `POST`: checks the admin token, reads the body as `B` (a body
/// that is not one answers 400 ending with `Fix: <fix>`) and answers what
/// `act` makes of it, as JSON.
async fn admin_post<B, R, F>(
    state: &ApiState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    fix: &str,
    act: impl FnOnce(B) -> F,
) -> Response
where
    B: serde::de::DeserializeOwned,
    R: serde::Serialize,
    F: std::future::Future<Output = Result<R, Error>>,
{
    let limit = state.node.config().limits.max_body_bytes;
    let result = async {
        admin_auth(state, headers)?;
        let body = body.map_err(|e| body_error(e, limit))?;
        let req: B = serde_json::from_value(parse_json(&body)?)
            .map_err(|e| Error::BadRequest(format!("{e}. Fix: {fix}")))?;
        act(req).await
    }
    .await;
    match result {
        Ok(answer) => json_response(StatusCode::OK, &answer),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn get_rollout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    match admin_auth(&state, &headers) {
        Ok(()) => json_response(StatusCode::OK, &state.node.rollouts()),
        Err(e) => error_response(&e),
    }
}

pub(super) async fn move_rollout(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let fix = "send {\"class\": <a declared class>, \"stage\": \"active-passive\" | \"read-local\" | \
               \"limited-writes\" | \"active-active\"}, optionally with \"force\": true to skip a stage";
    let node = &state.node;
    admin_post(&state, &headers, body, fix, |req: MoveRollout| async move {
        node.move_rollout(&req).await
    })
    .await
}

pub(super) async fn inject_fault(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if !state.node.fault_injection_allowed() {
        return error_response(&Error::NotFoundRoute);
    }
    let fix =
        "send {\"class\": .., \"key\": .., \"action\": \"corrupt\" | \"drop\" | \"rollback\"}";
    let node = &state.node;
    admin_post(&state, &headers, body, fix, |f: FaultRequest| async move {
        node.inject_fault(&f.class, &f.key, f.action).await?;
        Ok(FaultAnswer {
            region: node.region().to_owned(),
            class: f.class,
            key: f.key,
            action: f.action,
        })
    })
    .await
}

/// The auditor hands its records to a region, whose collector keeps them.
pub(super) async fn audit_records(
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

pub(super) async fn failover_records(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let fix = "send {\"failovers\": [...]} as `parallax router` does";
    let node = &state.node;
    admin_post(
        &state,
        &headers,
        body,
        fix,
        |r: FailoverRecords| async move {
            let n = r.failovers.len();
            node.record_failovers(r.failovers);
            Ok(FailoverRecordsAnswer {
                region: node.region().to_owned(),
                failovers: n,
            })
        },
    )
    .await
}

pub(super) async fn anti_entropy(
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
pub(super) struct TreeParams {
    level: Option<u32>,
    index: Option<u32>,
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A class's Merkle tree, one node at a time, for humans.
pub(super) async fn tree_json(
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
        let node = parallax_core::merkle::NodeId {
            level: p.level.unwrap_or(0),
            index: p.index.unwrap_or(0),
        };
        let (req, entries) = if node.level < parallax_core::merkle::DEPTH {
            (
                parallax_core::protocol::TreeRequest::Children {
                    class: class.clone(),
                    nodes: vec![node],
                    small: 0,
                },
                false,
            )
        } else {
            (
                parallax_core::protocol::TreeRequest::Entries {
                    class: class.clone(),
                    nodes: vec![node],
                },
                true,
            )
        };
        let roots = state
            .node
            .handle_tree(parallax_core::protocol::TreeRequest::Roots {
                classes: vec![class.clone()],
            })?;
        let body = state.node.handle_tree(req)?;
        let mut out =
            serde_json::json!({ "region": state.node.region(), "class": class, "node": node });
        if let parallax_core::protocol::TreeResponse::Roots(r) = roots {
            out["root"] = Value::from(hex(&r[0].root));
            out["entities"] = Value::from(r[0].count);
        }
        if let parallax_core::protocol::TreeResponse::Nodes(n) = body {
            match n.into_iter().next() {
                Some(parallax_core::protocol::NodeBody::Children(c)) if !entries => {
                    out["children"] = c
                        .chunks(parallax_core::merkle::FINGERPRINT_BYTES)
                        .enumerate()
                        .map(|(i, fp)| serde_json::json!({ "index": node.child(i).index, "fingerprint": hex(fp) }))
                        .collect();
                }
                Some(parallax_core::protocol::NodeBody::Entries(e)) => {
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

pub(super) async fn audit_rpc(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = authorize(&state, &headers, &[Secret::Admin, Secret::Peer]) {
        return error_response(&e);
    }
    let limit = state.node.config().limits.max_peer_body_bytes;
    let req: parallax_core::protocol::AuditRequest = match body
        .map_err(|e| body_error(e, limit))
        .and_then(|b| decode(&b))
    {
        Ok(r) => r,
        Err(e) => return error_response(&e),
    };
    use parallax_core::protocol::{AuditRequest, AuditResponse};
    let result = match req {
        AuditRequest::Tree(t) => state.node.handle_tree(t).map(AuditResponse::Tree),
        AuditRequest::Repair(items) => state.node.repair(items).await.map(|()| AuditResponse::Done),
        AuditRequest::Replace(items) => state
            .node
            .replace(items)
            .await
            .map(|()| AuditResponse::Done),
    };
    let wire: Result<AuditResponse, parallax_core::error::WireError> =
        result.map_err(|e| (&e).into());
    (
        [(header::CONTENT_TYPE, "application/msgpack")],
        encode(&wire),
    )
        .into_response()
}

/// Bytes of a backup sent to the client at a time.
const BACKUP_CHUNK: usize = 256 << 10;

/// Hands what the backup writes to the response body in chunks; fails
/// (ending the backup) once the client is gone.
struct ToBody {
    tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    buf: Vec<u8>,
}

impl std::io::Write for ToBody {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= BACKUP_CHUNK {
            self.flush()?;
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client left"))
    }
}

/// `GET /v1/admin/backup`: a consistent snapshot of the store in the
/// backup format, streamed as it is read. A failure midway ends the body
/// early, before the trailer, so the file is refused by `parallax restore`.
pub(super) async fn backup(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(e) = admin_auth(&state, &headers) {
        return error_response(&e);
    }
    let Ok(one_at_a_time) = Arc::clone(&state.backups).try_acquire_owned() else {
        return error_response(&Error::Precondition(format!(
            "a backup of {} is already being taken. Fix: wait for it to finish (one at a time)",
            state.node.region()
        )));
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let node = state.node.clone();
    tokio::task::spawn_blocking(move || {
        // Held until the snapshot is sent or the client has left.
        let _one_at_a_time = one_at_a_time;
        let mut out = ToBody {
            tx: tx.clone(),
            buf: Vec::with_capacity(BACKUP_CHUNK),
        };
        match node.backup(&mut out) {
            Ok(s) => tracing::info!(entities = s.entities, records = s.records, "backup sent"),
            Err(e) => {
                tracing::warn!(error = %e, "backup failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}.parallax-backup\"",
                    state.node.region()
                ),
            ),
        ],
        axum::body::Body::from_stream(chunks),
    )
        .into_response()
}
