//! End to end: three region processes holding 100,000 entities; fault
//! injection changes 10 keys in one region; `parallax audit` finds exactly
//! those, and `--repair` fixes them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, TOKEN, run};
use serde_json::{Value, json};

const ENTITIES: u64 = 100_000;

async fn drained(c: &Cluster) -> bool {
    for i in 0..3 {
        let Some(s) = c.stats(i).await else {
            return false;
        };
        let peers = s["replication"]["peers"].as_object().unwrap();
        if peers.values().any(|p| p["backlog_ops"].as_u64() != Some(0)) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_finds_exactly_the_injected_faults_and_repair_fixes_them() {
    let c = Cluster::with(
        "[classes.accounts]\nconflict = \"lww\"\ncritical = true\n",
        &["--allow-fault-injection"],
    );
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    // 100,000 entities, written through all three regions by 48 connections.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..48 {
        let (client, next) = (client.clone(), Arc::clone(&next));
        let url = c.url(w % 3);
        writers.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= ENTITIES {
                    return;
                }
                let r = client
                    .put(format!("{url}/v1/entities/accounts/acct-{n}"))
                    .bearer_auth(TOKEN)
                    .json(&json!({ "balance": n }))
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success(), "{}", r.text().await.unwrap());
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while !drained(&c).await {
        assert!(Instant::now() < deadline, "replication did not drain");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cfg = c.config.to_str().unwrap().to_owned();
    let dir = c.dir.path().to_owned();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--config", cfg.as_str()]);
        run(&all, &dir)
    };
    let (code, out, err) = cli(&["audit", "--json", "--lag-bound-ms", "1000"]);
    assert_eq!(code, 0, "a clean cluster audits clean: {out}\n{err}");

    // Ten keys changed in us-west without replicating.
    let faulty: Vec<(String, &str)> = (0..10u64)
        .map(|i| {
            (
                format!("acct-{}", i * 9_973 + 17),
                ["corrupt", "drop", "rollback"][i as usize % 3],
            )
        })
        .collect();
    for (key, action) in &faulty {
        let (code, _, err) = cli(&["fault", "--region", "us-west", "accounts", key, action]);
        assert_eq!(code, 0, "{err}");
    }
    let started = Instant::now();
    let (code, out, err) = cli(&["audit", "--json", "--lag-bound-ms", "1000"]);
    let took = started.elapsed();
    assert_eq!(code, 1, "divergence found means exit 1: {out}\n{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let mut found: Vec<(String, Vec<String>)> = report["divergent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            assert_eq!(f["class"], "accounts");
            let regions = f["regions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap().to_owned())
                .collect();
            (f["key"].as_str().unwrap().to_owned(), regions)
        })
        .collect();
    found.sort();
    let mut expected: Vec<(String, Vec<String>)> = faulty
        .iter()
        .map(|(k, _)| (k.clone(), vec!["us-west".to_owned()]))
        .collect();
    expected.sort();
    assert_eq!(found, expected, "exactly the ten keys, in us-west: {out}");
    for f in report["divergent"].as_array().unwrap() {
        assert!(!f["reason"].as_str().unwrap().is_empty());
    }
    assert_eq!(report["audits"][0]["entities"], json!(ENTITIES));
    assert!(
        report["audits"][0]["round_trips"].as_u64().unwrap() <= 5,
        "{}",
        report["audits"][0]
    );
    assert!(took < Duration::from_secs(30), "the audit took {took:?}");

    let (code, out, err) = cli(&["audit", "--json", "--repair", "--lag-bound-ms", "1000"]);
    assert_eq!(code, 0, "after --repair the audit is clean: {out}\n{err}");
    let repaired: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(repaired["repaired"], json!(10));
    let (code, out, _) = cli(&["audit", "--lag-bound-ms", "1000"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no divergence"), "{out}");
    // The repaired values are the right ones.
    for (key, _) in &faulty {
        let n: u64 = key.trim_start_matches("acct-").parse().unwrap();
        let r: Value = client
            .get(format!("{}/v1/entities/accounts/{key}", c.url(1)))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["value"], json!({ "balance": n }), "{key}");
    }
}

#[test]
fn an_audit_that_cannot_run_exits_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(
        &["audit", "--config", "/nonexistent/parallax.toml"],
        dir.path(),
    );
    assert_eq!(code, 2, "an error exits 2");
    assert!(err.contains("/nonexistent/parallax.toml"), "{err}");
}

/// `parallax status` on a running cluster: every region ready, every pair
/// drained, the critical class's last audit and the SLO from the tables;
/// exit 0. With a region killed: exit 1, the region named unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_cluster_on_one_screen_and_exits_1_with_a_region_down() {
    let mut c = Cluster::with(
        "[classes.accounts]\nconflict = \"lww\"\ncritical = true\n\n\
         [collector]\nflush_interval_ms = 200\n\n\
         [slos.availability]\nkind = \"availability\"\nobjective = 99.9\n",
        &[],
    );
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let client = reqwest::Client::new();
    for n in 0..30 {
        let r = client
            .put(format!("{}/v1/entities/accounts/acct-{n}", c.url(n % 3)))
            .bearer_auth(TOKEN)
            .json(&json!({ "balance": n }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !drained(&c).await {
        assert!(Instant::now() < deadline, "replication did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cfg = c.config.to_str().unwrap().to_owned();
    let data = c.data_dir().to_str().unwrap().to_owned();
    let dir = c.dir.path().to_owned();
    let status = |json: bool| {
        let mut args = vec!["status", "--config", &cfg, "--data-dir", &data];
        if json {
            args.push("--json");
        }
        run(&args, &dir)
    };
    let (code, out, err) = run(&["audit", "--config", &cfg, "--lag-bound-ms", "1000"], &dir);
    assert_eq!(code, 0, "{out}\n{err}");
    // The audit's row reaches the tables at the collector's next flush.
    let report = common::eventually("status shows the audit", Duration::from_secs(20), || {
        let (code, out, err) = status(true);
        async move {
            assert_eq!(code, 0, "all is well: {out}\n{err}");
            let report: Value = serde_json::from_str(&out).unwrap();
            report["audits"][0]["at"].is_string().then_some(report)
        }
    })
    .await;
    let states: Vec<&str> = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["ready"; 3], "{report}");
    let pairs = report["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6, "{report}");
    for p in pairs {
        assert_eq!(p["backlog_ops"], 0, "{p}");
        assert!(p["lag_ms"].is_u64(), "{p}");
    }
    let audit = &report["audits"][0];
    assert_eq!(
        (&audit["class"], &audit["entities"], &audit["divergent"]),
        (&json!("accounts"), &json!(30), &json!(0)),
        "{report}"
    );
    let slos = report["slos"].as_array().unwrap();
    assert_eq!(slos.len(), 3, "one availability SLO per region: {report}");
    assert_eq!(report["problems"], json!([]), "{report}");
    let (code, out, _) = status(false);
    assert_eq!(code, 0, "{out}");
    for want in ["us-east -> eu-west", "accounts", "availability", "all well"] {
        assert!(out.contains(want), "{want}:\n{out}");
    }
    // Away from the tables: the same audit and SLOs through the web app.
    let web = common::Web::start(&c.config, &c.data_dir());
    let remote = |web_url: &str| {
        run(
            &[
                "status",
                "--config",
                &cfg,
                "--data-dir",
                "/nonexistent",
                "--web",
                web_url,
                "--json",
            ],
            &dir,
        )
    };
    let (code, out, err) = remote(&web.url);
    assert_eq!(code, 0, "{out}\n{err}");
    let through_web: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(through_web["tables_error"], Value::Null, "{through_web}");
    assert_eq!(through_web["audits"], report["audits"], "{through_web}");
    assert_eq!(
        through_web["slos"].as_array().unwrap().len(),
        3,
        "{through_web}"
    );
    let gone = web.url.clone();
    drop(web);
    let (_, out, _) = remote(&gone);
    let no_web: Value = serde_json::from_str(&out).unwrap();
    assert!(
        no_web["tables_error"]
            .as_str()
            .is_some_and(|e| e.contains("did not answer")),
        "{no_web}"
    );

    c.kill9(1);
    let (code, out, _) = status(false);
    assert_eq!(code, 1, "a region down needs a person:\n{out}");
    assert!(out.contains("us-west is unreachable"), "{out}");
    let (_, out, _) = status(true);
    let report: Value = serde_json::from_str(&out).unwrap();
    let west = report["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "us-west")
        .unwrap();
    assert_eq!(west["state"], "unreachable", "{report}");
    let from_west = report["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["from"] == "us-west" && p["to"] == "us-east")
        .unwrap();
    assert_eq!(from_west["backlog_ops"], Value::Null, "{report}");
}
