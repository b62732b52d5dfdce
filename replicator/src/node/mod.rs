//! A region node: the store, the writer, the shippers and the logic of every
//! client and region-to-region request, independent of HTTP (the
//! [`crate::api`] module puts HTTP in front of it; simulations call it
//! directly through [`parallax_core::transport::SimNet`]).
//!
//! [`Node`] is a small facade; its methods live by concern:
//! - [`write`](self::write): client writes, forwarding, quorum waits;
//! - [`read`](self::read): the read consistency ladder;
//! - [`ownership`](self::ownership): delegations and the owner of a key;
//! - [`feed`](self::feed): the change feed;
//! - [`peer`](self::peer): requests from other regions;
//! - [`anti_entropy`](self::anti_entropy): tree questions and repair passes;
//! - [`background`](self::background): the loops a node runs besides requests.

mod anti_entropy;
mod background;
mod feed;
mod lease;
mod ownership;
mod peer;
mod read;
mod rollout;
mod write;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use parallax_core::api::{ConflictRecord, QueuedConflict};
use parallax_core::clock::Clock;
use parallax_core::config::{ClassConfig, Config};
use parallax_core::entity::Entity;
use parallax_core::error::{Error, Result};
use parallax_core::protocol::{PeerRequest, PeerResponse};
use parallax_core::secrets::{SecretCell, Secrets};
use parallax_core::stats::NodeStats;
use parallax_core::telemetry::{Event, Stats, Telemetry};
use parallax_core::transport::{PeerHandler, Transport};
use parallax_core::worker::{WorkerStatus, Workers};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::command::Command;
use crate::replication::{LagSampler, Replication, Shipper};
use crate::store::Store;
use crate::wal::Wal;
use crate::writer::{Writer, WriterParts};

pub use feed::{Cursor, MAX_PAGE};

/// How the writer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriterMode {
    /// On its own OS thread (production).
    Thread,
    /// As a task on the current runtime (deterministic simulations).
    Task,
}

/// Everything needed to start a node.
pub struct NodeOptions {
    /// The cluster config.
    pub config: Arc<Config>,
    /// This region's name.
    pub region: String,
    /// Directory of the region's store file.
    pub data_dir: PathBuf,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// Reaches the other regions.
    pub transport: Arc<dyn Transport>,
    /// How the writer runs.
    pub writer_mode: WriterMode,
    /// Capacity of the telemetry channel.
    pub telemetry_capacity: usize,
    /// Extra consumer of telemetry events (the collector); sent to without blocking.
    pub subscriber: Option<mpsc::Sender<Event>>,
    /// Seed of the node's RNG (retry jitter).
    pub seed: u64,
    /// Ship the log to the other regions (off only for benchmark baselines).
    pub replicate: bool,
    /// Serve `POST /v1/admin/fault`, which changes stored entities without
    /// replicating them (for drills; never in production).
    pub allow_fault_injection: bool,
    /// The secrets its API accepts, shared with whatever reloads them
    /// (default: the config's, never reloaded).
    pub secrets: Option<SecretCell>,
}

impl std::fmt::Debug for NodeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeOptions")
            .field("region", &self.region)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl NodeOptions {
    /// Options with production defaults.
    pub fn new(
        config: Arc<Config>,
        region: &str,
        data_dir: PathBuf,
        transport: Arc<dyn Transport>,
    ) -> NodeOptions {
        NodeOptions {
            config,
            region: region.to_owned(),
            data_dir,
            clock: Arc::new(parallax_core::clock::SystemClock),
            transport,
            writer_mode: WriterMode::Thread,
            telemetry_capacity: 65_536,
            subscriber: None,
            seed: 0x5eed,
            replicate: true,
            allow_fault_injection: false,
            secrets: None,
        }
    }
}

pub use parallax_core::protocol::{ReadRequest, WriteRequest};

/// A region node. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("region", &self.inner.region)
            .finish()
    }
}

struct Inner {
    region: String,
    config: Arc<Config>,
    store: Store,
    clock: Arc<dyn Clock>,
    transport: Arc<dyn Transport>,
    telemetry: Telemetry,
    stats: Arc<Stats>,
    writer: mpsc::Sender<Command>,
    writer_done: Mutex<Option<oneshot::Receiver<()>>>,
    repl: Arc<Replication>,
    workers: Workers,
    /// The telemetry relay, apart: it stops after the writer, so the
    /// events of the writer's last commits still reach the collector.
    relay: Workers,
    /// Workers of other parts of the process (the collector) shown in `/v1/stats`.
    observed: Mutex<Vec<Workers>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    ready: AtomicBool,
    started_ms: u64,
    allow_fault_injection: bool,
    secrets: SecretCell,
    ae_lock: tokio::sync::Mutex<()>,
    /// Ownership moves, one at a time (a conditional move checks and acts
    /// with no other in between).
    ownership_lock: tokio::sync::Mutex<()>,
    /// Set when the node stops: open change-feed streams end.
    streams_closed: tokio::sync::watch::Sender<bool>,
    /// Lease checks after a lapse, one at a time; holds when the last
    /// renewal started (ms).
    lease_lock: tokio::sync::Mutex<u64>,
    /// A lease renewal is asking the peers (in the background).
    lease_renewing: std::sync::atomic::AtomicBool,
}

