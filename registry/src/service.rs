//! The shared, thread-safe registry a server runs: the core [`Registry`] behind a mutex, the
//! wall clock, peer replication, eviction and the initial copy from a peer.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::Method;
use tokio::task::JoinHandle;

use crate::codec::{self, Format};
use crate::config::Config;
use crate::core::{Registry, RegistrySettings};
use crate::model::{InstanceInfo, InstanceStatus};
use crate::replication::{Replicator, Task};
use crate::transport::{BaseUrl, Transport, UrlError};

/// Milliseconds since the Unix epoch (the registry's timestamps).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Why a registry could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A peer URL is unusable.
    #[error(transparent)]
    Peer(#[from] UrlError),
    /// Binding or serving failed.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

pub(crate) struct Inner {
    registry: Mutex<Registry>,
    replicator: Option<Replicator>,
    pub(crate) max_body_bytes: usize,
    peers: Vec<BaseUrl>,
    peer_timeout: Duration,
}

/// A running registry's state; cheap to clone. [`RegistryState::router`] serves it over HTTP,
/// so a gateway node can mount the registry on its own listener.
#[derive(Clone)]
pub struct RegistryState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for RegistryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryState").field("peers", &self.peers()).finish_non_exhaustive()
    }
}

/// Whether a peer URL names this node itself (same port on a loopback/unspecified address or
/// the very address we listen on).
fn is_self(peer: &BaseUrl, own: Option<SocketAddr>) -> bool {
    let Some(own) = own else { return false };
    let authority = peer.authority();
    if authority == own.to_string() {
        return true;
    }
    let port_suffix = format!(":{}", own.port());
    let Some(host) = authority.strip_suffix(&port_suffix) else { return false };
    let local_host = matches!(host, "localhost" | "127.0.0.1" | "[::1]");
    local_host && (own.ip().is_loopback() || own.ip().is_unspecified())
}

impl RegistryState {
    /// A standalone registry without peers (default body limit 64 KiB).
    pub fn new(settings: RegistrySettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::new(settings)),
                replicator: None,
                max_body_bytes: Config::default().max_body_bytes,
                peers: Vec::new(),
                peer_timeout: Config::default().peer_timeout,
            }),
        }
    }

    /// A registry configured by `config`, replicating to its peers (skipping a peer that is
    /// `own_addr`). Starts one replication task per peer, so it needs a tokio runtime.
    pub fn from_config(config: &Config, own_addr: Option<SocketAddr>) -> Result<Self, StartError> {
        let mut peers = Vec::new();
        for p in config.peers.iter().map(|p| p.trim()).filter(|p| !p.is_empty()) {
            let url = BaseUrl::parse(p)?;
            if is_self(&url, own_addr) {
                tracing::info!(peer = %url, "skipping peer URL that names this node");
                continue;
            }
            if !peers.contains(&url) {
                peers.push(url);
            }
        }
        let settings = config.registry_settings();
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| Inner {
            registry: Mutex::new(Registry::new(settings)),
            replicator: (!peers.is_empty()).then(|| Replicator::start(&peers, config, weak.clone())),
            max_body_bytes: config.max_body_bytes,
            peers: peers.clone(),
            peer_timeout: config.peer_timeout,
        });
        Ok(Self { inner })
    }

    /// Runs `f` on the core registry (under its lock; keep it short).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        self.inner.with_registry(f)
    }

    /// The peers changes are replicated to.
    pub fn peers(&self) -> Vec<String> {
        self.inner.peers.iter().map(BaseUrl::to_string).collect()
    }

    /// The HTTP routes (`/eureka/...`, `/eureka/v2/...`, `/health`).
    pub fn router(&self) -> axum::Router {
        crate::http::router(self.clone())
    }

    /// Queues a change received from a client for every peer.
    pub(crate) fn replicate(&self, task: Task) {
        if let Some(r) = &self.inner.replicator {
            r.replicate(task);
        }
    }

    /// Spawns the task that evicts expired leases every `interval`.
    pub fn spawn_eviction(&self, interval: Duration) -> JoinHandle<()> {
        let weak = Arc::downgrade(&self.inner);
        let interval = interval.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let evicted = inner.with_registry(|r| r.evict_expired(now_ms()));
                for i in evicted {
                    tracing::warn!(app = %i.app, id = %i.instance_id, "lease expired: evicted");
                }
            }
        })
    }

    /// Copies the full registry from the first peer that answers (`attempts` passes over the
    /// peer list, 1 s apart). Returns the peer and the number of instances copied, or `None`
    /// when no peer answered (or there are none).
    pub async fn initial_sync(&self, attempts: u32) -> Option<(String, usize)> {
        if self.inner.peers.is_empty() {
            return None;
        }
        let transport = Transport::new(self.inner.peer_timeout);
        for attempt in 0..attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            for peer in &self.inner.peers {
                let Ok(uri) = peer.join("apps") else { continue };
                let answer = match transport.send(Method::GET, uri, &[], None).await {
                    Ok(a) if a.status.is_success() => a,
                    Ok(a) => {
                        tracing::info!(%peer, status = %a.status, "initial sync: peer refused");
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(%peer, error = %e, "initial sync: peer unreachable");
                        continue;
                    }
                };
                let format = Format::of_body(answer.content_type.as_deref(), &answer.body).unwrap_or(Format::Json);
                let apps = match codec::decode_applications(&answer.body, format) {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "initial sync: undecodable listing");
                        continue;
                    }
                };
                let now = now_ms();
                let count = self.with_registry(|r| {
                    apps.instances().filter(|i| r.register((*i).clone(), true, now).is_ok()).count()
                });
                tracing::info!(%peer, instances = count, "initial sync done");
                return Some((peer.to_string(), count));
            }
        }
        tracing::warn!("initial sync: no peer answered; starting empty");
        None
    }
}

impl Inner {
    pub(crate) fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        let mut guard = self.registry.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    /// Takes a peer's newer copy of an instance (Eureka's `syncInstancesIfTimestampDiffers`).
    pub(crate) fn apply_peer_copy(&self, info: InstanceInfo) {
        let now = now_ms();
        self.with_registry(|r| {
            if info.overridden_status != InstanceStatus::Unknown {
                r.store_override(&info.app, info.id(), info.overridden_status);
            }
            if let Err(e) = r.register(info, true, now) {
                tracing::warn!(error = %e, "peer's copy rejected");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let own: SocketAddr = "127.0.0.1:8761".parse().unwrap();
        let url = |s: &str| BaseUrl::parse(s).unwrap();
        assert!(is_self(&url("http://127.0.0.1:8761/eureka/"), Some(own)));
        assert!(is_self(&url("http://localhost:8761/eureka/"), Some(own)));
        assert!(!is_self(&url("http://127.0.0.1:8762/eureka/"), Some(own)));
        assert!(!is_self(&url("http://10.0.0.1:8761/eureka/"), Some(own)));
        assert!(!is_self(&url("http://127.0.0.1:8761/eureka/"), None));
    }
}
