//! Golden-fixture translation tests, both ways, for every adapter: an OpenAI request into each
//! provider's body, and each provider's real response and stream events back into OpenAI's
//! shape. Set `UPDATE_GOLDEN=1` to rewrite the `*.expected.json` files (then review the diff).

use std::path::{Path, PathBuf};

use serde_json::Value;
use triage::gateway::providers::{
    anthropic, gemini, openai, openai_compatible, ProviderError, StreamTranslator,
};
use triage::gateway::sse::SseParser;
use triage::gateway::types::{ChatChunk, ChatRequest};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/gateway_fixtures")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(fixtures().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Compares with the golden file, or writes it under `UPDATE_GOLDEN=1`.
fn golden(rel: &str, actual: &Value) {
    let path = fixtures().join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        let text = serde_json::to_string_pretty(actual).unwrap() + "\n";
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = read_json(rel);
    assert_eq!(
        actual,
        &expected,
        "{rel} differs; actual:\n{}",
        serde_json::to_string_pretty(actual).unwrap()
    );
}

fn request() -> ChatRequest {
    serde_json::from_value(read_json("request.json")).unwrap()
}

/// `created` is the translation time and Gemini's call ids are minted: pin them.
fn normalise(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                if map.contains_key("created") {
                    map.insert("created".into(), Value::from(0));
                }
                if let Some(Value::String(id)) = map.get("id") {
                    if id.starts_with("call_") && id.len() > 12 {
                        map.insert("id".into(), Value::from("call_<minted>"));
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

fn run_stream(t: &mut dyn StreamTranslator, rel: &str) -> Value {
    let mut parser = SseParser::default();
    let mut chunks: Vec<ChatChunk> = Vec::new();
    for ev in parser.push(read(rel).as_bytes()) {
        chunks.extend(t.on_event(&ev).unwrap());
        if t.is_done() {
            break;
        }
    }
    assert!(t.is_done(), "{rel}: the end marker was seen");
    normalise(serde_json::to_value(chunks).unwrap())
}

#[test]
fn openai_request_passes_through_with_the_upstream_model() {
    let body = openai::request_body(&request(), "gpt-4o-2024-08-06", false).unwrap();
    golden("openai/request.expected.json", &body);
    let body = openai::request_body(&request(), "gpt-4o-2024-08-06", true).unwrap();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[test]
fn openai_compatible_request_uses_max_tokens() {
    let mut req = request();
    req.max_tokens = None;
    req.max_completion_tokens = Some(300);
    let body = openai_compatible::request_body(&req, "llama-3.1-8b", true).unwrap();
    golden("openai_compatible/request.expected.json", &body);
    assert!(body.get("stream_options").is_none());
}

#[test]
fn openai_response_and_stream_are_read() {
    let r = openai::parse_response(read_json("openai/response.json")).unwrap();
    golden(
        "openai/response.expected.json",
        &normalise(serde_json::to_value(r).unwrap()),
    );
    let chunks = run_stream(&mut openai::OpenAiStream::default(), "openai/stream.sse");
    golden("openai/stream.expected.json", &chunks);
}

#[test]
fn anthropic_request_translation() {
    let body = anthropic::request_body(&request(), "claude-sonnet-4-5-20250929", false).unwrap();
    golden("anthropic/request.expected.json", &body);
}

#[test]
fn anthropic_response_translation() {
    let r = anthropic::parse_response(read_json("anthropic/response.json")).unwrap();
    golden(
        "anthropic/response.expected.json",
        &normalise(serde_json::to_value(r).unwrap()),
    );
}

#[test]
fn anthropic_stream_translation() {
    let chunks = run_stream(
        &mut anthropic::AnthropicStream::default(),
        "anthropic/stream.sse",
    );
    golden("anthropic/stream.expected.json", &chunks);
}

#[test]
fn gemini_request_translation() {
    let body = gemini::request_body(&request(), "gemini-2.5-flash").unwrap();
    golden("gemini/request.expected.json", &body);
}

#[test]
fn gemini_response_translation() {
    let r = gemini::parse_response(read_json("gemini/response.json"), "gemini-2.5-flash").unwrap();
    golden(
        "gemini/response.expected.json",
        &normalise(serde_json::to_value(r).unwrap()),
    );
}

#[test]
fn gemini_stream_translation() {
    let chunks = run_stream(
        &mut gemini::GeminiStream::new("gemini-2.5-flash"),
        "gemini/stream.sse",
    );
    golden("gemini/stream.expected.json", &chunks);
}

fn unsupported_param(e: ProviderError) -> String {
    match e {
        ProviderError::Unsupported { param, .. } => param,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn parameters_a_provider_cannot_carry_are_named_not_dropped() {
    let mut req = request();
    req.extra.insert("logprobs".into(), Value::Bool(true));
    assert_eq!(
        unsupported_param(anthropic::request_body(&req, "m", false).unwrap_err()),
        "logprobs"
    );
    assert_eq!(
        unsupported_param(gemini::request_body(&req, "m").unwrap_err()),
        "logprobs"
    );
    // OpenAI-format providers receive it as is.
    assert_eq!(
        openai::request_body(&req, "m", false).unwrap()["logprobs"],
        true
    );

    let mut req = request();
    req.temperature = Some(1.5);
    assert_eq!(
        unsupported_param(anthropic::request_body(&req, "m", false).unwrap_err()),
        "temperature"
    );
    let mut req = request();
    req.n = Some(2);
    assert_eq!(
        unsupported_param(anthropic::request_body(&req, "m", false).unwrap_err()),
        "n"
    );
    assert_eq!(
        unsupported_param(gemini::request_body(&req, "m").unwrap_err()),
        "n"
    );
}

#[test]
fn finish_reasons_map_to_openai() {
    use triage::gateway::types::FinishReason::*;
    assert_eq!(anthropic::finish_reason("end_turn"), Stop);
    assert_eq!(anthropic::finish_reason("stop_sequence"), Stop);
    assert_eq!(anthropic::finish_reason("max_tokens"), Length);
    assert_eq!(anthropic::finish_reason("tool_use"), ToolCalls);
    assert_eq!(anthropic::finish_reason("refusal"), ContentFilter);
    assert_eq!(gemini::finish_reason("STOP"), Stop);
    assert_eq!(gemini::finish_reason("MAX_TOKENS"), Length);
    assert_eq!(gemini::finish_reason("SAFETY"), ContentFilter);
}

#[test]
fn malformed_provider_events_are_errors_not_panics() {
    let mut parser = SseParser::default();
    let evs = parser.push(b"data: {\"type\": \"message_start\", oops\n\n");
    let mut a = anthropic::AnthropicStream::default();
    assert!(matches!(
        a.on_event(&evs[0]),
        Err(ProviderError::Malformed(_))
    ));
    let mut g = gemini::GeminiStream::new("m");
    assert!(g.on_event(&evs[0]).is_err());
    assert!(anthropic::parse_response(serde_json::json!({"id": 1})).is_err());
    assert!(gemini::parse_response(serde_json::json!([1, 2]), "m").is_err());
}
