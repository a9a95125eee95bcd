//! `triage serve`: the selectModel HTTP service (and, with providers configured, the gateway).
//!
//! Configuration comes from built-in defaults, then the TOML file (`--config` or
//! `TRIAGE_CONFIG`), then `TRIAGE_*` variables, then these flags.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tracing_subscriber::EnvFilter;
use triage::classifier::{self, Classifier};
use triage::config::Config;
use triage::server::{self, AppState};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML configuration file (default: $TRIAGE_CONFIG, else built-in defaults).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Model directory (config.json, tokenizer.json, model.safetensors).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// cpu, cuda, cuda:N or metal.
    #[arg(long)]
    device: Option<String>,
    /// Confidence below which the answer is needs_info (default: the model's own).
    #[arg(long)]
    threshold: Option<f32>,
    /// Fail-open deadline for select-model requests, in ms (0: none).
    #[arg(long)]
    deadline_ms: Option<u64>,
    /// Requests that may wait for the classifier before new ones get 429.
    #[arg(long)]
    queue_capacity: Option<usize>,
    /// Most prompts classified in one batch.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Threads running the model (see README: one is best on small machines).
    #[arg(long)]
    inference_threads: Option<usize>,
    /// Check the configuration, print the tier tables, and exit.
    #[arg(long)]
    check: bool,
}

impl ServeArgs {
    fn apply(&self, config: &mut Config) {
        let s = &mut config.server;
        if let Some(v) = self.listen {
            s.listen = v;
        }
        if let Some(v) = self.deadline_ms {
            s.deadline_ms = v;
        }
        if let Some(v) = self.queue_capacity {
            s.queue_capacity = v;
        }
        if let Some(v) = self.max_batch {
            s.max_batch = v;
        }
        if let Some(v) = self.inference_threads {
            s.inference_threads = v;
        }
        let c = &mut config.classifier;
        if let Some(v) = &self.model_dir {
            c.model_dir = Some(v.clone());
        }
        if let Some(v) = &self.device {
            c.device = v.clone();
        }
        if let Some(v) = self.threshold {
            c.needs_info_threshold = Some(v);
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    super::set_inference_threads(None);
    init_logging();
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("TRIAGE_CONFIG").map(PathBuf::from));
    let mut config = Config::load(file.as_deref())?;
    args.apply(&mut config);
    config.validate()?;

    if args.check {
        let policy = config.tier_policy()?;
        println!("configuration is valid");
        println!("default family: {}", policy.default_family());
        for family in policy.families() {
            let t = policy.table(family)?;
            println!(
                "  {family}: easy={} medium={} hard={} needs_info={} unclassified={}",
                t.easy, t.medium, t.hard, t.needs_info, t.unclassified
            );
        }
        return Ok(ExitCode::SUCCESS);
    }

    let dir = config.classifier.model_dir();
    let device = classifier::device(&config.classifier.device)?;
    let mut model = Classifier::load(&dir, &device)
        .with_context(|| format!("loading the model from {}", dir.display()))?;
    if let Some(t) = config.classifier.needs_info_threshold {
        model = model.with_threshold(t);
    }
    let name = model.config().name.clone();
    tracing::info!(
        model = %name,
        dir = %dir.display(),
        device = %config.classifier.device,
        threshold = model.threshold(),
        inference_threads = config.server.inference_threads,
        max_batch = config.server.max_batch,
        queue_capacity = config.server.queue_capacity,
        max_queue_wait_ms = config.server.max_queue_wait_ms,
        "classifier loaded"
    );
    let listen = config.server.listen;
    let auth = !config.server.api_keys.is_empty();
    let state = AppState::new(config, Arc::new(model), &name)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // The gateway's `/v1/chat/completions` shares the classifier, policy, auth and metrics.
    let chat_routes = triage::gateway::serve::api_routes(&state)
        .context("building the gateway from the configuration")?;
    let grace = Duration::from_secs(state.config.server.shutdown_grace_secs);
    let router = server::app_with(state.clone(), chat_routes);
    runtime.block_on(async move {
        let listener = server::bind(listen).await?;
        let local = listener.local_addr().unwrap_or(listen);
        tracing::info!(address = %local, auth, request_log = ?state.config.server.request_log,
                       "listening");
        let result = server::serve_router(listener, router, grace, server::shutdown_signal()).await;
        state.finish().await;
        result
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Logs to stderr; `TRIAGE_LOG` (or `RUST_LOG`) filters, e.g. `TRIAGE_LOG=debug`.
fn init_logging() {
    let filter = std::env::var("TRIAGE_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
