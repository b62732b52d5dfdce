//! The parallax collector: every replication, conflict, latency, failover,
//! probe and audit fact of a region, in Parquet tables and Prometheus metrics.
//!
//! Events come from the region's telemetry channel (the replicator, the
//! auditor's records handed to the region, the collector's own health
//! probes). Rows are buffered per table and written, sorted by `ts`, to
//! Hive-partitioned ZSTD Parquet files every `flush_interval_ms`, whenever a
//! table buffers `flush_rows` rows, and on shutdown. A file is written under
//! a hidden temporary name and renamed when complete. Each flush also
//! writes the rollups of the rows it wrote ([`rollup`]). Once an
//! hour has closed, its files are compacted into one with an atomic
//! directory swap and its rollups rebuilt from them; partitions past
//! `retention_days` (rollups: `rollup_retention_days`) are deleted.
//!
//! A `kill -9` loses the rows buffered since the last flush — at most
//! `flush_interval_ms` of telemetry (10 s by default) — and never leaves a
//! corrupt or half-visible file; entity data is not affected.
//!
//! The tables live in a folder or in a bucket of an S3-compatible store
//! ([`bucket`]: single-PUT files, compaction published by a marker).
//!
//! - [`tables`]: every table declared once: its schema, its batches, its rows.
//! - [`files`]: writing, compaction and retention.
//! - `maintain`: the maintenance pass (compaction, rollup rewrites, retention).
//! - [`rollup`]: the 5-minute and hourly rollups of `requests`, `replication_lag` and `conflicts`.
//! - [`metrics`]: the Prometheus metrics.

pub mod bucket;
pub mod files;
mod maintain;
pub mod metrics;
pub mod rollup;
mod storage;
pub mod tables;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parallax_core::clock::Clock;
use parallax_core::config::CollectorConfig;
use parallax_core::stats::NodeView;
use parallax_core::telemetry::{Event, ProbeEvent};
use parallax_core::worker::{Worker, Workers};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};

use crate::files::FileOptions;
use crate::metrics::Metrics;
use crate::tables::{RowSink, Rows, TableRow, date_hour};

/// The collector's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// Everything a collector needs.
#[derive(Clone, Debug)]
pub struct CollectorOptions {
    /// `<data-dir>/tables`, or `collector.tables`: a folder, or with
    /// `bucket` the key prefix inside it.
    pub root: PathBuf,
    /// The bucket the tables are in (`collector.tables = "s3://..."`).
    pub bucket: Option<Arc<bucket::Bucket>>,
    /// The region collecting.
    pub region: String,
    /// Flushing, compaction, retention, probes.
    pub config: CollectorConfig,
    /// The SLO thresholds rollup rows are keyed by ([`rollup::Bounds::of`]).
    pub bounds: rollup::Bounds,
    /// Base URLs of the regions to probe, by name.
    pub probe_urls: BTreeMap<String, String>,
    /// The secrets in force: `GET /v1/probes` takes a client or admin token.
    pub secrets: parallax_core::secrets::SecretCell,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Links cut by a drill in this process (`demo --chaos`): a probe over
    /// one gets no answer.
    pub links: Option<Arc<parallax_core::links::Links>>,
    /// The trust its probes use (`[tls]`: the cluster's CA).
    pub tls: parallax_core::config::TlsConfig,
}

/// What the collector has written, by table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Written {
    /// Rows written, by table.
    pub rows: BTreeMap<String, u64>,
    /// Files written (before compaction).
    pub files: u64,
    /// Bytes written (before compaction).
    pub bytes: u64,
}

/// A region's collector. Cheap to clone.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("region", &self.inner.opts.region)
            .finish()
    }
}

