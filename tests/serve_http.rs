//! `triage serve` over real HTTP on loopback port 0: every endpoint's wire format, bad input,
//! auth, batching, the full queue, failing open and graceful shutdown.
//!
//! The shipped model may be untrained, so these tests pin down behaviour and format, never
//! which tier a prompt gets.

mod serve_support;

use std::sync::Arc;

use serde_json::{json, Value};
use serve_support::{
    metric, shipped_classifier, test_config, wait_for, GatedClassifier, TestServer,
};
use triage::classifier::Tier;
use triage::config::Secret;
use triage::policy::{Mode, TierPolicy};

const TIERS: [&str; 4] = ["easy", "medium", "hard", "needs_info"];

fn tier_of(v: &Value) -> Tier {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("tier is not a string: {v}"));
    s.parse().unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts `p` holds the four tier probabilities, each in [0, 1], summing to 1.
fn assert_probabilities(p: &Value) {
    let mut sum = 0.0;
    for tier in TIERS {
        let v = p[tier]
            .as_f64()
            .unwrap_or_else(|| panic!("probabilities.{tier} missing in {p}"));
        assert!((0.0..=1.0).contains(&v), "{tier} = {v}");
        sum += v;
    }
    assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}: {p}");
    assert_eq!(p.as_object().map(|o| o.len()), Some(4), "{p}");
}

