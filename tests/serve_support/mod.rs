//! Helpers for the `triage serve` tests: a server on loopback port 0, a real HTTP client, a
//! classifier that can be held at a gate, and a Prometheus text reader.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use candle_core::Device;
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use triage::classifier::worker::BatchClassifier;
use triage::classifier::{self, Classifier, ClassifierError, Prediction, Prompt};
use triage::config::Config;
use triage::server::{self, AppState, ServerError};

/// The shipped model, loaded once per test binary.
pub fn shipped_classifier() -> Arc<Classifier> {
    static MODEL: OnceLock<Arc<Classifier>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = classifier::default_model_dir();
            Arc::new(Classifier::load(&dir, &Device::Cpu).expect("load the shipped model"))
        })
        .clone()
}

/// Wraps a classifier; while the gate is closed, every batch waits in the model (as a slow
/// or saturated model would). Counts the batches that entered.
pub struct GatedClassifier {
    inner: Arc<dyn BatchClassifier>,
    open: Mutex<bool>,
    changed: Condvar,
    entered: AtomicUsize,
}

impl GatedClassifier {
    pub fn closed(inner: Arc<dyn BatchClassifier>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            open: Mutex::new(false),
            changed: Condvar::new(),
            entered: AtomicUsize::new(0),
        })
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }

    /// Holds the next batches again.
    #[allow(dead_code)] // not every test binary that shares this module closes the gate
    pub fn close(&self) {
        *self.open.lock().unwrap() = false;
    }

    /// Batches that reached the model so far (held or not).
    pub fn entered(&self) -> usize {
        self.entered.load(Ordering::SeqCst)
    }
}

impl BatchClassifier for GatedClassifier {
    fn classify_batch(&self, prompts: &[Prompt]) -> Result<Vec<Prediction>, ClassifierError> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        // Bounded: a test that forgets to open the gate fails instead of hanging.
        for _ in 0..600 {
            if *open {
                break;
            }
            open = self
                .changed
                .wait_timeout(open, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        drop(open);
        self.inner.classify_batch(prompts)
    }
}

/// A running server and a client for it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), ServerError>>>,
}

/// A configuration for tests: no fail-open deadline unless a test sets one.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.deadline_ms = 0;
    config
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` with the shipped model.
    pub async fn start(config: Config) -> Self {
        Self::start_with(config, shipped_classifier()).await
    }

    pub async fn start_with(config: Config, model: Arc<dyn BatchClassifier>) -> Self {
        // reqwest is built with rustls and no default crypto provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let state = AppState::new(config, model, "test-model").expect("build the app state");
        let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(server::run(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build the client");
        Self {
            addr,
            client,
            state,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POSTs raw `body` to `path`; returns the status, the response and its JSON body.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        let response = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send the request");
        Reply::read(response).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        let response = self
            .client
            .get(self.url(path))
            .send()
            .await
            .expect("send the request");
        Reply::read(response).await
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text
    }

    /// Asks the server to stop and waits for it (in-flight requests finish first).
    pub async fn shutdown(&mut self) -> Result<(), ServerError> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.handle.take() {
            Some(h) => h.await.expect("the server task panicked"),
            None => Ok(()),
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    /// The body as JSON, `Null` when it is not JSON.
    pub json: Value,
}

impl Reply {
    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read the body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the body is OpenAI's error shape and returns `(type, param, code)`.
    pub fn openai_error(&self) -> (String, Option<String>, String) {
        let e = &self.json["error"];
        assert!(
            e.is_object(),
            "status {} body is not an OpenAI error: {}",
            self.status,
            self.text
        );
        let message = e["message"].as_str().expect("error.message is a string");
        assert!(!message.is_empty(), "empty error message");
        assert!(
            e["param"].is_null() || e["param"].is_string(),
            "error.param must be a string or null: {}",
            self.text
        );
        (
            e["type"].as_str().expect("error.type").to_string(),
            e["param"].as_str().map(str::to_string),
            e["code"].as_str().expect("error.code").to_string(),
        )
    }
}

/// The value of one sample in Prometheus text, e.g. `metric(text, "triage_queue_depth")` or
/// `metric(text, "triage_tier_total{tier=\"easy\"}")`.
pub fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok())?
    })
}

/// Polls `check` until it holds; panics after a bounded number of tries.
pub async fn wait_for<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("gave up waiting for {what}");
}
