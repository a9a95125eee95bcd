//! Evaluates the saved model (exactly as it ships: f16 weights widened to f32) and writes its
//! card, `README.md`, and `metrics.json` into the model directory.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::Result;
use candle_core::Device;
use serde_json::json;
use triage::classifier::{Classifier, ModelConfig, Prompt, Tier};

use crate::data::{Example, Row};
use crate::train::TrainArgs;
use crate::{baseline, metrics};

pub struct CardInput<'a> {
    pub args: &'a TrainArgs,
    pub rows: &'a [Row],
    pub config: &'a ModelConfig,
    pub val: &'a [Example],
    pub val_logits: &'a [[f32; 4]],
    pub test: &'a [Example],
    pub heldout: &'a [Example],
    pub best_epoch: usize,
    /// Validation macro-F1 of the weights written.
    pub best_f1: f64,
    pub train_secs: f64,
    pub train_len: usize,
    /// Rows from `--pool` among the `train_len`.
    pub pool_len: usize,
}

struct Eval {
    model: metrics::Metrics,
    thresholded: metrics::Metrics,
    baseline: metrics::Metrics,
    nll: (f64, f64),
    ece: (f64, f64),
}

fn evaluate(c: &Classifier, set: &[Example], temperature: f32) -> Result<(Eval, Vec<usize>)> {
    let encoded: Vec<_> = set.iter().map(|e| e.encoded.clone()).collect();
    let logits = c.logits(&encoded)?;
    let truth: Vec<usize> = set.iter().map(|e| e.label).collect();
    let pred: Vec<usize> = logits.iter().map(metrics::argmax).collect();
    let thresholded: Vec<usize> = logits
        .iter()
        .zip(&encoded)
        .map(|(l, e)| {
            triage::classifier::Prediction::from_logits(*l, temperature, c.threshold(), e)
                .tier
                .index()
        })
        .collect();
    let base: Vec<usize> = set
        .iter()
        .map(|e| baseline::classify(&e.prompt.text).index())
        .collect();
    Ok((
        Eval {
            model: metrics::score(&truth, &pred),
            thresholded: metrics::score(&truth, &thresholded),
            baseline: metrics::score(&truth, &base),
            nll: (
                metrics::nll(&logits, &truth, 1.0),
                metrics::nll(&logits, &truth, temperature),
            ),
            ece: (
                metrics::ece(&logits, &truth, 1.0),
                metrics::ece(&logits, &truth, temperature),
            ),
        },
        pred,
    ))
}

