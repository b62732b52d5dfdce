//! Reading `requests`, `replication_lag` and `conflicts` over a range from their
//! rollups ([`parallax_collector::rollup`]): the hourly ones for the whole
//! hours in it, the 5-minute ones for the whole buckets left at its ends,
//! and the raw rows only for the partial buckets past those (and around any
//! other cut a query needs exact, like the start of an SLO's burn window:
//! the hour holding it goes to the 5-minute rollups, the bucket holding it
//! to the raw rows).
//!
//! Either way a query sees one source with the rollup's columns, `ts` as
//! microseconds since the epoch (BIGINT): raw rows enter it grouped by
//! 5-minute bucket ([`RawRows::Bucketed`], with their histogram from
//! `quantile_state`), or one by one with their own `ts`
//! ([`RawRows::Exact`], when a query compares `ts` to a cut inside a
//! bucket). Counts are `sum(requests)` / `sum(samples)` and percentiles
//! `approx_quantile(latency_us, q)` / `approx_quantile(lag_ms, q)` over it:
//! the same answers as over the raw rows, exactly (histograms add
//! exactly; `tests/rollups.rs` checks it over random data and ranges).

use parallax_collector::rollup::{BUCKET_US, HOUR_US, grain_of};

use crate::filters::time_scan;

/// The spans of a range (µs, half-open) each rollup answers, and those the
/// raw rows do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Whole hours, from the hourly rollups.
    pub hourly: Vec<(i64, i64)>,
    /// Whole 5-minute buckets outside those, from the 5-minute rollups.
    pub rolled: Vec<(i64, i64)>,
    /// The rest, from the raw rows.
    pub raw: Vec<(i64, i64)>,
}

fn push(spans: &mut Vec<(i64, i64)>, lo: i64, hi: i64) {
    if lo >= hi {
        return;
    }
    match spans.last_mut() {
        Some(last) if last.1 == lo => last.1 = hi,
        _ => spans.push((lo, hi)),
    }
}

/// The buckets `grains` uses, coarsest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grains {
    /// Hours, then 5-minute buckets, then raw rows.
    Hourly,
    /// 5-minute buckets, then raw rows.
    FiveMinutes,
}

impl Grains {
    fn widths(self) -> &'static [i64] {
        match self {
            Grains::Hourly => &[HOUR_US, BUCKET_US],
            Grains::FiveMinutes => &[BUCKET_US],
        }
    }
}

/// Splits `[from_us, to_us)`: each whole bucket of the coarsest grain goes
/// to its rollup, except a bucket holding one of `cuts` strictly inside
/// it, which is split by the next grain with the partial buckets at
/// either end; what no grain covers goes to the raw rows.
pub fn split(from_us: i64, to_us: i64, cuts: &[i64], grains: Grains) -> Split {
    let widths = grains.widths();
    let mut spans = vec![Vec::new(); widths.len() + 1];
    split_at(&mut spans, widths, 0, (from_us, to_us), cuts);
    let raw = spans.pop().unwrap_or_default();
    let rolled = spans.pop().unwrap_or_default();
    Split {
        hourly: spans.pop().unwrap_or_default(),
        rolled,
        raw,
    }
}

/// [`split`] of `[lo, hi)` from the grain `widths[level]` on, into
/// `spans[level..]`, each in ascending order.
fn split_at(
    spans: &mut [Vec<(i64, i64)>],
    widths: &[i64],
    level: usize,
    (lo, hi): (i64, i64),
    cuts: &[i64],
) {
    if lo >= hi {
        return;
    }
    let Some(&g) = widths.get(level) else {
        push(&mut spans[level], lo, hi);
        return;
    };
    let first = lo.div_euclid(g) * g + if lo.rem_euclid(g) == 0 { 0 } else { g };
    let end = hi.div_euclid(g) * g;
    if first >= end {
        split_at(spans, widths, level + 1, (lo, hi), cuts);
        return;
    }
    split_at(spans, widths, level + 1, (lo, first), cuts);
    let mut cut: Vec<i64> = cuts
        .iter()
        .filter(|c| **c > first && **c < end && c.rem_euclid(g) != 0)
        .map(|c| c.div_euclid(g) * g)
        .collect();
    cut.sort_unstable();
    cut.dedup();
    let mut at = first;
    for b in cut {
        push(&mut spans[level], at, b);
        split_at(spans, widths, level + 1, (b, b + g), cuts);
        at = b + g;
    }
    push(&mut spans[level], at, end);
    split_at(spans, widths, level + 1, (end, hi), cuts);
}

