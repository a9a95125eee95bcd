//! Anthropic's Messages API (`POST /v1/messages`): requests, responses and the stream's
//! `message_start` / `content_block_*` / `message_delta` / `message_stop` events, translated
//! to and from OpenAI's shape.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Map, Value};

use super::{str_field, Http, Provider, ProviderError, ProviderKind, StreamTranslator};
use crate::gateway::sse::SseEvent;
use crate::gateway::types::{
    unix_now, AssistantMessage, ChatChunk, ChatRequest, ChatResponse, Choice, Content, ContentPart,
    Delta, FinishReason, FunctionCall, FunctionDelta, ImageSource, Role, ToolCall, ToolCallDelta,
    ToolChoice, Usage,
};

const NAME: &str = "anthropic";
/// The API version triage speaks.
pub const API_VERSION: &str = "2023-06-01";
/// Anthropic requires `max_tokens`; this is used when the client gives none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The Anthropic adapter.
pub struct Anthropic {
    name: String,
    http: Http,
}

impl Anthropic {
    /// An adapter for `{base}/v1/messages`.
    pub fn new(name: String, http: Http) -> Self {
        Anthropic { name, http }
    }

    async fn send(&self, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let url = format!("{}/v1/messages", self.http.base);
        let mut headers = vec![("anthropic-version", API_VERSION.to_string())];
        if let Some(k) = &self.http.key {
            headers.push(("x-api-key", k.expose().to_string()));
        }
        self.http.post(&url, &headers, body).await
    }
}

fn unsupported(param: &str, reason: &str) -> ProviderError {
    ProviderError::unsupported(NAME, param, reason)
}

/// Translates an OpenAI request into a Messages API body.
pub fn request_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    let mut system: Vec<String> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, blocks) = match m.role {
            Role::System | Role::Developer => {
                if let Some(c) = &m.content {
                    if c.parts()
                        .iter()
                        .any(|p| matches!(p, ContentPart::ImageUrl { .. }))
                    {
                        return Err(unsupported(
                            &format!("messages[{i}].content"),
                            "images in a system message",
                        ));
                    }
                    system.push(c.text());
                }
                continue;
            }
            Role::User => ("user", content_blocks(m.content.as_ref(), i)?),
            Role::Assistant => {
                let mut blocks = match &m.content {
                    Some(Content::Text(t)) if t.is_empty() => Vec::new(),
                    other => content_blocks(other.as_ref(), i)?,
                };
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let input = parse_arguments(&call.function.arguments).ok_or_else(|| {
                        unsupported(
                            &format!("messages[{i}].tool_calls[{j}].function.arguments"),
                            "tool call arguments must be a JSON object",
                        )
                    })?;
                    blocks.push(json!({"type": "tool_use", "id": call.id,
                        "name": call.function.name, "input": input}));
                }
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = m.tool_call_id.as_deref().ok_or_else(|| {
                    unsupported(
                        &format!("messages[{i}].tool_call_id"),
                        "a tool message needs tool_call_id",
                    )
                })?;
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": text})],
                )
            }
        };
        // The Messages API wants user and assistant turns to alternate: merge neighbours.
        match messages.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    if !system.is_empty() {
        body.insert("system".into(), json!(system.join("\n\n")));
    }
    let messages: Vec<Value> = messages
        .into_iter()
        .map(|(role, blocks)| {
            // A lone text block reads best as a plain string.
            let content = match blocks.as_slice() {
                [b] if b.get("type") == Some(&json!("text")) => b["text"].clone(),
                _ => Value::Array(blocks),
            };
            json!({"role": role, "content": content})
        })
        .collect();
    body.insert("messages".into(), Value::Array(messages));
    body.insert(
        "max_tokens".into(),
        json!(req.output_limit().unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if let Some(t) = req.temperature {
        if !(0.0..=1.0).contains(&t) {
            return Err(unsupported(
                "temperature",
                "Anthropic accepts temperature between 0 and 1",
            ));
        }
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        body.insert("top_p".into(), json!(p));
    }
    if let Some(stop) = &req.stop {
        body.insert("stop_sequences".into(), json!(stop.to_vec()));
    }
    if req.n.is_some_and(|n| n > 1) {
        return Err(unsupported("n", "Anthropic returns one choice per request"));
    }
    if let Some(user) = &req.user {
        body.insert("metadata".into(), json!({"user_id": user}));
    }
    if let Some(tools) = &req.tools {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut o = Map::new();
                o.insert("name".into(), json!(t.function.name));
                if let Some(d) = &t.function.description {
                    o.insert("description".into(), json!(d));
                }
                o.insert(
                    "input_schema".into(),
                    t.function
                        .parameters
                        .clone()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                );
                Value::Object(o)
            })
            .collect();
        body.insert("tools".into(), Value::Array(tools));
    }
    let mut tool_choice = match &req.tool_choice {
        None => None,
        Some(ToolChoice::Mode(m)) => Some(match m.as_str() {
            "auto" => json!({"type": "auto"}),
            "required" => json!({"type": "any"}),
            "none" => json!({"type": "none"}),
            other => {
                return Err(unsupported(
                    "tool_choice",
                    &format!("unknown tool_choice `{other}`"),
                ))
            }
        }),
        Some(ToolChoice::Named(n)) => Some(json!({"type": "tool", "name": n.function.name})),
    };
    for (k, v) in req.extra_params() {
        match k.as_str() {
            "parallel_tool_calls" if v == &json!(true) => {}
            "parallel_tool_calls" if v == &json!(false) => {
                let tc = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
                tc["disable_parallel_tool_use"] = json!(true);
            }
            other => {
                return Err(unsupported(
                    other,
                    "the Anthropic Messages API has no equivalent",
                ))
            }
        }
    }
    if let Some(tc) = tool_choice {
        body.insert("tool_choice".into(), tc);
    }
    if stream {
        body.insert("stream".into(), json!(true));
    }
    Ok(Value::Object(body))
}

