//! Answer journals in Redis, so that a client can resume on any node.
//!
//! Each answer is a Redis Stream `{prefix}answer:{stream_id}`: a first entry `m` (owner, model,
//! conversation, node, start time), one entry `b` per batch of chunks (`{"s": first seq, "c": [[kind,
//! text], ...]}`), and a last entry `e` with the end. Batches are written in order by one task per
//! answer, every batch that is waiting in one pipeline; the key expires `retention` after the
//! last write. A follower on another node reads the stream (`XRANGE`), then blocks on `XREAD`
//! for the rest, and keeps `{key}:follower` alive so that the owning node does not cancel the
//! answer when its grace time runs out. When nothing comes for a while it checks that the owning
//! node is still in the directory: a crashed node's answer ends with a clear error, never a hang.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use ai_gateway_actors::answer::{
    Ending, Journal, Remote, RemoteAnswer, SharedJournals, SharedWriter, ToolCallDelta,
};
use ai_gateway_proto::{ChunkKind, ErrorReason, FinishReason, Usage};
use deadpool_redis::redis;
use futures_util::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Cluster;

/// Entries of an answer's stream kept at most (a batch holds up to 64 chunks).
const MAX_ENTRIES: usize = 20_000;
/// How long a follower blocks on `XREAD` before it looks around.
const BLOCK_MS: u64 = 1_000;
/// Silence after which a follower checks that the owning node still lives.
const QUIET_BEFORE_CHECK: Duration = Duration::from_secs(3);
/// An answer not in Redis yet is looked for this many more times, this far apart.
const NOT_YET_RETRIES: u32 = 10;
const NOT_YET_PAUSE: Duration = Duration::from_millis(100);
/// How long a follower's mark lasts; it is renewed every `BLOCK_MS`.
const FOLLOWER_TTL_MS: u64 = 3_000;

#[derive(Serialize, Deserialize)]
struct Meta {
    user: String,
    model: String,
    #[serde(default)]
    conversation_id: Option<String>,
    node: String,
    /// Unix seconds when the answer started (0 from nodes before it was written).
    #[serde(default)]
    created: u64,
}

/// A tool call piece: index, and on its first piece the call's id and name.
type Call = (u32, Option<String>, Option<String>);

#[derive(Serialize, Deserialize)]
struct Batch {
    s: u64,
    c: Vec<(char, String, Option<Call>)>,
}

#[derive(Serialize, Deserialize)]
struct End {
    finish_reason: FinishReason,
    usage: Usage,
    #[serde(default)]
    error: Option<(ErrorReason, String)>,
    total: u64,
}

fn kind_code(kind: ChunkKind) -> char {
    match kind {
        ChunkKind::Reasoning => 'r',
        ChunkKind::Text => 't',
        ChunkKind::ToolCall => 'c',
    }
}

fn kind_of(code: char) -> ChunkKind {
    match code {
        'r' => ChunkKind::Reasoning,
        'c' => ChunkKind::ToolCall,
        _ => ChunkKind::Text,
    }
}

enum Write {
    Entry(&'static str, String),
}

pub struct RedisJournals {
    cluster: Arc<Cluster>,
    node_id: String,
    retention: Duration,
    /// Entries handed to a writer and not yet written: a stopping node waits for them.
    backlog: Arc<AtomicUsize>,
}

impl RedisJournals {
    pub fn new(cluster: Arc<Cluster>, node_id: String, retention: Duration) -> Self {
        RedisJournals {
            cluster,
            node_id,
            retention,
            backlog: Arc::default(),
        }
    }

