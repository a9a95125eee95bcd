//! Handlers: the native `/v1/select-model`, the Morph-compatible `/v1/router/*`, and
//! `/health`, `/metrics`, `/v1/models`.
//!
//! Request bodies are read as JSON values and checked field by field, so each bad field gets a
//! 400 that names it (`param`) rather than a generic deserialisation error.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use super::metrics::{FailOpenReason, Gauges};
use super::{AppError, AppState};
use crate::classifier::input::{prompt_from_json, InputError};
use crate::classifier::worker::WorkerError;
use crate::classifier::{Prediction, Prompt, Tier};
use crate::policy::{Mode, PolicyError};
use crate::request_log::{self, LogEntry, LoggedPrompt};

/// A JSON request body: over the size limit is 413, empty or malformed is 400. Any content
/// type is accepted (curl's `-d` sends `application/x-www-form-urlencoded`).
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, AppError> {
        let bytes = Bytes::from_request(request, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                AppError::PayloadTooLarge {
                    limit: state.config.server.max_body_bytes,
                }
            } else {
                AppError::bad_request(
                    format!("cannot read the request body: {}", e.body_text()),
                    None,
                    "invalid_body",
                )
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(AppError::bad_request(
                "the request body is empty: send a JSON object",
                None,
                "empty_body",
            ));
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| {
            AppError::bad_request(
                format!("the request body is not valid JSON: {e}"),
                None,
                "invalid_json",
            )
        })?;
        Ok(JsonBody(value))
    }
}

/// A parsed selection request.
struct SelectRequest {
    prompt: Prompt,
    mode: Mode,
    family: Option<String>,
    allowed_models: Option<Vec<String>>,
    /// `None`: wait (up to `classify_timeout_ms`) instead of failing open.
    deadline: Option<Duration>,
}

fn as_object(value: &Value) -> Result<&Map<String, Value>, AppError> {
    value.as_object().ok_or_else(|| {
        AppError::bad_request(
            "the request body must be a JSON object",
            None,
            "invalid_body",
        )
    })
}

/// The prompt of a request: `input` (a string, or a list of chat messages) or `messages`.
fn parse_prompt(value: &Value) -> Result<Prompt, AppError> {
    prompt_from_json(value).map_err(|e| match e {
        InputError::Missing => AppError::bad_request(
            "`input` (a string) or `messages` (a list of chat messages) is required",
            Some("input"),
            "missing_input",
        ),
        InputError::WrongType { field, expected } => AppError::bad_request(
            format!("`{field}` must be {expected}"),
            Some(field),
            "invalid_type",
        ),
        InputError::BadMessage { index, message } => {
            let field = if value.get("messages").is_some() {
                "messages"
            } else {
                "input"
            };
            AppError::bad_request(
                format!("{field}[{index}]: {message}"),
                Some(field),
                "invalid_message",
            )
        }
        InputError::Empty => AppError::bad_request(
            "the prompt is empty: `input` has no text",
            Some("input"),
            "empty_input",
        ),
    })
}

/// An optional string field: absent and `null` are `None`.
fn optional_str<'a>(
    obj: &'a Map<String, Value>,
    field: &'static str,
) -> Result<Option<&'a str>, AppError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(AppError::bad_request(
            format!("`{field}` must be a string"),
            Some(field),
            "invalid_type",
        )),
    }
}

fn parse_mode(obj: &Map<String, Value>) -> Result<Mode, AppError> {
    match optional_str(obj, "mode")? {
        None => Ok(Mode::default()),
        Some(s) => s.parse().map_err(|e: PolicyError| {
            AppError::bad_request(e.to_string(), Some("mode"), "invalid_mode")
        }),
    }
}

