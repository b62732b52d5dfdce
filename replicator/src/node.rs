//! A region node: the store, the writer, the shippers and the logic of every
//! client and region-to-region request, independent of HTTP (the
//! [`crate::api`] module puts HTTP in front of it; simulations call it
//! directly through [`crate::transport::SimNet`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::{ClassConfig, Config, Ownership};
use crate::entity::{Entity, Op};
use crate::error::{Error, Result, WireError};
use crate::merkle::{self, NodeId};
use crate::protocol::{
    ForwardedRead, ForwardedWrite, PeerReply, PeerRequest, PeerResponse, ReadConsistency,
    ReadOutcome, RepairItem, ReplicateAck, ReplicateBatch, SessionToken, SiblingView,
    WriteConsistency, WriteOutcome,
};
use crate::protocol::{TreeEntry, TreeRequest, TreeResponse};
use crate::replication::{Receiver, Replication, ReplicationStats, Shipper, lag_sampler};
use crate::routing::{self, OwnershipView, Route};
use crate::store::{ConflictRecord, QueuedConflict, Store};
use crate::telemetry::{Event, EventStats, Stats, Telemetry};
use crate::transport::{PeerHandler, Transport};
use crate::wal::Wal;
use crate::writer::{Command, LocalApplied, LocalWrite, Writer, WriterParts};

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
            clock: Arc::new(crate::clock::SystemClock),
            transport,
            writer_mode: WriterMode::Thread,
            telemetry_capacity: 65_536,
            subscriber: None,
            seed: 0x5eed,
            replicate: true,
            allow_fault_injection: false,
        }
    }
}

/// A client write.
#[derive(Clone, Debug)]
pub struct WriteRequest {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// The operation.
    pub op: Op,
    /// Consistency asked for.
    pub consistency: WriteConsistency,
    /// Session token sent with it.
    pub session: Option<SessionToken>,
    /// Home region for a new home-owned entity.
    pub home: Option<String>,
}

/// A client read.
#[derive(Clone, Debug)]
pub struct ReadRequest {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// Consistency asked for.
    pub consistency: ReadConsistency,
    /// Session token sent with it.
    pub session: Option<SessionToken>,
}

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
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
    ready: AtomicBool,
    started_ms: u64,
    allow_fault_injection: bool,
    ae_lock: tokio::sync::Mutex<()>,
}

