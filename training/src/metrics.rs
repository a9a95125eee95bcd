//! Classification metrics: confusion matrix, per-tier precision/recall/F1, macro-F1, the rate of
//! hard prompts sent to the easy tier, and calibration.

use serde::Serialize;
use triage::classifier::{softmax, Tier};

#[derive(Debug, Clone, Serialize)]
pub struct Metrics {
    pub n: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// Over the tiers present in the set.
    pub macro_f1_present: f64,
    pub per_tier: Vec<TierScore>,
    /// Rows: true tier; columns: predicted tier (easy, medium, hard, needs_info).
    pub confusion: [[usize; 4]; 4],
    /// Share of truly hard prompts labelled easy.
    pub hard_as_easy: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TierScore {
    pub tier: &'static str,
    pub support: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

pub fn score(truth: &[usize], pred: &[usize]) -> Metrics {
    let mut confusion = [[0usize; 4]; 4];
    for (&t, &p) in truth.iter().zip(pred) {
        confusion[t][p] += 1;
    }
    let n = truth.len();
    let correct: usize = (0..4).map(|i| confusion[i][i]).sum();
    let mut per_tier = Vec::new();
    for (i, tier) in Tier::ALL.iter().enumerate() {
        let support: usize = confusion[i].iter().sum();
        let predicted: usize = (0..4).map(|r| confusion[r][i]).sum();
        let tp = confusion[i][i] as f64;
        let precision = if predicted > 0 {
            tp / predicted as f64
        } else {
            0.0
        };
        let recall = if support > 0 {
            tp / support as f64
        } else {
            0.0
        };
        let f1 = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        per_tier.push(TierScore {
            tier: tier.as_str(),
            support,
            precision,
            recall,
            f1,
        });
    }
    let present: Vec<&TierScore> = per_tier.iter().filter(|s| s.support > 0).collect();
    let hard_total: usize = confusion[2].iter().sum();
    Metrics {
        n,
        accuracy: if n > 0 {
            correct as f64 / n as f64
        } else {
            0.0
        },
        macro_f1: per_tier.iter().map(|s| s.f1).sum::<f64>() / 4.0,
        macro_f1_present: present.iter().map(|s| s.f1).sum::<f64>() / present.len().max(1) as f64,
        per_tier,
        confusion,
        hard_as_easy: if hard_total > 0 {
            confusion[2][0] as f64 / hard_total as f64
        } else {
            0.0
        },
    }
}

pub fn argmax(p: &[f32; 4]) -> usize {
    let mut best = 0;
    for i in 1..4 {
        if p[i] > p[best] {
            best = i;
        }
    }
    best
}

/// Mean negative log-likelihood of the true labels at `temperature`.
pub fn nll(logits: &[[f32; 4]], truth: &[usize], temperature: f32) -> f64 {
    let total: f64 = logits
        .iter()
        .zip(truth)
        .map(|(l, &t)| -(softmax(*l, temperature)[t].max(1e-12) as f64).ln())
        .sum();
    total / logits.len().max(1) as f64
}

/// Expected calibration error over 10 confidence bins.
pub fn ece(logits: &[[f32; 4]], truth: &[usize], temperature: f32) -> f64 {
    let mut bins = [(0f64, 0f64, 0usize); 10];
    for (l, &t) in logits.iter().zip(truth) {
        let p = softmax(*l, temperature);
        let k = argmax(&p);
        let conf = p[k] as f64;
        let b = ((conf * 10.0) as usize).min(9);
        bins[b].0 += conf;
        bins[b].1 += if k == t { 1.0 } else { 0.0 };
        bins[b].2 += 1;
    }
    let n = logits.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.2 > 0)
        .map(|b| (b.2 as f64 / n) * ((b.0 - b.1) / b.2 as f64).abs())
        .sum()
}

/// The temperature (0.5 to 5) that minimises NLL on held-out logits.
pub fn fit_temperature(logits: &[[f32; 4]], truth: &[usize]) -> f32 {
    let mut best = (f64::MAX, 1.0f32);
    let mut t = 0.5f32;
    while t <= 5.0 {
        let v = nll(logits, truth, t);
        if v < best.0 {
            best = (v, t);
        }
        t += 0.05;
    }
    best.1
}

/// Markdown table of a confusion matrix.
pub fn confusion_table(m: &Metrics) -> String {
    let mut s = String::from(
        "| true \\ predicted | easy | medium | hard | needs_info |\n|---|---:|---:|---:|---:|\n",
    );
    for (i, tier) in Tier::ALL.iter().enumerate() {
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            tier, m.confusion[i][0], m.confusion[i][1], m.confusion[i][2], m.confusion[i][3]
        ));
    }
    s
}

/// Markdown table of per-tier scores.
pub fn tier_table(m: &Metrics) -> String {
    let mut s =
        String::from("| tier | support | precision | recall | F1 |\n|---|---:|---:|---:|---:|\n");
    for t in &m.per_tier {
        s.push_str(&format!(
            "| {} | {} | {:.3} | {:.3} | {:.3} |\n",
            t.tier, t.support, t.precision, t.recall, t.f1
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perfect_and_confused_scores() {
        let m = score(&[0, 1, 2, 3], &[0, 1, 2, 3]);
        assert_eq!(m.accuracy, 1.0);
        assert_eq!(m.macro_f1, 1.0);
        let m = score(&[2, 2, 2, 2], &[0, 2, 2, 2]);
        assert_eq!(m.hard_as_easy, 0.25);
        assert!(m.macro_f1 < 1.0);
    }

    #[test]
    fn temperature_softens_overconfident_logits() {
        // Confident and wrong half the time: the best temperature is above 1.
        let logits = vec![[5.0, 0.0, 0.0, 0.0]; 10];
        let truth: Vec<usize> = (0..10).map(|i| if i % 2 == 0 { 0 } else { 1 }).collect();
        assert!(fit_temperature(&logits, &truth) > 1.0);
    }
}
