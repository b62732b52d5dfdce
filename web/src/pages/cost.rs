//! The cost page: what crossed between regions, what it cost, the month
//! ahead, and what each class would cost under another ownership or stage.

use super::layout::{Cell, Section, Table, chart, section};
use crate::charts::{Mark, num};
use crate::dash::Cost;
use crate::filters::Filters;

/// Money: cents and above with two decimals, less with three significant
/// digits (a test cluster moves fractions of a cent).
fn money(v: f64, currency: &str) -> String {
    let figure = if v.abs() >= 0.01 || v == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.2e}")
    };
    format!("{figure} {currency}")
}

fn m(v: f64, currency: &str) -> Cell {
    Cell {
        text: money(v, currency),
        class: "num".into(),
    }
}

/// Bytes in SI units (clouds bill by the GB of 10⁹ bytes).
fn gb(bytes: f64) -> Cell {
    let (v, unit) = [(1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")]
        .into_iter()
        .find(|(size, _)| bytes.abs() >= *size)
        .map_or((bytes, "B"), |(size, unit)| (bytes / size, unit));
    Cell {
        text: format!("{} {unit}", num(v)),
        class: "num".into(),
    }
}

/// The cost page's sections.
pub fn cost(d: &Cost, f: &Filters, marks: &[Mark]) -> Vec<Section> {
    let cur = d.currency.as_str();
    let mut summary = section(
        "spend",
        "Spend",
        &format!(
            "Bytes between regions as the calling region counted them (request and answer \
             bodies), priced by [cost]; the month is 30 days at the rate of the {} s with \
             traffic reported in this range. Region hours are cost.region_hour × regions.",
            num(d.observed_s)
        ),
    );
    let mut t = Table::new(&["Figure", "Value"], "");
    for (label, cell) in [
        ("Transferred in range", gb(d.bytes as f64)),
        ("Transfer spend in range", m(d.spend, cur)),
        ("Transfer, projected month", m(d.month_transfer, cur)),
        ("Regions, month", m(d.month_regions, cur)),
        ("Total, projected month", m(d.month_total, cur)),
    ] {
        t.rows.push(vec![Cell::t(label), cell]);
    }
    summary.table = Some(t);

    let mut rate = section("rate", "Bytes per second by pair", "Source → destination.");
    rate.svg = Some(chart(&d.series, f, marks, " B/s"));

    let mut pairs = section(
        "pairs",
        "By region pair",
        "Egress of the source region: what its provider bills.",
    );
    let mut t = Table::new(
        &[
            "Source",
            "Destination",
            "Transferred",
            "Price per GB",
            "Spend",
            "Month",
        ],
        "No traffic between regions in this range.",
    );
    for p in &d.pairs {
        t.rows.push(vec![
            Cell::t(&p.src),
            Cell::t(&p.dst),
            gb(p.bytes as f64),
            m(p.gb_price, cur),
            m(p.spend, cur),
            m(p.month, cur),
        ]);
    }
    pairs.table = Some(t);

    let mut kinds = section(
        "kinds",
        "By kind of call",
        "replicate: log batches; heartbeat: empty batches; tree and repair: anti-entropy; \
         write and read: client requests passed on to another region; fetch: quorum and strong \
         reads; silent: lease and failover questions; audit: the auditor's reads of the regions \
         (priced at cost.gb).",
    );
    let mut t = Table::new(
        &["Kind", "Calls", "Transferred", "Share", "Spend"],
        "No traffic in this range.",
    );
    for k in &d.kinds {
        let share = if d.bytes > 0 {
            100.0 * k.bytes as f64 / d.bytes as f64
        } else {
            0.0
        };
        t.rows.push(vec![
            Cell::t(&k.kind),
            Cell::i(k.calls),
            gb(k.bytes as f64),
            Cell::t(format!("{} %", num(share))),
            m(k.spend, cur),
        ]);
    }
    kinds.table = Some(t);

    let mut classes = section(
        "classes",
        "By class",
        "Every call's bytes split between the classes it carried; (none): heartbeats, lease and \
         watermark questions. Conflicts are the other price of taking writes everywhere; queued \
         ones wait for a person.",
    );
    let mut t = Table::new(
        &[
            "Class",
            "Stage",
            "Ownership",
            "Writes",
            "Passed on",
            "Reads",
            "Conflicts",
            "Queued",
            "Transferred",
            "Spend",
            "Month",
        ],
        "No traffic in this range.",
    );
    for c in &d.classes {
        t.rows.push(vec![
            Cell::t(&c.class),
            Cell::t(&c.stage),
            Cell::t(&c.ownership),
            Cell::i(c.writes),
            Cell::i(c.forwarded_writes),
            Cell::i(c.reads),
            Cell::i(c.conflicts),
            Cell::i(c.queued),
            gb(c.bytes as f64),
            m(c.spend, cur),
            m(c.month, cur),
        ]);
    }
    classes.table = Some(t);

    let mut what_if = section(
        "what-if",
        "What another ownership or stage would cost",
        "From each class's measured writes and reads by region: every write still reaches every \
         region by replication, so what changes is which requests are passed on to the region \
         that takes them. Hash ownership passes on (N−1)/N of writes; read-local passes on the \
         writes away from the primary (the class's, else the region taking most writes); \
         active-passive its reads too. Estimated: no request of the class was passed on in the \
         range, so one is sized from its replicated entries.",
    );
    let mut t = Table::new(
        &[
            "Class",
            "Change",
            "Transferred a month",
            "Spend a month",
            "Against now",
            "Basis",
        ],
        "No class carried traffic in this range.",
    );
    for c in &d.classes {
        for w in &c.what_if {
            let sign = if w.delta > 0.0 { "+" } else { "" };
            t.rows.push(vec![
                Cell::t(&c.class),
                Cell::t(&w.change),
                gb(w.month_bytes),
                m(w.month, cur),
                Cell {
                    text: format!("{sign}{}", money(w.delta, cur)),
                    class: "num".into(),
                },
                Cell::t(if w.estimated { "estimated" } else { "measured" }),
            ]);
        }
    }
    what_if.table = Some(t);
    vec![summary, rate, pairs, kinds, classes, what_if]
}

#[cfg(test)]
mod tests {
    use super::{gb, money};

    #[test]
    fn bytes_read_in_si_units() {
        assert_eq!(gb(60_000.0).text, "60 kB");
        assert_eq!(gb(66_060_000.0).text, "66.1 MB");
        assert_eq!(gb(2.5e9).text, "2.5 GB");
        assert_eq!(gb(12.0).text, "12 B");
    }

    #[test]
    fn money_keeps_cents_and_shows_fractions_of_one() {
        assert_eq!(money(12.345, "USD"), "12.35 USD");
        assert_eq!(money(0.0, "EUR"), "0.00 EUR");
        assert_eq!(money(0.000_123_4, "USD"), "1.23e-4 USD");
        assert_eq!(money(-0.5, "USD"), "-0.50 USD");
    }
}
