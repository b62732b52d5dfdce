//! parallax's traffic management: one router per client location.
//!
//! A router checks every region's `/readyz` from where it stands
//! ([`health`]: down after `down_after` failed checks in a row, up after
//! `up_after` good ones), re-reads the ownership delegations in force from
//! a region it can reach, and answers `GET /v1/route` with the nearest
//! healthy region for a client location, or for a write to an owned key
//! with its owner ([`decide`]). Each router decides from its own checks: a
//! region unreachable from one place and reachable from another is routed
//! around only where it is unreachable.
//!
//! When it declares a region down, the router also runs a failover
//! ([`failover`]): after `failover_grace_ms` the region's keys move to the
//! healthy region nearest to it under a new ownership epoch, conditional on
//! the epoch it saw (several routers deciding at once make one move), and
//! they are handed back once the region is up and has caught up (it trails
//! every other region up by under two heartbeats), by the delegate holding
//! them. Each step is measured and written to `failovers`.
//!
//! - [`health`]: a region's health, a state machine without I/O.
//! - [`decide`]: route decisions, pure.
//! - [`failover`]: a failover's steps, a state machine without I/O.
//! - [`checks`]: the workers that check regions and read delegations.
//! - `automation`: the worker that runs failovers and writes their rows.
//! - [`dns`]: the same decisions as DNS answers for a zone.
//! - [`metrics`]: Prometheus metrics.
//! - [`api`]: the HTTP API and its answers.

pub mod api;
mod automation;
pub mod checks;
pub mod decide;
pub mod dns;
pub mod failover;
pub mod health;
pub mod metrics;

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use parallax_core::clock::Clock;
use parallax_core::config::Config;
use parallax_core::error::{Error, Result};
use parallax_core::rollout::RolloutView;
use parallax_core::routing::OwnershipView;
use parallax_core::secrets::{SecretCell, Secrets};
use parallax_core::worker::{WorkerStatus, Workers};

use crate::api::{RouteAnswer, RouteQuery};
use crate::decide::{Origin, Refusal};
use crate::failover::Failover;
use crate::health::{Health, State, Thresholds};
use crate::metrics::Metrics;

/// Checks that `location` is one a router can serve: a `[routers.<name>]`
/// or a region's name.
pub fn check_location(config: &Config, location: &str) -> Result<()> {
    if config.location_of(location).is_some() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "location `{location}` is neither a router location nor a region (known: {}). \
         Fix: pass --location with one of those, or add [routers.{location}] with its location",
        config.location_names().join(", ")
    )))
}

/// How to run a router.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// The cluster config.
    pub config: Arc<Config>,
    /// The client location this router serves: a `[routers.<name>]` or a
    /// region's name.
    pub location: String,
    /// The wall clock.
    pub clock: Arc<dyn Clock>,
    /// Links cut by a drill in this process (`demo --chaos`): a check over
    /// one gets no answer.
    pub links: Option<Arc<parallax_core::links::Links>>,
}

/// A running router: its checks, its view of the regions, its answers.
#[derive(Clone, Debug)]
pub struct Router {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    location: String,
    clock: Arc<dyn Clock>,
    links: Option<Arc<parallax_core::links::Links>>,
    health: RwLock<BTreeMap<String, Health>>,
    view: RwLock<OwnershipView>,
    /// The rollout stages set at runtime, as last read.
    stages: RwLock<RolloutView>,
    /// Per region: the last answer that named it (ms since epoch; 0 never).
    last_answer: BTreeMap<String, AtomicU64>,
    /// Failovers under way, by region.
    failovers: Mutex<BTreeMap<String, Failover>>,
    /// The last finished failovers, oldest first.
    finished: Mutex<VecDeque<Failover>>,
    metrics: Metrics,
    workers: Workers,
    /// The tokens it sends the regions, swapped by a reload (SIGHUP).
    secrets: SecretCell,
}

