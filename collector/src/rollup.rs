//! 5-minute and hourly rollups of the tables that grow with traffic:
//! `requests` (one row per request), `replication_lag` (one row per pair
//! and heartbeat) and `conflicts` (one row per conflict). A rollup row counts the raw rows of one bucket
//! that share their keys, with their values as a histogram
//! ([`parallax_core::histogram`]), so a week- or month-long page reads a few
//! thousand rollup rows instead of hundreds of millions of raw ones.
//!
//! Rollups are written with every flush, from the rows the flush writes
//! (several rows of one bucket and keys then sit in several files, and
//! add up), and the 5-minute ones rebuilt from an hour's raw files when the
//! hour is compacted: one row per bucket and keys, and whatever a crash
//! between a raw file and its rollup file left out is counted again. They
//! live under their own tables (`requests_5m`, `replication_lag_5m`,
//! `requests_1h`, `replication_lag_1h`), partitioned by region and date
//! only — a month is 30 files per region, where hourly partitions made it
//! 720 and opening them cost more than reading them — each date merged into
//! one file by every maintenance pass, and are kept for
//! `collector.rollup_retention_days`, longer than the raw rows.
//!
//! An hourly rollup is its 5-minute rollup's rows summed by hour: a flush
//! writes both from the same rows (under one disk lock), and whenever a
//! maintenance pass rewrites a date of a 5-minute rollup it rewrites the
//! date of the hourly one from it, so the two always hold the same rows.
//!
//! `conflicts_5m` and `conflicts_1h` count `conflicts` by bucket, class,
//! policy and outcome, with the resolution times as a histogram: the raw
//! table has one file per hour, and a month of them took the conflicts
//! page 2.4 s to open.
//!
//! `latency_5m` and `latency_1h` are `requests_5m` summed by bucket and
//! class alone: the latency histogram of all a class's requests in a
//! bucket, whatever their op, status or band. The pages' percentiles never
//! split by op or status, and merging one histogram per class instead of
//! one per class, op, status and band is most of a month-long page's
//! work; they are written and rewritten from `requests_5m` the same way.
//!
//! Counts above a latency or freshness SLO's threshold must be exact, and a
//! histogram only places a value within 1/128: each row is also keyed by the
//! greatest configured threshold its values exceed (`latency_over_ms`,
//! `lag_over_ms`; 0 when none), so "slower than T" is
//! `latency_over_ms >= T` for every T the config names ([`Bounds`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Int32Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Field, Int32Type, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use parallax_core::config::Config;
use parallax_core::histogram::Histogram;
use parallax_core::web_config::SloKind;

/// A 5-minute rollup's bucket (µs).
pub const BUCKET_US: i64 = 300_000_000;

/// An hourly rollup's bucket (µs).
pub const HOUR_US: i64 = 3_600_000_000;

/// The rollup tables, in the order the README documents them; each after
/// the one it is summed from ([`finer_of`]).
pub const ROLLUPS: [&str; 8] = [
    "requests_5m",
    "replication_lag_5m",
    "requests_1h",
    "replication_lag_1h",
    "latency_5m",
    "latency_1h",
    "conflicts_5m",
    "conflicts_1h",
];

/// The rollups of a raw table, each after the one it is summed from; none
/// for a table without.
pub fn rollups_of(table: &str) -> &'static [&'static str] {
    match table {
        "requests" => &["requests_5m", "requests_1h", "latency_5m", "latency_1h"],
        "replication_lag" => &["replication_lag_5m", "replication_lag_1h"],
        "conflicts" => &["conflicts_5m", "conflicts_1h"],
        _ => &[],
    }
}

/// The raw table a rollup is built from.
pub fn raw_of(rollup: &str) -> Option<&'static str> {
    ["requests", "replication_lag", "conflicts"]
        .into_iter()
        .find(|t| rollups_of(t).contains(&rollup))
}

/// The rollup another is summed from; `None` for those rolled up from the
/// raw rows.
pub fn finer_of(rollup: &str) -> Option<&'static str> {
    match rollup {
        "requests_1h" | "latency_5m" => Some("requests_5m"),
        "replication_lag_1h" => Some("replication_lag_5m"),
        "latency_1h" => Some("latency_5m"),
        "conflicts_1h" => Some("conflicts_5m"),
        _ => None,
    }
}

