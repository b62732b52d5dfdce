//! End to end: one SQL query must not silence `parallax web`.
//!
//! Runaway queries (a three-way cross join, a `generate_series` of 10^11
//! rows, a top 5 of a three-way cross join, an endless recursive query)
//! sent to `POST /api/v1/sql` leave the pages, their JSON twins and the
//! alert evaluator answering within a second while they run; each is
//! refused at its time limit (±2 s), and the server's CPU is back to idle
//! right after. A client that gives up mid-query stops its query the same
//! way, a query over the concurrency bound is told so, and a 5 MB body
//! gets a 413 naming the limit, not a broken connection.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::Web;
use parallax_core::clock::{Clock, SystemClock};
use parallax_core::telemetry::{Event, ReplicationEvent, RequestEvent};
use parallax_web::filters::parse_time;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One test at a time: each measures its server's CPU and latency, which
/// another test's runaway query would disturb.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Requests (and replication samples) the collector writes. Their three-way
/// cross join has 8·10^12 rows, and each batch of 20,000 the inner join
/// hands the outer one pairs with all 20,000 rows of the third table: 4·10^8
/// rows the aggregate above works through in one poll, without an
/// `.await` (seconds in which, before the fix, a server thread answered
/// nothing).
const ROWS: u64 = 20_000;

/// The time limit of the runaway test's server.
const LIMIT: Duration = Duration::from_secs(5);

/// Queries that would run for hours.
const RUNAWAYS: [&str; 4] = [
    "SELECT sum(a.latency_us + b.latency_us + c.latency_us) FROM requests a, requests b, requests c",
    "SELECT sum(value) FROM generate_series(1, 100000000000)",
    "SELECT a.latency_us * b.latency_us - c.latency_us AS v FROM requests a, requests b, requests c \
     ORDER BY v DESC LIMIT 5",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
];

/// [`ROWS`] requests and replication samples in us-east over the last ten
/// minutes, written by the collector, so the pages' default hour reads them.
fn fill(data: &Path) {
    let now_us = SystemClock.now_us();
    let c = common::collector(data, "us-east", now_us);
    let span_us = 600_000_000;
    for n in 0..ROWS {
        let ts_us = now_us - span_us + n * (span_us / ROWS);
        c.ingest(Event::Request(RequestEvent {
            ts_us,
            region: "us-east".into(),
            op: "get".into(),
            class: "likes".into(),
            status: if n % 50 == 0 { 503 } else { 200 },
            latency_us: 1_000 + n % 997,
            consistency: "local".into(),
            served_by: "us-east".into(),
            client_geo: String::new(),
        }));
        c.ingest(Event::Replication(ReplicationEvent {
            ts_us,
            src: "us-west".into(),
            dst: "us-east".into(),
            lag_ms: n % 300,
            backlog_ops: 0,
            backlog_bytes: 0,
            applied_ops: 1,
            batches: 1,
            heartbeats: 0,
            ..Default::default()
        }));
    }
    c.flush().unwrap();
}

/// Two regions (nobody listening: the overview finds them unreachable at
/// once), two alert rules over the tables evaluated every 250 ms, and
/// these `[web]` SQL settings.
fn config(dir: &Path, sql_timeout: Duration, max_concurrent: usize) -> PathBuf {
    let path = dir.join("parallax.toml");
    std::fs::write(
        &path,
        format!(
            "[cluster]\nclient_token = \"c\"\nadmin_token = \"a\"\npeer_secret = \"p\"\n\n\
             [regions.us-east]\nlisten = \"127.0.0.1:{}\"\nlocation = {{ lat = 39.0, lon = -77.5 }}\n\n\
             [regions.us-west]\nlisten = \"127.0.0.1:{}\"\nlocation = {{ lat = 45.6, lon = -121.2 }}\n\n\
             [classes.likes]\nconflict = \"gcounter\"\n\n\
             [web]\neval_interval_ms = 250\nsql_timeout_ms = {}\nsql_max_concurrent = {max_concurrent}\n\n\
             [alerts.lag_high]\nkind = \"lag\"\nthreshold_ms = 250\n\n\
             [alerts.errors]\nkind = \"sql\"\n\
             sql = \"SELECT region, count(*) AS value FROM requests WHERE status >= 500 GROUP BY region\"\n",
            common::free_port(),
            common::free_port(),
            sql_timeout.as_millis()
        ),
    )
    .unwrap();
    path
}

