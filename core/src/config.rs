//! The cluster configuration: one TOML file shared by every region.
//!
//! Parsing is strict: unknown fields are refused, and every error names the
//! file, the field and what to do about it. [`Config::from_toml`] parses and
//! validates; nothing else in the crate reads TOML.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

pub use crate::web_config::{
    AlertRuleConfig, NotifierConfig, NotifierKind, RuleKind, SloConfig, SloKind, WebConfig,
};

mod class;
mod cost;
mod load;
mod router;
mod s3;
mod tls;

pub use class::{ClassConfig, FieldRule, ForeignWrites, OpKind, Ownership, Policy, Rollout};
pub use cost::CostConfig;
pub use load::{estimate_latency_ms, great_circle_km};
pub use router::{RouterConfig, RouterSite, Subnet};
pub use s3::{S3Config, TablesAt};
pub use tls::{PeerAuth, ServerPems, TlsConfig};

/// Names of system classes start with this; user classes may not.
pub const SYSTEM_CLASS_PREFIX: char = '_';

/// The system class holding ownership delegations (failovers), one LWW
/// entity per original owner region, replicated like any other class.
pub const OWNERSHIP_CLASS: &str = "_ownership";

/// The system class holding the rollout stages set at runtime, one LWW
/// entity per class (see [`crate::rollout`]).
pub const ROLLOUT_CLASS: &str = "_rollout";

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster-wide settings: tokens, primary region, clock guard.
    pub cluster: ClusterConfig,
    /// The regions, by name. Every region runs one `parallax region` process.
    pub regions: BTreeMap<String, RegionConfig>,
    /// Optional one-way network latency between regions in milliseconds,
    /// `[latency_ms.us-east] eu-west = 38`; a router's location may have a
    /// row too (its clients' latency to each region). A missing direction uses the other
    /// direction's figure; pairs with neither are estimated from the regions'
    /// locations. Used to pick the nearest region and, in the demo, to delay
    /// traffic between regions.
    #[serde(default)]
    pub latency_ms: BTreeMap<String, BTreeMap<String, u32>>,
    /// Entity classes, by name.
    #[serde(default)]
    pub classes: BTreeMap<String, ClassConfig>,
    /// How the replication log is shipped between regions.
    #[serde(default)]
    pub replication: ReplicationConfig,
    /// Request limits of the HTTP API.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// How the region's store makes writes durable.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Merkle-tree anti-entropy between regions.
    #[serde(default)]
    pub anti_entropy: AntiEntropyConfig,
    /// Telemetry to Parquet files and Prometheus.
    #[serde(default)]
    pub collector: CollectorConfig,
    /// The web app (`parallax web`).
    #[serde(default)]
    pub web: WebConfig,
    /// Service level objectives, by name.
    #[serde(default)]
    pub slos: BTreeMap<String, SloConfig>,
    /// Alert rules, by name.
    #[serde(default)]
    pub alerts: BTreeMap<String, AlertRuleConfig>,
    /// Where alerts are delivered, by name.
    #[serde(default)]
    pub notifiers: BTreeMap<String, NotifierConfig>,
    /// Health checks and answers every router shares.
    #[serde(default)]
    pub router: RouterConfig,
    /// One router per client location, by location name.
    #[serde(default)]
    pub routers: BTreeMap<String, RouterSite>,
    /// `[cost]`: prices for the Cost page.
    #[serde(default)]
    pub cost: CostConfig,
    /// `[tls]`: HTTPS for the servers, the trust of their clients, and
    /// mutual TLS between regions.
    #[serde(default)]
    pub tls: TlsConfig,
}

