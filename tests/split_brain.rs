//! Split-brain routing while clients hold old answers (issue 13, scenario
//! 3), on real networks: every region and the Paris router a host of its
//! own. eu-west owns the `ledger` keys `eu-*`. A client that cached the old
//! answer for a long TTL (pinned to eu-west's URL, as a cached DNS answer
//! would be) keeps writing there, and a client that follows the router
//! writes too, while eu-west is cut off from the other regions and the
//! router. The router's failover moves eu-west's keys to us-east; eu-west,
//! still reachable by the stale client, must take nothing once they can
//! have moved (its owner lease), and forwards once it is back. Checked:
//! every acknowledged write is in the final state of every region, no write
//! refused is, no write was taken by eu-west after us-east took one, the
//! example's `fenced_writes` alert fires and resolves; the figures printed.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, eventually, net_or_skip, start_router};
use parallax_core::ClientError;
use parallax_core::api::EntityOp;
use parallax_core::{ReadOptions, RegionClient, RoutedClient, WriteOptions};
use serde_json::{Value, json};

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

/// A home-owned add-wins set: each acknowledged add is a member of its own.
const LEDGER: &str = "\n[classes.ledger]\nconflict = \"orset\"\nownership = \"home\"\n\
                      home_prefixes = { \"eu-\" = \"eu-west\", \"us-\" = \"us-east\" }\n";

/// What became of one write.
#[derive(Clone, Debug)]
struct Sent {
    member: String,
    started: Instant,
    ended: Instant,
    outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Acknowledged, by this region.
    Acked(String),
    /// Refused before anything was applied (421 from a region, or no route).
    Refused(String),
    /// No answer, or an error after which it may have been applied.
    Unknown(String),
}

