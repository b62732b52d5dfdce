//! Anti-entropy: this region's answers about its Merkle trees, repair
//! passes with peers, and the worker that runs them.

use std::time::Duration;

use futures::future::BoxFuture;
use parallax_core::config::ClassConfig;
use parallax_core::entity::Entity;
use parallax_core::error::{Error, Result};
use parallax_core::merkle::{self, NodeId};
use parallax_core::protocol::{
    PeerRequest, PeerResponse, RepairItem, TreeEntry, TreeRequest, TreeResponse,
};
use parallax_core::sync::{Replica, TreeData, TreeSource};
use parallax_core::worker::Worker;

use super::Node;
use crate::command::Command;

impl Node {
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
    ) -> Result<Vec<parallax_core::sync::AntiEntropyReport>> {
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
        self.repair_with(peers, self.classes_by_priority(), true)
            .await
    }

    /// Anti-entropy of the critical classes only, with `peer`: what a peer
    /// back from an outage gets first, before its backlog drains at the
    /// catch-up pace. `None` when no class is critical.
    pub(super) async fn repair_critical(
        &self,
        peer: &str,
    ) -> Option<Result<Vec<parallax_core::sync::AntiEntropyReport>>> {
        let critical: Vec<String> = self
            .classes_by_priority()
            .into_iter()
            .filter(|c| self.inner.config.classes[c].critical)
            .collect();
        if critical.is_empty() {
            return None;
        }
        Some(
            self.repair_with(vec![peer.to_owned()], critical, false)
                .await,
        )
    }

    /// Anti-entropy of `classes` with each of `peers`, one pass at a time;
    /// a `whole` pass (every class) also clears a peer's anti-entropy mark.
    async fn repair_with(
        &self,
        peers: Vec<String>,
        classes: Vec<String>,
        whole: bool,
    ) -> Result<Vec<parallax_core::sync::AntiEntropyReport>> {
        let _one_at_a_time = self.inner.ae_lock.lock().await;
        let max = self.inner.config.anti_entropy.max_keys_per_sec;
        let mut reports = Vec::new();
        for peer in peers {
            self.inner.repl.ae_running(Some(peer.clone()));
            let was_marked = whole && self.inner.repl.peers_needing_anti_entropy().contains(&peer);
            let local = LocalReplica(self.clone());
            let remote = PeerReplica {
                node: self.clone(),
                peer: peer.clone(),
            };
            let clock = self.inner.clock.as_ref();
            let report = match parallax_core::sync::anti_entropy(
                &local, &remote, &classes, max, clock,
            )
            .await
            {
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
                Err(e) => parallax_core::sync::AntiEntropyReport {
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
        parallax_core::sync::answer(self, req)
    }
}

/// Runs anti-entropy on a timer, soon after a peer is marked for it, and
/// through the peers still reached while one is cut off (the detour).
pub(super) async fn worker(node: Node, mut w: Worker) {
    let cfg = &node.inner.config.anti_entropy;
    let every = Duration::from_millis(cfg.interval_ms);
    let detour_every = Duration::from_millis(cfg.detour_interval_ms);
    let mut next_full = tokio::time::Instant::now() + every;
    let mut next_detour = tokio::time::Instant::now();
    let mut last_marked_try = tokio::time::Instant::now() - Duration::from_secs(60);
    let tick = Duration::from_millis(cfg.detour_interval_ms.clamp(100, 1_000));
    // Peers back from an outage whose critical classes were repaired first.
    let mut critical_first: Vec<String> = Vec::new();
    while w.idle_for(tick).await {
        let now = tokio::time::Instant::now();
        if critical_catch_up(&node, &mut w, &mut critical_first).await {
            continue;
        }
        if now >= next_detour && detour(&node, &mut w).await {
            next_detour = now + detour_every;
            continue;
        }
        let peers = if now >= next_full {
            next_full = now + every;
            None
        } else if !node.inner.repl.peers_needing_anti_entropy().is_empty()
            && now.duration_since(last_marked_try) >= Duration::from_secs(10)
        {
            last_marked_try = now;
            Some(node.inner.repl.peers_needing_anti_entropy())
        } else {
            continue;
        };
        w.busy();
        let reports = match peers {
            None => node.run_anti_entropy(None).await,
            Some(peers) => {
                let mut all = Vec::new();
                for peer in peers {
                    all.extend(node.run_anti_entropy(Some(&peer)).await.unwrap_or_default());
                }
                Ok(all)
            }
        };
        let failed: Vec<String> = reports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| r.error.map(|e| format!("{}: {e}", r.peer)))
            .collect();
        w.ran(if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        });
    }
}

