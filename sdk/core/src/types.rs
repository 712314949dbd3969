//! Plain data types of the session core: configuration, persisted state, and what the session
//! hands to its driver (actions, events, persistence operations).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tether_proto::{Address, CloseCode, ErrorCode, KickReason};

use crate::model::{ConnectionState, HistoryTruncated, Kicked, Message, Presence, RoomEvent, RoomJoined, SendAck};

/// Tunables of a [`Session`](super::Session). Build one with [`SessionConfig::new`] and adjust
/// the public fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Kind of device (`"phone"`, `"desktop"`, ...); the server keeps one session per
    /// (user, device type).
    pub device_type: String,
    /// Stable id of this installation.
    pub device_id: String,
    /// First reconnect delay (before jitter). Default 500 ms.
    pub backoff_base: Duration,
    /// Largest reconnect delay (before jitter). Default 30 s.
    pub backoff_max: Duration,
    /// A `ping` is transmitted after this long without transmitting anything (or without
    /// receiving anything). Default 20 s. Lowered to half the server's idle timeout if that is
    /// shorter.
    pub heartbeat_interval: Duration,
    /// The connection is considered dead when nothing at all was received for
    /// `heartbeat_interval + heartbeat_timeout`. Default 10 s.
    pub heartbeat_timeout: Duration,
    /// How long to wait for `login_ok`/`login_error` after the transport is up. Default 10 s.
    pub login_timeout: Duration,
    /// An in-flight `send` with no answer after this long is transmitted again (same
    /// `client_msg_id`); also the retry delay after a transient `send_error`. Default 10 s.
    pub ack_timeout: Duration,
    /// At most this many `send`s are unanswered at a time. Default 256.
    pub max_in_flight: usize,
    /// An `ack` is transmitted at most this long after the inbox cursor first advanced past the
    /// last acknowledged value. Default 50 ms.
    pub ack_delay: Duration,
    /// An `ack` is transmitted at once when the cursor is this far past the last acknowledged
    /// value. Default 64.
    pub ack_every: u64,
    /// A gap in the inbox that makes no progress for this long is asked for again with `sync`.
    /// Default 3 s.
    pub gap_timeout: Duration,
    /// At most this many out-of-order inbox messages are buffered; later ones are dropped and
    /// fetched again by `sync`. Default 10 000.
    pub max_reorder: usize,
    /// Client description sent in `login` (SDK name and version). Default
    /// `tether-sdk/<version>`.
    pub client_name: Option<String>,
    /// Connection metadata sent in every `login` (app version, locale, ...): at most
    /// [`METADATA_MAX_ENTRIES`] entries, keys of at most [`METADATA_MAX_KEY`] bytes, values of at
    /// most [`METADATA_MAX_VALUE`] bytes, [`METADATA_MAX_TOTAL`] bytes in all (see
    /// [`check_metadata`]); the server refuses a larger one with `login_error{invalid_field}`.
    /// Default empty (not sent).
    pub metadata: HashMap<String, String>,
}

impl SessionConfig {
    /// A configuration with the default tunables for the given device.
    pub fn new(device_type: impl Into<String>, device_id: impl Into<String>) -> Self {
        SessionConfig {
            device_type: device_type.into(),
            device_id: device_id.into(),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(10),
            max_in_flight: 256,
            ack_delay: Duration::from_millis(50),
            ack_every: 64,
            gap_timeout: Duration::from_secs(3),
            max_reorder: 10_000,
            client_name: Some(concat!("tether-sdk/", env!("CARGO_PKG_VERSION")).to_owned()),
            metadata: HashMap::new(),
        }
    }
}

pub use tether_proto::metadata::{
    MetadataError, METADATA_MAX_ENTRIES, METADATA_MAX_KEY, METADATA_MAX_TOTAL, METADATA_MAX_VALUE,
};

/// Checks connection metadata against the limits the server enforces at login, so that an app
/// learns about a bad value before it connects rather than from a refused login.
pub fn check_metadata(metadata: &HashMap<String, String>) -> Result<(), MetadataError> {
    tether_proto::metadata::check_metadata(
        &metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        METADATA_MAX_TOTAL,
    )
}

