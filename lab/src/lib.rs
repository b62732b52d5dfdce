//! What drives a parallax cluster rather than being part of it.
//!
//! The `parallax` binary only parses arguments; everything that starts
//! regions, puts load on them, breaks them on purpose or measures them
//! lives here, as a library, so tests, drills and benchmarks reuse one
//! implementation:
//!
//! - [`process`]: a region (node, HTTP API, collector) and the web app,
//!   started inside this process;
//! - [`tls`]: their listeners, plain or TLS, and mutual TLS between regions;
//! - [`load`]: a write load over every conflict policy;
//! - [`drill`]: drills played on a running cluster;
//! - [`caches`]: the demo's application caches, kept by the change feed;
//! - [`netns`]: hosts of the project's own (network namespaces on a
//!   bridge) whose links can be cut, for drills on real networks;
//! - [`chaos`]: `parallax demo --chaos`, failures played on the demo with verdicts;
//! - [`demo`]: `parallax demo`, three regions with WAN latency, load,
//!   drills and a summary;
//! - [`bench`]: `parallax bench`, benchmarks that report ratios against a
//!   baseline measured in the same run.

pub mod bench;
pub mod caches;
pub mod chaos;
pub mod demo;
pub mod drill;
pub mod hosts;
pub mod load;
pub mod netns;
pub mod process;
pub mod tls;
