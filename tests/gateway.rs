//! The gateway end to end over loopback: the chat route in front of mock providers that speak
//! each real wire format, with retries, failover, cooldown, timeouts and stream failures.

mod gateway_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use gateway_support::{Behavior, Format, MockProvider};
use serde_json::{json, Value};
use triage::gateway::handler::{self, ChatState, TierChoice, TierChooser};
use triage::gateway::providers::{self, ProviderKind, ProviderSettings, Secret};
use triage::gateway::retry::{RetryPolicy, Timeouts};
use triage::gateway::{Gateway, GatewaySettings, ModelRoute};

fn fast_settings() -> GatewaySettings {
    GatewaySettings {
        retry: RetryPolicy {
            max_retries: 2,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            max_retry_after: Duration::from_secs(2),
        },
        timeouts: Timeouts {
            attempt: Duration::from_secs(10),
            total: Duration::from_secs(20),
            first_token: Duration::from_secs(10),
        },
        breaker_threshold: 100,
        breaker_cooldown: Duration::from_secs(60),
    }
}

/// One configured model: (name, provider name, kind, mock, fallbacks).
struct Spec<'a> {
    model: &'a str,
    provider: &'a str,
    kind: ProviderKind,
    mock: &'a MockProvider,
    fallbacks: &'a [&'a str],
}

fn spec<'a>(
    model: &'a str,
    provider: &'a str,
    kind: ProviderKind,
    mock: &'a MockProvider,
    fallbacks: &'a [&'a str],
) -> Spec<'a> {
    Spec {
        model,
        provider,
        kind,
        mock,
        fallbacks,
    }
}

fn gateway(specs: &[Spec<'_>], settings: GatewaySettings) -> Arc<Gateway> {
    let client = providers::http_client().unwrap();
    let mut ps = HashMap::new();
    let mut models = HashMap::new();
    for s in specs {
        ps.entry(s.provider.to_string()).or_insert_with(|| {
            providers::build(
                ProviderSettings {
                    name: s.provider.to_string(),
                    kind: s.kind,
                    base_url: Some(s.mock.base_url()),
                    api_key: Some(Secret::new(format!("sk-test-{}-0123456789", s.provider))),
                },
                client.clone(),
            )
            .unwrap()
        });
        models.insert(
            s.model.to_string(),
            ModelRoute {
                provider: s.provider.to_string(),
                upstream: format!("{}-upstream", s.model),
                fallbacks: s.fallbacks.iter().map(|f| f.to_string()).collect(),
            },
        );
    }
    Arc::new(Gateway::new(ps, models, settings).unwrap())
}

/// Serves the chat route on loopback port 0; returns its base URL.
async fn serve(state: ChatState) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, handler::routes::<()>(state)).await;
    });
    format!("http://{addr}")
}

async fn serve_gateway(gw: Arc<Gateway>) -> String {
    serve(ChatState {
        gateway: gw,
        chooser: None,
        request_log: None,
    })
    .await
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("{e}: {}", self.text))
    }
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    /// The `data:` payloads of an SSE body.
    fn events(&self) -> Vec<String> {
        self.text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .map(str::to_string)
            .collect()
    }
}

async fn post(base: &str, body: Value) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap_or_default();
    Reply {
        status,
        headers,
        text,
    }
}

fn hello(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Say hello"}]})
}

fn streamed(model: &str) -> Value {
    let mut b = hello(model);
    b["stream"] = json!(true);
    b["stream_options"] = json!({"include_usage": true});
    b
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

const KINDS: [(Format, ProviderKind); 4] = [
    (Format::OpenAi, ProviderKind::OpenAi),
    (Format::Anthropic, ProviderKind::Anthropic),
    (Format::Gemini, ProviderKind::Gemini),
    (Format::OpenAi, ProviderKind::OpenAiCompatible),
];

#[tokio::test]
async fn plain_completion_through_every_adapter() {
    for (format, kind) in KINDS {
        let mock = MockProvider::start(format).await;
        let gw = gateway(&[spec("m", "p", kind, &mock, &[])], fast_settings());
        let base = serve_gateway(gw).await;
        let r = post(&base, hello("m")).await;
        assert_eq!(r.status, 200, "{kind}: {}", r.text);
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            format!("Hello from {format:?}")
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 11);
        assert_eq!(v["usage"]["completion_tokens"], 7);
        assert_eq!(r.header("x-triage-model"), "m");
        assert_eq!(r.header("x-triage-provider"), "p");
        assert_eq!(r.header("x-triage-attempts"), "1");
        assert_eq!(r.header("x-triage-tier"), "none");
        assert!(!r.header("x-triage-cost-usd").is_empty());
        assert!(r.header("x-triage-overhead-ms").parse::<f64>().is_ok());
        // the upstream saw the provider's own model name and the system prompt
        let req = &mock.requests()[0];
        let sent = req.body.to_string();
        assert!(
            sent.contains("m-upstream") || req.path.contains("m-upstream"),
            "{kind}"
        );
        assert!(sent.contains("Be brief."), "{kind}: {sent}");
    }
}