/// `[collector]`: where telemetry goes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectorConfig {
    /// Buffered rows are written to Parquet at least this often (ms).
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// ... and whenever a table buffers this many rows.
    #[serde(default = "default_flush_rows")]
    pub flush_rows: usize,
    /// Rows per Parquet row group.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// Partitions (days) older than this many days are deleted.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// The 5-minute rollups (`requests_5m`, `replication_lag_5m`) are kept
    /// this many days: at least `retention_days`.
    #[serde(default = "default_rollup_retention_days")]
    pub rollup_retention_days: u32,
    /// Closed hours' small files are compacted into one file per table and hour.
    #[serde(default = "default_true")]
    pub compact: bool,
    /// Each region probes every region's `/healthz` this often (ms).
    #[serde(default = "default_probe_interval_ms")]
    pub probe_interval_ms: u64,
    /// A probe not answered within this is a failure (ms).
    #[serde(default = "default_probe_timeout_ms")]
    pub probe_timeout_ms: u64,
    /// Serve `/metrics` on this address instead of the region's `listen` address.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// Telemetry events the collector may hold before it drops (and counts) them.
    #[serde(default = "default_event_queue")]
    pub event_queue: usize,
    /// Each region reports the bytes its calls to peers carried (the
    /// `traffic` table) this often (ms).
    #[serde(default = "default_traffic_interval_ms")]
    pub traffic_interval_ms: u64,
    /// Where the tables are written and read: a folder, or
    /// `s3://<bucket>/<prefix>` in an S3-compatible store (`[collector.s3]`).
    /// Left out: `<data-dir>/tables`.
    #[serde(default)]
    pub tables: Option<String>,
    /// `[collector.s3]`: how to reach the bucket `tables` names.
    #[serde(default)]
    pub s3: S3Config,
}

impl CollectorConfig {
    /// Where the tables are: `tables`, or `<data_dir>/tables`.
    pub fn tables_at(&self, data_dir: &std::path::Path) -> Result<TablesAt> {
        TablesAt::parse(self.tables.as_deref(), data_dir)
            .map_err(|e| Error::Config(format!("`collector.tables` {e}")))
    }
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            flush_interval_ms: default_flush_interval_ms(),
            flush_rows: default_flush_rows(),
            row_group_rows: default_row_group_rows(),
            retention_days: default_retention_days(),
            rollup_retention_days: default_rollup_retention_days(),
            compact: true,
            probe_interval_ms: default_probe_interval_ms(),
            probe_timeout_ms: default_probe_timeout_ms(),
            metrics_listen: None,
            event_queue: default_event_queue(),
            traffic_interval_ms: default_traffic_interval_ms(),
            tables: None,
            s3: S3Config::default(),
        }
    }
}

/// `[anti_entropy]`: repairing what replication missed.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AntiEntropyConfig {
    /// Every this often (ms), each region compares its trees with every
    /// other region's and exchanges what differs. A peer marked for
    /// anti-entropy (its log was dropped) is repaired at once.
    #[serde(default = "default_anti_entropy_interval_ms")]
    pub interval_ms: u64,
    /// Most differing keys exchanged per second, per region.
    #[serde(default = "default_anti_entropy_max_keys_per_sec")]
    pub max_keys_per_sec: u64,
    /// A peer this region has not reached for this long (ms) is cut off
    /// from here: what it writes is then pulled from the regions that still
    /// reach it, by anti-entropy with them every `detour_interval_ms` (the
    /// detour). 0 turns the detour off.
    #[serde(default = "default_detour_after_ms")]
    pub detour_after_ms: u64,
    /// How often (ms) the detour's anti-entropy runs while a peer is cut off.
    #[serde(default = "default_detour_interval_ms")]
    pub detour_interval_ms: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval_ms: default_anti_entropy_interval_ms(),
            max_keys_per_sec: default_anti_entropy_max_keys_per_sec(),
            detour_after_ms: default_detour_after_ms(),
            detour_interval_ms: default_detour_interval_ms(),
        }
    }
}

/// `[storage]`: durability of the region's store.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// How often the entity store is checkpointed (synced) in milliseconds.
    /// Every acknowledged write is durable at once in the write-ahead log;
    /// a checkpoint lets old log files go and bounds the replay after a crash.
    #[serde(default = "default_checkpoint_interval_ms")]
    pub checkpoint_interval_ms: u64,
    /// Size at which a write-ahead log file is closed and a new one started (bytes).
    #[serde(default = "default_wal_segment_bytes")]
    pub wal_segment_bytes: u64,
    /// How long the change feed (`GET /v1/changes`) keeps a change
    /// (milliseconds); a reader whose cursor is older must re-read.
    #[serde(default = "default_feed_retain_ms")]
    pub feed_retain_ms: u64,
    /// The most changes the feed keeps, whatever their age.
    #[serde(default = "default_feed_max_entries")]
    pub feed_max_entries: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            wal_segment_bytes: default_wal_segment_bytes(),
            feed_retain_ms: default_feed_retain_ms(),
            feed_max_entries: default_feed_max_entries(),
        }
    }
}

