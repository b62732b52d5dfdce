//! The overview page: region health, lag heatmap, throughput.

use super::layout::{Cell, Section, Table, chart, lag_heatmap, opt, section};
use crate::charts::{self, Mark};
use crate::dash::Overview;
use crate::filters::Filters;

/// The overview's sections.
pub fn overview(d: &Overview, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let mut health = section(
        "health",
        "Regions",
        "Down: it does not answer the web server now, or no probe reached it in its last 30 s of probes. Degraded: not ready now, over 1% 5xx, lag into it over 5 s, or under 99% of probes answered. Now: its /readyz asked as this page was drawn.",
    );
    let mut t = Table::new(
        &[
            "Region",
            "Status",
            "Now",
            "Requests",
            "5xx %",
            "p99 ms",
            "Worst lag in, ms",
            "Probes ok %",
            "Conflicts",
        ],
        "No region selected.",
    );
    for r in &d.regions {
        t.rows.push(vec![
            Cell::t(&r.region),
            Cell::state(&r.status),
            Cell::t(&match r.now_ms {
                Some(ms) if r.now != "unreachable" => format!("{} ({ms:.0} ms)", r.now),
                _ => r.now.clone(),
            }),
            Cell::i(r.requests),
            Cell::n(r.error_pct),
            opt(r.p99_ms),
            opt(r.max_lag_in_ms),
            opt(r.probes_ok_pct),
            Cell::i(r.conflicts),
        ]);
    }
    health.table = Some(t);
    let mut facts = section("facts", "At a glance", "");
    let mut t = Table::new(&["", ""], "");
    t.rows.push(vec![
        Cell::t("Divergent entities in the latest audit of each class"),
        Cell::state(if d.divergent_now > 0 {
            "divergent"
        } else {
            "ok"
        }),
    ]);
    t.rows.last_mut().expect("just pushed")[1].text = d.divergent_now.to_string();
    t.rows.push(vec![
        Cell::t("Failovers and ownership moves"),
        Cell::i(d.failovers),
    ]);
    facts.table = Some(t);
    let mut lag = section(
        "lag",
        "Replication lag p99 (ms), source → destination",
        "Green is fresh, red is a second or more.",
    );
    lag.svg = Some(lag_heatmap(&d.lag));
    let mut reach = section(
        "reachability",
        "Reachability: probes failed (%), vantage → target",
        &format!(
            "Every region probes every region; the last {} s of the range. A cut link between two regions \
             shows as their two cells red while the rest of their rows and columns stay green.",
            d.reachability.window_s
        ),
    );
    let r = &d.reachability;
    reach.svg = Some(charts::heatmap(
        &r.regions,
        &r.regions,
        &r.failed_pct,
        "%",
        100.0,
    ));
    let mut tp = section("throughput", "Requests per second by region", "");
    tp.svg = Some(chart(&d.throughput, f, marks, "/s"));
    vec![health, facts, lag, reach, tp]
}
