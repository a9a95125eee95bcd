//! The batch summary as one self-contained HTML page: inline CSS and inline SVG charts (tier
//! mix, cost by mode, savings by model), no scripts and nothing fetched, so it opens offline
//! and can be mailed as a single file.

use std::fmt::Write as _;

use crate::classifier::Tier;
use crate::policy::Mode;

use super::summary::{thousands, usd, Summary};

const TIER_COLORS: [&str; 4] = ["#4caf7a", "#3f7fd6", "#d6613f", "#9a8c98"];
const MODE_COLORS: [&str; 3] = ["#3f7fd6", "#8a5cd6", "#2aa198"];
const CURRENT_COLOR: &str = "#555f6d";

/// Escapes text for HTML content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// One bar: label, value, the text shown on it, colour.
struct Bar {
    label: String,
    value: f64,
    text: String,
    color: &'static str,
}

/// Vertical bars from zero (values below zero are drawn as zero).
fn column_chart(title: &str, bars: &[Bar]) -> String {
    let (w, h) = (520.0, 260.0);
    let (left, right, top, bottom) = (16.0, 16.0, 28.0, 40.0);
    let max = bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
    let plot_h = h - top - bottom;
    let slot = (w - left - right) / bars.len().max(1) as f64;
    let bar_w = (slot * 0.6).min(90.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    let base = top + plot_h;
    let _ = write!(
        s,
        r##"<line x1="{left}" y1="{base}" x2="{x2}" y2="{base}" stroke="#c8ccd2"/>"##,
        x2 = w - right
    );
    for (i, b) in bars.iter().enumerate() {
        let bh = if max > 0.0 {
            (b.value.max(0.0) / max) * plot_h
        } else {
            0.0
        };
        let cx = left + slot * (i as f64 + 0.5);
        let x = cx - bar_w / 2.0;
        let y = base - bh;
        let _ = write!(
            s,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{bar_w:.1}" height="{bh:.1}" rx="3" fill="{c}"><title>{l}: {v}</title></rect>"#,
            c = b.color,
            l = escape(&b.label),
            v = escape(&b.text)
        );
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{ty:.1}" text-anchor="middle" class="val">{v}</text>"#,
            ty = y - 6.0,
            v = escape(&b.text)
        );
        let _ = write!(
            s,
            r#"<text x="{cx:.1}" y="{ly:.1}" text-anchor="middle" class="lab">{l}</text>"#,
            ly = base + 18.0,
            l = escape(&b.label)
        );
    }
    s.push_str("</svg>");
    s
}

