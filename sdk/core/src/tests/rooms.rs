//! Rooms: per-room trackers (dedup, order, gaps, acks), own messages, truncation, history,
//! cursors in login and in the durable state, join/leave requests.

use std::collections::BTreeMap;

use tether_proto::{
    Ack, ErrorCode, ErrorFrame, HistoryTruncated, JoinRoom, LeaveRoom, RoomEvent, RoomEventKind, RoomJoined, RoomLeft,
    Sync,
};

use super::*;

fn room_msg(room: &str, seq: u64) -> Deliver {
    Deliver {
        msg_id: 30_000 + seq,
        seq,
        from: "bob".into(),
        from_device: "bob-desktop".into(),
        client_msg_id: format!("bob-{room}-{seq}"),
        to: Address::room(room),
        ts: 1_700_000_000_000 + seq,
        content_type: "text/plain".into(),
        payload: format!("{room}:{seq}").into_bytes(),
    }
}

fn joined(room: &str, head: u64) -> Frame {
    Frame::RoomJoined(RoomJoined { room: room.into(), head, members: 2, online: 1 })
}

fn cursors(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(r, c)| (r.to_string(), *c)).collect()
}

fn room_sync(room: &str, after: u64, until: Option<u64>) -> Sync {
    Sync { after, until, room: Some(room.into()) }
}

fn error(code: ErrorCode) -> Frame {
    Frame::Error(ErrorFrame { code, message: format!("{code:?}"), fatal: false })
}

