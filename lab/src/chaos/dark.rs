//! A region goes dark under load, then comes back and drains its backlog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Chaos, Verdict, caught_up, owner_of, seen_by_others};
use crate::process::{self, RunningRegion};

impl Chaos<'_> {
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
            .declared_down(
                &self.world.routers.iter().collect::<Vec<_>>(),
                victim,
                dark,
                Duration::from_secs(15),
            )
            .await;
        self.after(
            v.detected,
            &format!("detected: a router declared {victim} down"),
        );
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
        for r in self.world.routers {
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
        self.after(v.fired, &format!("alert {rule} fired"));
        tokio::time::sleep(outage.saturating_sub(dark.elapsed())).await;

        self.mark(regions, &format!("{victim} back"));
        self.say(&format!(
            "{victim} comes back after {} s; its backlog drains",
            outage.as_secs()
        ));
        let back = Instant::now();
        let region = crate::hosts::start_region(
            self.world.hosts,
            process::Setup {
                config: Arc::clone(&self.world.config),
                region: &name,
                data_dir: self.world.data_dir,
                simulate_wan: self.world.simulate_wan,
                allow_fault_injection: true,
                clock_skew_ms: 0,
                links: Some(Arc::clone(&self.world.links)),
            },
        )
        .await?;
        regions.insert(at, (name, region));
        let node = regions[at].1.node.clone();
        let peak: u64 = seen_by_others(regions, victim)
            .iter()
            .flatten()
            .map(|p| p.backlog_ops)
            .sum();
        // One loop watches it all, so each is timed when it happens: the
        // back region's first drain estimate, its catching up (under load
        // a backlog is never quite 0: caught up is trailing every peer by
        // under a second), its clients routed back, the alert resolving.
        let (mut eta, mut drained, mut routed_back, mut resolved) = (None, None, None, None);
        let mut handed_back = None;
        let deadline = back + Duration::from_secs(300);
        while Instant::now() < deadline
            && (drained.is_none()
                || routed_back.is_none()
                || resolved.is_none()
                || handed_back.is_none())
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
            if handed_back.is_none() && owner_of(regions, victim).as_deref() == Some(victim) {
                handed_back = Some(back.elapsed());
            }
            if resolved.is_none() && !self.firing(rule, ("region", victim)).await {
                resolved = Some(back.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        v.resolved = resolved;
        v.recovered = drained
            .zip(routed_back)
            .zip(handed_back)
            .map(|((a, b), c)| a.max(b).max(c));
        if let Some(h) = handed_back {
            v.notes.push(format!(
                "its keys handed back {:.1} s after its return",
                h.as_secs_f64()
            ));
        }
        v.notes.push(format!(
            "backlog into {victim} at its return: {peak} entries"
        ));
        // Live traffic during the drain: the users' write p99 then, against
        // the 10 s before the outage.
        let before = self
            .world
            .load
            .write_p99(dark - Duration::from_secs(10), dark);
        let during = drained.and_then(|d| self.world.load.write_p99(back, back + d));
        if let (Some((b, nb)), Some((d, nd))) = (before, during) {
            v.notes.push(format!(
                "users' write p99 during the drain {:.0} ms ({nd} writes), before the outage {:.0} ms ({nb})",
                d.as_secs_f64() * 1e3,
                b.as_secs_f64() * 1e3
            ));
        }
        if drained.is_some() && eta.is_none() {
            v.notes.push(format!(
                "drain: over before {victim} published a drain rate and ETA"
            ));
        }
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
        self.after(
            v.recovered,
            "recovered: backlog drained, clients and keys back",
        );
        self.after(v.resolved, &format!("alert {rule} resolved"));
        v.require("rerouting");
        Ok(v)
    }
}
