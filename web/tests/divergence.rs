//! The `divergence` table has one meaning per column: `state` is one word
//! and `reason` its own column, files of the first releases (state
//! `divergent: <reason>`, no `reason` column) read the same way, and a key
//! a later audit of its class no longer finds is cleared on the page and
//! resolves its alert.

mod common;

use std::sync::{Arc, Mutex};

use arrow::array::{
    ArrayRef, Int64Array, ListBuilder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use axum::body::Bytes;
use axum::routing::post;
use parallax_collector::files::{FileOptions, partition_dir, write_file};
use parallax_collector::tables::date_hour;
use parallax_core::clock::ManualClock;
use parallax_core::config::Config;
use parallax_core::telemetry::{AuditEvent, DivergenceEvent, Event};
use parallax_web::alerts::Alerter;
use parallax_web::filters::{FilterQuery, Filters};
use parallax_web::{SqlEngine, SqlLimits, dash};
use serde_json::Value;

/// 2026-11-28T10:00:00Z.
const T0: u64 = 1_795_860_000_000_000;
const SEC: u64 = 1_000_000;

/// A `divergence` file as the first releases wrote it: no `reason` column,
/// the reason inside `state`.
fn old_spelling_file(dir: &std::path::Path, ts_us: u64, key: &str, state: &str) {
    let ts = |name: &str| {
        Field::new(
            name,
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        )
    };
    let schema = Arc::new(Schema::new(vec![
        ts("ts"),
        Field::new("audit_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new(
            "regions",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
        Field::new("state", DataType::Utf8, false),
        ts("first_seen"),
        Field::new("age_ms", DataType::Int64, false),
    ]));
    let mut regions = ListBuilder::new(StringBuilder::new());
    regions.values().append_value("us-east");
    regions.values().append_value("eu-west");
    regions.append(true);
    let stamp = |us: u64| {
        Arc::new(TimestampMicrosecondArray::from(vec![us as i64]).with_timezone("UTC")) as ArrayRef
    };
    let batch = RecordBatch::try_new(
        schema,
        vec![
            stamp(ts_us),
            Arc::new(StringArray::from(vec!["audit-old"])),
            Arc::new(StringArray::from(vec!["balances"])),
            Arc::new(StringArray::from(vec![key])),
            Arc::new(regions.finish()),
            Arc::new(StringArray::from(vec![state])),
            stamp(ts_us - 60 * SEC),
            Arc::new(Int64Array::from(vec![60_000])),
        ],
    )
    .unwrap();
    let (date, hour) = date_hour(ts_us);
    let part = partition_dir(&dir.join("tables"), "divergence", "us-east", &date, hour);
    write_file(
        &part,
        &batch,
        ts_us,
        &FileOptions {
            row_group_rows: 1_000,
        },
    )
    .unwrap();
}

fn audit(ts_us: u64, divergent: u64) -> Event {
    Event::Audit(AuditEvent {
        ts_us,
        audit_id: format!("audit-{ts_us}"),
        class: "balances".into(),
        regions: vec!["us-east".into(), "eu-west".into()],
        entities: 100,
        differing: divergent,
        divergent,
        ..Default::default()
    })
}

fn finding(ts_us: u64, key: &str, state: &str, reason: &str) -> Event {
    Event::Divergence(DivergenceEvent {
        ts_us,
        audit_id: format!("audit-{ts_us}"),
        class: "balances".into(),
        key: key.into(),
        regions: vec!["us-east".into(), "eu-west".into()],
        state: state.into(),
        reason: reason.into(),
        first_seen_us: ts_us - 10 * SEC,
        age_ms: 10_000,
    })
}

#[tokio::test]
async fn rows_of_the_old_spelling_read_as_one_word_and_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    old_spelling_file(
        dir.path(),
        T0,
        "acct-old",
        "divergent: corruption (same version, other content)",
    );
    let c = common::collector(dir.path(), "us-east", T0);
    c.ingest(finding(
        T0 + SEC,
        "acct-new",
        "divergent",
        "concurrent versions left unresolved",
    ));
    c.flush().unwrap();
    let e = SqlEngine::open(dir.path(), SqlLimits::default())
        .await
        .unwrap();
    let r = e
        .query("SELECT key, state, reason FROM divergence WHERE state = 'divergent' ORDER BY key")
        .await
        .unwrap();
    assert_eq!(
        r.json_rows(),
        vec![
            vec![
                Value::from("acct-new"),
                Value::from("divergent"),
                Value::from("concurrent versions left unresolved")
            ],
            vec![
                Value::from("acct-old"),
                Value::from("divergent"),
                Value::from("corruption (same version, other content)")
            ],
        ]
    );
    // One table for users: the files' own table is not in the catalog.
    let tables = e
        .query(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE 'divergence%'",
        )
        .await
        .unwrap();
    assert_eq!(tables.json_rows(), vec![vec![Value::from("divergence")]]);
    // Partition columns still prune through the view.
    let r = e
        .query("SELECT count(*) FROM divergence WHERE region = 'us-east' AND hour = 10")
        .await
        .unwrap();
    assert_eq!(r.json_rows(), vec![vec![Value::from(2)]]);
}

type Seen = Arc<Mutex<Vec<Value>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: Bytes| {
            let s = Arc::clone(&s);
            async move {
                s.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                ""
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn a_key_a_later_clean_audit_no_longer_finds_is_cleared_and_its_alert_resolves() {
    let dir = tempfile::tempdir().unwrap();
    let c = common::collector(dir.path(), "us-east", T0);
    // The first audit finds acct-7 corrupt and acct-8 in flight.
    c.ingest(audit(T0, 1));
    c.ingest(finding(T0, "acct-7", "divergent", "corruption"));
    c.ingest(finding(T0, "acct-8", "in_flight", "replication pending"));
    c.flush().unwrap();

    let (url, seen) = receiver().await;
    let text = format!(
        "{}\n[notifiers.hook]\nkind = \"webhook\"\nurl = \"{url}\"\n\n\
         [alerts.diverged]\nkind = \"divergence\"\nnotify = [\"hook\"]\n",
        include_str!("../../deploy/examples/three-regions.toml")
    );
    let config = Arc::new(Config::from_toml(&text, "test.toml").unwrap());
    let engine = Arc::new(
        SqlEngine::open(dir.path(), SqlLimits::default())
            .await
            .unwrap(),
    );
    let a = Alerter::new(
        config,
        Arc::clone(&engine),
        Arc::new(ManualClock::new(T0 / 1_000)),
    );
    let states = || async {
        let q = FilterQuery {
            range: Some("1h".into()),
            ..Default::default()
        };
        let f = Filters::parse(&q, (T0 + 120 * SEC) as i64).unwrap();
        let mut keys = dash::divergence(&engine, &f)
            .await
            .unwrap()
            .keys
            .into_iter()
            .map(|k| (k.key, k.state, k.reason))
            .collect::<Vec<_>>();
        keys.sort();
        keys
    };
    let mine = |v: &parallax_web::alerts::AlertsView| {
        v.active
            .iter()
            .filter(|x| x.rule == "diverged")
            .map(|x| (x.state.clone(), x.labels["key"].clone()))
            .collect::<Vec<_>>()
    };

    a.evaluate_at((T0 + 5 * SEC) as i64).await;
    assert_eq!(mine(&a.view()), vec![("firing".into(), "acct-7".into())]);
    assert_eq!(
        states().await,
        vec![
            ("acct-7".into(), "divergent".into(), "corruption".into()),
            (
                "acct-8".into(),
                "in_flight".into(),
                "replication pending".into()
            ),
        ]
    );

    // The repair, then a clean audit: it writes no row for either key.
    c.ingest(finding(
        T0 + 20 * SEC,
        "acct-7",
        "repaired",
        "corruption (replaced)",
    ));
    c.ingest(audit(T0 + 30 * SEC, 0));
    c.flush().unwrap();
    a.evaluate_at((T0 + 35 * SEC) as i64).await;
    assert!(mine(&a.view()).is_empty(), "{:?}", a.view().active);
    assert_eq!(
        states().await,
        vec![
            (
                "acct-7".into(),
                "cleared".into(),
                "corruption (replaced)".into()
            ),
            (
                "acct-8".into(),
                "cleared".into(),
                "replication pending".into()
            ),
        ]
    );
    a.flush().await;
    let statuses: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|v| v["status"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(statuses, vec!["firing", "resolved"]);
}
