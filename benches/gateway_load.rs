//! Load harness for the gateway: what triage adds to a chat completion, under steady load.
//!
//! Starts a mock OpenAI-compatible upstream on loopback that answers every request after a fixed
//! delay, runs the real `triage serve` binary in front of it, and drives it with an open-loop
//! load generator (requests leave on a fixed schedule whether or not earlier ones have
//! answered, so a stall shows in the latencies instead of slowing the load). For each scenario
//! it reports throughput, total latency, and triage's added latency measured two ways:
//! `total - upstream` (the mock's own time holding each request, matched by the request's `user`
//! field) and the `x-triage-overhead-ms` header triage computes itself.
//!
//! Scenarios: `direct` (the load generator straight to the mock, no triage: what the harness's
//! own loopback hop, client and mock cost on this machine), `named` (a configured model: no
//! classification) and `auto` (`model: "auto"`: tokenise, classify, choose). Triage's own share
//! of `named`'s added latency is about `named` minus `direct`. For `auto` it also counts the
//! requests that failed open (`x-triage-tier: unclassified`: the classifier queue was too far
//! behind, see `server.max_queue_wait_ms`).
//!
//! ```text
//! cargo bench --bench gateway_load -- --rps 1000 --duration 10 --delay-ms 20
//! cargo bench --bench gateway_load -- --scenarios direct,named --rps 1000
//! cargo bench --bench gateway_load -- --scenarios auto --rps 200 --json
//! ```
//!
//! The mock and the load generator share the machine with triage: on a 2-core machine they
//! compete with it for the CPU, so the figures are an upper bound on triage's overhead.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

/// The harness's settings, from its command line.
#[derive(Debug, Clone)]
struct Settings {
    rps: u64,
    duration: Duration,
    warmup: Duration,
    delay: Duration,
    scenarios: Vec<String>,
    json: bool,
    triage: PathBuf,
    model_dir: Option<PathBuf>,
}

