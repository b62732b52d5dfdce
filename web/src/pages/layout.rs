//! What every page is made of: the frame ([`Chrome`]), sections of charts
//! and tables, the reconciliation queue, the SQL console and admin forms,
//! all fed to the one template (`templates/page.html`).

use askama::Template;
use serde::Serialize;

use crate::charts::{self, Mark, Series, num};
use crate::dash::LagMatrix;
use crate::filters::{Filters, RANGES};
use crate::time;

/// One table cell.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    /// The text shown.
    pub text: String,
    /// CSS class (`num` for figures, a state name for states).
    pub class: String,
}

impl Cell {
    /// Text.
    pub fn t(text: impl Into<String>) -> Cell {
        Cell {
            text: text.into(),
            class: String::new(),
        }
    }
    /// A figure, right-aligned.
    pub fn n(v: f64) -> Cell {
        Cell {
            text: num(v),
            class: "num".into(),
        }
    }
    /// An integer, right-aligned.
    pub fn i(v: i64) -> Cell {
        Cell {
            text: v.to_string(),
            class: "num".into(),
        }
    }
    /// A state, coloured by its name.
    pub fn state(s: &str) -> Cell {
        Cell {
            text: s.to_owned(),
            class: s.replace(' ', "_"),
        }
    }
}

/// A table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    /// Column headings.
    pub headers: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<Cell>>,
    /// What to say when there are no rows.
    pub empty: String,
}

impl Table {
    pub(super) fn new(headers: &[&str], empty: &str) -> Table {
        Table {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
            empty: empty.to_owned(),
        }
    }
}

/// A heading with a chart and/or a table.
#[derive(Clone, Debug, Default)]
pub struct Section {
    /// Anchor id.
    pub id: String,
    /// Heading.
    pub title: String,
    /// A sentence under the heading.
    pub note: String,
    /// Inline SVG.
    pub svg: Option<String>,
    /// A table.
    pub table: Option<Table>,
}

pub(super) fn section(id: &str, title: &str, note: &str) -> Section {
    Section {
        id: id.into(),
        title: title.into(),
        note: note.into(),
        ..Section::default()
    }
}

/// The live reconciliation queue, merged over regions.
#[derive(Clone, Debug, Serialize)]
pub struct Queue {
    /// Conflicted entities.
    pub items: Vec<QueueItem>,
    /// Regions that could not be asked.
    pub errors: Vec<String>,
}

/// One conflicted entity.
#[derive(Clone, Debug, Serialize)]
pub struct QueueItem {
    /// Class.
    pub class: String,
    /// Key.
    pub key: String,
    /// Regions whose queue holds it.
    pub regions: Vec<String>,
    /// When it was first queued (`YYYY-MM-DD HH:MM:SS`, UTC: [`crate::time::human`]).
    pub first_seen: String,
    /// The siblings' values as JSON text (`deleted` for a tombstone).
    pub siblings: Vec<String>,
}

/// The SQL console's state.
#[derive(Clone, Debug)]
pub struct SqlConsole {
    /// The query text.
    pub text: String,
    /// Table names.
    pub tables: String,
    /// The limits, in words.
    pub limits: String,
    /// The answer, if a query ran.
    pub result: Option<SqlTable>,
    /// Example queries (label, link).
    pub examples: Vec<(String, String)>,
}

/// A query answer as a table.
#[derive(Clone, Debug)]
pub struct SqlTable {
    /// "N rows in X ms".
    pub meta: String,
    /// Columns.
    pub headers: Vec<String>,
    /// Rows.
    pub rows: Vec<Vec<Cell>>,
}

/// A form that performs an admin action.
#[derive(Clone, Debug)]
pub struct ActionForm {
    /// Anchor id.
    pub id: String,
    /// Heading.
    pub title: String,
    /// What it does.
    pub note: String,
    /// Where it posts.
    pub action: String,
    /// Hidden fields.
    pub hidden: Vec<(String, String)>,
    /// Selects: (name, label, choices).
    pub selects: Vec<(String, String, Vec<String>)>,
    /// Text inputs: (name, label, placeholder).
    pub inputs: Vec<(String, String, String)>,
    /// The button.
    pub button: String,
}