    fn key(&self, stream_id: &str) -> String {
        self.cluster.key(&format!("answer:{stream_id}"))
    }
}

struct RedisWriter {
    tx: mpsc::UnboundedSender<Write>,
    backlog: Arc<AtomicUsize>,
}

impl RedisWriter {
    fn send(&self, write: Write) {
        self.backlog.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(write).is_err() {
            self.backlog.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl SharedWriter for RedisWriter {
    fn append(&self, first_seq: u64, chunks: Vec<(ChunkKind, String, Option<ToolCallDelta>)>) {
        let batch = Batch {
            s: first_seq,
            c: chunks
                .into_iter()
                .map(|(k, t, call)| (kind_code(k), t, call.map(|c| (c.index, c.id, c.name))))
                .collect(),
        };
        let json = serde_json::to_string(&batch).expect("batches serialize");
        self.send(Write::Entry("b", json));
    }

    fn end(&self, ending: &Ending, total: u64) {
        let end = End {
            finish_reason: ending.finish_reason,
            usage: ending.usage,
            error: ending.error.clone(),
            total,
        };
        let json = serde_json::to_string(&end).expect("ends serialize");
        self.send(Write::Entry("e", json));
    }
}

/// Writes one answer's entries in order, all that wait in one pipeline.
async fn write_entries(
    cluster: Arc<Cluster>,
    key: String,
    ttl: Duration,
    mut rx: mpsc::UnboundedReceiver<Write>,
    backlog: Arc<AtomicUsize>,
) {
    let ttl_ms = ttl.as_millis() as u64;
    while let Some(first) = rx.recv().await {
        let mut pipe = redis::pipe();
        let mut next = Some(first);
        let mut entries = 0;
        while let Some(Write::Entry(field, value)) = next {
            entries += 1;
            pipe.cmd("XADD")
                .arg(&key)
                .arg("MAXLEN")
                .arg("~")
                .arg(MAX_ENTRIES)
                .arg("*")
                .arg(field)
                .arg(value)
                .ignore();
            next = rx.try_recv().ok();
        }
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        let written = async {
            let mut conn = cluster.conn().await?;
            pipe.query_async::<()>(&mut conn).await?;
            Ok::<_, super::ClusterError>(())
        }
        .await;
        backlog.fetch_sub(entries, Ordering::Relaxed);
        if let Err(e) = written {
            // The local journal still serves resumes on this node.
            tracing::warn!(error = %e, "could not journal an answer in Redis");
        }
    }
}

type Entries = Vec<(String, Vec<String>)>;

/// Turns stream entries into pieces after `after`; answers the end if it came.
fn pieces_of(entries: &Entries, after: &mut Option<u64>, out: &mut Vec<Remote>) -> bool {
    for (_, fields) in entries {
        let [field, value] = fields.as_slice() else {
            continue;
        };
        match field.as_str() {
            "b" => {
                let Ok(batch) = serde_json::from_str::<Batch>(value) else {
                    continue;
                };
                for (i, (kind, text, call)) in batch.c.into_iter().enumerate() {
                    let seq = batch.s + i as u64;
                    if after.is_none_or(|a| seq > a) {
                        let call = call.map(|(index, id, name)| ToolCallDelta { index, id, name });
                        out.push(Remote::Chunk(seq, kind_of(kind), text, call));
                        *after = Some(seq);
                    }
                }
            }
            "e" => {
                if let Ok(end) = serde_json::from_str::<End>(value) {
                    let ending = Ending {
                        finish_reason: end.finish_reason,
                        usage: end.usage,
                        error: end.error,
                    };
                    out.push(Remote::End(ending, end.total));
                    return true;
                }
            }
            _ => {}
        }
    }
    false
}

impl SharedJournals for RedisJournals {
    fn open(&self, journal: &Journal) -> Box<dyn SharedWriter> {
        let (tx, rx) = mpsc::unbounded_channel();
        let meta = Meta {
            user: journal.user_id.clone(),
            model: journal.model.clone(),
            conversation_id: journal.conversation_id.clone(),
            node: self.node_id.clone(),
            created: journal.created,
        };
        let meta = serde_json::to_string(&meta).expect("meta serializes");
        let writer = RedisWriter {
            tx,
            backlog: self.backlog.clone(),
        };
        writer.send(Write::Entry("m", meta));
        actix_rt::spawn(write_entries(
            self.cluster.clone(),
            self.key(&journal.stream_id),
            self.retention,
            rx,
            self.backlog.clone(),
        ));
        Box::new(writer)
    }

    fn unwritten(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    fn follow(
        &self,
        stream_id: &str,
        user_id: &str,
        after_seq: Option<u64>,
    ) -> LocalBoxFuture<'static, Option<RemoteAnswer>> {
        let cluster = self.cluster.clone();
        let key = self.key(stream_id);
        let user_id = user_id.to_owned();
        Box::pin(async move {
            // A connection of its own: XREAD blocks it, and every command queued behind it on the
            // shared one, longer than the shared one waits for a reply.
            let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(
                Duration::from_millis(BLOCK_MS) + Duration::from_secs(2),
            ));
            let mut conn = cluster
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .ok()?;
            // A client may resume a moment after its cut, before the owning node's last writes
            // (or its first) reached Redis: an answer not there yet is looked for again briefly.
            let mut entries: Entries = Vec::new();
            for attempt in 0..=NOT_YET_RETRIES {
                entries = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                if !entries.is_empty() || attempt == NOT_YET_RETRIES {
                    break;
                }
                tokio::time::sleep(NOT_YET_PAUSE).await;
            }
            let (_, fields) = entries.first()?;
            let meta: Meta = match fields.as_slice() {
                [f, v] if f == "m" => serde_json::from_str(v).ok()?,
                _ => return None,
            };
            if meta.user != user_id {
                return None;
            }
            let mut after = after_seq;
            let mut first = Vec::new();
            let ended = pieces_of(&entries, &mut after, &mut first);
            let mut last_id = entries.last().map(|(id, _)| id.clone())?;
            let node_key = cluster.key(&format!("node:{}", meta.node));
            let follower_key = format!("{key}:follower");
            let pieces = async_stream::stream! {
                for piece in first {
                    yield piece;
                }
                if ended {
                    return;
                }
                let mut quiet = tokio::time::Instant::now();
                loop {
                    let _: Result<(), _> = redis::cmd("SET")
                        .arg(&follower_key)
                        .arg(1)
                        .arg("PX")
                        .arg(FOLLOWER_TTL_MS)
                        .query_async(&mut conn)
                        .await;
                    let read: Result<Option<Vec<(String, Entries)>>, _> = redis::cmd("XREAD")
                        .arg("BLOCK")
                        .arg(BLOCK_MS)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(&last_id)
                        .query_async(&mut conn)
                        .await;
                    let entries = match read {
                        Ok(Some(streams)) => streams.into_iter().flat_map(|(_, e)| e).collect(),
                        Ok(None) => Vec::new(),
                        Err(e) => {
                            yield Remote::Lost(format!("the answer's journal cannot be read: {e}"));
                            return;
                        }
                    };
                    if let Some((id, _)) = entries.last() {
                        last_id = id.clone();
                        quiet = tokio::time::Instant::now();
                        let mut out = Vec::new();
                        let ended = pieces_of(&entries, &mut after, &mut out);
                        for piece in out {
                            yield piece;
                        }
                        if ended {
                            return;
                        }
                    } else if quiet.elapsed() >= QUIET_BEFORE_CHECK {
                        quiet = tokio::time::Instant::now();
                        let alive: Result<bool, _> = redis::cmd("EXISTS")
                            .arg(&node_key)
                            .query_async(&mut conn)
                            .await;
                        if matches!(alive, Ok(false)) {
                            yield Remote::Lost(
                                "the node running this answer stopped before it finished; \
                                 the chunks above are all it sent"
                                    .into(),
                            );
                            return;
                        }
                    }
                }
            };
            Some(RemoteAnswer {
                model: meta.model,
                conversation_id: meta.conversation_id,
                created: if meta.created == 0 {
                    ai_gateway_actors::unix_time::now_unix_secs()
                } else {
                    meta.created
                },
                pieces: Box::pin(pieces),
            })
        })
    }

    fn followed(&self, stream_id: &str) -> LocalBoxFuture<'static, bool> {
        let cluster = self.cluster.clone();
        let key = format!("{}:follower", self.key(stream_id));
        Box::pin(async move {
            let Ok(mut conn) = cluster.conn().await else {
                return false;
            };
            redis::cmd("EXISTS")
                .arg(&key)
                .query_async::<bool>(&mut conn)
                .await
                .unwrap_or(false)
        })
    }

    fn cancel(&self, stream_id: &str, user_id: &str) -> LocalBoxFuture<'static, ()> {
        let cluster = self.cluster.clone();
        let event = super::ClusterEvent::CancelAnswer {
            stream_id: stream_id.to_owned(),
            user_id: user_id.to_owned(),
        };
        Box::pin(async move {
            if let Err(e) = cluster.publish(&event).await {
                tracing::warn!(error = %e, "cannot tell the other nodes to cancel an answer");
            }
        })
    }
}