#[tokio::test]
async fn streamed_completion_through_every_adapter_ends_with_usage_and_done() {
    for (format, kind) in KINDS {
        let mock = MockProvider::start(format).await;
        let gw = gateway(&[spec("m", "p", kind, &mock, &[])], fast_settings());
        let base = serve_gateway(gw).await;
        let r = post(&base, streamed("m")).await;
        assert_eq!(r.status, 200, "{kind}: {}", r.text);
        assert_eq!(r.header("content-type"), "text/event-stream");
        let events = r.events();
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{kind}");
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap())
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, format!("Hello from {format:?}"), "{kind}");
        assert!(chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"));
        assert!(chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop"));
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]), "{kind}: usage chunk last");
        assert_eq!(last["usage"]["completion_tokens"], 7, "{kind}");
    }
}

#[tokio::test]
async fn usage_chunk_is_dropped_when_the_client_did_not_ask() {
    let mock = MockProvider::start(Format::Anthropic).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::Anthropic, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let mut body = hello("m");
    body["stream"] = json!(true);
    let r = post(&base, body).await;
    assert!(!r.text.contains("\"usage\""), "{}", r.text);
    assert!(r.text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn tool_calls_round_trip_in_and_out_of_streams() {
    let args = json!({"city": "Paris"});
    for (format, kind) in KINDS {
        for stream in [false, true] {
            let mock = MockProvider::start(format).await;
            mock.set_default(Behavior::ToolCall {
                name: "get_weather".into(),
                arguments: args.clone(),
            });
            let gw = gateway(&[spec("m", "p", kind, &mock, &[])], fast_settings());
            let base = serve_gateway(gw).await;
            let body = json!({"model": "m", "stream": stream, "tools": weather_tool(),
                "tool_choice": "auto",
                "messages": [
                    {"role": "user", "content": "Weather in Lyon, then Paris?"},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\"}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 18}"}]});
            let r = post(&base, body).await;
            assert_eq!(r.status, 200, "{kind} stream={stream}: {}", r.text);
            let (name, arguments, finish) = if stream {
                let mut name = String::new();
                let mut arguments = String::new();
                let mut finish = String::new();
                for e in r.events().iter().filter(|e| *e != "[DONE]") {
                    let c: Value = serde_json::from_str(e).unwrap();
                    if let Some(calls) = c["choices"][0]["delta"]["tool_calls"].as_array() {
                        for call in calls {
                            assert_eq!(call["index"], 0);
                            if let Some(n) = call["function"]["name"].as_str() {
                                name.push_str(n);
                                assert!(call["id"].is_string(), "id comes with the name");
                            }
                            if let Some(a) = call["function"]["arguments"].as_str() {
                                arguments.push_str(a);
                            }
                        }
                    }
                    if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                        finish = f.to_string();
                    }
                }
                (name, arguments, finish)
            } else {
                let v = r.json();
                let call = &v["choices"][0]["message"]["tool_calls"][0];
                assert!(call["id"].is_string());
                (
                    call["function"]["name"].as_str().unwrap().to_string(),
                    call["function"]["arguments"].as_str().unwrap().to_string(),
                    v["choices"][0]["finish_reason"]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            };
            assert_eq!(name, "get_weather", "{kind} stream={stream}");
            assert_eq!(
                serde_json::from_str::<Value>(&arguments).unwrap(),
                args,
                "{kind}"
            );
            assert_eq!(finish, "tool_calls", "{kind} stream={stream}");
            // the tool definition and the earlier call/result reached the provider translated
            let sent = mock.requests()[0].body.to_string();
            assert!(sent.contains("get_weather") && sent.contains("Lyon") && sent.contains("18"));
        }
    }
}

#[tokio::test]
async fn retries_429_honouring_retry_after_then_succeeds() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let rl = Behavior::Status {
        status: 429,
        retry_after: Some("0".into()),
    };
    mock.push([rl.clone(), rl]);
    let gw = gateway(
        &[spec("m", "p", ProviderKind::OpenAi, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("m")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(mock.hits(), 3);
    assert_eq!(r.header("x-triage-attempts"), "3");
}

#[tokio::test]
async fn gives_up_after_max_retries_on_500() {
    let mock = MockProvider::start(Format::Anthropic).await;
    mock.set_default(Behavior::Status {
        status: 500,
        retry_after: None,
    });
    let gw = gateway(
        &[spec("m", "p", ProviderKind::Anthropic, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("m")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert_eq!(mock.hits(), 3, "1 attempt + 2 retries");
    assert_eq!(r.header("x-triage-attempts"), "3");
}

#[tokio::test]
async fn a_retry_after_longer_than_allowed_fails_over_at_once() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::Gemini).await;
    a.set_default(Behavior::Status {
        status: 429,
        retry_after: Some("3600".into()),
    });
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
            spec("b", "pb", ProviderKind::Gemini, &b, &[]),
        ],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(a.hits(), 1);
    assert_eq!(r.header("x-triage-provider"), "pb");
}

#[tokio::test]
async fn never_retries_400_401_403_404_but_falls_over() {
    for status in [400u16, 401, 403, 404] {
        let a = MockProvider::start(Format::OpenAi).await;
        let b = MockProvider::start(Format::Anthropic).await;
        a.set_default(Behavior::Status {
            status,
            retry_after: None,
        });
        let gw = gateway(
            &[
                spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
                spec("b", "pb", ProviderKind::Anthropic, &b, &[]),
            ],
            fast_settings(),
        );
        let base = serve_gateway(gw).await;
        let r = post(&base, hello("a")).await;
        assert_eq!(r.status, 200, "{status}");
        assert_eq!(a.hits(), 1, "{status} is not retried");
        assert_eq!(r.header("x-triage-provider"), "pb");
        assert_eq!(r.header("x-triage-model"), "b");
        assert_eq!(r.header("x-triage-attempts"), "2");
    }
}

#[tokio::test]
async fn fails_over_in_configured_order_and_lists_every_failure() {
    let a = MockProvider::start(Format::Anthropic).await;
    let b = MockProvider::start(Format::OpenAi).await;
    let c = MockProvider::start(Format::Gemini).await;
    a.set_default(Behavior::Status {
        status: 503,
        retry_after: None,
    });
    b.set_default(Behavior::Malformed);
    c.set_default(Behavior::Status {
        status: 500,
        retry_after: None,
    });
    let mut settings = fast_settings();
    settings.retry.max_retries = 1;
    let gw = gateway(
        &[
            spec(
                "sonnet",
                "anthropic",
                ProviderKind::Anthropic,
                &a,
                &["gpt", "gem"],
            ),
            spec("gpt", "openai", ProviderKind::OpenAi, &b, &[]),
            spec("gem", "gemini", ProviderKind::Gemini, &c, &[]),
        ],
        settings,
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("sonnet")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    let v = r.json();
    let failures = v["error"]["failures"].as_array().unwrap();
    let order: Vec<&str> = failures
        .iter()
        .map(|f| f["provider"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["anthropic", "openai", "gemini"]);
    let attempts: Vec<u64> = failures
        .iter()
        .map(|f| f["attempts"].as_u64().unwrap())
        .collect();
    assert_eq!(attempts, [2, 1, 2], "malformed JSON is not retried");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("HTTP 503") && msg.contains("malformed") && msg.contains("HTTP 500"));
    assert_eq!(v["error"]["code"], "all_providers_failed");
    assert_eq!(r.header("x-triage-attempts"), "5");
    assert_eq!((a.hits(), b.hits(), c.hits()), (2, 1, 2));
}

#[tokio::test]
async fn a_failing_provider_is_cooled_down_and_skipped() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::OpenAi).await;
    a.set_default(Behavior::Status {
        status: 500,
        retry_after: None,
    });
    let mut settings = fast_settings();
    settings.breaker_threshold = 2;
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
            spec("b", "pb", ProviderKind::OpenAi, &b, &[]),
        ],
        settings,
    );
    let base = serve_gateway(gw.clone()).await;
    let r1 = post(&base, hello("a")).await;
    assert_eq!(r1.status, 200);
    assert_eq!(
        a.hits(),
        2,
        "the breaker opened after two failures, stopping retries"
    );
    assert!(gw.breaker().is_open("pa"));
    let r2 = post(&base, hello("a")).await;
    assert_eq!(r2.status, 200);
    assert_eq!(a.hits(), 2, "a cooling provider is not called");
    assert_eq!(r2.header("x-triage-provider"), "pb");
    assert_eq!(r2.header("x-triage-attempts"), "1");
}

