//! A region, the web app and a router, started inside this process: what
//! `parallax region`, `parallax web` and `parallax router` run, and what the
//! demo, the drills and the benchmarks start several of.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use parallax_collector::{Collector, CollectorOptions};
use parallax_core::clock::{Clock, SkewedClock, SystemClock};
use parallax_core::config::{Config, PeerAuth};
use parallax_core::links::Links;
use parallax_core::secrets::{SecretCell, Secrets};
use parallax_core::transport::HttpTransport;
use parallax_core::worker::Workers;
use parallax_replicator::{Node, NodeOptions};
use parallax_router::dns::DnsServer;
use parallax_router::{Router, RouterOptions};
use parallax_web::alerts::Alerter;
use parallax_web::{App, SqlEngine};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::tls::{Certs, Conn, Incoming};

/// A region node serving HTTP, with its collector.
pub struct RunningRegion {
    /// The region node.
    pub node: Node,
    /// Its collector.
    pub collector: Collector,
    /// Its clock: the system clock, moved by `clock_skew_ms` and by drills
    /// ([`SkewedClock::set_offset_ms`]).
    pub clock: Arc<SkewedClock>,
    /// The address its API serves.
    pub addr: SocketAddr,
    /// The secrets its API accepts and sends, swapped by a reload.
    pub secrets: SecretCell,
    /// Its certificates, re-read by a reload.
    pub certs: Certs,
    stops: Vec<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RunningRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningRegion")
            .field("region", &self.node.region())
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningRegion {
    /// Stops accepting requests, lets in-flight ones finish, stops the node,
    /// then writes the telemetry it buffered.
    pub async fn stop(mut self) {
        self.node.close_streams();
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
#[derive(Debug)]
pub struct Setup<'a> {
    /// The cluster config.
    pub config: Arc<Config>,
    /// Which of its regions to run.
    pub region: &'a str,
    /// Where the region keeps its store and tables.
    pub data_dir: &'a Path,
    /// Delay region-to-region traffic by the latency table.
    pub simulate_wan: bool,
    /// Serve fault injection.
    pub allow_fault_injection: bool,
    /// Run this region's clock this far ahead (ms; drills).
    pub clock_skew_ms: i64,
    /// Links a drill in this process may cut (`demo --chaos`).
    pub links: Option<Arc<Links>>,
}

/// Serves `app` on `listener`, over TLS when `certs` has a certificate; requests see
/// their connection as `ConnectInfo<`[`Conn`]`>`.
fn serve(
    listener: tokio::net::TcpListener,
    certs: &Certs,
    app: axum::Router,
) -> Result<(oneshot::Sender<()>, JoinHandle<()>)> {
    let incoming = Incoming::new(listener, certs)?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stop_rx.await;
        };
        if let Err(e) = axum::serve(incoming, app.into_make_service_with_connect_info::<Conn>())
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed.");
        }
    });
    Ok((stop_tx, server))
}

async fn bind(addr: SocketAddr, field: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} ({field}). Fix: stop whatever uses that port, or change the port in the config")
    })
}

/// Starts a region: store, replication, collector and HTTP server.
pub async fn start_region(s: Setup<'_>) -> Result<RunningRegion> {
    let Setup {
        config,
        region,
        data_dir,
        simulate_wan,
        allow_fault_injection,
        clock_skew_ms,
        links,
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
    let secrets = SecretCell::new(Secrets::of(&config.cluster));
    let mut transport = HttpTransport::new(
        region,
        urls.clone(),
        config.cluster.peer_secret.clone(),
        Duration::from_millis(config.replication.peer_timeout_ms),
    )
    .with_secrets(secrets.clone());
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
    if let Some(links) = &links {
        transport = transport.with_links(Arc::clone(links));
    }
    let identity = config.tls.peer_identity().map_err(anyhow::Error::msg)?;
    let base = config.tls.client_builder();
    transport = transport.with_client(match identity {
        Some(id) => base.identity(id),
        None => base,
    });
    let certs = Certs::of(&config.tls)?.with_peers(transport.peer_client());
    let listener = bind(region_cfg.listen, &format!("regions.{region}.listen")).await?;
    let addr = listener.local_addr()?;
    let skewed = Arc::new(SkewedClock::new(Arc::new(SystemClock), clock_skew_ms));
    let clock: Arc<dyn Clock> = skewed.clone();
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
    opts.secrets = Some(secrets.clone());
    let node = Node::start(opts)
        .await
        .with_context(|| format!("cannot start region {region}"))?;
    let (root, bucket) = parallax_collector::bucket::locate(&config.collector, data_dir)?;
    let collector = Collector::start(
        CollectorOptions {
            root,
            bucket,
            region: region.to_owned(),
            config: config.collector.clone(),
            probe_urls: urls,
            secrets: secrets.clone(),
            bounds: parallax_collector::rollup::Bounds::of(&config),
            clock,
            links,
            tls: config.tls.clone(),
        },
        events_rx,
        Some(Arc::new(node.clone())),
    )
    .with_context(|| format!("cannot start the collector of region {region}"))?;
    let mut app = parallax_replicator::api::router(node.clone());
    if config.tls.peer_auth == PeerAuth::Mtls {
        app = app.layer(axum::middleware::from_fn(crate::tls::require_peer_cert));
    }
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    match config.collector.metrics_listen {
        Some(metrics_addr) => {
            let l = bind(metrics_addr, "collector.metrics_listen").await?;
            let (stop, server) = serve(l, &certs, collector.router())?;
            stops.push(stop);
            servers.push(server);
        }
        None => app = app.merge(collector.router()),
    }
    let (stop, server) = serve(listener, &certs, app)?;
    stops.push(stop);
    servers.push(server);
    Ok(RunningRegion {
        node,
        collector,
        secrets,
        certs,
        clock: skewed,
        addr,
        stops,
        servers,
    })
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
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

/// A running web app.
pub struct RunningWeb {
    /// The address it serves.
    pub addr: SocketAddr,
    /// The secrets its forms take and it sends the regions, swapped by a
    /// reload.
    pub secrets: SecretCell,
    /// Its certificate, re-read by a reload.
    pub certs: Certs,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
    workers: Workers,
    alerter: Alerter,
}

/// How long a stopping web app waits for notices still being delivered.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

impl std::fmt::Debug for RunningWeb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningWeb")
            .field("addr", &self.addr)
            .finish()
    }
}

