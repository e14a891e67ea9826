//! The node's session registry: it knows every live session, forwards chat requests to provider
//! streams, and can close any session (kill, revocation, drain).
//!
//! It runs as one [`SessionRegistry`] shard per worker thread, started there on first use, so a
//! session registers and starts its requests without crossing a thread. [`Registry`] is the
//! node's handle on all of them: it sends a chat request to the caller's own shard and fans
//! listing, kills, revocations and the drain out over every shard.

use std::{
    cell::RefCell,
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, SystemTime},
};

use actix::prelude::*;
use futures_util::future::join_all;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    hooks::{NoDirectory, SessionDirectory},
    provider::{ChunkSink, ProviderRequest, ProviderStream, Router, StreamHandle, UnknownModel},
};

/// What the registry knows of a live session.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub session_id: Arc<str>,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub node_id: Arc<str>,
    pub remote_addr: Option<String>,
    #[serde(with = "crate::unix_time::as_unix_ms")]
    pub started_at: SystemTime,
    /// The token id (`jti`) or API key id the session authenticated with.
    #[serde(skip)]
    pub credential_id: String,
    /// Whether the credential is an API key (else a session token).
    pub api_key: bool,
    /// Requests running now (kept current by the session).
    pub running: u32,
    /// The model of the session's latest request.
    pub last_model: Option<String>,
}

/// Closes the session with this code and reason (operator kill, revocation, end of a drain).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: String,
}

/// The node is draining: refuse new requests, finish running ones within `timeout`, then close
/// with [`close_code::RESTART`](crate::close_code::RESTART).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DrainSession {
    pub timeout: Duration,
}

/// Gives every registry a key of its own in the thread-local shard table, so several nodes in
/// one process (tests) never share a shard.
static NEXT_REGISTRY_ID: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's shard of each registry, by registry id.
    static SHARDS: RefCell<HashMap<u64, Addr<SessionRegistry>>> = RefCell::new(HashMap::new());
}

/// The node's registry: a cloneable handle on its shards, usable from any thread.
#[derive(Clone)]
pub struct Registry {
    shared: Arc<Shared>,
}

/// What the shards of one registry share.
struct Shared {
    id: u64,
    router: Arc<Router>,
    directory: Arc<dyn SessionDirectory>,
    shards: Mutex<Shards>,
    /// Live sessions over every shard; shutdown waits for it to reach zero.
    live: watch::Sender<usize>,
    /// Sessions that left while a directory refresh was gathering: its lists may still hold
    /// them, and republishing one would bring it back from the dead.
    left_during_refresh: Mutex<Option<HashSet<Arc<str>>>>,
    refresher: Mutex<Option<actix_rt::task::JoinHandle<()>>>,
}

#[derive(Default)]
struct Shards {
    started: Vec<Addr<SessionRegistry>>,
    /// Set by the drain, and given to every shard started after it.
    drain_timeout: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Registry {
    /// A registry for a node that publishes its sessions nowhere.
    pub fn new(router: Arc<Router>) -> Registry {
        Registry::with_directory(router, Arc::new(NoDirectory))
    }

    /// A registry that tells `directory` of every session that joins or leaves; see
    /// [`Registry::refresh_directory_every`].
    pub fn with_directory(router: Arc<Router>, directory: Arc<dyn SessionDirectory>) -> Registry {
        Registry {
            shared: Arc::new(Shared {
                id: NEXT_REGISTRY_ID.fetch_add(1, Ordering::Relaxed),
                router,
                directory,
                shards: Mutex::default(),
                live: watch::Sender::new(0),
                left_during_refresh: Mutex::new(None),
                refresher: Mutex::new(None),
            }),
        }
    }

    /// Hands every live session of the node to the directory every `every`, from a task on the
    /// current arbiter, until [`Registry::stop`]. The first refresh comes after a random part of
    /// `every`: nodes started together do not refresh together, so their bursts of work (and
    /// Redis's) do not pile up on a shared core at the same instant.
    pub fn refresh_directory_every(&self, every: Duration) {
        let shared = Arc::downgrade(&self.shared);
        let offset = every.mul_f64(rand::random::<f64>());
        let task = actix_rt::spawn(async move {
            let start = actix_rt::time::Instant::now() + offset;
            let mut tick = actix_rt::time::interval_at(start, every);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                Registry { shared }.refresh_directory().await;
            }
        });
        if let Some(old) = lock(&self.shared.refresher).replace(task) {
            old.abort();
        }
    }

