//! Rate limits, shared by every node through Redis when it is configured, else per node in memory.
//!
//! Each decision is one atomic Redis script (no read-then-write race between nodes). When Redis
//! is configured but unreachable, decisions fall back to this node's in-memory limiter with the
//! same settings: the limits still hold per node, neither failing open nor locking users out.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use ai_gateway_actors::{metrics::LimitLabel, unix_time::now_unix_secs};
use deadpool_redis::redis;
use governor::{clock::Clock, DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::metrics::{counter::Counter, family::Family};
use serde::{Deserialize, Deserializer, Serialize};

use async_trait::async_trait;
use futures_util::future::BoxFuture;

use crate::{
    cluster::{Cluster, ClusterError},
    store::utc_day,
};

/// The limits, each configurable; `GATEWAY_RATE_LIMITS=off` turns them all off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    pub enabled: bool,
    pub handshakes_per_ip_per_min: u32,
    pub handshake_burst: u32,
    /// The seed's login limit: 5 per minute per address.
    pub logins_per_ip_per_min: u32,
    pub login_burst: u32,
    pub chat_requests_per_user_per_min: u32,
    pub chat_request_burst: u32,
    pub concurrent_streams_per_user: u32,
    /// Tokens (prompt and completion) one user may spend per UTC day; 0: no budget. The old
    /// name `completion_tokens_per_user_per_day` is still read.
    #[serde(alias = "completion_tokens_per_user_per_day")]
    pub tokens_per_user_per_day: u64,
    /// A node that dies mid-stream leaves its streams counted until this expires.
    pub stream_lease_ttl_ms: u64,
    /// Sign-ups (`POST /register`) per client address per hour, after the burst.
    pub registrations_per_ip_per_hour: u32,
    pub registration_burst: u32,
    /// Failed logins per username per hour, after the burst; past it that name's logins are
    /// refused (429) before any password is checked, whoever sends them.
    pub failed_logins_per_account_per_hour: u32,
    pub failed_login_account_burst: u32,
    /// Presented tokens or API keys that match nothing, per client address per minute, after
    /// the burst; past it that address's authenticated requests are refused (429) unchecked.
    pub failed_auth_per_ip_per_min: u32,
    pub failed_auth_burst: u32,
    /// WebSocket sessions one user may hold open at once on one node.
    pub sessions_per_user_per_node: u32,
    /// `/chat` connections opened without a token and still waiting for their `auth` message,
    /// per client address on one node.
    pub unauthenticated_sockets_per_ip: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            enabled: true,
            handshakes_per_ip_per_min: 120,
            handshake_burst: 20,
            logins_per_ip_per_min: 5,
            login_burst: 5,
            chat_requests_per_user_per_min: 60,
            chat_request_burst: 20,
            concurrent_streams_per_user: 16,
            tokens_per_user_per_day: 2_000_000,
            stream_lease_ttl_ms: 600_000,
            registrations_per_ip_per_hour: 10,
            registration_burst: 5,
            failed_logins_per_account_per_hour: 30,
            failed_login_account_burst: 10,
            failed_auth_per_ip_per_min: 30,
            failed_auth_burst: 30,
            sessions_per_user_per_node: 50,
            unauthenticated_sockets_per_ip: 16,
        }
    }
}