impl Settings {
    fn parse() -> Result<Self, String> {
        let mut s = Settings {
            rps: 1000,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            delay: Duration::from_millis(20),
            scenarios: vec!["direct".into(), "named".into(), "auto".into()],
            json: false,
            triage: PathBuf::from(env!("CARGO_BIN_EXE_triage")),
            model_dir: None,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
            let number = |name: &str, v: String| {
                v.parse::<f64>()
                    .ok()
                    .filter(|n| *n >= 0.0)
                    .ok_or_else(|| format!("{name}: not a number: {v}"))
            };
            match arg.as_str() {
                // cargo bench passes --bench to every bench target.
                "--bench" => {}
                "--rps" => s.rps = number("--rps", value("--rps")?)?.max(1.0) as u64,
                "--duration" => {
                    s.duration =
                        Duration::from_secs_f64(number("--duration", value("--duration")?)?)
                }
                "--warmup" => {
                    s.warmup = Duration::from_secs_f64(number("--warmup", value("--warmup")?)?)
                }
                "--delay-ms" => {
                    s.delay =
                        Duration::from_secs_f64(number("--delay-ms", value("--delay-ms")?)? / 1e3)
                }
                "--scenarios" => {
                    s.scenarios = value("--scenarios")?
                        .split(',')
                        .map(|v| v.trim().to_string())
                        .collect();
                    let known = ["direct", "named", "auto"];
                    if let Some(bad) = s.scenarios.iter().find(|v| !known.contains(&v.as_str())) {
                        return Err(format!("unknown scenario {bad:?} (direct, named, auto)"));
                    }
                }
                "--json" => s.json = true,
                "--triage" => s.triage = PathBuf::from(value("--triage")?),
                "--model-dir" => s.model_dir = Some(PathBuf::from(value("--model-dir")?)),
                "--help" | "-h" => {
                    return Err("usage: gateway_load [--rps N] [--duration S] [--warmup S] \
                                [--delay-ms MS] [--scenarios direct,named,auto] [--json] \
                                [--triage PATH] [--model-dir DIR]"
                        .into())
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        Ok(s)
    }
}

/// How long the mock held each request, by the request's `user` field.
#[derive(Default)]
struct Upstream {
    delay: Duration,
    held: Mutex<HashMap<String, Duration>>,
}

/// A chat.completion the mock returns; the size of a short real answer.
fn completion_body() -> Bytes {
    let v = json!({
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "mock-model",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Canberra became the capital of Australia in 1913, when construction began; Parliament moved there in 1927."},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 18, "completion_tokens": 27, "total_tokens": 45}
    });
    Bytes::from(serde_json::to_vec(&v).expect("static JSON"))
}

async fn mock_chat(State(up): State<Arc<Upstream>>, body: Bytes) -> impl IntoResponse {
    let arrived = Instant::now();
    let id = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["user"].as_str().map(str::to_string));
    tokio::time::sleep(up.delay).await;
    if let Some(id) = id {
        up.held
            .lock()
            .expect("mock lock")
            .insert(id, arrived.elapsed());
    }
    (
        [(header::CONTENT_TYPE, "application/json")],
        completion_body(),
    )
}

/// The prompts sent, from the shipped bench set: short and medium ones, as chat traffic is.
fn prompts() -> Vec<String> {
    include_str!("prompts.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["bucket"].as_u64().is_some_and(|b| b <= 64))
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn write_config(dir: &Path, upstream: SocketAddr, listen: u16) -> std::io::Result<PathBuf> {
    let path = dir.join("triage.toml");
    let text = format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
queue_capacity = 4096

[providers.mock]
kind = "openai-compatible"
base_url = "http://{upstream}/v1"
max_retries = 0

[models."mock-small"]
provider = "mock"
upstream_name = "mock-model"

[models."mock-large"]
provider = "mock"
upstream_name = "mock-model"

[tiers.mock]
easy = "mock-small"
medium = "mock-small"
hard = "mock-large"
needs_info = "mock-small"

[policy]
default_family = "mock"
"#
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The `triage serve` child; killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request's outcome.
struct Sample {
    /// From when it was due to leave to its last byte.
    total: Duration,
    /// `total` minus the mock's time holding it.
    added: Option<Duration>,
    /// `x-triage-overhead-ms`.
    header_ms: Option<f64>,
    /// Routed to the `unclassified` model (auto failed open).
    failed_open: bool,
    ok: bool,
}

#[derive(Debug, serde::Serialize)]
struct ScenarioReport {
    scenario: String,
    model: String,
    target_rps: u64,
    achieved_rps: f64,
    requests: usize,
    errors: usize,
    failed_open: usize,
    upstream_delay_ms: f64,
    total_p50_ms: f64,
    total_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    added_max_ms: f64,
    header_overhead_p50_ms: f64,
    header_overhead_p99_ms: f64,
    triage_peak_rss_mb: Option<f64>,
    triage_rss_mb: Option<f64>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let v = sorted[rank.clamp(1, sorted.len()) - 1];
    (v * 1000.0).round() / 1000.0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// VmHWM / VmRSS of a process, in MB.
fn rss_mb(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// What the load generator sends requests to, and with.
struct Driver {
    client: reqwest::Client,
    upstream: Arc<Upstream>,
    prompts: Vec<String>,
}

impl Driver {
    /// Sends `rps` requests a second for `duration`, on schedule, and collects every outcome.
    async fn drive(
        &self,
        url: &str,
        model: &str,
        rps: u64,
        duration: Duration,
        tag: &str,
    ) -> (Vec<Sample>, Duration) {
        let (client, upstream, prompts) = (&self.client, &self.upstream, &self.prompts);
        let period = Duration::from_secs_f64(1.0 / rps as f64);
        let count = (duration.as_secs_f64() * rps as f64).round() as usize;
        let start = tokio::time::Instant::now() + Duration::from_millis(10);
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let due = start + period * i as u32;
            tokio::time::sleep_until(due).await;
            let id = format!("{tag}-{i}");
            let body = json!({
                "model": model,
                "messages": [{"role": "user", "content": prompts[i % prompts.len()]}],
                "user": id,
            });
            let body = Bytes::from(serde_json::to_vec(&body).expect("request JSON"));
            let client = client.clone();
            let url = url.to_string();
            tasks.push(tokio::spawn(async move {
                let resp = client
                    .post(&url)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .send()
                    .await;
                let (ok, header_ms, failed_open) = match resp {
                    Ok(r) => {
                        let ok = r.status().is_success();
                        let h = r
                            .headers()
                            .get("x-triage-overhead-ms")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<f64>().ok());
                        let open = r
                            .headers()
                            .get("x-triage-tier")
                            .is_some_and(|v| v.as_bytes() == b"unclassified");
                        let body = r.bytes().await;
                        (ok && body.is_ok(), h, open)
                    }
                    Err(_) => (false, None, false),
                };
                (id, due.elapsed(), ok, header_ms, failed_open)
            }));
        }
        let mut samples = Vec::with_capacity(count);
        for task in tasks {
            let Ok((id, total, ok, header_ms, failed_open)) = task.await else {
                continue;
            };
            let held = upstream.held.lock().expect("mock lock").remove(&id);
            samples.push(Sample {
                total,
                added: held.map(|h| total.saturating_sub(h)),
                header_ms,
                failed_open,
                ok,
            });
        }
        let elapsed = start.elapsed();
        (samples, elapsed)
    }
}

async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    server: &mut Server,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("triage serve exited early: {status}"));
        }
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("triage serve did not become healthy within 60 s".into())
}

async fn run(settings: Settings) -> Result<Vec<ScenarioReport>, String> {
    let upstream = Arc::new(Upstream {
        delay: settings.delay,
        held: Mutex::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let upstream_addr = listener.local_addr().map_err(|e| e.to_string())?;
    let app = Router::new()
        .route("/v1/chat/completions", post(mock_chat))
        .with_state(upstream.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port().map_err(|e| e.to_string())?;
    let config = write_config(dir.path(), upstream_addr, port).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&settings.triage);
    cmd.arg("serve")
        .arg("--config")
        .arg(&config)
        .env("TRIAGE_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(dir) = &settings.model_dir {
        cmd.arg("--model-dir").arg(dir);
    }
    let mut server = Server(
        cmd.spawn()
            .map_err(|e| format!("starting {}: {e}", settings.triage.display()))?,
    );
    let pid = server.0.id();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()
        .map_err(|e| e.to_string())?;
    wait_healthy(&client, &base, &mut server).await?;

    let via_triage = format!("{base}/v1/chat/completions");
    let direct = format!("http://{upstream_addr}/v1/chat/completions");
    let driver = Driver {
        client,
        upstream,
        prompts: prompts(),
    };
    let mut reports = Vec::new();
    for scenario in &settings.scenarios {
        let model = if scenario == "auto" {
            "auto"
        } else {
            "mock-small"
        };
        let url = if scenario == "direct" {
            &direct
        } else {
            &via_triage
        };
        if !settings.warmup.is_zero() {
            driver
                .drive(url, model, settings.rps, settings.warmup, "warm")
                .await;
        }
        let (samples, elapsed) = driver
            .drive(url, model, settings.rps, settings.duration, scenario)
            .await;
        let ok: Vec<&Sample> = samples.iter().filter(|s| s.ok).collect();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let total = sorted(ok.iter().map(|s| ms(s.total)).collect());
        let added = sorted(ok.iter().filter_map(|s| s.added.map(ms)).collect());
        let header = sorted(ok.iter().filter_map(|s| s.header_ms).collect());
        reports.push(ScenarioReport {
            scenario: scenario.clone(),
            model: model.to_string(),
            target_rps: settings.rps,
            achieved_rps: (ok.len() as f64 / elapsed.as_secs_f64() * 10.0).round() / 10.0,
            requests: samples.len(),
            errors: samples.len() - ok.len(),
            failed_open: ok.iter().filter(|s| s.failed_open).count(),
            upstream_delay_ms: ms(settings.delay),
            total_p50_ms: percentile(&total, 50.0),
            total_p99_ms: percentile(&total, 99.0),
            added_p50_ms: percentile(&added, 50.0),
            added_p99_ms: percentile(&added, 99.0),
            added_max_ms: added.last().copied().unwrap_or(f64::NAN),
            header_overhead_p50_ms: percentile(&header, 50.0),
            header_overhead_p99_ms: percentile(&header, 99.0),
            triage_peak_rss_mb: rss_mb(pid, "VmHWM"),
            triage_rss_mb: rss_mb(pid, "VmRSS"),
        });
    }
    drop(server);
    Ok(reports)
}

fn main() {
    let settings = match Settings::parse() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gateway_load: {e}");
            std::process::exit(2);
        }
    };
    // reqwest is built without a default TLS provider (plain HTTP here, but the client asks).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let json = settings.json;
    let reports = match runtime.block_on(run(settings)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gateway_load: {e}");
            std::process::exit(1);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).expect("report JSON")
        );
        return;
    }
    println!(
        "{:<8} {:>6} {:>8} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "scenario",
        "rps",
        "achieved",
        "errors",
        "open",
        "total p50",
        "total p99",
        "added p50",
        "added p99",
        "hdr p50",
        "hdr p99",
        "rss MB"
    );
    for r in &reports {
        println!(
            "{:<8} {:>6} {:>8.1} {:>6} {:>6} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>8}",
            r.scenario,
            r.target_rps,
            r.achieved_rps,
            r.errors,
            r.failed_open,
            r.total_p50_ms,
            r.total_p99_ms,
            r.added_p50_ms,
            r.added_p99_ms,
            r.header_overhead_p50_ms,
            r.header_overhead_p99_ms,
            r.triage_rss_mb.map_or("n/a".into(), |v| format!("{v:.1}"))
        );
    }
    println!(
        "(ms; upstream delay {:.1} ms; added = total - the mock's time holding the request; \
         hdr = x-triage-overhead-ms; open = auto requests that failed open; direct = no triage)",
        reports.first().map_or(0.0, |r| r.upstream_delay_ms)
    );
}
