//! Frame types. Every struct here is one frame body; [`Frame`] is the tagged union that goes
//! on the wire with its `type` field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every frame Tether defines, in both directions.
///
/// On the wire a frame is a MessagePack map whose `type` field holds the snake_case variant
/// name (`"login"`, `"send_ack"`, ...) and whose other fields are those of the variant's
/// struct. Unknown fields are ignored by the decoder; unknown `type`s decode to
/// [`crate::Decoded::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    // ---- client to server ----
    /// First frame of a session: authenticates and negotiates the version.
    Login(Login),
    /// Send a message.
    Send(Send),
    /// Cumulative acknowledgement of the device's inbox.
    Ack(Ack),
    /// Ask for inbox messages after a sequence number.
    Sync(Sync),
    /// Heartbeat request.
    Ping(Ping),
    /// End the session on purpose.
    Logout(Logout),
    /// Become a member of a room.
    JoinRoom(JoinRoom),
    /// Stop being a member of a room.
    LeaveRoom(LeaveRoom),
    /// Receive `presence` frames for these users.
    SubscribePresence(SubscribePresence),
    /// Stop receiving `presence` frames for these users.
    UnsubscribePresence(UnsubscribePresence),
    // ---- server to client ----
    /// Login accepted.
    LoginOk(LoginOk),
    /// Login refused; the server closes the connection after it.
    LoginError(LoginError),
    /// A sent message is durable.
    SendAck(SendAck),
    /// A sent message was refused; it was not stored.
    SendError(SendError),
    /// A message in the device's inbox.
    Deliver(Deliver),
    /// The session was ended by the server; the client must not reconnect on its own.
    Kicked(Kicked),
    /// Heartbeat answer.
    Pong(Pong),
    /// A protocol-level error; with `fatal` the server closes the connection after it.
    Error(ErrorFrame),
    /// Answer to `join_room`: the device is a member; the room's head and counts.
    RoomJoined(RoomJoined),
    /// Answer to `leave_room`.
    RoomLeft(RoomLeft),
    /// Something happened in a room the device's user is a member of.
    RoomEvent(RoomEvent),
    /// A subscribed user's presence changed (or its current state after subscribing).
    Presence(Presence),
    /// Part of a room's history the device asked for is past retention and gone.
    HistoryTruncated(HistoryTruncated),
    /// The node is draining: reconnect to another node now; the connection closes after it.
    GoAway(GoAway),
}

impl Frame {
    /// The value of the `type` field for this frame.
    pub fn type_name(&self) -> &'static str {
        match self {
            Frame::Login(_) => "login",
            Frame::Send(_) => "send",
            Frame::Ack(_) => "ack",
            Frame::Sync(_) => "sync",
            Frame::Ping(_) => "ping",
            Frame::Logout(_) => "logout",
            Frame::JoinRoom(_) => "join_room",
            Frame::LeaveRoom(_) => "leave_room",
            Frame::SubscribePresence(_) => "subscribe_presence",
            Frame::UnsubscribePresence(_) => "unsubscribe_presence",
            Frame::LoginOk(_) => "login_ok",
            Frame::LoginError(_) => "login_error",
            Frame::SendAck(_) => "send_ack",
            Frame::SendError(_) => "send_error",
            Frame::Deliver(_) => "deliver",
            Frame::Kicked(_) => "kicked",
            Frame::Pong(_) => "pong",
            Frame::Error(_) => "error",
            Frame::RoomJoined(_) => "room_joined",
            Frame::RoomLeft(_) => "room_left",
            Frame::RoomEvent(_) => "room_event",
            Frame::Presence(_) => "presence",
            Frame::HistoryTruncated(_) => "history_truncated",
            Frame::GoAway(_) => "go_away",
        }
    }
}

/// Credentials presented at login: exactly one of a JWT or a one-time ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    /// A JWT minted by the app's backend (`sub` = user id, `exp` enforced).
    Token(String),
    /// A one-time login ticket issued by the admin API.
    Ticket(String),
    /// A resume token from an earlier `login_ok` of the same device: lets a device that logged
    /// in with a one-time ticket (or whose JWT has since expired) reconnect.
    Resume(String),
}

