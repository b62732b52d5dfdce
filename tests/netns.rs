//! Drills on real networks: every region and router its own host (a
//! network namespace with its own address, [`parallax_lab::netns`]), links
//! between two hosts cut while both still reach the others. Needs root,
//! `ip` and `nft`: skipped loudly without them, failed under
//! `PARALLAX_REQUIRE_TOOLS=1` (CI).

mod common;

use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Cluster, REGIONS, TOKEN, eventually, net_or_skip, start_router};
use parallax_core::RegionClient;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

async fn get(url: String) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

async fn route(router: &str, query: &str) -> Value {
    get(format!("{router}/v1/route?{query}")).await
}

async fn regions(router: &str) -> Value {
    get(format!("{router}/v1/regions")).await
}

/// One drill at a time: on two cores, the demo's load beside another
/// drill's regions can hold a probe past its 2 s timeout, and a probe of a
/// healthy link that fails is exactly what these drills must not see.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_cut_off_from_one_location_is_routed_around_there_only() {
    let _one = ONE_AT_A_TIME.lock().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_between_two_regions_is_bridged_through_the_third_and_alerted() {
    use parallax_core::{ReadOptions, WriteOptions};
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(net) = net_or_skip("detour", &REGIONS) else {
        return;
    };
    let hook = common::Receiver::start().await;
    let extra = format!(
        "\n[alerts.cut]\nkind = \"partition\"\nnotify = [\"hook\"]\n\n\
         [notifiers.hook]\nkind = \"webhook\"\nurl = \"{}\"\n",
        hook.url
    );
    let cluster = Cluster::from_example_in(EXAMPLE, &extra, &net);
    for i in 0..REGIONS.len() {
        cluster.wait_ready(i).await;
    }
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let region =
        |i: usize| RegionClient::new(REGIONS[i], &cluster.url(i)).with_tokens(TOKEN, ADMIN_TOKEN);
    let (east, eu) = (region(0), region(2));
    let write = |c: &RegionClient, key: &str| {
        let (c, key) = (c.clone(), key.to_owned());
        async move {
            c.put(
                "tickets",
                &key,
                &serde_json::json!({"by": c.region()}),
                &WriteOptions::default(),
            )
            .await
            .unwrap();
        }
    };
    let has = |c: &RegionClient, key: &str| {
        let (c, key) = (c.clone(), key.to_owned());
        async move {
            c.get("tickets", &key, &ReadOptions::default())
                .await
                .is_ok()
        }
    };
    write(&east, "before").await;
    eventually(
        "eu-west has a write made before the cut",
        Duration::from_secs(10),
        || async { has(&eu, "before").await.then_some(()) },
    )
    .await;

    // us-east and eu-west lose each other; both still reach us-west.
    net.cut("us-east", "eu-west").unwrap();
    let cut = Instant::now();
    let detour = eventually(
        "us-east takes the detour",
        Duration::from_secs(15),
        || async {
            let s = east.stats().await.ok()?;
            s.anti_entropy.detour.filter(|d| !d.cut.is_empty())
        },
    )
    .await;
    assert_eq!(
        (detour.cut.as_slice(), detour.via.as_slice()),
        (&["eu-west".to_owned()][..], &["us-west".to_owned()][..])
    );
    let detour_after = cut.elapsed();
    // Writes on either side reach the other through us-west.
    let mut lags = Vec::new();
    for (n, (from, to)) in [(&east, &eu), (&eu, &east), (&east, &eu)]
        .into_iter()
        .enumerate()
    {
        let key = format!("during-{n}");
        let written = Instant::now();
        write(from, &key).await;
        eventually(
            "a write crosses the cut through us-west",
            Duration::from_secs(15),
            || async { has(to, &key).await.then_some(()) },
        )
        .await;
        lags.push(written.elapsed());
    }
    eprintln!("detour from {detour_after:?} after the cut; lag through it: {lags:?}");

    // The cut is named: the partition alert for the pair, the reachability matrix.
    let fired = hook
        .expect(
            &web,
            "firing",
            &[
                ("alertname", "cut"),
                ("vantage", "us-east"),
                ("target", "eu-west"),
            ],
            cut,
            Duration::from_secs(70),
        )
        .await;
    eprintln!(
        "partition alert fired {:?} after the cut",
        fired.at.duration_since(cut)
    );
    // Each side's probes (every 5 s) cross the cut on their own schedule:
    // the heatmap shows the pair once both have mostly failed.
    let failed_pct = |reach: &Value, vantage: &str, target: &str| {
        let names: Vec<&str> = reach["regions"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let at = |name: &str| names.iter().position(|n| *n == name);
        reach["failed_pct"][at(vantage)?][at(target)?].as_f64()
    };
    let reach = eventually(
        "the heatmap shows the cut pair from both sides",
        Duration::from_secs(20),
        || async {
            let overview = get(format!("{}/api/v1/overview?range=15m", web.url)).await;
            let reach = overview["data"]["reachability"].clone();
            (failed_pct(&reach, "us-east", "eu-west") > Some(50.0)
                && failed_pct(&reach, "eu-west", "us-east") > Some(50.0))
            .then_some(reach)
        },
    )
    .await;
    let names: Vec<&str> = reach["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let at = |name: &str| names.iter().position(|n| *n == name).unwrap();
    let failed =
        |vantage: &str, target: &str| reach["failed_pct"][at(vantage)][at(target)].as_f64();
    // The links around the cut are not shown cut (one probe late on a
    // busy machine is a probe failed, not a link down).
    for (vantage, target) in [
        ("us-east", "us-west"),
        ("eu-west", "us-west"),
        ("us-west", "eu-west"),
    ] {
        let pct = failed(vantage, target).expect("a cell for every pair");
        assert!(pct < 50.0, "{vantage} reaches {target}: {reach}");
    }

    // Mended: the alert resolves, the detour ends, nothing was lost.
    net.heal("us-east", "eu-west").unwrap();
    let healed = Instant::now();
    let resolved = hook
        .expect(
            &web,
            "resolved",
            &[
                ("alertname", "cut"),
                ("vantage", "us-east"),
                ("target", "eu-west"),
            ],
            healed,
            Duration::from_secs(40),
        )
        .await;
    eprintln!(
        "resolved {:?} after the link came back",
        resolved.at.duration_since(healed)
    );
    eventually("the detour ends", Duration::from_secs(15), || async {
        east.stats()
            .await
            .ok()?
            .anti_entropy
            .detour
            .is_none()
            .then_some(())
    })
    .await;
    for key in ["before", "during-0", "during-1", "during-2"] {
        for c in [&east, &region(1), &eu] {
            assert!(has(c, key).await, "{key} in {}", c.region());
        }
    }
}

/// `parallax demo --netns`: every region and router on a host of its own,
/// the users' load through the routers across the bridge, converged at the
/// end, and the namespaces gone after.
#[test]
fn the_demo_runs_its_regions_and_routers_on_hosts_of_their_own() {
    let _one = ONE_AT_A_TIME.blocking_lock();
    if let Err(e) = parallax_lab::netns::Net::available() {
        common::missing_tool(&format!("{e}"));
        return;
    }
    let child = std::process::Command::new(common::binary())
        .args(["demo", "--netns", "--duration", "5", "--rate", "100"])
        .args(["--no-web", "--seed", "7"])
        .env("PARALLAX_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Regions and routers listen on the hosts' addresses, not loopback.
    for name in ["region us-east", "region eu-west", "router paris"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no `{name}` line: {stdout}"));
        assert!(line.contains("http://10.213."), "{line}");
    }
    assert!(
        stdout.contains("converged: every region holds identical data"),
        "{stdout}"
    );
    let ok: u64 = stdout
        .split("Load: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        ok > 100,
        "the users' operations crossed the bridge: {stdout}"
    );
    let left = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let left = String::from_utf8_lossy(&left.stdout);
    assert!(
        !left.contains(&format!("px-demo{pid}-")),
        "the demo left namespaces behind: {left}"
    );
}
