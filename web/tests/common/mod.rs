//! What the web tests share: a collector writing fixture telemetry.

#![allow(dead_code, reason = "each test file uses part of the fixtures")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use parallax_collector::{Collector, CollectorOptions};
use parallax_core::clock::ManualClock;
use parallax_core::config::CollectorConfig;

/// A collector for `region` writing under `<dir>/tables`, its clock at
/// `now_us` (events carry their own timestamps).
pub(crate) fn collector(dir: &Path, region: &str, now_us: u64) -> Collector {
    Collector::new(
        CollectorOptions {
            root: dir.join("tables"),
            bucket: None,
            region: region.into(),
            config: CollectorConfig::default(),
            probe_urls: BTreeMap::new(),
            secrets: parallax_core::secrets::SecretCell::tokens(&[]),
            bounds: parallax_collector::rollup::Bounds::default(),
            clock: Arc::new(ManualClock::new(now_us / 1_000)),
            links: None,
            tls: Default::default(),
        },
        None,
    )
    .unwrap()
}

/// A test whose tool is missing skips loudly on a developer's machine and
/// fails where `PARALLAX_REQUIRE_TOOLS=1` (`.ci/run` sets it), so a CI run
/// without the tool cannot pass by skipping.
pub(crate) fn missing_tool(what: &str) {
    if std::env::var("PARALLAX_REQUIRE_TOOLS").is_ok_and(|v| v == "1") {
        panic!("{what}; PARALLAX_REQUIRE_TOOLS=1 makes a missing tool a failure");
    }
    eprintln!("SKIPPED: {what}");
}