#[tokio::test]
async fn a_stream_without_a_first_token_in_time_fails_over() {
    let a = MockProvider::start(Format::Anthropic).await;
    let b = MockProvider::start(Format::Gemini).await;
    a.set_default(Behavior::Slow(
        Duration::from_secs(20),
        Box::new(Behavior::Text("too late".into())),
    ));
    let mut settings = fast_settings();
    settings.timeouts.first_token = Duration::from_millis(300);
    settings.retry.max_retries = 0;
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::Anthropic, &a, &["b"]),
            spec("b", "pb", ProviderKind::Gemini, &b, &[]),
        ],
        settings,
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, streamed("a")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-triage-provider"), "pb");
    assert!(r.text.contains("Gemini"), "{}", r.text);
    assert!(!r.text.contains("too late"));
}

#[tokio::test]
async fn a_non_streamed_attempt_that_times_out_fails_over() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::OpenAi).await;
    a.set_default(Behavior::Slow(
        Duration::from_secs(20),
        Box::new(Behavior::Text("too late".into())),
    ));
    let mut settings = fast_settings();
    settings.timeouts.attempt = Duration::from_millis(300);
    settings.retry.max_retries = 1;
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
            spec("b", "pb", ProviderKind::OpenAi, &b, &[]),
        ],
        settings,
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("a")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(a.hits(), 2, "timeouts are retried");
    assert_eq!(r.header("x-triage-attempts"), "3");
}

