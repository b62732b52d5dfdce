//! `parallax router`: the traffic manager of one client location.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use parallax_core::config::Config;
use parallax_lab::process::start_router;

/// Arguments of `parallax router`.
#[derive(Debug, Args)]
pub(crate) struct RouterArgs {
    /// The cluster's config file (regions, latency table, [router], [routers.<location>]).
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// The client location this router serves: a [routers.<name>] or a
    /// region's name. May be left out when the config has one router.
    #[arg(long)]
    pub(crate) location: Option<String>,
    /// Listen address; overrides `routers.<location>.listen`.
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Answer DNS for `[router] zone` here (UDP and TCP); overrides
    /// `routers.<location>.dns_listen`.
    #[arg(long)]
    pub(crate) dns_listen: Option<SocketAddr>,
}

/// `parallax router`: serve until SIGTERM or ctrl-c.
pub(crate) async fn run(a: RouterArgs) -> Result<ExitCode> {
    let config = Arc::new(Config::load(&a.config)?);
    let location = match (a.location, config.routers.len()) {
        (Some(l), _) => l,
        (None, 1) => config.routers.keys().next().cloned().unwrap_or_default(),
        (None, _) => bail!(
            "which location does this router serve? Fix: pass --location with one of: {}",
            config.location_names().join(", ")
        ),
    };
    let zone = config.router.zone.clone();
    let running =
        start_router(Arc::clone(&config), &location, a.listen, a.dns_listen, None).await?;
    match (running.dns_addr, zone) {
        (Some(dns), Some(zone)) => println!(
            "parallax router for {location}: http://{}/v1/route, DNS for {zone} on {dns}",
            running.addr
        ),
        _ => println!(
            "parallax router for {location}: http://{}/v1/route",
            running.addr
        ),
    }
    crate::reload::until_stopped(&a.config, &config, running.router.secrets(), &running.certs)
        .await;
    running.stop().await;
    Ok(ExitCode::SUCCESS)
}
