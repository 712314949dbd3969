//! Room fan-out: one sender, a room of N online members, deliveries/s and latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tether_proto::{Ack, Address, Frame, JoinRoom};
use tokio::sync::{Barrier, Semaphore};

use crate::load::{merge, Report, Tally, Target};
use crate::wire::{endpoint, login, send_stream, Pace, Reader};

/// Fan-out shape.
#[derive(Debug, Clone, Copy)]
pub struct RoomShape {
    /// Online members receiving.
    pub members: usize,
    /// Messages the sender sends.
    pub messages: u64,
    /// Sends in flight.
    pub window: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Fixed sending rate in messages/s (open loop); `None` = as fast as the window allows.
    pub rate: Option<f64>,
}

async fn join(send: &mut quinn::SendStream, reader: &mut Reader, room: &str) {
    let mut b = BytesMut::new();
    tether_proto::encode(&Frame::JoinRoom(JoinRoom { room: room.into() }), &mut b).expect("encode");
    send.write_all(&b).await.expect("join");
    loop {
        match reader.next().await {
            Some(Frame::RoomJoined(_)) => return,
            Some(_) => {}
            None => panic!("stream ended before room_joined"),
        }
    }
}

/// Runs the fan-out; returns deliveries, elapsed, latency per delivery.
pub async fn run(target: Target, shape: RoomShape, pids: (u32, u32)) -> (Report, (f64, f64)) {
    let room = "bench-room";
    let endpoints: Vec<quinn::Endpoint> = (0..8).map(|_| endpoint(&target.cert)).collect();
    let barrier = Arc::new(Barrier::new(shape.members + 2));
    // Everyone joined; then every member reads the setup traffic (each join is announced to
    // the members before it: O(n^2) room events) until quiet, so it is not measured.
    let joined = Arc::new(Barrier::new(shape.members + 2));
    let epoch = Instant::now();
    let gate = Arc::new(Semaphore::new(64));
    let mut members = Vec::new();
    for i in 0..shape.members {
        let ep = endpoints[i % endpoints.len()].clone();
        let t = target.clone();
        let b = barrier.clone();
        let j = joined.clone();
        let gate = gate.clone();
        members.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.expect("gate");
            let user = format!("m{i}");
            let (_conn, mut send, mut reader, _) =
                login(&ep, t.addr, (t.credential)(&user), &format!("{user}-d")).await;
            join(&mut send, &mut reader, room).await;
            drop(permit);
            j.wait().await;
            while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), reader.next()).await {}
            b.wait().await;
            let mut tally = Tally::new();
            let mut acked = 0u64;
            let mut acked_at = Instant::now();
            let mut buf = BytesMut::new();
            // Members read frames raw: a `deliver` body starts with its type and ends with the
            // payload (the last field), whose first 8 bytes are the send time. Decoding every
            // frame fully would cost the generator more CPU than it measures.
            const DELIVER: &[u8] = b"\xa4type\xa7deliver";
            let payload = shape.payload.max(8);
            while tally.n < shape.messages {
                let Some(body) = reader.next_raw().await else {
                    panic!("member {user} stream ended after {}", tally.n)
                };
                if body.len() < 1 + DELIVER.len() + payload || &body[1..1 + DELIVER.len()] != DELIVER {
                    continue;
                }
                tally.record(&body[body.len() - payload..], epoch);
                let n = tally.n;
                // The room's seqs start at 1 and every member gets every message: seq == n.
                if n - acked >= 256 || acked_at.elapsed() >= Duration::from_millis(100) || n == shape.messages {
                    acked = n;
                    acked_at = Instant::now();
                    let rooms = Some([(room.to_string(), n)].into_iter().collect());
                    tether_proto::encode(&Frame::Ack(Ack { inbox: 0, rooms }), &mut buf).expect("encode");
                    send.write_all(&buf.split()).await.expect("ack");
                }
            }
            tally
        }));
    }
    let ep = endpoints[0].clone();
    let t = target.clone();
    let b = barrier.clone();
    let j = joined.clone();
    let sender = tokio::spawn(async move {
        let (_conn, mut send, mut reader, _) = login(&ep, t.addr, (t.credential)("speaker"), "speaker-d").await;
        join(&mut send, &mut reader, room).await;
        j.wait().await;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(500), reader.next()).await {}
        b.wait().await;
        let pace = Pace { messages: shape.messages, window: shape.window, rate: shape.rate, payload: shape.payload };
        send_stream(send, reader, Address::room(room), pace, epoch).await;
    });
    joined.wait().await;
    barrier.wait().await;
    let started = Instant::now();
    let cpu0 = (crate::idle::cpu_secs(pids.0), crate::idle::cpu_secs(pids.1));
    let report = merge(started, members).await;
    let cpu = (crate::idle::cpu_secs(pids.0) - cpu0.0, crate::idle::cpu_secs(pids.1) - cpu0.1);
    sender.await.expect("sender");
    for ep in endpoints {
        ep.close(0u32.into(), b"done");
    }
    (report, cpu)
}