#[tokio::test]
async fn a_stream_cut_after_the_first_token_ends_with_an_error_event() {
    for format in [Format::OpenAi, Format::Anthropic, Format::Gemini] {
        let kind = match format {
            Format::OpenAi => ProviderKind::OpenAi,
            Format::Anthropic => ProviderKind::Anthropic,
            Format::Gemini => ProviderKind::Gemini,
        };
        let a = MockProvider::start(format).await;
        let b = MockProvider::start(Format::OpenAi).await;
        a.set_default(Behavior::CutStream);
        let gw = gateway(
            &[
                spec("a", "pa", kind, &a, &["b"]),
                spec("b", "pb", ProviderKind::OpenAi, &b, &[]),
            ],
            fast_settings(),
        );
        let base = serve_gateway(gw).await;
        let r = post(&base, streamed("a")).await;
        assert_eq!(r.status, 200, "{format:?}");
        assert_eq!(r.header("x-triage-provider"), "pa");
        let events = r.events();
        assert!(r.text.contains("partial"), "{format:?}: {}", r.text);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "stream_interrupted", "{format:?}");
        assert!(!r.text.contains("[DONE]"), "{format:?}: no silent success");
        assert_eq!(b.hits(), 0, "no failover after the first byte");
    }
}

#[tokio::test]
async fn an_event_without_end_mid_stream_ends_with_an_error_event() {
    for (format, kind) in KINDS {
        let a = MockProvider::start(format).await;
        a.set_default(Behavior::OverlongEvent { after_start: true });
        let gw = gateway(&[spec("a", "pa", kind, &a, &[])], fast_settings());
        let base = serve_gateway(gw).await;
        let r = post(&base, streamed("a")).await;
        assert_eq!(r.status, 200, "{format:?}");
        assert!(r.text.contains("partial"), "{format:?}: {}", r.text);
        let events = r.events();
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], "stream_interrupted", "{format:?}");
        // The size cap ended it, not the idle timeout.
        let message = last["error"]["message"].as_str().unwrap();
        assert!(message.contains("exceeded 1048576 bytes"), "{message}");
        assert!(!r.text.contains("[DONE]"), "{format:?}");
    }
}

