//! The latency and errors page.

use super::layout::{Cell, Section, Table, chart, section};
use crate::charts::Mark;
use crate::dash::Latency;
use crate::filters::Filters;

/// The latency page's sections.
pub fn latency(d: &Latency, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let mut t = Table::new(
        &[
            "Region", "Requests", "p50 ms", "p95 ms", "p99 ms", "5xx %", "4xx %",
        ],
        "No requests in this range.",
    );
    for r in &d.regions {
        t.rows.push(vec![
            Cell::t(&r.region),
            Cell::i(r.requests),
            Cell::n(r.p50_ms),
            Cell::n(r.p95_ms),
            Cell::n(r.p99_ms),
            Cell::n(r.error_pct),
            Cell::n(r.client_error_pct),
        ]);
    }
    let mut table = section(
        "regions",
        "Per region",
        "Latency is measured in the region that answered, from request to response.",
    );
    table.table = Some(t);
    let mut p99 = section("p99", "p99 latency over time (ms)", "");
    p99.svg = Some(chart(&d.p99_series, f, marks, " ms"));
    let mut err = section("errors", "5xx share over time (%)", "");
    err.svg = Some(chart(&d.error_series, f, marks, "%"));
    vec![table, p99, err]
}
