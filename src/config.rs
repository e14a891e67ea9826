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
    /// A stored conversation's newest turns sent to the model with a new message: at most this
    /// many messages ...
    pub conversation_history_messages: usize,
    /// ... and this many bytes of their text; older turns are left out.
    pub conversation_history_bytes: usize,
    /// What one stored conversation may hold: at most this many messages ...
    pub conversation_max_messages: usize,
    /// ... and this many bytes of text; past either, its oldest messages are deleted as a new
    /// exchange is stored (that exchange itself is always kept).
    pub conversation_max_bytes: usize,
    /// When set, `/metrics` is served on this address only (an internal listener for the
    /// scraper) and no longer on `listen`.
    pub metrics_listen: Option<SocketAddr>,
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
    /// PEM certificates to trust for PostgreSQL's TLS (with `sslmode=require` in
    /// `database_url`), besides the Mozilla roots. Empty: those roots only.
    pub database_ca_file: String,
    /// Redis for what nodes share (also `REDIS_URL`). Empty: nothing shared.
    pub redis_url: String,
    /// PEM certificates of the CAs that sign a `rediss://` server's certificate, trusted
    /// instead of the system's store. Empty: the system's store (or `SSL_CERT_FILE`).
    pub redis_ca_file: String,
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
    /// Resumable answers: how long they are kept, how long one waits for its client.
    pub resume: ResumeSettings,
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
    /// How long `ai-gateway migrate` and a starting node keep retrying PostgreSQL and Redis
    /// before giving up; 0 waits for ever.
    pub db_connect_timeout_secs: u64,
    /// Development only: start even with a published placeholder secret, or without a
    /// `jwt_secret` while listening beyond loopback (each problem is logged as a warning).
    #[serde(deserialize_with = "deserialize_flag")]
    pub dev_insecure: bool,
}

/// `true`/`false`, or `1`/`0`, `yes`/`no`, `on`/`off` (as `GATEWAY_DEV_INSECURE=1` arrives).
fn deserialize_flag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Number(i64),
        Text(String),
    }
    match Flag::deserialize(d)? {
        Flag::Bool(b) => Ok(b),
        Flag::Number(0) => Ok(false),
        Flag::Number(1) => Ok(true),
        Flag::Text(t) => match t.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "expected true or false (or 1, 0), got {t:?}"
            ))),
        },
        Flag::Number(n) => Err(serde::de::Error::custom(format!(
            "expected true or false (or 1, 0), got {n}"
        ))),
    }
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
    /// A client that takes no frame for this long (it stopped reading) is closed with 1008,
    /// freeing its streams.
    pub write_timeout_ms: u64,
    /// How long an HTTP connection whose last exchange is complete waits for the client to
    /// close it before the server does (a WebSocket whose client closed first ends at once).
    pub client_disconnect_timeout_ms: u64,
    /// How long a `/chat` connection opened without a token may take to send its `auth`
    /// message before it is closed (1008).
    pub auth_timeout_ms: u64,
}

/// Resumable answers (docs/PROTOCOL.md, "Resuming an answer").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeSettings {
    /// How long a finished answer can still be resumed.
    pub retention_ms: u64,
    /// How long an answer whose connection went away runs on, waiting for a resume; 0 cancels
    /// it at once, as before resumable answers.
    pub grace_ms: u64,
    /// Largest journal kept for one answer; a longer answer streams on but cannot be resumed.
    pub max_answer_bytes: usize,
    /// Largest total of every journal on a node; the oldest finished answers go first.
    pub max_journal_bytes: usize,
}

impl Default for ResumeSettings {
    fn default() -> Self {
        let d = ai_gateway_actors::ResumeSettings::default();
        ResumeSettings {
            retention_ms: d.retention.as_millis() as u64,
            grace_ms: d.grace.as_millis() as u64,
            max_answer_bytes: d.max_answer_bytes,
            max_journal_bytes: d.max_journal_bytes,
        }
    }
}

