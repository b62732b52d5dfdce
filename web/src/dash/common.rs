//! What the dashboards share: running a query for its rows, reading
//! values out of them, one SELECT per region, series and the lag matrix.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::charts::Series;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

pub(super) fn f64_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

pub(super) fn i64_of(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        _ => 0,
    }
}

pub(super) fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) async fn rows(engine: &SqlEngine, sql: &str) -> Result<Vec<Vec<Value>>, SqlError> {
    Ok(engine.query(sql).await?.json_rows())
}

/// One SELECT of `cols` per region, joined by UNION ALL, each led by the
/// region's name and narrowed by `AND region = '<r>'`; `group_by` names the
/// other keys (none: regions without rows are left out). Every table is
/// partitioned by the region that recorded it (for `replication_lag`, the
/// destination, where lag is applied). The region is a partition column: each SELECT reads only its region's files and no row
/// hashes a region, which GROUP BY region costs DataFusion at every row
/// (2-4x at 80M rows; README, `bench query`).
pub fn per_region(regions: &[String], cols: &str, from_where: &str, group_by: &str) -> String {
    per_region_from(
        regions,
        cols,
        |r| format!("{from_where} AND region = '{r}'"),
        group_by,
    )
}

/// One SELECT of `cols` per region from the FROM source `source(region)`
/// (already narrowed to that region, like [`crate::rollup::requests`]),
/// joined by UNION ALL, each led by the region's name; `group_by` as for
/// [`per_region`].
pub fn per_region_from(
    regions: &[String],
    cols: &str,
    source: impl Fn(&str) -> String,
    group_by: &str,
) -> String {
    let tail = if group_by.is_empty() {
        "HAVING count(*) > 0".to_owned()
    } else {
        format!("GROUP BY {group_by}")
    };
    regions
        .iter()
        .map(|r| format!("SELECT '{r}' AS region, {cols} FROM {} {tail}", source(r)))
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Groups `(series label, epoch s, value)` rows into series, labels sorted.
pub(super) fn series_of(points: impl IntoIterator<Item = (String, i64, f64)>) -> Vec<Series> {
    let mut by: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for (label, t, v) in points {
        by.entry(label).or_default().push((t, v));
    }
    by.into_iter()
        .map(|(label, mut points)| {
            points.sort_by_key(|p| p.0);
            Series { label, points }
        })
        .collect()
}

/// The lag between every region pair.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LagMatrix {
    /// Regions, rows (source) and columns (destination) alike.
    pub regions: Vec<String>,
    /// p99 lag (ms), `[src][dst]`; `None` when no batch was seen.
    pub p99_ms: Vec<Vec<Option<f64>>>,
}

pub(super) fn matrix(regions: &[String], cells: &BTreeMap<(String, String), f64>) -> LagMatrix {
    LagMatrix {
        regions: regions.to_vec(),
        p99_ms: regions
            .iter()
            .map(|s| {
                regions
                    .iter()
                    .map(|d| cells.get(&(s.clone(), d.clone())).copied())
                    .collect()
            })
            .collect(),
    }
}

/// The regions to show: the configured ones passing the filter.
pub(super) fn shown(all: &[String], f: &Filters) -> Vec<String> {
    all.iter().filter(|r| f.wants_region(r)).cloned().collect()
}

pub(super) fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}
/// Classes and regions named in the data (for filter menus).
pub fn names(config: &parallax_core::config::Config) -> (Vec<String>, Vec<String>) {
    let classes: BTreeSet<String> = config
        .classes
        .keys()
        .filter(|c| !c.starts_with(parallax_core::config::SYSTEM_CLASS_PREFIX))
        .cloned()
        .collect();
    (config.region_names(), classes.into_iter().collect())
}
