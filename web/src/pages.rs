//! The HTML side: one askama template (`templates/page.html`) fed with
//! sections (heading, chart, table) built here from the same structs the
//! JSON twins serialise.

use askama::Template;
use serde::Serialize;

use crate::charts::{self, Series, num};
use crate::dash::{Conflicts, Divergence, Failovers, LagMatrix, Latency, Overview, Replication};
use crate::filters::{Filters, RANGES};

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
    fn new(headers: &[&str], empty: &str) -> Table {
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

fn section(id: &str, title: &str, note: &str) -> Section {
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
    /// When it was first queued (RFC 3339).
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
pub const NAV: [(&str, &str); 9] = [
    ("/", "Overview"),
    ("/replication", "Replication"),
    ("/conflicts", "Conflicts"),
    ("/divergence", "Divergence"),
    ("/latency", "Latency & errors"),
    ("/failovers", "Failovers"),
    ("/slos", "SLOs"),
    ("/alerts", "Alerts"),
    ("/sql", "SQL"),
];

/// `YYYY-MM-DDTHH:MM:SS` (UTC) of epoch µs.
pub fn local_time(us: i64) -> String {
    let s = us.div_euclid(1_000_000);
    let day = crate::filters::civil_from_days(s.div_euclid(86_400));
    let r = s.rem_euclid(86_400);
    format!("{day}T{:02}:{:02}:{:02}", r / 3600, r % 3600 / 60, r % 60)
}

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
            from_local: local_time(filters.from_us)[..16].to_owned(),
            to_local: local_time(filters.to_us)[..16].to_owned(),
            span: format!(
                "{} → {} UTC",
                local_time(filters.from_us).replace('T', " "),
                local_time(filters.to_us).replace('T', " ")
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
            generated: local_time(now_us).replace('T', " "),
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

fn lag_heatmap(m: &LagMatrix) -> String {
    charts::heatmap(&m.regions, &m.regions, &m.p99_ms, " ms", 1_000.0)
}

fn chart(series: &[Series], f: &Filters, unit: &str) -> String {
    charts::time_chart(series, f.from_us / 1_000_000, f.to_us / 1_000_000, unit)
}

fn opt(v: Option<f64>) -> Cell {
    v.map_or_else(|| Cell::t("–"), Cell::n)
}

/// The overview's sections.
pub fn overview(d: &Overview, f: &Filters) -> Vec<Section> {
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
    let mut tp = section("throughput", "Requests per second by region", "");
    tp.svg = Some(chart(&d.throughput, f, "/s"));
    vec![health, facts, lag, tp]
}

/// The replication page's sections.
pub fn replication(d: &Replication, f: &Filters) -> Vec<Section> {
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
            Cell::i(p.applied_ops),
        ]);
    }
    pairs.table = Some(t);
    let mut lag = section("lag-over-time", "Lag p99 over time (ms)", "");
    lag.svg = Some(chart(&d.lag_series, f, " ms"));
    let mut backlog = section(
        "backlog",
        "Backlog over time (operations not yet applied)",
        "",
    );
    backlog.svg = Some(chart(&d.backlog_series, f, ""));
    vec![m, pairs, lag, backlog]
}

/// The conflicts page's sections (the queue is separate).
pub fn conflicts(d: &Conflicts, f: &Filters) -> Vec<Section> {
    let mut rate = section(
        "rate",
        &format!("Conflicts per {} s by class", f.step_s),
        "",
    );
    rate.svg = Some(chart(&d.rate_series, f, ""));
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

/// The divergence page's sections.
pub fn divergence(d: &Divergence, f: &Filters) -> Vec<Section> {
    let mut s = section(
        "divergent-over-time",
        "Divergent entities found by audits, by class",
        "",
    );
    s.svg = Some(chart(&d.series, f, ""));
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

/// The latency page's sections.
pub fn latency(d: &Latency, f: &Filters) -> Vec<Section> {
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
    p99.svg = Some(chart(&d.p99_series, f, " ms"));
    let mut err = section("errors", "5xx share over time (%)", "");
    err.svg = Some(chart(&d.error_series, f, "%"));
    vec![table, p99, err]
}

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
                e.rerouted_ms.map(|v| {
                    (
                        format!("{} {}", &e.ts[..19.min(e.ts.len())], e.region),
                        v as f64,
                    )
                })
            })
            .collect::<Vec<_>>(),
        " ms",
    ));
    vec![s, bars]
}

