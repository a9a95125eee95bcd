//! `triage bench` run as users run it, with tiny iteration counts on a tiny random model (the
//! shipped tokenizer, random weights in the shipped format): the JSON report's shape, the
//! truncation note, and refusals of bad arguments. No timing is asserted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use serde_json::Value;
use triage::classifier::{EncoderConfig, TierModel};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Writes a model directory: a 2-layer, 16-wide encoder reading at most 128 tokens.
fn tiny_model(dir: &Path) {
    let encoder = EncoderConfig {
        vocab_size: 30522,
        hidden_size: 16,
        num_layers: 2,
        num_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 128,
        type_vocab_size: 2,
        layer_norm_eps: 1e-12,
        num_labels: 4,
    };
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    TierModel::load(vb, &encoder).expect("random model");
    varmap
        .save(dir.join("model.safetensors"))
        .expect("weights saved");
    let config = serde_json::json!({
        "name": "tiny-random",
        "encoder": encoder,
        "truncation": {"max_tokens": 128, "head_tokens": 64, "context_tokens": 40},
        "temperature": 1.0,
        "threshold": 0.0,
        "labels": ["easy", "medium", "hard", "needs_info"],
    });
    std::fs::write(dir.join("config.json"), config.to_string()).expect("config written");
    std::fs::copy(
        root().join("models/triage-v1/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .expect("the shipped tokenizer is in models/triage-v1");
}

fn bench(model: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_triage"))
        .arg("bench")
        .arg("--model-dir")
        .arg(model)
        .args(args)
        .output()
        .expect("triage runs")
}

const QUICK: &[&str] = &[
    "--iterations",
    "3",
    "--batch-iterations",
    "1",
    "--warmup",
    "0",
    "--batch-sizes",
    "2,3",
    "--threads",
    "1",
];

#[test]
fn json_report_has_every_length_batch_size_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let mut args = QUICK.to_vec();
    args.push("--json");
    let out = bench(dir.path(), &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");

    assert_eq!(report["threads"], 1);
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["model"]["max_tokens"], 128);
    assert_eq!(report["model"]["layers"], 2);
    assert!(report["load_ms"].as_f64().unwrap() >= 0.0);
    assert!(report["machine"]["logical_cpus"].as_u64().unwrap() >= 1);

    let single = report["single"].as_array().unwrap();
    let targets: Vec<u64> = single
        .iter()
        .map(|s| s["target_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(targets, [16, 64, 256, 512]);
    for s in single {
        assert_eq!(s["iterations"], 3);
        let p = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {s}"));
        assert!(
            p("p50_ms") <= p("p95_ms") && p("p95_ms") <= p("p99_ms"),
            "{s}"
        );
        for k in ["mean_ms", "tokenize_p50_ms", "model_p50_ms"] {
            assert!(p(k) >= 0.0);
        }
        let read = p("mean_tokens_read");
        assert!(read <= 128.0, "{s}");
        // The shipped prompts land near their targets; longer ones are cut to 128 tokens.
        let target = s["target_tokens"].as_f64().unwrap();
        let full = p("mean_prompt_tokens");
        assert!(full > target * 0.8 && full < target * 1.2, "{s}");
        if target > 128.0 {
            assert_eq!(read, 128.0, "{s}");
            assert_eq!(s["truncated"], s["prompts"], "{s}");
        } else {
            assert_eq!(s["truncated"], 0, "{s}");
        }
    }

    let batch = report["batch"].as_array().unwrap();
    assert_eq!(batch.len(), 4 * 2);
    for b in batch {
        assert!([2, 3].contains(&b["batch_size"].as_u64().unwrap()), "{b}");
        assert_eq!(b["batches"], 1);
        assert!(b["prompts_per_s"].as_f64().unwrap() > 0.0, "{b}");
        assert!(b["ms_per_batch"].as_f64().unwrap() >= 0.0, "{b}");
    }

    if cfg!(target_os = "linux") {
        let peak = report["memory"]["peak_rss_mb"].as_f64().unwrap();
        let now = report["memory"]["rss_mb"].as_f64().unwrap();
        assert!(
            peak > 0.0 && now > 0.0 && now <= peak,
            "{}",
            report["memory"]
        );
    }
}

#[test]
fn table_says_long_prompts_are_cut() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    let out = bench(dir.path(), QUICK);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("p50"), "{text}");
    assert!(text.contains("batch 3"), "{text}");
    assert!(
        text.contains("reads at most 128 tokens"),
        "the cut is stated: {text}"
    );
    assert!(text.contains("VmHWM"), "{text}");
}

#[test]
fn bad_arguments_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    tiny_model(dir.path());
    for args in [
        &["--iterations", "0"][..],
        &["--threads", "0"],
        &["--batch-sizes", "8,0"],
        &["--prompts", "/nonexistent/prompts.jsonl"],
    ] {
        let out = bench(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("triage: "), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

#[test]
fn missing_model_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = bench(dir.path(), QUICK);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.json"));
}