/// A rollup's bucket (µs).
pub fn grain_of(rollup: &str) -> i64 {
    if rollup.ends_with("_1h") {
        HOUR_US
    } else {
        BUCKET_US
    }
}

/// The thresholds rollup rows are keyed by: every latency and freshness
/// SLO's `threshold_ms`, ascending, without 0.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Latency SLOs' thresholds (ms).
    pub latency_ms: Vec<u64>,
    /// Freshness SLOs' thresholds (ms).
    pub lag_ms: Vec<u64>,
}

impl Bounds {
    /// The thresholds of the SLOs `config` declares.
    pub fn of(config: &Config) -> Bounds {
        let of_kind = |kind: SloKind| {
            let mut v: Vec<u64> = config
                .slos
                .values()
                .filter(|s| s.kind == kind)
                .filter_map(|s| s.threshold_ms)
                .filter(|t| *t > 0)
                .collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Bounds {
            latency_ms: of_kind(SloKind::Latency),
            lag_ms: of_kind(SloKind::Freshness),
        }
    }
}

/// The greatest bound (ms) that `value` (in `per_ms` units of a ms)
/// exceeds, 0 if none. `bounds` ascending.
pub fn over(bounds: &[u64], value: i64, per_ms: i64) -> i64 {
    bounds
        .iter()
        .rev()
        .find(|b| value > **b as i64 * per_ms)
        .map_or(0, |b| *b as i64)
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

/// A rollup table's schema (without the partition columns).
pub fn schema_of(rollup: &str) -> Option<SchemaRef> {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let int64 = |n: &str| Field::new(n, DataType::Int64, false);
    let fields = match rollup {
        "requests_5m" | "requests_1h" => vec![
            ts_field("ts"),
            text("class"),
            text("op"),
            Field::new("status", DataType::Int32, false),
            int64("latency_over_ms"),
            int64("requests"),
            Field::new("latency_us", DataType::Binary, false),
        ],
        "conflicts_5m" | "conflicts_1h" => vec![
            ts_field("ts"),
            text("class"),
            text("policy"),
            text("outcome"),
            int64("conflicts"),
            Field::new("resolution_ms", DataType::Binary, false),
        ],
        "latency_5m" | "latency_1h" => vec![
            ts_field("ts"),
            text("class"),
            int64("requests"),
            Field::new("latency_us", DataType::Binary, false),
        ],
        "replication_lag_5m" | "replication_lag_1h" => vec![
            ts_field("ts"),
            text("src"),
            text("dst"),
            int64("lag_over_ms"),
            int64("samples"),
            Field::new("lag_ms", DataType::Binary, false),
            int64("max_lag_ms"),
            int64("applied_ops"),
            int64("max_backlog_ops"),
            ts_field("last_ts"),
            int64("backlog_ops"),
            int64("backlog_bytes"),
            Field::new("drain_ops_per_s", DataType::Int64, true),
            Field::new("eta_ms", DataType::Int64, true),
        ],
        _ => return None,
    };
    Some(Arc::new(Schema::new(fields)))
}

/// A raw column by name, or an error naming it.
fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, crate::Error> {
    batch
        .column_by_name(name)
        .ok_or_else(|| crate::Error::Io(format!("a raw batch has no column {name}")))
}

fn bucket_of(ts_us: i64, grain: i64) -> i64 {
    ts_us.div_euclid(grain) * grain
}

/// The 5-minute rollup rows of some raw batches of `table` (rows in any
/// order), one per bucket and keys, sorted by them; `None` for a table
/// without a rollup or without rows.
pub fn roll_up(
    table: &str,
    raw: &[RecordBatch],
    bounds: &Bounds,
) -> Result<Option<RecordBatch>, crate::Error> {
    if raw.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    match table {
        "requests" => requests(raw, &bounds.latency_ms).map(Some),
        "replication_lag" => lag(raw, &bounds.lag_ms).map(Some),
        "conflicts" => conflicts_merged("conflicts_5m", raw, BUCKET_US).map(Some),
        _ => Ok(None),
    }
}

/// Every rollup of some raw rows of `table`: the 5-minute rows rolled up
/// from them, and each other rollup summed from the one it is made from
/// ([`finer_of`]), in [`rollups_of`] order; rollups without rows left out.
pub fn roll_up_all(
    table: &str,
    raw: &[RecordBatch],
    bounds: &Bounds,
) -> Result<Vec<(&'static str, RecordBatch)>, crate::Error> {
    let mut rolled: Vec<(&'static str, RecordBatch)> = Vec::new();
    for rollup in rollups_of(table) {
        let made = match finer_of(rollup) {
            None => roll_up(table, raw, bounds)?,
            Some(finer) => match rolled.iter().find(|(r, _)| *r == finer) {
                Some((_, rows)) => merge(rollup, std::slice::from_ref(rows))?,
                None => None,
            },
        };
        if let Some(rows) = made {
            rolled.push((rollup, rows));
        }
    }
    Ok(rolled)
}

/// Rows of `rollup` from several files (several flushes, hours rebuilt
/// at compaction), or of its finer rollup, merged: one row per bucket of
/// `rollup` and keys, sorted by them; `None` without rows.
pub fn merge(rollup: &str, rows: &[RecordBatch]) -> Result<Option<RecordBatch>, crate::Error> {
    if rows.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let grain = grain_of(rollup);
    if rollup.starts_with("latency_") {
        return latency_merged(rollup, rows, grain).map(Some);
    }
    match raw_of(rollup) {
        Some("requests") => requests_merged(rollup, rows, grain).map(Some),
        Some("replication_lag") => lag_merged(rollup, rows, grain).map(Some),
        Some("conflicts") => conflicts_merged(rollup, rows, grain).map(Some),
        _ => Ok(None),
    }
}

/// (bucket, class, op, status, band) -> (requests, latency histogram).
type RequestGroups<'a> = BTreeMap<(i64, &'a str, &'a str, i32, i64), (i64, Histogram)>;

fn requests(raw: &[RecordBatch], bounds: &[u64]) -> Result<RecordBatch, crate::Error> {
    let mut groups = RequestGroups::new();
    for raw in raw {
        let ts = column(raw, "ts")?.as_primitive::<TimestampMicrosecondType>();
        let class = column(raw, "class")?.as_string::<i32>();
        let op = column(raw, "op")?.as_string::<i32>();
        let status = column(raw, "status")?.as_primitive::<Int32Type>();
        let latency = column(raw, "latency_us")?.as_primitive::<Int64Type>();
        for i in 0..raw.num_rows() {
            let l = latency.value(i);
            let key = (
                bucket_of(ts.value(i), BUCKET_US),
                class.value(i),
                op.value(i),
                status.value(i),
                over(bounds, l, 1_000),
            );
            let g = groups.entry(key).or_default();
            g.0 += 1;
            g.1.add(l as f64);
        }
    }
    requests_batch("requests_5m", &groups)
}

fn requests_merged(
    rollup: &str,
    rows: &[RecordBatch],
    grain: i64,
) -> Result<RecordBatch, crate::Error> {
    let mut groups = RequestGroups::new();
    for b in rows {
        let ts = column(b, "ts")?.as_primitive::<TimestampMicrosecondType>();
        let class = column(b, "class")?.as_string::<i32>();
        let op = column(b, "op")?.as_string::<i32>();
        let status = column(b, "status")?.as_primitive::<Int32Type>();
        let band = column(b, "latency_over_ms")?.as_primitive::<Int64Type>();
        let n = column(b, "requests")?.as_primitive::<Int64Type>();
        let hist = column(b, "latency_us")?.as_binary::<i32>();
        for i in 0..b.num_rows() {
            let key = (
                bucket_of(ts.value(i), grain),
                class.value(i),
                op.value(i),
                status.value(i),
                band.value(i),
            );
            let g = groups.entry(key).or_default();
            g.0 += n.value(i);
            g.1.merge_bytes(hist.value(i)).map_err(malformed)?;
        }
    }
    requests_batch(rollup, &groups)
}

/// Rows of `requests_5m`, `requests_1h` or a latency rollup (they share
/// `ts`, `class`, `requests` and `latency_us`) summed by bucket and class.
fn latency_merged(
    rollup: &str,
    rows: &[RecordBatch],
    grain: i64,
) -> Result<RecordBatch, crate::Error> {
    let mut groups: BTreeMap<(i64, &str), (i64, Histogram)> = BTreeMap::new();
    for b in rows {
        let ts = column(b, "ts")?.as_primitive::<TimestampMicrosecondType>();
        let class = column(b, "class")?.as_string::<i32>();
        let n = column(b, "requests")?.as_primitive::<Int64Type>();
        let hist = column(b, "latency_us")?.as_binary::<i32>();
        for i in 0..b.num_rows() {
            let g = groups
                .entry((bucket_of(ts.value(i), grain), class.value(i)))
                .or_default();
            g.0 += n.value(i);
            g.1.merge_bytes(hist.value(i)).map_err(malformed)?;
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(groups.keys().map(|k| k.0))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(groups.keys().map(|k| k.1))),
        Arc::new(Int64Array::from_iter_values(groups.values().map(|g| g.0))),
        Arc::new(BinaryArray::from_iter_values(
            groups.values().map(|g| g.1.to_bytes()),
        )),
    ];
    batch(rollup, columns)
}

/// Raw `conflicts` rows (one per conflict) or rows of a conflicts rollup,
/// counted by bucket, class, policy and outcome, with their resolution
/// times as a histogram.
fn conflicts_merged(
    rollup: &str,
    rows: &[RecordBatch],
    grain: i64,
) -> Result<RecordBatch, crate::Error> {
    let mut groups: BTreeMap<(i64, &str, &str, &str), (i64, Histogram)> = BTreeMap::new();
    for b in rows {
        let ts = column(b, "ts")?.as_primitive::<TimestampMicrosecondType>();
        let text = |n: &str| -> Result<&StringArray, crate::Error> {
            Ok(column(b, n)?.as_string::<i32>())
        };
        let (class, policy, outcome) = (text("class")?, text("policy")?, text("outcome")?);
        // A rollup's rows carry a count and a histogram; raw rows one each.
        let counted = b
            .column_by_name("conflicts")
            .map(|a| a.as_primitive::<Int64Type>());
        let resolution = column(b, "resolution_ms")?;
        for i in 0..b.num_rows() {
            let g = groups
                .entry((
                    bucket_of(ts.value(i), grain),
                    class.value(i),
                    policy.value(i),
                    outcome.value(i),
                ))
                .or_default();
            match counted {
                Some(n) => {
                    g.0 += n.value(i);
                    g.1.merge_bytes(resolution.as_binary::<i32>().value(i))
                        .map_err(malformed)?;
                }
                None => {
                    g.0 += 1;
                    g.1.add(resolution.as_primitive::<Int64Type>().value(i) as f64);
                }
            }
        }
    }
    let keys = || groups.keys();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(keys().map(|k| k.0)).with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(keys().map(|k| k.1))),
        Arc::new(StringArray::from_iter_values(keys().map(|k| k.2))),
        Arc::new(StringArray::from_iter_values(keys().map(|k| k.3))),
        Arc::new(Int64Array::from_iter_values(groups.values().map(|g| g.0))),
        Arc::new(BinaryArray::from_iter_values(
            groups.values().map(|g| g.1.to_bytes()),
        )),
    ];
    batch(rollup, columns)
}

fn malformed(e: parallax_core::histogram::Malformed) -> crate::Error {
    crate::Error::Io(format!("a rollup file's histogram: {e}"))
}

fn requests_batch(rollup: &str, groups: &RequestGroups<'_>) -> Result<RecordBatch, crate::Error> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(groups.keys().map(|k| k.0))
                .with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(groups.keys().map(|k| k.1))),
        Arc::new(StringArray::from_iter_values(groups.keys().map(|k| k.2))),
        Arc::new(Int32Array::from_iter_values(groups.keys().map(|k| k.3))),
        Arc::new(Int64Array::from_iter_values(groups.keys().map(|k| k.4))),
        Arc::new(Int64Array::from_iter_values(groups.values().map(|g| g.0))),
        Arc::new(BinaryArray::from_iter_values(
            groups.values().map(|g| g.1.to_bytes()),
        )),
    ];
    batch(rollup, columns)
}

