//! The bodies and answers of the region API's routes, shared with
//! [`crate::client`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Hlc;
use crate::config::Rollout;
use crate::entity::Op;
use crate::error::{Error, Result};
use crate::routing::Delegation;
use crate::sync::AntiEntropyReport;
use crate::telemetry::{AuditEvent, DivergenceEvent, FailoverEvent};

/// Header carrying a session token (the query parameter `token` also works).
pub const TOKEN_HEADER: &str = "x-parallax-token";

/// Header naming where the client is (for the `requests` table's
/// `client_geo`, and the Failovers page's writes sent to the wrong region).
pub const CLIENT_GEO_HEADER: &str = "x-parallax-client-geo";

/// Compares a secret with what a request presented in time that does not
/// depend on where they first differ (only on the length), so the time of
/// a refusal does not tell an attacker how much of a token was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    /// Move only if the region's delegation is still at this epoch (0: never
    /// moved) after a quorum read; otherwise 409. Routers set it so that
    /// several deciding at once do not fight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_epoch: Option<u64>,
    /// Move only if the region answering has not reached `region` for at
    /// least this long (ms); otherwise 409. A router cut off from a region
    /// others still reach does not take its keys away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_for_ms: Option<u64>,
}

/// The body of `POST /v1/admin/rollout`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRollout {
    /// The class.
    pub class: String,
    /// The stage to move it to (`active-passive`, `read-local`,
    /// `limited-writes`, `active-active`).
    pub stage: String,
    /// Move even when that skips a stage.
    #[serde(default)]
    pub force: bool,
}

/// `GET /v1/admin/rollout`: every class's stage now, as one region knows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollouts {
    /// The region that answered.
    pub region: String,
    /// Class -> its stage.
    pub classes: std::collections::BTreeMap<String, ClassStage>,
    /// The stages set at runtime, as stored (what routers join).
    pub view: crate::rollout::RolloutView,
}

/// One class's rollout stage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassStage {
    /// The stage in force.
    pub stage: Rollout,
    /// The stage the config names (where the class started).
    pub configured: Rollout,
    /// Where the stage in force comes from: `config` or `runtime`.
    pub source: String,
    /// The operations any region takes in `limited-writes`.
    pub limited_ops: Vec<String>,
    /// The region whose writes every region forwards in the early stages.
    pub primary: String,
}

/// What `POST /v1/admin/rollout` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutMoved {
    /// The region that took the move.
    pub region: String,
    /// The class.
    pub class: String,
    /// The stage it was in.
    pub from: Rollout,
    /// The stage it is in now.
    pub stage: Rollout,
    /// Whether a skipped stage was forced.
    pub forced: bool,
    /// False when the class was in that stage already (nothing written).
    pub changed: bool,
    /// The regions holding the move durably when it was answered (a
    /// majority at least); the others take it as replication reaches them.
    pub applied_in: Vec<String>,
    /// What an operator should know (e.g. `limited_ops` is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The body of `POST /v1/admin/failovers`: rows for the `failovers` table,
/// as a router measured them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailoverRecords {
    /// The rows.
    pub failovers: Vec<FailoverEvent>,
}

/// What `POST /v1/admin/failovers` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecordsAnswer {
    /// The region whose collector keeps them.
    pub region: String,
    /// Rows taken.
    pub failovers: usize,
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

/// One entry of a region's change feed (`GET /v1/changes`,
/// `GET /v1/changes/stream`): a version of an entity the region applied,
/// written here or replicated from elsewhere, in the order it applied them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// The change's position: pass it as `after` to read what came next.
    pub seq: u64,
    /// When the region applied it (µs since the Unix epoch, its clock).
    pub ts_us: u64,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// How the version arrived: `local` (a client write here), `replicated`
    /// (shipped from its origin), `repair` (read repair, anti-entropy, the
    /// auditor's repair), `replay` (the write-ahead log after a crash) or
    /// `fault` (a drill's injected fault).
    pub source: String,
    /// The entity was removed from the store (a drill's dropped entity);
    /// a client delete is a version (a tombstone) like any other.
    pub deleted: bool,
    /// The value after the change, as a read answers it (`null` when deleted).
    pub value: Value,
    /// HLC stamp of the latest write in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hlc: Option<Hlc>,
    /// Its version vector: a cache holding a version this one does not
    /// dominate holds an older (or concurrent) value.
    #[serde(default)]
    pub version: crate::version::VersionVector,
}

