//! The router's layer stack: each lane of requests (pages and their JSON
//! twins; user SQL and admin actions) has a bound on how many are served at
//! once, a request past it is answered 503 with `Retry-After` at once, and
//! the other lane keeps answering; every request is traced with its method,
//! path, status and latency.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use parallax_core::clock::SystemClock;
use parallax_core::config::Config;
use parallax_web::{App, RequestLimits, SqlEngine, SqlLimits, router_with_limits};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The tests of this file take turns: tracing caches, per call site,
/// whether any subscriber wants its events, and a call site first reached
/// by another test while the capturing subscriber is being installed can
/// stay cached as unwanted.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Room for two pages and one SQL query or action at once.
const SMALL: RequestLimits = RequestLimits { pages: 2, work: 1 };

/// An app over empty tables whose regions all sit at an address that takes
/// connections and never answers: the overview waits its 2 s readiness
/// limit for each, so an overview request stays in flight that long.
async fn app(sql: SqlLimits) -> (tempfile::TempDir, axum::Router) {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    let mut config = Config::from_toml(
        include_str!("../../deploy/examples/three-regions.toml"),
        "three-regions.toml",
    )
    .unwrap();
    for r in config.regions.values_mut() {
        r.advertise = Some(format!("http://{addr}"));
    }
    let dir = tempfile::tempdir().unwrap();
    let e = SqlEngine::open(dir.path(), sql).await.unwrap();
    let app = App::new(e, config, Arc::new(SystemClock));
    (dir, router_with_limits(app, SMALL))
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn post_sql(sql: &str) -> Request<Body> {
    Request::post("/api/v1/sql")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "sql": sql }).to_string()))
        .unwrap()
}

/// Status, `Retry-After` and JSON body of an answer, and how long it took.
async fn ask(app: &axum::Router, req: Request<Body>) -> (StatusCode, String, Value, Duration) {
    let asked = Instant::now();
    let resp = app.clone().oneshot(req).await.unwrap();
    let took = asked.elapsed();
    let status = resp.status();
    let retry = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    let v = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, retry, v, took)
}

fn overloaded(status: StatusCode, retry: &str, v: &Value, took: Duration, what: &str) {
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(retry, "1", "a 503 says when to retry");
    assert_eq!(v["error"], "overloaded", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains(what) && detail.contains("Fix:"), "{detail}");
    assert!(
        took < Duration::from_millis(500),
        "answered after {took:?}: refused at once, not queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_past_their_bound_are_told_to_retry_and_sql_still_answers() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_dir, app) = app(SqlLimits::default()).await;
    let slow: Vec<_> = (0..SMALL.pages)
        .map(|_| tokio::spawn(ask_owned(app.clone(), get("/api/v1/overview"))))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, retry, v, took) = ask(&app, get("/?range=1h")).await;
    overloaded(status, &retry, &v, took, "2 page and JSON requests");
    let (status, retry, v, took) = ask(&app, get("/api/v1/alerts")).await;
    overloaded(status, &retry, &v, took, "2 page and JSON requests");
    // The other lane and the health check are not held up.
    let (status, _, v, _) = ask(&app, post_sql("SELECT 1 AS one")).await;
    assert_eq!((status, &v["rows"]), (StatusCode::OK, &json!([[1]])), "{v}");
    let (status, _, _, _) = ask(&app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK);

    for s in slow {
        let (status, _, v, took) = s.await.unwrap();
        assert_eq!(status, StatusCode::OK, "{v}");
        assert!(took >= Duration::from_secs(2), "held for {took:?}");
    }
    // Their slots are free again.
    let (status, _, v, _) = ask(&app, get("/api/v1/alerts")).await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_past_its_bound_is_told_to_retry_and_pages_still_answer() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_dir, app) = app(SqlLimits {
        timeout: Duration::from_secs(2),
        ..SqlLimits::default()
    })
    .await;
    let runaway = tokio::spawn(ask_owned(
        app.clone(),
        post_sql("SELECT count(*) FROM generate_series(1, 100000000000)"),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, retry, v, took) = ask(&app, post_sql("SELECT 1 AS one")).await;
    overloaded(status, &retry, &v, took, "1 SQL queries and admin actions");
    let form = Request::post("/alerts/silence")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            "matchers=alertname%3Dlag_high&admin_token=demo-admin-token",
        ))
        .unwrap();
    let (status, retry, v, took) = ask(&app, form).await;
    overloaded(status, &retry, &v, took, "1 SQL queries and admin actions");
    // Pages are not held up by the query.
    for uri in ["/api/v1/alerts", "/api/v1/replication?range=1h", "/latency"] {
        let (status, _, v, took) = ask(&app, get(uri)).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {v}");
        assert!(took < Duration::from_secs(1), "{uri} took {took:?}");
    }

    let (status, _, v, _) = runaway.await.unwrap();
    assert_eq!(
        (status, &v["error"]),
        (StatusCode::REQUEST_TIMEOUT, &json!("time_limit"))
    );
    // Its slot is free again.
    let (status, _, v, _) = ask(&app, post_sql("SELECT 1 AS one")).await;
    assert_eq!((status, &v["rows"]), (StatusCode::OK, &json!([[1]])), "{v}");
}