fn parse_arguments(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(json!({}));
    }
    serde_json::from_str::<Value>(arguments)
        .ok()
        .filter(Value::is_object)
}

fn content_blocks(content: Option<&Content>, i: usize) -> Result<Vec<Value>, ProviderError> {
    let Some(content) = content else {
        return Ok(Vec::new());
    };
    content
        .parts()
        .iter()
        .map(|p| match p {
            ContentPart::Text { text } => Ok(json!({"type": "text", "text": text})),
            ContentPart::ImageUrl { image_url } => match image_url.source() {
                ImageSource::Base64 { media_type, data } => Ok(json!({"type": "image",
                    "source": {"type": "base64", "media_type": media_type, "data": data}})),
                ImageSource::Url(url) if url.starts_with("http") => {
                    Ok(json!({"type": "image", "source": {"type": "url", "url": url}}))
                }
                ImageSource::Url(_) => Err(unsupported(
                    &format!("messages[{i}].content"),
                    "images must be http(s) URLs or base64 data: URLs",
                )),
            },
        })
        .collect()
}

/// Maps a Messages API `stop_reason`.
pub fn finish_reason(stop_reason: &str) -> FinishReason {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

fn usage_of(u: &Value) -> (u64, u64) {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    (
        n("input_tokens") + n("cache_creation_input_tokens") + n("cache_read_input_tokens"),
        n("output_tokens"),
    )
}

/// Translates a Messages API response into a `chat.completion`.
pub fn parse_response(v: Value) -> Result<ChatResponse, ProviderError> {
    let id = str_field(&v, "id")?.to_string();
    let model = str_field(&v, "model")?.to_string();
    let blocks = v
        .get("content")
        .and_then(Value::as_array)
        .ok_or_else(|| ProviderError::Malformed("missing `content` array".into()))?;
    let mut text = String::new();
    let mut calls = Vec::new();
    for b in blocks {
        match b.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(b.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => calls.push(ToolCall {
                id: str_field(b, "id")?.to_string(),
                kind: "function".into(),
                function: FunctionCall {
                    name: str_field(b, "name")?.to_string(),
                    arguments: b.get("input").cloned().unwrap_or(json!({})).to_string(),
                },
            }),
            _ => {} // thinking and other blocks have no OpenAI equivalent in a reply
        }
    }
    let finish = v
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(finish_reason);
    let (prompt, completion) = v.get("usage").map(usage_of).unwrap_or((0, 0));
    Ok(ChatResponse {
        id,
        object: "chat.completion".into(),
        created: unix_now(),
        model,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: Role::Assistant,
                content: if text.is_empty() && !calls.is_empty() {
                    None
                } else {
                    Some(text)
                },
                tool_calls: (!calls.is_empty()).then_some(calls),
            },
            finish_reason: finish,
        }],
        usage: Some(Usage::new(prompt, completion)),
    })
}

/// Translates Messages API stream events into chunks.
#[derive(Debug, Default)]
pub struct AnthropicStream {
    id: String,
    model: String,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// Anthropic content-block index -> OpenAI tool-call index.
    tool_index: Vec<(u64, u32)>,
    done: bool,
}

impl AnthropicStream {
    fn chunk(&self) -> ChatChunk {
        ChatChunk::new(&self.id, &self.model, self.created)
    }