impl RateLimitSettings {
    pub fn off() -> Self {
        RateLimitSettings {
            enabled: false,
            ..Default::default()
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("handshakes_per_ip_per_min", self.handshakes_per_ip_per_min),
            ("handshake_burst", self.handshake_burst),
            ("logins_per_ip_per_min", self.logins_per_ip_per_min),
            ("login_burst", self.login_burst),
            (
                "chat_requests_per_user_per_min",
                self.chat_requests_per_user_per_min,
            ),
            ("chat_request_burst", self.chat_request_burst),
            (
                "registrations_per_ip_per_hour",
                self.registrations_per_ip_per_hour,
            ),
            ("registration_burst", self.registration_burst),
            (
                "failed_logins_per_account_per_hour",
                self.failed_logins_per_account_per_hour,
            ),
            (
                "failed_login_account_burst",
                self.failed_login_account_burst,
            ),
            (
                "failed_auth_per_ip_per_min",
                self.failed_auth_per_ip_per_min,
            ),
            ("failed_auth_burst", self.failed_auth_burst),
            (
                "sessions_per_user_per_node",
                self.sessions_per_user_per_node,
            ),
            (
                "concurrent_streams_per_user",
                self.concurrent_streams_per_user,
            ),
            (
                "unauthenticated_sockets_per_ip",
                self.unauthenticated_sockets_per_ip,
            ),
        ];
        match rates.iter().find(|(_, v)| *v == 0) {
            Some((name, _)) => Err(format!("rate_limits.{name} must be at least 1")),
            None => Ok(()),
        }
    }
}

/// `rate_limits = "off"` (or `GATEWAY_RATE_LIMITS=off`) or a table of limits.
pub fn deserialize_settings<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<RateLimitSettings, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Switch(String),
        Table(RateLimitSettings),
    }
    match Raw::deserialize(d)? {
        Raw::Table(t) => Ok(t),
        Raw::Switch(s) if s.eq_ignore_ascii_case("off") => Ok(RateLimitSettings::off()),
        Raw::Switch(s) if s.eq_ignore_ascii_case("on") => Ok(RateLimitSettings::default()),
        Raw::Switch(s) => Err(serde::de::Error::custom(format!(
            "expected \"on\", \"off\" or a table, found {s:?}"
        ))),
    }
}

/// What a limit decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    Denied { retry_after: Duration },
}

/// The rate-based limits: every event counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    HandshakePerIp,
    LoginPerIp,
    ChatPerUser,
    RegisterPerIp,
}

impl Rate {
    fn name(self) -> &'static str {
        match self {
            Rate::HandshakePerIp => "handshake",
            Rate::LoginPerIp => "login",
            Rate::ChatPerUser => "chat",
            Rate::RegisterPerIp => "register",
        }
    }
}

/// Limits on failures: only failures count ([`Limits::failed`]), and once they are used up every
/// attempt is refused ([`Limits::blocked`]) until the bucket refills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Wrong passwords, by username.
    LoginPerAccount,
    /// Tokens and API keys that matched nothing, by client address.
    AuthPerIp,
}

impl Failure {
    fn name(self) -> &'static str {
        match self {
            Failure::LoginPerAccount => "login_account",
            Failure::AuthPerIp => "auth_failures",
        }
    }
}

/// `(milliseconds between events, burst)` of a limit.
type Pace = (u64, u32);

fn per_minute(n: u32) -> u64 {
    60_000 / u64::from(n.max(1))
}

fn per_hour(n: u32) -> u64 {
    3_600_000 / u64::from(n.max(1))
}

/// A GCRA over a map, for the failure limits when Redis is not there: unlike governor's, it can
/// be asked without spending.
#[derive(Default)]
struct LocalGcra {
    /// key → theoretical arrival time, in ms since `start`.
    tats: Mutex<HashMap<String, u64>>,
}

fn local_now_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

impl LocalGcra {
    /// 0 when allowed, else milliseconds to wait; `spend` counts the event when allowed.
    fn decide(&self, key: &str, (interval, burst): Pace, spend: bool) -> u64 {
        let tolerance = interval * u64::from(burst.max(1) - 1);
        let now = local_now_ms();
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let allow_at = tat.saturating_sub(tolerance);
        if now < allow_at {
            return allow_at - now;
        }
        if spend {
            tats.insert(key.to_owned(), tat + interval);
        }
        0
    }

    fn prune(&self) {
        let now = local_now_ms();
        self.tats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, tat| *tat > now);
    }
}

