//! The tables in a bucket of an S3-compatible store: a real one on
//! loopback (moto's server, PyPI `moto[server]`, started here), written by
//! a collector, read by the web app and by `parallax sql --config`,
//! compacted, expired by retention, and a compaction cut short by a crash
//! neither counted twice nor left behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, missing_tool};
use parallax_collector::bucket::{Bucket, locate};
use parallax_collector::{Collector, CollectorOptions, files};
use parallax_core::config::Config;
use parallax_core::telemetry::{Event, RequestEvent};
use parallax_lab::process::start_web;
use serde_json::{Value, json};

/// 2026-11-28T04:00:00Z.
const T0: u64 = 1_795_838_400_000_000;
const HOUR: u64 = 3_600_000_000;
const DAY: u64 = 24 * HOUR;
const BUCKET: &str = "parallax-test";

/// moto's S3 server on a free loopback port, stopped on drop.
struct Moto {
    child: Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Option<Moto> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server, flask"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            missing_tool("moto's S3 server (pip install 'moto[server]')");
            return None;
        }
        let port = common::free_port().to_string();
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let moto = Moto {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let http = reqwest::Client::new();
        eventually("moto answers", Duration::from_secs(30), || async {
            http.get(&moto.endpoint).send().await.ok().map(|_| ())
        })
        .await;
        Some(moto)
    }

    async fn create_bucket(&self) {
        let r = reqwest::Client::new()
            .put(format!("{}/{BUCKET}", self.endpoint))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "creating the bucket: {}",
            r.status()
        );
    }

    /// A request with an `Authorization` header moto takes without checking
    /// the signature (unsigned, it answers like S3 to an anonymous caller).
    fn as_test(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        r.header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=test/20261128/us-east-1/s3/aws4_request, \
             SignedHeaders=host, Signature=00",
        )
    }

    /// `PUT` an object.
    async fn put(&self, key: &str, body: Vec<u8>) {
        let r = self
            .as_test(reqwest::Client::new().put(format!("{}/{BUCKET}/{key}", self.endpoint)))
            .body(body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "PUT {key}: {}", r.status());
    }

    /// Whether the object `key` is stored (listings aside).
    async fn has(&self, key: &str) -> bool {
        let r = self
            .as_test(reqwest::Client::new().head(format!("{}/{BUCKET}/{key}", self.endpoint)))
            .send()
            .await
            .unwrap();
        r.status().is_success()
    }

    async fn get(&self, key: &str) -> Vec<u8> {
        let r = self
            .as_test(reqwest::Client::new().get(format!("{}/{BUCKET}/{key}", self.endpoint)))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "GET {key}: {}", r.status());
        r.bytes().await.unwrap().to_vec()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The example cluster with its tables in the bucket, kept two days.
fn config(endpoint: &str) -> (Config, String) {
    let text = include_str!("../deploy/examples/three-regions.toml").replacen(
        "[collector]\n",
        &format!(
            "[collector]\ntables = \"s3://{BUCKET}/prod/tables\"\n\
             retention_days = 2\nrollup_retention_days = 2\n"
        ),
        1,
    ) + &format!(
        "\n[collector.s3]\nendpoint = \"{endpoint}\"\nallow_http = true\n\
         region = \"us-east-1\"\naccess_key_id = \"test\"\nsecret_access_key = \"test\"\n"
    );
    (Config::from_toml(&text, "s3.toml").unwrap(), text)
}

/// us-east's collector for `config`, its clock at `now_us`.
fn collector(config: &Config, now_us: u64) -> (Collector, Arc<Bucket>, PathBuf) {
    let (root, bucket) = locate(&config.collector, Path::new("/nonexistent")).unwrap();
    let bucket = bucket.expect("the tables are in a bucket");
    let c = Collector::new(
        CollectorOptions {
            root: root.clone(),
            bucket: Some(Arc::clone(&bucket)),
            region: "us-east".into(),
            config: config.collector.clone(),
            probe_urls: Default::default(),
            secrets: parallax_core::secrets::SecretCell::tokens(&[]),
            bounds: parallax_collector::rollup::Bounds::of(config),
            clock: Arc::new(parallax_core::clock::ManualClock::new(now_us / 1_000)),
            links: None,
            tls: Default::default(),
        },
        None,
    )
    .unwrap();
    (c, bucket, root)
}

fn request(ts_us: u64, n: u64) -> Event {
    Event::Request(RequestEvent {
        ts_us,
        region: "us-east".into(),
        op: if n.is_multiple_of(3) { "put" } else { "get" }.into(),
        class: "likes".into(),
        status: if n.is_multiple_of(5) { 503 } else { 200 },
        latency_us: 1_000 + n,
        consistency: "local".into(),
        served_by: "us-east".into(),
        client_geo: String::new(),
    })
}

/// Runs blocking collector work off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn sql(http: &reqwest::Client, base: &str, sql: &str) -> Vec<Value> {
    let answer = common::sql_answer(http, base, sql).await;
    answer["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("{sql}: {answer}"))
        .clone()
}

