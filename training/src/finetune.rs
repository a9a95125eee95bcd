//! Fine-tunes all-MiniLM-L6-v2 itself on the tiers, to serve as a teacher whose tier logits the
//! student learns from (`triage-train train --teacher DIR --soft-weight W`).
//!
//! MiniLM is 30 times the student's cost, so only its top layers train: the embeddings and the
//! lower `--freeze` layers run once over every row, their hidden states are kept in memory, and
//! each step runs the trainable layers and a linear head over those. At the end the tuned
//! model's logits and sentence embeddings of every row are written to `DIR/outputs.safetensors`,
//! keyed as the frozen teacher's cache is.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use triage::classifier::{Mode, PromptTokenizer, TruncationConfig};

use crate::data::{encode_rows, read_rows, token_batch, Example, Rng};
use crate::teacher::{mean_pool, normalise, row_key, Teacher, DIM, LAYERS};
use crate::{metrics, train};

#[derive(Debug, Clone, clap::Args)]
pub struct FinetuneArgs {
    /// Labelled rows from build_data.py.
    #[arg(long, default_value = "training/work/data.jsonl")]
    pub data: PathBuf,
    /// all-MiniLM-L6-v2's directory (model.safetensors, tokenizer.json).
    #[arg(long)]
    pub base: PathBuf,
    /// Where to write the tuned weights and every row's outputs.
    #[arg(long, default_value = "training/work/teacher-tuned")]
    pub out: PathBuf,
    /// Layers (from the bottom) that stay as MiniLM has them; the rest train.
    #[arg(long, default_value_t = 3)]
    pub freeze: usize,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Peak learning rate of MiniLM's layers.
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// Peak learning rate of the new tier head.
    #[arg(long, default_value_t = 2e-3)]
    pub head_lr: f64,
    #[arg(long, default_value_t = 0.1)]
    pub dropout: f32,
    #[arg(long, default_value_t = 0.75)]
    pub class_weight_power: f32,
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    #[arg(long, default_value_t = 50)]
    pub log_every: usize,
    /// Train on at most this many rows (for quick experiments).
    #[arg(long)]
    pub max_train: Option<usize>,
}

/// Frozen hidden states of one set's rows, each `[tokens, 384]`.
struct States(Vec<Tensor>);

impl States {
    fn compute(t: &Teacher, set: &[Example], upto: usize, device: &Device) -> Result<Self> {
        let mut out: Vec<Option<Tensor>> = vec![None; set.len()];
        let mut order: Vec<usize> = (0..set.len()).collect();
        order.sort_by_key(|&i| set[i].encoded.ids.len());
        for chunk in order.chunks(32) {
            let batch = token_batch(set, chunk, device)?;
            let x = t.lower(&batch, upto, Mode::Infer)?.detach();
            for (row, &i) in chunk.iter().enumerate() {
                let len = set[i].encoded.ids.len();
                // A fresh tensor of this row alone: a view would keep the whole batch alive.
                let v: Vec<f32> = x.get(row)?.narrow(0, 0, len)?.flatten_all()?.to_vec1()?;
                out[i] = Some(Tensor::from_vec(v, (len, DIM), device)?);
            }
        }
        Ok(Self(
            out.into_iter().map(|t| t.expect("every row")).collect(),
        ))
    }

    /// The rows `idx`, zero-padded to the longest, and their keep mask.
    fn batch(&self, idx: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        let t = idx.iter().map(|&i| self.0[i].dims()[0]).max().unwrap_or(1);
        let mut xs = Vec::with_capacity(idx.len());
        let mut keep = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            let len = self.0[i].dims()[0];
            xs.push(self.0[i].pad_with_zeros(0, 0, t - len)?);
            keep.extend((0..t).map(|j| if j < len { 1f32 } else { 0.0 }));
        }
        Ok((
            Tensor::stack(&xs, 0)?,
            Tensor::from_vec(keep, (idx.len(), t), device)?,
        ))
    }
}

struct Tuned<'a> {
    teacher: &'a Teacher,
    head: candle_nn::Linear,
    from: usize,
}

impl Tuned<'_> {
    /// Pooled sentence vectors (unnormalised) and tier logits for the rows `idx` of `states`.
    fn forward(
        &self,
        states: &States,
        idx: &[usize],
        mode: Mode,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (x, keep) = states.batch(idx, device)?;
        let x = self.teacher.upper(x, &keep, self.from..LAYERS, mode)?;
        let pooled = mean_pool(&x, &keep)?;
        let dropped = match mode {
            Mode::Train { dropout } if dropout > 0.0 => candle_nn::ops::dropout(&pooled, dropout)?,
            _ => pooled.clone(),
        };
        let logits = self.head.forward(&dropped)?;
        Ok((pooled, logits))
    }

    /// Logits and normalised embeddings of every row of `states`.
    fn predict(&self, states: &States, device: &Device) -> Result<(Vec<[f32; 4]>, Vec<f32>)> {
        let n = states.0.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| states.0[i].dims()[0]);
        let mut logits = vec![[0f32; 4]; n];
        let mut emb = vec![0f32; n * DIM];
        for chunk in order.chunks(64) {
            let (pooled, l) = self.forward(states, chunk, Mode::Infer, device)?;
            let l: Vec<Vec<f32>> = l.to_vec2()?;
            let e: Vec<Vec<f32>> = normalise(&pooled)?.to_vec2()?;
            for ((&i, l), e) in chunk.iter().zip(l).zip(e) {
                logits[i] = [l[0], l[1], l[2], l[3]];
                emb[i * DIM..(i + 1) * DIM].copy_from_slice(&e);
            }
        }
        Ok((logits, emb))
    }
}

