//! The single writer of a region's store, with group commit.
//!
//! Local writes, replicated batches and read repairs queue up as commands;
//! the writer takes every command waiting (up to `group_commit_max_ops`)
//! and runs them as one group:
//!
//! 1. the store's entities are updated in one redb transaction;
//! 2. the group's local writes are appended to the write-ahead log and
//!    synced with one `fdatasync` (this is what makes them durable);
//! 3. the transaction commits (without a sync, except at a checkpoint);
//! 4. only then are the commands answered.
//!
//! A checkpoint (every `storage.checkpoint_interval_ms`, on demand, and on
//! shutdown) commits with a sync and records the last log sequence it
//! includes and, per origin, the replicated entries it holds; only those
//! are acknowledged to the origin as durable, so an origin keeps shipping
//! (and keeps in its log) whatever a crash here could lose.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use parallax_core::api::ConflictRecord;
use parallax_core::api::Fault;
use parallax_core::clock::{Clock, HlcClock};
use parallax_core::config::{Config, OWNERSHIP_CLASS, ROLLOUT_CLASS};
use parallax_core::entity::{ConflictOutcome, Entity, Merged, Op, WriteContext};
use parallax_core::error::{Error, Result};
use parallax_core::merkle::{self, Digest, MerkleTree};
use parallax_core::protocol::LogEntry;
use parallax_core::rollout::RolloutView;
use parallax_core::routing::OwnershipView;
use parallax_core::telemetry::{ConflictEvent, Event, Stats, Telemetry};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::command::{ApplyAck, Command, LocalApplied, LocalWrite};
use crate::replication::{self, Fresh, Replication};
use crate::store::{Meta, Store, StoreTxn, StoredChange};
use crate::wal::Wal;

enum Done {
    Local(oneshot::Sender<Result<LocalApplied>>, Box<LocalApplied>),
    Apply(oneshot::Sender<Result<ApplyAck>>, String),
    Repair(oneshot::Sender<Result<()>>),
    Checkpoint(oneshot::Sender<()>),
}

mod ops;

/// The writer's state.
pub(crate) struct Writer {
    region: String,
    config: Arc<Config>,
    store: Store,
    wal: Wal,
    clock: Arc<dyn Clock>,
    hlc: HlcClock,
    head: u64,
    checkpoint: u64,
    applied: BTreeMap<String, u64>,
    durable: BTreeMap<String, u64>,
    cursors: BTreeMap<String, u64>,
    marks: BTreeMap<String, bool>,
    next_conflict_id: u64,
    dirty: bool,
    /// When the last checkpoint committed (ms, the injected clock).
    last_checkpoint_ms: u64,
    checkpoint_every_ms: u64,
    wal_files: usize,
    /// The next change-feed position.
    feed_next: u64,
    repl: Arc<Replication>,
    telemetry: Telemetry,
    stats: Arc<Stats>,
    broken: Option<String>,
}

/// Scratch state of one group.
struct Group {
    head: u64,
    applied: BTreeMap<String, u64>,
    next_conflict_id: u64,
    events: Vec<Event>,
    lags: BTreeMap<String, Vec<u64>>,
    done: Vec<Done>,
    log: Vec<LogEntry>,
    changed: bool,
    /// An ownership delegation or a rollout stage changed.
    control_changed: bool,
    tree: Vec<TreeDelta>,
    /// The next change-feed position within the group.
    feed_next: u64,
    /// How the command under way changes entities (the feed's `source`).
    source: &'static str,
    /// The group's time (µs).
    now_us: u64,
}

/// Whether a class holds what routing depends on (delegations, stages):
/// committing to it reloads the views.
fn is_control(class: &str) -> bool {
    class == OWNERSHIP_CLASS || class == ROLLOUT_CLASS
}

/// One entry's change in a class's Merkle tree.
struct TreeDelta {
    class: String,
    bucket: u32,
    old: Option<Digest>,
    new: Option<Digest>,
}

