//! The failovers page: each failover a router ran with its measured times,
//! and the ownership moves.

use super::layout::{Cell, Section, Table, section};
use crate::charts;
use crate::dash::Failovers;
use crate::time;

/// The failovers page's sections.
pub fn failovers(d: &Failovers) -> Vec<Section> {
    let ms = |v: Option<i64>| v.map_or_else(|| Cell::t("–"), Cell::i);
    let text = |v: &Option<String>| Cell::t(v.as_deref().unwrap_or("–"));
    let mut s = section(
        "timeline",
        "Failovers",
        &format!(
            "Each failover a router ran, as it measured it, in ms from its first failed check \
             (the fault came between the last good check and that one). Longest detection: {} ms · \
             longest reroute: {} ms · longest until keys moved: {} ms.",
            d.max_detected_ms.map_or("–".into(), |v| v.to_string()),
            d.max_rerouted_ms.map_or("–".into(), |v| v.to_string()),
            d.max_moved_ms.map_or("–".into(), |v| v.to_string())
        ),
    );
    let mut t = Table::new(
        &[
            "Last step",
            "Router",
            "Region",
            "Phase",
            "Last good check before",
            "Declared down",
            "Rerouted",
            "Keys moved",
            "To (epoch)",
            "Moved by",
            "Back up",
            "Handed back",
        ],
        "No failovers in this range.",
    );
    for f in &d.failovers {
        let to = match (&f.delegate, f.epoch) {
            (Some(d), Some(e)) => format!("{d} ({e})"),
            _ => "–".to_owned(),
        };
        t.rows.push(vec![
            Cell::t(&f.ts),
            Cell::t(&f.router),
            Cell::t(&f.failed),
            Cell::t(&f.phase),
            ms(f.last_ok_before_ms),
            ms(f.detected_ms),
            ms(f.rerouted_ms),
            ms(f.moved_ms),
            Cell::t(&to),
            text(&f.moved_by),
            ms(f.back_ms),
            ms(f.handed_back_ms),
        ]);
    }
    s.table = Some(t);
    let mut bars = section("durations", "Reroute time per failover (ms)", "");
    bars.svg = Some(charts::bars(
        &d.failovers
            .iter()
            .filter_map(|f| {
                f.rerouted_ms.map(|v| {
                    (
                        format!("{} {} from {}", time::to_second(&f.ts), f.failed, f.router),
                        v as f64,
                    )
                })
            })
            .collect::<Vec<_>>(),
        " ms",
    ));
    let mut moves = section(
        "moves",
        "Ownership moves",
        "Moves as the regions recorded them: by routers (above) and by hand (`parallax failover`).",
    );
    let mut m = Table::new(
        &["When", "Recorded by", "Event"],
        "No ownership moves in this range.",
    );
    for e in &d.events {
        m.rows
            .push(vec![Cell::t(&e.ts), Cell::t(&e.region), Cell::t(&e.event)]);
    }
    moves.table = Some(m);
    let mut stale = section(
        "misdirected",
        "Writes sent to a region that could not take them",
        "A write reaches a region that does not own its key (or, in an early rollout stage, is not the \
         primary) when its client's route is stale, a router answer cached from before a failover, or the \
         client does not follow the router. The region passes it to the owner, or refuses it with 421; the \
         ownership epoch fences writes made under an older one.",
    );
    let mut t = Table::new(
        &[
            "Reached",
            "Class",
            "Client location",
            "Forwarded",
            "Refused (421)",
        ],
        "Every write reached a region that could take it.",
    );
    for m in &d.misdirected {
        t.rows.push(vec![
            Cell::t(&m.region),
            Cell::t(&m.class),
            Cell::t(if m.client_geo.is_empty() {
                "–"
            } else {
                &m.client_geo
            }),
            Cell::i(m.forwarded),
            Cell::i(m.refused),
        ]);
    }
    stale.table = Some(t);
    vec![s, bars, moves, stale]
}
