//! What crosses between regions: bytes of region-to-region calls by peer,
//! kind and class, as the calling region counts them. The request body is
//! this region's egress to the peer; the answer body the peer's egress to
//! it. Inter-region transfer is what clouds bill by the GB, so this is what
//! active-active costs beyond the regions themselves.
//!
//! A call carrying several classes (a replication batch, a tree question
//! about every class) splits its bytes between them by their share of what
//! it carries: a batch by the bytes of each class's entries, a tree or
//! repair by the count of classes or items. Calls of no class (heartbeats,
//! lease and watermark questions) count under the class `""`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::protocol::{PeerRequest, TreeRequest};

/// Calls of one kind to one peer for one class, since the region started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTraffic {
    /// The peer called.
    pub peer: String,
    /// `replicate` (log batches), `heartbeat` (empty batches), `fetch`,
    /// `write` and `read` (forwarded client requests), `repair`, `tree`
    /// (anti-entropy), `silent` (lease and failover questions).
    pub kind: String,
    /// The class the bytes were for; `""` for calls of no class.
    #[serde(default)]
    pub class: String,
    /// Calls answered that carried this class (only answered calls are
    /// counted; a batch of two classes counts once under each).
    pub calls: u64,
    /// What the calls carried of this class: log entries for `replicate`,
    /// keys for `fetch`, `write`, `read` and `repair`, questions for `tree`,
    /// 1 a call otherwise.
    #[serde(default)]
    pub items: u64,
    /// Request bytes sent (this region's egress to the peer).
    pub sent_bytes: u64,
    /// Answer bytes received (the peer's egress to this region).
    pub received_bytes: u64,
}

/// The kind of a request, as [`PeerTraffic::kind`] names it.
pub fn kind_of(req: &PeerRequest) -> &'static str {
    match req {
        PeerRequest::Replicate(b) if b.entries.is_empty() => "heartbeat",
        PeerRequest::Replicate(_) => "replicate",
        PeerRequest::Fetch { .. } => "fetch",
        PeerRequest::Write(_) => "write",
        PeerRequest::Read(_) => "read",
        PeerRequest::Repair(_) => "repair",
        PeerRequest::Tree(_) => "tree",
        PeerRequest::Silent { .. } => "silent",
    }
}

/// One class's part of a call: its weight in the split of the call's bytes
/// and the items it carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The class (`""`: none).
    pub class: String,
    /// Its weight in the split.
    pub weight: u64,
    /// Items of it in the call.
    pub items: u64,
}

impl Share {
    fn of(class: &str, weight: u64, items: u64) -> Share {
        Share {
            class: class.to_owned(),
            weight,
            items,
        }
    }
}

/// The classes a request carries, each with its weight and items.
pub fn shares_of(req: &PeerRequest) -> Vec<Share> {
    // Each thing the call carries: its class and its weight.
    let carried: Vec<(&str, u64)> = match req {
        PeerRequest::Replicate(b) if b.entries.is_empty() => vec![("", 1)],
        PeerRequest::Replicate(b) => b
            .entries
            .iter()
            .map(|e| (e.class.as_str(), e.size() as u64))
            .collect(),
        PeerRequest::Fetch { class, .. } => vec![(class, 1)],
        PeerRequest::Write(w) => vec![(&w.class, 1)],
        PeerRequest::Read(r) => vec![(&r.class, 1)],
        PeerRequest::Repair(items) => items.iter().map(|i| (i.class.as_str(), 1)).collect(),
        PeerRequest::Tree(TreeRequest::Roots { classes }) => {
            classes.iter().map(|c| (c.as_str(), 1)).collect()
        }
        PeerRequest::Tree(
            TreeRequest::Children { class, .. }
            | TreeRequest::Entries { class, .. }
            | TreeRequest::Versions { class, .. },
        ) => vec![(class, 1)],
        PeerRequest::Tree(TreeRequest::Applied) | PeerRequest::Silent { .. } => vec![("", 1)],
    };
    let mut by: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for (class, weight) in carried {
        let s = by.entry(class).or_default();
        s.0 += weight;
        s.1 += 1;
    }
    if by.is_empty() {
        // A tree question about no class, a repair of nothing.
        by.insert("", (1, 1));
    }
    by.into_iter()
        .map(|(class, (weight, items))| Share::of(class, weight, items))
        .collect()
}

/// `total` split by `weights`, the rounding left to the last part so the
/// parts add up to `total` exactly.
fn split(total: u64, weights: &[u64]) -> Vec<u64> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum::<u128>().max(1);
    let mut parts: Vec<u64> = weights
        .iter()
        .map(|&w| (u128::from(total) * u128::from(w) / sum) as u64)
        .collect();
    let given: u64 = parts.iter().sum();
    if let Some(last) = parts.last_mut() {
        *last += total - given;
    }
    parts
}

/// The counts of one region's calls.
#[derive(Debug, Default)]
pub struct Traffic {
    by: Mutex<BTreeMap<(String, &'static str, String), PeerTraffic>>,
}

impl Traffic {
    /// Counts an answered call of `kind` to `peer` carrying `shares`:
    /// `sent` bytes out, `received` back, split between the shares.
    pub fn count(
        &self,
        peer: &str,
        kind: &'static str,
        shares: &[Share],
        sent: u64,
        received: u64,
    ) {
        let weights: Vec<u64> = shares.iter().map(|s| s.weight).collect();
        let (sent, received) = (split(sent, &weights), split(received, &weights));
        let mut by = self
            .by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (i, share) in shares.iter().enumerate() {
            let t = by
                .entry((peer.to_owned(), kind, share.class.clone()))
                .or_insert_with(|| PeerTraffic {
                    peer: peer.to_owned(),
                    kind: kind.to_owned(),
                    class: share.class.clone(),
                    ..PeerTraffic::default()
                });
            t.calls += 1;
            t.items += share.items;
            t.sent_bytes += sent[i];
            t.received_bytes += received[i];
        }
    }

