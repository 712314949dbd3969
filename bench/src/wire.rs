//! A lean protocol-level client for load generation: one QUIC connection, one stream, frames
//! encoded and decoded with `tether-proto`, no session core (so the generator spends as little
//! CPU as possible on the shared machine).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tether_proto::{Credential, Decoded, Decoder, Frame, Login};

/// A client endpoint (several connections share one UDP socket).
pub fn endpoint(cert: &Path) -> quinn::Endpoint {
    let crypto = tether_sdk::tls::client_crypto(&tether_sdk::Trust::pinned(cert)).expect("tls");
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("quic tls");
    let mut cc = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(300)).ok());
    cc.transport_config(Arc::new(t));
    let socket = tether_server::udp_socket("127.0.0.1:0".parse().expect("addr"), 8 << 20).expect("socket");
    let runtime = quinn::default_runtime().expect("runtime");
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).expect("endpoint");
    ep.set_default_client_config(cc);
    ep
}

/// Reads frames from a stream.
pub struct Reader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: Decoder,
}

impl Reader {
    /// Wraps a receive stream.
    pub fn new(recv: quinn::RecvStream) -> Self {
        Reader { recv, buf: BytesMut::new(), decoder: Decoder::new(16 << 20) }
    }

    /// Next frame body, undecoded (length prefix removed); `None` at the end of the stream.
    /// For receivers that only need a few bytes of each frame.
    pub async fn next_raw(&mut self) -> Option<bytes::Bytes> {
        loop {
            match self.decoder.needed(&self.buf) {
                Ok(0) => {
                    let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
                    let mut frame = self.buf.split_to(4 + len);
                    return Some(frame.split_off(4).freeze());
                }
                Ok(_) => {}
                Err(e) => panic!("bad frame from server: {e}"),
            }
            match self.recv.read_chunk(1 << 20, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                _ => return None,
            }
        }
    }

    /// Next frame; `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(Decoded::Frame(f))) => return Some(f),
                Ok(Some(Decoded::Unknown { .. })) => continue,
                Ok(None) => {}
                Err(e) => panic!("bad frame from server: {e}"),
            }
            match self.recv.read_chunk(1 << 20, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                _ => return None,
            }
        }
    }
}

/// Connects, logs in and returns the streams after `login_ok`.
pub async fn login(
    ep: &quinn::Endpoint,
    addr: SocketAddr,
    credential: Credential,
    device_id: &str,
) -> (quinn::Connection, quinn::SendStream, Reader, tether_proto::LoginOk) {
    let conn = ep.connect(addr, "localhost").expect("connect").await.expect("handshake");
    let (mut send, recv) = conn.open_bi().await.expect("stream");
    let mut b = BytesMut::new();
    let login = Frame::Login(Login {
        version: tether_proto::PROTOCOL_VERSION,
        credential,
        device_type: "bench".into(),
        device_id: device_id.into(),
        inbox_cursor: None,
        client: Some("tether-bench".into()),
        room_cursors: None,
        metadata: None,
    });
    tether_proto::encode(&login, &mut b).expect("encode");
    send.write_all(&b).await.expect("write login");
    let mut reader = Reader::new(recv);
    match reader.next().await {
        Some(Frame::LoginOk(ok)) => (conn, send, reader, ok),
        other => panic!("login failed: {other:?}"),
    }
}

/// How a sender paces its stream.
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Messages to send.
    pub messages: u64,
    /// Sends in flight (unacknowledged) at most.
    pub window: usize,
    /// Fixed rate in messages/s (open loop); `None` = as fast as the window allows.
    pub rate: Option<f64>,
    /// Payload bytes (at least 8: the send time).
    pub payload: usize,
}

impl Pace {
    /// One sender's pacing under `shape` (its total rate split over the senders).
    pub fn per_sender(shape: &crate::load::Shape) -> Pace {
        Pace {
            messages: shape.messages,
            window: shape.window.max(1),
            rate: shape.rate.map(|r| r / shape.pairs as f64),
            payload: shape.payload,
        }
    }

    /// Message `i`'s send time in ns since `epoch`, and when it is due if that is still ahead
    /// (fixed-rate mode: the stamp is the *intended* time, so a stalled sender does not hide
    /// latency; as fast as possible: now).
    pub fn turn(&self, start: Instant, i: u64, epoch: Instant) -> (u64, Option<Instant>) {
        match self.rate {
            Some(r) => {
                let due = start + Duration::from_secs_f64(i as f64 / r);
                ((due - epoch).as_nanos() as u64, (due > Instant::now()).then_some(due))
            }
            None => (epoch.elapsed().as_nanos() as u64, None),
        }
    }

    /// A payload of `payload` bytes (at least 8) starting with `stamp`.
    pub fn payload(&self, stamp: u64) -> Vec<u8> {
        let mut p = vec![0u8; self.payload.max(8)];
        p[..8].copy_from_slice(&stamp.to_be_bytes());
        p
    }
}

/// Sends `pace.messages` messages to `to` on a logged-in stream and returns once every one is
/// acknowledged. Each payload starts with its send time in ns since `epoch`; in fixed-rate
/// mode the *intended* time, so a stalled sender does not hide latency (no coordinated
/// omission).
pub async fn send_stream(
    mut send: quinn::SendStream,
    mut reader: Reader,
    to: tether_proto::Address,
    pace: Pace,
    epoch: Instant,
) {
    let permits = Arc::new(tokio::sync::Semaphore::new(pace.window));
    let p2 = permits.clone();
    let total = pace.messages;
    let acks = tokio::spawn(async move {
        let mut n = 0;
        while n < total {
            match reader.next().await {
                Some(Frame::SendAck(_)) => {
                    n += 1;
                    p2.add_permits(1);
                }
                Some(Frame::SendError(e)) => panic!("send refused: {e:?}"),
                Some(_) => {}
                None => panic!("sender stream ended after {n} acks"),
            }
        }
    });
    let start = Instant::now();
    let mut buf = BytesMut::with_capacity(64 * 1024);
    for i in 0..pace.messages {
        let (stamp, wait) = pace.turn(start, i, epoch);
        if let Some(due) = wait {
            if !buf.is_empty() {
                send.write_all(&buf.split()).await.expect("write");
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if permits.clone().try_acquire_owned().map(|p| p.forget()).is_err() {
            if !buf.is_empty() {
                send.write_all(&buf.split()).await.expect("write");
            }
            permits.acquire().await.expect("sem").forget();
        }
        let f = Frame::Send(tether_proto::Send {
            client_msg_id: i.to_string(),
            to: to.clone(),
            content_type: "b".into(),
            payload: pace.payload(stamp),
        });
        tether_proto::encode(&f, &mut buf).expect("encode");
        if buf.len() >= 32 * 1024 {
            send.write_all(&buf.split()).await.expect("write");
        }
    }
    if !buf.is_empty() {
        send.write_all(&buf.split()).await.expect("write");
    }
    acks.await.expect("acks");
}
