//! `parallax web`: the dashboards, SQL console and alerts over a data directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use parallax_replicator::clock::SystemClock;
use parallax_replicator::config::Config;
use parallax_web::alerts::Alerter;
use parallax_web::{App, SqlEngine};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

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

/// A running web app.
pub(crate) struct RunningWeb {
    /// The address it serves.
    pub(crate) addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    alerts: JoinHandle<()>,
    alerter: Alerter,
}

/// How long a stopping web app waits for notices still being delivered.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

impl RunningWeb {
    /// Stops serving and waits for open requests, then stops evaluating
    /// alerts and gives the notices already on their way (retries included)
    /// up to [`DELIVERY_GRACE`] to arrive: a resolve notice sent just before
    /// a restart is not lost to it.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        self.alerts.abort();
        if tokio::time::timeout(DELIVERY_GRACE, self.alerter.flush())
            .await
            .is_err()
        {
            tracing::warn!(
                grace_s = DELIVERY_GRACE.as_secs(),
                "stopped with notices still being delivered"
            );
        }
    }
}

/// Starts the web app for `config` over `data_dir` on `listen`.
pub(crate) async fn start(
    mut config: Config,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<RunningWeb> {
    let engine = SqlEngine::open(data_dir, parallax_web::sql_limits(&config))
        .await
        .with_context(|| format!("cannot open the tables under {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}. Fix: stop what uses it or pass --listen with a free address")
    })?;
    let addr = listener.local_addr()?;
    // Alert links point at where the app really listens unless told otherwise.
    config
        .web
        .external_url
        .get_or_insert_with(|| format!("http://{addr}"));
    let app = App::new(engine, config, Arc::new(SystemClock));
    let alerts = app.start_alerts();
    let alerter = app.alerter().clone();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let router = parallax_web::router(app);
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "web server failed");
        }
    });
    Ok(RunningWeb {
        addr,
        stop,
        server,
        alerts,
        alerter,
    })
}

/// `parallax web`: serve until SIGTERM or ctrl-c.
pub(crate) async fn run(a: WebArgs) -> Result<ExitCode> {
    let config = Config::load(&a.config)?;
    let listen = a.listen.unwrap_or(config.web.listen);
    let web = start(config, &a.data_dir, listen).await?;
    println!(
        "parallax web: http://{}/ (data: {})",
        web.addr,
        a.data_dir.display()
    );
    crate::region::shutdown_signal().await;
    web.stop().await;
    Ok(ExitCode::SUCCESS)
}
