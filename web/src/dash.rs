//! The figures behind every dashboard page, computed with SQL over the
//! collector's tables. A page and its JSON twin render the same struct, so
//! they cannot disagree.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde_json::Value;

use crate::charts::Series;
use crate::filters::Filters;
use crate::sql::{SqlEngine, SqlError};

fn f64_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        Value::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

fn i64_of(v: &Value) -> i64 {
    match v {
        Value::Number(n) => n
            .as_i64()
            .unwrap_or_else(|| n.as_f64().unwrap_or(0.0) as i64),
        _ => 0,
    }
}

fn str_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

async fn rows(engine: &SqlEngine, sql: &str) -> Result<Vec<Vec<Value>>, SqlError> {
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
    let tail = if group_by.is_empty() {
        "HAVING count(*) > 0".to_owned()
    } else {
        format!("GROUP BY {group_by}")
    };
    regions
        .iter()
        .map(|r| {
            format!("SELECT '{r}' AS region, {cols} FROM {from_where} AND region = '{r}' {tail}")
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Groups `(series label, epoch s, value)` rows into series, labels sorted.
fn series_of(points: impl IntoIterator<Item = (String, i64, f64)>) -> Vec<Series> {
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

/// The lag between every region pair.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LagMatrix {
    /// Regions, rows (source) and columns (destination) alike.
    pub regions: Vec<String>,
    /// p99 lag (ms), `[src][dst]`; `None` when no batch was seen.
    pub p99_ms: Vec<Vec<Option<f64>>>,
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
}

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
}

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

/// One audit of one class.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AuditRun {
    /// When it finished (RFC 3339).
    pub ts: String,
    /// The audit.
    pub audit_id: String,
    /// Class.
    pub class: String,
    /// Entities compared.
    pub entities: i64,
    /// Keys whose copies differed.
    pub differing: i64,
    /// ... of which replication was still delivering.
    pub in_flight: i64,
    /// ... of which truly diverged.
    pub divergent: i64,
    /// Duration (ms).
    pub duration_ms: i64,
}

/// The latest state of one key an audit found differing.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DivergentKey {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The latest state: `divergent`, `in_flight` or `repaired` as the
    /// latest audit record says, or `cleared` when a later audit of the
    /// class no longer found the key.
    pub state: String,
    /// Why (what the auditor saw, or what the repair did).
    pub reason: String,
    /// Regions whose copies differ.
    pub regions: String,
    /// First seen (RFC 3339).
    pub first_seen: String,
    /// Last seen (RFC 3339).
    pub last_seen: String,
    /// Age when last seen (ms).
    pub age_ms: i64,
}

/// The divergence page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Divergence {
    /// The latest audits, newest first.
    pub audits: Vec<AuditRun>,
    /// Keys found differing in the range, latest state, divergent first.
    pub keys: Vec<DivergentKey>,
    /// Divergent keys per audit bucket, by class.
    pub series: Vec<Series>,
}

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

/// One failover or ownership move.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FailoverEvent {
    /// When (RFC 3339).
    pub ts: String,
    /// Region that recorded it.
    pub region: String,
    /// What happened.
    pub event: String,
    /// Time from the failure to its detection (ms), when measured.
    pub detected_ms: Option<i64>,
    /// Time from the failure until traffic was rerouted (ms), when measured.
    pub rerouted_ms: Option<i64>,
}

/// The failovers page.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Failovers {
    /// Events, newest first.
    pub events: Vec<FailoverEvent>,
    /// Longest detection (ms).
    pub max_detected_ms: Option<i64>,
    /// Longest reroute (ms).
    pub max_rerouted_ms: Option<i64>,
}

