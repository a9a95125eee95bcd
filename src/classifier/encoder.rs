//! The tier model: a small BERT-style (pre-LayerNorm) encoder, mean pooling and a two-layer head.
//!
//! Written on candle's basic tensor ops rather than candle-transformers' `BertModel` so that one
//! definition both trains and serves: every weight receives a gradient in training (the stock
//! model's fused LayerNorm has no backward pass), and inference switches to candle's fused
//! LayerNorm and softmax kernels. The attention mask uses a finite value, so half precision
//! never meets `0 * -inf`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{init::Init, Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

/// Shape of the encoder and head; stored in the model directory's `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub num_labels: usize,
}

/// Whether a forward pass trains (dropout on, differentiable kernels) or serves (fused kernels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    Train { dropout: f32 },
    Infer,
}

impl Mode {
    fn dropout(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mode::Train { dropout } if dropout > 0.0 => candle_nn::ops::dropout(x, dropout),
            _ => Ok(x.clone()),
        }
    }
}

/// GELU (tanh form, as candle's `gelu`). Serving on the CPU in f32 uses [`FastGelu`]: candle's
/// kernel calls libm's `tanhf` per element, which took over a third of a forward pass.
fn gelu(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Infer if x.device().is_cpu() && x.dtype() == DType::F32 => {
            x.contiguous()?.apply_op1_no_bwd(&FastGelu)
        }
        _ => x.gelu(),
    }
}

/// `gelu(x) = 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`,
/// with an exp the compiler vectorises: no libm call, no branch. Agrees with candle's `gelu`
/// to about 1e-6 relative (see the tests).
struct FastGelu;

impl candle_core::CustomOp1 for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (candle_core::CpuStorage::F32(data), Some((start, end))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("fast-gelu takes a contiguous f32 tensor")
        };
        let input = &data[start..end];
        let mut out = vec![0f32; input.len()];
        for (o, &x) in out.iter_mut().zip(input) {
            *o = fast_gelu(x);
        }
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[inline(always)]
fn fast_gelu(x: f32) -> f32 {
    const TWO_SQRT_TWO_OVER_PI: f32 = 2.0 * 0.797_884_6;
    let two_u = TWO_SQRT_TWO_OVER_PI * x * (1.0 + 0.044_715 * x * x);
    x / (1.0 + fast_exp(-two_u))
}

/// `exp(x)` to about 2 ulp for x in [-87, 88] (Cephes' `expf` polynomial), clamped outside;
/// rounding by the 1.5 * 2^23 trick and the power of two built from bits, so it vectorises.
#[inline(always)]
fn fast_exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r * r + r + 1.0;
    // The integer n sits in the low mantissa bits of `shifted`; 2^n has exponent n + 127.
    let n_bits = shifted.to_bits().wrapping_sub(MAGIC.to_bits());
    let scale = f32::from_bits(n_bits.wrapping_add(127) << 23);
    y * scale
}

