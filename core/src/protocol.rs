//! Messages between regions, and the answers a region gives clients.
//!
//! Region-to-region messages travel as MessagePack over
//! `POST /v1/peer/rpc` (see [`crate::transport`]); answers to clients are JSON.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::clock::Hlc;
use crate::entity::{Entity, Op};
use crate::error::{Error, WireError};
use crate::merkle::NodeId;
use crate::version::VersionVector;

/// Consistency a read asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadConsistency {
    /// Whatever this region has.
    Local,
    /// At least the writes named in the session token.
    Session,
    /// Local while every region's lag here is under the bound (ms), else from the owner.
    Bounded(u64),
    /// Merged from a majority of regions, repairing the stale ones.
    Quorum,
    /// From the owner, after it has confirmed ownership (all regions for a global class).
    Strong,
}

impl ReadConsistency {
    /// Parses `consistency=` (with `max_staleness_ms=` for bounded).
    pub fn parse(
        s: Option<&str>,
        max_staleness_ms: Option<u64>,
        default_bound: u64,
    ) -> Result<Self, Error> {
        Ok(match s.unwrap_or("local") {
            "local" | "eventual" => ReadConsistency::Local,
            "session" => ReadConsistency::Session,
            "bounded" => ReadConsistency::Bounded(max_staleness_ms.unwrap_or(default_bound)),
            "quorum" => ReadConsistency::Quorum,
            "strong" => ReadConsistency::Strong,
            other => {
                return Err(Error::BadRequest(format!(
                    "consistency `{other}` is not a read consistency level. Fix: use local, session, \
                     bounded (with max_staleness_ms=N), quorum or strong"
                )));
            }
        })
    }

    /// The name used in telemetry and answers.
    pub fn name(&self) -> &'static str {
        match self {
            ReadConsistency::Local => "local",
            ReadConsistency::Session => "session",
            ReadConsistency::Bounded(_) => "bounded",
            ReadConsistency::Quorum => "quorum",
            ReadConsistency::Strong => "strong",
        }
    }
}

/// Consistency a write asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteConsistency {
    /// Acknowledged once durable in the region that took it.
    Async,
    /// Acknowledged once a majority of regions have applied it.
    Quorum,
}

impl WriteConsistency {
    /// Parses `consistency=` of a write.
    pub fn parse(s: Option<&str>) -> Result<Self, Error> {
        match s.unwrap_or("async") {
            "async" | "local" => Ok(WriteConsistency::Async),
            "quorum" => Ok(WriteConsistency::Quorum),
            other => Err(Error::BadRequest(format!(
                "consistency `{other}` is not a write consistency level. Fix: use async (the default) or quorum"
            ))),
        }
    }

    /// The name used in telemetry and answers.
    pub fn name(self) -> &'static str {
        match self {
            WriteConsistency::Async => "async",
            WriteConsistency::Quorum => "quorum",
        }
    }
}

/// A session token: for each origin region, the highest log sequence of a
/// write this session made (or saw acknowledged) there. Text form:
/// `us-east:42,eu-west:7`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionToken(pub BTreeMap<String, u64>);

impl SessionToken {
    /// Adds a write.
    pub fn include(&mut self, region: &str, seq: u64) {
        let slot = self.0.entry(region.to_owned()).or_insert(0);
        *slot = (*slot).max(seq);
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(r, s)| format!("{r}:{s}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for SessionToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let mut token = SessionToken::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parsed = part
                .rsplit_once(':')
                .and_then(|(r, n)| Some((r, n.parse::<u64>().ok()?)));
            let Some((region, seq)) = parsed else {
                return Err(Error::BadRequest(format!(
                    "session token part `{part}` is not `region:sequence`. Fix: send back the `token` \
                     a write returned, unchanged"
                )));
            };
            token.include(region, seq);
        }
        Ok(token)
    }
}

/// A request from one region to another.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Log entries (or, empty, a heartbeat).
    Replicate(ReplicateBatch),
    /// The stored version of an entity, for quorum and strong reads.
    Fetch {
        /// Class.
        class: String,
        /// Key.
        key: String,
    },
    /// A client write passed on to the region that owns the key.
    Write(WriteRequest),
    /// A client read passed on.
    Read(ReadRequest),
    /// Merged versions pushed back to a stale region after a quorum read.
    Repair(Vec<RepairItem>),
    /// Merkle tree questions (anti-entropy).
    Tree(TreeRequest),
    /// How long since the responder last heard from `region` (any request
    /// of `region`'s). If at least `for_ms`, the responder also stops
    /// granting `region` its owner lease for `for_ms` (a conditional
    /// ownership move asks this of a majority before taking `region`'s
    /// keys). A region asking about itself renews its lease and nothing more.
    Silent {
        /// The region asked about.
        region: String,
        /// The silence needed.
        for_ms: u64,
    },
}

