//! Model prices, for counting cost in the gateway and estimating savings in batch reports.
//!
//! [`SHIPPED`] lists list prices in USD per million tokens for the current models of Anthropic,
//! OpenAI and Google Gemini, as published by each provider (standard tier, no batch or cache
//! discounts; Gemini Pro at its price for prompts up to 200k tokens). [`PRICES_AS_OF`] says when
//! they were read. Prices change: a deployment overrides or adds models through a
//! [`PriceTable`].
//!
//! Lookups tolerate the names providers and SDKs actually send: dated snapshots
//! (`claude-sonnet-4-5-20250929`, `gpt-4o-2024-08-06`), `-latest`, `@` version tags
//! (`claude-3-5-sonnet@20240620` on Vertex), provider prefixes (`anthropic/`, `openai/`,
//! `models/gemini-2.5-pro`), and upper case.

use std::fmt;

/// When the shipped prices were last checked against the providers' pricing pages.
pub const PRICES_AS_OF: &str = "2025-11";

/// A provider family: the company whose models a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Anthropic,
    OpenAi,
    Gemini,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Anthropic, Family::OpenAi, Family::Gemini];

    /// The name used in configuration and on the wire: `anthropic`, `openai`, `gemini`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Anthropic => "anthropic",
            Family::OpenAi => "openai",
            Family::Gemini => "gemini",
        }
    }

    /// Parses `anthropic`, `openai` or `gemini` (also `google`), case-insensitively.
    pub fn parse(name: &str) -> Option<Family> {
        match name.trim().to_ascii_lowercase().as_str() {
            "anthropic" | "claude" => Some(Family::Anthropic),
            "openai" | "gpt" => Some(Family::OpenAi),
            "gemini" | "google" => Some(Family::Gemini),
            _ => None,
        }
    }

    /// The family a model name belongs to, judged from its name alone (`claude-*`, `gpt-*`,
    /// `o1`/`o3`/`o4-*`, `gemini-*`), whether or not it is priced.
    pub fn of_model(model: &str) -> Option<Family> {
        let name = normalize(model);
        if name.starts_with("claude") {
            Some(Family::Anthropic)
        } else if name.starts_with("gemini") {
            Some(Family::Gemini)
        } else if name.starts_with("gpt")
            || name.starts_with("chatgpt")
            || ["o1", "o3", "o4"]
                .iter()
                .any(|p| name == *p || name.starts_with(&format!("{p}-")))
        {
            Some(Family::OpenAi)
        } else {
            None
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a model costs, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

impl Price {
    pub const fn new(input_per_mtok: f64, output_per_mtok: f64) -> Self {
        Self {
            input_per_mtok,
            output_per_mtok,
        }
    }

    /// USD for one request with these token counts.
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> f64 {
        (input_tokens as f64 * self.input_per_mtok + output_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }
}

/// One row of the shipped table.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    /// The canonical, undated name (`claude-sonnet-4-5`).
    pub model: &'static str,
    pub family: Family,
    pub price: Price,
}

const fn row(model: &'static str, family: Family, input: f64, output: f64) -> ModelPrice {
    ModelPrice {
        model,
        family,
        price: Price::new(input, output),
    }
}

use Family::{Anthropic as A, Gemini as G, OpenAi as O};

/// The shipped price table (see the module docs).
pub static SHIPPED: &[ModelPrice] = &[
    // Anthropic
    row("claude-opus-4-5", A, 5.0, 25.0),
    row("claude-opus-4-1", A, 15.0, 75.0),
    row("claude-opus-4", A, 15.0, 75.0),
    row("claude-sonnet-4-5", A, 3.0, 15.0),
    row("claude-sonnet-4", A, 3.0, 15.0),
    row("claude-haiku-4-5", A, 1.0, 5.0),
    row("claude-3-7-sonnet", A, 3.0, 15.0),
    row("claude-3-5-sonnet", A, 3.0, 15.0),
    row("claude-3-5-haiku", A, 0.80, 4.0),
    row("claude-3-opus", A, 15.0, 75.0),
    row("claude-3-haiku", A, 0.25, 1.25),
    // OpenAI
    row("gpt-5.1", O, 1.25, 10.0),
    row("gpt-5", O, 1.25, 10.0),
    row("gpt-5-mini", O, 0.25, 2.0),
    row("gpt-5-nano", O, 0.05, 0.40),
    row("gpt-4.1", O, 2.0, 8.0),
    row("gpt-4.1-mini", O, 0.40, 1.60),
    row("gpt-4.1-nano", O, 0.10, 0.40),
    row("gpt-4o", O, 2.50, 10.0),
    row("gpt-4o-mini", O, 0.15, 0.60),
    row("o3", O, 2.0, 8.0),
    row("o3-pro", O, 20.0, 80.0),
    row("o3-mini", O, 1.10, 4.40),
    row("o4-mini", O, 1.10, 4.40),
    row("o1", O, 15.0, 60.0),
    row("o1-mini", O, 1.10, 4.40),
    row("gpt-4-turbo", O, 10.0, 30.0),
    row("gpt-4", O, 30.0, 60.0),
    row("gpt-3.5-turbo", O, 0.50, 1.50),
    // Google Gemini
    row("gemini-3-pro", G, 2.0, 12.0),
    row("gemini-2.5-pro", G, 1.25, 10.0),
    row("gemini-2.5-flash", G, 0.30, 2.50),
    row("gemini-2.5-flash-lite", G, 0.10, 0.40),
    row("gemini-2.0-flash", G, 0.10, 0.40),
    row("gemini-2.0-flash-lite", G, 0.075, 0.30),
    row("gemini-1.5-pro", G, 1.25, 5.0),
    row("gemini-1.5-flash", G, 0.075, 0.30),
];

/// Lower case, without a provider prefix (`anthropic/`, `models/`), an `@version` tag or a
/// `-latest` suffix.
fn normalize(model: &str) -> String {
    let mut name = model.trim().to_ascii_lowercase();
    if let Some((_, rest)) = name.rsplit_once('/') {
        name = rest.to_string();
    }
    if let Some((head, _)) = name.split_once('@') {
        name = head.to_string();
    }
    if let Some(head) = name.strip_suffix("-latest") {
        name = head.to_string();
    }
    name
}

/// The table entry for `model` among `entries`: an exact match of the normalized name, or else
/// the longest entry that the name extends with `-` (so `gpt-4o-mini-2024-07-18` finds
/// `gpt-4o-mini`, not `gpt-4o`).
fn find<'a, T>(entries: &'a [T], name_of: impl Fn(&T) -> &str, model: &str) -> Option<&'a T> {
    let name = normalize(model);
    if name.is_empty() {
        return None;
    }
    let mut best: Option<(&T, usize)> = None;
    for entry in entries {
        let key = name_of(entry);
        let matches = name == key
            || (name.len() > key.len()
                && name.starts_with(key)
                && name.as_bytes()[key.len()] == b'-');
        if matches && best.is_none_or(|(_, len)| key.len() > len) {
            best = Some((entry, key.len()));
        }
    }
    best.map(|(e, _)| e)
}

