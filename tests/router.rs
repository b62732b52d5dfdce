//! `parallax router` end to end: three `parallax region` processes from
//! the example config, routers at two locations, a region frozen with
//! SIGSTOP and thawed again.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

const EXAMPLE: &str = include_str!("../deploy/examples/three-regions.toml");

/// A `parallax router` process, killed when dropped.
struct RouterProcess {
    child: Child,
    url: String,
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_router(cluster: &Cluster, location: &str) -> RouterProcess {
    let port = cluster.router_ports[location];
    let child = Command::new(env!("CARGO_BIN_EXE_parallax"))
        .args(["router", "--config"])
        .arg(&cluster.config)
        .args(["--location", location])
        .env("PARALLAX_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let router = RouterProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("{}/healthz", router.url))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "router {location} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    router
}

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
        until(r, "", Duration::from_secs(10), |_, b| {
            b["candidates"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["state"] == "up"))
        })
        .await;
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
    let metrics = reqwest::get(format!("{}/metrics", paris.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
