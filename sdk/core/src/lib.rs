//! The sans-I/O session core, modelled on `quinn-proto`.
//!
//! A [`Session`] is a pure state machine. It never touches a socket, a file or a clock: the
//! driver tells it what happened (`handle_*`, with the current [`Instant`]) and then drains what
//! it wants done. Tests therefore drive hours of reconnect storms in milliseconds.
//!
//! # Driver loop
//!
//! After **every** call into the session, the driver drains its queues in this order:
//!
//! 1. [`Session::poll_persist`]: make each [`PersistOp`] durable (e.g. with
//!    `tether_sdk::state::StateStore::apply`). This comes first so that a message is in the
//!    journal before its `send` frame leaves, and a cursor before its `ack`.
//! 2. [`Session::poll_transmit`]: write each frame to the current connection.
//! 3. [`Session::poll_action`]: [`Action::Connect`] opens a connection (to the node a
//!    [`NodeDirectory`] chooses) and later reports [`Session::handle_connected`] or
//!    [`Session::handle_connect_failed`]; [`Action::Disconnect`] closes the current connection
//!    (after the frames already written).
//! 4. [`Session::poll_event`]: hand each [`Event`] to the app.
//!
//! Then it sleeps until [`Session::poll_timeout`] (calling [`Session::handle_timeout`] then),
//! a frame arrives ([`Session::handle_frame`]), the transport ends
//! ([`Session::handle_disconnected`]) or the app calls in.
//!
//! There is at most one connection at a time. After the session emitted
//! [`Action::Disconnect`] it already treats that connection as gone: the driver may report its
//! end with `handle_disconnected` but need not, and must do so before reporting the outcome of
//! a later [`Action::Connect`]. Reports that do not fit the state (a `handle_connected` while
//! not `Connecting`, a `handle_disconnected` while neither `LoggingIn` nor `Online`) are
//! ignored.
//!
//! # Delivery contract
//!
//! * Outbox: a message is persisted, then transmitted, and retransmitted with the same
//!   `client_msg_id` (after `ack_timeout`, and after every reconnect, in original order) until
//!   a `send_ack` (or our own copy in the inbox) confirms it, or a non-transient `send_error`
//!   refuses it. The server deduplicates on the id. Transient refusals (`internal`,
//!   `unavailable`) are retried after `ack_timeout`; such a retry may land after later messages.
//! * Inbox: every sequence number is handed to the app at most once and in order
//!   ([`Event::Message`]); numbers at or below the cursor and already buffered ones are
//!   dropped. A missing range is requested with `sync`, again after `gap_timeout` without
//!   progress. The cursor is acknowledged cumulatively and sent in every `login`.
//! * Rooms: each room the device follows has a tracker with the same rules, keyed by room id
//!   (a `deliver` whose `to.kind` is `room` goes to that room's tracker; the `send_ack` of a
//!   message sent to a room marks its seq in the room's log). Gaps are asked for with
//!   `sync{room}`; cursors are acknowledged in `ack.rooms` (only rooms whose cursor moved;
//!   `ack.inbox` then repeats the inbox cursor the server already has) and all of them are sent
//!   in every `login` (`room_cursors`), persisted with [`PersistOp::RoomCursor`]. A room starts
//!   at the `head` of its `room_joined` (a new member gets no history unless the app asks with
//!   [`Session::sync_room`]); a room the device learns of from a message (the user joined on
//!   another device) starts just before that message. `history_truncated` moves the cursor to
//!   the oldest kept message and is reported ([`Event::HistoryTruncated`]). After `room_left`
//!   the cursor is forgotten ([`PersistOp::RoomForget`]).
//! * Draining nodes: `go_away` (or a close with `going_away`) ends the session on that node
//!   and reconnects at once, without backoff; the login then carries the cursors and the
//!   outbox is sent again, as after any reconnect, so nothing is lost. The driver lets the
//!   node cool down ([`Action::marks_node_failed`]) and picks another one with a
//!   [`NodeDirectory`] (module [`discovery`]: the node list from the registry, the choice,
//!   cool-downs and staleness, sans I/O like the session).
//! * Membership and presence requests: `join_room` / `leave_room` keep their order, are sent
//!   after `login_ok` when made offline, before the outbox's messages, and again after a
//!   reconnect until answered. Presence subscriptions are a set, sent again after every
//!   `login_ok`.

mod backoff;
pub mod discovery;
mod inbox;
pub mod model;
mod outbox;
mod rng;
mod session;
mod types;

#[cfg(test)]
mod tests;

pub use discovery::{
    parse_application, DiscoveredNode, DiscoveryConfig, DiscoveryError, NodeCache, NodeDirectory, NodeStatus,
    DEFAULT_REGISTRY_APP,
};
pub use session::{Session, GO_AWAY_WINDOW};
pub use types::{
    check_metadata, Action, Event, MetadataError, OutboxEntry, PersistOp, PersistedState, ResumeToken, SessionConfig,
    SessionState, METADATA_MAX_ENTRIES, METADATA_MAX_KEY, METADATA_MAX_TOTAL, METADATA_MAX_VALUE,
};

// The core's signatures use these protocol types; re-exported for convenience.
pub use model::{
    ConnectionState, DevicePresence, HistoryTruncated, KickReason, Kicked, Message, PendingMessage, Presence,
    RoomEvent, RoomEventKind, RoomJoined, SendAck, Target,
};
pub use tether_proto::{Address, CloseCode, Credential, Deliver, ErrorCode, Frame, LoginOk};

#[cfg(doc)]
use std::time::Instant;
