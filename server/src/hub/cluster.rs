//! The cluster's hub: this node's sessions, plus presence in Redis (user -> device -> node,
//! owned under a node lease) and routing between nodes through Redis pub/sub.
//!
//! * A message for a user is published only to the channels of the nodes that hold a session
//!   of that user (read from the user's presence hash), never broadcast.
//! * Room traffic is published on the room's channel, which only nodes with an online member
//!   of the room subscribe to.
//! * Pub/sub is the fast path, the store the truth: whatever pub/sub drops (a Redis restart, a
//!   node crash, a slow subscriber) the sessions read from the store through their cursors;
//!   after Redis comes back every session of the node reads what it may have missed.
//! * A node renews its lease every third of `--node-lease`; when a lease runs out, another
//!   node removes the dead node's presence entries and announces its users offline.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use redis::{PushInfo, PushKind, RedisResult, Value};
use serde::{Deserialize, Serialize};
use tether_proto::{DevicePresence, Frame, KickReason, Presence, RoomEventKind};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::local::room_event_frame;
use super::redis::{Conn, Keys};
use super::{Hub, RoomDelivery, SessionHandle, SessionInfo, SessionTx, Sessions, UserDelivery};
use crate::clock::Clock;
use crate::metrics::{BusLabel, Metrics};
use crate::rooms::Rooms;
use crate::store::{Store, StoredMessage};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How long a user's last-seen time is kept in Redis.
const LAST_SEEN_TTL_SECS: u64 = 30 * 24 * 3600;

/// How long Redis may fail before the node replaces its connection.
const REBUILD_AFTER: Duration = Duration::from_secs(5);

/// Most queued routes handled in one round (one presence lookup and one publish round trip).
const ROUTE_BATCH: usize = 1024;

/// A session as its presence entry in Redis records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Key of the node that holds it.
    pub n: String,
    /// Name of that node (`node-3`).
    pub name: String,
    /// Session id on that node.
    pub sid: String,
    /// Device id.
    pub dev: String,
    /// Device type.
    pub dt: String,
    /// Login time, ms.
    pub since: u64,
    /// Remote address at login.
    pub remote: String,
    /// Connection metadata.
    #[serde(default)]
    pub meta: std::collections::BTreeMap<String, String>,
}

/// What nodes tell each other through pub/sub.
#[derive(Debug, Serialize, Deserialize)]
enum Bus {
    /// Inbox entries for sessions of the receiving node: (user, seq, message).
    Inbox(Vec<(String, u64, Arc<StoredMessage>)>),
    /// A room message, on the room's channel.
    Room { origin: String, seq: u64, msg: Arc<StoredMessage> },
    /// A room event for the room's online members, on the room's channel.
    RoomEvent { origin: String, frame: Frame },
    /// A frame for these users' sessions on the receiving node.
    Frame { users: Vec<String>, frame: Frame },
    /// A login of `by_device` elsewhere displaced session `sid` of `user` on the receiving node.
    Displace { user: String, sid: String, by_device: String },
    /// Kick `user`'s sessions (or `device`'s) on the receiving node.
    Kick { user: String, device: Option<String>, reason: KickReason },
    /// A user's presence changed, on the user's watch channel.
    Presence { origin: String, presence: Presence },
    /// A membership change, to every node.
    Member { origin: String, room: String, user: String, member: bool },
    /// Every session should read what it may have missed from the store, to every node.
    Resync { origin: String },
}

impl Bus {
    fn kind(&self) -> &'static str {
        match self {
            Bus::Inbox(_) => "inbox",
            Bus::Room { .. } => "room",
            Bus::RoomEvent { .. } => "room_event",
            Bus::Frame { .. } => "frame",
            Bus::Displace { .. } => "displace",
            Bus::Kick { .. } => "kick",
            Bus::Presence { .. } => "presence",
            Bus::Member { .. } => "member",
            Bus::Resync { .. } => "resync",
        }
    }
}

/// Work for the routing task.
enum Route {
    /// Inbox entries: look their users up and publish to the nodes that hold them.
    Inbox(Vec<UserDelivery>),
    /// A frame for users: same lookup.
    Frame(Vec<String>, Frame),
    /// Publish on a channel.
    Publish(String, Bus),
}

/// Settings of a cluster hub.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Redis URL (or Redis Cluster seed URLs, comma-separated).
    pub redis_url: String,
    /// The URLs are a Redis Cluster's.
    pub redis_cluster: bool,
    /// Prefix of keys and channels.
    pub prefix: String,
    /// The node's lease on its presence entries.
    pub lease: Duration,
    /// This node's id (`--node-id`).
    pub node_id: u16,
}

/// Rooms with online members on this node: room -> users, user -> rooms.
#[derive(Debug, Default)]
struct RoomIndex {
    by_room: HashMap<String, HashSet<String>>,
    by_user: HashMap<String, HashSet<String>>,
}

impl RoomIndex {
    /// Adds `user` to `room`; true when the room had nobody here before.
    fn add(&mut self, room: &str, user: &str) -> bool {
        self.by_user.entry(user.to_owned()).or_default().insert(room.to_owned());
        let users = self.by_room.entry(room.to_owned()).or_default();
        let fresh = users.is_empty();
        users.insert(user.to_owned());
        fresh
    }

