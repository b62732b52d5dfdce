use std::sync::Arc;

use arrow::array::{AsArray, Int64Array};
use arrow::datatypes::TimestampMicrosecondType;
use parallax_core::clock::ManualClock;
use parallax_core::config::CollectorConfig;
use parallax_core::telemetry::{Event, ReplicationEvent, RequestEvent};
use parallax_core::traffic::PeerTraffic;

use super::*;

const HOUR_US: u64 = 3_600_000_000;
/// 2026-11-28T10:00:00Z.
const T0: u64 = 1_795_860_000_000_000;

fn collector(root: &std::path::Path, now_us: u64) -> Collector {
    let clock = Arc::new(ManualClock::new(now_us / 1_000));
    Collector::new(
        CollectorOptions {
            root: root.to_owned(),
            bucket: None,
            region: "us-east".into(),
            config: CollectorConfig {
                row_group_rows: 1_000,
                ..CollectorConfig::default()
            },
            probe_urls: BTreeMap::new(),
            secrets: parallax_core::secrets::SecretCell::tokens(&["t"]),
            bounds: crate::rollup::Bounds::default(),
            clock,
            links: None,
            tls: Default::default(),
        },
        None,
    )
    .unwrap()
}

fn request(ts_us: u64, n: u64) -> Event {
    Event::Request(RequestEvent {
        ts_us,
        region: "us-east".into(),
        op: "put".into(),
        class: "c".into(),
        status: 200,
        latency_us: n,
        consistency: "async".into(),
        served_by: "us-east".into(),
        client_geo: String::new(),
    })
}

fn lag(ts_us: u64, lag_ms: u64) -> Event {
    Event::Replication(ReplicationEvent {
        ts_us,
        src: "eu-west".into(),
        dst: "us-east".into(),
        lag_ms,
        backlog_ops: 0,
        backlog_bytes: 0,
        applied_ops: 1,
        batches: 1,
        heartbeats: 0,
        ..Default::default()
    })
}

fn latencies(root: &std::path::Path) -> Vec<i64> {
    let mut out = Vec::new();
    for b in files::read_table(root, "requests").unwrap() {
        let col = b
            .column_by_name("latency_us")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        out.extend(col.values().iter().copied());
    }
    out.sort_unstable();
    out
}

#[test]
fn flush_writes_sorted_hive_partitioned_files_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + 3 * HOUR_US);
    // Out of order, across two hours.
    for n in (0..500u64).rev() {
        c.ingest(request(T0 + n * 14_400_000, n));
    }
    c.ingest(lag(T0 + 5, 42));
    assert_eq!(c.flush().unwrap(), 501);
    let hour0 = files::partition_dir(dir.path(), "requests", "us-east", "2026-11-28", 10);
    let hour1 = files::partition_dir(dir.path(), "requests", "us-east", "2026-11-28", 11);
    assert_eq!(files::parquet_files(&hour0).len(), 1);
    assert_eq!(files::parquet_files(&hour1).len(), 1);
    let batches = files::read_files(&files::parquet_files(&hour0)).unwrap();
    let ts = batches[0]
        .column(0)
        .as_primitive::<TimestampMicrosecondType>();
    assert!(
        ts.values().windows(2).all(|w| w[0] <= w[1]),
        "rows sorted by ts"
    );
    assert_eq!(latencies(dir.path()), (0..500).collect::<Vec<_>>());
    let w = c.written();
    assert_eq!(w.rows["requests"], 500);
    assert_eq!(w.rows["replication_lag"], 1);
    // Three raw files, and their rollups: four of each requests file, two
    // of the replication_lag one.
    assert_eq!(w.files, 13);
    assert_eq!(
        w.rows["requests_5m"], 24,
        "a row per 5-minute bucket: 2 hours less 14 s"
    );
    assert_eq!(w.rows["requests_1h"], 2, "a row per hour");
    assert_eq!(w.rows["latency_5m"], 24, "a row per bucket and class");
    assert_eq!(w.rows["latency_1h"], 2);
    // No temporary file is left where a reader looks.
    let leftovers = std::fs::read_dir(&hour0)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".tmp")
        })
        .count();
    assert_eq!(leftovers, 0);
}