/// `login`: the first frame a client sends on a new connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// Highest protocol version the client speaks.
    pub version: u32,
    /// JWT or ticket.
    pub credential: Credential,
    /// Kind of device (`"phone"`, `"desktop"`, `"web"`, ...). One session per (user, device type).
    pub device_type: String,
    /// Stable id of this installation. The same device reconnecting takes over its own session
    /// quietly; another device of the same type replaces it with `kicked{replaced}`.
    pub device_id: String,
    /// Highest inbox sequence number the device has fully processed (its cumulative ack), if it
    /// has state. The server then sends every inbox message after it. `None` means the server
    /// uses the cursor it stored for this device, or 0.
    #[serde(default)]
    pub inbox_cursor: Option<u64>,
    /// Free-form client description (SDK name and version), for logs.
    #[serde(default)]
    pub client: Option<String>,
    /// Per-room cursors: for each room, the highest room seq the device has processed. The
    /// server sends each listed room's messages after it. A room of the user that is not
    /// listed resumes from the cursor the server stored for this device, or from the room's
    /// current head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_cursors: Option<BTreeMap<String, u64>>,
    /// Small key/value data bound to the session (app version, locale, ...), shown in
    /// presence, the admin API and webhooks. Size-limited by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// Kind of a message address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// A user id: the message goes to the user's inbox.
    User,
    /// A room id: the message goes to the room's log, to every member.
    Room,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// User or room.
    pub kind: AddressKind,
    /// The user or room id.
    pub id: String,
}

impl Address {
    /// Address of a user.
    pub fn user(id: impl Into<String>) -> Self {
        Address { kind: AddressKind::User, id: id.into() }
    }

    /// Address of a room.
    pub fn room(id: impl Into<String>) -> Self {
        Address { kind: AddressKind::Room, id: id.into() }
    }
}

/// `send`: send a message. The sender is the session's authenticated user, never a field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Send {
    /// Id chosen by the sending client, unique per sender; a retry reuses it and the server
    /// answers a duplicate with the original `send_ack`.
    pub client_msg_id: String,
    /// Recipient.
    pub to: Address,
    /// MIME-like type of the payload (`"text/plain"`, app-defined types...).
    pub content_type: String,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// `ack`: the device has processed every inbox message up to and including `inbox`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest contiguous inbox sequence number processed.
    pub inbox: u64,
    /// Highest contiguous seq processed per room (only rooms whose cursor moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<BTreeMap<String, u64>>,
}

/// `sync`: send me the inbox messages (or, with `room`, that room's messages) with a sequence
/// number greater than `after`, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Exclusive lower bound.
    pub after: u64,
    /// Highest sequence number wanted (inclusive); `None` means up to the current head.
    #[serde(default)]
    pub until: Option<u64>,
    /// A room of the user instead of the inbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// `join_room`: become a member of `room` (created if the server allows it). Membership is
/// stored: it survives disconnects and restarts until `leave_room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRoom {
    /// Room id.
    pub room: String,
}

/// `leave_room`: stop being a member of `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaveRoom {
    /// Room id.
    pub room: String,
}

/// `subscribe_presence`: send `presence` frames when these users' presence changes; the
/// server answers with their current presence at once. Lasts for the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribePresence {
    /// User ids.
    pub users: Vec<String>,
}

/// `unsubscribe_presence`: stop `presence` frames for these users.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribePresence {
    /// User ids.
    pub users: Vec<String>,
}

/// `room_joined`: the device's user is a member of `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomJoined {
    /// Room id.
    pub room: String,
    /// Current highest seq of the room log; messages after it follow as `deliver`.
    pub head: u64,
    /// Members (distinct users).
    pub members: u64,
    /// Members online (distinct users with at least one session).
    pub online: u64,
}

/// `room_left`: the device's user is no longer a member of `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomLeft {
    /// Room id.
    pub room: String,
}

/// What happened in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoomEventKind {
    /// A user became a member.
    Enter,
    /// A user stopped being a member.
    Quit,
    /// A member came online (first session).
    Online,
    /// A member went offline (last session ended, announced or not).
    Offline,
    /// A kind this version does not know.
    #[serde(other)]
    Unknown,
}

/// `room_event`: membership or liveness change in a room, with the counts after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomEvent {
    /// Room id.
    pub room: String,
    /// What happened.
    pub kind: RoomEventKind,
    /// The user it happened to.
    pub user: String,
    /// Members (distinct users) after the event.
    pub members: u64,
    /// Members online (distinct users) after the event.
    pub online: u64,
}

/// One connected device in a `presence` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicePresence {
    /// Device type.
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Connected since, ms since the Unix epoch.
    pub since_ms: u64,
    /// Node the device is connected to.
    pub node: String,
    /// The session's connection metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `presence`: a user's presence: online when at least one device is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// User id.
    pub user: String,
    /// At least one device connected.
    pub online: bool,
    /// Connected devices.
    pub devices: Vec<DevicePresence>,
    /// Last time the user was seen (login, heartbeat, disconnect), ms since the Unix epoch;
    /// 0 if never.
    pub last_seen_ms: u64,
}