/// A dense layer applied to the last dimension, as one matrix product over all rows.
#[derive(Debug, Clone)]
struct Dense {
    weight: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        let bound = 1.0 / (inputs as f64).sqrt();
        let weight = vb.get_with_hints(
            (outputs, inputs),
            "weight",
            Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        let bias = vb.get_with_hints(outputs, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let inputs = dims[dims.len() - 1];
        let rows = x.elem_count() / inputs;
        let y = x
            .reshape((rows, inputs))?
            .matmul(&self.weight.t()?)?
            .broadcast_add(&self.bias)?;
        let mut out_dims = dims.to_vec();
        let last = out_dims.len() - 1;
        out_dims[last] = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(vb: VarBuilder, size: usize, eps: f64) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if mode == Mode::Infer {
            return candle_nn::ops::layer_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.eps as f32,
            );
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Dense,
    out: Dense,
    num_heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: Dense::load(vb.pp("qkv"), h, 3 * h)?,
            out: Dense::load(vb.pp("out"), h, h)?,
            num_heads: cfg.num_heads,
            head_dim: h / cfg.num_heads,
        })
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let (b, t, h) = x.dims3()?;
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((b, t, 3, self.num_heads, self.head_dim))?
            .permute((2, 0, 3, 1, 4))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let q = (qkv.get(0)?.contiguous()? * scale)?;
        let k = qkv.get(1)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let mut scores = q.matmul(&k.t()?)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = match mode {
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
            Mode::Train { .. } => candle_nn::ops::softmax(&scores, D::Minus1)?,
        };
        let probs = mode.dropout(&probs)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        self.out.forward(&ctx)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attention: SelfAttention,
    attention_norm: LayerNorm,
    ffn_in: Dense,
    ffn_out: Dense,
    ffn_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            attention: SelfAttention::load(vb.pp("attention"), cfg)?,
            attention_norm: LayerNorm::load(vb.pp("attention_norm"), h, cfg.layer_norm_eps)?,
            ffn_in: Dense::load(vb.pp("ffn_in"), h, cfg.intermediate_size)?,
            ffn_out: Dense::load(vb.pp("ffn_out"), cfg.intermediate_size, h)?,
            ffn_norm: LayerNorm::load(vb.pp("ffn_norm"), h, cfg.layer_norm_eps)?,
        })
    }

    /// Pre-LayerNorm: `x + attention(norm(x))`, then `x + ffn(norm(x))`. The residual stream
    /// carries the embeddings straight to the pooling, which trains from scratch far faster and
    /// more stably than BERT's post-LayerNorm at this size.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        let normed = self.attention_norm.forward(x, mode)?;
        let attended = mode.dropout(&self.attention.forward(&normed, mask, mode)?)?;
        let x = (x + attended)?;
        let normed = self.ffn_norm.forward(&x, mode)?;
        let inner = gelu(&self.ffn_in.forward(&normed)?, mode)?;
        let out = mode.dropout(&self.ffn_out.forward(&inner)?)?;
        x + out
    }
}

/// A batch of token sequences, padded to one length.
#[derive(Debug, Clone)]
pub struct TokenBatch {
    /// `[batch, len]` u32 token ids.
    pub ids: Tensor,
    /// `[batch, len]` u32 segment ids (0: the prompt, 1: earlier conversation).
    pub type_ids: Tensor,
    /// `[batch, len]` f32, 1 for real tokens and 0 for padding.
    pub keep: Tensor,
    /// Whether any row is padded; when none is, attention needs no mask.
    pub padded: bool,
}

impl TokenBatch {
    /// Pads `rows` (ids, type ids) to the longest one, on `device`.
    pub fn new(rows: &[(&[u32], &[u32])], device: &candle_core::Device) -> Result<Self> {
        let len = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(rows.len() * len);
        let mut types = Vec::with_capacity(rows.len() * len);
        let mut keep = Vec::with_capacity(rows.len() * len);
        let mut padded = false;
        for (row_ids, row_types) in rows {
            padded |= row_ids.len() < len;
            ids.extend_from_slice(row_ids);
            types.extend_from_slice(row_types);
            keep.extend(std::iter::repeat_n(1f32, row_ids.len()));
            let pad = len - row_ids.len();
            ids.extend(std::iter::repeat_n(0u32, pad));
            types.extend(std::iter::repeat_n(0u32, pad));
            keep.extend(std::iter::repeat_n(0f32, pad));
        }
        let shape = (rows.len(), len);
        Ok(Self {
            ids: Tensor::from_vec(ids, shape, device)?,
            type_ids: Tensor::from_vec(types, shape, device)?,
            keep: Tensor::from_vec(keep, shape, device)?,
            padded,
        })
    }
}

/// Finite stand-in for minus infinity in the attention mask: exp() of it is exactly 0 in f32,
/// and it stays finite in f16 and bf16.
const MASKED: f64 = -10_000.0;

