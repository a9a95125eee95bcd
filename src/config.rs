//! Configuration: built-in defaults, then a TOML file, then `TRIAGE_*` environment variables
//! (then command-line flags, applied by the binary).
//!
//! Every key is optional; with no file at all triage serves the shipped model with the built-in
//! tier tables. Unknown keys, in the file or among `TRIAGE_*` variables, are errors that name the
//! key. Secrets are never written in the file: `api_key = "env:ANTHROPIC_API_KEY"`.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Deserializer};

use crate::policy::{self, PolicyError, TierModels, TierPolicy};

/// Errors from reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("unknown environment variable {name} (known: {})", ENV_VARS.join(", "))]
    UnknownEnv { name: String },
    #[error("environment variable {name}: {message}")]
    BadEnv { name: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
    #[error("{key}: environment variable {var} is not set")]
    MissingSecret { key: String, var: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// The `TRIAGE_*` environment variables triage reads; any other `TRIAGE_*` name is an error.
pub const ENV_VARS: &[&str] = &[
    "TRIAGE_CONFIG",
    "TRIAGE_LOG",
    "TRIAGE_LISTEN",
    "TRIAGE_API_KEYS",
    "TRIAGE_MODEL_DIR",
    "TRIAGE_DEVICE",
    "TRIAGE_NEEDS_INFO_THRESHOLD",
    "TRIAGE_DEADLINE_MS",
    "TRIAGE_MAX_BODY_BYTES",
    "TRIAGE_QUEUE_CAPACITY",
    "TRIAGE_MAX_BATCH",
    "TRIAGE_BATCH_WAIT_MS",
    "TRIAGE_INFERENCE_THREADS",
    "TRIAGE_DEFAULT_FAMILY",
    "TRIAGE_REQUEST_LOG",
];

/// `TRIAGE_*` variables that belong to other tools of this repository (training, tests);
/// `triage serve` leaves them alone rather than calling them unknown.
pub const OTHER_TOOLS_ENV_VARS: &[&str] = &["TRIAGE_TRAIN_COMMAND", "TRIAGE_KEEP_SCREENSHOT"];

/// A secret named by reference. The file may only hold `env:VAR`; keys given through the
/// environment (`TRIAGE_API_KEYS`) are held as values. `Debug` never shows a value.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// Read from this environment variable when the server starts.
    Env(String),
    /// A value given through the environment.
    Value(String),
}

impl Secret {
    /// Parses `env:VAR`; anything else is refused, so no secret is ever written in a file.
    pub fn parse_reference(text: &str) -> Result<Self, String> {
        match text.strip_prefix("env:") {
            Some(var) if is_env_name(var) => Ok(Secret::Env(var.to_string())),
            Some(var) => Err(format!("{var:?} is not an environment variable name")),
            None => Err(
                "secrets are never written in the config file: write \"env:VARIABLE\" and set it \
                 in the environment"
                    .to_string(),
            ),
        }
    }

    /// The secret's value, reading the environment through `lookup`.
    pub fn resolve_with(
        &self,
        key: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<String, ConfigError> {
        match self {
            Secret::Value(v) => Ok(v.clone()),
            Secret::Env(var) => match lookup(var) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(ConfigError::MissingSecret {
                    key: key.to_string(),
                    var: var.clone(),
                }),
            },
        }
    }

    /// The secret's value from the process environment.
    pub fn resolve(&self, key: &str) -> Result<String, ConfigError> {
        self.resolve_with(key, |var| std::env::var(var).ok())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(var) => write!(f, "env:{var}"),
            Secret::Value(_) => f.write_str("<redacted>"),
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Secret::parse_reference(&text).map_err(serde::de::Error::custom)
    }
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub classifier: ClassifierConfig,
    pub policy: PolicyConfig,
    /// Tier -> model tables per provider family, in file order; merged over the built-in
    /// `anthropic`, `openai` and `gemini` tables by [`Config::tier_policy`].
    pub tiers: IndexMap<String, TierTable>,
    pub providers: IndexMap<String, ProviderConfig>,
    /// Every model a client or a tier may name, for the gateway.
    pub models: IndexMap<String, ModelEntry>,
    pub gateway: GatewayConfig,
}

/// `[server]`: the HTTP listener, limits, batching and auth.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on (`TRIAGE_LISTEN`, `--listen`).
    pub listen: SocketAddr,
    /// Bearer keys accepted by the API (`env:VAR` each). Empty: no auth.
    pub api_keys: Vec<Secret>,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long select-model requests wait for the classifier before failing open to the
    /// `unclassified` model; 0 waits without a deadline (up to `classify_timeout_ms`).
    pub deadline_ms: u64,
    /// Upper bound on any wait for the classifier, for endpoints that cannot fail open
    /// (`/v1/router/raw`, `/v1/router/classify`); past it they answer 503.
    pub classify_timeout_ms: u64,
    /// Requests waiting for the classifier; when full, new ones get 429 at once.
    pub queue_capacity: usize,
    /// Longest a request may wait in the classifier's queue. One whose expected wait (queue
    /// depth × measured model time per prompt) is longer is refused at once (429, or fail-open
    /// for `auto` and select-model with a deadline); 0: no limit beyond `queue_capacity`.
    pub max_queue_wait_ms: u64,
    /// Most prompts the worker classifies in one batch.
    pub max_batch: usize,
    /// How long the worker waits for more prompts to fill a batch once it has one.
    pub batch_wait_ms: u64,
    /// Threads running the model; each runs one batch at a time.
    pub inference_threads: usize,
    /// The `retry-after` (seconds) sent with 429.
    pub retry_after_secs: u64,
    /// On shutdown, how long in-flight requests may take to finish.
    pub shutdown_grace_secs: u64,
    /// Append one `triage-log` JSON line per answered chat-completions and select-model
    /// request to this file (`triage batch --format triage-log` reads it). Default: off.
    pub request_log: Option<PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            max_body_bytes: 1024 * 1024,
            deadline_ms: 1000,
            classify_timeout_ms: 30_000,
            queue_capacity: 256,
            max_queue_wait_ms: 50,
            max_batch: 16,
            batch_wait_ms: 2,
            inference_threads: 1,
            retry_after_secs: 1,
            shutdown_grace_secs: 30,
            request_log: None,
        }
    }
}

