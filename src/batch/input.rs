//! Reads request logs row by row, streaming, in the formats `triage batch` understands, and
//! turns each row into a [`Record`] or the reason it is unusable.
//!
//! Formats (see [`Format`]): OpenAI chat-completion request bodies, OpenAI Batch API input
//! lines, generic JSONL or CSV with a prompt column, and triage's own request log. A file's
//! format is detected from its name and its first lines unless one is named.

use std::collections::VecDeque;
use std::fmt;
use std::io::BufRead;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::classifier::input::{content_text, prompt_from_json, turns_from_messages};
use crate::classifier::Prompt;

use super::BatchError;

/// Lines looked at to detect a file's format.
const DETECT_LINES: usize = 32;

/// A request-log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// One OpenAI chat-completion request body per line: `{"model", "messages", ...}`.
    OpenaiChat,
    /// OpenAI Batch API input: `{"custom_id", "method", "url", "body": {...}}` per line.
    OpenaiBatch,
    /// One JSON object per line with a prompt field and optional model and token fields.
    Jsonl,
    /// CSV with a header row naming a prompt column and optional model and token columns.
    Csv,
    /// triage's own request log: `{"triage_log": 1, "model", "messages" | "input", "usage"}`.
    TriageLog,
}

impl Format {
    pub const ALL: [Format; 5] = [
        Format::OpenaiChat,
        Format::OpenaiBatch,
        Format::Jsonl,
        Format::Csv,
        Format::TriageLog,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::OpenaiChat => "openai-chat",
            Format::OpenaiBatch => "openai-batch",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::TriageLog => "triage-log",
        }
    }

    fn is_json(self) -> bool {
        self != Format::Csv
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = BatchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| BatchError::UnknownFormat(s.to_string()))
    }
}

/// Which fields (JSONL: dotted paths such as `usage.prompt_tokens`; CSV: column names) hold
/// what. `None` tries the usual names in order.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    pub prompt: Option<String>,
    pub model: Option<String>,
    pub input_tokens: Option<String>,
    pub output_tokens: Option<String>,
    pub id: Option<String>,
}

const PROMPT_NAMES: &[&str] = &["messages", "prompt", "text", "input", "question", "query"];
const MODEL_NAMES: &[&str] = &["model"];
const INPUT_NAMES: &[&str] = &[
    "input_tokens",
    "prompt_tokens",
    "usage.input_tokens",
    "usage.prompt_tokens",
];
const OUTPUT_NAMES: &[&str] = &[
    "output_tokens",
    "completion_tokens",
    "usage.output_tokens",
    "usage.completion_tokens",
];
const ID_NAMES: &[&str] = &["custom_id", "id", "request_id"];
/// Fields whose text is the answer that was given, used to estimate output tokens.
const RESPONSE_NAMES: &[&str] = &["response", "completion", "output", "answer"];

/// How missing token counts are estimated.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimation {
    /// Output tokens assumed for a row that has neither a count nor the answer's text.
    pub default_output_tokens: u64,
}

impl Default for Estimation {
    fn default() -> Self {
        Self {
            default_output_tokens: 250,
        }
    }
}

/// Estimated tokens of `chars` characters of text: one token per four characters, rounded up
/// (OpenAI's rule of thumb for English; providers' own tokenizers differ by some 10-30%).
pub fn estimate_tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

/// A token count and whether it was estimated rather than read from the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct TokenCount {
    pub tokens: u64,
    pub estimated: bool,
}

/// One usable row.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// 1-based line where the row starts.
    pub line: u64,
    pub id: Option<String>,
    pub prompt: Prompt,
    /// The model the request used, when the log says.
    pub model: Option<String>,
    pub input_tokens: TokenCount,
    pub output_tokens: TokenCount,
}

/// A row that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub line: u64,
    pub reason: String,
}

/// What one row of a file turned into.
pub type Row = Result<Record, RowError>;