#[test]
fn timestamps_and_durations_are_delta_encoded_without_a_dictionary() {
    use parquet::basic::Encoding;
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + HOUR_US);
    for n in 0..2_000u64 {
        c.ingest(request(T0 + n * 1_000, 800 + n % 97));
    }
    c.flush().unwrap();
    let hour0 = files::partition_dir(dir.path(), "requests", "us-east", "2026-11-28", 10);
    let file = std::fs::File::open(&files::parquet_files(&hour0)[0]).unwrap();
    let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
    let meta = parquet::file::reader::FileReader::metadata(&reader);
    assert_eq!(meta.num_row_groups(), 2, "1,000 rows per row group");
    for rg in meta.row_groups() {
        for column in rg.columns() {
            let name = column.column_path().string();
            let encodings: Vec<Encoding> = column.encodings().collect();
            let delta = encodings.contains(&Encoding::DELTA_BINARY_PACKED);
            let dictionary = column.dictionary_page_offset().is_some();
            if name == "ts" || name == "latency_us" {
                assert!(delta && !dictionary, "{name}: {encodings:?}");
            } else if name == "op" || name == "class" {
                assert!(dictionary && !delta, "{name}: {encodings:?}");
            }
        }
    }
}

#[test]
fn closed_hours_are_compacted_into_one_file_with_every_row_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + 2 * HOUR_US);
    for round in 0..6u64 {
        for n in 0..50 {
            c.ingest(request(T0 + (n * 6 + round) * 1_000_000, round * 100 + n));
        }
        c.flush().unwrap();
    }
    // And the current hour, which stays as it is.
    c.ingest(request(T0 + 2 * HOUR_US + 1, 9_999));
    c.flush().unwrap();
    let closed = files::partition_dir(dir.path(), "requests", "us-east", "2026-11-28", 10);
    assert_eq!(files::parquet_files(&closed).len(), 6);
    let before = latencies(dir.path());
    let (compacted, deleted) = c.maintain().unwrap();
    // The closed hour, and its date's rollups rewritten as one file each.
    assert_eq!((compacted, deleted), (5, 0));
    let after_files = files::parquet_files(&closed);
    assert_eq!(after_files.len(), 1);
    assert_eq!(latencies(dir.path()), before, "every row, once");
    let batches = files::read_files(&after_files).unwrap();
    let ts = batches
        .iter()
        .flat_map(|b| {
            b.column(0)
                .as_primitive::<TimestampMicrosecondType>()
                .values()
                .to_vec()
        })
        .collect::<Vec<_>>();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]),
        "compacted rows sorted by ts"
    );
    assert!(
        !files::staging_dir(dir.path())
            .read_dir()
            .unwrap()
            .any(|_| true),
        "staging emptied"
    );
    assert_eq!(
        files::parquet_files(&files::partition_dir(
            dir.path(),
            "requests",
            "us-east",
            "2026-11-28",
            12
        ))
        .len(),
        1
    );
}

#[test]
fn an_interrupted_compaction_leaves_every_row_exactly_once_after_recovery() {
    for swapped in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let c = collector(dir.path(), T0 + 2 * HOUR_US);
        for round in 0..3u64 {
            for n in 0..20 {
                c.ingest(request(T0 + n * 1_000 + round, round * 100 + n));
            }
            c.flush().unwrap();
        }
        let part = files::partition_dir(dir.path(), "requests", "us-east", "2026-11-28", 10);
        let before = latencies(dir.path());
        // Stage a compacted copy as a compaction would, and stop as a crash
        // would: before the swap, or after it but before the old files went.
        let all = files::read_files(&files::parquet_files(&part)).unwrap();
        let merged = arrow::compute::concat_batches(&all[0].schema(), &all).unwrap();
        let stage = files::staging_dir(dir.path()).join("crashed");
        files::write_file(
            &stage,
            &merged,
            T0,
            &FileOptions {
                row_group_rows: 1_000,
            },
        )
        .unwrap();
        if swapped {
            rustix::fs::renameat_with(
                rustix::fs::CWD,
                &stage,
                rustix::fs::CWD,
                &part,
                rustix::fs::RenameFlags::EXCHANGE,
            )
            .unwrap();
        }
        drop(c);
        // A restart recovers.
        let c = collector(dir.path(), T0 + 2 * HOUR_US);
        assert!(!files::staging_dir(dir.path()).exists(), "staging cleared");
        assert_eq!(
            latencies(dir.path()),
            before,
            "swapped = {swapped}: every row once"
        );
        c.maintain().unwrap();
        assert_eq!(latencies(dir.path()), before);
    }
}

