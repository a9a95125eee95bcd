//! Subcommands of the `triage` binary, one file each.

mod batch;
mod bench;
mod classify;
mod serve;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// A local prompt-difficulty router and LLM gateway.
#[derive(Debug, Parser)]
#[command(name = "triage", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Label prompts easy, medium, hard or needs_info.
    Classify(classify::ClassifyArgs),
    /// Serve the selectModel API (and the gateway) over HTTP.
    Serve(serve::ServeArgs),
    /// Classify request logs offline and report what routing would have saved.
    Batch(batch::BatchArgs),
    /// Measure the classifier's load time, latency, throughput and memory on this machine.
    Bench(bench::BenchArgs),
}

/// Runs the chosen subcommand and returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Batch(args) => batch::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// Sizes candle's CPU thread pool, which reads RAYON_NUM_THREADS when it starts: `threads`, else
/// RAYON_NUM_THREADS when set, else one fewer than the cores (at least one), so that the thread
/// feeding the model (the tokeniser in `batch`, the HTTP runtime in `serve`) keeps a core. On two
/// cores this measured faster than letting the model's matmuls contend with it (see README).
pub(crate) fn set_inference_threads(threads: Option<usize>) {
    let n = match threads {
        Some(n) => n.max(1),
        None if std::env::var_os("RAYON_NUM_THREADS").is_some() => return,
        None => std::thread::available_parallelism()
            .map(|n| n.get().saturating_sub(1).max(1))
            .unwrap_or(1),
    };
    // Called before any other thread of this process starts, so nothing reads the environment
    // concurrently.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
}