/// Streams the rows of one file. Blank lines are not rows.
pub struct RowReader<R> {
    reader: R,
    format: Format,
    fields: Fields,
    estimation: Estimation,
    /// Lines read ahead to detect the format, with their line numbers.
    pending: VecDeque<(u64, Vec<u8>)>,
    line_no: u64,
    bytes: u64,
    csv: Option<CsvColumns>,
    done: bool,
}

impl<R: BufRead> RowReader<R> {
    /// Reads rows of `format`, or detects it from `name` (a `.csv` file is CSV) and the first
    /// lines.
    pub fn new(
        mut reader: R,
        name: &str,
        format: Option<Format>,
        fields: Fields,
        estimation: Estimation,
    ) -> Result<Self, BatchError> {
        let mut pending = VecDeque::new();
        let mut line_no = 0;
        let mut bytes = 0;
        let format = match format {
            Some(f) => f,
            None if name.to_ascii_lowercase().ends_with(".csv") => Format::Csv,
            None => {
                let mut detected = None;
                while pending.len() < DETECT_LINES {
                    let mut line = Vec::new();
                    let n = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| BatchError::io(name, e))?;
                    if n == 0 {
                        break;
                    }
                    bytes += n as u64;
                    line_no += 1;
                    let guess = detect_line(&line);
                    pending.push_back((line_no, line));
                    if let Some(g) = guess {
                        detected = Some(g);
                        break;
                    }
                }
                detected.unwrap_or(Format::Jsonl)
            }
        };
        Ok(Self {
            reader,
            format,
            fields,
            estimation,
            pending,
            line_no,
            bytes,
            csv: None,
            done: false,
        })
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Bytes read from the file so far.
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }

    /// The next line with its number, or `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<(u64, Vec<u8>)>> {
        if let Some(l) = self.pending.pop_front() {
            return Ok(Some(l));
        }
        let mut line = Vec::new();
        let n = self.reader.read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None);
        }
        self.bytes += n as u64;
        self.line_no += 1;
        Ok(Some((self.line_no, line)))
    }

    /// The next row; `Err` only for a failure to read the file.
    pub fn next_row(&mut self) -> std::io::Result<Option<Row>> {
        if self.done {
            return Ok(None);
        }
        loop {
            let row = if self.format.is_json() {
                let Some((line_no, raw)) = self.next_line()? else {
                    self.done = true;
                    return Ok(None);
                };
                if raw.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                self.json_row(line_no, &raw)
            } else {
                let Some((line_no, fields)) = self.csv_record()? else {
                    self.done = true;
                    return Ok(None);
                };
                let fields = match fields {
                    Ok(f) => f,
                    Err(reason) => {
                        return Ok(Some(Err(RowError {
                            line: line_no,
                            reason,
                        })))
                    }
                };
                if fields.iter().all(|f| f.trim().is_empty()) {
                    continue;
                }
                if self.csv.is_none() {
                    match CsvColumns::from_header(&fields, &self.fields) {
                        Ok(c) => {
                            self.csv = Some(c);
                            continue;
                        }
                        Err(reason) => {
                            // Without a prompt column no row of the file is usable: report it
                            // once, as the header's error, and read no further.
                            self.done = true;
                            return Ok(Some(Err(RowError {
                                line: line_no,
                                reason,
                            })));
                        }
                    }
                }
                self.csv_row(line_no, &fields)
            };
            return Ok(Some(row));
        }
    }

    fn json_row(&self, line: u64, raw: &[u8]) -> Row {
        let err = |reason: String| RowError { line, reason };
        let text = std::str::from_utf8(raw).map_err(|e| err(format!("not valid UTF-8 ({e})")))?;
        let value: Value =
            serde_json::from_str(text).map_err(|e| err(format!("not valid JSON ({e})")))?;
        let Value::Object(obj) = value else {
            return Err(err("not a JSON object".into()));
        };
        json_record(self.format, &obj, &self.fields, self.estimation)
            .map(|mut r| {
                r.line = line;
                r
            })
            .map_err(err)
    }

    fn csv_row(&self, line: u64, fields: &[String]) -> Row {
        let err = |reason: String| RowError { line, reason };
        let Some(cols) = &self.csv else {
            return Err(err("no header row".into()));
        };
        if fields.len() != cols.width {
            return Err(err(format!(
                "{} fields where the header has {}",
                fields.len(),
                cols.width
            )));
        }
        let cell = |i: Option<usize>| i.map(|i| fields[i].trim()).filter(|s| !s.is_empty());
        let raw_prompt = fields[cols.prompt].as_str();
        // A prompt cell may hold a JSON array of messages: a whole conversation.
        let prompt = if raw_prompt.trim_start().starts_with('[') {
            match serde_json::from_str::<Value>(raw_prompt) {
                Ok(v @ Value::Array(_)) => turns_from_messages(&v)
                    .map(|t| Prompt::from_turns(&t))
                    .map_err(|e| err(e.to_string()))?,
                _ => Prompt::text(raw_prompt),
            }
        } else {
            Prompt::text(raw_prompt)
        };
        if prompt.is_empty() {
            return Err(err(format!("column {:?} is empty", cols.prompt_name)));
        }
        let count = |i: Option<usize>, name: &str| -> Result<Option<u64>, RowError> {
            match cell(i) {
                None => Ok(None),
                Some(s) => parse_count(s)
                    .map(Some)
                    .ok_or_else(|| err(format!("column {name:?} is not a token count: {s:?}"))),
            }
        };
        let input = count(cols.input_tokens, "input tokens")?;
        let output = count(cols.output_tokens, "output tokens")?;
        let response_chars = cell(cols.response).map(|s| s.chars().count());
        Ok(Record {
            line,
            id: cell(cols.id).map(str::to_string),
            model: cell(cols.model).map(str::to_string),
            input_tokens: input_count(input, &prompt),
            output_tokens: output_count(output, response_chars, self.estimation),
            prompt,
        })
    }

    /// The next CSV record (RFC 4180: quoted fields may hold commas, doubled quotes and line
    /// breaks) with the line it starts on.
    #[allow(clippy::type_complexity)]
    fn csv_record(&mut self) -> std::io::Result<Option<(u64, Result<Vec<String>, String>)>> {
        let Some((start, first)) = self.next_line()? else {
            return Ok(None);
        };
        let mut raw = first;
        loop {
            match split_csv(&raw) {
                CsvSplit::Done(fields) => return Ok(Some((start, Ok(fields)))),
                CsvSplit::Bad(reason) => return Ok(Some((start, Err(reason)))),
                CsvSplit::OpenQuote => match self.next_line()? {
                    Some((_, more)) => raw.extend_from_slice(&more),
                    None => {
                        return Ok(Some((
                            start,
                            Err("a quoted field is not closed before the end of the file".into()),
                        )))
                    }
                },
            }
        }
    }
}