    /// Removes `user` from `room`; true when the room has nobody here any more.
    fn remove(&mut self, room: &str, user: &str) -> bool {
        if let Some(rooms) = self.by_user.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.by_user.remove(user);
            }
        }
        match self.by_room.get_mut(room) {
            Some(users) => {
                users.remove(user);
                if users.is_empty() {
                    self.by_room.remove(room);
                    return true;
                }
                false
            }
            None => false,
        }
    }

    /// Removes `user` from every room; returns the rooms left with nobody here.
    fn remove_user(&mut self, user: &str) -> Vec<String> {
        let rooms = self.by_user.remove(user).unwrap_or_default();
        rooms.into_iter().filter(|r| self.remove(r, user)).collect()
    }

    fn users(&self, room: &str) -> Vec<String> {
        self.by_room.get(room).map(|u| u.iter().cloned().collect()).unwrap_or_default()
    }
}

struct Inner {
    local: Sessions,
    rooms: Arc<Rooms>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    /// The Redis connection; replaced when it stays broken (see [`heartbeat_task`]).
    conn: std::sync::RwLock<Conn>,
    /// Where every connection sends its pushes (the subscriber task reads them).
    pushes: mpsc::UnboundedSender<PushInfo>,
    settings: ClusterSettings,
    /// Since when Redis has failed without the node reconciling (monotonic).
    down_since: Mutex<Option<std::time::Instant>>,
    keys: Keys,
    /// This node's key: its id and a boot nonce, so a restarted node never inherits the
    /// entries of its former self.
    me: String,
    lease_ms: u64,
    /// Leases of the nodes this node knows of (node key -> expiry ms).
    nodes: Mutex<HashMap<String, u64>>,
    index: Mutex<RoomIndex>,
    routes: mpsc::UnboundedSender<Route>,
    /// Last-seen times not written to Redis yet.
    seen: Mutex<HashMap<String, u64>>,
    /// Redis failed since the node last reconciled with it.
    dirty: AtomicBool,
    /// Deliveries were dropped (not routed) since the node last reconciled.
    dropped: AtomicBool,
}

/// The Redis-backed [`Hub`] of a node in a cluster.
pub struct ClusterHub {
    inner: Arc<Inner>,
}

/// Why a cluster hub could not start.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