impl H {
    /// Seqs of the messages handed to the app for `room` (`None`: the inbox), in order.
    fn messages_of(&self, room: Option<&str>) -> Vec<u64> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Message(d) => {
                    let r = match &d.to {
                        crate::Target::Room(r) => Some(r.as_str()),
                        crate::Target::User(_) => None,
                    };
                    (r == room).then_some(d.seq)
                }
                _ => None,
            })
            .collect()
    }

    fn syncs(&self) -> Vec<Sync> {
        self.tx
            .iter()
            .filter_map(|f| match f {
                Frame::Sync(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn acks(&self) -> Vec<Ack> {
        self.tx
            .iter()
            .filter_map(|f| match f {
                Frame::Ack(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    fn send_to_room(&mut self, room: &str, payload: &str) -> String {
        let id = self.s.send(Address::room(room), "text/plain".into(), payload.as_bytes().to_vec(), self.now, 1);
        self.drain();
        id
    }

    /// Online with `room` joined at `head`; outputs cleared.
    fn in_room(room: &str, head: u64) -> H {
        let mut h = H::new();
        h.online(0);
        h.s.join_room(room, h.now);
        h.drain();
        h.frame(joined(room, head));
        h.clear();
        h
    }
}

#[test]
fn join_starts_the_room_at_its_head_and_persists_it() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    h.s.join_room("r1", h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::JoinRoom(JoinRoom { room: "r1".into() })]);
    assert_eq!(h.s.room_cursor("r1"), None, "no cursor before the answer");
    h.frame(joined("r1", 57));
    assert_eq!(h.s.room_cursor("r1"), Some(57));
    assert_eq!(h.take_persists(), [PersistOp::RoomCursor { room: "r1".into(), seq: 57 }]);
    assert_eq!(
        h.take_events(),
        [Event::RoomJoined(RoomJoined { room: "r1".into(), head: 57, members: 2, online: 1 }.into())]
    );
    // Older messages are not handed over (a new member starts at the head)...
    h.frame(Frame::Deliver(room_msg("r1", 57)));
    assert!(h.events.is_empty());
    // ...the following ones are.
    h.frame(Frame::Deliver(room_msg("r1", 58)));
    assert_eq!(h.messages_of(Some("r1")), [58]);
    assert_eq!(h.take_events(), [Event::Message(room_msg("r1", 58).into())]);
    // Joining again keeps the cursor.
    h.s.join_room("r1", h.now);
    h.drain();
    h.frame(joined("r1", 90));
    assert_eq!(h.s.room_cursor("r1"), Some(58));
}

#[test]
fn room_messages_are_deduplicated_ordered_and_gaps_synced_per_room() {
    let mut h = H::in_room("r1", 10);
    h.s.join_room("r2", h.now);
    h.drain();
    h.frame(joined("r2", 0));
    h.clear();
    h.frame(Frame::Deliver(room_msg("r1", 11)));
    h.frame(Frame::Deliver(room_msg("r1", 11)));
    h.frame(Frame::Deliver(room_msg("r2", 1)));
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(room_msg("r1", 14)));
    assert_eq!(h.syncs(), [room_sync("r1", 11, Some(13))], "the gap is asked for in that room only");
    h.frame(Frame::Deliver(room_msg("r2", 2)));
    h.frame(Frame::Deliver(room_msg("r1", 13)));
    h.frame(Frame::Deliver(room_msg("r1", 12)));
    h.frame(Frame::Deliver(room_msg("r1", 12)));
    h.frame(Frame::Deliver(room_msg("r1", 14)));
    assert_eq!(h.messages_of(Some("r1")), [11, 12, 13, 14]);
    assert_eq!(h.messages_of(Some("r2")), [1, 2]);
    assert_eq!(h.messages_of(None), [1]);
    assert_eq!(h.s.room_cursors(), cursors(&[("r1", 14), ("r2", 2)]));
    assert_eq!(h.s.inbox_cursor(), 1);
    assert_eq!(h.durable.room_cursors, cursors(&[("r1", 14), ("r2", 2)]));
    assert_eq!(h.durable.inbox_cursor, Some(1));
    assert_eq!(h.durable, h.s.persisted_state());
    h.tx.clear();
    h.advance(secs(60));
    assert!(h.syncs().is_empty(), "no gap left");
}

#[test]
fn an_open_room_gap_is_synced_again_after_gap_timeout() {
    let mut h = H::in_room("r1", 0);
    let t = h.now;
    h.frame(Frame::Deliver(room_msg("r1", 1)));
    h.frame(Frame::Deliver(room_msg("r1", 4)));
    assert_eq!(h.syncs(), [room_sync("r1", 1, Some(3))]);
    h.tx.clear();
    h.run_until(t + secs(3) - ms(1));
    assert!(h.syncs().is_empty());
    h.run_until(t + secs(3));
    assert_eq!(h.syncs(), [room_sync("r1", 1, Some(3))]);
    h.tx.clear();
    h.frame(Frame::Deliver(room_msg("r1", 2)));
    h.frame(Frame::Deliver(room_msg("r1", 3)));
    assert_eq!(h.messages_of(Some("r1")), [1, 2, 3, 4]);
    h.advance(secs(30));
    assert!(h.syncs().is_empty());
}

#[test]
fn acks_carry_the_rooms_whose_cursor_moved() {
    let mut h = H::in_room("r1", 0);
    h.s.join_room("r2", h.now);
    h.drain();
    h.frame(joined("r2", 5));
    h.clear();
    let t = h.now;
    h.frame(Frame::Deliver(room_msg("r1", 1)));
    h.frame(Frame::Deliver(room_msg("r1", 2)));
    h.run_until(t + ms(50) - Duration::from_nanos(1));
    assert!(h.acks().is_empty(), "delayed like inbox acks");
    h.run_until(t + ms(50));
    assert_eq!(h.acks(), [Ack { inbox: 0, rooms: Some(cursors(&[("r1", 2)])) }], "inbox repeats what the server has");
    h.tx.clear();
    // The inbox and another room move: one ack carries both; r1 did not move and is left out.
    h.frame(Frame::Deliver(deliver(1)));
    h.frame(Frame::Deliver(room_msg("r2", 6)));
    h.advance(ms(50));
    assert_eq!(h.acks(), [Ack { inbox: 1, rooms: Some(cursors(&[("r2", 6)])) }]);
    h.tx.clear();
    // Only the inbox moves: no rooms field.
    h.frame(Frame::Deliver(deliver(2)));
    h.advance(ms(50));
    assert_eq!(h.acks(), [Ack { inbox: 2, rooms: None }]);
    h.tx.clear();
    // A room past ack_every is acked at once; the inbox's pending advance rides along.
    h.frame(Frame::Deliver(deliver(3)));
    for seq in 3..=66 {
        h.frame(Frame::Deliver(room_msg("r1", seq)));
    }
    assert_eq!(h.acks(), [Ack { inbox: 3, rooms: Some(cursors(&[("r1", 66)])) }]);
    h.tx.clear();
    h.advance(secs(10));
    assert!(h.acks().is_empty(), "nothing acked twice");
    // close() acks everything handed over.
    h.frame(Frame::Deliver(room_msg("r2", 7)));
    h.s.close(h.now);
    h.drain();
    assert_eq!(h.acks(), [Ack { inbox: 3, rooms: Some(cursors(&[("r2", 7)])) }]);
}

#[test]
fn own_room_message_is_marked_by_its_send_ack_in_the_room_not_the_inbox() {
    let mut h = H::in_room("r1", 3);
    let id = h.send_to_room("r1", "hello room");
    let Some(Frame::Send(send)) = h.tx.first() else { panic!("{:?}", h.tx) };
    assert_eq!(send.to, Address::room("r1"));
    h.clear();
    h.frame(Frame::SendAck(send_ack(&id, 4)));
    assert_eq!(h.s.room_cursor("r1"), Some(4));
    assert_eq!(h.s.inbox_cursor(), 0);
    assert_eq!(h.s.outbox_len(), 0);
    assert!(h.persists.contains(&PersistOp::RoomCursor { room: "r1".into(), seq: 4 }));
    assert!(h.persists.iter().all(|p| !matches!(p, PersistOp::Cursor(_))));
    assert_eq!(h.messages_of(Some("r1")), Vec::<u64>::new(), "not handed to the app");
    // The next room message follows on directly, no gap.
    h.frame(Frame::Deliver(room_msg("r1", 5)));
    assert_eq!(h.messages_of(Some("r1")), [5]);
    assert!(h.syncs().is_empty());
    // An own room message acked out of order fills its place in the room's order.
    let a = h.send_to_room("r1", "a");
    h.frame(Frame::Deliver(room_msg("r1", 7)));
    h.frame(Frame::SendAck(send_ack(&a, 6)));
    assert_eq!(h.messages_of(Some("r1")), [5, 7]);
    assert_eq!(h.s.room_cursor("r1"), Some(7));
}

#[test]
fn own_room_message_in_the_backlog_completes_the_send() {
    let mut h = H::in_room("r1", 0);
    let id = h.send_to_room("r1", "lost ack");
    // The send_ack is lost with the connection.
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().room_cursors, Some(cursors(&[("r1", 0)])));
    h.frame(Frame::LoginOk(login_ok(0)));
    let mut own = room_msg("r1", 1);
    own.from = USER.into();
    own.from_device = DEVICE.into();
    own.client_msg_id = id.clone();
    // The backlog brings it before the resent send is answered.
    h.frame(Frame::Deliver(own));
    h.frame(Frame::Deliver(room_msg("r1", 2)));
    assert_eq!(h.s.outbox_len(), 0);
    assert!(h.events.iter().any(|e| matches!(e, Event::SendAcked(a) if a.client_msg_id == id && a.seq == 1)));
    assert_eq!(h.messages_of(Some("r1")), [2]);
    assert_eq!(h.s.room_cursor("r1"), Some(2));
    // The late answer to the resend changes nothing.
    h.clear();
    h.frame(Frame::SendAck(send_ack(&id, 1)));
    assert!(h.events.is_empty());
}

#[test]
fn history_truncated_moves_the_cursor_and_is_reported() {
    let persisted = PersistedState { room_cursors: cursors(&[("r1", 10)]), ..PersistedState::default() };
    let mut h = H::with(config(), Credential::Token("jwt".into()), persisted, 1);
    h.online(0);
    h.clear();
    let t = HistoryTruncated { room: "r1".into(), after: 10, first_seq: 50 };
    h.frame(Frame::HistoryTruncated(t.clone()));
    for seq in 50..=52 {
        h.frame(Frame::Deliver(room_msg("r1", seq)));
    }
    assert_eq!(h.events[0], Event::HistoryTruncated(t.into()));
    assert_eq!(h.messages_of(Some("r1")), [50, 51, 52]);
    assert!(h.syncs().is_empty(), "the cut is not a gap");
    assert_eq!(h.durable.room_cursors, cursors(&[("r1", 52)]));
    assert!(h.persists.contains(&PersistOp::RoomCursor { room: "r1".into(), seq: 49 }));
    h.advance(ms(50));
    assert_eq!(h.acks(), [Ack { inbox: 0, rooms: Some(cursors(&[("r1", 52)])) }]);

    // Messages buffered ahead of a cut are handed once it arrives; older ones are dropped.
    let mut h = H::in_room("r2", 0);
    h.frame(Frame::Deliver(room_msg("r2", 3)));
    h.frame(Frame::Deliver(room_msg("r2", 8)));
    h.frame(Frame::HistoryTruncated(HistoryTruncated { room: "r2".into(), after: 0, first_seq: 8 }));
    assert_eq!(h.messages_of(Some("r2")), [8]);
    assert_eq!(h.s.room_cursor("r2"), Some(8));
    // A cut behind the cursor moves nothing.
    h.frame(Frame::HistoryTruncated(HistoryTruncated { room: "r2".into(), after: 0, first_seq: 4 }));
    assert_eq!(h.s.room_cursor("r2"), Some(8));
}

#[test]
fn room_cursors_are_presented_in_every_login() {
    let mut h = H::in_room("r1", 0);
    h.s.join_room("r2", h.now);
    h.drain();
    h.frame(joined("r2", 100));
    h.frame(Frame::Deliver(room_msg("r1", 1)));
    h.frame(Frame::Deliver(room_msg("r1", 2)));
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().room_cursors, Some(cursors(&[("r1", 2), ("r2", 100)])));
    assert_eq!(h.login_frame().inbox_cursor, Some(0));
    h.frame(Frame::LoginOk(login_ok(0)));
    // The backlog after the cursors: replays are dropped, the rest handed in order.
    for seq in [1, 2, 3, 4] {
        h.frame(Frame::Deliver(room_msg("r1", seq)));
    }
    h.frame(Frame::Deliver(room_msg("r2", 101)));
    assert_eq!(h.messages_of(Some("r1")), [3, 4]);
    assert_eq!(h.messages_of(Some("r2")), [101]);
    h.advance(secs(5));
    // The login carried 2 and 100: the ack tells only what moved since.
    assert_eq!(h.acks(), [Ack { inbox: 0, rooms: Some(cursors(&[("r1", 4), ("r2", 101)])) }]);
    // Without any room the login has no room_cursors field.
    let mut h = H::new();
    h.start();
    h.connected();
    assert_eq!(h.login_frame().room_cursors, None);
}

#[test]
fn persisted_room_cursors_are_restored_and_replayed() {
    let persisted = PersistedState { room_cursors: cursors(&[("a", 7), ("b", 0)]), ..PersistedState::default() };
    let mut h = H::with(config(), Credential::Token("jwt".into()), persisted.clone(), 1);
    assert_eq!(h.s.persisted_state(), persisted);
    assert_eq!(h.s.room_cursor("a"), Some(7));
    h.start();
    h.connected();
    assert_eq!(h.login_frame().room_cursors, Some(cursors(&[("a", 7), ("b", 0)])));
    h.frame(Frame::LoginOk(login_ok(0)));
    h.clear();
    for seq in [6, 7, 8, 9] {
        h.frame(Frame::Deliver(room_msg("a", seq)));
    }
    h.frame(Frame::Deliver(room_msg("b", 1)));
    assert_eq!(h.messages_of(Some("a")), [8, 9]);
    // Consecutive moves of one room's cursor collapse per call; the durable state follows.
    assert_eq!(
        h.take_persists(),
        [
            PersistOp::RoomCursor { room: "a".into(), seq: 8 },
            PersistOp::RoomCursor { room: "a".into(), seq: 9 },
            PersistOp::RoomCursor { room: "b".into(), seq: 1 },
        ]
    );
    assert_eq!(h.durable.room_cursors, cursors(&[("a", 9), ("b", 1)]));
    assert_eq!(h.durable, h.s.persisted_state());
    // A new session from the durable state picks up there.
    let durable = h.durable.clone();
    let mut h = H::with(config(), Credential::Token("jwt".into()), durable, 2);
    h.start();
    h.connected();
    assert_eq!(h.login_frame().room_cursors, Some(cursors(&[("a", 9), ("b", 1)])));
}

#[test]
fn leaving_forgets_the_cursor_and_drops_late_messages() {
    let mut h = H::in_room("r1", 0);
    h.frame(Frame::Deliver(room_msg("r1", 1)));
    h.clear();
    h.s.leave_room("r1", h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::LeaveRoom(LeaveRoom { room: "r1".into() })]);
    // Still a member until the answer.
    h.frame(Frame::Deliver(room_msg("r1", 2)));
    h.frame(Frame::RoomLeft(RoomLeft { room: "r1".into() }));
    assert_eq!(h.s.room_cursor("r1"), None);
    assert!(h.persists.contains(&PersistOp::RoomForget("r1".into())));
    assert!(!h.durable.room_cursors.contains_key("r1"));
    assert!(h.events.contains(&Event::RoomLeft("r1".into())));
    // A message that was under way does not bring the room back.
    h.frame(Frame::Deliver(room_msg("r1", 3)));
    assert_eq!(h.messages_of(Some("r1")), [2]);
    assert_eq!(h.s.room_cursor("r1"), None);
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().room_cursors, None);
    // Joining again starts at the new head.
    h.frame(Frame::LoginOk(login_ok(0)));
    h.s.join_room("r1", h.now);
    h.drain();
    h.frame(joined("r1", 30));
    h.frame(Frame::Deliver(room_msg("r1", 31)));
    assert_eq!(h.s.room_cursor("r1"), Some(31));
}