#[test]
fn zero_padded_hours_of_earlier_versions_are_renamed_with_every_row_kept() {
    let dir = tempfile::tempdir().unwrap();
    let t4 = T0 - 6 * HOUR_US;
    let date = |root: &std::path::Path| root.join("requests/region=us-east/date=2026-11-28");
    // Rows at 04:00 and 05:00, then their directories spelt as an earlier
    // version spelt them.
    let c = collector(dir.path(), T0);
    c.ingest(request(t4, 1));
    c.ingest(request(t4 + HOUR_US, 2));
    c.flush().unwrap();
    drop(c);
    let d = date(dir.path());
    assert!(d.join("hour=4").is_dir() && d.join("hour=5").is_dir());
    std::fs::rename(d.join("hour=4"), d.join("hour=04")).unwrap();
    std::fs::rename(d.join("hour=5"), d.join("hour=05")).unwrap();
    // And a newer file already under the new spelling of 05.
    let other = tempfile::tempdir().unwrap();
    let c = collector(other.path(), T0);
    c.ingest(request(t4 + HOUR_US + 1, 3));
    c.flush().unwrap();
    drop(c);
    std::fs::rename(date(other.path()).join("hour=5"), d.join("hour=5")).unwrap();
    // A collector starting renames 04 and merges 05 into 5.
    let _c = collector(dir.path(), T0);
    let hours: Vec<String> = files::partitions(&d, "hour")
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(hours, ["4", "5"]);
    let mut all = latencies(dir.path());
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3]);
    assert_eq!(files::migrate_padded_hours(dir.path()).unwrap(), 0);
}

#[test]
fn partitions_past_retention_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let now = T0 + 40 * 24 * HOUR_US;
    let c = collector(dir.path(), now);
    c.ingest(request(T0, 1));
    c.ingest(request(now - HOUR_US, 2));
    c.flush().unwrap();
    let (_, deleted) = c.maintain().unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(latencies(dir.path()), vec![2]);
}