impl ClusterHub {
    /// Connects to Redis, takes this node's lease, subscribes to its channels and starts the
    /// routing, subscriber and heartbeat tasks.
    pub async fn start(
        settings: ClusterSettings,
        node_name: String,
        rooms: Arc<Rooms>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Result<ClusterHub, ClusterError> {
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let conn = Conn::connect(&settings.redis_url, settings.redis_cluster, push_tx.clone()).await?;
        let (routes, routes_rx) = mpsc::unbounded_channel();
        let me = format!("{}.{}", settings.node_id, hex::encode(rand::random::<[u8; 4]>()));
        let inner = Arc::new(Inner {
            local: Sessions::new(node_name),
            rooms,
            store,
            clock,
            metrics,
            conn: std::sync::RwLock::new(conn),
            pushes: push_tx,
            settings: settings.clone(),
            down_since: Mutex::new(None),
            keys: Keys::new(&settings.prefix),
            me,
            lease_ms: settings.lease.as_millis().max(300) as u64,
            nodes: Mutex::new(HashMap::new()),
            index: Mutex::new(RoomIndex::default()),
            routes,
            seen: Mutex::new(HashMap::new()),
            dirty: AtomicBool::new(false),
            dropped: AtomicBool::new(false),
        });
        inner.heartbeat().await?;
        inner.conn().subscribe(&[inner.keys.node_channel(&inner.me), inner.keys.all_channel()]).await?;
        inner.metrics.redis_up.set(1);
        info!(node = %inner.me, sharded = inner.conn().sharded(), "cluster hub joined");
        tokio::spawn(route_task(inner.clone(), routes_rx));
        tokio::spawn(subscriber_task(Arc::downgrade(&inner), push_rx));
        tokio::spawn(heartbeat_task(Arc::downgrade(&inner)));
        Ok(ClusterHub { inner })
    }
}

const ATTACH: &str = r"
local before = redis.call('HGETALL', KEYS[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return before
";

const DETACH: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v then
  local e = cjson.decode(v)
  if e.n == ARGV[2] and e.sid == ARGV[3] then redis.call('HDEL', KEYS[1], ARGV[1]) end
end
return redis.call('HVALS', KEYS[1])
";

const REAP: &str = r"
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ok, e = pcall(cjson.decode, all[i + 1])
  if (not ok) or e.n == ARGV[1] then redis.call('HDEL', KEYS[1], all[i]) end
end
return redis.call('HVALS', KEYS[1])
";

fn entries_of(v: &Value) -> Vec<Entry> {
    let items: Vec<Vec<u8>> = redis::from_redis_value_ref(v).unwrap_or_default();
    items.iter().filter_map(|b| serde_json::from_slice(b).ok()).collect()
}

impl Inner {
    fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The current Redis connection (a cheap handle).
    fn conn(&self) -> Conn {
        self.conn.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn failed(&self, what: &str, e: &redis::RedisError) {
        if !self.dirty.swap(true, Ordering::AcqRel) {
            warn!(error = %e, what, "redis unavailable: serving this node's sessions alone until it is back");
        }
        lock(&self.down_since).get_or_insert_with(std::time::Instant::now);
        self.metrics.redis_up.set(0);
    }

    /// A connection that has failed for longer than `REBUILD_AFTER` is replaced by a new one
    /// (a client stuck in its own recovery would otherwise never come back).
    async fn rebuild_if_stuck(&self) {
        let stuck = lock(&self.down_since).is_some_and(|t| t.elapsed() >= REBUILD_AFTER);
        if !stuck {
            return;
        }
        let s = &self.settings;
        match tokio::time::timeout(REBUILD_AFTER, Conn::connect(&s.redis_url, s.redis_cluster, self.pushes.clone()))
            .await
        {
            Ok(Ok(conn)) => {
                *self.conn.write().unwrap_or_else(|e| e.into_inner()) = conn;
                info!("redis connection replaced after a long failure");
            }
            Ok(Err(e)) => debug!(error = %e, "redis still unreachable"),
            Err(_) => debug!("redis still unreachable (connect timed out)"),
        }
        // Wait another period before the next attempt.
        *lock(&self.down_since) = Some(std::time::Instant::now());
    }

    /// Whether `node` may hold live sessions: itself, or a node whose lease has not run out
    /// (a node not known yet is given the benefit of the doubt; the reaper removes the dead).
    fn alive(&self, node: &str) -> bool {
        node == self.me || lock(&self.nodes).get(node).is_none_or(|exp| *exp >= self.now())
    }

    fn entry(&self, s: &SessionHandle) -> Entry {
        Entry {
            n: self.me.clone(),
            name: self.local.node().to_owned(),
            sid: s.id.to_string(),
            dev: s.device_id.clone(),
            dt: s.device_type.clone(),
            since: s.connected_ms,
            remote: s.peer.remote_address().to_string(),
            meta: s.metadata.clone(),
        }
    }

    fn publish(&self, channel: String, bus: Bus) {
        let _ = self.routes.send(Route::Publish(channel, bus));
    }

    /// The presence entries of each of `users` held by live nodes (`None`: Redis failed).
    async fn lookup(&self, users: &[String]) -> Option<Vec<Vec<Entry>>> {
        let cmds = users.iter().map(|u| redis::cmd("HVALS").arg(self.keys.presence(u)).clone()).collect();
        let mut out = Vec::with_capacity(users.len());
        for r in self.conn().run_many(&self.metrics, "lookup", cmds).await {
            match r {
                Ok(v) => out.push(entries_of(&v).into_iter().filter(|e| self.alive(&e.n)).collect()),
                Err(e) => {
                    self.failed("lookup", &e);
                    return None;
                }
            }
        }
        Some(out)
    }

    /// Renews this node's lease and refreshes the leases it knows. Returns false when Redis
    /// did not know this node (restarted, or the node was reaped): its state must be restored.
    async fn heartbeat(&self) -> RedisResult<bool> {
        let now = self.now();
        let conn = self.conn();
        let known: Option<f64> =
            conn.run(&self.metrics, "heartbeat", redis::cmd("ZSCORE").arg(self.keys.nodes()).arg(&self.me)).await?;
        // GT: a delayed, older renewal never moves the lease back.
        let renew = redis::cmd("ZADD").arg(self.keys.nodes()).arg("GT").arg(now + self.lease_ms).arg(&self.me).clone();
        let _: i64 = conn.run(&self.metrics, "heartbeat", &renew).await?;
        let all: Vec<(String, f64)> = self
            .conn()
            .run(
                &self.metrics,
                "heartbeat",
                redis::cmd("ZRANGE").arg(self.keys.nodes()).arg(0).arg(-1).arg("WITHSCORES"),
            )
            .await?;
        *lock(&self.nodes) = all.into_iter().map(|(n, s)| (n, s as u64)).collect();
        Ok(known.is_some())
    }

    /// Writes the last-seen times gathered since the last flush.
    async fn flush_seen(&self) {
        let seen: Vec<(String, u64)> = lock(&self.seen).drain().collect();
        if seen.is_empty() {
            return;
        }
        let cmds = seen
            .iter()
            .map(|(u, ms)| {
                redis::cmd("SET").arg(self.keys.last_seen(u)).arg(ms).arg("EX").arg(LAST_SEEN_TTL_SECS).clone()
            })
            .collect();
        if let Some(Err(e)) =
            self.conn().run_many(&self.metrics, "last_seen", cmds).await.into_iter().find(Result::is_err)
        {
            self.failed("last_seen", &e);
            lock(&self.seen).extend(seen);
        }
    }

    /// After Redis failed: subscribe again, write back this node's presence entries and have
    /// every session read what pub/sub may have dropped meanwhile.
    async fn reconcile(&self) -> RedisResult<()> {
        let mut channels = vec![self.keys.node_channel(&self.me), self.keys.all_channel()];
        channels.extend(lock(&self.index).by_room.keys().map(|r| self.keys.room_channel(r)));
        channels.extend(self.local.watched_users().iter().map(|u| self.keys.watch_channel(u)));
        self.conn().subscribe(&channels).await?;
        let sessions = self.local.all();
        let mut cmds = Vec::new();
        for s in &sessions {
            let entry = serde_json::to_string(&self.entry(s)).unwrap_or_default();
            // HSETNX: a login elsewhere meanwhile wins over this node's older entry.
            cmds.push(redis::cmd("HSETNX").arg(self.keys.presence(&s.user)).arg(&s.device_type).arg(entry).clone());
            cmds.push(redis::cmd("SADD").arg(self.keys.node_users(&self.me)).arg(&s.user).clone());
        }
        for r in self.conn().run_many(&self.metrics, "reconcile", cmds).await {
            r?;
        }
        self.local.resync_all();
        self.metrics.cluster_resyncs.inc();
        if self.dropped.load(Ordering::Acquire) {
            // Deliveries this node could not route meanwhile are in the store: every node that
            // is connected now reads what its sessions missed (one that is not will reconcile,
            // and so resync, once it is back).
            let bus = Bus::Resync { origin: self.me.clone() };
            if let Ok(payload) = rmp_serde::to_vec_named(&bus) {
                let conn = self.conn();
                conn.run::<Value>(&self.metrics, "reconcile", &conn.publish_cmd(&self.keys.all_channel(), &payload))
                    .await?;
            }
            self.dropped.store(false, Ordering::Release);
        }
        info!(sessions = sessions.len(), "redis is back: subscriptions and presence restored, sessions resync");
        Ok(())
    }

    /// Removes the presence entries of nodes whose lease ran out, once per dead node across
    /// the cluster, and announces their users offline.
    async fn reap(&self, hub: &ClusterHub) {
        let now = self.now();
        let dead: Vec<String> =
            lock(&self.nodes).iter().filter(|(n, exp)| **exp < now && **n != self.me).map(|(n, _)| n.clone()).collect();
        for node in dead {
            // Only if the lease is still out now (the cached one may be a heartbeat old).
            let score: RedisResult<Option<f64>> =
                self.conn().run(&self.metrics, "reap", redis::cmd("ZSCORE").arg(self.keys.nodes()).arg(&node)).await;
            if !matches!(score, Ok(Some(exp)) if (exp as u64) < self.now()) {
                continue;
            }
            let lock_cmd =
                redis::cmd("SET").arg(self.keys.reap(&node)).arg(&self.me).arg("NX").arg("EX").arg(60).clone();
            let got: RedisResult<Option<String>> = self.conn().run(&self.metrics, "reap", &lock_cmd).await;
            if !matches!(got, Ok(Some(_))) {
                continue;
            }
            let users: Vec<String> = self
                .conn()
                .run(&self.metrics, "reap", redis::cmd("SMEMBERS").arg(self.keys.node_users(&node)))
                .await
                .unwrap_or_default();
            info!(node = %node, users = users.len(), "node lease ran out: its sessions are gone");
            for user in users {
                let left: RedisResult<Value> = self
                    .conn()
                    .run(
                        &self.metrics,
                        "reap",
                        redis::cmd("EVAL").arg(REAP).arg(1).arg(self.keys.presence(&user)).arg(&node),
                    )
                    .await;
                let Ok(left) = left else { continue };
                if entries_of(&left).iter().any(|e| self.alive(&e.n)) {
                    continue;
                }
                // The user went offline with the node.
                if let Ok(rooms) = self.store.rooms_of(&user).await {
                    for room in rooms {
                        hub.room_event(&room, RoomEventKind::Offline, &user, None).await;
                    }
                }
                hub.notify_presence(&user).await;
            }
            let _: RedisResult<Value> =
                self.conn().run(&self.metrics, "reap", redis::cmd("DEL").arg(self.keys.node_users(&node))).await;
            let _: RedisResult<Value> =
                self.conn().run(&self.metrics, "reap", redis::cmd("ZREM").arg(self.keys.nodes()).arg(&node)).await;
            lock(&self.nodes).remove(&node);
            self.metrics.nodes_reaped.inc();
            // What the dead node stored but never published (and what its clients' retries,
            // answered as duplicates elsewhere, did not deliver again) is in the store: every
            // session of the cluster reads what it missed.
            hub.resync_all();
        }
    }

    fn count_received(&self, kind: &str, used: &str) {
        self.metrics.bus_received.get_or_create(&BusLabel { kind: kind.into(), used: used.into() }).inc();
    }

    /// Handles one pub/sub message.
    async fn on_bus(&self, bus: Bus) {
        let kind = bus.kind();
        let used = match bus {
            Bus::Inbox(entries) => {
                let mut needed = false;
                let deliveries: Vec<UserDelivery> = entries
                    .into_iter()
                    .map(|(user, seq, msg)| {
                        needed |= self.local.is_online(&user);
                        UserDelivery { user, msg, seq, except: None }
                    })
                    .collect();
                self.local.deliver(&deliveries);
                needed
            }
            Bus::Room { origin, .. } | Bus::RoomEvent { origin, .. } | Bus::Presence { origin, .. }
                if origin == self.me =>
            {
                self.count_received(kind, "own");
                return;
            }
            Bus::Room { seq, msg, .. } => {
                let users = lock(&self.index).users(&msg.to.id);
                let mut frame = bytes::BytesMut::new();
                if tether_proto::encode_deliver(&msg.deliver_ref(seq), &mut frame).is_ok() {
                    let d = Arc::new(RoomDelivery { msg, seq, frame: frame.freeze() });
                    self.local.deliver_room(users.iter(), &d, None);
                }
                !users.is_empty()
            }
            Bus::RoomEvent { frame, .. } => {
                let room = match &frame {
                    Frame::RoomEvent(e) => e.room.clone(),
                    _ => return,
                };
                let users = lock(&self.index).users(&room);
                self.local.send_frame_to(users.iter().map(String::as_str), &frame);
                !users.is_empty()
            }
            Bus::Frame { users, frame } => {
                let needed = users.iter().any(|u| self.local.is_online(u));
                self.local.send_frame_to(users.iter().map(String::as_str), &frame);
                needed
            }
            Bus::Displace { user, sid, by_device } => {
                let sid: u64 = sid.parse().unwrap_or(0);
                self.local.displace_session(&user, sid, &by_device)
            }
            Bus::Kick { user, device, reason } => self.local.kick(&user, device.as_deref(), reason) > 0,
            Bus::Presence { presence, .. } => {
                let needed = self.local.is_watched(&presence.user);
                self.local.notify_watchers(&presence);
                needed
            }
            Bus::Member { origin, room, user, member } => {
                if origin == self.me {
                    self.count_received(kind, "own");
                    return;
                }
                self.rooms.changed_elsewhere(&room, &user, member);
                if self.local.is_online(&user) {
                    self.index_change(&room, &user, member).await;
                }
                true
            }
            Bus::Resync { origin } => {
                if origin != self.me {
                    self.local.resync_all();
                }
                true
            }
        };
        self.count_received(kind, if used { "needed" } else { "unneeded" });
    }

    /// Adds or removes a local user in a room's index, subscribing to or leaving its channel.
    async fn index_change(&self, room: &str, user: &str, member: bool) {
        let (sub, unsub) = {
            let mut index = lock(&self.index);
            if member {
                (index.add(room, user), false)
            } else {
                (false, index.remove(room, user))
            }
        };
        let ch = [self.keys.room_channel(room)];
        let r = if sub {
            self.conn().subscribe(&ch).await
        } else if unsub {
            self.conn().unsubscribe(&ch).await
        } else {
            Ok(())
        };
        if let Err(e) = r {
            self.failed("subscribe", &e);
        }
    }
}

/// Publishes what the node queued, looking up the nodes of the users it is for; one lookup and
/// one publish round trip for everything queued meanwhile.
async fn route_task(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Route>) {
    let mut batch = Vec::with_capacity(ROUTE_BATCH);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, ROUTE_BATCH).await == 0 {
            return;
        }
        // Users whose nodes are needed.
        let mut users: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for r in &batch {
            let list: Vec<&String> = match r {
                Route::Inbox(entries) => entries.iter().map(|e| &e.user).collect(),
                Route::Frame(users, _) => users.iter().collect(),
                Route::Publish(..) => Vec::new(),
            };
            for u in list {
                if seen.insert(u.clone()) {
                    users.push(u.clone());
                }
            }
        }
        let nodes_of: HashMap<String, Vec<String>> = match inner.lookup(&users).await {
            Some(found) => users
                .into_iter()
                .zip(found)
                .map(|(u, entries)| {
                    let mut nodes: Vec<String> = entries.into_iter().map(|e| e.n).filter(|n| *n != inner.me).collect();
                    nodes.sort();
                    nodes.dedup();
                    (u, nodes)
                })
                .collect(),
            // Redis is away: these deliveries are dropped here; once this node has reconciled
            // it asks every node to resync (`dropped`), and the recipients read them then.
            None => {
                inner.dropped.store(true, Ordering::Release);
                HashMap::new()
            }
        };
        let mut publishes: Vec<(String, Bus)> = Vec::new();
        let mut per_node: HashMap<String, Vec<(String, u64, Arc<StoredMessage>)>> = HashMap::new();
        for r in batch.drain(..) {
            match r {
                Route::Inbox(entries) => {
                    for e in entries {
                        for node in nodes_of.get(&e.user).into_iter().flatten() {
                            per_node.entry(node.clone()).or_default().push((e.user.clone(), e.seq, e.msg.clone()));
                        }
                    }
                }
                Route::Frame(users, frame) => {
                    let mut by_node: HashMap<&String, Vec<String>> = HashMap::new();
                    for u in &users {
                        for node in nodes_of.get(u).into_iter().flatten() {
                            by_node.entry(node).or_default().push(u.clone());
                        }
                    }
                    for (node, users) in by_node {
                        publishes.push((inner.keys.node_channel(node), Bus::Frame { users, frame: frame.clone() }));
                    }
                }
                Route::Publish(ch, bus) => publishes.push((ch, bus)),
            }
        }
        for (node, entries) in per_node {
            publishes.push((inner.keys.node_channel(&node), Bus::Inbox(entries)));
        }
        let mut cmds = Vec::with_capacity(publishes.len());
        for (ch, bus) in &publishes {
            match rmp_serde::to_vec_named(bus) {
                Ok(payload) => {
                    inner
                        .metrics
                        .bus_published
                        .get_or_create(&BusLabel { kind: bus.kind().into(), used: String::new() })
                        .inc();
                    cmds.push(inner.conn().publish_cmd(ch, &payload));
                }
                Err(e) => warn!(error = %e, "could not encode a cluster message"),
            }
        }
        if let Some(Err(e)) =
            inner.conn().run_many(&inner.metrics, "publish", cmds).await.into_iter().find(Result::is_err)
        {
            inner.failed("publish", &e);
            inner.dropped.store(true, Ordering::Release);
        }
    }
}

/// Reads pushes: subscribed messages, and disconnections (after which the node reconciles).
async fn subscriber_task(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<PushInfo>) {
    while let Some(push) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match push.kind {
            PushKind::Disconnection => {
                inner.failed("connection", &redis::RedisError::from((redis::ErrorKind::Io, "disconnected")));
            }
            PushKind::Message | PushKind::SMessage => {
                let Some(msg) = redis::Msg::from_push_info(push) else { continue };
                match rmp_serde::from_slice::<Bus>(msg.get_payload_bytes()) {
                    Ok(bus) => inner.on_bus(bus).await,
                    Err(e) => debug!(error = %e, channel = msg.get_channel_name(), "undecodable cluster message"),
                }
            }
            _ => {}
        }
    }
}

/// Renews the lease every third of it, writes last-seen times, reconciles after a Redis
/// failure and reaps dead nodes.
async fn heartbeat_task(inner: std::sync::Weak<Inner>) {
    // The lease is renewed on its own schedule; reconciling, last-seen writes and reaping run
    // beside it (one round at a time), so a slow round never lets the node's own lease lapse.
    let busy = Arc::new(AtomicBool::new(false));
    loop {
        let every = match inner.upgrade() {
            Some(i) if i.dirty.load(Ordering::Acquire) => Duration::from_millis(250),
            Some(i) => Duration::from_millis(i.lease_ms / 3),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        match inner.heartbeat().await {
            Ok(known) => {
                if !known {
                    inner.dirty.store(true, Ordering::Release);
                }
                if busy.swap(true, Ordering::AcqRel) {
                    continue;
                }
                let busy = busy.clone();
                tokio::spawn(async move {
                    maintain(&inner).await;
                    busy.store(false, Ordering::Release);
                });
            }
            Err(e) => {
                inner.failed("heartbeat", &e);
                inner.rebuild_if_stuck().await;
            }
        }
    }
}

/// One round of upkeep after a successful heartbeat: reconcile after a failure, write last-seen
/// times, reap dead nodes.
async fn maintain(inner: &Arc<Inner>) {
    if inner.dirty.load(Ordering::Acquire) {
        match inner.reconcile().await {
            Ok(()) => {
                inner.dirty.store(false, Ordering::Release);
                *lock(&inner.down_since) = None;
                inner.metrics.redis_up.set(1);
            }
            Err(e) => {
                inner.failed("reconcile", &e);
                inner.rebuild_if_stuck().await;
                return;
            }
        }
    }
    inner.flush_seen().await;
    let hub = ClusterHub { inner: inner.clone() };
    inner.reap(&hub).await;
}

impl ClusterHub {
    /// The presence of `user` across the cluster (this node's view when Redis is away).
    async fn presence_of(&self, users: &[String]) -> Vec<Presence> {
        let i = &self.inner;
        let found = i.lookup(users).await;
        let cmds = users.iter().map(|u| redis::cmd("GET").arg(i.keys.last_seen(u)).clone()).collect();
        let seen = i.conn().run_many(&i.metrics, "last_seen", cmds).await;
        users
            .iter()
            .enumerate()
            .map(|(k, user)| {
                let local_seen = i.local.last_seen(user).max(lock(&i.seen).get(user).copied().unwrap_or(0));
                let stored_seen: u64 = seen
                    .get(k)
                    .and_then(|r| r.as_ref().ok())
                    .and_then(|v| redis::from_redis_value_ref::<Option<u64>>(v).ok().flatten())
                    .unwrap_or(0);
                let devices: Vec<DevicePresence> = match &found {
                    Some(all) => all[k]
                        .iter()
                        .map(|e| DevicePresence {
                            device_type: e.dt.clone(),
                            device_id: e.dev.clone(),
                            since_ms: e.since,
                            node: e.name.clone(),
                            metadata: e.meta.clone(),
                        })
                        .collect(),
                    None => i.local.devices(user),
                };
                Presence {
                    user: user.clone(),
                    online: !devices.is_empty(),
                    devices,
                    last_seen_ms: local_seen.max(stored_seen),
                }
            })
            .collect()
    }

    /// Sends `user`'s current presence to its watchers on every node.
    async fn notify_presence(&self, user: &str) {
        let i = &self.inner;
        let Some(presence) = self.presence_of(&[user.to_owned()]).await.pop() else { return };
        i.local.notify_watchers(&presence);
        i.publish(i.keys.watch_channel(user), Bus::Presence { origin: i.me.clone(), presence });
    }
}

#[async_trait]
impl Hub for ClusterHub {
    fn node(&self) -> &str {
        self.inner.local.node()
    }

    async fn attach(&self, s: &Arc<SessionHandle>) -> bool {
        let i = &self.inner;
        let registered = i.local.register(s.clone());
        let entry = serde_json::to_string(&i.entry(s)).unwrap_or_default();
        let cmd =
            redis::cmd("EVAL").arg(ATTACH).arg(1).arg(i.keys.presence(&s.user)).arg(&s.device_type).arg(entry).clone();
        let before: Value = match i.conn().run(&i.metrics, "attach", &cmd).await {
            Ok(v) => v,
            Err(e) => {
                i.failed("attach", &e);
                return registered.first_here;
            }
        };
        let sadd = redis::cmd("SADD").arg(i.keys.node_users(&i.me)).arg(&s.user).clone();
        if let Err(e) = i.conn().run::<Value>(&i.metrics, "attach", &sadd).await {
            i.failed("attach", &e);
        }
        // HGETALL pairs: field, entry.
        let pairs: Vec<Vec<u8>> = redis::from_redis_value_ref(&before).unwrap_or_default();
        let mut first = true;
        for pair in pairs.chunks(2) {
            let [field, value] = pair else { continue };
            let Ok(e) = serde_json::from_slice::<Entry>(value) else { continue };
            if !i.alive(&e.n) {
                continue;
            }
            first = false;
            if field.as_slice() == s.device_type.as_bytes() && e.n != i.me {
                // The rival of this login runs on another node.
                let bus = Bus::Displace { user: s.user.clone(), sid: e.sid.clone(), by_device: s.device_id.clone() };
                i.publish(i.keys.node_channel(&e.n), bus);
            }
        }
        first && registered.first_here
    }

    async fn track_rooms(&self, user: &str, rooms: &[String]) {
        let i = &self.inner;
        let fresh: Vec<String> = {
            let mut index = lock(&i.index);
            rooms.iter().filter(|r| index.add(r, user)).map(|r| i.keys.room_channel(r)).collect()
        };
        if let Err(e) = i.conn().subscribe(&fresh).await {
            i.failed("subscribe", &e);
        }
    }

    async fn started(&self, s: &SessionHandle, rooms: &[String], first: bool) {
        self.touch(&s.user, self.inner.now());
        if first {
            for room in rooms {
                self.room_event(room, RoomEventKind::Online, &s.user, None).await;
            }
        }
        self.notify_presence(&s.user).await;
    }

    async fn detach(&self, s: &SessionHandle, rooms: &[String], watching: &HashSet<String>) -> bool {
        let i = &self.inner;
        i.local.unregister(&s.user, s.id);
        let unwatched = i.local.unwatch(s.id, watching.iter());
        let channels: Vec<String> = unwatched.iter().map(|u| i.keys.watch_channel(u)).collect();
        if let Err(e) = i.conn().unsubscribe(&channels).await {
            i.failed("unsubscribe", &e);
        }
        let last_here = !i.local.is_online(&s.user);
        let cmd = redis::cmd("EVAL")
            .arg(DETACH)
            .arg(1)
            .arg(i.keys.presence(&s.user))
            .arg(&s.device_type)
            .arg(&i.me)
            .arg(s.id.to_string())
            .clone();
        let last = match i.conn().run::<Value>(&i.metrics, "detach", &cmd).await {
            Ok(left) => last_here && !entries_of(&left).iter().any(|e| i.alive(&e.n)),
            Err(e) => {
                i.failed("detach", &e);
                last_here
            }
        };
        if last_here {
            let srem = redis::cmd("SREM").arg(i.keys.node_users(&i.me)).arg(&s.user).clone();
            if let Err(e) = i.conn().run::<Value>(&i.metrics, "detach", &srem).await {
                i.failed("detach", &e);
            }
            let emptied = lock(&i.index).remove_user(&s.user);
            let channels: Vec<String> = emptied.iter().map(|r| i.keys.room_channel(r)).collect();
            if let Err(e) = i.conn().unsubscribe(&channels).await {
                i.failed("unsubscribe", &e);
            }
        }
        self.touch(&s.user, i.now());
        if last {
            for room in rooms {
                self.room_event(room, RoomEventKind::Offline, &s.user, None).await;
            }
        }
        self.notify_presence(&s.user).await;
        last
    }

    fn deliver(&self, entries: Vec<UserDelivery>) {
        self.inner.local.deliver(&entries);
        let _ = self.inner.routes.send(Route::Inbox(entries));
    }

    fn deliver_room(&self, d: Arc<RoomDelivery>, members: Arc<HashSet<String>>, except: Option<u64>) {
        let i = &self.inner;
        i.local.deliver_room(members.iter(), &d, except);
        let bus = Bus::Room { origin: i.me.clone(), seq: d.seq, msg: d.msg.clone() };
        i.publish(i.keys.room_channel(&d.msg.to.id), bus);
    }

    async fn room_event(&self, room: &str, kind: RoomEventKind, user: &str, also: Option<&str>) {
        let i = &self.inner;
        let Ok(Some(members)) = i.rooms.members(room).await else { return };
        let online = self.online_among(&members).await.len() as u64;
        let frame = room_event_frame(room, kind, user, members.len() as u64, online);
        i.local.send_frame_to(members.iter().map(String::as_str).chain(also), &frame);
        i.publish(i.keys.room_channel(room), Bus::RoomEvent { origin: i.me.clone(), frame: frame.clone() });
        if let Some(also) = also {
            // Not a member any more: its other nodes no longer hear the room's channel.
            let _ = i.routes.send(Route::Frame(vec![also.to_owned()], frame));
        }
    }

    async fn membership_changed(&self, room: &str, user: &str, member: bool) {
        let i = &self.inner;
        if i.local.is_online(user) {
            i.index_change(room, user, member).await;
        }
        let bus = Bus::Member { origin: i.me.clone(), room: room.to_owned(), user: user.to_owned(), member };
        i.publish(i.keys.all_channel(), bus);
    }

    async fn send_to_users(&self, users: &[String], frame: Frame) {
        self.inner.local.send_frame_to(users.iter().map(String::as_str), &frame);
        let _ = self.inner.routes.send(Route::Frame(users.to_vec(), frame));
    }

    async fn presence(&self, users: &[String]) -> Vec<Presence> {
        self.presence_of(users).await
    }

    async fn watch(&self, sid: u64, tx: &SessionTx, users: &[String]) -> Vec<Presence> {
        let i = &self.inner;
        let fresh = i.local.watch(sid, tx, users);
        let channels: Vec<String> = fresh.iter().map(|u| i.keys.watch_channel(u)).collect();
        if let Err(e) = i.conn().subscribe(&channels).await {
            i.failed("subscribe", &e);
        }
        self.presence_of(users).await
    }

    async fn unwatch(&self, sid: u64, users: &[String]) {
        let i = &self.inner;
        let gone = i.local.unwatch(sid, users.iter());
        let channels: Vec<String> = gone.iter().map(|u| i.keys.watch_channel(u)).collect();
        if let Err(e) = i.conn().unsubscribe(&channels).await {
            i.failed("unsubscribe", &e);
        }
    }

    async fn online_among(&self, users: &HashSet<String>) -> HashSet<String> {
        let list: Vec<String> = users.iter().cloned().collect();
        match self.inner.lookup(&list).await {
            Some(found) => list.into_iter().zip(found).filter(|(_, e)| !e.is_empty()).map(|(u, _)| u).collect(),
            None => self.inner.local.online_among(users),
        }
    }

    fn touch(&self, user: &str, now_ms: u64) {
        self.inner.local.touch(user, now_ms);
        lock(&self.inner.seen).insert(user.to_owned(), now_ms);
    }

    async fn kick(&self, user: &str, device_id: Option<&str>, reason: KickReason) -> usize {
        let i = &self.inner;
        let mut n = i.local.kick(user, device_id, reason);
        let entries = i.lookup(&[user.to_owned()]).await.and_then(|mut v| v.pop()).unwrap_or_default();
        let mut nodes = HashSet::new();
        for e in entries.iter().filter(|e| e.n != i.me && device_id.is_none_or(|d| d == e.dev)) {
            n += 1;
            nodes.insert(e.n.clone());
        }
        for node in nodes {
            let bus = Bus::Kick { user: user.to_owned(), device: device_id.map(str::to_owned), reason };
            i.publish(i.keys.node_channel(&node), bus);
        }
        n
    }

    async fn sessions(&self, user: &str) -> Vec<SessionInfo> {
        let i = &self.inner;
        let mut out = i.local.sessions(user);
        let entries = i.lookup(&[user.to_owned()]).await.and_then(|mut v| v.pop()).unwrap_or_default();
        for e in entries.into_iter().filter(|e| e.n != i.me) {
            out.push(SessionInfo {
                session_id: e.sid.parse().unwrap_or(0),
                node: e.name,
                device_type: e.dt,
                device_id: e.dev,
                connected_ms: e.since,
                remote: e.remote.parse().unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
                metadata: e.meta,
            });
        }
        out
    }

    fn resync_all(&self) {
        let i = &self.inner;
        i.local.resync_all();
        // A commit whose outcome is unknown may hold messages for users on other nodes too.
        i.publish(i.keys.all_channel(), Bus::Resync { origin: i.me.clone() });
    }

    fn go_away_all(&self) -> usize {
        self.inner.local.go_away_all()
    }

    fn local_sessions(&self) -> usize {
        self.inner.local.len()
    }

    async fn leave(&self) {
        // Give up the node's lease and its user set.
        let i = &self.inner;
        let _: RedisResult<Value> =
            i.conn().run(&i.metrics, "leave", redis::cmd("ZREM").arg(i.keys.nodes()).arg(&i.me)).await;
        let _: RedisResult<Value> =
            i.conn().run(&i.metrics, "leave", redis::cmd("DEL").arg(i.keys.node_users(&i.me))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_index_says_when_a_room_gains_its_first_and_loses_its_last_user_here() {
        let mut ix = RoomIndex::default();
        assert!(ix.add("r", "a"));
        assert!(!ix.add("r", "b"));
        assert!(ix.add("s", "a"));
        assert!(!ix.remove("r", "a"));
        assert_eq!(ix.users("r"), vec!["b".to_string()]);
        let mut emptied = ix.remove_user("b");
        emptied.sort();
        assert_eq!(emptied, vec!["r".to_string()]);
        assert_eq!(ix.remove_user("a"), vec!["s".to_string()]);
        assert!(ix.by_room.is_empty() && ix.by_user.is_empty());
    }

    #[test]
    fn cluster_messages_round_trip_as_messagepack() {
        let msg = Arc::new(StoredMessage {
            msg_id: 7,
            sender: "a".into(),
            sender_device: "d".into(),
            client_msg_id: "c".into(),
            to: tether_proto::Address::user("b"),
            ts: 1,
            content_type: "text/plain".into(),
            payload: vec![0, 1, 2],
        });
        let bus = Bus::Inbox(vec![("b".into(), 3, msg.clone())]);
        let bytes = rmp_serde::to_vec_named(&bus).expect("encode");
        match rmp_serde::from_slice::<Bus>(&bytes).expect("decode") {
            Bus::Inbox(v) => assert_eq!(v, vec![("b".to_string(), 3, msg)]),
            other => panic!("{other:?}"),
        }
        let ev = Bus::RoomEvent { origin: "n".into(), frame: room_event_frame("r", RoomEventKind::Enter, "a", 2, 1) };
        let bytes = rmp_serde::to_vec_named(&ev).expect("encode");
        assert!(matches!(rmp_serde::from_slice::<Bus>(&bytes), Ok(Bus::RoomEvent { .. })));
    }
}
