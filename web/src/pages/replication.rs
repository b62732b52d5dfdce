//! The replication page: the lag matrix, region pairs, lag and backlog over time.

use super::layout::{Cell, Section, Table, chart, lag_heatmap, opt, section};
use crate::charts::Mark;
use crate::dash::Replication;
use crate::filters::Filters;

/// The replication page's sections.
pub fn replication(d: &Replication, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let mut m = section(
        "matrix",
        "Lag p99 (ms) by region pair",
        &format!(
            "Rows are where writes are made, columns where they are applied. Lag is sampled every heartbeat interval whether or not anything arrived: the age of the newest write or heartbeat the destination has applied from the source, so a frozen source or a cut link shows as lag growing second by second.{}",
            if f.classes.is_empty() {
                ""
            } else {
                " The class filter does not apply here: a replication batch carries writes of every class."
            }
        ),
    );
    m.svg = Some(lag_heatmap(&d.lag));
    let mut pairs = section("pairs", "Region pairs", "");
    let mut t = Table::new(
        &[
            "Source",
            "Destination",
            "Batches",
            "p50 ms",
            "p99 ms",
            "max ms",
            "Backlog ops",
            "Backlog bytes",
            "Drain ops/s",
            "Drained in, s",
            "Applied ops",
        ],
        "No replication in this range.",
    );
    for p in &d.pairs {
        t.rows.push(vec![
            Cell::t(&p.src),
            Cell::t(&p.dst),
            Cell::i(p.batches),
            Cell::n(p.p50_ms),
            Cell::n(p.p99_ms),
            Cell::n(p.max_ms),
            Cell::i(p.backlog_ops),
            Cell::i(p.backlog_bytes),
            opt(p.drain_ops_per_s.map(|v| v as f64)),
            opt(p.eta_ms.map(|ms| ms as f64 / 1_000.0)),
            Cell::i(p.applied_ops),
        ]);
    }
    pairs.table = Some(t);
    let mut lag = section("lag-over-time", "Lag p99 over time (ms)", "");
    lag.svg = Some(chart(&d.lag_series, f, marks, " ms"));
    let mut backlog = section(
        "backlog",
        "Backlog over time (operations not yet applied)",
        "",
    );
    backlog.svg = Some(chart(&d.backlog_series, f, marks, ""));
    let mut caches = section(
        "caches",
        "Feed-kept caches",
        "Client caches kept fresh by a region's change feed, as they report their reads. A read from memory is stale when the region had already applied a newer version when it was served; the feed says when, so each read is settled fresh or stale by how long. Bypassed reads went to the region because the feed was not current.",
    );
    let mut t = Table::new(
        &[
            "Region",
            "Client",
            "Location",
            "Reads",
            "Hit %",
            "Bypassed",
            "Stale reads",
            "Staleness p99 ms",
            "max ms",
            "Feed lag ms",
        ],
        "No cache reports in this range.",
    );
    for c in &d.caches {
        t.rows.push(vec![
            Cell::t(&c.region),
            Cell::t(&c.client),
            Cell::t(&c.location),
            Cell::i(c.reads),
            opt((c.reads > 0).then(|| 100.0 * c.hits as f64 / c.reads as f64)),
            Cell::i(c.bypassed),
            Cell::i(c.stale_hits),
            opt(c.staleness_p99_ms),
            opt(c.staleness_max_ms),
            opt(c.feed_lag_ms.map(|v| v as f64)),
        ]);
    }
    caches.table = Some(t);
    let mut staleness = section(
        "staleness",
        "Cache read staleness p99 over time (ms)",
        "The worst p99 any client's cache of the region reported in each interval.",
    );
    staleness.svg = Some(chart(&d.staleness_series, f, marks, " ms"));
    vec![m, pairs, lag, backlog, caches, staleness]
}
