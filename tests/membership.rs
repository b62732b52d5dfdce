//! End to end: a fourth region joins a running cluster and fills from its
//! peers, then a region leaves, as the README's "Adding and removing a
//! region" walks through: the new config everywhere, the new region
//! started, the others restarted one at a time, while a client keeps
//! writing. Regions run in this process (`parallax_lab::process`), each
//! with its own store: on loopback ports, and again each on a host of its
//! own (a network namespace with its own address, `parallax_lab::hosts`),
//! where everything between regions crosses a real network.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parallax_core::config::Config;
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use parallax_lab::hosts::{self, Hosts};
use parallax_lab::process::{RunningRegion, Setup};
use serde_json::json;

const TOKEN: &str = "member-client";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config of `regions` (name, port), anti-entropy every second.
fn config(regions: &[(&str, u16)]) -> Arc<Config> {
    let mut text = format!(
        "[cluster]\nclient_token = \"{TOKEN}\"\nadmin_token = \"member-admin\"\n\
         peer_secret = \"member-peer\"\n\n\
         [replication]\nheartbeat_interval_ms = 200\nretry_max_ms = 500\n\n\
         [anti_entropy]\ninterval_ms = 1000\n\n\
         [collector]\nflush_interval_ms = 500\n\n\
         [classes.settings]\nconflict = \"lww\"\n\n"
    );
    for (name, port) in regions {
        text.push_str(&format!(
            "[regions.{name}]\nlisten = \"127.0.0.1:{port}\"\nlocation = {{ lat = 0.0, lon = 0.0 }}\n\n"
        ));
    }
    Arc::new(Config::from_toml(&text, "membership.toml").unwrap())
}

async fn start(
    hosts: Option<&Hosts>,
    config: &Arc<Config>,
    region: &str,
    data: &Path,
) -> RunningRegion {
    hosts::start_region(
        hosts,
        Setup {
            config: Arc::clone(config),
            region,
            data_dir: &data.join(region),
            simulate_wan: false,
            allow_fault_injection: false,
            clock_skew_ms: 0,
            links: None,
        },
    )
    .await
    .unwrap()
}

fn client(config: &Config, region: &str) -> RegionClient {
    RegionClient::from_config(config, region)
        .unwrap()
        .with_timeout(Duration::from_secs(5))
}

/// Writes `settings/k<n>` for `n` in `range` through `region`.
async fn write(config: &Config, region: &str, range: std::ops::Range<u32>) {
    let c = client(config, region);
    for n in range {
        c.put(
            "settings",
            &format!("k{n}"),
            &json!({ "n": n }),
            &WriteOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("write k{n} through {region}: {e}"));
    }
}

/// Waits (30 s at most) until `region` holds `settings/k<n>` for every `n`
/// below `count`.
async fn holds_all(config: &Config, region: &str, count: u32) {
    let c = client(config, region);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut missing: Vec<u32> = (0..count).collect();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for n in missing {
            let got = c
                .get("settings", &format!("k{n}"), &ReadOptions::default())
                .await;
            if got.map_or(true, |r| r.value != json!({ "n": n })) {
                still.push(n);
            }
        }
        missing = still;
        assert!(
            missing.is_empty() || Instant::now() < deadline,
            "{region} still lacks {} keys, e.g. k{}",
            missing.len(),
            missing[0]
        );
        if !missing.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

const NAMES: [&str; 4] = ["us-east", "us-west", "eu-west", "ap-south"];

/// The config of all four regions, on loopback ports.
fn all_four() -> Arc<Config> {
    let ports: BTreeMap<&str, u16> = NAMES.iter().map(|n| (*n, free_port())).collect();
    config(&NAMES.map(|r| (r, ports[r])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_region_joins_and_fills_from_its_peers_then_one_leaves() {
    join_then_leave(None, &all_four()).await;
}

/// The same with every region a host of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_region_joins_across_hosts_then_one_leaves() {
    if let Err(e) = parallax_lab::netns::Net::available() {
        assert!(
            std::env::var_os("PARALLAX_REQUIRE_TOOLS").is_none(),
            "PARALLAX_REQUIRE_TOOLS is set: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return;
    }
    let (hosts, four) = Hosts::create(&all_four()).unwrap();
    assert!(
        four.regions.values().all(|r| !r.listen.ip().is_loopback()),
        "the regions are not on hosts of their own"
    );
    join_then_leave(Some(&hosts), &Arc::new(four)).await;
}

/// Three of `four`'s regions, then all four, then three again without
/// eu-west, with writes throughout; each region on its host of `hosts`.
async fn join_then_leave(hosts: Option<&Hosts>, four: &Arc<Config>) {
    let dir = tempfile::tempdir().unwrap();
    let names = NAMES;
    let with = |regions: &[&str]| {
        let mut c = (**four).clone();
        c.regions.retain(|r, _| regions.contains(&r.as_str()));
        Arc::new(c)
    };
    let three = with(&names[..3]);
    let mut running = BTreeMap::new();
    for r in &names[..3] {
        running.insert(*r, start(hosts, &three, r, dir.path()).await);
    }
    write(&three, "us-east", 0..100).await;
    write(&three, "eu-west", 100..200).await;

    // Add ap-south: the four-region config everywhere, ap-south started,
    // the others restarted one at a time while us-east keeps taking writes.
    let four = with(&names);
    running.insert(
        "ap-south",
        start(hosts, &four, "ap-south", dir.path()).await,
    );
    let mut next = 200;
    for r in &names[..3] {
        running.remove(r).unwrap().stop().await;
        let writer = if *r == "us-east" {
            "us-west"
        } else {
            "us-east"
        };
        write(&four, writer, next..next + 20).await;
        next += 20;
        running.insert(*r, start(hosts, &four, r, dir.path()).await);
    }
    write(&four, "ap-south", next..next + 20).await;
    next += 20;
    // It fills from its peers (what it missed by anti-entropy, what came
    // after by replication), and its own writes reach them.
    for r in names {
        holds_all(&four, r, next).await;
    }

    // Remove eu-west: stopped, the config without it everywhere, the
    // others restarted one at a time.
    running.remove("eu-west").unwrap().stop().await;
    let rest = ["us-east", "us-west", "ap-south"];
    let three_again = with(&rest);
    for r in rest {
        running.remove(r).unwrap().stop().await;
        let writer = if r == "us-east" { "us-west" } else { "us-east" };
        write(&three_again, writer, next..next + 20).await;
        next += 20;
        running.insert(r, start(hosts, &three_again, r, dir.path()).await);
    }
    for r in rest {
        holds_all(&three_again, r, next).await;
    }
    // Nobody keeps a backlog for the region that left.
    for r in rest {
        let stats = client(&three_again, r).stats().await.unwrap();
        assert!(
            !stats.replication.peers.contains_key("eu-west"),
            "{r} still ships to eu-west: {:?}",
            stats.replication.peers.keys().collect::<Vec<_>>()
        );
    }
    for (_, r) in running {
        r.stop().await;
    }
}
