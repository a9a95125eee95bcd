//! The official `openai` Python SDK calls triage's chat route (in front of mock providers
//! speaking Anthropic's and Gemini's formats): a plain completion, a streamed one and tool calls.
//! Skipped, saying so, only when `python3 -c "import openai"` fails.

mod gateway_support;

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use gateway_support::{Behavior, Format, MockProvider};
use serde_json::json;
use triage::gateway::handler::{self, ChatState};
use triage::gateway::providers::{self, ProviderKind, ProviderSettings};
use triage::gateway::{Gateway, GatewaySettings, ModelRoute};

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_gets_well_formed_answers() {
    if !sdk_available() {
        eprintln!(
            "SKIPPED: the `openai` Python package is not installed (pip install openai); \
             the SDK end-to-end test did not run"
        );
        return;
    }
    let anthropic = MockProvider::start(Format::Anthropic).await;
    anthropic.set_default(Behavior::Text("Hello from the mock".into()));
    let gemini = MockProvider::start(Format::Gemini).await;
    gemini.set_default(Behavior::ToolCall {
        name: "get_weather".into(),
        arguments: json!({"city": "Paris"}),
    });
    let client = providers::http_client().unwrap();
    let mut ps = HashMap::new();
    for (name, kind, mock) in [
        ("anthropic-mock", ProviderKind::Anthropic, &anthropic),
        ("gemini-mock", ProviderKind::Gemini, &gemini),
    ] {
        ps.insert(
            name.to_string(),
            providers::build(
                ProviderSettings {
                    name: name.into(),
                    kind,
                    base_url: Some(mock.base_url()),
                    api_key: None,
                },
                client.clone(),
            )
            .unwrap(),
        );
    }
    let models = HashMap::from([
        (
            "plain".to_string(),
            ModelRoute {
                provider: "anthropic-mock".into(),
                upstream: "claude-test".into(),
                fallbacks: vec![],
            },
        ),
        (
            "tools".to_string(),
            ModelRoute {
                provider: "gemini-mock".into(),
                upstream: "gemini-test".into(),
                fallbacks: vec![],
            },
        ),
    ]);
    let gateway = Gateway::new(ps, models, GatewaySettings::default()).unwrap();
    let state = ChatState {
        gateway: std::sync::Arc::new(gateway),
        chooser: None,
        request_log: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, handler::routes::<()>(state)).await;
    });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk_client.py");
    let base = format!("http://{addr}");
    // The script bounds itself: every SDK call has a 30 s timeout and no retries.
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("python3")
                .arg(script)
                .arg(&base)
                .output()
        }),
    )
    .await
    .expect("the SDK script finished in time")
    .expect("the script's thread did not panic")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK script failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for line in [
        "plain completion ok",
        "streamed completion ok",
        "tool call ok",
        "errors ok",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
    // the tool result went upstream as a Gemini functionResponse
    let follow_up = &gemini.requests()[1].body;
    assert!(
        follow_up.to_string().contains("functionResponse"),
        "{follow_up}"
    );
}
