//! The node's wiring: [`Node::start`] brings up the store, the hub, the write pipeline, the
//! QUIC listener with its sessions and the admin HTTP API from a [`Config`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::task::JoinHandle;

use crate::auth::Authenticator;
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::ctx::Ctx;
use crate::hub::cluster::{ClusterHub, ClusterSettings};
use crate::hub::{Hub, LocalHub};
use crate::ids::MsgIdGen;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::store::faults::Faults;
use crate::store::postgres::PoolSettings;
use crate::store::sqlite::StoreHooks;
use crate::{admin, admission, auth, ids, memory, metrics, rooms, session, store, tls, webhook};

/// Why a node could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// Data dir or secret files.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Store.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// TLS material.
    #[error("tls: {0}")]
    Tls(#[from] tls::TlsError),
    /// JWT key.
    #[error("{0}")]
    Key(#[from] auth::KeyError),
    /// Unsupported configuration.
    #[error("config: {0}")]
    Config(String),
}

/// A running node.
pub struct Node {
    /// Where QUIC listens.
    pub quic_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// Shared state.
    pub ctx: Arc<Ctx>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

/// Reads a secret from `path`, or generates one there (mode 0600) if the file is missing.
fn secret_file(path: &Path) -> Result<String, std::io::Error> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let s = hex::encode(rand::random::<[u8; 32]>());
            std::fs::write(path, &s)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(s)
        }
    }
}

/// A UDP socket bound to `addr` with (up to) `buffer` bytes of receive and send buffer.
pub fn udp_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps both at its configured maximum.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// QUIC transport settings of a session connection, tuned for many mostly idle sessions.
pub fn transport_config(cfg: &Config) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // The session's own idle timeout closes silent sessions with a reason; QUIC's is a backstop.
    let idle = cfg.idle_timeout + Duration::from_secs(30);
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    // One stream per connection: the connection window equals the stream window.
    let window: u32 = (cfg.max_frame.saturating_mul(4)).max(256 * 1024);
    t.stream_receive_window(window.into());
    t.receive_window(window.into());
    t.send_window(u64::from(window) * 2);
    t.datagram_receive_buffer_size(None);
    t.mtu_discovery_config(None);
    t
}

/// Decides about one connection attempt before any TLS work is spent on it, and serves it
/// when it is admitted.
fn admit(incoming: quinn::Incoming, ctx: &Arc<Ctx>) {
    if ctx.draining.load(std::sync::atomic::Ordering::Acquire) {
        ctx.metrics.admission.get_or_create(&metrics::ResultLabel { result: "refused_draining".into() }).inc();
        incoming.refuse();
        return;
    }
    let ip = incoming.remote_address().ip();
    let verdict = ctx.admission.lock().unwrap_or_else(|e| e.into_inner()).incoming(
        ip,
        incoming.remote_address_validated(),
        std::time::Instant::now(),
    );
    let count =
        |result: &str| ctx.metrics.admission.get_or_create(&metrics::ResultLabel { result: result.into() }).inc();
    match verdict {
        admission::Verdict::Accept => {
            count("accepted");
            let guard = admission::AdmissionGuard::new(ctx.admission.clone(), ip, ctx.metrics.pending_logins.clone());
            tokio::spawn(session::serve(incoming, ctx.clone(), guard));
        }
        admission::Verdict::Retry if incoming.may_retry() => {
            count("retry");
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
        }
        admission::Verdict::Retry => {
            // A retried client that still has no valid token: turn it away.
            count("refused_retry");
            incoming.refuse();
        }
        admission::Verdict::Refuse(why) => {
            count(why.label());
            tracing::debug!(%ip, reason = why.label(), "connection refused");
            incoming.refuse();
        }
    }
}

