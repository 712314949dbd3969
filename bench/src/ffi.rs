//! The Rust side of the FFI overhead measurement: the same calls the Kotlin bench
//! (bindings/kotlin/bench/FfiBench.kt) makes through the bindings, made on the Rust API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_sdk::{Client, ClientConfig, ConnectionState, Credential, Event, Trust};

/// Per-call cost of `send_text` on a paused client, and per-event cost of the acks that follow
/// through a listener, for `n` messages.
pub async fn run(addr: std::net::SocketAddr, cert: std::path::PathBuf, jwt: String, n: u64) -> (f64, f64) {
    let mut cfg = ClientConfig::new(addr.to_string(), Trust::pinned(cert), Credential::Token(jwt));
    cfg.server_name = Some("localhost".into());
    cfg.device_type = "bench".into();
    let (client, _events) = Client::start(cfg).await.expect("start");
    client.wait_online().await.expect("online");
    client.pause().expect("pause");
    client.wait_for_state(|s| matches!(s, ConnectionState::Paused)).await.expect("paused");
    let acked = Arc::new(AtomicU64::new(0));
    let seen = acked.clone();
    let _listener = client.add_listener(move |ev: Event| {
        if matches!(ev, Event::SendAcked(_)) {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    });
    let t0 = Instant::now();
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        handles.push(client.send_text("ffi-sink", &format!("m{i}")));
    }
    let send_us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    let t1 = Instant::now();
    client.resume().expect("resume");
    while acked.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let event_us = t1.elapsed().as_secs_f64() * 1e6 / n as f64;
    drop(handles);
    client.close().await;
    (send_us, event_us)
}
