//! Crash safety of the log store, on real files: a write cut short at any offset of the newest
//! segment (a crash mid-batch) is truncated at reopen and loses nothing acknowledged; damage in
//! the middle refuses to start with the repair command named, and the repair keeps every
//! intact record; every failed step of a commit leaves nothing behind; checkpoints let old
//! segments go and the state survives them; the index beyond the hot range moves to disk and
//! memory stays bounded while the stored count grows.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use tether_proto::Address;
use tether_server::store::faults::{FaultStep, Faults};
use tether_server::store::log::{segment, LogSettings, LogStore};
use tether_server::store::sqlite::StoreHooks;
use tether_server::store::{CursorUpdate, NewMessage, Store, StoreError, TicketUse};

fn msg(id: u64, from: &str, to: Address) -> NewMessage {
    NewMessage {
        msg_id: id,
        sender: from.into(),
        sender_device: "d".into(),
        client_msg_id: format!("c{id}"),
        to,
        // Recent: inside the dedup window, which maintenance moves on every second.
        ts: now_ms() + id,
        content_type: "text/plain".into(),
        payload: format!("payload {id}").into_bytes(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn small() -> LogSettings {
    LogSettings { segment_bytes: 2048, hot_bytes: 1024, ..LogSettings::default() }
}

fn open(dir: &Path) -> Result<LogStore, StoreError> {
    LogStore::open(dir, small(), StoreHooks::default())
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else if e.file_name() != "LOCK" {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
}

/// Message ids in alice's and bob's inboxes, checking seqs are 1..n.
async fn inbox_ids(s: &LogStore, user: &str) -> Vec<u64> {
    let inbox = s.fetch_inbox(user, 0, None, 100_000).await.expect("fetch");
    let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{user}: gapless");
    inbox.iter().map(|e| e.msg.msg_id).collect()
}

/// Writes `batches` batches of 5 messages alice -> bob; returns, per batch, the ids and the
/// length of the newest segment once the batch was acknowledged.
async fn fill(s: &LogStore, dir: &Path, batches: u64) -> Vec<(Vec<u64>, u64, u64)> {
    let mut out = Vec::new();
    for b in 0..batches {
        let ids: Vec<u64> = (b * 5 + 1..=b * 5 + 5).collect();
        // A batch goes to the newest segment (a new one is started after a write fills it).
        let last = *segment::list(dir).expect("list").last().expect("a segment");
        let r = s
            .append(ids.iter().map(|i| msg(*i, "alice", Address::user("bob"))).collect(), vec![])
            .await
            .expect("append");
        assert!(r.iter().all(|a| a.as_ref().is_ok_and(|a| !a.duplicate)));
        let len = std::fs::metadata(segment::path(dir, last)).expect("meta").len();
        out.push((ids, last, len));
    }
    out
}

#[tokio::test]
async fn a_write_cut_at_any_offset_of_the_newest_segment_loses_nothing_acknowledged() {
    let base = tempfile::tempdir().expect("dir");
    let live = base.path().join("live");
    let s = LogStore::open(&live, LogSettings::default(), StoreHooks::default()).expect("open");
    let batches = fill(&s, &live, 40).await;
    drop(s);
    let seg = batches[0].1;
    assert!(batches.iter().all(|b| b.1 == seg), "one segment");
    let full = std::fs::metadata(segment::path(&live, seg)).expect("meta").len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut offsets: Vec<u64> = (0..60).map(|_| rng.random_range(0..=full)).collect();
    // The edges: inside the header, right after it, one byte short, each batch's exact end.
    offsets.extend([0, 3, segment::HEADER, full - 1, full, batches[10].2, batches[10].2 + 1]);
    for cut in offsets {
        let trial = base.path().join(format!("cut-{cut}"));
        copy_dir(&live, &trial);
        let f = std::fs::OpenOptions::new().write(true).open(segment::path(&trial, seg)).expect("open seg");
        f.set_len(cut).expect("truncate");
        drop(f);
        let s = open(&trial).unwrap_or_else(|e| panic!("cut at {cut}: reopen failed: {e}"));
        // Everything whose batch ended before the cut is there, nothing after it.
        let expected: Vec<u64> = batches.iter().filter(|b| b.2 <= cut).flat_map(|b| b.0.clone()).collect();
        assert_eq!(inbox_ids(&s, "bob").await, expected, "cut at {cut}");
        // And the log goes on from there: new seqs continue without a gap.
        let n = expected.len() as u64;
        let r = s.append(vec![msg(10_000, "alice", Address::user("bob"))], vec![]).await.expect("append after cut");
        assert_eq!(r[0].as_ref().expect("stored").sender_seq, n + 1, "cut at {cut}");
        drop(s);
        let s = open(&trial).expect("reopen");
        assert_eq!(inbox_ids(&s, "bob").await.len() as u64, n + 1, "cut at {cut}: survives another reopen");
        drop(s);
        std::fs::remove_dir_all(&trial).expect("clean");
    }
}

#[tokio::test]
async fn zeros_after_the_last_record_are_space_written_over_and_refused_in_a_closed_segment() {
    let dir = tempfile::tempdir().expect("dir");
    // No segment prepared in the background: the zeros below are the only ones.
    let settings = || LogSettings { preallocate: false, ..small() };
    let s = LogStore::open(dir.path(), settings(), StoreHooks::default()).expect("open");
    let batches = fill(&s, dir.path(), 8).await;
    drop(s);
    let (_, seg, len) = batches[7].clone();
    let open = |d: &Path| LogStore::open(d, settings(), StoreHooks::default());
    let f = std::fs::OpenOptions::new().write(true).open(segment::path(dir.path(), seg)).expect("open");
    // Zeros after the last record: prepared space, or a file that grew while its data never
    // reached the disk (a crash after the size update). Either way the next record goes there.
    f.set_len(len + 4096).expect("extend");
    drop(f);
    let s = open(dir.path()).expect("reopen");
    assert_eq!(inbox_ids(&s, "bob").await.len(), 40);
    let r = s.append(vec![msg(100, "alice", Address::user("bob"))], vec![]).await.expect("append");
    assert_eq!(r[0].as_ref().expect("stored").sender_seq, 41);
    assert_eq!(std::fs::metadata(segment::path(dir.path(), seg)).expect("meta").len(), len + 4096, "written over");
    drop(s);
    let s = open(dir.path()).expect("reopen");
    assert_eq!(inbox_ids(&s, "bob").await.len(), 41);
    drop(s);
    // In a segment before the newest, zeros after the last record may be durable records
    // that were lost: refused like any damage.
    let older = *segment::list(dir.path()).expect("list").first().expect("a segment");
    assert!(older < seg, "several segments");
    let f = std::fs::OpenOptions::new().append(true).open(segment::path(dir.path(), older)).expect("open");
    f.set_len(f.metadata().expect("meta").len() + 512).expect("extend");
    drop(f);
    let e = open(dir.path()).err().expect("refused");
    assert!(e.to_string().contains("is damaged at offset") && e.to_string().contains("store repair"), "{e}");
}

#[tokio::test]
async fn segments_are_prepared_ahead_and_written_over() {
    let dir = tempfile::tempdir().expect("dir");
    // 2,048-byte segments: the next one is prepared once the current one holds 1,024 bytes.
    let s = open(dir.path()).expect("open");
    let mut prepared_rolls = 0;
    let mut plain_rolls = 0;
    for b in 0..40u64 {
        s.maintain().await;
        let before = segment::list(dir.path()).expect("list");
        let newest = *before.last().expect("a segment");
        let ready = segment::prep_path(dir.path(), newest + 1).exists();
        let ids: Vec<u64> = (b * 5 + 1..=b * 5 + 5).collect();
        s.append(ids.iter().map(|i| msg(*i, "alice", Address::user("bob"))).collect(), vec![]).await.expect("append");
        let after = segment::list(dir.path()).expect("list");
        if after.len() > before.len() {
            // The writer moved on: into the prepared segment when there was one (renamed into
            // place, still its full size), else into a new one.
            let next = *after.last().expect("a segment");
            assert!(!segment::prep_path(dir.path(), next).exists(), "batch {b}: the prepared file was renamed");
            let len = std::fs::metadata(segment::path(dir.path(), next)).expect("meta").len();
            if ready {
                prepared_rolls += 1;
                assert_eq!(len, 2048, "batch {b}: a prepared segment has its full size");
            } else {
                plain_rolls += 1;
                assert_eq!(len, segment::HEADER, "batch {b}: a new segment has its header only");
            }
        }
    }
    assert!(prepared_rolls >= 5, "most roll-overs went into prepared segments ({prepared_rolls}, {plain_rolls} plain)");
    // Closed segments end at their last record; only the newest has space left.
    let ids = segment::list(dir.path()).expect("list");
    for id in &ids[..ids.len() - 1] {
        assert_eq!(segment::scan(dir.path(), *id).expect("scan").tail, segment::Tail::Clean, "segment {id}");
    }
    let newest = *ids.last().expect("a segment");
    let len = std::fs::metadata(segment::path(dir.path(), newest)).expect("meta").len();
    assert!(matches!(segment::scan(dir.path(), newest).expect("scan").tail, segment::Tail::Zeros { .. }));
    assert_eq!(inbox_ids(&s, "bob").await, (1..=200).collect::<Vec<_>>());
    drop(s);
    // Reopened, the log goes on over the zeros of the newest segment.
    let s = open(dir.path()).expect("reopen");
    assert_eq!(inbox_ids(&s, "bob").await.len(), 200);
    let r = s.append(vec![msg(1_000, "alice", Address::user("bob"))], vec![]).await.expect("append");
    assert_eq!(r[0].as_ref().expect("stored").sender_seq, 201);
    assert_eq!(segment::list(dir.path()).expect("list").last(), Some(&newest));
    assert_eq!(std::fs::metadata(segment::path(dir.path(), newest)).expect("meta").len(), len, "written over");
    drop(s);
    // A prepared segment left by a stopped process is not part of the log and goes away.
    segment::prepare(dir.path(), newest + 1, 2048).expect("prepare");
    let s = open(dir.path()).expect("reopen");
    assert!(!segment::prep_path(dir.path(), newest + 1).exists());
    assert_eq!(inbox_ids(&s, "bob").await.len(), 201);
}

#[tokio::test]
async fn damage_in_the_middle_refuses_to_start_and_repair_keeps_every_intact_record() {
    let dir = tempfile::tempdir().expect("dir");
    let s = open(dir.path()).expect("open");
    let batches = fill(&s, dir.path(), 30).await;
    drop(s);
    let segs = segment::list(dir.path()).expect("list");
    assert!(segs.len() >= 3, "several segments: {segs:?}");
    // Flip one byte inside the first record of the second segment.
    let victim = segs[1];
    let p = segment::path(dir.path(), victim);
    let mut data = std::fs::read(&p).expect("read");
    data[segment::HEADER as usize + 20] ^= 0x01;
    std::fs::write(&p, &data).expect("write");
    let err = open(dir.path()).err().expect("refuses to start");
    let text = err.to_string();
    assert!(text.contains("damaged") && text.contains("tether-server store repair"), "{text}");

    let report = tether_server::store::log::repair(dir.path()).expect("repair");
    assert_eq!(report.repaired.len(), 1);
    assert_eq!(report.repaired[0].id, victim);
    assert!(report.repaired[0].backup.exists(), "the damaged original is kept");
    let s = open(dir.path()).expect("opens after repair");
    let lost: HashSet<u64> = batches.iter().filter(|b| b.1 == victim).take(1).flat_map(|b| b.0.clone()).collect();
    let inbox = s.fetch_inbox("bob", 0, None, 100_000).await.expect("fetch");
    let got: Vec<u64> = inbox.iter().map(|e| e.msg.msg_id).filter(|id| *id != 0).collect();
    let expected: Vec<u64> = batches.iter().flat_map(|b| b.0.clone()).filter(|i| !lost.contains(i)).collect();
    assert_eq!(got, expected, "only the damaged record's messages are gone");
    // Their seqs read as placeholders, so the inbox stays gapless; later seqs keep their numbers.
    let seqs: Vec<u64> = inbox.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=150).collect::<Vec<_>>());
    let placeholders: Vec<&str> =
        inbox.iter().filter(|e| e.msg.msg_id == 0).map(|e| e.msg.content_type.as_str()).collect();
    assert_eq!(placeholders, vec![tether_server::store::log::LOST_CONTENT_TYPE; lost.len()]);
    let r = s.append(vec![msg(999, "alice", Address::user("bob"))], vec![]).await.expect("append");
    assert_eq!(r[0].as_ref().expect("stored").sender_seq, 151);
}

#[tokio::test]
async fn a_missing_segment_refuses_to_start() {
    let dir = tempfile::tempdir().expect("dir");
    let s = open(dir.path()).expect("open");
    fill(&s, dir.path(), 30).await;
    drop(s);
    let segs = segment::list(dir.path()).expect("list");
    std::fs::remove_file(segment::path(dir.path(), segs[1])).expect("remove");
    let err = open(dir.path()).err().expect("refuses").to_string();
    assert!(err.contains("missing"), "{err}");
}

#[tokio::test]
async fn each_failed_step_leaves_nothing_behind_and_the_next_write_works() {
    let dir = tempfile::tempdir().expect("dir");
    let faults = Arc::new(Faults::new());
    let hooks = StoreHooks { faults: faults.clone(), ..StoreHooks::default() };
    let s = LogStore::open(dir.path(), small(), hooks.clone()).expect("open");
    let mut stored = Vec::new();
    let mut id = 0;
    for step in [FaultStep::Begin, FaultStep::Insert, FaultStep::Commit, FaultStep::Fsync] {
        faults.fail(step, 1);
        id += 1;
        let failed = s.append(vec![msg(id, "alice", Address::user("bob"))], vec![]).await;
        assert!(failed.is_err(), "{step:?}: the failed append is reported");
        assert_eq!(hooks.metrics.store_writer_ready.get(), 0, "{step:?}");
        assert!(s.ready().await.is_ok(), "{step:?}: ready again once a write commits");
        id += 1;
        let r = s.append(vec![msg(id, "alice", Address::user("bob"))], vec![]).await.expect("next append");
        assert!(!r[0].as_ref().expect("stored").duplicate);
        stored.push(id);
        // The retry of the failed message is new, not a duplicate: it was never stored.
        let retry = s.append(vec![msg(id - 1, "alice", Address::user("bob"))], vec![]).await.expect("retry");
        assert!(!retry[0].as_ref().expect("stored").duplicate, "{step:?}: the failed message was not stored");
        stored.push(id - 1);
    }
    assert_eq!(inbox_ids(&s, "bob").await, stored);
    drop(s);
    let s = open(dir.path()).expect("reopen");
    assert_eq!(inbox_ids(&s, "bob").await, stored, "the log holds exactly what was acknowledged");
}

#[tokio::test]
async fn one_process_per_log_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let _s = open(dir.path()).expect("open");
    let err = open(dir.path()).err().expect("second open refused").to_string();
    assert!(err.contains("in use"), "{err}");
}

#[tokio::test]
async fn state_survives_reopen_with_bodies_read_back_from_disk() {
    let dir = tempfile::tempdir().expect("dir");
    let s = open(dir.path()).expect("open");
    s.create_room("r", 1).await.expect("room");
    s.add_member("r", "alice", 1).await.expect("member");
    s.add_member("r", "bob", 1).await.expect("member");
    for i in 1..=50 {
        let to = if i % 2 == 0 { Address::room("r") } else { Address::user("bob") };
        s.append(vec![msg(i, "alice", to)], vec![]).await.expect("append");
    }
    let c = CursorUpdate { user: "bob".into(), device_id: "p".into(), room: None, seq: 7, at_ms: 1 };
    s.append(vec![], vec![c]).await.expect("cursor");
    s.create_ticket("t", "bob", u64::MAX).await.expect("ticket");
    s.checkpoint().await.expect("checkpoint");
    s.append(vec![msg(51, "bob", Address::user("alice"))], vec![]).await.expect("append after checkpoint");
    drop(s);
    let hooks = StoreHooks::default();
    let s = LogStore::open(dir.path(), small(), hooks.clone()).expect("reopen");
    assert_eq!(hooks.metrics.store_indexed_messages.get(), 51, "counted from the checkpoint and the replay");
    assert_eq!(s.inbox_head("bob").await.expect("head"), 26);
    let inbox = s.fetch_inbox("bob", 0, None, 100).await.expect("fetch");
    assert_eq!(inbox[0].msg.payload, b"payload 1", "an old body, read from its segment");
    assert_eq!(s.room_head("r").await.expect("head"), Some(25));
    let (log, first) = s.fetch_room("r", 20, None, 100).await.expect("room");
    assert_eq!((log.len(), first), (5, 1));
    assert_eq!(s.members("r").await.expect("members"), ["alice", "bob"]);
    assert_eq!(s.device_cursor("bob", "p").await.expect("cursor"), Some(7));
    assert_eq!(s.consume_ticket("t", 5).await.expect("ticket"), TicketUse::Valid("bob".into()));
    // Dedup still answers a retry of an old message with the original.
    let r = s.append(vec![msg(3, "alice", Address::user("bob"))], vec![]).await.expect("retry");
    let a = r[0].as_ref().expect("dup");
    assert!(a.duplicate);
    assert_eq!((a.msg.msg_id, a.sender_seq), (3, 2));
}

#[tokio::test]
async fn pruned_history_lets_old_segments_go_and_disk_use_stays_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let hooks = StoreHooks::default();
    let s = LogStore::open(dir.path(), small(), hooks.clone()).expect("open");
    s.create_room("r", 1).await.expect("room");
    s.add_member("r", "alice", 1).await.expect("member");
    let mut peak_segments = 0;
    for round in 0..20u64 {
        let batch = (0..20).map(|i| msg(round * 100 + i + 1, "alice", Address::room("r"))).collect();
        s.append(batch, vec![]).await.expect("append");
        s.prune_rooms(30, 0).await.expect("prune");
        s.checkpoint().await.expect("checkpoint");
        peak_segments = peak_segments.max(segment::list(dir.path()).expect("list").len());
    }
    let segs = segment::list(dir.path()).expect("list");
    assert!(segs[0] > 1, "old segments were deleted: {segs:?}");
    assert!(peak_segments < 15, "segments stay bounded by retention: peak {peak_segments}");
    let (log, first) = s.fetch_room("r", 0, None, 100).await.expect("room");
    assert_eq!(log.len(), 30);
    assert_eq!(first, 400 - 29);
    assert_eq!(hooks.metrics.store_indexed_messages.get(), 30, "pruned messages leave the index");
    drop(s);
    let s = open(dir.path()).expect("reopen after segments went");
    let (log, first) = s.fetch_room("r", 0, None, 100).await.expect("room");
    assert_eq!((log.len(), first), (30, 371));
    assert_eq!(log.last().expect("entries").msg.msg_id, 1920);
    assert_eq!(s.members("r").await.expect("members"), ["alice"], "metadata from deleted segments kept");
}

