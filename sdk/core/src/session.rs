//! The session state machine.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

use tether_proto::{
    Ack, Address, AddressKind, CloseCode, Credential, Deliver, ErrorCode, ErrorFrame, Frame, HistoryTruncated,
    JoinRoom, KickReason, Kicked, LeaveRoom, Login, LoginError, LoginOk, Logout, Ping, RoomEvent, RoomEventKind,
    RoomJoined, Send, SendAck, SendError, SubscribePresence, Sync, UnsubscribePresence, PROTOCOL_VERSION,
};

use super::backoff::Backoff;
use super::inbox::{Inbox, Received};
use super::outbox::Outbox;
use super::rng::Rng;
use super::types::{Action, Event, OutboxEntry, PersistOp, PersistedState, ResumeToken, SessionConfig, SessionState};

/// Bytes of MessagePack framing a `send` body needs beyond its variable-length fields; a
/// generous bound used to skip exact size checks for messages far below the limit.
const SEND_OVERHEAD: usize = 256;

/// Most user ids in one `subscribe_presence` / `unsubscribe_presence` frame; longer lists are
/// split so that a frame stays far below the server's frame limit.
const PRESENCE_CHUNK: usize = 256;

/// A `go_away` (or a close with `going_away`) within this long of the previous one is not
/// followed by an immediate reconnect but by the usual backoff, which then keeps growing
/// across the logins in between: a node that keeps sending clients away (the only node left,
/// draining) is not hammered.
pub const GO_AWAY_WINDOW: Duration = Duration::from_secs(10);

/// A room membership request of the app, kept until the server answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RoomOp {
    /// `join_room`.
    Join(String),
    /// `leave_room`.
    Leave(String),
}

/// A fetch of room history below the room's cursor ([`Session::sync_room`]): messages in
/// `(last, until]` are handed to the app as they arrive, each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistoryFetch {
    /// Highest seq handed (or known to be gone) so far.
    last: u64,
    /// The room cursor when the fetch started: the end of the fetch.
    until: u64,
}

/// Which credential the current login presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoginCredential {
    /// The app's credential.
    App,
    /// The stored resume token.
    Resume,
}

/// A Tether client session, sans I/O.
///
/// It owns the connection lifecycle (connect, login, backoff, heartbeat, kick), the outbox
/// (every message is persisted, then retried with the same `client_msg_id` until the server
/// acknowledges it) and the inbox (each message handed to the app once, in sequence order, gaps
/// fetched with `sync`, cumulative acks). It performs no I/O and reads no clock: the driver
/// reports transport events and passes the current time, and drains the queues after each call
/// (see the [module docs](super) for the loop).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    credential: Credential,
    /// The app credential is known to be expired: log in with the resume token while it lasts.
    prefer_resume: bool,
    resume: Option<ResumeToken>,
    rng: Rng,
    state: SessionState,
    backoff: Backoff,
    outbox: Outbox,
    inbox: Inbox,
    user: Option<String>,
    login_credential: LoginCredential,
    login_deadline: Option<Instant>,
    /// Heartbeat interval in force on this connection.
    heartbeat_interval: Duration,
    /// Largest frame body the server accepts (from `login_ok`).
    max_frame: Option<u32>,
    last_tx: Option<Instant>,
    last_rx: Option<Instant>,
    /// A ping went out since the last frame was received.
    pinged_since_rx: bool,
    ping_nonce: u64,
    /// Whether the durable state has a cursor (it was restored with one or advanced since).
    has_cursor: bool,
    /// One tracker per room the device follows (keyed by room id); its presence means the
    /// durable state has a cursor for the room.
    rooms: BTreeMap<String, Inbox>,
    /// Open history fetches, by room.
    history: BTreeMap<String, HistoryFetch>,
    /// Join/leave requests in app order; the first `room_ops_in_flight` were transmitted on
    /// the current connection and await their answer.
    room_ops: VecDeque<RoomOp>,
    room_ops_in_flight: usize,
    /// Rooms left on this connection: late deliveries for them are dropped rather than
    /// starting a new cursor. Cleared at login and when the room is joined again.
    left_rooms: HashSet<String>,
    /// Users whose presence the app subscribed to; re-subscribed after every login.
    presence: BTreeSet<String>,
    /// A wall-clock reading (instant, ms since the Unix epoch) to judge token expiry by.
    wall_clock: Option<(Instant, u64)>,
    /// When the last `go_away` (or `going_away` close) arrived.
    last_go_away: Option<Instant>,
    transmits: VecDeque<Frame>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    persists: VecDeque<PersistOp>,
}

impl Session {
    /// A session in [`SessionState::Idle`] for `config`, logging in with `credential`,
    /// restored from `persisted`. `rng_seed` seeds the session's PRNG (backoff jitter, message
    /// ids, ping nonces): seed it from the OS in production so that message ids stay unique
    /// across restarts, and with a constant in tests.
    pub fn new(config: SessionConfig, credential: Credential, persisted: PersistedState, rng_seed: u64) -> Self {
        let cursor = persisted.inbox_cursor.unwrap_or(0);
        let rooms = persisted
            .room_cursors
            .iter()
            .map(|(room, c)| (room.clone(), Inbox::with_room(Some(room.clone()), *c, config.max_reorder)))
            .collect();
        Session {
            backoff: Backoff::new(config.backoff_base, config.backoff_max),
            inbox: Inbox::new(cursor, config.max_reorder),
            outbox: Outbox::from_entries(persisted.outbox),
            heartbeat_interval: config.heartbeat_interval,
            config,
            credential,
            prefer_resume: false,
            resume: persisted.resume,
            rng: Rng::new(rng_seed),
            state: SessionState::Idle,
            user: None,
            login_credential: LoginCredential::App,
            login_deadline: None,
            max_frame: None,
            last_tx: None,
            last_rx: None,
            pinged_since_rx: false,
            ping_nonce: 0,
            has_cursor: persisted.inbox_cursor.is_some(),
            rooms,
            history: BTreeMap::new(),
            room_ops: VecDeque::new(),
            room_ops_in_flight: 0,
            left_rooms: HashSet::new(),
            presence: BTreeSet::new(),
            wall_clock: None,
            last_go_away: None,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            persists: VecDeque::new(),
        }
    }

