//! The replication page: lag and backlog by region pair.

use std::collections::BTreeMap;

use serde::Serialize;

use super::common::{
    LagMatrix, f64_of, i64_of, matrix, per_region, per_region_from, rows, series_of, shown, str_of,
};
use crate::charts::Series;
use crate::filters::Filters;
use crate::rollup::{self, Plan};
use crate::sql::{SqlEngine, SqlError};

/// Replication statistics of one region pair.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PairStats {
    /// Where writes come from.
    pub src: String,
    /// Where they are applied.
    pub dst: String,
    /// Batches applied in the range.
    pub batches: i64,
    /// Lag percentiles and maximum (ms).
    pub p50_ms: f64,
    /// p99 (ms).
    pub p99_ms: f64,
    /// Maximum (ms).
    pub max_ms: f64,
    /// The latest backlog (operations not yet applied).
    pub backlog_ops: i64,
    /// The latest backlog (bytes).
    pub backlog_bytes: i64,
    /// Operations applied in the range.
    pub applied_ops: i64,
    /// While the latest backlog drains: operations per second it shrinks by.
    pub drain_ops_per_s: Option<i64>,
    /// While the latest backlog drains: when it will be empty (ms).
    pub eta_ms: Option<i64>,
}

/// What the feed-kept caches of one client reading one region reported.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CacheStats {
    /// The region whose feed keeps the cache.
    pub region: String,
    /// The client.
    pub client: String,
    /// Where it is.
    pub location: String,
    /// Reads in the range.
    pub reads: i64,
    /// Of which answered from memory.
    pub hits: i64,
    /// Sent to the region because the feed was not current.
    pub bypassed: i64,
    /// Reads from memory settled (known fresh or stale).
    pub settled: i64,
    /// Of those, stale.
    pub stale_hits: i64,
    /// The worst reported p99 staleness in the range (ms).
    pub staleness_p99_ms: Option<f64>,
    /// The largest staleness in the range (ms).
    pub staleness_max_ms: Option<f64>,
    /// The feed's lag at the latest report (ms).
    pub feed_lag_ms: Option<i64>,
}

/// The replication page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Replication {
    /// The lag matrix.
    pub lag: LagMatrix,
    /// Per pair.
    pub pairs: Vec<PairStats>,
    /// p99 lag per pair over time (ms).
    pub lag_series: Vec<Series>,
    /// Largest backlog per pair over time (operations).
    pub backlog_series: Vec<Series>,
    /// Feed-kept caches, by region and client.
    pub caches: Vec<CacheStats>,
    /// The worst p99 staleness of cache reads per region over time (ms).
    pub staleness_series: Vec<Series>,
}

/// The replication page.
pub async fn replication(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<Replication, SqlError> {
    let regions = shown(regions, f);
    // From the 5-minute rollups for whole buckets, the raw rows at the ends.
    let totals = Plan::totals(f.from_us, f.to_us);
    // Lag is recorded where it is applied: the region partition is `dst`.
    let pairs_sql = per_region_from(
        &regions,
        "src, sum(samples), approx_quantile(lag_ms, 0.5), \
         approx_quantile(lag_ms, 0.99), max(max_lag_ms), \
         last_value(backlog_ops ORDER BY last_ts), last_value(backlog_bytes ORDER BY last_ts), \
         sum(applied_ops), last_value(drain_ops_per_s ORDER BY last_ts), \
         last_value(eta_ms ORDER BY last_ts)",
        |r| rollup::lag(&totals, r, "TRUE", &[]),
        "src",
    );
    let b = f.bucket_sql();
    let series = Plan::series(f.from_us, f.to_us, f.step_s);
    let series_sql = per_region_from(
        &regions,
        &format!("src, {b} AS t, approx_quantile(lag_ms, 0.99), max(max_backlog_ops)"),
        |r| rollup::lag(&series, r, "TRUE", &[]),
        "src, t",
    );
    // All at once (see the overview).
    let (pair_rows, series_rows, (caches, staleness_series)) = futures::try_join!(
        rows(e, &pairs_sql),
        rows(e, &series_sql),
        caches(e, f, &regions)
    )?;
    let mut cells = BTreeMap::new();
    let mut pairs = Vec::new();
    for r in pair_rows {
        let p = PairStats {
            dst: str_of(&r[0]),
            src: str_of(&r[1]),
            batches: i64_of(&r[2]),
            p50_ms: f64_of(&r[3]).unwrap_or(0.0),
            p99_ms: f64_of(&r[4]).unwrap_or(0.0),
            max_ms: f64_of(&r[5]).unwrap_or(0.0),
            backlog_ops: i64_of(&r[6]),
            backlog_bytes: i64_of(&r[7]),
            applied_ops: i64_of(&r[8]),
            drain_ops_per_s: r[9].as_i64(),
            eta_ms: r[10].as_i64(),
        };
        cells.insert((p.src.clone(), p.dst.clone()), p.p99_ms);
        pairs.push(p);
    }
    pairs.sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
    let mut lag = Vec::new();
    let mut backlog = Vec::new();
    for r in series_rows {
        let (label, t) = (
            format!("{} → {}", str_of(&r[1]), str_of(&r[0])),
            i64_of(&r[2]),
        );
        lag.push((label.clone(), t, f64_of(&r[3]).unwrap_or(0.0)));
        backlog.push((label, t, i64_of(&r[4]) as f64));
    }
    Ok(Replication {
        lag: matrix(&regions, &cells),
        pairs,
        lag_series: series_of(lag),
        backlog_series: series_of(backlog),
        caches,
        staleness_series,
    })
}

/// The `cache_reads` rows of the range: per region and client, and the
/// worst p99 staleness per region over time.
async fn caches(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<(Vec<CacheStats>, Vec<Series>), SqlError> {
    let w = f.source("cache_reads", Some("region"), None);
    let b = f.bucket_sql();
    let per_client = per_region(
        regions,
        "client, location, sum(reads), sum(hits), sum(bypassed), sum(settled), \
         sum(stale_hits), max(staleness_p99_ms), max(staleness_max_ms), \
         last_value(feed_lag_ms ORDER BY ts)",
        &w,
        "client, location",
    );
    let staleness = per_region(
        regions,
        &format!("{b} AS t, max(staleness_p99_ms)"),
        &w,
        "t",
    );
    let (caches, over_time) = futures::try_join!(rows(e, &per_client), rows(e, &staleness))?;
    let caches = caches
        .into_iter()
        .map(|r| CacheStats {
            region: str_of(&r[0]),
            client: str_of(&r[1]),
            location: str_of(&r[2]),
            reads: i64_of(&r[3]),
            hits: i64_of(&r[4]),
            bypassed: i64_of(&r[5]),
            settled: i64_of(&r[6]),
            stale_hits: i64_of(&r[7]),
            staleness_p99_ms: f64_of(&r[8]),
            staleness_max_ms: f64_of(&r[9]),
            feed_lag_ms: r[10].as_i64(),
        })
        .collect::<Vec<_>>();
    let mut caches = caches;
    caches.sort_by(|a, b| {
        (&a.region, &a.client, &a.location).cmp(&(&b.region, &b.client, &b.location))
    });
    let mut points = Vec::new();
    for r in over_time {
        points.push((str_of(&r[0]), i64_of(&r[1]), f64_of(&r[2]).unwrap_or(0.0)));
    }
    Ok((caches, series_of(points)))
}