enum CsvSplit {
    Done(Vec<String>),
    /// The record goes on past this line inside a quoted field.
    OpenQuote,
    Bad(String),
}

fn split_csv(raw: &[u8]) -> CsvSplit {
    let text = match std::str::from_utf8(raw) {
        Ok(t) => t,
        Err(e) => return CsvSplit::Bad(format!("not valid UTF-8 ({e})")),
    };
    let text = text.strip_suffix('\n').unwrap_or(text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut in_quotes = false;
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
            continue;
        }
        match c {
            ',' => {
                fields.push(std::mem::take(&mut field));
                quoted = false;
            }
            '"' if field.is_empty() && !quoted => {
                in_quotes = true;
                quoted = true;
            }
            '"' => return CsvSplit::Bad("a quote inside an unquoted field".into()),
            _ if quoted => {
                return CsvSplit::Bad("text after the closing quote of a field".into());
            }
            _ => field.push(c),
        }
    }
    if in_quotes {
        return CsvSplit::OpenQuote;
    }
    fields.push(field);
    CsvSplit::Done(fields)
}

/// Column positions, from the header row.
struct CsvColumns {
    width: usize,
    prompt: usize,
    prompt_name: String,
    model: Option<usize>,
    input_tokens: Option<usize>,
    output_tokens: Option<usize>,
    id: Option<usize>,
    response: Option<usize>,
}

