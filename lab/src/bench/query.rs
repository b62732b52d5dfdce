//! `parallax bench query`: the dashboards' queries over a week of telemetry
//! (100 million rows by default) written in the collector's layout, through
//! parallax's SQL engine and through DuckDB on the same files, in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use clap::Args;
use parallax_collector::files::{FileOptions, partition_dir, write_file};
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
    #[arg(long, default_value_t = 7)]
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

/// Writes the tables as the collector leaves them after compaction: one
/// file per table, region and hour, sorted by `ts`, in row groups of the
/// collector's default size. Two threads, one per core.
fn generate(root: &Path, rows: u64, days: u64) -> Result<()> {
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
                        let b = requests(req_rows, hour_us, &mut rng)?;
                        write_file(
                            &partition_dir(root, "requests", region, &date, hour),
                            &b,
                            hour_us as u64,
                            &opts,
                        )?;
                        let b = lag(lag_rows, hour_us, region, &mut rng)?;
                        write_file(
                            &partition_dir(root, "replication_lag", region, &date, hour),
                            &b,
                            hour_us as u64,
                            &opts,
                        )?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a generator thread panicked"))??;
        }
        Ok(())
    })
}

/// A dashboard query in both dialects.
struct Query {
    name: &'static str,
    parallax: String,
    duckdb: String,
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
        }
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
        ),
        // As the replication page asks it: lag is recorded, and
        // partitioned, where it is applied, so the region is the destination.
        Query::per_region(
            "lag p99 per region pair, 7 days",
            (lag, lag),
            "replication_lag",
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
        "generated-{}-rows-{}-days-layout-2",
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
    let duck = run_duckdb(&root, &qs, a.runs);
    println!(
        "\n{:<42} {:>12} {:>12} {:>8}  aim (< 500 ms, <= 1.5x DuckDB)",
        "query", "parallax ms", "DuckDB ms", "ratio"
    );
    let mut all_met = true;
    for (i, q) in qs.iter().enumerate() {
        let (ms, rows) = ours[i];
        match &duck {
            Ok(d) => {
                let dm = d[i]["ms"].as_f64().unwrap_or(f64::NAN);
                let drows = d[i]["rows"].as_u64().unwrap_or(0);
                let ratio = ms / dm;
                let met = ms < 500.0 && ratio <= 1.5;
                all_met &= met;
                println!(
                    "{:<42} {ms:>12.1} {dm:>12.1} {ratio:>7.2}x  {}  (DuckDB fastest with {} SQL){}",
                    q.name,
                    if met { "met" } else { "MISSED" },
                    d[i]["shape"].as_str().unwrap_or("?"),
                    if drows as usize == rows && d[i]["same_rows"] == true {
                        String::new()
                    } else {
                        format!(
                            " (rows {rows} vs {drows}, DuckDB's shapes agree: {})",
                            d[i]["same_rows"]
                        )
                    }
                );
            }
            Err(_) => {
                all_met &= ms < 500.0;
                println!(
                    "{:<42} {ms:>12.1} {:>12} {:>8}  {}",
                    q.name,
                    "–",
                    "–",
                    if ms < 500.0 { "under 500 ms" } else { "MISSED" }
                );
            }
        }
    }
    if let Err(e) = &duck {
        println!("\nDuckDB was not run: {e:#}. Fix: python3 -m pip install duckdb");
    }
    println!(
        "\nBest of {} runs each; both engines on 2 threads, same files.",
        a.runs
    );
    Ok(if all_met {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn run_duckdb(root: &Path, qs: &[Query], runs: u32) -> Result<Vec<serde_json::Value>> {
    let sql: Vec<[&str; 2]> = qs
        .iter()
        .map(|q| [q.duckdb.as_str(), q.parallax.as_str()])
        .collect();
    let mut child = Command::new("python3")
        .args(["-c", DUCKDB_SCRIPT])
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
        stdin.write_all(serde_json::to_string(&sql)?.as_bytes())?;
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
