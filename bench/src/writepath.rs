//! The durable write path in isolation (issue 12's "measure before choosing"): the cost per
//! message of committing batches through the SQLite store (fsync per commit, as a node does),
//! through the log store (the embedded default: one checksummed record and one `fdatasync`
//! per batch, indexes in memory), through fjall (an LSM-tree: the same message, inbox and
//! dedup entries in one cross-partition batch, journal fsynced per batch), and a bare
//! append of the encoded messages to one file (the floor). No network, no sessions: the
//! store's share of a message's cost.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tether_proto::Address;
use tether_server::config::StoreSync;
use tether_server::store::log::{LogSettings, LogStore};
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
    through_store(&store, dir, shape).await
}

/// Batches through the log store with its defaults (one record + one fdatasync per batch).
pub async fn log_store(dir: &Path, shape: WriteShape) -> WriteReport {
    let store = LogStore::open(dir, LogSettings::default(), StoreHooks::default()).expect("open log store");
    let report = through_store(&store, dir, shape).await;
    // What a checkpoint of that index costs (commits wait only while the index is copied).
    let t = Instant::now();
    let stats = store.checkpoint().await.expect("checkpoint");
    println!(
        "log-store checkpoint of {} messages: {:.1} ms in all, index locked {:.1} ms, {} bytes ({:.0} per message)",
        report.messages,
        t.elapsed().as_secs_f64() * 1000.0,
        stats.index_locked.as_secs_f64() * 1000.0,
        stats.bytes,
        stats.bytes as f64 / report.messages.max(1) as f64
    );
    report
}

async fn through_store(store: &dyn Store, dir: &Path, shape: WriteShape) -> WriteReport {
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

/// The same batches through fjall 2 (an LSM-tree with a journal), written as a fjall-based
/// store would: per message the message itself, an inbox entry per recipient
/// (`user 0x00 seq` -> id) and a dedup entry (`sender 0x00 client id` -> id), after a dedup
/// lookup; one cross-partition batch and one `persist(SyncData)` per batch.
pub fn fjall(dir: &Path, shape: WriteShape) -> WriteReport {
    use std::collections::HashMap;
    let ks = fjall::Config::new(dir).open().expect("open fjall");
    let part = |name: &str| ks.open_partition(name, fjall::PartitionCreateOptions::default()).expect("partition");
    let (messages, inbox, dedup) = (part("messages"), part("inbox"), part("dedup"));
    let mut heads: HashMap<String, u64> = HashMap::new();
    let mut commit = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let key = |a: &str, b: &[u8]| -> Vec<u8> { [a.as_bytes(), &[0u8], b].concat() };
    let started = Instant::now();
    let mut n = 0;
    for _ in 0..shape.batches {
        let t = Instant::now();
        let mut b = ks.batch();
        for _ in 0..shape.batch {
            n += 1;
            let m = message(n, &shape);
            let dk = key(&m.sender, m.client_msg_id.as_bytes());
            if dedup.get(&dk).expect("dedup lookup").is_some() {
                continue;
            }
            let id = m.msg_id.to_be_bytes();
            b.insert(&messages, id, rmp_serde::to_vec(&m).expect("encode"));
            for user in [&m.sender, &m.to.id] {
                let h = heads.entry(user.clone()).or_default();
                *h += 1;
                b.insert(&inbox, key(user, &h.to_be_bytes()), id);
            }
            b.insert(&dedup, dk, id);
        }
        b.commit().expect("commit");
        ks.persist(fjall::PersistMode::SyncData).expect("persist");
        commit.saturating_record(t.elapsed().as_micros() as u64);
    }
    let elapsed = started.elapsed();
    drop((messages, inbox, dedup));
    let bytes = ks.disk_space();
    WriteReport { messages: n, elapsed, commit, bytes }
}