impl Group {
    /// Notes that the stored bytes of `class/key` went from `old` to `new`:
    /// the change joins the feed (in the group's transaction) and the
    /// class's Merkle tree.
    fn changed(
        &mut self,
        txn: &StoreTxn,
        (class, key): (&str, &str),
        old: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<()> {
        if old == new {
            return Ok(());
        }
        txn.put_change(
            self.feed_next,
            &StoredChange {
                ts_us: self.now_us,
                class: class.to_owned(),
                key: key.to_owned(),
                source: self.source.to_owned(),
                entity: new.map(<[u8]>::to_vec),
            },
        )?;
        self.feed_next += 1;
        self.tree(class, key, old, new);
        Ok(())
    }

    /// Notes the change of `class/key` for the class's Merkle tree.
    fn tree(&mut self, class: &str, key: &str, old: Option<&[u8]>, new: Option<&[u8]>) {
        self.tree.push(TreeDelta {
            class: class.to_owned(),
            bucket: merkle::bucket_of(key),
            old: old.map(|b| merkle::entry_hash(class, key, b)),
            new: new.map(|b| merkle::entry_hash(class, key, b)),
        });
    }
}

/// What the writer starts from.
pub(crate) struct WriterParts {
    pub(crate) region: String,
    pub(crate) config: Arc<Config>,
    pub(crate) store: Store,
    pub(crate) wal: Wal,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) repl: Arc<Replication>,
    pub(crate) telemetry: Telemetry,
    pub(crate) stats: Arc<Stats>,
}

impl Writer {
    /// A writer over a store at its checkpoint `meta`; replays `replay`
    /// (the log entries after the checkpoint) and checkpoints again.
    pub(crate) fn recover(
        parts: WriterParts,
        meta: &Meta,
        replay: Vec<LogEntry>,
    ) -> Result<Writer> {
        let WriterParts {
            region,
            config,
            store,
            wal,
            clock,
            repl,
            telemetry,
            stats,
        } = parts;
        let mut hlc = HlcClock::new(region.clone(), config.cluster.max_clock_offset_ms);
        if let Some(last) = &meta.hlc {
            hlc.restore(last);
        }
        let checkpoint_every_ms = config.storage.checkpoint_interval_ms;
        let wal_files = wal.files();
        let now_ms = clock.now_ms();
        let feed_next = store.feed_start();
        let mut w = Writer {
            region,
            config,
            store,
            wal,
            clock,
            hlc,
            head: meta.checkpoint,
            checkpoint: meta.checkpoint,
            applied: meta.applied.clone(),
            durable: meta.applied.clone(),
            cursors: meta.cursors.clone(),
            marks: BTreeMap::new(),
            next_conflict_id: meta.next_conflict_id.max(1),
            dirty: false,
            last_checkpoint_ms: now_ms,
            checkpoint_every_ms,
            wal_files,
            feed_next,
            repl,
            telemetry,
            stats,
            broken: None,
        };
        let replayed = replay.len();
        let now_us = w.clock.now_us();
        let txn = w.store.begin(true)?;
        let mut g = w.group();
        g.source = "replay";
        g.now_us = now_us;
        for entry in replay {
            let entity = Entity::decode(&entry.entity)?;
            w.hlc.restore(&entity.hlc);
            w.merge_in(&txn, &mut g, &entry.class, &entry.key, &entity, now_us)?;
            g.head = g.head.max(entry.seq);
        }
        g.head = g.head.max(w.wal.last_seq());
        w.write_checkpoint_meta(&txn, &g)?;
        txn.commit()?;
        w.head = g.head;
        w.checkpoint = g.head;
        w.feed_next = g.feed_next;
        w.repl.publish_feed_head(g.feed_next - 1);
        w.next_conflict_id = g.next_conflict_id;
        w.repl.publish_head(w.head, w.clock.now_ms());
        w.repl.publish_durable(&w.durable);
        w.repl.set_wal_reader(w.wal.reader());
        w.load_control();
        w.rebuild_trees()?;
        w.repl.set_replayed(replayed as u64);
        if replayed > 0 {
            tracing::info!(region = %w.region, replayed, head = w.head, "Replayed the write-ahead log after an unclean stop.");
        }
        Ok(w)
    }

    fn group(&self) -> Group {
        Group {
            head: self.head,
            applied: BTreeMap::new(),
            next_conflict_id: self.next_conflict_id,
            events: Vec::new(),
            lags: BTreeMap::new(),
            done: Vec::new(),
            log: Vec::new(),
            changed: false,
            control_changed: false,
            tree: Vec::new(),
            feed_next: self.feed_next,
            source: "local",
            now_us: self.clock.now_us(),
        }
    }

    /// Runs on a dedicated thread until stopped.
    pub(crate) fn run_blocking(mut self, mut rx: mpsc::Receiver<Command>) {
        let max = self.config.replication.group_commit_max_ops;
        while let Some(first) = rx.blocking_recv() {
            let cmds = drain(first, &mut rx, max);
            if self.process(cmds) {
                break;
            }
        }
    }

