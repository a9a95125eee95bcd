//! Provider adapters: one file per wire format, behind the [`Provider`] trait (`infer`,
//! `infer_stream`), plus the HTTP plumbing they share.

pub mod anthropic;
pub mod gemini;
pub mod openai;
pub mod openai_compatible;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde_json::Value;

use super::types::{ChatChunk, ChatRequest, ChatResponse};

/// A stream of OpenAI-shaped chunks from a provider.
pub type ChunkStream = BoxStream<'static, Result<ChatChunk, ProviderError>>;

/// One upstream provider.
pub trait Provider: Send + Sync {
    /// The configured name (`[providers.<name>]`).
    fn name(&self) -> &str;
    /// Which wire format it speaks.
    fn kind(&self) -> ProviderKind;
    /// One whole completion from `model` (the provider's own model name).
    fn infer<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>>;
    /// A streamed completion; resolves once the provider has answered with a success status.
    fn infer_stream<'a>(
        &'a self,
        req: &'a ChatRequest,
        model: &'a str,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>>;
}

/// The wire formats triage speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    Gemini,
    OpenAiCompatible,
}

impl ProviderKind {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Gemini => "gemini",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }

    /// The public endpoint used when no `base_url` is configured.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::OpenAi => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::OpenAiCompatible => None,
        }
    }
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "openai" => Ok(ProviderKind::OpenAi),
            "anthropic" => Ok(ProviderKind::Anthropic),
            "gemini" | "google" => Ok(ProviderKind::Gemini),
            "openai-compatible" | "openai_compatible" => Ok(ProviderKind::OpenAiCompatible),
            other => Err(format!(
                "unknown provider kind `{other}` (expected openai, anthropic, gemini or openai-compatible)"
            )),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API key. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a key value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Resolves a configured reference: `env:NAME` reads the environment variable `NAME`.
    /// Literal keys are refused: secrets are never written in the config file.
    pub fn from_reference(reference: &str) -> Result<Self, String> {
        match reference.strip_prefix("env:") {
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(format!("environment variable `{var}` is not set")),
            },
            None => Err(
                "api_key must be an `env:VARIABLE` reference; keys are never written in the config"
                    .to_string(),
            ),
        }
    }

    /// The key itself, for a request header only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Replaces every occurrence of the key in `text`.
    pub fn redact(&self, text: &str) -> String {
        if self.0.len() < 4 {
            return text.to_string();
        }
        text.replace(&self.0, "[redacted]")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What one provider attempt ran into.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProviderError {
    /// The request uses something this provider cannot carry; the client must change it.
    #[error("parameter `{param}` is not supported by {provider}: {reason}")]
    Unsupported {
        provider: &'static str,
        param: String,
        reason: String,
    },
    /// The provider answered with an error status.
    #[error("HTTP {status}: {message}")]
    Status {
        status: u16,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No connection could be made (or it broke before an answer).
    #[error("connection failed: {0}")]
    Connect(String),
    /// A timeout ran out.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The provider's answer could not be read as its format says it should be.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// A stream broke after it had begun.
    #[error("stream interrupted: {0}")]
    StreamBroken(String),
    /// The provider cannot be called as configured (e.g. its key's variable is unset).
    #[error("not usable: {0}")]
    NotConfigured(String),
    /// The circuit breaker is open for this provider.
    #[error("skipped: cooling down after repeated failures")]
    CoolingDown,
}

impl ProviderError {
    /// Whether the same provider may succeed if asked again: 408, 429, 5xx, connection
    /// failures and timeouts. Never 400/401/403/404.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Status { status, .. } => {
                *status == 408 || *status == 429 || *status >= 500
            }
            ProviderError::Connect(_) | ProviderError::Timeout(_) => true,
            _ => false,
        }
    }

    /// Whether this counts against the provider's health (for the circuit breaker).
    pub fn is_provider_fault(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                ProviderError::Malformed(_) | ProviderError::StreamBroken(_)
            )
    }

    /// Whether the request itself was at fault.
    pub fn is_client_error(&self) -> bool {
        match self {
            ProviderError::Unsupported { .. } => true,
            ProviderError::Status { status, .. } => *status == 400 || *status == 422,
            _ => false,
        }
    }

    /// The `retry-after` the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub(crate) fn unsupported(provider: &'static str, param: &str, reason: &str) -> Self {
        ProviderError::Unsupported {
            provider,
            param: param.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// How to reach one provider.
#[derive(Debug, Clone)]
pub struct ProviderSettings {
    /// The configured name.
    pub name: String,
    pub kind: ProviderKind,
    /// Root URL; the kind's public endpoint when absent.
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
}

/// Builds the adapter for `settings`, sharing `client`.
pub fn build(
    settings: ProviderSettings,
    client: reqwest::Client,
) -> Result<Arc<dyn Provider>, String> {
    let base = match settings
        .base_url
        .clone()
        .or_else(|| settings.kind.default_base_url().map(str::to_string))
    {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => {
            return Err(format!(
                "provider `{}` ({}) needs a base_url",
                settings.name, settings.kind
            ))
        }
    };
    let http = Http {
        client,
        base,
        key: settings.api_key,
    };
    Ok(match settings.kind {
        ProviderKind::OpenAi => Arc::new(openai::OpenAi::new(settings.name, http)),
        ProviderKind::OpenAiCompatible => Arc::new(openai_compatible::OpenAiCompatible::new(
            settings.name,
            http,
        )),
        ProviderKind::Anthropic => Arc::new(anthropic::Anthropic::new(settings.name, http)),
        ProviderKind::Gemini => Arc::new(gemini::Gemini::new(settings.name, http)),
    })
}

/// The shared HTTP client for providers (rustls with the ring crypto provider), with a
/// 10-second connect timeout.
pub fn http_client() -> Result<reqwest::Client, String> {
    http_client_with(Duration::from_secs(10))
}

/// An HTTP client for providers that gives up connecting after `connect_timeout`.
pub fn http_client_with(connect_timeout: Duration) -> Result<reqwest::Client, String> {
    // Ignore the result: another part of the process may have installed one already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| format!("could not build the HTTP client: {e}"))
}

/// What every adapter needs to talk HTTP: a client, a root URL and maybe a key.
#[derive(Debug, Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
    pub key: Option<Secret>,
}

