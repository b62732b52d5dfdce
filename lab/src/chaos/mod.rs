//! `parallax demo --chaos`: failures played on the running demo, under its
//! load, each with a printed timeline, a mark on the dashboards' charts,
//! and a verdict: detected after, mitigated after, recovered after, the
//! alert fired and resolved.
//!
//! Played here, in this process (the drills of record run on
//! network namespaces: `tests/netns.rs`, `tests/split_brain.rs`,
//! `tests/backlog.rs`, `tests/cache.rs`):
//! - a region goes dark for `--outage-secs`: the routers fail its users
//!   over; back, its backlog drains with an ETA ([`dark`]);
//! - a partial partition: two regions lose each other and keep
//!   replicating through the third ([`partition`]);
//! - a clock jumps 2 s ahead: the HLC guard refuses its stamps until it is
//!   mended; a critical entity is corrupted: the auditor flags it, repair
//!   clears it ([`clock`]);
//! - split-brain routing: a region is cut off from the other regions and
//!   the routers while a client holding an old answer still reaches it;
//!   its keys move, its owner lease refuses the stale writes ([`split`]);
//! - a region's change feed to its application cache goes silent: the cache
//!   stops serving from memory, the staleness it served is measured and
//!   alerted on ([`caches`]).
//!
//! Links are cut with [`Links`]: the transport, the collectors' probes and
//! the routers' checks drop what crosses a cut link. With `demo --netns`
//! the regions and routers are hosts of their own ([`Hosts`]) and a cut is
//! made in the kernel; the cache feed is still held with [`Links`].

mod caches;
mod clock;
mod dark;
mod partition;
mod split;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::config::Config;
use parallax_core::links::Links;
use parallax_core::stats::PeerStats;
use parallax_core::telemetry::FailoverEvent;
use parallax_router::health::State;
use serde_json::Value;

use crate::caches::DemoCaches;
use crate::hosts::Hosts;
use crate::load::Load;
use crate::process::{RunningRegion, RunningRouter};

/// The shortest outage the verdicts can judge: the `unreachable` alert
/// needs 30 s of failed probes, then an evaluation.
pub const MIN_OUTAGE: Duration = Duration::from_secs(40);

/// How long the load runs before the first failure: the baseline the
/// users' write latency during a drain is compared with.
const BASELINE: Duration = Duration::from_secs(10);

/// What one scenario measured, and whether it passed.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    /// The scenario.
    pub scenario: String,
    /// From the fault to its detection.
    pub detected: Option<Duration>,
    /// From the fault to the automated mitigation.
    pub mitigated: Option<Duration>,
    /// From the cure to the cluster being whole again.
    pub recovered: Option<Duration>,
    /// The alert rule that should page, and when it fired and resolved
    /// (from the fault, and from the cure).
    pub alert: String,
    /// From the fault to the alert firing.
    pub fired: Option<Duration>,
    /// From the cure to the alert resolving.
    pub resolved: Option<Duration>,
    /// Figures worth reading beside the times.
    pub notes: Vec<String>,
    /// What failed, if anything.
    pub failures: Vec<String>,
}

impl Verdict {
    fn new(scenario: &str, alert: &str) -> Verdict {
        Verdict {
            scenario: scenario.to_owned(),
            alert: alert.to_owned(),
            ..Verdict::default()
        }
    }

    /// Whether everything it checks held.
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Fails the verdict for each step that did not happen: detection,
    /// the mitigation (named `mitigation`), recovery, the alert.
    fn require(&mut self, mitigation: &str) {
        for (what, got) in [
            ("detection", self.detected),
            (mitigation, self.mitigated),
            ("recovery", self.recovered),
            ("the alert firing", self.fired),
            ("the alert resolving", self.resolved),
        ] {
            if got.is_none() {
                self.failures.push(format!("{what} did not happen"));
            }
        }
    }
}

/// What a chaos run acts on.
#[derive(Debug)]
pub struct World<'a> {
    /// The cluster config.
    pub config: Arc<Config>,
    /// Where the regions keep their stores.
    pub data_dir: &'a Path,
    /// Whether region-to-region traffic is delayed by the latency table.
    pub simulate_wan: bool,
    /// The web app (its alerts are read back).
    pub web: SocketAddr,
    /// A router per location, all started with `links`.
    pub routers: &'a [RunningRouter],
    /// The links the regions, collectors, routers and caches obey.
    pub links: Arc<Links>,
    /// With `demo --netns`, the hosts the regions and routers run on: a
    /// cut between two sites is then made in the kernel (the caches' feeds
    /// are still silenced with `links`: a stuck subscription, not a cut).
    pub hosts: Option<&'a Hosts>,
    /// The demo's application caches, kept by the regions' feeds.
    pub caches: &'a DemoCaches,
    /// The demo's users (their write latencies are read).
    pub load: &'a Load,
}

