use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tether_proto::Address;

use super::*;
use crate::core::{OutboxEntry, ResumeToken};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "tether-sdk-state-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn entry(id: &str, payload: &[u8]) -> OutboxEntry {
    OutboxEntry {
        client_msg_id: id.to_owned(),
        to: Address::user("bob"),
        content_type: "application/octet-stream".to_owned(),
        payload: payload.to_vec(),
        created_ms: 1_700_000_000_000,
    }
}

fn sample_ops() -> Vec<PersistOp> {
    vec![
        PersistOp::OutboxAdd(entry("a", b"hello")),
        PersistOp::OutboxAdd(entry("b", &[0, 1, 2, 255, b'\n', b'"'])),
        PersistOp::Cursor(3),
        PersistOp::OutboxRemove("a".into()),
        PersistOp::Resume(Some(ResumeToken { token: "tok".into(), expires_ms: 42 })),
        PersistOp::OutboxAdd(entry("c", b"")),
        PersistOp::RoomCursor { room: "r1".into(), seq: 10 },
        PersistOp::RoomCursor { room: "r2".into(), seq: 0 },
        PersistOp::Cursor(7),
        PersistOp::RoomCursor { room: "r1".into(), seq: 12 },
        PersistOp::RoomForget("r2".into()),
        PersistOp::RoomCursor { room: "r\"3\n".into(), seq: 5 },
    ]
}

fn expected_after_sample() -> PersistedState {
    PersistedState {
        outbox: vec![entry("b", &[0, 1, 2, 255, b'\n', b'"']), entry("c", b"")],
        inbox_cursor: Some(7),
        resume: Some(ResumeToken { token: "tok".into(), expires_ms: 42 }),
        room_cursors: [("r1".to_owned(), 12), ("r\"3\n".to_owned(), 5)].into_iter().collect(),
    }
}

#[test]
fn fresh_directory_is_created_and_empty() {
    let dir = TempDir::new();
    let nested = dir.path().join("a/b");
    let (store, state) = StateStore::open(&nested).unwrap();
    assert_eq!(state, PersistedState::default());
    assert_eq!(store.journal_len(), 0);
    assert!(nested.join(JOURNAL_FILE).exists());
}

#[test]
fn replay_after_restart_gives_the_same_state() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    let ops = sample_ops();
    store.apply(&ops[..3]).unwrap();
    store.apply(&ops[3..]).unwrap();
    store.apply(&[]).unwrap();
    assert_eq!(store.state(), &expected_after_sample());
    assert_eq!(store.journal_len(), ops.len() as u64);
    drop(store);

    let (store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state, expected_after_sample());
    assert_eq!(store.state(), &expected_after_sample());
    // One JSON object per line, payload in base64.
    let text = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap();
    assert_eq!(text.lines().count(), ops.len());
    assert!(text.contains("\"payload\":\"aGVsbG8=\""), "{text}");
    assert!(text.contains(r#"{"op":"room_cursor","v":{"room":"r1","seq":12}}"#), "{text}");
    assert!(text.contains(r#"{"op":"room_forget","v":"r2"}"#), "{text}");
}

#[test]
fn torn_last_line_is_tolerated_and_cut_off() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    store.apply(&sample_ops()).unwrap();
    drop(store);
    let journal = dir.path().join(JOURNAL_FILE);
    let good = fs::read(&journal).unwrap();

    // Simulate a crash in the middle of appending a line.
    let mut torn = good.clone();
    torn.extend_from_slice(br#"{"op":"outbox_add","v":{"client_msg_id":"zz","to"#);
    fs::write(&journal, &torn).unwrap();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state, expected_after_sample());
    assert_eq!(fs::read(&journal).unwrap(), good, "torn tail removed");

    // Appending after recovery yields well-formed lines again.
    store.apply(&[PersistOp::Cursor(9)]).unwrap();
    drop(store);
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.inbox_cursor, Some(9));
    assert_eq!(state.outbox.len(), 2);
}

#[test]
fn complete_last_line_without_newline_is_kept() {
    let dir = TempDir::new();
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(JOURNAL_FILE), "{\"op\":\"cursor\",\"v\":4}\n\n{\"op\":\"cursor\",\"v\":5}").unwrap();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.inbox_cursor, Some(5));
    store.apply(&[PersistOp::OutboxRemove("x".into())]).unwrap();
    drop(store);
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.inbox_cursor, Some(5));
}

