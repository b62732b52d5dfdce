//! Charts drawn on the server as inline SVG: no script, no CDN.
//!
//! Every chart is a plain `<svg>` string with a `<title>` per point or
//! cell, so hovering shows the exact figure and a page reads without
//! JavaScript. Labels are escaped here; templates insert the string as is.

use std::fmt::Write;

use serde::Serialize;

use crate::time;

/// Series colours (distinguishable, readable on white).
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// One line of a time chart.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Series {
    /// The legend label.
    pub label: String,
    /// Points: (epoch seconds, value).
    pub points: Vec<(i64, f64)>,
}

/// One mark: a vertical line at `t` with its label on hover.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Mark {
    /// When (epoch seconds).
    pub t: i64,
    /// `rollout` or `failover`.
    pub kind: String,
    /// What happened.
    pub label: String,
}

/// Escapes text for SVG/HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A figure with at most 3 significant decimals, no trailing zeros.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    let s = if a >= 1000.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// A line chart of time series between `from_s` and `to_s`, `unit` after
/// figures, with `marks` in the range as dashed vertical lines. Empty
/// series draw an empty frame saying "no data".
pub fn time_chart(series: &[Series], marks: &[Mark], from_s: i64, to_s: i64, unit: &str) -> String {
    let (w, h) = (720.0, 220.0);
    let (left, right, top, bottom) = (56.0, 12.0, 10.0, 40.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="chart" viewBox="0 0 {w} {h}" width="100%" role="img" xmlns="http://www.w3.org/2000/svg">"#
    );
    let max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let span = (to_s - from_s).max(1) as f64;
    let x = |t: i64| left + pw * ((t - from_s) as f64 / span).clamp(0.0, 1.0);
    let ymax = nice_ceiling(max);
    let y = |v: f64| top + ph * (1.0 - (v / ymax).clamp(0.0, 1.0));
    let _ = write!(
        o,
        r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>"##
    );
    for i in 0..=4 {
        let v = ymax * f64::from(i) / 4.0;
        let yy = y(v);
        let _ = write!(
            o,
            r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#e5e5e5"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            left + pw,
            left - 4.0,
            yy + 4.0,
            esc(&format!("{}{unit}", num(v)))
        );
    }
    let long = to_s - from_s > 86_400;
    for i in 0..=4 {
        let t = from_s + (to_s - from_s) * i / 4;
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle" fill="#555">{}</text>"##,
            x(t),
            top + ph + 16.0,
            time::chart_tick(t, long)
        );
    }
    if series.iter().all(|s| s.points.is_empty()) {
        let _ = write!(
            o,
            r##"<text x="{}" y="{}" font-size="13" text-anchor="middle" fill="#888">no data in this range</text>"##,
            left + pw / 2.0,
            top + ph / 2.0
        );
    }
    for m in marks.iter().filter(|m| (from_s..=to_s).contains(&m.t)) {
        let color = if m.kind == "rollout" {
            "#7b3294"
        } else {
            "#b35806"
        };
        let xx = x(m.t);
        let _ = write!(
            o,
            r##"<g class="mark" data-kind="{}" data-label="{}"><line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="{color}" stroke-width="1.2" stroke-dasharray="4 3"/><path d="M{:.1},{top} l4,-6 h-8 z" fill="{color}"/><title>{} {}</title></g>"##,
            esc(&m.kind),
            esc(&m.label),
            top + ph,
            xx,
            time::chart_tick(m.t, true),
            esc(&m.label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mut pts = s.points.clone();
        pts.sort_by_key(|p| p.0);
        let path: Vec<String> = pts
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
            .collect();
        let _ = write!(
            o,
            r#"<g class="series" data-label="{}"><polyline fill="none" stroke="{color}" stroke-width="1.8" points="{}"/>"#,
            esc(&s.label),
            path.join(" ")
        );
        for &(t, v) in pts.iter().filter(|p| p.1.is_finite()) {
            let _ = write!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.2" fill="{color}"><title>{} {} {}{}</title></circle>"#,
                x(t),
                y(v),
                esc(&s.label),
                time::chart_tick(t, true),
                num(v),
                esc(unit)
            );
        }
        o.push_str("</g>");
        let lx = left + (i as f64 % 4.0) * 165.0;
        let ly =
            h - 8.0 - if i >= 4 { 0.0 } else { 12.0 } + if series.len() <= 4 { 12.0 } else { 0.0 };
        let _ = write!(
            o,
            r##"<rect x="{lx}" y="{:.1}" width="10" height="3" fill="{color}"/><text x="{:.1}" y="{ly:.1}" font-size="11" fill="#333">{}</text>"##,
            ly - 4.0,
            lx + 14.0,
            esc(&s.label)
        );
    }
    o.push_str("</svg>");
    o
}

/// The smallest 1/2/5 × 10^k at or above `v` (1 when `v` is 0).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

