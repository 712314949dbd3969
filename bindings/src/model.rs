//! The SDK's model types as uniffi records and enums, converted one to one.

use std::collections::HashMap;

/// A credential to log in with.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Credential {
    /// A JWT minted by the app's backend.
    Token {
        /// The token.
        jwt: String,
    },
    /// A one-time ticket from the admin API.
    Ticket {
        /// The ticket.
        ticket: String,
    },
}

impl From<Credential> for tether_sdk::Credential {
    fn from(c: Credential) -> Self {
        match c {
            Credential::Token { jwt } => tether_sdk::Credential::Token(jwt),
            Credential::Ticket { ticket } => tether_sdk::Credential::Ticket(ticket),
        }
    }
}

/// Which server certificates to trust.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum Trust {
    /// The platform's verifier (Android / Apple trust store): what a release app uses.
    Platform,
    /// The system's root certificates, checked with WebPKI.
    SystemRoots,
    /// CA certificates in a PEM file.
    CaFile {
        /// The file.
        path: String,
    },
    /// Exactly this certificate (PEM or DER file): development against a node's dev certificate.
    Pinned {
        /// The file.
        path: String,
    },
}

impl From<Trust> for tether_sdk::Trust {
    fn from(t: Trust) -> Self {
        match t {
            Trust::Platform => tether_sdk::Trust::Platform,
            Trust::SystemRoots => tether_sdk::Trust::SystemRoots,
            Trust::CaFile { path } => tether_sdk::Trust::CaFile(path),
            Trust::Pinned { path } => tether_sdk::Trust::Pinned(path),
        }
    }
}

/// A user (1:1) or a room.
#[derive(Debug, Clone, PartialEq, Eq, Hash, uniffi::Enum)]
pub enum Target {
    /// A user.
    User {
        /// User id.
        id: String,
    },
    /// A room.
    Room {
        /// Room id.
        id: String,
    },
}

impl From<Target> for tether_sdk::Target {
    fn from(t: Target) -> Self {
        match t {
            Target::User { id } => tether_sdk::Target::User(id),
            Target::Room { id } => tether_sdk::Target::Room(id),
        }
    }
}

impl From<tether_sdk::Target> for Target {
    fn from(t: tether_sdk::Target) -> Self {
        match t {
            tether_sdk::Target::User(id) => Target::User { id },
            tether_sdk::Target::Room(id) => Target::Room { id },
        }
    }
}

/// Error codes of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
#[allow(missing_docs)]
pub enum ErrorCode {
    UnsupportedVersion,
    InvalidToken,
    BadSignature,
    TokenExpired,
    TicketInvalid,
    TicketExpired,
    NotLoggedIn,
    AlreadyLoggedIn,
    BadFrame,
    FrameTooLarge,
    UnknownFrameType,
    UnexpectedFrame,
    InvalidField,
    Unsupported,
    NoSuchRoom,
    NotAMember,
    RateLimited,
    Internal,
    Unavailable,
    /// A code this version does not know.
    Unknown,
}

impl From<tether_sdk::ErrorCode> for ErrorCode {
    fn from(c: tether_sdk::ErrorCode) -> Self {
        use tether_sdk::ErrorCode as E;
        match c {
            E::UnsupportedVersion => ErrorCode::UnsupportedVersion,
            E::InvalidToken => ErrorCode::InvalidToken,
            E::BadSignature => ErrorCode::BadSignature,
            E::TokenExpired => ErrorCode::TokenExpired,
            E::TicketInvalid => ErrorCode::TicketInvalid,
            E::TicketExpired => ErrorCode::TicketExpired,
            E::NotLoggedIn => ErrorCode::NotLoggedIn,
            E::AlreadyLoggedIn => ErrorCode::AlreadyLoggedIn,
            E::BadFrame => ErrorCode::BadFrame,
            E::FrameTooLarge => ErrorCode::FrameTooLarge,
            E::UnknownFrameType => ErrorCode::UnknownFrameType,
            E::UnexpectedFrame => ErrorCode::UnexpectedFrame,
            E::InvalidField => ErrorCode::InvalidField,
            E::Unsupported => ErrorCode::Unsupported,
            E::NoSuchRoom => ErrorCode::NoSuchRoom,
            E::NotAMember => ErrorCode::NotAMember,
            E::RateLimited => ErrorCode::RateLimited,
            E::Internal => ErrorCode::Internal,
            E::Unavailable => ErrorCode::Unavailable,
            E::Unknown => ErrorCode::Unknown,
        }
    }
}

