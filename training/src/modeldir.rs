//! Writes a model directory that `triage::classifier::Classifier::load` reads.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use candle_nn::VarMap;
use triage::classifier::ModelConfig;

/// Saves `varmap` (as f16, halving the file; the loader widens to f32), `config` and the
/// tokenizer (with its fixed padding and truncation turned off) into `dir`.
pub fn save(dir: &Path, varmap: &VarMap, config: &ModelConfig, tokenizer_src: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, var) in data.iter() {
        tensors.insert(name.clone(), var.as_tensor().to_dtype(DType::F16)?);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors"))?;
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(config)? + "\n",
    )?;
    let mut tok: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tokenizer_src)
            .with_context(|| format!("reading {}", tokenizer_src.display()))?,
    )?;
    tok["padding"] = serde_json::Value::Null;
    tok["truncation"] = serde_json::Value::Null;
    std::fs::write(dir.join("tokenizer.json"), serde_json::to_string(&tok)?)?;
    Ok(())
}
