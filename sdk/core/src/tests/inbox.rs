//! Inbox: dedup, ordering, gaps and sync, cumulative acks.

use tether_proto::{Ack, Sync};

use super::*;

fn syncs(h: &H) -> Vec<Sync> {
    h.tx.iter()
        .filter_map(|f| match f {
            Frame::Sync(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn acks(h: &H) -> Vec<u64> {
    h.tx.iter()
        .filter_map(|f| match f {
            Frame::Ack(Ack { inbox, .. }) => Some(*inbox),
            _ => None,
        })
        .collect()
}

fn sync(after: u64, until: Option<u64>) -> Sync {
    Sync { after, until, room: None }
}

#[test]
fn replayed_deliveries_reach_the_app_once() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(2)));
    h.frame(Frame::Deliver(deliver(1)));
    assert_eq!(h.messages(), [1, 2]);
    assert_eq!(h.events[0], Event::Message(deliver(1).into()));
    // A reconnect replays from the cursor; what was seen is not seen again.
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(2));
    h.frame(Frame::LoginOk(login_ok(3)));
    for seq in [1, 2, 3, 3] {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(h.messages(), [1, 2, 3]);
    assert_eq!(h.durable.inbox_cursor, Some(3));
}

#[test]
fn persisted_cursor_is_presented_and_respected() {
    let persisted = PersistedState { inbox_cursor: Some(41), ..PersistedState::default() };
    let mut h = H::with(config(), Credential::Token("jwt".into()), persisted, 1);
    assert_eq!(h.s.inbox_cursor(), 41);
    h.start();
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(41));
    h.frame(Frame::LoginOk(login_ok(42)));
    h.clear();
    h.frame(Frame::Deliver(deliver(40)));
    h.frame(Frame::Deliver(deliver(41)));
    h.frame(Frame::Deliver(deliver(42)));
    assert_eq!(h.messages(), [42]);
    assert_eq!(h.take_persists(), [PersistOp::Cursor(42)]);
}

#[test]
fn deliveries_outside_a_session_are_ignored() {
    let mut h = H::new();
    h.start();
    h.connected();
    h.clear();
    h.frame(Frame::Deliver(deliver(1)));
    assert!(h.events.is_empty());
    assert_eq!(h.s.inbox_cursor(), 0);
}

#[test]
fn gap_is_synced_and_drained_in_order_when_filled() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(4)));
    assert_eq!(syncs(&h), [sync(1, Some(3))]);
    h.frame(Frame::Deliver(deliver(6)));
    assert_eq!(syncs(&h), [sync(1, Some(3)), sync(4, Some(5))], "only the newly missing range is asked for");
    h.frame(Frame::Deliver(deliver(3)));
    assert_eq!(h.messages(), [1]);
    h.frame(Frame::Deliver(deliver(2)));
    assert_eq!(h.messages(), [1, 2, 3, 4]);
    h.frame(Frame::Deliver(deliver(5)));
    assert_eq!(h.messages(), [1, 2, 3, 4, 5, 6]);
    assert_eq!(h.s.inbox_cursor(), 6);
    // Cursor moves collapse into one op per call.
    assert_eq!(h.persists, [PersistOp::Cursor(1), PersistOp::Cursor(4), PersistOp::Cursor(6)]);
    // The gap is closed: no more syncs.
    h.tx.clear();
    h.advance(secs(60));
    assert!(syncs(&h).is_empty());
}

#[test]
fn open_gap_is_synced_again_after_gap_timeout() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(3)));
    assert_eq!(syncs(&h), [sync(1, Some(2))]);
    h.tx.clear();
    h.run_until(t + secs(3) - ms(1));
    assert!(syncs(&h).is_empty());
    h.run_until(t + secs(3));
    assert_eq!(syncs(&h), [sync(1, Some(2))]);
    h.tx.clear();
    h.run_until(t + secs(6));
    assert_eq!(syncs(&h), [sync(1, Some(2))]);
    h.tx.clear();
    h.frame(Frame::Deliver(deliver(2)));
    assert_eq!(h.messages(), [1, 2, 3]);
    h.advance(secs(30));
    assert!(syncs(&h).is_empty());
}

