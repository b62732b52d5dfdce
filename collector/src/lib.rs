//! The parallax collector: every replication, conflict, latency, failover,
//! probe and audit fact of a region, in Parquet tables and Prometheus metrics.
//!
//! Events come from the region's telemetry channel (the replicator, the
//! auditor's records handed to the region, the collector's own health
//! probes). Rows are buffered per table and written, sorted by `ts`, to
//! Hive-partitioned ZSTD Parquet files every `flush_interval_ms`, whenever a
//! table buffers `flush_rows` rows, and on shutdown. A file is written under
//! a hidden temporary name and renamed when complete. Each flush also
//! writes the 5-minute rollups of the rows it wrote ([`rollup`]). Once an
//! hour has closed, its files are compacted into one with an atomic
//! directory swap and its rollups rebuilt from them; partitions past
//! `retention_days` (rollups: `rollup_retention_days`) are deleted.
//!
//! A `kill -9` loses the rows buffered since the last flush — at most
//! `flush_interval_ms` of telemetry (10 s by default) — and never leaves a
//! corrupt or half-visible file; entity data is not affected.
//!
//! - [`tables`]: every table declared once: its schema, its batches, its rows.
//! - [`files`]: writing, compaction and retention.
//! - [`rollup`]: the 5-minute rollups of `requests` and `replication_lag`.
//! - [`metrics`]: the Prometheus metrics.

