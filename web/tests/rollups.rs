//! The 5-minute and hourly rollups answer every question the pages, SLOs and alerts
//! ask exactly as the raw rows do: counts, counts over an SLO threshold,
//! percentiles, maxima, sums and latest values, over random data, random
//! ranges, random windows and chart steps, whether the rollups came from
//! several flushes or were rebuilt at compaction.

use std::path::Path;

use parallax_collector::rollup::Bounds;
use parallax_collector::{Collector, CollectorOptions};
use parallax_core::clock::ManualClock;
use parallax_core::config::CollectorConfig;
use parallax_core::telemetry::{ConflictEvent, Event, ReplicationEvent, RequestEvent};
use parallax_web::filters::time_scan;
use parallax_web::rollup::{self, Plan};
use parallax_web::{SqlEngine, SqlLimits};
use proptest::prelude::*;
use serde_json::Value;

/// 2026-11-28T00:00:00Z.
const T0: i64 = 1_795_824_000_000_000;
/// The data spans three hours.
const SPAN: i64 = 3 * 3_600_000_000;
const LATENCY_BOUNDS: [u64; 2] = [100, 250];
const LAG_BOUNDS: [u64; 1] = [500];

/// The data of one case, from its seed.
struct Rng(rand::rngs::SmallRng);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        rand::Rng::random_range(&mut self.0, 0..n)
    }
}

fn collector(dir: &Path, now_us: i64) -> Collector {
    Collector::new(
        CollectorOptions {
            root: dir.join("tables"),
            bucket: None,
            region: "eu-west".into(),
            config: CollectorConfig::default(),
            probe_urls: Default::default(),
            secrets: parallax_core::secrets::SecretCell::tokens(&[]),
            bounds: Bounds {
                latency_ms: LATENCY_BOUNDS.to_vec(),
                lag_ms: LAG_BOUNDS.to_vec(),
            },
            clock: std::sync::Arc::new(ManualClock::new((now_us / 1_000) as u64)),
            links: None,
            tls: Default::default(),
        },
        None,
    )
    .unwrap()
}

/// Writes `requests` and `replication_lag` rows over [`SPAN`] in `flushes`
/// flushes, each of rows anywhere in the span, then, if `compact`,
/// compacts the closed hours (rebuilding their rollups from the raw files).
fn write(dir: &Path, seed: u64, rows: usize, flushes: usize, compact: bool) {
    let mut rng = Rng(rand::SeedableRng::seed_from_u64(seed));
    let c = collector(dir, T0 + SPAN + 3_600_000_000);
    let ops = ["get", "put", "incr"];
    let classes = ["likes", "carts"];
    for i in 0..rows {
        let ts = (T0 + rng.below(SPAN as u64) as i64) as u64;
        let latency_us = match rng.below(10) {
            // Exactly at a bound: not over it.
            0 => 100_000,
            1 => 250_000 + rng.below(2),
            2 => rng.below(2_000_000),
            _ => 500 + rng.below(20_000),
        };
        c.ingest(Event::Request(RequestEvent {
            ts_us: ts,
            region: "eu-west".into(),
            op: ops[rng.below(3) as usize].into(),
            class: classes[rng.below(2) as usize].into(),
            status: [200, 200, 200, 404, 503][rng.below(5) as usize],
            latency_us,
            consistency: "local".into(),
            served_by: "eu-west".into(),
            client_geo: String::new(),
        }));
        if i % 3 == 0 {
            // Distinct timestamps: the latest backlog is one row's.
            c.ingest(Event::Replication(ReplicationEvent {
                ts_us: ts + (i % 1_000) as u64,
                src: ["us-east", "us-west"][rng.below(2) as usize].into(),
                dst: "eu-west".into(),
                lag_ms: if rng.below(4) == 0 {
                    500 + rng.below(2)
                } else {
                    rng.below(3_000)
                },
                backlog_ops: rng.below(100),
                backlog_bytes: rng.below(10_000),
                applied_ops: rng.below(50),
                drain_ops_per_s: (rng.below(2) == 0).then(|| rng.below(1_000)),
                eta_ms: (rng.below(2) == 0).then(|| rng.below(60_000)),
                ..ReplicationEvent::default()
            }));
        }
        if i % 4 == 0 {
            let queued = rng.below(3) == 0;
            c.ingest(Event::Conflict(ConflictEvent {
                ts_us: ts + 7,
                region: "eu-west".into(),
                class: classes[rng.below(2) as usize].into(),
                key: format!("k{}", rng.below(50)),
                policy: "manual".into(),
                outcome: if queued { "queued" } else { "resolved" }.into(),
                resolution_ms: if queued { 0 } else { rng.below(600_000) },
            }));
        }
        if (i + 1) % (rows / flushes).max(1) == 0 {
            c.flush().unwrap();
        }
    }
    c.flush().unwrap();
    if compact {
        c.maintain().unwrap();
    }
}