/// A data directory with the collector's files and `parallax web` over it.
fn serve(sql_timeout: Duration, max_concurrent: usize) -> (tempfile::TempDir, Web, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data);
    let web = Web::start(&config(dir.path(), sql_timeout, max_concurrent), &data);
    let url = web.url.clone();
    (dir, web, url)
}

/// CPU time the process has used (utime + stime of /proc/<pid>/stat), in
/// seconds (the kernel counts it in ticks of USER_HZ = 100 a second).
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks = |field: usize| fields[field - 3].parse::<u64>().unwrap();
    (ticks(14) + ticks(15)) as f64 / 100.0
}

/// Cores the process keeps busy over `window`.
async fn cores_busy(pid: u32, window: Duration) -> f64 {
    let before = cpu_s(pid);
    tokio::time::sleep(window).await;
    (cpu_s(pid) - before) / window.as_secs_f64()
}

/// What [`watch`] saw while a query ran.
#[derive(Debug, Default)]
struct Watched {
    /// Requests made.
    requests: usize,
    /// The slowest answer and its path.
    worst: (Duration, String),
    /// How old the oldest rule's last evaluation was at most, as
    /// `/api/v1/alerts` said (`evaluated_at` is to the second, so up to 1 s
    /// more than the truth).
    alerts_age: Duration,
}

