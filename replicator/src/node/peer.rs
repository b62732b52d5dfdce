//! Requests from other regions: replication batches, fetches, forwarded
//! reads and writes, repairs and tree questions; and the drill-only fault
//! injection.

use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::oneshot;

use super::Node;
use crate::error::{Error, Result, WireError};
use crate::protocol::{
    PeerReply, PeerRequest, PeerResponse, RepairItem, ReplicateAck, ReplicateBatch,
};
use crate::telemetry::Event;
use crate::transport::PeerHandler;
use crate::command::{ApplyAck, Command};

impl Node {

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
            PeerRequest::Write(req) => self.write(req, Some(from)).await.map(PeerResponse::Written),
            PeerRequest::Read(req) => self.read(req, Some(from)).await.map(PeerResponse::Read),
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
        fault: crate::command::Fault,
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

    async fn apply_batch(&self, from: &str, batch: ReplicateBatch) -> Result<ReplicateAck> {
        if batch.origin != from
            || !self.inner.config.regions.contains_key(from)
            || from == self.inner.region
        {
            return Err(Error::BadRequest(format!(
                "a replication batch from `{from}` claims origin `{}`; regions ship only their own log",
                batch.origin
            )));
        }
        let now_ms = self.inner.clock.now_ms();
        let max = self.inner.config.cluster.max_clock_offset_ms;
        let newest = batch
            .entries
            .iter()
            .map(|e| e.wall_ms)
            .max()
            .unwrap_or(0)
            .max(batch.closed_ms);
        if newest > now_ms + max {
            self.inner.repl.count_refused_stamp();
            return Err(Error::ClockSkew {
                peer: from.to_owned(),
                region: self.inner.region.clone(),
                ahead_ms: newest - now_ms,
                max_ms: max,
            });
        }
        let n = batch.entries.len() as u64;
        let stamps: Vec<(u64, u64)> = batch.entries.iter().map(|e| (e.seq, e.wall_ms)).collect();
        let ack: ApplyAck = if batch.entries.is_empty() {
            if batch.durable_now
                && self.inner.repl.applied_from(from) > self.inner.repl.durable_from(from)
            {
                let (tx, rx) = oneshot::channel();
                self.inner
                    .writer
                    .send(Command::Checkpoint(Some(tx)))
                    .await
                    .map_err(|_| Error::ShuttingDown(self.inner.region.clone()))?;
                let _ = rx.await;
            }
            ApplyAck {
                applied: self.inner.repl.applied_from(from),
                durable: self.inner.repl.durable_from(from),
            }
        } else {
            // Batches travel on several connections at once; one may arrive
            // before the batch it follows. Give that one a moment to land.
            let first = batch.entries[0].seq;
            if !batch.gap_acknowledged && first > self.inner.repl.applied_from(from) + 1 {
                let wait = Duration::from_millis(self.inner.config.replication.peer_timeout_ms / 4);
                self.inner.repl.wait_applied(from, first - 1, wait).await;
            }
            let origin = from.to_owned();
            let gap = batch.gap_acknowledged;
            let durable = batch.durable_now;
            let entries = batch.entries;
            match self
                .submit(|reply| Command::Apply {
                    origin,
                    entries,
                    gap_acknowledged: gap,
                    durable,
                    reply,
                })
                .await
            {
                Ok(ack) => ack,
                Err(e @ Error::ClockSkew { .. }) => {
                    self.inner.repl.count_refused_stamp();
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        };
        let acked = ack.applied;
        // The closed timestamp holds only if we hold everything up to the
        // origin's head.
        if acked >= batch.head {
            self.inner.repl.advance_closed(from, batch.closed_ms);
        }
        self.inner.repl.learn_applied(from, &batch.applied);
        let newest_applied = stamps
            .iter()
            .filter(|(seq, _)| *seq <= acked)
            .map(|(_, wall_ms)| *wall_ms)
            .max();
        self.inner.repl.note_arrival(
            from,
            newest_applied,
            n,
            batch.head.saturating_sub(acked),
            batch.backlog_bytes,
        );
        Ok(ReplicateAck {
            acked,
            durable: ack.durable,
            applied: self.inner.repl.applied_vector(&self.inner.region),
        })
    }
}
}

impl PeerHandler for Node {
    fn handle(&self, from: &str, req: PeerRequest) -> BoxFuture<'static, PeerReply> {
        let node = self.clone();
        let from = from.to_owned();
        Box::pin(async move { node.handle_peer(&from, req).await })
    }
}