#[tokio::test]
async fn an_event_without_end_before_the_first_token_fails_over() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::Anthropic).await;
    a.set_default(Behavior::OverlongEvent { after_start: false });
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
            spec("b", "pb", ProviderKind::Anthropic, &b, &[]),
        ],
        fast_settings(),
    );
    let base = serve_gateway(gw.clone()).await;
    let r = post(&base, streamed("a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-triage-provider"), "pb");
    assert!(r.text.ends_with("data: [DONE]\n\n"));
    // With nowhere to fall over to, the client gets the provider error that says why.
    let lone = gateway(
        &[spec("a", "pa", ProviderKind::OpenAi, &a, &[])],
        fast_settings(),
    );
    let r = post(&serve_gateway(lone).await, streamed("a")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    let failure = &r.json()["error"]["failures"][0]["error"];
    assert!(
        failure.as_str().unwrap().contains("exceeded 1048576 bytes"),
        "{failure}"
    );
}

#[tokio::test]
async fn a_stream_broken_before_the_first_token_fails_over() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::Anthropic).await;
    a.set_default(Behavior::Malformed);
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b"]),
            spec("b", "pb", ProviderKind::Anthropic, &b, &[]),
        ],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let r = post(&base, streamed("a")).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-triage-provider"), "pb");
    assert!(r.text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn unsupported_parameters_are_a_clear_400_and_never_sent() {
    let mock = MockProvider::start(Format::Anthropic).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::Anthropic, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let mut body = hello("m");
    body["logit_bias"] = json!({"50256": -100});
    let r = post(&base, body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["param"], "logit_bias");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("logit_bias"));
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn provider_keys_never_appear_in_errors() {
    for (format, kind) in KINDS {
        let mock = MockProvider::start(format).await;
        mock.set_default(Behavior::EchoKey401);
        let gw = gateway(&[spec("m", "p", kind, &mock, &[])], fast_settings());
        let base = serve_gateway(gw.clone()).await;
        let r = post(&base, hello("m")).await;
        assert_eq!(r.status, 502);
        assert!(r.text.contains("Incorrect API key"), "{}", r.text);
        assert!(!r.text.contains("0123456789"), "{kind} leaked: {}", r.text);
        assert!(!format!("{gw:?}").contains("0123456789"));
        // ...but the key did reach the provider
        let h = &mock.requests()[0].headers;
        let sent: Vec<_> = ["authorization", "x-api-key", "x-goog-api-key"]
            .iter()
            .filter_map(|k| h.get(*k))
            .collect();
        assert_eq!(sent.len(), 1, "{kind}");
    }
}

#[tokio::test]
async fn bad_requests_get_openai_shaped_4xx() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::OpenAi, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let client = reqwest::Client::new();
    for body in [
        "",
        "{not json",
        r#"{"model": "m"}"#,
        r#"{"model": "m", "messages": []}"#,
    ] {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].is_string(), "{body}");
        assert_eq!(v["error"]["type"], "invalid_request_error");
    }
    let r = post(&base, hello("no-such-model")).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    let r = post(&base, hello("auto")).await;
    assert_eq!(r.status, 400, "auto without a chooser");
    assert_eq!(mock.hits(), 0);
}

/// Chooses by a marker word in the prompt: a stand-in for classifier + policy.
struct MarkerChooser;

impl TierChooser for MarkerChooser {
    fn choose<'a>(
        &'a self,
        req: &'a triage::gateway::types::ChatRequest,
        mode: &'a str,
    ) -> BoxFuture<'a, Result<TierChoice, String>> {
        async move {
            let prompt = req.prompt_text();
            let tier = ["easy", "medium", "hard"]
                .into_iter()
                .find(|t| prompt.contains(&format!("[{t}]")))
                .unwrap_or("medium");
            let tier = if mode == "aggressive" && tier == "easy" {
                "medium"
            } else {
                tier
            };
            Ok(TierChoice {
                tier: tier.to_string(),
                model: format!("model-{tier}"),
            })
        }
        .boxed()
    }
}