/// Asks `/`, `/api/v1/overview` and `/api/v1/alerts` in turn, one every
/// 200 ms, until `done`; every answer must be a 200.
async fn watch(http: reqwest::Client, url: String, done: Arc<AtomicBool>) -> Watched {
    let mut seen = Watched::default();
    for path in ["/", "/api/v1/overview", "/api/v1/alerts"].iter().cycle() {
        if done.load(Ordering::SeqCst) {
            break;
        }
        let asked = Instant::now();
        let answer = http
            .get(format!("{url}{path}"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(answer.status(), 200, "{path}");
        let body = answer.bytes().await.unwrap();
        let took = asked.elapsed();
        seen.requests += 1;
        if took > seen.worst.0 {
            seen.worst = (took, (*path).to_owned());
        }
        if *path == "/api/v1/alerts" {
            let v: Value = serde_json::from_slice(&body).unwrap();
            let now_us = SystemClock.now_us() as i64;
            let oldest_us = v["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let at = r["evaluated_at"].as_str().unwrap_or("never");
                    parse_time("evaluated_at", at).unwrap_or(0)
                })
                .min()
                .unwrap();
            let age = Duration::from_micros(now_us.saturating_sub(oldest_us) as u64);
            seen.alerts_age = seen.alerts_age.max(age);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    seen
}

/// Pages once, so the figures below are of a warm server, and returns the
/// cores it keeps busy at rest (alert evaluation every 250 ms).
async fn warm_up(http: &reqwest::Client, url: &str, pid: u32) -> f64 {
    for path in ["/", "/api/v1/overview", "/api/v1/alerts"] {
        let r = http.get(format!("{url}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    cores_busy(pid, Duration::from_secs(2)).await
}

async fn post_sql(http: &reqwest::Client, url: &str, sql: &str) -> (u16, Value) {
    let r = http
        .post(format!("{url}/api/v1/sql"))
        .json(&json!({ "sql": sql }))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_queries_stop_at_their_time_limit_and_pages_and_alerts_keep_answering() {
    let _serial = SERIAL.lock().await;
    let (_dir, server, url) = serve(LIMIT, 4);
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let at_rest = warm_up(&http, &url, pid).await;
    eprintln!("at rest (alerts evaluated every 250 ms): {at_rest:.2} cores");
    for sql in RUNAWAYS {
        let done = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch(http.clone(), url.clone(), Arc::clone(&done)));
        let cpu_before = cpu_s(pid);
        let sent = Instant::now();
        let (status, body) = post_sql(&http, &url, sql).await;
        let took = sent.elapsed();
        let busy = (cpu_s(pid) - cpu_before) / took.as_secs_f64();
        done.store(true, Ordering::SeqCst);
        let seen = watcher.await.unwrap();
        // The query's operators stopped with it: the CPU is back to rest.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = cores_busy(pid, Duration::from_secs(2)).await;
        eprintln!(
            "{sql}\n  answered {status} after {took:.2?} ({busy:.2} cores busy); {} page requests, \
             slowest {:?} ({}); alerts evaluated at most {:?} before; 1-3 s after: {after:.2} cores",
            seen.requests, seen.worst.0, seen.worst.1, seen.alerts_age
        );

        assert_eq!(
            (status, body["error"].as_str()),
            (408, Some("time_limit")),
            "{sql}: {body}"
        );
        assert!(
            took.abs_diff(LIMIT) <= Duration::from_secs(2),
            "{sql}: refused after {took:?}, the limit is {LIMIT:?}"
        );
        assert!(
            busy > 0.3,
            "{sql}: the query kept only {busy:.2} cores busy: did it run?"
        );
        assert!(
            seen.requests >= 10,
            "{sql}: only {} page requests",
            seen.requests
        );
        assert!(
            seen.worst.0 < Duration::from_secs(1),
            "{sql}: {} took {:?} while the query ran",
            seen.worst.1,
            seen.worst.0
        );
        assert!(
            seen.alerts_age < Duration::from_millis(2_500),
            "{sql}: the alert rules were not evaluated for {:?}",
            seen.alerts_age
        );
        assert!(
            after < 0.2,
            "{sql}: {after:.2} cores busy 1-3 s after the query was refused"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_whose_client_went_away_stops_and_frees_its_slot() {
    let _serial = SERIAL.lock().await;
    // A time limit far away, and room for one user query.
    let (_dir, server, url) = serve(Duration::from_secs(120), 1);
    let pid = server.child.id();
    let http = reqwest::Client::new();
    let at_rest = warm_up(&http, &url, pid).await;
    eprintln!("at rest (alerts evaluated every 250 ms): {at_rest:.2} cores");

    let gives_up = Duration::from_secs(3);
    let client = http.clone();
    let sent = url.clone();
    let runaway = tokio::spawn(async move {
        client
            .post(format!("{sent}/api/v1/sql"))
            .json(&json!({ "sql": RUNAWAYS[0] }))
            .timeout(gives_up)
            .send()
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let running = cores_busy(pid, Duration::from_secs(1)).await;
    // Over the bound: told so after waiting a moment.
    let asked = Instant::now();
    let (status, body) = post_sql(&http, &url, "SELECT 1").await;
    let waited = asked.elapsed();
    let gone = runaway.await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = cores_busy(pid, Duration::from_secs(2)).await;
    eprintln!(
        "running: {running:.2} cores; a second query answered {status} after {waited:.2?}; \
         1-3 s after the client left: {after:.2} cores"
    );

    assert!(
        running > 0.3,
        "the query keeps only {running:.2} cores busy: did it run?"
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("busy")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("web.sql_max_concurrent") && detail.contains("Fix:"),
        "{detail}"
    );
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(2),
        "answered busy after {waited:?}"
    );
    assert!(
        gone.as_ref().is_err_and(reqwest::Error::is_timeout),
        "the client gave up: {gone:?}"
    );
    assert!(
        after < 0.2,
        "{after:.2} cores busy 1-3 s after the client went away"
    );
    // Its slot is free again.
    let (status, body) = post_sql(&http, &url, "SELECT 1 AS one").await;
    assert_eq!((status, &body["rows"]), (200, &json!([[1]])), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_five_megabyte_sql_body_gets_a_413_naming_the_limit() {
    let _serial = SERIAL.lock().await;
    let (_dir, _server, url) = serve(LIMIT, 4);
    let body = json!({ "sql": format!("SELECT 1 -- {}", "x".repeat(5 << 20)) }).to_string();

    // A client that sends its whole body before it reads the answer (as
    // Python's requests does), over a link slower than loopback: every
    // write must go through, then the answer is a 413 it can read.
    let addr = url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /api/v1/sql HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    for (n, chunk) in body.as_bytes().chunks(256 << 10).enumerate() {
        if let Err(e) = tcp.write_all(chunk).await {
            panic!(
                "the server broke the connection after {} bytes of the body: {e}",
                n << 18
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, json) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    let v: Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["error"], "payload_too_large", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 MiB") && detail.contains("Fix:"),
        "{detail}"
    );

    // And through reqwest.
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{url}/api/v1/sql"))
        .header("content-type", "application/json")
        .body(body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);

    // Under the body limit but over the SQL text limit: 413 too.
    let (status, body) = post_sql(
        &http,
        &url,
        &format!("SELECT 1 -- {}", "x".repeat(100 << 10)),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("too_large")),
        "{body}"
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("65536-byte limit") && detail.contains("Fix:"),
        "{detail}"
    );

    // The connection was left in order: the next query is answered.
    let (status, body) = post_sql(&http, &url, "SELECT 1 AS one").await;
    assert_eq!((status, &body["rows"]), (200, &json!([[1]])), "{body}");
}
