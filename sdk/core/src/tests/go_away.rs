//! `go_away`: the node is draining; the session moves to another node at once and loses
//! nothing. With a `NodeDirectory` standing in for the driver's choice of node.

use tether_proto::{Ack, GoAway};

use super::*;
use crate::discovery::{DiscoveredNode, DiscoveryConfig, NodeDirectory, NodeStatus};
use crate::GO_AWAY_WINDOW;

fn go_away() -> Frame {
    Frame::GoAway(GoAway { reason: "draining".into(), message: "node draining".into() })
}

fn backoff_attempt(h: &H) -> Option<u32> {
    match h.s.state() {
        SessionState::Backoff { attempt, .. } => Some(*attempt),
        _ => None,
    }
}

#[test]
fn go_away_reconnects_at_once_and_resends_the_outbox_in_order() {
    let mut h = H::new();
    h.online(0);
    let ids: Vec<String> = (0..3).map(|i| h.send(&format!("m{i}"))).collect();
    assert_eq!(h.sends(), ids);
    h.clear();

    h.frame(go_away());
    let actions = h.take_actions();
    assert_eq!(actions, [Action::Disconnect { code: CloseCode::GoingAway }, Action::Connect]);
    assert!(actions[0].marks_node_failed(), "the draining node cools down");
    assert!(!actions[1].marks_node_failed());
    // No backoff state on the way: straight to connecting.
    assert_eq!(h.states(), [ConnectionState::Connecting]);
    assert_eq!(h.s.state(), &SessionState::Connecting);
    assert!(h.tx.iter().all(|f| !matches!(f, Frame::Logout(_))), "no logout: the session moves, it does not end");
    // Nothing left the outbox.
    assert_eq!(h.s.outbox_len(), 3);
    assert!(h.take_persists().is_empty());
    h.clear();

    // The next node: the login carries the cursor, then the same messages go out again, in order.
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(0));
    h.clear();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.sends(), ids, "every unacknowledged message is sent again, same ids, same order");
    for (i, id) in ids.iter().enumerate() {
        h.frame(Frame::SendAck(send_ack(id, i as u64 + 1)));
    }
    assert_eq!(h.s.outbox_len(), 0);
    let acked: Vec<&str> = h
        .events
        .iter()
        .filter_map(|e| match e {
            Event::SendAcked(a) => Some(a.client_msg_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(acked, ids.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn go_away_acknowledges_what_the_app_was_handed_before_leaving() {
    let mut h = H::new();
    h.online(0);
    for seq in 1..=3 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(h.messages(), [1, 2, 3]);
    h.clear();
    h.frame(go_away());
    // The delayed ack goes out before the connection is closed; nothing else does.
    assert_eq!(h.take_tx(), [Frame::Ack(Ack { inbox: 3, rooms: None })]);
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::GoingAway }, Action::Connect]);
    // The next login resumes after what the app has; nothing is handed twice.
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(3));
    h.frame(Frame::LoginOk(login_ok(4)));
    for seq in 1..=4 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(h.messages(), [4]);
}

#[test]
fn a_going_away_close_without_the_frame_also_reconnects_at_once() {
    let mut h = H::new();
    h.online(0);
    let id = h.send("m");
    h.clear();
    h.disconnected(Some(CloseCode::GoingAway));
    assert_eq!(h.take_actions(), [Action::Connect]);
    assert_eq!(h.states(), [ConnectionState::Connecting]);
    // The frame came first: the close that follows it is ignored (already connecting).
    h.clear();
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.sends(), [id]);
}

#[test]
fn go_away_while_logging_in_reconnects_at_once() {
    let mut h = H::new();
    h.start();
    h.connected();
    h.clear();
    h.frame(go_away());
    // Not online yet: no ack to send.
    assert!(h.take_tx().is_empty());
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::GoingAway }, Action::Connect]);
    assert_eq!(h.s.state(), &SessionState::Connecting);
    // And the login deadline of the old connection is gone.
    assert_eq!(h.s.poll_timeout(), None);
}

#[test]
fn go_away_is_ignored_when_there_is_no_session() {
    let mut h = H::new();
    h.frame(go_away());
    assert_eq!(h.s.state(), &SessionState::Idle);
    assert!(h.take_actions().is_empty());
    h.start();
    h.clear();
    h.frame(go_away());
    assert_eq!(h.s.state(), &SessionState::Connecting);
    assert!(h.take_actions().is_empty());
}

