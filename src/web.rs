//! `parallax web`: the dashboards, SQL console and alerts over a data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use parallax_core::config::Config;
use parallax_lab::process::start_web;

/// Arguments of `parallax web`.
#[derive(Debug, Args)]
pub(crate) struct WebArgs {
    /// The cluster's config file (regions, tokens, [web], [slos], [alerts], [notifiers]).
    #[arg(long, env = "PARALLAX_CONFIG")]
    pub(crate) config: PathBuf,
    /// The data directory whose `tables/` the regions' collectors write.
    #[arg(long, env = "PARALLAX_DATA_DIR", default_value_os_t = crate::default_data_dir())]
    pub(crate) data_dir: PathBuf,
    /// Listen address; overrides `web.listen` (127.0.0.1:8080 by default).
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
}

/// `parallax web`: serve until SIGTERM or ctrl-c.
pub(crate) async fn run(a: WebArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let listen = a.listen.unwrap_or(config.web.listen);
    let web = start_web(config.clone(), &a.data_dir, listen).await?;
    println!(
        "parallax web: http://{}/ (data: {})",
        web.addr,
        a.data_dir.display()
    );
    crate::reload::until_stopped(&a.config, &config, &web.secrets, &web.certs).await;
    web.stop().await;
    Ok(ExitCode::SUCCESS)
}