/// A message handed to the app.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Message {
    /// Server-wide id.
    pub msg_id: u64,
    /// Place in the inbox, or in the room's log.
    pub seq: u64,
    /// Sender.
    pub from: String,
    /// Sender's device.
    pub from_device: String,
    /// Sender's id for it.
    pub client_msg_id: String,
    /// The user or the room it is for.
    pub to: Target,
    /// Server time, ms since the Unix epoch.
    pub ts: u64,
    /// Payload type.
    pub content_type: String,
    /// Payload.
    pub payload: Vec<u8>,
}

impl From<tether_sdk::Message> for Message {
    fn from(m: tether_sdk::Message) -> Self {
        Message {
            msg_id: m.msg_id,
            seq: m.seq,
            from: m.from,
            from_device: m.from_device,
            client_msg_id: m.client_msg_id,
            to: m.to.into(),
            ts: m.ts,
            content_type: m.content_type,
            payload: m.payload,
        }
    }
}

/// A sent message is durable on the server.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct SendAck {
    /// The message's id.
    pub client_msg_id: String,
    /// Server-wide id.
    pub msg_id: u64,
    /// Seq in the sender's inbox, or in the room's log.
    pub seq: u64,
    /// Server time, ms.
    pub ts: u64,
    /// The server had it already (a retry).
    pub duplicate: bool,
}

impl From<tether_sdk::SendAck> for SendAck {
    fn from(a: tether_sdk::SendAck) -> Self {
        SendAck { client_msg_id: a.client_msg_id, msg_id: a.msg_id, seq: a.seq, ts: a.ts, duplicate: a.duplicate }
    }
}

/// A message not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PendingMessage {
    /// Its id.
    pub client_msg_id: String,
    /// Recipient.
    pub to: Target,
    /// Payload type.
    pub content_type: String,
    /// Payload.
    pub payload: Vec<u8>,
    /// When it was sent, ms since the Unix epoch.
    pub created_ms: u64,
}

impl From<tether_sdk::PendingMessage> for PendingMessage {
    fn from(p: tether_sdk::PendingMessage) -> Self {
        PendingMessage {
            client_msg_id: p.client_msg_id,
            to: p.to.into(),
            content_type: p.content_type,
            payload: p.payload,
            created_ms: p.created_ms,
        }
    }
}

/// The user is a member of a room.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RoomJoined {
    /// Room id.
    pub room: String,
    /// The room's head.
    pub head: u64,
    /// Members.
    pub members: u64,
    /// Online members.
    pub online: u64,
}

impl From<tether_sdk::RoomJoined> for RoomJoined {
    fn from(j: tether_sdk::RoomJoined) -> Self {
        RoomJoined { room: j.room, head: j.head, members: j.members, online: j.online }
    }
}

/// What happened to someone in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
#[allow(missing_docs)]
pub enum RoomEventKind {
    Enter,
    Quit,
    Online,
    Offline,
    Other,
}

impl From<tether_sdk::RoomEventKind> for RoomEventKind {
    fn from(k: tether_sdk::RoomEventKind) -> Self {
        use tether_sdk::RoomEventKind as K;
        match k {
            K::Enter => RoomEventKind::Enter,
            K::Quit => RoomEventKind::Quit,
            K::Online => RoomEventKind::Online,
            K::Offline => RoomEventKind::Offline,
            K::Other => RoomEventKind::Other,
        }
    }
}

/// Someone entered, quit, came online or went offline in a room.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct RoomEvent {
    /// Room id.
    pub room: String,
    /// What happened.
    pub kind: RoomEventKind,
    /// To whom.
    pub user: String,
    /// Members after it.
    pub members: u64,
    /// Online members after it.
    pub online: u64,
}

impl From<tether_sdk::RoomEvent> for RoomEvent {
    fn from(e: tether_sdk::RoomEvent) -> Self {
        RoomEvent { room: e.room, kind: e.kind.into(), user: e.user, members: e.members, online: e.online }
    }
}

/// One live session of a user.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct DevicePresence {
    /// Device type.
    pub device_type: String,
    /// Device id.
    pub device_id: String,
    /// Login time, ms.
    pub since_ms: u64,
    /// Node.
    pub node: String,
    /// Connection metadata.
    pub metadata: HashMap<String, String>,
}

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct Presence {
    /// User id.
    pub user: String,
    /// At least one live session.
    pub online: bool,
    /// The live sessions.
    pub devices: Vec<DevicePresence>,
    /// Last seen, ms (0: unknown).
    pub last_seen_ms: u64,
}

