//! Outbox: persistence before transmission, retry until acknowledged, ordering, refusals.

use std::collections::HashSet;

use tether_proto::{ErrorCode, SendError};

use super::*;

fn send_error(id: &str, code: ErrorCode) -> Frame {
    Frame::SendError(SendError { client_msg_id: id.into(), code, message: format!("{code:?}") })
}

#[test]
fn send_is_persisted_and_transmitted_when_online() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let id = h.send("hi");
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    let persists = h.take_persists();
    assert_eq!(persists.len(), 1);
    let PersistOp::OutboxAdd(entry) = &persists[0] else { panic!("{persists:?}") };
    assert_eq!(entry.client_msg_id, id);
    assert_eq!(entry.payload, b"hi");
    assert_eq!(entry.created_ms, 1_700_000_000_000);
    assert_eq!(
        h.take_tx(),
        [Frame::Send(tether_proto::Send {
            client_msg_id: id.clone(),
            to: Address::user("bob"),
            content_type: "text/plain".into(),
            payload: b"hi".to_vec(),
        })]
    );
    assert_eq!(h.s.outbox_len(), 1);
}

#[test]
fn offline_sends_wait_for_login_and_go_out_in_order() {
    let mut h = H::new();
    let ids: Vec<String> = (0..5).map(|i| h.send(&format!("m{i}"))).collect();
    assert!(h.tx.is_empty());
    assert_eq!(h.durable.outbox.len(), 5);
    h.start();
    h.connected();
    assert_eq!(h.sends(), Vec::<String>::new(), "nothing before login_ok");
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.sends(), ids);
}

#[test]
fn in_flight_send_is_retransmitted_after_ack_timeout_with_the_same_id() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    let t = h.now;
    let id = h.send("retry me");
    assert_eq!(h.sends(), std::slice::from_ref(&id));
    h.tx.clear();
    h.run_until(t + secs(10) - ms(1));
    assert!(h.sends().is_empty());
    h.run_until(t + secs(10));
    assert_eq!(h.sends(), std::slice::from_ref(&id));
    h.tx.clear();
    h.run_until(t + secs(20));
    assert_eq!(h.sends(), std::slice::from_ref(&id), "again after another ack_timeout");
    h.tx.clear();

    h.frame(Frame::SendAck(send_ack(&id, 1)));
    assert_eq!(h.s.outbox_len(), 0);
    h.run_until(t + secs(60));
    assert!(h.sends().is_empty(), "no retries once acknowledged");
}

#[test]
fn send_ack_removes_once_and_duplicates_are_ignored() {
    let mut h = H::new();
    h.online(0);
    let id = h.send("x");
    h.clear();
    h.frame(Frame::SendAck(send_ack(&id, 1)));
    assert_eq!(h.take_persists(), [PersistOp::OutboxRemove(id.clone()), PersistOp::Cursor(1)]);
    assert_eq!(h.take_events(), [Event::SendAcked(send_ack(&id, 1).into())]);
    assert_eq!(h.s.inbox_cursor(), 1, "own copy counts as received");

    let mut dup = send_ack(&id, 1);
    dup.duplicate = true;
    h.frame(Frame::SendAck(dup));
    h.frame(Frame::SendAck(send_ack("never-sent", 2)));
    assert!(h.take_persists().is_empty());
    assert!(h.take_events().is_empty());
    assert_eq!(h.s.inbox_cursor(), 1);
    assert!(h.durable.outbox.is_empty());
}

