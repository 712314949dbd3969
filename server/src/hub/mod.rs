//! The node-level delivery interface: everything above it (sessions, the write pipeline, the
//! admin API) delivers to users and rooms, starts and ends sessions, asks for presence, online
//! counts and session lists, and kicks, through the [`Hub`] trait, without knowing whether the
//! node runs alone ([`LocalHub`]) or in a cluster ([`cluster::ClusterHub`], Redis-backed).

pub mod cluster;
mod local;
mod queue;
mod redis;
mod sessions;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;
use tether_proto::{Frame, KickReason, Presence, RoomEventKind};

pub use local::LocalHub;
pub use queue::{session_channel, RoomDelivery, SessionCmd, SessionRx, SessionTx};
pub use sessions::{Sessions, LAST_SEEN_CAP};

use crate::store::StoredMessage;

/// The other end of a session, as far as the hub needs to know it.
pub trait Peer: Send + Sync + std::fmt::Debug {
    /// Its current address (QUIC migration may change it); unspecified for in-process streams.
    fn remote_address(&self) -> SocketAddr;
}

impl Peer for quinn::Connection {
    fn remote_address(&self) -> SocketAddr {
        quinn::Connection::remote_address(self)
    }
}

/// One live session of this node, as the hub knows it.
#[derive(Debug)]
pub struct SessionHandle {
    /// Node-local session id.
    pub id: u64,
    /// Authenticated user.
    pub user: String,
    /// Device type (one session per user and device type).
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Login time, ms since the Unix epoch.
    pub connected_ms: u64,
    /// The other end (for its current address).
    pub peer: Arc<dyn Peer>,
    /// Connection metadata given at login.
    pub metadata: BTreeMap<String, String>,
    /// Its command queue.
    pub tx: SessionTx,
}

/// A session as reported by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// Session id, unique on its node.
    pub session_id: u64,
    /// The node that holds the session.
    pub node: String,
    /// Device type.
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Login time, ms since the Unix epoch.
    pub connected_ms: u64,
    /// Remote address (as of login for sessions of other nodes).
    pub remote: SocketAddr,
    /// Connection metadata given at login.
    pub metadata: BTreeMap<String, String>,
}

/// A stored inbox entry for the live sessions of its user.
#[derive(Debug, Clone)]
pub struct UserDelivery {
    /// The inbox's user.
    pub user: String,
    /// The message.
    pub msg: Arc<StoredMessage>,
    /// Its seq in `user`'s inbox.
    pub seq: u64,
    /// A session of this node that must not get it (the sending session has its ack).
    pub except: Option<u64>,
}

/// The node-level interface for delivery, presence and session bookkeeping.
///
/// Delivery calls never wait: they hand the message to local sessions at once and queue what
/// other nodes need. Everything they cannot carry (a node down, Redis restarting, a slow
/// session) is recovered from the store through the sessions' cursors, so delivery here is a
/// fast path, never the source of truth.
#[async_trait]
pub trait Hub: Send + Sync {
    /// The name of this node in presence answers and session lists.
    fn node(&self) -> &str;

    /// Registers a session that has just logged in here, before its heads are read. The
    /// session of the same user and device type is displaced wherever it runs: closed quietly
    /// when it is the same device (a resume), kicked with `replaced` otherwise. Returns true
    /// when the user had no other session anywhere (came online).
    async fn attach(&self, s: &Arc<SessionHandle>) -> bool;

    /// The rooms of an attached session's user. Returns once traffic of these rooms reaches
    /// this node, so heads read afterwards miss nothing.
    async fn track_rooms(&self, user: &str, rooms: &[String]);

    /// The session is established: its user is seen now, presence watchers are told, and when
    /// `first`, its rooms hear `online`.
    async fn started(&self, s: &SessionHandle, rooms: &[String], first: bool);

    /// Removes a session (if still registered) and its presence watches, and announces the
    /// change. Returns true when it was the user's last session anywhere (went offline).
    async fn detach(&self, s: &SessionHandle, rooms: &[String], watching: &HashSet<String>) -> bool;

    /// Hands stored inbox entries to the live sessions of their users, on any node.
    fn deliver(&self, entries: Vec<UserDelivery>);

    /// Hands a room message to the sessions of the room's online members, on any node.
    /// `members` is the room's membership as the sender's session saw it.
    fn deliver_room(&self, d: Arc<RoomDelivery>, members: Arc<HashSet<String>>, except: Option<u64>);

    /// Tells the online members of `room` (and `also`, e.g. a user who just left) that `user`
    /// entered, quit, came online or went offline, with the room's counts.
    async fn room_event(&self, room: &str, kind: RoomEventKind, user: &str, also: Option<&str>);

    /// A membership change made through this node (a session's join or leave, the admin API).
    async fn membership_changed(&self, room: &str, user: &str, member: bool);

    /// Sends a frame to every session of each of `users`, on any node.
    async fn send_to_users(&self, users: &[String], frame: Frame);

    /// Presence of each of `users`, across the cluster.
    async fn presence(&self, users: &[String]) -> Vec<Presence>;

    /// Session `sid` wants `presence` frames for `users`; returns their current presence.
    async fn watch(&self, sid: u64, tx: &SessionTx, users: &[String]) -> Vec<Presence>;

    /// Session `sid` no longer wants `presence` frames for `users`.
    async fn unwatch(&self, sid: u64, users: &[String]);

    /// Which of `users` have a session anywhere.
    async fn online_among(&self, users: &HashSet<String>) -> HashSet<String>;

    /// Records that `user` was seen now (a heartbeat).
    fn touch(&self, user: &str, now_ms: u64);

    /// Kicks every session of `user` (or only `device_id`'s), on any node. Returns how many.
    async fn kick(&self, user: &str, device_id: Option<&str>, reason: KickReason) -> usize;

    /// The sessions of `user`, on any node.
    async fn sessions(&self, user: &str) -> Vec<SessionInfo>;

    /// Tells every session of this node to read what it may have missed from the store.
    fn resync_all(&self);

    /// Number of live sessions on this node.
    fn local_sessions(&self) -> usize;

    /// Tells every session of this node to move to another node (`go_away`). Returns how many.
    fn go_away_all(&self) -> usize;

    /// The node is shutting down (its sessions have ended): leave the cluster.
    async fn leave(&self) {}
}
