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
//! is reported as [`telemetry`] events.
//!
//! - [`config`]: the cluster's TOML file.
//! - [`clock`]: the injected wall clock and the hybrid logical clock.
//! - [`version`]: version vectors.
//! - [`entity`]: entities and their conflict policies (pure).
//! - [`routing`]: ownership and rollout stages (pure).
//! - [`store`]: the embedded redb store.
//! - `wal`: the write-ahead log, which is also the replication log.
//! - `writer`: the single writer with group commit and checkpoints.
//! - `replication`: shipping the log to peers and applying theirs, as
//!   state machines without I/O (the shipper's window, heartbeats and
//!   backoff; the receiver's checks) driven by thin loops; watermarks, lag.
//! - `command`: what the writer is asked to do, apart from the writer.
//! - [`worker`]: background loops with a name, a status and one stop signal.
//! - [`node`]: a region node, a facade whose methods live by concern:
//!   writes, reads, ownership, peer requests, anti-entropy.
//! - [`transport`]: region-to-region calls (HTTP, or in-process with faults).
//! - [`merkle`]: Merkle trees over a class's entities (pure).
//! - [`sync`]: comparing two regions' trees; anti-entropy.
//! - [`api`]: the HTTP API, and the bodies and answers of its routes.
//! - [`client`]: the typed client of that API (CLI, web app, auditor).

pub mod api;
pub mod client;
pub mod clock;
mod command;
pub mod config;
pub mod entity;
pub mod error;
pub mod merkle;
pub mod node;
pub mod protocol;
mod replication;
pub mod routing;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod transport;
pub mod version;
mod wal;
pub mod web_config;
pub mod worker;
mod writer;

pub use client::{ClientError, ReadOptions, RegionClient, WriteOptions};
pub use command::Fault;
pub use error::{ApiError, Error, Result};
pub use node::{Node, NodeOptions, NodeStats, ReadRequest, WriteRequest, WriterMode};
pub use replication::{AntiEntropyStats, PeerStats, ReplicationStats};