#[test]
fn a_room_joined_elsewhere_is_adopted_at_its_first_message() {
    let mut h = H::new();
    h.online(0);
    h.clear();
    // The user joined on another device: this device sees the enter event and then messages.
    h.frame(Frame::RoomEvent(RoomEvent {
        room: "r9".into(),
        kind: RoomEventKind::Enter,
        user: USER.into(),
        members: 3,
        online: 2,
    }));
    h.frame(Frame::Deliver(room_msg("r9", 20)));
    h.frame(Frame::Deliver(room_msg("r9", 21)));
    assert_eq!(h.messages_of(Some("r9")), [20, 21]);
    assert_eq!(h.durable.room_cursors, cursors(&[("r9", 21)]));
    h.advance(ms(50));
    assert_eq!(h.acks(), [Ack { inbox: 0, rooms: Some(cursors(&[("r9", 21)])) }]);
    // The user leaves on the other device: this one stops following the room.
    h.frame(Frame::RoomEvent(RoomEvent {
        room: "r9".into(),
        kind: RoomEventKind::Quit,
        user: USER.into(),
        members: 2,
        online: 1,
    }));
    assert_eq!(h.s.room_cursor("r9"), None);
    assert!(h.persists.contains(&PersistOp::RoomForget("r9".into())));
    // Others' events are passed on and change nothing.
    let ev = RoomEvent { room: "r9".into(), kind: RoomEventKind::Offline, user: "bob".into(), members: 2, online: 0 };
    h.clear();
    h.frame(Frame::RoomEvent(ev.clone()));
    assert_eq!(h.take_events(), [Event::RoomEvent(ev.into())]);
    assert!(h.persists.is_empty());
}

