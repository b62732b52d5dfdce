//! What `/v1/stats` serves: the node's replication by peer, its event
//! counters, anti-entropy and workers. The region fills these in; the
//! client, the collector and the web app read them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::telemetry::EventStats;
use crate::worker::{WorkerStatus, Workers};

/// Everything `/v1/stats` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// This region.
    pub region: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Replication state by peer.
    pub replication: ReplicationStats,
    /// Counters from the event stream.
    pub events: EventStats,
    /// Telemetry events dropped because the channel was full.
    pub telemetry_dropped: u64,
    /// Anti-entropy: the pass under way and the last pass with each peer.
    pub anti_entropy: AntiEntropyStats,
    /// Entries in the reconciliation queue.
    pub reconciliation_queue: u64,
    /// The node's background workers.
    #[serde(default)]
    pub workers: Vec<WorkerStatus>,
    /// Bytes of its calls to other regions, by peer and kind.
    #[serde(default)]
    pub traffic: Vec<crate::traffic::PeerTraffic>,
}

/// Anti-entropy as served by `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyStats {
    /// The pass under way ("peer" while it runs).
    pub running: Option<String>,
    /// Passes finished.
    pub passes: u64,
    /// The last pass with each peer.
    pub last: BTreeMap<String, crate::sync::AntiEntropyReport>,
    /// The detour while a peer is cut off from this region; `None` when
    /// every peer is reached.
    #[serde(default)]
    pub detour: Option<Detour>,
}

/// Anti-entropy through the peers a region still reaches, pulling what the
/// peers it cannot reach write (`anti_entropy.detour_after_ms`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Detour {
    /// Peers not reached for `detour_after_ms`.
    pub cut: Vec<String>,
    /// Peers the detour goes through.
    pub via: Vec<String>,
    /// Since when (µs since epoch).
    pub since_us: u64,
    /// Detour passes so far.
    pub passes: u64,
    /// Entities pulled through the detour so far.
    pub pulled: u64,
    /// The last pass (µs since epoch).
    pub last_us: u64,
}

/// Replication as served by `/v1/stats`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationStats {
    /// This region.
    pub region: String,
    /// Sequence of the latest local write.
    pub head: u64,
    /// Log entries up to here were removed (every peer had them).
    pub truncated: u64,
    /// Remote clock stamps refused by the offset guard.
    pub refused_stamps: u64,
    /// Group commits (transactions) so far.
    pub commits: u64,
    /// Commands (local writes, replicated batches, repairs) in those commits.
    pub committed_commands: u64,
    /// Time spent in those commits, fsync included (µs).
    pub commit_us_total: u64,
    /// Write-ahead log entries replayed at start-up (after an unclean stop).
    pub replayed_at_start: u64,
    /// Per peer.
    pub peers: BTreeMap<String, PeerStats>,
}

/// Replication with one peer, both directions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerStats {
    /// Last sequence of our log the peer acknowledged.
    pub acked: u64,
    /// Our entries the peer still lacks.
    pub backlog_ops: u64,
    /// Their approximate size (bytes).
    pub backlog_bytes: u64,
    /// Batches sent.
    pub batches_sent: u64,
    /// Entries sent.
    pub entries_sent: u64,
    /// Heartbeats sent.
    pub heartbeats_sent: u64,
    /// Failed shipments.
    pub errors: u64,
    /// Failed shipments since the last success.
    pub consecutive_failures: u64,
    /// Time since the last successful shipment (ms).
    pub last_ok_ms_ago: Option<u64>,
    /// The last shipment error.
    pub last_error: Option<String>,
    /// The peer's log was dropped (backlog cap); it needs anti-entropy.
    pub needs_anti_entropy: bool,
    /// The peer's clock minus ours (ms).
    pub clock_offset_ms: i64,
    /// Round trip of the best offset sample (ms).
    pub rtt_ms: f64,
    /// How far we trail the peer's writes now (ms); none if never heard from.
    pub lag_from_ms: Option<u64>,
    /// Last sequence of the peer's log applied here.
    pub applied_from: u64,
}

/// A region node as the parts that run beside it in its process (the
/// collector) see it, without depending on the store.
pub trait NodeView: Send + Sync + fmt::Debug + 'static {
    /// Everything `/v1/stats` shows, now.
    fn stats(&self) -> NodeStats;
    /// Telemetry events dropped so far because the channel was full.
    fn telemetry_dropped(&self) -> u64;
    /// Shows `workers` in the node's `/v1/stats` beside its own.
    fn observe_workers(&self, workers: Workers);
}
