//! The Tether client SDK.
//!
//! [`core`] is the sans-I/O session state machine: connection lifecycle, backoff, heartbeat,
//! outbox with retry until acknowledged, inbox and room deduplication and ordering, sync
//! cursors, room membership requests and presence subscriptions. It does
//! no I/O and reads no clock; a driver feeds it transport events and the current time and carries
//! out what it asks for. [`state`] is the file-backed journal that makes the session's
//! [`core::PersistOp`]s durable across restarts. [`client`] is that driver for tokio and quinn:
//! what an app uses. [`discovery`] finds the gateway nodes through the registry (the HTTP
//! fetch and the node cache; the choice of node is the core's sans-I/O
//! [`core::NodeDirectory`]).
//!
//! ```no_run
//! use tether_sdk::{Client, ClientConfig, Event, Credential, Trust};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut cfg = ClientConfig::new(
//!     "chat.example.com:7443",
//!     Trust::SystemRoots,
//!     Credential::Token("<JWT from your backend>".into()),
//! );
//! cfg.state_dir = Some("/var/lib/myapp/tether".into());
//! let (client, mut events) = Client::start(cfg).await?;
//! client.send_text("bob", "hello").await?;
//! while let Some(ev) = events.next().await {
//!     if let Event::Message(m) = ev {
//!         println!("{}: {}", m.from, String::from_utf8_lossy(&m.payload));
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod discovery;
pub mod state;
pub mod tls;

pub use client::{
    Client, ClientConfig, CredentialProvider, EventListener, Events, ListenerHandle, RoomFailure, SendFailure,
    SendHandle, Status, LISTENER_BATCH,
};
pub use core::{model, Event, SessionConfig};
pub use model::{
    ConnectionState, DevicePresence, ErrorCode, HistoryTruncated, KickReason, Kicked, Message, PendingMessage,
    Presence, RoomEvent, RoomEventKind, RoomJoined, SendAck, Target,
};
pub use tether_proto::Credential;
pub use tls::Trust;

/// The sans-I/O session core (the `tether-sdk-core` crate), as `quinn-proto` stands beside
/// `quinn`: what this crate drives.
pub use tether_sdk_core as core;

/// Why the client could not start or carry out a request.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server address did not resolve.
    #[error("resolve: {0}")]
    Resolve(String),
    /// TLS configuration (certificate files, trust store).
    #[error("tls: {0}")]
    Tls(String),
    /// The state dir could not be opened or read.
    #[error("state: {0}")]
    State(String),
    /// The configuration is invalid (e.g. connection metadata over its limits).
    #[error("config: {0}")]
    Config(String),
    /// Socket error.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(String),
    /// The client is not online and will not get there by itself (kicked, refused, closed).
    #[error("not online: {0}")]
    NotOnline(String),
    /// The client has stopped.
    #[error("client closed")]
    Closed,
}