#[test]
fn join_and_leave_made_offline_go_out_in_order_after_login_before_messages() {
    let mut h = H::new();
    h.s.join_room("a", h.now);
    h.s.leave_room("b", h.now);
    h.s.join_room("c", h.now);
    h.drain();
    let id = h.send_to_room("a", "first words in a");
    assert!(h.tx.is_empty());
    h.start();
    h.connected();
    h.clear();
    h.frame(Frame::LoginOk(login_ok(0)));
    let tx = h.take_tx();
    assert_eq!(
        tx[..3],
        [
            Frame::JoinRoom(JoinRoom { room: "a".into() }),
            Frame::LeaveRoom(LeaveRoom { room: "b".into() }),
            Frame::JoinRoom(JoinRoom { room: "c".into() }),
        ]
    );
    assert!(matches!(&tx[3], Frame::Send(s) if s.client_msg_id == id));
    assert_eq!(tx.len(), 4);
    // "a" is answered; the connection drops before the others are: they are asked again.
    h.frame(joined("a", 0));
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    h.clear();
    h.frame(Frame::LoginOk(login_ok(0)));
    let tx = h.take_tx();
    assert_eq!(
        tx[..2],
        [Frame::LeaveRoom(LeaveRoom { room: "b".into() }), Frame::JoinRoom(JoinRoom { room: "c".into() })]
    );
    h.frame(Frame::RoomLeft(RoomLeft { room: "b".into() }));
    h.frame(joined("c", 4));
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert!(h.tx.iter().all(|f| !matches!(f, Frame::JoinRoom(_) | Frame::LeaveRoom(_))), "all answered");
}

