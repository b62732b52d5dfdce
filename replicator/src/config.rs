//! The cluster configuration: one TOML file shared by every region.
//!
//! Parsing is strict: unknown fields are refused, and every error names the
//! file, the field and what to do about it. [`Config::from_toml`] parses and
//! validates; nothing else in the crate reads TOML.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use crate::web_config::{
    AlertRuleConfig, NotifierConfig, NotifierKind, RuleKind, SloConfig, SloKind, WebConfig,
};

/// Names of system classes start with this; user classes may not.
pub const SYSTEM_CLASS_PREFIX: char = '_';

/// The system class holding ownership delegations (failovers), one LWW
/// entity per original owner region, replicated like any other class.
pub const OWNERSHIP_CLASS: &str = "_ownership";

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Cluster-wide settings: tokens, primary region, clock guard.
    pub cluster: ClusterConfig,
    /// The regions, by name. Every region runs one `parallax region` process.
    pub regions: BTreeMap<String, RegionConfig>,
    /// Optional one-way network latency between regions in milliseconds,
    /// `[latency_ms.us-east] eu-west = 38`. A missing direction uses the other
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
}

impl Default for CollectorConfig {
    fn default() -> Self {
        CollectorConfig {
            flush_interval_ms: default_flush_interval_ms(),
            flush_rows: default_flush_rows(),
            row_group_rows: default_row_group_rows(),
            retention_days: default_retention_days(),
            compact: true,
            probe_interval_ms: default_probe_interval_ms(),
            probe_timeout_ms: default_probe_timeout_ms(),
            metrics_listen: None,
            event_queue: default_event_queue(),
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
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            interval_ms: default_anti_entropy_interval_ms(),
            max_keys_per_sec: default_anti_entropy_max_keys_per_sec(),
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
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            checkpoint_interval_ms: default_checkpoint_interval_ms(),
            wal_segment_bytes: default_wal_segment_bytes(),
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
    /// The primary region: the only writer for classes in the `active-passive`
    /// stage. Defaults to the first region by name.
    #[serde(default)]
    pub primary: Option<String>,
    /// A remote hybrid-logical-clock stamp more than this far ahead of the
    /// local wall clock is refused (and counted): it means a clock is wrong.
    #[serde(default = "default_max_clock_offset_ms")]
    pub max_clock_offset_ms: u64,
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

/// `[classes.<name>]`: a kind of data and its policies.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// How concurrent writes from different regions are reconciled.
    pub conflict: Policy,
    /// Which region may write a key.
    #[serde(default)]
    pub ownership: Ownership,
    /// How far the class has progressed from active-passive to active-active.
    #[serde(default)]
    pub rollout: Rollout,
    /// Critical classes are audited for divergence and alerted on.
    #[serde(default)]
    pub critical: bool,
    /// Primary region for this class (active-passive, read-local and
    /// limited-writes stages); defaults to `cluster.primary`.
    #[serde(default)]
    pub primary: Option<String>,
    /// For the `limited-writes` stage: the operations any region may take
    /// (`put`, `delete`, `incr`, `add`, `remove`, `resolve`); others go to the primary.
    #[serde(default)]
    pub limited_ops: Vec<OpKind>,
    /// What a region does with a write for a key it does not own (or, for the
    /// early rollout stages, when it is not the primary): `forward` it to the
    /// owner, or `refuse` it with HTTP 421 naming the owner.
    #[serde(default)]
    pub foreign_writes: ForeignWrites,
    /// For `ownership = "home"`: key prefix -> home region, longest prefix wins,
    /// e.g. `{ "eu:" = "eu-west" }`.
    #[serde(default)]
    pub home_prefixes: BTreeMap<String, String>,
    /// For `ownership = "home"`: tenant -> home region. The tenant is the part
    /// of the key before `tenant_separator`.
    #[serde(default)]
    pub home_tenants: BTreeMap<String, String>,
    /// Separator between tenant and the rest of the key.
    #[serde(default = "default_tenant_separator")]
    pub tenant_separator: String,
    /// For `ownership = "home"`: home of keys that no explicit home, tenant
    /// or prefix places. Without it such a key must be created with `?home=<region>`.
    #[serde(default)]
    pub default_home: Option<String>,
    /// For `conflict = "merge"`: field name -> merge rule. Fields not listed use
    /// `default_field_rule`.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldRule>,
    /// For `conflict = "merge"`: rule for fields not listed in `fields`.
    #[serde(default)]
    pub default_field_rule: FieldRule,
    /// Staleness bound for `consistency=bounded` reads that give no
    /// `max_staleness_ms`, in milliseconds.
    #[serde(default = "default_bounded_staleness_ms")]
    pub bounded_staleness_ms: u64,
}

impl ClassConfig {
    /// A global, active-active LWW class for system data.
    pub fn system_lww() -> ClassConfig {
        ClassConfig {
            conflict: Policy::Lww,
            ownership: Ownership::Global,
            rollout: Rollout::ActiveActive,
            critical: true,
            primary: None,
            limited_ops: Vec::new(),
            foreign_writes: ForeignWrites::Forward,
            home_prefixes: BTreeMap::new(),
            home_tenants: BTreeMap::new(),
            tenant_separator: default_tenant_separator(),
            default_home: None,
            fields: BTreeMap::new(),
            default_field_rule: FieldRule::Lww,
            bounded_staleness_ms: default_bounded_staleness_ms(),
        }
    }
}

/// Conflict policy of a class.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Last writer wins on hybrid logical clock stamps; the loser is recorded.
    Lww,
    /// Grow-only counter: per-region counts, merged by max, value is the sum.
    Gcounter,
    /// Counter with increments and decrements.
    Pncounter,
    /// Add-wins observed-remove set.
    Orset,
    /// JSON object merged field by field.
    Merge,
    /// Concurrent versions kept as siblings for a person to reconcile.
    Manual,
}

impl Policy {
    /// Every policy, in declaration order.
    pub const ALL: [Policy; 6] = [
        Policy::Lww,
        Policy::Gcounter,
        Policy::Pncounter,
        Policy::Orset,
        Policy::Merge,
        Policy::Manual,
    ];

