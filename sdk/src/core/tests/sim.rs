//! End-to-end delivery contract under faults, against a small simulated server.
//!
//! The server keeps the user's inbox log, deduplicates sends on `client_msg_id`, answers
//! `login` with the backlog after the presented cursor and `sync` with the asked range. The
//! network between them drops connections (the server having read a random prefix of what the
//! client wrote), fails connection attempts, reorders, duplicates and loses deliveries. At the
//! end the faults stop and the test checks the contract: every message reaches the app exactly
//! once and in order, every send is stored exactly once, in order, and acknowledged once.

use std::collections::{HashMap, HashSet, VecDeque};

use tether_proto::{Ack, Login, LoginOk, Pong, Sync};

use super::super::rng::Rng;
use super::*;

struct Conn {
    logged_in: bool,
    to_client: VecDeque<Frame>,
}

struct Server {
    log: Vec<Deliver>,
    by_client_id: HashMap<String, u64>,
    conn: Option<Conn>,
    acked: u64,
}

impl Server {
    fn append(&mut self, mut d: Deliver) -> u64 {
        let seq = self.log.len() as u64 + 1;
        d.seq = seq;
        d.msg_id = 50_000 + seq;
        self.log.push(d.clone());
        if let Some(conn) = self.conn.as_mut().filter(|c| c.logged_in) {
            conn.to_client.push_back(Frame::Deliver(d));
        }
        seq
    }

    fn range(&self, after: u64, until: u64) -> Vec<Frame> {
        self.log.iter().filter(|d| d.seq > after && d.seq <= until).cloned().map(Frame::Deliver).collect()
    }

    fn handle(&mut self, frame: Frame, now_ms: u64) {
        if self.conn.is_none() {
            return;
        }
        match frame {
            Frame::Login(Login { inbox_cursor, .. }) => {
                self.acked = self.acked.max(inbox_cursor.unwrap_or(0));
                let head = self.log.len() as u64;
                let backlog = self.range(inbox_cursor.unwrap_or(0), head);
                let Some(conn) = self.conn.as_mut() else {
                    return;
                };
                conn.logged_in = true;
                conn.to_client.push_back(Frame::LoginOk(LoginOk {
                    inbox_head: head,
                    server_time_ms: now_ms,
                    ..login_ok(head)
                }));
                conn.to_client.extend(backlog);
            }
            Frame::Send(send) => {
                let seq = match self.by_client_id.get(&send.client_msg_id) {
                    Some(seq) => *seq,
                    None => {
                        let seq = self.append(Deliver {
                            msg_id: 0,
                            seq: 0,
                            from: USER.into(),
                            from_device: DEVICE.into(),
                            client_msg_id: send.client_msg_id.clone(),
                            to: send.to,
                            ts: now_ms,
                            content_type: send.content_type,
                            payload: send.payload,
                        });
                        self.by_client_id.insert(send.client_msg_id.clone(), seq);
                        seq
                    }
                };
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.push_back(Frame::SendAck(SendAck {
                        client_msg_id: send.client_msg_id,
                        msg_id: 50_000 + seq,
                        seq,
                        ts: now_ms,
                        duplicate: false,
                    }));
                }
            }
            Frame::Sync(Sync { after, until }) => {
                let until = until.unwrap_or(self.log.len() as u64);
                let frames = self.range(after, until);
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.extend(frames);
                }
            }
            Frame::Ack(Ack { inbox }) => {
                assert!(inbox > self.acked, "ack does not advance");
                self.acked = self.acked.max(inbox);
            }
            Frame::Ping(p) => {
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.push_back(Frame::Pong(Pong { nonce: p.nonce }));
                }
            }
            _ => {}
        }
    }
}