#[test]
fn refused_join_is_reported_and_not_retried() {
    let mut h = H::new();
    h.online(0);
    h.s.join_room("nope", h.now);
    h.s.join_room("ok", h.now);
    h.s.leave_room("never-joined", h.now);
    h.drain();
    h.clear();
    h.frame(error(ErrorCode::NoSuchRoom));
    h.frame(joined("ok", 1));
    h.frame(error(ErrorCode::NotAMember));
    assert_eq!(
        h.take_events(),
        [
            Event::RoomJoinFailed { room: "nope".into(), code: ErrorCode::NoSuchRoom, message: "NoSuchRoom".into() },
            Event::RoomJoined(RoomJoined { room: "ok".into(), head: 1, members: 2, online: 1 }.into()),
            Event::RoomLeft("never-joined".into()),
        ]
    );
    assert_eq!(h.s.room_cursors(), cursors(&[("ok", 1)]));
    // Unrelated errors (or room errors with nothing in flight) change nothing.
    h.frame(error(ErrorCode::NotAMember));
    h.frame(error(ErrorCode::UnknownFrameType));
    assert!(h.take_events().is_empty());
    h.disconnected(None);
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert!(h.tx.iter().all(|f| !matches!(f, Frame::JoinRoom(_) | Frame::LeaveRoom(_))));
}