/// Surface changes that must not change the tier: if the model flips on them, it learned a
/// dataset's style rather than the work asked for.
type Perturbation = (&'static str, fn(&str) -> String);

const PERTURBATIONS: &[Perturbation] = &[
    ("toggle trailing '?'", |t| {
        t.strip_suffix('?')
            .map(str::to_string)
            .unwrap_or_else(|| format!("{t}?"))
    }),
    ("strip LaTeX '$'", |t| t.replace('$', "")),
    ("append 'Answer:'", |t| format!("{t}\nAnswer:")),
    ("prefix persona", |t| {
        format!("I want you to act as a helpful expert. {t}")
    }),
    ("prefix 'Hi! Quick question.'", |t| {
        format!("Hi! Quick question. {t}")
    }),
];

fn flip_rates(c: &Classifier, set: &[Example]) -> Result<Vec<(String, f64, usize)>> {
    let sample: Vec<&Example> = set.iter().step_by((set.len() / 1500).max(1)).collect();
    let base: Vec<Prompt> = sample.iter().map(|e| e.prompt.clone()).collect();
    let base_pred = c.classify_prompts(&base)?;
    let mut out = Vec::new();
    for (name, f) in PERTURBATIONS {
        let changed: Vec<Prompt> = base
            .iter()
            .map(|p| Prompt {
                text: f(&p.text),
                context: p.context.clone(),
            })
            .collect();
        let pred = c.classify_prompts(&changed)?;
        let flips = base_pred
            .iter()
            .zip(&pred)
            .filter(|(a, b)| a.top_tier != b.top_tier)
            .count();
        out.push((
            name.to_string(),
            flips as f64 / sample.len() as f64,
            sample.len(),
        ));
    }
    Ok(out)
}

fn latency(c: &Classifier) -> Result<Vec<(usize, usize, f64, f64)>> {
    let mut out = Vec::new();
    for target in [16usize, 64, 256] {
        // Common words that are one token each.
        let words = [
            "the", "cat", "sat", "on", "a", "mat", "and", "then", "ran", "home",
        ];
        let mut text = String::new();
        let mut n = 0;
        while n + 2 < target {
            text.push_str(words[n % words.len()]);
            text.push(' ');
            n += 1;
        }
        let p = [Prompt::text(text)];
        let tokens = c.encode_all(&p)?[0].ids.len();
        for _ in 0..5 {
            c.classify_prompts(&p)?;
        }
        let mut times: Vec<f64> = (0..100)
            .map(|_| {
                let t = Instant::now();
                let _ = c.classify_prompts(&p);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        out.push((target, tokens, times[50], times[95]));
    }
    Ok(out)
}

fn metrics_line(name: &str, m: &metrics::Metrics) -> String {
    format!(
        "| {name} | {} | {:.3} | {:.3} | {:.1}% |\n",
        m.n,
        m.macro_f1_present,
        m.accuracy,
        m.hard_as_easy * 100.0
    )
}

pub fn write(input: &CardInput) -> Result<()> {
    let out = &input.args.out;
    let c = Classifier::load(out, &Device::Cpu)?;
    let t = input.config.temperature;
    let (test, _) = evaluate(&c, input.test, t)?;
    let (held, _) = evaluate(&c, input.heldout, t)?;
    let mut per_source: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in input.heldout {
        per_source
            .entry(e.source.clone())
            .or_default()
            .push(e.clone());
    }
    let mut source_evals = Vec::new();
    for (source, set) in &per_source {
        source_evals.push((source.clone(), evaluate(&c, set, t)?.0));
    }
    let val_truth: Vec<usize> = input.val.iter().map(|e| e.label).collect();
    let flips = flip_rates(&c, &[input.test, input.heldout].concat())?;
    let speed = latency(&c)?;

    let mut s = String::new();
    let cfg = &input.config.encoder;
    writeln!(s, "# triage-v1: prompt difficulty classifier\n")?;
    writeln!(
        s,
        "Labels each prompt `easy`, `medium`, `hard` or `needs_info` (see TIERS.md). A {}-layer, {}-wide \
         BERT-style encoder ({} heads, FFN {}), mean pooling and a two-layer head, trained with candle-nn; \
         embeddings initialised from all-MiniLM-L6-v2 (Apache-2.0) projected to {} dimensions by PCA, word \
         table {}. Weights stored as f16, loaded as f32. Reads at most {} tokens: the prompt's first {} \
         and last {} when it is longer, plus up to {} tokens of earlier conversation as a second segment.{}\n",
        cfg.num_layers,
        cfg.hidden_size,
        cfg.num_heads,
        cfg.intermediate_size,
        cfg.hidden_size,
        if input.args.train_word_embeddings { "fine-tuned" } else { "frozen" },
        input.config.truncation.max_tokens,
        input.config.truncation.head_tokens,
        input.config.truncation.max_tokens - input.config.truncation.head_tokens - 2,
        input.config.truncation.context_tokens,
        if input.config.truncation.mark_line_breaks {
            " Each line break is read as a `\u{b6}` token (the tokenizer would drop it), so an \
             instruction followed by its material on the next lines reads apart from one that \
             only runs on."
        } else {
            ""
        },
    )?;
    writeln!(s, "## How it was made\n")?;
    writeln!(
        s,
        "```\n{}\n```\n",
        if input.args.command.is_empty() {
            "training/run"
        } else {
            &input.args.command
        }
    )?;
    let training = if input.args.average.is_empty() {
        format!(
            "{} epochs of AdamW (lr {}, batch {}, dropout {}), class-balanced loss; best epoch by \
             validation macro-F1: {}. Training took {:.0} s on {} training rows (CPU).",
            input.args.epochs,
            input.args.lr,
            input.args.batch,
            input.args.dropout,
            input.best_epoch,
            input.train_secs,
            input.train_len,
        )
    } else {
        format!(
            "Weights: the element-wise mean of the weights in {} (a model soup). No further \
             training; validation macro-F1 of the mean: {:.3}.",
            input
                .args
                .average
                .iter()
                .map(|p| format!("`{}`", p.display()))
                .collect::<Vec<_>>()
                .join(", "),
            input.best_f1,
        )
    };
    writeln!(
        s,
        "{training} Temperature fitted on the validation split: **{:.2}** (validation NLL {:.3} -> \
         {:.3}). Default confidence threshold: {} (below it the answer is `needs_info`).\n",
        t,
        metrics::nll(input.val_logits, &val_truth, 1.0),
        metrics::nll(input.val_logits, &val_truth, t),
        input.config.threshold
    )?;
    if input.args.teacher.is_some() {
        writeln!(
            s,
            "Distilled from all-MiniLM-L6-v2 fine-tuned on the tiers (`triage-train finetune-teacher`: \
             its top layers and a linear head trained on the same training rows, the lower layers kept). \
             Beside the tier loss, the student matches the tuned teacher's tier probabilities at \
             temperature {} (weight {}) and predicts {} sentence embedding of each training prompt \
             (cosine loss, weight {}, through a {} -> 384 projection that is dropped after training).\n",
            input.args.soft_temperature,
            input.args.soft_weight,
            if input.args.base_embeddings {
                "the stock MiniLM's"
            } else {
                "its"
            },
            input.args.distill_weight,
            cfg.hidden_size
        )?;
        if input.args.augment > 0 {
            writeln!(
                s,
                "Each training row also had {} perturbed {} (each word dropped with \
                 probability {}) that teach only through the tuned teacher's probabilities and \
                 embeddings of the copy, never the row's label.\n",
                input.args.augment,
                if input.args.augment == 1 {
                    "copy"
                } else {
                    "copies"
                },
                input.args.augment_drop
            )?;
        }
        if input.pool_len > 0 {
            writeln!(
                s,
                "{} more training rows came from the pool of rows the per-source caps left out \
                 (training groups only, never a held-out source); they too teach only through \
                 the tuned teacher's outputs.\n",
                input.pool_len
            )?;
        }
        if input.args.soft_needs_info_gold_only {
            writeln!(
                s,
                "The teacher's `needs_info` probability was kept only on rows labelled `needs_info`; \
                 on the others it was moved to the row's label.\n"
            )?;
        }
    } else if input.args.distill_weight > 0.0 {
        writeln!(
            s,
            "Distilled from all-MiniLM-L6-v2: beside the tier loss, the student predicts MiniLM's sentence \
             embedding of each training prompt (cosine loss, weight {}, through a {} -> 384 projection that \
             is dropped after training).\n",
            input.args.distill_weight, cfg.hidden_size
        )?;
    }

    writeln!(s, "## Data\n")?;
    writeln!(s, "Rows per source and tier (after mapping, deduplication and caps); `heldout` sources are never trained on.\n")?;
    let mut counts: BTreeMap<(String, String), [usize; 4]> = BTreeMap::new();
    for r in input.rows {
        let tier: Tier = r.tier.parse().map_err(anyhow::Error::msg)?;
        let split = if r.split == "heldout" {
            "heldout"
        } else {
            "train/val/test"
        };
        counts.entry((r.source.clone(), split.into())).or_default()[tier.index()] += 1;
    }
    writeln!(
        s,
        "| source | split | easy | medium | hard | needs_info |\n|---|---|---:|---:|---:|---:|"
    )?;
    let mut totals = [0usize; 4];
    for ((source, split), c) in &counts {
        writeln!(
            s,
            "| {source} | {split} | {} | {} | {} | {} |",
            c[0], c[1], c[2], c[3]
        )?;
        for i in 0..4 {
            totals[i] += c[i];
        }
    }
    writeln!(
        s,
        "| **all** | | {} | {} | {} | {} |\n",
        totals[0], totals[1], totals[2], totals[3]
    )?;

    writeln!(s, "## Quality\n")?;
    writeln!(s, "Macro-F1 over the tiers present in each set; `hard→easy` is the share of truly hard prompts labelled easy. \
        The baseline is the rule-based scorer in `training/src/baseline.rs` (length, code, reasoning and technical keywords, \
        as LiteLLM's complexity router scores them).\n")?;
    writeln!(
        s,
        "| set | rows | macro-F1 | accuracy | hard→easy |\n|---|---:|---:|---:|---:|"
    )?;
    s.push_str(&metrics_line("(a) random test split: model", &test.model));
    s.push_str(&metrics_line(
        "(a) random test split: model + threshold",
        &test.thresholded,
    ));
    s.push_str(&metrics_line(
        "(a) random test split: baseline",
        &test.baseline,
    ));
    s.push_str(&metrics_line("(b) held-out sources: model", &held.model));
    s.push_str(&metrics_line(
        "(b) held-out sources: model + threshold",
        &held.thresholded,
    ));
    s.push_str(&metrics_line(
        "(b) held-out sources: baseline",
        &held.baseline,
    ));
    for (source, e) in &source_evals {
        s.push_str(&metrics_line(&format!("(b) {source}: model"), &e.model));
        s.push_str(&metrics_line(
            &format!("(b) {source}: baseline"),
            &e.baseline,
        ));
    }
    writeln!(
        s,
        "\n### (a) Random test split\n\n{}\n{}",
        metrics::tier_table(&test.model),
        metrics::confusion_table(&test.model)
    )?;
    writeln!(
        s,
        "### (b) Held-out sources ({})\n\n{}\n{}",
        per_source.keys().cloned().collect::<Vec<_>>().join(", "),
        metrics::tier_table(&held.model),
        metrics::confusion_table(&held.model)
    )?;
    writeln!(
        s,
        "Baseline on the held-out sources:\n\n{}",
        metrics::confusion_table(&held.baseline)
    )?;
    writeln!(s, "### Calibration\n\n| set | NLL (T=1) | NLL (fitted T) | ECE (T=1) | ECE (fitted T) |\n|---|---:|---:|---:|---:|")?;
    writeln!(
        s,
        "| test | {:.3} | {:.3} | {:.3} | {:.3} |",
        test.nll.0, test.nll.1, test.ece.0, test.ece.1
    )?;
    writeln!(
        s,
        "| held-out | {:.3} | {:.3} | {:.3} | {:.3} |\n",
        held.nll.0, held.nll.1, held.ece.0, held.ece.1
    )?;
    writeln!(s, "### Style shortcuts\n\nShare of test and held-out prompts whose top tier changes under a surface edit that does not change the work:\n\n| edit | prompts | tier changed |\n|---|---:|---:|")?;
    for (name, rate, n) in &flips {
        writeln!(s, "| {name} | {n} | {:.1}% |", rate * 100.0)?;
    }
    writeln!(s, "\n## Speed\n\nSingle prompt, tokenising included, CPU, measured by the training run right after saving (`triage bench` measures more):\n\n| prompt tokens | tokens read | p50 ms | p95 ms |\n|---:|---:|---:|---:|")?;
    for (target, tokens, p50, p95) in &speed {
        writeln!(s, "| {target} | {tokens} | {p50:.2} | {p95:.2} |")?;
    }
    writeln!(s, "\n## Licence and sources\n\nThe embeddings derive from all-MiniLM-L6-v2 (Apache-2.0). The training data is read at training \
        time from public datasets listed in the data table (licences in the shared data's SOURCES.md; NQ-open and UMWP are share-alike) \
        and from prompts written for triage in `training/prompts/`. No training prompt is stored in this directory.")?;
    std::fs::write(out.join("README.md"), s)?;

    let m = json!({
        "test": {"model": test.model, "thresholded": test.thresholded, "baseline": test.baseline, "nll": test.nll, "ece": test.ece},
        "heldout": {"model": held.model, "thresholded": held.thresholded, "baseline": held.baseline, "nll": held.nll, "ece": held.ece},
        "heldout_sources": source_evals.iter().map(|(k, e)| (k.clone(), json!({"model": e.model, "baseline": e.baseline}))).collect::<BTreeMap<_, _>>(),
        "style_flip_rates": flips.iter().map(|(n, r, _)| (n.clone(), *r)).collect::<BTreeMap<_, _>>(),
        "latency_ms": speed.iter().map(|(target, t, p50, p95)| json!({"prompt_tokens": target, "tokens_read": t, "p50": p50, "p95": p95})).collect::<Vec<_>>(),
        "temperature": t,
        "best_epoch": input.best_epoch,
    });
    std::fs::write(
        out.join("metrics.json"),
        serde_json::to_string_pretty(&m)? + "\n",
    )?;
    eprintln!(
        "test macro-F1 {:.3} (baseline {:.3}); held-out macro-F1 {:.3} (baseline {:.3}), hard->easy {:.1}%",
        test.model.macro_f1_present,
        test.baseline.macro_f1_present,
        held.model.macro_f1_present,
        held.baseline.macro_f1_present,
        held.model.hard_as_easy * 100.0
    );
    for (source, e) in &source_evals {
        eprintln!(
            "  held-out {source}: acc {:.3} (baseline {:.3})",
            e.model.accuracy, e.baseline.accuracy
        );
    }
    Ok(())
}
