//! Requests from other regions: replication batches, fetches, forwarded
//! reads and writes, repairs and tree questions; and the drill-only fault
//! injection.

use futures::future::BoxFuture;
use parallax_core::error::{Error, Result, WireError};
use parallax_core::protocol::{
    PeerReply, PeerRequest, PeerResponse, RepairItem, ReplicateAck, ReplicateBatch,
};
use parallax_core::telemetry::Event;
use parallax_core::transport::PeerHandler;

use super::Node;
use crate::command::Command;
use crate::replication::Receiver;

impl Node {
    /// Handles a request from another region.
    pub async fn handle_peer(&self, from: &str, req: PeerRequest) -> PeerReply {
        let peer = self.inner.repl.peer(from);
        if let Some(p) = peer {
            p.heard(self.inner.clock.now_us());
        }
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
            PeerRequest::Silent { region, for_ms } => Ok(self.silent(&region, for_ms)),
        };
        let now_us = self.inner.clock.now_us();
        PeerReply {
            wall_ms: now_us / 1_000,
            result: result.map_err(|e| WireError::from(&e)),
            lease: peer.is_none_or(|p| p.grants_lease(now_us)),
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
        audits: Vec<parallax_core::telemetry::AuditEvent>,
        records: Vec<parallax_core::telemetry::DivergenceEvent>,
    ) {
        for a in audits {
            self.inner.telemetry.emit(Event::Audit(a));
        }
        for r in records {
            self.inner.telemetry.emit(Event::Divergence(r));
        }
    }

    /// Takes failover rows a router measured into this region's telemetry.
    pub fn record_failovers(&self, rows: Vec<parallax_core::telemetry::FailoverEvent>) {
        for mut r in rows {
            r.region = self.inner.region.clone();
            self.inner.telemetry.emit(Event::Failover(r));
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
        fault: parallax_core::api::Fault,
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
