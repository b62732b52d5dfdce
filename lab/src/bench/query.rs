//! `parallax bench query`: the dashboards' queries over a month of
//! telemetry (100 million rows by default) written in the collector's
//! layout with its 5-minute and hourly rollups, through parallax's SQL engine and
//! through DuckDB and chDB (ClickHouse in-process) on the same files, in
//! one run; then whole pages over 24 h, 7 and 30 days ([`super::pages`]).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use clap::Args;
use parallax_collector::files::{FileOptions, date_dir, partition_dir, write_file};
use parallax_collector::rollup::{merge, roll_up_all};
use parallax_collector::tables::{date_hour, schema_of};
use parallax_core::config::CollectorConfig;
use parallax_web::{SqlEngine, SqlLimits};

/// Arguments of `parallax bench query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Rows to generate, over both tables (4 of 5 are requests).
    #[arg(long, default_value_t = 100_000_000)]
    pub rows: u64,
    /// Days of data, ending at the benchmark's "now".
    #[arg(long, default_value_t = 30)]
    pub days: u64,
    /// Where to write the tables (default: a temporary directory, removed
    /// afterwards). An existing directory with the same row count is reused.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Runs of each query; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
}

const REGIONS: [&str; 3] = ["eu-west", "us-east", "us-west"];
const OPS: [&str; 5] = ["get", "put", "incr", "add", "delete"];
const CLASSES: [&str; 6] = [
    "likes", "carts", "profiles", "settings", "balances", "tickets",
];
const CONSISTENCY: [&str; 3] = ["local", "session", "quorum"];
/// The benchmark's "now": 2026-11-28T00:00:00Z.
const NOW_US: i64 = 1_795_824_000_000_000;