/// How raw rows enter a source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RawRows {
    /// Grouped by bucket of this many µs (5 minutes beside rollups; a
    /// chart's narrower step when the whole range is read raw).
    Bucketed(i64),
    /// One by one, with their own `ts`.
    Exact,
}

/// Which rows a query reads, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The spans.
    pub split: Split,
    /// How the raw spans' rows enter.
    pub raw: RawRows,
}

impl Plan {
    /// Totals over a range: rollups for its whole hours and buckets.
    pub fn totals(from_us: i64, to_us: i64) -> Plan {
        Plan {
            split: split(from_us, to_us, &[], Grains::Hourly),
            raw: RawRows::Bucketed(BUCKET_US),
        }
    }

    /// A chart over a range in steps of `step_s`: the hourly rollups when a
    /// step is whole hours, the 5-minute ones when it is whole buckets,
    /// else the raw rows grouped by step.
    pub fn series(from_us: i64, to_us: i64, step_s: i64) -> Plan {
        let step_us = step_s * 1_000_000;
        if step_us % HOUR_US == 0 {
            Plan::totals(from_us, to_us)
        } else if step_us % BUCKET_US == 0 {
            Plan {
                split: split(from_us, to_us, &[], Grains::FiveMinutes),
                raw: RawRows::Bucketed(BUCKET_US),
            }
        } else {
            Plan {
                split: Split {
                    raw: vec![(from_us, to_us)],
                    ..Split::default()
                },
                raw: RawRows::Bucketed(step_us),
            }
        }
    }

    /// Counts over windows of a range starting at `cuts`, compared by `ts`.
    pub fn windows(from_us: i64, to_us: i64, cuts: &[i64]) -> Plan {
        Plan {
            split: split(from_us, to_us, cuts, Grains::Hourly),
            raw: RawRows::Exact,
        }
    }
}

/// The rows of a rollup with `ts` in `[from_us, to_us)`, as a FROM source:
/// rollups are partitioned by date alone, so the dates pick the files and
/// `ts` (cheap to read from a rollup's few rows) the buckets.
fn day_scan(rollup: &str, from_us: i64, to_us: i64) -> String {
    let day = |us: i64| crate::time::date(us.div_euclid(86_400_000_000));
    format!(
        "(SELECT * FROM {rollup} WHERE date >= DATE '{}' AND date <= DATE '{}' \
         AND ts >= to_timestamp_micros({from_us}) AND ts < to_timestamp_micros({to_us})) AS {rollup}",
        day(from_us),
        day(to_us - 1)
    )
}

/// `CASE` giving the greatest of `bounds` (ms) that `col` (in `per_ms`
/// units of a ms) exceeds, 0 if none: the band the collector keys rollup
/// rows by ([`parallax_collector::rollup::over`]).
fn band_sql(col: &str, bounds: &[u64], per_ms: i64) -> String {
    if bounds.is_empty() {
        return "CAST(0 AS BIGINT)".into();
    }
    let arms: Vec<String> = bounds
        .iter()
        .rev()
        .map(|b| format!("WHEN {col} > {} THEN {b}", *b as i64 * per_ms))
        .collect();
    format!("CAST(CASE {} ELSE 0 END AS BIGINT)", arms.join(" "))
}

/// Spans of one rollup, as scans over as few stretches of it as need be:
/// spans less than six hours apart share one scan, less the buckets
/// between them.
fn rollup_scans(rollup: &str, spans: &[(i64, i64)], grain: i64) -> Vec<(String, String)> {
    let mut stretches: Vec<Vec<(i64, i64)>> = Vec::new();
    for span in spans {
        match stretches.last_mut() {
            Some(s) if span.0 - s.last().map_or(span.0, |l| l.1) < 6 * HOUR_US => s.push(*span),
            _ => stretches.push(vec![*span]),
        }
    }
    stretches
        .iter()
        .map(|s| {
            let (lo, hi) = (s[0].0, s[s.len() - 1].1);
            let holes: Vec<String> = s
                .windows(2)
                .flat_map(|w| (w[0].1..w[1].0).step_by(grain as usize))
                .map(|b| b.to_string())
                .collect();
            let holes = if holes.is_empty() {
                String::new()
            } else {
                format!(" AND CAST(ts AS BIGINT) NOT IN ({})", holes.join(", "))
            };
            (day_scan(rollup, lo, hi), holes)
        })
        .collect()
}