    async fn refresh_directory(&self) {
        *lock(&self.shared.left_during_refresh) = Some(HashSet::new());
        let mut live = self.sessions().await;
        let mut left = lock(&self.shared.left_during_refresh);
        if let Some(gone) = left.take() {
            live.retain(|s| !gone.contains(&s.session_id));
        }
        // Still holding the lock: no session can leave between this filter and the refresh.
        self.shared.directory.refresh(live);
    }

    /// Stops publishing to the directory (the node is going away).
    pub fn stop(&self) {
        if let Some(task) = lock(&self.shared.refresher).take() {
            task.abort();
        }
    }

    /// This thread's shard, started on first use. Must run on an arbiter.
    pub fn shard(&self) -> Addr<SessionRegistry> {
        SHARDS.with(|table| {
            let mut table = table.borrow_mut();
            match table.get(&self.shared.id) {
                Some(shard) if shard.connected() => shard.clone(),
                _ => {
                    let shard = self.start_shard();
                    table.insert(self.shared.id, shard.clone());
                    shard
                }
            }
        })
    }

    fn start_shard(&self) -> Addr<SessionRegistry> {
        let mut shards = lock(&self.shared.shards);
        let shard = SessionRegistry {
            shared: self.shared.clone(),
            sessions: HashMap::new(),
            drain_timeout: shards.drain_timeout,
        }
        .start();
        shards.started.retain(Addr::connected);
        shards.started.push(shard.clone());
        shard
    }

    /// Every shard started so far (one per worker thread that has served a session or a chat
    /// request).
    fn shards(&self) -> Vec<Addr<SessionRegistry>> {
        lock(&self.shared.shards).started.clone()
    }

    /// How many shards run: one per worker thread that has needed one.
    pub fn shard_count(&self) -> usize {
        self.shards().iter().filter(|s| s.connected()).count()
    }

    /// Has this thread's shard start a provider stream for `request` on this thread.
    pub async fn start_chat(
        &self,
        request: ProviderRequest,
        sink: ChunkSink,
    ) -> Result<Result<StreamHandle, UnknownModel>, MailboxError> {
        self.shard().send(StartChat { request, sink }).await
    }

    /// Every live session on this node.
    pub async fn sessions(&self) -> Vec<SessionInfo> {
        let lists = join_all(self.shards().iter().map(|s| s.send(ListSessions))).await;
        lists.into_iter().flatten().flatten().collect()
    }

    /// How many sessions are live on this node.
    pub fn count(&self) -> usize {
        *self.shared.live.borrow()
    }

    /// Resolves once no session is live on this node.
    pub async fn until_empty(&self) {
        let mut live = self.shared.live.subscribe();
        // The sender lives in `self`, so the wait cannot fail.
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Closes one session with a close code and reason the client will see. Answers whether
    /// the session was live on this node.
    pub async fn kill(&self, kill: KillSession) -> bool {
        let asked = self.shards().into_iter().map(|s| s.send(kill.clone()));
        join_all(asked).await.into_iter().any(|r| r == Ok(true))
    }

    /// Closes every session of this node that a revocation covers.
    pub fn close_revoked(&self, revoked: Revoked, reason: &str) {
        for shard in self.shards() {
            shard.do_send(CloseRevoked {
                revoked: revoked.clone(),
                reason: reason.to_owned(),
            });
        }
    }

    /// Starts the node's drain: every session (and any that registers later, on any shard)
    /// refuses new requests, lets running ones finish for up to `timeout`, then closes with
    /// code 1012.
    pub fn drain(&self, timeout: Duration) {
        let started = {
            let mut shards = lock(&self.shared.shards);
            shards.drain_timeout = Some(timeout);
            shards.started.clone()
        };
        for shard in started {
            shard.do_send(Drain { timeout });
        }
    }
}

/// A live session as its shard holds it.
struct LiveSession {
    info: SessionInfo,
    close: Recipient<CloseSession>,
    drain: Recipient<DrainSession>,
}

/// One worker thread's part of the registry: the sessions on that thread, and the starting of
/// their chat requests.
pub struct SessionRegistry {
    shared: Arc<Shared>,
    sessions: HashMap<Arc<str>, LiveSession>,
    drain_timeout: Option<Duration>,
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub info: SessionInfo,
    pub close: Recipient<CloseSession>,
    pub drain: Recipient<DrainSession>,
}

impl Handler<Register> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        if let Some(timeout) = self.drain_timeout {
            msg.drain.do_send(DrainSession { timeout });
        }
        self.shared.directory.joined(&msg.info);
        let live = LiveSession {
            info: msg.info,
            close: msg.close,
            drain: msg.drain,
        };
        if self
            .sessions
            .insert(live.info.session_id.clone(), live)
            .is_none()
        {
            self.shared.live.send_modify(|n| *n += 1);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unregister {
    pub session_id: Arc<str>,
}

impl Handler<Unregister> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Unregister, _: &mut Self::Context) {
        if self.sessions.remove(&msg.session_id).is_none() {
            return;
        }
        {
            let mut refreshing = lock(&self.shared.left_during_refresh);
            if let Some(gone) = refreshing.as_mut() {
                gone.insert(msg.session_id.clone());
            }
            self.shared.directory.left(&msg.session_id);
        }
        self.shared.live.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A session's count of running requests changed.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct RequestsChanged {
    pub session_id: Arc<str>,
    pub running: u32,
    pub last_model: Option<String>,
}

impl Handler<RequestsChanged> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: RequestsChanged, _: &mut Self::Context) {
        if let Some(live) = self.sessions.get_mut(&msg.session_id) {
            live.info.running = msg.running;
            live.info.last_model = msg.last_model;
        }
    }
}