#[test]
fn corrupt_line_before_the_end_is_an_error() {
    let dir = TempDir::new();
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(JOURNAL_FILE), "{\"op\":\"cursor\",\"v\":4}\ngarbage\n{\"op\":\"cursor\",\"v\":5}\n")
        .unwrap();
    match StateStore::open(dir.path()) {
        Err(StateError::Corrupt { line: 2, .. }) => {}
        other => panic!("expected corrupt line 2, got {other:?}"),
    }
}

#[test]
fn corrupt_snapshot_is_an_error() {
    let dir = TempDir::new();
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(SNAPSHOT_FILE), "{not json").unwrap();
    assert!(matches!(StateStore::open(dir.path()), Err(StateError::Corrupt { line: 0, .. })));
    fs::write(dir.path().join(SNAPSHOT_FILE), r#"{"version":99,"state":{}}"#).unwrap();
    assert!(matches!(StateStore::open(dir.path()), Err(StateError::Corrupt { line: 0, .. })));
}

#[test]
fn compaction_keeps_state_and_truncates_the_journal() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    store.set_compact_threshold(10, u64::MAX);
    let mut expected = PersistedState::default();
    for i in 0..95u64 {
        let ops = [PersistOp::OutboxAdd(entry(&format!("m{i}"), &i.to_be_bytes())), PersistOp::Cursor(i)];
        for op in &ops {
            expected.apply(op);
        }
        if i % 3 == 0 {
            let rm = PersistOp::OutboxRemove(format!("m{i}"));
            expected.apply(&rm);
            store.apply(&[ops[0].clone(), ops[1].clone(), rm]).unwrap();
        } else {
            store.apply(&ops).unwrap();
        }
        assert!(store.journal_len() < 10, "journal compacted");
    }
    assert_eq!(store.state(), &expected);
    assert!(dir.path().join(SNAPSHOT_FILE).exists());
    assert!(!dir.path().join(SNAPSHOT_TMP).exists());
    let journal_lines = fs::read_to_string(dir.path().join(JOURNAL_FILE)).unwrap().lines().count() as u64;
    assert_eq!(journal_lines, store.journal_len());
    drop(store);

    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state, expected);
    assert_eq!(state.outbox.len(), 95 - 32);
}

#[test]
fn compaction_by_size() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    store.set_compact_threshold(u64::MAX, 4096);
    store.apply(&[PersistOp::OutboxAdd(entry("big", &[7u8; 5000]))]).unwrap();
    assert_eq!(store.journal_len(), 0);
    assert_eq!(fs::metadata(dir.path().join(JOURNAL_FILE)).unwrap().len(), 0);
    drop(store);
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.outbox[0].payload, vec![7u8; 5000]);
}

#[test]
fn crash_between_snapshot_and_truncation_replays_harmlessly() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    store.apply(&sample_ops()).unwrap();
    let journal = fs::read(dir.path().join(JOURNAL_FILE)).unwrap();
    store.compact().unwrap();
    drop(store);
    // The rename happened but the journal was not truncated yet.
    fs::write(dir.path().join(JOURNAL_FILE), journal).unwrap();
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state, expected_after_sample());
}

