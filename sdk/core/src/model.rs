//! What an app sees: the SDK's own model types.
//!
//! They are not the wire structs of `tether-proto` (the wire may change without the app's API
//! changing) and hold nothing a foreign language cannot: strings, integers, byte vectors,
//! lists, string maps and plain enums. No `Instant`, no paths. The bindings (`bindings/`) wrap
//! exactly these.

use std::collections::HashMap;

use serde::Serialize;
use tether_proto::{Address, AddressKind};

pub use tether_proto::ErrorCode;

/// Who a message is for: a user's inbox or a room's log.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Target {
    /// A user (1:1).
    User(String),
    /// A room.
    Room(String),
}

impl Target {
    /// The user or room id.
    pub fn id(&self) -> &str {
        match self {
            Target::User(id) | Target::Room(id) => id,
        }
    }

    /// Whether this is a room.
    pub fn is_room(&self) -> bool {
        matches!(self, Target::Room(_))
    }

    /// The wire address.
    pub fn to_wire(&self) -> Address {
        match self {
            Target::User(u) => Address::user(u.clone()),
            Target::Room(r) => Address::room(r.clone()),
        }
    }
}

impl From<Address> for Target {
    fn from(a: Address) -> Self {
        match a.kind {
            AddressKind::Room => Target::Room(a.id),
            AddressKind::User => Target::User(a.id),
        }
    }
}

/// A message handed to the app: the next of its inbox or of one of its rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Server-wide message id.
    pub msg_id: u64,
    /// Its place in the inbox, or in the room's log when `to` is a room.
    pub seq: u64,
    /// Sender.
    pub from: String,
    /// The sender's device (empty for messages pushed by the app's backend).
    pub from_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// Recipient: the user, or the room.
    pub to: Target,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// Payload type.
    pub content_type: String,
    /// Payload.
    pub payload: Vec<u8>,
}

impl From<tether_proto::Deliver> for Message {
    fn from(d: tether_proto::Deliver) -> Self {
        Message {
            msg_id: d.msg_id,
            seq: d.seq,
            from: d.from,
            from_device: d.from_device,
            client_msg_id: d.client_msg_id,
            to: d.to.into(),
            ts: d.ts,
            content_type: d.content_type,
            payload: d.payload,
        }
    }
}

/// A sent message is durable on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendAck {
    /// The message's id.
    pub client_msg_id: String,
    /// Server-wide message id.
    pub msg_id: u64,
    /// Its seq in the sender's inbox, or in the room's log for a room message.
    pub seq: u64,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// The server had stored it already (a retry).
    pub duplicate: bool,
}

impl From<tether_proto::SendAck> for SendAck {
    fn from(a: tether_proto::SendAck) -> Self {
        SendAck { client_msg_id: a.client_msg_id, msg_id: a.msg_id, seq: a.seq, ts: a.ts, duplicate: a.duplicate }
    }
}

/// Why the server ended the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReason {
    /// Another device of the same type logged in.
    Replaced,
    /// The app's backend kicked the user or device.
    Admin,
    /// A reason this SDK version does not know.
    Other,
}

impl From<tether_proto::KickReason> for KickReason {
    fn from(r: tether_proto::KickReason) -> Self {
        match r {
            tether_proto::KickReason::Replaced => KickReason::Replaced,
            tether_proto::KickReason::Admin => KickReason::Admin,
            _ => KickReason::Other,
        }
    }
}

/// The server ended the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Kicked {
    /// Why.
    pub reason: KickReason,
    /// Detail.
    pub message: String,
}

impl From<tether_proto::Kicked> for Kicked {
    fn from(k: tether_proto::Kicked) -> Self {
        Kicked { reason: k.reason.into(), message: k.message }
    }
}

/// What happened to someone in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomEventKind {
    /// Became a member.
    Enter,
    /// Stopped being a member.
    Quit,
    /// A member came online (first session).
    Online,
    /// A member went offline (last session ended).
    Offline,
    /// A kind this SDK version does not know.
    Other,
}

impl From<tether_proto::RoomEventKind> for RoomEventKind {
    fn from(k: tether_proto::RoomEventKind) -> Self {
        match k {
            tether_proto::RoomEventKind::Enter => RoomEventKind::Enter,
            tether_proto::RoomEventKind::Quit => RoomEventKind::Quit,
            tether_proto::RoomEventKind::Online => RoomEventKind::Online,
            tether_proto::RoomEventKind::Offline => RoomEventKind::Offline,
            #[allow(unreachable_patterns)]
            _ => RoomEventKind::Other,
        }
    }
}