fn parse_select(
    state: &AppState,
    value: &Value,
    family: Option<&str>,
) -> Result<SelectRequest, AppError> {
    let obj = as_object(value)?;
    let prompt = parse_prompt(value)?;
    let mode = parse_mode(obj)?;
    let family = match family {
        Some(f) => Some(f.to_string()),
        None => match optional_str(obj, "provider")? {
            None => None,
            Some(f) => {
                state.policy.table(f).map_err(|e| {
                    AppError::bad_request(e.to_string(), Some("provider"), "unknown_provider")
                })?;
                Some(f.to_string())
            }
        },
    };
    let allowed_models = match obj.get("allowed_models") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let models: Option<Vec<String>> = items
                .iter()
                .map(|v| v.as_str().map(|s| s.trim().to_string()))
                .collect();
            let Some(models) = models else {
                return Err(AppError::bad_request(
                    "`allowed_models` must be a list of model names (strings)",
                    Some("allowed_models"),
                    "invalid_type",
                ));
            };
            if models.is_empty() || models.iter().any(String::is_empty) {
                return Err(AppError::bad_request(
                    "`allowed_models` must name at least one model, and no empty names",
                    Some("allowed_models"),
                    "invalid_value",
                ));
            }
            Some(models)
        }
        Some(_) => {
            return Err(AppError::bad_request(
                "`allowed_models` must be a list of model names (strings)",
                Some("allowed_models"),
                "invalid_type",
            ))
        }
    };
    let server = &state.config.server;
    let deadline = match obj.get("deadline_ms") {
        None | Some(Value::Null) => server.deadline(),
        Some(v) => match v.as_u64() {
            Some(0) => None,
            Some(ms) => Some(Duration::from_millis(ms.min(server.classify_timeout_ms))),
            None => {
                return Err(AppError::bad_request(
                    "`deadline_ms` must be a non-negative integer (0: no deadline)",
                    Some("deadline_ms"),
                    "invalid_type",
                ))
            }
        },
    };
    Ok(SelectRequest {
        prompt,
        mode,
        family,
        allowed_models,
        deadline,
    })
}

/// The classifier's answer, or why there is none.
enum Outcome {
    Classified(Prediction),
    FailedOpen {
        reason: FailOpenReason,
        message: String,
    },
}

/// Queues `prompt` and waits for its prediction. With a `deadline`, running out of time (or a
/// classifier failure) fails open; without one, it waits up to `classify_timeout_ms` and
/// answers 503. A full queue is 429 either way.
async fn classify(
    state: &AppState,
    prompt: Prompt,
    deadline: Option<Duration>,
) -> Result<(Outcome, Duration), AppError> {
    let started = Instant::now();
    let server = &state.config.server;
    let receiver = state.worker.submit(prompt).map_err(|e| match e {
        WorkerError::QueueFull { .. } | WorkerError::Overloaded { .. } => {
            state.metrics.record_queue_rejection();
            AppError::Overloaded {
                message: format!("{e}; retry after {}s", server.retry_after_secs),
                retry_after_secs: server.retry_after_secs,
            }
        }
        other => AppError::Unavailable {
            message: other.to_string(),
            retry_after_secs: server.retry_after_secs,
        },
    })?;
    let limit = deadline.unwrap_or(Duration::from_millis(server.classify_timeout_ms));
    let result = tokio::time::timeout(limit, receiver).await;
    let waited = started.elapsed();
    let failure = match result {
        Ok(Ok(Ok(prediction))) => {
            state.metrics.record_classification(prediction.tier, waited);
            return Ok((Outcome::Classified(prediction), waited));
        }
        Ok(Ok(Err(e))) => (FailOpenReason::ClassifierError, e.to_string()),
        Ok(Err(_)) => (
            FailOpenReason::ClassifierError,
            WorkerError::Stopped.to_string(),
        ),
        Err(_) => (
            FailOpenReason::Deadline,
            format!(
                "classification did not finish within {} ms",
                limit.as_millis()
            ),
        ),
    };
    if deadline.is_none() {
        return Err(AppError::Unavailable {
            message: failure.1,
            retry_after_secs: server.retry_after_secs,
        });
    }
    tracing::warn!(reason = failure.0.as_str(), detail = %failure.1, "failing open");
    state.metrics.record_fail_open(failure.0);
    Ok((
        Outcome::FailedOpen {
            reason: failure.0,
            message: failure.1,
        },
        waited,
    ))
}

