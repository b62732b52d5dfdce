//! SQL over the collector's files: answers, formats, and hostile queries
//! refused with a clear message while the engine keeps serving.

mod common;

use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode};
use parallax_core::telemetry::{Event, ReplicationEvent, RequestEvent};
use parallax_web::{App, QueryResult, SqlEngine, SqlError, SqlLimits};
use serde_json::{Value, json};
use tower::ServiceExt;

/// 2026-11-28T10:00:00Z.
const T0: u64 = 1_795_860_000_000_000;

fn fill(dir: &std::path::Path) {
    for region in ["us-east", "eu-west"] {
        let c = common::collector(dir, region, T0);
        for n in 0..100u64 {
            c.ingest(Event::Request(RequestEvent {
                ts_us: T0 + n * 60_000_000,
                region: region.into(),
                op: if n % 2 == 0 {
                    "get".into()
                } else {
                    "put".into()
                },
                class: "likes".into(),
                status: if n % 10 == 0 { 503 } else { 200 },
                latency_us: 1_000 + n,
                consistency: "local".into(),
                served_by: region.into(),
                client_geo: String::new(),
            }));
            c.ingest(Event::Replication(ReplicationEvent {
                ts_us: T0 + n * 60_000_000,
                src: "us-west".into(),
                dst: region.into(),
                lag_ms: n,
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
}

async fn engine(limits: SqlLimits) -> (tempfile::TempDir, SqlEngine) {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let e = SqlEngine::open(dir.path(), limits).await.unwrap();
    (dir, e)
}

#[tokio::test]
async fn queries_read_the_tables_with_their_partition_columns() {
    let (_d, e) = engine(SqlLimits::default()).await;
    let r = e.query("SELECT region, count(*) AS n, max(latency_us) FROM requests GROUP BY region ORDER BY region").await.unwrap();
    assert_eq!(r.columns(), vec!["region", "n", "max(requests.latency_us)"]);
    assert_eq!(
        r.json_rows(),
        vec![
            vec![json!("eu-west"), json!(100), json!(1099)],
            vec![json!("us-east"), json!(100), json!(1099)]
        ]
    );
    let r = e
        .query("SELECT count(*) FROM requests WHERE date = DATE '2026-11-28' AND hour = 10 AND region = 'us-east' AND status >= 500")
        .await
        .unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(6)]]);
    let r = e
        .query("SELECT ts FROM replication_lag ORDER BY ts LIMIT 1")
        .await
        .unwrap();
    assert_eq!(r.json_rows()[0][0], json!("2026-11-28T10:00:00.000000Z"));
    // Tables with no files yet answer empty, not with an error.
    let r = e.query("SELECT count(*) FROM failovers").await.unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(0)]]);
    let csv = String::from_utf8(
        e.query("SELECT op, count(*) AS n FROM requests GROUP BY op ORDER BY op")
            .await
            .unwrap()
            .csv()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(csv, "op,n\nget,100\nput,100\n");
    let ipc = e
        .query("SELECT * FROM requests")
        .await
        .unwrap()
        .arrow_ipc()
        .unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 200);
}

#[tokio::test]
async fn the_row_limit_cuts_and_says_so() {
    let (_d, e) = engine(SqlLimits {
        max_rows: 50,
        ..SqlLimits::default()
    })
    .await;
    let r = e.query("SELECT * FROM requests").await.unwrap();
    assert_eq!(r.num_rows(), 50);
    assert!(r.truncated);
    let r = e.query("SELECT * FROM requests LIMIT 10").await.unwrap();
    assert!(!r.truncated);
}

