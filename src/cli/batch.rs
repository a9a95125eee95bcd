//! `triage batch`: classify request logs offline and report what routing would have saved.

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use triage::batch::progress::{Progress, Style};
use triage::batch::{
    self, report, BatchError, Estimation, Fields, Format, Input, Observer, Options, Outcome,
    RowError,
};
use triage::policy::TierPolicy;
use triage::pricing::PriceTable;

use super::classify::ModelArgs;

#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Request logs to read; `-` reads standard input.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// openai-chat, openai-batch, jsonl, csv or triage-log; detected per file when left out.
    #[arg(long)]
    format: Option<String>,
    /// JSONL field (a dotted path such as `request.prompt`) or CSV column holding the prompt:
    /// a string, or an array of OpenAI messages. Default: messages, prompt, text, input,
    /// question or query.
    #[arg(long, value_name = "NAME")]
    prompt_field: Option<String>,
    /// Field or column naming the model the request used. Default: model.
    #[arg(long, value_name = "NAME")]
    model_field: Option<String>,
    /// Field or column with input tokens. Default: input_tokens, prompt_tokens, or the same
    /// inside usage.
    #[arg(long, value_name = "NAME")]
    input_tokens_field: Option<String>,
    /// Field or column with output tokens. Default: output_tokens, completion_tokens, or the
    /// same inside usage.
    #[arg(long, value_name = "NAME")]
    output_tokens_field: Option<String>,
    /// Field or column with a row id copied to --out. Default: custom_id, id, request_id.
    #[arg(long, value_name = "NAME")]
    id_field: Option<String>,
    /// Output tokens assumed for a row with neither a count nor the answer's text.
    #[arg(long, default_value_t = Estimation::default().default_output_tokens, value_name = "N")]
    assume_output_tokens: u64,
    /// Route every row within this provider family (anthropic, openai, gemini) instead of the
    /// family of the model the row used.
    #[arg(long, value_name = "FAMILY")]
    provider: Option<String>,
    /// The model assumed for rows whose log names none, so that they can be priced.
    #[arg(long, value_name = "MODEL")]
    default_model: Option<String>,
    /// Write every classified row, with its tier, probabilities and each mode's model, as JSONL.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write every skipped row's file, line number and reason as JSONL.
    #[arg(long, value_name = "FILE")]
    errors: Option<PathBuf>,
    /// Write the summary as a self-contained HTML page with charts.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Print the summary as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// No progress on standard error.
    #[arg(long, short)]
    quiet: bool,
    /// Threads for the model's matrix products. Default: every core but one, which is left to
    /// the tokeniser and the reader (at least one); RAYON_NUM_THREADS, when set, wins.
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
    #[command(flatten)]
    model: ModelArgs,
}

/// Skipped rows described on standard error before the rest are only counted.
const SHOWN_SKIPS: u64 = 5;

