//! The difficulty classifier: loads a model directory and labels prompts with a tier.
//!
//! A model directory holds `config.json` ([`ModelConfig`]), `tokenizer.json` and
//! `model.safetensors`. Nothing here touches the network.

pub mod encoder;
pub mod input;
pub mod tokenize;
pub mod worker;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

pub use encoder::{EncoderConfig, Mode, TierModel, TokenBatch};
pub use tokenize::{Encoded, Prompt, PromptTokenizer, TruncationConfig, Turn};

/// The directory of the model shipped with triage, relative to the repository root.
pub const DEFAULT_MODEL_DIR: &str = "models/triage-v1";

/// The shipped model: `models/triage-v1` under the working directory when it is there (a
/// checkout or an unpacked release), else the one in the source tree this binary was built from.
pub fn default_model_dir() -> PathBuf {
    let local = PathBuf::from(DEFAULT_MODEL_DIR);
    if local.join("config.json").is_file() {
        return local;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL_DIR)
}

/// Errors from loading or running the classifier.
#[derive(Debug, thiserror::Error)]
pub enum ClassifierError {
    #[error("model directory {path}: {message}")]
    ModelDir { path: String, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: String, message: String },
    #[error("tokenizing failed: {0}")]
    Tokenize(String),
    #[error("model config: {0}")]
    Config(String),
    #[error("prompt {index} is empty")]
    EmptyPrompt { index: usize },
    #[error("device: {0}")]
    Device(String),
    #[error("inference failed: {0}")]
    Inference(#[from] candle_core::Error),
}

/// The four tiers of TIERS.md, in the order of the model's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Easy,
    Medium,
    Hard,
    NeedsInfo,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Easy, Tier::Medium, Tier::Hard, Tier::NeedsInfo];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Easy => "easy",
            Tier::Medium => "medium",
            Tier::Hard => "hard",
            Tier::NeedsInfo => "needs_info",
        }
    }

    /// Position of this tier in the model's outputs.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn from_index(index: usize) -> Option<Tier> {
        Tier::ALL.get(index).copied()
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "easy" => Ok(Tier::Easy),
            "medium" => Ok(Tier::Medium),
            "hard" => Ok(Tier::Hard),
            "needs_info" => Ok(Tier::NeedsInfo),
            other => Err(format!(
                "unknown tier {other:?} (expected easy, medium, hard or needs_info)"
            )),
        }
    }
}

/// Calibrated probability of each tier; they sum to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TierProbabilities {
    pub easy: f32,
    pub medium: f32,
    pub hard: f32,
    pub needs_info: f32,
}

impl TierProbabilities {
    pub fn from_array(p: [f32; 4]) -> Self {
        Self {
            easy: p[0],
            medium: p[1],
            hard: p[2],
            needs_info: p[3],
        }
    }

    pub fn to_array(self) -> [f32; 4] {
        [self.easy, self.medium, self.hard, self.needs_info]
    }

    pub fn get(&self, tier: Tier) -> f32 {
        self.to_array()[tier.index()]
    }

    /// The most probable tier and its probability.
    pub fn top(&self) -> (Tier, f32) {
        let p = self.to_array();
        let mut best = 0;
        for i in 1..4 {
            if p[i] > p[best] {
                best = i;
            }
        }
        (Tier::ALL[best], p[best])
    }
}

/// The classifier's answer for one prompt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The tier to act on: the most probable one, or `needs_info` when the model is not
    /// confident enough.
    pub tier: Tier,
    /// The most probable tier, before the confidence threshold.
    pub top_tier: Tier,
    /// Probability of `top_tier`.
    pub confidence: f32,
    /// Whether `confidence` reaches the classifier's threshold.
    pub confident: bool,
    pub probabilities: TierProbabilities,
    /// Tokens the model read (special tokens included).
    pub tokens: usize,
    /// Whether the prompt was cut to fit the model.
    pub truncated: bool,
}

impl Prediction {
    /// Applies temperature-scaled softmax and the confidence threshold to raw logits.
    pub fn from_logits(
        logits: [f32; 4],
        temperature: f32,
        threshold: f32,
        encoded: &Encoded,
    ) -> Self {
        let probabilities = TierProbabilities::from_array(softmax(logits, temperature));
        let (top_tier, confidence) = probabilities.top();
        let confident = confidence >= threshold;
        Self {
            tier: if confident { top_tier } else { Tier::NeedsInfo },
            top_tier,
            confidence,
            confident,
            probabilities,
            tokens: encoded.ids.len(),
            truncated: encoded.truncated,
        }
    }
}

/// Softmax of `logits / temperature`.
pub fn softmax(logits: [f32; 4], temperature: f32) -> [f32; 4] {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut e = logits.map(|l| ((l - max) / t).exp());
    let sum: f32 = e.iter().sum();
    for v in &mut e {
        *v /= sum;
    }
    e
}

/// `config.json` of a model directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelConfig {
    /// A name for logs and `/v1/models`, e.g. `triage-v1`.
    pub name: String,
    pub encoder: EncoderConfig,
    pub truncation: TruncationConfig,
    /// Temperature fitted on held-out data; logits are divided by it before softmax.
    pub temperature: f32,
    /// Default confidence threshold: below it the answer is `needs_info`.
    pub threshold: f32,
    /// Output labels in order; must be `easy, medium, hard, needs_info`.
    pub labels: Vec<String>,
}

