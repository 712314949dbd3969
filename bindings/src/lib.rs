//! Tether for Kotlin and Swift: a uniffi layer over `tether-sdk`.
//!
//! It wraps, converts and forwards; it has no logic of its own. The SDK's model types are
//! mirrored as uniffi records and enums (`From` conversions in [`model`]), its calls are
//! exported as methods of [`TetherClient`], its events reach a foreign [`EventListener`], and
//! every failure is one [`TetherError`] (a Kotlin exception, a Swift error) that keeps the
//! detail. The layer owns the tokio runtime the SDK runs on, so apps need none.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

mod model;

pub use model::*;

uniffi::setup_scaffolding!();

/// The runtime every client of the process runs on (two workers: a phone app needs no more).
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tether")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("tether: cannot start the async runtime: {e}"))
});

/// Runs `fut` on the layer's runtime and awaits it from whatever executor the foreign side
/// polls with.
async fn on_runtime<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    match RUNTIME.spawn(fut).await {
        Ok(v) => v,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// Everything that can go wrong, one flat list for Kotlin and Swift.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TetherError {
    /// The client was closed (or the message was not acknowledged before it was).
    #[error("client closed")]
    Closed,
    /// The server refused the request for good.
    #[error("refused: {code:?}: {detail}")]
    Refused {
        /// Why.
        code: ErrorCode,
        /// Detail from the server.
        detail: String,
    },
    /// The message was cancelled before it was acknowledged.
    #[error("cancelled (may have been delivered: {maybe_delivered})")]
    Cancelled {
        /// It may have reached the server before the cancel.
        maybe_delivered: bool,
    },
    /// The configuration is invalid.
    #[error("config: {detail}")]
    Config {
        /// Detail.
        detail: String,
    },
    /// TLS setup failed (a certificate file, the trust store).
    #[error("tls: {detail}")]
    Tls {
        /// Detail.
        detail: String,
    },
    /// The state dir could not be used.
    #[error("state: {detail}")]
    State {
        /// Detail.
        detail: String,
    },
    /// The network (name resolution, socket).
    #[error("network: {detail}")]
    Network {
        /// Detail.
        detail: String,
    },
    /// The client is kicked, refused or closed instead of online.
    #[error("not online: {detail}")]
    NotOnline {
        /// Detail.
        detail: String,
    },
}

impl From<tether_sdk::ClientError> for TetherError {
    fn from(e: tether_sdk::ClientError) -> Self {
        use tether_sdk::ClientError as E;
        match e {
            E::Closed => TetherError::Closed,
            E::Tls(detail) => TetherError::Tls { detail },
            E::State(detail) => TetherError::State { detail },
            E::Config(detail) => TetherError::Config { detail },
            E::NotOnline(detail) => TetherError::NotOnline { detail },
            E::Resolve(detail) | E::Connect(detail) => TetherError::Network { detail },
            E::Io(e) => TetherError::Network { detail: e.to_string() },
        }
    }
}

impl From<tether_sdk::SendFailure> for TetherError {
    fn from(e: tether_sdk::SendFailure) -> Self {
        match e {
            tether_sdk::SendFailure::Refused { code, message } => {
                TetherError::Refused { code: code.into(), detail: message }
            }
            tether_sdk::SendFailure::Closed => TetherError::Closed,
            tether_sdk::SendFailure::Cancelled { maybe_delivered } => TetherError::Cancelled { maybe_delivered },
        }
    }
}

impl From<tether_sdk::RoomFailure> for TetherError {
    fn from(e: tether_sdk::RoomFailure) -> Self {
        match e {
            tether_sdk::RoomFailure::Refused { code, message } => {
                TetherError::Refused { code: code.into(), detail: message }
            }
            tether_sdk::RoomFailure::Closed => TetherError::Closed,
        }
    }
}

/// Where the app's credentials come from: asked once at start and again whenever the server
/// refuses the one in use (e.g. an expired JWT). Implemented in Kotlin or Swift.
#[uniffi::export(with_foreign)]
pub trait CredentialProvider: Send + Sync {
    /// A credential to log in with now; `None` when none is available.
    fn credential(&self) -> Option<Credential>;
}

/// Receives the client's events, in order, on a thread of the SDK's. Implemented in Kotlin or
/// Swift (the Kotlin and Swift adapters turn it into a `Flow` / an `AsyncStream`).
#[uniffi::export(with_foreign)]
pub trait EventListener: Send + Sync {
    /// The events that were waiting when the listener's thread woke up, in order: one, or a
    /// burst of up to 256 (a sync after a reconnect) in one call, so that a burst costs one
    /// crossing of the language boundary instead of one per event.
    fn on_events(&self, events: Vec<Event>);
}