/// A batch of one origin's log.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicateBatch {
    /// The origin region.
    pub origin: String,
    /// Sequence of the origin's latest write when sent.
    pub head: u64,
    /// Every write the origin acknowledged before this time (origin clock,
    /// ms) is in this batch or an earlier one.
    pub closed_ms: u64,
    /// Entries, in sequence order.
    pub entries: Vec<LogEntry>,
    /// The origin knows entries before the first one are gone from its log
    /// (backlog cap); apply anyway, anti-entropy repairs the gap.
    pub gap_acknowledged: bool,
    /// The origin's own applied watermarks, by origin (gossip for `applied_in`).
    pub applied: BTreeMap<String, u64>,
    /// Approximate bytes still to ship after this batch.
    pub backlog_bytes: u64,
    /// Checkpoint at once after applying (a quorum write is waiting).
    pub durable_now: bool,
}

/// Answer to a [`ReplicateBatch`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicateAck {
    /// Highest sequence of the origin's log applied here.
    pub acked: u64,
    /// Highest sequence of the origin's log held durably here (survives a
    /// crash); the origin keeps its log until every peer holds it durably.
    pub durable: u64,
    /// The receiver's applied watermarks, by origin.
    pub applied: BTreeMap<String, u64>,
}

/// A client write, as a region takes it and as it passes it to another
/// region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WriteRequest {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The operation.
    pub op: Op,
    /// Consistency asked for.
    pub consistency: WriteConsistency,
    /// Session token sent with it.
    pub session: Option<SessionToken>,
    /// Home region for a new home-owned entity.
    pub home: Option<String>,
}

/// A client read, as a region takes it and as it passes it to another
/// region.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// Consistency asked for.
    pub consistency: ReadConsistency,
    /// Session token sent with it.
    pub session: Option<SessionToken>,
}

/// One merged version pushed by read repair.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepairItem {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The version.
    pub entity: Entity,
}

/// Answer to a [`PeerRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// For `Replicate`.
    Replicated(ReplicateAck),
    /// For `Fetch`: the stored version, tombstones included.
    Fetched(Option<Entity>),
    /// For `Write`.
    Written(WriteOutcome),
    /// For `Read`.
    Read(ReadOutcome),
    /// For `Repair`.
    Repaired,
    /// For `Tree`.
    Tree(TreeResponse),
    /// For `Silent`.
    Silent {
        /// Milliseconds since the responder last heard from the region (or
        /// since the responder started, if never).
        silent_ms: u64,
        /// At least `for_ms`: the responder withholds the region's lease.
        confirmed: bool,
    },
}

/// The envelope of every answer between regions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReply {
    /// Responder's wall clock when it handled the request (ms), for clock
    /// offset estimates.
    pub wall_ms: u64,
    /// The answer.
    pub result: Result<PeerResponse, WireError>,
    /// Whether this answer counts toward the requester's owner lease
    /// (`false` while the responder has promised a conditional ownership
    /// move that the requester has been silent long enough to move).
    #[serde(default = "granted")]
    pub lease: bool,
}

fn granted() -> bool {
    true
}

/// What a write answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteOutcome {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The value after the write (`null` if deleted).
    pub value: Value,
    /// HLC stamp of the write.
    pub hlc: Hlc,
    /// Version vector after the write.
    pub version: VersionVector,
    /// Session token covering this write; send it back with `consistency=session` reads.
    pub token: String,
    /// Regions known to have applied the write so far.
    pub applied_in: Vec<String>,
    /// Region that took the write.
    pub served_by: String,
    /// Its sequence in that region's log.
    pub seq: u64,
    /// Consistency the write was acknowledged at.
    pub consistency: String,
}

/// One sibling of a conflicted manual entity, as read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiblingView {
    /// Its value (`null` for a delete).
    pub value: Value,
    /// Whether it is a delete.
    pub deleted: bool,
    /// Its stamp.
    pub hlc: Hlc,
    /// Its version vector.
    pub version: VersionVector,
}

/// What a read answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReadOutcome {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The merged value: a number for counters, an array for sets, the stored
    /// JSON otherwise; `null` for a conflicted manual entity.
    pub value: Value,
    /// The siblings of a conflicted manual entity (empty otherwise).
    pub siblings: Vec<SiblingView>,
    /// Whether the entity waits in the reconciliation queue.
    pub conflicted: bool,
    /// HLC stamp of the latest write.
    pub hlc: Hlc,
    /// Version vector.
    pub version: VersionVector,
    /// Regions known to have applied the latest write.
    pub applied_in: Vec<String>,
    /// Region whose data answered.
    pub served_by: String,
    /// Consistency level served.
    pub consistency: String,
    /// Home region, for home-owned entities created with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home: Option<String>,
}