impl RunningWeb {
    /// Stops serving and waits for open requests, then stops evaluating
    /// alerts and gives the notices already on their way (retries included)
    /// up to [`DELIVERY_GRACE`] to arrive: a resolve notice sent just before
    /// a restart is not lost to it.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
        // An evaluation under way finishes (or is stopped after 2 s).
        self.workers.shutdown(Duration::from_secs(2)).await;
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
pub async fn start_web(
    mut config: Config,
    data_dir: &Path,
    listen: SocketAddr,
) -> Result<RunningWeb> {
    let certs = Certs::of(&config.tls)?;
    let (root, bucket) = parallax_collector::bucket::locate(&config.collector, data_dir)?;
    let engine = SqlEngine::open_at(&root, bucket.as_deref(), parallax_web::sql_limits(&config))
        .await
        .with_context(|| match &bucket {
            Some(b) => format!("cannot open the tables in {}", b.url()),
            None => format!("cannot open the tables under {}", root.display()),
        })?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("cannot listen on {listen}. Fix: stop what uses it or pass --listen with a free address")
    })?;
    let addr = listener.local_addr()?;
    // Alert links point at where the app really listens unless told otherwise.
    let scheme = config.tls.scheme();
    config
        .web
        .external_url
        .get_or_insert_with(|| format!("{scheme}://{addr}"));
    let app = App::new(engine, config, Arc::new(SystemClock));
    app.start_alerts();
    let workers = app.workers().clone();
    let alerter = app.alerter().clone();
    let secrets = app.secrets().clone();
    let (stop, server) = serve(listener, &certs, parallax_web::router(app))?;
    Ok(RunningWeb {
        addr,
        secrets,
        certs,
        stop,
        server,
        workers,
        alerter,
    })
}

/// A running router.
#[derive(Debug)]
pub struct RunningRouter {
    /// The address its HTTP API serves.
    pub addr: SocketAddr,
    /// The address it answers DNS on, if it does.
    pub dns_addr: Option<SocketAddr>,
    /// The router.
    pub router: Router,
    /// Its certificate, re-read by a reload.
    pub certs: Certs,
    dns: Option<DnsServer>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

impl RunningRouter {
    /// Stops serving HTTP and DNS, then stops the checks.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.server).await;
        if let Some(dns) = self.dns {
            dns.stop().await;
        }
        self.router.shutdown().await;
    }
}

/// Starts the router of `location` on `listen` (by default its
/// `[routers.<location>]` address), answering DNS for `[router] zone` on
/// `dns_listen` (by default its `dns_listen`, if any).
pub async fn start_router(
    config: Arc<Config>,
    location: &str,
    listen: Option<SocketAddr>,
    dns_listen: Option<SocketAddr>,
    links: Option<Arc<Links>>,
) -> Result<RunningRouter> {
    parallax_router::check_location(&config, location)?;
    let Some(listen) = listen.or_else(|| config.routers.get(location).map(|s| s.listen)) else {
        bail!(
            "location `{location}` has no [routers.{location}] with a `listen` address. \
             Fix: add one to the config, or pass --listen"
        );
    };
    let certs = Certs::of(&config.tls)?;
    let router = Router::start(RouterOptions {
        config: Arc::clone(&config),
        location: location.to_owned(),
        clock: Arc::new(SystemClock),
        links,
    })?;
    let listener = match bind(listen, &format!("routers.{location}.listen")).await {
        Ok(l) => l,
        Err(e) => {
            router.shutdown().await;
            return Err(e);
        }
    };
    let addr = listener.local_addr()?;
    let dns_listen = dns_listen.or_else(|| config.routers.get(location).and_then(|s| s.dns_listen));
    let dns = match (&config.router.zone, dns_listen) {
        (Some(zone), Some(at)) => match DnsServer::start(router.clone(), zone, at).await {
            Ok(d) => Some(d),
            Err(e) => {
                router.shutdown().await;
                bail!("{e}");
            }
        },
        (None, Some(_)) => {
            router.shutdown().await;
            bail!("--dns-listen needs a zone to answer for. Fix: set [router] zone in the config");
        }
        _ => None,
    };
    let (stop, server) = match serve(listener, &certs, parallax_router::api::app(router.clone())) {
        Ok(s) => s,
        Err(e) => {
            router.shutdown().await;
            return Err(e);
        }
    };
    Ok(RunningRouter {
        addr,
        dns_addr: dns.as_ref().map(|d| d.addr),
        router,
        certs,
        dns,
        stop,
        server,
    })
}
