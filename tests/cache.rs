//! Scenario 4 of the failure drills, stale caches of cross-region data, on
//! hosts of their own (network namespaces): a client cache kept by
//! eu-west's change feed while writes are made in us-east.
//!
//! 1. Healthy: every write made in us-east reaches the cache through
//!    replication and the feed; after the feed delivers a version no read
//!    from the cache serves an older one.
//! 2. The path from eu-west to the client goes silent (the client's packets
//!    still arrive, the answers do not: a half-open connection) while writes
//!    go on: the cache serves from memory — stale — only until the feed has
//!    been silent for `max_staleness`, then sends reads to the region.
//! 3. Mended: the stream resumes from its position, the stale reads are
//!    settled and reported; the row lands in Parquet, the Replication page
//!    shows it, the alert reaches a webhook and resolves once the reports
//!    are fresh again. Nothing acknowledged is lost; every region converges.

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, eventually, net_or_skip};
use parallax_core::cache::{CacheSettings, FeedCache};
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use serde_json::Value;

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

const MAX_STALENESS: Duration = Duration::from_secs(3);

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// Increments `likes/k` in us-east every 20 ms for `d`; the increments
/// acknowledged and those sent.
async fn write_for(east: &RegionClient, d: Duration) -> (u64, u64) {
    let until = Instant::now() + d;
    let (mut acked, mut sent) = (0, 0);
    while Instant::now() < until {
        let op = parallax_core::api::EntityOp::Incr { by: 1 };
        sent += 1;
        if east
            .op("likes", "k", &op, &WriteOptions::default())
            .await
            .is_ok()
        {
            acked += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (acked, sent)
}

/// Whether `v` holds every acknowledged increment and none never sent.
fn holds(v: u64, (acked, sent): (u64, u64)) -> bool {
    v >= acked && v <= sent
}

fn add(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 + b.0, a.1 + b.1)
}

/// Reads `likes/k` through the cache until `until`, checking after every
/// read that it is not older than what the feed delivered before it.
/// Returns (reads, errors, the instant of the last read served from
/// memory).
async fn read_until(cache: &FeedCache, until: Instant) -> (u64, u64, Option<Instant>) {
    let (mut reads, mut errors, mut last_hit) = (0, 0, None);
    while Instant::now() < until {
        let delivered = cache.delivered("likes", "k").and_then(|c| c.value.as_u64());
        let hits = cache.totals().hits;
        match cache.get("likes", "k").await {
            Ok(r) => {
                let v = r.value.as_u64().unwrap_or(0);
                if let Some(d) = delivered {
                    assert!(v >= d, "the cache served {v} after its feed delivered {d}");
                }
                if cache.totals().hits > hits {
                    last_hit = Some(Instant::now());
                }
            }
            Err(_) => errors += 1,
        }
        reads += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (reads, errors, last_hit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_on_the_change_feed_stays_fresh_and_its_staleness_is_measured_and_alerted() {
    let Some(net) = net_or_skip("cache", &REGIONS) else {
        return;
    };
    let hook = common::Receiver::start().await;
    let extra = format!(
        "\n[alerts.stale_cache]\nkind = \"sql\"\nnotify = [\"hook\"]\n\
         sql = \"SELECT region, client FROM cache_reads WHERE ts > now() - INTERVAL '15 seconds' \
         AND staleness_p99_ms > 1000 GROUP BY region, client\"\n\n\
         [notifiers.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url
    );
    let cluster = Cluster::from_example_in(EXAMPLE, &extra, &net);
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let region = |i: usize| {
        RegionClient::new(REGIONS[i], &cluster.url(i))
            .with_tokens(TOKEN, ADMIN_TOKEN)
            .with_timeout(Duration::from_secs(1))
    };
    let (east, eu) = (region(0), region(2));
    let cache = FeedCache::start(
        eu.clone(),
        CacheSettings {
            ttl: Duration::from_secs(60),
            max_staleness: MAX_STALENESS,
            capacity: 1000,
            links: None,
        },
    );
    eventually(
        "the cache's feed is current",
        Duration::from_secs(10),
        || async { cache.is_current().then_some(()) },
    )
    .await;

    // 1. Healthy: writes in us-east, reads of the cache in eu-west.
    let first = write_for(&east, Duration::from_millis(1)).await;
    eventually(
        "the first write reaches eu-west",
        Duration::from_secs(10),
        || async { cache.get("likes", "k").await.ok().map(|_| ()) },
    )
    .await;
    let writer = {
        let east = east.clone();
        tokio::spawn(async move { write_for(&east, Duration::from_secs(4)).await })
    };
    let (reads, errors, _) = read_until(&cache, Instant::now() + Duration::from_secs(4)).await;
    let mut acked = add(first, writer.await.unwrap());
    assert_eq!(errors, 0, "reads failed while healthy");
    let served = eventually(
        "the cache serves the last write",
        Duration::from_secs(10),
        || async {
            let v = cache.get("likes", "k").await.ok()?.value.as_u64()?;
            holds(v, acked).then_some(v)
        },
    )
    .await;
    let healthy = cache.totals();
    assert!(healthy.hits > reads / 2, "{healthy:?}");
    assert!(healthy.invalidations > 50, "{healthy:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = cache.report("drill", "caller");
    eu.report_cache(&before).await.unwrap();
    eprintln!(
        "healthy: {reads} reads, {acked:?} writes (acknowledged, sent), served {served}; staleness p50 {:?} p99 {:?} max {:?} ms; {healthy:?}",
        before.staleness_p50_ms, before.staleness_p99_ms, before.staleness_max_ms
    );

    // 2. eu-west's answers to the client are dropped; writes go on.
    net.cut_from_caller("eu-west").unwrap();
    let cut = Instant::now();
    let writer = {
        let east = east.clone();
        tokio::spawn(async move { write_for(&east, Duration::from_secs(7)).await })
    };
    let (reads, errors, last_hit) = read_until(&cache, cut + Duration::from_secs(7)).await;
    acked = add(acked, writer.await.unwrap());
    let last_hit = last_hit.expect("reads served from memory after the cut");
    let hits_for = last_hit.duration_since(cut);
    assert!(
        hits_for <= MAX_STALENESS + Duration::from_millis(700),
        "the cache served from memory {hits_for:?} after its feed went silent"
    );
    assert!(!cache.is_current());
    assert!(
        errors > 0,
        "reads past max_staleness go to the (unreachable) region"
    );
    eprintln!(
        "silent feed: served from memory for {hits_for:?} after the cut, then {errors} of {reads} reads failed at the region"
    );

    // 3. Mended: the stream resumes from its position; the stale reads are
    // settled, reported and alerted.
    net.heal_from_caller("eu-west").unwrap();
    let healed = Instant::now();
    eventually("the cache catches up", Duration::from_secs(20), || async {
        let v = cache.get("likes", "k").await.ok()?.value.as_u64()?;
        (cache.is_current() && holds(v, acked)).then_some(())
    })
    .await;
    let resumed = healed.elapsed();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stalled = cache.report("drill", "caller");
    let t = cache.totals();
    eprintln!(
        "after the silence: resumed {resumed:?} after the heal; window {stalled:?}; totals {t:?}"
    );
    assert_eq!(t.resets, 0, "the feed kept the position: {t:?}");
    assert!(stalled.stale_hits > 0, "{stalled:?}");
    let max = stalled.staleness_max_ms.unwrap();
    assert!(
        max <= (MAX_STALENESS + Duration::from_millis(700)).as_millis() as f64,
        "a cached read was stale by {max} ms, past max_staleness"
    );
    assert!(stalled.staleness_p99_ms.unwrap() > 1000.0, "{stalled:?}");
    eu.report_cache(&stalled).await.unwrap();
    let reported = Instant::now();
    let fired = hook
        .expect(
            &web,
            "firing",
            &[
                ("alertname", "stale_cache"),
                ("region", "eu-west"),
                ("client", "drill"),
            ],
            reported,
            Duration::from_secs(40),
        )
        .await;
    eprintln!(
        "stale_cache alert fired {:?} after the report",
        fired.at.duration_since(reported)
    );
    let page = get(format!("{}/api/v1/replication?range=15m", web.url)).await;
    let row = page["data"]["caches"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["region"] == "eu-west" && c["client"] == "drill")
        .cloned()
        .unwrap_or_else(|| panic!("no cache row on the Replication page: {page}"));
    assert!(
        row["stale_hits"].as_i64().unwrap() >= stalled.stale_hits as i64,
        "{row}"
    );
    assert!(row["staleness_p99_ms"].as_f64().unwrap() > 1000.0, "{row}");

    // Fresh reports resolve it.
    let fresh_from = Instant::now();
    let resolved = loop {
        let writer = {
            let east = east.clone();
            tokio::spawn(async move { write_for(&east, Duration::from_secs(2)).await })
        };
        read_until(&cache, Instant::now() + Duration::from_secs(2)).await;
        acked = add(acked, writer.await.unwrap());
        tokio::time::sleep(Duration::from_millis(600)).await;
        let r = cache.report("drill", "caller");
        assert!(r.staleness_p99_ms.unwrap_or(0.0) < 1000.0, "{r:?}");
        eu.report_cache(&r).await.unwrap();
        let n = hook.notices().into_iter().find(|n| {
            n.at >= fresh_from
                && n.status == "resolved"
                && n.labels.get("alertname").map(String::as_str) == Some("stale_cache")
        });
        if let Some(n) = n {
            break n;
        }
        assert!(
            fresh_from.elapsed() < Duration::from_secs(60),
            "the stale_cache alert never resolved"
        );
    };
    eprintln!(
        "resolved {:?} after fresh reports began",
        resolved.at.duration_since(fresh_from)
    );
    cache.stop().await;

    // Nothing acknowledged is lost; every region converges.
    for i in 0..REGIONS.len() {
        let c = region(i);
        eventually(
            "every region has every acknowledged increment",
            Duration::from_secs(20),
            || async {
                let v = c
                    .get("likes", "k", &ReadOptions::default())
                    .await
                    .ok()?
                    .value
                    .as_u64()?;
                holds(v, acked).then_some(())
            },
        )
        .await;
    }
    let _ = fired;
}
