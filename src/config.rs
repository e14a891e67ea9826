//! Configuration: defaults, then a TOML file, then `GATEWAY_*` variables, then command-line flags.
//! Nested fields use `__` in variable names: `GATEWAY_SESSION__MAX_FRAME_BYTES=65536`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use ai_gateway_actors::{
    AnthropicSettings, GeminiSettings, MockSettings, OpenAiSettings, SessionConfig,
};

use crate::limits::RateLimitSettings;
use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP and WebSocket server binds.
    pub listen: SocketAddr,
    /// This node's name in logs, the welcome frame and (later) the session directory; a random
    /// one when empty.
    pub node_id: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// HS256 secret for session tokens. Empty: a random one per process (tokens die with it).
    pub jwt_secret: String,
    pub token_ttl_secs: u64,
    /// Browser origins allowed to open `/chat`, besides the gateway's own. `["*"]` allows any.
    pub allowed_origins: Vec<String>,
    /// Load balancers (addresses or CIDR ranges) whose `X-Forwarded-For` is believed: behind
    /// them, per-address limits apply to the client's address, not the balancer's.
    pub trusted_proxies: Vec<String>,
    /// `pretty` or `json`.
    pub log_format: LogFormat,
    /// PostgreSQL for users, keys, conversations and usage (also `DATABASE_URL`). Empty: in
    /// memory, for one node.
    pub database_url: String,
    /// Redis for what nodes share (also `REDIS_URL`). Empty: nothing shared.
    pub redis_url: String,
    /// Start of every Redis key and channel this gateway uses.
    pub redis_prefix: String,
    /// How long a validated user or API key is trusted before it is checked again. Revocations
    /// apply at once regardless.
    pub auth_cache_ttl_ms: u64,
    /// How often each node pulls revocations from the store, in case a broadcast was missed.
    pub revocation_sync_ms: u64,
    /// Usage records and conversation turns that may wait for the store during an outage.
    pub write_queue_capacity: usize,
    pub directory: DirectorySettings,
    #[serde(deserialize_with = "crate::limits::deserialize_settings")]
    pub rate_limits: RateLimitSettings,
    pub session: SessionSettings,
    pub shutdown: ShutdownSettings,
    /// The built-in `mock` provider (model `mock`).
    pub mock: MockSettings,
    /// Upstream endpoints by name: `[providers.NAME]` with `kind = "openai" | "anthropic" |
    /// "gemini" | "mock"` and that kind's settings (docs/PROVIDERS.md).
    #[serde(skip_serializing)]
    pub providers: BTreeMap<String, ProviderSettings>,
    /// Model names clients may use: `[models.NAME]`.
    pub models: BTreeMap<String, ModelSettings>,
    pub resilience: ResilienceSettings,
    /// Static bearer token for the admin API, for bootstrapping (`GATEWAY_ADMIN_TOKEN`). Empty:
    /// none; only users with the `admin` role may use it. Never logged.
    pub admin_token: String,
    // Abuse resistance (docs/SECURITY.md).
    /// `POST /register` is open to anyone; false: 403, accounts come from the admin API only.
    pub open_registration: bool,
    /// Largest request body a JSON endpoint accepts; larger is 413.
    pub max_body_bytes: usize,
    /// Live (not revoked, not expired) API keys one user may hold.
    pub max_api_keys_per_user: u32,
    /// Password hashes and checks (argon2id, 19 MiB each) running at once; 0: one per core.
    pub password_hash_concurrency: usize,
    /// How long a login or sign-up waits for a hashing slot before it is refused with 503.
    pub password_hash_wait_ms: u64,
}

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderSettings {
    Openai(OpenAiSettings),
    Anthropic(AnthropicSettings),
    Gemini(GeminiSettings),
    Mock(MockSettings),
}

/// A model name clients may ask for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// A `[providers.NAME]`, or `mock`.
    pub provider: String,
    /// The name the upstream knows; the model's own name when empty.
    #[serde(default)]
    pub upstream_model: String,
    /// Models to try, in order, when this one fails before anything reached the client.
    #[serde(default)]
    pub fallback: Vec<String>,
    /// Overrides `resilience.max_retries` for this model.
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// Drop the request parameters this model's provider cannot take (`seed` on Anthropic,
    /// say) instead of refusing the request with a 400 that names them.
    #[serde(default)]
    pub drop_params: bool,
}

