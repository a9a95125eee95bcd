//! `POST /v1/chat/completions`: parse, pick the model (`auto` asks a [`TierChooser`]), run the
//! gateway, answer in OpenAI's shape (JSON or SSE) with the `x-triage-*` headers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use super::providers::ProviderError;
use super::sse::data_event;
use super::types::{ChatChunk, ChatRequest, Message, Role, Usage};
use super::{Gateway, GatewayError, Served, Target};
use crate::request_log::{self, LogEntry, LoggedPrompt, RequestLog};

/// The largest chat request body accepted (base64 images included).
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

/// The routing modes `auto:<mode>` accepts.
pub const MODES: [&str; 3] = ["balanced", "aggressive", "cost"];

/// What `auto` routing decided.
#[derive(Debug, Clone, PartialEq)]
pub struct TierChoice {
    /// `easy`, `medium`, `hard` or `needs_info` (or a fail-open marker).
    pub tier: String,
    /// A configured model name.
    pub model: String,
}

/// Chooses a model for a prompt: the classifier and policy, seen from the gateway.
pub trait TierChooser: Send + Sync {
    /// Picks a tier and model for the request's prompt under `mode` (one of [`MODES`]).
    fn choose<'a>(
        &'a self,
        req: &'a ChatRequest,
        mode: &'a str,
    ) -> BoxFuture<'a, Result<TierChoice, String>>;
}

/// Everything the chat route needs.
#[derive(Clone)]
pub struct ChatState {
    pub gateway: Arc<Gateway>,
    /// `None` disables `auto` routing.
    pub chooser: Option<Arc<dyn TierChooser>>,
    /// Where answered requests are logged; `None` when off.
    pub request_log: Option<RequestLog>,
}

/// The chat-completions route, ready to merge into the app (whatever its state type).
pub fn routes<S: Clone + Send + Sync + 'static>(state: ChatState) -> Router<S> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        // Base64 images make chat bodies larger than classification requests.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// An error in OpenAI's shape, with whatever headers are known.
#[derive(Debug)]
pub struct ChatError {
    status: StatusCode,
    body: Value,
    headers: Vec<(&'static str, String)>,
}

impl ChatError {
    fn new(status: u16, kind: &str, message: String, param: Option<&str>, code: &str) -> Self {
        ChatError {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
            body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
            headers: Vec::new(),
        }
    }

    fn bad_request(message: String, param: Option<&str>) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            message,
            param,
            "invalid_request",
        )
    }

    fn from_gateway(e: &GatewayError) -> Self {
        let status = e.status();
        match e {
            GatewayError::UnknownModel(m) => Self::new(
                404,
                "invalid_request_error",
                format!("model `{m}` is not configured; use a [models] name or `auto`"),
                Some("model"),
                "model_not_found",
            ),
            GatewayError::Config(_) => {
                Self::new(500, "server_error", e.to_string(), None, "config_error")
            }
            GatewayError::AllFailed { failures, .. } => {
                let param = failures.iter().find_map(|f| match &f.error {
                    ProviderError::Unsupported { param, .. } => Some(param.as_str()),
                    _ => None,
                });
                let kind = match status {
                    400 => "invalid_request_error",
                    429 => "rate_limit_error",
                    _ => "upstream_error",
                };
                let code = match (status, param) {
                    (400, Some(_)) => "unsupported_parameter",
                    _ => "all_providers_failed",
                };
                let mut err = Self::new(status, kind, e.to_string(), param, code);
                err.body["error"]["failures"] = failures
                    .iter()
                    .map(|f| {
                        json!({"model": f.target.model, "provider": f.target.provider,
                               "attempts": f.attempts, "error": f.error.to_string()})
                    })
                    .collect();
                err
            }
        }
    }
}

impl IntoResponse for ChatError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        set_headers(&mut resp, &self.headers);
        resp
    }
}