fn outcome(r: Result<parallax_core::protocol::WriteOutcome, ClientError>) -> Outcome {
    match r {
        Ok(w) => Outcome::Acked(w.served_by),
        Err(e) => match e.api_error() {
            Some(a) if a.status == 421 => Outcome::Refused(a.error.clone()),
            _ if e.to_string().contains("router") => Outcome::Refused(e.to_string()),
            _ => Outcome::Unknown(e.to_string()),
        },
    }
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_routes_to_a_cut_off_owner_are_fenced_and_nothing_is_taken_twice() {
    let hosts = ["us-east", "us-west", "eu-west", "r-paris"];
    let Some(net) = net_or_skip("split", &hosts) else {
        return;
    };
    let hook = common::Receiver::start().await;
    let example = EXAMPLE
        .replace("eval_interval_ms = 5000", "eval_interval_ms = 1000")
        .replace(
            "[alerts.fenced_writes]\n",
            "[alerts.fenced_writes]\nnotify = [\"hook\"]\n",
        );
    assert_ne!(
        example, EXAMPLE,
        "the example's [web] or fenced_writes rule changed"
    );
    let extra = format!(
        "{LEDGER}\n[notifiers.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url
    );
    let cluster = Cluster::from_example_in(&example, &extra, &net);
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let paris = start_router(&cluster, "paris").await;
    let region =
        |i: usize| RegionClient::new(REGIONS[i], &cluster.url(i)).with_tokens(TOKEN, ADMIN_TOKEN);
    let timeout = Duration::from_secs(3);
    // The stale client: eu-west's address, cached for as long as the drill.
    let stale = region(2).with_client_geo("paris").with_timeout(timeout);
    // The client that follows the router (answers cached for ttl_s = 1).
    let fresh = Arc::new(
        RoutedClient::new(vec![paris.url.clone()], Some("paris".into()))
            .with_tokens(TOKEN, ADMIN_TOKEN)
            .with_timeout(timeout),
    );
    eventually(
        "the router sends eu- ledger writes to eu-west",
        Duration::from_secs(10),
        || async {
            let r = get(format!(
                "{}/v1/route?from=paris&class=ledger&key=eu-stale",
                paris.url
            ))
            .await;
            (r["region"] == "eu-west").then_some(())
        },
    )
    .await;

    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let add = |who: &'static str, key: &'static str| {
        let (sent, stop, stale, fresh) = (
            Arc::clone(&sent),
            Arc::clone(&stop),
            stale.clone(),
            Arc::clone(&fresh),
        );
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let member = format!("{who}-{n}");
                let op = EntityOp::Add {
                    member: json!(member),
                };
                let started = Instant::now();
                let r = if who == "stale" {
                    stale.op("ledger", key, &op, &WriteOptions::default()).await
                } else {
                    fresh.op("ledger", key, &op, &WriteOptions::default()).await
                };
                sent.lock().unwrap().push(Sent {
                    member,
                    started,
                    ended: Instant::now(),
                    outcome: outcome(r),
                });
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let loads = [add("stale", "eu-stale"), add("fresh", "eu-fresh")];
    tokio::time::sleep(Duration::from_secs(2)).await;

    // eu-west loses the other regions and the router; the stale client
    // (the test's own host) still reaches it.
    for other in ["us-east", "us-west", "r-paris"] {
        net.cut("eu-west", other).unwrap();
    }
    let cut = Instant::now();
    let us_east = region(0);
    let (moved_at, moved_epoch) = eventually(
        "the router moves eu-west's keys",
        Duration::from_secs(30),
        || async {
            let o = us_east.ownership().await.ok()?;
            let now = &o.owners["eu-west"];
            (now.owner == "us-east").then(|| (Instant::now(), now.epoch))
        },
    )
    .await;
    // Keep the cut a little past the move, then mend every link.
    let hold = Duration::from_secs(12).saturating_sub(cut.elapsed());
    tokio::time::sleep(hold).await;
    for other in ["us-east", "us-west", "r-paris"] {
        net.heal("eu-west", other).unwrap();
    }
    let healed = Instant::now();
    // eu-west itself takes the hand-back, so it knows first.
    let eu_west = region(2);
    let handed_back = eventually(
        "the router hands eu-west's keys back",
        Duration::from_secs(30),
        || async {
            let o = eu_west.ownership().await.ok()?;
            let now = &o.owners["eu-west"];
            (now.owner == "eu-west" && now.epoch > moved_epoch).then(Instant::now)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loads {
        l.await.unwrap();
    }
    let stopped = Instant::now();
    // What the clients saw.
    let sent = sent.lock().unwrap().clone();
    let acked = |key: &str| -> BTreeSet<String> {
        sent.iter()
            .filter(|s| s.member.starts_with(key) && matches!(s.outcome, Outcome::Acked(_)))
            .map(|s| s.member.clone())
            .collect()
    };
    let refused: BTreeSet<String> = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Refused(_)))
        .map(|s| s.member.clone())
        .collect();
    let unknown = sent
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Unknown(_)))
        .count();
    let stale_sent: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.member.starts_with("stale"))
        .collect();
    let lease_refused = stale_sent
        .iter()
        .filter(|s| s.outcome == Outcome::Refused("lease_lapsed".into()))
        .count();
    let misdirected = stale_sent
        .iter()
        .filter(|s| s.outcome == Outcome::Refused("misdirected".into()))
        .count();
    let forwarded = stale_sent
        .iter()
        .filter(|s| matches!(&s.outcome, Outcome::Acked(r) if r != "eu-west"))
        .count();
    // Nothing taken by two owners: after us-east acknowledged its first
    // write of eu-west's keys, and until they were handed back, eu-west
    // took none (it may have begun one before, never after). The hand-back
    // is seen by polling eu-west every 50 ms: a margin of 200 ms.
    let first_new = sent
        .iter()
        .filter(|s| s.started >= cut && s.outcome == Outcome::Acked("us-east".into()))
        .map(|s| s.ended)
        .min()
        .expect("us-east took eu-west's keys");
    let two_owners: Vec<(String, Duration, Duration)> = sent
        .iter()
        .filter(|s| {
            s.outcome == Outcome::Acked("eu-west".into())
                && s.started > first_new
                && s.ended + Duration::from_millis(200) < handed_back
        })
        .map(|s| {
            (
                s.member.clone(),
                s.started.duration_since(cut),
                s.ended.duration_since(cut),
            )
        })
        .collect();
    assert!(
        two_owners.is_empty(),
        "eu-west took writes after us-east owned its keys (us-east's first at {:?} after the cut, \
         healed at {:?}, handed back at {:?}): {} writes, the first {:?}",
        first_new.duration_since(cut),
        healed.duration_since(cut),
        handed_back.duration_since(cut),
        two_owners.len(),
        &two_owners[..two_owners.len().min(3)]
    );
    assert!(
        lease_refused > 0,
        "the stale client met the lease ({} stale writes sent)",
        stale_sent.len()
    );
    assert!(
        forwarded > 0,
        "once back, eu-west forwarded the stale client's writes to us-east"
    );
    // The old owner stopped before the keys moved.
    let last_old = stale_sent
        .iter()
        .filter(|s| s.started >= cut && s.outcome == Outcome::Acked("eu-west".into()))
        .filter(|s| s.ended < healed)
        .map(|s| s.ended)
        .max();
    let first_fenced = stale_sent
        .iter()
        .filter(|s| s.started >= cut && matches!(s.outcome, Outcome::Refused(_)))
        .map(|s| s.ended)
        .min()
        .expect("a stale write was fenced");
    let recovered = stale_sent
        .iter()
        .filter(|s| s.started >= healed && matches!(s.outcome, Outcome::Acked(_)))
        .map(|s| s.ended)
        .min()
        .expect("the stale client's writes were taken again after the heal");

    // The alert fired while the stale writes were fenced, and resolved
    // once they stopped.
    let fired = hook
        .expect(
            &web,
            "firing",
            &[
                ("alertname", "fenced_writes"),
                ("region", "eu-west"),
                ("class", "ledger"),
                ("client_geo", "paris"),
            ],
            cut,
            Duration::from_secs(40),
        )
        .await;
    let resolved = hook
        .expect(
            &web,
            "resolved",
            &[
                ("alertname", "fenced_writes"),
                ("region", "eu-west"),
                ("class", "ledger"),
            ],
            fired.at,
            Duration::from_secs(60),
        )
        .await;

    // Every region converges on exactly the acknowledged writes (and those
    // of unknown outcome that landed), none refused.
    let converged = Instant::now();
    for key in ["eu-stale", "eu-fresh"] {
        let who = key.trim_start_matches("eu-");
        let want = acked(who);
        for (i, name) in REGIONS.iter().enumerate() {
            let c = region(i);
            let got: BTreeSet<String> = eventually(
                "every region holds every acknowledged write",
                Duration::from_secs(30),
                || async {
                    let r = c.get("ledger", key, &ReadOptions::default()).await.ok()?;
                    let got: BTreeSet<String> = r
                        .value
                        .as_array()?
                        .iter()
                        .filter_map(|m| m.as_str().map(str::to_owned))
                        .collect();
                    want.is_subset(&got).then_some(got)
                },
            )
            .await;
            let extra: Vec<&String> = got.difference(&want).collect();
            assert!(
                extra.iter().all(|m| !refused.contains(*m)),
                "{name} holds writes that were refused: {extra:?}"
            );
            assert!(
                extra.len() <= unknown,
                "{name}: {} members nobody acknowledged, only {unknown} writes of unknown outcome",
                extra.len()
            );
        }
    }
    let failovers = get(format!("{}/api/v1/failovers?range=15m", web.url)).await;
    let rows = failovers["data"]["misdirected"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let page_refused: i64 = rows
        .iter()
        .filter(|r| r["region"] == "eu-west" && r["class"] == "ledger")
        .map(|r| r["refused"].as_i64().unwrap_or(0))
        .sum();
    let page_forwarded: i64 = rows
        .iter()
        .filter(|r| r["region"] == "eu-west" && r["class"] == "ledger")
        .map(|r| r["forwarded"].as_i64().unwrap_or(0))
        .sum();
    assert!(
        page_refused > 0 && page_forwarded > 0,
        "the Failovers page counts eu-west's fenced ledger writes: {rows:?}"
    );

    eprintln!(
        "writes: {} acknowledged, {} refused, {unknown} unknown; the stale client's: {} sent, \
         {lease_refused} refused by the lease, {misdirected} refused as misdirected, {forwarded} forwarded; \
         the Failovers page: {page_refused} refused, {page_forwarded} forwarded at eu-west",
        acked("stale").len() + acked("fresh").len(),
        refused.len(),
        stale_sent.len()
    );
    eprintln!(
        "after the cut: eu-west's last write taken {:?}, first fenced {:?}, keys moved {:?}; \
         alert fired {:?} after the cut ({:?} after the first fenced write)",
        last_old.map(|t| t.saturating_duration_since(cut)),
        first_fenced.duration_since(cut),
        moved_at.duration_since(cut),
        fired.at.duration_since(cut),
        fired.at.saturating_duration_since(first_fenced),
    );
    eprintln!(
        "after the heal: stale writes taken again {:?}, keys handed back {:?}; alert resolved {:?} after \
         the load stopped; converged checked in {:?}",
        recovered.duration_since(healed),
        handed_back.duration_since(healed),
        resolved.at.saturating_duration_since(stopped),
        converged.elapsed()
    );
}