/// Retries and circuit breakers for every upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResilienceSettings {
    /// Further attempts on the same upstream after a retryable failure, while nothing has been
    /// sent to the client.
    pub max_retries: u32,
    /// First pause between attempts; doubles each time. An upstream's `Retry-After` replaces it.
    pub retry_backoff_ms: u64,
    /// A pause longer than this moves on to the fallback instead of waiting.
    pub max_retry_delay_ms: u64,
    /// Failures in a row that open an upstream's circuit breaker.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker refuses calls before letting one probe through.
    pub breaker_open_ms: u64,
}

impl Default for ResilienceSettings {
    fn default() -> Self {
        ResilienceSettings {
            max_retries: 2,
            retry_backoff_ms: 250,
            max_retry_delay_ms: 10_000,
            breaker_failure_threshold: 5,
            breaker_open_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    pub max_frame_bytes: usize,
    pub max_concurrent_requests: usize,
    pub outbox_max_bytes: usize,
    pub outbox_high_watermark_bytes: usize,
    pub heartbeat_interval_ms: u64,
    pub idle_timeout_ms: u64,
    pub close_grace_ms: u64,
    /// How long an HTTP connection whose last exchange is complete waits for the client to
    /// close it before the server does (a WebSocket whose client closed first ends at once).
    pub client_disconnect_timeout_ms: u64,
}

/// The session directory in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectorySettings {
    /// A node that stops refreshing (killed) vanishes from the directory after this.
    pub session_ttl_ms: u64,
    pub refresh_interval_ms: u64,
}

impl Default for DirectorySettings {
    fn default() -> Self {
        DirectorySettings {
            session_ttl_ms: 30_000,
            refresh_interval_ms: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long running streams may finish after SIGTERM before sessions are closed.
    pub drain_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            node_id: String::new(),
            workers: 0,
            jwt_secret: String::new(),
            token_ttl_secs: 7 * 24 * 3600,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Pretty,
            database_url: String::new(),
            redis_url: String::new(),
            redis_prefix: "agw:".into(),
            auth_cache_ttl_ms: 60_000,
            revocation_sync_ms: 10_000,
            write_queue_capacity: 100_000,
            directory: DirectorySettings::default(),
            rate_limits: RateLimitSettings::default(),
            session: SessionSettings::default(),
            shutdown: ShutdownSettings::default(),
            mock: MockSettings::default(),
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            resilience: ResilienceSettings::default(),
            admin_token: String::new(),
            open_registration: true,
            max_body_bytes: 20 * 1024 * 1024,
            max_api_keys_per_user: 100,
            password_hash_concurrency: 0,
            password_hash_wait_ms: 1_000,
        }
    }
}

impl Default for SessionSettings {
    fn default() -> Self {
        SessionSettings {
            max_frame_bytes: 20 * 1024 * 1024,
            max_concurrent_requests: 8,
            outbox_max_bytes: 1024 * 1024,
            outbox_high_watermark_bytes: 64 * 1024,
            heartbeat_interval_ms: 54_000,
            idle_timeout_ms: 120_000,
            close_grace_ms: 2_000,
            client_disconnect_timeout_ms: 1_000,
        }
    }
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings {
            drain_timeout_ms: 30_000,
        }
    }
}

/// What the command line may override; `None` leaves the layers below alone.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// A configuration that cannot be used, with the field to blame.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {}", describe(.0))]
    Parse(Box<figment::Error>),
    #[error("configuration: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