/// The rows of one region (`region` partition) in a plan's spans, as a
/// FROM source.
struct Shape<'a> {
    raw_table: &'a str,
    /// The rollups read, each with its columns after `ts` (the source's
    /// columns, from what the rollup has).
    rolled: &'a [(&'a str, &'a str)],
    /// The raw rows bucketed: the key columns after the bucket, and the
    /// aggregates; `t` is the bucket and `ts_us` the row's `ts` in µs.
    keys: &'a str,
    aggregates: &'a str,
    /// The raw rows one by one, the columns after `ts`.
    exact_cols: &'a str,
    /// Extra columns the bucketed rows' inner SELECT computes.
    inner: &'a str,
}

impl Shape<'_> {
    fn sql(&self, plan: &Plan, region: &str, filter: &str) -> String {
        let region = region.replace('\'', "''");
        let mut parts = Vec::new();
        for (rollup, cols) in self.rolled {
            let grain = grain_of(rollup);
            let spans = if grain == HOUR_US {
                &plan.split.hourly
            } else {
                &plan.split.rolled
            };
            for (scan, holes) in rollup_scans(rollup, spans, grain) {
                parts.push(format!(
                    "SELECT CAST(ts AS BIGINT) AS ts, {cols} FROM {scan} WHERE region = '{region}' \
                     AND {filter}{holes}",
                ));
            }
        }
        for (lo, hi) in &plan.split.raw {
            let scan = time_scan(self.raw_table, *lo, *hi);
            parts.push(match plan.raw {
                RawRows::Exact => format!(
                    "SELECT CAST(ts AS BIGINT) AS ts, {} FROM {scan} WHERE region = '{region}' AND {filter}",
                    self.exact_cols
                ),
                RawRows::Bucketed(grain) => format!(
                    "SELECT t AS ts, {keys}, {aggs} FROM (SELECT CAST(ts AS BIGINT) AS ts_us, \
                     CAST(ts AS BIGINT) / {grain} * {grain} AS t, {inner} FROM {scan} \
                     WHERE region = '{region}' AND {filter}) AS r GROUP BY t, {keys}",
                    keys = self.keys,
                    aggs = self.aggregates,
                    inner = self.inner,
                ),
            });
        }
        if parts.is_empty() {
            let (rollup, cols) = self.rolled[0];
            parts.push(format!(
                "SELECT CAST(ts AS BIGINT) AS ts, {cols} FROM {rollup} WHERE FALSE"
            ));
        }
        format!("({}) AS rolled", parts.join(" UNION ALL "))
    }
}

/// A region's `requests` over a plan as a FROM source with the columns of
/// `requests_5m`: `ts` (µs), `class`, `op`, `status`, `latency_over_ms`
/// (banded by `latency_bounds_ms`), `requests` and `latency_us` (a
/// histogram). From the rollups, the counts come from `requests_5m` and
/// `requests_1h` (`latency_us` null) and the histograms from `latency_5m`
/// and `latency_1h`, one per bucket and class (`requests` 0, `op`,
/// `status` and `latency_over_ms` null); raw rows one by one have no
/// histogram. So `sum(requests)` counts whatever `filter` says (a
/// condition on `class`, `op` or `status`), but percentiles follow a
/// filter on `class` alone.
pub fn requests(plan: &Plan, region: &str, filter: &str, latency_bounds_ms: &[u64]) -> String {
    requests_shaped(plan, region, filter, latency_bounds_ms, true)
}

/// [`requests`] for counts alone (`latency_us` always null): no latency
/// rollup is read and no raw row's histogram built.
pub fn request_counts(
    plan: &Plan,
    region: &str,
    filter: &str,
    latency_bounds_ms: &[u64],
) -> String {
    requests_shaped(plan, region, filter, latency_bounds_ms, false)
}

fn requests_shaped(
    plan: &Plan,
    region: &str,
    filter: &str,
    latency_bounds_ms: &[u64],
    latencies: bool,
) -> String {
    let band = band_sql("latency_us", latency_bounds_ms, 1_000);
    let inner = format!("class, op, status, {band} AS latency_over_ms, latency_us");
    let exact = format!(
        "class, op, status, {band} AS latency_over_ms, CAST(1 AS BIGINT) AS requests, \
         CAST(NULL AS BYTEA) AS latency_us"
    );
    let counts = "class, op, status, latency_over_ms, requests, CAST(NULL AS BYTEA) AS latency_us";
    let histograms = "class, CAST(NULL AS VARCHAR) AS op, CAST(NULL AS INT) AS status, \
                      CAST(NULL AS BIGINT) AS latency_over_ms, CAST(0 AS BIGINT) AS requests, latency_us";
    let with = [
        ("requests_1h", counts),
        ("latency_1h", histograms),
        ("requests_5m", counts),
        ("latency_5m", histograms),
    ];
    let without = [("requests_1h", counts), ("requests_5m", counts)];
    Shape {
        raw_table: "requests",
        rolled: if latencies { &with } else { &without },
        keys: "class, op, status, latency_over_ms",
        aggregates: if latencies {
            "count(*) AS requests, quantile_state(latency_us) AS latency_us"
        } else {
            "count(*) AS requests, CAST(NULL AS BYTEA) AS latency_us"
        },
        exact_cols: &exact,
        inner: &inner,
    }
    .sql(plan, region, filter)
}

