//! The receiving side: the checks of an incoming [`ReplicateBatch`] as pure
//! decisions, and the driver that runs them, hands the entries to the
//! writer and answers with this region's watermarks.
//!
//! A batch is refused whole if it is not its sender's own log or carries a
//! stamp further ahead of our clock than `max_clock_offset_ms`. Otherwise
//! its entries are applied in order and once: entries at or below the
//! origin's watermark here are skipped (a resent or duplicated batch), and
//! a batch that does not follow the watermark is not applied unless the
//! origin acknowledged the gap; the answer, our watermark, tells the
//! origin where to resume.

use std::time::Duration;

use parallax_core::clock::Clock;
use parallax_core::config::Config;
use parallax_core::error::{Error, Result};
use parallax_core::protocol::LogEntry;
use parallax_core::protocol::{ReplicateAck, ReplicateBatch};
use tokio::sync::{mpsc, oneshot};

use super::Replication;
use crate::command::{ApplyAck, Command};

/// What the receiver knows of itself and of the origin when a batch arrives.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Here<'a> {
    /// This region.
    pub(crate) region: &'a str,
    /// The sender is a region of the cluster.
    pub(crate) sender_known: bool,
    /// Our wall clock (ms).
    pub(crate) now_ms: u64,
    /// The clock guard (`cluster.max_clock_offset_ms`).
    pub(crate) max_offset_ms: u64,
    /// The origin's log applied here up to.
    pub(crate) applied: u64,
    /// The origin's log held durably here up to.
    pub(crate) durable: u64,
}

/// Why a batch is refused whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The sender is not the batch's origin, not a region of the cluster,
    /// or this region.
    NotItsOwnLog,
    /// A stamp is this far (ms) ahead of our clock, beyond the guard.
    TooFarAhead { ahead_ms: u64 },
}

/// What to do with a batch that passed the checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// A heartbeat: answer with the watermarks, after a checkpoint if
    /// `checkpoint` (a quorum write waits for something not durable yet).
    Heartbeat { checkpoint: bool },
    /// Entries for the writer. If `wait_for` is set, the batch does not
    /// follow our watermark: batches travel on several connections at
    /// once, so give the one before it a moment to land (up to `wait_for`).
    Apply { wait_for: Option<u64> },
}

/// The checks of a batch from `from`, before anything is applied.
pub(crate) fn admit(from: &str, batch: &ReplicateBatch, here: &Here<'_>) -> Result<Admit, Refusal> {
    if batch.origin != from || !here.sender_known || from == here.region {
        return Err(Refusal::NotItsOwnLog);
    }
    let newest = batch
        .entries
        .iter()
        .map(|e| e.wall_ms)
        .max()
        .unwrap_or(0)
        .max(batch.closed_ms);
    if newest > here.now_ms + here.max_offset_ms {
        return Err(Refusal::TooFarAhead {
            ahead_ms: newest - here.now_ms,
        });
    }
    Ok(match batch.entries.first() {
        None => Admit::Heartbeat {
            checkpoint: batch.durable_now && here.applied > here.durable,
        },
        Some(first) => Admit::Apply {
            wait_for: (!batch.gap_acknowledged && first.seq > here.applied + 1)
                .then(|| first.seq - 1),
        },
    })
}

/// Which entries of a batch to apply, given the origin's watermark here.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Fresh {
    /// Every entry was applied before (a resent or duplicated batch).
    AlreadyApplied,
    /// Entries between the watermark and the first new one are missing and
    /// the origin did not acknowledge a gap: apply nothing.
    Missing,
    /// Apply these, in order.
    Apply(Vec<LogEntry>),
}

/// Order and idempotence: the entries above `watermark`, if they follow
/// it (or the origin acknowledged the gap before them).
pub(crate) fn fresh(watermark: u64, entries: Vec<LogEntry>, gap_acknowledged: bool) -> Fresh {
    let fresh: Vec<LogEntry> = entries.into_iter().filter(|e| e.seq > watermark).collect();
    match fresh.first() {
        None => Fresh::AlreadyApplied,
        Some(first) if first.seq > watermark + 1 && !gap_acknowledged => Fresh::Missing,
        Some(_) => Fresh::Apply(fresh),
    }
}