impl Node {
    /// Opens the store and starts the writer, the shippers and the telemetry consumer.
    pub async fn start(opts: NodeOptions) -> Result<Node> {
        let NodeOptions {
            config,
            region,
            data_dir,
            clock,
            transport,
            writer_mode,
            telemetry_capacity,
            subscriber,
            seed,
            replicate,
            allow_fault_injection,
            secrets,
        } = opts;
        let secrets = secrets.unwrap_or_else(|| SecretCell::new(Secrets::of(&config.cluster)));
        if !config.regions.contains_key(&region) {
            return Err(Error::Config(format!(
                "region `{region}` is not declared in the config (declared: {}). Fix: pass --region with one of those",
                config.region_names().join(", ")
            )));
        }
        let store = Store::open(&data_dir.join(format!("{region}.redb")))?;
        let meta = store.load_meta()?;
        let (wal, replay) = Wal::open(
            &data_dir.join(format!("{region}.wal")),
            meta.checkpoint,
            config.storage.wal_segment_bytes,
        )?;
        let peers: Vec<String> = config
            .regions
            .keys()
            .filter(|r| **r != region)
            .cloned()
            .collect();
        let repl = Arc::new(Replication::new(
            &meta,
            &peers,
            clock.now_ms(),
            config.cluster.lease_ms,
        ));
        let (telemetry, events) = Telemetry::channel(telemetry_capacity);
        let stats = Arc::new(Stats::new(&region));
        let (writer_tx, writer_rx) = mpsc::channel(8_192);
        let writer = Writer::recover(
            WriterParts {
                region: region.clone(),
                config: Arc::clone(&config),
                store: store.clone(),
                wal,
                clock: Arc::clone(&clock),
                repl: Arc::clone(&repl),
                telemetry: telemetry.clone(),
                stats: Arc::clone(&stats),
            },
            &meta,
            replay,
        )?;
        let (done_tx, done_rx) = oneshot::channel();
        let mut writer_task = None;
        match writer_mode {
            WriterMode::Thread => {
                std::thread::Builder::new()
                    .name(format!("writer-{region}"))
                    .spawn(move || {
                        writer.run_blocking(writer_rx);
                        let _ = done_tx.send(());
                    })
                    .map_err(|e| Error::Internal(format!("cannot start the writer thread: {e}")))?;
            }
            WriterMode::Task => {
                writer_task = Some(tokio::spawn(async move {
                    writer.run_async(writer_rx).await;
                    let _ = done_tx.send(());
                }));
            }
        }
        let inner = Arc::new(Inner {
            region: region.clone(),
            config: Arc::clone(&config),
            store,
            clock: Arc::clone(&clock),
            transport: Arc::clone(&transport),
            telemetry: telemetry.clone(),
            stats: Arc::clone(&stats),
            writer: writer_tx.clone(),
            writer_done: Mutex::new(Some(done_rx)),
            repl: Arc::clone(&repl),
            workers: Workers::new(Arc::clone(&clock)),
            relay: Workers::new(Arc::clone(&clock)),
            observed: Mutex::new(Vec::new()),
            writer_task: Mutex::new(writer_task),
            ready: AtomicBool::new(false),
            started_ms: clock.now_ms(),
            allow_fault_injection,
            secrets,
            ae_lock: tokio::sync::Mutex::new(()),
            ownership_lock: tokio::sync::Mutex::new(()),
            streams_closed: tokio::sync::watch::Sender::new(false),
            lease_lock: tokio::sync::Mutex::new(0),
            lease_renewing: std::sync::atomic::AtomicBool::new(false),
        });
        let workers = &inner.workers;
        let relay = telemetry.clone();
        inner.relay.spawn("telemetry", |w| {
            background::relay_events(w, events, stats, subscriber, relay)
        });
        let writer = writer_tx.clone();
        let every = Duration::from_millis(config.storage.checkpoint_interval_ms);
        workers.spawn("checkpoints", move |w| {
            background::checkpoints(w, writer, every)
        });
        if replicate {
            for (i, peer) in peers.iter().enumerate() {
                let shipper = Shipper {
                    me: region.clone(),
                    peer: peer.clone(),
                    config: Arc::clone(&config),
                    clock: Arc::clone(&clock),
                    transport: Arc::clone(&transport),
                    repl: Arc::clone(&repl),
                    writer: writer_tx.clone(),
                    telemetry: telemetry.clone(),
                    seed: seed.wrapping_add(i as u64 + 1),
                };
                workers.spawn(format!("shipper:{peer}"), |w| shipper.run(w));
            }
        }
        if !peers.is_empty() {
            let (region, transport) = (region.clone(), Arc::clone(&transport));
            let (clock, telemetry) = (Arc::clone(&clock), telemetry.clone());
            let every = Duration::from_millis(config.collector.traffic_interval_ms);
            workers.spawn("traffic", move |w| {
                background::traffic_reports(w, region, transport, clock, telemetry, every)
            });
        }
        if replicate && !peers.is_empty() {
            let sampler = LagSampler {
                me: region.clone(),
                repl: Arc::clone(&repl),
                clock: Arc::clone(&clock),
                telemetry,
                every: Duration::from_millis(config.replication.heartbeat_interval_ms),
            };
            workers.spawn("lag-sampler", |w| sampler.run(w));
            let node = Node {
                inner: Arc::clone(&inner),
            };
            workers.spawn("anti-entropy", |w| anti_entropy::worker(node, w));
        }
        inner.ready.store(true, Ordering::Release);
        tracing::info!(region = %region, head = repl.head().seq, peers = peers.len(), "Region node started.");
        Ok(Node { inner })
    }