impl From<tether_sdk::Presence> for Presence {
    fn from(p: tether_sdk::Presence) -> Self {
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
                    metadata: d.metadata,
                })
                .collect(),
            last_seen_ms: p.last_seen_ms,
        }
    }
}

/// Why the server ended the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
#[allow(missing_docs)]
pub enum KickReason {
    Replaced,
    Admin,
    Other,
}

impl From<tether_sdk::KickReason> for KickReason {
    fn from(r: tether_sdk::KickReason) -> Self {
        match r {
            tether_sdk::KickReason::Replaced => KickReason::Replaced,
            tether_sdk::KickReason::Admin => KickReason::Admin,
            tether_sdk::KickReason::Other => KickReason::Other,
        }
    }
}

/// The client's connection state.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[allow(missing_docs)]
pub enum ConnectionState {
    Idle,
    Connecting,
    LoggingIn,
    Online,
    /// Waiting `retry_in_ms` before attempt `attempt + 1`.
    Backoff {
        attempt: u32,
        retry_in_ms: u64,
    },
    /// No reconnect until the app acts.
    Kicked {
        reason: KickReason,
    },
    /// The credential was refused.
    AuthFailed {
        code: ErrorCode,
    },
    LoggedOut,
    Paused,
}

impl From<tether_sdk::ConnectionState> for ConnectionState {
    fn from(s: tether_sdk::ConnectionState) -> Self {
        use tether_sdk::ConnectionState as S;
        match s {
            S::Idle => ConnectionState::Idle,
            S::Connecting => ConnectionState::Connecting,
            S::LoggingIn => ConnectionState::LoggingIn,
            S::Online => ConnectionState::Online,
            S::Backoff { attempt, retry_in_ms } => ConnectionState::Backoff { attempt, retry_in_ms },
            S::Kicked { reason } => ConnectionState::Kicked { reason: reason.into() },
            S::AuthFailed { code } => ConnectionState::AuthFailed { code: code.into() },
            S::LoggedOut => ConnectionState::LoggedOut,
            S::Paused => ConnectionState::Paused,
        }
    }
}

/// Everything the client tells the app.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
#[allow(missing_docs)]
pub enum Event {
    /// The next message of the inbox or of a room, exactly once, in order.
    Message {
        message: Message,
    },
    State {
        state: ConnectionState,
    },
    LoggedIn {
        user: String,
        session_id: String,
    },
    SendAcked {
        ack: SendAck,
    },
    SendFailed {
        client_msg_id: String,
        code: ErrorCode,
        message: String,
    },
    SendCancelled {
        client_msg_id: String,
        maybe_delivered: bool,
    },
    Kicked {
        reason: KickReason,
        message: String,
    },
    LoginFailed {
        code: ErrorCode,
        message: String,
    },
    StorageError {
        message: String,
    },
    RoomJoined {
        joined: RoomJoined,
    },
    RoomJoinFailed {
        room: String,
        code: ErrorCode,
        message: String,
    },
    RoomLeft {
        room: String,
    },
    RoomEvent {
        event: RoomEvent,
    },
    Presence {
        presence: Presence,
    },
    HistoryTruncated {
        room: String,
        after: u64,
        first_seq: u64,
    },
}

impl From<tether_sdk::Event> for Event {
    fn from(e: tether_sdk::Event) -> Self {
        use tether_sdk::Event as E;
        match e {
            E::Message(m) => Event::Message { message: m.into() },
            E::State(s) => Event::State { state: s.into() },
            E::LoggedIn { user, session_id } => Event::LoggedIn { user, session_id },
            E::SendAcked(a) => Event::SendAcked { ack: a.into() },
            E::SendFailed { client_msg_id, code, message } => {
                Event::SendFailed { client_msg_id, code: code.into(), message }
            }
            E::SendCancelled { client_msg_id, maybe_delivered } => {
                Event::SendCancelled { client_msg_id, maybe_delivered }
            }
            E::Kicked(k) => Event::Kicked { reason: k.reason.into(), message: k.message },
            E::LoginFailed { code, message } => Event::LoginFailed { code: code.into(), message },
            E::StorageError(message) => Event::StorageError { message },
            E::RoomJoined(j) => Event::RoomJoined { joined: j.into() },
            E::RoomJoinFailed { room, code, message } => Event::RoomJoinFailed { room, code: code.into(), message },
            E::RoomLeft(room) => Event::RoomLeft { room },
            E::RoomEvent(ev) => Event::RoomEvent { event: ev.into() },
            E::Presence(p) => Event::Presence { presence: p.into() },
            E::HistoryTruncated(t) => Event::HistoryTruncated { room: t.room, after: t.after, first_seq: t.first_seq },
        }
    }
}
