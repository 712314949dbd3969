//! A standalone registry node: binds the listener, serves the routes, copies the registry
//! from a peer, evicts expired leases, and shuts down gracefully.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::service::{RegistryState, StartError};

/// A running registry node.
#[derive(Debug)]
pub struct RegistryNode {
    addr: SocketAddr,
    state: RegistryState,
    synced_from: Option<(String, usize)>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<()>,
    eviction: JoinHandle<()>,
}

impl RegistryNode {
    /// Binds `config.listen`, starts serving at once (so peers starting together can copy each
    /// other), then copies the registry from the first peer that answers and returns.
    pub async fn start(config: Config) -> Result<Self, StartError> {
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let addr = listener.local_addr().map_err(|source| StartError::Listen { addr: config.listen, source })?;
        let state = RegistryState::from_config(&config, Some(addr))?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = state.router();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                tracing::error!(error = %e, "registry server failed");
            }
        });
        let eviction = state.spawn_eviction(config.eviction_interval);
        tracing::info!(%addr, peers = ?state.peers(), "registry listening");
        let synced_from = state.initial_sync(config.sync_attempts).await;
        Ok(Self { addr, state, synced_from, stop: Some(stop), server, eviction })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its state (for inspection, or to mount its router elsewhere as well).
    pub fn state(&self) -> &RegistryState {
        &self.state
    }

    /// The peer the registry was copied from at start and how many instances it gave.
    pub fn synced_from(&self) -> Option<&(String, usize)> {
        self.synced_from.as_ref()
    }

    /// Stops accepting requests, finishes those in flight and stops eviction.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.eviction.abort();
        let _ = (&mut self.server).await;
    }
}

/// Resolves on SIGTERM or Ctrl-C (Ctrl-C only where there is no SIGTERM): how the registry's
/// and the gateway's binaries learn to stop.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
