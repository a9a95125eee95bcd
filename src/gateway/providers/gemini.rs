//! Google's Gemini API (`models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`), translated to and from OpenAI's shape.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::{json, Map, Value};

use super::{Http, Provider, ProviderError, ProviderKind, StreamTranslator};
use crate::gateway::sse::SseEvent;
use crate::gateway::types::{
    completion_id, unix_now, AssistantMessage, ChatChunk, ChatRequest, ChatResponse, Choice,
    Content, ContentPart, Delta, FinishReason, FunctionCall, FunctionDelta, ImageSource, Role,
    ToolCall, ToolCallDelta, ToolChoice, Usage,
};

const NAME: &str = "gemini";

/// The Gemini adapter.
pub struct Gemini {
    name: String,
    http: Http,
}

impl Gemini {
    /// An adapter for `{base}/v1beta/models/...`.
    pub fn new(name: String, http: Http) -> Self {
        Gemini { name, http }
    }

    async fn send(
        &self,
        model: &str,
        stream: bool,
        body: &Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let url = if stream {
            format!(
                "{}/v1beta/models/{model}:streamGenerateContent?alt=sse",
                self.http.base
            )
        } else {
            format!("{}/v1beta/models/{model}:generateContent", self.http.base)
        };
        // The key goes in a header, never in the URL, so it cannot leak through error text.
        let headers = match &self.http.key {
            Some(k) => vec![("x-goog-api-key", k.expose().to_string())],
            None => Vec::new(),
        };
        self.http.post(&url, &headers, body).await
    }
}

fn unsupported(param: &str, reason: &str) -> ProviderError {
    ProviderError::unsupported(NAME, param, reason)
}

fn image_mime_from_url(url: &str) -> Option<&'static str> {
    let path = url
        .split(['?', '#'])
        .next()
        .unwrap_or(url)
        .to_ascii_lowercase();
    let ext = path.rsplit('.').next()?;
    Some(match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

fn parts_of(content: Option<&Content>, i: usize) -> Result<Vec<Value>, ProviderError> {
    let Some(content) = content else {
        return Ok(Vec::new());
    };
    content
        .parts()
        .iter()
        .map(|p| match p {
            ContentPart::Text { text } => Ok(json!({"text": text})),
            ContentPart::ImageUrl { image_url } => match image_url.source() {
                ImageSource::Base64 { media_type, data } => {
                    Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}))
                }
                ImageSource::Url(url) => match image_mime_from_url(url) {
                    Some(mime) => Ok(json!({"fileData": {"mimeType": mime, "fileUri": url}})),
                    None => Err(unsupported(
                        &format!("messages[{i}].content"),
                        "image URLs must end in .png, .jpg, .webp, .gif or .heic (or send base64)",
                    )),
                },
            },
        })
        .collect()
}

