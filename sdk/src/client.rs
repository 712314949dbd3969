//! The tokio/quinn driver: runs a [`Session`] over a real QUIC connection.
//!
//! [`Client::start`] spawns one task that owns the session core, the QUIC endpoint and the
//! state journal. The app talks to it through [`Client`] (send, rooms, presence, network
//! change, close) and reads [`Event`]s from [`Events`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tether_proto::{CloseCode, Credential, Decoded, Decoder, ErrorCode, Frame};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::core::{check_metadata, Action, Event, PersistOp, Session, SessionConfig};
use crate::discovery::{
    load_cache, save_cache, DiscoveredNode, DiscoveryConfig, NodeDirectory, RegistryClient, RegistryError,
    DEFAULT_REGISTRY_APP,
};
use crate::model::{ConnectionState, PendingMessage, RoomJoined, SendAck, Target};
use crate::state::StateStore;
use crate::tls::{client_crypto, Trust};
use crate::ClientError;

/// Everything needed to start a client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server address, `host:port`. With [`ClientConfig::registry_urls`] it may be empty; it is
    /// then only the last resort when discovery yields no node (see docs/sdk.md).
    pub server: String,
    /// Other nodes of the same service. A node that cannot be reached, whose connection ends
    /// or that sends `go_away` cools down ([`DiscoveryConfig::failure_cooldown`]) and the next
    /// attempt goes to the next address; with discovery these come after every discovered
    /// node.
    pub fallback_servers: Vec<String>,
    /// Eureka base URLs of the registries the gateway nodes register with, such as
    /// `http://10.0.0.5:8761/eureka/` (`https://` works too, verified with `trust`). Empty (the
    /// default): no discovery. With URLs, the client fetches the node list (trying each
    /// registry in turn), keeps it (in memory and, with a `state_dir`, on disk) and connects
    /// to the least-loaded node that is `UP` (see [`crate::discovery`] and docs/sdk.md).
    pub registry_urls: Vec<String>,
    /// The registry application of the gateway nodes. Default `TETHER`.
    pub registry_app: String,
    /// Discovery tunables: how old the node list may get before a (re)connect fetches it again
    /// (default 30 s), how long a node that failed is skipped (60 s), how long to wait after
    /// a fetch that failed (5 s).
    pub discovery: DiscoveryConfig,
    /// Time limit of one registry request (connect, answer and body). Default 3 s.
    pub registry_timeout: Duration,
    /// Time limit of one connection attempt (name lookup, QUIC handshake, stream). A node that
    /// does not answer in time counts as failed and the next one is tried. Default 10 s.
    pub connect_timeout: Duration,
    /// Name checked against the server certificate (default: the host part of the address
    /// connected to, `server` or a discovered node's).
    pub server_name: Option<String>,
    /// Which certificates to trust.
    pub trust: Trust,
    /// JWT or one-time ticket.
    pub credential: Credential,
    /// Device type: one session per user and device type (default `desktop`).
    pub device_type: String,
    /// Stable device id. Default: kept in `state_dir/device-id`, or random per run without one.
    pub device_id: Option<String>,
    /// Directory for the outbox, cursors and resume token, so they survive restarts. Without
    /// it everything is in memory.
    pub state_dir: Option<String>,
    /// fsync the state journal on every change (slower; survives power loss).
    pub sync_state: bool,
    /// Connection metadata sent at login (app version, locale, ...), shown in presence, the
    /// admin API and webhooks. Checked against the limits at [`Client::start`] (see
    /// [`crate::core::check_metadata`]). Default empty.
    pub metadata: HashMap<String, String>,
    /// Session timers and limits; `device_type`, `device_id` and `metadata` in it are
    /// overwritten.
    pub session: SessionConfig,
    /// Asked for a fresh credential when the server refuses the one in use (an expired JWT):
    /// a new one that differs is tried at once. Without it, a refusal waits for
    /// [`Client::set_credential`].
    pub credential_provider: Option<CredentialProvider>,
}

/// Where the client gets a fresh credential (e.g. a JWT from the app's backend). Called on a
/// blocking thread; `None`: none available now.
#[derive(Clone)]
pub struct CredentialProvider(pub Arc<dyn Fn() -> Option<Credential> + Send + Sync>);

impl std::fmt::Debug for CredentialProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialProvider")
    }
}

impl ClientConfig {
    /// A configuration with defaults for everything else.
    pub fn new(server: impl Into<String>, trust: Trust, credential: Credential) -> Self {
        ClientConfig {
            server: server.into(),
            fallback_servers: Vec::new(),
            registry_urls: Vec::new(),
            registry_app: DEFAULT_REGISTRY_APP.to_owned(),
            discovery: DiscoveryConfig::default(),
            registry_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(10),
            server_name: None,
            trust,
            credential,
            device_type: "desktop".into(),
            device_id: None,
            state_dir: None,
            sync_state: false,
            metadata: HashMap::new(),
            session: SessionConfig::new("desktop", ""),
            credential_provider: None,
        }
    }

    /// A configuration that finds its nodes through the registries at `registry_urls` (Eureka
    /// base URLs such as `http://10.0.0.5:8761/eureka/`), with no fixed server; defaults for
    /// everything else.
    pub fn discover(
        registry_urls: impl IntoIterator<Item = impl Into<String>>,
        trust: Trust,
        credential: Credential,
    ) -> Self {
        let mut cfg = ClientConfig::new("", trust, credential);
        cfg.registry_urls = registry_urls.into_iter().map(Into::into).collect();
        cfg
    }
}

