//! A mock LLM provider on loopback port 0 speaking the real wire formats (OpenAI chat
//! completions, Anthropic Messages, Gemini generateContent), JSON and SSE, with scripted
//! failures: 429 + retry-after, 500, slow first byte, a stream cut mid-way, malformed JSON.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

/// The wire format a mock speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
    Gemini,
}

/// What the mock does with one request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// Answer with this text (JSON or SSE, as asked).
    Text(String),
    /// Answer with a call to this function.
    ToolCall { name: String, arguments: Value },
    /// Answer with an error status (and `retry-after`, if given).
    Status {
        status: u16,
        retry_after: Option<String>,
    },
    /// Wait before the first byte of the body, then behave as the inner behaviour.
    Slow(Duration, Box<Behavior>),
    /// Stream the first events of a text answer, then break the connection.
    CutStream,
    /// A success status with a body that is not valid JSON.
    Malformed,
    /// 401 with an error message that quotes the key the mock received.
    EchoKey401,
    /// Stream (after the start and one content event, when `after_start`) 2 MiB of `data:`
    /// bytes without a line end, then hold the connection open: an event that never ends.
    OverlongEvent { after_start: bool },
}

/// One request the mock received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Debug)]
struct Inner {
    format: Format,
    script: Mutex<VecDeque<Behavior>>,
    default: Mutex<Behavior>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running mock provider.
#[derive(Debug, Clone)]
pub struct MockProvider {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl MockProvider {
    /// Starts a mock on `127.0.0.1:0` that answers "Hello from <format>" unless scripted.
    pub async fn start(format: Format) -> Self {
        let inner = Arc::new(Inner {
            format,
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behavior::Text(format!("Hello from {format:?}"))),
            requests: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let state = inner.clone();
        let app = Router::new().fallback(move |uri: Uri, headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move { handle(state, uri, headers, body).await }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockProvider { addr, inner }
    }

    /// The `base_url` to configure for this mock.
    pub fn base_url(&self) -> String {
        match self.inner.format {
            Format::OpenAi => format!("http://{}/v1", self.addr),
            Format::Anthropic | Format::Gemini => format!("http://{}", self.addr),
        }
    }

    /// Queues behaviours for the next requests, in order.
    pub fn push(&self, behaviors: impl IntoIterator<Item = Behavior>) {
        self.inner.script.lock().unwrap().extend(behaviors);
    }

    /// What to do once the script is used up.
    pub fn set_default(&self, b: Behavior) {
        *self.inner.default.lock().unwrap() = b;
    }

    /// Requests received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.requests.lock().unwrap().clone()
    }

    /// How many requests were received.
    pub fn hits(&self) -> usize {
        self.inner.requests.lock().unwrap().len()
    }
}

async fn handle(state: Arc<Inner>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    state.requests.lock().unwrap().push(Recorded {
        path: format!(
            "{}{}",
            path,
            uri.query().map(|q| format!("?{q}")).unwrap_or_default()
        ),
        headers: headers.clone(),
        body: parsed.clone(),
    });
    let behavior = {
        let mut script = state.script.lock().unwrap();
        script
            .pop_front()
            .unwrap_or_else(|| state.default.lock().unwrap().clone())
    };
    let (model, stream) = match state.format {
        Format::Gemini => {
            // /v1beta/models/{model}:generateContent | :streamGenerateContent
            let tail = path.rsplit('/').next().unwrap_or("");
            let (model, method) = tail.split_once(':').unwrap_or((tail, ""));
            (model.to_string(), method == "streamGenerateContent")
        }
        _ => (
            parsed["model"].as_str().unwrap_or("").to_string(),
            parsed["stream"].as_bool().unwrap_or(false),
        ),
    };
    let include_usage = parsed["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    respond(
        state.format,
        behavior,
        &model,
        stream,
        include_usage,
        &headers,
        Duration::ZERO,
    )
}

fn respond(
    format: Format,
    behavior: Behavior,
    model: &str,
    stream: bool,
    include_usage: bool,
    headers: &HeaderMap,
    delay: Duration,
) -> Response {
    match behavior {
        Behavior::Status {
            status,
            retry_after,
        } => {
            let code = StatusCode::from_u16(status).unwrap();
            let body = error_body(format, status, &format!("mock says {status}"));
            let mut resp = (code, body).into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().unwrap());
            }
            resp
        }
        Behavior::EchoKey401 => {
            let key = headers
                .get("authorization")
                .or_else(|| headers.get("x-api-key"))
                .or_else(|| headers.get("x-goog-api-key"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = error_body(format, 401, &format!("Incorrect API key provided: {key}"));
            (StatusCode::UNAUTHORIZED, body).into_response()
        }
        Behavior::Slow(d, inner) => respond(
            format,
            *inner,
            model,
            stream,
            include_usage,
            headers,
            delay + d,
        ),
        Behavior::Malformed => {
            if stream {
                sse_response(
                    vec!["data: {\"choices\": [oops\n\n".to_string()],
                    delay,
                    false,
                )
            } else {
                json_response("{\"id\": \"x\", \"choices\": [".to_string(), delay)
            }
        }
        Behavior::CutStream => {
            let events = stream_events(format, model, &Answer::Text("partial answer".into()), true);
            // keep the start and one content event, then break the connection
            let keep = match format {
                Format::OpenAi => 2,
                Format::Anthropic => 3,
                Format::Gemini => 1,
            };
            sse_response(events.into_iter().take(keep).collect(), delay, true)
        }
        Behavior::OverlongEvent { after_start } => {
            let keep = match (after_start, format) {
                (false, _) => 0,
                (true, Format::OpenAi) => 2,
                (true, Format::Anthropic) => 3,
                (true, Format::Gemini) => 1,
            };
            let events = stream_events(format, model, &Answer::Text("partial answer".into()), true);
            let head = stream::iter(events.into_iter().take(keep))
                .map(|e| Ok::<_, std::io::Error>(Bytes::from(e)));
            let endless = stream::iter(
                std::iter::once(Bytes::from_static(b"data: "))
                    .chain(std::iter::repeat_n(Bytes::from(vec![b'x'; 64 * 1024]), 32)),
            )
            .map(Ok);
            // Bounded: the test's client gives up long before this.
            let hold = stream::once(async {
                tokio::time::sleep(Duration::from_secs(120)).await;
                Ok(Bytes::new())
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(head.chain(endless).chain(hold)))
                .unwrap()
        }
        Behavior::Text(t) => answer(format, model, stream, include_usage, Answer::Text(t), delay),
        Behavior::ToolCall { name, arguments } => answer(
            format,
            model,
            stream,
            include_usage,
            Answer::Tool(name, arguments),
            delay,
        ),
    }
}

enum Answer {
    Text(String),
    Tool(String, Value),
}

fn answer(
    format: Format,
    model: &str,
    stream: bool,
    include_usage: bool,
    a: Answer,
    delay: Duration,
) -> Response {
    if stream {
        sse_response(
            stream_events(format, model, &a, include_usage),
            delay,
            false,
        )
    } else {
        json_response(json_body(format, model, &a).to_string(), delay)
    }
}

fn error_body(format: Format, status: u16, message: &str) -> String {
    match format {
        Format::OpenAi => json!({"error": {"message": message, "type": "mock_error", "param": null, "code": null}}),
        Format::Anthropic => json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        Format::Gemini => json!({"error": {"code": status, "message": message, "status": "UNAVAILABLE"}}),
    }
    .to_string()
}

fn json_body(format: Format, model: &str, a: &Answer) -> Value {
    match (format, a) {
        (Format::OpenAi, Answer::Text(t)) => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": t, "refusal": null},
                         "logprobs": null, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
        (Format::OpenAi, Answer::Tool(name, args)) => json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": "call_mock1", "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}]},
                "logprobs": null, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}),
        (Format::Anthropic, Answer::Text(t)) => json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": t}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 7}}),
        (Format::Anthropic, Answer::Tool(name, args)) => json!({
            "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": "Let me check."},
                        {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": args}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 11, "output_tokens": 7}}),
        (Format::Gemini, Answer::Text(t)) => json!({
            "candidates": [{"content": {"role": "model", "parts": [{"text": t}]}, "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18},
            "modelVersion": model, "responseId": "mockresp"}),
        (Format::Gemini, Answer::Tool(name, args)) => json!({
            "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": name, "args": args}}]},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18},
            "modelVersion": model, "responseId": "mockresp"}),
    }
}