pub fn run(args: BatchArgs) -> anyhow::Result<ExitCode> {
    let format = args
        .format
        .as_deref()
        .filter(|f| *f != "auto")
        .map(str::parse::<Format>)
        .transpose()?;
    let stdin_count = args.files.iter().filter(|p| p.as_os_str() == "-").count();
    if stdin_count > 1 {
        bail!("standard input (-) can be read only once");
    }
    let mut inputs = Vec::with_capacity(args.files.len());
    let mut total_bytes = Some(0u64);
    for path in &args.files {
        if path.as_os_str() == "-" {
            total_bytes = None;
            inputs.push(Input {
                name: "-".into(),
                reader: Box::new(BufReader::new(std::io::stdin())),
            });
            continue;
        }
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().map(|m| m.len()).ok();
        total_bytes = total_bytes.zip(len).map(|(a, b)| a + b);
        inputs.push(Input {
            name: path.display().to_string(),
            reader: Box::new(BufReader::with_capacity(1 << 16, file)),
        });
    }
    let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let out = args.out.as_deref().map(create).transpose()?;
    let errors = args.errors.as_deref().map(create).transpose()?;
    let report_file = args.report.as_deref().map(create).transpose()?;

    let options = Options {
        format,
        fields: Fields {
            prompt: args.prompt_field.clone(),
            model: args.model_field.clone(),
            input_tokens: args.input_tokens_field.clone(),
            output_tokens: args.output_tokens_field.clone(),
            id: args.id_field.clone(),
        },
        estimation: Estimation {
            default_output_tokens: args.assume_output_tokens,
        },
        family: args.provider.clone(),
        default_model: args.default_model.clone(),
        ..Options::default()
    };
    super::set_inference_threads(args.threads);
    let policy = TierPolicy::default();
    let prices = PriceTable::shipped();
    let classifier = args.model.load()?;

    let style = if args.quiet {
        Style::Off
    } else if std::io::stderr().is_terminal() {
        Style::Bar
    } else {
        Style::Lines {
            every: Duration::from_secs(10),
        }
    };
    let mut sink = Sink {
        names: &names,
        out,
        errors,
        progress: Progress::new(std::io::stderr(), style, total_bytes),
        shown_skips: 0,
        bytes: 0,
        bar: style == Style::Bar,
    };
    let summary = batch::run(&classifier, &policy, &prices, inputs, &options, &mut sink)?;
    sink.progress.finish(
        summary.rows,
        summary.skipped,
        sink.bytes.max(total_bytes.unwrap_or(0)),
    );
    for (w, path) in [
        (sink.out.take(), &args.out),
        (sink.errors.take(), &args.errors),
    ] {
        if let (Some(mut w), Some(path)) = (w, path) {
            w.flush()
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    if summary.skipped > sink.shown_skips {
        eprintln!(
            "triage: {} more rows skipped{}",
            summary.skipped - sink.shown_skips,
            if args.errors.is_some() {
                " (all are listed in --errors)"
            } else {
                "; list them all with --errors FILE"
            }
        );
    }
    if let (Some(mut w), Some(path)) = (report_file, &args.report) {
        w.write_all(report::render(&summary).as_bytes())
            .and_then(|_| w.flush())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut stdout, &summary)?;
        writeln!(stdout)?;
    } else {
        write!(stdout, "{}", summary.to_text())?;
    }
    stdout.flush()?;
    Ok(if summary.skipped > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::new(file))
}

/// Writes rows and errors to their files and shows progress.
struct Sink<'a> {
    names: &'a [String],
    out: Option<BufWriter<File>>,
    errors: Option<BufWriter<File>>,
    progress: Progress<std::io::Stderr>,
    shown_skips: u64,
    bytes: u64,
    bar: bool,
}

impl Sink<'_> {
    fn name(&self, file: usize) -> &str {
        self.names.get(file).map(String::as_str).unwrap_or("?")
    }
}

fn write_err(e: std::io::Error) -> BatchError {
    BatchError::Output(format!("writing output: {e}"))
}

impl Observer for Sink<'_> {
    fn row(&mut self, outcome: &Outcome) -> Result<(), BatchError> {
        let line = outcome.to_json(self.name(outcome.file));
        if let Some(out) = &mut self.out {
            serde_json::to_writer(&mut *out, &line)
                .map_err(|e| BatchError::Output(format!("writing --out: {e}")))?;
            out.write_all(b"\n").map_err(write_err)?;
        }
        Ok(())
    }

    fn skipped(&mut self, file: usize, error: &RowError) -> Result<(), BatchError> {
        let name = self.name(file).to_string();
        if self.shown_skips < SHOWN_SKIPS {
            self.shown_skips += 1;
            // On a terminal, start a fresh line so that the message does not land inside the bar.
            let start = if self.bar { "\r" } else { "" };
            eprintln!(
                "{start}triage: {name}:{}: {}; skipped",
                error.line, error.reason
            );
        }
        if let Some(errors) = &mut self.errors {
            let v = serde_json::json!({"file": name, "line": error.line, "reason": error.reason});
            serde_json::to_writer(&mut *errors, &v)
                .map_err(|e| BatchError::Output(format!("writing --errors: {e}")))?;
            errors.write_all(b"\n").map_err(write_err)?;
        }
        Ok(())
    }

    fn progress(&mut self, rows: u64, skipped: u64, bytes: u64) {
        self.bytes = bytes;
        self.progress.update(rows, skipped, bytes);
    }
}