struct Inner {
    opts: CollectorOptions,
    files: FileOptions,
    metrics: Metrics,
    buffers: Mutex<Rows>,
    written: Mutex<Written>,
    latest_probes: Mutex<BTreeMap<String, ProbeEvent>>,
    node: Option<Arc<dyn NodeView>>,
    flush_now: Notify,
    flush_lock: tokio::sync::Mutex<()>,
    /// Held while files are written, compacted or rewritten: a flush
    /// never writes into a partition a compaction is swapping out.
    disk: Mutex<()>,
    /// Whether a maintenance pass since start looked for closed hours the
    /// rollups lack (written before rollups existed).
    backfilled: std::sync::atomic::AtomicBool,
    workers: Workers,
}

impl Collector {
    /// A collector that has not started any task (for the benchmark and tests).
    pub fn new(
        opts: CollectorOptions,
        node: Option<Arc<dyn NodeView>>,
    ) -> Result<Collector, Error> {
        if opts.bucket.is_none() {
            files::recover(&opts.root)?;
            let renamed = files::migrate_padded_hours(&opts.root)?;
            if renamed > 0 {
                tracing::info!(renamed, root = %opts.root.display(), "renamed zero-padded hour partitions");
            }
        }
        let workers = Workers::new(Arc::clone(&opts.clock));
        Ok(Collector {
            inner: Arc::new(Inner {
                files: FileOptions {
                    row_group_rows: opts.config.row_group_rows,
                },
                metrics: Metrics::new(&opts.region),
                buffers: Mutex::new(Rows::default()),
                written: Mutex::new(Written::default()),
                latest_probes: Mutex::new(BTreeMap::new()),
                node,
                flush_now: Notify::new(),
                flush_lock: tokio::sync::Mutex::new(()),
                disk: Mutex::new(()),
                backfilled: std::sync::atomic::AtomicBool::new(false),
                workers,
                opts,
            }),
        })
    }

    /// Starts collecting `events`: ingesting, flushing, probing, compacting.
    pub fn start(
        opts: CollectorOptions,
        events: mpsc::Receiver<Event>,
        node: Option<Arc<dyn NodeView>>,
    ) -> Result<Collector, Error> {
        let c = Collector::new(opts, node)?;
        let workers = &c.inner.workers;
        let me = c.clone();
        workers.spawn("collector:ingest", |w| me.ingest_loop(w, events));
        let me = c.clone();
        workers.spawn("collector:flush", |w| me.flush_loop(w));
        let me = c.clone();
        workers.spawn("collector:maintenance", |w| me.maintenance_loop(w));
        if !c.inner.opts.probe_urls.is_empty() {
            let me = c.clone();
            workers.spawn("collector:probes", |w| me.probe_loop(w));
        }
        if let Some(node) = &c.inner.node {
            node.observe_workers(workers.clone());
        }
        Ok(c)
    }

    /// Takes one event into the buffers and the metrics.
    pub fn ingest(&self, event: Event) {
        self.inner.metrics.observe(&event);
        let full = {
            let mut b = self.inner.buffers.lock().expect("buffers lock");
            b.push(event);
            b.largest() >= self.inner.opts.config.flush_rows
        };
        if full {
            self.inner.flush_now.notify_one();
        }
    }

    /// Writes everything buffered. Returns the rows written.
    pub fn flush(&self) -> Result<u64, Error> {
        let rows = self.inner.buffers.lock().expect("buffers lock").take();
        rows.write_to(self)
    }

    /// `<root>/<table>/region=<this region>`.
    fn region_dir(&self, table: &str) -> PathBuf {
        self.inner
            .opts
            .root
            .join(table)
            .join(format!("region={}", self.inner.opts.region))
    }

    /// `<root>/<table>/region=<this region>/date=<date>`.
    fn date_dir(&self, table: &str, date: &str) -> PathBuf {
        files::date_dir(&self.inner.opts.root, table, &self.inner.opts.region, date)
    }

    /// What has been written so far.
    pub fn written(&self) -> Written {
        self.inner.written.lock().expect("written lock").clone()
    }

    /// The latest probe of each region from here.
    pub fn probes(&self) -> BTreeMap<String, ProbeEvent> {
        self.inner
            .latest_probes
            .lock()
            .expect("probes lock")
            .clone()
    }