#[test]
fn gap_timer_restarts_on_progress() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(4)));
    h.tx.clear();
    h.run_until(t + secs(2));
    h.frame(Frame::Deliver(deliver(2)));
    // Progress at t+2 s: the re-sync waits until t+5 s and asks from the new cursor.
    h.run_until(t + secs(5) - ms(1));
    assert!(syncs(&h).is_empty());
    h.run_until(t + secs(5));
    assert_eq!(syncs(&h), [sync(2, Some(3))]);
}

#[test]
fn backlog_announced_at_login_is_synced_if_it_stalls() {
    let mut h = H::new();
    h.start();
    h.connected();
    h.frame(Frame::LoginOk(login_ok(10)));
    h.clear();
    let t = h.now;
    for seq in 1..=4 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert!(syncs(&h).is_empty(), "the server sends the backlog by itself");
    h.run_until(t + secs(3) - ms(1));
    assert!(syncs(&h).is_empty());
    h.run_until(t + secs(3));
    assert_eq!(syncs(&h), [sync(4, None)]);
    h.tx.clear();
    for seq in 5..=10 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    h.advance(secs(30));
    assert!(syncs(&h).is_empty());
    assert_eq!(h.messages(), (1..=10).collect::<Vec<_>>());

    // A complete backlog needs no sync at all.
    let mut h = H::new();
    h.start();
    h.connected();
    h.frame(Frame::LoginOk(login_ok(3)));
    for seq in 1..=3 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    h.tx.clear();
    h.advance(secs(30));
    assert!(syncs(&h).is_empty());
}

#[test]
fn reorder_buffer_is_bounded() {
    let mut cfg = config();
    cfg.max_reorder = 3;
    let mut h = H::with_config(cfg);
    h.online(0);
    h.clear();
    let t = h.now;
    for seq in 2..=10 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(syncs(&h), [sync(0, Some(1))]);
    h.tx.clear();
    h.run_until(t + secs(3));
    assert_eq!(syncs(&h), [sync(0, Some(10))], "re-sync covers dropped messages");
    h.frame(Frame::Deliver(deliver(1)));
    assert_eq!(h.messages(), [1, 2, 3, 4]);
    for seq in 5..=10 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(h.messages(), (1..=10).collect::<Vec<_>>());
}

#[test]
fn acks_are_batched_by_count() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    for seq in 1..=63 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert!(acks(&h).is_empty());
    h.frame(Frame::Deliver(deliver(64)));
    assert_eq!(acks(&h), [64]);
    for seq in 65..=200 {
        h.frame(Frame::Deliver(deliver(seq)));
    }
    assert_eq!(acks(&h), [64, 128, 192]);
    h.advance(ms(50));
    assert_eq!(acks(&h), [64, 128, 192, 200]);
}

#[test]
fn acks_are_delayed_and_never_repeat() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    h.frame(Frame::Deliver(deliver(1)));
    assert_eq!(h.s.poll_timeout(), Some(t + ms(50)));
    h.run_until(t + ms(20));
    h.frame(Frame::Deliver(deliver(2)));
    h.run_until(t + ms(50) - Duration::from_nanos(1));
    assert!(acks(&h).is_empty());
    h.run_until(t + ms(50));
    assert_eq!(acks(&h), [2], "due ack_delay after the first un-acked advance");
    // Duplicates and time passing produce no ack that does not advance.
    h.frame(Frame::Deliver(deliver(2)));
    h.advance(secs(10));
    assert_eq!(acks(&h), [2]);
    // Own messages advance the cursor too, and are acked.
    let id = h.send("x");
    h.frame(Frame::SendAck(send_ack(&id, 3)));
    h.advance(ms(50));
    assert_eq!(acks(&h), [2, 3]);
}

#[test]
fn reconnect_does_not_re_ack_what_login_carried() {
    let mut h = H::new();
    h.online(0);
    h.frame(Frame::Deliver(deliver(1)));
    // The connection drops before the delayed ack goes out.
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().inbox_cursor, Some(1));
    h.frame(Frame::LoginOk(login_ok(1)));
    h.advance(secs(5));
    assert!(acks(&h).is_empty(), "login carried the cursor");
}

#[test]
fn buffered_messages_survive_a_reconnect() {
    let mut h = H::new();
    h.online(0);
    h.frame(Frame::Deliver(deliver(2)));
    h.frame(Frame::Deliver(deliver(3)));
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(3)));
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(deliver(2)));
    h.frame(Frame::Deliver(deliver(3)));
    assert_eq!(h.messages(), [1, 2, 3]);
}
