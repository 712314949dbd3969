//! The node's live sessions, by user, and the fan-out of stored messages to them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tether_proto::{DevicePresence, Frame, KickReason, Presence, SendAck, SendError};
use tokio::sync::{mpsc, Notify};

use crate::store::StoredMessage;

/// What the rest of the node tells a session task.
#[derive(Debug)]
pub enum SessionCmd {
    /// Answer to one of the session's own sends, with the room when it went to one (boxed to
    /// keep the command, and so every session's queue block, small).
    SendAck(Box<SendAck>, Option<String>),
    /// Refusal of one of the session's own sends.
    SendError(Box<SendError>),
    /// A room message, its `deliver` frame encoded once for every member.
    RoomLive(Arc<RoomDelivery>),
    /// A message landed in the session's inbox at `seq`.
    Live {
        /// The message.
        msg: Arc<StoredMessage>,
        /// Its seq in this session's user's inbox.
        seq: u64,
    },
    /// Write this frame (room events, presence, ...).
    Frame(Box<Frame>),
    /// End the session with a `kicked` frame.
    Kick(KickReason),
    /// The same device logged in again elsewhere: close quietly.
    Superseded,
}

/// A room message as every member's session writes it.
#[derive(Debug)]
pub struct RoomDelivery {
    /// The stored message (its `to` is the room).
    pub msg: Arc<StoredMessage>,
    /// Its seq in the room log.
    pub seq: u64,
    /// The encoded `deliver` frame, length prefix included.
    pub frame: bytes::Bytes,
}

/// The sending half of a session's command queue.
///
/// Live deliveries are bounded: past `limit` queued ones the session is marked lagged and woken,
/// and reads what it missed from the store instead, so a slow device never costs unbounded
/// memory and never loses a message.
#[derive(Debug, Clone)]
pub struct SessionTx {
    tx: mpsc::UnboundedSender<SessionCmd>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    wake: Arc<Notify>,
    limit: usize,
}

/// The receiving half of a session's command queue.
#[derive(Debug)]
pub struct SessionRx {
    rx: mpsc::UnboundedReceiver<SessionCmd>,
    queued: Arc<AtomicUsize>,
    lagged: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

/// A session's command queue with `limit` live deliveries.
pub fn session_channel(limit: usize) -> (SessionTx, SessionRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let lagged = Arc::new(AtomicBool::new(false));
    let wake = Arc::new(Notify::new());
    (
        SessionTx { tx, queued: queued.clone(), lagged: lagged.clone(), wake: wake.clone(), limit },
        SessionRx { rx, queued, lagged, wake },
    )
}

impl SessionTx {
    /// Queues a command that must not be dropped (acks, kicks). False if the session is gone.
    pub fn send(&self, cmd: SessionCmd) -> bool {
        self.tx.send(cmd).is_ok()
    }

    /// Queues a live delivery, or marks the session lagged when its queue is full.
    pub fn deliver(&self, msg: Arc<StoredMessage>, seq: u64) {
        self.queue_live(SessionCmd::Live { msg, seq });
    }

    /// Queues a room delivery, or marks the session lagged when its queue is full.
    pub fn deliver_room(&self, d: Arc<RoomDelivery>) {
        self.queue_live(SessionCmd::RoomLive(d));
    }