#[test]
fn metrics_follow_the_events() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0);
    c.ingest(request(T0, 1_500));
    c.ingest(lag(T0, 20));
    let text = c.metrics_text();
    assert!(
        text.contains(
            r#"parallax_requests_total{class="c",op="put",region="us-east",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"parallax_replication_applied_ops_total{peer="eu-west",region="us-east"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains("parallax_replication_lag_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn probes_show_which_regions_answer_from_here() {
    // One region answers, one does not: as from a vantage point cut off from it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        axum::serve(listener, app).await.unwrap();
    });
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = tokio::sync::mpsc::channel(16);
    let c = Collector::start(
        CollectorOptions {
            root: dir.path().to_owned(),
            bucket: None,
            region: "us-east".into(),
            config: CollectorConfig {
                probe_interval_ms: 50,
                probe_timeout_ms: 200,
                ..CollectorConfig::default()
            },
            probe_urls: BTreeMap::from([("eu-west".to_owned(), down), ("us-west".to_owned(), up)]),
            secrets: parallax_core::secrets::SecretCell::tokens(&["t"]),
            bounds: crate::rollup::Bounds::default(),
            clock: Arc::new(parallax_core::clock::SystemClock),
            links: None,
            tls: Default::default(),
        },
        rx,
        None,
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let latest = c.probes();
    assert!(latest["us-west"].ok && !latest["eu-west"].ok, "{latest:?}");
    assert!(
        c.metrics_text()
            .contains(r#"parallax_probe_up{peer="eu-west",region="us-east"} 0"#)
    );
    c.shutdown().await;
    let rows: u64 = files::read_table(dir.path(), "probes")
        .unwrap()
        .iter()
        .map(|b| b.num_rows() as u64)
        .sum();
    assert!(rows >= 4, "probe rows written at shutdown: {rows}");
    server.abort();
}

/// One event of every kind (two failovers: with and without their
/// durations), every field a value of its own, so a column reading the
/// wrong field shows.
fn one_of_each() -> Vec<Event> {
    use parallax_core::telemetry::{
        AuditEvent, CacheEvent, ClockEvent, ConflictEvent, DivergenceEvent, FailoverEvent,
        ProbeEvent, RolloutEvent, TrafficEvent,
    };
    vec![
        Event::Request(RequestEvent {
            ts_us: T0 + 1,
            region: "us-east".into(),
            op: "put".into(),
            class: "carts".into(),
            status: 201,
            latency_us: 1_234,
            consistency: "quorum".into(),
            served_by: "eu-west".into(),
            client_geo: "paris".into(),
        }),
        Event::Replication(ReplicationEvent {
            ts_us: T0 + 2,
            src: "eu-west".into(),
            dst: "us-east".into(),
            lag_ms: 11,
            backlog_ops: 12,
            backlog_bytes: 13,
            applied_ops: 14,
            batches: 15,
            heartbeats: 16,
            drain_ops_per_s: Some(17),
            eta_ms: Some(18),
        }),
        Event::Conflict(ConflictEvent {
            ts_us: T0 + 3,
            region: "us-east".into(),
            class: "likes".into(),
            key: "k1".into(),
            policy: "gcounter".into(),
            outcome: "merged".into(),
            resolution_ms: 21,
        }),
        Event::Divergence(DivergenceEvent {
            ts_us: T0 + 4,
            audit_id: "a-1".into(),
            class: "balances".into(),
            key: "k2".into(),
            regions: vec!["eu-west".into(), "us-east".into()],
            state: "divergent".into(),
            reason: "concurrent versions left unresolved".into(),
            first_seen_us: T0 - 1_000_000,
            age_ms: 31,
        }),
        Event::Audit(AuditEvent {
            ts_us: T0 + 5,
            audit_id: "a-1".into(),
            class: "balances".into(),
            regions: vec!["us-east".into(), "us-west".into()],
            entities: 41,
            differing: 42,
            in_flight: 43,
            divergent: 44,
            round_trips: 45,
            bytes: 46,
            duration_ms: 47,
        }),
        Event::Failover(FailoverEvent {
            ts_us: T0 + 6,
            region: "us-east".into(),
            event: "eu-west moved to us-east (epoch 3)".into(),
            detected_ms: Some(51),
            rerouted_ms: Some(52),
            id: Some("paris/eu-west/53".into()),
            router: Some("paris".into()),
            failed: Some("eu-west".into()),
            phase: Some("moved".into()),
            delegate: Some("us-east".into()),
            epoch: Some(3),
            moved_by: Some("this router".into()),
            last_ok_us: Some(54),
            first_failed_us: Some(55),
            down_us: Some(56),
            last_answer_us: Some(57),
            moved_us: Some(58),
            up_us: None,
            handed_back_us: Some(59),
        }),
        Event::Failover(FailoverEvent {
            ts_us: T0 + 7,
            region: "us-east".into(),
            event: "ownership us-east -> eu-west (epoch 4)".into(),
            ..Default::default()
        }),
        Event::Rollout(RolloutEvent {
            ts_us: T0 + 10,
            region: "us-east".into(),
            class: "carts".into(),
            from_stage: "read-local".into(),
            to_stage: "limited-writes".into(),
            forced: true,
        }),
        Event::Cache(CacheEvent {
            ts_us: T0 + 11,
            region: "us-east".into(),
            report: parallax_core::api::CacheReport {
                client: "shop-7".into(),
                location: "paris".into(),
                window_ms: 5000,
                reads: 10,
                hits: 7,
                misses: 2,
                bypassed: 1,
                invalidations: 3,
                settled: 6,
                stale_hits: 1,
                staleness_p50_ms: Some(0.0),
                staleness_p99_ms: Some(812.5),
                staleness_max_ms: Some(812.5),
                feed_lag_ms: None,
            },
        }),
        Event::Probe(ProbeEvent {
            ts_us: T0 + 8,
            vantage: "us-east".into(),
            target: "us-west".into(),
            latency_ms: 61.5,
            ok: true,
        }),
        Event::Clock(ClockEvent {
            ts_us: T0 + 9,
            region: "us-east".into(),
            peer: "eu-west".into(),
            offset_ms: -71,
            rtt_ms: 72,
        }),
        Event::Traffic(TrafficEvent {
            ts_us: T0 + 12,
            region: "us-east".into(),
            traffic: PeerTraffic {
                peer: "eu-west".into(),
                kind: "replicate".into(),
                class: "carts".into(),
                calls: 81,
                items: 82,
                sent_bytes: 83,
                received_bytes: 84,
            },
        }),
    ]
}

/// A table's rows read back, one line per row: `column=value, ...`.
fn rows_of(root: &std::path::Path, table: &str) -> Vec<String> {
    use arrow::datatypes::DataType;
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = Vec::new();
    for b in files::read_table(root, table).unwrap() {
        assert_eq!(
            b.schema().fields(),
            tables::schema_of(table).unwrap().fields(),
            "{table}: the file's schema"
        );
        // Without chrono-tz, Arrow prints only offset time zones: drop "UTC".
        let columns: Vec<arrow::array::ArrayRef> = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(unit, Some(_)) => {
                    arrow::compute::cast(c, &DataType::Timestamp(*unit, None)).unwrap()
                }
                _ => Arc::clone(c),
            })
            .collect();
        let options = FormatOptions::default();
        let cells: Vec<ArrayFormatter<'_>> = columns
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            let line: Vec<String> = b
                .schema()
                .fields()
                .iter()
                .zip(&cells)
                .map(|(f, c)| format!("{}={}", f.name(), c.value(row)))
                .collect();
            out.push(line.join(", "));
        }
    }
    out
}

