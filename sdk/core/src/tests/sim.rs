//! End-to-end delivery contract under faults, against a small simulated server.
//!
//! The server keeps the user's inbox log and one room's log, deduplicates sends on
//! `client_msg_id`, answers `login` with the backlogs after the presented cursors and `sync`
//! (inbox or room) with the asked range. The
//! network between them drops connections (the server having read a random prefix of what the
//! client wrote), fails connection attempts, reorders, duplicates and loses deliveries, and the
//! server now and then drains (`go_away`, dropping what it still had queued). At the
//! end the faults stop and the test checks the contract: every message reaches the app exactly
//! once and in order (per inbox and per room), every send is stored exactly once, in order, and
//! acknowledged once.

use std::collections::{HashMap, HashSet, VecDeque};

use tether_proto::{Ack, AddressKind, JoinRoom, Login, LoginOk, Pong, RoomJoined, Sync};

use super::super::rng::Rng;
use super::*;

struct Conn {
    logged_in: bool,
    to_client: VecDeque<Frame>,
}

const ROOM: &str = "lobby";

struct Server {
    log: Vec<Deliver>,
    by_client_id: HashMap<String, u64>,
    conn: Option<Conn>,
    acked: u64,
    /// The room's log; the device's user is a member once it joined.
    room_log: Vec<Deliver>,
    room_by_client_id: HashMap<String, u64>,
    member: bool,
    /// The room cursor stored for the device (from login, acks, and the join).
    room_acked: u64,
}

impl Server {
    fn new() -> Self {
        Server {
            log: vec![],
            by_client_id: HashMap::new(),
            conn: None,
            acked: 0,
            room_log: vec![],
            room_by_client_id: HashMap::new(),
            member: false,
            room_acked: 0,
        }
    }

    /// Appends to the room's log; fanned out live to the device unless it sent it.
    fn append_room(&mut self, mut d: Deliver) -> u64 {
        let seq = self.room_log.len() as u64 + 1;
        d.seq = seq;
        d.msg_id = 70_000 + seq;
        d.to = Address::room(ROOM);
        self.room_log.push(d.clone());
        let own = d.from_device == DEVICE;
        if let Some(conn) = self.conn.as_mut().filter(|c| c.logged_in && self.member && !own) {
            conn.to_client.push_back(Frame::Deliver(d));
        }
        seq
    }