/// Starts a provider stream for a request, on the shard's own thread (the caller's).
#[derive(Message)]
#[rtype(result = "Result<StreamHandle, UnknownModel>")]
pub(crate) struct StartChat {
    pub request: ProviderRequest,
    pub sink: ChunkSink,
}

impl Handler<StartChat> for SessionRegistry {
    type Result = Result<StreamHandle, UnknownModel>;

    fn handle(&mut self, msg: StartChat, _: &mut Self::Context) -> Self::Result {
        let route = self.shared.router.resolve(&msg.request.model)?.clone();
        Ok(ProviderStream::start_here(route, msg.request, msg.sink))
    }
}

/// Every live session of one shard.
#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
struct ListSessions;

impl Handler<ListSessions> for SessionRegistry {
    type Result = Vec<SessionInfo>;

    fn handle(&mut self, _: ListSessions, _: &mut Self::Context) -> Self::Result {
        self.sessions.values().map(|s| s.info.clone()).collect()
    }
}

/// Closes one session with a close code and reason the client will see. A shard answers
/// whether the session was live there.
#[derive(Debug, Clone, Message)]
#[rtype(result = "bool")]
pub struct KillSession {
    pub session_id: String,
    pub code: u16,
    pub reason: String,
}

impl Handler<KillSession> for SessionRegistry {
    type Result = bool;

    fn handle(&mut self, msg: KillSession, _: &mut Self::Context) -> bool {
        match self.sessions.get(msg.session_id.as_str()) {
            Some(live) => {
                live.close.do_send(CloseSession {
                    code: msg.code,
                    reason: msg.reason,
                });
                true
            }
            None => false,
        }
    }
}

/// Which sessions a revocation closes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoked {
    /// Every session of this user.
    User(String),
    /// Every session opened with this token id or API key id.
    Credential(String),
}

/// Closes every session of a shard that a revocation covers.
#[derive(Message)]
#[rtype(result = "()")]
struct CloseRevoked {
    revoked: Revoked,
    reason: String,
}

impl Handler<CloseRevoked> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: CloseRevoked, _: &mut Self::Context) {
        let mut closed = 0;
        for live in self.sessions.values() {
            let hit = match &msg.revoked {
                Revoked::User(id) => live.info.user_id == *id,
                Revoked::Credential(id) => live.info.credential_id == *id,
            };
            if hit {
                closed += 1;
                live.close.do_send(CloseSession {
                    code: crate::close_code::POLICY,
                    reason: msg.reason.clone(),
                });
            }
        }
        tracing::debug!(closed, of = self.sessions.len(), reason = %msg.reason, "shard closed revoked sessions");
    }
}

/// Starts a shard's drain: its sessions, and any that registers later, get [`DrainSession`].
#[derive(Message)]
#[rtype(result = "()")]
struct Drain {
    timeout: Duration,
}

