//! A clock jumps ahead; a critical entity is corrupted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{CAUGHT_UP_MS, Chaos, Verdict, seen_by_others};
use crate::process::RunningRegion;

impl Chaos<'_> {
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
        let region = super::region(regions, victim).context("no such region")?;
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
            self.world.config.cluster.max_clock_offset_ms
        ));
        let jump = Instant::now();
        region.clock.set_offset_ms(2_000);
        v.detected = self
            .wait(
                "an offset of about 2 s is measured",
                Duration::from_secs(30),
                || async {
                    seen_by_others(regions, victim)
                        .iter()
                        .flatten()
                        .any(|p| p.clock_offset_ms > 1_000)
                        .then(|| jump.elapsed())
                },
            )
            .await;
        self.after(
            v.detected,
            &format!("detected: {victim}'s clock measured ~2 s ahead"),
        );
        v.mitigated = self
            .wait(
                "its stamps are refused",
                Duration::from_secs(30),
                || async { (refused(regions) > before).then(|| jump.elapsed()) },
            )
            .await;
        self.after(
            v.mitigated,
            &format!("mitigated: the others refuse {victim}'s stamps from the future"),
        );
        v.fired = self
            .wait("the alert fires", Duration::from_secs(60), || async {
                self.firing(rule, ("peer", victim))
                    .await
                    .then(|| jump.elapsed())
            })
            .await;
        self.after(v.fired, &format!("alert {rule} fired"));
        self.mark(regions, &format!("{victim}'s clock mended"));
        self.say(&format!("{victim}'s clock is mended"));
        let mended = Instant::now();
        region.clock.set_offset_ms(0);
        // Its writes flow again: every other region trails it by less than
        // a second.
        v.recovered = self
            .wait("its writes flow again", Duration::from_secs(60), || async {
                seen_by_others(regions, victim)
                    .iter()
                    .all(|p| {
                        p.as_ref()
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
        self.after(v.resolved, &format!("alert {rule} resolved"));
        v.require("the guard refusing stamps");
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
        let Some(found) = crate::drill::corrupt_and_audit(&self.world.config, regions).await?
        else {
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
        self.after(v.fired, &format!("alert {rule} fired"));
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
        self.after(v.resolved, &format!("alert {rule} resolved"));
        v.require("mitigation");
        Ok(v)
    }
}
