//! Sessions run in-process over a byte pipe (no sockets, no QUIC): the node's context with a
//! temporary SQLite store and a manual wall clock, sessions served by `serve_stream`, and
//! timeouts driven by tokio's paused clock instead of sleeps.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tether_proto::{Address, CloseCode, Credential, Decoded, Decoder, ErrorCode, Frame, KickReason, Login, Send};
use tether_server::clock::ManualClock;
use tether_server::session::io::Stream;
use tether_server::session::serve_stream;
use tether_server::{Config, Ctx, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

const T0: u64 = 1_800_000_000_000;

/// A node context on a temp dir, its wall clock at `T0`.
async fn context(dir: &std::path::Path) -> (Arc<Ctx>, Arc<ManualClock>) {
    let mut cfg = Config::for_data_dir(dir);
    cfg.jwt_secret = Some(common::JWT_SECRET.into());
    cfg.idle_timeout = Duration::from_secs(30);
    let clock = Arc::new(ManualClock::new(T0));
    let (ctx, _tasks) = Node::context(cfg, clock.clone()).await.expect("context");
    (ctx, clock)
}

/// The client end of an in-process session.
struct Pipe {
    read: ReadHalf<DuplexStream>,
    write: WriteHalf<DuplexStream>,
    buf: BytesMut,
    decoder: Decoder,
    session: JoinHandle<CloseCode>,
}

impl Pipe {
    /// Starts a session on `ctx` and logs `user` in on (`device_type`, `device_id`).
    async fn login(ctx: &Arc<Ctx>, user: &str, device_type: &str, device_id: &str) -> (Pipe, Frame) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (sr, sw) = tokio::io::split(server);
        let session = tokio::spawn(serve_stream(Stream(sr), Stream(sw), ctx.clone()));
        let (read, write) = tokio::io::split(client);
        let mut pipe = Pipe { read, write, buf: BytesMut::new(), decoder: Decoder::new(1 << 20), session };
        pipe.send(&Frame::Login(Login {
            version: tether_proto::PROTOCOL_VERSION,
            credential: Credential::Token(common::token(user, 3600)),
            device_type: device_type.into(),
            device_id: device_id.into(),
            inbox_cursor: None,
            client: None,
            room_cursors: None,
            metadata: None,
        }))
        .await;
        let first = pipe.next().await.expect("an answer to login");
        (pipe, first)
    }

    async fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        tether_proto::encode(f, &mut b).expect("encode");
        self.write.write_all(&b).await.expect("write");
    }

    /// The next frame, or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(Decoded::Frame(f)) = self.decoder.decode(&mut self.buf).expect("valid frame") {
                return Some(f);
            }
            if self.read.read_buf(&mut self.buf).await.expect("read") == 0 {
                return None;
            }
        }
    }

    /// The next frame that is not presence or a room event.
    async fn next_significant(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Presence(_) | Frame::RoomEvent(_) => {}
                f => return Some(f),
            }
        }
    }
}

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
