//! The change feed: pages in order with cursors, long polling, the stream
//! (Server-Sent Events) with heartbeats and `Last-Event-ID`, positions that
//! keep growing across restarts, retention, bad input; and the client's
//! feed-kept cache, which never serves a version older than one its feed
//! delivered.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Method, Request, StatusCode};
use parallax_core::api::{CacheReport, EntityOp};
use parallax_core::cache::{CacheSettings, FeedCache};
use parallax_core::client::{FeedItem, RegionClient, WriteOptions};
use parallax_core::config::Config;
use parallax_core::transport::HttpTransport;
use parallax_replicator::{Node, NodeOptions, api};
use serde_json::{Value, json};
use tower::ServiceExt;

fn config(extra: &str) -> Arc<Config> {
    let text = format!(
        r#"
[cluster]
client_token = "client-secret"
admin_token = "admin-secret"
peer_secret = "peer-secret"
primary = "here"

[regions.here]
listen = "127.0.0.1:1"
location = {{ lat = 0.0, lon = 0.0 }}
[regions.there]
listen = "127.0.0.1:2"
location = {{ lat = 10.0, lon = 10.0 }}

[classes.likes]
conflict = "gcounter"
[classes.settings]
conflict = "lww"
{extra}
"#
    );
    Arc::new(Config::from_toml(&text, "feed-test.toml").unwrap())
}