/// Everything `/v1/stats` shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStats {
    /// This region.
    pub region: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Replication state by peer.
    pub replication: ReplicationStats,
    /// Counters from the event stream.
    pub events: EventStats,
    /// Telemetry events dropped because the channel was full.
    pub telemetry_dropped: u64,
    /// Anti-entropy: the pass under way and the last pass with each peer.
    pub anti_entropy: crate::replication::AntiEntropyStats,
    /// Entries in the reconciliation queue.
    pub reconciliation_queue: u64,
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
        } = opts;
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
        let repl = Arc::new(Replication::new(&meta, &peers, clock.now_ms()));
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
        let (shutdown, _) = watch::channel(false);
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
            shutdown,
            tasks: Mutex::new(Vec::new()),
            writer_task: Mutex::new(writer_task),
            ready: AtomicBool::new(false),
            started_ms: clock.now_ms(),
            allow_fault_injection,
            ae_lock: tokio::sync::Mutex::new(()),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(consume_events(
            events,
            stats,
            subscriber,
            telemetry.clone(),
        )));
        tasks.push(tokio::spawn(checkpoints(
            writer_tx.clone(),
            Duration::from_millis(config.storage.checkpoint_interval_ms),
            inner.shutdown.subscribe(),
        )));
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
                tasks.push(tokio::spawn(shipper.run(inner.shutdown.subscribe())));
            }
        }
        if replicate && !peers.is_empty() {
            tasks.push(tokio::spawn(lag_sampler(
                region.clone(),
                Arc::clone(&repl),
                Arc::clone(&clock),
                telemetry,
                Duration::from_millis(config.replication.heartbeat_interval_ms),
                inner.shutdown.subscribe(),
            )));
            let node = Node {
                inner: Arc::clone(&inner),
            };
            tasks.push(tokio::spawn(anti_entropy_worker(
                node,
                inner.shutdown.subscribe(),
            )));
        }
        *inner.tasks.lock().expect("tasks lock") = tasks;
        inner.ready.store(true, Ordering::Release);
        tracing::info!(region = %region, head = repl.head().seq, peers = peers.len(), "Region node started.");
        Ok(Node { inner })
    }

    /// Stops the shippers, lets the writer commit what is queued, and waits
    /// (at most `deadline`) for everything to finish.
    pub async fn shutdown(&self, deadline: Duration) {
        let inner = &self.inner;
        inner.ready.store(false, Ordering::Release);
        inner.shutdown.send_replace(true);
        let tasks: Vec<JoinHandle<()>> =
            inner.tasks.lock().expect("tasks lock").drain(..).collect();
        let _ = inner.writer.send(Command::Stop).await;
        let done = inner.writer_done.lock().expect("done lock").take();
        let wait = async {
            if let Some(done) = done {
                let _ = done.await;
            }
            for t in tasks.iter().skip(1) {
                while !t.is_finished() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        if tokio::time::timeout(deadline, wait).await.is_err() {
            tracing::warn!(region = %inner.region, "Shutdown deadline passed; stopping remaining tasks.");
        }
        for t in &tasks {
            t.abort();
        }
        tracing::info!(region = %inner.region, "Region node stopped.");
    }

    /// Stops everything at once, as a crash would: queued commands that were
    /// not committed are lost (and were never acknowledged).
    pub fn crash(&self) {
        let inner = &self.inner;
        inner.ready.store(false, Ordering::Release);
        inner.shutdown.send_replace(true);
        for t in inner.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
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

    /// A handle for a [`crate::transport::SimNet`].
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
        }
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
            .filter(|_| !name.starts_with(crate::config::SYSTEM_CLASS_PREFIX))
            .ok_or_else(|| Error::UnknownClass {
                class: name.to_owned(),
                declared: self.inner.config.class_names(),
            })
    }

    /// The ownership delegations in force, as this region knows them.
    pub fn ownership(&self) -> OwnershipView {
        self.inner.repl.ownership()
    }

    /// Moves ownership of what `region` owns by config to `delegate` (a
    /// failover; `delegate == region` moves it back), under a new epoch
    /// higher than any before. The change replicates like any write.
    pub async fn move_ownership(&self, region: &str, delegate: &str) -> Result<OwnershipView> {
        for (what, r) in [("region", region), ("delegate", delegate)] {
            if !self.inner.config.regions.contains_key(r) {
                return Err(Error::BadRequest(format!(
                    "{what} `{r}` is not a declared region (declared: {}). Fix: name one of those",
                    self.inner.config.region_names().join(", ")
                )));
            }
        }
        let epoch = self.inner.repl.ownership().max_epoch() + 1;
        let value = serde_json::json!({ "delegate": delegate, "epoch": epoch });
        self.submit(|tx| {
            Command::Local(
                LocalWrite {
                    class: crate::config::OWNERSHIP_CLASS.to_owned(),
                    key: region.to_owned(),
                    op: Op::Put(value),
                    owner_epoch: epoch,
                    home: None,
                },
                tx,
            )
        })
        .await?;
        tracing::warn!(region = %self.inner.region, from = region, to = delegate, epoch, "Ownership moved.");
        self.inner
            .telemetry
            .emit(Event::Failover(crate::telemetry::FailoverEvent {
                ts_us: self.inner.clock.now_us(),
                region: self.inner.region.clone(),
                event: format!("ownership {region} -> {delegate} (epoch {epoch})"),
                detected_ms: None,
                rerouted_ms: None,
            }));
        Ok(self.inner.repl.ownership())
    }

    /// For a strong read: checks with a majority of regions that no newer
    /// delegation moved the key away from `owner`; returns the owner after that check.
    async fn confirm_owner(
        &self,
        req: &ReadRequest,
        class: &ClassConfig,
        owner: String,
    ) -> Result<String> {
        let by_config = match class.ownership {
            Ownership::Home => {
                let explicit = self
                    .inner
                    .store
                    .read_entity(&req.class, &req.key)?
                    .and_then(|e| e.home);
                routing::home_of(&req.class, class, &req.key, explicit.as_deref())?
            }
            Ownership::Hash => routing::hash_owner(self.inner.config.regions.keys(), &req.key),
            Ownership::Global => return Ok(owner),
        };
        let probe = ReadRequest {
            class: crate::config::OWNERSHIP_CLASS.to_owned(),
            key: by_config,
            consistency: ReadConsistency::Quorum,
            session: None,
        };
        match self.read_merged(&probe, false).await {
            // Read repair has stored the merged delegation here; recompute.
            Ok(_) | Err(Error::NotFound { .. }) => {
                let view = self.inner.repl.ownership();
                Ok(self.owner_of(req, class, &view)?.unwrap_or(owner))
            }
            Err(e) => Err(Error::Unavailable(format!(
                "a strong read must confirm ownership with a majority of regions: {e}"
            ))),
        }
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
        let reply = tokio::time::timeout(timeout, self.inner.transport.call(to, req))
            .await
            .map_err(|_| {
                Error::Unavailable(format!(
                    "region {to} did not answer within {} ms",
                    timeout.as_millis()
                ))
            })?
            .map_err(|e| Error::Unavailable(format!("region {to} cannot be reached: {e}")))?;
        reply.result.map_err(Error::from)
    }

    /// Takes a client write: routes it (rollout stage, ownership), commits
    /// it, and for `quorum` waits for a majority.
    pub async fn write(
        &self,
        req: WriteRequest,
        forwarded_from: Option<&str>,
    ) -> Result<WriteOutcome> {
        let class = self.class(&req.class)?;
        self.check_key(&req.key)?;
        if !class.conflict.accepts(req.op.kind()) {
            return Err(Error::WrongOp {
                class: req.class.clone(),
                policy: class.conflict.as_str().to_owned(),
                op: req.op.kind().as_str().to_owned(),
                hint: class.conflict.ops_hint().to_owned(),
            });
        }
        if let Some(h) = &req.home
            && !self.inner.config.regions.contains_key(h)
        {
            return Err(Error::BadRequest(format!(
                "home `{h}` is not a declared region (declared: {}). Fix: pass ?home= with one of those",
                self.inner.config.region_names().join(", ")
            )));
        }
        let explicit_home = match (&req.home, class.ownership) {
            (Some(h), _) => Some(h.clone()),
            (None, Ownership::Home) => self
                .inner
                .store
                .read_entity(&req.class, &req.key)?
                .and_then(|e| e.home),
            _ => None,
        };
        let view = self.inner.repl.ownership();
        let route = routing::route_write(
            &self.inner.config,
            &self.inner.region,
            &req.class,
            class,
            &req.key,
            req.op.kind(),
            explicit_home.as_deref(),
            &view,
        )?;
        let epoch = match route {
            Route::Local { epoch } => epoch,
            Route::Remote { to, why } => {
                return self
                    .write_elsewhere(req, class, to, why, forwarded_from)
                    .await;
            }
        };
        let applied: LocalApplied = self
            .submit(|tx| {
                Command::Local(
                    LocalWrite {
                        class: req.class.clone(),
                        key: req.key.clone(),
                        op: req.op.clone(),
                        owner_epoch: epoch,
                        home: if class.ownership == Ownership::Home {
                            explicit_home.clone()
                        } else {
                            None
                        },
                    },
                    tx,
                )
            })
            .await?;
        let mut token = req.session.clone().unwrap_or_default();
        token.include(&self.inner.region, applied.seq);
        if req.consistency == WriteConsistency::Quorum {
            self.await_quorum(&req, applied.seq, &token).await?;
        }
        Ok(WriteOutcome {
            class: req.class,
            key: req.key,
            value: applied.entity.value().unwrap_or(Value::Null),
            hlc: applied.entity.hlc.clone(),
            version: applied.entity.version.clone(),
            token: token.to_string(),
            applied_in: self.acked_by(applied.seq),
            served_by: self.inner.region.clone(),
            seq: applied.seq,
            consistency: req.consistency.name().to_owned(),
        })
    }

    async fn write_elsewhere(
        &self,
        req: WriteRequest,
        class: &ClassConfig,
        to: String,
        why: String,
        forwarded_from: Option<&str>,
    ) -> Result<WriteOutcome> {
        let misdirected = |why: String| {
            Error::Misdirected(Box::new(crate::error::Misdirected {
                region: self.inner.region.clone(),
                class: req.class.clone(),
                key: req.key.clone(),
                owner: to.clone(),
                owner_url: self.region_url(&to),
                why,
            }))
        };
        if let Some(from) = forwarded_from {
            return Err(misdirected(format!(
                "{why}; it was already forwarded once, from {from}"
            )));
        }
        if class.foreign_writes == crate::config::ForeignWrites::Refuse {
            return Err(misdirected(format!("{why} (foreign_writes = \"refuse\")")));
        }
        let fw = ForwardedWrite {
            class: req.class.clone(),
            key: req.key.clone(),
            op: req.op.clone(),
            consistency: req.consistency,
            session: req.session.clone(),
            home: req.home.clone(),
        };
        match self.call(&to, PeerRequest::Write(fw)).await? {
            PeerResponse::Written(w) => Ok(w),
            other => Err(Error::Internal(format!(
                "region {to} answered a write with {other:?}"
            ))),
        }
    }

    /// Regions known to have applied this region's write `seq`.
    fn acked_by(&self, seq: u64) -> Vec<String> {
        let mut regions = vec![self.inner.region.clone()];
        for (name, p) in self.inner.repl.peers() {
            if p.acked() >= seq {
                regions.push(name.clone());
            }
        }
        regions.sort();
        regions
    }

    /// Regions holding this region's write `seq` durably (this one always does).
    fn durable_in(&self, seq: u64) -> usize {
        1 + self
            .inner
            .repl
            .peers()
            .filter(|(_, p)| p.durable() >= seq)
            .count()
    }

    async fn await_quorum(&self, req: &WriteRequest, seq: u64, token: &SessionToken) -> Result<()> {
        let total = self.inner.config.regions.len();
        let needed = total / 2 + 1;
        let timeout_ms = self.inner.config.replication.quorum_timeout_ms;
        let mut acks = self.inner.repl.subscribe_acks();
        self.inner.repl.want_durable(seq);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let confirmed = self.durable_in(seq);
            if confirmed >= needed {
                return Ok(());
            }
            tokio::select! {
                changed = acks.changed() => { if changed.is_err() { break } }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::QuorumTimeout {
                        class: req.class.clone(),
                        key: req.key.clone(),
                        region: self.inner.region.clone(),
                        token: token.to_string(),
                        confirmed,
                        needed,
                        timeout_ms,
                    });
                }
            }
        }
        Err(Error::ShuttingDown(self.inner.region.clone()))
    }

    /// Serves a client read at the consistency it asks for.
    pub async fn read(
        &self,
        req: ReadRequest,
        forwarded_from: Option<&str>,
    ) -> Result<ReadOutcome> {
        let class = self.class(&req.class)?;
        self.check_key(&req.key)?;
        let view = self.inner.repl.ownership();
        if let Route::Remote { to, why } =
            routing::route_read(&self.inner.config, &self.inner.region, class, &view)
        {
            return self
                .read_elsewhere(req, class, to, why, forwarded_from)
                .await;
        }
        match req.consistency.clone() {
            ReadConsistency::Local => self.read_local(&req),
            ReadConsistency::Session => {
                let token = req.session.clone().unwrap_or_default();
                if self.session_satisfied(&token) {
                    return self.read_local(&req);
                }
                if forwarded_from.is_some() {
                    // We were picked as having the writes; wait briefly for
                    // replication in flight before giving up.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(1_000);
                    while tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        if self.session_satisfied(&token) {
                            return self.read_local(&req);
                        }
                    }
                    return Err(Error::Unavailable(format!(
                        "region {} has not yet applied the writes of session token {token}",
                        self.inner.region
                    )));
                }
                let target = self.session_target(&token);
                self.read_elsewhere(
                    req,
                    class,
                    target,
                    "the session's writes are not applied here yet".into(),
                    None,
                )
                .await
            }
            ReadConsistency::Bounded(bound_ms) => {
                let lag = self.max_lag_ms();
                if lag.is_some_and(|l| l <= bound_ms) {
                    return self.read_local(&req);
                }
                let lag_text = lag.map_or("unknown".to_owned(), |l| format!("{l} ms"));
                let why = format!("lag here is {lag_text}, over the bound of {bound_ms} ms");
                match self.owner_of(&req, class, &view)? {
                    Some(owner) if owner != self.inner.region && forwarded_from.is_none() => {
                        let mut fwd = req.clone();
                        fwd.consistency = ReadConsistency::Strong;
                        self.read_elsewhere(fwd, class, owner, why, None).await
                    }
                    Some(_) => self.read_local(&req),
                    None => {
                        let mut q = req.clone();
                        q.consistency = ReadConsistency::Quorum;
                        self.read_merged(&q, false).await
                    }
                }
            }
            ReadConsistency::Quorum => self.read_merged(&req, false).await,
            ReadConsistency::Strong => match self.owner_of(&req, class, &view)? {
                None => self.read_merged(&req, true).await,
                Some(owner) if owner == self.inner.region => {
                    let confirmed = self.confirm_owner(&req, class, owner).await?;
                    if confirmed == self.inner.region {
                        return self.read_local(&req);
                    }
                    if forwarded_from.is_some() {
                        return Err(Error::Unavailable(format!(
                            "ownership of `{}/{}` moved to {confirmed} while the read was being forwarded; retry",
                            req.class, req.key
                        )));
                    }
                    self.read_elsewhere(req, class, confirmed, "ownership moved".into(), None)
                        .await
                }
                Some(owner) => {
                    if forwarded_from.is_some() {
                        return Err(Error::Misdirected(Box::new(crate::error::Misdirected {
                            region: self.inner.region.clone(),
                            class: req.class.clone(),
                            key: req.key.clone(),
                            owner_url: self.region_url(&owner),
                            owner,
                            why: "strong reads are served by the owner".into(),
                        })));
                    }
                    self.read_elsewhere(
                        req,
                        class,
                        owner,
                        "strong reads are served by the owner".into(),
                        None,
                    )
                    .await
                }
            },
        }
    }

    fn owner_of(
        &self,
        req: &ReadRequest,
        class: &ClassConfig,
        view: &OwnershipView,
    ) -> Result<Option<String>> {
        let explicit = match class.ownership {
            Ownership::Home => self
                .inner
                .store
                .read_entity(&req.class, &req.key)?
                .and_then(|e| e.home),
            _ => None,
        };
        Ok(routing::owner(
            &self.inner.config,
            &req.class,
            class,
            &req.key,
            explicit.as_deref(),
            view,
        )?
        .map(|(o, _)| o))
    }

    async fn read_elsewhere(
        &self,
        req: ReadRequest,
        class: &ClassConfig,
        to: String,
        why: String,
        forwarded_from: Option<&str>,
    ) -> Result<ReadOutcome> {
        if forwarded_from.is_some() || class.foreign_writes == crate::config::ForeignWrites::Refuse
        {
            return Err(Error::Misdirected(Box::new(crate::error::Misdirected {
                region: self.inner.region.clone(),
                class: req.class.clone(),
                key: req.key.clone(),
                owner_url: self.region_url(&to),
                owner: to,
                why,
            })));
        }
        let fr = ForwardedRead {
            class: req.class.clone(),
            key: req.key.clone(),
            consistency: req.consistency.clone(),
            session: req.session.clone(),
        };
        match self.call(&to, PeerRequest::Read(fr)).await? {
            PeerResponse::Read(r) => Ok(r),
            other => Err(Error::Internal(format!(
                "region {to} answered a read with {other:?}"
            ))),
        }
    }

    fn read_local(&self, req: &ReadRequest) -> Result<ReadOutcome> {
        let entity = self.inner.store.read_entity(&req.class, &req.key)?;
        self.outcome(req, entity, &self.inner.region, req.consistency.name())
    }

    fn outcome(
        &self,
        req: &ReadRequest,
        entity: Option<Entity>,
        served_by: &str,
        consistency: &str,
    ) -> Result<ReadOutcome> {
        let not_found = || Error::NotFound {
            class: req.class.clone(),
            key: req.key.clone(),
            region: served_by.to_owned(),
        };
        let entity = entity.filter(Entity::exists).ok_or_else(not_found)?;
        let conflicted = entity.is_conflicted();
        let siblings = if conflicted {
            entity
                .siblings()
                .iter()
                .map(|s| SiblingView {
                    value: s.value.clone().unwrap_or(Value::Null),
                    deleted: s.value.is_none(),
                    hlc: s.stamp.clone(),
                    version: s.version.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(ReadOutcome {
            class: req.class.clone(),
            key: req.key.clone(),
            value: entity.value().unwrap_or(Value::Null),
            siblings,
            conflicted,
            applied_in: self.applied_in(&entity),
            hlc: entity.hlc.clone(),
            version: entity.version.clone(),
            served_by: served_by.to_owned(),
            consistency: consistency.to_owned(),
            home: entity.home.clone(),
        })
    }

    /// Regions known to have applied the latest write of an entity.
    fn applied_in(&self, entity: &Entity) -> Vec<String> {
        let origin = &entity.hlc.region;
        let seq = entity.origin_seq;
        let repl = &self.inner.repl;
        let mut regions: Vec<String> = self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| {
                *r == &self.inner.region
                    || *r == origin
                    || (origin == &self.inner.region
                        && repl.peer(r).is_some_and(|p| p.acked() >= seq))
                    || repl.known_applied(r, origin) >= seq
            })
            .cloned()
            .collect();
        regions.sort();
        regions
    }

    fn session_satisfied(&self, token: &SessionToken) -> bool {
        token.0.iter().all(|(origin, seq)| {
            if *origin == self.inner.region {
                self.inner.repl.head().seq >= *seq
            } else {
                self.inner.repl.applied_from(origin) >= *seq
            }
        })
    }

    /// A region that (as far as gossip tells) has every write of the token;
    /// otherwise the origin of its newest unapplied write.
    fn session_target(&self, token: &SessionToken) -> String {
        let repl = &self.inner.repl;
        for region in self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| **r != self.inner.region)
        {
            if token
                .0
                .iter()
                .all(|(o, s)| o == region || repl.known_applied(region, o) >= *s)
            {
                return region.clone();
            }
        }
        token
            .0
            .iter()
            .filter(|(o, s)| **o != self.inner.region && repl.applied_from(o) < **s)
            .max_by_key(|(_, s)| **s)
            .map(|(o, _)| o.clone())
            .unwrap_or_else(|| self.inner.region.clone())
    }

    /// The largest lag from any other region (ms), if all have been heard from.
    fn max_lag_ms(&self) -> Option<u64> {
        let now = self.inner.clock.now_ms();
        let mut worst = 0;
        for (peer, _) in self.inner.repl.peers() {
            worst = worst.max(self.inner.repl.lag_from(peer, now)?);
        }
        Some(worst)
    }

    /// Reads from a majority (or, with `all`, every region), merges, and
    /// repairs the regions that were behind.
    async fn read_merged(&self, req: &ReadRequest, all: bool) -> Result<ReadOutcome> {
        let total = self.inner.config.regions.len();
        let needed = if all { total } else { total / 2 + 1 };
        let local = self.inner.store.read_entity(&req.class, &req.key)?;
        let mut answers: Vec<(String, Option<Entity>)> = vec![(self.inner.region.clone(), local)];
        let mut failures = Vec::new();
        let mut pending: FuturesUnordered<BoxFuture<'_, (String, Result<PeerResponse>)>> = self
            .inner
            .config
            .regions
            .keys()
            .filter(|r| **r != self.inner.region)
            .map(|r| {
                let r = r.clone();
                let req = PeerRequest::Fetch {
                    class: req.class.clone(),
                    key: req.key.clone(),
                };
                Box::pin(async move { (r.clone(), self.call(&r, req).await) }) as BoxFuture<'_, _>
            })
            .collect();
        while answers.len() < needed {
            let Some((region, result)) = pending.next().await else {
                break;
            };
            match result {
                Ok(PeerResponse::Fetched(e)) => answers.push((region, e)),
                Ok(other) => failures.push(format!("{region}: unexpected answer {other:?}")),
                Err(e) => failures.push(format!("{region}: {e}")),
            }
        }
        drop(pending);
        if answers.len() < needed {
            return Err(Error::Unavailable(format!(
                "a {} read of `{}/{}` needs {needed} of {total} regions; reached {} ({})",
                req.consistency.name(),
                req.class,
                req.key,
                answers.len(),
                failures.join("; ")
            )));
        }
        let mut merged: Option<Entity> = None;
        for (_, e) in &answers {
            if let Some(e) = e {
                merged = Some(match merged {
                    None => e.clone(),
                    Some(m) => m.join(e)?,
                });
            }
        }
        if let Some(m) = &merged {
            for (region, e) in &answers {
                if e.as_ref() == Some(m) {
                    continue;
                }
                let item = RepairItem {
                    class: req.class.clone(),
                    key: req.key.clone(),
                    entity: m.clone(),
                };
                if *region == self.inner.region {
                    self.submit(|tx| Command::Repair(vec![item], tx)).await?;
                } else {
                    let node = self.clone();
                    let region = region.clone();
                    tokio::spawn(async move {
                        if let Err(e) = node.call(&region, PeerRequest::Repair(vec![item])).await {
                            tracing::debug!(peer = %region, error = %e, "Read repair not delivered; anti-entropy will catch up.");
                        }
                    });
                }
            }
        }
        let names: Vec<&str> = answers.iter().map(|(r, _)| r.as_str()).collect();
        let mut out = self.outcome(req, merged, &names.join("+"), req.consistency.name())?;
        out.served_by = self.inner.region.clone();
        Ok(out)
    }

    /// Handles a request from another region.
    pub async fn handle_peer(&self, from: &str, req: PeerRequest) -> PeerReply {
        let result = match req {
            PeerRequest::Replicate(batch) => self
                .apply_batch(from, batch)
                .await
                .map(PeerResponse::Replicated),
            PeerRequest::Fetch { class, key } => self
                .inner
                .store
                .read_entity(&class, &key)
                .map(PeerResponse::Fetched),
            PeerRequest::Write(fw) => {
                let req = WriteRequest {
                    class: fw.class,
                    key: fw.key,
                    op: fw.op,
                    consistency: fw.consistency,
                    session: fw.session,
                    home: fw.home,
                };
                self.write(req, Some(from)).await.map(PeerResponse::Written)
            }
            PeerRequest::Read(fr) => {
                let req = ReadRequest {
                    class: fr.class,
                    key: fr.key,
                    consistency: fr.consistency,
                    session: fr.session,
                };
                self.read(req, Some(from)).await.map(PeerResponse::Read)
            }
            PeerRequest::Repair(items) => self
                .submit(|tx| Command::Repair(items, tx))
                .await
                .map(|()| PeerResponse::Repaired),
            PeerRequest::Tree(req) => self.handle_tree(req).map(PeerResponse::Tree),
        };
        PeerReply {
            wall_ms: self.inner.clock.now_ms(),
            result: result.map_err(|e| WireError::from(&e)),
        }
    }

    /// Sends a request to another region and waits for its answer.
    pub async fn call_peer(&self, to: &str, req: PeerRequest) -> Result<PeerResponse> {
        self.call(to, req).await
    }

    /// Merges versions into the store through their class's policy (read
    /// repair, anti-entropy). Not replicated: the versions came from elsewhere.
    pub async fn repair(&self, items: Vec<RepairItem>) -> Result<()> {
        self.submit(|tx| Command::Repair(items, tx)).await
    }

    /// Overwrites stored versions as given, without merging or replicating:
    /// the auditor's repair of corruption, where a merge could keep the bad copy.
    pub async fn replace(&self, items: Vec<RepairItem>) -> Result<()> {
        self.submit(|tx| Command::Replace(items, tx)).await
    }

    /// Records an audit's results as telemetry events (the collector writes
    /// them to the `audits` and `divergence` tables).
    pub fn record_audit(
        &self,
        audits: Vec<crate::telemetry::AuditEvent>,
        records: Vec<crate::telemetry::DivergenceEvent>,
    ) {
        for a in audits {
            self.inner.telemetry.emit(Event::Audit(a));
        }
        for r in records {
            self.inner.telemetry.emit(Event::Divergence(r));
        }
    }

    /// Whether this region serves fault injection.
    pub fn fault_injection_allowed(&self) -> bool {
        self.inner.allow_fault_injection
    }

    /// Changes a stored entity without replicating it (drills only).
    pub async fn inject_fault(
        &self,
        class: &str,
        key: &str,
        fault: crate::writer::Fault,
    ) -> Result<()> {
        if !self.inner.allow_fault_injection {
            return Err(Error::NotFoundRoute);
        }
        if !self.inner.config.classes.contains_key(class) {
            return Err(Error::UnknownClass {
                class: class.to_owned(),
                declared: self.inner.config.class_names(),
            });
        }
        let (class, key) = (class.to_owned(), key.to_owned());
        self.submit(|reply| Command::Fault {
            class,
            key,
            fault,
            reply,
        })
        .await
    }

    /// Classes in the order anti-entropy and audits take them: critical first.
    pub fn classes_by_priority(&self) -> Vec<String> {
        let mut classes: Vec<(&String, &ClassConfig)> = self.inner.config.classes.iter().collect();
        classes.sort_by_key(|(name, c)| (!c.critical, (*name).clone()));
        classes.into_iter().map(|(n, _)| n.clone()).collect()
    }

    /// Runs anti-entropy now with `peer` (or every peer, those marked for it
    /// first); one report per peer. One pass runs at a time.
    pub async fn run_anti_entropy(
        &self,
        peer: Option<&str>,
    ) -> Result<Vec<crate::sync::AntiEntropyReport>> {
        let peers: Vec<String> = match peer {
            Some(p) if self.inner.repl.peer(p).is_some() => vec![p.to_owned()],
            Some(p) => {
                return Err(Error::BadRequest(format!(
                    "`{p}` is not another region of this cluster (declared: {})",
                    self.inner.config.region_names().join(", ")
                )));
            }
            None => {
                let marked = self.inner.repl.peers_needing_anti_entropy();
                let mut all: Vec<String> = marked.clone();
                all.extend(
                    self.inner
                        .repl
                        .peers()
                        .map(|(n, _)| n.clone())
                        .filter(|n| !marked.contains(n)),
                );
                all
            }
        };
        let _one_at_a_time = self.inner.ae_lock.lock().await;
        let classes = self.classes_by_priority();
        let max = self.inner.config.anti_entropy.max_keys_per_sec;
        let mut reports = Vec::new();
        for peer in peers {
            self.inner.repl.ae_running(Some(peer.clone()));
            let was_marked = self.inner.repl.peers_needing_anti_entropy().contains(&peer);
            let report = match crate::sync::anti_entropy(self, &peer, &classes, max).await {
                Ok(r) => {
                    if was_marked {
                        self.inner.repl.clear_anti_entropy(&peer);
                        let _ = self
                            .inner
                            .writer
                            .send(Command::MarkAntiEntropy(peer.clone(), false))
                            .await;
                    }
                    let repaired: u64 = r.classes.iter().map(|c| c.pulled + c.pushed).sum();
                    if repaired > 0 {
                        tracing::info!(region = %self.inner.region, peer = %peer, repaired, "Anti-entropy repaired differences.");
                    }
                    r
                }
                Err(e) => crate::sync::AntiEntropyReport {
                    peer: peer.clone(),
                    finished_us: self.inner.clock.now_us(),
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            };
            self.inner.repl.ae_done(report.clone());
            reports.push(report);
        }
        self.inner.repl.ae_running(None);
        Ok(reports)
    }

    /// Answers a question about this region's Merkle trees.
    pub fn handle_tree(&self, req: TreeRequest) -> Result<TreeResponse> {
        crate::sync::answer(self, req)
    }

    async fn apply_batch(&self, from: &str, batch: ReplicateBatch) -> Result<ReplicateAck> {
        let inner = &self.inner;
        let receiver = Receiver {
            region: &inner.region,
            config: &inner.config,
            clock: inner.clock.as_ref(),
            repl: &inner.repl,
            writer: &inner.writer,
        };
        receiver.apply(from, batch).await
    }
}

impl PeerHandler for Node {
    fn handle(&self, from: &str, req: PeerRequest) -> BoxFuture<'static, PeerReply> {
        let node = self.clone();
        let from = from.to_owned();
        Box::pin(async move { node.handle_peer(&from, req).await })
    }
}