const BY_HOUR: &str = "SELECT CAST(date AS VARCHAR) AS d, hour, count(*) AS n, \
                       sum(latency_us) AS total FROM requests GROUP BY date, hour ORDER BY d, hour";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_round_trip_through_an_s3_bucket() {
    let Some(moto) = Moto::start().await else {
        return;
    };
    moto.create_bucket().await;
    let (config, text) = config(&moto.endpoint);

    // Three flushes into each of two hours, and a day past retention.
    let (c, bucket, root) = collector(&config, T0);
    let written = blocking({
        let c = c.clone();
        move || {
            let mut n = 0;
            for start in [T0 - 3 * DAY, T0, T0 + HOUR] {
                for flush in 0..3u64 {
                    for i in 0..40u64 {
                        c.ingest(request(start + flush * 600_000_000 + i * 1_000_000, n));
                        n += 1;
                    }
                    c.flush().unwrap();
                }
            }
            n
        }
    })
    .await;
    assert_eq!(written, 360);
    let hour_dir =
        |date: &str, hour: u32| files::partition_dir(&root, "requests", "us-east", date, hour);
    let files_of = |dir: PathBuf| {
        let b = Arc::clone(&bucket);
        blocking(move || b.parquet_files(&dir).unwrap())
    };
    assert_eq!(files_of(hour_dir("2026-11-28", 4)).await.len(), 3);

    // The web app reads the bucket the config names.
    let data = tempfile::tempdir().unwrap();
    let web = start_web(config.clone(), data.path(), "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let base = format!("http://{}", web.addr);
    let http = reqwest::Client::new();
    let before = sql(&http, &base, BY_HOUR).await;
    assert_eq!(
        before
            .iter()
            .map(|r| r[2].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [120, 120, 120],
        "{before:?}"
    );

    // Maintenance three hours on: both hours compacted to one file each,
    // the old day expired, nothing else changed.
    let (later, _, _) = collector(&config, T0 + 3 * HOUR);
    let (compacted, deleted) = blocking(move || later.maintain().unwrap()).await;
    assert!(
        compacted >= 2 && deleted >= 1,
        "{compacted} compacted, {deleted} deleted"
    );
    for hour in [4, 5] {
        assert_eq!(
            files_of(hour_dir("2026-11-28", hour)).await.len(),
            1,
            "hour {hour}"
        );
    }
    let old = files::date_dir(&root, "requests", "us-east", "2026-11-25");
    let b = Arc::clone(&bucket);
    assert!(
        !blocking(move || b.exists(&old).unwrap()).await,
        "the old day is gone"
    );
    let after = sql(&http, &base, BY_HOUR).await;
    assert_eq!(after, before[1..], "compaction changed the answer");
    let rolled = sql(&http, &base, "SELECT sum(requests) AS n FROM requests_5m").await;
    assert_eq!(rolled[0][0], json!(240), "the rollups count the raw rows");

    // A compaction cut short after its new file was written: the marker
    // names the file it replaces, and the new one holds the same rows.
    let dir = hour_dir("2026-11-28", 4);
    let only = files_of(dir.clone()).await.remove(0);
    let only_name = only.file_name().unwrap().to_string_lossy().into_owned();
    let key = |p: &Path| p.display().to_string();
    let copy = dir.join("1795838400000000-1-99.parquet");
    let body = moto.get(&key(&only)).await;
    let marker = key(&dir.join("_replaced-1795838400000000-1-99.parquet.json"));
    moto.put(&marker, serde_json::to_vec(&[&only_name]).unwrap())
        .await;
    moto.put(&key(&copy), body).await;
    assert_eq!(
        sql(&http, &base, BY_HOUR).await,
        after,
        "counted twice mid-swap"
    );
    // The next pass finishes it: the replaced file and the marker go.
    let (again, _, _) = collector(&config, T0 + 3 * HOUR);
    blocking(move || again.maintain().unwrap()).await;
    assert_eq!(files_of(dir.clone()).await, [copy]);
    assert!(!moto.has(&key(&only)).await, "the replaced file is deleted");
    assert!(!moto.has(&marker).await, "the marker is deleted");
    assert_eq!(sql(&http, &base, BY_HOUR).await, after);

    // `parallax sql --config` reads the same bucket.
    let cfg_file = data.path().join("s3.toml");
    std::fs::write(&cfg_file, &text).unwrap();
    let out = blocking(move || {
        Command::new(common::binary())
            .args(["sql", "--format", "json", "--config"])
            .arg(&cfg_file)
            .arg("SELECT count(*) AS n FROM requests")
            .output()
            .unwrap()
    })
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(answer["rows"][0][0], json!(240), "{answer}");
    web.stop().await;
}

#[test]
fn a_tables_location_that_is_not_a_folder_or_an_s3_bucket_is_refused_by_name() {
    let text = include_str!("../deploy/examples/three-regions.toml");
    for (tables, says) in [
        ("gs://bucket/x", "`gs://` is not a store parallax writes to"),
        ("s3://B/x", "is not one S3 allows"),
        ("s3://bucket/a//b", "empty, `.` or `..` part"),
    ] {
        let t = text.replacen(
            "[collector]\n",
            &format!("[collector]\ntables = \"{tables}\"\n"),
            1,
        );
        let e = Config::from_toml(&t, "bad.toml").unwrap_err().to_string();
        assert!(
            e.contains("collector.tables") && e.contains(says),
            "{tables}: {e}"
        );
    }
    let t = text.to_owned() + "\n[collector.s3]\nendpoint = \"http://minio:9000\"\n";
    let e = Config::from_toml(&t, "bad.toml").unwrap_err().to_string();
    assert!(
        e.contains("collector.s3.endpoint") && e.contains("allow_http"),
        "{e}"
    );
}