/// `[cluster]`: settings every region shares.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// A name for the cluster, shown in logs and the stats.
    #[serde(default = "default_cluster_name")]
    pub name: String,
    /// Bearer token clients send to the entity API (`Authorization: Bearer ...`).
    pub client_token: String,
    /// Bearer token for administrative actions (fault injection, ownership changes).
    pub admin_token: String,
    /// Shared secret that regions send to each other; a region-to-region
    /// request without it is refused.
    pub peer_secret: String,
    /// Client tokens accepted besides `client_token` (rotation: see the
    /// README's "Rotating secrets").
    #[serde(default)]
    pub accept_client_tokens: Vec<String>,
    /// Admin tokens accepted besides `admin_token`.
    #[serde(default)]
    pub accept_admin_tokens: Vec<String>,
    /// Peer secrets accepted besides `peer_secret` (which is the one sent).
    #[serde(default)]
    pub accept_peer_secrets: Vec<String>,
    /// The primary region: the only writer for classes in the `active-passive`
    /// stage. Defaults to the first region by name.
    #[serde(default)]
    pub primary: Option<String>,
    /// A remote hybrid-logical-clock stamp more than this far ahead of the
    /// local wall clock is refused (and counted): it means a clock is wrong.
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
    /// The owner lease: a region takes writes for keys it owns (classes
    /// with `home` or `hash` ownership) only while a majority of regions,
    /// itself counted, answered one of its requests sent within this long;
    /// and a conditional ownership move (a router's failover) takes a
    /// region's keys only once a majority has not heard from it for this
    /// long plus `max_clock_offset_ms`. So an owner cut off from the
    /// majority stops taking writes before its keys can move.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
}

/// `[regions.<name>]`: one region.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// Address the region's HTTP API binds, e.g. `"127.0.0.1:7101"` or `"0.0.0.0:7101"`.
    pub listen: SocketAddr,
    /// Base URL other regions and clients use to reach this region, e.g.
    /// `"http://us-east.internal:7101"`. Defaults to `http://<listen>`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Where the region is, for nearest-region routing.
    pub location: Location,
}

/// A position on the globe, in degrees.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude in degrees, -90..=90.
    pub lat: f64,
    /// Longitude in degrees, -180..=180.
    pub lon: f64,
}

/// `[replication]`: how logs are shipped.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// A heartbeat goes to every peer this often when there is nothing to
    /// ship, so lag is known on idle pairs (milliseconds).
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Most log entries in one batch.
    #[serde(default = "default_batch_max_ops")]
    pub batch_max_ops: usize,
    /// Most bytes of log entries in one batch.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: usize,
    /// Batches sent to a peer before the first is acknowledged; more hides
    /// long round trips (the peer still applies them in order).
    #[serde(default = "default_max_inflight_batches")]
    pub max_inflight_batches: usize,
    /// A peer further behind than this many log entries loses its cursor
    /// (the log is not kept for it) and is marked for anti-entropy.
    #[serde(default = "default_max_backlog_ops")]
    pub max_backlog_ops: u64,
    /// First retry delay after a failed shipment (milliseconds); doubles up to `retry_max_ms`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    /// Longest retry delay (milliseconds).
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Timeout of one region-to-region request (milliseconds).
    #[serde(default = "default_peer_timeout_ms")]
    pub peer_timeout_ms: u64,
    /// How long a `consistency=quorum` write waits for a majority (milliseconds).
    #[serde(default = "default_quorum_timeout_ms")]
    pub quorum_timeout_ms: u64,
    /// Most operations committed together in one transaction (group commit).
    #[serde(default = "default_group_commit_max_ops")]
    pub group_commit_max_ops: usize,
    /// Recorded conflict outcomes (LWW losers and resolutions) kept per region.
    #[serde(default = "default_conflict_log_max")]
    pub conflict_log_max: u64,
    /// Catch-up pace: while a peer is more than one batch behind (after an
    /// outage), at most this many entries per second are shipped to it, so
    /// the catch-up leaves both regions room for live traffic. Live
    /// replication (within a batch of the head) is never held back. 0: no
    /// limit.
    #[serde(default = "default_catchup_max_ops_per_sec")]
    pub catchup_max_ops_per_sec: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            batch_max_ops: default_batch_max_ops(),
            batch_max_bytes: default_batch_max_bytes(),
            max_inflight_batches: default_max_inflight_batches(),
            max_backlog_ops: default_max_backlog_ops(),
            retry_initial_ms: default_retry_initial_ms(),
            retry_max_ms: default_retry_max_ms(),
            peer_timeout_ms: default_peer_timeout_ms(),
            quorum_timeout_ms: default_quorum_timeout_ms(),
            group_commit_max_ops: default_group_commit_max_ops(),
            conflict_log_max: default_conflict_log_max(),
            catchup_max_ops_per_sec: default_catchup_max_ops_per_sec(),
        }
    }
}