#[test]
fn reconnect_resends_unacknowledged_messages_in_original_order() {
    let mut h = H::new();
    h.online(0);
    let a = h.send("a");
    let b = h.send("b");
    let c = h.send("c");
    let d = h.send("d");
    h.frame(Frame::SendAck(send_ack(&b, 1)));
    h.clear();
    h.disconnected(None);
    let e = h.send("e (while offline)");
    assert!(h.sends().is_empty());
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(1)));
    assert_eq!(h.sends(), [a.clone(), c.clone(), d.clone(), e.clone()]);
    // Acks in any order complete them; each is reported once.
    for (id, seq) in [(&d, 4), (&a, 2), (&e, 5), (&c, 3)] {
        h.frame(Frame::SendAck(send_ack(id, seq)));
    }
    let acked: Vec<_> = h
        .events
        .iter()
        .filter_map(|ev| match ev {
            Event::SendAcked(ack) => Some(ack.client_msg_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [d, a, e, c], "b was reported before the disconnect");
    assert!(!acked.contains(&b));
    assert_eq!(h.s.outbox_len(), 0);
    assert_eq!(h.s.inbox_cursor(), 5);
    assert!(h.messages().is_empty());
}

#[test]
fn window_limits_messages_in_flight() {
    let mut cfg = config();
    cfg.max_in_flight = 2;
    let mut h = H::with_config(cfg);
    h.online(0);
    h.clear();
    let ids: Vec<String> = (0..5).map(|i| h.send(&i.to_string())).collect();
    assert_eq!(h.sends(), ids[..2]);
    h.tx.clear();
    h.frame(Frame::SendAck(send_ack(&ids[0], 1)));
    assert_eq!(h.sends(), ids[2..3]);
    h.tx.clear();
    // After the ack timeout only the window (ids 1 and 2) is resent.
    h.advance(secs(10));
    assert_eq!(h.sends(), ids[1..3]);
}

#[test]
fn transient_send_error_retries_permanent_one_fails() {
    let mut h = H::new();
    h.online(0);
    let a = h.send("a");
    let b = h.send("b");
    h.clear();
    let t = h.now;
    h.advance(secs(5));
    h.frame(send_error(&a, ErrorCode::Unavailable));
    assert!(h.events.is_empty() && h.persists.is_empty());
    assert_eq!(h.s.outbox_len(), 2);
    // b is due at t+10 (its ack timeout), a at t+15 (ack timeout after the error).
    h.run_until(t + secs(10));
    assert_eq!(h.sends(), std::slice::from_ref(&b));
    h.tx.clear();
    h.run_until(t + secs(15));
    assert_eq!(h.sends(), std::slice::from_ref(&a));

    h.frame(send_error(&b, ErrorCode::InvalidField));
    assert_eq!(h.take_persists(), [PersistOp::OutboxRemove(b.clone())]);
    assert_eq!(
        h.take_events(),
        [Event::SendFailed { client_msg_id: b, code: ErrorCode::InvalidField, message: "InvalidField".into() }]
    );
    assert_eq!(h.s.outbox_len(), 1);
    // Errors for unknown ids change nothing.
    h.frame(send_error("unknown", ErrorCode::Unsupported));
    h.frame(send_error("unknown", ErrorCode::Internal));
    assert!(h.events.is_empty() && h.persists.is_empty());
}

#[test]
fn rate_limited_send_stays_in_the_outbox_and_is_retried() {
    let mut h = H::new();
    h.online(0);
    let a = h.send("a");
    h.clear();
    let t = h.now;
    h.frame(send_error(&a, ErrorCode::RateLimited));
    assert!(h.events.is_empty() && h.persists.is_empty());
    assert_eq!(h.s.outbox_len(), 1);
    h.run_until(t + secs(10));
    assert_eq!(h.sends(), std::slice::from_ref(&a));
}

#[test]
fn own_message_in_the_inbox_completes_the_outbox_entry() {
    let mut h = H::new();
    h.online(0);
    let id = h.send("did it arrive?");
    // The server stored it but the connection died before the send_ack.
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(2)));
    h.clear();
    // The backlog: a message from bob, then our own copy.
    h.frame(Frame::Deliver(deliver(1)));
    let mut own = deliver(2);
    own.from = USER.into();
    own.from_device = DEVICE.into();
    own.client_msg_id = id.clone();
    h.frame(Frame::Deliver(own.clone()));
    assert_eq!(h.messages(), [1], "own copy is not handed to the app");
    assert!(h.events.contains(&Event::SendAcked(
        SendAck { client_msg_id: id.clone(), msg_id: own.msg_id, seq: 2, ts: own.ts, duplicate: true }.into()
    )));
    assert!(h.persists.contains(&PersistOp::OutboxRemove(id.clone())));
    assert_eq!(h.s.outbox_len(), 0);
    assert_eq!(h.s.inbox_cursor(), 2);
    // The server's duplicate answer to our retry changes nothing.
    h.clear();
    let mut dup = send_ack(&id, 2);
    dup.duplicate = true;
    h.frame(Frame::SendAck(dup));
    assert!(h.events.is_empty() && h.persists.is_empty());

    // Our user's message from another device is a normal message.
    let mut other = deliver(3);
    other.from = USER.into();
    other.from_device = "alice-desktop".into();
    h.frame(Frame::Deliver(other));
    assert_eq!(h.messages(), [3]);
}