impl Router {
    /// Starts checking every region (on the current tokio runtime).
    pub fn start(opts: RouterOptions) -> Result<Router> {
        let RouterOptions {
            config,
            location,
            clock,
            links,
        } = opts;
        check_location(&config, &location)?;
        let metrics = Metrics::new(&location);
        for region in config.regions.keys() {
            metrics.state(region, State::Unknown);
        }
        let router = Router {
            inner: Arc::new(Inner {
                health: RwLock::new(
                    config
                        .regions
                        .keys()
                        .map(|r| (r.clone(), Health::default()))
                        .collect(),
                ),
                view: RwLock::new(OwnershipView::default()),
                stages: RwLock::new(RolloutView::default()),
                last_answer: config
                    .regions
                    .keys()
                    .map(|r| (r.clone(), AtomicU64::new(0)))
                    .collect(),
                failovers: Mutex::new(BTreeMap::new()),
                finished: Mutex::new(VecDeque::new()),
                metrics,
                workers: Workers::new(Arc::clone(&clock)),
                secrets: SecretCell::new(Secrets::of(&config.cluster)),
                config,
                location,
                clock,
                links,
            }),
        };
        for region in router.inner.config.regions.keys() {
            let me = router.clone();
            let region = region.clone();
            router.inner.workers.spawn(format!("check:{region}"), |w| {
                checks::check_loop(me, region, w)
            });
        }
        let me = router.clone();
        router
            .inner
            .workers
            .spawn("ownership", |w| checks::ownership_loop(me, w));
        let me = router.clone();
        router
            .inner
            .workers
            .spawn("failover", |w| automation::failover_loop(me, w));
        tracing::info!(location = %router.inner.location, regions = router.inner.config.regions.len(), "Router started.");
        Ok(router)
    }

    /// Nothing, or — when a drill in this process cut the link from here
    /// to `region` — `timeout` of silence and the error a call would meet.
    pub(crate) async fn cross(&self, region: &str, timeout: Duration) -> Result<(), String> {
        match &self.inner.links {
            Some(links) => links
                .cross(&self.inner.location, region, timeout)
                .await
                .map_err(|d| d.to_string()),
            None => Ok(()),
        }
    }

    /// The location this router serves.
    pub fn location(&self) -> &str {
        &self.inner.location
    }

    /// The cluster config.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Every region's health as this router sees it.
    pub fn health(&self) -> BTreeMap<String, Health> {
        self.inner.health.read().expect("health lock").clone()
    }

    /// Every region's state as this router sees it.
    pub fn states(&self) -> BTreeMap<String, State> {
        self.inner
            .health
            .read()
            .expect("health lock")
            .iter()
            .map(|(r, h)| (r.clone(), h.state))
            .collect()
    }

    /// The ownership delegations in force, as last read.
    pub fn ownership(&self) -> OwnershipView {
        self.inner.view.read().expect("view lock").clone()
    }

    /// The rollout stages set at runtime, as last read.
    pub fn stages(&self) -> RolloutView {
        self.inner.stages.read().expect("stages lock").clone()
    }

    /// Failovers under way, then the last finished ones (newest last).
    pub fn failovers(&self) -> Vec<Failover> {
        let mut out: Vec<Failover> = self
            .inner
            .finished
            .lock()
            .expect("finished lock")
            .iter()
            .cloned()
            .collect();
        out.extend(
            self.inner
                .failovers
                .lock()
                .expect("failovers lock")
                .values()
                .cloned(),
        );
        out
    }

    /// Clients of the regions that are up, nearest to this router's
    /// location first: where the router reads delegations and sends rows.
    pub(crate) fn up_nearest_first(&self) -> Vec<parallax_core::RegionClient> {
        let config = &self.inner.config;
        let origin = Origin::Named(self.inner.location.clone());
        decide::ranked(config, &origin, &self.states())
            .into_iter()
            .filter(|c| c.state == State::Up)
            .filter_map(|c| self.region_client(&c.region))
            .collect()
    }

