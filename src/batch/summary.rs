//! What a batch run found: row and tier counts, tokens, and current against routed cost per
//! mode and per model; printed as text, written as JSON, or drawn by [`super::report`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::classifier::Tier;
use crate::policy::Mode;
use crate::pricing::{self, PRICES_AS_OF};

use super::{Format, Options, Outcome};

/// Name under which rows whose log names no model are grouped.
pub const NO_MODEL: &str = "(none)";

/// Rows per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierCounts {
    pub easy: u64,
    pub medium: u64,
    pub hard: u64,
    pub needs_info: u64,
}

impl TierCounts {
    pub fn add(&mut self, tier: Tier) {
        *self.get_mut(tier) += 1;
    }

    fn get_mut(&mut self, tier: Tier) -> &mut u64 {
        match tier {
            Tier::Easy => &mut self.easy,
            Tier::Medium => &mut self.medium,
            Tier::Hard => &mut self.hard,
            Tier::NeedsInfo => &mut self.needs_info,
        }
    }

    pub fn get(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Easy => self.easy,
            Tier::Medium => self.medium,
            Tier::Hard => self.hard,
            Tier::NeedsInfo => self.needs_info,
        }
    }

    pub fn total(&self) -> u64 {
        self.easy + self.medium + self.hard + self.needs_info
    }
}

/// One input file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileSummary {
    pub path: String,
    /// `None` when the file could not be read far enough to know.
    pub format: Option<Format>,
    pub rows: u64,
    pub skipped: u64,
}

/// Token totals, and how many rows' counts were estimated.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub input_estimated_rows: u64,
    pub output_estimated_rows: u64,
    /// How missing counts were estimated.
    pub estimation: String,
}

/// Cost of the priced rows in one mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModeSummary {
    pub mode: Mode,
    /// What the priced rows would have cost on the models this mode picks.
    pub routed_cost_usd: f64,
    pub savings_usd: f64,
    /// Savings as a percentage of the current cost (0 when that is 0).
    pub savings_pct: f64,
    /// Priced rows this mode sends to a model that costs less for them than the one they used.
    pub cheaper_rows: u64,
    /// Priced rows this mode sends to a model that costs more for them.
    pub costlier_rows: u64,
    /// Every row (priced or not) per model this mode picks.
    pub routed_models: BTreeMap<String, u64>,
}

/// The rows that used one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSummary {
    /// The model's canonical name when it is priced (dated snapshots are grouped), else the
    /// name the log gives, or [`NO_MODEL`].
    pub model: String,
    pub rows: u64,
    pub tiers: TierCounts,
    /// `None` when the model has no price.
    pub current_cost_usd: Option<f64>,
    /// Per mode, in [`Mode::ALL`] order; `None` when the model has no price.
    pub routed_cost_usd: Vec<Option<f64>>,
    pub cheaper_rows: Vec<u64>,
}

impl ModelSummary {
    /// The per-model table's figures after the name, as the text summary and the HTML report
    /// both show them: rows, the four tier counts, current cost, routed cost per mode, and rows
    /// sent to a cheaper model in balanced mode; `dash` stands for an unpriced figure.
    pub fn figure_cells(&self, dash: &str) -> [String; 10] {
        let cost = |i: Option<f64>| i.map(usd).unwrap_or_else(|| dash.to_string());
        let routed = |mode: usize| cost(self.routed_cost_usd.get(mode).copied().flatten());
        [
            thousands(self.rows),
            thousands(self.tiers.easy),
            thousands(self.tiers.medium),
            thousands(self.tiers.hard),
            thousands(self.tiers.needs_info),
            cost(self.current_cost_usd),
            routed(0),
            routed(1),
            routed(2),
            match (self.current_cost_usd, self.cheaper_rows.first()) {
                (Some(_), Some(&n)) => thousands(n),
                _ => dash.to_string(),
            },
        ]
    }

