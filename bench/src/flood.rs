//! A login flood: N connections that finish the QUIC handshake, open their stream and never log
//! in. Measures the server's memory per waiting connection and what it still holds after they
//! are gone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use tether_proto::{Frame, Ping};
use tokio::sync::Semaphore;

use crate::wire::endpoint;

/// Opens `n` connections that each send one `ping` (so the server has accepted their stream)
/// and then wait; returns them once all are open. Connections the server refused are counted.
pub async fn open_waiting(addr: SocketAddr, cert: PathBuf, n: usize) -> (Vec<quinn::Connection>, usize) {
    let endpoints: Vec<quinn::Endpoint> = (0..16).map(|_| endpoint(&cert)).collect();
    let gate = Arc::new(Semaphore::new(128));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let ep = endpoints[i % endpoints.len()].clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let conn = ep.connect(addr, "localhost").ok()?.await.ok()?;
            let (mut send, mut recv) = conn.open_bi().await.ok()?;
            let mut b = BytesMut::new();
            tether_proto::encode(&Frame::Ping(Ping { nonce: i as u64 }), &mut b).ok()?;
            send.write_all(&b).await.ok()?;
            // The pong proves the server holds the stream.
            let mut buf = [0u8; 64];
            recv.read(&mut buf).await.ok()??;
            std::mem::forget(send);
            std::mem::forget(recv);
            Some(conn)
        }));
    }
    let mut open = Vec::with_capacity(n);
    let mut refused = 0;
    for t in tasks {
        match t.await.ok().flatten() {
            Some(c) => open.push(c),
            None => refused += 1,
        }
    }
    (open, refused)
}
