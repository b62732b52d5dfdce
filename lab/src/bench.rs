//! `parallax bench`: benchmarks that report ratios against a baseline
//! measured in the same run. Run them with `--release`.

mod failover;
mod ingest;
mod merkle;
mod pages;
mod query;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use parallax_core::NodeStats;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Replication throughput and lag: three region processes on loopback
    /// under concurrent writers, beside one region with replication off.
    Replicate(ReplicateArgs),
    /// Merkle trees: build rate against raw BLAKE3, incremental updates, and
    /// diffs (round trips, bytes, time) against shipping every key and hash.
    Merkle(merkle::MerkleArgs),
    /// Telemetry into Parquet: events per second per core and bytes per
    /// event, beside the same events written as JSON lines.
    Ingest(ingest::IngestArgs),
    /// The dashboards' queries over a month of telemetry (100 million rows)
    /// through parallax's SQL engine, beside DuckDB and chDB on the same
    /// files; whole pages over 24 h, 7 and 30 days from the rollups.
    Query(query::QueryArgs),
    /// Failover through the routers: kill -9 a region under client load,
    /// several times; detection, reroute and ownership-move times and the
    /// share of requests lost, beside Route 53's defaults.
    Failover(failover::FailoverArgs),
}

/// Arguments of `parallax bench replicate`.
#[derive(Debug, Args)]
pub struct ReplicateArgs {
    /// Seconds of load per phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Concurrent writers (HTTP connections) in the throughput phases.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Keep the data directory (printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// `parallax bench ...`.
pub async fn run(cmd: BenchCommand) -> Result<ExitCode> {
    match cmd {
        BenchCommand::Replicate(a) => replicate(a).await,
        BenchCommand::Merkle(a) => merkle::run(a).await,
        BenchCommand::Ingest(a) => ingest::run(a).await,
        BenchCommand::Query(a) => query::run(a).await,
        BenchCommand::Failover(a) => failover::run(a).await,
    }
}

const REGIONS: [&str; 3] = ["us-east", "us-west", "eu-west"];

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn bench_config(regions: &[&str]) -> Result<String> {
    let mut toml = String::from(
        "[cluster]\nclient_token = \"bench-client\"\nadmin_token = \"bench-admin\"\npeer_secret = \"bench-peer\"\n\n",
    );
    for r in regions {
        toml.push_str(&format!(
            "[regions.{r}]\nlisten = \"127.0.0.1:{}\"\nlocation = {{ lat = 0.0, lon = 0.0 }}\n\n",
            free_port()?
        ));
    }
    toml.push_str("[classes.bench]\nconflict = \"lww\"\nownership = \"global\"\n");
    Ok(toml)
}

/// Region processes of one benchmark phase.
struct Cluster {
    children: Vec<(String, tokio::process::Child)>,
    urls: Vec<String>,
}

impl Cluster {
    async fn start(dir: &Path, regions: &[&str]) -> Result<Cluster> {
        std::fs::create_dir_all(dir)?;
        let config_path = dir.join("bench.toml");
        let text = bench_config(regions)?;
        std::fs::write(&config_path, &text)?;
        let config = parallax_core::config::Config::from_toml(&text, "bench.toml")?;
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut urls = Vec::new();
        for r in regions {
            let child = tokio::process::Command::new(&exe)
                .args(["region", "--config"])
                .arg(&config_path)
                .args(["--region", r, "--data-dir"])
                .arg(dir.join("data"))
                .env("PARALLAX_LOG", "warn")
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a region process")?;
            children.push(((*r).to_owned(), child));
            urls.push(config.region_url(r).unwrap_or_default());
        }
        let cluster = Cluster { children, urls };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in &cluster.urls {
            loop {
                if let Ok(r) = client.get(format!("{url}/readyz")).send().await
                    && r.status().is_success()
                {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("region at {url} did not become ready within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// Peak resident memory of each region process (MiB), from /proc.
    fn peak_memory_mib(&self) -> BTreeMap<String, f64> {
        self.children
            .iter()
            .filter_map(|(name, child)| {
                let pid = child.id()?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let kb: f64 = status
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((name.clone(), kb / 1024.0))
            })
            .collect()
    }

    async fn stats(&self) -> Result<Vec<NodeStats>> {
        let client = reqwest::Client::new();
        let mut out = Vec::new();
        for url in &self.urls {
            let s: NodeStats = client
                .get(format!("{url}/v1/stats"))
                .bearer_auth("bench-client")
                .send()
                .await?
                .json()
                .await?;
            out.push(s);
        }
        Ok(out)
    }

    /// Waits until every region has shipped everything.
    async fn drain(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let stats = self.stats().await?;
            if stats
                .iter()
                .all(|s| s.replication.peers.values().all(|p| p.backlog_ops == 0))
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("replication did not drain within {} s", limit.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        for (_, child) in &mut self.children {
            if let Some(pid) = child.id() {
                // SIGTERM: a clean stop, as an operator would.
                #[expect(unsafe_code, reason = "libc::kill has no safe wrapper in std")]
                // SAFETY: sending a signal to a child process we own has no memory effects.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
        }
        for (_, child) in &mut self.children {
            let _ = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        }
    }
}

struct LoadResult {
    acked: u64,
    failed: u64,
    elapsed: Duration,
}

/// Writers in a closed loop (each sends its next write when the last is
/// answered), or paced at `rate` writes/s in total when given.
async fn load(
    urls: &[String],
    writers: usize,
    keys: u64,
    duration: Duration,
    rate: Option<f64>,
) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(writers)
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let acked = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let client = client.clone();
        let url = urls[w % urls.len()].clone();
        let (acked, failed, stop) = (Arc::clone(&acked), Arc::clone(&failed), Arc::clone(&stop));
        let per_writer = rate.map(|r| Duration::from_secs_f64(writers as f64 / r));
        tasks.push(tokio::spawn(async move {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1);
            let mut next = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                if let Some(p) = per_writer {
                    next += p;
                    tokio::time::sleep_until(next.into()).await;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % keys;
                let body = format!("{{\"v\":{x},\"writer\":{w}}}");
                let r = client
                    .put(format!("{url}/v1/entities/bench/k{key}"))
                    .bearer_auth("bench-client")
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    LoadResult {
        acked: acked.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        elapsed: start.elapsed(),
    }
}

impl LoadResult {
    fn rate(&self) -> f64 {
        self.acked as f64 / self.elapsed.as_secs_f64()
    }
}

async fn replicate(a: ReplicateArgs) -> Result<ExitCode> {
    if cfg!(debug_assertions) {
        eprintln!(
            "warning: this is a debug build; run `cargo run --release -- bench replicate` for real figures"
        );
    }
    let temp = tempfile::Builder::new()
        .prefix("parallax-bench-")
        .tempdir()?;
    let root: PathBuf = temp.path().to_owned();
    let duration = Duration::from_secs(a.duration);
    println!(
        "parallax bench replicate: {} s per phase, {} writers, {} keys, data in {}",
        a.duration,
        a.writers,
        a.keys,
        root.display()
    );

    println!("\n[1/3] baseline: one region, replication off");
    let single = Cluster::start(&root.join("single"), &REGIONS[..1]).await?;
    let base = load(&single.urls, a.writers, a.keys, duration, None).await;
    let base_mem = single.peak_memory_mib();
    single.stop().await;
    println!(
        "      {:.0} writes/s acknowledged ({} failed)",
        base.rate(),
        base.failed
    );

    println!("\n[2/3] three regions, replicated, writers spread over them");
    let three = Cluster::start(&root.join("three"), &REGIONS).await?;
    let full = load(&three.urls, a.writers, a.keys, duration, None).await;
    let drain = three.drain(Duration::from_secs(120)).await?;
    let mem = three.peak_memory_mib();
    let full_stats = three.stats().await?;
    three.stop().await;
    println!(
        "      {:.0} writes/s acknowledged ({} failed); backlog drained {:.2} s after the load stopped",
        full.rate(),
        full.failed,
        drain.as_secs_f64()
    );

    let half = full.rate() / 2.0;
    println!("\n[3/3] three regions at half that load ({half:.0} writes/s): replication lag");
    let lagged = Cluster::start(&root.join("half"), &REGIONS).await?;
    let paced = load(
        &lagged.urls,
        a.writers.min(64),
        a.keys,
        duration,
        Some(half),
    )
    .await;
    lagged.drain(Duration::from_secs(60)).await?;
    let half_stats = lagged.stats().await?;
    lagged.stop().await;
    println!(
        "      {:.0} writes/s acknowledged ({} failed)",
        paced.rate(),
        paced.failed
    );

    println!("\nResults");
    println!(
        "  unreplicated (1 region)     {:>10.0} writes/s   peak RSS {:.0} MiB",
        base.rate(),
        base_mem.values().sum::<f64>()
    );
    println!(
        "  replicated (3 regions)      {:>10.0} writes/s   = {:.2} x unreplicated",
        full.rate(),
        full.rate() / base.rate().max(1.0)
    );
    println!("\n  replication lag per pair, write at origin -> applied (ms)");
    println!(
        "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "origin -> region", "p50 @half", "p99 @half", "max @half", "p50 @full", "p99 @full"
    );
    for (half_s, full_s) in half_stats.iter().zip(&full_stats) {
        for (origin, h) in &half_s.events.incoming {
            let f = full_s
                .events
                .incoming
                .get(origin)
                .map(|i| i.entry_lag_ms.clone())
                .unwrap_or_default();
            let e = &h.entry_lag_ms;
            println!(
                "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10}",
                format!("{origin} -> {}", half_s.region),
                e.p50,
                e.p99,
                e.max,
                f.p50,
                f.p99
            );
        }
    }
    println!("\n  per region at full load: peak memory, group commit");
    println!(
        "  {:<22} {:>10} {:>12} {:>14} {:>14}",
        "region", "peak MiB", "commits", "cmds/commit", "ms/commit"
    );
    for s in &full_stats {
        let r = &s.replication;
        println!(
            "  {:<22} {:>10.1} {:>12} {:>14.1} {:>14.2}",
            s.region,
            mem.get(&s.region).copied().unwrap_or(0.0),
            r.commits,
            r.committed_commands as f64 / r.commits.max(1) as f64,
            r.commit_us_total as f64 / 1000.0 / r.commits.max(1) as f64
        );
    }
    let worst_p99 = half_stats
        .iter()
        .flat_map(|s| s.events.incoming.values().map(|i| i.entry_lag_ms.p99))
        .max()
        .unwrap_or(0);
    println!(
        "\nAims: replicated >= 0.5 x unreplicated: {}; >= 10,000 writes/s: {}; lag p99 < 100 ms at half load: {} ({worst_p99} ms)",
        verdict(full.rate() >= 0.5 * base.rate()),
        verdict(full.rate() >= 10_000.0),
        verdict(worst_p99 < 100)
    );
    if a.keep {
        println!("data kept in {}", temp.keep().display());
    }
    Ok(ExitCode::SUCCESS)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}
