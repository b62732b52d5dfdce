//! The Parquet tables: their schemas, and telemetry events turned into
//! Arrow record batches.
//!
//! Every table's files live under
//! `<data-dir>/tables/<table>/region=<R>/date=<YYYY-MM-DD>/hour=<H>/`, where
//! `R` is the region that collected the rows; `region`, `date` and `hour`
//! are partition columns (in the path, not in the files). Timestamps are UTC
//! microseconds; durations carry their unit in their name.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListBuilder, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parallax_replicator::telemetry::{
    AuditEvent, ClockEvent, ConflictEvent, DivergenceEvent, FailoverEvent, ProbeEvent,
    ReplicationEvent, RequestEvent,
};

/// The table names, in the order the README documents them.
pub const TABLES: [&str; 8] = [
    "requests",
    "replication_lag",
    "conflicts",
    "divergence",
    "audits",
    "failovers",
    "probes",
    "clock",
];

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn list_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
        false,
    )
}

fn schema(fields: Vec<Field>) -> SchemaRef {
    Arc::new(Schema::new(fields))
}

/// A row type of one table.
pub trait TableRow: Send + Sync + 'static {
    /// The table's name.
    const TABLE: &'static str;
    /// The table's schema (without the partition columns).
    fn schema() -> SchemaRef;
    /// The row's timestamp (µs since epoch, UTC).
    fn ts_us(&self) -> u64;
    /// Rows (already in `ts` order) as a record batch.
    fn batch(rows: &[&Self]) -> RecordBatch
    where
        Self: Sized;
}

fn ts_array<T: TableRow>(rows: &[&T]) -> ArrayRef {
    Arc::new(
        TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.ts_us() as i64))
            .with_timezone("UTC"),
    )
}

fn strings<T>(rows: &[&T], f: impl Fn(&T) -> &str) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| f(r))))
}

fn i64s<T>(rows: &[&T], f: impl Fn(&T) -> u64) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(
        rows.iter().map(|r| f(r) as i64),
    ))
}

fn lists<T>(rows: &[&T], f: impl Fn(&T) -> &[String]) -> ArrayRef {
    let mut b = ListBuilder::new(StringBuilder::new());
    for r in rows {
        for s in f(r) {
            b.values().append_value(s);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

fn batch(schema: SchemaRef, columns: Vec<ArrayRef>) -> RecordBatch {
    RecordBatch::try_new(schema, columns).expect("columns match their schema")
}

static REQUESTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("op", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("status", DataType::Int32, false),
        Field::new("latency_us", DataType::Int64, false),
        Field::new("consistency", DataType::Utf8, false),
        Field::new("served_by", DataType::Utf8, false),
        Field::new("client_geo", DataType::Utf8, false),
    ])
});

impl TableRow for RequestEvent {
    const TABLE: &'static str = "requests";
    fn schema() -> SchemaRef {
        Arc::clone(&REQUESTS)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.op),
                strings(rows, |r| &r.class),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| i32::from(r.status)),
                )),
                i64s(rows, |r| r.latency_us),
                strings(rows, |r| &r.consistency),
                strings(rows, |r| &r.served_by),
                strings(rows, |r| &r.client_geo),
            ],
        )
    }
}

static REPLICATION_LAG: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("src", DataType::Utf8, false),
        Field::new("dst", DataType::Utf8, false),
        Field::new("lag_ms", DataType::Int64, false),
        Field::new("backlog_ops", DataType::Int64, false),
        Field::new("backlog_bytes", DataType::Int64, false),
        Field::new("applied_ops", DataType::Int64, false),
    ])
});

impl TableRow for ReplicationEvent {
    const TABLE: &'static str = "replication_lag";
    fn schema() -> SchemaRef {
        Arc::clone(&REPLICATION_LAG)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.src),
                strings(rows, |r| &r.dst),
                i64s(rows, |r| r.lag_ms),
                i64s(rows, |r| r.backlog_ops),
                i64s(rows, |r| r.backlog_bytes),
                i64s(rows, |r| r.applied_ops),
            ],
        )
    }
}

static CONFLICTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("class", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        Field::new("policy", DataType::Utf8, false),
        Field::new("outcome", DataType::Utf8, false),
        Field::new("resolution_ms", DataType::Int64, false),
    ])
});

impl TableRow for ConflictEvent {
    const TABLE: &'static str = "conflicts";
    fn schema() -> SchemaRef {
        Arc::clone(&CONFLICTS)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.class),
                strings(rows, |r| &r.key),
                strings(rows, |r| &r.policy),
                strings(rows, |r| &r.outcome),
                i64s(rows, |r| r.resolution_ms),
            ],
        )
    }
}

static DIVERGENCE: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("audit_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        Field::new("key", DataType::Utf8, false),
        list_field("regions"),
        Field::new("state", DataType::Utf8, false),
        // Nullable: files written before the column existed have none.
        Field::new("reason", DataType::Utf8, true),
        ts_field("first_seen"),
        Field::new("age_ms", DataType::Int64, false),
    ])
});

