//! The overview: each region's health, the lag matrix, throughput.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::common::{
    LagMatrix, f64_of, i64_of, matrix, pct, per_region_from, rows, series_of, shown, str_of,
};
use crate::charts::Series;
use crate::filters::Filters;
use crate::rollup::{self, Plan};
use crate::sql::{SqlEngine, SqlError};

/// One region's health at a glance.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RegionHealth {
    /// The region.
    pub region: String,
    /// `healthy`, `degraded` (not ready now, errors, lag or failing
    /// probes), `down` (it does not answer now, or no probe reached it
    /// lately) or `no data`.
    pub status: String,
    /// Requests it served in the range.
    pub requests: i64,
    /// Share of those answered 5xx (percent).
    pub error_pct: f64,
    /// Latency p99 (ms).
    pub p99_ms: Option<f64>,
    /// Worst replication lag into the region in the range (ms).
    pub max_lag_in_ms: Option<f64>,
    /// Share of probes towards it that succeeded in the range (percent).
    pub probes_ok_pct: Option<f64>,
    /// Conflicts recorded by it in the range.
    pub conflicts: i64,
    /// Asked just now (`GET /readyz` from the web server, 2 s limit):
    /// `ready`, `not ready` (it answered, but is starting or shutting
    /// down), `unreachable`, or empty when not asked.
    pub now: String,
    /// How long that answer took (ms).
    pub now_ms: Option<f64>,
}

impl RegionHealth {
    /// Folds in what the region answered just now: a region that does not
    /// answer is down whatever its telemetry said; one that answers but is
    /// not ready is degraded.
    pub fn asked_now(&mut self, answer: &str, took_ms: Option<f64>) {
        self.now = answer.to_owned();
        self.now_ms = took_ms;
        match answer {
            "unreachable" => self.status = "down".into(),
            "not ready" if self.status != "down" => self.status = "degraded".into(),
            _ => {}
        }
    }
}

/// The overview page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Overview {
    /// Each region's health.
    pub regions: Vec<RegionHealth>,
    /// The lag matrix.
    pub lag: LagMatrix,
    /// Requests per second by region over time.
    pub throughput: Vec<Series>,
    /// Divergent critical entities in the latest audit of each class.
    pub divergent_now: i64,
    /// Failovers in the range.
    pub failovers: i64,
    /// Which region reaches which, by the probes of the range's last minute.
    pub reachability: Reachability,
}

/// Probe failures by vantage point: a cut link between two regions shows as
/// their two cells red while the rest of their rows and columns stay green.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Reachability {
    /// Regions, rows (vantage: the prober) and columns (target) alike.
    pub regions: Vec<String>,
    /// Share of probes that failed (percent), `[vantage][target]`; `None`
    /// when there was no probe.
    pub failed_pct: Vec<Vec<Option<f64>>>,
    /// The window: the range's last this many seconds.
    pub window_s: i64,
}

/// The window of [`Reachability`].
const REACH_WINDOW_US: i64 = 60_000_000;