#[test]
fn sync_room_fetches_history_once_and_resumes_after_a_reconnect() {
    let mut h = H::in_room("r1", 100);
    h.frame(Frame::Deliver(room_msg("r1", 101)));
    h.clear();
    h.s.sync_room("r1", 90, h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::Sync(room_sync("r1", 90, Some(101)))]);
    for seq in 91..=95 {
        h.frame(Frame::Deliver(room_msg("r1", seq)));
    }
    // A live message meanwhile follows the normal path.
    h.frame(Frame::Deliver(room_msg("r1", 102)));
    h.frame(Frame::Deliver(room_msg("r1", 93)));
    assert_eq!(h.messages_of(Some("r1")), [91, 92, 93, 94, 95, 102]);
    assert_eq!(h.s.room_cursor("r1"), Some(102), "history does not move the cursor");
    // The connection drops halfway: the rest is asked for after the login.
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    h.frame(Frame::LoginOk(login_ok(0)));
    assert_eq!(h.syncs(), [room_sync("r1", 95, Some(101))]);
    for seq in 96..=101 {
        h.frame(Frame::Deliver(room_msg("r1", seq)));
    }
    assert_eq!(h.messages_of(Some("r1")), (96..=101).collect::<Vec<_>>());
    // Done: a replay hands nothing.
    h.clear();
    h.frame(Frame::Deliver(room_msg("r1", 97)));
    assert!(h.events.is_empty());
    // A fetch past retention: the cut is reported and the fetch goes on from what is kept.
    h.s.sync_room("r1", 0, h.now);
    h.drain();
    h.frame(Frame::HistoryTruncated(HistoryTruncated { room: "r1".into(), after: 0, first_seq: 60 }));
    h.frame(Frame::Deliver(room_msg("r1", 60)));
    assert_eq!(h.s.room_cursor("r1"), Some(102));
    assert!(matches!(h.events[0], Event::HistoryTruncated(_)));
    assert_eq!(h.messages_of(Some("r1")), [60]);
}

#[test]
fn sync_room_at_or_past_the_cursor_catches_up_and_starts_unknown_rooms() {
    let mut h = H::in_room("r1", 5);
    h.s.sync_room("r1", 9, h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::Sync(room_sync("r1", 5, None))], "nothing is skipped");
    h.s.sync_room("fresh", 3, h.now);
    h.drain();
    assert_eq!(h.take_tx(), [Frame::Sync(room_sync("fresh", 3, None))]);
    assert_eq!(h.s.room_cursor("fresh"), Some(3));
    h.frame(Frame::Deliver(room_msg("fresh", 5)));
    h.frame(Frame::Deliver(room_msg("fresh", 4)));
    assert_eq!(h.messages_of(Some("fresh")), [4, 5]);
    // Offline, the login carries the cursor: no sync needed.
    h.disconnected(None);
    h.clear();
    h.s.sync_room("r1", 5, h.now);
    h.drain();
    assert!(h.tx.is_empty());
}