async fn ask_owned(app: axum::Router, req: Request<Body>) -> (StatusCode, String, Value, Duration) {
    ask(&app, req).await
}

/// Collects the fields of every span and event (an event's with the
/// fields of the span it happened in).
#[derive(Default)]
struct Capture {
    next: AtomicU64,
    spans: Mutex<HashMap<u64, Vec<(String, String)>>>,
    entered: Mutex<Vec<u64>>,
    events: Mutex<Vec<HashMap<String, String>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, attrs: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let mut fields = vec![("span".to_owned(), attrs.metadata().name().to_owned())];
        attrs.record(&mut Fields(&mut fields));
        self.spans.lock().unwrap().insert(id, fields);
        tracing::span::Id::from_u64(id)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        if let Some(id) = self.entered.lock().unwrap().last() {
            fields.extend(self.spans.lock().unwrap()[id].iter().cloned());
        }
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push(fields.into_iter().collect());
    }
    fn enter(&self, id: &tracing::span::Id) {
        self.entered.lock().unwrap().push(id.into_u64());
    }
    fn exit(&self, _: &tracing::span::Id) {
        self.entered.lock().unwrap().pop();
    }
}

#[tokio::test]
async fn every_request_is_traced_with_method_path_status_and_latency() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let (_dir, app) = app(SqlLimits::default()).await;
    let capture = Arc::new(Capture::default());
    let _traced = tracing::subscriber::set_default(Arc::clone(&capture));
    tracing::callsite::rebuild_interest_cache();
    for (req, status) in [
        (get("/api/v1/alerts"), StatusCode::OK),
        (post_sql("DROP TABLE requests"), StatusCode::FORBIDDEN),
        (get("/nowhere?secret=1"), StatusCode::NOT_FOUND),
    ] {
        assert_eq!(ask(&app, req).await.0, status);
    }
    let events = capture.events.lock().unwrap();
    let answered: Vec<_> = events
        .iter()
        .filter(|e| e.get("span").is_some_and(|s| s == "request") && e.contains_key("status"))
        .map(|e| {
            assert!(
                e["latency_ms"].parse::<f64>().is_ok_and(|ms| ms >= 0.0),
                "{e:?}"
            );
            (
                e["method"].as_str(),
                e["path"].as_str(),
                e["status"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("GET", "/api/v1/alerts", "200"),
            ("POST", "/api/v1/sql", "403"),
            ("GET", "/nowhere", "404"),
        ],
        "the query string (which may hold SQL) is left out"
    );
}