/// One bucket's lag samples of one pair and band.
#[derive(Default)]
struct LagGroup {
    samples: i64,
    hist: Histogram,
    max_lag_ms: i64,
    applied_ops: i64,
    max_backlog_ops: i64,
    /// The latest sample's ts and backlog, drain pace and ETA.
    last: (i64, i64, i64, Option<i64>, Option<i64>),
}

impl LagGroup {
    fn empty() -> LagGroup {
        LagGroup {
            max_lag_ms: i64::MIN,
            last: (i64::MIN, 0, 0, None, None),
            ..LagGroup::default()
        }
    }
}

fn lag(raw: &[RecordBatch], bounds: &[u64]) -> Result<RecordBatch, crate::Error> {
    let mut groups: BTreeMap<(i64, &str, &str, i64), LagGroup> = BTreeMap::new();
    for raw in raw {
        lag_rows(raw, bounds, &mut groups)?;
    }
    lag_batch("replication_lag_5m", &groups)
}

/// Counts one raw batch's lag samples into `groups`.
fn lag_rows<'a>(
    raw: &'a RecordBatch,
    bounds: &[u64],
    groups: &mut BTreeMap<(i64, &'a str, &'a str, i64), LagGroup>,
) -> Result<(), crate::Error> {
    let ts = column(raw, "ts")?.as_primitive::<TimestampMicrosecondType>();
    let src = column(raw, "src")?.as_string::<i32>();
    let dst = column(raw, "dst")?.as_string::<i32>();
    let int = |n: &str| -> Result<&'a Int64Array, crate::Error> {
        Ok(column(raw, n)?.as_primitive::<Int64Type>())
    };
    let (lag_ms, backlog_ops, backlog_bytes, applied) = (
        int("lag_ms")?,
        int("backlog_ops")?,
        int("backlog_bytes")?,
        int("applied_ops")?,
    );
    // Files written before the catch-up pace existed have no such columns.
    let pace = |n: &str| raw.column_by_name(n).map(|a| a.as_primitive::<Int64Type>());
    let (drain, eta) = (pace("drain_ops_per_s"), pace("eta_ms"));
    let maybe = |a: Option<&Int64Array>, i: usize| a.filter(|a| a.is_valid(i)).map(|a| a.value(i));
    for i in 0..raw.num_rows() {
        let (t, l) = (ts.value(i), lag_ms.value(i));
        let key = (
            bucket_of(t, BUCKET_US),
            src.value(i),
            dst.value(i),
            over(bounds, l, 1),
        );
        let g = groups.entry(key).or_insert_with(LagGroup::empty);
        g.samples += 1;
        g.hist.add(l as f64);
        g.max_lag_ms = g.max_lag_ms.max(l);
        g.applied_ops += applied.value(i);
        g.max_backlog_ops = g.max_backlog_ops.max(backlog_ops.value(i));
        // Ties in ts keep the later row, as `last_value(... ORDER BY ts)`
        // may pick either.
        if t >= g.last.0 {
            g.last = (
                t,
                backlog_ops.value(i),
                backlog_bytes.value(i),
                maybe(drain, i),
                maybe(eta, i),
            );
        }
    }
    Ok(())
}