/// Runs anti-entropy on a timer, and soon after a peer is marked for it.
async fn anti_entropy_worker(node: Node, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(node.inner.config.anti_entropy.interval_ms);
    let mut next_full = tokio::time::Instant::now() + every;
    let mut last_marked_try = tokio::time::Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let now = tokio::time::Instant::now();
        if now >= next_full {
            next_full = now + every;
            let _ = node.run_anti_entropy(None).await;
        } else if !node.inner.repl.peers_needing_anti_entropy().is_empty()
            && now.duration_since(last_marked_try) >= Duration::from_secs(10)
        {
            last_marked_try = now;
            for peer in node.inner.repl.peers_needing_anti_entropy() {
                let _ = node.run_anti_entropy(Some(&peer)).await;
            }
        }
    }
}

impl crate::sync::TreeData for Node {
    fn has_class(&self, class: &str) -> bool {
        self.inner.config.classes.contains_key(class)
    }

    fn class_error(&self, class: &str) -> Error {
        Error::UnknownClass {
            class: class.to_owned(),
            declared: self.inner.config.class_names(),
        }
    }

    fn with_tree<T>(&self, class: &str, f: impl FnOnce(&mut merkle::MerkleTree) -> T) -> T {
        self.inner.repl.with_tree(class, f)
    }

