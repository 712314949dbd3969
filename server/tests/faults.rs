//! "Acknowledged means durable" under store faults, end to end: the real server process with
//! faults injected into each step of its commit path, and on a real filesystem that fills up.
//! After each fault the server is killed with SIGKILL and restarted, and every `send_ack` a
//! client saw must be found in the store, once.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use tether_proto::{Address, ErrorCode, Frame};

/// Logs in a fresh device of `user` and reads its whole inbox: client msg id -> (msg id, seq).
async fn whole_inbox(server: &Server, user: &str, device: &str) -> Vec<(String, u64, u64)> {
    let (mut raw, ok) = Raw::login(server, user, device, None, None).await;
    let mut out = Vec::new();
    while (out.len() as u64) < ok.inbox_head {
        let d = raw
            .expect_pinging(30, |f| match f {
                Frame::Deliver(d) => Some(d.clone()),
                _ => None,
            })
            .await;
        out.push((d.client_msg_id.clone(), d.msg_id, d.seq));
    }
    out
}

/// Asserts that the inbox holds every acknowledged message exactly once, with gapless seqs.
fn check_inbox(inbox: &[(String, u64, u64)], acked: &HashMap<String, u64>) {
    let seqs: Vec<u64> = inbox.iter().map(|e| e.2).collect();
    assert_eq!(seqs, (1..=inbox.len() as u64).collect::<Vec<_>>(), "gapless inbox");
    let mut seen = HashSet::new();
    for (cid, _, _) in inbox {
        assert!(seen.insert(cid.clone()), "{cid} stored twice");
    }
    let stored: HashMap<&str, u64> = inbox.iter().map(|(c, id, _)| (c.as_str(), *id)).collect();
    let missing: Vec<&String> = acked.keys().filter(|c| !stored.contains_key(c.as_str())).collect();
    assert!(missing.is_empty(), "{} acknowledged messages missing: {missing:?}", missing.len());
    for (cid, id) in acked {
        assert_eq!(stored.get(cid.as_str()), Some(id), "{cid} stored under the acknowledged id");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_failed_commit_step_loses_no_acknowledged_message() {
    // Checkpoints of the log store considered often, so the injected checkpoint fault fires soon.
    let mut server = Server::start(&["--fault-injection", "--log-checkpoint-every", "200ms"]);
    let mut acked: HashMap<String, u64> = HashMap::new();
    for (round, step) in ["begin", "insert", "commit", "fsync", "checkpoint"].into_iter().enumerate() {
        let (alice, _events) = server.client("alice", "phone", &format!("alice-{round}")).await;
        let errors_before = server.metric(r#"tether_store_errors_total{op="append"}"#).await;
        let (status, body) =
            server.admin("POST", "/v1/faults", Some(serde_json::json!({ "step": step, "times": 1 }))).await;
        assert_eq!(status, 200, "{body}");
        // Ten sends in flight; the SDK retries a refused one with the same client id.
        let sends: Vec<_> = (0..10).map(|i| tokio::spawn(alice.send_text("bob", &format!("{step} {i}")))).collect();
        for send in sends {
            let ack = tokio::time::timeout(Duration::from_secs(60), send).await.expect("acked in time").expect("task");
            let ack = ack.unwrap_or_else(|e| panic!("{step}: send failed for good: {e:?}"));
            acked.insert(ack.client_msg_id.clone(), ack.msg_id);
        }
        if step == "checkpoint" {
            // A failed checkpoint costs no message; it is counted.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while server.metric(r#"tether_store_errors_total{op="checkpoint"}"#).await < 1.0 {
                assert!(tokio::time::Instant::now() < deadline, "checkpoint failure counted");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } else {
            let errors = server.metric(r#"tether_store_errors_total{op="append"}"#).await;
            assert_eq!(errors, errors_before + 1.0, "{step}: the failed append is counted");
            let (status, _) = http(server.admin, "GET", "/readyz", None, None).await;
            assert_eq!(status, 200, "{step}: ready again once the fault is gone");
        }
        alice.close().await;
        server.restart();
        check_inbox(&whole_inbox(&server, "bob", &format!("bob-check-{round}")).await, &acked);
    }
    assert_eq!(acked.len(), 50);
}

/// A tmpfs mounted for the length of a test.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(at).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes `path` until the filesystem is full; returns its size.
fn fill(path: &Path) -> u64 {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).expect("filler");
    let chunk = vec![0u8; 16 * 1024];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    f.metadata().map(|m| m.len()).unwrap_or(0)
}

/// Sends `ids` (8 in flight) and sorts the answers into acks and refusals.
async fn send_batch(raw: &mut Raw, ids: &[String]) -> (Vec<(String, u64)>, Vec<String>) {
    let mut acks = Vec::new();
    let mut refused = Vec::new();
    for window in ids.chunks(8) {
        for id in window {
            raw.write(&Frame::Send(tether_proto::Send {
                client_msg_id: id.clone(),
                to: Address::user("bob"),
                content_type: "application/octet-stream".into(),
                payload: vec![7u8; 8 * 1024],
            }))
            .await;
        }
        let mut answered = 0;
        while answered < window.len() {
            match raw.expect(30, |f| matches!(f, Frame::SendAck(_) | Frame::SendError(_)).then(|| f.clone())).await {
                Frame::SendAck(a) => acks.push((a.client_msg_id, a.msg_id)),
                Frame::SendError(e) => {
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                    refused.push(e.client_msg_id);
                }
                _ => unreachable!(),
            }
            answered += 1;
        }
    }
    (acks, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_loses_no_acknowledged_message_and_is_not_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let Some(_tmpfs) = Tmpfs::mount(&data, "12m") else {
        println!("SKIPPED a_full_disk_loses_no_acknowledged_message_and_is_not_ready: mounting a tmpfs needs root");
        return;
    };
    let mut server = Server::start_in(dir, data.clone(), &[]);
    let (mut raw, _) = Raw::login(&server, "alice", "alice-raw", None, None).await;
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut next = 0;
    let mut ids = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                next += 1;
                format!("m{next}")
            })
            .collect()
    };
    let (a, r) = send_batch(&mut raw, &ids(40)).await;
    assert!(r.is_empty());
    acked.extend(a);

    // Fill the disk, then keep sending (and retrying what was refused, as clients do).
    let filler = data.join("filler");
    fill(&filler);
    let mut pending: Vec<String> = Vec::new();
    let mut refusals = 0;
    let mut rounds = 0;
    while refusals < 40 {
        rounds += 1;
        assert!(rounds < 200, "the full disk never refused a send");
        let mut batch = std::mem::take(&mut pending);
        batch.extend(ids(16));
        let (a, r) = send_batch(&mut raw, &batch).await;
        refusals += r.len();
        acked.extend(a);
        pending = r;
    }
    // Take whatever a checkpoint may have given back, then ask.
    fill(&filler);
    let (status, body) = http(server.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503, "not ready while the disk is full: {body}");
    assert!(server.metric(r#"tether_store_errors_total{op="append"}"#).await >= 1.0);
    assert_eq!(server.metric("tether_store_writer_ready").await, 0.0);
    // Still full: retries keep being refused, never acknowledged.
    for _ in 0..5 {
        let (a, r) = send_batch(&mut raw, &std::mem::take(&mut pending)).await;
        acked.extend(a);
        pending = r;
    }

    // Free the space: every refused message gets in on retry, without a restart.
    std::fs::remove_file(&filler).expect("free space");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pending.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "{} sends still refused after space was freed", pending.len());
        let (a, r) = send_batch(&mut raw, &std::mem::take(&mut pending)).await;
        acked.extend(a);
        pending = r;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let (a, r) = send_batch(&mut raw, &ids(16)).await;
    assert!(r.is_empty(), "sends work again");
    acked.extend(a);
    let (status, _) = http(server.admin, "GET", "/readyz", None, None).await;
    assert_eq!(status, 200, "ready again");
    drop(raw);

    server.restart();
    let inbox = whole_inbox(&server, "bob", "bob-check").await;
    check_inbox(&inbox, &acked);
    assert_eq!(inbox.len(), next, "every message sent is stored once");
    println!("full disk: {} acknowledged, {refusals} refusals while full, 0 missing, 0 duplicated", acked.len());
}