impl ModelConfig {
    pub fn read(dir: &Path) -> Result<Self, ClassifierError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ClassifierError::ModelDir {
            path: dir.display().to_string(),
            message: format!("cannot read config.json: {e}"),
        })?;
        let config: ModelConfig = serde_json::from_str(&text)
            .map_err(|e| ClassifierError::Config(format!("{}: {e}", path.display())))?;
        let expected: Vec<&str> = Tier::ALL.iter().map(|t| t.as_str()).collect();
        if config.labels != expected || config.encoder.num_labels != 4 {
            return Err(ClassifierError::Config(format!(
                "labels must be {expected:?}, found {:?}",
                config.labels
            )));
        }
        Ok(config)
    }
}

/// Picks the device named `name`: `cpu`, `cuda`, `cuda:N` or `metal`.
pub fn device(name: &str) -> Result<Device, ClassifierError> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => (
            kind,
            n.parse::<usize>()
                .map_err(|_| ClassifierError::Device(format!("bad device ordinal in {name:?}")))?,
        ),
        None => (name, 0),
    };
    match kind {
        "cpu" => Ok(Device::Cpu),
        "cuda" if cfg!(feature = "cuda") => {
            Device::new_cuda(ordinal).map_err(|e| ClassifierError::Device(e.to_string()))
        }
        "metal" if cfg!(feature = "metal") => {
            Device::new_metal(ordinal).map_err(|e| ClassifierError::Device(e.to_string()))
        }
        "cuda" | "metal" => Err(ClassifierError::Device(format!(
            "this build has no {kind} support: rebuild with `--features {kind}`"
        ))),
        other => Err(ClassifierError::Device(format!(
            "unknown device {other:?} (expected cpu, cuda, cuda:N or metal)"
        ))),
    }
}

/// Most rows run through the encoder at once; larger inputs are split.
const MAX_BATCH: usize = 32;

/// A loaded classifier. Cheap to share behind an `Arc`; `classify` takes `&self`.
pub struct Classifier {
    model: TierModel,
    tokenizer: PromptTokenizer,
    config: ModelConfig,
    device: Device,
    threshold: f32,
    dir: PathBuf,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("dir", &self.dir)
            .field("name", &self.config.name)
            .field("device", &self.device)
            .field("threshold", &self.threshold)
            .finish()
    }
}

impl Classifier {
    /// Loads the model in `dir` onto `device`. Weights stored in f16 are widened to f32.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> Result<Self, ClassifierError> {
        let dir = dir.as_ref();
        let config = ModelConfig::read(dir)?;
        let tokenizer =
            PromptTokenizer::from_file(&dir.join("tokenizer.json"), config.truncation.clone())?;
        let weights = dir.join("model.safetensors");
        if !weights.is_file() {
            return Err(ClassifierError::ModelDir {
                path: dir.display().to_string(),
                message: "model.safetensors is missing".into(),
            });
        }
        // SAFETY: the file is mapped read-only and not modified while the model lives; the
        // tensors are copied out of the mapping when loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let model = TierModel::load(vb, &config.encoder)?;
        Ok(Self {
            model,
            tokenizer,
            threshold: config.threshold,
            config,
            device: device.clone(),
            dir: dir.to_path_buf(),
        })
    }

    /// Replaces the confidence threshold (0 disables it).
    pub fn with_threshold(mut self, threshold: f32) -> Self {
        self.threshold = threshold;
        self
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Classifies plain-text prompts.
    pub fn classify(&self, texts: &[&str]) -> Result<Vec<Prediction>, ClassifierError> {
        let prompts: Vec<Prompt> = texts.iter().map(|t| Prompt::text(*t)).collect();
        self.classify_prompts(&prompts)
    }

    /// Classifies prompts that may carry conversation context.
    pub fn classify_prompts(&self, prompts: &[Prompt]) -> Result<Vec<Prediction>, ClassifierError> {
        let encoded = self.encode_all(prompts)?;
        let logits = self.logits(&encoded)?;
        Ok(logits
            .into_iter()
            .zip(&encoded)
            .map(|(l, e)| Prediction::from_logits(l, self.config.temperature, self.threshold, e))
            .collect())
    }

    /// Tokenises prompts, rejecting empty ones.
    pub fn encode_all(&self, prompts: &[Prompt]) -> Result<Vec<Encoded>, ClassifierError> {
        prompts
            .iter()
            .enumerate()
            .map(|(index, p)| {
                if p.is_empty() {
                    Err(ClassifierError::EmptyPrompt { index })
                } else {
                    self.tokenizer.encode(p)
                }
            })
            .collect()
    }

    /// Raw logits for encoded prompts. Rows are grouped by length so that a batch pads little;
    /// a single prompt runs unpadded.
    pub fn logits(&self, encoded: &[Encoded]) -> Result<Vec<[f32; 4]>, ClassifierError> {
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].ids.len());
        let mut out = vec![[0f32; 4]; encoded.len()];
        for chunk in order.chunks(MAX_BATCH) {
            let rows: Vec<(&[u32], &[u32])> = chunk
                .iter()
                .map(|&i| (encoded[i].ids.as_slice(), encoded[i].type_ids.as_slice()))
                .collect();
            let batch = TokenBatch::new(&rows, &self.device)?;
            let logits = self.model.forward(&batch, Mode::Infer)?;
            let logits: Vec<Vec<f32>> = logits.to_vec2()?;
            for (&i, row) in chunk.iter().zip(logits) {
                out[i] = [row[0], row[1], row[2], row[3]];
            }
        }
        Ok(out)
    }

    /// The underlying model, for training and evaluation tools.
    pub fn model(&self) -> &TierModel {
        &self.model
    }
}