/// The shipped entry for `model`, tolerating dated and prefixed names.
pub fn lookup(model: &str) -> Option<&'static ModelPrice> {
    find(SHIPPED, |e| e.model, model)
}

/// USD for one request to `model` with these token counts, from the shipped table; `None` when
/// the model is not in it.
pub fn cost(model: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
    lookup(model).map(|e| e.price.cost(input_tokens, output_tokens))
}

/// The shipped prices plus a deployment's own: models added or re-priced in configuration are
/// looked up first.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    custom: Vec<(String, Price)>,
}

impl PriceTable {
    /// The shipped table alone.
    pub fn shipped() -> Self {
        Self::default()
    }

    /// Adds or replaces the price of `model` (matched with the same tolerance as the shipped
    /// names).
    pub fn with_price(mut self, model: impl AsRef<str>, price: Price) -> Self {
        let name = normalize(model.as_ref());
        self.custom.retain(|(n, _)| *n != name);
        self.custom.push((name, price));
        self
    }

    /// The price of `model`: a custom entry, else the shipped one.
    pub fn price(&self, model: &str) -> Option<Price> {
        find(&self.custom, |(n, _)| n.as_str(), model)
            .map(|(_, p)| *p)
            .or_else(|| lookup(model).map(|e| e.price))
    }

    /// USD for one request; `None` when the model has no price.
    pub fn cost(&self, model: &str, input_tokens: u64, output_tokens: u64) -> Option<f64> {
        self.price(model)
            .map(|p| p.cost(input_tokens, output_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dated_and_prefixed_names_find_their_model() {
        for (name, canonical) in [
            ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
            ("claude-sonnet-4-20250514", "claude-sonnet-4"),
            ("claude-3-5-sonnet@20240620", "claude-3-5-sonnet"),
            ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
            ("anthropic/claude-opus-4-1", "claude-opus-4-1"),
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("openai/gpt-5-mini-2025-08-07", "gpt-5-mini"),
            ("o3-mini-2025-01-31", "o3-mini"),
            ("models/gemini-2.5-flash-lite", "gemini-2.5-flash-lite"),
            ("gemini-2.5-pro-preview-06-05", "gemini-2.5-pro"),
            ("GPT-4.1", "gpt-4.1"),
        ] {
            assert_eq!(lookup(name).map(|e| e.model), Some(canonical), "{name}");
        }
    }

    #[test]
    fn unknown_names_have_no_price() {
        for name in ["", "llama-3-70b", "gpt", "claude", "gpt-4ox"] {
            assert_eq!(cost(name, 1, 1), None, "{name}");
        }
    }

    #[test]
    fn cost_is_per_million_tokens() {
        let c = cost("claude-sonnet-4-5", 1_000_000, 1_000_000).unwrap();
        assert!((c - 18.0).abs() < 1e-9);
        let c = cost("gpt-4o-mini", 2_000, 500).unwrap();
        assert!((c - (2_000.0 * 0.15 + 500.0 * 0.60) / 1e6).abs() < 1e-12);
    }

    #[test]
    fn every_shipped_model_has_its_family_by_name() {
        for e in SHIPPED {
            assert_eq!(Family::of_model(e.model), Some(e.family), "{}", e.model);
            assert!(e.price.input_per_mtok > 0.0 && e.price.output_per_mtok > 0.0);
            assert_eq!(lookup(e.model).map(|f| f.model), Some(e.model));
        }
        assert_eq!(Family::of_model("o3"), Some(Family::OpenAi));
        assert_eq!(Family::of_model("olmo-7b"), None);
    }

    #[test]
    fn custom_prices_override_the_shipped_ones() {
        let table = PriceTable::shipped()
            .with_price("claude-haiku-4-5", Price::new(2.0, 2.0))
            .with_price("my-local-model", Price::new(0.0, 0.0));
        assert_eq!(
            table.price("claude-haiku-4-5-20251001"),
            Some(Price::new(2.0, 2.0))
        );
        assert_eq!(table.cost("my-local-model", 10, 10), Some(0.0));
        assert_eq!(table.price("gpt-4o"), lookup("gpt-4o").map(|e| e.price));
        assert_eq!(table.price("nope"), None);
    }
}