#[tokio::test]
async fn hostile_sql_is_refused_clearly_and_the_engine_keeps_serving() {
    let limits = SqlLimits {
        memory_bytes: 16 << 20,
        timeout: Duration::from_secs(2),
        ..SqlLimits::default()
    };
    let (_d, e) = engine(limits).await;
    let refused = [
        "COPY requests TO '/tmp/parallax-stolen.parquet'",
        "CREATE EXTERNAL TABLE etc STORED AS CSV LOCATION '/etc'",
        "DROP TABLE requests",
        "INSERT INTO requests SELECT * FROM requests",
        "SET datafusion.execution.batch_size = 1",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
    ];
    for sql in refused {
        let err = e.query(sql).await.unwrap_err();
        assert!(matches!(err, SqlError::Refused(_)), "{sql}: {err:?}");
        assert!(err.to_string().contains("read-only"), "{sql}: {err}");
    }
    assert!(!std::path::Path::new("/tmp/parallax-stolen.parquet").exists());
    for sql in [
        "SELECT * FROM read_parquet('/etc/passwd')",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM nosuch",
        "SELEC 1",
    ] {
        let err = e.query(sql).await.unwrap_err();
        assert!(matches!(err, SqlError::Invalid(_)), "{sql}: {err:?}");
    }
    let err = e
        .query("SELECT * FROM nosuch")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("requests") && err.contains("replication_lag"),
        "names the tables: {err}"
    );
    let err = e
        .query("SELECT a.value * b.value AS v FROM generate_series(1, 4000) a CROSS JOIN generate_series(1, 4000) b ORDER BY v DESC")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Memory(16)), "memory: {err:?}");
    let err = e
        .query("SELECT count(*) FROM generate_series(1, 100000000000)")
        .await
        .unwrap_err();
    assert!(matches!(err, SqlError::Timeout(2)), "time: {err:?}");
    // Still serving.
    let r = e.query("SELECT count(*) FROM requests").await.unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(200)]]);
}

