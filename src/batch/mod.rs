//! Offline classification of request logs and the savings report (`triage batch`).
//!
//! [`run`] streams rows out of the inputs ([`input`]), classifies them in chunks, asks the
//! [`TierPolicy`] which model each mode would pick, prices the current and the routed model
//! ([`crate::pricing`]) and adds every row to a [`Summary`]. Three stages overlap on their own
//! threads, so that reading, tokenising and the model (whose matrix products use every core)
//! keep each other busy: a reader parses rows, a tokeniser encodes them, and the calling thread
//! runs the encoder and hands each finished row to an [`Observer`]. Memory stays bounded by a
//! few chunks whatever the size of the files.

pub mod input;
pub mod progress;
pub mod report;
pub mod summary;

use std::io::BufRead;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use serde::Serialize;

use crate::classifier::{Classifier, ClassifierError, Encoded, Prediction};
use crate::policy::{Mode, PolicyError, TierPolicy};
use crate::pricing::{Family, PriceTable};

pub use input::{Estimation, Fields, Format, Record, RowError, TokenCount};
pub use summary::Summary;

/// Errors that stop a batch run (a bad row does not: it becomes a [`RowError`]).
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown format {0:?} (expected openai-chat, openai-batch, jsonl, csv or triage-log)")]
    UnknownFormat(String),
    #[error(transparent)]
    Classifier(#[from] ClassifierError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{0}")]
    Output(String),
}

impl BatchError {
    pub fn io(path: &str, source: std::io::Error) -> Self {
        BatchError::Io {
            path: path.to_string(),
            source,
        }
    }
}

/// One input: a name for messages and a reader.
pub struct Input {
    pub name: String,
    pub reader: Box<dyn BufRead + Send>,
}

/// How a batch run reads and prices rows.
#[derive(Debug, Clone)]
pub struct Options {
    /// The format of every input; `None` detects each file's.
    pub format: Option<Format>,
    pub fields: Fields,
    pub estimation: Estimation,
    /// Route every row within this provider family, instead of the family of the row's model.
    pub family: Option<String>,
    /// The model assumed for rows whose log names none.
    pub default_model: Option<String>,
    /// Rows per chunk passed between the stages.
    pub chunk_rows: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            format: None,
            fields: Fields::default(),
            estimation: Estimation::default(),
            family: None,
            default_model: None,
            chunk_rows: 256,
        }
    }
}

/// The model one mode would pick for a row, and what the row would have cost there.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub mode: Mode,
    pub model: String,
    pub cost_usd: Option<f64>,
}

/// A classified row.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Index of the input the row came from.
    pub file: usize,
    pub record: Record,
    /// The model the row was sent to (the log's, else [`Options::default_model`]).
    pub model: Option<String>,
    /// The family routed within.
    pub family: String,
    pub prediction: Prediction,
    /// What the row cost on its own model; `None` when the model or its price is unknown.
    pub current_cost_usd: Option<f64>,
    /// One route per mode, in [`Mode::ALL`] order.
    pub routes: Vec<Route>,
}

impl Outcome {
    /// The row as one line of `--out`: where it came from, its tier, probabilities, and the
    /// model and cost of each mode.
    pub fn to_json(&self, file_name: &str) -> serde_json::Value {
        let p = &self.prediction;
        let routed: serde_json::Map<String, serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                (
                    r.mode.as_str().to_string(),
                    serde_json::json!({"model": r.model, "cost_usd": r.cost_usd}),
                )
            })
            .collect();
        serde_json::json!({
            "file": file_name,
            "line": self.record.line,
            "id": self.record.id,
            "model": self.model,
            "family": self.family,
            "tier": p.tier,
            "confidence": p.confidence,
            "probabilities": p.probabilities,
            "input_tokens": self.record.input_tokens.tokens,
            "input_tokens_estimated": self.record.input_tokens.estimated,
            "output_tokens": self.record.output_tokens.tokens,
            "output_tokens_estimated": self.record.output_tokens.estimated,
            "current_cost_usd": self.current_cost_usd,
            "routed": routed,
        })
    }
}