/// A region's `conflicts` over a plan as a FROM source with the columns
/// of `conflicts_5m`: `ts` (µs), `class`, `policy`, `outcome`, `conflicts`
/// (a count) and `resolution_ms` (a histogram; null for raw rows one by
/// one). `filter` is a condition on `class`, `policy` or `outcome`.
pub fn conflicts(plan: &Plan, region: &str, filter: &str) -> String {
    const COLS: &str = "class, policy, outcome, conflicts, resolution_ms";
    Shape {
        raw_table: "conflicts",
        rolled: &[("conflicts_1h", COLS), ("conflicts_5m", COLS)],
        keys: "class, policy, outcome",
        aggregates: "count(*) AS conflicts, quantile_state(resolution_ms) AS resolution_ms",
        exact_cols: "class, policy, outcome, CAST(1 AS BIGINT) AS conflicts, \
                     CAST(NULL AS BYTEA) AS resolution_ms",
        inner: "class, policy, outcome, resolution_ms",
    }
    .sql(plan, region, filter)
}

/// The columns of a lag rollup after `ts`.
const LAG_COLS: &str = "src, dst, lag_over_ms, samples, lag_ms, max_lag_ms, applied_ops, \
                        max_backlog_ops, CAST(last_ts AS BIGINT) AS last_ts, backlog_ops, \
                        backlog_bytes, drain_ops_per_s, eta_ms";

