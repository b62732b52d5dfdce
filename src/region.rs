//! `parallax region`: one region node behind its HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
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
}

/// A region node serving HTTP.
pub(crate) struct RunningRegion {
    pub(crate) node: Node,
    pub(crate) addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
}

impl RunningRegion {
    /// Stops accepting requests, lets in-flight ones finish, then stops the node.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        self.node.shutdown(Duration::from_secs(10)).await;
    }
}

/// Starts region `region` of `config`: store, replication and HTTP server.
pub(crate) async fn start(
    config: Arc<Config>,
    region: &str,
    data_dir: &Path,
    simulate_wan: bool,
    allow_fault_injection: bool,
) -> Result<RunningRegion> {
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
        urls,
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
    let listener = tokio::net::TcpListener::bind(region_cfg.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (regions.{region}.listen). Fix: stop whatever uses that port, or change the port in the config",
            region_cfg.listen
        )
    })?;
    let addr = listener.local_addr()?;
    let mut opts = NodeOptions::new(
        Arc::clone(&config),
        region,
        data_dir.to_owned(),
        Arc::new(transport),
    );
    opts.allow_fault_injection = allow_fault_injection;
    let node = Node::start(opts)
        .await
        .with_context(|| format!("cannot start region {region}"))?;
    let app = parallax_replicator::api::router(node.clone());
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
    Ok(RunningRegion {
        node,
        addr,
        stop: Some(stop_tx),
        server,
    })
}

/// `parallax region`.
pub(crate) async fn run(args: RegionArgs) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&args.config)?);
    let running = start(
        config,
        &args.region,
        &args.data_dir,
        args.simulate_wan,
        args.allow_fault_injection,
    )
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