struct Sim {
    cfg: SessionConfig,
    h: H,
    server: Server,
    rng: Rng,
    faults: bool,
    app_sent: Vec<String>,
    bob_count: u64,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut cfg = config();
        cfg.max_in_flight = 8;
        cfg.max_reorder = 16;
        Sim {
            cfg: cfg.clone(),
            h: H::with(cfg, Credential::Token("jwt".into()), PersistedState::default(), seed),
            server: Server { log: vec![], by_client_id: HashMap::new(), conn: None, acked: 0 },
            rng: Rng::new(seed ^ 0xA5A5),
            faults: true,
            app_sent: vec![],
            bob_count: 0,
        }
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.rng.up_to(999) < per_mille
    }

    fn now_ms(&self) -> u64 {
        1_700_000_000_000 + self.h.now.duration_since(self.h.t0).as_millis() as u64
    }

    /// Carries out the session's actions and feeds its frames to the server until quiet.
    fn pump(&mut self) {
        loop {
            let actions = self.h.take_actions();
            let tx = self.h.take_tx();
            if actions.is_empty() && tx.is_empty() {
                return;
            }
            for f in tx {
                let now_ms = self.now_ms();
                self.server.handle(f, now_ms);
            }
            for a in actions {
                match a {
                    Action::Connect => {
                        if self.faults && self.chance(300) {
                            self.h.connect_failed();
                        } else {
                            self.server.conn = Some(Conn { logged_in: false, to_client: VecDeque::new() });
                            self.h.connected();
                        }
                    }
                    Action::Disconnect { .. } => self.server.conn = None,
                }
            }
        }
    }

    /// Moves up to `n` frames from the server to the client, with faults.
    fn deliver_frames(&mut self, n: u64) {
        for _ in 0..n {
            let faults = self.faults;
            let reorder = faults && self.chance(100);
            let lose = faults && self.chance(20);
            let dup = faults && self.chance(30);
            let Some(conn) = self.server.conn.as_mut() else {
                return;
            };
            if reorder && conn.to_client.len() >= 2 {
                conn.to_client.swap(0, 1);
            }
            let Some(frame) = conn.to_client.pop_front() else {
                return;
            };
            if matches!(frame, Frame::Deliver(_)) && lose {
                continue;
            }
            if matches!(frame, Frame::Deliver(_)) && dup {
                conn.to_client.push_front(frame.clone());
            }
            self.h.frame(frame);
            self.pump();
        }
    }

    fn step(&mut self) {
        if self.chance(150) {
            self.bob_count += 1;
            let mut d = deliver(0);
            d.client_msg_id = format!("bob-{}", self.bob_count);
            d.payload = self.bob_count.to_be_bytes().to_vec();
            self.server.append(d);
        }
        if self.chance(100) {
            let id = self.h.send(&format!("app {}", self.app_sent.len()));
            self.app_sent.push(id);
        }
        if self.faults && self.server.conn.is_some() && self.chance(15) {
            // The connection breaks; the server read some of what the client had written.
            self.server.conn = None;
            let close = match self.rng.up_to(2) {
                0 => None,
                1 => Some(CloseCode::ServerShutdown),
                _ => Some(CloseCode::IdleTimeout),
            };
            self.h.disconnected(close);
        }
        self.pump();
        let n = self.rng.up_to(6);
        self.deliver_frames(n);
        let dt = ms(self.rng.up_to(400));
        self.h.advance(dt);
        self.pump();
    }

    fn settle(&mut self) {
        self.faults = false;
        // A fresh connection makes the server present the whole backlog after the cursor.
        if self.server.conn.is_some() {
            self.server.conn = None;
            self.h.disconnected(None);
        }
        for _ in 0..2000 {
            self.pump();
            self.deliver_frames(1000);
            self.h.advance(secs(1));
            self.pump();
            let done = self.h.s.state() == &ConnectionState::Online
                && self.h.s.outbox_len() == 0
                && self.h.s.inbox_cursor() == self.server.log.len() as u64
                && self.server.conn.as_ref().is_some_and(|c| c.to_client.is_empty());
            if done {
                self.h.advance(secs(1));
                self.pump();
                return;
            }
        }
        panic!(
            "did not settle: state {:?}, outbox {}, cursor {} of {}",
            self.h.s.state(),
            self.h.s.outbox_len(),
            self.h.s.inbox_cursor(),
            self.server.log.len()
        );
    }

    fn check(&self) {
        // Every message from others reaches the app exactly once, in inbox order.
        let expected: Vec<u64> = self.server.log.iter().filter(|d| d.from_device != DEVICE).map(|d| d.seq).collect();
        assert_eq!(self.h.messages(), expected);
        for e in &self.h.events {
            if let Event::Message(d) = e {
                assert_eq!(d, &self.server.log[d.seq as usize - 1]);
            }
        }
        // Every app send is stored exactly once and in send order.
        let stored: Vec<&str> =
            self.server.log.iter().filter(|d| d.from_device == DEVICE).map(|d| d.client_msg_id.as_str()).collect();
        let sent: Vec<&str> = self.app_sent.iter().map(String::as_str).collect();
        assert_eq!(stored, sent);
        // ... and acknowledged to the app exactly once.
        let mut acked = HashSet::new();
        for e in &self.h.events {
            if let Event::SendAcked(ack) = e {
                assert!(acked.insert(ack.client_msg_id.clone()), "acked twice");
                assert_eq!(self.server.by_client_id.get(&ack.client_msg_id), Some(&ack.seq));
            }
        }
        assert_eq!(acked.len(), self.app_sent.len());
        // The durable state agrees.
        let head = self.server.log.len() as u64;
        assert!(self.h.durable.outbox.is_empty());
        assert_eq!(self.h.durable.inbox_cursor.unwrap_or(0), head);
        assert_eq!(self.h.durable, self.h.s.persisted_state());
        assert_eq!(self.server.acked, head, "server saw the final cumulative ack");
    }
}

