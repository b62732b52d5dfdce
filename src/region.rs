//! `parallax region`: one region node behind its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use parallax_collector::{Collector, CollectorOptions};
use parallax_replicator::clock::{Clock, SkewedClock, SystemClock};
use parallax_replicator::config::Config;
use parallax_replicator::transport::HttpTransport;
use parallax_replicator::{Node, NodeOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Arguments of `parallax region`.
#[derive(Debug, Args)]
pub(crate) struct RegionArgs {
    /// The cluster config file (TOML), the same for every region.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// Which of the config's regions this process is.
    #[arg(long, env = "PARALLAX_REGION")]
    pub(crate) region: String,
    /// Directory for the region's store (`<region>.redb`); created if missing.
    #[arg(long, env = "PARALLAX_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Delay region-to-region traffic by the config's latency table, to
    /// rehearse WAN behaviour on one machine.
    #[arg(long)]
    pub(crate) simulate_wan: bool,
    /// Serve POST /v1/admin/fault, which changes stored entities without
    /// replicating them, to rehearse divergence. Never in production.
    #[arg(long)]
    pub(crate) allow_fault_injection: bool,
    /// Run this region's clock this many milliseconds ahead (negative:
    /// behind), to rehearse clock skew. Drills only.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub(crate) clock_skew_ms: i64,
}

/// A region node serving HTTP, with its collector.
pub(crate) struct RunningRegion {
    pub(crate) node: Node,
    pub(crate) collector: Collector,
    pub(crate) addr: SocketAddr,
    stops: Vec<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<()>>,
}

impl RunningRegion {
    /// Stops accepting requests, lets in-flight ones finish, stops the node,
    /// then writes the telemetry it buffered.
    pub(crate) async fn stop(mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for server in &mut self.servers {
            let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
        }
        self.node.shutdown(Duration::from_secs(10)).await;
        self.collector.shutdown().await;
    }
}

/// How to run a region.
pub(crate) struct Setup<'a> {
    pub(crate) config: Arc<Config>,
    pub(crate) region: &'a str,
    pub(crate) data_dir: &'a Path,
    /// Delay region-to-region traffic by the latency table.
    pub(crate) simulate_wan: bool,
    /// Serve fault injection.
    pub(crate) allow_fault_injection: bool,
    /// Run this region's clock this far ahead (ms; drills).
    pub(crate) clock_skew_ms: i64,
}

fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed.");
        }
    });
    (stop_tx, server)
}

async fn bind(addr: SocketAddr, field: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({field}). Fix: stop whatever uses that port, or change the port in the config")
    })
}

/// Starts a region: store, replication, collector and HTTP server.
pub(crate) async fn start(s: Setup<'_>) -> Result<RunningRegion> {
    let Setup {
        config,
        region,
        data_dir,
        simulate_wan,
        allow_fault_injection,
        clock_skew_ms,
    } = s;
    let region_cfg = config.regions.get(region).with_context(|| {
        format!(
            "region `{region}` is not declared in the config (declared: {}). Fix: pass --region with one of those",
            config.region_names().join(", ")
        )
    })?;
    let urls: BTreeMap<String, String> = config
        .regions
        .keys()
        .filter_map(|r| Some((r.clone(), config.region_url(r)?)))
        .collect();
    let mut transport = HttpTransport::new(
        region,
        urls.clone(),
        config.cluster.peer_secret.clone(),
        Duration::from_millis(config.replication.peer_timeout_ms),
    );
    if simulate_wan {
        let delays = config
            .regions
            .keys()
            .filter(|r| *r != region)
            .map(|r| {
                (
                    r.clone(),
                    Duration::from_millis(u64::from(config.latency_between(region, r))),
                )
            })
            .collect();
        transport = transport.with_delays(delays);
    }
    let listener = bind(region_cfg.listen, &format!("regions.{region}.listen")).await?;
    let addr = listener.local_addr()?;
    let clock: Arc<dyn Clock> = if clock_skew_ms == 0 {
        Arc::new(SystemClock)
    } else {
        Arc::new(SkewedClock::new(Arc::new(SystemClock), clock_skew_ms))
    };
    let (events_tx, events_rx) = tokio::sync::mpsc::channel(config.collector.event_queue.max(1));
    let mut opts = NodeOptions::new(
        Arc::clone(&config),
        region,
        data_dir.to_owned(),
        Arc::new(transport),
    );
    opts.allow_fault_injection = allow_fault_injection;
    opts.clock = Arc::clone(&clock);
    opts.subscriber = Some(events_tx);
    let node = Node::start(opts)
        .await
        .with_context(|| format!("cannot start region {region}"))?;
    let collector = Collector::start(
        CollectorOptions {
            root: data_dir.join("tables"),
            region: region.to_owned(),
            config: config.collector.clone(),
            probe_urls: urls,
            tokens: vec![
                config.cluster.client_token.clone(),
                config.cluster.admin_token.clone(),
            ],
            clock,
        },
        events_rx,
        Some(node.clone()),
    )
    .with_context(|| format!("cannot start the collector of region {region}"))?;
    let mut app = parallax_replicator::api::router(node.clone());
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    match config.collector.metrics_listen {
        Some(metrics_addr) => {
            let l = bind(metrics_addr, "collector.metrics_listen").await?;
            let (stop, server) = serve(l, collector.router());
            stops.push(stop);
            servers.push(server);
        }
        None => app = app.merge(collector.router()),
    }
    let (stop, server) = serve(listener, app);
    stops.push(stop);
    servers.push(server);
    Ok(RunningRegion {
        node,
        collector,
        addr,
        stops,
        servers,
    })
}

/// `parallax region`.
pub(crate) async fn run(args: RegionArgs) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&args.config)?);
    let running = start(Setup {
        config,
        region: &args.region,
        data_dir: &args.data_dir,
        simulate_wan: args.simulate_wan,
        allow_fault_injection: args.allow_fault_injection,
        clock_skew_ms: args.clock_skew_ms,
    })
    .await?;
    tracing::info!(region = %args.region, addr = %running.addr, data_dir = %args.data_dir.display(), "Serving.");
    shutdown_signal().await;
    tracing::info!(region = %args.region, "Shutting down.");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on ctrl-c or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
