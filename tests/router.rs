//! `parallax router` end to end: three `parallax region` processes from
//! the example config, routers at two locations, a region frozen with
//! SIGSTOP and thawed again.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, RouterProcess, eventually, start_router};
use serde_json::Value;

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

async fn get(url: &str) -> (u16, Value, Option<String>) {
    let r = reqwest::get(url).await.unwrap();
    let status = r.status().as_u16();
    let cache = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap(), cache)
}

/// Asks `router` until `pred` holds of an answer; returns how long it took.
async fn until(
    router: &RouterProcess,
    query: &str,
    within: Duration,
    pred: impl Fn(u16, &Value) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let (status, body, _) = get(&format!("{}/v1/route?{query}", router.url)).await;
        if pred(status, &body) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "after {within:?}, /v1/route?{query} still answers {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `router` sees every region up.
async fn all_up(router: &RouterProcess) {
    until(router, "", Duration::from_secs(10), |_, b| {
        b["candidates"]
            .as_array()
            .is_some_and(|c| c.iter().all(|c| c["state"] == "up"))
    })
    .await;
}

fn region(body: &Value) -> &str {
    body["region"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_send_each_location_to_its_nearest_healthy_region_and_around_a_frozen_one() {
    let cluster = Cluster::from_example(EXAMPLE, "");
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let paris = start_router(&cluster, "paris").await;
    let west = start_router(&cluster, "us-west").await;
    // Every region up from both places.
    for r in [&paris, &west] {
        all_up(r).await;
    }
    let (status, body, cache) = get(&format!("{}/v1/route", paris.url)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(region(&body), "eu-west", "Paris is nearest Dublin: {body}");
    assert_eq!(body["url"], cluster.url(2));
    assert_eq!(body["ttl_s"], 1);
    assert_eq!(cache.as_deref(), Some("max-age=1"));
    let (_, body, _) = get(&format!("{}/v1/route", west.url)).await;
    assert_eq!(region(&body), "us-west", "{body}");
    // Any router answers for any location, by the latency table or by
    // distance from a point (Tokyo is nearest Oregon, Madrid Dublin).
    let (_, body, _) = get(&format!("{}/v1/route?from=us-east", west.url)).await;
    assert_eq!(region(&body), "us-east", "{body}");
    let (_, body, _) = get(&format!("{}/v1/route?from=35.7,139.7", paris.url)).await;
    assert_eq!(region(&body), "us-west", "{body}");
    let (_, body, _) = get(&format!("{}/v1/route?from=40.4,-3.7", west.url)).await;
    assert_eq!(region(&body), "eu-west", "{body}");
    // A write to a home-owned key goes to its owner, wherever the client is.
    let (_, body, _) = get(&format!("{}/v1/route?class=balances&key=us-7", paris.url)).await;
    assert_eq!(
        (region(&body), body["owner"].as_str()),
        ("us-east", Some("us-east")),
        "{body}"
    );
    let (_, body, _) = get(&format!(
        "{}/v1/route?class=balances&key=us-7&op=read",
        paris.url
    ))
    .await;
    assert_eq!(region(&body), "eu-west", "reads are served nearest: {body}");

    // Freeze eu-west: both routers stop naming it.
    let frozen = cluster.freeze(2);
    let rerouted = until(&paris, "", Duration::from_secs(10), |s, b| {
        s == 200 && region(b) != "eu-west"
    })
    .await;
    let (_, body, _) = get(&format!("{}/v1/route", paris.url)).await;
    assert_eq!(
        region(&body),
        "us-east",
        "the next nearest from Paris: {body}"
    );
    until(&west, "from=paris", Duration::from_secs(10), |s, b| {
        s == 200 && region(b) == "us-east"
    })
    .await;
    // A write that only eu-west may take has no region while it is down.
    let (status, body, _) = get(&format!("{}/v1/route?class=balances&key=eu-1", paris.url)).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("`eu-west` must take this request"),
        "{body}"
    );
    let (_, regions, _) = get(&format!("{}/v1/regions", paris.url)).await;
    assert_eq!(regions["regions"]["eu-west"]["state"], "down", "{regions}");
    assert!(
        regions["regions"]["eu-west"]["last_error"].is_string(),
        "{regions}"
    );
    let metrics = text(&format!("{}/metrics", paris.url)).await;
    assert!(
        metrics.contains("parallax_router_region_up{region=\"eu-west\",router=\"paris\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "parallax_router_transitions_total{region=\"eu-west\",router=\"paris\",to=\"down\"} 1"
        ),
        "{metrics}"
    );
    println!("paris rerouted away from a frozen eu-west in {rerouted:?}");

    // Thaw: eu-west comes back after `up_after` good checks.
    frozen.thaw();
    let back = until(&paris, "", Duration::from_secs(10), |s, b| {
        s == 200 && region(b) == "eu-west"
    })
    .await;
    println!("paris routed to eu-west again {back:?} after it thawed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_reason_and_the_router_keeps_serving() {
    let cluster = Cluster::from_example(EXAMPLE, "");
    let paris = start_router(&cluster, "paris").await;
    for (query, status, says) in [
        (
            "from=tokyo",
            400,
            "not a known location (known: eu-west, paris, us-east, us-west)",
        ),
        ("from=91,10", 400, "off the globe"),
        ("from=12,east", 400, "longitude `east` is not a number"),
        ("class=nope&key=k", 404, "class `nope` is not declared"),
        ("class=balances", 400, "class, key and op go together"),
        (
            "class=balances&key=k&op=frob",
            400,
            "`frob` is not an operation",
        ),
        ("colour=blue", 400, "unknown field `colour`"),
    ] {
        let (s, body, _) = get(&format!("{}/v1/route?{query}", paris.url)).await;
        assert_eq!(s, status, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or("");
        assert!(detail.contains(says), "{query}: {body}");
        assert!(detail.contains("Fix"), "{query}: {body}");
    }
    let (s, _, _) = get(&format!("{}/v1/nothing", paris.url)).await;
    assert_eq!(s, 404);
    let ok = reqwest::get(format!("{}/healthz", paris.url))
        .await
        .unwrap();
    assert!(ok.status().is_success());
}

#[test]
fn a_router_refuses_to_start_without_a_place_or_regions() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str, args: &[&str]| {
        let path = dir.path().join("p.toml");
        std::fs::write(&path, config).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_parallax"))
            .args(["router", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(EXAMPLE, &["--location", "tokyo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("location `tokyo` is neither") && err.contains("paris"),
        "{err}"
    );
    let (code, err) = run(EXAMPLE, &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("pass --location"), "{err}");
    let cluster = "[cluster]\nclient_token = \"c\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n";
    let (code, err) = run(cluster, &["--location", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("missing field `regions`"), "{err}");
    let (code, err) = run(&format!("{cluster}[regions]\n"), &["--location", "x"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("`regions` is empty. Fix: declare"), "{err}");
    let bad = EXAMPLE.replace("down_after = 3", "down_after = 0");
    let (code, err) = run(&bad, &["--location", "paris"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("down_after and up_after must be at least 1"),
        "{err}"
    );
}

async fn text(url: &str) -> String {
    reqwest::get(url).await.unwrap().text().await.unwrap()
}

async fn json(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_fail_a_killed_region_over_once_and_hand_it_back_measured() {
    use parallax_core::{ReadOptions, RegionClient, WriteOptions};
    let mut cluster = Cluster::from_example(EXAMPLE, "");
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i)).collect();
    let client = |i: usize| {
        RegionClient::new(common::REGIONS[i], &urls[i])
            .with_tokens(common::TOKEN, common::ADMIN_TOKEN)
    };
    let paris = start_router(&cluster, "paris").await;
    let west = start_router(&cluster, "us-west").await;
    for r in [&paris, &west] {
        all_up(r).await;
    }
    let put = WriteOptions::default();
    client(2)
        .put("balances", "eu-1", &serde_json::json!({"cents": 100}), &put)
        .await
        .unwrap();

    // The write has reached us-east (else the write us-east takes below
    // would be concurrent with it: siblings, by the manual policy).
    eventually(
        "eu-1 replicates to us-east",
        Duration::from_secs(10),
        || async {
            let r = client(0)
                .get("balances", "eu-1", &ReadOptions::default())
                .await
                .ok()?;
            (r.value == serde_json::json!({"cents": 100})).then_some(())
        },
    )
    .await;

    // kill -9 eu-west: both routers declare it down, and its keys move to
    // the region nearest it (us-east) once, under epoch 1.
    cluster.kill9(2);
    let killed = Instant::now();
    let ownership = |i: usize| {
        let c = client(i);
        async move { c.ownership().await.ok() }
    };
    let moved = eventually(
        "eu-west's keys move to us-east",
        Duration::from_secs(20),
        || async {
            let o = ownership(0).await?;
            let d = o.delegations.get("eu-west")?;
            (d.delegate == "us-east").then_some(d.epoch)
        },
    )
    .await;
    let moved_after = killed.elapsed();
    assert_eq!(moved, 1, "one move, not one per router");
    // Both routers see the move; one made it, the other saw it made.
    let mut by = Vec::new();
    for r in [&paris, &west] {
        let f = eventually(
            "the router records the move",
            Duration::from_secs(10),
            || async {
                let v = json(&format!("{}/v1/regions", r.url)).await;
                let f = v["failovers"]
                    .as_array()?
                    .iter()
                    .find(|f| f["region"] == "eu-west" && f["phase"] == "moved")?
                    .clone();
                Some(f)
            },
        )
        .await;
        assert_eq!(f["delegate"], "us-east", "{f}");
        assert_eq!(f["epoch"], 1, "{f}");
        by.push(f["moved_by"].as_str().unwrap().to_owned());
    }
    by.sort();
    assert_eq!(
        by,
        ["another router", "this router"],
        "exactly one router moved"
    );
    // Writes to eu-west's keys are routed to us-east and taken there.
    let (status, route, _) = get(&format!("{}/v1/route?class=balances&key=eu-1", paris.url)).await;
    assert_eq!((status, region(&route)), (200, "us-east"), "{route}");
    client(0)
        .put("balances", "eu-1", &serde_json::json!({"cents": 250}), &put)
        .await
        .unwrap();

    // eu-west restarts: once it has caught up, its keys are handed back
    // (epoch 2) and the write taken at us-east is there.
    cluster.spawn(2);
    cluster.wait_ready(2).await;
    eventually(
        "eu-west's keys are handed back",
        Duration::from_secs(30),
        || async {
            let o = ownership(0).await?;
            let d = o.delegations.get("eu-west")?;
            (d.delegate == "eu-west" && d.epoch == 2).then_some(())
        },
    )
    .await;
    let read = client(2)
        .get("balances", "eu-1", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(
        read.value,
        serde_json::json!({"cents": 250}),
        "nothing acknowledged lost"
    );
    eventually(
        "writes to eu-1 go to eu-west again",
        Duration::from_secs(10),
        || async {
            let (_, route, _) =
                get(&format!("{}/v1/route?class=balances&key=eu-1", paris.url)).await;
            (region(&route) == "eu-west").then_some(())
        },
    )
    .await;

    // The rows reach Parquet through the regions' collectors, and the
    // Failovers page shows the times the router measured.
    let web = common::Web::start(&cluster.config, &cluster.data_dir());
    let f = eventually(
        "the failovers page shows paris's failover, done",
        Duration::from_secs(30),
        || async {
            let v = json(&format!("{}/api/v1/failovers?range=1h", web.url)).await;
            v["data"]["failovers"]
                .as_array()?
                .iter()
                .find(|f| {
                    f["router"] == "paris" && f["failed"] == "eu-west" && f["phase"] == "done"
                })
                .cloned()
        },
    )
    .await;
    // The hand-back was made by the delegate holding the keys (us-east):
    // it stopped taking their writes as it recorded the move, and the move
    // reached eu-west behind every write us-east took for them.
    eventually(
        "the hand-back recorded by us-east",
        Duration::from_secs(30),
        || async {
            let v = json(&format!("{}/api/v1/failovers?range=1h", web.url)).await;
            v["data"]["events"]
                .as_array()?
                .iter()
                .any(|e| {
                    e["region"] == "us-east"
                        && e["event"] == "ownership eu-west -> eu-west (epoch 2)"
                })
                .then_some(())
        },
    )
    .await;
    let ms = |k: &str| f[k].as_i64().unwrap_or_else(|| panic!("{k} measured: {f}"));
    let (detected, rerouted, moved_ms, back, handed) = (
        ms("detected_ms"),
        ms("rerouted_ms"),
        ms("moved_ms"),
        ms("back_ms"),
        ms("handed_back_ms"),
    );
    assert!(detected > 0 && detected <= rerouted, "{f}");
    assert!(
        moved_ms >= detected && back > moved_ms && handed >= back,
        "{f}"
    );
    let html = text(&format!("{}/failovers?range=1h", web.url)).await;
    for cell in [detected, rerouted, moved_ms, back, handed] {
        assert!(
            html.contains(&format!("<td class=\"num\">{cell}</td>")),
            "the page shows the measured {cell} ms"
        );
    }
    assert!(
        html.contains("<td class=\"\">us-east (1)</td>"),
        "the delegate and epoch"
    );
    let metrics = text(&format!("{}/metrics", paris.url)).await;
    assert!(
        metrics.contains("parallax_router_failovers_total{region=\"eu-west\",router=\"paris\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "parallax_router_reroute_seconds_count{region=\"eu-west\",router=\"paris\"} 1"
        ),
        "{metrics}"
    );
    println!(
        "kill -9 eu-west: keys at us-east {moved_after:?} after the kill; paris measured detection {detected} ms, \
         reroute {rerouted} ms, keys moved {moved_ms} ms, back {back} ms, handed back {handed} ms after its first failed check"
    );
}

/// What `dig` got: the status, the answer records as `(name, ttl, type,
/// data)`, and whether the authority section held the zone's SOA.
struct Dug {
    status: String,
    answers: Vec<(String, u32, String, String)>,
    soa_in_authority: bool,
}

fn dig(port: u16, args: &[&str]) -> Option<Dug> {
    let Ok(out) = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+time=2", "+tries=1"])
        .args(args)
        .output()
    else {
        common::missing_tool("dig (Debian bind9-dnsutils) is not installed");
        return None;
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or_else(|| panic!("no status in dig's output: {text}"))
        .to_owned();
    let mut section = "";
    let mut answers = Vec::new();
    let mut soa_in_authority = false;
    for line in text.lines() {
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.is_empty() || line.starts_with(";;") {
            section = "";
        } else if !line.starts_with(';') {
            let f: Vec<&str> = line.split_whitespace().collect();
            if section == "answer" && f.len() >= 5 {
                answers.push((
                    f[0].to_owned(),
                    f[1].parse().unwrap(),
                    f[3].to_owned(),
                    f[4].to_owned(),
                ));
            }
            if section == "authority" && f.get(3) == Some(&"SOA") {
                soa_in_authority = true;
            }
        }
    }
    Some(Dug {
        status,
        answers,
        soa_in_authority,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_answers_what_http_does_to_dig_and_to_a_rust_resolver() {
    // Each region on its own loopback address, so answers tell them apart.
    let cluster = Cluster::from_example_on(EXAMPLE, "", ["127.0.2.1", "127.0.2.2", "127.0.2.3"]);
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let paris = start_router(&cluster, "paris").await;
    let port = cluster.router_dns_ports["paris"];
    all_up(&paris).await;
    let zone = "db.parallax.test";
    let Some(d) = dig(port, &[zone, "A"]) else {
        return;
    };
    assert_eq!(d.status, "NOERROR");
    assert_eq!(
        d.answers,
        [(
            format!("{zone}."),
            1,
            "A".to_owned(),
            "127.0.2.3".to_owned()
        )],
        "Paris's nearest region, eu-west, with the TTL of the config"
    );
    // Over TCP too, and by location name.
    let d = dig(port, &["+tcp", &format!("us-west.{zone}"), "A"]).unwrap();
    assert_eq!(d.answers[0].3, "127.0.2.2");
    // A client subnet of us-west's clients asking Paris's router.
    let d = dig(port, &["+subnet=198.51.100.7/32", zone, "A"]).unwrap();
    assert_eq!(
        d.answers[0].3, "127.0.2.2",
        "EDNS Client Subnet places the client"
    );
    let d = dig(port, &["+subnet=203.0.113.0/24", zone, "A"]).unwrap();
    assert_eq!(
        d.answers[0].3, "127.0.2.3",
        "an unknown subnet: the router's own location"
    );
    // What a real server answers to the rest.
    let d = dig(port, &[&format!("nowhere.{zone}"), "A"]).unwrap();
    assert_eq!((d.status.as_str(), d.soa_in_authority), ("NXDOMAIN", true));
    let d = dig(port, &["example.com", "A"]).unwrap();
    assert_eq!(d.status, "REFUSED");
    let d = dig(port, &[zone, "MX"]).unwrap();
    assert_eq!(
        (d.status.as_str(), d.answers.len(), d.soa_in_authority),
        ("NOERROR", 0, true)
    );
    let d = dig(port, &[zone, "AAAA"]).unwrap();
    assert_eq!(
        (d.status.as_str(), d.answers.len()),
        ("NOERROR", 0),
        "the regions have IPv4 addresses"
    );
    let d = dig(port, &[zone, "SOA"]).unwrap();
    assert_eq!(d.answers[0].2, "SOA");

    // A Rust resolver library agrees.
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;
    let mut server = NameServerConfig::udp_and_tcp("127.0.0.1".parse().unwrap());
    for c in &mut server.connections {
        c.port = port;
    }
    let mut config = ResolverConfig::default();
    config.add_name_server(server);
    let resolver =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .unwrap();
    let ips: Vec<std::net::IpAddr> = resolver
        .lookup_ip(format!("{zone}."))
        .await
        .unwrap()
        .iter()
        .collect();
    assert_eq!(ips, ["127.0.2.3".parse::<std::net::IpAddr>().unwrap()]);

    // Freeze eu-west: DNS moves with HTTP.
    let frozen = cluster.freeze(2);
    let start = Instant::now();
    loop {
        let d = dig(port, &[zone, "A"]).unwrap();
        if d.answers.first().is_some_and(|a| a.3 == "127.0.2.1") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "DNS still answers eu-west"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    frozen.thaw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_following_the_router_move_on_and_never_repeat_an_increment() {
    use parallax_core::api::EntityOp;
    use parallax_core::{ClientError, ReadOptions, RoutedClient, WriteOptions};
    let cluster = Cluster::from_example(EXAMPLE, "");
    for i in 0..3 {
        cluster.wait_ready(i).await;
    }
    let paris = start_router(&cluster, "paris").await;
    all_up(&paris).await;
    let client = RoutedClient::new(vec![paris.url.clone()], None)
        .with_tokens(common::TOKEN, common::ADMIN_TOKEN)
        .with_timeout(Duration::from_millis(600));
    let w = WriteOptions::default();
    let first = client
        .put("profiles", "p1", &serde_json::json!({"name": "v1"}), &w)
        .await
        .unwrap();
    assert_eq!(first.served_by, "eu-west", "Paris's nearest");
    let incr = EntityOp::Incr { by: 1 };
    client.op("likes", "post-1", &incr, &w).await.unwrap();

    // eu-west stops answering. The routes cached for 1 s still name it.
    let frozen = cluster.freeze(2);
    // An increment sent there is not repeated: indeterminate.
    let e = client.op("likes", "post-1", &incr, &w).await.unwrap_err();
    assert!(
        matches!(e, ClientError::Indeterminate { ref region, .. } if region == "eu-west"),
        "{e}"
    );
    assert!(e.to_string().contains("not safe to repeat"), "{e}");
    // A PUT is idempotent: it moves on to the next region at once.
    let second = client
        .put("profiles", "p1", &serde_json::json!({"name": "v2"}), &w)
        .await
        .unwrap();
    assert_eq!(second.served_by, "us-east", "the next region up");
    let read = client
        .get("profiles", "p1", &ReadOptions::default())
        .await
        .unwrap();
    assert_eq!(read.value, serde_json::json!({"name": "v2"}));

    // The CLI follows the router too, and an increment's outcome shows in
    // its exit code: 0 once the router has moved on.
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_parallax"))
            .args(args)
            .args(["--config"])
            .arg(&cluster.config)
            .args(["--router", &paris.url])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    until(&paris, "", Duration::from_secs(10), |s, b| {
        s == 200 && region(b) != "eu-west"
    })
    .await;
    let (code, out, err) = run(&["incr", "likes", "post-1", "2"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"served_by\": \"us-east\""), "{out}");
    let (code, out, err) = run(&["get", "profiles", "p1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("\"v2\""), "{out}");
    frozen.thaw();
}