impl CsvColumns {
    fn from_header(header: &[String], fields: &Fields) -> Result<Self, String> {
        let names: Vec<String> = header
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        let find = |wanted: &Option<String>, defaults: &[&str]| -> Result<Option<usize>, String> {
            match wanted {
                Some(w) => names
                    .iter()
                    .position(|n| n.eq_ignore_ascii_case(w.trim()))
                    .map(Some)
                    .ok_or_else(|| format!("the header has no column {w:?}")),
                None => Ok(defaults.iter().find_map(|d| {
                    let d = d.strip_prefix("usage.").unwrap_or(d);
                    names.iter().position(|n| n == d)
                })),
            }
        };
        let prompt = find(&fields.prompt, PROMPT_NAMES)?.ok_or_else(|| {
            format!(
                "the header has no prompt column (looked for {}; name it with --prompt-field)",
                PROMPT_NAMES.join(", ")
            )
        })?;
        Ok(Self {
            width: header.len(),
            prompt,
            prompt_name: header[prompt].trim().to_string(),
            model: find(&fields.model, MODEL_NAMES)?,
            input_tokens: find(&fields.input_tokens, INPUT_NAMES)?,
            output_tokens: find(&fields.output_tokens, OUTPUT_NAMES)?,
            id: find(&fields.id, ID_NAMES)?,
            response: find(&None, RESPONSE_NAMES)?,
        })
    }
}

/// The format a first line suggests, or `None` when it says nothing (blank, not JSON).
fn detect_line(raw: &[u8]) -> Option<Format> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if !text.starts_with('{') {
        return Some(Format::Csv);
    }
    let Ok(Value::Object(obj)) = serde_json::from_str::<Value>(text) else {
        return None;
    };
    Some(if obj.contains_key("triage_log") {
        Format::TriageLog
    } else if obj.contains_key("custom_id") && obj.contains_key("body") {
        Format::OpenaiBatch
    } else if obj.contains_key("messages") && obj.contains_key("model") {
        Format::OpenaiChat
    } else {
        Format::Jsonl
    })
}

/// The value at a dotted path (`usage.prompt_tokens`).
fn get_path<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut v = obj.get(parts.next()?)?;
    for p in parts {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    s.parse::<u64>().ok().or_else(|| {
        // Spreadsheets write whole numbers as `120.0`.
        let f = s.parse::<f64>().ok()?;
        (f >= 0.0 && f.fract() == 0.0 && f < 1e15).then_some(f as u64)
    })
}

fn json_count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            let f = n.as_f64()?;
            (f >= 0.0 && f.fract() == 0.0 && f < 1e15).then_some(f as u64)
        }),
        Value::String(s) => parse_count(s),
        _ => None,
    }
}

fn input_count(read: Option<u64>, prompt: &Prompt) -> TokenCount {
    match read {
        Some(tokens) => TokenCount {
            tokens,
            estimated: false,
        },
        None => TokenCount {
            tokens: estimate_tokens(prompt.text.chars().count() + prompt.context.chars().count()),
            estimated: true,
        },
    }
}

fn output_count(
    read: Option<u64>,
    response_chars: Option<usize>,
    estimation: Estimation,
) -> TokenCount {
    match (read, response_chars) {
        (Some(tokens), _) => TokenCount {
            tokens,
            estimated: false,
        },
        (None, Some(chars)) => TokenCount {
            tokens: estimate_tokens(chars),
            estimated: true,
        },
        (None, None) => TokenCount {
            tokens: estimation.default_output_tokens,
            estimated: true,
        },
    }
}

/// A field named by the user (which must exist when present) or the first of `defaults` found.
fn pick<'a>(
    obj: &'a Map<String, Value>,
    wanted: &Option<String>,
    defaults: &[&str],
) -> Result<Option<(String, &'a Value)>, String> {
    match wanted {
        Some(w) => Ok(get_path(obj, w).map(|v| (w.clone(), v))),
        None => Ok(defaults
            .iter()
            .find_map(|d| get_path(obj, d).map(|v| (d.to_string(), v)))),
    }
}