#[test]
fn a_node_that_keeps_sending_clients_away_is_not_hammered() {
    let mut h = H::new();
    h.online(0);
    h.frame(go_away());
    assert_eq!(h.s.state(), &SessionState::Connecting, "the first go_away: at once");
    // The only node left is draining too: it takes the login and sends us away again.
    let mut attempts = vec![];
    for _ in 0..4 {
        h.connected();
        h.frame(Frame::LoginOk(login_ok(0)));
        h.advance(ms(100));
        h.clear();
        h.frame(go_away());
        let attempt = backoff_attempt(&h).expect("a go_away soon after the last one backs off");
        attempts.push(attempt);
        let SessionState::Backoff { retry_at, .. } = *h.s.state() else { unreachable!() };
        h.run_until(retry_at);
        assert_eq!(h.s.state(), &SessionState::Connecting);
    }
    assert_eq!(attempts, [0, 1, 2, 3], "the backoff grows across the logins in between");

    // Once the node has been quiet for the window, a go_away is followed at once again, and a
    // login after the window resets the backoff.
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    h.advance(GO_AWAY_WINDOW + secs(1));
    h.clear();
    h.frame(go_away());
    assert_eq!(h.s.state(), &SessionState::Connecting);
    h.advance(GO_AWAY_WINDOW + secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    h.disconnected(None);
    assert_eq!(backoff_attempt(&h), Some(0), "a later ordinary loss starts the backoff afresh");
}

/// What a driver does with a session and a directory: connect where the directory says, let
/// a node that failed the session cool down.
struct Driver {
    h: H,
    dir: NodeDirectory,
    /// Where each connection went.
    connections: Vec<String>,
}

impl Driver {
    fn new(nodes: Vec<DiscoveredNode>) -> Driver {
        let h = H::new();
        let mut dir = NodeDirectory::new(DiscoveryConfig::default(), true, vec![]);
        assert!(dir.refreshed(nodes, h.now, 1_700_000_000_000));
        Driver { h, dir, connections: vec![] }
    }

    fn current(&self) -> String {
        self.connections.last().cloned().expect("connected once")
    }

    /// Carries out the session's actions: every connect attempt succeeds at transport level.
    fn pump(&mut self) {
        loop {
            let actions = self.h.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                if a.marks_node_failed() {
                    let current = self.current();
                    self.dir.mark_failed(&current, self.h.now);
                }
                if a == Action::Connect {
                    let node = self.dir.choose(self.h.now).expect("somewhere to go");
                    self.connections.push(node);
                    self.h.connected();
                }
            }
        }
    }

    fn login(&mut self) {
        self.h.frame(Frame::LoginOk(login_ok(0)));
        let current = self.current();
        self.dir.mark_ok(&current);
    }
}

fn node(id: &str, address: &str, sessions: u64) -> DiscoveredNode {
    DiscoveredNode {
        instance_id: id.into(),
        address: address.into(),
        status: NodeStatus::Up,
        sessions: Some(sessions),
        zone: None,
    }
}

#[test]
fn go_away_moves_the_session_to_another_node_and_the_draining_one_cools_down() {
    let mut d = Driver::new(vec![node("b", "10.0.0.2:7443", 5), node("a", "10.0.0.1:7443", 0)]);
    d.h.start();
    d.pump();
    d.login();
    assert_eq!(d.current(), "10.0.0.1:7443", "the least-loaded node first");
    let id = d.h.send("in flight on a");
    d.h.clear();

    d.h.frame(go_away());
    d.pump();
    assert_eq!(d.connections, ["10.0.0.1:7443", "10.0.0.2:7443"], "straight to the other node");
    assert!(d.dir.cooling("10.0.0.1:7443", d.h.now));
    d.login();
    assert_eq!(d.h.sends(), [id], "the message in flight on the draining node is sent again");

    // Node b is lost a little later (no answer to the heartbeat): it cools down too. Both
    // are cooling now, so the one whose cool-down ends first (a) is tried after the backoff.
    d.h.clear();
    d.h.advance(secs(45));
    assert!(d.h.actions.contains(&Action::Disconnect { code: CloseCode::IdleTimeout }));
    d.pump();
    assert!(d.dir.cooling("10.0.0.2:7443", d.h.now));
    assert!(d.dir.cooling("10.0.0.1:7443", d.h.now));
    assert_eq!(d.connections.last().map(String::as_str), Some("10.0.0.1:7443"));
    // Logging in on a forgives it.
    d.login();
    assert!(!d.dir.cooling("10.0.0.1:7443", d.h.now));
}
