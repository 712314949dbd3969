//! Sessions run in-process over a byte pipe (no sockets, no QUIC): the node's context with a
//! temporary SQLite store and a manual wall clock, sessions served by `serve_stream`, and
//! timeouts driven by tokio's paused clock instead of sleeps.

mod common;

#[path = "support/pipe.rs"]
mod pipe;

use std::time::Duration;

use pipe::{context, Pipe, T0};
use tether_proto::{Address, CloseCode, ErrorCode, Frame, KickReason, Send};

fn text(to: &str, id: &str, body: &str) -> Frame {
    Frame::Send(Send {
        client_msg_id: id.into(),
        to: Address::user(to),
        content_type: "text/plain".into(),
        payload: body.as_bytes().to_vec(),
    })
}

#[tokio::test(flavor = "current_thread")]
async fn a_message_travels_between_two_in_process_sessions_stamped_by_the_injected_clock() {
    let dir = tempfile::tempdir().expect("dir");
    let (ctx, clock) = context(dir.path()).await;
    let (mut alice, ok) = Pipe::login(&ctx, "alice", "phone", "a1").await;
    assert!(matches!(ok, Frame::LoginOk(ref o) if o.user == "alice"), "{ok:?}");
    let (mut bob, ok) = Pipe::login(&ctx, "bob", "phone", "b1").await;
    assert!(matches!(ok, Frame::LoginOk(_)), "{ok:?}");

    clock.advance(1234);
    alice.send(&text("bob", "m1", "hello bob")).await;
    match alice.next_significant().await {
        Some(Frame::SendAck(a)) => {
            assert_eq!(a.client_msg_id, "m1");
            assert_eq!(a.ts, T0 + 1234, "the message is stamped with the node's clock");
        }
        other => panic!("expected send_ack, got {other:?}"),
    }
    match bob.next_significant().await {
        Some(Frame::Deliver(d)) => {
            assert_eq!(d.from, "alice");
            assert_eq!(d.payload, b"hello bob");
            assert_eq!(d.ts, T0 + 1234);
            assert_eq!(d.seq, 1);
        }
        other => panic!("expected deliver, got {other:?}"),
    }
    // Presence carries the clock too: alice was last seen at login or later.
    let p = ctx.hub.presence(&["alice".to_string()]).await;
    assert!(p[0].online);
    assert!(p[0].last_seen_ms >= T0, "{p:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn the_idle_timeout_ends_a_silent_session_without_waiting_in_real_time() {
    let dir = tempfile::tempdir().expect("dir");
    let (ctx, _clock) = context(dir.path()).await;
    let (mut alice, _) = Pipe::login(&ctx, "alice", "phone", "a1").await;
    // From here tokio's clock is paused: it jumps to the idle deadline as soon as nothing else
    // can run, so the 30 s timeout passes in no real time.
    let real = std::time::Instant::now();
    tokio::time::pause();
    let mut saw_error = false;
    while let Some(f) = alice.next().await {
        if let Frame::Error(e) = f {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert!(e.fatal);
            saw_error = true;
        }
    }
    tokio::time::resume();
    assert!(saw_error, "the session said why it ended");
    assert_eq!(alice.session.await.expect("session task"), CloseCode::IdleTimeout);
    assert!(real.elapsed() < Duration::from_secs(30), "no real wait for the timeout");
    assert!(!ctx.hub.presence(&["alice".to_string()]).await[0].online, "offline once the session ended");
}

#[tokio::test(flavor = "current_thread")]
async fn frames_keep_a_session_alive_and_the_idle_timeout_counts_from_the_last_one() {
    let dir = tempfile::tempdir().expect("dir");
    let (ctx, _clock) = context(dir.path()).await;
    let (mut alice, _) = Pipe::login(&ctx, "alice", "phone", "a1").await;
    tokio::time::pause();
    // A ping every 20 s for 100 s: three idle periods of 30 s pass, none of them silent.
    for nonce in 0..5 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        alice.send(&Frame::Ping(tether_proto::Ping { nonce })).await;
        match alice.next().await {
            Some(Frame::Pong(p)) => assert_eq!(p.nonce, nonce, "alive after {} s", (nonce + 1) * 20),
            other => panic!("expected pong {nonce}, got {other:?}"),
        }
    }
    // Then silence: the session ends 30 s after the last frame, not 30 s after it was set up.
    let last = tokio::time::Instant::now();
    while alice.next().await.is_some() {}
    let silent = last.elapsed();
    tokio::time::resume();
    assert_eq!(alice.session.await.expect("session task"), CloseCode::IdleTimeout);
    assert!(
        silent >= Duration::from_secs(30) && silent < Duration::from_secs(31),
        "ended {silent:?} after the last frame"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_second_login_of_a_device_type_replaces_the_first_and_a_resume_supersedes_quietly() {
    let dir = tempfile::tempdir().expect("dir");
    let (ctx, _clock) = context(dir.path()).await;
    let (mut first, _) = Pipe::login(&ctx, "carol", "phone", "c1").await;
    // Another phone of carol's: the first one is kicked with `replaced`.
    let (mut second, ok) = Pipe::login(&ctx, "carol", "phone", "c2").await;
    assert!(matches!(ok, Frame::LoginOk(_)));
    let mut kicked = None;
    while let Some(f) = first.next().await {
        if let Frame::Kicked(k) = f {
            kicked = Some(k.reason);
        }
    }
    assert_eq!(kicked, Some(KickReason::Replaced));
    assert_eq!(first.session.await.expect("task"), CloseCode::Replaced);

    // The same device again (a reconnect that resumes): the old session closes quietly.
    let (_third, ok) = Pipe::login(&ctx, "carol", "phone", "c2").await;
    assert!(matches!(ok, Frame::LoginOk(_)));
    while let Some(f) = second.next().await {
        assert!(!matches!(f, Frame::Kicked(_)), "a resume is not a rival login: {f:?}");
    }
    assert_eq!(second.session.await.expect("task"), CloseCode::Superseded);
    let sessions = ctx.hub.sessions("carol").await;
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].device_id, "c2");
}
