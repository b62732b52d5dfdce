//! The single writer of a region's store, with group commit.
//!
//! Local writes, replicated batches and read repairs queue up as commands;
//! the writer takes every command waiting (up to `group_commit_max_ops`),
//! runs them in ONE transaction, commits it with one fsync, and only then
//! answers them. A local write and its replication-log entry are always in
//! the same transaction, so an acknowledged write is never lost and is
//! always shipped.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, HlcClock};
use crate::config::Config;
use crate::entity::{ConflictOutcome, Entity, Merged, Op, WriteContext};
use crate::error::{Error, Result};
use crate::protocol::RepairItem;
use crate::replication::Replication;
use crate::store::{ConflictRecord, LogEntry, Meta, Store, StoreTxn};
use crate::telemetry::{ConflictEvent, Event, Stats, Telemetry};

/// A local write for the writer.
#[derive(Debug)]
pub(crate) struct LocalWrite {
    pub(crate) class: String,
    pub(crate) key: String,
    pub(crate) op: Op,
    pub(crate) owner_epoch: u64,
    pub(crate) home: Option<String>,
}

/// A committed local write.
#[derive(Debug)]
pub(crate) struct LocalApplied {
    pub(crate) entity: Entity,
    pub(crate) seq: u64,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    Local(LocalWrite, oneshot::Sender<Result<LocalApplied>>),
    /// Entries of `origin`'s log; answers the new applied watermark.
    Apply {
        origin: String,
        entries: Vec<LogEntry>,
        gap_acknowledged: bool,
        reply: oneshot::Sender<Result<u64>>,
    },
    Repair(Vec<RepairItem>, oneshot::Sender<Result<()>>),
    /// `peer`'s log was dropped: remember that it needs anti-entropy.
    MarkAntiEntropy(String),
    Stop,
}

enum Done {
    Local(oneshot::Sender<Result<LocalApplied>>, Box<LocalApplied>),
    Apply(oneshot::Sender<Result<u64>>, u64),
    Repair(oneshot::Sender<Result<()>>),
}

impl Done {
    fn fail(self, e: &Error) {
        let err = || Error::Storage(e.to_string());
        match self {
            Done::Local(tx, _) => drop(tx.send(Err(err()))),
            Done::Apply(tx, _) => drop(tx.send(Err(err()))),
            Done::Repair(tx) => drop(tx.send(Err(err()))),
        }
    }

    fn succeed(self) {
        match self {
            Done::Local(tx, v) => drop(tx.send(Ok(*v))),
            Done::Apply(tx, v) => drop(tx.send(Ok(v))),
            Done::Repair(tx) => drop(tx.send(Ok(()))),
        }
    }
}

/// The writer's state.
pub(crate) struct Writer {
    region: String,
    config: Arc<Config>,
    store: Store,
    clock: Arc<dyn Clock>,
    hlc: HlcClock,
    head: u64,
    truncated: u64,
    applied: BTreeMap<String, u64>,
    cursors: BTreeMap<String, u64>,
    next_conflict_id: u64,
    repl: Arc<Replication>,
    telemetry: Telemetry,
    stats: Arc<Stats>,
    last_maintenance_us: u64,
}

/// Scratch state of one group.
struct Group {
    head: u64,
    applied: BTreeMap<String, u64>,
    next_conflict_id: u64,
    events: Vec<Event>,
    lags: BTreeMap<String, Vec<u64>>,
    done: Vec<Done>,
    log_bytes: u64,
    log_entries: u64,
}