    /// Every peer, kind and class so far, in that order.
    pub fn snapshot(&self) -> Vec<PeerTraffic> {
        self.by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

/// What grew between two snapshots of [`Traffic`] (a peer, kind and class
/// new in `now` grew from nothing); the rows that did not change are left
/// out.
pub fn growth(before: &[PeerTraffic], now: &[PeerTraffic]) -> Vec<PeerTraffic> {
    let key = |t: &PeerTraffic| (t.peer.clone(), t.kind.clone(), t.class.clone());
    let before: BTreeMap<_, &PeerTraffic> = before.iter().map(|t| (key(t), t)).collect();
    now.iter()
        .filter_map(|t| {
            let b = before.get(&key(t));
            let d = PeerTraffic {
                calls: t.calls - b.map_or(0, |b| b.calls.min(t.calls)),
                items: t.items - b.map_or(0, |b| b.items.min(t.items)),
                sent_bytes: t.sent_bytes - b.map_or(0, |b| b.sent_bytes.min(t.sent_bytes)),
                received_bytes: t.received_bytes
                    - b.map_or(0, |b| b.received_bytes.min(t.received_bytes)),
                ..t.clone()
            };
            (d.calls > 0).then_some(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{LogEntry, ReplicateBatch};

    fn batch(entries: &[(&str, usize)]) -> PeerRequest {
        PeerRequest::Replicate(ReplicateBatch {
            origin: "us-east".into(),
            head: 9,
            closed_ms: 0,
            entries: entries
                .iter()
                .enumerate()
                .map(|(i, (class, len))| LogEntry {
                    seq: i as u64 + 1,
                    class: (*class).into(),
                    key: "k".into(),
                    wall_ms: 0,
                    entity: vec![0; *len],
                })
                .collect(),
            gap_acknowledged: false,
            applied: BTreeMap::new(),
            backlog_bytes: 0,
            durable_now: false,
        })
    }

    fn count(t: &Traffic, peer: &str, req: &PeerRequest, sent: u64, received: u64) {
        t.count(peer, kind_of(req), &shares_of(req), sent, received);
    }

    #[test]
    fn a_batch_splits_its_bytes_by_each_classs_entries_and_adds_up_exactly() {
        let t = Traffic::default();
        // Entry sizes (entity + class + key + 24): 75 + 6 + 1 + 24 = 106 for
        // `orders`, 3 × (1 + 5 + 1 + 24) = 93 for `carts`.
        let req = batch(&[("orders", 75), ("carts", 1), ("carts", 1), ("carts", 1)]);
        count(&t, "eu-west", &req, 1_001, 10);
        count(&t, "eu-west", &batch(&[]), 20, 3);
        count(
            &t,
            "us-west",
            &PeerRequest::Tree(TreeRequest::Applied),
            7,
            900,
        );
        let s = t.snapshot();
        let row = |peer: &str, kind: &str, class: &str| {
            s.iter()
                .find(|r| r.peer == peer && r.kind == kind && r.class == class)
                .unwrap_or_else(|| panic!("{peer} {kind} {class} in {s:?}"))
                .clone()
        };
        let (orders, carts) = (
            row("eu-west", "replicate", "orders"),
            row("eu-west", "replicate", "carts"),
        );
        assert_eq!((orders.calls, orders.items), (1, 1));
        assert_eq!((carts.calls, carts.items), (1, 3));
        assert_eq!(
            orders.sent_bytes + carts.sent_bytes,
            1_001,
            "the split loses nothing"
        );
        assert_eq!(orders.received_bytes + carts.received_bytes, 10);
        assert_eq!(
            carts.sent_bytes,
            1_001 * 93 / 199,
            "by bytes, not by entries"
        );
        assert_eq!(row("eu-west", "heartbeat", "").sent_bytes, 20);
        assert_eq!(row("us-west", "tree", "").received_bytes, 900);
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn growth_is_what_each_row_added_and_leaves_out_what_did_not_move() {
        let t = Traffic::default();
        count(&t, "eu-west", &batch(&[("orders", 10)]), 100, 10);
        count(&t, "eu-west", &batch(&[]), 20, 3);
        let before = t.snapshot();
        count(&t, "eu-west", &batch(&[("orders", 10)]), 50, 5);
        count(&t, "us-west", &batch(&[("orders", 10)]), 70, 5);
        let g = growth(&before, &t.snapshot());
        assert_eq!(g.len(), 2, "the heartbeat row did not move: {g:?}");
        assert_eq!(
            (g[0].peer.as_str(), g[0].calls, g[0].sent_bytes),
            ("eu-west", 1, 50)
        );
        assert_eq!(
            (g[1].peer.as_str(), g[1].calls, g[1].sent_bytes),
            ("us-west", 1, 70)
        );
        assert!(growth(&t.snapshot(), &t.snapshot()).is_empty());
    }
}