    // ------------------------------------------------------------------------------------
    // App calls
    // ------------------------------------------------------------------------------------

    /// Starts connecting (from `Idle`, `Kicked`, `AuthFailed` or `LoggedOut`; ignored
    /// otherwise): state `Connecting`, [`Action::Connect`]. The backoff starts afresh.
    pub fn start(&mut self, _now: Instant) {
        match self.state {
            SessionState::Idle | SessionState::Kicked(_) | SessionState::AuthFailed(_) | SessionState::LoggedOut => {
                self.backoff.reset();
                self.connect();
            }
            _ => {}
        }
    }

    /// Skips the rest of a backoff wait and connects now (e.g. the network just came back).
    /// Ignored unless the state is `Backoff`. The failure count is kept.
    pub fn reconnect_now(&mut self, _now: Instant) {
        if matches!(self.state, SessionState::Backoff { .. }) {
            self.connect();
        }
    }

    /// Replaces the app credential (e.g. a refreshed JWT). Used from the next login on; after
    /// an `AuthFailed`, call [`Session::start`] to try it.
    pub fn set_credential(&mut self, credential: Credential) {
        self.credential = credential;
        self.prefer_resume = false;
    }

    /// Tells the session the wall-clock time (ms since the Unix epoch) at `now`, so it can
    /// judge whether the resume token has expired. [`Session::send`] and `login_ok` (server
    /// time) also set it; without any reading the token is assumed valid and the server judges.
    pub fn set_wall_clock(&mut self, now: Instant, now_ms: u64) {
        self.wall_clock = Some((now, now_ms));
    }

    /// Queues a message and returns its new `client_msg_id` (128 random bits, hex).
    ///
    /// The message is persisted ([`PersistOp::OutboxAdd`]) before anything else about it is
    /// queued, and transmitted when the session is online and fewer than `max_in_flight`
    /// messages are in flight. It stays in the outbox, across reconnects and restarts, until
    /// the server acknowledges or refuses it. `now_ms` is the wall-clock time, recorded as
    /// `created_ms`.
    pub fn send(&mut self, to: Address, content_type: String, payload: Vec<u8>, now: Instant, now_ms: u64) -> String {
        let client_msg_id = loop {
            let id = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
            if !self.outbox.contains(&id) {
                break id;
            }
        };
        self.send_with_id(client_msg_id.clone(), to, content_type, payload, now, now_ms);
        client_msg_id
    }

    /// [`Session::send`] with a `client_msg_id` the caller chose (unique per sender, 1..=128
    /// bytes; a driver that must hand the id out before the session sees the message uses
    /// this). An id already in the outbox is not queued twice.
    pub fn send_with_id(
        &mut self,
        client_msg_id: String,
        to: Address,
        content_type: String,
        payload: Vec<u8>,
        now: Instant,
        now_ms: u64,
    ) {
        self.set_wall_clock(now, now_ms);
        if self.outbox.contains(&client_msg_id) {
            return;
        }
        let entry = OutboxEntry { client_msg_id: client_msg_id.clone(), to, content_type, payload, created_ms: now_ms };
        self.persists.push_back(PersistOp::OutboxAdd(entry.clone()));
        self.outbox.push(entry);
        if self.state == SessionState::Online {
            self.flush_outbox(now);
        }
    }

    /// The messages not acknowledged yet, oldest first (for local echo, e.g. after an app
    /// restart restored them from the journal).
    pub fn outbox(&self) -> Vec<OutboxEntry> {
        self.outbox.entries().cloned().collect()
    }

    /// Cancels a message that is still in the outbox: it leaves the outbox
    /// ([`PersistOp::OutboxRemove`]) and is not sent again, and [`Event::SendCancelled`] says
    /// so. Returns `None` when it is not in the outbox (already acknowledged or refused, or
    /// unknown), else whether it may have reached the server anyway (it was transmitted, or
    /// restored from the journal): a cancel stops retries, it cannot take back a message the
    /// server already stored.
    pub fn cancel(&mut self, client_msg_id: &str) -> Option<bool> {
        let (_, maybe_sent) = self.outbox.take(client_msg_id)?;
        self.persist(PersistOp::OutboxRemove(client_msg_id.to_owned()));
        self.events
            .push_back(Event::SendCancelled { client_msg_id: client_msg_id.to_owned(), maybe_delivered: maybe_sent });
        Some(maybe_sent)
    }

    /// Asks to become a member of `room`. Transmitted at once when online, else after the next
    /// `login_ok` (join and leave requests keep their order, and go out before the outbox's
    /// messages). A request the server has not answered when the connection drops is sent
    /// again after the next login. The answer is [`Event::RoomJoined`] (the room's cursor
    /// starts at its head unless the device already has one) or [`Event::RoomJoinFailed`].
    /// Requests are not persisted: after an app restart the app asks again if it still wants.
    pub fn join_room(&mut self, room: impl Into<String>, now: Instant) {
        self.room_ops.push_back(RoomOp::Join(room.into()));
        if self.state == SessionState::Online {
            self.flush_room_ops(now);
        }
    }

    /// Asks to stop being a member of `room` (queued and retried like
    /// [`Session::join_room`]). The answer is [`Event::RoomLeft`]; the room's cursor is then
    /// forgotten ([`PersistOp::RoomForget`]).
    pub fn leave_room(&mut self, room: impl Into<String>, now: Instant) {
        self.room_ops.push_back(RoomOp::Leave(room.into()));
        if self.state == SessionState::Online {
            self.flush_room_ops(now);
        }
    }