/// The `replication_lag` applied in a region (its `dst`) over a plan as a
/// FROM source with the columns of `replication_lag_5m`: `ts` (µs), `src`,
/// `dst`, `lag_over_ms` (banded by `lag_bounds_ms`), `samples`, `lag_ms`
/// (a histogram; null for raw rows one by one), `max_lag_ms`,
/// `applied_ops`, `max_backlog_ops`, `last_ts` (µs) and the latest
/// `backlog_ops`, `backlog_bytes`, `drain_ops_per_s` and `eta_ms`.
pub fn lag(plan: &Plan, region: &str, filter: &str, lag_bounds_ms: &[u64]) -> String {
    let band = band_sql("lag_ms", lag_bounds_ms, 1);
    let inner = format!(
        "src, dst, {band} AS lag_over_ms, lag_ms, applied_ops, backlog_ops, backlog_bytes, \
         drain_ops_per_s, eta_ms"
    );
    let exact = format!(
        "src, dst, {band} AS lag_over_ms, CAST(1 AS BIGINT) AS samples, \
         CAST(NULL AS BYTEA) AS lag_ms, lag_ms AS max_lag_ms, applied_ops, \
         backlog_ops AS max_backlog_ops, CAST(ts AS BIGINT) AS last_ts, backlog_ops, \
         backlog_bytes, drain_ops_per_s, eta_ms"
    );
    Shape {
        raw_table: "replication_lag",
        rolled: &[
            ("replication_lag_1h", LAG_COLS),
            ("replication_lag_5m", LAG_COLS),
        ],
        keys: "src, dst, lag_over_ms",
        aggregates: "count(*) AS samples, quantile_state(lag_ms) AS lag_ms, \
                     max(lag_ms) AS max_lag_ms, sum(applied_ops) AS applied_ops, \
                     max(backlog_ops) AS max_backlog_ops, max(ts_us) AS last_ts, \
                     last_value(backlog_ops ORDER BY ts_us) AS backlog_ops, \
                     last_value(backlog_bytes ORDER BY ts_us) AS backlog_bytes, \
                     last_value(drain_ops_per_s ORDER BY ts_us) AS drain_ops_per_s, \
                     last_value(eta_ms ORDER BY ts_us) AS eta_ms",
        exact_cols: &exact,
        inner: &inner,
    }
    .sql(plan, region, filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M5: i64 = BUCKET_US;

    #[test]
    fn whole_buckets_go_to_the_rollups_and_the_ends_to_the_raw_rows() {
        // Aligned at both ends: all rollups.
        let five = |from, to, cuts: &[i64]| split(from, to, cuts, Grains::FiveMinutes);
        let s = five(0, 4 * M5, &[]);
        assert_eq!((s.rolled, s.raw), (vec![(0, 4 * M5)], vec![]));
        // Partial ends.
        let s = five(M5 / 2, 3 * M5 + 7, &[]);
        assert_eq!(s.rolled, vec![(M5, 3 * M5)]);
        assert_eq!(s.raw, vec![(M5 / 2, M5), (3 * M5, 3 * M5 + 7)]);
        // Inside one bucket, or short of a whole one: all raw.
        assert_eq!(five(10, M5 - 1, &[]).raw, vec![(10, M5 - 1)]);
        assert_eq!(five(M5 - 1, 2 * M5 - 2, &[]).rolled, vec![]);
    }

    #[test]
    fn a_cut_inside_a_bucket_makes_that_bucket_raw() {
        let cuts = [2 * M5 + 1, 4 * M5, 4 * M5 + 3, -5, 99 * M5];
        let s = split(0, 6 * M5, &cuts, Grains::FiveMinutes);
        assert_eq!(
            s.rolled,
            vec![(0, 2 * M5), (3 * M5, 4 * M5), (5 * M5, 6 * M5)]
        );
        assert_eq!(s.raw, vec![(2 * M5, 3 * M5), (4 * M5, 5 * M5)]);
    }

    #[test]
    fn whole_hours_go_to_the_hourly_rollups_and_their_ends_to_the_5_minute_ones() {
        const H: i64 = HOUR_US;
        // From 00:07:30 to 03:12:00, a cut at 01:40:01 and one at 02:00.
        let s = split(
            M5 + M5 / 2,
            3 * H + 2 * M5 + M5 / 2,
            &[H + 8 * M5 + 1, 2 * H],
            Grains::Hourly,
        );
        // The hour the cut is inside goes to 5-minute buckets; 02:00 is no cut.
        assert_eq!(s.hourly, vec![(2 * H, 3 * H)]);
        assert_eq!(
            s.rolled,
            vec![
                (2 * M5, H + 8 * M5),
                (H + 9 * M5, 2 * H),
                (3 * H, 3 * H + 2 * M5)
            ]
        );
        assert_eq!(
            s.raw,
            vec![
                (M5 + M5 / 2, 2 * M5),
                (H + 8 * M5, H + 9 * M5),
                (3 * H + 2 * M5, 3 * H + 2 * M5 + M5 / 2)
            ]
        );
        // Every µs of the range in exactly one span.
        let mut all: Vec<(i64, i64)> = [s.hourly, s.rolled, s.raw].concat();
        all.sort_unstable();
        assert!(all.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!(
            (all[0].0, all[all.len() - 1].1),
            (M5 + M5 / 2, 3 * H + 2 * M5 + M5 / 2)
        );
        // A week in 3-hour steps: hours; in 30-minute steps, 5-minute buckets.
        assert_eq!(
            Plan::series(0, 7 * 24 * H, 10_800).split.hourly,
            vec![(0, 7 * 24 * H)]
        );
        let p = Plan::series(0, 24 * H, 1_800);
        assert!(p.split.hourly.is_empty());
        assert_eq!(p.split.rolled, vec![(0, 24 * H)]);
    }

    #[test]
    fn spans_apart_are_scanned_apart_and_near_ones_together_less_the_gap() {
        const H: i64 = HOUR_US;
        let scans = rollup_scans(
            "requests_1h",
            &[(0, 2 * H), (3 * H, 5 * H), (20 * H, 21 * H)],
            H,
        );
        assert_eq!(scans.len(), 2);
        assert_eq!(
            scans[0].1,
            format!(" AND CAST(ts AS BIGINT) NOT IN ({})", 2 * H)
        );
        assert!(scans[1].1.is_empty());
    }

    #[test]
    fn a_chart_in_steps_narrower_than_a_bucket_reads_raw_rows_by_step() {
        let p = Plan::series(0, 3_600_000_000, 60);
        assert_eq!(p.raw, RawRows::Bucketed(60_000_000));
        assert!(p.split.rolled.is_empty());
        let p = Plan::series(0, 86_400_000_000, 1_800);
        assert_eq!(p.raw, RawRows::Bucketed(M5));
        assert_eq!(p.split.rolled, vec![(0, 86_400_000_000)]);
    }

    #[test]
    fn bands_match_the_collectors() {
        assert_eq!(band_sql("x", &[], 1), "CAST(0 AS BIGINT)");
        assert_eq!(
            band_sql("latency_us", &[100, 250], 1_000),
            "CAST(CASE WHEN latency_us > 250000 THEN 250 WHEN latency_us > 100000 THEN 100 ELSE 0 END AS BIGINT)"
        );
    }
}
