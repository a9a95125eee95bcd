//! OpenAI's chat completions API: the request passes through nearly as is; responses and
//! `chat.completion.chunk` events are already in triage's shape.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::{Http, Provider, ProviderError, ProviderKind, StreamTranslator};
use crate::gateway::sse::SseEvent;
use crate::gateway::types::{ChatChunk, ChatRequest, ChatResponse};

/// The OpenAI adapter.
pub struct OpenAi {
    name: String,
    http: Http,
}

impl OpenAi {
    /// An adapter for `{base}/chat/completions`.
    pub fn new(name: String, http: Http) -> Self {
        OpenAi { name, http }
    }
}

/// The upstream body: the client's request with the provider's model name. Streams always ask
/// for the usage chunk so triage can count tokens; the handler drops it if the client did not
/// ask for it.
pub fn request_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, ProviderError> {
    let mut v = serde_json::to_value(req)
        .map_err(|e| ProviderError::unsupported("openai", "messages", &e.to_string()))?;
    if let Value::Object(map) = &mut v {
        map.insert("model".into(), Value::String(model.to_string()));
        if stream {
            map.insert("stream".into(), Value::Bool(true));
            map.insert(
                "stream_options".into(),
                serde_json::json!({"include_usage": true}),
            );
        } else {
            map.remove("stream");
            map.remove("stream_options");
        }
    }
    Ok(v)
}

/// Reads a `chat.completion` body.
pub fn parse_response(v: Value) -> Result<ChatResponse, ProviderError> {
    serde_json::from_value(v)
        .map_err(|e| ProviderError::Malformed(format!("not a chat.completion ({e})")))
}

/// Translates OpenAI SSE events (`data: {chunk}` ... `data: [DONE]`).
#[derive(Debug, Default)]
pub struct OpenAiStream {
    done: bool,
}

impl StreamTranslator for OpenAiStream {
    fn on_event(&mut self, ev: &SseEvent) -> Result<Vec<ChatChunk>, ProviderError> {
        let data = ev.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(Vec::new());
        }
        if data.is_empty() {
            return Ok(Vec::new());
        }
        let v = super::parse_event(data)?;
        if let Some(err) = v.get("error") {
            return Err(ProviderError::StreamBroken(super::error_message(
                &serde_json::json!({ "error": err }).to_string(),
            )));
        }
        let chunk: ChatChunk = serde_json::from_value(v)
            .map_err(|e| ProviderError::Malformed(format!("not a chat.completion.chunk ({e})")))?;
        Ok(vec![chunk])
    }

    fn is_done(&self) -> bool {
        self.done
    }
}

/// The shared implementation for OpenAI-format servers.
pub(crate) async fn infer_openai_format(
    http: &Http,
    body: Value,
) -> Result<ChatResponse, ProviderError> {
    let url = format!("{}/chat/completions", http.base);
    let resp = http.post(&url, &auth_headers(http), &body).await?;
    parse_response(http.json(resp).await?)
}

/// The shared streaming implementation for OpenAI-format servers.
pub(crate) async fn stream_openai_format(
    http: &Http,
    body: Value,
) -> Result<super::ChunkStream, ProviderError> {
    let url = format!("{}/chat/completions", http.base);
    let resp = http.post(&url, &auth_headers(http), &body).await?;
    Ok(super::translate_stream(
        resp,
        http.clone(),
        OpenAiStream::default(),
    ))
}

fn auth_headers(http: &Http) -> Vec<(&'static str, String)> {
    match &http.key {
        Some(k) => vec![("authorization", format!("Bearer {}", k.expose()))],
        None => Vec::new(),
    }
}

impl Provider for OpenAi {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAi
    }

    fn infer<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move { infer_openai_format(&self.http, request_body(req, model, false)?).await }
            .boxed()
    }

    fn infer_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<super::ChunkStream, ProviderError>> {
        async move { stream_openai_format(&self.http, request_body(req, model, true)?).await }
            .boxed()
    }
}