fn data(v: Value) -> String {
    format!("data: {v}\n\n")
}

fn named(event: &str, v: Value) -> String {
    format!("event: {event}\ndata: {v}\n\n")
}

/// The SSE events of an answer, in the provider's real format.
fn stream_events(format: Format, model: &str, a: &Answer, include_usage: bool) -> Vec<String> {
    match format {
        Format::OpenAi => {
            let chunk = |delta: Value, finish: Value| {
                data(
                    json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}),
                )
            };
            let mut ev = vec![chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            )];
            match a {
                Answer::Text(t) => {
                    let (x, y) = t.split_at(t.len() / 2);
                    ev.push(chunk(json!({"content": x}), Value::Null));
                    ev.push(chunk(json!({"content": y}), Value::Null));
                    ev.push(chunk(json!({}), json!("stop")));
                }
                Answer::Tool(name, args) => {
                    let s = args.to_string();
                    let (x, y) = s.split_at(s.len() / 2);
                    ev.push(chunk(
                        json!({"tool_calls": [{"index": 0, "id": "call_mock1", "type": "function",
                        "function": {"name": name, "arguments": ""}}]}),
                        Value::Null,
                    ));
                    ev.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": x}}]}),
                        Value::Null,
                    ));
                    ev.push(chunk(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": y}}]}),
                        Value::Null,
                    ));
                    ev.push(chunk(json!({}), json!("tool_calls")));
                }
            }
            if include_usage {
                ev.push(data(json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1700000000,
                    "model": model, "choices": [],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})));
            }
            ev.push("data: [DONE]\n\n".to_string());
            ev
        }
        Format::Anthropic => {
            let mut ev = vec![named(
                "message_start",
                json!({"type": "message_start", "message": {
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": 11, "output_tokens": 1}}}),
            )];
            let stop = match a {
                Answer::Text(t) => {
                    let (x, y) = t.split_at(t.len() / 2);
                    ev.push(named(
                        "content_block_start",
                        json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "text", "text": ""}}),
                    ));
                    ev.push(named(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": x}}),
                    ));
                    ev.push(named("ping", json!({"type": "ping"})));
                    ev.push(named(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": y}}),
                    ));
                    ev.push(named(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ));
                    "end_turn"
                }
                Answer::Tool(name, args) => {
                    let s = args.to_string();
                    let (x, y) = s.split_at(s.len() / 2);
                    ev.push(named("content_block_start", json!({"type": "content_block_start", "index": 0,
                        "content_block": {"type": "tool_use", "id": "toolu_mock1", "name": name, "input": {}}})));
                    for part in [x, y] {
                        ev.push(named(
                            "content_block_delta",
                            json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "input_json_delta", "partial_json": part}}),
                        ));
                    }
                    ev.push(named(
                        "content_block_stop",
                        json!({"type": "content_block_stop", "index": 0}),
                    ));
                    "tool_use"
                }
            };
            ev.push(named("message_delta", json!({"type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 7}})));
            ev.push(named("message_stop", json!({"type": "message_stop"})));
            ev
        }
        Format::Gemini => match a {
            Answer::Text(t) => {
                let (x, y) = t.split_at(t.len() / 2);
                vec![
                    data(
                        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": x}]}, "index": 0}],
                        "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11}, "modelVersion": model, "responseId": "mockresp"}),
                    ),
                    data(
                        json!({"candidates": [{"content": {"role": "model", "parts": [{"text": y}]}, "finishReason": "STOP", "index": 0}],
                        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18},
                        "modelVersion": model, "responseId": "mockresp"}),
                    ),
                ]
            }
            Answer::Tool(name, args) => {
                vec![data(json!({"candidates": [{"content": {"role": "model",
                    "parts": [{"functionCall": {"name": name, "args": args}}]}, "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 7, "totalTokenCount": 18},
                "modelVersion": model, "responseId": "mockresp"}))]
            }
        },
    }
}

fn json_response(body: String, delay: Duration) -> Response {
    let body = stream::once(async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(Bytes::from(body))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap()
}

fn sse_response(events: Vec<String>, delay: Duration, cut: bool) -> Response {
    let body = stream::iter(events.into_iter().enumerate()).then(move |(i, e)| async move {
        if i == 0 {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, std::io::Error>(Bytes::from(e))
    });
    // Let the events before the cut reach the client before the connection breaks.
    let tail = stream::iter(cut.then_some(())).then(|()| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Err(std::io::Error::other("mock cut the stream"))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(body.chain(tail)))
        .unwrap()
}