    fn room_range(&self, after: u64, until: u64) -> Vec<Frame> {
        self.room_log.iter().filter(|d| d.seq > after && d.seq <= until).cloned().map(Frame::Deliver).collect()
    }

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
            Frame::Login(Login { inbox_cursor, room_cursors, .. }) => {
                self.acked = self.acked.max(inbox_cursor.unwrap_or(0));
                let head = self.log.len() as u64;
                let mut backlog = self.range(inbox_cursor.unwrap_or(0), head);
                if self.member {
                    // Listed: from the presented cursor; else from the one stored for the device.
                    let listed = room_cursors.as_ref().and_then(|c| c.get(ROOM)).copied();
                    if let Some(c) = listed {
                        self.room_acked = self.room_acked.max(c);
                    }
                    let from = listed.unwrap_or(self.room_acked);
                    backlog.extend(self.room_range(from, self.room_log.len() as u64));
                }
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
            Frame::Send(send) if send.to.kind == AddressKind::Room => {
                assert!(self.member, "the client sends to the room only after joining it");
                let seq = match self.room_by_client_id.get(&send.client_msg_id) {
                    Some(seq) => *seq,
                    None => {
                        let seq = self.append_room(Deliver {
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
                        self.room_by_client_id.insert(send.client_msg_id.clone(), seq);
                        seq
                    }
                };
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.push_back(Frame::SendAck(SendAck {
                        client_msg_id: send.client_msg_id,
                        msg_id: 70_000 + seq,
                        seq,
                        ts: now_ms,
                        duplicate: false,
                    }));
                }
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
            Frame::Sync(Sync { after, until, room: Some(room) }) => {
                assert_eq!(room, ROOM);
                let until = until.unwrap_or(self.room_log.len() as u64);
                let frames = self.room_range(after, until);
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.extend(frames);
                }
            }
            Frame::Sync(Sync { after, until, room: None }) => {
                let until = until.unwrap_or(self.log.len() as u64);
                let frames = self.range(after, until);
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.extend(frames);
                }
            }
            Frame::Ack(Ack { inbox, rooms }) => {
                let room = rooms.as_ref().and_then(|r| r.get(ROOM)).copied();
                assert!(inbox > self.acked || room.is_some(), "ack advances nothing");
                assert!(inbox >= self.acked, "inbox ack goes backwards");
                self.acked = self.acked.max(inbox);
                if let Some(c) = room {
                    assert!(c > self.room_acked, "room ack does not advance");
                    assert!(c <= self.room_log.len() as u64);
                    self.room_acked = c;
                }
            }
            Frame::JoinRoom(JoinRoom { room }) => {
                assert_eq!(room, ROOM);
                let head = self.room_log.len() as u64;
                if !self.member {
                    // The joining device's cursor starts at the head.
                    self.member = true;
                    self.room_acked = head;
                }
                if let Some(conn) = self.conn.as_mut() {
                    conn.to_client.push_back(Frame::RoomJoined(RoomJoined { room, head, members: 2, online: 2 }));
                }
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
    app_room_sent: Vec<String>,
    bob_count: u64,
    /// The room's head when the device joined: it gets every room message after it.
    joined_at: u64,
    /// `go_away` frames the client read (the node drained under it).
    go_aways: u64,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut cfg = config();
        cfg.max_in_flight = 8;
        cfg.max_reorder = 16;
        Sim {
            cfg: cfg.clone(),
            h: H::with(cfg, Credential::Token("jwt".into()), PersistedState::default(), seed),
            server: Server::new(),
            rng: Rng::new(seed ^ 0xA5A5),
            faults: true,
            app_sent: vec![],
            app_room_sent: vec![],
            bob_count: 0,
            joined_at: 0,
            go_aways: 0,
        }
    }

    /// Traffic in the room before the device joins: it must never reach the app.
    fn room_chatter(&mut self, n: u64) {
        for i in 0..n {
            let mut d = deliver(0);
            d.from = "carol".into();
            d.from_device = "carol-phone".into();
            d.client_msg_id = format!("carol-early-{i}");
            self.server.append_room(d);
        }
    }

    /// Joins the room (without faults, so that the join is answered) and starts the session.
    fn start_in_room(&mut self) {
        self.room_chatter(5);
        let faults = std::mem::replace(&mut self.faults, false);
        self.h.s.join_room(ROOM, self.h.now);
        self.h.start();
        for _ in 0..100 {
            self.pump();
            self.deliver_frames(100);
            if self.h.s.room_cursor(ROOM).is_some() {
                break;
            }
            self.h.advance(secs(1));
        }
        assert_eq!(self.h.s.room_cursor(ROOM), Some(5), "joined at the head");
        self.joined_at = 5;
        self.faults = faults;
    }

    fn sent_ids(&self) -> Vec<String> {
        self.h
            .events
            .iter()
            .filter_map(|e| match e {
                Event::SendAcked(a) => Some(a.client_msg_id.clone()),
                _ => None,
            })
            .collect()
    }

    /// Seqs of the messages handed to the app: (inbox, room).
    fn handed(&self) -> (Vec<u64>, Vec<u64>) {
        let mut inbox = vec![];
        let mut room = vec![];
        for e in &self.h.events {
            if let Event::Message(d) = e {
                match d.to {
                    crate::Target::Room(_) => room.push(d.seq),
                    crate::Target::User(_) => inbox.push(d.seq),
                }
            }
        }
        (inbox, room)
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
            if matches!(frame, Frame::GoAway(_)) {
                // The server closes right after it: nothing behind it on this connection.
                conn.to_client.clear();
                self.go_aways += 1;
                self.h.frame(frame);
                self.pump();
                continue;
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
            let mut d = deliver(0);
            d.from = "carol".into();
            d.from_device = "carol-phone".into();
            d.client_msg_id = format!("carol-{}", self.server.room_log.len());
            self.server.append_room(d);
        }
        if self.chance(100) {
            let id = self.h.send(&format!("app {}", self.app_sent.len()));
            self.app_sent.push(id);
        }
        if self.chance(60) {
            let now_ms = self.now_ms();
            let payload = format!("room {}", self.app_room_sent.len()).into_bytes();
            let id = self.h.s.send(Address::room(ROOM), "text/plain".into(), payload, self.h.now, now_ms);
            self.h.drain();
            self.app_room_sent.push(id);
        }
        if self.faults && self.server.conn.as_ref().is_some_and(|c| c.logged_in) && self.chance(5) {
            // The node drains: `go_away`, after which it closes the connection (what it had
            // still queued is lost with it).
            if let Some(conn) = self.server.conn.as_mut() {
                conn.to_client.push_back(Frame::GoAway(tether_proto::GoAway {
                    reason: "draining".into(),
                    message: "node draining".into(),
                }));
            }
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
            let done = self.h.s.state() == &SessionState::Online
                && self.h.s.outbox_len() == 0
                && self.h.s.inbox_cursor() == self.server.log.len() as u64
                && self.h.s.room_cursor(ROOM) == Some(self.server.room_log.len() as u64)
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

    /// What the app must have been handed over the whole run: (inbox, room) seqs.
    fn expected(&self) -> (Vec<u64>, Vec<u64>) {
        let inbox = self.server.log.iter().filter(|d| d.from_device != DEVICE).map(|d| d.seq).collect();
        let room = self
            .server
            .room_log
            .iter()
            .filter(|d| d.from_device != DEVICE && d.seq > self.joined_at)
            .map(|d| d.seq)
            .collect();
        (inbox, room)
    }

    /// Every app send (to bob, to the room) is stored exactly once and in send order.
    fn check_stored(&self) {
        let stored: Vec<&String> =
            self.server.log.iter().filter(|d| d.from_device == DEVICE).map(|d| &d.client_msg_id).collect();
        assert_eq!(stored, self.app_sent.iter().collect::<Vec<_>>());
        let stored: Vec<&String> =
            self.server.room_log.iter().filter(|d| d.from_device == DEVICE).map(|d| &d.client_msg_id).collect();
        assert_eq!(stored, self.app_room_sent.iter().collect::<Vec<_>>());
    }

    fn check(&self) {
        // Every message from others reaches the app exactly once, in inbox and in room order.
        assert_eq!(self.handed(), self.expected());
        for e in &self.h.events {
            if let Event::Message(d) = e {
                let log = if d.to.is_room() { &self.server.room_log } else { &self.server.log };
                assert_eq!(d, &crate::Message::from(log[d.seq as usize - 1].clone()));
            }
        }
        self.check_stored();
        // ... and acknowledged to the app exactly once, with the seq of the right log.
        let mut acked = HashSet::new();
        for e in &self.h.events {
            if let Event::SendAcked(ack) = e {
                assert!(acked.insert(ack.client_msg_id.clone()), "acked twice");
                let seq = self
                    .server
                    .by_client_id
                    .get(&ack.client_msg_id)
                    .or_else(|| self.server.room_by_client_id.get(&ack.client_msg_id));
                assert_eq!(seq, Some(&ack.seq));
            }
        }
        assert_eq!(acked.len(), self.app_sent.len() + self.app_room_sent.len());
        // The durable state agrees.
        let head = self.server.log.len() as u64;
        let room_head = self.server.room_log.len() as u64;
        assert!(self.h.durable.outbox.is_empty());
        assert_eq!(self.h.durable.inbox_cursor.unwrap_or(0), head);
        assert_eq!(self.h.durable.room_cursors.get(ROOM), Some(&room_head));
        assert_eq!(self.h.durable, self.h.s.persisted_state());
        assert_eq!(self.server.acked, head, "server saw the final cumulative ack");
        assert_eq!(self.server.room_acked, room_head, "server saw the final room ack");
    }
}

#[test]
fn no_loss_no_duplicates_order_kept_under_faults() {
    for seed in 0..24 {
        let mut sim = Sim::new(seed);
        sim.start_in_room();
        for _ in 0..1500 {
            sim.step();
        }
        sim.settle();
        sim.check();
        assert!(sim.server.log.len() > 100, "seed {seed}: too little traffic");
        assert!(sim.server.room_log.len() > 100, "seed {seed}: too little room traffic");
        assert!(sim.go_aways > 0, "seed {seed}: no node drained under the client");
    }
}

#[test]
fn contract_holds_across_app_restarts() {
    let mut sim = Sim::new(99);
    sim.start_in_room();
    let mut all_inbox = vec![];
    let mut all_room = vec![];
    let mut all_acked = vec![];
    for round in 0..6 {
        for _ in 0..400 {
            sim.step();
        }
        // The app is killed: the connection vanishes, and a new session starts from the durable
        // state (what the driver had persisted).
        sim.server.conn = None;
        let (inbox, room) = sim.handed();
        all_inbox.extend(inbox);
        all_room.extend(room);
        all_acked.extend(sim.sent_ids());
        let durable = sim.h.durable.clone();
        let mut h = H::with(sim.cfg.clone(), Credential::Token("jwt".into()), durable.clone(), 1000 + round);
        h.durable = durable;
        sim.h = h;
        sim.h.start();
        sim.pump();
    }
    sim.settle();
    let (inbox, room) = sim.handed();
    all_inbox.extend(inbox);
    all_room.extend(room);
    all_acked.extend(sim.sent_ids());
    assert_eq!((all_inbox, all_room), sim.expected());
    sim.check_stored();
    let unique: HashSet<_> = all_acked.iter().collect();
    assert_eq!(unique.len(), all_acked.len(), "an ack reported twice");
    assert_eq!(all_acked.len(), sim.app_sent.len() + sim.app_room_sent.len());
    assert!(sim.server.room_log.len() > 100, "too little room traffic");
}
