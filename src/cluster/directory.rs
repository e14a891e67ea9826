//! The session directory in Redis: every node keeps its live sessions there with an expiry it
//! refreshes, so a node that dies (even by SIGKILL) vanishes within `session_ttl`.
//!
//! Keys: `node-sessions:{node}` (a hash per node: session id → entry JSON, expiring as a
//! whole), `node:{id}` (the node's entry, expires) and `nodes` (sorted set of node ids by expiry
//! time). Nodes from before the per-node hash wrote `session:{id}` and `sessions` (a sorted set of
//! session ids): those are still read, so a rolling upgrade lists every session.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ai_gateway_actors::{
    unix_time::{now_unix_ms, unix_ms},
    SessionDirectory, SessionInfo,
};
use deadpool_redis::redis;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Cluster, ClusterError};

/// Directory updates waiting to be written; past this they are dropped (the next refresh
/// repairs the directory).
const QUEUE_CAPACITY: usize = 65_536;

/// A session as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DirectoryEntry {
    pub session_id: String,
    pub user_id: String,
    pub username: String,
    pub role: String,
    pub node_id: String,
    pub remote_addr: Option<String>,
    /// Unix milliseconds.
    pub started_at: u64,
    pub running: u32,
    /// The model of the session's latest request.
    #[serde(default)]
    pub last_model: Option<String>,
}

/// A node as other nodes see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    pub node_id: String,
    pub sessions: usize,
    /// Unix milliseconds of the last refresh.
    pub refreshed_at: u64,
}

/// An entry's fields, borrowed from a [`DirectoryEntry`] or straight from a live session: a
/// refresh digests (and, for what changed, serializes) every session of the node without
/// copying one. Serialized, it is the [`DirectoryEntry`]'s JSON.
#[derive(Hash, Serialize)]
struct EntryView<'a> {
    session_id: &'a str,
    user_id: &'a str,
    username: &'a str,
    role: &'a str,
    node_id: &'a str,
    remote_addr: Option<&'a str>,
    started_at: u64,
    running: u32,
    last_model: Option<&'a str>,
}

impl DirectoryEntry {
    fn view(&self) -> EntryView<'_> {
        EntryView {
            session_id: &self.session_id,
            user_id: &self.user_id,
            username: &self.username,
            role: &self.role,
            node_id: &self.node_id,
            remote_addr: self.remote_addr.as_deref(),
            started_at: self.started_at,
            running: self.running,
            last_model: self.last_model.as_deref(),
        }
    }
}

impl<'a> From<&'a SessionInfo> for EntryView<'a> {
    fn from(s: &'a SessionInfo) -> Self {
        EntryView {
            session_id: &s.session_id,
            user_id: &s.user_id,
            username: &s.username,
            role: &s.role,
            node_id: &s.node_id,
            remote_addr: s.remote_addr.as_deref(),
            started_at: unix_ms(s.started_at),
            running: s.running,
            last_model: s.last_model.as_deref(),
        }
    }
}

impl From<EntryView<'_>> for DirectoryEntry {
    fn from(v: EntryView<'_>) -> Self {
        DirectoryEntry {
            session_id: v.session_id.to_owned(),
            user_id: v.user_id.to_owned(),
            username: v.username.to_owned(),
            role: v.role.to_owned(),
            node_id: v.node_id.to_owned(),
            remote_addr: v.remote_addr.map(str::to_owned),
            started_at: v.started_at,
            running: v.running,
            last_model: v.last_model.map(str::to_owned),
        }
    }
}

impl From<&SessionInfo> for DirectoryEntry {
    fn from(s: &SessionInfo) -> Self {
        EntryView::from(s).into()
    }
}

enum Update {
    Joined(DirectoryEntry),
    Left(String),
    /// Every live session, as the registry gathered them (turned into entries on the writer's
    /// thread).
    Refresh(Vec<SessionInfo>),
}

pub struct RedisDirectory {
    tx: mpsc::Sender<Update>,
}

/// Updates written in one pipeline at most: a burst of connections is a few round trips, not one
/// per session.
const BATCH: usize = 1024;