#[test]
fn metadata_goes_into_every_login_and_a_refused_one_is_not_retried() {
    let mut cfg = config();
    cfg.metadata = [("app".to_string(), "1.2.3".to_string()), ("locale".to_string(), "de-CH".to_string())].into();
    let mut h = H::with_config(cfg.clone());
    h.start();
    h.connected();
    assert_eq!(h.login_frame().metadata, Some(cfg.metadata.clone().into_iter().collect()));
    h.frame(Frame::LoginOk(login_ok(0)));
    h.disconnected(None);
    h.clear();
    h.advance(secs(1));
    h.connected();
    assert_eq!(h.login_frame().metadata, Some(cfg.metadata.clone().into_iter().collect()));
    // Without metadata the field is left out.
    let mut h = H::new();
    h.start();
    h.connected();
    assert_eq!(h.login_frame().metadata, None);
    // The server refuses it: the same login would be refused again.
    h.clear();
    h.frame(Frame::LoginError(tether_proto::LoginError {
        code: ErrorCode::InvalidField,
        message: "metadata too large".into(),
    }));
    assert_eq!(h.s.state(), &SessionState::AuthFailed(ErrorCode::InvalidField));
    assert!(h
        .events
        .contains(&Event::LoginFailed { code: ErrorCode::InvalidField, message: "metadata too large".into() }));
    h.advance(secs(3600));
    assert_eq!(h.connects(), 0);
}

#[test]
fn metadata_limits() {
    use crate::{check_metadata, MetadataError};
    let m = |pairs: Vec<(String, String)>| pairs.into_iter().collect::<std::collections::HashMap<_, _>>();
    assert_eq!(check_metadata(&Default::default()), Ok(()));
    let full = m((0..16).map(|i| (format!("k{i:02}"), "v".repeat(120))).collect());
    assert_eq!(check_metadata(&full), Ok(()), "16 x 123 bytes = 1968 <= 2048");
    let too_many = m((0..17).map(|i| (format!("k{i}"), String::new())).collect());
    assert_eq!(check_metadata(&too_many), Err(MetadataError::TooManyEntries(17)));
    assert!(matches!(check_metadata(&m(vec![("k".repeat(65), "v".into())])), Err(MetadataError::BadKey(_))));
    assert!(matches!(check_metadata(&m(vec![(String::new(), "v".into())])), Err(MetadataError::BadKey(_))));
    assert_eq!(check_metadata(&m(vec![("k".repeat(64), "v".repeat(256))])), Ok(()));
    assert!(matches!(check_metadata(&m(vec![("k".into(), "v".repeat(257))])), Err(MetadataError::ValueTooLong(_))));
    let big = m((0..16).map(|i| (format!("k{i:02}"), "v".repeat(127))).collect());
    assert_eq!(check_metadata(&big), Err(MetadataError::TooLarge { size: 16 * 130, max: crate::METADATA_MAX_TOTAL }));
}

#[test]
fn a_late_quit_event_after_a_quick_leave_and_join_does_not_block_the_room() {
    let mut h = H::in_room("r1", 0);
    h.s.leave_room("r1", h.now);
    h.s.join_room("r1", h.now);
    h.drain();
    h.frame(Frame::RoomLeft(RoomLeft { room: "r1".into() }));
    h.frame(joined("r1", 3));
    assert_eq!(h.s.room_cursor("r1"), Some(3));
    // The server's quit announcement (sent to the leaver's sessions too) arrives last.
    h.frame(Frame::RoomEvent(RoomEvent {
        room: "r1".into(),
        kind: RoomEventKind::Quit,
        user: USER.into(),
        members: 1,
        online: 1,
    }));
    h.frame(Frame::Deliver(room_msg("r1", 4)));
    h.frame(Frame::Deliver(room_msg("r1", 5)));
    assert_eq!(h.messages_of(Some("r1")), [4, 5]);
    assert_eq!(h.durable.room_cursors, cursors(&[("r1", 5)]));
}
