//! Split-brain routing: a region is cut off from the other regions and
//! from the routers elsewhere, while a client holding an old answer (a
//! cached route, a pinned URL) still reaches it and keeps writing keys it
//! owns. The routers move its keys to another region; its owner lease
//! lapses first, so it refuses those writes (421) rather than take them
//! beside the new owner; mended, it forwards them and gets its keys back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use parallax_core::config::{Config, Ownership};
use parallax_core::{ReadOptions, RegionClient, RoutedClient, WriteOptions};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{Chaos, Verdict, caught_up};
use crate::process::RunningRegion;

/// The longest the cut is held: until the alert fires and then
/// [`HOLD_AFTER`], at most this.
const CUT_AT_MOST: Duration = Duration::from_secs(45);

/// How long the cut is held once the alert has fired.
const HOLD_AFTER: Duration = Duration::from_secs(5);

/// The region split-brain routing is played on: the home of a prefix of a
/// home-owned class, the last such in the config's order of regions.
pub(super) fn victim(config: &Config) -> Option<String> {
    config
        .regions
        .keys()
        .rev()
        .find(|r| home_prefix(config, r).is_some())
        .cloned()
}

/// A home-owned class and a key prefix whose home is `region`.
fn home_prefix(config: &Config, region: &str) -> Option<(String, String)> {
    config.classes.iter().find_map(|(name, c)| {
        (c.ownership == Ownership::Home && !name.starts_with('_'))
            .then(|| {
                c.home_prefixes
                    .iter()
                    .find(|(_, home)| *home == region)
                    .map(|(p, _)| (name.clone(), p.clone()))
            })
            .flatten()
    })
}

/// What became of one write.
#[derive(Clone, Debug)]
struct Sent {
    started: Instant,
    ended: Instant,
    /// Acknowledged by this region.
    acked_by: Option<String>,
    /// Refused before anything was applied (421).
    fenced: bool,
    /// Why it failed otherwise: the status, or what happened to the call.
    failed: Option<String>,
}

/// How many keys each writer cycles through.
const KEYS: u64 = 4;

/// A writer of the drill: a client holding the old answer, or one
/// following its router's answers.
enum Writer {
    Stale(RegionClient),
    Routed(RoutedClient),
}

impl Writer {
    /// Writes `value` to `class`/`key`: the region that acknowledged it,
    /// or the status (if any) and the error.
    async fn put(
        &self,
        class: &str,
        key: &str,
        value: &Value,
    ) -> Result<String, (Option<u16>, String)> {
        let opts = WriteOptions::default();
        let r = match self {
            Writer::Stale(c) => c.put(class, key, value, &opts).await,
            Writer::Routed(c) => c.put(class, key, value, &opts).await,
        };
        r.map(|w| w.served_by)
            .map_err(|e| (e.api_error().map(|a| a.status), format!("{e:#}")))
    }
}

/// The end of the first write another region acknowledged after `cut`,
/// and how many writes `victim` acknowledged between that and the start of
/// the last one another region acknowledged (two owners at once).
fn two_owners(victim: &str, cut: Instant, all: &[&Sent]) -> (Option<Instant>, usize) {
    let elsewhere: Vec<&&Sent> = all
        .iter()
        .filter(|s| s.started >= cut && s.acked_by.as_deref().is_some_and(|r| r != victim))
        .collect();
    let first = elsewhere.iter().map(|s| s.ended).min();
    let last = elsewhere.iter().map(|s| s.started).max();
    let twice = first.zip(last).map_or(0, |(first, last)| {
        all.iter()
            .filter(|s| {
                s.started > first && s.ended < last && s.acked_by.as_deref() == Some(victim)
            })
            .count()
    });
    (first, twice)
}