/// Why a [`Client::send`] did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendFailure {
    /// The server refused the message for good.
    #[error("refused: {code:?}: {message}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The client was closed before the message was acknowledged. It stays in the persisted
    /// outbox (with a state dir) and is sent on the next start.
    #[error("client closed before the message was acknowledged")]
    Closed,
    /// [`Client::cancel`] took it out of the outbox.
    #[error("cancelled (it may have reached the server already: {maybe_delivered})")]
    Cancelled {
        /// It may have reached the server before the cancel.
        maybe_delivered: bool,
    },
}

/// A queued message: resolves (as a future) once the server stored it, and names it.
#[derive(Debug)]
#[must_use = "the message is sent anyway; await the handle to learn when it is stored"]
pub struct SendHandle {
    client_msg_id: String,
    /// `None`: the client was already closed when the message was handed to it.
    rx: Option<oneshot::Receiver<Result<SendAck, SendFailure>>>,
}

impl SendHandle {
    /// The message's id (for [`Client::cancel`], or to match its [`Event::SendAcked`]).
    pub fn client_msg_id(&self) -> &str {
        &self.client_msg_id
    }
}

impl Future for SendHandle {
    type Output = Result<SendAck, SendFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.rx.as_mut() {
            None => std::task::Poll::Ready(Err(SendFailure::Closed)),
            Some(rx) => Pin::new(rx).poll(cx).map(|r| r.unwrap_or(Err(SendFailure::Closed))),
        }
    }
}

/// Why a [`Client::join_room`] or [`Client::leave_room`] did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomFailure {
    /// The server refused the request.
    #[error("refused: {code:?}: {message}")]
    Refused {
        /// Error code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The client was closed before the server answered.
    #[error("client closed before the server answered")]
    Closed,
}

/// A snapshot of the client for status displays and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Connection state.
    pub state: ConnectionState,
    /// The user, once logged in.
    pub user: Option<String>,
    /// Highest inbox seq handed to the app.
    pub inbox_cursor: u64,
    /// Messages not yet acknowledged.
    pub outbox_len: usize,
    /// Highest seq handed to the app per followed room.
    pub room_cursors: HashMap<String, u64>,
    /// Local UDP address of the endpoint.
    pub local_addr: Option<SocketAddr>,
    /// The node (`host:port`, as configured or discovered) the current connection goes to;
    /// `None` while there is no connection.
    pub server: Option<String>,
    /// The discovered nodes the client knows of (fetched, or restored from the state dir),
    /// best first; empty without discovery.
    pub nodes: Vec<DiscoveredNode>,
    /// The device id in use.
    pub device_id: String,
}

enum Command {
    Send {
        client_msg_id: String,
        to: Target,
        content_type: String,
        payload: Vec<u8>,
        reply: oneshot::Sender<Result<SendAck, SendFailure>>,
    },
    Outbox {
        reply: oneshot::Sender<Vec<PendingMessage>>,
    },
    Cancel {
        client_msg_id: String,
        reply: oneshot::Sender<Option<bool>>,
    },
    JoinRoom {
        room: String,
        reply: oneshot::Sender<Result<RoomJoined, RoomFailure>>,
    },
    LeaveRoom {
        room: String,
        reply: oneshot::Sender<Result<(), RoomFailure>>,
    },
    SubscribePresence(Vec<String>),
    UnsubscribePresence(Vec<String>),
    SyncRoom {
        room: String,
        after: u64,
    },
    NetworkChanged {
        reply: oneshot::Sender<Result<SocketAddr, ClientError>>,
    },
    SetCredential(Credential),
    Restart,
    Pause,
    Resume,
    Status {
        reply: oneshot::Sender<Status>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to a running client. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    cmd: mpsc::UnboundedSender<Command>,
    state: watch::Receiver<ConnectionState>,
    listeners: Listeners,
}

/// Receives the client's events (see [`Client::add_listener`]). Closures
/// `Fn(Event) + Send + Sync` are listeners.
pub trait EventListener: Send + Sync + 'static {
    /// One event; called on the listener's own thread, in order.
    fn on_event(&self, event: Event);

    /// The events that were waiting when the listener's thread woke up (at least one, at most
    /// [`LISTENER_BATCH`]), in order. The default hands them to [`EventListener::on_event`] one
    /// by one; a listener across a language boundary takes them in one call, so that a burst
    /// (a sync after a reconnect) costs one crossing per batch instead of one per event.
    fn on_events(&self, events: Vec<Event>) {
        for ev in events {
            self.on_event(ev);
        }
    }
}

/// At most this many events are handed to [`EventListener::on_events`] in one call.
pub const LISTENER_BATCH: usize = 256;

impl<F: Fn(Event) + Send + Sync + 'static> EventListener for F {
    fn on_event(&self, event: Event) {
        self(event)
    }
}

/// The registered listeners: id and the sending half of its thread's queue.
type ListenerList = std::sync::Mutex<Vec<(u64, std::sync::mpsc::Sender<Event>)>>;
type Listeners = Arc<ListenerList>;

fn lock_listeners(l: &ListenerList) -> std::sync::MutexGuard<'_, Vec<(u64, std::sync::mpsc::Sender<Event>)>> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a listener registered; dropping it stops the listener (events already queued for it
/// are still handed over, then its thread ends).
#[must_use = "the listener stops when the handle is dropped"]
pub struct ListenerHandle {
    id: u64,
    listeners: std::sync::Weak<ListenerList>,
}

