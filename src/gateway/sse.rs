//! Server-sent events: a small incremental parser for provider streams, and the writer for
//! ours.

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` name, when given.
    pub event: Option<String>,
    /// The `data:` lines, joined by `\n`.
    pub data: String,
}

/// The most bytes one event may take (its `data:` lines and any unfinished line) before the
/// stream is refused: a provider that streams without line breaks must not grow our buffer
/// without bound (the idle timeout cannot catch it, since bytes keep arriving).
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("a stream event exceeded {limit} bytes (no event end within it)")]
    EventTooLarge { limit: usize },
}

/// Incremental SSE parser: feed it bytes, take out whole events.
#[derive(Debug)]
pub struct SseParser {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for a line end.
    scanned: usize,
    event: Option<String>,
    data: Vec<String>,
    /// Bytes of the current event's `event:` and `data:` lines so far.
    event_bytes: usize,
    limit: usize,
    failed: bool,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    /// A parser that refuses events larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            scanned: 0,
            event: None,
            data: Vec::new(),
            event_bytes: 0,
            limit,
            failed: false,
        }
    }

    /// Adds bytes and returns the events they complete. An event over the limit is dropped
    /// with everything after it; use [`SseParser::try_push`] to learn of it.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        let _ = self.try_push(bytes, &mut out);
        out
    }

    /// Adds bytes and appends the events they complete to `out`. Once an event exceeds the
    /// limit the parser holds nothing more and every later call fails too; the events completed
    /// before it are still in `out`.
    pub fn try_push(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
            let end = self.scanned + offset;
            let mut line = &self.buf[start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            let line = String::from_utf8_lossy(line).into_owned();
            start = end + 1;
            self.scanned = start;
            self.line(line, out);
            if self.event_bytes > self.limit {
                return Err(self.fail());
            }
        }
        self.buf.drain(..start);
        self.scanned = self.buf.len();
        if self.buf.len() + self.event_bytes > self.limit {
            return Err(self.fail());
        }
        Ok(())
    }

    fn line(&mut self, line: String, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if let Some(ev) = self.take() {
                out.push(ev);
            }
        } else if line.starts_with(':') {
            // comment / keep-alive
        } else {
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => {
                    self.event_bytes += line.len() + 1;
                    self.event = Some(value.to_string());
                }
                "data" => {
                    self.event_bytes += line.len() + 1;
                    self.data.push(value.to_string());
                }
                _ => {}
            }
        }
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge { limit: self.limit }
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.buf = Vec::new();
        self.scanned = 0;
        self.data = Vec::new();
        self.event = None;
        self.event_bytes = 0;
        self.too_large()
    }

    /// The event left when the input ends without a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if self.failed {
            return None;
        }
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.scanned = 0;
            let mut evs = self.push(&rest);
            evs.extend(self.push(b"\n\n"));
            return evs.pop();
        }
        self.take()
    }

    fn take(&mut self) -> Option<SseEvent> {
        self.event_bytes = 0;
        if self.data.is_empty() && self.event.is_none() {
            return None;
        }
        let ev = SseEvent {
            event: self.event.take(),
            data: std::mem::take(&mut self.data).join("\n"),
        };
        Some(ev)
    }
}

/// An item that ends an SSE event stream.
#[derive(Debug)]
pub enum SseStreamError<E> {
    /// The byte stream failed.
    Transport(E),
    /// The bytes could not be parsed (an event over [`MAX_EVENT_BYTES`]).
    Parse(SseError),
}

/// Turns a byte stream into an SSE event stream. A transport error, or an event over
/// [`MAX_EVENT_BYTES`], becomes `Err` and ends it.
pub fn events<S, E>(body: S) -> BoxStream<'static, Result<SseEvent, SseStreamError<E>>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    events_with(body, SseParser::default())
}

/// [`events`] with a given parser (and so a given limit).
pub fn events_with<S, E>(
    body: S,
    parser: SseParser,
) -> BoxStream<'static, Result<SseEvent, SseStreamError<E>>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let state = (Box::pin(body), parser, false);
    stream::unfold(state, |(mut body, mut parser, done)| async move {
        if done {
            return None;
        }
        match body.next().await {
            Some(Ok(bytes)) => {
                let mut evs = Vec::new();
                let result = parser.try_push(&bytes, &mut evs);
                let mut items: Vec<Result<SseEvent, SseStreamError<E>>> =
                    evs.into_iter().map(Ok).collect();
                let failed = result.is_err();
                if let Err(e) = result {
                    items.push(Err(SseStreamError::Parse(e)));
                }
                Some((stream::iter(items), (body, parser, failed)))
            }
            Some(Err(e)) => Some((
                stream::iter(vec![Err(SseStreamError::Transport(e))]),
                (body, parser, true),
            )),
            None => {
                let evs: Vec<Result<SseEvent, SseStreamError<E>>> =
                    parser.finish().into_iter().map(Ok).collect();
                Some((stream::iter(evs), (body, parser, true)))
            }
        }
    })
    .flatten()
    .boxed()
}

/// Formats one `data:` event.
pub fn data_event(json: &str) -> String {
    format!("data: {json}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_across_reads() {
        let mut p = SseParser::default();
        assert!(p.push(b"event: message_start\ndata: {\"a\"").is_empty());
        let evs = p.push(b":1}\n\n: ping\n\ndata: x\r\ndata: y\r\n\r\n");
        assert_eq!(
            evs,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":1}".into()
                },
                SseEvent {
                    event: None,
                    data: "x\ny".into()
                }
            ]
        );
    }

    #[test]
    fn an_event_without_line_ends_past_the_limit_is_an_error() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        p.try_push(b"data: ok\n\ndata: ", &mut out).unwrap();
        // Bytes keep coming, none of them a line end: the buffer stops at the limit.
        let mut result = Ok(());
        for _ in 0..100 {
            result = p.try_push(&[b'x'; 16], &mut out);
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(SseError::EventTooLarge { limit: 64 }));
        assert_eq!(out.len(), 1, "the event before it still counts");
        assert!(
            p.buf.capacity() <= 64 + 16,
            "buffer kept: {}",
            p.buf.capacity()
        );
        // Nothing more comes out of a failed parser.
        assert!(p.try_push(b"\n\ndata: x\n\n", &mut out).is_err());
        assert_eq!(p.finish(), None);
    }

    #[test]
    fn many_short_data_lines_count_towards_the_limit() {
        let mut p = SseParser::with_limit(64);
        let mut out = Vec::new();
        let mut result = Ok(());
        for _ in 0..100 {
            result = p.try_push(b"data: abcdefgh\n", &mut out);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn events_up_to_the_limit_pass_whole_and_the_count_restarts_per_event() {
        let mut p = SseParser::with_limit(64);
        let body = format!("data: {}\n\n", "y".repeat(50));
        for _ in 0..10 {
            assert_eq!(p.push(body.as_bytes()).len(), 1);
        }
        // One byte at a time, too.
        let mut out = Vec::new();
        for b in body.as_bytes() {
            p.try_push(std::slice::from_ref(b), &mut out).unwrap();
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].data.len(), 50);
    }

    #[tokio::test]
    async fn the_event_stream_ends_with_an_error_on_an_over_long_event() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: first\n\n")),
            Ok(Bytes::from(vec![b'z'; 100])),
            Ok(Bytes::from_static(b"\n\ndata: never\n\n")),
        ];
        let items: Vec<_> = events_with(stream::iter(chunks), SseParser::with_limit(64))
            .collect()
            .await;
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].as_ref().unwrap().data, "first");
        assert!(matches!(
            items[1],
            Err(SseStreamError::Parse(SseError::EventTooLarge { limit: 64 }))
        ));
    }

    #[test]
    fn an_unterminated_last_event_is_kept_at_the_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: [DONE]").is_empty());
        assert_eq!(p.finish().map(|e| e.data), Some("[DONE]".into()));
    }
}