fn set_headers(resp: &mut Response, headers: &[(&'static str, String)]) {
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
}

fn overhead_ms(started: Instant, provider_time: Duration) -> String {
    let ms = started
        .elapsed()
        .saturating_sub(provider_time)
        .as_secs_f64()
        * 1000.0;
    format!("{ms:.3}")
}

/// The cost of `usage` on `target`, by the configured name first, then the upstream name.
pub fn cost_usd(target: &Target, usage: &Usage) -> Option<f64> {
    crate::pricing::cost(&target.model, usage.prompt_tokens, usage.completion_tokens).or_else(
        || {
            crate::pricing::cost(
                &target.upstream,
                usage.prompt_tokens,
                usage.completion_tokens,
            )
        },
    )
}

fn triage_headers<T>(
    tier: &str,
    served: &Served<T>,
    started: Instant,
    cost: Option<f64>,
) -> Vec<(&'static str, String)> {
    vec![
        ("x-triage-tier", tier.to_string()),
        ("x-triage-model", served.target.model.clone()),
        ("x-triage-provider", served.target.provider.clone()),
        ("x-triage-attempts", served.attempts.to_string()),
        (
            "x-triage-cost-usd",
            cost.map(|c| format!("{c:.8}"))
                .unwrap_or_else(|| "unknown".into()),
        ),
        (
            "x-triage-overhead-ms",
            overhead_ms(started, served.provider_time),
        ),
    ]
}

/// The handler.
pub async fn chat_completions(
    State(state): State<ChatState>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(e) => return body_rejection(&e).into_response(),
    };
    match handle(&state, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// A body that could not be read: too large is 413, anything else 400, in OpenAI's shape.
fn body_rejection(e: &BytesRejection) -> ChatError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ChatError::new(
            413,
            "invalid_request_error",
            format!("the request body is larger than the limit of {MAX_BODY_BYTES} bytes"),
            None,
            "request_too_large",
        )
    } else {
        ChatError::bad_request(
            format!("cannot read the request body: {}", e.body_text()),
            None,
        )
    }
}

async fn handle(state: &ChatState, body: &[u8]) -> Result<Response, ChatError> {
    let started = Instant::now();
    if body.is_empty() {
        return Err(ChatError::bad_request(
            "the request body is empty; send a JSON chat completion request".into(),
            None,
        ));
    }
    let req: ChatRequest = serde_json::from_slice(body)
        .map_err(|e| ChatError::bad_request(format!("invalid request body: {e}"), None))?;
    if req.messages.is_empty() {
        return Err(ChatError::bad_request(
            "`messages` must not be empty".into(),
            Some("messages"),
        ));
    }
    check_messages(&req.messages)?;
    let (tier, model) = resolve_model(state, &req).await?;
    let chain = state.gateway.chain(&model).map_err(|e| {
        let mut err = match &e {
            // The client said `auto`: the model is triage's choice, and the fix is in the
            // server's configuration, not in the request.
            GatewayError::UnknownModel(m) if is_auto(&req.model) => ChatError::new(
                503,
                "server_error",
                format!(
                    "auto routing chose `{m}` (tier {tier}), but no provider serves it; \
                     configure the provider of its tier table or add [models.\"{m}\"]"
                ),
                Some("model"),
                "model_not_routable",
            ),
            _ => ChatError::from_gateway(&e),
        };
        err.headers.push(("x-triage-tier", tier.clone()));
        err.headers.push(("x-triage-model", model.clone()));
        err
    })?;
    if req.is_stream() {
        stream_response(state, req, &chain, &tier, started).await
    } else {
        match state.gateway.complete(&req, &chain).await {
            Ok(served) => {
                let cost = served
                    .value
                    .usage
                    .as_ref()
                    .and_then(|u| cost_usd(&served.target, u));
                let headers = triage_headers(&tier, &served, started, cost);
                let mut resp = axum::Json(&served.value).into_response();
                set_headers(&mut resp, &headers);
                if let Some(log) = &state.request_log {
                    let mut entry = log_entry(req, &tier, &served, started);
                    entry.usage = served.value.usage;
                    entry.cost_usd = cost;
                    log.record(entry);
                }
                Ok(resp)
            }
            Err(e) => Err(failed(&e, &tier, &chain, started)),
        }
    }
}

/// The request log's line for a served request; usage, cost and outcome are filled in when
/// known. Takes the request to move its messages rather than copy them.
fn log_entry<T>(req: ChatRequest, tier: &str, served: &Served<T>, started: Instant) -> LogEntry {
    LogEntry {
        ts: std::time::SystemTime::now(),
        request_id: request_log::request_id(),
        endpoint: "chat.completions",
        tier: (tier != "none").then(|| tier.to_string()),
        requested_model: Some(req.model),
        model: served.target.model.clone(),
        upstream_model: Some(served.target.upstream.clone()),
        provider: Some(served.target.provider.clone()),
        prompt: LoggedPrompt::Chat(req.messages),
        usage: None,
        stream: req.stream.unwrap_or(false),
        outcome: "ok",
        attempts: Some(served.attempts),
        cost_usd: None,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}

/// A stream's log line, written when the stream ends, breaks, or is dropped because the client
/// went away (then its outcome says so).
struct StreamLog {
    log: RequestLog,
    entry: Option<LogEntry>,
    target: Target,
    started: Instant,
}

impl StreamLog {
    fn see(&mut self, chunk: &ChatChunk) {
        if let (Some(entry), Some(usage)) = (self.entry.as_mut(), &chunk.usage) {
            entry.usage = Some(*usage);
        }
    }

    fn end(&mut self, outcome: &'static str) {
        if let Some(entry) = self.entry.as_mut() {
            entry.outcome = outcome;
        }
    }
}

impl Drop for StreamLog {
    fn drop(&mut self) {
        if let Some(mut entry) = self.entry.take() {
            entry.latency_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            entry.cost_usd = entry.usage.as_ref().and_then(|u| cost_usd(&self.target, u));
            self.log.record(entry);
        }
    }
}

/// Every message must say something: content, or (from the assistant) tool calls. A message
/// without either would reach a provider as an empty turn and fail there, far from its cause.
fn check_messages(messages: &[Message]) -> Result<(), ChatError> {
    for (i, m) in messages.iter().enumerate() {
        let has_content = m.content.is_some();
        let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        let ok = match m.role {
            Role::Assistant => has_content || has_calls,
            _ => has_content,
        };
        if !ok {
            return Err(ChatError::bad_request(
                format!("`messages[{i}]` has no `content`"),
                Some("messages"),
            ));
        }
        if m.role == Role::Tool && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(ChatError::bad_request(
                format!("`messages[{i}]` is a tool result without a `tool_call_id`"),
                Some("messages"),
            ));
        }
    }
    Ok(())
}

fn is_auto(model: &str) -> bool {
    model == "auto" || model.starts_with("auto:")
}

/// The error when the whole chain failed, with the headers that still mean something: the
/// model asked for (or chosen), the provider tried last, the attempts, and triage's overhead.
fn failed(e: &GatewayError, tier: &str, chain: &[Target], started: Instant) -> ChatError {
    let mut err = ChatError::from_gateway(e);
    err.headers = vec![("x-triage-tier", tier.to_string())];
    if let Some(first) = chain.first() {
        err.headers.push(("x-triage-model", first.model.clone()));
    }
    if let GatewayError::AllFailed { failures, .. } = e {
        if let Some(last) = failures.last() {
            err.headers
                .push(("x-triage-provider", last.target.provider.clone()));
        }
    }
    err.headers.extend([
        ("x-triage-attempts", e.attempts().to_string()),
        (
            "x-triage-overhead-ms",
            overhead_ms(started, e.provider_time()),
        ),
    ]);
    err
}

/// `auto[:mode]` -> the chooser's tier and model; any other name is used as is.
async fn resolve_model(
    state: &ChatState,
    req: &ChatRequest,
) -> Result<(String, String), ChatError> {
    let mode = match req.model.as_str() {
        "auto" => "balanced",
        m => match m.strip_prefix("auto:") {
            Some(mode) if MODES.contains(&mode) => mode,
            Some(mode) => {
                return Err(ChatError::bad_request(
                    format!("unknown routing mode `{mode}`; use auto, auto:balanced, auto:aggressive or auto:cost"),
                    Some("model"),
                ))
            }
            None => return Ok(("none".into(), req.model.clone())),
        },
    };
    let chooser = state.chooser.as_ref().ok_or_else(|| {
        ChatError::bad_request(
            "`auto` routing is not available on this server; name a configured model".into(),
            Some("model"),
        )
    })?;
    let choice = chooser.choose(req, mode).await.map_err(|e| {
        ChatError::new(
            503,
            "server_error",
            format!("could not choose a model: {e}"),
            Some("model"),
            "routing_failed",
        )
    })?;
    Ok((choice.tier, choice.model))
}

/// The error event that ends a stream which broke after its first byte.
pub fn stream_error_event(e: &ProviderError, target: &Target) -> String {
    let body = json!({"error": {
        "message": format!("the upstream stream from {} via {} failed after it began: {e}",
                           target.model, target.provider),
        "type": "upstream_error",
        "param": null,
        "code": "stream_interrupted",
    }});
    data_event(&body.to_string())
}

/// Serialises one chunk for the client, or nothing when it only carries usage the client did
/// not ask for.
fn client_chunk(mut c: ChatChunk, include_usage: bool, target: &Target) -> Option<String> {
    if c.usage.is_some() && !include_usage {
        if c.choices.is_empty() {
            return None;
        }
        c.usage = None;
    }
    let mut v = serde_json::to_value(&c).ok()?;
    if let Some(u) = &c.usage {
        if let Some(cost) = cost_usd(target, u) {
            v["x_triage_cost_usd"] = json!(cost);
        }
    }
    Some(data_event(&v.to_string()))
}

async fn stream_response(
    state: &ChatState,
    req: ChatRequest,
    chain: &[Target],
    tier: &str,
    started: Instant,
) -> Result<Response, ChatError> {
    let served = state
        .gateway
        .complete_stream(&req, chain)
        .await
        .map_err(|e| failed(&e, tier, chain, started))?;
    // Cost is known only at the end of a stream: it rides on the usage chunk instead.
    let headers = triage_headers(tier, &served, started, None);
    let include_usage = req.include_usage();
    let mut log = state.request_log.clone().map(|log| StreamLog {
        log,
        // The outcome until the stream says otherwise: dropped before its end.
        entry: Some(LogEntry {
            outcome: "client_disconnected",
            ..log_entry(req, tier, &served, started)
        }),
        target: served.target.clone(),
        started,
    });
    let target = served.target.clone();
    let head = served.value.head;
    let rest = served.value.rest;
    if let Some(log) = log.as_mut() {
        head.iter().for_each(|c| log.see(c));
    }
    let t2 = target.clone();
    let head_events = stream::iter(
        head.into_iter()
            .filter_map(move |c| client_chunk(c, include_usage, &t2))
            .collect::<Vec<_>>(),
    );
    let rest_events = stream::unfold(
        (rest, target, log, false),
        move |(mut rest, target, mut log, stop)| async move {
            if stop {
                return None;
            }
            // Bounded by the provider stream: each turn consumes one item or ends.
            loop {
                match rest.next().await {
                    Some(Ok(c)) => {
                        if let Some(log) = log.as_mut() {
                            log.see(&c);
                        }
                        if let Some(ev) = client_chunk(c, include_usage, &target) {
                            return Some((ev, (rest, target, log, false)));
                        }
                    }
                    Some(Err(e)) => {
                        if let Some(log) = log.as_mut() {
                            log.end("stream_error");
                        }
                        let ev = stream_error_event(&e, &target);
                        return Some((ev, (rest, target, log, true)));
                    }
                    None => {
                        if let Some(log) = log.as_mut() {
                            log.end("ok");
                        }
                        let done = "data: [DONE]\n\n".to_string();
                        return Some((done, (rest, target, log, true)));
                    }
                }
            }
        },
    );
    let body = head_events
        .chain(rest_events)
        .map(|s| Ok::<_, std::convert::Infallible>(Bytes::from(s)));
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    set_headers(&mut resp, &headers);
    Ok(resp)
}
