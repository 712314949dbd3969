//! The cluster's Redis: one connection for commands and subscriptions (RESP3, pushes to a
//! channel), standalone or Redis Cluster, and the key and channel names of a cluster.

use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, PushInfo, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc;

use crate::metrics::{Metrics, OpLabel};

/// How long a Redis command may take before it counts as failed: a node keeps serving its own
/// sessions while Redis is away, so it never waits long for it.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A connection to the cluster's Redis.
#[derive(Clone)]
pub enum Conn {
    /// One Redis server (pub/sub with SUBSCRIBE / PUBLISH).
    Single(ConnectionManager),
    /// A Redis Cluster (sharded pub/sub with SSUBSCRIBE / SPUBLISH).
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Connects to `urls` (one URL, or Redis Cluster seed nodes when `cluster`), with pushes
    /// (subscribed messages, disconnections) sent to `pushes`.
    pub async fn connect(urls: &str, cluster: bool, pushes: mpsc::UnboundedSender<PushInfo>) -> RedisResult<Conn> {
        let urls: Vec<String> = urls.split(',').map(|u| resp3(u.trim())).filter(|u| !u.is_empty()).collect();
        if cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(pushes)
                .connection_timeout(RESPONSE_TIMEOUT)
                .response_timeout(RESPONSE_TIMEOUT)
                // Bounded in all, retries included: the node must learn soon that Redis is away.
                .overall_response_timeout(Some(RESPONSE_TIMEOUT * 2))
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let url = urls.first().cloned().unwrap_or_default();
            let client = redis::Client::open(url)?;
            let cfg = ConnectionManagerConfig::new()
                .set_push_sender(pushes)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(RESPONSE_TIMEOUT))
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_max_delay(Duration::from_millis(500));
            Ok(Conn::Single(ConnectionManager::new_with_config(client, cfg).await?))
        }
    }

    /// True on a Redis Cluster.
    pub fn sharded(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Subscribes to `channels` (sharded on a Redis Cluster); returns once Redis confirmed.
    pub async fn subscribe(&self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self.clone() {
            Conn::Single(mut c) => c.subscribe(channels).await,
            Conn::Cluster(mut c) => {
                // One shard channel per command: a Redis Cluster refuses SSUBSCRIBE to channels
                // of different slots in one command.
                for ch in channels {
                    c.ssubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    /// Unsubscribes from `channels`.
    pub async fn unsubscribe(&self, channels: &[String]) -> RedisResult<()> {
        if channels.is_empty() {
            return Ok(());
        }
        match self.clone() {
            Conn::Single(mut c) => c.unsubscribe(channels).await,
            Conn::Cluster(mut c) => {
                for ch in channels {
                    c.sunsubscribe(ch).await?;
                }
                Ok(())
            }
        }
    }

    /// The command that publishes `payload` on `channel`.
    pub fn publish_cmd(&self, channel: &str, payload: &[u8]) -> Cmd {
        let mut c = redis::cmd(if self.sharded() { "SPUBLISH" } else { "PUBLISH" });
        c.arg(channel).arg(payload);
        c
    }

    /// Runs one command, timed and counted under `op`.
    pub async fn run<T: redis::FromRedisValue>(&self, metrics: &Metrics, op: &str, cmd: &Cmd) -> RedisResult<T> {
        let started = Instant::now();
        let r = cmd.query_async(&mut self.clone()).await;
        observe(metrics, op, started, r.is_ok());
        r
    }

    /// Runs independent commands: in one pipeline on a single Redis, concurrently on a Redis
    /// Cluster (their keys may live on different shards). One result per command.
    pub async fn run_many(&self, metrics: &Metrics, op: &str, cmds: Vec<Cmd>) -> Vec<RedisResult<Value>> {
        if cmds.is_empty() {
            return Vec::new();
        }
        let started = Instant::now();
        let out: Vec<RedisResult<Value>> = match self.clone() {
            Conn::Single(mut c) => {
                let mut p = redis::pipe();
                for cmd in &cmds {
                    p.add_command(cmd.clone());
                }
                match p.query_async::<Vec<Value>>(&mut c).await {
                    Ok(values) if values.len() == cmds.len() => values
                        .into_iter()
                        .map(|v| match v {
                            Value::ServerError(e) => Err(e.into()),
                            v => Ok(v),
                        })
                        .collect(),
                    Ok(_) => cmds.iter().map(|_| Err(short_reply())).collect(),
                    Err(e) => cmds.iter().map(|_| Err(e.clone())).collect(),
                }
            }
            Conn::Cluster(c) => {
                let mut set = tokio::task::JoinSet::new();
                for (i, cmd) in cmds.into_iter().enumerate() {
                    let mut c = c.clone();
                    set.spawn(async move { (i, cmd.query_async::<Value>(&mut c).await) });
                }
                let mut out: Vec<Option<RedisResult<Value>>> = Vec::new();
                while let Some(done) = set.join_next().await {
                    if let Ok((i, r)) = done {
                        if out.len() <= i {
                            out.resize_with(i + 1, || None);
                        }
                        out[i] = Some(r);
                    }
                }
                out.into_iter().map(|r| r.unwrap_or_else(|| Err(short_reply()))).collect()
            }
        };
        observe(metrics, op, started, out.iter().all(Result::is_ok));
        out
    }
}

fn short_reply() -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Client, "missing reply in a pipeline"))
}

fn observe(metrics: &Metrics, op: &str, started: Instant, ok: bool) {
    let label = OpLabel { op: op.to_owned() };
    metrics.redis_latency.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    if !ok {
        metrics.redis_errors.get_or_create(&label).inc();
    }
}

/// `url` asking for RESP3 (pushes on the command connection).
fn resp3(url: &str) -> String {
    if url.is_empty() || url.contains("protocol=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    let url = if url.contains('?') || url.trim_start_matches("redis://").contains('/') {
        url.to_owned()
    } else {
        format!("{url}/")
    };
    format!("{url}{sep}protocol=resp3")
}

/// Names of a cluster's keys and channels. Everything per user, room or node is hash-tagged
/// with it, so that on a Redis Cluster one user's keys (and a room's or a node's channel) sit
/// in one slot.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Keys { prefix: prefix.to_owned() }
    }

    /// Sorted set: node key -> lease expiry (ms).
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// Hash: device type -> presence entry (JSON) of `user`'s sessions.
    pub fn presence(&self, user: &str) -> String {
        format!("{}:p:{{{user}}}", self.prefix)
    }

    /// String: when `user` was last seen (ms).
    pub fn last_seen(&self, user: &str) -> String {
        format!("{}:ls:{{{user}}}", self.prefix)
    }

    /// Set: users with a session on `node`.
    pub fn node_users(&self, node: &str) -> String {
        format!("{}:nu:{{{node}}}", self.prefix)
    }

    /// Lock: one node reaps dead `node`.
    pub fn reap(&self, node: &str) -> String {
        format!("{}:reap:{{{node}}}", self.prefix)
    }

    /// Channel of one node: inbox entries, frames, kicks for its sessions.
    pub fn node_channel(&self, node: &str) -> String {
        format!("{}:n:{{{node}}}", self.prefix)
    }

    /// Channel of one room: its messages and events, for nodes with online members.
    pub fn room_channel(&self, room: &str) -> String {
        format!("{}:r:{{{room}}}", self.prefix)
    }

    /// Channel of one user's presence changes, for nodes with watchers.
    pub fn watch_channel(&self, user: &str) -> String {
        format!("{}:w:{{{user}}}", self.prefix)
    }

    /// Channel every node hears: membership changes, resync requests.
    pub fn all_channel(&self) -> String {
        format!("{}:all", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_ask_for_resp3() {
        assert_eq!(resp3("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379/?protocol=resp3");
        assert_eq!(resp3("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0?protocol=resp3");
        assert_eq!(resp3("redis://h/0?protocol=2"), "redis://h/0?protocol=2");
        assert_eq!(resp3("redis://h:1/?db=1"), "redis://h:1/?db=1&protocol=resp3");
    }

    #[test]
    fn per_entity_names_are_hash_tagged() {
        let k = Keys::new("t");
        assert_eq!(k.presence("alice"), "t:p:{alice}");
        assert_eq!(k.node_channel("3.ab"), "t:n:{3.ab}");
        assert_eq!(k.room_channel("r1"), "t:r:{r1}");
        assert_eq!(k.all_channel(), "t:all");
    }
}