async fn row(e: &SqlEngine, sql: &str) -> Vec<Value> {
    e.query(sql)
        .await
        .unwrap_or_else(|err| panic!("{err}: {sql}"))
        .json_rows()
        .into_iter()
        .next()
        .unwrap_or_default()
}

async fn all(e: &SqlEngine, sql: &str) -> Vec<Vec<Value>> {
    e.query(sql)
        .await
        .unwrap_or_else(|err| panic!("{err}: {sql}"))
        .json_rows()
}

/// The raw rows of a table in a range, narrowed to the region.
fn raw(table: &str, from: i64, to: i64) -> String {
    format!("{} WHERE region = 'eu-west'", time_scan(table, from, to))
}

/// Nulls and zeros alike (a sum over no rows is null, a count 0).
fn norm(v: Vec<Value>) -> Vec<Value> {
    v.into_iter()
        .map(|x| if x.is_null() { Value::from(0) } else { x })
        .collect()
}

async fn check(e: &SqlEngine, from: i64, to: i64, cuts: &[i64], step_s: i64) {
    let what = format!("range [{from}, {to}) cuts {cuts:?} step {step_s}");
    // Requests: a page's totals.
    let totals = Plan::totals(from, to);
    let src = rollup::requests(&totals, "eu-west", "TRUE", &LATENCY_BOUNDS);
    let rolled = row(
        e,
        &format!(
            "SELECT sum(requests), sum(requests) FILTER (WHERE status >= 500), \
             sum(requests) FILTER (WHERE latency_over_ms >= 100), \
             sum(requests) FILTER (WHERE latency_over_ms >= 250), \
             approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99), \
             approx_quantile(latency_us, 1.0) FROM {src}"
        ),
    )
    .await;
    let direct = row(
        e,
        &format!(
            "SELECT count(*), count(*) FILTER (WHERE status >= 500), \
             count(*) FILTER (WHERE latency_us > 100000), \
             count(*) FILTER (WHERE latency_us > 250000), \
             approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0.99), \
             approx_quantile(latency_us, 1.0) FROM {}",
            raw("requests", from, to)
        ),
    )
    .await;
    assert_eq!(norm(rolled), norm(direct), "requests totals, {what}");

    // Conflicts: counts by class and outcome, resolution percentiles.
    let src = rollup::conflicts(&totals, "eu-west", "TRUE");
    let rolled = all(
        e,
        &format!(
            "SELECT class, outcome, sum(conflicts), approx_quantile(resolution_ms, 0.5), \
             approx_quantile(resolution_ms, 0.99) FROM {src} GROUP BY 1, 2 ORDER BY 1, 2"
        ),
    )
    .await;
    let direct = all(
        e,
        &format!(
            "SELECT class, outcome, count(*), approx_quantile(resolution_ms, 0.5), \
             approx_quantile(resolution_ms, 0.99) FROM {} GROUP BY 1, 2 ORDER BY 1, 2",
            raw("conflicts", from, to)
        ),
    )
    .await;
    assert_eq!(rolled, direct, "conflicts, {what}");

    // An SLO's windows: counts from each cut to the end.
    let windows = Plan::windows(from, to, cuts);
    let src = rollup::requests(&windows, "eu-west", "TRUE", &LATENCY_BOUNDS);
    let cols = |n: &str, ts: &str, bad: &str| {
        cuts.iter()
            .map(|c| {
                format!("{n} FILTER (WHERE {ts} >= {c}), {n} FILTER (WHERE {ts} >= {c} AND {bad})")
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rolled = row(
        e,
        &format!(
            "SELECT {} FROM {src}",
            cols("sum(requests)", "ts", "latency_over_ms >= 250")
        ),
    )
    .await;
    let direct = row(
        e,
        &format!(
            "SELECT {} FROM {}",
            cols("count(*)", "CAST(ts AS BIGINT)", "latency_us > 250000"),
            raw("requests", from, to)
        ),
    )
    .await;
    assert_eq!(norm(rolled), norm(direct), "requests windows, {what}");

    // A chart.
    let series = Plan::series(from, to, step_s);
    let b = parallax_web::filters::bucket_sql(step_s);
    let src = rollup::requests(&series, "eu-west", "class = 'likes'", &LATENCY_BOUNDS);
    let rolled = all(
        e,
        &format!(
            "SELECT {b} AS t, sum(requests), approx_quantile(latency_us, 0.99) FROM {src} \
             GROUP BY t ORDER BY t"
        ),
    )
    .await;
    let direct = all(
        e,
        &format!(
            "SELECT {b} AS t, count(*), approx_quantile(latency_us, 0.99) FROM {} \
             AND class = 'likes' GROUP BY t ORDER BY t",
            raw("requests", from, to)
        ),
    )
    .await;
    assert_eq!(rolled, direct, "requests series, {what}");

    // Lag: the replication page's pairs and chart, and a freshness SLO.
    let src = rollup::lag(&totals, "eu-west", "TRUE", &LAG_BOUNDS);
    let rolled = all(
        e,
        &format!(
            "SELECT src, sum(samples), approx_quantile(lag_ms, 0.5), approx_quantile(lag_ms, 0.99), \
             max(max_lag_ms), coalesce(sum(samples) FILTER (WHERE lag_over_ms >= 500), 0), \
             last_value(backlog_ops ORDER BY last_ts), last_value(backlog_bytes ORDER BY last_ts), \
             sum(applied_ops), last_value(drain_ops_per_s ORDER BY last_ts), \
             last_value(eta_ms ORDER BY last_ts) FROM {src} GROUP BY src ORDER BY src"
        ),
    )
    .await;
    let direct = all(
        e,
        &format!(
            "SELECT src, count(*), approx_quantile(lag_ms, 0.5), approx_quantile(lag_ms, 0.99), \
             max(lag_ms), count(*) FILTER (WHERE lag_ms > 500), \
             last_value(backlog_ops ORDER BY ts), last_value(backlog_bytes ORDER BY ts), \
             sum(applied_ops), last_value(drain_ops_per_s ORDER BY ts), \
             last_value(eta_ms ORDER BY ts) FROM {} GROUP BY src ORDER BY src",
            raw("replication_lag", from, to)
        ),
    )
    .await;
    assert_eq!(rolled, direct, "lag by pair, {what}");
    let src = rollup::lag(&series, "eu-west", "TRUE", &LAG_BOUNDS);
    let rolled = all(
        e,
        &format!(
            "SELECT src, {b} AS t, approx_quantile(lag_ms, 0.99), max(max_backlog_ops) FROM {src} \
             GROUP BY src, t ORDER BY src, t"
        ),
    )
    .await;
    let direct = all(
        e,
        &format!(
            "SELECT src, {b} AS t, approx_quantile(lag_ms, 0.99), max(backlog_ops) FROM {} \
             GROUP BY src, t ORDER BY src, t",
            raw("replication_lag", from, to)
        ),
    )
    .await;
    assert_eq!(rolled, direct, "lag series, {what}");
    let src = rollup::lag(&windows, "eu-west", "TRUE", &LAG_BOUNDS);
    let rolled = row(
        e,
        &format!(
            "SELECT {} FROM {src}",
            cols("sum(samples)", "ts", "lag_over_ms >= 500")
        ),
    )
    .await;
    let direct = row(
        e,
        &format!(
            "SELECT {} FROM {}",
            cols("count(*)", "CAST(ts AS BIGINT)", "lag_ms > 500"),
            raw("replication_lag", from, to)
        ),
    )
    .await;
    assert_eq!(norm(rolled), norm(direct), "lag windows, {what}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Random rows written in random flushes, compacted or not; random
    /// ranges (µs-precise, some inside one bucket, some past the data),
    /// window starts and chart steps.
    #[test]
    fn rollups_answer_as_the_raw_rows(
        seed in any::<u64>(),
        rows in 500usize..3_000,
        flushes in 1usize..8,
        compact in any::<bool>(),
        ranges in prop::collection::vec((0i64..SPAN + 600_000_000, 1i64..SPAN), 3),
        cuts in prop::collection::vec(0i64..SPAN, 0..4),
        step in prop::sample::select(vec![60i64, 300, 1_800, 3_600, 10_800]),
    ) {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), seed, rows, flushes, compact);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let e = SqlEngine::open(dir.path(), SqlLimits::default()).await.unwrap();
            for (start, len) in &ranges {
                let (from, to) = (T0 - 300_000_000 + start, T0 - 300_000_000 + start + len);
                let cuts: Vec<i64> = cuts.iter().map(|c| T0 + c).filter(|c| *c > from && *c < to).collect();
                check(&e, from, to, &cuts, step).await;
            }
            // Aligned on buckets at both ends: nothing but rollups, the
            // 5-minute ones or (by hours) the hourly ones.
            check(&e, T0, T0 + SPAN, &[], 1_800).await;
            check(&e, T0, T0 + SPAN, &[], 3_600).await;
            // Whole hours inside, partial buckets and hours at the ends,
            // and the window cuts.
            let cuts: Vec<i64> = cuts.iter().map(|c| T0 + c).filter(|c| *c > T0 + 450_000_000).collect();
            check(&e, T0 + 450_000_000, T0 + SPAN - 1, &cuts, 3_600).await;
        });
    }
}