/// Ten users each sending to the next: message `i` goes from `u{i % 10}` to `u{(i + 1) % 10}`.
fn ring(i: u64) -> NewMessage {
    msg(i, &format!("u{}", i % 10), Address::user(format!("u{}", (i + 1) % 10)))
}

/// Ids each user's inbox must hold, in order, after messages `1..=n` of [`ring`].
fn ring_inbox(user: u64, n: u64) -> Vec<u64> {
    (1..=n).filter(|i| i % 10 == user || (i + 1) % 10 == user).collect()
}

async fn check_ring(s: &LogStore, n: u64) {
    for u in 0..10 {
        let user = format!("u{u}");
        assert_eq!(inbox_ids(s, &user).await, ring_inbox(u, n), "{user}'s inbox");
        // Pages that start in the cold range and end in the hot one.
        let page = s.fetch_inbox(&user, 95, Some(410), 7).await.expect("page");
        let want: Vec<u64> = ring_inbox(u, n).into_iter().skip(95).take(7).collect();
        assert_eq!(page.iter().map(|e| e.msg.msg_id).collect::<Vec<_>>(), want, "{user} page");
        assert_eq!(page.first().map(|e| e.seq), Some(96));
    }
}

#[tokio::test]
async fn the_index_beyond_the_hot_range_moves_to_disk_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().expect("dir");
    let settings = || LogSettings { index_hot: 100, ..small() };
    let hooks = StoreHooks::default();
    let s = LogStore::open(dir.path(), settings(), hooks.clone()).expect("open");
    let mut peak = 0;
    for b in 0..120u64 {
        let batch = (b * 25 + 1..=b * 25 + 25).map(ring).collect();
        let r = s.append(batch, vec![]).await.expect("append");
        assert!(r.iter().all(|a| a.as_ref().is_ok_and(|a| !a.duplicate)));
        if b % 8 == 7 {
            s.spill_index().await.expect("spill");
            peak = peak.max(s.indexed_in_memory());
        }
    }
    s.spill_index().await.expect("spill");
    // 3,000 messages stored; the index of at most the hot range (plus one batch) in memory.
    assert!(peak <= 100 + 8 * 25, "in memory after spills: {peak}");
    assert!(s.indexed_in_memory() <= 100, "{}", s.indexed_in_memory());
    assert_eq!(hooks.metrics.store_indexed_messages.get() as usize, s.indexed_in_memory());
    check_ring(&s, 3000).await;
    // Retries of spilled messages get the original (dedup keys on disk), new ones the next seq.
    for i in [1u64, 1234, 2990] {
        let r = s.append(vec![ring(i)], vec![]).await.expect("retry");
        let a = r[0].as_ref().expect("dup");
        assert!(a.duplicate, "retry of {i}");
        let seq = ring_inbox(i % 10, 3000).iter().position(|x| *x == i).expect("in inbox") as u64 + 1;
        assert_eq!((a.msg.msg_id, a.sender_seq), (i, seq));
    }
    let r = s.append(vec![ring(3001)], vec![]).await.expect("new");
    assert!(r[0].as_ref().is_ok_and(|a| !a.duplicate && a.sender_seq == 601));

    // A crash after spills and before any checkpoint: the log is replayed, spilled again.
    drop(s);
    let s = LogStore::open(dir.path(), settings(), StoreHooks::default()).expect("reopen");
    assert_eq!(s.indexed_in_memory(), 3001, "replayed from the log into memory");
    check_ring(&s, 3001).await;
    s.spill_index().await.expect("spill again");
    check_ring(&s, 3001).await;
    // After a checkpoint, start-up keeps only the hot range in memory.
    s.checkpoint().await.expect("checkpoint");
    drop(s);
    let s = LogStore::open(dir.path(), settings(), StoreHooks::default()).expect("reopen");
    assert!(s.indexed_in_memory() <= 100, "{}", s.indexed_in_memory());
    check_ring(&s, 3001).await;
    let r = s.append(vec![ring(5)], vec![]).await.expect("retry after reopen");
    assert!(r[0].as_ref().is_ok_and(|a| a.duplicate && a.msg.msg_id == 5));
    let r = s.append(vec![ring(3002)], vec![]).await.expect("new");
    assert!(r[0].as_ref().is_ok_and(|a| !a.duplicate && a.sender_seq == 602));
    // Without the cold index the spilled seqs cannot be served: refuse, never read them as lost.
    drop(s);
    std::fs::rename(dir.path().join("index"), dir.path().join("index.moved")).expect("move index");
    let refused = LogStore::open(dir.path(), settings(), StoreHooks::default()).err().expect("refused");
    assert!(refused.to_string().contains("index is missing"), "{refused}");
    std::fs::rename(dir.path().join("index.moved"), dir.path().join("index")).expect("restore index");
    let s = LogStore::open(dir.path(), settings(), StoreHooks::default()).expect("reopen with the index back");
    check_ring(&s, 3002).await;
}