    /// The name used in config and telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Lww => "lww",
            Policy::Gcounter => "gcounter",
            Policy::Pncounter => "pncounter",
            Policy::Orset => "orset",
            Policy::Merge => "merge",
            Policy::Manual => "manual",
        }
    }

    /// Whether `op` means anything for this policy.
    pub fn accepts(self, op: OpKind) -> bool {
        match self {
            Policy::Lww | Policy::Merge => matches!(op, OpKind::Put | OpKind::Delete),
            Policy::Gcounter | Policy::Pncounter => matches!(op, OpKind::Incr | OpKind::Delete),
            Policy::Orset => matches!(op, OpKind::Add | OpKind::Remove | OpKind::Delete),
            Policy::Manual => matches!(op, OpKind::Put | OpKind::Delete | OpKind::Resolve),
        }
    }

    /// The operations this policy takes, for error messages.
    pub fn ops_hint(self) -> &'static str {
        match self {
            Policy::Lww | Policy::Merge => "PUT a JSON value, or DELETE",
            Policy::Gcounter => "POST .../ops with {\"op\":\"incr\",\"by\":N} (N >= 0), or DELETE",
            Policy::Pncounter => {
                "POST .../ops with {\"op\":\"incr\",\"by\":N} (N may be negative), or DELETE"
            }
            Policy::Orset => {
                "POST .../ops with {\"op\":\"add\",\"member\":..} or {\"op\":\"remove\",\"member\":..}, or DELETE"
            }
            Policy::Manual => {
                "PUT a JSON value, DELETE, or POST /v1/conflicts/{class}/{key}/resolve when conflicted"
            }
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may write a key.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Ownership {
    /// Each key has a home region (explicit, tenant table, prefix or default).
    Home,
    /// Rendezvous (consistent) hashing of the key over the regions.
    Hash,
    /// Any region writes any key.
    #[default]
    Global,
}

impl Ownership {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Ownership::Home => "home",
            Ownership::Hash => "hash",
            Ownership::Global => "global",
        }
    }
}

/// Progressive rollout stage of a class.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Rollout {
    /// Only the primary region reads and writes; other regions pass requests on.
    ActivePassive,
    /// Every region serves reads locally; only the primary writes.
    ReadLocal,
    /// The operations in `limited_ops` may be written anywhere; others go to the primary.
    LimitedWrites,
    /// Every region reads and writes (subject to ownership).
    #[default]
    ActiveActive,
}

impl Rollout {
    /// The name used in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Rollout::ActivePassive => "active-passive",
            Rollout::ReadLocal => "read-local",
            Rollout::LimitedWrites => "limited-writes",
            Rollout::ActiveActive => "active-active",
        }
    }
}

/// What a non-owner does with a write.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ForeignWrites {
    /// Pass the request to the owner and return its answer.
    #[default]
    Forward,
    /// Answer HTTP 421 naming the owner.
    Refuse,
}

