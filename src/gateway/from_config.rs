//! Builds the [`Gateway`] from the configuration: `[providers.*]`, `[models.*]`, `[gateway]`,
//! plus implicit routes for tier-table models whose family has a provider of the same name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};

use super::providers::{
    self, ChunkStream, Provider, ProviderError, ProviderKind, ProviderSettings, Secret,
};
use super::retry::{RetryPolicy, Timeouts};
use super::types::{ChatRequest, ChatResponse};
use super::{Gateway, GatewayError, GatewaySettings, ModelRoute, ProviderLimits};
use crate::classifier::Tier;
use crate::config::{self, Config};
use crate::policy::TierPolicy;

/// The adapter kind for a configured provider kind.
pub fn kind_of(kind: config::ProviderKind) -> ProviderKind {
    match kind {
        config::ProviderKind::Openai => ProviderKind::OpenAi,
        config::ProviderKind::Anthropic => ProviderKind::Anthropic,
        config::ProviderKind::Gemini => ProviderKind::Gemini,
        config::ProviderKind::OpenaiCompatible => ProviderKind::OpenAiCompatible,
    }
}

/// Stands in for a provider whose key cannot be read: every call fails at once, without a
/// request, with an error that names the variable (never a value).
struct Unusable {
    name: String,
    kind: ProviderKind,
    reason: String,
}

impl Provider for Unusable {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> ProviderKind {
        self.kind
    }
    fn infer<'a>(
        &'a self,
        _: &'a ChatRequest,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ChatResponse, ProviderError>> {
        async move { Err(ProviderError::NotConfigured(self.reason.clone())) }.boxed()
    }
    fn infer_stream<'a>(
        &'a self,
        _: &'a ChatRequest,
        _: &'a str,
    ) -> BoxFuture<'a, Result<ChunkStream, ProviderError>> {
        async move { Err(ProviderError::NotConfigured(self.reason.clone())) }.boxed()
    }
}

/// The gateway the configuration describes.
///
/// A model a tier table names but `[models]` does not is routed implicitly when a provider is
/// configured under the family's name (`[tiers.anthropic]` -> `[providers.anthropic]`), with
/// the same tier of the other served families as its fallbacks: a Sonnet-class request falls
/// over to a GPT-class model, not to a mini.
pub fn build(cfg: &Config, policy: &TierPolicy) -> Result<Gateway, GatewayError> {
    // One client per distinct connect timeout: `connect_timeout_ms` is per provider.
    let mut clients: HashMap<u64, reqwest::Client> = HashMap::new();
    let mut built: HashMap<String, Arc<dyn Provider>> = HashMap::new();
    let mut limits = Vec::new();
    for (name, p) in &cfg.providers {
        let kind = kind_of(p.kind);
        let key = match &p.api_key {
            None => Ok(None),
            Some(secret) => secret
                .resolve(&format!("providers.{name}.api_key"))
                .map(|v| Some(Secret::new(v)))
                .map_err(|e| e.to_string()),
        };
        let client = match clients.get(&p.connect_timeout_ms) {
            Some(c) => c.clone(),
            None => {
                let c = providers::http_client_with(Duration::from_millis(p.connect_timeout_ms))
                    .map_err(GatewayError::Config)?;
                clients.insert(p.connect_timeout_ms, c.clone());
                c
            }
        };
        let provider = match key {
            Ok(api_key) => providers::build(
                ProviderSettings {
                    name: name.clone(),
                    kind,
                    base_url: p.base_url().map(str::to_string),
                    api_key,
                },
                client,
            )
            .map_err(GatewayError::Config)?,
            Err(reason) => Arc::new(Unusable {
                name: name.clone(),
                kind,
                reason,
            }),
        };
        built.insert(name.clone(), provider);
        limits.push((
            name.clone(),
            ProviderLimits {
                max_retries: p.max_retries,
                attempt: Duration::from_millis(p.request_timeout_ms),
                first_token: Duration::from_millis(p.first_token_timeout_ms),
            },
        ));
    }
    let mut models: HashMap<String, ModelRoute> = cfg
        .models
        .iter()
        .map(|(name, m)| {
            (
                name.clone(),
                ModelRoute {
                    provider: m.provider.clone(),
                    upstream: m.upstream_name.clone().unwrap_or_else(|| name.clone()),
                    fallbacks: m.fallbacks.clone(),
                },
            )
        })
        .collect();
    add_implicit_routes(&mut models, &built, policy);
    let g = &cfg.gateway;
    let settings = GatewaySettings {
        retry: RetryPolicy {
            base_backoff: Duration::from_millis(g.backoff_base_ms),
            max_backoff: Duration::from_millis(g.backoff_max_ms),
            ..RetryPolicy::default()
        },
        timeouts: Timeouts {
            total: Duration::from_millis(g.total_timeout_ms),
            ..Timeouts::default()
        },
        breaker_threshold: g.cooldown_after_failures,
        breaker_cooldown: Duration::from_secs(g.cooldown_secs),
    };
    let mut gateway = Gateway::new(built, models, settings)?;
    for (name, l) in limits {
        gateway.set_limits(&name, l);
    }
    Ok(gateway)
}

fn add_implicit_routes(
    models: &mut HashMap<String, ModelRoute>,
    providers: &HashMap<String, Arc<dyn Provider>>,
    policy: &TierPolicy,
) {
    let served: Vec<(String, crate::policy::TierModels)> = policy
        .families()
        .filter(|f| providers.contains_key(*f))
        .filter_map(|f| Some((f.to_string(), policy.table(f).ok()?.clone())))
        .collect();
    let tiers = [Tier::Easy, Tier::Medium, Tier::Hard, Tier::NeedsInfo];
    let mut added = Vec::new();
    for (family, table) in &served {
        for tier in tiers {
            let model = table.model(tier).to_string();
            if models.contains_key(&model) {
                continue;
            }
            models.insert(
                model.clone(),
                ModelRoute {
                    provider: family.clone(),
                    upstream: model.clone(),
                    fallbacks: Vec::new(),
                },
            );
            added.push((family.clone(), tier, model));
        }
    }
    for (family, tier, model) in added {
        let fallbacks: Vec<String> = served
            .iter()
            .filter(|(f, _)| *f != family)
            .map(|(_, t)| t.model(tier).to_string())
            .filter(|m| *m != model)
            .collect();
        if let Some(route) = models.get_mut(&model) {
            route.fallbacks = fallbacks;
        }
    }
}