async fn post(app: &axum::Router, body: Value) -> (StatusCode, Vec<u8>) {
    let req = Request::post("/api/v1/sql")
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    (
        status,
        to_bytes(resp.into_body(), 1 << 24).await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn the_sql_api_answers_json_csv_arrow_and_clear_errors() {
    let (_d, e) = engine(SqlLimits::default()).await;
    let config = parallax_core::config::Config::from_toml(
        include_str!("../../deploy/examples/three-regions.toml"),
        "three-regions.toml",
    )
    .unwrap();
    let app = parallax_web::router(App::new(
        e,
        config,
        std::sync::Arc::new(parallax_core::clock::SystemClock),
    ));
    let (s, body) = post(
        &app,
        json!({"sql": "SELECT op, count(*) AS n FROM requests GROUP BY op ORDER BY op"}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["columns"], json!(["op", "n"]));
    assert_eq!(v["rows"], json!([["get", 100], ["put", 100]]));
    let (s, body) = post(&app, json!({"sql": "SELECT 1 AS one", "format": "csv"})).await;
    assert_eq!(
        (s, String::from_utf8(body).unwrap()),
        (StatusCode::OK, "one\n1\n".to_owned())
    );
    let (s, _) = post(&app, json!({"sql": "SELECT 1", "format": "arrow"})).await;
    assert_eq!(s, StatusCode::OK);
    for (body, status, code) in [
        (
            json!({"sql": "DROP TABLE requests"}),
            StatusCode::FORBIDDEN,
            "refused",
        ),
        (
            json!({"sql": "SELECT nope FROM requests"}),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            json!({"sql": "SELECT 1", "format": "xml"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            json!({"query": "SELECT 1"}),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ] {
        let (s, b) = post(&app, body.clone()).await;
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(
            (s, v["error"].as_str().unwrap()),
            (status, code),
            "{body}: {v}"
        );
        assert!(!v["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test]
async fn files_written_after_the_first_query_are_seen_by_the_next() {
    let dir = tempfile::tempdir().unwrap();
    fill(dir.path());
    let e = SqlEngine::open(dir.path(), SqlLimits::default())
        .await
        .unwrap();
    let count = |r: QueryResult| r.json_rows()[0][0].clone();
    let q = "SELECT count(*) FROM requests";
    assert_eq!(count(e.query(q).await.unwrap()), json!(200));
    // The collectors flush again (a long-running web app sees every flush).
    fill(dir.path());
    assert_eq!(count(e.query(q).await.unwrap()), json!(400));
}

/// The dashboards' time scans (whole hours by partition, partial hours by
/// `ts`) return exactly the rows a plain `ts` bound returns, wherever the
/// bounds fall against the hours.
#[tokio::test]
async fn time_scans_return_exactly_the_rows_of_a_ts_bound() {
    let (_d, e) = engine(SqlLimits::default()).await;
    let t0 = T0 as i64;
    let h = 3_600_000_000;
    let marks = [
        t0 - h,
        t0 - 1,
        t0,
        t0 + 1,
        t0 + 30_000_000,
        // On a row's `ts`: the bound's side must be exact.
        t0 + 5 * 60_000_000,
        t0 + h - 1,
        t0 + h,
        t0 + h + 1,
        t0 + h + 7 * 60_000_000,
        t0 + 2 * h,
        t0 + 26 * h + 5,
    ];
    let count = async |from: &str| {
        let r = e
            .query(&format!(
                "SELECT count(*), coalesce(sum(latency_us), 0) FROM {from}"
            ))
            .await
            .unwrap();
        r.json_rows()[0].clone()
    };
    for from in marks {
        for to in marks.iter().copied().filter(|t| *t > from) {
            let scan = parallax_web::filters::time_scan("requests", from, to);
            let ours = count(&format!("{scan} WHERE TRUE")).await;
            let plain = count(&format!(
                "requests WHERE ts >= to_timestamp_micros({from}) AND ts < to_timestamp_micros({to})"
            ))
            .await;
            assert_eq!(ours, plain, "from {from} to {to}: {scan}");
        }
    }
    let empty = parallax_web::filters::time_scan("requests", t0 + h, t0);
    assert_eq!(count(&format!("{empty} WHERE TRUE")).await[0], json!(0));
}

/// `approx_quantile` answers within 1/128 of the value of that rank, exact
/// at 0 and 1, grouped or not, and refuses what it cannot answer by name.
#[tokio::test]
async fn approx_quantile_is_close_and_refuses_bad_arguments_clearly() {
    let (_d, e) = engine(SqlLimits::default()).await;
    let r = e
        .query(
            "SELECT approx_quantile(latency_us, 0.5), approx_quantile(latency_us, 0), \
             approx_quantile(latency_us, 1.0) FROM requests",
        )
        .await
        .unwrap();
    let row = &r.json_rows()[0];
    // 1000..=1099 twice: the value of rank floor(0.5 * 199) = 99 is 1049.
    let median = row[0].as_f64().unwrap();
    assert!((median - 1049.0).abs() <= 1049.0 / 128.0, "{median}");
    assert_eq!(
        (row[1].clone(), row[2].clone()),
        (json!(1000.0), json!(1099.0))
    );
    let r = e
        .query(
            "SELECT region, approx_quantile(lag_ms, 0.99), count(*) FROM replication_lag \
             GROUP BY region ORDER BY region",
        )
        .await
        .unwrap();
    for row in r.json_rows() {
        let p99 = row[1].as_f64().unwrap();
        assert!((p99 - 98.0).abs() <= 98.0 / 128.0, "{row:?}");
    }
    let r = e
        .query("SELECT approx_quantile(lag_ms, 0.5) FROM replication_lag WHERE lag_ms < 0")
        .await
        .unwrap();
    assert_eq!(r.json_rows(), vec![vec![Value::Null]]);
    for (sql, says) in [
        (
            "SELECT approx_quantile(latency_us, 1.5) FROM requests",
            "outside 0..=1",
        ),
        (
            "SELECT approx_quantile(op, 0.5) FROM requests",
            "it was given",
        ),
        (
            "SELECT approx_quantile(latency_us, status) FROM requests",
            "must be a constant",
        ),
    ] {
        let err = e.query(sql).await.unwrap_err();
        assert_eq!(err.status(), 400, "{sql}: {err}");
        assert!(err.to_string().contains(says), "{sql}: {err}");
        assert!(
            err.to_string().contains("approx_quantile(value, q)"),
            "{err}"
        );
    }
}

/// `hour = 4` finds the rows of 04:00: DataFusion turns equalities on every
/// partition column into a path (`region=us-east/date=.../hour=4/`), which
/// must be how the collector spells the directory.
#[tokio::test]
async fn an_hour_before_ten_is_found_by_equality_on_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let t4 = T0 - 6 * 3_600_000_000 + 30 * 60_000_000;
    let c = common::collector(dir.path(), "us-east", t4);
    for n in 0..10u64 {
        c.ingest(Event::Request(RequestEvent {
            ts_us: t4 + n * 60_000_000,
            region: "us-east".into(),
            op: "get".into(),
            class: "likes".into(),
            status: 200,
            latency_us: 1_000,
            consistency: "local".into(),
            served_by: "us-east".into(),
            client_geo: String::new(),
        }));
    }
    c.flush().unwrap();
    let e = SqlEngine::open(dir.path(), SqlLimits::default())
        .await
        .unwrap();
    let r = e
        .query(
            "SELECT count(*) FROM requests \
             WHERE region = 'us-east' AND date = DATE '2026-11-28' AND hour = 4",
        )
        .await
        .unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(10)]]);
    let (from, to) = (t4 as i64 - 20 * 60_000_000, t4 as i64 + 5 * 60_000_000 + 1);
    let scan = parallax_web::filters::time_scan("requests", from, to);
    let r = e
        .query(&format!(
            "SELECT count(*) FROM {scan} WHERE region = 'us-east'"
        ))
        .await
        .unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(6)]], "{scan}");
}

/// Every operator of a plan is checked for its stop; the check changes no
/// answer: a recursive query (its work table must reach the operator
/// inside the check), a hash join, and `EXPLAIN ANALYZE` (which shows the
/// operators, not the checks), asked by the app and by a user alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stoppable_plans_answer_as_plain_ones() {
    let (_d, e) = engine(SqlLimits::default()).await;
    for user in [false, true] {
        let ask = async |sql: &str| {
            let r = if user {
                e.user_query(sql).await
            } else {
                e.query(sql).await
            };
            r.unwrap_or_else(|err| panic!("{sql}: {err}")).json_rows()
        };
        let sum = ask(
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 10) \
             SELECT sum(n) FROM t",
        )
        .await;
        assert_eq!(sum, vec![vec![json!(55)]]);
        let joined = ask("SELECT count(*) FROM requests a JOIN requests b \
             ON a.ts = b.ts AND a.region = b.region")
        .await;
        assert_eq!(joined, vec![vec![json!(200)]]);
        let q = "SELECT count(*) FROM requests WHERE status >= 500";
        let planned = ask(&format!("EXPLAIN {q}")).await;
        let planned = planned.iter().find(|r| r[0] == "physical_plan").unwrap()[1]
            .as_str()
            .unwrap()
            .to_owned();
        let analyzed = ask(&format!("EXPLAIN ANALYZE {q}")).await[0][1]
            .as_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            analyzed.lines().count(),
            planned.lines().count(),
            "one line per operator:\n{analyzed}\nplanned:\n{planned}"
        );
        assert!(
            analyzed.contains("output_rows=20"),
            "the scan's metrics: {analyzed}"
        );
    }
}