/// Held while a stream runs; dropping it frees the user's slot.
pub struct StreamLease {
    release: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for StreamLease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}

/// GCRA: one script call per decision. Returns 0 when allowed, else milliseconds to wait.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then return allow_at - now end
if ARGV[3] == '1' then return 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
return 0
";

const ACQUIRE: &str = r"
local n = redis.call('INCR', KEYS[1])
if n > tonumber(ARGV[1]) then
  redis.call('DECR', KEYS[1])
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

const RELEASE: &str = r"
local n = redis.call('DECR', KEYS[1])
if n <= 0 then redis.call('DEL', KEYS[1]) end
return n
";

/// Seconds between two warnings that Redis is down, so an outage does not flood the log.
const WARN_EVERY_SECS: u64 = 10;

pub struct Limits {
    settings: RateLimitSettings,
    rejections: Family<LimitLabel, Counter>,
    /// Shared by every node; asked first when configured.
    redis: Option<RedisLimits>,
    /// This node's own; answers whenever Redis does not.
    local: LocalLimits,
    last_warned: AtomicU64,
}

/// What a GCRA paces: a rate, or a kind of failure.
#[derive(Debug, Clone, Copy)]
enum Paced {
    Rate(Rate),
    Failure(Failure),
}

impl Paced {
    fn name(self) -> &'static str {
        match self {
            Paced::Rate(r) => r.name(),
            Paced::Failure(f) => f.name(),
        }
    }
}

/// Where limits are counted: Redis, for every node, or this node's memory, which never fails.
#[async_trait]
trait LimitBackend: Send + Sync {
    /// One GCRA decision for `key`; `spend` counts the event when it is allowed.
    async fn pace(
        &self,
        paced: Paced,
        key: &str,
        pace: Pace,
        spend: bool,
    ) -> Result<Decision, ClusterError>;

    /// One of the user's `limit` concurrent stream slots, or `None` when all are taken.
    async fn stream_slot(
        &self,
        user_id: &str,
        limit: u32,
        lease_ttl_ms: u64,
    ) -> Result<Option<StreamLease>, ClusterError>;

    /// Completion tokens the user spent on `day`.
    async fn tokens_spent(&self, user_id: &str, day: &str) -> Result<u64, ClusterError>;

    async fn spend_tokens(&self, user_id: &str, day: &str, tokens: u64)
        -> Result<(), ClusterError>;
}

struct RedisLimits {
    cluster: Arc<Cluster>,
}

#[async_trait]
impl LimitBackend for RedisLimits {
    async fn pace(
        &self,
        paced: Paced,
        key: &str,
        (interval_ms, burst): Pace,
        spend: bool,
    ) -> Result<Decision, ClusterError> {
        let tolerance_ms = interval_ms * u64::from(burst.max(1) - 1);
        let key = self.cluster.key(&format!("rl:{}:{key}", paced.name()));
        let mut conn = self.cluster.conn().await?;
        let wait_ms: u64 = redis::Script::new(GCRA)
            .key(key)
            .arg(interval_ms)
            .arg(tolerance_ms)
            .arg(if spend { "0" } else { "1" })
            .invoke_async(&mut conn)
            .await?;
        Ok(match wait_ms {
            0 => Decision::Allowed,
            ms => Decision::Denied {
                retry_after: Duration::from_millis(ms),
            },
        })
    }

    async fn stream_slot(
        &self,
        user_id: &str,
        limit: u32,
        lease_ttl_ms: u64,
    ) -> Result<Option<StreamLease>, ClusterError> {
        let key = self.cluster.key(&format!("streams:{user_id}"));
        let mut conn = self.cluster.conn().await?;
        let got: u8 = redis::Script::new(ACQUIRE)
            .key(&key)
            .arg(limit)
            .arg(lease_ttl_ms)
            .invoke_async(&mut conn)
            .await?;
        if got == 0 {
            return Ok(None);
        }
        let cluster = self.cluster.clone();
        let release = move || {
            let Ok(rt) = tokio::runtime::Handle::try_current() else {
                return;
            };
            rt.spawn(async move {
                if let Ok(mut conn) = cluster.conn().await {
                    let _: Result<i64, _> = redis::Script::new(RELEASE)
                        .key(key)
                        .invoke_async(&mut conn)
                        .await;
                }
            });
        };
        Ok(Some(StreamLease {
            release: Some(Box::new(release)),
        }))
    }