    fn entries(&self, class: &str, node: NodeId) -> Result<Vec<TreeEntry>> {
        Ok(self
            .inner
            .store
            .scan_buckets(class, node.buckets(), usize::MAX)?
            .into_iter()
            .map(|(key, bytes)| {
                let fp = merkle::fingerprint(&merkle::entry_hash(class, &key, &bytes)).to_vec();
                TreeEntry { key, fp }
            })
            .collect())
    }

    fn versions(&self, class: &str, keys: &[String]) -> Result<Vec<Option<Entity>>> {
        keys.iter()
            .map(|k| self.inner.store.read_entity(class, k))
            .collect()
    }

    fn state(&self) -> crate::protocol::ReplicationState {
        crate::protocol::ReplicationState {
            applied: self.inner.repl.applied_vector(&self.inner.region),
            log_dropped_for: self.inner.repl.peers_needing_anti_entropy(),
        }
    }
}

/// Asks the writer for a checkpoint every `every` (it skips it if nothing changed).
async fn checkpoints(
    writer: mpsc::Sender<Command>,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if writer.send(Command::Checkpoint(None)).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn consume_events(
    mut rx: mpsc::Receiver<Event>,
    stats: Arc<Stats>,
    subscriber: Option<mpsc::Sender<Event>>,
    telemetry: Telemetry,
) {
    let mut forward_dropped = 0u64;
    while let Some(event) = rx.recv().await {
        stats.observe(&event);
        if let Some(sub) = &subscriber
            && sub.try_send(event).is_err()
        {
            forward_dropped += 1;
            telemetry.count_drop();
            if forward_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = forward_dropped,
                    "Telemetry subscriber is behind; events dropped."
                );
            }
        }
    }
}