/// Merge rule of one field of a `merge` class.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FieldRule {
    /// The value with the higher HLC stamp wins.
    #[default]
    Lww,
    /// The larger number wins.
    Max,
    /// The smaller number wins.
    Min,
    /// Arrays are merged as grow-only sets.
    Union,
    /// An integer to which each region adds its own changes.
    Sum,
}

/// An operation kind, as named in `limited_ops`, telemetry and errors.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum OpKind {
    /// Write a whole value (lww, merge, manual).
    Put,
    /// Delete the entity.
    Delete,
    /// Add to a counter.
    Incr,
    /// Add a member to a set.
    Add,
    /// Remove a member from a set.
    Remove,
    /// Resolve a manual conflict.
    Resolve,
    /// Read.
    Get,
}

impl OpKind {
    /// The name used in config and telemetry.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::Incr => "incr",
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Resolve => "resolve",
            OpKind::Get => "get",
        }
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body_bytes(),
            max_peer_body_bytes: default_max_peer_body_bytes(),
            max_key_bytes: default_max_key_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
            max_concurrent_requests: default_max_concurrent_requests(),
        }
    }
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
fn default_true() -> bool {
    true
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
fn default_tenant_separator() -> String {
    ":".to_owned()
}
fn default_bounded_staleness_ms() -> u64 {
    5_000
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

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!(
                "cannot read config file {}: {e}. Fix: pass --config with the path of your parallax.toml \
                 (deploy/examples/three-regions.toml is a starting point)",
                path.display()
            ))
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let position = e
                .span()
                .map(|span| {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            Error::Config(format!(
                "{origin}{position}: {}. Fix: correct that field; every field is described in the \
                 README's configuration reference",
                e.message().trim_end_matches('.')
            ))
        })?;
        let mut config = config;
        config.validate(origin)?;
        config
            .classes
            .insert(OWNERSHIP_CLASS.to_owned(), ClassConfig::system_lww());
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<()> {
        let fail =
            |field: &str, msg: String| Err(Error::Config(format!("{origin}: `{field}` {msg}")));
        if self.regions.is_empty() {
            return fail(
                "regions",
                "is empty. Fix: declare at least one [regions.<name>] with `listen` and `location`"
                    .into(),
            );
        }
        let declared = self.region_names().join(", ");
        let check_region = |field: &str, name: &str| -> Result<()> {
            if self.regions.contains_key(name) {
                Ok(())
            } else {
                fail(
                    field,
                    format!(
                        "names region `{name}`, which is not declared (declared: {declared}). \
                         Fix: use one of those or add [regions.{name}]"
                    ),
                )
            }
        };
        for (field, token) in [
            ("cluster.client_token", &self.cluster.client_token),
            ("cluster.admin_token", &self.cluster.admin_token),
            ("cluster.peer_secret", &self.cluster.peer_secret),
        ] {
            if token.trim().is_empty() {
                return fail(
                    field,
                    "is empty. Fix: set it to a long random string".into(),
                );
            }
        }
        if self.cluster.client_token == self.cluster.peer_secret
            || self.cluster.admin_token == self.cluster.peer_secret
        {
            return fail(
                "cluster.peer_secret",
                "equals a client or admin token. Fix: give regions a secret of their own".into(),
            );
        }
        if let Some(primary) = &self.cluster.primary {
            check_region("cluster.primary", primary)?;
        }
        if self.cluster.max_clock_offset_ms == 0 {
            return fail(
                "cluster.max_clock_offset_ms",
                "is 0. Fix: allow the clock error between your regions, e.g. 500".into(),
            );
        }
        let mut listens = BTreeMap::new();
        for (name, region) in &self.regions {
            if !valid_region_name(name) {
                return fail(
                    &format!("regions.{name}"),
                    "is not a valid region name. Fix: use lowercase letters, digits and '-', \
                     starting with a letter or digit (e.g. us-east)"
                        .into(),
                );
            }
            if let Some(other) = listens.insert(region.listen, name) {
                return fail(
                    &format!("regions.{name}.listen"),
                    format!(
                        "{} is also the address of region `{other}`. Fix: give each region its own port",
                        region.listen
                    ),
                );
            }
            if let Some(url) = &region.advertise
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return fail(
                    &format!("regions.{name}.advertise"),
                    format!(
                        "is `{url}`, not a URL. Fix: write it like \"http://{}\"",
                        region.listen
                    ),
                );
            }
            let Location { lat, lon } = region.location;
            if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                return fail(
                    &format!("regions.{name}.location"),
                    format!(
                        "is lat {lat}, lon {lon}. Fix: latitude within -90..90 and longitude within -180..180"
                    ),
                );
            }
        }
        for (from, row) in &self.latency_ms {
            check_region(&format!("latency_ms.{from}"), from)?;
            for to in row.keys() {
                check_region(&format!("latency_ms.{from}.{to}"), to)?;
            }
        }
        for (name, class) in &self.classes {
            let at = |field: &str| format!("classes.{name}.{field}");
            if !valid_class_name(name) {
                return fail(
                    &format!("classes.{name}"),
                    "is not a valid class name. Fix: use lowercase letters, digits, '_' and '-', \
                     starting with a letter or digit"
                        .into(),
                );
            }
            if let Some(primary) = &class.primary {
                check_region(&at("primary"), primary)?;
            }
            if let Some(home) = &class.default_home {
                check_region(&at("default_home"), home)?;
            }
            for (prefix, home) in &class.home_prefixes {
                check_region(&at(&format!("home_prefixes.\"{prefix}\"")), home)?;
            }
            for (tenant, home) in &class.home_tenants {
                check_region(&at(&format!("home_tenants.{tenant}")), home)?;
            }
            let home_fields = class.default_home.is_some()
                || !class.home_prefixes.is_empty()
                || !class.home_tenants.is_empty();
            if home_fields && class.ownership != Ownership::Home {
                return fail(
                    &at("ownership"),
                    format!(
                        "is `{}` but home_* fields are set. Fix: set ownership = \"home\" or remove them",
                        class.ownership.as_str()
                    ),
                );
            }
            if class.tenant_separator.is_empty() {
                return fail(
                    &at("tenant_separator"),
                    "is empty. Fix: use e.g. \":\"".into(),
                );
            }
            if class.conflict != Policy::Merge
                && (!class.fields.is_empty() || class.default_field_rule != FieldRule::Lww)
            {
                return fail(
                    &at("fields"),
                    format!(
                        "are set but the class's conflict policy is `{}`. Fix: field rules apply to \
                         conflict = \"merge\" only",
                        class.conflict
                    ),
                );
            }
            if !class.limited_ops.is_empty() && class.rollout != Rollout::LimitedWrites {
                return fail(
                    &at("limited_ops"),
                    format!(
                        "is set but rollout is `{}`. Fix: set rollout = \"limited-writes\" or remove limited_ops",
                        class.rollout.as_str()
                    ),
                );
            }
            for op in &class.limited_ops {
                if !class.conflict.accepts(*op) {
                    return fail(
                        &at("limited_ops"),
                        format!(
                            "lists `{op}`, which a `{}` class does not take. Fix: {}",
                            class.conflict,
                            class.conflict.ops_hint()
                        ),
                    );
                }
            }
        }
        if self.replication.batch_max_ops == 0 || self.replication.group_commit_max_ops == 0 {
            return fail(
                "replication.batch_max_ops",
                "and group_commit_max_ops must be at least 1. Fix: use the defaults (1000, 2048)"
                    .into(),
            );
        }
        if self.storage.checkpoint_interval_ms == 0 || self.storage.wal_segment_bytes < 4096 {
            return fail(
                "storage.checkpoint_interval_ms",
                "must be at least 1 and storage.wal_segment_bytes at least 4096. Fix: use the defaults (1000, 67108864)".into(),
            );
        }
        let c = &self.collector;
        if c.flush_interval_ms == 0
            || c.flush_rows == 0
            || c.row_group_rows == 0
            || c.probe_interval_ms == 0
        {
            return fail(
                "collector",
                "flush_interval_ms, flush_rows, row_group_rows and probe_interval_ms must be at least 1. Fix: use the defaults".into(),
            );
        }
        if c.retention_days == 0 {
            return fail(
                "collector.retention_days",
                "is 0. Fix: keep at least one day, e.g. 30".into(),
            );
        }
        if self.replication.heartbeat_interval_ms == 0 {
            return fail(
                "replication.heartbeat_interval_ms",
                "is 0. Fix: use e.g. 1000".into(),
            );
        }
        crate::web_config::validate(
            &self.region_names(),
            &self.web,
            &self.slos,
            &self.alerts,
            &self.notifiers,
        )
        .or_else(|(field, msg)| fail(&field, msg))
    }

    /// Region names in order.
    pub fn region_names(&self) -> Vec<String> {
        self.regions.keys().cloned().collect()
    }

    /// The cluster's primary region.
    pub fn primary(&self) -> &str {
        match &self.cluster.primary {
            Some(p) => p,
            None => self.regions.keys().next().map(String::as_str).unwrap_or(""),
        }
    }

    /// The base URL of a region.
    pub fn region_url(&self, region: &str) -> Option<String> {
        let r = self.regions.get(region)?;
        Some(match &r.advertise {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", r.listen),
        })
    }

    /// Configured or estimated one-way latency between two regions (milliseconds).
    pub fn latency_between(&self, a: &str, b: &str) -> u32 {
        if a == b {
            return 0;
        }
        let given = |x: &str, y: &str| self.latency_ms.get(x).and_then(|row| row.get(y)).copied();
        if let Some(ms) = given(a, b).or_else(|| given(b, a)) {
            return ms;
        }
        match (self.regions.get(a), self.regions.get(b)) {
            (Some(ra), Some(rb)) => estimate_latency_ms(ra.location, rb.location),
            _ => 0,
        }
    }

    /// The declared user classes, comma-separated, for error messages.
    pub fn class_names(&self) -> String {
        let names: Vec<&str> = self
            .classes
            .keys()
            .filter(|n| !n.starts_with(SYSTEM_CLASS_PREFIX))
            .map(String::as_str)
            .collect();
        if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        }
    }
}