/// `history_truncated`: the device asked for room messages older than the room's retention.
/// Messages `after..first_seq` are gone; the server continues from `first_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryTruncated {
    /// Room id.
    pub room: String,
    /// The device's cursor (exclusive) the request started from.
    pub after: u64,
    /// The oldest seq still kept.
    pub first_seq: u64,
}

/// `ping`: heartbeat; the server answers with a `pong` carrying the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Echoed in the pong.
    pub nonce: u64,
}

/// `logout`: the client ends the session; the server closes the connection with `logout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Logout {}

/// `login_ok`: the session is established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginOk {
    /// Negotiated protocol version.
    pub version: u32,
    /// Server-assigned session id (for logs and the admin API).
    pub session_id: String,
    /// The authenticated user id.
    pub user: String,
    /// Current highest sequence number in the user's inbox. Messages after the client's cursor
    /// up to this head follow as `deliver` frames.
    pub inbox_head: u64,
    /// Server clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
    /// The server closes a session that sends nothing for this long (milliseconds).
    pub idle_timeout_ms: u64,
    /// Largest frame body the server accepts.
    pub max_frame: u32,
    /// Token for `credential: {resume: ...}` on this device's next reconnects, bound to this
    /// user and device id, valid until `resume_expires_ms`.
    #[serde(default)]
    pub resume_token: Option<String>,
    /// Expiry of `resume_token`, ms since the Unix epoch.
    #[serde(default)]
    pub resume_expires_ms: Option<u64>,
    /// The head (highest seq) of each room the user is a member of, as of this login. The
    /// room backlog that follows ends at these heads: a client has caught up with a room once
    /// it holds its head (or was told `history_truncated` past it). Absent from older servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_heads: Option<BTreeMap<String, u64>>,
}

/// Error codes carried by `login_error`, `send_error` and `error` frames.
///
/// Serialized as snake_case strings. A code this version does not know decodes to
/// [`ErrorCode::Unknown`], so old clients keep working with newer servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client speaks no protocol version the server accepts.
    UnsupportedVersion,
    /// The JWT is not valid (bad format, wrong algorithm, missing claims).
    InvalidToken,
    /// The JWT signature does not verify.
    BadSignature,
    /// The JWT's `exp` is in the past.
    TokenExpired,
    /// The ticket does not exist or was already used.
    TicketInvalid,
    /// The ticket has expired.
    TicketExpired,
    /// A frame other than `login` (or `ping`) arrived before login.
    NotLoggedIn,
    /// A second `login` on a logged-in session.
    AlreadyLoggedIn,
    /// The frame could not be decoded.
    BadFrame,
    /// The frame exceeded the maximum frame size.
    FrameTooLarge,
    /// The frame type is not known to the server; the frame was skipped.
    UnknownFrameType,
    /// The frame is known but must not be sent in this direction.
    UnexpectedFrame,
    /// A field is out of its allowed range (empty id, too long, ...).
    InvalidField,
    /// The address kind is not supported by this server.
    Unsupported,
    /// The room does not exist.
    NoSuchRoom,
    /// The user is not a member of the room.
    NotAMember,
    /// The session sends faster than the configured rate; the message was not stored.
    RateLimited,
    /// The server failed internally; the client may retry.
    Internal,
    /// The server is overloaded or shutting down; retry later.
    Unavailable,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

/// `login_error`: login refused. The connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginError {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// `send_ack`: the message is durable in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendAck {
    /// The client's id for the message.
    pub client_msg_id: String,
    /// Server-wide message id.
    pub msg_id: u64,
    /// Sequence number of the sender's own copy in the sender's inbox (other devices of the
    /// sender receive it as `deliver` with this seq).
    pub seq: u64,
    /// Server timestamp of the message, ms since the Unix epoch.
    pub ts: u64,
    /// True if this answers a retry of a message stored earlier.
    pub duplicate: bool,
}

/// `send_error`: the message was refused and not stored. Retrying it unchanged will fail again
/// unless `code` is `internal` or `unavailable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendError {
    /// The client's id for the message.
    pub client_msg_id: String,
    /// Why.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