    /// Subscribes to the presence of `users`: the server answers with their current presence
    /// and again on every change ([`Event::Presence`]). The subscriptions are kept as a set and
    /// sent again after every login (the server keeps them per connection only).
    pub fn subscribe_presence(&mut self, users: Vec<String>, now: Instant) {
        let users: Vec<String> =
            users.into_iter().filter(|u| !u.is_empty()).collect::<BTreeSet<_>>().into_iter().collect();
        self.presence.extend(users.iter().cloned());
        if self.state == SessionState::Online {
            self.transmit_presence(users, true, now);
        }
    }

    /// Ends presence subscriptions for `users` (those not subscribed are ignored).
    pub fn unsubscribe_presence(&mut self, users: Vec<String>, now: Instant) {
        let removed: Vec<String> =
            users.into_iter().collect::<BTreeSet<_>>().into_iter().filter(|u| self.presence.remove(u)).collect();
        if self.state == SessionState::Online {
            self.transmit_presence(removed, false, now);
        }
    }

    /// Asks for the messages of `room` after `after`.
    ///
    /// * `after` below the room's cursor fetches history: the messages `after + 1 ..= cursor`
    ///   (the device's own included) are handed to the app as [`Event::Message`] as they
    ///   arrive, each once, even though they precede messages already handed over (the app
    ///   orders by `seq`). Past retention,
    ///   [`Event::HistoryTruncated`] says where the kept history starts. One fetch per room at
    ///   a time: a new call replaces an unfinished one. An unfinished fetch is asked for again
    ///   after a reconnect.
    /// * `after` at or above the cursor asks for what follows the cursor (nothing is skipped).
    /// * For a room the device has no cursor for yet, the cursor starts at `after`.
    pub fn sync_room(&mut self, room: impl Into<String>, after: u64, now: Instant) {
        let room = room.into();
        self.left_rooms.remove(&room);
        let online = self.state == SessionState::Online;
        let cursor = match self.rooms.get(&room) {
            Some(tracker) => tracker.cursor(),
            None => {
                self.ensure_room(&room, after);
                after
            }
        };
        let sync = if after < cursor {
            self.history.insert(room.clone(), HistoryFetch { last: after, until: cursor });
            Sync { after, until: Some(cursor), room: Some(room) }
        } else {
            Sync { after: cursor, until: None, room: Some(room) }
        };
        if online {
            self.transmit(Frame::Sync(sync), now);
        }
    }

    /// Ends the session on purpose: acks what was handed to the app, transmits `logout`, then
    /// [`Action::Disconnect`] with [`CloseCode::Normal`]; state `LoggedOut`, no reconnect. The
    /// outbox and cursor stay persisted for a later [`Session::start`].
    pub fn close(&mut self, now: Instant) {
        if self.state == SessionState::LoggedOut {
            return;
        }
        self.leave_politely(now);
        self.set_state(SessionState::LoggedOut);
    }

    /// Leaves whatever connection there is on purpose: when online, acks what was handed to
    /// the app; when logged in or logging in, transmits `logout`; when connected or connecting,
    /// [`Action::Disconnect`] with [`CloseCode::Normal`]. The caller sets the new state.
    fn leave_politely(&mut self, now: Instant) {
        let was = self.state.clone();
        match was {
            SessionState::Online | SessionState::LoggingIn => {
                let ack = (was == SessionState::Online).then(|| self.take_acks(now, true)).flatten();
                self.go_offline();
                if let Some(ack) = ack {
                    self.transmit(Frame::Ack(ack), now);
                }
                self.transmit(Frame::Logout(Logout {}), now);
                self.disconnect(CloseCode::Normal);
            }
            SessionState::Connecting => {
                self.go_offline();
                self.disconnect(CloseCode::Normal);
            }
            _ => self.go_offline(),
        }
    }

    /// The app went to the background: acks what was handed to the app, transmits `logout`
    /// and closes the connection (a connection attempt or a backoff wait is dropped); state
    /// `Paused`. No heartbeat, no reconnect; [`Session::send`] still queues (and persists) into
    /// the outbox. Ignored in `Kicked`, `AuthFailed`, `LoggedOut` and `Paused`.
    pub fn pause(&mut self, now: Instant) {
        if matches!(
            self.state,
            SessionState::Kicked(_) | SessionState::AuthFailed(_) | SessionState::LoggedOut | SessionState::Paused
        ) {
            return;
        }
        self.leave_politely(now);
        self.set_state(SessionState::Paused);
    }

    /// The app is in the foreground again: connects at once (the backoff starts afresh), logs
    /// in with the cursors, gets what arrived meanwhile and sends the outbox. Ignored unless
    /// the state is `Paused`.
    pub fn resume(&mut self, _now: Instant) {
        if self.state == SessionState::Paused {
            self.backoff.reset();
            self.connect();
        }
    }

    // ------------------------------------------------------------------------------------
    // Transport events
    // ------------------------------------------------------------------------------------

