//! What the web tests share: a collector writing fixture telemetry.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parallax_collector::{Collector, CollectorOptions};
use parallax_replicator::clock::ManualClock;
use parallax_replicator::config::CollectorConfig;

/// A collector for `region` writing under `<dir>/tables`, its clock at
/// `now_us` (events carry their own timestamps).
pub(crate) fn collector(dir: &Path, region: &str, now_us: u64) -> Collector {
    Collector::new(
        CollectorOptions {
            root: dir.join("tables"),
            region: region.into(),
            config: CollectorConfig::default(),
            probe_urls: BTreeMap::new(),
            tokens: vec![],
            clock: Arc::new(ManualClock::new(now_us / 1_000)),
        },
        None,
    )
    .unwrap()
}
