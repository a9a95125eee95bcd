//! The teacher: all-MiniLM-L6-v2 itself (a post-LayerNorm BERT, 6 x 384), run once over the
//! labelled rows to give each prompt its sentence embedding (mean-pooled, L2-normalised, as
//! sentence-transformers computes it). The student learns to predict these embeddings beside
//! its tiers, which carries MiniLM's sense of what prompts mean into a model 30 times cheaper.
//!
//! The embeddings are cached under `training/work/`, keyed by a hash of each row's token ids,
//! so a later run computes only rows it has not seen.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{linear, Embedding, Linear, VarBuilder};
use triage::classifier::Mode;

use crate::data::Example;

/// Width of MiniLM's sentence embeddings.
pub const DIM: usize = 384;
const HEADS: usize = 12;
pub const LAYERS: usize = 6;
const FFN: usize = 1536;
const EPS: f64 = 1e-12;

/// A LayerNorm that trains: candle's fused kernel (used when serving) has no backward pass, so
/// training composes it from basic ops.
struct Norm {
    weight: Tensor,
    bias: Tensor,
}

impl Norm {
    fn load(vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            weight: vb.get_with_hints(DIM, "weight", candle_nn::Init::Const(1.0))?,
            bias: vb.get_with_hints(DIM, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> candle_core::Result<Tensor> {
        if mode == Mode::Infer {
            return candle_nn::ops::layer_norm(x, &self.weight, &self.bias, EPS as f32);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        centred
            .broadcast_div(&(var + EPS)?.sqrt()?)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: Norm,
    up: Linear,
    down: Linear,
    out_norm: Norm,
}

/// all-MiniLM-L6-v2: serves (fused kernels) and, loaded into a `VarMap`, fine-tunes.
pub struct Teacher {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    norm: Norm,
    layers: Vec<Layer>,
}

fn dropout(x: Tensor, mode: Mode) -> candle_core::Result<Tensor> {
    match mode {
        Mode::Train { dropout } if dropout > 0.0 => candle_nn::ops::dropout(&x, dropout),
        _ => Ok(x),
    }
}

impl Teacher {
    /// MiniLM's weights, read-only, from its `model.safetensors`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let path = dir.join("model.safetensors");
        // SAFETY: the file is not modified while mapped (it is a downloaded package's data).
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, device) }
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(Self::new(vb)?)
    }

    /// The model on `vb`, with MiniLM's variable names.
    pub fn new(vb: VarBuilder) -> candle_core::Result<Self> {
        let emb = vb.pp("embeddings");
        let layers = (0..LAYERS)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                Ok(Layer {
                    query: linear(DIM, DIM, a.pp("self.query"))?,
                    key: linear(DIM, DIM, a.pp("self.key"))?,
                    value: linear(DIM, DIM, a.pp("self.value"))?,
                    attn_out: linear(DIM, DIM, a.pp("output.dense"))?,
                    attn_norm: Norm::load(a.pp("output.LayerNorm"))?,
                    up: linear(DIM, FFN, l.pp("intermediate.dense"))?,
                    down: linear(FFN, DIM, l.pp("output.dense"))?,
                    out_norm: Norm::load(l.pp("output.LayerNorm"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            word: candle_nn::embedding(30522, DIM, emb.pp("word_embeddings"))?,
            position: candle_nn::embedding(512, DIM, emb.pp("position_embeddings"))?,
            token_type: candle_nn::embedding(2, DIM, emb.pp("token_type_embeddings"))?,
            norm: Norm::load(emb.pp("LayerNorm"))?,
            layers,
        })
    }

    /// Hidden states `[batch, tokens, 384]` after the embeddings and the first `upto` layers.
    pub fn lower(
        &self,
        batch: &triage::classifier::TokenBatch,
        upto: usize,
        mode: Mode,
    ) -> Result<Tensor> {
        let t = batch.ids.dim(1)?;
        let positions = Tensor::arange(0u32, t as u32, batch.ids.device())?;
        let x = self
            .word
            .forward(&batch.ids)?
            .broadcast_add(&self.position.forward(&positions)?)?
            .add(&self.token_type.forward(&batch.type_ids)?)?;
        let x = dropout(self.norm.forward(&x, mode)?, mode)?;
        self.upper(x, &batch.keep, 0..upto, mode)
    }

    /// Runs `layers` over hidden states `x`; `keep` (`[batch, tokens]`, 1 for real tokens)
    /// masks the padding.
    pub fn upper(
        &self,
        mut x: Tensor,
        keep: &Tensor,
        layers: std::ops::Range<usize>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let mask = ((keep.ones_like()? - keep)? * -10_000.0)?.reshape((b, 1, 1, t))?;
        let hd = DIM / HEADS;
        let heads = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, HEADS, hd))?.transpose(1, 2)?.contiguous()
        };
        for l in &self.layers[layers] {
            let q = heads(l.query.forward(&x)?)?;
            let k = heads(l.key.forward(&x)?)?;
            let v = heads(l.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? / (hd as f64).sqrt())?.broadcast_add(&mask)?;
            let probs = match mode {
                Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
                Mode::Train { .. } => candle_nn::ops::softmax(&scores, D::Minus1)?,
            };
            let probs = dropout(probs, mode)?;
            let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, DIM))?;
            let attn = dropout(l.attn_out.forward(&ctx)?, mode)?;
            x = l.attn_norm.forward(&(attn + &x)?, mode)?;
            let h = l.up.forward(&x)?.gelu_erf()?;
            let h = dropout(l.down.forward(&h)?, mode)?;
            x = l.out_norm.forward(&(h + &x)?, mode)?;
        }
        Ok(x)
    }

    /// Normalised sentence embeddings, `[batch, 384]`, for a padded batch.
    pub fn embed(&self, batch: &triage::classifier::TokenBatch) -> Result<Tensor> {
        let x = self.lower(batch, LAYERS, Mode::Infer)?;
        normalise(&mean_pool(&x, &batch.keep)?)
    }
}