impl Writer {
    pub(crate) fn new(
        region: String,
        config: Arc<Config>,
        store: Store,
        clock: Arc<dyn Clock>,
        meta: &Meta,
        repl: Arc<Replication>,
        telemetry: Telemetry,
        stats: Arc<Stats>,
    ) -> Writer {
        let mut hlc = HlcClock::new(region.clone(), config.cluster.max_clock_offset_ms);
        if let Some(last) = &meta.hlc {
            hlc.restore(last);
        }
        Writer {
            region,
            config,
            store,
            clock,
            hlc,
            head: meta.head,
            truncated: meta.truncated,
            applied: meta.applied.clone(),
            cursors: meta.cursors.clone(),
            next_conflict_id: meta.next_conflict_id.max(1),
            repl,
            telemetry,
            stats,
            last_maintenance_us: 0,
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
        self.final_maintenance();
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
        self.final_maintenance();
    }

    fn final_maintenance(&mut self) {
        let Ok(txn) = self.store.begin() else { return };
        let mut scratch = 0u64;
        if self.maintain(&txn, u64::MAX, &mut scratch).is_ok() && txn.commit().is_ok() {
            self.truncated = scratch.max(self.truncated);
        }
    }

    /// Runs one group of commands in one transaction. Returns true on `Stop`.
    fn process(&mut self, cmds: Vec<Command>) -> bool {
        let now_us = self.clock.now_us();
        let mut stop = false;
        let txn = match self.store.begin() {
            Ok(t) => t,
            Err(e) => {
                for c in cmds {
                    fail_command(c, &e);
                }
                return false;
            }
        };
        let mut g = Group {
            head: self.head,
            applied: BTreeMap::new(),
            next_conflict_id: self.next_conflict_id,
            events: Vec::new(),
            lags: BTreeMap::new(),
            done: Vec::with_capacity(cmds.len()),
            log_bytes: 0,
            log_entries: 0,
        };
        let mut fatal: Option<Error> = None;
        let mut marks = Vec::new();
        for cmd in cmds {
            if let Some(e) = &fatal {
                fail_command(cmd, e);
                continue;
            }
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
                    reply,
                } => match self.apply(&txn, &mut g, &origin, entries, gap_acknowledged, now_us) {
                    Ok(wm) => {
                        g.done.push(Done::Apply(reply, wm));
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
                Command::MarkAntiEntropy(peer) => {
                    marks.push(peer);
                    Ok(())
                }
                Command::Stop => {
                    stop = true;
                    Ok(())
                }
            };
            if let Err(e) = result {
                fatal = Some(e);
            }
        }
        let mut truncated = self.truncated;
        let commit = match fatal {
            Some(e) => Err(e),
            None => (|| {
                for peer in &marks {
                    txn.set_flag(&format!("ae/{peer}"), true)?;
                }
                if g.head != self.head {
                    txn.set_u64("head", g.head)?;
                }
                for (origin, wm) in &g.applied {
                    txn.set_u64(&format!("applied/{origin}"), *wm)?;
                }
                if g.next_conflict_id != self.next_conflict_id {
                    txn.set_u64("next_conflict_id", g.next_conflict_id)?;
                }
                txn.set_hlc(&self.hlc.last())?;
                if now_us.saturating_sub(self.last_maintenance_us) >= 1_000_000 {
                    self.last_maintenance_us = now_us;
                    self.maintain(&txn, now_us, &mut truncated)?;
                }
                txn.commit()
            })(),
        };
        match commit {
            Err(e) => {
                tracing::error!(region = %self.region, error = %e, "Commit failed; the group's writes were not acknowledged.");
                for d in g.done {
                    d.fail(&e);
                }
            }
            Ok(()) => {
                self.truncated = truncated;
                self.next_conflict_id = g.next_conflict_id;
                if !g.applied.is_empty() {
                    self.applied
                        .extend(g.applied.iter().map(|(k, v)| (k.clone(), *v)));
                    self.repl.publish_applied(&g.applied);
                }
                if let Some(avg) = g.log_bytes.checked_div(g.log_entries) {
                    self.repl.note_entry_size(avg);
                }
                if g.head != self.head {
                    self.head = g.head;
                    self.repl.publish_head(g.head, self.clock.now_ms());
                }
                self.repl.set_truncated(self.truncated);
                for d in g.done {
                    d.succeed();
                }
                for (origin, lags) in &g.lags {
                    self.stats.record_entry_lags(origin, lags);
                }
                for e in g.events {
                    self.telemetry.emit(e);
                }
            }
        }
        stop
    }

    /// Persists peer cursors and drops log entries every peer has.
    fn maintain(&mut self, txn: &StoreTxn, _now_us: u64, truncated: &mut u64) -> Result<()> {
        let mut min_acked = self.head;
        for (peer, state) in self.repl.peers() {
            let acked = state.acked();
            if self.cursors.get(peer) != Some(&acked) {
                txn.set_u64(&format!("cursor/{peer}"), acked)?;
                self.cursors.insert(peer.clone(), acked);
            }
            min_acked = min_acked.min(acked);
        }
        if min_acked > self.truncated {
            txn.truncate_log(self.truncated + 1, min_acked)?;
            txn.set_u64("truncated", min_acked)?;
            *truncated = min_acked;
        }
        Ok(())
    }

    fn local(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        req: LocalWrite,
        now_us: u64,
    ) -> Result<LocalApplied> {
        let class = self
            .config
            .classes
            .get(&req.class)
            .ok_or_else(|| Error::UnknownClass {
                class: req.class.clone(),
                declared: self.config.class_names(),
            })?;
        let existing = txn.get_entity(&req.class, &req.key)?;
        let stamp = self.hlc.now(now_us / 1_000);
        let seq = g.head + 1;
        let ctx = WriteContext {
            region: &self.region,
            class_name: &req.class,
            key: &req.key,
            class,
            stamp: stamp.clone(),
            seq,
            owner_epoch: req.owner_epoch,
            home: req.home.clone(),
        };
        let entity = Entity::apply_local(existing.as_ref(), &req.op, &ctx)?;
        let bytes = entity.encode();
        txn.put_entity(&req.class, &req.key, &bytes)?;
        let entry = LogEntry {
            seq,
            class: req.class.clone(),
            key: req.key.clone(),
            wall_ms: stamp.wall_ms,
            entity: bytes,
        };
        g.log_bytes += entry.size() as u64;
        g.log_entries += 1;
        txn.append_log(&entry)?;
        g.head = seq;
        if matches!(req.op, Op::Resolve(_)) {
            let first_seen = txn.dequeue(&req.class, &req.key)?;
            let resolution_ms = first_seen.map_or(0, |f| now_us.saturating_sub(f) / 1_000);
            self.conflict(
                txn,
                g,
                &req.class,
                &req.key,
                ConflictOutcome::Resolved,
                resolution_ms,
                None,
                now_us,
            )?;
        }
        Ok(LocalApplied { entity, seq })
    }

    fn apply(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        origin: &str,
        entries: Vec<LogEntry>,
        gap_acknowledged: bool,
        now_us: u64,
    ) -> Result<u64> {
        let mut wm = g
            .applied
            .get(origin)
            .or_else(|| self.applied.get(origin))
            .copied()
            .unwrap_or(0);
        let fresh: Vec<&LogEntry> = entries.iter().filter(|e| e.seq > wm).collect();
        let Some(first) = fresh.first() else {
            return Ok(wm);
        };
        if first.seq > wm + 1 && !gap_acknowledged {
            // Something between our watermark and this batch is missing: ask
            // the origin to resend from the watermark.
            return Ok(wm);
        }
        // Decode and check everything before changing anything, so a bad
        // batch changes nothing.
        let now_ms = now_us / 1_000;
        let mut decoded = Vec::with_capacity(fresh.len());
        for e in &fresh {
            let entity = Entity::decode(&e.entity).map_err(|err| {
                Error::BadRequest(format!("entry {} from {origin}: {err}", e.seq))
            })?;
            if let Err(ahead) = self.hlc.check(&entity.hlc, now_ms) {
                return Err(Error::ClockSkew {
                    peer: origin.to_owned(),
                    region: self.region.clone(),
                    ahead_ms: ahead.ahead_ms,
                    max_ms: self.config.cluster.max_clock_offset_ms,
                });
            }
            decoded.push(entity);
        }
        let offset = self.repl.offset_ms(origin);
        let lags = g.lags.entry(origin.to_owned()).or_default();
        for (e, remote) in fresh.iter().zip(&decoded) {
            let _ = self.hlc.observe(&remote.hlc, now_ms);
            lags.push(lag_ms(now_ms, e.wall_ms, offset));
            wm = e.seq;
        }
        for (e, remote) in fresh.iter().zip(decoded) {
            self.merge_in(txn, g, &e.class, &e.key, &remote, now_us)?;
        }
        g.applied.insert(origin.to_owned(), wm);
        Ok(wm)
    }

    /// Merges a remote version into the stored one, handling conflicts.
    fn merge_in(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        remote: &Entity,
        now_us: u64,
    ) -> Result<()> {
        let local = txn.get_entity(class, key)?;
        let merged = match &local {
            None => Merged {
                entity: remote.clone(),
                causality: crate::version::Causality::Before,
                conflict: None,
            },
            Some(l) => match l.merge(remote) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(region = %self.region, class, key, error = %e, "Cannot merge a replicated version; kept the local one.");
                    return Ok(());
                }
            },
        };
        if local.as_ref() != Some(&merged.entity) {
            txn.put_entity(class, key, &merged.entity.encode())?;
        }
        let manual = matches!(merged.entity.state, crate::entity::State::Manual(_));
        if manual {
            if merged.entity.is_conflicted() {
                let (_, new) = txn.enqueue(class, key, now_us)?;
                if new || merged.conflict.is_some() {
                    self.conflict(txn, g, class, key, ConflictOutcome::Queued, 0, None, now_us)?;
                }
            } else if let Some(first) = txn.dequeue(class, key)? {
                let resolution_ms = now_us.saturating_sub(first) / 1_000;
                self.conflict(
                    txn,
                    g,
                    class,
                    key,
                    ConflictOutcome::Resolved,
                    resolution_ms,
                    None,
                    now_us,
                )?;
            }
        } else if let Some(c) = &merged.conflict {
            let resolution_ms = (now_us / 1_000).saturating_sub(c.began_ms);
            self.conflict(
                txn,
                g,
                class,
                key,
                c.outcome,
                resolution_ms,
                Some(c),
                now_us,
            )?;
        }
        Ok(())
    }

    fn conflict(
        &mut self,
        txn: &StoreTxn,
        g: &mut Group,
        class: &str,
        key: &str,
        outcome: ConflictOutcome,
        resolution_ms: u64,
        detail: Option<&crate::entity::Conflict>,
        now_us: u64,
    ) -> Result<()> {
        let policy = self
            .config
            .classes
            .get(class)
            .map_or("unknown", |c| c.conflict.as_str());
        if outcome != ConflictOutcome::Merged {
            let record = ConflictRecord {
                id: g.next_conflict_id,
                ts_us: now_us,
                class: class.to_owned(),
                key: key.to_owned(),
                policy: policy.to_owned(),
                outcome: outcome.as_str().to_owned(),
                winner: detail.and_then(|c| c.winner.clone()),
                loser: detail.and_then(|c| c.loser.clone()),
                loser_value: detail
                    .and_then(|c| c.loser_value.as_ref())
                    .map(Value::to_string),
                resolution_ms,
            };
            g.next_conflict_id += 1;
            txn.record_conflict(&record, self.config.replication.conflict_log_max)?;
        }
        g.events.push(Event::Conflict(ConflictEvent {
            ts_us: now_us,
            region: self.region.clone(),
            class: class.to_owned(),
            key: key.to_owned(),
            policy: policy.to_owned(),
            outcome: outcome.as_str().to_owned(),
            resolution_ms,
        }));
        Ok(())
    }
}

/// Lag of an entry written at `wall_ms` on a clock `offset_ms` ahead of ours.
pub(crate) fn lag_ms(now_ms: u64, wall_ms: u64, offset_ms: i64) -> u64 {
    (now_ms as i64 + offset_ms - wall_ms as i64).max(0) as u64
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

fn fail_command(cmd: Command, e: &Error) {
    let err = || Error::Storage(e.to_string());
    match cmd {
        Command::Local(_, tx) => drop(tx.send(Err(err()))),
        Command::Apply { reply, .. } => drop(reply.send(Err(err()))),
        Command::Repair(_, tx) => drop(tx.send(Err(err()))),
        Command::MarkAntiEntropy(_) | Command::Stop => {}
    }
}