    /// Makes the session read its inbox and rooms from the store, as if it had lagged.
    pub fn resync(&self) {
        self.lagged.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    fn queue_live(&self, cmd: SessionCmd) {
        if self.queued.load(Ordering::Relaxed) >= self.limit {
            self.resync();
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(cmd).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl SessionRx {
    /// Next command; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<SessionCmd> {
        let cmd = self.rx.recv().await;
        self.account(&cmd);
        cmd
    }

    /// Next command if one is queued.
    pub fn try_recv(&mut self) -> Option<SessionCmd> {
        let cmd = self.rx.try_recv().ok();
        self.account(&cmd);
        cmd
    }

    fn account(&self, cmd: &Option<SessionCmd>) {
        if let Some(SessionCmd::Live { .. } | SessionCmd::RoomLive(_)) = cmd {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The signal that tells this session it lagged.
    pub fn lag_signal(&self) -> LagSignal {
        LagSignal { lagged: self.lagged.clone(), wake: self.wake.clone() }
    }
}

/// Set when live deliveries to a session were dropped because its queue was full.
#[derive(Debug, Clone)]
pub struct LagSignal {
    lagged: Arc<AtomicBool>,
    wake: Arc<Notify>,
}

impl LagSignal {
    /// Resolves (and clears the flag) once the session lagged.
    pub async fn wait(&self) {
        loop {
            if self.lagged.swap(false, Ordering::AcqRel) {
                return;
            }
            self.wake.notified().await;
        }
    }
}

/// One live session, as the hub knows it.
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
    /// The QUIC connection (for the current remote address, which migration may change).
    pub conn: quinn::Connection,
    /// Connection metadata given at login.
    pub metadata: BTreeMap<String, String>,
    /// Its command queue.
    pub tx: SessionTx,
}

/// A session as reported by the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SessionInfo {
    /// Node-local session id.
    pub session_id: u64,
    /// Device type.
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Login time, ms since the Unix epoch.
    pub connected_ms: u64,
    /// Current remote address.
    pub remote: SocketAddr,
    /// Connection metadata given at login.
    pub metadata: BTreeMap<String, String>,
}

/// Most users whose last-seen time a node keeps in memory.
pub const LAST_SEEN_CAP: usize = 1_000_000;

/// Live sessions of this node by user, presence watchers and last-seen times.
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<String, Vec<Arc<SessionHandle>>>>,
    /// watched user -> (watching session id -> its queue)
    watchers: Mutex<HashMap<String, HashMap<u64, SessionTx>>>,
    /// user -> last login, heartbeat or disconnect, ms since the Unix epoch
    last_seen: Mutex<HashMap<String, u64>>,
    /// Name of this node in presence frames.
    node: String,
}

impl Hub {
    /// A hub for the node called `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Hub { node: node.into(), ..Hub::default() }
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<SessionHandle>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session. A session of the same user and device type is displaced: told
    /// [`SessionCmd::Superseded`] if it is the same device, else kicked with `replaced`.
    /// Returns true when the user had no session before (came online).
    pub fn register(&self, s: Arc<SessionHandle>) -> bool {
        let mut users = self.users();
        let list = users.entry(s.user.clone()).or_default();
        let first = list.is_empty();
        list.retain(|old| {
            if old.device_type != s.device_type {
                return true;
            }
            let cmd = if old.device_id == s.device_id {
                SessionCmd::Superseded
            } else {
                SessionCmd::Kick(KickReason::Replaced)
            };
            old.tx.send(cmd);
            false
        });
        list.push(s);
        first
    }

    /// Removes a session if it is still registered. Returns true when that was the user's
    /// last session (went offline).
    pub fn unregister(&self, user: &str, id: u64) -> bool {
        let mut users = self.users();
        let Some(list) = users.get_mut(user) else { return false };
        let before = list.len();
        list.retain(|s| s.id != id);
        if list.is_empty() {
            users.remove(user);
            return before > 0;
        }
        false
    }

    /// Hands a room message to every session of every user in `users` but `except`.
    pub fn deliver_room<'a>(&self, users: impl Iterator<Item = &'a str>, d: &Arc<RoomDelivery>, except: Option<u64>) {
        let all = self.users();
        for user in users {
            for s in all.get(user).into_iter().flatten().filter(|s| Some(s.id) != except) {
                s.tx.deliver_room(d.clone());
            }
        }
    }

    /// Sends a frame to every session of these users.
    pub fn send_frame_to<'a>(&self, users: impl Iterator<Item = &'a str>, frame: &Frame) {
        let all = self.users();
        let mut seen = HashSet::new();
        for user in users {
            if !seen.insert(user) {
                continue;
            }
            for s in all.get(user).into_iter().flatten() {
                s.tx.send(SessionCmd::Frame(Box::new(frame.clone())));
            }
        }
    }

    /// How many of these users have a session here.
    pub fn count_online<'a>(&self, users: impl Iterator<Item = &'a str>) -> usize {
        let all = self.users();
        users.filter(|u| all.contains_key(*u)).count()
    }

    /// Whether `user` has a session here.
    pub fn is_online(&self, user: &str) -> bool {
        self.users().contains_key(user)
    }