impl RedisDirectory {
    /// Starts the writer on a thread of its own, which ends when the directory is dropped. A
    /// refresh of 100,000 sessions is tens of milliseconds of work (entries made, digested and
    /// compared): on a thread of its own it holds up nothing else of the node, such as a
    /// revocation heard from another node.
    pub fn start(cluster: Arc<Cluster>, node_id: String, ttl: Duration) -> RedisDirectory {
        let (tx, mut rx) = mpsc::channel(QUEUE_CAPACITY);
        actix_rt::Arbiter::new().spawn(async move {
            let mut writer = Writer::new(cluster, node_id, ttl);
            let mut batch = Vec::with_capacity(BATCH);
            while rx.recv_many(&mut batch, BATCH).await > 0 {
                writer.write(std::mem::take(&mut batch)).await;
            }
            actix_rt::Arbiter::current().stop();
        });
        RedisDirectory { tx }
    }

    fn send(&self, update: Update) {
        if self.tx.try_send(update).is_err() {
            tracing::warn!("session directory queue full; an update waits for the next refresh");
        }
    }
}

impl SessionDirectory for RedisDirectory {
    fn joined(&self, session: &SessionInfo) {
        self.send(Update::Joined(session.into()));
    }

    fn left(&self, session_id: &str) {
        self.send(Update::Left(session_id.to_owned()));
    }

    fn refresh(&self, sessions: Vec<SessionInfo>) {
        self.send(Update::Refresh(sessions));
    }
}

/// The hash that holds a node's sessions (session id → entry JSON). It expires as a whole: a node
/// that stops refreshing it (killed) vanishes with all its sessions.
fn node_sessions_key(cluster: &Cluster, node_id: &str) -> String {
    cluster.key(&format!("node-sessions:{node_id}"))
}

/// Fields written per `HSET` when a whole hash is written.
const HSET_CHUNK: usize = 1000;

/// Writes this node's share of the directory. It remembers a digest of every entry it wrote, so
/// a refresh sends only what changed (a request started, a session came or went) and renews the
/// rest with one `PEXPIRE`: an idle node of 100,000 sessions costs Redis a handful of commands
/// every refresh, not 200,000.
struct Writer {
    cluster: Arc<Cluster>,
    node_id: String,
    ttl: Duration,
    hash: String,
    /// Session id → digest of the entry written for it, as Redis should now hold it.
    written: HashMap<String, u64>,
    /// Sessions that joined since the last refresh, with their entries: a refresh gathered
    /// before one of them joined must not remove it.
    joined_since_refresh: HashMap<String, DirectoryEntry>,
    /// A write failed, or the node's entry is not written yet: the next write rewrites the
    /// node's entry, and the next refresh the whole hash.
    dirty: bool,
}

impl Writer {
    fn new(cluster: Arc<Cluster>, node_id: String, ttl: Duration) -> Writer {
        Writer {
            hash: node_sessions_key(&cluster, &node_id),
            cluster,
            node_id,
            ttl,
            written: HashMap::new(),
            joined_since_refresh: HashMap::new(),
            dirty: true,
        }
    }

    async fn write(&mut self, batch: Vec<Update>) {
        if let Err(e) = self.try_write(batch).await {
            self.dirty = true;
            tracing::warn!(error = %e, "session directory update failed; the next refresh rewrites it");
        }
    }

    async fn try_write(&mut self, batch: Vec<Update>) -> Result<(), ClusterError> {
        let started = std::time::Instant::now();
        let ttl_ms = self.ttl.as_millis() as u64;
        let mut pipe = redis::pipe();
        let mut joins = Vec::new();
        // The latest refresh of the batch, and the sessions that left after it was gathered.
        let mut refresh: Option<(Vec<SessionInfo>, HashSet<String>)> = None;
        for update in batch {
            match update {
                Update::Joined(entry) => {
                    let json = entry_json(&entry);
                    self.written
                        .insert(entry.session_id.clone(), digest(&entry.view()));
                    joins.push((entry.session_id.clone(), json));
                    self.joined_since_refresh
                        .insert(entry.session_id.clone(), entry);
                }
                Update::Left(id) => {
                    self.written.remove(&id);
                    self.joined_since_refresh.remove(&id);
                    joins.retain(|(joined, _)| *joined != id);
                    // The refresh is written after this batch's joins and leaves: a session that
                    // left after it was gathered must not come back with it.
                    if let Some((_, left)) = refresh.as_mut() {
                        left.insert(id.clone());
                    }
                    pipe.hdel(&self.hash, &id).ignore();
                }
                // Only the latest refresh of a batch matters: it is the newest whole picture.
                Update::Refresh(sessions) => refresh = Some((sessions, HashSet::new())),
            }
        }
        let mut conn = self.cluster.conn().await?;
        if !pipe.is_empty() || !joins.is_empty() {
            if !joins.is_empty() {
                pipe.hset_multiple(&self.hash, &joins).ignore();
            }
            if self.dirty {
                self.node_entry(&mut pipe);
            }
            pipe.pexpire(&self.hash, ttl_ms as i64).ignore();
            pipe.query_async::<()>(&mut conn).await?;
        }
        if let Some((sessions, left)) = refresh {
            let live = sessions.len();
            self.refresh(&mut conn, &sessions, &left).await?;
            let took_ms = started.elapsed().as_secs_f64() * 1000.0;
            tracing::debug!(live, took_ms, "directory refreshed");
        }
        Ok(())
    }