impl Handler<Drain> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) {
        self.drain_timeout = Some(msg.timeout);
        for live in self.sessions.values() {
            live.drain.do_send(DrainSession {
                timeout: msg.timeout,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_rt::Arbiter;
    use tokio::sync::mpsc;

    use super::*;

    /// Stands in for a session: reports what the registry asks of it.
    struct Probe {
        id: &'static str,
        seen: mpsc::UnboundedSender<String>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Handler<CloseSession> for Probe {
        type Result = ();

        fn handle(&mut self, msg: CloseSession, _: &mut Self::Context) {
            let _ = self.seen.send(format!("{} closed {}", self.id, msg.code));
        }
    }

    impl Handler<DrainSession> for Probe {
        type Result = ();

        fn handle(&mut self, _: DrainSession, _: &mut Self::Context) {
            let _ = self.seen.send(format!("{} drained", self.id));
        }
    }

    /// Remembers the latest refresh.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl SessionDirectory for Recorded {
        fn joined(&self, _: &SessionInfo) {}
        fn left(&self, _: &str) {}
        fn refresh(&self, sessions: Vec<SessionInfo>) {
            let mut ids: Vec<String> = sessions.iter().map(|s| s.session_id.to_string()).collect();
            ids.sort();
            *lock(&self.0) = ids;
        }
    }

    fn info(id: &str) -> SessionInfo {
        SessionInfo {
            session_id: id.into(),
            user_id: format!("user-{id}"),
            username: id.to_owned(),
            role: "user".to_owned(),
            node_id: "node".into(),
            remote_addr: None,
            started_at: SystemTime::now(),
            credential_id: format!("cred-{id}"),
            api_key: false,
            running: 0,
            last_model: None,
        }
    }

    /// Registers a probe session on `arbiter`'s own shard, as a session does.
    fn register_on(
        arbiter: &Arbiter,
        registry: &Registry,
        id: &'static str,
        seen: &mpsc::UnboundedSender<String>,
    ) {
        let (registry, seen) = (registry.clone(), seen.clone());
        arbiter.spawn(async move {
            let probe = Probe { id, seen }.start();
            registry.shard().do_send(Register {
                info: info(id),
                close: probe.clone().recipient(),
                drain: probe.recipient(),
            });
        });
    }

    async fn until_count(registry: &Registry, n: usize) {
        let mut live = registry.shared.live.subscribe();
        let counted = actix_rt::time::timeout(Duration::from_secs(5), live.wait_for(|c| *c == n));
        assert!(
            counted.await.is_ok(),
            "{} sessions, expected {n}",
            registry.count()
        );
    }

    async fn next(seen: &mut mpsc::UnboundedReceiver<String>) -> String {
        let next = actix_rt::time::timeout(Duration::from_secs(5), seen.recv());
        next.await
            .ok()
            .flatten()
            .expect("the probe heard something")
    }

    #[actix_rt::test]
    async fn every_shard_is_listed_killed_drained_and_refreshed() {
        let directory = Arc::new(Recorded::default());
        let registry = Registry::with_directory(Arc::new(Router::default()), directory.clone());
        let (tx, mut seen) = mpsc::unbounded_channel();
        let workers = [Arbiter::new(), Arbiter::new()];
        register_on(&workers[0], &registry, "a", &tx);
        register_on(&workers[1], &registry, "b", &tx);
        until_count(&registry, 2).await;
        assert_eq!(registry.shard_count(), 2, "one shard per thread");

        let mut listed: Vec<String> = registry
            .sessions()
            .await
            .iter()
            .map(|s| s.session_id.to_string())
            .collect();
        listed.sort();
        assert_eq!(listed, ["a", "b"]);
        registry.refresh_directory().await;
        assert_eq!(
            *lock(&directory.0),
            ["a", "b"],
            "the refresh holds every shard's"
        );

        let kill = |id: &str| KillSession {
            session_id: id.to_owned(),
            code: 4000,
            reason: "test".to_owned(),
        };
        assert!(registry.kill(kill("b")).await);
        assert_eq!(next(&mut seen).await, "b closed 4000");
        assert!(!registry.kill(kill("nobody")).await);

        registry.close_revoked(Revoked::User("user-a".to_owned()), "revoked");
        assert_eq!(next(&mut seen).await, "a closed 1008");

        registry.drain(Duration::from_secs(1));
        let mut drained = [next(&mut seen).await, next(&mut seen).await];
        drained.sort();
        assert_eq!(drained, ["a drained", "b drained"]);

        // A thread whose shard starts after the drain drains its sessions too.
        let late = Arbiter::new();
        register_on(&late, &registry, "c", &tx);
        assert_eq!(next(&mut seen).await, "c drained");
        until_count(&registry, 3).await;

        for (arbiter, id) in [(&workers[0], "a"), (&workers[1], "b"), (&late, "c")] {
            let registry = registry.clone();
            arbiter.spawn(async move {
                registry.shard().do_send(Unregister {
                    session_id: id.into(),
                });
            });
        }
        let emptied = actix_rt::time::timeout(Duration::from_secs(5), registry.until_empty());
        assert!(emptied.await.is_ok(), "{} sessions left", registry.count());
        for arbiter in workers.iter().chain([&late]) {
            arbiter.stop();
        }
    }
}