/// Translates an OpenAI request into a `generateContent` body.
pub fn request_body(req: &ChatRequest, _model: &str) -> Result<Value, ProviderError> {
    let mut body = Map::new();
    let mut system: Vec<Value> = Vec::new();
    let mut contents: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in req.messages.iter().enumerate() {
        let (role, parts) = match m.role {
            Role::System | Role::Developer => {
                system.extend(parts_of(m.content.as_ref(), i)?);
                continue;
            }
            Role::User => ("user", parts_of(m.content.as_ref(), i)?),
            Role::Assistant => {
                let mut parts = match &m.content {
                    Some(Content::Text(t)) if t.is_empty() => Vec::new(),
                    other => parts_of(other.as_ref(), i)?,
                };
                for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                    let args: Value = if call.function.arguments.trim().is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&call.function.arguments)
                            .ok()
                            .filter(Value::is_object)
                            .ok_or_else(|| {
                                unsupported(
                                    &format!("messages[{i}].tool_calls[{j}].function.arguments"),
                                    "tool call arguments must be a JSON object",
                                )
                            })?
                    };
                    parts.push(json!({"functionCall": {"name": call.function.name, "args": args}}));
                }
                ("model", parts)
            }
            Role::Tool => {
                // Gemini names the function a result answers, not the call id: find it.
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let name = req
                    .messages
                    .iter()
                    .flat_map(|m| m.tool_calls.iter().flatten())
                    .find(|c| c.id == id)
                    .map(|c| c.function.name.clone())
                    .ok_or_else(|| {
                        unsupported(
                            &format!("messages[{i}].tool_call_id"),
                            "a tool message must answer a tool call made earlier in the conversation",
                        )
                    })?;
                let text = m.content.as_ref().map(Content::text).unwrap_or_default();
                let response = match serde_json::from_str::<Value>(&text) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => json!({"content": text}),
                };
                (
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": response}})],
                )
            }
        };
        match contents.last_mut() {
            Some((last, ps)) if *last == role => ps.extend(parts),
            _ => contents.push((role, parts)),
        }
    }
    body.insert(
        "contents".into(),
        Value::Array(
            contents
                .into_iter()
                .map(|(role, parts)| json!({"role": role, "parts": parts}))
                .collect(),
        ),
    );
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut gen = Map::new();
    if let Some(t) = req.temperature {
        gen.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        gen.insert("topP".into(), json!(p));
    }
    if let Some(m) = req.output_limit() {
        gen.insert("maxOutputTokens".into(), json!(m));
    }
    if let Some(s) = &req.stop {
        gen.insert("stopSequences".into(), json!(s.to_vec()));
    }
    if let Some(n) = req.n {
        if n > 1 {
            return Err(unsupported(
                "n",
                "triage streams and translates one Gemini candidate",
            ));
        }
    }
    for (k, v) in req.extra_params() {
        match k.as_str() {
            "seed" => {
                gen.insert("seed".into(), v.clone());
            }
            "presence_penalty" => {
                gen.insert("presencePenalty".into(), v.clone());
            }
            "frequency_penalty" => {
                gen.insert("frequencyPenalty".into(), v.clone());
            }
            "response_format" => match v.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("json_object") => {
                    gen.insert("responseMimeType".into(), json!("application/json"));
                }
                _ => {
                    return Err(unsupported(
                        "response_format",
                        "only `text` and `json_object` are translated for Gemini",
                    ))
                }
            },
            "parallel_tool_calls" if v == &json!(true) => {}
            other => return Err(unsupported(other, "the Gemini API has no equivalent")),
        }
    }
    if !gen.is_empty() {
        body.insert("generationConfig".into(), Value::Object(gen));
    }
    if let Some(tools) = &req.tools {
        let decls: Vec<Value> = tools
            .iter()
            .map(|t| {
                let mut o = Map::new();
                o.insert("name".into(), json!(t.function.name));
                if let Some(d) = &t.function.description {
                    o.insert("description".into(), json!(d));
                }
                if let Some(p) = &t.function.parameters {
                    o.insert("parameters".into(), p.clone());
                }
                Value::Object(o)
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(tc) = &req.tool_choice {
        let cfg = match tc {
            ToolChoice::Mode(m) => match m.as_str() {
                "auto" => json!({"mode": "AUTO"}),
                "required" => json!({"mode": "ANY"}),
                "none" => json!({"mode": "NONE"}),
                other => {
                    return Err(unsupported(
                        "tool_choice",
                        &format!("unknown tool_choice `{other}`"),
                    ))
                }
            },
            ToolChoice::Named(n) => {
                json!({"mode": "ANY", "allowedFunctionNames": [n.function.name]})
            }
        };
        body.insert("toolConfig".into(), json!({ "functionCallingConfig": cfg }));
    }
    Ok(Value::Object(body))
}

/// Maps a Gemini `finishReason`.
pub fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    }
}

fn usage_of(v: &Value) -> Option<Usage> {
    let u = v.get("usageMetadata")?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    Some(Usage::new(
        n("promptTokenCount"),
        n("candidatesTokenCount") + n("thoughtsTokenCount"),
    ))
}

/// Text and function calls of the first candidate; thought parts are skipped.
fn candidate_parts(v: &Value) -> (String, Vec<(String, Value, Option<String>)>) {
    let mut text = String::new();
    let mut calls = Vec::new();
    let parts = v
        .pointer("/candidates/0/content/parts")
        .and_then(Value::as_array);
    for p in parts.into_iter().flatten() {
        if p.get("thought").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if let Some(t) = p.get("text").and_then(Value::as_str) {
            text.push_str(t);
        }
        if let Some(fc) = p.get("functionCall") {
            let name = fc
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let args = fc.get("args").cloned().unwrap_or(json!({}));
            let id = fc.get("id").and_then(Value::as_str).map(str::to_string);
            calls.push((name, args, id));
        }
    }
    (text, calls)
}

fn check_shape(v: &Value) -> Result<(), ProviderError> {
    if let Some(e) = v.get("error") {
        return Err(ProviderError::StreamBroken(super::error_message(
            &json!({ "error": e }).to_string(),
        )));
    }
    if !v.is_object()
        || !(v.get("candidates").is_some()
            || v.get("promptFeedback").is_some()
            || v.get("usageMetadata").is_some())
    {
        return Err(ProviderError::Malformed(
            "not a GenerateContentResponse".into(),
        ));
    }
    Ok(())
}

fn blocked(v: &Value) -> bool {
    v.pointer("/promptFeedback/blockReason").is_some()
}

fn call_id(id: Option<String>, n: usize) -> String {
    id.unwrap_or_else(|| format!("call_{n}_{:08x}", fastrand::u32(..)))
}

