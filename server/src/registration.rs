//! The node in the registry and its graceful drain: the node registers (app `TETHER`, metadata
//! `quic`, `zone`, `sessions`, `node_id`), renews, publishes its live session count, goes
//! OUT_OF_SERVICE when it drains and cancels its lease when it stops.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tether_registry::tether::{sessions_update, GatewayRegistration};
use tether_registry::{EurekaClient, Heartbeat, HeartbeatConfig, InstanceStatus};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::Ctx;

/// The `host:port` clients reach `quic_addr` at.
pub fn public_quic_addr(configured: Option<&str>, quic_addr: SocketAddr) -> String {
    match configured {
        Some(a) => a.to_owned(),
        None if quic_addr.ip().is_unspecified() => format!("127.0.0.1:{}", quic_addr.port()),
        None => quic_addr.to_string(),
    }
}

/// Registers the node with its registries (`--registry-url`, else its embedded registry at
/// `admin_addr`) and keeps it registered; publishes the live session count every renewal.
/// Returns the task that publishes the count, or `None` when there is no registry.
pub fn start(ctx: &Arc<Ctx>, quic_addr: SocketAddr, admin_addr: SocketAddr) -> Option<JoinHandle<()>> {
    let cfg = &ctx.cfg;
    let urls: Vec<String> = if !cfg.registry_url.is_empty() {
        cfg.registry_url.clone()
    } else if cfg.embedded_registry {
        let host = if admin_addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { admin_addr.ip().to_string() };
        vec![format!("http://{host}:{}/eureka/", admin_addr.port())]
    } else {
        return None;
    };
    let client = match EurekaClient::new(urls.iter()) {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "registry URLs unusable: the node does not register");
            return None;
        }
    };
    let quic = public_quic_addr(cfg.public_quic_addr.as_deref(), quic_addr);
    let host = quic.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or("127.0.0.1").to_owned();
    let registration = GatewayRegistration {
        node_id: format!("node-{}", cfg.node_id),
        host_name: host.clone(),
        ip_addr: host,
        quic: quic.clone(),
        zone: cfg.zone.clone(),
        http_port: admin_addr.port(),
    };
    let heartbeat = Arc::new(Heartbeat::start(
        client,
        registration.instance(),
        HeartbeatConfig { renewal_interval: cfg.registry_renew },
    ));
    let _ = ctx.registration.set(heartbeat.clone());
    info!(registries = ?urls, %quic, "registering with the registry");
    let ctx = ctx.clone();
    let every = cfg.registry_renew.max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut published = 0usize;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let n = ctx.hub.local_sessions();
            if n != published && heartbeat.update_metadata(sessions_update(n as u64)).await.is_ok() {
                published = n;
            }
        }
    }))
}

/// Drains the node: refuses new connections, goes OUT_OF_SERVICE in the registry, and tells
/// every session to move to another node (`go_away`). Returns how many sessions were told, or
/// `None` when the node was already draining.
pub async fn drain(ctx: &Ctx) -> Option<usize> {
    if ctx.draining.swap(true, Ordering::AcqRel) {
        return None;
    }
    if let Some(hb) = ctx.registration.get() {
        if let Err(e) = hb.set_status(InstanceStatus::OutOfService).await {
            warn!(error = %e, "could not mark the node OUT_OF_SERVICE in the registry");
        }
    }
    let n = ctx.hub.go_away_all();
    info!(sessions = n, "draining: sessions told to move");
    Some(n)
}

/// Waits until the node has no session left, at most `timeout`. Returns the sessions left.
pub async fn wait_drained(ctx: &Ctx, timeout: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = ctx.hub.local_sessions();
        if n == 0 || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Cancels the node's registration (shutdown).
pub async fn deregister(ctx: &Ctx) {
    if let Some(hb) = ctx.registration.get() {
        if let Err(e) = hb.stop().await {
            warn!(error = %e, "could not cancel the registration");
        }
    }
}
