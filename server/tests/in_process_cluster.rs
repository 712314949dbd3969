//! The cluster hub with in-process sessions: two node contexts on one real Redis, sessions
//! served over in-memory pipes (no QUIC, no node processes), wall-clock time from a manual
//! clock. Cross-node displacement (a resume supersedes quietly, a rival login kicks) and
//! presence across nodes.

mod common;

#[path = "support/pipe.rs"]
mod pipe;

#[path = "support/redis.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use pipe::{context_with, Pipe, T0};
use tether_proto::{CloseCode, Frame, KickReason, SubscribePresence};
use tether_server::Ctx;

/// Two nodes (ids 1 and 2) on `redis`, each with its own SQLite store (presence and kicks do
/// not need a shared one).
async fn two_nodes(redis: &str, dirs: &[tempfile::TempDir; 2]) -> [Arc<Ctx>; 2] {
    let mut out = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let (ctx, _clock) = context_with(dir.path(), |c| {
            c.redis_url = Some(redis.to_string());
            c.node_id = i as u16 + 1;
            c.redis_prefix = "inproc".into();
        })
        .await;
        out.push(ctx);
    }
    match <[Arc<Ctx>; 2]>::try_from(out) {
        Ok(a) => a,
        Err(_) => unreachable!("two contexts"),
    }
}

/// Reads frames until the stream ends; returns the kick reason if a `kicked` frame came.
async fn until_closed(p: &mut Pipe) -> Option<KickReason> {
    let mut kicked = None;
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), p.next()).await.expect("closed in time") {
        if let Frame::Kicked(k) = f {
            kicked = Some(k.reason);
        }
    }
    kicked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_another_node_supersedes_quietly_and_a_rival_login_kicks() {
    let redis = redis_server::Redis::start();
    let dirs = [tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir")];
    let [a, b] = two_nodes(&redis.url(), &dirs).await;

    // alice's phone on node 1, then the same phone (same device id) on node 2: a resume, e.g.
    // after a network change routed it elsewhere. The old session closes without `kicked`.
    let (mut first, ok) = Pipe::login(&a, "alice", "phone", "p1").await;
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    let (mut second, ok) = Pipe::login(&b, "alice", "phone", "p1").await;
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    assert_eq!(until_closed(&mut first).await, None, "a resume is not a rival login");
    assert_eq!(first.session.await.expect("task"), CloseCode::Superseded);

    // Another phone of alice's on node 1: the session on node 2 is kicked with `replaced`.
    let (_third, ok) = Pipe::login(&a, "alice", "phone", "p2").await;
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");
    assert_eq!(until_closed(&mut second).await, Some(KickReason::Replaced));
    assert_eq!(second.session.await.expect("task"), CloseCode::Replaced);

    // Both nodes list the one session left, on node 1.
    for ctx in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let s = ctx.hub.sessions("alice").await;
            if s.len() == 1 {
                assert_eq!((s[0].device_id.as_str(), s[0].node.as_str()), ("p2", "node-1"));
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "sessions: {s:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_on_one_node_is_seen_by_a_watcher_on_the_other() {
    let redis = redis_server::Redis::start();
    let dirs = [tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir")];
    let [a, b] = two_nodes(&redis.url(), &dirs).await;
    let (mut carol, _) = Pipe::login(&b, "carol", "phone", "c1").await;
    carol.send(&Frame::SubscribePresence(SubscribePresence { users: vec!["dave".into()] })).await;
    let p = loop {
        if let Some(Frame::Presence(p)) = carol.next().await {
            break p;
        }
    };
    assert!(!p.online);
    let (dave, _) = Pipe::login(&a, "dave", "laptop", "d1").await;
    let p = loop {
        match carol.next().await {
            Some(Frame::Presence(p)) if p.online => break p,
            Some(_) => {}
            None => panic!("carol's session ended"),
        }
    };
    assert_eq!(p.devices.len(), 1);
    assert_eq!(p.devices[0].node, "node-1");
    assert_eq!(p.devices[0].device_type, "laptop");
    assert_eq!(p.devices[0].since_ms, T0, "login time from node 1's injected clock");
    // dave leaves: carol hears it, with his last-seen time from node 1's clock.
    drop(dave);
    let p = loop {
        match carol.next().await {
            Some(Frame::Presence(p)) if !p.online => break p,
            Some(_) => {}
            None => panic!("carol's session ended"),
        }
    };
    assert!(p.devices.is_empty());
    assert_eq!(p.last_seen_ms, T0);
}