#[tokio::test]
async fn spilled_room_history_is_read_pruned_and_deleted() {
    let dir = tempfile::tempdir().expect("dir");
    let hooks = StoreHooks::default();
    let s = LogStore::open(dir.path(), LogSettings { index_hot: 10, ..small() }, hooks.clone()).expect("open");
    s.create_room("r", 1).await.expect("room");
    s.add_member("r", "alice", 1).await.expect("member");
    for i in 1..=200u64 {
        let to = if i % 2 == 0 { Address::room("r") } else { Address::user("bob") };
        s.append(vec![msg(i, "alice", to)], vec![]).await.expect("append");
    }
    s.spill_index().await.expect("spill");
    // Room messages' entries stay in memory (bounded by room retention); 1:1 ones went.
    assert!(s.indexed_in_memory() <= 100 + 10, "{}", s.indexed_in_memory());
    let (log, first) = s.fetch_room("r", 0, None, 1000).await.expect("room");
    assert_eq!((log.len(), first), (100, 1));
    assert_eq!(log[0].msg.payload, b"payload 2");
    let r = s.append(vec![msg(2, "alice", Address::room("r"))], vec![]).await.expect("retry");
    assert!(r[0].as_ref().is_ok_and(|a| a.duplicate && a.sender_seq == 1), "a spilled room message's retry");
    assert_eq!(s.prune_rooms(30, 0).await.expect("prune"), 70);
    let (log, first) = s.fetch_room("r", 0, None, 1000).await.expect("room");
    assert_eq!((log.len(), first), (30, 71));
    assert!(s.indexed_in_memory() <= 30 + 10, "{}", s.indexed_in_memory());
    s.checkpoint().await.expect("checkpoint");
    drop(s);
    let s =
        LogStore::open(dir.path(), LogSettings { index_hot: 10, ..small() }, StoreHooks::default()).expect("reopen");
    let (log, first) = s.fetch_room("r", 0, None, 1000).await.expect("room");
    assert_eq!((log.len(), first, log[0].msg.msg_id), (30, 71, 142));
    assert_eq!(inbox_ids(&s, "bob").await, (1..=200).step_by(2).collect::<Vec<_>>());
    assert!(s.delete_room("r").await.expect("delete"));
    assert!(s.indexed_in_memory() <= 10, "{}", s.indexed_in_memory());
    assert_eq!(inbox_ids(&s, "alice").await.len(), 100);
}

#[tokio::test]
async fn spilled_dedup_keys_leave_with_the_window() {
    let dir = tempfile::tempdir().expect("dir");
    let s = LogStore::open(dir.path(), LogSettings { index_hot: 10, ..small() }, StoreHooks::default()).expect("open");
    // Old messages (1970: outside the 7-day window), spilled on their own ...
    let old = |i: u64| NewMessage { ts: 1_000 + i, ..ring(i) };
    s.append((1..=100).map(old).collect(), vec![]).await.expect("old");
    s.spill_index().await.expect("spill");
    // ... then recent ones, spilled too.
    s.append((101..=200).map(ring).collect(), vec![]).await.expect("recent");
    s.spill_index().await.expect("spill");
    s.maintain().await;
    let r = s.append(vec![old(50)], vec![]).await.expect("late retry");
    assert!(r[0].as_ref().is_ok_and(|a| !a.duplicate), "outside the window: stored as new");
    let r = s.append(vec![ring(150)], vec![]).await.expect("retry");
    assert!(r[0].as_ref().is_ok_and(|a| a.duplicate && a.msg.msg_id == 150), "inside the window: the original");
}