/// A message to send (see [`TetherClient::send_batch`]).
#[derive(Debug, Clone, uniffi::Record)]
pub struct OutgoingMessage {
    /// A user or a room.
    pub to: Target,
    /// Payload type, e.g. `text/plain`.
    pub content_type: String,
    /// Payload.
    pub payload: Vec<u8>,
}

/// Most events held for the first listener while none is registered yet (beyond it the oldest
/// are kept and the rest dropped; an app registers its listener right after `start_client`).
const EARLY_EVENTS: usize = 10_000;

/// The SDK's event stream fanned out to the foreign listeners, each on a thread of its own.
/// Events that arrive before the first listener (the login, a backlog: the client starts
/// connecting inside `start_client`) are held and handed to that listener first, in order.
struct Fanout {
    listeners: Vec<(u64, std::sync::mpsc::Sender<tether_sdk::Event>)>,
    /// Events before the first listener; `None` once one was added.
    early: Option<Vec<tether_sdk::Event>>,
    next_id: u64,
}

fn lock_fanout(f: &Mutex<Fanout>) -> std::sync::MutexGuard<'_, Fanout> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fanout {
    /// Hands one event to every listener (or holds it for the first).
    fn publish(&mut self, event: tether_sdk::Event) {
        if let Some(early) = self.early.as_mut() {
            if early.len() < EARLY_EVENTS {
                early.push(event);
            }
            return;
        }
        self.listeners.retain(|(_, tx)| tx.send(event.clone()).is_ok());
    }

    /// Adds a listener, with the held events first if it is the first one. Returns its id.
    fn add(&mut self, listener: Arc<dyn EventListener>) -> u64 {
        let (tx, rx) = std::sync::mpsc::channel::<tether_sdk::Event>();
        for event in self.early.take().into_iter().flatten() {
            let _ = tx.send(event);
        }
        let id = self.next_id;
        self.next_id += 1;
        let spawned = std::thread::Builder::new().name(format!("tether-listener-{id}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < tether_sdk::LISTENER_BATCH {
                    match rx.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
                listener.on_events(batch.into_iter().map(Into::into).collect());
            }
        });
        if spawned.is_ok() {
            self.listeners.push((id, tx));
        }
        id
    }
}

/// How to reach a node and who this device is.
#[derive(Debug, Clone, uniffi::Record)]
pub struct ClientConfig {
    /// Server address, `host:port`. With `registry_urls` it may be empty (`""`): it is then
    /// only the last resort when the registry lists no node.
    pub server: String,
    /// Name checked against the server certificate (default: the host of `server`).
    #[uniffi(default = None)]
    pub server_name: Option<String>,
    /// Which certificates to trust.
    pub trust: Trust,
    /// Device type: one session per user and device type (`phone`, `tablet`, `desktop`...).
    pub device_type: String,
    /// Stable device id (default: kept in the state dir).
    #[uniffi(default = None)]
    pub device_id: Option<String>,
    /// Directory for the outbox, cursors and resume token (the app's files dir).
    #[uniffi(default = None)]
    pub state_dir: Option<String>,
    /// Connection metadata shown in presence (app version, locale, ...).
    pub metadata: HashMap<String, String>,
    /// Timers; `None` keeps the SDK's defaults.
    #[uniffi(default = None)]
    pub timing: Option<Timing>,
    /// Other nodes of the service, tried after `server` (and after every discovered node).
    #[uniffi(default = [])]
    pub fallback_servers: Vec<String>,
    /// Eureka base URLs of the registries the nodes register with (e.g.
    /// `http://10.0.0.5:8761/eureka/`): the client discovers the nodes there and connects to
    /// the least-loaded one that is up. Empty: no discovery.
    #[uniffi(default = [])]
    pub registry_urls: Vec<String>,
    /// Registry application of the gateway nodes; `None`: `TETHER`.
    #[uniffi(default = None)]
    pub registry_app: Option<String>,
    /// How old the node list may get before a reconnect fetches it again, in ms; `None`: 30 s.
    #[uniffi(default = None)]
    pub discovery_refresh_ms: Option<u64>,
}

/// Session timers, in milliseconds.
#[derive(Debug, Clone, uniffi::Record)]
pub struct Timing {
    /// Ping after this long without traffic.
    pub heartbeat_interval_ms: u64,
    /// The connection is dead after this long without an answer past the heartbeat.
    pub heartbeat_timeout_ms: u64,
    /// First reconnect delay.
    pub backoff_base_ms: u64,
    /// Longest reconnect delay.
    pub backoff_max_ms: u64,
    /// A send without an answer is sent again after this long.
    pub ack_timeout_ms: u64,
}