#[tokio::test]
async fn select_model_answers_the_documented_fields() {
    let server = TestServer::start(test_config()).await;
    let r = server
        .post(
            "/v1/select-model",
            &json!({"input": "What is the capital of France?"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.json;
    let tier = tier_of(&b["tier"]);
    assert_probabilities(&b["probabilities"]);
    let confidence = b["confidence"].as_f64().expect("confidence");
    assert!((0.0..=1.0).contains(&confidence));
    assert_eq!(b["mode"], "balanced");
    assert_eq!(b["provider"], "anthropic");
    assert_eq!(b["fail_open"], false);
    assert!(b["reason"].is_null());
    assert!(b["classifier_ms"].as_f64().expect("classifier_ms") >= 0.0);
    // The model is the policy's choice for the tier and probabilities returned.
    let probabilities = serde_json::from_value(b["probabilities"].clone()).unwrap();
    let expected = TierPolicy::default()
        .choose(Some(tier), Some(&probabilities), Mode::Balanced, None, None)
        .unwrap();
    assert_eq!(b["model"], expected.model.as_str());
}

#[tokio::test]
async fn select_model_takes_messages_modes_providers_and_allowed_models() {
    let server = TestServer::start(test_config()).await;
    let openai = ["gpt-5-nano", "gpt-5-mini", "gpt-5"];
    for mode in ["balanced", "aggressive", "cost"] {
        let r = server
            .post(
                "/v1/select-model",
                &json!({
                    "messages": [
                        {"role": "system", "content": "You are terse."},
                        {"role": "user", "content": [{"type": "text", "text": "Prove that sqrt(2) is irrational."}]}
                    ],
                    "mode": mode,
                    "provider": "openai",
                }),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["mode"], mode);
        assert_eq!(r.json["family"], "openai");
        let model = r.json["model"].as_str().unwrap();
        assert!(openai.contains(&model), "{model} is not an openai model");
    }
    let r = server
        .post(
            "/v1/select-model",
            &json!({"input": "hello", "allowed_models": ["gemini-2.5-pro"], "provider": null}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["model"], "gemini-2.5-pro");
    assert_eq!(r.json["provider"], "gemini");
}

#[tokio::test]
async fn morph_router_endpoints_speak_morphs_wire_format() {
    let mut config = test_config();
    config.server.api_keys = vec![Secret::Value("morph-key".into())];
    let server = TestServer::start(config).await;
    let policy = TierPolicy::default();
    for family in ["anthropic", "openai", "gemini"] {
        let response = server
            .client
            .post(server.url(&format!("/v1/router/{family}")))
            .bearer_auth("morph-key")
            .header("X-Morph-SDK-Version", "0.2.0")
            .json(&json!({"input": "Write a haiku about rust", "mode": "aggressive"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let model = body["model"].as_str().expect("model");
        let ladder = policy.table(family).unwrap().models();
        assert!(ladder.contains(&model), "{model} not a {family} model");
    }
    // Mode is optional.
    let response = server
        .client
        .post(server.url("/v1/router/anthropic"))
        .bearer_auth("morph-key")
        .json(&json!({"input": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let raw: Value = server
        .client
        .post(server.url("/v1/router/raw"))
        .bearer_auth("morph-key")
        .json(&json!({"input": "Summarise the attached file."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    tier_of(&raw["difficulty"]);
    assert_eq!(raw.as_object().unwrap().len(), 1, "{raw}");

    let classified: Value = server
        .client
        .post(server.url("/v1/router/classify"))
        .bearer_auth("morph-key")
        .json(&json!({"input": "Design a distributed rate limiter."}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let d = &classified["classifications"]["difficulty"];
    let class_id = d["class_id"].as_u64().expect("class_id") as usize;
    assert!(class_id < 4);
    assert_eq!(d["label"], TIERS[class_id]);
    let confidence = d["confidence"].as_f64().expect("confidence");
    assert!((0.0..=1.0).contains(&confidence));
    assert!(d["meets_threshold"].is_boolean());
}

#[tokio::test]
async fn health_models_and_metrics() {
    let server = TestServer::start(test_config()).await;
    let health = server.get("/health").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json["status"], "online");

    let models = server.get("/v1/models").await;
    assert_eq!(models.status, 200);
    assert_eq!(models.json["object"], "list");
    let ids: Vec<&str> = models.json["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    for id in [
        "auto",
        "auto:cost",
        "claude-haiku-4-5",
        "gpt-5",
        "gemini-2.5-pro",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }

    for _ in 0..3 {
        let r = server
            .post("/v1/select-model", &json!({"input": "5 miles in km?"}))
            .await;
        assert_eq!(r.status, 200);
    }
    let r = server.post_raw("/v1/select-model", "{").await;
    assert_eq!(r.status, 400);

    let response = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let requests = |status: &str| {
        metric(
            &text,
            &format!(
                "triage_http_requests_total{{endpoint=\"/v1/select-model\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests("200"), Some(3.0), "{text}");
    assert_eq!(requests("400"), Some(1.0), "{text}");
    let tiers: f64 = TIERS
        .iter()
        .map(|t| metric(&text, &format!("triage_tier_total{{tier=\"{t}\"}}")).unwrap())
        .sum();
    assert_eq!(tiers, 3.0, "{text}");
    assert_eq!(
        metric(&text, "triage_classification_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "triage_batch_size_sum"),
        Some(3.0),
        "every prompt went through a batch: {text}"
    );
    assert_eq!(metric(&text, "triage_queue_depth"), Some(0.0));
    assert!(text.contains("# TYPE triage_classification_duration_seconds histogram"));
    assert!(text.contains("triage_classification_duration_seconds_bucket{le=\"+Inf\"} 3"));
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_in_openais_shape() {
    let server = TestServer::start(test_config()).await;
    let big = json!({"input": "a".repeat(2 * 1024 * 1024)}).to_string();
    let cases: Vec<(&str, String, u16, Option<&str>, &str)> = vec![
        ("/v1/select-model", String::new(), 400, None, "empty_body"),
        (
            "/v1/select-model",
            "{\"input\": ".into(),
            400,
            None,
            "invalid_json",
        ),
        (
            "/v1/select-model",
            "[1, 2]".into(),
            400,
            None,
            "invalid_body",
        ),
        (
            "/v1/select-model",
            "\"hello\"".into(),
            400,
            None,
            "invalid_body",
        ),
        (
            "/v1/select-model",
            "{}".into(),
            400,
            Some("input"),
            "missing_input",
        ),
        (
            "/v1/select-model",
            r#"{"input": 5}"#.into(),
            400,
            Some("input"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": null}"#.into(),
            400,
            Some("input"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": ""}"#.into(),
            400,
            Some("input"),
            "empty_input",
        ),
        (
            "/v1/select-model",
            r#"{"input": " \n "}"#.into(),
            400,
            Some("input"),
            "empty_input",
        ),
        (
            "/v1/select-model",
            r#"{"messages": "hi"}"#.into(),
            400,
            Some("messages"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"messages": []}"#.into(),
            400,
            Some("input"),
            "empty_input",
        ),
        (
            "/v1/select-model",
            r#"{"messages": [{"content": "x"}]}"#.into(),
            400,
            Some("messages"),
            "invalid_message",
        ),
        (
            "/v1/select-model",
            r#"{"messages": [{"role": "user", "content": 7}]}"#.into(),
            400,
            Some("messages"),
            "invalid_message",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "mode": "fast"}"#.into(),
            400,
            Some("mode"),
            "invalid_mode",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "mode": 3}"#.into(),
            400,
            Some("mode"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "provider": "mistral"}"#.into(),
            400,
            Some("provider"),
            "unknown_provider",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "provider": ["openai"]}"#.into(),
            400,
            Some("provider"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "allowed_models": "gpt-5"}"#.into(),
            400,
            Some("allowed_models"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "allowed_models": [1]}"#.into(),
            400,
            Some("allowed_models"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "allowed_models": []}"#.into(),
            400,
            Some("allowed_models"),
            "invalid_value",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "allowed_models": ["no-such-model"]}"#.into(),
            400,
            Some("allowed_models"),
            "no_allowed_model",
        ),
        (
            "/v1/select-model",
            r#"{"input": "hi", "deadline_ms": -5}"#.into(),
            400,
            Some("deadline_ms"),
            "invalid_type",
        ),
        (
            "/v1/select-model",
            big.clone(),
            413,
            None,
            "request_too_large",
        ),
        (
            "/v1/router/openai",
            r#"{"input": "hi", "mode": "turbo"}"#.into(),
            400,
            Some("mode"),
            "invalid_mode",
        ),
        (
            "/v1/router/openai",
            r#"{"input": 1}"#.into(),
            400,
            Some("input"),
            "invalid_type",
        ),
        (
            "/v1/router/mistral",
            r#"{"input": "hi"}"#.into(),
            404,
            Some("provider"),
            "unknown_provider",
        ),
        (
            "/v1/router/mistral",
            "not json".into(),
            404,
            Some("provider"),
            "unknown_provider",
        ),
        (
            "/v1/router/raw",
            "{}".into(),
            400,
            Some("input"),
            "missing_input",
        ),
        (
            "/v1/router/raw",
            big.clone(),
            413,
            None,
            "request_too_large",
        ),
        (
            "/v1/router/classify",
            r#"{"input": ""}"#.into(),
            400,
            Some("input"),
            "empty_input",
        ),
        (
            "/v1/router/classify",
            "nope".into(),
            400,
            None,
            "invalid_json",
        ),
    ];
    for (path, body, status, param, code) in cases {
        let shown: String = body.chars().take(60).collect();
        let r = server.post_raw(path, body).await;
        assert_eq!(r.status, status, "{path} {shown}: {}", r.text);
        let (kind, got_param, got_code) = r.openai_error();
        assert_eq!(kind, "invalid_request_error", "{path} {shown}");
        assert_eq!(got_param.as_deref(), param, "{path} {shown}: {}", r.text);
        assert_eq!(got_code, code, "{path} {shown}: {}", r.text);
    }

    let r = server.get("/v1/select-model").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.openai_error().2, "method_not_allowed");
    let r = server.get("/no/such/path").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.openai_error().2, "not_found");

    // Still serving.
    let r = server
        .post("/v1/select-model", &json!({"input": "hi"}))
        .await;
    assert_eq!(r.status, 200);
    let text = server.metrics().await;
    assert!(!text.contains("status=\"500\""), "{text}");
}

#[tokio::test]
async fn api_keys_are_required_when_configured() {
    std::env::set_var("TRIAGE_SERVE_TEST_KEY", "from-env");
    let mut config = test_config();
    config.server.api_keys = vec![
        Secret::Value("k1".into()),
        Secret::Env("TRIAGE_SERVE_TEST_KEY".into()),
    ];
    let server = TestServer::start(config).await;
    let body = json!({"input": "hi"});
    let url = server.url("/v1/select-model");

    let r = server.post("/v1/select-model", &body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let (kind, _, code) = r.openai_error();
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("authentication_error", "invalid_api_key")
    );

    for (name, value, expected) in [
        ("authorization", "Bearer wrong", 401),
        ("authorization", "Basic azE=", 401),
        ("authorization", "Bearer k1", 200),
        ("authorization", "bearer from-env", 200),
        ("x-api-key", "k1", 200),
        ("x-api-key", "k", 401),
    ] {
        let response = server
            .client
            .post(&url)
            .header(name, value)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), expected, "{name}: {value}");
    }
    // The key is checked before the body: a bad body without a key is 401, not 400.
    let r = server.post_raw("/v1/router/raw", "garbage").await;
    assert_eq!(r.status, 401);
    // Health and metrics stay open for probes and scrapers.
    assert_eq!(server.get("/health").await.status, 200);
    assert_eq!(server.get("/metrics").await.status, 200);
    assert_eq!(server.get("/v1/models").await.status, 401);
}

#[tokio::test]
async fn concurrent_requests_are_classified_in_one_batch() {
    let gate = GatedClassifier::closed(shipped_classifier());
    let server = Arc::new(TestServer::start_with(test_config(), gate.clone()).await);
    // The first request reaches the model and is held there...
    let first = {
        let s = server.clone();
        tokio::spawn(async move { s.post("/v1/select-model", &json!({"input": "first"})).await })
    };
    wait_for("the first batch to reach the model", || async {
        gate.entered() == 1
    })
    .await;
    // ...while six more queue up behind it.
    let mut rest = Vec::new();
    for i in 0..6 {
        let s = server.clone();
        rest.push(tokio::spawn(async move {
            s.post(
                "/v1/router/raw",
                &json!({"input": format!("prompt number {i}")}),
            )
            .await
        }));
    }
    wait_for("six queued requests", || async {
        metric(&server.metrics().await, "triage_queue_depth") == Some(6.0)
    })
    .await;
    gate.open();
    assert_eq!(first.await.unwrap().status, 200);
    for r in rest {
        let r = r.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        tier_of(&r.json["difficulty"]);
    }
    let text = server.metrics().await;
    assert_eq!(metric(&text, "triage_batch_size_sum"), Some(7.0), "{text}");
    assert_eq!(
        metric(&text, "triage_batch_size_count"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "triage_batch_size_bucket{le=\"4\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "triage_batch_size_bucket{le=\"8\"}"),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test]
async fn many_concurrent_clients_each_get_their_own_answer() {
    let server = Arc::new(TestServer::start(test_config()).await);
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = server.clone();
        tasks.push(tokio::spawn(async move {
            let r = s
                .post(
                    "/v1/select-model",
                    &json!({"input": format!("What is {i} times 17?")}),
                )
                .await;
            (i, r)
        }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text);
        assert_probabilities(&r.json["probabilities"]);
    }
    let text = server.metrics().await;
    assert_eq!(metric(&text, "triage_batch_size_sum"), Some(24.0), "{text}");
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_at_once() {
    let gate = GatedClassifier::closed(shipped_classifier());
    let mut config = test_config();
    config.server.queue_capacity = 2;
    config.server.max_batch = 1;
    config.server.retry_after_secs = 3;
    let server = Arc::new(TestServer::start_with(config, gate.clone()).await);
    let spawn = |text: &'static str| {
        let s = server.clone();
        tokio::spawn(async move { s.post("/v1/select-model", &json!({"input": text})).await })
    };
    let held = spawn("held in the model");
    wait_for("the first batch to reach the model", || async {
        gate.entered() == 1
    })
    .await;
    let queued = [spawn("queued one"), spawn("queued two")];
    wait_for("a full queue", || async {
        metric(&server.metrics().await, "triage_queue_depth") == Some(2.0)
    })
    .await;

    let r = server
        .post("/v1/select-model", &json!({"input": "one too many"}))
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("3"));
    let (kind, _, code) = r.openai_error();
    assert_eq!(
        (kind.as_str(), code.as_str()),
        ("rate_limit_error", "queue_full")
    );
    let r = server
        .post("/v1/router/raw", &json!({"input": "also too many"}))
        .await;
    assert_eq!(r.status, 429);

    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
    for q in queued {
        assert_eq!(q.await.unwrap().status, 200);
    }
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "triage_queue_rejections_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "triage_http_requests_total{endpoint=\"/v1/select-model\",status=\"429\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_queue_too_far_behind_refuses_at_once_and_admitted_requests_are_answered() {
    let gate = GatedClassifier::closed(shipped_classifier());
    let mut config = test_config();
    config.server.max_batch = 1;
    config.server.max_queue_wait_ms = 20;
    let server = Arc::new(TestServer::start_with(config, gate.clone()).await);
    let spawn = |text: &'static str| {
        let s = server.clone();
        tokio::spawn(async move { s.post("/v1/select-model", &json!({"input": text})).await })
    };
    // One slow batch teaches the worker that a prompt costs far more than 20 ms.
    let slow = spawn("slow one");
    wait_for("the first batch", || async { gate.entered() == 1 }).await;
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    gate.open();
    assert_eq!(slow.await.unwrap().status, 200);

    gate.close();
    let held = spawn("held in the model");
    wait_for("the second batch", || async { gate.entered() == 2 }).await;
    // An empty queue admits one more, whatever the cost...
    let queued = spawn("queued behind it");
    wait_for("one queued request", || async {
        metric(&server.metrics().await, "triage_queue_depth") == Some(1.0)
    })
    .await;
    // ...but behind it the expected wait is ~80 ms: refused at once.
    // (Were it queued, it would wait for the gate, which opens only below.)
    let r = server
        .post("/v1/select-model", &json!({"input": "one too many"}))
        .await;
    assert_eq!(r.status, 429, "{}", r.text);
    assert!(r.text.contains("overloaded"), "{}", r.text);
    assert_eq!(r.header("retry-after"), Some("1"));

    gate.open();
    assert_eq!(held.await.unwrap().status, 200);
    assert_eq!(queued.await.unwrap().status, 200);
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "triage_queue_rejections_total"),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn select_model_fails_open_to_the_default_model_past_its_deadline() {
    let gate = GatedClassifier::closed(shipped_classifier());
    let mut config = test_config();
    config.server.deadline_ms = 50;
    config.server.classify_timeout_ms = 50;
    let server = TestServer::start_with(config, gate.clone()).await;

    let r = server
        .post("/v1/select-model", &json!({"input": "slow"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let b = &r.json;
    assert!(b["tier"].is_null(), "{b}");
    assert!(b["probabilities"].is_null());
    assert!(b["confidence"].is_null());
    assert_eq!(b["model"], "claude-sonnet-4-5");
    assert_eq!(b["fail_open"], true);
    assert_eq!(b["fail_open_reason"], "deadline");
    assert!(b["reason"].as_str().unwrap().contains("50 ms"), "{b}");

    // A per-request deadline and a family.
    let r = server
        .post(
            "/v1/router/gemini",
            &json!({"input": "slow too", "deadline_ms": 10}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json["model"], "gemini-2.5-flash");
    assert!(r.json["tier"].is_null());

    // The Morph raw endpoint has no model to fall back on: 503 with retry-after.
    let r = server
        .post("/v1/router/raw", &json!({"input": "slow"}))
        .await;
    assert_eq!(r.status, 503, "{}", r.text);
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.openai_error().0, "server_error");

    gate.open();
    let text = server.metrics().await;
    assert_eq!(
        metric(&text, "triage_fail_open_total{reason=\"deadline\"}"),
        Some(2.0),
        "{text}"
    );
    // After the gate opens, the service classifies again.
    let r = server
        .post(
            "/v1/select-model",
            &json!({"input": "fast now", "deadline_ms": 0}),
        )
        .await;
    assert_eq!(r.status, 200);
    tier_of(&r.json["tier"]);
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let gate = GatedClassifier::closed(shipped_classifier());
    let mut server = TestServer::start_with(test_config(), gate.clone()).await;
    let request = server
        .client
        .post(server.url("/v1/select-model"))
        .json(&json!({"input": "in flight during shutdown"}))
        .send();
    let in_flight = tokio::spawn(request);
    wait_for("the request to reach the model", || async {
        gate.entered() == 1
    })
    .await;
    let stopping = {
        let shutdown = server.shutdown();
        tokio::pin!(shutdown);
        // Let the shutdown start while the request is still held in the model.
        tokio::select! {
            _ = &mut shutdown => panic!("the server stopped with a request in flight"),
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        gate.open();
        shutdown.await
    };
    stopping.expect("clean shutdown");
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request got an answer");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    tier_of(&body["tier"]);
}

#[tokio::test]
async fn the_router_answers_in_process_without_a_socket() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let state =
        triage::server::AppState::new(test_config(), shipped_classifier(), "test-model").unwrap();
    let response = triage::server::app(state)
        .oneshot(
            Request::post("/v1/router/raw")
                .body(Body::from(r#"{"input": "17 * 23?"}"#))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn extra_routes_get_the_same_auth_and_metrics() {
    use axum::routing::get;

    let mut config = test_config();
    config.server.api_keys = vec![Secret::Value("k".into())];
    let state = triage::server::AppState::new(config, shipped_classifier(), "test-model").unwrap();
    let extra = axum::Router::new().route("/v1/extra", get(|| async { "extra" }));
    let router = triage::server::app_with(state.clone(), extra);
    let listener = triage::server::bind(([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(triage::server::serve_router(
        listener,
        router,
        std::time::Duration::from_secs(5),
        async move {
            let _ = rx.await;
        },
    ));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/extra");
    assert_eq!(client.get(&url).send().await.unwrap().status(), 401);
    let ok = client.get(&url).bearer_auth("k").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "extra");
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(
            &text,
            "triage_http_requests_total{endpoint=\"/v1/extra\",status=\"200\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let _ = tx.send(());
    server.await.unwrap().unwrap();
}

/// Runs `triage serve` with `args`, no inherited `TRIAGE_*` variables, and `env`.
fn run_serve(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_triage"));
    command.arg("serve").args(args);
    for (name, _) in std::env::vars() {
        if name.starts_with("TRIAGE_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command.output().expect("run triage")
}

#[test]
fn serve_rejects_unknown_config_keys_and_variables_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[server]\nlisten_adress = \"127.0.0.1:9\"\n").unwrap();
    let out = run_serve(&["--check", "--config", bad.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("listen_adress"), "{stderr}");
    assert!(stderr.contains("bad.toml"), "{stderr}");

    let out = run_serve(&["--check"], &[("TRIAGE_LISTN", "127.0.0.1:9")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("TRIAGE_LISTN"), "{stderr}");

    let out = run_serve(&["--check"], &[("TRIAGE_MAX_BATCH", "lots")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("TRIAGE_MAX_BATCH"));
}

#[test]
fn serve_layers_file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("triage.toml");
    std::fs::write(
        &file,
        "[policy]\ndefault_family = \"openai\"\n\n[tiers.local]\neasy = \"small\"\nmedium = \"mid\"\nhard = \"big\"\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let out = run_serve(&["--check", "--config", path], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("default family: openai"), "{stdout}");
    assert!(
        stdout.contains("local: easy=small medium=mid hard=big"),
        "{stdout}"
    );
    // The environment overrides the file...
    let out = run_serve(
        &["--check", "--config", path],
        &[("TRIAGE_DEFAULT_FAMILY", "local")],
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("default family: local"));
    // ...and TRIAGE_CONFIG names the file when --config does not.
    let out = run_serve(&["--check"], &[("TRIAGE_CONFIG", path)]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("default family: openai"));
    // A flag overrides both, and is checked.
    let out = run_serve(
        &["--check", "--config", path, "--max-batch", "0"],
        &[("TRIAGE_MAX_BATCH", "8")],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.max_batch"));
}
