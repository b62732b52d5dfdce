//! What every parallax process shares, and nothing that needs a store.
//!
//! A region node (`parallax-replicator`) builds on this crate, and so do the
//! processes that only talk to regions: the auditor, the collector, the web
//! app and the router. Reading the config, decoding a region's answers or
//! calling its API never compiles the store, the write-ahead log or the
//! replication machinery.
//!
//! - [`config`]: the cluster's TOML file ([`web_config`]: its `[web]` part).
//! - [`clock`]: the injected wall clock and the hybrid logical clock.
//! - [`version`]: version vectors.
//! - [`entity`]: entities and their conflict policies (pure).
//! - [`routing`]: ownership and rollout stages (pure).
//! - [`rollout`]: rollout stages moved at runtime, and the rule for a move.
//! - [`merkle`]: Merkle trees over a class's entities (pure).
//! - [`histogram`]: the log-bucketed histogram behind percentiles and rollups.
//! - [`sync`]: comparing two regions' trees; anti-entropy.
//! - [`protocol`]: region-to-region messages, the replication log entry.
//! - [`transport`]: region-to-region calls (HTTP, or in-process with faults).
//! - [`links`]: links cut by a drill inside one process (`demo --chaos`).
//! - [`api`]: the bodies and answers of the region API's routes.
//! - [`stats`]: what a region's `/v1/stats` serves.
//! - [`telemetry`]: the events every part reports, and their counters.
//! - [`worker`]: background loops with a name, a status and one stop signal.
//! - [`client`]: the typed client of the region API (CLI, web app, auditor,
//!   router).
//! - [`cache`]: a read cache kept fresh by a region's change feed.
//! - [`routed`]: a client of the whole cluster that follows a router.
//! - [`error`]: the error type and its wire form.

pub mod api;
pub mod cache;
pub mod client;
pub mod clock;
pub mod config;
pub mod entity;
pub mod error;
pub mod histogram;
pub mod links;
pub mod merkle;
pub mod protocol;
pub mod rollout;
pub mod routed;
pub mod routing;
pub mod secrets;
pub mod stats;
pub mod sync;
pub mod telemetry;
pub mod traffic;
pub mod transport;
pub mod version;
pub mod web_config;
pub mod worker;

pub use client::{ClientError, ReadOptions, RegionClient, WriteOptions};
pub use error::{ApiError, Error, Result};
pub use routed::RoutedClient;
pub use stats::{AntiEntropyStats, NodeStats, PeerStats, ReplicationStats};
