//! What clients' feed-kept caches report (`POST /v1/cache-reports`), and
//! the event that carries it to the `cache_reads` table.

use serde::{Deserialize, Serialize};

/// The body of `POST /v1/cache-reports`: what a client's feed-kept cache
/// (`parallax_core::cache::FeedCache`) did in a window, for the region's
/// `cache_reads` table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheReport {
    /// The client's name.
    pub client: String,
    /// Where the client is (a router location, or free text).
    pub location: String,
    /// How long the window lasted (ms).
    pub window_ms: u64,
    /// Reads asked of the cache.
    pub reads: u64,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to the region and filled an entry.
    pub misses: u64,
    /// Reads sent to the region because the feed was not current.
    pub bypassed: u64,
    /// Entries dropped because the feed delivered a newer version.
    pub invalidations: u64,
    /// Cache reads settled in the window (the feed passed them).
    pub settled: u64,
    /// Of those, reads that served an older version than the region held.
    pub stale_hits: u64,
    /// Median staleness of the settled reads (ms; a fresh read counts 0).
    #[serde(default)]
    pub staleness_p50_ms: Option<f64>,
    /// 99th percentile staleness (ms).
    #[serde(default)]
    pub staleness_p99_ms: Option<f64>,
    /// Largest staleness (ms).
    #[serde(default)]
    pub staleness_max_ms: Option<f64>,
    /// How far behind the region's clock the feed's last word was (ms).
    #[serde(default)]
    pub feed_lag_ms: Option<u64>,
}

/// What a client's feed-kept read cache did in a window, as it reported
/// it to its region (`POST /v1/cache-reports`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CacheEvent {
    /// When the region took the report (µs since epoch, UTC).
    pub ts_us: u64,
    /// Region reported to (whose feed keeps the cache).
    pub region: String,
    /// The report as the client sent it.
    pub report: CacheReport,
}
