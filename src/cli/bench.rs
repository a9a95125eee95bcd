//! `triage bench`: how fast the classifier runs on this machine. Load time, single-prompt
//! latency at about 16, 64, 256 and 512 tokens, batch throughput, and peak memory, on a fixed
//! prompt set shipped with triage so that figures compare across machines.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use triage::classifier::{Classifier, Encoded, Prompt};

use super::classify::ModelArgs;

/// The prompt set: JSON lines `{"bucket": <target tokens>, "text": "..."}`, realistic prompts
/// whose token counts land near 16, 64, 256 and 512.
const SHIPPED_PROMPTS: &str = include_str!("../../benches/prompts.jsonl");

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Threads for candle's CPU kernels (default: one per physical core). Sets
    /// RAYON_NUM_THREADS for this process before the model loads.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed single-prompt classifications per length.
    #[arg(long, default_value_t = 200)]
    iterations: usize,
    /// Timed batches per batch size and length.
    #[arg(long, default_value_t = 5)]
    batch_iterations: usize,
    /// Untimed runs before each measurement.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Batch sizes for the throughput runs, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    batch_sizes: Vec<usize>,
    /// Another prompt set, in the format of benches/prompts.jsonl (default: the shipped one).
    #[arg(long)]
    prompts: Option<PathBuf>,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
}

/// Everything `triage bench --json` prints.
#[derive(Debug, Serialize)]
struct Report {
    triage_version: &'static str,
    machine: Machine,
    model: ModelInfo,
    device: String,
    threads: usize,
    load_ms: f64,
    single: Vec<SingleRow>,
    batch: Vec<BatchRow>,
    memory: Memory,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: Option<String>,
    logical_cpus: usize,
}

#[derive(Debug, Serialize)]
struct ModelInfo {
    name: String,
    dir: String,
    layers: usize,
    hidden_size: usize,
    /// Tokens the model reads at most; longer prompts are cut to head + tail.
    max_tokens: usize,
}

/// Single-prompt latency at one length: tokenising, the forward pass and the softmax.
#[derive(Debug, Serialize)]
struct SingleRow {
    target_tokens: usize,
    prompts: usize,
    /// Mean tokens of the prompts before the model's cut (special tokens included).
    mean_prompt_tokens: f64,
    /// Mean tokens the model actually read.
    mean_tokens_read: f64,
    truncated: usize,
    iterations: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    mean_ms: f64,
    tokenize_p50_ms: f64,
    model_p50_ms: f64,
}

/// Throughput at one batch size and length, tokenising included.
#[derive(Debug, Serialize)]
struct BatchRow {
    target_tokens: usize,
    batch_size: usize,
    batches: usize,
    prompts_per_s: f64,
    ms_per_batch: f64,
}

#[derive(Debug, Serialize)]
struct Memory {
    /// VmHWM: the most resident memory the process has held.
    peak_rss_mb: Option<f64>,
    /// VmRSS at the end of the run.
    rss_mb: Option<f64>,
}