impl Node {
    /// Starts a node and returns once it listens.
    pub async fn start(cfg: Config) -> Result<Node, StartError> {
        let (ctx, mut tasks) = Node::context(cfg, Arc::new(SystemClock)).await?;
        let cfg = &ctx.cfg;
        let (cert, key) = match (&cfg.tls_cert, &cfg.tls_key) {
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            _ => tls::ensure_dev_cert(&cfg.data_dir, &cfg.dev_cert_names)?,
        };
        let (certs, key) = tls::load_pem(&cert, &key)?;
        let mut server_config = quinn::ServerConfig::with_crypto(tls::quic_server_crypto(certs, key)?);
        server_config.transport_config(Arc::new(transport_config(cfg)));
        server_config.migration(true);
        let socket = udp_socket(cfg.quic_addr, cfg.udp_buffer)?;
        let runtime = quinn::default_runtime().ok_or_else(|| StartError::Config("no async runtime for QUIC".into()))?;
        // Connection ids name this node (QUIC-LB plaintext), so a QUIC-aware load balancer
        // routes a migrated client's packets here.
        let lb = crate::quic_lb::QuicLbConfig::from_flags(
            cfg.quic_lb_config_id,
            cfg.quic_lb_server_id.as_deref(),
            cfg.quic_lb_nonce_len,
            cfg.node_id,
        )
        .map_err(|e| StartError::Config(format!("quic-lb: {e}")))?;
        let endpoint =
            quinn::Endpoint::new(crate::quic_lb::endpoint_config(&lb), Some(server_config), socket, runtime)?;
        let quic_addr = endpoint.local_addr()?;

        let listener = tokio::net::TcpListener::bind(ctx.cfg.admin_addr).await?;
        let admin_addr = listener.local_addr()?;
        let app = admin::router(ctx.clone());
        // The embedded registry: Eureka's REST API on the admin listener, outside the admin
        // API's auth and error shapes (Eureka clients expect Eureka's answers).
        let app = if ctx.cfg.embedded_registry {
            let settings = tether_registry::RegistrySettings {
                default_lease_duration_ms: ctx.cfg.registry_lease.as_millis() as u64,
                ..Default::default()
            };
            let registry = tether_registry::RegistryState::new(settings);
            tasks.push(registry.spawn_eviction(Duration::from_secs(1).min(ctx.cfg.registry_lease)));
            app.merge(registry.router())
        } else {
            app
        };
        let admin_task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "admin API stopped");
            }
        });
        let ep = endpoint.clone();
        let c = ctx.clone();
        let accept_task = tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                admit(incoming, &c);
            }
        });
        tasks.extend([admin_task, accept_task]);
        tasks.extend(crate::registration::start(&ctx, quic_addr, admin_addr));
        tracing::info!(%quic_addr, %admin_addr, cert = %cert.display(), "node started");
        Ok(Node { quic_addr, admin_addr, ctx, endpoint, tasks })
    }

    /// Everything of a node but its listeners: the store (its node-id lease kept), the hub,
    /// the write pipeline, webhooks, room pruning and memory trimming, with `clock` as its
    /// wall clock. Sessions run on it through [`session::serve_stream`] (tests run them
    /// in-process this way) or through the QUIC listener of [`Node::start`].
    pub async fn context(cfg: Config, clock: Arc<dyn Clock>) -> Result<(Arc<Ctx>, Vec<JoinHandle<()>>), StartError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let url = cfg.database_url();
        let metrics = Arc::new(Metrics::new());
        let faults = Arc::new(Faults::new());
        if cfg.fault_injection {
            tracing::warn!("fault injection is on: /v1/faults can make the store fail (tests only)");
        }
        let hooks = StoreHooks { faults: faults.clone(), metrics: metrics.clone() };
        // Connection settings of a shared database (unused by the embedded SQLite store).
        let pool = PoolSettings {
            max_connections: cfg.db_max_connections,
            acquire_timeout: cfg.db_acquire_timeout,
            statement_timeout: cfg.db_statement_timeout,
        };
        let opts = crate::store::OpenOptions { sync: cfg.store_sync, pool, log: cfg.log_settings(), hooks };
        let store = crate::store::open(&url, opts).await?;
        // Message ids embed the node id: on a shared store, claim it for this node (identified by
        // its data dir, so the same node restarting keeps it) and keep the claim alive.
        const NODE_LEASE_MS: u64 = 30_000;
        let instance = secret_file(&cfg.data_dir.join("instance-id"))?;
        if !store.claim_node_id(cfg.node_id, &instance, NODE_LEASE_MS, ids::now_ms()).await? {
            return Err(StartError::Config(format!(
                "node id {} is held by another live node on this database: give each node its own --node-id",
                cfg.node_id
            )));
        }
        {
            let (store, node_id) = (store.clone(), cfg.node_id);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(NODE_LEASE_MS / 3));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match store.claim_node_id(node_id, &instance, NODE_LEASE_MS, ids::now_ms()).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(node_id, "another node took over this node id: message ids may collide")
                        }
                        Err(e) => tracing::warn!(error = %e, "could not renew the node id lease"),
                    }
                }
            });
        }
        let admin_token = match &cfg.admin_token {
            Some(t) => t.clone(),
            None => {
                let path = cfg.data_dir.join("admin-token");
                let t = secret_file(&path)?;
                tracing::info!(file = %path.display(), "admin token read from file");
                t
            }
        };
        let resume_key = match &cfg.resume_secret {
            Some(s) => s.clone(),
            None => secret_file(&cfg.data_dir.join("resume-secret"))?,
        };
        let public_key = match &cfg.jwt_public_key {
            Some(p) => Some(std::fs::read(p)?),
            None => None,
        };
        let rules = auth::JwtRules {
            leeway_secs: cfg.jwt_leeway_secs,
            audience: cfg.jwt_audience.clone(),
            issuer: cfg.jwt_issuer.clone(),
        };
        let auth =
            Authenticator::new(cfg.jwt_secret.as_deref(), public_key.as_deref(), rules, resume_key.into_bytes())?;
        if cfg.jwt_secret.is_none() && cfg.jwt_public_key.is_none() {
            tracing::warn!("no JWT secret or public key configured: only tickets from the admin API can log in");
        }

        let node_name = format!("node-{}", cfg.node_id);
        let rooms = Arc::new(rooms::Rooms::new(store.clone(), cfg.rooms_auto_create));
        let hub: Arc<dyn Hub> = match &cfg.redis_url {
            None => Arc::new(LocalHub::new(node_name.clone(), rooms.clone(), clock.clone())),
            Some(url) => {
                let settings = ClusterSettings {
                    redis_url: url.clone(),
                    redis_cluster: cfg.redis_cluster,
                    prefix: cfg.redis_prefix.clone(),
                    lease: cfg.node_lease,
                    node_id: cfg.node_id,
                };
                let hub = ClusterHub::start(
                    settings,
                    node_name.clone(),
                    rooms.clone(),
                    store.clone(),
                    clock.clone(),
                    metrics.clone(),
                )
                .await
                .map_err(|e| StartError::Config(e.to_string()))?;
                Arc::new(hub)
            }
        };
        let writers = match cfg.store_writers {
            0 if url.starts_with("sqlite:") || url.starts_with("log:") => 1,
            0 => 4,
            n => n,
        };
        let pipeline = Pipeline::start(store.clone(), hub.clone(), metrics.clone(), 65_536, cfg.store_batch, writers);
        let webhooks = webhook::Webhooks::start(
            cfg.webhook_url.clone(),
            cfg.webhook_secret.clone(),
            cfg.webhook_queue,
            node_name,
            metrics.clone(),
        );
        let pruner_store = store.clone();
        let (keep, age, every) = (cfg.room_history_max, cfg.room_history_age, cfg.room_prune_every);
        let pruner = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
            loop {
                tick.tick().await;
                let min_ts = ids::now_ms().saturating_sub(age.as_millis() as u64);
                match pruner_store.prune_rooms(keep, min_ts).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(messages = n, "pruned room history past retention"),
                    Err(e) => tracing::warn!(error = %e, "pruning room history failed"),
                }
            }
        });
        let admission = Arc::new(std::sync::Mutex::new(admission::Admission::new(admission::AdmissionConfig {
            max_connections: cfg.max_connections,
            max_pending_logins: cfg.max_pending_logins,
            handshakes_per_ip: cfg.handshakes_per_ip,
            handshake_burst: cfg.handshake_burst,
            login_failures_per_ip: cfg.login_failures_per_ip,
            login_backoff_max: cfg.login_backoff_max,
        })));
        let ctx = Arc::new(Ctx {
            ids: MsgIdGen::new(cfg.node_id),
            cfg,
            store,
            hub,
            rooms,
            webhooks,
            pipeline,
            auth,
            metrics,
            next_session: AtomicU64::new(1),
            admin_token,
            faults,
            admission,
            clock,
            draining: std::sync::atomic::AtomicBool::new(false),
            registration: std::sync::OnceLock::new(),
        });

        let mut tasks = vec![pruner];
        tasks.extend(memory::spawn_trimmer(ctx.admission.clone(), ctx.metrics.clone(), ctx.cfg.memory_trim_every));
        Ok((ctx, tasks))
    }

    /// Drains the node (sessions told to move to other nodes with `go_away`, OUT_OF_SERVICE in
    /// the registry), waits up to `--drain-timeout` for them to go, then shuts down.
    pub async fn drain_and_shutdown(self) {
        if crate::registration::drain(&self.ctx).await.is_some() {
            let left = crate::registration::wait_drained(&self.ctx, self.ctx.cfg.drain_timeout).await;
            if left > 0 {
                tracing::warn!(sessions = left, "drain timeout: closing the sessions still here");
            }
        }
        self.shutdown().await;
    }

    /// Closes every connection with `server_shutdown`, stops the listeners, leaves the cluster
    /// and cancels the registration.
    pub async fn shutdown(self) {
        let code = tether_proto::CloseCode::ServerShutdown;
        self.endpoint.close(quinn::VarInt::from_u32(code.code()), code.reason().as_bytes());
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), self.endpoint.wait_idle()).await;
        self.ctx.hub.leave().await;
        crate::registration::deregister(&self.ctx).await;
    }
}