    /// The metrics in the Prometheus text format.
    pub fn metrics_text(&self) -> String {
        if let Some(node) = &self.inner.node {
            let stats = node.stats();
            self.inner.metrics.refresh(&stats);
        }
        self.inner.metrics.render()
    }

    /// Counts telemetry events lost upstream.
    pub fn count_dropped(&self, n: u64) {
        self.inner.metrics.dropped(n);
    }

    /// Stops the tasks and writes what is buffered.
    pub async fn shutdown(&self) {
        let late = self.inner.workers.shutdown(Duration::from_secs(10)).await;
        if !late.is_empty() {
            tracing::warn!(workers = ?late, "Collector workers did not stop in time.");
        }
        let _guard = self.inner.flush_lock.lock().await;
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.flush()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Telemetry could not be written at shutdown.")
            }
            Err(e) => tracing::error!(error = %e, "Telemetry flush task failed at shutdown."),
        }
    }

    async fn ingest_loop(self, mut w: Worker, mut events: mpsc::Receiver<Event>) {
        let mut last_dropped = 0;
        w.idle();
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Some(e) => self.ingest(e),
                    None => return,
                },
                _ = w.stopping() => {
                    // Take in what is already queued, then stop.
                    while let Ok(e) = events.try_recv() {
                        self.ingest(e);
                    }
                    return;
                }
            }
            if let Some(node) = &self.inner.node {
                let dropped = node.telemetry_dropped();
                if dropped > last_dropped {
                    self.count_dropped(dropped - last_dropped);
                    last_dropped = dropped;
                }
            }
        }
    }

    async fn flush_loop(self, mut w: Worker) {
        let every = Duration::from_millis(self.inner.opts.config.flush_interval_ms);
        loop {
            w.idle();
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.inner.flush_now.notified() => {}
                _ = w.stopping() => return,
            }
            w.busy();
            let _guard = self.inner.flush_lock.lock().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.flush()).await {
                Ok(Ok(_)) => w.ran(Ok::<(), String>(())),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "Telemetry rows could not be written; they are lost.");
                    w.ran(Err(e));
                }
                Err(e) => {
                    tracing::error!(error = %e, "Telemetry flush task failed.");
                    w.ran(Err(e));
                }
            }
        }
    }

    async fn maintenance_loop(self, mut w: Worker) {
        loop {
            w.busy();
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.maintain()).await {
                Ok(Ok((c, d))) => {
                    if c + d > 0 {
                        tracing::info!(
                            compacted = c,
                            deleted = d,
                            "Telemetry partitions compacted or expired."
                        );
                    }
                    w.ran(Ok::<(), String>(()));
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Telemetry compaction or retention failed; retrying later.");
                    w.ran(Err(e));
                }
                Err(e) => w.ran(Err(e)),
            }
            if !w.idle_for(Duration::from_secs(300)).await {
                return;
            }
        }
    }

    async fn probe_loop(self, mut w: Worker) {
        let cfg = &self.inner.opts.config;
        let client = (self.inner.opts.tls)
            .client_builder()
            .timeout(Duration::from_millis(cfg.probe_timeout_ms))
            .build()
            .expect("HTTP client builds");
        let every = Duration::from_millis(cfg.probe_interval_ms);
        loop {
            w.busy();
            let mut unreachable = Vec::new();
            for (target, url) in &self.inner.opts.probe_urls {
                let started = std::time::Instant::now();
                let timeout = Duration::from_millis(cfg.probe_timeout_ms);
                let cut = match &self.inner.opts.links {
                    Some(links) => links
                        .cross(&self.inner.opts.region, target, timeout)
                        .await
                        .is_err(),
                    None => false,
                };
                let ok = !cut
                    && matches!(client.get(format!("{url}/healthz")).send().await, Ok(r) if r.status().is_success());
                let probe = ProbeEvent {
                    ts_us: self.inner.opts.clock.now_us(),
                    vantage: self.inner.opts.region.clone(),
                    target: target.clone(),
                    latency_ms: started.elapsed().as_secs_f64() * 1e3,
                    ok,
                };
                self.inner
                    .latest_probes
                    .lock()
                    .expect("probes lock")
                    .insert(target.clone(), probe.clone());
                self.ingest(Event::Probe(probe));
                if !ok {
                    unreachable.push(target.as_str());
                }
            }
            w.ran(if unreachable.is_empty() {
                Ok(())
            } else {
                Err(format!("no answer from {}", unreachable.join(", ")))
            });
            if !w.idle_for(every).await {
                return;
            }
        }
    }

    /// `GET /metrics` (open, as Prometheus scrapes it) and `GET /v1/probes`
    /// (client or admin token): this region's latest probe of every region.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/metrics", get(metrics))
            .route("/v1/probes", get(probes))
            .with_state(self.clone())
    }
}