impl ServerConfig {
    /// The fail-open deadline, or `None` when disabled.
    pub fn deadline(&self) -> Option<Duration> {
        (self.deadline_ms > 0).then(|| Duration::from_millis(self.deadline_ms))
    }

    /// The queue-wait limit, or `None` when disabled.
    pub fn max_queue_wait(&self) -> Option<Duration> {
        (self.max_queue_wait_ms > 0).then(|| Duration::from_millis(self.max_queue_wait_ms))
    }
}

/// `[classifier]`: which model, on which device.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifierConfig {
    /// Model directory; default: the shipped `models/triage-v1`.
    pub model_dir: Option<PathBuf>,
    /// `cpu`, `cuda`, `cuda:N` or `metal`.
    pub device: String,
    /// Confidence below which the answer is `needs_info`; default: the model's own.
    pub needs_info_threshold: Option<f32>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            model_dir: None,
            device: "cpu".into(),
            needs_info_threshold: None,
        }
    }
}

impl ClassifierConfig {
    /// The model directory to load.
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(crate::classifier::default_model_dir)
    }
}

/// `[policy]`: how modes lean and which family answers when a request names none.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Family for requests that name none (and `model: "auto"`); default: `[tiers.default]`
    /// when present, else the first family in the file, else `anthropic`.
    pub default_family: Option<String>,
    /// Below this probability of its tier, `aggressive` goes one tier up and `cost` one down.
    pub uncertain_below: f32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            default_family: None,
            uncertain_below: policy::DEFAULT_UNCERTAIN_BELOW,
        }
    }
}

/// `[tiers.<family>]`: a model per tier. For a built-in family, missing keys keep the
/// built-in model; for a new family `easy`, `medium` and `hard` are required, and `needs_info`
/// and `unclassified` default to the medium model.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierTable {
    pub easy: Option<String>,
    pub medium: Option<String>,
    pub hard: Option<String>,
    pub needs_info: Option<String>,
    /// The model when the classifier failed open.
    pub unclassified: Option<String>,
}

/// The API a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Openai,
    Anthropic,
    Gemini,
    OpenaiCompatible,
}

impl ProviderKind {
    /// The public endpoint of the provider, when it has one.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::Gemini => Some("https://generativelanguage.googleapis.com"),
            ProviderKind::OpenaiCompatible => None,
        }
    }
}