/// A question about a region's Merkle trees. Asked by other regions
/// (anti-entropy) and by the auditor, over `POST /v1/peer/rpc` or
/// `POST /v1/tree`, in MessagePack with fingerprints packed as bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum TreeRequest {
    /// Per class: the root fingerprint, the entry count, and the root's children.
    Roots {
        /// Classes asked about.
        classes: Vec<String>,
    },
    /// The children of each node; for a node with at most `small` entries,
    /// its entries instead (a small subtree is cheaper sent than descended).
    Children {
        /// Class.
        class: String,
        /// Inner nodes.
        nodes: Vec<NodeId>,
        /// Subtrees with at most this many entries come back as entries.
        small: u64,
    },
    /// The entries (key, fingerprint of the entry hash) under each node.
    Entries {
        /// Class.
        class: String,
        /// Nodes (usually buckets).
        nodes: Vec<NodeId>,
    },
    /// The region's applied watermark per origin (its own: its log head).
    Applied,
    /// The stored versions of some keys.
    Versions {
        /// Class.
        class: String,
        /// Keys.
        keys: Vec<String>,
    },
}

/// One class's tree, summarised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassRoot {
    /// Class.
    pub class: String,
    /// Root fingerprint.
    #[serde(with = "serde_bytes")]
    pub root: Vec<u8>,
    /// Entries in the tree.
    pub count: u64,
    /// The root's children fingerprints, packed ([`crate::merkle::FANOUT`] × 12 bytes).
    #[serde(with = "serde_bytes")]
    pub children: Vec<u8>,
}

/// What a node is made of, as answered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeBody {
    /// Children fingerprints, packed.
    Children(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Entries: key and fingerprint of its entry hash.
    Entries(Vec<TreeEntry>),
}

/// One entry of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Key.
    pub key: String,
    /// Fingerprint of the entry hash.
    #[serde(with = "serde_bytes")]
    pub fp: Vec<u8>,
}

/// Answer to a [`TreeRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TreeResponse {
    /// For `Roots`.
    Roots(Vec<ClassRoot>),
    /// For `Children` and `Entries`: one body per node asked, in order.
    Nodes(Vec<NodeBody>),
    /// For `Versions`: one per key asked, in order.
    Versions(Vec<Option<Entity>>),
    /// For `Applied`.
    Applied(ReplicationState),
}

/// What a region has applied of every log, and for which peers it no
/// longer keeps its log (they wait for anti-entropy).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationState {
    /// Per origin, the last sequence applied here (own log: its head).
    pub applied: BTreeMap<String, u64>,
    /// Peers this region dropped its log for (backlog cap).
    pub log_dropped_for: Vec<String>,
}

/// A request of the auditor to one region (`POST /v1/audit`, admin token,
/// MessagePack).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuditRequest {
    /// A tree question.
    Tree(TreeRequest),
    /// Merge these versions through their class's policy.
    Repair(Vec<RepairItem>),
    /// Overwrite with these versions (repairing corruption by majority).
    Replace(Vec<RepairItem>),
}

/// Answer to an [`AuditRequest`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AuditResponse {
    /// For `Tree`.
    Tree(TreeResponse),
    /// For `Repair` and `Replace`.
    Done,
}

/// Encodes a region-to-region message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("peer message encodes")
}

/// Decodes a region-to-region message.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    rmp_serde::from_slice(bytes)
        .map_err(|e| Error::BadRequest(format!("undecodable region-to-region message: {e}")))
}

/// One entry of the replication log: a local write, with the whole entity
/// version it produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Sequence in the origin region's log.
    pub seq: u64,
    /// Class of the entity.
    pub class: String,
    /// Key of the entity.
    pub key: String,
    /// Wall time of the write (its HLC wall part), ms, origin's clock.
    pub wall_ms: u64,
    /// The encoded entity version.
    #[serde(with = "serde_bytes")]
    pub entity: Vec<u8>,
}

impl LogEntry {
    /// Approximate size on the wire.
    pub fn size(&self) -> usize {
        self.entity.len() + self.class.len() + self.key.len() + 24
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_token_round_trips_and_merges() {
        let mut t: SessionToken = "us-east:42,eu-west:7".parse().unwrap();
        t.include("us-east", 40);
        t.include("us-west", 1);
        assert_eq!(t.to_string(), "eu-west:7,us-east:42,us-west:1");
        assert!(
            "us-east"
                .parse::<SessionToken>()
                .unwrap_err()
                .to_string()
                .contains("region:sequence")
        );
    }

    #[test]
    fn consistency_parsing_names_the_choices() {
        assert_eq!(
            ReadConsistency::parse(Some("bounded"), Some(250), 5).unwrap(),
            ReadConsistency::Bounded(250)
        );
        let err = ReadConsistency::parse(Some("linearizable"), None, 5)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linearizable") && err.contains("quorum"),
            "{err}"
        );
        assert!(WriteConsistency::parse(Some("strong")).is_err());
    }
}