impl Collector {
    fn count_written(&self, table: &str, rows: u64, bytes: u64) {
        self.inner.metrics.wrote(table, rows);
        let mut w = self.inner.written.lock().expect("written lock");
        *w.rows.entry(table.to_owned()).or_insert(0) += rows;
        w.files += 1;
        w.bytes += bytes;
    }
}

/// Writes a table's rows sorted by `ts`, one file per hour they fall in,
/// and their rollup into the date's rollup partition.
impl RowSink for Collector {
    fn write<T: TableRow>(&self, rows: Vec<T>) -> Result<u64, Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let _disk = self.inner.disk.lock().expect("disk lock");
        // Events mostly arrive in time order: sort references, not rows, and only if needed.
        let mut rows: Vec<&T> = rows.iter().collect();
        if !rows.is_sorted_by_key(|r| r.ts_us()) {
            rows.sort_by_key(|r| r.ts_us());
        }
        let n = rows.len() as u64;
        let mut start = 0;
        while start < rows.len() {
            let (date, hour) = date_hour(rows[start].ts_us());
            // The end of this hour, in µs.
            let hour_end = (rows[start].ts_us() / 3_600_000_000 + 1) * 3_600_000_000;
            let end = start + rows[start..].partition_point(|r| r.ts_us() < hour_end);
            let dir = files::partition_dir(
                &self.inner.opts.root,
                T::TABLE,
                &self.inner.opts.region,
                &date,
                hour,
            );
            let batch = T::batch(&rows[start..end]);
            let (_, size) = self.write_file(&dir, &batch, rows[start].ts_us())?;
            self.count_written(T::TABLE, (end - start) as u64, size);
            // Its rollups: the 5-minute rows, and those summed from them.
            let rolled = rollup::roll_up_all(
                T::TABLE,
                std::slice::from_ref(&batch),
                &self.inner.opts.bounds,
            )?;
            for (rollup, rows_rolled) in rolled {
                let dir = self.date_dir(rollup, &date);
                let (_, size) = self.write_file(&dir, &rows_rolled, rows[start].ts_us())?;
                self.count_written(rollup, rows_rolled.num_rows() as u64, size);
            }
            start = end;
        }
        Ok(n)
    }
}

async fn metrics(State(c): State<Collector>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        c.metrics_text(),
    )
        .into_response()
}

async fn probes(State(c): State<Collector>, headers: HeaderMap) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    let secrets = c.inner.opts.secrets.get();
    if !secrets
        .client
        .iter()
        .chain(&secrets.admin)
        .any(|t| parallax_core::api::constant_time_eq(t.as_bytes(), given.as_bytes()))
    {
        let body = serde_json::json!({
            "error": "unauthorized",
            "detail": "GET /v1/probes needs `Authorization: Bearer <cluster.client_token>`",
        });
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    axum::Json(serde_json::json!({ "region": c.inner.opts.region, "probes": c.probes() }))
        .into_response()
}

#[cfg(test)]
mod tests;
