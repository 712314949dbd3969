//! Frame types. Every struct here is one frame body; [`Frame`] is the tagged union that goes
//! on the wire with its `type` field.

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
            Frame::LoginOk(_) => "login_ok",
            Frame::LoginError(_) => "login_error",
            Frame::SendAck(_) => "send_ack",
            Frame::SendError(_) => "send_error",
            Frame::Deliver(_) => "deliver",
            Frame::Kicked(_) => "kicked",
            Frame::Pong(_) => "pong",
            Frame::Error(_) => "error",
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
}

/// Kind of a message address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// A user id: the message goes to the user's inbox.
    User,
    /// A room id (reserved for room support; refused with `unsupported` by servers without it).
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest contiguous inbox sequence number processed.
    pub inbox: u64,
}

/// `sync`: send me the inbox messages with a sequence number greater than `after`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sync {
    /// Exclusive lower bound.
    pub after: u64,
    /// Highest sequence number wanted (inclusive); `None` means up to the current head.
    #[serde(default)]
    pub until: Option<u64>,
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
}

impl CloseCode {
    /// All codes, for lookups and docs.
    pub const ALL: [CloseCode; 10] = [
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
        }
    }

    /// The code for a numeric value, if known.
    pub fn from_code(code: u64) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }
}
