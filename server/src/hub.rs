//! The node's live sessions, by user, and the fan-out of stored messages to them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tether_proto::{KickReason, SendAck, SendError};
use tokio::sync::{mpsc, Notify};

use crate::store::StoredMessage;

/// What the rest of the node tells a session task.
#[derive(Debug)]
pub enum SessionCmd {
    /// Answer to one of the session's own sends (boxed to keep the command, and so every
    /// session's queue block, small).
    SendAck(Box<SendAck>),
    /// Refusal of one of the session's own sends.
    SendError(Box<SendError>),
    /// A message landed in the session's inbox at `seq`.
    Live {
        /// The message.
        msg: Arc<StoredMessage>,
        /// Its seq in this session's user's inbox.
        seq: u64,
    },
    /// End the session with a `kicked` frame.
    Kick(KickReason),
    /// The same device logged in again elsewhere: close quietly.
    Superseded,
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
        if self.queued.load(Ordering::Relaxed) >= self.limit {
            self.lagged.store(true, Ordering::Release);
            self.wake.notify_one();
            return;
        }
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.send(SessionCmd::Live { msg, seq }).is_err() {
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
        if let Some(SessionCmd::Live { .. }) = cmd {
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
}

/// Live sessions of this node by user.
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<String, Vec<Arc<SessionHandle>>>>,
}

impl Hub {
    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Arc<SessionHandle>>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a session. A session of the same user and device type is displaced: told
    /// [`SessionCmd::Superseded`] if it is the same device, else kicked with `replaced`.
    pub fn register(&self, s: Arc<SessionHandle>) {
        let mut users = self.users();
        let list = users.entry(s.user.clone()).or_default();
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
    }

    /// Removes a session if it is still registered.
    pub fn unregister(&self, user: &str, id: u64) {
        let mut users = self.users();
        if let Some(list) = users.get_mut(user) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                users.remove(user);
            }
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
            })
            .collect()
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
