//! `parallax demo --chaos`: failures played on the running demo, under its
//! load, each with a printed timeline, a mark on the dashboards' charts,
//! and a verdict: detected after, mitigated after, recovered after, the
//! alert fired and resolved.
//!
//! Played here (loopback, in this process): a region goes dark for
//! `--outage-secs` (the routers fail its clients over, its backlog drains
//! with an ETA when it is back), a region's clock jumps 2 s ahead (the HLC
//! guard refuses its stamps until it is mended), and a critical entity is
//! corrupted (the auditor flags it, repair clears it). The partial
//! partition, split-brain routing and stale-cache drills need hosts of
//! their own: they run on network namespaces (`tests/netns.rs`,
//! `tests/split_brain.rs`, `tests/cache.rs`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::config::Config;
use parallax_core::telemetry::FailoverEvent;
use parallax_router::health::State;
use serde_json::Value;

use crate::process::{self, RunningRegion, RunningRouter};

/// The shortest outage the verdicts can judge: the `unreachable` alert
/// needs 30 s of failed probes, then an evaluation.
pub const MIN_OUTAGE: Duration = Duration::from_secs(40);

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

    fn require(&mut self, what: &str, got: Option<Duration>) {
        if got.is_none() {
            self.failures.push(format!("{what} did not happen"));
        }
    }
}

/// The chaos run: the cluster's parts it acts on and its clock.
pub struct Chaos<'a> {
    config: Arc<Config>,
    data_dir: &'a Path,
    simulate_wan: bool,
    web: SocketAddr,
    routers: Vec<RunningRouter>,
    http: reqwest::Client,
    started: Instant,
}

impl std::fmt::Debug for Chaos<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chaos").finish()
    }
}

