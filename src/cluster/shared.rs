//! The node's one Redis connection for commands, shared by every task.
//!
//! A redis-rs `MultiplexedConnection` pipelines the commands of any number of tasks over one
//! socket, so lending it out one task at a time buys nothing; and deadpool-redis checks every
//! loan with an `UNWATCH` + `PING` round trip first, so each command cost two round trips. A
//! revocation's `PUBLISH`, a rate limit's script and a directory write each waited for Redis
//! twice (on a loaded Redis, one round trip is what decides a cross-node close's tail).
//!
//! So the pool makes the connection (with its timeouts, and checked once), and from then on
//! every command shares it. A command that finds it broken (Redis restarted, the socket cut)
//! retires it, so the next command takes a fresh one from the pool: one command fails, as one
//! would have with the pool too, and the node carries on.
//!
//! What must not go through it: a blocking command (`XREAD BLOCK` holds every command queued
//! behind it; the journal's follower has a connection of its own) and a transaction (`MULTI`,
//! `WATCH`: other tasks' commands would land inside it).

use std::sync::{Arc, Mutex};

use deadpool_redis::{
    redis::{self, aio::MultiplexedConnection},
    Pool,
};

use super::ClusterError;

/// Where the shared connection is kept.
#[derive(Default)]
pub(super) struct Slot {
    /// The connection, and its number (so that an error on a retired connection does not
    /// retire its successor).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    made: std::sync::atomic::AtomicU64,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shared connection; the first call (and the first after one was retired) takes a
    /// connection from `pool`.
    pub(super) async fn get(
        self: &Arc<Self>,
        pool: &Pool,
    ) -> Result<SharedConnection, ClusterError> {
        if let Some((number, conn)) = self.lock().clone() {
            return Ok(self.lend(number, conn));
        }
        let conn = deadpool_redis::Connection::take(pool.get().await?);
        let number = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Tasks that found the slot empty together each made one; the last is kept, the others
        // serve their one caller and close.
        *self.lock() = Some((number, conn.clone()));
        Ok(self.lend(number, conn))
    }

    fn lend(self: &Arc<Self>, number: u64, conn: MultiplexedConnection) -> SharedConnection {
        SharedConnection {
            conn,
            number,
            slot: self.clone(),
        }
    }

    /// Forgets connection `number` if it is still the shared one.
    fn retire(&self, number: u64) {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|(n, _)| *n == number) {
            *current = None;
        }
    }
}

/// The shared connection, as one caller uses it.
pub struct SharedConnection {
    conn: MultiplexedConnection,
    number: u64,
    slot: Arc<Slot>,
}

impl SharedConnection {
    fn check<T>(&self, result: &redis::RedisResult<T>) {
        if let Err(e) = result {
            if e.is_unrecoverable_error() || e.is_connection_dropped() {
                tracing::debug!(error = %e, "the shared Redis connection broke; the next command opens another");
                self.slot.retire(self.number);
            }
        }
    }
}

impl redis::aio::ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        Box::pin(async move {
            let result = self.conn.req_packed_command(cmd).await;
            self.check(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        Box::pin(async move {
            let result = self.conn.req_packed_commands(pipeline, offset, count).await;
            self.check(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}

#[cfg(test)]
mod tests {
    //! Against the real Redis (127.0.0.1:6379), each test under a prefix of its own.
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::super::{Cluster, ClusterEvent};

    const REDIS: &str = "redis://127.0.0.1:6379/";

    fn cluster() -> Cluster {
        let prefix = format!("agw_test:{}:", uuid::Uuid::new_v4().simple());
        Cluster::new(REDIS, "", &prefix).unwrap()
    }

    /// `CLIENT INFO`'s `addr=` of the connection the cluster's commands use.
    async fn addr(cluster: &Cluster) -> String {
        let mut conn = cluster.conn().await.unwrap();
        let info: String = redis::cmd("CLIENT")
            .arg("INFO")
            .query_async(&mut conn)
            .await
            .unwrap();
        let addr = info
            .split_whitespace()
            .find_map(|f| f.strip_prefix("addr="));
        addr.expect("CLIENT INFO names the address").to_owned()
    }

    fn event(n: usize) -> ClusterEvent {
        ClusterEvent::UserChanged {
            user_id: format!("u{n}"),
        }
    }

    /// Commands after the first go straight to Redis: no `UNWATCH` + `PING` round trip before
    /// each, as when every command borrowed a pooled connection (watched with `MONITOR`, this
    /// cluster's connection only).
    #[actix_rt::test]
    async fn commands_share_one_connection_with_no_check_before_each() {
        let cluster = cluster();
        let ours = addr(&cluster).await;
        let client = redis::Client::open(REDIS).unwrap();
        let mut lines = client
            .get_async_monitor()
            .await
            .unwrap()
            .into_on_message::<String>();
        for n in 0..5 {
            cluster.publish(&event(n)).await.unwrap();
        }
        cluster.ping().await.unwrap();
        let mut seen = Vec::new();
        // The last command, the PING, is the last line this connection shows.
        while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), lines.next()).await
        {
            if line.contains(&format!(" {ours}]")) {
                let command = line.split('"').nth(1).unwrap_or_default().to_uppercase();
                let done = command == "PING";
                seen.push(command);
                if done {
                    break;
                }
            }
        }
        assert_eq!(
            seen,
            ["PUBLISH", "PUBLISH", "PUBLISH", "PUBLISH", "PUBLISH", "PING"],
            "the commands Redis saw on this node's connection"
        );
        assert_eq!(addr(&cluster).await, ours, "one connection serves them all");
    }

    /// A connection Redis cut is replaced: the command that finds it broken fails, the next
    /// one runs on a new connection.
    #[actix_rt::test]
    async fn a_broken_connection_is_replaced_by_the_next_command() {
        let cluster = cluster();
        let ours = addr(&cluster).await;
        let client = redis::Client::open(REDIS).unwrap();
        let mut admin = client.get_multiplexed_async_connection().await.unwrap();
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ADDR")
            .arg(&ours)
            .arg("SKIPME")
            .arg("yes")
            .query_async(&mut admin)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        // At most one command fails on the cut connection.
        let mut failed = 0;
        while let Err(e) = cluster.publish(&event(0)).await {
            failed += 1;
            assert!(failed < 2, "still failing after a new connection: {e}");
        }
        let now = addr(&cluster).await;
        assert_ne!(now, ours, "a new connection");
        cluster.ping().await.unwrap();
    }
}