fn optional_string(
    obj: &Map<String, Value>,
    wanted: &Option<String>,
    defaults: &[&str],
) -> Result<Option<String>, String> {
    match pick(obj, wanted, defaults)? {
        None | Some((_, Value::Null)) => Ok(None),
        Some((_, Value::String(s))) if s.trim().is_empty() => Ok(None),
        Some((_, Value::String(s))) => Ok(Some(s.clone())),
        Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
        Some((name, _)) => Err(format!("field {name:?} must be a string")),
    }
}

fn optional_count(
    obj: &Map<String, Value>,
    wanted: &Option<String>,
    defaults: &[&str],
) -> Result<Option<u64>, String> {
    match pick(obj, wanted, defaults)? {
        None | Some((_, Value::Null)) => Ok(None),
        Some((name, v)) => json_count(v)
            .map(Some)
            .ok_or_else(|| format!("field {name:?} must be a whole number of tokens, got {v}")),
    }
}

/// The text of an answer field (a string, or an OpenAI response with `choices`).
fn response_chars(obj: &Map<String, Value>) -> Option<usize> {
    RESPONSE_NAMES
        .iter()
        .find_map(|name| match obj.get(*name)? {
            Value::String(s) => Some(s.chars().count()),
            Value::Object(o) => {
                let choices = o.get("choices")?.as_array()?;
                let mut chars = 0;
                for c in choices {
                    let content = c.get("message")?.get("content")?;
                    chars += content_text(content).ok()?.chars().count();
                }
                Some(chars)
            }
            _ => None,
        })
}