async fn reachability(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<Reachability, SqlError> {
    let from = (f.to_us - REACH_WINDOW_US).max(f.from_us);
    let src = crate::filters::time_scan("probes", from, f.to_us);
    let mut cells = BTreeMap::new();
    for r in rows(
        e,
        &format!(
            "SELECT vantage, target, count(*), count(*) FILTER (WHERE NOT ok) FROM {src} \
             GROUP BY vantage, target"
        ),
    )
    .await?
    {
        cells.insert(
            (str_of(&r[0]), str_of(&r[1])),
            pct(i64_of(&r[3]), i64_of(&r[2])),
        );
    }
    let m = matrix(regions, &cells);
    Ok(Reachability {
        regions: m.regions,
        failed_pct: m.p99_ms,
        window_s: (f.to_us - from) / 1_000_000,
    })
}

/// The overview.
pub async fn overview(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<Overview, SqlError> {
    let regions = shown(regions, f);
    let w = |t: &str| f.source(t, Some("region"), None);
    let mut health: BTreeMap<String, RegionHealth> = regions
        .iter()
        .map(|r| {
            (
                r.clone(),
                RegionHealth {
                    region: r.clone(),
                    status: "no data".into(),
                    requests: 0,
                    error_pct: 0.0,
                    p99_ms: None,
                    max_lag_in_ms: None,
                    probes_ok_pct: None,
                    conflicts: 0,
                    now: String::new(),
                    now_ms: None,
                },
            )
        })
        .collect();
    // Requests, lag and conflicts from the rollups for whole hours and
    // buckets, the raw rows at the ends. The page's queries are asked at
    // once: each waits on listing and opening files as much as on the
    // CPU, so together they take little longer than the slowest alone.
    let totals = Plan::totals(f.from_us, f.to_us);
    let requests_sql = per_region_from(
        &regions,
        "sum(requests), sum(requests) FILTER (WHERE status >= 500), \
         approx_quantile(latency_us, 0.99)",
        |r| rollup::requests(&totals, r, "TRUE", &[]),
        "",
    );
    // Lag is recorded where it is applied: the region partition is `dst`.
    let lag_sql = per_region_from(
        &regions,
        "src, approx_quantile(lag_ms, 0.99), max(max_lag_ms)",
        |r| rollup::lag(&totals, r, "TRUE", &[]),
        "src",
    );
    let wp = f.source("probes", Some("target"), None);
    let probes_sql = format!(
        "SELECT target, count(*), count(*) FILTER (WHERE ok), \
         max(CASE WHEN ok THEN ts END) >= max(ts) - INTERVAL '30 seconds' \
         FROM {wp} GROUP BY target"
    );
    let conflicts_sql = per_region_from(
        &regions,
        "sum(conflicts)",
        |r| rollup::conflicts(&totals, r, "TRUE"),
        "",
    );
    let b = f.bucket_sql();
    let step = f.step_s as f64;
    let series = Plan::series(f.from_us, f.to_us, f.step_s);
    let throughput_sql = per_region_from(
        &regions,
        &format!("{b} AS t, sum(requests)"),
        |r| rollup::request_counts(&series, r, "TRUE", &[]),
        "t",
    );
    // A failover a router ran writes a row per step, all with its id.
    let failovers_sql = format!(
        "SELECT count(DISTINCT failover_id) + sum(CASE WHEN failover_id IS NULL THEN 1 ELSE 0 END) FROM {}",
        w("failovers")
    );
    let (requests, lag, probes, conflicts, throughput, divergent_now, failovers, reach) = futures::try_join!(
        rows(e, &requests_sql),
        rows(e, &lag_sql),
        rows(e, &probes_sql),
        rows(e, &conflicts_sql),
        rows(e, &throughput_sql),
        latest_divergent(e, f),
        rows(e, &failovers_sql),
        reachability(e, f, &regions),
    )?;
    for r in requests {
        if let Some(h) = health.get_mut(&str_of(&r[0])) {
            h.requests = i64_of(&r[1]);
            h.error_pct = pct(i64_of(&r[2]), h.requests);
            h.p99_ms = f64_of(&r[3]).map(|us| us / 1e3);
        }
    }
    let mut cells = BTreeMap::new();
    for r in lag {
        let (dst, src) = (str_of(&r[0]), str_of(&r[1]));
        if let Some(p99) = f64_of(&r[2]) {
            cells.insert((src.clone(), dst.clone()), p99);
        }
        if let (Some(h), Some(max)) = (health.get_mut(&dst), f64_of(&r[3])) {
            h.max_lag_in_ms = Some(h.max_lag_in_ms.map_or(max, |m| m.max(max)));
        }
    }
    for r in probes {
        if let Some(h) = health.get_mut(&str_of(&r[0])) {
            h.probes_ok_pct = Some(pct(i64_of(&r[2]), i64_of(&r[1])));
            if r[3] != Value::Bool(true) {
                h.status = "down".into();
            }
        }
    }
    for r in conflicts {
        if let Some(h) = health.get_mut(&str_of(&r[0])) {
            h.conflicts = i64_of(&r[1]);
        }
    }
    for h in health.values_mut() {
        if h.status == "down" {
            continue;
        }
        let any = h.requests > 0 || h.max_lag_in_ms.is_some() || h.probes_ok_pct.is_some();
        if !any {
            continue;
        }
        let degraded = h.error_pct > 1.0
            || h.max_lag_in_ms.is_some_and(|l| l > 5_000.0)
            || h.probes_ok_pct.is_some_and(|p| p < 99.0);
        h.status = if degraded { "degraded" } else { "healthy" }.into();
    }
    let throughput = series_of(
        throughput
            .into_iter()
            .map(|r| (str_of(&r[0]), i64_of(&r[1]), i64_of(&r[2]) as f64 / step)),
    );
    let failovers = failovers.first().map_or(0, |r| i64_of(&r[0]));
    Ok(Overview {
        regions: health.into_values().collect(),
        lag: matrix(&regions, &cells),
        throughput,
        divergent_now,
        failovers,
        reachability: reach,
    })
}

/// Divergent keys in the latest audit of each class within the range.
async fn latest_divergent(e: &SqlEngine, f: &Filters) -> Result<i64, SqlError> {
    let w = f.source("audits", None, Some("class"));
    let r = rows(
        e,
        &format!(
            "WITH a AS (SELECT class, divergent, row_number() OVER (PARTITION BY class ORDER BY ts DESC) AS n \
             FROM {w}) SELECT coalesce(sum(divergent), 0) FROM a WHERE n = 1"
        ),
    )
    .await?;
    Ok(r.first().map_or(0, |r| i64_of(&r[0])))
}
