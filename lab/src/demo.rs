//! `parallax demo`: three regions on loopback with WAN latency, a write load
//! over every conflict policy, then a convergence check and a summary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use parallax_core::NodeStats;
use parallax_core::config::Config;
use parallax_core::links::Links;
use parallax_replicator::Node;
use serde_json::json;

use crate::drill::{divergence_drill, failover_drill};
use crate::hosts::Hosts;
use crate::load::Load;
use crate::process::{self, RunningRegion, RunningRouter};

/// The built-in demo configuration.
pub const EXAMPLE_CONFIG: &str = include_str!("../../deploy/examples/three-regions.toml");

/// Arguments of `parallax demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the regions' stores (default: a temporary directory, removed at the end).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long the write load runs (seconds).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Client operations per second, across all regions.
    #[arg(long, default_value_t = 300)]
    pub rate: u64,
    /// Run this config instead of the built-in three-region example.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Do not delay region-to-region traffic by the config's latency table.
    #[arg(long)]
    pub no_wan: bool,
    /// Seed of the load generator (default: from the clock; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write a JSON summary here: rows written per table, and replication
    /// lag p99 per region pair as read back from the Parquet files.
    #[arg(long)]
    pub summary: Option<PathBuf>,
    /// Serve the web app (dashboards, SQL, alerts) here; default
    /// 127.0.0.1:8080, or a free port if that one is taken.
    #[arg(long)]
    pub web: Option<std::net::SocketAddr>,
    /// Do not start the web app.
    #[arg(long, conflicts_with = "web")]
    pub no_web: bool,
    /// After the demo, keep the regions and the web app running until ctrl-c,
    /// so the dashboards can be explored.
    #[arg(long)]
    pub linger: bool,
    /// Play failures under the load, with a printed timeline and a verdict
    /// each (a region dark for --outage-secs, a partial partition, a clock
    /// 2 s ahead, a corrupted entity, split-brain routing, a silent cache
    /// feed); exits 1 if a verdict fails.
    #[arg(long, conflicts_with = "no_web")]
    pub chaos: bool,
    /// With --chaos: how long the region stays dark (seconds, at least 40).
    #[arg(long, default_value_t = 120)]
    pub outage_secs: u64,
    /// Run each region and each location's router as a host of its own: a
    /// network namespace with its own address, so their traffic crosses a
    /// real (virtual) network and --chaos cuts links in the kernel. Needs
    /// root, `ip` (iproute2) and `nft` (nftables).
    #[arg(long)]
    pub netns: bool,
}

