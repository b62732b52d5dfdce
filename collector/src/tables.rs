//! The Parquet tables, each declared once in the `tables!` list below: its
//! schema, its Arrow record batches, its place in [`TABLES`] and its buffer
//! of rows waiting to be written all come from that one entry. Adding a
//! table is one entry there (and its event in `parallax_core::telemetry`).
//!
//! Every table's files live under
//! `<data-dir>/tables/<table>/region=<R>/date=<YYYY-MM-DD>/hour=<H>/`, where
//! `R` is the region that collected the rows; `region`, `date` and `hour`
//! are partition columns (in the path, not in the files). Timestamps are UTC
//! microseconds; durations carry their unit in their name.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListBuilder, StringArray,
    StringBuilder, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use parallax_core::telemetry::{
    AuditEvent, CacheEvent, ClockEvent, ConflictEvent, DivergenceEvent, Event, FailoverEvent,
    ProbeEvent, ReplicationEvent, RequestEvent, RolloutEvent, TrafficEvent,
};

use crate::Error;

/// A row type of one table: its name and columns, and from those its schema
/// and record batches.
pub trait TableRow: Sized + Send + Sync + 'static {
    /// The table's name.
    const TABLE: &'static str;
    /// The table's columns, `ts` first (without the partition columns).
    const COLUMNS: &'static [Column<Self>];

    /// The row's timestamp (µs since epoch, UTC).
    fn ts_us(&self) -> u64;

    /// The table's schema (without the partition columns).
    fn schema() -> SchemaRef {
        Arc::new(Schema::new(
            Self::COLUMNS.iter().map(Column::field).collect::<Vec<_>>(),
        ))
    }

    /// Rows (already in `ts` order) as a record batch.
    fn batch(rows: &[&Self]) -> RecordBatch {
        let columns = Self::COLUMNS.iter().map(|c| c.array(rows)).collect();
        RecordBatch::try_new(Self::schema(), columns).expect("columns match their schema")
    }
}

/// One column of a table: its name, Arrow type, nullability, and how its
/// value is read from a row.
#[derive(Debug)]
pub struct Column<T> {
    name: &'static str,
    nullable: bool,
    values: Values<T>,
}

/// A column's Arrow type, with how a row's value of it is read.
#[derive(Debug)]
enum Values<T> {
    /// `Timestamp(µs, "UTC")`, from µs since the epoch.
    Timestamp(fn(&T) -> u64),
    /// `Utf8`.
    Text(fn(&T) -> &str),
    /// `Utf8`, null where the row has no value (so always nullable).
    TextOrNull(fn(&T) -> Option<&str>),
    /// `List(Utf8)` (items nullable, named `item`, as Arrow's default).
    TextList(fn(&T) -> &[String]),
    /// `Int32`.
    Int32(fn(&T) -> i32),
    /// `Int64`.
    Int64(fn(&T) -> i64),
    /// `Int64`, null where the row has no value (so always nullable).
    Int64OrNull(fn(&T) -> Option<i64>),
    /// `Float64`.
    Float64(fn(&T) -> f64),
    /// `Float64`, null where the row has no value (so always nullable).
    Float64OrNull(fn(&T) -> Option<f64>),
    /// `Boolean`.
    Boolean(fn(&T) -> bool),
}

impl<T> Column<T> {
    const fn new(name: &'static str, values: Values<T>) -> Column<T> {
        let nullable = matches!(
            values,
            Values::Int64OrNull(_) | Values::TextOrNull(_) | Values::Float64OrNull(_)
        );
        Column {
            name,
            nullable,
            values,
        }
    }
    const fn timestamp(name: &'static str, get: fn(&T) -> u64) -> Column<T> {
        Column::new(name, Values::Timestamp(get))
    }
    const fn text(name: &'static str, get: fn(&T) -> &str) -> Column<T> {
        Column::new(name, Values::Text(get))
    }
    const fn text_or_null(name: &'static str, get: fn(&T) -> Option<&str>) -> Column<T> {
        Column::new(name, Values::TextOrNull(get))
    }
    const fn text_list(name: &'static str, get: fn(&T) -> &[String]) -> Column<T> {
        Column::new(name, Values::TextList(get))
    }
    const fn int32(name: &'static str, get: fn(&T) -> i32) -> Column<T> {
        Column::new(name, Values::Int32(get))
    }
    const fn int64(name: &'static str, get: fn(&T) -> i64) -> Column<T> {
        Column::new(name, Values::Int64(get))
    }
    const fn int64_or_null(name: &'static str, get: fn(&T) -> Option<i64>) -> Column<T> {
        Column::new(name, Values::Int64OrNull(get))
    }
    const fn float64(name: &'static str, get: fn(&T) -> f64) -> Column<T> {
        Column::new(name, Values::Float64(get))
    }
    const fn float64_or_null(name: &'static str, get: fn(&T) -> Option<f64>) -> Column<T> {
        Column::new(name, Values::Float64OrNull(get))
    }
    const fn boolean(name: &'static str, get: fn(&T) -> bool) -> Column<T> {
        Column::new(name, Values::Boolean(get))
    }