/// Classifies and chooses a model; the JSON answer of `/v1/select-model`.
async fn select(state: &AppState, request: SelectRequest) -> Result<Value, AppError> {
    // Bad `allowed_models` is the client's to fix: check it before spending model time.
    state
        .policy
        .choose(
            Some(Tier::Medium),
            None,
            request.mode,
            request.family.as_deref(),
            request.allowed_models.as_deref(),
        )
        .map_err(policy_error)?;
    let (outcome, waited) = classify(state, request.prompt, request.deadline).await?;
    let (prediction, fail_open) = match outcome {
        Outcome::Classified(p) => (Some(p), None),
        Outcome::FailedOpen { reason, message } => (None, Some((reason, message))),
    };
    let choice = state
        .policy
        .choose(
            prediction.as_ref().map(|p| p.tier),
            prediction.as_ref().map(|p| &p.probabilities),
            request.mode,
            request.family.as_deref(),
            request.allowed_models.as_deref(),
        )
        .map_err(policy_error)?;
    state.metrics.record_model(&choice.model);
    let provider = state
        .config
        .models
        .get(&choice.model)
        .map(|m| m.provider.clone())
        .unwrap_or_else(|| choice.family.clone());
    Ok(json!({
        "model": choice.model,
        "provider": provider,
        "family": choice.family,
        "tier": prediction.as_ref().map(|p| p.tier),
        "routed_tier": choice.routed_tier,
        "confidence": prediction.as_ref().map(|p| p.confidence),
        "probabilities": prediction.as_ref().map(|p| p.probabilities),
        "mode": choice.mode,
        "classifier_ms": round_ms(waited),
        "fail_open": fail_open.is_some(),
        "reason": fail_open.as_ref().map(|(_, message)| message.as_str()),
        "fail_open_reason": fail_open.as_ref().map(|(reason, _)| reason.as_str()),
        "adjustment": choice.adjustment,
    }))
}