/// `[limits]`: request limits of the HTTP API.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted request body (bytes); larger ones get HTTP 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest accepted region-to-region request body (bytes).
    #[serde(default = "default_max_peer_body_bytes")]
    pub max_peer_body_bytes: usize,
    /// Longest key (bytes).
    #[serde(default = "default_max_key_bytes")]
    pub max_key_bytes: usize,
    /// A client request taking longer than this is answered 408 (milliseconds).
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Most client requests served at once per region; more wait.
    #[serde(default = "default_max_concurrent_requests")]
    pub max_concurrent_requests: usize,
    /// Most change-feed readers at once per region (open streams and
    /// waiting long polls); more are answered 503. They do not count
    /// against `max_concurrent_requests`, so readers that wait cannot
    /// starve the other requests.
    #[serde(default = "default_max_feed_readers")]
    pub max_feed_readers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body_bytes(),
            max_peer_body_bytes: default_max_peer_body_bytes(),
            max_key_bytes: default_max_key_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
            max_concurrent_requests: default_max_concurrent_requests(),
            max_feed_readers: default_max_feed_readers(),
        }
    }
}

fn default_max_feed_readers() -> usize {
    1024
}
fn default_flush_interval_ms() -> u64 {
    10_000
}
fn default_flush_rows() -> usize {
    200_000
}
fn default_row_group_rows() -> usize {
    128 * 1024
}
fn default_retention_days() -> u32 {
    30
}
/// 13 months: a year of months, each beside the same month a year before.
fn default_rollup_retention_days() -> u32 {
    400
}
fn default_true() -> bool {
    true
}
fn default_traffic_interval_ms() -> u64 {
    10_000
}
fn default_probe_interval_ms() -> u64 {
    5_000
}
fn default_probe_timeout_ms() -> u64 {
    2_000
}
fn default_event_queue() -> usize {
    262_144
}
fn default_anti_entropy_interval_ms() -> u64 {
    600_000
}
fn default_anti_entropy_max_keys_per_sec() -> u64 {
    20_000
}
fn default_detour_after_ms() -> u64 {
    5_000
}
fn default_detour_interval_ms() -> u64 {
    2_000
}
fn default_feed_retain_ms() -> u64 {
    24 * 3_600_000
}

fn default_feed_max_entries() -> u64 {
    1_000_000
}

fn default_checkpoint_interval_ms() -> u64 {
    1_000
}
fn default_wal_segment_bytes() -> u64 {
    64 << 20
}
fn default_cluster_name() -> String {
    "parallax".to_owned()
}
fn default_max_clock_offset_ms() -> u64 {
    500
}
fn default_lease_ms() -> u64 {
    4_000
}
fn default_heartbeat_interval_ms() -> u64 {
    1_000
}
fn default_batch_max_ops() -> usize {
    1_000
}
fn default_batch_max_bytes() -> usize {
    4 << 20
}
fn default_max_inflight_batches() -> usize {
    4
}
fn default_catchup_max_ops_per_sec() -> u64 {
    5_000
}
fn default_max_backlog_ops() -> u64 {
    10_000_000
}
fn default_retry_initial_ms() -> u64 {
    50
}
fn default_retry_max_ms() -> u64 {
    5_000
}
fn default_peer_timeout_ms() -> u64 {
    5_000
}
fn default_quorum_timeout_ms() -> u64 {
    5_000
}
fn default_group_commit_max_ops() -> usize {
    2_048
}
fn default_conflict_log_max() -> u64 {
    100_000
}
fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_max_peer_body_bytes() -> usize {
    64 << 20
}
fn default_max_key_bytes() -> usize {
    512
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_max_concurrent_requests() -> usize {
    4_096
}

#[cfg(test)]
mod tests;