impl Drop for ListenerHandle {
    fn drop(&mut self) {
        if let Some(l) = self.listeners.upgrade() {
            lock_listeners(&l).retain(|(id, _)| *id != self.id);
        }
    }
}

/// The app's event stream.
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
}

impl Events {
    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// The next event if one is ready.
    pub fn try_next(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn device_id_for(cfg: &ClientConfig) -> Result<String, ClientError> {
    if let Some(d) = &cfg.device_id {
        return Ok(d.clone());
    }
    let fresh = || format!("dev-{:016x}", rand::random::<u64>());
    let Some(dir) = &cfg.state_dir else { return Ok(fresh()) };
    std::fs::create_dir_all(dir).map_err(|e| ClientError::State(e.to_string()))?;
    let path = std::path::Path::new(dir).join("device-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = fresh();
            std::fs::write(&path, &id).map_err(|e| ClientError::State(e.to_string()))?;
            Ok(id)
        }
    }
}

fn bind_addr(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        SocketAddr::from(([0u16; 8], 0))
    } else {
        SocketAddr::from(([0u8; 4], 0))
    }
}

/// QUIC transport settings of the client side.
fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    // The session core runs its own heartbeat and dead-connection detection; QUIC's idle
    // timeout is only a backstop.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(Duration::from_secs(120)).ok());
    t
}

