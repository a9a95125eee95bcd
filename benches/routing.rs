//! Criterion benches of what sits between the classifier and the wire: the tier policy's choice
//! of a model, and each provider adapter's request and response translation (whole responses
//! and streams), on the gateway's golden fixtures.
//!
//! `cargo bench --bench routing -- --quick` for a fast pass.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::Value;
use triage::classifier::{Tier, TierProbabilities};
use triage::gateway::providers::{anthropic, gemini, openai, openai_compatible, StreamTranslator};
use triage::gateway::sse::SseParser;
use triage::gateway::types::ChatRequest;
use triage::policy::{Mode, TierPolicy};

const REQUEST: &str = include_str!("../tests/gateway_fixtures/request.json");

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("fixture is JSON")
}

fn policy(c: &mut Criterion) {
    let policy = TierPolicy::default();
    let unsure = TierProbabilities::from_array([0.45, 0.35, 0.15, 0.05]);
    let allowed: Vec<String> = vec!["gpt-5".into(), "gemini-2.5-pro".into()];
    let mut group = c.benchmark_group("policy_choose");
    group.bench_function("default_family", |b| {
        b.iter(|| policy.choose(Some(Tier::Medium), None, Mode::Balanced, None, None))
    });
    group.bench_function("aggressive_unsure", |b| {
        b.iter(|| {
            policy.choose(
                Some(Tier::Easy),
                Some(&unsure),
                Mode::Aggressive,
                Some("openai"),
                None,
            )
        })
    });
    group.bench_function("allowed_models_search", |b| {
        b.iter(|| {
            policy.choose(
                Some(Tier::Easy),
                Some(&unsure),
                Mode::Balanced,
                None,
                Some(allowed.as_slice()),
            )
        })
    });
    group.finish();
}

/// Feeds a recorded SSE body through a translator, as the gateway does chunk by chunk.
fn translate_stream(t: &mut dyn StreamTranslator, sse: &str) -> usize {
    let mut parser = SseParser::default();
    let mut chunks = 0;
    for ev in parser.push(sse.as_bytes()) {
        chunks += t.on_event(&ev).expect("translates").len();
        if t.is_done() {
            break;
        }
    }
    chunks
}

fn translation(c: &mut Criterion) {
    let request: ChatRequest = serde_json::from_str(REQUEST).expect("request fixture");
    let mut group = c.benchmark_group("request_body");
    group.bench_function("openai", |b| {
        b.iter(|| openai::request_body(&request, "gpt-4o-2024-08-06", false).expect("body"))
    });
    group.bench_function("openai_compatible", |b| {
        b.iter(|| openai_compatible::request_body(&request, "llama-3.1-8b", false).expect("body"))
    });
    group.bench_function("anthropic", |b| {
        b.iter(|| anthropic::request_body(&request, "claude-sonnet-4-5", false).expect("body"))
    });
    group.bench_function("gemini", |b| {
        b.iter(|| gemini::request_body(&request, "gemini-2.5-flash").expect("body"))
    });
    // What the handler does first: parse the client's bytes.
    group.bench_function("parse_client_request", |b| {
        b.iter(|| serde_json::from_str::<ChatRequest>(REQUEST).expect("request"))
    });
    group.finish();

    let openai_response = include_str!("../tests/gateway_fixtures/openai/response.json");
    let anthropic_response = include_str!("../tests/gateway_fixtures/anthropic/response.json");
    let gemini_response = include_str!("../tests/gateway_fixtures/gemini/response.json");
    let mut group = c.benchmark_group("parse_response");
    group.bench_function("openai", |b| {
        b.iter(|| openai::parse_response(json(openai_response)).expect("response"))
    });
    group.bench_function("anthropic", |b| {
        b.iter(|| anthropic::parse_response(json(anthropic_response)).expect("response"))
    });
    group.bench_function("gemini", |b| {
        b.iter(|| {
            gemini::parse_response(json(gemini_response), "gemini-2.5-flash").expect("response")
        })
    });
    group.finish();

    let openai_sse = include_str!("../tests/gateway_fixtures/openai/stream.sse");
    let anthropic_sse = include_str!("../tests/gateway_fixtures/anthropic/stream.sse");
    let gemini_sse = include_str!("../tests/gateway_fixtures/gemini/stream.sse");
    let mut group = c.benchmark_group("translate_stream");
    group.bench_function("openai", |b| {
        b.iter(|| translate_stream(&mut openai::OpenAiStream::default(), openai_sse))
    });
    group.bench_function("anthropic", |b| {
        b.iter(|| translate_stream(&mut anthropic::AnthropicStream::default(), anthropic_sse))
    });
    group.bench_function("gemini", |b| {
        b.iter(|| {
            translate_stream(
                &mut gemini::GeminiStream::new("gemini-2.5-flash"),
                gemini_sse,
            )
        })
    });
    group.finish();
}

criterion_group! {
    name = routing;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    targets = policy, translation
}
criterion_main!(routing);