    /// Runs as a task (simulations: deterministic, single-threaded).
    pub(crate) async fn run_async(mut self, mut rx: mpsc::Receiver<Command>) {
        let max = self.config.replication.group_commit_max_ops;
        while let Some(first) = rx.recv().await {
            let cmds = drain(first, &mut rx, max);
            if self.process(cmds) {
                break;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs one group of commands. Returns true on `Stop`.
    fn process(&mut self, cmds: Vec<Command>) -> bool {
        if let Some(why) = &self.broken {
            let e = Error::Storage(format!(
                "the store stopped taking writes after an earlier failure: {why}"
            ));
            let stop = cmds.iter().any(|c| matches!(c, Command::Stop));
            for c in cmds {
                fail_command(c, &e);
            }
            return stop;
        }
        let started = Instant::now();
        let now_us = self.clock.now_us();
        let n_cmds = cmds.len() as u64;
        let stop = cmds.iter().any(|c| matches!(c, Command::Stop));
        let forced = cmds.iter().any(|c| {
            matches!(
                c,
                Command::Stop | Command::Checkpoint(_) | Command::Apply { durable: true, .. }
            )
        });
        let checkpoint = forced
            || self.clock.now_ms().saturating_sub(self.last_checkpoint_ms)
                >= self.checkpoint_every_ms;
        let txn = match self.store.begin(checkpoint) {
            Ok(t) => t,
            Err(e) => {
                for c in cmds {
                    fail_command(c, &e);
                }
                return stop;
            }
        };
        let mut g = self.group();
        g.now_us = now_us;
        let mut fatal: Option<Error> = None;
        for cmd in cmds {
            if let Some(e) = &fatal {
                fail_command(cmd, e);
                continue;
            }
            g.source = match &cmd {
                Command::Local(..) => "local",
                Command::Apply { .. } => "replicated",
                Command::Fault { .. } => "fault",
                _ => "repair",
            };
            let result = match cmd {
                Command::Local(req, reply) => match self.local(&txn, &mut g, req, now_us) {
                    Ok(applied) => {
                        g.done.push(Done::Local(reply, Box::new(applied)));
                        Ok(())
                    }
                    Err(e @ Error::Storage(_)) => {
                        let _ = reply.send(Err(Error::Storage(e.to_string())));
                        Err(e)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Ok(())
                    }
                },
                Command::Apply {
                    origin,
                    entries,
                    gap_acknowledged,
                    durable: _,
                    reply,
                } => match self.apply(&txn, &mut g, &origin, entries, gap_acknowledged, now_us) {
                    Ok(()) => {
                        g.done.push(Done::Apply(reply, origin));
                        Ok(())
                    }
                    Err(e @ Error::Storage(_)) => {
                        let _ = reply.send(Err(Error::Storage(e.to_string())));
                        Err(e)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Ok(())
                    }
                },
                Command::Repair(items, reply) => {
                    let mut res = Ok(());
                    for item in items {
                        if let Err(e) = self.merge_in(
                            &txn,
                            &mut g,
                            &item.class,
                            &item.key,
                            &item.entity,
                            now_us,
                        ) {
                            res = Err(e);
                            break;
                        }
                    }
                    match res {
                        Ok(()) => {
                            g.done.push(Done::Repair(reply));
                            Ok(())
                        }
                        Err(e) => {
                            let _ = reply.send(Err(Error::Storage(e.to_string())));
                            Err(e)
                        }
                    }
                }
                Command::MarkAntiEntropy(peer, needed) => {
                    self.marks.insert(peer, needed);
                    g.changed = true;
                    Ok(())
                }
                Command::Replace(items, reply) => {
                    let mut res = Ok(());
                    for item in items {
                        if let Err(e) =
                            self.replace(&txn, &mut g, &item.class, &item.key, Some(&item.entity))
                        {
                            res = Err(e);
                            break;
                        }
                    }
                    match res {
                        Ok(()) => {
                            g.done.push(Done::Repair(reply));
                            Ok(())
                        }
                        Err(e) => {
                            let _ = reply.send(Err(Error::Storage(e.to_string())));
                            Err(e)
                        }
                    }
                }
                Command::Fault {
                    class,
                    key,
                    fault,
                    reply,
                } => match self.fault(&txn, &mut g, &class, &key, fault) {
                    Ok(()) => {
                        g.done.push(Done::Repair(reply));
                        Ok(())
                    }
                    Err(e @ Error::Storage(_)) => {
                        let _ = reply.send(Err(Error::Storage(e.to_string())));
                        Err(e)
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        Ok(())
                    }
                },
                Command::Checkpoint(reply) => {
                    if let Some(r) = reply {
                        g.done.push(Done::Checkpoint(r));
                    }
                    Ok(())
                }
                Command::Stop => Ok(()),
            };
            if let Err(e) = result {
                fatal = Some(e);
            }
        }
        let needs_commit =
            g.changed || (checkpoint && (self.dirty || self.head != self.checkpoint));
        let outcome = match fatal {
            Some(e) => Err(e),
            None if !needs_commit => {
                drop(txn);
                Ok(false)
            }
            None => (|| {
                // Durable first: the log entries of local writes.
                self.wal.append(&g.log)?;
                if checkpoint {
                    self.write_checkpoint_meta(&txn, &g)?;
                }
                txn.commit()?;
                Ok(checkpoint)
            })(),
        };
        match outcome {
            Err(e) => {
                tracing::error!(region = %self.region, error = %e, "A group commit failed; its writes were not acknowledged and the region stops taking writes.");
                self.broken = Some(e.to_string());
                let err = Error::Storage(e.to_string());
                for d in g.done {
                    fail_done(d, &err);
                }
            }
            Ok(checkpointed) => {
                if needs_commit {
                    self.repl
                        .count_commit(n_cmds, started.elapsed().as_micros() as u64);
                }
                self.finish(g, checkpointed);
            }
        }
        stop
    }

    /// Builds every class's Merkle tree from the store.
    fn rebuild_trees(&self) -> Result<()> {
        let started = Instant::now();
        let mut trees = BTreeMap::new();
        let mut entries = 0u64;
        for class in self.config.classes.keys() {
            let mut items = Vec::new();
            self.store.for_each_raw(class, |key, bytes| {
                items.push((
                    merkle::bucket_of(key),
                    merkle::entry_hash(class, key, bytes),
                ));
            })?;
            entries += items.len() as u64;
            trees.insert(class.clone(), MerkleTree::build(items));
        }
        self.repl.set_trees(trees);
        tracing::info!(region = %self.region, entries, ms = started.elapsed().as_millis() as u64, "Built the Merkle trees.");
        Ok(())
    }

    /// Reads the ownership delegations and the rollout stages set at
    /// runtime from the store and publishes them.
    fn load_control(&self) {
        let read = |class: &str| -> Result<Vec<(String, Value)>> {
            Ok(self
                .store
                .scan_class(class, None, usize::MAX)?
                .into_iter()
                .filter_map(|(k, e)| Some((k, e.value()?)))
                .collect())
        };
        match (read(OWNERSHIP_CLASS), read(ROLLOUT_CLASS)) {
            (Ok(ownership), Ok(rollout)) => {
                let ownership = OwnershipView::from_values(
                    ownership.iter().map(|(k, v)| (k.as_str(), v.clone())),
                );
                let rollout =
                    RolloutView::from_values(rollout.iter().map(|(k, v)| (k.as_str(), v.clone())));
                self.repl.set_ownership(ownership);
                self.repl.set_rollout(rollout);
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(region = %self.region, error = %e, "Cannot read the ownership delegations and rollout stages.")
            }
        }
    }

    /// Publishes what a committed group changed and answers its commands.
    fn finish(&mut self, mut g: Group, checkpointed: bool) {
        if !g.tree.is_empty() {
            self.repl.update_trees(
                std::mem::take(&mut g.tree)
                    .into_iter()
                    .map(|d| (d.class, d.bucket, d.old, d.new)),
            );
        }
        if g.control_changed {
            self.load_control();
        }
        self.next_conflict_id = g.next_conflict_id;
        if g.feed_next != self.feed_next {
            self.feed_next = g.feed_next;
            self.repl.publish_feed_head(g.feed_next - 1);
        }
        if g.changed {
            self.dirty = true;
        }
        if !g.applied.is_empty() {
            self.applied
                .extend(g.applied.iter().map(|(k, v)| (k.clone(), *v)));
            self.repl.publish_applied(&g.applied);
        }
        if !g.log.is_empty() {
            let bytes: usize = g.log.iter().map(LogEntry::size).sum();
            self.repl.note_entry_size((bytes / g.log.len()) as u64);
            self.repl.remember(g.log);
        }
        if g.head != self.head {
            self.head = g.head;
            self.repl.publish_head(g.head, self.clock.now_ms());
        }
        if checkpointed {
            self.checkpoint = self.head;
            self.durable = self.applied.clone();
            self.dirty = false;
            self.last_checkpoint_ms = self.clock.now_ms();
            self.repl.publish_durable(&self.durable);
            self.marks.clear();
            self.truncate_log();
        }
        for d in g.done {
            match d {
                Done::Local(tx, v) => drop(tx.send(Ok(*v))),
                Done::Apply(tx, origin) => {
                    let ack = ApplyAck {
                        applied: self.applied.get(&origin).copied().unwrap_or(0),
                        durable: self.durable.get(&origin).copied().unwrap_or(0),
                    };
                    drop(tx.send(Ok(ack)));
                }
                Done::Repair(tx) => drop(tx.send(Ok(()))),
                Done::Checkpoint(tx) => drop(tx.send(())),
            }
        }
        for (origin, lags) in &g.lags {
            self.stats.record_entry_lags(origin, lags);
        }
        for e in g.events {
            self.telemetry.emit(e);
        }
    }

    /// Removes log files every peer holds durably and the checkpoint covers.
    fn truncate_log(&mut self) {
        let mut upto = self.checkpoint;
        for (_, state) in self.repl.peers() {
            upto = upto.min(state.durable());
        }
        if let Err(e) = self.wal.truncate(upto) {
            tracing::warn!(region = %self.region, error = %e, "Cannot remove old write-ahead log files.");
        }
        self.repl.set_truncated(
            self.wal
                .first_seq()
                .map_or(self.head, |f| f.saturating_sub(1)),
        );
        if self.wal.files() != self.wal_files {
            self.wal_files = self.wal.files();
            self.repl.set_wal_reader(self.wal.reader());
        }
    }

    fn write_checkpoint_meta(&mut self, txn: &StoreTxn, g: &Group) -> Result<()> {
        txn.set_u64("checkpoint", g.head)?;
        for (origin, wm) in self.applied.iter().chain(g.applied.iter()) {
            txn.set_u64(&format!("applied/{origin}"), *wm)?;
        }
        for (peer, state) in self.repl.peers() {
            let durable = state.durable();
            if self.cursors.get(peer) != Some(&durable) {
                txn.set_u64(&format!("cursor/{peer}"), durable)?;
                self.cursors.insert(peer.clone(), durable);
            }
        }
        for (peer, needed) in &self.marks {
            txn.set_flag(&format!("ae/{peer}"), *needed)?;
        }
        txn.set_u64("next_conflict_id", g.next_conflict_id)?;
        txn.set_u64("feed_last", g.feed_next - 1)?;
        let storage = &self.config.storage;
        let keep_since_us = self
            .clock
            .now_us()
            .saturating_sub(storage.feed_retain_ms.saturating_mul(1_000));
        txn.trim_changes(keep_since_us, storage.feed_max_entries, 10_000)?;
        txn.set_hlc(&self.hlc.last())?;
        Ok(())
    }
}

fn drain(first: Command, rx: &mut mpsc::Receiver<Command>, max: usize) -> Vec<Command> {
    let mut cmds = vec![first];
    while cmds.len() < max {
        match rx.try_recv() {
            Ok(c) => cmds.push(c),
            Err(_) => break,
        }
    }
    cmds
}

fn fail_done(d: Done, e: &Error) {
    let err = || Error::Storage(e.to_string());
    match d {
        Done::Local(tx, _) => drop(tx.send(Err(err()))),
        Done::Apply(tx, _) => drop(tx.send(Err(err()))),
        Done::Repair(tx) => drop(tx.send(Err(err()))),
        Done::Checkpoint(tx) => drop(tx),
    }
}

fn fail_command(cmd: Command, e: &Error) {
    let err = || Error::Storage(e.to_string());
    match cmd {
        Command::Local(_, tx) => drop(tx.send(Err(err()))),
        Command::Apply { reply, .. } => drop(reply.send(Err(err()))),
        Command::Repair(_, tx) => drop(tx.send(Err(err()))),
        Command::Replace(_, tx) | Command::Fault { reply: tx, .. } => drop(tx.send(Err(err()))),
        Command::MarkAntiEntropy(..) | Command::Checkpoint(_) | Command::Stop => {}
    }
}