    async fn tokens_spent(&self, user_id: &str, day: &str) -> Result<u64, ClusterError> {
        let key = self.cluster.key(&format!("tokens:{user_id}:{day}"));
        let mut conn = self.cluster.conn().await?;
        let used: Option<u64> = redis::cmd("GET").arg(key).query_async(&mut conn).await?;
        Ok(used.unwrap_or(0))
    }

    async fn spend_tokens(
        &self,
        user_id: &str,
        day: &str,
        tokens: u64,
    ) -> Result<(), ClusterError> {
        let key = self.cluster.key(&format!("tokens:{user_id}:{day}"));
        let mut conn = self.cluster.conn().await?;
        redis::pipe()
            .atomic()
            .cmd("INCRBY")
            .arg(&key)
            .arg(tokens)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(2 * 24 * 3600)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}

struct LocalLimits {
    handshakes: DefaultKeyedRateLimiter<String>,
    logins: DefaultKeyedRateLimiter<String>,
    chats: DefaultKeyedRateLimiter<String>,
    registrations: DefaultKeyedRateLimiter<String>,
    failures: LocalGcra,
    streams: Arc<Mutex<HashMap<String, u32>>>,
    /// Open WebSocket sessions by user, on this node.
    sessions: Arc<Mutex<HashMap<String, u32>>>,
    /// WebSocket connections waiting for their `auth` message, by client address, on this node.
    unauthenticated: Arc<Mutex<HashMap<String, u32>>>,
    /// `(user, day)` → completion tokens.
    tokens: Mutex<HashMap<(String, String), u64>>,
}

#[async_trait]
impl LimitBackend for LocalLimits {
    async fn pace(
        &self,
        paced: Paced,
        key: &str,
        pace: Pace,
        spend: bool,
    ) -> Result<Decision, ClusterError> {
        let limiter = match paced {
            Paced::Rate(Rate::HandshakePerIp) => &self.handshakes,
            Paced::Rate(Rate::LoginPerIp) => &self.logins,
            Paced::Rate(Rate::ChatPerUser) => &self.chats,
            Paced::Rate(Rate::RegisterPerIp) => &self.registrations,
            Paced::Failure(failure) => {
                return Ok(
                    match self.failures.decide(&local_key(failure, key), pace, spend) {
                        0 => Decision::Allowed,
                        ms => Decision::Denied {
                            retry_after: Duration::from_millis(ms),
                        },
                    },
                );
            }
        };
        Ok(match limiter.check_key(&key.to_owned()) {
            Ok(()) => Decision::Allowed,
            Err(not_until) => Decision::Denied {
                retry_after: not_until
                    .wait_time_from(governor::clock::DefaultClock::default().now()),
            },
        })
    }

    async fn stream_slot(
        &self,
        user_id: &str,
        limit: u32,
        _: u64,
    ) -> Result<Option<StreamLease>, ClusterError> {
        Ok(counted_slot(&self.streams, user_id, limit))
    }

    async fn tokens_spent(&self, user_id: &str, day: &str) -> Result<u64, ClusterError> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        Ok(tokens
            .get(&(user_id.to_owned(), day.to_owned()))
            .copied()
            .unwrap_or(0))
    }

    async fn spend_tokens(
        &self,
        user_id: &str,
        day: &str,
        tokens: u64,
    ) -> Result<(), ClusterError> {
        let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|(_, d), _| d == day);
        *map.entry((user_id.to_owned(), day.to_owned())).or_default() += tokens;
        Ok(())
    }
}

