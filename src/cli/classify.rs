//! `triage classify`: label prompts from the command line, a file or standard input.

use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use triage::classifier::{self, input::prompt_from_json, Classifier, Prediction, Prompt};

#[derive(Debug, Args)]
pub struct ClassifyArgs {
    /// The prompt to classify. Without it, prompts come from --file or standard input.
    prompt: Option<String>,
    /// Read prompts from a file, one a line: plain text, or JSON objects with a `text`,
    /// `prompt`, `input` or OpenAI `messages` field. `-` reads standard input.
    #[arg(long, short)]
    file: Option<PathBuf>,
    /// Print one JSON object per prompt instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
}

/// Where the model comes from and how it runs; shared by the subcommands that classify.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "TRIAGE_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long, default_value = "cpu", env = "TRIAGE_DEVICE")]
    pub device: String,
    /// Confidence below which the answer is needs_info (default: the model's own).
    #[arg(long)]
    pub threshold: Option<f32>,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Classifier> {
        let dir = match &self.model_dir {
            Some(dir) => dir.clone(),
            None => classifier::default_model_dir(),
        };
        let device = classifier::device(&self.device)?;
        let mut classifier = Classifier::load(&dir, &device)
            .with_context(|| format!("loading the model from {}", dir.display()))?;
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                bail!("--threshold must be between 0 and 1, got {t}");
            }
            classifier = classifier.with_threshold(t);
        }
        Ok(classifier)
    }
}

/// Prompts read per model call when classifying a file.
const CHUNK: usize = 64;

pub fn run(args: ClassifyArgs) -> anyhow::Result<ExitCode> {
    if args.prompt.is_some() && args.file.is_some() {
        bail!("give a prompt or --file, not both");
    }
    if let Some(prompt) = &args.prompt {
        if prompt.trim().is_empty() {
            bail!("the prompt is empty");
        }
    }
    let reader: Option<Box<dyn Read>> = match (&args.prompt, &args.file) {
        (Some(_), _) => None,
        (None, Some(path)) if path.as_os_str() == "-" => Some(Box::new(std::io::stdin())),
        (None, Some(path)) => Some(Box::new(
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?,
        )),
        (None, None) => {
            if std::io::stdin().is_terminal() {
                bail!("give a prompt, --file FILE, or prompts on standard input");
            }
            Some(Box::new(std::io::stdin()))
        }
    };
    let classifier = args.model.load()?;
    let mut out = std::io::stdout().lock();
    let mut printer = Printer::new(args.json);

    let Some(reader) = reader else {
        let prompt = Prompt::text(args.prompt.unwrap_or_default());
        let preds = classifier.classify_prompts(std::slice::from_ref(&prompt))?;
        printer.print(&mut out, 0, &prompt, &preds[0])?;
        return Ok(ExitCode::SUCCESS);
    };

    let mut skipped = 0usize;
    let mut pending: Vec<(usize, Prompt)> = Vec::with_capacity(CHUNK);
    let mut index = 0usize;
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    let mut line_no = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .context("reading input")?;
        if n == 0 {
            break;
        }
        line_no += 1;
        match parse_line(&line) {
            Ok(None) => continue,
            Ok(Some(prompt)) => {
                pending.push((index, prompt));
                index += 1;
            }
            Err(reason) => {
                skipped += 1;
                eprintln!("triage: line {line_no}: {reason}; skipped");
            }
        }
        if pending.len() == CHUNK {
            flush(&classifier, &mut pending, &mut printer, &mut out)?;
        }
    }
    flush(&classifier, &mut pending, &mut printer, &mut out)?;
    out.flush()?;
    if index == 0 && skipped == 0 {
        bail!("no prompts in the input");
    }
    if skipped > 0 {
        eprintln!("triage: {index} prompts classified, {skipped} lines skipped");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// One input line: `Ok(None)` for a blank line, a prompt, or the reason it is unusable.
fn parse_line(raw: &[u8]) -> Result<Option<Prompt>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = text.trim_end_matches(['\n', '\r']);
    if text.trim().is_empty() {
        return Ok(None);
    }
    if text.trim_start().starts_with('{') {
        let value: Value =
            serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
        return prompt_from_json(&value)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    Ok(Some(Prompt::text(text)))
}

fn flush(
    classifier: &Classifier,
    pending: &mut Vec<(usize, Prompt)>,
    printer: &mut Printer,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let prompts: Vec<Prompt> = pending.iter().map(|(_, p)| p.clone()).collect();
    let preds = classifier.classify_prompts(&prompts)?;
    for ((i, prompt), pred) in pending.iter().zip(&preds) {
        printer.print(out, *i, prompt, pred)?;
    }
    pending.clear();
    Ok(())
}

struct Printer {
    json: bool,
    header_done: bool,
}

impl Printer {
    fn new(json: bool) -> Self {
        Self {
            json,
            header_done: false,
        }
    }

    fn print(
        &mut self,
        out: &mut impl Write,
        index: usize,
        prompt: &Prompt,
        p: &Prediction,
    ) -> std::io::Result<()> {
        if self.json {
            let v = json!({
                "index": index,
                "tier": p.tier,
                "top_tier": p.top_tier,
                "confidence": p.confidence,
                "confident": p.confident,
                "probabilities": p.probabilities,
                "tokens": p.tokens,
                "truncated": p.truncated,
            });
            return writeln!(out, "{v}");
        }
        if !self.header_done {
            writeln!(
                out,
                "{:>5}  {:<10} {:>5}  {:>5} {:>5} {:>5} {:>5}  prompt",
                "#", "tier", "conf", "easy", "med", "hard", "info"
            )?;
            self.header_done = true;
        }
        let pr = p.probabilities;
        let tier = if p.confident {
            p.tier.to_string()
        } else {
            format!("{}*", p.tier)
        };
        writeln!(
            out,
            "{:>5}  {:<10} {:>5.2}  {:>5.2} {:>5.2} {:>5.2} {:>5.2}  {}",
            index,
            tier,
            p.confidence,
            pr.easy,
            pr.medium,
            pr.hard,
            pr.needs_info,
            preview(&prompt.text, 60)
        )
    }
}

/// The first `max` characters of `text` on one line.
fn preview(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .collect();
    let flat = flat.trim();
    if flat.chars().count() <= max {
        return flat.to_string();
    }
    let mut s: String = flat.chars().take(max - 1).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_json_and_rejects_bad_lines() {
        assert_eq!(parse_line(b"\n"), Ok(None));
        assert_eq!(
            parse_line(b"what is 2+2?\n").unwrap().unwrap().text,
            "what is 2+2?"
        );
        assert_eq!(
            parse_line(br#"{"prompt": "hello"}"#).unwrap().unwrap().text,
            "hello"
        );
        assert!(parse_line(b"{not json")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_line(b"caf\xff").unwrap_err().contains("UTF-8"));
        assert!(parse_line(br#"{"text": ""}"#)
            .unwrap_err()
            .contains("empty"));
    }

    #[test]
    fn preview_is_one_line_and_bounded() {
        assert_eq!(preview("a\nb", 10), "a b");
        assert_eq!(preview(&"x".repeat(100), 10).chars().count(), 10);
    }
}