impl ResumeSettings {
    pub fn to_actors(&self) -> ai_gateway_actors::ResumeSettings {
        ai_gateway_actors::ResumeSettings {
            retention: Duration::from_millis(self.retention_ms),
            grace: Duration::from_millis(self.grace_ms),
            max_answer_bytes: self.max_answer_bytes,
            max_journal_bytes: self.max_journal_bytes,
        }
    }
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
            metrics_listen: None,
            conversation_history_messages: 200,
            conversation_history_bytes: 512 * 1024,
            conversation_max_messages: 1_000,
            conversation_max_bytes: 4 * 1024 * 1024,
            node_id: String::new(),
            workers: 0,
            jwt_secret: String::new(),
            token_ttl_secs: 7 * 24 * 3600,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            log_format: LogFormat::Pretty,
            database_url: String::new(),
            database_ca_file: String::new(),
            redis_url: String::new(),
            redis_ca_file: String::new(),
            redis_prefix: "agw:".into(),
            auth_cache_ttl_ms: 60_000,
            revocation_sync_ms: 10_000,
            write_queue_capacity: 100_000,
            directory: DirectorySettings::default(),
            rate_limits: RateLimitSettings::default(),
            session: SessionSettings::default(),
            resume: ResumeSettings::default(),
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
            db_connect_timeout_secs: 60,
            dev_insecure: false,
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
            write_timeout_ms: 30_000,
            client_disconnect_timeout_ms: 1_000,
            auth_timeout_ms: 5_000,
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
    /// A `GATEWAY_<KEY>_FILE` variable that could not be used. Names the variable and the path,
    /// never the secret.
    #[error("configuration: {key}: {problem}")]
    SecretFile { key: String, problem: String },
    /// A secret that is published (a placeholder or a former compose default), or missing where
    /// the node is reachable from the network. `dev_insecure` turns these into warnings.
    #[error(
        "configuration: {field} {problem}; set a real secret (at least 32 random bytes, e.g. \
         `openssl rand -hex 32`), or GATEWAY_DEV_INSECURE=1 for development only"
    )]
    Insecure {
        field: &'static str,
        problem: String,
    },
}

/// Secrets that have been published (in this repository's compose file, README and
/// manifests): a node refuses them unless `dev_insecure` is set.
const PUBLISHED_SECRETS: [&str; 4] = [
    "local-only-jwt-secret-change-me-0123456789",
    "local-only-admin-token",
    "gateway-local-only",
    "change-me-to-32-or-more-random-bytes",
];

/// Words that mark a value as a placeholder to be replaced (matched case-insensitively).
const PLACEHOLDER_MARKERS: [&str; 5] = [
    "change-me",
    "changeme",
    "replace-me",
    "placeholder",
    "local-only",
];

/// Whether `secret` is a published value or a placeholder.
pub fn is_placeholder_secret(secret: &str) -> bool {
    let lower = secret.to_ascii_lowercase();
    PUBLISHED_SECRETS.contains(&secret) || PLACEHOLDER_MARKERS.iter().any(|m| lower.contains(m))
}

/// The keys whose value may come from a file named by `GATEWAY_<KEY>_FILE`, as the
/// lower-case variable name after `GATEWAY_` (nested with `__`) without `_FILE`.
fn is_secret_key(key: &str) -> bool {
    if matches!(
        key,
        "jwt_secret" | "admin_token" | "database_url" | "redis_url"
    ) {
        return true;
    }
    // providers__NAME__api_key
    key.strip_prefix("providers__")
        .and_then(|rest| rest.strip_suffix("__api_key"))
        .is_some_and(|name| !name.is_empty() && !name.contains("__"))
}