/// `deliver`: one message of the device's inbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// Server-wide message id.
    pub msg_id: u64,
    /// Sequence number in the receiving user's inbox.
    pub seq: u64,
    /// Sending user.
    pub from: String,
    /// Device id that sent it (empty for messages pushed by the admin API).
    pub from_device: String,
    /// The sender's id for the message.
    pub client_msg_id: String,
    /// Where it was sent.
    pub to: Address,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// Payload type.
    pub content_type: String,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A `deliver` frame over borrowed fields, for a sender that holds the message elsewhere (the
/// server's stored messages): encoded with [`crate::encode_deliver`], it is byte for byte the
/// encoding of [`Frame::Deliver`] with the same values, without copying the fields first.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "type", rename = "deliver")]
pub struct DeliverRef<'a> {
    /// Server-wide message id.
    pub msg_id: u64,
    /// Sequence number in the receiving user's inbox (or the room's log).
    pub seq: u64,
    /// Sending user.
    pub from: &'a str,
    /// Device id that sent it.
    pub from_device: &'a str,
    /// The sender's id for the message.
    pub client_msg_id: &'a str,
    /// Where it was sent.
    pub to: &'a Address,
    /// Server timestamp, ms since the Unix epoch.
    pub ts: u64,
    /// Payload type.
    pub content_type: &'a str,
    /// Opaque payload.
    #[serde(with = "serde_bytes")]
    pub payload: &'a [u8],
}

impl Deliver {
    /// The same frame over borrowed fields.
    pub fn borrowed(&self) -> DeliverRef<'_> {
        DeliverRef {
            msg_id: self.msg_id,
            seq: self.seq,
            from: &self.from,
            from_device: &self.from_device,
            client_msg_id: &self.client_msg_id,
            to: &self.to,
            ts: self.ts,
            content_type: &self.content_type,
            payload: &self.payload,
        }
    }
}

/// Why the server ended a session with `kicked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KickReason {
    /// Another device of the same type logged in as this user.
    Replaced,
    /// The app's backend kicked the user through the admin API.
    Admin,
    /// A reason this version does not know.
    #[serde(other)]
    Unknown,
}

/// `kicked`: the session is over; the connection closes after this frame and the client must
/// not reconnect on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kicked {
    /// Why.
    pub reason: KickReason,
    /// Human-readable detail.
    pub message: String,
}

/// `go_away`: the node is going away (draining for a deploy or scale-down). The connection
/// closes after this frame with `going_away`; the client reconnects at once to another node,
/// resuming as after any reconnect (cursors, unacknowledged sends).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    /// Why: `"draining"`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
}

/// `pong`: answer to `ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// The ping's nonce.
    pub nonce: u64,
}

/// `error`: a protocol-level error. With `fatal` the connection is closed after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Whether the server closes the connection after this frame.
    pub fatal: bool,
}

/// QUIC application close codes a Tether server or client uses when it closes a connection.
///
/// The close reason bytes carry [`CloseCode::reason`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// Normal close (logout, client shutdown).
    Normal = 0,
    /// The peer broke the protocol (undecodable frame, wrong first frame).
    ProtocolError = 1,
    /// A frame exceeded the maximum size.
    FrameTooLarge = 2,
    /// No login arrived within the login timeout.
    LoginTimeout = 3,
    /// Login was refused.
    AuthFailed = 4,
    /// Another device of the same type took over the session.
    Replaced = 5,
    /// Nothing was received within the idle timeout.
    IdleTimeout = 6,
    /// The admin API kicked the session.
    Kicked = 7,
    /// The same device reconnected and took over its own session.
    Superseded = 8,
    /// The server is shutting down.
    ServerShutdown = 9,
    /// After `go_away`: the node is draining; reconnect to another node at once.
    GoingAway = 10,
}

impl CloseCode {
    /// All codes, for lookups and docs.
    pub const ALL: [CloseCode; 11] = [
        CloseCode::Normal,
        CloseCode::ProtocolError,
        CloseCode::FrameTooLarge,
        CloseCode::LoginTimeout,
        CloseCode::AuthFailed,
        CloseCode::Replaced,
        CloseCode::IdleTimeout,
        CloseCode::Kicked,
        CloseCode::Superseded,
        CloseCode::ServerShutdown,
        CloseCode::GoingAway,
    ];

    /// Numeric code for `CONNECTION_CLOSE`.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Short reason string sent as the close reason.
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Normal => "normal",
            CloseCode::ProtocolError => "protocol_error",
            CloseCode::FrameTooLarge => "frame_too_large",
            CloseCode::LoginTimeout => "login_timeout",
            CloseCode::AuthFailed => "auth_failed",
            CloseCode::Replaced => "replaced",
            CloseCode::IdleTimeout => "idle_timeout",
            CloseCode::Kicked => "kicked",
            CloseCode::Superseded => "superseded",
            CloseCode::ServerShutdown => "server_shutdown",
            CloseCode::GoingAway => "going_away",
        }
    }

    /// The code for a numeric value, if known.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }
}
