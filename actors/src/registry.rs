//! The [`SessionRegistry`]: one per node. It knows every live session, forwards chat requests to
//! provider streams, and can close any session (kill, drain).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use serde::Serialize;

use crate::{
    hooks::{NoDirectory, SessionDirectory},
    provider::{ChunkSink, ProviderRequest, ProviderStream, Router, StreamHandle, UnknownModel},
    session::{CloseSession, DrainSession, SessionActor},
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
    #[serde(with = "unix_ms")]
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

mod unix_ms {
    use std::time::{SystemTime, UNIX_EPOCH};

    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        s.serialize_u64(ms)
    }
}

pub struct SessionRegistry {
    sessions: HashMap<Arc<str>, (Addr<SessionActor>, SessionInfo)>,
    router: Arc<Router>,
    drain_timeout: Option<Duration>,
    directory: Arc<dyn SessionDirectory>,
    directory_refresh: Duration,
}

impl SessionRegistry {
    pub fn new(router: Arc<Router>) -> Self {
        SessionRegistry {
            sessions: HashMap::new(),
            router,
            drain_timeout: None,
            directory: Arc::new(NoDirectory),
            directory_refresh: Duration::from_secs(3600),
        }
    }

    /// Publishes every live session to `directory`, refreshed every `refresh`.
    pub fn with_directory(
        mut self,
        directory: Arc<dyn SessionDirectory>,
        refresh: Duration,
    ) -> Self {
        self.directory = directory;
        self.directory_refresh = refresh;
        self
    }
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.directory_refresh, |act, _| {
            let live = act.sessions.values().map(|(_, i)| i.clone()).collect();
            act.directory.refresh(live);
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Register {
    pub info: SessionInfo,
    pub addr: Addr<SessionActor>,
}

impl Handler<Register> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Register, _: &mut Self::Context) {
        if let Some(timeout) = self.drain_timeout {
            msg.addr.do_send(DrainSession { timeout });
        }
        self.directory.joined(&msg.info);
        self.sessions
            .insert(msg.info.session_id.clone(), (msg.addr, msg.info));
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
        if self.sessions.remove(&msg.session_id).is_some() {
            self.directory.left(&msg.session_id);
        }
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
        if let Some((_, info)) = self.sessions.get_mut(&msg.session_id) {
            info.running = msg.running;
            info.last_model = msg.last_model;
        }
    }
}

/// Starts a provider stream for a session's request, on the session's own arbiter.
#[derive(Message)]
#[rtype(result = "Result<StreamHandle, UnknownModel>")]
pub struct StartChat {
    pub request: ProviderRequest,
    pub sink: ChunkSink,
    pub arbiter: ArbiterHandle,
}

impl Handler<StartChat> for SessionRegistry {
    type Result = Result<StreamHandle, UnknownModel>;

    fn handle(&mut self, msg: StartChat, _: &mut Self::Context) -> Self::Result {
        let route = self.router.resolve(&msg.request.model)?.clone();
        Ok(ProviderStream::start_on(
            &msg.arbiter,
            route,
            msg.request,
            msg.sink,
        ))
    }
}

/// Every live session on this node.
#[derive(Message)]
#[rtype(result = "Vec<SessionInfo>")]
pub struct ListSessions;

impl Handler<ListSessions> for SessionRegistry {
    type Result = Vec<SessionInfo>;

    fn handle(&mut self, _: ListSessions, _: &mut Self::Context) -> Self::Result {
        self.sessions.values().map(|(_, i)| i.clone()).collect()
    }
}

/// How many sessions are live on this node.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SessionCount;

impl Handler<SessionCount> for SessionRegistry {
    type Result = usize;

    fn handle(&mut self, _: SessionCount, _: &mut Self::Context) -> usize {
        self.sessions.len()
    }
}

/// Closes one session with a close code and reason the client will see. Answers whether the
/// session was live here.
#[derive(Message)]
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
            Some((addr, _)) => {
                addr.do_send(CloseSession {
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

/// Closes every session that a revocation covers; answers how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseRevoked {
    pub revoked: Revoked,
    pub reason: String,
}

impl Handler<CloseRevoked> for SessionRegistry {
    type Result = usize;

    fn handle(&mut self, msg: CloseRevoked, _: &mut Self::Context) -> usize {
        let mut closed = 0;
        for (addr, info) in self.sessions.values() {
            let hit = match &msg.revoked {
                Revoked::User(id) => info.user_id == *id,
                Revoked::Credential(id) => info.credential_id == *id,
            };
            if hit {
                addr.do_send(CloseSession {
                    code: crate::close_code::POLICY,
                    reason: msg.reason.clone(),
                });
                closed += 1;
            }
        }
        closed
    }
}

/// Starts the node's drain: every session (and any that registers later) refuses new requests,
/// lets running ones finish for up to `timeout`, then closes with code 1012.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub timeout: Duration,
}

impl Handler<Drain> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: Drain, _: &mut Self::Context) {
        self.drain_timeout = Some(msg.timeout);
        for (addr, _) in self.sessions.values() {
            addr.do_send(DrainSession {
                timeout: msg.timeout,
            });
        }
    }
}
