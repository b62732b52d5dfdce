//! Reading `requests` and `replication_lag` over a range from their
//! 5-minute rollups ([`parallax_collector::rollup`]) for the whole buckets
//! in it, and from the raw rows only for the partial buckets at its ends
//! (and around any other cut a query needs exact, like the start of an SLO's
//! burn window).
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

use parallax_collector::rollup::BUCKET_US;

use crate::filters::time_scan;

/// The spans of a range (µs, half-open) the rollups answer, and those the
/// raw rows do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Split {
    /// Whole buckets, from the rollups.
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

/// Splits `[from_us, to_us)`: the whole 5-minute buckets in it go to the
/// rollups, except a bucket holding one of `cuts` strictly inside it, which
/// goes to the raw rows with the partial buckets at either end.
pub fn split(from_us: i64, to_us: i64, cuts: &[i64]) -> Split {
    let mut out = Split::default();
    let first = from_us.div_euclid(BUCKET_US) * BUCKET_US
        + if from_us.rem_euclid(BUCKET_US) == 0 {
            0
        } else {
            BUCKET_US
        };
    let end = to_us.div_euclid(BUCKET_US) * BUCKET_US;
    if first >= end {
        push(&mut out.raw, from_us, to_us);
        return out;
    }
    let mut cut: Vec<i64> = cuts
        .iter()
        .filter(|c| **c > first && **c < end && c.rem_euclid(BUCKET_US) != 0)
        .map(|c| c.div_euclid(BUCKET_US) * BUCKET_US)
        .collect();
    cut.sort_unstable();
    cut.dedup();
    push(&mut out.raw, from_us, first);
    let mut at = first;
    for b in cut {
        push(&mut out.rolled, at, b);
        push(&mut out.raw, b, b + BUCKET_US);
        at = b + BUCKET_US;
    }
    push(&mut out.rolled, at, end);
    push(&mut out.raw, end, to_us);
    out
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
    /// Totals over a range: rollups for its whole buckets.
    pub fn totals(from_us: i64, to_us: i64) -> Plan {
        Plan {
            split: split(from_us, to_us, &[]),
            raw: RawRows::Bucketed(BUCKET_US),
        }
    }

    /// A chart over a range in steps of `step_s`: rollups when a step is
    /// whole buckets, else the raw rows grouped by step.
    pub fn series(from_us: i64, to_us: i64, step_s: i64) -> Plan {
        let step_us = step_s * 1_000_000;
        if step_us % BUCKET_US == 0 {
            Plan::totals(from_us, to_us)
        } else {
            Plan {
                split: Split {
                    rolled: Vec::new(),
                    raw: vec![(from_us, to_us)],
                },
                raw: RawRows::Bucketed(step_us),
            }
        }
    }

    /// Counts over windows of a range starting at `cuts`, compared by `ts`.
    pub fn windows(from_us: i64, to_us: i64, cuts: &[i64]) -> Plan {
        Plan {
            split: split(from_us, to_us, cuts),
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

/// The rows of one region (`region` partition) in a plan's spans, as a
/// FROM source.
struct Shape<'a> {
    raw_table: &'a str,
    rollup: &'a str,
    /// The rollup's columns after `ts`, as the rollup table has them.
    rolled_cols: &'a str,
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
        if let (Some(first), Some(last)) = (plan.split.rolled.first(), plan.split.rolled.last()) {
            // One scan over the rolled hull, less the raw buckets inside it.
            let holes: Vec<String> = plan
                .split
                .raw
                .iter()
                .filter(|(lo, hi)| *lo >= first.0 && *hi <= last.1)
                .flat_map(|(lo, hi)| (*lo..*hi).step_by(BUCKET_US as usize))
                .map(|b| b.to_string())
                .collect();
            let holes = if holes.is_empty() {
                String::new()
            } else {
                format!(" AND CAST(ts AS BIGINT) NOT IN ({})", holes.join(", "))
            };
            parts.push(format!(
                "SELECT CAST(ts AS BIGINT) AS ts, {} FROM {} WHERE region = '{region}' \
                 AND {filter}{holes}",
                self.rolled_cols,
                day_scan(self.rollup, first.0, last.1)
            ));
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
            parts.push(format!(
                "SELECT CAST(ts AS BIGINT) AS ts, {} FROM {} WHERE FALSE",
                self.rolled_cols, self.rollup
            ));
        }
        format!("({}) AS rolled", parts.join(" UNION ALL "))
    }
}

/// A region's `requests` over a plan as a FROM source with the columns of
/// `requests_5m`: `ts` (µs), `class`, `op`, `status`, `latency_over_ms`
/// (banded by `latency_bounds_ms`), `requests` and `latency_us` (a
/// histogram; null for raw rows one by one). `filter` is a condition on
/// `class`, `op` or `status`.
pub fn requests(plan: &Plan, region: &str, filter: &str, latency_bounds_ms: &[u64]) -> String {
    let band = band_sql("latency_us", latency_bounds_ms, 1_000);
    let inner = format!("class, op, status, {band} AS latency_over_ms, latency_us");
    let exact = format!(
        "class, op, status, {band} AS latency_over_ms, CAST(1 AS BIGINT) AS requests, \
         CAST(NULL AS BYTEA) AS latency_us"
    );
    Shape {
        raw_table: "requests",
        rollup: "requests_5m",
        rolled_cols: "class, op, status, latency_over_ms, requests, latency_us",
        keys: "class, op, status, latency_over_ms",
        aggregates: "count(*) AS requests, quantile_state(latency_us) AS latency_us",
        exact_cols: &exact,
        inner: &inner,
    }
    .sql(plan, region, filter)
}

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
        rollup: "replication_lag_5m",
        rolled_cols: "src, dst, lag_over_ms, samples, lag_ms, max_lag_ms, applied_ops, \
                      max_backlog_ops, CAST(last_ts AS BIGINT) AS last_ts, backlog_ops, \
                      backlog_bytes, drain_ops_per_s, eta_ms",
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
        let s = split(0, 4 * M5, &[]);
        assert_eq!((s.rolled, s.raw), (vec![(0, 4 * M5)], vec![]));
        // Partial ends.
        let s = split(M5 / 2, 3 * M5 + 7, &[]);
        assert_eq!(s.rolled, vec![(M5, 3 * M5)]);
        assert_eq!(s.raw, vec![(M5 / 2, M5), (3 * M5, 3 * M5 + 7)]);
        // Inside one bucket, or short of a whole one: all raw.
        assert_eq!(split(10, M5 - 1, &[]).raw, vec![(10, M5 - 1)]);
        assert_eq!(split(M5 - 1, 2 * M5 - 2, &[]).rolled, vec![]);
    }

    #[test]
    fn a_cut_inside_a_bucket_makes_that_bucket_raw() {
        let s = split(0, 6 * M5, &[2 * M5 + 1, 4 * M5, 4 * M5 + 3, -5, 99 * M5]);
        assert_eq!(
            s.rolled,
            vec![(0, 2 * M5), (3 * M5, 4 * M5), (5 * M5, 6 * M5)]
        );
        assert_eq!(s.raw, vec![(2 * M5, 3 * M5), (4 * M5, 5 * M5)]);
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