/// The SLO evaluator (and so the burn-rate alerts) reads rollups, and
/// counts exactly what the raw rows hold: over the SLO's window and each
/// burn window, which start inside 5-minute buckets.
#[test]
fn slos_read_from_rollups_count_what_the_raw_rows_hold() {
    let config = parallax_core::config::Config::from_toml(
        r#"
[cluster]
client_token = "c"
admin_token = "a"
peer_secret = "p"

[regions.eu-west]
listen = "127.0.0.1:7103"
location = { lat = 53.3, lon = -6.3 }

[classes.likes]
conflict = "gcounter"

[slos.available]
kind = "availability"
objective = 99.0
window_days = 1

[slos.fast]
kind = "latency"
objective = 95.0
threshold_ms = 250
window_days = 1

[slos.fresh]
kind = "freshness"
objective = 90.0
threshold_ms = 500
window_days = 1
"#,
        "slo.toml",
    )
    .unwrap();
    assert_eq!(
        Bounds::of(&config),
        Bounds {
            latency_ms: vec![250],
            lag_ms: vec![500]
        }
    );
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 7, 3_000, 4, false);
    // Inside a bucket, so every burn window starts inside one.
    let now = T0 + SPAN - 123_456_789;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let e = SqlEngine::open(dir.path(), SqlLimits::default())
            .await
            .unwrap();
        let slos = parallax_web::slo::evaluate(&e, &config, now, &[])
            .await
            .unwrap();
        assert_eq!(slos.slos.len(), 3);
        for s in &slos.slos {
            let (table, bad) = match s.name.as_str() {
                "available" => ("requests", "status >= 500"),
                "fast" => ("requests", "latency_us > 250000"),
                _ => ("replication_lag", "lag_ms > 500"),
            };
            let count = |from: i64| {
                format!(
                    "SELECT count(*), count(*) FILTER (WHERE {bad}) FROM {}",
                    raw(table, from, now)
                )
            };
            let r = row(&e, &count(now - 86_400_000_000)).await;
            assert_eq!(
                (s.total, s.total - s.good),
                (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()),
                "{} over its window",
                s.name
            );
            assert!(s.total > 0 && s.good < s.total, "{}: {s:?}", s.name);
            for b in &s.burn_rates {
                let r = row(&e, &count(now - b.seconds * 1_000_000)).await;
                assert_eq!(
                    (b.total, b.bad),
                    (r[0].as_i64().unwrap(), r[1].as_i64().unwrap()),
                    "{} over {} ({} s)",
                    s.name,
                    b.window,
                    b.seconds
                );
            }
        }
    });
}