/// Someone entered, quit, came online or went offline in a room of the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomEvent {
    /// Room id.
    pub room: String,
    /// What happened.
    pub kind: RoomEventKind,
    /// To whom.
    pub user: String,
    /// Members after it (distinct users).
    pub members: u64,
    /// Online members after it.
    pub online: u64,
}

impl From<tether_proto::RoomEvent> for RoomEvent {
    fn from(e: tether_proto::RoomEvent) -> Self {
        RoomEvent { room: e.room, kind: e.kind.into(), user: e.user, members: e.members, online: e.online }
    }
}

/// The user is a member of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomJoined {
    /// Room id.
    pub room: String,
    /// The room's head: this device's cursor in it starts here.
    pub head: u64,
    /// Members (distinct users).
    pub members: u64,
    /// Online members.
    pub online: u64,
}

impl From<tether_proto::RoomJoined> for RoomJoined {
    fn from(j: tether_proto::RoomJoined) -> Self {
        RoomJoined { room: j.room, head: j.head, members: j.members, online: j.online }
    }
}

/// Part of a room's history is past retention and will never arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryTruncated {
    /// Room id.
    pub room: String,
    /// The seq asked from.
    pub after: u64,
    /// The oldest seq still kept.
    pub first_seq: u64,
}

impl From<tether_proto::HistoryTruncated> for HistoryTruncated {
    fn from(t: tether_proto::HistoryTruncated) -> Self {
        HistoryTruncated { room: t.room, after: t.after, first_seq: t.first_seq }
    }
}

/// One live session of a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevicePresence {
    /// Device type.
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Login time, ms since the Unix epoch.
    pub since_ms: u64,
    /// The node it is connected to.
    pub node: String,
    /// Connection metadata it gave at login.
    pub metadata: HashMap<String, String>,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Presence {
    /// User id.
    pub user: String,
    /// At least one live session.
    pub online: bool,
    /// The live sessions.
    pub devices: Vec<DevicePresence>,
    /// Last login, heartbeat or disconnect, ms since the Unix epoch (0: unknown).
    pub last_seen_ms: u64,
}

impl From<tether_proto::Presence> for Presence {
    fn from(p: tether_proto::Presence) -> Self {
        Presence {
            user: p.user,
            online: p.online,
            devices: p
                .devices
                .into_iter()
                .map(|d| DevicePresence {
                    device_type: d.device_type,
                    device_id: d.device_id,
                    since_ms: d.since_ms,
                    node: d.node,
                    metadata: d.metadata.into_iter().collect(),
                })
                .collect(),
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// The client's connection state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnectionState {
    /// Created, not started.
    Idle,
    /// Opening a connection.
    Connecting,
    /// Connected, logging in.
    LoggingIn,
    /// Logged in; messages flow.
    Online,
    /// Waiting before the next attempt.
    Backoff {
        /// 0-based number of this wait among consecutive failures.
        attempt: u32,
        /// Time until the next attempt, in ms, when the state was entered.
        retry_in_ms: u64,
    },
    /// The server ended the session; no reconnect until `Client::restart` (tether-sdk).
    Kicked {
        /// Why.
        reason: KickReason,
    },
    /// The credential was refused; give a new one.
    AuthFailed {
        /// Why.
        code: ErrorCode,
    },
    /// `Client::close` was called.
    LoggedOut,
    /// `Client::pause` was called.
    Paused,
}

impl From<&crate::SessionState> for ConnectionState {
    /// The app-facing state of the session's state.
    fn from(s: &crate::SessionState) -> Self {
        use crate::SessionState as C;
        match s {
            C::Idle => ConnectionState::Idle,
            C::Connecting => ConnectionState::Connecting,
            C::LoggingIn => ConnectionState::LoggingIn,
            C::Online => ConnectionState::Online,
            C::Backoff { attempt, delay, .. } => {
                ConnectionState::Backoff { attempt: *attempt, retry_in_ms: delay.as_millis() as u64 }
            }
            C::Kicked(r) => ConnectionState::Kicked { reason: (*r).into() },
            C::AuthFailed(code) => ConnectionState::AuthFailed { code: *code },
            C::LoggedOut => ConnectionState::LoggedOut,
            C::Paused => ConnectionState::Paused,
        }
    }
}

/// A message not acknowledged yet, as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingMessage {
    /// The message's id.
    pub client_msg_id: String,
    /// Recipient.
    pub to: Target,
    /// Payload type.
    pub content_type: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// When the app sent it, ms since the Unix epoch.
    pub created_ms: u64,
}

impl From<crate::OutboxEntry> for PendingMessage {
    fn from(e: crate::OutboxEntry) -> Self {
        PendingMessage {
            client_msg_id: e.client_msg_id,
            to: e.to.into(),
            content_type: e.content_type,
            payload: e.payload,
            created_ms: e.created_ms,
        }
    }
}
