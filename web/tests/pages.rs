//! Every page and its JSON twin through the router, without a socket: they
//! answer, show the same figures, refuse bad filters with the fix, and keep
//! state-changing actions behind the admin token.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use parallax_core::api::CacheReport;
use parallax_core::clock::ManualClock;
use parallax_core::config::Config;
use parallax_core::telemetry::{
    AuditEvent, CacheEvent, ConflictEvent, DivergenceEvent, Event, FailoverEvent, ProbeEvent,
    ReplicationEvent, RequestEvent, TrafficEvent,
};
use parallax_core::traffic::PeerTraffic;
use parallax_core::transport::HttpTransport;
use parallax_replicator::{Node, NodeOptions, api};
use parallax_web::charts::num;
use parallax_web::{App, SqlEngine, SqlLimits};
use serde_json::Value;
use tower::ServiceExt;

/// 2026-11-28T10:00:00Z.
const T0: u64 = 1_795_860_000_000_000;
const MIN: u64 = 60_000_000;
const REGIONS: [&str; 3] = ["eu-west", "us-east", "us-west"];

fn fill(dir: &std::path::Path) {
    for (i, region) in REGIONS.iter().enumerate() {
        let c = common::collector(dir, region, T0);
        for n in 0..100u64 {
            let ts = T0 + n * MIN;
            c.ingest(Event::Request(RequestEvent {
                ts_us: ts,
                region: (*region).into(),
                op: "put".into(),
                class: "likes".into(),
                status: if n % 10 == 0 { 503 } else { 200 },
                latency_us: 1_000 * (i as u64 + 1) + n * 10,
                consistency: "local".into(),
                served_by: (*region).into(),
                client_geo: String::new(),
            }));
            for src in REGIONS.iter().filter(|s| *s != region) {
                c.ingest(Event::Replication(ReplicationEvent {
                    ts_us: ts,
                    src: (*src).into(),
                    dst: (*region).into(),
                    lag_ms: 10 * (i as u64 + 1) + n,
                    backlog_ops: n,
                    backlog_bytes: n * 100,
                    applied_ops: 2,
                    batches: 1,
                    heartbeats: 0,
                    ..Default::default()
                }));
            }
            for target in REGIONS {
                c.ingest(Event::Probe(ProbeEvent {
                    ts_us: ts,
                    vantage: (*region).into(),
                    target: target.into(),
                    latency_ms: 1.5,
                    // us-west stops answering for the last 10 minutes.
                    ok: !(target == "us-west" && n >= 90),
                }));
            }
            if n % 5 == 0 {
                c.ingest(Event::Conflict(ConflictEvent {
                    ts_us: ts,
                    region: (*region).into(),
                    class: "likes".into(),
                    key: format!("post-{n}"),
                    policy: "gcounter".into(),
                    outcome: "merged".into(),
                    resolution_ms: 40 + n,
                }));
            }
        }
        if *region == "us-east" {
            for (n, divergent) in [(30u64, 0u64), (60, 1)] {
                c.ingest(Event::Audit(AuditEvent {
                    ts_us: T0 + n * MIN,
                    audit_id: format!("audit-{n}"),
                    class: "balances".into(),
                    regions: REGIONS.iter().map(|r| (*r).to_owned()).collect(),
                    entities: 500,
                    differing: divergent + 2,
                    in_flight: 2,
                    divergent,
                    round_trips: 3,
                    bytes: 4_096,
                    duration_ms: 12,
                }));
            }
            c.ingest(Event::Divergence(DivergenceEvent {
                ts_us: T0 + 60 * MIN,
                audit_id: "audit-60".into(),
                class: "balances".into(),
                key: "acct-7".into(),
                regions: vec!["us-east".into(), "eu-west".into()],
                state: "divergent".into(),
                reason: "corruption".into(),
                first_seen_us: T0 + 55 * MIN,
                age_ms: 300_000,
            }));
            c.ingest(Event::Failover(FailoverEvent {
                ts_us: T0 + 95 * MIN,
                region: "us-east".into(),
                event: "ownership us-west -> us-east (epoch 1)".into(),
                ..Default::default()
            }));
        }
        c.flush().unwrap();
    }
}