fn lag_merged(rollup: &str, rows: &[RecordBatch], grain: i64) -> Result<RecordBatch, crate::Error> {
    let mut groups: BTreeMap<(i64, &str, &str, i64), LagGroup> = BTreeMap::new();
    for b in rows {
        let ts = column(b, "ts")?.as_primitive::<TimestampMicrosecondType>();
        let last_ts = column(b, "last_ts")?.as_primitive::<TimestampMicrosecondType>();
        let src = column(b, "src")?.as_string::<i32>();
        let dst = column(b, "dst")?.as_string::<i32>();
        let hist = column(b, "lag_ms")?.as_binary::<i32>();
        let int = |n: &str| -> Result<&Int64Array, crate::Error> {
            Ok(column(b, n)?.as_primitive::<Int64Type>())
        };
        let (band, samples, max_lag, applied, max_backlog) = (
            int("lag_over_ms")?,
            int("samples")?,
            int("max_lag_ms")?,
            int("applied_ops")?,
            int("max_backlog_ops")?,
        );
        let (ops, bytes, drain, eta) = (
            int("backlog_ops")?,
            int("backlog_bytes")?,
            int("drain_ops_per_s")?,
            int("eta_ms")?,
        );
        let maybe = |a: &Int64Array, i: usize| a.is_valid(i).then(|| a.value(i));
        for i in 0..b.num_rows() {
            let key = (
                bucket_of(ts.value(i), grain),
                src.value(i),
                dst.value(i),
                band.value(i),
            );
            let g = groups.entry(key).or_insert_with(LagGroup::empty);
            g.samples += samples.value(i);
            g.hist.merge_bytes(hist.value(i)).map_err(malformed)?;
            g.max_lag_ms = g.max_lag_ms.max(max_lag.value(i));
            g.applied_ops += applied.value(i);
            g.max_backlog_ops = g.max_backlog_ops.max(max_backlog.value(i));
            if last_ts.value(i) >= g.last.0 {
                g.last = (
                    last_ts.value(i),
                    ops.value(i),
                    bytes.value(i),
                    maybe(drain, i),
                    maybe(eta, i),
                );
            }
        }
    }
    lag_batch(rollup, &groups)
}