    /// Records that `user` was seen now (login, heartbeat, disconnect).
    ///
    /// Kept in memory for at most [`LAST_SEEN_CAP`] users; past that, offline users' entries
    /// are forgotten (their presence then reports `last_seen_ms: 0`).
    pub fn touch(&self, user: &str, now_ms: u64) {
        let mut seen = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= LAST_SEEN_CAP && !seen.contains_key(user) {
            let online = self.users();
            seen.retain(|u, _| online.contains_key(u));
        }
        seen.insert(user.to_owned(), now_ms);
    }

    /// The presence of `user` on this node.
    pub fn presence(&self, user: &str) -> Presence {
        let devices: Vec<DevicePresence> = self
            .users()
            .get(user)
            .into_iter()
            .flatten()
            .map(|s| DevicePresence {
                device_type: s.device_type.clone(),
                device_id: s.device_id.clone(),
                since_ms: s.connected_ms,
                node: self.node.clone(),
                metadata: s.metadata.clone(),
            })
            .collect();
        let last_seen_ms = self.last_seen.lock().unwrap_or_else(|e| e.into_inner()).get(user).copied().unwrap_or(0);
        Presence { user: user.to_owned(), online: !devices.is_empty(), devices, last_seen_ms }
    }

    /// Session `id` wants `presence` frames for `users`; returns their current presence.
    pub fn watch(&self, id: u64, tx: &SessionTx, users: &[String]) -> Vec<Presence> {
        {
            let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            for u in users {
                w.entry(u.clone()).or_default().insert(id, tx.clone());
            }
        }
        users.iter().map(|u| self.presence(u)).collect()
    }

    /// Session `id` no longer wants `presence` frames for `users`.
    pub fn unwatch<'a>(&self, id: u64, users: impl Iterator<Item = &'a String>) {
        let mut w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        for u in users {
            if let Some(m) = w.get_mut(u) {
                m.remove(&id);
                if m.is_empty() {
                    w.remove(u);
                }
            }
        }
    }

    /// Sends `user`'s current presence to everyone watching it.
    pub fn notify_presence(&self, user: &str) {
        let watchers: Vec<SessionTx> = {
            let w = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
            match w.get(user) {
                Some(m) => m.values().cloned().collect(),
                None => return,
            }
        };
        let frame = Frame::Presence(self.presence(user));
        for tx in watchers {
            tx.send(SessionCmd::Frame(Box::new(frame.clone())));
        }
    }

    /// Hands a stored message to every session of `user` but `except`.
    pub fn deliver(&self, user: &str, msg: &Arc<StoredMessage>, seq: u64, except: Option<u64>) {
        let users = self.users();
        if let Some(list) = users.get(user) {
            for s in list.iter().filter(|s| Some(s.id) != except) {
                s.tx.deliver(msg.clone(), seq);
            }
        }
    }

    /// Kicks every session of `user` (or only `device_id`'s). Returns how many.
    pub fn kick(&self, user: &str, device_id: Option<&str>, reason: KickReason) -> usize {
        let users = self.users();
        let mut n = 0;
        for s in users.get(user).into_iter().flatten() {
            if device_id.is_none_or(|d| d == s.device_id) {
                s.tx.send(SessionCmd::Kick(reason));
                n += 1;
            }
        }
        n
    }

    /// The sessions of `user`.
    pub fn sessions(&self, user: &str) -> Vec<SessionInfo> {
        let users = self.users();
        users
            .get(user)
            .into_iter()
            .flatten()
            .map(|s| SessionInfo {
                session_id: s.id,
                device_type: s.device_type.clone(),
                device_id: s.device_id.clone(),
                connected_ms: s.connected_ms,
                remote: s.conn.remote_address(),
                metadata: s.metadata.clone(),
            })
            .collect()
    }

    /// Tells every session to read what it may have missed from the store: after a write
    /// whose outcome is unknown (it may have committed without anyone being told), live
    /// delivery cannot be trusted to have carried everything.
    pub fn resync_all(&self) {
        for s in self.users().values().flatten() {
            s.tx.resync();
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.users().values().map(Vec::len).sum()
    }

    /// True when no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
