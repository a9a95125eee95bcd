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

/// Incremental SSE parser: feed it bytes, take out whole events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    /// Adds bytes and returns the events they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8_lossy(&line).into_owned();
            if line.is_empty() {
                if let Some(ev) = self.take() {
                    out.push(ev);
                }
            } else if line.starts_with(':') {
                // comment / keep-alive
            } else {
                let (field, value) = match line.split_once(':') {
                    Some((f, v)) => (f.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()),
                    None => (line.clone(), String::new()),
                };
                match field.as_str() {
                    "event" => self.event = Some(value),
                    "data" => self.data.push(value),
                    _ => {}
                }
            }
        }
        out
    }

    /// The event left when the input ends without a blank line.
    pub fn finish(&mut self) -> Option<SseEvent> {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let mut evs = self.push(&rest);
            evs.extend(self.push(b"\n\n"));
            return evs.pop();
        }
        self.take()
    }

    fn take(&mut self) -> Option<SseEvent> {
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

/// Turns a byte stream into an SSE event stream. A transport error becomes `Err` and ends it.
pub fn events<S, E>(body: S) -> BoxStream<'static, Result<SseEvent, E>>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: Send + 'static,
{
    let state = (Box::pin(body), SseParser::default(), false);
    stream::unfold(state, |(mut body, mut parser, done)| async move {
        if done {
            return None;
        }
        match body.next().await {
            Some(Ok(bytes)) => {
                let evs: Vec<Result<SseEvent, E>> =
                    parser.push(&bytes).into_iter().map(Ok).collect();
                Some((stream::iter(evs), (body, parser, false)))
            }
            Some(Err(e)) => Some((stream::iter(vec![Err(e)]), (body, parser, true))),
            None => {
                let evs: Vec<Result<SseEvent, E>> = parser.finish().into_iter().map(Ok).collect();
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
    fn an_unterminated_last_event_is_kept_at_the_end() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: [DONE]").is_empty());
        assert_eq!(p.finish().map(|e| e.data), Some("[DONE]".into()));
    }
}