/// The mean of `x` (`[batch, tokens, d]`) over the tokens `keep` marks.
pub fn mean_pool(x: &Tensor, keep: &Tensor) -> Result<Tensor> {
    let keep = keep.unsqueeze(2)?;
    Ok(x.broadcast_mul(&keep)?
        .sum(1)?
        .broadcast_div(&keep.sum(1)?.clamp(1.0, f64::MAX)?)?)
}

/// Rows of `x` scaled to unit length.
pub fn normalise(x: &Tensor) -> Result<Tensor> {
    let norms = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-9, f64::MAX)?;
    Ok(x.broadcast_div(&norms)?)
}

/// The cache key of a row: a hash of its token ids and segment ids.
pub fn row_key(e: &Example) -> i64 {
    let mut hasher = DefaultHasher::new();
    e.encoded.ids.hash(&mut hasher);
    e.encoded.type_ids.hash(&mut hasher);
    hasher.finish() as i64
}

/// The teacher's embedding of every example, `[examples.len(), 384]`. Embeddings are cached
/// in `cache_dir/teacher.safetensors` per distinct token sequence, so a run recomputes only
/// the rows it has not seen before.
pub fn embeddings(
    base: &Path,
    cache_dir: &Path,
    examples: &[&Example],
    device: &Device,
) -> Result<Tensor> {
    let key = |e: &Example| row_key(e);
    let cache = cache_dir.join("teacher.safetensors");
    let mut known: HashMap<i64, Vec<f32>> = HashMap::new();
    if let Ok(t) = candle_core::safetensors::load(&cache, &Device::Cpu) {
        if let (Some(keys), Some(emb)) = (t.get("keys"), t.get("embeddings")) {
            let keys: Vec<i64> = keys.to_vec1()?;
            let emb: Vec<Vec<f32>> = emb.to_vec2()?;
            known.extend(keys.into_iter().zip(emb));
        }
    }
    let keys: Vec<i64> = examples.iter().map(|e| key(e)).collect();
    // Each distinct sequence once (duplicates are not adjacent once sorted by length).
    let mut queued = std::collections::HashSet::new();
    let mut missing: Vec<usize> = (0..examples.len())
        .filter(|&i| !known.contains_key(&keys[i]) && queued.insert(keys[i]))
        .collect();
    missing.sort_by_key(|&i| examples[i].encoded.ids.len());
    eprintln!(
        "teacher embeddings: {} rows cached, {} to compute",
        examples.len() - missing.len(),
        missing.len()
    );
    if !missing.is_empty() {
        let teacher = Teacher::load(base, device)?;
        let t0 = Instant::now();
        for (n, chunk) in missing.chunks(32).enumerate() {
            let batch = crate::data::token_batch(examples, chunk, device)?;
            let emb: Vec<Vec<f32>> = teacher.embed(&batch)?.to_vec2()?;
            for (&i, v) in chunk.iter().zip(emb) {
                known.insert(keys[i], v);
            }
            if n % 100 == 99 {
                eprintln!(
                    "  teacher: {} of {} rows ({:.0} s)",
                    (n + 1) * 32,
                    missing.len(),
                    t0.elapsed().as_secs_f64()
                );
            }
        }
        let (all_keys, all_emb): (Vec<i64>, Vec<Vec<f32>>) =
            known.iter().map(|(k, v)| (*k, v.clone())).unzip();
        let n = all_keys.len();
        let flat: Vec<f32> = all_emb.into_iter().flatten().collect();
        std::fs::create_dir_all(cache_dir)?;
        let tensors: HashMap<String, Tensor> = [
            (
                "keys".to_string(),
                Tensor::from_vec(all_keys, n, &Device::Cpu)?,
            ),
            (
                "embeddings".to_string(),
                Tensor::from_vec(flat, (n, DIM), &Device::Cpu)?,
            ),
        ]
        .into_iter()
        .collect();
        candle_core::safetensors::save(&tensors, &cache)?;
        eprintln!(
            "teacher: {} rows in {:.0} s, cache {}",
            missing.len(),
            t0.elapsed().as_secs_f64(),
            cache.display()
        );
    }
    let mut out = Vec::with_capacity(examples.len() * DIM);
    for k in &keys {
        out.extend_from_slice(&known[k]);
    }
    Ok(Tensor::from_vec(out, (examples.len(), DIM), device)?)
}