/// The tuned teacher in `dir` (as `run` wrote it) over `set`: each row's tier logits
/// `[n, 4]` and normalised sentence embedding `[n, 384]`, for rows its outputs file lacks.
pub fn tuned_predict(dir: &Path, set: &[Example], device: &Device) -> Result<(Tensor, Tensor)> {
    let bert = VarMap::new();
    let teacher = Teacher::new(VarBuilder::from_varmap(&bert, DType::F32, device))?;
    let path = dir.join("minilm.safetensors");
    bert.clone()
        .load(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    let heads = VarMap::new();
    let head = candle_nn::linear(
        DIM,
        4,
        VarBuilder::from_varmap(&heads, DType::F32, device).pp("head"),
    )?;
    let path = dir.join("head.safetensors");
    heads
        .clone()
        .load(&path)
        .with_context(|| format!("loading {}", path.display()))?;
    // The whole model runs here, so where the frozen part ends does not matter.
    let from = LAYERS / 2;
    let model = Tuned {
        teacher: &teacher,
        head,
        from,
    };
    let states = States::compute(&teacher, set, from, device)?;
    let (logits, emb) = model.predict(&states, device)?;
    let n = set.len();
    Ok((
        Tensor::from_vec(logits.concat(), (n, 4), device)?,
        Tensor::from_vec(emb, (n, DIM), device)?,
    ))
}

fn report(name: &str, set: &[Example], logits: &[[f32; 4]]) -> metrics::Metrics {
    let truth: Vec<usize> = set.iter().map(|e| e.label).collect();
    let pred: Vec<usize> = logits.iter().map(metrics::argmax).collect();
    let m = metrics::score(&truth, &pred);
    eprintln!(
        "  {name}: macro-F1 {:.4} (present {:.4}), accuracy {:.4}, hard→easy {:.1}%",
        m.macro_f1,
        m.macro_f1_present,
        m.accuracy,
        m.hard_as_easy * 100.0
    );
    m
}

/// Each `VarMap`'s variables by name, copied.
type Snapshot = Vec<BTreeMap<String, Tensor>>;

fn snapshot(maps: &[&VarMap]) -> Result<Snapshot> {
    maps.iter().map(|m| train::snapshot(m)).collect()
}

pub fn run(args: FinetuneArgs) -> Result<()> {
    if args.freeze >= LAYERS {
        bail!("--freeze must leave at least one of MiniLM's {LAYERS} layers to train");
    }
    if args.batch == 0 || args.epochs == 0 {
        bail!("--batch and --epochs must be at least 1");
    }
    let device = Device::Cpu;
    let mut rng = Rng::new(args.seed);
    let rows = read_rows(&args.data)?;
    let tokenizer = PromptTokenizer::from_file(
        &args.base.join("tokenizer.json"),
        TruncationConfig::default(),
    )?;
    let split = |name: &str| rows.iter().filter(|r| r.split == name).collect::<Vec<_>>();
    let mut train_rows = split("train");
    if let Some(n) = args.max_train {
        train_rows.truncate(n);
    }
    let sets: Vec<(&str, Vec<Example>)> = vec![
        ("train", encode_rows(&train_rows, &tokenizer)?),
        ("val", encode_rows(&split("val"), &tokenizer)?),
        ("test", encode_rows(&split("test"), &tokenizer)?),
        ("held-out", encode_rows(&split("heldout"), &tokenizer)?),
    ];
    let train = &sets[0].1;
    let class_weight = train::class_weights(train, args.class_weight_power);

    let bert = VarMap::new();
    let mut bert_mut = bert.clone();
    let teacher = Teacher::new(VarBuilder::from_varmap(&bert, DType::F32, &device))?;
    bert_mut.load(args.base.join("model.safetensors"))?;
    let heads = VarMap::new();
    let head = candle_nn::linear(
        DIM,
        4,
        VarBuilder::from_varmap(&heads, DType::F32, &device).pp("head"),
    )?;
    let model = Tuned {
        teacher: &teacher,
        head,
        from: args.freeze,
    };

    let t0 = Instant::now();
    let states: Vec<States> = sets
        .iter()
        .map(|(_, set)| States::compute(&teacher, set, args.freeze, &device))
        .collect::<Result<_>>()?;
    let tokens: usize = states.iter().flat_map(|s| &s.0).map(|t| t.dims()[0]).sum();
    eprintln!(
        "frozen layers 0..{} over {} rows ({tokens} tokens) in {:.0} s",
        args.freeze,
        states.iter().map(|s| s.0.len()).sum::<usize>(),
        t0.elapsed().as_secs_f64()
    );

    let trainable: Vec<_> = {
        let data = bert.data().lock().expect("varmap lock");
        data.iter()
            .filter(|(name, _)| {
                (args.freeze..LAYERS).any(|i| name.starts_with(&format!("encoder.layer.{i}.")))
            })
            .map(|(_, v)| v.clone())
            .collect()
    };
    eprintln!("{} of MiniLM's tensors train", trainable.len());
    let params = |lr| ParamsAdamW {
        lr,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut opt = AdamW::new(trainable, params(args.lr))?;
    let mut head_opt = AdamW::new(heads.all_vars(), params(args.head_lr))?;
    let steps_per_epoch = train.len().div_ceil(args.batch);
    let total_steps = steps_per_epoch * args.epochs;
    let warmup = (total_steps / 10).max(1);
    let mut step = 0usize;
    let mut best: Option<(f64, usize, Snapshot)> = None;
    let t_train = Instant::now();
    for epoch in 0..args.epochs {
        let mut epoch_loss = 0f64;
        let batches = train::make_batches(train, args.batch, &mut rng);
        for b in &batches {
            let scale = if step < warmup {
                (step + 1) as f64 / warmup as f64
            } else {
                1.0 - (step - warmup) as f64 / (total_steps - warmup).max(1) as f64
            }
            .max(0.02);
            opt.set_learning_rate(args.lr * scale);
            head_opt.set_learning_rate(args.head_lr * scale);
            let labels: Vec<u32> = b.iter().map(|&i| train[i].label as u32).collect();
            let weights: Vec<f32> = b
                .iter()
                .map(|&i| train[i].weight * class_weight[train[i].label])
                .collect();
            let mode = Mode::Train {
                dropout: args.dropout,
            };
            let (_, logits) = model.forward(&states[0], b, mode, &device)?;
            let loss = train::weighted_nll(
                &logits,
                &Tensor::new(labels.as_slice(), &device)?,
                &Tensor::new(weights.as_slice(), &device)?,
            )?;
            let grads = loss.backward()?;
            opt.step(&grads)?;
            head_opt.step(&grads)?;
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
        eprintln!(
            "epoch {}: train loss {:.4}",
            epoch + 1,
            epoch_loss / batches.len() as f64
        );
        let (val, _) = model.predict(&states[1], &device)?;
        let m = report("val", &sets[1].1, &val);
        let (held, _) = model.predict(&states[3], &device)?;
        report("held-out", &sets[3].1, &held);
        if best.as_ref().is_none_or(|(f1, _, _)| m.macro_f1 > *f1) {
            best = Some((m.macro_f1, epoch + 1, snapshot(&[&bert, &heads])?));
        }
    }
    let (f1, epoch, snap) = best.ok_or_else(|| anyhow::anyhow!("no epochs ran"))?;
    for (map, snap) in [&bert, &heads].into_iter().zip(&snap) {
        for (name, t) in snap {
            map.clone().set_one(name, t)?;
        }
    }
    eprintln!("best epoch {epoch} (val macro-F1 {f1:.4})");

    std::fs::create_dir_all(&args.out)?;
    let mut keys = Vec::new();
    let mut all_logits = Vec::new();
    let mut all_emb = Vec::new();
    for ((name, set), states) in sets.iter().zip(&states) {
        let (logits, emb) = model.predict(states, &device)?;
        let m = report(name, set, &logits);
        if *name != "train" {
            eprintln!("{}", metrics::confusion_table(&m));
            let mut by_source: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
            for (e, l) in set.iter().zip(&logits) {
                let c = by_source.entry(e.source.as_str()).or_default();
                c.0 += usize::from(metrics::argmax(l) == e.label);
                c.1 += 1;
            }
            for (source, (right, n)) in by_source {
                eprintln!(
                    "    {source}: accuracy {:.3} of {n}",
                    right as f64 / n as f64
                );
            }
        }
        keys.extend(set.iter().map(row_key));
        all_logits.extend(logits.into_iter().flatten());
        all_emb.extend(emb);
    }
    let n = keys.len();
    let tensors: HashMap<String, Tensor> = [
        ("keys", Tensor::from_vec(keys, n, &Device::Cpu)?),
        (
            "logits",
            Tensor::from_vec(all_logits, (n, 4), &Device::Cpu)?,
        ),
        (
            "embeddings",
            Tensor::from_vec(all_emb, (n, DIM), &Device::Cpu)?,
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&tensors, args.out.join("outputs.safetensors"))?;
    bert.save(args.out.join("minilm.safetensors"))?;
    heads.save(args.out.join("head.safetensors"))?;
    eprintln!(
        "wrote {} ({n} rows' logits and embeddings) after {:.0} s of training",
        args.out.display(),
        t_train.elapsed().as_secs_f64()
    );
    Ok(())
}