/// Parses an operation body of `POST .../ops`.
pub fn parse_op(body: &Value, class_name: &str) -> Result<Op> {
    let obj = body.as_object().ok_or_else(|| {
        Error::BadRequest(format!(
            "the body of an operation on class `{class_name}` must be a JSON object like {{\"op\":\"incr\",\"by\":5}}"
        ))
    })?;
    let op = obj.get("op").and_then(Value::as_str).ok_or_else(|| {
        Error::BadRequest("the operation has no \"op\" field. Fix: send {\"op\":\"incr\",\"by\":N}, {\"op\":\"add\",\"member\":..} or {\"op\":\"remove\",\"member\":..}".into())
    })?;
    let member = || {
        obj.get("member").cloned().ok_or_else(|| {
            Error::BadRequest(format!("operation `{op}` needs a \"member\" field, e.g. {{\"op\":\"{op}\",\"member\":\"x\"}}"))
        })
    };
    Ok(match op {
        "incr" => Op::Incr(match obj.get("by") {
            None => 1,
            Some(v) => v.as_i64().ok_or_else(|| {
                Error::BadRequest(format!("\"by\" must be an integer, not {v}. Fix: send e.g. {{\"op\":\"incr\",\"by\":5}}"))
            })?,
        }),
        "decr" => Op::Incr(-match obj.get("by") {
            None => 1,
            Some(v) => v.as_i64().filter(|n| *n >= 0).ok_or_else(|| {
                Error::BadRequest(format!("\"by\" of decr must be a non-negative integer, not {v}"))
            })?,
        }),
        "add" => Op::Add(member()?),
        "remove" => Op::Remove(member()?),
        other => {
            return Err(Error::BadRequest(format!(
                "unknown operation `{other}`. Fix: use incr, decr, add or remove"
            )));
        }
    })
}