/// Critical classes first: a peer reached again while more than a batch
/// behind (back from an outage) gets an anti-entropy pass of the critical
/// classes at once, so their writes arrive before the backlog drains at
/// the catch-up pace. Once per catch-up; returns whether it ran.
async fn critical_catch_up(node: &Node, w: &mut Worker, done: &mut Vec<String>) -> bool {
    let repl = &node.inner.repl;
    let cfg = &node.inner.config.replication;
    let behind = repl.catching_up(
        node.inner.clock.now_us(),
        cfg.batch_max_ops as u64,
        2 * cfg.heartbeat_interval_ms,
    );
    done.retain(|p| repl.behind(p) > cfg.batch_max_ops as u64);
    let Some(peer) = behind.into_iter().find(|p| !done.contains(p)) else {
        return false;
    };
    w.busy();
    let Some(result) = node.repair_critical(&peer).await else {
        done.push(peer);
        return false;
    };
    let failed = match &result {
        Ok(reports) => reports.iter().any(|r| r.error.is_some()),
        Err(_) => true,
    };
    if !failed {
        // Once per catch-up; a pass that failed is tried again next time.
        done.push(peer.clone());
    }
    let pushed: u64 = result
        .as_ref()
        .map(|r| r.iter().flat_map(|r| &r.classes).map(|c| c.pushed).sum())
        .unwrap_or(0);
    tracing::info!(
        region = %node.inner.region, %peer, behind = repl.behind(&peer), pushed,
        "Peer back with a backlog: its critical classes repaired first."
    );
    w.ran(result.map(|_| ()).map_err(|e| e.to_string()));
    true
}

/// One detour pass: when a peer has not been reached for
/// `detour_after_ms`, anti-entropy with every peer still reached pulls what
/// the cut-off peer wrote and they received. Returns whether it ran.
async fn detour(node: &Node, w: &mut Worker) -> bool {
    let after_ms = node.inner.config.anti_entropy.detour_after_ms;
    if after_ms == 0 {
        return false;
    }
    let now_us = node.inner.clock.now_us();
    let cut = node.inner.repl.unreached_for(now_us, after_ms);
    let via: Vec<String> = node
        .inner
        .repl
        .peers()
        .map(|(p, _)| p.clone())
        .filter(|p| !cut.contains(p))
        .collect();
    if cut.is_empty() || via.is_empty() {
        if node.inner.repl.ae_detouring() {
            tracing::info!(region = %node.inner.region, "Every peer reached again; detour ended.");
            node.inner.repl.ae_detour(Vec::new(), Vec::new(), 0, now_us);
        }
        return false;
    }
    if !node.inner.repl.ae_detouring() {
        tracing::warn!(
            region = %node.inner.region, cut = ?cut, via = ?via,
            "Peers not reached for {after_ms} ms: pulling what they write through the others."
        );
    }
    w.busy();
    let mut pulled = 0;
    let mut failed = Vec::new();
    for peer in &via {
        match node.run_anti_entropy(Some(peer)).await {
            Ok(reports) => {
                for r in reports {
                    pulled += r.classes.iter().map(|c| c.pulled).sum::<u64>();
                    if let Some(e) = r.error {
                        failed.push(format!("{peer}: {e}"));
                    }
                }
            }
            Err(e) => failed.push(format!("{peer}: {e}")),
        }
    }
    node.inner
        .repl
        .ae_detour(cut, via, pulled, node.inner.clock.now_us());
    w.ran(if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    });
    true
}

/// This region's own trees and store, as one side of an anti-entropy pass.
struct LocalReplica(Node);

impl TreeSource for LocalReplica {
    fn name(&self) -> &str {
        self.0.region()
    }

    fn ask(&self, req: TreeRequest) -> BoxFuture<'_, Result<(TreeResponse, u64)>> {
        Box::pin(async move { self.0.handle_tree(req).map(|r| (r, 0)) })
    }
}

impl Replica for LocalReplica {
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.0.repair(items))
    }
}

/// Another region, over the region-to-region transport, as the other side.
struct PeerReplica {
    node: Node,
    peer: String,
}

impl TreeSource for PeerReplica {
    fn name(&self) -> &str {
        &self.peer
    }

    fn ask(&self, req: TreeRequest) -> BoxFuture<'_, Result<(TreeResponse, u64)>> {
        Box::pin(async move {
            let sent =
                parallax_core::protocol::encode(&PeerRequest::Tree(req.clone())).len() as u64;
            match self.node.call(&self.peer, PeerRequest::Tree(req)).await? {
                PeerResponse::Tree(t) => {
                    let received = parallax_core::protocol::encode(&t).len() as u64;
                    Ok((t, sent + received))
                }
                other => Err(Error::Internal(format!(
                    "region {} answered a tree question with {other:?}",
                    self.peer
                ))),
            }
        })
    }
}

impl Replica for PeerReplica {
    fn repair(&self, items: Vec<RepairItem>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.node
                .call(&self.peer, PeerRequest::Repair(items))
                .await
                .map(|_| ())
        })
    }
}

impl TreeData for Node {
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

    fn state(&self) -> parallax_core::protocol::ReplicationState {
        parallax_core::protocol::ReplicationState {
            applied: self.inner.repl.applied_vector(&self.inner.region),
            log_dropped_for: self.inner.repl.peers_needing_anti_entropy(),
        }
    }
}