async fn start(config: Arc<Config>, dir: &std::path::Path) -> (Node, Router) {
    // `there` never runs: shipping to it fails and retries, which must not
    // disturb the feed.
    let transport = HttpTransport::new(
        "here",
        BTreeMap::from([("there".to_owned(), "http://127.0.0.1:9".to_owned())]),
        "peer-secret",
        Duration::from_millis(200),
    );
    let transport = Arc::new(transport);
    // A node stopped just before may still be letting go of the store.
    let mut tries = 0;
    let node = loop {
        match Node::start(NodeOptions::new(
            Arc::clone(&config),
            "here",
            dir.to_owned(),
            transport.clone(),
        ))
        .await
        {
            Ok(n) => break n,
            Err(e) if tries < 50 && e.to_string().contains("already open") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    let app = api::router(node.clone());
    (node, app)
}

async fn call(
    app: &Router,
    method: Method,
    uri: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let req = req
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 22).await.unwrap();
    let value =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
    (status, value)
}

const T: Option<&str> = Some("client-secret");

async fn get(app: &Router, uri: &str) -> Value {
    let (status, body) = call(app, Method::GET, uri, T, "").await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    body
}

fn seqs(page: &Value) -> Vec<u64> {
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_feed_lists_every_change_in_order_and_resumes_from_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let (node, app) = start(config(""), dir.path()).await;
    let incr = r#"{"op":"incr","by":2}"#;
    call(&app, Method::POST, "/v1/entities/likes/a/ops", T, incr).await;
    call(
        &app,
        Method::PUT,
        "/v1/entities/settings/b",
        T,
        r#"{"theme":"dark"}"#,
    )
    .await;
    call(&app, Method::POST, "/v1/entities/likes/a/ops", T, incr).await;

    let page = get(&app, "/v1/changes").await;
    let changes = page["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 3, "{page}");
    let s = seqs(&page);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "positions grow: {s:?}");
    assert_eq!(page["next"], s[2]);
    assert_eq!(page["head"], s[2]);
    assert_eq!(page["region"], "here");
    assert_eq!(changes[0]["class"], "likes");
    assert_eq!(changes[0]["key"], "a");
    assert_eq!(changes[0]["value"], 2);
    assert_eq!(changes[0]["source"], "local");
    assert_eq!(changes[0]["deleted"], false);
    assert_eq!(changes[1]["value"], json!({"theme": "dark"}));
    assert_eq!(changes[2]["value"], 4);
    assert!(
        changes[2]["version"]["here"].as_u64().unwrap()
            > changes[0]["version"]["here"].as_u64().unwrap()
    );
    // System classes (the ownership and rollout records) stay out.
    assert!(
        changes
            .iter()
            .all(|c| !c["class"].as_str().unwrap().starts_with('_'))
    );

    // From a cursor, by class, by page.
    let rest = get(&app, &format!("/v1/changes?after={}", s[0])).await;
    assert_eq!(seqs(&rest), s[1..]);
    let likes = get(&app, "/v1/changes?class=likes").await;
    assert_eq!(seqs(&likes), vec![s[0], s[2]]);
    let one = get(&app, "/v1/changes?limit=1").await;
    assert_eq!(seqs(&one), vec![s[0]]);
    assert_eq!(one["next"], s[0]);
    let now = get(&app, "/v1/changes?after=head").await;
    assert!(seqs(&now).is_empty());
    assert_eq!(now["next"], s[2]);

    // Long polling: the answer comes when the next change is applied.
    let writer = {
        let app = app.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            call(&app, Method::PUT, "/v1/entities/settings/c", T, "7").await
        })
    };
    let started = Instant::now();
    let waited = get(&app, &format!("/v1/changes?after={}&wait_ms=5000", s[2])).await;
    let took = started.elapsed();
    assert_eq!(waited["changes"][0]["key"], "c", "{waited}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "{took:?}"
    );
    writer.await.unwrap();
    // Nothing new: the wait ends empty-handed at the deadline.
    let head = waited["next"].as_u64().unwrap();
    let started = Instant::now();
    let empty = get(&app, &format!("/v1/changes?after={head}&wait_ms=200")).await;
    assert!(seqs(&empty).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(200));
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bad_feed_requests_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (node, app) = start(config(""), dir.path()).await;
    call(&app, Method::PUT, "/v1/entities/settings/b", T, "1").await;
    let check = |got: (StatusCode, Value), status: StatusCode, code: &str, mention: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert_eq!(got.1["error"], code, "{}", got.1);
        let detail = got.1["detail"].as_str().unwrap();
        assert!(
            detail.contains(mention),
            "{detail:?} should mention {mention:?}"
        );
    };
    check(
        call(&app, Method::GET, "/v1/changes", None, "").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Bearer",
    );
    check(
        call(&app, Method::GET, "/v1/changes/stream", None, "").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Bearer",
    );
    check(
        call(&app, Method::GET, "/v1/changes?after=yesterday", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "after `yesterday`",
    );
    check(
        call(&app, Method::GET, "/v1/changes?limit=0", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit 0",
    );
    check(
        call(&app, Method::GET, "/v1/changes?limit=many", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "limit `many`",
    );
    check(
        call(&app, Method::GET, "/v1/changes?wait_ms=600000", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "wait_ms 600000",
    );
    check(
        call(&app, Method::GET, "/v1/changes?class=nope", T, "").await,
        StatusCode::NOT_FOUND,
        "unknown_class",
        "nope",
    );
    check(
        call(&app, Method::GET, "/v1/changes?class=_ownership", T, "").await,
        StatusCode::NOT_FOUND,
        "unknown_class",
        "_ownership",
    );
    check(
        call(&app, Method::GET, "/v1/changes?since=1", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "after=",
    );
    check(
        call(&app, Method::GET, "/v1/changes/stream?wait_ms=10", T, "").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "GET /v1/changes",
    );
    let head = get(&app, "/v1/changes").await["head"].as_u64().unwrap();
    let ahead = call(
        &app,
        Method::GET,
        &format!("/v1/changes?after={}", head + 10),
        T,
        "",
    )
    .await;
    check(
        ahead,
        StatusCode::GONE,
        "cursor_expired",
        &format!("after={head}"),
    );
    let ahead = call(
        &app,
        Method::GET,
        &format!("/v1/changes/stream?after={}", head + 10),
        T,
        "",
    )
    .await;
    check(ahead, StatusCode::GONE, "cursor_expired", "ahead");

    // Cache reports.
    let good = CacheReport {
        client: "c1".into(),
        location: "paris".into(),
        window_ms: 1000,
        reads: 3,
        hits: 2,
        misses: 1,
        settled: 2,
        stale_hits: 1,
        staleness_p99_ms: Some(12.5),
        ..CacheReport::default()
    };
    let body = serde_json::to_string(&good).unwrap();
    let (status, answer) = call(&app, Method::POST, "/v1/cache-reports", T, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    check(
        call(&app, Method::POST, "/v1/cache-reports", None, &body).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Bearer",
    );
    let wrong = serde_json::to_string(&CacheReport {
        reads: 4,
        ..good.clone()
    })
    .unwrap();
    check(
        call(&app, Method::POST, "/v1/cache-reports", T, &wrong).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "reads 4",
    );
    let nameless = serde_json::to_string(&CacheReport {
        client: String::new(),
        ..good.clone()
    })
    .unwrap();
    check(
        call(&app, Method::POST, "/v1/cache-reports", T, &nameless).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "client",
    );
    check(
        call(
            &app,
            Method::POST,
            "/v1/cache-reports",
            T,
            r#"{"client":"x","extra":1}"#,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "extra",
    );
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn positions_keep_growing_across_restarts_and_old_changes_are_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("[storage]\nfeed_max_entries = 3\ncheckpoint_interval_ms = 100\n");
    let (node, app) = start(Arc::clone(&cfg), dir.path()).await;
    for i in 0..6 {
        call(
            &app,
            Method::PUT,
            &format!("/v1/entities/settings/k{i}"),
            T,
            "1",
        )
        .await;
    }
    let before = get(&app, "/v1/changes?after=head").await["head"]
        .as_u64()
        .unwrap();
    node.shutdown(Duration::from_secs(5)).await;
    drop((node, app));

    let (node, app) = start(cfg, dir.path()).await;
    // Only the newest three are kept: a reader from the start must re-read.
    let (status, body) = call(&app, Method::GET, "/v1/changes?after=0", T, "").await;
    assert_eq!(status, StatusCode::GONE, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("re-read"),
        "{body}"
    );
    let kept = get(
        &app,
        &format!("/v1/changes?after={}", body_trimmed(&app).await),
    )
    .await;
    assert_eq!(seqs(&kept).len(), 3, "{kept}");
    assert_eq!(*seqs(&kept).last().unwrap(), before);
    // A reader at the old head resumes; what comes next has a larger position.
    let resumed = get(&app, &format!("/v1/changes?after={before}")).await;
    assert!(seqs(&resumed).is_empty());
    call(
        &app,
        Method::PUT,
        "/v1/entities/settings/after-restart",
        T,
        "2",
    )
    .await;
    let next = get(&app, &format!("/v1/changes?after={before}")).await;
    assert_eq!(next["changes"][0]["key"], "after-restart", "{next}");
    assert!(seqs(&next)[0] > before);
    node.shutdown(Duration::from_secs(5)).await;
}

async fn body_trimmed(app: &Router) -> u64 {
    get(app, "/v1/changes?after=head").await["trimmed"]
        .as_u64()
        .unwrap()
}

/// Serves `node` on a loopback socket; the client of it, and the server task.
async fn serve(
    app: Router,
) -> (
    RegionClient,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    let client = RegionClient::new("here", &format!("http://{addr}"))
        .with_tokens("client-secret", "admin-secret");
    (client, stop, server)
}

/// Ends the node's streams, stops its server and the node.
async fn stop_serving(
    node: &Node,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
) {
    node.close_streams();
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    node.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_stream_sends_each_change_then_heartbeats_and_resumes_after_the_last_event() {
    let dir = tempfile::tempdir().unwrap();
    let (node, app) = start(config(""), dir.path()).await;
    let (client, stop, server) = serve(app).await;
    let w = WriteOptions::default();
    client
        .put("settings", "first", &json!(1), &w)
        .await
        .unwrap();
    let mut stream = client.stream_changes(Some("head"), None).await.unwrap();
    client
        .put("settings", "second", &json!(2), &w)
        .await
        .unwrap();
    client
        .op("likes", "l", &EntityOp::Incr { by: 1 }, &w)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut beat = None;
    let deadline = Instant::now() + Duration::from_secs(5);
    // A heartbeat comes first (the reader is current), then the changes,
    // then heartbeats again.
    while beat.is_none() && Instant::now() < deadline {
        match stream.next().await.unwrap().unwrap() {
            FeedItem::Change(c) => got.push(*c),
            FeedItem::Heartbeat(h) if got.len() == 2 => beat = Some(h),
            FeedItem::Heartbeat(_) => {}
            FeedItem::Expired(e) => panic!("expired: {e:?}"),
        }
    }
    assert_eq!(
        got.iter().map(|c| c.key.as_str()).collect::<Vec<_>>(),
        ["second", "l"]
    );
    let beat = beat.expect("a heartbeat within 5 s");
    assert_eq!(beat.head, got[1].seq);
    assert_eq!(beat.region, "here");

    // An EventSource reconnecting sends Last-Event-ID: the stream resumes
    // after it.
    let http = reqwest::Client::new();
    let mut resp = http
        .get(format!("{}/v1/changes/stream", client.base_url()))
        .bearer_auth("client-secret")
        .header("last-event-id", got[0].seq.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut text = String::new();
    while !text.contains("event: heartbeat") {
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains(&format!("id: {}", got[1].seq)), "{text}");
    assert!(!text.contains(&format!("id: {}\n", got[0].seq)), "{text}");
    drop(resp);

    // Stopping the node ends open streams, so the server can stop.
    node.close_streams();
    let end = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends when the node closes it");
    assert!(matches!(end, Ok(None)), "{end:?}");
    stop_serving(&node, stop, server).await;
}

#[tokio::test]
async fn the_cache_never_serves_a_version_older_than_its_feed_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (node, app) = start(config(""), dir.path()).await;
    let (client, stop, server) = serve(app).await;
    let cache = FeedCache::start(
        client.clone(),
        CacheSettings {
            ttl: Duration::from_secs(60),
            max_staleness: Duration::from_secs(3),
            capacity: 1000,
            links: None,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cache.is_current() {
        assert!(
            Instant::now() < deadline,
            "the cache's feed never became current"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let w = WriteOptions::default();
    let mut reads = 0;
    for n in 1..=60u64 {
        client
            .op("likes", "k", &EntityOp::Incr { by: 1 }, &w)
            .await
            .unwrap();
        // Until the feed brings `n`, reads may serve the older value from
        // memory; once it has, never again.
        let seen = Instant::now();
        loop {
            let delivered = cache.delivered("likes", "k").and_then(|c| c.value.as_u64());
            let v = cache
                .get("likes", "k")
                .await
                .unwrap()
                .value
                .as_u64()
                .unwrap();
            reads += 1;
            if let Some(d) = delivered {
                assert!(v >= d, "read {v} after the feed delivered {d}");
            }
            if v == n {
                break;
            }
            assert!(
                seen.elapsed() < Duration::from_secs(3),
                "write {n} never reached the cache (it serves {v})"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for _ in 0..5 {
            assert_eq!(cache.get("likes", "k").await.unwrap().value, json!(n));
            reads += 1;
        }
    }
    // Settle what was served, and look at the counters.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let t = cache.totals();
    assert_eq!(t.reads, reads);
    assert!(t.hits >= 60 * 5 / 2, "{t:?}");
    assert!(t.invalidations >= 50, "{t:?}");
    assert!(t.settled >= t.hits * 9 / 10, "{t:?}");
    let report = cache.report("test", "here");
    assert_eq!(report.reads, t.reads);
    assert!(report.staleness_p99_ms.is_some(), "{report:?}");
    assert!(report.staleness_max_ms.unwrap() < 3_000.0, "{report:?}");
    client.report_cache(&report).await.unwrap();
    eprintln!(
        "cache on one region: {t:?}; p50 {:?} ms, p99 {:?} ms, max {:?} ms",
        report.staleness_p50_ms, report.staleness_p99_ms, report.staleness_max_ms
    );
    cache.stop().await;
    stop_serving(&node, stop, server).await;
}

/// Waits until `f` holds, at most `limit`.
async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_cache_whose_feed_is_held_stops_serving_from_memory_until_it_is_back() {
    use parallax_core::links::Links;
    let dir = tempfile::tempdir().unwrap();
    let (node, app) = start(config(""), dir.path()).await;
    let (client, stop, server) = serve(app).await;
    let links = Arc::new(Links::new());
    let max_staleness = Duration::from_millis(1500);
    let cache = FeedCache::start(
        client.clone(),
        CacheSettings {
            max_staleness,
            links: Some((Arc::clone(&links), "app".into())),
            ..CacheSettings::default()
        },
    );
    until("the feed is current", Duration::from_secs(5), || {
        cache.is_current()
    })
    .await;
    let w = WriteOptions::default();
    let incr = EntityOp::Incr { by: 1 };
    client.op("likes", "k", &incr, &w).await.unwrap();
    until("the cache fills", Duration::from_secs(5), || {
        cache.delivered("likes", "k").is_some()
    })
    .await;
    cache.get("likes", "k").await.unwrap();
    assert_eq!(cache.get("likes", "k").await.unwrap().value, json!(1));
    let hits = cache.totals().hits;
    assert!(hits >= 1, "{:?}", cache.totals());

    // The feed is held: the cache stops trusting memory within
    // max_staleness (and a heartbeat), and reads go to the region, fresh.
    links.cut("app", client.region());
    let cut = Instant::now();
    client.op("likes", "k", &incr, &w).await.unwrap();
    until(
        "the cache sees its feed silent",
        Duration::from_secs(4),
        || !cache.is_current(),
    )
    .await;
    assert!(cut.elapsed() >= max_staleness - Duration::from_millis(1100));
    assert_eq!(cache.get("likes", "k").await.unwrap().value, json!(2));
    assert!(cache.totals().bypassed >= 1, "{:?}", cache.totals());

    // Back: the held change arrives, the cache serves from memory again
    // and never the old version.
    links.heal_all();
    until("the feed is current again", Duration::from_secs(5), || {
        cache.is_current()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(cache.get("likes", "k").await.unwrap().value, json!(2));
    }
    assert!(cache.totals().hits > hits, "{:?}", cache.totals());
    cache.stop().await;
    stop_serving(&node, stop, server).await;
}

#[tokio::test]
async fn waiting_feed_readers_neither_starve_other_requests_nor_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("[limits]\nmax_concurrent_requests = 2\nmax_feed_readers = 3\n");
    let (node, app) = start(cfg, dir.path()).await;
    let (client, stop, server) = serve(app).await;
    let w = WriteOptions::default();
    client.put("settings", "s", &json!(1), &w).await.unwrap();
    // Two long polls and a stream wait: every feed place is taken, and more
    // than the two places of the other requests.
    let polls: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            tokio::spawn(async move { c.changes(Some("head"), None, None, Some(3_000)).await })
        })
        .collect();
    let stream = client.stream_changes(Some("head"), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A fourth reader is refused at once, naming the limit.
    let refused = client
        .changes(Some("head"), None, None, Some(1_000))
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(503), "{refused}");
    assert!(
        refused.to_string().contains("max_feed_readers"),
        "{refused}"
    );
    // Reads and writes are served meanwhile, at once.
    let started = Instant::now();
    for i in 0..5 {
        client
            .put("settings", &format!("k{i}"), &json!(i), &w)
            .await
            .unwrap();
        client
            .get("settings", "s", &Default::default())
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // The writes ended the polls' wait; a closed stream frees its place.
    for p in polls {
        let page = p.await.unwrap().unwrap();
        assert!(!page.changes.is_empty());
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let c = client.clone();
        let opened = (0..3).map(|_| c.stream_changes(Some("head"), None));
        let opened = in_turn(opened).await;
        if opened.iter().all(Result::is_ok) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the places were not given back: {opened:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_serving(&node, stop, server).await;
}

async fn in_turn<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut out = Vec::new();
    for f in fs {
        out.push(f.await);
    }
    out
}
