//! The hub of a node that runs alone: every session, watcher and member it knows is here.

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use tether_proto::{Frame, KickReason, Presence, RoomEvent, RoomEventKind};

use super::{Hub, RoomDelivery, SessionHandle, SessionInfo, SessionTx, Sessions, UserDelivery};
use crate::rooms::Rooms;

/// The single-node [`Hub`]: delivery, presence and counts over this node's own sessions.
pub struct LocalHub {
    sessions: Sessions,
    rooms: Arc<Rooms>,
    clock: Arc<dyn crate::clock::Clock>,
}

impl LocalHub {
    /// The hub of the node called `node`, with the node's room memberships.
    pub fn new(node: impl Into<String>, rooms: Arc<Rooms>, clock: Arc<dyn crate::clock::Clock>) -> Self {
        LocalHub { sessions: Sessions::new(node), rooms, clock }
    }

    /// The node's sessions.
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    fn notify(&self, user: &str) {
        self.sessions.notify_watchers(&self.sessions.presence(user));
    }
}

/// The `room_event` frame about `user` in `room`, with the room's counts.
pub(crate) fn room_event_frame(room: &str, kind: RoomEventKind, user: &str, members: u64, online: u64) -> Frame {
    Frame::RoomEvent(RoomEvent { room: room.to_owned(), kind, user: user.to_owned(), members, online })
}

#[async_trait]
impl Hub for LocalHub {
    fn node(&self) -> &str {
        self.sessions.node()
    }

    async fn attach(&self, s: &Arc<SessionHandle>) -> bool {
        self.sessions.register(s.clone()).first_here
    }

    async fn track_rooms(&self, _user: &str, _rooms: &[String]) {}

    async fn started(&self, s: &SessionHandle, rooms: &[String], first: bool) {
        self.sessions.touch(&s.user, self.clock.now_ms());
        if first {
            for room in rooms {
                self.room_event(room, RoomEventKind::Online, &s.user, None).await;
            }
        }
        self.notify(&s.user);
    }

    async fn detach(&self, s: &SessionHandle, rooms: &[String], watching: &HashSet<String>) -> bool {
        self.sessions.unregister(&s.user, s.id);
        self.sessions.unwatch(s.id, watching.iter());
        let last = !self.sessions.is_online(&s.user);
        self.sessions.touch(&s.user, self.clock.now_ms());
        if last {
            for room in rooms {
                self.room_event(room, RoomEventKind::Offline, &s.user, None).await;
            }
        }
        self.notify(&s.user);
        last
    }

    fn deliver(&self, entries: Vec<UserDelivery>) {
        self.sessions.deliver(&entries);
    }

    fn deliver_room(&self, d: Arc<RoomDelivery>, members: Arc<HashSet<String>>, except: Option<u64>) {
        self.sessions.deliver_room(members.iter(), &d, except);
    }

    async fn room_event(&self, room: &str, kind: RoomEventKind, user: &str, also: Option<&str>) {
        let Ok(Some(members)) = self.rooms.members(room).await else { return };
        let online = self.sessions.online_among(&members).len() as u64;
        let frame = room_event_frame(room, kind, user, members.len() as u64, online);
        self.sessions.send_frame_to(members.iter().map(String::as_str).chain(also), &frame);
    }

    async fn membership_changed(&self, _room: &str, _user: &str, _member: bool) {}

    async fn send_to_users(&self, users: &[String], frame: Frame) {
        self.sessions.send_frame_to(users.iter().map(String::as_str), &frame);
    }

    async fn presence(&self, users: &[String]) -> Vec<Presence> {
        users.iter().map(|u| self.sessions.presence(u)).collect()
    }

    async fn watch(&self, sid: u64, tx: &SessionTx, users: &[String]) -> Vec<Presence> {
        self.sessions.watch(sid, tx, users);
        self.presence(users).await
    }

    async fn unwatch(&self, sid: u64, users: &[String]) {
        self.sessions.unwatch(sid, users.iter());
    }

    async fn online_among(&self, users: &HashSet<String>) -> HashSet<String> {
        self.sessions.online_among(users)
    }

    fn touch(&self, user: &str, now_ms: u64) {
        self.sessions.touch(user, now_ms);
    }

    async fn kick(&self, user: &str, device_id: Option<&str>, reason: KickReason) -> usize {
        self.sessions.kick(user, device_id, reason)
    }

    async fn sessions(&self, user: &str) -> Vec<SessionInfo> {
        self.sessions.sessions(user)
    }

    fn resync_all(&self) {
        self.sessions.resync_all();
    }

    fn go_away_all(&self) -> usize {
        self.sessions.go_away_all()
    }

    fn local_sessions(&self) -> usize {
        self.sessions.len()
    }
}
