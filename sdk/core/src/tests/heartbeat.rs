//! Heartbeat schedule and dead-connection detection.

use tether_proto::Pong;

use super::*;

fn pong_for_pings(h: &mut H) -> usize {
    let nonces: Vec<u64> =
        h.tx.iter()
            .filter_map(|f| match f {
                Frame::Ping(p) => Some(p.nonce),
                _ => None,
            })
            .collect();
    h.tx.clear();
    for nonce in &nonces {
        h.frame(Frame::Pong(Pong { nonce: *nonce }));
    }
    nonces.len()
}

#[test]
fn ping_exactly_after_interval_of_silence() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    assert_eq!(h.s.poll_timeout(), Some(t + secs(20)));
    h.run_until(t + secs(20) - ms(1));
    assert_eq!(h.pings(), 0);
    h.run_until(t + secs(20));
    assert_eq!(h.pings(), 1);
    assert!(h.actions.is_empty());
    // The pong comes back a second later: the next ping is due 20 s after the last one.
    h.run_until(t + secs(21));
    assert_eq!(pong_for_pings(&mut h), 1);
    h.run_until(t + secs(40) - ms(1));
    assert_eq!(h.pings(), 0);
    h.run_until(t + secs(40));
    assert_eq!(h.pings(), 1);
}

#[test]
fn pings_keep_a_quiet_connection_alive_for_hours() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let end = h.now + secs(3 * 3600);
    let mut pings = 0;
    while h.now < end {
        h.advance(secs(1));
        pings += pong_for_pings(&mut h);
    }
    assert!(h.actions.is_empty(), "{:?}", h.actions);
    assert_eq!(h.s.state(), &SessionState::Online);
    assert_eq!(pings, 3 * 3600 / 20);
}

#[test]
fn dead_connection_detected_after_interval_plus_timeout() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    h.run_until(t + secs(30) - ms(1));
    assert_eq!(h.pings(), 1, "one ping, no answer");
    assert!(h.actions.is_empty());
    assert_eq!(h.s.state(), &SessionState::Online);
    h.run_until(t + secs(30));
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::IdleTimeout }]);
    assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
    // The driver's late report of the closed connection is ignored.
    h.disconnected(None);
    assert!(matches!(h.s.state(), SessionState::Backoff { attempt: 0, .. }));
    h.advance(secs(1));
    assert_eq!(h.connects(), 1);
}

#[test]
fn no_ping_while_traffic_flows_both_ways() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let mut seq = 0;
    for _ in 0..120 {
        // Every 5 s the app sends and the server acks a moment later.
        let id = h.send("tick");
        h.advance(ms(100));
        seq += 1;
        h.frame(Frame::SendAck(send_ack(&id, seq)));
        h.advance(ms(4900));
    }
    assert_eq!(h.pings(), 0);
    assert!(h.actions.is_empty());
    assert_eq!(h.s.outbox_len(), 0);
}

#[test]
fn no_ping_while_receiving_and_acking() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    for seq in 1..=120 {
        h.frame(Frame::Deliver(deliver(seq)));
        h.advance(secs(5));
    }
    assert_eq!(h.pings(), 0);
    assert!(h.actions.is_empty());
    assert_eq!(h.messages().len(), 120);
}

#[test]
fn ping_when_only_transmitting_and_dead_when_nothing_comes_back() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    for _ in 0..3 {
        h.send("into the void");
        h.advance(secs(5));
    }
    // Transmitting all the time, receiving nothing: a ping once the receive side is silent
    // for the interval, then the connection is declared dead.
    h.run_until(t + secs(20) - ms(1));
    assert_eq!(h.pings(), 0);
    h.run_until(t + secs(20));
    assert_eq!(h.pings(), 1);
    h.run_until(t + secs(30) - ms(1));
    assert!(h.actions.is_empty());
    h.run_until(t + secs(30));
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::IdleTimeout }]);
}

#[test]
fn heartbeat_follows_a_shorter_server_idle_timeout() {
    let mut h = H::new();
    h.start();
    h.connected();
    let mut ok = login_ok(0);
    ok.idle_timeout_ms = 8_000;
    h.frame(Frame::LoginOk(ok));
    h.clear();
    let t = h.now;
    h.run_until(t + secs(4) - ms(1));
    assert_eq!(h.pings(), 0);
    h.run_until(t + secs(4));
    assert_eq!(h.pings(), 1);
    // Dead detection uses the same interval: 4 s + 10 s.
    h.run_until(t + secs(14));
    assert_eq!(h.take_actions(), [Action::Disconnect { code: CloseCode::IdleTimeout }]);
}
