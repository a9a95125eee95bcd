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
