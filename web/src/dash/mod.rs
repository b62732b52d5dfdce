//! The figures behind every dashboard page, computed with SQL over the
//! collector's tables, one module per dashboard. A page and its JSON twin
//! render the same struct, so they cannot disagree.

mod common;
mod conflicts;
mod cost;
mod divergence;
mod failovers;
mod latency;
mod marks;
mod overview;
mod replication;

pub use common::{LagMatrix, names, per_region, per_region_from};
pub use conflicts::{ConflictCount, Conflicts, Resolution, conflicts};
pub use cost::{Carried, ClassCost, Cost, KindCost, Mix, PairCost, WhatIf, cost, what_ifs};
pub use divergence::{AuditRun, CURRENT_STATE, Divergence, DivergentKey, divergence};
pub use failovers::{Failover, FailoverEvent, Failovers, Misdirected, failovers};
pub use latency::{Latency, RegionLatency, latency};
pub use marks::marks;
pub use overview::{Overview, Reachability, RegionHealth, overview};
pub use replication::{PairStats, Replication, replication};