#[test]
fn a_row_of_every_table_reads_back_from_its_parquet_file_as_it_went_in() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + HOUR_US);
    for e in one_of_each() {
        c.ingest(e);
    }
    assert_eq!(c.flush().unwrap(), 12);
    let ts = |n: u64| format!("ts=2026-11-28T10:00:00.{n:06}");
    let expected = [
        (
            "requests",
            vec![format!(
                "{}, op=put, class=carts, status=201, latency_us=1234, consistency=quorum, served_by=eu-west, client_geo=paris",
                ts(1)
            )],
        ),
        (
            "replication_lag",
            vec![format!(
                "{}, src=eu-west, dst=us-east, lag_ms=11, backlog_ops=12, backlog_bytes=13, applied_ops=14, drain_ops_per_s=17, eta_ms=18",
                ts(2)
            )],
        ),
        (
            "conflicts",
            vec![format!(
                "{}, class=likes, key=k1, policy=gcounter, outcome=merged, resolution_ms=21",
                ts(3)
            )],
        ),
        (
            "divergence",
            vec![format!(
                "{}, audit_id=a-1, class=balances, key=k2, regions=[eu-west, us-east], state=divergent, reason=concurrent versions left unresolved, first_seen=2026-11-28T09:59:59, age_ms=31",
                ts(4)
            )],
        ),
        (
            "audits",
            vec![format!(
                "{}, audit_id=a-1, class=balances, regions=[us-east, us-west], entities=41, differing=42, in_flight=43, divergent=44, round_trips=45, bytes=46, duration_ms=47",
                ts(5)
            )],
        ),
        (
            "failovers",
            vec![
                format!(
                    "{}, event=eu-west moved to us-east (epoch 3), detected_ms=51, rerouted_ms=52, \
                     failover_id=paris/eu-west/53, router=paris, failed=eu-west, phase=moved, \
                     delegate=us-east, epoch=3, moved_by=this router, last_ok_us=54, \
                     first_failed_us=55, down_us=56, last_answer_us=57, moved_us=58, up_us=, \
                     handed_back_us=59",
                    ts(6)
                ),
                format!(
                    "{}, event=ownership us-east -> eu-west (epoch 4), detected_ms=, rerouted_ms=, \
                     failover_id=, router=, failed=, phase=, delegate=, epoch=, moved_by=, \
                     last_ok_us=, first_failed_us=, down_us=, last_answer_us=, moved_us=, up_us=, \
                     handed_back_us=",
                    ts(7)
                ),
            ],
        ),
        (
            "rollouts",
            vec![format!(
                "{}, class=carts, from_stage=read-local, to_stage=limited-writes, forced=true",
                ts(10)
            )],
        ),
        (
            "cache_reads",
            vec![format!(
                "{}, client=shop-7, location=paris, window_ms=5000, reads=10, hits=7, misses=2, \
                 bypassed=1, invalidations=3, settled=6, stale_hits=1, staleness_p50_ms=0.0, \
                 staleness_p99_ms=812.5, staleness_max_ms=812.5, feed_lag_ms=",
                ts(11)
            )],
        ),
        (
            "probes",
            vec![format!(
                "{}, vantage=us-east, target=us-west, latency_ms=61.5, ok=true",
                ts(8)
            )],
        ),
        (
            "clock",
            vec![format!("{}, peer=eu-west, offset_ms=-71, rtt_ms=72", ts(9))],
        ),
        (
            "traffic",
            vec![format!(
                "{}, peer=eu-west, kind=replicate, class=carts, calls=81, items=82, \
                 sent_bytes=83, received_bytes=84",
                ts(12)
            )],
        ),
    ];
    assert_eq!(
        expected.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        tables::TABLES,
        "a row for every table"
    );
    for (table, rows) in expected {
        assert_eq!(rows_of(dir.path(), table), rows, "{table}");
        // The null durations are nulls, not zeros.
        if table == "failovers" {
            let b = &files::read_table(dir.path(), table).unwrap()[0];
            assert_eq!(b.column_by_name("detected_ms").unwrap().null_count(), 1);
            assert_eq!(b.column_by_name("router").unwrap().null_count(), 1);
            assert_eq!(b.column_by_name("up_us").unwrap().null_count(), 2);
        }
    }
}

