//! Memory of idle sessions: N logged-in connections that only heartbeat.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tether_proto::{Credential, Frame, Ping};
use tokio::sync::Semaphore;

use crate::wire::{endpoint, login};

/// Opens `n` sessions that send a ping every `heartbeat`; returns once all are logged in and
/// keeps them alive in background tasks until the returned guard is dropped.
pub async fn open_sessions(
    addr: SocketAddr,
    cert: PathBuf,
    credential: Arc<dyn Fn(&str) -> Credential + Send + Sync>,
    n: usize,
    heartbeat: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let endpoints: Vec<quinn::Endpoint> = (0..16).map(|_| endpoint(&cert)).collect();
    let gate = Arc::new(Semaphore::new(256));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let ep = endpoints[i % endpoints.len()].clone();
        let gate = gate.clone();
        let cred = credential.clone();
        let done = done_tx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let user = format!("idle{i}");
            let (_conn, mut send, mut reader, _) = login(&ep, addr, cred(&user), &format!("{user}-dev")).await;
            drop(permit);
            let _ = done.send(());
            let mut nonce = 0;
            loop {
                tokio::time::sleep(heartbeat).await;
                nonce += 1;
                let mut b = BytesMut::new();
                tether_proto::encode(&Frame::Ping(Ping { nonce }), &mut b).expect("encode");
                if send.write_all(&b).await.is_err() {
                    return;
                }
                match reader.next().await {
                    Some(Frame::Pong(_)) => {}
                    _ => return,
                }
            }
        }));
    }
    for _ in 0..n {
        done_rx.recv().await.expect("login");
    }
    tasks
}

/// Resident set size of a process in bytes (Linux).
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// CPU seconds (user + system) a process has used so far (Linux).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
