//! The durable write path in isolation (issue 12's "measure before choosing"): the cost per
//! message of committing batches through the SQLite store (fsync per commit, as a node does)
//! against appending the same messages to a checksummed, append-only log file with one
//! `fdatasync` per batch. No network, no sessions: the store's share of a message's cost.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tether_proto::Address;
use tether_server::config::StoreSync;
use tether_server::store::sqlite::{SqliteStore, StoreHooks};
use tether_server::store::{NewMessage, Store};

/// Shape of one write-path run.
#[derive(Debug, Clone, Copy)]
pub struct WriteShape {
    /// Batches to commit.
    pub batches: u64,
    /// Messages per batch (a node's group commit gathers what arrived during the last commit).
    pub batch: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Distinct sender -> recipient pairs the messages rotate over.
    pub pairs: usize,
}

/// Result of one engine's run.
pub struct WriteReport {
    /// Messages written.
    pub messages: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Per-batch commit latency, microseconds.
    pub commit: Histogram<u64>,
    /// Bytes the engine's files grew by.
    pub bytes: u64,
}

impl WriteReport {
    /// One line: messages/s, microseconds per message, commit p50/p99, bytes per message.
    pub fn line(&self, name: &str) -> String {
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{name:<12} messages={} rate={:.0} msg/s per_message={:.1}us commit_p50={:.2}ms commit_p99={:.2}ms bytes_per_message={:.0}",
            self.messages,
            self.messages as f64 / secs,
            secs * 1e6 / self.messages as f64,
            self.commit.value_at_quantile(0.5) as f64 / 1000.0,
            self.commit.value_at_quantile(0.99) as f64 / 1000.0,
            self.bytes as f64 / self.messages as f64,
        )
    }
}

fn message(n: u64, shape: &WriteShape) -> NewMessage {
    let pair = (n % shape.pairs as u64) as usize;
    NewMessage {
        msg_id: n + 1,
        sender: format!("s{pair}"),
        sender_device: format!("s{pair}-dev"),
        client_msg_id: format!("c{n}"),
        to: Address::user(format!("r{pair}")),
        ts: 1_700_000_000_000 + n,
        content_type: "text/plain".into(),
        payload: vec![b'x'; shape.payload],
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

/// Batches through the SQLite store, synchronous=FULL (one fsync of the WAL per commit).
pub async fn sqlite(dir: &Path, shape: WriteShape) -> WriteReport {
    let url = format!("sqlite://{}", dir.join("tether.db").display());
    let store = SqliteStore::open_with(&url, StoreSync::Full, StoreHooks::default()).await.expect("open sqlite");
    let mut commit = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let before = dir_bytes(dir);
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..shape.batches {
        let batch: Vec<NewMessage> = (0..shape.batch)
            .map(|_| {
                n += 1;
                message(n, &shape)
            })
            .collect();
        let t = Instant::now();
        store.append(batch, Vec::new()).await.expect("append");
        commit.saturating_record(t.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    WriteReport { messages: n, elapsed, commit, bytes: dir_bytes(dir).saturating_sub(before) }
}

/// FNV-1a, 64 bits: the per-record checksum of the log (a real log would use CRC32C; the cost
/// here is a few nanoseconds per record either way).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The same batches appended to one log file as length + checksum + MessagePack records, one
/// `fdatasync` per batch (the durability point of an append-only write path).
pub fn log(dir: &Path, shape: WriteShape) -> WriteReport {
    let path = dir.join("segment-000001.log");
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).expect("open log");
    // A new segment is durable only once its directory entry is.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).expect("fsync dir");
    let mut commit = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut buf = Vec::with_capacity(shape.batch * (shape.payload + 128));
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..shape.batches {
        buf.clear();
        for _ in 0..shape.batch {
            n += 1;
            let body = rmp_serde::to_vec_named(&message(n, &shape)).expect("encode");
            buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
            buf.extend_from_slice(&fnv1a(&body).to_be_bytes());
            buf.extend_from_slice(&body);
        }
        let t = Instant::now();
        file.write_all(&buf).expect("write");
        file.sync_data().expect("fdatasync");
        commit.saturating_record(t.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    WriteReport { messages: n, elapsed, commit, bytes }
}
