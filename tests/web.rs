//! End to end: `parallax sql` and `parallax web` as a user runs them on a
//! data directory the collector wrote.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Web, run};
use parallax_collector::{Collector, CollectorOptions};
use parallax_core::clock::ManualClock;
use parallax_core::config::CollectorConfig;
use parallax_core::telemetry::{Event, RequestEvent};
use serde_json::{Value, json};

/// 2026-11-28T04:00:00Z: an hour before ten, as `hour=4`.
const T0: u64 = 1_795_838_400_000_000;

/// 50 requests in us-east from T0, one a second, every fifth a 503.
fn fill(data: &Path) {
    let c = Collector::new(
        CollectorOptions {
            root: data.join("tables"),
            region: "us-east".into(),
            config: CollectorConfig::default(),
            probe_urls: BTreeMap::new(),
            tokens: vec![],
            clock: Arc::new(ManualClock::new(T0 / 1_000)),
            links: None,
        },
        None,
    )
    .unwrap();
    for n in 0..50u64 {
        c.ingest(Event::Request(RequestEvent {
            ts_us: T0 + n * 1_000_000,
            region: "us-east".into(),
            op: "get".into(),
            class: "likes".into(),
            status: if n % 5 == 0 { 503 } else { 200 },
            latency_us: 1_000 + n,
            consistency: "local".into(),
            served_by: "us-east".into(),
            client_geo: String::new(),
        }));
    }
    c.flush().unwrap();
}

/// Sends SIGTERM and waits (15 s at most) for the exit status.
async fn terminate(web: &mut Web) -> std::process::ExitStatus {
    let sent = Command::new("kill")
        .args(["-TERM", &web.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(s) = web.child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "parallax web ignored SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The JSON a request answers.
async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallax_sql_prints_what_parallax_web_answers_and_the_server_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data);
    let data_arg = data.to_str().unwrap();
    let sql = "SELECT status, count(*) AS n FROM requests \
               WHERE region = 'us-east' AND date = DATE '2026-11-28' AND hour = 4 \
               GROUP BY status ORDER BY status";

    let (code, out, err) = run(
        &["sql", "--data-dir", data_arg, "--format", "json", sql],
        dir.path(),
    );
    assert_eq!(code, 0, "{err}");
    let cli: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cli["columns"], json!(["status", "n"]));
    assert_eq!(cli["rows"], json!([[200, 40], [503, 10]]));
    let (code, _, err) = run(
        &["sql", "--data-dir", data_arg, "DROP TABLE requests"],
        dir.path(),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("only read-only queries"), "{err}");

    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/three-regions.toml");
    let mut web = Web::start(&config, &data);
    let url = web.url.clone();
    let http = reqwest::Client::new();

    let api = json_of(
        http.post(format!("{url}/api/v1/sql"))
            .json(&json!({ "sql": sql })),
    )
    .await;
    assert_eq!(
        (&api["columns"], &api["rows"]),
        (&cli["columns"], &cli["rows"])
    );
    // The latency page's JSON twin counts the same requests.
    let latency = json_of(http.get(format!(
        "{url}/api/v1/latency?range=custom&from={}&to={}&region=us-east",
        T0 - 600_000_000,
        T0 + 3_600_000_000
    )))
    .await;
    let us_east = &latency["data"]["regions"][0];
    assert_eq!(us_east["region"], "us-east", "{latency}");
    assert_eq!(us_east["requests"], 50, "{latency}");
    assert_eq!(us_east["error_pct"], 20.0, "{latency}");

    // SIGTERM: it stops serving and exits 0.
    let status = terminate(&mut web).await;
    assert!(status.success(), "{status}");
}

/// A notice whose first attempt failed is retried before a SIGTERMed web
/// app exits: what it was delivering is not lost to a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_web_app_finishes_delivering_its_notices() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let attempts = Arc::new(AtomicUsize::new(0));
    let seen = attempts.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    let receiving = tokio::spawn(async move { axum::serve(listener, receiver).await });

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/three-regions.toml"),
    )
    .unwrap();
    assert!(
        example.contains("eval_interval_ms = 5000"),
        "the example's [web] moved"
    );
    let example = example.replace("eval_interval_ms = 5000", "eval_interval_ms = 200");
    let config = dir.path().join("parallax.toml");
    std::fs::write(
        &config,
        format!(
            "{example}\n\
             [alerts.always]\nkind = \"sql\"\nsql = \"SELECT 'x' AS what\"\nnotify = [\"hook\"]\n\n\
             [notifiers.hook]\nkind = \"webhook\"\nurl = \"{hook}\"\nmax_attempts = 3\n"
        ),
    )
    .unwrap();
    let mut web = Web::start(&config, &data);
    let deadline = Instant::now() + Duration::from_secs(30);
    while attempts.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the alert never fired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first attempt failed; its retry is due in about 200 ms.
    let status = terminate(&mut web).await;
    assert!(status.success(), "{status}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "the retry was made before the web app exited"
    );
    receiving.abort();
}
