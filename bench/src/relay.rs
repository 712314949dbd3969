//! The bare-quinn relay baseline: same QUIC settings and framing as a Tether node, but no
//! authentication, no store, no dedup and no ordering logic. A `send` is answered with a
//! `send_ack` at once and forwarded as a `deliver` to the recipient's connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tether_proto::{Credential, Deliver, Frame, SendAck};
use tokio::sync::mpsc;

use crate::wire::Reader;

type Peers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Frame>>>>;

/// Runs the relay on `addr` with the certificate of `data_dir` (created if missing); prints
/// `RELAY_READY <addr>` and serves until killed.
pub async fn serve(addr: SocketAddr, data_dir: &std::path::Path) {
    let cfg = tether_server::Config::for_data_dir(data_dir);
    let (cert, key) = tether_server::tls::ensure_dev_cert(data_dir, &[]).expect("cert");
    let (certs, key) = tether_server::tls::load_pem(&cert, &key).expect("pem");
    let mut sc = quinn::ServerConfig::with_crypto(tether_server::tls::quic_server_crypto(certs, key).expect("crypto"));
    sc.transport_config(Arc::new(tether_server::transport_config(&cfg)));
    let ep = quinn::Endpoint::server(sc, addr).expect("bind");
    println!("RELAY_READY {}", ep.local_addr().expect("addr"));
    let peers: Peers = Arc::default();
    while let Some(inc) = ep.accept().await {
        let peers = peers.clone();
        tokio::spawn(async move {
            if let Ok(conn) = inc.await {
                let _ = conn_task(conn, peers).await;
            }
        });
    }
}

async fn conn_task(conn: quinn::Connection, peers: Peers) -> Option<()> {
    let (mut send, recv) = conn.accept_bi().await.ok()?;
    let mut reader = Reader::new(recv);
    let Some(Frame::Login(login)) = reader.next().await else { return None };
    let user = match login.credential {
        Credential::Token(t) | Credential::Ticket(t) | Credential::Resume(t) => t,
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    peers.lock().ok()?.insert(user.clone(), tx.clone());
    let ok = Frame::LoginOk(tether_proto::LoginOk {
        version: 1,
        session_id: "relay".into(),
        user: user.clone(),
        inbox_head: 0,
        server_time_ms: 0,
        idle_timeout_ms: 0,
        max_frame: 65536,
        resume_token: None,
        resume_expires_ms: None,
        room_heads: None,
    });
    tx.send(ok).ok()?;
    // Writer: batch whatever is queued into one write, like the node's session loop.
    tokio::spawn(async move {
        let mut buf = BytesMut::new();
        while let Some(f) = rx.recv().await {
            let _ = tether_proto::encode(&f, &mut buf);
            while let Ok(f) = rx.try_recv() {
                let _ = tether_proto::encode(&f, &mut buf);
                if buf.len() > 256 * 1024 {
                    break;
                }
            }
            if send.write_chunk(buf.split().freeze()).await.is_err() {
                return;
            }
        }
    });
    let mut seq = 0u64;
    while let Some(f) = reader.next().await {
        if let Frame::Send(s) = f {
            seq += 1;
            let to = peers.lock().ok()?.get(&s.to.id).cloned();
            let _ = tx.send(Frame::SendAck(SendAck {
                client_msg_id: s.client_msg_id.clone(),
                msg_id: seq,
                seq,
                ts: 0,
                duplicate: false,
            }));
            if let Some(to) = to {
                let _ = to.send(Frame::Deliver(Deliver {
                    msg_id: seq,
                    seq,
                    from: user.clone(),
                    from_device: String::new(),
                    client_msg_id: s.client_msg_id,
                    to: s.to,
                    ts: 0,
                    content_type: s.content_type,
                    payload: s.payload,
                }));
            }
        }
    }
    peers.lock().ok()?.remove(&user);
    Some(())
}