    /// Savings in `mode` (index into [`Mode::ALL`]).
    pub fn savings_usd(&self, mode: usize) -> Option<f64> {
        Some(self.current_cost_usd? - self.routed_cost_usd.get(mode).copied()??)
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The classifier model's name.
    pub classifier: String,
    pub prices_as_of: &'static str,
    pub files: Vec<FileSummary>,
    /// Rows classified.
    pub rows: u64,
    /// Rows skipped as unusable.
    pub skipped: u64,
    pub tiers: TierCounts,
    pub tokens: Tokens,
    /// Rows whose model has a price: the rows the costs below are over.
    pub priced_rows: u64,
    /// Rows that name no model (and no --default-model was given).
    pub unpriced_no_model: u64,
    /// Rows per model name that has no price.
    pub unpriced_models: BTreeMap<String, u64>,
    pub current_cost_usd: f64,
    pub modes: Vec<ModeSummary>,
    /// Per model used, most rows first.
    pub by_model: Vec<ModelSummary>,
}

impl Summary {
    pub fn new(classifier: &str, files: &[String], options: &Options) -> Self {
        Self {
            classifier: classifier.to_string(),
            prices_as_of: PRICES_AS_OF,
            files: files
                .iter()
                .map(|p| FileSummary {
                    path: p.clone(),
                    format: None,
                    rows: 0,
                    skipped: 0,
                })
                .collect(),
            rows: 0,
            skipped: 0,
            tiers: TierCounts::default(),
            tokens: Tokens {
                estimation: format!(
                    "input: ceil(characters of every message, with its role, / 4); output: ceil(characters of \
                     the logged answer / 4), else {} tokens a row",
                    options.estimation.default_output_tokens
                ),
                ..Tokens::default()
            },
            priced_rows: 0,
            unpriced_no_model: 0,
            unpriced_models: BTreeMap::new(),
            current_cost_usd: 0.0,
            modes: Mode::ALL
                .iter()
                .map(|&mode| ModeSummary {
                    mode,
                    routed_cost_usd: 0.0,
                    savings_usd: 0.0,
                    savings_pct: 0.0,
                    cheaper_rows: 0,
                    costlier_rows: 0,
                    routed_models: BTreeMap::new(),
                })
                .collect(),
            by_model: Vec::new(),
        }
    }

    pub fn set_format(&mut self, file: usize, format: Format) {
        if let Some(f) = self.files.get_mut(file) {
            f.format = Some(format);
        }
    }

    pub fn add_skipped(&mut self, file: usize) {
        self.skipped += 1;
        if let Some(f) = self.files.get_mut(file) {
            f.skipped += 1;
        }
    }

    /// Adds one classified row.
    pub fn add(&mut self, o: &Outcome) {
        self.rows += 1;
        if let Some(f) = self.files.get_mut(o.file) {
            f.rows += 1;
        }
        let tier = o.prediction.tier;
        self.tiers.add(tier);
        let r = &o.record;
        self.tokens.input += r.input_tokens.tokens;
        self.tokens.output += r.output_tokens.tokens;
        self.tokens.input_estimated_rows += u64::from(r.input_tokens.estimated);
        self.tokens.output_estimated_rows += u64::from(r.output_tokens.estimated);

        let key = match &o.model {
            None => NO_MODEL.to_string(),
            Some(m) => pricing::lookup(m)
                .map(|e| e.model.to_string())
                .unwrap_or_else(|| m.clone()),
        };
        let entry = match self.by_model.iter().position(|m| m.model == key) {
            Some(i) => &mut self.by_model[i],
            None => {
                self.by_model.push(ModelSummary {
                    model: key,
                    rows: 0,
                    tiers: TierCounts::default(),
                    current_cost_usd: None,
                    routed_cost_usd: vec![None; Mode::ALL.len()],
                    cheaper_rows: vec![0; Mode::ALL.len()],
                });
                let last = self.by_model.len() - 1;
                &mut self.by_model[last]
            }
        };
        entry.rows += 1;
        entry.tiers.add(tier);
        for (i, route) in o.routes.iter().enumerate() {
            if let Some(m) = self.modes.get_mut(i) {
                *m.routed_models.entry(route.model.clone()).or_insert(0) += 1;
            }
        }
        // Rows are compared only where both sides have a price.
        let priced = o
            .current_cost_usd
            .filter(|_| o.routes.iter().all(|r| r.cost_usd.is_some()));
        let Some(current) = priced else {
            match &o.model {
                None => self.unpriced_no_model += 1,
                Some(_) => {
                    *self.unpriced_models.entry(entry.model.clone()).or_insert(0) += 1;
                }
            }
            return;
        };
        self.priced_rows += 1;
        self.current_cost_usd += current;
        *entry.current_cost_usd.get_or_insert(0.0) += current;
        for (i, route) in o.routes.iter().enumerate() {
            let routed = route.cost_usd.unwrap_or(current);
            // Equal prices within floating-point noise are "the same", not cheaper.
            let eps = 1e-12;
            if let Some(m) = self.modes.get_mut(i) {
                m.routed_cost_usd += routed;
                if routed < current - eps {
                    m.cheaper_rows += 1;
                    entry.cheaper_rows[i] += 1;
                } else if routed > current + eps {
                    m.costlier_rows += 1;
                }
            }
            *entry.routed_cost_usd[i].get_or_insert(0.0) += routed;
        }
    }

    /// Computes savings and orders the per-model table; call once after the last row.
    pub fn finish(&mut self) {
        for m in &mut self.modes {
            m.savings_usd = self.current_cost_usd - m.routed_cost_usd;
            m.savings_pct = if self.current_cost_usd > 0.0 {
                100.0 * m.savings_usd / self.current_cost_usd
            } else {
                0.0
            };
        }
        self.by_model
            .sort_by(|a, b| b.rows.cmp(&a.rows).then_with(|| a.model.cmp(&b.model)));
    }