impl TableRow for DivergenceEvent {
    const TABLE: &'static str = "divergence";
    fn schema() -> SchemaRef {
        Arc::clone(&DIVERGENCE)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.audit_id),
                strings(rows, |r| &r.class),
                strings(rows, |r| &r.key),
                lists(rows, |r| &r.regions),
                strings(rows, |r| &r.state),
                strings(rows, |r| &r.reason),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(
                        rows.iter().map(|r| r.first_seen_us as i64),
                    )
                    .with_timezone("UTC"),
                ),
                i64s(rows, |r| r.age_ms),
            ],
        )
    }
}

static AUDITS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("audit_id", DataType::Utf8, false),
        Field::new("class", DataType::Utf8, false),
        list_field("regions"),
        Field::new("entities", DataType::Int64, false),
        Field::new("differing", DataType::Int64, false),
        Field::new("in_flight", DataType::Int64, false),
        Field::new("divergent", DataType::Int64, false),
        Field::new("round_trips", DataType::Int32, false),
        Field::new("bytes", DataType::Int64, false),
        Field::new("duration_ms", DataType::Int64, false),
    ])
});

impl TableRow for AuditEvent {
    const TABLE: &'static str = "audits";
    fn schema() -> SchemaRef {
        Arc::clone(&AUDITS)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.audit_id),
                strings(rows, |r| &r.class),
                lists(rows, |r| &r.regions),
                i64s(rows, |r| r.entities),
                i64s(rows, |r| r.differing),
                i64s(rows, |r| r.in_flight),
                i64s(rows, |r| r.divergent),
                Arc::new(Int32Array::from_iter_values(
                    rows.iter().map(|r| r.round_trips as i32),
                )),
                i64s(rows, |r| r.bytes),
                i64s(rows, |r| r.duration_ms),
            ],
        )
    }
}

static FAILOVERS: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("event", DataType::Utf8, false),
        Field::new("detected_ms", DataType::Int64, true),
        Field::new("rerouted_ms", DataType::Int64, true),
    ])
});

impl TableRow for FailoverEvent {
    const TABLE: &'static str = "failovers";
    fn schema() -> SchemaRef {
        Arc::clone(&FAILOVERS)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.event),
                Arc::new(Int64Array::from_iter(
                    rows.iter().map(|r| r.detected_ms.map(|v| v as i64)),
                )),
                Arc::new(Int64Array::from_iter(
                    rows.iter().map(|r| r.rerouted_ms.map(|v| v as i64)),
                )),
            ],
        )
    }
}

static PROBES: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("vantage", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("ok", DataType::Boolean, false),
    ])
});

impl TableRow for ProbeEvent {
    const TABLE: &'static str = "probes";
    fn schema() -> SchemaRef {
        Arc::clone(&PROBES)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.vantage),
                strings(rows, |r| &r.target),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|r| r.latency_ms),
                )),
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.ok)))),
            ],
        )
    }
}

static CLOCK: LazyLock<SchemaRef> = LazyLock::new(|| {
    schema(vec![
        ts_field("ts"),
        Field::new("peer", DataType::Utf8, false),
        Field::new("offset_ms", DataType::Int64, false),
        Field::new("rtt_ms", DataType::Int64, false),
    ])
});

impl TableRow for ClockEvent {
    const TABLE: &'static str = "clock";
    fn schema() -> SchemaRef {
        Arc::clone(&CLOCK)
    }
    fn ts_us(&self) -> u64 {
        self.ts_us
    }
    fn batch(rows: &[&Self]) -> RecordBatch {
        batch(
            Self::schema(),
            vec![
                ts_array(rows),
                strings(rows, |r| &r.peer),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|r| r.offset_ms),
                )),
                i64s(rows, |r| r.rtt_ms),
            ],
        )
    }
}

/// The schema of a table by name.
pub fn schema_of(table: &str) -> Option<SchemaRef> {
    Some(match table {
        "requests" => RequestEvent::schema(),
        "replication_lag" => ReplicationEvent::schema(),
        "conflicts" => ConflictEvent::schema(),
        "divergence" => DivergenceEvent::schema(),
        "audits" => AuditEvent::schema(),
        "failovers" => FailoverEvent::schema(),
        "probes" => ProbeEvent::schema(),
        "clock" => ClockEvent::schema(),
        _ => return None,
    })
}

/// The UTC date (`YYYY-MM-DD`) and hour of a timestamp in µs.
pub fn date_hour(ts_us: u64) -> (String, u32) {
    let secs = ts_us / 1_000_000;
    let days = (secs / 86_400) as i64;
    let hour = ((secs % 86_400) / 3_600) as u32;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}-{m:02}-{d:02}"), hour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_hours() {
        assert_eq!(date_hour(0), ("1970-01-01".into(), 0));
        // 2026-11-28T17:42:21Z
        assert_eq!(date_hour(1_795_887_741_000_000), ("2026-11-28".into(), 17));
        // 2024-02-29T23:59:59Z
        assert_eq!(date_hour(1_709_251_199_000_000), ("2024-02-29".into(), 23));
    }

    #[test]
    fn every_table_has_a_schema_starting_with_ts() {
        for t in TABLES {
            let s = schema_of(t).unwrap();
            assert_eq!(s.field(0).name(), "ts", "{t}");
            for reserved in ["region", "date", "hour"] {
                assert!(
                    s.field_with_name(reserved).is_err(),
                    "{t} must not hold partition column {reserved}"
                );
            }
        }
    }
}