/// `parallax demo`.
pub async fn run(args: DemoArgs) -> Result<ExitCode> {
    let config = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::from_toml(
            EXAMPLE_CONFIG,
            "deploy/examples/three-regions.toml (built in)",
        )?,
    };
    // Declared before the regions: dropped (namespaces deleted) after them.
    let (hosts, config) = if args.netns {
        let (hosts, moved) = Hosts::create(&config)?;
        (Some(hosts), moved)
    } else {
        (None, config)
    };
    let hosts = hosts.as_ref();
    let config = Arc::new(config);
    if args.chaos && Duration::from_secs(args.outage_secs) < crate::chaos::MIN_OUTAGE {
        anyhow::bail!(
            "--outage-secs {} is too short to judge: the unreachable alert needs 30 s of failed probes. Fix: pass --outage-secs {} or more",
            args.outage_secs,
            crate::chaos::MIN_OUTAGE.as_secs()
        );
    }
    let temp;
    let data_dir = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("parallax-demo-")
                .tempdir()?;
            temp.path().to_owned()
        }
    };
    let seed = args
        .seed
        .unwrap_or_else(|| parallax_core::clock::Clock::now_us(&parallax_core::clock::SystemClock));
    println!(
        "parallax demo: {} regions, data in {}, seed {seed}",
        config.regions.len(),
        data_dir.display()
    );
    if let Some(h) = hosts {
        println!(
            "  every region and router is a host of its own (network namespaces px-demo{}-*); \
             this shell reaches them from {}",
            std::process::id(),
            h.caller_addr()
        );
    }
    let links = Arc::new(Links::new());
    let mut regions = Vec::new();
    for name in config.regions.keys() {
        let r = crate::hosts::start_region(
            hosts,
            process::Setup {
                config: Arc::clone(&config),
                region: name,
                data_dir: &data_dir,
                simulate_wan: !args.no_wan,
                allow_fault_injection: true,
                clock_skew_ms: 0,
                links: Some(Arc::clone(&links)),
            },
        )
        .await?;
        println!(
            "  region {name:<8} http://{}   (one-way WAN latency simulated: {})",
            r.addr,
            if args.no_wan { "off" } else { "on" }
        );
        regions.push((name.clone(), r));
    }
    let web = if args.no_web {
        None
    } else {
        let default = config.web.listen;
        let started =
            match process::start_web((*config).clone(), &data_dir, args.web.unwrap_or(default))
                .await
            {
                Ok(w) => w,
                Err(e) if args.web.is_none() => {
                    println!("  web app: {default} is taken ({e:#}); using a free port");
                    process::start_web(
                        (*config).clone(),
                        &data_dir,
                        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    )
                    .await?
                }
                Err(e) => return Err(e),
            };
        println!(
            "  web app  http://{}/   (dashboards, SQL console, alerts)",
            started.addr
        );
        Some(started)
    };
    let token = config.cluster.client_token.clone();
    let first = &regions[0].1;
    println!(
        "\nTry:  curl -s -H 'Authorization: Bearer {token}' http://{}/v1/entities/likes/post-1\n      \
         curl -s -H 'Authorization: Bearer {token}' http://{}/v1/stats\n",
        first.addr, first.addr
    );

    let routers = start_routers(&config, &links, hosts).await?;
    let load = Load::new(&config, &routers, seed);
    println!(
        "  users at {} reach the cluster through their location's router",
        load.locations().join(", ")
    );
    let caches = crate::caches::DemoCaches::start(&config, &regions, 50, Some(Arc::clone(&links)));
    let mut verdicts = None;
    if let (true, Some(w)) = (args.chaos, &web) {
        let chaos = crate::chaos::Chaos::new(crate::chaos::World {
            config: Arc::clone(&config),
            data_dir: &data_dir,
            simulate_wan: !args.no_wan,
            web: w.addr,
            routers: &routers,
            links: Arc::clone(&links),
            hosts,
            caches: &caches,
            load: &load,
        })?;
        verdicts = Some(play_chaos(&chaos, &mut regions, &load, &args).await?);
    }
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.duration);
    let interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = Instant::now();
    let mut inflight = tokio::task::JoinSet::new();
    let interrupted = !args.chaos
        && loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = process::shutdown_signal() => break true,
            }
            if Instant::now() >= deadline {
                break false;
            }
            while inflight.len() > 256 {
                inflight.join_next().await;
            }
            let worker = Arc::clone(&load);
            inflight.spawn(async move { worker.one().await });
            if report.elapsed() >= Duration::from_secs(5) {
                report = Instant::now();
                let lags = regions
                    .iter()
                    .map(|(_, r)| worst_lag(&r.node.stats()))
                    .max()
                    .unwrap_or(0);
                println!(
                    "  t={:>3}s  ops acknowledged {:>6}  failed {:>4}  worst lag now {lags} ms",
                    started.elapsed().as_secs(),
                    load.ok.load(Ordering::Relaxed),
                    load.failed.load(Ordering::Relaxed)
                );
            }
        };
    while inflight.join_next().await.is_some() {}
    if interrupted {
        println!("  interrupted; stopping the load");
    }
    let (cache_figures, older_reads) = caches.stop().await;

    println!("\nWaiting for replication to drain...");
    let converged = wait_converged(&config, &regions, Duration::from_secs(30)).await?;
    print_summary(&config, &regions, &load);
    crate::caches::print(&cache_figures, older_reads);
    let likes_expected = load.likes.load(Ordering::Relaxed);
    let likes_unknown = load.likes_unknown.load(Ordering::Relaxed);
    let likes_seen = total_counter(&regions[0].1.node, "likes")?;
    println!(
        "\nlikes: {likes_expected} increments acknowledged ({likes_unknown} more of unknown outcome), \
         counters sum to {likes_seen} in every region"
    );
    // Every acknowledged increment is counted; an unknown one may be.
    let likes_ok = (likes_expected..=likes_expected + likes_unknown).contains(&likes_seen);
    // The chaos run played its own corruption and failover.
    let drill = args.chaos || divergence_drill(&config, &regions).await?;
    if !args.chaos {
        failover_drill(&config, &regions).await?;
    }
    let chaos_ok = verdicts.as_ref().is_none_or(|v| {
        crate::chaos::print_verdicts(v, likes_expected.saturating_sub(likes_seen) as u64)
    });
    let ok = converged
        && chaos_ok
        && older_reads == 0
        && drill
        && (likes_ok || !config.classes.contains_key("likes"));
    println!(
        "{}",
        if ok {
            "converged: every region holds identical data"
        } else if converged {
            "converged, but a check above FAILED"
        } else {
            "NOT converged: see above"
        }
    );
    if args.linger {
        if let Some(w) = &web {
            println!(
                "\nThe regions and the web app keep running: http://{}/ (ctrl-c stops them)",
                w.addr
            );
        } else {
            println!("\nThe regions keep running (ctrl-c stops them)");
        }
        process::shutdown_signal().await;
    }
    if let Some(w) = web {
        w.stop().await;
    }
    for r in routers {
        r.stop().await;
    }
    let mut written: BTreeMap<String, u64> = BTreeMap::new();
    for (_, r) in regions {
        let collector = r.collector.clone();
        r.stop().await;
        for (table, rows) in collector.written().rows {
            *written.entry(table).or_insert(0) += rows;
        }
    }
    let tables = data_dir.join("tables");
    println!(
        "\nTelemetry: {} rows in Parquet under {}{}",
        written.values().sum::<u64>(),
        tables.display(),
        if args.data_dir.is_none() {
            " (removed with the temporary directory; pass --data-dir to keep it)"
        } else {
            ""
        }
    );
    for (table, rows) in &written {
        println!("  {table:<16} {rows:>8} rows");
    }
    if let Some(path) = &args.summary {
        let lag = lag_p99_by_pair(&tables)?;
        let summary = json!({ "rows_written": written, "lag_p99_ms": lag, "tables": tables });
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("cannot write the summary to {}", path.display()))?;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Plays the chaos scenarios under the load; their verdicts.
async fn play_chaos(
    chaos: &crate::chaos::Chaos<'_>,
    regions: &mut Vec<(String, RunningRegion)>,
    load: &Arc<Load>,
    args: &DemoArgs,
) -> Result<Vec<crate::chaos::Verdict>> {
    println!("\nChaos: failures played under the load (each is marked on the dashboards' charts).");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let driver = tokio::spawn(drive(Arc::clone(load), args.rate, stopped));
    let played = chaos
        .play(regions, Duration::from_secs(args.outage_secs))
        .await;
    stop.send_replace(true);
    let _ = driver.await;
    played
}