/// A matrix as a heatmap: rows × columns, `None` cells blank. Colours
/// go from green (0) over amber to red (at or above `red_at`).
pub fn heatmap(
    rows: &[String],
    cols: &[String],
    cells: &[Vec<Option<f64>>],
    unit: &str,
    red_at: f64,
) -> String {
    let cw = 96.0;
    let ch = 34.0;
    let left = 90.0;
    let top = 26.0;
    let w = left + cw * cols.len() as f64 + 4.0;
    let h = top + ch * rows.len() as f64 + 4.0;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="heatmap" viewBox="0 0 {w} {h}" width="{w}" role="img" xmlns="http://www.w3.org/2000/svg">"#
    );
    for (j, c) in cols.iter().enumerate() {
        let _ = write!(
            o,
            r##"<text x="{:.1}" y="18" font-size="11" text-anchor="middle" fill="#333">→ {}</text>"##,
            left + cw * j as f64 + cw / 2.0,
            esc(c)
        );
    }
    for (i, r) in rows.iter().enumerate() {
        let yy = top + ch * i as f64;
        let _ = write!(
            o,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#333">{}</text>"##,
            left - 6.0,
            yy + ch / 2.0 + 4.0,
            esc(r)
        );
        for (j, c) in cols.iter().enumerate() {
            let xx = left + cw * j as f64;
            let v = cells.get(i).and_then(|row| row.get(j)).copied().flatten();
            let (fill, text) = match v {
                Some(v) => (heat(v, red_at), format!("{}{unit}", num(v))),
                None => ("#f0f0f0".to_owned(), "–".to_owned()),
            };
            let _ = write!(
                o,
                r##"<rect class="cell" x="{xx:.1}" y="{yy:.1}" width="{}" height="{}" fill="{fill}" stroke="#fff"><title>{} → {}: {}</title></rect><text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#111">{}</text>"##,
                cw - 2.0,
                ch - 2.0,
                esc(r),
                esc(c),
                esc(&text),
                xx + cw / 2.0,
                yy + ch / 2.0 + 4.0,
                esc(&text)
            );
        }
    }
    o.push_str("</svg>");
    o
}

/// Green → amber → red for 0 → red_at/2 → red_at.
fn heat(v: f64, red_at: f64) -> String {
    let f = if red_at > 0.0 {
        (v / red_at).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (r, g, b) = if f < 0.5 {
        let t = f * 2.0;
        (120.0 + 135.0 * t, 200.0 - 10.0 * t, 120.0 - 60.0 * t)
    } else {
        let t = (f - 0.5) * 2.0;
        (255.0, 190.0 - 110.0 * t, 60.0 + 20.0 * t)
    };
    format!("rgb({},{},{})", r as u8, g as u8, b as u8)
}

/// Horizontal bars, one per (label, value).
pub fn bars(items: &[(String, f64)], unit: &str) -> String {
    let bh = 20.0;
    let left = 150.0;
    let pw = 480.0;
    let h = bh * items.len().max(1) as f64 + 8.0;
    let max = items.iter().map(|i| i.1).fold(0.0_f64, f64::max);
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<svg class="bars" viewBox="0 0 720 {h}" width="100%" role="img" xmlns="http://www.w3.org/2000/svg">"#
    );
    if items.is_empty() {
        o.push_str(
            r##"<text x="10" y="18" font-size="13" fill="#888">no data in this range</text>"##,
        );
    }
    for (i, (label, v)) in items.iter().enumerate() {
        let yy = 4.0 + bh * i as f64;
        let bw = if max > 0.0 { pw * v / max } else { 0.0 };
        let _ = write!(
            o,
            r##"<text x="{}" y="{:.1}" font-size="11" text-anchor="end" fill="#333">{}</text><rect x="{left}" y="{yy:.1}" width="{bw:.1}" height="{}" fill="#1f77b4"><title>{}: {}{}</title></rect><text x="{:.1}" y="{:.1}" font-size="11" fill="#333">{}{}</text>"##,
            left - 6.0,
            yy + 14.0,
            esc(label),
            bh - 4.0,
            esc(label),
            num(*v),
            esc(unit),
            left + bw + 4.0,
            yy + 14.0,
            num(*v),
            esc(unit)
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_well() {
        assert_eq!(num(0.0), "0");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(1.5), "1.5");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(12_345.6), "12346");
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
    }

    #[test]
    fn marks_in_the_range_are_drawn_with_their_label() {
        let mark = |t: i64, kind: &str| Mark {
            t,
            kind: kind.into(),
            label: format!("rollout <carts> at {t}"),
        };
        let marks = [
            mark(30, "rollout"),
            mark(90, "failover"),
            mark(500, "rollout"),
        ];
        let svg = time_chart(&[], &marks, 0, 120, "");
        assert_eq!(svg.matches("<g class=\"mark\"").count(), 2, "{svg}");
        assert!(svg.contains("data-kind=\"rollout\" data-label=\"rollout &lt;carts&gt; at 30\""));
        assert!(svg.contains("data-kind=\"failover\""));
        assert!(!svg.contains("at 500"), "outside the range");
        // At a quarter of the plot's width from its left edge.
        let x = 56.0 + (720.0 - 56.0 - 12.0) * 30.0 / 120.0;
        assert!(svg.contains(&format!("x1=\"{x:.1}\"")), "{svg}");
    }

    #[test]
    fn charts_escape_labels_and_draw_every_point() {
        let s = vec![Series {
            label: "<us-east>".into(),
            points: vec![(60, 1.0), (0, 2.0), (120, 3.0)],
        }];
        let svg = time_chart(&s, &[], 0, 120, " ms");
        assert!(svg.contains("&lt;us-east&gt;") && !svg.contains("<us-east>"));
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(time_chart(&[], &[], 0, 60, "").contains("no data"));
        let h = heatmap(
            &["a".into()],
            &["b".into(), "c".into()],
            &[vec![Some(5.0), None]],
            " ms",
            10.0,
        );
        assert_eq!(h.matches("class=\"cell\"").count(), 2);
        assert!(h.contains("a → b: 5 ms"));
    }
}