/// A queued message: await its acknowledgement, or cancel it.
#[derive(uniffi::Object)]
pub struct SendHandle {
    client_msg_id: String,
    handle: Mutex<Option<tether_sdk::SendHandle>>,
    client: tether_sdk::Client,
}

#[uniffi::export]
impl SendHandle {
    /// The message's id.
    pub fn client_msg_id(&self) -> String {
        self.client_msg_id.clone()
    }

    /// Waits until the server stored the message. Only the first call waits; later ones fail
    /// with `Closed`.
    pub async fn ack(&self) -> Result<SendAck, TetherError> {
        let handle = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(handle) = handle else { return Err(TetherError::Closed) };
        // The handle is a channel the client answers on: awaited where the foreign side polls,
        // it needs no runtime, and an answer that is already there completes on the first poll
        // (no hop to a runtime thread and back).
        Ok(handle.await?.into())
    }

    /// Cancels the message if it is still in the outbox: `None` when it was not any more,
    /// else whether it may have reached the server already.
    pub async fn cancel(&self) -> Result<Option<bool>, TetherError> {
        let (client, id) = (self.client.clone(), self.client_msg_id.clone());
        Ok(on_runtime(async move { client.cancel(&id).await }).await?)
    }
}

/// Keeps an [`EventListener`] registered until it is closed (or collected).
#[derive(uniffi::Object)]
pub struct ListenerRegistration {
    id: u64,
    fanout: std::sync::Weak<Mutex<Fanout>>,
}

#[uniffi::export]
impl ListenerRegistration {
    /// Stops the listener.
    pub fn stop(&self) {
        if let Some(f) = self.fanout.upgrade() {
            lock_fanout(&f).listeners.retain(|(id, _)| *id != self.id);
        }
    }
}

impl Drop for ListenerRegistration {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Tether client: one connection to a node, the outbox, the cursors.
#[derive(uniffi::Object)]
pub struct TetherClient {
    client: tether_sdk::Client,
    /// The listeners the SDK's event stream is fanned out to.
    fanout: Arc<Mutex<Fanout>>,
    /// The task that reads the SDK's event stream into `fanout`.
    _drain: tokio::task::JoinHandle<()>,
}

/// Starts a client: it connects, logs in with a credential from `credentials` and keeps the
/// session up (reconnects, heartbeats) until [`TetherClient::stop`].
#[uniffi::export]
pub async fn start_client(
    config: ClientConfig,
    credentials: Arc<dyn CredentialProvider>,
) -> Result<Arc<TetherClient>, TetherError> {
    let provider = credentials.clone();
    let first =
        on_runtime(async move { tokio::task::spawn_blocking(move || provider.credential()).await.ok().flatten() })
            .await
            .ok_or_else(|| TetherError::Config { detail: "the credential provider gave no credential".into() })?;
    let mut cfg = tether_sdk::ClientConfig::new(config.server, config.trust.into(), first.into());
    cfg.server_name = config.server_name;
    cfg.device_type = config.device_type;
    cfg.device_id = config.device_id;
    cfg.state_dir = config.state_dir;
    cfg.metadata = config.metadata;
    cfg.fallback_servers = config.fallback_servers;
    cfg.registry_urls = config.registry_urls;
    if let Some(app) = config.registry_app {
        cfg.registry_app = app;
    }
    if let Some(ms) = config.discovery_refresh_ms {
        cfg.discovery.refresh_interval = std::time::Duration::from_millis(ms);
    }
    if let Some(t) = config.timing {
        let ms = std::time::Duration::from_millis;
        cfg.session.heartbeat_interval = ms(t.heartbeat_interval_ms);
        cfg.session.heartbeat_timeout = ms(t.heartbeat_timeout_ms);
        cfg.session.backoff_base = ms(t.backoff_base_ms);
        cfg.session.backoff_max = ms(t.backoff_max_ms);
        cfg.session.ack_timeout = ms(t.ack_timeout_ms);
    }
    cfg.credential_provider =
        Some(tether_sdk::CredentialProvider(Arc::new(move || credentials.credential().map(Into::into))));
    let (client, mut events) = on_runtime(tether_sdk::Client::start(cfg)).await?;
    let fanout = Arc::new(Mutex::new(Fanout { listeners: Vec::new(), early: Some(Vec::new()), next_id: 1 }));
    let sink = fanout.clone();
    let drain = RUNTIME.spawn(async move {
        while let Some(event) = events.next().await {
            let mut f = lock_fanout(&sink);
            f.publish(event);
            // Whatever else is ready goes out under the same lock.
            while let Some(event) = events.try_next() {
                f.publish(event);
            }
        }
    });
    Ok(Arc::new(TetherClient { client, fanout, _drain: drain }))
}

#[uniffi::export]
impl TetherClient {
    /// Registers a listener for every event from now on (the first listener also gets, first,
    /// the events since `start_client`: the login, a backlog); it stops when the registration
    /// is stopped or collected.
    pub fn add_listener(&self, listener: Arc<dyn EventListener>) -> Arc<ListenerRegistration> {
        let id = lock_fanout(&self.fanout).add(listener);
        Arc::new(ListenerRegistration { id, fanout: Arc::downgrade(&self.fanout) })
    }

