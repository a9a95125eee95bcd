//! The routing gateway: OpenAI-shaped types, provider adapters, retries, failover and streaming.
//!
//! [`Gateway`] holds the configured providers and models. Given a request and a model name it
//! walks the model's chain (the model, then its `fallbacks`), retrying each provider on errors
//! that may pass, skipping providers the circuit breaker is cooling down, and keeps every
//! provider's error for the reply when all of them fail. It knows nothing of tiers: choosing
//! the model is the caller's business.

pub mod auto;
pub mod breaker;
pub mod from_config;
pub mod handler;
pub mod providers;
pub mod retry;
pub mod serve;
pub mod sse;
pub mod types;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};

use breaker::CircuitBreaker;
use providers::{ChunkStream, Provider, ProviderError};
use retry::{RetryPolicy, Timeouts};
use types::{ChatChunk, ChatRequest, ChatResponse};

/// How a configured model is served.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRoute {
    /// The `[providers.*]` entry that serves it.
    pub provider: String,
    /// The provider's own name for the model.
    pub upstream: String,
    /// Models tried in order when this one fails.
    pub fallbacks: Vec<String>,
}

/// The gateway's tunables.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewaySettings {
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    /// Consecutive failures that cool a provider down.
    pub breaker_threshold: u32,
    /// How long a provider stays cooled down.
    pub breaker_cooldown: Duration,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

/// Per-provider overrides of the retry count and timeouts.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderLimits {
    pub max_retries: u32,
    /// A whole non-streamed response.
    pub attempt: Duration,
    /// For streams: the wait for the first token.
    pub first_token: Duration,
}

/// One step of a failover chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The configured model name.
    pub model: String,
    /// The provider serving it.
    pub provider: String,
    /// The provider's own model name.
    pub upstream: String,
}

/// Why one step of the chain failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub target: Target,
    /// Requests sent to this provider (0 when it was skipped).
    pub attempts: u32,
    pub error: ProviderError,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} via {} ({} attempt{}): {}",
            self.target.model,
            self.target.provider,
            self.attempts,
            if self.attempts == 1 { "" } else { "s" },
            self.error
        )
    }
}

/// What the gateway could not do.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    /// The model is not in `[models.*]`.
    #[error("model `{0}` is not configured")]
    UnknownModel(String),
    /// The configuration names something that does not exist.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// Every step of the chain failed (or one failed in a way no other step can fix: the
    /// request uses a parameter its model cannot carry); each one's error is kept.
    #[error("every provider failed: {}", list(.failures))]
    AllFailed {
        failures: Vec<Failure>,
        /// Time spent waiting on providers and backing off: not triage's overhead.
        provider_time: Duration,
    },
}

fn list(failures: &[Failure]) -> String {
    failures
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl GatewayError {
    /// The HTTP status that fits: 400 when the request itself was at fault everywhere, 429 when
    /// every provider was rate limiting, 504 when all timed out, else 502.
    pub fn status(&self) -> u16 {
        match self {
            GatewayError::UnknownModel(_) => 400,
            GatewayError::Config(_) => 500,
            GatewayError::AllFailed { failures, .. } => {
                let all = |f: &dyn Fn(&ProviderError) -> bool| {
                    !failures.is_empty() && failures.iter().all(|x| f(&x.error))
                };
                if all(&|e| e.is_client_error()) {
                    400
                } else if all(&|e| matches!(e, ProviderError::Status { status: 429, .. })) {
                    429
                } else if all(&|e| matches!(e, ProviderError::Timeout(_))) {
                    504
                } else {
                    502
                }
            }
        }
    }

    /// Requests sent upstream before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            GatewayError::AllFailed { failures, .. } => failures.iter().map(|f| f.attempts).sum(),
            _ => 0,
        }
    }

    /// Time spent waiting on providers before giving up.
    pub fn provider_time(&self) -> Duration {
        match self {
            GatewayError::AllFailed { provider_time, .. } => *provider_time,
            _ => Duration::ZERO,
        }
    }
}

/// A success, with what it took.
#[derive(Debug)]
pub struct Served<T> {
    pub value: T,
    /// The step that answered.
    pub target: Target,
    /// Requests sent upstream, failures included.
    pub attempts: u32,
    /// Time spent waiting on providers (and backing off between them): not triage's overhead.
    pub provider_time: Duration,
    /// Steps that failed before this one answered.
    pub failures: Vec<Failure>,
}

/// A stream whose first token has arrived: from here on there is no failover.
pub struct StartedStream {
    /// Chunks received up to and including the first substantive one.
    pub head: Vec<ChatChunk>,
    /// The rest; an `Err` item means the stream broke and must end with an error event.
    pub rest: ChunkStream,
}