/// Starts a router for every `[routers.<location>]` (on a free port if
/// its own is taken) and waits until each sees every region up.
async fn start_routers(
    config: &Arc<Config>,
    links: &Arc<Links>,
    hosts: Option<&Hosts>,
) -> Result<Vec<RunningRouter>> {
    let mut routers = Vec::new();
    for location in config.routers.keys() {
        let start = |listen, dns| {
            crate::hosts::start_router(
                hosts,
                Arc::clone(config),
                location,
                listen,
                dns,
                Some(Arc::clone(links)),
            )
        };
        let r = match start(None, None).await {
            Ok(r) => r,
            // A host of its own has its ports to itself.
            Err(e) if hosts.is_some() => return Err(e),
            Err(e) => {
                let free = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                let dns = config
                    .routers
                    .get(location)
                    .and_then(|r| r.dns_listen)
                    .map(|_| free);
                println!("  router {location}: its address is taken ({e:#}); using a free port");
                start(Some(free), dns).await?
            }
        };
        println!(
            "  router {location:<8} http://{}{}",
            r.addr,
            r.dns_addr
                .map(|d| format!("   DNS {d}"))
                .unwrap_or_default()
        );
        routers.push(r);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let all_up = routers.iter().all(|r| {
            let h = r.router.health();
            config.regions.keys().all(|n| {
                h.get(n)
                    .is_some_and(|h| h.state == parallax_router::health::State::Up)
            })
        });
        if all_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(routers)
}

/// Sends the load at `rate` operations per second until `stop`.
async fn drive(load: Arc<Load>, rate: u64, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        while inflight.len() > 256 {
            inflight.join_next().await;
        }
        let worker = Arc::clone(&load);
        inflight.spawn(async move { worker.one().await });
    }
    while inflight.join_next().await.is_some() {}
}

fn worst_lag(stats: &NodeStats) -> u64 {
    stats
        .replication
        .peers
        .values()
        .filter_map(|p| p.lag_from_ms)
        .max()
        .unwrap_or(0)
}

