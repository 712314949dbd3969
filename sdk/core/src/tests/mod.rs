//! Tests of the session core. Time is injected: nothing sleeps; hours pass in microseconds.

mod discovery;
mod go_away;
mod heartbeat;
mod inbox;
mod lifecycle;
mod outbox;
mod presence;
mod rooms;
mod sim;

use std::time::{Duration, Instant};

use tether_proto::{Address, CloseCode, Credential, Deliver, Frame, LoginOk, SendAck, PROTOCOL_VERSION};

use super::{Action, ConnectionState, Event, PersistOp, PersistedState, Session, SessionConfig, SessionState};

pub(super) const USER: &str = "alice";
pub(super) const DEVICE: &str = "alice-phone";

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

pub(super) fn config() -> SessionConfig {
    SessionConfig::new("phone", DEVICE)
}

/// A session plus its injected clock and everything it emitted, drained after every call.
pub(super) struct H {
    pub(super) s: Session,
    pub(super) now: Instant,
    pub(super) t0: Instant,
    pub(super) tx: Vec<Frame>,
    pub(super) actions: Vec<Action>,
    pub(super) events: Vec<Event>,
    pub(super) persists: Vec<PersistOp>,
    /// The durable state, as a driver applying every persist op would have it.
    pub(super) durable: PersistedState,
}

impl H {
    pub(super) fn new() -> Self {
        Self::with(config(), Credential::Token("jwt".into()), PersistedState::default(), 1)
    }

    pub(super) fn with_config(cfg: SessionConfig) -> Self {
        Self::with(cfg, Credential::Token("jwt".into()), PersistedState::default(), 1)
    }

    pub(super) fn with(cfg: SessionConfig, cred: Credential, persisted: PersistedState, seed: u64) -> Self {
        let t0 = Instant::now();
        H {
            s: Session::new(cfg, cred, persisted.clone(), seed),
            now: t0,
            t0,
            tx: vec![],
            actions: vec![],
            events: vec![],
            persists: vec![],
            durable: persisted,
        }
    }

    /// Moves all queued outputs into the harness's vectors.
    pub(super) fn drain(&mut self) {
        while let Some(op) = self.s.poll_persist() {
            self.durable.apply(&op);
            self.persists.push(op);
        }
        while let Some(f) = self.s.poll_transmit() {
            self.tx.push(f);
        }
        while let Some(a) = self.s.poll_action() {
            self.actions.push(a);
        }
        while let Some(e) = self.s.poll_event() {
            self.events.push(e);
        }
    }

    pub(super) fn take_tx(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.tx)
    }

    pub(super) fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    pub(super) fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub(super) fn take_persists(&mut self) -> Vec<PersistOp> {
        std::mem::take(&mut self.persists)
    }

    /// Clears every collected output.
    pub(super) fn clear(&mut self) {
        self.tx.clear();
        self.actions.clear();
        self.events.clear();
        self.persists.clear();
    }

    /// Advances the clock to `target`, calling `handle_timeout` at every deadline the session
    /// asks for on the way (as a driver would), then at `target` itself.
    pub(super) fn run_until(&mut self, target: Instant) {
        let mut guard = 0u32;
        while let Some(deadline) = self.s.poll_timeout() {
            if deadline > target {
                break;
            }
            guard += 1;
            assert!(guard < 1_000_000, "timer loop does not make progress");
            self.now = self.now.max(deadline);
            self.s.handle_timeout(self.now);
            self.drain();
        }
        self.now = self.now.max(target);
        self.s.handle_timeout(self.now);
        self.drain();
    }

    pub(super) fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        self.run_until(target);
    }

    pub(super) fn start(&mut self) {
        self.s.start(self.now);
        self.drain();
    }

    pub(super) fn connected(&mut self) {
        self.s.handle_connected(self.now);
        self.drain();
    }

    pub(super) fn connect_failed(&mut self) {
        self.s.handle_connect_failed(self.now);
        self.drain();
    }

    pub(super) fn disconnected(&mut self, close: Option<CloseCode>) {
        self.s.handle_disconnected(self.now, close);
        self.drain();
    }

    pub(super) fn frame(&mut self, f: Frame) {
        self.s.handle_frame(f, self.now);
        self.drain();
    }

    pub(super) fn send(&mut self, payload: &str) -> String {
        let now_ms = 1_700_000_000_000 + self.now.duration_since(self.t0).as_millis() as u64;
        let id = self.s.send(Address::user("bob"), "text/plain".into(), payload.as_bytes().to_vec(), self.now, now_ms);
        self.drain();
        id
    }

    /// start -> connected -> login_ok with `inbox_head`; clears the outputs of getting there.
    pub(super) fn online(&mut self, inbox_head: u64) {
        if *self.s.state() != SessionState::Connecting {
            self.start();
        }
        self.connected();
        self.frame(Frame::LoginOk(login_ok(inbox_head)));
        assert_eq!(self.s.state(), &SessionState::Online);
    }

    pub(super) fn sends(&self) -> Vec<String> {
        self.tx
            .iter()
            .filter_map(|f| match f {
                Frame::Send(s) => Some(s.client_msg_id.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn messages(&self) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(d) => Some(d.seq),
                _ => None,
            })
            .collect()
    }

    pub(super) fn states(&self) -> Vec<ConnectionState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::State(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn pings(&self) -> usize {
        self.tx.iter().filter(|f| matches!(f, Frame::Ping(_))).count()
    }

    pub(super) fn connects(&self) -> usize {
        self.actions.iter().filter(|a| matches!(a, Action::Connect)).count()
    }

    pub(super) fn login_frame(&self) -> tether_proto::Login {
        self.tx
            .iter()
            .rev()
            .find_map(|f| match f {
                Frame::Login(l) => Some(l.clone()),
                _ => None,
            })
            .expect("a login was transmitted")
    }
}

pub(super) fn login_ok(inbox_head: u64) -> LoginOk {
    LoginOk {
        version: PROTOCOL_VERSION,
        session_id: "s1".into(),
        user: USER.into(),
        inbox_head,
        server_time_ms: 1_700_000_000_000,
        idle_timeout_ms: 60_000,
        max_frame: tether_proto::DEFAULT_MAX_FRAME,
        resume_token: None,
        resume_expires_ms: None,
        room_heads: None,
    }
}

pub(super) fn deliver(seq: u64) -> Deliver {
    Deliver {
        msg_id: 10_000 + seq,
        seq,
        from: "bob".into(),
        from_device: "bob-desktop".into(),
        client_msg_id: format!("bob-{seq}"),
        to: Address::user(USER),
        ts: 1_700_000_000_000 + seq,
        content_type: "text/plain".into(),
        payload: format!("m{seq}").into_bytes(),
    }
}

pub(super) fn send_ack(client_msg_id: &str, seq: u64) -> SendAck {
    SendAck {
        client_msg_id: client_msg_id.into(),
        msg_id: 20_000 + seq,
        seq,
        ts: 1_700_000_000_000 + seq,
        duplicate: false,
    }
}