    /// The same column, declared nullable although every row has a value
    /// (a column added later: files written before it have none).
    const fn nullable(self) -> Column<T> {
        Column {
            nullable: true,
            ..self
        }
    }

    /// The column as a field of the table's schema.
    pub fn field(&self) -> Field {
        let data_type = match self.values {
            Values::Timestamp(_) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Values::Text(_) | Values::TextOrNull(_) => DataType::Utf8,
            Values::TextList(_) => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
            Values::Int32(_) => DataType::Int32,
            Values::Int64(_) | Values::Int64OrNull(_) => DataType::Int64,
            Values::Float64(_) | Values::Float64OrNull(_) => DataType::Float64,
            Values::Boolean(_) => DataType::Boolean,
        };
        Field::new(self.name, data_type, self.nullable)
    }

    /// The column's values of some rows.
    fn array(&self, rows: &[&T]) -> ArrayRef {
        match self.values {
            Values::Timestamp(get) => Arc::new(
                TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| get(r) as i64))
                    .with_timezone("UTC"),
            ),
            Values::Text(get) => {
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| get(r))))
            }
            Values::TextOrNull(get) => {
                Arc::new(StringArray::from_iter(rows.iter().map(|r| get(r))))
            }
            Values::TextList(get) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for r in rows {
                    for s in get(r) {
                        b.values().append_value(s);
                    }
                    b.append(true);
                }
                Arc::new(b.finish())
            }
            Values::Int32(get) => {
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| get(r))))
            }
            Values::Int64(get) => {
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| get(r))))
            }
            Values::Int64OrNull(get) => {
                Arc::new(Int64Array::from_iter(rows.iter().map(|r| get(r))))
            }
            Values::Float64(get) => {
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| get(r))))
            }
            Values::Float64OrNull(get) => {
                Arc::new(Float64Array::from_iter(rows.iter().map(|r| get(r))))
            }
            Values::Boolean(get) => {
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(get(r)))))
            }
        }
    }
}

/// Where each table's rows go when they are written: a function generic
/// over the row type, which a closure cannot be.
pub(crate) trait RowSink {
    /// Writes one table's rows (in any order); returns how many it wrote.
    fn write<T: TableRow>(&self, rows: Vec<T>) -> Result<u64, Error>;
}