/// Writes `{prefix}chaos-<n % KEYS>` of `class` every 100 ms until `stop`.
async fn writer(
    client: Writer,
    class: String,
    prefix: String,
    by: &'static str,
    sent: Arc<Mutex<Vec<Sent>>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        n += 1;
        let key = format!("{prefix}chaos-{}", n % KEYS);
        let started = Instant::now();
        let r = client
            .put(&class, &key, &json!({"cents": n, "by": by}))
            .await;
        let s = Sent {
            started,
            ended: Instant::now(),
            acked_by: r.as_ref().ok().cloned(),
            fenced: matches!(r, Err((Some(421), _))),
            failed: match r {
                Err((Some(421), _)) | Ok(_) => None,
                // Manual policy: a key with siblings takes no write until
                // a person resolves it.
                Err((Some(409), _)) => Some("409 (its siblings wait for a person)".into()),
                Err((Some(code), _)) => Some(code.to_string()),
                Err((None, e)) if e.contains("timed out") => Some("timed out".into()),
                Err((None, _)) => Some("no answer".into()),
            },
        };
        sent.lock().expect("sent").push(s);
    }
}

impl Chaos<'_> {
    /// Cuts `victim` off from the other regions and routers until the
    /// alert fires (at most [`CUT_AT_MOST`]) under the stale client's writes.
    pub async fn split_brain(
        &self,
        regions: &[(String, RunningRegion)],
        victim: &str,
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new(&format!("split-brain routing at {victim}"), rule);
        let Some((class, prefix)) = home_prefix(&self.world.config, victim) else {
            v.failures
                .push(format!("no home-owned key prefix of {victim}"));
            return Ok(v);
        };
        let Some(region) = super::region(regions, victim) else {
            v.failures.push(format!("no region {victim}"));
            return Ok(v);
        };
        if self
            .wait("its keys are home", Duration::from_secs(30), || async {
                (super::owner_of(regions, victim).as_deref() == Some(victim)).then_some(())
            })
            .await
            .is_none()
        {
            v.failures
                .push(format!("{victim}'s keys were not its own before the drill"));
            return Ok(v);
        }
        let far_routers: Vec<_> = self
            .world
            .routers
            .iter()
            .filter(|r| r.router.location() != victim)
            .collect();
        let Some(follower) = far_routers
            .iter()
            .find(|r| !self.world.config.regions.contains_key(r.router.location()))
            .or(far_routers.first())
        else {
            v.failures.push("no router away from the region".into());
            return Ok(v);
        };
        let tokens = (
            self.world.config.cluster.client_token.clone(),
            self.world.config.cluster.admin_token.clone(),
        );
        // The stale client: it resolved the region before the cut and keeps
        // its answer; it stands where the following client's router is.
        let stale = RegionClient::from_config(&self.world.config, victim)
            .map(|c| {
                c.with_timeout(Duration::from_secs(2))
                    .with_client_geo(follower.router.location())
            })
            .ok_or_else(|| anyhow::anyhow!("no URL for {victim}"))?;
        let routed = RoutedClient::new(vec![format!("http://{}", follower.addr)], None)
            .with_tokens(&tokens.0, &tokens.1)
            .with_timeout(Duration::from_secs(2));
        let (stop, stopped) = watch::channel(false);
        let (stale_sent, routed_sent) = (Arc::default(), Arc::default());
        let stale_task = tokio::spawn(writer(
            Writer::Stale(stale),
            class.clone(),
            prefix.clone(),
            "stale",
            Arc::clone(&stale_sent),
            stopped.clone(),
        ));
        let routed_task = tokio::spawn(writer(
            Writer::Routed(routed),
            class.clone(),
            prefix.clone(),
            "routed",
            Arc::clone(&routed_sent),
            stopped,
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Every other region, and the routers away from its site.
        let mut others: Vec<String> = self
            .world
            .config
            .regions
            .keys()
            .filter(|n| *n != victim)
            .cloned()
            .collect();
        for r in &far_routers {
            let location = r.router.location().to_owned();
            if !others.contains(&location) {
                others.push(location);
            }
        }
        self.mark(
            regions,
            &format!("{victim} cut off; a stale client still writes there"),
        );
        self.say(&format!(
            "{victim} is cut off from {}; a client holding an old answer keeps writing its {class} keys {prefix}* there",
            others.join(", ")
        ));
        let cut = Instant::now();
        for o in &others {
            self.cut(victim, o)?;
        }
        v.detected = self
            .declared_down(&far_routers, victim, cut, Duration::from_secs(15))
            .await;
        self.after(
            v.detected,
            &format!("detected: a router declared {victim} down"),
        );
        // Moved: the regions it is cut off from agree another owns its keys.
        let moved = || {
            let owners: Vec<String> = regions
                .iter()
                .filter(|(n, _)| n != victim)
                .map(|(_, r)| r.node.ownership().effective(victim).0)
                .collect();
            owners
                .first()
                .filter(|o| o.as_str() != victim && owners.iter().all(|x| x == *o))
                .cloned()
        };
        let delegate = self
            .wait("its keys move", Duration::from_secs(30), || async {
                moved().map(|d| (d, cut.elapsed()))
            })
            .await;
        v.mitigated = delegate.as_ref().map(|(_, at)| *at);
        if let Some((d, at)) = &delegate {
            self.say(&format!(
                "mitigated: the routers moved {victim}'s keys to {d} after {:.1} s; {victim}'s lease has lapsed",
                at.as_secs_f64()
            ));
        }
        v.fired = self
            .wait(
                "the alert fires",
                CUT_AT_MOST.saturating_sub(cut.elapsed()),
                || async {
                    self.firing(rule, ("region", victim))
                        .await
                        .then(|| cut.elapsed())
                },
            )
            .await;
        self.after(v.fired, &format!("alert {rule} fired"));
        // The stale client meets the fenced old owner a while longer.
        tokio::time::sleep(HOLD_AFTER.min(CUT_AT_MOST.saturating_sub(cut.elapsed()))).await;

        self.mark(regions, &format!("{victim} reconnected"));
        self.say(&format!("{victim} is reconnected"));
        let healed = Instant::now();
        for o in &others {
            self.heal(victim, o)?;
        }
        v.recovered = self
            .wait("its keys come back", Duration::from_secs(60), || async {
                let home = super::owner_of(regions, victim).as_deref() == Some(victim);
                (home && caught_up(&region.node.stats())).then(|| healed.elapsed())
            })
            .await;
        self.after(
            v.recovered,
            &format!("recovered: {victim} has its keys back and has caught up"),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.send_replace(true);
        let _ = tokio::join!(stale_task, routed_task);
        let stopped_at = Instant::now();
        v.resolved = self
            .wait("the alert resolves", Duration::from_secs(60), || async {
                (!self.firing(rule, ("region", victim)).await).then(|| stopped_at.elapsed())
            })
            .await;
        if let Some(r) = v.resolved {
            self.say(&format!(
                "alert {rule} resolved {:.1} s after the stale client stopped",
                r.as_secs_f64()
            ));
        }

        let stale_sent = stale_sent.lock().expect("sent").clone();
        let routed_sent = routed_sent.lock().expect("sent").clone();
        self.judge(&mut v, victim, cut, &stale_sent, &routed_sent);
        self.converged_keys(&mut v, &class, &prefix).await;
        v.require("the keys moving");
        Ok(v)
    }

    /// Nothing taken by two owners: while another region took `victim`'s
    /// keys (after its first acknowledgment after the cut, until its last
    /// write began) `victim` acknowledged none; the figures as notes. The
    /// window is what the clients saw acknowledged, not when the drill
    /// noticed the keys home: the victim takes writes again as soon as they
    /// are handed back, which a poll sees a little later.
    fn judge(&self, v: &mut Verdict, victim: &str, cut: Instant, stale: &[Sent], routed: &[Sent]) {
        let all: Vec<&Sent> = stale.iter().chain(routed).collect();
        let (first_elsewhere, twice) = two_owners(victim, cut, &all);
        // The last write the cut-off region took before its lease lapsed.
        let last_by_victim = stale
            .iter()
            .filter(|s| {
                s.started >= cut
                    && first_elsewhere.is_none_or(|t| s.ended < t)
                    && s.acked_by.as_deref() == Some(victim)
            })
            .map(|s| s.ended.duration_since(cut))
            .max();
        let fenced = stale.iter().filter(|s| s.fenced).count();
        let forwarded = stale
            .iter()
            .filter(|s| s.acked_by.as_deref().is_some_and(|r| r != victim))
            .count();
        let mut why: BTreeMap<&str, usize> = BTreeMap::new();
        for f in stale.iter().filter_map(|s| s.failed.as_deref()) {
            *why.entry(f).or_default() += 1;
        }
        let reasons: Vec<String> = why.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        v.notes.push(format!(
            "stale client: {} writes, {fenced} fenced (421), {forwarded} forwarded to the owner, {} failed \
             otherwise{}, last taken by {victim} {}",
            stale.len(),
            why.values().sum::<usize>(),
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join(", "))
            },
            last_by_victim.map_or("before the cut".to_owned(), |d| format!(
                "{:.1} s after the cut",
                d.as_secs_f64()
            ))
        ));
        v.notes.push(format!(
            "routed client: {} writes, {} acknowledged",
            routed.len(),
            routed.iter().filter(|s| s.acked_by.is_some()).count()
        ));
        if fenced == 0 {
            v.failures.push(format!("{victim} fenced no stale write"));
        }
        if twice > 0 {
            v.failures.push(format!(
                "{twice} writes taken by {victim} after another region took one (two owners)"
            ));
        }
    }

    /// Every region holds the same value and siblings of every key written.
    /// Siblings are expected: what the cut-off region took before its lease
    /// lapsed never reached the new owner before it took over, so the two
    /// are concurrent versions, kept for a person to reconcile (none lost).
    async fn converged_keys(&self, v: &mut Verdict, class: &str, prefix: &str) {
        let clients: Vec<RegionClient> = self
            .world
            .config
            .regions
            .keys()
            .filter_map(|r| RegionClient::from_config(&self.world.config, r))
            .collect();
        let mut with_siblings = 0;
        for n in 0..KEYS {
            let key = format!("{prefix}chaos-{n}");
            let same = self
                .wait("the key converges", Duration::from_secs(20), || async {
                    let mut seen = Vec::new();
                    for c in &clients {
                        let r = c.get(class, &key, &ReadOptions::default()).await.ok()?;
                        let mut siblings: Vec<String> =
                            r.siblings.iter().map(|s| s.value.to_string()).collect();
                        siblings.sort();
                        seen.push((r.value, siblings));
                    }
                    seen.windows(2)
                        .all(|w| w[0] == w[1])
                        .then(|| !seen[0].1.is_empty())
                })
                .await;
            match same {
                Some(siblings) => with_siblings += usize::from(siblings),
                None => v
                    .failures
                    .push(format!("{class}/{key} differs between regions")),
            }
        }
        v.notes.push(format!(
            "{class} keys written: {KEYS}, the same in every region; {with_siblings} hold siblings for a person \
             (the old owner's last writes before its lease lapsed, concurrent with the new owner's)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(by: &str, cut: Instant, from_ms: u64, to_ms: u64) -> Sent {
        Sent {
            started: cut + Duration::from_millis(from_ms),
            ended: cut + Duration::from_millis(to_ms),
            acked_by: Some(by.into()),
            fenced: false,
            failed: None,
        }
    }

    #[test]
    fn the_victim_taking_writes_while_another_region_does_is_two_owners_but_not_after() {
        let cut = Instant::now();
        // us-west before the move, us-east holding the keys, then us-west
        // again once they are handed back.
        let before = acked("us-west", cut, 10, 20);
        let east = [
            acked("us-east", cut, 100, 110),
            acked("us-east", cut, 300, 310),
        ];
        let back = acked("us-west", cut, 320, 330);
        let all = [&before, &east[0], &east[1], &back];
        assert_eq!(two_owners("us-west", cut, &all).1, 0);
        // us-west taking one while us-east still does.
        let during = acked("us-west", cut, 200, 210);
        let all = [&before, &east[0], &during, &east[1], &back];
        assert_eq!(two_owners("us-west", cut, &all).1, 1);
    }
}