    /// The transport asked for by [`Action::Connect`] is up: transmits `login` and waits for
    /// the answer (state `LoggingIn`). Ignored unless the state is `Connecting`.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.state != SessionState::Connecting {
            return;
        }
        let credential = self.choose_credential(now);
        self.inbox.on_login_sent();
        for tracker in self.rooms.values_mut() {
            tracker.on_login_sent();
        }
        let room_cursors = (!self.rooms.is_empty()).then(|| self.room_cursors());
        let metadata = (!self.config.metadata.is_empty())
            .then(|| self.config.metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        self.last_rx = Some(now);
        self.pinged_since_rx = false;
        self.login_deadline = Some(now + self.config.login_timeout);
        self.transmit(
            Frame::Login(Login {
                version: PROTOCOL_VERSION,
                credential,
                device_type: self.config.device_type.clone(),
                device_id: self.config.device_id.clone(),
                inbox_cursor: Some(self.inbox.cursor()),
                client: self.config.client_name.clone(),
                room_cursors,
                metadata,
            }),
            now,
        );
        self.set_state(SessionState::LoggingIn);
    }

    /// The connection attempt failed: back off. Ignored unless the state is `Connecting`.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if self.state == SessionState::Connecting {
            self.enter_backoff(now);
        }
    }

    /// The transport is gone; `close` is the code the server closed with, if known. Reconnects
    /// with backoff, except after `replaced` or `kicked` (state `Kicked`, even if the `kicked`
    /// frame was lost) and after `going_away` (the node is draining and its `go_away` frame was
    /// lost or not read: reconnects at once, as after [`Frame::GoAway`]). Ignored unless the
    /// state is `LoggingIn` or `Online`.
    pub fn handle_disconnected(&mut self, now: Instant, close: Option<CloseCode>) {
        if !matches!(self.state, SessionState::LoggingIn | SessionState::Online) {
            return;
        }
        self.go_offline();
        if close == Some(CloseCode::GoingAway) {
            self.move_to_another_node(now);
            return;
        }
        let reason = match close {
            Some(CloseCode::Replaced) => Some(KickReason::Replaced),
            Some(CloseCode::Kicked) => Some(KickReason::Admin),
            _ => None,
        };
        match reason {
            Some(reason) => {
                self.events.push_back(Event::Kicked(
                    Kicked { reason, message: "connection closed by the server".to_owned() }.into(),
                ));
                self.set_state(SessionState::Kicked(reason));
            }
            None => self.enter_backoff(now),
        }
    }

    /// A frame arrived from the server. Frames that make no sense in the current state are
    /// ignored.
    ///
    /// [`Frame::GoAway`] (the node is draining, in `LoggingIn` or `Online`) ends the session on
    /// this node: what was handed to the app is acknowledged, the connection is closed
    /// ([`Action::Disconnect`] with [`CloseCode::GoingAway`], which tells the driver to let the
    /// node cool down, see [`Action::marks_node_failed`]) and the session reconnects at once,
    /// without backoff ([`Action::Connect`], state `Connecting`), then logs in as after any
    /// reconnect: its cursors, then its unacknowledged messages again, in order. Within
    /// [`GO_AWAY_WINDOW`] of the previous `go_away` it backs off instead.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let online = match self.state {
            SessionState::Online => true,
            SessionState::LoggingIn => false,
            _ => return,
        };
        self.last_rx = Some(now);
        self.pinged_since_rx = false;
        match frame {
            Frame::LoginOk(ok) if !online => self.on_login_ok(ok, now),
            Frame::LoginError(err) if !online => self.on_login_error(err, now),
            Frame::SendAck(ack) if online => self.on_send_ack(ack, now),
            Frame::SendError(err) if online => self.on_send_error(err, now),
            Frame::Deliver(msg) if online => self.on_deliver(msg, now),
            Frame::RoomJoined(joined) if online => self.on_room_joined(joined),
            Frame::RoomLeft(left) if online => self.on_room_left(left.room),
            Frame::RoomEvent(event) if online => self.on_room_event(event),
            // A late frame for a user unsubscribed meanwhile falls through and is dropped.
            Frame::Presence(p) if online && self.presence.contains(&p.user) => {
                self.events.push_back(Event::Presence(p.into()));
            }
            Frame::HistoryTruncated(t) if online => self.on_history_truncated(t, now),
            Frame::Error(err) if online => self.on_error(err),
            Frame::GoAway(_) => self.on_go_away(online, now),
            Frame::Kicked(kicked) => {
                let reason = kicked.reason;
                self.go_offline();
                self.events.push_back(Event::Kicked(kicked.into()));
                self.set_state(SessionState::Kicked(reason));
            }
            // Pong only proves liveness (recorded above); error frames are informational, a
            // fatal one is followed by the server closing the connection.
            _ => {}
        }
    }

    /// Runs whatever is due at `now`: reconnect after backoff, login timeout, dead-connection
    /// detection, resends, delayed acks, gap syncs (inbox and rooms), pings. Call it when
    /// [`Session::poll_timeout`] is reached (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            SessionState::Backoff { retry_at, .. } if now >= retry_at => self.connect(),
            SessionState::LoggingIn if self.login_deadline.is_some_and(|d| now >= d) => {
                self.go_offline();
                self.disconnect(CloseCode::ProtocolError);
                self.enter_backoff(now);
            }
            SessionState::Online => {
                if self.dead_at().is_some_and(|d| now >= d) {
                    self.go_offline();
                    self.disconnect(CloseCode::IdleTimeout);
                    self.enter_backoff(now);
                    return;
                }
                self.flush_outbox(now);
                self.flush_acks(now);
                let gap = self.config.gap_timeout;
                let syncs: Vec<Sync> = std::iter::once(&mut self.inbox)
                    .chain(self.rooms.values_mut())
                    .filter_map(|tracker| tracker.poll_gap(now, gap))
                    .collect();
                for sync in syncs {
                    self.transmit(Frame::Sync(sync), now);
                }
                if self.ping_at().is_some_and(|d| now >= d) {
                    self.ping_nonce = self.rng.next_u64();
                    self.transmit(Frame::Ping(Ping { nonce: self.ping_nonce }), now);
                    self.pinged_since_rx = true;
                }
            }
            _ => {}
        }
    }

    // ------------------------------------------------------------------------------------
    // Outputs
    // ------------------------------------------------------------------------------------

    /// The next frame to write to the current connection.
    pub fn poll_transmit(&mut self) -> Option<Frame> {
        self.transmits.pop_front()
    }

    /// The next thing to do to the transport.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next change to make durable. Apply all of them before writing the frames from
    /// [`Session::poll_transmit`].
    pub fn poll_persist(&mut self) -> Option<PersistOp> {
        self.persists.pop_front()
    }

    /// The earliest time [`Session::handle_timeout`] must be called, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            SessionState::Backoff { retry_at, .. } => Some(retry_at),
            SessionState::LoggingIn => self.login_deadline,
            SessionState::Online => [
                self.dead_at(),
                self.ping_at(),
                self.outbox.next_deadline(),
                self.inbox.ack_deadline(),
                self.inbox.gap_deadline(),
            ]
            .into_iter()
            .chain(self.rooms.values().flat_map(|t| [t.ack_deadline(), t.gap_deadline()]))
            .flatten()
            .min(),
            _ => None,
        }
    }

    // ------------------------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------------------------

    /// The connection state.
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The authenticated user, once a login succeeded.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Highest contiguous inbox sequence number handed to the app.
    pub fn inbox_cursor(&self) -> u64 {
        self.inbox.cursor()
    }

    /// Number of messages waiting for acknowledgement.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// Highest contiguous sequence number of `room` handed to the app, if the device follows
    /// the room.
    pub fn room_cursor(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).map(Inbox::cursor)
    }

    /// The cursor of every room the device follows (what the next `login` carries).
    pub fn room_cursors(&self) -> BTreeMap<String, u64> {
        self.rooms.iter().map(|(room, t)| (room.clone(), t.cursor())).collect()
    }

    /// The users whose presence the app subscribed to.
    pub fn presence_subscriptions(&self) -> Vec<String> {
        self.presence.iter().cloned().collect()
    }

    /// The session's durable state as it stands (what replaying every [`PersistOp`] polled so
    /// far onto the initial [`PersistedState`] gives, plus any not yet polled).
    pub fn persisted_state(&self) -> PersistedState {
        PersistedState {
            outbox: self.outbox.entries().cloned().collect(),
            inbox_cursor: self.has_cursor.then(|| self.inbox.cursor()),
            resume: self.resume.clone(),
            room_cursors: self.room_cursors(),
        }
    }

    // ------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------

    fn set_state(&mut self, state: SessionState) {
        if self.state != state {
            self.state = state.clone();
            self.events.push_back(Event::State((&state).into()));
        }
    }

    fn connect(&mut self) {
        self.set_state(SessionState::Connecting);
        self.actions.push_back(Action::Connect);
    }

    fn disconnect(&mut self, code: CloseCode) {
        self.actions.push_back(Action::Disconnect { code });
    }

    fn enter_backoff(&mut self, now: Instant) {
        let (attempt, delay) = self.backoff.next_delay(&mut self.rng);
        self.set_state(SessionState::Backoff { attempt, retry_at: now + delay, delay });
    }

    /// Forgets everything about the current connection. Unsent frames are dropped: the outbox
    /// resends its messages after the next login, and the login carries the cursor.
    fn go_offline(&mut self) {
        self.transmits.clear();
        self.outbox.reset();
        self.inbox.on_offline();
        for tracker in self.rooms.values_mut() {
            tracker.on_offline();
        }
        self.room_ops_in_flight = 0;
        self.login_deadline = None;
        self.last_tx = None;
        self.last_rx = None;
        self.pinged_since_rx = false;
        self.max_frame = None;
    }

    fn transmit(&mut self, frame: Frame, now: Instant) {
        self.last_tx = Some(now);
        self.transmits.push_back(frame);
    }

    fn persist(&mut self, op: PersistOp) {
        // Consecutive moves of the same cursor collapse into the last one.
        match (&op, self.persists.back_mut()) {
            (PersistOp::Cursor(c), Some(PersistOp::Cursor(last))) => *last = *c,
            (PersistOp::RoomCursor { room, seq }, Some(PersistOp::RoomCursor { room: last_room, seq: last }))
                if room == last_room =>
            {
                *last = *seq
            }
            _ => self.persists.push_back(op),
        }
    }

    fn wall_ms(&self, now: Instant) -> Option<u64> {
        let (at, ms) = self.wall_clock?;
        Some(if now >= at {
            let elapsed = u64::try_from(now.duration_since(at).as_millis()).unwrap_or(u64::MAX);
            ms.saturating_add(elapsed)
        } else {
            let before = u64::try_from(at.duration_since(now).as_millis()).unwrap_or(u64::MAX);
            ms.saturating_sub(before)
        })
    }

    /// The resume token, if it is usable at `now`; an expired one is dropped.
    fn usable_resume(&mut self, now: Instant) -> Option<String> {
        let token = self.resume.as_ref()?;
        if self.wall_ms(now).is_some_and(|ms| ms >= token.expires_ms) {
            self.set_resume(None);
            return None;
        }
        Some(token.token.clone())
    }

    fn set_resume(&mut self, token: Option<ResumeToken>) {
        if self.resume != token {
            self.resume = token.clone();
            self.persist(PersistOp::Resume(token));
        }
    }

    /// The credential for the next login: the resume token after a ticket login (a ticket is
    /// single-use) or once the app's JWT is known to be expired; the app's credential otherwise.
    fn choose_credential(&mut self, now: Instant) -> Credential {
        let wants_resume = self.prefer_resume || matches!(self.credential, Credential::Ticket(_));
        if wants_resume {
            if let Some(token) = self.usable_resume(now) {
                self.login_credential = LoginCredential::Resume;
                return Credential::Resume(token);
            }
        }
        self.prefer_resume = false;
        self.login_credential = LoginCredential::App;
        self.credential.clone()
    }

    fn heartbeat_for(&self, ok: &LoginOk) -> Duration {
        let interval = self.config.heartbeat_interval;
        if ok.idle_timeout_ms == 0 {
            return interval;
        }
        interval.min(Duration::from_millis(ok.idle_timeout_ms) / 2)
    }

    /// When the connection counts as dead for lack of anything received.
    fn dead_at(&self) -> Option<Instant> {
        Some(self.last_rx? + self.heartbeat_interval + self.config.heartbeat_timeout)
    }

    /// When a ping is due: after `heartbeat_interval` without transmitting, or without
    /// receiving (once per silence).
    fn ping_at(&self) -> Option<Instant> {
        let tx = self.last_tx.map(|t| t + self.heartbeat_interval);
        let rx = if self.pinged_since_rx { None } else { self.last_rx.map(|t| t + self.heartbeat_interval) };
        tx.into_iter().chain(rx).min()
    }

    fn on_login_ok(&mut self, ok: LoginOk, now: Instant) {
        self.login_deadline = None;
        if !self.in_go_away_window(now) {
            self.backoff.reset();
        }
        self.user = Some(ok.user.clone());
        self.heartbeat_interval = self.heartbeat_for(&ok);
        self.max_frame = Some(ok.max_frame);
        self.set_wall_clock(now, ok.server_time_ms);
        if let Some(token) = ok.resume_token.clone() {
            self.set_resume(Some(ResumeToken { token, expires_ms: ok.resume_expires_ms.unwrap_or(u64::MAX) }));
        }
        self.inbox.on_login_ok(ok.inbox_head, now, self.config.gap_timeout);
        for tracker in self.rooms.values_mut() {
            tracker.on_login_ok_room(now, self.config.gap_timeout);
        }
        // A new connection carries no late deliveries of rooms left on the last one.
        self.left_rooms.clear();
        self.set_state(SessionState::Online);
        self.events.push_back(Event::LoggedIn { user: ok.user, session_id: ok.session_id });
        // Membership first, so that a queued message to a room just joined is accepted.
        self.flush_room_ops(now);
        let users: Vec<String> = self.presence.iter().cloned().collect();
        self.transmit_presence(users, true, now);
        let fetches: Vec<Sync> = self
            .history
            .iter()
            .map(|(room, h)| Sync { after: h.last, until: Some(h.until), room: Some(room.clone()) })
            .collect();
        for sync in fetches {
            self.transmit(Frame::Sync(sync), now);
        }
        self.flush_outbox(now);
    }

    /// Whether a `go_away` arrived less than [`GO_AWAY_WINDOW`] before `now`.
    fn in_go_away_window(&self, now: Instant) -> bool {
        self.last_go_away.is_some_and(|at| now < at + GO_AWAY_WINDOW)
    }

    /// The node is draining: ack what the app has, leave, reconnect at once.
    fn on_go_away(&mut self, online: bool, now: Instant) {
        let ack = if online { self.take_acks(now, true) } else { None };
        self.go_offline();
        if let Some(ack) = ack {
            self.transmit(Frame::Ack(ack), now);
        }
        self.disconnect(CloseCode::GoingAway);
        self.move_to_another_node(now);
    }

    /// After `go_away`: connect again at once (the driver picks another node), or back off
    /// when the previous `go_away` was recent.
    fn move_to_another_node(&mut self, now: Instant) {
        let rapid = self.in_go_away_window(now);
        self.last_go_away = Some(now);
        if rapid {
            self.enter_backoff(now);
        } else {
            self.connect();
        }
    }

    fn on_login_error(&mut self, err: LoginError, now: Instant) {
        self.go_offline();
        // The server closes after login_error; close our side too so that the driver never
        // holds two connections.
        self.disconnect(CloseCode::Normal);
        let auth = matches!(
            err.code,
            ErrorCode::InvalidToken
                | ErrorCode::BadSignature
                | ErrorCode::TokenExpired
                | ErrorCode::TicketInvalid
                | ErrorCode::TicketExpired
        );
        if auth && self.login_credential == LoginCredential::Resume {
            // The resume token is no good: forget it and retry at once with the app's credential.
            self.prefer_resume = false;
            self.set_resume(None);
            self.connect();
        } else if err.code == ErrorCode::TokenExpired
            && matches!(self.credential, Credential::Token(_))
            && self.usable_resume(now).is_some()
        {
            // The app's JWT expired but this device holds a resume token: use it.
            self.prefer_resume = true;
            self.connect();
        } else if auth || matches!(err.code, ErrorCode::UnsupportedVersion | ErrorCode::InvalidField) {
            // Retrying the same login would be refused again (a bad credential, version, or
            // field such as oversized metadata).
            self.events.push_back(Event::LoginFailed { code: err.code, message: err.message });
            self.set_state(SessionState::AuthFailed(err.code));
        } else {
            self.enter_backoff(now);
        }
    }

    fn on_send_ack(&mut self, ack: SendAck, now: Instant) {
        let Some(entry) = self.outbox.remove(&ack.client_msg_id) else {
            return; // duplicate or unknown
        };
        self.persist(PersistOp::OutboxRemove(ack.client_msg_id.clone()));
        let seq = ack.seq;
        self.events.push_back(Event::SendAcked(ack.into()));
        if seq > 0 {
            // The seq is in the room's log for a room message, in our inbox otherwise.
            let room = (entry.to.kind == AddressKind::Room).then_some(entry.to.id);
            self.receive(room.as_deref(), seq, None, now);
        }
        self.flush_outbox(now);
    }

    fn on_send_error(&mut self, err: SendError, now: Instant) {
        match err.code {
            ErrorCode::Internal | ErrorCode::Unavailable | ErrorCode::RateLimited => {
                self.outbox.retry_at(&err.client_msg_id, now + self.config.ack_timeout);
            }
            code => {
                if self.outbox.remove(&err.client_msg_id).is_some() {
                    self.persist(PersistOp::OutboxRemove(err.client_msg_id.clone()));
                    self.events.push_back(Event::SendFailed {
                        client_msg_id: err.client_msg_id,
                        code,
                        message: err.message,
                    });
                    self.flush_outbox(now);
                }
            }
        }
    }

    fn on_deliver(&mut self, msg: Deliver, now: Instant) {
        let room = (msg.to.kind == AddressKind::Room).then(|| msg.to.id.clone());
        let msg = match &room {
            Some(room) => match self.take_history(room, msg) {
                Some(msg) => msg,
                None => return,
            },
            None => msg,
        };
        let room = room.as_deref();
        let own = self.user.as_deref() == Some(msg.from.as_str()) && msg.from_device == self.config.device_id;
        if !own {
            let seq = msg.seq;
            self.receive(room, seq, Some(msg), now);
            return;
        }
        // Our own message came back (a backlog after a lost send_ack): it completes the send.
        if self.outbox.remove(&msg.client_msg_id).is_some() {
            self.persist(PersistOp::OutboxRemove(msg.client_msg_id.clone()));
            self.events.push_back(Event::SendAcked(
                SendAck {
                    client_msg_id: msg.client_msg_id,
                    msg_id: msg.msg_id,
                    seq: msg.seq,
                    ts: msg.ts,
                    duplicate: true,
                }
                .into(),
            ));
            self.flush_outbox(now);
        }
        self.receive(room, msg.seq, None, now);
    }

    /// Hands a room message to an open history fetch if it belongs to it (`None`); gives it
    /// back otherwise.
    fn take_history(&mut self, room: &str, msg: Deliver) -> Option<Deliver> {
        let Some(fetch) = self.history.get_mut(room) else {
            return Some(msg);
        };
        if msg.seq <= fetch.last || msg.seq > fetch.until {
            return Some(msg);
        }
        fetch.last = msg.seq;
        if fetch.last >= fetch.until {
            self.history.remove(room);
        }
        self.events.push_back(Event::Message(msg.into()));
        None
    }

    /// Starts following `room` at `cursor` unless the device already does.
    fn ensure_room(&mut self, room: &str, cursor: u64) {
        if !self.rooms.contains_key(room) {
            self.rooms
                .insert(room.to_owned(), Inbox::with_room(Some(room.to_owned()), cursor, self.config.max_reorder));
            self.persist(PersistOp::RoomCursor { room: room.to_owned(), seq: cursor });
        }
    }

    /// Stops following `room`: its cursor and any history fetch are forgotten. With
    /// `drop_late`, deliveries for the room still under way on this connection are dropped
    /// rather than adopting the room again.
    fn forget_room(&mut self, room: &str, drop_late: bool) {
        self.history.remove(room);
        if drop_late {
            self.left_rooms.insert(room.to_owned());
        }
        if self.rooms.remove(room).is_some() {
            self.persist(PersistOp::RoomForget(room.to_owned()));
        }
    }

    /// Feeds one sequence number of the inbox (`room: None`) or of a room to its tracker and
    /// emits what follows. A room the device does not follow yet (joined on another device,
    /// or by the app's backend) is adopted: its cursor starts just before this message.
    fn receive(&mut self, room: Option<&str>, seq: u64, item: Option<Deliver>, now: Instant) {
        let gap = self.config.gap_timeout;
        let received = match room {
            None => self.inbox.receive(seq, item, now, gap),
            Some(room) => {
                if self.left_rooms.contains(room) {
                    return;
                }
                self.ensure_room(room, seq.saturating_sub(1));
                match self.rooms.get_mut(room) {
                    Some(tracker) => tracker.receive(seq, item, now, gap),
                    None => return,
                }
            }
        };
        self.after_receive(room, received, now);
    }

    /// Emits what a tracker produced: messages for the app, a gap `sync`, the new cursor
    /// (persisted, then acknowledged when due).
    fn after_receive(&mut self, room: Option<&str>, received: Received, now: Instant) {
        let Received { handed, advanced, sync } = received;
        self.events.extend(handed.into_iter().map(|d| Event::Message(d.into())));
        if let Some(sync) = sync {
            self.transmit(Frame::Sync(sync), now);
        }
        if !advanced {
            return;
        }
        let delay = self.config.ack_delay;
        match room {
            None => {
                self.has_cursor = true;
                self.persist(PersistOp::Cursor(self.inbox.cursor()));
                self.inbox.note_advance(now, delay);
            }
            Some(room) => {
                let Some(tracker) = self.rooms.get_mut(room) else {
                    return;
                };
                tracker.note_advance(now, delay);
                let seq = tracker.cursor();
                self.persist(PersistOp::RoomCursor { room: room.to_owned(), seq });
            }
        }
        self.flush_acks(now);
    }

    /// The cumulative `ack` to transmit, if any tracker's ack is due (or `force`): once one is,
    /// every tracker that advanced rides along. `inbox` repeats what the server knows when only
    /// rooms moved; `rooms` lists only rooms whose cursor moved.
    fn take_acks(&mut self, now: Instant, force: bool) -> Option<Ack> {
        let every = self.config.ack_every;
        let due =
            force || self.inbox.ack_due(now, every) || self.rooms.values().any(|tracker| tracker.ack_due(now, every));
        if !due {
            return None;
        }
        let inbox = self.inbox.take_ack(now, every, true);
        let rooms: BTreeMap<String, u64> = self
            .rooms
            .iter_mut()
            .filter_map(|(room, tracker)| tracker.take_ack(now, every, true).map(|c| (room.clone(), c)))
            .collect();
        if inbox.is_none() && rooms.is_empty() {
            return None;
        }
        Some(Ack {
            inbox: inbox.unwrap_or_else(|| self.inbox.last_acked()),
            rooms: (!rooms.is_empty()).then_some(rooms),
        })
    }

    fn flush_acks(&mut self, now: Instant) {
        if let Some(ack) = self.take_acks(now, false) {
            self.transmit(Frame::Ack(ack), now);
        }
    }

    /// Transmits the join/leave requests not yet sent on this connection, in order.
    fn flush_room_ops(&mut self, now: Instant) {
        let fresh: Vec<RoomOp> = self.room_ops.iter().skip(self.room_ops_in_flight).cloned().collect();
        self.room_ops_in_flight = self.room_ops.len();
        for op in fresh {
            let frame = match op {
                RoomOp::Join(room) => {
                    self.left_rooms.remove(&room);
                    Frame::JoinRoom(JoinRoom { room })
                }
                RoomOp::Leave(room) => Frame::LeaveRoom(LeaveRoom { room }),
            };
            self.transmit(frame, now);
        }
    }

    /// Removes the first in-flight request equal to `op`, if any.
    fn complete_room_op(&mut self, op: &RoomOp) {
        if let Some(i) = self.room_ops.iter().take(self.room_ops_in_flight).position(|o| o == op) {
            self.room_ops.remove(i);
            self.room_ops_in_flight -= 1;
        }
    }

    fn transmit_presence(&mut self, users: Vec<String>, subscribe: bool, now: Instant) {
        for chunk in users.chunks(PRESENCE_CHUNK) {
            let users = chunk.to_vec();
            let frame = if subscribe {
                Frame::SubscribePresence(SubscribePresence { users })
            } else {
                Frame::UnsubscribePresence(UnsubscribePresence { users })
            };
            self.transmit(frame, now);
        }
    }

    fn on_room_joined(&mut self, joined: RoomJoined) {
        self.complete_room_op(&RoomOp::Join(joined.room.clone()));
        self.left_rooms.remove(&joined.room);
        // A new member starts at the head; a device that already follows the room keeps its
        // cursor (and gets what it missed).
        self.ensure_room(&joined.room, joined.head);
        self.events.push_back(Event::RoomJoined(joined.into()));
    }

    fn on_room_left(&mut self, room: String) {
        self.complete_room_op(&RoomOp::Leave(room.clone()));
        self.forget_room(&room, true);
        self.events.push_back(Event::RoomLeft(room));
    }

    fn on_room_event(&mut self, event: RoomEvent) {
        if self.user.as_deref() == Some(event.user.as_str()) {
            match event.kind {
                // The user left (on another device): stop following the room. Late deliveries
                // are not blocked: this event travels apart from the answers to this device's
                // own requests and may follow a `room_joined` of a quick leave-and-join.
                RoomEventKind::Quit => self.forget_room(&event.room, false),
                // The user joined (maybe on another device): its messages are welcome again.
                RoomEventKind::Enter => {
                    self.left_rooms.remove(&event.room);
                }
                _ => {}
            }
        }
        self.events.push_back(Event::RoomEvent(event.into()));
    }

    fn on_history_truncated(&mut self, t: HistoryTruncated, now: Instant) {
        if self.left_rooms.contains(&t.room) {
            return;
        }
        let kept_from = t.first_seq.saturating_sub(1);
        if let Some(fetch) = self.history.get_mut(&t.room) {
            fetch.last = fetch.last.max(kept_from);
            if fetch.last >= fetch.until {
                self.history.remove(&t.room);
            }
        }
        let room = t.room.clone();
        self.events.push_back(Event::HistoryTruncated(t.into()));
        self.ensure_room(&room, kept_from);
        let Some(tracker) = self.rooms.get_mut(&room) else {
            return;
        };
        let skipped = tracker.skip_to(kept_from, now, self.config.gap_timeout);
        self.after_receive(Some(&room), skipped, now);
    }

    /// A non-fatal `error` about a room answers the oldest join/leave request in flight (the
    /// server handles a connection's frames in order). A refused leave means the user is not a
    /// member anyway.
    fn on_error(&mut self, err: ErrorFrame) {
        let about_a_room = matches!(err.code, ErrorCode::NoSuchRoom | ErrorCode::NotAMember | ErrorCode::InvalidField);
        if err.fatal || !about_a_room || self.room_ops_in_flight == 0 {
            return;
        }
        let Some(op) = self.room_ops.pop_front() else {
            return;
        };
        self.room_ops_in_flight -= 1;
        match op {
            RoomOp::Join(room) => {
                self.events.push_back(Event::RoomJoinFailed { room, code: err.code, message: err.message })
            }
            RoomOp::Leave(room) => {
                self.forget_room(&room, true);
                self.events.push_back(Event::RoomLeft(room));
            }
        }
    }

    /// Transmits what the outbox has due: overdue resends, then new messages within the
    /// window. A message larger than the server accepts is refused locally
    /// ([`ErrorCode::FrameTooLarge`]) instead of breaking the connection over and over.
    fn flush_outbox(&mut self, now: Instant) {
        loop {
            let due = self.outbox.poll_sends(now, self.config.ack_timeout, self.config.max_in_flight);
            if due.is_empty() {
                return;
            }
            let mut refused = false;
            for entry in due {
                let send = Send {
                    client_msg_id: entry.client_msg_id,
                    to: entry.to,
                    content_type: entry.content_type,
                    payload: entry.payload,
                };
                match self.too_large(&send) {
                    None => self.transmit(Frame::Send(send), now),
                    Some(limit) => {
                        self.outbox.remove(&send.client_msg_id);
                        self.persist(PersistOp::OutboxRemove(send.client_msg_id.clone()));
                        self.events.push_back(Event::SendFailed {
                            client_msg_id: send.client_msg_id,
                            code: ErrorCode::FrameTooLarge,
                            message: format!("message exceeds the server's frame limit of {limit} bytes"),
                        });
                        refused = true;
                    }
                }
            }
            if !refused {
                return;
            }
            // A refused message freed a window slot: look again.
        }
    }

    /// The server's frame limit if `send` exceeds it.
    fn too_large(&self, send: &Send) -> Option<u32> {
        let limit = self.max_frame?;
        let estimate =
            send.payload.len() + send.content_type.len() + send.client_msg_id.len() + send.to.id.len() + SEND_OVERHEAD;
        if estimate <= limit as usize {
            return None;
        }
        match tether_proto::encode_body(&Frame::Send(send.clone())) {
            Ok(body) if body.len() <= limit as usize => None,
            _ => Some(limit),
        }
    }
}