impl Http {
    /// Hides the key in any text that may leave triage.
    pub fn redact(&self, text: &str) -> String {
        match &self.key {
            Some(k) => k.redact(text),
            None => text.to_string(),
        }
    }

    /// POSTs `body` as JSON and returns the response if its status is a success.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        body: &Value,
    ) -> Result<reqwest::Response, ProviderError> {
        let mut rb = self.client.post(url).json(body);
        for (k, v) in headers {
            rb = rb.header(*k, v);
        }
        let resp = rb.send().await.map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        Err(ProviderError::Status {
            status: status.as_u16(),
            message: self.redact(&error_message(&text)),
            retry_after,
        })
    }

    /// Reads a success response's JSON body.
    pub async fn json(&self, resp: reqwest::Response) -> Result<Value, ProviderError> {
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ProviderError::Malformed(format!("response body is not valid JSON ({e})")))
    }

    /// A reqwest error, as a provider error without the key.
    pub fn transport_error(&self, e: &reqwest::Error) -> ProviderError {
        let msg = self.redact(&error_chain(e));
        if e.is_timeout() {
            ProviderError::Timeout(msg)
        } else if e.is_body() || e.is_decode() {
            ProviderError::StreamBroken(msg)
        } else {
            ProviderError::Connect(msg)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The human message from a provider's error body (`{"error": {"message"}}` in all three
/// formats), or the body itself, shortened.
pub fn error_message(body: &str) -> String {
    let from_json = serde_json::from_str::<Value>(body).ok().and_then(|v| {
        let e = v.get("error")?;
        match e {
            Value::String(s) => Some(s.clone()),
            _ => e.get("message")?.as_str().map(str::to_string),
        }
    });
    let msg = from_json.unwrap_or_else(|| body.trim().to_string());
    let mut msg: String = msg.chars().take(500).collect();
    if msg.is_empty() {
        msg = "(empty body)".to_string();
    }
    msg
}

/// Parses `retry-after-ms` or `retry-after` (seconds; an HTTP date is ignored).
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// Reads a field that must be a string.
pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, ProviderError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderError::Malformed(format!("missing string field `{key}`")))
}