#[tokio::test]
async fn auto_routing_sends_each_tier_to_its_model() {
    let easy = MockProvider::start(Format::Gemini).await;
    let medium = MockProvider::start(Format::OpenAi).await;
    let hard = MockProvider::start(Format::Anthropic).await;
    let gw = gateway(
        &[
            spec("model-easy", "p-easy", ProviderKind::Gemini, &easy, &[]),
            spec(
                "model-medium",
                "p-medium",
                ProviderKind::OpenAi,
                &medium,
                &[],
            ),
            spec("model-hard", "p-hard", ProviderKind::Anthropic, &hard, &[]),
        ],
        fast_settings(),
    );
    let base = serve(ChatState {
        gateway: gw,
        chooser: Some(Arc::new(MarkerChooser)),
        request_log: None,
    })
    .await;
    for (model, prompt, tier, served_by) in [
        ("auto", "[easy] hi", "easy", "Gemini"),
        ("auto:balanced", "[hard] prove it", "hard", "Anthropic"),
        ("auto:aggressive", "[easy] hi", "medium", "OpenAi"),
        ("auto:cost", "no marker", "medium", "OpenAi"),
    ] {
        let r = post(
            &base,
            json!({"model": model, "messages": [{"role": "user", "content": prompt}]}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}: {}", r.text);
        assert_eq!(r.header("x-triage-tier"), tier);
        assert_eq!(r.header("x-triage-model"), format!("model-{tier}"));
        assert_eq!(r.header("x-triage-provider"), format!("p-{tier}"));
        assert_eq!(
            r.json()["choices"][0]["message"]["content"],
            format!("Hello from {served_by}")
        );
    }
    let r = post(
        &base,
        json!({"model": "auto:fastest", "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status, 400);
}

#[test]
fn config_builds_explicit_chains_and_same_tier_implicit_fallbacks() {
    let cfg = triage::config::Config::from_toml(
        r#"
[providers.anthropic]
kind = "anthropic"
api_key = "env:TRIAGE_TEST_UNSET_KEY_FOR_GATEWAY"

[providers.openai]
kind = "openai"

[providers.local]
kind = "openai-compatible"
base_url = "http://127.0.0.1:9/v1"

[models."fast"]
provider = "local"
upstream_name = "llama3.1:8b"
fallbacks = ["gpt-4o"]

[models."gpt-4o"]
provider = "openai"
"#,
        "test",
    )
    .unwrap();
    let policy = cfg.tier_policy().unwrap();
    let gw = triage::gateway::from_config::build(&cfg, &policy).unwrap();
    let chain: Vec<(String, String)> = gw
        .chain("fast")
        .unwrap()
        .into_iter()
        .map(|t| (t.model, t.upstream))
        .collect();
    assert_eq!(
        chain,
        [
            ("fast".to_string(), "llama3.1:8b".to_string()),
            ("gpt-4o".to_string(), "gpt-4o".to_string())
        ]
    );
    // the anthropic medium model is routed implicitly and falls over to openai's medium one
    let anthropic = policy.table("anthropic").unwrap();
    let openai = policy.table("openai").unwrap();
    let chain = gw.chain(&anthropic.medium).unwrap();
    assert_eq!(chain[0].provider, "anthropic");
    assert_eq!(chain[1].model, openai.medium);
    assert!(!format!("{gw:?}").contains("sk-"));
}

#[tokio::test]
async fn a_provider_whose_key_variable_is_unset_fails_without_a_request() {
    let mock = MockProvider::start(Format::Anthropic).await;
    let cfg = triage::config::Config::from_toml(
        &format!(
            "[providers.anthropic]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key = \"env:TRIAGE_TEST_UNSET_KEY_FOR_GATEWAY\"\n\n[models.m]\nprovider = \"anthropic\"\n",
            mock.base_url()
        ),
        "test",
    )
    .unwrap();
    let policy = cfg.tier_policy().unwrap();
    let gw = Arc::new(triage::gateway::from_config::build(&cfg, &policy).unwrap());
    let base = serve_gateway(gw).await;
    let r = post(&base, hello("m")).await;
    assert_eq!(r.status, 502, "{}", r.text);
    assert!(
        r.text.contains("TRIAGE_TEST_UNSET_KEY_FOR_GATEWAY"),
        "{}",
        r.text
    );
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn an_unsupported_parameter_is_a_400_not_a_silent_failover() {
    let a = MockProvider::start(Format::Anthropic).await;
    let b = MockProvider::start(Format::OpenAi).await;
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::Anthropic, &a, &["b"]),
            spec("b", "pb", ProviderKind::OpenAi, &b, &[]),
        ],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let mut body = hello("a");
    body["logit_bias"] = json!({"50256": -100});
    let r = post(&base, body).await;
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.json()["error"]["param"], "logit_bias");
    assert_eq!(r.json()["error"]["code"], "unsupported_parameter");
    assert_eq!(r.header("x-triage-model"), "a");
    assert_eq!(r.header("x-triage-attempts"), "0", "nothing was sent");
    assert_eq!((a.hits(), b.hits()), (0, 0));
}

#[tokio::test]
async fn a_fallback_that_cannot_carry_a_parameter_is_skipped() {
    let a = MockProvider::start(Format::OpenAi).await;
    let b = MockProvider::start(Format::Anthropic).await;
    let c = MockProvider::start(Format::OpenAi).await;
    a.set_default(Behavior::Status {
        status: 503,
        retry_after: None,
    });
    let gw = gateway(
        &[
            spec("a", "pa", ProviderKind::OpenAi, &a, &["b", "c"]),
            spec("b", "pb", ProviderKind::Anthropic, &b, &[]),
            spec("c", "pc", ProviderKind::OpenAi, &c, &[]),
        ],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let mut body = hello("a");
    body["logit_bias"] = json!({"50256": -100});
    let r = post(&base, body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("x-triage-model"), "c");
    assert_eq!(
        r.header("x-triage-attempts"),
        "4",
        "3 at a, none at b, 1 at c"
    );
    assert_eq!(b.hits(), 0);
}

#[tokio::test]
async fn a_body_over_the_limit_is_a_413_in_openais_shape() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::OpenAi, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    let mut body = hello("m");
    body["messages"][1]["content"] = json!("a".repeat(handler::MAX_BODY_BYTES + 1));
    let r = post(&base, body).await;
    assert_eq!(r.status, 413, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["code"], "request_too_large");
    assert_eq!(mock.hits(), 0);
}

#[tokio::test]
async fn a_failed_request_still_says_which_model_and_provider_it_tried() {
    let mock = MockProvider::start(Format::OpenAi).await;
    mock.set_default(Behavior::Status {
        status: 500,
        retry_after: None,
    });
    let gw = gateway(
        &[spec("m", "p", ProviderKind::OpenAi, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    for body in [hello("m"), streamed("m")] {
        let r = post(&base, body).await;
        assert_eq!(r.status, 502, "{}", r.text);
        assert_eq!(r.header("x-triage-tier"), "none");
        assert_eq!(r.header("x-triage-model"), "m");
        assert_eq!(r.header("x-triage-provider"), "p");
        assert_eq!(r.header("x-triage-attempts"), "3");
        let overhead: f64 = r.header("x-triage-overhead-ms").parse().unwrap();
        assert!(overhead >= 0.0);
    }
}

/// Always picks a model no provider serves, as `auto` does with a tier table whose family
/// has no provider configured.
struct UnservedChooser;

impl TierChooser for UnservedChooser {
    fn choose<'a>(
        &'a self,
        _: &'a triage::gateway::types::ChatRequest,
        _: &'a str,
    ) -> BoxFuture<'a, Result<TierChoice, String>> {
        async move {
            Ok(TierChoice {
                tier: "hard".into(),
                model: "unserved-model".into(),
            })
        }
        .boxed()
    }
}

#[tokio::test]
async fn auto_choosing_a_model_no_provider_serves_is_a_503_naming_it() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::OpenAi, &mock, &[])],
        fast_settings(),
    );
    let base = serve(ChatState {
        gateway: gw,
        chooser: Some(Arc::new(UnservedChooser)),
        request_log: None,
    })
    .await;
    let r = post(&base, hello("auto")).await;
    assert_eq!(r.status, 503, "{}", r.text);
    let v = r.json();
    assert_eq!(v["error"]["code"], "model_not_routable");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("unserved-model"));
    assert_eq!(r.header("x-triage-tier"), "hard");
    assert_eq!(r.header("x-triage-model"), "unserved-model");
    // A name the client gave is still the client's mistake.
    let r = post(&base, hello("no-such-model")).await;
    assert_eq!(r.status, 404);
}

#[tokio::test]
async fn a_message_without_content_is_a_400_before_any_provider_is_asked() {
    let mock = MockProvider::start(Format::Anthropic).await;
    let gw = gateway(
        &[spec("m", "p", ProviderKind::Anthropic, &mock, &[])],
        fast_settings(),
    );
    let base = serve_gateway(gw).await;
    for messages in [
        json!([{"role": "user"}]),
        json!([{"role": "user", "content": "hi"}, {"role": "assistant"}]),
        json!([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"}]),
    ] {
        let r = post(&base, json!({"model": "m", "messages": messages})).await;
        assert_eq!(r.status, 400, "{messages}: {}", r.text);
        let v = r.json();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "messages");
    }
    assert_eq!(mock.hits(), 0);
}
