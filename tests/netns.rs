//! Drills on real networks: every region and router its own host (a
//! network namespace with its own address, [`parallax_lab::netns`]), links
//! between two hosts cut while both still reach the others. Needs root,
//! `ip` and `nft`: skipped loudly without them, failed under
//! `PARALLAX_REQUIRE_TOOLS=1` (CI).

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, Net, REGIONS, TOKEN, eventually, start_router};
use parallax_core::RegionClient;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

/// The hosts, or `None` (and a loud SKIPPED) where this machine cannot
/// make them; under `PARALLAX_REQUIRE_TOOLS` that fails instead.
fn net_or_skip(tag: &str, hosts: &[&str]) -> Option<Net> {
    if let Err(e) = Net::available() {
        assert!(
            std::env::var_os("PARALLAX_REQUIRE_TOOLS").is_none(),
            "PARALLAX_REQUIRE_TOOLS is set: {e}"
        );
        eprintln!("SKIPPED: {e}");
        return None;
    }
    Some(Net::create(tag, hosts).unwrap())
}

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn route(router: &str, query: &str) -> Value {
    get(format!("{router}/v1/route?{query}")).await
}

async fn regions(router: &str) -> Value {
    get(format!("{router}/v1/regions")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_one_location_is_routed_around_there_only() {
    let hosts = ["us-east", "us-west", "eu-west", "r-paris", "r-us-west"];
    let Some(net) = net_or_skip("vantage", &hosts) else {
        return;
    };
    let cluster = Cluster::from_example_in(EXAMPLE, "", &net);
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let paris = start_router(&cluster, "paris").await;
    let west = start_router(&cluster, "us-west").await;
    let for_paris = "from=paris";
    for r in [&paris.url, &west.url] {
        eventually(
            "both routers send Paris to eu-west",
            Duration::from_secs(10),
            || async { (route(r, for_paris).await["region"] == "eu-west").then_some(()) },
        )
        .await;
    }

    // Paris's router loses eu-west; everyone else still reaches it.
    net.cut("r-paris", "eu-west").unwrap();
    let cut = Instant::now();
    eventually(
        "paris sends Paris around eu-west",
        Duration::from_secs(5),
        || async { (route(&paris.url, for_paris).await["region"] == "us-east").then_some(()) },
    )
    .await;
    let rerouted = cut.elapsed();
    // Past the failover grace: the us-west router still answers eu-west for
    // the same clients, and eu-west keeps its keys, as the regions reach it.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let answer = route(&west.url, for_paris).await;
    assert_eq!(answer["region"], "eu-west", "{answer}");
    let seen = regions(&west.url).await;
    assert_eq!(seen["regions"]["eu-west"]["state"], "up", "{seen}");
    let seen = regions(&paris.url).await;
    assert_eq!(seen["regions"]["eu-west"]["state"], "down", "{seen}");
    let us_east = RegionClient::new("us-east", &cluster.url(0)).with_tokens(TOKEN, ADMIN_TOKEN);
    let ownership = us_east.ownership().await.unwrap();
    assert_eq!(
        ownership.owners["eu-west"].owner, "eu-west",
        "a region others reach keeps its keys: {ownership:?}"
    );

    // Mended: Paris goes back to eu-west, and the failover ends with nothing moved.
    net.heal("r-paris", "eu-west").unwrap();
    eventually(
        "paris sends Paris to eu-west again",
        Duration::from_secs(10),
        || async { (route(&paris.url, for_paris).await["region"] == "eu-west").then_some(()) },
    )
    .await;
    let ended = eventually(
        "paris's failover of eu-west ends",
        Duration::from_secs(10),
        || async {
            let seen = regions(&paris.url).await;
            seen["failovers"]
                .as_array()?
                .iter()
                .find(|f| f["region"] == "eu-west" && f["phase"] == "done")
                .cloned()
        },
    )
    .await;
    assert!(ended["delegate"].is_null(), "nothing moved: {ended}");
    eprintln!("paris rerouted around the cut link after {rerouted:?}");
}