fn lag_batch(
    rollup: &str,
    groups: &BTreeMap<(i64, &str, &str, i64), LagGroup>,
) -> Result<RecordBatch, crate::Error> {
    let keys = || groups.keys();
    let vals = || groups.values();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(keys().map(|k| k.0)).with_timezone("UTC"),
        ),
        Arc::new(StringArray::from_iter_values(keys().map(|k| k.1))),
        Arc::new(StringArray::from_iter_values(keys().map(|k| k.2))),
        Arc::new(Int64Array::from_iter_values(keys().map(|k| k.3))),
        Arc::new(Int64Array::from_iter_values(vals().map(|g| g.samples))),
        Arc::new(BinaryArray::from_iter_values(
            vals().map(|g| g.hist.to_bytes()),
        )),
        Arc::new(Int64Array::from_iter_values(vals().map(|g| g.max_lag_ms))),
        Arc::new(Int64Array::from_iter_values(vals().map(|g| g.applied_ops))),
        Arc::new(Int64Array::from_iter_values(
            vals().map(|g| g.max_backlog_ops),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(vals().map(|g| g.last.0))
                .with_timezone("UTC"),
        ),
        Arc::new(Int64Array::from_iter_values(vals().map(|g| g.last.1))),
        Arc::new(Int64Array::from_iter_values(vals().map(|g| g.last.2))),
        Arc::new(Int64Array::from_iter(vals().map(|g| g.last.3))),
        Arc::new(Int64Array::from_iter(vals().map(|g| g.last.4))),
    ];
    batch(rollup, columns)
}