/// `[providers.<name>]`: one upstream API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Default: the provider's public endpoint; required for `openai-compatible`.
    pub base_url: Option<String>,
    /// `env:VAR`; none for servers without auth (a local vLLM or Ollama).
    pub api_key: Option<Secret>,
    /// Per-attempt limit on a whole non-streamed response.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "defaults::connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// For streams: limit on the wait for the first event.
    #[serde(default = "defaults::first_token_timeout_ms")]
    pub first_token_timeout_ms: u64,
    /// Retries of one model on this provider before failing over.
    #[serde(default = "defaults::max_retries")]
    pub max_retries: u32,
}

impl ProviderConfig {
    /// The base URL to call.
    pub fn base_url(&self) -> Option<&str> {
        self.base_url
            .as_deref()
            .or_else(|| self.kind.default_base_url())
    }
}

/// `[models.<name>]`: a model a client or a tier may name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    /// Which `[providers.*]` serves it.
    pub provider: String,
    /// The provider's own name, when it differs.
    pub upstream_name: Option<String>,
    /// Models tried in order when this one fails.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// USD per million input tokens; overrides the shipped price table.
    pub input_price_per_mtok: Option<f64>,
    /// USD per million output tokens; overrides the shipped price table.
    pub output_price_per_mtok: Option<f64>,
}

/// `[gateway]`: retries, failover and cooldown for `/v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Limit on a whole request, every attempt and failover included.
    pub total_timeout_ms: u64,
    /// First retry delay; doubles each retry, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    /// Consecutive failures after which a provider is skipped for `cooldown_secs`.
    pub cooldown_after_failures: u32,
    pub cooldown_secs: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            total_timeout_ms: 120_000,
            backoff_base_ms: 250,
            backoff_max_ms: 8_000,
            cooldown_after_failures: 5,
            cooldown_secs: 30,
        }
    }
}

mod defaults {
    pub fn request_timeout_ms() -> u64 {
        120_000
    }
    pub fn connect_timeout_ms() -> u64 {
        5_000
    }
    pub fn first_token_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_retries() -> u32 {
        2
    }
}