    /// The summary as text for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let files = self.files.len();
        let _ = writeln!(
            s,
            "triage batch: {} rows classified from {} file{}, {} skipped",
            thousands(self.rows),
            files,
            if files == 1 { "" } else { "s" },
            thousands(self.skipped),
        );
        for f in &self.files {
            let _ = writeln!(
                s,
                "  {}  [{}]  {} rows, {} skipped",
                f.path,
                f.format.map(|f| f.as_str()).unwrap_or("?"),
                thousands(f.rows),
                thousands(f.skipped)
            );
        }
        let _ = writeln!(
            s,
            "classifier {}; prices as of {} (USD, list price)",
            self.classifier, self.prices_as_of
        );
        let _ = writeln!(s);
        let _ = write!(s, "tiers     ");
        for tier in Tier::ALL {
            let n = self.tiers.get(tier);
            let _ = write!(s, " {tier} {} ({})", thousands(n), pct(n, self.rows));
        }
        let _ = writeln!(s);
        let t = &self.tokens;
        let _ = writeln!(
            s,
            "tokens     input {} ({} of rows estimated), output {} ({} of rows estimated)",
            thousands(t.input),
            pct(t.input_estimated_rows, self.rows),
            thousands(t.output),
            pct(t.output_estimated_rows, self.rows),
        );
        if t.input_estimated_rows + t.output_estimated_rows > 0 {
            let _ = writeln!(s, "           estimates: {}", t.estimation);
        }
        let _ = writeln!(s);
        if self.priced_rows == 0 {
            let _ = writeln!(
                s,
                "cost: no row names a priced model, so there is no current cost to compare \
                 (name the model with --default-model or --model-field)"
            );
        } else {
            let _ = writeln!(
                s,
                "cost of the {} priced rows (rows whose model has a price)",
                thousands(self.priced_rows)
            );
            let _ = writeln!(
                s,
                "  {:<19}  {:>12}  {:>10} {:>7}  rows to a cheaper model",
                "", "total", "savings", "%"
            );
            let _ = writeln!(
                s,
                "  current (as logged)  {:>12}",
                usd(self.current_cost_usd)
            );
            for m in &self.modes {
                let _ = writeln!(
                    s,
                    "  routed, {:<11}  {:>12}  {:>10} {:>7}  {:>8} ({})",
                    m.mode.as_str(),
                    usd(m.routed_cost_usd),
                    usd(m.savings_usd),
                    format!("{:.1}%", m.savings_pct),
                    thousands(m.cheaper_rows),
                    pct(m.cheaper_rows, self.priced_rows),
                );
            }
        }
        if self.unpriced_no_model > 0 || !self.unpriced_models.is_empty() {
            let mut parts = Vec::new();
            if self.unpriced_no_model > 0 {
                parts.push(format!(
                    "{} name no model",
                    thousands(self.unpriced_no_model)
                ));
            }
            for (m, n) in &self.unpriced_models {
                parts.push(format!("{} use {m} (no price)", thousands(*n)));
            }
            let _ = writeln!(s, "  not priced: {}", parts.join(", "));
        }
        if !self.by_model.is_empty() {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "by model used          rows   easy medium   hard   info      current     balanced   aggressive         cost  cheaper(bal.)"
            );
            for m in &self.by_model {
                let c = m.figure_cells("-");
                let _ = writeln!(
                    s,
                    "  {:<19} {:>6} {:>6} {:>6} {:>6} {:>6} {:>12} {:>12} {:>12} {:>12}  {:>6}",
                    truncate(&m.model, 19),
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    c[4],
                    c[5],
                    c[6],
                    c[7],
                    c[8],
                    c[9],
                );
            }
        }
        let balanced = &self.modes[0];
        if !balanced.routed_models.is_empty() {
            let _ = writeln!(s);
            let mut routed: Vec<(&String, &u64)> = balanced.routed_models.iter().collect();
            routed.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
            let list: Vec<String> = routed
                .iter()
                .map(|(m, n)| format!("{m} {}", thousands(**n)))
                .collect();
            let _ = writeln!(s, "balanced routes to: {}", list.join(", "));
        }
        s
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// USD with cents, or four decimals below ten dollars so that small logs show something.
pub fn usd(v: f64) -> String {
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    if a >= 10.0 {
        let whole = a.trunc() as u64;
        let cents = ((a - a.trunc()) * 100.0).round() as u64;
        let (whole, cents) = if cents == 100 {
            (whole + 1, 0)
        } else {
            (whole, cents)
        };
        format!("{sign}${}.{cents:02}", thousands(whole))
    } else {
        format!("{sign}${a:.4}")
    }
}

fn pct(n: u64, of: u64) -> String {
    if of == 0 {
        return "0%".into();
    }
    format!("{:.1}%", 100.0 * n as f64 / of as f64)
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max - 1).collect();
    t.push('…');
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(usd(0.00123), "$0.0012");
        assert_eq!(usd(1234.567), "$1,234.57");
        assert_eq!(usd(-12.5), "-$12.50");
        assert_eq!(usd(19.999), "$20.00");
    }
}
