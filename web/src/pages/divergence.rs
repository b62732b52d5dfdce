//! The divergence page: divergent keys over time, their latest state, audit runs.

use super::layout::{Cell, Section, Table, chart, section};
use crate::charts::Mark;
use crate::dash::Divergence;
use crate::filters::Filters;

/// The divergence page's sections.
pub fn divergence(d: &Divergence, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let mut s = section(
        "divergent-over-time",
        "Divergent entities found by audits, by class",
        "",
    );
    s.svg = Some(chart(&d.series, f, marks, ""));
    let mut keys = section(
        "keys",
        "Keys whose copies differed",
        "in_flight: replication was still delivering (the copies agree once it lands). divergent: the copies disagree with nothing in flight: a bug, lost data or a failed repair. repaired: an audit's repair wrote the good copy. cleared: a later audit of the class no longer found the key differing. Latest state per key.",
    );
    let mut t = Table::new(
        &[
            "Class",
            "Key",
            "State",
            "Reason",
            "Regions",
            "First seen",
            "Last seen",
            "Age ms",
        ],
        "No differing keys in this range.",
    );
    for k in &d.keys {
        t.rows.push(vec![
            Cell::t(&k.class),
            Cell::t(&k.key),
            Cell::state(&k.state),
            Cell::t(&k.reason),
            Cell::t(&k.regions),
            Cell::t(&k.first_seen),
            Cell::t(&k.last_seen),
            Cell::i(k.age_ms),
        ]);
    }
    keys.table = Some(t);
    let mut audits = section("audits", "Audit runs", "Newest first.");
    let mut t = Table::new(
        &[
            "Finished",
            "Audit",
            "Class",
            "Entities",
            "Differing",
            "In flight",
            "Divergent",
            "Duration ms",
        ],
        "No audits in this range. Run `parallax audit` or let the auditor's timer run.",
    );
    for a in &d.audits {
        t.rows.push(vec![
            Cell::t(&a.ts),
            Cell::t(&a.audit_id),
            Cell::t(&a.class),
            Cell::i(a.entities),
            Cell::i(a.differing),
            Cell::i(a.in_flight),
            Cell {
                text: a.divergent.to_string(),
                class: if a.divergent > 0 {
                    "num divergent"
                } else {
                    "num"
                }
                .into(),
            },
            Cell::i(a.duration_ms),
        ]);
    }
    audits.table = Some(t);
    vec![s, keys, audits]
}
