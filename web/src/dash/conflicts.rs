//! The conflicts page's figures: counts by outcome, rates, resolution latency.

use std::collections::BTreeMap;

use serde::Serialize;

use super::common::{f64_of, i64_of, per_region_from, rows, series_of, shown, str_of};
use crate::charts::Series;
use crate::filters::Filters;
use crate::rollup::{self, Plan};
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

/// The conflicts page's figures over `regions` (those the filters show):
/// from the conflicts rollups for whole hours and buckets, the raw rows at
/// the ends ([`crate::rollup`]).
pub async fn conflicts(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<Conflicts, SqlError> {
    let shown = shown(regions, f);
    let filter = f.where_sql(None, Some("class"));
    let minutes = ((f.to_us - f.from_us) as f64 / 60e6).max(1.0 / 60.0);
    let totals = Plan::totals(f.from_us, f.to_us);
    let mut counts: BTreeMap<(String, String), ConflictCount> = BTreeMap::new();
    for r in rows(
        e,
        &per_region_from(
            &shown,
            "class, outcome, sum(conflicts)",
            |r| rollup::conflicts(&totals, r, &filter),
            "class, outcome",
        ),
    )
    .await?
    {
        let (region, class) = (str_of(&r[0]), str_of(&r[1]));
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
    let series = Plan::series(f.from_us, f.to_us, f.step_s);
    let mut per_class: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for r in rows(
        e,
        &per_region_from(
            &shown,
            &format!("class, {b} AS t, sum(conflicts)"),
            |r| rollup::conflicts(&series, r, &filter),
            "class, t",
        ),
    )
    .await?
    {
        *per_class.entry((str_of(&r[1]), i64_of(&r[2]))).or_default() += i64_of(&r[3]) as f64;
    }
    let rate_series = series_of(per_class.into_iter().map(|((c, t), n)| (c, t, n)));
    // Percentiles over every shown region at once: their histograms merge.
    let all: Vec<String> = shown
        .iter()
        .map(|r| format!("SELECT * FROM {}", rollup::conflicts(&totals, r, &filter)))
        .collect();
    let resolution = if all.is_empty() {
        Vec::new()
    } else {
        rows(
            e,
            &format!(
                "SELECT class, sum(conflicts), approx_quantile(resolution_ms, 0.5), \
                 approx_quantile(resolution_ms, 0.95), approx_quantile(resolution_ms, 0.99) \
                 FROM ({}) AS shown WHERE outcome <> 'queued' GROUP BY class ORDER BY class",
                all.join(" UNION ALL ")
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
        .collect()
    };
    Ok(Conflicts {
        counts: counts.into_values().collect(),
        rate_series,
        resolution,
    })
}