impl Client {
    /// Opens the state dir, binds a UDP socket and starts connecting in the background.
    pub async fn start(cfg: ClientConfig) -> Result<(Client, Events), ClientError> {
        let statics: Vec<String> = std::iter::once(&cfg.server)
            .chain(&cfg.fallback_servers)
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let discovery = !cfg.registry_urls.is_empty();
        // Without discovery the server must resolve now, so that a typo is reported at once;
        // other addresses are looked up when they are connected to.
        let first_addr = match statics.first() {
            Some(server) if !discovery => Some(resolve(server).await?),
            Some(_) => None,
            None if discovery => None,
            None => return Err(ClientError::Config("neither a server nor a registry URL is configured".into())),
        };
        let registry = if discovery {
            let r = RegistryClient::new(&cfg.registry_urls, &cfg.registry_app, &cfg.trust, cfg.registry_timeout)
                .map_err(|e: RegistryError| ClientError::Config(e.to_string()))?;
            Some(r)
        } else {
            None
        };
        let metadata = cfg.metadata.clone();
        check_metadata(&metadata).map_err(|e| ClientError::Config(e.to_string()))?;
        let device_id = device_id_for(&cfg)?;
        let (store, persisted) = match &cfg.state_dir {
            Some(dir) => {
                let (mut s, p) =
                    StateStore::open(std::path::Path::new(dir)).map_err(|e| ClientError::State(e.to_string()))?;
                s.set_sync(cfg.sync_state);
                (Some(s), p)
            }
            None => (None, Default::default()),
        };
        let mut directory = NodeDirectory::new(cfg.discovery, discovery, statics);
        let cache_dir = cfg.state_dir.as_ref().filter(|_| discovery).map(std::path::PathBuf::from);
        if let Some(cache) = cache_dir.as_deref().and_then(load_cache) {
            if directory.restore(cache, &cfg.registry_app) {
                info!(nodes = directory.nodes().len(), "node list restored from the state dir");
            }
        }
        let crypto = client_crypto(&cfg.trust)?;
        let quic =
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| ClientError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        client_config.transport_config(Arc::new(transport()));
        let bind = first_addr.map_or(SocketAddr::from(([0u8; 4], 0)), bind_addr);
        let mut endpoint = quinn::Endpoint::client(bind).map_err(ClientError::Io)?;
        endpoint.set_default_client_config(client_config);

        let mut scfg = cfg.session.clone();
        scfg.device_type = cfg.device_type.clone();
        scfg.device_id = device_id.clone();
        scfg.metadata = metadata;
        let session = Session::new(scfg, cfg.credential.clone(), persisted, rand::random());
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let listeners: Listeners = Arc::default();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Idle);
        let driver = Driver {
            session,
            credential: cfg.credential.clone(),
            credential_provider: cfg.credential_provider.clone(),
            store,
            endpoint,
            directory,
            registry,
            registry_app: cfg.registry_app.clone(),
            registry_first: 0,
            cache_dir,
            current: None,
            server_name: cfg.server_name.clone(),
            connect_timeout: cfg.connect_timeout,
            device_id,
            live: None,
            gen: 0,
            pending: HashMap::new(),
            joins: HashMap::new(),
            leaves: HashMap::new(),
            events: ev_tx,
            listeners: listeners.clone(),
            state: state_tx,
        };
        tokio::spawn(driver.run(cmd_rx));
        Ok((Client { cmd: cmd_tx, state: state_rx, listeners }, Events { rx: ev_rx }))
    }

    /// Queues a message and returns at once with a [`SendHandle`]: a future that resolves once
    /// the server has stored the message, which also names it (for [`Client::cancel`]).
    ///
    /// The message is queued when `send` is called, not when the handle is first polled, so
    /// messages go out in the order of the calls without waiting for each other. From then on
    /// it is in the (persisted) outbox and is retried, across reconnects and restarts, until
    /// acknowledged; dropping the handle does not cancel it.
    pub fn send(&self, to: Target, content_type: impl Into<String>, payload: Vec<u8>) -> SendHandle {
        let (reply, rx) = oneshot::channel();
        let client_msg_id = format!("{:032x}", rand::random::<u128>());
        let cmd = Command::Send {
            client_msg_id: client_msg_id.clone(),
            to,
            content_type: content_type.into(),
            payload,
            reply,
        };
        let queued = self.cmd.send(cmd).is_ok();
        SendHandle { client_msg_id, rx: queued.then_some(rx) }
    }

    /// The messages not acknowledged yet, oldest first: for local echo, e.g. after an app
    /// restart restored them from the state dir.
    pub async fn outbox(&self) -> Result<Vec<PendingMessage>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Command::Outbox { reply }).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Cancels a message that is still in the outbox: it is not sent again and its
    /// [`SendHandle`] resolves with [`SendFailure::Cancelled`]. `Ok(None)`: it was not in the
    /// outbox any more (acknowledged or refused). `Ok(Some(true))`: it may have reached the
    /// server before the cancel and may still be delivered.
    pub async fn cancel(&self, client_msg_id: &str) -> Result<Option<bool>, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmd
            .send(Command::Cancel { client_msg_id: client_msg_id.to_owned(), reply })
            .map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Sends a `text/plain` message to a user (see [`Client::send`]).
    pub fn send_text(&self, to_user: &str, text: &str) -> SendHandle {
        self.send(Target::User(to_user.to_owned()), "text/plain", text.as_bytes().to_vec())
    }

    /// Sends a message to a room (see [`Client::send`]). The ack's `seq` is the message's seq
    /// in the room's log.
    pub fn send_to_room(&self, room: &str, content_type: impl Into<String>, payload: Vec<u8>) -> SendHandle {
        self.send(Target::Room(room.to_owned()), content_type, payload)
    }

    /// Joins a room; resolves with the server's answer. Requested at once (or, offline, after
    /// the next login, before queued messages), retried after a reconnect until answered.
    /// Membership is kept by the server across reconnects and restarts until
    /// [`Client::leave_room`]. A new member's cursor starts at the room's head: older messages
    /// only through [`Client::sync_room`].
    pub fn join_room(
        &self,
        room: impl Into<String>,
    ) -> impl Future<Output = Result<RoomJoined, RoomFailure>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.cmd.send(Command::JoinRoom { room: room.into(), reply }).is_ok();
        async move {
            if !queued {
                return Err(RoomFailure::Closed);
            }
            rx.await.unwrap_or(Err(RoomFailure::Closed))
        }
    }

    /// Leaves a room; resolves once the server confirmed it. The room's cursor is forgotten.
    pub fn leave_room(
        &self,
        room: impl Into<String>,
    ) -> impl Future<Output = Result<(), RoomFailure>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.cmd.send(Command::LeaveRoom { room: room.into(), reply }).is_ok();
        async move {
            if !queued {
                return Err(RoomFailure::Closed);
            }
            rx.await.unwrap_or(Err(RoomFailure::Closed))
        }
    }

    /// Subscribes to the presence of `users`: a [`Event::Presence`] for each at once,
    /// then on every change. Kept across reconnects.
    pub fn subscribe_presence(&self, users: Vec<String>) -> Result<(), ClientError> {
        self.cmd.send(Command::SubscribePresence(users)).map_err(|_| ClientError::Closed)
    }

    /// Ends presence subscriptions for `users`.
    pub fn unsubscribe_presence(&self, users: Vec<String>) -> Result<(), ClientError> {
        self.cmd.send(Command::UnsubscribePresence(users)).map_err(|_| ClientError::Closed)
    }

    /// Asks for the messages of `room` after `after`: below the room's cursor this fetches
    /// history (delivered as [`Event::Message`], each once per fetch; see
    /// [`Session::sync_room`]).
    pub fn sync_room(&self, room: impl Into<String>, after: u64) -> Result<(), ClientError> {
        self.cmd.send(Command::SyncRoom { room: room.into(), after }).map_err(|_| ClientError::Closed)
    }

    /// Tells the client the network changed (e.g. Wi-Fi to cellular): it moves the QUIC
    /// connection to a new local UDP socket. The connection and the session go on (QUIC
    /// connection migration). Returns the new local address.
    pub async fn network_changed(&self) -> Result<SocketAddr, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Command::NetworkChanged { reply }).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)?
    }

    /// Replaces the credential (e.g. a refreshed JWT) and, after an auth failure, tries it.
    pub fn set_credential(&self, credential: Credential) {
        let _ = self.cmd.send(Command::SetCredential(credential));
    }

    /// Registers a listener that gets every event from now on, in order, on a thread of its
    /// own (so a slow listener never holds up the client), besides the [`Events`] stream.
    /// The listener stops when the returned handle is dropped.
    pub fn add_listener(&self, listener: impl EventListener) -> ListenerHandle {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = std::sync::mpsc::channel::<Event>();
        lock_listeners(&self.listeners).push((id, tx));
        let spawned = std::thread::Builder::new().name(format!("tether-listener-{id}")).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < LISTENER_BATCH {
                    match rx.try_recv() {
                        Ok(ev) => batch.push(ev),
                        Err(_) => break,
                    }
                }
                listener.on_events(batch);
            }
        });
        if let Err(e) = spawned {
            warn!(error = %e, "could not start a listener thread");
            lock_listeners(&self.listeners).retain(|(i, _)| *i != id);
        }
        ListenerHandle { id, listeners: Arc::downgrade(&self.listeners) }
    }

    /// Connects again after a kick, an auth failure or a close.
    pub fn restart(&self) {
        let _ = self.cmd.send(Command::Restart);
    }

    /// The app went to the background: acks what was received, logs out politely and closes
    /// the connection; no heartbeat and no reconnect until [`Client::resume`]. Sends keep
    /// going into the (persisted) outbox. State [`ConnectionState::Paused`].
    pub fn pause(&self) -> Result<(), ClientError> {
        self.cmd.send(Command::Pause).map_err(|_| ClientError::Closed)
    }

    /// The app is in the foreground again: reconnects at once, receives what arrived while
    /// paused (each message once) and sends the outbox.
    pub fn resume(&self) -> Result<(), ClientError> {
        self.cmd.send(Command::Resume).map_err(|_| ClientError::Closed)
    }

    /// The current connection state.
    pub fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// Waits until the state satisfies `pred`, returning it; `Err` if the client stopped.
    pub async fn wait_for_state(
        &self,
        pred: impl Fn(&ConnectionState) -> bool,
    ) -> Result<ConnectionState, ClientError> {
        let mut rx = self.state.clone();
        let s = rx.wait_for(|s| pred(s)).await.map_err(|_| ClientError::Closed)?;
        Ok(s.clone())
    }

    /// Waits until logged in. Fails if the client gets kicked, refused or closed instead.
    pub async fn wait_online(&self) -> Result<(), ClientError> {
        let s = self
            .wait_for_state(|s| {
                matches!(
                    s,
                    ConnectionState::Online
                        | ConnectionState::Kicked { .. }
                        | ConnectionState::AuthFailed { .. }
                        | ConnectionState::LoggedOut
                )
            })
            .await?;
        match s {
            ConnectionState::Online => Ok(()),
            other => Err(ClientError::NotOnline(format!("{other:?}"))),
        }
    }

    /// A snapshot of the client.
    pub async fn status(&self) -> Result<Status, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.cmd.send(Command::Status { reply }).map_err(|_| ClientError::Closed)?;
        rx.await.map_err(|_| ClientError::Closed)
    }

    /// Logs out (acks what was received, sends `logout`), closes the connection and stops the
    /// client. Unacknowledged messages stay in the persisted outbox.
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.cmd.send(Command::Close { reply }).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Messages from a connection's I/O tasks, tagged with the connection generation.
enum Io {
    Frame(u64, Frame),
    Closed(u64, Option<CloseCode>),
}

