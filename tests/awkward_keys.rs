//! End to end: conflicted entities whose keys hold `/`, `?`, `#`, `%`, a
//! space or non-ASCII text, in three `parallax region` processes, are
//! listed by `parallax web` (page and JSON twin) and resolved through it,
//! and the regions then hold them resolved. The web app once put class and
//! key into region URLs unencoded, so such keys could be neither read nor
//! resolved from the reconciliation queue.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, REGIONS, run};
use parallax_core::client::percent_encode;
use parallax_core::config::Config;
use parallax_core::{ReadOptions, RegionClient, WriteOptions};
use serde_json::{Value, json};

/// Keys a URL cannot carry as they are.
const KEYS: [&str; 7] = [
    "a/b",
    "what?",
    "x#y",
    "100%",
    "with space",
    "naïve-ключ-鍵",
    "%2F-literal",
];

/// A manual class, and 300 ms between regions (`--simulate-wan`), so two
/// regions writing the same key at once both write before either hears of
/// the other: a conflict.
const CLASSES: &str = "[classes.tickets]\nconflict = \"manual\"\n\n\
     [latency_ms.us-east]\nus-west = 300\neu-west = 300\n\n\
     [latency_ms.us-west]\neu-west = 300\n";

/// Stops the web app on every path out of the test.
struct Web(Child);

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `parallax web` on a free port, once it answers; returns its URL.
async fn start_web(c: &Cluster) -> (Web, String) {
    let port = common::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_parallax"))
        .args(["web", "--config"])
        .arg(&c.config)
        .arg("--data-dir")
        .arg(c.data_dir())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("PARALLAX_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let web = Web(child);
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !matches!(http.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success())
    {
        assert!(Instant::now() < deadline, "parallax web did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (web, url)
}

/// Whether every region's queue holds every key.
async fn all_queued(regions: &[RegionClient]) -> bool {
    for r in regions {
        let list = r.conflicts(Some("tickets"), None).await.unwrap();
        if !KEYS
            .iter()
            .all(|k| list.conflicts.iter().any(|c| c.key == *k))
        {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_resolves_conflicts_whose_keys_need_encoding() {
    let c = Cluster::with(CLASSES, &["--simulate-wan"]);
    for i in 0..REGIONS.len() {
        c.wait_ready(i).await;
    }
    let config = Config::load(&c.config).unwrap();
    let regions: Vec<RegionClient> = REGIONS
        .iter()
        .map(|r| RegionClient::from_config(&config, r).unwrap())
        .collect();

    // us-east and us-west write each key at once: a conflict everywhere.
    let write = WriteOptions::default();
    for key in KEYS {
        let (east, west) = (json!({ "by": "us-east" }), json!({ "by": "us-west" }));
        let (a, b) = tokio::join!(
            regions[0].put("tickets", key, &east, &write),
            regions[1].put("tickets", key, &west, &write),
        );
        a.unwrap_or_else(|e| panic!("{key}: {e}"));
        b.unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !all_queued(&regions).await {
        assert!(Instant::now() < deadline, "the keys never all conflicted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The web app lists them, with both siblings read from a region.
    let (_web, web) = start_web(&c).await;
    let http = reqwest::Client::new();
    let v: Value = http
        .get(format!("{web}/api/v1/conflicts?range=15m&class=tickets"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let queue = &v["data"]["queue"];
    assert_eq!(queue["errors"], json!([]), "{queue}");
    for key in KEYS {
        let item = queue["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["key"] == key)
            .unwrap_or_else(|| panic!("{key} is not in the queue: {queue}"));
        assert_eq!(item["class"], "tickets");
        assert_eq!(item["regions"].as_array().unwrap().len(), 3, "{item}");
        assert_eq!(
            item["siblings"].as_array().unwrap().len(),
            2,
            "{key}'s siblings were not read: {item}"
        );
    }
    let html = http
        .get(format!("{web}/conflicts?range=15m"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for key in KEYS {
        assert!(
            html.contains(&format!("data-key=\"tickets/{key}\"")),
            "the page does not list {key}"
        );
    }
    // So does the CLI.
    let cfg = c.config.to_str().unwrap();
    let (code, out, err) = run(
        &["conflicts", "--class", "tickets", "--config", cfg],
        c.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    for key in KEYS {
        assert!(out.contains(&format!("\"key\": \"{key}\"")), "{out}");
    }

    // Resolved through the web app: all but one by its JSON API...
    let (by_form, by_api) = KEYS.split_first().unwrap();
    for key in by_api {
        let r = http
            .post(format!(
                "{web}/api/v1/conflicts/tickets/{}/resolve",
                percent_encode(key)
            ))
            .bearer_auth("e2e-admin")
            .json(&json!({ "value": { "resolved": key }, "region": "us-west" }))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        assert_eq!(status, 200, "{key}: {body}");
        assert_eq!(body["resolved"], true, "{key}: {body}");
    }
    // ...and one by the page's form, keeping the first sibling.
    let form = format!(
        "class=tickets&key={}&region=eu-west&choice=0&admin_token=e2e-admin",
        percent_encode(by_form)
    );
    let r = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .post(format!("{web}/conflicts/resolve?range=15m"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.contains(&format!(
            "flash={}",
            percent_encode(&format!("Resolved tickets/{by_form} in eu-west"))
        )),
        "{location}"
    );

    // Every region now holds each key resolved, and queues none of them.
    let deadline = Instant::now() + Duration::from_secs(20);
    'wait: loop {
        for r in &regions {
            let list = r.conflicts(Some("tickets"), None).await.unwrap();
            let still: Vec<&str> = list.conflicts.iter().map(|c| c.key.as_str()).collect();
            if !still.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "{} still queues {still:?}",
                    r.region()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'wait;
            }
        }
        break;
    }
    for r in &regions {
        for key in KEYS {
            let read = r
                .get("tickets", key, &ReadOptions::default())
                .await
                .unwrap_or_else(|e| panic!("{key}: {e}"));
            assert!(!read.conflicted, "{}: {key}: {read:?}", r.region());
            if key == *by_form {
                // The first sibling, whichever region wrote it.
                assert!(read.value["by"].is_string(), "{key}: {read:?}");
            } else {
                assert_eq!(read.value, json!({ "resolved": key }), "{}", r.region());
            }
        }
    }
    let (code, out, err) = run(
        &[
            "get", "tickets", "a/b", "--region", "eu-west", "--config", cfg,
        ],
        c.dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"conflicted\": false"), "{out}");
}
