//! The parallax region node.
//!
//! A region takes reads and writes over HTTP. One writer applies them in
//! groups: a group's local writes are appended to the write-ahead log
//! ([`wal`], files of its own beside the store) and synced before any is
//! acknowledged, and the entities change in one redb transaction committed
//! without a sync; a periodic checkpoint syncs the store and records the
//! last log sequence it holds, and after a crash the log entries past it are
//! applied again. That log is the replication log: each region ships it to
//! every other region, which applies it through the class's conflict policy,
//! and removes it once every peer holds it durably. Everything that happens
//! is reported as telemetry events (`parallax_core::telemetry`).
//!
//! The config, clocks, entities and their policies, Merkle trees, the wire
//! protocol, telemetry events, workers and the client live in
//! `parallax-core`, which the processes that only talk to regions use
//! without this crate.
//!
//! - [`store`]: the embedded redb store.
//! - `wal`: the write-ahead log, which is also the replication log.
//! - `writer`: the single writer with group commit and checkpoints.
//! - `replication`: shipping the log to peers and applying theirs, as
//!   state machines without I/O (the shipper's window, heartbeats and
//!   backoff; the receiver's checks) driven by thin loops; watermarks, lag.
//! - `command`: what the writer is asked to do, apart from the writer.
//! - [`node`]: a region node, a facade whose methods live by concern:
//!   writes, reads, ownership, peer requests, anti-entropy.
//! - [`api`]: the HTTP API.

pub mod api;
mod command;
pub mod node;
mod replication;
pub mod store;
mod wal;
mod writer;

pub use node::{Node, NodeOptions, ReadRequest, WriteRequest, WriterMode};