enum Out {
    Data(Bytes),
    Close(CloseCode),
}

struct Live {
    conn: quinn::Connection,
    out: mpsc::UnboundedSender<Out>,
}

type Connecting = Pin<
    Box<dyn Future<Output = Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError>> + Send>,
>;

/// A fetch of the node list under way: the registry that answered and the nodes.
type Refreshing = Pin<Box<dyn Future<Output = Result<(usize, Vec<DiscoveredNode>), RegistryError>> + Send>>;

struct Driver {
    session: Session,
    /// The app credential in use, and where fresh ones come from.
    credential: Credential,
    credential_provider: Option<CredentialProvider>,
    store: Option<StateStore>,
    endpoint: quinn::Endpoint,
    /// The node list and the choice of node (server, fallbacks, discovered nodes).
    directory: NodeDirectory,
    /// Where the node list comes from, with discovery.
    registry: Option<RegistryClient>,
    registry_app: String,
    /// The registry that answered last (asked first next time).
    registry_first: usize,
    /// Where the node list is kept (the state dir, with discovery).
    cache_dir: Option<std::path::PathBuf>,
    /// The node the current connection, or the attempt under way, goes to.
    current: Option<String>,
    /// Name checked against every node's certificate, if configured.
    server_name: Option<String>,
    connect_timeout: Duration,
    device_id: String,
    live: Option<Live>,
    gen: u64,
    pending: HashMap<String, oneshot::Sender<Result<SendAck, SendFailure>>>,
    /// Callers of `join_room` / `leave_room` waiting for the answer, by room.
    joins: HashMap<String, Vec<oneshot::Sender<Result<RoomJoined, RoomFailure>>>>,
    leaves: HashMap<String, Vec<oneshot::Sender<Result<(), RoomFailure>>>>,
    events: mpsc::UnboundedSender<Event>,
    listeners: Listeners,
    state: watch::Sender<ConnectionState>,
}

/// What the run loop must do after a pump.
#[derive(Default)]
struct Todo {
    connect: bool,
    abandon: bool,
    /// The credential was refused and a provider may have a fresh one.
    refresh_credential: bool,
}

impl Driver {
    /// The node of the current connection let the session down (a failed attempt, a lost
    /// connection, `go_away`): it cools down and the next attempt goes elsewhere.
    fn node_failed(&mut self, why: &str) {
        if let Some(node) = &self.current {
            info!(%node, why, "node failed; the next attempt goes to another node if there is one");
            self.directory.mark_failed(node, Instant::now());
        }
    }