impl<'a> Chaos<'a> {
    /// Starts a router for every `[routers.<location>]` and waits until
    /// each sees every region up.
    pub async fn start(
        config: Arc<Config>,
        data_dir: &'a Path,
        simulate_wan: bool,
        web: SocketAddr,
    ) -> Result<Chaos<'a>> {
        let mut routers = Vec::new();
        for location in config.routers.keys() {
            let r = process::start_router(Arc::clone(&config), location, None, None)
                .await
                .with_context(|| format!("cannot start the router of {location}"))?;
            println!("  router   {location:<8} http://{}", r.addr);
            routers.push(r);
        }
        let chaos = Chaos {
            config,
            data_dir,
            simulate_wan,
            web,
            routers,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            started: Instant::now(),
        };
        let all_up = || {
            chaos.routers.iter().all(|r| {
                let h = r.router.health();
                chaos
                    .config
                    .regions
                    .keys()
                    .all(|n| h.get(n).is_some_and(|h| h.state == State::Up))
            })
        };
        chaos
            .wait(
                "every router sees every region up",
                Duration::from_secs(20),
                || async { all_up().then_some(()) },
            )
            .await;
        Ok(chaos)
    }

    /// Stops the routers.
    pub async fn stop(self) {
        for r in self.routers {
            r.stop().await;
        }
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
        let url = format!("http://{}/api/v1/alerts", self.web);
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
        for r in &self.routers {
            if self.route(r, r.router.location()).await.as_deref() == Some(region) {
                out.push(r);
            }
        }
        out
    }

    /// A region goes dark under load for `outage`, then comes back: the
    /// routers fail its clients over, the `unreachable` alert fires, and
    /// when it is back its backlog drains at a measured rate and ETA.
    pub async fn region_dark(
        &self,
        regions: &mut Vec<(String, RunningRegion)>,
        victim: &str,
        outage: Duration,
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new(
            &format!("{victim} goes dark for {} s", outage.as_secs()),
            rule,
        );
        let its_routers = self.routers_of(victim).await;
        let at = regions
            .iter()
            .position(|(n, _)| n == victim)
            .context("no such region")?;
        self.mark(regions, &format!("{victim} goes dark"));
        let (name, region) = regions.remove(at);
        self.say(&format!(
            "{victim} goes dark: its process stops taking requests and replicating"
        ));
        let dark = Instant::now();
        region.stop().await;
        v.detected = self
            .wait(
                "a router declares it down",
                Duration::from_secs(15),
                || async {
                    self.routers
                        .iter()
                        .any(|r| {
                            r.router
                                .health()
                                .get(victim)
                                .is_some_and(|h| h.state == State::Down)
                        })
                        .then(|| dark.elapsed())
                },
            )
            .await;
        if let Some(d) = v.detected {
            self.say(&format!(
                "detected: a router declared {victim} down after {:.1} s",
                d.as_secs_f64()
            ));
        }
        v.mitigated = self
            .wait(
                "its clients go elsewhere",
                Duration::from_secs(20),
                || async {
                    for r in &its_routers {
                        if self.route(r, r.router.location()).await.as_deref() == Some(victim) {
                            return None;
                        }
                    }
                    Some(dark.elapsed())
                },
            )
            .await;
        if let Some(m) = v.mitigated {
            self.say(&format!(
                "mitigated: the routers of {} send their clients elsewhere after {:.1} s",
                its_routers
                    .iter()
                    .map(|r| r.router.location())
                    .collect::<Vec<_>>()
                    .join(", "),
                m.as_secs_f64()
            ));
        }
        for r in &self.routers {
            for f in r.router.failovers().iter().filter(|f| f.region == victim) {
                if let Some(by) = &f.moved_by {
                    v.notes
                        .push(format!("router {}: keys {by}", r.router.location()));
                }
            }
        }
        v.fired = self
            .wait(
                "the alert fires",
                outage.saturating_sub(dark.elapsed()),
                || async {
                    self.firing(rule, ("region", victim))
                        .await
                        .then(|| dark.elapsed())
                },
            )
            .await;
        if let Some(f) = v.fired {
            self.say(&format!(
                "alert {rule} fired after {:.1} s",
                f.as_secs_f64()
            ));
        }
        tokio::time::sleep(outage.saturating_sub(dark.elapsed())).await;

        self.mark(regions, &format!("{victim} back"));
        self.say(&format!(
            "{victim} comes back after {} s; its backlog drains",
            outage.as_secs()
        ));
        let back = Instant::now();
        let region = process::start_region(process::Setup {
            config: Arc::clone(&self.config),
            region: &name,
            data_dir: self.data_dir,
            simulate_wan: self.simulate_wan,
            allow_fault_injection: true,
            clock_skew_ms: 0,
        })
        .await?;
        regions.insert(at, (name, region));
        let node = regions[at].1.node.clone();
        let backlog = |regions: &[(String, RunningRegion)]| -> u64 {
            regions
                .iter()
                .filter(|(n, _)| n != victim)
                .filter_map(|(_, r)| {
                    r.node
                        .stats()
                        .replication
                        .peers
                        .get(victim)
                        .map(|p| p.backlog_ops)
                })
                .sum()
        };
        let peak = backlog(regions);
        // One loop watches it all, so each is timed when it happens: the
        // back region's first drain estimate, its catching up (under load
        // a backlog is never quite 0: caught up is trailing every peer by
        // under a second), its clients routed back, the alert resolving.
        let (mut eta, mut drained, mut routed_back, mut resolved) = (None, None, None, None);
        let deadline = back + Duration::from_secs(300);
        while Instant::now() < deadline
            && (drained.is_none() || routed_back.is_none() || resolved.is_none())
        {
            let stats = node.stats();
            if eta.is_none() && drained.is_none() {
                eta = stats
                    .events
                    .incoming
                    .values()
                    .filter_map(|i| Some((i.drain_ops_per_s?, i.eta_ms?)))
                    .max_by_key(|(_, eta)| *eta)
                    .map(|e| (e, back.elapsed()));
            }
            if drained.is_none() && caught_up(&stats) {
                drained = Some(back.elapsed());
            }
            if routed_back.is_none() {
                let mut all = true;
                for r in &its_routers {
                    all &= self.route(r, r.router.location()).await.as_deref() == Some(victim);
                }
                if all {
                    routed_back = Some(back.elapsed());
                }
            }
            if resolved.is_none() && !self.firing(rule, ("region", victim)).await {
                resolved = Some(back.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        v.resolved = resolved;
        v.recovered = drained.zip(routed_back).map(|(a, b)| a.max(b));
        v.notes.push(format!(
            "backlog into {victim} at its return: {peak} entries"
        ));
        if let (Some(((rate, eta_ms), at)), Some(done)) = (eta, drained) {
            let predicted = at + Duration::from_millis(eta_ms);
            let err = (predicted.as_secs_f64() - done.as_secs_f64()).abs()
                / done.as_secs_f64().max(0.001);
            v.notes.push(format!(
                "drain: {rate} entries/s, ETA {:.1} s at {:.1} s, drained at {:.1} s ({:.0} % off)",
                eta_ms as f64 / 1_000.0,
                at.as_secs_f64(),
                done.as_secs_f64(),
                100.0 * err
            ));
        }
        if let Some(r) = v.recovered {
            self.say(&format!(
                "recovered: backlog drained and clients back after {:.1} s",
                r.as_secs_f64()
            ));
        }
        if let Some(r) = v.resolved {
            self.say(&format!(
                "alert {rule} resolved after {:.1} s",
                r.as_secs_f64()
            ));
        }
        v.require("detection", v.detected);
        v.require("rerouting", v.mitigated);
        v.require("recovery", v.recovered);
        v.require("the alert firing", v.fired);
        v.require("the alert resolving", v.resolved);
        Ok(v)
    }

    /// A region's clock jumps 2 s ahead (past `max_clock_offset_ms`): the
    /// others refuse its stamps, so its writes cannot win last-writer-wins
    /// from the future; mended, its writes flow again.
    pub async fn clock_jump(
        &self,
        regions: &[(String, RunningRegion)],
        victim: &str,
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new(&format!("{victim}'s clock jumps 2 s ahead"), rule);
        let region = &regions
            .iter()
            .find(|(n, _)| n == victim)
            .context("no such region")?
            .1;
        let refused = |regions: &[(String, RunningRegion)]| -> u64 {
            regions
                .iter()
                .map(|(_, r)| r.node.stats().replication.refused_stamps)
                .sum()
        };
        let before = refused(regions);
        self.mark(regions, &format!("{victim}'s clock jumps 2 s ahead"));
        self.say(&format!(
            "{victim}'s clock jumps 2 s ahead (max_clock_offset_ms = {})",
            self.config.cluster.max_clock_offset_ms
        ));
        let jump = Instant::now();
        region.clock.set_offset_ms(2_000);
        v.detected = self
            .wait(
                "an offset of about 2 s is measured",
                Duration::from_secs(30),
                || async {
                    regions
                        .iter()
                        .filter(|(n, _)| n != victim)
                        .any(|(_, r)| {
                            r.node
                                .stats()
                                .replication
                                .peers
                                .get(victim)
                                .is_some_and(|p| p.clock_offset_ms > 1_000)
                        })
                        .then(|| jump.elapsed())
                },
            )
            .await;
        if let Some(d) = v.detected {
            self.say(&format!(
                "detected: {victim}'s clock measured ~2 s ahead after {:.1} s",
                d.as_secs_f64()
            ));
        }
        v.mitigated = self
            .wait(
                "its stamps are refused",
                Duration::from_secs(30),
                || async { (refused(regions) > before).then(|| jump.elapsed()) },
            )
            .await;
        if let Some(m) = v.mitigated {
            self.say(&format!(
                "mitigated: the others refuse {victim}'s stamps from the future after {:.1} s",
                m.as_secs_f64()
            ));
        }
        v.fired = self
            .wait("the alert fires", Duration::from_secs(60), || async {
                self.firing(rule, ("peer", victim))
                    .await
                    .then(|| jump.elapsed())
            })
            .await;
        if let Some(f) = v.fired {
            self.say(&format!(
                "alert {rule} fired after {:.1} s",
                f.as_secs_f64()
            ));
        }
        self.mark(regions, &format!("{victim}'s clock mended"));
        self.say(&format!("{victim}'s clock is mended"));
        let mended = Instant::now();
        region.clock.set_offset_ms(0);
        // Its writes flow again: every other region trails it by less than
        // a second.
        v.recovered = self
            .wait("its writes flow again", Duration::from_secs(60), || async {
                regions
                    .iter()
                    .filter(|(n, _)| n != victim)
                    .all(|(_, r)| {
                        r.node
                            .stats()
                            .replication
                            .peers
                            .get(victim)
                            .and_then(|p| p.lag_from_ms)
                            .is_some_and(|l| l < CAUGHT_UP_MS)
                    })
                    .then(|| mended.elapsed())
            })
            .await;
        if let Some(r) = v.recovered {
            self.say(&format!(
                "recovered: {victim}'s writes reached every region {:.1} s after",
                r.as_secs_f64()
            ));
        }
        v.notes
            .push(format!("stamps refused: {}", refused(regions) - before));
        v.resolved = self
            .wait("the alert resolves", Duration::from_secs(90), || async {
                (!self.firing(rule, ("peer", victim)).await).then(|| mended.elapsed())
            })
            .await;
        if let Some(r) = v.resolved {
            self.say(&format!(
                "alert {rule} resolved after {:.1} s",
                r.as_secs_f64()
            ));
        }
        v.require("detection", v.detected);
        v.require("the guard refusing stamps", v.mitigated);
        v.require("recovery", v.recovered);
        v.require("the alert firing", v.fired);
        v.require("the alert resolving", v.resolved);
        Ok(v)
    }

    /// A critical entity is corrupted in one region: the auditor flags it,
    /// the alert fires, repair from the majority's copy clears it.
    pub async fn corruption(
        &self,
        regions: &[(String, RunningRegion)],
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new("a critical entity corrupted", rule);
        self.mark(regions, "a critical entity corrupted");
        let at = Instant::now();
        let Some(found) = crate::drill::corrupt_and_audit(&self.config, regions).await? else {
            v.failures.push("no critical entity to corrupt".into());
            return Ok(v);
        };
        v.detected = (!found.divergent.is_empty()).then(|| at.elapsed());
        if let Some(f) = found.divergent.first() {
            self.say(&format!(
                "corrupted {}/{} in {}; the auditor flags it ({}) after {:.1} s",
                f.class,
                f.key,
                f.regions.join(","),
                f.reason,
                at.elapsed().as_secs_f64()
            ));
        }
        v.fired = self
            .wait("the alert fires", Duration::from_secs(60), || async {
                self.alerts(rule)
                    .await
                    .iter()
                    .any(|(s, _)| s == "firing")
                    .then(|| at.elapsed())
            })
            .await;
        if let Some(f) = v.fired {
            self.say(&format!(
                "alert {rule} fired after {:.1} s",
                f.as_secs_f64()
            ));
        }
        let repair = Instant::now();
        let clean = crate::drill::repair_and_audit(regions, &found).await?;
        v.mitigated = Some(at.elapsed());
        v.recovered = clean.then(|| repair.elapsed());
        self.mark(regions, "corruption repaired");
        self.say(&format!(
            "repaired from the majority's copy; the audit afterwards finds {}",
            if clean { "nothing" } else { "DIVERGENCE STILL" }
        ));
        v.resolved = self
            .wait("the alert resolves", Duration::from_secs(60), || async {
                (!self.alerts(rule).await.iter().any(|(s, _)| s == "firing"))
                    .then(|| repair.elapsed())
            })
            .await;
        if let Some(r) = v.resolved {
            self.say(&format!(
                "alert {rule} resolved after {:.1} s",
                r.as_secs_f64()
            ));
        }
        v.require("detection", v.detected);
        v.require("recovery (a clean audit)", v.recovered);
        v.require("the alert firing", v.fired);
        v.require("the alert resolving", v.resolved);
        Ok(v)
    }
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
