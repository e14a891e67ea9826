//! Builds the [`Router`] from `[providers]`, `[models]` and `[resilience]`: one breaker per
//! upstream endpoint, each model's route being its own target followed by its fallbacks.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use ai_gateway_actors::{
    provider::{ApiKey, Breaker, RetryPolicy, Route, Target, Upstream},
    AnthropicProvider, GeminiProvider, MockProvider, OpenAiProvider, OpenAiSettings, Provider,
    Router,
};

use crate::config::{Config, ModelSettings, ProviderSettings};

/// The seed's second model: with `OPENAI_API_KEY` set and no model of that name configured, it
/// reaches OpenAI (`OPENAI_MODEL`, else this one).
const SEED_OPENAI_MODEL: &str = "gpt-4o-mini";

fn provider_of(name: &str, settings: &ProviderSettings) -> anyhow::Result<Arc<dyn Provider>> {
    let built: Arc<dyn Provider> = match settings {
        ProviderSettings::Openai(s) => OpenAiProvider::new(s.clone())?,
        ProviderSettings::Anthropic(s) => AnthropicProvider::new(s.clone())?,
        ProviderSettings::Gemini(s) => GeminiProvider::new(s.clone())?,
        ProviderSettings::Mock(s) => {
            s.validate().map_err(anyhow::Error::msg)?;
            MockProvider::new(s.clone())
        }
    };
    tracing::info!(provider = name, kind = built.name(), "provider configured");
    Ok(built)
}

/// The routes of every model clients may use.
pub fn build_router(config: &Config, mock: Arc<MockProvider>) -> anyhow::Result<Router> {
    let mut providers = config.providers.clone();
    let mut models = config.models.clone();
    if !models.contains_key("openai") && !providers.contains_key("openai") {
        if let Ok(key) = std::env::var("OPENAI_API_KEY") {
            let settings = OpenAiSettings::new(
                ai_gateway_actors::provider::openai::DEFAULT_BASE_URL,
                Some(ApiKey::new(key)),
            );
            providers.insert("openai".into(), ProviderSettings::Openai(settings));
            models.insert(
                "openai".into(),
                ModelSettings {
                    provider: "openai".into(),
                    upstream_model: std::env::var("OPENAI_MODEL")
                        .unwrap_or_else(|_| SEED_OPENAI_MODEL.into()),
                    fallback: vec![],
                    max_retries: None,
                    drop_params: false,
                },
            );
        }
    }

    let r = &config.resilience;
    let breaker = || {
        Breaker::new(
            r.breaker_failure_threshold,
            Duration::from_millis(r.breaker_open_ms),
        )
    };
    let mut upstreams: BTreeMap<String, Upstream> = BTreeMap::new();
    // The built-in mock never fails, so its breaker never opens.
    upstreams.insert(
        "mock".into(),
        Upstream::new(mock, Breaker::new(u32::MAX, Duration::ZERO)),
    );
    for (name, settings) in &providers {
        let provider =
            provider_of(name, settings).map_err(|e| anyhow::anyhow!("providers.{name}: {e}"))?;
        upstreams.insert(name.clone(), Upstream::new(provider, breaker()).named(name));
    }

    let target = |model: &str, m: &ModelSettings| -> anyhow::Result<Target> {
        let upstream = upstreams
            .get(&m.provider)
            .ok_or_else(|| anyhow::anyhow!("models.{model}: no provider {:?}", m.provider))?;
        let upstream_model = if m.upstream_model.is_empty() {
            model
        } else {
            &m.upstream_model
        };
        Ok(Target::new(upstream.clone(), upstream_model).dropping_params(m.drop_params))
    };
    let mut router = Router::default();
    if !models.contains_key("mock") {
        router = router.with(
            "mock",
            Route::new(
                vec![Target::new(upstreams["mock"].clone(), "mock")],
                RetryPolicy::none(),
            ),
        );
    }
    for (name, m) in &models {
        let mut targets = vec![target(name, m)?];
        for fallback in &m.fallback {
            let fm = models
                .get(fallback)
                .ok_or_else(|| anyhow::anyhow!("models.{name}: no fallback model {fallback:?}"))?;
            targets.push(target(fallback, fm)?);
        }
        let retry = RetryPolicy {
            max_retries: m.max_retries.unwrap_or(r.max_retries),
            backoff: Duration::from_millis(r.retry_backoff_ms),
            max_delay: Duration::from_millis(r.max_retry_delay_ms),
        };
        router = router.with(name, Route::new(targets, retry));
    }
    Ok(router)
}