/// The SLOs page's sections.
pub fn slos(d: &crate::slo::Slos) -> Vec<Section> {
    let mut s = section(
        "slos",
        "Service level objectives",
        "SLI and error budget over each SLO's window; burn rates over the SRE workbook's windows (scaled to the SLO's window). Page: 1 h and 5 m over 14.4x, or 6 h and 30 m over 6x. Ticket: 3 d and 6 h over 1x.",
    );
    let mut headers = vec![
        "SLO",
        "Kind",
        "Region",
        "Objective %",
        "Window d",
        "Events",
        "SLI %",
        "Budget left %",
    ];
    headers.extend(crate::slo::WINDOWS.iter().map(|w| w.0));
    headers.push("Alert");
    let mut t = Table::new(
        &headers,
        "No SLOs declared. Add [slos.<name>] to the config (see the README).",
    );
    for x in &d.slos {
        let mut row = vec![
            Cell::t(&x.name),
            Cell::t(&x.kind),
            Cell::t(&x.region),
            Cell::n(x.objective_pct),
            Cell::i(i64::from(x.window_days)),
            Cell::i(x.total),
            opt(x.sli_pct),
            match x.budget_remaining_pct {
                Some(b) => Cell {
                    text: num(b),
                    class: if b < 0.0 { "num firing" } else { "num" }.into(),
                },
                None => Cell::t("–"),
            },
        ];
        row.extend(x.burn_rates.iter().map(|b| opt(b.rate)));
        row.push(match &x.alerting {
            Some(a) => Cell {
                text: a.clone(),
                class: "firing".into(),
            },
            None => Cell::state("ok"),
        });
        t.rows.push(row);
    }
    s.table = Some(t);
    let mut budget = section("budget", "Error budget left (%)", "");
    budget.svg = Some(charts::bars(
        &d.slos
            .iter()
            .filter_map(|x| {
                x.budget_remaining_pct
                    .map(|b| (format!("{} {}", x.name, x.region), b.max(0.0)))
            })
            .collect::<Vec<_>>(),
        "%",
    ));
    vec![s, budget]
}

/// The alerts page's sections.
pub fn alerts(v: &crate::alerts::AlertsView) -> Vec<Section> {
    let labels = |l: &std::collections::BTreeMap<String, String>| {
        l.iter()
            .filter(|(k, _)| *k != "alertname")
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut rules = section(
        "rules",
        "Rules",
        "Evaluated every web.eval_interval_ms. A condition is pending until it has held for `for`, then firing; when it stops holding a firing alert resolves and a resolved notice is sent.",
    );
    let mut t = Table::new(
        &[
            "Rule",
            "Kind",
            "State",
            "For ms",
            "Notifiers",
            "Evaluated",
            "Error",
        ],
        "No alert rules. Add [alerts.<name>] to the config (see the README).",
    );
    for r in &v.rules {
        t.rows.push(vec![
            Cell::t(&r.name),
            Cell::t(&r.kind),
            Cell::state(&r.state),
            Cell::i(r.for_ms as i64),
            Cell::t(r.notify.join(", ")),
            Cell::t(r.evaluated_at.clone().unwrap_or_else(|| "not yet".into())),
            Cell::t(r.error.clone().unwrap_or_default()),
        ]);
    }
    rules.table = Some(t);
    let alert_rows = |alerts: &[crate::alerts::Alert], empty: &str| {
        let mut t = Table::new(
            &[
                "Alert",
                "State",
                "Labels",
                "Summary",
                "Value",
                "Since",
                "Fired",
                "Resolved",
                "Fingerprint",
            ],
            empty,
        );
        for a in alerts {
            t.rows.push(vec![
                Cell::t(&a.rule),
                Cell::state(if a.silenced { "silenced" } else { &a.state }),
                Cell::t(labels(&a.labels)),
                Cell::t(a.annotations.get("summary").cloned().unwrap_or_default()),
                opt(a.value),
                Cell::t(&a.active_since),
                Cell::t(a.fired_at.clone().unwrap_or_default()),
                Cell::t(a.resolved_at.clone().unwrap_or_default()),
                Cell::t(&a.fingerprint),
            ]);
        }
        t
    };
    let mut active = section("active", "Pending and firing", "");
    active.table = Some(alert_rows(&v.active, "Nothing pending or firing."));
    let mut resolved = section("resolved", "Recently resolved", "");
    resolved.table = Some(alert_rows(&v.resolved, "Nothing resolved yet."));
    let mut silences = section("silences", "Silences", "");
    let mut t = Table::new(&["Id", "Matchers", "Until", "Comment"], "No silences.");
    for s in &v.silences {
        t.rows.push(vec![
            Cell::i(s.id as i64),
            Cell::t(labels(&s.matchers)),
            Cell::t(&s.until),
            Cell::t(&s.comment),
        ]);
    }
    silences.table = Some(t);
    let mut log = section(
        "deliveries",
        "Delivery log",
        "Every notice sent, newest first, with attempts and the last answer.",
    );
    let mut t = Table::new(
        &[
            "At", "Notifier", "Status", "Alerts", "Attempts", "Outcome", "Detail",
        ],
        "Nothing delivered yet.",
    );
    for d in &v.deliveries {
        t.rows.push(vec![
            Cell::t(&d.at),
            Cell::t(&d.notifier),
            Cell::state(&d.status),
            Cell::t(d.fingerprints.join(" ")),
            Cell::i(i64::from(d.attempts)),
            Cell::state(&d.outcome),
            Cell::t(&d.detail),
        ]);
    }
    log.table = Some(t);
    vec![rules, active, resolved, silences, log]
}