    /// Writes what changed since the last write, renews the hash's expiry and checks that Redis
    /// holds as many sessions as this node: when it does not (Redis restarted, the hash expired
    /// while Redis was out of reach), or after a failed write, the whole hash is written again.
    async fn refresh(
        &mut self,
        conn: &mut super::SharedConnection,
        sessions: &[SessionInfo],
        left: &HashSet<String>,
    ) -> Result<(), ClusterError> {
        // Every live session by id, with its digest: those gathered (less any that left after
        // the gathering), and those that joined after it.
        let joined = std::mem::take(&mut self.joined_since_refresh);
        let mut current: HashMap<&str, (u64, EntryView<'_>)> =
            HashMap::with_capacity(sessions.len() + joined.len());
        for session in sessions.iter().filter(|s| !left.contains(&*s.session_id)) {
            let view = EntryView::from(session);
            current.insert(&session.session_id, (digest(&view), view));
        }
        for (id, entry) in &joined {
            current
                .entry(id)
                .or_insert_with(|| (digest(&entry.view()), entry.view()));
        }
        let mut rewrite = self.dirty;
        loop {
            let mut pipe = redis::pipe();
            if rewrite {
                pipe.del(&self.hash).ignore();
            } else {
                let gone: Vec<&String> = self
                    .written
                    .keys()
                    .filter(|id| !current.contains_key(id.as_str()))
                    .collect();
                if !gone.is_empty() {
                    pipe.hdel(&self.hash, gone).ignore();
                }
            }
            // Only what changed is serialized: an idle refresh writes no JSON at all.
            let changed: Vec<(&str, String)> = current
                .iter()
                .filter(|(id, (d, _))| rewrite || self.written.get(**id) != Some(d))
                .map(|(id, (_, entry))| (*id, entry_json(entry)))
                .collect();
            for chunk in changed.chunks(HSET_CHUNK) {
                pipe.hset_multiple(&self.hash, chunk).ignore();
            }
            pipe.pexpire(&self.hash, self.ttl.as_millis() as i64)
                .ignore();
            // What Redis now holds, updated in place: only new sessions cost a copy of their id.
            self.written
                .retain(|id, _| current.contains_key(id.as_str()));
            for (id, (d, _)) in &current {
                match self.written.get_mut(*id) {
                    Some(written) => *written = *d,
                    None => {
                        self.written.insert((*id).to_owned(), *d);
                    }
                }
            }
            self.node_entry(&mut pipe);
            pipe.hlen(&self.hash);
            let (held,): (usize,) = pipe.query_async(&mut *conn).await?;
            self.dirty = false;
            if held == current.len() || rewrite {
                return Ok(());
            }
            // Redis lost entries (restarted, or the hash expired while out of reach): write the
            // whole hash now.
            tracing::warn!(
                held,
                live = current.len(),
                "session directory out of step with this node; rewriting it"
            );
            rewrite = true;
        }
    }

    /// The node's own entry and its place in `nodes`, and the removal of expired nodes (and of
    /// the per-session index that nodes before the per-node hash wrote).
    fn node_entry(&self, pipe: &mut redis::Pipeline) {
        let now = now_unix_ms();
        let ttl_ms = self.ttl.as_millis() as u64;
        let node = NodeEntry {
            node_id: self.node_id.clone(),
            sessions: self.written.len(),
            refreshed_at: now,
        };
        put_live(
            pipe,
            &self.cluster,
            "nodes",
            "node",
            &self.node_id,
            &node,
            now,
            ttl_ms,
        );
        pipe.zrembyscore(self.cluster.key(LEGACY_INDEX), "-inf", now)
            .ignore();
    }
}

/// What the writer remembers of an entry it wrote, to tell whether it changed since.
fn digest(entry: &EntryView<'_>) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(entry)
}

/// The per-session index of nodes from before the per-node hash (`sessions`, with the entries
/// under `session:{id}`): read while such nodes run beside this one (a rolling upgrade), and
/// emptied of expired ids by every refresh.
const LEGACY_INDEX: &str = "sessions";

/// Keys read per `MGET` when listing: a whole directory in one command would hold Redis (and the
/// reply) for longer than a command may take, and 100,000 entries outlast the client's 0.5 s.
const LIST_CHUNK: usize = 1000;

/// The JSON Redis keeps for an entry (or a node's figures): strings and numbers, which always
/// serialize.
fn entry_json(entry: &impl Serialize) -> String {
    serde_json::to_string(entry).expect("entries serialize")
}

/// Adds to `pipe` what [`list_live`] reads: `value`'s JSON under `{kind}:{id}`, expiring after
/// `ttl_ms`, and `id` in the index with its expiry (`now` + `ttl_ms`), whose expired ids go.
#[allow(clippy::too_many_arguments)]
pub(super) fn put_live(
    pipe: &mut redis::Pipeline,
    cluster: &Cluster,
    index: &str,
    kind: &str,
    id: &str,
    value: &impl Serialize,
    now: u64,
    ttl_ms: u64,
) {
    let index = cluster.key(index);
    pipe.cmd("SET")
        .arg(cluster.key(&format!("{kind}:{id}")))
        .arg(entry_json(value))
        .arg("PX")
        .arg(ttl_ms)
        .ignore()
        .zadd(&index, id, now + ttl_ms)
        .ignore()
        .zrembyscore(&index, "-inf", now)
        .ignore();
}

/// The live entries of an index (`sessions` or `nodes`): ids whose expiry is still ahead (read
/// with `ZSCAN`, [`LIST_CHUNK`] at a time), then their JSON under `{kind}:{id}`, [`LIST_CHUNK`]
/// keys per `MGET`. No reply is larger than a chunk, so none outlasts the client's response
/// timeout however large the directory. Entries that expired between the reads are skipped.
pub(super) async fn list_live<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    index: &str,
    kind: &str,
) -> Result<Vec<T>, ClusterError> {
    let mut conn = cluster.conn().await?;
    let now = now_unix_ms();
    let mut ids = HashSet::new();
    let mut cursor = 0u64;
    loop {
        // ZSCAN may return an id twice (the set is rehashed); the set keeps it once.
        let (next, found): (u64, Vec<(String, f64)>) = redis::cmd("ZSCAN")
            .arg(cluster.key(index))
            .arg(cursor)
            .arg("COUNT")
            .arg(LIST_CHUNK)
            .query_async(&mut conn)
            .await?;
        ids.extend(
            found
                .into_iter()
                .filter(|(_, expires)| *expires >= now as f64)
                .map(|(id, _)| id),
        );
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let ids: Vec<String> = ids.into_iter().collect();
    let mut live = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(LIST_CHUNK) {
        let keys: Vec<String> = chunk
            .iter()
            .map(|id| cluster.key(&format!("{kind}:{id}")))
            .collect();
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await?;
        live.extend(
            values
                .into_iter()
                .flatten()
                .filter_map(|v| serde_json::from_str(&v).ok()),
        );
    }
    Ok(live)
}

/// Tries for one page of a listing whose reply times out.
const PAGE_TRIES: u32 = 3;

/// The ids of the nodes whose directory has not expired.
async fn live_node_ids(
    cluster: &Cluster,
    conn: &mut super::SharedConnection,
) -> Result<Vec<String>, ClusterError> {
    Ok(redis::cmd("ZRANGE")
        .arg(cluster.key("nodes"))
        .arg(now_unix_ms())
        .arg("+inf")
        .arg("BYSCORE")
        .query_async(conn)
        .await?)
}

/// Calls `each` with every entry of every live node's hash (session id, entry JSON), read with
/// `HSCAN` ([`LIST_CHUNK`] at a time, so no reply outlasts the client's response timeout), each
/// session once. Returns the ids of the sessions seen.
async fn scan_node_hashes(
    cluster: &Cluster,
    mut each: impl FnMut(&str),
) -> Result<HashSet<String>, ClusterError> {
    let mut conn = cluster.conn().await?;
    let mut seen = HashSet::new();
    for node in live_node_ids(cluster, &mut conn).await? {
        let hash = node_sessions_key(cluster, &node);
        let mut cursor = 0u64;
        loop {
            let mut page = redis::cmd("HSCAN");
            page.arg(&hash).arg(cursor).arg("COUNT").arg(LIST_CHUNK);
            // One slow reply (a busy Redis) must not fail a listing of a hundred pages: a page
            // is read again, from the same cursor, after a timeout.
            let mut tries = 0;
            let (next, found): (u64, Vec<(String, String)>) = loop {
                tries += 1;
                match page.query_async(&mut conn).await {
                    Err(e) if e.is_timeout() && tries < PAGE_TRIES => continue,
                    read => break read?,
                }
            };
            // HSCAN may return a field twice (the hash is rehashed); the set keeps it once.
            for (id, json) in found {
                if seen.insert(id) {
                    each(&json);
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(seen)
}

/// How many live sessions of `user_id` the directory holds, reading of each entry only its user:
/// a fraction of a full listing's work, for an answer's count.
pub async fn count_user_sessions(cluster: &Cluster, user_id: &str) -> Result<usize, ClusterError> {
    #[derive(Deserialize)]
    struct Owner<'a> {
        #[serde(borrow)]
        user_id: std::borrow::Cow<'a, str>,
    }
    let mut count = 0;
    scan_node_hashes(cluster, |json| {
        if serde_json::from_str::<Owner>(json).is_ok_and(|o| o.user_id == user_id) {
            count += 1;
        }
    })
    .await?;
    let legacy = list_legacy_sessions(cluster).await?;
    Ok(count + legacy.iter().filter(|s| s.user_id == user_id).count())
}

/// Every live session of every node, as the directory holds them: each live node's hash, read
/// with `HSCAN` ([`LIST_CHUNK`] at a time, so no reply outlasts the client's response timeout),
/// then the sessions of nodes from before the per-node hash, if any run beside this one.
pub async fn list_sessions(cluster: &Cluster) -> Result<Vec<DirectoryEntry>, ClusterError> {
    let mut live = Vec::new();
    let seen = scan_node_hashes(cluster, |json| {
        live.extend(serde_json::from_str::<DirectoryEntry>(json).ok());
    })
    .await?;
    let legacy = list_legacy_sessions(cluster).await?;
    live.extend(legacy.into_iter().filter(|s| !seen.contains(&s.session_id)));
    Ok(live)
}

/// The sessions of nodes from before the per-node hash (a rolling upgrade): they ignore
/// `user_sessions` events, so a user's kill closes theirs one by one.
pub async fn list_legacy_sessions(cluster: &Cluster) -> Result<Vec<DirectoryEntry>, ClusterError> {
    list_live(cluster, LEGACY_INDEX, "session").await
}

/// Every live session, sorted by start, from a listing read at most `max_age` ago (read now when
/// older, or when `fresh`). A paged walk through 100,000 sessions reads the directory once, not
/// once a page, and its pages are cut from one snapshot.
pub async fn list_sessions_snapshot(
    cluster: &Cluster,
    max_age: Duration,
    fresh: bool,
) -> Result<Arc<Vec<DirectoryEntry>>, ClusterError> {
    if !fresh {
        let kept = cluster
            .snapshot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, sessions)) = kept {
            if at.elapsed() <= max_age {
                return Ok(sessions);
            }
        }
    }
    let at = std::time::Instant::now();
    let mut sessions = list_sessions(cluster).await?;
    sessions.sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
    let sessions = Arc::new(sessions);
    *cluster.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((at, sessions.clone()));
    Ok(sessions)
}

/// One live session by id: one `HGET` per live node, in one round trip, whatever the
/// directory's size (and the entry a node from before the per-node hash wrote for it).
pub async fn find_session(
    cluster: &Cluster,
    session_id: &str,
) -> Result<Option<DirectoryEntry>, ClusterError> {
    let mut conn = cluster.conn().await?;
    let mut pipe = redis::pipe();
    for node in live_node_ids(cluster, &mut conn).await? {
        pipe.hget(node_sessions_key(cluster, &node), session_id);
    }
    pipe.get(cluster.key(&format!("session:{session_id}")));
    let values: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
    Ok(values
        .into_iter()
        .flatten()
        .find_map(|v| serde_json::from_str(&v).ok()))
}

/// Every live node, as the directory holds them.
pub async fn list_nodes(cluster: &Cluster) -> Result<Vec<NodeEntry>, ClusterError> {
    list_live(cluster, "nodes", "node").await
}

#[cfg(test)]
mod tests {
    //! The writer against the real Redis (127.0.0.1:6379), each test under a prefix of its own.
    use super::*;

    fn entry(id: &str, running: u32) -> DirectoryEntry {
        DirectoryEntry {
            session_id: id.to_owned(),
            user_id: "u".into(),
            username: "user".into(),
            role: "user".into(),
            node_id: "n1".into(),
            remote_addr: None,
            started_at: 1,
            running,
            last_model: None,
        }
    }

    fn writer() -> Writer {
        let prefix = format!("agw_test:{}:", uuid::Uuid::new_v4().simple());
        let cluster = Cluster::new("redis://127.0.0.1:6379/", "", &prefix).unwrap();
        Writer::new(Arc::new(cluster), "n1".into(), Duration::from_secs(30))
    }

    async fn listed(w: &Writer) -> Vec<(String, u32)> {
        let mut ids: Vec<_> = list_sessions(&w.cluster)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.session_id, e.running))
            .collect();
        ids.sort();
        ids
    }

    fn refresh(entries: &[DirectoryEntry]) -> Update {
        let session = |e: &DirectoryEntry| SessionInfo {
            session_id: e.session_id.as_str().into(),
            user_id: e.user_id.clone(),
            username: e.username.clone(),
            role: e.role.clone(),
            node_id: e.node_id.as_str().into(),
            remote_addr: e.remote_addr.clone(),
            started_at: std::time::UNIX_EPOCH + Duration::from_millis(e.started_at),
            credential_id: String::new(),
            api_key: false,
            running: e.running,
            last_model: e.last_model.clone(),
        };
        Update::Refresh(entries.iter().map(session).collect())
    }

    #[actix_rt::test]
    async fn a_refresh_writes_what_changed_and_keeps_who_joined_or_left_after_its_gathering() {
        let mut w = writer();
        w.write(vec![
            Update::Joined(entry("a", 0)),
            Update::Joined(entry("b", 0)),
        ])
        .await;
        w.write(vec![refresh(&[entry("a", 0), entry("b", 0)])])
            .await;
        assert_eq!(listed(&w).await, [("a".into(), 0), ("b".into(), 0)]);

        // Gathered before c joined and before b left, written after both.
        w.write(vec![
            refresh(&[entry("a", 2), entry("b", 0)]),
            Update::Joined(entry("c", 0)),
            Update::Left("b".into()),
        ])
        .await;
        assert_eq!(listed(&w).await, [("a".into(), 2), ("c".into(), 0)]);

        // The next refresh, gathered after c joined, holds every live session: one missing from
        // it has gone (its leave was lost), and goes from the directory too.
        w.write(vec![refresh(&[entry("a", 0)])]).await;
        assert_eq!(listed(&w).await, [("a".into(), 0)]);
    }

    #[actix_rt::test]
    async fn a_hash_that_redis_lost_is_written_whole_by_the_next_refresh() {
        let mut w = writer();
        let all = [entry("a", 0), entry("b", 1)];
        w.write(vec![refresh(&all)]).await;
        let mut conn = w.cluster.conn().await.unwrap();
        redis::cmd("HDEL")
            .arg(&w.hash)
            .arg("b")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        assert_eq!(listed(&w).await, [("a".into(), 0)]);
        w.write(vec![refresh(&all)]).await;
        assert_eq!(listed(&w).await, [("a".into(), 0), ("b".into(), 1)]);
        redis::cmd("DEL")
            .arg(&w.hash)
            .arg(w.cluster.key("nodes"))
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        assert_eq!(listed(&w).await, []);
        w.write(vec![refresh(&all)]).await;
        assert_eq!(listed(&w).await, [("a".into(), 0), ("b".into(), 1)]);
    }
}
