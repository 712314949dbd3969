//! The live sessions of this node, by user, with their presence watches and last-seen times:
//! the node-local half of every [`super::Hub`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use tether_proto::{DevicePresence, Frame, KickReason, Presence};

use super::{RoomDelivery, SessionCmd, SessionHandle, SessionInfo, SessionTx, UserDelivery};

/// Most users whose last-seen time a node keeps in memory.
pub const LAST_SEEN_CAP: usize = 1_000_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What [`Sessions::register`] did.
#[derive(Debug, Default)]
pub struct Registered {
    /// The user had no session on this node before.
    pub first_here: bool,
    /// Sessions of the same user and device type that were displaced.
    pub displaced: usize,
}

/// Live sessions of this node by user, presence watchers and last-seen times.
#[derive(Debug, Default)]
pub struct Sessions {
    node: String,
    users: Mutex<HashMap<String, Vec<Arc<SessionHandle>>>>,
    /// watched user -> (watching session id -> its queue)
    watchers: Mutex<HashMap<String, HashMap<u64, SessionTx>>>,
    /// user -> last login, heartbeat or disconnect, ms since the Unix epoch
    last_seen: Mutex<HashMap<String, u64>>,
}

impl Sessions {
    /// The sessions of the node called `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Sessions { node: node.into(), ..Sessions::default() }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn users(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<SessionHandle>>>> {
        lock(&self.users)
    }

    /// Adds a session. A session of the same user and device type is displaced: told
    /// [`SessionCmd::Superseded`] if it is the same device, else kicked with `replaced`.
    pub fn register(&self, s: Arc<SessionHandle>) -> Registered {
        let mut users = self.users();
        let list = users.entry(s.user.clone()).or_default();
        let mut r = Registered { first_here: list.is_empty(), displaced: 0 };
        list.retain(|old| {
            if old.device_type != s.device_type {
                return true;
            }
            displace(old, &s.device_id);
            r.displaced += 1;
            false
        });
        list.push(s);
        r
    }

    /// Displaces session `sid` of `user` here, replaced by a login of `device_id` on another
    /// node. Returns whether it was here.
    pub fn displace_session(&self, user: &str, sid: u64, device_id: &str) -> bool {
        let users = self.users();
        let Some(old) = users.get(user).and_then(|l| l.iter().find(|s| s.id == sid)) else { return false };
        displace(old, device_id);
        true
    }

    /// Removes a session if it is still registered. Returns true when that was the user's
    /// last session on this node.
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

    /// Hands a room message to every session here of every user in `users` but `except`.
    pub fn deliver_room<'a>(
        &self,
        users: impl Iterator<Item = &'a String>,
        d: &Arc<RoomDelivery>,
        except: Option<u64>,
    ) {
        let all = self.users();
        for user in users {
            for s in all.get(user).into_iter().flatten().filter(|s| Some(s.id) != except) {
                s.tx.deliver_room(d.clone());
            }
        }
    }

    /// Hands inbox entries to the sessions of their users here.
    pub fn deliver(&self, entries: &[UserDelivery]) {
        let users = self.users();
        for e in entries {
            for s in users.get(&e.user).into_iter().flatten().filter(|s| Some(s.id) != e.except) {
                s.tx.deliver(e.msg.clone(), e.seq);
            }
        }
    }

    /// Sends a frame to every session here of these users (each user once).
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

    /// Whether `user` has a session here.
    pub fn is_online(&self, user: &str) -> bool {
        self.users().contains_key(user)
    }

    /// Which of `users` have a session here.
    pub fn online_among(&self, users: &HashSet<String>) -> HashSet<String> {
        let all = self.users();
        users.iter().filter(|u| all.contains_key(*u)).cloned().collect()
    }

    /// Records that `user` was seen at `now_ms` (login, heartbeat, disconnect).
    ///
    /// Kept in memory for at most [`LAST_SEEN_CAP`] users; past that, offline users' entries
    /// are forgotten (their presence then reports `last_seen_ms: 0`).
    pub fn touch(&self, user: &str, now_ms: u64) {
        let mut seen = lock(&self.last_seen);
        if seen.len() >= LAST_SEEN_CAP && !seen.contains_key(user) {
            let online = self.users();
            seen.retain(|u, _| online.contains_key(u));
        }
        seen.insert(user.to_owned(), now_ms);
    }

    /// When `user` was last seen here (0: not known).
    pub fn last_seen(&self, user: &str) -> u64 {
        lock(&self.last_seen).get(user).copied().unwrap_or(0)
    }

    /// The devices of `user` connected here.
    pub fn devices(&self, user: &str) -> Vec<DevicePresence> {
        self.users()
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
            .collect()
    }

    /// The presence of `user` as this node alone sees it.
    pub fn presence(&self, user: &str) -> Presence {
        let devices = self.devices(user);
        Presence { user: user.to_owned(), online: !devices.is_empty(), devices, last_seen_ms: self.last_seen(user) }
    }

    /// Session `id` wants `presence` frames for `users`. Returns the users nobody here watched
    /// before.
    pub fn watch(&self, id: u64, tx: &SessionTx, users: &[String]) -> Vec<String> {
        let mut w = lock(&self.watchers);
        let mut fresh = Vec::new();
        for u in users {
            let m = w.entry(u.clone()).or_default();
            if m.is_empty() {
                fresh.push(u.clone());
            }
            m.insert(id, tx.clone());
        }
        fresh
    }

    /// Session `id` no longer wants `presence` frames for `users`. Returns the users nobody
    /// here watches any more.
    pub fn unwatch<'a>(&self, id: u64, users: impl Iterator<Item = &'a String>) -> Vec<String> {
        let mut w = lock(&self.watchers);
        let mut gone = Vec::new();
        for u in users {
            if let Some(m) = w.get_mut(u) {
                m.remove(&id);
                if m.is_empty() {
                    w.remove(u);
                    gone.push(u.clone());
                }
            }
        }
        gone
    }

    /// Whether a session here watches `user`.
    pub fn is_watched(&self, user: &str) -> bool {
        lock(&self.watchers).contains_key(user)
    }

    /// The users watched by sessions here.
    pub fn watched_users(&self) -> Vec<String> {
        lock(&self.watchers).keys().cloned().collect()
    }

    /// Sends `presence` to every session here watching its user.
    pub fn notify_watchers(&self, presence: &Presence) {
        let watchers: Vec<SessionTx> = {
            let w = lock(&self.watchers);
            match w.get(&presence.user) {
                Some(m) => m.values().cloned().collect(),
                None => return,
            }
        };
        let frame = Frame::Presence(presence.clone());
        for tx in watchers {
            tx.send(SessionCmd::Frame(Box::new(frame.clone())));
        }
    }

    /// Kicks every session here of `user` (or only `device_id`'s). Returns how many.
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

    /// The sessions of `user` here.
    pub fn sessions(&self, user: &str) -> Vec<SessionInfo> {
        self.users()
            .get(user)
            .into_iter()
            .flatten()
            .map(|s| SessionInfo {
                session_id: s.id,
                node: self.node.clone(),
                device_type: s.device_type.clone(),
                device_id: s.device_id.clone(),
                connected_ms: s.connected_ms,
                remote: s.peer.remote_address(),
                metadata: s.metadata.clone(),
            })
            .collect()
    }

    /// Every live session here.
    pub fn all(&self) -> Vec<Arc<SessionHandle>> {
        self.users().values().flatten().cloned().collect()
    }

    /// Tells every session here to move to another node (`go_away`). Returns how many.
    pub fn go_away_all(&self) -> usize {
        let users = self.users();
        let mut n = 0;
        for s in users.values().flatten() {
            s.tx.send(SessionCmd::GoAway);
            n += 1;
        }
        n
    }

    /// Tells every session here to read what it may have missed from the store.
    pub fn resync_all(&self) {
        for s in self.users().values().flatten() {
            s.tx.resync();
        }
    }

    /// Number of live sessions here.
    pub fn len(&self) -> usize {
        self.users().values().map(Vec::len).sum()
    }

    /// True when no session is live here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Tells `old` that a login of `device_id` with its device type replaced it.
fn displace(old: &SessionHandle, device_id: &str) {
    let cmd = if old.device_id == device_id { SessionCmd::Superseded } else { SessionCmd::Kick(KickReason::Replaced) };
    old.tx.send(cmd);
}