    /// Stops the workers, lets the writer commit what is queued, and waits
    /// (at most `deadline`) for everything to finish.
    pub async fn shutdown(&self, deadline: Duration) {
        let inner = &self.inner;
        inner.ready.store(false, Ordering::Release);
        self.close_streams();
        let started = tokio::time::Instant::now();
        inner.workers.stop();
        let _ = inner.writer.send(Command::Stop).await;
        let done = inner.writer_done.lock().expect("done lock").take();
        if let Some(done) = done
            && tokio::time::timeout(deadline, done).await.is_err()
        {
            tracing::warn!(region = %inner.region, "Shutdown deadline passed with the writer still committing.");
        }
        let left = deadline.saturating_sub(started.elapsed());
        let mut late = inner.workers.shutdown(left).await;
        let left = deadline.saturating_sub(started.elapsed());
        late.extend(inner.relay.shutdown(left).await);
        if !late.is_empty() {
            tracing::warn!(region = %inner.region, workers = ?late, "Shutdown deadline passed; stopped these workers mid-work.");
        }
        tracing::info!(region = %inner.region, "Region node stopped.");
    }

    /// Ends the open change-feed streams (their readers reconnect
    /// elsewhere or later with their cursor); call before stopping the
    /// HTTP server so it does not wait for them.
    pub fn close_streams(&self) {
        self.inner.streams_closed.send_replace(true);
    }

    /// A watch that turns true when the node stops serving streams.
    pub fn streams_closed(&self) -> tokio::sync::watch::Receiver<bool> {
        self.inner.streams_closed.subscribe()
    }

    /// Stops everything at once, as a crash would: queued commands that were
    /// not committed are lost (and were never acknowledged).
    pub fn crash(&self) {
        let inner = &self.inner;
        inner.ready.store(false, Ordering::Release);
        self.close_streams();
        inner.workers.abort();
        inner.relay.abort();
        if let Some(t) = inner.writer_task.lock().expect("writer lock").take() {
            t.abort();
        }
    }

    /// This region's name.
    pub fn region(&self) -> &str {
        &self.inner.region
    }

    /// The cluster config.
    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    /// The secrets its API accepts now.
    pub fn secrets(&self) -> Arc<Secrets> {
        self.inner.secrets.get()
    }

