//! End to end: what crosses between three real regions lands in the
//! `traffic` table by pair, kind and class, and `parallax web`'s Cost page
//! prices the same bytes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::{AsArray, Int64Array};
use common::{Cluster, TOKEN, Web};
use parallax_collector::files;
use serde_json::{Value, json};

const CLASSES: &str = "[classes.likes]\nconflict = \"gcounter\"\n\n\
    [classes.carts]\nconflict = \"lww\"\nownership = \"hash\"\nforeign_writes = \"forward\"\n\n\
    [collector]\nflush_interval_ms = 200\ntraffic_interval_ms = 300\n";

/// Per (region, peer, kind, class): calls, items, sent and received bytes.
type Sums = BTreeMap<(String, String, String, String), [i64; 4]>;

fn traffic(root: &std::path::Path) -> Sums {
    let mut sums = Sums::new();
    for (region, r) in files::partitions(&root.join("traffic"), "region") {
        let mut found = Vec::new();
        for (_, d) in files::partitions(&r, "date") {
            for (_, h) in files::partitions(&d, "hour") {
                found.extend(files::parquet_files(&h));
            }
        }
        for b in files::read_files(&found).unwrap() {
            let text = |c: &str| b.column_by_name(c).unwrap().as_string::<i32>().clone();
            let int = |c: &str| {
                b.column_by_name(c)
                    .unwrap()
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .unwrap()
                    .clone()
            };
            let (peer, kind, class) = (text("peer"), text("kind"), text("class"));
            let cols = ["calls", "items", "sent_bytes", "received_bytes"].map(int);
            for i in 0..b.num_rows() {
                let s = sums
                    .entry((
                        region.clone(),
                        peer.value(i).to_owned(),
                        kind.value(i).to_owned(),
                        class.value(i).to_owned(),
                    ))
                    .or_default();
                for (k, c) in cols.iter().enumerate() {
                    s[k] += c.value(i);
                }
            }
        }
    }
    assert!(!sums.is_empty(), "no traffic rows under {}", root.display());
    sums
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_between_regions_land_by_pair_kind_and_class_and_the_cost_page_prices_them() {
    let mut c = Cluster::with(CLASSES, &[]);
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let client = reqwest::Client::new();
    // 20 increments taken by each region; 30 cart writes through us-east,
    // which passes on those whose key another region owns.
    for n in 0..60 {
        let r = client
            .post(format!(
                "{}/v1/entities/likes/post-{}/ops",
                c.url(n % 3),
                n % 7
            ))
            .bearer_auth(TOKEN)
            .json(&json!({"op": "incr"}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }
    let mut passed_on = 0;
    for n in 0..30 {
        let r = client
            .put(format!("{}/v1/entities/carts/cart-{n}", c.url(0)))
            .bearer_auth(TOKEN)
            .json(&json!({ "items": n }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
        let served: Value = r.json().await.unwrap();
        if served["served_by"] != "us-east" {
            passed_on += 1;
        }
    }
    assert!(passed_on > 0, "hash ownership passes some carts on");
    // Replication drains, and a report or two follows.
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    // A stopping region reports its last window before its collector's
    // last flush: nothing counted is lost.
    assert_eq!(c.terminate_all().await, vec![0, 0, 0]);
    let root = c.data_dir().join("tables");
    let sums = traffic(&root);
    let regions = ["us-east", "us-west", "eu-west"];
    for (i, region) in regions.iter().enumerate() {
        for peer in regions.iter().filter(|p| *p != region) {
            let key = |kind: &str, class: &str| {
                (
                    (*region).to_owned(),
                    (*peer).to_owned(),
                    kind.to_owned(),
                    class.to_owned(),
                )
            };
            let likes = sums
                .get(&key("replicate", "likes"))
                .unwrap_or_else(|| panic!("{region} → {peer} likes in {sums:?}"));
            // Every increment the region took, shipped once to each peer.
            assert_eq!(likes[1], 20, "{region} → {peer}: {likes:?}");
            assert!(likes[2] > 20 * 10 && likes[3] > 0, "{likes:?}");
            let beat = sums
                .get(&key("heartbeat", ""))
                .unwrap_or_else(|| panic!("{region} → {peer} heartbeats in {sums:?}"));
            assert!(beat[0] > 0 && beat[2] > 0, "{beat:?}");
            if i == 0 {
                assert!(sums.contains_key(&key("replicate", "carts")), "{sums:?}");
            }
        }
    }
    let forwarded: i64 = sums
        .iter()
        .filter(|((r, _, kind, class), _)| r == "us-east" && kind == "write" && class == "carts")
        .map(|(_, s)| s[1])
        .sum();
    assert_eq!(forwarded, passed_on, "every cart passed on, counted once");

    // The Cost page reads the same rows and prices them at the config's
    // default 0.02 per GB.
    let web = Web::start(&c.config, &c.data_dir());
    let v: Value = client
        .get(format!("{}/api/v1/cost?range=1h", web.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &v["data"];
    let pairs = d["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6, "every ordered pair: {d}");
    for p in pairs {
        let (src, dst) = (p["src"].as_str().unwrap(), p["dst"].as_str().unwrap());
        let bytes: i64 = sums
            .iter()
            .map(|((r, peer, _, _), s)| {
                if r == src && peer == dst {
                    s[2]
                } else if r == dst && peer == src {
                    s[3]
                } else {
                    0
                }
            })
            .sum();
        assert_eq!(p["bytes"].as_i64(), Some(bytes), "{src} → {dst}");
        let spend = p["spend"].as_f64().unwrap();
        assert!((spend - bytes as f64 * 0.02 / 1e9).abs() < 1e-12, "{p}");
    }
    let carts = d["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["class"] == "carts")
        .unwrap_or_else(|| panic!("carts in {d}"));
    assert_eq!(carts["ownership"], "hash");
    assert_eq!(carts["forwarded_writes"].as_i64(), Some(passed_on));
    let global = &carts["what_if"][0];
    assert_eq!(global["change"], "active-active, global ownership");
    assert!(
        global["delta"].as_f64().unwrap() < 0.0,
        "passing nothing on saves: {global}"
    );
    let html = client
        .get(format!("{}/cost?range=1h", web.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [
        "<h1>Cost</h1>",
        "<td class=\"\">carts</td>",
        "<td class=\"\">heartbeat</td>",
        "read-local at us-east",
    ] {
        assert!(html.contains(text), "{text} in the page:\n{html}");
    }
}