/// The prompts of one target length.
struct Bucket {
    target: usize,
    texts: Vec<String>,
    encoded: Vec<Encoded>,
    /// Token counts without the model's cut.
    full_tokens: Vec<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<std::process::ExitCode> {
    if args.iterations == 0 || args.batch_iterations == 0 {
        bail!("--iterations and --batch-iterations must be at least 1");
    }
    if args.batch_sizes.contains(&0) {
        bail!("--batch-sizes must all be at least 1");
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // candle reads RAYON_NUM_THREADS on every matmul, and rayon when it builds its pool on
        // first use: set it before any candle call, while this process has one thread.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    let prompt_text = match &args.prompts {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => SHIPPED_PROMPTS.to_string(),
    };

    let started = Instant::now();
    let classifier = args.model.load()?;
    let load_ms = ms(started.elapsed());

    let model_dir = args
        .model
        .model_dir
        .clone()
        .unwrap_or_else(triage::classifier::default_model_dir);
    let counter = TokenCounter::load(&model_dir)?;
    let buckets = buckets(&classifier, &counter, &prompt_text)?;
    let mut single = Vec::new();
    for bucket in &buckets {
        single.push(single_prompt(
            &classifier,
            bucket,
            args.iterations,
            args.warmup,
        )?);
    }
    let mut batch = Vec::new();
    for bucket in &buckets {
        for &size in &args.batch_sizes {
            batch.push(batch_throughput(
                &classifier,
                bucket,
                size,
                args.batch_iterations,
                args.warmup.min(2),
            )?);
        }
    }

    let cfg = classifier.config();
    let report = Report {
        triage_version: env!("CARGO_PKG_VERSION"),
        machine: Machine {
            cpu: cpu_name(),
            logical_cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        model: ModelInfo {
            name: cfg.name.clone(),
            dir: model_dir.display().to_string(),
            layers: cfg.encoder.num_layers,
            hidden_size: cfg.encoder.hidden_size,
            max_tokens: cfg.truncation.max_tokens,
        },
        device: args.model.device.clone(),
        threads: candle_core::utils::get_num_threads(),
        load_ms,
        single,
        batch,
        memory: Memory {
            peak_rss_mb: proc_status_mb("VmHWM"),
            rss_mb: proc_status_mb("VmRSS"),
        },
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        print_tables(&mut out, &report)?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Reads the prompt set and groups it by target length, in increasing order.
fn buckets(
    classifier: &Classifier,
    counter: &TokenCounter,
    text: &str,
) -> anyhow::Result<Vec<Bucket>> {
    #[derive(serde::Deserialize)]
    struct Row {
        bucket: usize,
        text: String,
    }
    let mut by_target: std::collections::BTreeMap<usize, Vec<String>> = Default::default();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row: Row = serde_json::from_str(line).with_context(|| {
            format!(
                "prompt set line {}: expected {{\"bucket\", \"text\"}}",
                i + 1
            )
        })?;
        if row.text.trim().is_empty() {
            bail!("prompt set line {}: the text is empty", i + 1);
        }
        by_target.entry(row.bucket).or_default().push(row.text);
    }
    if by_target.is_empty() {
        bail!("the prompt set has no prompts");
    }
    by_target
        .into_iter()
        .map(|(target, texts)| {
            let prompts: Vec<Prompt> = texts.iter().map(Prompt::text).collect();
            let encoded = classifier.encode_all(&prompts)?;
            let full_tokens = texts
                .iter()
                .map(|t| counter.count(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Bucket {
                target,
                texts,
                encoded,
                full_tokens,
            })
        })
        .collect()
}

/// Counts a prompt's tokens without the model's cut, to report how long the prompts really are.
struct TokenCounter(tokenizers::Tokenizer);

impl TokenCounter {
    fn load(dir: &std::path::Path) -> anyhow::Result<Self> {
        let path = dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(Self(tokenizer))
    }

    /// Tokens of `text` with [CLS] and [SEP].
    fn count(&self, text: &str) -> anyhow::Result<usize> {
        let encoding = self
            .0
            .encode(text, true)
            .map_err(|e| anyhow::anyhow!("tokenizing a bench prompt: {e}"))?;
        Ok(encoding.len())
    }
}

fn single_prompt(
    classifier: &Classifier,
    bucket: &Bucket,
    iterations: usize,
    warmup: usize,
) -> anyhow::Result<SingleRow> {
    let prompts: Vec<Prompt> = bucket.texts.iter().map(Prompt::text).collect();
    let mut total = Vec::with_capacity(iterations);
    let mut tokenize = Vec::with_capacity(iterations);
    let mut model = Vec::with_capacity(iterations);
    for i in 0..warmup + iterations {
        let prompt = std::slice::from_ref(&prompts[i % prompts.len()]);
        let t0 = Instant::now();
        let encoded = classifier.encode_all(prompt)?;
        let t1 = Instant::now();
        let logits = classifier.logits(&encoded)?;
        let t2 = Instant::now();
        std::hint::black_box(logits);
        if i >= warmup {
            total.push(t2 - t0);
            tokenize.push(t1 - t0);
            model.push(t2 - t1);
        }
    }
    let n = bucket.texts.len() as f64;
    let read: usize = bucket.encoded.iter().map(|e| e.ids.len()).sum();
    let mean = ms(total.iter().sum::<Duration>()) / total.len() as f64;
    Ok(SingleRow {
        target_tokens: bucket.target,
        prompts: bucket.texts.len(),
        mean_prompt_tokens: round1(bucket.full_tokens.iter().sum::<usize>() as f64 / n),
        mean_tokens_read: round1(read as f64 / n),
        truncated: bucket.encoded.iter().filter(|e| e.truncated).count(),
        iterations,
        p50_ms: percentile(&mut total, 50.0),
        p95_ms: percentile(&mut total, 95.0),
        p99_ms: percentile(&mut total, 99.0),
        mean_ms: round3(mean),
        tokenize_p50_ms: percentile(&mut tokenize, 50.0),
        model_p50_ms: percentile(&mut model, 50.0),
    })
}

fn batch_throughput(
    classifier: &Classifier,
    bucket: &Bucket,
    size: usize,
    batches: usize,
    warmup: usize,
) -> anyhow::Result<BatchRow> {
    let texts: Vec<&str> = (0..size)
        .map(|i| bucket.texts[i % bucket.texts.len()].as_str())
        .collect();
    let mut elapsed = Duration::ZERO;
    for i in 0..warmup + batches {
        let t0 = Instant::now();
        std::hint::black_box(classifier.classify(&texts)?);
        if i >= warmup {
            elapsed += t0.elapsed();
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-9);
    Ok(BatchRow {
        target_tokens: bucket.target,
        batch_size: size,
        batches,
        prompts_per_s: round1((size * batches) as f64 / secs),
        ms_per_batch: round3(ms(elapsed) / batches as f64),
    })
}

fn print_tables(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "triage {} bench: model {} ({} layers, {} wide) from {}",
        r.triage_version, r.model.name, r.model.layers, r.model.hidden_size, r.model.dir
    )?;
    writeln!(
        out,
        "machine: {} ({} logical CPUs); device {}, {} thread{}",
        r.machine.cpu.as_deref().unwrap_or("unknown CPU"),
        r.machine.logical_cpus,
        r.device,
        r.threads,
        if r.threads == 1 { "" } else { "s" }
    )?;
    writeln!(out, "load: {:.1} ms", r.load_ms)?;
    writeln!(out)?;
    writeln!(
        out,
        "single prompt (tokenise + forward), ms   {:>6} {:>6} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}",
        "tokens", "read", "p50", "p95", "p99", "mean", "tokenise", "model"
    )?;
    for s in &r.single {
        writeln!(
            out,
            "  ~{:<4} tokens ({:>2} prompts, {:>4} runs)  {:>6.0} {:>6.0} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>8.3} {:>7.3}",
            s.target_tokens,
            s.prompts,
            s.iterations,
            s.mean_prompt_tokens,
            s.mean_tokens_read,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.mean_ms,
            s.tokenize_p50_ms,
            s.model_p50_ms
        )?;
    }
    if r.single.iter().any(|s| s.truncated > 0) {
        writeln!(
            out,
            "  The model reads at most {} tokens: longer prompts are cut to their head and tail, \
             so those rows measure {} tokens of model work (tokenising still sees the whole prompt).",
            r.model.max_tokens, r.model.max_tokens
        )?;
    }
    writeln!(out)?;
    write!(out, "batch throughput, prompts/s")?;
    let mut sizes: Vec<usize> = r.batch.iter().map(|b| b.batch_size).collect();
    sizes.dedup();
    sizes.sort_unstable();
    sizes.dedup();
    for size in &sizes {
        write!(out, " {:>10}", format!("batch {size}"))?;
    }
    writeln!(out)?;
    let mut targets: Vec<usize> = r.batch.iter().map(|b| b.target_tokens).collect();
    targets.dedup();
    for target in targets {
        write!(out, "  ~{target:<4} tokens               ")?;
        for size in &sizes {
            let row = r
                .batch
                .iter()
                .find(|b| b.target_tokens == target && b.batch_size == *size);
            match row {
                Some(b) => write!(out, " {:>10.0}", b.prompts_per_s)?,
                None => write!(out, " {:>10}", "-")?,
            }
        }
        writeln!(out)?;
    }
    writeln!(out)?;
    let mb = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1} MB"));
    writeln!(
        out,
        "memory: peak {} (VmHWM), now {} (VmRSS)",
        mb(r.memory.peak_rss_mb),
        mb(r.memory.rss_mb)
    )
}

/// The `p`th percentile (nearest rank) of `samples`, in milliseconds.
fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    round3(ms(samples[rank.clamp(1, samples.len()) - 1]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A field of /proc/self/status in kB, as MB (Linux only).
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: f64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(round1(kb / 1024.0))
}

/// The CPU's model name from /proc/cpuinfo (Linux only).
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let mut s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut s, 50.0), 50.0);
        assert_eq!(percentile(&mut s, 99.0), 99.0);
        assert_eq!(percentile(&mut s[..1], 99.0), 1.0);
        assert_eq!(percentile(&mut [], 50.0), 0.0);
    }

    #[test]
    fn shipped_prompt_set_covers_every_length() {
        let mut targets: Vec<usize> = SHIPPED_PROMPTS
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["bucket"]
                    .as_u64()
                    .unwrap() as usize
            })
            .collect();
        targets.dedup();
        assert_eq!(targets, [16, 64, 256, 512]);
    }
}