/// `GET /v1/changes`: a page of a region's change feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangesPage {
    /// The region whose feed this is.
    pub region: String,
    /// The changes after the cursor asked for, oldest first.
    pub changes: Vec<Change>,
    /// The cursor to pass as `after` next (the last change's `seq`, or the
    /// cursor asked for when there was nothing new).
    pub next: u64,
    /// The newest position of the feed when the page was read: a reader
    /// at `head` has seen every change applied until `now_us`.
    pub head: u64,
    /// Changes at or before this position were trimmed (retention); a
    /// cursor below it answers 410 `cursor_expired`.
    pub trimmed: u64,
    /// The region's clock when the page was read (µs).
    pub now_us: u64,
}

/// The `heartbeat` event of `GET /v1/changes/stream`, sent every second:
/// a reader that has received it has every change up to `head`, applied
/// until `now_us`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeedHeartbeat {
    /// The region whose feed this is.
    pub region: String,
    /// The feed's newest position.
    pub head: u64,
    /// The region's clock (µs).
    pub now_us: u64,
}

/// The body of `POST /v1/cache-reports` (declared with the telemetry
/// event that carries it).
pub use crate::telemetry::CacheReport;

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

/// A drill fault: how to change a stored entity without replicating it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    /// Same version, different content.
    Corrupt,
    /// Remove the entity.
    Drop,
    /// Replace it by an older version.
    Rollback,
}

/// A recorded conflict outcome: what lost, what won, when.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConflictRecord {
    /// Id, increasing, per region.
    pub id: u64,
    /// When it was recorded (µs since epoch).
    pub ts_us: u64,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// Conflict policy.
    pub policy: String,
    /// Outcome (`lww_winner`, `fenced`, `queued`, `resolved`).
    pub outcome: String,
    /// Stamp of the winning version.
    pub winner: Option<Hlc>,
    /// Stamp of the losing version.
    pub loser: Option<Hlc>,
    /// The losing value as JSON text.
    pub loser_value: Option<String>,
    /// Time from the conflict's start to its resolution here (ms).
    pub resolution_ms: u64,
}

/// An entry of the reconciliation queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueuedConflict {
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// When this region first saw it conflicted (µs since epoch).
    pub first_seen_us: u64,
}

/// Parses an operation body of `POST .../ops`.
pub fn parse_op(body: &Value, class_name: &str) -> Result<Op> {
    let obj = body.as_object().ok_or_else(|| {
        Error::BadRequest(format!(
            "the body of an operation on class `{class_name}` must be a JSON object like {{\"op\":\"incr\",\"by\":5}}"
        ))
    })?;
    let op = obj.get("op").and_then(Value::as_str).ok_or_else(|| {
        Error::BadRequest("the operation has no \"op\" field. Fix: send {\"op\":\"incr\",\"by\":N}, {\"op\":\"add\",\"member\":..} or {\"op\":\"remove\",\"member\":..}".into())
    })?;
    let member = || {
        obj.get("member").cloned().ok_or_else(|| {
            Error::BadRequest(format!("operation `{op}` needs a \"member\" field, e.g. {{\"op\":\"{op}\",\"member\":\"x\"}}"))
        })
    };
    Ok(match op {
        "incr" => Op::Incr(match obj.get("by") {
            None => 1,
            Some(v) => v.as_i64().ok_or_else(|| {
                Error::BadRequest(format!("\"by\" must be an integer, not {v}. Fix: send e.g. {{\"op\":\"incr\",\"by\":5}}"))
            })?,
        }),
        "decr" => Op::Incr(-match obj.get("by") {
            None => 1,
            Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                Error::BadRequest(format!("\"by\" of decr must be a non-negative integer, not {v}"))
            })?,
        }),
        "add" => Op::Add(member()?),
        "remove" => Op::Remove(member()?),
        other => {
            return Err(Error::BadRequest(format!(
                "unknown operation `{other}`. Fix: use incr, decr, add or remove"
            )));
        }
    })
}