/// A user query runs on threads of its own: its time limit holds even when
/// the caller's runtime has one thread, and the rows of a cross join that
/// would take hours never get a chance to block it.
#[tokio::test]
async fn a_user_query_stops_at_its_limit_whatever_the_callers_runtime() {
    let (_d, e) = engine(SqlLimits {
        timeout: Duration::from_secs(1),
        ..SqlLimits::default()
    })
    .await;
    let started = std::time::Instant::now();
    let err = e
        .user_query(
            "SELECT sum(a.value + b.value) FROM generate_series(1, 1000000) a, \
             generate_series(1, 1000000) b",
        )
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, SqlError::Timeout(1)), "{err:?}");
    assert_eq!((err.status(), err.code()), (408, "time_limit"));
    assert!(
        took < Duration::from_millis(1_500),
        "refused after {took:?}"
    );
    // Still serving (its slot was given back).
    let r = e.user_query("SELECT count(*) FROM requests").await.unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(200)]]);
}

/// Past the concurrency bound a user query waits a moment for a slot, then
/// is told the bound and the fix; SQL text over its limit is a 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_query_over_the_bound_is_told_so() {
    let (_d, e) = engine(SqlLimits {
        timeout: Duration::from_secs(30),
        max_concurrent: 1,
        ..SqlLimits::default()
    })
    .await;
    let runaway = {
        let e = e.clone();
        tokio::spawn(async move {
            e.user_query("SELECT sum(value) FROM generate_series(1, 100000000000)")
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let err = e.user_query("SELECT 1").await.unwrap_err();
    assert!(matches!(err, SqlError::Busy(1)), "{err:?}");
    assert_eq!((err.status(), err.code()), (503, "busy"));
    assert!(err.to_string().contains("Fix:"), "{err}");
    // Dropping the waiting caller stops the query and frees the slot.
    runaway.abort();
    let r = e.user_query("SELECT 1 AS one").await.unwrap();
    assert_eq!(r.json_rows(), vec![vec![json!(1)]]);

    let long = format!("SELECT 1 -- {}", "x".repeat(70_000));
    let err = e.user_query(&long).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (413, "too_large"));
    assert!(err.to_string().contains("65536-byte limit"), "{err}");
}
