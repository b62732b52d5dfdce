//! End to end: `parallax sql` and `parallax web` as a user runs them on a
//! data directory the collector wrote.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Web, run};
use parallax_core::clock::Clock;
use parallax_core::telemetry::{Event, RequestEvent};
use serde_json::{Value, json};

/// 2026-11-28T04:00:00Z: an hour before ten, as `hour=4`.
const T0: u64 = 1_795_838_400_000_000;

/// 50 requests in us-east from T0, one a second, every fifth a 503.
fn fill(data: &Path) {
    let c = common::collector(data, "us-east", T0);
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

/// A receiver answering every notice with `status`; its URL.
async fn receiver(status: u16) -> (String, tokio::task::JoinHandle<()>) {
    let code = axum::http::StatusCode::from_u16(status).unwrap();
    let app = axum::Router::new().route("/hook", axum::routing::post(move || async move { code }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let serving = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, serving)
}

/// The value of the series of `name` whose labels include every one of
/// `labels` (`key="value"`), if `text` has one.
fn series(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let rest = series.strip_prefix(name)?;
        let matches = if labels.is_empty() {
            rest.is_empty()
        } else {
            rest.starts_with('{') && labels.iter().all(|l| rest.contains(l))
        };
        matches.then(|| value.parse().ok()).flatten()
    })
}

/// `parallax web` exports its own metrics: its requests by route template
/// and status, user and app queries by outcome, each rule's evaluations
/// (a rule whose query fails counts as failed) and alerts, and notices
/// delivered or failed by notifier; promtool accepts the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallax_web_exports_its_requests_queries_evaluations_and_deliveries() {
    let (ok_hook, ok_serving) = receiver(200).await;
    let (down_hook, down_serving) = receiver(500).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    fill(&data);
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/three-regions.toml"),
    )
    .unwrap()
    .replace("eval_interval_ms = 5000", "eval_interval_ms = 200");
    let config = dir.path().join("parallax.toml");
    std::fs::write(
        &config,
        format!(
            "{example}\n\
             [alerts.always]\nkind = \"sql\"\nsql = \"SELECT 'x' AS what\"\nnotify = [\"oncall\", \"down\"]\n\n\
             [alerts.broken]\nkind = \"sql\"\nsql = \"SELECT no_such_column FROM requests\"\n\n\
             [notifiers.oncall]\nkind = \"webhook\"\nurl = \"{ok_hook}\"\n\n\
             [notifiers.down]\nkind = \"webhook\"\nurl = \"{down_hook}\"\nmax_attempts = 1\n"
        ),
    )
    .unwrap();
    let web = Web::start(&config, &data);
    let url = web.url.clone();
    let http = reqwest::Client::new();
    let sql = |q: &str| {
        http.post(format!("{url}/api/v1/sql"))
            .json(&json!({ "sql": q }))
            .send()
    };
    assert_eq!(
        sql("SELECT count(*) FROM requests").await.unwrap().status(),
        200
    );
    assert_eq!(
        sql("SELECT nope FROM requests").await.unwrap().status(),
        400
    );
    let page = http.get(format!("{url}/replication")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let missing = http
        .get(format!("{url}/no/such/page"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // Wait for a delivery through each notifier.
    let scrape = || async {
        let resp = http.get(format!("{url}/metrics")).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        resp.text().await.unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let text = loop {
        let text = scrape().await;
        let delivered = |notifier: &str, outcome: &str| {
            series(
                &text,
                "parallax_notifications_total",
                &[
                    &format!("notifier=\"{notifier}\""),
                    &format!("outcome=\"{outcome}\""),
                ],
            )
            .is_some_and(|n| n >= 1.0)
        };
        if delivered("oncall", "ok") && delivered("down", "failed") {
            break text;
        }
        assert!(Instant::now() < deadline, "no deliveries counted:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_least = |name: &str, labels: &[&str], want: f64| {
        let got = series(&text, name, labels);
        assert!(
            got.is_some_and(|v| v >= want),
            "{name}{labels:?} = {got:?}, want at least {want}:\n{text}"
        );
    };
    let exactly = |name: &str, labels: &[&str], want: f64| {
        let got = series(&text, name, labels);
        assert_eq!(got, Some(want), "{name}{labels:?}:\n{text}");
    };
    let requests = "parallax_web_requests_total";
    exactly(
        requests,
        &[
            r#"route="/api/v1/sql""#,
            r#"method="POST""#,
            r#"status="200""#,
        ],
        1.0,
    );
    exactly(
        requests,
        &[r#"route="/api/v1/sql""#, r#"status="400""#],
        1.0,
    );
    exactly(requests, &[r#"route="unmatched""#, r#"status="404""#], 1.0);
    exactly(
        requests,
        &[r#"route="/replication""#, r#"status="200""#],
        1.0,
    );
    let queries = "parallax_sql_queries_total";
    exactly(queries, &[r#"source="user""#, r#"outcome="ok""#], 1.0);
    exactly(
        queries,
        &[r#"source="user""#, r#"outcome="invalid_query""#],
        1.0,
    );
    // The page's and the rules' own queries.
    at_least(queries, &[r#"source="app""#, r#"outcome="ok""#], 2.0);
    at_least(
        queries,
        &[r#"source="app""#, r#"outcome="invalid_query""#],
        1.0,
    );
    exactly("parallax_sql_queries_running", &[r#"source="user""#], 0.0);
    let evaluations = "parallax_alert_evaluations_total";
    at_least(
        evaluations,
        &[r#"rule="broken""#, r#"outcome="failed""#],
        1.0,
    );
    at_least(evaluations, &[r#"rule="always""#, r#"outcome="ok""#], 1.0);
    assert_eq!(
        series(&text, evaluations, &[r#"rule="broken""#, r#"outcome="ok""#]),
        None,
        "{text}"
    );
    exactly(
        "parallax_alerts",
        &[r#"rule="always""#, r#"state="firing""#],
        1.0,
    );
    exactly(
        "parallax_alerts",
        &[r#"rule="broken""#, r#"state="firing""#],
        0.0,
    );
    let last = series(
        &text,
        "parallax_alert_last_evaluation_timestamp_seconds",
        &[],
    )
    .unwrap();
    let now = parallax_core::clock::SystemClock.now_us() as f64 / 1e6;
    assert!((now - last).abs() < 30.0, "last round at {last}, now {now}");
    common::promtool_check_metrics(&text);
    drop(web);
    ok_serving.abort();
    down_serving.abort();
}