impl Config {
    /// Parses TOML text; `origin` names it in errors. Does not validate (see [`Config::validate`]).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        // The message and position only: toml's own Display quotes the offending line, which
        // may hold a secret someone wrote by mistake.
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let position = e.span().map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!("line {line}, column {column}: ")
            });
            ConfigError::Parse {
                path: origin.to_string(),
                message: format!("{}{}", position.unwrap_or_default(), e.message().trim_end()),
            }
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Defaults, then the file (when given), then the process's `TRIAGE_*` variables, checked.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        config.apply_env(std::env::vars_os().filter_map(|(k, v)| {
            // Names or values that are not UTF-8 cannot be ours unless they start with TRIAGE_.
            let k = k.into_string().ok()?;
            let v = v.into_string().unwrap_or_default();
            Some((k, v))
        }))?;
        config.validate()?;
        Ok(config)
    }

    /// Applies `TRIAGE_*` variables from `vars` (other names are ignored; an unknown `TRIAGE_*`
    /// name is an error).
    pub fn apply_env(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (name, value) in vars {
            if !name.starts_with("TRIAGE_")
                || name.starts_with("TRIAGE_TEST_")
                || OTHER_TOOLS_ENV_VARS.contains(&name.as_str())
            {
                continue;
            }
            let bad = |message: String| ConfigError::BadEnv {
                name: name.clone(),
                message,
            };
            let s = &mut self.server;
            match name.as_str() {
                "TRIAGE_CONFIG" | "TRIAGE_LOG" => {}
                "TRIAGE_LISTEN" => {
                    s.listen = value.trim().parse().map_err(|e| {
                        bad(format!("{e} (expected HOST:PORT, e.g. 127.0.0.1:8080)"))
                    })?
                }
                "TRIAGE_API_KEYS" => {
                    s.api_keys = value
                        .split(',')
                        .map(str::trim)
                        .filter(|k| !k.is_empty())
                        .map(|k| match k.strip_prefix("env:") {
                            Some(_) => Secret::parse_reference(k).map_err(&bad),
                            None => Ok(Secret::Value(k.to_string())),
                        })
                        .collect::<Result<_, _>>()?
                }
                "TRIAGE_MODEL_DIR" => self.classifier.model_dir = Some(PathBuf::from(value)),
                "TRIAGE_DEVICE" => self.classifier.device = value.trim().to_string(),
                "TRIAGE_NEEDS_INFO_THRESHOLD" => {
                    self.classifier.needs_info_threshold = Some(parse_env(&value).map_err(bad)?)
                }
                "TRIAGE_DEADLINE_MS" => s.deadline_ms = parse_env(&value).map_err(bad)?,
                "TRIAGE_MAX_BODY_BYTES" => s.max_body_bytes = parse_env(&value).map_err(bad)?,
                "TRIAGE_QUEUE_CAPACITY" => s.queue_capacity = parse_env(&value).map_err(bad)?,
                "TRIAGE_MAX_QUEUE_WAIT_MS" => {
                    s.max_queue_wait_ms = parse_env(&value).map_err(bad)?
                }
                "TRIAGE_MAX_BATCH" => s.max_batch = parse_env(&value).map_err(bad)?,
                "TRIAGE_BATCH_WAIT_MS" => s.batch_wait_ms = parse_env(&value).map_err(bad)?,
                "TRIAGE_INFERENCE_THREADS" => {
                    s.inference_threads = parse_env(&value).map_err(bad)?
                }
                "TRIAGE_DEFAULT_FAMILY" => {
                    self.policy.default_family = Some(value.trim().to_string())
                }
                // Empty turns the log off (overriding the file).
                "TRIAGE_REQUEST_LOG" => {
                    s.request_log = Some(value.trim())
                        .filter(|v| !v.is_empty())
                        .map(PathBuf::from)
                }
                _ => return Err(ConfigError::UnknownEnv { name }),
            }
        }
        Ok(())
    }

    /// Checks limits, references between tables, and the tier tables.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        let s = &self.server;
        for (key, value) in [
            ("server.max_body_bytes", s.max_body_bytes),
            ("server.queue_capacity", s.queue_capacity),
            ("server.max_batch", s.max_batch),
            ("server.inference_threads", s.inference_threads),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1".into()));
            }
        }
        if s.classify_timeout_ms == 0 {
            return Err(invalid(
                "server.classify_timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if s.request_log
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(invalid(
                "server.request_log",
                "must be a file path (leave the key out to turn the log off)".into(),
            ));
        }
        if let Some(t) = self.classifier.needs_info_threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(invalid(
                    "classifier.needs_info_threshold",
                    format!("must be between 0 and 1, got {t}"),
                ));
            }
        }
        for (name, provider) in &self.providers {
            if provider.base_url().is_none() {
                return Err(invalid(
                    &format!("providers.{name}.base_url"),
                    "is required for kind = \"openai-compatible\"".into(),
                ));
            }
        }
        for (name, model) in &self.models {
            if !self.providers.contains_key(&model.provider) {
                return Err(invalid(
                    &format!("models.{name}.provider"),
                    format!(
                        "no [providers.{}] table (known: {})",
                        model.provider,
                        join_keys(self.providers.keys())
                    ),
                ));
            }
            for fallback in &model.fallbacks {
                if !self.models.contains_key(fallback) {
                    return Err(invalid(
                        &format!("models.{name}.fallbacks"),
                        format!("{fallback:?} has no [models] table"),
                    ));
                }
            }
            for (key, price) in [
                ("input_price_per_mtok", model.input_price_per_mtok),
                ("output_price_per_mtok", model.output_price_per_mtok),
            ] {
                if price.is_some_and(|p| !(p >= 0.0 && p.is_finite())) {
                    return Err(invalid(
                        &format!("models.{name}.{key}"),
                        "must be a non-negative number".into(),
                    ));
                }
            }
        }
        self.tier_policy()?;
        Ok(())
    }

    /// The tier policy: built-in tables, overridden and extended by `[tiers.*]`.
    pub fn tier_policy(&self) -> Result<TierPolicy, ConfigError> {
        let mut families: IndexMap<String, TierModels> = IndexMap::new();
        // Families named in the file come first, in file order: the first is the default.
        for (family, table) in &self.tiers {
            let family_key = family.trim().to_ascii_lowercase();
            let models = match policy::builtin_models(&family_key) {
                Some(mut base) => {
                    let medium_set = table.medium.is_some();
                    overlay(&mut base.easy, &table.easy);
                    overlay(&mut base.medium, &table.medium);
                    overlay(&mut base.hard, &table.hard);
                    // A new medium model also answers needs_info and unclassified unless told.
                    if medium_set {
                        base.needs_info = base.medium.clone();
                        base.unclassified = base.medium.clone();
                    }
                    overlay(&mut base.needs_info, &table.needs_info);
                    overlay(&mut base.unclassified, &table.unclassified);
                    base
                }
                None => {
                    let need = |key: &str, v: &Option<String>| {
                        v.clone().ok_or_else(|| ConfigError::Invalid {
                            key: format!("tiers.{family}.{key}"),
                            message: "is required for a family with no built-in table".into(),
                        })
                    };
                    let medium = need("medium", &table.medium)?;
                    TierModels {
                        easy: need("easy", &table.easy)?,
                        hard: need("hard", &table.hard)?,
                        needs_info: table.needs_info.clone().unwrap_or_else(|| medium.clone()),
                        unclassified: table.unclassified.clone().unwrap_or_else(|| medium.clone()),
                        medium,
                    }
                }
            };
            if families.insert(family_key.clone(), models).is_some() {
                return Err(ConfigError::Invalid {
                    key: format!("tiers.{family}"),
                    message: format!("family {family_key:?} is given twice"),
                });
            }
        }
        for family in policy::BUILTIN_FAMILIES {
            if !families.contains_key(family) {
                if let Some(models) = policy::builtin_models(family) {
                    families.insert(family.to_string(), models);
                }
            }
        }
        Ok(TierPolicy::new(
            families,
            self.policy.default_family.as_deref(),
            self.policy.uncertain_below,
        )?)
    }

    /// Resolved bearer keys for the API; empty when auth is off.
    pub fn resolve_api_keys(&self) -> Result<Vec<String>, ConfigError> {
        self.server
            .api_keys
            .iter()
            .enumerate()
            .map(|(i, k)| k.resolve(&format!("server.api_keys[{i}]")))
            .collect()
    }
}

