//! The request log end to end: the whole server (select-model and the gateway, in front of a
//! mock OpenAI provider on loopback) writes `server.request_log`; after a graceful shutdown the
//! real `triage batch --format triage-log` reads it back.
//!
//! The shipped model may be replaced while tests run: these tests pin down lines, fields,
//! usage and counts, never which tier a prompt gets.

mod gateway_support;
mod serve_support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateway_support::{Format, MockProvider};
use serde_json::{json, Value};
use serve_support::{shipped_classifier, test_config};
use triage::config::{Config, Secret};
use triage::server::{self, AppState};

const PROVIDER_KEY: &str = "sk-mock-provider-secret-0123456789";
const CLIENT_KEY: &str = "client-key-9876543210";

/// The test configuration: the built-in `openai` tier table served by the mock, plus an
/// explicit `gpt-4o`, a bearer key, and the log at `log`.
fn config(mock: &MockProvider, log: &Path) -> Config {
    let text = format!(
        r#"
[policy]
default_family = "openai"

[providers.openai]
kind = "openai"
base_url = "{}"

[models."gpt-4o"]
provider = "openai"
"#,
        mock.base_url()
    );
    let file = Config::from_toml(&text, "test.toml").unwrap();
    let mut config = test_config();
    config.policy = file.policy;
    config.providers = file.providers;
    config.models = file.models;
    config.providers["openai"].api_key = Some(Secret::Value(PROVIDER_KEY.into()));
    config.server.api_keys = vec![Secret::Value(CLIENT_KEY.into())];
    config.server.request_log = Some(log.to_path_buf());
    config
}

struct Running {
    base: String,
    state: AppState,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), server::ServerError>>,
}

/// The server as `triage serve` runs it: native routes plus the gateway.
async fn start(config: Config) -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let state = AppState::new(config, shipped_classifier(), "test-model").unwrap();
    let chat = triage::gateway::serve::api_routes(&state).unwrap();
    let router = server::app_with(state.clone(), chat);
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve_router(
        listener,
        router,
        Duration::from_secs(10),
        async move {
            let _ = stopped.await;
        },
    ));
    Running {
        base: format!("http://{addr}"),
        state,
        stop,
        server,
    }
}

impl Running {
    /// Graceful shutdown, as `triage serve` does it: stop serving, then flush the log.
    async fn shutdown(self) -> AppState {
        let _ = self.stop.send(());
        self.server.await.unwrap().unwrap();
        self.state.finish().await;
        self.state
    }
}

struct Reply {
    status: u16,
    model: Option<String>,
    text: String,
}

