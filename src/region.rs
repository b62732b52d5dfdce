//! `parallax region`: one region node behind its HTTP API.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use clap::Args;
use parallax_core::config::Config;
use parallax_lab::process::{Setup, start_region};

use crate::reload;

/// A region of a config, and the directory of its store.
#[derive(Debug, Args)]
pub(crate) struct RegionOnDisk {
    /// The cluster config file (TOML), the same for every region.
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// Which of the config's regions.
    #[arg(long, env = "PARALLAX_REGION")]
    pub(crate) region: String,
    /// Directory for the region's store (`<region>.redb`, `<region>.wal/`);
    /// created if missing.
    #[arg(long, env = "PARALLAX_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
}

/// Arguments of `parallax region`.
#[derive(Debug, Args)]
pub(crate) struct RegionArgs {
    #[command(flatten)]
    pub(crate) on_disk: RegionOnDisk,
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

/// `parallax region`.
pub(crate) async fn run(args: RegionArgs) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&args.on_disk.config)?);
    let running = start_region(Setup {
        config: Arc::clone(&config),
        region: &args.on_disk.region,
        data_dir: &args.on_disk.data_dir,
        simulate_wan: args.simulate_wan,
        allow_fault_injection: args.allow_fault_injection,
        clock_skew_ms: args.clock_skew_ms,
        links: None,
    })
    .await?;
    tracing::info!(region = %args.on_disk.region, addr = %running.addr, data_dir = %args.on_disk.data_dir.display(), "Serving.");
    reload::until_stopped(
        &args.on_disk.config,
        &config,
        &running.secrets,
        &running.certs,
    )
    .await;
    tracing::info!(region = %args.on_disk.region, "Shutting down.");
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}