    /// Starts a connection attempt to the node the directory chooses now.
    fn start_connect(&mut self) -> Connecting {
        let node = self.directory.choose(Instant::now());
        self.current = node.clone();
        let Some(node) = node else {
            warn!("no node to connect to (no node UP in the registry and no server configured)");
            return Box::pin(async { Err(ClientError::Connect("no node to connect to".into())) });
        };
        debug!(%node, "connecting");
        let (endpoint, name, timeout) = (self.endpoint.clone(), self.server_name.clone(), self.connect_timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, connect(endpoint, node.clone(), name)).await {
                Ok(r) => r,
                Err(_) => Err(ClientError::Connect(format!("{node}: no answer within {timeout:?}"))),
            }
        })
    }

    /// Starts fetching the node list if the directory wants a fresh one before connecting.
    fn start_refresh(&mut self) -> Option<Refreshing> {
        let registry = self.registry.clone()?;
        if !self.directory.needs_refresh(Instant::now()) {
            return None;
        }
        let first = self.registry_first;
        Some(Box::pin(async move { registry.fetch(first).await }))
    }

    /// Takes the outcome of a fetch of the node list; keeps a new list in the state dir.
    async fn refreshed(&mut self, r: Result<(usize, Vec<DiscoveredNode>), RegistryError>) {
        let now = Instant::now();
        match r {
            Ok((answered, nodes)) => {
                self.registry_first = answered;
                let n = nodes.len();
                if self.directory.refreshed(nodes, now, now_ms()) {
                    debug!(nodes = n, "node list fetched");
                    self.save_node_cache().await;
                } else {
                    warn!("the registry lists no node; keeping the list in hand");
                }
            }
            Err(e) => {
                warn!(error = %e, nodes = self.directory.nodes().len(), "no registry answered; using the list in hand");
                self.directory.refresh_failed(now);
            }
        }
    }

    async fn save_node_cache(&self) {
        let (Some(dir), Some(cache)) = (self.cache_dir.clone(), self.directory.cache(&self.registry_app)) else {
            return;
        };
        let written = tokio::task::spawn_blocking(move || save_cache(&dir, &cache)).await;
        if let Ok(Err(e)) = written {
            warn!(error = %e, "could not keep the node list in the state dir");
        }
    }

    async fn run(mut self, mut cmds: mpsc::UnboundedReceiver<Command>) {
        let (io_tx, mut io_rx) = mpsc::unbounded_channel::<Io>();
        let mut connecting: Option<Connecting> = None;
        let mut refreshing: Option<Refreshing> = None;
        let mut closing: Option<oneshot::Sender<()>> = None;
        self.session.set_wall_clock(Instant::now(), now_ms());
        self.session.start(Instant::now());
        loop {
            let mut todo = self.pump().await;
            if todo.refresh_credential {
                if let Some(provider) = self.credential_provider.clone() {
                    let fresh = tokio::task::spawn_blocking(move || (provider.0)()).await.ok().flatten();
                    match fresh {
                        Some(c) if c != self.credential => {
                            info!("credential refused; trying a fresh one from the provider");
                            self.credential = c.clone();
                            self.session.set_credential(c);
                            self.session.start(Instant::now());
                            todo = self.pump().await;
                        }
                        _ => warn!("credential refused and the provider has no new one"),
                    }
                }
            }
            if todo.abandon {
                connecting = None;
                refreshing = None;
            }
            if todo.connect {
                // A stale node list is fetched first; the attempt starts when it is in.
                connecting = None;
                refreshing = self.start_refresh();
                if refreshing.is_none() {
                    connecting = Some(self.start_connect());
                }
            }
            if closing.is_some() {
                break;
            }
            let deadline = self.session.poll_timeout();
            let sleep = async move {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            let conn_fut = async {
                match connecting.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            let refresh_fut = async {
                match refreshing.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(Command::Close { reply }) => {
                        self.session.close(Instant::now());
                        closing = Some(reply);
                    }
                    Some(cmd) => self.on_command(cmd),
                    None => {
                        self.session.close(Instant::now());
                        closing = Some(oneshot::channel().0);
                    }
                },
                r = refresh_fut => {
                    refreshing = None;
                    self.refreshed(r).await;
                    if matches!(self.session.state(), crate::core::SessionState::Connecting) {
                        connecting = Some(self.start_connect());
                    }
                }
                r = conn_fut => {
                    connecting = None;
                    match r {
                        Ok((conn, send, recv)) => {
                            self.gen += 1;
                            let (out_tx, out_rx) = mpsc::unbounded_channel();
                            tokio::spawn(write_loop(conn.clone(), send, out_rx));
                            tokio::spawn(read_loop(self.gen, conn.clone(), recv, io_tx.clone()));
                            info!(remote = %conn.remote_address(), node = ?self.current, "connected");
                            self.live = Some(Live { conn, out: out_tx });
                            self.session.handle_connected(Instant::now());
                        }
                        Err(e) => {
                            debug!(error = %e, "connect failed");
                            self.node_failed("connect failed");
                            self.session.handle_connect_failed(Instant::now());
                        }
                    }
                }
                Some(io) = io_rx.recv() => match io {
                    Io::Frame(g, f) if g == self.gen && self.live.is_some() => self.session.handle_frame(f, Instant::now()),
                    Io::Closed(g, code) if g == self.gen && self.live.is_some() => {
                        info!(?code, "disconnected");
                        self.live = None;
                        let why = if code == Some(CloseCode::GoingAway) { "going away" } else { "connection lost" };
                        self.node_failed(why);
                        self.session.handle_disconnected(Instant::now(), code);
                    }
                    _ => {}
                },
                _ = sleep => self.session.handle_timeout(Instant::now()),
            }
        }
        // Closing: the pump above queued logout and the close; give the writer a moment.
        if let Some(live) = self.live.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), live.conn.closed()).await;
        }
        for (_, tx) in self.pending.drain() {
            let _ = tx.send(Err(SendFailure::Closed));
        }
        for tx in self.joins.drain().flat_map(|(_, v)| v) {
            let _ = tx.send(Err(RoomFailure::Closed));
        }
        for tx in self.leaves.drain().flat_map(|(_, v)| v) {
            let _ = tx.send(Err(RoomFailure::Closed));
        }
        self.endpoint.close(quinn::VarInt::from_u32(CloseCode::Normal.code()), b"normal");
        if let Some(reply) = closing {
            let _ = reply.send(());
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let now = Instant::now();
        match cmd {
            Command::Send { client_msg_id, to, content_type, payload, reply } => {
                self.session.send_with_id(client_msg_id.clone(), to.to_wire(), content_type, payload, now, now_ms());
                self.pending.insert(client_msg_id, reply);
            }
            Command::Outbox { reply } => {
                let _ = reply.send(self.session.outbox().into_iter().map(PendingMessage::from).collect());
            }
            Command::Cancel { client_msg_id, reply } => {
                let _ = reply.send(self.session.cancel(&client_msg_id));
            }
            Command::JoinRoom { room, reply } => {
                self.joins.entry(room.clone()).or_default().push(reply);
                self.session.join_room(room, now);
            }
            Command::LeaveRoom { room, reply } => {
                self.leaves.entry(room.clone()).or_default().push(reply);
                self.session.leave_room(room, now);
            }
            Command::SubscribePresence(users) => self.session.subscribe_presence(users, now),
            Command::UnsubscribePresence(users) => self.session.unsubscribe_presence(users, now),
            Command::SyncRoom { room, after } => self.session.sync_room(room, after, now),
            Command::NetworkChanged { reply } => {
                let family = self.endpoint.local_addr().unwrap_or(SocketAddr::from(([0u8; 4], 0)));
                let r = std::net::UdpSocket::bind(bind_addr(family))
                    .and_then(|s| {
                        self.endpoint.rebind(s)?;
                        self.endpoint.local_addr()
                    })
                    .map_err(ClientError::Io);
                if let Ok(a) = &r {
                    info!(local = %a, "rebound to a new socket after a network change");
                }
                // If we were waiting to reconnect, the new network is worth trying at once.
                self.session.reconnect_now(now);
                let _ = reply.send(r);
            }
            Command::SetCredential(c) => {
                self.credential = c.clone();
                self.session.set_credential(c);
                if matches!(self.session.state(), crate::core::SessionState::AuthFailed(_)) {
                    self.session.start(now);
                }
            }
            Command::Restart => self.session.start(now),
            Command::Pause => self.session.pause(now),
            Command::Resume => self.session.resume(now),
            Command::Status { reply } => {
                let _ = reply.send(Status {
                    state: ConnectionState::from(self.session.state()),
                    user: self.session.user().map(str::to_string),
                    inbox_cursor: self.session.inbox_cursor(),
                    outbox_len: self.session.outbox_len(),
                    room_cursors: self.session.room_cursors().into_iter().collect(),
                    local_addr: self.endpoint.local_addr().ok(),
                    server: self.live.as_ref().and(self.current.clone()),
                    nodes: self.directory.nodes().to_vec(),
                    device_id: self.device_id.clone(),
                });
            }
            Command::Close { .. } => {}
        }
    }

    /// Drains the session's queues in the order its docs require.
    async fn pump(&mut self) -> Todo {
        let mut todo = Todo::default();
        let mut ops: Vec<PersistOp> = Vec::new();
        while let Some(op) = self.session.poll_persist() {
            ops.push(op);
        }
        if !ops.is_empty() {
            if let Some(mut store) = self.store.take() {
                // The journal write and its fsync block: they run on a blocking thread, not on
                // the async workers, and the frames wait for them (persist before transmit).
                match tokio::task::spawn_blocking(move || {
                    let r = store.apply(&ops);
                    (store, r)
                })
                .await
                {
                    Ok((store, r)) => {
                        self.store = Some(store);
                        if let Err(e) = r {
                            warn!(error = %e, "state journal write failed");
                            let _ = self.events.send(Event::StorageError(e.to_string()));
                        }
                    }
                    Err(e) => {
                        warn!(error = %e, "state journal writer panicked; the client goes on without it");
                        let _ = self.events.send(Event::StorageError(e.to_string()));
                    }
                }
            }
        }
        let mut buf = BytesMut::new();
        while let Some(f) = self.session.poll_transmit() {
            if let Err(e) = tether_proto::encode(&f, &mut buf) {
                warn!(error = %e, "failed to encode a frame");
            }
        }
        if !buf.is_empty() {
            if let Some(live) = &self.live {
                let _ = live.out.send(Out::Data(buf.freeze()));
            }
        }
        while let Some(a) = self.session.poll_action() {
            match a {
                Action::Connect => todo.connect = true,
                Action::Disconnect { code } => {
                    todo.connect = false;
                    todo.abandon = true;
                    if let Some(live) = self.live.take() {
                        let _ = live.out.send(Out::Close(code));
                        // A connection the session gave up on (no answer to heartbeats or to
                        // the login) or left because the node drains (`go_away`): the next
                        // one goes to another node. A polite leave (pause, close) is not the
                        // node's fault.
                        if a.marks_node_failed() {
                            let why = if code == CloseCode::GoingAway {
                                "go_away: the node is draining"
                            } else {
                                code.reason()
                            };
                            self.node_failed(why);
                        }
                    }
                }
            }
        }
        while let Some(ev) = self.session.poll_event() {
            // The driver's part of each event (callers waiting on it, the state watch); the
            // event itself goes to the app as the core made it.
            match &ev {
                Event::State(s) => {
                    self.state.send_replace(s.clone());
                }
                Event::SendAcked(ack) => {
                    if let Some(tx) = self.pending.remove(&ack.client_msg_id) {
                        let _ = tx.send(Ok(ack.clone()));
                    }
                }
                Event::SendFailed { client_msg_id, code, message } => {
                    if let Some(tx) = self.pending.remove(client_msg_id) {
                        let _ = tx.send(Err(SendFailure::Refused { code: *code, message: message.clone() }));
                    }
                }
                Event::SendCancelled { client_msg_id, maybe_delivered } => {
                    if let Some(tx) = self.pending.remove(client_msg_id) {
                        let _ = tx.send(Err(SendFailure::Cancelled { maybe_delivered: *maybe_delivered }));
                    }
                }
                Event::LoginFailed { .. } => {
                    todo.refresh_credential = self.credential_provider.is_some();
                }
                Event::LoggedIn { .. } => {
                    if let Some(node) = &self.current {
                        self.directory.mark_ok(node);
                    }
                }
                Event::RoomJoined(joined) => {
                    for tx in self.joins.remove(&joined.room).unwrap_or_default() {
                        let _ = tx.send(Ok(joined.clone()));
                    }
                }
                Event::RoomJoinFailed { room, code, message } => {
                    for tx in self.joins.remove(room).unwrap_or_default() {
                        let _ = tx.send(Err(RoomFailure::Refused { code: *code, message: message.clone() }));
                    }
                }
                Event::RoomLeft(room) => {
                    for tx in self.leaves.remove(room).unwrap_or_default() {
                        let _ = tx.send(Ok(()));
                    }
                }
                Event::Message(_)
                | Event::Kicked(_)
                | Event::RoomEvent(_)
                | Event::Presence(_)
                | Event::HistoryTruncated(_)
                | Event::StorageError(_) => {}
            }
            for (_, l) in lock_listeners(&self.listeners).iter() {
                let _ = l.send(ev.clone());
            }
            let _ = self.events.send(ev);
        }
        todo
    }
}