    /// The wall clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The telemetry sender (the HTTP layer reports requests through it).
    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.telemetry
    }

    /// Whether the node is serving.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && !self.inner.writer.is_closed()
    }

    /// A handle for a [`parallax_core::transport::SimNet`].
    pub fn peer_handler(&self) -> Arc<dyn PeerHandler> {
        Arc::new(self.clone())
    }

    /// Live counters.
    pub fn stats(&self) -> NodeStats {
        let now = self.inner.clock.now_ms();
        NodeStats {
            region: self.inner.region.clone(),
            uptime_ms: now.saturating_sub(self.inner.started_ms),
            replication: self.inner.repl.snapshot(&self.inner.region, now),
            events: self.inner.stats.snapshot(),
            telemetry_dropped: self.inner.telemetry.dropped(),
            anti_entropy: self.inner.repl.ae_stats(),
            reconciliation_queue: self.inner.store.queue_len().unwrap_or(0),
            workers: self.worker_status(),
            traffic: self.inner.transport.traffic(),
        }
    }

    /// Shows `workers`' status in `/v1/stats` beside the node's own (the
    /// collector of the same process registers its workers so).
    pub fn observe_workers(&self, workers: Workers) {
        self.inner
            .observed
            .lock()
            .expect("observed lock")
            .push(workers);
    }

    fn worker_status(&self) -> Vec<WorkerStatus> {
        let mut all = self.inner.relay.status();
        all.extend(self.inner.workers.status());
        for w in self.inner.observed.lock().expect("observed lock").iter() {
            all.extend(w.status());
        }
        all
    }

    /// Writes a consistent snapshot of the store to `out` (see
    /// [`crate::store::restore`]); the region keeps serving.
    pub fn backup(&self, out: &mut dyn std::io::Write) -> Result<crate::store::BackupSummary> {
        self.inner
            .store
            .backup(&self.inner.region, self.inner.clock.now_us(), out)
    }

    /// The reconciliation queue.
    pub fn queue(&self, class: Option<&str>, limit: usize) -> Result<Vec<QueuedConflict>> {
        if let Some(c) = class {
            self.class(c)?;
        }
        self.inner.store.queue(class, limit)
    }

    /// Recorded conflict outcomes after `after`.
    pub fn conflict_log(&self, after: u64, limit: usize) -> Result<Vec<ConflictRecord>> {
        self.inner.store.conflict_log(after, limit)
    }

    /// The stored version of an entity, tombstones included.
    pub fn stored(&self, class: &str, key: &str) -> Result<Option<Entity>> {
        self.inner.store.read_entity(class, key)
    }

    /// Every stored version of a class (for tests and audits).
    pub fn scan(
        &self,
        class: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Entity)>> {
        self.inner.store.scan_class(class, after, limit)
    }

    /// A user class (system classes are not reachable through the client API).
    fn class(&self, name: &str) -> Result<&ClassConfig> {
        self.inner
            .config
            .classes
            .get(name)
            .filter(|_| !name.starts_with(parallax_core::config::SYSTEM_CLASS_PREFIX))
            .ok_or_else(|| Error::UnknownClass {
                class: name.to_owned(),
                declared: self.inner.config.class_names(),
            })
    }

    fn check_key(&self, key: &str) -> Result<()> {
        let max = self.inner.config.limits.max_key_bytes;
        if key.is_empty() {
            return Err(Error::BadRequest(
                "the key is empty. Fix: name the entity in the path, /v1/entities/{class}/{key}"
                    .into(),
            ));
        }
        if key.len() > max {
            return Err(Error::BadRequest(format!(
                "the key is {} bytes, longer than limits.max_key_bytes = {max}. Fix: use a shorter key",
                key.len()
            )));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::BadRequest(
                "the key contains control characters. Fix: use printable characters only".into(),
            ));
        }
        // URL parsers drop a `.` or `..` path segment, percent-encoded or
        // not, so no client could name such an entity again.
        if key == "." || key == ".." {
            return Err(Error::BadRequest(format!(
                "the key `{key}` cannot be a URL path segment. Fix: use another key, e.g. `{key}-`"
            )));
        }
        Ok(())
    }

    fn region_url(&self, region: &str) -> String {
        self.inner.config.region_url(region).unwrap_or_default()
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Command,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .writer
            .send(make(tx))
            .await
            .map_err(|_| Error::ShuttingDown(self.inner.region.clone()))?;
        rx.await
            .map_err(|_| Error::ShuttingDown(self.inner.region.clone()))?
    }

    async fn call(&self, to: &str, req: PeerRequest) -> Result<PeerResponse> {
        let timeout = Duration::from_millis(self.inner.config.replication.peer_timeout_ms);
        self.call_within(to, req, timeout).await
    }

    /// [`Node::call`] with its own time limit.
    async fn call_within(
        &self,
        to: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse> {
        let sent_us = self.inner.clock.now_us();
        let reply = tokio::time::timeout(timeout, self.inner.transport.call(to, req))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "region {to} did not answer within {} ms",
                    timeout.as_millis()
                ))
            })?
            .map_err(|e| Error::Unavailable(format!("region {to} cannot be reached: {e}")))?;
        self.inner
            .repl
            .answered(to, sent_us, reply.lease, self.inner.clock.now_us());
        reply.result.map_err(Error::from)
    }
}

impl parallax_core::stats::NodeView for Node {
    fn stats(&self) -> NodeStats {
        Node::stats(self)
    }

    fn telemetry_dropped(&self) -> u64 {
        self.telemetry().dropped()
    }

    fn observe_workers(&self, workers: Workers) {
        Node::observe_workers(self, workers)
    }
}