async fn post(base: &str, path: &str, body: Value) -> Reply {
    let resp = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(CLIENT_KEY)
        .json(&body)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let model = resp
        .headers()
        .get("x-triage-model")
        .map(|v| v.to_str().unwrap().to_string());
    let text = resp.text().await.unwrap();
    Reply {
        status,
        model,
        text,
    }
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": prompt}]})
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_writes_a_log_that_triage_batch_reads() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let running = start(config(&mock, &log)).await;
    let base = running.base.clone();

    // Five chat completions: auto, auto:cost, a named model, and two streams (one without a
    // usage chunk for the client: the log still gets the provider's usage).
    let mut chat_models = Vec::new();
    for body in [
        chat("auto", "What is 2 + 2?"),
        chat("auto:cost", "Prove that there are infinitely many primes."),
        chat("gpt-4o", "Say hello"),
    ] {
        let r = post(&base, "/v1/chat/completions", body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        chat_models.push(r.model.unwrap());
    }
    for include_usage in [true, false] {
        let mut body = chat("auto", "Write a haiku about rain");
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": include_usage});
        let r = post(&base, "/v1/chat/completions", body).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.ends_with("data: [DONE]\n\n"), "{}", r.text);
        chat_models.push(r.model.unwrap());
    }
    // Two selections, and requests that are not answered (so not logged).
    let r = post(
        &base,
        "/v1/select-model",
        json!({"input": "Summarise this paragraph"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let selected: Value = serde_json::from_str(&r.text).unwrap();
    let r = post(
        &base,
        "/v1/router/openai",
        json!({"input": [{"role": "user", "content": "Translate 'hi' to French"}]}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let bad = post(&base, "/v1/chat/completions", json!({"model": "auto"})).await;
    assert_eq!(bad.status, 400);
    let bad = post(&base, "/v1/select-model", json!({"mode": "cost"})).await;
    assert_eq!(bad.status, 400);

    let state = running.shutdown().await;
    let written = lines(&log);
    assert_eq!(written.len(), 7, "{written:#?}");
    assert_eq!(state.metrics.request_log.written(), 7);
    assert_eq!(state.metrics.request_log.dropped(), 0);

    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(PROVIDER_KEY), "the provider key leaked");
    assert!(!text.contains(CLIENT_KEY), "the client key leaked");
    let ids: HashSet<&str> = written
        .iter()
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 7, "request ids are unique");
    for line in &written {
        assert_eq!(line["triage_log"], 1, "{line}");
        let ts = line["ts"].as_str().unwrap();
        assert!(ts.len() == 24 && ts.ends_with('Z'), "{ts}");
    }
    let (chats, selections) = written.split_at(5);
    for (line, model) in chats.iter().zip(&chat_models) {
        assert_eq!(line["endpoint"], "chat.completions", "{line}");
        assert_eq!(&line["model"], model, "{line}");
        assert_eq!(line["provider"], "openai");
        assert_eq!(line["outcome"], "ok");
        assert_eq!(
            line["usage"],
            json!({"input_tokens": 11, "output_tokens": 7}),
            "{line}"
        );
        assert_eq!(
            line["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
    }
    assert_eq!(chats[2]["tier"], Value::Null, "a named model has no tier");
    assert_eq!(chats[2]["requested_model"], "gpt-4o");
    assert!(chats[0]["tier"].is_string());
    assert_eq!(chats[3]["stream"], true);
    assert_eq!(chats[4]["stream"], true);
    assert_eq!(selections[0]["endpoint"], "select-model");
    assert_eq!(selections[0]["model"], selected["model"]);
    assert_eq!(selections[0]["input"], "Summarise this paragraph");
    assert_eq!(selections[0]["usage"], Value::Null);
    assert_eq!(selections[1]["endpoint"], "router");
    assert_eq!(
        selections[1]["messages"],
        json!([{"role": "user", "content": "Translate 'hi' to French"}])
    );

    // The real `triage batch` reads the log back.
    let rows_path = dir.path().join("rows.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_triage"))
        .arg("batch")
        .arg("--model-dir")
        .arg(triage::classifier::default_model_dir())
        .args(["--format", "triage-log", "--json", "-q", "--out"])
        .arg(&rows_path)
        .arg(&log)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rows"], 7, "{summary:#}");
    assert_eq!(summary["skipped"], 0);
    assert_eq!(summary["files"][0]["format"], "triage-log");
    // Five logged usages, two selections without one (their output is estimated).
    assert_eq!(summary["tokens"]["output_estimated_rows"], 2, "{summary:#}");
    assert_eq!(summary["tokens"]["input_estimated_rows"], 2);
    let rows = lines(&rows_path);
    assert_eq!(rows.len(), 7);
    for (row, line) in rows.iter().zip(&written) {
        assert_eq!(row["id"], line["request_id"]);
        assert_eq!(row["model"], line["model"]);
    }
    for row in &rows[..5] {
        assert_eq!(row["input_tokens"], 11, "{row}");
        assert_eq!(row["output_tokens"], 7, "{row}");
        assert_eq!(row["output_tokens_estimated"], false);
    }
    let input: u64 = rows
        .iter()
        .map(|r| r["input_tokens"].as_u64().unwrap())
        .sum();
    assert_eq!(summary["tokens"]["input"], input);
}

#[tokio::test]
async fn an_unwritable_log_path_stops_the_server_from_starting() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("no-such-dir").join("requests.jsonl");
    let err = AppState::new(config(&mock, &log), shipped_classifier(), "test-model")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("request log") && err.contains("no-such-dir"),
        "{err}"
    );
}

#[tokio::test]
async fn without_the_key_nothing_is_logged() {
    let mock = MockProvider::start(Format::OpenAi).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&mock, &dir.path().join("unused.jsonl"));
    config.server.request_log = None;
    let running = start(config).await;
    let r = post(&running.base, "/v1/chat/completions", chat("gpt-4o", "hi")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let state = running.shutdown().await;
    assert!(state.request_log.is_none());
    assert_eq!(state.metrics.request_log.written(), 0);
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
}

#[tokio::test]
async fn a_stream_that_breaks_is_logged_as_a_stream_error() {
    let mock = MockProvider::start(Format::OpenAi).await;
    mock.set_default(gateway_support::Behavior::CutStream);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("requests.jsonl");
    let running = start(config(&mock, &log)).await;
    let mut body = chat("gpt-4o", "Write a haiku");
    body["stream"] = json!(true);
    let r = post(&running.base, "/v1/chat/completions", body).await;
    assert_eq!(r.status, 200);
    assert!(r.text.contains("stream_interrupted"), "{}", r.text);
    running.shutdown().await;
    let written = lines(&log);
    assert_eq!(written.len(), 1, "{written:#?}");
    assert_eq!(written[0]["outcome"], "stream_error");
    assert_eq!(written[0]["model"], "gpt-4o");
    assert_eq!(written[0]["stream"], true);
}