/// Whether the variable `name=value` is one Kubernetes sets in every pod for a Service in the
/// same namespace (a "service link"): for a Service `gateway`, `GATEWAY_SERVICE_HOST`,
/// `GATEWAY_SERVICE_PORT`, `GATEWAY_SERVICE_PORT_<PORT NAME>`, `GATEWAY_PORT=tcp://…`,
/// `GATEWAY_PORT_<N>_TCP` and `GATEWAY_PORT_<N>_TCP_PROTO|_PORT|_ADDR` (also `UDP`, `SCTP`).
/// Service names cannot make `__`, so a name with `__` (a nested key of ours) never matches.
/// `…_PORT` alone matches only with a `tcp://`, `udp://` or `sctp://` value, so
/// `GATEWAY_PORT=8080` is still reported as an unknown key.
pub fn is_kubernetes_service_link(name: &str, value: &str) -> bool {
    let name = name.to_ascii_uppercase();
    if name.contains("__") {
        return false;
    }
    let named_service = |service: &str| !service.is_empty();
    if let Some(service) = name.strip_suffix("_SERVICE_HOST") {
        return named_service(service);
    }
    if let Some(service) = name.strip_suffix("_SERVICE_PORT") {
        return named_service(service);
    }
    if let Some((service, port_name)) = name.split_once("_SERVICE_PORT_") {
        return named_service(service) && !port_name.is_empty();
    }
    // <SERVICE>_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR], before `_PORT` alone (which it may end in).
    let protocols = ["_TCP", "_UDP", "_SCTP"];
    let base = ["_PROTO", "_PORT", "_ADDR"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|b| protocols.iter().any(|p| b.ends_with(p)))
        .unwrap_or(&name);
    if let Some(base) = protocols.iter().find_map(|p| base.strip_suffix(p)) {
        let digits = base.len() - base.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if digits > 0
            && base[..base.len() - digits]
                .strip_suffix("_PORT_")
                .is_some_and(named_service)
        {
            return true;
        }
    }
    if let Some(service) = name.strip_suffix("_PORT") {
        let value = value.to_ascii_lowercase();
        return named_service(service)
            && ["tcp://", "udp://", "sctp://"]
                .iter()
                .any(|p| value.starts_with(p));
    }
    false
}

/// The password in a `postgres://` or `redis://` URL, if it has one (still percent-encoded:
/// the placeholders it is compared with need no escapes).
fn url_password(url: &str) -> Option<String> {
    url::Url::parse(url).ok()?.password().map(str::to_owned)
}

/// `url` without its password, for logs and errors: `postgres://user:***@host/db`. A
/// connection string that is not a URL is not shown at all.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(connection string)".into(),
    }
}

/// What the environment adds beyond plain `GATEWAY_*` keys: the Kubernetes variables to
/// ignore and the secrets read from `GATEWAY_<KEY>_FILE`.
struct EnvExtras {
    /// Lower-case names after `GATEWAY_` that the `GATEWAY_*` provider must skip.
    skip: Vec<String>,
    /// Dotted keys and the secrets read for them.
    secrets: Vec<(String, String)>,
}

