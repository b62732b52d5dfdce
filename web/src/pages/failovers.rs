//! The failovers page: the timeline and reroute times.

use super::layout::{Cell, Section, Table, section};
use crate::charts;
use crate::dash::Failovers;
use crate::time;

/// The failovers page's sections.
pub fn failovers(d: &Failovers) -> Vec<Section> {
    let mut s = section(
        "timeline",
        "Failovers and ownership moves",
        &format!(
            "Longest detection: {} ms · longest reroute: {} ms (measured by the traffic router; ownership moves made by hand carry none).",
            d.max_detected_ms.map_or("–".into(), |v| v.to_string()),
            d.max_rerouted_ms.map_or("–".into(), |v| v.to_string())
        ),
    );
    let mut t = Table::new(
        &[
            "When",
            "Recorded by",
            "Event",
            "Detected after ms",
            "Rerouted after ms",
        ],
        "No failovers in this range.",
    );
    for e in &d.events {
        let ms = |v: Option<i64>| v.map_or_else(|| Cell::t("–"), Cell::i);
        t.rows.push(vec![
            Cell::t(&e.ts),
            Cell::t(&e.region),
            Cell::t(&e.event),
            ms(e.detected_ms),
            ms(e.rerouted_ms),
        ]);
    }
    s.table = Some(t);
    let mut bars = section("durations", "Reroute time per failover (ms)", "");
    bars.svg = Some(charts::bars(
        &d.events
            .iter()
            .filter_map(|e| {
                e.rerouted_ms
                    .map(|v| (format!("{} {}", time::to_second(&e.ts), e.region), v as f64))
            })
            .collect::<Vec<_>>(),
        " ms",
    ));
    vec![s, bars]
}