/// Declares the tables. Each entry reads
/// `table = EventVariant(RowType) { "column": kind(|r| value), ... }`:
/// `ts` (from the row's `ts_us`) comes first in every table without being
/// listed; `kind` is one of [`Column`]'s constructors, and a trailing
/// `nullable` marks a column nullable although every row has a value.
/// From it come the [`TableRow`] impls, [`TABLES`], [`schema_of`] and
/// [`Rows`] (every table's rows waiting to be written).
macro_rules! tables {
    ($(
        $(#[doc = $doc:literal])*
        $table:ident = $variant:ident($row:ty) {
            $($col:literal: $kind:ident(|$r:ident| $get:expr) $($modifier:ident)?,)*
        }
    )*) => {
        $(
            $(#[doc = $doc])*
            impl TableRow for $row {
                const TABLE: &'static str = stringify!($table);
                const COLUMNS: &'static [Column<Self>] = &[
                    Column::<Self>::timestamp("ts", |r| r.ts_us),
                    $(Column::<Self>::$kind($col, |$r| $get)$(.$modifier())?,)*
                ];
                fn ts_us(&self) -> u64 {
                    self.ts_us
                }
            }
        )*

        /// The table names, in the order the README documents them.
        pub const TABLES: [&str; [$(stringify!($table)),*].len()] = [$(stringify!($table)),*];

        /// The schema of a table by name.
        pub fn schema_of(table: &str) -> Option<SchemaRef> {
            $(
                if table == stringify!($table) {
                    return Some(<$row as TableRow>::schema());
                }
            )*
            None
        }

        /// Every table's rows waiting to be written, in the order they came.
        #[derive(Default)]
        pub(crate) struct Rows {
            $($table: Vec<$row>,)*
        }

        impl Rows {
            /// Takes an event as a row of its table.
            pub(crate) fn push(&mut self, event: Event) {
                match event {
                    $(Event::$variant(row) => self.$table.push(row),)*
                }
            }

            /// The rows of the fullest table.
            pub(crate) fn largest(&self) -> usize {
                [$(self.$table.len()),*].into_iter().max().unwrap_or(0)
            }

            /// Takes every row out, leaving each table room for as many
            /// as it held.
            pub(crate) fn take(&mut self) -> Rows {
                let next = Rows {
                    $($table: Vec::with_capacity(self.$table.len()),)*
                };
                std::mem::replace(self, next)
            }

            /// Writes every table's rows to `sink`, in table order; returns
            /// the rows written.
            pub(crate) fn write_to(self, sink: &impl RowSink) -> Result<u64, Error> {
                let mut written = 0;
                $(written += sink.write(self.$table)?;)*
                Ok(written)
            }
        }
    };
}

tables! {
    /// One row per client request a region answered.
    requests = Request(RequestEvent) {
        "op": text(|r| &r.op),
        "class": text(|r| &r.class),
        "status": int32(|r| i32::from(r.status)),
        "latency_us": int64(|r| r.latency_us as i64),
        "consistency": text(|r| &r.consistency),
        "served_by": text(|r| &r.served_by),
        "client_geo": text(|r| &r.client_geo),
    }

    /// One lag sample per region pair per heartbeat interval.
    replication_lag = Replication(ReplicationEvent) {
        "src": text(|r| &r.src),
        "dst": text(|r| &r.dst),
        "lag_ms": int64(|r| r.lag_ms as i64),
        "backlog_ops": int64(|r| r.backlog_ops as i64),
        "backlog_bytes": int64(|r| r.backlog_bytes as i64),
        "applied_ops": int64(|r| r.applied_ops as i64),
        "drain_ops_per_s": int64_or_null(|r| r.drain_ops_per_s.map(|v| v as i64)),
        "eta_ms": int64_or_null(|r| r.eta_ms.map(|v| v as i64)),
    }

    /// One row per conflict a region detected or resolved.
    conflicts = Conflict(ConflictEvent) {
        "class": text(|r| &r.class),
        "key": text(|r| &r.key),
        "policy": text(|r| &r.policy),
        "outcome": text(|r| &r.outcome),
        "resolution_ms": int64(|r| r.resolution_ms as i64),
    }

    /// One row per key an audit found divergent or in flight, or repaired.
    divergence = Divergence(DivergenceEvent) {
        "audit_id": text(|r| &r.audit_id),
        "class": text(|r| &r.class),
        "key": text(|r| &r.key),
        "regions": text_list(|r| &r.regions),
        "state": text(|r| &r.state),
        // Nullable: files written before the column existed have none.
        "reason": text(|r| &r.reason) nullable,
        "first_seen": timestamp(|r| r.first_seen_us),
        "age_ms": int64(|r| r.age_ms as i64),
    }

    /// One row per class per audit.
    audits = Audit(AuditEvent) {
        "audit_id": text(|r| &r.audit_id),
        "class": text(|r| &r.class),
        "regions": text_list(|r| &r.regions),
        "entities": int64(|r| r.entities as i64),
        "differing": int64(|r| r.differing as i64),
        "in_flight": int64(|r| r.in_flight as i64),
        "divergent": int64(|r| r.divergent as i64),
        "round_trips": int32(|r| r.round_trips as i32),
        "bytes": int64(|r| r.bytes as i64),
        "duration_ms": int64(|r| r.duration_ms as i64),
    }

    /// One row per ownership move by hand, and per step of a failover a
    /// router ran (the columns after `rerouted_ms` came later: null in
    /// older files and in moves by hand).
    failovers = Failover(FailoverEvent) {
        "event": text(|r| &r.event),
        "detected_ms": int64_or_null(|r| r.detected_ms.map(|v| v as i64)),
        "rerouted_ms": int64_or_null(|r| r.rerouted_ms.map(|v| v as i64)),
        "failover_id": text_or_null(|r| r.id.as_deref()),
        "router": text_or_null(|r| r.router.as_deref()),
        "failed": text_or_null(|r| r.failed.as_deref()),
        "phase": text_or_null(|r| r.phase.as_deref()),
        "delegate": text_or_null(|r| r.delegate.as_deref()),
        "epoch": int64_or_null(|r| r.epoch.map(|v| v as i64)),
        "moved_by": text_or_null(|r| r.moved_by.as_deref()),
        "last_ok_us": int64_or_null(|r| r.last_ok_us.map(|v| v as i64)),
        "first_failed_us": int64_or_null(|r| r.first_failed_us.map(|v| v as i64)),
        "down_us": int64_or_null(|r| r.down_us.map(|v| v as i64)),
        "last_answer_us": int64_or_null(|r| r.last_answer_us.map(|v| v as i64)),
        "moved_us": int64_or_null(|r| r.moved_us.map(|v| v as i64)),
        "up_us": int64_or_null(|r| r.up_us.map(|v| v as i64)),
        "handed_back_us": int64_or_null(|r| r.handed_back_us.map(|v| v as i64)),
    }

    /// One row per rollout stage move, recorded by the region that took it.
    rollouts = Rollout(RolloutEvent) {
        "class": text(|r| &r.class),
        "from_stage": text(|r| &r.from_stage),
        "to_stage": text(|r| &r.to_stage),
        "forced": boolean(|r| r.forced),
    }

    /// One row per report of a client's feed-kept read cache: its reads in
    /// the window and how stale the ones served from memory were.
    cache_reads = Cache(CacheEvent) {
        "client": text(|r| &r.report.client),
        "location": text(|r| &r.report.location),
        "window_ms": int64(|r| r.report.window_ms as i64),
        "reads": int64(|r| r.report.reads as i64),
        "hits": int64(|r| r.report.hits as i64),
        "misses": int64(|r| r.report.misses as i64),
        "bypassed": int64(|r| r.report.bypassed as i64),
        "invalidations": int64(|r| r.report.invalidations as i64),
        "settled": int64(|r| r.report.settled as i64),
        "stale_hits": int64(|r| r.report.stale_hits as i64),
        "staleness_p50_ms": float64_or_null(|r| r.report.staleness_p50_ms),
        "staleness_p99_ms": float64_or_null(|r| r.report.staleness_p99_ms),
        "staleness_max_ms": float64_or_null(|r| r.report.staleness_max_ms),
        "feed_lag_ms": int64_or_null(|r| r.report.feed_lag_ms.map(|v| v as i64)),
    }

    /// One row per health probe a region made of a region.
    probes = Probe(ProbeEvent) {
        "vantage": text(|r| &r.vantage),
        "target": text(|r| &r.target),
        "latency_ms": float64(|r| r.latency_ms),
        "ok": boolean(|r| r.ok),
    }

    /// One row per clock offset estimate.
    clock = Clock(ClockEvent) {
        "peer": text(|r| &r.peer),
        "offset_ms": int64(|r| r.offset_ms),
        "rtt_ms": int64(|r| r.rtt_ms as i64),
    }

    /// One row per peer, kind and class a region's calls carried bytes of
    /// in a report window (`collector.traffic_interval_ms`).
    traffic = Traffic(TrafficEvent) {
        "peer": text(|r| &r.traffic.peer),
        "kind": text(|r| &r.traffic.kind),
        "class": text(|r| &r.traffic.class),
        "calls": int64(|r| r.traffic.calls as i64),
        "items": int64(|r| r.traffic.items as i64),
        "sent_bytes": int64(|r| r.traffic.sent_bytes as i64),
        "received_bytes": int64(|r| r.traffic.received_bytes as i64),
    }
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

    /// Every table's columns as the files already on disk and the web app's
    /// queries have them, written out by hand rather than derived from the
    /// declarations, so that changing a declaration fails here.
    fn pinned() -> Vec<(&'static str, Vec<Field>)> {
        let field = |name: &str, data_type: DataType| Field::new(name, data_type, false);
        let ts = |name: &str| {
            field(
                name,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            )
        };
        let text = |name: &str| field(name, DataType::Utf8);
        let int32 = |name: &str| field(name, DataType::Int32);
        let int64 = |name: &str| field(name, DataType::Int64);
        let texts = |name: &str| {
            let item = Field::new("item", DataType::Utf8, true);
            field(name, DataType::List(Arc::new(item)))
        };
        vec![
            (
                "requests",
                vec![
                    ts("ts"),
                    text("op"),
                    text("class"),
                    int32("status"),
                    int64("latency_us"),
                    text("consistency"),
                    text("served_by"),
                    text("client_geo"),
                ],
            ),
            (
                "replication_lag",
                vec![
                    ts("ts"),
                    text("src"),
                    text("dst"),
                    int64("lag_ms"),
                    int64("backlog_ops"),
                    int64("backlog_bytes"),
                    int64("applied_ops"),
                    // Added with the catch-up pace: null in older files.
                    int64("drain_ops_per_s").with_nullable(true),
                    int64("eta_ms").with_nullable(true),
                ],
            ),
            (
                "conflicts",
                vec![
                    ts("ts"),
                    text("class"),
                    text("key"),
                    text("policy"),
                    text("outcome"),
                    int64("resolution_ms"),
                ],
            ),
            (
                "divergence",
                vec![
                    ts("ts"),
                    text("audit_id"),
                    text("class"),
                    text("key"),
                    texts("regions"),
                    text("state"),
                    text("reason").with_nullable(true),
                    ts("first_seen"),
                    int64("age_ms"),
                ],
            ),
            (
                "audits",
                vec![
                    ts("ts"),
                    text("audit_id"),
                    text("class"),
                    texts("regions"),
                    int64("entities"),
                    int64("differing"),
                    int64("in_flight"),
                    int64("divergent"),
                    int32("round_trips"),
                    int64("bytes"),
                    int64("duration_ms"),
                ],
            ),
            (
                "failovers",
                vec![
                    ts("ts"),
                    text("event"),
                    int64("detected_ms").with_nullable(true),
                    int64("rerouted_ms").with_nullable(true),
                    // Added with the router: null in files written before.
                    text("failover_id").with_nullable(true),
                    text("router").with_nullable(true),
                    text("failed").with_nullable(true),
                    text("phase").with_nullable(true),
                    text("delegate").with_nullable(true),
                    int64("epoch").with_nullable(true),
                    text("moved_by").with_nullable(true),
                    int64("last_ok_us").with_nullable(true),
                    int64("first_failed_us").with_nullable(true),
                    int64("down_us").with_nullable(true),
                    int64("last_answer_us").with_nullable(true),
                    int64("moved_us").with_nullable(true),
                    int64("up_us").with_nullable(true),
                    int64("handed_back_us").with_nullable(true),
                ],
            ),
            (
                "rollouts",
                vec![
                    ts("ts"),
                    text("class"),
                    text("from_stage"),
                    text("to_stage"),
                    field("forced", DataType::Boolean),
                ],
            ),
            (
                "cache_reads",
                vec![
                    ts("ts"),
                    text("client"),
                    text("location"),
                    int64("window_ms"),
                    int64("reads"),
                    int64("hits"),
                    int64("misses"),
                    int64("bypassed"),
                    int64("invalidations"),
                    int64("settled"),
                    int64("stale_hits"),
                    field("staleness_p50_ms", DataType::Float64).with_nullable(true),
                    field("staleness_p99_ms", DataType::Float64).with_nullable(true),
                    field("staleness_max_ms", DataType::Float64).with_nullable(true),
                    int64("feed_lag_ms").with_nullable(true),
                ],
            ),
            (
                "probes",
                vec![
                    ts("ts"),
                    text("vantage"),
                    text("target"),
                    field("latency_ms", DataType::Float64),
                    field("ok", DataType::Boolean),
                ],
            ),
            (
                "clock",
                vec![ts("ts"), text("peer"), int64("offset_ms"), int64("rtt_ms")],
            ),
            (
                "traffic",
                vec![
                    ts("ts"),
                    text("peer"),
                    text("kind"),
                    text("class"),
                    int64("calls"),
                    int64("items"),
                    int64("sent_bytes"),
                    int64("received_bytes"),
                ],
            ),
        ]
    }

    #[test]
    fn every_table_keeps_the_schema_its_files_on_disk_have() {
        let pinned = pinned();
        let names: Vec<&str> = pinned.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            TABLES.as_slice(),
            names.as_slice(),
            "tables and their order"
        );
        let columns = |s: &Schema| -> Vec<String> {
            s.fields()
                .iter()
                .map(|f| {
                    format!(
                        "{}: {:?}, nullable {}",
                        f.name(),
                        f.data_type(),
                        f.is_nullable()
                    )
                })
                .collect()
        };
        for (table, fields) in pinned {
            let pinned = Schema::new(fields);
            let declared = schema_of(table).unwrap();
            // Column by column first, for a failure that reads.
            assert_eq!(columns(&declared), columns(&pinned), "{table}");
            // Then everything: list items, metadata.
            assert_eq!(*declared, pinned, "{table}");
        }
        assert!(schema_of("request").is_none());
    }
}