fn policy_error(e: PolicyError) -> AppError {
    match e {
        PolicyError::NoAllowedModel { .. } => {
            AppError::bad_request(e.to_string(), Some("allowed_models"), "no_allowed_model")
        }
        PolicyError::UnknownFamily { .. } => {
            AppError::bad_request(e.to_string(), Some("provider"), "unknown_provider")
        }
        PolicyError::UnknownMode(_) => {
            AppError::bad_request(e.to_string(), Some("mode"), "invalid_mode")
        }
        PolicyError::InvalidTable { .. } => AppError::Internal(e.to_string()),
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// `POST /v1/select-model`.
pub async fn select_model(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AppError> {
    let started = Instant::now();
    let request = parse_select(&state, &body, None)?;
    let answer = select(&state, request).await?;
    log_selection(&state, "select-model", body, &answer, started);
    Ok(Json(answer))
}

/// Queues the request log's line for an answered selection (when the log is on).
fn log_selection(
    state: &AppState,
    endpoint: &'static str,
    body: Value,
    answer: &Value,
    started: Instant,
) {
    let Some(log) = &state.request_log else {
        return;
    };
    let text = |key: &str| answer.get(key).and_then(Value::as_str).map(str::to_string);
    log.record(LogEntry {
        ts: std::time::SystemTime::now(),
        request_id: request_log::request_id(),
        endpoint,
        requested_model: None,
        model: text("model").unwrap_or_default(),
        upstream_model: None,
        provider: text("provider"),
        tier: text("tier"),
        prompt: LoggedPrompt::Select(body),
        usage: None,
        stream: false,
        outcome: "ok",
        attempts: None,
        cost_usd: None,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    });
}

/// `POST /v1/router/{anthropic|openai|gemini|...}`: Morph's `selectModel`; answers `{"model"}`
/// plus triage's own fields.
pub async fn router_family(
    State(state): State<AppState>,
    Path(family): Path<String>,
    body: Result<JsonBody, AppError>,
) -> Result<Json<Value>, AppError> {
    // An unknown family is a wrong URL: say so before complaining about the body.
    state
        .policy
        .table(&family)
        .map_err(|e| AppError::NotFound {
            message: e.to_string(),
            param: Some("provider".into()),
            code: "unknown_provider",
        })?;
    let started = Instant::now();
    let JsonBody(body) = body?;
    let request = parse_select(&state, &body, Some(&family))?;
    let answer = select(&state, request).await?;
    log_selection(&state, "router", body, &answer, started);
    Ok(Json(answer))
}

/// The prompt of a Morph `raw` or `classify` request; these cannot fail open.
async fn classify_only(state: &AppState, body: &Value) -> Result<Prediction, AppError> {
    as_object(body)?;
    let prompt = parse_prompt(body)?;
    match classify(state, prompt, None).await? {
        (Outcome::Classified(p), _) => Ok(p),
        (Outcome::FailedOpen { message, .. }, _) => Err(AppError::Unavailable {
            message,
            retry_after_secs: state.config.server.retry_after_secs,
        }),
    }
}

/// `POST /v1/router/raw`: `{"difficulty": "easy" | "medium" | "hard" | "needs_info"}`.
pub async fn router_raw(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AppError> {
    let p = classify_only(&state, &body).await?;
    Ok(Json(json!({ "difficulty": p.tier })))
}

/// `POST /v1/router/classify`: `{"classifications": {"difficulty": {"class_id", "label",
/// "confidence", "meets_threshold"}}}`. `label` is the most probable tier and `confidence`
/// its probability; `meets_threshold` says whether that reaches the needs_info threshold
/// (when it does not, `/v1/router/raw` answers `needs_info`).
pub async fn router_classify(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, AppError> {
    let p = classify_only(&state, &body).await?;
    Ok(Json(json!({
        "classifications": {
            "difficulty": {
                "class_id": p.top_tier.index(),
                "label": p.top_tier,
                "confidence": p.confidence,
                "meets_threshold": p.confident,
            }
        }
    })))
}

/// `GET /health`.
pub async fn health(State(state): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "online",
        "classifier": &*state.classifier_name,
        "queue_depth": state.worker.queue_depth(),
    }))
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(Gauges {
        queue_depth: state.worker.queue_depth(),
        queue_capacity: state.worker.capacity(),
    });
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /v1/models`: every model a tier table or `[models]` names, and the `auto` names the
/// gateway takes, in OpenAI's list shape.
pub async fn list_models(State(state): State<AppState>) -> Json<Value> {
    let mut data: Vec<Value> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut push = |id: &str, owned_by: &str| {
        if !seen.iter().any(|s| s == id) {
            seen.push(id.to_string());
            data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": owned_by}));
        }
    };
    for auto in ["auto", "auto:balanced", "auto:aggressive", "auto:cost"] {
        push(auto, "triage");
    }
    for family in state.policy.families() {
        if let Ok(table) = state.policy.table(family) {
            for model in table.models() {
                let owner = state
                    .config
                    .models
                    .get(model)
                    .map_or(family, |m| m.provider.as_str());
                push(model, owner);
            }
        }
    }
    for (name, model) in &state.config.models {
        push(name, &model.provider);
    }
    Json(json!({ "object": "list", "data": data }))
}

/// Any path no route matches.
pub async fn not_found(uri: Uri) -> AppError {
    AppError::NotFound {
        message: format!("no route for {}", uri.path()),
        param: None,
        code: "not_found",
    }
}

/// A known path with the wrong method.
pub async fn method_not_allowed(method: Method, uri: Uri) -> AppError {
    AppError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
