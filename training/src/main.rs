//! `triage-train`: builds the labelled set, trains and evaluates triage's difficulty classifier.

mod baseline;
mod card;
mod data;
mod finetune;
mod metrics;
mod modeldir;
mod teacher;
mod train;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use clap::{Parser, Subcommand};
use triage::classifier::{Classifier, ModelConfig, Prompt, Tier, TierModel, TruncationConfig};

#[derive(Debug, Parser)]
#[command(name = "triage-train", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train the tier model on build_data.py's rows and write the model directory and card.
    Train(train::TrainArgs),
    /// Fine-tune all-MiniLM-L6-v2's top layers on the tiers and write every row's tier logits
    /// and embeddings, a teacher for `train --teacher`.
    FinetuneTeacher(finetune::FinetuneArgs),
    /// Write an untrained model directory (random weights), for development of the loading code.
    Init {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long, default_value_t = 128)]
        hidden: usize,
        #[arg(long, default_value_t = 2)]
        layers: usize,
    },
    /// Time single-prompt inference of a model directory at several lengths.
    Speed {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train::run(args)?,
        Command::FinetuneTeacher(args) => finetune::run(args)?,
        Command::Init {
            out,
            tokenizer,
            hidden,
            layers,
        } => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let enc = train::encoder_config(hidden, layers);
            TierModel::load(vb, &enc)?;
            let config = ModelConfig {
                name: "triage-untrained".into(),
                encoder: enc,
                truncation: TruncationConfig::default(),
                temperature: 1.0,
                threshold: 0.0,
                labels: Tier::ALL.iter().map(|t| t.to_string()).collect(),
            };
            modeldir::save(&out, &varmap, &config, &tokenizer)?;
        }
        Command::Speed { model, runs } => {
            let c = Classifier::load(&model, &Device::Cpu)?;
            for words in [12, 48, 190, 400] {
                let text = "word ".repeat(words);
                let p = [Prompt::text(text.clone())];
                let toks = c.encode_all(&p)?[0].ids.len();
                c.classify_prompts(&p)?;
                let mut times = Vec::new();
                for _ in 0..runs {
                    let t = Instant::now();
                    c.classify_prompts(&p)?;
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                times.sort_by(|a, b| a.total_cmp(b));
                println!(
                    "{toks:>4} tokens: p50 {:.2} ms  p95 {:.2} ms",
                    times[runs / 2],
                    times[runs * 95 / 100]
                );
            }
        }
    }
    Ok(())
}
