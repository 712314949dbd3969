//! The session state machine.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tether_proto::{
    Ack, Address, CloseCode, Credential, Deliver, ErrorCode, Frame, KickReason, Kicked, Login, LoginError, LoginOk,
    Logout, Ping, Send, SendAck, SendError, PROTOCOL_VERSION,
};

use super::backoff::Backoff;
use super::inbox::{Inbox, Received};
use super::outbox::Outbox;
use super::rng::Rng;
use super::types::{
    Action, ConnectionState, Event, OutboxEntry, PersistOp, PersistedState, ResumeToken, SessionConfig,
};

/// Bytes of MessagePack framing a `send` body needs beyond its variable-length fields; a
/// generous bound used to skip exact size checks for messages far below the limit.
const SEND_OVERHEAD: usize = 256;

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
    state: ConnectionState,
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
    /// A wall-clock reading (instant, ms since the Unix epoch) to judge token expiry by.
    wall_clock: Option<(Instant, u64)>,
    transmits: VecDeque<Frame>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
    persists: VecDeque<PersistOp>,
}

impl Session {
    /// A session in [`ConnectionState::Idle`] for `config`, logging in with `credential`,
    /// restored from `persisted`. `rng_seed` seeds the session's PRNG (backoff jitter, message
    /// ids, ping nonces): seed it from the OS in production so that message ids stay unique
    /// across restarts, and with a constant in tests.
    pub fn new(config: SessionConfig, credential: Credential, persisted: PersistedState, rng_seed: u64) -> Self {
        let cursor = persisted.inbox_cursor.unwrap_or(0);
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
            state: ConnectionState::Idle,
            user: None,
            login_credential: LoginCredential::App,
            login_deadline: None,
            max_frame: None,
            last_tx: None,
            last_rx: None,
            pinged_since_rx: false,
            ping_nonce: 0,
            has_cursor: persisted.inbox_cursor.is_some(),
            wall_clock: None,
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
            ConnectionState::Idle
            | ConnectionState::Kicked(_)
            | ConnectionState::AuthFailed(_)
            | ConnectionState::LoggedOut => {
                self.backoff.reset();
                self.connect();
            }
            _ => {}
        }
    }

    /// Skips the rest of a backoff wait and connects now (e.g. the network just came back).
    /// Ignored unless the state is `Backoff`. The failure count is kept.
    pub fn reconnect_now(&mut self, _now: Instant) {
        if matches!(self.state, ConnectionState::Backoff { .. }) {
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
        self.set_wall_clock(now, now_ms);
        let client_msg_id = loop {
            let id = format!("{:016x}{:016x}", self.rng.next_u64(), self.rng.next_u64());
            if !self.outbox.contains(&id) {
                break id;
            }
        };
        let entry = OutboxEntry { client_msg_id: client_msg_id.clone(), to, content_type, payload, created_ms: now_ms };
        self.persists.push_back(PersistOp::OutboxAdd(entry.clone()));
        self.outbox.push(entry);
        if self.state == ConnectionState::Online {
            self.flush_outbox(now);
        }
        client_msg_id
    }

    /// Ends the session on purpose: acks what was handed to the app, transmits `logout`, then
    /// [`Action::Disconnect`] with [`CloseCode::Normal`]; state `LoggedOut`, no reconnect. The
    /// outbox and cursor stay persisted for a later [`Session::start`].
    pub fn close(&mut self, now: Instant) {
        let was = self.state.clone();
        match was {
            ConnectionState::LoggedOut => return,
            ConnectionState::Online | ConnectionState::LoggingIn => {
                let ack = (was == ConnectionState::Online)
                    .then(|| self.inbox.take_ack(now, self.config.ack_every, true))
                    .flatten();
                self.go_offline();
                if let Some(inbox) = ack {
                    self.transmit(Frame::Ack(Ack { inbox }), now);
                }
                self.transmit(Frame::Logout(Logout {}), now);
                self.disconnect(CloseCode::Normal);
            }
            ConnectionState::Connecting => {
                self.go_offline();
                self.disconnect(CloseCode::Normal);
            }
            _ => self.go_offline(),
        }
        self.set_state(ConnectionState::LoggedOut);
    }

    // ------------------------------------------------------------------------------------
    // Transport events
    // ------------------------------------------------------------------------------------

    /// The transport asked for by [`Action::Connect`] is up: transmits `login` and waits for
    /// the answer (state `LoggingIn`). Ignored unless the state is `Connecting`.
    pub fn handle_connected(&mut self, now: Instant) {
        if self.state != ConnectionState::Connecting {
            return;
        }
        let credential = self.choose_credential(now);
        self.inbox.on_login_sent();
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
            }),
            now,
        );
        self.set_state(ConnectionState::LoggingIn);
    }

    /// The connection attempt failed: back off. Ignored unless the state is `Connecting`.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if self.state == ConnectionState::Connecting {
            self.enter_backoff(now);
        }
    }

    /// The transport is gone; `close` is the code the server closed with, if known. Reconnects
    /// with backoff, except after `replaced` or `kicked` (state `Kicked`, even if the `kicked`
    /// frame was lost). Ignored unless the state is `LoggingIn` or `Online`.
    pub fn handle_disconnected(&mut self, now: Instant, close: Option<CloseCode>) {
        if !matches!(self.state, ConnectionState::LoggingIn | ConnectionState::Online) {
            return;
        }
        self.go_offline();
        let reason = match close {
            Some(CloseCode::Replaced) => Some(KickReason::Replaced),
            Some(CloseCode::Kicked) => Some(KickReason::Admin),
            _ => None,
        };
        match reason {
            Some(reason) => {
                self.events
                    .push_back(Event::Kicked(Kicked { reason, message: "connection closed by the server".to_owned() }));
                self.set_state(ConnectionState::Kicked(reason));
            }
            None => self.enter_backoff(now),
        }
    }

    /// A frame arrived from the server. Frames that make no sense in the current state are
    /// ignored.
    pub fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let online = match self.state {
            ConnectionState::Online => true,
            ConnectionState::LoggingIn => false,
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
            Frame::Kicked(kicked) => {
                let reason = kicked.reason;
                self.go_offline();
                self.events.push_back(Event::Kicked(kicked));
                self.set_state(ConnectionState::Kicked(reason));
            }
            // Pong only proves liveness (recorded above); error frames are informational, a
            // fatal one is followed by the server closing the connection.
            _ => {}
        }
    }

    /// Runs whatever is due at `now`: reconnect after backoff, login timeout, dead-connection
    /// detection, resends, delayed acks, gap syncs, pings. Call it when
    /// [`Session::poll_timeout`] is reached (calling it early or late is harmless).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            ConnectionState::Backoff { retry_at, .. } if now >= retry_at => self.connect(),
            ConnectionState::LoggingIn if self.login_deadline.is_some_and(|d| now >= d) => {
                self.go_offline();
                self.disconnect(CloseCode::ProtocolError);
                self.enter_backoff(now);
            }
            ConnectionState::Online => {
                if self.dead_at().is_some_and(|d| now >= d) {
                    self.go_offline();
                    self.disconnect(CloseCode::IdleTimeout);
                    self.enter_backoff(now);
                    return;
                }
                self.flush_outbox(now);
                if let Some(inbox) = self.inbox.take_ack(now, self.config.ack_every, false) {
                    self.transmit(Frame::Ack(Ack { inbox }), now);
                }
                if let Some(sync) = self.inbox.poll_gap(now, self.config.gap_timeout) {
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
            ConnectionState::Backoff { retry_at, .. } => Some(retry_at),
            ConnectionState::LoggingIn => self.login_deadline,
            ConnectionState::Online => [
                self.dead_at(),
                self.ping_at(),
                self.outbox.next_deadline(),
                self.inbox.ack_deadline(),
                self.inbox.gap_deadline(),
            ]
            .into_iter()
            .flatten()
            .min(),
            _ => None,
        }
    }

    // ------------------------------------------------------------------------------------
    // Accessors
    // ------------------------------------------------------------------------------------

    /// The connection state.
    pub fn state(&self) -> &ConnectionState {
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

    /// The session's durable state as it stands (what replaying every [`PersistOp`] polled so
    /// far onto the initial [`PersistedState`] gives, plus any not yet polled).
    pub fn persisted_state(&self) -> PersistedState {
        PersistedState {
            outbox: self.outbox.entries().cloned().collect(),
            inbox_cursor: self.has_cursor.then(|| self.inbox.cursor()),
            resume: self.resume.clone(),
        }
    }

    // ------------------------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------------------------

    fn set_state(&mut self, state: ConnectionState) {
        if self.state != state {
            self.state = state.clone();
            self.events.push_back(Event::State(state));
        }
    }

    fn connect(&mut self) {
        self.set_state(ConnectionState::Connecting);
        self.actions.push_back(Action::Connect);
    }

    fn disconnect(&mut self, code: CloseCode) {
        self.actions.push_back(Action::Disconnect { code });
    }

    fn enter_backoff(&mut self, now: Instant) {
        let (attempt, delay) = self.backoff.next_delay(&mut self.rng);
        self.set_state(ConnectionState::Backoff { attempt, retry_at: now + delay });
    }

    /// Forgets everything about the current connection. Unsent frames are dropped: the outbox
    /// resends its messages after the next login, and the login carries the cursor.
    fn go_offline(&mut self) {
        self.transmits.clear();
        self.outbox.reset();
        self.inbox.on_offline();
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
        // Consecutive cursor moves collapse into the last one.
        if let (PersistOp::Cursor(_), Some(PersistOp::Cursor(last))) = (&op, self.persists.back_mut()) {
            if let PersistOp::Cursor(c) = op {
                *last = c;
            }
            return;
        }
        self.persists.push_back(op);
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
        self.backoff.reset();
        self.user = Some(ok.user.clone());
        self.heartbeat_interval = self.heartbeat_for(&ok);
        self.max_frame = Some(ok.max_frame);
        self.set_wall_clock(now, ok.server_time_ms);
        if let Some(token) = ok.resume_token.clone() {
            self.set_resume(Some(ResumeToken { token, expires_ms: ok.resume_expires_ms.unwrap_or(u64::MAX) }));
        }
        self.inbox.on_login_ok(ok.inbox_head, now, self.config.gap_timeout);
        self.set_state(ConnectionState::Online);
        self.events.push_back(Event::LoggedIn(ok));
        self.flush_outbox(now);
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
        } else if auth || err.code == ErrorCode::UnsupportedVersion {
            self.events.push_back(Event::LoginFailed { code: err.code, message: err.message });
            self.set_state(ConnectionState::AuthFailed(err.code));
        } else {
            self.enter_backoff(now);
        }
    }

    fn on_send_ack(&mut self, ack: SendAck, now: Instant) {
        if self.outbox.remove(&ack.client_msg_id).is_none() {
            return; // duplicate or unknown
        }
        self.persist(PersistOp::OutboxRemove(ack.client_msg_id.clone()));
        let seq = ack.seq;
        self.events.push_back(Event::SendAcked(ack));
        if seq > 0 {
            self.receive(seq, None, now);
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
        let own = self.user.as_deref() == Some(msg.from.as_str()) && msg.from_device == self.config.device_id;
        if !own {
            let seq = msg.seq;
            self.receive(seq, Some(msg), now);
            return;
        }
        // Our own message came back (a backlog after a lost send_ack): it completes the send.
        if self.outbox.remove(&msg.client_msg_id).is_some() {
            self.persist(PersistOp::OutboxRemove(msg.client_msg_id.clone()));
            self.events.push_back(Event::SendAcked(SendAck {
                client_msg_id: msg.client_msg_id,
                msg_id: msg.msg_id,
                seq: msg.seq,
                ts: msg.ts,
                duplicate: true,
            }));
            self.flush_outbox(now);
        }
        self.receive(msg.seq, None, now);
    }

    /// Feeds one inbox sequence number to the tracker and emits what follows.
    fn receive(&mut self, seq: u64, item: Option<Deliver>, now: Instant) {
        let Received { handed, advanced, sync } = self.inbox.receive(seq, item, now, self.config.gap_timeout);
        self.events.extend(handed.into_iter().map(Event::Message));
        if let Some(sync) = sync {
            self.transmit(Frame::Sync(sync), now);
        }
        if advanced {
            self.has_cursor = true;
            self.persist(PersistOp::Cursor(self.inbox.cursor()));
            self.inbox.note_advance(now, self.config.ack_delay);
            if let Some(inbox) = self.inbox.take_ack(now, self.config.ack_every, false) {
                self.transmit(Frame::Ack(Ack { inbox }), now);
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