/// Receives rows as they are finished, in input order.
pub trait Observer {
    /// A file's format is known and its rows follow.
    fn file(&mut self, _index: usize, _format: Format) -> Result<(), BatchError> {
        Ok(())
    }
    fn row(&mut self, outcome: &Outcome) -> Result<(), BatchError>;
    fn skipped(&mut self, file: usize, error: &RowError) -> Result<(), BatchError>;
    /// After each chunk: rows classified and skipped so far, and bytes of input consumed.
    fn progress(&mut self, _rows: u64, _skipped: u64, _bytes: u64) {}
}

/// An observer that keeps nothing.
pub struct Discard;

impl Observer for Discard {
    fn row(&mut self, _: &Outcome) -> Result<(), BatchError> {
        Ok(())
    }
    fn skipped(&mut self, _: usize, _: &RowError) -> Result<(), BatchError> {
        Ok(())
    }
}

/// Turns a classified record into an [`Outcome`]: family, routes and costs.
pub struct Router<'a> {
    policy: &'a TierPolicy,
    prices: &'a PriceTable,
    family: Option<String>,
    default_model: Option<String>,
}

impl<'a> Router<'a> {
    /// `family`, when given, must be one of the policy's.
    pub fn new(
        policy: &'a TierPolicy,
        prices: &'a PriceTable,
        family: Option<&str>,
        default_model: Option<&str>,
    ) -> Result<Self, BatchError> {
        if let Some(f) = family {
            policy.table(f)?;
        }
        Ok(Self {
            policy,
            prices,
            family: family.map(str::to_string),
            default_model: default_model.map(str::to_string),
        })
    }

    pub fn route(
        &self,
        file: usize,
        record: Record,
        prediction: Prediction,
    ) -> Result<Outcome, BatchError> {
        let model = record.model.clone().or_else(|| self.default_model.clone());
        let family = match &self.family {
            Some(f) => f.clone(),
            None => model
                .as_deref()
                .and_then(Family::of_model)
                .map(Family::as_str)
                .filter(|f| self.policy.table(f).is_ok())
                .unwrap_or(self.policy.default_family())
                .to_string(),
        };
        let (input, output) = (record.input_tokens.tokens, record.output_tokens.tokens);
        let current_cost_usd = model
            .as_deref()
            .and_then(|m| self.prices.cost(m, input, output));
        let mut routes = Vec::with_capacity(Mode::ALL.len());
        for mode in Mode::ALL {
            let choice = self.policy.choose(
                Some(prediction.tier),
                Some(&prediction.probabilities),
                mode,
                Some(&family),
                None,
            )?;
            let cost_usd = self.prices.cost(&choice.model, input, output);
            routes.push(Route {
                mode,
                model: choice.model,
                cost_usd,
            });
        }
        Ok(Outcome {
            file,
            record,
            model,
            family,
            prediction,
            current_cost_usd,
            routes,
        })
    }
}

/// Rows of one chunk, from the reader.
enum Parsed {
    File(usize, Format),
    Rows {
        file: usize,
        rows: Vec<input::Row>,
        bytes: u64,
    },
    Failed(BatchError),
}

/// Rows of one chunk with the token ids of the usable ones, from the tokeniser.
enum Tokenized {
    File(usize, Format),
    Rows {
        file: usize,
        rows: Vec<input::Row>,
        encoded: Vec<Encoded>,
        bytes: u64,
    },
    Failed(BatchError),
}

/// Chunks in flight between two stages.
const QUEUE: usize = 4;

/// Classifies every row of `inputs`, reporting each to `observer`, and returns the summary.
pub fn run(
    classifier: &Classifier,
    policy: &TierPolicy,
    prices: &PriceTable,
    inputs: Vec<Input>,
    options: &Options,
    observer: &mut dyn Observer,
) -> Result<Summary, BatchError> {
    let router = Router::new(
        policy,
        prices,
        options.family.as_deref(),
        options.default_model.as_deref(),
    )?;
    let names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let mut summary = Summary::new(&classifier.config().name, &names, options);
    let (parsed_tx, parsed_rx) = sync_channel::<Parsed>(QUEUE);
    let (tokens_tx, tokens_rx) = sync_channel::<Tokenized>(QUEUE);
    std::thread::scope(|scope| {
        scope.spawn(|| read_inputs(inputs, options, parsed_tx));
        scope.spawn(|| tokenize(classifier, parsed_rx, tokens_tx));
        classify(classifier, &router, tokens_rx, &mut summary, observer)
    })?;
    summary.finish();
    Ok(summary)
}