pub mod files;
pub mod metrics;
pub mod rollup;
pub mod tables;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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
    /// `<data-dir>/tables`.
    pub root: PathBuf,
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
        files::recover(&opts.root)?;
        let renamed = files::migrate_padded_hours(&opts.root)?;
        if renamed > 0 {
            tracing::info!(renamed, root = %opts.root.display(), "renamed zero-padded hour partitions");
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

    /// Compacts closed hours, rewrites each date's rollup as one file
    /// (rebuilding the hours just compacted from their raw files), and
    /// deletes partitions past retention. Returns (partitions compacted or
    /// rewritten, partitions deleted).
    pub fn maintain(&self) -> Result<(u64, u64), Error> {
        let cfg = &self.inner.opts.config;
        let now = self.inner.opts.clock.now_us();
        let (today, hour_now) = date_hour(now);
        let closed = |date: &str, hour: &str| {
            date < today.as_str() || hour.parse::<u32>().is_ok_and(|h| h < hour_now)
        };
        let oldest_kept =
            |days: u32| date_hour(now.saturating_sub(u64::from(days) * 86_400_000_000)).0;
        let (raw_kept, rollups_kept) = (
            oldest_kept(cfg.retention_days),
            oldest_kept(cfg.rollup_retention_days),
        );
        let (mut compacted, mut deleted) = (0, 0);
        // The hours compacted now, by rollup and date: their rollup rows
        // are rebuilt from the compacted files.
        let mut rebuild: BTreeMap<(&str, String), BTreeSet<u32>> = BTreeMap::new();
        for table in tables::TABLES {
            for (date, date_dir) in files::partitions(&self.region_dir(table), "date") {
                if date < raw_kept {
                    remove(&date_dir)?;
                    deleted += 1;
                    continue;
                }
                if !cfg.compact {
                    continue;
                }
                for (hour, hour_dir) in files::partitions(&date_dir, "hour") {
                    if !closed(&date, &hour) {
                        continue;
                    }
                    let _disk = self.inner.disk.lock().expect("disk lock");
                    if files::compact_partition(
                        &self.inner.opts.root,
                        &hour_dir,
                        &self.inner.files,
                    )?
                    .is_none()
                    {
                        continue;
                    }
                    self.inner.metrics.wrote(table, 0);
                    compacted += 1;
                    if let (Some(r), Ok(h)) = (rollup::rollup_of(table), hour.parse()) {
                        rebuild.entry((r, date.clone())).or_default().insert(h);
                    }
                }
            }
        }
        // Once after start: every closed raw hour without rollup rows gets them.
        let backfill = !self
            .inner
            .backfilled
            .swap(true, std::sync::atomic::Ordering::Relaxed);
        for r in rollup::ROLLUPS {
            let raw = rollup::raw_of(r).expect("a rollup's raw table");
            let mut dates: BTreeSet<String> = files::partitions(&self.region_dir(r), "date")
                .into_iter()
                .map(|d| d.0)
                .collect();
            if backfill {
                dates.extend(
                    files::partitions(&self.region_dir(raw), "date")
                        .into_iter()
                        .map(|d| d.0),
                );
            }
            for date in dates {
                let dir = self.date_dir(r, &date);
                if date < rollups_kept {
                    if dir.exists() {
                        remove(&dir)?;
                        deleted += 1;
                    }
                    continue;
                }
                if !cfg.compact {
                    continue;
                }
                let hours = rebuild.remove(&(r, date.clone())).unwrap_or_default();
                // Only dates that still have raw rows can lack rollup rows.
                let raw_date = self.date_dir(raw, &date);
                let covered: Option<IsClosed<'_>> =
                    (backfill && raw_date.exists()).then_some(&closed);
                compacted += u64::from(self.rewrite_rollup(r, raw, &date, hours, covered)?);
            }
        }
        Ok((compacted, deleted))
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

    /// Rewrites one date of a rollup as one file: its rows merged (one per
    /// bucket and keys), those of the hours in `rebuild` recomputed from
    /// the raw files (which also counts what a crash between a raw file and
    /// its rollup file left out). With `backfill` (which says whether a
    /// raw hour is closed), closed raw hours without rollup rows are
    /// rebuilt too. Does nothing to a date already one file with nothing to
    /// rebuild. Returns whether it rewrote.
    fn rewrite_rollup(
        &self,
        rollup: &str,
        raw: &str,
        date: &str,
        mut rebuild: BTreeSet<u32>,
        backfill: Option<IsClosed<'_>>,
    ) -> Result<bool, Error> {
        let _disk = self.inner.disk.lock().expect("disk lock");
        let dir = self.date_dir(rollup, date);
        let current = files::parquet_files(&dir);
        if backfill.is_none() && rebuild.is_empty() && current.len() <= 1 {
            return Ok(false);
        }
        let rows = files::read_files(&current)?;
        let raw_dir = self.date_dir(raw, date);
        if let Some(closed) = backfill {
            let covered = rollup::hours_of(&rows);
            for (hour, hour_dir) in files::partitions(&raw_dir, "hour") {
                if let Ok(h) = hour.parse::<u32>()
                    && closed(date, &hour)
                    && !covered.contains(&h)
                    && !files::parquet_files(&hour_dir).is_empty()
                {
                    rebuild.insert(h);
                }
            }
        }
        if rebuild.is_empty() && current.len() <= 1 {
            return Ok(false);
        }
        let mut parts = rollup::without_hours(&rows, &rebuild)?;
        for h in &rebuild {
            let raw_rows =
                files::read_files(&files::parquet_files(&raw_dir.join(format!("hour={h}"))))?;
            if let Some(b) = rollup::roll_up(raw, &raw_rows, &self.inner.opts.bounds)? {
                parts.push(b);
            }
        }
        match rollup::merge(rollup, &parts)? {
            Some(merged) => {
                files::swap_in(&self.inner.opts.root, &dir, &merged, &self.inner.files)?
            }
            None if dir.exists() => remove(&dir)?,
            None => return Ok(false),
        }
        self.inner.metrics.wrote(rollup, 0);
        Ok(true)
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
        let client = reqwest::Client::builder()
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

/// Whether the hour (`date`, `hour` as in their partitions' names) has closed.
type IsClosed<'a> = &'a dyn Fn(&str, &str) -> bool;

fn remove(dir: &Path) -> Result<(), Error> {
    std::fs::remove_dir_all(dir)
        .map_err(|e| Error::Io(format!("cannot remove {}: {e}", dir.display())))
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
            let (_, size) =
                files::write_file(&dir, &batch, rows[start].ts_us(), &self.inner.files)?;
            self.count_written(T::TABLE, (end - start) as u64, size);
            if let Some(rollup) = rollup::rollup_of(T::TABLE)
                && let Some(rolled) = rollup::roll_up(T::TABLE, &[batch], &self.inner.opts.bounds)?
            {
                let dir = self.date_dir(rollup, &date);
                let (_, size) =
                    files::write_file(&dir, &rolled, rows[start].ts_us(), &self.inner.files)?;
                self.count_written(rollup, rolled.num_rows() as u64, size);
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