async fn app() -> (tempfile::TempDir, axum::Router) {
    app_of(fill).await
}

/// The web app over tables `fill` writes.
async fn app_of(fill: fn(&std::path::Path)) -> (tempfile::TempDir, axum::Router) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let e = SqlEngine::open(dir.path(), SqlLimits::default())
        .await
        .unwrap();
    let mut config = Config::from_toml(
        include_str!("../../deploy/examples/three-regions.toml"),
        "three-regions.toml",
    )
    .unwrap();
    // us-east runs for real, so the overview finds it ready when it asks;
    // the other two are not running (a closed port), so they are unreachable.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed = "http://127.0.0.1:9".to_owned();
    for (name, r) in config.regions.iter_mut() {
        r.advertise = Some(if name == "us-east" {
            format!("http://{addr}")
        } else {
            closed.clone()
        });
    }
    let peers = BTreeMap::from([
        ("eu-west".to_owned(), closed.clone()),
        ("us-west".to_owned(), closed),
    ]);
    let transport = HttpTransport::new("us-east", peers, "peer", Duration::from_millis(200));
    let node = Node::start(NodeOptions::new(
        Arc::new(config.clone()),
        "us-east",
        dir.path().join("us-east-node"),
        Arc::new(transport),
    ))
    .await
    .unwrap();
    tokio::spawn(async move { axum::serve(listener, api::router(node)).await });
    // Two hours after the first event: the 6h range holds everything.
    let clock = Arc::new(ManualClock::new((T0 + 120 * MIN) / 1_000));
    (dir, parallax_web::router(App::new(e, config, clock)))
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, String) {
    let resp = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn post_form(app: &axum::Router, uri: &str, form: &str) -> (StatusCode, String, String) {
    let resp = app
        .clone()
        .oneshot(
            Request::post(uri)
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(form.to_owned()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get(header::LOCATION)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = to_bytes(resp.into_body(), 1 << 24).await.unwrap();
    (status, location, String::from_utf8(body.to_vec()).unwrap())
}

async fn json(app: &axum::Router, uri: &str) -> Value {
    let (status, body) = get(app, uri).await;
    assert_eq!(status, StatusCode::OK, "{uri}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn every_page_and_its_json_twin_answer() {
    let (_d, app) = app().await;
    for (page, api, title) in [
        ("/", "/api/v1/overview", "Overview"),
        ("/replication", "/api/v1/replication", "Replication"),
        ("/conflicts", "/api/v1/conflicts", "Conflicts"),
        ("/divergence", "/api/v1/divergence", "Divergence"),
        ("/latency", "/api/v1/latency", "Latency and errors"),
        ("/failovers", "/api/v1/failovers", "Failovers"),
        ("/slos", "/api/v1/slos", "SLOs"),
        ("/cost", "/api/v1/cost", "Cost"),
    ] {
        for range in ["15m", "1h", "6h", "24h", "7d", "30d"] {
            let (status, html) = get(&app, &format!("{page}?range={range}")).await;
            assert_eq!(status, StatusCode::OK, "{page} {range}: {html}");
            assert!(html.contains(&format!("<h1>{title}</h1>")), "{page}");
            assert!(!html.contains("id=\"error\""), "{page} {range}: {html}");
            let v = json(&app, &format!("{api}?range={range}")).await;
            assert_eq!(v["filters"]["range"], range);
            assert!(v["data"].is_object(), "{api}");
        }
    }
    let (status, html) = get(&app, "/sql").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"sql-form\""));
    let (status, html) = get(&app, "/alerts").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<h1>Alerts</h1>") && html.contains("availability_burn"));
    let v = json(&app, "/api/v1/alerts").await;
    assert_eq!(v["rules"].as_array().unwrap().len(), 8);
    assert_eq!(
        v["rules"][0]["state"], "inactive",
        "not evaluated until started"
    );
    let (status, js) = get(&app, "/static/app.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("location.reload"));
}

#[tokio::test]
async fn json_twins_hold_the_figures_the_pages_show() {
    let (_d, app) = app().await;
    let v = json(&app, "/api/v1/overview?range=6h").await;
    let (_, html) = get(&app, "/?range=6h").await;
    let regions = v["data"]["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 3);
    for r in regions {
        assert_eq!(r["requests"], 100);
        assert_eq!(r["error_pct"], 10.0);
        let p99 = num(r["p99_ms"].as_f64().unwrap());
        assert!(
            html.contains(&format!("<td class=\"num\">{p99}</td>")),
            "{p99}"
        );
    }
    // us-west's probes failed for the last 10 minutes: it is down.
    let status: BTreeMap<&str, &str> = regions
        .iter()
        .map(|r| (r["region"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(status["us-west"], "down");
    // us-east answers 10% 5xx: degraded by its telemetry, and ready now.
    assert_eq!(status["us-east"], "degraded");
    // eu-west's telemetry looks like us-east's, but it does not answer now.
    assert_eq!(status["eu-west"], "down");
    let now: BTreeMap<&str, &str> = regions
        .iter()
        .map(|r| (r["region"].as_str().unwrap(), r["now"].as_str().unwrap()))
        .collect();
    assert_eq!(now["us-east"], "ready");
    assert_eq!(now["eu-west"], "unreachable");
    assert!(html.contains(">ready ("), "the page shows the answer");
    assert!(html.contains(">unreachable</td>"));
    assert!(html.contains("<td class=\"down\">down</td>"));
    assert_eq!(v["data"]["divergent_now"], 1);
    assert_eq!(v["data"]["failovers"], 1);
    // The heatmap cell and the JSON matrix agree.
    let m = &v["data"]["lag"];
    let src = m["regions"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r == "us-west")
        .unwrap();
    let dst = m["regions"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r == "us-east")
        .unwrap();
    let cell = m["p99_ms"][src][dst].as_f64().unwrap();
    assert!(html.contains(&format!("us-west → us-east: {} ms", num(cell))));

    let v = json(&app, "/api/v1/replication?range=6h").await;
    let (_, html) = get(&app, "/replication?range=6h").await;
    let pairs = v["data"]["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), 6);
    for p in pairs {
        assert_eq!(p["batches"], 100);
        assert_eq!(p["backlog_ops"], 99, "the latest backlog");
        assert_eq!(p["applied_ops"], 200);
        let max = num(p["max_ms"].as_f64().unwrap());
        assert!(html.contains(&format!("<td class=\"num\">{max}</td>")));
    }
    assert_eq!(v["data"]["lag_series"].as_array().unwrap().len(), 6);

    let v = json(&app, "/api/v1/latency?range=6h&region=us-east").await;
    let (_, html) = get(&app, "/latency?range=6h&region=us-east").await;
    let rows = v["data"]["regions"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "the region filter applies");
    assert_eq!(rows[0]["region"], "us-east");
    assert!(html.contains(&format!(
        "<td class=\"num\">{}</td>",
        num(rows[0]["p95_ms"].as_f64().unwrap())
    )));
    assert!(!html.contains("<td class=\"\">eu-west</td>"));

    let v = json(&app, "/api/v1/conflicts?range=6h").await;
    let counts = v["data"]["figures"]["counts"].as_array().unwrap();
    assert_eq!(counts.len(), 3);
    assert!(
        counts
            .iter()
            .all(|c| c["total"] == 20 && c["outcomes"]["merged"] == 20)
    );
    let (_, html) = get(&app, "/conflicts?range=6h").await;
    assert!(html.contains("merged 20"));
    // Two of the regions are not running: the queue says so (us-east answers).
    assert_eq!(v["data"]["queue"]["errors"].as_array().unwrap().len(), 2);
    assert!(html.contains("could not be asked for its queue"));

    let v = json(&app, "/api/v1/divergence?range=6h").await;
    let keys = v["data"]["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["key"], "acct-7");
    assert_eq!(keys[0]["regions"], "us-east, eu-west");
    assert_eq!(v["data"]["audits"].as_array().unwrap().len(), 2);
    let (_, html) = get(&app, "/divergence?range=6h").await;
    assert!(html.contains("<td class=\"divergent\">divergent</td>"));
    assert!(html.contains("acct-7"));

    // Failovers a router measured are shown by tests/router.rs, from a
    // real router; here, a move by hand.
    let v = json(&app, "/api/v1/failovers?range=6h").await;
    assert_eq!(
        v["data"]["events"][0]["event"],
        "ownership us-west -> us-east (epoch 1)"
    );
    assert_eq!(v["data"]["failovers"].as_array().unwrap().len(), 0);
    let (_, html) = get(&app, "/failovers?range=6h").await;
    assert!(
        html.contains("ownership us-west -&#62; us-east (epoch 1)"),
        "{html}"
    );
}

#[tokio::test]
async fn writes_a_region_could_not_take_are_counted_by_where_they_arrived() {
    fn stale_routes(dir: &std::path::Path) {
        let c = common::collector(dir, "us-west", T0);
        let write = |n: u64, op: &str, status: u16, served_by: &str, geo: &str| {
            Event::Request(RequestEvent {
                ts_us: T0 + 100 * MIN + n,
                region: "us-west".into(),
                op: op.into(),
                class: "balances".into(),
                status,
                latency_us: 2_000,
                consistency: "async".into(),
                served_by: served_by.into(),
                client_geo: geo.into(),
            })
        };
        // Paris clients still routed to us-west after its keys moved: three
        // forwarded to us-east, one refused; a read and a write us-west
        // took itself do not count.
        for e in [
            write(1, "put", 200, "us-east", "paris"),
            write(2, "put", 200, "us-east", "paris"),
            write(3, "delete", 200, "us-east", "paris"),
            write(4, "put", 421, "", "paris"),
            write(5, "put", 200, "us-west", "paris"),
            write(6, "get", 200, "us-east", "paris"),
            write(7, "put", 200, "us-east", ""),
        ] {
            c.ingest(e);
        }
        c.flush().unwrap();
    }
    let (_d, app) = app_of(stale_routes).await;
    let v = json(&app, "/api/v1/failovers?range=6h").await;
    assert_eq!(
        v["data"]["misdirected"],
        serde_json::json!([
            {"region": "us-west", "class": "balances", "client_geo": "", "forwarded": 1, "refused": 0},
            {"region": "us-west", "class": "balances", "client_geo": "paris", "forwarded": 3, "refused": 1},
        ])
    );
    let (_, html) = get(&app, "/failovers?range=6h").await;
    assert!(
        html.contains("<td class=\"\">paris</td><td class=\"num\">3</td><td class=\"num\">1</td>"),
        "{html}"
    );
}

#[tokio::test]
async fn ranges_and_filters_narrow_and_bad_ones_name_the_fix() {
    let (_d, app) = app().await;
    // Replication lag has no class: the page says the filter does not apply.
    let (_, html) = get(&app, "/replication?range=6h&class=carts").await;
    assert!(html.contains("The class filter does not apply here"));
    let (_, html) = get(&app, "/replication?range=6h").await;
    assert!(!html.contains("The class filter does not apply here"));
    // The last 15 minutes hold 15 minutes of requests... minus the 5 before
    // "now" that have none (events stop at 99 minutes, now is 120).
    let v = json(&app, "/api/v1/latency?range=15m").await;
    assert_eq!(v["data"]["regions"].as_array().unwrap().len(), 0);
    let v = json(&app, "/api/v1/latency?range=1h").await;
    assert!(
        v["data"]["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["requests"] == 40)
    );
    let from = T0 + 10 * MIN;
    let to = T0 + 20 * MIN;
    let v = json(
        &app,
        &format!("/api/v1/latency?range=custom&from={from}&to={to}"),
    )
    .await;
    assert!(
        v["data"]["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["requests"] == 10)
    );
    let v = json(
        &app,
        "/api/v1/latency?range=custom&from=2026-11-28T10:10:00Z&to=2026-11-28T10:20",
    )
    .await;
    assert!(
        v["data"]["regions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["requests"] == 10)
    );
    let v = json(&app, "/api/v1/conflicts?range=6h&class=stock").await;
    assert_eq!(v["data"]["figures"]["counts"].as_array().unwrap().len(), 0);

    for (q, says) in [
        ("range=2w", "15m, 1h, 6h, 24h, 7d, 30d, custom"),
        ("range=custom", "`from` is missing"),
        ("range=custom&from=yesterday", "`from` = `yesterday`"),
        (
            "range=custom&from=2026-11-28T10:00&to=2026-11-28T09:00",
            "not after",
        ),
        ("region=us-east'--", "`region`"),
    ] {
        let (status, body) = get(&app, &format!("/api/v1/overview?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(body.contains(says), "{q}: {body}");
        let (status, html) = get(&app, &format!("/replication?{q}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{q}");
        assert!(html.contains("id=\"error\""), "{q}");
    }
}

#[tokio::test]
async fn cache_reports_show_by_region_and_client_with_their_staleness() {
    fn reports(dir: &std::path::Path) {
        let c = common::collector(dir, "eu-west", T0);
        let report = |n: u64, client: &str, hits: u64, stale: u64, p99: Option<f64>| {
            Event::Cache(CacheEvent {
                ts_us: T0 + 100 * MIN + n * 5_000_000,
                region: "eu-west".into(),
                report: CacheReport {
                    client: client.into(),
                    location: "paris".into(),
                    window_ms: 5_000,
                    reads: hits + 2,
                    hits,
                    misses: 1,
                    bypassed: 1,
                    settled: hits,
                    stale_hits: stale,
                    staleness_p99_ms: p99,
                    staleness_max_ms: p99.map(|v| v * 2.0),
                    feed_lag_ms: Some(40 + n),
                    ..CacheReport::default()
                },
            })
        };
        for e in [
            report(1, "shop-1", 98, 0, Some(0.0)),
            report(2, "shop-1", 48, 3, Some(2_150.0)),
            report(3, "shop-2", 8, 0, None),
        ] {
            c.ingest(e);
        }
        c.flush().unwrap();
    }
    let (_d, app) = app_of(reports).await;
    let v = json(&app, "/api/v1/replication?range=6h").await;
    assert_eq!(
        v["data"]["caches"],
        serde_json::json!([
            {"region": "eu-west", "client": "shop-1", "location": "paris", "reads": 150, "hits": 146,
             "bypassed": 2, "settled": 146, "stale_hits": 3, "staleness_p99_ms": 2150.0,
             "staleness_max_ms": 4300.0, "feed_lag_ms": 42},
            {"region": "eu-west", "client": "shop-2", "location": "paris", "reads": 10, "hits": 8,
             "bypassed": 1, "settled": 8, "stale_hits": 0, "staleness_p99_ms": null,
             "staleness_max_ms": null, "feed_lag_ms": 43},
        ])
    );
    let series = v["data"]["staleness_series"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{series:?}");
    assert_eq!(series[0]["label"], "eu-west");
    let (_, html) = get(&app, "/replication?range=6h").await;
    assert!(html.contains("Feed-kept caches"), "{html}");
    assert!(
        html.contains(
            "<td class=\"\">shop-1</td><td class=\"\">paris</td><td class=\"num\">150</td>"
        ),
        "{html}"
    );
    assert!(
        html.contains(">2150<") || html.contains(">2,150<"),
        "{html}"
    );
}

#[tokio::test]
async fn state_changes_need_the_admin_token() {
    let (_d, app) = app().await;
    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/conflicts/tickets/t-1/resolve")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"value": 1}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/anti-entropy")
                .header(header::AUTHORIZATION, "Bearer demo-client-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::UNAUTHORIZED,
        "the client token is not enough"
    );
    let (status, location, _) = post_form(
        &app,
        "/conflicts/resolve?range=6h",
        "class=tickets&key=t-1&region=us-east&choice=0&admin_token=guess",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        location.starts_with("/conflicts?range=6h&failed=The%20admin%20token%20is%20wrong"),
        "{location}"
    );
    let (_, html) = get(&app, &location).await;
    assert!(html.contains("The admin token is wrong"));
    let (_, location, _) =
        post_form(&app, "/anti-entropy", "region=us-east&admin_token=guess").await;
    assert!(location.contains("failed="));
    // With the right token the action is carried out by the region (us-east
    // runs); one that is not running fails, saying which region and why.
    let (_, location, _) = post_form(
        &app,
        "/anti-entropy",
        "region=us-east&admin_token=demo-admin-token",
    )
    .await;
    assert!(
        location.contains("flash=Anti-entropy%20ran%20in%20us-east"),
        "{location}"
    );
    let (_, location, _) = post_form(
        &app,
        "/anti-entropy",
        "region=eu-west&admin_token=demo-admin-token",
    )
    .await;
    assert!(
        location.contains("failed=eu-west%20could%20not%20be%20reached"),
        "{location}"
    );

    // Silences: refused without the admin token, shown once made.
    let silence = |auth: Option<&str>, minutes: &str| {
        let mut r = Request::post("/api/v1/alerts/silences")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::from(format!(
            r#"{{"matchers": {{"alertname": "replication_lag"}}, "minutes": {minutes}, "comment": "drill"}}"#
        )))
        .unwrap()
    };
    let resp = app.clone().oneshot(silence(None, "30")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // Out of range or not whole minutes: refused by name, nothing silenced.
    for minutes in ["0", "43201", "-5", "2.5", "\"soon\""] {
        let resp = app
            .clone()
            .oneshot(silence(Some("Bearer demo-admin-token"), minutes))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "minutes {minutes}");
        let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("`minutes`") && text.contains("1..=43200"),
            "{text}"
        );
    }
    let resp = app
        .clone()
        .oneshot(silence(Some("Bearer demo-admin-token"), "30"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (status, location, _) = post_form(
        &app,
        "/alerts/silence",
        "matchers=region&minutes=5&admin_token=demo-admin-token",
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location.contains("is%20not%20label%3Dvalue"), "{location}");
    let v = json(&app, "/api/v1/alerts").await;
    assert_eq!(v["silences"][0]["comment"], "drill");
}

#[tokio::test]
async fn the_sql_console_shows_rows_and_refusals() {
    let (_d, app) = app().await;
    let (status, html) = get(
        &app,
        "/sql?sql=SELECT%20region%2C%20count(*)%20AS%20n%20FROM%20requests%20GROUP%20BY%20region%20ORDER%20BY%20region",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"sql-result\""));
    assert!(
        html.contains("<td class=\"\">eu-west</td><td class=\"num\">100</td>"),
        "{html}"
    );
    assert!(html.contains("3 rows in"));
    let (status, _, html) = post_form(&app, "/sql", "sql=DROP%20TABLE%20requests").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("refused"));
    assert!(
        html.contains("DROP TABLE requests"),
        "the query stays in the editor"
    );
    let (status, html) = get(&app, "/sql?sql=SELECT%20nope%20FROM%20requests").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("invalid_query"));
}

#[tokio::test]
async fn slos_show_budget_and_workbook_burn_rates() {
    let (_d, app) = app().await;
    let v = json(&app, "/api/v1/slos?range=1h").await;
    let slos = v["data"]["slos"].as_array().unwrap();
    // Four SLOs in the example config, each in three regions.
    assert_eq!(slos.len(), 12);
    let find = |name: &str, region: &str| {
        slos.iter()
            .find(|s| s["name"] == name && s["region"] == region)
            .unwrap()
            .clone()
    };
    let a = find("availability", "us-east");
    // 100 requests in the 30-day window, every tenth a 503.
    assert_eq!(
        (a["total"].as_i64(), a["good"].as_i64()),
        (Some(100), Some(90))
    );
    assert_eq!(a["sli_pct"], 90.0);
    // 10% bad against 0.1% allowed: a burn rate of 100, the budget 99x overspent.
    let budget = a["budget_remaining_pct"].as_f64().unwrap();
    assert!((budget - -9_900.0).abs() < 1e-6, "{budget}");
    let rate = |s: &Value, w: &str| {
        s["burn_rates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["window"] == w)
            .unwrap()["rate"]
            .clone()
    };
    // Now is 20 minutes after the last request: the 5 m window is empty, so
    // the 1 h / 5 m pair cannot page; 6 h / 30 m (n = 90..99, one 503) does.
    assert_eq!(rate(&a, "5m"), Value::Null);
    assert!((rate(&a, "30m").as_f64().unwrap() - 100.0).abs() < 1e-6);
    assert_eq!(a["severity"], "page");
    assert_eq!(a["alerting"], "page: 6h and 30m over 6x");
    // Latency: us-east answers in 1.0-2.0 ms, far under 250 ms.
    let l = find("latency", "us-east");
    assert_eq!(l["sli_pct"], 100.0);
    assert_eq!(l["budget_remaining_pct"], 100.0);
    assert_eq!(l["severity"], Value::Null);
    // Freshness: lag into us-east is 20..119 ms, under 1 s.
    assert_eq!(find("freshness", "us-east")["sli_pct"], 100.0);
    // Integrity: us-east recorded two audits of a critical class, one divergent.
    let i = find("integrity", "us-east");
    assert_eq!(
        (i["total"].as_i64(), i["good"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(find("integrity", "eu-west")["total"], 0);
    let (_, html) = get(&app, "/slos?range=1h").await;
    assert!(html.contains("page: 6h and 30m over 6x"));
    assert!(html.contains("<td class=\"num firing\">-9900</td>"));
    let v = json(&app, "/api/v1/slos?region=eu-west").await;
    assert_eq!(v["data"]["slos"].as_array().unwrap().len(), 4);
}

/// An hour of traffic: us-east ships `likes` to eu-west (1 MB a minute,
/// 1 kB of acknowledgments back) and us-west passes 5 writes a minute on to
/// us-east (50 kB each way); us-east takes 10 writes a minute itself.
fn fill_cost(dir: &std::path::Path) {
    for region in ["us-east", "us-west"] {
        let c = common::collector(dir, region, T0);
        for n in 0..60u64 {
            let ts_us = T0 + n * MIN;
            let (peer, kind, items, sent, received) = if region == "us-east" {
                ("eu-west", "replicate", 10, 1_000_000, 1_000)
            } else {
                ("us-east", "write", 5, 50_000, 50_000)
            };
            c.ingest(Event::Traffic(TrafficEvent {
                ts_us,
                region: region.into(),
                traffic: PeerTraffic {
                    peer: peer.into(),
                    kind: kind.into(),
                    class: "likes".into(),
                    calls: 1,
                    items,
                    sent_bytes: sent,
                    received_bytes: received,
                },
            }));
            for _ in 0..if region == "us-east" { 10 } else { 5 } {
                c.ingest(Event::Request(RequestEvent {
                    ts_us,
                    region: region.into(),
                    op: "incr".into(),
                    class: "likes".into(),
                    status: 200,
                    latency_us: 1_000,
                    consistency: "local".into(),
                    served_by: "us-east".into(),
                    client_geo: String::new(),
                }));
            }
        }
        if region == "us-east" {
            for (n, outcome) in ["merged", "merged", "queued"].iter().enumerate() {
                c.ingest(Event::Conflict(ConflictEvent {
                    ts_us: T0 + n as u64 * MIN,
                    region: region.into(),
                    class: "likes".into(),
                    key: format!("post-{n}"),
                    policy: "gcounter".into(),
                    outcome: (*outcome).into(),
                    resolution_ms: 5,
                }));
            }
        }
        c.flush().unwrap();
    }
}

#[tokio::test]
async fn the_cost_page_prices_each_pair_and_class_and_what_another_stage_would_move() {
    let (_d, app) = app_of(fill_cost).await;
    let v = json(&app, "/api/v1/cost?range=6h").await;
    let d = &v["data"];
    // The range ends 2 h after the first report; the traffic began one
    // report interval (10 s) before it.
    let observed_s = d["observed_s"].as_f64().unwrap();
    assert_eq!(observed_s, 7_210.0);
    let month = 30.0 * 86_400.0 / observed_s;
    let pair = |src: &str, dst: &str| {
        d["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["src"] == src && p["dst"] == dst)
            .unwrap_or_else(|| panic!("{src} → {dst} in {d}"))
            .clone()
    };
    let east_eu = pair("us-east", "eu-west");
    assert_eq!(east_eu["bytes"], 60_000_000);
    assert_eq!(
        pair("eu-west", "us-east")["bytes"],
        60_000,
        "the acknowledgments"
    );
    assert_eq!(pair("us-west", "us-east")["bytes"], 3_000_000);
    assert_eq!(pair("us-east", "us-west")["bytes"], 3_000_000);
    let close = |a: &Value, b: f64| (a.as_f64().unwrap() - b).abs() < 1e-9 * b.abs().max(1.0);
    assert!(close(&east_eu["spend"], 60_000_000.0 * 0.02 / 1e9));
    assert!(close(&east_eu["month"], 60_000_000.0 * 0.02 / 1e9 * month));
    let total = 60_000_000.0 + 60_000.0 + 6_000_000.0;
    assert_eq!(d["bytes"], total as i64);
    // The example config prices a region's hour at 0.5 USD.
    assert!(close(&d["month_regions"], 3.0 * 0.5 * 720.0));
    let likes = &d["classes"][0];
    assert_eq!(likes["class"], "likes");
    assert_eq!(
        (likes["writes"].as_i64(), likes["forwarded_writes"].as_i64()),
        (Some(900), Some(300))
    );
    assert_eq!(
        (likes["conflicts"].as_i64(), likes["queued"].as_i64()),
        (Some(3), Some(1))
    );
    let what_if = |change: &str| {
        likes["what_if"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["change"] == change)
            .unwrap_or_else(|| panic!("{change} in {likes}"))
            .clone()
    };
    // Every write local: the 6 MB passed on are saved, measured.
    let global = what_if("active-active, global ownership");
    assert!(close(&global["month_bytes"], (total - 6_000_000.0) * month));
    assert!(close(&global["delta"], -6_000_000.0 * 0.02 / 1e9 * month));
    assert_eq!(global["estimated"], false);
    // Writes at us-east (it takes the most): us-west's 300 passed on at the
    // measured 20 kB each, as now.
    let read_local = what_if("read-local at us-east");
    assert!(
        close(&read_local["month_bytes"], total * month),
        "{read_local}"
    );
    assert!(close(&read_local["delta"], 0.0));
    // Hash: a third of each region's writes to each other region.
    let hash = what_if("active-active, hash ownership");
    let moved = 900.0 * 2.0 / 3.0 * 20_000.0;
    assert!(
        close(&hash["month_bytes"], (total - 6_000_000.0 + moved) * month),
        "{hash}"
    );
    let (status, html) = get(&app, "/cost?range=6h").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<h1>Cost</h1>"));
    assert!(
        html.contains(
            "<td class=\"\">us-east</td><td class=\"\">eu-west</td><td class=\"num\">60 MB</td>"
        ),
        "{html}"
    );
    assert!(html.contains("read-local at us-east"));
    assert!(html.contains("1080.00 USD"), "the regions' month: {html}");
}
