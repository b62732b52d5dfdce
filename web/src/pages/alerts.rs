//! The alerts page: rules, alerts, silences and the delivery log.

use super::layout::{Cell, Section, Table, opt, section};

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