fn quota(per_min: u32, burst: u32) -> Quota {
    let per_min = NonZeroU32::new(per_min.max(1)).expect("at least 1");
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Quota::per_minute(per_min).allow_burst(burst)
}

/// One of `limit` places of `key` in an in-memory count, freed when the lease drops.
fn counted_slot(
    counts: &Arc<Mutex<HashMap<String, u32>>>,
    key: &str,
    limit: u32,
) -> Option<StreamLease> {
    {
        let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.to_owned()).or_default();
        if *n >= limit {
            return None;
        }
        *n += 1;
    }
    let counts = counts.clone();
    let key = key.to_owned();
    Some(StreamLease {
        release: Some(Box::new(move || {
            let mut map = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        })),
    })
}

fn local_key(failure: Failure, key: &str) -> String {
    format!("{}:{key}", failure.name())
}

impl Limits {
    pub fn new(settings: RateLimitSettings, cluster: Option<Arc<Cluster>>) -> Arc<Limits> {
        Self::counted(settings, cluster, Family::default())
    }

    /// Limits whose refusals are counted in `rejections`, by limit.
    pub fn counted(
        settings: RateLimitSettings,
        cluster: Option<Arc<Cluster>>,
        rejections: Family<LimitLabel, Counter>,
    ) -> Arc<Limits> {
        let s = &settings;
        let local = LocalLimits {
            handshakes: RateLimiter::keyed(quota(s.handshakes_per_ip_per_min, s.handshake_burst)),
            logins: RateLimiter::keyed(quota(s.logins_per_ip_per_min, s.login_burst)),
            chats: RateLimiter::keyed(quota(
                s.chat_requests_per_user_per_min,
                s.chat_request_burst,
            )),
            registrations: RateLimiter::keyed(
                Quota::with_period(Duration::from_millis(per_hour(
                    s.registrations_per_ip_per_hour,
                )))
                .expect("a period of at least 360 ms")
                .allow_burst(NonZeroU32::new(s.registration_burst.max(1)).expect("at least 1")),
            ),
            failures: LocalGcra::default(),
            streams: Arc::default(),
            sessions: Arc::default(),
            unauthenticated: Arc::default(),
            tokens: Mutex::default(),
        };
        Arc::new(Limits {
            settings,
            rejections,
            redis: cluster.map(|cluster| RedisLimits { cluster }),
            local,
            last_warned: AtomicU64::new(0),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    fn rejected(&self, limit: &'static str) {
        self.rejections.get_or_create(&LimitLabel { limit }).inc();
    }

    fn redis_failed(&self, what: &str, e: &dyn std::fmt::Display) {
        let now = now_unix_secs();
        let last = self.last_warned.load(Ordering::Relaxed);
        if now >= last + WARN_EVERY_SECS
            && self
                .last_warned
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(error = %e, limit = what, "Redis unreachable: rate limits hold per node until it returns");
        }
    }

    /// Asks Redis when it is configured; when it is not, or cannot be reached, this node's
    /// memory, so the limits still hold per node, neither failing open nor locking users out.
    async fn shared_or_local<'a, T>(
        &'a self,
        what: &'static str,
        ask: impl Fn(&'a dyn LimitBackend) -> BoxFuture<'a, Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        if let Some(redis) = &self.redis {
            match ask(redis).await {
                Ok(answer) => return Ok(answer),
                Err(e) => self.redis_failed(what, &e),
            }
        }
        ask(&self.local).await
    }

    /// One more event of `rate` for `key` (an address or a user id).
    pub async fn check(&self, rate: Rate, key: &str) -> Decision {
        let decision = self.decide(rate, key).await;
        if decision != Decision::Allowed {
            self.rejected(rate.name());
        }
        decision
    }

    async fn decide(&self, rate: Rate, key: &str) -> Decision {
        if !self.settings.enabled {
            return Decision::Allowed;
        }
        let s = &self.settings;
        let pace = match rate {
            Rate::HandshakePerIp => (per_minute(s.handshakes_per_ip_per_min), s.handshake_burst),
            Rate::LoginPerIp => (per_minute(s.logins_per_ip_per_min), s.login_burst),
            Rate::ChatPerUser => (
                per_minute(s.chat_requests_per_user_per_min),
                s.chat_request_burst,
            ),
            Rate::RegisterPerIp => (
                per_hour(s.registrations_per_ip_per_hour),
                s.registration_burst,
            ),
        };
        self.shared_or_local(rate.name(), |b| b.pace(Paced::Rate(rate), key, pace, true))
            .await
            // Memory never fails.
            .unwrap_or(Decision::Allowed)
    }

    fn failure_pace(&self, failure: Failure) -> Pace {
        let s = &self.settings;
        match failure {
            Failure::LoginPerAccount => (
                per_hour(s.failed_logins_per_account_per_hour),
                s.failed_login_account_burst,
            ),
            Failure::AuthPerIp => (
                per_minute(s.failed_auth_per_ip_per_min),
                s.failed_auth_burst,
            ),
        }
    }

    /// Whether `key` has used up its allowance of `failure`s; asking spends nothing.
    pub async fn blocked(&self, failure: Failure, key: &str) -> Decision {
        if !self.settings.enabled {
            return Decision::Allowed;
        }
        let pace = self.failure_pace(failure);
        let decision = self
            .shared_or_local(failure.name(), |b| {
                b.pace(Paced::Failure(failure), key, pace, false)
            })
            .await
            .unwrap_or(Decision::Allowed);
        if decision != Decision::Allowed {
            self.rejected(failure.name());
        }
        decision
    }

    /// Counts one `failure` of `key`.
    pub async fn failed(&self, failure: Failure, key: &str) {
        if !self.settings.enabled {
            return;
        }
        let pace = self.failure_pace(failure);
        let _ = self
            .shared_or_local(failure.name(), |b| {
                b.pace(Paced::Failure(failure), key, pace, true)
            })
            .await;
    }

    /// Takes one of the user's concurrent stream slots, or says none is free.
    pub async fn acquire_stream(&self, user_id: &str) -> Option<StreamLease> {
        if !self.settings.enabled {
            return Some(StreamLease { release: None });
        }
        let (limit, ttl_ms) = (
            self.settings.concurrent_streams_per_user,
            self.settings.stream_lease_ttl_ms,
        );
        let lease = self
            .shared_or_local("streams", |b| b.stream_slot(user_id, limit, ttl_ms))
            .await
            .unwrap_or(None);
        if lease.is_none() {
            self.rejected("streams");
        }
        lease
    }

    /// Takes one of the user's WebSocket session places on this node, or says none is free. The
    /// lease is held as long as the connection lives.
    pub fn acquire_session(&self, user_id: &str) -> Option<StreamLease> {
        if !self.settings.enabled {
            return Some(StreamLease { release: None });
        }
        let lease = counted_slot(
            &self.local.sessions,
            user_id,
            self.settings.sessions_per_user_per_node,
        );
        if lease.is_none() {
            self.rejected("sessions");
        }
        lease
    }

    /// A place for a `/chat` connection from address key `from` that waits for its `auth`
    /// message; `None` when that address already holds `unauthenticated_sockets_per_ip`.
    pub fn acquire_unauthenticated(&self, from: &str) -> Option<StreamLease> {
        if !self.settings.enabled {
            return Some(StreamLease { release: None });
        }
        let lease = counted_slot(
            &self.local.unauthenticated,
            from,
            self.settings.unauthenticated_sockets_per_ip,
        );
        if lease.is_none() {
            self.rejected("unauthenticated_sockets");
        }
        lease
    }

    /// Whether the user has spent today's token budget.
    pub async fn token_budget_spent(&self, user_id: &str) -> bool {
        let budget = self.settings.tokens_per_user_per_day;
        if !self.settings.enabled || budget == 0 {
            return false;
        }
        let day = utc_day(SystemTime::now());
        let spent = self
            .shared_or_local("tokens", |b| b.tokens_spent(user_id, &day))
            .await
            .unwrap_or(0)
            >= budget;
        if spent {
            self.rejected("tokens");
        }
        spent
    }

    /// Counts the tokens (prompt and completion) a finished request spent.
    pub async fn spend_tokens(&self, user_id: &str, tokens: u64) {
        if !self.settings.enabled || tokens == 0 {
            return;
        }
        let day = utc_day(SystemTime::now());
        let _ = self
            .shared_or_local("tokens", |b| b.spend_tokens(user_id, &day, tokens))
            .await;
    }

    /// Forgets idle in-memory limiter state; call now and then so memory stays bounded.
    pub fn prune(&self) {
        self.local.handshakes.retain_recent();
        self.local.logins.retain_recent();
        self.local.chats.retain_recent();
        self.local.registrations.retain_recent();
        self.local.failures.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn local_rates_refuse_past_the_burst() {
        let limits = Limits::new(
            RateLimitSettings {
                logins_per_ip_per_min: 1,
                login_burst: 2,
                ..Default::default()
            },
            None,
        );
        assert_eq!(
            limits.check(Rate::LoginPerIp, "1.2.3.4").await,
            Decision::Allowed
        );
        assert_eq!(
            limits.check(Rate::LoginPerIp, "1.2.3.4").await,
            Decision::Allowed
        );
        let Decision::Denied { retry_after } = limits.check(Rate::LoginPerIp, "1.2.3.4").await
        else {
            panic!("third login allowed");
        };
        assert!(retry_after > Duration::from_secs(20), "{retry_after:?}");
        assert_eq!(
            limits.check(Rate::LoginPerIp, "5.6.7.8").await,
            Decision::Allowed
        );
    }

    #[actix_rt::test]
    async fn local_stream_slots_free_on_drop() {
        let limits = Limits::new(
            RateLimitSettings {
                concurrent_streams_per_user: 1,
                ..Default::default()
            },
            None,
        );
        let lease = limits.acquire_stream("u").await.expect("first slot");
        assert!(limits.acquire_stream("u").await.is_none());
        drop(lease);
        assert!(limits.acquire_stream("u").await.is_some());
    }

    #[actix_rt::test]
    async fn local_failures_count_only_when_reported_and_asking_is_free() {
        let limits = Limits::new(
            RateLimitSettings {
                failed_logins_per_account_per_hour: 1,
                failed_login_account_burst: 2,
                ..Default::default()
            },
            None,
        );
        let f = Failure::LoginPerAccount;
        for _ in 0..10 {
            assert_eq!(limits.blocked(f, "ann").await, Decision::Allowed);
        }
        limits.failed(f, "ann").await;
        assert_eq!(limits.blocked(f, "ann").await, Decision::Allowed);
        limits.failed(f, "ann").await;
        let Decision::Denied { retry_after } = limits.blocked(f, "ann").await else {
            panic!("two failures of two allowed, yet not blocked");
        };
        assert!(retry_after > Duration::from_secs(60), "{retry_after:?}");
        assert_eq!(limits.blocked(f, "bob").await, Decision::Allowed);
        assert_eq!(
            limits.blocked(Failure::AuthPerIp, "ann").await,
            Decision::Allowed,
            "each kind of failure counts apart"
        );
    }

    #[actix_rt::test]
    async fn off_allows_everything() {
        let limits = Limits::new(RateLimitSettings::off(), None);
        for _ in 0..100 {
            assert_eq!(limits.check(Rate::LoginPerIp, "a").await, Decision::Allowed);
        }
    }
}