/// The chaos run: the cluster's parts it acts on and its clock.
#[derive(Debug)]
pub struct Chaos<'a> {
    world: World<'a>,
    http: reqwest::Client,
    started: Instant,
}

impl<'a> Chaos<'a> {
    /// A chaos run on `world`; its clock starts now.
    pub fn new(world: World<'a>) -> Result<Chaos<'a>> {
        Ok(Chaos {
            world,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            started: Instant::now(),
        })
    }

    /// Plays every scenario in turn; their verdicts. The regions are
    /// those of the first, second and last name in the config's order.
    pub async fn play(
        &self,
        regions: &mut Vec<(String, RunningRegion)>,
        outage: Duration,
    ) -> Result<Vec<Verdict>> {
        let names: Vec<String> = regions.iter().map(|(n, _)| n.clone()).collect();
        let (first, last) = (
            names.first().cloned().unwrap_or_default(),
            names.last().cloned().unwrap_or_default(),
        );
        self.say(&format!(
            "the users' load runs {} s as a baseline before the first failure",
            BASELINE.as_secs()
        ));
        tokio::time::sleep(BASELINE).await;
        let mut verdicts = vec![
            self.region_dark(regions, &last, outage, "region_unreachable")
                .await?,
        ];
        if names.len() >= 3 {
            verdicts.push(
                self.partial_partition(regions, &first, &last, "link_cut")
                    .await?,
            );
        }
        verdicts.push(self.clock_jump(regions, &first, "clock_offset").await?);
        verdicts.push(self.corruption(regions, "critical_divergence").await?);
        match split::victim(&self.world.config) {
            Some(victim) if names.len() >= 3 => {
                verdicts.push(self.split_brain(regions, &victim, "fenced_writes").await?)
            }
            _ => println!(
                "  (split-brain routing not played: it needs three regions and a home-owned class with a home prefix)"
            ),
        }
        verdicts.push(
            self.stale_cache(regions, self.world.caches, &first, "stale_cache_reads")
                .await?,
        );
        self.world.links.heal_all();
        if let Some(h) = self.world.hosts {
            h.heal_all()?;
        }
        Ok(verdicts)
    }

    /// Cuts sites `a` and `b` apart: regions and routers there stop
    /// reaching each other (both still reach every other site).
    fn cut(&self, a: &str, b: &str) -> Result<()> {
        match self.world.hosts {
            Some(h) => h.cut(a, b),
            None => {
                self.world.links.cut(a, b);
                Ok(())
            }
        }
    }

    /// Mends what [`Chaos::cut`] cut.
    fn heal(&self, a: &str, b: &str) -> Result<()> {
        match self.world.hosts {
            Some(h) => h.heal(a, b),
            None => {
                self.world.links.heal(a, b);
                Ok(())
            }
        }
    }

    /// Microseconds since the epoch at `at` (by the system clock).
    fn since_us(&self, at: Instant) -> u64 {
        SystemClock
            .now_us()
            .saturating_sub(at.elapsed().as_micros() as u64)
    }

    /// Says `text` "after" `d`, when it happened.
    fn after(&self, d: Option<Duration>, text: &str) {
        if let Some(d) = d {
            self.say(&format!("{text} after {:.1} s", d.as_secs_f64()));
        }
    }

    /// How long after `since` a router of `routers` declared `region` down
    /// (within `within`).
    async fn declared_down(
        &self,
        routers: &[&RunningRouter],
        region: &str,
        since: Instant,
        within: Duration,
    ) -> Option<Duration> {
        self.wait("a router declares it down", within, || async {
            routers
                .iter()
                .any(|r| {
                    r.router
                        .health()
                        .get(region)
                        .is_some_and(|h| h.state == State::Down)
                })
                .then(|| since.elapsed())
        })
        .await
    }

    fn say(&self, text: &str) {
        println!(
            "  [t+{:>6.1}s] {text}",
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Marks a step on the dashboards' charts (a `failovers` row recorded
    /// in `region`).
    fn mark(&self, regions: &[(String, RunningRegion)], text: &str) {
        if let Some((_, r)) = regions.first() {
            r.node.record_failovers(vec![FailoverEvent {
                ts_us: SystemClock.now_us(),
                event: format!("chaos: {text}"),
                ..FailoverEvent::default()
            }]);
        }
    }

    /// Polls `f` every 100 ms until it answers or `within` passes.
    async fn wait<T, F, Fut>(&self, _what: &str, within: Duration, mut f: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f().await {
                return Some(v);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The web app's alerts of `rule` now, by state (`pending`, `firing`).
    async fn alerts(&self, rule: &str) -> Vec<(String, BTreeMap<String, String>)> {
        let url = format!("http://{}/api/v1/alerts", self.world.web);
        let Ok(r) = self.http.get(&url).send().await else {
            return Vec::new();
        };
        let v: Value = r.json().await.unwrap_or(Value::Null);
        v["active"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|x| x["rule"] == rule)
                    .map(|x| {
                        let labels = x["labels"]
                            .as_object()
                            .map(|o| {
                                o.iter()
                                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (x["state"].as_str().unwrap_or("").to_owned(), labels)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether an alert of `rule` whose labels include `label` is firing.
    async fn firing(&self, rule: &str, label: (&str, &str)) -> bool {
        self.alerts(rule).await.iter().any(|(state, labels)| {
            state == "firing" && labels.get(label.0).map(String::as_str) == Some(label.1)
        })
    }

    /// The region the router of `location` sends that location's clients to.
    async fn route(&self, router: &RunningRouter, location: &str) -> Option<String> {
        let url = format!("http://{}/v1/route?from={location}", router.addr);
        let v: Value = self.http.get(&url).send().await.ok()?.json().await.ok()?;
        v["region"].as_str().map(str::to_owned)
    }

    /// The routers whose own location's clients go to `region` when it is up.
    async fn routers_of(&self, region: &str) -> Vec<&RunningRouter> {
        let mut out = Vec::new();
        for r in self.world.routers {
            if self.route(r, r.router.location()).await.as_deref() == Some(region) {
                out.push(r);
            }
        }
        out
    }
}

/// The running region named `name`.
fn region<'r>(regions: &'r [(String, RunningRegion)], name: &str) -> Option<&'r RunningRegion> {
    regions.iter().find(|(n, _)| n == name).map(|(_, r)| r)
}

/// How every region but `peer` sees its replication with `peer` (`None`
/// from a region that has no entry for it).
fn seen_by_others(regions: &[(String, RunningRegion)], peer: &str) -> Vec<Option<PeerStats>> {
    regions
        .iter()
        .filter(|(n, _)| n != peer)
        .map(|(_, r)| r.node.stats().replication.peers.get(peer).cloned())
        .collect()
}

/// Who owns `region`'s keys as each region sees it: `Some(owner)` when
/// they all agree.
fn owner_of(regions: &[(String, RunningRegion)], region: &str) -> Option<String> {
    let mut owners = regions
        .iter()
        .map(|(_, r)| r.node.ownership().effective(region).0);
    let first = owners.next()?;
    owners.all(|o| o == first).then_some(first)
}

/// A region that trails every peer by less than this has caught up.
const CAUGHT_UP_MS: u64 = 1_000;

/// Whether a region trails every peer by less than [`CAUGHT_UP_MS`].
fn caught_up(stats: &parallax_core::NodeStats) -> bool {
    stats
        .replication
        .peers
        .values()
        .all(|p| p.lag_from_ms.is_some_and(|l| l < CAUGHT_UP_MS))
}

/// Prints the verdicts; true when every one passed.
pub fn print_verdicts(verdicts: &[Verdict], lost: u64) -> bool {
    let s = |d: Option<Duration>| {
        d.map_or_else(|| "–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()))
    };
    println!("\nChaos verdicts:");
    println!(
        "  {:<36} {:>9} {:>10} {:>10} {:>24}  verdict",
        "scenario", "detected", "mitigated", "recovered", "alert fired / resolved"
    );
    for v in verdicts {
        println!(
            "  {:<36} {:>9} {:>10} {:>10} {:>24}  {}",
            v.scenario,
            s(v.detected),
            s(v.mitigated),
            s(v.recovered),
            format!("{}: {} / {}", v.alert, s(v.fired), s(v.resolved)),
            if v.ok() {
                "PASS".to_owned()
            } else {
                format!("FAIL ({})", v.failures.join("; "))
            }
        );
        for n in &v.notes {
            println!("  {:<36} {n}", "");
        }
    }
    println!(
        "  acknowledged writes lost: {lost} (must be 0){}",
        if lost == 0 { "" } else { "  FAIL" }
    );
    lost == 0 && verdicts.iter().all(Verdict::ok)
}
