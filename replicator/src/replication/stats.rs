//! Replication as `/v1/stats` serves it: the node's commit and refusal
//! counters, and a snapshot of every peer in both directions.

use std::sync::atomic::{AtomicU64, Ordering};

use parallax_core::stats::{AntiEntropyStats, PeerStats, ReplicationStats};

use super::Replication;

/// Counters of the writer and the receiver.
#[derive(Debug, Default)]
pub(super) struct Counters {
    refused_stamps: AtomicU64,
    commits: AtomicU64,
    committed_commands: AtomicU64,
    commit_us: AtomicU64,
    replayed: AtomicU64,
}

impl Replication {
    /// Records how many log entries were replayed at start-up.
    pub(crate) fn set_replayed(&self, n: u64) {
        self.counters.replayed.store(n, Ordering::Relaxed);
    }

    /// Counts one group commit of `commands` commands that took `us`.
    pub(crate) fn count_commit(&self, commands: u64, us: u64) {
        let c = &self.counters;
        c.commits.fetch_add(1, Ordering::Relaxed);
        c.committed_commands.fetch_add(commands, Ordering::Relaxed);
        c.commit_us.fetch_add(us, Ordering::Relaxed);
    }

    pub(crate) fn count_refused_stamp(&self) {
        self.counters.refused_stamps.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ae_running(&self, what: Option<String>) {
        self.ae.lock().expect("ae lock").running = what;
    }

    pub(crate) fn ae_done(&self, report: parallax_core::sync::AntiEntropyReport) {
        let mut ae = self.ae.lock().expect("ae lock");
        ae.passes += 1;
        ae.last.insert(report.peer.clone(), report);
    }

    /// Records a detour pass (`cut`: peers not reached; `via`: those it
    /// went through), or its end (`cut` empty).
    pub(crate) fn ae_detour(&self, cut: Vec<String>, via: Vec<String>, pulled: u64, now_us: u64) {
        let mut ae = self.ae.lock().expect("ae lock");
        if cut.is_empty() {
            ae.detour = None;
            return;
        }
        let d = ae
            .detour
            .get_or_insert_with(|| parallax_core::stats::Detour {
                since_us: now_us,
                ..Default::default()
            });
        d.cut = cut;
        d.via = via;
        d.passes += 1;
        d.pulled += pulled;
        d.last_us = now_us;
    }

    /// Whether a detour is under way.
    pub(crate) fn ae_detouring(&self) -> bool {
        self.ae.lock().expect("ae lock").detour.is_some()
    }

    pub(crate) fn ae_stats(&self) -> AntiEntropyStats {
        self.ae.lock().expect("ae lock").clone()
    }

    /// A snapshot for `/v1/stats`.
    pub(crate) fn snapshot(&self, me: &str, now_ms: u64) -> ReplicationStats {
        let head = self.head().seq;
        let avg = self.avg_entry_bytes();
        let peers = self
            .peers
            .iter()
            .map(|(name, p)| {
                let acked = p.acked();
                let backlog = head.saturating_sub(acked);
                let (rtt_us, offset_us) = p.best_offset().unwrap_or((0, 0));
                (
                    name.clone(),
                    PeerStats {
                        acked,
                        backlog_ops: backlog,
                        backlog_bytes: backlog * avg,
                        batches_sent: p.batches_sent.load(Ordering::Relaxed),
                        entries_sent: p.entries_sent.load(Ordering::Relaxed),
                        heartbeats_sent: p.heartbeats_sent.load(Ordering::Relaxed),
                        errors: p.errors.load(Ordering::Relaxed),
                        consecutive_failures: p.consecutive_failures.load(Ordering::Relaxed),
                        last_ok_ms_ago: match p.last_ok_us() {
                            0 => None,
                            us => Some(now_ms.saturating_sub(us / 1_000)),
                        },
                        last_error: p.last_error.lock().expect("error lock").clone(),
                        needs_anti_entropy: p.needs_anti_entropy(),
                        clock_offset_ms: offset_us / 1_000,
                        rtt_ms: rtt_us as f64 / 1_000.0,
                        lag_from_ms: self.lag_from(name, now_ms),
                        applied_from: self.applied_from(name),
                    },
                )
            })
            .collect();
        let c = &self.counters;
        ReplicationStats {
            region: me.to_owned(),
            head,
            truncated: self.log.truncated(),
            refused_stamps: c.refused_stamps.load(Ordering::Relaxed),
            commits: c.commits.load(Ordering::Relaxed),
            committed_commands: c.committed_commands.load(Ordering::Relaxed),
            commit_us_total: c.commit_us.load(Ordering::Relaxed),
            replayed_at_start: c.replayed.load(Ordering::Relaxed),
            peers,
        }
    }
}