/// A message waiting in the outbox until the server acknowledges it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The client's id for the message; every retry reuses it.
    pub client_msg_id: String,
    /// Recipient.
    pub to: Address,
    /// Payload type.
    pub content_type: String,
    /// Opaque payload (base64 in JSON).
    #[serde(with = "b64")]
    pub payload: Vec<u8>,
    /// When the app sent it, ms since the Unix epoch.
    pub created_ms: u64,
}

/// A resume token from `login_ok`, for reconnecting after a one-time-ticket login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeToken {
    /// The token, presented as `credential: {resume: ...}`.
    pub token: String,
    /// Expiry, ms since the Unix epoch (`u64::MAX` if the server gave none).
    pub expires_ms: u64,
}

/// Everything the session needs to survive a restart of the app.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// Unacknowledged messages, oldest first.
    #[serde(default)]
    pub outbox: Vec<OutboxEntry>,
    /// Highest contiguous inbox sequence number handed to the app; `None` if nothing ever was.
    #[serde(default)]
    pub inbox_cursor: Option<u64>,
    /// The current resume token, if any.
    #[serde(default)]
    pub resume: Option<ResumeToken>,
    /// Per room: highest contiguous room sequence number processed. A room is listed from
    /// when the device first learned of its membership (join, or a first message) until it
    /// left.
    #[serde(default)]
    pub room_cursors: BTreeMap<String, u64>,
}

impl PersistedState {
    /// Applies one operation. Replaying a sequence of operations onto the state it produced
    /// leaves that state unchanged (adds of a present id and removes of an absent id are no-ops),
    /// which makes journal replay after an interrupted compaction safe.
    pub fn apply(&mut self, op: &PersistOp) {
        match op {
            PersistOp::OutboxAdd(entry) => {
                if !self.outbox.iter().any(|e| e.client_msg_id == entry.client_msg_id) {
                    self.outbox.push(entry.clone());
                }
            }
            PersistOp::OutboxRemove(id) => self.outbox.retain(|e| &e.client_msg_id != id),
            PersistOp::Cursor(c) => self.inbox_cursor = Some(*c),
            PersistOp::Resume(r) => self.resume = r.clone(),
            PersistOp::RoomCursor { room, seq } => {
                self.room_cursors.insert(room.clone(), *seq);
            }
            PersistOp::RoomForget(room) => {
                self.room_cursors.remove(room);
            }
        }
    }
}

/// A change the driver must make durable (see `tether_sdk::state::StateStore`) before it
/// transmits the frames queued after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "v", rename_all = "snake_case")]
pub enum PersistOp {
    /// A new message entered the outbox.
    OutboxAdd(OutboxEntry),
    /// The message with this `client_msg_id` left the outbox (acknowledged or refused).
    OutboxRemove(String),
    /// The inbox cursor advanced to this value.
    Cursor(u64),
    /// The resume token changed (`None`: dropped).
    Resume(Option<ResumeToken>),
    /// A room's cursor was set (first learned of the room) or advanced.
    RoomCursor {
        /// Room id.
        room: String,
        /// The new cursor.
        seq: u64,
    },
    /// The device's user left this room: its cursor is forgotten.
    RoomForget(String),
}

/// What the driver must do to the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Open a new connection, then report [`Session::handle_connected`] or
    /// [`Session::handle_connect_failed`].
    ///
    /// [`Session::handle_connected`]: super::Session::handle_connected
    /// [`Session::handle_connect_failed`]: super::Session::handle_connect_failed
    Connect,
    /// Close the current connection (or abandon the connection attempt) with this code, after
    /// writing the frames already polled. The session already treats the connection as gone;
    /// reporting its end with `handle_disconnected` is allowed but not needed.
    Disconnect {
        /// Application close code to close with.
        code: CloseCode,
    },
}

impl Action {
    /// Whether the node of the connection this action ends let the session down, so that the
    /// driver should let it cool down and connect elsewhere next
    /// ([`NodeDirectory::mark_failed`](crate::discovery::NodeDirectory::mark_failed)): a
    /// [`Action::Disconnect`] with any code but [`CloseCode::Normal`] (no answer to the
    /// heartbeat or to the login, or `going_away` after a `go_away`). A polite leave (pause,
    /// close, after a refused login) is `Normal` and does not count.
    pub fn marks_node_failed(&self) -> bool {
        matches!(self, Action::Disconnect { code } if *code != CloseCode::Normal)
    }
}

