//! `parallax demo --netns`: the demo's regions and routers as hosts of
//! their own. Each region, and each location's router, gets a network
//! namespace with its own address on one bridge ([`Net`]) and a tokio
//! runtime whose threads live there ([`Net::runtime`]): it listens on that
//! address and everything it sends (replication, heartbeats, probes, the
//! routers' checks) crosses the bridge. A cut between two sites is a real
//! one: the kernel drops the packets, connections time out.
//!
//! The demo's users, application caches, web app and the chaos player stay
//! in the caller's namespace, which reaches every host; the regions stay
//! in this process, so a drill still reads their stores and moves their
//! clocks directly.
//!
//! The namespaces are `px-demo<pid>-<host>`, deleted when the demo ends
//! (and, if it was killed, by the next `--netns` demo).
//!
//! A site is a region or a router location (they may share a name, as in
//! the example config): region `x` runs on host `x`, the router of location
//! `x` on host `at-x`. Cutting two sites cuts every host of one from every
//! host of the other, as [`parallax_core::links::Links`] does on loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;

use anyhow::{Context, Result};
use parallax_core::config::Config;
use tokio::runtime::{Handle, Runtime};

use crate::netns::Net;
use crate::process::{self, RunningRegion, RunningRouter, Setup};

/// Worker threads of a region's runtime.
const REGION_WORKERS: usize = 2;

/// The demo's hosts; their runtimes stop and their namespaces are deleted
/// on drop.
pub struct Hosts {
    runtimes: BTreeMap<String, Runtime>,
    net: Net,
}

impl std::fmt::Debug for Hosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hosts").field("net", &self.net).finish()
    }
}

impl Hosts {
    /// Makes a host for every region and every router location of
    /// `config`; the config again with their addresses (ports kept).
    pub fn create(config: &Config) -> Result<(Hosts, Config)> {
        Net::available().context("`--netns` makes network namespaces")?;
        let mut names: Vec<String> = config.regions.keys().cloned().collect();
        names.extend(config.routers.keys().map(|l| router_host(l)));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        // Tagged with this process's id: two demos at once keep their own.
        crate::netns::remove_left_by_exited("demo")?;
        let net = Net::create(&format!("demo{}", std::process::id()), &refs).context(
            "`--netns` names a host after each region and `at-<location>` after each router",
        )?;
        let mut hosts = Hosts {
            runtimes: BTreeMap::new(),
            net,
        };
        for name in &names {
            let workers = if config.regions.contains_key(name) {
                REGION_WORKERS
            } else {
                1
            };
            let rt = hosts.net.runtime(name, workers)?;
            hosts.runtimes.insert(name.clone(), rt);
        }
        let mut moved = config.clone();
        for (name, r) in &mut moved.regions {
            r.listen = SocketAddr::from((hosts.net.addr(name), r.listen.port()));
            // Peers and clients reach it at its host's address.
            r.advertise = None;
        }
        for (location, site) in &mut moved.routers {
            let at = hosts.net.addr(&router_host(location));
            site.listen = SocketAddr::from((at, site.listen.port()));
            site.dns_listen = site.dns_listen.map(|d| SocketAddr::from((at, d.port())));
        }
        Ok((hosts, moved))
    }

    /// Runs `f` on `host`'s runtime: what it binds and connects is that
    /// host's.
    pub async fn on<T, F>(&self, host: &str, f: F) -> Result<T>
    where
        F: Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.handle(host)?
            .spawn(f)
            .await
            .with_context(|| format!("starting on host `{host}`"))?
    }

    fn handle(&self, host: &str) -> Result<Handle> {
        self.runtimes
            .get(host)
            .map(|rt| rt.handle().clone())
            .with_context(|| format!("no host `{host}`"))
    }

    /// The hosts of site `site`: its region's and its router's.
    fn of(&self, site: &str) -> Vec<String> {
        [site.to_owned(), router_host(site)]
            .into_iter()
            .filter(|h| self.runtimes.contains_key(h))
            .collect()
    }

    /// Cuts every host of site `a` from every host of site `b`.
    pub fn cut(&self, a: &str, b: &str) -> Result<()> {
        for x in self.of(a) {
            for y in self.of(b) {
                self.net.cut(&x, &y)?;
            }
        }
        Ok(())
    }

    /// Mends what [`Hosts::cut`] cut.
    pub fn heal(&self, a: &str, b: &str) -> Result<()> {
        for x in self.of(a) {
            for y in self.of(b) {
                self.net.heal(&x, &y)?;
            }
        }
        Ok(())
    }

    /// Mends every cut.
    pub fn heal_all(&self) -> Result<()> {
        self.net.heal_all()
    }

    /// The address the caller (the demo's users, caches and web app) has
    /// on the hosts' bridge.
    pub fn caller_addr(&self) -> std::net::Ipv4Addr {
        self.net.caller_addr()
    }
}

/// Starts a region: on its host when there are `hosts`, else here.
pub async fn start_region(hosts: Option<&Hosts>, s: Setup<'_>) -> Result<RunningRegion> {
    let Some(hosts) = hosts else {
        return process::start_region(s).await;
    };
    let region = s.region.to_owned();
    let data_dir = s.data_dir.to_owned();
    let (config, simulate_wan, allow_fault_injection, clock_skew_ms, links) = (
        s.config,
        s.simulate_wan,
        s.allow_fault_injection,
        s.clock_skew_ms,
        s.links,
    );
    let host = region.clone();
    hosts
        .on(&host, async move {
            process::start_region(Setup {
                config,
                region: &region,
                data_dir: &data_dir,
                simulate_wan,
                allow_fault_injection,
                clock_skew_ms,
                links,
            })
            .await
        })
        .await
}

/// Starts the router of `location` (see [`process::start_router`]): on its
/// host when there are `hosts`, else here.
pub async fn start_router(
    hosts: Option<&Hosts>,
    config: std::sync::Arc<Config>,
    location: &str,
    listen: Option<SocketAddr>,
    dns_listen: Option<SocketAddr>,
    links: Option<std::sync::Arc<parallax_core::links::Links>>,
) -> Result<RunningRouter> {
    let Some(hosts) = hosts else {
        return process::start_router(config, location, listen, dns_listen, links).await;
    };
    let owned = location.to_owned();
    hosts
        .on(&router_host(location), async move {
            process::start_router(config, &owned, listen, dns_listen, links).await
        })
        .await
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; this does not wait.
        for (_, rt) in std::mem::take(&mut self.runtimes) {
            rt.shutdown_background();
        }
    }
}

/// The host of location `location`'s router.
pub fn router_host(location: &str) -> String {
    format!("at-{location}")
}
