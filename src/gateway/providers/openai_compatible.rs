//! OpenAI-compatible servers (vLLM, Ollama, Groq, Together, ...) reached by `base_url`: the
//! OpenAI format, minus the newest fields that many of them reject.

use futures_util::future::{BoxFuture, FutureExt};
use serde_json::Value;

use super::openai::{infer_openai_format, stream_openai_format};
use super::{Http, Provider, ProviderError, ProviderKind};
use crate::gateway::types::{ChatRequest, ChatResponse};

/// The OpenAI-compatible adapter.
pub struct OpenAiCompatible {
    name: String,
    http: Http,
}

impl OpenAiCompatible {
    /// An adapter for `{base_url}/chat/completions`.
    pub fn new(name: String, http: Http) -> Self {
        OpenAiCompatible { name, http }
    }
}

/// The upstream body: `max_completion_tokens` becomes the widely understood `max_tokens`, and
/// `stream_options` is sent only when the client asked for it (some servers reject it).
pub fn request_body(req: &ChatRequest, model: &str, stream: bool) -> Result<Value, ProviderError> {
    let mut v = serde_json::to_value(req)
        .map_err(|e| ProviderError::unsupported("openai-compatible", "messages", &e.to_string()))?;
    if let Value::Object(map) = &mut v {
        map.insert("model".into(), Value::String(model.to_string()));
        if let Some(limit) = map.remove("max_completion_tokens") {
            map.insert("max_tokens".into(), limit);
        }
        if stream {
            map.insert("stream".into(), Value::Bool(true));
        } else {
            map.remove("stream");
            map.remove("stream_options");
        }
    }
    Ok(v)
}

impl Provider for OpenAiCompatible {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> ProviderKind {
        ProviderKind::OpenAiCompatible
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
