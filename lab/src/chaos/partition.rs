//! A partial partition: two regions lose each other, both still reach the
//! third. Anti-entropy through the third carries their writes across (the
//! detour); the router at the one's site stops naming the other; the
//! collectors' probes show the cut pair on the overview's reachability
//! matrix and the `partition` alert names it.

use std::time::{Duration, Instant};

use anyhow::Result;
use parallax_core::config::{Ownership, Policy};
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use parallax_router::health::State;
use serde_json::{Value, json};

use super::{CAUGHT_UP_MS, Chaos, Verdict};
use crate::process::RunningRegion;

/// How long the link stays cut: the `partition` alert needs 30 s of
/// failed probes, then an evaluation.
const CUT_FOR: Duration = Duration::from_secs(45);

impl Chaos<'_> {
    /// Cuts the link `a`–`b` for [`CUT_FOR`] under the load.
    pub async fn partial_partition(
        &self,
        regions: &[(String, RunningRegion)],
        a: &str,
        b: &str,
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new(&format!("the link {a}-{b} is cut"), rule);
        let (Some(ra), Some(rb)) = (super::region(regions, a), super::region(regions, b)) else {
            v.failures.push(format!("no region {a} or {b}"));
            return Ok(v);
        };
        let via: Vec<&str> = regions
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| *n != a && *n != b)
            .collect();
        self.mark(regions, &format!("the link {a}-{b} is cut"));
        self.say(&format!(
            "the link {a}-{b} is cut; both still reach {}",
            via.join(", ")
        ));
        let cut = Instant::now();
        self.cut(a, b)?;
        let probe_failed = |from: &RunningRegion, to: &str| {
            from.collector
                .probes()
                .get(to)
                .is_some_and(|p| !p.ok && p.ts_us >= self.since_us(cut))
        };
        v.detected = self
            .wait("a probe fails", Duration::from_secs(20), || async {
                (probe_failed(ra, b) || probe_failed(rb, a)).then(|| cut.elapsed())
            })
            .await;
        self.after(v.detected, "detected: a probe across the cut failed");
        // Mitigated: both sides pull through the detour, and the router at
        // a's site (if any) no longer names b.
        let detouring = |r: &RunningRegion, other: &str| {
            r.node
                .stats()
                .anti_entropy
                .detour
                .is_some_and(|d| d.cut.iter().any(|c| c == other))
        };
        let site_router = self.world.routers.iter().find(|r| r.router.location() == a);
        v.mitigated = self
            .wait("the detour is taken", Duration::from_secs(30), || async {
                let routed_around = site_router.is_none_or(|r| {
                    r.router
                        .health()
                        .get(b)
                        .is_some_and(|h| h.state == State::Down)
                });
                (detouring(ra, b) && detouring(rb, a) && routed_around).then(|| cut.elapsed())
            })
            .await;
        self.after(
            v.mitigated,
            &format!(
                "mitigated: {a} and {b} replicate through {} and the {a} router stops naming {b},",
                via.join(", ")
            ),
        );
        // The lag through the detour: writes on either side, read on the other.
        let lags = self.detour_lags(a, b).await;
        if !lags.is_empty() {
            let ms: Vec<String> = lags
                .iter()
                .map(|l| format!("{:.2}", l.as_secs_f64()))
                .collect();
            v.notes
                .push(format!("lag through the detour: {} s", ms.join(", ")));
            self.say(&format!("writes crossed the cut in {} s", ms.join(", ")));
        }
        v.fired = self
            .wait(
                "the alert fires",
                CUT_FOR.saturating_sub(cut.elapsed()) + Duration::from_secs(30),
                || async { self.pair_firing(rule, a, b).await.then(|| cut.elapsed()) },
            )
            .await;
        self.after(v.fired, &format!("alert {rule} fired"));
        self.check_reachability(&mut v, a, b).await;
        tokio::time::sleep(CUT_FOR.saturating_sub(cut.elapsed())).await;

        self.mark(regions, &format!("the link {a}-{b} mended"));
        self.say(&format!("the link {a}-{b} is mended"));
        let healed = Instant::now();
        self.heal(a, b)?;
        v.recovered = self
            .wait("the detour ends", Duration::from_secs(60), || async {
                let direct = |r: &RunningRegion, other: &str| {
                    let s = r.node.stats();
                    s.anti_entropy.detour.is_none()
                        && s.replication
                            .peers
                            .get(other)
                            .and_then(|p| p.lag_from_ms)
                            .is_some_and(|l| l < CAUGHT_UP_MS)
                };
                let named_again = site_router.is_none_or(|r| {
                    r.router
                        .health()
                        .get(b)
                        .is_some_and(|h| h.state == State::Up)
                });
                (direct(ra, b) && direct(rb, a) && named_again).then(|| healed.elapsed())
            })
            .await;
        self.after(
            v.recovered,
            "recovered: direct replication and routing again",
        );
        v.resolved = self
            .wait("the alert resolves", Duration::from_secs(90), || async {
                (!self.pair_firing(rule, a, b).await).then(|| healed.elapsed())
            })
            .await;
        self.after(v.resolved, &format!("alert {rule} resolved"));
        v.require("the detour");
        if lags.len() < 2 {
            v.failures
                .push("writes did not cross the cut both ways within 15 s".into());
        }
        Ok(v)
    }

    /// Whether an alert of `rule` is firing for the pair `a`–`b`, from
    /// either side (labels `vantage` and `target`).
    async fn pair_firing(&self, rule: &str, a: &str, b: &str) -> bool {
        self.alerts(rule).await.iter().any(|(state, l)| {
            let pair = (
                l.get("vantage").map(String::as_str),
                l.get("target").map(String::as_str),
            );
            state == "firing" && (pair == (Some(a), Some(b)) || pair == (Some(b), Some(a)))
        })
    }

    /// Writes a key in `a` and reads it in `b`, then the reverse: how long
    /// each took to cross (only those that crossed within 15 s).
    async fn detour_lags(&self, a: &str, b: &str) -> Vec<Duration> {
        let Some(class) = self.world.config.classes.iter().find_map(|(n, c)| {
            (c.conflict == Policy::Lww && c.ownership == Ownership::Global && !n.starts_with('_'))
                .then(|| n.clone())
        }) else {
            return Vec::new();
        };
        let client = |r: &str| RegionClient::from_config(&self.world.config, r);
        let mut lags = Vec::new();
        for (n, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            let (Some(from), Some(to)) = (client(from), client(to)) else {
                continue;
            };
            let key = format!("chaos-detour-{n}-{}", self.since_us(Instant::now()));
            let written = Instant::now();
            let value = json!({"written_in": from.region()});
            if from
                .put(&class, &key, &value, &WriteOptions::default())
                .await
                .is_err()
            {
                continue;
            }
            let arrived = self
                .wait("the write crosses", Duration::from_secs(15), || async {
                    to.get(&class, &key, &ReadOptions::default())
                        .await
                        .ok()
                        .filter(|r| r.value != Value::Null)
                        .map(|_| written.elapsed())
                })
                .await;
            lags.extend(arrived);
        }
        lags
    }

    /// The overview's reachability matrix shows the cut pair failing and
    /// each side reaching the third.
    async fn check_reachability(&self, v: &mut Verdict, a: &str, b: &str) {
        let url = format!("http://{}/api/v1/overview?range=15m", self.world.web);
        let Ok(r) = self.http.get(&url).send().await else {
            v.failures.push("the overview did not answer".into());
            return;
        };
        let overview: Value = r.json().await.unwrap_or(Value::Null);
        let reach = &overview["data"]["reachability"];
        let names: Vec<&str> = reach["regions"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let at = |n: &str| names.iter().position(|x| *x == n);
        let failed = |x: &str, y: &str| {
            at(x)
                .zip(at(y))
                .and_then(|(i, j)| reach["failed_pct"][i][j].as_f64())
        };
        match (failed(a, b), failed(b, a)) {
            (Some(x), Some(y)) if x > 0.0 && y > 0.0 => v.notes.push(format!(
                "reachability matrix (15 min): {a}->{b} {x:.0} % failed, {b}->{a} {y:.0} % failed"
            )),
            other => v.failures.push(format!(
                "the overview's reachability matrix does not show the cut pair failing: {other:?}"
            )),
        }
    }
}
