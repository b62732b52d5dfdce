//! The SLOs page: budgets and burn rates.

use super::layout::{Cell, Section, Table, opt, section};
use crate::charts::{self, num};

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