/// Translates a `generateContent` response into a `chat.completion`.
pub fn parse_response(v: Value, model: &str) -> Result<ChatResponse, ProviderError> {
    check_shape(&v).map_err(|e| match e {
        ProviderError::StreamBroken(m) => ProviderError::Malformed(m),
        other => other,
    })?;
    let (text, calls) = candidate_parts(&v);
    let calls: Vec<ToolCall> = calls
        .into_iter()
        .enumerate()
        .map(|(n, (name, args, id))| ToolCall {
            id: call_id(id, n),
            kind: "function".into(),
            function: FunctionCall {
                name,
                arguments: args.to_string(),
            },
        })
        .collect();
    let finish = if blocked(&v) {
        Some(FinishReason::ContentFilter)
    } else {
        v.pointer("/candidates/0/finishReason")
            .and_then(Value::as_str)
            .map(|r| match finish_reason(r) {
                FinishReason::Stop if !calls.is_empty() => FinishReason::ToolCalls,
                other => other,
            })
    };
    Ok(ChatResponse {
        id: v
            .get("responseId")
            .and_then(Value::as_str)
            .map(|s| format!("chatcmpl-{s}"))
            .unwrap_or_else(completion_id),
        object: "chat.completion".into(),
        created: unix_now(),
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or(model)
            .to_string(),
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
        usage: usage_of(&v),
    })
}

/// Translates `streamGenerateContent?alt=sse` events (each a whole GenerateContentResponse)
/// into chunks. Gemini has no end marker: the chunk with a `finishReason` ends the stream.
#[derive(Debug)]
pub struct GeminiStream {
    id: String,
    model: String,
    created: u64,
    started: bool,
    tool_calls: u32,
    usage: Option<Usage>,
    done: bool,
}

impl GeminiStream {
    /// A translator for a stream from `model`.
    pub fn new(model: &str) -> Self {
        GeminiStream {
            id: completion_id(),
            model: model.to_string(),
            created: unix_now(),
            started: false,
            tool_calls: 0,
            usage: None,
            done: false,
        }
    }

    fn chunk(&self) -> ChatChunk {
        ChatChunk::new(&self.id, &self.model, self.created)
    }
}

impl StreamTranslator for GeminiStream {
    fn on_event(&mut self, ev: &SseEvent) -> Result<Vec<ChatChunk>, ProviderError> {
        let v = super::parse_event(&ev.data)?;
        check_shape(&v)?;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if let Some(m) = v.get("modelVersion").and_then(Value::as_str) {
                self.model = m.to_string();
            }
            if let Some(id) = v.get("responseId").and_then(Value::as_str) {
                self.id = format!("chatcmpl-{id}");
            }
            out.push(self.chunk().with_delta(
                Delta {
                    role: Some(Role::Assistant),
                    content: Some(String::new()),
                    ..Delta::default()
                },
                None,
            ));
        }
        let (text, calls) = candidate_parts(&v);
        if !text.is_empty() {
            out.push(self.chunk().with_delta(
                Delta {
                    content: Some(text),
                    ..Delta::default()
                },
                None,
            ));
        }
        for (name, args, id) in calls {
            let index = self.tool_calls;
            self.tool_calls += 1;
            out.push(self.chunk().with_delta(
                Delta {
                    tool_calls: Some(vec![ToolCallDelta {
                        index,
                        id: Some(call_id(id, index as usize)),
                        kind: Some("function".into()),
                        function: Some(FunctionDelta {
                            name: Some(name),
                            arguments: Some(args.to_string()),
                        }),
                    }]),
                    ..Delta::default()
                },
                None,
            ));
        }
        if let Some(u) = usage_of(&v) {
            self.usage = Some(u);
        }
        let reason = if blocked(&v) {
            Some(FinishReason::ContentFilter)
        } else {
            v.pointer("/candidates/0/finishReason")
                .and_then(Value::as_str)
                .map(finish_reason)
        };
        if let Some(r) = reason {
            let r = match r {
                FinishReason::Stop if self.tool_calls > 0 => FinishReason::ToolCalls,
                other => other,
            };
            out.push(self.chunk().with_delta(Delta::default(), Some(r)));
            let mut u = self.chunk();
            u.usage = Some(self.usage.unwrap_or_default());
            out.push(u);
            self.done = true;
        }
        Ok(out)
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

impl Provider for Gemini {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::Gemini
    }

    fn infer<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move {
            let body = request_body(req, model)?;
            let resp = self.send(model, false, &body).await?;
            parse_response(self.http.json(resp).await?, model)
        }
        .boxed()
    }

    fn infer_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<super::ChunkStream, ProviderError>> {
        async move {
            let body = request_body(req, model)?;
            let resp = self.send(model, true, &body).await?;
            Ok(super::translate_stream(
                resp,
                self.http.clone(),
                GeminiStream::new(model),
            ))
        }
        .boxed()
    }
}