/// `field.path: problem (from source)` for each error figment found.
fn describe(e: &figment::Error) -> String {
    e.clone()
        .into_iter()
        .map(|e| {
            let field = e.path.join(".").to_lowercase();
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            if field.is_empty() {
                format!("{}{source}", e.kind)
            } else {
                format!("{field}: {}{source}", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

impl Config {
    /// Layers the file (when given), the `GATEWAY_*` environment and the flags over the defaults.
    pub fn load(file: Option<&PathBuf>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            fig = fig.merge(Toml::file_exact(path));
        }
        fig = fig
            .merge(Env::raw().only(&["database_url", "redis_url"]))
            .merge(Env::prefixed("GATEWAY_").split("__").ignore(&["config"]))
            .merge(Serialized::defaults(overrides));
        let config: Config = fig.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_owned(),
            })
        };
        let s = &self.session;
        if s.max_frame_bytes < 1024 {
            return invalid("session.max_frame_bytes", "must be at least 1024");
        }
        if s.max_concurrent_requests == 0 {
            return invalid("session.max_concurrent_requests", "must be at least 1");
        }
        if s.outbox_high_watermark_bytes == 0 || s.outbox_high_watermark_bytes >= s.outbox_max_bytes
        {
            return invalid(
                "session.outbox_high_watermark_bytes",
                "must be above 0 and below session.outbox_max_bytes",
            );
        }
        if s.heartbeat_interval_ms == 0 {
            return invalid("session.heartbeat_interval_ms", "must be above 0");
        }
        if s.idle_timeout_ms <= s.heartbeat_interval_ms {
            return invalid(
                "session.idle_timeout_ms",
                "must be longer than session.heartbeat_interval_ms",
            );
        }
        if self.token_ttl_secs == 0 {
            return invalid("token_ttl_secs", "must be above 0");
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            return invalid("jwt_secret", "must be at least 32 bytes");
        }
        if self.jwt_secret.is_empty() && !self.redis_url.is_empty() {
            return invalid(
                "jwt_secret",
                "must be set when nodes share Redis: every node must sign tokens with one secret",
            );
        }
        if let Err(problem) = self.mock.validate() {
            return invalid("mock", &problem);
        }
        if let Err(problem) = self.rate_limits.validate() {
            return invalid("rate_limits", &problem);
        }
        let d = &self.directory;
        if d.refresh_interval_ms == 0 || d.session_ttl_ms <= d.refresh_interval_ms {
            return invalid(
                "directory.session_ttl_ms",
                "must be longer than directory.refresh_interval_ms (which must be above 0)",
            );
        }
        if let Err(problem) = self.trusted_proxy_nets() {
            return invalid("trusted_proxies", &problem);
        }
        if let Some(o) = self.allowed_origins.iter().find(|o| !origin_ok(o)) {
            return invalid(
                "allowed_origins",
                &format!("{o:?} is not \"*\" or an origin like \"https://app.example.com\""),
            );
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "must be at least 1024");
        }
        if self.max_api_keys_per_user == 0 {
            return invalid("max_api_keys_per_user", "must be at least 1");
        }
        if self.revocation_sync_ms == 0 {
            return invalid("revocation_sync_ms", "must be above 0");
        }
        for (name, model) in &self.models {
            if model.provider != "mock" && !self.providers.contains_key(&model.provider) {
                return invalid(
                    "models",
                    &format!(
                        "{name}: provider {:?} is not in [providers]",
                        model.provider
                    ),
                );
            }
            if let Some(f) = model
                .fallback
                .iter()
                .find(|f| *f == name || !self.has_model(f))
            {
                return invalid(
                    "models",
                    &format!("{name}: fallback {f:?} is not another model"),
                );
            }
        }
        Ok(())
    }

    /// `trusted_proxies` parsed; a bare address is a /32 (or /128) range.
    pub fn trusted_proxy_nets(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.trusted_proxies
            .iter()
            .map(|p| {
                p.parse::<ipnet::IpNet>()
                    .or_else(|_| p.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{p:?} is not an address or CIDR range"))
            })
            .collect()
    }

    /// Whether clients may ask for `model` (the built-in `mock` is always there).
    pub fn has_model(&self, model: &str) -> bool {
        model == "mock" || self.models.contains_key(model)
    }

    pub fn session_config(&self, node_id: &str) -> Arc<SessionConfig> {
        let s = &self.session;
        Arc::new(SessionConfig {
            node_id: node_id.into(),
            max_frame_bytes: s.max_frame_bytes,
            max_concurrent_requests: s.max_concurrent_requests,
            outbox_max_bytes: s.outbox_max_bytes,
            outbox_high_watermark_bytes: s.outbox_high_watermark_bytes,
            heartbeat_interval: Duration::from_millis(s.heartbeat_interval_ms),
            idle_timeout: Duration::from_millis(s.idle_timeout_ms),
            close_grace: Duration::from_millis(s.close_grace_ms),
        })
    }
}

/// `*`, or `scheme://host[:port]` with nothing after it.
fn origin_ok(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && !rest.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c))
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail fixes the closures' error type
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                "listen = \"127.0.0.1:9000\"\nworkers = 3\n[session]\nmax_concurrent_requests = 2\n",
            )?;
            jail.set_env("GATEWAY_WORKERS", "5");
            jail.set_env("GATEWAY_LISTEN", "127.0.0.1:9100");
            jail.set_env("GATEWAY_SESSION__MAX_FRAME_BYTES", "4096");
            let file = PathBuf::from("gw.toml");

            let c = Config::load(Some(&file), &Overrides::default()).unwrap();
            assert_eq!(c.workers, 5, "env beats file");
            assert_eq!(c.listen.port(), 9100);
            assert_eq!(c.session.max_concurrent_requests, 2, "file beats defaults");
            assert_eq!(c.session.max_frame_bytes, 4096);
            assert_eq!(c.session.idle_timeout_ms, 120_000, "defaults fill the rest");

            let flags = Overrides {
                listen: Some("127.0.0.1:9200".parse().unwrap()),
            };
            let c = Config::load(Some(&file), &flags).unwrap();
            assert_eq!(c.listen.port(), 9200, "flags beat env");
            Ok(())
        });
    }

    #[test]
    fn bad_values_name_the_field() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GATEWAY_SESSION__MAX_FRAME_BYTES", "lots");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("session.max_frame_bytes: invalid type"),
                "{err}"
            );
            jail.set_env("GATEWAY_SESSION__MAX_FRAME_BYTES", "10");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("session.max_frame_bytes"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn rate_limits_switch_off_with_one_variable() {
        figment::Jail::expect_with(|jail| {
            assert!(
                Config::load(None, &Overrides::default())
                    .unwrap()
                    .rate_limits
                    .enabled
            );
            jail.set_env("GATEWAY_RATE_LIMITS", "off");
            assert!(
                !Config::load(None, &Overrides::default())
                    .unwrap()
                    .rate_limits
                    .enabled
            );
            jail.set_env("GATEWAY_RATE_LIMITS", "sometimes");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("rate_limits"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn database_and_redis_urls_come_from_the_usual_variables() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "postgres://db/x");
            jail.set_env("REDIS_URL", "redis://cache/");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("jwt_secret"),
                "nodes sharing Redis need one secret: {err}"
            );
            jail.set_env("GATEWAY_JWT_SECRET", "0123456789abcdef0123456789abcdef");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.database_url, "postgres://db/x");
            assert_eq!(c.redis_url, "redis://cache/");
            Ok(())
        });
    }

    #[test]
    fn providers_and_models_come_from_file_and_env() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "gw.toml",
                "[providers.local]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\n\
                 [models.small]\nprovider = \"local\"\nupstream_model = \"llama\"\n",
            )?;
            jail.set_env("GATEWAY_PROVIDERS__CLAUDE__KIND", "anthropic");
            jail.set_env("GATEWAY_PROVIDERS__CLAUDE__API_KEY", "sk-ant-test");
            jail.set_env("GATEWAY_MODELS__SONNET__PROVIDER", "claude");
            jail.set_env("GATEWAY_MODELS__SONNET__FALLBACK", "[small]");
            let c = Config::load(Some(&PathBuf::from("gw.toml")), &Overrides::default()).unwrap();
            assert!(matches!(c.providers["local"], ProviderSettings::Openai(_)));
            assert!(matches!(
                c.providers["claude"],
                ProviderSettings::Anthropic(_)
            ));
            assert_eq!(c.models["small"].upstream_model, "llama");
            assert_eq!(c.models["sonnet"].fallback, ["small"]);

            jail.set_env("GATEWAY_MODELS__BROKEN__PROVIDER", "nowhere");
            let err = Config::load(Some(&PathBuf::from("gw.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("nowhere"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn abuse_settings_come_from_the_environment_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(c.open_registration);
            assert_eq!(c.max_body_bytes, 20 * 1024 * 1024);
            assert_eq!(c.max_api_keys_per_user, 100);
            jail.set_env("GATEWAY_OPEN_REGISTRATION", "false");
            jail.set_env("GATEWAY_MAX_API_KEYS_PER_USER", "5");
            jail.set_env(
                "GATEWAY_ALLOWED_ORIGINS",
                "[\"https://app.example.com\", \"http://localhost:3000\"]",
            );
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert!(!c.open_registration);
            assert_eq!(c.max_api_keys_per_user, 5);
            assert_eq!(c.allowed_origins.len(), 2);
            jail.set_env(
                "GATEWAY_ALLOWED_ORIGINS",
                "[\"https://app.example.com/path\"]",
            );
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("allowed_origins"), "{err}");
            jail.set_env("GATEWAY_ALLOWED_ORIGINS", "[\"*\"]");
            jail.set_env("GATEWAY_MAX_BODY_BYTES", "10");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("max_body_bytes"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn unknown_fields_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("gw.toml", "lisen = \"127.0.0.1:1\"\n")?;
            let err = Config::load(Some(&PathBuf::from("gw.toml")), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("lisen"), "{err}");
            Ok(())
        });
    }
}
