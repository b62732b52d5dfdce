//! A backlog after an outage, end to end: three `parallax region`
//! processes under a steady write load, one stopped for 20 s and let run
//! again; the backlog drains at the catch-up pace, its drain rate and ETA
//! are reported (and the ETA holds), the Replication page shows them, live
//! writes keep their latency, and nothing acknowledged is lost.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, eventually};
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use serde_json::{Value, json};

/// Entries shipped per second to a peer more than a batch behind.
const PACE: u64 = 500;
/// Writes per second into us-east throughout.
const LOAD: u64 = 200;

fn client(cluster: &Cluster, i: usize) -> RegionClient {
    RegionClient::new(REGIONS[i], &cluster.url(i)).with_tokens(TOKEN, ADMIN_TOKEN)
}

/// The p99 of some latencies.
fn p99(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty(), "no writes measured");
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// eu-west's view of its backlog from us-east: (entries, drain/s, ETA ms).
async fn backlog_into_eu(eu: &RegionClient) -> Option<(u64, Option<u64>, Option<u64>)> {
    let s = eu.stats().await.ok()?;
    let i = s.events.incoming.get("us-east")?;
    Some((i.backlog_ops, i.drain_ops_per_s, i.eta_ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_after_an_outage_drains_at_the_catch_up_pace_with_an_eta_that_holds() {
    let cluster = Cluster::with_replication(
        &format!("catchup_max_ops_per_sec = {PACE}\nbatch_max_ops = 100"),
        "[classes.settings]\nconflict = \"lww\"\n\n[classes.tickets]\nconflict = \"lww\"\ncritical = true\n\n\
         [collector]\nflush_interval_ms = 500\n",
        &[],
    );
    drill(&cluster).await;
}

/// The same on real networks: the example config (a `settings` class whose
/// primary is us-east, critical `tickets`), each region on a host of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_drain_on_real_networks() {
    let Some(net) = common::net_or_skip("backlog", &REGIONS) else {
        return;
    };
    let example = EXAMPLE.replace(
        "batch_max_ops = 1000\n",
        &format!("batch_max_ops = 100\ncatchup_max_ops_per_sec = {PACE}\n"),
    );
    assert_ne!(example, EXAMPLE, "the example's [replication] changed");
    let cluster = Cluster::from_example_in(&example, "", &net);
    drill(&cluster).await;
}

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

/// The drills run one at a time: their latencies and drain times are of
/// one cluster on the machine, not of two sharing it.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Stops eu-west for 20 s under load, lets it run again and checks the drain.
async fn drill(cluster: &Cluster) {
    let _alone = ONE_AT_A_TIME.lock().await;
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let (east, eu) = (client(cluster, 0), client(cluster, 2));

    // The load: one write every 1/LOAD s into us-east, each timed.
    let timed: Arc<Mutex<Vec<(Instant, Duration)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (east, timed, stop) = (east.clone(), Arc::clone(&timed), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / LOAD));
            let mut n = 0u64;
            let mut acknowledged = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let key = format!("k{n}");
                n += 1;
                let at = Instant::now();
                if east
                    .put("settings", &key, &json!(n), &WriteOptions::default())
                    .await
                    .is_ok()
                {
                    timed.lock().unwrap().push((at, at.elapsed()));
                    acknowledged.push(key);
                }
            }
            acknowledged
        })
    };
    let latencies = |from: Instant, to: Instant| -> Vec<Duration> {
        let t = timed.lock().unwrap();
        t.iter()
            .filter(|(at, _)| *at >= from && *at < to)
            .map(|(_, d)| *d)
            .collect()
    };

    // Before: 5 s of live writes replicating as they come.
    let before_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = p99(latencies(before_from, Instant::now()));

    // eu-west is down for 20 s while the writes go on.
    // A critical write at the end of the outage is behind the whole backlog
    // in the log.
    let frozen = cluster.freeze(2);
    tokio::time::sleep(Duration::from_secs(19)).await;
    east.put("tickets", "t-1", &json!("open"), &WriteOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    frozen.thaw();
    let back = Instant::now();

    // Critical classes first: the ticket is repaired into eu-west as soon as
    // us-east reaches it again, ahead of the backlog.
    let drain_start = std::cell::Cell::new(None::<Instant>);
    let ticket_at = eventually(
        "eu-west has the critical write",
        Duration::from_secs(40),
        || async {
            if drain_start.get().is_none()
                && backlog_into_eu(&eu).await.is_some_and(|(b, _, _)| b > 0)
            {
                drain_start.set(Some(Instant::now()));
            }
            eu.get("tickets", "t-1", &ReadOptions::default())
                .await
                .ok()
                .map(|_| Instant::now())
        },
    )
    .await;
    // The drain: its rate and ETA, two seconds in, against when it ends.
    let (eta_at, eta_ms, rate) = eventually(
        "eu-west reports the drain's rate and ETA",
        Duration::from_secs(30),
        || async {
            let (backlog, rate, eta) = backlog_into_eu(&eu).await?;
            (back.elapsed() >= Duration::from_secs(2) && backlog > 0)
                .then_some(())
                .and(eta.zip(rate))
                .map(|(eta, rate)| (Instant::now(), eta, rate))
        },
    )
    .await;
    let shown_on_page = std::cell::Cell::new(false);
    let drained_at =
        eventually("the backlog drains", Duration::from_secs(120), || async {
            if !shown_on_page.get() {
                let v: Value = reqwest::get(format!("{}/api/v1/replication?range=15m", web.url))
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                shown_on_page.set(v["data"]["pairs"].as_array()?.iter().any(|p| {
                    p["src"] == "us-east" && p["dst"] == "eu-west" && p["eta_ms"].is_i64()
                }));
            }
            let (backlog, _, _) = backlog_into_eu(&eu).await?;
            (backlog == 0).then(Instant::now)
        })
        .await;
    let during = p99(latencies(back, drained_at));
    // The drain starts when us-east reaches eu-west again (its shipper's
    // request timeout and back-off after 20 s of failures).
    let started = drain_start.get().unwrap_or(ticket_at).min(ticket_at);
    let (reconnect, drain) = (
        started.duration_since(back),
        drained_at.duration_since(started),
    );
    let ticket_after = ticket_at.duration_since(started);
    assert!(
        ticket_after * 3 < drain,
        "the critical write arrived {ticket_after:?} into the drain, which took {drain:?}"
    );
    let actual = drained_at.duration_since(eta_at);
    let predicted = Duration::from_millis(eta_ms);
    eprintln!(
        "us-east reached eu-west again {reconnect:?} after it ran again; the backlog drained in {drain:?} \
         at {rate} entries/s (the critical write {ticket_after:?} into it); the ETA 2 s in said {predicted:?}, \
         it took {actual:?}; live write p99 {before:?} before the outage, {during:?} during the drain"
    );
    let error = predicted.as_secs_f64() / actual.as_secs_f64() - 1.0;
    assert!(
        error.abs() <= 0.25,
        "ETA {predicted:?} vs {actual:?}: off by {:.0}%",
        error * 100.0
    );
    // The catch-up pace holds the drain to PACE entries a second less the load.
    assert!(
        ((PACE - LOAD) / 2..=PACE).contains(&rate),
        "drain rate {rate}/s with a pace of {PACE}/s and {LOAD}/s of load"
    );
    assert!(
        shown_on_page.get(),
        "the Replication page showed the drain's ETA"
    );
    assert!(
        during <= before * 4 + Duration::from_millis(100),
        "live p99 {during:?} during the drain against {before:?} before"
    );

    // Nothing acknowledged is lost.
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acknowledged = load.await.unwrap();
    let last = acknowledged.last().unwrap().clone();
    eventually(
        "eu-west has the last write",
        Duration::from_secs(30),
        || async {
            eu.get("settings", &last, &ReadOptions::default())
                .await
                .ok()
        },
    )
    .await;
    for key in acknowledged.iter().step_by(37) {
        eu.get("settings", key, &ReadOptions::default())
            .await
            .unwrap_or_else(|e| panic!("{key} lost in eu-west: {e}"));
    }
}
