//! The request log: one JSON line per answered request, in the `triage-log` format that
//! `triage batch` reads back (see [`crate::batch::input::Format::TriageLog`]).
//!
//! Handlers hand a [`LogEntry`] to [`RequestLog::record`], which never blocks: entries go
//! through a bounded channel to a writer thread that serialises them, writes whatever has
//! queued up in one go and flushes when the queue runs dry. When the queue is full the entry
//! is dropped and counted (`triage_request_log_dropped_total`) rather than slowing a request.
//! [`RequestLog::close`] writes out what is queued and flushes; the server calls it on
//! graceful shutdown.
//!
//! A line holds the prompt (each message's role and text; images and tool-call arguments are
//! left out), the model and provider that answered, the tier, token usage and timings. It
//! never holds request headers, so neither client keys nor provider keys can reach it.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::classifier::input::content_text;
use crate::gateway::types::{Message, Role, Usage};

/// The `triage_log` version written on every line.
pub const LOG_VERSION: u64 = 1;

/// Entries that may wait for the writer before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 8192;

/// Most entries written between two flushes.
const MAX_WRITE_BATCH: usize = 512;

/// Errors from opening the log.
#[derive(Debug, thiserror::Error)]
pub enum RequestLogError {
    #[error("cannot open the request log {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("cannot start the request log writer: {0}")]
    Spawn(io::Error),
}

/// What the log has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct RequestLogCounters {
    written: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

impl RequestLogCounters {
    /// Lines written to the file.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Entries dropped because the queue was full (or the log was already closed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Lines lost to a write error.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// The prompt of a logged request.
#[derive(Debug, Clone)]
pub enum LoggedPrompt {
    /// A chat-completions request's messages.
    Chat(Vec<Message>),
    /// A select-model request body: its `messages`, or its `input` (`text`, `prompt`).
    Select(Value),
}

/// One request, as handlers describe it; serialised on the writer thread.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub ts: SystemTime,
    pub request_id: String,
    /// `chat.completions`, `select-model` or `router`.
    pub endpoint: &'static str,
    /// The model the client named (`auto`, `auto:cost`, a configured name), when it named one.
    pub requested_model: Option<String>,
    /// The configured model that answered (or was chosen).
    pub model: String,
    pub upstream_model: Option<String>,
    pub provider: Option<String>,
    /// `easy`, `medium`, `hard`, `needs_info`; `None` when no classification was made.
    pub tier: Option<String>,
    pub prompt: LoggedPrompt,
    pub usage: Option<Usage>,
    pub stream: bool,
    /// `ok`, `stream_error` or `client_disconnected`.
    pub outcome: &'static str,
    pub attempts: Option<u32>,
    pub cost_usd: Option<f64>,
    pub latency_ms: f64,
}

impl LogEntry {
    /// The JSON line for this entry (without its newline).
    pub fn to_json(&self) -> Value {
        let mut obj = Map::new();
        obj.insert("triage_log".into(), json!(LOG_VERSION));
        obj.insert("ts".into(), json!(rfc3339(self.ts)));
        obj.insert("request_id".into(), json!(self.request_id));
        obj.insert("endpoint".into(), json!(self.endpoint));
        obj.insert("model".into(), json!(self.model));
        obj.insert("provider".into(), json!(self.provider));
        obj.insert("tier".into(), json!(self.tier));
        let (key, prompt) = prompt_json(&self.prompt);
        obj.insert(key.into(), prompt);
        obj.insert(
            "usage".into(),
            match &self.usage {
                Some(u) => json!({"input_tokens": u.prompt_tokens,
                                  "output_tokens": u.completion_tokens}),
                None => Value::Null,
            },
        );
        if let Some(m) = &self.requested_model {
            obj.insert("requested_model".into(), json!(m));
        }
        if let Some(m) = &self.upstream_model {
            obj.insert("upstream_model".into(), json!(m));
        }
        obj.insert("stream".into(), json!(self.stream));
        obj.insert("outcome".into(), json!(self.outcome));
        if let Some(a) = self.attempts {
            obj.insert("attempts".into(), json!(a));
        }
        if let Some(c) = self.cost_usd {
            obj.insert("cost_usd".into(), json!(c));
        }
        obj.insert(
            "latency_ms".into(),
            json!((self.latency_ms * 100.0).round() / 100.0),
        );
        Value::Object(obj)
    }
}