/// The hour of the day (UTC) of a timestamp in µs.
fn hour_of_day(ts_us: i64) -> u32 {
    ts_us.div_euclid(3_600_000_000).rem_euclid(24) as u32
}

/// The `ts` (first column) of some rollup rows.
fn ts_of(b: &RecordBatch) -> &[i64] {
    b.column(0)
        .as_primitive::<TimestampMicrosecondType>()
        .values()
}

/// The hours of the day (UTC) that some rollup rows' buckets fall in.
pub fn hours_of(rows: &[RecordBatch]) -> BTreeSet<u32> {
    rows.iter()
        .flat_map(|b| ts_of(b).iter().map(|ts| hour_of_day(*ts)))
        .collect()
}

/// Rollup rows less those whose bucket falls in one of `hours` (of the day, UTC).
pub fn without_hours(
    rows: &[RecordBatch],
    hours: &BTreeSet<u32>,
) -> Result<Vec<RecordBatch>, crate::Error> {
    rows.iter()
        .map(|b| {
            let keep: BooleanArray = ts_of(b)
                .iter()
                .map(|ts| Some(!hours.contains(&hour_of_day(*ts))))
                .collect();
            arrow::compute::filter_record_batch(b, &keep)
                .map_err(|e| crate::Error::Io(format!("cannot filter rollup rows: {e}")))
        })
        .collect()
}

fn batch(rollup: &str, columns: Vec<ArrayRef>) -> Result<RecordBatch, crate::Error> {
    let schema = schema_of(rollup).expect("a rollup's schema");
    RecordBatch::try_new(schema, columns)
        .map_err(|e| crate::Error::Io(format!("cannot build the {rollup} rollup: {e}")))
}

#[cfg(test)]
#[path = "rollup_tests.rs"]
mod tests;
