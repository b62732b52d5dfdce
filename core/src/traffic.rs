//! What crosses between regions: bytes of region-to-region calls by peer
//! and kind, as the calling region counts them. The request body is this
//! region's egress to the peer; the answer body the peer's egress to it.
//! Inter-region transfer is what clouds bill by the GB, so this is what
//! active-active costs beyond the regions themselves.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::protocol::PeerRequest;

/// Calls of one kind to one peer, since the region started.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerTraffic {
    /// The peer called.
    pub peer: String,
    /// `replicate` (log batches), `heartbeat` (empty batches), `fetch`,
    /// `write` and `read` (forwarded client requests), `repair`, `tree`
    /// (anti-entropy), `silent` (lease and failover questions).
    pub kind: String,
    /// Calls answered (only answered calls are counted).
    pub calls: u64,
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

/// The counts of one region's calls.
#[derive(Debug, Default)]
pub struct Traffic {
    by: Mutex<BTreeMap<(String, &'static str), PeerTraffic>>,
}

impl Traffic {
    /// Counts an answered call of `kind` to `peer`: `sent` bytes out,
    /// `received` back.
    pub fn count(&self, peer: &str, kind: &'static str, sent: u64, received: u64) {
        let mut by = self
            .by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = by
            .entry((peer.to_owned(), kind))
            .or_insert_with(|| PeerTraffic {
                peer: peer.to_owned(),
                kind: kind.to_owned(),
                ..PeerTraffic::default()
            });
        t.calls += 1;
        t.sent_bytes += sent;
        t.received_bytes += received;
    }

    /// Every peer and kind so far, by peer then kind.
    pub fn snapshot(&self) -> Vec<PeerTraffic> {
        self.by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_add_up_by_peer_and_kind() {
        let t = Traffic::default();
        t.count("eu-west", "replicate", 100, 10);
        t.count("eu-west", "replicate", 50, 10);
        t.count("eu-west", "heartbeat", 20, 3);
        t.count("us-west", "tree", 7, 900);
        let s = t.snapshot();
        assert_eq!(s.len(), 3);
        assert_eq!(
            (
                s[1].kind.as_str(),
                s[1].calls,
                s[1].sent_bytes,
                s[1].received_bytes
            ),
            ("replicate", 2, 150, 20)
        );
        assert_eq!(
            (s[0].kind.as_str(), s[0].calls, s[0].sent_bytes),
            ("heartbeat", 1, 20)
        );
        assert_eq!((s[2].peer.as_str(), s[2].received_bytes), ("us-west", 900));
    }
}