/// xorshift64*: reproducible load without a seeded-RNG dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One hour of one region's `requests`, sorted by `ts`.
fn requests(rows: usize, start_us: i64, rng: &mut Rng) -> Result<RecordBatch> {
    let step = 3_600_000_000 / rows.max(1) as i64;
    let mut ts = Vec::with_capacity(rows);
    let mut op = Vec::with_capacity(rows);
    let mut class = Vec::with_capacity(rows);
    let mut status = Vec::with_capacity(rows);
    let mut latency = Vec::with_capacity(rows);
    let mut consistency = Vec::with_capacity(rows);
    for i in 0..rows {
        let x = rng.next();
        ts.push(start_us + i as i64 * step + (x % step.max(1) as u64) as i64 / 2);
        op.push(OPS[(x >> 8) as usize % OPS.len()]);
        class.push(CLASSES[(x >> 16) as usize % CLASSES.len()]);
        status.push(match (x >> 24) % 1000 {
            0..=1 => 503,
            2..=30 => 404,
            _ => 200,
        });
        // Log-normal-ish: mostly 1-5 ms, a tail to ~200 ms.
        let base = 800 + (x >> 32) % 4_000;
        let tail = if (x >> 40).is_multiple_of(100) {
            (x >> 44) % 200_000
        } else {
            0
        };
        latency.push((base + tail) as i64);
        consistency.push(CONSISTENCY[(x >> 50) as usize % CONSISTENCY.len()]);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(StringArray::from(op)),
        Arc::new(StringArray::from(class)),
        Arc::new(Int32Array::from(status)),
        Arc::new(Int64Array::from(latency)),
        Arc::new(StringArray::from(consistency)),
        Arc::new(StringArray::from(vec![""; rows])),
        Arc::new(StringArray::from(vec![""; rows])),
    ];
    let schema = schema_of("requests").context("the requests schema")?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// One hour of `replication_lag` applied in region `dst`, sorted by `ts`.
fn lag(rows: usize, start_us: i64, dst: &str, rng: &mut Rng) -> Result<RecordBatch> {
    let step = 3_600_000_000 / rows.max(1) as i64;
    let srcs: Vec<&str> = REGIONS.iter().copied().filter(|r| *r != dst).collect();
    let mut ts = Vec::with_capacity(rows);
    let mut src = Vec::with_capacity(rows);
    let mut lag_ms = Vec::with_capacity(rows);
    let mut backlog = Vec::with_capacity(rows);
    for i in 0..rows {
        let x = rng.next();
        ts.push(start_us + i as i64 * step);
        src.push(srcs[(x >> 8) as usize % srcs.len()]);
        let tail = if (x >> 20).is_multiple_of(500) {
            (x >> 30) % 20_000
        } else {
            0
        };
        lag_ms.push((30 + (x >> 40) % 150 + tail) as i64);
        backlog.push(((x >> 48) % 64) as i64);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(StringArray::from(src)),
        Arc::new(StringArray::from(vec![dst; rows])),
        Arc::new(Int64Array::from(lag_ms)),
        Arc::new(Int64Array::from(backlog.clone())),
        Arc::new(Int64Array::from_iter_values(
            backlog.iter().map(|b| b * 180),
        )),
        Arc::new(Int64Array::from(vec![1i64; rows])),
        // No drain under way: no drain rate, no ETA.
        Arc::new(Int64Array::from(vec![None::<i64>; rows])),
        Arc::new(Int64Array::from(vec![None::<i64>; rows])),
    ];
    let schema = schema_of("replication_lag").context("the replication_lag schema")?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// One hour of `conflicts` recorded in a region, sorted by `ts`: one for
/// every hundred requests, each class's policy, a fifth of the manual ones
/// queued and the rest resolved in minutes, the automatic ones at once.
fn conflicts(rows: usize, start_us: i64, rng: &mut Rng) -> Result<RecordBatch> {
    let step = 3_600_000_000 / rows.max(1) as i64;
    let (mut ts, mut class, mut key, mut policy, mut outcome, mut resolution) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for i in 0..rows {
        let x = rng.next();
        ts.push(start_us + i as i64 * step + (x % step.max(1) as u64) as i64 / 2);
        let c = (x >> 8) as usize % CLASSES.len();
        class.push(CLASSES[c]);
        key.push(format!("{}-{}", CLASSES[c], (x >> 16) % 10_000));
        let (p, o, ms) = match CLASSES[c] {
            "likes" | "carts" => ("crdt", "merged", 0),
            "profiles" | "settings" => ("lww", "lww", 0),
            _ if (x >> 32).is_multiple_of(5) => ("manual", "queued", 0),
            _ => ("manual", "resolved", ((x >> 36) % 600_000) as i64),
        };
        policy.push(p);
        outcome.push(o);
        resolution.push(ms);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
        Arc::new(StringArray::from(class)),
        Arc::new(StringArray::from(key)),
        Arc::new(StringArray::from(policy)),
        Arc::new(StringArray::from(outcome)),
        Arc::new(Int64Array::from(resolution)),
    ];
    let schema = schema_of("conflicts").context("the conflicts schema")?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Writes the tables as the collector leaves them after compaction: one
/// file per table, region and hour, sorted by `ts`, in row groups of the
/// collector's default size. Two threads, one per core.
fn generate(root: &Path, rows: u64, days: u64) -> Result<()> {
    let bounds = super::pages::example_bounds()?;
    let hours = days * 24;
    let parts = hours * REGIONS.len() as u64;
    let req_rows = (rows * 4 / 5 / parts) as usize;
    let lag_rows = (rows / 5 / parts) as usize;
    let opts = FileOptions {
        row_group_rows: CollectorConfig::default().row_group_rows,
    };
    let start_us = NOW_US - hours as i64 * 3_600_000_000;
    let jobs: Vec<(usize, u64)> = (0..REGIONS.len())
        .flat_map(|r| (0..hours).map(move |h| (r, h)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&(r, h)) = jobs.get(i) else {
                            return Ok(());
                        };
                        let region = REGIONS[r];
                        let hour_us = start_us + h as i64 * 3_600_000_000;
                        let (date, hour) = date_hour(hour_us as u64);
                        let mut rng = Rng(0x9E37_79B9_7F4A_7C15
                            ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
                        let tables = [
                            ("requests", requests(req_rows, hour_us, &mut rng)?),
                            ("replication_lag", lag(lag_rows, hour_us, region, &mut rng)?),
                            ("conflicts", conflicts(req_rows / 100, hour_us, &mut rng)?),
                        ];
                        for (table, b) in tables {
                            let at = |t: &str| partition_dir(root, t, region, &date, hour);
                            write_file(&at(table), &b, hour_us as u64, &opts)?;
                            // The rollups, into their date's partition (merged below).
                            for (r, rows) in roll_up_all(table, &[b], &bounds)? {
                                let dir = date_dir(root, r, region, &date);
                                write_file(&dir, &rows, hour_us as u64, &opts)?;
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })?;
    // Each date's rollup as one file, as the collector's maintenance leaves it.
    for r in parallax_collector::rollup::ROLLUPS {
        for region in REGIONS {
            let region_dir = root.join(r).join(format!("region={region}"));
            for (_, dir) in parallax_collector::files::partitions(&region_dir, "date") {
                let rows = parallax_collector::files::read_files(
                    &parallax_collector::files::parquet_files(&dir),
                )?;
                if let Some(merged) = merge(r, &rows)? {
                    parallax_collector::files::swap_in(root, &dir, &merged, &opts)?;
                }
            }
        }
    }
    Ok(())
}

/// A dashboard query in three dialects.
struct Query {
    name: &'static str,
    parallax: String,
    duckdb: String,
    /// ClickHouse's, `{root}` standing for the tables' directory.
    clickhouse: String,
}

/// The queries' "now": 20 minutes and a bit before the data ends, so that
/// every range starts and ends inside an hour, as a dashboard's does.
const QUERY_NOW_US: i64 = NOW_US - 1_200_123_456;

impl Query {
    /// `cols` of `table` from `from_us` to [`QUERY_NOW_US`], one SELECT per
    /// region as the dashboards ask (`parallax_web::dash::per_region`), in
    /// two dialects: parallax's over the dashboards' own scan
    /// (`parallax_web::filters::time_scan`: whole hours by partition, the
    /// partial ones by `ts`), and DuckDB's with `duck_cols` over the `ts` and
    /// `date` bounds a DuckDB user would write.
    fn per_region(
        name: &'static str,
        (cols, duck_cols): (&str, &str),
        table: &str,
        from_us: i64,
        group_by: &str,
    ) -> Query {
        let regions: Vec<String> = REGIONS.iter().map(|r| (*r).to_owned()).collect();
        let scan = format!(
            "{} WHERE TRUE",
            parallax_web::filters::time_scan(table, from_us, QUERY_NOW_US)
        );
        let duck_scan = format!(
            "{table} WHERE ts >= to_timestamp({from_us} / 1000000) AND ts < to_timestamp({QUERY_NOW_US} / 1000000) \
             AND date >= DATE '{}' AND date <= DATE '{}'",
            date_hour(from_us as u64).0,
            date_hour(QUERY_NOW_US as u64).0
        );
        Query {
            name,
            parallax: parallax_web::dash::per_region(&regions, cols, &scan, group_by),
            duckdb: parallax_web::dash::per_region(&regions, duck_cols, &duck_scan, group_by),
            clickhouse: String::new(),
        }
    }

    /// The same question in ClickHouse's SQL: `cols` grouped by region and
    /// `group_by`, over the files by their hive partitions and `ts`.
    fn clickhouse(mut self, table: &str, cols: &str, from_us: i64, group_by: &str) -> Query {
        let by = if group_by.is_empty() {
            "region".to_owned()
        } else {
            format!("region, {group_by}")
        };
        self.clickhouse = format!(
            "SELECT region, {cols} FROM file('{{root}}/{table}/**/*.parquet', Parquet) \
             WHERE date >= '{}' AND date <= '{}' \
             AND ts >= fromUnixTimestamp64Micro({from_us}) AND ts < fromUnixTimestamp64Micro({QUERY_NOW_US}) \
             GROUP BY {by}",
            date_hour(from_us as u64).0,
            date_hour(QUERY_NOW_US as u64).0
        );
        self
    }
}

fn queries() -> Vec<Query> {
    let day_ago = QUERY_NOW_US - 86_400_000_000;
    let week_ago = QUERY_NOW_US - 7 * 86_400_000_000;
    let month_ago = QUERY_NOW_US - 30 * 86_400_000_000;
    let p99_5m = format!(
        "{} AS t, approx_quantile(latency_us, 0.99) AS p99",
        parallax_web::filters::bucket_sql(300)
    );
    let lag = "src, approx_quantile(lag_ms, 0.99) AS p99, max(lag_ms)";
    let budget = "count(*), count(*) FILTER (WHERE status >= 500)";
    vec![
        // As the latency page asks it.
        Query::per_region(
            "p99 latency per region per 5 min, 24 h",
            (
                &p99_5m,
                "time_bucket(INTERVAL '5 minutes', ts) AS t, approx_quantile(latency_us, 0.99) AS p99",
            ),
            "requests",
            day_ago,
            "t",
        )
        .clickhouse(
            "requests",
            "toStartOfFiveMinutes(ts) AS t, quantile(0.99)(latency_us) AS p99",
            day_ago,
            "t",
        ),
        // As the replication page asks it: lag is recorded, and
        // partitioned, where it is applied, so the region is the destination.
        Query::per_region(
            "lag p99 per region pair, 7 days",
            (lag, lag),
            "replication_lag",
            week_ago,
            "src",
        )
        .clickhouse(
            "replication_lag",
            "src, quantile(0.99)(lag_ms) AS p99, max(lag_ms)",
            week_ago,
            "src",
        ),
        // As the SLO evaluator asks for a window's totals.
        Query::per_region(
            "availability error budget, 30 days",
            (budget, budget),
            "requests",
            month_ago,
            "",
        )
        .clickhouse(
            "requests",
            "count(), countIf(status >= 500)",
            month_ago,
            "",
        ),
    ]
}

/// Runs each query in DuckDB in two shapes and keeps the faster: the one a
/// DuckDB user would write (`ts` bounds) and parallax's own SQL in DuckDB's
/// dialect (whole hours by partition), which DuckDB also gains from.
const DUCKDB_SCRIPT: &str = r#"
import json, re, sys, time, duckdb
root, runs = sys.argv[1], int(sys.argv[2])
queries = json.loads(sys.stdin.read())
con = duckdb.connect()
con.execute("SET threads = 2")
con.execute("SET TimeZone = 'UTC'")
# Tuned as its users tune it: Parquet footers cached between queries.
for setting in ["SET parquet_metadata_cache = true", "SET enable_object_cache = true"]:
    try:
        con.execute(setting)
    except Exception:
        pass
for t in ["requests", "replication_lag"]:
    con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{root}/{t}/**/*.parquet', hive_partitioning = true)")
def dialect(q):
    q = re.sub(r"to_timestamp_micros\((-?\d+)\)", r"(TIMESTAMPTZ '1970-01-01 00:00:00+00' + to_microseconds(\1))", q)
    return re.sub(r"CAST\(ts AS BIGINT\) / (\d+)", r"epoch_us(ts) // \1", q)
out = []
for natural, ours in queries:
    best, rows, shape = None, [], None
    for name, q in [("ts bounds", natural), ("parallax's", dialect(ours))]:
        for _ in range(runs):
            start = time.perf_counter()
            got = len(con.execute(q).fetchall())
            took = time.perf_counter() - start
            rows.append(got)
            if best is None or took < best:
                best, shape = took, name
    out.append({"ms": best * 1000, "rows": rows[0], "shape": shape, "same_rows": len(set(rows)) == 1})
print(json.dumps(out))
"#;

/// Runs each query in chDB (ClickHouse in-process) on 2 threads, its
/// files' hive partitions read as columns.
const CHDB_SCRIPT: &str = r#"
import json, sys, time
from chdb import session
root, runs = sys.argv[1], int(sys.argv[2])
queries = json.loads(sys.stdin.read())
s = session.Session()
out = []
for q in queries:
    q = q.replace("{root}", root) + " SETTINGS max_threads = 2, use_hive_partitioning = 1, session_timezone = 'UTC'"
    best, rows = None, None
    for _ in range(runs):
        start = time.perf_counter()
        r = s.query(q, "JSONCompact")
        took = time.perf_counter() - start
        rows = len(json.loads(str(r))["data"])
        if best is None or took < best:
            best = took
    out.append({"ms": best * 1000, "rows": rows})
print(json.dumps(out))
"#;

/// `parallax bench query`.
pub(super) async fn run(a: QueryArgs) -> Result<ExitCode> {
    if a.rows < 1_000 || a.days == 0 || a.runs == 0 {
        bail!("--rows must be at least 1000, --days and --runs at least 1");
    }
    let temp;
    let dir = match &a.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("parallax-bench-query-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let root = dir.join("tables");
    // The layout version in the name: files of an earlier layout are rewritten.
    let marker = dir.join(format!(
        "generated-{}-rows-{}-days-layout-6",
        a.rows, a.days
    ));
    if marker.exists() {
        println!(
            "Reusing {} ({} rows over {} days)",
            root.display(),
            a.rows,
            a.days
        );
    } else {
        if root.exists() {
            std::fs::remove_dir_all(&root)?;
        }
        println!(
            "Generating {} rows over {} days in {} ...",
            a.rows,
            a.days,
            root.display()
        );
        let started = Instant::now();
        let (r, d) = (root.clone(), a.days);
        let rows = a.rows;
        tokio::task::spawn_blocking(move || generate(&r, rows, d)).await??;
        std::fs::write(&marker, b"")?;
        let bytes = dir_size(&root);
        println!(
            "  written in {:.1} s: {:.0} MiB ({:.1} bytes per row)",
            started.elapsed().as_secs_f64(),
            bytes as f64 / (1 << 20) as f64,
            bytes as f64 / a.rows as f64
        );
    }
    let engine = SqlEngine::open(
        &dir,
        SqlLimits {
            memory_bytes: 2 << 30,
            ..SqlLimits::default()
        },
    )
    .await?;
    let qs = queries();
    let mut ours = Vec::new();
    for q in &qs {
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..a.runs {
            let started = Instant::now();
            let r = engine.query(&q.parallax).await.with_context(|| q.name)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e3);
            rows = r.num_rows();
        }
        ours.push((best, rows));
    }
    let duck = run_python(
        DUCKDB_SCRIPT,
        &root,
        &serde_json::json!(
            qs.iter()
                .map(|q| [&q.duckdb, &q.parallax])
                .collect::<Vec<_>>()
        ),
        a.runs,
    );
    let chdb = run_python(
        CHDB_SCRIPT,
        &root,
        &serde_json::json!(qs.iter().map(|q| &q.clickhouse).collect::<Vec<_>>()),
        a.runs,
    );
    println!(
        "\n{:<42} {:>9} {:>9} {:>9} {:>8}  aim: no slower than the fastest other engine",
        "query", "parallax", "DuckDB", "chDB", "fastest"
    );
    let mut all_met = true;
    let other = |r: &Result<Vec<serde_json::Value>>, i: usize| {
        r.as_ref()
            .ok()
            .and_then(|d| Some((d.get(i)?["ms"].as_f64()?, d[i]["rows"].as_u64()?)))
    };
    for (i, q) in qs.iter().enumerate() {
        let (ms, rows) = ours[i];
        let (d, c) = (other(&duck, i), other(&chdb, i));
        let fastest_other = [d, c]
            .iter()
            .flatten()
            .map(|x| x.0)
            .fold(f64::MAX, f64::min);
        let met = ms <= fastest_other;
        all_met &= met;
        let fastest = [("parallax", Some((ms, 0))), ("DuckDB", d), ("chDB", c)]
            .into_iter()
            .filter_map(|(n, x)| Some((n, x?.0)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map_or("–", |x| x.0);
        let show = |x: Option<(f64, u64)>| x.map_or("–".to_owned(), |x| format!("{:.1}", x.0));
        let mismatch: Vec<String> = [("DuckDB", d), ("chDB", c)]
            .into_iter()
            .filter_map(|(n, x)| {
                x.filter(|x| x.1 as usize != rows)
                    .map(|x| format!("{n} {} rows", x.1))
            })
            .collect();
        println!(
            "{:<42} {ms:>9.1} {:>9} {:>9} {fastest:>8}  {}{}",
            q.name,
            show(d),
            show(c),
            if met { "met" } else { "MISSED" },
            if mismatch.is_empty() {
                String::new()
            } else {
                format!(" (parallax {rows} rows, {})", mismatch.join(", "))
            }
        );
    }
    for (engine, r, fix) in [("DuckDB", &duck, "duckdb"), ("chDB", &chdb, "chdb")] {
        if let Err(e) = r {
            println!("\n{engine} was not run: {e:#}. Fix: python3 -m pip install {fix}");
        }
    }
    println!(
        "Best of {} runs each; every engine on 2 threads, same files; DuckDB with its \
         Parquet metadata cache on, and the faster of two SQL shapes.",
        a.runs
    );
    let regions: Vec<String> = REGIONS.iter().map(|r| (*r).to_owned()).collect();
    let pages = super::pages::time_pages(&engine, &regions, QUERY_NOW_US, a.runs).await?;
    println!(
        "\n{:<42} {:>9} {:>9}  aim: under {} ms",
        "page (from the rollups)",
        "range",
        "ms",
        super::pages::PAGE_AIM_MS
    );
    for p in &pages {
        let met = p.ms < super::pages::PAGE_AIM_MS;
        all_met &= met;
        println!(
            "{:<42} {:>9} {:>9.1}  {}",
            p.page,
            p.range,
            p.ms,
            if met { "met" } else { "MISSED" }
        );
    }
    let (rolled_ms, raw_ms) = super::pages::check_rollups(&engine, &regions, QUERY_NOW_US).await?;
    println!(
        "\nRequests, 5xx, over the latency SLO threshold, p50 and p99 per region over 30 days: the rollups' \
         answer equals the raw rows' ({rolled_ms:.1} ms against {raw_ms:.1} ms, {:.3}x).",
        rolled_ms / raw_ms
    );
    let raw_bytes: u64 = ["requests", "replication_lag"]
        .iter()
        .map(|t| dir_size(&root.join(t)))
        .sum();
    let rollup_bytes: u64 = parallax_collector::rollup::ROLLUPS
        .iter()
        .map(|t| dir_size(&root.join(t)))
        .sum();
    println!(
        "Disk: raw {:.0} MiB ({:.2} bytes per row), rollups {:.1} MiB, {:.2}% of the whole.",
        raw_bytes as f64 / (1 << 20) as f64,
        raw_bytes as f64 / a.rows as f64,
        rollup_bytes as f64 / (1 << 20) as f64,
        100.0 * rollup_bytes as f64 / (raw_bytes + rollup_bytes) as f64
    );
    Ok(if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Runs a Python script of this file's with `root` and `runs` as its
/// arguments and `queries` on its stdin; its stdout is a JSON array.
fn run_python(
    script: &str,
    root: &Path,
    queries: &serde_json::Value,
    runs: u32,
) -> Result<Vec<serde_json::Value>> {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(root)
        .arg(runs.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot run python3")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("python3's stdin")?;
        stdin.write_all(queries.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            total += if p.is_dir() {
                dir_size(&p)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}