#[test]
fn the_drain_and_the_detour_are_gauges_from_the_regions_live_state() {
    use parallax_core::stats::{Detour, NodeStats};
    use parallax_core::telemetry::IncomingStats;
    let m = metrics::Metrics::new("us-west");
    let mut stats = NodeStats::default();
    for peer in ["eu-west", "us-east"] {
        stats
            .replication
            .peers
            .insert(peer.into(), Default::default());
    }
    stats.events.incoming.insert(
        "us-east".into(),
        IncomingStats {
            backlog_ops: 2_700,
            drain_ops_per_s: Some(300),
            eta_ms: Some(9_000),
            ..Default::default()
        },
    );
    stats
        .events
        .incoming
        .insert("eu-west".into(), IncomingStats::default());
    stats.anti_entropy.detour = Some(Detour {
        cut: vec!["eu-west".into()],
        via: vec!["us-east".into()],
        ..Default::default()
    });
    m.refresh(&stats);
    let text = m.render();
    for line in [
        "parallax_replication_drain_ops_per_second{peer=\"us-east\",region=\"us-west\"} 300",
        "parallax_replication_drain_eta_seconds{peer=\"us-east\",region=\"us-west\"} 9",
        "parallax_replication_drain_eta_seconds{peer=\"eu-west\",region=\"us-west\"} 0",
        "parallax_anti_entropy_detour{peer=\"eu-west\",region=\"us-west\"} 1",
        "parallax_anti_entropy_detour{peer=\"us-east\",region=\"us-west\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    // The drain over, the detour ended: back to 0.
    stats.events.incoming.get_mut("us-east").unwrap().eta_ms = None;
    stats.anti_entropy.detour = None;
    m.refresh(&stats);
    let text = m.render();
    assert!(
        text.contains(
            "parallax_replication_drain_eta_seconds{peer=\"us-east\",region=\"us-west\"} 0"
        )
    );
    assert!(text.contains("parallax_anti_entropy_detour{peer=\"eu-west\",region=\"us-west\"} 0"));
}

#[test]
fn the_peer_byte_counters_follow_the_nodes_totals() {
    use parallax_core::stats::NodeStats;
    let m = metrics::Metrics::new("us-west");
    let mut stats = NodeStats::default();
    let mut traffic = PeerTraffic {
        peer: "us-east".into(),
        kind: "replicate".into(),
        class: "orders".into(),
        calls: 3,
        items: 9,
        sent_bytes: 1_000,
        received_bytes: 60,
    };
    stats.traffic = vec![traffic.clone()];
    m.refresh(&stats);
    traffic.calls = 5;
    traffic.sent_bytes = 1_500;
    stats.traffic = vec![traffic];
    // Scraped twice: the counters are the totals, not their sum.
    m.refresh(&stats);
    m.refresh(&stats);
    let text = m.render();
    for line in [
        "parallax_peer_calls_total{class=\"orders\",op=\"replicate\",peer=\"us-east\",region=\"us-west\"} 5",
        "parallax_peer_sent_bytes_total{class=\"orders\",op=\"replicate\",peer=\"us-east\",region=\"us-west\"} 1500",
        "parallax_peer_received_bytes_total{class=\"orders\",op=\"replicate\",peer=\"us-east\",region=\"us-west\"} 60",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
}

/// Rows of a table, all partitions, summed over `col` (an Int64 column).
fn sum_of(root: &std::path::Path, table: &str, col: &str) -> i64 {
    files::read_table(root, table)
        .unwrap()
        .iter()
        .map(|b| {
            b.column_by_name(col)
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum()
}

#[test]
fn each_flush_writes_the_rollup_of_its_rows_and_compaction_rebuilds_it_as_one_row_per_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + 2 * HOUR_US);
    // Three flushes, each with rows of the same two 5-minute buckets.
    for round in 0..3u64 {
        for n in 0..40 {
            c.ingest(request(
                T0 + (n % 2) * 300_000_000 + round * 1_000 + n,
                1_000 + n,
            ));
        }
        c.flush().unwrap();
    }
    // Rollups are partitioned by date alone.
    let rollups = dir
        .path()
        .join("requests_5m/region=us-east/date=2026-11-28");
    assert_eq!(
        files::parquet_files(&rollups).len(),
        3,
        "one rollup file a flush"
    );
    let hourly = dir
        .path()
        .join("requests_1h/region=us-east/date=2026-11-28");
    for table in ["requests_5m", "requests_1h", "latency_5m", "latency_1h"] {
        assert_eq!(sum_of(dir.path(), table, "requests"), 120, "{table}");
    }
    assert_eq!(c.written().rows["requests_5m"], 6, "two buckets a flush");
    assert_eq!(c.written().rows["requests_1h"], 3, "one hour a flush");
    // A crash between a raw file and its rollup files: the rollups miss it.
    let before = [
        files::parquet_files(&rollups),
        files::parquet_files(&hourly),
    ]
    .concat();
    c.ingest(request(T0 + 7, 5));
    c.flush().unwrap();
    for f in [
        files::parquet_files(&rollups),
        files::parquet_files(&hourly),
    ]
    .concat()
    {
        if !before.contains(&f) {
            std::fs::remove_file(f).unwrap();
        }
    }
    assert_eq!(sum_of(dir.path(), "requests_1h", "requests"), 120);
    c.maintain().unwrap();
    // Rebuilt from the compacted raw hour: every row counted once, one row
    // per bucket and keys, the date one file; the hourly rollup summed
    // again from it.
    let latency = dir.path().join("latency_5m/region=us-east/date=2026-11-28");
    for (table, date_dir, buckets) in [
        ("requests_5m", &rollups, 2),
        ("requests_1h", &hourly, 1),
        ("latency_5m", &latency, 2),
    ] {
        assert_eq!(files::parquet_files(date_dir).len(), 1, "{table}");
        assert_eq!(sum_of(dir.path(), table, "requests"), 121, "{table}");
        let rows: usize = files::read_table(dir.path(), table)
            .unwrap()
            .iter()
            .map(|b| b.num_rows())
            .sum();
        assert_eq!(rows, buckets, "{table}: one row per bucket and keys");
    }
    // Nothing more to do the next time.
    assert_eq!(c.maintain().unwrap(), (0, 0));
}

#[test]
fn rollups_outlive_the_raw_rows_and_are_deleted_past_their_own_retention() {
    let dir = tempfile::tempdir().unwrap();
    // Raw rows are kept 30 days, rollups 400.
    let now = T0 + 40 * 24 * HOUR_US;
    let c = collector(dir.path(), now);
    c.ingest(request(T0, 1));
    c.ingest(lag(T0, 7));
    c.flush().unwrap();
    c.maintain().unwrap();
    assert!(latencies(dir.path()).is_empty(), "raw rows past 30 days");
    assert_eq!(sum_of(dir.path(), "requests_5m", "requests"), 1);
    assert_eq!(sum_of(dir.path(), "replication_lag_5m", "samples"), 1);
    assert_eq!(sum_of(dir.path(), "requests_1h", "requests"), 1);
    assert_eq!(sum_of(dir.path(), "replication_lag_1h", "samples"), 1);
    let later = collector(dir.path(), T0 + 401 * 24 * HOUR_US);
    assert_eq!(later.maintain().unwrap(), (0, 6), "a date of each rollup");
    assert_eq!(sum_of(dir.path(), "requests_5m", "requests"), 0);
    assert_eq!(sum_of(dir.path(), "requests_1h", "requests"), 0);
}

#[test]
fn closed_hours_written_before_rollups_existed_get_theirs_after_a_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = collector(dir.path(), T0 + 2 * HOUR_US);
    for n in 0..30 {
        c.ingest(request(T0 + n * 1_000_000, 100 + n));
    }
    c.flush().unwrap();
    c.maintain().unwrap();
    // As an earlier release left it: the raw hour compacted, no rollups.
    for table in ["requests_5m", "requests_1h"] {
        std::fs::remove_dir_all(dir.path().join(table)).unwrap();
    }
    assert_eq!(c.maintain().unwrap(), (0, 0), "checked once after start");
    assert_eq!(sum_of(dir.path(), "requests_5m", "requests"), 0);
    let restarted = collector(dir.path(), T0 + 2 * HOUR_US);
    assert_eq!(
        restarted.maintain().unwrap(),
        (4, 0),
        "5-minute, hourly, latency by 5 minutes and by hour"
    );
    assert_eq!(sum_of(dir.path(), "requests_5m", "requests"), 30);
    assert_eq!(sum_of(dir.path(), "requests_1h", "requests"), 30);
    assert_eq!(sum_of(dir.path(), "latency_1h", "requests"), 30);
    assert_eq!(restarted.maintain().unwrap(), (0, 0));
    // As the release before hourly rollups left it (its raw rows maybe
    // gone): the hourly rollup is summed from the 5-minute one.
    std::fs::remove_dir_all(dir.path().join("requests")).unwrap();
    std::fs::remove_dir_all(dir.path().join("requests_1h")).unwrap();
    let restarted = collector(dir.path(), T0 + 2 * HOUR_US);
    assert_eq!(restarted.maintain().unwrap(), (1, 0));
    assert_eq!(sum_of(dir.path(), "requests_1h", "requests"), 30);
}
