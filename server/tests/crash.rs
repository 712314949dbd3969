//! SIGKILL of a node on the log store at random points of a send stream, again and again: at
//! some kills a batch is being written, at others it is being synced or was just acknowledged.
//! After each restart the log is replayed (a cut-short write truncated); at the end every
//! acknowledged message is stored exactly once under the id it was acknowledged with, the
//! inbox seqs are gapless, and the recipient's app saw each message once, in order. The hot
//! index is small, checkpoints frequent and segments small, so kills also land while index
//! entries move to the cold index, while checkpoints are written and while the next segment
//! is prepared or renamed into place.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use rand::{Rng, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigkills_mid_batch_lose_and_repeat_nothing() {
    const N: usize = 3000;
    const KILLS: usize = 5;
    // A small hot index, frequent checkpoints and 32 KiB segments: spills to the cold index,
    // checkpoints and prepared segments happen during the stream, so kills also land in them.
    let mut server = Server::start(&[
        "--log-index-hot",
        "300",
        "--log-checkpoint-every",
        "50ms",
        "--log-checkpoint-bytes",
        "65536",
        "--log-segment-bytes",
        "32768",
    ]);
    let sender_state = tempfile::tempdir().expect("dir");
    let receiver_state = tempfile::tempdir().expect("dir");
    let (alice, _ae) = server.durable_client("alice", "alice-phone", sender_state.path(), 64).await;
    let (bob, mut be) = server.durable_client("bob", "bob-phone", receiver_state.path(), 32).await;
    alice.wait_online().await.expect("online");
    bob.wait_online().await.expect("online");

    let (acked, sends) = send_numbered(&alice, "bob", N);
    // Kill at random points while the stream runs: after a random share of the messages was
    // acknowledged, plus a random delay of up to 3 ms (inside a batch's write or sync).
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut kills = 0;
    for k in 0..KILLS {
        let at = N * (k + 1) / (KILLS + 2) + rng.random_range(0..N / (KILLS * 4));
        while acked.load(Ordering::Relaxed) < at {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_micros(rng.random_range(0..3000))).await;
        if acked.load(Ordering::Relaxed) < N {
            server.kill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            server.restart();
        }
    }
    assert!(kills >= 3, "the kills interrupted the stream ({kills})");

    let acks: HashMap<String, u64> =
        expect_acks(sends, 90).await.into_iter().map(|a| (a.client_msg_id, a.msg_id)).collect();
    assert_eq!(acks.len(), N);
    expect_numbered(&mut be, N).await;
    // How many segments the last process prepared ahead (not asserted: it depends on timing).
    let prepared = server.metric("tether_store_latency_seconds_count{op=\"prepare\"}").await;
    alice.close().await;
    bob.close().await;
    server.kill();

    let store = server.open_store().await;
    assert_eq!(store.count_from("alice").await.expect("count"), N as u64, "each message stored once");
    let inbox = store.fetch_inbox("bob", 0, None, 100_000).await.expect("inbox");
    assert_eq!(inbox.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=N as u64).collect::<Vec<_>>(), "gapless");
    for e in &inbox {
        assert_eq!(acks.get(&e.msg.client_msg_id), Some(&e.msg.msg_id), "stored under the acknowledged id");
    }
    drop(store);
    // The newest checkpoint relies on the cold index: most entries were loaded from disk.
    let dir = tether_server::store::log::dir_of(&server.db_url()).expect("a log store");
    let log = tether_server::store::log::LogStore::open(&dir, Default::default(), Default::default()).expect("open");
    assert!(
        log.indexed_in_memory() < N / 2,
        "spilled before the last checkpoint: {} in memory",
        log.indexed_in_memory()
    );
    println!(
        "{kills} SIGKILLs mid-stream: {N} acknowledged, {N} stored once, gapless ({prepared} segments prepared by the last process)"
    );
}
