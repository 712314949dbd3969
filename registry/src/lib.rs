//! Tether's service registry: an HTTP registry speaking Netflix Eureka's REST API, and the
//! client gateway nodes use to register and discover each other.
//!
//! - [`core`]: the sans-I/O registry (leases, status overrides, eviction, delta, hash code);
//!   every operation takes `now_ms`, so time is injected.
//! - [`model`] and [`codec`]: Eureka's `InstanceInfo` / `Applications` and their JSON and XML
//!   forms.
//! - [`http`], [`service`], [`node`]: the server (axum router under `/eureka/` and
//!   `/eureka/v2/`, shared state, peer replication, the standalone node of the
//!   `tether-registry` binary); [`config`] is its configuration.
//! - [`client`]: [`EurekaClient`] with failover between registries and the [`Heartbeat`] task.
//! - [`tether`]: how gateway nodes describe themselves (app `TETHER`, metadata keys).
//!
//! See `docs/registry.md` for the API subset served and the replication model.

#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod config;
pub mod core;
pub mod http;
pub mod model;
pub mod node;
mod replication;
pub mod service;
pub mod tether;
mod transport;

pub use client::{ClientError, EurekaClient, Heartbeat, HeartbeatConfig, Renewal};
pub use codec::{DecodeError, Format};
pub use config::{parse_duration, Config};
pub use core::{Registry, RegistryError, RegistrySettings, RenewRequest, Renewed};
pub use model::{
    ActionType, Application, Applications, DataCenterInfo, InstanceInfo, InstanceStatus, LeaseInfo, PortInfo,
    ValidationError,
};
pub use node::RegistryNode;
pub use replication::REPLICATION_HEADER;
pub use service::{RegistryState, StartError};
pub use transport::{BaseUrl, TransportError, UrlError};
