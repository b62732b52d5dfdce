//! The demo's application caches: one [`FeedCache`] per region, kept by
//! that region's change feed, read by a client that checks every answer
//! against what the feed delivered and reports its windows to the region
//! (`cache_reads`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parallax_core::RegionClient;
use parallax_core::cache::{CacheSettings, FeedCache, Totals};
use parallax_core::config::Config;
use parallax_core::links::Links;
use parallax_core::version::Causality;
use tokio::task::JoinSet;

use crate::process::RunningRegion;

/// How often each cache reports its window to its region.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// The keys the demo's caches read: those the load writes.
fn keys(class: &str) -> Option<(&'static str, u64)> {
    match class {
        "likes" => Some(("post-", 20)),
        "carts" => Some(("cart-", 30)),
        "settings" => Some(("flag-", 5)),
        "stock" => Some(("sku-", 10)),
        _ => None,
    }
}

/// The caches, their readers and reporters.
pub struct DemoCaches {
    caches: Vec<(String, Arc<FeedCache>, RegionClient)>,
    tasks: JoinSet<()>,
    older: Arc<AtomicU64>,
}

impl std::fmt::Debug for DemoCaches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoCaches").finish()
    }
}

/// What one region's cache did, at the end.
#[derive(Clone, Debug)]
pub struct CacheSummary {
    /// The region whose feed kept it.
    pub region: String,
    /// Its counters.
    pub totals: Totals,
}

impl DemoCaches {
    /// Starts a cache of every region, read `reads_per_sec` times a second
    /// each; each cache's feed crosses the link from [`DemoCaches::site`]
    /// to its region in `links`.
    pub fn start(
        config: &Config,
        regions: &[(String, RunningRegion)],
        reads_per_sec: u64,
        links: Option<Arc<Links>>,
    ) -> DemoCaches {
        let classes: Vec<(String, &'static str, u64)> = config
            .classes
            .keys()
            .filter_map(|c| keys(c).map(|(p, n)| (c.clone(), p, n)))
            .collect();
        let older = Arc::new(AtomicU64::new(0));
        let mut tasks = JoinSet::new();
        let mut caches = Vec::new();
        for (i, (name, r)) in regions.iter().enumerate() {
            let client = RegionClient::new(name, &format!("http://{}", r.addr))
                .with_tokens(&config.cluster.client_token, &config.cluster.admin_token)
                .with_timeout(Duration::from_secs(2));
            let settings = CacheSettings {
                links: links
                    .as_ref()
                    .map(|l| (Arc::clone(l), DemoCaches::site(name))),
                ..CacheSettings::default()
            };
            let cache = Arc::new(FeedCache::start(client.clone(), settings));
            caches.push((name.clone(), Arc::clone(&cache), client.clone()));
            if classes.is_empty() {
                continue;
            }
            let (classes, older) = (classes.clone(), Arc::clone(&older));
            let every = Duration::from_secs_f64(1.0 / reads_per_sec.max(1) as f64);
            let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ (i as u64 + 1);
            let reader = Arc::clone(&cache);
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let (class, prefix, n) = &classes[(seed % classes.len() as u64) as usize];
                    let key = format!("{prefix}{}", (seed >> 8) % n);
                    let delivered = reader.delivered(class, &key);
                    if let Ok(got) = reader.get(class, &key).await
                        && let Some(d) = delivered
                        && matches!(
                            d.version.compare(&got.version),
                            Causality::After | Causality::Concurrent
                        )
                    {
                        older.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
            let location = config
                .regions
                .get(name)
                .map(|_| name.clone())
                .unwrap_or_default();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(REPORT_EVERY);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let report = cache.report("demo", &location);
                    let _ = client.report_cache(&report).await;
                }
            });
        }
        DemoCaches {
            caches,
            tasks,
            older,
        }
    }

    /// The site of `region`'s application and its cache: a name for the
    /// links a drill cuts.
    pub fn site(region: &str) -> String {
        format!("{region}-app")
    }

    /// The cache kept by `region`'s feed.
    pub fn cache(&self, region: &str) -> Option<&Arc<FeedCache>> {
        self.caches
            .iter()
            .find(|(r, _, _)| r == region)
            .map(|(_, c, _)| c)
    }

    /// Stops the readers, sends the last reports, stops the caches; what
    /// each did, and how many reads served a version older than one its
    /// feed had delivered (must be 0).
    pub async fn stop(mut self) -> (Vec<CacheSummary>, u64) {
        self.tasks.shutdown().await;
        // Let the feed pass the last reads so they are settled.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut out = Vec::new();
        for (region, cache, client) in &self.caches {
            let _ = client.report_cache(&cache.report("demo", region)).await;
            cache.stop().await;
            out.push(CacheSummary {
                region: region.clone(),
                totals: cache.totals(),
            });
        }
        (out, self.older.load(Ordering::Relaxed))
    }
}

/// Prints the caches' figures.
pub fn print(summaries: &[CacheSummary], older: u64) {
    println!("\nCaches kept by each region's change feed (one client per region):");
    println!(
        "  {:<10} {:>8} {:>7} {:>9} {:>12} {:>14}",
        "region", "reads", "hit %", "bypassed", "stale reads", "max stale ms"
    );
    for s in summaries {
        let t = &s.totals;
        let hit = if t.reads > 0 {
            100.0 * t.hits as f64 / t.reads as f64
        } else {
            0.0
        };
        println!(
            "  {:<10} {:>8} {:>7.1} {:>9} {:>12} {:>14.1}",
            s.region,
            t.reads,
            hit,
            t.bypassed,
            t.stale_hits,
            t.max_stale_us as f64 / 1_000.0
        );
    }
    println!(
        "  reads that served a version older than one the feed had delivered: {older} (must be 0); \
         staleness percentiles are in the cache_reads table and on the Replication page"
    );
}