/// `("messages", [{"role", "content"}...])` or `("input", "...")`: text only, so a logged
/// image or tool call costs nothing and `triage batch` reads the same prompt the classifier saw.
fn prompt_json(prompt: &LoggedPrompt) -> (&'static str, Value) {
    match prompt {
        LoggedPrompt::Chat(messages) => (
            "messages",
            messages
                .iter()
                .map(|m| {
                    let text = m.content.as_ref().map(|c| c.text()).unwrap_or_default();
                    json!({"role": role_name(m.role), "content": text})
                })
                .collect(),
        ),
        LoggedPrompt::Select(body) => {
            let messages = body
                .get("messages")
                .or_else(|| body.get("input").filter(|v| v.is_array()));
            if let Some(Value::Array(items)) = messages {
                let turns = items
                    .iter()
                    .map(|m| {
                        let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                        let text = m
                            .get("content")
                            .and_then(|c| content_text(c).ok())
                            .unwrap_or_default();
                        json!({"role": role, "content": text})
                    })
                    .collect();
                return ("messages", turns);
            }
            let text = ["input", "text", "prompt"]
                .iter()
                .find_map(|f| body.get(*f).and_then(Value::as_str))
                .unwrap_or_default();
            ("input", json!(text))
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::Developer => "developer",
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

/// A fresh request id, `req_` and 16 hex digits.
pub fn request_id() -> String {
    format!("req_{:016x}", fastrand::u64(..))
}

/// `2025-11-20T10:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

enum Command {
    Entry(Box<LogEntry>),
    /// Write everything queued before this, flush, answer, and stop.
    Close(mpsc::Sender<()>),
}

/// A handle on the log; cheap to clone.
#[derive(Clone)]
pub struct RequestLog {
    sender: SyncSender<Command>,
    counters: Arc<RequestLogCounters>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
    path: Arc<Path>,
}

impl std::fmt::Debug for RequestLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RequestLog {
    /// Opens `path` for appending (creating it) and starts the writer thread.
    pub fn open(path: &Path, counters: Arc<RequestLogCounters>) -> Result<Self, RequestLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RequestLogError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Self::with_writer::<File>(file, path, QUEUE_CAPACITY, counters)
    }

    /// A log that writes to `out`, holding at most `capacity` waiting entries.
    pub fn with_writer<W: Write + Send + 'static>(
        out: W,
        path: &Path,
        capacity: usize,
        counters: Arc<RequestLogCounters>,
    ) -> Result<Self, RequestLogError> {
        let (sender, receiver) = mpsc::sync_channel(capacity.max(1));
        let thread_counters = Arc::clone(&counters);
        let thread_path = path.to_path_buf();
        let handle = std::thread::Builder::new()
            .name("triage-request-log".into())
            .spawn(move || {
                write_loop(
                    receiver,
                    BufWriter::new(out),
                    &thread_counters,
                    &thread_path,
                )
            })
            .map_err(RequestLogError::Spawn)?;
        Ok(Self {
            sender,
            counters,
            writer: Arc::new(Mutex::new(Some(handle))),
            path: path.into(),
        })
    }

    /// Queues `entry` without waiting; when the queue is full (or the log is closed) the entry
    /// is dropped and counted.
    pub fn record(&self, entry: LogEntry) {
        match self.sender.try_send(Command::Entry(Box::new(entry))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The counters (shared with `/metrics`).
    pub fn counters(&self) -> &RequestLogCounters {
        &self.counters
    }

    /// Writes out every entry queued so far, flushes and stops the writer, waiting at most
    /// `timeout`. Entries recorded afterwards are dropped (and counted). Blocks: call it from a
    /// blocking context. Returns whether everything was written in time.
    pub fn close(&self, timeout: Duration) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        let deadline = std::time::Instant::now() + timeout;
        let mut message = Command::Close(done_tx);
        // The writer drains the queue, so a full queue frees up soon; never wait past `timeout`.
        loop {
            match self.sender.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let done = !matches!(done_rx.recv_timeout(left), Err(RecvTimeoutError::Timeout));
        if done {
            let handle = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
        }
        done
    }
}

fn write_loop<W: Write>(
    receiver: Receiver<Command>,
    mut out: BufWriter<W>,
    counters: &RequestLogCounters,
    path: &Path,
) {
    let mut line = Vec::with_capacity(4096);
    // Ends when every handle is gone or on Close.
    while let Ok(first) = receiver.recv() {
        let mut next = Some(first);
        let mut pending = 0u64;
        let mut close = None;
        let mut taken = 0;
        while let Some(message) = next.take() {
            match message {
                Command::Entry(entry) => {
                    line.clear();
                    if serde_json::to_writer(&mut line, &entry.to_json()).is_ok() {
                        line.push(b'\n');
                        match out.write_all(&line) {
                            Ok(()) => pending += 1,
                            Err(e) => {
                                counters.failed.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(path = %path.display(), error = %e,
                                               "cannot write the request log");
                            }
                        }
                    }
                }
                Command::Close(done) => {
                    close = Some(done);
                    break;
                }
            }
            taken += 1;
            if taken < MAX_WRITE_BATCH {
                next = receiver.try_recv().ok();
            }
        }
        // Lines sitting in the buffer when a flush fails are lost with it.
        match out.flush() {
            Ok(()) => {
                counters.written.fetch_add(pending, Ordering::Relaxed);
            }
            Err(e) => {
                counters.failed.fetch_add(pending, Ordering::Relaxed);
                tracing::warn!(path = %path.display(), error = %e, "cannot flush the request log");
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Condvar;

    fn entry(n: usize) -> LogEntry {
        LogEntry {
            ts: UNIX_EPOCH + Duration::from_millis(1_763_632_800_123),
            request_id: format!("r-{n}"),
            endpoint: "chat.completions",
            requested_model: Some("auto".into()),
            model: "gpt-4o".into(),
            upstream_model: Some("gpt-4o-2024-08-06".into()),
            provider: Some("openai".into()),
            tier: Some("easy".into()),
            prompt: LoggedPrompt::Chat(vec![
                Message::text(Role::System, "be brief"),
                Message::text(Role::User, "hello"),
            ]),
            usage: Some(Usage::new(11, 7)),
            stream: false,
            outcome: "ok",
            attempts: Some(1),
            cost_usd: Some(0.5),
            latency_ms: 12.3456,
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_763_632_800_123)),
            "2025-11-20T10:00:00.123Z"
        );
        // A leap day.
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn a_line_has_the_triage_log_shape() {
        let v = entry(1).to_json();
        assert_eq!(v["triage_log"], 1);
        assert_eq!(v["ts"], "2025-11-20T10:00:00.123Z");
        assert_eq!(v["request_id"], "r-1");
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["provider"], "openai");
        assert_eq!(v["tier"], "easy");
        assert_eq!(
            v["messages"],
            json!([{"role": "system", "content": "be brief"},
                   {"role": "user", "content": "hello"}])
        );
        assert_eq!(v["usage"], json!({"input_tokens": 11, "output_tokens": 7}));
        assert_eq!(v["latency_ms"], 12.35);
    }

    #[test]
    fn select_bodies_log_their_messages_or_input() {
        let (k, v) = prompt_json(&LoggedPrompt::Select(
            json!({"input": "hi", "mode": "cost"}),
        ));
        assert_eq!((k, v), ("input", json!("hi")));
        let (k, v) = prompt_json(&LoggedPrompt::Select(json!({
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                      {"type": "image_url", "image_url": {}}]}]
        })));
        assert_eq!(
            (k, v),
            ("messages", json!([{"role": "user", "content": "a"}]))
        );
    }

    /// A writer that blocks until its gate opens, and keeps what it was given.
    #[derive(Clone, Default)]
    struct GatedWriter {
        gate: Arc<(Mutex<bool>, Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for GatedWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, changed) = &*self.gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let writer = GatedWriter::default();
        let counters = Arc::new(RequestLogCounters::default());
        let log =
            RequestLog::with_writer(writer.clone(), Path::new("t"), 4, counters.clone()).unwrap();
        let started = std::time::Instant::now();
        for n in 0..200 {
            log.record(entry(n));
        }
        // The writer is stuck: past the queue and its buffer, entries are dropped.
        assert!(counters.dropped() >= 100, "{}", counters.dropped());
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = counters.dropped();
        *writer.gate.0.lock().unwrap() = true;
        writer.gate.1.notify_all();
        assert!(log.close(Duration::from_secs(10)));
        let text = String::from_utf8(writer.out.lock().unwrap().clone()).unwrap();
        let lines = text.lines().count() as u64;
        assert_eq!(lines + dropped, 200, "{text}");
        assert_eq!(counters.written(), lines);
        // Closed: later entries are dropped, not written.
        log.record(entry(999));
        assert_eq!(counters.dropped(), dropped + 1);
        assert!(log.close(Duration::from_secs(1)));
    }

    #[test]
    fn close_flushes_everything_recorded_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("requests.jsonl");
        let counters = Arc::new(RequestLogCounters::default());
        let log = RequestLog::open(&path, counters.clone()).unwrap();
        for n in 0..50 {
            log.record(entry(n));
        }
        assert!(log.close(Duration::from_secs(10)));
        let text = std::fs::read_to_string(&path).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["request_id"].to_string())
            .collect();
        assert_eq!(ids.len(), 50);
        assert_eq!(ids[49], "\"r-49\"");
        assert_eq!(counters.written(), 50);
        assert_eq!(counters.dropped(), 0);
    }
}