fn overlay(target: &mut String, value: &Option<String>) {
    if let Some(v) = value {
        *target = v.clone();
    }
}

fn parse_env<T: std::str::FromStr>(value: &str) -> Result<T, String>
where
    T::Err: fmt::Display,
{
    value.trim().parse().map_err(|e| format!("{e}: {value:?}"))
}

fn join_keys<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = keys.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::Tier;
    use crate::policy::Mode;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_the_defaults() {
        let c = Config::from_toml("", "t.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        let p = c.tier_policy().unwrap();
        assert_eq!(p.default_family(), "anthropic");
        assert_eq!(
            p.families().collect::<Vec<_>>(),
            ["anthropic", "openai", "gemini"]
        );
    }

    #[test]
    fn parses_the_design_sketch() {
        let text = r#"
[server]
listen = "127.0.0.1:9000"
api_keys = ["env:TRIAGE_TEST_KEY"]
request_log = "logs/requests.jsonl"

[classifier]
model_dir = "models/triage-v1"
device = "cpu"
needs_info_threshold = 0.5

[tiers.anthropic]
easy = "claude-haiku-4-5"
medium = "claude-sonnet-4-5"
hard = "claude-opus-4-1"
needs_info = "claude-sonnet-4-5"

[providers.anthropic]
kind = "anthropic"
base_url = "https://api.anthropic.com"
api_key = "env:ANTHROPIC_API_KEY"

[providers.openai]
kind = "openai"
api_key = "env:OPENAI_API_KEY"

[models."claude-sonnet-4-5"]
provider = "anthropic"
upstream_name = "claude-sonnet-4-5-20250929"
fallbacks = ["gpt-4o"]
input_price_per_mtok = 3.0

[models."gpt-4o"]
provider = "openai"
"#;
        let c = Config::from_toml(text, "t.toml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.server.listen.port(), 9000);
        assert_eq!(
            c.server.request_log.as_deref(),
            Some(Path::new("logs/requests.jsonl"))
        );
        assert_eq!(
            c.server.api_keys,
            vec![Secret::Env("TRIAGE_TEST_KEY".into())]
        );
        assert_eq!(c.providers["anthropic"].kind, ProviderKind::Anthropic);
        assert_eq!(
            c.providers["openai"].base_url(),
            Some("https://api.openai.com/v1")
        );
        assert_eq!(c.models["claude-sonnet-4-5"].fallbacks, ["gpt-4o"]);
        assert_eq!(c.classifier.needs_info_threshold, Some(0.5));
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        for (text, key) in [
            ("[server]\nlisten_addr = \"127.0.0.1:1\"\n", "listen_addr"),
            ("[classifer]\ndevice = \"cpu\"\n", "classifer"),
            ("[tiers.openai]\neasyy = \"x\"\n", "easyy"),
            ("[providers.x]\nkind = \"openai\"\ntimeout = 5\n", "timeout"),
            ("[models.m]\nprovider = \"x\"\nfallback = []\n", "fallback"),
        ] {
            let err = Config::from_toml(text, "t.toml").unwrap_err().to_string();
            assert!(err.contains(key), "{err}");
            assert!(err.contains("t.toml"), "{err}");
        }
    }

    #[test]
    fn literal_secrets_in_the_file_are_refused() {
        let err = Config::from_toml(
            "[providers.a]\nkind = \"openai\"\napi_key = \"sk-123\"\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("env:"), "{err}");
        assert!(
            !err.contains("sk-123"),
            "the secret leaked into the error: {err}"
        );
    }

    #[test]
    fn env_overrides_the_file_and_unknown_names_are_errors() {
        let mut c = Config::from_toml("[server]\nlisten = \"127.0.0.1:1\"\n", "t").unwrap();
        c.apply_env(env(&[
            ("TRIAGE_LISTEN", "0.0.0.0:9090"),
            ("TRIAGE_API_KEYS", "a, b,,env:SOME_VAR"),
            ("TRIAGE_DEADLINE_MS", "0"),
            ("PATH", "/bin"),
            ("TRIAGE_TRAIN_COMMAND", "ignored"),
        ]))
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            c.server.api_keys,
            vec![
                Secret::Value("a".into()),
                Secret::Value("b".into()),
                Secret::Env("SOME_VAR".into())
            ]
        );
        assert_eq!(c.server.deadline(), None);
        assert_eq!(c.server.request_log, None);
        c.apply_env(env(&[("TRIAGE_REQUEST_LOG", "/var/log/triage.jsonl")]))
            .unwrap();
        assert_eq!(
            c.server.request_log.as_deref(),
            Some(Path::new("/var/log/triage.jsonl"))
        );
        c.apply_env(env(&[("TRIAGE_REQUEST_LOG", "")])).unwrap();
        assert_eq!(c.server.request_log, None);
        let err = c
            .apply_env(env(&[("TRIAGE_LISTN", "x")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TRIAGE_LISTN"), "{err}");
        let err = c
            .apply_env(env(&[("TRIAGE_MAX_BATCH", "many")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("TRIAGE_MAX_BATCH"), "{err}");
    }

    #[test]
    fn secrets_resolve_from_the_environment_and_never_print() {
        let s = Secret::Env("K".into());
        assert_eq!(s.resolve_with("k", |_| Some("v".into())).unwrap(), "v");
        let err = s.resolve_with("server.api_keys[0]", |_| None).unwrap_err();
        assert!(err.to_string().contains("K is not set"));
        assert_eq!(
            format!("{:?}", Secret::Value("hunter2".into())),
            "<redacted>"
        );
    }

    #[test]
    fn tier_tables_override_builtins_and_add_families() {
        let text = r#"
[tiers.local]
easy = "llama-3.1-8b"
medium = "qwen-2.5-32b"
hard = "deepseek-r1"

[tiers.openai]
hard = "o3"
"#;
        let c = Config::from_toml(text, "t").unwrap();
        let p = c.tier_policy().unwrap();
        assert_eq!(p.default_family(), "local");
        let choose = |family, tier| {
            p.choose(Some(tier), None, Mode::Balanced, Some(family), None)
                .unwrap()
                .model
        };
        assert_eq!(choose("local", Tier::NeedsInfo), "qwen-2.5-32b");
        assert_eq!(choose("openai", Tier::Hard), "o3");
        assert_eq!(choose("openai", Tier::Easy), "gpt-5-nano");
        assert_eq!(choose("anthropic", Tier::Easy), "claude-haiku-4-5");
    }

    #[test]
    fn a_new_family_needs_every_ladder_model() {
        let c = Config::from_toml("[tiers.local]\neasy = \"a\"\n", "t").unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("tiers.local.medium"), "{err}");
    }

    #[test]
    fn references_between_tables_are_checked() {
        let c = Config::from_toml("[models.m]\nprovider = \"nope\"\n", "t").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("models.m.provider"));
        let c = Config::from_toml(
            "[providers.p]\nkind = \"openai\"\n[models.m]\nprovider = \"p\"\nfallbacks = [\"x\"]\n",
            "t",
        )
        .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("models.m.fallbacks"));
        let c = Config::from_toml("[providers.p]\nkind = \"openai-compatible\"\n", "t").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("base_url"));
        let c = Config::from_toml("[server]\nmax_batch = 0\n", "t").unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("server.max_batch"));
        let c = Config::from_toml("[policy]\ndefault_family = \"nope\"\n", "t").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("nope"));
    }
}
