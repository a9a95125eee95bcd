//! Criterion benches of the classifier: tokenising, and the encoder's forward pass at about
//! 16, 64, 256 and 512 tokens (cut to the model's length) and at batch sizes 8, 32 and 128.
//!
//! Uses the shipped model in `models/triage-v1` and the prompt set in `benches/prompts.jsonl`.
//! `cargo bench --bench classifier -- --quick` for a fast pass.

use std::collections::BTreeMap;
use std::time::Duration;

use candle_core::Device;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use triage::classifier::{default_model_dir, Classifier, Encoded, Mode, Prompt, TokenBatch};

/// Prompts of the shipped set by target length.
fn prompt_set() -> BTreeMap<usize, Vec<String>> {
    let mut by_target: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for line in include_str!("prompts.jsonl").lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("prompts.jsonl is JSON lines");
        let target = v["bucket"].as_u64().expect("bucket") as usize;
        let text = v["text"].as_str().expect("text").to_string();
        by_target.entry(target).or_default().push(text);
    }
    by_target
}

fn load() -> Option<Classifier> {
    let dir = default_model_dir();
    match Classifier::load(&dir, &Device::Cpu) {
        Ok(c) => Some(c),
        Err(e) => {
            eprintln!("skipped: no model at {} ({e})", dir.display());
            None
        }
    }
}

fn batch_of(encoded: &[Encoded], size: usize) -> Vec<(&[u32], &[u32])> {
    (0..size)
        .map(|i| {
            let e = &encoded[i % encoded.len()];
            (e.ids.as_slice(), e.type_ids.as_slice())
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    let Some(classifier) = load() else { return };
    let prompts = prompt_set();

    let mut group = c.benchmark_group("tokenize");
    for (target, texts) in &prompts {
        let prompts: Vec<Prompt> = texts.iter().map(Prompt::text).collect();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(target),
            &prompts,
            |b, prompts| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    classifier
                        .tokenizer()
                        .encode(&prompts[i % prompts.len()])
                        .expect("tokenizes")
                })
            },
        );
    }
    group.finish();

    let encoded: BTreeMap<usize, Vec<Encoded>> = prompts
        .iter()
        .map(|(target, texts)| {
            let prompts: Vec<Prompt> = texts.iter().map(Prompt::text).collect();
            (*target, classifier.encode_all(&prompts).expect("tokenizes"))
        })
        .collect();
    let model = classifier.model();

    let mut group = c.benchmark_group("forward_single");
    for (target, rows) in &encoded {
        let batches: Vec<TokenBatch> = rows
            .iter()
            .map(|e| {
                TokenBatch::new(&[(e.ids.as_slice(), e.type_ids.as_slice())], &Device::Cpu)
                    .expect("batch")
            })
            .collect();
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(target),
            &batches,
            |b, batches| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    model
                        .forward(&batches[i % batches.len()], Mode::Infer)
                        .expect("forward")
                })
            },
        );
    }
    group.finish();

    let mut group = c.benchmark_group("forward_batch");
    for target in [16, 64, 256] {
        let Some(rows) = encoded.get(&target) else {
            continue;
        };
        for size in [8, 32, 128] {
            let batch = TokenBatch::new(&batch_of(rows, size), &Device::Cpu).expect("batch");
            group.throughput(Throughput::Elements(size as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{target}_tokens"), size),
                &batch,
                |b, batch| b.iter(|| model.forward(batch, Mode::Infer).expect("forward")),
            );
        }
    }
    group.finish();

    // The whole path a request takes: tokenise, forward, softmax.
    let mut group = c.benchmark_group("classify_single");
    for (target, texts) in &prompts {
        group.bench_with_input(BenchmarkId::from_parameter(target), texts, |b, texts| {
            let mut i = 0;
            b.iter(|| {
                i += 1;
                classifier
                    .classify(&[texts[i % texts.len()].as_str()])
                    .expect("classifies")
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = classifier;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = benches
}
criterion_main!(classifier);
