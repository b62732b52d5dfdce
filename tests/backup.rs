//! End to end: `parallax backup` of a region taken under write load; the
//! region's disk lost; `parallax restore` builds its store from the backup
//! and the region, started again, converges with its peers by itself, and
//! its new writes reach them by replication: its log restarted past every
//! sequence they had applied from it.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Cluster, REGIONS, TOKEN, eventually, run};
use serde_json::{Value, json};

/// Region `i`'s `/v1/stats`.
async fn stats(c: &Cluster, i: usize) -> Value {
    c.stats(i).await.expect("the region answers its stats")
}

/// Writes `accounts/<key>` through the region at `url`; whether it was
/// acknowledged.
async fn put(http: &reqwest::Client, url: &str, key: &str, n: u64) -> bool {
    http.put(format!("{url}/v1/entities/accounts/{key}"))
        .bearer_auth(TOKEN)
        .json(&json!({ "n": n }))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// The copy of `accounts/<key>` of the region at `url`.
async fn read(http: &reqwest::Client, url: &str, key: &str) -> Value {
    let r = http
        .get(format!("{url}/v1/entities/accounts/{key}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    if r.status() == 404 {
        return Value::Null;
    }
    r.json::<Value>().await.unwrap()["value"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_restored_from_a_backup_taken_under_load_converges_and_replicates_again() {
    let mut c = Cluster::with(
        "[classes.accounts]\nconflict = \"lww\"\ncritical = true\n",
        &[],
    );
    for i in 0..3 {
        c.wait_ready(i).await;
    }
    let http = reqwest::Client::new();
    // What every region holds at the end: the last acknowledged value of
    // each key (each key has one writer, so its last write wins).
    let acked: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    for n in 0..600u64 {
        let key = format!("before-{n}");
        assert!(put(&http, &c.url((n % 3) as usize), &key, n).await);
        acked.lock().unwrap().insert(key, n);
    }
    // Load through us-east and eu-west while the backup of us-west runs,
    // and for a while after it.
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in [0usize, 2] {
        let (http, url, acked, stop) = (
            http.clone(),
            c.url(i),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("load-{}-{}", REGIONS[i], n % 300);
                if put(&http, &url, &key, n).await {
                    acked.lock().unwrap().insert(key, n);
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cfg = c.config.to_str().unwrap().to_owned();
    let dir = c.dir.path().to_owned();
    let file = dir.join("us-west.backup");
    let file_arg = file.to_str().unwrap().to_owned();
    let (code, out, err) = run(
        &[
            "backup", "--config", &cfg, "--region", "us-west", "--out", &file_arg,
        ],
        &dir,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("backup of us-west"), "{out}");
    assert!(!dir.join("us-west.backup.part").exists());
    // Writes after the backup that us-west takes through replication.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 0..100u64 {
        let key = format!("after-{n}");
        assert!(put(&http, &c.url(1), &key, n).await);
        acked.lock().unwrap().insert(key, n);
    }
    // us-west's own writes reach its peers before its disk is lost (what
    // was not shipped yet is lost with the disk: asynchronous replication).
    eventually("us-west's log drained", Duration::from_secs(30), || async {
        let s = stats(&c, 1).await;
        let peers = s["replication"]["peers"].as_object().unwrap().clone();
        peers.values().all(|p| p["backlog_ops"] == 0).then_some(())
    })
    .await;
    let applied_before = stats(&c, 0).await["replication"]["peers"]["us-west"]["applied_from"]
        .as_u64()
        .unwrap();
    assert!(
        applied_before >= 300,
        "us-east applied {applied_before} of us-west's log"
    );

    c.kill9(1);
    let data = c.data_dir();
    std::fs::remove_file(data.join("us-west.redb")).unwrap();
    std::fs::remove_dir_all(data.join("us-west.wal")).unwrap();
    let data_arg = data.to_str().unwrap().to_owned();
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--config",
            &cfg,
            "--region",
            "us-west",
            "--data-dir",
            &data_arg,
            "--from",
            &file_arg,
        ];
        args.extend(extra);
        run(&args, &dir)
    };
    let (code, out, err) = restore(&[]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("restored us-west's store"), "{out}");
    // A second restore over it is refused without --force.
    let (code, _, err) = restore(&[]);
    assert_eq!(code, 2, "an error exits 2");
    assert!(err.contains("--force"), "{err}");
    c.spawn(1);
    c.wait_ready(1).await;

    // New writes through the restored region reach both peers by
    // replication: their watermark of us-west passes its new head.
    for n in 0..100u64 {
        let key = format!("restored-{n}");
        assert!(put(&http, &c.url(1), &key, n).await);
        acked.lock().unwrap().insert(key, n);
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let head = stats(&c, 1).await["replication"]["head"].as_u64().unwrap();
    assert!(
        head > applied_before,
        "the restored log (head {head}) must not reuse sequences the peers applied ({applied_before})"
    );
    for peer in [0, 2] {
        eventually(
            "the peers apply the restored region's new writes",
            Duration::from_secs(30),
            || async {
                let applied =
                    stats(&c, peer).await["replication"]["peers"]["us-west"]["applied_from"]
                        .as_u64()
                        .unwrap();
                (applied >= head).then_some(())
            },
        )
        .await;
    }
    // Every region converges on every acknowledged write.
    let want = acked.lock().unwrap().clone();
    eventually(
        "every region holds every acknowledged write",
        Duration::from_secs(60),
        || {
            let (http, c, want) = (&http, &c, &want);
            async move {
                for (key, n) in want {
                    for i in 0..3 {
                        if read(http, &c.url(i), key).await != json!({ "n": n }) {
                            return None;
                        }
                    }
                }
                Some(())
            }
        },
    )
    .await;
    let (code, out, err) = run(&["audit", "--config", &cfg, "--lag-bound-ms", "1000"], &dir);
    assert_eq!(code, 0, "the regions' copies agree: {out}\n{err}");
}
