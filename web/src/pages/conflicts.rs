//! The conflicts page's figures (the reconciliation queue is drawn by the template).

use super::layout::{Cell, Section, Table, chart, section};
use crate::charts::Mark;
use crate::dash::Conflicts;
use crate::filters::Filters;

/// The conflicts page's sections (the queue is separate).
pub fn conflicts(d: &Conflicts, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let mut rate = section(
        "rate",
        &format!("Conflicts per {} s by class", f.step_s),
        "",
    );
    rate.svg = Some(chart(&d.rate_series, f, marks, ""));
    let mut counts = section(
        "counts",
        "By class and region",
        "Outcomes: merged (CRDT or field merge), lww (a loser was overwritten; the conflict log keeps it), queued (manual: siblings kept), resolved (a queued conflict was reconciled).",
    );
    let mut t = Table::new(
        &["Class", "Region", "Total", "Per minute", "Outcomes"],
        "No conflicts in this range.",
    );
    for c in &d.counts {
        let outcomes: Vec<String> = c.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        t.rows.push(vec![
            Cell::t(&c.class),
            Cell::t(&c.region),
            Cell::i(c.total),
            Cell::n(c.per_min),
            Cell::t(outcomes.join(", ")),
        ]);
    }
    counts.table = Some(t);
    let mut res = section(
        "resolution",
        "Resolution latency (ms)",
        "Time from the concurrent write to the conflict's resolution: the merge on arrival, or the manual resolve.",
    );
    let mut t = Table::new(
        &["Class", "Conflicts", "p50", "p95", "p99"],
        "No resolved conflicts in this range.",
    );
    for r in &d.resolution {
        t.rows.push(vec![
            Cell::t(&r.class),
            Cell::i(r.count),
            Cell::n(r.p50_ms),
            Cell::n(r.p95_ms),
            Cell::n(r.p99_ms),
        ]);
    }
    res.table = Some(t);
    vec![rate, counts, res]
}