    /// Now, on the router's clock (ms since epoch).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.now_ms()
    }

    /// Counts a DNS answer by kind.
    pub(crate) fn count_dns(&self, kind: &str) {
        self.inner.metrics.dns(kind);
    }

    /// When this router last answered naming `region` (ms since epoch).
    fn last_answer_ms(&self, region: &str) -> Option<u64> {
        self.inner
            .last_answer
            .get(region)
            .map(|a| a.load(Ordering::Relaxed))
            .filter(|ms| *ms > 0)
    }

    /// The router's background workers.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.inner.workers.status()
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    fn thresholds(&self) -> Thresholds {
        let r = &self.inner.config.router;
        Thresholds {
            down_after: r.down_after,
            up_after: r.up_after,
        }
    }

    /// Where to send a client: the answer, or why there is none.
    pub fn route(&self, q: &RouteQuery) -> std::result::Result<RouteAnswer, Refusal> {
        let config = &self.inner.config;
        let from = q.from.as_deref().unwrap_or(&self.inner.location);
        let origin = decide::parse_origin(config, from)?;
        let candidates = decide::ranked(config, &origin, &self.states());
        let key_route = match (&q.class, &q.key) {
            (Some(class), Some(key)) => {
                let op = decide::parse_op(q.op.as_deref().unwrap_or("write"))?;
                Some(decide::key_route(
                    config,
                    class,
                    key,
                    op,
                    &self.ownership(),
                    &self.stages(),
                )?)
            }
            (None, None) if q.op.is_none() => None,
            _ => {
                return Err(Refusal::Bad(
                    "class, key and op go together: op needs a class and a key, and a class needs a key. \
                     Fix: ?class=<class>&key=<key>[&op=write], or none of them for the nearest region"
                        .into(),
                ));
            }
        };
        let ttl_s = config.router.ttl_s;
        let from_name = match &origin {
            Origin::Named(n) => n.clone(),
            Origin::Point(p) => format!("{},{}", p.lat, p.lon),
        };
        let (chosen, why, owner) = match key_route.and_then(|k| Some((k.must?, k.why))) {
            Some((owner, why)) => {
                let c = candidates
                    .iter()
                    .find(|c| c.region == owner)
                    .ok_or_else(|| {
                        Refusal::NoRegion(format!("region `{owner}` is not in the config"))
                    })?;
                if c.state == State::Down {
                    return Err(Refusal::NoRegion(format!(
                        "region `{owner}` must take this request ({why}) but is down as seen from {}. \
                         Fix: retry in {ttl_s} s; a failover moves its keys to another region",
                        self.inner.location
                    )));
                }
                (c.clone(), why, Some(owner))
            }
            None => {
                let c = decide::nearest(&candidates).ok_or_else(|| {
                    Refusal::NoRegion(format!(
                        "every region is down as seen from {}. Fix: retry in {ttl_s} s",
                        self.inner.location
                    ))
                })?;
                let why = format!(
                    "the nearest region {} ({} ms from {from_name})",
                    if c.state == State::Up {
                        "up"
                    } else {
                        "not known to be down"
                    },
                    c.latency_ms
                );
                (c.clone(), why, None)
            }
        };
        if let Some(last) = self.inner.last_answer.get(&chosen.region) {
            last.store(self.inner.clock.now_ms(), Ordering::Relaxed);
        }
        Ok(RouteAnswer {
            url: config.region_url(&chosen.region).unwrap_or_default(),
            region: chosen.region,
            ttl_s,
            from: from_name,
            router: self.inner.location.clone(),
            why,
            owner,
            candidates,
        })
    }

    /// Stops the checks.
    pub async fn shutdown(&self) {
        let late = self.inner.workers.shutdown(Duration::from_secs(5)).await;
        if !late.is_empty() {
            tracing::warn!(workers = ?late, "Router workers did not stop in time.");
        }
    }
}

impl Router {
    /// The secrets in force: a reload sets them here.
    pub fn secrets(&self) -> &SecretCell {
        &self.inner.secrets
    }

    /// A client of `region` sending the tokens in force; `None` when the
    /// config does not declare it.
    pub(crate) fn region_client(&self, region: &str) -> Option<parallax_core::RegionClient> {
        parallax_core::RegionClient::from_config(&self.inner.config, region)
            .map(|c| c.with_secrets(self.inner.secrets.clone()))
    }
}
