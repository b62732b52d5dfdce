//! Stale caches of cross-region data: the change feed that keeps a
//! region's application cache fresh goes silent (its stream is held, as
//! over a partition; the application still reaches the region). The cache
//! serves from memory only while the feed was heard within `max_staleness`,
//! then reads go to the region; the staleness of what it served in between
//! is measured once the feed is back, reported to `cache_reads`, and the
//! `stale_cache_reads` alert names the cache.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::{Chaos, Verdict};
use crate::caches::DemoCaches;
use crate::process::RunningRegion;

/// How long the feed stays silent.
const SILENT_FOR: Duration = Duration::from_secs(12);

impl Chaos<'_> {
    /// Holds the feed of `region`'s cache for [`SILENT_FOR`].
    pub async fn stale_cache(
        &self,
        regions: &[(String, RunningRegion)],
        caches: &DemoCaches,
        region: &str,
        rule: &str,
    ) -> Result<Verdict> {
        let mut v = Verdict::new(&format!("{region}'s cache feed goes silent"), rule);
        let Some(cache) = caches.cache(region) else {
            v.failures.push(format!("no cache of {region}"));
            return Ok(v);
        };
        let site = DemoCaches::site(region);
        let before = cache.totals();
        self.mark(regions, &format!("{region}'s cache feed goes silent"));
        self.say(&format!(
            "the change feed to {region}'s application cache goes silent (its reads still reach {region})"
        ));
        let cut = Instant::now();
        let cut_us = self.since_us(cut);
        self.world.links.cut(&site, region);
        v.detected = self
            .wait(
                "the cache sees the feed silent",
                Duration::from_secs(15),
                || async { (!cache.is_current()).then(|| cut.elapsed()) },
            )
            .await;
        self.after(
            v.detected,
            "detected: the cache stopped trusting its silent feed",
        );
        v.mitigated = self
            .wait(
                "reads go to the region",
                Duration::from_secs(15),
                || async { (cache.totals().bypassed > before.bypassed).then(|| cut.elapsed()) },
            )
            .await;
        self.after(
            v.mitigated,
            &format!("mitigated: its reads go to {region}, not to memory,"),
        );
        tokio::time::sleep(SILENT_FOR.saturating_sub(cut.elapsed())).await;

        self.mark(regions, &format!("{region}'s cache feed back"));
        self.say(&format!("the feed to {region}'s cache is back"));
        let healed = Instant::now();
        let hits = cache.totals().hits;
        self.world.links.heal(&site, region);
        v.recovered = self
            .wait(
                "the cache serves again",
                Duration::from_secs(30),
                || async {
                    (cache.is_current() && cache.totals().hits > hits).then(|| healed.elapsed())
                },
            )
            .await;
        self.after(v.recovered, "recovered: the cache serves from memory again");
        // The staleness of the reads it served while the feed was silent
        // is known once the feed passes them, then reported.
        v.fired = self
            .wait("the alert fires", Duration::from_secs(60), || async {
                self.firing(rule, ("region", region))
                    .await
                    .then(|| cut.elapsed())
            })
            .await;
        self.after(v.fired, &format!("alert {rule} fired"));
        v.resolved = self
            .wait("the alert resolves", Duration::from_secs(90), || async {
                (!self.firing(rule, ("region", region)).await).then(|| healed.elapsed())
            })
            .await;
        self.after(v.resolved, &format!("alert {rule} resolved"));
        let after = cache.totals();
        v.notes.push(format!(
            "while silent: {} reads served stale (worst {:.0} ms behind), {} bypassed to the region",
            after.stale_hits - before.stale_hits,
            after.max_stale_us as f64 / 1_000.0,
            after.bypassed - before.bypassed
        ));
        if let Some(p99) = self.staleness_p99(region, cut_us).await {
            v.notes.push(format!(
                "cache_reads: worst staleness p99 of a window since the fault {p99:.0} ms"
            ));
        }
        v.require("reads bypassing the cache");
        Ok(v)
    }

    /// The worst `staleness_p99_ms` the caches of `region` reported since
    /// `since_us`, through the web app's SQL API.
    async fn staleness_p99(&self, region: &str, since_us: u64) -> Option<f64> {
        let sql = format!(
            "SELECT max(staleness_p99_ms) FROM cache_reads WHERE region = '{region}' \
             AND ts >= to_timestamp_micros({since_us})"
        );
        let url = format!("http://{}/api/v1/sql", self.world.web);
        let answer: Value = self
            .http
            .post(&url)
            .json(&json!({ "sql": sql }))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        answer["rows"][0][0].as_f64()
    }
}
