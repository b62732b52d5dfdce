//! What the writer ([`crate::writer`]) is asked to do: the commands the
//! request handlers and the replication drivers queue for it, and their
//! answers. Its own module so that those who ask need not know the writer.

use tokio::sync::oneshot;

use parallax_core::api::Fault;
use parallax_core::entity::{Entity, Op};
use parallax_core::error::Result;
use parallax_core::protocol::LogEntry;
use parallax_core::protocol::RepairItem;

/// A local write for the writer.
#[derive(Debug)]
pub(crate) struct LocalWrite {
    pub(crate) class: String,
    pub(crate) key: String,
    pub(crate) op: Op,
    pub(crate) owner_epoch: u64,
    /// The region whose delegation this region takes the write under (see
    /// [`parallax_core::routing::Route::Local`]): the writer refuses it
    /// (`Misdirected`) if, by the time it commits, a move names another.
    pub(crate) under: Option<String>,
    pub(crate) home: Option<String>,
}

/// A committed local write.
#[derive(Debug)]
pub(crate) struct LocalApplied {
    pub(crate) entity: Entity,
    pub(crate) seq: u64,
}

/// Watermarks of one origin's log here after an apply.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ApplyAck {
    /// Last sequence applied.
    pub(crate) applied: u64,
    /// Last sequence applied and checkpointed (survives a crash).
    pub(crate) durable: u64,
}

/// What the writer is asked to do.
#[derive(Debug)]
pub(crate) enum Command {
    Local(LocalWrite, oneshot::Sender<Result<LocalApplied>>),
    /// Entries of `origin`'s log.
    Apply {
        origin: String,
        entries: Vec<LogEntry>,
        gap_acknowledged: bool,
        /// Checkpoint in this group (a quorum write waits on it).
        durable: bool,
        reply: oneshot::Sender<Result<ApplyAck>>,
    },
    Repair(Vec<RepairItem>, oneshot::Sender<Result<()>>),
    /// Remember whether `peer` needs anti-entropy (its log was dropped, or
    /// a pass repaired it).
    MarkAntiEntropy(String, bool),
    /// Overwrite stored versions as they are (a repair of corruption, where
    /// a merge cannot tell the good copy from the bad). Not replicated.
    Replace(Vec<RepairItem>, oneshot::Sender<Result<()>>),
    /// Change a stored entity without replicating it (fault-injection drills).
    Fault {
        class: String,
        key: String,
        fault: Fault,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Checkpoint now (if anything changed); answers when durable.
    Checkpoint(Option<oneshot::Sender<()>>),
    Stop,
}