fn matrix(regions: &[String], cells: &BTreeMap<(String, String), f64>) -> LagMatrix {
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
fn shown(all: &[String], f: &Filters) -> Vec<String> {
    all.iter().filter(|r| f.wants_region(r)).cloned().collect()
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
    for r in rows(
        e,
        &per_region(
            &regions,
            "count(*), count(*) FILTER (WHERE status >= 500), \
             approx_quantile(latency_us, 0.99)",
            &w("requests"),
            "",
        ),
    )
    .await?
    {
        if let Some(h) = health.get_mut(&str_of(&r[0])) {
            h.requests = i64_of(&r[1]);
            h.error_pct = pct(i64_of(&r[2]), h.requests);
            h.p99_ms = f64_of(&r[3]).map(|us| us / 1e3);
        }
    }
    let wl = f.source("replication_lag", Some("dst"), None);
    let mut cells = BTreeMap::new();
    for r in rows(
        e,
        // Lag is recorded where it is applied: the region partition is `dst`.
        &per_region(
            &regions,
            "src, approx_quantile(lag_ms, 0.99), max(lag_ms)",
            &wl,
            "src",
        ),
    )
    .await?
    {
        let (dst, src) = (str_of(&r[0]), str_of(&r[1]));
        if let Some(p99) = f64_of(&r[2]) {
            cells.insert((src.clone(), dst.clone()), p99);
        }
        if let (Some(h), Some(max)) = (health.get_mut(&dst), f64_of(&r[3])) {
            h.max_lag_in_ms = Some(h.max_lag_in_ms.map_or(max, |m| m.max(max)));
        }
    }
    let wp = f.source("probes", Some("target"), None);
    for r in rows(
        e,
        &format!(
            "SELECT target, count(*), count(*) FILTER (WHERE ok), \
             max(CASE WHEN ok THEN ts END) >= max(ts) - INTERVAL '30 seconds' \
             FROM {wp} GROUP BY target"
        ),
    )
    .await?
    {
        if let Some(h) = health.get_mut(&str_of(&r[0])) {
            h.probes_ok_pct = Some(pct(i64_of(&r[2]), i64_of(&r[1])));
            if r[3] != Value::Bool(true) {
                h.status = "down".into();
            }
        }
    }
    for r in rows(
        e,
        &format!(
            "SELECT region, count(*) FROM {} GROUP BY region",
            w("conflicts")
        ),
    )
    .await?
    {
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
    let b = f.bucket_sql();
    let step = f.step_s as f64;
    let throughput = series_of(
        rows(
            e,
            &per_region(
                &regions,
                &format!("{b} AS t, count(*)"),
                &w("requests"),
                "t",
            ),
        )
        .await?
        .into_iter()
        .map(|r| (str_of(&r[0]), i64_of(&r[1]), i64_of(&r[2]) as f64 / step)),
    );
    let divergent_now = latest_divergent(e, f).await?;
    let failovers = rows(e, &format!("SELECT count(*) FROM {}", w("failovers")))
        .await?
        .first()
        .map_or(0, |r| i64_of(&r[0]));
    Ok(Overview {
        regions: health.into_values().collect(),
        lag: matrix(&regions, &cells),
        throughput,
        divergent_now,
        failovers,
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

fn pct(part: i64, whole: i64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The replication page.
pub async fn replication(
    e: &SqlEngine,
    f: &Filters,
    regions: &[String],
) -> Result<Replication, SqlError> {
    let regions = shown(regions, f);
    let w = f.source("replication_lag", Some("dst"), None);
    let mut cells = BTreeMap::new();
    let mut pairs = Vec::new();
    for r in rows(
        e,
        // Lag is recorded where it is applied: the region partition is `dst`.
        &per_region(
            &regions,
            "src, count(*), approx_quantile(lag_ms, 0.5), \
             approx_quantile(lag_ms, 0.99), max(lag_ms), \
             last_value(backlog_ops ORDER BY ts), last_value(backlog_bytes ORDER BY ts), sum(applied_ops)",
            &w,
            "src",
        ),
    )
    .await?
    {
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
        };
        cells.insert((p.src.clone(), p.dst.clone()), p.p99_ms);
        pairs.push(p);
    }
    pairs.sort_by(|a, b| (&a.src, &a.dst).cmp(&(&b.src, &b.dst)));
    let b = f.bucket_sql();
    let mut lag = Vec::new();
    let mut backlog = Vec::new();
    for r in rows(
        e,
        &per_region(
            &regions,
            &format!("src, {b} AS t, approx_quantile(lag_ms, 0.99), max(backlog_ops)"),
            &w,
            "src, t",
        ),
    )
    .await?
    {
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
    })
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

/// A key's current state, from its latest `divergence` row `d` and the
/// latest audit of its class `a.audited`: an audit after the row that no
/// longer found the key (a clean audit writes no row for it) cleared it.
pub const CURRENT_STATE: &str = "CASE WHEN a.audited > d.ts THEN 'cleared' ELSE d.state END";

/// The divergence page.
pub async fn divergence(e: &SqlEngine, f: &Filters) -> Result<Divergence, SqlError> {
    let wa = f.source("audits", None, Some("class"));
    let wd = f.source("divergence", None, Some("class"));
    let audits = rows(
        e,
        &format!(
            "SELECT ts, audit_id, class, entities, differing, in_flight, divergent, duration_ms \
             FROM {wa} ORDER BY ts DESC, class LIMIT 200"
        ),
    )
    .await?
    .into_iter()
    .map(|r| AuditRun {
        ts: str_of(&r[0]),
        audit_id: str_of(&r[1]),
        class: str_of(&r[2]),
        entities: i64_of(&r[3]),
        differing: i64_of(&r[4]),
        in_flight: i64_of(&r[5]),
        divergent: i64_of(&r[6]),
        duration_ms: i64_of(&r[7]),
    })
    .collect();
    let keys = rows(
        e,
        &format!(
            "WITH d AS (SELECT class, key, state, reason, array_to_string(regions, ', ') AS regions, first_seen, ts, age_ms, \
             row_number() OVER (PARTITION BY class, key ORDER BY ts DESC) AS n FROM {wd}), \
             a AS (SELECT class, max(ts) AS audited FROM {wa} GROUP BY class), \
             k AS (SELECT d.class, d.key, {CURRENT_STATE} AS state, d.reason, d.regions, d.first_seen, d.ts, d.age_ms \
             FROM d LEFT JOIN a ON a.class = d.class WHERE d.n = 1) \
             SELECT class, key, state, reason, regions, first_seen, ts, age_ms FROM k \
             ORDER BY CASE state WHEN 'divergent' THEN 0 WHEN 'in_flight' THEN 1 ELSE 2 END, first_seen LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| DivergentKey {
        class: str_of(&r[0]),
        key: str_of(&r[1]),
        state: str_of(&r[2]),
        reason: str_of(&r[3]),
        regions: str_of(&r[4]),
        first_seen: str_of(&r[5]),
        last_seen: str_of(&r[6]),
        age_ms: i64_of(&r[7]),
    })
    .collect();
    let b = f.bucket_sql();
    let series = series_of(
        rows(
            e,
            &format!(
                "WITH a AS (SELECT class, {b} AS t, audit_id, max(divergent) AS d FROM {wa} GROUP BY 1, 2, 3) \
                 SELECT class, t, max(d) FROM a GROUP BY 1, 2"
            ),
        )
        .await?
        .into_iter()
        .map(|r| (str_of(&r[0]), i64_of(&r[1]), i64_of(&r[2]) as f64)),
    );
    Ok(Divergence {
        audits,
        keys,
        series,
    })
}

/// The latency and errors page.
pub async fn latency(e: &SqlEngine, f: &Filters, regions: &[String]) -> Result<Latency, SqlError> {
    let shown = shown(regions, f);
    let w = f.source("requests", Some("region"), Some("class"));
    let mut regions: Vec<RegionLatency> = rows(
        e,
        &per_region(
            &shown,
            "count(*), approx_quantile(latency_us, 0.5), \
             approx_quantile(latency_us, 0.95), approx_quantile(latency_us, 0.99), \
             count(*) FILTER (WHERE status >= 500), \
             count(*) FILTER (WHERE status >= 400 AND status < 500)",
            &w,
            "",
        ),
    )
    .await?
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
    let b = f.bucket_sql();
    let mut p99 = Vec::new();
    let mut errors = Vec::new();
    for r in rows(
        e,
        &per_region(
            &shown,
            &format!(
                "{b} AS t, approx_quantile(latency_us, 0.99), count(*), \
                 count(*) FILTER (WHERE status >= 500)"
            ),
            &w,
            "t",
        ),
    )
    .await?
    {
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

/// The failovers page.
pub async fn failovers(e: &SqlEngine, f: &Filters) -> Result<Failovers, SqlError> {
    let w = f.source("failovers", Some("region"), None);
    let events: Vec<FailoverEvent> = rows(
        e,
        &format!(
            "SELECT ts, region, event, detected_ms, rerouted_ms FROM {w} \
             ORDER BY ts DESC LIMIT 500"
        ),
    )
    .await?
    .into_iter()
    .map(|r| FailoverEvent {
        ts: str_of(&r[0]),
        region: str_of(&r[1]),
        event: str_of(&r[2]),
        detected_ms: r[3].as_i64(),
        rerouted_ms: r[4].as_i64(),
    })
    .collect();
    Ok(Failovers {
        max_detected_ms: events.iter().filter_map(|e| e.detected_ms).max(),
        max_rerouted_ms: events.iter().filter_map(|e| e.rerouted_ms).max(),
        events,
    })
}

/// Classes and regions named in the data (for filter menus).
pub fn names(config: &parallax_replicator::config::Config) -> (Vec<String>, Vec<String>) {
    let classes: BTreeSet<String> = config
        .classes
        .keys()
        .filter(|c| !c.starts_with(parallax_replicator::config::SYSTEM_CLASS_PREFIX))
        .cloned()
        .collect();
    (config.region_names(), classes.into_iter().collect())
}
