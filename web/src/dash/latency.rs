//! The latency and errors page, per region.

use serde::Serialize;

use super::common::{f64_of, i64_of, pct, per_region_from, rows, series_of, shown, str_of};
use crate::charts::Series;
use crate::filters::Filters;
use crate::rollup::{self, Plan};
use crate::sql::{SqlEngine, SqlError};

/// One region's latency and errors.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RegionLatency {
    /// Region.
    pub region: String,
    /// Requests.
    pub requests: i64,
    /// Percentiles (ms).
    pub p50_ms: f64,
    /// p95.
    pub p95_ms: f64,
    /// p99.
    pub p99_ms: f64,
    /// 5xx share (percent).
    pub error_pct: f64,
    /// 4xx share (percent).
    pub client_error_pct: f64,
}

/// The latency page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    /// Per region.
    pub regions: Vec<RegionLatency>,
    /// p99 per region over time (ms).
    pub p99_series: Vec<Series>,
    /// 5xx share per region over time (percent).
    pub error_series: Vec<Series>,
}

/// The latency and errors page: from the 5-minute rollups for whole
/// buckets, the raw rows at the ends ([`crate::rollup`]).
pub async fn latency(e: &SqlEngine, f: &Filters, regions: &[String]) -> Result<Latency, SqlError> {
    let shown = shown(regions, f);
    let filter = f.where_sql(None, Some("class"));
    let totals = Plan::totals(f.from_us, f.to_us);
    let totals_sql = per_region_from(
        &shown,
        "sum(requests), approx_quantile(latency_us, 0.5), \
         approx_quantile(latency_us, 0.95), approx_quantile(latency_us, 0.99), \
         sum(requests) FILTER (WHERE status >= 500), \
         sum(requests) FILTER (WHERE status >= 400 AND status < 500)",
        |r| rollup::requests(&totals, r, &filter, &[]),
        "",
    );
    let b = f.bucket_sql();
    let series = Plan::series(f.from_us, f.to_us, f.step_s);
    let series_sql = per_region_from(
        &shown,
        &format!(
            "{b} AS t, approx_quantile(latency_us, 0.99), sum(requests), \
             sum(requests) FILTER (WHERE status >= 500)"
        ),
        |r| rollup::requests(&series, r, &filter, &[]),
        "t",
    );
    // Both at once (see the overview).
    let (totals, over_time) = futures::try_join!(rows(e, &totals_sql), rows(e, &series_sql))?;
    let mut regions: Vec<RegionLatency> = totals
        .into_iter()
        .map(|r| {
            let n = i64_of(&r[1]);
            RegionLatency {
                region: str_of(&r[0]),
                requests: n,
                p50_ms: f64_of(&r[2]).unwrap_or(0.0) / 1e3,
                p95_ms: f64_of(&r[3]).unwrap_or(0.0) / 1e3,
                p99_ms: f64_of(&r[4]).unwrap_or(0.0) / 1e3,
                error_pct: pct(i64_of(&r[5]), n),
                client_error_pct: pct(i64_of(&r[6]), n),
            }
        })
        .collect();
    regions.sort_by(|a, b| a.region.cmp(&b.region));
    let mut p99 = Vec::new();
    let mut errors = Vec::new();
    for r in over_time {
        let (region, t) = (str_of(&r[0]), i64_of(&r[1]));
        p99.push((region.clone(), t, f64_of(&r[2]).unwrap_or(0.0) / 1e3));
        errors.push((region, t, pct(i64_of(&r[4]), i64_of(&r[3]))));
    }
    Ok(Latency {
        regions,
        p99_series: series_of(p99),
        error_series: series_of(errors),
    })
}