fn read_inputs(inputs: Vec<Input>, options: &Options, tx: SyncSender<Parsed>) {
    let chunk = options.chunk_rows.max(1);
    let mut bytes_before = 0u64;
    for (index, input) in inputs.into_iter().enumerate() {
        let mut reader = match input::RowReader::new(
            input.reader,
            &input.name,
            options.format,
            options.fields.clone(),
            options.estimation,
        ) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Parsed::Failed(e));
                return;
            }
        };
        if tx.send(Parsed::File(index, reader.format())).is_err() {
            return;
        }
        let mut rows = Vec::with_capacity(chunk);
        loop {
            let next = match reader.next_row() {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.send(Parsed::Failed(BatchError::io(&input.name, e)));
                    return;
                }
            };
            let end = next.is_none();
            if let Some(row) = next {
                rows.push(row);
            }
            if rows.len() >= chunk || (end && !rows.is_empty()) {
                let msg = Parsed::Rows {
                    file: index,
                    rows: std::mem::replace(&mut rows, Vec::with_capacity(chunk)),
                    bytes: bytes_before + reader.bytes_read(),
                };
                if tx.send(msg).is_err() {
                    return;
                }
            }
            if end {
                break;
            }
        }
        bytes_before += reader.bytes_read();
    }
}

fn tokenize(classifier: &Classifier, rx: Receiver<Parsed>, tx: SyncSender<Tokenized>) {
    for msg in rx {
        let out = match msg {
            Parsed::File(i, f) => Tokenized::File(i, f),
            Parsed::Failed(e) => Tokenized::Failed(e),
            Parsed::Rows { file, rows, bytes } => {
                let mut encoded = Vec::with_capacity(rows.len());
                let rows = rows
                    .into_iter()
                    .map(|row| {
                        let record = row?;
                        match classifier.tokenizer().encode(&record.prompt) {
                            Ok(e) => {
                                encoded.push(e);
                                Ok(record)
                            }
                            Err(e) => Err(RowError {
                                line: record.line,
                                reason: format!("cannot tokenise the prompt: {e}"),
                            }),
                        }
                    })
                    .collect();
                Tokenized::Rows {
                    file,
                    rows,
                    encoded,
                    bytes,
                }
            }
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

fn classify(
    classifier: &Classifier,
    router: &Router,
    rx: Receiver<Tokenized>,
    summary: &mut Summary,
    observer: &mut dyn Observer,
) -> Result<(), BatchError> {
    let temperature = classifier.config().temperature;
    let threshold = classifier.threshold();
    for msg in rx {
        let (file, rows, encoded, bytes) = match msg {
            Tokenized::File(index, format) => {
                summary.set_format(index, format);
                observer.file(index, format)?;
                continue;
            }
            Tokenized::Failed(e) => return Err(e),
            Tokenized::Rows {
                file,
                rows,
                encoded,
                bytes,
            } => (file, rows, encoded, bytes),
        };
        let logits = classifier.logits(&encoded)?;
        let mut predictions = logits
            .into_iter()
            .zip(&encoded)
            .map(|(l, e)| Prediction::from_logits(l, temperature, threshold, e));
        for row in rows {
            match row {
                Ok(record) => {
                    let prediction = predictions.next().ok_or_else(|| {
                        BatchError::Output("internal: fewer predictions than rows".into())
                    })?;
                    let outcome = router.route(file, record, prediction)?;
                    summary.add(&outcome);
                    observer.row(&outcome)?;
                }
                Err(e) => {
                    summary.add_skipped(file);
                    observer.skipped(file, &e)?;
                }
            }
        }
        observer.progress(summary.rows, summary.skipped, bytes);
    }
    Ok(())
}