/// The first address `host:port` resolves to.
async fn resolve(address: &str) -> Result<SocketAddr, ClientError> {
    tokio::net::lookup_host(address)
        .await
        .map_err(|e| ClientError::Resolve(format!("{address}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Resolve(format!("{address}: no address")))
}

/// The host part of `host:port` (without the brackets of an IPv6 address).
fn host_of(address: &str) -> &str {
    address.rsplit_once(':').map_or(address, |(h, _)| h).trim_matches(['[', ']'])
}

/// Opens a connection to `node` (`host:port`) and its stream. The endpoint is moved to a
/// socket of the node's address family first if need be (nothing is connected meanwhile).
async fn connect(
    endpoint: quinn::Endpoint,
    node: String,
    name: Option<String>,
) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream), ClientError> {
    let addr = resolve(&node).await?;
    let local = endpoint.local_addr().map_err(ClientError::Io)?;
    if local.is_ipv6() != addr.is_ipv6() {
        let socket = std::net::UdpSocket::bind(bind_addr(addr)).map_err(ClientError::Io)?;
        endpoint.rebind(socket).map_err(ClientError::Io)?;
    }
    let name = name.unwrap_or_else(|| host_of(&node).to_owned());
    let conn = endpoint
        .connect(addr, &name)
        .map_err(|e| ClientError::Connect(format!("{node}: {e}")))?
        .await
        .map_err(|e| ClientError::Connect(format!("{node}: {e}")))?;
    let (send, recv) = conn.open_bi().await.map_err(|e| ClientError::Connect(format!("{node}: {e}")))?;
    Ok((conn, send, recv))
}

async fn write_loop(conn: quinn::Connection, mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Out>) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Data(b) => {
                if send.write_chunk(b).await.is_err() {
                    return;
                }
            }
            Out::Close(code) => {
                if send.finish().is_ok() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                }
                conn.close(quinn::VarInt::from_u32(code.code()), code.reason().as_bytes());
                return;
            }
        }
    }
}