    /// Queues a message and returns at once; messages go out in the order of the calls.
    pub fn send(&self, to: Target, content_type: String, payload: Vec<u8>) -> Arc<SendHandle> {
        let handle = self.client.send(to.into(), content_type, payload);
        Arc::new(SendHandle {
            client_msg_id: handle.client_msg_id().to_owned(),
            handle: Mutex::new(Some(handle)),
            client: self.client.clone(),
        })
    }

    /// Queues several messages in one call (a forward to many, an import): the same as calling
    /// [`TetherClient::send`] for each, in order, with one crossing of the language boundary.
    pub fn send_batch(&self, messages: Vec<OutgoingMessage>) -> Vec<Arc<SendHandle>> {
        messages.into_iter().map(|m| self.send(m.to, m.content_type, m.payload)).collect()
    }

    /// Queues a `text/plain` message to a user.
    pub fn send_text(&self, to_user: String, text: String) -> Arc<SendHandle> {
        self.send(Target::User { id: to_user }, "text/plain".into(), text.into_bytes())
    }

    /// Joins a room.
    pub async fn join_room(&self, room: String) -> Result<RoomJoined, TetherError> {
        let fut = self.client.join_room(room);
        Ok(on_runtime(fut).await?.into())
    }

    /// Leaves a room.
    pub async fn leave_room(&self, room: String) -> Result<(), TetherError> {
        let fut = self.client.leave_room(room);
        Ok(on_runtime(fut).await?)
    }

    /// Fetches a room's messages after `after` (history below the cursor included).
    pub fn sync_room(&self, room: String, after: u64) -> Result<(), TetherError> {
        Ok(self.client.sync_room(room, after)?)
    }

    /// Subscribes to users' presence.
    pub fn subscribe_presence(&self, users: Vec<String>) -> Result<(), TetherError> {
        Ok(self.client.subscribe_presence(users)?)
    }

    /// Ends presence subscriptions.
    pub fn unsubscribe_presence(&self, users: Vec<String>) -> Result<(), TetherError> {
        Ok(self.client.unsubscribe_presence(users)?)
    }

    /// The messages not acknowledged yet, oldest first (local echo after a restart).
    pub async fn outbox(&self) -> Result<Vec<PendingMessage>, TetherError> {
        let client = self.client.clone();
        Ok(on_runtime(async move { client.outbox().await }).await?.into_iter().map(Into::into).collect())
    }

    /// Cancels a message still in the outbox (see [`SendHandle::cancel`]).
    pub async fn cancel(&self, client_msg_id: String) -> Result<Option<bool>, TetherError> {
        let client = self.client.clone();
        Ok(on_runtime(async move { client.cancel(&client_msg_id).await }).await?)
    }

    /// The app went to the background.
    pub fn pause(&self) -> Result<(), TetherError> {
        Ok(self.client.pause()?)
    }

    /// The app is in the foreground again.
    pub fn resume(&self) -> Result<(), TetherError> {
        Ok(self.client.resume()?)
    }

    /// The network changed (Wi-Fi to cellular...): the connection moves to a new socket.
    pub async fn network_changed(&self) -> Result<(), TetherError> {
        let client = self.client.clone();
        on_runtime(async move { client.network_changed().await }).await?;
        Ok(())
    }

    /// Waits until logged in; fails if kicked, refused or closed instead.
    pub async fn wait_online(&self) -> Result<(), TetherError> {
        let client = self.client.clone();
        Ok(on_runtime(async move { client.wait_online().await }).await?)
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        self.client.state().into()
    }

    /// Logs out and stops (the SDK's `close()`, named `stop` because Kotlin objects already
    /// have `close()`, which frees the handle); later calls fail with `Closed`. The outbox
    /// stays in the state dir.
    pub async fn stop(&self) {
        let client = self.client.clone();
        on_runtime(async move { client.close().await }).await
    }
}