/// Where the session is in its connection lifecycle (the session's own view, with the deadline
/// it schedules on; apps see it as [`ConnectionState`] in [`Event::State`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Created, not started.
    Idle,
    /// Waiting for the transport to come up.
    Connecting,
    /// Transport up, `login` sent, waiting for the answer.
    LoggingIn,
    /// Logged in; messages flow.
    Online,
    /// Waiting before the next connection attempt.
    Backoff {
        /// 0-based number of this wait among consecutive failures (its delay is drawn from
        /// `[d/2, d]` with `d = min(backoff_max, backoff_base * 2^attempt)`).
        attempt: u32,
        /// When the next attempt starts.
        retry_at: Instant,
        /// How long the wait is (`retry_at` minus the time it started).
        delay: Duration,
    },
    /// The server ended the session; no reconnect until [`Session::start`](super::Session::start).
    Kicked(KickReason),
    /// The credential was refused; no reconnect until a new credential and
    /// [`Session::start`](super::Session::start).
    AuthFailed(ErrorCode),
    /// [`Session::close`](super::Session::close) was called.
    LoggedOut,
    /// [`Session::pause`](super::Session::pause) was called (the app is in the background): no
    /// connection until [`Session::resume`](super::Session::resume).
    Paused,
}

/// Something the app should learn about: the one event type of the SDK. The session core
/// produces every variant but [`Event::StorageError`], which the driver (the `tether-sdk`
/// client, which owns the state journal) adds. Every payload is an SDK model type
/// ([`crate::model`]), not a wire struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    State(ConnectionState),
    /// Logged in.
    LoggedIn {
        /// The authenticated user.
        user: String,
        /// The server's id for this session.
        session_id: String,
    },
    /// The next message of the inbox or of a room (`to` tells which), in order per inbox and
    /// per room, exactly once. Messages fetched with
    /// [`Session::sync_room`](super::Session::sync_room) from before the room's cursor
    /// (history) come as this event too, with a `seq` at or below messages already handed over.
    Message(Message),
    /// A sent message is durable on the server and left the outbox.
    SendAcked(SendAck),
    /// A sent message was refused for good and left the outbox.
    SendFailed {
        /// The message's id.
        client_msg_id: String,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The app cancelled a message that was still in the outbox ([`Session::cancel`](super::Session::cancel)).
    SendCancelled {
        /// The message's id.
        client_msg_id: String,
        /// It may have reached the server before the cancel (then it may still be delivered).
        maybe_delivered: bool,
    },
    /// The server ended the session (also synthesized when the server closed the connection
    /// with `replaced` or `kicked` and the frame itself was lost). No reconnect until the app
    /// starts the session again.
    Kicked(Kicked),
    /// Login was refused for good (the state is now [`ConnectionState::AuthFailed`]): give a
    /// new credential.
    LoginFailed {
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The device's user is a member of the room (answer to
    /// [`Session::join_room`](super::Session::join_room)). Room messages after `head` follow.
    RoomJoined(RoomJoined),
    /// The server refused to join the room (`no_such_room`, `not_a_member`, `invalid_field`).
    RoomJoinFailed {
        /// Room id.
        room: String,
        /// Why.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
    /// The device's user is no longer a member of this room (answer to
    /// [`Session::leave_room`](super::Session::leave_room)); its cursor is forgotten.
    RoomLeft(String),
    /// Someone entered or quit a room of the user, or came online or went offline.
    RoomEvent(RoomEvent),
    /// A subscribed user's presence (at subscription, and on every change).
    Presence(Presence),
    /// Room messages the device had not seen are past the room's retention and gone:
    /// `after + 1 .. first_seq` will never arrive. Messages from `first_seq` on follow.
    HistoryTruncated(HistoryTruncated),
    /// Writing the state journal failed (added by the driver, which owns the journal): what
    /// happened since may be lost on restart.
    StorageError(String),
}

/// Base64 (standard alphabet, padded) for byte fields in JSON.
mod b64 {
    use base64::engine::general_purpose::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}