/// A fine-tuned teacher's sentence embeddings (`[n, 384]`) and tier logits (`[n, 4]`) of
/// `examples`, from the `outputs.safetensors` that `finetune-teacher` wrote in `dir`.
pub fn tuned_outputs(
    dir: &Path,
    examples: &[&Example],
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let path = dir.join("outputs.safetensors");
    let t = candle_core::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("loading {} (run finetune-teacher first)", path.display()))?;
    let get = |name: &str| {
        t.get(name)
            .with_context(|| format!("{} has no {name}", path.display()))
    };
    let keys: Vec<i64> = get("keys")?.to_vec1()?;
    let row: HashMap<i64, usize> = keys.into_iter().enumerate().map(|(i, k)| (k, i)).collect();
    let mut idx = Vec::with_capacity(examples.len());
    for e in examples {
        match row.get(&row_key(e)) {
            Some(&i) => idx.push(i as u32),
            None => anyhow::bail!(
                "{} has no outputs for the prompt {:?}: tune the teacher on this data again",
                path.display(),
                e.prompt.text.chars().take(60).collect::<String>()
            ),
        }
    }
    let idx = Tensor::new(idx.as_slice(), &Device::Cpu)?;
    let pick =
        |name: &str| -> Result<Tensor> { Ok(get(name)?.index_select(&idx, 0)?.to_device(device)?) };
    Ok((pick("embeddings")?, pick("logits")?))
}

/// Fits a linear tier classifier on the teacher's embeddings of the training rows and scores
/// it on the other splits: how much a frozen MiniLM knows about the tiers, to compare the
/// student with.
pub fn probe(
    train: (&Tensor, &[usize]),
    sets: &[(&str, &Tensor, &[usize])],
    class_weight: &[f32; 4],
    device: &Device,
) -> Result<()> {
    use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarMap};
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
    let head = linear(DIM, 4, vb)?;
    let mut opt = AdamW::new(
        varmap.all_vars(),
        ParamsAdamW {
            lr: 1e-2,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?;
    let (x, y) = train;
    let labels = Tensor::new(y.iter().map(|&l| l as u32).collect::<Vec<_>>(), device)?;
    let weights: Vec<f32> = y.iter().map(|&l| class_weight[l]).collect();
    let weights = Tensor::new(weights.as_slice(), device)?;
    // Embeddings are unit vectors: scale them up so a linear head can be confident.
    let x = (x * 10.0)?;
    for _ in 0..400 {
        let loss = crate::train::weighted_nll(&head.forward(&x)?, &labels, &weights)?;
        opt.backward_step(&loss)?;
    }
    for (name, x, truth) in sets {
        let logits: Vec<Vec<f32>> = head.forward(&(*x * 10.0)?)?.to_vec2()?;
        let pred: Vec<usize> = logits
            .iter()
            .map(|l| crate::metrics::argmax(&[l[0], l[1], l[2], l[3]]))
            .collect();
        let m = crate::metrics::score(truth, &pred);
        eprintln!(
            "teacher probe on {name}: macro-F1 {:.3} (present tiers {:.3}), accuracy {:.3}",
            m.macro_f1, m.macro_f1_present, m.accuracy
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;
    use triage::classifier::TokenBatch;

    fn batch() -> TokenBatch {
        let a: [u32; 5] = [101, 7592, 2088, 999, 102];
        let b: [u32; 3] = [101, 2748, 102];
        TokenBatch::new(
            &[(&a[..], &[0; 5][..]), (&b[..], &[0; 3][..])],
            &Device::Cpu,
        )
        .unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn training_pass_matches_serving_and_reaches_every_layer_norm() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let t = Teacher::new(vb).unwrap();
        let b = batch();
        let served = t.lower(&b, LAYERS, Mode::Infer).unwrap();
        let trained = t.lower(&b, LAYERS, Mode::Train { dropout: 0.0 }).unwrap();
        let diff = max_diff(&served, &trained);
        assert!(diff < 1e-4, "train and serve passes differ by {diff}");

        // Frozen lower layers, then the top ones: the same as one pass.
        let low = t.lower(&b, 3, Mode::Infer).unwrap();
        let split = t.upper(low, &b.keep, 3..LAYERS, Mode::Infer).unwrap();
        let whole = t.lower(&b, LAYERS, Mode::Infer).unwrap();
        let diff = max_diff(&split, &whole);
        assert!(diff < 1e-5, "split pass differs by {diff}");

        let loss = mean_pool(&trained, &b.keep)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for (name, var) in data.iter().filter(|(n, _)| n.contains("LayerNorm")) {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm = g
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(norm > 0.0, "{name}'s gradient is zero");
        }
    }
}