/// Parses a stream event's JSON data.
pub(crate) fn parse_event(data: &str) -> Result<Value, ProviderError> {
    serde_json::from_str(data)
        .map_err(|e| ProviderError::Malformed(format!("stream event is not valid JSON ({e})")))
}

/// Turns one provider's stream events into OpenAI chunks, keeping whatever state it needs.
pub trait StreamTranslator: Send + 'static {
    /// Translates one event; may yield no chunk (pings) or several.
    fn on_event(&mut self, event: &super::sse::SseEvent) -> Result<Vec<ChatChunk>, ProviderError>;
    /// Whether the provider's end-of-stream marker has been seen; a stream that ends before
    /// it was cut.
    fn is_done(&self) -> bool;
}

/// Runs a translator over a provider's SSE body.
pub(crate) fn translate_stream<T: StreamTranslator>(
    resp: reqwest::Response,
    http: Http,
    translator: T,
) -> ChunkStream {
    use super::sse::SseStreamError;
    use futures_util::stream::{self, StreamExt};
    let events = super::sse::events(resp.bytes_stream());
    stream::unfold(
        (events, translator, http, false),
        |(mut events, mut t, http, stop)| async move {
            if stop {
                return None;
            }
            loop {
                if t.is_done() {
                    return None;
                }
                match events.next().await {
                    Some(Ok(ev)) => match t.on_event(&ev) {
                        Ok(chunks) if chunks.is_empty() => continue,
                        Ok(chunks) => {
                            let items: Vec<Result<ChatChunk, ProviderError>> =
                                chunks.into_iter().map(Ok).collect();
                            return Some((stream::iter(items), (events, t, http, false)));
                        }
                        Err(e) => {
                            return Some((stream::iter(vec![Err(e)]), (events, t, http, true)))
                        }
                    },
                    Some(Err(SseStreamError::Transport(e))) => {
                        let err = ProviderError::StreamBroken(http.redact(&error_chain(&e)));
                        return Some((stream::iter(vec![Err(err)]), (events, t, http, true)));
                    }
                    Some(Err(SseStreamError::Parse(e))) => {
                        let err = ProviderError::Malformed(e.to_string());
                        return Some((stream::iter(vec![Err(err)]), (events, t, http, true)));
                    }
                    None => {
                        let err = ProviderError::StreamBroken(
                            "the provider closed the stream before its end marker".to_string(),
                        );
                        return Some((stream::iter(vec![Err(err)]), (events, t, http, true)));
                    }
                }
            }
        },
    )
    .flatten()
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk-very-secret");
        assert_eq!(format!("{s:?} {s}"), "Secret([redacted]) [redacted]");
        assert_eq!(s.redact("bad key sk-very-secret!"), "bad key [redacted]!");
    }

    #[test]
    fn literal_keys_are_refused() {
        assert!(Secret::from_reference("sk-123").is_err());
        let e = Secret::from_reference("env:TRIAGE_TEST_SURELY_UNSET_VAR").unwrap_err();
        assert!(e.contains("TRIAGE_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn retries_only_what_can_succeed_again() {
        let st = |status| ProviderError::Status {
            status,
            message: String::new(),
            retry_after: None,
        };
        for s in [408, 429, 500, 502, 503, 529] {
            assert!(st(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!st(s).is_retryable(), "{s}");
        }
        assert!(ProviderError::Timeout("x".into()).is_retryable());
        assert!(!ProviderError::Malformed("x".into()).is_retryable());
    }

    #[test]
    fn error_message_reads_all_three_formats() {
        assert_eq!(
            error_message(r#"{"error":{"message":"slow down","type":"rate_limit"}}"#),
            "slow down"
        );
        assert_eq!(
            error_message(
                r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
            ),
            "Overloaded"
        );
        assert_eq!(error_message("oops"), "oops");
    }

    #[test]
    fn retry_after_reads_seconds_and_milliseconds() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", "150".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
    }
}