/// Horizontal bars, a group of one bar per series for each row, around a zero line (savings
/// can be negative when a mode picks a dearer model).
fn grouped_bar_chart(
    title: &str,
    series: &[(&str, &'static str)],
    rows: &[(String, Vec<Option<f64>>)],
) -> String {
    let w = 1040.0;
    let label_w = 200.0;
    let value_w = 90.0;
    let bar_h = 12.0;
    let group_h = bar_h * series.len() as f64 + 14.0;
    let top = 30.0;
    let h = top + group_h * rows.len().max(1) as f64 + 10.0;
    let values = rows.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let (mut lo, mut hi) = (0.0_f64, 0.0_f64);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let span = if hi - lo > 0.0 { hi - lo } else { 1.0 };
    let plot_x = label_w + value_w;
    let plot_w = w - plot_x - value_w - 10.0;
    let x_of = |v: f64| plot_x + (v - lo) / span * plot_w;
    let zero = x_of(0.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="{t}"><title>{t}</title>"#,
        t = escape(title)
    );
    let mut lx = label_w;
    for (name, color) in series {
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="6" width="12" height="12" rx="2" fill="{color}"/><text x="{tx}" y="16" class="lab">{n}</text>"#,
            tx = lx + 16.0,
            n = escape(name)
        );
        lx += 130.0;
    }
    for (gi, (label, vals)) in rows.iter().enumerate() {
        let gy = top + group_h * gi as f64;
        let _ = write!(
            s,
            r#"<text x="{x}" y="{y:.1}" text-anchor="end" class="lab">{l}</text>"#,
            x = label_w - 8.0,
            y = gy + group_h / 2.0,
            l = escape(label)
        );
        for (si, v) in vals.iter().enumerate() {
            let y = gy + bar_h * si as f64;
            let Some(v) = v else { continue };
            let (x0, x1) = if *v >= 0.0 {
                (zero, x_of(*v))
            } else {
                (x_of(*v), zero)
            };
            let color = series.get(si).map(|s| s.1).unwrap_or(CURRENT_COLOR);
            let _ = write!(
                s,
                r#"<rect x="{x0:.1}" y="{y:.1}" width="{bw:.1}" height="{bh:.1}" fill="{color}"><title>{l}: {t}</title></rect>"#,
                bw = (x1 - x0).max(0.5),
                bh = bar_h - 2.0,
                l = escape(label),
                t = usd(*v)
            );
            let (tx, anchor) = if *v >= 0.0 {
                (x1 + 4.0, "start")
            } else {
                (x0 - 4.0, "end")
            };
            let _ = write!(
                s,
                r#"<text x="{tx:.1}" y="{ty:.1}" text-anchor="{anchor}" class="small">{t}</text>"#,
                ty = y + bar_h - 3.0,
                t = usd(*v)
            );
        }
    }
    let _ = write!(
        s,
        r##"<line x1="{zero:.1}" y1="{top}" x2="{zero:.1}" y2="{y2:.1}" stroke="#8d939b"/>"##,
        y2 = h - 6.0
    );
    s.push_str("</svg>");
    s
}

const STYLE: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;color:#1d232b;background:#f5f6f8;margin:0}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:0 0 10px}
.sub{color:#5b6470;margin:0 0 18px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:16px}
.card{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:12px 14px}
.card .k{color:#5b6470;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin-top:2px}
.grid{display:grid;grid-template-columns:1fr 1fr;gap:12px;margin-bottom:12px}
section{background:#fff;border:1px solid #e1e4e8;border-radius:8px;padding:14px;margin-bottom:12px;overflow-x:auto}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:5px 8px;border-bottom:1px solid #eceef1;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{color:#5b6470;font-weight:600;font-size:12px}
svg text{font-family:inherit;fill:#1d232b}
svg .lab{font-size:12px}svg .val{font-size:12px;font-weight:600}svg .small{font-size:10px}
.note{color:#5b6470;font-size:12px}
.pos{color:#1f7a45}.neg{color:#b3341b}
"#;

/// The report page for `summary`.
pub fn render(summary: &Summary) -> String {
    let s = summary;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>triage batch report</title><style>{STYLE}</style></head><body><main>"
    );
    let files: Vec<String> = s.files.iter().map(|f| escape(&f.path)).collect();
    let _ = write!(
        h,
        "<h1>What routing would have done</h1><p class=\"sub\">{} rows classified, {} skipped, from {} \
         &middot; classifier {} &middot; list prices as of {}</p>",
        thousands(s.rows),
        thousands(s.skipped),
        files.join(", "),
        escape(&s.classifier),
        s.prices_as_of
    );

    let balanced = &s.modes[0];
    let priced = s.priced_rows > 0;
    let cards = [
        ("rows", thousands(s.rows)),
        (
            "current cost",
            if priced {
                usd(s.current_cost_usd)
            } else {
                "n/a".into()
            },
        ),
        (
            "balanced saves",
            if priced {
                format!(
                    "{} ({:.1}%)",
                    usd(balanced.savings_usd),
                    balanced.savings_pct
                )
            } else {
                "n/a".into()
            },
        ),
        (
            "to a cheaper model",
            if priced {
                format!("{} rows", thousands(balanced.cheaper_rows))
            } else {
                "n/a".into()
            },
        ),
    ];
    h.push_str("<div class=\"cards\">");
    for (k, v) in cards {
        let _ = write!(
            h,
            "<div class=\"card\"><div class=\"k\">{k}</div><div class=\"v\">{}</div></div>",
            escape(&v)
        );
    }
    h.push_str("</div>");

    // Tier mix and cost by mode.
    let tier_bars: Vec<Bar> = Tier::ALL
        .iter()
        .zip(TIER_COLORS)
        .map(|(&t, color)| {
            let n = s.tiers.get(t);
            let pct = if s.rows > 0 {
                100.0 * n as f64 / s.rows as f64
            } else {
                0.0
            };
            Bar {
                label: t.as_str().to_string(),
                value: n as f64,
                text: format!("{} ({pct:.0}%)", thousands(n)),
                color,
            }
        })
        .collect();
    let mut cost_bars = vec![Bar {
        label: "current".into(),
        value: s.current_cost_usd,
        text: usd(s.current_cost_usd),
        color: CURRENT_COLOR,
    }];
    for (m, color) in s.modes.iter().zip(MODE_COLORS) {
        cost_bars.push(Bar {
            label: m.mode.as_str().to_string(),
            value: m.routed_cost_usd,
            text: usd(m.routed_cost_usd),
            color,
        });
    }
    let _ = write!(
        h,
        "<div class=\"grid\"><section><h2>Tier mix</h2>{}</section>\
         <section><h2>Cost by mode ({} priced rows)</h2>{}</section></div>",
        column_chart("Rows per tier", &tier_bars),
        thousands(s.priced_rows),
        column_chart("Cost of the priced rows: current and per mode", &cost_bars),
    );

    // Cost table.
    h.push_str(
        "<section><h2>Current against routed cost</h2><table><tr><th>mode</th><th>cost</th>\
         <th>savings</th><th>savings %</th><th>rows to a cheaper model</th>\
         <th>rows to a dearer model</th></tr>",
    );
    let _ = write!(
        h,
        "<tr><td>current (as logged)</td><td>{}</td><td></td><td></td><td></td><td></td></tr>",
        usd(s.current_cost_usd)
    );
    for m in &s.modes {
        let class = if m.savings_usd >= 0.0 { "pos" } else { "neg" };
        let _ = write!(
            h,
            "<tr><td>routed, {}</td><td>{}</td><td class=\"{class}\">{}</td><td class=\"{class}\">{:.1}%</td><td>{}</td><td>{}</td></tr>",
            m.mode,
            usd(m.routed_cost_usd),
            usd(m.savings_usd),
            m.savings_pct,
            thousands(m.cheaper_rows),
            thousands(m.costlier_rows)
        );
    }
    h.push_str("</table>");
    if s.unpriced_no_model > 0 || !s.unpriced_models.is_empty() {
        let mut parts = Vec::new();
        if s.unpriced_no_model > 0 {
            parts.push(format!(
                "{} rows name no model",
                thousands(s.unpriced_no_model)
            ));
        }
        for (m, n) in &s.unpriced_models {
            parts.push(format!(
                "{} rows use {} (no price)",
                thousands(*n),
                escape(m)
            ));
        }
        let _ = write!(
            h,
            "<p class=\"note\">Not in the costs: {}.</p>",
            parts.join("; ")
        );
    }
    h.push_str("</section>");

    // Savings by model.
    let priced_models: Vec<(String, Vec<Option<f64>>)> = s
        .by_model
        .iter()
        .filter(|m| m.current_cost_usd.is_some())
        .map(|m| {
            (
                m.model.clone(),
                (0..Mode::ALL.len()).map(|i| m.savings_usd(i)).collect(),
            )
        })
        .collect();
    let series: Vec<(&str, &'static str)> = Mode::ALL
        .iter()
        .zip(MODE_COLORS)
        .map(|(m, c)| (m.as_str(), c))
        .collect();
    let _ = write!(h, "<section><h2>Savings by model used</h2>");
    if priced_models.is_empty() {
        h.push_str("<p class=\"note\">No row names a priced model.</p>");
    } else {
        h.push_str(&grouped_bar_chart(
            "Savings per model used, per mode (USD)",
            &series,
            &priced_models,
        ));
    }
    h.push_str("</section>");

    // Per-model table.
    h.push_str(
        "<section><h2>By model used</h2><table><tr><th>model</th><th>rows</th><th>easy</th>\
         <th>medium</th><th>hard</th><th>needs_info</th><th>current</th><th>balanced</th>\
         <th>aggressive</th><th>cost</th><th>cheaper (balanced)</th></tr>",
    );
    for m in &s.by_model {
        let _ = write!(h, "<tr><td>{}</td>", escape(&m.model));
        for cell in m.figure_cells("&ndash;") {
            let _ = write!(h, "<td>{cell}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></section>");

    // Files and method.
    h.push_str("<section><h2>Inputs</h2><table><tr><th>file</th><th>format</th><th>rows</th><th>skipped</th></tr>");
    for f in &s.files {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.path),
            f.format.map(|f| f.as_str()).unwrap_or("?"),
            thousands(f.rows),
            thousands(f.skipped)
        );
    }
    let t = &s.tokens;
    let _ = write!(
        h,
        "</table><p class=\"note\">Tokens: {} input ({} rows estimated), {} output ({} rows \
         estimated). Estimates: {}. Costs are list prices per million tokens, without batch or \
         cache discounts; rows are compared only where both the model used and the routed \
         model have a price.</p></section>",
        thousands(t.input),
        thousands(t.input_estimated_rows),
        thousands(t.output),
        thousands(t.output_estimated_rows),
        escape(&t.estimation)
    );
    h.push_str("</main></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn charts_handle_empty_and_negative_data() {
        let svg = column_chart("t", &[]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        let svg = grouped_bar_chart(
            "t",
            &[("a", "#000")],
            &[
                ("m".into(), vec![Some(-1.0)]),
                ("n".into(), vec![Some(2.0)]),
            ],
        );
        assert!(svg.contains("-$1.0000") && svg.contains("$2.0000"));
        assert!(!svg.contains("NaN"));
    }
}
