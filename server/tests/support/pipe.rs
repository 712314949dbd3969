//! In-process sessions: a node's context with a manual wall clock and sessions served over an
//! in-memory pipe by `serve_stream` (no sockets, no QUIC).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tether_proto::{CloseCode, Credential, Decoded, Decoder, Frame, Login};
use tether_server::clock::ManualClock;
use tether_server::session::io::Stream;
use tether_server::session::serve_stream;
use tether_server::{Config, Ctx, Node};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::task::JoinHandle;

use super::common;

/// The manual clock's start.
pub const T0: u64 = 1_800_000_000_000;

/// A node context on a temp dir, its wall clock at `T0`.
pub async fn context(dir: &std::path::Path) -> (Arc<Ctx>, Arc<ManualClock>) {
    context_with(dir, |_| {}).await
}

/// A node context on a temp dir with `tweak` applied to its configuration.
pub async fn context_with(dir: &std::path::Path, tweak: impl FnOnce(&mut Config)) -> (Arc<Ctx>, Arc<ManualClock>) {
    let mut cfg = Config::for_data_dir(dir);
    cfg.jwt_secret = Some(common::JWT_SECRET.into());
    cfg.idle_timeout = Duration::from_secs(30);
    tweak(&mut cfg);
    let clock = Arc::new(ManualClock::new(T0));
    let (ctx, _tasks) = Node::context(cfg, clock.clone()).await.expect("context");
    (ctx, clock)
}

/// The client end of an in-process session.
pub struct Pipe {
    read: ReadHalf<DuplexStream>,
    write: WriteHalf<DuplexStream>,
    buf: BytesMut,
    decoder: Decoder,
    /// The server side of the session; its result is why it ended.
    pub session: JoinHandle<CloseCode>,
}

impl Pipe {
    /// Starts a session on `ctx` and logs `user` in on (`device_type`, `device_id`).
    pub async fn login(ctx: &Arc<Ctx>, user: &str, device_type: &str, device_id: &str) -> (Pipe, Frame) {
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

    pub async fn send(&mut self, f: &Frame) {
        let mut b = BytesMut::new();
        tether_proto::encode(f, &mut b).expect("encode");
        self.write.write_all(&b).await.expect("write");
    }

    /// The next frame, or `None` once the server ended the stream.
    pub async fn next(&mut self) -> Option<Frame> {
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
    pub async fn next_significant(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Presence(_) | Frame::RoomEvent(_) => {}
                f => return Some(f),
            }
        }
    }
}
