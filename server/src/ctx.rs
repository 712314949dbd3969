//! The node's shared context: what every session, the write pipeline and the admin API use.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::admission::Admission;
use crate::auth::Authenticator;
use crate::clock::Clock;
use crate::config::Config;
use crate::hub::Hub;
use crate::ids::MsgIdGen;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;
use crate::rooms::Rooms;
use crate::store::faults::Faults;
use crate::store::Store;
use crate::webhook::Webhooks;

/// Everything a session or the admin API needs, shared.
pub struct Ctx {
    /// Node configuration.
    pub cfg: Config,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Delivery, presence and session bookkeeping (this node's sessions, or the cluster's).
    pub hub: Arc<dyn Hub>,
    /// Room membership.
    pub rooms: Arc<Rooms>,
    /// Webhooks to the app's backend.
    pub webhooks: Webhooks,
    /// Write pipeline.
    pub pipeline: Pipeline,
    /// Credential checks.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Message id generator.
    pub ids: MsgIdGen,
    /// Next session id.
    pub next_session: AtomicU64,
    /// The admin bearer token in force.
    pub admin_token: String,
    /// Store fault injection (driven through `/v1/faults` only with `--fault-injection`).
    pub faults: Arc<Faults>,
    /// Admission of new connections.
    pub admission: Arc<std::sync::Mutex<Admission>>,
    /// Wall-clock time.
    pub clock: Arc<dyn Clock>,
    /// Set once the node drains: new connections are refused, sessions were told to move.
    pub draining: std::sync::atomic::AtomicBool,
    /// This node's registration with the registry (set once the node listens).
    pub registration: std::sync::OnceLock<Arc<tether_registry::Heartbeat>>,
}