    fn tool_delta(&self, index: u32, delta: ToolCallDelta) -> ChatChunk {
        debug_assert_eq!(index, delta.index);
        self.chunk().with_delta(
            Delta {
                tool_calls: Some(vec![delta]),
                ..Delta::default()
            },
            None,
        )
    }
}

impl StreamTranslator for AnthropicStream {
    fn on_event(&mut self, ev: &SseEvent) -> Result<Vec<ChatChunk>, ProviderError> {
        let v = super::parse_event(&ev.data)?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .or(ev.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let m = v.get("message").cloned().unwrap_or(Value::Null);
                self.id = m
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("msg")
                    .to_string();
                self.model = m
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                self.created = unix_now();
                if let Some(u) = m.get("usage") {
                    let (p, c) = usage_of(u);
                    self.prompt_tokens = p;
                    self.completion_tokens = c;
                }
                Ok(vec![self.chunk().with_delta(
                    Delta {
                        role: Some(Role::Assistant),
                        content: Some(String::new()),
                        ..Delta::default()
                    },
                    None,
                )])
            }
            "content_block_start" => {
                let block = v.get("content_block").cloned().unwrap_or(Value::Null);
                let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                match block.get("type").and_then(Value::as_str) {
                    Some("tool_use") => {
                        let index = self.tool_index.len() as u32;
                        self.tool_index.push((at, index));
                        Ok(vec![self.tool_delta(
                            index,
                            ToolCallDelta {
                                index,
                                id: Some(str_field(&block, "id")?.to_string()),
                                kind: Some("function".into()),
                                function: Some(FunctionDelta {
                                    name: Some(str_field(&block, "name")?.to_string()),
                                    arguments: Some(String::new()),
                                }),
                            },
                        )])
                    }
                    Some("text") => {
                        let t = block.get("text").and_then(Value::as_str).unwrap_or("");
                        if t.is_empty() {
                            return Ok(Vec::new());
                        }
                        Ok(vec![self.chunk().with_delta(
                            Delta {
                                content: Some(t.to_string()),
                                ..Delta::default()
                            },
                            None,
                        )])
                    }
                    _ => Ok(Vec::new()),
                }
            }
            "content_block_delta" => {
                let at = v.get("index").and_then(Value::as_u64).unwrap_or(0);
                let d = v.get("delta").cloned().unwrap_or(Value::Null);
                match d.get("type").and_then(Value::as_str) {
                    Some("text_delta") => Ok(vec![self.chunk().with_delta(
                        Delta {
                            content: Some(str_field(&d, "text")?.to_string()),
                            ..Delta::default()
                        },
                        None,
                    )]),
                    Some("input_json_delta") => {
                        let index = self
                            .tool_index
                            .iter()
                            .find(|(a, _)| *a == at)
                            .map(|(_, i)| *i)
                            .ok_or_else(|| {
                                ProviderError::Malformed(format!(
                                    "input_json_delta for unknown block {at}"
                                ))
                            })?;
                        Ok(vec![self.tool_delta(
                            index,
                            ToolCallDelta {
                                index,
                                id: None,
                                kind: None,
                                function: Some(FunctionDelta {
                                    name: None,
                                    arguments: Some(str_field(&d, "partial_json")?.to_string()),
                                }),
                            },
                        )])
                    }
                    _ => Ok(Vec::new()), // thinking / signature deltas
                }
            }
            "message_delta" => {
                if let Some(out) = v
                    .get("usage")
                    .and_then(|u| u.get("output_tokens"))
                    .and_then(Value::as_u64)
                {
                    self.completion_tokens = out;
                }
                let reason = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                    .map(finish_reason);
                match reason {
                    Some(r) => Ok(vec![self.chunk().with_delta(Delta::default(), Some(r))]),
                    None => Ok(Vec::new()),
                }
            }
            "message_stop" => {
                self.done = true;
                let mut c = self.chunk();
                c.usage = Some(Usage::new(self.prompt_tokens, self.completion_tokens));
                Ok(vec![c])
            }
            "error" => Err(ProviderError::StreamBroken(super::error_message(&ev.data))),
            _ => Ok(Vec::new()), // ping, content_block_stop, and event types added later
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

impl Provider for Anthropic {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Anthropic
    }

    fn infer<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move {
            let body = request_body(req, model, false)?;
            let resp = self.send(&body).await?;
            parse_response(self.http.json(resp).await?)
        }
        .boxed()
    }

    fn infer_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<super::ChunkStream, ProviderError>> {
        async move {
            let body = request_body(req, model, true)?;
            let resp = self.send(&body).await?;
            Ok(super::translate_stream(
                resp,
                self.http.clone(),
                AnthropicStream::default(),
            ))
        }
        .boxed()
    }
}
