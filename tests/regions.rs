//! End to end: three `parallax region` processes on free loopback ports,
//! driven over HTTP the way a user does.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, REGIONS, TOKEN, run};

use serde_json::{Value, json};

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Option<Value> {
    let mut req = client
        .request(method, url)
        .bearer_auth(TOKEN)
        .timeout(Duration::from_secs(5));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// Writes a burst to every live region; returns the increments acknowledged
/// and the keys written.
async fn burst(
    c: &Cluster,
    live: &[usize],
    round: usize,
    acked: &mut i64,
    keys: &mut Vec<(String, Value)>,
) {
    let client = reqwest::Client::new();
    for n in 0..40 {
        let i = live[n % live.len()];
        let url = c.url(i);
        if send(
            &client,
            reqwest::Method::POST,
            format!("{url}/v1/entities/likes/post-{}/ops", n % 5),
            Some(json!({"op":"incr","by":1})),
        )
        .await
        .is_some()
        {
            *acked += 1;
        }
        let key = format!("r{round}-n{n}-{}", REGIONS[i]);
        let value = json!({ "round": round, "n": n });
        if send(
            &client,
            reqwest::Method::PUT,
            format!("{url}/v1/entities/settings/{key}"),
            Some(value.clone()),
        )
        .await
        .is_some()
        {
            keys.push((key, value));
        }
    }
}

async fn likes_total(client: &reqwest::Client, url: &str) -> i64 {
    let mut total = 0;
    for k in 0..5 {
        if let Some(v) = send(
            client,
            reqwest::Method::GET,
            format!("{url}/v1/entities/likes/post-{k}"),
            None,
        )
        .await
        {
            total += v["value"].as_i64().unwrap_or(0);
        }
    }
    total
}

async fn converged(
    c: &Cluster,
    expected_likes: i64,
    keys: &[(String, Value)],
) -> Result<(), String> {
    let client = reqwest::Client::new();
    for (i, region) in REGIONS.iter().enumerate() {
        let total = likes_total(&client, &c.url(i)).await;
        if total != expected_likes {
            return Err(format!(
                "{region}: likes sum to {total}, {expected_likes} increments were acknowledged"
            ));
        }
        for (key, value) in keys {
            let got = send(
                &client,
                reqwest::Method::GET,
                format!("{}/v1/entities/settings/{key}", c.url(i)),
                None,
            )
            .await;
            if got.as_ref().map(|g| &g["value"]) != Some(value) {
                return Err(format!(
                    "{region}: settings/{key} is {got:?}, expected {value}"
                ));
            }
        }
    }
    Ok(())
}

async fn wait_converged(c: &Cluster, expected_likes: i64, keys: &[(String, Value)]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match converged(c, expected_likes, keys).await {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("regions did not converge: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_a_region_restart_it_and_nothing_acknowledged_is_lost() {
    let mut c = Cluster::new();
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let mut acked = 0i64;
    let mut keys = Vec::new();
    burst(&c, &[0, 1, 2], 0, &mut acked, &mut keys).await;
    // Writes acknowledged by us-west just before it dies.
    burst(&c, &[1], 1, &mut acked, &mut keys).await;
    c.kill9(1);
    burst(&c, &[0, 2], 2, &mut acked, &mut keys).await;
    c.spawn(1);
    c.wait_ready(1).await;
    // Checkpoints are an hour apart here, so every write us-west took was
    // recovered from its write-ahead log.
    let client = reqwest::Client::new();
    let stats = send(
        &client,
        reqwest::Method::GET,
        format!("{}/v1/stats", c.url(1)),
        None,
    )
    .await
    .unwrap();
    assert!(
        stats["replication"]["replayed_at_start"].as_u64().unwrap() >= 40,
        "{}",
        stats["replication"]
    );
    burst(&c, &[0, 1, 2], 3, &mut acked, &mut keys).await;
    assert!(
        acked >= 150,
        "most writes should be acknowledged, got {acked}"
    );
    wait_converged(&c, acked, &keys).await;
    let codes = c.terminate_all().await;
    assert_eq!(codes, vec![0, 0, 0], "regions exit cleanly on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_that_was_down_catches_up_on_restart() {
    let mut c = Cluster::new();
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    c.kill9(2);
    let mut acked = 0i64;
    let mut keys = Vec::new();
    burst(&c, &[0, 1], 0, &mut acked, &mut keys).await;
    burst(&c, &[0, 1], 1, &mut acked, &mut keys).await;
    c.spawn(2);
    c.wait_ready(2).await;
    wait_converged(&c, acked, &keys).await;
    // The restarted region reports the others' lag once it hears from them.
    let client = reqwest::Client::new();
    let stats = send(
        &client,
        reqwest::Method::GET,
        format!("{}/v1/stats", c.url(2)),
        None,
    )
    .await
    .unwrap();
    for peer in ["us-east", "us-west"] {
        assert!(
            stats["replication"]["peers"][peer]["applied_from"]
                .as_u64()
                .unwrap()
                > 0,
            "{stats}"
        );
    }
}

/// Every loop a region process runs besides serving requests is a named
/// worker in `/v1/stats`, with its state and its runs: the node's and its
/// collector's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_background_loop_of_a_region_shows_as_a_worker_in_its_stats() {
    let c = Cluster::new();
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let client = reqwest::Client::new();
    let expected = [
        "telemetry",
        "checkpoints",
        "shipper:us-west",
        "shipper:eu-west",
        "lag-sampler",
        "anti-entropy",
        "collector:ingest",
        "collector:flush",
        "collector:maintenance",
        "collector:probes",
    ];
    // Ones that work on a timer of a second or less have run by then.
    let ran_soon = ["shipper:us-west", "lag-sampler", "collector:probes"];
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = send(
            &client,
            reqwest::Method::GET,
            format!("{}/v1/stats", c.url(0)),
            None,
        )
        .await
        .unwrap_or(Value::Null);
        let workers = stats["workers"].as_array().cloned().unwrap_or_default();
        let named = |name: &str| workers.iter().find(|w| w["name"] == name).cloned();
        let missing: Vec<&str> = expected
            .iter()
            .copied()
            .filter(|n| named(n).is_none())
            .collect();
        assert!(missing.is_empty(), "no worker named {missing:?}: {stats}");
        for w in &workers {
            assert_ne!(w["state"], "stopped", "a worker stopped: {w}");
        }
        if ran_soon.iter().all(|n| {
            named(n).is_some_and(|w| w["runs"].as_u64() > Some(0) && w["last_run_us"].is_u64())
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "workers never ran: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_bad_config_is_refused_naming_the_file_the_field_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[cluster]\nclient_token = \"c\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n\
         [regions.a]\nlisten = \"127.0.0.1:1\"\nlocation = { lat = 0.0, lon = 0.0 }\n\
         [classes.x]\nconflict = \"lww\"\nownerhsip = \"home\"\n",
    )
    .unwrap();
    let (code, _, err) = run(
        &[
            "region",
            "--config",
            path.to_str().unwrap(),
            "--region",
            "a",
        ],
        dir.path(),
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("bad.toml")
            && err.contains("ownerhsip")
            && err.contains("ownership")
            && err.contains("Fix"),
        "{err}"
    );
    let (code, _, err) = run(
        &[
            "region",
            "--config",
            path.with_extension("nope").to_str().unwrap(),
            "--region",
            "a",
        ],
        dir.path(),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("bad.nope") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn help_explains_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = run(&["--help"], dir.path());
    assert_eq!(code, 0);
    for cmd in [
        "region",
        "demo",
        "get",
        "put",
        "incr",
        "conflicts",
        "resolve",
        "bench",
        "sql",
        "web",
        "changes",
    ] {
        assert!(out.contains(cmd), "--help should list {cmd}: {out}");
    }
    let (_, out, _) = run(&["region", "--help"], dir.path());
    for flag in ["--config", "--region", "--data-dir"] {
        assert!(out.contains(flag), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_writes_reads_and_moves_ownership() {
    let c = Cluster::new();
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let cfg = c.config.to_str().unwrap().to_owned();
    let dir = c.dir.path().to_owned();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", cfg.as_str()]);
        run(&all, &dir)
    };
    let (code, out, err) = cli(&[
        "put",
        "settings",
        "theme",
        r#"{"dark":true}"#,
        "--region",
        "us-east",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("\"dark\": true") && out.contains("\"token\""),
        "{out}"
    );
    let (code, _, err) = cli(&[
        "incr",
        "likes",
        "post-9",
        "3",
        "--region",
        "us-west",
        "--consistency",
        "quorum",
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cli(&[
        "get",
        "likes",
        "post-9",
        "--region",
        "eu-west",
        "--consistency",
        "quorum",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"value\": 3"), "{out}");
    // eu-west's change feed has the increment made in us-west.
    let (code, out, err) = cli(&["changes", "--region", "eu-west", "--class", "likes"]);
    assert_eq!(code, 0, "{err}");
    let page: Value = serde_json::from_str(&out).unwrap();
    let change = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|c| c["key"] == "post-9")
        .unwrap_or_else(|| panic!("no change of post-9 in eu-west's feed: {out}"));
    assert_eq!(change["value"], 3, "{out}");
    assert_ne!(change["source"], "local", "{out}");
    let (code, out, err) = cli(&["changes", "--region", "eu-west", "--after", "head"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"changes\": []"), "{out}");
    let (code, _, err) = cli(&["changes", "--region", "eu-west", "--after", "soon"]);
    assert_eq!(code, 1);
    assert!(err.contains("400") && err.contains("after `soon`"), "{err}");
    let (code, _, err) = cli(&["changes", "--follow", "--limit", "3"]);
    assert_eq!(code, 2);
    assert!(err.contains("--limit"), "{err}");
    let (code, _, err) = cli(&["get", "settings", "missing", "--region", "eu-west"]);
    assert_eq!(code, 1);
    assert!(err.contains("404") && err.contains("missing"), "{err}");
    let (code, _, err) = cli(&["put", "settings", "x", "not json"]);
    assert_eq!(code, 2);
    assert!(err.contains("not JSON"), "{err}");
    let (code, out, err) = cli(&[
        "failover", "--region", "us-east", "--from", "eu-west", "--to", "us-east",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"epoch\": 1"), "{out}");
    // The move replicates: us-west learns it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = cli(&["ownership", "--region", "us-west"]);
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        if v["owners"]["eu-west"]["owner"] == "us-east" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "us-west never learned the failover: {out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