/// A record from one JSON object of `format`. The line number is filled in by the caller.
fn json_record(
    format: Format,
    obj: &Map<String, Value>,
    fields: &Fields,
    estimation: Estimation,
) -> Result<Record, String> {
    match format {
        Format::OpenaiBatch => {
            let body = match obj.get("body") {
                Some(Value::Object(b)) => b,
                Some(_) => return Err("field \"body\" must be an object".into()),
                None => return Err("not a Batch API line: no \"body\"".into()),
            };
            let mut record = json_record(Format::OpenaiChat, body, fields, estimation)?;
            record.id = optional_string(obj, &None, &["custom_id"])?;
            Ok(record)
        }
        Format::OpenaiChat => {
            let prompt = match (obj.get("messages"), obj.get("input"), obj.get("prompt")) {
                (Some(m), _, _) => {
                    Prompt::from_turns(&turns_from_messages(m).map_err(|e| e.to_string())?)
                }
                // The Responses and legacy Completions APIs.
                (None, Some(_), _) | (None, None, Some(_)) => {
                    prompt_from_json(&Value::Object(obj.clone())).map_err(|e| e.to_string())?
                }
                (None, None, None) => {
                    return Err("no \"messages\" (not a chat completion request)".into())
                }
            };
            if prompt.is_empty() {
                return Err("the prompt is empty".into());
            }
            let input = optional_count(obj, &None, INPUT_NAMES)?;
            let output = optional_count(obj, &None, OUTPUT_NAMES)?;
            Ok(Record {
                line: 0,
                id: None,
                model: optional_string(obj, &None, MODEL_NAMES)?,
                input_tokens: input_count(input, &prompt),
                output_tokens: output_count(output, response_chars(obj), estimation),
                prompt,
            })
        }
        Format::Jsonl | Format::TriageLog => {
            let (name, v) =
                pick(obj, &fields.prompt, PROMPT_NAMES)?.ok_or_else(|| match &fields.prompt {
                    Some(w) => format!("no field {w:?}"),
                    None => format!("no prompt: expected one of {}", PROMPT_NAMES.join(", ")),
                })?;
            let prompt = match v {
                Value::String(s) => Prompt::text(s.clone()),
                Value::Array(_) => Prompt::from_turns(
                    &turns_from_messages(v).map_err(|e| format!("field {name:?}: {e}"))?,
                ),
                _ => {
                    return Err(format!(
                        "field {name:?} must be a string or an array of messages"
                    ))
                }
            };
            if prompt.is_empty() {
                return Err(format!("field {name:?} is empty"));
            }
            let input = optional_count(obj, &fields.input_tokens, INPUT_NAMES)?;
            let output = optional_count(obj, &fields.output_tokens, OUTPUT_NAMES)?;
            Ok(Record {
                line: 0,
                id: optional_string(obj, &fields.id, ID_NAMES)?,
                model: optional_string(obj, &fields.model, MODEL_NAMES)?,
                input_tokens: input_count(input, &prompt),
                output_tokens: output_count(output, response_chars(obj), estimation),
                prompt,
            })
        }
        Format::Csv => Err("CSV rows are not JSON".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(text: &str, name: &str, format: Option<Format>) -> (Format, Vec<Row>) {
        let mut r = RowReader::new(
            text.as_bytes(),
            name,
            format,
            Fields::default(),
            Estimation::default(),
        )
        .unwrap();
        let mut out = Vec::new();
        while let Some(row) = r.next_row().unwrap() {
            out.push(row);
        }
        (r.format(), out)
    }

    #[test]
    fn csv_fields_follow_rfc4180_quoting() {
        let CsvSplit::Done(f) = split_csv(b"a,\"b, c\",\"say \"\"hi\"\"\",\r\n") else {
            panic!()
        };
        assert_eq!(f, vec!["a", "b, c", "say \"hi\"", ""]);
        assert!(matches!(split_csv(b"\"open, field\n"), CsvSplit::OpenQuote));
        assert!(matches!(split_csv(b"a\"b,c"), CsvSplit::Bad(_)));
        assert!(matches!(split_csv(b"\"a\"b,c"), CsvSplit::Bad(_)));
    }

    #[test]
    fn csv_record_spans_lines_and_keeps_its_first_line_number() {
        let text = "prompt,model\n\"line one\nline two\",gpt-4o\nnext,gpt-4o\n";
        let (format, rows) = rows(text, "x.csv", None);
        assert_eq!(format, Format::Csv);
        let rows: Vec<Record> = rows.into_iter().map(Result::unwrap).collect();
        assert_eq!(rows[0].line, 2);
        assert_eq!(rows[0].prompt.text, "line one\nline two");
        assert_eq!(rows[1].line, 4);
    }

    #[test]
    fn detects_each_json_format() {
        for (line, want) in [
            (
                r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}}"#,
                Format::OpenaiBatch,
            ),
            (
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
                Format::OpenaiChat,
            ),
            (r#"{"prompt":"hi"}"#, Format::Jsonl),
            (r#"{"triage_log":1,"input":"hi"}"#, Format::TriageLog),
            ("prompt,model", Format::Csv),
        ] {
            assert_eq!(rows(line, "log", None).0, want, "{line}");
        }
        // Unparseable first lines are skipped for detection and still reported as rows.
        let (format, rows) = rows(
            "{oops\n{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}\n",
            "log",
            None,
        );
        assert_eq!(format, Format::OpenaiChat);
        assert_eq!(rows[0].as_ref().unwrap_err().line, 1);
        assert!(rows[1].is_ok());
    }

    #[test]
    fn token_counts_are_read_or_estimated() {
        let (_, rows) = rows(
            "{\"prompt\":\"abcdefgh\",\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":3}}\n{\"prompt\":\"abcdefghi\",\"response\":\"abcd\"}\n{\"prompt\":\"x\",\"input_tokens\":-1}\n",
            "log",
            None,
        );
        let r0 = rows[0].as_ref().unwrap();
        assert_eq!(
            r0.input_tokens,
            TokenCount {
                tokens: 7,
                estimated: false
            }
        );
        assert_eq!(
            r0.output_tokens,
            TokenCount {
                tokens: 3,
                estimated: false
            }
        );
        let r1 = rows[1].as_ref().unwrap();
        assert_eq!(
            r1.input_tokens,
            TokenCount {
                tokens: 3,
                estimated: true
            }
        );
        assert_eq!(
            r1.output_tokens,
            TokenCount {
                tokens: 1,
                estimated: true
            }
        );
        assert!(rows[2]
            .as_ref()
            .unwrap_err()
            .reason
            .contains("input_tokens"));
    }
}