impl fmt::Debug for StartedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartedStream")
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// The configured providers and models, with retry, failover and cooldown.
pub struct Gateway {
    providers: HashMap<String, Arc<dyn Provider>>,
    models: HashMap<String, ModelRoute>,
    settings: GatewaySettings,
    limits: HashMap<String, ProviderLimits>,
    breaker: Arc<CircuitBreaker>,
}

impl fmt::Debug for Gateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut providers: Vec<_> = self.providers.keys().collect();
        providers.sort();
        f.debug_struct("Gateway")
            .field("providers", &providers)
            .field("models", &self.models)
            .field("settings", &self.settings)
            .finish()
    }
}

impl Gateway {
    /// A gateway over built providers. Every model's provider and fallback must exist.
    pub fn new(
        providers: HashMap<String, Arc<dyn Provider>>,
        models: HashMap<String, ModelRoute>,
        settings: GatewaySettings,
    ) -> Result<Self, GatewayError> {
        for (name, route) in &models {
            if !providers.contains_key(&route.provider) {
                return Err(GatewayError::Config(format!(
                    "model `{name}` names provider `{}`, which is not configured",
                    route.provider
                )));
            }
            for fb in &route.fallbacks {
                if !models.contains_key(fb) {
                    return Err(GatewayError::Config(format!(
                        "model `{name}` falls back to `{fb}`, which is not in [models]"
                    )));
                }
            }
        }
        let breaker = Arc::new(CircuitBreaker::new(
            settings.breaker_threshold,
            settings.breaker_cooldown,
        ));
        Ok(Gateway {
            providers,
            models,
            settings,
            limits: HashMap::new(),
            breaker,
        })
    }

    /// Overrides the retry count and timeouts for one provider.
    pub fn set_limits(&mut self, provider: &str, limits: ProviderLimits) {
        self.limits.insert(provider.to_string(), limits);
    }

    fn limits(&self, provider: &str) -> ProviderLimits {
        self.limits
            .get(provider)
            .cloned()
            .unwrap_or(ProviderLimits {
                max_retries: self.settings.retry.max_retries,
                attempt: self.settings.timeouts.attempt,
                first_token: self.settings.timeouts.first_token,
            })
    }

    /// The settings in force.
    pub fn settings(&self) -> &GatewaySettings {
        &self.settings
    }

    /// The circuit breaker (to inspect cooldowns).
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Whether `model` is configured.
    pub fn has_model(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Configured model names, sorted.
    pub fn model_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.models.keys().cloned().collect();
        v.sort();
        v
    }

    /// The route of a configured model.
    pub fn route(&self, model: &str) -> Option<&ModelRoute> {
        self.models.get(model)
    }

    /// `model`, then its fallbacks in order (each once).
    pub fn chain(&self, model: &str) -> Result<Vec<Target>, GatewayError> {
        let route = self
            .models
            .get(model)
            .ok_or_else(|| GatewayError::UnknownModel(model.to_string()))?;
        let mut names = vec![model.to_string()];
        for fb in &route.fallbacks {
            if !names.contains(fb) {
                names.push(fb.clone());
            }
        }
        Ok(names
            .into_iter()
            .filter_map(|name| {
                let r = self.models.get(&name)?;
                Some(Target {
                    model: name,
                    provider: r.provider.clone(),
                    upstream: r.upstream.clone(),
                })
            })
            .collect())
    }

    /// A whole completion along `chain`.
    pub async fn complete(
        &self,
        req: &ChatRequest,
        chain: &[Target],
    ) -> Result<Served<ChatResponse>, GatewayError> {
        self.run_chain(chain, false, |p, upstream| p.infer(req, upstream))
            .await
    }

    /// A stream along `chain`: resolves once some provider has produced its first token
    /// (within the time-to-first-token limit); failover happens only before that.
    pub async fn complete_stream(
        &self,
        req: &ChatRequest,
        chain: &[Target],
    ) -> Result<Served<StartedStream>, GatewayError> {
        let mut served = self
            .run_chain(chain, true, |p, upstream| {
                let fut = p.infer_stream(req, upstream);
                async move {
                    let mut s = fut.await?;
                    let mut head = Vec::new();
                    // Bounded: ends at the first substantive chunk, an error or the end.
                    loop {
                        match s.next().await {
                            Some(Ok(c)) => {
                                let done = c.is_substantive();
                                head.push(c);
                                if done {
                                    return Ok(StartedStream { head, rest: s });
                                }
                            }
                            Some(Err(e)) => return Err(e),
                            None => {
                                return Err(ProviderError::StreamBroken(
                                    "the stream ended before the first token".into(),
                                ))
                            }
                        }
                    }
                }
            })
            .await?;
        let idle = self.limits(&served.target.provider).attempt;
        let rest = std::mem::replace(&mut served.value.rest, stream::empty().boxed());
        served.value.rest = guard_stream(
            rest,
            idle,
            self.breaker.clone(),
            served.target.provider.clone(),
        );
        Ok(served)
    }