#[test]
fn persisted_outbox_is_resent_after_restart() {
    let mut h = H::new();
    let a = h.send("a");
    let b = h.send("b");
    let durable = h.durable.clone();
    drop(h);

    let mut h = H::with(config(), Credential::Token("jwt".into()), durable, 2);
    assert_eq!(h.s.outbox_len(), 2);
    let c = h.send("c");
    assert!(![&a, &b].contains(&&c));
    h.online(0);
    assert_eq!(h.sends(), [a, b, c]);
}

#[test]
fn message_ids_are_unique() {
    let mut seen = HashSet::new();
    for seed in 0..10 {
        let mut h = H::with(config(), Credential::Token("jwt".into()), PersistedState::default(), seed);
        for _ in 0..1000 {
            assert!(seen.insert(h.send("")));
        }
    }
}

#[test]
fn message_over_the_server_frame_limit_fails_locally() {
    let mut h = H::new();
    h.start();
    h.connected();
    let mut ok = login_ok(0);
    ok.max_frame = 1024;
    h.frame(Frame::LoginOk(ok));
    h.clear();
    let big = h.send(&"x".repeat(2000));
    let small = h.send(&"y".repeat(700));
    assert_eq!(h.sends(), [small]);
    assert!(h.events.iter().any(|e| matches!(
        e,
        Event::SendFailed { client_msg_id, code: ErrorCode::FrameTooLarge, .. } if *client_msg_id == big
    )));
    assert_eq!(h.s.outbox_len(), 1);
    assert!(h.persists.contains(&PersistOp::OutboxRemove(big)));
}

#[test]
fn the_outbox_is_listed_and_a_message_can_be_cancelled_until_acknowledged() {
    let mut h = H::new();
    // Offline: queued, listed, not transmitted.
    let a = h.send("a");
    let b = h.send("b");
    let listed: Vec<String> = h.s.outbox().into_iter().map(|e| e.client_msg_id).collect();
    assert_eq!(listed, [a.clone(), b.clone()]);
    h.clear();
    // Never transmitted: cancelled for good, and the journal forgets it.
    assert_eq!(h.s.cancel(&a), Some(false));
    h.drain();
    assert_eq!(h.persists, [PersistOp::OutboxRemove(a.clone())]);
    assert_eq!(h.take_events(), [Event::SendCancelled { client_msg_id: a.clone(), maybe_delivered: false }]);
    assert_eq!(h.s.cancel(&a), None, "only once");
    // Online: only b goes out; once transmitted, a cancel says it may have arrived.
    h.online(0);
    assert_eq!(h.sends(), std::slice::from_ref(&b));
    assert_eq!(h.s.cancel(&b), Some(true));
    h.drain();
    // Its ack may still come: it is ignored (the message already left the outbox).
    h.frame(Frame::SendAck(send_ack(&b, 1)));
    assert!(h.s.outbox().is_empty());
    assert_eq!(h.s.cancel("never-sent"), None);
    // An id chosen by the driver.
    h.s.send_with_id("mine".into(), Address::user("bob"), "text/plain".into(), b"x".to_vec(), h.now, 1);
    h.s.send_with_id("mine".into(), Address::user("bob"), "text/plain".into(), b"x".to_vec(), h.now, 1);
    assert_eq!(h.s.outbox().len(), 1, "an id already queued is not queued twice");
}

#[test]
fn a_message_restored_from_the_journal_may_have_been_delivered() {
    let mut h = H::new();
    let a = h.send("a");
    let persisted = h.durable.clone();
    let mut h2 = H::with(config(), Credential::Token("jwt".into()), persisted, 2);
    assert_eq!(h2.s.outbox().len(), 1);
    assert_eq!(h2.s.cancel(&a), Some(true), "an earlier run may have transmitted it");
}