#[test]
fn session_state_survives_a_restart_through_the_store() {
    use crate::core::{Credential, Frame, LoginOk, Session, SessionConfig};
    use std::time::Instant;
    use tether_proto::SendAck;

    fn drive(s: &mut Session, store: &mut StateStore) -> Vec<Frame> {
        let ops: Vec<_> = std::iter::from_fn(|| s.poll_persist()).collect();
        store.apply(&ops).unwrap();
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }
    fn online(s: &mut Session, store: &mut StateStore, now: Instant) -> Vec<Frame> {
        s.start(now);
        s.handle_connected(now);
        s.handle_frame(
            Frame::LoginOk(LoginOk {
                version: 1,
                session_id: "s".into(),
                user: "alice".into(),
                inbox_head: 0,
                server_time_ms: 0,
                idle_timeout_ms: 60_000,
                max_frame: 65_536,
                resume_token: None,
                resume_expires_ms: None,
                room_heads: None,
            }),
            now,
        );
        drive(s, store)
    }

    let dir = TempDir::new();
    let t0 = Instant::now();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    let mut s = Session::new(SessionConfig::new("phone", "dev-1"), Credential::Token("jwt".into()), state, 1);
    let ids: Vec<String> = (0..3u8)
        .map(|i| s.send(Address::user("bob"), "text/plain".into(), vec![i], t0, 1_000 + u64::from(i)))
        .collect();
    drive(&mut s, &mut store);
    online(&mut s, &mut store, t0);
    s.handle_frame(
        Frame::SendAck(SendAck { client_msg_id: ids[0].clone(), msg_id: 1, seq: 1, ts: 1, duplicate: false }),
        t0,
    );
    drive(&mut s, &mut store);
    assert_eq!(store.state(), &s.persisted_state());
    // The process dies here; a new one opens the same directory.
    drop((s, store));

    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.inbox_cursor, Some(1));
    assert_eq!(state.outbox.iter().map(|e| e.client_msg_id.clone()).collect::<Vec<_>>(), ids[1..]);
    let mut s = Session::new(SessionConfig::new("phone", "dev-1"), Credential::Token("jwt".into()), state, 2);
    let frames = online(&mut s, &mut store, t0);
    let Some(Frame::Login(login)) = frames.first() else { panic!("{frames:?}") };
    assert_eq!(login.inbox_cursor, Some(1));
    let resent: Vec<String> = frames
        .iter()
        .filter_map(|f| match f {
            Frame::Send(send) => Some(send.client_msg_id.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(resent, ids[1..]);
}

#[test]
fn session_ops_round_trip_through_the_store() {
    use crate::core::{Credential, Session, SessionConfig};
    use std::time::Instant;

    let dir = TempDir::new();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    let t0 = Instant::now();
    let mut s = Session::new(SessionConfig::new("phone", "dev-1"), Credential::Token("jwt".into()), state, 1);
    let a = s.send(Address::user("bob"), "text/plain".into(), b"1".to_vec(), t0, 5);
    let _b = s.send(Address::user("bob"), "text/plain".into(), b"2".to_vec(), t0, 6);
    let ops: Vec<_> = std::iter::from_fn(|| s.poll_persist()).collect();
    store.apply(&ops).unwrap();
    drop(store);

    let (_, restored) = StateStore::open(dir.path()).unwrap();
    assert_eq!(restored, s.persisted_state());
    assert_eq!(restored.outbox[0].client_msg_id, a);
}

#[test]
fn snapshot_without_room_cursors_still_loads() {
    // A state dir written before rooms existed.
    let dir = TempDir::new();
    fs::create_dir_all(dir.path()).unwrap();
    fs::write(dir.path().join(SNAPSHOT_FILE), r#"{"version":1,"state":{"outbox":[],"inbox_cursor":3,"resume":null}}"#)
        .unwrap();
    fs::write(dir.path().join(JOURNAL_FILE), "{\"op\":\"cursor\",\"v\":4}\n").unwrap();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.inbox_cursor, Some(4));
    assert!(state.room_cursors.is_empty());
    store.apply(&[PersistOp::RoomCursor { room: "r".into(), seq: 1 }]).unwrap();
    store.compact().unwrap();
    drop(store);
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.room_cursors.get("r"), Some(&1));
}

#[test]
fn compaction_keeps_room_cursors() {
    let dir = TempDir::new();
    let (mut store, _) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    store.set_compact_threshold(7, u64::MAX);
    let mut expected = PersistedState::default();
    for i in 0..100u64 {
        let room = format!("room-{}", i % 5);
        let mut ops = vec![PersistOp::RoomCursor { room: room.clone(), seq: i }];
        if i % 7 == 0 {
            ops.push(PersistOp::RoomForget(room));
        }
        for op in &ops {
            expected.apply(op);
        }
        store.apply(&ops).unwrap();
        assert!(store.journal_len() < 7 + 2, "journal compacted");
    }
    assert_eq!(store.state(), &expected);
    assert!(!expected.room_cursors.is_empty());
    let snapshot = fs::read_to_string(dir.path().join(SNAPSHOT_FILE)).unwrap();
    assert!(snapshot.contains("\"room_cursors\""), "{snapshot}");
    drop(store);
    let (_, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state, expected);
}

#[test]
fn room_ops_replay_idempotently_onto_their_result() {
    // What a crash between a snapshot's rename and the journal's truncation replays.
    let ops = [
        PersistOp::RoomCursor { room: "a".into(), seq: 1 },
        PersistOp::RoomForget("a".into()),
        PersistOp::RoomCursor { room: "a".into(), seq: 9 },
        PersistOp::RoomCursor { room: "b".into(), seq: 2 },
        PersistOp::RoomForget("b".into()),
    ];
    let mut state = PersistedState::default();
    ops.iter().for_each(|op| state.apply(op));
    let once = state.clone();
    ops.iter().for_each(|op| state.apply(op));
    assert_eq!(state, once);
    assert_eq!(once.room_cursors, [("a".to_owned(), 9)].into_iter().collect());
}

#[test]
fn session_room_cursors_survive_a_restart_through_the_store() {
    use crate::core::{Credential, Deliver, Frame, LoginOk, Session, SessionConfig};
    use std::time::Instant;
    use tether_proto::RoomJoined;

    fn drive(s: &mut Session, store: &mut StateStore) -> Vec<Frame> {
        let ops: Vec<_> = std::iter::from_fn(|| s.poll_persist()).collect();
        store.apply(&ops).unwrap();
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }
    fn online(s: &mut Session, store: &mut StateStore, now: Instant) -> Vec<Frame> {
        s.start(now);
        s.handle_connected(now);
        s.handle_frame(
            Frame::LoginOk(LoginOk {
                version: 1,
                session_id: "s".into(),
                user: "alice".into(),
                inbox_head: 0,
                server_time_ms: 0,
                idle_timeout_ms: 60_000,
                max_frame: 65_536,
                resume_token: None,
                resume_expires_ms: None,
                room_heads: None,
            }),
            now,
        );
        drive(s, store)
    }
    fn room_msg(room: &str, seq: u64) -> Deliver {
        Deliver {
            msg_id: seq,
            seq,
            from: "bob".into(),
            from_device: "bob-1".into(),
            client_msg_id: format!("{room}-{seq}"),
            to: Address::room(room),
            ts: seq,
            content_type: "text/plain".into(),
            payload: vec![],
        }
    }

    let dir = TempDir::new();
    let t0 = Instant::now();
    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    store.set_sync(false);
    let mut s = Session::new(SessionConfig::new("phone", "dev-1"), Credential::Token("jwt".into()), state, 1);
    online(&mut s, &mut store, t0);
    s.join_room("r1", t0);
    s.join_room("r2", t0);
    s.handle_frame(Frame::RoomJoined(RoomJoined { room: "r1".into(), head: 40, members: 2, online: 2 }), t0);
    s.handle_frame(Frame::RoomJoined(RoomJoined { room: "r2".into(), head: 0, members: 1, online: 1 }), t0);
    for seq in 41..=43 {
        s.handle_frame(Frame::Deliver(room_msg("r1", seq)), t0);
    }
    s.leave_room("r2", t0);
    s.handle_frame(Frame::RoomLeft(tether_proto::RoomLeft { room: "r2".into() }), t0);
    drive(&mut s, &mut store);
    assert_eq!(store.state(), &s.persisted_state());
    drop((s, store));

    let (mut store, state) = StateStore::open(dir.path()).unwrap();
    assert_eq!(state.room_cursors, [("r1".to_owned(), 43)].into_iter().collect());
    let mut s = Session::new(SessionConfig::new("phone", "dev-1"), Credential::Token("jwt".into()), state, 2);
    assert_eq!(s.room_cursor("r1"), Some(43));
    let frames = online(&mut s, &mut store, t0);
    let Some(Frame::Login(login)) = frames.first() else { panic!("{frames:?}") };
    assert_eq!(login.room_cursors, Some([("r1".to_owned(), 43)].into_iter().collect()));
}
