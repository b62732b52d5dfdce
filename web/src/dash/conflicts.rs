//! The conflicts page's figures: counts by outcome, rates, resolution latency.

use std::collections::BTreeMap;

use serde::Serialize;

use super::common::{f64_of, i64_of, rows, series_of, str_of};
use crate::charts::Series;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

/// Conflicts of one class in one region.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConflictCount {
    /// Class.
    pub class: String,
    /// Region that recorded them.
    pub region: String,
    /// Per outcome (`merged`, `lww`, `queued`, `resolved`, ...).
    pub outcomes: BTreeMap<String, i64>,
    /// All outcomes.
    pub total: i64,
    /// Conflicts per minute over the range.
    pub per_min: f64,
}

/// Resolution latency of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Resolution {
    /// Class.
    pub class: String,
    /// Conflicts measured.
    pub count: i64,
    /// Percentiles (ms) of the time from the concurrent write to its resolution.
    pub p50_ms: f64,
    /// p95.
    pub p95_ms: f64,
    /// p99.
    pub p99_ms: f64,
}

/// The conflicts page (without the live queue).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Conflicts {
    /// Counts by class and region.
    pub counts: Vec<ConflictCount>,
    /// Conflicts per bucket by class over time.
    pub rate_series: Vec<Series>,
    /// Resolution latency by class.
    pub resolution: Vec<Resolution>,
}

/// The conflicts page's figures.
pub async fn conflicts(e: &SqlEngine, f: &Filters) -> Result<Conflicts, SqlError> {
    let w = f.source("conflicts", Some("region"), Some("class"));
    let minutes = ((f.to_us - f.from_us) as f64 / 60e6).max(1.0 / 60.0);
    let mut counts: BTreeMap<(String, String), ConflictCount> = BTreeMap::new();
    for r in rows(
        e,
        &format!("SELECT class, region, outcome, count(*) FROM {w} GROUP BY 1, 2, 3"),
    )
    .await?
    {
        let (class, region) = (str_of(&r[0]), str_of(&r[1]));
        let c = counts
            .entry((class.clone(), region.clone()))
            .or_insert_with(|| ConflictCount {
                class,
                region,
                outcomes: BTreeMap::new(),
                total: 0,
                per_min: 0.0,
            });
        let n = i64_of(&r[3]);
        c.outcomes.insert(str_of(&r[2]), n);
        c.total += n;
        c.per_min = c.total as f64 / minutes;
    }
    let b = f.bucket_sql();
    let rate_series = series_of(
        rows(
            e,
            &format!("SELECT class, {b} AS t, count(*) FROM {w} GROUP BY 1, 2"),
        )
        .await?
        .into_iter()
        .map(|r| (str_of(&r[0]), i64_of(&r[1]), i64_of(&r[2]) as f64)),
    );
    let resolution = rows(
        e,
        &format!(
            "SELECT class, count(*), approx_quantile(resolution_ms, 0.5), \
             approx_quantile(resolution_ms, 0.95), approx_quantile(resolution_ms, 0.99) \
             FROM {w} AND outcome <> 'queued' GROUP BY class ORDER BY class"
        ),
    )
    .await?
    .into_iter()
    .map(|r| Resolution {
        class: str_of(&r[0]),
        count: i64_of(&r[1]),
        p50_ms: f64_of(&r[2]).unwrap_or(0.0),
        p95_ms: f64_of(&r[3]).unwrap_or(0.0),
        p99_ms: f64_of(&r[4]).unwrap_or(0.0),
    })
    .collect();
    Ok(Conflicts {
        counts: counts.into_values().collect(),
        rate_series,
        resolution,
    })
}