fn close_code(e: &quinn::ConnectionError) -> Option<CloseCode> {
    match e {
        quinn::ConnectionError::ApplicationClosed(ac) => CloseCode::from_code(ac.error_code.into_inner()),
        _ => None,
    }
}

async fn read_loop(gen: u64, conn: quinn::Connection, mut recv: quinn::RecvStream, io: mpsc::UnboundedSender<Io>) {
    // Server frames are bounded by the server's own limit; accept up to 16 MiB from it.
    let mut decoder = Decoder::new(16 * 1024 * 1024);
    let mut buf = BytesMut::new();
    loop {
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(Decoded::Frame(f))) => {
                    if io.send(Io::Frame(gen, f)).is_err() {
                        return;
                    }
                }
                Ok(Some(Decoded::Unknown { frame_type })) => debug!(%frame_type, "skipped an unknown frame type"),
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "undecodable frame from the server");
                    let code = CloseCode::ProtocolError;
                    conn.close(quinn::VarInt::from_u32(code.code()), code.reason().as_bytes());
                    let _ = io.send(Io::Closed(gen, None));
                    return;
                }
            }
        }
        match recv.read_chunk(64 * 1024, true).await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
            Ok(None) => {
                // The server finished the stream: it is closing; wait (briefly) for its reason.
                let code = match tokio::time::timeout(Duration::from_secs(3), conn.closed()).await {
                    Ok(e) => close_code(&e),
                    Err(_) => None,
                };
                let _ = io.send(Io::Closed(gen, code));
                return;
            }
            Err(e) => {
                let code = match &e {
                    quinn::ReadError::ConnectionLost(c) => close_code(c),
                    _ => conn.close_reason().as_ref().and_then(close_code),
                };
                let _ = io.send(Io::Closed(gen, code));
                return;
            }
        }
    }
}