#[test]
fn no_loss_no_duplicates_order_kept_under_faults() {
    for seed in 0..24 {
        let mut sim = Sim::new(seed);
        sim.h.start();
        sim.pump();
        for _ in 0..1500 {
            sim.step();
        }
        sim.settle();
        sim.check();
        assert!(sim.server.log.len() > 100, "seed {seed}: too little traffic");
    }
}

#[test]
fn contract_holds_across_app_restarts() {
    let mut sim = Sim::new(99);
    sim.h.start();
    sim.pump();
    let mut all_messages = vec![];
    let mut all_acked = vec![];
    for round in 0..6 {
        for _ in 0..400 {
            sim.step();
        }
        // The app is killed: the connection vanishes, and a new session starts from the durable
        // state (what the driver had persisted).
        sim.server.conn = None;
        all_messages.extend(sim.h.messages());
        all_acked.extend(sim.h.events.iter().filter_map(|e| match e {
            Event::SendAcked(a) => Some(a.client_msg_id.clone()),
            _ => None,
        }));
        let durable = sim.h.durable.clone();
        let mut h = H::with(sim.cfg.clone(), Credential::Token("jwt".into()), durable.clone(), 1000 + round);
        h.durable = durable;
        sim.h = h;
        sim.h.start();
        sim.pump();
    }
    sim.settle();
    all_messages.extend(sim.h.messages());
    all_acked.extend(sim.h.events.iter().filter_map(|e| match e {
        Event::SendAcked(a) => Some(a.client_msg_id.clone()),
        _ => None,
    }));
    let expected: Vec<u64> = sim.server.log.iter().filter(|d| d.from_device != DEVICE).map(|d| d.seq).collect();
    assert_eq!(all_messages, expected);
    let stored: Vec<&String> =
        sim.server.log.iter().filter(|d| d.from_device == DEVICE).map(|d| &d.client_msg_id).collect();
    assert_eq!(stored, sim.app_sent.iter().collect::<Vec<_>>());
    let unique: HashSet<_> = all_acked.iter().collect();
    assert_eq!(unique.len(), all_acked.len(), "an ack reported twice");
    assert_eq!(all_acked.len(), sim.app_sent.len());
}