/// One-way latency estimated from great-circle distance: light in fibre
/// (~200 km/ms) over a path about 1.5x the straight line, plus 2 ms.
pub fn estimate_latency_ms(a: Location, b: Location) -> u32 {
    let km = great_circle_km(a, b);
    (km * 1.5 / 200.0 + 2.0).round() as u32
}

/// Great-circle distance in kilometres (haversine).
pub fn great_circle_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let dlat = lat2 - lat1;
    let dlon = (b.lon - a.lon).to_radians();
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

fn valid_region_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.len() <= 63
}

fn valid_class_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.len() <= 63
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"

[regions.us-east]
listen = "127.0.0.1:7101"
location = { lat = 39.0, lon = -77.5 }

[regions.eu-west]
listen = "127.0.0.1:7103"
location = { lat = 53.3, lon = -6.3 }

[classes.likes]
conflict = "gcounter"
"#;

    #[test]
    fn minimal_config_parses_with_defaults() {
        let c = Config::from_toml(MINIMAL, "parallax.toml").unwrap();
        assert_eq!(c.primary(), "eu-west");
        let likes = &c.classes["likes"];
        assert_eq!(likes.ownership, Ownership::Global);
        assert_eq!(likes.rollout, Rollout::ActiveActive);
        assert_eq!(c.replication.heartbeat_interval_ms, 1000);
        assert_eq!(c.region_url("us-east").unwrap(), "http://127.0.0.1:7101");
        let est = c.latency_between("us-east", "eu-west");
        assert!((30..70).contains(&est), "transatlantic estimate {est} ms");
    }

    #[test]
    fn unknown_field_is_refused_with_file_line_and_field() {
        let text = MINIMAL.replace(
            "conflict = \"gcounter\"",
            "conflict = \"gcounter\"\ncolour = 1",
        );
        let err = Config::from_toml(&text, "parallax.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("parallax.toml (line 1"), "{err}");
        assert!(err.contains("unknown field `colour`"), "{err}");
        assert!(err.contains("Fix:"), "{err}");
    }

    #[test]
    fn unknown_policy_lists_the_valid_ones() {
        let text = MINIMAL.replace("gcounter", "gcountr");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(
            err.contains("gcountr") && err.contains("pncounter"),
            "{err}"
        );
    }

    #[test]
    fn undeclared_region_is_named() {
        let text = format!("{MINIMAL}ownership = \"home\"\ndefault_home = \"ap-south\"\n");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("classes.likes.default_home"), "{err}");
        assert!(
            err.contains("ap-south") && err.contains("eu-west, us-east"),
            "{err}"
        );
    }

    #[test]
    fn no_room_for_user_sql_queries_is_refused_with_the_fix() {
        let c = Config::from_toml(MINIMAL, "p.toml").unwrap();
        assert_eq!(c.web.sql_max_concurrent, 4);
        let text = format!("{MINIMAL}\n[web]\nsql_max_concurrent = 0\n");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("web.sql_") && err.contains("Fix:"), "{err}");
    }

    #[test]
    fn field_rules_need_merge_policy() {
        let text = format!("{MINIMAL}fields = {{ a = \"max\" }}\n");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("classes.likes.fields"), "{err}");
    }

    #[test]
    fn limited_ops_must_fit_the_policy() {
        let text = format!("{MINIMAL}rollout = \"limited-writes\"\nlimited_ops = [\"add\"]\n");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("`add`") && err.contains("incr"), "{err}");
    }

    #[test]
    fn duplicate_listen_address_is_refused() {
        let text = MINIMAL.replace("7103", "7101");
        let err = Config::from_toml(&text, "p.toml").unwrap_err().to_string();
        assert!(err.contains("listen") && err.contains("us-east"), "{err}");
    }
}
