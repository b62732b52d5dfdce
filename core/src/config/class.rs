//! `[classes.<name>]`: a kind of data, its conflict policy, ownership,
//! rollout stage, and the operations each policy takes.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// `[classes.<name>]`: a kind of data and its policies.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// How concurrent writes from different regions are reconciled.
    pub conflict: Policy,
    /// Which region may write a key.
    #[serde(default)]
    pub ownership: Ownership,
    /// How far the class has progressed from active-passive to active-active:
    /// the stage it starts in. `parallax rollout` moves it at runtime, and
    /// a stage set that way wins over this one until it is moved again.
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
    /// (`put`, `delete`, `incr`, `add`, `remove`, `resolve`); others go to the
    /// primary. May be set in any stage, for when the class is moved there.
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

fn default_tenant_separator() -> String {
    ":".to_owned()
}
fn default_bounded_staleness_ms() -> u64 {
    5_000
}
