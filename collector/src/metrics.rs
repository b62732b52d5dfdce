//! Prometheus metrics: the same facts as the tables, live.
//!
//! Names start with `parallax_` and carry their unit; counters end in
//! `_total`; labels are limited to `region`, `peer`, `class`, `op` and
//! `status` (for conflicts, `status` is the outcome). The conflict rate is
//! `rate(parallax_conflicts_total[5m]) / rate(parallax_replication_applied_ops_total[5m])`.

use parallax_core::NodeStats;
use parallax_core::telemetry::Event;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder, exponential_buckets,
};

/// A region's metrics.
#[derive(Debug)]
pub struct Metrics {
    region: String,
    registry: Registry,
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    applied: IntCounterVec,
    batches: IntCounterVec,
    lag_seconds: HistogramVec,
    lag_now: GaugeVec,
    backlog: IntGaugeVec,
    drain_rate: IntGaugeVec,
    drain_eta: GaugeVec,
    detour: IntGaugeVec,
    conflicts: IntCounterVec,
    resolution_seconds: HistogramVec,
    clock_offset: GaugeVec,
    probe_seconds: HistogramVec,
    probe_up: IntGaugeVec,
    failovers: IntCounterVec,
    rollouts: IntCounterVec,
    cache_reads: IntCounterVec,
    cache_stale: IntCounterVec,
    cache_staleness: GaugeVec,
    audit_divergent: IntGaugeVec,
    dropped: IntCounterVec,
    rows_written: IntCounterVec,
    files_written: IntCounterVec,
    queue: IntGaugeVec,
    peer_calls: IntCounterVec,
    peer_sent: IntCounterVec,
    peer_received: IntCounterVec,
    /// Held while the peer counters catch up with the node's totals, so
    /// two scrapes at once do not both add the same difference.
    catching_up: std::sync::Mutex<()>,
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let g = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn int_gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn histogram(r: &Registry, name: &str, help: &str, labels: &[&str], start: f64) -> HistogramVec {
    let buckets = exponential_buckets(start, 2.0, 18).expect("valid buckets");
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid histogram");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

impl Metrics {
    /// Metrics of region `region`.
    pub fn new(region: &str) -> Metrics {
        let r = Registry::new();
        Metrics {
            region: region.to_owned(),
            requests: counter(
                &r,
                "parallax_requests_total",
                "Client requests answered, by operation, class and HTTP status.",
                &["region", "op", "class", "status"],
            ),
            request_seconds: histogram(
                &r,
                "parallax_request_duration_seconds",
                "Time to answer a client request.",
                &["region", "op"],
                0.000_05,
            ),
            applied: counter(
                &r,
                "parallax_replication_applied_ops_total",
                "Replicated operations applied here, by origin region.",
                &["region", "peer"],
            ),
            batches: counter(
                &r,
                "parallax_replication_batches_total",
                "Replication batches and heartbeats received, by origin region.",
                &["region", "peer"],
            ),
            lag_seconds: histogram(
                &r,
                "parallax_replication_lag_seconds",
                "Lag samples, one per heartbeat interval whether or not anything arrived: the age of the newest write or heartbeat applied from the origin (corrected for clock offset).",
                &["region", "peer"],
                0.000_5,
            ),
            lag_now: gauge(
                &r,
                "parallax_replication_lag_current_seconds",
                "How far this region trails the origin now (age of its closed timestamp).",
                &["region", "peer"],
            ),
            backlog: int_gauge(
                &r,
                "parallax_replication_backlog_ops",
                "This region's log entries the peer has not acknowledged.",
                &["region", "peer"],
            ),
            drain_rate: int_gauge(
                &r,
                "parallax_replication_drain_ops_per_second",
                "While the backlog from the peer drains into this region: entries per second it shrinks by (0 otherwise).",
                &["region", "peer"],
            ),
            drain_eta: gauge(
                &r,
                "parallax_replication_drain_eta_seconds",
                "While the backlog from the peer drains into this region: when it will be empty at that rate (0 otherwise).",
                &["region", "peer"],
            ),
            detour: int_gauge(
                &r,
                "parallax_anti_entropy_detour",
                "1 while this region has not reached the peer for anti_entropy.detour_after_ms and pulls its writes through the others.",
                &["region", "peer"],
            ),
            conflicts: counter(
                &r,
                "parallax_conflicts_total",
                "Conflicts seen here, by class and outcome (status).",
                &["region", "class", "status"],
            ),
            resolution_seconds: histogram(
                &r,
                "parallax_conflict_resolution_seconds",
                "From a conflict's start to its resolution here.",
                &["region", "class"],
                0.001,
            ),
            clock_offset: gauge(
                &r,
                "parallax_clock_offset_seconds",
                "The peer's clock minus this region's, estimated from round trips.",
                &["region", "peer"],
            ),
            probe_seconds: histogram(
                &r,
                "parallax_probe_duration_seconds",
                "Health probe latency from this region to a region.",
                &["region", "peer"],
                0.000_1,
            ),
            probe_up: int_gauge(
                &r,
                "parallax_probe_up",
                "1 if the last health probe of the region answered.",
                &["region", "peer"],
            ),
            failovers: counter(
                &r,
                "parallax_failovers_total",
                "Ownership moves recorded here.",
                &["region"],
            ),
            rollouts: counter(
                &r,
                "parallax_rollout_moves_total",
                "Rollout stage moves taken here, by class and the stage moved to.",
                &["region", "class", "stage"],
            ),
            cache_reads: counter(
                &r,
                "parallax_cache_reads_total",
                "Reads of clients' feed-kept caches of this region, as they reported them, by client and result (hit, miss, bypassed).",
                &["region", "client", "result"],
            ),
            cache_stale: counter(
                &r,
                "parallax_cache_stale_reads_total",
                "Cache reads that served an older version than this region held when they were served.",
                &["region", "client"],
            ),
            cache_staleness: gauge(
                &r,
                "parallax_cache_staleness_p99_seconds",
                "99th percentile staleness of a client's cache reads in its last report.",
                &["region", "client"],
            ),
            audit_divergent: int_gauge(
                &r,
                "parallax_audit_divergent_keys",
                "Divergent keys found by the last audit recorded here, by class.",
                &["region", "class"],
            ),
            dropped: counter(
                &r,
                "parallax_telemetry_dropped_total",
                "Telemetry events dropped because a consumer was behind.",
                &["region"],
            ),
            rows_written: counter(
                &r,
                "parallax_collector_rows_written_total",
                "Rows written to Parquet, by table (op).",
                &["region", "op"],
            ),
            files_written: counter(
                &r,
                "parallax_collector_files_written_total",
                "Parquet files written, compacted ones included.",
                &["region"],
            ),
            queue: int_gauge(
                &r,
                "parallax_reconciliation_queue_entities",
                "Entities waiting in the reconciliation queue.",
                &["region"],
            ),
            peer_calls: counter(
                &r,
                "parallax_peer_calls_total",
                "Calls to another region answered, by kind (op) and class.",
                &["region", "peer", "op", "class"],
            ),
            peer_sent: counter(
                &r,
                "parallax_peer_sent_bytes_total",
                "Request bytes sent to another region (this region's egress to it), by kind (op) and class.",
                &["region", "peer", "op", "class"],
            ),
            peer_received: counter(
                &r,
                "parallax_peer_received_bytes_total",
                "Answer bytes received from another region (its egress to this one), by kind (op) and class.",
                &["region", "peer", "op", "class"],
            ),
            catching_up: std::sync::Mutex::new(()),
            registry: r,
        }
    }

    /// Takes one event in.
    pub fn observe(&self, event: &Event) {
        let me = self.region.as_str();
        match event {
            Event::Request(r) => {
                let status = r.status.to_string();
                self.requests
                    .with_label_values(&[me, &r.op, &r.class, &status])
                    .inc();
                self.request_seconds
                    .with_label_values(&[me, &r.op])
                    .observe(r.latency_us as f64 / 1e6);
            }
            Event::Replication(r) => {
                // Labelled by the region that trails: a sample taken by
                // the source for a silent destination counts for that
                // destination.
                let labels = [r.dst.as_str(), r.src.as_str()];
                self.applied
                    .with_label_values(&labels)
                    .inc_by(r.applied_ops);
                self.batches
                    .with_label_values(&labels)
                    .inc_by(r.batches + r.heartbeats);
                self.lag_seconds
                    .with_label_values(&labels)
                    .observe(r.lag_ms as f64 / 1e3);
            }
            Event::Conflict(c) => {
                self.conflicts
                    .with_label_values(&[me, &c.class, &c.outcome])
                    .inc();
                if c.outcome != "queued" {
                    self.resolution_seconds
                        .with_label_values(&[me, &c.class])
                        .observe(c.resolution_ms as f64 / 1e3);
                }
            }
            Event::Clock(c) => {
                self.clock_offset
                    .with_label_values(&[me, &c.peer])
                    .set(c.offset_ms as f64 / 1e3);
            }
            Event::Probe(p) => {
                self.probe_seconds
                    .with_label_values(&[me, &p.target])
                    .observe(p.latency_ms / 1e3);
                self.probe_up
                    .with_label_values(&[me, &p.target])
                    .set(i64::from(p.ok));
            }
            Event::Failover(_) => self.failovers.with_label_values(&[me]).inc(),
            Event::Rollout(r) => self
                .rollouts
                .with_label_values(&[me, &r.class, &r.to_stage])
                .inc(),
            Event::Audit(a) => self
                .audit_divergent
                .with_label_values(&[me, &a.class])
                .set(a.divergent as i64),
            // The peer byte counters come from the node's totals (`refresh`).
            Event::Divergence(_) | Event::Traffic(_) => {}
            Event::Cache(c) => {
                let r = &c.report;
                for (result, n) in [
                    ("hit", r.hits),
                    ("miss", r.misses),
                    ("bypassed", r.bypassed),
                ] {
                    self.cache_reads
                        .with_label_values(&[me, &r.client, result])
                        .inc_by(n);
                }
                self.cache_stale
                    .with_label_values(&[me, &r.client])
                    .inc_by(r.stale_hits);
                if let Some(p99) = r.staleness_p99_ms {
                    self.cache_staleness
                        .with_label_values(&[me, &r.client])
                        .set(p99 / 1_000.0);
                }
            }
        }
    }

    /// Counts rows and a file written for a table.
    pub fn wrote(&self, table: &str, rows: u64) {
        self.rows_written
            .with_label_values(&[&self.region, table])
            .inc_by(rows);
        self.files_written.with_label_values(&[&self.region]).inc();
    }

    /// Counts events dropped.
    pub fn dropped(&self, n: u64) {
        if n > 0 {
            self.dropped.with_label_values(&[&self.region]).inc_by(n);
        }
    }

    /// Sets the gauges read from the node's live state.
    pub fn refresh(&self, stats: &NodeStats) {
        for (peer, p) in &stats.replication.peers {
            self.backlog
                .with_label_values(&[&self.region, peer])
                .set(p.backlog_ops as i64);
            if let Some(lag) = p.lag_from_ms {
                self.lag_now
                    .with_label_values(&[&self.region, peer])
                    .set(lag as f64 / 1e3);
            }
        }
        for (origin, i) in &stats.events.incoming {
            let labels = [self.region.as_str(), origin.as_str()];
            self.drain_rate
                .with_label_values(&labels)
                .set(i.drain_ops_per_s.unwrap_or(0) as i64);
            self.drain_eta
                .with_label_values(&labels)
                .set(i.eta_ms.unwrap_or(0) as f64 / 1e3);
        }
        let cut = stats.anti_entropy.detour.as_ref().map(|d| &d.cut);
        for peer in stats.replication.peers.keys() {
            let on = cut.is_some_and(|c| c.contains(peer));
            self.detour
                .with_label_values(&[&self.region, peer])
                .set(i64::from(on));
        }
        self.queue
            .with_label_values(&[&self.region])
            .set(stats.reconciliation_queue as i64);
        let _one_at_a_time = self
            .catching_up
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for t in &stats.traffic {
            let labels = [
                self.region.as_str(),
                t.peer.as_str(),
                t.kind.as_str(),
                t.class.as_str(),
            ];
            for (counter, total) in [
                (&self.peer_calls, t.calls),
                (&self.peer_sent, t.sent_bytes),
                (&self.peer_received, t.received_bytes),
            ] {
                // The node's totals only grow: the counter takes the difference.
                let c = counter.with_label_values(&labels);
                c.inc_by(total.saturating_sub(c.get()));
            }
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        text(&self.registry)
    }
}

/// A registry's metrics in the Prometheus text format.
pub fn text(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding cannot fail");
    String::from_utf8(out).unwrap_or_default()
}