    async fn run_chain<'a, T, F, Fut>(
        &'a self,
        chain: &'a [Target],
        stream: bool,
        call: F,
    ) -> Result<Served<T>, GatewayError>
    where
        F: Fn(&'a dyn Provider, &'a str) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let deadline = Instant::now() + self.settings.timeouts.total;
        let mut failures: Vec<Failure> = Vec::new();
        let mut attempts = 0u32;
        let mut provider_time = Duration::ZERO;
        for (step, target) in chain.iter().enumerate() {
            let Some(provider) = self.providers.get(&target.provider) else {
                failures.push(Failure {
                    target: target.clone(),
                    attempts: 0,
                    error: ProviderError::Connect("provider is not configured".into()),
                });
                continue;
            };
            if !self.breaker.allow(&target.provider) {
                failures.push(Failure {
                    target: target.clone(),
                    attempts: 0,
                    error: ProviderError::CoolingDown,
                });
                continue;
            }
            let limits = self.limits(&target.provider);
            let attempt_limit = if stream {
                limits.first_token
            } else {
                limits.attempt
            };
            let mut tries = 0u32;
            loop {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    failures.push(Failure {
                        target: target.clone(),
                        attempts: tries,
                        error: ProviderError::Timeout(format!(
                            "total timeout of {:?} reached",
                            self.settings.timeouts.total
                        )),
                    });
                    return Err(GatewayError::AllFailed {
                        failures,
                        provider_time,
                    });
                }
                let limit = attempt_limit.min(remaining);
                tries += 1;
                attempts += 1;
                let started = Instant::now();
                let result =
                    match tokio::time::timeout(limit, call(provider.as_ref(), &target.upstream))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(ProviderError::Timeout(format!(
                            "no answer within {limit:?}"
                        ))),
                    };
                provider_time += started.elapsed();
                let error = match result {
                    Ok(value) => {
                        self.breaker.record_success(&target.provider);
                        return Ok(Served {
                            value,
                            target: target.clone(),
                            attempts,
                            provider_time,
                            failures,
                        });
                    }
                    Err(e) => e,
                };
                if error.is_provider_fault() {
                    self.breaker.record_failure(&target.provider);
                }
                if matches!(error, ProviderError::Unsupported { .. }) {
                    // Refused before anything was sent, and no retry can change that.
                    tries -= 1;
                    attempts -= 1;
                    failures.push(Failure {
                        target: target.clone(),
                        attempts: tries,
                        error,
                    });
                    // The client asked for something the model it named cannot carry: say so
                    // in a 400 rather than quietly answering from another model down the chain.
                    if step == 0 {
                        return Err(GatewayError::AllFailed {
                            failures,
                            provider_time,
                        });
                    }
                    break;
                }
                let retry = tries - 1;
                let wait = if error.is_retryable()
                    && retry < limits.max_retries
                    && !self.breaker.is_open(&target.provider)
                {
                    self.settings.retry.backoff(retry, error.retry_after())
                } else {
                    None
                };
                match wait {
                    Some(d) if Instant::now() + d < deadline => {
                        tokio::time::sleep(d).await;
                        provider_time += d;
                    }
                    _ => {
                        failures.push(Failure {
                            target: target.clone(),
                            attempts: tries,
                            error,
                        });
                        break;
                    }
                }
            }
        }
        Err(GatewayError::AllFailed {
            failures,
            provider_time,
        })
    }
}

/// After the first token: each chunk must come within `idle`; a failure is recorded against
/// the provider and ends the stream with that error.
fn guard_stream(
    rest: ChunkStream,
    idle: Duration,
    breaker: Arc<CircuitBreaker>,
    provider: String,
) -> ChunkStream {
    stream::unfold(
        (rest, breaker, provider, false),
        move |(mut rest, breaker, provider, stop)| async move {
            if stop {
                return None;
            }
            let item = match tokio::time::timeout(idle, rest.next()).await {
                Ok(Some(Ok(c))) => Ok(c),
                Ok(Some(Err(e))) => Err(e),
                Ok(None) => return None,
                Err(_) => Err(ProviderError::Timeout(format!(
                    "no chunk within {idle:?} after the stream began"
                ))),
            };
            let stop = item.is_err();
            if stop {
                breaker.record_failure(&provider);
            }
            Some((item, (rest, breaker, provider, stop)))
        },
    )
    .boxed()
}