/// What every page shares.
#[derive(Clone, Debug)]
pub struct Chrome {
    /// Page title.
    pub title: String,
    /// The page's path.
    pub path: String,
    /// Navigation (path, label, whether it is this page).
    pub nav: Vec<(&'static str, &'static str, bool)>,
    /// The filters in force.
    pub filters: Filters,
    /// Whether to show the filter bar.
    pub filter_bar: bool,
    /// The filters as a query string.
    pub qs: String,
    /// Range names for the select, and which is chosen.
    pub ranges: Vec<(&'static str, bool)>,
    /// `from` for the datetime-local field.
    pub from_local: String,
    /// `to` for the datetime-local field.
    pub to_local: String,
    /// The range in words.
    pub span: String,
    /// All regions, and whether the filter picks exactly that one.
    pub regions: Vec<(String, bool)>,
    /// All classes, likewise.
    pub classes: Vec<(String, bool)>,
    /// Link to the JSON twin.
    pub json_url: String,
    /// A success message.
    pub flash: Option<String>,
    /// An error message.
    pub error: Option<String>,
    /// When the page was made.
    pub generated: String,
    /// Auto-refresh period (s), 0 for none.
    pub refresh_s: u32,
}

/// The navigation.
pub const NAV: [(&str, &str); 10] = [
    ("/", "Overview"),
    ("/replication", "Replication"),
    ("/conflicts", "Conflicts"),
    ("/divergence", "Divergence"),
    ("/latency", "Latency & errors"),
    ("/failovers", "Failovers"),
    ("/slos", "SLOs"),
    ("/cost", "Cost"),
    ("/alerts", "Alerts"),
    ("/sql", "SQL"),
];

impl Chrome {
    /// The shared part of a page.
    pub fn new(
        title: &str,
        path: &str,
        filters: Filters,
        regions: Vec<String>,
        classes: Vec<String>,
        now_us: i64,
        refresh_s: u32,
    ) -> Chrome {
        let qs = filters.query_string();
        let api = if path == "/" { "/overview" } else { path };
        Chrome {
            title: title.into(),
            path: path.into(),
            nav: NAV.iter().map(|&(p, l)| (p, l, p == path)).collect(),
            json_url: format!("/api/v1{api}?{qs}"),
            qs,
            ranges: RANGES
                .iter()
                .map(|r| r.0)
                .chain(std::iter::once("custom"))
                .map(|r| (r, r == filters.range))
                .collect(),
            from_local: time::minute(filters.from_us),
            to_local: time::minute(filters.to_us),
            span: format!(
                "{} → {} UTC",
                time::human(filters.from_us),
                time::human(filters.to_us)
            ),
            regions: regions
                .into_iter()
                .map(|r| {
                    let on = filters.regions == [r.as_str()];
                    (r, on)
                })
                .collect(),
            classes: classes
                .into_iter()
                .map(|c| {
                    let on = filters.classes == [c.as_str()];
                    (c, on)
                })
                .collect(),
            filters,
            filter_bar: true,
            flash: None,
            error: None,
            generated: time::human(now_us),
            refresh_s,
        }
    }
}

/// The page template.
#[derive(Debug, Template)]
#[template(path = "page.html")]
pub struct Page {
    /// Shared parts.
    pub c: Chrome,
    /// Sections.
    pub sections: Vec<Section>,
    /// The reconciliation queue (conflicts page).
    pub queue: Option<Queue>,
    /// The SQL console (SQL page).
    pub sql: Option<SqlConsole>,
    /// Admin action forms.
    pub forms: Vec<ActionForm>,
}

impl Page {
    /// A page of sections.
    pub fn new(c: Chrome, sections: Vec<Section>) -> Page {
        Page {
            c,
            sections,
            queue: None,
            sql: None,
            forms: Vec::new(),
        }
    }
}

pub(super) fn lag_heatmap(m: &LagMatrix) -> String {
    charts::heatmap(&m.regions, &m.regions, &m.p99_ms, " ms", 1_000.0)
}

pub(super) fn chart(series: &[Series], f: &Filters, marks: &[Mark], unit: &str) -> String {
    let (from_s, to_s) = (f.from_us / 1_000_000, f.to_us / 1_000_000);
    charts::time_chart(series, marks, from_s, to_s, unit)
}

pub(super) fn opt(v: Option<f64>) -> Cell {
    v.map_or_else(|| Cell::t("–"), Cell::n)
}