/// Encoder plus classification head.
#[derive(Debug, Clone)]
pub struct TierModel {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    type_embeddings: Embedding,
    embedding_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    head_dense: Dense,
    head_out: Dense,
    config: EncoderConfig,
}

impl TierModel {
    /// Loads (or, with a `VarMap`-backed builder, creates) every weight under `vb`.
    pub fn load(vb: VarBuilder, cfg: &EncoderConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let emb = vb.pp("embeddings");
        let normal = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let word = emb.get_with_hints((cfg.vocab_size, h), "word", normal)?;
        let position = emb.get_with_hints((cfg.max_position_embeddings, h), "position", normal)?;
        let types = emb.get_with_hints((cfg.type_vocab_size, h), "token_type", normal)?;
        let layers = (0..cfg.num_layers)
            .map(|i| EncoderLayer::load(vb.pp(format!("layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: Embedding::new(word, h),
            position_embeddings: Embedding::new(position, h),
            type_embeddings: Embedding::new(types, h),
            embedding_norm: LayerNorm::load(emb.pp("norm"), h, cfg.layer_norm_eps)?,
            layers,
            final_norm: LayerNorm::load(vb.pp("final_norm"), h, cfg.layer_norm_eps)?,
            head_dense: Dense::load(vb.pp("head.dense"), h, h)?,
            head_out: Dense::load(vb.pp("head.out"), h, cfg.num_labels)?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Stops gradients at the word-embedding table (training keeps it as initialised); the
    /// table still shares storage with its variable, so later updates to the variable show.
    pub fn freeze_word_embeddings(&mut self) {
        let table = self.word_embeddings.embeddings().detach();
        self.word_embeddings = Embedding::new(table, self.config.hidden_size);
    }

    /// Mean-pooled sentence vectors, `[batch, hidden]`.
    pub fn pooled(&self, batch: &TokenBatch, mode: Mode) -> Result<Tensor> {
        let (b, t) = batch.ids.dims2()?;
        let device = batch.ids.device();
        let positions = Tensor::arange(0u32, t as u32, device)?;
        let x = self
            .word_embeddings
            .forward(&batch.ids)?
            .broadcast_add(&self.position_embeddings.forward(&positions)?)?
            .add(&self.type_embeddings.forward(&batch.type_ids)?)?;
        let mut x = mode.dropout(&self.embedding_norm.forward(&x, mode)?)?;
        let mask = if batch.padded {
            // [b, 1, 1, t]: 0 where attended, MASKED where padding.
            let m = ((batch.keep.ones_like()? - &batch.keep)? * MASKED)?;
            Some(m.reshape((b, 1, 1, t))?.to_dtype(x.dtype())?)
        } else {
            None
        };
        for layer in &self.layers {
            x = layer.forward(&x, mask.as_ref(), mode)?;
        }
        let x = self.final_norm.forward(&x, mode)?;
        if !batch.padded {
            return x.mean(1);
        }
        let keep = batch.keep.to_dtype(x.dtype())?;
        let summed = x.broadcast_mul(&keep.unsqueeze(2)?)?.sum(1)?;
        let counts = keep.sum_keepdim(1)?.clamp(1.0, f64::MAX)?;
        summed.broadcast_div(&counts)
    }

    /// Class logits from pooled vectors, `[batch, num_labels]`.
    pub fn head(&self, pooled: &Tensor, mode: Mode) -> Result<Tensor> {
        let h = gelu(&self.head_dense.forward(&mode.dropout(pooled)?)?, mode)?;
        self.head_out.forward(&mode.dropout(&h)?)
    }

    /// Logits for a batch, `[batch, num_labels]`, in f32.
    pub fn forward(&self, batch: &TokenBatch, mode: Mode) -> Result<Tensor> {
        self.head(&self.pooled(batch, mode)?, mode)?
            .to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;

    fn small_config() -> EncoderConfig {
        EncoderConfig {
            vocab_size: 97,
            hidden_size: 32,
            num_layers: 2,
            num_heads: 4,
            intermediate_size: 64,
            max_position_embeddings: 40,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
            num_labels: 4,
        }
    }

    /// A model whose every weight (LayerNorm gains and biases included) is random, so that no
    /// part of the forward pass is an identity the test could not see through.
    fn random_model(cfg: &EncoderConfig) -> TierModel {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let model = TierModel::load(vb, cfg).unwrap();
        for var in varmap.all_vars() {
            let noise = Tensor::randn(0f32, 0.3, var.shape(), &Device::Cpu).unwrap();
            var.set(&noise).unwrap();
        }
        model
    }

    fn row(len: usize, seed: u32) -> (Vec<u32>, Vec<u32>) {
        let ids = (0..len as u32).map(|i| (i * 31 + seed * 7) % 97).collect();
        let types = (0..len)
            .map(|i| u32::from(i >= len / 2 && seed % 2 == 1))
            .collect();
        (ids, types)
    }

    /// The largest absolute value in `t`.
    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    fn max_difference(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    #[test]
    fn fast_gelu_matches_candles_gelu() {
        let xs: Vec<f32> = (-4000..=4000).map(|i| i as f32 * 0.005).collect();
        let mut wide = xs.clone();
        wide.extend([-1e4, -100.0, -20.0, 20.0, 100.0, 1e4, 0.0, -0.0]);
        let t = Tensor::new(wide.as_slice(), &Device::Cpu).unwrap();
        let fast: Vec<f32> = gelu(&t, Mode::Infer).unwrap().to_vec1().unwrap();
        let stock: Vec<f32> = t.gelu().unwrap().to_vec1().unwrap();
        for ((x, f), s) in wide.iter().zip(&fast).zip(&stock) {
            assert!(f.is_finite(), "gelu({x}) = {f}");
            assert!(
                (f - s).abs() <= 1e-6 + 1e-5 * s.abs(),
                "gelu({x}): fast {f}, candle {s}"
            );
        }
    }

    #[test]
    fn fast_exp_is_accurate_over_the_range_gelu_uses() {
        for i in -870..=880 {
            let x = i as f32 * 0.1;
            let (fast, exact) = (fast_exp(x), x.exp());
            assert!(
                ((fast - exact) / exact).abs() < 1e-6,
                "exp({x}): fast {fast}, libm {exact}"
            );
        }
    }

    #[test]
    fn infer_logits_equal_train_logits_without_dropout() {
        let cfg = small_config();
        let model = random_model(&cfg);
        let train = Mode::Train { dropout: 0.0 };
        let rows = [row(40, 1), row(7, 2), row(23, 3), row(1, 4), row(40, 5)];
        let borrowed: Vec<(&[u32], &[u32])> = rows
            .iter()
            .map(|(ids, types)| (ids.as_slice(), types.as_slice()))
            .collect();
        // One row at a time (no mask), then all together (padded, masked).
        let mut batches: Vec<TokenBatch> = borrowed
            .iter()
            .map(|r| TokenBatch::new(std::slice::from_ref(r), &Device::Cpu).unwrap())
            .collect();
        batches.push(TokenBatch::new(&borrowed, &Device::Cpu).unwrap());
        batches.push(TokenBatch::new(&[borrowed[0], borrowed[4]], &Device::Cpu).unwrap());
        for batch in &batches {
            let infer = model.forward(batch, Mode::Infer).unwrap();
            let reference = model.forward(batch, train).unwrap();
            assert_eq!(infer.dims(), reference.dims());
            let scale = max_abs(&reference);
            assert!(scale > 1e-2, "logits too small to compare: {scale}");
            let diff = max_difference(&infer, &reference);
            assert!(
                diff <= 1e-4,
                "infer and train logits differ by {diff} on a batch of {:?}",
                batch.ids.dims()
            );
        }
    }
}