/// What the receiving driver needs of the node.
#[derive(Debug)]
pub(crate) struct Receiver<'a> {
    pub(crate) region: &'a str,
    pub(crate) config: &'a Config,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) repl: &'a Replication,
    pub(crate) writer: &'a mpsc::Sender<Command>,
}

impl Receiver<'_> {
    /// Checks and applies a batch from `from`; answers with what is
    /// applied and durable here of its log.
    pub(crate) async fn apply(&self, from: &str, batch: ReplicateBatch) -> Result<ReplicateAck> {
        let here = Here {
            region: self.region,
            sender_known: self.config.regions.contains_key(from),
            now_ms: self.clock.now_ms(),
            max_offset_ms: self.config.cluster.max_clock_offset_ms,
            applied: self.repl.applied_from(from),
            durable: self.repl.durable_from(from),
        };
        let admitted = match admit(from, &batch, &here) {
            Ok(a) => a,
            Err(Refusal::NotItsOwnLog) => {
                return Err(Error::BadRequest(format!(
                    "a replication batch from `{from}` claims origin `{}`; regions ship only their own log",
                    batch.origin
                )));
            }
            Err(Refusal::TooFarAhead { ahead_ms }) => {
                self.repl.count_refused_stamp();
                return Err(self.clock_skew(from, ahead_ms));
            }
        };
        let n = batch.entries.len() as u64;
        let stamps: Vec<(u64, u64)> = batch.entries.iter().map(|e| (e.seq, e.wall_ms)).collect();
        let ack = match admitted {
            Admit::Heartbeat { checkpoint } => {
                if checkpoint {
                    let (tx, rx) = oneshot::channel();
                    self.writer
                        .send(Command::Checkpoint(Some(tx)))
                        .await
                        .map_err(|_| Error::ShuttingDown(self.region.to_owned()))?;
                    let _ = rx.await;
                }
                ApplyAck {
                    applied: self.repl.applied_from(from),
                    durable: self.repl.durable_from(from),
                }
            }
            Admit::Apply { wait_for } => {
                if let Some(seq) = wait_for {
                    let wait = Duration::from_millis(self.config.replication.peer_timeout_ms / 4);
                    self.repl.wait_applied(from, seq, wait).await;
                }
                let (reply, rx) = oneshot::channel();
                let command = Command::Apply {
                    origin: from.to_owned(),
                    gap_acknowledged: batch.gap_acknowledged,
                    durable: batch.durable_now,
                    entries: batch.entries,
                    reply,
                };
                match self.submit(command, rx).await {
                    Ok(ack) => ack,
                    Err(e @ Error::ClockSkew { .. }) => {
                        self.repl.count_refused_stamp();
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let acked = ack.applied;
        // The closed timestamp holds only if we hold everything up to the
        // origin's head.
        if acked >= batch.head {
            self.repl.advance_closed(from, batch.closed_ms);
        }
        self.repl.learn_applied(from, &batch.applied);
        let newest_applied = stamps
            .iter()
            .filter(|(seq, _)| *seq <= acked)
            .map(|(_, wall_ms)| *wall_ms)
            .max();
        self.repl.note_arrival(
            from,
            newest_applied,
            n,
            batch.head.saturating_sub(acked),
            batch.backlog_bytes,
        );
        Ok(ReplicateAck {
            acked,
            durable: ack.durable,
            applied: self.repl.applied_vector(self.region),
        })
    }

    async fn submit(
        &self,
        command: Command,
        answer: oneshot::Receiver<Result<ApplyAck>>,
    ) -> Result<ApplyAck> {
        let down = || Error::ShuttingDown(self.region.to_owned());
        self.writer.send(command).await.map_err(|_| down())?;
        answer.await.map_err(|_| down())?
    }

    fn clock_skew(&self, from: &str, ahead_ms: u64) -> Error {
        Error::ClockSkew {
            peer: from.to_owned(),
            region: self.region.to_owned(),
            ahead_ms,
            max_ms: self.config.cluster.max_clock_offset_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, wall_ms: u64) -> LogEntry {
        LogEntry {
            seq,
            class: "likes".into(),
            key: format!("k{seq}"),
            wall_ms,
            entity: Vec::new(),
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>, gap: bool) -> ReplicateBatch {
        ReplicateBatch {
            origin: "eu".into(),
            head: *seqs.end(),
            closed_ms: 0,
            entries: seqs.map(|s| entry(s, 1_000)).collect(),
            gap_acknowledged: gap,
            applied: Default::default(),
            backlog_bytes: 0,
            durable_now: false,
        }
    }

    fn heartbeat() -> ReplicateBatch {
        ReplicateBatch {
            entries: Vec::new(),
            ..batch(1..=1, false)
        }
    }

    fn here(applied: u64) -> Here<'static> {
        Here {
            region: "us",
            sender_known: true,
            now_ms: 1_000,
            max_offset_ms: 500,
            applied,
            durable: 0,
        }
    }

    fn seqs(f: Fresh) -> Vec<u64> {
        match f {
            Fresh::Apply(v) => v.iter().map(|e| e.seq).collect(),
            other => panic!("expected entries to apply, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_is_only_taken_from_its_own_origin() {
        let b = batch(1..=2, false);
        assert_eq!(admit("ap", &b, &here(0)), Err(Refusal::NotItsOwnLog));
        let unknown = Here {
            sender_known: false,
            ..here(0)
        };
        assert_eq!(admit("eu", &b, &unknown), Err(Refusal::NotItsOwnLog));
        let from_me = Here {
            region: "eu",
            ..here(0)
        };
        assert_eq!(admit("eu", &b, &from_me), Err(Refusal::NotItsOwnLog));
    }

    #[test]
    fn stamps_too_far_ahead_refuse_the_whole_batch() {
        let mut b = batch(1..=2, false);
        assert!(admit("eu", &b, &here(0)).is_ok());
        b.entries[1].wall_ms = 1_501;
        assert_eq!(
            admit("eu", &b, &here(0)),
            Err(Refusal::TooFarAhead { ahead_ms: 501 })
        );
        let mut hb = heartbeat();
        hb.closed_ms = 1_500;
        assert!(admit("eu", &hb, &here(0)).is_ok(), "at the guard is fine");
        hb.closed_ms = 1_600;
        assert!(
            admit("eu", &hb, &here(0)).is_err(),
            "a heartbeat's closed stamp counts"
        );
    }

    #[test]
    fn a_batch_that_skips_ahead_waits_for_its_predecessor_unless_the_gap_is_acknowledged() {
        assert_eq!(
            admit("eu", &batch(4..=5, false), &here(3)),
            Ok(Admit::Apply { wait_for: None })
        );
        assert_eq!(
            admit("eu", &batch(6..=7, false), &here(3)),
            Ok(Admit::Apply { wait_for: Some(5) })
        );
        assert_eq!(
            admit("eu", &batch(6..=7, true), &here(3)),
            Ok(Admit::Apply { wait_for: None })
        );
    }

    #[test]
    fn a_heartbeat_asking_for_durability_checkpoints_only_if_something_is_not_durable() {
        let mut hb = heartbeat();
        hb.durable_now = true;
        let behind = Here {
            applied: 5,
            durable: 3,
            ..here(5)
        };
        assert_eq!(
            admit("eu", &hb, &behind),
            Ok(Admit::Heartbeat { checkpoint: true })
        );
        let even = Here {
            applied: 5,
            durable: 5,
            ..here(5)
        };
        assert_eq!(
            admit("eu", &hb, &even),
            Ok(Admit::Heartbeat { checkpoint: false })
        );
    }

    #[test]
    fn entries_are_applied_in_order_and_once() {
        let entries = |r: std::ops::RangeInclusive<u64>| r.map(|s| entry(s, 0)).collect();
        assert_eq!(fresh(5, entries(1..=5), false), Fresh::AlreadyApplied);
        assert_eq!(seqs(fresh(5, entries(3..=8), false)), vec![6, 7, 8]);
        assert_eq!(fresh(5, entries(8..=9), false), Fresh::Missing);
        assert_eq!(seqs(fresh(5, entries(8..=9), true)), vec![8, 9]);
    }
}