/// Waits until every region has shipped everything and holds the same
/// entities; reports whether they converged.
async fn wait_converged(
    config: &Config,
    regions: &[(String, RunningRegion)],
    limit: Duration,
) -> Result<bool> {
    let start = Instant::now();
    loop {
        let drained = regions.iter().all(|(_, r)| {
            r.node
                .stats()
                .replication
                .peers
                .values()
                .all(|p| p.backlog_ops == 0)
        });
        if drained {
            let differing = differing_entities(config, regions)?;
            if differing.is_empty() {
                println!(
                    "  drained and identical after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
                return Ok(true);
            }
            if start.elapsed() > limit {
                println!(
                    "  {} entities still differ, e.g. {:?}",
                    differing.len(),
                    &differing[..differing.len().min(5)]
                );
                return Ok(false);
            }
        } else if start.elapsed() > limit {
            println!("  replication did not drain within {} s", limit.as_secs());
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn differing_entities(config: &Config, regions: &[(String, RunningRegion)]) -> Result<Vec<String>> {
    let mut differing = Vec::new();
    for class in config.classes.keys() {
        let mut views = Vec::new();
        for (_, r) in regions {
            let all: BTreeMap<String, _> =
                r.node.scan(class, None, usize::MAX)?.into_iter().collect();
            views.push(all);
        }
        let keys: std::collections::BTreeSet<&String> =
            views.iter().flat_map(|v| v.keys()).collect();
        for key in keys {
            let first = views[0].get(key);
            if views.iter().any(|v| v.get(key) != first) {
                differing.push(format!("{class}/{key}"));
            }
        }
    }
    Ok(differing)
}

/// p99 of `lag_ms` per `src->dst`, read back from the Parquet files
/// (nearest rank: the smallest value with at least 99% of rows at or below it).
fn lag_p99_by_pair(tables: &std::path::Path) -> Result<BTreeMap<String, i64>> {
    use arrow::array::{AsArray, Int64Array};
    let mut by_pair: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for batch in parallax_collector::files::read_table(tables, "replication_lag")? {
        let src = batch
            .column_by_name("src")
            .context("src column")?
            .as_string::<i32>();
        let dst = batch
            .column_by_name("dst")
            .context("dst column")?
            .as_string::<i32>();
        let lag = batch
            .column_by_name("lag_ms")
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .context("lag_ms column")?;
        for i in 0..batch.num_rows() {
            by_pair
                .entry(format!("{}->{}", src.value(i), dst.value(i)))
                .or_default()
                .push(lag.value(i));
        }
    }
    Ok(by_pair
        .into_iter()
        .map(|(pair, mut v)| {
            v.sort_unstable();
            let rank = ((v.len() as f64) * 0.99).ceil() as usize;
            (pair, v[rank.clamp(1, v.len()) - 1])
        })
        .collect())
}

fn total_counter(node: &Node, class: &str) -> Result<i64> {
    let mut total = 0;
    for (_, e) in node.scan(class, None, usize::MAX).context("scan")? {
        total += e.value().and_then(|v| v.as_i64()).unwrap_or(0);
    }
    Ok(total)
}

fn print_summary(config: &Config, regions: &[(String, RunningRegion)], load: &Load) {
    let n = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "\nLoad: {} operations acknowledged, {} answered 404/409 as expected (a read before the first write, \
         a write to a ticket waiting in the reconciliation queue), {} fenced (421: a region that may not take \
         the write refused it), {} increments of unknown outcome, {} failed",
        n(&load.ok),
        n(&load.refused),
        n(&load.fenced),
        n(&load.indeterminate),
        n(&load.failed)
    );
    println!(
        "  {} of {} writes were acknowledged while still replicating (applied_in named only some regions); \
         {} reads carried a user's session token (read-your-writes)",
        n(&load.replicating),
        n(&load.writes),
        n(&load.session_reads)
    );
    let failed = load.failed_by_class.lock().expect("failures").clone();
    if !failed.is_empty() {
        let parts: Vec<String> = failed.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("  failed, by class: {}", parts.join(", "));
    }
    println!("\nReplication lag, write at origin -> applied (ms):");
    println!(
        "  {:<20} {:>8} {:>8} {:>8} {:>8}",
        "origin -> region", "entries", "p50", "p99", "max"
    );
    for (name, r) in regions {
        let stats = r.node.stats();
        for (origin, inc) in &stats.events.incoming {
            let s = &inc.entry_lag_ms;
            println!(
                "  {:<20} {:>8} {:>8} {:>8} {:>8}",
                format!("{origin} -> {name}"),
                s.count,
                s.p50,
                s.p99,
                s.max
            );
        }
    }
    println!("\nConflicts seen, by region (class/outcome: count):");
    for (name, r) in regions {
        let stats = r.node.stats();
        let parts: Vec<String> = stats
            .events
            .conflicts
            .iter()
            .map(|c| format!("{}/{}: {}", c.class, c.outcome, c.count))
            .collect();
        println!(
            "  {name:<8} {}",
            if parts.is_empty() {
                "none".to_owned()
            } else {
                parts.join(", ")
            }
        );
        println!(
            "  {:<8} reconciliation queue: {} entities",
            "", stats.reconciliation_queue
        );
    }
    let critical: Vec<&String> = config
        .classes
        .iter()
        .filter(|(n, c)| c.critical && !n.starts_with('_'))
        .map(|(n, _)| n)
        .collect();
    if !critical.is_empty() {
        println!(
            "\nCritical classes: {}",
            critical
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}