fn env_extras() -> Result<EnvExtras, ConfigError> {
    let vars: BTreeMap<String, String> = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect();
    let mut extras = EnvExtras {
        skip: Vec::new(),
        secrets: Vec::new(),
    };
    for (name, value) in &vars {
        let Some(rest) = name
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("GATEWAY_"))
            .map(|_| &name[8..])
        else {
            continue;
        };
        let key = rest.to_ascii_lowercase();
        if is_kubernetes_service_link(name, value) {
            extras.skip.push(key);
            continue;
        }
        let Some(target) = key.strip_suffix("_file").filter(|t| is_secret_key(t)) else {
            continue;
        };
        let dotted = target.replace("__", ".");
        let direct = &name[..name.len() - "_FILE".len()];
        if vars.contains_key(direct) {
            return Err(ConfigError::SecretFile {
                key: dotted,
                problem: format!("both {direct} and {name} are set; keep one"),
            });
        }
        let secret = std::fs::read_to_string(value).map_err(|e| ConfigError::SecretFile {
            key: dotted.clone(),
            problem: format!("cannot read {name}={value}: {e}"),
        })?;
        let secret = secret.trim_end_matches(['\n', '\r']).to_owned();
        extras.skip.push(key);
        extras.secrets.push((dotted, secret));
    }
    Ok(extras)
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
        let extras = env_extras()?;
        let skip = extras.skip;
        fig = fig
            .merge(Env::raw().only(&["database_url", "redis_url"]))
            .merge(
                Env::prefixed("GATEWAY_")
                    .ignore(&["config"])
                    .filter(move |k| !skip.iter().any(|s| k == s.as_str()))
                    .split("__"),
            );
        for (key, secret) in extras.secrets {
            fig = fig.merge(Serialized::default(&key, secret));
        }
        fig = fig.merge(Serialized::defaults(overrides));
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
        if self.conversation_max_messages < 2 {
            return invalid(
                "conversation_max_messages",
                "must be at least 2 (a question and its answer)",
            );
        }
        if self.conversation_max_bytes == 0 {
            return invalid("conversation_max_bytes", "must be above 0");
        }
        if s.auth_timeout_ms == 0 {
            return invalid("session.auth_timeout_ms", "must be above 0");
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

    /// Refuses to serve with a published or placeholder secret (`jwt_secret`, `admin_token`, the
    /// passwords in `database_url` and `redis_url`), or without a `jwt_secret` while listening
    /// beyond loopback. With `dev_insecure` each problem is logged as a warning instead.
    pub fn check_secrets(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut check = |field: &'static str, secret: &str| {
            if !secret.is_empty() && is_placeholder_secret(secret) {
                problems.push(ConfigError::Insecure {
                    field,
                    problem: "is a published placeholder".into(),
                });
            }
        };
        check("jwt_secret", &self.jwt_secret);
        check("admin_token", &self.admin_token);
        check(
            "database_url",
            url_password(&self.database_url).as_deref().unwrap_or(""),
        );
        check(
            "redis_url",
            url_password(&self.redis_url).as_deref().unwrap_or(""),
        );
        if self.jwt_secret.is_empty() && !self.listen.ip().is_loopback() {
            problems.push(ConfigError::Insecure {
                field: "jwt_secret",
                problem: format!(
                    "is empty while listening on {}, beyond loopback (a random one per process \
                     would log every user out at each restart)",
                    self.listen
                ),
            });
        }
        match problems.into_iter().next() {
            None => Ok(()),
            Some(first) if !self.dev_insecure => Err(first),
            Some(first) => {
                tracing::warn!("dev_insecure is set, starting anyway: {first}");
                Ok(())
            }
        }
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
            write_timeout: Duration::from_millis(s.write_timeout_ms.max(1)),
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

    /// What Kubernetes sets in every pod of a namespace with Services `gateway` (ports named
    /// `http` and `metrics`) and `gateway-redis`.
    fn kubernetes_service_links(jail: &mut figment::Jail) {
        for (k, v) in [
            ("GATEWAY_SERVICE_HOST", "10.96.0.11"),
            ("GATEWAY_SERVICE_PORT", "8080"),
            ("GATEWAY_SERVICE_PORT_HTTP", "8080"),
            ("GATEWAY_SERVICE_PORT_METRICS", "9090"),
            ("GATEWAY_PORT", "tcp://10.96.0.11:8080"),
            ("GATEWAY_PORT_8080_TCP", "tcp://10.96.0.11:8080"),
            ("GATEWAY_PORT_8080_TCP_PROTO", "tcp"),
            ("GATEWAY_PORT_8080_TCP_PORT", "8080"),
            ("GATEWAY_PORT_8080_TCP_ADDR", "10.96.0.11"),
            ("GATEWAY_PORT_9090_UDP", "udp://10.96.0.11:9090"),
            ("GATEWAY_REDIS_SERVICE_HOST", "10.96.0.12"),
            ("GATEWAY_REDIS_SERVICE_PORT", "6379"),
            ("GATEWAY_REDIS_PORT", "tcp://10.96.0.12:6379"),
            ("GATEWAY_REDIS_PORT_6379_TCP", "tcp://10.96.0.12:6379"),
            ("GATEWAY_REDIS_PORT_6379_TCP_PROTO", "tcp"),
            ("GATEWAY_REDIS_PORT_6379_TCP_PORT", "6379"),
            ("GATEWAY_REDIS_PORT_6379_TCP_ADDR", "10.96.0.12"),
        ] {
            jail.set_env(k, v);
        }
    }

    #[test]
    fn kubernetes_service_variables_do_not_stop_a_node() {
        figment::Jail::expect_with(|jail| {
            kubernetes_service_links(jail);
            jail.set_env("GATEWAY_NODE_ID", "gw-7");
            jail.set_env("GATEWAY_LISTEN", "0.0.0.0:8080");
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.node_id, "gw-7", "our own keys still apply");
            assert_eq!(c.listen.port(), 8080);
            Ok(())
        });
    }

    #[test]
    fn typos_in_our_own_keys_are_still_reported_beside_kubernetes_variables() {
        for (name, value, expect) in [
            ("GATEWAY_NODEID", "gw-1", "nodeid"),
            ("GATEWAY_PORT", "8080", "port"),
            ("GATEWAY_LISTEN_PORT", "8080", "listen_port"),
            ("GATEWAY_SERVICE_HOSTS", "10.0.0.1", "service_hosts"),
            ("GATEWAY_SESSION__SERVICE_HOST", "10.0.0.1", "service_host"),
            ("GATEWAY_SESSION__MAX_FRAME_BYTE", "4096", "max_frame_byte"),
            ("GATEWAY_JWT_SECRT_FILE", "/nowhere", "jwt_secrt_file"),
        ] {
            figment::Jail::expect_with(|jail| {
                kubernetes_service_links(jail);
                jail.set_env(name, value);
                let err = Config::load(None, &Overrides::default())
                    .expect_err(name)
                    .to_string();
                assert!(err.contains(expect), "{name}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn the_kubernetes_rule_never_hides_a_key_of_ours() {
        // Every key the configuration has, at any depth, as a variable with any value.
        fn keys(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    let name = format!("{prefix}{}", k.to_ascii_uppercase());
                    out.push(name.clone());
                    keys(&format!("{name}__"), v, out);
                }
            }
        }
        let mut names = vec!["GATEWAY_PROVIDERS".to_owned()];
        keys(
            "GATEWAY_",
            &serde_json::to_value(Config::default()).unwrap(),
            &mut names,
        );
        assert!(names.len() > 40, "{names:?}");
        for name in &names {
            for value in ["tcp://10.0.0.1:80", "8080", "10.0.0.1"] {
                assert!(
                    !is_kubernetes_service_link(name, value),
                    "{name}={value} would be ignored"
                );
            }
        }
        assert!(is_kubernetes_service_link(
            "GATEWAY_PORT",
            "tcp://10.0.0.1:8080"
        ));
        assert!(!is_kubernetes_service_link("GATEWAY_PORT", "8080"));
        assert!(!is_kubernetes_service_link("SERVICE_HOST", "10.0.0.1"));
        assert!(!is_kubernetes_service_link("GATEWAY_PORT_TCP", "tcp"));
    }

    #[test]
    fn secrets_come_from_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("jwt", "0123456789abcdef0123456789abcdef\n")?;
            jail.create_file("admin", "admin-token-from-file\r\n")?;
            jail.create_file("db", "postgres://gw:pw@db:5432/gw\n")?;
            jail.create_file("redis", "redis://:pw@cache:6379/\n")?;
            jail.create_file("openai", "sk-from-file\n")?;
            let dir = jail.directory().to_owned();
            let path = |f: &str| dir.join(f).display().to_string();
            jail.set_env("GATEWAY_JWT_SECRET_FILE", path("jwt"));
            jail.set_env("GATEWAY_ADMIN_TOKEN_FILE", path("admin"));
            jail.set_env("GATEWAY_DATABASE_URL_FILE", path("db"));
            jail.set_env("DATABASE_URL", "postgres://ignored/x");
            jail.set_env("GATEWAY_REDIS_URL_FILE", path("redis"));
            jail.set_env("GATEWAY_PROVIDERS__UP__KIND", "openai");
            jail.set_env("GATEWAY_PROVIDERS__UP__API_KEY_FILE", path("openai"));
            kubernetes_service_links(jail);
            let c = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(c.jwt_secret, "0123456789abcdef0123456789abcdef");
            assert_eq!(c.admin_token, "admin-token-from-file");
            assert_eq!(c.database_url, "postgres://gw:pw@db:5432/gw");
            assert_eq!(c.redis_url, "redis://:pw@cache:6379/");
            let ProviderSettings::Openai(up) = &c.providers["up"] else {
                panic!("{:?}", c.providers);
            };
            assert_eq!(up.api_key.as_ref().unwrap().expose(), "sk-from-file");
            Ok(())
        });
    }

    #[test]
    fn unusable_secret_files_are_reported_without_the_secret() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("GATEWAY_JWT_SECRET_FILE", "/nonexistent/jwt");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("jwt_secret")
                    && err.contains("GATEWAY_JWT_SECRET_FILE=/nonexistent/jwt"),
                "{err}"
            );

            jail.create_file("jwt", "the-secret-itself-0123456789abcdef\n")?;
            jail.set_env("GATEWAY_JWT_SECRET_FILE", "jwt");
            jail.set_env("GATEWAY_JWT_SECRET", "another-secret-0123456789abcdef0123");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("both GATEWAY_JWT_SECRET and GATEWAY_JWT_SECRET_FILE"),
                "{err}"
            );
            assert!(
                !err.contains("secret-0123") && !err.contains("itself"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn published_secrets_are_refused_unless_dev_insecure() {
        let compose_defaults = Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            jwt_secret: "local-only-jwt-secret-change-me-0123456789".into(),
            ..Config::default()
        };
        let err = compose_defaults.check_secrets().unwrap_err().to_string();
        assert!(
            err.contains("jwt_secret is a published placeholder"),
            "{err}"
        );
        assert!(err.contains("GATEWAY_DEV_INSECURE=1"), "{err}");
        assert!(
            !err.contains("0123456789"),
            "the secret is not repeated: {err}"
        );

        let good = "9f1c2e7a5b3d4c6e8f0a1b2c3d4e5f60";
        for (config, field) in [
            (
                Config {
                    jwt_secret: good.into(),
                    admin_token: "local-only-admin-token".into(),
                    ..Config::default()
                },
                "admin_token",
            ),
            (
                Config {
                    jwt_secret: good.into(),
                    database_url: "postgres://gateway:gateway-local-only@postgres:5432/gateway"
                        .into(),
                    ..Config::default()
                },
                "database_url",
            ),
            (
                Config {
                    jwt_secret: good.into(),
                    redis_url: "redis://:REPLACE-ME@redis:6379/".into(),
                    ..Config::default()
                },
                "redis_url",
            ),
            (
                Config {
                    listen: "0.0.0.0:8080".parse().unwrap(),
                    ..Config::default()
                },
                "jwt_secret is empty",
            ),
        ] {
            let err = config.check_secrets().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
            let dev = Config {
                dev_insecure: true,
                ..config
            };
            dev.check_secrets().expect("dev_insecure starts anyway");
        }

        // Real secrets, and the zero-configuration development node on loopback, start.
        Config {
            listen: "0.0.0.0:8080".parse().unwrap(),
            jwt_secret: good.into(),
            admin_token: "a8d7f6e5c4b3a2918f7e6d5c".into(),
            database_url: "postgres://gateway:Zq8x3v@postgres:5432/gateway".into(),
            ..Config::default()
        }
        .check_secrets()
        .unwrap();
        Config::default().check_secrets().unwrap();
    }

    #[test]
    fn dev_insecure_takes_the_usual_spellings() {
        figment::Jail::expect_with(|jail| {
            for (value, expect) in [("1", true), ("true", true), ("0", false), ("false", false)] {
                jail.set_env("GATEWAY_DEV_INSECURE", value);
                let c = Config::load(None, &Overrides::default()).unwrap();
                assert_eq!(c.dev_insecure, expect, "{value}");
            }
            jail.set_env("GATEWAY_DEV_INSECURE", "maybe");
            let err = Config::load(None, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("dev_insecure"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn urls_are_redacted_for_logs() {
        assert_eq!(
            redact_url("postgres://gw:s3cret@db:5432/gw"),
            "postgres://gw:***@db:5432/gw"
        );
        assert_eq!(redact_url("redis://cache:6379/"), "redis://cache:6379/");
        assert_eq!(redact_url("host=db password=s3cret"), "(connection string)");
    }
}
