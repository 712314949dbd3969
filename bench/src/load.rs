//! 1:1 load: N sender -> recipient pairs, M messages each, send->deliver latency.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use tether_proto::{Ack, Address, Credential, Frame};
use tokio::sync::Barrier;

use crate::wire::{endpoint, login, send_stream, Pace};

/// Where to send and how to log in.
#[derive(Clone)]
pub struct Target {
    /// QUIC address.
    pub addr: SocketAddr,
    /// Certificate to pin.
    pub cert: PathBuf,
    /// Credential for a user name.
    pub credential: Arc<dyn Fn(&str) -> Credential + Send + Sync>,
}

/// Load shape.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Sender -> recipient pairs.
    pub pairs: usize,
    /// Messages per sender.
    pub messages: u64,
    /// Messages in flight per sender (unacknowledged sends).
    pub window: usize,
    /// Open-loop total rate (messages/s over all senders); `None` = as fast as acks allow.
    pub rate: Option<f64>,
    /// Payload bytes.
    pub payload: usize,
}

/// Result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Messages delivered.
    pub delivered: u64,
    /// First send to last delivery.
    pub elapsed: Duration,
    /// Send->deliver latency, microseconds.
    pub latency: Histogram<u64>,
}

impl Report {
    /// Deliveries per second.
    pub fn rate(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    /// Latency quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// A latency histogram in microseconds (1 us to 600 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// What one recipient saw: send->deliver latency (us), deliveries, time of the last one.
pub struct Tally {
    /// Send->deliver latency, microseconds.
    pub latency: Histogram<u64>,
    /// Deliveries.
    pub n: u64,
    /// When the last one arrived.
    pub end: Instant,
}

impl Tally {
    /// Nothing seen yet.
    pub fn new() -> Tally {
        Tally { latency: histogram(), n: 0, end: Instant::now() }
    }

    /// Records a delivered payload (send time in ns since `epoch` in its first 8 bytes).
    pub fn record(&mut self, payload: &[u8], epoch: Instant) {
        let now = epoch.elapsed().as_nanos() as u64;
        let Some(ts) = payload.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) else { return };
        self.latency.saturating_record(now.saturating_sub(u64::from_be_bytes(ts)) / 1000);
        self.n += 1;
        self.end = Instant::now();
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// Waits for the recipients' tallies and merges them into one report of the run that started
/// at `started`.
pub async fn merge(started: Instant, recipients: Vec<tokio::task::JoinHandle<Tally>>) -> Report {
    let mut latency = histogram();
    let (mut delivered, mut last) = (0, started);
    for t in recipients {
        let tally = t.await.expect("recipient");
        latency.add(&tally.latency).expect("merge");
        delivered += tally.n;
        last = last.max(tally.end);
    }
    Report { delivered, elapsed: last - started, latency }
}

/// Runs one load against `target`; user names get `prefix` so runs don't share inboxes.
pub async fn run(target: Target, shape: Shape, prefix: &str) -> Report {
    run_between(target.clone(), target, shape, prefix).await
}

/// Runs one load with the senders logged in at `senders` and the recipients at `recipients`
/// (two nodes of a cluster: every message crosses from one to the other).
pub async fn run_between(senders: Target, recipients: Target, shape: Shape, prefix: &str) -> Report {
    // A handful of client endpoints (UDP sockets) shared by the connections.
    let endpoints: Vec<quinn::Endpoint> = (0..8).map(|_| endpoint(&senders.cert)).collect();
    let barrier = Arc::new(Barrier::new(shape.pairs * 2 + 1));
    let epoch = Instant::now();
    let mut recv_tasks = Vec::new();
    let mut send_tasks = Vec::new();
    for i in 0..shape.pairs {
        let r_user = format!("{prefix}r{i}");
        let s_user = format!("{prefix}s{i}");
        let ep = endpoints[i % endpoints.len()].clone();
        let t = recipients.clone();
        let b = barrier.clone();
        let ru = r_user.clone();
        recv_tasks.push(tokio::spawn(async move { recipient(ep, t, ru, shape, b, epoch).await }));
        let ep = endpoints[(i + 3) % endpoints.len()].clone();
        let t = senders.clone();
        let b = barrier.clone();
        send_tasks.push(tokio::spawn(async move { sender(ep, t, s_user, r_user, shape, b, epoch).await }));
    }
    barrier.wait().await;
    let report = merge(Instant::now(), recv_tasks).await;
    for t in send_tasks {
        t.await.expect("sender");
    }
    for ep in endpoints {
        ep.close(0u32.into(), b"done");
    }
    report
}

async fn sender(
    ep: quinn::Endpoint,
    t: Target,
    user: String,
    to: String,
    shape: Shape,
    barrier: Arc<Barrier>,
    epoch: Instant,
) {
    let (_conn, send, reader, _) = login(&ep, t.addr, (t.credential)(&user), &format!("{user}-dev")).await;
    barrier.wait().await;
    send_stream(send, reader, Address::user(to), Pace::per_sender(&shape), epoch).await;
}

async fn recipient(
    ep: quinn::Endpoint,
    t: Target,
    user: String,
    shape: Shape,
    barrier: Arc<Barrier>,
    epoch: Instant,
) -> Tally {
    let (_conn, mut send, mut reader, _) = login(&ep, t.addr, (t.credential)(&user), &format!("{user}-dev")).await;
    let mut tally = Tally::new();
    barrier.wait().await;
    let mut acked = 0;
    let mut acked_at = Instant::now();
    let mut buf = BytesMut::new();
    while tally.n < shape.messages {
        match reader.next().await {
            Some(Frame::Deliver(d)) => {
                tally.record(&d.payload, epoch);
                // Cumulative ack like the SDK: every 64 messages or 50 ms, and at the end.
                if d.seq - acked >= 64 || acked_at.elapsed() >= Duration::from_millis(50) || tally.n == shape.messages {
                    acked = d.seq;
                    acked_at = Instant::now();
                    tether_proto::encode(&Frame::Ack(Ack { inbox: d.seq, rooms: None }), &mut buf).expect("encode");
                    send.write_all(&buf.split()).await.expect("ack");
                }
            }
            Some(_) => {}
            None => panic!("recipient {user} stream ended after {}", tally.n),
        }
    }
    tally
}
