//! The labelled rows written by `build_data.py`, tokenised for training and evaluation.

use std::borrow::Borrow;
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::Device;
use serde::Deserialize;
use triage::classifier::{Encoded, Prompt, PromptTokenizer, Tier, TokenBatch};

/// One line of `data.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Row {
    pub text: String,
    #[serde(default)]
    pub context: String,
    pub tier: String,
    pub source: String,
    pub split: String,
    #[serde(default = "one")]
    pub weight: f32,
}

fn one() -> f32 {
    1.0
}

/// A tokenised row.
#[derive(Debug, Clone)]
pub struct Example {
    pub encoded: Encoded,
    pub label: usize,
    pub weight: f32,
    pub source: String,
    pub prompt: Prompt,
}

/// The examples at `idx`, padded into one batch.
pub fn token_batch<E: Borrow<Example>>(
    examples: &[E],
    idx: &[usize],
    device: &Device,
) -> Result<TokenBatch> {
    let rows: Vec<(&[u32], &[u32])> = idx
        .iter()
        .map(|&i| {
            let e = &examples[i].borrow().encoded;
            (e.ids.as_slice(), e.type_ids.as_slice())
        })
        .collect();
    Ok(TokenBatch::new(&rows, device)?)
}

pub fn read_rows(path: &Path) -> Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "reading {} (run training/build_data.py first)",
            path.display()
        )
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: bad row", path.display(), i + 1))?;
        rows.push(row);
    }
    if rows.is_empty() {
        bail!("{} has no rows", path.display());
    }
    Ok(rows)
}

pub fn encode_rows(rows: &[&Row], tokenizer: &PromptTokenizer) -> Result<Vec<Example>> {
    rows.iter()
        .map(|r| {
            let tier: Tier = r.tier.parse().map_err(anyhow::Error::msg)?;
            let prompt = Prompt {
                text: r.text.clone(),
                context: r.context.clone(),
            };
            Ok(Example {
                encoded: tokenizer.encode(&prompt)?,
                label: tier.index(),
                weight: r.weight,
                source: r.source.clone(),
                prompt,
            })
        })
        .collect()
}

/// A small deterministic generator (xorshift64*), so runs repeat without a `rand` dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// A standard normal sample (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-7);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
    }
}
