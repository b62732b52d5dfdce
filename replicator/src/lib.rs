//! The parallax region node.
//!
//! A region takes reads and writes over HTTP, stores each write and its
//! replication-log entry in one transaction, and ships its log to every
//! other region, which applies it through the class's conflict policy.
//! Everything that happens is reported as [`telemetry`] events.
//!
//! - [`config`]: the cluster's TOML file.
//! - [`clock`]: the injected wall clock and the hybrid logical clock.
//! - [`version`]: version vectors.
//! - [`entity`]: entities and their conflict policies (pure).
//! - [`routing`]: ownership and rollout stages (pure).
//! - [`store`]: the embedded redb store.
//! - [`node`]: a region node: writes, reads, replication, consistency.
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
pub use error::{ApiError, Error, Result};
pub use node::{Node, NodeOptions, NodeStats, ReadRequest, WriteRequest, WriterMode};
pub use replication::{AntiEntropyStats, PeerStats, ReplicationStats};
pub use command::Fault;
